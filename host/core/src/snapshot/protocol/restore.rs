//! Mapping a snapshot's state onto a job: which uids match, which are new
//! or dropped ([`plan`]), and how each matched operator's state is dealt to
//! its subtasks at the job's parallelism ([`redistribute`]). Pure logic:
//! no I/O, no threads; checkpoints and savepoints of either layout are
//! first read into [`OperatorSnapshot`]s.

use std::collections::BTreeMap;

use weir_format::snapshot::{ListSection, Namespace, Redistribution, SOURCE_SPLITS};

use crate::checkpoint::format::{InFlightChannel, SinkSnapshot, SubtaskSnapshot};
use crate::keygroup::KeyGroupRange;
use crate::state::{KeyGroupSnapshot, NamedStateSnapshot, Value};

/// What a snapshot holds for one vertex, whatever its layout.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperatorSnapshot {
    /// The vertex's uid.
    pub uid: String,
    /// Its parallelism when the snapshot was taken.
    pub parallelism: u32,
    /// Keyed state by key group; each group's states sorted by name.
    pub keyed: BTreeMap<u32, Vec<NamedStateSnapshot>>,
    /// Operator list states of each subtask then, by subtask: the
    /// operator's own and a source's splits, each with its redistribution.
    pub lists: Vec<Vec<ListSection>>,
    /// Transactional sinks: each subtask's pre-committed parts.
    pub sinks: Option<Vec<Option<SinkSnapshot>>>,
    /// Unaligned checkpoints: each subtask's in-flight records.
    pub in_flight: Vec<Vec<InFlightChannel>>,
}

/// What a snapshot's metadata says about one vertex, enough to plan a
/// restore without reading any state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVertex {
    /// Its uid.
    pub uid: String,
    /// Its parallelism when the snapshot was taken.
    pub parallelism: u32,
    /// Whether it stored anything.
    pub has_state: bool,
    /// Whether it may hold in-flight records (an unaligned checkpoint).
    pub may_have_in_flight: bool,
}

/// A vertex of the job being restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobVertex {
    /// Its uid.
    pub uid: String,
    /// Its parallelism in the job.
    pub parallelism: u32,
}

/// How a snapshot maps onto a job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestorePlan {
    /// Uids with state in both: `(uid, parallelism then, parallelism now)`.
    pub matched: Vec<(String, u32, u32)>,
    /// Job vertices the snapshot holds no state for: they start empty.
    pub new: Vec<String>,
    /// Uids with state in the snapshot and no vertex in the job.
    pub dropped: Vec<String>,
}

impl RestorePlan {
    /// The matched uids whose parallelism changes.
    pub fn rescaled(&self) -> impl Iterator<Item = &(String, u32, u32)> {
        self.matched.iter().filter(|(_, from, to)| from != to)
    }
}

/// Why a snapshot cannot be restored into a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// The number of key groups differs.
    MaxParallelism {
        /// The snapshot's.
        stored: u32,
        /// The job's.
        job: u32,
    },
    /// State of uids the job does not have, and `-n` was not given.
    Dropped(Vec<String>),
    /// An unaligned checkpoint's in-flight records cannot be rescaled.
    InFlightRescaled {
        /// The vertex's uid.
        uid: String,
    },
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::MaxParallelism { stored, job } => write!(
                f,
                "it was taken with max_parallelism {stored}, the job has {job}; the number of key groups cannot change"
            ),
            PlanError::Dropped(uids) => write!(
                f,
                "it holds state of uids the job does not have: {}; restore anyway, dropping that state, with --allow-non-restored-state (-n)",
                uids.join(", ")
            ),
            PlanError::InFlightRescaled { uid } => write!(
                f,
                "`{uid}` has in-flight records of an unaligned checkpoint, which restore only at the same parallelism; rescale from a savepoint or an aligned checkpoint"
            ),
        }
    }
}

/// Maps `stored` onto `job`: state by uid, empty state for new vertices.
///
/// # Errors
/// A [`PlanError`]: another max parallelism; state of uids the job lacks
/// unless `allow_non_restored`; in-flight records at another parallelism.
pub fn plan(
    stored: &[StoredVertex],
    stored_max_parallelism: u32,
    job: &[JobVertex],
    job_max_parallelism: u32,
    allow_non_restored: bool,
) -> Result<RestorePlan, PlanError> {
    if stored_max_parallelism != job_max_parallelism {
        return Err(PlanError::MaxParallelism {
            stored: stored_max_parallelism,
            job: job_max_parallelism,
        });
    }
    let mut out = RestorePlan::default();
    for s in stored.iter().filter(|s| s.has_state) {
        match job.iter().find(|v| v.uid == s.uid) {
            Some(v) => {
                if v.parallelism != s.parallelism && s.may_have_in_flight {
                    return Err(PlanError::InFlightRescaled { uid: s.uid.clone() });
                }
                out.matched
                    .push((s.uid.clone(), s.parallelism, v.parallelism));
            }
            None => out.dropped.push(s.uid.clone()),
        }
    }
    out.new = job
        .iter()
        .filter(|v| out.matched.iter().all(|(uid, ..)| *uid != v.uid))
        .map(|v| v.uid.clone())
        .collect();
    if !out.dropped.is_empty() && !allow_non_restored {
        return Err(PlanError::Dropped(out.dropped));
    }
    Ok(out)
}

/// Deals `op`'s state to `to` subtasks: each gets the key groups of its
/// range; split operator list states (a source's splits among them) are
/// dealt round robin in subtask order (kept where they were at the same
/// parallelism), union ones go to every subtask whole; in-flight records
/// keep their subtask (the plan refused them at another parallelism);
/// sinks' pre-committed
/// parts go to subtask `j % to`, every subtask continuing its part
/// numbers past the highest any subtask reached.
///
/// # Panics
/// If `to` is 0 or above `max_parallelism`.
pub fn redistribute(op: OperatorSnapshot, to: u32, max_parallelism: u32) -> Vec<SubtaskSnapshot> {
    let same = op.parallelism == to;
    let mut out: Vec<SubtaskSnapshot> = (0..to).map(|_| SubtaskSnapshot::default()).collect();
    let mut keyed = op.keyed.into_iter().peekable();
    for (i, s) in out.iter_mut().enumerate() {
        let range = KeyGroupRange::for_subtask(i as u32, to, max_parallelism);
        while let Some((g, _)) = keyed.peek() {
            if *g >= range.end {
                break;
            }
            let (key_group, states) = keyed.next().expect("peeked");
            if key_group >= range.start {
                s.keyed.push(KeyGroupSnapshot { key_group, states });
            }
        }
    }
    if same {
        for (s, lists) in out.iter_mut().zip(op.lists) {
            s.lists = lists;
        }
    } else {
        // A list is union if any subtask stored it so (they all did).
        let mut by_name: BTreeMap<(Namespace, String), (Redistribution, Vec<Value>)> =
            BTreeMap::new();
        for subtask in op.lists {
            for list in subtask {
                let (how, items) = by_name
                    .entry((list.namespace, list.name))
                    .or_insert((list.redistribution, Vec::new()));
                if list.redistribution == Redistribution::Union {
                    *how = Redistribution::Union;
                }
                items.extend(list.items);
            }
        }
        for ((namespace, name), (redistribution, items)) in by_name {
            let section = |items| ListSection {
                namespace,
                name: name.clone(),
                redistribution,
                items,
            };
            if redistribution == Redistribution::Union {
                for s in &mut out {
                    s.lists.push(section(items.clone()));
                }
            } else {
                let mut dealt: Vec<Vec<Value>> = vec![Vec::new(); to as usize];
                for (j, item) in items.into_iter().enumerate() {
                    dealt[j % to as usize].push(item);
                }
                for (s, items) in out.iter_mut().zip(dealt) {
                    s.lists.push(section(items));
                }
            }
        }
    }
    for (s, channels) in out.iter_mut().zip(op.in_flight) {
        s.in_flight = channels;
    }
    if let Some(sinks) = op.sinks {
        if same {
            for (s, sink) in out.iter_mut().zip(sinks) {
                s.sink = sink;
            }
        } else {
            let next_part = sinks.iter().flatten().map(|s| s.next_part).max();
            if let Some(next_part) = next_part {
                for s in &mut out {
                    s.sink = Some(SinkSnapshot {
                        pending: Vec::new(),
                        next_part,
                    });
                }
                for (j, sink) in sinks.into_iter().enumerate() {
                    if let Some(sink) = sink {
                        let to_sink = out[j % to as usize]
                            .sink
                            .as_mut()
                            .expect("invariant: every subtask got a sink state above");
                        to_sink.pending.extend(sink.pending);
                    }
                }
            }
        }
    }
    // A restored source learns it was restored even where it got no split
    // (it must not start the splits of a fresh run).
    if out
        .iter()
        .any(|s| s.list(Namespace::Source, SOURCE_SPLITS).is_some())
    {
        for s in &mut out {
            if s.list(Namespace::Source, SOURCE_SPLITS).is_none() {
                s.lists.push(ListSection::source_splits(&[]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::state::StateEntries;

    fn op(uid: &str, parallelism: u32, key_groups: &[u32]) -> OperatorSnapshot {
        OperatorSnapshot {
            uid: uid.into(),
            parallelism,
            keyed: key_groups
                .iter()
                .map(|&g| {
                    (
                        g,
                        vec![NamedStateSnapshot {
                            name: "count".into(),
                            entries: StateEntries::Value(vec![(vec![g as u8], Value::Int(1))]),
                        }],
                    )
                })
                .collect(),
            ..OperatorSnapshot::default()
        }
    }

    fn vertex(uid: &str, parallelism: u32) -> JobVertex {
        JobVertex {
            uid: uid.into(),
            parallelism,
        }
    }

    fn stored(uid: &str, parallelism: u32, has_state: bool) -> StoredVertex {
        StoredVertex {
            uid: uid.into(),
            parallelism,
            has_state,
            may_have_in_flight: false,
        }
    }

    #[test]
    fn uids_are_matched_new_or_dropped() {
        let stored = [
            stored("count", 2, true),
            stored("gone", 1, true),
            stored("stateless", 1, false),
        ];
        let job = [
            vertex("count", 3),
            vertex("fresh", 1),
            vertex("stateless", 1),
        ];
        let e = plan(&stored, 128, &job, 128, false).unwrap_err();
        assert_eq!(e, PlanError::Dropped(vec!["gone".into()]));
        assert!(e.to_string().contains("--allow-non-restored-state"), "{e}");
        let p = plan(&stored, 128, &job, 128, true).unwrap();
        assert_eq!(p.matched, [("count".to_owned(), 2, 3)]);
        assert_eq!(p.new, ["fresh", "stateless"]);
        assert_eq!(p.dropped, ["gone"]);
        assert_eq!(p.rescaled().count(), 1);
    }

    #[test]
    fn another_max_parallelism_and_rescaled_in_flight_records_are_refused() {
        let e = plan(&[], 128, &[], 256, false).unwrap_err();
        assert!(e.to_string().contains("max_parallelism 128"), "{e}");
        // A source rescales: its positions are a split list.
        let p = plan(
            &[stored("src", 1, true)],
            128,
            &[vertex("src", 2)],
            128,
            false,
        )
        .unwrap();
        assert_eq!(p.rescaled().count(), 1);
        let unaligned = StoredVertex {
            may_have_in_flight: true,
            ..stored("count", 1, true)
        };
        let e = plan(&[unaligned], 128, &[vertex("count", 2)], 128, false).unwrap_err();
        assert!(matches!(e, PlanError::InFlightRescaled { .. }));
    }

    #[test]
    fn split_state_is_dealt_round_robin_and_union_state_goes_everywhere() {
        let mut o = op("x", 2, &[]);
        let split = |items| ListSection::user("split", Redistribution::Split, items);
        let all = |items| ListSection::user("all", Redistribution::Union, items);
        o.lists = vec![
            vec![
                all(vec![Value::Int(10)]),
                split(vec![Value::Int(0), Value::Int(1)]),
            ],
            vec![all(vec![Value::Int(11)]), split(vec![Value::Int(2)])],
        ];
        let out = redistribute(o.clone(), 3, 128);
        let get =
            |s: &SubtaskSnapshot, name: &str| s.list(Namespace::User, name).unwrap().items.clone();
        for (i, s) in out.iter().enumerate() {
            assert_eq!(get(s, "split"), [Value::Int(i as i64)]);
            assert_eq!(get(s, "all"), [Value::Int(10), Value::Int(11)]);
        }
        // At the same parallelism nothing moves.
        let same = redistribute(o.clone(), 2, 128);
        assert_eq!(same[0].lists, o.lists[0]);
    }

    #[test]
    fn a_sources_splits_are_dealt_out_and_every_subtask_learns_it_was_restored() {
        use weir_format::snapshot::{SOURCE_SPLITS, SourceSplit};
        let splits = |s: &SubtaskSnapshot| s.source_splits().unwrap();
        let mut o = op("src", 3, &[]);
        o.lists = (0..3)
            .map(|i| {
                vec![ListSection::source_splits(&[SourceSplit::numbered(
                    i, 3, 7, false,
                )])]
            })
            .collect();
        // Down to 2: subtask 0 gets splits 0 and 2, subtask 1 split 1.
        let out = redistribute(o.clone(), 2, 128);
        let names = |s: &SubtaskSnapshot| -> Vec<String> {
            splits(s).unwrap().into_iter().map(|x| x.split).collect()
        };
        assert_eq!(names(&out[0]), ["0/3", "2/3"]);
        assert_eq!(names(&out[1]), ["1/3"]);
        // Up to 4: the fourth subtask gets an empty list, not none, so it
        // does not start a split of its own.
        let out = redistribute(o, 4, 128);
        assert_eq!(names(&out[3]), Vec::<String>::new());
        // A subtask that stored no list at the same parallelism gets an
        // empty one too.
        let mut o = op("src", 2, &[]);
        o.lists = vec![
            vec![ListSection::source_splits(&[SourceSplit::numbered(
                0, 1, 3, false,
            )])],
            Vec::new(),
        ];
        let out = redistribute(o, 2, 128);
        assert_eq!(
            out[1]
                .list(Namespace::Source, SOURCE_SPLITS)
                .map(|l| l.items.len()),
            Some(0)
        );
    }

    #[test]
    fn sink_parts_go_to_a_surviving_subtask_and_numbers_continue_past_the_highest() {
        let mut o = op("sink", 3, &[]);
        o.sinks = Some(vec![
            Some(SinkSnapshot {
                pending: vec![".part-0-4.pending".into()],
                next_part: 5,
            }),
            None,
            Some(SinkSnapshot {
                pending: vec![".part-2-8.pending".into()],
                next_part: 9,
            }),
        ]);
        let out = redistribute(o, 2, 128);
        let sinks: Vec<SinkSnapshot> = out.into_iter().map(|s| s.sink.unwrap()).collect();
        assert_eq!(sinks[0].pending, [".part-0-4.pending", ".part-2-8.pending"]);
        assert!(sinks[1].pending.is_empty());
        assert!(sinks.iter().all(|s| s.next_part == 9));
    }

    proptest! {
        /// Any chain of rescales keeps every source split exactly once, with
        /// its position, and tells every subtask it was restored.
        #[test]
        fn rescaling_keeps_every_split_once(
            splits in 1u32..12,
            first in 1u32..6,
            chain in proptest::collection::vec(1u32..8, 1..4),
        ) {
            use weir_format::snapshot::{SOURCE_SPLITS, SourceSplit};
            let all: Vec<SourceSplit> = (0..splits)
                .map(|i| SourceSplit::numbered(i, splits, u64::from(i) * 10, i % 3 == 0))
                .collect();
            let mut current = OperatorSnapshot {
                uid: "src".into(),
                parallelism: first,
                lists: (0..first)
                    .map(|s| {
                        let mine: Vec<SourceSplit> = all
                            .iter()
                            .skip(s as usize)
                            .step_by(first as usize)
                            .cloned()
                            .collect();
                        vec![ListSection::source_splits(&mine)]
                    })
                    .collect(),
                ..OperatorSnapshot::default()
            };
            for to in chain {
                let out = redistribute(current.clone(), to, 128);
                let mut seen: Vec<SourceSplit> = Vec::new();
                for s in &out {
                    prop_assert!(s.list(Namespace::Source, SOURCE_SPLITS).is_some());
                    seen.extend(s.source_splits().unwrap().unwrap());
                }
                seen.sort_by(|a, b| a.split.cmp(&b.split));
                let mut want = all.clone();
                want.sort_by(|a, b| a.split.cmp(&b.split));
                prop_assert_eq!(seen, want);
                current = OperatorSnapshot {
                    uid: "src".into(),
                    parallelism: to,
                    lists: out.into_iter().map(|s| s.lists).collect(),
                    ..OperatorSnapshot::default()
                };
            }
        }

        /// Any chain of rescales keeps every key group exactly once, in
        /// the subtask whose range holds it.
        #[test]
        fn rescaling_keeps_every_key_group_once(
            groups in proptest::collection::btree_set(0u32..64, 0..40),
            chain in proptest::collection::vec(1u32..8, 1..4),
        ) {
            let groups: Vec<u32> = groups.into_iter().collect();
            let mut current = op("count", 1, &groups);
            for to in chain {
                let out = redistribute(current.clone(), to, 64);
                let mut seen = Vec::new();
                for (i, s) in out.iter().enumerate() {
                    let range = KeyGroupRange::for_subtask(i as u32, to, 64);
                    for g in &s.keyed {
                        prop_assert!(range.start <= g.key_group && g.key_group < range.end);
                        seen.push(g.key_group);
                    }
                }
                prop_assert_eq!(&seen, &groups);
                current = OperatorSnapshot {
                    uid: "count".into(),
                    parallelism: to,
                    keyed: out
                        .into_iter()
                        .flat_map(|s| s.keyed)
                        .map(|g| (g.key_group, g.states))
                        .collect(),
                    ..OperatorSnapshot::default()
                };
            }
        }
    }
}
