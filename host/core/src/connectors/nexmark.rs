//! The `nexmark` connector: the Nexmark benchmark's persons, auctions and
//! bids (`weir-nexmark`, `docs/nexmark.md`), one JSON object per record,
//! with the event's time as the record's timestamp. Deterministic per seed
//! and event number; one stream per subtask the source first ran with
//! (its splits, `i/n`), each split's position the count of events it
//! emitted, so it restores at any parallelism.

use std::time::Duration;

use weir_format::BatchWriter;
use weir_format::snapshot::SourceSplit;
use weir_nexmark::{GeneratorConfig, SplitGenerator};

use super::{LocalSource, Pacing, Source, SplitKind, stream_of, stream_splits};
use crate::error::Error;

/// A `nexmark` source as the job file configures it.
#[derive(Debug, Clone, PartialEq)]
pub struct NexmarkSpec {
    /// The generator's settings (`[sources.nexmark]`).
    pub generator: GeneratorConfig,
    /// Events per second in all, wall clock; `None`: as fast as possible.
    pub rate: Option<f64>,
}

/// The `nexmark` source's splits.
pub struct NexmarkSplits {
    /// The vertex's uid, for messages.
    pub uid: String,
    /// What to generate.
    pub spec: NexmarkSpec,
}

impl SplitKind for NexmarkSplits {
    fn initial(&self, parallelism: u32) -> Vec<SourceSplit> {
        stream_splits(parallelism)
    }

    fn open(&self, split: &SourceSplit) -> Result<Box<dyn Source>, Error> {
        let (index, count) = stream_of(&self.uid, split)?;
        let generator = SplitGenerator::new(
            self.spec.generator.clone(),
            u64::from(index),
            u64::from(count),
            split.position,
        )
        .map_err(|e| Error::Restore {
            message: format!("source `{}`: split {}: {e}", self.uid, split.split),
        })?;
        Ok(Box::new(NexmarkSource {
            generator,
            pacing: Pacing::new(self.spec.rate.map(|r| r / f64::from(count)), split.position),
            json: Vec::new(),
        }))
    }
}

/// One split's events.
struct NexmarkSource {
    generator: SplitGenerator,
    /// This split's share of the rate.
    pacing: Pacing,
    json: Vec<u8>,
}

impl LocalSource for NexmarkSource {
    fn read_batch(&mut self, out: &mut BatchWriter, max: usize) -> Result<bool, Error> {
        for _ in 0..self.pacing.batch_len(max as u64) {
            self.json.clear();
            let Some((_, ts)) = self.generator.next_json(&mut self.json) else {
                return Ok(false);
            };
            out.push(None, &self.json, Some(ts));
        }
        Ok(!self.generator.is_finished())
    }

    fn pause(&self) -> Duration {
        self.pacing.pause(self.generator.position())
    }

    fn offset(&self) -> u64 {
        self.generator.position()
    }
}

#[cfg(test)]
mod tests {
    use weir_format::BatchReader;
    use weir_nexmark::Event;

    use super::*;
    use crate::connectors::SourceSplits;
    use crate::connectors::tests::drain_splits;

    #[test]
    fn nexmark_splits_give_every_event_once_with_its_time_at_any_parallelism() {
        let spec = NexmarkSpec {
            generator: GeneratorConfig {
                max_events: Some(500),
                ..GeneratorConfig::default()
            },
            rate: None,
        };
        let kind = NexmarkSplits {
            uid: "nexmark".into(),
            spec: spec.clone(),
        };
        let expected: Vec<String> = spec.generator.events(0..500).map(|e| e.to_json()).collect();
        for parallelism in [1, 3] {
            let mut src = SourceSplits::open(&kind, kind.initial(parallelism)).unwrap();
            let mut got = drain_splits(&mut src, 64);
            got.sort();
            let mut want = expected.clone();
            want.sort();
            assert_eq!(got, want, "parallelism {parallelism}");
        }
        let mut w = BatchWriter::default();
        let mut one = SourceSplits::open(&kind, kind.initial(1)).unwrap();
        crate::connectors::tests::block_on(one.next_batch(&mut w, 10)).unwrap();
        for r in BatchReader::new(w.as_bytes()) {
            let r = r.unwrap();
            let event = Event::from_json(r.value).unwrap();
            assert_eq!(r.timestamp, Some(event.date_time()));
        }
    }
}
