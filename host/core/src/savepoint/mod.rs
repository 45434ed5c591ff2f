//! Savepoints: user-owned snapshots of a job in a documented,
//! backend-independent layout ([`format`](mod@format)), restored by operator uid at any
//! parallelism ([`restore`]), listed, inspected and disposed of without
//! running a job.
//!
//! A savepoint is taken like a checkpoint (barriers, always aligned) but
//! written to `<target>/savepoint-<job>-<id>/`, never subsumed or deleted
//! by Weir, and not used for failover.

pub mod format;
pub mod inspect;
pub mod restore;

use std::path::Path;

use crate::checkpoint::storage::CheckpointStorage;
use crate::error::Error;

/// What a run restored from a snapshot may do with it (Flink's
/// `RecoveryClaimMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClaimMode {
    /// The snapshot is never modified or deleted; the run's first
    /// checkpoint is a full one of its own.
    #[default]
    NoClaim,
    /// The run owns the snapshot: once a newer checkpoint of the run
    /// subsumes it, it is deleted like any checkpoint of the run.
    Claim,
}

impl std::str::FromStr for ClaimMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "no-claim" => Ok(ClaimMode::NoClaim),
            "claim" => Ok(ClaimMode::Claim),
            other => Err(format!(
                "unknown claim mode `{other}`: expected `no-claim` or `claim`"
            )),
        }
    }
}

/// `savepoint-<job>-<run>-<id>`, one path segment: `run` tells apart runs
/// of the same job (ids restart at 1 in a fresh run), e.g. the first six
/// digits of the job id; bytes of the job name outside `[A-Za-z0-9._-]`
/// are written `%XX`.
pub fn savepoint_dir_name(job: &str, run: &str, id: u64) -> String {
    let mut name = String::from("savepoint-");
    crate::checkpoint::format::escape_segment(job, &mut name);
    name.push_str(&format!("-{run}-{id}"));
    name
}

/// Deletes the snapshot directory at `location` (a path, relative to
/// `cwd`, or a URL) with everything in it; returns how many files went.
///
/// # Errors
/// [`Error::Storage`] if listing or deleting fails or the location has no
/// parent directory.
pub async fn delete_snapshot(location: &str, cwd: &Path) -> Result<usize, Error> {
    let trimmed = location.trim_end_matches('/');
    let (parent, name) = match trimmed.rsplit_once('/') {
        Some((parent, name)) if !name.is_empty() => {
            (if parent.is_empty() { "/" } else { parent }, name)
        }
        _ => (".", trimmed),
    };
    if parent.ends_with(':') || parent.ends_with(":/") {
        // `s3://bucket`: the bucket itself is not a snapshot directory.
        return Err(Error::Savepoint {
            message: format!("{location} is not a snapshot directory inside a storage root"),
        });
    }
    let storage = CheckpointStorage::open(parent, cwd)?;
    Ok(storage.delete_prefix(name).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names_are_one_portable_segment() {
        assert_eq!(
            savepoint_dir_name("wordcount", "3f2a1b", 7),
            "savepoint-wordcount-3f2a1b-7"
        );
        assert_eq!(
            savepoint_dir_name("a/b c", "000000", 1),
            "savepoint-a%2Fb%20c-000000-1"
        );
        assert_eq!("claim".parse(), Ok(ClaimMode::Claim));
        assert!("keep".parse::<ClaimMode>().is_err());
    }
}
