//! What the benchmarks share: the word-count pipeline graph, running it and
//! taking the median rate, plugin instantiation timing, and the process's
//! peak RSS. Each bench includes it with `mod common;`, so every item here
//! must be used by every bench.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use weir_host::job::{DatagenSpec, Edge, JobGraph, Limits, Partition, Vertex, VertexKind};
use weir_host::keygroup::KeyGroupRange;
use weir_host::metrics::JobMetrics;
use weir_host::plugin::{InstanceConfig, Plugin, PluginEngine};
use weir_host::runtime;
use weir_host::state::MemoryStateBackend;

pub const WORDS_PER_LINE: u32 = 10;
pub const VOCABULARY: u64 = 100_000;
pub const LIMITS: Limits = Limits {
    memory_bytes: 1 << 30,
    fuel_per_call: 10_000_000_000,
    // Benchmarks hold more state than a default job may.
    state_bytes: 1 << 40,
    job_memory_bytes: 1 << 40,
    ..Limits::DEFAULT
};

/// The value of the environment variable `name`, or `default` if it is
/// unset or does not parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn vertex(uid: &str, kind: VertexKind, inputs: Vec<Edge>) -> Vertex {
    Vertex {
        uid: uid.into(),
        parallelism: 1,
        kind,
        inputs,
        watermarks: None,
    }
}

/// datagen (`lines` lines) → `tokenize` → hash by word → `count` →
/// blackhole, every vertex at parallelism 1. The count vertex is index 2.
pub fn pipeline(lines: u64, tokenize: VertexKind, count: VertexKind) -> JobGraph {
    JobGraph {
        name: "bench".into(),
        max_parallelism: 128,
        batch_size: 1024,
        channel_capacity: 8,
        checkpoints: Default::default(),
        restart: weir_host::restart::RestartStrategy::None,
        operator_errors: Default::default(),
        savepoint_dir: None,
        job_dir: ".".into(),
        vertices: vec![
            vertex(
                "gen",
                VertexKind::Datagen(DatagenSpec {
                    seed: 42,
                    records: Some(lines),
                    rate: None,
                    vocabulary: VOCABULARY,
                    words_per_record: WORDS_PER_LINE,
                }),
                vec![],
            ),
            vertex(
                "tokenize",
                tokenize,
                vec![Edge {
                    from: 0,
                    partition: Partition::Forward,
                }],
            ),
            vertex(
                "count",
                count,
                vec![Edge {
                    from: 1,
                    partition: Partition::Hash,
                }],
            ),
            vertex(
                "sink",
                VertexKind::BlackholeSink,
                vec![Edge {
                    from: 2,
                    partition: Partition::Forward,
                }],
            ),
        ],
    }
}

/// A Wasm operator vertex running the plugin at `plugin` with `config`.
pub fn wasm(plugin: &str, config: &str) -> VertexKind {
    VertexKind::Operator {
        plugin: plugin.into(),
        config: config.into(),
        limits: LIMITS,
    }
}

/// Resets the kernel's peak-RSS counter, so each run reports its own peak.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak RSS since the last [`reset_peak_rss`], in MiB.
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// A memory figure of `/proc/self/status` (`VmHWM:`, `VmRSS:`) in MiB, or
/// NaN where there is no such file.
pub fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Median records/s of the count operator over `runs`, and the peak RSS.
pub fn measure(engine: &PluginEngine, graph: &JobGraph, runs: usize) -> Result<(f64, f64)> {
    let mut rates = Vec::new();
    let mut peak: f64 = 0.0;
    for _ in 0..runs {
        reset_peak_rss();
        let metrics = JobMetrics::for_graph(graph);
        let report = runtime::run(graph, engine, metrics).context("running the pipeline")?;
        let counted = report.vertices[2].1;
        assert_eq!(counted, graph_words(graph), "every word is counted");
        rates.push(counted as f64 / report.elapsed.as_secs_f64());
        peak = peak.max(peak_rss_mib());
    }
    rates.sort_by(f64::total_cmp);
    Ok((rates[rates.len() / 2], peak))
}

fn graph_words(graph: &JobGraph) -> u64 {
    match &graph.vertices[0].kind {
        VertexKind::Datagen(d) => d.records.unwrap_or(0) * u64::from(d.words_per_record),
        _ => 0,
    }
}

pub fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// What instantiating subtask `i` of 4 of an operator needs, with empty
/// in-memory state.
pub fn instance_config(i: u32) -> InstanceConfig {
    InstanceConfig {
        uid: "count".into(),
        config: String::new(),
        subtask: i % 4,
        parallelism: 4,
        max_parallelism: 128,
        limits: LIMITS,
        state: Box::new(MemoryStateBackend::new(KeyGroupRange::for_subtask(
            i % 4,
            4,
            128,
        ))),
        operator_state: Vec::new(),
        attempt_number: 0,
        restored_types: Default::default(),
        timers: weir_host::timers::TimerService::new(128),
    }
}

/// The time of each of `n` instantiations (with `open`) of `plugin`, each
/// instance dropped before the next.
pub fn instantiate_times(plugin: &Plugin, n: u32) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    for i in 0..n {
        let started = Instant::now();
        let instance = futures::executor::block_on(plugin.instantiate(instance_config(i)))?;
        times.push(started.elapsed());
        drop(instance);
    }
    Ok(times)
}
