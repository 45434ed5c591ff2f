//! The word-count pipeline benchmark: datagen → tokenize → key by word →
//! count → blackhole, with Wasm plugins and with the same operators
//! compiled into the host, plus plugin compile, cached-load and
//! instantiation times and peak memory.
//!
//! Run with `cargo bench -p weir --bench pipeline`; set `WEIR_BENCH_LINES`
//! (default 1,000,000 lines of 10 words) and `WEIR_BENCH_RUNS` (default 3).
//! Prints a Markdown table; BENCHMARKS.md records the results.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use weir_host::job::{DatagenSpec, Edge, JobGraph, Limits, Partition, Vertex, VertexKind};
use weir_host::keygroup::KeyGroupRange;
use weir_host::metrics::JobMetrics;
use weir_host::native;
use weir_host::plugin::{InstanceConfig, PluginEngine};
use weir_host::runtime;
use weir_host::state::MemoryStateBackend;

const WORDS_PER_LINE: u32 = 10;
const VOCABULARY: u64 = 100_000;
const LIMITS: Limits = Limits {
    memory_bytes: 1 << 30,
    fuel_per_call: 10_000_000_000,
};

fn vertex(uid: &str, kind: VertexKind, inputs: Vec<Edge>) -> Vertex {
    Vertex {
        uid: uid.into(),
        parallelism: 1,
        kind,
        inputs,
    }
}

fn pipeline(lines: u64, tokenize: VertexKind, count: VertexKind) -> JobGraph {
    JobGraph {
        name: "bench".into(),
        max_parallelism: 128,
        batch_size: 1024,
        channel_capacity: 8,
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

fn wasm(plugin: &str, config: &str) -> VertexKind {
    VertexKind::Operator {
        plugin: plugin.into(),
        config: config.into(),
        limits: LIMITS,
    }
}

/// Resets the kernel's peak-RSS counter, so each run reports its own peak.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Median records/s of the count operator over `runs`, and the peak RSS.
fn measure(engine: &PluginEngine, graph: &JobGraph, runs: usize) -> Result<(f64, f64)> {
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

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    let lines: u64 = std::env::var("WEIR_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runs: usize = std::env::var("WEIR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let cache = tempfile::tempdir()?;
    let engine = PluginEngine::new(Some(cache.path().to_owned()))?;
    let plugins = [weir_test_plugins::TOKENIZE, weir_test_plugins::WORD_COUNT];

    // Compile (empty cache), then load from the on-disk cache.
    let mut compile = Vec::new();
    let mut cached = Vec::new();
    for p in plugins {
        compile.push(engine.load("bench", p.as_ref())?.stats.elapsed);
        cached.push(engine.load("bench", p.as_ref())?.stats.elapsed);
    }
    let word_count = engine.load("count", weir_test_plugins::WORD_COUNT.as_ref())?;
    let mut instantiate = Vec::new();
    for i in 0..50 {
        let started = Instant::now();
        let instance = word_count.instantiate(InstanceConfig {
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
        })?;
        instantiate.push(started.elapsed());
        drop(instance);
    }

    let native_graph = pipeline(
        lines,
        VertexKind::Native(Arc::new(native::Tokenize)),
        VertexKind::Native(Arc::new(native::WordCount)),
    );
    let wasm_graph = pipeline(
        lines,
        wasm(weir_test_plugins::TOKENIZE, ""),
        wasm(weir_test_plugins::WORD_COUNT, ""),
    );
    // The alternative design: no state kept in the guest between batches,
    // so every new key of a batch is read from the host (one host call per
    // record here), and changes go back in one write per batch.
    let uncached_graph = pipeline(
        lines,
        wasm(weir_test_plugins::TOKENIZE, ""),
        wasm(weir_test_plugins::WORD_COUNT, "cache_capacity=0"),
    );
    let (native_rate, native_peak) = measure(&engine, &native_graph, runs)?;
    let (wasm_rate, wasm_peak) = measure(&engine, &wasm_graph, runs)?;
    let (uncached_rate, uncached_peak) = measure(&engine, &uncached_graph, runs)?;

    println!("| measure | value |");
    println!("| --- | --- |");
    println!(
        "| workload | {lines} lines × {WORDS_PER_LINE} words, {VOCABULARY} distinct words, parallelism 1, median of {runs} |"
    );
    println!(
        "| native pipeline | {:.2} M words/s (peak RSS {native_peak:.0} MiB) |",
        native_rate / 1e6
    );
    println!(
        "| Wasm pipeline | {:.2} M words/s (peak RSS {wasm_peak:.0} MiB) |",
        wasm_rate / 1e6
    );
    println!(
        "| Wasm / native | {:.0}% |",
        100.0 * wasm_rate / native_rate
    );
    println!(
        "| Wasm, state read from the host per batch (`cache_capacity=0`) | {:.2} M words/s, {:.0}% of native (peak RSS {uncached_peak:.0} MiB) |",
        uncached_rate / 1e6,
        100.0 * uncached_rate / native_rate
    );
    println!(
        "| compile (tokenize, word-count) | {:.0} ms, {:.0} ms |",
        compile[0].as_secs_f64() * 1e3,
        compile[1].as_secs_f64() * 1e3
    );
    println!(
        "| load from cache (tokenize, word-count) | {:.2} ms, {:.2} ms |",
        cached[0].as_secs_f64() * 1e3,
        cached[1].as_secs_f64() * 1e3
    );
    println!(
        "| instantiate + open, per subtask (median of 50) | {:.0} µs |",
        median(instantiate).as_secs_f64() * 1e6
    );
    Ok(())
}
