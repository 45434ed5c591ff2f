//! A subtask's side of incremental checkpoints: which checkpoint its next
//! one extends, and whether it is time for a whole one instead.
//!
//! A checkpoint may extend only one that completed: a failed one's files
//! may be missing. So the subtask remembers, per checkpoint it took, the
//! change interval its synchronous phase ended, and on hearing that one
//! completed makes it the base. The next checkpoint then writes every
//! change since that interval (a failed checkpoint's changes included,
//! since they were never forgotten), and the coordinator, which knows the
//! base's files, lists them as its `base`. Savepoints are always whole and
//! never a base: they must not depend on checkpoint files.

use std::collections::BTreeMap;

use crate::checkpoint::CheckpointId;

/// The longest chain of files (a whole one, then deltas) a checkpoint may
/// need: a restore reads them all, so past it the next one is whole.
pub(crate) const MAX_CHAIN: usize = 8;

/// A delta holds at most the state's size divided by this: past it,
/// recording stops and the checkpoint is whole (`BENCHMARKS.md`,
/// "Checkpoints").
pub(crate) const DELTA_FRACTION: usize = 16;

/// The fewest changed keys a subtask records between checkpoints, however
/// small its state: below it recording costs too little to stop.
pub(crate) const MIN_CHANGE_BUDGET: usize = 4096;

/// A checkpoint this subtask took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Taken {
    /// The change interval its synchronous phase ended.
    interval: u64,
    /// How many files a restore of it reads (1: it is whole).
    chain: usize,
    /// The entries its chain's whole checkpoint held.
    whole: usize,
    /// The entries its chain's deltas hold together.
    deltas: usize,
}

/// What the next checkpoint writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Every key group, self-contained.
    Whole {
        /// The interval it ends: the changes recorded so far are dropped
        /// (a checkpoint after it extends it, or is whole if it failed).
        forget_through: u64,
    },
    /// The changes since `since` (the base's interval), extending
    /// checkpoint `extends`.
    Delta {
        /// The completed checkpoint it extends.
        extends: CheckpointId,
        /// The base's change interval.
        since: u64,
    },
}

/// The bookkeeping of one subtask.
#[derive(Debug, Default)]
pub(crate) struct Incremental {
    /// The newest completed checkpoint this subtask took.
    base: Option<(CheckpointId, Taken)>,
    /// Checkpoints taken and not yet known complete.
    taken: BTreeMap<CheckpointId, Taken>,
}

impl Incremental {
    /// Plans checkpoint `id`, whose synchronous phase just ended change
    /// interval `interval`; `changed` of the backend's `entries` entries
    /// are recorded as changed. It is a whole one when a delta would make
    /// a restore read more than twice the state — its chain's deltas
    /// together holding more entries than its whole checkpoint — or read
    /// more than [`MAX_CHAIN`] files.
    pub(crate) fn plan(
        &mut self,
        id: CheckpointId,
        interval: u64,
        changed: usize,
        entries: usize,
        untracked_through: u64,
    ) -> Plan {
        let (plan, taken) = match self.base {
            Some((extends, base))
                if base.chain < MAX_CHAIN
                    && base.deltas + changed <= base.whole.max(1)
                    && untracked_through <= base.interval =>
            {
                (
                    Plan::Delta {
                        extends,
                        since: base.interval,
                    },
                    Taken {
                        interval,
                        chain: base.chain + 1,
                        whole: base.whole,
                        deltas: base.deltas + changed,
                    },
                )
            }
            _ => (
                Plan::Whole {
                    forget_through: interval,
                },
                Taken {
                    interval,
                    chain: 1,
                    whole: entries,
                    deltas: 0,
                },
            ),
        };
        self.taken.insert(id, taken);
        plan
    }

    /// Checkpoint `id` completed: if this subtask took it, it is the new
    /// base; older ones it took are moot either way.
    pub(crate) fn completed(&mut self, id: CheckpointId) {
        if let Some(taken) = self.taken.remove(&id) {
            self.base = Some((id, taken));
        }
        self.taken.retain(|t, _| *t > id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_checkpoint_is_whole_and_the_next_ones_extend_the_last_completed() {
        let mut inc = Incremental::default();
        let plan = inc.plan(CheckpointId(1), 1, 100, 100, 0);
        assert_eq!(plan, Plan::Whole { forget_through: 1 });
        inc.completed(CheckpointId(1));
        assert_eq!(
            inc.plan(CheckpointId(2), 2, 10, 100, 0),
            Plan::Delta {
                extends: CheckpointId(1),
                since: 1
            }
        );
        // 2 is not confirmed yet (or failed): 3 extends 1 still, with every
        // change since interval 1.
        assert_eq!(
            inc.plan(CheckpointId(3), 3, 10, 100, 0),
            Plan::Delta {
                extends: CheckpointId(1),
                since: 1
            }
        );
        inc.completed(CheckpointId(3));
        assert_eq!(
            inc.plan(CheckpointId(4), 4, 10, 100, 0),
            Plan::Delta {
                extends: CheckpointId(3),
                since: 3
            }
        );
        // Changes of interval 5 went unrecorded (recording stopped, or a
        // whole checkpoint dropped them): nothing before 5 can be a base.
        assert!(matches!(
            inc.plan(CheckpointId(5), 5, 10, 100, 5),
            Plan::Whole { .. }
        ));
        // A checkpoint this subtask never took (a savepoint) is no base.
        let mut other = Incremental::default();
        other.plan(CheckpointId(1), 1, 0, 100, 0);
        other.completed(CheckpointId(1));
        other.completed(CheckpointId(2));
        assert_eq!(
            other.plan(CheckpointId(3), 2, 10, 100, 1),
            Plan::Delta {
                extends: CheckpointId(1),
                since: 1
            }
        );
        // Once the whole one (5) completed, later ones extend it.
        inc.completed(CheckpointId(5));
        assert_eq!(
            inc.plan(CheckpointId(6), 6, 10, 100, 5),
            Plan::Delta {
                extends: CheckpointId(5),
                since: 5
            }
        );
    }

    #[test]
    fn a_long_chain_or_deltas_outgrowing_the_whole_state_make_a_whole_one() {
        let mut inc = Incremental::default();
        inc.plan(CheckpointId(1), 1, 0, 100, 0);
        inc.completed(CheckpointId(1));
        for id in 2..=MAX_CHAIN as u64 {
            assert!(matches!(
                inc.plan(CheckpointId(id), id, 1, 100, 0),
                Plan::Delta { .. }
            ));
            inc.completed(CheckpointId(id));
        }
        let n = MAX_CHAIN as u64 + 1;
        assert_eq!(
            inc.plan(CheckpointId(n), n, 1, 100, 0),
            Plan::Whole { forget_through: n }
        );
        inc.completed(CheckpointId(n));
        // Deltas of 60 and 40 entries fit a whole checkpoint of 100; one
        // more entry would not.
        assert!(matches!(
            inc.plan(CheckpointId(n + 1), n + 1, 60, 100, 0),
            Plan::Delta { .. }
        ));
        inc.completed(CheckpointId(n + 1));
        assert!(matches!(
            inc.plan(CheckpointId(n + 2), n + 2, 40, 130, 0),
            Plan::Delta { .. }
        ));
        inc.completed(CheckpointId(n + 2));
        assert!(matches!(
            inc.plan(CheckpointId(n + 3), n + 3, 1, 130, 0),
            Plan::Whole { .. }
        ));
    }
}
