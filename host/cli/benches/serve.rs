//! `weir serve` benchmarks, driving the real `weir serve` binary over HTTP
//! on loopback:
//!
//! 1. **density**: `WEIR_BENCH_JOBS` idle one-operator jobs (datagen at one
//!    record a second → word count → blackhole, a checkpoint every 10 s)
//!    submitted to one host: the host's resident memory and threads, the
//!    memory per job, and the REST API's latency (`GET /v1/jobs/{id}` and
//!    `GET /v1/jobs`) with them all running;
//! 2. **fairness**: an honest word count's time to finish, alone and beside
//!    a busy tenant (`WEIR_BENCH_BUSY` jobs of the hostile plugin's
//!    `burn` mode, each call well within its limits), with `fair_cpu` on
//!    and off; and the same job under `weir run` (no CPU group) against
//!    the host with `fair_cpu` on, the mechanism's cost alone;
//! 3. **upgrade**: a word count holding `WEIR_BENCH_KEYS` keys upgraded in
//!    place `WEIR_BENCH_RUNS` times (between two builds of the same
//!    operator): the pause each upgrade reports, from the stop request to
//!    the new plugins processing records.
//!
//! Run with `cargo bench -p weir --bench serve`; `WEIR_BENCH_QUICK=1` is a
//! smoke test (few jobs, small state). Prints Markdown tables;
//! BENCHMARKS.md records the results.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A running `weir serve` with tenants `bench` and `busy`, whose tokens
/// it holds.
struct Host {
    child: Child,
    address: String,
    token: String,
    busy_token: String,
    _dir: tempfile::TempDir,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Host {
    /// A host with tenants `bench` (quotas `quota`) and `busy`.
    fn start(fair_cpu: bool, quota: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (token, hash) = weir_host::serve::config::new_token();
        let (busy_token, busy_hash) = weir_host::serve::config::new_token();
        let config = format!(
            "address = \"127.0.0.1:0\"\nfair_cpu = {fair_cpu}\n\
             [[tenants]]\nname = \"bench\"\ntokens = [\"{hash}\"]\n[tenants.quota]\n{quota}\n\
             [[tenants]]\nname = \"busy\"\ntokens = [\"{busy_hash}\"]\n[tenants.quota]\n{quota}\n"
        );
        std::fs::write(dir.path().join("host.toml"), config)?;
        let log = dir.path().join("serve.log");
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weir-plugin-cache");
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--config"])
            .arg(dir.path().join("host.toml"))
            .env("WEIR_CACHE_DIR", cache)
            .env("WEIR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let started = Instant::now();
        let address = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(a) = text
                .lines()
                .find_map(|l| l.split("REST API on ").nth(1))
                .and_then(|r| r.split_whitespace().next())
            {
                break a.trim_start_matches("http://").to_owned();
            }
            if let Some(status) = child.try_wait()? {
                bail!("weir serve exited ({status}): {text}");
            }
            ensure!(
                started.elapsed() < Duration::from_secs(60),
                "no address: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Host {
            child,
            address,
            token,
            busy_token,
            _dir: dir,
        })
    }

    fn http(&self, method: &str, path: &str, token: &str, body: &[u8]) -> Result<(u16, String)> {
        let mut s = std::net::TcpStream::connect(&self.address)?;
        s.set_read_timeout(Some(Duration::from_secs(300)))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Authorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
            self.address,
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status")?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((status, body))
    }

    fn json(&self, method: &str, path: &str, body: &[u8]) -> Result<serde_json::Value> {
        self.json_as(&self.token.clone(), method, path, body)
    }

    fn json_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<serde_json::Value> {
        let (status, text) = self.http(method, path, token, body)?;
        ensure!(
            (200..300).contains(&status),
            "{method} {path}: {status} {text}"
        );
        Ok(serde_json::from_str(&text)?)
    }

    /// Uploads `plugin` as `token`'s tenant: its `sha256:` name.
    fn upload(&self, token: &str, plugin: &str) -> Result<String> {
        let v = self.json_as(token, "POST", "/v1/plugins", &std::fs::read(plugin)?)?;
        Ok(v["plugin"].as_str().context("no plugin")?.to_owned())
    }

    fn submit(&self, token: &str, job: &str) -> Result<String> {
        let body = serde_json::json!({ "job": job }).to_string();
        let v = self.json_as(token, "POST", "/v1/jobs", body.as_bytes())?;
        Ok(v["id"].as_str().context("no id")?.to_owned())
    }

    fn state(&self, token: &str, id: &str) -> Result<String> {
        let v = self.json_as(token, "GET", &format!("/v1/jobs/{id}"), b"")?;
        Ok(v["state"].as_str().unwrap_or_default().to_owned())
    }

    fn wait_state(&self, token: &str, id: &str, state: &str, limit: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let now = self.state(token, id)?;
            if now == state {
                return Ok(());
            }
            ensure!(now != "FAILED", "job {id} failed");
            ensure!(started.elapsed() < limit, "job {id} is {now}, not {state}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A field of the host's /proc status, in MiB (or a count).
    /// The host's memory mappings (the kernel's `vm.max_map_count` bounds
    /// them).
    fn mappings(&self) -> usize {
        std::fs::read_to_string(format!("/proc/{}/maps", self.child.id()))
            .map_or(0, |m| m.lines().count())
    }

    fn status(&self, field: &str) -> f64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .map(|v| {
                v.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .unwrap_or(0.0)
            })
            .unwrap_or(0.0);
        if field == "Threads:" {
            value
        } else {
            value / 1024.0
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One datagen → `plugin` (`config`) → blackhole job; with `tokenize`
/// (an uploaded tokenize plugin), the words are keyed by it first and
/// `plugin` sits behind a hash edge.
fn job(
    name: &str,
    tokenize: Option<&str>,
    plugin: &str,
    config: &str,
    datagen: &str,
    checkpoints: &str,
) -> String {
    let (keyed, input) = match tokenize {
        Some(t) => (
            format!("[[operators]]\nuid = \"tokenize\"\nplugin = \"{t}\"\ninput = \"words\"\n"),
            "input = \"tokenize\"\npartition = \"hash\"",
        ),
        None => (String::new(), "input = \"words\""),
    };
    format!(
        "name = \"{name}\"\n[[sources]]\nuid = \"words\"\ntype = \"datagen\"\n{datagen}\n{keyed}\
         [[operators]]\nuid = \"count\"\nplugin = \"{plugin}\"\nconfig = \"{config}\"\n{input}\n\
         [[sinks]]\nuid = \"out\"\ntype = \"blackhole\"\ninput = \"count\"\n\
         [checkpoints]\ninterval = \"{checkpoints}\"\n"
    )
}

const BIG_QUOTA: &str = "running_jobs = 100000\nsubtasks = 1000000\nmemory_mb = 1048576\n\
                         instance_memory_mb = 1024\nstate_mb = 4096";

fn density(jobs: usize) -> Result<()> {
    let host = Host::start(true, BIG_QUOTA)?;
    let token = host.token.clone();
    let plugin = host.upload(&token, weir_test_plugins::TOKENIZE)?;
    let before = host.status("VmRSS:");
    let text = job(
        "idle",
        None,
        &plugin,
        "",
        "vocabulary = 100\nrate = 1",
        "10s",
    );
    let started = Instant::now();
    let mut ids = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        ids.push(host.submit(&token, &text)?);
    }
    let submitted = started.elapsed();
    for id in &ids {
        host.wait_state(&token, id, "RUNNING", Duration::from_secs(600))?;
    }
    // Every job checkpoints at least once.
    std::thread::sleep(Duration::from_secs(12));
    let rss = host.status("VmRSS:");
    let threads = host.status("Threads:");
    let maps = host.mappings();
    let mut one = Vec::new();
    for i in 0..1000 {
        let id = &ids[(i * 7919) % ids.len()];
        let t = Instant::now();
        host.json("GET", &format!("/v1/jobs/{id}"), b"")?;
        one.push(t.elapsed());
    }
    one.sort();
    let mut list = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        host.json("GET", "/v1/jobs", b"")?;
        list.push(t.elapsed());
    }
    list.sort();
    println!(
        "| {jobs} | {:.1} ms | {rss:.0} MiB | {:.2} MiB | {threads:.0} | {maps} | {:.2} / {:.2} ms | {:.1} / {:.1} ms |",
        ms(submitted) / jobs as f64,
        (rss - before) / jobs as f64,
        ms(percentile(&one, 0.5)),
        ms(percentile(&one, 0.99)),
        ms(percentile(&list, 0.5)),
        ms(percentile(&list, 0.99)),
    );
    Ok(())
}

/// The honest job: `records` words counted as fast as possible.
fn honest(tokenize: &str, plugin: &str, records: u64) -> String {
    job(
        "honest",
        Some(tokenize),
        plugin,
        "",
        &format!("vocabulary = 10000\nrecords = {records}\nwords_per_record = 1"),
        "1s",
    )
}

/// Seconds until the honest job finishes on `host`, with `busy` burning
/// jobs of the other tenant running.
fn honest_time(fair: bool, records: u64, busy: usize) -> Result<f64> {
    let host = Host::start(fair, BIG_QUOTA)?;
    let token = host.token.clone();
    let plugin = host.upload(&token, weir_test_plugins::WORD_COUNT)?;
    let tokenize = host.upload(&token, weir_test_plugins::TOKENIZE)?;
    let busy_token = host.busy_token.clone();
    let hostile = host.upload(&busy_token, weir_test_plugins::HOSTILE)?;
    for _ in 0..busy {
        let text = job(
            "burn",
            None,
            &hostile,
            "burn:20",
            "vocabulary = 1000",
            "10s",
        );
        host.submit(&busy_token, &text)?;
    }
    if busy > 0 {
        std::thread::sleep(Duration::from_secs(2));
    }
    let started = Instant::now();
    let id = host.submit(&token, &honest(&tokenize, &plugin, records))?;
    host.wait_state(&token, &id, "FINISHED", Duration::from_secs(600))?;
    Ok(started.elapsed().as_secs_f64())
}

fn weir_run_time(records: u64) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let text = honest(
        weir_test_plugins::TOKENIZE,
        weir_test_plugins::WORD_COUNT,
        records,
    )
    .replace(
        "interval = \"1s\"",
        &format!(
            "interval = \"1s\"\nstorage = \"{}\"",
            dir.path().join("cp").display()
        ),
    );
    let path = dir.path().join("job.toml");
    std::fs::write(&path, text)?;
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weir-plugin-cache");
    let started = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--quiet"])
        .arg(&path)
        .env("WEIR_CACHE_DIR", cache)
        .env("WEIR_LOG", "warn")
        .env("WEIR_REST_ADDRESS", "127.0.0.1:0")
        .stderr(Stdio::null())
        .status()?;
    ensure!(status.success(), "weir run failed");
    Ok(started.elapsed().as_secs_f64())
}

fn fairness(records: u64, busy: usize, runs: usize) -> Result<()> {
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let mut rows = Vec::new();
    let run_alone = median(
        (0..runs)
            .map(|_| weir_run_time(records))
            .collect::<Result<_>>()?,
    );
    for fair in [true, false] {
        let alone = median(
            (0..runs)
                .map(|_| honest_time(fair, records, 0))
                .collect::<Result<_>>()?,
        );
        let beside = median(
            (0..runs)
                .map(|_| honest_time(fair, records, busy))
                .collect::<Result<_>>()?,
        );
        rows.push((fair, alone, beside));
    }
    println!("\n### An honest job beside a busy tenant\n");
    println!(
        "Word count of {records} words; the busy tenant runs {busy} jobs burning CPU on every record. \
         `weir run` of the same job: {run_alone:.2} s.\n"
    );
    println!(
        "| fair_cpu | alone | beside the busy tenant | share of its speed alone | alone vs `weir run` |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (fair, alone, beside) in rows {
        println!(
            "| {fair} | {alone:.2} s | {beside:.2} s | {:.0}% | {:+.1}% |",
            100.0 * alone / beside,
            100.0 * (alone / run_alone - 1.0)
        );
    }
    Ok(())
}

fn upgrade(keys: u64, runs: usize) -> Result<()> {
    let host = Host::start(true, BIG_QUOTA)?;
    let token = host.token.clone();
    let a = host.upload(&token, weir_test_plugins::WORD_COUNT)?;
    let b = host.upload(&token, weir_test_plugins::WORD_COUNT_BROKEN)?;
    let tokenize = host.upload(&token, weir_test_plugins::TOKENIZE)?;
    let text = job(
        "upgrade",
        Some(&tokenize),
        &a,
        "",
        &format!("vocabulary = {keys}\nrate = 50000\nwords_per_record = 1"),
        "1s",
    );
    let id = host.submit(&token, &text)?;
    host.wait_state(&token, &id, "RUNNING", Duration::from_secs(60))?;
    // Long enough for the count to hold nearly every key.
    std::thread::sleep(Duration::from_secs((keys / 25_000).clamp(3, 60)));
    let mut pauses = Vec::new();
    let (mut stops, mut checks) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let plugin = if i % 2 == 0 { &b } else { &a };
        let body = serde_json::json!({ "plugins": { "count": plugin } }).to_string();
        let v = host.json("POST", &format!("/v1/jobs/{id}/upgrade"), body.as_bytes())?;
        ensure!(v["rolled_back"] == false, "upgrade {i} rolled back: {v}");
        pauses.push(Duration::from_millis(v["pause_ms"].as_u64().unwrap_or(0)));
        stops.push(Duration::from_millis(v["stop_ms"].as_u64().unwrap_or(0)));
        checks.push(Duration::from_millis(v["check_ms"].as_u64().unwrap_or(0)));
    }
    pauses.sort();
    stops.sort();
    checks.sort();
    println!("\n### Upgrade in place\n");
    println!(
        "| keys | upgrades | pause p50 | p99 | max | of it, p50: stop | check | restore to first record |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let (p50, s50, c50) = (
        percentile(&pauses, 0.5),
        percentile(&stops, 0.5),
        percentile(&checks, 0.5),
    );
    println!(
        "| {keys} | {runs} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
        ms(p50),
        ms(percentile(&pauses, 0.99)),
        ms(*pauses.last().unwrap()),
        ms(s50),
        ms(c50),
        ms(p50.saturating_sub(s50 + c50)),
    );
    Ok(())
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let quick = std::env::var("WEIR_BENCH_QUICK").is_ok_and(|v| v == "1");
    let jobs: String = env_or(
        "WEIR_BENCH_JOBS",
        if quick { "20" } else { "500,1000,1800" }.to_owned(),
    );
    let records = env_or(
        "WEIR_BENCH_RECORDS",
        if quick { 200_000 } else { 3_000_000 },
    );
    let busy = env_or("WEIR_BENCH_BUSY", 4);
    let runs = env_or("WEIR_BENCH_RUNS", if quick { 1 } else { 3 });
    let keys = env_or("WEIR_BENCH_KEYS", if quick { 10_000 } else { 100_000 });
    let upgrades = env_or("WEIR_BENCH_UPGRADES", if quick { 4 } else { 20 });
    let only: Option<String> = std::env::var("WEIR_BENCH_ONLY").ok();
    let want = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|x| x == name))
    };
    if want("density") {
        println!("\n### Idle jobs on one host\n");
        println!(
            "| jobs | submit each | host RSS | per job | threads | mappings | GET job p50 / p99 | GET list p50 / p99 |"
        );
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for n in jobs.split(',') {
            density(n.trim().parse().context("WEIR_BENCH_JOBS")?)?;
        }
    }
    if want("fairness") {
        fairness(records, busy, runs)?;
    }
    if want("upgrade") {
        upgrade(keys, upgrades)?;
    }
    Ok(())
}
