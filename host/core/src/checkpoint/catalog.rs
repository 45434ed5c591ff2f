//! The checkpoints a job has in storage, and loading one to restore from.
//!
//! A checkpoint directory `<job>/chk-<n>` is *completed* when its
//! `_metadata` exists and decodes; a directory without one is what a crash
//! or an aborted checkpoint left behind, never restored from.

use futures::future::try_join_all;

use super::CheckpointId;
use super::format::{self, CheckpointMetadata, SubtaskSnapshot};
use super::storage::{CheckpointStorage, StorageError, Storages};
use crate::error::Error;
use crate::job::JobGraph;
use crate::savepoint::format::{self as savepoint_format, SavepointMetadata};
use crate::savepoint::restore::{self, JobVertex, OperatorSnapshot, RestorePlan, StoredVertex};
use crate::snapshot::protocol::gc::{self, Sweep};
use crate::state::NamedStateSnapshot;
use weir_format::snapshot::{ListSection, SourceSplit};

pub use weir_format::manifest::{METADATA_FILE, Manifest};

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

/// The checkpoints of a [`scan`] that must stay (completed, and corrupt
/// ones too: starting past them would silently lose their state), and the
/// files each completed one references.
pub fn retained(
    listed: &[Listed],
) -> (
    std::collections::BTreeSet<CheckpointId>,
    std::collections::BTreeMap<CheckpointId, Vec<String>>,
) {
    let kept = listed
        .iter()
        .filter(|l| !matches!(l.status, Status::Incomplete))
        .map(|l| l.id)
        .collect();
    let referenced = listed
        .iter()
        .filter_map(|l| match &l.status {
            Status::Completed(m) => Some((l.id, gc::references(m))),
            _ => None,
        })
        .collect();
    (kept, referenced)
}

/// Everything in `job`'s checkpoint directory, relative to it, staging
/// files included (what [`crate::snapshot::protocol::gc`] decides over).
///
/// # Errors
/// [`Error::Storage`] if listing fails.
pub async fn job_files(storage: &CheckpointStorage, job: &str) -> Result<Vec<String>, Error> {
    files_under(storage, job, job).await
}

/// As [`job_files`], only the files of checkpoints `ids`.
///
/// # Errors
/// [`Error::Storage`] if listing fails.
pub async fn checkpoint_files(
    storage: &CheckpointStorage,
    job: &str,
    ids: &[CheckpointId],
) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for id in ids {
        let dir = format!("{job}/{}", gc::checkpoint_dir(*id));
        out.extend(files_under(storage, job, &dir).await?);
    }
    Ok(out)
}

/// Every file under `prefix`, relative to `job`'s checkpoint directory.
async fn files_under(
    storage: &CheckpointStorage,
    job: &str,
    prefix: &str,
) -> Result<Vec<String>, Error> {
    let job_dir = format!("{job}/");
    Ok(storage
        .list_everything(prefix)
        .await?
        .into_iter()
        .filter_map(|p| p.strip_prefix(&job_dir).map(str::to_owned))
        .collect())
}

/// Carries out a garbage-collection [`Sweep`] in `job`'s checkpoint
/// directory: its files in order (`_metadata` first), then its emptied
/// checkpoint directories. Returns how many files were deleted.
///
/// # Errors
/// [`Error::Storage`] for the first deletion that fails (the files after
/// it stay, for the next sweep).
pub async fn sweep(storage: &CheckpointStorage, job: &str, sweep: &Sweep) -> Result<usize, Error> {
    let mut deleted = 0;
    for file in &sweep.files {
        let path = format!("{job}/{file}");
        let gone = if gc::is_staging(file) {
            storage.delete_staging(&path).await?
        } else {
            storage.delete(&path).await?
        };
        deleted += usize::from(gone);
    }
    for dir in &sweep.dirs {
        storage.remove_empty_dir(&format!("{job}/{dir}")).await?;
    }
    Ok(deleted)
}

pub use weir_format::jobdir::{RESTORE_FILE, RESTORE_FORMAT, RESTORE_VERSION, RestoreRecord};

/// Reads `job`'s restore record, if it has one.
///
/// # Errors
/// [`Error::Storage`] if reading fails, [`Error::Format`] if the record
/// does not decode.
pub async fn read_restore_record(
    storage: &CheckpointStorage,
    job: &str,
) -> Result<Option<RestoreRecord>, Error> {
    let path = format!("{job}/{RESTORE_FILE}");
    match storage.get(&path).await {
        Ok(bytes) => Ok(Some(RestoreRecord::decode(
            &storage.location(&path),
            &bytes,
        )?)),
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes `record` as `job`'s, replacing any earlier one (a new restore
/// starts a new run).
///
/// # Errors
/// [`Error::Storage`] if writing fails.
pub async fn write_restore_record(
    record: &RestoreRecord,
    storage: &CheckpointStorage,
    job: &str,
) -> Result<(), Error> {
    let path = format!("{job}/{RESTORE_FILE}");
    storage.put(&path, record.encode().into()).await?;
    Ok(())
}

/// Deletes `job`'s restore record, if any.
///
/// # Errors
/// [`Error::Storage`] if deleting fails.
pub async fn remove_restore_record(storage: &CheckpointStorage, job: &str) -> Result<(), Error> {
    storage.delete(&format!("{job}/{RESTORE_FILE}")).await?;
    Ok(())
}

/// Every vertex a snapshot stored, as the restore plan needs them.
pub fn stored_vertices(manifest: &Manifest) -> Vec<StoredVertex> {
    match manifest {
        Manifest::Checkpoint(m) => m
            .vertices
            .iter()
            .map(|v| StoredVertex {
                uid: v.uid.clone(),
                parallelism: v.parallelism,
                has_state: v.subtasks.iter().any(|s| s.file.is_some()),
                may_have_in_flight: m.unaligned,
            })
            .collect(),
        Manifest::Savepoint(m) => m
            .operators
            .iter()
            .map(|o| StoredVertex {
                uid: o.uid.clone(),
                parallelism: o.parallelism,
                has_state: !o.keyed_states.is_empty()
                    || !o.operator_states.is_empty()
                    || o.source_offsets.is_some()
                    || o.sink.is_some(),
                may_have_in_flight: false,
            })
            .collect(),
    }
}

/// What a snapshot is opened for, which decides how a missing one is
/// reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `weir run -s`.
    Restore,
    /// `weir savepoint check`.
    Check,
    /// `weir savepoint inspect`.
    Inspect,
    /// `weir savepoint dispose`.
    Dispose,
}

impl Purpose {
    /// What the command takes, for the message about a missing snapshot.
    fn takes(self) -> &'static str {
        match self {
            Purpose::Restore => {
                "`-s` takes a savepoint's or a completed checkpoint's directory (savepoint-<job>-<id>, chk-<n>) or its _metadata file"
            }
            Purpose::Check => {
                "`weir savepoint check` takes a savepoint's or a completed checkpoint's directory (savepoint-<job>-<id>, chk-<n>) or its _metadata file"
            }
            Purpose::Inspect => {
                "`weir savepoint inspect` takes a savepoint's or a completed checkpoint's directory (savepoint-<job>-<id>, chk-<n>) or its _metadata file"
            }
            Purpose::Dispose => {
                "`weir savepoint dispose` takes a savepoint's directory (savepoint-<job>-<id>) or its _metadata file"
            }
        }
    }
}

/// The directory `location` names: itself, or the directory of the
/// `_metadata` file it names (`.` for a bare `_metadata`).
pub fn snapshot_dir(location: &str) -> &str {
    let dir = location
        .trim_end_matches('/')
        .strip_suffix(METADATA_FILE)
        .unwrap_or(location)
        .trim_end_matches('/');
    if dir.is_empty() { "." } else { dir }
}

/// An incremental checkpoint opened outside its job's directory.
fn missing_base(location: &str, expected: &str, found: &str, purpose: Purpose) -> Error {
    let message = format!(
        "{location} is an incremental checkpoint: it reads state files of earlier \
         checkpoints beside it, so it must stay in its job's directory as `{expected}` \
         (it is in `{found}`); use it from that directory, or take a savepoint"
    );
    match purpose {
        Purpose::Restore => Error::Restore { message },
        _ => Error::Savepoint { message },
    }
}

/// A completed checkpoint or savepoint to restore from.
#[derive(Debug, Clone)]
pub struct RestorePoint {
    /// The storage holding it.
    pub storage: CheckpointStorage,
    /// Its directory in that storage (`""` when the storage is rooted at it).
    pub dir: String,
    /// Its decoded `_metadata`.
    pub manifest: Manifest,
}

/// What a restore read: each subtask's state in graph order, and how the
/// snapshot mapped onto the job.
#[derive(Debug)]
pub struct Restored {
    /// One snapshot per subtask of the job, vertex by vertex.
    pub snapshots: Vec<SubtaskSnapshot>,
    /// Matched, new and dropped uids.
    pub plan: RestorePlan,
    /// The declared types the snapshot recorded: uid → state → type.
    pub types: std::collections::HashMap<String, std::collections::HashMap<String, String>>,
}

impl RestorePoint {
    /// The checkpoint or savepoint `location` names: its directory or its
    /// `_metadata` file, as a local path (relative to `storages`' base
    /// directory) or a storage URL, opened in `storages`.
    ///
    /// # Errors
    /// [`Error::Restore`] if there is no `_metadata` there;
    /// [`Error::Storage`] or [`Error::Format`] if it cannot be read.
    pub async fn open(location: &str, storages: &Storages) -> Result<Self, Error> {
        Self::open_for(location, storages, Purpose::Restore).await
    }

    /// As [`open`](Self::open), for `purpose`: a missing snapshot is
    /// reported as what that command takes.
    ///
    /// # Errors
    /// [`Error::Restore`] (restoring) or [`Error::Savepoint`] (another
    /// command) if there is no `_metadata` there; [`Error::Storage`] or
    /// [`Error::Format`] if it cannot be read.
    pub async fn open_for(
        location: &str,
        storages: &Storages,
        purpose: Purpose,
    ) -> Result<Self, Error> {
        let cwd = storages.base_dir();
        let dir = snapshot_dir(location);
        let missing = |what: String| {
            let message = format!("{what} does not exist: {}", purpose.takes());
            match purpose {
                Purpose::Restore => Error::Restore { message },
                _ => Error::Savepoint { message },
            }
        };
        // A local directory that is not there is named as such (opening
        // the storage would create it).
        if !dir.contains("://") && !cwd.join(dir).exists() {
            return Err(missing(cwd.join(dir).display().to_string()));
        }
        let storage = storages.open(dir)?;
        let bytes = match storage.get(METADATA_FILE).await {
            Ok(b) => b,
            Err(StorageError::NotFound { location }) => return Err(missing(location)),
            Err(e) => return Err(e.into()),
        };
        let manifest = Manifest::decode(&storage.location(METADATA_FILE), &bytes)?;
        if let Manifest::Checkpoint(m) = &manifest
            && m.is_incremental()
        {
            // An incremental checkpoint reads earlier checkpoints' files
            // beside it: open its job's directory instead.
            let expected = crate::snapshot::protocol::gc::checkpoint_dir(m.checkpoint_id);
            let (parent, last) = dir.rsplit_once('/').unwrap_or((".", dir));
            if last != expected {
                return Err(missing_base(storage.url(), &expected, last, purpose));
            }
            return Ok(Self {
                storage: storages.open(if parent.is_empty() { "/" } else { parent })?,
                dir: expected,
                manifest,
            });
        }
        Ok(Self {
            storage,
            dir: String::new(),
            manifest,
        })
    }

    /// The path in the storage of an incremental checkpoint's base file:
    /// `chk-<n>/<file>` in the job's directory, the parent of `dir`.
    fn base_path(&self, base: &format::StateFileRef) -> String {
        match self.dir.rsplit_once('/') {
            Some((job, _)) => format!("{job}/{}", base.path()),
            None => base.path(),
        }
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

    /// Plans the restore into `graph` from the metadata alone.
    ///
    /// # Errors
    /// [`Error::Restore`] naming the snapshot and what does not fit.
    pub fn plan(&self, graph: &JobGraph, allow_non_restored: bool) -> Result<RestorePlan, Error> {
        let job: Vec<JobVertex> = graph
            .vertices
            .iter()
            .map(|v| JobVertex {
                uid: v.uid.clone(),
                parallelism: v.parallelism,
            })
            .collect();
        restore::plan(
            &stored_vertices(&self.manifest),
            self.manifest.max_parallelism(),
            &job,
            graph.max_parallelism,
            allow_non_restored,
        )
        .map_err(|e| Error::Restore {
            message: format!("{} ({}): {e}", self.manifest.describe(), self.location()),
        })
    }

    /// Checks the snapshot fits `graph`, reads the state of every matched
    /// uid and deals it to the job's subtasks at their parallelism.
    ///
    /// # Errors
    /// [`Error::Restore`] naming what does not match (uids, max
    /// parallelism, a rescaled source); [`Error::Storage`] or
    /// [`Error::Format`] for a missing or corrupt state file.
    pub async fn load(
        &self,
        graph: &JobGraph,
        allow_non_restored: bool,
    ) -> Result<Restored, Error> {
        let plan = self.plan(graph, allow_non_restored)?;
        let wanted: Vec<&str> = plan.matched.iter().map(|(uid, ..)| uid.as_str()).collect();
        let operators = match &self.manifest {
            Manifest::Checkpoint(m) => self.read_checkpoint(m, &wanted).await?,
            Manifest::Savepoint(m) => self.read_savepoint(m, &wanted).await?,
        };
        let mut by_uid: std::collections::HashMap<String, OperatorSnapshot> =
            operators.into_iter().map(|o| (o.uid.clone(), o)).collect();
        let mut snapshots = Vec::new();
        for v in &graph.vertices {
            match by_uid.remove(&v.uid) {
                Some(op) => snapshots.extend(restore::redistribute(
                    op,
                    v.parallelism,
                    graph.max_parallelism,
                )),
                None => snapshots.extend((0..v.parallelism).map(|_| SubtaskSnapshot::default())),
            }
        }
        check_pending_parts(graph, &snapshots)?;
        let types = match &self.manifest {
            Manifest::Savepoint(m) => m
                .operators
                .iter()
                .map(|o| {
                    let states = o
                        .keyed_states
                        .iter()
                        .map(|s| (&s.name, &s.type_name))
                        .chain(
                            o.operator_states
                                .iter()
                                .filter(|s| s.namespace.is_user())
                                .map(|s| (&s.name, &s.type_name)),
                        )
                        .filter_map(|(n, t)| Some((n.clone(), t.clone()?)))
                        .collect();
                    (o.uid.clone(), states)
                })
                .collect(),
            Manifest::Checkpoint(_) => std::collections::HashMap::new(),
        };
        Ok(Restored {
            snapshots,
            plan,
            types,
        })
    }

    /// Reads the state of every vertex the snapshot holds (for inspect,
    /// dump and check), verifying every file it reads.
    ///
    /// # Errors
    /// [`Error::Storage`] or [`Error::Format`] for a missing or corrupt file.
    pub async fn read_all(&self) -> Result<Vec<OperatorSnapshot>, Error> {
        let uids: Vec<String> = stored_vertices(&self.manifest)
            .into_iter()
            .map(|v| v.uid)
            .collect();
        let wanted: Vec<&str> = uids.iter().map(String::as_str).collect();
        match &self.manifest {
            Manifest::Checkpoint(m) => self.read_checkpoint(m, &wanted).await,
            Manifest::Savepoint(m) => self.read_savepoint(m, &wanted).await,
        }
    }

    /// Reads a state file the `_metadata` references. One that is missing
    /// or not a regular file cannot appear by retrying: a restore error.
    async fn fetch(&self, file: &str) -> Result<(String, bytes::Bytes), Error> {
        self.fetch_path(self.path(file)).await
    }

    /// As [`fetch`](Self::fetch), by the path in the storage.
    async fn fetch_path(&self, path: String) -> Result<(String, bytes::Bytes), Error> {
        let location = self.storage.location(&path);
        match self.storage.get(&path).await {
            Ok(bytes) => Ok((location, bytes)),
            Err(StorageError::NotFound { .. }) => Err(Error::Restore {
                message: format!(
                    "{location}, a state file {} references, is missing",
                    self.manifest.describe()
                ),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the state of the vertices `uids` (for check), verifying
    /// every file it reads.
    ///
    /// # Errors
    /// As [`read_all`](Self::read_all).
    pub async fn read(&self, uids: &[&str]) -> Result<Vec<OperatorSnapshot>, Error> {
        match &self.manifest {
            Manifest::Checkpoint(m) => self.read_checkpoint(m, uids).await,
            Manifest::Savepoint(m) => self.read_savepoint(m, uids).await,
        }
    }

    /// Reads whole checkpoint state files of the `wanted` uids.
    async fn read_checkpoint(
        &self,
        m: &CheckpointMetadata,
        wanted: &[&str],
    ) -> Result<Vec<OperatorSnapshot>, Error> {
        let mut out = Vec::new();
        for v in m
            .vertices
            .iter()
            .filter(|v| wanted.contains(&v.uid.as_str()))
        {
            let loads = v.subtasks.iter().map(|s| async move {
                if s.base.is_empty() {
                    let Some(file) = &s.file else {
                        return Ok::<_, Error>(SubtaskSnapshot::default());
                    };
                    let (location, bytes) = self.fetch(file).await?;
                    return Ok(format::decode_state_file(&location, &bytes)?);
                }
                // An incremental subtask: its base files, oldest first,
                // then its own, fetched together, then merged in order.
                let paths = s
                    .base
                    .iter()
                    .map(|b| self.base_path(b))
                    .chain(s.file.iter().map(|f| self.path(f)));
                let chain = try_join_all(paths.map(|path| async move {
                    let (location, bytes) = self.fetch_path(path).await?;
                    Ok::<_, Error>(format::decode_state_file_with_deltas(&location, &bytes)?)
                }))
                .await?;
                format::merge_chain(chain).map_err(|m| Error::Restore {
                    message: format!(
                        "{}: `{}` subtask {}: {m}",
                        self.location(),
                        v.uid,
                        s.subtask
                    ),
                })
            });
            let subtasks = try_join_all(loads).await?;
            let mut op = OperatorSnapshot {
                uid: v.uid.clone(),
                parallelism: v.parallelism,
                ..OperatorSnapshot::default()
            };
            let mut sinks = Vec::new();
            for (i, mut s) in subtasks.into_iter().enumerate() {
                s.adopt_v1_source_offset(i as u32, v.parallelism);
                for g in s.keyed {
                    op.keyed.insert(g.key_group, g.states);
                }
                op.lists.push(s.lists);
                sinks.push(s.sink);
                op.in_flight.push(s.in_flight);
            }
            op.sinks = sinks.iter().any(Option::is_some).then_some(sinks);
            out.push(op);
        }
        Ok(out)
    }

    /// Reads the sections of the `wanted` uids from canonical savepoint
    /// state files, each file fetched once.
    async fn read_savepoint(
        &self,
        m: &SavepointMetadata,
        wanted: &[&str],
    ) -> Result<Vec<OperatorSnapshot>, Error> {
        let ops: Vec<_> = m
            .operators
            .iter()
            .filter(|o| wanted.contains(&o.uid.as_str()))
            .collect();
        let files = savepoint_format::files_of(ops.iter().copied());
        let fetched: std::collections::HashMap<&str, (String, bytes::Bytes)> = try_join_all(
            files
                .iter()
                .map(|f| async move { Ok::<_, Error>((*f, self.fetch(f).await?)) }),
        )
        .await?
        .into_iter()
        .collect();
        let section = |at: &savepoint_format::SectionRef| {
            let (location, bytes) = &fetched[at.file.as_str()];
            savepoint_format::decode_section(location, bytes, at)
        };
        let mut out = Vec::new();
        for o in ops {
            let mut op = OperatorSnapshot {
                uid: o.uid.clone(),
                parallelism: o.parallelism,
                lists: vec![Vec::new(); o.parallelism as usize],
                ..OperatorSnapshot::default()
            };
            for state in &o.keyed_states {
                for g in &state.key_groups {
                    let savepoint_format::Section::Keyed(s) = section(&g.at)? else {
                        return Err(self.mismatch(&g.at, "an operator-state section"));
                    };
                    if s.state != state.name || s.key_group != g.key_group {
                        return Err(self.mismatch(
                            &g.at,
                            &format!("state `{}` key group {}", s.state, s.key_group),
                        ));
                    }
                    let states = op.keyed.entry(g.key_group).or_default();
                    states.push(NamedStateSnapshot {
                        name: s.state,
                        entries: s.entries,
                    });
                }
            }
            for states in op.keyed.values_mut() {
                states.sort_by(|a, b| a.name.cmp(&b.name));
            }
            for state in &o.operator_states {
                for t in &state.subtasks {
                    let savepoint_format::Section::Operator(s) = section(&t.at)? else {
                        return Err(self.mismatch(&t.at, "a keyed-state section"));
                    };
                    let Some(slot) = op.lists.get_mut(t.subtask as usize) else {
                        return Err(self.mismatch(&t.at, &format!("subtask {}", t.subtask)));
                    };
                    if s.state != state.name {
                        return Err(self.mismatch(&t.at, &format!("state `{}`", s.state)));
                    }
                    slot.push(ListSection {
                        namespace: state.namespace,
                        name: s.state,
                        redistribution: state.redistribution,
                        items: s.items,
                    });
                }
            }
            // Version 1 kept a source's positions apart.
            for (i, offset) in o.source_offsets.iter().flatten().enumerate() {
                if let Some(slot) = op.lists.get_mut(i) {
                    let split = SourceSplit::from_v1_offset(i as u32, o.parallelism, *offset);
                    slot.push(ListSection::source_splits(&[split]));
                }
            }
            op.sinks = o
                .sink
                .as_ref()
                .map(|v| v.iter().cloned().map(Some).collect());
            out.push(op);
        }
        Ok(out)
    }

    fn mismatch(&self, at: &savepoint_format::SectionRef, found: &str) -> Error {
        Error::Format(format::FormatError::new(
            &self.storage.location(&self.path(&at.file)),
            format!(
                "the section at byte {} holds {found}, not what _metadata says",
                at.offset
            ),
        ))
    }
}

/// Checks that every pending part a restored `file` sink will commit is in
/// its directory, pending or already committed (a restore that committed
/// it before), as a regular file: a part that is not there cannot appear
/// by retrying, so the restore fails at once naming it. Never opens a
/// part (a FIFO in its place would block).
///
/// # Errors
/// [`Error::Restore`] naming the part file and the sink.
pub fn check_pending_parts(graph: &JobGraph, snapshots: &[SubtaskSnapshot]) -> Result<(), Error> {
    let mut at = 0;
    for v in &graph.vertices {
        let these = snapshots
            .get(at..at + v.parallelism as usize)
            .unwrap_or_default();
        at += v.parallelism as usize;
        let crate::job::VertexKind::FileSink { dir } = &v.kind else {
            continue;
        };
        for (subtask, s) in these.iter().enumerate() {
            for name in s.sink.iter().flat_map(|s| &s.pending) {
                let pending = dir.join(name);
                let visible = dir.join(name.trim_start_matches('.').trim_end_matches(".pending"));
                let found = [&pending, &visible]
                    .into_iter()
                    .find_map(|p| std::fs::metadata(p).ok().map(|m| (p, m)));
                let problem = match found {
                    None => format!("is missing (nor is {} there)", visible.display()),
                    Some((_, m)) if m.is_file() => continue,
                    Some((p, m)) => format!(
                        "({}) is {}, not a regular file",
                        p.display(),
                        super::storage::describe_file_type(&m.file_type())
                    ),
                };
                return Err(Error::Restore {
                    message: format!(
                        "sink `{}` subtask {subtask}: pre-committed part {} {problem}; the restored snapshot's output cannot be committed",
                        v.uid,
                        pending.display()
                    ),
                });
            }
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::savepoint::ClaimMode;

    fn record() -> RestoreRecord {
        RestoreRecord {
            version: RESTORE_VERSION,
            location: "/data/savepoints/savepoint-counts-3f2a1b-7".into(),
            snapshot_id: 7,
            claim_mode: ClaimMode::NoClaim,
            allow_non_restored: false,
            first_checkpoint: CheckpointId(8),
            written_ms: 1,
        }
    }

    #[test]
    fn a_restore_record_round_trips_and_reads_by_eye() {
        let r = record();
        let bytes = r.encode();
        assert_eq!(RestoreRecord::decode("_restore", &bytes).unwrap(), r);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("{\n  \"format\": \"weir-restore\",\n  \"version\": 1,"),
            "{text}"
        );
        assert!(text.contains("\"claim_mode\": \"no-claim\""), "{text}");
        assert!(text.contains("\"first_checkpoint\": 8"), "{text}");
        assert!(r.superseded_by(&[CheckpointId(3), CheckpointId(8)]));
        assert!(!r.superseded_by(&[CheckpointId(3), CheckpointId(7)]));
    }

    #[test]
    fn a_crafted_restore_record_is_refused_naming_the_field() {
        for bad in ["", "  ", "a\0b", "x\ny"] {
            let r = RestoreRecord {
                location: bad.into(),
                ..record()
            };
            let e = RestoreRecord::decode("job/_restore", &r.encode()).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("job/_restore: field `location`: "),
                "{e}"
            );
        }
        let mut json: serde_json::Value = serde_json::from_slice(&record().encode()).unwrap();
        json["version"] = 2.into();
        let e = RestoreRecord::decode("r", &serde_json::to_vec(&json).unwrap()).unwrap_err();
        assert!(e.to_string().contains("newer Weir"), "{e}");
        json["version"] = 1.into();
        json["claim_mode"] = "steal".into();
        assert!(RestoreRecord::decode("r", &serde_json::to_vec(&json).unwrap()).is_err());
        assert!(RestoreRecord::decode("r", b"{\"format\": \"weir-checkpoint\"}").is_err());
    }
}
