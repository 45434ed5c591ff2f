//! A test plugin that attacks the host the way its config asks, through
//! the imports a well-behaved SDK never abuses, so the host's limits can be
//! tested. One crate for every behaviour keeps the test build short.
//!
//! Per record in `process`:
//!
//! - `emit-flood`: emits 1 GiB, in 1 MiB batches, straight through
//!   `output.emit` (so the guest's own memory stays small);
//! - `log-flood`: logs 1 GiB through `logging.log`, in 1 MiB messages;
//! - `log-chatty`: logs 2,000 lines of 1 KiB (over the default log budget
//!   per call, far below failing);
//! - `stdout-flood`: prints 1 GiB to stdout with no newline;
//! - `state-flood`: writes 16 MiB of keyed state under a new key;
//! - `packed-flood`: the same through `keyed-state.write-packed`;
//! - `packed-garbage`: hands `write-packed` a buffer whose second write
//!   has an unknown op, and fails the hook with the host's answer;
//! - `sleep`: sleeps an hour (`std::thread::sleep`: a WASI timer and a
//!   poll), then passes the record on;
//! - `spin`: spins for ever;
//! - `recurse`: recurses without end;
//! - `hold:N`: keeps N MiB of guest memory, touched, from `open` on, and
//!   passes records on;
//! - `flush:N`: passes records on, and spins N million iterations in
//!   `snapshot` and `close` (a big state flush); `flush:forever` never ends;
//! - `burn:N`: spins N thousand iterations per record, then passes it on:
//!   a busy tenant that stays within every limit;
//! - anything else: passes records on.

use std::time::Duration;

use weir_sdk::__private::bindings::weir::operator::{keyed_state, logging, output, types};
use weir_sdk::{Context, Emitter, Error, Operator, Record};

const MIB: usize = 1 << 20;

enum Mode {
    EmitFlood,
    LogFlood,
    LogChatty,
    StdoutFlood,
    StateFlood,
    PackedFlood,
    PackedGarbage,
    Sleep,
    Spin,
    Recurse,
    Hold,
    Flush(Option<u64>),
    Burn(u64),
    Identity,
}

/// The hostile operator.
pub struct Hostile {
    mode: Mode,
    seen: u64,
    _held: Vec<u8>,
}

impl Operator for Hostile {
    fn open(ctx: &Context) -> Result<Self, Error> {
        let config = ctx.config().trim();
        let mut held = Vec::new();
        let mode = match config {
            "emit-flood" => Mode::EmitFlood,
            "log-flood" => Mode::LogFlood,
            "log-chatty" => Mode::LogChatty,
            "stdout-flood" => Mode::StdoutFlood,
            "state-flood" => Mode::StateFlood,
            "packed-flood" => Mode::PackedFlood,
            "packed-garbage" => Mode::PackedGarbage,
            "sleep" => Mode::Sleep,
            "spin" => Mode::Spin,
            "recurse" => Mode::Recurse,
            "flush:forever" => Mode::Flush(None),
            _ if config.starts_with("flush:") => {
                Mode::Flush(Some(config["flush:".len()..].parse().map_err(|_| {
                    format!("`{config}`: expected flush:<million iterations>")
                })?))
            }
            _ if config.starts_with("burn:") => {
                Mode::Burn(config["burn:".len()..].parse().map_err(|_| {
                    format!("`{config}`: expected burn:<thousand iterations per record>")
                })?)
            }
            _ if config.starts_with("hold:") => {
                let mib: usize = config["hold:".len()..]
                    .parse()
                    .map_err(|_| format!("`{config}`: expected hold:<MiB>"))?;
                held = vec![0x5A; mib * MIB];
                Mode::Hold
            }
            _ => Mode::Identity,
        };
        Ok(Self {
            mode,
            seen: 0,
            _held: held,
        })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
        self.seen += 1;
        match self.mode {
            Mode::EmitFlood => {
                let mut batch = weir_format::BatchWriter::default();
                batch.push(None, &vec![b'e'; MIB - 64], None);
                let (batch, _) = batch.take();
                for _ in 0..1024 {
                    output::emit(&batch);
                }
            }
            Mode::LogFlood => {
                let message = "l".repeat(MIB);
                for _ in 0..1024 {
                    logging::log(types::Level::Warn, &message);
                }
            }
            Mode::LogChatty => {
                let message = "c".repeat(1024);
                for _ in 0..2000 {
                    logging::log(types::Level::Warn, &message);
                }
            }
            Mode::StdoutFlood => {
                use std::io::Write;
                let chunk = vec![b'o'; MIB];
                let mut stdout = std::io::stdout();
                for _ in 0..1024 {
                    stdout.write_all(&chunk).map_err(|e| e.to_string())?;
                }
            }
            Mode::StateFlood => {
                let key = self.seen.to_le_bytes();
                let value = vec![b's'; 16 * MIB];
                keyed_state::write(&[keyed_state::StateWrite {
                    state: "flood",
                    key: &key,
                    update: keyed_state::Update::ValueSet(types::ValueParam::Bytes(&value)),
                }])?;
            }
            Mode::PackedFlood => {
                let mut packed = weir_format::writes::WritesWriter::new();
                let value = weir_format::Value::Bytes(vec![b's'; 16 * MIB]);
                packed.value_set("flood", &self.seen.to_le_bytes(), &value);
                keyed_state::write_packed(packed.as_bytes())?;
            }
            Mode::PackedGarbage => {
                let mut packed = weir_format::writes::WritesWriter::new();
                packed.value_clear("fine", b"k");
                let mut bytes = packed.as_bytes().to_vec();
                bytes.push(0x7f);
                keyed_state::write_packed(&bytes)?;
            }
            Mode::Sleep => {
                std::thread::sleep(Duration::from_secs(3600));
                out.emit(record.key, record.value);
            }
            Mode::Spin => loop {
                std::hint::black_box(());
            },
            Mode::Recurse => {
                std::hint::black_box(recurse(std::hint::black_box(1)));
            }
            Mode::Burn(n) => {
                let mut i = 0u64;
                while i < n * 1_000 {
                    i = std::hint::black_box(i + 1);
                }
                out.emit(record.key, record.value);
            }
            Mode::Hold | Mode::Flush(_) | Mode::Identity => out.emit(record.key, record.value),
        }
        Ok(())
    }

    fn snapshot(&mut self, _checkpoint_id: u64, _out: &mut Emitter) -> Result<(), Error> {
        self.flush();
        Ok(())
    }

    fn close(&mut self, _out: &mut Emitter) -> Result<(), Error> {
        self.flush();
        Ok(())
    }
}

impl Hostile {
    /// Spins as long as a big state flush would.
    fn flush(&self) {
        if let Mode::Flush(n) = self.mode {
            let n = n.map_or(u64::MAX, |n| n * 1_000_000);
            let mut i = 0u64;
            while i < n {
                i = std::hint::black_box(i + 1);
            }
        }
    }
}

/// Recurses for ever; the addition after the call keeps it from being a
/// tail call.
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    recurse(std::hint::black_box(n + 1)) + n
}

weir_sdk::export!(Hostile);
