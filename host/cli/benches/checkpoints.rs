//! Checkpoint benchmarks on the word-count pipeline (datagen → tokenize →
//! key by word → count, the Wasm plugins, every vertex at parallelism 1),
//! checkpoints stored in a local temporary directory by the real runtime:
//!
//! 1. `throughput`: the count's rate with a checkpoint every second against
//!    none, at 1,000,000 distinct words, and the checkpoints' figures;
//! 2. `sizes`: a checkpoint's duration, synchronous and asynchronous phases
//!    and bytes once the count holds 10k, 1M and 10M keys, beside a deep
//!    copy and encoding of a state backend holding as many keys;
//! 3. `restore`: from `run_with(.., Restore::Latest)` to the first record
//!    the count processed, from a checkpoint of 1M keys, and its parts;
//! 4. `backpressure`: aligned against unaligned checkpoints behind a stage
//!    that passes a fixed number of records per second (a slow sink).
//!
//! Run with `cargo bench -p weir --bench checkpoints`. Environment:
//! `WEIR_BENCH_ONLY` (comma-separated parts, default all),
//! `WEIR_BENCH_QUICK=1` (small sizes, a smoke test of a minute or so),
//! `WEIR_BENCH_RUNS` (runs per throughput median, default 3),
//! `WEIR_BENCH_LINES` (throughput lines of 10 words, default 5,000,000),
//! `WEIR_BENCH_KEYS` (sizes, default `10000,1000000,10000000`),
//! `WEIR_BENCH_RESTORE_KEYS` (default 1,000,000),
//! `WEIR_BENCH_SLOW_RATE` (records/s the slow stage passes, default
//! 100,000), `WEIR_BENCH_SECONDS` (backpressure run length, default 20),
//! `WEIR_LOG` (log filter, default `info`: one line per checkpoint).
//! Prints Markdown tables; BENCHMARKS.md records the results.
//!
//! Jobs without an end (parts 2–4) stop through [`Stage`], a native
//! operator the bench puts after the count: once the bench raises its flag
//! it fails the job, and a failed job keeps its checkpoints for the bench
//! to read (and to restore from). A finished job deletes its checkpoints,
//! so part 1 reads each `_metadata` from another thread while the job runs.

#[allow(
    dead_code,
    reason = "this bench uses the pipeline graph and env helpers, not the rate and instantiation helpers"
)]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use weir_format::{BatchReader, BatchWriter};
use weir_host::checkpoint::coordinator::CheckpointConfig;
use weir_host::checkpoint::format::{
    CheckpointMetadata, SubtaskSnapshot, decode_metadata, decode_state_file,
    decode_state_file_with_deltas, encode_state_file, merge_chain,
};
use weir_host::connectors::DatagenSource;
use weir_host::job::{DatagenSpec, Edge, JobGraph, Limits, Partition, Vertex, VertexKind};
use weir_host::keygroup::{KeyGroupRange, key_group_of};
use weir_host::metrics::JobMetrics;
use weir_host::native::{NativeOperator, NativeOperatorFactory};
use weir_host::plugin::PluginEngine;
use weir_host::runtime::{self, Restore, RunOptions};
use weir_host::state::{KeyedStateBackend, MemoryStateBackend, Update, Value};

use common::{WORDS_PER_LINE, env_or, peak_rss_mib, pipeline, reset_peak_rss};

/// The job's name: its checkpoints live in `<storage>/bench/chk-<n>`.
const JOB: &str = "bench";
/// The count vertex's index in every graph here.
const COUNT: usize = 2;
/// What [`Stage`] fails the job with, to tell its stop from a real failure.
const STOPPED: &str = "stopped by the benchmark";
/// Time between periodic checkpoints.
const INTERVAL: Duration = Duration::from_secs(1);
/// The count's limits. Between two checkpoints the word-count plugin keeps
/// every key it touched in its guest cache (dirty until `snapshot`); at 10M
/// keys and multi-second checkpoints that approaches the benches' usual
/// 1 GiB, and a trap there would measure nothing.
const COUNT_LIMITS: Limits = Limits {
    memory_bytes: 3 << 30,
    fuel_per_call: 10_000_000_000,
    // Benchmarks hold more state than a default job may.
    state_bytes: 1 << 40,
    job_memory_bytes: 1 << 40,
    ..Limits::DEFAULT
};

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let quick = env_or("WEIR_BENCH_QUICK", 0u8) == 1;
    let only: String = env_or("WEIR_BENCH_ONLY", String::new());
    let wanted = |part: &str| only.is_empty() || only.split(',').any(|p| p.trim() == part);
    let cache = tempfile::tempdir()?;
    // Shared with the threads that run the jobs.
    let engine = Arc::new(PluginEngine::new(Some(cache.path().to_owned()))?);
    // Compile once, so no run below pays for it.
    for p in [weir_test_plugins::TOKENIZE, weir_test_plugins::WORD_COUNT] {
        engine.load("bench", p.as_ref())?;
    }

    if wanted("throughput") {
        let lines: u64 = env_or("WEIR_BENCH_LINES", if quick { 200_000 } else { 5_000_000 });
        let keys = if quick { 100_000 } else { 1_000_000 };
        let runs: usize = env_or("WEIR_BENCH_RUNS", if quick { 1 } else { 3 });
        throughput(&engine, lines, keys, runs)?;
    }
    if wanted("incremental") {
        let keys = env_or(
            "WEIR_BENCH_INCREMENTAL_KEYS",
            if quick { 100_000 } else { 10_000_000 },
        );
        incremental(&engine, keys, 6)?;
    }
    if wanted("sizes") {
        let default = if quick {
            "1000,10000,100000"
        } else {
            "10000,1000000,10000000"
        };
        let keys: String = env_or("WEIR_BENCH_KEYS", default.to_owned());
        let keys: Vec<u64> = keys
            .split(',')
            .map(|k| {
                k.trim()
                    .parse()
                    .context("WEIR_BENCH_KEYS: a list of numbers")
            })
            .collect::<Result<_>>()?;
        sizes(&engine, &keys)?;
    }
    if wanted("restore") {
        let keys = env_or(
            "WEIR_BENCH_RESTORE_KEYS",
            if quick { 100_000 } else { 1_000_000 },
        );
        restore(&engine, keys)?;
    }
    if wanted("backpressure") {
        let rate: f64 = env_or("WEIR_BENCH_SLOW_RATE", 100_000.0);
        let seconds: u64 = env_or("WEIR_BENCH_SECONDS", if quick { 5 } else { 20 });
        backpressure(&engine, rate, Duration::from_secs(seconds))?;
    }
    Ok(())
}

// ---- the job ----

/// A native operator after the count that emits nothing. It fails the job
/// once `stop` is raised and, with a `rate`, passes at most that many
/// records per second, backpressuring everything upstream.
#[derive(Clone)]
struct Stage {
    stop: Arc<AtomicBool>,
    rate: Option<f64>,
}

impl Stage {
    fn new(rate: Option<f64>) -> Self {
        Self {
            stop: Arc::default(),
            rate,
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct StageInstance {
    stage: Stage,
    /// When the first batch came, and records seen since: the pace.
    started: Option<Instant>,
    seen: u64,
}

impl NativeOperatorFactory for Stage {
    fn name(&self) -> &str {
        "bench-stage"
    }

    fn create(&self) -> Box<dyn NativeOperator> {
        Box::new(StageInstance {
            stage: self.clone(),
            started: None,
            seen: 0,
        })
    }
}

impl NativeOperator for StageInstance {
    fn process(
        &mut self,
        batch: &[u8],
        _: &mut dyn KeyedStateBackend,
        _: u32,
        _: &mut BatchWriter,
    ) -> Result<(), String> {
        if self.stage.stop.load(Ordering::Relaxed) {
            return Err(STOPPED.into());
        }
        if let Some(rate) = self.stage.rate {
            let started = *self.started.get_or_insert_with(Instant::now);
            self.seen += BatchReader::new(batch).count() as u64;
            let due = Duration::from_secs_f64(self.seen as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        Ok(())
    }
}

fn datagen(records: Option<u64>, vocabulary: u64) -> DatagenSpec {
    DatagenSpec {
        seed: 42,
        records,
        rate: None,
        vocabulary,
        words_per_record: WORDS_PER_LINE,
    }
}

/// Checkpoints every [`INTERVAL`] into `storage`, keeping `retained`,
/// incremental or whole.
fn checkpoints(
    storage: &Path,
    retained: u32,
    unaligned: bool,
    incremental: bool,
) -> CheckpointConfig {
    CheckpointConfig {
        interval: Some(INTERVAL),
        storage: storage.display().to_string(),
        retained,
        unaligned,
        incremental,
        ..Default::default()
    }
}

/// [`common::pipeline`] with `spec` as its source and `config`'s
/// checkpoints, and `stage` (if any) between the count and the sink.
fn graph(spec: DatagenSpec, stage: Option<&Stage>, config: CheckpointConfig) -> JobGraph {
    let wasm = |plugin: &str, limits| VertexKind::Operator {
        plugin: plugin.into(),
        config: String::new(),
        limits,
    };
    let mut g = pipeline(
        0,
        wasm(weir_test_plugins::TOKENIZE, common::LIMITS),
        wasm(weir_test_plugins::WORD_COUNT, COUNT_LIMITS),
    );
    g.name = JOB.into();
    g.vertices[0].kind = VertexKind::Datagen(spec);
    if let Some(stage) = stage {
        let at = g.vertices.len() - 1;
        g.vertices.insert(
            at,
            Vertex {
                uid: "stage".into(),
                parallelism: 1,
                kind: VertexKind::Native(Arc::new(stage.clone())),
                watermarks: None,
                inputs: vec![Edge {
                    from: COUNT,
                    partition: Partition::Forward,
                }],
            },
        );
        g.vertices[at + 1].inputs[0].from = at;
    }
    g.job_dir = PathBuf::from(&config.storage);
    g.checkpoints = config;
    g
}

/// Runs `graph` on its own thread.
fn spawn_run(
    engine: &Arc<PluginEngine>,
    graph: &JobGraph,
    metrics: &Arc<JobMetrics>,
    restore: Restore,
) -> JoinHandle<Result<runtime::RunReport, weir_host::Error>> {
    let (engine, graph, metrics) = (engine.clone(), graph.clone(), metrics.clone());
    std::thread::spawn(move || {
        let options = RunOptions {
            restore,
            ..RunOptions::default()
        };
        runtime::run_with(&graph, &engine, metrics, &options)
    })
}

/// Waits for a job that [`Stage`] stopped; any other ending is an error.
fn join_stopped(run: JoinHandle<Result<runtime::RunReport, weir_host::Error>>) -> Result<()> {
    match run.join().expect("invariant: run_with does not panic") {
        Err(e) if e.to_string().contains(STOPPED) => Ok(()),
        Err(e) => Err(e).context("the job failed"),
        Ok(_) => bail!("the job ended before the bench stopped it"),
    }
}

/// Polls `until` every millisecond while `run` is alive; false if the job
/// ended first.
fn wait_for(
    run: &JoinHandle<Result<runtime::RunReport, weir_host::Error>>,
    mut until: impl FnMut() -> bool,
) -> bool {
    loop {
        if until() {
            return true;
        }
        if run.is_finished() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---- reading checkpoints ----

/// Every completed checkpoint under `storage` (`<job>/chk-<n>/_metadata`)
/// not already in `into`. A `_metadata` being written is skipped (it is
/// written atomically, but a half-read one fails to decode) and read at
/// the next scan.
fn scan(storage: &Path, into: &mut BTreeMap<u64, CheckpointMetadata>) {
    let Ok(chks) = std::fs::read_dir(storage.join(JOB)) else {
        return;
    };
    for chk in chks.flatten() {
        let name = chk.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix("chk-"))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        if into.contains_key(&id) {
            continue;
        }
        let path = chk.path().join("_metadata");
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(m) = decode_metadata(&path.display().to_string(), &bytes)
        {
            into.insert(id, m);
        }
    }
}

/// Reads completed checkpoints' metadata from another thread while a job
/// runs, every 20 ms: a finished job deletes them, subsumption too.
struct Watcher {
    done: Arc<AtomicBool>,
    handle: JoinHandle<BTreeMap<u64, CheckpointMetadata>>,
}

impl Watcher {
    fn start(storage: &Path) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let (flag, storage) = (done.clone(), storage.to_owned());
        let handle = std::thread::spawn(move || {
            let mut seen = BTreeMap::new();
            while !flag.load(Ordering::Relaxed) {
                scan(&storage, &mut seen);
                std::thread::sleep(Duration::from_millis(20));
            }
            scan(&storage, &mut seen);
            seen
        });
        Self { done, handle }
    }

    fn finish(self) -> BTreeMap<u64, CheckpointMetadata> {
        self.done.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .expect("invariant: the watcher does not panic")
    }
}

/// One checkpoint's figures, as the runtime logs them: the slowest
/// subtask's phases.
#[derive(Debug, Clone, Copy)]
struct Figures {
    total_ms: f64,
    sync_ms: f64,
    async_ms: f64,
    alignment_ms: f64,
    bytes: f64,
}

impl Figures {
    fn of(m: &CheckpointMetadata) -> Self {
        let subtasks = || m.vertices.iter().flat_map(|v| &v.subtasks);
        let max = |f: fn(&weir_host::checkpoint::format::SubtaskMetadata) -> f64| {
            subtasks().map(f).fold(0.0, f64::max)
        };
        Figures {
            total_ms: m.duration_ms() as f64,
            sync_ms: max(|s| s.sync_ms),
            async_ms: max(|s| s.async_ms),
            alignment_ms: max(|s| s.alignment_ms),
            bytes: m.total_bytes() as f64,
        }
    }

    /// The median of each figure on its own.
    fn median(all: &[Figures]) -> Option<Self> {
        let m = |f: fn(&Figures) -> f64| median_f64(all.iter().map(f).collect());
        (!all.is_empty()).then(|| Figures {
            total_ms: m(|f| f.total_ms),
            sync_ms: m(|f| f.sync_ms),
            async_ms: m(|f| f.async_ms),
            alignment_ms: m(|f| f.alignment_ms),
            bytes: m(|f| f.bytes),
        })
    }

    fn min_max(all: &[Figures], f: fn(&Figures) -> f64) -> (f64, f64) {
        all.iter()
            .map(f)
            .fold((f64::INFINITY, 0.0), |(lo, hi), x| (lo.min(x), hi.max(x)))
    }
}

fn median_f64(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// Decodes checkpoint `m`'s state of the count (under `storage`): its
/// file, after its base files if it is incremental.
fn count_state(storage: &Path, m: &CheckpointMetadata) -> Result<(SubtaskSnapshot, Duration)> {
    let count = &m.vertices[COUNT].subtasks[0];
    let job = storage.join(JOB);
    let files: Vec<PathBuf> = count
        .base
        .iter()
        .map(|b| job.join(b.path()))
        .chain(
            count
                .file
                .iter()
                .map(|f| job.join(format!("chk-{}", m.checkpoint_id)).join(f)),
        )
        .collect();
    ensure!(!files.is_empty(), "the count stored no state");
    let started = Instant::now();
    let mut chain = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        chain.push(decode_state_file_with_deltas(
            &path.display().to_string(),
            &bytes,
        )?);
    }
    let snapshot = merge_chain(chain).map_err(anyhow::Error::msg)?;
    Ok((snapshot, started.elapsed()))
}

fn entries(snapshot: &SubtaskSnapshot) -> usize {
    snapshot
        .keyed
        .iter()
        .flat_map(|g| &g.states)
        .map(|s| s.entries.len())
        .sum()
}

// ---- 1. throughput ----

fn throughput(engine: &Arc<PluginEngine>, lines: u64, keys: u64, runs: usize) -> Result<()> {
    let words = lines * u64::from(WORDS_PER_LINE);
    let mut plain = Vec::new();
    // Whole checkpoints, then incremental ones.
    let mut with = [Vec::new(), Vec::new()];
    let mut figures = [Vec::new(), Vec::new()];
    let mut completed = [Vec::new(), Vec::new()];
    for run in 1..=runs {
        eprintln!("throughput: run {run}/{runs} without checkpoints");
        let g = graph(
            datagen(Some(lines), keys),
            None,
            CheckpointConfig::default(),
        );
        let metrics = JobMetrics::for_graph(&g);
        let report = runtime::run(&g, engine, metrics)?;
        ensure!(report.vertices[COUNT].1 == words, "every word is counted");
        plain.push(words as f64 / report.elapsed.as_secs_f64());

        for (mode, incremental) in [(0, false), (1, true)] {
            let kind = ["whole", "incremental"][mode];
            eprintln!("throughput: run {run}/{runs} with {kind} checkpoints every {INTERVAL:?}");
            let dir = tempfile::tempdir()?;
            let g = graph(
                datagen(Some(lines), keys),
                None,
                checkpoints(dir.path(), 1, false, incremental),
            );
            let metrics = JobMetrics::for_graph(&g);
            let watcher = Watcher::start(dir.path());
            let report = runtime::run(&g, engine, metrics.clone());
            let seen = watcher.finish();
            let report = report?;
            ensure!(report.vertices[COUNT].1 == words, "every word is counted");
            with[mode].push(words as f64 / report.elapsed.as_secs_f64());
            let periodic: Vec<Figures> = seen
                .values()
                .filter(|m| !m.is_final)
                .map(Figures::of)
                .collect();
            completed[mode].push((periodic.len(), metrics.last_checkpoint().unwrap_or(0)));
            figures[mode].extend(periodic);
        }
    }
    let plain_rate = median_f64(plain);
    println!("\n### Throughput, checkpoints every {INTERVAL:?} against none\n");
    println!(
        "{lines} lines × {WORDS_PER_LINE} words, {keys} distinct words, parallelism 1, median of {runs} runs\n"
    );
    println!(
        "| checkpoints | words/s | loss | checkpoints per run | total, median (range) | sync | async | size |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    println!("| none | {:.2} M | | | | | | |", plain_rate / 1e6);
    for mode in 0..2 {
        let rate = median_f64(with[mode].clone());
        let counts: Vec<String> = completed[mode].iter().map(|(n, _)| n.to_string()).collect();
        let Some(f) = Figures::median(&figures[mode]) else {
            continue;
        };
        let (lo, hi) = Figures::min_max(&figures[mode], |f| f.total_ms);
        println!(
            "| {} every {INTERVAL:?} | {:.2} M | **{:.1}%** | {} | {:.0} ms ({lo:.0}–{hi:.0}) | {:.1} ms | {:.1} ms | {:.1} MiB |",
            ["whole", "incremental"][mode],
            rate / 1e6,
            100.0 * (1.0 - rate / plain_rate),
            counts.join(", "),
            f.total_ms,
            f.sync_ms,
            f.async_ms,
            mib(f.bytes)
        );
    }
    Ok(())
}

// ---- 1b. incremental ----

/// Fills `keys` keys, then, from that checkpoint, runs the job again with
/// a source changing 1% of the keys per second, once with whole and once
/// with incremental checkpoints: their size and duration, and how long a
/// restore from the last one takes.
fn incremental(engine: &Arc<PluginEngine>, keys: u64, checkpoints_per_mode: u64) -> Result<()> {
    eprintln!("incremental: filling {keys} keys");
    let dir = tempfile::tempdir()?;
    let (_, stage, _, _) = fill_and_checkpoint(engine, dir.path(), keys, 1, 1000)?;
    let mut seen = BTreeMap::new();
    scan(dir.path(), &mut seen);
    let (&filled, _) = seen.last_key_value().context("no completed checkpoint")?;
    let from = dir.path().join(JOB).join(format!("chk-{filled}"));
    // 1% of the keys per second: as many words, 10 per line.
    let slow = DatagenSpec {
        rate: Some(keys as f64 / 100.0 / f64::from(WORDS_PER_LINE)),
        ..datagen(None, keys)
    };
    let mut rows = Vec::new();
    for incremental in [false, true] {
        let kind = if incremental { "incremental" } else { "whole" };
        eprintln!("incremental: {kind} checkpoints from checkpoint {filled}");
        stage.stop.store(false, Ordering::Relaxed);
        let g = graph(
            slow.clone(),
            Some(&stage),
            checkpoints(dir.path(), 1000, false, incremental),
        );
        let metrics = JobMetrics::for_graph(&g);
        let run = spawn_run(
            engine,
            &g,
            &metrics,
            Restore::From(from.display().to_string()),
        );
        let done = wait_for(&run, || {
            metrics.last_checkpoint().unwrap_or(0) > filled + checkpoints_per_mode
        });
        let last = metrics.last_checkpoint().unwrap_or(filled);
        stage.stop();
        join_stopped(run)?;
        ensure!(done, "the job ended early");
        let mut all = BTreeMap::new();
        scan(dir.path(), &mut all);
        // The first checkpoint of a run is whole either way.
        let measured: Vec<&CheckpointMetadata> =
            all.range(filled + 2..=last).map(|(_, m)| m).collect();
        let figures: Vec<Figures> = measured.iter().map(|m| Figures::of(m)).collect();
        let f = Figures::median(&figures).context("no checkpoint after the first")?;
        let latest = *measured.last().expect("invariant: not empty");
        let (state, read) = count_state(dir.path(), latest)?;
        let held = entries(&state);
        drop(state);
        // Restore from it: to the count's first batch.
        stage.stop.store(false, Ordering::Relaxed);
        let metrics = JobMetrics::for_graph(&g);
        let started = Instant::now();
        let location = dir
            .path()
            .join(JOB)
            .join(format!("chk-{}", latest.checkpoint_id));
        let run = spawn_run(
            engine,
            &g,
            &metrics,
            Restore::From(location.display().to_string()),
        );
        let first = wait_for(&run, || metrics.vertices[COUNT].records_out() > 0);
        let restore = started.elapsed();
        stage.stop();
        join_stopped(run)?;
        ensure!(first, "the restored job ended before processing a record");
        let files = latest.vertices[COUNT].subtasks[0].base.len() + 1;
        rows.push((
            kind,
            figures.len(),
            f,
            held,
            files,
            read,
            restore,
            latest.full_bytes(),
        ));
        // Runs after this one restore from the filled checkpoint again.
        scan(dir.path(), &mut all);
        for (&id, _) in all.range(filled + 1..) {
            let _ = std::fs::remove_dir_all(dir.path().join(JOB).join(format!("chk-{id}")));
        }
    }
    println!("\n### Incremental checkpoints: {keys} keys, 1% of them changed per second\n");
    println!(
        "| checkpoints | measured | total | sync | async | size | keys restored | files read | read + merge alone | restore → first batch | restore reads |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (kind, n, f, held, files, read, restore, full) in rows {
        println!(
            "| {kind} | {n} | {:.0} ms | {:.1} ms | {:.1} ms | {:.2} MiB | {held} | {files} | {:.0} ms | {:.0} ms | {:.1} MiB |",
            f.total_ms,
            f.sync_ms,
            f.async_ms,
            mib(f.bytes),
            read.as_secs_f64() * 1e3,
            restore.as_secs_f64() * 1e3,
            mib(full as f64)
        );
    }
    Ok(())
}

// ---- 2. sizes ----

/// Runs an unbounded job with `keys` distinct words until the count has
/// seen three words per key (95% of the keys) and `after` checkpoints
/// triggered after that completed, then stops it. Returns the id of the
/// first such checkpoint and the peak RSS.
fn fill_and_checkpoint(
    engine: &Arc<PluginEngine>,
    storage: &Path,
    keys: u64,
    after: u64,
    retained: u32,
) -> Result<(JobGraph, Stage, u64, f64)> {
    let stage = Stage::new(None);
    let g = graph(
        datagen(None, keys),
        Some(&stage),
        checkpoints(storage, retained, false, false),
    );
    let metrics = JobMetrics::for_graph(&g);
    reset_peak_rss();
    let run = spawn_run(engine, &g, &metrics, Restore::Fresh);
    let fill = 3 * keys;
    let filled = wait_for(&run, || metrics.vertices[COUNT].records_in() >= fill);
    // The checkpoint in flight now may have been triggered before the fill.
    let first = metrics.last_checkpoint().unwrap_or(0) + 2;
    let done = filled
        && wait_for(&run, || {
            metrics.last_checkpoint().unwrap_or(0) >= first + after - 1
        });
    stage.stop();
    let peak = peak_rss_mib();
    join_stopped(run)?;
    ensure!(done, "the job ended early");
    Ok((g, stage, first, peak))
}

/// A [`MemoryStateBackend`] holding `keys` words `w<n>` of value state
/// `count`, as the word count leaves it.
fn backend_with(keys: u64) -> MemoryStateBackend {
    let max = 128;
    let mut b = MemoryStateBackend::new(KeyGroupRange::for_subtask(0, 1, max));
    for i in 0..keys {
        let key = format!("w{i}");
        let kg = key_group_of(key.as_bytes(), max);
        b.apply(
            kg,
            "count",
            key.as_bytes(),
            Update::ValueSet(Value::Int(1 + (i % 7) as i64)),
        )
        .expect("invariant: the backend owns every key group");
    }
    b
}

fn sizes(engine: &Arc<PluginEngine>, sizes: &[u64]) -> Result<()> {
    const AFTER: u64 = 3;
    let mut rows = Vec::new();
    for &keys in sizes {
        eprintln!("sizes: {keys} keys");
        let dir = tempfile::tempdir()?;
        let (_, _, first, peak) = fill_and_checkpoint(engine, dir.path(), keys, AFTER, 4)?;
        let mut seen = BTreeMap::new();
        scan(dir.path(), &mut seen);
        let measured: Vec<&CheckpointMetadata> = seen.range(first..).map(|(_, m)| m).collect();
        ensure!(!measured.is_empty(), "no checkpoint after the fill");
        let figures: Vec<Figures> = measured.iter().map(|m| Figures::of(m)).collect();
        let f = Figures::median(&figures).expect("invariant: not empty");
        let latest = measured.last().expect("invariant: not empty");
        let (state, _) = count_state(dir.path(), latest)?;
        let held = entries(&state);
        drop(state);
        drop(dir);

        // The synchronous phase's deep copy on its own, and the encoding
        // (the asynchronous phase's CPU part), on a backend of this size.
        let backend = backend_with(keys);
        let started = Instant::now();
        let copy = backend.snapshot();
        let clone_ms = started.elapsed().as_secs_f64() * 1e3;
        drop(backend);
        let snapshot = SubtaskSnapshot {
            keyed: copy,
            ..SubtaskSnapshot::default()
        };
        let started = Instant::now();
        let encoded = encode_state_file(&snapshot);
        let encode_ms = started.elapsed().as_secs_f64() * 1e3;
        drop((snapshot, encoded));
        rows.push((keys, held, figures.len(), f, clone_ms, encode_ms, peak));
    }
    println!("\n### Checkpoint duration and size by state size\n");
    println!(
        "| keys (distinct words) | keys in checkpoint | checkpoints (median of) | total | sync | async | size | deep copy alone | encode alone | peak RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (keys, held, n, f, clone_ms, encode_ms, peak) in rows {
        println!(
            "| {keys} | {held} | {n} | {:.0} ms | {:.1} ms | {:.1} ms | {:.1} MiB | {clone_ms:.1} ms | {encode_ms:.1} ms | {peak:.0} MiB |",
            f.total_ms,
            f.sync_ms,
            f.async_ms,
            mib(f.bytes)
        );
    }
    Ok(())
}

// ---- 3. restore ----

fn restore(engine: &Arc<PluginEngine>, keys: u64) -> Result<()> {
    eprintln!("restore: filling {keys} keys");
    let dir = tempfile::tempdir()?;
    let (g, stage, _, _) = fill_and_checkpoint(engine, dir.path(), keys, 1, 2)?;
    let mut seen = BTreeMap::new();
    scan(dir.path(), &mut seen);
    let (_, latest) = seen.last_key_value().context("no completed checkpoint")?;
    let latest = latest.clone();

    // The restored job: same graph, the stage's flag lowered.
    let stage_flag = stage.stop.clone();
    stage_flag.store(false, Ordering::Relaxed);
    eprintln!(
        "restore: from checkpoint {} ({:.1} MiB)",
        latest.checkpoint_id,
        mib(latest.total_bytes() as f64)
    );
    let metrics = JobMetrics::for_graph(&g);
    let started = Instant::now();
    let run = spawn_run(engine, &g, &metrics, Restore::Latest);
    let first = wait_for(&run, || metrics.vertices[COUNT].records_out() > 0);
    let to_first = started.elapsed();
    stage.stop();
    join_stopped(run)?;
    ensure!(first, "the restored job ended before processing a record");

    // Its parts, each on its own: read and decode the count's state file,
    // load it into a backend, and replay the source to its offset.
    let (state, decode) = count_state(dir.path(), &latest)?;
    let held = entries(&state);
    let started = Instant::now();
    let mut backend = MemoryStateBackend::new(KeyGroupRange::for_subtask(0, 1, 128));
    backend.restore(state.keyed)?;
    let load = started.elapsed();
    drop(backend);
    let offset = latest.vertices[0].subtasks[0]
        .file
        .as_ref()
        .map(|file| -> Result<Option<u64>> {
            let path = dir
                .path()
                .join(JOB)
                .join(format!("chk-{}", latest.checkpoint_id));
            let bytes = std::fs::read(path.join(file))?;
            let splits = decode_state_file(file, &bytes)?
                .source_splits()
                .map_err(anyhow::Error::msg)?;
            Ok(splits.and_then(|s| s.first().map(|s| s.position)))
        })
        .transpose()?
        .flatten()
        .context("the source stored no offset")?;
    let started = Instant::now();
    let source = DatagenSource::resume(&datagen(None, keys), 0, 1, offset);
    let replay = started.elapsed();
    drop(source);

    println!("\n### Restore: `Restore::Latest` to the first record processed\n");
    println!("| measure | value |");
    println!("| --- | --- |");
    println!(
        "| checkpoint | {} keys, {:.1} MiB, source at line {offset} |",
        held,
        mib(latest.total_bytes() as f64)
    );
    println!(
        "| `run_with` called → the count's first batch processed | **{:.0} ms** |",
        to_first.as_secs_f64() * 1e3
    );
    println!(
        "| of which, measured alone: read + decode the count's state file | {:.0} ms |",
        decode.as_secs_f64() * 1e3
    );
    println!(
        "| of which, measured alone: load it into the state backend | {:.0} ms |",
        load.as_secs_f64() * 1e3
    );
    println!(
        "| of which, measured alone: datagen replaying its draws to the offset | {:.0} ms |",
        replay.as_secs_f64() * 1e3
    );
    Ok(())
}

// ---- 4. backpressure ----

fn backpressure(engine: &Arc<PluginEngine>, rate: f64, length: Duration) -> Result<()> {
    const KEYS: u64 = 10_000;
    let mut rows = Vec::new();
    for unaligned in [false, true] {
        eprintln!(
            "backpressure: {} checkpoints behind a stage passing {rate} records/s, {length:?}",
            if unaligned { "unaligned" } else { "aligned" }
        );
        let dir = tempfile::tempdir()?;
        let stage = Stage::new(Some(rate));
        let g = graph(
            datagen(None, KEYS),
            Some(&stage),
            checkpoints(dir.path(), 1000, unaligned, true),
        );
        let metrics = JobMetrics::for_graph(&g);
        let run = spawn_run(engine, &g, &metrics, Restore::Fresh);
        let deadline = Instant::now() + length;
        let alive = wait_for(&run, || Instant::now() >= deadline);
        stage.stop();
        join_stopped(run)?;
        ensure!(alive, "the job ended early");
        let mut seen = BTreeMap::new();
        scan(dir.path(), &mut seen);
        let figures: Vec<Figures> = seen.values().map(Figures::of).collect();
        let stored_unaligned = seen.values().any(|m| m.unaligned);
        rows.push((unaligned, stored_unaligned, figures));
    }
    println!("\n### Checkpoints under backpressure\n");
    println!(
        "Behind a stage passing {rate} records/s; datagen unbounded, {KEYS} distinct words; batch 1024 records, 8 batches per channel; {length:?} per mode.\n"
    );
    println!(
        "| mode | checkpoints completed | total, median (range) | alignment | sync | async | size |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (unaligned, stored_unaligned, figures) in rows {
        let mode = match (unaligned, stored_unaligned) {
            (false, _) => "aligned",
            (true, true) => "unaligned",
            (true, false) => "unaligned (asked; metadata says aligned)",
        };
        match Figures::median(&figures) {
            Some(f) => {
                let (lo, hi) = Figures::min_max(&figures, |f| f.total_ms);
                println!(
                    "| {mode} | {} | {:.0} ms ({lo:.0}–{hi:.0}) | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} MiB |",
                    figures.len(),
                    f.total_ms,
                    f.alignment_ms,
                    f.sync_ms,
                    f.async_ms,
                    mib(f.bytes)
                );
            }
            None => println!("| {mode} | 0 | – | – | – | – | – |"),
        }
    }
    Ok(())
}
