//! What the host does for a tenant's requests: upload a plugin, submit,
//! upgrade and delete a job, list and dispose of savepoints. No HTTP here:
//! the API (`api.rs`) maps a [`Refusal`] to a status code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::record::{self, JobRecord, RECORD_VERSION};
use super::{HostedJob, Inner, Tenant, config, granted, jobfile, write_atomically};
use crate::api::targets::SavepointRoots;
use crate::checkpoint::catalog::{METADATA_FILE, RestorePoint};
use crate::error::{Error, Problem};
use crate::runtime::{JobId, JobState, Restore, SavepointFormat, SavepointRequest, StopMode};
use crate::savepoint::ClaimMode;

/// What running jobs use, against quotas and the host's limits.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Usage {
    pub jobs: u32,
    pub subtasks: u32,
    /// Memory mappings, by the host's estimate ([`config::job_mappings`]).
    pub mappings: u64,
}

/// Why a request is refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The request is malformed or names what cannot be (400).
    Bad(String),
    /// Nothing of the tenant's has that name (404).
    NotFound(String),
    /// The job is not in a state that allows it (409).
    Conflict(String),
    /// A quota would be exceeded (403), naming it.
    Quota(String),
    /// The host is full (503).
    Full(String),
    /// Something the host depends on failed (storage): asking again may
    /// succeed (503).
    Unavailable(String),
    /// The host failed (500).
    Internal(String),
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        match e.kind() {
            crate::ErrorKind::User => Refusal::Bad(e.to_string()),
            crate::ErrorKind::External => Refusal::Unavailable(e.to_string()),
            _ => Refusal::Internal(e.to_string()),
        }
    }
}

/// Why an upgrade's stop with savepoint failed, as the API answers it:
/// 503 when it failed while it was taken (storage, a subtask; asking again
/// may succeed), 409 when the job refused it.
fn stop_refusal(e: Error) -> Refusal {
    let message = format!("the stop with savepoint failed, the job goes on: {e}");
    match e.kind() {
        crate::ErrorKind::External => Refusal::Unavailable(message),
        _ => Refusal::Conflict(message),
    }
}

fn problems(ps: Vec<Problem>) -> Refusal {
    Refusal::Bad(format!(
        "invalid job: {}",
        ps.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    ))
}

/// `POST /v1/plugins`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginView {
    /// `sha256:<hex>`: what a job file names it by.
    pub plugin: String,
    /// Its size, bytes.
    pub size: u64,
    /// The interfaces it imports (on upload only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub imports: Vec<String>,
}

/// `POST /v1/jobs`'s body.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// The job file, plugins named `sha256:<hex>`.
    pub job: String,
    /// A savepoint of the tenant's (its name) to start from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<String>,
    /// `no-claim` (default) or `claim`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_mode: Option<String>,
    /// Drop state of uids the job does not have.
    #[serde(default)]
    pub allow_non_restored: bool,
}

/// `POST /v1/jobs/{id}/upgrade`'s body.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeBody {
    /// Operator uid → the new plugin (`sha256:<hex>`).
    #[serde(default)]
    pub plugins: BTreeMap<String, String>,
    /// How long the new plugins must run without failing (or until their
    /// first checkpoint) before the upgrade counts as done, ms; 10 s by
    /// default, 60 s at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout_ms: Option<u64>,
}

/// What an upgrade did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpgradeView {
    /// The job.
    pub job_id: String,
    /// The savepoint the old plugins stopped with, which the new ones (or
    /// the old ones again) restored from: a name in the tenant's namespace.
    pub savepoint: String,
    /// Whether the new plugins failed and the job runs the old ones again.
    pub rolled_back: bool,
    /// Why the new plugins failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// From the stop request to the new run processing again, ms.
    pub pause_ms: u64,
    /// Of it: the stop with savepoint, until the old run had ended, ms.
    #[serde(default)]
    pub stop_ms: u64,
    /// Of it: checking the savepoint against the new plugins, ms.
    #[serde(default)]
    pub check_ms: u64,
}

/// A savepoint of the tenant's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavepointEntry {
    /// Its name in the tenant's namespace.
    pub name: String,
    /// Bytes of its files.
    pub size: u64,
    /// When its `_metadata` was written, ms since the epoch.
    pub time: u64,
}

/// A tenant's quota and what it uses of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuotaView {
    /// The tenant.
    pub tenant: String,
    /// Its quota.
    pub quota: BTreeMap<String, u64>,
    /// What it uses now, by quota name.
    pub used: BTreeMap<String, u64>,
}

/// Refuses what would write more to a tenant's storage once it holds more
/// than its `storage_mb` quota (as last counted).
pub(crate) fn storage_within_quota(tenant: &Tenant) -> Result<(), Refusal> {
    let used = tenant.storage_used.load(Ordering::Relaxed);
    let quota = tenant.quota().storage_mb;
    if used > quota << 20 {
        return Err(Refusal::Quota(format!(
            "tenant `{}`'s checkpoints and savepoints hold {} MiB, over its quota `storage_mb` \
             ({quota}): dispose of savepoints or delete ended jobs first",
            tenant.name,
            used >> 20
        )));
    }
    Ok(())
}

/// The most a health wait lasts.
const MAX_HEALTH_WAIT: Duration = Duration::from_secs(60);

impl Inner {
    /// Validates, compiles and stores plugin `bytes` for `tenant`.
    pub(crate) async fn upload(
        self: &Arc<Self>,
        tenant: &Tenant,
        bytes: bytes::Bytes,
    ) -> Result<(bool, PluginView), Refusal> {
        let hash = hex::encode(Sha256::digest(&bytes));
        let stored = format!("plugins/{hash}.wasm");
        let view = |imports| PluginView {
            plugin: format!("{}{hash}", jobfile::PLUGIN_PREFIX),
            size: bytes.len() as u64,
            imports,
        };
        if tenant.storage.exists(&stored).await.map_err(Error::from)? {
            return Ok((false, view(Vec::new())));
        }
        let engine = self.engine.clone();
        let checked = bytes.clone();
        let imports = tokio::task::spawn_blocking(move || engine.inspect_component(&checked))
            .await
            .map_err(|e| Refusal::Internal(format!("compiling the plugin: {e}")))?
            .map_err(|why| Refusal::Bad(format!("the uploaded plugin {why}")))?;
        if let Some(denied) = imports.iter().find(|i| !granted(i)) {
            return Err(Refusal::Bad(format!(
                "the uploaded plugin imports `{denied}`, which this host does not grant \
                 (granted: {})",
                super::GRANTED_IMPORTS
                    .iter()
                    .map(|g| format!("{g}*"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        tenant
            .storage
            .put(&stored, bytes.clone())
            .await
            .map_err(Error::from)?;
        let local = self
            .config()
            .data_dir
            .join("plugins")
            .join(format!("{hash}.wasm"));
        if !local.is_file() {
            write_atomically(&local, &bytes)
                .map_err(|e| Refusal::Internal(format!("caching the plugin: {e}")))?;
        }
        tracing::info!(
            "tenant `{}` uploaded plugin sha256:{hash} ({} bytes)",
            tenant.name,
            bytes.len()
        );
        Ok((true, view(imports)))
    }

    /// The tenant's plugins.
    pub(crate) async fn plugins(&self, tenant: &Tenant) -> Result<Vec<PluginView>, Refusal> {
        let listed = tenant.storage.list("plugins").await.map_err(Error::from)?;
        Ok(listed
            .into_iter()
            .filter_map(|o| {
                let name = o.path.strip_prefix("plugins/")?.strip_suffix(".wasm")?;
                Some(PluginView {
                    plugin: format!("{}{name}", jobfile::PLUGIN_PREFIX),
                    size: o.size,
                    imports: Vec::new(),
                })
            })
            .collect())
    }

    /// What the jobs not yet ended use: `tenant`'s, or the whole host's.
    pub(super) fn running(&self, tenant: Option<&Tenant>) -> Usage {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.values()
            .filter(|j| tenant.is_none_or(|t| j.tenant.name == t.name))
            .filter(|j| j.running.load(Ordering::Relaxed))
            .fold(Usage::default(), |u, j| Usage {
                jobs: u.jobs + 1,
                subtasks: u.subtasks + j.subtasks,
                mappings: u.mappings + config::job_mappings(j.instances),
            })
    }

    /// Refuses a job of `subtasks` more (`instances` of them plugin
    /// instances) that would exceed the tenant's quota or what the host
    /// can run.
    fn admit(&self, tenant: &Tenant, subtasks: u32, instances: u32) -> Result<(), Refusal> {
        let quota = tenant.quota();
        storage_within_quota(tenant)?;
        let Usage {
            jobs: running,
            subtasks: used,
            ..
        } = self.running(Some(tenant));
        if running >= quota.running_jobs {
            return Err(Refusal::Quota(format!(
                "tenant `{}` runs {running} job(s), its quota `running_jobs` ({})",
                tenant.name, quota.running_jobs
            )));
        }
        let host = self.running(None);
        let (host_used, host_max) = (host.subtasks, self.config().max_subtasks);
        if host_used.saturating_add(subtasks) > host_max {
            return Err(Refusal::Full(format!(
                "the host runs {host_used} subtasks and this job's {subtasks} would exceed its \
                 limit of {host_max} (`max_subtasks` in the host config): retry later or on \
                 another host"
            )));
        }
        let (mapped, max_mappings) = (host.mappings, self.config().max_mappings);
        let needed = config::job_mappings(instances);
        if mapped + needed > max_mappings {
            return Err(Refusal::Full(format!(
                "the host's jobs need about {mapped} memory mappings and this one's {needed} \
                 would exceed its limit of {max_mappings} (`max_mappings` in the host config, \
                 by default the kernel's `vm.max_map_count` less the host's own): retry later \
                 or on another host"
            )));
        }
        if used + subtasks > quota.subtasks {
            return Err(Refusal::Quota(format!(
                "the job's {subtasks} subtask(s) and the {used} tenant `{}` runs would exceed \
                 its quota `subtasks` ({})",
                tenant.name, quota.subtasks
            )));
        }
        Ok(())
    }

    /// The savepoint `name` of `tenant`, opened and checked against
    /// `graph`.
    async fn savepoint_for(
        &self,
        tenant: &Tenant,
        name: &str,
    ) -> Result<(String, RestorePoint), Refusal> {
        if !SavepointRoots::is_name(name) {
            return Err(Refusal::Bad(format!(
                "`{name}` is not a savepoint name: give the name `GET /v1/savepoints` lists"
            )));
        }
        let location = format!("{}/{name}", tenant.savepoints);
        let point = RestorePoint::open(&location, &self.storages)
            .await
            .map_err(|_| {
                Refusal::NotFound(format!(
                    "tenant `{}` has no savepoint `{name}`",
                    tenant.name
                ))
            })?;
        Ok((location, point))
    }

    /// Submits a job for `tenant`.
    pub(crate) async fn submit(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        body: SubmitBody,
    ) -> Result<JobRecord, Refusal> {
        let claim_mode: ClaimMode = body
            .claim_mode
            .as_deref()
            .unwrap_or("no-claim")
            .parse()
            .map_err(Refusal::Bad)?;
        let confined = self.confine(tenant, &body.job).await.map_err(problems)?;
        if let Some(name) = &body.restore {
            let (_, point) = self.savepoint_for(tenant, name).await?;
            point
                .plan(&confined.graph, body.allow_non_restored)
                .map_err(|e| Refusal::Bad(e.to_string()))?;
        }
        let _admission = tenant.admission.lock().await;
        self.admit(tenant, confined.subtasks, confined.instances)?;
        let id = JobId::random();
        let record = JobRecord {
            version: RECORD_VERSION,
            id: id.to_string(),
            tenant: tenant.name.clone(),
            name: confined.graph.name.clone(),
            job: body.job,
            state: "RUNNING".into(),
            restore: body.restore,
            claim_mode: match claim_mode {
                ClaimMode::Claim => "claim",
                ClaimMode::NoClaim => "no-claim",
            }
            .into(),
            allow_non_restored: body.allow_non_restored,
            submitted_ms: record::now_ms(),
            ended_ms: None,
            failure: None,
            savepoint: None,
        };
        record.write(&tenant.storage).await?;
        let restore = self.first_restore(tenant, &record);
        tracing::info!(
            "tenant `{}` submitted job `{}` ({id})",
            tenant.name,
            record.name
        );
        self.launch(tenant, id, record.clone(), confined, restore);
        Ok(record)
    }

    /// Deletes an ended job: its record and checkpoints.
    pub(crate) async fn delete(&self, tenant: &Tenant, id: &str) -> Result<(), Refusal> {
        let job = self.job_of(tenant, id)?;
        if job.control().state().is_terminal() {
            // Ended: its run is recording how, a moment at most.
            let _ = tokio::time::timeout(Duration::from_secs(10), wait_ended(&job)).await;
        }
        if job.running.load(Ordering::Relaxed) {
            return Err(Refusal::Conflict(format!(
                "job `{id}` is {}: cancel or stop it first",
                job.control().state().name()
            )));
        }
        tenant
            .storage
            .delete_prefix(&format!("jobs/{id}"))
            .await
            .map_err(Error::from)?;
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        tenant.jobs.remove(id);
        Ok(())
    }

    /// The tenant's savepoints: every directory in its namespace with a
    /// `_metadata`.
    pub(crate) async fn savepoints(&self, tenant: &Tenant) -> Result<Vec<SavepointEntry>, Refusal> {
        let listed = tenant
            .storage
            .list("savepoints")
            .await
            .map_err(Error::from)?;
        let mut dirs: BTreeMap<String, SavepointEntry> = BTreeMap::new();
        let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
        for o in &listed {
            let Some(rel) = o.path.strip_prefix("savepoints/") else {
                continue;
            };
            let Some((dir, file)) = rel.rsplit_once('/') else {
                continue;
            };
            *sizes.entry(dir.to_owned()).or_default() += o.size;
            if file == METADATA_FILE {
                dirs.insert(
                    dir.to_owned(),
                    SavepointEntry {
                        name: dir.to_owned(),
                        size: 0,
                        time: o
                            .last_modified
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64),
                    },
                );
            }
        }
        Ok(dirs
            .into_values()
            .map(|mut e| {
                e.size = sizes.get(&e.name).copied().unwrap_or_default();
                e
            })
            .collect())
    }

    /// What savepoint `name` holds, as `weir savepoint inspect` shows it.
    pub(crate) async fn inspect_savepoint(
        &self,
        tenant: &Tenant,
        name: &str,
    ) -> Result<String, Refusal> {
        let (_, point) = self.savepoint_for(tenant, name).await?;
        let shown = crate::savepoint::inspect::inspect(&point).await?;
        Ok(tenant
            .jobs
            .show(&shown.to_string())
            .replace(&format!("{}/", tenant.savepoints), ""))
    }

    /// Deletes savepoint `name`: only the files its `_metadata` names.
    pub(crate) async fn dispose(&self, tenant: &Tenant, name: &str) -> Result<usize, Refusal> {
        let (location, _) = self.savepoint_for(tenant, name).await?;
        Ok(crate::savepoint::delete_snapshot(&location, &self.storages).await?)
    }

    /// The tenant's quota and usage.
    pub(crate) fn quota_view(&self, tenant: &Tenant) -> QuotaView {
        let q = tenant.quota();
        let Usage {
            jobs: running,
            subtasks,
            ..
        } = self.running(Some(tenant));
        QuotaView {
            tenant: tenant.name.clone(),
            quota: BTreeMap::from([
                ("running_jobs".into(), u64::from(q.running_jobs)),
                ("subtasks".into(), u64::from(q.subtasks)),
                ("instance_memory_mb".into(), q.instance_memory_mb),
                ("memory_mb".into(), q.memory_mb),
                ("state_mb".into(), q.state_mb),
                ("storage_mb".into(), q.storage_mb),
                ("emit_mb_per_call".into(), q.emit_mb_per_call),
                ("fuel_per_call".into(), q.fuel_per_call),
                ("cpu_share".into(), q.cpu_share),
            ]),
            used: BTreeMap::from([
                ("running_jobs".into(), u64::from(running)),
                ("subtasks".into(), u64::from(subtasks)),
                ("memory_bytes".into(), tenant.memory.used()),
                (
                    "storage_bytes".into(),
                    tenant.storage_used.load(Ordering::Relaxed),
                ),
                ("cpu_ms".into(), tenant.cpu.cpu_time().as_millis() as u64),
                (
                    "cpu_throttled_ms".into(),
                    tenant.cpu.throttled().as_millis() as u64,
                ),
            ]),
        }
    }

    /// Upgrades job `id` in place: stop with a savepoint, check the new
    /// plugins against it, restore into them; back to the old plugins
    /// from the same savepoint if the new ones fail to load, open or
    /// restore.
    pub(crate) async fn upgrade(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        id: &str,
        body: UpgradeBody,
    ) -> Result<UpgradeView, Refusal> {
        let job = self.job_of(tenant, id)?;
        if body.plugins.is_empty() {
            return Err(Refusal::Bad(
                "no plugins to upgrade: give `plugins: {uid: \"sha256:…\"}`".into(),
            ));
        }
        let old = job.record();
        let new_text = replace_plugins(&old.job, &body.plugins)?;
        // Everything checkable before the job stops is checked now.
        let new = self.confine(tenant, &new_text).await.map_err(problems)?;
        let control = job.control();
        if control.state() != JobState::Running {
            return Err(Refusal::Conflict(format!(
                "job `{id}` is {}: only a running job is upgraded",
                control.state().name()
            )));
        }
        let engine = self.engine.clone();
        let graph = new.graph.clone();
        let declared = tokio::task::spawn_blocking(move || {
            crate::savepoint::inspect::declared_states(&engine, &graph)
        })
        .await
        .map_err(|e| Refusal::Internal(e.to_string()))?
        .map_err(|e| Refusal::Bad(format!("the new plugins cannot run: {e}")))?;
        let started = Instant::now();
        let ticket = control
            .trigger_savepoint(SavepointRequest {
                target: Some(tenant.savepoints.clone()),
                format: SavepointFormat::Canonical,
                stop: Some(StopMode::Suspend),
            })
            .map_err(|e| Refusal::Conflict(e.to_string()))?;
        let savepoint = ticket.wait_async().await.map_err(stop_refusal)?;
        wait_ended(&job).await;
        let stopped = Instant::now();
        let name = tenant.jobs.show(&savepoint.location);
        let health =
            Duration::from_millis(body.health_timeout_ms.unwrap_or(10_000)).min(MAX_HEALTH_WAIT);
        // Check the new plugins against the savepoint, as `weir savepoint
        // check` does.
        let point = RestorePoint::open(&savepoint.location, &self.storages).await?;
        let report =
            crate::savepoint::inspect::check(&point, &new.graph, &declared, old.allow_non_restored)
                .await?;
        let checked = Instant::now();
        let failure = if report.ok() {
            let record = restarted(&old, new_text, &name);
            record.write(&tenant.storage).await?;
            let job_id = JobId::parse(id).expect("invariant: a hosted job's id parses");
            self.launch(
                tenant,
                job_id,
                record,
                new,
                Restore::From(savepoint.location.clone()),
            );
            match healthy(self, &job, health).await {
                Ok(pause) => {
                    let view = UpgradeView {
                        job_id: id.to_owned(),
                        savepoint: name,
                        rolled_back: false,
                        failure: None,
                        pause_ms: (pause - started).as_millis() as u64,
                        stop_ms: (stopped - started).as_millis() as u64,
                        check_ms: (checked - stopped).as_millis() as u64,
                    };
                    tracing::info!(
                        "job {id} of tenant `{}` upgraded from savepoint {}: paused {} ms \
                         (stop {} ms, check {} ms, restore to the first record {} ms)",
                        tenant.name,
                        view.savepoint,
                        view.pause_ms,
                        view.stop_ms,
                        view.check_ms,
                        view.pause_ms.saturating_sub(view.stop_ms + view.check_ms)
                    );
                    return Ok(view);
                }
                Err(why) => {
                    job.control().cancel();
                    wait_ended(&job).await;
                    why
                }
            }
        } else {
            report.to_string()
        };
        tracing::warn!("upgrade of job {id} failed, rolling back to the old plugins: {failure}");
        let record = restarted(&old, old.job.clone(), &name);
        record.write(&tenant.storage).await?;
        let confined = self.confine(tenant, &old.job).await.map_err(problems)?;
        let job_id = JobId::parse(id).expect("invariant: a hosted job's id parses");
        // The new run's checkpoints (if any) are not the old plugins'.
        if let Ok(storage) = super::job_storage(tenant, id) {
            let _ = storage.delete_prefix(&confined.graph.name).await;
        }
        self.launch(
            tenant,
            job_id,
            record,
            confined,
            Restore::From(savepoint.location.clone()),
        );
        Ok(UpgradeView {
            job_id: id.to_owned(),
            savepoint: name,
            rolled_back: true,
            failure: Some(failure),
            pause_ms: started.elapsed().as_millis() as u64,
            stop_ms: (stopped - started).as_millis() as u64,
            check_ms: (checked - stopped).as_millis() as u64,
        })
    }
}

/// `old` running again as job file `job`, from savepoint `savepoint`.
fn restarted(old: &JobRecord, job: String, savepoint: &str) -> JobRecord {
    JobRecord {
        job,
        state: "RUNNING".into(),
        restore: Some(savepoint.to_owned()),
        ended_ms: None,
        savepoint: None,
        failure: None,
        ..old.clone()
    }
}

/// Waits until the job's current run has returned.
async fn wait_ended(job: &HostedJob) {
    while job.running.load(Ordering::Relaxed) {
        tokio::select! {
            () = job.ended.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
}

/// Waits until the job's new run processes records (when it is, the
/// moment it was first seen doing so) and stays up for `wait` or
/// completes a checkpoint; fails if it fails or restarts meanwhile.
async fn healthy(inner: &Inner, job: &HostedJob, wait: Duration) -> Result<Instant, String> {
    let deadline = Instant::now() + wait;
    let metrics = job.metrics();
    let mut processing: Option<Instant> = None;
    loop {
        let control = job.control();
        let state = control.state();
        if state == JobState::Failed
            || state == JobState::Restarting
            || metrics.restarts.load(Ordering::Relaxed) > 0
        {
            return Err(metrics
                .last_failure()
                .map(|f| inner.for_tenant(&job.tenant, &f))
                .or(job.record().failure)
                .unwrap_or_else(|| format!("the new plugins failed ({})", state.name())));
        }
        if !job.running.load(Ordering::Relaxed) {
            let r = job.record();
            return match r.failure {
                Some(f) => Err(f),
                // Finished (a bounded job): nothing failed.
                None => Ok(processing.unwrap_or_else(Instant::now)),
            };
        }
        if processing.is_none() && metrics.vertices.iter().any(|v| v.records_in() > 0) {
            processing = Some(Instant::now());
        }
        let checkpointed = metrics.checkpoints.completed.load(Ordering::Relaxed) > 0;
        if let Some(at) = processing
            && (checkpointed || Instant::now() >= deadline)
        {
            return Ok(at);
        }
        if Instant::now() >= deadline {
            return Ok(processing.unwrap_or_else(Instant::now));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Job file `text` with each operator's plugin replaced as `plugins`
/// (uid → `sha256:<hex>`) says.
fn replace_plugins(text: &str, plugins: &BTreeMap<String, String>) -> Result<String, Refusal> {
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| Refusal::Internal(format!("the job's own file: {e}")))?;
    let mut left: Vec<&String> = plugins.keys().collect();
    if let Some(toml::Value::Array(ops)) = table.get_mut("operators") {
        for op in ops.iter_mut().filter_map(toml::Value::as_table_mut) {
            let uid = op
                .get("uid")
                .and_then(toml::Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if let Some(new) = plugins.get(&uid) {
                if jobfile::plugin_hash(new).is_none() {
                    return Err(Refusal::Bad(format!(
                        "plugins.{uid}: `{new}` is not `{}<64 hex digits>`",
                        jobfile::PLUGIN_PREFIX
                    )));
                }
                op.insert("plugin".into(), toml::Value::String(new.clone()));
                left.retain(|u| **u != uid);
            }
        }
    }
    if let Some(uid) = left.first() {
        return Err(Refusal::Bad(format!(
            "plugins.{uid}: the job has no operator `{uid}`"
        )));
    }
    toml::to_string(&table).map_err(|e| Refusal::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_failure_is_answered_503_and_a_refusal_409() {
        let failed = stop_refusal(Error::SavepointFailed {
            message: "savepoint 3 failed: storage failure".into(),
        });
        assert!(
            matches!(&failed, Refusal::Unavailable(m) if m.contains("storage failure")),
            "{failed:?}"
        );
        let refused = stop_refusal(Error::Savepoint {
            message: "job `wc` is finishing".into(),
        });
        assert!(matches!(refused, Refusal::Conflict(_)), "{refused:?}");
        // Any other external error (storage) is 503 too, a user error 400.
        let storage = Refusal::from(Error::SavepointFailed {
            message: "x".into(),
        });
        assert!(matches!(storage, Refusal::Unavailable(_)), "{storage:?}");
        let bad = Refusal::from(Error::Savepoint {
            message: "x".into(),
        });
        assert!(matches!(bad, Refusal::Bad(_)), "{bad:?}");
    }

    #[test]
    fn an_upgrade_replaces_only_the_plugins_it_names() {
        let h = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let text = format!(
            "name = \"wc\"\n[[operators]]\nuid = \"a\"\nplugin = \"{}\"\ninput = \"in\"\n\
             [[operators]]\nuid = \"b\"\nplugin = \"{}\"\ninput = \"a\"\n",
            h('1'),
            h('2')
        );
        let new = replace_plugins(&text, &BTreeMap::from([("b".into(), h('f'))])).unwrap();
        let t: toml::Table = toml::from_str(&new).unwrap();
        let ops = t["operators"].as_array().unwrap();
        assert_eq!(ops[0]["plugin"].as_str(), Some(h('1').as_str()));
        assert_eq!(ops[1]["plugin"].as_str(), Some(h('f').as_str()));
        assert!(matches!(
            replace_plugins(&text, &BTreeMap::from([("c".into(), h('f'))])),
            Err(Refusal::Bad(m)) if m.contains("no operator `c`")
        ));
        assert!(matches!(
            replace_plugins(&text, &BTreeMap::from([("a".into(), "/tmp/x.wasm".into())])),
            Err(Refusal::Bad(_))
        ));
    }
}
