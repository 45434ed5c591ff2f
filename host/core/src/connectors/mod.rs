//! Built-in sources and sinks, one module per connector behind two small
//! traits, so the next connector is a new file.
//!
//! A source's input is divided into splits ([`SplitKind`]), each read by
//! a [`Source`] that reports a replay position ([`Source::offset`]): the
//! `file` source's one split is its file (the byte offset of the next
//! line); the `datagen` source has one stream per subtask it first ran with
//! (the count of records emitted; the stream is a pure function of seed,
//! stream and position). A subtask reads the splits dealt to it
//! ([`SourceSplits`]) and a checkpoint records each split's position, so a
//! restore resumes them at any parallelism.
//!
//! Sinks ([`SinkKind`] opens one per subtask) take part in checkpoints by
//! two-phase commit ([`Sink::pre_commit`], [`Sink::commit`]): the `file`
//! sink writes each checkpoint interval to a hidden part file, renames it
//! to a pending name on the snapshot and to its visible name once the
//! checkpoint completed, so its visible output is exactly-once.
//!
//! [`source_of`] and [`sink_of`] are the factory: what a vertex of the job
//! graph reads or writes.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use weir_format::BatchWriter;
use weir_format::snapshot::SourceSplit;

use crate::checkpoint::CheckpointId;
use crate::checkpoint::format::SubtaskSnapshot;
use crate::error::Error;
use crate::job::VertexKind;

mod blackhole;
mod datagen;
mod file;
pub mod kafka;
pub mod nats;
pub mod nexmark;
mod stdout;

pub use blackhole::BlackholeSink;
pub use datagen::{DatagenSource, DatagenSplits};
pub use file::{FileSink, FileSource, FileSplits, clear_file_sink};
pub use stdout::{LineSink, stdout_sink};

/// A reader of one split: produces batches until the split ends.
pub trait Source: Send {
    /// Appends up to `max` records to `out`, resolving to `false` once the
    /// input is exhausted (`out` may still hold the last records).
    ///
    /// A future, so a source that waits on the network (a broker) gives its
    /// worker up meanwhile. It must resolve within a bounded time even when
    /// nothing arrives (with what it has, possibly nothing): the subtask
    /// takes checkpoint barriers and cancels between batches.
    ///
    /// # Errors
    /// [`Error::Io`] if reading fails.
    fn next_batch<'a>(
        &'a mut self,
        out: &'a mut BatchWriter,
        max: usize,
    ) -> BoxFuture<'a, Result<bool, Error>>;

    /// How long to wait before the next [`Source::next_batch`] (a paced
    /// source); the caller waits without holding a worker.
    fn pause(&self) -> Duration {
        Duration::ZERO
    }

    /// The position to resume from to replay everything not yet returned.
    fn offset(&self) -> u64;
}

/// A reader whose batches are at hand (a local file, a generator): it never
/// waits, so it is a [`Source`] whose future is ready at once.
pub trait LocalSource: Send {
    /// Appends up to `max` records to `out`; `false` once the input ended.
    ///
    /// # Errors
    /// [`Error::Io`] if reading fails.
    fn read_batch(&mut self, out: &mut BatchWriter, max: usize) -> Result<bool, Error>;

    /// As [`Source::pause`].
    fn pause(&self) -> Duration {
        Duration::ZERO
    }

    /// As [`Source::offset`].
    fn offset(&self) -> u64;
}

impl<T: LocalSource> Source for T {
    fn next_batch<'a>(
        &'a mut self,
        out: &'a mut BatchWriter,
        max: usize,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(std::future::ready(self.read_batch(out, max)))
    }

    fn pause(&self) -> Duration {
        LocalSource::pause(self)
    }

    fn offset(&self) -> u64 {
        LocalSource::offset(self)
    }
}

/// What a source vertex reads: how its input divides into splits, and a
/// reader for one of them.
pub trait SplitKind: Send + Sync {
    /// The splits of a run that starts fresh at `parallelism`, in order;
    /// subtask `i` reads those at `i`, `i + parallelism`, ...
    fn initial(&self, parallelism: u32) -> Vec<SourceSplit>;

    /// A reader of `split` from its recorded position.
    ///
    /// # Errors
    /// [`Error::Restore`] for a split this source does not have (a
    /// snapshot of another job); [`Error::Io`] if the input cannot be
    /// opened there.
    fn open(&self, split: &SourceSplit) -> Result<Box<dyn Source>, Error>;
}

/// What a sink vertex writes to: opens the sink of one subtask.
pub trait SinkKind: Send + Sync {
    /// Subtask `subtask`'s sink, resuming what `restored` (the subtask's
    /// restored snapshot, empty for a fresh run) pre-committed.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be opened; [`Error::Restore`] if the
    /// restored state is not this sink's.
    fn open(&self, subtask: u32, restored: &SubtaskSnapshot) -> Result<Box<dyn Sink>, Error>;
}

/// What source vertex `uid` of kind `kind` reads; `None` for a vertex that
/// is not a source.
pub fn source_of(uid: &str, kind: &VertexKind) -> Option<Box<dyn SplitKind>> {
    match kind {
        VertexKind::FileSource { path } => Some(Box::new(FileSplits {
            uid: uid.to_owned(),
            path: path.clone(),
        })),
        VertexKind::Datagen(spec) => Some(Box::new(DatagenSplits {
            uid: uid.to_owned(),
            spec: spec.clone(),
        })),
        VertexKind::NatsSource(source) => Some(Box::new(nats::NatsSplits::new(uid, source))),
        VertexKind::KafkaSource(source) => Some(Box::new(kafka::KafkaSplits::new(uid, source))),
        VertexKind::Nexmark(spec) => Some(Box::new(nexmark::NexmarkSplits {
            uid: uid.to_owned(),
            spec: spec.clone(),
        })),
        _ => None,
    }
}

/// What sink vertex `uid` of kind `kind` writes to; `None` for a vertex
/// that is not a sink.
pub fn sink_of(uid: &str, kind: &VertexKind) -> Option<Box<dyn SinkKind>> {
    match kind {
        VertexKind::StdoutSink => Some(Box::new(stdout::Stdout {
            uid: uid.to_owned(),
        })),
        VertexKind::FileSink { dir } => Some(Box::new(file::FileSinkKind {
            uid: uid.to_owned(),
            dir: dir.clone(),
        })),
        VertexKind::BlackholeSink => Some(Box::new(blackhole::Blackhole)),
        VertexKind::NatsSink(sink) => Some(Box::new(nats::NatsSinkKind {
            uid: uid.to_owned(),
            sink: sink.clone(),
        })),
        VertexKind::KafkaSink(sink) => Some(Box::new(kafka::KafkaSinkKind {
            uid: uid.to_owned(),
            sink: sink.clone(),
        })),
        _ => None,
    }
}

/// How long a broker connector's connecting, or a request to the broker
/// (a fetch, a publish's acknowledgement), may take before it is an
/// error, unless its `timeout_ms` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A problem with a broker connector's `timeout_ms`, if any.
pub(crate) fn timeout_problem(timeout_ms: Option<u64>) -> Option<(&'static str, String)> {
    timeout_ms.filter(|t| *t == 0 || *t > 600_000).map(|t| {
        (
            "timeout_ms",
            format!("must be between 1 and 600000, got {t}"),
        )
    })
}

/// Reads the secret file `path` that field `field` names (trailing line
/// breaks dropped); on failure a message naming the field and the file,
/// never its content.
pub(crate) fn read_secret(field: &str, path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|e| format!("`{field}` {}: {e}", path.display()))
}

/// The fresh splits of a partitioned input `name` (a topic, a stream):
/// `<name>/0` … `<name>/<partitions - 1>`, none read yet.
pub(crate) fn partition_splits(name: &str, partitions: u32) -> Vec<SourceSplit> {
    (0..partitions)
        .map(|p| SourceSplit {
            split: format!("{name}/{p}"),
            position: 0,
            finished: false,
        })
        .collect()
}

/// The partition of `split`, one of [`partition_splits`]`(name,
/// partitions)`.
///
/// # Errors
/// [`Error::Restore`] naming the split if it is not one of them.
pub(crate) fn split_partition(
    uid: &str,
    split: &SourceSplit,
    name: &str,
    partitions: u32,
) -> Result<u32, Error> {
    split
        .split
        .strip_prefix(&format!("{name}/"))
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|p| *p < partitions)
        .ok_or_else(|| {
            foreign_split(
                uid,
                split,
                &format!("`{name}/0` to `{name}/{}`", partitions - 1),
            )
        })
}

pub(crate) fn foreign_split(uid: &str, split: &SourceSplit, has: &str) -> Error {
    Error::Restore {
        message: format!(
            "source `{uid}`: the snapshot holds split `{}`, which this source does not have (it has {has}); was it taken of another job?",
            split.split
        ),
    }
}

/// A broker connector's end of its connection, for its errors and the
/// bound on its requests: who it is (role and uid), the broker's kind and
/// address, and the request timeout.
pub(crate) struct Endpoint {
    /// `source` or `sink`.
    pub(crate) role: &'static str,
    /// The vertex's uid.
    pub(crate) uid: String,
    /// `NATS`, `Kafka`: how errors name the broker.
    kind: &'static str,
    /// The broker's address, as the job file gives it.
    pub(crate) address: String,
    /// How long a request may take.
    pub(crate) timeout: Duration,
}

impl Endpoint {
    /// The endpoint of `role` `uid` to the `kind` broker at `address`;
    /// requests time out after `timeout_ms` ([`DEFAULT_TIMEOUT`] if none).
    pub(crate) fn new(
        role: &'static str,
        uid: &str,
        kind: &'static str,
        address: &str,
        timeout_ms: Option<u64>,
    ) -> Self {
        Self {
            role,
            uid: uid.to_owned(),
            kind,
            address: address.to_owned(),
            timeout: timeout_ms.map_or(DEFAULT_TIMEOUT, Duration::from_millis),
        }
    }

    /// A failure talking to the broker, which a restart may get past.
    pub(crate) fn broker(&self, what: impl std::fmt::Display) -> Error {
        Error::Broker {
            role: self.role,
            uid: self.uid.clone(),
            message: format!("{} at {}: {what}", self.kind, self.address),
        }
    }

    /// What the broker or the configuration refuses, which a retry would
    /// meet again: it ends the job.
    pub(crate) fn refused(&self, what: impl std::fmt::Display) -> Error {
        Error::Connector {
            role: self.role,
            uid: self.uid.clone(),
            message: what.to_string(),
        }
    }
}

/// A generator's pace: `rate` records per second (none: as fast as
/// possible), counted from the position and the moment it (re)started, so
/// a restored or upgraded source resumes without waiting first.
#[derive(Debug, Clone)]
pub(crate) struct Pacing {
    rate: Option<f64>,
    from: u64,
    started: Instant,
}

impl Pacing {
    /// `rate` records per second from `position`, now.
    pub(crate) fn new(rate: Option<f64>, position: u64) -> Self {
        Self {
            rate,
            from: position,
            started: Instant::now(),
        }
    }

    /// How many of `n` records the next batch may hold: at most 100 ms
    /// worth, so a slow source still hands out records, and takes
    /// checkpoint triggers, several times a second.
    pub(crate) fn batch_len(&self, n: u64) -> u64 {
        match self.rate {
            Some(rate) => n.min(((rate / 10.0).ceil() as u64).max(1)),
            None => n,
        }
    }

    /// How long until the records before `position` are due: a batch
    /// goes once they are, so the first goes at once.
    pub(crate) fn pause(&self, position: u64) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        let due = Duration::from_secs_f64(position.saturating_sub(self.from) as f64 / rate);
        due.saturating_sub(self.started.elapsed())
    }
}

/// The splits of a generator with one stream per subtask it first ran
/// with: `i/n` for `i` in `0..parallelism`, at the start.
pub(crate) fn stream_splits(parallelism: u32) -> Vec<SourceSplit> {
    (0..parallelism)
        .map(|i| SourceSplit::numbered(i, parallelism, 0, false))
        .collect()
}

/// The stream `(i, n)` a generator's split `i/n` names.
///
/// # Errors
/// [`Error::Restore`] for a split of another kind.
pub(crate) fn stream_of(uid: &str, split: &SourceSplit) -> Result<(u32, u32), Error> {
    split
        .number()
        .ok_or_else(|| foreign_split(uid, split, "streams `<i>/<n>`"))
}

/// One split of a subtask's source: its reader while unfinished.
struct OpenSplit {
    split: SourceSplit,
    reader: Option<Box<dyn Source>>,
}

/// A source subtask: the splits dealt to it, read in turn, and their
/// positions for a checkpoint.
pub struct SourceSplits {
    splits: Vec<OpenSplit>,
    /// Where the next batch is looked for first (round robin).
    next: usize,
    /// Every split had ended before the snapshot the subtask was restored
    /// from (or it has none).
    ended_at_start: bool,
    /// The split the last batch came from.
    last: Option<usize>,
}

impl SourceSplits {
    /// Opens `splits` (finished ones stay closed).
    ///
    /// # Errors
    /// As [`SplitKind::open`].
    pub fn open(kind: &dyn SplitKind, splits: Vec<SourceSplit>) -> Result<Self, Error> {
        let splits = splits
            .into_iter()
            .map(|split| {
                let reader = if split.finished {
                    None
                } else {
                    Some(kind.open(&split)?)
                };
                Ok(OpenSplit { split, reader })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let ended_at_start = splits.iter().all(|s| s.reader.is_none());
        Ok(Self {
            splits,
            next: 0,
            ended_at_start,
            last: None,
        })
    }

    /// Whether every split had ended before the run started (a subtask
    /// restored as ended, or dealt no split).
    pub fn ended_at_start(&self) -> bool {
        self.ended_at_start
    }

    /// How long until some unfinished split has a batch due.
    pub fn pause(&self) -> Duration {
        self.splits
            .iter()
            .filter_map(|s| s.reader.as_ref())
            .map(|r| r.pause())
            .min()
            .unwrap_or(Duration::ZERO)
    }

    /// Appends up to `max` records of the next split with a batch due
    /// (round robin among those due). Returns `false` once every split
    /// ended.
    ///
    /// # Errors
    /// [`Error::Io`] if reading fails.
    pub async fn next_batch(&mut self, out: &mut BatchWriter, max: usize) -> Result<bool, Error> {
        let n = self.splits.len();
        let due = (0..n).map(|k| (self.next + k) % n).find(|&i| {
            self.splits[i]
                .reader
                .as_ref()
                .is_some_and(|r| r.pause().is_zero())
        });
        let pick = due.or_else(|| (0..n).find(|&i| self.splits[i].reader.is_some()));
        let Some(i) = pick else {
            return Ok(false);
        };
        self.next = (i + 1) % n;
        self.last = Some(i);
        let split = &mut self.splits[i];
        let reader = split.reader.as_mut().expect("picked an open split");
        let more = reader.next_batch(out, max).await?;
        split.split.position = reader.offset();
        if !more {
            split.split.finished = true;
            split.reader = None;
        }
        Ok(self.splits.iter().any(|s| s.reader.is_some()))
    }

    /// How many splits the subtask has (ended ones included).
    pub fn len(&self) -> usize {
        self.splits.len()
    }

    /// Whether the subtask has no split.
    pub fn is_empty(&self) -> bool {
        self.splits.is_empty()
    }

    /// The split the last batch came from (an index below
    /// [`SourceSplits::len`]), and whether it has ended.
    pub fn last_read(&self) -> Option<(usize, bool)> {
        self.last.map(|i| (i, self.splits[i].reader.is_none()))
    }

    /// Every split with its position, for a checkpoint.
    pub fn positions(&self) -> Vec<SourceSplit> {
        self.splits.iter().map(|s| s.split.clone()).collect()
    }

    /// Marks every split ended and closes its reader (the subtask ended
    /// its input early, for a drain).
    pub fn finish(&mut self) {
        for s in &mut self.splits {
            s.split.finished = true;
            s.reader = None;
        }
    }
}

/// A sink subtask.
///
/// Its methods are futures, so a sink that waits on the network (a broker's
/// acknowledgement) gives its worker up meanwhile; each must resolve within
/// a bounded time. A sink whose writes are local implements [`LocalSink`].
pub trait Sink: Send {
    /// Writes every record of a packed batch.
    ///
    /// # Errors
    /// [`Error::Io`] if writing fails; [`Error::BadRecord`] for a malformed
    /// batch.
    fn write_batch<'a>(&'a mut self, batch: &'a [u8]) -> BoxFuture<'a, Result<(), Error>>;

    /// The first phase of a checkpoint's commit: makes everything written
    /// so far durable (not yet visible) and records in `snapshot` what a
    /// restore needs to finish or discard it (the sink's section, or its
    /// own lists in [`Namespace::Sink`](weir_format::snapshot::Namespace)).
    ///
    /// # Errors
    /// [`Error::Io`] if flushing or renaming fails.
    fn pre_commit<'a>(
        &'a mut self,
        id: CheckpointId,
        snapshot: &'a mut SubtaskSnapshot,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// The second phase: checkpoint `id` completed, so everything
    /// pre-committed up to it becomes visible. Idempotent.
    ///
    /// # Errors
    /// [`Error::Io`] if renaming or publishing fails.
    fn commit(&mut self, id: CheckpointId) -> BoxFuture<'_, Result<(), Error>>;

    /// Flushes buffered output (without committing it).
    ///
    /// # Errors
    /// [`Error::Io`] if flushing fails.
    fn flush(&mut self) -> BoxFuture<'_, Result<(), Error>>;

    /// End of input: flushes and commits everything written (with
    /// checkpoints, the final checkpoint already committed it all).
    ///
    /// # Errors
    /// [`Error::Io`] if flushing fails.
    fn finish(&mut self) -> BoxFuture<'_, Result<(), Error>>;

    /// End of input after a stop with savepoint (suspend): discards what
    /// was written since the last pre-commit, commits nothing more. What
    /// the savepoint pre-committed was committed by its completion.
    ///
    /// # Errors
    /// [`Error::Io`] if discarding fails.
    fn abandon(&mut self) -> BoxFuture<'_, Result<(), Error>>;
}

/// A sink whose writes are local (a file, standard output): it never waits
/// on the network, so it is a [`Sink`] whose futures are ready at once.
/// The methods are [`Sink`]'s.
#[allow(missing_docs)]
pub trait LocalSink: Send {
    fn write_batch(&mut self, batch: &[u8]) -> Result<(), Error>;

    /// As [`Sink::pre_commit`]; by default flushes and records nothing (a
    /// sink without transactions).
    fn pre_commit(
        &mut self,
        id: CheckpointId,
        snapshot: &mut SubtaskSnapshot,
    ) -> Result<(), Error> {
        let _ = (id, snapshot);
        self.flush()
    }

    fn commit(&mut self, id: CheckpointId) -> Result<(), Error> {
        let _ = id;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error>;

    fn finish(&mut self) -> Result<(), Error>;

    fn abandon(&mut self) -> Result<(), Error> {
        self.flush()
    }
}

impl<T: LocalSink> Sink for T {
    fn write_batch<'a>(&'a mut self, batch: &'a [u8]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(std::future::ready(LocalSink::write_batch(self, batch)))
    }

    fn pre_commit<'a>(
        &'a mut self,
        id: CheckpointId,
        snapshot: &'a mut SubtaskSnapshot,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(std::future::ready(LocalSink::pre_commit(
            self, id, snapshot,
        )))
    }

    fn commit(&mut self, id: CheckpointId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(std::future::ready(LocalSink::commit(self, id)))
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(std::future::ready(LocalSink::flush(self)))
    }

    fn finish(&mut self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(std::future::ready(LocalSink::finish(self)))
    }

    fn abandon(&mut self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(std::future::ready(LocalSink::abandon(self)))
    }
}

pub(crate) fn bad_batch(uid: &str, e: weir_format::DecodeError) -> Error {
    Error::BadRecord {
        uid: uid.to_owned(),
        message: format!("malformed batch: {e}"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    pub(crate) use futures::executor::block_on;
    use weir_format::BatchReader;

    use super::*;
    use crate::job::DatagenSpec;

    /// Every record `next` produces, batch by batch, until it says the
    /// input ended.
    fn drain_with(mut next: impl FnMut(&mut BatchWriter) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let mut w = BatchWriter::default();
            let more = next(&mut w);
            out.extend(
                BatchReader::new(w.as_bytes())
                    .map(|r| String::from_utf8(r.unwrap().value.to_vec()).unwrap()),
            );
            if !more {
                return out;
            }
        }
    }

    /// Every record of one split's reader.
    pub(crate) fn drain(src: &mut dyn Source, max: usize) -> Vec<String> {
        drain_with(|w| block_on(src.next_batch(w, max)).unwrap())
    }

    /// Every record of a split source subtask.
    pub(crate) fn drain_splits(src: &mut SourceSplits, max: usize) -> Vec<String> {
        drain_with(|w| block_on(src.next_batch(w, max)).unwrap())
    }

    #[test]
    fn finished_splits_stay_closed_and_no_split_means_ended() {
        let kind = DatagenSplits {
            uid: "gen".into(),
            spec: DatagenSpec {
                seed: 1,
                records: Some(4),
                rate: None,
                vocabulary: 5,
                words_per_record: 1,
            },
        };
        let mut src = SourceSplits::open(&kind, kind.initial(1)).unwrap();
        assert!(!src.ended_at_start());
        assert_eq!(drain_splits(&mut src, 10).len(), 4);
        let ended = src.positions();
        assert_eq!(ended, [SourceSplit::numbered(0, 1, 4, true)]);
        let again = SourceSplits::open(&kind, ended).unwrap();
        assert!(again.ended_at_start());
        assert!(
            SourceSplits::open(&kind, Vec::new())
                .unwrap()
                .ended_at_start()
        );
        // A split of another source is refused, naming it.
        let file = FileSplits {
            uid: "lines".into(),
            path: "/nonexistent".into(),
        };
        let Err(e) = SourceSplits::open(&file, kind.initial(2)) else {
            panic!("a datagen split opened as a file split");
        };
        assert!(e.to_string().contains("split `0/2`"), "{e}");
    }
}
