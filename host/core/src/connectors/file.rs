//! The `file` connector: a source of the lines of one text file (one
//! split, `0/1`), and a sink of part files committed in two phases.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use weir_format::snapshot::SourceSplit;
use weir_format::{BatchReader, BatchWriter};

use super::stdout::write_line;
use super::{LocalSink, LocalSource, Sink, SinkKind, Source, SplitKind, bad_batch, foreign_split};
use crate::checkpoint::CheckpointId;
use crate::checkpoint::format::{SinkSnapshot, SubtaskSnapshot};
use crate::error::Error;

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

impl LocalSource for FileSource {
    /// Appends up to `max` records to `out`; `false` once the input ended.
    fn read_batch(&mut self, out: &mut BatchWriter, max: usize) -> Result<bool, Error> {
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

/// The `file` sink of a vertex: one [`FileSink`] per subtask in `dir`.
pub(crate) struct FileSinkKind {
    pub uid: String,
    pub dir: PathBuf,
}

impl SinkKind for FileSinkKind {
    fn open(&self, subtask: u32, restored: &SubtaskSnapshot) -> Result<Box<dyn Sink>, Error> {
        Ok(Box::new(FileSink::open(
            &self.uid,
            &self.dir,
            subtask,
            restored.sink.as_ref(),
        )?))
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

impl LocalSink for FileSink {
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

    fn pre_commit(
        &mut self,
        id: CheckpointId,
        snapshot: &mut SubtaskSnapshot,
    ) -> Result<(), Error> {
        if let Some(name) = self.close_part()? {
            self.pending.push((id, name));
        }
        snapshot.sink = Some(SinkSnapshot {
            pending: self.pending.iter().map(|(_, n)| n.clone()).collect(),
            next_part: self.next_part,
        });
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::tests::{block_on, drain};

    /// Pre-commits checkpoint `id` and returns the sink's section.
    fn pre_commit(sink: &mut FileSink, id: u64) -> SinkSnapshot {
        let mut snapshot = SubtaskSnapshot::default();
        LocalSink::pre_commit(sink, CheckpointId(id), &mut snapshot).unwrap();
        snapshot.sink.expect("the file sink records its parts")
    }

    #[test]
    fn file_source_reads_lines_and_resumes_from_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, "one\r\ntwo\n\nthree").unwrap();
        let mut src = FileSource::open("s", &path, 0).unwrap();
        let mut w = BatchWriter::default();
        assert!(block_on(src.next_batch(&mut w, 1)).unwrap());
        let resume = LocalSource::offset(&src);
        assert_eq!(resume, 5);
        let mut rest = FileSource::open("s", &path, resume).unwrap();
        assert_eq!(drain(&mut rest, 2), ["two", "", "three"]);
        assert_eq!(
            drain(&mut FileSource::open("s", &path, 0).unwrap(), 10),
            ["one", "two", "", "three"]
        );
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
        assert!(block_on(src.next_batch(&mut w, 1)).unwrap());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(2)
            .unwrap();
        let e = loop {
            match block_on(src.next_batch(&mut w, 1)) {
                Ok(true) => {}
                Ok(false) => panic!("a truncated input ended silently"),
                Err(e) => break e,
            }
        };
        assert!(e.to_string().contains("2 bytes"), "{e}");
        assert!(!e.restartable(crate::job::OperatorErrors::Restart));
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
        LocalSink::write_batch(&mut sink, &batch(&["a", "b"])).unwrap();
        let snap1 = pre_commit(&mut sink, 1);
        assert_eq!(snap1.pending, [".part-0-0.pending"]);
        LocalSink::write_batch(&mut sink, &batch(&["c"])).unwrap();
        let snap2 = pre_commit(&mut sink, 2);
        assert_eq!(snap2.pending.len(), 2, "checkpoint 1 not yet complete");
        LocalSink::write_batch(&mut sink, &batch(&["d"])).unwrap();
        LocalSink::flush(&mut sink).unwrap();
        assert_eq!(
            listing(&out),
            [
                ".part-0-0.pending",
                ".part-0-1.pending",
                ".part-0-2.inprogress"
            ]
        );
        LocalSink::commit(&mut sink, CheckpointId(1)).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("part-0-0")).unwrap(),
            "a\nb\n"
        );

        // The process dies here; restoring checkpoint 2 commits its pending
        // part and drops what came after.
        drop(sink);
        let mut sink = FileSink::open("s", &out, 0, Some(&snap2)).unwrap();
        assert_eq!(listing(&out), ["part-0-0", "part-0-1"]);
        LocalSink::write_batch(&mut sink, &batch(&["e"])).unwrap();
        LocalSink::finish(&mut sink).unwrap();
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
        LocalSink::write_batch(&mut sink, &batch(&["f"])).unwrap();
        LocalSink::finish(&mut sink).unwrap();
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
        LocalSink::write_batch(&mut sink, &batch(&["a"])).unwrap();
        let snap = pre_commit(&mut sink, 4);
        LocalSink::commit(&mut sink, CheckpointId(4)).unwrap();
        LocalSink::write_batch(&mut sink, &batch(&["after the stop's barrier"])).unwrap();
        LocalSink::abandon(&mut sink).unwrap();
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
