//! The broker connectors' own cost: the word count (tokenize → key by word
//! → count, Wasm plugins) from a NATS JetStream stream to a JetStream
//! sink, beside the same job reading from `datagen` and writing to
//! `blackhole`, at parallelism 1 and 2, with a checkpoint every second.
//!
//! Needs `nats-server` (the Debian package); starts its own on a free
//! loopback port. Run with `cargo bench -p weir --bench connectors`; set
//! `WEIR_BENCH_WORDS` (default 2,000,000 one-word messages) and
//! `WEIR_BENCH_RUNS` (default 3). Prints a Markdown table; BENCHMARKS.md
//! records the results.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, stream};
use weir_host::job::{self, JobFile};
use weir_host::metrics::JobMetrics;
use weir_host::plugin::PluginEngine;
use weir_host::runtime;

const VOCABULARY: u64 = 100_000;
const PARTITIONS: u64 = 4;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The server, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(store: &Path) -> Result<(Server, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nats-server (Debian: apt-get install nats-server)")?;
    let server = Server(child);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((server, format!("nats://127.0.0.1:{port}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nats-server did not listen on port {port}")
}

/// Word `i` of the input: the same distribution as `datagen`'s words.
fn word(i: u64) -> String {
    format!("w{}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % VOCABULARY)
}

/// Stream `words` with `n` one-word messages over the partitions, and an
/// empty stream `counts`.
async fn fill(url: &str, n: u64) -> Result<()> {
    let js = jetstream::new(async_nats::connect(url).await?);
    js.create_stream(stream::Config {
        name: "words".into(),
        subjects: vec!["words.*".into()],
        ..Default::default()
    })
    .await?;
    let mut acks = VecDeque::new();
    for i in 0..n {
        acks.push_back(
            js.publish(format!("words.{}", i % PARTITIONS), word(i).into())
                .await?,
        );
        if acks.len() >= 4_000 {
            acks.pop_front().expect("non-empty").await?;
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// Replaces stream `counts` with an empty one.
async fn empty_counts(url: &str) -> Result<()> {
    let js = jetstream::new(async_nats::connect(url).await?);
    let _ = js.delete_stream("counts").await;
    js.create_stream(stream::Config {
        name: "counts".into(),
        subjects: vec!["counts".into()],
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    })
    .await?;
    Ok(())
}

async fn stored_counts(url: &str) -> Result<u64> {
    let js = jetstream::new(async_nats::connect(url).await?);
    Ok(js.get_stream("counts").await?.info().await?.state.messages)
}

fn job_text(
    url: &str,
    n: u64,
    parallelism: u32,
    from_nats: bool,
    to_nats: bool,
    dir: &Path,
) -> String {
    let source = if from_nats {
        format!(
            "type = \"nats\"\n[sources.nats]\nurl = \"{url}\"\nstream = \"words\"\nsubject = \"words\"\npartitions = {PARTITIONS}\nbounded = true\n"
        )
    } else {
        format!("type = \"datagen\"\nseed = 42\nrecords = {n}\nvocabulary = {VOCABULARY}\n")
    };
    let sink = if to_nats {
        format!(
            "type = \"nats\"\ninput = \"count\"\n[sinks.nats]\nurl = \"{url}\"\nsubject = \"counts\"\n"
        )
    } else {
        "type = \"blackhole\"\ninput = \"count\"\n".into()
    };
    format!(
        r#"name = "bench"
parallelism = {parallelism}

[[sources]]
uid = "words"
{source}
[[operators]]
uid = "tokenize"
plugin = "{tokenize}"
input = "words"
partition = "rebalance"

[[operators]]
uid = "count"
plugin = "{count}"
input = "tokenize"
partition = "hash"

[[sinks]]
uid = "out"
{sink}
[checkpoints]
interval = "1s"
storage = "{storage}"
"#,
        tokenize = weir_test_plugins::TOKENIZE,
        count = weir_test_plugins::WORD_COUNT,
        storage = dir.join("checkpoints").display(),
    )
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    let n: u64 = env_or("WEIR_BENCH_WORDS", 2_000_000);
    let runs: usize = env_or("WEIR_BENCH_RUNS", 3);
    let store = tempfile::tempdir()?;
    let (_server, url) = start_server(store.path())?;
    let io = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = std::time::Instant::now();
    io.block_on(fill(&url, n))?;
    let fill_rate = n as f64 / started.elapsed().as_secs_f64();

    let cache = tempfile::tempdir()?;
    let engine = PluginEngine::new(Some(cache.path().to_owned()))?;
    for p in [weir_test_plugins::TOKENIZE, weir_test_plugins::WORD_COUNT] {
        engine.load("bench", p.as_ref())?;
    }
    println!(
        "{n} one-word records, vocabulary {VOCABULARY}, {PARTITIONS} partitions, a checkpoint every second; median of {runs} runs"
    );
    println!("(filling the stream with a pipelining publisher: {fill_rate:.0} messages/s)\n");
    println!("| source → sink | parallelism | records/s |");
    println!("| --- | --- | --- |");
    for parallelism in [1, 2] {
        for (from_nats, to_nats, name) in [
            (false, false, "datagen → blackhole"),
            (true, false, "JetStream → blackhole"),
            (false, true, "datagen → JetStream (exactly once)"),
            (true, true, "JetStream → JetStream (exactly once)"),
        ] {
            let mut rates = Vec::new();
            for _ in 0..runs {
                io.block_on(empty_counts(&url))?;
                let dir = tempfile::tempdir()?;
                let text = job_text(&url, n, parallelism, from_nats, to_nats, dir.path());
                let file: JobFile = toml::from_str(&text)?;
                let graph = job::build_graph(file, dir.path())
                    .map_err(|p| anyhow::anyhow!("bench job: {p:?}"))?;
                let report = runtime::run(&graph, &engine, JobMetrics::for_graph(&graph))?;
                let counted = report.vertices[2].1;
                anyhow::ensure!(counted == n, "{name}: counted {counted} of {n} words");
                if to_nats {
                    let stored = io.block_on(stored_counts(&url))?;
                    anyhow::ensure!(stored == n, "{name}: {stored} of {n} counts published");
                }
                rates.push(n as f64 / report.elapsed.as_secs_f64());
            }
            rates.sort_by(f64::total_cmp);
            println!("| {name} | {parallelism} | {:.0} |", rates[rates.len() / 2]);
        }
    }
    Ok(())
}
