//! The word-count operator written in each guest language — Rust, Python,
//! JavaScript — compared on the same measures: component size, compile
//! and cached-load time, instantiation time and memory, and the count
//! vertex's rate in datagen → tokenize (always the Rust plugin) → key by
//! word → count → blackhole, at parallelism 1.
//!
//! Run with `cargo bench -p weir --bench languages`. Python and JavaScript
//! count one to two orders of magnitude slower than Rust, so each language
//! has its own number of lines (10 words each), chosen for runs of a few
//! seconds: `WEIR_BENCH_LINES_RUST` (default 1,000,000),
//! `WEIR_BENCH_LINES_PYTHON` (100,000), `WEIR_BENCH_LINES_JS` (20,000).
//! Each rate is compared with Rust's on the same number of lines, since a
//! smaller run has more first-seen words and start-up in its time.
//! `WEIR_BENCH_RUNS` (default 3) sets the runs per median. A language
//! whose plugin the artifacts crate did not build is skipped with a note.
//! Prints a Markdown table; BENCHMARKS.md records the results.
//!
//! Each language's runs happen in a child process (this program, started
//! with `--child`) that loads the plugins from the cache the parent filled:
//! compiling the Python and JavaScript components leaves hundreds of MiB
//! in the allocator, which would otherwise count in every later peak RSS.

mod common;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use weir_host::plugin::PluginEngine;

use common::{
    VOCABULARY, WORDS_PER_LINE, env_or, instance_config, instantiate_times, measure, median,
    pipeline, status_mib, wasm,
};

/// Instantiations timed per language.
const INSTANTIATIONS: u32 = 50;
/// Instances held at once to measure the memory of one.
const HELD_INSTANCES: u32 = 10;

/// A word-count plugin to measure.
struct Language {
    name: &'static str,
    plugin: &'static str,
    lines: u64,
}

/// What was measured for one language.
struct Measured {
    size_mb: f64,
    compile: Duration,
    cached: Duration,
    instantiate: Duration,
    instance_mib: f64,
    rate: f64,
    peak_mib: f64,
}

/// The plugin that `weir_test_plugins::all()` lists as `name`, if built.
fn find_plugin(name: &str) -> Option<&'static str> {
    weir_test_plugins::all()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, path)| *path)
}

/// Runs the pipeline with `plugin` counting, `runs` times in a child
/// process, and returns the median rate and the child's peak RSS.
fn count_in_child(cache: &Path, plugin: &str, lines: u64, runs: usize) -> Result<(f64, f64)> {
    let output = Command::new(std::env::current_exe()?)
        .arg("--child")
        .arg(cache)
        .arg(plugin)
        .arg(lines.to_string())
        .arg(runs.to_string())
        .stderr(Stdio::inherit())
        .output()
        .context("starting the child process")?;
    ensure!(output.status.success(), "the child process failed");
    let stdout = String::from_utf8(output.stdout)?;
    let (rate, peak) = stdout
        .trim()
        .split_once(' ')
        .with_context(|| format!("unexpected child output {stdout:?}"))?;
    Ok((rate.parse()?, peak.parse()?))
}

/// The child's side of [`count_in_child`]: `args` are the cache
/// directory, plugin, lines and runs; prints `rate peak`.
fn child(args: &[String]) -> Result<()> {
    let [cache, plugin, lines, runs] = args else {
        bail!("usage: languages --child CACHE PLUGIN LINES RUNS");
    };
    let engine = PluginEngine::new(Some(cache.into()))?;
    let graph = pipeline(
        lines.parse()?,
        wasm(weir_test_plugins::TOKENIZE, ""),
        wasm(plugin, ""),
    );
    let (rate, peak) = measure(&engine, &graph, runs.parse()?)?;
    println!("{rate} {peak}");
    Ok(())
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; this harness takes no other arguments.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(("--child", rest)) = args.split_first().map(|(a, r)| (a.as_str(), r)) {
        return child(rest);
    }
    let runs: usize = env_or("WEIR_BENCH_RUNS", 3);
    let mut languages = vec![Language {
        name: "Rust",
        plugin: weir_test_plugins::WORD_COUNT,
        lines: env_or("WEIR_BENCH_LINES_RUST", 1_000_000),
    }];
    let mut skipped = Vec::new();
    for (name, listed, var, lines) in [
        (
            "Python",
            "python/word-count",
            "WEIR_BENCH_LINES_PYTHON",
            100_000,
        ),
        ("JavaScript", "js/word-count", "WEIR_BENCH_LINES_JS", 20_000),
    ] {
        match find_plugin(listed) {
            Some(plugin) => languages.push(Language {
                name,
                plugin,
                lines: env_or(var, lines),
            }),
            None => skipped.push(format!(
                "{name} skipped: `weir_test_plugins::all()` has no `{listed}`."
            )),
        }
    }

    let cache = tempfile::tempdir()?;
    let engine = PluginEngine::new(Some(cache.path().to_owned()))?;
    // Compiled now so that no timed load or run includes it.
    engine.load("tokenize", weir_test_plugins::TOKENIZE.as_ref())?;

    let mut measured = Vec::new();
    for lang in &languages {
        let path = lang.plugin.as_ref();
        let size_mb = std::fs::metadata(path)
            .with_context(|| format!("reading {}", lang.plugin))?
            .len() as f64
            / 1e6;
        let compiled = engine.load("count", path)?;
        ensure!(
            !compiled.stats.from_cache,
            "{} was compiled before",
            lang.name
        );
        let loaded = engine.load("count", path)?;
        ensure!(loaded.stats.from_cache, "{} was not cached", lang.name);
        let instantiate = median(instantiate_times(&loaded, INSTANTIATIONS)?);

        // Resident memory that live, idle instances add, after the timed
        // instantiations above have paid for anything shared.
        let before = status_mib("VmRSS:");
        let held = (0..HELD_INSTANCES)
            .map(|i| futures::executor::block_on(loaded.instantiate(instance_config(i))))
            .collect::<Result<Vec<_>, _>>()?;
        let instance_mib = (status_mib("VmRSS:") - before) / f64::from(HELD_INSTANCES);
        drop(held);

        let (rate, peak_mib) = count_in_child(cache.path(), lang.plugin, lang.lines, runs)
            .with_context(|| format!("counting words in {}", lang.name))?;
        measured.push(Measured {
            size_mb,
            compile: compiled.stats.elapsed,
            cached: loaded.stats.elapsed,
            instantiate,
            instance_mib,
            rate,
            peak_mib,
        });
    }

    // Rust's rate on each other language's number of lines.
    let mut rust_rate = BTreeMap::new();
    rust_rate.insert(languages[0].lines, measured[0].rate);
    for lang in &languages[1..] {
        if let Entry::Vacant(entry) = rust_rate.entry(lang.lines) {
            let word_count = weir_test_plugins::WORD_COUNT;
            entry.insert(count_in_child(cache.path(), word_count, lang.lines, runs)?.0);
        }
    }

    let row = |label: &str, cell: &dyn Fn(&Language, &Measured) -> String| {
        let cells: Vec<String> = languages
            .iter()
            .zip(&measured)
            .map(|(l, m)| cell(l, m))
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let names: Vec<&str> = languages.iter().map(|l| l.name).collect();
    println!("| measure | {} |", names.join(" | "));
    println!("| --- |{}", " --- |".repeat(languages.len()));
    row("component size", &|_, m| format!("{:.2} MB", m.size_mb));
    row("compile, empty cache", &|_, m| {
        format!("{:.0} ms", ms(m.compile))
    });
    row("load from cache", &|_, m| format!("{:.2} ms", ms(m.cached)));
    row(
        &format!("instantiate + open (median of {INSTANTIATIONS})"),
        &|_, m| format!("{:.2} ms", ms(m.instantiate)),
    );
    row(
        &format!("RSS per idle instance ({HELD_INSTANCES} held)"),
        &|_, m| format!("{:.2} MiB", m.instance_mib),
    );
    row(
        &format!(
            "workload ({WORDS_PER_LINE} words per line, {VOCABULARY} distinct, median of {runs})"
        ),
        &|l, _| format!("{} lines", l.lines),
    );
    row("count rate", &|_, m| {
        format!("{:.3} M records/s", m.rate / 1e6)
    });
    row("Rust on the same lines", &|l, _| {
        format!("{:.3} M records/s", rust_rate[&l.lines] / 1e6)
    });
    row("**rate / Rust**", &|l, m| {
        let ratio = m.rate / rust_rate[&l.lines];
        format!("**{:.1}%** (1/{:.0})", 100.0 * ratio, 1.0 / ratio)
    });
    row("peak RSS during the runs", &|_, m| {
        format!("{:.0} MiB", m.peak_mib)
    });
    for note in skipped {
        println!("\n{note}");
    }
    Ok(())
}
