//! Event time and timers: the current watermark, the host's clock, and
//! timers per key (`weir:operator@0.2.0`, `docs/sdk.md`).
//!
//! Timers are scoped like keyed state: a timer belongs to the key of the
//! record being processed, or of the timer firing. The host keeps them in
//! the operator's keyed state, so they are checkpointed and restored with
//! it, and calls [`Operator::on_timer`](crate::Operator::on_timer) once per
//! key, timestamp and domain.

use std::cell::Cell;

use crate::state::with_key;
use crate::{Error, host};

/// The clock a timer runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeDomain {
    /// Fires once the watermark reaches the timestamp.
    EventTime,
    /// Fires once the host's clock reaches the timestamp.
    ProcessingTime,
}

/// A timer that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer<'a> {
    /// The key it was registered for; keyed state is scoped to it.
    pub key: &'a [u8],
    /// Its timestamp, milliseconds.
    pub timestamp: i64,
    /// Its clock.
    pub domain: TimeDomain,
}

fn timer(timestamp: i64, domain: TimeDomain, delete: bool) -> Result<(), Error> {
    let operation = if delete {
        "timers.delete"
    } else {
        "timers.register"
    };
    with_key(operation, |key| {
        host::with(|h| h.timer(key, timestamp, domain, delete)).map_err(|message| Error::Host {
            operation,
            state: String::new(),
            message,
        })
    })
}

/// Registers an event-time timer for the current key at `timestamp`: it
/// fires once the watermark reaches it. Registering it again does nothing.
///
/// # Errors
/// [`Error::NoCurrentKey`] outside a keyed record or timer; the host's
/// refusal (a key of another subtask: the operator needs a `hash` input).
pub fn register_event_time_timer(timestamp: i64) -> Result<(), Error> {
    timer(timestamp, TimeDomain::EventTime, false)
}

/// Deletes the current key's event-time timer at `timestamp`, if any.
///
/// # Errors
/// As [`register_event_time_timer`].
pub fn delete_event_time_timer(timestamp: i64) -> Result<(), Error> {
    timer(timestamp, TimeDomain::EventTime, true)
}

/// Registers a processing-time timer for the current key at `timestamp`
/// (milliseconds since the Unix epoch on the host's clock).
///
/// # Errors
/// As [`register_event_time_timer`].
pub fn register_processing_time_timer(timestamp: i64) -> Result<(), Error> {
    timer(timestamp, TimeDomain::ProcessingTime, false)
}

/// Deletes the current key's processing-time timer at `timestamp`, if any.
///
/// # Errors
/// As [`register_event_time_timer`].
pub fn delete_processing_time_timer(timestamp: i64) -> Result<(), Error> {
    timer(timestamp, TimeDomain::ProcessingTime, true)
}

thread_local! {
    /// The watermark read from the host during the current hook call: the
    /// host moves it only between calls, so one import call per hook call
    /// serves every record of a batch.
    static WATERMARK: Cell<Option<i64>> = const { Cell::new(None) };
}

/// Forgets the watermark read in the previous hook call.
pub(crate) fn begin_call() {
    WATERMARK.set(None);
}

/// The operator's current event-time watermark: `i64::MIN` before the
/// first. Read from the host once per hook call.
pub fn current_watermark() -> i64 {
    WATERMARK.get().unwrap_or_else(|| {
        let w = host::with(|h| h.current_watermark());
        WATERMARK.set(Some(w));
        w
    })
}

/// The host's clock, milliseconds since the Unix epoch (guests have no
/// clock of their own).
pub fn current_processing_time() -> i64 {
    host::with(|h| h.current_processing_time())
}

/// Adds `delta` to the operator's counter `name` (shown in the job's
/// metrics). Names are at most 64 bytes of `[A-Za-z0-9_.-]`, and an
/// operator has at most 32; past either the call traps.
pub fn counter_add(name: &str, delta: u64) {
    host::with(|h| h.counter_add(name, delta));
}
