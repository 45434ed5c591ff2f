//! What a plugin instance may touch and how much of the host it may use:
//! an empty WASI context (no files, no environment, no sockets, a frozen
//! clock whose timers fire at once, so a guest cannot block), a memory cap,
//! a share of its job's memory budget, and stdout, stderr and `log` that go
//! to the host log tagged with the operator's uid, within a per-call budget.
//!
//! Every limit hit is a [`LimitHit`] naming the limit, its value and its
//! knob; it traps the guest and fails the job without a restart.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

use super::InstanceState;

/// How much of a guest's stderr is kept to explain a trap.
const STDERR_TAIL: usize = 2048;

/// The longest log line kept; the rest of a longer line is dropped.
pub(crate) const MAX_LOG_LINE: usize = 8 * 1024;

/// A guest that offers this many times its log budget in one call is not
/// chatty but hostile: the call fails instead of dropping for ever.
pub(crate) const LOG_FAIL_FACTOR: u64 = 64;

/// A limit a guest hit, with a message naming the limit, its value and its
/// knob. Raised from a host function, it traps the guest.
#[derive(Debug, Clone)]
pub(crate) struct LimitHit(pub(crate) String);

impl std::fmt::Display for LimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LimitHit {}

/// Whole MiB, for messages.
pub(crate) fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// Builds the WASI context of one instance: nothing ambient is granted.
pub(crate) fn wasi_ctx(stdout: &GuestOutput, stderr: &GuestOutput) -> WasiCtx {
    WasiCtxBuilder::new()
        .stdout(stdout.clone())
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

/// The WASI monotonic-clock interface the linker provides (the version
/// wasmtime-wasi implements; guests built against older 0.2 versions link
/// to it too).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Replaces WASI's timers with ones that are ready at once: with the clock
/// frozen, time does not pass for a guest, so a sleep (subscribe + poll)
/// returns immediately instead of blocking a host thread in real time,
/// where neither fuel nor cancellation reaches it.
///
/// # Errors
/// If the linker has no such functions to replace.
pub(crate) fn deny_blocking(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    for name in ["subscribe-duration", "subscribe-instant"] {
        clock.func_wrap(
            name,
            |mut store: wasmtime::StoreContextMut<'_, InstanceState>,
             (_,): (u64,)|
             -> wasmtime::Result<(Resource<DynPollable>,)> {
                let table = &mut store.data_mut().table;
                let ready = table.push(Ready)?;
                Ok((wasmtime_wasi::p2::subscribe(table, ready)?,))
            },
        )?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

/// A pollable that is always ready.
struct Ready;

#[wasmtime_wasi::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {}
}

/// An instance's budget of log output per hook call, shared by its
/// stdout, stderr and `log` import.
#[derive(Clone)]
pub(crate) struct LogMeter(Arc<Mutex<LogBudget>>);

struct LogBudget {
    /// Bytes kept per call (`limits.log_kb_per_call`).
    per_call: u64,
    /// Bytes kept in this call.
    kept: u64,
    /// Bytes offered in this call.
    offered: u64,
    dropped_lines: u64,
    dropped_bytes: u64,
    hit: Option<LimitHit>,
}

/// What the meter says about a log line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Keep,
    Drop,
}

impl LogMeter {
    pub(crate) fn new(per_call: u64) -> Self {
        Self(Arc::new(Mutex::new(LogBudget {
            per_call,
            kept: 0,
            offered: 0,
            dropped_lines: 0,
            dropped_bytes: 0,
            hit: None,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogBudget> {
        self.0
            .lock()
            .expect("invariant: log meter lock not poisoned")
    }

    /// Counts `len` bytes the guest wrote; fails once the call offered
    /// [`LOG_FAIL_FACTOR`] times its budget.
    pub(crate) fn offer(&self, len: usize) -> Result<(), LimitHit> {
        let mut b = self.lock();
        b.offered += len as u64;
        let cap = b.per_call.saturating_mul(LOG_FAIL_FACTOR);
        if b.offered > cap {
            let hit = LimitHit(format!(
                "wrote more than {} MiB of log output in one call ({LOG_FAIL_FACTOR} times its \
                 log budget of {} KiB per call, `limits.log_kb_per_call`)",
                mib(cap),
                b.per_call >> 10
            ));
            b.hit = Some(hit.clone());
            return Err(hit);
        }
        Ok(())
    }

    /// Whether a line of `len` bytes fits this call's budget.
    pub(crate) fn admit(&self, len: usize) -> Admit {
        let mut b = self.lock();
        if b.kept + len as u64 > b.per_call {
            b.dropped_lines += 1;
            b.dropped_bytes += len as u64;
            Admit::Drop
        } else {
            b.kept += len as u64;
            Admit::Keep
        }
    }

    /// Starts a call: a fresh budget.
    pub(crate) fn begin_call(&self) {
        let mut b = self.lock();
        b.kept = 0;
        b.offered = 0;
        b.hit = None;
    }

    /// Ends a call: the lines dropped in it, if any, and how many bytes.
    pub(crate) fn end_call(&self) -> Option<(u64, u64, u64)> {
        let mut b = self.lock();
        let dropped = (b.dropped_lines, b.dropped_bytes, b.per_call);
        b.dropped_lines = 0;
        b.dropped_bytes = 0;
        (dropped.0 > 0).then_some(dropped)
    }

    /// The limit hit in this call, if any.
    pub(crate) fn hit(&self) -> Option<LimitHit> {
        self.lock().hit.clone()
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

#[derive(Default)]
struct Lines {
    /// The current line, at most [`MAX_LOG_LINE`] bytes.
    partial: Vec<u8>,
    /// The current line was longer than [`MAX_LOG_LINE`]: its rest is
    /// skipped up to the next newline.
    truncated: bool,
    tail: Vec<u8>,
}

/// A guest's stdout or stderr: complete lines go to the host log, tagged,
/// within the instance's [`LogMeter`]; a line is cut at [`MAX_LOG_LINE`]
/// bytes, so neither a flood nor a line without end makes the host buffer
/// more. Writes never block. The last bytes of stderr are kept to explain a
/// trap (a Rust guest prints its panic message there before it aborts).
#[derive(Clone)]
pub(crate) struct GuestOutput {
    tag: Arc<str>,
    stream: Stream,
    meter: LogMeter,
    lines: Arc<Mutex<Lines>>,
}

impl GuestOutput {
    pub(crate) fn new(tag: Arc<str>, stream: Stream, meter: LogMeter) -> Self {
        Self {
            tag,
            stream,
            meter,
            lines: Arc::default(),
        }
    }

    fn write_bytes(&self, mut bytes: &[u8]) -> Result<(), LimitHit> {
        self.meter.offer(bytes.len())?;
        let mut lines = self
            .lines
            .lock()
            .expect("invariant: guest output lock not poisoned");
        if let Stream::Stderr = self.stream {
            let keep = &bytes[bytes.len().saturating_sub(STDERR_TAIL)..];
            lines.tail.extend_from_slice(keep);
            let excess = lines.tail.len().saturating_sub(STDERR_TAIL);
            lines.tail.drain(..excess);
        }
        while !bytes.is_empty() {
            let (chunk, ended) = match bytes.iter().position(|&b| b == b'\n') {
                Some(nl) => (&bytes[..nl], Some(nl + 1)),
                None => (bytes, None),
            };
            if !lines.truncated {
                let room = MAX_LOG_LINE - lines.partial.len();
                lines
                    .partial
                    .extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() > room {
                    let line = std::mem::take(&mut lines.partial);
                    self.log(&line, true);
                    lines.truncated = true;
                }
            }
            match ended {
                Some(next) => {
                    if !lines.truncated {
                        let line = std::mem::take(&mut lines.partial);
                        self.log(&line, false);
                    }
                    lines.truncated = false;
                    bytes = &bytes[next..];
                }
                None => break,
            }
        }
        Ok(())
    }

    fn log(&self, line: &[u8], truncated: bool) {
        if self.meter.admit(line.len()) == Admit::Drop {
            return;
        }
        let line = String::from_utf8_lossy(line);
        let cut = if truncated {
            " [line cut at 8 KiB]"
        } else {
            ""
        };
        match self.stream {
            Stream::Stdout => tracing::info!(target: "weir::plugin", "[{}] {line}{cut}", self.tag),
            Stream::Stderr => tracing::warn!(target: "weir::plugin", "[{}] {line}{cut}", self.tag),
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
        self.write_bytes(&bytes)
            .map_err(|hit| StreamError::Trap(wasmtime::Error::new(hit)))
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
        Poll::Ready(
            self.write_bytes(buf)
                .map(|()| buf.len())
                .map_err(std::io::Error::other),
        )
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The memory a job's plugin instances hold together: guest memories,
/// keyed state and emitted records not yet routed. Clones share the count;
/// the runtime gives every instance of a job the same one.
#[derive(Clone, Default)]
pub struct JobMemory(Arc<AtomicU64>, Option<MemoryPool>);

impl JobMemory {
    /// A count of zero bytes, for a new job.
    pub fn new() -> Self {
        Self::default()
    }

    /// A count of zero bytes for a new job whose bytes also count in
    /// `pool` (its tenant's), which they may not push over its budget.
    pub fn within(pool: &MemoryPool) -> Self {
        JobMemory(Arc::default(), Some(pool.clone()))
    }

    /// A job's count kept in `count` (its metrics' gauge, zero while no
    /// instance lives), its bytes also counting in `pool` if given.
    pub fn counted_in(count: Arc<AtomicU64>, pool: Option<&MemoryPool>) -> Self {
        JobMemory(count, pool.cloned())
    }

    /// The bytes counted now.
    pub fn used(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Memory shared by several jobs (a tenant's), with a budget and the name
/// of the quota that sets it. Clones share the count.
#[derive(Clone)]
pub struct MemoryPool {
    used: Arc<AtomicU64>,
    budget: Arc<AtomicU64>,
    quota: Arc<str>,
}

impl std::fmt::Debug for MemoryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPool")
            .field("used", &self.used())
            .field("budget", &self.budget())
            .field("quota", &self.quota)
            .finish()
    }
}

impl MemoryPool {
    /// An empty pool of `budget` bytes; `quota` names what sets it, for
    /// messages (``tenant `acme`'s `memory_mb` quota``).
    pub fn new(budget: u64, quota: &str) -> Self {
        MemoryPool {
            used: Arc::default(),
            budget: Arc::new(AtomicU64::new(budget)),
            quota: quota.into(),
        }
    }

    /// The bytes its jobs hold now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Its budget, bytes.
    pub fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    /// Sets its budget (a reloaded config); jobs over it fail at their
    /// next growth.
    pub fn set_budget(&self, budget: u64) {
        self.budget.store(budget, Ordering::Relaxed);
    }
}

/// Adds `bytes - old` to `count` and returns the new total.
fn shift(count: &AtomicU64, old: u64, bytes: u64) -> u64 {
    if bytes >= old {
        count.fetch_add(bytes - old, Ordering::Relaxed) + (bytes - old)
    } else {
        count.fetch_sub(old - bytes, Ordering::Relaxed) - (old - bytes)
    }
}

/// What one instance has counted in its job's [`JobMemory`], by kind, so
/// the instance can move its share as each kind changes and give it all
/// back when it ends.
pub(crate) struct MemoryShare {
    job: JobMemory,
    budget: u64,
    parts: [u64; 3],
}

/// The kinds of memory an instance holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Part {
    Guest = 0,
    State = 1,
    Output = 2,
}

impl MemoryShare {
    pub(crate) fn new(job: JobMemory, budget: u64) -> Self {
        Self {
            job,
            budget,
            parts: [0; 3],
        }
    }

    /// Sets this instance's bytes of `part`; fails if the job's total grew
    /// beyond its budget (the bytes stay counted until the instance ends).
    pub(crate) fn set(&mut self, part: Part, bytes: u64) -> Result<(), LimitHit> {
        let old = std::mem::replace(&mut self.parts[part as usize], bytes);
        let total = shift(&self.job.0, old, bytes);
        if let Some(pool) = &self.job.1 {
            let pooled = shift(&pool.used, old, bytes);
            if bytes > old && pooled > pool.budget() {
                return Err(LimitHit(format!(
                    "the plugins would hold {} MiB over all jobs sharing {}, over its {} MiB",
                    mib(pooled),
                    pool.quota,
                    mib(pool.budget())
                )));
            }
        }
        if bytes > old && total > self.budget {
            return Err(LimitHit(format!(
                "the job's plugins would hold {} MiB (guest memories, keyed state and emitted \
                 records), over the job's memory budget of {} MiB (`limits.job_memory_mb`)",
                mib(total),
                mib(self.budget)
            )));
        }
        Ok(())
    }

    pub(crate) fn get(&self, part: Part) -> u64 {
        self.parts[part as usize]
    }
}

impl Drop for MemoryShare {
    fn drop(&mut self) {
        let mine: u64 = self.parts.iter().sum();
        self.job.0.fetch_sub(mine, Ordering::Relaxed);
        if let Some(pool) = &self.job.1 {
            pool.used.fetch_sub(mine, Ordering::Relaxed);
        }
    }
}

/// Caps an instance's linear memory and counts it in the job's budget,
/// remembering which limit was hit so the error can name it instead of a
/// bare trap.
pub(crate) struct MemoryLimiter {
    pub(crate) cap: usize,
    pub(crate) hit: Option<LimitHit>,
    pub(crate) share: MemoryShare,
}

/// Tables beyond this many elements are refused (a guest's function table
/// is a few thousand entries).
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            let hit = LimitHit(format!(
                "exceeded its memory limit of {} MiB (`limits.memory_mb`)",
                mib(self.cap as u64)
            ));
            self.hit = Some(hit.clone());
            return Err(wasmtime::Error::new(hit));
        }
        let guest = self.share.get(Part::Guest) + (desired - current) as u64;
        if let Err(hit) = self.share.set(Part::Guest, guest) {
            self.hit = Some(hit.clone());
            return Err(wasmtime::Error::new(hit));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_without_end_is_cut_and_a_flood_fails_without_buffering() {
        let meter = LogMeter::new(16 << 10);
        let out = GuestOutput::new("t#0".into(), Stream::Stdout, meter.clone());
        meter.begin_call();
        let chunk = vec![b'x'; 64 << 10];
        // 16 × 64 KiB = 1 MiB, the fail threshold (64 × 16 KiB): fine.
        for _ in 0..16 {
            out.write_bytes(&chunk).unwrap();
        }
        assert!(
            out.lines.lock().unwrap().partial.is_empty(),
            "cut, not kept"
        );
        let hit = out.write_bytes(&chunk).unwrap_err();
        assert!(hit.0.contains("`limits.log_kb_per_call`"), "{hit}");
        assert!(meter.hit().is_some());
        // One line was kept (cut at 8 KiB); the rest was skipped.
        assert_eq!(meter.end_call(), None);
        meter.begin_call();
        out.write_bytes(b"\nok\n").unwrap();
        assert!(meter.hit().is_none());
    }

    #[test]
    fn lines_over_the_budget_are_dropped_and_counted() {
        let meter = LogMeter::new(100);
        let out = GuestOutput::new("t#0".into(), Stream::Stderr, meter.clone());
        meter.begin_call();
        for _ in 0..10 {
            out.write_bytes(&[b'y'; 39]).unwrap();
            out.write_bytes(b"\n").unwrap();
        }
        // Two 39-byte lines fit 100 bytes; eight are dropped.
        assert_eq!(meter.end_call(), Some((8, 8 * 39, 100)));
        assert_eq!(meter.end_call(), None);
        assert_eq!(out.tail().len(), 10 * 39 + 9);
    }

    #[test]
    fn job_memory_is_shared_and_given_back() {
        let job = JobMemory::new();
        let mut a = MemoryShare::new(job.clone(), 100);
        let mut b = MemoryShare::new(job.clone(), 100);
        a.set(Part::Guest, 60).unwrap();
        b.set(Part::State, 30).unwrap();
        assert_eq!(job.used(), 90);
        let hit = b.set(Part::Output, 20).unwrap_err();
        assert!(hit.0.contains("`limits.job_memory_mb`"), "{hit}");
        a.set(Part::Guest, 10).unwrap();
        drop(b);
        assert_eq!(job.used(), 10);
        drop(a);
        assert_eq!(job.used(), 0);
    }
}
