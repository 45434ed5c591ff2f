//! Which files of a job's checkpoint directory to delete, and in what
//! order. A file goes only once no retained checkpoint references it, so
//! a checkpoint may reference files an older one wrote (incremental
//! checkpoints will), and deleting the older one keeps them.
//!
//! Paths are relative to the job's directory (`chk-7/count-0.state`). The
//! runtime lists the directory — with the staging files a local store's
//! listing hides (`<name>#<digits>`, what a `kill -9` during an upload
//! leaves) — passes the listing here, and deletes what comes back, in
//! order: `_metadata` first, so a checkpoint stops being complete before
//! any of its files goes, and a crash halfway leaves an incomplete
//! directory, which the next start sweeps.

use std::collections::BTreeSet;

use weir_format::checkpoint::{CheckpointId, CheckpointMetadata};
use weir_format::manifest::METADATA_FILE;

/// The directory of checkpoint `id`, relative to the job's directory.
pub fn checkpoint_dir(id: CheckpointId) -> String {
    format!("chk-{id}")
}

/// The checkpoint whose directory `path` (relative to the job's
/// directory) lies in, if any.
pub fn checkpoint_of(path: &str) -> Option<CheckpointId> {
    let (dir, _) = path.split_once('/')?;
    let n = dir.strip_prefix("chk-")?;
    // `chk-<n>` with n in decimal without leading zeros, as written.
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok().map(CheckpointId)
}

/// Whether `path` is a store's staging file, `<name>#<digits>`: an upload
/// that never finished. No snapshot ever references one.
pub fn is_staging(path: &str) -> bool {
    crate::checkpoint::storage::is_staging_name(path.rsplit('/').next().unwrap_or(path))
}

/// Every file completed checkpoint `m` references, relative to the job's
/// directory: its `_metadata`, its state files, and an incremental
/// checkpoint's base files in earlier checkpoints' directories.
pub fn references(m: &CheckpointMetadata) -> Vec<String> {
    let dir = checkpoint_dir(m.checkpoint_id);
    let subtasks = || m.vertices.iter().flat_map(|v| &v.subtasks);
    std::iter::once(format!("{dir}/{METADATA_FILE}"))
        .chain(
            subtasks()
                .filter_map(|s| s.file.as_ref())
                .map(|f| format!("{dir}/{f}")),
        )
        .chain(subtasks().flat_map(|s| &s.base).map(|b| b.path()))
        .collect()
}

/// What to delete: files in order, then the checkpoint directories to
/// remove if they are left empty (on stores that have directories).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Files, `_metadata` files first.
    pub files: Vec<String>,
    /// Directories of checkpoints swept, to remove once empty.
    pub dirs: Vec<String>,
}

impl Sweep {
    fn of(mut files: Vec<String>) -> Self {
        // `_metadata` first: a checkpoint is incomplete before it loses a
        // file. Then by path, for a stable order.
        files.sort_by(|a, b| {
            let later = |p: &str| p.rsplit('/').next() != Some(METADATA_FILE);
            (later(a), a).cmp(&(later(b), b))
        });
        files.dedup();
        let mut dirs: Vec<String> = files
            .iter()
            .filter_map(|f| checkpoint_of(f).map(checkpoint_dir))
            .collect();
        dirs.sort();
        dirs.dedup();
        Self { files, dirs }
    }

    /// Whether there is nothing to delete.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// The files to delete when checkpoints `gone` are subsumed or aborted:
/// every file `listing` shows in their directories that no retained
/// checkpoint `referenced`.
pub fn release(gone: &[CheckpointId], listing: &[String], referenced: &BTreeSet<String>) -> Sweep {
    let gone: BTreeSet<CheckpointId> = gone.iter().copied().collect();
    Sweep::of(
        listing
            .iter()
            .filter(|p| checkpoint_of(p).is_some_and(|id| gone.contains(&id)))
            .filter(|p| !referenced.contains(*p))
            .cloned()
            .collect(),
    )
}

/// The checkpoints whose directories to sweep when checkpoints go
/// (subsumed or aborted): theirs, and those of the earlier checkpoints
/// their `references` name (an incremental checkpoint's base files), whose
/// files may have outlived their own checkpoint only because a later one
/// referenced them. [`release`] still keeps whatever a retained checkpoint
/// references.
pub fn released_dirs<'a>(
    gone: impl IntoIterator<Item = (CheckpointId, &'a [String])>,
) -> Vec<CheckpointId> {
    let mut dirs = BTreeSet::new();
    for (id, references) in gone {
        dirs.insert(id);
        dirs.extend(references.iter().filter_map(|p| checkpoint_of(p)));
    }
    dirs.into_iter().collect()
}

/// The orphans in a job's directory when a run starts (it holds the
/// job's lease, so nothing is being written): the files of every
/// checkpoint directory that is not a completed checkpoint (aborted, or
/// its process died before `_metadata`), and staging files anywhere under
/// a checkpoint directory — except what a completed checkpoint
/// references. Files outside `chk-<n>/` (the lease, the restore record)
/// are never touched.
pub fn orphans(
    listing: &[String],
    completed: &BTreeSet<CheckpointId>,
    referenced: &BTreeSet<String>,
) -> Sweep {
    Sweep::of(
        listing
            .iter()
            .filter(|p| {
                checkpoint_of(p).is_some_and(|id| !completed.contains(&id) || is_staging(p))
            })
            .filter(|p| !referenced.contains(*p))
            .cloned()
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use weir_format::checkpoint::{SubtaskMetadata, VertexMetadata};

    use super::*;

    /// A store: the paths it holds under the job's directory.
    #[derive(Default)]
    struct Store(BTreeSet<String>);

    impl Store {
        fn with(paths: &[&str]) -> Self {
            Self(paths.iter().map(|p| (*p).to_owned()).collect())
        }

        fn listing(&self) -> Vec<String> {
            self.0.iter().cloned().collect()
        }

        /// Carries a sweep out, checking that no checkpoint is ever left
        /// complete without a file it references (`manifests`: what each
        /// checkpoint's `_metadata` references, itself first).
        fn apply(&mut self, sweep: &Sweep, manifests: &[Vec<String>]) {
            for f in &sweep.files {
                for m in manifests {
                    assert!(
                        &m[0] == f || !m.contains(f) || !self.0.contains(&m[0]),
                        "{f} deleted while {} still references it",
                        m[0]
                    );
                }
                assert!(self.0.remove(f), "{f} deleted twice or never there");
            }
        }
    }

    fn metadata(id: u64, files: &[&str]) -> CheckpointMetadata {
        CheckpointMetadata {
            version: 2,
            job_name: "job".into(),
            checkpoint_id: CheckpointId(id),
            trigger_time_ms: 0,
            completion_time_ms: 0,
            max_parallelism: 128,
            exactly_once: true,
            unaligned: false,
            is_final: false,
            vertices: vec![VertexMetadata {
                uid: "count".into(),
                parallelism: files.len() as u32,
                subtasks: files
                    .iter()
                    .enumerate()
                    .map(|(i, f)| SubtaskMetadata {
                        subtask: i as u32,
                        file: Some((*f).to_owned()),
                        size: 1,
                        key_group_start: 0,
                        key_group_end: 128,
                        key_groups: Vec::new(),
                        base: Vec::new(),
                        sync_ms: 0.0,
                        async_ms: 0.0,
                        alignment_ms: 0.0,
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn paths_name_their_checkpoint_and_staging_files_are_recognised() {
        assert_eq!(checkpoint_of("chk-12/a.state"), Some(CheckpointId(12)));
        assert_eq!(checkpoint_of("chk-012/a.state"), None);
        assert_eq!(checkpoint_of("_lease/3"), None);
        assert_eq!(checkpoint_of("chk-3"), None);
        assert!(is_staging("chk-3/count-0.state#17"));
        assert!(!is_staging("chk-3/count-0.state"));
        assert!(!is_staging("chk-3/odd#name.state"));
        assert!(!is_staging("chk-3/trailing#"));
        assert_eq!(
            references(&metadata(4, &["count-0.state", "count-1.state"])),
            [
                "chk-4/_metadata",
                "chk-4/count-0.state",
                "chk-4/count-1.state"
            ]
        );
    }

    #[test]
    fn subsuming_deletes_metadata_first_and_keeps_what_a_retained_checkpoint_references() {
        let mut store = Store::with(&[
            "chk-1/_metadata",
            "chk-1/count-0.state",
            "chk-1/shared.state",
            "chk-2/_metadata",
            "chk-2/count-0.state",
            "_lease/9",
        ]);
        // Checkpoint 2 (retained) also references a file checkpoint 1
        // wrote, as an incremental checkpoint would.
        let mut two = references(&metadata(2, &["count-0.state"]));
        two.push("chk-1/shared.state".into());
        let one = references(&metadata(1, &["count-0.state", "shared.state"]));
        let manifests = [one, two.clone()];
        let referenced: BTreeSet<String> = two.into_iter().collect();
        let sweep = release(&[CheckpointId(1)], &store.listing(), &referenced);
        assert_eq!(sweep.files, ["chk-1/_metadata", "chk-1/count-0.state"]);
        assert_eq!(sweep.dirs, ["chk-1"]);
        store.apply(&sweep, &manifests);
        assert_eq!(
            store.listing(),
            [
                "_lease/9",
                "chk-1/shared.state",
                "chk-2/_metadata",
                "chk-2/count-0.state"
            ]
        );
        // Once checkpoint 2 goes too, nothing references the shared file.
        let sweep = release(&[CheckpointId(2)], &store.listing(), &BTreeSet::new());
        assert_eq!(sweep.files, ["chk-2/_metadata", "chk-2/count-0.state"]);
        let both = release(
            &[CheckpointId(1), CheckpointId(2)],
            &store.listing(),
            &BTreeSet::new(),
        );
        store.apply(&both, &manifests);
        assert_eq!(store.listing(), ["_lease/9"]);
    }

    #[test]
    fn a_base_file_goes_with_the_last_checkpoint_that_references_it() {
        let mut store = Store::with(&[
            "chk-1/_metadata",
            "chk-1/count-0.state",
            "chk-2/_metadata",
            "chk-2/count-0.state",
            "chk-3/_metadata",
            "chk-3/count-0.state",
        ]);
        // 2 and 3 extend 1: their base is chk-1/count-0.state.
        let refs = |id: u64| {
            let mut r = references(&metadata(id, &["count-0.state"]));
            if id > 1 {
                r.push("chk-1/count-0.state".into());
            }
            r
        };
        let manifests = [refs(1), refs(2), refs(3)];
        // 1 subsumed, 2 and 3 retained: chk-1's state file stays.
        let retained: BTreeSet<String> = refs(2).into_iter().chain(refs(3)).collect();
        let gone = released_dirs([(CheckpointId(1), refs(1).as_slice())]);
        store.apply(&release(&gone, &store.listing(), &retained), &manifests);
        // 2 subsumed: its base lies in chk-1, which is swept again, and 3
        // still references the file.
        let r2 = refs(2);
        let gone = released_dirs([(CheckpointId(2), r2.as_slice())]);
        assert_eq!(gone, [CheckpointId(1), CheckpointId(2)]);
        let retained: BTreeSet<String> = refs(3).into_iter().collect();
        store.apply(&release(&gone, &store.listing(), &retained), &manifests);
        assert!(store.0.contains("chk-1/count-0.state"));
        // 3 subsumed too: now nothing references it.
        let r3 = refs(3);
        let gone = released_dirs([(CheckpointId(3), r3.as_slice())]);
        store.apply(
            &release(&gone, &store.listing(), &BTreeSet::new()),
            &manifests,
        );
        assert!(store.0.is_empty(), "{:?}", store.0);
    }

    #[test]
    fn after_a_crash_incomplete_checkpoints_and_staging_files_are_swept() {
        // chk-3 completed but an upload of chk-4 was killed mid-write and
        // chk-4 never got its `_metadata`; an older crash left a staging
        // file inside completed chk-3 as well.
        let mut store = Store::with(&[
            "_restore",
            "_lease/4",
            "chk-3/_metadata",
            "chk-3/count-0.state",
            "chk-3/count-1.state#2",
            "chk-4/count-0.state",
            "chk-4/count-1.state#7",
        ]);
        let completed: BTreeSet<CheckpointId> = [CheckpointId(3)].into();
        let three = references(&metadata(3, &["count-0.state"]));
        let referenced: BTreeSet<String> = three.iter().cloned().collect();
        let sweep = orphans(&store.listing(), &completed, &referenced);
        assert_eq!(
            sweep.files,
            [
                "chk-3/count-1.state#2",
                "chk-4/count-0.state",
                "chk-4/count-1.state#7"
            ]
        );
        assert_eq!(sweep.dirs, ["chk-3", "chk-4"]);
        store.apply(&sweep, &[three]);
        assert_eq!(
            store.listing(),
            [
                "_lease/4",
                "_restore",
                "chk-3/_metadata",
                "chk-3/count-0.state"
            ]
        );
        // A second start finds nothing more.
        assert!(orphans(&store.listing(), &completed, &referenced).is_empty());
    }

    #[test]
    fn an_aborted_checkpoint_loses_only_its_own_unreferenced_files() {
        let store = Store::with(&[
            "chk-5/_metadata",
            "chk-5/a.state",
            "chk-6/a.state",
            "chk-6/b.state#1",
            "chk-60/a.state",
        ]);
        let referenced = references(&metadata(5, &["a.state"])).into_iter().collect();
        let sweep = release(&[CheckpointId(6)], &store.listing(), &referenced);
        assert_eq!(sweep.files, ["chk-6/a.state", "chk-6/b.state#1"]);
    }
}
