//! Nexmark: events per second, and per CPU-second, of the queries as Wasm
//! plugins (`plugins/nexmark` in Rust; q1 and q5 also in Python,
//! `plugins/python/nexmark`), from the `nexmark` source into a `blackhole`
//! sink, at parallelism 1 and 2, with watermarks and a checkpoint every
//! second.
//!
//! Run with `cargo bench -p weir --bench nexmark`; `WEIR_BENCH_EVENTS`
//! (default 2,000,000) and `WEIR_BENCH_RUNS` (default 3) set the size.
//! Prints a Markdown table; BENCHMARKS.md records the results. "Per core"
//! is events over the CPU time the process used (user + system), the
//! figure the published Flink results give per core.

use std::time::Duration;

use anyhow::Result;
use weir_host::job::{self, JobFile};
use weir_host::metrics::JobMetrics;
use weir_host::plugin::PluginEngine;
use weir_host::runtime;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The process's CPU time so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn job_text(
    query: &str,
    plugin: &str,
    events: u64,
    parallelism: u32,
    dir: &std::path::Path,
) -> String {
    let mut text = format!(
        r#"
name = "nexmark-{query}"
parallelism = {parallelism}

[checkpoints]
interval = "1s"
storage = "{storage}"

[[sources]]
uid = "events"
type = "nexmark"

[sources.nexmark]
max_events = {events}

[sources.watermarks]
out_of_orderness_ms = 0
"#,
        storage = dir.join("checkpoints").display(),
    );
    let mut input = "events".to_owned();
    let stages = weir_nexmark::stages(query).expect("a query the plugins run");
    for (i, (config, partition)) in stages.iter().enumerate() {
        let uid = format!("stage-{i}");
        text += &format!(
            "\n[[operators]]\nuid = \"{uid}\"\nplugin = \"{plugin}\"\nconfig = \"{config}\"\ninput = \"{input}\"\npartition = \"{partition}\"\n",
        );
        input = uid;
    }
    text += &format!("\n[[sinks]]\nuid = \"out\"\ntype = \"blackhole\"\ninput = \"{input}\"\n");
    text
}

fn main() -> Result<()> {
    let rust_events: u64 = env_or("WEIR_BENCH_EVENTS", 2_000_000);
    // Python runs an order of magnitude slower: a tenth of the events.
    let python_events = rust_events / 10;
    let runs: usize = env_or("WEIR_BENCH_RUNS", 3);
    let cache = tempfile::tempdir()?;
    let engine = PluginEngine::new(Some(cache.path().to_owned()))?;
    for plugin in [weir_test_plugins::NEXMARK, weir_test_plugins::PY_NEXMARK] {
        engine.load("bench", plugin.as_ref())?;
    }
    println!(
        "{rust_events} Nexmark events ({python_events} for Python), watermarks, a checkpoint every second; median of {runs} runs"
    );
    println!();
    println!("| query | plugin | parallelism | events/s | events/s per core (CPU time) |");
    println!("| --- | --- | --- | --- | --- |");
    let rust = ("Rust", weir_test_plugins::NEXMARK, rust_events);
    let python = ("Python", weir_test_plugins::PY_NEXMARK, python_events);
    let cases = [
        ("q0", rust),
        ("q1", rust),
        ("q2", rust),
        ("q5", rust),
        ("q7", rust),
        ("q3", rust),
        ("q4", rust),
        ("q8", rust),
        ("q1", python),
        ("q5", python),
    ];
    for (query, (language, plugin, events)) in cases {
        for parallelism in [1, 2] {
            let mut results = Vec::new();
            for _ in 0..runs {
                let dir = tempfile::tempdir()?;
                let text = job_text(query, plugin, events, parallelism, dir.path());
                let file: JobFile = toml::from_str(&text)?;
                let graph = job::build_graph(file, dir.path())
                    .map_err(|p| anyhow::anyhow!("bench job: {p:?}"))?;
                let cpu = cpu_time();
                let report = runtime::run(&graph, &engine, JobMetrics::for_graph(&graph))?;
                let cpu = cpu_time() - cpu;
                anyhow::ensure!(
                    report.vertices[0].2 == events,
                    "{query}: the source emitted {} of {events}",
                    report.vertices[0].2
                );
                results.push((
                    events as f64 / report.elapsed.as_secs_f64(),
                    events as f64 / cpu.as_secs_f64(),
                ));
            }
            results.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (rate, per_core) = results[results.len() / 2];
            println!("| {query} | {language} | {parallelism} | {rate:.0} | {per_core:.0} |");
        }
    }
    Ok(())
}
