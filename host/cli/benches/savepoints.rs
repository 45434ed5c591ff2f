//! Savepoint benchmarks on the word-count pipeline (datagen → tokenize →
//! key by word → count → blackhole, the Wasm plugins, every vertex at
//! parallelism 1), savepoints taken through the job's [`JobControl`] by
//! the real runtime into a local temporary directory, in the canonical and
//! the native (checkpoint) layout:
//!
//! 1. once the count holds about `keys` distinct words, the time from
//!    `trigger_savepoint` to its completion, and the savepoint's size on
//!    disk, for each format (the job keeps running throughout). The first
//!    savepoint after the fill writes back every key the word-count
//!    plugin's cache holds dirty (it has never snapshotted), later ones
//!    only the keys touched since the previous one: that first one is
//!    taken in the canonical format and shown on its own, then the
//!    measured ones alternate between the formats;
//! 2. the time from `run_with(.., Restore::From(savepoint))` to the first
//!    record reaching the sink, for each format, and beside it the time to
//!    read and decode the savepoint's files alone (as many runs as
//!    savepoints, alternating).
//!
//! Run with `cargo bench -p weir --bench savepoints`. Environment:
//! `WEIR_BENCH_KEYS` (comma-separated distinct words, default
//! `1000000,10000000`), `WEIR_BENCH_RUNS` (measured savepoints of each
//! format per size, alternating, default 3; the median is shown),
//! `WEIR_BENCH_QUICK=1` (100,000 keys, one run: a smoke test),
//! `WEIR_LOG` (log filter, default `info`). Prints Markdown tables;
//! BENCHMARKS.md records the results.

#[allow(
    dead_code,
    reason = "this bench uses the pipeline graph and env and memory helpers, not the rate and instantiation helpers"
)]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use weir_host::checkpoint::format as checkpoint;
use weir_host::job::{DatagenSpec, JobGraph, Limits, VertexKind};
use weir_host::metrics::JobMetrics;
use weir_host::plugin::PluginEngine;
use weir_host::runtime::{
    self, JobControl, JobState, Restore, RunOptions, SavepointFormat, SavepointRequest,
};
use weir_host::savepoint::format as savepoint;
use weir_host::{Error, ErrorKind};

use common::{WORDS_PER_LINE, env_or, peak_rss_mib, pipeline, reset_peak_rss};

/// The job's name.
const JOB: &str = "bench";
/// The count and sink vertices' indices.
const COUNT: usize = 2;
const SINK: usize = 3;
/// The count's limits: at 10M keys the word-count plugin's guest cache of
/// dirty entries approaches the benches' usual 1 GiB (as in the checkpoint
/// bench).
const COUNT_LIMITS: Limits = Limits {
    memory_bytes: 3 << 30,
    fuel_per_call: 10_000_000_000,
    // Benchmarks hold more state than a default job may.
    state_bytes: 1 << 40,
    job_memory_bytes: 1 << 40,
    ..Limits::DEFAULT
};
const FORMATS: [SavepointFormat; 2] = [SavepointFormat::Canonical, SavepointFormat::Native];

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let quick = env_or("WEIR_BENCH_QUICK", 0u8) == 1;
    let default = if quick { "100000" } else { "1000000,10000000" };
    let keys: String = env_or("WEIR_BENCH_KEYS", default.to_owned());
    let keys: Vec<u64> = keys
        .split(',')
        .map(|k| {
            k.trim()
                .parse()
                .context("WEIR_BENCH_KEYS: a list of numbers")
        })
        .collect::<Result<_>>()?;
    let runs: usize = env_or("WEIR_BENCH_RUNS", if quick { 1 } else { 3 });
    let cache = tempfile::tempdir()?;
    let engine = Arc::new(PluginEngine::new(Some(cache.path().to_owned()))?);
    // Compile once, so no run below pays for it.
    for p in [weir_test_plugins::TOKENIZE, weir_test_plugins::WORD_COUNT] {
        engine.load("bench", p.as_ref())?;
    }
    let mut rows = Vec::new();
    for &k in &keys {
        rows.push(bench(&engine, k, runs.max(1))?);
    }
    print(&rows, runs.max(1));
    Ok(())
}

// ---- the job ----

/// The word count over an unbounded stream of `keys` distinct words, its
/// job directory `dir`, no checkpoints.
fn graph(keys: u64, dir: &Path) -> JobGraph {
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
    g.vertices[0].kind = VertexKind::Datagen(DatagenSpec {
        seed: 42,
        records: None,
        rate: None,
        vocabulary: keys,
        words_per_record: WORDS_PER_LINE,
    });
    g.job_dir = dir.to_owned();
    g
}

type Run = JoinHandle<Result<runtime::RunReport, Error>>;

/// A job running on its own thread, and its handles.
struct Job {
    control: JobControl,
    metrics: Arc<JobMetrics>,
    run: Run,
}

impl Job {
    /// Starts `graph` from `restore` with a control handle.
    fn start(engine: &Arc<PluginEngine>, graph: &JobGraph, restore: Restore) -> Self {
        let metrics = JobMetrics::for_graph(graph);
        let control = JobControl::new(JOB, metrics.clone(), Arc::new(AtomicBool::new(false)));
        let options = RunOptions {
            restore,
            control: Some(control.clone()),
            ..RunOptions::default()
        };
        let (engine, graph, m) = (engine.clone(), graph.clone(), metrics.clone());
        let run = std::thread::spawn(move || runtime::run_with(&graph, &engine, m, &options));
        Job {
            control,
            metrics,
            run,
        }
    }

    /// Polls `until` every millisecond while the job runs; an error if it
    /// ended first.
    fn wait_for(&self, mut until: impl FnMut(&Self) -> bool) -> Result<()> {
        loop {
            if until(self) {
                return Ok(());
            }
            ensure!(
                !self.run.is_finished(),
                "the job ended early ({})",
                self.control.state().name()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Cancels the job and waits for it; any other ending is an error.
    fn cancel(self) -> Result<()> {
        self.control.cancel();
        match self.run.join().expect("invariant: run_with does not panic") {
            Err(e) if e.kind() == ErrorKind::Cancelled => Ok(()),
            Err(e) => Err(e).context("the job failed"),
            Ok(_) => bail!("the unbounded job finished"),
        }
    }
}

// ---- measuring ----

/// One savepoint taken.
struct Taken {
    location: PathBuf,
    duration: Duration,
    bytes: u64,
    /// A native savepoint's slowest subtask's sync and async phases in
    /// ms, from its `_metadata` (the canonical one records none).
    phases: Option<(f64, f64)>,
}

/// What one size measured, per format (in [`FORMATS`] order).
struct Row {
    keys: u64,
    keys_in_savepoint: u64,
    /// The first savepoint after the fill (canonical).
    first: Taken,
    taken: [Vec<Taken>; 2],
    /// Read and decode every file of the last savepoint, alone, ms.
    decode: [Vec<f64>; 2],
    /// `run_with` → the first record at the sink, ms.
    restore: [Vec<f64>; 2],
    peak_rss_mib: f64,
}

fn format_name(format: SavepointFormat) -> &'static str {
    match format {
        SavepointFormat::Canonical => "canonical",
        SavepointFormat::Native => "native",
    }
}

/// The bytes of every file under `dir`.
fn size_on_disk(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            size_on_disk(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// The savepoint's directory as a local path (a location may be a
/// `file://` URL).
fn local(location: &str) -> PathBuf {
    PathBuf::from(location.strip_prefix("file://").unwrap_or(location))
}

/// Reads and decodes every state file of the savepoint at `dir`, as a
/// restore does before loading the state; returns the keys of the count
/// (canonical metadata only, else 0).
fn read_and_decode(dir: &Path) -> Result<u64> {
    let path = dir.join("_metadata");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    if savepoint::metadata_format(&bytes).as_deref() == Some(savepoint::SAVEPOINT_FORMAT) {
        let m = savepoint::decode_metadata(&name, &bytes)?;
        for file in m.files() {
            let path = dir.join(file);
            let bytes = std::fs::read(&path)?;
            savepoint::decode_state_file(&path.display().to_string(), &bytes)?;
        }
        Ok(m.operators[COUNT].keyed_states.iter().map(|s| s.keys).sum())
    } else {
        let m = checkpoint::decode_metadata(&name, &bytes)?;
        for file in m
            .vertices
            .iter()
            .flat_map(|v| &v.subtasks)
            .filter_map(|s| s.file.as_ref())
        {
            let path = dir.join(file);
            let bytes = std::fs::read(&path)?;
            checkpoint::decode_state_file(&path.display().to_string(), &bytes)?;
        }
        Ok(0)
    }
}

fn bench(engine: &Arc<PluginEngine>, keys: u64, runs: usize) -> Result<Row> {
    let dir = tempfile::tempdir()?;
    let job_dir = dir.path().join("job");
    std::fs::create_dir_all(&job_dir)?;
    let g = graph(keys, &job_dir);

    // 1. Fill, then take savepoints of each format in turn.
    eprintln!("savepoints: filling {keys} keys");
    reset_peak_rss();
    let job = Job::start(engine, &g, Restore::Fresh);
    // Three words per key: 95% of the keys seen.
    let fill = 3 * keys;
    job.wait_for(|j| j.metrics.vertices[COUNT].records_in() >= fill)?;
    let take = |format| -> Result<Taken> {
        let target = dir.path().join(format_name(format));
        let started = Instant::now();
        let info = job
            .control
            .trigger_savepoint(SavepointRequest {
                target: Some(target.display().to_string()),
                format,
                stop: None,
            })?
            .wait()?;
        let duration = started.elapsed();
        let location = local(&info.location);
        let bytes = size_on_disk(&location)?;
        let phases = match format {
            SavepointFormat::Canonical => None,
            SavepointFormat::Native => {
                let path = location.join("_metadata");
                let m = checkpoint::decode_metadata(
                    &path.display().to_string(),
                    &std::fs::read(&path)?,
                )?;
                Some((m.slowest(|s| s.sync_ms), m.slowest(|s| s.async_ms)))
            }
        };
        Ok(Taken {
            location,
            duration,
            bytes,
            phases,
        })
    };
    eprintln!("savepoints: {keys} keys, the first savepoint");
    let first = take(SavepointFormat::Canonical)?;
    let mut taken: [Vec<Taken>; 2] = [Vec::new(), Vec::new()];
    for run in 1..=runs {
        for (i, format) in FORMATS.into_iter().enumerate() {
            eprintln!(
                "savepoints: {keys} keys, {} savepoint {run}/{runs}",
                format_name(format)
            );
            taken[i].push(take(format)?);
        }
    }
    ensure!(
        job.control.state() == JobState::Running,
        "the job is {} after its savepoints",
        job.control.state().name()
    );
    let peak = peak_rss_mib();
    job.cancel()?;

    // 2. Decode alone, then restore, from the last savepoint of each
    // format, alternating, `runs` times each.
    let mut decode: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut restore: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut keys_in_savepoint = 0;
    for run in 1..=runs {
        for (i, format) in FORMATS.into_iter().enumerate() {
            let location = &taken[i].last().expect("invariant: runs ≥ 1").location;
            let started = Instant::now();
            let held = read_and_decode(location)?;
            decode[i].push(ms(started.elapsed()));
            keys_in_savepoint = keys_in_savepoint.max(held);

            eprintln!(
                "savepoints: {keys} keys, restoring from the {} savepoint {run}/{runs}",
                format_name(format)
            );
            let started = Instant::now();
            let job = Job::start(engine, &g, Restore::From(location.display().to_string()));
            job.wait_for(|j| j.metrics.vertices[SINK].records_in() > 0)?;
            restore[i].push(ms(started.elapsed()));
            job.cancel()?;
        }
    }
    Ok(Row {
        keys,
        keys_in_savepoint,
        first,
        taken,
        decode,
        restore,
        peak_rss_mib: peak,
    })
}

// ---- printing ----

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn print(rows: &[Row], runs: usize) {
    println!("\n### Savepoints: canonical against native\n");
    println!(
        "Medians of {runs} savepoints per format of a running job, and of {runs} restores from the last one, formats alternating.\n"
    );
    println!(
        "| distinct words | keys in savepoint | format | trigger → complete | (range) | sync / async | size on disk | read + decode alone | restore → first record at the sink | peak RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in rows {
        println!(
            "| {} | | first after the fill, canonical | {:.0} ms | | | {:.1} MiB | | | |",
            row.keys,
            ms(row.first.duration),
            mib(row.first.bytes)
        );
        for (i, format) in FORMATS.into_iter().enumerate() {
            let durations: Vec<f64> = row.taken[i].iter().map(|t| ms(t.duration)).collect();
            let (lo, hi) = durations
                .iter()
                .fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| {
                    (lo.min(x), hi.max(x))
                });
            let size = median(row.taken[i].iter().map(|t| t.bytes as f64).collect());
            let phases: Vec<(f64, f64)> = row.taken[i].iter().filter_map(|t| t.phases).collect();
            let phases = if phases.is_empty() {
                "–".to_owned()
            } else {
                format!(
                    "{:.0} / {:.0} ms",
                    median(phases.iter().map(|p| p.0).collect()),
                    median(phases.iter().map(|p| p.1).collect())
                )
            };
            println!(
                "| {} | {} | {} | **{:.0} ms** | {lo:.0}–{hi:.0} | {phases} | {:.1} MiB | {:.0} ms | **{:.0} ms** | {:.0} MiB |",
                row.keys,
                row.keys_in_savepoint,
                format_name(format),
                median(durations.clone()),
                mib(size as u64),
                median(row.decode[i].clone()),
                median(row.restore[i].clone()),
                row.peak_rss_mib
            );
        }
    }
}
