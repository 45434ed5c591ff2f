//! The job lease: which `weir run` owns a job's checkpoint directory, so a
//! second instance of the job (or `weir checkpoints --delete`) cannot
//! restore, subsume or delete a live job's checkpoints.
//!
//! A lease is a generation of small JSON files `<job>/_lease/<n>`, each
//! created with a conditional put that fails if the file exists
//! (`PutMode::Create`: a local directory, memory and S3 all enforce it; a
//! local directory does not support `PutMode::Update`, so no file is ever
//! rewritten). The highest generation is the lease: it names its holder
//! (host, pid, run id) and when it expires. The holder renews it by
//! creating generation `n + 1` before it expires; whoever takes over an
//! expired lease does the same, so of two contenders exactly one creates
//! `n + 1`, and a holder that finds `n + 1` taken knows it lost the lease.
//! `docs/checkpoint-format.md` ("The job lease") specifies the files.
//!
//! No threads or timers here except [`LeaseKeeper`], which renews a lease
//! from a thread of its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::storage::{CheckpointStorage, StorageError};
use crate::error::Error;

/// How long a lease lasts unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often a running job renews its lease.
pub const LEASE_RENEW_EVERY: Duration = Duration::from_secs(10);

pub use weir_format::jobdir::{Holder, LEASE_DIR, LEASE_FORMAT, LEASE_VERSION, LeaseFile};

/// A holder for this process, running the job as `run_id`.
pub fn this_process(run_id: &str) -> Holder {
    Holder {
        host: host_name(),
        pid: std::process::id(),
        run_id: run_id.to_owned(),
    }
}

/// Whether `lease` still binds at `now_ms`: not expired, and not held by a
/// process of this host that is gone (a `kill -9` leaves its lease
/// behind; the host can tell its holder is dead).
pub fn is_live(lease: &LeaseFile, now_ms: u64) -> bool {
    let holder_gone = lease.holder.host == host_name()
        && !std::path::Path::new(&format!("/proc/{}", lease.holder.pid)).exists();
    lease.expires_ms > now_ms && !holder_gone
}

/// `host H, pid P, run R, until T`: who holds `lease`, for messages.
pub fn describe(lease: &LeaseFile) -> String {
    let until =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(lease.expires_ms));
    format!(
        "host {}, pid {}, run {}, lease expires {until}",
        lease.holder.host, lease.holder.pid, lease.holder.run_id
    )
}

/// This host's name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`, else
/// `localhost`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn dir(job: &str) -> String {
    format!("{job}/{LEASE_DIR}")
}

/// The generations of `job`'s lease files in `storage`, ascending.
async fn generations(storage: &CheckpointStorage, job: &str) -> Result<Vec<u64>, Error> {
    let prefix = dir(job);
    let mut out: Vec<u64> = storage
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|o| o.path.strip_prefix(&format!("{prefix}/"))?.parse().ok())
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// `job`'s current lease (its highest generation), live or not; `None` if
/// it has none.
///
/// # Errors
/// [`Error::Storage`] if listing or reading fails, [`Error::Format`] if
/// the lease does not decode.
pub async fn current(storage: &CheckpointStorage, job: &str) -> Result<Option<LeaseFile>, Error> {
    // A holder may delete older generations meanwhile: read again.
    for _ in 0..3 {
        let Some(&generation) = generations(storage, job).await?.last() else {
            return Ok(None);
        };
        let path = format!("{}/{generation}", dir(job));
        match storage.get(&path).await {
            Ok(bytes) => return Ok(Some(LeaseFile::decode(&storage.location(&path), &bytes)?)),
            Err(StorageError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// Refuses if `job` has a live lease held by another run.
///
/// # Errors
/// [`StorageError::LeaseHeld`] naming the holder; storage and format
/// errors reading the lease.
pub async fn ensure_free(storage: &CheckpointStorage, job: &str) -> Result<(), Error> {
    match current(storage, job).await? {
        Some(l) if is_live(&l, now_ms()) => Err(held(storage, job, &l)),
        _ => Ok(()),
    }
}

fn held(storage: &CheckpointStorage, job: &str, l: &LeaseFile) -> Error {
    Error::Storage(StorageError::LeaseHeld {
        job: job.to_owned(),
        location: storage.location(job),
        holder: describe(l),
    })
}

/// A lease this process holds on a job's checkpoint directory.
#[derive(Debug)]
pub struct Lease {
    storage: CheckpointStorage,
    job: String,
    holder: Holder,
    generation: u64,
    ttl: Duration,
}

impl Lease {
    /// Takes `job`'s lease in `storage` for `holder`, for `ttl`: refused
    /// while another run holds it, taken over once it expired (or its
    /// holder on this host is gone).
    ///
    /// # Errors
    /// [`StorageError::LeaseHeld`] naming the holder; storage and format
    /// errors.
    pub async fn acquire(
        storage: &CheckpointStorage,
        job: &str,
        holder: Holder,
        ttl: Duration,
    ) -> Result<Self, Error> {
        for _ in 0..3 {
            let current = current(storage, job).await?;
            if let Some(l) = &current
                && is_live(l, now_ms())
                && l.holder != holder
            {
                return Err(held(storage, job, l));
            }
            let mut lease = Lease {
                storage: storage.clone(),
                job: job.to_owned(),
                holder: holder.clone(),
                generation: current.map_or(0, |l| l.generation),
                ttl,
            };
            match lease.next_generation().await {
                Ok(()) => return Ok(lease),
                // Another contender created it first: look again.
                Err(Error::Storage(StorageError::AlreadyExists { .. })) => continue,
                Err(e) => return Err(e),
            }
        }
        match current(storage, job).await? {
            Some(l) => Err(held(storage, job, &l)),
            None => Err(Error::Storage(StorageError::LeaseHeld {
                job: job.to_owned(),
                location: storage.location(job),
                holder: "another run (it changed hands while this one tried to take it)".into(),
            })),
        }
    }

    /// Creates the next generation, naming this holder; deletes the ones
    /// before the previous (best effort).
    async fn next_generation(&mut self) -> Result<(), Error> {
        let generation = self.generation + 1;
        let file = LeaseFile {
            version: LEASE_VERSION,
            job: self.job.clone(),
            generation,
            holder: self.holder.clone(),
            expires_ms: now_ms() + self.ttl.as_millis() as u64,
        };
        let path = format!("{}/{generation}", dir(&self.job));
        self.storage
            .put_if_absent(&path, file.encode().into())
            .await?;
        self.generation = generation;
        for old in generations(&self.storage, &self.job)
            .await
            .unwrap_or_default()
        {
            if old + 1 < generation {
                let _ = self
                    .storage
                    .delete(&format!("{}/{old}", dir(&self.job)))
                    .await;
            }
        }
        Ok(())
    }

    /// Extends the lease by its time to live.
    ///
    /// # Errors
    /// [`StorageError::LeaseLost`] naming the new holder if another run
    /// took the lease over (this one had expired); storage errors.
    pub async fn renew(&mut self) -> Result<(), Error> {
        match self.next_generation().await {
            Err(Error::Storage(StorageError::AlreadyExists { .. })) => {
                let by = current(&self.storage, &self.job)
                    .await
                    .ok()
                    .flatten()
                    .map_or("another run".to_owned(), |l| describe(&l));
                Err(Error::Storage(StorageError::LeaseLost {
                    job: self.job.clone(),
                    location: self.storage.location(&self.job),
                    holder: by,
                }))
            }
            other => other,
        }
    }

    /// Gives the lease up: deletes its files if this run still holds it.
    ///
    /// # Errors
    /// Storage and format errors.
    pub async fn release(self) -> Result<(), Error> {
        if let Some(l) = current(&self.storage, &self.job).await?
            && l.generation == self.generation
            && l.holder == self.holder
        {
            self.storage.delete_prefix(&dir(&self.job)).await?;
        }
        Ok(())
    }

    /// Its current generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Holds a lease for a running job: renews it every
/// [`LEASE_RENEW_EVERY`] from a thread of its own, calls `on_lost` if it
/// cannot (another run took it over, or storage failed until it
/// expired), and releases it when [`stop`](Self::stop)ped.
pub struct LeaseKeeper {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<Option<Lease>>,
}

impl LeaseKeeper {
    /// Takes `job`'s lease in `storage` for this process (run `run_id`)
    /// and starts renewing it.
    ///
    /// # Errors
    /// [`StorageError::LeaseHeld`] naming the holder if another run holds
    /// it; storage and format errors.
    pub fn start(
        storage: &CheckpointStorage,
        job: &str,
        run_id: &str,
        on_lost: impl FnOnce(Error) + Send + 'static,
    ) -> Result<Self, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("starting the lease runtime: {e}")))?;
        let mut lease = rt.block_on(Lease::acquire(
            storage,
            job,
            this_process(run_id),
            LEASE_TTL,
        ))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("job-lease".into())
            .spawn(move || {
                let mut last_renewed = std::time::Instant::now();
                loop {
                    match stopped.recv_timeout(LEASE_RENEW_EVERY) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return Some(lease),
                    }
                    match rt.block_on(lease.renew()) {
                        Ok(()) => last_renewed = std::time::Instant::now(),
                        Err(e @ Error::Storage(StorageError::LeaseLost { .. })) => {
                            on_lost(e);
                            return None;
                        }
                        Err(e) if last_renewed.elapsed() + LEASE_RENEW_EVERY >= LEASE_TTL => {
                            on_lost(e);
                            return None;
                        }
                        Err(e) => tracing::warn!("renewing the job lease failed (will retry): {e}"),
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("spawning the lease thread: {e}")))?;
        Ok(LeaseKeeper { stop, thread })
    }

    /// Stops renewing and releases the lease (if still held).
    pub fn stop(self) {
        let _ = self.stop.send(());
        if let Ok(Some(lease)) = self.thread.join() {
            let released = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(lease.release()).map_err(|e| e.to_string()));
            if let Err(e) = released {
                tracing::warn!("releasing the job lease failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_file_round_trips_and_refuses_what_it_does_not_know() {
        let l = LeaseFile {
            version: 1,
            job: "counts".into(),
            generation: 3,
            holder: Holder {
                host: "h".into(),
                pid: 42,
                run_id: "abc".into(),
            },
            expires_ms: 1_000,
        };
        assert_eq!(LeaseFile::decode("f", &l.encode()).unwrap(), l);
        assert!(!is_live(&l, 1_000), "expired");
        assert!(
            describe(&l).starts_with("host h, pid 42, run abc, lease expires 1970-"),
            "{}",
            describe(&l)
        );
        let mut json: serde_json::Value = serde_json::from_slice(&l.encode()).unwrap();
        json["holder"]["uid"] = 0.into();
        assert!(LeaseFile::decode("f", &serde_json::to_vec(&json).unwrap()).is_err());
        // A holder on this host whose process is gone holds nothing.
        let gone = LeaseFile {
            holder: Holder {
                host: host_name(),
                pid: u32::MAX - 1,
                run_id: "x".into(),
            },
            expires_ms: u64::MAX,
            ..l.clone()
        };
        assert!(!is_live(&gone, 0));
        let me = LeaseFile {
            holder: this_process("x"),
            ..gone
        };
        assert!(is_live(&me, 0));
    }
}
