//! The job file: its TOML schema ([`JobFile`]), validation with precise
//! problems, and the validated dataflow graph ([`JobGraph`]) the runtime
//! executes. `docs/job-file.md` documents every field.
//!
//! Relative paths in a job file are resolved against the job file's
//! directory, so a job directory can be moved as a whole.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::checkpoint::coordinator::{CheckpointConfig, CheckpointingMode, RetentionOnCancel};
use crate::error::{Error, Problem};
use crate::keygroup::{DEFAULT_MAX_PARALLELISM, MAX_MAX_PARALLELISM};
use crate::native::NativeOperatorFactory;
use crate::restart::{self, RestartStrategy};
use crate::watermark::WatermarkStrategy;

/// Default records per batch.
pub const DEFAULT_BATCH_SIZE: usize = 1024;
/// Default batches a channel buffers before it applies backpressure.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 8;
/// Default linear-memory cap per plugin instance.
pub const DEFAULT_MEMORY_MB: u64 = 256;
/// Default CPU budget per hook call, in Wasm fuel (~1 s of guest code).
pub const DEFAULT_FUEL_PER_CALL: u64 = 2_000_000_000;
/// By default `snapshot` and `close`, which flush cached state, get this
/// many times the per-call fuel (and wall-clock time).
pub const SNAPSHOT_FUEL_FACTOR: u64 = 50;
/// Default cap on the bytes one hook call may emit, MiB.
pub const DEFAULT_EMIT_MB_PER_CALL: u64 = 64;
/// Default log output (stdout, stderr, `log`) kept per hook call, KiB.
pub const DEFAULT_LOG_KB_PER_CALL: u64 = 1024;
/// Default cap on an instance's keyed state, MiB.
pub const DEFAULT_STATE_MB: u64 = 1024;
/// Default budget of a job's plugin memory (guest memories, keyed state,
/// emitted records not yet routed), MiB.
pub const DEFAULT_JOB_MEMORY_MB: u64 = 4096;
/// Default wall-clock bound of a hook call, milliseconds.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 10_000;
/// The shortest checkpoint interval and timeout (Flink's
/// `MINIMAL_CHECKPOINT_TIME`): below it, checkpointing is all a job does.
pub const MIN_CHECKPOINT_TIME: Duration = Duration::from_millis(10);

/// The largest job file read: a job file is a description, not data, and a
/// path such as `/dev/zero` must not be read for ever.
pub const MAX_JOB_FILE_BYTES: u64 = 1 << 20;
/// The largest plugin component accepted (the Python and JavaScript
/// runtimes' components are 12–18 MiB).
pub const MAX_PLUGIN_BYTES: u64 = 256 << 20;
/// The most records per batch.
pub const MAX_BATCH_SIZE: usize = 65_536;
/// The most batches a channel buffers: channels allocate their capacity
/// up front.
pub const MAX_CHANNEL_CAPACITY: usize = 1_024;
/// The most subtasks a job runs, over all its vertices (each is a thread
/// and, for an operator, a plugin instance).
pub const MAX_SUBTASKS: u32 = 1_024;
/// The most words a `datagen` record holds.
pub const MAX_WORDS_PER_RECORD: u32 = 10_000;
/// The longest job name or uid, in bytes: they name files and directories.
pub const MAX_NAME_BYTES: usize = 200;
/// The longest `config` string handed to a plugin's `open`.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
/// The largest `fuel_per_call` (about eight minutes of guest code).
pub const MAX_FUEL_PER_CALL: u64 = 1_000_000_000_000;
/// The longest duration any field takes.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
/// The most checkpoints in progress at once.
pub const MAX_CONCURRENT_CHECKPOINTS: u32 = 64;
/// The most completed checkpoints retained.
pub const MAX_RETAINED_CHECKPOINTS: u32 = 1_000;

/// The top level of a job file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// The job's name.
    pub name: String,
    /// Parallelism of vertices that do not set their own.
    pub parallelism: Option<u32>,
    /// Number of key groups (the most any keyed operator can be scaled to).
    pub max_parallelism: Option<u32>,
    /// Records per batch.
    pub batch_size: Option<usize>,
    /// Batches a channel buffers before backpressure.
    pub channel_capacity: Option<usize>,
    /// Default limits for every operator.
    pub limits: Option<LimitsSpec>,
    /// Sources, `[[sources]]`.
    #[serde(default)]
    pub sources: Vec<SourceSpec>,
    /// Operators, `[[operators]]`.
    #[serde(default)]
    pub operators: Vec<OperatorSpec>,
    /// Sinks, `[[sinks]]`.
    #[serde(default)]
    pub sinks: Vec<SinkSpec>,
    /// Checkpointing, `[checkpoints]`; absent means checkpoints off.
    pub checkpoints: Option<CheckpointsSpec>,
    /// What happens after a failure, `[restart]`.
    pub restart: Option<RestartSpec>,
    /// Savepoint defaults, `[savepoints]`.
    pub savepoints: Option<SavepointsSpec>,
}

/// The `[savepoints]` section, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavepointsSpec {
    /// Where `weir savepoint` and `weir stop` create
    /// `savepoint-<job>-<id>` when given no directory: a path (relative to
    /// the job file) or a storage URL.
    pub dir: Option<String>,
}

/// The `[checkpoints]` section, as written. Durations are strings such as
/// `"500ms"`, `"10s"` or `"2m"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointsSpec {
    /// Time between periodic checkpoints; absent means checkpoints off.
    pub interval: Option<String>,
    /// `exactly-once` or `at-least-once`.
    pub mode: Option<CheckpointingMode>,
    /// A checkpoint not complete within this is aborted.
    pub timeout: Option<String>,
    /// Least time between a completion and the next trigger.
    pub min_pause: Option<String>,
    /// Most checkpoints in progress at once.
    pub max_concurrent: Option<u32>,
    /// Consecutive failed checkpoints tolerated before the job fails.
    pub tolerable_failures: Option<u32>,
    /// Barriers overtake buffered records.
    pub unaligned: Option<bool>,
    /// With `unaligned`: switch from aligned to unaligned after this.
    pub aligned_timeout: Option<String>,
    /// Completed checkpoints kept.
    pub retained: Option<u32>,
    /// `retain` or `delete` retained checkpoints when the job is cancelled.
    pub retention_on_cancel: Option<RetentionOnCancel>,
    /// Write only the keyed state that changed since the last completed
    /// checkpoint.
    pub incremental: Option<bool>,
    /// A URL or a path (relative to the job file's directory).
    pub storage: Option<String>,
}

/// Restart strategy names, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartKind {
    /// Never restart.
    None,
    /// A fixed number of restarts with a fixed delay.
    FixedDelay,
    /// Growing delays, forever.
    ExponentialBackoff,
    /// Restart unless failures come too often.
    FailureRate,
}

impl RestartKind {
    fn name(self) -> &'static str {
        match self {
            RestartKind::None => "none",
            RestartKind::FixedDelay => "fixed-delay",
            RestartKind::ExponentialBackoff => "exponential-backoff",
            RestartKind::FailureRate => "failure-rate",
        }
    }
}

/// The `[restart]` section, as written: a `strategy` and that strategy's
/// keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    /// Which strategy.
    pub strategy: Option<RestartKind>,
    /// `fixed-delay`: restarts allowed.
    pub attempts: Option<u32>,
    /// `fixed-delay`, `failure-rate`: wait before each restart.
    pub delay: Option<String>,
    /// `exponential-backoff`: the first delay.
    pub initial_backoff: Option<String>,
    /// `exponential-backoff`: the longest delay.
    pub max_backoff: Option<String>,
    /// `exponential-backoff`: growth per failure.
    pub multiplier: Option<f64>,
    /// `exponential-backoff`: random spread, a fraction of the delay.
    pub jitter: Option<f64>,
    /// `exponential-backoff`: a run this long without failure resets the delay.
    pub reset_after: Option<String>,
    /// `failure-rate`: failures tolerated per `interval`.
    pub max_failures: Option<u32>,
    /// `failure-rate`: the window failures are counted in.
    pub interval: Option<String>,
    /// Whether an operator's own failures (a trap, an error it returned, a
    /// record it emitted that the dataflow refuses) restart the job too;
    /// any strategy.
    pub operator_errors: Option<OperatorErrors>,
}

/// What a restart strategy does with an operator's own failures.
///
/// A plugin runs sandboxed, without I/O: given the same input and state it
/// fails the same way again, so by default its failures fail the job
/// instead of restarting it into the same failure. A plugin whose failures
/// are not deterministic (it uses the clock, randomness or the attempt
/// number) opts in with `operator_errors = "restart"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperatorErrors {
    /// They fail the job (the default).
    #[default]
    Fail,
    /// They restart it like any other failure.
    Restart,
}

/// Resource limits of plugin instances, as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Linear-memory cap per instance, MiB.
    pub memory_mb: Option<u64>,
    /// CPU budget per hook call, in Wasm fuel units.
    pub fuel_per_call: Option<u64>,
    /// CPU budget of a `snapshot` or `close` call, in Wasm fuel units.
    pub fuel_per_snapshot: Option<u64>,
    /// Bytes one hook call may emit, MiB.
    pub emit_mb_per_call: Option<u64>,
    /// Log output kept per hook call, KiB; the rest is dropped.
    pub log_kb_per_call: Option<u64>,
    /// Keyed state one instance may hold, MiB.
    pub state_mb: Option<u64>,
    /// Plugin memory of the whole job, MiB (top-level `[limits]` only).
    pub job_memory_mb: Option<u64>,
    /// Wall-clock bound of a hook call, milliseconds.
    pub call_timeout_ms: Option<u64>,
}

/// One name or a list of names.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Inputs {
    /// `input = "a"`.
    One(String),
    /// `input = ["a", "b"]`.
    Many(Vec<String>),
}

impl Inputs {
    fn names(&self) -> Vec<&str> {
        match self {
            Inputs::One(s) => vec![s.as_str()],
            Inputs::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// How records travel along an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partition {
    /// Subtask *i* → subtask *i*; needs equal parallelism.
    Forward,
    /// Round robin over the downstream subtasks.
    Rebalance,
    /// By the record key's key group.
    Hash,
    /// Every record to every downstream subtask.
    Broadcast,
}

/// Source kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceType {
    /// Lines of a text file.
    File,
    /// A deterministic generator of words.
    Datagen,
    /// A NATS JetStream stream (the `[sources.nats]` table).
    Nats,
    /// A Kafka topic (the `[sources.kafka]` table).
    Kafka,
    /// The Nexmark benchmark's events (the `[sources.nexmark]` table).
    Nexmark,
}

impl SourceType {
    /// As written in a job file.
    pub fn name(self) -> &'static str {
        match self {
            SourceType::File => "file",
            SourceType::Datagen => "datagen",
            SourceType::Nats => "nats",
            SourceType::Kafka => "kafka",
            SourceType::Nexmark => "nexmark",
        }
    }
}

/// A `[[sources]]` entry, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Unique vertex id.
    pub uid: String,
    /// `file` or `datagen`.
    #[serde(rename = "type")]
    pub kind: SourceType,
    /// Subtasks.
    pub parallelism: Option<u32>,
    /// `file`: the text file to read.
    pub path: Option<PathBuf>,
    /// `datagen`: random seed.
    pub seed: Option<u64>,
    /// `datagen`: records in all; absent means unbounded.
    pub records: Option<u64>,
    /// `datagen`: records per second in all; absent means as fast as possible.
    pub rate: Option<f64>,
    /// `datagen`: distinct words.
    pub vocabulary: Option<u64>,
    /// `datagen`: words per record (a line of words).
    pub words_per_record: Option<u32>,
    /// `nats`: the connector's table.
    pub nats: Option<crate::connectors::nats::NatsSourceSpec>,
    /// `kafka`: the connector's table.
    pub kafka: Option<crate::connectors::kafka::KafkaSourceSpec>,
    /// `nexmark`: the generator's table.
    pub nexmark: Option<weir_nexmark::GeneratorConfig>,
    /// Event-time watermarks from the records' timestamps; absent: none
    /// (event time then only ends, at the end of the input).
    pub watermarks: Option<WatermarksSpec>,
}

/// A source's `[sources.watermarks]` table, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarksSpec {
    /// How far behind the greatest timestamp seen a record may arrive and
    /// still not be late, ms (default 0).
    pub out_of_orderness_ms: Option<u64>,
    /// A split without records for this long stops holding the watermark
    /// back, ms; absent: never.
    pub idle_timeout_ms: Option<u64>,
}

/// The longest out-of-orderness or idle timeout a job file may set: a day.
pub const MAX_WATERMARK_MS: u64 = 86_400_000;

/// An `[[operators]]` entry, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorSpec {
    /// Unique vertex id; state is keyed by it.
    pub uid: String,
    /// The component file.
    pub plugin: PathBuf,
    /// Passed verbatim to the plugin's `open`.
    #[serde(default)]
    pub config: String,
    /// Subtasks.
    pub parallelism: Option<u32>,
    /// Upstream vertex uid(s).
    pub input: Inputs,
    /// How input records are distributed.
    pub partition: Option<Partition>,
    /// Overrides the job's `[limits]`.
    pub limits: Option<LimitsSpec>,
}

/// Sink kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkType {
    /// One line per record on standard output.
    Stdout,
    /// One file per subtask in a directory.
    File,
    /// Counts records, writes nothing.
    Blackhole,
    /// Publishes to NATS JetStream (the `[sinks.nats]` table).
    Nats,
    /// Produces to a Kafka topic (the `[sinks.kafka]` table).
    Kafka,
}

/// A `[[sinks]]` entry, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// Unique vertex id.
    pub uid: String,
    /// `stdout`, `file` or `blackhole`.
    #[serde(rename = "type")]
    pub kind: SinkType,
    /// Subtasks.
    pub parallelism: Option<u32>,
    /// Upstream vertex uid(s).
    pub input: Inputs,
    /// How input records are distributed.
    pub partition: Option<Partition>,
    /// `file`: the output directory.
    pub path: Option<PathBuf>,
    /// `nats`: the connector's table.
    pub nats: Option<crate::connectors::nats::NatsSinkSpec>,
    /// `kafka`: the connector's table.
    pub kafka: Option<crate::connectors::kafka::KafkaSinkSpec>,
}

/// Resolved limits of a plugin instance. `docs/job-file.md` lists them
/// with their defaults and what happens when one is hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear-memory cap, bytes.
    pub memory_bytes: u64,
    /// Fuel per hook call.
    pub fuel_per_call: u64,
    /// Fuel per `snapshot` or `close` call.
    pub fuel_per_snapshot: u64,
    /// Bytes one hook call may emit.
    pub emit_bytes_per_call: u64,
    /// Log bytes kept per hook call.
    pub log_bytes_per_call: u64,
    /// Keyed state bytes per instance.
    pub state_bytes: u64,
    /// Plugin memory of the whole job, bytes.
    pub job_memory_bytes: u64,
    /// Wall-clock bound of a hook call other than `snapshot` and `close`,
    /// milliseconds (those get it times `fuel_per_snapshot / fuel_per_call`).
    pub call_timeout_ms: u64,
}

impl Limits {
    /// Every limit at its default.
    pub const DEFAULT: Limits = Limits {
        memory_bytes: DEFAULT_MEMORY_MB << 20,
        fuel_per_call: DEFAULT_FUEL_PER_CALL,
        fuel_per_snapshot: DEFAULT_FUEL_PER_CALL * SNAPSHOT_FUEL_FACTOR,
        emit_bytes_per_call: DEFAULT_EMIT_MB_PER_CALL << 20,
        log_bytes_per_call: DEFAULT_LOG_KB_PER_CALL << 10,
        state_bytes: DEFAULT_STATE_MB << 20,
        job_memory_bytes: DEFAULT_JOB_MEMORY_MB << 20,
        call_timeout_ms: DEFAULT_CALL_TIMEOUT_MS,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What a vertex is.
#[derive(Clone)]
pub enum VertexKind {
    /// Lines of a file.
    FileSource {
        /// Resolved path.
        path: PathBuf,
    },
    /// Generated words.
    Datagen(DatagenSpec),
    /// A Wasm operator.
    Operator {
        /// Resolved plugin path.
        plugin: PathBuf,
        /// The config string.
        config: String,
        /// Instance limits.
        limits: Limits,
    },
    /// An operator compiled into the host (benchmarks' baseline).
    Native(Arc<dyn NativeOperatorFactory>),
    /// Standard output.
    StdoutSink,
    /// Files in a directory.
    FileSink {
        /// Resolved directory.
        dir: PathBuf,
    },
    /// Discards records.
    BlackholeSink,
    /// A NATS JetStream stream.
    NatsSource(crate::connectors::nats::NatsSource),
    /// Publishes to NATS JetStream.
    NatsSink(crate::connectors::nats::NatsSink),
    /// A Kafka topic.
    KafkaSource(crate::connectors::kafka::KafkaSource),
    /// Produces to a Kafka topic.
    KafkaSink(crate::connectors::kafka::KafkaSink),
    /// Nexmark events.
    Nexmark(crate::connectors::nexmark::NexmarkSpec),
}

impl std::fmt::Debug for VertexKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VertexKind::FileSource { path } => write!(f, "FileSource({})", path.display()),
            VertexKind::Datagen(d) => write!(f, "{d:?}"),
            VertexKind::Operator { plugin, .. } => write!(f, "Operator({})", plugin.display()),
            VertexKind::Native(n) => write!(f, "Native({})", n.name()),
            VertexKind::StdoutSink => f.write_str("StdoutSink"),
            VertexKind::FileSink { dir } => write!(f, "FileSink({})", dir.display()),
            VertexKind::BlackholeSink => f.write_str("BlackholeSink"),
            VertexKind::NatsSource(n) => write!(
                f,
                "NatsSource({} stream {} subject {})",
                n.spec.url, n.spec.stream, n.spec.subject
            ),
            VertexKind::NatsSink(n) => {
                write!(f, "NatsSink({} subject {})", n.spec.url, n.spec.subject)
            }
            VertexKind::KafkaSource(k) => {
                write!(f, "KafkaSource({} topic {})", k.spec.brokers, k.spec.topic)
            }
            VertexKind::KafkaSink(k) => {
                write!(f, "KafkaSink({} topic {})", k.spec.brokers, k.spec.topic)
            }
            VertexKind::Nexmark(n) => write!(f, "{n:?}"),
        }
    }
}

impl VertexKind {
    /// Whether the vertex reads from upstream (is not a source).
    pub fn has_inputs(&self) -> bool {
        match self {
            VertexKind::FileSource { .. }
            | VertexKind::Datagen(_)
            | VertexKind::NatsSource(_)
            | VertexKind::KafkaSource(_)
            | VertexKind::Nexmark(_) => false,
            VertexKind::Operator { .. }
            | VertexKind::Native(_)
            | VertexKind::StdoutSink
            | VertexKind::FileSink { .. }
            | VertexKind::BlackholeSink
            | VertexKind::NatsSink(_)
            | VertexKind::KafkaSink(_) => true,
        }
    }

    /// Whether the vertex sends downstream (is not a sink).
    pub fn has_outputs(&self) -> bool {
        match self {
            VertexKind::StdoutSink
            | VertexKind::FileSink { .. }
            | VertexKind::BlackholeSink
            | VertexKind::NatsSink(_)
            | VertexKind::KafkaSink(_) => false,
            VertexKind::FileSource { .. }
            | VertexKind::Datagen(_)
            | VertexKind::NatsSource(_)
            | VertexKind::KafkaSource(_)
            | VertexKind::Nexmark(_)
            | VertexKind::Operator { .. }
            | VertexKind::Native(_) => true,
        }
    }
}

/// Settings of a `datagen` source.
#[derive(Debug, Clone, PartialEq)]
pub struct DatagenSpec {
    /// Random seed.
    pub seed: u64,
    /// Records in all, or unbounded.
    pub records: Option<u64>,
    /// Records per second in all.
    pub rate: Option<f64>,
    /// Distinct words.
    pub vocabulary: u64,
    /// Words per record.
    pub words_per_record: u32,
}

/// An input edge of a vertex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Index of the upstream vertex in [`JobGraph::vertices`].
    pub from: usize,
    /// Distribution.
    pub partition: Partition,
}

/// A vertex of the validated graph.
#[derive(Debug, Clone)]
pub struct Vertex {
    /// Unique id.
    pub uid: String,
    /// Subtasks.
    pub parallelism: u32,
    /// What it does.
    pub kind: VertexKind,
    /// Input edges.
    pub inputs: Vec<Edge>,
    /// A source's watermark strategy, if it generates watermarks.
    pub watermarks: Option<WatermarkStrategy>,
}

/// A validated job: vertices in topological order (every input edge points
/// to an earlier vertex).
#[derive(Debug, Clone)]
pub struct JobGraph {
    /// The job's name.
    pub name: String,
    /// Number of key groups.
    pub max_parallelism: u32,
    /// Records per batch.
    pub batch_size: usize,
    /// Batches per channel.
    pub channel_capacity: usize,
    /// The vertices, topologically sorted.
    pub vertices: Vec<Vertex>,
    /// Checkpointing settings (off unless `[checkpoints]` sets `interval`).
    pub checkpoints: CheckpointConfig,
    /// What happens after a failure.
    pub restart: RestartStrategy,
    /// Whether operators' own failures restart the job (`[restart]
    /// operator_errors`).
    pub operator_errors: OperatorErrors,
    /// The default savepoint directory (`[savepoints] dir`), as written.
    pub savepoint_dir: Option<String>,
    /// The job file's directory: a relative checkpoint `storage` path
    /// resolves against it.
    pub job_dir: PathBuf,
}

/// Reads, parses and validates a job file.
///
/// Checks everything that needs no plugin compilation; compiling plugins is
/// the plugin layer's part of `weir validate`.
///
/// # Errors
/// [`Error::JobRead`], [`Error::JobParse`] or [`Error::InvalidJob`] listing
/// every problem found.
pub fn load(path: &Path) -> Result<JobGraph, Error> {
    let text = read_job_file(path).map_err(|source| Error::JobRead {
        path: path.to_owned(),
        source,
    })?;
    let file: JobFile = toml::from_str(&text).map_err(|e| Error::JobParse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    build_graph(file, base).map_err(|problems| Error::InvalidJob {
        path: path.to_owned(),
        problems,
    })
}

/// Reads a job file: a regular file of at most [`MAX_JOB_FILE_BYTES`].
fn read_job_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    regular_file(path).map_err(|message| {
        // A missing job file keeps its kind: it is the user's mistake, as
        // is a path that is not a regular file.
        let kind = if path.exists() {
            std::io::ErrorKind::InvalidInput
        } else {
            std::io::ErrorKind::NotFound
        };
        std::io::Error::new(kind, message)
    })?;
    let invalid = |message: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, message);
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_JOB_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_JOB_FILE_BYTES {
        return Err(invalid(format!(
            "is larger than {MAX_JOB_FILE_BYTES} bytes, the most a job file may be"
        )));
    }
    Ok(text)
}

/// Checks that `path` is a regular file (after symbolic links), naming
/// what it is otherwise: a FIFO or a device would block or never end when
/// read.
///
/// # Errors
/// What the path is instead, e.g. "does not exist" or "is a FIFO, not a
/// regular file".
pub fn regular_file(path: &Path) -> Result<std::fs::Metadata, String> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("does not exist".to_owned());
        }
        Err(e) => return Err(format!("cannot be read: {e}")),
    };
    let t = meta.file_type();
    let what = if t.is_file() {
        return Ok(meta);
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    };
    Err(format!("is {what}, not a regular file"))
}

struct Draft {
    uid: String,
    field: String,
    parallelism: u32,
    kind: VertexKind,
    inputs: Vec<(String, Option<Partition>)>,
    watermarks: Option<WatermarkStrategy>,
}

/// Checks a source's `[sources.watermarks]` table.
fn watermark_strategy(
    w: &WatermarksSpec,
    field: &str,
    problems: &mut Problems,
) -> WatermarkStrategy {
    let mut ms = |name: &str, v: u64, min: u64| {
        if !(min..=MAX_WATERMARK_MS).contains(&v) {
            problems.add(
                format!("{field}.watermarks.{name}"),
                format!("must be between {min} and {MAX_WATERMARK_MS} (a day), got {v}"),
            );
        }
        Duration::from_millis(v)
    };
    WatermarkStrategy {
        out_of_orderness: ms("out_of_orderness_ms", w.out_of_orderness_ms.unwrap_or(0), 0),
        idle_timeout: w.idle_timeout_ms.map(|v| ms("idle_timeout_ms", v, 1)),
    }
}

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// Validates a parsed job file and builds its graph.
///
/// # Errors
/// Every problem found, each naming its field.
pub fn build_graph(file: JobFile, base: &Path) -> Result<JobGraph, Vec<Problem>> {
    let mut problems = Problems(Vec::new());
    if file.name.trim().is_empty() {
        problems.add("name", "must not be empty");
    } else if file.name.len() > MAX_NAME_BYTES {
        problems.add(
            "name",
            format!(
                "must be at most {MAX_NAME_BYTES} bytes, got {}",
                file.name.len()
            ),
        );
    }
    let max_parallelism = file.max_parallelism.unwrap_or(DEFAULT_MAX_PARALLELISM);
    if !(1..=MAX_MAX_PARALLELISM).contains(&max_parallelism) {
        problems.add(
            "max_parallelism",
            format!("must be between 1 and {MAX_MAX_PARALLELISM}, got {max_parallelism}"),
        );
    }
    let default_parallelism = file.parallelism.unwrap_or(1);
    let batch_size = file.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
    if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
        problems.add(
            "batch_size",
            format!("must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}"),
        );
    }
    let channel_capacity = file.channel_capacity.unwrap_or(DEFAULT_CHANNEL_CAPACITY);
    if !(1..=MAX_CHANNEL_CAPACITY).contains(&channel_capacity) {
        problems.add(
            "channel_capacity",
            format!("must be between 1 and {MAX_CHANNEL_CAPACITY}, got {channel_capacity}"),
        );
    }
    let job_limits = file.limits.clone().unwrap_or_default();
    let job_memory_mb = job_limits.job_memory_mb.unwrap_or(DEFAULT_JOB_MEMORY_MB);
    if job_memory_mb == 0 || job_memory_mb > MAX_JOB_MEMORY_MB {
        problems.add(
            "limits.job_memory_mb",
            format!("must be between 1 and {MAX_JOB_MEMORY_MB} (1 TiB), got {job_memory_mb}"),
        );
    }
    let checkpoints = checkpoint_config(file.checkpoints, &mut problems);
    let savepoint_dir = file.savepoints.and_then(|s| s.dir);
    if savepoint_dir
        .as_deref()
        .is_some_and(|d| d.trim().is_empty())
    {
        problems.add("savepoints.dir", "must not be empty");
    }
    let operator_errors = file
        .restart
        .as_ref()
        .and_then(|r| r.operator_errors)
        .unwrap_or_default();
    let restart = restart_strategy(file.restart, checkpoints.enabled(), &mut problems);
    let check_parallelism = |problems: &mut Problems, field: String, p: Option<u32>| {
        let p = p.unwrap_or(default_parallelism);
        if p == 0 || p > max_parallelism {
            problems.add(
                field,
                format!(
                    "parallelism must be between 1 and max_parallelism ({max_parallelism}), got {p}"
                ),
            );
        }
        p.max(1)
    };

    let mut drafts = Vec::new();
    for (i, mut s) in file.sources.into_iter().enumerate() {
        let field = format!("sources[{i}]");
        let parallelism =
            check_parallelism(&mut problems, format!("{field}.parallelism"), s.parallelism);
        // The top-level fields each type takes; a broker's options are in
        // a table of its own.
        let takes: &[&str] = match s.kind {
            SourceType::File => &["path"],
            SourceType::Datagen => &["seed", "records", "rate", "vocabulary", "words_per_record"],
            SourceType::Nexmark => &["rate"],
            SourceType::Nats | SourceType::Kafka => &[],
        };
        for (name, set) in [
            ("path", s.path.is_some()),
            ("seed", s.seed.is_some()),
            ("records", s.records.is_some()),
            ("rate", s.rate.is_some()),
            ("vocabulary", s.vocabulary.is_some()),
            ("words_per_record", s.words_per_record.is_some()),
        ] {
            if set && !takes.contains(&name) {
                let table = match s.kind {
                    SourceType::Nats | SourceType::Kafka => {
                        format!(" (its options are in `[sources.{}]`)", s.kind.name())
                    }
                    SourceType::File | SourceType::Datagen | SourceType::Nexmark => String::new(),
                };
                problems.add(
                    format!("{field}.{name}"),
                    format!("does not apply to a `{}` source{table}", s.kind.name()),
                );
            }
        }
        if let Some(rate) = s.rate
            && takes.contains(&"rate")
            && !(rate.is_finite() && rate > 0.0)
        {
            problems.add(
                format!("{field}.rate"),
                format!("must be a positive number, got {rate}"),
            );
        }
        let kind = match s.kind {
            SourceType::File => match &s.path {
                None => {
                    problems.add(format!("{field}.path"), "a `file` source needs `path`");
                    VertexKind::FileSource {
                        path: PathBuf::new(),
                    }
                }
                Some(p) => {
                    let path = resolve(base, p);
                    if let Err(what) = regular_file(&path) {
                        problems.add(
                            format!("{field}.path"),
                            format!("input file {} {what}", path.display()),
                        );
                    }
                    VertexKind::FileSource { path }
                }
            },
            SourceType::Datagen => {
                let vocabulary = s.vocabulary.unwrap_or(1000);
                if vocabulary == 0 {
                    problems.add(format!("{field}.vocabulary"), "must be at least 1");
                }
                let words_per_record = s.words_per_record.unwrap_or(1);
                if !(1..=MAX_WORDS_PER_RECORD).contains(&words_per_record) {
                    problems.add(
                        format!("{field}.words_per_record"),
                        format!(
                            "must be between 1 and {MAX_WORDS_PER_RECORD}, got {words_per_record}"
                        ),
                    );
                }
                VertexKind::Datagen(DatagenSpec {
                    seed: s.seed.unwrap_or(0),
                    records: s.records,
                    rate: s.rate,
                    vocabulary,
                    words_per_record,
                })
            }
            SourceType::Nexmark => {
                let generator = s.nexmark.take().unwrap_or_default();
                if let Err(e) = generator.validate() {
                    problems.add(format!("{field}.nexmark"), e.to_string());
                }
                VertexKind::Nexmark(crate::connectors::nexmark::NexmarkSpec {
                    generator,
                    rate: s.rate,
                })
            }
            SourceType::Nats | SourceType::Kafka => {
                let placeholder = || VertexKind::FileSource {
                    path: PathBuf::new(),
                };
                if s.kind == SourceType::Nats {
                    connector_table(
                        &mut problems,
                        &field,
                        "source",
                        "nats",
                        s.nats.take(),
                        |spec| {
                            crate::connectors::nats::NatsSource::new(spec, base)
                                .map(VertexKind::NatsSource)
                        },
                    )
                    .unwrap_or_else(placeholder)
                } else {
                    connector_table(
                        &mut problems,
                        &field,
                        "source",
                        "kafka",
                        s.kafka.take(),
                        |spec| {
                            crate::connectors::kafka::KafkaSource::new(spec, base)
                                .map(VertexKind::KafkaSource)
                        },
                    )
                    .unwrap_or_else(placeholder)
                }
            }
        };
        for (table, set) in [("nats", s.nats.is_some()), ("kafka", s.kafka.is_some())] {
            if set {
                problems.add(
                    format!("{field}.{table}"),
                    format!("applies to a `{table}` source only"),
                );
            }
        }
        let watermarks = s
            .watermarks
            .map(|w| watermark_strategy(&w, &field, &mut problems));
        drafts.push(Draft {
            uid: s.uid,
            field,
            parallelism,
            kind,
            inputs: Vec::new(),
            watermarks,
        });
    }
    for (i, o) in file.operators.into_iter().enumerate() {
        let field = format!("operators[{i}]");
        let parallelism =
            check_parallelism(&mut problems, format!("{field}.parallelism"), o.parallelism);
        let plugin = resolve(base, &o.plugin);
        match regular_file(&plugin) {
            Err(what) => problems.add(
                format!("{field}.plugin"),
                format!("plugin file {} {what}", plugin.display()),
            ),
            Ok(meta) if meta.len() > MAX_PLUGIN_BYTES => problems.add(
                format!("{field}.plugin"),
                format!(
                    "plugin file {} is {} bytes, more than the {MAX_PLUGIN_BYTES} a plugin may be",
                    plugin.display(),
                    meta.len()
                ),
            ),
            Ok(_) => {}
        }
        if o.config.len() > MAX_CONFIG_BYTES {
            problems.add(
                format!("{field}.config"),
                format!(
                    "must be at most {MAX_CONFIG_BYTES} bytes, got {}",
                    o.config.len()
                ),
            );
        }
        let own = o.limits.unwrap_or_default();
        let limits = resolve_limits(&own, &job_limits, &field, job_memory_mb, &mut problems);
        drafts.push(Draft {
            uid: o.uid,
            field,
            parallelism,
            watermarks: None,
            kind: VertexKind::Operator {
                plugin,
                config: o.config,
                limits,
            },
            inputs: o
                .input
                .names()
                .into_iter()
                .map(|n| (n.to_owned(), o.partition))
                .collect(),
        });
    }
    for (i, mut s) in file.sinks.into_iter().enumerate() {
        let field = format!("sinks[{i}]");
        let parallelism =
            check_parallelism(&mut problems, format!("{field}.parallelism"), s.parallelism);
        let kind = match s.kind {
            SinkType::Stdout | SinkType::Blackhole => {
                if s.path.is_some() {
                    problems.add(format!("{field}.path"), "only a `file` sink takes `path`");
                }
                if s.kind == SinkType::Stdout {
                    VertexKind::StdoutSink
                } else {
                    VertexKind::BlackholeSink
                }
            }
            SinkType::File => match &s.path {
                Some(p) => {
                    let dir = resolve(base, p);
                    if let Ok(meta) = std::fs::metadata(&dir)
                        && !meta.is_dir()
                    {
                        problems.add(
                            format!("{field}.path"),
                            format!(
                                "output directory {} exists and is not a directory",
                                dir.display()
                            ),
                        );
                    }
                    VertexKind::FileSink { dir }
                }
                None => {
                    problems.add(
                        format!("{field}.path"),
                        "a `file` sink needs `path` (a directory)",
                    );
                    VertexKind::FileSink {
                        dir: PathBuf::new(),
                    }
                }
            },
            SinkType::Nats | SinkType::Kafka => {
                if s.path.is_some() {
                    problems.add(format!("{field}.path"), "only a `file` sink takes `path`");
                }
                if s.kind == SinkType::Nats {
                    connector_table(
                        &mut problems,
                        &field,
                        "sink",
                        "nats",
                        s.nats.take(),
                        |spec| {
                            crate::connectors::nats::NatsSink::new(spec, &file.name, base)
                                .map(VertexKind::NatsSink)
                        },
                    )
                    .unwrap_or(VertexKind::BlackholeSink)
                } else {
                    connector_table(
                        &mut problems,
                        &field,
                        "sink",
                        "kafka",
                        s.kafka.take(),
                        |spec| {
                            crate::connectors::kafka::KafkaSink::new(spec, base)
                                .map(VertexKind::KafkaSink)
                        },
                    )
                    .unwrap_or(VertexKind::BlackholeSink)
                }
            }
        };
        for (table, set) in [("nats", s.nats.is_some()), ("kafka", s.kafka.is_some())] {
            if set {
                problems.add(
                    format!("{field}.{table}"),
                    format!("applies to a `{table}` sink only"),
                );
            }
        }
        drafts.push(Draft {
            uid: s.uid,
            field,
            parallelism,
            kind,
            watermarks: None,
            inputs: s
                .input
                .names()
                .into_iter()
                .map(|n| (n.to_owned(), s.partition))
                .collect(),
        });
    }

    let subtasks: u64 = drafts.iter().map(|d| u64::from(d.parallelism)).sum();
    if subtasks > u64::from(MAX_SUBTASKS) {
        problems.add(
            "parallelism",
            format!(
                "the job runs {subtasks} subtasks over all its vertices, more than the {MAX_SUBTASKS} a job may run"
            ),
        );
    }
    let graph = link(drafts, &mut problems);
    if problems.0.is_empty() {
        Ok(JobGraph {
            name: file.name,
            max_parallelism,
            batch_size,
            channel_capacity,
            vertices: graph,
            checkpoints,
            restart,
            operator_errors,
            savepoint_dir,
            job_dir: if base.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                base.to_owned()
            },
        })
    } else {
        Err(problems.0)
    }
}

/// A broker connector's own table (`[sources.nats]`, `[sinks.kafka]`, …)
/// checked by `check`, which names problems by their field within it;
/// `None` after adding the problems found, a missing table among them.
fn connector_table<S>(
    problems: &mut Problems,
    field: &str,
    role: &str,
    table: &str,
    spec: Option<S>,
    check: impl FnOnce(S) -> Result<VertexKind, Vec<(&'static str, String)>>,
) -> Option<VertexKind> {
    let Some(spec) = spec else {
        problems.add(
            format!("{field}.{table}"),
            format!("a `{table}` {role} needs its options in a `[{role}s.{table}]` table"),
        );
        return None;
    };
    match check(spec) {
        Ok(kind) => Some(kind),
        Err(found) => {
            for (knob, message) in found {
                problems.add(format!("{field}.{table}.{knob}"), message);
            }
            None
        }
    }
}

/// The largest `job_memory_mb` and `state_mb`: 1 TiB.
const MAX_JOB_MEMORY_MB: u64 = 1 << 20;

/// Resolves an operator's limits (its own `limits` table over the job's
/// `[limits]` over the defaults), adding a problem for each out of bounds.
fn resolve_limits(
    own: &LimitsSpec,
    job: &LimitsSpec,
    field: &str,
    job_memory_mb: u64,
    problems: &mut Problems,
) -> Limits {
    let mut get =
        |knob: &str, own_v: Option<u64>, job_v: Option<u64>, default: u64, max: u64, why: &str| {
            let v = own_v.or(job_v).unwrap_or(default);
            if v == 0 || v > max {
                problems.add(
                    format!("{field}.limits.{knob}"),
                    format!("must be between 1 and {max}{why}, got {v}"),
                );
            }
            v.clamp(1, max)
        };
    let memory_mb = get(
        "memory_mb",
        own.memory_mb,
        job.memory_mb,
        DEFAULT_MEMORY_MB,
        4096,
        " (a 32-bit guest's address space)",
    );
    let fuel_per_call = get(
        "fuel_per_call",
        own.fuel_per_call,
        job.fuel_per_call,
        DEFAULT_FUEL_PER_CALL,
        MAX_FUEL_PER_CALL,
        "",
    );
    let fuel_per_snapshot = get(
        "fuel_per_snapshot",
        own.fuel_per_snapshot,
        job.fuel_per_snapshot,
        fuel_per_call * SNAPSHOT_FUEL_FACTOR,
        MAX_FUEL_PER_CALL * SNAPSHOT_FUEL_FACTOR,
        "",
    );
    let emit_mb = get(
        "emit_mb_per_call",
        own.emit_mb_per_call,
        job.emit_mb_per_call,
        DEFAULT_EMIT_MB_PER_CALL,
        4096,
        " (4 GiB)",
    );
    let log_kb = get(
        "log_kb_per_call",
        own.log_kb_per_call,
        job.log_kb_per_call,
        DEFAULT_LOG_KB_PER_CALL,
        1 << 20,
        " (1 GiB)",
    );
    let state_mb = get(
        "state_mb",
        own.state_mb,
        job.state_mb,
        DEFAULT_STATE_MB,
        MAX_JOB_MEMORY_MB,
        " (1 TiB)",
    );
    let call_timeout_ms = get(
        "call_timeout_ms",
        own.call_timeout_ms,
        job.call_timeout_ms,
        DEFAULT_CALL_TIMEOUT_MS,
        3_600_000,
        " (an hour)",
    );
    if own.job_memory_mb.is_some() {
        problems.add(
            format!("{field}.limits.job_memory_mb"),
            "is a budget of the whole job: set it in the top-level `[limits]` table",
        );
    }
    Limits {
        memory_bytes: memory_mb << 20,
        fuel_per_call,
        fuel_per_snapshot,
        emit_bytes_per_call: emit_mb << 20,
        log_bytes_per_call: log_kb << 10,
        state_bytes: state_mb << 20,
        job_memory_bytes: job_memory_mb.clamp(1, MAX_JOB_MEMORY_MB) << 20,
        call_timeout_ms,
    }
}

/// Parses a duration field written as a string, e.g. `"500ms"`.
fn duration(problems: &mut Problems, field: &str, text: Option<&str>) -> Option<Duration> {
    let text = text?;
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d > MAX_DURATION => {
            problems.add(
                field,
                format!(r#"must be at most {}, got "{text}""#, show(MAX_DURATION)),
            );
            None
        }
        Ok(d) => Some(d),
        Err(_) => {
            problems.add(
                field,
                format!(r#""{text}" is not a duration (e.g. "500ms", "10s", "2m")"#),
            );
            None
        }
    }
}

fn show(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

/// Validates `[checkpoints]`; an absent section leaves checkpoints off.
fn checkpoint_config(spec: Option<CheckpointsSpec>, problems: &mut Problems) -> CheckpointConfig {
    let mut config = CheckpointConfig::default();
    let Some(spec) = spec else {
        return config;
    };
    let at_least = |problems: &mut Problems, field: &str, d: Option<Duration>| {
        if let Some(d) = d
            && d < MIN_CHECKPOINT_TIME
        {
            problems.add(
                field,
                format!(
                    "must be at least {}, got {}",
                    show(MIN_CHECKPOINT_TIME),
                    show(d)
                ),
            );
        }
        d
    };
    let interval = duration(problems, "checkpoints.interval", spec.interval.as_deref());
    config.interval = at_least(problems, "checkpoints.interval", interval);
    if let Some(timeout) = duration(problems, "checkpoints.timeout", spec.timeout.as_deref()) {
        at_least(problems, "checkpoints.timeout", Some(timeout));
        config.timeout = timeout;
    }
    if let Some(min_pause) = duration(problems, "checkpoints.min_pause", spec.min_pause.as_deref())
    {
        config.min_pause = min_pause;
    }
    config.mode = spec.mode.unwrap_or(config.mode);
    config.max_concurrent = spec.max_concurrent.unwrap_or(config.max_concurrent);
    if !(1..=MAX_CONCURRENT_CHECKPOINTS).contains(&config.max_concurrent) {
        problems.add(
            "checkpoints.max_concurrent",
            format!(
                "must be between 1 and {MAX_CONCURRENT_CHECKPOINTS}, got {}",
                config.max_concurrent
            ),
        );
    }
    config.tolerable_failures = spec.tolerable_failures.unwrap_or(config.tolerable_failures);
    config.unaligned = spec.unaligned.unwrap_or(config.unaligned);
    config.incremental = spec.incremental.unwrap_or(config.incremental);
    if config.unaligned {
        // Flink's rules: at-least-once never aligns, so there is nothing to
        // skip; concurrent unaligned checkpoints would store the same
        // in-flight records twice.
        if config.mode == CheckpointingMode::AtLeastOnce {
            problems.add(
                "checkpoints.unaligned",
                r#"needs mode = "exactly-once": at-least-once checkpoints do not align barriers at all"#,
            );
        }
        if config.max_concurrent > 1 {
            problems.add(
                "checkpoints.unaligned",
                format!("needs max_concurrent = 1, got {}", config.max_concurrent),
            );
        }
    }
    let aligned_timeout = duration(
        problems,
        "checkpoints.aligned_timeout",
        spec.aligned_timeout.as_deref(),
    );
    if let Some(t) = aligned_timeout {
        if !config.unaligned {
            problems.add(
                "checkpoints.aligned_timeout",
                "applies only with unaligned = true (checkpoints start aligned and switch to unaligned after it)",
            );
        } else if t.is_zero() {
            problems.add(
                "checkpoints.aligned_timeout",
                "must be more than 0s; leave it out to start unaligned at once",
            );
        }
    }
    config.aligned_timeout = aligned_timeout;
    config.retained = spec.retained.unwrap_or(config.retained);
    if config.retained == 0 {
        problems.add(
            "checkpoints.retained",
            "must be at least 1: recovery needs the latest completed checkpoint",
        );
    } else if config.retained > MAX_RETAINED_CHECKPOINTS {
        problems.add(
            "checkpoints.retained",
            format!(
                "must be at most {MAX_RETAINED_CHECKPOINTS}, got {}",
                config.retained
            ),
        );
    }
    config.retention_on_cancel = spec
        .retention_on_cancel
        .unwrap_or(config.retention_on_cancel);
    if let Some(storage) = spec.storage {
        if storage.trim().is_empty() {
            problems.add("checkpoints.storage", "must not be empty");
        }
        config.storage = storage;
    }
    if spec.interval.is_none() {
        // Checkpoints are off: a knob set here is almost surely a
        // forgotten `interval`, not a wish. `storage` alone is fine
        // (savepoints use it too).
        for (name, set) in [
            ("mode", spec.mode.is_some()),
            ("timeout", spec.timeout.is_some()),
            ("min_pause", spec.min_pause.is_some()),
            ("max_concurrent", spec.max_concurrent.is_some()),
            ("tolerable_failures", spec.tolerable_failures.is_some()),
            ("unaligned", spec.unaligned.is_some()),
            ("aligned_timeout", spec.aligned_timeout.is_some()),
            ("retained", spec.retained.is_some()),
            ("retention_on_cancel", spec.retention_on_cancel.is_some()),
            ("incremental", spec.incremental.is_some()),
        ] {
            if set {
                problems.add(
                    format!("checkpoints.{name}"),
                    "has no effect without checkpoints.interval (checkpoints are off)",
                );
            }
        }
    }
    config
}

/// Validates `[restart]`; without it, Flink's default for the job's
/// checkpointing.
fn restart_strategy(
    spec: Option<RestartSpec>,
    checkpointing: bool,
    problems: &mut Problems,
) -> RestartStrategy {
    let Some(spec) = spec else {
        return RestartStrategy::default_for(checkpointing);
    };
    let Some(kind) = spec.strategy else {
        problems.add(
            "restart.strategy",
            r#"required: "none", "fixed-delay", "exponential-backoff" or "failure-rate""#,
        );
        return RestartStrategy::None;
    };
    let allowed: &[&str] = match kind {
        RestartKind::None => &[],
        RestartKind::FixedDelay => &["attempts", "delay"],
        RestartKind::ExponentialBackoff => &[
            "initial_backoff",
            "max_backoff",
            "multiplier",
            "jitter",
            "reset_after",
        ],
        RestartKind::FailureRate => &["max_failures", "interval", "delay"],
    };
    for (name, set) in [
        ("attempts", spec.attempts.is_some()),
        ("delay", spec.delay.is_some()),
        ("initial_backoff", spec.initial_backoff.is_some()),
        ("max_backoff", spec.max_backoff.is_some()),
        ("multiplier", spec.multiplier.is_some()),
        ("jitter", spec.jitter.is_some()),
        ("reset_after", spec.reset_after.is_some()),
        ("max_failures", spec.max_failures.is_some()),
        ("interval", spec.interval.is_some()),
    ] {
        if set && !allowed.contains(&name) {
            problems.add(
                format!("restart.{name}"),
                format!(r#"does not apply to strategy "{}""#, kind.name()),
            );
        }
    }
    let field = |name: &str| format!("restart.{name}");
    let mut duration_or = |name: &str, text: &Option<String>, default: Duration| {
        duration(problems, &field(name), text.as_deref()).unwrap_or(default)
    };
    match kind {
        RestartKind::None => RestartStrategy::None,
        RestartKind::FixedDelay => RestartStrategy::FixedDelay {
            attempts: spec.attempts.unwrap_or(restart::DEFAULT_ATTEMPTS),
            delay: duration_or("delay", &spec.delay, restart::DEFAULT_DELAY),
        },
        RestartKind::ExponentialBackoff => {
            let initial = duration_or(
                "initial_backoff",
                &spec.initial_backoff,
                restart::DEFAULT_INITIAL_BACKOFF,
            );
            let max = duration_or(
                "max_backoff",
                &spec.max_backoff,
                restart::DEFAULT_MAX_BACKOFF,
            );
            let reset_after = duration_or(
                "reset_after",
                &spec.reset_after,
                restart::DEFAULT_RESET_AFTER,
            );
            let multiplier = spec.multiplier.unwrap_or(restart::DEFAULT_MULTIPLIER);
            let jitter = spec.jitter.unwrap_or(restart::DEFAULT_JITTER);
            if initial < Duration::from_millis(1) {
                problems.add(field("initial_backoff"), "must be at least 1ms");
            }
            if max < initial {
                problems.add(
                    field("max_backoff"),
                    format!(
                        "must be at least initial_backoff ({}), got {}",
                        show(initial),
                        show(max)
                    ),
                );
            }
            if !(multiplier.is_finite() && multiplier > 1.0) {
                problems.add(
                    field("multiplier"),
                    format!("must be a number greater than 1, got {multiplier}"),
                );
            }
            if !(0.0..=1.0).contains(&jitter) {
                problems.add(
                    field("jitter"),
                    format!("must be between 0 and 1, got {jitter}"),
                );
            }
            if reset_after.is_zero() {
                problems.add(field("reset_after"), "must be more than 0s");
            }
            RestartStrategy::ExponentialBackoff {
                initial,
                max,
                multiplier,
                jitter,
                reset_after,
            }
        }
        RestartKind::FailureRate => {
            let delay = duration_or("delay", &spec.delay, restart::DEFAULT_DELAY);
            let interval = duration_or(
                "interval",
                &spec.interval,
                restart::DEFAULT_FAILURE_INTERVAL,
            );
            let max_failures = spec.max_failures.unwrap_or(restart::DEFAULT_MAX_FAILURES);
            if max_failures == 0 {
                problems.add(
                    field("max_failures"),
                    r#"must be at least 1 (for no restart at all, use strategy = "none")"#,
                );
            }
            if interval.is_zero() {
                problems.add(field("interval"), "must be more than 0s");
            }
            RestartStrategy::FailureRate {
                max_failures,
                interval,
                delay,
            }
        }
    }
}

/// Checks uids, edges, connectivity and acyclicity; returns the vertices
/// in topological order.
fn link(drafts: Vec<Draft>, problems: &mut Problems) -> Vec<Vertex> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, d) in drafts.iter().enumerate() {
        if d.uid.trim().is_empty() {
            problems.add(format!("{}.uid", d.field), "must not be empty");
        } else if d.uid.len() > MAX_NAME_BYTES {
            problems.add(
                format!("{}.uid", d.field),
                format!(
                    "must be at most {MAX_NAME_BYTES} bytes, got {}",
                    d.uid.len()
                ),
            );
        } else if let Some(&first) = index.get(d.uid.as_str()) {
            problems.add(
                format!("{}.uid", d.field),
                format!(
                    "duplicate uid `{}` (also {}.uid)",
                    d.uid, drafts[first].field
                ),
            );
        } else {
            index.insert(&d.uid, i);
        }
    }
    if !drafts.iter().any(|d| !d.kind.has_inputs()) {
        problems.add("sources", "a job needs at least one source");
    }
    if !drafts.iter().any(|d| !d.kind.has_outputs()) {
        problems.add("sinks", "a job needs at least one sink");
    }

    // Resolve edges.
    let mut edges: Vec<Vec<Edge>> = vec![Vec::new(); drafts.len()];
    for (i, d) in drafts.iter().enumerate() {
        let mut seen = HashSet::new();
        for (name, partition) in &d.inputs {
            let field = format!("{}.input", d.field);
            let Some(&from) = index.get(name.as_str()) else {
                problems.add(
                    field,
                    format!("unknown input `{name}`: no vertex has this uid"),
                );
                continue;
            };
            if !seen.insert(from) {
                problems.add(field, format!("input `{name}` listed twice"));
                continue;
            }
            if !drafts[from].kind.has_outputs() {
                problems.add(
                    field,
                    format!("input `{name}` is a sink, which has no output"),
                );
                continue;
            }
            let (up, down) = (drafts[from].parallelism, d.parallelism);
            let partition = partition.unwrap_or(if up == down {
                Partition::Forward
            } else {
                Partition::Rebalance
            });
            if partition == Partition::Forward && up != down {
                problems.add(
                    format!("{}.partition", d.field),
                    format!(
                        "`forward` needs equal parallelism, but `{name}` has {up} and `{}` has {down}",
                        d.uid
                    ),
                );
            }
            edges[i].push(Edge { from, partition });
        }
        if d.kind.has_inputs() && d.inputs.is_empty() {
            problems.add(format!("{}.input", d.field), "needs at least one input");
        }
    }

    // Kahn's algorithm: topological order, or the vertices on cycles.
    let n = drafts.len();
    let mut indegree: Vec<usize> = edges.iter().map(Vec::len).collect();
    let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, es) in edges.iter().enumerate() {
        for e in es {
            downstream[e.from].push(i);
        }
    }
    let mut order: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut head = 0;
    while head < order.len() {
        let v = order[head];
        head += 1;
        for &w in &downstream[v] {
            indegree[w] -= 1;
            if indegree[w] == 0 {
                order.push(w);
            }
        }
    }
    if order.len() < n {
        let on_cycle: Vec<&str> = (0..n)
            .filter(|&i| indegree[i] > 0)
            .map(|i| drafts[i].uid.as_str())
            .collect();
        let first = (0..n)
            .find(|&i| indegree[i] > 0)
            .expect("a vertex is on a cycle");
        problems.add(
            format!("{}.input", drafts[first].field),
            format!("the graph has a cycle through {}", on_cycle.join(", ")),
        );
        return Vec::new();
    }

    // Connected: every vertex reaches a sink and every operator is fed.
    let mut reaches_sink = vec![false; n];
    for &v in order.iter().rev() {
        reaches_sink[v] =
            !drafts[v].kind.has_outputs() || downstream[v].iter().any(|&w| reaches_sink[w]);
    }
    for (i, d) in drafts.iter().enumerate() {
        if !reaches_sink[i] && !d.uid.is_empty() && index.get(d.uid.as_str()) == Some(&i) {
            problems.add(
                format!("{}.uid", d.field),
                format!(
                    "`{}` is not connected to any sink: its records would go nowhere",
                    d.uid
                ),
            );
        }
    }

    let mut new_index = vec![0; n];
    for (pos, &v) in order.iter().enumerate() {
        new_index[v] = pos;
    }
    let mut slots: Vec<Option<Draft>> = drafts.into_iter().map(Some).collect();
    order
        .iter()
        .map(|&v| {
            let d = slots[v].take().expect("each vertex is ordered once");
            Vertex {
                uid: d.uid,
                parallelism: d.parallelism,
                kind: d.kind,
                watermarks: d.watermarks,
                inputs: edges[v]
                    .iter()
                    .map(|e| Edge {
                        from: new_index[e.from],
                        partition: e.partition,
                    })
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<JobGraph, Error> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.txt"), "a b\n").unwrap();
        std::fs::write(dir.path().join("op.wasm"), "not really").unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(&path, toml_text).unwrap();
        load(&path)
    }

    fn problems(toml_text: &str) -> Vec<String> {
        match parse(toml_text) {
            Err(Error::InvalidJob { problems, .. }) => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => panic!("expected InvalidJob, got {other:?}"),
        }
    }

    const GOOD: &str = r#"
name = "wc"
parallelism = 2
[[sources]]
uid = "lines"
type = "file"
path = "in.txt"
parallelism = 1
[[operators]]
uid = "tok"
plugin = "op.wasm"
input = "lines"
[[operators]]
uid = "count"
plugin = "op.wasm"
input = "tok"
partition = "hash"
[[sinks]]
uid = "out"
type = "blackhole"
input = ["count"]
"#;

    #[test]
    fn watermarks_and_the_nexmark_source_are_read_and_bounded() {
        let good = GOOD.replacen(
            "type = \"file\"\npath = \"in.txt\"\nparallelism = 1",
            "type = \"nexmark\"\nparallelism = 1\nrate = 100.0\n[sources.nexmark]\nmax_events = 10\n[sources.watermarks]\nout_of_orderness_ms = 500\nidle_timeout_ms = 2000",
            1,
        );
        let g = parse(&good).unwrap();
        let source = &g.vertices[0];
        assert!(matches!(
            &source.kind,
            VertexKind::Nexmark(n) if n.generator.max_events == Some(10) && n.rate == Some(100.0)
        ));
        assert_eq!(
            source.watermarks,
            Some(WatermarkStrategy {
                out_of_orderness: Duration::from_millis(500),
                idle_timeout: Some(Duration::from_millis(2000)),
            })
        );
        assert!(g.vertices[1..].iter().all(|v| v.watermarks.is_none()));

        let bad = good
            .replace("rate = 100.0", "rate = -1.0")
            .replace("max_events = 10", "events_per_second = 0")
            .replace(
                "out_of_orderness_ms = 500",
                "out_of_orderness_ms = 86400001",
            )
            .replace("idle_timeout_ms = 2000", "idle_timeout_ms = 0");
        let p = problems(&bad);
        for needle in [
            "sources[0].rate: must be a positive number, got -1",
            "sources[0].nexmark: ",
            "sources[0].watermarks.out_of_orderness_ms: must be between 0 and 86400000",
            "sources[0].watermarks.idle_timeout_ms: must be between 1 and 86400000",
        ] {
            assert!(p.iter().any(|m| m.starts_with(needle)), "{needle}: {p:?}");
        }
        let unknown = good.replace("idle_timeout_ms = 2000", "idle_ms = 2000");
        assert!(
            parse(&unknown).is_err(),
            "unknown watermark fields are refused"
        );
    }

    fn operator_limits(g: &JobGraph, uid: &str) -> Limits {
        match &g.vertices.iter().find(|v| v.uid == uid).unwrap().kind {
            VertexKind::Operator { limits, .. } => *limits,
            _ => panic!("{uid} is not an operator"),
        }
    }

    #[test]
    fn limits_resolve_operator_over_job_over_defaults_and_are_bounded() {
        let g = parse(GOOD).unwrap();
        assert_eq!(operator_limits(&g, "tok"), Limits::default());
        assert_eq!(
            Limits::default().fuel_per_snapshot,
            50 * DEFAULT_FUEL_PER_CALL
        );

        let job = GOOD.replace(
            "[[sources]]",
            "[limits]\nstate_mb = 8\nfuel_per_call = 10\njob_memory_mb = 100\n[[sources]]",
        );
        let job = job.replacen(
            "input = \"lines\"\n",
            "input = \"lines\"\nlimits = { state_mb = 16, emit_mb_per_call = 2, log_kb_per_call = 3, call_timeout_ms = 4 }\n",
            1,
        );
        let g = parse(&job).unwrap();
        let tok = operator_limits(&g, "tok");
        assert_eq!(
            (
                tok.state_bytes,
                tok.emit_bytes_per_call,
                tok.log_bytes_per_call
            ),
            (16 << 20, 2 << 20, 3 << 10)
        );
        assert_eq!(
            (
                tok.call_timeout_ms,
                tok.fuel_per_call,
                tok.fuel_per_snapshot
            ),
            (4, 10, 500)
        );
        assert_eq!(tok.job_memory_bytes, 100 << 20);
        let count = operator_limits(&g, "count");
        assert_eq!(
            (count.state_bytes, count.emit_bytes_per_call),
            (8 << 20, 64 << 20)
        );

        let bad = GOOD.replace(
            "[[sources]]",
            "[limits]\nstate_mb = 0\njob_memory_mb = 99999999999\ncall_timeout_ms = 3600001\n[[sources]]",
        );
        let bad = bad.replacen(
            "input = \"lines\"\n",
            "input = \"lines\"\nlimits = { job_memory_mb = 5, emit_mb_per_call = 5000 }\n",
            1,
        );
        let p = problems(&bad);
        for expected in [
            "limits.job_memory_mb: must be between 1 and 1048576 (1 TiB), got 99999999999",
            "operators[0].limits.state_mb: must be between 1 and 1048576 (1 TiB), got 0",
            "operators[0].limits.emit_mb_per_call: must be between 1 and 4096 (4 GiB), got 5000",
            "operators[0].limits.call_timeout_ms: must be between 1 and 3600000 (an hour), got 3600001",
            "operators[0].limits.job_memory_mb: is a budget of the whole job: set it in the top-level `[limits]` table",
            "operators[1].limits.state_mb: must be between 1 and 1048576 (1 TiB), got 0",
        ] {
            assert!(p.iter().any(|m| m == expected), "{expected} not in {p:#?}");
        }
    }

    #[test]
    fn builds_a_topologically_sorted_graph_with_default_partitions() {
        let g = parse(GOOD).unwrap();
        let uids: Vec<_> = g.vertices.iter().map(|v| v.uid.as_str()).collect();
        assert_eq!(uids, ["lines", "tok", "count", "out"]);
        assert_eq!(
            g.vertices[1].inputs,
            [Edge {
                from: 0,
                partition: Partition::Rebalance
            }]
        );
        assert_eq!(
            g.vertices[2].inputs,
            [Edge {
                from: 1,
                partition: Partition::Hash
            }]
        );
        assert_eq!(
            g.vertices[3].inputs,
            [Edge {
                from: 2,
                partition: Partition::Forward
            }]
        );
        assert_eq!(g.max_parallelism, 128);
    }

    #[test]
    fn unknown_field_names_the_field_and_line() {
        let err = parse(&GOOD.replace("partition = \"hash\"", "partitoin = \"hash\"")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("job.toml"), "{msg}");
        assert!(msg.contains("unknown field `partitoin`"), "{msg}");
        assert!(msg.contains("line 17"), "{msg}");
    }

    #[test]
    fn duplicate_uid() {
        let p = problems(
            &GOOD
                .replace("uid = \"count\"", "uid = \"tok\"")
                .replace("input = \"tok\"", "input = \"lines\""),
        );
        assert!(
            p.iter()
                .any(|p| p == "operators[1].uid: duplicate uid `tok` (also operators[0].uid)"),
            "{p:?}"
        );
    }

    #[test]
    fn cycle() {
        let p = problems(&GOOD.replace("input = \"lines\"", "input = \"count\""));
        assert!(
            p.iter().any(|p| p.contains("cycle through tok, count")),
            "{p:?}"
        );
    }

    #[test]
    fn missing_plugin_and_input_file() {
        let p = problems(
            &GOOD
                .replace("op.wasm\"\ninput = \"tok\"", "nope.wasm\"\ninput = \"tok\"")
                .replace("in.txt", "gone.txt"),
        );
        assert!(
            p.iter()
                .any(|p| p.starts_with("operators[1].plugin: plugin file")
                    && p.ends_with("nope.wasm does not exist")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|p| p.starts_with("sources[0].path: input file")),
            "{p:?}"
        );
    }

    #[test]
    fn forward_with_unequal_parallelism_and_unknown_input() {
        let p = problems(
            &GOOD
                .replace(
                    "input = \"lines\"",
                    "input = \"lines\"\npartition = \"forward\"",
                )
                .replace("input = [\"count\"]", "input = [\"count\", \"ghost\"]"),
        );
        assert!(p.iter().any(|p| p.starts_with("operators[0].partition: `forward` needs equal parallelism")), "{p:?}");
        assert!(
            p.iter()
                .any(|p| p == "sinks[0].input: unknown input `ghost`: no vertex has this uid"),
            "{p:?}"
        );
    }

    #[test]
    fn disconnected_operator() {
        let text = format!(
            "{GOOD}\n[[operators]]\nuid = \"lonely\"\nplugin = \"op.wasm\"\ninput = \"lines\"\n"
        );
        let p = problems(&text);
        assert_eq!(
            p,
            [
                "operators[2].uid: `lonely` is not connected to any sink: its records would go nowhere"
            ]
        );
    }

    #[test]
    fn field_that_does_not_apply() {
        let p = problems(&GOOD.replace("path = \"in.txt\"", "path = \"in.txt\"\nseed = 3"));
        assert_eq!(p, ["sources[0].seed: does not apply to a `file` source"]);
    }

    fn with(section: &str) -> String {
        format!("{GOOD}\n{section}\n")
    }

    #[test]
    fn without_sections_checkpoints_are_off_and_nothing_restarts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.txt"), "a b\n").unwrap();
        std::fs::write(dir.path().join("op.wasm"), "not really").unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(&path, GOOD).unwrap();
        let g = load(&path).unwrap();
        assert_eq!(g.checkpoints, CheckpointConfig::default());
        assert!(!g.checkpoints.enabled());
        assert_eq!(g.restart, RestartStrategy::None);
        assert_eq!(g.job_dir, dir.path());
    }

    #[test]
    fn a_relative_job_path_has_the_current_directory_as_job_dir() {
        let file: JobFile = toml::from_str(
            "name = \"j\"\n[[sources]]\nuid = \"s\"\ntype = \"datagen\"\n\
             [[sinks]]\nuid = \"o\"\ntype = \"blackhole\"\ninput = \"s\"\n",
        )
        .unwrap();
        let g = build_graph(file, Path::new("job.toml").parent().unwrap()).unwrap();
        assert_eq!(g.job_dir, Path::new("."));
    }

    #[test]
    fn checkpoints_section_with_every_key() {
        let g = parse(&with(
            r#"[checkpoints]
interval = "500ms"
mode = "exactly-once"
timeout = "1m 30s"
min_pause = "100ms"
max_concurrent = 1
tolerable_failures = 3
unaligned = true
aligned_timeout = "30s"
retained = 3
retention_on_cancel = "delete"
incremental = true
storage = "s3://bucket/weir"
"#,
        ))
        .unwrap();
        assert_eq!(
            g.checkpoints,
            CheckpointConfig {
                interval: Some(Duration::from_millis(500)),
                mode: CheckpointingMode::ExactlyOnce,
                timeout: Duration::from_secs(90),
                min_pause: Duration::from_millis(100),
                max_concurrent: 1,
                tolerable_failures: 3,
                unaligned: true,
                aligned_timeout: Some(Duration::from_secs(30)),
                retained: 3,
                retention_on_cancel: RetentionOnCancel::Delete,
                incremental: true,
                storage: "s3://bucket/weir".into(),
            }
        );
        // Checkpoints on and no [restart]: Flink's exponential backoff.
        assert_eq!(g.restart, RestartStrategy::default_exponential_backoff());
    }

    #[test]
    fn checkpoints_defaults_with_only_an_interval() {
        let g = parse(&with("[checkpoints]\ninterval = \"10s\"")).unwrap();
        assert_eq!(
            g.checkpoints,
            CheckpointConfig {
                interval: Some(Duration::from_secs(10)),
                ..CheckpointConfig::default()
            }
        );
        let g = parse(&with(
            "[checkpoints]\ninterval = \"1s\"\nmode = \"at-least-once\"\nmax_concurrent = 2",
        ))
        .unwrap();
        assert_eq!(g.checkpoints.mode, CheckpointingMode::AtLeastOnce);
        assert_eq!(g.checkpoints.max_concurrent, 2);
    }

    #[test]
    fn storage_alone_is_allowed_with_checkpoints_off() {
        let g = parse(&with("[checkpoints]\nstorage = \"/var/weir\"")).unwrap();
        assert!(!g.checkpoints.enabled());
        assert_eq!(g.checkpoints.storage, "/var/weir");
    }

    #[test]
    fn a_bad_duration_names_the_field() {
        let p = problems(&with("[checkpoints]\ninterval = \"5 parsecs\""));
        assert_eq!(
            p,
            [r#"checkpoints.interval: "5 parsecs" is not a duration (e.g. "500ms", "10s", "2m")"#]
        );
        let p = problems(&with(
            "[restart]\nstrategy = \"fixed-delay\"\ndelay = \"soon\"",
        ));
        assert_eq!(
            p,
            [r#"restart.delay: "soon" is not a duration (e.g. "500ms", "10s", "2m")"#]
        );
    }

    #[test]
    fn checkpoint_values_out_of_range() {
        let p = problems(&with(
            r#"[checkpoints]
interval = "0s"
timeout = "5ms"
max_concurrent = 0
retained = 0
storage = " "
"#,
        ));
        assert_eq!(
            p,
            [
                "checkpoints.interval: must be at least 10ms, got 0s",
                "checkpoints.timeout: must be at least 10ms, got 5ms",
                "checkpoints.max_concurrent: must be between 1 and 64, got 0",
                "checkpoints.retained: must be at least 1: recovery needs the latest completed checkpoint",
                "checkpoints.storage: must not be empty",
            ]
        );
    }

    #[test]
    fn unaligned_needs_exactly_once_and_one_checkpoint_at_a_time() {
        let p = problems(&with(
            "[checkpoints]\ninterval = \"1s\"\nunaligned = true\nmode = \"at-least-once\"\nmax_concurrent = 2",
        ));
        assert_eq!(
            p,
            [
                r#"checkpoints.unaligned: needs mode = "exactly-once": at-least-once checkpoints do not align barriers at all"#,
                "checkpoints.unaligned: needs max_concurrent = 1, got 2",
            ]
        );
    }

    #[test]
    fn aligned_timeout_needs_unaligned() {
        let p = problems(&with(
            "[checkpoints]\ninterval = \"1s\"\naligned_timeout = \"5s\"",
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("checkpoints.aligned_timeout: applies only with unaligned = true"),
            "{p:?}"
        );
        let p = problems(&with(
            "[checkpoints]\ninterval = \"1s\"\nunaligned = true\naligned_timeout = \"0s\"",
        ));
        assert_eq!(
            p,
            [
                "checkpoints.aligned_timeout: must be more than 0s; leave it out to start unaligned at once"
            ]
        );
    }

    #[test]
    fn checkpoint_knobs_without_an_interval() {
        let p = problems(&with("[checkpoints]\ntimeout = \"1m\"\nretained = 2"));
        assert_eq!(
            p,
            [
                "checkpoints.timeout: has no effect without checkpoints.interval (checkpoints are off)",
                "checkpoints.retained: has no effect without checkpoints.interval (checkpoints are off)",
            ]
        );
    }

    #[test]
    fn unknown_mode_and_unknown_key_are_parse_errors() {
        let msg = parse(&with("[checkpoints]\ninterval = \"1s\"\nmode = \"twice\""))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("unknown variant `twice`"), "{msg}");
        let msg = parse(&with("[checkpoints]\nintervall = \"1s\""))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("unknown field `intervall`"), "{msg}");
    }

    #[test]
    fn operator_errors_fail_the_job_unless_the_restart_section_says_restart() {
        let g = parse(&with("[restart]\nstrategy = \"fixed-delay\"")).unwrap();
        assert_eq!(g.operator_errors, OperatorErrors::Fail);
        let g = parse(&with("")).unwrap();
        assert_eq!(g.operator_errors, OperatorErrors::Fail);
        let g = parse(&with(
            "[restart]\nstrategy = \"none\"\noperator_errors = \"restart\"",
        ))
        .unwrap();
        assert_eq!(g.operator_errors, OperatorErrors::Restart);
        let msg = parse(&with(
            "[restart]\nstrategy = \"none\"\noperator_errors = \"sometimes\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(msg.contains("unknown variant `sometimes`"), "{msg}");
    }

    #[test]
    fn restart_fixed_delay() {
        let g = parse(&with(
            "[restart]\nstrategy = \"fixed-delay\"\nattempts = 3\ndelay = \"2s\"",
        ))
        .unwrap();
        assert_eq!(
            g.restart,
            RestartStrategy::FixedDelay {
                attempts: 3,
                delay: Duration::from_secs(2)
            }
        );
        // Flink's defaults for the keys left out.
        let g = parse(&with("[restart]\nstrategy = \"fixed-delay\"")).unwrap();
        assert_eq!(
            g.restart,
            RestartStrategy::FixedDelay {
                attempts: 1,
                delay: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn restart_exponential_backoff() {
        let g = parse(&with(
            r#"[restart]
strategy = "exponential-backoff"
initial_backoff = "500ms"
max_backoff = "30s"
multiplier = 2.0
jitter = 0.2
reset_after = "10m"
"#,
        ))
        .unwrap();
        assert_eq!(
            g.restart,
            RestartStrategy::ExponentialBackoff {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(30),
                multiplier: 2.0,
                jitter: 0.2,
                reset_after: Duration::from_secs(600),
            }
        );
        let g = parse(&with("[restart]\nstrategy = \"exponential-backoff\"")).unwrap();
        assert_eq!(g.restart, RestartStrategy::default_exponential_backoff());
    }

    #[test]
    fn restart_exponential_backoff_out_of_range() {
        let p = problems(&with(
            r#"[restart]
strategy = "exponential-backoff"
initial_backoff = "10s"
max_backoff = "5s"
multiplier = 1.0
jitter = 1.5
reset_after = "0s"
"#,
        ));
        assert_eq!(
            p,
            [
                "restart.max_backoff: must be at least initial_backoff (10s), got 5s",
                "restart.multiplier: must be a number greater than 1, got 1",
                "restart.jitter: must be between 0 and 1, got 1.5",
                "restart.reset_after: must be more than 0s",
            ]
        );
    }

    #[test]
    fn restart_failure_rate() {
        let g = parse(&with(
            "[restart]\nstrategy = \"failure-rate\"\nmax_failures = 3\ninterval = \"5m\"\ndelay = \"10s\"",
        ))
        .unwrap();
        assert_eq!(
            g.restart,
            RestartStrategy::FailureRate {
                max_failures: 3,
                interval: Duration::from_secs(300),
                delay: Duration::from_secs(10)
            }
        );
        let p = problems(&with(
            "[restart]\nstrategy = \"failure-rate\"\nmax_failures = 0\ninterval = \"0s\"",
        ));
        assert_eq!(
            p,
            [
                r#"restart.max_failures: must be at least 1 (for no restart at all, use strategy = "none")"#,
                "restart.interval: must be more than 0s",
            ]
        );
    }

    #[test]
    fn restart_none_overrides_the_checkpointing_default() {
        let g = parse(&with(
            "[checkpoints]\ninterval = \"1s\"\n[restart]\nstrategy = \"none\"",
        ))
        .unwrap();
        assert_eq!(g.restart, RestartStrategy::None);
    }

    #[test]
    fn restart_keys_of_another_strategy() {
        let p = problems(&with(
            "[restart]\nstrategy = \"fixed-delay\"\nattempts = 2\njitter = 0.5\ninterval = \"1m\"",
        ));
        assert_eq!(
            p,
            [
                r#"restart.jitter: does not apply to strategy "fixed-delay""#,
                r#"restart.interval: does not apply to strategy "fixed-delay""#,
            ]
        );
        let p = problems(&with("[restart]\nstrategy = \"none\"\ndelay = \"1s\""));
        assert_eq!(p, [r#"restart.delay: does not apply to strategy "none""#]);
    }

    #[test]
    fn restart_needs_a_strategy() {
        let p = problems(&with("[restart]\nattempts = 3"));
        assert_eq!(
            p,
            [
                r#"restart.strategy: required: "none", "fixed-delay", "exponential-backoff" or "failure-rate""#
            ]
        );
    }

    #[test]
    fn numeric_fields_are_bounded_before_anything_is_allocated() {
        let p = problems(
            &GOOD
                .replace("parallelism = 2\n", "parallelism = 2\nchannel_capacity = 4294967295\nbatch_size = 4294967295\n")
                .replace(
                    "[[operators]]\nuid = \"tok\"",
                    "[[sources]]\nuid = \"gen\"\ntype = \"datagen\"\nwords_per_record = 4294967295\n[[operators]]\nuid = \"tok\"\nlimits = { fuel_per_call = 18446744073709551615 }",
                )
                .replace("input = \"lines\"", "input = [\"lines\", \"gen\"]"),
        );
        assert_eq!(
            p,
            [
                "batch_size: must be between 1 and 65536, got 4294967295",
                "channel_capacity: must be between 1 and 1024, got 4294967295",
                "sources[1].words_per_record: must be between 1 and 10000, got 4294967295",
                "operators[0].limits.fuel_per_call: must be between 1 and 1000000000000, got 18446744073709551615",
            ]
        );
    }

    #[test]
    fn too_many_subtasks_long_names_and_durations_are_refused() {
        let long = "u".repeat(MAX_NAME_BYTES + 1);
        let p = problems(
            &GOOD
                .replace(
                    "name = \"wc\"\nparallelism = 2",
                    "name = \"wc\"\nparallelism = 600\nmax_parallelism = 1024",
                )
                .replace("uid = \"out\"", &format!("uid = \"{long}\""))
                .replace(
                    "input = [\"count\"]",
                    "input = [\"count\"]\n[checkpoints]\ninterval = \"400days\"",
                ),
        );
        assert_eq!(
            p,
            [
                r#"checkpoints.interval: must be at most 30days, got "400days""#,
                "parallelism: the job runs 1801 subtasks over all its vertices, more than the 1024 a job may run",
                "sinks[0].uid: must be at most 200 bytes, got 201",
            ]
        );
    }

    #[test]
    fn a_plugin_or_input_that_is_not_a_regular_file_is_named_for_what_it_is() {
        let p = problems(
            &GOOD
                .replace("op.wasm\"\ninput = \"tok\"", "/dev/zero\"\ninput = \"tok\"")
                .replace("in.txt", "/tmp"),
        );
        assert!(
            p.contains(&"operators[1].plugin: plugin file /dev/zero is a character device, not a regular file".to_owned()),
            "{p:?}"
        );
        assert!(
            p.contains(
                &"sources[0].path: input file /tmp is a directory, not a regular file".to_owned()
            ),
            "{p:?}"
        );
    }

    #[test]
    fn a_job_file_that_is_a_device_or_too_big_is_not_read_whole() {
        let err = load(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(
            err.contains("is a character device, not a regular file"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_JOB_FILE_BYTES as usize + 1]).unwrap();
        let err = load(&big).unwrap_err().to_string();
        assert!(err.contains("larger than 1048576 bytes"), "{err}");
    }
}
