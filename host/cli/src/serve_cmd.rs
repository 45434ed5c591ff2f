//! `weir serve`, `weir submit` and `weir upgrade`: the host and the
//! client side of hosting many tenants' jobs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use weir_host::api::ApiLimits;
use weir_host::api::client::ApiClient;
use weir_host::error::Error;
use weir_host::plugin::PluginEngine;
use weir_host::serve::{Host, HostConfig, ServeApi, SubmitBody, UpgradeBody};

/// How long a request to the host may take to be read and answered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a stopping host waits for its jobs to end.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(20);

/// Runs the host until SIGINT or SIGTERM; SIGHUP reloads its config.
pub fn serve(engine: PluginEngine, config: &Path, max_connections: usize) -> Result<(), Error> {
    let config = HostConfig::load(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("weir-serve")
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("starting the host runtime: {e}")))?;
    let workers = weir_host::runtime::Workers::start(config.workers, runtime.handle())?;
    let address = config.address;
    let (storage, tenants) = (config.storage.clone(), config.tenants.len());
    let host = Host::start(config, Arc::new(engine), runtime.handle().clone(), workers)?;
    let limits = ApiLimits {
        max_connections: max_connections.max(1),
        // An upload compiles a plugin and an upgrade waits for the new
        // plugins' first checkpoint: more than a control call's 30 s.
        request_timeout: REQUEST_TIMEOUT,
        ..ApiLimits::default()
    };
    let api = runtime.block_on(ServeApi::bind(&host, address, limits))?;
    // One line, always: scripts and tests read the address from it.
    errln!(
        "weir serve: REST API on http://{} (storage {storage}, {tenants} tenant(s))",
        api.local_addr()
    );
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return Err(Error::Internal("cannot install signal handlers".into()));
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let host = host.clone();
                    match tokio::task::spawn_blocking(move || host.reload()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => errln!("not reloaded, the config in force stays: {e}"),
                        Err(e) => errln!("reloading: {e}"),
                    }
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        errln!("weir serve: stopping; running jobs resume at the next start");
        let stopping = host.clone();
        let _ = tokio::task::spawn_blocking(move || stopping.shutdown(SHUTDOWN_WAIT)).await;
        api.shutdown().await;
        Ok(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// Uploads the plugins `job_file` names (paths relative to it), rewrites
/// them to the hashes the host gave, and submits the job.
pub async fn submit(
    client: &ApiClient,
    job_file: &Path,
    restore: Option<String>,
    allow_non_restored: bool,
    claim_mode: Option<String>,
) -> Result<(), Error> {
    let read_error = |source| Error::JobRead {
        path: job_file.to_owned(),
        source,
    };
    weir_host::job::regular_file(job_file)
        .map_err(|why| read_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, why)))?;
    let text = std::fs::read_to_string(job_file).map_err(read_error)?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| Error::JobParse {
        path: job_file.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let base = job_file.parent().unwrap_or(Path::new("."));
    let mut uploaded = BTreeMap::new();
    if let Some(toml::Value::Array(ops)) = table.get_mut("operators") {
        for (i, op) in ops.iter_mut().enumerate() {
            let Some(op) = op.as_table_mut() else {
                continue;
            };
            let Some(plugin) = op.get("plugin").and_then(toml::Value::as_str) else {
                continue;
            };
            if plugin.starts_with(weir_host::serve::jobfile::PLUGIN_PREFIX) {
                continue;
            }
            let path = base.join(plugin);
            let reference = match uploaded.get(&path) {
                Some(r) => r,
                None => {
                    let r = upload(client, &path, &format!("operators[{i}].plugin")).await?;
                    uploaded.entry(path.clone()).or_insert(r)
                }
            };
            op.insert("plugin".into(), toml::Value::String(reference.clone()));
        }
    }
    let job = toml::to_string(&table)
        .map_err(|e| Error::Internal(format!("writing the job file: {e}")))?;
    let view = client
        .submit(&SubmitBody {
            job,
            restore,
            claim_mode,
            allow_non_restored,
        })
        .await?;
    errln!("submitted job `{}`: {}", view.name, view.state);
    outln!("{}", view.id);
    Ok(())
}

/// Uploads the plugin at `path`; its `sha256:` reference.
async fn upload(client: &ApiClient, path: &Path, field: &str) -> Result<String, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::Plugin {
        uid: field.to_owned(),
        plugin: path.to_owned(),
        message: format!("cannot read: {e}"),
    })?;
    let view = client.upload_plugin(bytes).await?;
    errln!("uploaded {} as {}", path.display(), view.plugin);
    Ok(view.plugin)
}

/// `weir upgrade JOB_ID --plugin UID=FILE …`.
pub async fn upgrade(client: &ApiClient, job_id: &str, plugins: &[String]) -> Result<(), Error> {
    let mut body = UpgradeBody::default();
    for p in plugins {
        let Some((uid, file)) = p.split_once('=') else {
            return Err(Error::Savepoint {
                message: format!("--plugin `{p}`: expected UID=FILE"),
            });
        };
        let reference = upload(client, Path::new(file), uid).await?;
        body.plugins.insert(uid.to_owned(), reference);
    }
    errln!("upgrading job {job_id}: stop with a savepoint, restore into the new plugins…");
    let done = client.upgrade(job_id, &body).await?;
    if done.rolled_back {
        errln!(
            "the new plugins failed and job {job_id} runs the old ones again from savepoint {}: {}",
            done.savepoint,
            done.failure.as_deref().unwrap_or("(no reason given)")
        );
        return Err(Error::Savepoint {
            message: "upgrade rolled back".into(),
        });
    }
    errln!(
        "job {job_id} upgraded from savepoint {} (paused {} ms)",
        done.savepoint,
        done.pause_ms
    );
    outln!("{}", done.savepoint);
    Ok(())
}
