//! `weir savepoint inspect | check | dispose`: reading and deleting
//! savepoints without running a job (the logic lives in
//! `weir_host::savepoint::inspect`; this prints it).

use std::path::Path;

use weir_host::checkpoint::catalog::{self, Manifest, Purpose, RestorePoint};
use weir_host::checkpoint::storage::Storages;
use weir_host::error::Error;
use weir_host::job;
use weir_host::plugin::PluginEngine;
use weir_host::savepoint::{self, inspect};

fn block_on<T>(f: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("starting an I/O runtime: {e}")))?
        .block_on(f)
}

/// Writes `text` to standard output; a closed pipe (`… | head`) ends the
/// output quietly instead of failing.
fn out(text: &str) -> Result<(), Error> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::Internal(format!("writing to standard output: {e}")))
        }
        _ => Ok(()),
    }
}

/// Where the CLI opens what a user names: paths relative to the working
/// directory, S3 configured from the environment.
pub fn storages() -> Storages {
    Storages::from_env(&std::env::current_dir().unwrap_or_default())
}

/// Prints what the snapshot at `path` holds, or with `dump` (`UID/STATE`)
/// that state's entries as JSON lines.
pub fn inspect_cmd(path: &str, dump: Option<&str>) -> Result<(), Error> {
    block_on(async {
        let point = RestorePoint::open_for(path, &storages(), Purpose::Inspect).await?;
        match dump {
            None => out(&inspect::inspect(&point).await?.to_string())?,
            Some(which) => {
                let Some((uid, state)) = which.split_once('/') else {
                    return Err(Error::Savepoint {
                        message: format!("--dump takes UID/STATE, got `{which}`"),
                    });
                };
                let mut text = inspect::dump(&point, uid, state).await?.join("\n");
                if !text.is_empty() {
                    text.push('\n');
                }
                out(&text)?;
            }
        }
        Ok(())
    })
}

/// Reports whether restoring `path` into the job `job_file` would
/// succeed; fails (exit 2) when it would not.
pub fn check_cmd(
    engine: &PluginEngine,
    path: &str,
    job_file: &Path,
    allow_non_restored: bool,
) -> Result<(), Error> {
    let graph = job::load(job_file)?;
    let declared = inspect::declared_states(engine, &graph)?;
    let report = block_on(async {
        let point = RestorePoint::open_for(path, &storages(), Purpose::Check).await?;
        inspect::check(&point, &graph, &declared, allow_non_restored).await
    })?;
    out(&report.to_string())?;
    if report.ok() {
        Ok(())
    } else {
        Err(Error::Savepoint {
            message: format!(
                "restoring {path} into {} would fail (see above)",
                job_file.display()
            ),
        })
    }
}

/// Deletes the savepoint at `path`, refusing anything that is not one:
/// only the files its `_metadata` references, then the directory if that
/// left it empty. With `force`, a directory without `_metadata` (a
/// savepoint interrupted while it was written) loses the files that look
/// like a savepoint's, and nothing else.
pub fn dispose_cmd(path: &str, force: bool) -> Result<(), Error> {
    block_on(async {
        if force && !has_metadata(path).await? {
            let dir = catalog::snapshot_dir(path);
            let (n, kept) = savepoint::delete_partial(dir, &storages()).await?;
            let mut text = format!(
                "{dir} has no _metadata (a savepoint interrupted while it was written): removed its {n} savepoint files"
            );
            if !kept.is_empty() {
                text.push_str(&format!(
                    "; kept {} other files: {}",
                    kept.len(),
                    kept.join(", ")
                ));
            }
            out(&format!("{text}\n"))?;
            return Ok(());
        }
        let point = match RestorePoint::open_for(path, &storages(), Purpose::Dispose).await {
            Ok(p) => p,
            Err(Error::Savepoint { message }) if !force && local_dir_exists(path) => {
                return Err(Error::Savepoint {
                    message: format!(
                        "{message}; a directory without _metadata is a savepoint interrupted while it was written: remove what it left with `weir savepoint dispose --force {path}`"
                    ),
                });
            }
            Err(e) => return Err(e),
        };
        // Its directory as `open` resolved it (a `_metadata` path or a
        // trailing slash stripped).
        let dir = point.location();
        let named_savepoint = dir
            .rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with("savepoint-"));
        if let Manifest::Checkpoint(_) = &point.manifest
            && !named_savepoint
        {
            return Err(Error::Savepoint {
                message: format!(
                    "{dir} is a checkpoint, not a savepoint: Weir manages checkpoints (delete a job's with `weir checkpoints JOB --delete`)"
                ),
            });
        }
        let n = savepoint::delete_snapshot(&dir, &storages()).await?;
        out(&format!(
            "disposed of {} ({n} files): {dir}\n",
            point.manifest.describe()
        ))?;
        Ok(())
    })
}

/// Whether the snapshot directory `path` names has a `_metadata`.
async fn has_metadata(path: &str) -> Result<bool, Error> {
    let dir = catalog::snapshot_dir(path);
    let storages = storages();
    if !dir.contains("://") && !storages.base_dir().join(dir).is_dir() {
        return Ok(true); // let `open_for` say what is missing
    }
    let storage = storages.open(dir)?;
    Ok(storage.exists(catalog::METADATA_FILE).await?)
}

fn local_dir_exists(path: &str) -> bool {
    let dir = catalog::snapshot_dir(path);
    !dir.contains("://") && storages().base_dir().join(dir).is_dir()
}
