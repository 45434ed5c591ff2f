//! Checkpoints: asynchronous barrier snapshots of every subtask's state,
//! stored durably so a job survives failure.
//!
//! - [`storage`]: every durable byte, through `object_store` (a local
//!   directory, `memory://`, `s3://`).
//! - [`format`]: the versioned state-file and `_metadata` encodings
//!   (`docs/checkpoint-format.md`).
//! - [`coordinator`]: when to trigger, complete, abort and subsume
//!   checkpoints (pure decisions; the runtime carries them out).

pub mod coordinator;
pub mod format;
pub mod storage;
