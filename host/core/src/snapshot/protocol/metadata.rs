//! The `_metadata` of a snapshot, assembled from what its subtasks
//! acknowledged: a checkpoint's (and a native savepoint's), and a canonical
//! savepoint's, which indexes every section by operator, namespace, state
//! and key group or subtask. Pure: the runtime encodes and commits it.

use weir_format::checkpoint::{
    CheckpointId, CheckpointMetadata, METADATA_VERSION, SubtaskMetadata, VertexMetadata,
};
use weir_format::savepoint as sp;
use weir_format::snapshot::Namespace;

use crate::checkpoint::format;
use crate::job::JobGraph;
use crate::plugin::{DeclaredKind, DeclaredState};

/// When and how a checkpoint was taken, for its `_metadata`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Taken {
    /// Its id.
    pub id: CheckpointId,
    /// When it was triggered, Unix epoch milliseconds.
    pub trigger_time_ms: u64,
    /// When its last acknowledgement arrived, Unix epoch milliseconds.
    pub completion_time_ms: u64,
    /// Aligned barriers.
    pub exactly_once: bool,
    /// In-flight records stored.
    pub unaligned: bool,
    /// The final checkpoint of a bounded job.
    pub is_final: bool,
}

/// A checkpoint's `_metadata` from every task's acknowledgement, in task
/// order (graph order, subtasks ascending).
///
/// # Panics
/// If a task's acknowledgement is missing (the coordinator assembles only
/// fully acknowledged checkpoints).
pub fn checkpoint_metadata(
    graph: &JobGraph,
    taken: Taken,
    acks: Vec<Option<SubtaskMetadata>>,
) -> CheckpointMetadata {
    CheckpointMetadata {
        version: METADATA_VERSION,
        job_name: graph.name.clone(),
        checkpoint_id: taken.id,
        trigger_time_ms: taken.trigger_time_ms,
        completion_time_ms: taken.completion_time_ms,
        max_parallelism: graph.max_parallelism,
        exactly_once: taken.exactly_once,
        unaligned: taken.unaligned,
        is_final: taken.is_final,
        vertices: vertices_of(graph, acks),
    }
}

/// A native savepoint's `_metadata`: the checkpoint's, never unaligned (a
/// savepoint's barriers are always aligned).
pub fn native_savepoint_metadata(checkpoint: &CheckpointMetadata) -> CheckpointMetadata {
    CheckpointMetadata {
        unaligned: false,
        ..checkpoint.clone()
    }
}

/// One subtask's part of a canonical savepoint.
#[derive(Debug, Clone, Default)]
pub struct SavepointPart {
    /// Its state file, if it had keyed or operator state.
    pub file: Option<String>,
    /// The sections of that file.
    pub sections: Vec<sp::WrittenSection>,
    /// A sink's pre-committed parts.
    pub sink: Option<format::SinkSnapshot>,
    /// The states the plugin declared.
    pub declared: Vec<DeclaredState>,
}

/// Every vertex's acknowledgements, in graph order.
pub fn vertices_of(graph: &JobGraph, acks: Vec<Option<SubtaskMetadata>>) -> Vec<VertexMetadata> {
    let mut acks = acks.into_iter();
    graph
        .vertices
        .iter()
        .map(|v| VertexMetadata {
            uid: v.uid.clone(),
            parallelism: v.parallelism,
            subtasks: (0..v.parallelism)
                .map(|_| {
                    acks.next()
                        .flatten()
                        .expect("invariant: every task acknowledged")
                })
                .collect(),
        })
        .collect()
}

/// A canonical savepoint's `_metadata` from its subtasks' parts (in task
/// order, which is graph order).
pub fn canonical_metadata(
    graph: &JobGraph,
    checkpoint: &CheckpointMetadata,
    parts: Vec<Option<SavepointPart>>,
) -> sp::SavepointMetadata {
    let mut parts = parts.into_iter();
    let mut operators = Vec::new();
    for v in &graph.vertices {
        let mine: Vec<SavepointPart> = (0..v.parallelism)
            .map(|_| parts.next().flatten().unwrap_or_default())
            .collect();
        let mut keyed: std::collections::BTreeMap<String, sp::KeyedStateMetadata> =
            std::collections::BTreeMap::new();
        let mut ops: std::collections::BTreeMap<(Namespace, String), sp::OperatorStateMetadata> =
            std::collections::BTreeMap::new();
        for (subtask, part) in mine.iter().enumerate() {
            let Some(file) = &part.file else { continue };
            for s in &part.sections {
                let at = sp::SectionRef {
                    file: file.clone(),
                    offset: s.offset,
                    len: s.len,
                    count: s.count,
                };
                match (s.kind, s.key_group) {
                    (Some(kind), Some(key_group)) => {
                        let m = keyed.entry(s.state.clone()).or_insert_with(|| {
                            sp::KeyedStateMetadata {
                                name: s.state.clone(),
                                kind: kind.into(),
                                type_name: None,
                                keys: 0,
                                bytes: 0,
                                key_groups: Vec::new(),
                            }
                        });
                        m.keys += s.count;
                        m.bytes += s.len;
                        m.key_groups.push(sp::KeyGroupSectionRef { key_group, at });
                    }
                    _ => {
                        let m = ops
                            .entry((s.namespace, s.state.clone()))
                            .or_insert_with(|| sp::OperatorStateMetadata {
                                namespace: s.namespace,
                                name: s.state.clone(),
                                redistribution: s.redistribution.unwrap_or_default(),
                                type_name: None,
                                items: 0,
                                bytes: 0,
                                subtasks: Vec::new(),
                            });
                        m.items += s.count;
                        m.bytes += s.len;
                        m.subtasks.push(sp::SubtaskSectionRef {
                            subtask: subtask as u32,
                            at,
                        });
                    }
                }
            }
        }
        // Declarations: types and redistribution, and declared states that
        // hold nothing yet (so `weir savepoint check` sees them).
        let declared = mine.iter().flat_map(|p| &p.declared);
        for d in declared {
            match d.kind {
                DeclaredKind::OperatorList { redistribution } => {
                    let m = ops
                        .entry((Namespace::User, d.name.clone()))
                        .or_insert_with(|| sp::OperatorStateMetadata {
                            namespace: Namespace::User,
                            name: d.name.clone(),
                            redistribution,
                            type_name: None,
                            items: 0,
                            bytes: 0,
                            subtasks: Vec::new(),
                        });
                    m.redistribution = redistribution;
                    m.type_name.clone_from(&d.type_name);
                }
                kind => {
                    let Some(k) = kind.keyed() else { continue };
                    let m = keyed
                        .entry(d.name.clone())
                        .or_insert_with(|| sp::KeyedStateMetadata {
                            name: d.name.clone(),
                            kind: k.into(),
                            type_name: None,
                            keys: 0,
                            bytes: 0,
                            key_groups: Vec::new(),
                        });
                    m.type_name.clone_from(&d.type_name);
                }
            }
        }
        for m in keyed.values_mut() {
            m.key_groups.sort_by_key(|g| g.key_group);
        }
        let sink = mine.iter().any(|p| p.sink.is_some()).then(|| {
            mine.iter()
                .map(|p| p.sink.clone().unwrap_or_default())
                .collect()
        });
        operators.push(sp::OperatorMetadata {
            uid: v.uid.clone(),
            parallelism: v.parallelism,
            keyed_states: keyed.into_values().collect(),
            operator_states: ops.into_values().collect(),
            source_offsets: None,
            sink,
        });
    }
    sp::SavepointMetadata {
        version: sp::SAVEPOINT_METADATA_VERSION,
        job_name: graph.name.clone(),
        savepoint_id: checkpoint.checkpoint_id.0,
        trigger_time_ms: checkpoint.trigger_time_ms,
        completion_time_ms: checkpoint.completion_time_ms,
        max_parallelism: graph.max_parallelism,
        operators,
    }
}

#[cfg(test)]
mod tests {
    use weir_format::checkpoint::SinkSnapshot;
    use weir_format::savepoint::{Redistribution, WrittenSection};
    use weir_format::state::StateKind;

    use super::*;

    /// A source of parallelism 2 and a sink of parallelism 1.
    fn graph() -> JobGraph {
        let file: crate::job::JobFile = toml::from_str(
            r#"
            name = "meta"
            [[sources]]
            uid = "gen"
            type = "datagen"
            parallelism = 2
            [[sinks]]
            uid = "out"
            type = "blackhole"
            input = "gen"
            parallelism = 1
            "#,
        )
        .unwrap();
        crate::job::build_graph(file, std::path::Path::new(".")).unwrap()
    }

    fn ack(subtask: u32, file: Option<&str>) -> Option<SubtaskMetadata> {
        Some(SubtaskMetadata {
            subtask,
            file: file.map(str::to_owned),
            size: u64::from(file.is_some()) * 10,
            key_group_start: 0,
            key_group_end: 128,
            key_groups: Vec::new(),
            base: Vec::new(),
            sync_ms: 1.0,
            async_ms: 2.0,
            alignment_ms: 0.0,
        })
    }

    fn taken() -> Taken {
        Taken {
            id: CheckpointId(4),
            trigger_time_ms: 100,
            completion_time_ms: 160,
            exactly_once: true,
            unaligned: true,
            is_final: false,
        }
    }

    #[test]
    fn a_checkpoints_metadata_lists_every_vertex_in_graph_order() {
        let acks = vec![ack(0, Some("gen-0.state")), ack(1, None), ack(0, None)];
        let m = checkpoint_metadata(&graph(), taken(), acks);
        assert_eq!(m.version, METADATA_VERSION);
        assert_eq!(m.checkpoint_id, CheckpointId(4));
        assert_eq!(m.duration_ms(), 60);
        let shape: Vec<(&str, u32, usize)> = m
            .vertices
            .iter()
            .map(|v| (v.uid.as_str(), v.parallelism, v.subtasks.len()))
            .collect();
        assert_eq!(shape, [("gen", 2, 2), ("out", 1, 1)]);
        assert_eq!(m.total_bytes(), 10);
        // A native savepoint's barriers were aligned whatever the config.
        assert!(!native_savepoint_metadata(&m).unaligned);
    }

    #[test]
    #[should_panic(expected = "every task acknowledged")]
    fn a_missing_acknowledgement_is_a_broken_invariant() {
        checkpoint_metadata(&graph(), taken(), vec![ack(0, None), None, ack(0, None)]);
    }

    fn section(
        namespace: Namespace,
        state: &str,
        kind: Option<StateKind>,
        key_group: Option<u32>,
        offset: u64,
    ) -> WrittenSection {
        WrittenSection {
            namespace,
            redistribution: kind.is_none().then_some(Redistribution::Split),
            state: state.into(),
            kind,
            key_group,
            offset,
            len: 20,
            count: 2,
        }
    }

    #[test]
    fn a_canonical_savepoint_indexes_every_section_by_namespace_state_and_key_group() {
        let g = graph();
        let checkpoint = checkpoint_metadata(&g, taken(), vec![ack(0, None); 3]);
        let declared = DeclaredState {
            name: "buffer".into(),
            kind: DeclaredKind::OperatorList {
                redistribution: Redistribution::Union,
            },
            type_name: Some("list<int>".into()),
        };
        let never_written = DeclaredState {
            name: "count".into(),
            kind: DeclaredKind::Value,
            type_name: Some("int".into()),
        };
        let parts = vec![
            Some(SavepointPart {
                file: Some("gen-0.state".into()),
                sections: vec![
                    section(Namespace::User, "seen", Some(StateKind::Map), Some(9), 10),
                    section(Namespace::User, "seen", Some(StateKind::Map), Some(3), 30),
                    section(Namespace::User, "buffer", None, None, 50),
                    section(Namespace::Source, "splits", None, None, 70),
                ],
                sink: None,
                declared: vec![declared, never_written],
            }),
            Some(SavepointPart {
                file: Some("gen-1.state".into()),
                sections: vec![section(Namespace::Source, "splits", None, None, 10)],
                sink: None,
                declared: Vec::new(),
            }),
            Some(SavepointPart {
                file: None,
                sections: Vec::new(),
                sink: Some(SinkSnapshot {
                    pending: vec![".part-0-1.pending".into()],
                    next_part: 2,
                }),
                declared: Vec::new(),
            }),
        ];
        let m = canonical_metadata(&g, &checkpoint, parts);
        assert_eq!(m.savepoint_id, 4);
        let source = &m.operators[0];
        // Keyed: one entry per state, its key groups ascending; declared
        // states that hold nothing are listed with their type.
        let keyed: Vec<(&str, Vec<u32>, Option<&str>)> = source
            .keyed_states
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.key_groups.iter().map(|g| g.key_group).collect(),
                    s.type_name.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            keyed,
            [("count", vec![], Some("int")), ("seen", vec![3, 9], None)]
        );
        // Operator lists: user first, then the source's splits, each with
        // its sections by subtask; the declaration sets the redistribution.
        let ops: Vec<(Namespace, &str, Redistribution, Vec<u32>, u64)> = source
            .operator_states
            .iter()
            .map(|s| {
                (
                    s.namespace,
                    s.name.as_str(),
                    s.redistribution,
                    s.subtasks.iter().map(|t| t.subtask).collect(),
                    s.items,
                )
            })
            .collect();
        assert_eq!(
            ops,
            [
                (Namespace::User, "buffer", Redistribution::Union, vec![0], 2),
                (
                    Namespace::Source,
                    "splits",
                    Redistribution::Split,
                    vec![0, 1],
                    4
                ),
            ]
        );
        assert_eq!(source.source_offsets, None);
        assert_eq!(m.operators[1].sink.as_ref().unwrap()[0].next_part, 2);
        assert!(m.operators[0].sink.is_none());
        // It encodes to a document its own decoder accepts.
        let bytes = sp::encode_metadata(&m);
        assert_eq!(sp::decode_metadata("_metadata", &bytes).unwrap(), m);
    }
}
