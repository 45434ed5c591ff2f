//! Decoding untrusted snapshot bytes never panics, on the stable toolchain:
//! the checked-in corpus of the cargo-fuzz targets (`fuzz/corpus/<target>/`,
//! `seed-*` written by the real encoders here, `regression-*` inputs the
//! fuzzer once crashed on) and thousands of seeded mutations of each file
//! go through the same functions the fuzz targets call
//! (`fuzz/src/lib.rs`, included by path). `docs/fuzzing.md` explains the
//! fuzzing itself, which needs nightly.
//!
//! The seeds are rewritten with
//! `cargo test -p weir-format --test snapshot_decoders -- --ignored`; a test
//! checks the checked-in ones are what the encoders write today.

#[path = "../../../fuzz/src/lib.rs"]
mod feed;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;
use weir_format::Value;
use weir_format::checkpoint::CheckpointId;
use weir_format::checkpoint::{
    self as checkpoint, CheckpointMetadata, InFlightChannel, SinkSnapshot, SubtaskMetadata,
    SubtaskSnapshot, VertexMetadata,
};
use weir_format::manifest::Manifest;
use weir_format::savepoint::{
    self as savepoint, KeyGroupSectionRef, KeyedStateMetadata, KindName, OperatorMetadata,
    OperatorStateMetadata, SavepointMetadata, SectionRef, SubtaskSectionRef,
};
use weir_format::snapshot::{ListSection, Namespace, Redistribution, SOURCE_SPLITS, SourceSplit};
use weir_format::state::{KeyGroupSnapshot, NamedStateSnapshot, StateEntries};

/// What a fuzz target does with its input.
type Feed = fn(&[u8]);

/// The fuzz targets, with the function each feeds its input to.
const TARGETS: [(&str, Feed); 4] = [
    ("checkpoint_state_file", feed::checkpoint_state_file),
    ("checkpoint_metadata", feed::checkpoint_metadata),
    ("savepoint_state_file", feed::savepoint_state_file),
    ("savepoint_metadata", feed::savepoint_metadata),
];

/// Mutated inputs per corpus file.
const MUTATIONS: usize = 3000;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

// ---- the seeds, from the real encoders ----

fn values() -> Vec<Value> {
    vec![
        Value::Boolean(true),
        Value::Int(-7),
        Value::Uint(u64::MAX),
        Value::Float(1.5),
        Value::Text("héllo".into()),
        Value::Bytes(vec![0, 255]),
        Value::None,
        Value::List(vec![Value::Int(1), Value::List(vec![])]),
        Value::Map(vec![(Value::Text("k".into()), Value::Uint(2))]),
        Value::Record(vec![("a".into(), Value::Boolean(false))]),
    ]
}

fn key_groups() -> Vec<KeyGroupSnapshot> {
    vec![
        KeyGroupSnapshot {
            key_group: 3,
            states: vec![
                NamedStateSnapshot {
                    name: "count".into(),
                    entries: StateEntries::Value(vec![
                        (b"apple".to_vec(), Value::Int(2)),
                        (b"pear".to_vec(), Value::Int(5)),
                    ]),
                },
                NamedStateSnapshot {
                    name: "seen".into(),
                    entries: StateEntries::Map(vec![(
                        b"apple".to_vec(),
                        vec![(Value::Text("x".into()), Value::Int(1))],
                    )]),
                },
            ],
        },
        KeyGroupSnapshot {
            key_group: 200,
            states: vec![NamedStateSnapshot {
                name: "items".into(),
                entries: StateEntries::List(vec![(b"k".to_vec(), values())]),
            }],
        },
    ]
}

fn operator_state() -> Vec<ListSection> {
    vec![ListSection::user(
        "offsets",
        Redistribution::Union,
        vec![Value::Uint(7), Value::Uint(9)],
    )]
}

fn source_splits() -> Vec<ListSection> {
    vec![ListSection::source_splits(&[
        SourceSplit::numbered(0, 2, 1234, false),
        SourceSplit::numbered(1, 2, 99, true),
    ])]
}

fn checkpoint_metadata(file_len: u64, extents: Vec<checkpoint::KeyGroupExtent>) -> Vec<u8> {
    let subtask = |subtask, file: Option<&str>, size, key_groups| SubtaskMetadata {
        subtask,
        file: file.map(str::to_owned),
        size,
        key_group_start: 0,
        key_group_end: 256,
        key_groups,
        base: Vec::new(),
        sync_ms: 1.25,
        async_ms: 0.5,
        alignment_ms: 0.0,
    };
    checkpoint::encode_metadata(&CheckpointMetadata {
        version: checkpoint::METADATA_VERSION,
        job_name: "wordcount".into(),
        checkpoint_id: CheckpointId(7),
        trigger_time_ms: 1_700_000_000_000,
        completion_time_ms: 1_700_000_000_250,
        max_parallelism: 256,
        exactly_once: true,
        unaligned: false,
        is_final: false,
        vertices: vec![
            VertexMetadata {
                uid: "words".into(),
                parallelism: 1,
                subtasks: vec![subtask(0, None, 0, vec![])],
            },
            VertexMetadata {
                uid: "count".into(),
                parallelism: 1,
                subtasks: vec![subtask(0, Some("count-0.state"), file_len, extents)],
            },
        ],
    })
}

fn savepoint_metadata(sections: &[savepoint::WrittenSection]) -> Vec<u8> {
    let at = |s: &savepoint::WrittenSection| SectionRef {
        file: "count-0.state".into(),
        offset: s.offset,
        len: s.len,
        count: s.count,
    };
    let keyed = |name: &str, kind| {
        let mine: Vec<&savepoint::WrittenSection> =
            sections.iter().filter(|s| s.state == name).collect();
        KeyedStateMetadata {
            name: name.into(),
            kind,
            type_name: Some("int".into()),
            keys: mine.iter().map(|s| s.count).sum(),
            bytes: mine.iter().map(|s| s.len).sum(),
            key_groups: mine
                .iter()
                .map(|s| KeyGroupSectionRef {
                    key_group: s.key_group.expect("keyed section"),
                    at: at(s),
                })
                .collect(),
        }
    };
    let offsets = sections
        .iter()
        .find(|s| s.state == "offsets")
        .expect("operator section");
    let splits = sections
        .iter()
        .find(|s| s.state == SOURCE_SPLITS)
        .expect("source section");
    savepoint::encode_metadata(&SavepointMetadata {
        version: savepoint::SAVEPOINT_METADATA_VERSION,
        job_name: "wordcount".into(),
        savepoint_id: 4,
        trigger_time_ms: 1_700_000_000_000,
        completion_time_ms: 1_700_000_000_100,
        max_parallelism: 256,
        operators: vec![
            OperatorMetadata {
                uid: "words".into(),
                parallelism: 1,
                keyed_states: vec![],
                operator_states: vec![OperatorStateMetadata {
                    namespace: Namespace::Source,
                    name: SOURCE_SPLITS.into(),
                    redistribution: Redistribution::Split,
                    type_name: None,
                    items: splits.count,
                    bytes: splits.len,
                    subtasks: vec![SubtaskSectionRef {
                        subtask: 0,
                        at: at(splits),
                    }],
                }],
                source_offsets: None,
                sink: None,
            },
            OperatorMetadata {
                uid: "count".into(),
                parallelism: 1,
                keyed_states: vec![
                    keyed("count", KindName::Value),
                    keyed("items", KindName::List),
                    keyed("seen", KindName::Map),
                ],
                operator_states: vec![OperatorStateMetadata {
                    namespace: Namespace::User,
                    name: "offsets".into(),
                    redistribution: Redistribution::Union,
                    type_name: None,
                    items: offsets.count,
                    bytes: offsets.len,
                    subtasks: vec![SubtaskSectionRef {
                        subtask: 0,
                        at: at(offsets),
                    }],
                }],
                source_offsets: None,
                sink: None,
            },
            OperatorMetadata {
                uid: "out".into(),
                parallelism: 1,
                keyed_states: vec![],
                operator_states: vec![],
                source_offsets: None,
                sink: Some(vec![SinkSnapshot {
                    pending: vec![".part-0-3.pending".into()],
                    next_part: 4,
                }]),
            },
        ],
    })
}

/// Every seed: (target, file name, bytes), small valid files.
/// An incremental file's key groups: one changed key and one removed.
fn key_group_deltas() -> Vec<checkpoint::EncodedKeyGroup> {
    let delta = weir_format::state::KeyGroupDelta {
        key_group: 5,
        changed: vec![weir_format::state::NamedStateSnapshot {
            name: "count".into(),
            entries: weir_format::state::StateEntries::Value(vec![(b"a".to_vec(), Value::Int(3))]),
        }],
        removed: vec![weir_format::state::RemovedKeys {
            name: "count".into(),
            keys: vec![b"b".to_vec()],
        }],
    };
    vec![checkpoint::EncodedKeyGroup {
        key_group: 5,
        payload: postcard::to_allocvec(&delta).unwrap(),
        delta: true,
    }]
}

fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let rich = checkpoint::encode_state_file(&SubtaskSnapshot {
        keyed: key_groups(),
        lists: operator_state(),
        sink: Some(SinkSnapshot {
            pending: vec![".part-0-1.pending".into()],
            next_part: 2,
        }),
        in_flight: vec![InFlightChannel {
            channel: 0,
            batches: vec![vec![1, 2, 3]],
        }],
        v1_source_offset: None,
    });
    let empty = checkpoint::encode_state_file(&SubtaskSnapshot::default());
    let source = checkpoint::encode_state_file(&SubtaskSnapshot {
        lists: source_splits(),
        ..SubtaskSnapshot::default()
    });
    let delta = checkpoint::encode_state_file_with(
        &SubtaskSnapshot {
            lists: source_splits(),
            ..SubtaskSnapshot::default()
        },
        key_group_deltas(),
    );
    let checkpoint_meta = checkpoint_metadata(rich.bytes.len() as u64, rich.key_groups.clone());
    let (savepoint_file, sections) =
        savepoint::encode_state_file(&key_groups(), &[operator_state(), source_splits()].concat());
    let (savepoint_empty, _) = savepoint::encode_state_file(&[], &[]);
    vec![
        ("checkpoint_state_file", "seed-rich", rich.bytes),
        ("checkpoint_state_file", "seed-empty", empty.bytes),
        ("checkpoint_state_file", "seed-source", source.bytes),
        ("checkpoint_state_file", "seed-delta", delta.bytes),
        (
            "checkpoint_metadata",
            "seed-metadata",
            checkpoint_meta.clone(),
        ),
        ("savepoint_state_file", "seed-rich", savepoint_file),
        ("savepoint_state_file", "seed-empty", savepoint_empty),
        (
            "savepoint_metadata",
            "seed-metadata",
            savepoint_metadata(&sections),
        ),
        // A native savepoint's `_metadata` is a checkpoint's:
        // `Manifest::decode` tells them apart.
        ("savepoint_metadata", "seed-native", checkpoint_meta),
    ]
}

/// Whether `bytes` decode without error as what `target` reads.
fn decodes(target: &str, bytes: &[u8]) -> Result<()> {
    match target {
        "checkpoint_state_file" => {
            checkpoint::decode_state_file_with_deltas("seed", bytes)?;
        }
        "savepoint_state_file" => {
            savepoint::decode_state_file("seed", bytes)?;
        }
        "checkpoint_metadata" => {
            checkpoint::decode_metadata("seed", bytes)?;
        }
        "savepoint_metadata" => {
            Manifest::decode("seed", bytes)?;
        }
        other => anyhow::bail!("no target {other}"),
    }
    Ok(())
}

#[test]
#[ignore = "writes the seed corpus into fuzz/corpus; run it after a format change"]
fn write_seed_corpus() -> Result<()> {
    for (target, name, bytes) in seeds() {
        let dir = corpus_dir().join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}

#[test]
fn the_checked_in_seeds_are_valid_and_what_the_encoders_write() -> Result<()> {
    for (target, name, bytes) in seeds() {
        decodes(target, &bytes).with_context(|| format!("seed {target}/{name}"))?;
        let path = corpus_dir().join(target).join(name);
        let on_disk =
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        ensure!(
            on_disk == bytes,
            "{} is not what the encoders write today: rewrite the seeds with \
             `cargo test -p weir-format --test snapshot_decoders -- --ignored`",
            path.display()
        );
    }
    Ok(())
}

/// One random change of the kinds that reach past each check in turn:
/// bit flips, interesting bytes, lengths overwritten, cuts, insertions and
/// repeated slices.
fn mutate(rng: &mut Pcg64, input: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..rng.random_range(1..=3) {
        let len = b.len();
        let at = if len == 0 {
            0
        } else {
            rng.random_range(0..len)
        };
        match rng.random_range(0..7) {
            0 if len > 0 => b[at] ^= 1 << rng.random_range(0..8),
            1 if len > 0 => b[at] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.random_range(0..5)],
            2 if len >= 8 => {
                let at = rng.random_range(0..=len - 8);
                let word: u64 = match rng.random_range(0..4) {
                    0 => u64::MAX,
                    1 => u64::from(u32::MAX),
                    2 => rng.random_range(0..(len as u64 * 2)),
                    _ => rng.random(),
                };
                b[at..at + 8].copy_from_slice(&word.to_le_bytes());
            }
            3 => b.truncate(at),
            4 => {
                let n = rng.random_range(1..16);
                let fill: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                b.splice(at..at, fill);
            }
            5 if len > 0 => {
                let end = rng.random_range(at..=len);
                let piece = b[at..end].to_vec();
                let to = rng.random_range(0..=len);
                b.splice(to..to, piece);
            }
            _ if len > 0 => {
                let end = rng.random_range(at..=len);
                b.drain(at..end);
            }
            _ => b.push(rng.random()),
        }
    }
    b
}

/// The checked-in inputs of `target`: seeds and kept regressions (not
/// what a local fuzzing run added beside them).
fn checked_in(target: &str) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let dir = corpus_dir().join(target);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("seed-") || name.starts_with("regression-") {
            let bytes = std::fs::read(&path)?;
            out.push((path, bytes));
        }
    }
    out.sort();
    Ok(out)
}

#[test]
fn the_corpus_and_its_mutations_decode_without_panicking() -> Result<()> {
    let mut rng = Pcg64::seed_from_u64(5);
    for (target, feed) in TARGETS {
        let files = checked_in(target)?;
        ensure!(!files.is_empty(), "no checked-in corpus for {target}");
        for (path, bytes) in files {
            // A panic fails the test and names the file; the mutation is
            // reproducible from the fixed seed.
            feed(&bytes);
            for _ in 0..MUTATIONS {
                feed(&mutate(&mut rng, &bytes));
            }
            // Every other target's decoders get it too: a state file given
            // as metadata and so on.
            for (_, other) in TARGETS {
                other(&bytes);
            }
            eprintln!("{}: {MUTATIONS} mutations decoded", path.display());
        }
    }
    Ok(())
}
