//! What a plugin instance may touch: an empty WASI context (no files, no
//! environment, no sockets, a frozen clock), a memory cap, and stdout and
//! stderr that go to the host log tagged with the operator's uid.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

/// How much of a guest's stderr is kept to explain a trap.
const STDERR_TAIL: usize = 2048;

/// Builds the WASI context of one instance: nothing ambient is granted.
pub(crate) fn wasi_ctx(tag: &Arc<str>, stderr: &GuestOutput) -> WasiCtx {
    WasiCtxBuilder::new()
        .stdout(GuestOutput::new(tag.clone(), Stream::Stdout))
        .stderr(stderr.clone())
        .wall_clock(FrozenClock)
        .monotonic_clock(FrozenClock)
        .allow_ip_name_lookup(false)
        .allow_tcp(false)
        .allow_udp(false)
        .build()
}

/// A clock that always reads zero: guests get no clock unless the host
/// grants one, which keeps operators deterministic on replay.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

#[derive(Default)]
struct Lines {
    partial: Vec<u8>,
    tail: Vec<u8>,
}

/// A guest's stdout or stderr: complete lines go to the host log, tagged;
/// the last bytes of stderr are kept to explain a trap (a Rust guest
/// prints its panic message there before it aborts).
#[derive(Clone)]
pub(crate) struct GuestOutput {
    tag: Arc<str>,
    stream: Stream,
    lines: Arc<Mutex<Lines>>,
}

impl GuestOutput {
    pub(crate) fn new(tag: Arc<str>, stream: Stream) -> Self {
        Self {
            tag,
            stream,
            lines: Arc::default(),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut lines = self
            .lines
            .lock()
            .expect("invariant: guest output lock not poisoned");
        if let Stream::Stderr = self.stream {
            lines.tail.extend_from_slice(bytes);
            let excess = lines.tail.len().saturating_sub(STDERR_TAIL);
            lines.tail.drain(..excess);
        }
        lines.partial.extend_from_slice(bytes);
        while let Some(nl) = lines.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = lines.partial.drain(..=nl).collect();
            self.log(&line[..line.len() - 1]);
        }
    }

    fn log(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        match self.stream {
            Stream::Stdout => tracing::info!(target: "weir::plugin", "[{}] {line}", self.tag),
            Stream::Stderr => tracing::warn!(target: "weir::plugin", "[{}] {line}", self.tag),
        }
    }

    /// The last bytes written to stderr, for error messages.
    pub(crate) fn tail(&self) -> String {
        let lines = self
            .lines
            .lock()
            .expect("invariant: guest output lock not poisoned");
        String::from_utf8_lossy(&lines.tail).trim().to_owned()
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Caps an instance's linear memory and remembers whether the cap was hit,
/// so the error can name the limit instead of a bare trap.
pub(crate) struct MemoryLimiter {
    pub(crate) cap: usize,
    pub(crate) exceeded: bool,
}

/// Tables beyond this many elements are refused (a guest's function table
/// is a few thousand entries).
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.exceeded = true;
            wasmtime::bail!(
                "linear memory would grow to {desired} bytes, over the cap of {} bytes",
                self.cap
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
