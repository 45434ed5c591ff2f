//! Live counters per vertex, read by the CLI's progress display and by
//! tests; written by subtask threads with relaxed atomics (one add per
//! batch, never per record).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::job::JobGraph;

/// Counters of one vertex, summed over its subtasks.
#[derive(Debug)]
pub struct VertexMetrics {
    /// The vertex's uid.
    pub uid: String,
    /// Records received.
    pub records_in: AtomicU64,
    /// Records sent downstream (for sinks: written).
    pub records_out: AtomicU64,
    /// The operator's own counters (`metrics.counter-add`), by name.
    pub counters: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl VertexMetrics {
    /// Records received so far.
    pub fn records_in(&self) -> u64 {
        self.records_in.load(Ordering::Relaxed)
    }

    /// Records sent so far.
    pub fn records_out(&self) -> u64 {
        self.records_out.load(Ordering::Relaxed)
    }

    /// Adds an instance's counters to the vertex's.
    pub fn add_counters(&self, counters: std::collections::BTreeMap<String, u64>) {
        if counters.is_empty() {
            return;
        }
        let mut all = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        for (name, delta) in counters {
            let c = all.entry(name).or_default();
            *c = c.saturating_add(delta);
        }
    }

    /// The operator's own counters, by name.
    pub fn counters(&self) -> std::collections::BTreeMap<String, u64> {
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Counters of a job, in the graph's vertex order.
#[derive(Debug, Default)]
pub struct JobMetrics {
    /// One entry per vertex.
    pub vertices: Vec<VertexMetrics>,
    /// The latest completed checkpoint's id, 0 before the first.
    pub last_checkpoint: AtomicU64,
    /// How many times the job restarted after a failure.
    pub restarts: AtomicU64,
    /// Checkpoint statistics (Flink's are the model).
    pub checkpoints: CheckpointCounters,
    /// The latest failure the job restarted after, if any.
    pub last_failure: Mutex<Option<String>>,
    /// The memory its plugin instances hold now: guest memories, keyed
    /// state, emitted records not yet routed (bytes).
    pub plugin_memory: Arc<AtomicU64>,
    /// The CPU time of its calls into Wasm, in a CPU group (`weir serve`),
    /// nanoseconds.
    pub plugin_cpu_ns: Arc<AtomicU64>,
}

/// How many checkpoints recently kept in [`CheckpointCounters::history`].
pub const CHECKPOINT_HISTORY: usize = 20;

/// A job's checkpoint counts and its latest checkpoints.
#[derive(Debug, Default)]
pub struct CheckpointCounters {
    /// Checkpoints completed.
    pub completed: AtomicU64,
    /// Checkpoints that failed or were aborted.
    pub failed: AtomicU64,
    /// The latest completed one's duration, milliseconds.
    pub last_duration_ms: AtomicU64,
    /// The latest completed one's size, bytes.
    pub last_bytes: AtomicU64,
    /// The latest [`CHECKPOINT_HISTORY`], oldest first.
    history: Mutex<VecDeque<CheckpointStat>>,
}

/// One checkpoint, as statistics show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointStat {
    /// Its id.
    pub id: u64,
    /// `COMPLETED` or `FAILED`.
    pub status: String,
    /// When it was triggered, milliseconds since the Unix epoch.
    pub trigger_timestamp: u64,
    /// Trigger to completion (or failure), milliseconds.
    pub duration_ms: u64,
    /// Bytes written (0 if it failed).
    pub state_size: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl CheckpointCounters {
    /// Records a checkpoint that ended.
    pub fn record(&self, stat: CheckpointStat) {
        if stat.failure.is_none() {
            self.completed.fetch_add(1, Ordering::Relaxed);
            self.last_duration_ms
                .store(stat.duration_ms, Ordering::Relaxed);
            self.last_bytes.store(stat.state_size, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let mut history = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        history.push_back(stat);
        while history.len() > CHECKPOINT_HISTORY {
            history.pop_front();
        }
    }

    /// The latest checkpoints, oldest first.
    pub fn history(&self) -> Vec<CheckpointStat> {
        self.history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

impl JobMetrics {
    /// Zeroed counters for `graph`.
    pub fn for_graph(graph: &JobGraph) -> Arc<Self> {
        Arc::new(Self {
            vertices: graph
                .vertices
                .iter()
                .map(|v| VertexMetrics {
                    uid: v.uid.clone(),
                    records_in: AtomicU64::new(0),
                    records_out: AtomicU64::new(0),
                    counters: Mutex::default(),
                })
                .collect(),
            last_checkpoint: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            checkpoints: CheckpointCounters::default(),
            last_failure: Mutex::default(),
            plugin_memory: Arc::default(),
            plugin_cpu_ns: Arc::default(),
        })
    }

    /// Records that checkpoint `id` completed.
    pub fn checkpoint_completed(&self, id: u64) {
        self.last_checkpoint.fetch_max(id, Ordering::Relaxed);
    }

    /// Records a failure the job restarts after.
    pub fn failed(&self, why: String) {
        *self
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
    }

    /// The latest failure: the one the job restarted after, or the one
    /// it failed with.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The latest completed checkpoint, if any.
    pub fn last_checkpoint(&self) -> Option<u64> {
        Some(self.last_checkpoint.load(Ordering::Relaxed)).filter(|id| *id > 0)
    }
}
