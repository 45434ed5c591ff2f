//! The `kafka` connector: a Kafka source and an at-least-once sink, on
//! `rskafka`, a pure-Rust client (no librdkafka to build).
//!
//! **Source.** Split `<topic>/<p>` per partition of the topic; its position
//! is one past the next offset to read (0: not started, so the `start`
//! policy applies once and its offset is recorded from then on). Each
//! fetch waits at most 100 ms on the broker. Offsets are kept only in
//! checkpoints: the client has no consumer groups, so nothing is committed
//! back to Kafka.
//!
//! **Sink.** At least once: records are produced to the partition the key
//! picks (Kafka's murmur2 partitioner, as a Java producer picks it) or
//! round robin without a key, and the sink waits for the broker at every
//! barrier. The client has no transactions, so there is no exactly-once
//! mode.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::Record;
use serde::Deserialize;
use tokio::sync::OnceCell;

use weir_format::snapshot::SourceSplit;
use weir_format::{BatchReader, BatchWriter};

use super::{
    Endpoint, Sink, SinkKind, Source, SplitKind, bad_batch, partition_splits, read_secret,
    split_partition, timeout_problem,
};
use crate::checkpoint::CheckpointId;
use crate::checkpoint::format::SubtaskSnapshot;
use crate::error::Error;

/// The most partitions a `kafka` source may name.
pub const MAX_PARTITIONS: u32 = 4096;

/// How long a fetch waits on the broker for records.
const FETCH_WAIT_MS: i32 = 100;

/// The most bytes one fetch asks for.
const FETCH_BYTES: i32 = 1 << 20;

/// The default `max_record_bytes`: Kafka's default `max.message.bytes`.
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 1 << 20;

/// The most bytes a sink buffers per partition before it produces them.
const PRODUCE_BYTES: usize = 512 << 10;

/// Where a fresh split starts reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Start {
    /// The earliest record the partition still holds.
    #[default]
    Earliest,
    /// After the last record at the split's first open.
    Latest,
    /// The first record at or after `start_timestamp_ms`.
    Timestamp,
}

/// SASL/PLAIN credentials, as written.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaAuth {
    /// SASL/PLAIN user.
    pub sasl_user: Option<String>,
    /// Its password.
    pub sasl_password: Option<String>,
    /// A file holding the password (trailing newline ignored).
    pub sasl_password_file: Option<PathBuf>,
}

impl fmt::Debug for KafkaAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sasl_user {
            Some(user) => write!(f, "KafkaAuth(SASL/PLAIN as {user})"),
            None => f.write_str("KafkaAuth(none)"),
        }
    }
}

impl KafkaAuth {
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let has_password = self.sasl_password.is_some() || self.sasl_password_file.is_some();
        if self.sasl_user.is_some() && !has_password {
            out.push((
                "sasl_password",
                "`sasl_user` needs `sasl_password` or `sasl_password_file`".into(),
            ));
        }
        if self.sasl_user.is_none() && has_password {
            out.push(("sasl_user", "a SASL password needs `sasl_user`".into()));
        }
        if self.sasl_password.is_some() && self.sasl_password_file.is_some() {
            out.push((
                "sasl_password_file",
                "give `sasl_password` or `sasl_password_file`, not both".into(),
            ));
        }
        out
    }

    fn resolve(&mut self, base: &Path) {
        if let Some(p) = &mut self.sasl_password_file
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
    }
}

/// A `kafka` source's `[sources.kafka]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceSpec {
    /// Bootstrap brokers, `host:port`, comma-separated.
    pub brokers: String,
    /// The topic.
    pub topic: String,
    /// The topic's partitions; a topic with more is an error (the job
    /// would miss some).
    pub partitions: u32,
    /// `earliest` (default), `latest` or `timestamp`.
    #[serde(default)]
    pub start: Start,
    /// With `start = "timestamp"`: milliseconds since the epoch.
    pub start_timestamp_ms: Option<i64>,
    /// Whether each split ends at the partition's end as of its first open.
    #[serde(default)]
    pub bounded: bool,
    /// Connect and request timeout in milliseconds (default 10,000).
    pub timeout_ms: Option<u64>,
    /// Authentication.
    #[serde(flatten)]
    pub auth: KafkaAuth,
}

/// A `kafka` sink's `[sinks.kafka]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkSpec {
    /// Bootstrap brokers, `host:port`, comma-separated.
    pub brokers: String,
    /// The topic; it must exist.
    pub topic: String,
    /// The largest record value the sink produces (default 1 MiB, Kafka's
    /// default `max.message.bytes`); a larger one is an error.
    pub max_record_bytes: Option<u64>,
    /// Connect and request timeout in milliseconds (default 10,000).
    pub timeout_ms: Option<u64>,
    /// Authentication.
    #[serde(flatten)]
    pub auth: KafkaAuth,
}

/// A `kafka` source, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSource {
    /// As written, file names resolved.
    pub spec: KafkaSourceSpec,
}

/// A `kafka` sink, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSink {
    /// As written, file names resolved.
    pub spec: KafkaSinkSpec,
}

fn brokers_problem(brokers: &str) -> Option<(&'static str, String)> {
    brokers
        .split(',')
        .any(|b| b.trim().is_empty() || !b.contains(':'))
        .then(|| {
            (
                "brokers",
                format!("must be host:port, comma-separated, got {brokers:?}"),
            )
        })
}

fn topic_problem(topic: &str) -> Option<(&'static str, String)> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    (!ok).then(|| {
        (
            "topic",
            "must be 1 to 249 of ASCII letters, digits, `.`, `_` and `-`".into(),
        )
    })
}

impl KafkaSource {
    /// Validates `spec`; problems as `(field within the table, message)`.
    ///
    /// # Errors
    /// Every problem found.
    pub fn new(
        mut spec: KafkaSourceSpec,
        base: &Path,
    ) -> Result<Self, Vec<(&'static str, String)>> {
        let mut problems = spec.auth.problems();
        problems.extend(brokers_problem(&spec.brokers));
        problems.extend(topic_problem(&spec.topic));
        if spec.partitions == 0 || spec.partitions > MAX_PARTITIONS {
            problems.push((
                "partitions",
                format!(
                    "must be between 1 and {MAX_PARTITIONS}, got {}",
                    spec.partitions
                ),
            ));
        }
        match (spec.start, spec.start_timestamp_ms) {
            (Start::Timestamp, None) => problems.push((
                "start_timestamp_ms",
                "`start = \"timestamp\"` needs `start_timestamp_ms`".into(),
            )),
            (Start::Earliest | Start::Latest, Some(_)) => problems.push((
                "start_timestamp_ms",
                "applies to `start = \"timestamp\"` only".into(),
            )),
            (Start::Timestamp, Some(ms)) if ms < 0 => problems.push((
                "start_timestamp_ms",
                format!("must be milliseconds since the epoch, got {ms}"),
            )),
            _ => {}
        }
        problems.extend(timeout_problem(spec.timeout_ms));
        spec.auth.resolve(base);
        if problems.is_empty() {
            Ok(Self { spec })
        } else {
            Err(problems)
        }
    }
}

impl KafkaSink {
    /// Validates `spec`; problems as `(field within the table, message)`.
    ///
    /// # Errors
    /// Every problem found.
    pub fn new(mut spec: KafkaSinkSpec, base: &Path) -> Result<Self, Vec<(&'static str, String)>> {
        let mut problems = spec.auth.problems();
        problems.extend(brokers_problem(&spec.brokers));
        problems.extend(topic_problem(&spec.topic));
        if let Some(max) = spec.max_record_bytes
            && (max == 0 || max > 1 << 30)
        {
            problems.push((
                "max_record_bytes",
                format!("must be between 1 and {} (1 GiB), got {max}", 1u64 << 30),
            ));
        }
        problems.extend(timeout_problem(spec.timeout_ms));
        spec.auth.resolve(base);
        if problems.is_empty() {
            Ok(Self { spec })
        } else {
            Err(problems)
        }
    }
}

/// A client, connected on first use.
struct Connection {
    at: Endpoint,
    auth: KafkaAuth,
    client: OnceCell<Client>,
}

/// A connection is its endpoint (who, where, how long) and a client.
impl std::ops::Deref for Connection {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.at
    }
}

impl Connection {
    fn new(
        role: &'static str,
        uid: &str,
        brokers: &str,
        auth: &KafkaAuth,
        timeout_ms: Option<u64>,
    ) -> Self {
        Self {
            at: Endpoint::new(role, uid, "Kafka", brokers, timeout_ms),
            auth: auth.clone(),
            client: OnceCell::new(),
        }
    }

    /// Runs a request to the broker, bounded by the timeout. An answer a
    /// retry would get again (an offset retention deleted, a record the
    /// broker finds too large, refused authorization) ends the job;
    /// anything else may pass, so the restart strategy applies.
    async fn bounded<T>(
        &self,
        what: impl fmt::Display,
        request: impl Future<Output = Result<T, rskafka::client::error::Error>>,
    ) -> Result<T, Error> {
        use rskafka::client::error::{Error as KafkaError, ProtocolError as P};
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(
                e @ KafkaError::ServerError {
                    protocol_error:
                        P::OffsetOutOfRange
                        | P::MessageTooLarge
                        | P::RecordListTooLarge
                        | P::InvalidTopicException
                        | P::TopicAuthorizationFailed
                        | P::ClusterAuthorizationFailed
                        | P::UnsupportedSaslMechanism
                        | P::SaslAuthenticationFailed,
                    ..
                },
            )) => Err(self.refused(format!(
                "Kafka at {}: {what}: {e} (a retry would meet it again)",
                self.address
            ))),
            Ok(Err(e)) => Err(self.broker(format!("{what}: {e}"))),
            Err(_) => Err(self.broker(format!("{what}: no answer within {:?}", self.timeout))),
        }
    }

    async fn client(&self) -> Result<&Client, Error> {
        self.client
            .get_or_try_init(|| async {
                let brokers = self
                    .address
                    .split(',')
                    .map(|b| b.trim().to_owned())
                    .collect();
                let mut builder = ClientBuilder::new(brokers)
                    .client_id(format!("weir-{}-{}", self.role, self.uid))
                    .backoff_config(rskafka::BackoffConfig {
                        deadline: Some(self.timeout),
                        ..Default::default()
                    });
                if let Some(user) = &self.auth.sasl_user {
                    let password = match (&self.auth.sasl_password, &self.auth.sasl_password_file) {
                        (Some(p), _) => p.clone(),
                        (None, Some(path)) => read_secret("sasl_password_file", path)
                            .map_err(|message| self.refused(message))?,
                        (None, None) => String::new(),
                    };
                    builder = builder
                        .sasl_config(SaslConfig::Plain(Credentials::new(user.clone(), password)));
                }
                self.bounded("cannot connect", builder.build()).await
            })
            .await
    }

    /// The partitions of `topic`, or an error naming it if there is none.
    async fn partitions(&self, topic: &str) -> Result<u32, Error> {
        let client = self.client().await?;
        let topics = self
            .bounded("cannot list topics", client.list_topics())
            .await?;
        topics
            .into_iter()
            .find(|t| t.name == topic)
            .map(|t| t.partitions.len() as u32)
            .ok_or_else(|| {
                self.refused(format!(
                    "Kafka at {}: topic `{topic}` does not exist",
                    self.address
                ))
            })
    }

    async fn partition(&self, topic: &str, partition: u32) -> Result<PartitionClient, Error> {
        let client = self.client().await?;
        self.bounded(
            format!("cannot reach partition {topic}/{partition}"),
            client.partition_client(topic, partition as i32, UnknownTopicHandling::Error),
        )
        .await
    }
}

/// The `kafka` source of one subtask: its splits share one client.
pub(crate) struct KafkaSplits {
    uid: String,
    source: KafkaSource,
    connection: Arc<Connection>,
}

impl KafkaSplits {
    pub(crate) fn new(uid: &str, source: &KafkaSource) -> Self {
        let spec = &source.spec;
        Self {
            uid: uid.to_owned(),
            connection: Arc::new(Connection::new(
                "source",
                uid,
                &spec.brokers,
                &spec.auth,
                spec.timeout_ms,
            )),
            source: source.clone(),
        }
    }
}

impl SplitKind for KafkaSplits {
    fn initial(&self, _: u32) -> Vec<SourceSplit> {
        partition_splits(&self.source.spec.topic, self.source.spec.partitions)
    }

    fn open(&self, split: &SourceSplit) -> Result<Box<dyn Source>, Error> {
        let spec = &self.source.spec;
        let partition = split_partition(&self.uid, split, &spec.topic, spec.partitions)?;
        Ok(Box::new(KafkaReader {
            connection: self.connection.clone(),
            topic: spec.topic.clone(),
            partitions: spec.partitions,
            partition,
            start: spec.start,
            start_timestamp_ms: spec.start_timestamp_ms,
            bounded: spec.bounded,
            position: split.position,
            client: None,
            end: None,
        }))
    }
}

/// The reader of one partition.
struct KafkaReader {
    connection: Arc<Connection>,
    topic: String,
    partitions: u32,
    partition: u32,
    start: Start,
    start_timestamp_ms: Option<i64>,
    bounded: bool,
    /// One past the next offset to read; 0 before the start is resolved.
    position: u64,
    client: Option<PartitionClient>,
    /// Bounded: the partition's end offset at the first open.
    end: Option<i64>,
}

impl KafkaReader {
    fn name(&self) -> String {
        format!("{}/{}", self.topic, self.partition)
    }

    /// Connects, checks the topic, resolves the start and the end.
    async fn open(&mut self) -> Result<(), Error> {
        let c = self.connection.clone();
        let found = c.partitions(&self.topic).await?;
        if found != self.partitions {
            return Err(c.refused(format!(
                "topic `{}` has {found} partitions and the job names {}: set `partitions = {found}`",
                self.topic, self.partitions
            )));
        }
        let client = c.partition(&self.topic, self.partition).await?;
        if self.position == 0 {
            let at = match self.start {
                Start::Earliest => OffsetAt::Earliest,
                Start::Latest => OffsetAt::Latest,
                Start::Timestamp => OffsetAt::Timestamp(
                    chrono::DateTime::from_timestamp_millis(self.start_timestamp_ms.unwrap_or(0))
                        .unwrap_or_default(),
                ),
            };
            let offset = c
                .bounded(
                    format!("cannot find the start of {}", self.name()),
                    client.get_offset(at),
                )
                .await?;
            self.position = offset.max(0) as u64 + 1;
        }
        if self.bounded && self.end.is_none() {
            let end = c
                .bounded(
                    format!("cannot find the end of {}", self.name()),
                    client.get_offset(OffsetAt::Latest),
                )
                .await?;
            self.end = Some(end);
        }
        self.client = Some(client);
        Ok(())
    }
}

impl Source for KafkaReader {
    fn next_batch<'a>(
        &'a mut self,
        out: &'a mut BatchWriter,
        max: usize,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            if self.client.is_none() {
                self.open().await?;
            }
            let next = self.position as i64 - 1;
            if self.end.is_some_and(|end| next >= end) {
                return Ok(false);
            }
            let client = self.client.as_ref().expect("opened above");
            let (records, _high_watermark) = self
                .connection
                .bounded(
                    format!("cannot fetch {} from offset {next}", self.name()),
                    client.fetch_records(next, 1..FETCH_BYTES, FETCH_WAIT_MS),
                )
                .await?;
            for r in records.into_iter().filter(|r| r.offset >= next).take(max) {
                if self.end.is_some_and(|end| r.offset >= end) {
                    break;
                }
                let record = r.record;
                out.push(
                    record.key.as_deref(),
                    record.value.as_deref().unwrap_or_default(),
                    Some(record.timestamp.timestamp_millis()),
                );
                self.position = r.offset as u64 + 2;
            }
            let next = self.position as i64 - 1;
            Ok(self.end.is_none_or(|end| next < end))
        })
    }

    fn offset(&self) -> u64 {
        self.position
    }
}

/// Kafka's default partitioner hash (`Utils.murmur2` of the Java client).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java producer's default partitioner picks for `key`.
fn partition_of(key: &[u8], partitions: u32) -> u32 {
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions
}

/// The `kafka` sink of a vertex.
pub(crate) struct KafkaSinkKind {
    pub uid: String,
    pub sink: KafkaSink,
}

impl SinkKind for KafkaSinkKind {
    fn open(&self, subtask: u32, _: &SubtaskSnapshot) -> Result<Box<dyn Sink>, Error> {
        let spec = &self.sink.spec;
        Ok(Box::new(KafkaProducer {
            connection: Connection::new(
                "sink",
                &self.uid,
                &spec.brokers,
                &spec.auth,
                spec.timeout_ms,
            ),
            uid: self.uid.clone(),
            topic: spec.topic.clone(),
            max_record_bytes: spec.max_record_bytes.unwrap_or(DEFAULT_MAX_RECORD_BYTES),
            partitions: Vec::new(),
            buffered: BTreeMap::new(),
            buffered_bytes: 0,
            next_unkeyed: subtask,
        }))
    }
}

/// The at-least-once sink of one subtask.
struct KafkaProducer {
    connection: Connection,
    uid: String,
    topic: String,
    max_record_bytes: u64,
    /// One client per partition, once connected.
    partitions: Vec<PartitionClient>,
    /// Records not yet produced, per partition.
    buffered: BTreeMap<u32, Vec<Record>>,
    buffered_bytes: usize,
    /// Where the next record without a key goes.
    next_unkeyed: u32,
}

impl KafkaProducer {
    async fn connect(&mut self) -> Result<(), Error> {
        if self.partitions.is_empty() {
            let n = self.connection.partitions(&self.topic).await?;
            let mut clients = Vec::with_capacity(n as usize);
            for p in 0..n {
                clients.push(self.connection.partition(&self.topic, p).await?);
            }
            self.partitions = clients;
        }
        Ok(())
    }

    /// Produces everything buffered and waits for the broker.
    async fn produce(&mut self) -> Result<(), Error> {
        if self.buffered.is_empty() {
            return Ok(());
        }
        self.connect().await?;
        for (p, records) in std::mem::take(&mut self.buffered) {
            let client = &self.partitions[p as usize];
            self.connection
                .bounded(
                    format!("cannot produce to {}/{p}", self.topic),
                    client.produce(records, Compression::NoCompression),
                )
                .await?;
        }
        self.buffered_bytes = 0;
        Ok(())
    }
}

impl Sink for KafkaProducer {
    fn write_batch<'a>(&'a mut self, batch: &'a [u8]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.connect().await?;
            let n = self.partitions.len() as u32;
            // Records without a timestamp take the batch's arrival time.
            let now = chrono::Utc::now();
            for r in BatchReader::new(batch) {
                let r = r.map_err(|e| bad_batch(&self.uid, e))?;
                let size = r.value.len() + r.key.map_or(0, <[u8]>::len);
                if size as u64 > self.max_record_bytes {
                    return Err(self.connection.refused(format!(
                        "a record of {size} bytes is larger than its max_record_bytes ({}); Kafka refuses records over the topic's max.message.bytes",
                        self.max_record_bytes
                    )));
                }
                let p = match r.key {
                    Some(key) => partition_of(key, n),
                    None => {
                        self.next_unkeyed = (self.next_unkeyed + 1) % n;
                        self.next_unkeyed
                    }
                };
                let timestamp = r
                    .timestamp
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .unwrap_or(now);
                self.buffered.entry(p).or_default().push(Record {
                    key: r.key.map(<[u8]>::to_vec),
                    value: Some(r.value.to_vec()),
                    headers: BTreeMap::new(),
                    timestamp,
                });
                self.buffered_bytes += size;
            }
            if self.buffered_bytes >= PRODUCE_BYTES {
                self.produce().await?;
            }
            Ok(())
        })
    }

    fn pre_commit<'a>(
        &'a mut self,
        _: CheckpointId,
        _: &'a mut SubtaskSnapshot,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.produce())
    }

    fn commit(&mut self, _: CheckpointId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.produce())
    }

    fn finish(&mut self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.produce())
    }

    fn abandon(&mut self) -> BoxFuture<'_, Result<(), Error>> {
        // At least once: what followed the savepoint is produced too.
        Box::pin(self.produce())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Kafka's UtilsTest.testMurmur2.
        for (input, hash) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(input.as_bytes()), hash, "{input}");
        }
    }

    #[test]
    fn specs_are_checked_field_by_field() {
        let base = Path::new("/jobs");
        let ok: KafkaSourceSpec = toml::from_str(
            "brokers = \"a:9092,b:9092\"\ntopic = \"t\"\npartitions = 3\nstart = \"timestamp\"\nstart_timestamp_ms = 5\nsasl_user = \"u\"\nsasl_password_file = \"pw\"",
        )
        .unwrap();
        let ok = KafkaSource::new(ok, base).unwrap();
        assert_eq!(
            ok.spec.auth.sasl_password_file.as_deref(),
            Some(Path::new("/jobs/pw"))
        );
        let bad: KafkaSourceSpec = toml::from_str(
            "brokers = \"nohost\"\ntopic = \"a b\"\npartitions = 0\nstart = \"timestamp\"\nsasl_password = \"p\"\ntimeout_ms = 0",
        )
        .unwrap();
        let fields: Vec<&str> = KafkaSource::new(bad, base)
            .unwrap_err()
            .iter()
            .map(|(f, _)| *f)
            .collect();
        assert_eq!(
            fields,
            [
                "sasl_user",
                "brokers",
                "topic",
                "partitions",
                "start_timestamp_ms",
                "timeout_ms"
            ]
        );
        let shown = format!("{:?}", ok.spec.auth);
        assert!(!shown.contains("pw"), "{shown}");
    }

    #[test]
    fn splits_are_the_topics_partitions() {
        let spec: KafkaSourceSpec =
            toml::from_str("brokers = \"a:1\"\ntopic = \"t\"\npartitions = 2").unwrap();
        let kind = KafkaSplits::new("in", &KafkaSource::new(spec, Path::new("/")).unwrap());
        let splits = kind.initial(4);
        assert_eq!(
            splits.iter().map(|s| s.split.as_str()).collect::<Vec<_>>(),
            ["t/0", "t/1"]
        );
        let foreign = SourceSplit {
            split: "t/2".into(),
            position: 1,
            finished: false,
        };
        assert!(kind.open(&foreign).is_err());
    }
}
