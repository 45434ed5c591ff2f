//! NATS JetStream end to end: each test starts its own `nats-server -js`
//! on loopback (the Debian package `.ci/run` installs), publishes words
//! into a partitioned stream, and runs the word count from it to a
//! JetStream sink through `kill -9`s, a rescaled savepoint and a broker
//! that goes away, checking the sink stream holds every count exactly once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;

use super::checkpoints::{run_through_kills, spawn_weir, wait_for};
use super::savepoints::Running;
use super::{broker_installed, free_port, plugins, stderr, wait_listening, weir};

/// A `nats-server -js` of one test, on a port of its own, with its store in
/// a temporary directory; killed on drop.
struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl NatsServer {
    /// Starts a server, or `None` (the test is skipped) where `nats-server`
    /// is not installed and `.ci/run` did not ask for it.
    fn start(test: &str) -> Option<Self> {
        if !broker_installed("nats-server", test, ".ci/run installs the Debian package") {
            return None;
        }
        let port = free_port();
        let mut server = NatsServer {
            child: None,
            port,
            store: tempfile::tempdir().unwrap(),
        };
        server.restart();
        Some(server)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port and store) and waits
    /// until it takes connections.
    fn restart(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        wait_listening(self.port, "nats-server");
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn jetstream(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.expect("connecting to nats"))
}

/// Creates stream `words` over `words.*` holding `words` published
/// round robin over `partitions` subjects `words.<p>`, and the sink's
/// stream `counts` over `counts` (de-duplicating for 10 minutes).
fn prepare(url: &str, words: &[&str], partitions: usize) {
    runtime().block_on(async {
        let js = jetstream(url).await;
        js.create_stream(stream::Config {
            name: "words".into(),
            subjects: vec!["words.*".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        js.create_stream(stream::Config {
            name: "counts".into(),
            subjects: vec!["counts".into()],
            duplicate_window: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut acks = std::collections::VecDeque::new();
        for (i, w) in words.iter().enumerate() {
            let ack = js
                .publish(format!("words.{}", i % partitions), w.to_string().into())
                .await
                .unwrap();
            acks.push_back(ack);
            // Below the client's 5,000 acknowledgements in flight.
            if acks.len() >= 4_000 {
                acks.pop_front().unwrap().await.unwrap();
            }
        }
        for ack in acks {
            ack.await.unwrap();
        }
    });
}

/// Every message of stream `counts`, as `(word, count)` in stream order.
fn sink_records(url: &str) -> Vec<(String, u64)> {
    runtime().block_on(async {
        let js = jetstream(url).await;
        let mut counts = js.get_stream("counts").await.unwrap();
        let total = counts.info().await.unwrap().state.messages;
        let mut out = Vec::with_capacity(total as usize);
        if total == 0 {
            return out;
        }
        let mut messages = counts
            .create_consumer(pull::OrderedConfig::default())
            .await
            .unwrap()
            .messages()
            .await
            .unwrap();
        while (out.len() as u64) < total {
            let msg = tokio::time::timeout(Duration::from_secs(30), messages.next())
                .await
                .expect("the sink stream is read back")
                .unwrap()
                .unwrap();
            let word = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Weir-Key"))
                .expect("every record carries its key")
                .to_string();
            let count = std::str::from_utf8(&msg.payload).unwrap().parse().unwrap();
            out.push((word, count));
        }
        out
    })
}

/// Checks stream `counts` holds every word's counts 1, 2, …, n once each,
/// n being its frequency in `words`; `ordered`: in that order too.
///
/// A broker that goes away loses the publishes in its socket while later
/// ones, buffered by the client, go out after it is back; the restart
/// publishes the lost ones again, after them. So a lost broker keeps each
/// count exactly once but not every key's order; a `kill -9` of the job
/// keeps both (what reached the broker is a prefix of what was sent).
fn assert_sink_exactly_once(url: &str, words: &[&str], ordered: bool) {
    let mut expected: HashMap<String, u64> = HashMap::new();
    for w in words {
        *expected.entry((*w).to_owned()).or_default() += 1;
    }
    let records = sink_records(url);
    assert_eq!(
        records.len(),
        words.len(),
        "one committed record per input word"
    );
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for (word, count) in records {
        let counts = seen.entry(word.clone()).or_default();
        if ordered {
            assert_eq!(
                count,
                counts.len() as u64 + 1,
                "counts of `{word}` out of order"
            );
        }
        counts.push(count);
    }
    for (word, counts) in &mut seen {
        counts.sort_unstable();
        let n = expected.get(word).copied().unwrap_or(0);
        assert_eq!(
            *counts,
            (1..=n).collect::<Vec<_>>(),
            "the counts of `{word}`"
        );
    }
    assert_eq!(seen.len(), expected.len(), "every word counted");
}

/// `n` words over a vocabulary of `vocabulary`, deterministic.
fn words(n: usize, vocabulary: usize) -> Vec<String> {
    let text = super::corpus(n.div_ceil(10), vocabulary);
    text.split_whitespace().take(n).map(str::to_owned).collect()
}

/// The word count from stream `words` to stream `counts`.
fn job(dir: &Path, name: &str, url: &str, parallelism: u32, bounded: bool) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        r#"
name = "nats-wordcount"
parallelism = {parallelism}

[[sources]]
uid = "words"
type = "nats"

[sources.nats]
url = "{url}"
stream = "words"
subject = "words"
partitions = 4
bounded = {bounded}

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
uid = "counts"
type = "nats"
input = "count"

[sinks.nats]
url = "{url}"
subject = "counts"

[checkpoints]
interval = "100ms"
storage = "{storage}"

[restart]
strategy = "fixed-delay"
attempts = 100
delay = "200ms"
"#,
        tokenize = plugins::TOKENIZE,
        count = plugins::WORD_COUNT,
        storage = dir.join("checkpoints").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The newest completed checkpoint of the job, 0 if none.
#[test]
fn a_jetstream_word_count_survives_kill_9_exactly_once() {
    let Some(server) = NatsServer::start("a_jetstream_word_count_survives_kill_9_exactly_once")
    else {
        return;
    };
    let words = words(1_000_000, 20_000);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    prepare(&server.url(), &words, 4);
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "job.toml", &server.url(), 2, true);
    let job = job.to_str().unwrap();

    run_through_kills(
        dir.path(),
        job,
        &dir.path().join("checkpoints/nats-wordcount"),
        5,
        Duration::from_millis(300),
    );
    assert_sink_exactly_once(&server.url(), &words, true);
}

#[test]
fn a_jetstream_savepoint_restores_at_parallelism_3_and_a_lost_broker_restarts_the_job() {
    let test = "a_jetstream_savepoint_restores_at_parallelism_3_and_a_lost_broker_restarts_the_job";
    let Some(mut server) = NatsServer::start(test) else {
        return;
    };
    let words = words(1_000_000, 5_000);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    prepare(&server.url(), &words, 4);
    let dir = tempfile::tempdir().unwrap();
    let savepoints = dir.path().join("savepoints");

    // Parallelism 2, stopped with a savepoint while reading.
    let root = ["--savepoint-root", savepoints.to_str().unwrap()];
    let mut r = Running::start(&job(dir.path(), "p2.toml", &server.url(), 2, false), &root);
    r.wait_for_log("checkpoint 1 completed");
    let sp = r.stop(&savepoints);
    let shown = weir(&["savepoint", "inspect", &sp]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.contains("words/3 at "), "{shown}");

    // Parallelism 3 from the savepoint; the broker goes away mid-run and
    // comes back: the job restarts under its strategy and still ends with
    // every count exactly once.
    let log = dir.path().join("p3.log");
    // Requests time out after 1 s, so the outage below outlasts them.
    let p3 = job(dir.path(), "p3.toml", &server.url(), 3, true);
    let text = std::fs::read_to_string(&p3)
        .unwrap()
        .replace("[sources.nats]\n", "[sources.nats]\ntimeout_ms = 1000\n")
        .replace("[sinks.nats]\n", "[sinks.nats]\ntimeout_ms = 1000\n");
    assert_eq!(text.matches("timeout_ms = 1000").count(), 2);
    std::fs::write(&p3, text).unwrap();
    let mut child = spawn_weir(&["run", "--quiet", p3.to_str().unwrap(), "-s", &sp], &log);
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(" completed in ")
    {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint at parallelism 3:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished too early:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Longer than the connectors' 1 s request timeout: whichever of the
    // source and the sink talks to the broker first fails.
    server.stop();
    std::thread::sleep(Duration::from_millis(3000));
    server.restart();
    let ok = wait_for(&mut child, Duration::from_secs(300)).expect("the job ends");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(ok, "the restored run failed:\n{log}");
    assert!(
        (log.contains("failed: sink `counts`") || log.contains("failed: source `words`"))
            && log.contains("restart 1 "),
        "the lost broker restarted the job:\n{log}"
    );
    assert_sink_exactly_once(&server.url(), &words, false);
}

#[test]
fn jetstream_errors_name_the_connector() {
    let Some(server) = NatsServer::start("jetstream_errors_name_the_connector") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // No stream `words`: an error naming the source and stream, not a retry
    // loop.
    let missing = job(dir.path(), "job.toml", &server.url(), 1, true);
    let o = weir(&["run", "--quiet", missing.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("source `words`") && e.contains("stream `words` does not exist"),
        "{e}"
    );
    // A server that is not there: the broker named, the restart strategy
    // applied, then the job fails.
    let down = job(dir.path(), "down.toml", "nats://127.0.0.1:1", 1, true);
    let text = std::fs::read_to_string(&down)
        .unwrap()
        .replace("attempts = 100", "attempts = 1");
    std::fs::write(&down, text).unwrap();
    let o = weir(&["run", "--quiet", down.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("source `words`") && e.contains("NATS at nats://127.0.0.1:1"),
        "{e}"
    );
}
