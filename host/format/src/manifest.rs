//! A snapshot directory's `_metadata`, whichever layout its `format`
//! field names: a checkpoint (or a native savepoint) or a canonical
//! savepoint.

use crate::FormatError;
use crate::checkpoint::{self, CheckpointId, CheckpointMetadata};
use crate::savepoint::{self, SavepointMetadata};

/// The name of the file that describes a snapshot directory.
pub const METADATA_FILE: &str = "_metadata";

/// What a snapshot directory's `_metadata` describes.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// A checkpoint, or a savepoint in the checkpoint layout (`--type
    /// native`).
    Checkpoint(CheckpointMetadata),
    /// A savepoint in the canonical layout.
    Savepoint(SavepointMetadata),
}

impl Manifest {
    /// The snapshot's id in the job's checkpoint id sequence.
    pub fn id(&self) -> CheckpointId {
        match self {
            Manifest::Checkpoint(m) => m.checkpoint_id,
            Manifest::Savepoint(m) => CheckpointId(m.savepoint_id),
        }
    }

    /// The name of the job that took it.
    pub fn job_name(&self) -> &str {
        match self {
            Manifest::Checkpoint(m) => &m.job_name,
            Manifest::Savepoint(m) => &m.job_name,
        }
    }

    /// Its number of key groups.
    pub fn max_parallelism(&self) -> u32 {
        match self {
            Manifest::Checkpoint(m) => m.max_parallelism,
            Manifest::Savepoint(m) => m.max_parallelism,
        }
    }

    /// `checkpoint 7` or `savepoint 7`, for messages.
    pub fn describe(&self) -> String {
        match self {
            Manifest::Checkpoint(m) => format!("checkpoint {}", m.checkpoint_id),
            Manifest::Savepoint(m) => format!("savepoint {}", m.savepoint_id),
        }
    }

    /// Every file it references, relative to its directory, sorted, once
    /// each (`_metadata` not included).
    pub fn files(&self) -> Vec<&str> {
        match self {
            Manifest::Checkpoint(m) => {
                let mut files: Vec<&str> = m
                    .vertices
                    .iter()
                    .flat_map(|v| &v.subtasks)
                    .filter_map(|s| s.file.as_deref())
                    .collect();
                files.sort_unstable();
                files.dedup();
                files
            }
            Manifest::Savepoint(m) => m.files(),
        }
    }

    /// Decodes the `_metadata` at `file` (display path), whichever layout
    /// its `format` field names.
    ///
    /// # Errors
    /// [`FormatError`] naming `file`.
    pub fn decode(file: &str, bytes: &[u8]) -> Result<Self, FormatError> {
        match savepoint::metadata_format(bytes).as_deref() {
            Some(savepoint::SAVEPOINT_FORMAT) => Ok(Manifest::Savepoint(
                savepoint::decode_metadata(file, bytes)?,
            )),
            _ => Ok(Manifest::Checkpoint(checkpoint::decode_metadata(
                file, bytes,
            )?)),
        }
    }
}
