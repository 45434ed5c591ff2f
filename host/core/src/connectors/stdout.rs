//! The `stdout` sink: one line per record on standard output.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use weir_format::{BatchReader, RecordRef};

use super::{LocalSink, Sink, SinkKind, bad_batch};
use crate::checkpoint::format::SubtaskSnapshot;
use crate::error::Error;

/// The `stdout` sink of a vertex.
pub(crate) struct Stdout {
    pub uid: String,
}

impl SinkKind for Stdout {
    fn open(&self, _: u32, _: &SubtaskSnapshot) -> Result<Box<dyn Sink>, Error> {
        Ok(Box::new(stdout_sink(&self.uid)))
    }
}

/// Writes `key<TAB>value` (or `value` for records without a key) per line,
/// bytes shown as UTF-8 with invalid sequences replaced.
pub(crate) fn write_line(w: &mut impl Write, r: &RecordRef<'_>) -> std::io::Result<()> {
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

impl<W: Write + Send> LocalSink for LineSink<W> {
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
        LocalSink::flush(self)
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
