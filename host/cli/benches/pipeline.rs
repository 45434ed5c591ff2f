//! The word-count pipeline benchmark: datagen → tokenize → key by word →
//! count → blackhole, with Wasm plugins and with the same operators
//! compiled into the host, plus plugin compile, cached-load and
//! instantiation times and peak memory.
//!
//! Run with `cargo bench -p weir --bench pipeline`; set `WEIR_BENCH_LINES`
//! (default 1,000,000 lines of 10 words) and `WEIR_BENCH_RUNS` (default 3).
//! Prints a Markdown table; BENCHMARKS.md records the results.

mod common;

use std::sync::Arc;

use anyhow::Result;
use weir_host::job::VertexKind;
use weir_host::native;
use weir_host::plugin::PluginEngine;

use common::{
    VOCABULARY, WORDS_PER_LINE, env_or, instantiate_times, measure, median, pipeline, wasm,
};

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    let lines: u64 = env_or("WEIR_BENCH_LINES", 1_000_000);
    let runs: usize = env_or("WEIR_BENCH_RUNS", 3);
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
    let instantiate = instantiate_times(&word_count, 50)?;

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
