//! The handle a running job is controlled through (by the REST API, or any
//! embedder): its identity and state, savepoint triggers, stop with a
//! savepoint, cancel.
//!
//! Requests are queued to the job's checkpoint coordinator and answered
//! through a [`SavepointTicket`], which can be awaited (the API's tokio
//! tasks) or waited on from a plain thread. No HTTP here, and nothing that
//! blocks an async runtime.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use crate::error::Error;
use crate::metrics::JobMetrics;

/// A running job's id: 32 lowercase hex digits, as Flink's `JobID`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId(String);

impl JobId {
    /// A fresh random id.
    pub fn random() -> Self {
        JobId(format!("{:032x}", rand::random::<u128>()))
    }

    /// The id `text` spells: 32 lowercase hex digits.
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| JobId(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a job is in its life (Flink's `JobStatus`, the states a user sees).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum JobState {
    /// Loading plugins, restoring state.
    Created = 0,
    /// Processing records.
    Running = 1,
    /// Failed; waiting to restart from the latest checkpoint.
    Restarting = 2,
    /// Taking the savepoint of a stop request, then ending.
    Stopping = 3,
    /// Cancel requested; subtasks are stopping.
    Cancelling = 4,
    /// Ended: input exhausted or stopped with a savepoint.
    Finished = 5,
    /// Ended by cancel.
    Cancelled = 6,
    /// Ended by a failure that could not be restarted.
    Failed = 7,
}

impl JobState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => JobState::Created,
            1 => JobState::Running,
            2 => JobState::Restarting,
            3 => JobState::Stopping,
            4 => JobState::Cancelling,
            5 => JobState::Finished,
            6 => JobState::Cancelled,
            _ => JobState::Failed,
        }
    }

    /// The state's name in the API: `RUNNING`, `FINISHED`, … (Flink's).
    pub fn name(self) -> &'static str {
        match self {
            JobState::Created => "CREATED",
            JobState::Running => "RUNNING",
            JobState::Restarting => "RESTARTING",
            JobState::Stopping => "STOPPING",
            JobState::Cancelling => "CANCELLING",
            JobState::Finished => "FINISHED",
            JobState::Cancelled => "CANCELED",
            JobState::Failed => "FAILED",
        }
    }

    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Finished | JobState::Cancelled | JobState::Failed
        )
    }

    /// Whether a job in this state may move to `next`: the lifecycle's
    /// only transitions. An ended job never changes again, and a cancel
    /// is never undone by a restart, a resumed stop or a new attempt.
    pub fn may_become(self, next: JobState) -> bool {
        use JobState::*;
        match (self, next) {
            (Finished | Cancelled | Failed, _) => false,
            // Whatever is running can be cancelled, or end.
            (_, Cancelling | Cancelled | Failed) => true,
            (Created | Restarting, Running) => true,
            (Running, Restarting | Stopping | Finished) => true,
            // A failed stop resumes; a finished one ends the job; an
            // attempt that fails while stopping restarts.
            (Stopping, Running | Finished | Restarting) => true,
            // Cancelled as it finished: the data ended first.
            (Cancelling, Finished) => true,
            _ => false,
        }
    }
}

/// The layout a savepoint is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SavepointFormat {
    /// The documented, backend-independent layout
    /// (`docs/savepoint-format.md`).
    #[default]
    Canonical,
    /// The checkpoint layout (`docs/checkpoint-format.md`): faster to take,
    /// restores the same way.
    Native,
}

impl std::str::FromStr for SavepointFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "canonical" => Ok(SavepointFormat::Canonical),
            "native" => Ok(SavepointFormat::Native),
            other => Err(format!(
                "unknown savepoint format `{other}`: expected `canonical` or `native`"
            )),
        }
    }
}

/// How a stop-with-savepoint ends the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Sources stop where they are; operators are not closed, so the
    /// savepoint can be resumed as if the job had never stopped.
    Suspend,
    /// Sources end their input first: operators `close` (flushing pending
    /// work) before the savepoint, as at the end of a bounded job.
    Drain,
}

/// A savepoint request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavepointRequest {
    /// The directory (path or URL) under which `savepoint-<job>-<id>` is
    /// created; `None` takes the job file's `[savepoints] dir`.
    pub target: Option<String>,
    /// The layout.
    pub format: SavepointFormat,
    /// `Some`: end the job once the savepoint completed (stop with
    /// savepoint).
    pub stop: Option<StopMode>,
}

/// A completed savepoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavepointInfo {
    /// Its directory, as a path or URL that `weir run -s` accepts.
    pub location: String,
    /// Its id (the checkpoint id sequence it shares with checkpoints).
    pub id: u64,
}

/// The answer to one savepoint request; resolve it once.
pub struct SavepointTicket {
    rx: tokio::sync::oneshot::Receiver<Result<SavepointInfo, Error>>,
}

impl SavepointTicket {
    /// Waits for the savepoint from an async task.
    ///
    /// # Errors
    /// Why the savepoint failed, or [`Error::Internal`] if the job ended
    /// without answering.
    pub async fn wait_async(self) -> Result<SavepointInfo, Error> {
        self.rx
            .await
            .unwrap_or_else(|_| Err(ended_without_answer()))
    }

    /// Waits for the savepoint from a plain thread (never from an async
    /// runtime's thread).
    ///
    /// # Errors
    /// As [`wait_async`](Self::wait_async).
    pub fn wait(self) -> Result<SavepointInfo, Error> {
        self.rx
            .blocking_recv()
            .unwrap_or_else(|_| Err(ended_without_answer()))
    }
}

fn ended_without_answer() -> Error {
    Error::SavepointFailed {
        message: "the job ended before the savepoint completed".into(),
    }
}

/// A queued savepoint request with the channel its answer goes to.
pub(crate) struct PendingSavepoint {
    pub request: SavepointRequest,
    pub reply: tokio::sync::oneshot::Sender<Result<SavepointInfo, Error>>,
}

/// What the API shows about a job.
#[derive(Debug, Clone)]
pub struct JobInfo {
    /// Its id.
    pub id: JobId,
    /// Its name from the job file.
    pub name: String,
    /// Its state now.
    pub state: JobState,
    /// When it started (wall clock).
    pub started: SystemTime,
    /// How long it has run.
    pub uptime: Duration,
    /// The latest completed checkpoint's id, if any.
    pub last_checkpoint: Option<u64>,
    /// How many times it restarted after a failure.
    pub restarts: u64,
}

struct Shared {
    id: JobId,
    name: String,
    started: SystemTime,
    started_at: Instant,
    state: AtomicU8,
    cancel: Arc<AtomicBool>,
    metrics: Arc<JobMetrics>,
    requests: Sender<PendingSavepoint>,
    inbox: Receiver<PendingSavepoint>,
    /// The failure of a stop whose savepoint failed is answered; the job
    /// goes on. Set while a stop is being attempted.
    stopping: Mutex<bool>,
    /// Stops the running attempt's subtasks at once (set while one runs).
    canceller: Mutex<Option<Canceller>>,
}

/// What stops an attempt's subtasks.
pub(crate) type Canceller = Arc<dyn Fn() + Send + Sync>;

/// The handle to one job: cheap to clone, shared with the runtime.
#[derive(Clone)]
pub struct JobControl {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for JobControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobControl")
            .field("id", &self.shared.id)
            .field("name", &self.shared.name)
            .field("state", &self.state())
            .finish()
    }
}

impl JobControl {
    /// A handle for job `name`, whose counters are `metrics`, cancelled
    /// through `cancel` (the same flag a signal handler may set).
    pub fn new(name: &str, metrics: Arc<JobMetrics>, cancel: Arc<AtomicBool>) -> Self {
        Self::with_id(JobId::random(), name, metrics, cancel)
    }

    /// As [`new`](Self::new), for the job with id `id` (a host's job,
    /// whose id outlives the process).
    pub fn with_id(
        id: JobId,
        name: &str,
        metrics: Arc<JobMetrics>,
        cancel: Arc<AtomicBool>,
    ) -> Self {
        let (requests, inbox) = crossbeam_channel::unbounded();
        JobControl {
            shared: Arc::new(Shared {
                id,
                name: name.to_owned(),
                started: SystemTime::now(),
                started_at: Instant::now(),
                state: AtomicU8::new(JobState::Created as u8),
                cancel,
                metrics,
                requests,
                inbox,
                stopping: Mutex::new(false),
                canceller: Mutex::new(None),
            }),
        }
    }

    /// The handle of job `id`, which ended as `state` before this process
    /// started (a host's registry remembers it).
    ///
    /// # Panics
    /// If `state` is not an end state.
    pub fn ended(id: JobId, name: &str, state: JobState) -> Self {
        assert!(state.is_terminal(), "invariant: {state:?} is not an end");
        let control = Self::with_id(
            id,
            name,
            Arc::new(JobMetrics::default()),
            Arc::new(AtomicBool::new(true)),
        );
        control.shared.state.store(state as u8, Ordering::Relaxed);
        control
    }

    /// The job's id.
    pub fn id(&self) -> &JobId {
        &self.shared.id
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The job's state now.
    pub fn state(&self) -> JobState {
        JobState::from_u8(self.shared.state.load(Ordering::Relaxed))
    }

    /// What the API shows about the job now.
    pub fn info(&self) -> JobInfo {
        JobInfo {
            id: self.shared.id.clone(),
            name: self.shared.name.clone(),
            state: self.state(),
            started: self.shared.started,
            uptime: self.shared.started_at.elapsed(),
            last_checkpoint: self.shared.metrics.last_checkpoint(),
            restarts: self.shared.metrics.restarts.load(Ordering::Relaxed),
        }
    }

    /// Asks for a savepoint (with `request.stop`, a stop with savepoint).
    ///
    /// # Errors
    /// [`Error::Savepoint`] if the job has ended, or is already stopping
    /// and `request.stop` is set.
    pub fn trigger_savepoint(&self, request: SavepointRequest) -> Result<SavepointTicket, Error> {
        let state = self.state();
        if state.is_terminal() || state == JobState::Cancelling {
            return Err(Error::Savepoint {
                message: format!(
                    "job `{}` ({}) is {}: no savepoint can be taken",
                    self.shared.name,
                    self.shared.id,
                    state.name()
                ),
            });
        }
        if request.stop.is_some() {
            let mut stopping = self
                .shared
                .stopping
                .lock()
                .expect("invariant: stop lock not poisoned");
            if *stopping {
                return Err(Error::Savepoint {
                    message: format!(
                        "job `{}` ({}) is already stopping",
                        self.shared.name, self.shared.id
                    ),
                });
            }
            *stopping = true;
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.shared
            .requests
            .send(PendingSavepoint { request, reply })
            .expect("invariant: the control handle owns its inbox");
        Ok(SavepointTicket { rx })
    }

    /// Cancels the job: no savepoint; its checkpoints are kept or deleted
    /// as `retention_on_cancel` says.
    pub fn cancel(&self) {
        self.advance(JobState::Cancelling);
        self.shared.cancel.store(true, Ordering::Relaxed);
        let canceller = self
            .shared
            .canceller
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(stop) = canceller {
            stop();
        }
    }

    /// Sets what stops the running attempt's subtasks (`None` once it
    /// ended); called at once if the job was cancelled already.
    pub(crate) fn set_canceller(&self, canceller: Option<Canceller>) {
        let now = canceller.clone();
        *self
            .shared
            .canceller
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = canceller;
        if let Some(stop) = now
            && self.shared.cancel.load(Ordering::Relaxed)
        {
            stop();
        }
    }

    /// The cancel flag the runtime watches.
    pub(crate) fn cancel_flag(&self) -> &Arc<AtomicBool> {
        &self.shared.cancel
    }

    /// Moves the job to `next` if its lifecycle allows it (see
    /// [`JobState::may_become`]); returns whether it moved. A refused move
    /// (a restart after a cancel, anything after the end) changes nothing.
    pub fn advance(&self, next: JobState) -> bool {
        let moved = self
            .shared
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                JobState::from_u8(now)
                    .may_become(next)
                    .then_some(next as u8)
            });
        if let Err(now) = moved {
            tracing::debug!(
                "job `{}` stays {}: it cannot become {}",
                self.shared.name,
                JobState::from_u8(now).name(),
                next.name()
            );
        }
        moved.is_ok()
    }

    /// A failed stop lets a later stop be requested.
    pub(crate) fn stop_failed(&self) {
        *self
            .shared
            .stopping
            .lock()
            .expect("invariant: stop lock not poisoned") = false;
    }

    /// Queued savepoint requests, for the coordinator.
    pub(crate) fn inbox(&self) -> &Receiver<PendingSavepoint> {
        &self.shared.inbox
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [JobState; 8] = [
        JobState::Created,
        JobState::Running,
        JobState::Restarting,
        JobState::Stopping,
        JobState::Cancelling,
        JobState::Finished,
        JobState::Cancelled,
        JobState::Failed,
    ];

    fn control() -> JobControl {
        JobControl::new(
            "job",
            Arc::new(JobMetrics::default()),
            Arc::new(AtomicBool::new(false)),
        )
    }

    #[test]
    fn an_ended_job_never_changes_again() {
        for end in ALL.iter().filter(|s| s.is_terminal()) {
            for next in ALL {
                assert!(!end.may_become(next), "{end:?} -> {next:?}");
            }
        }
    }

    #[test]
    fn a_cancel_is_never_undone() {
        let c = control();
        assert!(c.advance(JobState::Running));
        c.cancel();
        assert_eq!(c.state(), JobState::Cancelling);
        // What a restarting attempt or a failed stop would try.
        for next in [JobState::Running, JobState::Restarting, JobState::Stopping] {
            assert!(!c.advance(next), "{next:?}");
            assert_eq!(c.state(), JobState::Cancelling);
        }
        assert!(c.advance(JobState::Cancelled));
        c.cancel();
        assert_eq!(c.state(), JobState::Cancelled);
    }

    #[test]
    fn the_lifecycle_moves_through_its_states() {
        let c = control();
        assert!(!c.advance(JobState::Stopping), "not before it runs");
        for next in [
            JobState::Running,
            JobState::Stopping,
            JobState::Running,
            JobState::Restarting,
            JobState::Running,
            JobState::Stopping,
            JobState::Finished,
        ] {
            assert!(c.advance(next), "{next:?}");
        }
        assert!(!c.advance(JobState::Failed));
        assert_eq!(c.state(), JobState::Finished);
    }
}
