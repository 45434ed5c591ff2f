//! `weir serve`: one long-running host where many tenants upload plugins
//! and submit, upgrade and manage jobs over REST (`docs/serve.md`).
//!
//! The host has no job of its own. It holds one plugin engine (compiled
//! plugins cached by content hash, shared by every job), one tokio runtime
//! for the API and all storage I/O, and a storage root under which every
//! tenant has its own namespace:
//!
//! ```text
//! tenants/<tenant>/plugins/<sha256>.wasm       uploaded plugins
//! tenants/<tenant>/jobs/<id>/job.json          the job registry (record.rs)
//! tenants/<tenant>/jobs/<id>/checkpoints/…     the job's checkpoints and lease
//! tenants/<tenant>/savepoints/…                the tenant's savepoints, by name
//! ```
//!
//! A tenant reaches only its namespace: the API finds its jobs, plugins
//! and savepoints through it, every name a client gives is confined to it
//! ([`jobfile`], [`SavepointRoots::names_under`]), and its jobs' `file`
//! sources and sinks live in `<data_dir>/tenants/<tenant>/files`. Each job
//! runs as [`runtime::run_with`] does for `weir run`, on a thread of its
//! own, holding its job lease, its plugins counting in the tenant's memory
//! pool.

pub mod config;
pub mod jobfile;
pub mod record;

mod api;
mod metrics;
mod ops;

pub use ops::{PluginView, QuotaView, SavepointEntry, SubmitBody, UpgradeBody, UpgradeView};

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::api::Jobs;
use crate::api::targets::SavepointRoots;
use crate::checkpoint::lease::{self, LEASE_RENEW_EVERY, LEASE_TTL, Lease};
use crate::checkpoint::storage::{CheckpointStorage, S3Config, StorageError, Storages};
use crate::error::{Error, Problem};
use crate::job::JobGraph;
use crate::metrics::JobMetrics;
use crate::plugin::{CpuGroup, CpuScheduler, MemoryPool, PluginEngine};
use crate::runtime::{self, JobControl, JobId, JobState, Restore, RunOptions, Workers};
use crate::savepoint::ClaimMode;

pub use api::ServeApi;
pub use config::{HostConfig, Quota, TenantConfig};
use record::JobRecord;

/// The WASI interfaces (package/interface, any version) a hosted plugin
/// may import. Filesystem and sockets are linked without capabilities: no
/// directory is preopened and no network is granted, so every call fails;
/// they are granted because language runtimes (CPython, StarlingMonkey)
/// import them whether or not the operator uses them.
pub const GRANTED_IMPORTS: &[&str] = &[
    "weir:operator/",
    "wasi:io/",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:sockets/",
];

/// A tenant: its namespace, quota, jobs and memory pool.
pub(crate) struct Tenant {
    name: String,
    quota: RwLock<Quota>,
    /// Its jobs as the REST API serves them.
    jobs: Jobs,
    memory: MemoryPool,
    /// `tenants/<name>` of the storage root.
    storage: CheckpointStorage,
    /// Where its jobs' `file` sources and sinks are.
    files: PathBuf,
    /// Its savepoint namespace: `tenants/<name>/savepoints`, as a URL or
    /// path.
    savepoints: String,
    /// Held while a submission checks the quota and registers the job.
    admission: tokio::sync::Mutex<()>,
    /// Its share of the CPU.
    cpu: CpuGroup,
    /// Bytes its checkpoints and savepoints held at the last count.
    storage_used: std::sync::atomic::AtomicU64,
}

impl Tenant {
    fn quota(&self) -> Quota {
        *self.quota.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// A job the host runs (or ran).
pub(crate) struct HostedJob {
    tenant: Arc<Tenant>,
    record: Mutex<JobRecord>,
    /// The current run's handle (an upgrade replaces it).
    control: Mutex<JobControl>,
    metrics: Mutex<Arc<JobMetrics>>,
    subtasks: u32,
    /// Its plugin instances.
    instances: u32,
    /// Set when the current run's thread has returned.
    ended: Arc<tokio::sync::Notify>,
    /// The current run's fence: set, the run ends touching nothing in
    /// storage (its lease was lost, or the host is shutting down).
    fence: Mutex<Arc<AtomicBool>>,
    /// Why the host failed the current run (a quota it broke), if it did.
    failed_by_host: Mutex<Option<String>>,
    running: Arc<AtomicBool>,
}

impl HostedJob {
    fn control(&self) -> JobControl {
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn metrics(&self) -> Arc<JobMetrics> {
        self.metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record(&self) -> JobRecord {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The host: what every API call and job thread shares.
pub(crate) struct Inner {
    config: RwLock<Arc<HostConfig>>,
    engine: Arc<PluginEngine>,
    io: tokio::runtime::Handle,
    /// The workers every job's subtasks run on.
    workers: Workers,
    storages: Storages,
    root: CheckpointStorage,
    /// The machine's CPU, shared fairly between busy tenants.
    cpu: CpuScheduler,
    tenants: RwLock<BTreeMap<String, Arc<Tenant>>>,
    jobs: Mutex<HashMap<String, Arc<HostedJob>>>,
    /// This host process, in leases.
    run_id: String,
    /// Set by [`Host::shutdown`]: runs that end now resume at the next
    /// start.
    shutting_down: AtomicBool,
    started: std::time::Instant,
}

/// A running host. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("storage", &self.inner.root.url())
            .finish()
    }
}

impl Host {
    /// Starts a host with `config` on the runtime `io`, its jobs' subtasks
    /// on `workers`: opens the storage
    /// root, sets up the tenants and resumes every job the registry says
    /// was running (from its latest completed checkpoint).
    ///
    /// # Errors
    /// The storage root cannot be opened or listed, or the data directory
    /// cannot be created.
    pub fn start(
        config: HostConfig,
        engine: Arc<PluginEngine>,
        io: tokio::runtime::Handle,
        workers: Workers,
    ) -> Result<Self, Error> {
        let storages = Storages::new(&config.data_dir, s3_config(&config));
        std::fs::create_dir_all(config.data_dir.join("plugins")).map_err(|e| {
            Error::HostConfig {
                path: config.path.clone(),
                message: format!(
                    "data_dir: cannot create {}: {e}",
                    config.data_dir.join("plugins").display()
                ),
            }
        })?;
        let root = storages.open(&config.storage)?;
        // The CPU the tenants share is the workers' (by default one per
        // core, at most the machine's).
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let cpu = CpuScheduler::new(workers.threads().min(cores) as f64);
        let host = Host {
            inner: Arc::new(Inner {
                config: RwLock::new(Arc::new(config)),
                engine,
                io,
                workers,
                storages,
                root,
                cpu,
                tenants: RwLock::default(),
                jobs: Mutex::default(),
                run_id: format!("{:032x}", rand::random::<u128>()),
                shutting_down: AtomicBool::new(false),
                started: std::time::Instant::now(),
            }),
        };
        host.sync_tenants()?;
        host.recover()?;
        Inner::meter_storage(&host.inner);
        Ok(host)
    }

    /// The config in force.
    pub fn config(&self) -> Arc<HostConfig> {
        self.inner.config()
    }

    /// Reads the config file again: tenants and tokens added or removed,
    /// quotas changed. The address, data directory and storage stay as
    /// they were (a restart changes those). A config that does not
    /// validate changes nothing.
    ///
    /// # Errors
    /// [`Error::HostConfig`] for a config that does not validate.
    pub fn reload(&self) -> Result<(), Error> {
        let old = self.config();
        let mut new = HostConfig::load(&old.path)?;
        new.address = old.address;
        new.data_dir = old.data_dir.clone();
        new.storage = old.storage.clone();
        *self.inner.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        self.sync_tenants()?;
        tracing::info!(
            "reloaded the host config {}: {} tenant(s)",
            old.path.display(),
            self.config().tenants.len()
        );
        Ok(())
    }

    /// Creates the tenants the config names that the host does not have
    /// yet, and applies every tenant's quota.
    fn sync_tenants(&self) -> Result<(), Error> {
        let config = self.config();
        let mut tenants = self
            .inner
            .tenants
            .write()
            .unwrap_or_else(|p| p.into_inner());
        for t in &config.tenants {
            if let Some(existing) = tenants.get(&t.name) {
                *existing.quota.write().unwrap_or_else(|p| p.into_inner()) = t.quota;
                existing.memory.set_budget(t.quota.memory_mb << 20);
                existing.cpu.set_weight(t.quota.cpu_share);
                continue;
            }
            let storage = self.inner.root.scoped(&format!("tenants/{}", t.name))?;
            let savepoints = storage.location("savepoints");
            tenants.insert(
                t.name.clone(),
                Arc::new(Tenant {
                    name: t.name.clone(),
                    quota: RwLock::new(t.quota),
                    jobs: Jobs::within(&savepoints),
                    memory: MemoryPool::new(
                        t.quota.memory_mb << 20,
                        &format!("tenant `{}`'s `memory_mb` quota", t.name),
                    ),
                    storage,
                    files: config.data_dir.join("tenants").join(&t.name).join("files"),
                    savepoints,
                    admission: tokio::sync::Mutex::new(()),
                    cpu: self.inner.cpu.group(&t.name, t.quota.cpu_share),
                    storage_used: std::sync::atomic::AtomicU64::new(0),
                }),
            );
        }
        Ok(())
    }

    /// Resumes the jobs the registry says were running; shows the others
    /// as they ended.
    fn recover(&self) -> Result<(), Error> {
        let tenants: Vec<Arc<Tenant>> = self.inner.tenants().values().cloned().collect();
        for tenant in tenants {
            let ids = self.inner.io.block_on(tenant.storage.list_dirs("jobs"))?;
            for id in ids {
                let path = record::path(&id);
                let record = match self.inner.io.block_on(tenant.storage.get(&path)) {
                    Ok(bytes) => JobRecord::decode(&tenant.storage.location(&path), &bytes),
                    // A job deleted half-way, or submitted as the host
                    // died: nothing to resume.
                    Err(StorageError::NotFound { .. }) => continue,
                    Err(e) => Err(e.into()),
                };
                let record = match record {
                    Ok(r) if r.id == id && r.tenant == tenant.name => r,
                    Ok(_) => {
                        tracing::warn!(
                            "ignoring job record {path}: its id or tenant is not its directory's"
                        );
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("ignoring job {id} of tenant `{}`: {e}", tenant.name);
                        continue;
                    }
                };
                let Some(job_id) = JobId::parse(&record.id) else {
                    continue;
                };
                let state = record.job_state();
                if state.is_terminal() {
                    self.inner.register_ended(&tenant, job_id, record, state);
                    continue;
                }
                match self.prepare(&tenant, &record.job) {
                    Ok(confined) => {
                        tracing::info!(
                            "resuming job `{}` ({}) of tenant `{}`",
                            record.name,
                            record.id,
                            tenant.name
                        );
                        let restore = if confined.graph.checkpoints.enabled() {
                            Restore::Latest
                        } else {
                            self.inner.first_restore(&tenant, &record)
                        };
                        self.inner
                            .launch(&tenant, job_id, record, confined, restore);
                    }
                    Err(e) => {
                        tracing::warn!(
                            "cannot resume job {} of tenant `{}`: {e}",
                            record.id,
                            tenant.name
                        );
                        let mut record = record;
                        record.state = "FAILED".into();
                        record.failure = Some(format!("could not be resumed: {e}"));
                        record.ended_ms = Some(record::now_ms());
                        let _ = self.inner.io.block_on(record.write(&tenant.storage));
                        self.inner
                            .register_ended(&tenant, job_id, record, JobState::Failed);
                    }
                }
            }
        }
        Ok(())
    }

    /// Confines job file `text` of `tenant`, with its plugins fetched to
    /// the local cache (blocking: for start-up only).
    fn prepare(&self, tenant: &Tenant, text: &str) -> Result<jobfile::Confined, Error> {
        self.inner
            .io
            .block_on(self.inner.confine(tenant, text))
            .map_err(|problems| Error::InvalidJob {
                path: PathBuf::from("job.json"),
                problems,
            })
    }

    /// Cancels every running job (their checkpoints stay: the next start
    /// resumes them) and waits up to `wait` for them to end.
    pub fn shutdown(&self, wait: Duration) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        let jobs: Vec<Arc<HostedJob>> = self.inner.all_jobs();
        for j in jobs.iter().filter(|j| j.running.load(Ordering::Relaxed)) {
            // Not recorded as cancelled, and nothing deleted: the job
            // resumes at the next start, as after a crash.
            j.fence
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .store(true, Ordering::Relaxed);
            j.control().cancel();
        }
        let deadline = std::time::Instant::now() + wait;
        while jobs.iter().any(|j| j.running.load(Ordering::Relaxed))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// S3 options from the host config; never the environment.
fn s3_config(config: &HostConfig) -> S3Config {
    use object_store::aws::AmazonS3ConfigKey as K;
    let s3 = &config.s3;
    let mut options = Vec::new();
    let mut add = |k: K, v: &Option<String>| {
        if let Some(v) = v {
            options.push((k, v.clone()));
        }
    };
    add(K::Endpoint, &s3.endpoint);
    add(K::Region, &s3.region);
    add(K::AccessKeyId, &s3.access_key_id);
    add(K::SecretAccessKey, &s3.secret_access_key);
    if s3.allow_http {
        options.push((
            K::Client(object_store::ClientConfigKey::AllowHttp),
            "true".into(),
        ));
    }
    S3Config::Options(options)
}

/// How often each tenant's storage is counted for its `storage_mb` quota.
const STORAGE_COUNT_EVERY: Duration = Duration::from_secs(10);

impl Inner {
    /// Counts every tenant's checkpoint and savepoint bytes now and every
    /// [`STORAGE_COUNT_EVERY`], for as long as the host lives.
    fn meter_storage(inner: &Arc<Self>) {
        let weak = Arc::downgrade(inner);
        inner.io.spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let tenants: Vec<Arc<Tenant>> = inner.tenants().values().cloned().collect();
                for t in tenants {
                    let mut used = 0;
                    let mut by_job: HashMap<String, u64> = HashMap::new();
                    for prefix in ["jobs", "savepoints"] {
                        match t.storage.list(prefix).await {
                            Ok(objects) => {
                                for o in objects {
                                    used += o.size;
                                    if let Some(id) = o
                                        .path
                                        .strip_prefix("jobs/")
                                        .and_then(|p| p.split('/').next())
                                    {
                                        *by_job.entry(id.to_owned()).or_default() += o.size;
                                    }
                                }
                            }
                            Err(e) => tracing::warn!("counting tenant `{}`'s storage: {e}", t.name),
                        }
                    }
                    t.storage_used.store(used, Ordering::Relaxed);
                    let quota = t.quota().storage_mb << 20;
                    if used > quota {
                        inner.fail_largest(&t, &by_job, used, quota);
                    }
                }
                drop(inner);
                tokio::time::sleep(STORAGE_COUNT_EVERY).await;
            }
        });
    }

    /// Fails the running job of `tenant` that holds the most storage: the
    /// tenant's checkpoints and savepoints hold `used` bytes, over its
    /// `storage_mb` quota of `quota`. Its checkpoints stay (the run is
    /// fenced), so it can be resumed once there is room.
    fn fail_largest(&self, tenant: &Tenant, by_job: &HashMap<String, u64>, used: u64, quota: u64) {
        let running: Vec<Arc<HostedJob>> = self
            .all_jobs()
            .into_iter()
            .filter(|j| j.tenant.name == tenant.name && j.running.load(Ordering::Relaxed))
            .collect();
        let Some(job) = running
            .iter()
            .max_by_key(|j| by_job.get(&j.record().id).copied().unwrap_or_default())
        else {
            return;
        };
        let why = format!(
            "failed by the host: tenant `{}`'s checkpoints and savepoints hold {} MiB, over its \
             quota `storage_mb` ({}); this job held the most ({} MiB)",
            tenant.name,
            used >> 20,
            quota >> 20,
            by_job.get(&job.record().id).copied().unwrap_or_default() >> 20
        );
        tracing::warn!("job {}: {why}", job.record().id);
        *job.failed_by_host.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        job.fence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .store(true, Ordering::Relaxed);
        // Failed, not cancelled: the state says so before the run ends.
        let control = job.control();
        control.advance(JobState::Failed);
        control.cancel();
    }

    fn config(&self) -> Arc<HostConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn tenants(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Tenant>>> {
        self.tenants.read().unwrap_or_else(|p| p.into_inner())
    }

    fn tenant(&self, name: &str) -> Option<Arc<Tenant>> {
        self.tenants().get(name).cloned()
    }

    fn all_jobs(&self) -> Vec<Arc<HostedJob>> {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Job `id` if `tenant` owns it; not found (404) otherwise, another
    /// tenant's included.
    fn job_of(&self, tenant: &Tenant, id: &str) -> Result<Arc<HostedJob>, ops::Refusal> {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|j| j.tenant.name == tenant.name)
            .cloned()
            .ok_or_else(|| ops::Refusal::NotFound(format!("no job with id `{id}`")))
    }

    /// Shows job `id` of `tenant`, which ended as `state` before this
    /// process started.
    fn register_ended(&self, tenant: &Arc<Tenant>, id: JobId, record: JobRecord, state: JobState) {
        let control = JobControl::ended(id, &record.name, state);
        tenant.jobs.insert(control.clone(), self.roots(tenant));
        let job = Arc::new(HostedJob {
            tenant: tenant.clone(),
            record: Mutex::new(record),
            control: Mutex::new(control),
            metrics: Mutex::new(Arc::new(JobMetrics::default())),
            subtasks: 0,
            instances: 0,
            ended: Arc::default(),
            fence: Mutex::default(),
            failed_by_host: Mutex::default(),
            running: Arc::new(AtomicBool::new(false)),
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.record().id, job);
    }

    /// Where `tenant`'s savepoints may be written: names in its
    /// namespace.
    fn roots(&self, tenant: &Tenant) -> SavepointRoots {
        SavepointRoots::names_under(&tenant.savepoints)
            .expect("invariant: a storage location parses as a savepoint root")
    }

    /// Where a job's first run starts: its savepoint, or scratch.
    fn first_restore(&self, tenant: &Tenant, record: &JobRecord) -> Restore {
        match &record.restore {
            Some(name) => Restore::From(format!("{}/{name}", tenant.savepoints)),
            None => Restore::Fresh,
        }
    }

    /// Confines `text` for `tenant`: its plugins looked up (and fetched to
    /// the local cache) by hash.
    async fn confine(
        &self,
        tenant: &Tenant,
        text: &str,
    ) -> Result<jobfile::Confined, Vec<Problem>> {
        let refs = jobfile::plugin_refs(text)?;
        let mut plugins = HashMap::new();
        for hash in refs {
            if let Some(path) = self.local_plugin(tenant, &hash).await {
                plugins.insert(hash, path);
            }
        }
        let quota = tenant.quota();
        jobfile::confine(text, &quota, &plugins, &tenant.files).map_err(|problems| {
            problems
                .into_iter()
                .map(|p| Problem {
                    field: p.field,
                    message: self.for_tenant(tenant, &p.message),
                })
                .collect()
        })
    }

    /// `message` as a tenant may see it: its file directory and the
    /// plugin cache, host paths both, replaced by what the tenant wrote
    /// (relative paths, `sha256:` names).
    fn for_tenant(&self, tenant: &Tenant, message: &str) -> String {
        let files = format!("{}/", tenant.files.display());
        let cache = format!("{}/", self.config().data_dir.join("plugins").display());
        let mut out = message.replace(&files, "");
        while let Some(at) = out.find(&cache) {
            let rest = &out[at + cache.len()..];
            let hash: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
            let tail = rest[hash.len()..]
                .strip_prefix(".wasm")
                .unwrap_or(&rest[hash.len()..]);
            out = format!("{}{}{hash}{tail}", &out[..at], jobfile::PLUGIN_PREFIX);
        }
        out
    }

    /// The local file of `tenant`'s plugin `hash`, fetched from storage
    /// if the cache lacks it; `None` if the tenant never uploaded it.
    async fn local_plugin(&self, tenant: &Tenant, hash: &str) -> Option<PathBuf> {
        let stored = format!("plugins/{hash}.wasm");
        // The tenant must own it, whatever the shared cache holds.
        if !tenant.storage.exists(&stored).await.ok()? {
            return None;
        }
        let local = self
            .config()
            .data_dir
            .join("plugins")
            .join(format!("{hash}.wasm"));
        if local.is_file() {
            return Some(local);
        }
        let bytes = tenant.storage.get(&stored).await.ok()?;
        if hex::encode(Sha256::digest(&bytes)) != hash {
            tracing::warn!(
                "plugin {} does not hash to its name: not using it",
                tenant.storage.location(&stored)
            );
            return None;
        }
        write_atomically(&local, &bytes).ok()?;
        Some(local)
    }

    /// Starts a run of job `id` on a thread of its own.
    fn launch(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        id: JobId,
        record: JobRecord,
        confined: jobfile::Confined,
        restore: Restore,
    ) -> Arc<HostedJob> {
        let graph = confined.graph;
        let metrics = JobMetrics::for_graph(&graph);
        let control = JobControl::with_id(
            id.clone(),
            &graph.name,
            metrics.clone(),
            Arc::new(AtomicBool::new(false)),
        );
        tenant.jobs.insert(control.clone(), self.roots(tenant));
        let job = {
            let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let job = jobs.get(id.as_str()).cloned();
            match job {
                // An upgrade or a rollback: the same job, a new run.
                Some(job) => {
                    *job.control.lock().unwrap_or_else(|p| p.into_inner()) = control.clone();
                    *job.metrics.lock().unwrap_or_else(|p| p.into_inner()) = metrics.clone();
                    *job.record.lock().unwrap_or_else(|p| p.into_inner()) = record;
                    job.running.store(true, Ordering::Relaxed);
                    job
                }
                None => {
                    let job = Arc::new(HostedJob {
                        tenant: tenant.clone(),
                        record: Mutex::new(record),
                        control: Mutex::new(control.clone()),
                        metrics: Mutex::new(metrics.clone()),
                        subtasks: confined.subtasks,
                        instances: confined.instances,
                        ended: Arc::default(),
                        fence: Mutex::default(),
                        failed_by_host: Mutex::default(),
                        running: Arc::new(AtomicBool::new(true)),
                    });
                    jobs.insert(id.to_string(), job.clone());
                    job
                }
            }
        };
        let inner = self.clone();
        let (job2, tenant) = (job.clone(), tenant.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("job-{}", &id.as_str()[..8]))
            .spawn(move || inner.run(&tenant, &job2, &graph, control, metrics, restore));
        if let Err(e) = spawned {
            job.control().advance(JobState::Failed);
            job.running.store(false, Ordering::Relaxed);
            tracing::error!("cannot start a thread for job {id}: {e}");
        }
        job
    }

    /// One run of a hosted job, on its own thread: takes the job lease,
    /// runs, records how it ended.
    fn run(
        &self,
        tenant: &Tenant,
        job: &HostedJob,
        graph: &JobGraph,
        control: JobControl,
        metrics: Arc<JobMetrics>,
        restore: Restore,
    ) {
        let id = control.id().to_string();
        let outcome = self.run_leased(tenant, job, graph, &control, metrics, restore);
        let mut record = job.record();
        record.ended_ms = Some(record::now_ms());
        let mut discard = false;
        let failed_by_host = job
            .failed_by_host
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match &outcome {
            Ok(report) => {
                record.state = "FINISHED".into();
                record.savepoint = report
                    .stopped_with
                    .as_ref()
                    .map(|s| tenant.jobs.show(&s.location));
                discard = true;
            }
            Err(RunEnd::Shutdown) => {
                record.state = "RUNNING".into();
                record.ended_ms = None;
            }
            Err(RunEnd::Failed(e)) if e.kind() == crate::ErrorKind::Cancelled => {
                record.state = "CANCELED".into();
            }
            Err(RunEnd::Failed(e)) => {
                record.state = "FAILED".into();
                record.failure = Some(self.for_tenant(tenant, &e.to_string()));
                if !control.state().is_terminal() {
                    control.advance(JobState::Failed);
                }
            }
            Err(_) if failed_by_host.is_some() => {
                record.state = "FAILED".into();
                record.failure = failed_by_host;
                control.advance(JobState::Failed);
            }
            Err(RunEnd::Fenced(why)) => {
                // Another host owns the job now: its record is theirs.
                tracing::warn!("job {id} of tenant `{}` stopped: {why}", tenant.name);
                job.running.store(false, Ordering::Relaxed);
                job.ended.notify_waiters();
                return;
            }
        }
        *job.record.lock().unwrap_or_else(|p| p.into_inner()) = record.clone();
        if let Err(e) = self.io.block_on(record.write(&tenant.storage)) {
            tracing::error!("recording how job {id} ended failed: {e}");
        } else if discard && graph.checkpoints.enabled() {
            // Recorded as finished: its checkpoints are no longer needed
            // (as Flink discards a finished job's).
            let storage = job_storage(tenant, &id);
            if let Ok(storage) = storage {
                let _ = self.io.block_on(storage.delete_prefix(&graph.name));
            }
        }
        job.running.store(false, Ordering::Relaxed);
        job.ended.notify_waiters();
    }

    fn run_leased(
        &self,
        tenant: &Tenant,
        job: &HostedJob,
        graph: &JobGraph,
        control: &JobControl,
        metrics: Arc<JobMetrics>,
        restore: Restore,
    ) -> Result<runtime::RunReport, RunEnd> {
        let id = control.id().as_str();
        let storage = job_storage(tenant, id).map_err(|e| RunEnd::Failed(e.into()))?;
        let lease = self
            .io
            .block_on(Lease::acquire(
                &storage,
                &graph.name,
                lease::this_process(&self.run_id),
                LEASE_TTL,
            ))
            .map_err(RunEnd::Failed)?;
        let fenced = Arc::new(AtomicBool::new(false));
        let (stop_renewing, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let keeper = {
            let (fenced, control) = (fenced.clone(), control.clone());
            self.io.spawn(async move {
                let mut lease = lease;
                loop {
                    tokio::select! {
                        _ = &mut stopped => return Some(lease),
                        () = tokio::time::sleep(LEASE_RENEW_EVERY) => {}
                    }
                    if let Err(e) = lease.renew().await {
                        tracing::warn!("job {}: {e}", control.id());
                        if matches!(e, Error::Storage(StorageError::LeaseLost { .. })) {
                            fenced.store(true, Ordering::Relaxed);
                            control.cancel();
                            return None;
                        }
                    }
                }
            })
        };
        *job.fence.lock().unwrap_or_else(|p| p.into_inner()) = fenced.clone();
        let record = job.record();
        let claim_mode = record.claim_mode.parse().unwrap_or(ClaimMode::NoClaim);
        let options = RunOptions {
            restore,
            storages: Some(self.storages.relative_to(&tenant.files)),
            storage: Some(storage),
            io: Some(self.io.clone()),
            workers: Some(self.workers.clone()),
            control: Some(control.clone()),
            claim_mode,
            allow_non_restored: record.allow_non_restored,
            memory_pool: Some(tenant.memory.clone()),
            cpu_group: self.config().fair_cpu.then(|| tenant.cpu.clone()),
            keep_finished_checkpoints: true,
            fenced: Some(fenced.clone()),
            ..RunOptions::default()
        };
        let result = runtime::run_with(graph, &self.engine, metrics, &options);
        let _ = stop_renewing.send(());
        if let Ok(Some(lease)) = self.io.block_on(keeper)
            && let Err(e) = self.io.block_on(lease.release())
        {
            tracing::warn!("releasing the lease of job {id}: {e}");
        }
        if self.shutting_down.load(Ordering::Relaxed) && result.is_err() {
            return Err(RunEnd::Shutdown);
        }
        if fenced.load(Ordering::Relaxed) {
            return Err(RunEnd::Fenced("its job lease was taken over".into()));
        }
        result.map_err(RunEnd::Failed)
    }
}

/// How a run ended other than finishing.
enum RunEnd {
    Failed(Error),
    /// The host shut down: the job resumes at its next start.
    Shutdown,
    /// The lease was lost: another host runs the job.
    Fenced(String),
}

/// Job `id`'s checkpoint storage: `jobs/<id>/checkpoints` of its tenant.
fn job_storage(tenant: &Tenant, id: &str) -> Result<CheckpointStorage, StorageError> {
    tenant.storage.scoped(&format!("jobs/{id}/checkpoints"))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader never sees half a file.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Whether `import` (`wasi:io/streams@0.2.6`) is one the host grants.
pub fn granted(import: &str) -> bool {
    GRANTED_IMPORTS.iter().any(|g| import.starts_with(g))
}
