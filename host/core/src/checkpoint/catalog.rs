//! The checkpoints a job has in storage, and loading one to restore from.
//!
//! A checkpoint directory `<job>/chk-<n>` is *completed* when its
//! `_metadata` exists and decodes; a directory without one is what a crash
//! or an aborted checkpoint left behind, never restored from.

use std::path::Path;

use futures::future::try_join_all;

use super::CheckpointId;
use super::format::{self, CheckpointMetadata, SubtaskSnapshot};
use super::storage::{CheckpointStorage, StorageError};
use crate::error::Error;
use crate::job::JobGraph;

/// The metadata file of a checkpoint directory.
pub const METADATA_FILE: &str = "_metadata";

/// What a checkpoint directory holds.
#[derive(Debug)]
pub enum Status {
    /// Committed `_metadata`: restorable.
    Completed(Box<CheckpointMetadata>),
    /// No `_metadata`: never completed (aborted, or the process died).
    Incomplete,
    /// A `_metadata` that does not decode.
    Corrupt(String),
}

/// One `chk-<n>` directory of a job.
#[derive(Debug)]
pub struct Listed {
    /// Its checkpoint id.
    pub id: CheckpointId,
    /// Its path in the storage, `<job>/chk-<n>`.
    pub dir: String,
    /// What it holds.
    pub status: Status,
}

/// Lists `job`'s checkpoint directories in `storage`, oldest first.
///
/// # Errors
/// [`Error::Storage`] if listing or reading fails.
pub async fn scan(storage: &CheckpointStorage, job: &str) -> Result<Vec<Listed>, Error> {
    let mut out = Vec::new();
    for name in storage.list_dirs(job).await? {
        let Some(id) = name.strip_prefix("chk-").and_then(|n| n.parse().ok()) else {
            continue;
        };
        let dir = format!("{job}/{name}");
        let path = format!("{dir}/{METADATA_FILE}");
        let status = match storage.get(&path).await {
            Ok(bytes) => match format::decode_metadata(&storage.location(&path), &bytes) {
                Ok(m) => Status::Completed(Box::new(m)),
                Err(e) => Status::Corrupt(e.to_string()),
            },
            Err(StorageError::NotFound { .. }) => Status::Incomplete,
            Err(e) => return Err(e.into()),
        };
        out.push(Listed {
            id: CheckpointId(id),
            dir,
            status,
        });
    }
    out.sort_by_key(|l| l.id);
    Ok(out)
}

/// A completed checkpoint to restore from.
#[derive(Debug, Clone)]
pub struct RestorePoint {
    /// The storage holding it.
    pub storage: CheckpointStorage,
    /// Its directory in that storage (`""` when the storage is rooted at it).
    pub dir: String,
    /// Its decoded `_metadata`.
    pub metadata: CheckpointMetadata,
}

impl RestorePoint {
    /// The checkpoint `location` names: a checkpoint directory or its
    /// `_metadata` file, as a local path (relative to `cwd`) or a storage
    /// URL.
    ///
    /// # Errors
    /// [`Error::Restore`] if there is no `_metadata` there;
    /// [`Error::Storage`] or [`Error::Format`] if it cannot be read.
    pub async fn open(location: &str, cwd: &Path) -> Result<Self, Error> {
        let dir = location
            .trim_end_matches('/')
            .strip_suffix(METADATA_FILE)
            .unwrap_or(location)
            .trim_end_matches('/');
        let dir = if dir.is_empty() { "." } else { dir };
        let storage = CheckpointStorage::open(dir, cwd)?;
        let bytes = match storage.get(METADATA_FILE).await {
            Ok(b) => b,
            Err(StorageError::NotFound { location }) => {
                return Err(Error::Restore {
                    message: format!(
                        "{location} does not exist: `-s` takes a completed checkpoint's directory (chk-<n>) or its _metadata file"
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let metadata = format::decode_metadata(&storage.location(METADATA_FILE), &bytes)?;
        Ok(Self {
            storage,
            dir: String::new(),
            metadata,
        })
    }

    /// Where it is, for messages.
    pub fn location(&self) -> String {
        if self.dir.is_empty() {
            self.storage.url().to_owned()
        } else {
            self.storage.location(&self.dir)
        }
    }

    fn path(&self, file: &str) -> String {
        if self.dir.is_empty() {
            file.to_owned()
        } else {
            format!("{}/{file}", self.dir)
        }
    }

    /// Checks the checkpoint fits `graph` and loads every subtask's
    /// snapshot, in graph order (vertex by vertex, subtask by subtask).
    ///
    /// # Errors
    /// [`Error::Restore`] naming what does not match (uids, parallelism,
    /// max parallelism); [`Error::Storage`] or [`Error::Format`] for a
    /// missing or corrupt state file.
    pub async fn load(&self, graph: &JobGraph) -> Result<Vec<SubtaskSnapshot>, Error> {
        let m = &self.metadata;
        let mismatch = |message: String| Error::Restore {
            message: format!(
                "checkpoint {} ({}): {message}",
                m.checkpoint_id,
                self.location()
            ),
        };
        if m.max_parallelism != graph.max_parallelism {
            return Err(mismatch(format!(
                "it was taken with max_parallelism {}, the job has {}; the number of key groups cannot change",
                m.max_parallelism, graph.max_parallelism
            )));
        }
        let unknown: Vec<&str> = m
            .vertices
            .iter()
            .filter(|v| v.subtasks.iter().any(|s| s.file.is_some()))
            .filter(|v| graph.vertices.iter().all(|g| g.uid != v.uid))
            .map(|v| v.uid.as_str())
            .collect();
        if !unknown.is_empty() {
            return Err(mismatch(format!(
                "it holds state of uids the job does not have: {}",
                unknown.join(", ")
            )));
        }
        let mut loads = Vec::new();
        for v in &graph.vertices {
            let stored = m.vertices.iter().find(|s| s.uid == v.uid);
            if let Some(s) = stored
                && s.parallelism != v.parallelism
            {
                return Err(mismatch(format!(
                    "`{}` ran with parallelism {} there and has {} now; a checkpoint restores at the same parallelism",
                    v.uid, s.parallelism, v.parallelism
                )));
            }
            for i in 0..v.parallelism as usize {
                let file = stored
                    .and_then(|s| s.subtasks.get(i))
                    .and_then(|s| s.file.clone());
                loads.push(async move {
                    let Some(file) = file else {
                        return Ok(SubtaskSnapshot::default());
                    };
                    let path = self.path(&file);
                    let bytes = self.storage.get(&path).await?;
                    Ok::<_, Error>(format::decode_state_file(
                        &self.storage.location(&path),
                        &bytes,
                    )?)
                });
            }
        }
        try_join_all(loads).await
    }
}

/// `1.2 MB`-style sizes for logs and listings.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
