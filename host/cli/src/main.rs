//! `weir`: the command line. A thin layer over `weir-host`: parses
//! arguments, shows progress, maps errors to exit codes.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// `println!` that never panics: a closed stdout (`weir checkpoints | head
/// -1`) loses the rest of the output, nothing more.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `eprintln!` that never panics: a closed stderr must not keep `weir run`
/// from obeying a signal or exiting 0.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod savepoint_cmd;
mod serve_cmd;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use weir_host::api::client::{ApiClient, DEFAULT_ADDRESS};
use weir_host::api::targets::SavepointRoots;
use weir_host::api::{self as api, ApiLimits, ApiThread, Jobs, RequestStatus};
use weir_host::error::{Error, Problem};
use weir_host::job::{self, JobGraph, VertexKind};
use weir_host::metrics::JobMetrics;
use weir_host::plugin::PluginEngine;
use weir_host::runtime::{JobControl, Restore, RunOptions, SavepointFormat, StopMode};
use weir_host::savepoint::ClaimMode;
use weir_host::{ErrorKind, runtime};

/// Exit code for a user error (bad job file, failing plugin).
const EXIT_USER: u8 = 2;
/// Exit code for an external failure (file system, storage).
const EXIT_EXTERNAL: u8 = 3;
/// Exit code for an internal error.
const EXIT_INTERNAL: u8 = 1;
/// Exit code for a job cancelled (SIGINT, SIGTERM, `weir cancel`): 128 +
/// SIGINT.
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
        /// Where the job's REST API listens (port 0: any free port).
        #[arg(
            long,
            env = "WEIR_REST_ADDRESS",
            default_value = "127.0.0.1:8081",
            value_name = "ADDR"
        )]
        rest_address: SocketAddr,
        /// Another directory (path or URL) savepoints may be written under
        /// through the REST API, besides the job file's `[savepoints] dir`
        /// (which is the default); repeatable.
        #[arg(long = "savepoint-root", value_name = "DIR")]
        savepoint_roots: Vec<String>,
        /// How many connections the REST API serves at once; beyond, new
        /// ones wait unaccepted.
        #[arg(long, value_name = "N", default_value_t = api::DEFAULT_MAX_CONNECTIONS,
              value_parser = clap::value_parser!(usize))]
        rest_max_connections: usize,
        /// How long a REST client has to send a request's headers (and an
        /// idle connection is kept open), e.g. `10s`, `500ms`.
        #[arg(long, value_name = "DURATION", default_value = "10s",
              value_parser = parse_duration)]
        rest_header_timeout: Duration,
    },
    /// Lists the jobs of a running `weir run` (through its REST API).
    List {
        #[command(flatten)]
        api: ApiAddress,
    },
    /// Takes a savepoint of a running job: `weir savepoint JOB_ID [DIR]`;
    /// or works on savepoints through a subcommand.
    Savepoint(SavepointCommand),
    /// Stops a running job with a savepoint, and prints where it is.
    Stop {
        /// The job's id (see `weir list`), or a unique prefix of it.
        job_id: String,
        /// The directory (path or URL) to create the savepoint under
        /// [default: the job file's `[savepoints] dir`].
        #[arg(long, value_name = "DIR")]
        savepoint_path: Option<String>,
        /// End the input first, so operators flush before the savepoint;
        /// by default the job is suspended as it is, to be resumed.
        #[arg(long)]
        drain: bool,
        /// The savepoint's layout.
        #[arg(long = "type", value_enum, default_value_t = FormatArg::Canonical)]
        format: FormatArg,
        #[command(flatten)]
        api: ApiAddress,
    },
    /// Cancels a running job, without a savepoint.
    Cancel {
        /// The job's id (see `weir list`), or a unique prefix of it.
        job_id: String,
        #[command(flatten)]
        api: ApiAddress,
    },
    /// Lists the job's completed checkpoints in its storage.
    Checkpoints {
        /// The job file (TOML).
        job: PathBuf,
        /// Delete them all, so the job starts from scratch next time
        /// (refused while a run of the job holds its lease).
        #[arg(long)]
        delete: bool,
        /// With --delete: delete even if a run holds the job's lease.
        #[arg(long, requires = "delete")]
        force: bool,
    },
    /// Checks a job file and compiles its plugins, without running it.
    Validate {
        /// The job file (TOML).
        job: PathBuf,
    },
    /// Runs a host for many tenants' jobs, managed over its REST API
    /// (`docs/serve.md`). SIGHUP reloads the config (tenants, tokens,
    /// quotas); SIGINT or SIGTERM stops it, its jobs to resume at the next
    /// start.
    Serve {
        /// The host config (TOML).
        #[arg(long, value_name = "HOST.toml")]
        config: PathBuf,
        /// How many connections the REST API serves at once.
        #[arg(long, value_name = "N", default_value_t = 256)]
        rest_max_connections: usize,
    },
    /// Prints a new tenant token, and the `sha256:` line the host config
    /// takes for it (the config keeps only the hash).
    Token,
    /// Uploads the plugins a job file names to a `weir serve` host, then
    /// submits the job; prints its id.
    Submit {
        /// The job file (TOML); its plugin paths are relative to it.
        job: PathBuf,
        /// Start from this savepoint of the tenant's (its name, as `weir
        /// serve` lists it).
        #[arg(long = "from-savepoint", short = 's', value_name = "NAME")]
        from: Option<String>,
        /// With -s: drop state of uids the job no longer has.
        #[arg(long = "allow-non-restored-state", short = 'n', requires = "from")]
        allow_non_restored: bool,
        /// With -s: `no-claim` keeps the savepoint; `claim` hands it to
        /// the job, which deletes it once subsumed.
        #[arg(long, value_name = "MODE", requires = "from")]
        claim_mode: Option<String>,
        #[command(flatten)]
        api: ApiAddress,
    },
    /// Lists a tenant's savepoints on a `weir serve` host; or inspects or
    /// disposes of one, by name.
    Savepoints {
        #[command(subcommand)]
        action: Option<SavepointsAction>,
        #[command(flatten)]
        api: HostAddress,
    },
    /// Upgrades a job on a `weir serve` host in place: stops it with a
    /// savepoint, restores it into the new plugins, and rolls back to the
    /// old ones if the new ones fail to load, open or restore.
    Upgrade {
        /// The job's id, or a unique prefix of it.
        job_id: String,
        /// `UID=PLUGIN.wasm`: the operator's new plugin; repeatable.
        #[arg(long = "plugin", value_name = "UID=FILE", required = true)]
        plugins: Vec<String>,
        #[command(flatten)]
        api: ApiAddress,
    },
}

/// Where a running job's REST API is.
#[derive(Args)]
struct ApiAddress {
    /// The REST API of the `weir run` (or `weir serve`) to talk to.
    #[arg(long, env = "WEIR_ADDRESS", default_value = DEFAULT_ADDRESS, value_name = "URL")]
    address: String,
    /// A `weir serve` tenant's token.
    #[arg(long, env = "WEIR_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Where a `weir serve` host's API is, for a command with subcommands
/// (before or after them).
#[derive(Args)]
struct HostAddress {
    /// The REST API of the `weir serve` host to talk to.
    #[arg(long, global = true, env = "WEIR_ADDRESS", default_value = DEFAULT_ADDRESS, value_name = "URL")]
    address: String,
    /// A tenant's token.
    #[arg(
        long,
        global = true,
        env = "WEIR_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

impl From<HostAddress> for ApiAddress {
    fn from(h: HostAddress) -> Self {
        ApiAddress {
            address: h.address,
            token: h.token,
        }
    }
}

/// `weir savepoint`: either a job id (take a savepoint) or a subcommand.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct SavepointCommand {
    #[command(subcommand)]
    action: Option<SavepointAction>,
    #[command(flatten)]
    trigger: SavepointTrigger,
}

/// `weir savepoint JOB_ID [DIR]`.
#[derive(Args)]
struct SavepointTrigger {
    /// The job's id (see `weir list`), or a unique prefix of it.
    #[arg(required = true)]
    job_id: Option<String>,
    /// The directory (path or URL) to create the savepoint under
    /// [default: the job file's `[savepoints] dir`].
    target_directory: Option<String>,
    /// The savepoint's layout.
    #[arg(long = "type", value_enum, default_value_t = FormatArg::Canonical)]
    format: FormatArg,
    /// Print the request id at once instead of waiting; poll it with
    /// `weir savepoint status`.
    #[arg(long)]
    detached: bool,
    #[command(flatten)]
    api: ApiAddress,
}

/// What `weir savepoint` does besides taking one.
#[derive(Subcommand)]
enum SavepointAction {
    /// Shows where a savepoint request is: IN_PROGRESS, COMPLETED with its
    /// location, or FAILED with the reason.
    Status {
        /// The job's id, or a unique prefix of it.
        job_id: String,
        /// The request id `weir savepoint --detached` printed.
        request_id: String,
        #[command(flatten)]
        api: ApiAddress,
    },
    /// Reports, without running the job, whether restoring a savepoint (or
    /// checkpoint) into a job would succeed: uids matched, new and
    /// dropped, parallelism changes, and the states each plugin declares
    /// against what the savepoint holds. Exit code 2 if it would fail.
    Check {
        /// The savepoint's directory or its _metadata (path or URL).
        path: String,
        /// The job file to restore into.
        job: PathBuf,
        /// Check as `weir run -n` would restore: dropped state is allowed.
        #[arg(long = "allow-non-restored-state", short = 'n')]
        allow_non_restored: bool,
    },
    /// Shows what a savepoint (or checkpoint) holds: operators, states
    /// with kind, type, keys and bytes, source offsets, sink parts.
    Inspect {
        /// The savepoint's directory or its _metadata (path or URL).
        path: String,
        /// Print the entries of one state as JSON lines instead.
        #[arg(long, value_name = "UID/STATE")]
        dump: Option<String>,
    },
    /// Deletes a savepoint (the files its _metadata references, then its
    /// directory if empty); refuses anything that is not one.
    Dispose {
        /// The savepoint's directory or its _metadata (path or URL).
        path: String,
        /// Also remove what an interrupted savepoint left (a directory
        /// without _metadata): only files that look like a savepoint's.
        #[arg(long)]
        force: bool,
    },
}

/// What `weir savepoints` does besides listing.
#[derive(Subcommand)]
enum SavepointsAction {
    /// What the savepoint holds, as `weir savepoint inspect` shows it.
    Inspect {
        /// Its name, as `weir savepoints` lists it.
        name: String,
    },
    /// Deletes the files its `_metadata` names, then its directory.
    Dispose {
        /// Its name, as `weir savepoints` lists it.
        name: String,
    },
}

/// A savepoint's layout, on the command line.
#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    /// The documented, backend-independent layout.
    Canonical,
    /// The checkpoint layout: faster to take.
    Native,
}

impl From<FormatArg> for SavepointFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Canonical => SavepointFormat::Canonical,
            FormatArg::Native => SavepointFormat::Native,
        }
    }
}

/// How often a waiting command polls a savepoint request.
const POLL: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The broker clients log each connection event (the NATS client at
    // `info`, the Kafka client each retry at `warn`); a job's log is about
    // the job, and a broker that stays away ends in an error naming it. So
    // they speak from `warn` and `error` unless WEIR_LOG names them.
    let mut filter = std::env::var("WEIR_LOG").unwrap_or_else(|_| "info".into());
    for (client, level) in [("async_nats", "warn"), ("rskafka", "error")] {
        if !filter.contains(client) {
            filter.push_str(&format!(",{client}={level}"));
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,async_nats=warn,rskafka=error")
            }),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not in files or pipes.
        .with_ansi(std::io::stderr().is_terminal())
        // A closed stderr loses log lines; reporting that would panic.
        .log_internal_errors(false)
        .with_target(false)
        .init();
    let cache_dir = cli.cache_dir.unwrap_or_else(default_cache_dir);
    let engine = || PluginEngine::new(Some(cache_dir.clone()));
    let result = match cli.command {
        Command::Run {
            job,
            quiet,
            from_latest,
            from,
            allow_non_restored,
            claim_mode,
            rest_address,
            savepoint_roots,
            rest_max_connections,
            rest_header_timeout,
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
            let rest = RestOptions {
                address: rest_address,
                savepoint_roots,
                limits: ApiLimits {
                    max_connections: rest_max_connections.max(1),
                    header_timeout: rest_header_timeout,
                    ..ApiLimits::default()
                },
            };
            engine().and_then(|engine| run(&engine, &job, quiet, options, rest))
        }
        Command::Checkpoints { job, delete, force } => checkpoints(&job, delete, force),
        Command::Validate { job } => engine().and_then(|engine| validate(&engine, &job)),
        Command::List { api } => remote(&api, list),
        Command::Savepoint(SavepointCommand {
            action:
                Some(SavepointAction::Status {
                    job_id,
                    request_id,
                    api,
                }),
            ..
        }) => remote(&api, |client| async move {
            let job_id = client.resolve_job_id(&job_id).await?;
            savepoint_status(client, &job_id, &request_id).await
        }),
        Command::Savepoint(SavepointCommand {
            action:
                Some(SavepointAction::Check {
                    path,
                    job,
                    allow_non_restored,
                }),
            ..
        }) => engine()
            .and_then(|engine| savepoint_cmd::check_cmd(&engine, &path, &job, allow_non_restored)),
        Command::Savepoint(SavepointCommand {
            action: Some(SavepointAction::Inspect { path, dump }),
            ..
        }) => savepoint_cmd::inspect_cmd(&path, dump.as_deref()),
        Command::Savepoint(SavepointCommand {
            action: Some(SavepointAction::Dispose { path, force }),
            ..
        }) => savepoint_cmd::dispose_cmd(&path, force),
        Command::Savepoint(SavepointCommand {
            action: None,
            trigger,
        }) => remote(&trigger.api, |client| savepoint(client, &trigger)),
        Command::Stop {
            job_id,
            savepoint_path,
            drain,
            format,
            api,
        } => remote(&api, |client| async move {
            let job_id = client.resolve_job_id(&job_id).await?;
            let mode = if drain {
                StopMode::Drain
            } else {
                StopMode::Suspend
            };
            let request = client
                .stop(&job_id, savepoint_path.as_deref(), format.into(), mode)
                .await?;
            errln!("stopping job {job_id} with a savepoint (request {request})…");
            let info = client.wait_savepoint(&job_id, &request, POLL).await?;
            outln!("{}", info.location);
            Ok(())
        }),
        Command::Serve {
            config,
            rest_max_connections,
        } => engine().and_then(|engine| serve_cmd::serve(engine, &config, rest_max_connections)),
        Command::Token => {
            let (token, hash) = weir_host::serve::config::new_token();
            errln!("the token (give it to the tenant; the host keeps only its hash):");
            outln!("{token}");
            errln!("the line for the tenant's `tokens` in the host config:");
            outln!("\"{hash}\"");
            Ok(())
        }
        Command::Submit {
            job,
            from,
            allow_non_restored,
            claim_mode,
            api,
        } => remote(&api, |client| async move {
            serve_cmd::submit(&client, &job, from, allow_non_restored, claim_mode).await
        }),
        Command::Savepoints { action, api } => remote(&api.into(), |client| async move {
            match action {
                None => {
                    for s in client.savepoints().await? {
                        outln!("{}\t{}\t{}", s.name, s.size, s.time);
                    }
                }
                Some(SavepointsAction::Inspect { name }) => {
                    outln!("{}", client.inspect_savepoint(&name).await?.trim_end());
                }
                Some(SavepointsAction::Dispose { name }) => {
                    let n = client.dispose_savepoint(&name).await?;
                    errln!("disposed of savepoint {name}: {n} file(s) deleted");
                }
            }
            Ok(())
        }),
        Command::Upgrade {
            job_id,
            plugins,
            api,
        } => remote(&api, |client| async move {
            let job_id = client.resolve_job_id(&job_id).await?;
            serve_cmd::upgrade(&client, &job_id, &plugins).await
        }),
        Command::Cancel { job_id, api } => remote(&api, |client| async move {
            let job_id = client.resolve_job_id(&job_id).await?;
            let job = client.cancel(&job_id).await?;
            outln!("job `{}` ({}) is {}", job.name, job.id, job.state);
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("error: {e}");
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

/// How `weir run` serves its REST API.
struct RestOptions {
    address: SocketAddr,
    /// Besides the job file's `[savepoints] dir`.
    savepoint_roots: Vec<String>,
    limits: ApiLimits,
}

/// Parses a duration such as `10s` or `500ms`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e}"))
}

fn run(
    engine: &PluginEngine,
    path: &Path,
    quiet: bool,
    options: RunOptions,
    rest: RestOptions,
) -> Result<(), Error> {
    let graph = job::load(path)?;
    let roots = SavepointRoots::new(
        graph
            .savepoint_dir
            .iter()
            .chain(&rest.savepoint_roots)
            .map(String::as_str),
        &graph.job_dir,
    )
    .map_err(|e| Error::Savepoint {
        message: format!("{e} (from `[savepoints] dir` or --savepoint-root)"),
    })?;
    let metrics = JobMetrics::for_graph(&graph);
    let cancel = Arc::new(AtomicBool::new(false));
    let control = JobControl::new(&graph.name, metrics.clone(), cancel.clone());
    let storages = savepoint_cmd::storages();
    // One run of a job at a time owns its checkpoints.
    let storage = graph
        .checkpoints
        .enabled()
        .then(|| {
            storages
                .relative_to(&graph.job_dir)
                .open(&graph.checkpoints.storage)
        })
        .transpose()?;
    let lease = if let Some(storage) = &storage {
        let lost = |e: Error| {
            // Another run owns the checkpoints now: stop at once, as a
            // crash would, touching nothing more.
            eprintln!("error: {e}");
            std::process::exit(i32::from(EXIT_EXTERNAL));
        };
        Some(weir_host::checkpoint::lease::LeaseKeeper::start(
            storage,
            &graph.name,
            control.id().as_str(),
            lost,
        )?)
    } else {
        None
    };
    let jobs = Jobs::new();
    jobs.insert(control.clone(), roots);
    let api = ApiThread::start_with(rest.address, jobs.clone(), rest.limits)?;
    // One line, always: scripts and tests read the address from it.
    errln!(
        "job `{}` (id {}): REST API on http://{}",
        graph.name,
        control.id(),
        api.local_addr()
    );
    let done = Arc::new(AtomicBool::new(false));
    let progress = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let (metrics, done) = (metrics.clone(), done.clone());
        let graph = graph.clone();
        std::thread::spawn(move || show_progress(&graph, &metrics, &done))
    });
    on_signal(control.clone());
    let options = RunOptions {
        job_file: Some(path.to_owned()),
        cancel: Some(cancel),
        control: Some(control.clone()),
        storages: Some(storages),
        storage,
        ..options
    };
    let result = runtime::run_with(&graph, engine, metrics.clone(), &options);
    if let Some(lease) = lease {
        lease.stop();
    }
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    // After any stop's outcome reached its client (see ApiServer::shutdown).
    api.shutdown();
    let report = result?;
    if let Some(savepoint) = &report.stopped_with {
        errln!(
            "job `{}` stopped with savepoint {}: resume with `weir run {} -s {}`",
            graph.name,
            savepoint.location,
            path.display(),
            savepoint.location
        );
    }
    if !quiet {
        let mut how = String::new();
        if let Some(id) = report.restored_from {
            how.push_str(&format!(", restored from snapshot {id}"));
        }
        if report.restarts > 0 {
            how.push_str(&format!(", after {} restart(s)", report.restarts));
        }
        if let Some(id) = metrics.last_checkpoint() {
            how.push_str(&format!(", last checkpoint {id}"));
        }
        errln!(
            "job `{}` finished in {:.2?}{how}",
            graph.name,
            report.elapsed
        );
        for (v, (uid, r_in, r_out)) in graph.vertices.iter().zip(&report.vertices) {
            let written = match &v.kind {
                VertexKind::FileSink { dir } => format!(" → {}", dir.display()),
                _ => String::new(),
            };
            errln!("  {uid:<16} in {r_in:>12}  out {r_out:>12}{written}");
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
    outln!(
        "{}: ok: job `{}` with {} vertices, {plugins} plugins compiled",
        path.display(),
        graph.name,
        graph.vertices.len()
    );
    Ok(())
}

/// `weir checkpoints`: one line per checkpoint directory of the job.
fn checkpoints(path: &Path, delete: bool, force: bool) -> Result<(), Error> {
    use weir_host::checkpoint::catalog::{self, Status, human_bytes};
    let graph = job::load(path)?;
    let storage = savepoint_cmd::storages()
        .relative_to(&graph.job_dir)
        .open(&graph.checkpoints.storage)?;
    let io = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("starting the I/O runtime: {e}")))?;
    let location = storage.location(&graph.name);
    if delete {
        if !force {
            io.block_on(weir_host::checkpoint::lease::ensure_free(
                &storage,
                &graph.name,
            ))?;
        }
        let n = io.block_on(storage.delete_prefix(&graph.name))?;
        outln!("deleted {n} files of job `{}` in {location}", graph.name);
        return Ok(());
    }
    let listed = io.block_on(catalog::scan(&storage, &graph.name))?;
    if listed.is_empty() {
        outln!("job `{}` has no checkpoints in {location}", graph.name);
        return Ok(());
    }
    outln!("checkpoints of job `{}` in {location}:", graph.name);
    outln!(
        "{:>6}  {:<24}  {:>10}  {:>10}  {:>9}  {:>9}  {:>9}  status",
        "id",
        "triggered (UTC)",
        "size",
        "duration",
        "sync",
        "async",
        "align"
    );
    for l in listed {
        match l.status {
            Status::Completed(m) => {
                let triggered = humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + Duration::from_millis(m.trigger_time_ms),
                );
                outln!(
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
                        outln!("{:>8}{:<22} {:>10}", "", v.uid, human_bytes(v.bytes()));
                    }
                }
            }
            Status::Incomplete => outln!(
                "{:>6}  {:<24}  {:>10}  {:>10}  {:>9}  {:>9}  {:>9}  incomplete (no _metadata)",
                l.id,
                "-",
                "-",
                "-",
                "-",
                "-",
                "-"
            ),
            Status::Corrupt(why) => outln!(
                "{:>6}  {:<24}  {:>10}  {:>10}  {:>9}  {:>9}  {:>9}  corrupt: {why}",
                l.id,
                "-",
                "-",
                "-",
                "-",
                "-",
                "-"
            ),
        }
    }
    Ok(())
}

/// Runs `command` against the REST API at `api` on a small tokio runtime.
fn remote<F, Fut>(api: &ApiAddress, command: F) -> Result<(), Error>
where
    F: FnOnce(ApiClient) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let client = ApiClient::new(&api.address)?.with_token(api.token.clone());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("starting the HTTP client runtime: {e}")))?
        .block_on(command(client))
}

/// `weir list`: one line per job.
async fn list(client: ApiClient) -> Result<(), Error> {
    let jobs = client.jobs().await?;
    if jobs.is_empty() {
        outln!("no jobs at {}", client.address());
        return Ok(());
    }
    let name_width = jobs.iter().map(|j| j.name.len()).max().unwrap_or(0).max(4);
    outln!(
        "{:<32}  {:<name_width$}  {:<10}  {:>12}  LAST CHECKPOINT",
        "ID",
        "NAME",
        "STATE",
        "UPTIME"
    );
    for j in jobs {
        let uptime = humantime::format_duration(Duration::from_secs(j.uptime_ms / 1000));
        outln!(
            "{:<32}  {:<name_width$}  {:<10}  {:>12}  {}",
            j.id,
            j.name,
            j.state,
            uptime.to_string(),
            j.last_checkpoint
                .map_or("-".to_owned(), |id| id.to_string())
        );
    }
    Ok(())
}

/// `weir savepoint JOB_ID [DIR]`: prints the savepoint's location, or the
/// request id with `--detached`.
async fn savepoint(client: ApiClient, trigger: &SavepointTrigger) -> Result<(), Error> {
    let job_id = trigger
        .job_id
        .as_deref()
        .expect("invariant: clap requires JOB_ID without a subcommand");
    let job_id = &client.resolve_job_id(job_id).await?;
    let request = client
        .trigger_savepoint(
            job_id,
            trigger.target_directory.as_deref(),
            trigger.format.into(),
        )
        .await?;
    if trigger.detached {
        errln!(
            "savepoint requested; see where it is with `weir savepoint status {job_id} {request}`"
        );
        outln!("{request}");
        return Ok(());
    }
    errln!("taking a savepoint of job {job_id} (request {request})…");
    let info = client.wait_savepoint(job_id, &request, POLL).await?;
    outln!("{}", info.location);
    Ok(())
}

/// `weir savepoint status`: `IN_PROGRESS`, `COMPLETED <location>` or
/// `FAILED <reason>`.
async fn savepoint_status(client: ApiClient, job_id: &str, request: &str) -> Result<(), Error> {
    let status = client.savepoint_status(job_id, request).await?;
    match status.status {
        RequestStatus::InProgress => outln!("IN_PROGRESS"),
        RequestStatus::Completed => outln!(
            "COMPLETED {}",
            status.location.as_deref().unwrap_or_default()
        ),
        RequestStatus::Failed => {
            outln!("FAILED {}", status.failure.as_deref().unwrap_or_default())
        }
    }
    Ok(())
}

/// Cancels the job on the first SIGINT or SIGTERM, so it stops cleanly
/// (checkpoints kept or deleted as the job file says); a second signal
/// exits at once.
fn on_signal(control: JobControl) {
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
            // The cancel first: nothing printed may stand in its way.
            control.cancel();
            errln!("cancelling (again to exit at once)");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            std::process::exit(i32::from(EXIT_CANCELLED));
        });
    });
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("weir").chain(args.iter().copied())).map(|c| c.command)
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn savepoint_takes_a_job_id_or_a_subcommand() {
        let Command::Savepoint(SavepointCommand {
            action: None,
            trigger,
        }) = parse(&["savepoint", "abc", "/sp", "--type", "native", "--detached"]).unwrap()
        else {
            panic!("a job id triggers a savepoint");
        };
        assert_eq!(trigger.job_id.as_deref(), Some("abc"));
        assert_eq!(trigger.target_directory.as_deref(), Some("/sp"));
        assert!(matches!(trigger.format, FormatArg::Native));
        assert!(trigger.detached);

        let Command::Savepoint(SavepointCommand {
            action:
                Some(SavepointAction::Status {
                    job_id,
                    request_id,
                    api,
                }),
            ..
        }) = parse(&["savepoint", "status", "abc", "r1", "--address", "h:1"]).unwrap()
        else {
            panic!("`status` is a subcommand");
        };
        assert_eq!((job_id.as_str(), request_id.as_str()), ("abc", "r1"));
        assert_eq!(api.address, "h:1");

        let missing = parse(&["savepoint"]).err().unwrap();
        assert_eq!(
            missing.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn stop_defaults_to_a_canonical_suspend() {
        let Command::Stop {
            job_id,
            savepoint_path,
            drain,
            format,
            ..
        } = parse(&["stop", "abc"]).unwrap()
        else {
            panic!("stop parses");
        };
        assert_eq!(job_id, "abc");
        assert_eq!(savepoint_path, None);
        assert!(!drain);
        assert!(matches!(format, FormatArg::Canonical));
    }
}
