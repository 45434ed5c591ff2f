//! Built-in sources and sinks.
//!
//! A source's input is divided into splits, each read by a [`Source`] that
//! reports a replay position ([`Source::offset`]): the `file` source's one
//! split is its file (the byte offset of the next line); the `datagen`
//! source has one stream per subtask it first ran with (the count of
//! records emitted; the stream is a pure function of seed, stream and
//! position). A subtask reads the splits dealt to it ([`SourceSplits`]) and
//! a checkpoint records each split's position, so a restore resumes them
//! at any parallelism.
//!
//! Sinks take part in checkpoints by two-phase commit
//! ([`Sink::pre_commit`], [`Sink::commit`]): the `file` sink writes each
//! checkpoint interval to a hidden part file, renames it to a pending name
//! on the snapshot and to its visible name once the checkpoint completed,
//! so its visible output is exactly-once.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use weir_format::{BatchReader, BatchWriter, RecordRef};

use crate::checkpoint::CheckpointId;
use crate::checkpoint::format::SinkSnapshot;
use crate::error::Error;
use crate::job::DatagenSpec;
use weir_format::snapshot::SourceSplit;

/// A reader of one split: produces batches until the split ends.
pub trait Source: Send {
    /// Appends up to `max` records to `out`.
    ///
    /// Returns `false` once the input is exhausted (`out` may still hold the
    /// last records).
    ///
    /// # Errors
    /// [`Error::Io`] if reading fails.
    fn next_batch(&mut self, out: &mut BatchWriter, max: usize) -> Result<bool, Error>;

    /// How long to wait before the next [`Source::next_batch`] (a paced
    /// source); the caller waits without holding a worker.
    fn pause(&self) -> Duration {
        Duration::ZERO
    }

    /// The position to resume from to replay everything not yet returned.
    fn offset(&self) -> u64;
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

/// The `file` source: one split, `0/1`, the whole file.
pub struct FileSplits {
    /// The vertex's uid, for messages.
    pub uid: String,
    /// The file.
    pub path: PathBuf,
}

impl SplitKind for FileSplits {
    fn initial(&self, _: u32) -> Vec<SourceSplit> {
        vec![SourceSplit::numbered(0, 1, 0, false)]
    }

    fn open(&self, split: &SourceSplit) -> Result<Box<dyn Source>, Error> {
        if split.number() != Some((0, 1)) {
            return Err(foreign_split(&self.uid, split, "its one split `0/1`"));
        }
        Ok(Box::new(FileSource::open(
            &self.uid,
            &self.path,
            split.position,
        )?))
    }
}

/// The `datagen` source: as many streams as subtasks it first ran with,
/// `i/n`, each with its share of the records and the rate.
pub struct DatagenSplits {
    /// The vertex's uid, for messages.
    pub uid: String,
    /// What to generate.
    pub spec: DatagenSpec,
}

impl SplitKind for DatagenSplits {
    fn initial(&self, parallelism: u32) -> Vec<SourceSplit> {
        (0..parallelism)
            .map(|i| SourceSplit::numbered(i, parallelism, 0, false))
            .collect()
    }

    fn open(&self, split: &SourceSplit) -> Result<Box<dyn Source>, Error> {
        let Some((index, count)) = split.number() else {
            return Err(foreign_split(&self.uid, split, "streams `<i>/<n>`"));
        };
        Ok(Box::new(DatagenSource::resume(
            &self.spec,
            index,
            count,
            split.position,
        )))
    }
}

fn foreign_split(uid: &str, split: &SourceSplit, has: &str) -> Error {
    Error::Restore {
        message: format!(
            "source `{uid}`: the snapshot holds split `{}`, which this source does not have (it has {has}); was it taken of another job?",
            split.split
        ),
    }
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
    pub fn next_batch(&mut self, out: &mut BatchWriter, max: usize) -> Result<bool, Error> {
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
        let split = &mut self.splits[i];
        let reader = split.reader.as_mut().expect("picked an open split");
        let more = reader.next_batch(out, max)?;
        split.split.position = reader.offset();
        if !more {
            split.split.finished = true;
            split.reader = None;
        }
        Ok(self.splits.iter().any(|s| s.reader.is_some()))
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

/// Lines of a text file, one record per line (without the line ending).
pub struct FileSource {
    uid: String,
    path: PathBuf,
    reader: BufReader<File>,
    offset: u64,
    line: Vec<u8>,
}

impl FileSource {
    /// Opens `path` and seeks to byte `offset`, which must start a line.
    ///
    /// # Errors
    /// [`Error::Io`] naming the source and file.
    pub fn open(uid: &str, path: &Path, offset: u64) -> Result<Self, Error> {
        let io = |source| Error::Io {
            role: "source",
            uid: uid.to_owned(),
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let source = Self {
            uid: uid.to_owned(),
            path: path.to_owned(),
            reader: BufReader::with_capacity(256 * 1024, file),
            offset,
            line: Vec::new(),
        };
        source.check_size()?;
        Ok(source)
    }

    /// Fails if the file is now shorter than the offset read to: seeking
    /// or reading past its end would silently read nothing.
    fn check_size(&self) -> Result<(), Error> {
        let size = self
            .reader
            .get_ref()
            .metadata()
            .map_err(|source| Error::Io {
                role: "source",
                uid: self.uid.clone(),
                path: self.path.clone(),
                source,
            })?
            .len();
        if size < self.offset {
            return Err(Error::SourceShrank {
                uid: self.uid.clone(),
                path: self.path.clone(),
                offset: self.offset,
                size,
            });
        }
        Ok(())
    }
}

impl Source for FileSource {
    fn next_batch(&mut self, out: &mut BatchWriter, max: usize) -> Result<bool, Error> {
        for _ in 0..max {
            self.line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.line)
                .map_err(|source| Error::Io {
                    role: "source",
                    uid: self.uid.clone(),
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                // The end, unless the file was cut short under the reader.
                self.check_size()?;
                return Ok(false);
            }
            self.offset += n as u64;
            let mut line = self.line.as_slice();
            if let Some(rest) = line.strip_suffix(b"\n") {
                line = rest.strip_suffix(b"\r").unwrap_or(rest);
            }
            out.push(None, line, None);
        }
        Ok(true)
    }

    fn offset(&self) -> u64 {
        self.offset
    }
}

/// Deterministic lines of words `w<n>`, `n` uniform in `0..vocabulary`.
pub struct DatagenSource {
    spec: DatagenSpec,
    rng: Pcg64Mcg,
    /// Records this subtask emits in all, or unbounded.
    quota: Option<u64>,
    emitted: u64,
    /// Records per second for this subtask.
    rate: Option<f64>,
    /// Pacing counts from here: the position and time the source started.
    paced_from: u64,
    started: Instant,
    line: String,
}

impl DatagenSource {
    /// Subtask `index` of `parallelism`: its share of the records and the
    /// rate, from a stream seeded by the seed and the subtask index.
    pub fn new(spec: &DatagenSpec, index: u32, parallelism: u32) -> Self {
        let quota = spec.records.map(|total| {
            let p = u64::from(parallelism);
            total / p + u64::from(u64::from(index) < total % p)
        });
        Self {
            rng: Pcg64Mcg::seed_from_u64(spec.seed ^ (u64::from(index) << 32 | 0x5eed)),
            spec: spec.clone(),
            quota,
            emitted: 0,
            rate: spec.rate.map(|r| r / f64::from(parallelism)),
            paced_from: 0,
            started: Instant::now(),
            line: String::new(),
        }
    }

    /// As [`DatagenSource::new`], resuming at `position` (a checkpointed
    /// [`Source::offset`]): the records from there on are the same as an
    /// uninterrupted source's.
    pub fn resume(spec: &DatagenSpec, index: u32, parallelism: u32, position: u64) -> Self {
        let mut source = Self::new(spec, index, parallelism);
        let position = source.quota.map_or(position, |q| position.min(q));
        // The stream is a pure function of the position: replay the draws.
        let draws = position * u64::from(spec.words_per_record);
        for _ in 0..draws {
            source.rng.random_range(0..spec.vocabulary);
        }
        source.emitted = position;
        source.paced_from = position;
        source
    }
}

impl DatagenSource {
    /// How many records the next batch of up to `max` holds.
    fn batch_len(&self, max: usize) -> u64 {
        let n = match self.quota {
            Some(q) => (q - self.emitted).min(max as u64),
            None => max as u64,
        };
        match self.rate {
            // At most 100 ms worth of records per batch: a slow source
            // still hands out records, and takes checkpoint triggers,
            // several times a second instead of once per full batch.
            Some(rate) => n.min(((rate / 10.0).ceil() as u64).max(1)),
            None => n,
        }
    }
}

impl Source for DatagenSource {
    fn pause(&self) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        // Pace: a batch goes once the records before it were due at `rate`
        // records per second, so the first goes at once (a job restored
        // or upgraded resumes without waiting a batch's worth of time).
        let due = Duration::from_secs_f64((self.emitted - self.paced_from) as f64 / rate);
        due.saturating_sub(self.started.elapsed())
    }

    fn next_batch(&mut self, out: &mut BatchWriter, max: usize) -> Result<bool, Error> {
        use std::fmt::Write as _;
        let n = self.batch_len(max);
        for _ in 0..n {
            self.line.clear();
            for w in 0..self.spec.words_per_record {
                if w > 0 {
                    self.line.push(' ');
                }
                let word = self.rng.random_range(0..self.spec.vocabulary);
                write!(self.line, "w{word}").expect("invariant: writing to a String cannot fail");
            }
            out.push(None, self.line.as_bytes(), None);
        }
        self.emitted += n;
        Ok(self.quota.is_none_or(|q| self.emitted < q))
    }

    fn offset(&self) -> u64 {
        self.emitted
    }
}

/// A sink subtask.
pub trait Sink: Send {
    /// Writes every record of a packed batch.
    ///
    /// # Errors
    /// [`Error::Io`] if writing fails; [`Error::BadRecord`] for a malformed
    /// batch.
    fn write_batch(&mut self, batch: &[u8]) -> Result<(), Error>;

    /// The first phase of a checkpoint's commit: makes everything written
    /// so far durable (not yet visible) and returns what a restore needs to
    /// finish or discard it; `None` for a sink without transactions.
    ///
    /// # Errors
    /// [`Error::Io`] if flushing or renaming fails.
    fn pre_commit(&mut self, id: CheckpointId) -> Result<Option<SinkSnapshot>, Error> {
        let _ = id;
        self.flush().map(|()| None)
    }

    /// The second phase: checkpoint `id` completed, so everything
    /// pre-committed up to it becomes visible. Idempotent.
    ///
    /// # Errors
    /// [`Error::Io`] if renaming fails.
    fn commit(&mut self, id: CheckpointId) -> Result<(), Error> {
        let _ = id;
        Ok(())
    }

    /// Flushes buffered output (without committing it).
    ///
    /// # Errors
    /// [`Error::Io`] if flushing fails.
    fn flush(&mut self) -> Result<(), Error>;

    /// End of input: flushes and commits everything written (with
    /// checkpoints, the final checkpoint already committed it all).
    ///
    /// # Errors
    /// [`Error::Io`] if flushing fails.
    fn finish(&mut self) -> Result<(), Error>;

    /// End of input after a stop with savepoint (suspend): discards what
    /// was written since the last pre-commit, commits nothing more. What
    /// the savepoint pre-committed was committed by its completion.
    ///
    /// # Errors
    /// [`Error::Io`] if discarding fails.
    fn abandon(&mut self) -> Result<(), Error> {
        self.flush()
    }
}

/// Writes `key<TAB>value` (or `value` for records without a key) per line,
/// bytes shown as UTF-8 with invalid sequences replaced.
fn write_line(w: &mut impl Write, r: &RecordRef<'_>) -> std::io::Result<()> {
    if let Some(key) = r.key {
        w.write_all(String::from_utf8_lossy(key).as_bytes())?;
        w.write_all(b"\t")?;
    }
    w.write_all(String::from_utf8_lossy(r.value).as_bytes())?;
    w.write_all(b"\n")
}

/// Lines on a writer: standard output or a file.
pub struct LineSink<W: Write + Send> {
    uid: String,
    path: PathBuf,
    out: W,
}

fn bad_batch(uid: &str, e: weir_format::DecodeError) -> Error {
    Error::BadRecord {
        uid: uid.to_owned(),
        message: format!("malformed batch: {e}"),
    }
}

impl<W: Write + Send> Sink for LineSink<W> {
    fn write_batch(&mut self, batch: &[u8]) -> Result<(), Error> {
        for r in BatchReader::new(batch) {
            let r = r.map_err(|e| bad_batch(&self.uid, e))?;
            write_line(&mut self.out, &r).map_err(|source| Error::Io {
                role: "sink",
                uid: self.uid.clone(),
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.out.flush().map_err(|source| Error::Io {
            role: "sink",
            uid: self.uid.clone(),
            path: self.path.clone(),
            source,
        })
    }

    fn finish(&mut self) -> Result<(), Error> {
        self.flush()
    }
}

/// A sink writing to standard output.
pub fn stdout_sink(uid: &str) -> LineSink<BufWriter<std::io::Stdout>> {
    LineSink {
        uid: uid.to_owned(),
        path: PathBuf::from("<stdout>"),
        out: BufWriter::new(std::io::stdout()),
    }
}

/// The transactional `file` sink of one subtask.
///
/// Part files: `.part-<subtask>-<n>.inprogress` while written,
/// `.part-<subtask>-<n>.pending` once pre-committed by a checkpoint, and
/// `part-<subtask>-<n>` (visible) once that checkpoint completed. Hidden
/// files are never output: a reader of the directory sees exactly the
/// records of completed checkpoints.
pub struct FileSink {
    uid: String,
    dir: PathBuf,
    subtask: u32,
    /// The part being written: its number, path and writer.
    current: Option<(u64, PathBuf, BufWriter<File>)>,
    next_part: u64,
    /// Pre-committed parts not yet committed, with the checkpoint that
    /// pre-committed them.
    pending: Vec<(CheckpointId, String)>,
}

impl FileSink {
    /// Opens subtask `subtask`'s sink over `dir`.
    ///
    /// Fresh (`restored` is `None`): removes every part file this subtask
    /// left in `dir` (a job started from scratch replaces its output).
    /// Restored: commits the parts the restored checkpoint pre-committed
    /// (that checkpoint completed) and removes this subtask's hidden parts
    /// (never committed). A visible part is committed output and is never
    /// removed: one numbered past the checkpoint's position (the job went
    /// on after the snapshot restored now) is kept, with a warning, and
    /// new parts are numbered after it.
    ///
    /// # Errors
    /// [`Error::Io`] naming the directory or part file.
    pub fn open(
        uid: &str,
        dir: &Path,
        subtask: u32,
        restored: Option<&SinkSnapshot>,
    ) -> Result<Self, Error> {
        let mut sink = Self {
            uid: uid.to_owned(),
            dir: dir.to_owned(),
            subtask,
            current: None,
            next_part: restored.map_or(0, |r| r.next_part),
            pending: Vec::new(),
        };
        std::fs::create_dir_all(dir).map_err(|e| sink.io(dir, e))?;
        let keep: Vec<&str> = restored
            .map(|r| r.pending.iter().map(String::as_str).collect())
            .unwrap_or_default();
        for name in &keep {
            sink.publish(name)?;
        }
        let entries = std::fs::read_dir(dir).map_err(|e| sink.io(dir, e))?;
        let mut later = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| sink.io(dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((hidden, part)) = sink.parse_part(name) else {
                continue;
            };
            if hidden || restored.is_none() {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(|e| sink.io(&path, e))?;
            } else if part >= sink.next_part {
                later.push((part, entry.path()));
            }
        }
        if let Some(last) = later.iter().map(|(n, _)| *n).max() {
            later.sort();
            let names: Vec<String> = later.iter().map(|(_, p)| p.display().to_string()).collect();
            tracing::warn!(
                "sink `{uid}`: {} committed after the snapshot restored now {} kept; records after the snapshot may appear twice",
                names.join(", "),
                if names.len() == 1 { "is" } else { "are" }
            );
            sink.next_part = last + 1;
        }
        Ok(sink)
    }

    fn io(&self, path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            role: "sink",
            uid: self.uid.clone(),
            path: path.to_owned(),
            source,
        }
    }

    /// `(hidden, part number)` if `name` is one of this subtask's parts.
    fn parse_part(&self, name: &str) -> Option<(bool, u64)> {
        let (hidden, rest) = match name.strip_prefix('.') {
            Some(rest) => (true, rest),
            None => (false, name),
        };
        let rest = rest.strip_prefix("part-")?;
        let rest = rest.strip_prefix(&format!("{}-", self.subtask))?;
        let number = match rest.split_once('.') {
            Some((n, "inprogress" | "pending")) if hidden => n,
            None if !hidden => rest,
            _ => return None,
        };
        number.parse().ok().map(|n| (hidden, n))
    }

    /// Renames pending part `name` to its visible name, unless that was
    /// done before (commits are idempotent).
    fn publish(&self, name: &str) -> Result<(), Error> {
        let pending = self.dir.join(name);
        let visible = self
            .dir
            .join(name.trim_start_matches('.').trim_end_matches(".pending"));
        match std::fs::rename(&pending, &visible) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && visible.exists() => Ok(()),
            Err(e) => Err(self.io(&pending, e)),
        }
    }

    fn writer(&mut self) -> Result<&mut BufWriter<File>, Error> {
        if self.current.is_none() {
            let n = self.next_part;
            let path = self
                .dir
                .join(format!(".part-{}-{n}.inprogress", self.subtask));
            let file = File::create(&path).map_err(|e| self.io(&path, e))?;
            self.next_part += 1;
            self.current = Some((n, path, BufWriter::with_capacity(256 * 1024, file)));
        }
        Ok(&mut self
            .current
            .as_mut()
            .expect("invariant: a part is open after opening one")
            .2)
    }

    /// Closes the current part durably under its pending name.
    fn close_part(&mut self) -> Result<Option<String>, Error> {
        let Some((n, path, mut w)) = self.current.take() else {
            return Ok(None);
        };
        w.flush().map_err(|e| self.io(&path, e))?;
        let file = w.into_inner().map_err(|e| self.io(&path, e.into_error()))?;
        file.sync_data().map_err(|e| self.io(&path, e))?;
        let name = format!(".part-{}-{n}.pending", self.subtask);
        std::fs::rename(&path, self.dir.join(&name)).map_err(|e| self.io(&path, e))?;
        Ok(Some(name))
    }
}

impl Sink for FileSink {
    fn write_batch(&mut self, batch: &[u8]) -> Result<(), Error> {
        self.writer()?;
        // Disjoint fields: the uid for errors, the open part to write.
        let Self { uid, current, .. } = self;
        let (_, path, out) = current.as_mut().expect("invariant: writer() opened a part");
        for r in BatchReader::new(batch) {
            let r = r.map_err(|e| bad_batch(uid, e))?;
            write_line(out, &r).map_err(|source| Error::Io {
                role: "sink",
                uid: uid.clone(),
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn pre_commit(&mut self, id: CheckpointId) -> Result<Option<SinkSnapshot>, Error> {
        if let Some(name) = self.close_part()? {
            self.pending.push((id, name));
        }
        Ok(Some(SinkSnapshot {
            pending: self.pending.iter().map(|(_, n)| n.clone()).collect(),
            next_part: self.next_part,
        }))
    }

    fn commit(&mut self, id: CheckpointId) -> Result<(), Error> {
        while let Some((cid, name)) = self.pending.first() {
            if *cid > id {
                break;
            }
            self.publish(name)?;
            self.pending.remove(0);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        match &mut self.current {
            Some((_, path, w)) => {
                let path = path.clone();
                w.flush().map_err(|e| self.io(&path, e))
            }
            None => Ok(()),
        }
    }

    fn finish(&mut self) -> Result<(), Error> {
        if let Some(name) = self.close_part()? {
            self.publish(&name)?;
        }
        for (_, name) in std::mem::take(&mut self.pending) {
            self.publish(&name)?;
        }
        Ok(())
    }

    fn abandon(&mut self) -> Result<(), Error> {
        if let Some((_, path, w)) = self.current.take() {
            drop(w);
            std::fs::remove_file(&path).map_err(|e| self.io(&path, e))?;
        }
        Ok(())
    }
}

/// Removes every part file (visible or not) of a `file` sink's directory:
/// a job started from scratch replaces its output, whatever parallelism
/// wrote it before.
///
/// # Errors
/// [`Error::Io`] naming the directory or file.
pub fn clear_file_sink(uid: &str, dir: &Path) -> Result<(), Error> {
    let io = |path: &Path, source| Error::Io {
        role: "sink",
        uid: uid.to_owned(),
        path: path.to_owned(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io(dir, e))?;
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.starts_with("part-") || n.starts_with(".part-"))
        {
            std::fs::remove_file(entry.path()).map_err(|e| io(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// Discards records (the runtime counts them).
pub struct BlackholeSink;

impl Sink for BlackholeSink {
    fn write_batch(&mut self, _: &[u8]) -> Result<(), Error> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), Error> {
        Ok(())
    }
    fn finish(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(src: &mut dyn Source, max: usize) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let mut w = BatchWriter::default();
            let more = src.next_batch(&mut w, max).unwrap();
            out.extend(
                BatchReader::new(w.as_bytes())
                    .map(|r| String::from_utf8(r.unwrap().value.to_vec()).unwrap()),
            );
            if !more {
                return out;
            }
        }
    }

    #[test]
    fn file_source_reads_lines_and_resumes_from_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, "one\r\ntwo\n\nthree").unwrap();
        let mut src = FileSource::open("s", &path, 0).unwrap();
        let mut w = BatchWriter::default();
        assert!(src.next_batch(&mut w, 1).unwrap());
        let resume = src.offset();
        assert_eq!(resume, 5);
        let mut rest = FileSource::open("s", &path, resume).unwrap();
        assert_eq!(drain(&mut rest, 2), ["two", "", "three"]);
        assert_eq!(
            drain(&mut FileSource::open("s", &path, 0).unwrap(), 10),
            ["one", "two", "", "three"]
        );
    }

    /// Every record of a split source subtask, batch by batch.
    fn drain_splits(src: &mut SourceSplits, max: usize) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let mut w = BatchWriter::default();
            let more = src.next_batch(&mut w, max).unwrap();
            out.extend(
                BatchReader::new(w.as_bytes())
                    .map(|r| String::from_utf8(r.unwrap().value.to_vec()).unwrap()),
            );
            if !more {
                return out;
            }
        }
    }

    #[test]
    fn datagen_splits_restore_at_another_parallelism_with_the_same_records() {
        let kind = DatagenSplits {
            uid: "gen".into(),
            spec: DatagenSpec {
                seed: 9,
                records: Some(60),
                rate: None,
                vocabulary: 50,
                words_per_record: 2,
            },
        };
        let all = |kind: &DatagenSplits, splits: Vec<SourceSplit>| {
            let mut src = SourceSplits::open(kind, splits).unwrap();
            let mut out = drain_splits(&mut src, 4);
            out.sort();
            out
        };
        let whole = all(&kind, kind.initial(3));
        assert_eq!(whole.len(), 60);
        // Three subtasks read a little, then one subtask resumes all three
        // splits where they were: together, every record once.
        let mut first = Vec::new();
        let mut resumed = Vec::new();
        for split in kind.initial(3) {
            let mut src = SourceSplits::open(&kind, vec![split]).unwrap();
            let mut w = BatchWriter::default();
            src.next_batch(&mut w, 3).unwrap();
            first.extend(
                BatchReader::new(w.as_bytes())
                    .map(|r| String::from_utf8(r.unwrap().value.to_vec()).unwrap()),
            );
            resumed.extend(src.positions());
        }
        assert!(resumed.iter().all(|s| s.position == 3 && !s.finished));
        let mut together = first;
        together.extend(all(&kind, resumed));
        together.sort();
        assert_eq!(together, whole);
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

    #[test]
    fn a_file_shorter_than_its_offset_is_an_error_naming_file_offset_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, "one\ntwo\n").unwrap();
        // Restored past the end of a file that shrank.
        let Err(e) = FileSource::open("lines", &path, 20) else {
            panic!("opened past the end")
        };
        assert_eq!(e.kind(), crate::ErrorKind::User);
        let msg = e.to_string();
        assert!(
            msg.contains("`lines`") && msg.contains("in.txt") && msg.contains("8 bytes"),
            "{msg}"
        );
        assert!(msg.contains("offset 20"), "{msg}");
        // Truncated under a running source.
        let mut src = FileSource::open("lines", &path, 0).unwrap();
        let mut w = BatchWriter::default();
        assert!(src.next_batch(&mut w, 1).unwrap());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(2)
            .unwrap();
        let e = loop {
            match src.next_batch(&mut w, 1) {
                Ok(true) => {}
                Ok(false) => panic!("a truncated input ended silently"),
                Err(e) => break e,
            }
        };
        assert!(e.to_string().contains("2 bytes"), "{e}");
        assert!(!e.restartable(crate::job::OperatorErrors::Restart));
    }

    #[test]
    fn datagen_is_deterministic_and_splits_the_count() {
        let spec = DatagenSpec {
            seed: 7,
            records: Some(10),
            rate: None,
            vocabulary: 5,
            words_per_record: 2,
        };
        let a = drain(&mut DatagenSource::new(&spec, 0, 3), 3);
        let b = drain(&mut DatagenSource::new(&spec, 0, 3), 2);
        assert_eq!(a, b);
        assert_eq!(a.len(), 4);
        assert_eq!(drain(&mut DatagenSource::new(&spec, 2, 3), 100).len(), 3);
        for line in &a {
            let words: Vec<_> = line.split(' ').collect();
            assert_eq!(words.len(), 2);
            assert!(words.iter().all(|w| w[1..].parse::<u64>().unwrap() < 5));
        }
    }

    #[test]
    fn datagen_resumes_exactly_where_it_stopped() {
        let spec = DatagenSpec {
            seed: 3,
            records: Some(50),
            rate: None,
            vocabulary: 100,
            words_per_record: 3,
        };
        let all = drain(&mut DatagenSource::new(&spec, 1, 2), 7);
        let mut head = DatagenSource::new(&spec, 1, 2);
        let mut w = BatchWriter::default();
        head.next_batch(&mut w, 10).unwrap();
        let rest = drain(&mut DatagenSource::resume(&spec, 1, 2, head.offset()), 4);
        assert_eq!(rest, all[10..]);
    }

    #[test]
    fn a_paced_datagen_sends_its_first_batch_at_once_then_keeps_its_rate() {
        let spec = DatagenSpec {
            seed: 3,
            records: None,
            rate: Some(1000.0),
            vocabulary: 100,
            words_per_record: 1,
        };
        // Resumed, as after a restore or an upgrade: no wait first.
        let mut src = DatagenSource::resume(&spec, 0, 1, 500);
        assert_eq!(src.pause(), Duration::ZERO);
        let mut w = BatchWriter::default();
        src.next_batch(&mut w, 1024).unwrap();
        // 100 ms worth went out: the next waits for them to be due.
        assert_eq!(src.offset(), 600);
        let pause = src.pause();
        assert!(
            pause > Duration::from_millis(50) && pause <= Duration::from_millis(100),
            "{pause:?}"
        );
    }

    fn batch(lines: &[&str]) -> Vec<u8> {
        let mut w = BatchWriter::default();
        for l in lines {
            w.push(None, l.as_bytes(), None);
        }
        w.as_bytes().to_vec()
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn file_sink_shows_only_what_completed_checkpoints_committed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut sink = FileSink::open("s", &out, 0, None).unwrap();
        sink.write_batch(&batch(&["a", "b"])).unwrap();
        let snap1 = sink.pre_commit(CheckpointId(1)).unwrap().unwrap();
        assert_eq!(snap1.pending, [".part-0-0.pending"]);
        sink.write_batch(&batch(&["c"])).unwrap();
        let snap2 = sink.pre_commit(CheckpointId(2)).unwrap().unwrap();
        assert_eq!(snap2.pending.len(), 2, "checkpoint 1 not yet complete");
        sink.write_batch(&batch(&["d"])).unwrap();
        sink.flush().unwrap();
        assert_eq!(
            listing(&out),
            [
                ".part-0-0.pending",
                ".part-0-1.pending",
                ".part-0-2.inprogress"
            ]
        );
        sink.commit(CheckpointId(1)).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("part-0-0")).unwrap(),
            "a\nb\n"
        );

        // The process dies here; restoring checkpoint 2 commits its pending
        // part and drops what came after.
        drop(sink);
        let mut sink = FileSink::open("s", &out, 0, Some(&snap2)).unwrap();
        assert_eq!(listing(&out), ["part-0-0", "part-0-1"]);
        sink.write_batch(&batch(&["e"])).unwrap();
        sink.finish().unwrap();
        assert_eq!(listing(&out), ["part-0-0", "part-0-1", "part-0-2"]);
        assert_eq!(
            std::fs::read_to_string(out.join("part-0-2")).unwrap(),
            "e\n"
        );

        // Rewinding to checkpoint 1 never retracts committed parts: the
        // later visible ones stay, byte for byte, and new parts come after
        // them. A fresh start removes everything of this subtask.
        let committed: Vec<(String, Vec<u8>)> = listing(&out)
            .into_iter()
            .map(|n| {
                let bytes = std::fs::read(out.join(&n)).unwrap();
                (n, bytes)
            })
            .collect();
        std::fs::write(out.join(".part-0-3.inprogress"), "uncommitted").unwrap();
        let mut sink = FileSink::open("s", &out, 0, Some(&snap1)).unwrap();
        assert_eq!(listing(&out), ["part-0-0", "part-0-1", "part-0-2"]);
        for (name, bytes) in &committed {
            assert_eq!(&std::fs::read(out.join(name)).unwrap(), bytes, "{name}");
        }
        sink.write_batch(&batch(&["f"])).unwrap();
        sink.finish().unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("part-0-3")).unwrap(),
            "f\n"
        );
        std::fs::write(out.join("part-1-0"), "other subtask").unwrap();
        FileSink::open("s", &out, 0, None).unwrap();
        assert_eq!(listing(&out), ["part-1-0"]);
    }

    #[test]
    fn an_abandoned_file_sink_commits_nothing_written_after_its_last_pre_commit() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut sink = FileSink::open("s", &out, 0, None).unwrap();
        sink.write_batch(&batch(&["a"])).unwrap();
        let snap = sink.pre_commit(CheckpointId(4)).unwrap().unwrap();
        sink.commit(CheckpointId(4)).unwrap();
        sink.write_batch(&batch(&["after the stop's barrier"]))
            .unwrap();
        sink.abandon().unwrap();
        assert_eq!(listing(&out), ["part-0-0"]);
        // Resuming the stop's savepoint keeps the committed part.
        FileSink::open("s", &out, 0, Some(&snap)).unwrap();
        assert_eq!(listing(&out), ["part-0-0"]);
        assert_eq!(
            std::fs::read_to_string(out.join("part-0-0")).unwrap(),
            "a\n"
        );
    }
}
