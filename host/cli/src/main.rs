//! `weir`: the command line. A thin layer over `weir-host`: parses
//! arguments, shows progress, maps errors to exit codes.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use weir_host::error::{Error, Problem};
use weir_host::job::{self, JobGraph, VertexKind};
use weir_host::metrics::JobMetrics;
use weir_host::plugin::PluginEngine;
use weir_host::runtime::{Restore, RunOptions};
use weir_host::savepoint::ClaimMode;
use weir_host::{ErrorKind, runtime};

/// Exit code for a user error (bad job file, failing plugin).
const EXIT_USER: u8 = 2;
/// Exit code for an external failure (file system, storage).
const EXIT_EXTERNAL: u8 = 3;
/// Exit code for an internal error.
const EXIT_INTERNAL: u8 = 1;
/// Exit code for a job cancelled by SIGINT or SIGTERM (128 + SIGINT).
const EXIT_CANCELLED: u8 = 130;

/// Weir runs stream jobs whose operators are WebAssembly components.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where compiled plugins are cached [default: $WEIR_CACHE_DIR, else
    /// $XDG_CACHE_HOME/weir, else ~/.cache/weir].
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a job until its input ends.
    Run {
        /// The job file (TOML).
        job: PathBuf,
        /// Do not show progress or the final summary.
        #[arg(long, short)]
        quiet: bool,
        /// Resume from the latest completed checkpoint of this job in its
        /// storage (from scratch if there is none).
        #[arg(long, conflicts_with = "from")]
        from_latest: bool,
        /// Restore from this savepoint or checkpoint: its directory
        /// (savepoint-<job>-<id>, chk-<n>) or its _metadata file, a local
        /// path or a storage URL. State is matched to operators by uid, at
        /// any parallelism.
        #[arg(
            long = "from-savepoint",
            visible_alias = "from-checkpoint",
            short = 's',
            value_name = "PATH"
        )]
        from: Option<String>,
        /// With -s: restore even if the snapshot holds state of uids the
        /// job no longer has (that state is dropped and reported).
        #[arg(long = "allow-non-restored-state", short = 'n', requires = "from")]
        allow_non_restored: bool,
        /// With -s: `no-claim` never modifies or deletes the snapshot;
        /// `claim` hands it to the run, which deletes it once subsumed.
        #[arg(
            long,
            value_name = "MODE",
            default_value = "no-claim",
            requires = "from"
        )]
        claim_mode: ClaimMode,
    },
    /// Lists the job's completed checkpoints in its storage.
    Checkpoints {
        /// The job file (TOML).
        job: PathBuf,
        /// Delete them all, so the job starts from scratch next time.
        #[arg(long)]
        delete: bool,
    },
    /// Checks a job file and compiles its plugins, without running it.
    Validate {
        /// The job file (TOML).
        job: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let result = PluginEngine::new(Some(cli.cache_dir.unwrap_or_else(default_cache_dir))).and_then(
        |engine| match cli.command {
            Command::Run {
                job,
                quiet,
                from_latest,
                from,
                allow_non_restored,
                claim_mode,
            } => {
                let restore = match (from_latest, from) {
                    (_, Some(path)) => Restore::From(path),
                    (true, None) => Restore::Latest,
                    (false, None) => Restore::Fresh,
                };
                let options = RunOptions {
                    restore,
                    allow_non_restored,
                    claim_mode,
                    ..RunOptions::default()
                };
                run(&engine, &job, quiet, options)
            }
            Command::Checkpoints { job, delete } => checkpoints(&job, delete),
            Command::Validate { job } => validate(&engine, &job),
        },
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(match e.kind() {
                ErrorKind::User => EXIT_USER,
                ErrorKind::External => EXIT_EXTERNAL,
                ErrorKind::Internal => EXIT_INTERNAL,
                ErrorKind::Cancelled => EXIT_CANCELLED,
            })
        }
    }
}

fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEIR_CACHE_DIR") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Path::new(&dir).join("weir");
    }
    match std::env::var_os("HOME") {
        Some(home) => Path::new(&home).join(".cache").join("weir"),
        None => std::env::temp_dir().join("weir-cache"),
    }
}

fn run(engine: &PluginEngine, path: &Path, quiet: bool, options: RunOptions) -> Result<(), Error> {
    let graph = job::load(path)?;
    let metrics = JobMetrics::for_graph(&graph);
    let done = Arc::new(AtomicBool::new(false));
    let progress = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let (metrics, done) = (metrics.clone(), done.clone());
        let graph = graph.clone();
        std::thread::spawn(move || show_progress(&graph, &metrics, &done))
    });
    let cancel = Arc::new(AtomicBool::new(false));
    on_signal(cancel.clone());
    let options = RunOptions {
        job_file: Some(path.to_owned()),
        cancel: Some(cancel),
        ..options
    };
    let result = runtime::run_with(&graph, engine, metrics.clone(), &options);
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let report = result?;
    if !quiet {
        let mut how = String::new();
        if let Some(id) = report.restored_from {
            how.push_str(&format!(", restored from checkpoint {id}"));
        }
        if report.restarts > 0 {
            how.push_str(&format!(", after {} restart(s)", report.restarts));
        }
        if let Some(id) = metrics.last_checkpoint() {
            how.push_str(&format!(", last checkpoint {id}"));
        }
        if let Some(sp) = &report.stopped_with {
            how.push_str(&format!(", stopped with savepoint {}", sp.location));
        }
        eprintln!(
            "job `{}` finished in {:.2?}{how}",
            graph.name, report.elapsed
        );
        for (v, (uid, r_in, r_out)) in graph.vertices.iter().zip(&report.vertices) {
            let written = match &v.kind {
                VertexKind::FileSink { dir } => format!(" → {}", dir.display()),
                _ => String::new(),
            };
            eprintln!("  {uid:<16} in {r_in:>12}  out {r_out:>12}{written}");
        }
    }
    Ok(())
}

/// Draws one line per vertex: records in and out, and the current rate.
fn show_progress(graph: &JobGraph, metrics: &JobMetrics, done: &AtomicBool) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    let style = ProgressStyle::with_template("{spinner} {msg}")
        .expect("invariant: the progress template is valid");
    let bars: Vec<ProgressBar> = graph
        .vertices
        .iter()
        .map(|_| multi.add(ProgressBar::new_spinner().with_style(style.clone())))
        .collect();
    let status = multi.add(ProgressBar::new_spinner().with_style(style.clone()));
    let mut last: Vec<u64> = vec![0; bars.len()];
    let mut last_at = Instant::now();
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(250));
        let dt = last_at.elapsed().as_secs_f64().max(1e-3);
        last_at = Instant::now();
        for (i, (bar, m)) in bars.iter().zip(&metrics.vertices).enumerate() {
            let (r_in, r_out) = (m.records_in(), m.records_out());
            let rate = (r_out - last[i]) as f64 / dt;
            last[i] = r_out;
            bar.set_message(format!(
                "{:<16} in {r_in:>12}  out {r_out:>12}  {rate:>12.0} rec/s",
                m.uid
            ));
            bar.tick();
        }
        if graph.checkpoints.enabled() {
            status.set_message(match metrics.last_checkpoint() {
                Some(id) => format!("last completed checkpoint: {id}"),
                None => "no checkpoint completed yet".to_owned(),
            });
            status.tick();
        }
    }
    status.finish_and_clear();
    for bar in bars {
        bar.finish_and_clear();
    }
}

fn validate(engine: &PluginEngine, path: &Path) -> Result<(), Error> {
    let graph = job::load(path)?;
    let mut plugins = 0;
    let mut problems = Vec::new();
    for v in &graph.vertices {
        if let VertexKind::Operator { plugin, .. } = &v.kind {
            match engine.load(&v.uid, plugin) {
                Ok(_) => plugins += 1,
                // Report every failing plugin at once, like the job file's
                // own problems.
                Err(Error::Plugin {
                    uid,
                    plugin,
                    message,
                }) => problems.push(Problem {
                    field: format!("operator `{uid}`"),
                    message: format!("plugin {}: {message}", plugin.display()),
                }),
                Err(other) => return Err(other),
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::InvalidJob {
            path: path.to_owned(),
            problems,
        });
    }
    println!(
        "{}: ok: job `{}` with {} vertices, {plugins} plugins compiled",
        path.display(),
        graph.name,
        graph.vertices.len()
    );
    Ok(())
}

/// `weir checkpoints`: one line per checkpoint directory of the job.
fn checkpoints(path: &Path, delete: bool) -> Result<(), Error> {
    use weir_host::checkpoint::catalog::{self, Status, human_bytes};
    use weir_host::checkpoint::storage::CheckpointStorage;
    let graph = job::load(path)?;
    let storage = CheckpointStorage::open(&graph.checkpoints.storage, &graph.job_dir)?;
    let io = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("starting the I/O runtime: {e}")))?;
    let location = storage.location(&graph.name);
    if delete {
        let n = io.block_on(storage.delete_prefix(&graph.name))?;
        println!("deleted {n} files of job `{}` in {location}", graph.name);
        return Ok(());
    }
    let listed = io.block_on(catalog::scan(&storage, &graph.name))?;
    if listed.is_empty() {
        println!("job `{}` has no checkpoints in {location}", graph.name);
        return Ok(());
    }
    println!("checkpoints of job `{}` in {location}:", graph.name);
    println!(
        "{:>6}  {:<24}  {:>10}  {:>10}  {:>9}  {:>9}  {:>9}  status",
        "id", "triggered (UTC)", "size", "duration", "sync", "async", "align"
    );
    for l in listed {
        match l.status {
            Status::Completed(m) => {
                let triggered = humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + Duration::from_millis(m.trigger_time_ms),
                );
                println!(
                    "{:>6}  {:<24}  {:>10}  {:>8}ms  {:>7.1}ms  {:>7.1}ms  {:>7.1}ms  completed{}",
                    l.id,
                    triggered.to_string(),
                    human_bytes(m.total_bytes()),
                    m.duration_ms(),
                    m.slowest(|s| s.sync_ms),
                    m.slowest(|s| s.async_ms),
                    m.slowest(|s| s.alignment_ms),
                    if m.is_final { " (final)" } else { "" }
                );
                for v in &m.vertices {
                    if v.bytes() > 0 {
                        println!("{:>8}{:<22} {:>10}", "", v.uid, human_bytes(v.bytes()));
                    }
                }
            }
            Status::Incomplete => println!(
                "{:>6}  {:<24}  {:>10}  {:>10}  {:>9}  {:>9}  {:>9}  incomplete (no _metadata)",
                l.id, "-", "-", "-", "-", "-", "-"
            ),
            Status::Corrupt(why) => println!(
                "{:>6}  {:<24}  {:>10}  {:>10}  {:>9}  {:>9}  {:>9}  corrupt: {why}",
                l.id, "-", "-", "-", "-", "-", "-"
            ),
        }
    }
    Ok(())
}

/// Sets `cancel` on the first SIGINT or SIGTERM, so the job stops cleanly
/// (checkpoints kept or deleted as the job file says); a second signal
/// exits at once.
fn on_signal(cancel: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("cancelling (again to exit at once)");
            cancel.store(true, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            std::process::exit(i32::from(EXIT_CANCELLED));
        });
    });
}
