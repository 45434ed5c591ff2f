//! The `datagen` connector: deterministic lines of words, one stream per
//! subtask the source first ran with (its splits, `i/n`).

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use weir_format::BatchWriter;
use weir_format::snapshot::SourceSplit;

use super::{LocalSource, Pacing, Source, SplitKind, stream_of, stream_splits};
use crate::error::Error;
use crate::job::DatagenSpec;

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
        stream_splits(parallelism)
    }

    fn open(&self, split: &SourceSplit) -> Result<Box<dyn Source>, Error> {
        let (index, count) = stream_of(&self.uid, split)?;
        Ok(Box::new(DatagenSource::resume(
            &self.spec,
            index,
            count,
            split.position,
        )))
    }
}

/// Deterministic lines of words `w<n>`, `n` uniform in `0..vocabulary`.
pub struct DatagenSource {
    spec: DatagenSpec,
    rng: Pcg64Mcg,
    /// Records this subtask emits in all, or unbounded.
    quota: Option<u64>,
    emitted: u64,
    /// This subtask's share of the rate.
    pacing: Pacing,
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
            pacing: Pacing::new(spec.rate.map(|r| r / f64::from(parallelism)), 0),
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
        source.pacing = Pacing::new(spec.rate.map(|r| r / f64::from(parallelism)), position);
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
        self.pacing.batch_len(n)
    }
}

impl LocalSource for DatagenSource {
    /// Appends up to `max` records to `out`; `false` once the quota is
    /// reached.
    fn read_batch(&mut self, out: &mut BatchWriter, max: usize) -> Result<bool, Error> {
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

    fn pause(&self) -> Duration {
        self.pacing.pause(self.emitted)
    }

    fn offset(&self) -> u64 {
        self.emitted
    }
}

#[cfg(test)]
mod tests {
    use weir_format::BatchReader;

    use super::*;
    use crate::connectors::SourceSplits;
    use crate::connectors::tests::{block_on, drain, drain_splits};

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
            block_on(src.next_batch(&mut w, 3)).unwrap();
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
        block_on(head.next_batch(&mut w, 10)).unwrap();
        let rest = drain(
            &mut DatagenSource::resume(&spec, 1, 2, LocalSource::offset(&head)),
            4,
        );
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
        assert_eq!(LocalSource::pause(&src), Duration::ZERO);
        let mut w = BatchWriter::default();
        block_on(src.next_batch(&mut w, 1024)).unwrap();
        // 100 ms worth went out: the next waits for them to be due.
        assert_eq!(LocalSource::offset(&src), 600);
        let pause = LocalSource::pause(&src);
        assert!(
            pause > Duration::from_millis(50) && pause <= Duration::from_millis(100),
            "{pause:?}"
        );
    }
}
