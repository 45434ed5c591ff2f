//! Executes a [`JobGraph`]: every subtask is a task on a pool of worker
//! threads, one per core ([`Workers`]), that runs while it has input
//! (or a trigger, or room downstream) and otherwise waits without holding
//! a worker, so an idle subtask costs memory, not a thread. The workers are
//! not the I/O runtime: a plugin call is CPU-bound and must never stall
//! the runtime that stores snapshots and serves the API. A subtask that
//! always has work gives its worker up every 2 ms, and a plugin call at
//! every epoch tick, so the other subtasks get their turn. Bounded channels between subtasks give
//! backpressure; they carry packed record batches.
//!
//! Every pair of connected subtasks has its own channel, which carries data
//! batches and control events (checkpoint barriers, end of data, end of
//! input) in order; a consumer reads its channels through an input gate
//! (`gate`), which aligns barriers. Each subtask also has a control
//! channel from the job: checkpoint triggers (sources), completions, cancel.
//!
//! While the subtasks run, the job's own thread coordinates checkpoints
//! (`checkpointing`): it triggers them and commits their metadata, and the
//! I/O runtime stores snapshots, so neither storage nor the coordinator
//! ever blocks a subtask.
//!
//! Failure: the first subtask to fail records the error and the job
//! cancels every subtask; the job then restarts from its latest completed
//! checkpoint as its restart strategy allows, or [`run`] returns the root
//! cause.

mod checkpointing;
mod control;
mod gate;
mod incremental;
mod router;
mod task;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::checkpoint::CheckpointId;
use crate::checkpoint::catalog::{self, RestorePoint, Status};
use crate::checkpoint::coordinator::CheckpointingMode;
use crate::checkpoint::storage::{CheckpointStorage, Storages};
use crate::connectors;
use crate::error::Error;
use crate::job::{JobGraph, VertexKind};
use crate::metrics::JobMetrics;
use crate::plugin::{Plugin, PluginEngine};
use crate::restart::RestartTracker;
use crate::savepoint::ClaimMode;
use crate::snapshot::protocol::gc;
use checkpointing::{CoordinatorMsg, CoordinatorOutcome, CoordinatorSetup, Uploader};
use gate::{GateMode, InputGate};
use router::{Router, wire};
use task::{Task, TaskCheckpointing};

pub use control::{
    JobControl, JobId, JobInfo, JobState, SavepointFormat, SavepointInfo, SavepointRequest,
    SavepointTicket, StopMode,
};

/// What travels on a channel, in order.
#[derive(Debug)]
pub enum Element {
    /// A packed batch of `len` records.
    Records {
        /// The packed bytes.
        data: Vec<u8>,
        /// How many records.
        len: usize,
    },
    /// Checkpoint barrier: everything before it belongs to the checkpoint.
    Barrier(CheckpointBarrier),
    /// The sender's event-time watermark advanced, or it went idle.
    Watermark(crate::watermark::WatermarkEvent),
    /// The sender will send no more records (barriers may follow).
    EndOfData {
        /// The data had already ended at the snapshot the job was restored
        /// from: whatever ends with it already ran its `close` then.
        restored: bool,
    },
    /// The sender will send nothing more. Without [`Element::EndOfData`]
    /// before it, the sender was suspended by a stop with savepoint: its
    /// data did not end, so nothing downstream closes.
    EndOfInput,
}

/// A checkpoint barrier, as it flows with the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointBarrier {
    /// The checkpoint.
    pub id: CheckpointId,
    /// The last checkpoint of a bounded job, after all its data.
    pub is_final: bool,
    /// A savepoint: always aligned, stored apart from checkpoints.
    pub savepoint: bool,
    /// Stop with savepoint: sources send nothing after this barrier and
    /// end once it completed (or resume if it was aborted).
    pub stop: bool,
}

/// What the job tells a subtask, apart from its data.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Control {
    /// Sources: take checkpoint `barrier.id` now.
    Trigger(CheckpointBarrier),
    /// An unaligned checkpoint's barrier, overtaking the records queued on
    /// input channel `channel`.
    PriorityBarrier {
        barrier: CheckpointBarrier,
        channel: usize,
    },
    /// The checkpoint completed: commit (sinks), notify the plugin.
    Complete(CheckpointId),
    /// The checkpoint was abandoned.
    Abort(CheckpointId),
    /// Sources: end the input now, as if exhausted (stop with drain).
    Drain,
    /// Sources that ended: every source ended and no final checkpoint
    /// follows (checkpoints off), so end the channels.
    EndInput,
    /// Stop: another subtask failed.
    Cancel,
}

/// How a subtask stopped early.
enum Exit {
    /// It failed: the job's root cause (unless another came first).
    Failed(Error),
    /// A neighbour failed and hung up, or the job was cancelled.
    Cancelled,
}

impl From<Error> for Exit {
    fn from(e: Error) -> Self {
        Exit::Failed(e)
    }
}

type TaskResult = Result<(), Exit>;

/// The sending end of a channel between two subtasks: bounded, so a full
/// channel holds its sender back (backpressure).
pub(crate) type DataSender = tokio::sync::mpsc::Sender<Element>;
/// The receiving end of a channel between two subtasks.
pub(crate) type DataReceiver = tokio::sync::mpsc::Receiver<Element>;
/// A subtask's control channel, from the job: never blocks its sender.
pub(crate) type ControlSender = tokio::sync::mpsc::UnboundedSender<Control>;
/// A subtask's end of its control channel.
pub(crate) type ControlReceiver = tokio::sync::mpsc::UnboundedReceiver<Control>;

/// Each worker thread's stack: the host's frames (a plugin call runs on a
/// stack of its own, [`crate::plugin::ASYNC_STACK`]).
pub const WORKER_STACK: usize = 2 << 20;

/// The worker threads subtasks run on: a fixed pool (one per core by
/// default) of an executor of its own, apart from the I/O runtime, which a
/// subtask never holds. A task that wakes itself (a yield) goes behind the
/// tasks already waiting, so a busy subtask takes turns with the others.
/// Each worker enters the I/O runtime's context, so a subtask's timers,
/// and the WASI a plugin calls, run on it. Cheap to clone; the threads end
/// once every clone is dropped.
#[derive(Clone)]
pub struct Workers {
    inner: Arc<WorkersInner>,
}

struct WorkersInner {
    executor: Arc<async_executor::Executor<'static>>,
    threads: usize,
    /// Dropped with the last clone: the workers end.
    _stop: tokio::sync::watch::Sender<()>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.inner.threads)
            .finish()
    }
}

impl Workers {
    /// Starts `threads` workers (0: one per core) whose timers run on `io`.
    ///
    /// # Errors
    /// [`Error::Internal`] if a thread cannot be started.
    pub fn start(threads: usize, io: &tokio::runtime::Handle) -> Result<Self, Error> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        };
        let executor = Arc::new(async_executor::Executor::new());
        let (stop, stopped) = tokio::sync::watch::channel(());
        for i in 0..threads {
            let (executor, mut stopped, io) = (executor.clone(), stopped.clone(), io.clone());
            std::thread::Builder::new()
                .name(format!("weir-worker-{i}"))
                .stack_size(WORKER_STACK)
                .spawn(move || {
                    let _io = io.enter();
                    futures::executor::block_on(executor.run(async move {
                        // Ends when the sender is dropped.
                        while stopped.changed().await.is_ok() {}
                    }));
                })
                .map_err(|e| Error::Internal(format!("starting a subtask worker: {e}")))?;
        }
        Ok(Workers {
            inner: Arc::new(WorkersInner {
                executor,
                threads,
                _stop: stop,
            }),
        })
    }

    /// How many worker threads there are.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// Runs `future` on the workers; the task's output, or its panic.
    fn spawn<F>(&self, future: F) -> async_executor::Task<std::thread::Result<F::Output>>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send,
    {
        use futures::FutureExt as _;
        self.inner
            .executor
            .spawn(std::panic::AssertUnwindSafe(future).catch_unwind())
    }
}

/// Runs `future` to its end on the test thread's own runtime (unit tests
/// of the asynchronous subtask parts), started once per thread.
#[cfg(test)]
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a test runtime starts");
    }
    RUNTIME.with(|rt| rt.block_on(future))
}

/// What a finished job did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Wall-clock time from start to the last sink's flush.
    pub elapsed: Duration,
    /// Per vertex, in graph order: `(uid, records in, records out)`.
    pub vertices: Vec<(String, u64, u64)>,
    /// The checkpoint the run started from, if any.
    pub restored_from: Option<CheckpointId>,
    /// How many times the job restarted after a failure.
    pub restarts: u32,
    /// The savepoint it was stopped with (`weir stop`), if it was.
    pub stopped_with: Option<SavepointInfo>,
}

/// Where a run starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Restore {
    /// From scratch; refused if the job's storage holds checkpoints.
    #[default]
    Fresh,
    /// From the latest completed checkpoint in the job's storage, or from
    /// scratch if there is none.
    Latest,
    /// From the checkpoint at this location (directory or `_metadata`; a
    /// local path or a storage URL).
    From(String),
}

/// How to run a job.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Where to start.
    pub restore: Restore,
    /// The job file as the user named it, for messages.
    pub job_file: Option<PathBuf>,
    /// Set to cancel the job (e.g. from a signal handler): every subtask
    /// stops, and its checkpoints are kept or deleted as
    /// `retention_on_cancel` says.
    pub cancel: Option<Arc<AtomicBool>>,
    /// The job's control handle (REST API): state, savepoints, stop,
    /// cancel. Its cancel flag acts as `cancel`.
    pub control: Option<JobControl>,
    /// Restore even if the snapshot holds state of uids the job does not
    /// have (that state is dropped, and reported).
    pub allow_non_restored: bool,
    /// Whether the run owns the snapshot it restores from.
    pub claim_mode: ClaimMode,
    /// Where storage URLs and paths are opened: a restore location and a
    /// savepoint target resolve against its base directory, a relative
    /// `[checkpoints] storage` against the job file's directory below it.
    /// `None`: the job file's directory, S3 from the environment.
    pub storages: Option<Storages>,
    /// The job's checkpoint storage, instead of opening `[checkpoints]
    /// storage` (a host's per-job namespace).
    pub storage: Option<CheckpointStorage>,
    /// The I/O runtime to store snapshots on (a host's shared one);
    /// `None` starts one for the run.
    pub io: Option<tokio::runtime::Handle>,
    /// The workers the subtasks run on (a host's shared pool); `None`
    /// starts one per core for the run.
    pub workers: Option<Workers>,
    /// Memory the job's plugins count in besides the job's own budget (a
    /// tenant's quota).
    pub memory_pool: Option<crate::plugin::MemoryPool>,
    /// The CPU group the job's plugin instances share the machine in (a
    /// tenant's); `None`: the kernel's scheduling alone.
    pub cpu_group: Option<crate::plugin::CpuGroup>,
    /// Keep the checkpoints of a job that finished (a host deletes them
    /// once it has recorded that the job finished, so a crash in between
    /// cannot restart it from scratch).
    pub keep_finished_checkpoints: bool,
    /// Set when the run lost its job lease: another run owns the job's
    /// storage, so it ends as cancelled without deleting anything there.
    pub fenced: Option<Arc<AtomicBool>>,
}

/// Runs `graph` to completion from scratch.
///
/// # Errors
/// As [`run_with`].
pub fn run(
    graph: &JobGraph,
    engine: &PluginEngine,
    metrics: Arc<JobMetrics>,
) -> Result<RunReport, Error> {
    run_with(graph, engine, metrics, &RunOptions::default())
}

/// Runs `graph` to completion, restoring as `options` say, restarting
/// after failures as the job's restart strategy allows.
///
/// # Errors
/// The failure that ended the job: a plugin that fails to load, traps or
/// exceeds a limit (once restarts are used up), a source or sink I/O
/// error, a malformed record, a storage error, a checkpoint that cannot be
/// restored, or checkpoints in storage when starting fresh.
pub fn run_with(
    graph: &JobGraph,
    engine: &PluginEngine,
    metrics: Arc<JobMetrics>,
    options: &RunOptions,
) -> Result<RunReport, Error> {
    let mut options = options.clone();
    if let Some(control) = &options.control {
        options
            .cancel
            .get_or_insert_with(|| control.cancel_flag().clone());
    }
    let result = run_controlled(graph, engine, metrics, &options);
    if let Some(control) = &options.control {
        control.advance(match &result {
            Ok(_) => JobState::Finished,
            Err(e) if e.kind() == crate::ErrorKind::Cancelled => JobState::Cancelled,
            Err(_) => JobState::Failed,
        });
    }
    result
}

fn run_controlled(
    graph: &JobGraph,
    engine: &PluginEngine,
    metrics: Arc<JobMetrics>,
    options: &RunOptions,
) -> Result<RunReport, Error> {
    let started = Instant::now();
    let plugins = load_plugins(graph, engine, &metrics, options)?;
    // Dropped (and its threads joined) when the run ends, after every
    // task on it finished.
    let owned_io = match &options.io {
        Some(_) => None,
        None => Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("weir-io")
                .enable_all()
                .build()
                .map_err(|e| Error::Internal(format!("starting the I/O runtime: {e}")))?,
        ),
    };
    let io = match (&options.io, &owned_io) {
        (Some(handle), _) => handle.clone(),
        (None, Some(rt)) => rt.handle().clone(),
        (None, None) => unreachable!("invariant: a runtime is owned when none is given"),
    };
    let workers = match &options.workers {
        Some(w) => w.clone(),
        None => Workers::start(0, &io)?,
    };
    let storages = options
        .storages
        .clone()
        .unwrap_or_else(|| Storages::from_env(&graph.job_dir));
    // Without checkpoints a fresh run touches no storage at all.
    let storage = match &options.storage {
        Some(s) => Some(s.clone()),
        None => (graph.checkpoints.enabled() || options.restore != Restore::Fresh)
            .then(|| {
                storages
                    .relative_to(&graph.job_dir)
                    .open(&graph.checkpoints.storage)
            })
            .transpose()?,
    };
    let start = io.block_on(starting_point(graph, storage.as_ref(), &storages, options))?;
    let (mut restore, mut next_id) = (start.point, start.next_id);
    let restored_from = restore.as_ref().map(|r| r.manifest.id());
    // A snapshot the user named with `-s` (or its restore record did);
    // claimed or not.
    let user_snapshot = start
        .user_claim
        .and_then(|_| restore.as_ref().map(|r| r.location()));
    let mut tracker = RestartTracker::new(graph.restart.clone());
    let graph = Arc::new(graph.clone());
    loop {
        if let Some(c) = &options.control {
            c.advance(JobState::Running);
        }
        let attempt = Attempt {
            graph: graph.clone(),
            plugins: &plugins,
            metrics: metrics.clone(),
            storage: storage.as_ref(),
            storages: storages.relative_to(&graph.job_dir),
            io: &io,
            workers: &workers,
            attempt_number: tracker.restarts(),
            cancel: options.cancel.clone(),
            allow_non_restored: start.allow_non_restored,
            control: options.control.clone(),
            claimed: user_snapshot
                .clone()
                .filter(|_| start.user_claim == Some(ClaimMode::Claim)),
            protected: user_snapshot
                .clone()
                .filter(|_| start.user_claim == Some(ClaimMode::NoClaim)),
        };
        let (result, outcome) = attempt.run(restore.as_ref(), next_id);
        if let Some(id) = outcome.last_triggered {
            next_id = next_id.max(id.next());
        }
        let latest = outcome.latest_completed;
        if is_set(&options.cancel) {
            return Err(cancelled(graph.as_ref(), storage.as_ref(), &io, options));
        }
        match result {
            Ok(()) => {
                // A stop's savepoint replaces the checkpoints only if it
                // outlives the process (the REST API refuses memory://;
                // an embedder may not).
                let replaced = outcome
                    .stopped_with
                    .as_ref()
                    .is_none_or(|s| !s.location.starts_with("memory://"));
                if let Some(storage) = &storage
                    && graph.checkpoints.enabled()
                    && replaced
                    && !options.keep_finished_checkpoints
                {
                    // As Flink: a finished job's checkpoints are discarded.
                    io.block_on(storage.delete_prefix(&graph.name))?;
                }
                return Ok(RunReport {
                    elapsed: started.elapsed(),
                    vertices: metrics
                        .vertices
                        .iter()
                        .map(|m| (m.uid.clone(), m.records_in(), m.records_out()))
                        .collect(),
                    restored_from,
                    restarts: tracker.restarts(),
                    stopped_with: outcome.stopped_with,
                });
            }
            Err(e) => {
                // Before the state says so: whoever sees it failed or
                // restarting finds why.
                metrics.failed(e.to_string());
                if !e.restartable(graph.operator_errors) {
                    return Err(e);
                }
                let Some(delay) = tracker.on_failure(Instant::now(), rand::random::<f64>()) else {
                    return Err(e);
                };
                if let (Some(id), Some(storage)) = (latest, &storage)
                    && restore.as_ref().is_none_or(|r| r.manifest.id() != id)
                {
                    let dir = checkpointing::checkpoint_dir(&graph.name, id);
                    restore = Some(io.block_on(open_stored(storage, &dir))?);
                }
                if let Some(c) = &options.control {
                    // A stop in progress died with the attempt (its caller
                    // was told): another may be asked for.
                    c.stop_failed();
                    c.advance(JobState::Restarting);
                }
                metrics.restarts.store(
                    u64::from(tracker.restarts()),
                    std::sync::atomic::Ordering::Relaxed,
                );
                tracing::warn!(
                    "job `{}` failed: {e}; restart {} ({}) in {delay:.1?} from {}",
                    graph.name,
                    tracker.restarts(),
                    tracker.describe(),
                    restore
                        .as_ref()
                        .map_or("scratch".to_owned(), |r| r.manifest.describe())
                );
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    if is_set(&options.cancel) {
                        return Err(cancelled(graph.as_ref(), storage.as_ref(), &io, options));
                    }
                    std::thread::sleep((until - Instant::now()).min(Duration::from_millis(20)));
                }
            }
        }
    }
}

/// Tells every subtask of the attempt to stop (one that already ended
/// needs nothing).
fn cancel_all(controls: &[ControlSender]) {
    for c in controls {
        let _ = c.send(Control::Cancel);
    }
}

/// Whether `flag` is given and set.
fn is_set(flag: &Option<Arc<AtomicBool>>) -> bool {
    flag.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
}

/// Applies `retention_on_cancel` to a cancelled job's checkpoints, unless
/// the run is fenced (another run owns them, or the host stops).
fn cancelled(
    graph: &JobGraph,
    storage: Option<&CheckpointStorage>,
    io: &tokio::runtime::Handle,
    options: &RunOptions,
) -> Error {
    let storage = storage.filter(|_| !is_set(&options.fenced));
    use crate::checkpoint::coordinator::RetentionOnCancel;
    let checkpoints = match storage {
        Some(s) if graph.checkpoints.enabled() => {
            let location = s.location(&graph.name);
            match graph.checkpoints.retention_on_cancel {
                RetentionOnCancel::Retain => {
                    format!("its checkpoints are kept in {location}: resume with --from-latest")
                }
                RetentionOnCancel::Delete => match io.block_on(s.delete_prefix(&graph.name)) {
                    Ok(_) => format!("its checkpoints in {location} were deleted"),
                    Err(e) => format!("deleting its checkpoints failed: {e}"),
                },
            }
        }
        _ => "it has no checkpoints".to_owned(),
    };
    Error::Cancelled {
        job: graph.name.clone(),
        checkpoints,
    }
}

/// The completed checkpoint in `dir` of `storage`.
async fn open_stored(storage: &CheckpointStorage, dir: &str) -> Result<RestorePoint, Error> {
    let path = format!("{dir}/{}", catalog::METADATA_FILE);
    let bytes = storage.get(&path).await?;
    Ok(RestorePoint {
        storage: storage.clone(),
        dir: dir.to_owned(),
        manifest: catalog::Manifest::Checkpoint(crate::checkpoint::format::decode_metadata(
            &storage.location(&path),
            &bytes,
        )?),
    })
}

/// Where a run starts.
struct Start {
    /// The checkpoint or savepoint to restore, if any.
    point: Option<RestorePoint>,
    /// The first checkpoint id to take.
    next_id: CheckpointId,
    /// Restored from a snapshot the user named (`-s`, or a restore record
    /// remembering it): how the run may treat it.
    user_claim: Option<ClaimMode>,
    /// Whether state of uids the job does not have is dropped.
    allow_non_restored: bool,
}

/// Decides where the run starts: the checkpoint to restore, if any.
async fn starting_point(
    graph: &JobGraph,
    storage: Option<&CheckpointStorage>,
    storages: &Storages,
    options: &RunOptions,
) -> Result<Start, Error> {
    let Some(storage) = storage else {
        clear_file_sinks(graph)?;
        return Ok(Start {
            point: None,
            next_id: CheckpointId(1),
            user_claim: None,
            allow_non_restored: options.allow_non_restored,
        });
    };
    let listed = catalog::scan(storage, &graph.name).await?;
    // A corrupt checkpoint still counts: starting from scratch (or from an
    // older one) past it would silently throw its state away.
    let completed: Vec<&catalog::Listed> = listed
        .iter()
        .filter(|l| !matches!(l.status, Status::Incomplete))
        .collect();
    // A run restored with `-s` that has not completed a checkpoint yet:
    // its snapshot is where the job is (see `RestoreRecord`).
    let record = catalog::read_restore_record(storage, &graph.name)
        .await?
        .filter(|r| !r.superseded_by(&completed.iter().map(|l| l.id).collect::<Vec<_>>()));
    let mut user_claim = matches!(options.restore, Restore::From(_)).then_some(options.claim_mode);
    let mut allow_non_restored = options.allow_non_restored;
    let point = match (&options.restore, &record) {
        (Restore::Fresh, Some(r)) => {
            return Err(Error::Restore {
                message: format!(
                    "job `{}` was restored from {} ({}) and has completed no checkpoint since; \
                     it will not silently start from scratch. Resume with --from-latest, or \
                     start from scratch after `weir checkpoints JOB --delete`",
                    graph.name,
                    r.location,
                    storage.location(&format!("{}/{}", graph.name, catalog::RESTORE_FILE))
                ),
            });
        }
        (Restore::Latest, Some(r)) => {
            tracing::info!(
                "job `{}` was restored from {} and completed no checkpoint since: resuming from it",
                graph.name,
                r.location
            );
            user_claim = Some(r.claim_mode);
            allow_non_restored = r.allow_non_restored;
            Some(RestorePoint::open(&r.location, storages).await?)
        }
        (Restore::Fresh, None) => {
            if let Some(latest) = completed.last() {
                return Err(Error::CheckpointsExist {
                    job: graph.name.clone(),
                    job_file: options
                        .job_file
                        .as_deref()
                        .unwrap_or(Path::new("JOB.toml"))
                        .display()
                        .to_string(),
                    location: storage.location(&graph.name),
                    count: completed.len(),
                    latest: latest.id.0,
                });
            }
            None
        }
        (Restore::Latest, None) => match completed.last() {
            Some(l) => {
                if let Status::Corrupt(why) = &l.status {
                    return Err(Error::Restore {
                        message: format!(
                            "the latest checkpoint, {}, is unreadable: {why}; resume from an older one with `-s`, or delete it",
                            storage.location(&l.dir)
                        ),
                    });
                }
                Some(open_stored(storage, &l.dir).await?)
            }
            None => {
                tracing::info!(
                    "no completed checkpoint of job `{}` in {}: starting from scratch",
                    graph.name,
                    storage.location(&graph.name)
                );
                None
            }
        },
        (Restore::From(location), _) => Some(RestorePoint::open(location, storages).await?),
    };
    // What a crash left: incomplete checkpoints, interrupted uploads.
    let (done, referenced) = catalog::retained(&listed);
    let sweep = gc::orphans(
        &catalog::job_files(storage, &graph.name).await?,
        &done,
        &referenced.values().flatten().cloned().collect(),
    );
    if !sweep.is_empty() {
        tracing::info!(
            "removing {} file(s) no completed checkpoint of job `{}` references (incomplete checkpoints, interrupted uploads)",
            sweep.files.len(),
            graph.name
        );
        catalog::sweep(storage, &graph.name, &sweep).await?;
    }
    match &point {
        Some(p) => {
            let plan = p.plan(graph, allow_non_restored)?;
            tracing::info!(
                "restoring job `{}` from {} ({})",
                graph.name,
                p.manifest.describe(),
                p.location()
            );
            for (uid, from, to) in plan.rescaled() {
                tracing::info!("`{uid}` rescales from parallelism {from} to {to}");
            }
            if !plan.new.is_empty() {
                tracing::info!("starting with empty state: {}", plan.new.join(", "));
            }
            if !plan.dropped.is_empty() {
                tracing::warn!(
                    "dropping the state of uids the job does not have (--allow-non-restored-state): {}",
                    plan.dropped.join(", ")
                );
            }
        }
        None => clear_file_sinks(graph)?,
    }
    // Never reuse an id: not one in storage, nor the restored one.
    let next_id = listed
        .iter()
        .map(|l| l.id)
        .chain(point.as_ref().map(|p| p.manifest.id()))
        .max()
        .map_or(CheckpointId(1), CheckpointId::next);
    match (&point, user_claim) {
        (Some(p), Some(claim_mode)) if graph.checkpoints.enabled() => {
            // Before any record is processed: a process killed before the
            // run's first checkpoint resumes from the snapshot.
            let record = catalog::RestoreRecord {
                version: catalog::RESTORE_VERSION,
                location: p.location(),
                snapshot_id: p.manifest.id().0,
                claim_mode,
                allow_non_restored,
                first_checkpoint: record
                    .as_ref()
                    .filter(|r| r.location == p.location())
                    .map_or(next_id, |r| r.first_checkpoint),
                written_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            };
            catalog::write_restore_record(&record, storage, &graph.name).await?;
        }
        // No restore record applies (superseded, or none): drop a stale
        // one.
        _ => catalog::remove_restore_record(storage, &graph.name).await?,
    }
    Ok(Start {
        point,
        next_id,
        user_claim,
        allow_non_restored,
    })
}

/// A fresh run replaces the output of the job's `file` sinks.
fn clear_file_sinks(graph: &JobGraph) -> Result<(), Error> {
    for v in &graph.vertices {
        if let VertexKind::FileSink { dir } = &v.kind {
            connectors::clear_file_sink(&v.uid, dir)?;
        }
    }
    Ok(())
}

/// One run of the job's dataflow, from a checkpoint or from scratch.
struct Attempt<'a> {
    graph: Arc<JobGraph>,
    plugins: &'a HashMap<usize, Plugin>,
    metrics: Arc<JobMetrics>,
    storage: Option<&'a CheckpointStorage>,
    /// Where savepoint targets are opened (relative to the job file).
    storages: Storages,
    io: &'a tokio::runtime::Handle,
    workers: &'a Workers,
    attempt_number: u32,
    cancel: Option<Arc<AtomicBool>>,
    allow_non_restored: bool,
    control: Option<JobControl>,
    /// The restored snapshot the run owns (`--claim-mode claim`).
    claimed: Option<String>,
    /// The restored snapshot the run must never delete (`no-claim`).
    protected: Option<String>,
}

impl Attempt<'_> {
    /// Runs until the job ends or fails; returns the outcome and the
    /// latest checkpoint completed (in this attempt or restored).
    fn run(
        self,
        restore: Option<&RestorePoint>,
        first_id: CheckpointId,
    ) -> (Result<(), Error>, CoordinatorOutcome) {
        let restored_id = restore.map(|r| r.manifest.id());
        let (result, mut outcome) = match self.run_inner(restore, first_id) {
            Ok(r) => r,
            Err(e) => (Err(e), CoordinatorOutcome::default()),
        };
        outcome.latest_completed = outcome.latest_completed.or(restored_id);
        (result, outcome)
    }

    fn run_inner(
        self,
        restore: Option<&RestorePoint>,
        first_id: CheckpointId,
    ) -> Result<(Result<(), Error>, CoordinatorOutcome), Error> {
        let graph = &*self.graph;
        let config = &graph.checkpoints;
        let (mut snapshots, mut types) = match restore {
            Some(r) => {
                let restored = self.io.block_on(r.load(graph, self.allow_non_restored))?;
                (restored.snapshots, restored.types)
            }
            None => (Vec::new(), HashMap::new()),
        };
        snapshots.reverse();
        let failure: Arc<Mutex<Option<Error>>> = Arc::default();
        let mut tasks = Vec::new();
        let mut addresses = Vec::new();
        let mut sources = Vec::new();
        let (controls, control_rx): (Vec<_>, Vec<_>) = graph
            .vertices
            .iter()
            .flat_map(|v| (0..v.parallelism).map(move |_| task::control_channel()))
            .unzip();
        let first: Vec<usize> = graph
            .vertices
            .iter()
            .scan(0, |next, v| {
                let at = *next;
                *next += v.parallelism as usize;
                Some(at)
            })
            .collect();
        let (mut outputs, mut inputs) = wire(graph, &controls, &first);
        let controls = Arc::new(controls);
        let (coordinator_tx, inbox) = crossbeam_channel::unbounded();
        // The coordinator always runs: with periodic checkpoints off it
        // still takes savepoints.
        let savepoints = checkpointing::SavepointTargets::default();
        let uploader = Uploader {
            handle: self.io.clone(),
            storage: self.storage.filter(|_| config.enabled()).cloned(),
            incremental: config.incremental,
            job: graph.name.clone(),
            savepoints: savepoints.clone(),
        };
        let gate_mode = match (config.mode, config.unaligned) {
            (CheckpointingMode::AtLeastOnce, _) => GateMode::AtLeastOnce,
            (CheckpointingMode::ExactlyOnce, false) => GateMode::Aligned,
            (CheckpointingMode::ExactlyOnce, true) => GateMode::Unaligned,
        };
        let mut control_rx = control_rx.into_iter();
        let opened = task::Opened::for_subtasks(control_rx.len());
        for (v_idx, vertex) in graph.vertices.iter().enumerate() {
            for subtask in 0..vertex.parallelism {
                let index = addresses.len();
                addresses.push((v_idx, subtask));
                if !vertex.kind.has_inputs() {
                    sources.push(index);
                }
                tasks.push(Task {
                    batch_size: graph.batch_size,
                    max_parallelism: graph.max_parallelism,
                    vertex: vertex.clone(),
                    subtask,
                    plugin: self.plugins.get(&v_idx).cloned(),
                    router: Router::new(
                        vertex.uid.clone(),
                        std::mem::take(&mut outputs[v_idx][subtask as usize]),
                        graph.batch_size,
                        graph.max_parallelism,
                    ),
                    gate: InputGate::new(
                        std::mem::take(&mut inputs[v_idx][subtask as usize]),
                        control_rx
                            .next()
                            .expect("invariant: one control channel per subtask"),
                        gate_mode,
                        config.aligned_timeout,
                    ),
                    metrics: self.metrics.clone(),
                    v_idx,
                    checkpointing: TaskCheckpointing {
                        task: index,
                        coordinator: coordinator_tx.clone(),
                        uploader: uploader.clone(),
                    },
                    attempt_number: self.attempt_number,
                    restored: snapshots.pop(),
                    restored_types: types.remove(&vertex.uid).unwrap_or_default(),
                    awaiting_in_flight: None,
                    incremental: incremental::Incremental::default(),
                    opened: opened(),
                });
            }
        }
        drop(outputs);
        drop(inputs);
        // The coordinator's inbox outlives the subtasks (uploads hold
        // senders): this one tells it to stop.
        let shutdown = coordinator_tx;
        // Completed checkpoints already in storage are subsumed in turn by
        // the new ones.
        let (completed, referenced) = match &uploader.storage {
            Some(storage) => {
                let listed = self.io.block_on(catalog::scan(storage, &graph.name))?;
                let completed: Vec<CheckpointId> = listed
                    .iter()
                    .filter(|l| matches!(l.status, Status::Completed(_)))
                    .filter(|l| {
                        self.protected
                            .as_ref()
                            .is_none_or(|p| *p != storage.location(&l.dir))
                    })
                    .map(|l| l.id)
                    .collect();
                (completed, catalog::retained(&listed).1)
            }
            None => (Vec::new(), Default::default()),
        };
        let setup = CoordinatorSetup {
            config: config.clone(),
            graph: self.graph.clone(),
            storage: uploader.storage,
            storages: self.storages.clone(),
            handle: self.io.clone(),
            tasks: addresses.clone(),
            sources: sources.clone(),
            controls: controls.clone(),
            inbox,
            first_id,
            completed,
            referenced,
            failure: failure.clone(),
            metrics: self.metrics.clone(),
            control: self.control.clone(),
            savepoints,
            claimed: self.claimed.clone(),
        };
        let mut handles = Vec::new();
        for task in tasks {
            let failure = failure.clone();
            let controls = controls.clone();
            let name = format!("{}#{}", task.vertex.uid, task.subtask);
            let handle = self.workers.spawn(async move {
                if let Err(Exit::Failed(e)) = task.run().await {
                    failure
                        .lock()
                        .expect("invariant: failure lock not poisoned")
                        .get_or_insert(e);
                    cancel_all(&controls);
                }
            });
            handles.push((name, handle));
        }
        // Cancelling: the control handle stops the subtasks itself; a bare
        // flag (an embedder's) is polled while they run.
        let attempt_done = Arc::new(AtomicBool::new(false));
        if let Some(control) = &self.control {
            let controls = controls.clone();
            control.set_canceller(Some(Arc::new(move || {
                cancel_all(&controls);
            })));
        }
        if let Some(cancel) = self.cancel.clone().filter(|_| self.control.is_none()) {
            let (done, controls) = (attempt_done.clone(), controls.clone());
            self.io.spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    if cancel.load(Ordering::Relaxed) {
                        cancel_all(&controls);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
        // Once every subtask ended, the coordinator is told to stop.
        let joined = {
            let controls = controls.clone();
            self.io.spawn(async move {
                let mut panicked = None;
                for (name, h) in handles {
                    if h.await.is_err() {
                        panicked.get_or_insert(name);
                        cancel_all(&controls);
                    }
                }
                let _ = shutdown.send(CoordinatorMsg::Shutdown);
                panicked
            })
        };
        // The coordinator runs on this thread, which has nothing else to
        // do until the subtasks end: a job costs one thread, not two.
        let coordinated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            checkpointing::coordinate(setup)
        }));
        if coordinated.is_err() {
            cancel_all(&controls);
        }
        let panicked = self
            .io
            .block_on(joined)
            .map_err(|e| Error::Internal(format!("waiting for the subtasks: {e}")))?;
        attempt_done.store(true, Ordering::Relaxed);
        if let Some(control) = &self.control {
            control.set_canceller(None);
        }
        let latest = coordinated
            .map_err(|_| Error::Internal("the checkpoint coordinator panicked".into()))?;
        let failed = failure
            .lock()
            .expect("invariant: failure lock not poisoned")
            .take();
        let result = match (failed, panicked) {
            (Some(e), _) => Err(e),
            (None, Some(name)) => Err(Error::Internal(format!("subtask {name} panicked"))),
            (None, None) => Ok(()),
        };
        Ok((result, latest))
    }
}

/// Loads every distinct plugin once; subtasks instantiate their own copy.
fn load_plugins(
    graph: &JobGraph,
    engine: &PluginEngine,
    metrics: &JobMetrics,
    options: &RunOptions,
) -> Result<HashMap<usize, Plugin>, Error> {
    let pool = options.memory_pool.as_ref();
    let mut by_path: HashMap<PathBuf, Plugin> = HashMap::new();
    let mut by_vertex = HashMap::new();
    // Every instance of the job counts in one `limits.job_memory_mb`, its
    // metrics show it.
    let memory = crate::plugin::JobMemory::counted_in(metrics.plugin_memory.clone(), pool);
    for (i, v) in graph.vertices.iter().enumerate() {
        if let VertexKind::Operator { plugin, .. } = &v.kind {
            let loaded = match by_path.get(plugin) {
                Some(p) => p.clone(),
                None => {
                    let mut p = engine.load(&v.uid, plugin)?.with_job_memory(&memory);
                    if let Some(group) = &options.cpu_group {
                        p = p.with_cpu_group(group, &metrics.plugin_cpu_ns);
                    }
                    tracing::debug!(
                        "loaded plugin {} for `{}` in {:?} (cached: {})",
                        plugin.display(),
                        v.uid,
                        p.stats.elapsed,
                        p.stats.from_cache
                    );
                    by_path.insert(plugin.clone(), p.clone());
                    p
                }
            };
            by_vertex.insert(i, loaded);
        }
    }
    Ok(by_vertex)
}
