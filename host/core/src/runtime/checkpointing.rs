//! The runtime's side of checkpoints: the coordinator thread that carries
//! out the [`CheckpointCoordinator`]'s decisions (trigger sources, commit
//! `_metadata`, notify, abort, subsume), the uploader that stores subtask
//! snapshots in the background, and finding and loading the checkpoint a
//! job restores from.
//!
//! Layout in storage: `<job>/chk-<n>/_metadata` plus one state file per
//! subtask with something to store, `<job>/chk-<n>/<uid>-<subtask>.state`,
//! referenced from the metadata by file name only.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::runtime::Handle;

use super::{CheckpointBarrier, Control};
use crate::checkpoint::CheckpointId;
use crate::checkpoint::catalog::{METADATA_FILE, human_bytes};
use crate::checkpoint::coordinator::{CheckpointConfig, CheckpointCoordinator, Decision};
use crate::checkpoint::format::{
    self, CheckpointMetadata, METADATA_VERSION, SubtaskMetadata, SubtaskSnapshot, VertexMetadata,
};
use crate::checkpoint::storage::{CheckpointStorage, StorageError};
use crate::error::Error;
use crate::job::JobGraph;
use crate::keygroup::KeyGroupRange;
use crate::metrics::JobMetrics;

/// What subtasks tell the coordinator.
#[derive(Debug)]
pub(crate) enum CoordinatorMsg {
    /// A subtask's snapshot for checkpoint `id` is stored.
    Ack {
        id: CheckpointId,
        task: usize,
        meta: SubtaskMetadata,
    },
    /// A subtask cannot take checkpoint `id`.
    Decline {
        id: CheckpointId,
        task: usize,
        reason: String,
    },
    /// A source's input ended.
    SourceFinished { task: usize },
    /// Every subtask has stopped.
    Shutdown,
}

/// What a subtask's synchronous phase took: its snapshot, with its keyed
/// state already encoded (cheaper than copying it).
pub(crate) struct Taken {
    pub snapshot: SubtaskSnapshot,
    pub keyed: Vec<format::EncodedKeyGroup>,
}

impl From<SubtaskSnapshot> for Taken {
    fn from(snapshot: SubtaskSnapshot) -> Self {
        Self {
            snapshot,
            keyed: Vec::new(),
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
    pub storage: CheckpointStorage,
    pub job: String,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `<job>/chk-<id>`.
pub(crate) fn checkpoint_dir(job: &str, id: CheckpointId) -> String {
    format!("{job}/chk-{id}")
}

impl Uploader {
    /// Encodes and stores `snapshot` as `file` of checkpoint `id`, then
    /// acknowledges (or declines, if storing failed) to the coordinator.
    pub(crate) fn upload(
        &self,
        id: CheckpointId,
        task: usize,
        file: String,
        taken: Taken,
        timing: SyncTiming,
        coordinator: Sender<CoordinatorMsg>,
    ) {
        let started = Instant::now();
        let meta = move |file: Option<String>, size: u64, key_groups| SubtaskMetadata {
            subtask: 0,
            file,
            size,
            key_group_start: timing.key_groups.start,
            key_group_end: timing.key_groups.end,
            key_groups,
            sync_ms: millis(timing.sync),
            async_ms: millis(started.elapsed()),
            alignment_ms: millis(timing.alignment),
        };
        if taken.snapshot.is_empty() && taken.keyed.is_empty() {
            let _ = coordinator.send(CoordinatorMsg::Ack {
                id,
                task,
                meta: meta(None, 0, Vec::new()),
            });
            return;
        }
        let (storage, path) = (
            self.storage.clone(),
            format!("{}/{file}", checkpoint_dir(&self.job, id)),
        );
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
                    meta: meta(Some(file), size, encoded.key_groups),
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

/// Which subtask a task index is: `(vertex index, subtask)`.
pub(crate) type TaskAddress = (usize, u32);

/// Everything the coordinator thread needs.
pub(crate) struct CoordinatorSetup {
    pub config: CheckpointConfig,
    pub graph: Arc<JobGraph>,
    pub storage: CheckpointStorage,
    pub handle: Handle,
    pub tasks: Vec<TaskAddress>,
    pub sources: Vec<usize>,
    pub controls: Arc<Vec<Sender<Control>>>,
    pub inbox: Receiver<CoordinatorMsg>,
    pub first_id: CheckpointId,
    pub completed: Vec<CheckpointId>,
    pub failure: Arc<Mutex<Option<Error>>>,
    pub metrics: Arc<JobMetrics>,
}

/// A checkpoint between trigger and completion.
struct InFlight {
    triggered_at: Instant,
    trigger_time_ms: u64,
    is_final: bool,
    acks: Vec<Option<SubtaskMetadata>>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a coordinator leaves behind for the next attempt.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CoordinatorOutcome {
    /// The latest completed checkpoint.
    pub latest_completed: Option<CheckpointId>,
    /// The newest id triggered: the next attempt starts past it, so it
    /// never writes into a directory an earlier attempt used.
    pub last_triggered: Option<CheckpointId>,
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
        setup,
    };
    let mut sources_finished = std::collections::HashSet::new();
    loop {
        let decisions = c.coordinator.poll(Instant::now());
        c.execute(decisions);
        let timeout = c
            .coordinator
            .next_wakeup()
            .map_or(Duration::from_secs(3600), |w| {
                w.saturating_duration_since(Instant::now())
            });
        let now = Instant::now();
        let decisions = match c.setup.inbox.recv_timeout(timeout) {
            Ok(CoordinatorMsg::Ack { id, task, mut meta }) => {
                if let Some(f) = c.in_flight.get_mut(&id) {
                    meta.subtask = c.setup.tasks[task].1;
                    f.acks[task] = Some(meta);
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
                sources_finished.insert(task);
                if sources_finished.len() == c.setup.sources.len() {
                    c.coordinator.sources_finished(now)
                } else {
                    Vec::new()
                }
            }
            Ok(CoordinatorMsg::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => Vec::new(),
        };
        c.execute(decisions);
    }
    CoordinatorOutcome {
        latest_completed: c.coordinator.latest_completed(),
        last_triggered: c.last_triggered,
    }
}

struct Coordinator {
    coordinator: CheckpointCoordinator,
    in_flight: HashMap<CheckpointId, InFlight>,
    last_triggered: Option<CheckpointId>,
    setup: CoordinatorSetup,
}

impl Coordinator {
    fn broadcast(&self, to: impl Iterator<Item = usize>, msg: impl Fn() -> Control) {
        for t in to {
            // A subtask that already ended needs nothing more.
            let _ = self.setup.controls[t].send(msg());
        }
    }

    fn delete_later(&self, id: CheckpointId) {
        let storage = self.setup.storage.clone();
        let dir = checkpoint_dir(&self.setup.graph.name, id);
        self.setup.handle.spawn(async move {
            if let Err(e) = storage.delete_prefix(&dir).await {
                tracing::warn!("could not delete checkpoint directory: {e}");
            }
        });
    }

    fn execute(&mut self, decisions: Vec<Decision>) {
        let mut queue: VecDeque<Decision> = decisions.into();
        while let Some(d) = queue.pop_front() {
            match d {
                Decision::Trigger { id, is_final } => {
                    tracing::debug!(
                        "triggering checkpoint {id}{}",
                        if is_final { " (final)" } else { "" }
                    );
                    self.last_triggered = self.last_triggered.max(Some(id));
                    self.in_flight.insert(
                        id,
                        InFlight {
                            triggered_at: Instant::now(),
                            trigger_time_ms: unix_ms(SystemTime::now()),
                            is_final,
                            acks: vec![None; self.setup.tasks.len()],
                        },
                    );
                    let barrier = CheckpointBarrier { id, is_final };
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
                    tracing::warn!("checkpoint {id} aborted: {reason}");
                    self.in_flight.remove(&id);
                    self.broadcast(0..self.setup.tasks.len(), || Control::Abort(id));
                    self.delete_later(id);
                }
                Decision::NotifyComplete(id) => {
                    self.broadcast(0..self.setup.tasks.len(), || Control::Complete(id));
                }
                Decision::Subsume(ids) => {
                    for id in ids {
                        tracing::debug!("checkpoint {id} subsumed");
                        self.delete_later(id);
                    }
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

    /// Writes checkpoint `id`'s `_metadata` if absent: the atomic step that
    /// makes it complete.
    fn commit(&mut self, id: CheckpointId) -> Result<(), StorageError> {
        let f = self
            .in_flight
            .remove(&id)
            .expect("invariant: an acknowledged checkpoint is in flight");
        let graph = &self.setup.graph;
        let mut acks = f.acks.into_iter();
        let mut vertices = Vec::new();
        for v in &graph.vertices {
            vertices.push(VertexMetadata {
                uid: v.uid.clone(),
                parallelism: v.parallelism,
                subtasks: (0..v.parallelism)
                    .map(|_| {
                        acks.next()
                            .flatten()
                            .expect("invariant: every task acknowledged")
                    })
                    .collect(),
            });
        }
        let metadata = CheckpointMetadata {
            version: METADATA_VERSION,
            job_name: graph.name.clone(),
            checkpoint_id: id,
            trigger_time_ms: f.trigger_time_ms,
            completion_time_ms: unix_ms(SystemTime::now()),
            max_parallelism: graph.max_parallelism,
            exactly_once: self.setup.config.mode
                == crate::checkpoint::coordinator::CheckpointingMode::ExactlyOnce,
            unaligned: self.setup.config.unaligned,
            is_final: f.is_final,
            vertices,
        };
        let path = format!("{}/{METADATA_FILE}", checkpoint_dir(&graph.name, id));
        let storage = self.setup.storage.clone();
        let bytes = Bytes::from(format::encode_metadata(&metadata));
        self.setup
            .handle
            .block_on(async move { storage.put_if_absent(&path, bytes).await })?;
        self.setup.metrics.checkpoint_completed(id.0);
        log_completed(&metadata, f.triggered_at.elapsed());
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
