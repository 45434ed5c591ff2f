//! Live counters per vertex, read by the CLI's progress display and by
//! tests; written by subtask threads with relaxed atomics (one add per
//! batch, never per record).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
                })
                .collect(),
            last_checkpoint: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
        })
    }

    /// Records that checkpoint `id` completed.
    pub fn checkpoint_completed(&self, id: u64) {
        self.last_checkpoint.fetch_max(id, Ordering::Relaxed);
    }

    /// The latest completed checkpoint, if any.
    pub fn last_checkpoint(&self) -> Option<u64> {
        Some(self.last_checkpoint.load(Ordering::Relaxed)).filter(|id| *id > 0)
    }
}
