//! The operator trait and the hook dispatch behind [`crate::export!`].
//!
//! One operator instance lives in a thread-local (Wasm is single-threaded).
//! Each hook decodes its input, runs the operator, sends everything the
//! operator emitted as one packed batch (one `output.emit` call), and
//! flushes state caches where the WIT contract requires it.

use std::borrow::Cow;
use std::cell::RefCell;

use weir_format::{BatchReader, BatchWriter};

use crate::state::{REGISTRY, set_current_key};
use crate::time::{TimeDomain, Timer};
use crate::{Error, host};

/// A stream operator: implement this and pass the type to [`crate::export!`].
///
/// The host calls `open` once per subtask, then `process` for every record
/// (the SDK unpacks the host's batches), `snapshot` before each checkpoint,
/// `on_checkpoint_complete` once a checkpoint is durable, and `close` at end
/// of input. Any `Err` fails the job. State handles must be created in
/// `open`; the SDK writes their cached changes back to the host after
/// `snapshot` and `close` return, so operators never flush by hand.
pub trait Operator: Sized + 'static {
    /// Creates the operator for one subtask and its state handles.
    ///
    /// # Errors
    ///
    /// Bad configuration, or a state name conflict.
    fn open(ctx: &Context) -> Result<Self, Error>;

    /// Processes one record; keyed state is scoped to `record.key`.
    ///
    /// # Errors
    ///
    /// Anything that should fail the job.
    fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error>;

    /// Runs before checkpoint `checkpoint_id` is taken; may emit. State
    /// handles are flushed after it returns.
    ///
    /// # Errors
    ///
    /// Anything that should fail the checkpoint and the job.
    fn snapshot(&mut self, checkpoint_id: u64, out: &mut Emitter) -> Result<(), Error> {
        let _ = (checkpoint_id, out);
        Ok(())
    }

    /// Runs once checkpoint `checkpoint_id` is durable (e.g. to commit
    /// side effects).
    ///
    /// # Errors
    ///
    /// Anything that should fail the job.
    fn on_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<(), Error> {
        let _ = checkpoint_id;
        Ok(())
    }

    /// A timer registered with [`crate::time`] fired; keyed state is scoped
    /// to `timer.key`. Records emitted here carry the timer's timestamp
    /// unless given another (event time), or none (processing time).
    ///
    /// # Errors
    ///
    /// Anything that should fail the job.
    fn on_timer(&mut self, timer: Timer<'_>, out: &mut Emitter) -> Result<(), Error> {
        let _ = (timer, out);
        Ok(())
    }

    /// The watermark advanced to `watermark`, after the timers it made due
    /// fired; may emit.
    ///
    /// # Errors
    ///
    /// Anything that should fail the job.
    fn on_watermark(&mut self, watermark: i64, out: &mut Emitter) -> Result<(), Error> {
        let _ = (watermark, out);
        Ok(())
    }

    /// Runs once at end of input; may emit final records. State handles
    /// are flushed after it returns.
    ///
    /// # Errors
    ///
    /// Anything that should fail the job.
    fn close(&mut self, out: &mut Emitter) -> Result<(), Error> {
        let _ = out;
        Ok(())
    }
}

/// Static facts about the subtask an operator instance runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    uid: String,
    config: String,
    subtask_index: u32,
    parallelism: u32,
    max_parallelism: u32,
    attempt_number: u32,
}

impl Context {
    /// A context for subtask 0 of 1 with 128 key groups (for tests).
    pub fn new(uid: impl Into<String>, config: impl Into<String>) -> Self {
        Self {
            uid: uid.into(),
            config: config.into(),
            subtask_index: 0,
            parallelism: 1,
            max_parallelism: 128,
            attempt_number: 0,
        }
    }

    /// The same context in the job's `attempt_number`-th restart.
    pub fn with_attempt_number(mut self, attempt_number: u32) -> Self {
        self.attempt_number = attempt_number;
        self
    }

    /// The same context as subtask `subtask_index` of `parallelism`, with
    /// `max_parallelism` key groups.
    pub fn with_subtask(
        mut self,
        subtask_index: u32,
        parallelism: u32,
        max_parallelism: u32,
    ) -> Self {
        self.subtask_index = subtask_index;
        self.parallelism = parallelism;
        self.max_parallelism = max_parallelism;
        self
    }

    /// The operator's `uid` from the job file; stable across versions.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The operator's `config` string from the job file, verbatim.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// This subtask's index, `0 .. parallelism`.
    pub fn subtask_index(&self) -> u32 {
        self.subtask_index
    }

    /// How many subtasks the operator runs as.
    pub fn parallelism(&self) -> u32 {
        self.parallelism
    }

    /// The number of key groups keys hash into.
    pub fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    /// How many times the job restarted before this instance: 0 on the
    /// first run, then 1, 2, … after each restart from a checkpoint.
    pub fn attempt_number(&self) -> u32 {
        self.attempt_number
    }
}

/// An input record, borrowed from the host's batch (no copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's key, if it has one.
    pub key: Option<&'a [u8]>,
    /// The record's value.
    pub value: &'a [u8],
    /// The record's event timestamp (milliseconds since the epoch), if any.
    pub timestamp: Option<i64>,
}

impl<'a> Record<'a> {
    /// The value as UTF-8.
    ///
    /// # Errors
    ///
    /// If the value is not valid UTF-8.
    pub fn value_str(&self) -> Result<&'a str, Error> {
        Ok(std::str::from_utf8(self.value)?)
    }

    /// The value as UTF-8, replacing invalid sequences with `U+FFFD`.
    pub fn value_str_lossy(&self) -> Cow<'a, str> {
        String::from_utf8_lossy(self.value)
    }
}

/// Collects the records an operator emits; the SDK sends them as one
/// packed batch when the hook call returns.
#[derive(Debug, Default)]
pub struct Emitter {
    batch: BatchWriter,
    timestamp: Option<i64>,
}

impl Emitter {
    /// Emits a record carrying the timestamp of the input record being
    /// processed (none in `snapshot` and `close`), as Flink does.
    pub fn emit(&mut self, key: Option<&[u8]>, value: &[u8]) {
        self.batch.push(key, value, self.timestamp);
    }

    /// Emits a record with an explicit timestamp (`None` for none).
    pub fn emit_with_timestamp(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp: Option<i64>,
    ) {
        self.batch.push(key, value, timestamp);
    }

    /// How many records were emitted and not yet sent.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// Whether nothing is waiting to be sent.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Sends the pending records as one batch.
    fn send(&mut self) {
        if !self.batch.is_empty() {
            host::with(|h| h.emit(self.batch.as_bytes()));
            self.batch.clear();
        }
    }
}

/// The operator with its type erased, so the runtime is not generic.
trait Instance {
    fn process(&mut self, batch: &[u8], out: &mut Emitter) -> Result<(), Error>;
    fn snapshot(&mut self, checkpoint_id: u64, out: &mut Emitter) -> Result<(), Error>;
    fn on_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<(), Error>;
    fn close(&mut self, out: &mut Emitter) -> Result<(), Error>;
    fn on_timer(&mut self, timer: Timer<'_>, out: &mut Emitter) -> Result<(), Error>;
    fn on_watermark(&mut self, watermark: i64, out: &mut Emitter) -> Result<(), Error>;
}

impl<O: Operator> Instance for O {
    fn process(&mut self, batch: &[u8], out: &mut Emitter) -> Result<(), Error> {
        let result = BatchReader::new(batch).try_for_each(|record| {
            let record = record?;
            set_current_key(record.key);
            out.timestamp = record.timestamp;
            let record = Record {
                key: record.key,
                value: record.value,
                timestamp: record.timestamp,
            };
            Operator::process(self, record, out)
        });
        set_current_key(None);
        out.timestamp = None;
        result
    }
    fn snapshot(&mut self, checkpoint_id: u64, out: &mut Emitter) -> Result<(), Error> {
        Operator::snapshot(self, checkpoint_id, out)
    }
    fn on_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<(), Error> {
        Operator::on_checkpoint_complete(self, checkpoint_id)
    }
    fn close(&mut self, out: &mut Emitter) -> Result<(), Error> {
        Operator::close(self, out)
    }
    fn on_timer(&mut self, timer: Timer<'_>, out: &mut Emitter) -> Result<(), Error> {
        set_current_key(Some(timer.key));
        out.timestamp = match timer.domain {
            TimeDomain::EventTime => Some(timer.timestamp),
            TimeDomain::ProcessingTime => None,
        };
        let result = Operator::on_timer(self, timer, out);
        set_current_key(None);
        out.timestamp = None;
        result
    }
    fn on_watermark(&mut self, watermark: i64, out: &mut Emitter) -> Result<(), Error> {
        Operator::on_watermark(self, watermark, out)
    }
}

#[derive(Default)]
struct Runtime {
    instance: Option<Box<dyn Instance>>,
    emitter: Emitter,
}

thread_local! {
    static RUNTIME: RefCell<Runtime> = RefCell::new(Runtime::default());
}

/// Runs `f` on the open instance, then sends what it emitted (or drops it
/// if `f` failed).
fn with_instance(
    hook: &'static str,
    f: impl FnOnce(&mut dyn Instance, &mut Emitter) -> Result<(), Error>,
) -> Result<(), Error> {
    crate::time::begin_call();
    RUNTIME.with_borrow_mut(|rt| {
        let Runtime { instance, emitter } = rt;
        let instance = instance.as_deref_mut().ok_or(Error::Lifecycle(hook))?;
        match f(instance, emitter) {
            Ok(()) => {
                emitter.send();
                Ok(())
            }
            Err(e) => {
                emitter.batch.clear();
                Err(e)
            }
        }
    })
}

fn flush_state() -> Result<(), Error> {
    REGISTRY
        .with_borrow(|r| host::with(|h| r.flush(h)))
        .map(|_| ())
}

/// The `open` hook.
pub(crate) fn open<O: Operator>(ctx: &Context) -> Result<(), Error> {
    if RUNTIME.with_borrow(|rt| rt.instance.is_some()) {
        return Err(Error::Lifecycle("open called twice"));
    }
    REGISTRY.with_borrow_mut(Registry::clear);
    set_current_key(None);
    let op = O::open(ctx)?;
    RUNTIME.with_borrow_mut(|rt| rt.instance = Some(Box::new(op)));
    Ok(())
}

use crate::cache::Registry;

/// The `process` hook: every record of `batch`, then one emit.
pub(crate) fn process(batch: &[u8]) -> Result<(), Error> {
    with_instance("process before open", |i, out| i.process(batch, out))?;
    // Keep memory bounded between checkpoints: writing back early is
    // harmless, the host discards uncheckpointed state on failure anyway.
    if REGISTRY.with_borrow(Registry::over_capacity) {
        flush_state()?;
    }
    Ok(())
}

/// The `snapshot` hook: the operator's hook, then every dirty state entry.
pub(crate) fn snapshot(checkpoint_id: u64) -> Result<(), Error> {
    with_instance("snapshot before open", |i, out| {
        i.snapshot(checkpoint_id, out)
    })?;
    flush_state()
}

/// The `on-checkpoint-complete` hook.
pub(crate) fn on_checkpoint_complete(checkpoint_id: u64) -> Result<(), Error> {
    with_instance("on-checkpoint-complete before open", |i, _| {
        i.on_checkpoint_complete(checkpoint_id)
    })
}

/// The `on-timer` hook.
pub(crate) fn on_timer(key: &[u8], timestamp: i64, domain: TimeDomain) -> Result<(), Error> {
    with_instance("on-timer before open", |i, out| {
        i.on_timer(
            Timer {
                key,
                timestamp,
                domain,
            },
            out,
        )
    })?;
    if REGISTRY.with_borrow(Registry::over_capacity) {
        flush_state()?;
    }
    Ok(())
}

/// The `on-watermark` hook.
pub(crate) fn on_watermark(watermark: i64) -> Result<(), Error> {
    with_instance("on-watermark before open", |i, out| {
        i.on_watermark(watermark, out)
    })
}

/// The `close` hook: the operator's hook, then every dirty state entry.
pub(crate) fn close() -> Result<(), Error> {
    with_instance("close before open", |i, out| i.close(out))?;
    flush_state()
}

/// Drops the instance and all state handles (a test harness is done).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn reset() {
    let instance = RUNTIME.with_borrow_mut(|rt| {
        rt.emitter.batch.clear();
        rt.instance.take()
    });
    drop(instance);
    REGISTRY.with_borrow_mut(Registry::clear);
    set_current_key(None);
}
