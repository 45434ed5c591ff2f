//! The Kafka example's helper (`examples/kafka/run.sh`): fills a topic
//! with the words of a text file and reads the word counts back.
//!
//! ```text
//! kafka-words feed BROKERS FILE PARTITIONS   # topics `words` and `counts`, then the words
//! kafka-words counts BROKERS                 # the final count per word, highest first
//! ```
//!
//! Words are produced one record per batch, which every Kafka-protocol
//! broker reads back correctly (tansu skips records when a fetch starts
//! inside a batch).

use std::collections::HashMap;

use anyhow::{Context, bail};
use futures::StreamExt;
use rskafka::client::partition::{Compression, OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["feed", brokers, file, partitions] => feed(brokers, file, partitions.parse()?).await,
        ["counts", brokers] => counts(brokers).await,
        _ => bail!("usage: kafka-words feed BROKERS FILE PARTITIONS | kafka-words counts BROKERS"),
    }
}

async fn client(brokers: &str) -> anyhow::Result<Client> {
    ClientBuilder::new(brokers.split(',').map(str::to_owned).collect())
        .build()
        .await
        .with_context(|| format!("connecting to {brokers}"))
}

async fn feed(brokers: &str, file: &str, partitions: i32) -> anyhow::Result<()> {
    let client = client(brokers).await?;
    let controller = client.controller_client()?;
    for (topic, n) in [("words", partitions), ("counts", 2)] {
        controller
            .create_topic(topic, n, 1, 5_000)
            .await
            .with_context(|| format!("creating topic {topic}"))?;
    }
    let mut clients = Vec::new();
    for p in 0..partitions {
        clients.push(
            client
                .partition_client("words", p, UnknownTopicHandling::Retry)
                .await?,
        );
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    let clients = &clients;
    let words: Vec<&str> = text.split_whitespace().collect();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(words.iter().enumerate())
        .map(|(i, w)| async move {
            let record = Record {
                key: None,
                value: Some(w.as_bytes().to_vec()),
                headers: Default::default(),
                timestamp: chrono::Utc::now(),
            };
            clients[i % clients.len()]
                .produce(vec![record], Compression::NoCompression)
                .await?;
            Ok(())
        })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<()>>()?;
    println!(
        "produced {} words to topic `words` over {partitions} partitions",
        words.len()
    );
    Ok(())
}

/// Prints the highest count per word in topic `counts`, top ten.
async fn counts(brokers: &str) -> anyhow::Result<()> {
    let client = client(brokers).await?;
    let mut best: HashMap<String, u64> = HashMap::new();
    let mut total = 0;
    for p in 0..2 {
        let pc = client
            .partition_client("counts", p, UnknownTopicHandling::Error)
            .await?;
        let end = pc.get_offset(OffsetAt::Latest).await?;
        let mut next = pc.get_offset(OffsetAt::Earliest).await?;
        while next < end {
            let (records, _) = pc.fetch_records(next, 1..(8 << 20), 1_000).await?;
            if records.is_empty() {
                bail!("counts/{p}: nothing at offset {next} of {end}");
            }
            let from = next;
            for r in records.into_iter().filter(|r| r.offset >= from) {
                let word = String::from_utf8(r.record.key.unwrap_or_default())?;
                let count: u64 = String::from_utf8(r.record.value.unwrap_or_default())?
                    .trim()
                    .parse()?;
                let e = best.entry(word).or_default();
                *e = (*e).max(count);
                total += 1;
                next = r.offset + 1;
            }
        }
    }
    let mut top: Vec<(u64, String)> = best.into_iter().map(|(w, c)| (c, w)).collect();
    top.sort_by(|a, b| b.cmp(a));
    println!("{total} records in topic `counts`; the highest count per word:");
    for (count, word) in top.into_iter().take(10) {
        println!("{count}\t{word}");
    }
    Ok(())
}
