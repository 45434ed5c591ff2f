//! The runtime's side of checkpoints: the coordinator (on the job's run
//! thread, while its subtasks run) that carries
//! out the [`CheckpointCoordinator`]'s decisions (trigger sources, commit
//! `_metadata`, notify, abort, subsume), the uploader that stores subtask
//! snapshots in the background, and finding and loading the checkpoint a
//! job restores from.
//!
//! Layout in storage: `<job>/chk-<n>/_metadata` plus one state file per
//! subtask with something to store, `<job>/chk-<n>/<uid>-<subtask>.state`,
//! referenced from the metadata by file name only. A savepoint goes to
//! `<target>/savepoint-<job>-<n>/` instead, in the canonical layout
//! (`crate::savepoint::format`) or, `--type native`, in this one.
//!
//! The coordinator also serves the job's [`JobControl`]: savepoint
//! requests, stop with savepoint (suspend or drain).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::runtime::Handle;

use super::control::{JobControl, JobState, PendingSavepoint};
use super::{CheckpointBarrier, Control, ControlSender, SavepointFormat, SavepointInfo, StopMode};
use crate::checkpoint::CheckpointId;
use crate::checkpoint::catalog::{self, METADATA_FILE, human_bytes};
use crate::checkpoint::coordinator::{CheckpointConfig, CheckpointCoordinator, Decision};
use crate::checkpoint::format::{self, CheckpointMetadata, SubtaskMetadata, SubtaskSnapshot};
use crate::checkpoint::storage::{CheckpointStorage, StorageError, Storages};
use crate::error::Error;
use crate::job::JobGraph;
use crate::keygroup::KeyGroupRange;
use crate::metrics::JobMetrics;
use crate::plugin::DeclaredState;
use crate::savepoint::format as sp;
use crate::snapshot::protocol::gc;
use crate::snapshot::protocol::metadata::{self, SavepointPart};
use crate::snapshot::protocol::savepoints::{Effect, Savepoints};

/// What subtasks tell the coordinator.
#[derive(Debug)]
pub(crate) enum CoordinatorMsg {
    /// A subtask's snapshot for checkpoint `id` is stored.
    Ack {
        id: CheckpointId,
        task: usize,
        meta: Box<SubtaskMetadata>,
        /// A canonical savepoint's part: what the subtask wrote.
        part: Option<SavepointPart>,
        /// An incremental checkpoint's: the completed checkpoint whose
        /// files the subtask's state extends.
        extends: Option<CheckpointId>,
    },
    /// A subtask cannot take checkpoint `id`.
    Decline {
        id: CheckpointId,
        task: usize,
        reason: String,
    },
    /// A source's input ended; it goes on taking checkpoints until told
    /// the job ends.
    SourceFinished { task: usize },
    /// Every subtask has stopped.
    Shutdown,
}

/// Where a savepoint's files go.
#[derive(Clone)]
pub(crate) struct SavepointTarget {
    pub storage: CheckpointStorage,
    /// `savepoint-<job>-<id>` in that storage.
    pub dir: String,
    pub format: SavepointFormat,
}

/// The targets of savepoints in progress, by id: the coordinator registers
/// one before triggering, uploaders read it.
pub(crate) type SavepointTargets = Arc<Mutex<HashMap<CheckpointId, SavepointTarget>>>;

/// What a subtask's synchronous phase took: its snapshot, with its keyed
/// state already encoded (cheaper than copying it).
pub(crate) struct Taken {
    pub snapshot: SubtaskSnapshot,
    pub keyed: Vec<format::EncodedKeyGroup>,
    /// A canonical savepoint's keyed sections, framed straight from the
    /// live state (instead of `keyed`).
    pub framed: Vec<sp::FramedSection>,
    /// For a savepoint: the states the plugin declared (their types and
    /// redistribution go into the canonical `_metadata`).
    pub declared: Vec<DeclaredState>,
    /// An incremental checkpoint's: the completed checkpoint whose state
    /// `keyed`'s deltas extend.
    pub extends: Option<CheckpointId>,
}

impl From<SubtaskSnapshot> for Taken {
    fn from(snapshot: SubtaskSnapshot) -> Self {
        Self {
            snapshot,
            keyed: Vec::new(),
            framed: Vec::new(),
            declared: Vec::new(),
            extends: None,
        }
    }
}

/// The synchronous phase's figures, passed along to the metadata.
pub(crate) struct SyncTiming {
    pub sync: Duration,
    pub alignment: Duration,
    pub key_groups: KeyGroupRange,
}

/// Stores subtask snapshots on the I/O runtime (the asynchronous phase).
#[derive(Clone)]
pub(crate) struct Uploader {
    pub handle: Handle,
    /// Checkpoint storage; `None` with periodic checkpoints off.
    pub storage: Option<CheckpointStorage>,
    /// Whether checkpoints are incremental (`[checkpoints] incremental`).
    pub incremental: bool,
    pub job: String,
    pub savepoints: SavepointTargets,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `<job>/chk-<id>`.
pub(crate) fn checkpoint_dir(job: &str, id: CheckpointId) -> String {
    format!("{job}/{}", gc::checkpoint_dir(id))
}

impl Uploader {
    /// Whether `barrier` is a savepoint in the canonical layout (its
    /// keyed state is then framed section by section in the synchronous
    /// phase).
    pub(crate) fn canonical(&self, barrier: &CheckpointBarrier) -> bool {
        barrier.savepoint
            && self
                .savepoints
                .lock()
                .expect("invariant: savepoint targets lock not poisoned")
                .get(&barrier.id)
                .is_some_and(|t| t.format == SavepointFormat::Canonical)
    }

    /// Encodes and stores `snapshot` as `file` of checkpoint (or
    /// savepoint) `barrier.id`, then acknowledges (or declines, if storing
    /// failed) to the coordinator.
    pub(crate) fn upload(
        &self,
        barrier: CheckpointBarrier,
        task: usize,
        file: String,
        taken: Taken,
        timing: SyncTiming,
        coordinator: Sender<CoordinatorMsg>,
    ) {
        let id = barrier.id;
        let extends = taken.extends;
        let started = Instant::now();
        let meta = move |file: Option<String>, size: u64, key_groups| SubtaskMetadata {
            subtask: 0,
            file,
            size,
            key_group_start: timing.key_groups.start,
            key_group_end: timing.key_groups.end,
            key_groups,
            base: Vec::new(),
            sync_ms: millis(timing.sync),
            async_ms: millis(started.elapsed()),
            alignment_ms: millis(timing.alignment),
        };
        let decline = {
            let coordinator = coordinator.clone();
            move |reason: String| {
                let _ = coordinator.send(CoordinatorMsg::Decline { id, task, reason });
            }
        };
        let target = if barrier.savepoint {
            let t = self
                .savepoints
                .lock()
                .expect("invariant: savepoint targets lock not poisoned")
                .get(&id)
                .cloned();
            match t {
                Some(t) => Some(t),
                None => return decline(format!("savepoint {id} has no target directory")),
            }
        } else {
            None
        };
        let (storage, dir, canonical) = match (target, &self.storage) {
            (Some(t), _) => (t.storage, t.dir, t.format == SavepointFormat::Canonical),
            (None, Some(storage)) => (storage.clone(), checkpoint_dir(&self.job, id), false),
            (None, None) => return decline("checkpoints are off".into()),
        };
        if canonical {
            self.handle.spawn(async move {
                let sink = taken.snapshot.sink.clone();
                let declared = taken.declared.clone();
                let (bytes, sections) =
                    tokio::task::spawn_blocking(move || encode_canonical(taken))
                        .await
                        .expect("invariant: encoding a savepoint part does not panic");
                let size = bytes.len() as u64;
                let stored = if sections.is_empty() {
                    None
                } else {
                    if let Err(e) = storage
                        .put(&format!("{dir}/{file}"), Bytes::from(bytes))
                        .await
                    {
                        return decline(e.to_string());
                    }
                    Some(file)
                };
                let _ = coordinator.send(CoordinatorMsg::Ack {
                    id,
                    task,
                    meta: Box::new(meta(
                        stored.clone(),
                        if stored.is_some() { size } else { 0 },
                        Vec::new(),
                    )),
                    part: Some(SavepointPart {
                        file: stored,
                        sections,
                        sink,
                        declared,
                    }),
                    extends: None,
                });
            });
            return;
        }
        if taken.snapshot.is_empty() && taken.keyed.is_empty() && taken.framed.is_empty() {
            let _ = coordinator.send(CoordinatorMsg::Ack {
                id,
                task,
                meta: Box::new(meta(None, 0, Vec::new())),
                part: None,
                extends,
            });
            return;
        }
        let path = format!("{dir}/{file}");
        self.handle.spawn(async move {
            let encoded = tokio::task::spawn_blocking(move || {
                format::encode_state_file_with(&taken.snapshot, taken.keyed)
            })
            .await
            .expect("invariant: encoding a snapshot does not panic");
            let size = encoded.bytes.len() as u64;
            let msg = match storage.put(&path, Bytes::from(encoded.bytes)).await {
                Ok(()) => CoordinatorMsg::Ack {
                    id,
                    task,
                    meta: Box::new(meta(Some(file), size, encoded.key_groups)),
                    part: None,
                    extends,
                },
                Err(e) => CoordinatorMsg::Decline {
                    id,
                    task,
                    reason: e.to_string(),
                },
            };
            let _ = coordinator.send(msg);
        });
    }
}

/// Assembles a subtask's canonical savepoint state file from the sections
/// its synchronous phase framed, and its operator state.
fn encode_canonical(taken: Taken) -> (Vec<u8>, Vec<sp::WrittenSection>) {
    assert!(
        taken.keyed.is_empty() && taken.snapshot.keyed.is_empty(),
        "invariant: a canonical savepoint's keyed state is framed in the synchronous phase"
    );
    sp::assemble_state_file(taken.framed, &taken.snapshot.lists)
}

/// Which subtask a task index is: `(vertex index, subtask)`.
pub(crate) type TaskAddress = (usize, u32);

/// Everything the coordinator needs.
pub(crate) struct CoordinatorSetup {
    pub config: CheckpointConfig,
    pub graph: Arc<JobGraph>,
    /// Checkpoint storage; `None` with periodic checkpoints off.
    pub storage: Option<CheckpointStorage>,
    /// Where savepoint targets and claimed snapshots are opened.
    pub storages: Storages,
    pub handle: Handle,
    pub tasks: Vec<TaskAddress>,
    pub sources: Vec<usize>,
    pub controls: Arc<Vec<ControlSender>>,
    pub inbox: Receiver<CoordinatorMsg>,
    pub first_id: CheckpointId,
    pub completed: Vec<CheckpointId>,
    /// The files every completed checkpoint in storage references (those
    /// of a protected one too): garbage collection keeps them.
    pub referenced: std::collections::BTreeMap<CheckpointId, Vec<String>>,
    pub failure: Arc<Mutex<Option<Error>>>,
    pub metrics: Arc<JobMetrics>,
    /// Savepoint requests come through it.
    pub control: Option<JobControl>,
    pub savepoints: SavepointTargets,
    /// A snapshot restored with `--claim-mode claim`: deleted once
    /// `retained` checkpoints of this run completed.
    pub claimed: Option<String>,
}

/// A savepoint between trigger and completion.
struct SavepointInFlight {
    target: SavepointTarget,
    parts: Vec<Option<SavepointPart>>,
}

/// A checkpoint between trigger and completion.
struct InFlight {
    triggered_at: Instant,
    trigger_time_ms: u64,
    is_final: bool,
    acks: Vec<Option<SubtaskMetadata>>,
    /// Per task, the checkpoint its incremental state extends.
    extends: Vec<Option<CheckpointId>>,
    savepoint: Option<SavepointInFlight>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a coordinator leaves behind for the next attempt.
#[derive(Debug, Clone, Default)]
pub(crate) struct CoordinatorOutcome {
    /// The latest completed checkpoint.
    pub latest_completed: Option<CheckpointId>,
    /// The newest id triggered: the next attempt starts past it, so it
    /// never writes into a directory an earlier attempt used.
    pub last_triggered: Option<CheckpointId>,
    /// The savepoint the job was stopped with.
    pub stopped_with: Option<SavepointInfo>,
}

/// Runs the coordinator until [`CoordinatorMsg::Shutdown`].
pub(crate) fn coordinate(setup: CoordinatorSetup) -> CoordinatorOutcome {
    let mut c = Coordinator {
        coordinator: CheckpointCoordinator::new(
            &setup.config,
            setup.tasks.len(),
            setup.first_id,
            setup.completed.clone(),
            Instant::now(),
        ),
        in_flight: HashMap::new(),
        last_triggered: None,
        book: Savepoints::default(),
        stopped_with: None,
        sources_finished: std::collections::HashSet::new(),
        completed_here: 0,
        chains: std::collections::BTreeMap::new(),
        setup,
    };
    let requests = c
        .setup
        .control
        .as_ref()
        .map_or_else(crossbeam_channel::never, |ctl| ctl.inbox().clone());
    loop {
        let decisions = c.coordinator.poll(Instant::now());
        c.execute(decisions);
        let timeout = c
            .coordinator
            .next_wakeup()
            .map_or(Duration::from_secs(3600), |w| {
                w.saturating_duration_since(Instant::now())
            });
        let msg = crossbeam_channel::select! {
            recv(c.setup.inbox) -> msg => msg.map_err(|_| RecvTimeoutError::Disconnected),
            recv(requests) -> req => {
                if let Ok(req) = req {
                    let decisions = c.requested(req);
                    c.execute(decisions);
                }
                continue;
            }
            default(timeout) => Err(RecvTimeoutError::Timeout),
        };
        let now = Instant::now();
        let decisions = match msg {
            Ok(CoordinatorMsg::Ack {
                id,
                task,
                mut meta,
                part,
                extends,
            }) => {
                if let Some(f) = c.in_flight.get_mut(&id) {
                    meta.subtask = c.setup.tasks[task].1;
                    f.acks[task] = Some(*meta);
                    f.extends[task] = extends;
                    if let Some(sp) = &mut f.savepoint {
                        sp.parts[task] = part;
                    }
                }
                c.coordinator.acknowledge(id, task, now)
            }
            Ok(CoordinatorMsg::Decline { id, task, reason }) => {
                let (v, s) = c.setup.tasks[task];
                let reason = format!(
                    "`{}` subtask {s} declined: {reason}",
                    c.setup.graph.vertices[v].uid
                );
                c.coordinator.decline(id, task, &reason, now)
            }
            Ok(CoordinatorMsg::SourceFinished { task }) => {
                // An ended source still takes checkpoints and savepoints
                // with its final position, until the job ends.
                c.sources_finished.insert(task);
                let mut decisions = Vec::new();
                if c.sources_finished.len() == c.setup.sources.len() {
                    decisions.extend(c.coordinator.sources_finished(now));
                    if c.coordinator.final_completed() {
                        // No final checkpoint to wait for: the job ends.
                        c.broadcast(c.setup.sources.clone().into_iter(), || Control::EndInput);
                    }
                }
                decisions
            }
            Ok(CoordinatorMsg::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => Vec::new(),
        };
        c.execute(decisions);
    }
    CoordinatorOutcome {
        latest_completed: c.coordinator.latest_completed(),
        last_triggered: c.last_triggered,
        stopped_with: c.stopped_with,
    }
}

struct Coordinator {
    coordinator: CheckpointCoordinator,
    in_flight: HashMap<CheckpointId, InFlight>,
    last_triggered: Option<CheckpointId>,
    /// Savepoint requests, from request to answer (the targets without
    /// their directory, which the id names).
    book: Savepoints<PendingSavepoint, SavepointTarget>,
    stopped_with: Option<SavepointInfo>,
    sources_finished: std::collections::HashSet<usize>,
    /// Checkpoints completed by this attempt.
    completed_here: u32,
    /// Per recently completed checkpoint, per task, the state files a
    /// restore of the task reads (its base, then its own file): what a
    /// later incremental checkpoint extending it lists as its base.
    chains: std::collections::BTreeMap<CheckpointId, Vec<Vec<format::StateFileRef>>>,
    setup: CoordinatorSetup,
}

/// Completed checkpoints whose chains the coordinator remembers. A
/// subtask extends the newest completed checkpoint it heard of, which
/// lags the newest by at most the checkpoints in flight.
const CHAINS_KEPT: usize = 64;

impl Coordinator {
    fn broadcast(&self, to: impl Iterator<Item = usize>, msg: impl Fn() -> Control) {
        for t in to {
            // A subtask that already ended needs nothing more.
            let _ = self.setup.controls[t].send(msg());
        }
    }

    fn delete_later(&self, storage: CheckpointStorage, dir: String) {
        self.setup.handle.spawn(async move {
            if let Err(e) = storage.delete_prefix(&dir).await {
                tracing::warn!("could not delete {dir}: {e}");
            }
        });
    }

    /// Deletes, in the background, the files of checkpoints `gone`
    /// (subsumed or aborted) that no retained checkpoint references
    /// ([`gc::release`]).
    fn release_later(&self, gone: Vec<CheckpointId>) {
        let storage = self.checkpoint_storage();
        let job = self.setup.graph.name.clone();
        let referenced: BTreeSet<String> =
            self.setup.referenced.values().flatten().cloned().collect();
        self.setup.handle.spawn(async move {
            let released = async {
                let listing = catalog::checkpoint_files(&storage, &job, &gone).await?;
                let sweep = gc::release(&gone, &listing, &referenced);
                catalog::sweep(&storage, &job, &sweep).await
            };
            if let Err(e) = released.await {
                tracing::warn!("could not delete checkpoint files of job `{job}`: {e}");
            }
        });
    }

    fn checkpoint_storage(&self) -> CheckpointStorage {
        self.setup
            .storage
            .clone()
            .expect("invariant: checkpoints are triggered only with checkpoint storage")
    }

    /// A savepoint request from the job's control handle.
    fn requested(&mut self, pending: PendingSavepoint) -> Vec<Decision> {
        let graph = &self.setup.graph;
        // Some sources ended: they take part with their final positions.
        // All of them: the job is finishing.
        let finishing = (self.sources_finished.len() == self.setup.sources.len())
            .then_some(graph.name.as_str());
        let target = match pending
            .request
            .target
            .clone()
            .or_else(|| graph.savepoint_dir.clone())
        {
            None => Err(format!(
                "no savepoint directory: give one (`weir savepoint JOB_ID DIR`, `weir stop --savepoint-path DIR`) or set `[savepoints] dir` in the job file of `{}`",
                graph.name
            )),
            Some(target) => self
                .setup
                .storages
                .open(&target)
                .map(|storage| SavepointTarget {
                    storage,
                    dir: String::new(),
                    format: pending.request.format,
                })
                .map_err(|e| format!("target directory {target}: {e}")),
        };
        let stop = pending.request.stop;
        let effects = self.book.request(pending, target, stop, finishing);
        self.carry_out(effects)
    }

    /// Savepoint `id`'s target: `base` in its directory
    /// `savepoint-<job>-<run>-<id>`.
    fn target_of(&self, base: SavepointTarget, id: CheckpointId) -> SavepointTarget {
        let run = self
            .setup
            .control
            .as_ref()
            .map_or("000000", |c| &c.id().as_str()[..6]);
        SavepointTarget {
            dir: crate::savepoint::savepoint_dir_name(&self.setup.graph.name, run, id.0),
            ..base
        }
    }

    /// Carries out the savepoint protocol's effects; returns the
    /// coordinator decisions they led to.
    fn carry_out(
        &mut self,
        effects: Vec<Effect<PendingSavepoint, SavepointTarget>>,
    ) -> Vec<Decision> {
        let mut decisions = Vec::new();
        for effect in effects {
            match effect {
                Effect::Refuse {
                    requester,
                    message,
                    stop,
                } => {
                    if stop && let Some(ctl) = &self.setup.control {
                        ctl.stop_failed();
                    }
                    let _ = requester.reply.send(Err(Error::Savepoint { message }));
                }
                Effect::Stopping => {
                    if let Some(ctl) = &self.setup.control {
                        ctl.advance(JobState::Stopping);
                    }
                }
                Effect::RequestSavepoint => {
                    decisions.extend(self.coordinator.request_savepoint(Instant::now()));
                }
                Effect::Drain => {
                    self.coordinator.request_drain();
                    self.broadcast(self.setup.sources.clone().into_iter(), || Control::Drain);
                }
                Effect::Discard { id, target } => {
                    let target = self.target_of(target, id);
                    self.delete_later(target.storage, target.dir);
                }
                Effect::Resume => {
                    if let Some(ctl) = &self.setup.control {
                        // The sources resume (they got the abort).
                        ctl.stop_failed();
                        ctl.advance(JobState::Running);
                    }
                }
                Effect::Fail {
                    requester,
                    id,
                    reason,
                } => {
                    let _ = requester.reply.send(Err(Error::SavepointFailed {
                        message: format!("savepoint {id} failed: {reason}"),
                    }));
                }
                Effect::Answer {
                    requester,
                    id,
                    target,
                } => {
                    let _ = requester.reply.send(Ok(self.info(id, target)));
                }
                Effect::Stopped { id, target } => {
                    // Sinks commit, suspended sources end.
                    self.stopped_with = Some(self.info(id, target));
                    self.broadcast(0..self.setup.tasks.len(), || Control::Complete(id));
                }
            }
        }
        decisions
    }

    /// Where savepoint `id` is, as answered.
    fn info(&self, id: CheckpointId, base: SavepointTarget) -> SavepointInfo {
        let target = self.target_of(base, id);
        SavepointInfo {
            location: target.storage.location(&target.dir),
            id: id.0,
        }
    }

    fn execute(&mut self, decisions: Vec<Decision>) {
        let mut queue: VecDeque<Decision> = decisions.into();
        while let Some(d) = queue.pop_front() {
            match d {
                Decision::Trigger {
                    id,
                    is_final,
                    savepoint,
                } => {
                    tracing::debug!(
                        "triggering {} {id}{}",
                        if savepoint { "savepoint" } else { "checkpoint" },
                        if is_final { " (final)" } else { "" }
                    );
                    self.last_triggered = self.last_triggered.max(Some(id));
                    let mut stop = false;
                    let savepoint = savepoint.then(|| {
                        let (base, mode) = self.book.triggered(id, is_final);
                        stop = mode == Some(StopMode::Suspend);
                        SavepointInFlight {
                            target: self.target_of(base, id),
                            parts: vec![None; self.setup.tasks.len()],
                        }
                    });
                    if let Some(s) = &savepoint {
                        self.setup
                            .savepoints
                            .lock()
                            .expect("invariant: savepoint targets lock not poisoned")
                            .insert(id, s.target.clone());
                    }
                    let barrier = CheckpointBarrier {
                        id,
                        is_final,
                        savepoint: savepoint.is_some(),
                        stop,
                    };
                    self.in_flight.insert(
                        id,
                        InFlight {
                            triggered_at: Instant::now(),
                            trigger_time_ms: unix_ms(SystemTime::now()),
                            is_final,
                            acks: vec![None; self.setup.tasks.len()],
                            extends: vec![None; self.setup.tasks.len()],
                            savepoint,
                        },
                    );
                    self.broadcast(self.setup.sources.clone().into_iter(), || {
                        Control::Trigger(barrier)
                    });
                }
                Decision::AllAcknowledged(id) => {
                    let now = Instant::now();
                    let next = match self.commit(id) {
                        Ok(()) => self.coordinator.completed(id, now),
                        Err(e) => self.coordinator.commit_failed(id, &e.to_string(), now),
                    };
                    queue.extend(next);
                }
                Decision::Abort { id, reason } => {
                    let mut f = self.in_flight.remove(&id);
                    self.broadcast(0..self.setup.tasks.len(), || Control::Abort(id));
                    match f.as_mut().and_then(|f| f.savepoint.take()) {
                        Some(_) => self.savepoint_failed(id, &reason),
                        None => {
                            tracing::warn!("checkpoint {id} aborted: {reason}");
                            self.setup
                                .metrics
                                .checkpoints
                                .record(crate::metrics::CheckpointStat {
                                    id: id.0,
                                    status: "FAILED".into(),
                                    trigger_timestamp: f.as_ref().map_or(0, |f| f.trigger_time_ms),
                                    duration_ms: f
                                        .as_ref()
                                        .map_or(0, |f| f.triggered_at.elapsed().as_millis() as u64),
                                    state_size: 0,
                                    failure: Some(reason.clone()),
                                });
                            self.release_later(vec![id]);
                        }
                    }
                }
                Decision::NotifyComplete(id) => {
                    self.broadcast(0..self.setup.tasks.len(), || Control::Complete(id));
                    self.completed_here += 1;
                    if self.completed_here >= self.setup.config.retained
                        && let Some(claimed) = self.setup.claimed.take()
                    {
                        // Waited for (a few deletes, once per run): a task
                        // left running could die with a run that ends now.
                        let storages = &self.setup.storages;
                        match self
                            .setup
                            .handle
                            .block_on(crate::savepoint::delete_snapshot(&claimed, storages))
                        {
                            Ok(_) => {
                                tracing::info!("claimed snapshot {claimed} subsumed and deleted")
                            }
                            Err(e) => tracing::warn!("could not delete claimed {claimed}: {e}"),
                        }
                    }
                }
                Decision::SavepointCompleted(id) => self.savepoint_completed(id),
                Decision::Subsume(ids) => {
                    let mut gone = Vec::new();
                    for id in ids {
                        tracing::debug!("checkpoint {id} subsumed");
                        let references = self.setup.referenced.remove(&id).unwrap_or_default();
                        gone.push((id, references));
                    }
                    // With the directories of their base files, which
                    // may have been kept only for them.
                    self.release_later(gc::released_dirs(
                        gone.iter().map(|(id, r)| (*id, r.as_slice())),
                    ));
                }
                Decision::FailJob { reason } => {
                    self.setup
                        .failure
                        .lock()
                        .expect("invariant: failure lock not poisoned")
                        .get_or_insert(Error::CheckpointFailed { reason });
                    self.broadcast(0..self.setup.tasks.len(), || Control::Cancel);
                }
            }
        }
    }

    fn forget_target(&self, id: CheckpointId) -> Option<SavepointTarget> {
        self.setup
            .savepoints
            .lock()
            .expect("invariant: savepoint targets lock not poisoned")
            .remove(&id)
    }

    fn savepoint_failed(&mut self, id: CheckpointId, reason: &str) {
        tracing::warn!("savepoint {id} failed: {reason}");
        self.forget_target(id);
        let effects = self.book.failed(id, reason);
        let more = self.carry_out(effects);
        debug_assert!(more.is_empty(), "a failed savepoint requests nothing");
    }

    fn savepoint_completed(&mut self, id: CheckpointId) {
        self.forget_target(id);
        let Some(f) = self.in_flight.remove(&id) else {
            return;
        };
        tracing::info!(
            "savepoint {id} completed in {:.0?}: {}",
            f.triggered_at.elapsed(),
            f.savepoint
                .as_ref()
                .map_or_else(String::new, |sp| sp.target.storage.location(&sp.target.dir))
        );
        let effects = self.book.completed(id);
        let more = self.carry_out(effects);
        debug_assert!(more.is_empty(), "a completed savepoint requests nothing");
    }

    /// Writes checkpoint `id`'s `_metadata` if absent: the atomic step that
    /// makes it complete. A savepoint's goes to its own directory.
    fn commit(&mut self, id: CheckpointId) -> Result<(), String> {
        let f = self
            .in_flight
            .get_mut(&id)
            .expect("invariant: an acknowledged checkpoint is in flight");
        let mut acks = std::mem::take(&mut f.acks);
        // An incremental subtask's base: the files of the checkpoint it
        // extends.
        for (task, extends) in f.extends.iter().enumerate() {
            let (Some(meta), Some(base)) = (acks[task].as_mut(), extends) else {
                continue;
            };
            match self.chains.get(base) {
                Some(chains) => meta.base = chains[task].clone(),
                None => {
                    return Err(format!(
                        "a subtask extends checkpoint {base}, whose files are no longer known"
                    ));
                }
            }
        }
        let chains: Vec<Vec<format::StateFileRef>> = acks
            .iter()
            .map(|ack| {
                let Some(m) = ack else { return Vec::new() };
                let mut chain = m.base.clone();
                chain.extend(m.file.as_ref().map(|file| format::StateFileRef {
                    checkpoint: id,
                    file: file.clone(),
                    size: m.size,
                    key_groups: m.key_groups.clone(),
                }));
                chain
            })
            .collect();
        let (trigger_time_ms, is_final, triggered_at) =
            (f.trigger_time_ms, f.is_final, f.triggered_at);
        let graph = self.setup.graph.clone();
        let taken = metadata::Taken {
            id,
            trigger_time_ms,
            completion_time_ms: unix_ms(SystemTime::now()),
            exactly_once: self.setup.config.mode
                == crate::checkpoint::coordinator::CheckpointingMode::ExactlyOnce,
            unaligned: self.setup.config.unaligned,
            is_final,
        };
        let checkpoint = metadata::checkpoint_metadata(&graph, taken, acks);
        let (storage, path, bytes) = match &mut f.savepoint {
            Some(sp) => {
                let bytes = match sp.target.format {
                    SavepointFormat::Native => {
                        format::encode_metadata(&metadata::native_savepoint_metadata(&checkpoint))
                    }
                    SavepointFormat::Canonical => {
                        sp::encode_metadata(&metadata::canonical_metadata(
                            &graph,
                            &checkpoint,
                            std::mem::take(&mut sp.parts),
                        ))
                    }
                };
                (
                    sp.target.storage.clone(),
                    format!("{}/{METADATA_FILE}", sp.target.dir),
                    bytes,
                )
            }
            None => {
                let path = format!("{}/{METADATA_FILE}", checkpoint_dir(&graph.name, id));
                (
                    self.checkpoint_storage(),
                    path,
                    format::encode_metadata(&checkpoint),
                )
            }
        };
        let bytes = Bytes::from(bytes);
        self.setup
            .handle
            .block_on(async move { storage.put_if_absent(&path, bytes).await })
            .map_err(|e: StorageError| e.to_string())?;
        if self.in_flight[&id].savepoint.is_none() {
            self.in_flight.remove(&id);
            if self.setup.config.incremental {
                self.chains.insert(id, chains);
                while self.chains.len() > CHAINS_KEPT {
                    self.chains.pop_first();
                }
            }
            self.setup
                .referenced
                .insert(id, gc::references(&checkpoint));
            self.setup.metrics.checkpoint_completed(id.0);
            self.setup
                .metrics
                .checkpoints
                .record(crate::metrics::CheckpointStat {
                    id: id.0,
                    status: "COMPLETED".into(),
                    trigger_timestamp: checkpoint.trigger_time_ms,
                    duration_ms: triggered_at.elapsed().as_millis() as u64,
                    state_size: checkpoint.total_bytes(),
                    failure: None,
                });
            log_completed(&checkpoint, triggered_at.elapsed());
        }
        Ok(())
    }
}

/// One line per completed checkpoint, with Flink's figures: total, and the
/// slowest subtask's synchronous, asynchronous and alignment times.
fn log_completed(m: &CheckpointMetadata, took: Duration) {
    let per_vertex: Vec<String> = m
        .vertices
        .iter()
        .map(|v| format!("{} {}", v.uid, human_bytes(v.bytes())))
        .collect();
    tracing::info!(
        "checkpoint {} completed in {:.0?}{} (sync {:.1} ms, async {:.1} ms, alignment {:.1} ms), {}: {}",
        m.checkpoint_id,
        took,
        if m.is_final { " (final)" } else { "" },
        m.slowest(|s| s.sync_ms),
        m.slowest(|s| s.async_ms),
        m.slowest(|s| s.alignment_ms),
        human_bytes(m.total_bytes()),
        per_vertex.join(", ")
    );
}
