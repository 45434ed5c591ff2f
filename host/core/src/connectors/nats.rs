//! The `nats` connector: a NATS JetStream source and sink.
//!
//! **Source.** A stream's messages on `subject` are divided into
//! `partitions` splits: with one partition the split reads every message
//! the subject filter (wildcards allowed) matches; with `n > 1`, split `p`
//! reads the subject `<subject>.<p>` (the publisher partitions, as a Kafka
//! producer does). A split is named `<stream>/<p>` and its position is the
//! stream sequence of the last message it returned, so a restore — after a
//! failure, a `kill -9`, or at another parallelism — resumes each split at
//! the next sequence. A split reads through an ordered consumer (ephemeral,
//! no acknowledgements, recreated by the client if it loses a message), so
//! nothing on the server advances before a checkpoint completes: the
//! checkpoint's positions are the only record of progress.
//!
//! **Sink.** Exactly once (the default): the records of each checkpoint
//! interval are kept as a transaction, stored in the checkpoint at its
//! barrier (a list in the sink namespace) and published only once the
//! checkpoint completed, each with the message id
//! `<job>/<uid>/<run>/<checkpoint>/<subtask>/<n>`, so that JetStream's
//! de-duplication drops a transaction published again after a restore. At
//! least once publishes every record at once and waits for the
//! acknowledgements at each barrier.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull, context::PublishAckFuture};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde::Deserialize;
use tokio::sync::OnceCell;

use weir_format::snapshot::{Namespace, SourceSplit};
use weir_format::{BatchReader, BatchWriter, Value};

use super::{
    Endpoint, Sink, SinkKind, Source, SplitKind, bad_batch, partition_splits, read_secret,
    split_partition, timeout_problem,
};
use crate::checkpoint::CheckpointId;
use crate::checkpoint::format::SubtaskSnapshot;
use crate::error::Error;

/// The most partitions a `nats` source may have.
pub const MAX_PARTITIONS: u32 = 4096;

/// The default of `max_pending_bytes`: 64 MiB.
pub const DEFAULT_MAX_PENDING_BYTES: u64 = 64 << 20;

/// The most `max_pending_bytes` may be: 1 GiB.
pub const MAX_PENDING_BYTES: u64 = 1 << 30;

/// How long a source's fetch waits for a first message before it returns
/// an empty batch (so barriers and cancels are never held up longer).
const FETCH_WAIT: Duration = Duration::from_millis(100);

/// How many publishes a sink keeps unacknowledged before it waits for the
/// oldest: below the client's own limit (5,000), at which a publish would
/// wait for a permit that only awaiting the oldest returns.
const MAX_IN_FLIGHT: usize = 4000;

/// The header a sink stores a record's key in.
pub const KEY_HEADER: &str = "Weir-Key";

/// The sink's list of pre-committed transactions, in [`Namespace::Sink`].
const TRANSACTIONS: &str = "transactions";

/// How a connector authenticates, as written in its table. At most one of
/// the three ways; secrets are read at connect time and never logged.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsAuth {
    /// A NATS credentials file (`.creds`: a user JWT and its nkey seed).
    pub credentials: Option<PathBuf>,
    /// A user name, with `password` or `password_file`.
    pub user: Option<String>,
    /// The user's password.
    pub password: Option<String>,
    /// A file holding the user's password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// An authentication token.
    pub token: Option<String>,
    /// A file holding the token (trailing newline ignored).
    pub token_file: Option<PathBuf>,
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let way = if self.credentials.is_some() {
            "credentials file"
        } else if self.user.is_some() {
            "user and password"
        } else if self.token.is_some() || self.token_file.is_some() {
            "token"
        } else {
            "none"
        };
        write!(f, "NatsAuth({way})")
    }
}

impl NatsAuth {
    /// Problems with the fields, as `(field, message)`.
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let ways = [
            self.credentials.is_some(),
            self.user.is_some(),
            self.token.is_some() || self.token_file.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            out.push((
                "credentials",
                "give one of `credentials`, `user` (with `password` or `password_file`) and `token` (or `token_file`)".into(),
            ));
        }
        let has_password = self.password.is_some() || self.password_file.is_some();
        if self.user.is_some() && !has_password {
            out.push((
                "password",
                "`user` needs `password` or `password_file`".into(),
            ));
        }
        if self.user.is_none() && has_password {
            out.push(("user", "`password` and `password_file` need `user`".into()));
        }
        if self.password.is_some() && self.password_file.is_some() {
            out.push((
                "password_file",
                "give `password` or `password_file`, not both".into(),
            ));
        }
        if self.token.is_some() && self.token_file.is_some() {
            out.push((
                "token_file",
                "give `token` or `token_file`, not both".into(),
            ));
        }
        out
    }

    /// Resolves the file names relative to the job file's directory.
    fn resolve(&mut self, base: &std::path::Path) {
        for p in [
            &mut self.credentials,
            &mut self.password_file,
            &mut self.token_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

/// A `nats` source's `[sources.nats]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceSpec {
    /// The server, `nats://host:port` (a comma-separated list for a
    /// cluster).
    pub url: String,
    /// The JetStream stream to read.
    pub stream: String,
    /// The subject filter; with `partitions > 1`, partition `p` is the
    /// subject `<subject>.<p>`.
    pub subject: String,
    /// How many splits the subject is divided into (default 1).
    #[serde(default = "one")]
    pub partitions: u32,
    /// The header whose value is a record's key; absent, the key is the
    /// message's subject.
    pub key_header: Option<String>,
    /// Whether each split ends once it has read every message its subject
    /// held when the split was opened (default: read for ever).
    #[serde(default)]
    pub bounded: bool,
    /// Connect and request timeout in milliseconds (default 10,000).
    pub timeout_ms: Option<u64>,
    /// Authentication.
    #[serde(flatten)]
    pub auth: NatsAuth,
}

fn one() -> u32 {
    1
}

/// Whether a sink publishes exactly or at least once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Publish each checkpoint's records once it completed, with message
    /// ids JetStream de-duplicates.
    #[default]
    ExactlyOnce,
    /// Publish at once; a restore publishes again what followed the
    /// checkpoint it restored.
    AtLeastOnce,
}

/// A `nats` sink's `[sinks.nats]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkSpec {
    /// The server, `nats://host:port`.
    pub url: String,
    /// The subject every record is published to (a JetStream stream must
    /// capture it).
    pub subject: String,
    /// `exactly-once` (default) or `at-least-once`.
    #[serde(default)]
    pub delivery: Delivery,
    /// Exactly once: the most bytes of records a subtask may hold between
    /// two checkpoints (default 64 MiB).
    pub max_pending_bytes: Option<u64>,
    /// Connect and request timeout in milliseconds (default 10,000).
    pub timeout_ms: Option<u64>,
    /// Authentication.
    #[serde(flatten)]
    pub auth: NatsAuth,
}

/// A `nats` source, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSource {
    /// As written.
    pub spec: NatsSourceSpec,
}

/// A `nats` sink, validated, with the job it belongs to (message ids name
/// it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSink {
    /// As written.
    pub spec: NatsSinkSpec,
    /// The job's name.
    pub job: String,
}

/// Whether `name` is a valid JetStream stream name.
fn stream_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > 255 {
        Some("must be at most 255 bytes")
    } else if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        Some("must not hold whitespace, `.`, `*`, `>`, `/` or `\\`")
    } else {
        None
    }
}

/// Why `subject` is not a valid subject (`wildcards`: whether `*` and `>`
/// tokens are allowed).
fn subject_problem(subject: &str, wildcards: bool) -> Option<String> {
    if subject.is_empty() || subject.len() > 1024 {
        return Some("must be 1 to 1024 bytes".into());
    }
    for token in subject.split('.') {
        if token.is_empty() {
            return Some("must not have an empty token (`..`, or a `.` at either end)".into());
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Some("must not hold whitespace".into());
        }
        if (token.contains('*') || token.contains('>')) && !wildcards {
            return Some("must not hold a wildcard (`*` or `>`)".into());
        }
    }
    None
}

fn url_problem(url: &str) -> Option<&'static str> {
    (url.trim().is_empty()).then_some("must name a server, such as nats://127.0.0.1:4222")
}

impl NatsSource {
    /// Validates `spec`; problems as `(field within the table, message)`.
    ///
    /// # Errors
    /// Every problem found.
    pub fn new(
        mut spec: NatsSourceSpec,
        base: &std::path::Path,
    ) -> Result<Self, Vec<(&'static str, String)>> {
        let mut problems = spec.auth.problems();
        if let Some(why) = url_problem(&spec.url) {
            problems.push(("url", why.into()));
        }
        if let Some(why) = stream_name_problem(&spec.stream) {
            problems.push(("stream", why.into()));
        }
        if spec.partitions == 0 || spec.partitions > MAX_PARTITIONS {
            problems.push((
                "partitions",
                format!(
                    "must be between 1 and {MAX_PARTITIONS}, got {}",
                    spec.partitions
                ),
            ));
        }
        if let Some(why) = subject_problem(&spec.subject, spec.partitions == 1) {
            problems.push(("subject", why));
        }
        if spec.key_header.as_deref().is_some_and(str::is_empty) {
            problems.push(("key_header", "must not be empty".into()));
        }
        problems.extend(timeout_problem(spec.timeout_ms));
        spec.auth.resolve(base);
        if problems.is_empty() {
            Ok(Self { spec })
        } else {
            Err(problems)
        }
    }

    /// The subject filter of partition `p`.
    fn filter(&self, p: u32) -> String {
        if self.spec.partitions == 1 {
            self.spec.subject.clone()
        } else {
            format!("{}.{p}", self.spec.subject)
        }
    }
}

impl NatsSink {
    /// Validates `spec` for job `job`; problems as `(field within the
    /// table, message)`.
    ///
    /// # Errors
    /// Every problem found.
    pub fn new(
        mut spec: NatsSinkSpec,
        job: &str,
        base: &std::path::Path,
    ) -> Result<Self, Vec<(&'static str, String)>> {
        let mut problems = spec.auth.problems();
        if let Some(why) = url_problem(&spec.url) {
            problems.push(("url", why.into()));
        }
        if let Some(why) = subject_problem(&spec.subject, false) {
            problems.push(("subject", why));
        }
        if let Some(max) = spec.max_pending_bytes
            && (max == 0 || max > MAX_PENDING_BYTES)
        {
            problems.push((
                "max_pending_bytes",
                format!("must be between 1 and {MAX_PENDING_BYTES} (1 GiB), got {max}"),
            ));
        }
        if spec.max_pending_bytes.is_some() && spec.delivery == Delivery::AtLeastOnce {
            problems.push((
                "max_pending_bytes",
                "applies to `exactly-once` delivery only (at least once holds nothing back)".into(),
            ));
        }
        problems.extend(timeout_problem(spec.timeout_ms));
        spec.auth.resolve(base);
        if problems.is_empty() {
            Ok(Self {
                spec,
                job: job.to_owned(),
            })
        } else {
            Err(problems)
        }
    }
}

/// A connection and its JetStream context, opened on first use.
struct Connection {
    at: Endpoint,
    auth: NatsAuth,
    cell: OnceCell<(async_nats::Client, jetstream::Context)>,
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
        url: &str,
        auth: &NatsAuth,
        timeout_ms: Option<u64>,
    ) -> Self {
        Self {
            at: Endpoint::new(role, uid, "NATS", url, timeout_ms),
            auth: auth.clone(),
            cell: OnceCell::new(),
        }
    }

    fn secret(&self, field: &str, path: &std::path::Path) -> Result<String, Error> {
        read_secret(field, path).map_err(|message| self.refused(message))
    }

    async fn get(&self) -> Result<&(async_nats::Client, jetstream::Context), Error> {
        self.cell.get_or_try_init(|| self.connect()).await
    }

    async fn connect(&self) -> Result<(async_nats::Client, jetstream::Context), Error> {
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("weir {} `{}`", self.role, self.uid))
            .connection_timeout(self.timeout)
            .request_timeout(Some(self.timeout));
        let auth = &self.auth;
        if let Some(path) = &auth.credentials {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| self.refused(format!("`credentials` {}: {e}", path.display())))?;
        }
        if let Some(user) = &auth.user {
            let password = match (&auth.password, &auth.password_file) {
                (Some(p), _) => p.clone(),
                (None, Some(path)) => self.secret("password_file", path)?,
                (None, None) => String::new(),
            };
            options = options.user_and_password(user.clone(), password);
        }
        if let Some(token) = &auth.token {
            options = options.token(token.clone());
        } else if let Some(path) = &auth.token_file {
            options = options.token(self.secret("token_file", path)?);
        }
        // The client's own connect timeout covers one attempt; bound the
        // whole (DNS, TLS, handshake) too.
        let client = tokio::time::timeout(self.timeout, options.connect(self.address.as_str()))
            .await
            .map_err(|_| self.broker(format!("no connection within {:?}", self.timeout)))?
            .map_err(|e| self.broker(format!("cannot connect: {e}")))?;
        let mut context = jetstream::new(client.clone());
        context.set_timeout(self.timeout);
        Ok((client, context))
    }
}

/// The `nats` source of one subtask: its splits share one connection.
pub(crate) struct NatsSplits {
    uid: String,
    source: NatsSource,
    connection: Arc<Connection>,
}

impl NatsSplits {
    pub(crate) fn new(uid: &str, source: &NatsSource) -> Self {
        Self {
            uid: uid.to_owned(),
            connection: Arc::new(Connection::new(
                "source",
                uid,
                &source.spec.url,
                &source.spec.auth,
                source.spec.timeout_ms,
            )),
            source: source.clone(),
        }
    }
}

impl SplitKind for NatsSplits {
    fn initial(&self, _: u32) -> Vec<SourceSplit> {
        partition_splits(&self.source.spec.stream, self.source.spec.partitions)
    }

    fn open(&self, split: &SourceSplit) -> Result<Box<dyn Source>, Error> {
        let spec = &self.source.spec;
        let partition = split_partition(&self.uid, split, &spec.stream, spec.partitions)?;
        Ok(Box::new(NatsReader {
            connection: self.connection.clone(),
            stream: spec.stream.clone(),
            filter: self.source.filter(partition),
            key_header: spec.key_header.clone(),
            bounded: spec.bounded,
            position: split.position,
            messages: None,
            caught_up: false,
        }))
    }
}

/// The reader of one split: an ordered consumer from the split's position.
struct NatsReader {
    connection: Arc<Connection>,
    stream: String,
    filter: String,
    key_header: Option<String>,
    bounded: bool,
    /// The stream sequence of the last message returned.
    position: u64,
    messages: Option<pull::Ordered>,
    /// Bounded: the split has nothing left to read.
    caught_up: bool,
}

impl NatsReader {
    /// Creates the ordered consumer from the message after `position`.
    async fn subscribe(&mut self) -> Result<(), Error> {
        let c = &self.connection;
        let (_, context) = c.get().await?;
        let stream = context.get_stream(&self.stream).await.map_err(|e| {
            use async_nats::jetstream::context::GetStreamErrorKind;
            match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    c.refused(format!(
                        "NATS at {}: stream `{}` does not exist",
                        c.address, self.stream
                    ))
                }
                _ => c.broker(format!("cannot look up stream `{}`: {e}", self.stream)),
            }
        })?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: self.filter.clone(),
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: self.position + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| {
                c.broker(format!(
                    "cannot read stream `{}` ({}) from sequence {}: {e}",
                    self.stream,
                    self.filter,
                    self.position + 1
                ))
            })?;
        if self.bounded && consumer.cached_info().num_pending == 0 {
            self.caught_up = true;
            return Ok(());
        }
        let messages = consumer.messages().await.map_err(|e| {
            c.broker(format!(
                "cannot read stream `{}` ({}): {e}",
                self.stream, self.filter
            ))
        })?;
        self.messages = Some(messages);
        Ok(())
    }

    /// Appends one message; whether the split is caught up (bounded).
    fn push(&mut self, msg: &jetstream::Message, out: &mut BatchWriter) -> Result<bool, Error> {
        let info = msg.info().map_err(|e| {
            self.connection.broker(format!(
                "a message of stream `{}` has no metadata: {e}",
                self.stream
            ))
        })?;
        let key: Option<&[u8]> = match &self.key_header {
            None => Some(msg.subject.as_bytes()),
            Some(name) => msg
                .headers
                .as_ref()
                .and_then(|h| h.get(name.as_str()))
                .map(|v| v.as_str().as_bytes()),
        };
        let timestamp = i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).ok();
        out.push(key, &msg.payload, timestamp);
        self.position = info.stream_sequence;
        Ok(self.bounded && info.pending == 0)
    }
}

impl Source for NatsReader {
    fn next_batch<'a>(
        &'a mut self,
        out: &'a mut BatchWriter,
        max: usize,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            if self.messages.is_none() && !self.caught_up {
                self.subscribe().await?;
            }
            if self.caught_up {
                return Ok(false);
            }
            let mut taken = 0;
            while taken < max {
                let messages = self.messages.as_mut().expect("subscribed above");
                // Wait for the first message, then take what has arrived.
                let next = if taken == 0 {
                    match tokio::time::timeout(FETCH_WAIT, messages.next()).await {
                        Ok(next) => next,
                        Err(_) => break,
                    }
                } else {
                    match messages.next().now_or_never() {
                        Some(next) => next,
                        None => break,
                    }
                };
                let msg = match next {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        return Err(self.connection.broker(format!(
                            "reading stream `{}` ({}) after sequence {}: {e}",
                            self.stream, self.filter, self.position
                        )));
                    }
                    None => {
                        return Err(self.connection.broker(format!(
                            "the consumer of stream `{}` ({}) ended",
                            self.stream, self.filter
                        )));
                    }
                };
                taken += 1;
                if self.push(&msg, out)? {
                    self.caught_up = true;
                    self.messages = None;
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    fn offset(&self) -> u64 {
        self.position
    }
}

/// The `nats` sink of a vertex.
pub(crate) struct NatsSinkKind {
    pub uid: String,
    pub sink: NatsSink,
}

impl SinkKind for NatsSinkKind {
    fn open(&self, subtask: u32, restored: &SubtaskSnapshot) -> Result<Box<dyn Sink>, Error> {
        let spec = &self.sink.spec;
        let connection = Connection::new("sink", &self.uid, &spec.url, &spec.auth, spec.timeout_ms);
        let mut pending = Vec::new();
        if let Some(list) = restored
            .lists
            .iter()
            .find(|l| l.namespace == Namespace::Sink && l.name == TRANSACTIONS)
        {
            for (i, item) in list.items.iter().enumerate() {
                pending.push(Transaction::from_value(item).ok_or_else(|| Error::Restore {
                    message: format!(
                        "sink `{}`: item {i} of its pre-committed transactions is not a transaction; was the snapshot taken of another job?",
                        self.uid
                    ),
                })?);
            }
        }
        // A run's transactions are named apart from every other run's, so a
        // fresh start within the de-duplication window is not dropped.
        let run = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        Ok(Box::new(JetStreamSink {
            uid: self.uid.clone(),
            prefix: format!("{}/{}/{run:x}", self.sink.job, self.uid),
            subtask,
            subject: async_nats::Subject::from(spec.subject.as_str()),
            max_payload: None,
            delivery: spec.delivery,
            max_pending_bytes: spec.max_pending_bytes.unwrap_or(DEFAULT_MAX_PENDING_BYTES),
            connection,
            open: BatchWriter::default(),
            pending,
            in_flight: std::collections::VecDeque::new(),
        }))
    }
}

/// One checkpoint interval's records of one subtask, pre-committed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Transaction {
    /// Every message id is `<name>/<n>`.
    name: String,
    /// The checkpoint that pre-committed it; 0 for one restored (its
    /// checkpoint completed).
    checkpoint: u64,
    /// The packed records.
    records: Vec<u8>,
}

impl Transaction {
    fn to_value(&self) -> Value {
        Value::Record(vec![
            ("name".into(), Value::Text(self.name.clone())),
            ("records".into(), Value::Bytes(self.records.clone())),
        ])
    }

    fn from_value(v: &Value) -> Option<Self> {
        let Value::Record(fields) = v else {
            return None;
        };
        match fields.as_slice() {
            [(n, Value::Text(name)), (r, Value::Bytes(records))]
                if n == "name" && r == "records" =>
            {
                Some(Self {
                    name: name.clone(),
                    checkpoint: 0,
                    records: records.clone(),
                })
            }
            _ => None,
        }
    }
}

/// The JetStream sink of one subtask.
struct JetStreamSink {
    uid: String,
    /// `<job>/<uid>/<run>`: the start of this run's transaction names.
    prefix: String,
    subtask: u32,
    /// Shared by every message (a cheap clone).
    subject: async_nats::Subject,
    /// The server's `max_payload`, learnt on first use.
    max_payload: Option<usize>,
    delivery: Delivery,
    max_pending_bytes: u64,
    connection: Connection,
    /// Exactly once: the records since the last barrier.
    open: BatchWriter,
    /// Exactly once: pre-committed transactions, oldest first.
    pending: Vec<Transaction>,
    /// Publishes not yet acknowledged.
    in_flight: std::collections::VecDeque<PublishAckFuture>,
}

impl JetStreamSink {
    /// The largest message the server takes (asked once: the server info
    /// is a copy of a whole struct).
    async fn max_payload(&mut self) -> Result<usize, Error> {
        if self.max_payload.is_none() {
            self.max_payload = Some(self.connection.get().await?.0.server_info().max_payload);
        }
        Ok(self.max_payload.expect("set above"))
    }

    fn too_large(&self, len: usize, max: usize) -> Error {
        self.connection.refused(format!(
            "a record of {len} bytes (key and value) is larger than the {max} bytes the NATS server at {} takes in a message (its max_payload)",
            self.connection.address
        ))
    }

    fn headers(key: Option<&[u8]>, id: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(id) = id {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        }
        if let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok())
            && !key.is_empty()
            && !key.contains(['\r', '\n'])
        {
            headers.insert(KEY_HEADER, key);
        }
        headers
    }

    /// Sends one message, keeping its acknowledgement in flight (waiting
    /// for the oldest beyond [`MAX_IN_FLIGHT`]).
    async fn send(
        &mut self,
        key: Option<&[u8]>,
        value: Bytes,
        id: Option<&str>,
    ) -> Result<(), Error> {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            let oldest = self.in_flight.pop_front().expect("non-empty");
            self.acknowledged(oldest).await?;
        }
        let (_, context) = self.connection.get().await?;
        let ack = context
            .publish_with_headers(self.subject.clone(), Self::headers(key, id), value)
            .await
            .map_err(|e| {
                let what = format!("cannot publish to `{}`: {e}", self.subject);
                // The client's own size check (key header included): a
                // retry would send the same message.
                if e.kind() == async_nats::jetstream::context::PublishErrorKind::MaxPayloadExceeded
                {
                    self.connection.refused(what)
                } else {
                    self.connection.broker(what)
                }
            })?;
        self.in_flight.push_back(ack);
        Ok(())
    }

    async fn acknowledged(&self, ack: PublishAckFuture) -> Result<(), Error> {
        ack.await.map(drop).map_err(|e| {
            self.connection.broker(format!(
                "a publish to `{}` was not acknowledged (does a stream capture the subject?): {e}",
                self.subject
            ))
        })
    }

    /// Waits for every publish in flight.
    async fn drain(&mut self) -> Result<(), Error> {
        while let Some(ack) = self.in_flight.pop_front() {
            self.acknowledged(ack).await?;
        }
        Ok(())
    }

    /// Publishes the pre-committed transactions up to checkpoint `upto`
    /// (restored ones count as 0) and waits for their acknowledgements.
    async fn publish_pending(&mut self, upto: u64) -> Result<(), Error> {
        let due = self
            .pending
            .iter()
            .take_while(|t| t.checkpoint <= upto)
            .count();
        if due == 0 {
            return Ok(());
        }
        // Taken out, not copied: if a publish fails, the job restarts from
        // the checkpoint, which still holds them.
        let transactions: Vec<Transaction> = self.pending.drain(..due).collect();
        for t in transactions {
            let records = Bytes::from(t.records);
            for (n, r) in BatchReader::new(&records).enumerate() {
                let r = r.map_err(|e| bad_batch(&self.uid, e))?;
                let id = format!("{}/{n}", t.name);
                self.send(r.key, records.slice_ref(r.value), Some(&id))
                    .await?;
            }
        }
        self.drain().await
    }
}

impl Sink for JetStreamSink {
    fn write_batch<'a>(&'a mut self, batch: &'a [u8]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let max = self.max_payload().await?;
            for r in BatchReader::new(batch) {
                let r = r.map_err(|e| bad_batch(&self.uid, e))?;
                let len = r.value.len() + r.key.map_or(0, <[u8]>::len);
                if len > max {
                    return Err(self.too_large(len, max));
                }
                match self.delivery {
                    Delivery::AtLeastOnce => {
                        self.send(r.key, Bytes::copy_from_slice(r.value), None)
                            .await?;
                    }
                    Delivery::ExactlyOnce => self.open.push_record(&r),
                }
            }
            let held = self.open.byte_len() as u64
                + self
                    .pending
                    .iter()
                    .map(|t| t.records.len() as u64)
                    .sum::<u64>();
            if held > self.max_pending_bytes {
                return Err(self.connection.refused(format!(
                    "holds {held} bytes of records not yet committed, over its max_pending_bytes ({}); checkpoint more often or raise the limit",
                    self.max_pending_bytes
                )));
            }
            Ok(())
        })
    }

    fn pre_commit<'a>(
        &'a mut self,
        id: CheckpointId,
        snapshot: &'a mut SubtaskSnapshot,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            match self.delivery {
                Delivery::AtLeastOnce => self.drain().await,
                Delivery::ExactlyOnce => {
                    // Restored transactions go out at the first barrier
                    // (their checkpoint completed), so a job that restores
                    // does not hold them until the next completes.
                    self.publish_pending(0).await?;
                    if !self.open.is_empty() {
                        let (records, _) = self.open.take();
                        self.pending.push(Transaction {
                            name: format!("{}/{}/{}", self.prefix, id.0, self.subtask),
                            checkpoint: id.0,
                            records,
                        });
                    }
                    if !self.pending.is_empty() {
                        snapshot
                            .lists
                            .push(weir_format::snapshot::ListSection::sink(
                                TRANSACTIONS,
                                self.pending.iter().map(Transaction::to_value).collect(),
                            ));
                    }
                    Ok(())
                }
            }
        })
    }

    fn commit(&mut self, id: CheckpointId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.publish_pending(id.0))
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.drain())
    }

    fn finish(&mut self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            if !self.open.is_empty() {
                let (records, _) = self.open.take();
                self.pending.push(Transaction {
                    name: format!("{}/end/{}", self.prefix, self.subtask),
                    checkpoint: 0,
                    records,
                });
            }
            self.publish_pending(u64::MAX).await?;
            self.drain().await
        })
    }

    fn abandon(&mut self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.open.clear();
            self.drain().await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(toml: &str) -> Result<NatsSource, Vec<(&'static str, String)>> {
        NatsSource::new(toml::from_str(toml).unwrap(), std::path::Path::new("/jobs"))
    }

    fn sink(toml: &str) -> Result<NatsSink, Vec<(&'static str, String)>> {
        NatsSink::new(
            toml::from_str(toml).unwrap(),
            "job",
            std::path::Path::new("/jobs"),
        )
    }

    #[test]
    fn specs_are_checked_field_by_field_and_files_resolve_beside_the_job() {
        let ok = source(
            "url = \"nats://h:4222\"\nstream = \"s\"\nsubject = \"a.b\"\npartitions = 4\ncredentials = \"me.creds\"",
        )
        .unwrap();
        assert_eq!(ok.filter(3), "a.b.3");
        assert_eq!(
            ok.spec.auth.credentials.as_deref(),
            Some(std::path::Path::new("/jobs/me.creds"))
        );
        // One partition may filter with wildcards; several may not.
        assert!(source("url = \"u\"\nstream = \"s\"\nsubject = \"a.>\"").is_ok());
        let bad = source(
            "url = \" \"\nstream = \"a.b\"\nsubject = \"a.*\"\npartitions = 0\nuser = \"u\"\ntoken = \"t\"\ntimeout_ms = 0",
        )
        .unwrap_err();
        let fields: Vec<&str> = bad.iter().map(|(f, _)| *f).collect();
        for field in [
            "url",
            "stream",
            "partitions",
            "subject",
            "credentials",
            "password",
            "timeout_ms",
        ] {
            assert!(fields.contains(&field), "{field} in {bad:?}");
        }
        let bad = sink(
            "url = \"u\"\nsubject = \"out.*\"\ndelivery = \"at-least-once\"\nmax_pending_bytes = 10\npassword = \"p\"",
        )
        .unwrap_err();
        let fields: Vec<&str> = bad.iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["user", "subject", "max_pending_bytes"], "{bad:?}");
        // Unknown fields are refused by name.
        let e = toml::from_str::<NatsSinkSpec>("url = \"u\"\nsubject = \"s\"\nsubjet = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("subjet"), "{e}");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s =
            sink("url = \"u\"\nsubject = \"s\"\nuser = \"me\"\npassword = \"hunter2\"").unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("user and password"), "{shown}");
        let s = sink("url = \"u\"\nsubject = \"s\"\ntoken = \"sekrit\"").unwrap();
        assert!(!format!("{s:?}").contains("sekrit"));
    }

    #[test]
    fn splits_are_partitions_of_the_stream_and_foreign_ones_are_refused() {
        let kind = NatsSplits::new(
            "words",
            &source("url = \"u\"\nstream = \"w\"\nsubject = \"w\"\npartitions = 3").unwrap(),
        );
        let splits = kind.initial(2);
        let names: Vec<&str> = splits.iter().map(|s| s.split.as_str()).collect();
        assert_eq!(names, ["w/0", "w/1", "w/2"]);
        assert!(kind.open(&splits[2]).is_ok());
        for foreign in ["w/3", "other/0", "0/1"] {
            let split = SourceSplit {
                split: foreign.into(),
                position: 5,
                finished: false,
            };
            let Err(e) = kind.open(&split) else {
                panic!("{foreign} opened");
            };
            assert!(e.to_string().contains(&format!("split `{foreign}`")), "{e}");
        }
    }

    #[test]
    fn a_transaction_round_trips_through_its_snapshot_item() {
        let mut records = BatchWriter::default();
        records.push(Some(b"k"), b"v", Some(7));
        let t = Transaction {
            name: "job/out/1a/4/0".into(),
            checkpoint: 4,
            records: records.as_bytes().to_vec(),
        };
        let back = Transaction::from_value(&t.to_value()).unwrap();
        // Restored, it counts as committed: its checkpoint completed.
        assert_eq!(back, Transaction { checkpoint: 0, ..t });
        assert_eq!(Transaction::from_value(&Value::Text("x".into())), None);
    }
}
