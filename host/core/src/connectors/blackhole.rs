//! The `blackhole` sink: counts records, writes nothing (for benchmarks).

use super::{LocalSink, Sink, SinkKind};
use crate::checkpoint::format::SubtaskSnapshot;
use crate::error::Error;

/// The `blackhole` sink of a vertex.
pub(crate) struct Blackhole;

impl SinkKind for Blackhole {
    fn open(&self, _: u32, _: &SubtaskSnapshot) -> Result<Box<dyn Sink>, Error> {
        Ok(Box::new(BlackholeSink))
    }
}

/// Discards records (the runtime counts them).
pub struct BlackholeSink;

impl LocalSink for BlackholeSink {
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
