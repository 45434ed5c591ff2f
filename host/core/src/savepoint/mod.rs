//! Savepoints: user-owned snapshots of a job in a documented,
//! backend-independent layout ([`format`](mod@format)), restored by operator uid at any
//! parallelism ([`restore`]), listed, inspected and disposed of without
//! running a job.
//!
//! A savepoint is taken like a checkpoint (barriers, always aligned) but
//! written to `<target>/savepoint-<job>-<id>/`, never subsumed or deleted
//! by Weir, and not used for failover.

/// The canonical savepoint encodings, in `weir-format`.
pub use weir_format::savepoint as format;
pub mod inspect;
/// The restore plan and redistribution, kept in [`crate::snapshot::protocol`].
pub use crate::snapshot::protocol::restore;

use crate::checkpoint::storage::{CheckpointStorage, Storages};
use crate::error::Error;

pub use weir_format::jobdir::ClaimMode;

/// `savepoint-<job>-<run>-<id>`, one path segment: `run` tells apart runs
/// of the same job (ids restart at 1 in a fresh run), e.g. the first six
/// digits of the job id; bytes of the job name outside `[A-Za-z0-9._-]`
/// are written `%XX`.
pub fn savepoint_dir_name(job: &str, run: &str, id: u64) -> String {
    let mut name = String::from("savepoint-");
    weir_format::frame::escape_segment(job, &mut name);
    name.push_str(&format!("-{run}-{id}"));
    name
}

/// The storage holding the snapshot directory at `location` (a path,
/// relative to `storages`' base directory, or a URL), opened at its
/// parent, and the directory's name in it.
fn parent_and_name(
    location: &str,
    storages: &Storages,
) -> Result<(CheckpointStorage, String), Error> {
    let trimmed = location.trim_end_matches('/');
    let (parent, name) = match trimmed.rsplit_once('/') {
        Some((parent, name)) if !name.is_empty() => {
            (if parent.is_empty() { "/" } else { parent }, name)
        }
        _ => (".", trimmed),
    };
    if parent.ends_with(':') || parent.ends_with(":/") || name.is_empty() || name == ".." {
        // `s3://bucket`: the bucket itself is not a snapshot directory.
        return Err(Error::Savepoint {
            message: format!("{location} is not a snapshot directory inside a storage root"),
        });
    }
    Ok((storages.open(parent)?, name.to_owned()))
}

/// Deletes the snapshot at `location` (a path, relative to `storages`'
/// base directory, or a URL): the files its `_metadata` references, then the `_metadata`
/// itself (last, so an interrupted delete can be run again), then the
/// directory if nothing else is left in it. Files the snapshot does not
/// reference are never touched. Returns how many files went.
///
/// # Errors
/// [`Error::Savepoint`] if the location has no parent directory;
/// [`Error::Storage`] if reading or deleting fails (a missing referenced
/// file is not an error); [`Error::Format`] if the `_metadata` does not
/// decode (nothing is deleted then).
pub async fn delete_snapshot(location: &str, storages: &Storages) -> Result<usize, Error> {
    use crate::checkpoint::catalog::{METADATA_FILE, Manifest};
    let (storage, name) = parent_and_name(location, storages)?;
    let metadata = format!("{name}/{METADATA_FILE}");
    let bytes = storage.get(&metadata).await?;
    let manifest = Manifest::decode(&storage.location(&metadata), &bytes)?;
    let mut deleted = 0;
    for file in manifest.files() {
        if storage.delete(&format!("{name}/{file}")).await? {
            deleted += 1;
        }
    }
    if storage.delete(&metadata).await? {
        deleted += 1;
    }
    storage.remove_empty_dir(&name).await?;
    Ok(deleted)
}

/// Whether `name` is a file a snapshot directory holds: `_metadata`, a
/// state file (`<uid>-<subtask>.state`, the uid escaped), or either of
/// them staged by an interrupted local write (`NAME#<digits>`).
pub fn is_snapshot_file(name: &str) -> bool {
    let name = match name.rsplit_once('#') {
        Some((base, digits))
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) =>
        {
            base
        }
        _ => name,
    };
    if name == crate::checkpoint::catalog::METADATA_FILE {
        return true;
    }
    let Some((uid, subtask)) = name
        .strip_suffix(".state")
        .and_then(|stem| stem.rsplit_once('-'))
    else {
        return false;
    };
    !uid.is_empty()
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'%'))
        && !subtask.is_empty()
        && subtask.bytes().all(|b| b.is_ascii_digit())
}

/// Deletes what an interrupted savepoint left at `location` (a directory
/// without `_metadata`): only the files that look like a snapshot's
/// ([`is_snapshot_file`]) directly in it, then the directory if nothing
/// else is left. Returns the files deleted and the names of those left.
///
/// # Errors
/// [`Error::Savepoint`] if the location has no parent directory;
/// [`Error::Storage`] if listing or deleting fails.
pub async fn delete_partial(
    location: &str,
    storages: &Storages,
) -> Result<(usize, Vec<String>), Error> {
    let (storage, name) = parent_and_name(location, storages)?;
    let mut deleted = 0;
    let mut kept = Vec::new();
    for object in storage.list(&name).await? {
        let file = object.path[name.len() + 1..].to_owned();
        if file.contains('#') && is_snapshot_file(&file) {
            // A staged write, if a store lists one: removed below.
            continue;
        } else if !file.contains('/') && is_snapshot_file(&file) {
            if storage.delete(&object.path).await? {
                deleted += 1;
            }
        } else {
            kept.push(file);
        }
    }
    // A local write staged under `NAME#<digits>` is not listed by the
    // store: remove those directly.
    if let Some(dir) = storage.local_dir(&name)
        && let Ok(entries) = std::fs::read_dir(&dir)
    {
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.contains('#')
                && is_snapshot_file(&file)
                && entry.file_type().is_ok_and(|t| t.is_file())
                && std::fs::remove_file(entry.path()).is_ok()
            {
                deleted += 1;
            }
        }
    }
    storage.remove_empty_dir(&name).await?;
    Ok((deleted, kept))
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

    #[test]
    fn snapshot_files_are_recognised_by_name() {
        for yes in [
            "_metadata",
            "count-0.state",
            "a%2Fb-12.state",
            "my-op-3.state",
            "count-0.state#123",
            "_metadata#9",
        ] {
            assert!(is_snapshot_file(yes), "{yes}");
        }
        for no in [
            "notes.txt",
            "count.state",
            "-0.state",
            "count-x.state",
            "count-0.state#",
            "a b-0.state",
            "_metadata.bak",
        ] {
            assert!(!is_snapshot_file(no), "{no}");
        }
    }
}
