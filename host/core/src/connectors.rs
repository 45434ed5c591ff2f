//! Built-in sources and sinks.
//!
//! Sources report a replay position ([`Source::offset`]) so a later
//! checkpoint can record it and a restore can resume from it: the `file`
//! source's byte offset of the next line, the `datagen` source's count of
//! records emitted (its output is a pure function of seed, subtask and
//! position).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use weir_format::{BatchReader, BatchWriter, RecordRef};

use crate::error::Error;
use crate::job::DatagenSpec;

/// A source subtask: produces batches until its input ends.
pub trait Source: Send {
    /// Appends up to `max` records to `out`.
    ///
    /// Returns `false` once the input is exhausted (`out` may still hold the
    /// last records).
    ///
    /// # Errors
    /// [`Error::Io`] if reading fails.
    fn next_batch(&mut self, out: &mut BatchWriter, max: usize) -> Result<bool, Error>;

    /// The position to resume from to replay everything not yet returned.
    fn offset(&self) -> u64;
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
        Ok(Self {
            uid: uid.to_owned(),
            path: path.to_owned(),
            reader: BufReader::with_capacity(256 * 1024, file),
            offset,
            line: Vec::new(),
        })
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
            started: Instant::now(),
            line: String::new(),
        }
    }
}

impl Source for DatagenSource {
    fn next_batch(&mut self, out: &mut BatchWriter, max: usize) -> Result<bool, Error> {
        use std::fmt::Write as _;
        let n = match self.quota {
            Some(q) => (q - self.emitted).min(max as u64),
            None => max as u64,
        };
        if let Some(rate) = self.rate {
            // Pace: do not run ahead of `rate` records per second.
            let due = Duration::from_secs_f64((self.emitted + n) as f64 / rate);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
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

    /// Flushes everything written; called once at end of input.
    ///
    /// # Errors
    /// [`Error::Io`] if flushing fails.
    fn finish(&mut self) -> Result<(), Error>;
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

    fn finish(&mut self) -> Result<(), Error> {
        self.out.flush().map_err(|source| Error::Io {
            role: "sink",
            uid: self.uid.clone(),
            path: self.path.clone(),
            source,
        })
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

/// A sink writing `dir/part-<subtask>`, replacing an earlier file.
///
/// # Errors
/// [`Error::Io`] if the directory or file cannot be created.
pub fn file_sink(uid: &str, dir: &Path, subtask: u32) -> Result<LineSink<BufWriter<File>>, Error> {
    let path = dir.join(format!("part-{subtask}"));
    let io = |source| Error::Io {
        role: "sink",
        uid: uid.to_owned(),
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let file = File::create(&path).map_err(io)?;
    Ok(LineSink {
        uid: uid.to_owned(),
        path: path.clone(),
        out: BufWriter::with_capacity(256 * 1024, file),
    })
}

/// Discards records (the runtime counts them).
pub struct BlackholeSink;

impl Sink for BlackholeSink {
    fn write_batch(&mut self, _: &[u8]) -> Result<(), Error> {
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
}
