//! Kafka end to end, against tansu (the one Kafka-protocol broker that
//! installs here; `.ci/run` builds it into a cache). tansu is not a
//! faithful Kafka: a fetch that starts inside a record batch skips to the
//! next batch, and it has no transactions. So the test data is produced one
//! record per batch (every offset is a batch start), and no test claims
//! more than tansu can show: the source's partition offsets through
//! `kill -9`s with exactly-once output at a file sink, and the sink's
//! at-least-once delivery.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use rskafka::client::partition::{Compression, OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

use super::checkpoints::{assert_exactly_once, run_through_kills};
use super::{broker_installed, free_port, plugins, stderr, wait_listening, weir};

/// A tansu broker of one test, on a port of its own, in memory; killed on
/// drop.
struct Tansu {
    child: Child,
    port: u16,
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tansu {
    /// Starts a broker, or `None` (the test is skipped) where tansu is not
    /// installed and `.ci/run` did not ask for it.
    fn start(test: &str) -> Option<Self> {
        let binary = std::env::var("WEIR_TEST_TANSU").unwrap_or_else(|_| "tansu".into());
        if !broker_installed(&binary, test, ".ci/run builds it; WEIR_TEST_TANSU names it") {
            return None;
        }
        let port = free_port();
        let child = Command::new(&binary)
            .args(tansu_args(port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        wait_listening(port, "tansu");
        Some(Tansu { child, port })
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// tansu's command line for a broker on `port`, storing in memory.
fn tansu_args(port: u16) -> Vec<String> {
    let address = format!("tcp://127.0.0.1:{port}");
    vec![
        "broker".into(),
        "--listener-url".into(),
        address.clone(),
        "--advertised-listener-url".into(),
        address,
        "--storage-engine".into(),
        "memory://tansu/".into(),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn client(brokers: &str) -> Client {
    ClientBuilder::new(vec![brokers.to_owned()])
        .build()
        .await
        .expect("connecting to the broker")
}

/// Creates topic `name` with `partitions` partitions.
async fn create_topic(client: &Client, name: &str, partitions: i32) {
    client
        .controller_client()
        .unwrap()
        .create_topic(name, partitions, 1, 5_000)
        .await
        .unwrap();
}

/// Topic `words` of 4 partitions holding `words`, one record per batch
/// (round robin over the partitions).
fn prepare(brokers: &str, words: &[&str]) {
    runtime().block_on(async {
        let client = client(brokers).await;
        create_topic(&client, "words", 4).await;
        let mut partitions = Vec::new();
        for p in 0..4 {
            partitions.push(
                client
                    .partition_client("words", p, UnknownTopicHandling::Retry)
                    .await
                    .unwrap(),
            );
        }
        let partitions = &partitions;
        futures::stream::iter(words.iter().enumerate())
            .map(|(i, w)| async move {
                let record = Record {
                    key: None,
                    value: Some(w.as_bytes().to_vec()),
                    headers: Default::default(),
                    timestamp: chrono::Utc::now(),
                };
                partitions[i % 4]
                    .produce(vec![record], Compression::NoCompression)
                    .await
                    .unwrap();
            })
            .buffer_unordered(64)
            .collect::<Vec<()>>()
            .await;
    });
}

/// Every record of topic `topic`, as `(key, value)`, partition by partition.
fn topic_records(brokers: &str, topic: &str, partitions: i32) -> Vec<(String, String)> {
    runtime().block_on(async {
        let client = client(brokers).await;
        let mut out = Vec::new();
        for p in 0..partitions {
            let pc = client
                .partition_client(topic, p, UnknownTopicHandling::Error)
                .await
                .unwrap();
            let end = pc.get_offset(OffsetAt::Latest).await.unwrap();
            let mut next = pc.get_offset(OffsetAt::Earliest).await.unwrap();
            while next < end {
                let (records, _) = pc.fetch_records(next, 1..(8 << 20), 1_000).await.unwrap();
                assert!(
                    !records.is_empty(),
                    "{topic}/{p}: nothing at offset {next} of {end}"
                );
                let from = next;
                for r in records.into_iter().filter(|r| r.offset >= from) {
                    let text =
                        |b: Option<Vec<u8>>| String::from_utf8(b.unwrap_or_default()).unwrap();
                    out.push((text(r.record.key), text(r.record.value)));
                    next = r.offset + 1;
                }
            }
        }
        out
    })
}

fn words(n: usize, vocabulary: usize) -> Vec<String> {
    let text = super::corpus(n.div_ceil(10), vocabulary);
    text.split_whitespace().take(n).map(str::to_owned).collect()
}

/// The word count from topic `words` to files in `out`, or (`to_kafka`)
/// to topic `counts`.
fn job(dir: &Path, brokers: &str, to_kafka: bool) -> PathBuf {
    let path = dir.join("job.toml");
    let sink = if to_kafka {
        format!(
            "type = \"kafka\"\ninput = \"count\"\n\n[sinks.kafka]\nbrokers = \"{brokers}\"\ntopic = \"counts\"\n"
        )
    } else {
        format!(
            "type = \"file\"\ninput = \"count\"\npath = \"{}\"\n",
            dir.join("out").display()
        )
    };
    let text = format!(
        r#"
name = "kafka-wordcount"
parallelism = 2

[[sources]]
uid = "words"
type = "kafka"

[sources.kafka]
brokers = "{brokers}"
topic = "words"
partitions = 4
bounded = true

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
{sink}
[checkpoints]
interval = "100ms"
storage = "{storage}"
"#,
        tokenize = plugins::TOKENIZE,
        count = plugins::WORD_COUNT,
        storage = dir.join("checkpoints").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_kafka_word_count_survives_kill_9_exactly_once_at_a_file_sink() {
    let Some(broker) =
        Tansu::start("a_kafka_word_count_survives_kill_9_exactly_once_at_a_file_sink")
    else {
        return;
    };
    let words = words(200_000, 5_000);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    prepare(&broker.brokers(), &words);
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), &broker.brokers(), false);
    let job = job.to_str().unwrap();
    run_through_kills(
        dir.path(),
        job,
        &dir.path().join("checkpoints/kafka-wordcount"),
        5,
        Duration::from_millis(200),
    );
    assert_exactly_once(&dir.path().join("out"), &words.join(" "));
}

#[test]
fn a_kafka_sink_delivers_every_record_and_errors_name_the_connector() {
    let Some(broker) =
        Tansu::start("a_kafka_sink_delivers_every_record_and_errors_name_the_connector")
    else {
        return;
    };
    let words = words(20_000, 1_000);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    prepare(&broker.brokers(), &words);
    runtime().block_on(async {
        create_topic(&client(&broker.brokers()).await, "counts", 3).await;
    });
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), &broker.brokers(), true);
    let o = weir(&["run", "--quiet", job.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // At least once, and with no failure exactly once: every count of
    // every word, each word in the partition its key hashes to.
    let records = topic_records(&broker.brokers(), "counts", 3);
    let mut expected: HashMap<String, u64> = HashMap::new();
    for w in &words {
        *expected.entry((*w).to_owned()).or_default() += 1;
    }
    let mut got: HashMap<String, Vec<u64>> = HashMap::new();
    for (word, count) in records {
        got.entry(word).or_default().push(count.parse().unwrap());
    }
    for (word, counts) in &mut got {
        counts.sort_unstable();
        let n = expected[word.as_str()];
        assert_eq!(
            *counts,
            (1..=n).collect::<Vec<_>>(),
            "the counts of `{word}`"
        );
    }
    assert_eq!(got.len(), expected.len());

    // A topic that does not exist ends the job with its name; a broker that
    // is not there is named.
    let text = std::fs::read_to_string(&job).unwrap();
    std::fs::write(
        &job,
        text.replace("topic = \"counts\"", "topic = \"nowhere\""),
    )
    .unwrap();
    let o = weir(&["run", "--quiet", job.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("sink `counts`") && e.contains("topic `nowhere` does not exist"),
        "{e}"
    );
    let text = std::fs::read_to_string(&job).unwrap();
    // One retry, so the run ends: the restart strategy applies to a broker
    // that is down.
    let text = text.replace(&broker.brokers(), "127.0.0.1:1")
        + "\n[restart]\nstrategy = \"fixed-delay\"\nattempts = 1\ndelay = \"100ms\"\n";
    std::fs::write(&job, text).unwrap();
    let o = weir(&["run", "--quiet", job.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("source `words`") && e.contains("Kafka at 127.0.0.1:1"),
        "{e}"
    );
}
