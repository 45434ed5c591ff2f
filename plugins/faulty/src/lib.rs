//! A test plugin that fails in `process` the way its config asks, so the
//! host's sandboxing and error handling can be tested:
//!
//! - `trap`: panics (a Wasm trap);
//! - `trap-once:N`: passes records through, but panics at the `N`-th
//!   record this subtask processes in the job's first attempt only, so a
//!   restart from a checkpoint gets past it;
//! - `loop`: spins forever (the host's CPU budget must stop it);
//! - `hog`: allocates and touches 1 MiB blocks forever (the host's memory
//!   cap must stop it);
//! - `error`: returns `Err("faulty plugin asked to fail")`;
//! - `probe`: tries to escape the sandbox (read a directory and a file, list
//!   environment variables, open a socket, read the clock) and emits one
//!   `probe<TAB>result` record per attempt, so tests can check what the
//!   host granted; it also prints to stdout and stderr;
//! - `emit-on-close`: passes records through, and `close` emits one more
//!   record, `closed`, so tests can see whether the host called `close`;
//! - anything else: passes records through unchanged.

use weir_sdk::{Context, Emitter, Error, Operator, Record};

/// The failure `process` performs.
enum Mode {
    Trap,
    /// Trap at this record (1-based) of the first attempt.
    TrapOnce(u64),
    Loop,
    Hog,
    Fail,
    Probe,
    Identity,
    /// Identity, and `close` emits a record.
    EmitOnClose,
}

/// The faulty operator.
pub struct Faulty {
    mode: Mode,
    /// Records processed by this instance.
    seen: u64,
}

impl Operator for Faulty {
    fn open(ctx: &Context) -> Result<Self, Error> {
        let config = ctx.config().trim();
        let mode = match config {
            "trap" => Mode::Trap,
            _ if config.starts_with("trap-once:") => {
                let n = config["trap-once:".len()..]
                    .parse()
                    .map_err(|_| format!("`{config}`: expected trap-once:<record number>"))?;
                if ctx.attempt_number() == 0 {
                    Mode::TrapOnce(n)
                } else {
                    Mode::Identity
                }
            }
            "loop" => Mode::Loop,
            "hog" => Mode::Hog,
            "error" => Mode::Fail,
            "probe" => Mode::Probe,
            "emit-on-close" => Mode::EmitOnClose,
            _ => Mode::Identity,
        };
        Ok(Self { mode, seen: 0 })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
        self.seen += 1;
        match self.mode {
            Mode::Trap => panic!("faulty plugin asked to trap"),
            Mode::TrapOnce(n) if self.seen == n => {
                panic!("faulty plugin asked to trap once, at record {n}")
            }
            Mode::TrapOnce(_) => {
                out.emit_with_timestamp(record.key, record.value, record.timestamp);
                Ok(())
            }
            Mode::Loop => {
                let mut i = 0u64;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            Mode::Hog => {
                let mut blocks: Vec<Vec<u8>> = Vec::new();
                loop {
                    blocks.push(vec![0xA5; 1 << 20]);
                    std::hint::black_box(&blocks);
                }
            }
            Mode::Fail => Err("faulty plugin asked to fail".into()),
            Mode::Probe => {
                probe(out);
                Ok(())
            }
            Mode::Identity | Mode::EmitOnClose => {
                out.emit_with_timestamp(record.key, record.value, record.timestamp);
                Ok(())
            }
        }
    }

    fn close(&mut self, out: &mut Emitter) -> Result<(), Error> {
        if let Mode::EmitOnClose = self.mode {
            out.emit(None, b"closed");
        }
        Ok(())
    }
}

/// Attempts what a sandboxed plugin must not be able to do.
fn probe(out: &mut Emitter) {
    fn outcome<T>(r: std::io::Result<T>) -> String {
        match r {
            Ok(_) => "allowed".to_owned(),
            Err(e) => format!("denied ({:?})", e.kind()),
        }
    }
    println!("probe says hello on stdout");
    eprintln!("probe says hello on stderr");
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let attempts = [
        ("read-dir", outcome(std::fs::read_dir("/"))),
        ("read-file", outcome(std::fs::read("/etc/passwd"))),
        ("env-vars", std::env::vars().count().to_string()),
        (
            "tcp-connect",
            outcome(std::net::TcpStream::connect("127.0.0.1:9")),
        ),
        ("clock-secs", since_epoch.to_string()),
    ];
    for (what, result) in attempts {
        out.emit(Some(what.as_bytes()), result.as_bytes());
    }
}

weir_sdk::export!(Faulty);

#[cfg(test)]
mod tests {
    use weir_sdk::testing::{Harness, TestRecord};

    use super::Faulty;

    #[test]
    fn error_mode_fails_and_other_configs_pass_through() {
        let mut h = Harness::<Faulty>::open("error").unwrap();
        let err = h.process(&[TestRecord::unkeyed("x")]).unwrap_err();
        assert_eq!(err.to_string(), "faulty plugin asked to fail");
        drop(h);
        let mut h = Harness::<Faulty>::open("none").unwrap();
        let input = [TestRecord::keyed("k", "v").at(2)];
        assert_eq!(h.process(&input).unwrap(), input.to_vec());
    }

    #[test]
    fn emit_on_close_mode_emits_one_record_on_close() {
        let mut h = Harness::<Faulty>::open("emit-on-close").unwrap();
        let input = [TestRecord::unkeyed("x")];
        assert_eq!(h.process(&input).unwrap(), input.to_vec());
        assert_eq!(h.close().unwrap(), [TestRecord::unkeyed("closed")]);
    }
}
