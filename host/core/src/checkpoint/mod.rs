//! Checkpoints: asynchronous barrier snapshots of every subtask's state,
//! stored durably so a job survives failure.
//!
//! - [`storage`]: every durable byte, through `object_store` (a local
//!   directory, `memory://`, `s3://`).
//! - [`format`](mod@format): the versioned state-file and `_metadata` encodings
//!   (`docs/checkpoint-format.md`).
//! - [`coordinator`]: when to trigger, complete, abort and subsume
//!   checkpoints (pure decisions; the runtime carries them out).
//! - [`catalog`]: the checkpoints a job has in storage; loading one; the
//!   record of a restore not yet superseded by a checkpoint.
//! - [`lease`]: which run owns a job's checkpoints.

pub mod catalog;
pub mod coordinator;
pub mod format;
pub mod lease;
pub mod storage;

/// A checkpoint's id: 1, 2, 3, … within a job, continuing across restores
/// (a job restored from checkpoint 7 takes checkpoint 8 next).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct CheckpointId(pub u64);

impl CheckpointId {
    /// The id after this one.
    pub fn next(self) -> Self {
        CheckpointId(self.0 + 1)
    }
}

impl std::fmt::Display for CheckpointId {
    /// The number, honouring the formatter's width and alignment (the
    /// `weir checkpoints` table aligns on it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::CheckpointId;

    #[test]
    fn a_checkpoint_id_honours_width_and_alignment() {
        assert_eq!(format!("{:>6}|", CheckpointId(42)), "    42|");
        assert_eq!(format!("{:<4}|", CheckpointId(7)), "7   |");
        assert_eq!(CheckpointId(123).to_string(), "123");
    }
}
