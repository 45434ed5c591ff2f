//! Keys → key groups → subtasks, as in Flink's `KeyGroupRangeAssignment`.
//!
//! A key hashes (xxh3-64 of its bytes) into one of `max_parallelism` key
//! groups; each subtask of an operator owns a contiguous [`KeyGroupRange`].
//! Keyed state is stored per key group, so a job restored at another
//! parallelism only reassigns ranges. The hash is part of the durable
//! format: changing it would scatter restored state, so it never changes
//! within a state format version.

use xxhash_rust::xxh3::xxh3_64;

/// The largest supported `max_parallelism` (Flink's limit too).
pub const MAX_MAX_PARALLELISM: u32 = 32_768;

/// The default number of key groups.
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;

/// A key group id, `0 .. max_parallelism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyGroup(pub u32);

/// The key group `key` belongs to.
pub fn key_group_of(key: &[u8], max_parallelism: u32) -> KeyGroup {
    debug_assert!(max_parallelism > 0);
    KeyGroup((xxh3_64(key) % u64::from(max_parallelism)) as u32)
}

/// The subtask index, `0 .. parallelism`, that owns key group `kg`.
pub fn subtask_of(kg: KeyGroup, parallelism: u32, max_parallelism: u32) -> u32 {
    (u64::from(kg.0) * u64::from(parallelism) / u64::from(max_parallelism)) as u32
}

/// A contiguous, inclusive-exclusive range of key groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyGroupRange {
    /// The first key group.
    pub start: u32,
    /// One past the last key group.
    pub end: u32,
}

impl KeyGroupRange {
    /// The range subtask `index` of `parallelism` owns.
    ///
    /// # Panics
    ///
    /// If `index >= parallelism` or `parallelism > max_parallelism`, which
    /// job validation rules out.
    pub fn for_subtask(index: u32, parallelism: u32, max_parallelism: u32) -> Self {
        assert!(
            index < parallelism && parallelism <= max_parallelism,
            "invariant: subtask {index} of {parallelism} with {max_parallelism} key groups"
        );
        let (i, p, m) = (
            u64::from(index),
            u64::from(parallelism),
            u64::from(max_parallelism),
        );
        let start = (i * m).div_ceil(p);
        let end = ((i + 1) * m - 1) / p + 1;
        Self {
            start: start as u32,
            end: end as u32,
        }
    }

    /// Whether `kg` is in the range.
    pub fn contains(&self, kg: KeyGroup) -> bool {
        (self.start..self.end).contains(&kg.0)
    }

    /// How many key groups the range holds.
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_partition_key_groups_and_agree_with_subtask_of() {
        for m in [1, 2, 7, 128, 1000] {
            for p in 1..=m.min(9) {
                let mut next = 0;
                for i in 0..p {
                    let r = KeyGroupRange::for_subtask(i, p, m);
                    assert_eq!(r.start, next, "m={m} p={p} i={i}");
                    assert!(!r.is_empty(), "m={m} p={p} i={i}");
                    for kg in r.start..r.end {
                        assert_eq!(subtask_of(KeyGroup(kg), p, m), i, "m={m} p={p} kg={kg}");
                    }
                    next = r.end;
                }
                assert_eq!(next, m);
            }
        }
    }

    #[test]
    fn key_group_is_stable() {
        // Durable: these values must never change within a format version.
        assert_eq!(key_group_of(b"", 128), key_group_of(b"", 128));
        let kg = key_group_of(b"weir", 128);
        assert!(kg.0 < 128);
        assert_eq!(kg, KeyGroup((xxh3_64(b"weir") % 128) as u32));
    }
}
