//! Checkpoint storage: every durable byte Weir writes, through the
//! `object_store` crate, under one storage root named by a URL.
//!
//! A root is a local directory (a path, or `file:///abs/path`), an
//! in-memory store (`memory://` or `memory://NAME`, shared by every handle
//! opened through the same [`Storages`]), or S3 (`s3://bucket/prefix`,
//! configured by the [`Storages`] it is opened through: the usual `AWS_*`
//! environment variables for the CLI, the host config for `weir serve`).
//! Callers name
//! objects by `/`-separated paths relative to the root, such as
//! `wordcount/chk-3/_metadata`; prefixes always match whole path segments,
//! so `job/chk-1` never covers `job/chk-10/…`.
//!
//! This module knows nothing of checkpoint layouts or encodings (those are
//! in [`super::format`]); it only moves bytes and reports failures naming
//! the full location (root URL + path).

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use thiserror::Error;

use crate::error::ErrorKind;

/// What [`Storages::open`] accepts, for error messages.
const SUPPORTED: &str = "supported: a local directory (a path, or file:///absolute/path), \
                         memory:// or memory://NAME, s3://BUCKET/PREFIX";

/// A failure to open, read or write checkpoint storage.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The storage URL is malformed or uses an unsupported scheme.
    #[error("invalid storage URL `{url}`: {message}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong, and what is supported.
        message: String,
    },
    /// A path relative to the root is not a valid object path (empty, an
    /// empty segment, `.` or `..`, a control character, a segment ending in
    /// `#` and digits), or an operation would cover the whole root. Always
    /// a bug in the caller.
    #[error("invalid storage path `{path}`: {message}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The object does not exist.
    #[error("not found: {location}")]
    NotFound {
        /// The full location (root URL + path).
        location: String,
    },
    /// The object already exists (from [`CheckpointStorage::put_if_absent`]).
    #[error("already exists: {location}")]
    AlreadyExists {
        /// The full location (root URL + path).
        location: String,
    },
    /// A local path holds something other than a regular file (a FIFO, a
    /// directory, a device), which is never opened.
    #[error("{location} is {what}, not a regular file")]
    NotAFile {
        /// The full location.
        location: String,
        /// What is there instead (`a FIFO`, `a directory`, …).
        what: &'static str,
    },
    /// Another run holds the job's lease on its checkpoint directory
    /// (see [`super::lease`]).
    #[error(
        "job `{job}` is running elsewhere: its checkpoints in {location} are leased to {holder}; \
         stop that run first (a lease left by a process that died expires by itself)"
    )]
    LeaseHeld {
        /// The job.
        job: String,
        /// Its checkpoint directory.
        location: String,
        /// Who holds the lease, and until when.
        holder: String,
    },
    /// This run's lease was taken over by another run after it expired.
    #[error("job `{job}` lost its lease on {location} to {holder}")]
    LeaseLost {
        /// The job.
        job: String,
        /// Its checkpoint directory.
        location: String,
        /// Who holds the lease now.
        holder: String,
    },
    /// Any other failure of the storage backend.
    #[error("storage failure at {location}: {source}")]
    Backend {
        /// The full location of the object or prefix involved.
        location: String,
        /// The backend's error.
        source: object_store::Error,
    },
}

impl StorageError {
    /// Who is at fault: a bad URL is the user's; a bad relative path is a
    /// bug in Weir; everything else is the storage service's.
    pub fn kind(&self) -> ErrorKind {
        match self {
            // Not a file where one belongs: retrying cannot help.
            StorageError::InvalidUrl { .. }
            | StorageError::NotAFile { .. }
            | StorageError::LeaseHeld { .. } => ErrorKind::User,
            StorageError::InvalidPath { .. } => ErrorKind::Internal,
            StorageError::NotFound { .. }
            | StorageError::AlreadyExists { .. }
            | StorageError::LeaseLost { .. }
            | StorageError::Backend { .. } => ErrorKind::External,
        }
    }
}

/// One stored object, as listed by [`CheckpointStorage::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's path relative to the storage root, `/`-separated.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub last_modified: SystemTime,
}

/// A handle on a storage root; cheap to clone and share between tasks.
#[derive(Clone, Debug)]
pub struct CheckpointStorage {
    store: Arc<dyn ObjectStore>,
    /// Where the root lies inside `store` (empty for a local directory,
    /// whose store is already rooted there).
    root: StorePath,
    /// The root as shown in messages: an absolute directory or a URL.
    url: Arc<str>,
    /// The root's directory, for a local one.
    local: Option<Arc<PathBuf>>,
}

/// How S3 roots are configured.
#[derive(Clone, Default)]
pub enum S3Config {
    /// From the `AWS_*` environment variables (`AWS_ENDPOINT` /
    /// `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP=true` for a local
    /// S3-compatible server): the CLI's single-job mode.
    #[default]
    Environment,
    /// From these options only, never the environment: `weir serve`,
    /// whose host config names its storage's credentials.
    Options(Vec<(AmazonS3ConfigKey, String)>),
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            S3Config::Environment => f.write_str("Environment"),
            // Keys only: the values hold credentials.
            S3Config::Options(o) => f
                .debug_list()
                .entries(o.iter().map(|(k, _)| k.as_ref()))
                .finish(),
        }
    }
}

/// The context storage URLs are opened in: the directory a relative path
/// resolves against, how S3 is configured, and the `memory://` stores
/// (shared by every handle opened through clones of one `Storages`, and by
/// nothing else: two hosts in one process never see each other's).
#[derive(Clone, Debug)]
pub struct Storages {
    base_dir: PathBuf,
    s3: Arc<S3Config>,
    memory: Arc<Mutex<HashMap<String, Arc<InMemory>>>>,
}

impl Storages {
    /// Relative paths resolve against `base_dir`; S3 is configured as
    /// `s3` says; the `memory://` stores are new.
    pub fn new(base_dir: &FsPath, s3: S3Config) -> Self {
        Storages {
            base_dir: base_dir.to_path_buf(),
            s3: Arc::new(s3),
            memory: Arc::default(),
        }
    }

    /// As [`new`](Self::new), with S3 configured from the environment.
    pub fn from_env(base_dir: &FsPath) -> Self {
        Self::new(base_dir, S3Config::Environment)
    }

    /// The same context (S3 configuration, `memory://` stores) with
    /// relative paths resolved against `base_dir` instead.
    pub fn relative_to(&self, base_dir: &FsPath) -> Self {
        Storages {
            base_dir: self.base_dir.join(base_dir),
            ..self.clone()
        }
    }

    /// The directory a relative path resolves against.
    pub fn base_dir(&self) -> &FsPath {
        &self.base_dir
    }

    /// Opens the storage root named by `url`, resolving a relative local
    /// path against the base directory and creating a local directory if
    /// it is missing. Nothing remote is contacted yet. S3 always uses
    /// `If-None-Match: *` for
    /// [`put_if_absent`](CheckpointStorage::put_if_absent).
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidUrl`] for an empty or malformed URL or an
    /// unsupported scheme (the message lists the supported ones), or an S3
    /// configuration the backend rejects; [`StorageError::Backend`] if a
    /// local directory cannot be created.
    pub fn open(&self, url: &str) -> Result<CheckpointStorage, StorageError> {
        CheckpointStorage::open_in(url, self)
    }

    /// The `InMemory` store named `name`, created on first use, so a job
    /// restarted through the same context finds its checkpoints.
    fn memory_store(&self, name: &str) -> Arc<dyn ObjectStore> {
        let mut stores = self
            .memory
            .lock()
            // The map holds only `Arc`s; a panic elsewhere cannot leave it
            // half-updated, so a poisoned lock is still safe to use.
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let store = stores
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(InMemory::new()));
        Arc::clone(store) as Arc<dyn ObjectStore>
    }
}

impl CheckpointStorage {
    /// Opens `url` in `storages`: see [`Storages::open`].
    fn open_in(url: &str, storages: &Storages) -> Result<Self, StorageError> {
        let invalid = |message: String| StorageError::InvalidUrl {
            url: url.to_string(),
            message,
        };
        if url.trim().is_empty() {
            return Err(invalid(format!("the URL is empty; {SUPPORTED}")));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Self::open_local(&storages.base_dir.join(url));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                // Only the local host: `file:///abs` or `file://localhost/abs`.
                let path = rest.strip_prefix("localhost").unwrap_or(rest);
                if !path.starts_with('/') {
                    return Err(invalid(
                        "a file URL needs an absolute path, as in file:///var/weir".to_string(),
                    ));
                }
                let decoded = percent_decode(path)
                    .ok_or_else(|| invalid("malformed %-escape in the path".to_string()))?;
                Self::open_local(FsPath::new(&decoded))
            }
            "memory" => {
                let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let root = StorePath::parse(prefix)
                    .map_err(|e| invalid(format!("bad prefix `{prefix}`: {e}")))?;
                Ok(CheckpointStorage {
                    store: storages.memory_store(name),
                    url: display_url("memory", name, root.as_ref()),
                    root,
                    local: None,
                })
            }
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(invalid(
                        "no bucket; expected s3://BUCKET/PREFIX".to_string(),
                    ));
                }
                let root = StorePath::parse(prefix)
                    .map_err(|e| invalid(format!("bad prefix `{prefix}`: {e}")))?;
                let builder = match &*storages.s3 {
                    S3Config::Environment => AmazonS3Builder::from_env(),
                    S3Config::Options(options) => options
                        .iter()
                        .fold(AmazonS3Builder::new(), |b, (k, v)| b.with_config(*k, v)),
                };
                let store = builder
                    .with_url(format!("s3://{bucket}"))
                    // Checkpoint commits rely on create-if-absent; say so
                    // explicitly so an `AWS_CONDITIONAL_PUT=disabled` in the
                    // environment cannot silently turn it off.
                    .with_conditional_put(S3ConditionalPut::ETagMatch)
                    .build()
                    .map_err(|e| invalid(format!("cannot configure S3: {e}")))?;
                Ok(CheckpointStorage {
                    store: Arc::new(store),
                    url: display_url("s3", bucket, root.as_ref()),
                    root,
                    local: None,
                })
            }
            other => Err(invalid(format!(
                "unsupported scheme `{other}://`; {SUPPORTED}"
            ))),
        }
    }

    fn open_local(dir: &FsPath) -> Result<Self, StorageError> {
        // Absolute but not canonical: messages show the path the user
        // wrote (symlinks kept), not where it happens to resolve.
        let dir: PathBuf = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let display: Arc<str> = dir.to_string_lossy().trim_end_matches('/').into();
        let backend = |source: object_store::Error| StorageError::Backend {
            location: display.to_string(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(|e| {
            backend(object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            })
        })?;
        // Cleanup removes the directories a deleted checkpoint leaves
        // empty, up to (never including) the root.
        let store = LocalFileSystem::new_with_prefix(&dir)
            .map_err(backend)?
            .with_automatic_cleanup(true);
        Ok(CheckpointStorage {
            store: Arc::new(store),
            root: StorePath::default(),
            url: if display.is_empty() {
                "/".into()
            } else {
                display.clone()
            },
            local: Some(Arc::new(dir)),
        })
    }

    /// A handle whose root is `prefix` below this one: a namespace (a
    /// tenant's, a job's) that can name nothing outside it, as every path
    /// is relative and `..` is not a segment object paths accept.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidPath`] for a bad or empty prefix.
    pub fn scoped(&self, prefix: &str) -> Result<Self, StorageError> {
        let root = self.object_path(prefix)?;
        let local = self.local_dir(prefix).map(Arc::new);
        Ok(CheckpointStorage {
            store: self.store.clone(),
            url: self.location(prefix).into(),
            root,
            local,
        })
    }

    /// The storage root as shown in messages: an absolute local directory,
    /// `memory://NAME` or `s3://bucket/prefix`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The full display location of the object (or prefix) at `path`,
    /// for error messages: the root followed by `/path`.
    pub fn location(&self, path: &str) -> String {
        let path = path.trim_matches('/');
        if path.is_empty() {
            self.url.to_string()
        } else if &*self.url == "/" {
            format!("/{path}")
        } else {
            format!("{}/{path}", self.url)
        }
    }

    /// Writes `bytes` at `path`, replacing any object already there. The
    /// write is atomic: readers see the old or the new bytes, never a mix.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidPath`] for a bad path,
    /// [`StorageError::Backend`] if the write fails.
    pub async fn put(&self, path: &str, bytes: Bytes) -> Result<(), StorageError> {
        let location = self.object_path(path)?;
        self.store
            .put(&location, PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| self.error(path, e))?;
        Ok(())
    }

    /// Writes `bytes` at `path` only if no object is there yet; of several
    /// concurrent writers exactly one succeeds. This is what makes a
    /// commit (such as a checkpoint's `_metadata`) happen at most once.
    ///
    /// # Errors
    ///
    /// [`StorageError::AlreadyExists`] if an object is already at `path`
    /// (its bytes are left unchanged), [`StorageError::InvalidPath`] for a
    /// bad path, [`StorageError::Backend`] if the write fails.
    pub async fn put_if_absent(&self, path: &str, bytes: Bytes) -> Result<(), StorageError> {
        let location = self.object_path(path)?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        self.store
            .put_opts(&location, PutPayload::from_bytes(bytes), opts)
            .await
            .map_err(|e| self.error(path, e))?;
        Ok(())
    }

    /// Reads the whole object at `path`.
    ///
    /// # Errors
    ///
    /// [`StorageError::NotFound`] if there is none,
    /// [`StorageError::InvalidPath`] for a bad path,
    /// [`StorageError::Backend`] if the read fails.
    pub async fn get(&self, path: &str) -> Result<Bytes, StorageError> {
        let location = self.object_path(path)?;
        // Check a local file's type before opening it: opening a FIFO for
        // reading blocks until a writer appears.
        if let Some(file) = self.local_dir(path)
            && let Ok(meta) = std::fs::metadata(&file)
            && !meta.is_file()
        {
            return Err(StorageError::NotAFile {
                location: self.location(path),
                what: describe_file_type(&meta.file_type()),
            });
        }
        let result = self
            .store
            .get(&location)
            .await
            .map_err(|e| self.error(path, e))?;
        result.bytes().await.map_err(|e| self.error(path, e))
    }

    /// Whether an object exists at `path` (a "directory" with objects
    /// under it is not an object).
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidPath`] for a bad path,
    /// [`StorageError::Backend`] if the backend cannot tell.
    pub async fn exists(&self, path: &str) -> Result<bool, StorageError> {
        let location = self.object_path(path)?;
        match self.store.head(&location).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(path, e)),
        }
    }

    /// Every object under `prefix/`, at any depth, sorted by path; the
    /// empty prefix lists the whole root. Prefixes match whole segments.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidPath`] for a bad prefix,
    /// [`StorageError::Backend`] if listing fails.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let metas = self.list_metas(prefix).await?;
        let mut objects: Vec<ObjectInfo> = metas
            .into_iter()
            .map(|meta| ObjectInfo {
                path: self.relative(&meta.location),
                size: meta.size,
                last_modified: SystemTime::from(meta.last_modified),
            })
            .collect();
        objects.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(objects)
    }

    /// The paths of every file under `prefix/`, relative to the root,
    /// sorted: what [`CheckpointStorage::list`] shows and, on a local root,
    /// also the staging files (`<name>#<digits>`) its listing hides — the
    /// uploads a `kill -9` interrupted, which garbage collection must find.
    /// Symbolic links are listed as files, never followed.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidPath`] for a bad prefix,
    /// [`StorageError::Backend`] if listing fails.
    pub async fn list_everything(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.prefix_path(prefix)?;
        let Some(dir) = self.local_dir(prefix) else {
            return Ok(self
                .list(prefix)
                .await?
                .into_iter()
                .map(|o| o.path)
                .collect());
        };
        let base = prefix.trim_matches('/').to_owned();
        let walked = tokio::task::spawn_blocking(move || walk(&dir, &base))
            .await
            .expect("invariant: walking a directory does not panic");
        let mut paths = walked.map_err(|e| {
            self.error(
                prefix,
                object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                },
            )
        })?;
        paths.sort();
        Ok(paths)
    }

    /// The names of the immediate child "directories" of `prefix/` (e.g.
    /// `["chk-1", "chk-2"]` for a job's checkpoint directory), sorted; the
    /// empty prefix lists those of the root.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidPath`] for a bad prefix,
    /// [`StorageError::Backend`] if listing fails.
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let full = self.prefix_path(prefix)?;
        let listing = self
            .store
            .list_with_delimiter(non_empty(&full))
            .await
            .map_err(|e| self.error(prefix, e))?;
        let mut dirs: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter(|dir| dir.prefix_matches(&full) && dir.parts_count() == full.parts_count() + 1)
            .filter_map(|dir| dir.filename().map(str::to_string))
            .collect();
        dirs.sort();
        dirs.dedup();
        Ok(dirs)
    }

    /// Deletes the object at `path`; `false` if there was none (a store
    /// that cannot tell, such as S3, always says `true`).
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidPath`] for a bad path,
    /// [`StorageError::Backend`] if deleting fails.
    pub async fn delete(&self, path: &str) -> Result<bool, StorageError> {
        let location = self.object_path(path)?;
        match self.store.delete(&location).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(path, e)),
        }
    }

    /// Deletes a local root's staging file `path` (`<dir>/<name>#<digits>`,
    /// which [`CheckpointStorage::delete`] refuses as a path); `false` if
    /// there was none, or the store has no staging files.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidPath`] for a path that is not a staging
    /// file's in a valid directory; [`StorageError::Backend`] if deleting
    /// fails.
    pub async fn delete_staging(&self, path: &str) -> Result<bool, StorageError> {
        let invalid = |message: &str| StorageError::InvalidPath {
            path: path.to_string(),
            message: message.to_string(),
        };
        let (dir, name) = path
            .rsplit_once('/')
            .ok_or_else(|| invalid("a staging file lies in a directory"))?;
        if !is_staging_name(name) || name.contains(['/', '\\']) {
            return Err(invalid("not a staging file name, `<name>#<digits>`"));
        }
        self.object_path(dir)?;
        let Some(dir) = self.local_dir(dir) else {
            return Ok(false);
        };
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.error(
                path,
                object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                },
            )),
        }
    }

    /// The local directory `path` names below a local root; `None` for
    /// other stores.
    pub fn local_dir(&self, path: &str) -> Option<PathBuf> {
        let root = self.local.as_ref()?;
        let relative = StorePath::parse(path).ok()?;
        Some(
            relative
                .parts()
                .fold(root.as_ref().clone(), |dir, part| dir.join(part.as_ref())),
        )
    }

    /// Removes the directory `path` of a local root if it is empty (other
    /// stores have no directories: nothing to do). A directory that is not
    /// empty, or not there, is left as it is.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidPath`] for a bad or empty path.
    pub async fn remove_empty_dir(&self, path: &str) -> Result<(), StorageError> {
        self.object_path(path)?;
        if let Some(dir) = self.local_dir(path) {
            // Fails harmlessly when the directory is not empty or gone.
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }

    /// Deletes every object under `prefix/` (whole segments only: deleting
    /// `job/chk-1` leaves `job/chk-10` alone) and returns how many it
    /// deleted; 0 if there were none. Objects that vanish meanwhile (a
    /// concurrent delete) are not counted and are not an error.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidPath`] for a bad prefix, or the empty prefix
    /// (which would wipe the whole root); [`StorageError::Backend`] if
    /// listing or deleting fails (some objects may be gone already).
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, StorageError> {
        if prefix.trim_matches('/').is_empty() {
            return Err(StorageError::InvalidPath {
                path: prefix.to_string(),
                message: format!(
                    "refusing to delete everything under the storage root {}",
                    self.url
                ),
            });
        }
        let locations: Vec<StorePath> = self
            .list_metas(prefix)
            .await?
            .into_iter()
            .map(|meta| meta.location)
            .collect();
        let mut deletions = self
            .store
            .delete_stream(futures::stream::iter(locations.into_iter().map(Ok)).boxed());
        let mut deleted = 0;
        while let Some(result) = deletions.next().await {
            match result {
                Ok(_) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error(prefix, e)),
            }
        }
        // A local directory may hold what no listing shows: writes staged
        // as `NAME#<digits>` by a process that died (or ran out of space)
        // mid-write, and empty directories (an upload that failed before
        // its first byte). Both belong to the prefix: remove them too.
        if let Some(dir) = self.local_dir(prefix) {
            remove_local_leftovers(&dir);
        }
        Ok(deleted)
    }

    /// Lists the objects under `prefix`, keeping only whole-segment
    /// matches: object_store promises that, but a lax S3-compatible server
    /// matching by string prefix must not make `chk-1` cover `chk-10`.
    async fn list_metas(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let full = self.prefix_path(prefix)?;
        let metas: Vec<ObjectMeta> = self
            .store
            .list(non_empty(&full))
            .try_collect()
            .await
            .map_err(|e| self.error(prefix, e))?;
        Ok(metas
            .into_iter()
            .filter(|meta| meta.location.prefix_matches(&full) && meta.location != full)
            .collect())
    }

    /// The store path of the object at `path`, which must name an object
    /// (not be empty).
    fn object_path(&self, path: &str) -> Result<StorePath, StorageError> {
        let full = self.prefix_path(path)?;
        if full == self.root {
            return Err(StorageError::InvalidPath {
                path: path.to_string(),
                message: "an object path cannot be empty".to_string(),
            });
        }
        Ok(full)
    }

    /// The store path of `path` below the root; empty `path` is the root.
    fn prefix_path(&self, path: &str) -> Result<StorePath, StorageError> {
        let invalid = |message: String| StorageError::InvalidPath {
            path: path.to_string(),
            message,
        };
        let relative = StorePath::parse(path).map_err(|e| invalid(e.to_string()))?;
        // A local directory stages writes as `NAME#<digits>` and never
        // lists such files; refusing the form everywhere keeps every
        // backend listing the same objects.
        if let Some(part) = relative.parts().find(|part| is_staging_name(part.as_ref())) {
            return Err(invalid(format!(
                "segment `{}` ends in `#` and digits, a form reserved for in-progress writes",
                part.as_ref()
            )));
        }
        Ok(self.root.parts().chain(relative.parts()).collect())
    }

    /// `location` relative to the root, `/`-separated.
    fn relative(&self, location: &StorePath) -> String {
        let parts = location.prefix_match(&self.root).unwrap_or_else(|| {
            panic!(
                "invariant: a listing below root `{}` returned `{location}` outside it",
                self.root
            )
        });
        parts
            .map(|part| part.as_ref().to_string())
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Maps a backend error on `path` to a [`StorageError`] naming the
    /// full location.
    fn error(&self, path: &str, source: object_store::Error) -> StorageError {
        let location = self.location(path);
        match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound { location },
            object_store::Error::AlreadyExists { .. } => StorageError::AlreadyExists { location },
            source => StorageError::Backend { location, source },
        }
    }
}

/// Removes staged writes (`NAME#<digits>` files) and then empty
/// directories under and including `dir`, depth first; leaves anything
/// else (and never follows a symbolic link).
fn remove_local_leftovers(dir: &FsPath) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(t) = entry.file_type() else { continue };
        let name = entry.file_name();
        if t.is_dir() {
            remove_local_leftovers(&entry.path());
        } else if t.is_file() && name.to_str().is_some_and(is_staging_name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    // Fails harmlessly when something is left in it.
    let _ = std::fs::remove_dir(dir);
}

/// What a file type is, for messages: `a FIFO`, `a directory`, ….
pub fn describe_file_type(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Whether `segment` has the form `NAME#<digits>` of a local staged write
/// (an upload that never finished if it is still there).
pub fn is_staging_name(segment: &str) -> bool {
    segment
        .rsplit_once('#')
        .is_some_and(|(_, suffix)| !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
}

/// `None` for the empty path, so a store lists from its very top.
fn non_empty(path: &StorePath) -> Option<&StorePath> {
    (path.parts_count() > 0).then_some(path)
}

/// `scheme://host/prefix`, without a trailing slash.
fn display_url(scheme: &str, host: &str, prefix: &str) -> Arc<str> {
    if prefix.is_empty() {
        format!("{scheme}://{host}").into()
    } else {
        format!("{scheme}://{host}/{prefix}").into()
    }
}

/// Decodes `%XX` escapes of a URL path; `None` if one is malformed or the
/// result is not UTF-8.
fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Every file under `dir` (`base` its path from the root), recursively,
/// without following symbolic links; a directory that is not there holds
/// nothing.
fn walk(dir: &std::path::Path, base: &str) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut todo = vec![(dir.to_path_buf(), base.to_owned())];
    while let Some((dir, at)) = todo.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let path = if at.is_empty() {
                name
            } else {
                format!("{at}/{name}")
            };
            if entry.file_type()?.is_dir() {
                todo.push((entry.path(), path));
            } else {
                out.push(path);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! One conformance suite ([`checks`]) run against every backend: a
    //! local directory, memory, and S3 when `WEIR_TEST_S3_URL` names a
    //! bucket (`.ci/run` starts a local S3 server and sets it).

    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A storage root for one test, unique so tests can run in parallel,
    /// with whatever must outlive it (a temporary directory).
    struct Fixture {
        storage: CheckpointStorage,
        _dir: Option<tempfile::TempDir>,
    }

    /// A name no other test in this process (or an earlier run against
    /// the same S3 bucket) uses.
    fn unique(test: &str) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("invariant: the clock is after 1970")
            .as_nanos();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        format!("{test}-{}-{nanos}-{n}", std::process::id())
    }

    fn local(test: &str) -> Option<Fixture> {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let storage = Storages::from_env(dir.path())
            .open(test)
            .expect("open a local root");
        Some(Fixture {
            storage,
            _dir: Some(dir),
        })
    }

    fn memory(test: &str) -> Option<Fixture> {
        let url = format!("memory://{}", unique(test));
        let storage = Storages::from_env(FsPath::new("."))
            .open(&url)
            .expect("open memory");
        Some(Fixture {
            storage,
            _dir: None,
        })
    }

    fn s3(test: &str) -> Option<Fixture> {
        let Ok(base) = std::env::var("WEIR_TEST_S3_URL") else {
            // Written to the real stderr, past the test harness's capture,
            // so a run that skipped S3 says so; once per process.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    b"skipping S3 storage tests: WEIR_TEST_S3_URL is not set (.ci/run starts a local S3 server)\n",
                );
            });
            return None;
        };
        assert_endpoint_reachable();
        let url = format!("{}/{}", base.trim_end_matches('/'), unique(test));
        let storage = Storages::from_env(FsPath::new("."))
            .open(&url)
            .unwrap_or_else(|e| panic!("WEIR_TEST_S3_URL is set but cannot be opened: {e}"));
        Some(Fixture {
            storage,
            _dir: None,
        })
    }

    /// Fails at once, naming the endpoint, when a configured S3 endpoint
    /// does not accept connections: one clear message instead of every
    /// check failing after the client's retries.
    fn assert_endpoint_reachable() {
        let Some(endpoint) = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
            .iter()
            .find_map(|name| std::env::var(name).ok())
        else {
            return;
        };
        let authority = endpoint
            .split_once("://")
            .map_or(endpoint.as_str(), |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let default_port = if endpoint.starts_with("https") {
            443
        } else {
            80
        };
        let address = if authority.contains(':') {
            authority.clone()
        } else {
            format!("{authority}:{default_port}")
        };
        let reachable = std::net::ToSocketAddrs::to_socket_addrs(&address)
            .ok()
            .and_then(|mut addrs| addrs.next())
            .is_some_and(|addr| {
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
                    .is_ok()
            });
        assert!(
            reachable,
            "WEIR_TEST_S3_URL is set but the S3 endpoint {endpoint} does not accept connections"
        );
    }

    /// Generates one test per check for a backend, each on its own root.
    macro_rules! conformance {
        ($backend:ident) => {
            mod $backend {
                use super::*;

                async fn run<F: std::future::Future<Output = ()>>(
                    test: &str,
                    check: impl FnOnce(CheckpointStorage) -> F,
                ) {
                    if let Some(fixture) = super::$backend(test) {
                        check(fixture.storage.clone()).await;
                    }
                }

                #[tokio::test]
                async fn round_trip() {
                    run("round-trip", checks::round_trip).await;
                }

                #[tokio::test]
                async fn missing_object() {
                    run("missing", checks::missing_object).await;
                }

                #[tokio::test]
                async fn put_if_absent_once() {
                    run("if-absent", checks::put_if_absent_once).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn put_if_absent_concurrent() {
                    run("if-absent-race", checks::put_if_absent_concurrent).await;
                }

                #[tokio::test]
                async fn listing() {
                    run("listing", checks::listing).await;
                }

                #[tokio::test]
                async fn delete_whole_segments() {
                    run("delete", checks::delete_whole_segments).await;
                }

                #[tokio::test]
                async fn bad_paths() {
                    run("bad-paths", checks::bad_paths).await;
                }

                #[tokio::test]
                async fn job_lease() {
                    run("lease", checks::job_lease).await;
                }
            }
        };
    }

    conformance!(local);
    conformance!(memory);
    conformance!(s3);

    /// The checks every backend must pass.
    mod checks {
        use super::*;

        pub async fn round_trip(s: CheckpointStorage) {
            s.put("job/chk-1/a", Bytes::from_static(b"first"))
                .await
                .unwrap();
            assert_eq!(
                s.get("job/chk-1/a").await.unwrap(),
                Bytes::from_static(b"first")
            );
            assert!(s.exists("job/chk-1/a").await.unwrap());
            // put overwrites.
            s.put("job/chk-1/a", Bytes::from_static(b"second"))
                .await
                .unwrap();
            assert_eq!(
                s.get("job/chk-1/a").await.unwrap(),
                Bytes::from_static(b"second")
            );
            // Empty objects are objects.
            s.put("job/empty", Bytes::new()).await.unwrap();
            assert_eq!(s.get("job/empty").await.unwrap(), Bytes::new());
            assert!(s.exists("job/empty").await.unwrap());
            // A larger payload survives byte for byte.
            let big: Bytes = (0..300_000u32)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<_>>()
                .into();
            s.put("job/big", big.clone()).await.unwrap();
            assert_eq!(s.get("job/big").await.unwrap(), big);
        }

        pub async fn missing_object(s: CheckpointStorage) {
            let err = s.get("job/chk-9/_metadata").await.unwrap_err();
            let expected = format!("{}/job/chk-9/_metadata", s.url());
            match &err {
                StorageError::NotFound { location } => assert_eq!(location, &expected),
                other => panic!("expected NotFound, got {other:?}"),
            }
            assert!(err.to_string().contains(&expected), "message: {err}");
            assert_eq!(err.kind(), ErrorKind::External);
            assert!(!s.exists("job/chk-9/_metadata").await.unwrap());
            // A "directory" with objects under it is not an object.
            s.put("job/chk-2/a", Bytes::from_static(b"x"))
                .await
                .unwrap();
            assert!(!s.exists("job/chk-2").await.unwrap());
            assert!(matches!(
                s.get("job/chk-2").await,
                Err(StorageError::NotFound { .. })
                    | Err(StorageError::Backend { .. })
                    | Err(StorageError::NotAFile { .. })
            ));
        }

        pub async fn put_if_absent_once(s: CheckpointStorage) {
            s.put_if_absent("job/chk-1/_metadata", Bytes::from_static(b"winner"))
                .await
                .unwrap();
            let err = s
                .put_if_absent("job/chk-1/_metadata", Bytes::from_static(b"loser"))
                .await
                .unwrap_err();
            match &err {
                StorageError::AlreadyExists { location } => {
                    assert_eq!(location, &format!("{}/job/chk-1/_metadata", s.url()));
                }
                other => panic!("expected AlreadyExists, got {other:?}"),
            }
            assert_eq!(
                s.get("job/chk-1/_metadata").await.unwrap(),
                Bytes::from_static(b"winner")
            );
            // Once deleted, the path is free again.
            assert_eq!(s.delete_prefix("job/chk-1").await.unwrap(), 1);
            s.put_if_absent("job/chk-1/_metadata", Bytes::from_static(b"again"))
                .await
                .unwrap();
            assert_eq!(
                s.get("job/chk-1/_metadata").await.unwrap(),
                Bytes::from_static(b"again")
            );
        }

        pub async fn put_if_absent_concurrent(s: CheckpointStorage) {
            const WRITERS: usize = 8;
            let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
            let tasks: Vec<_> = (0..WRITERS)
                .map(|i| {
                    let (s, barrier) = (s.clone(), Arc::clone(&barrier));
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let bytes = Bytes::from(format!("writer {i}"));
                        (i, s.put_if_absent("job/chk-5/_metadata", bytes).await)
                    })
                })
                .collect();
            let mut winners = Vec::new();
            for task in tasks {
                let (i, result) = task.await.expect("writer task panicked");
                match result {
                    Ok(()) => winners.push(i),
                    Err(StorageError::AlreadyExists { .. }) => {}
                    Err(other) => panic!("writer {i}: unexpected error {other}"),
                }
            }
            assert_eq!(
                winners.len(),
                1,
                "exactly one writer must win, won: {winners:?}"
            );
            assert_eq!(
                s.get("job/chk-5/_metadata").await.unwrap(),
                Bytes::from(format!("writer {}", winners[0]))
            );
        }

        pub async fn listing(s: CheckpointStorage) {
            assert!(s.list("job").await.unwrap().is_empty());
            assert!(s.list_dirs("job").await.unwrap().is_empty());
            for path in [
                "job/chk-2/op/0",
                "job/chk-1/_metadata",
                "job/chk-10/_metadata",
                "job/chk-1/op/1",
                "job/chk-1/op/0",
                "jobber/chk-1/_metadata",
                "job/loose",
            ] {
                s.put(path, Bytes::from(path.to_string())).await.unwrap();
            }
            let paths = |objects: Vec<ObjectInfo>| -> Vec<String> {
                objects.into_iter().map(|o| o.path).collect()
            };
            assert_eq!(
                paths(s.list("job/chk-1").await.unwrap()),
                ["job/chk-1/_metadata", "job/chk-1/op/0", "job/chk-1/op/1"],
                "a prefix covers whole segments only (not chk-10)"
            );
            assert_eq!(
                paths(s.list("job").await.unwrap()),
                [
                    "job/chk-1/_metadata",
                    "job/chk-1/op/0",
                    "job/chk-1/op/1",
                    "job/chk-10/_metadata",
                    "job/chk-2/op/0",
                    "job/loose",
                ],
                "everything under job/, sorted, but not jobber/"
            );
            // A trailing slash means the same prefix.
            assert_eq!(paths(s.list("job/chk-1/").await.unwrap()).len(), 3);
            assert_eq!(s.list("").await.unwrap().len(), 7);
            let info = s.list("job/chk-1/op/0").await.unwrap();
            assert!(
                info.is_empty(),
                "an object is not a prefix of itself: {info:?}"
            );
            let listed = s.list("job/chk-2").await.unwrap();
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].size, "job/chk-2/op/0".len() as u64);
            assert!(listed[0].last_modified > SystemTime::UNIX_EPOCH);

            assert_eq!(
                s.list_dirs("job").await.unwrap(),
                ["chk-1", "chk-10", "chk-2"]
            );
            assert_eq!(s.list_dirs("job/chk-1").await.unwrap(), ["op"]);
            assert_eq!(s.list_dirs("").await.unwrap(), ["job", "jobber"]);
            assert!(s.list_dirs("job/chk-1/op").await.unwrap().is_empty());
            assert!(s.list_dirs("nothing/here").await.unwrap().is_empty());
        }

        pub async fn delete_whole_segments(s: CheckpointStorage) {
            for path in [
                "job/chk-1/_metadata",
                "job/chk-1/op/0",
                "job/chk-10/_metadata",
                "job/chk-1x",
            ] {
                s.put(path, Bytes::from_static(b"x")).await.unwrap();
            }
            assert_eq!(s.delete_prefix("job/chk-1").await.unwrap(), 2);
            assert_eq!(
                s.list("job")
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|o| o.path)
                    .collect::<Vec<_>>(),
                ["job/chk-10/_metadata", "job/chk-1x"]
            );
            assert_eq!(s.list_dirs("job").await.unwrap(), ["chk-10"]);
            assert_eq!(s.delete_prefix("job/chk-1").await.unwrap(), 0);
            assert_eq!(s.delete_prefix("job/never").await.unwrap(), 0);
            let err = s.delete_prefix("").await.unwrap_err();
            assert!(matches!(err, StorageError::InvalidPath { .. }), "{err:?}");
            assert_eq!(s.delete_prefix("job").await.unwrap(), 2);
            assert!(s.list("").await.unwrap().is_empty());
        }

        /// One holder at a time: a second is refused naming the first;
        /// an expired lease is taken over, and its old holder learns it
        /// lost it when it renews; a release leaves nothing.
        pub async fn job_lease(s: CheckpointStorage) {
            use crate::checkpoint::lease::{self, Lease};
            use std::time::Duration;
            let a = lease::this_process("run-a");
            let b = lease::this_process("run-b");
            let ttl = Duration::from_secs(60);
            assert!(lease::current(&s, "job").await.unwrap().is_none());
            let mut held = Lease::acquire(&s, "job", a.clone(), ttl).await.unwrap();
            assert_eq!(held.generation(), 1);
            let e = Lease::acquire(&s, "job", b.clone(), ttl).await.unwrap_err();
            let shown = e.to_string();
            assert!(shown.contains("job `job` is running elsewhere"), "{shown}");
            assert!(
                shown.contains(&format!("pid {}, run run-a", std::process::id())),
                "{shown}"
            );
            assert_eq!(e.kind(), ErrorKind::User);
            assert!(lease::ensure_free(&s, "job").await.is_err());
            held.renew().await.unwrap();
            held.renew().await.unwrap();
            assert_eq!(held.generation(), 3);
            // Old generations go; the newest two stay.
            assert_eq!(s.list("job/_lease").await.unwrap().len(), 2);
            assert!(Lease::acquire(&s, "job", b.clone(), ttl).await.is_err());

            // An expired lease is taken over.
            let mut short = Lease::acquire(&s, "other", a.clone(), Duration::ZERO)
                .await
                .unwrap();
            lease::ensure_free(&s, "other").await.unwrap();
            let taken = Lease::acquire(&s, "other", b.clone(), ttl).await.unwrap();
            let e = short.renew().await.unwrap_err();
            assert!(e.to_string().contains("lost its lease"), "{e}");
            assert!(e.to_string().contains("run run-b"), "{e}");
            // Releasing a lease no longer held leaves the holder's alone.
            short.release().await.unwrap();
            assert!(lease::ensure_free(&s, "other").await.is_err());
            taken.release().await.unwrap();
            assert!(lease::current(&s, "other").await.unwrap().is_none());
            held.release().await.unwrap();
            assert!(s.list("job").await.unwrap().is_empty());
        }

        pub async fn bad_paths(s: CheckpointStorage) {
            for path in [
                "", "/", "job//x", "job/../x", "job/./x", "job/op#1", "a#12/b",
            ] {
                let err = s.put(path, Bytes::new()).await.unwrap_err();
                assert!(
                    matches!(err, StorageError::InvalidPath { .. }),
                    "{path:?}: {err:?}"
                );
                assert_eq!(err.kind(), ErrorKind::Internal);
            }
            // `#` is fine otherwise.
            s.put("job/op#a", Bytes::from_static(b"x")).await.unwrap();
            s.put("job/op#", Bytes::from_static(b"x")).await.unwrap();
            assert_eq!(s.list("job").await.unwrap().len(), 2);
            assert!(matches!(
                s.list("a/../b").await,
                Err(StorageError::InvalidPath { .. })
            ));
        }
    }

    #[test]
    fn relative_local_paths_resolve_against_base_dir() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storages::from_env(dir.path())
            .open("data/checkpoints")
            .unwrap();
        let root = dir.path().join("data/checkpoints");
        assert!(root.is_dir(), "the root directory is created");
        assert_eq!(s.url(), root.to_str().unwrap());
        assert_eq!(
            s.location("job/chk-1/_metadata"),
            format!("{}/job/chk-1/_metadata", root.display())
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            s.put("job/chk-1/_metadata", Bytes::from_static(b"m"))
                .await
                .unwrap();
        });
        assert_eq!(
            std::fs::read(root.join("job/chk-1/_metadata")).unwrap(),
            b"m"
        );

        // An absolute path ignores base_dir; file:// names the same place.
        let other = tempfile::tempdir().unwrap();
        let absolute = Storages::from_env(other.path())
            .open(root.to_str().unwrap())
            .unwrap();
        assert_eq!(absolute.url(), s.url());
        let file_url = format!("file://{}", root.display());
        let from_url = Storages::from_env(other.path()).open(&file_url).unwrap();
        assert_eq!(from_url.url(), s.url());
        runtime.block_on(async {
            assert_eq!(from_url.get("job/chk-1/_metadata").await.unwrap(), "m");
        });
    }

    #[test]
    fn file_urls_are_percent_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/with%20space", dir.path().display());
        let s = Storages::from_env(FsPath::new("/nonexistent"))
            .open(&url)
            .unwrap();
        assert!(dir.path().join("with space").is_dir());
        assert_eq!(s.url(), dir.path().join("with space").to_str().unwrap());
    }

    #[test]
    fn a_local_root_that_cannot_be_created_names_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let err = Storages::from_env(&file).open("under/it").unwrap_err();
        let StorageError::Backend { location, .. } = &err else {
            panic!("expected Backend, got {err:?}");
        };
        assert_eq!(location, file.join("under/it").to_str().unwrap());
        assert_eq!(err.kind(), ErrorKind::External);
    }

    #[tokio::test]
    async fn local_delete_leaves_no_empty_directories() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storages::from_env(dir.path()).open("root").unwrap();
        s.put("job/chk-1/op/0", Bytes::from_static(b"x"))
            .await
            .unwrap();
        s.put("job/chk-2/_metadata", Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(s.delete_prefix("job/chk-1").await.unwrap(), 1);
        assert!(!dir.path().join("root/job/chk-1").exists());
        assert!(dir.path().join("root/job/chk-2").is_dir());
        assert_eq!(s.list_dirs("job").await.unwrap(), ["chk-2"]);
        assert_eq!(s.delete_prefix("job").await.unwrap(), 1);
        assert!(dir.path().join("root").is_dir(), "the root itself stays");
        assert!(!dir.path().join("root/job").exists());
    }

    /// What a failed upload (no space left) or a kill during a write
    /// leaves in a local `chk-N` — an empty directory, a staged
    /// `NAME#<digits>` file — goes with the prefix; other files stay.
    #[tokio::test]
    async fn local_delete_removes_empty_directories_and_staged_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storages::from_env(dir.path()).open("root").unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("job/chk-3")).unwrap();
        std::fs::create_dir_all(root.join("job/chk-4/sub")).unwrap();
        std::fs::write(root.join("job/chk-4/count-0.state#12345"), b"half").unwrap();
        s.put("job/chk-5/_metadata", Bytes::from_static(b"m"))
            .await
            .unwrap();
        assert_eq!(
            s.list_dirs("job").await.unwrap(),
            ["chk-3", "chk-4", "chk-5"]
        );
        assert_eq!(s.delete_prefix("job/chk-3").await.unwrap(), 0);
        assert_eq!(s.delete_prefix("job/chk-4").await.unwrap(), 0);
        assert!(!root.join("job/chk-3").exists());
        assert!(!root.join("job/chk-4").exists());
        assert_eq!(s.list_dirs("job").await.unwrap(), ["chk-5"]);
    }

    /// A FIFO where a file belongs is refused without opening it (which
    /// would block until a writer came).
    #[tokio::test]
    async fn a_fifo_is_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storages::from_env(dir.path()).open("root").unwrap();
        let fifo = dir.path().join("root/job/x.state");
        std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = s.get("job/x.state").await.unwrap_err();
        assert!(
            matches!(err, StorageError::NotAFile { what: "a FIFO", .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .ends_with("job/x.state is a FIFO, not a regular file"),
            "{err}"
        );
        assert_eq!(err.kind(), ErrorKind::User);
    }

    #[tokio::test]
    async fn a_local_listing_of_everything_shows_the_staging_files_a_crash_left() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storages::from_env(dir.path())
            .open(dir.path().to_str().unwrap())
            .unwrap();
        s.put("job/chk-1/a.state", Bytes::from_static(b"a"))
            .await
            .unwrap();
        s.put("job/_lease/1", Bytes::from_static(b"l"))
            .await
            .unwrap();
        // What object_store's local upload leaves when killed mid-write.
        std::fs::write(dir.path().join("job/chk-1/b.state#3"), b"half").unwrap();
        std::fs::create_dir_all(dir.path().join("job/chk-2")).unwrap();
        std::fs::write(dir.path().join("job/chk-2/c.state#12"), b"").unwrap();
        assert_eq!(
            s.list("job").await.unwrap().len(),
            2,
            "the store's own listing hides staging files"
        );
        assert_eq!(
            s.list_everything("job").await.unwrap(),
            [
                "job/_lease/1",
                "job/chk-1/a.state",
                "job/chk-1/b.state#3",
                "job/chk-2/c.state#12"
            ]
        );
        assert!(s.delete_staging("job/chk-2/c.state#12").await.unwrap());
        assert!(!s.delete_staging("job/chk-2/c.state#12").await.unwrap());
        for bad in [
            "job/chk-1/a.state",
            "c.state#1",
            "job/../x#1",
            "job/chk-1/x#",
        ] {
            assert!(s.delete_staging(bad).await.is_err(), "{bad}");
        }
        assert!(s.list_everything("nothing").await.unwrap().is_empty());
        // Other stores have no staging files: their listing is everything.
        let m = Storages::from_env(dir.path())
            .open(&format!("memory://{}", unique("everything")))
            .unwrap();
        m.put("job/chk-1/a.state", Bytes::from_static(b"a"))
            .await
            .unwrap();
        assert_eq!(
            m.list_everything("job").await.unwrap(),
            ["job/chk-1/a.state"]
        );
        assert!(!m.delete_staging("job/chk-1/a.state#1").await.unwrap());
    }

    #[tokio::test]
    async fn memory_stores_with_one_url_share_objects() {
        let name = unique("shared");
        let storages = Storages::from_env(FsPath::new("."));
        let a = storages.open(&format!("memory://{name}")).unwrap();
        let b = storages
            .relative_to(FsPath::new("elsewhere"))
            .open(&format!("memory://{name}/"))
            .unwrap();
        let other = storages.open(&format!("memory://{name}-2")).unwrap();
        let scoped = storages.open(&format!("memory://{name}/job")).unwrap();
        // Another context (another host in the process) sees none of it.
        let foreign = Storages::from_env(FsPath::new("."))
            .open(&format!("memory://{name}"))
            .unwrap();
        a.put("job/chk-1/_metadata", Bytes::from_static(b"m"))
            .await
            .unwrap();
        assert_eq!(b.get("job/chk-1/_metadata").await.unwrap(), "m");
        assert!(!other.exists("job/chk-1/_metadata").await.unwrap());
        assert!(!foreign.exists("job/chk-1/_metadata").await.unwrap());
        assert_eq!(scoped.get("chk-1/_metadata").await.unwrap(), "m");
        assert_eq!(scoped.url(), format!("memory://{name}/job"));
        assert_eq!(
            scoped.list("").await.unwrap()[0].path,
            "chk-1/_metadata",
            "listed paths are relative to the root"
        );
    }

    #[test]
    fn display_urls_and_locations() {
        let base = FsPath::new(".");
        let s3 = Storages::from_env(base)
            .open("s3://bucket/some/prefix/")
            .unwrap();
        assert_eq!(s3.url(), "s3://bucket/some/prefix");
        assert_eq!(
            s3.location("job/chk-1"),
            "s3://bucket/some/prefix/job/chk-1"
        );
        let bare = Storages::from_env(base).open("s3://bucket").unwrap();
        assert_eq!(bare.location("job/x"), "s3://bucket/job/x");
        let mem = Storages::from_env(base).open("memory://").unwrap();
        assert_eq!(mem.url(), "memory://");
        assert_eq!(mem.location("job/x"), "memory:///job/x");
    }

    #[test]
    fn invalid_urls_name_the_url_and_what_is_supported() {
        let base = FsPath::new(".");
        for url in [
            "gs://bucket/p",
            "http://example.com/x",
            "s4://bucket/p",
            "",
            "  ",
            "s3://",
            "s3:///prefix",
            "s3://bucket/a//b",
            "file://relative/path",
            "file:///bad%zzescape",
        ] {
            let err = Storages::from_env(base).open(url).unwrap_err();
            let StorageError::InvalidUrl { url: at_fault, .. } = &err else {
                panic!("{url:?}: expected InvalidUrl, got {err:?}");
            };
            assert_eq!(at_fault, url);
            assert_eq!(err.kind(), ErrorKind::User);
            assert!(err.to_string().contains(&format!("`{url}`")), "{err}");
        }
        let err = Storages::from_env(base).open("s4://bucket/p").unwrap_err();
        let message = err.to_string();
        for supported in ["file://", "memory://", "s3://"] {
            assert!(message.contains(supported), "{message}");
        }
    }
}
