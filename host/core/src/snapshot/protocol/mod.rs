//! The snapshot protocol: every decision about checkpoints and savepoints,
//! with no I/O, no threads and no clock of its own (Arroyo's
//! `arroyo-state-protocol` is the model). The runtime
//! (`runtime::checkpointing`) and the catalog (`checkpoint::catalog`)
//! carry the decisions out against storage; the tests here run them
//! against an in-memory store.
//!
//! - [`coordinator`]: when to trigger, complete, abort and subsume
//!   checkpoints and savepoints, and when failures fail the job.
//! - [`savepoints`]: the savepoint and stop-with-savepoint state machine:
//!   which request a triggered savepoint answers, what a failure undoes,
//!   what a completion tells the job.
//! - [`metadata`]: the `_metadata` of a checkpoint, a native savepoint and
//!   a canonical savepoint, from the subtasks' acknowledgements.
//! - [`restore`]: how a snapshot maps onto a job, and how each vertex's
//!   sections are dealt to its subtasks.
//! - [`gc`]: which files to delete: those of subsumed checkpoints no
//!   retained checkpoint references, aborted checkpoints' files, and the
//!   orphans a crash leaves.

pub mod coordinator;
pub mod gc;
pub mod metadata;
pub mod restore;
pub mod savepoints;
