//! Checkpoints: asynchronous barrier snapshots of every subtask's state,
//! stored durably so a job survives failure.
//!
//! - [`storage`]: every durable byte, through `object_store` (a local
//!   directory, `memory://`, `s3://`).
//! - [`format`](mod@format): the versioned state-file and `_metadata` encodings
//!   (`docs/checkpoint-format.md`), kept in `weir-format`.
//! - [`coordinator`](mod@coordinator): when to trigger, complete, abort and subsume
//!   checkpoints (pure decisions in [`crate::snapshot::protocol`]; the
//!   runtime carries them out).
//! - [`catalog`]: the checkpoints a job has in storage; loading one; the
//!   record of a restore not yet superseded by a checkpoint.
//! - [`lease`]: which run owns a job's checkpoints.

pub mod catalog;
/// The checkpoint coordinator, kept in [`crate::snapshot::protocol`].
pub use crate::snapshot::protocol::coordinator;
/// The state-file and `_metadata` encodings, in `weir-format`.
pub use weir_format::checkpoint as format;
pub mod lease;
pub mod storage;

pub use weir_format::checkpoint::CheckpointId;
