//! Timers per key, as Flink's `InternalTimerService`: an operator
//! registers a timer for a key at a timestamp in one of two time domains,
//! and the host calls it back once, when the watermark (event time) or its
//! clock (processing time) reaches the timestamp.
//!
//! Timers live in the operator's keyed state under reserved names (one map
//! state per domain: key → {timestamp → none}), so they are checkpointed,
//! restored and redistributed with their key's key group, and shown by
//! `savepoint inspect`, with no format of their own. Names starting with
//! [`RESERVED_PREFIX`] are the host's: a guest cannot use them. An index
//! per domain, ordered by timestamp then key, finds the due timers; it is
//! rebuilt from the state on restore.

use std::collections::BTreeSet;

use crate::keygroup::key_group_of;
use crate::state::{KeyedStateBackend, StateError, Update, Value};
use weir_format::state::{KeyGroupSnapshot, StateEntries};

/// State names starting with this are the host's.
pub const RESERVED_PREFIX: &str = "_weir/";

/// The keyed map state holding event-time timers.
pub const EVENT_TIME_TIMERS: &str = "_weir/timers/event-time";

/// The keyed map state holding processing-time timers.
pub const PROCESSING_TIME_TIMERS: &str = "_weir/timers/processing-time";

/// The clock a timer runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeDomain {
    /// Fires when the watermark reaches the timestamp.
    EventTime,
    /// Fires when the host's clock reaches the timestamp.
    ProcessingTime,
}

impl TimeDomain {
    /// The state its timers are kept in.
    pub fn state_name(self) -> &'static str {
        match self {
            TimeDomain::EventTime => EVENT_TIME_TIMERS,
            TimeDomain::ProcessingTime => PROCESSING_TIME_TIMERS,
        }
    }

    fn index(self) -> usize {
        match self {
            TimeDomain::EventTime => 0,
            TimeDomain::ProcessingTime => 1,
        }
    }
}

/// Whether a guest may not use state `name`.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// One subtask's timers: the index of what its keyed state holds.
#[derive(Debug, Default)]
pub struct TimerService {
    /// Per domain: (timestamp, key), ascending.
    queues: [BTreeSet<(i64, Vec<u8>)>; 2],
    max_parallelism: u32,
}

/// A timer that is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiredTimer {
    /// Its key.
    pub key: Vec<u8>,
    /// Its timestamp.
    pub timestamp: i64,
    /// Its domain.
    pub domain: TimeDomain,
}

impl TimerService {
    /// No timers, for keys hashed into `max_parallelism` key groups.
    pub fn new(max_parallelism: u32) -> Self {
        Self {
            queues: Default::default(),
            max_parallelism,
        }
    }

    /// The timers a restored keyed state holds.
    ///
    /// # Errors
    /// A timer state of another kind than map, or a timestamp that is not
    /// an integer: the snapshot is not one this host wrote.
    pub fn restore(max_parallelism: u32, groups: &[KeyGroupSnapshot]) -> Result<Self, String> {
        let mut service = Self::new(max_parallelism);
        for domain in [TimeDomain::EventTime, TimeDomain::ProcessingTime] {
            let name = domain.state_name();
            for state in groups.iter().flat_map(|g| &g.states) {
                if state.name != name {
                    continue;
                }
                let StateEntries::Map(entries) = &state.entries else {
                    return Err(format!(
                        "timer state `{name}` holds {} entries, not map entries",
                        state.entries.kind()
                    ));
                };
                for (key, timers) in entries {
                    for (ts, _) in timers {
                        let Value::Int(ts) = ts else {
                            return Err(format!(
                                "timer state `{name}` holds a timestamp that is not an integer: {ts:?}"
                            ));
                        };
                        service.queues[domain.index()].insert((*ts, key.clone()));
                    }
                }
            }
        }
        Ok(service)
    }

    /// Registers a timer for `key` at `timestamp`; one that exists stays
    /// as it is.
    ///
    /// # Errors
    /// As the backend's `apply`: a key of another subtask's key group.
    pub fn register(
        &mut self,
        state: &mut dyn KeyedStateBackend,
        key: &[u8],
        timestamp: i64,
        domain: TimeDomain,
    ) -> Result<(), StateError> {
        let entry = (timestamp, key.to_vec());
        if self.queues[domain.index()].contains(&entry) {
            return Ok(());
        }
        state.apply(
            key_group_of(key, self.max_parallelism),
            domain.state_name(),
            key,
            Update::MapPut(Value::Int(timestamp), Value::None),
        )?;
        self.queues[domain.index()].insert(entry);
        Ok(())
    }

    /// Deletes a timer; one that does not exist is no error.
    ///
    /// # Errors
    /// As [`TimerService::register`].
    pub fn delete(
        &mut self,
        state: &mut dyn KeyedStateBackend,
        key: &[u8],
        timestamp: i64,
        domain: TimeDomain,
    ) -> Result<(), StateError> {
        let kg = key_group_of(key, self.max_parallelism);
        if !state.key_groups().contains(kg) {
            return Err(StateError::ForeignKeyGroup {
                kg,
                range: state.key_groups(),
            });
        }
        if self.queues[domain.index()].remove(&(timestamp, key.to_vec())) {
            state.apply(
                kg,
                domain.state_name(),
                key,
                Update::MapRemove(Value::Int(timestamp)),
            )?;
        }
        Ok(())
    }

    /// The earliest timer of `domain`, if any.
    pub fn next(&self, domain: TimeDomain) -> Option<i64> {
        self.queues[domain.index()].first().map(|(ts, _)| *ts)
    }

    /// Takes the earliest timer of `domain` at or before `upto` out of the
    /// index and the state: it fires now.
    ///
    /// # Errors
    /// As the backend's `apply`.
    pub fn pop_due(
        &mut self,
        state: &mut dyn KeyedStateBackend,
        domain: TimeDomain,
        upto: i64,
    ) -> Result<Option<FiredTimer>, StateError> {
        let queue = &mut self.queues[domain.index()];
        if queue.first().is_none_or(|(ts, _)| *ts > upto) {
            return Ok(None);
        }
        let (timestamp, key) = queue.pop_first().expect("invariant: checked non-empty");
        state.apply(
            key_group_of(&key, self.max_parallelism),
            domain.state_name(),
            &key,
            Update::MapRemove(Value::Int(timestamp)),
        )?;
        Ok(Some(FiredTimer {
            key,
            timestamp,
            domain,
        }))
    }

    /// How many timers are registered.
    pub fn len(&self) -> usize {
        self.queues.iter().map(BTreeSet::len).sum()
    }

    /// Whether no timer is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keygroup::KeyGroupRange;
    use crate::state::MemoryStateBackend;

    const MAX_P: u32 = 128;

    fn backend(subtask: u32, parallelism: u32) -> MemoryStateBackend {
        MemoryStateBackend::new(KeyGroupRange::for_subtask(subtask, parallelism, MAX_P))
    }

    fn drain(t: &mut TimerService, s: &mut dyn KeyedStateBackend, upto: i64) -> Vec<(i64, String)> {
        std::iter::from_fn(|| t.pop_due(s, TimeDomain::EventTime, upto).unwrap())
            .map(|f| (f.timestamp, String::from_utf8(f.key).unwrap()))
            .collect()
    }

    #[test]
    fn timers_fire_once_in_timestamp_then_key_order() {
        let mut s = backend(0, 1);
        let mut t = TimerService::new(MAX_P);
        for (key, ts) in [("b", 20), ("a", 20), ("c", 10), ("a", 20), ("a", 30)] {
            t.register(&mut s, key.as_bytes(), ts, TimeDomain::EventTime)
                .unwrap();
        }
        t.register(&mut s, b"a", 5, TimeDomain::ProcessingTime)
            .unwrap();
        assert_eq!(t.len(), 5, "the duplicate registered once");
        assert_eq!(
            drain(&mut t, &mut s, 20),
            [(10, "c".into()), (20, "a".into()), (20, "b".into())]
        );
        assert_eq!(t.next(TimeDomain::EventTime), Some(30));
        assert_eq!(t.next(TimeDomain::ProcessingTime), Some(5));
        t.delete(&mut s, b"a", 30, TimeDomain::EventTime).unwrap();
        t.delete(&mut s, b"a", 31, TimeDomain::EventTime).unwrap();
        assert_eq!(drain(&mut t, &mut s, i64::MAX), []);
    }

    #[test]
    fn timers_survive_a_snapshot_and_a_rescale_with_their_key_groups() {
        let mut s = backend(0, 1);
        let mut t = TimerService::new(MAX_P);
        let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
        for (i, k) in keys.iter().enumerate() {
            t.register(&mut s, k.as_bytes(), i as i64 % 7, TimeDomain::EventTime)
                .unwrap();
            t.register(&mut s, k.as_bytes(), 1_000, TimeDomain::ProcessingTime)
                .unwrap();
        }
        // One fires before the snapshot: it is gone from the state too.
        let first = t
            .pop_due(&mut s, TimeDomain::EventTime, 0)
            .unwrap()
            .unwrap();
        let snapshot = s.snapshot();

        // Restored at parallelism 3: each subtask gets the timers of its
        // key groups, and together they hold all of them once.
        let mut fired = Vec::new();
        let mut processing = 0;
        for subtask in 0..3 {
            let mut s = backend(subtask, 3);
            let mine: Vec<_> = snapshot
                .iter()
                .filter(|g| {
                    s.key_groups()
                        .contains(crate::keygroup::KeyGroup(g.key_group))
                })
                .cloned()
                .collect();
            let mut t = TimerService::restore(MAX_P, &mine).unwrap();
            s.restore(mine).unwrap();
            processing += std::iter::from_fn(|| {
                t.pop_due(&mut s, TimeDomain::ProcessingTime, i64::MAX)
                    .unwrap()
            })
            .count();
            let mine = drain(&mut t, &mut s, i64::MAX);
            assert!(mine.windows(2).all(|w| w[0] <= w[1]), "in order");
            fired.extend(mine);
            assert!(s.is_empty(), "fired timers leave no state behind");
        }
        assert_eq!(processing, 200);
        let mut expected: Vec<(i64, String)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (i as i64 % 7, k.clone()))
            .filter(|(ts, k)| (*ts, k.as_bytes()) != (first.timestamp, first.key.as_slice()))
            .collect();
        expected.sort();
        fired.sort();
        assert_eq!(fired, expected);
    }

    #[test]
    fn a_foreign_key_is_refused_and_leaves_nothing() {
        let mut s = backend(0, 2);
        let mut t = TimerService::new(MAX_P);
        let foreign = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| !s.key_groups().contains(key_group_of(k.as_bytes(), MAX_P)))
            .unwrap();
        assert!(
            t.register(&mut s, foreign.as_bytes(), 1, TimeDomain::EventTime)
                .is_err()
        );
        assert!(
            t.delete(&mut s, foreign.as_bytes(), 1, TimeDomain::EventTime)
                .is_err()
        );
        assert!(t.is_empty());
    }
}
