//! The NATS example's helper (`examples/nats/run.sh`): fills a JetStream
//! stream with the words of a text file and reads the word counts back.
//!
//! ```text
//! nats-words feed URL FILE PARTITIONS   # streams `words` and `counts`, then the words
//! nats-words counts URL                 # the final count per word, highest first
//! ```

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["feed", url, file, partitions] => feed(url, file, partitions.parse()?).await,
        ["counts", url] => counts(url).await,
        _ => bail!("usage: nats-words feed URL FILE PARTITIONS | nats-words counts URL"),
    }
}

async fn context(url: &str) -> anyhow::Result<jetstream::Context> {
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(jetstream::new(client))
}

/// Creates (or replaces) stream `words` over `words.*` and stream `counts`
/// over `counts` (de-duplicating for 10 minutes, as the sink needs), then
/// publishes the file's words round robin over `words.<p>`.
async fn feed(url: &str, file: &str, partitions: usize) -> anyhow::Result<()> {
    let js = context(url).await?;
    for (name, subject, window) in [("words", "words.*", 120), ("counts", "counts", 600)] {
        let _ = js.delete_stream(name).await;
        js.create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            duplicate_window: Duration::from_secs(window),
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating stream {name}"))?;
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    let mut acks = std::collections::VecDeque::new();
    let mut n = 0;
    for word in text.split_whitespace() {
        let subject = format!("words.{}", n % partitions.max(1));
        acks.push_back(js.publish(subject, word.to_owned().into()).await?);
        // The client allows 5,000 acknowledgements in flight.
        if acks.len() >= 4_000 {
            acks.pop_front().expect("non-empty").await?;
        }
        n += 1;
    }
    for ack in acks {
        ack.await?;
    }
    println!("published {n} words to stream `words` over {partitions} partitions");
    Ok(())
}

/// Prints the highest count per word in stream `counts`, top ten.
async fn counts(url: &str) -> anyhow::Result<()> {
    let js = context(url).await?;
    let mut stream = js.get_stream("counts").await?;
    let total = stream.info().await?.state.messages;
    let mut best: HashMap<String, u64> = HashMap::new();
    if total > 0 {
        let mut messages = stream
            .create_consumer(pull::OrderedConfig::default())
            .await?
            .messages()
            .await?;
        for _ in 0..total {
            let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .context("reading stream counts")?
                .context("the consumer ended")??;
            let word = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Weir-Key"))
                .map(ToString::to_string)
                .unwrap_or_default();
            let count: u64 = std::str::from_utf8(&msg.payload)?.trim().parse()?;
            let e = best.entry(word).or_default();
            *e = (*e).max(count);
        }
    }
    let mut top: Vec<(u64, String)> = best.into_iter().map(|(w, c)| (c, w)).collect();
    top.sort_by(|a, b| b.cmp(a));
    println!("{total} records in stream `counts`; the highest count per word:");
    for (count, word) in top.into_iter().take(10) {
        println!("{count}\t{word}");
    }
    Ok(())
}
