//! The canonical savepoint format, version 1 (`docs/savepoint-format.md`
//! is the specification): a `_metadata` JSON document indexing operator
//! uid → state name → key group → a section of a state file, plus source
//! offsets and sink state; and state files of framed, checksummed postcard
//! sections, each holding one state's entries in one key group (or one
//! subtask's operator list state).
//!
//! Nothing here depends on the parallelism a savepoint is restored at, on
//! tokio or on wasmtime: the host's runtime writes these files, its restore
//! plan and the `weir savepoint` commands read them.

use serde::{Deserialize, Serialize};

use crate::checkpoint::{SinkSnapshot, check_sink};
use crate::frame::{
    FormatError, check_file_name, decode_payload, metadata_fields, read_file_prefix, read_frame,
    write_frame_with,
};
use crate::snapshot::{ListSection, Namespace};
use crate::state::{StateEntries, StateKind};
use crate::value::Value;

/// The first bytes of every savepoint state file.
pub const SAVEPOINT_FILE_MAGIC: [u8; 8] = *b"WEIRSAVE";
/// The state file version this build writes (and the newest it reads).
pub const SAVEPOINT_FILE_VERSION: u16 = 1;
/// The `format` field of a savepoint's `_metadata`.
pub const SAVEPOINT_FORMAT: &str = "weir-savepoint";
/// The `_metadata` version this build writes (and the newest it reads).
/// Version 2 stores a source's positions as its operator list state
/// `splits` in the `source` namespace; version 1 stored them as
/// `source_offsets`, which this build still reads.
pub const SAVEPOINT_METADATA_VERSION: u32 = 2;

const PREFIX_LEN: usize = SAVEPOINT_FILE_MAGIC.len() + 2;

/// Section tags of a savepoint state file. Durable.
const TAG_KEYED: u8 = 0x10;
const TAG_OPERATOR: u8 = 0x11;
const TAG_END: u8 = 0xFF;

/// One keyed state's entries in one key group: the payload of a keyed
/// section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyedSection {
    /// The state name.
    pub state: String,
    /// The key group.
    pub key_group: u32,
    /// The entries (their variant is the state's kind).
    pub entries: StateEntries,
}

/// One subtask's items of one operator list state: the payload of an
/// operator-state section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorSection {
    /// The state name.
    pub state: String,
    /// The items.
    pub items: Vec<Value>,
}

/// Where a section lies in a state file, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectionRef {
    /// The state file, relative to the savepoint directory.
    pub file: String,
    /// The section's first byte in the file.
    pub offset: u64,
    /// The section's length in bytes (frame included).
    pub len: u64,
    /// Keys (keyed state) or items (operator state) in the section.
    pub count: u64,
}

/// A section as written, before it is indexed in `_metadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenSection {
    /// Whose state it is.
    pub namespace: Namespace,
    /// An operator list state's redistribution (`None` for keyed state).
    pub redistribution: Option<Redistribution>,
    /// The state name.
    pub state: String,
    /// `Some(kind)` for keyed state, `None` for operator list state.
    pub kind: Option<StateKind>,
    /// The key group (keyed state only).
    pub key_group: Option<u32>,
    /// Where it is in the file.
    pub offset: u64,
    /// Its length, frame included.
    pub len: u64,
    /// Keys or items it holds.
    pub count: u64,
}

/// One keyed section already framed (tag, length, payload, checksum),
/// before the state file is assembled: a savepoint frames these in its
/// synchronous phase, straight from the live state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramedSection {
    /// The state name.
    pub state: String,
    /// Its kind.
    pub kind: StateKind,
    /// The key group.
    pub key_group: u32,
    /// Keys in the section.
    pub count: u64,
    /// The whole framed section.
    pub frame: Vec<u8>,
}

/// Frames one state's `entries` (`count` keys of kind `kind`) in
/// `key_group` as a keyed section.
pub fn frame_keyed_section<E: Serialize>(
    state: &str,
    kind: StateKind,
    key_group: u32,
    count: usize,
    entries: &E,
) -> FramedSection {
    let mut frame = Vec::new();
    write_frame_with(
        &mut frame,
        TAG_KEYED,
        &KeyedSectionRef {
            state,
            key_group,
            entries,
        },
    );
    FramedSection {
        state: state.to_owned(),
        kind,
        key_group,
        count: count as u64,
        frame,
    }
}

/// Frames the keyed sections of owned key-group snapshots.
pub fn frame_snapshots(keyed: &[crate::state::KeyGroupSnapshot]) -> Vec<FramedSection> {
    keyed
        .iter()
        .flat_map(|g| {
            g.states.iter().filter(|s| !s.entries.is_empty()).map(|s| {
                frame_keyed_section(
                    &s.name,
                    s.entries.kind(),
                    g.key_group,
                    s.entries.len(),
                    &s.entries,
                )
            })
        })
        .collect()
}

/// Encodes one subtask's keyed and operator state as a savepoint state
/// file: keyed sections ordered by (state name, key group), then operator
/// state sections by name, then the end marker. Empty states are skipped.
pub fn encode_state_file(
    keyed: &[crate::state::KeyGroupSnapshot],
    lists: &[ListSection],
) -> (Vec<u8>, Vec<WrittenSection>) {
    assemble_state_file(frame_snapshots(keyed), lists)
}

/// Assembles a savepoint state file from framed keyed sections (in any
/// order) and operator state, as [`encode_state_file`] lays it out.
pub fn assemble_state_file(
    mut keyed: Vec<FramedSection>,
    lists: &[ListSection],
) -> (Vec<u8>, Vec<WrittenSection>) {
    keyed.sort_by(|a, b| (&a.state, a.key_group).cmp(&(&b.state, b.key_group)));
    let size: usize = keyed.iter().map(|s| s.frame.len()).sum();
    let mut out = Vec::with_capacity(PREFIX_LEN + size + 64);
    out.extend_from_slice(&SAVEPOINT_FILE_MAGIC);
    out.extend_from_slice(&SAVEPOINT_FILE_VERSION.to_le_bytes());
    let mut sections = Vec::new();
    for s in keyed {
        let offset = out.len();
        out.extend_from_slice(&s.frame);
        sections.push(WrittenSection {
            namespace: Namespace::User,
            redistribution: None,
            state: s.state,
            kind: Some(s.kind),
            key_group: Some(s.key_group),
            offset: offset as u64,
            len: s.frame.len() as u64,
            count: s.count,
        });
    }
    let mut ops: Vec<&ListSection> = lists.iter().collect();
    ops.sort_by(|a, b| (a.namespace, &a.name).cmp(&(b.namespace, &b.name)));
    for list in ops {
        let (state, items) = (&list.name, &list.items);
        let offset = out.len();
        write_frame_with(
            &mut out,
            TAG_OPERATOR,
            &OperatorSectionRef {
                state: state.as_str(),
                items,
            },
        );
        sections.push(WrittenSection {
            namespace: list.namespace,
            redistribution: Some(list.redistribution),
            state: state.clone(),
            kind: None,
            key_group: None,
            offset: offset as u64,
            len: (out.len() - offset) as u64,
            count: items.len() as u64,
        });
    }
    write_frame_with(&mut out, TAG_END, &());
    (out, sections)
}

/// Borrowed [`KeyedSection`], serialized identically.
#[derive(Serialize)]
struct KeyedSectionRef<'a, E> {
    state: &'a str,
    key_group: u32,
    entries: &'a E,
}

/// Borrowed [`OperatorSection`], serialized identically.
#[derive(Serialize)]
struct OperatorSectionRef<'a> {
    state: &'a str,
    items: &'a [Value],
}

/// A decoded section of a savepoint state file.
#[derive(Debug, Clone, PartialEq)]
pub enum Section {
    /// Keyed state of one key group.
    Keyed(KeyedSection),
    /// One subtask's operator list state.
    Operator(OperatorSection),
}

fn check_prefix(file: &str, bytes: &[u8]) -> Result<(), FormatError> {
    read_file_prefix(
        file,
        bytes,
        &SAVEPOINT_FILE_MAGIC,
        "savepoint state file",
        SAVEPOINT_FILE_VERSION,
    )
    .map(|_| ())
}

/// Decodes a whole savepoint state file (what `weir savepoint inspect`
/// verifies, and what the fuzz target feeds).
///
/// # Errors
/// [`FormatError`] naming `file`: bad magic, a newer version, truncated, a
/// checksum mismatch, an undecodable section, or bytes after the end.
pub fn decode_state_file(file: &str, bytes: &[u8]) -> Result<Vec<Section>, FormatError> {
    check_prefix(file, bytes)?;
    let mut pos = PREFIX_LEN;
    let mut out = Vec::new();
    loop {
        let at = pos as u64;
        let frame = read_frame(file, bytes, pos, 0)?;
        pos = frame.next;
        match frame.tag {
            TAG_KEYED => out.push(Section::Keyed(decode_payload(
                file,
                "keyed-state",
                at,
                frame.payload,
            )?)),
            TAG_OPERATOR => out.push(Section::Operator(decode_payload(
                file,
                "operator-state",
                at,
                frame.payload,
            )?)),
            TAG_END => {
                decode_payload::<()>(file, "end", at, frame.payload)?;
                if pos != bytes.len() {
                    return Err(FormatError::new(
                        file,
                        format!(
                            "{} bytes after the end marker at byte {at}",
                            bytes.len() - pos
                        ),
                    ));
                }
                return Ok(out);
            }
            tag => {
                return Err(FormatError::new(
                    file,
                    format!("unknown section tag 0x{tag:02x} at byte {at}"),
                ));
            }
        }
    }
}

/// Decodes the section `at` points to in the whole file `bytes`.
///
/// # Errors
/// [`FormatError`] naming `file`: the reference lies outside the file, or
/// the section there is corrupt or not exactly `at.len` bytes.
pub fn decode_section(file: &str, bytes: &[u8], at: &SectionRef) -> Result<Section, FormatError> {
    check_prefix(file, bytes)?;
    let start = usize::try_from(at.offset)
        .ok()
        .filter(|&s| s >= PREFIX_LEN && s < bytes.len());
    let Some(start) = start else {
        return Err(FormatError::new(
            file,
            format!(
                "a section reference at byte {} lies outside the file's sections (bytes {PREFIX_LEN}..{})",
                at.offset,
                bytes.len()
            ),
        ));
    };
    let frame = read_frame(file, bytes, start, 0)?;
    if (frame.next - start) as u64 != at.len {
        return Err(FormatError::new(
            file,
            format!(
                "the section at byte {} is {} bytes long, _metadata says {}",
                at.offset,
                frame.next - start,
                at.len
            ),
        ));
    }
    match frame.tag {
        TAG_KEYED => Ok(Section::Keyed(decode_payload(
            file,
            "keyed-state",
            at.offset,
            frame.payload,
        )?)),
        TAG_OPERATOR => Ok(Section::Operator(decode_payload(
            file,
            "operator-state",
            at.offset,
            frame.payload,
        )?)),
        tag => Err(FormatError::new(
            file,
            format!(
                "the section at byte {} (tag 0x{tag:02x}) holds no state",
                at.offset
            ),
        )),
    }
}

// ---------------------------------------------------------------------------
// _metadata

/// A savepoint's `_metadata`, with `"format": "weir-savepoint"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavepointMetadata {
    /// The metadata version.
    pub version: u32,
    /// The job's name.
    pub job_name: String,
    /// The savepoint's id (in the job's checkpoint id sequence).
    pub savepoint_id: u64,
    /// When it was triggered, Unix epoch milliseconds.
    pub trigger_time_ms: u64,
    /// When it completed, Unix epoch milliseconds.
    pub completion_time_ms: u64,
    /// The number of key groups.
    pub max_parallelism: u32,
    /// Every vertex of the job, in graph order.
    pub operators: Vec<OperatorMetadata>,
}

/// One vertex (source, operator, sink) of a savepoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorMetadata {
    /// The uid.
    pub uid: String,
    /// Its parallelism when the savepoint was taken.
    pub parallelism: u32,
    /// Its keyed states, by name.
    #[serde(default)]
    pub keyed_states: Vec<KeyedStateMetadata>,
    /// Its operator list states, by name.
    #[serde(default)]
    pub operator_states: Vec<OperatorStateMetadata>,
    /// Version 1 only: each source subtask's position (file: byte offset;
    /// datagen: records emitted), top bit set once finished. Version 2
    /// stores positions as the operator state `splits` in the `source`
    /// namespace; readers turn these into that
    /// ([`SourceSplit::from_v1_offset`](crate::snapshot::SourceSplit::from_v1_offset)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_offsets: Option<Vec<u64>>,
    /// Transactional sinks: each subtask's pre-committed parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<Vec<SinkSnapshot>>,
}

/// How an operator list state is split among subtasks on restore:
/// `"split"` (round robin, the default) or `"union"` (every subtask gets
/// every item), as the plugin declared it.
pub use crate::declared::Redistribution;

/// The kinds of keyed state, as written in `_metadata`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KindName {
    /// Value state.
    Value,
    /// Map state.
    Map,
    /// List state.
    List,
}

impl From<StateKind> for KindName {
    fn from(k: StateKind) -> Self {
        match k {
            StateKind::Value => KindName::Value,
            StateKind::Map => KindName::Map,
            StateKind::List => KindName::List,
        }
    }
}

impl From<KindName> for StateKind {
    fn from(k: KindName) -> Self {
        match k {
            KindName::Value => StateKind::Value,
            KindName::Map => StateKind::Map,
            KindName::List => StateKind::List,
        }
    }
}

/// One keyed state of an operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyedStateMetadata {
    /// The state name.
    pub name: String,
    /// Its kind.
    pub kind: KindName,
    /// Its declared type, if the plugin declared one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    /// Keys holding an entry.
    pub keys: u64,
    /// Bytes of its sections.
    pub bytes: u64,
    /// One section per non-empty key group, ascending.
    pub key_groups: Vec<KeyGroupSectionRef>,
}

/// A keyed state's section for one key group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyGroupSectionRef {
    /// The key group.
    pub key_group: u32,
    /// Where its entries are.
    #[serde(flatten)]
    pub at: SectionRef,
}

/// One operator list state of an operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorStateMetadata {
    /// Whose state it is (`user` when absent: the operator's own).
    #[serde(default, skip_serializing_if = "Namespace::is_user")]
    pub namespace: Namespace,
    /// The state name.
    pub name: String,
    /// How its items are redistributed at another parallelism.
    #[serde(default)]
    pub redistribution: Redistribution,
    /// Its declared type, if the plugin declared one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    /// Items over all subtasks.
    pub items: u64,
    /// Bytes of its sections.
    pub bytes: u64,
    /// One section per subtask that held items, by subtask.
    pub subtasks: Vec<SubtaskSectionRef>,
}

/// An operator list state's section for one subtask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubtaskSectionRef {
    /// The subtask that held the items.
    pub subtask: u32,
    /// Where they are.
    #[serde(flatten)]
    pub at: SectionRef,
}

impl SavepointMetadata {
    /// The bytes of every state section together.
    pub fn total_bytes(&self) -> u64 {
        self.operators
            .iter()
            .map(|o| {
                o.keyed_states.iter().map(|s| s.bytes).sum::<u64>()
                    + o.operator_states.iter().map(|s| s.bytes).sum::<u64>()
            })
            .sum()
    }

    /// Every state file the metadata references, sorted, once each.
    pub fn files(&self) -> Vec<&str> {
        files_of(self.operators.iter())
    }
}

impl OperatorMetadata {
    /// Every section the operator's states reference.
    pub fn sections(&self) -> impl Iterator<Item = &SectionRef> {
        self.keyed_states
            .iter()
            .flat_map(|s| s.key_groups.iter().map(|g| &g.at))
            .chain(
                self.operator_states
                    .iter()
                    .flat_map(|s| s.subtasks.iter().map(|t| &t.at)),
            )
    }
}

/// The state files `operators` reference, sorted, once each.
pub fn files_of<'a>(operators: impl Iterator<Item = &'a OperatorMetadata>) -> Vec<&'a str> {
    let mut files: Vec<&str> = operators
        .flat_map(|o| o.sections().map(|at| at.file.as_str()))
        .collect();
    files.sort_unstable();
    files.dedup();
    files
}

#[derive(Serialize)]
struct MetadataFile<'a> {
    format: &'static str,
    #[serde(flatten)]
    metadata: &'a SavepointMetadata,
}

/// Encodes a savepoint's `_metadata` as pretty-printed JSON.
pub fn encode_metadata(m: &SavepointMetadata) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(&MetadataFile {
        format: SAVEPOINT_FORMAT,
        metadata: m,
    })
    .expect("invariant: savepoint metadata has only string map keys and finite numbers");
    out.push(b'\n');
    out
}

/// The `format` field of a `_metadata` document, if it is a JSON object
/// with one.
pub fn metadata_format(bytes: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    json.get("format")?.as_str().map(str::to_owned)
}

/// Decodes a savepoint's `_metadata`.
///
/// # Errors
/// [`FormatError`] naming `file`: not JSON, not `"format":
/// "weir-savepoint"`, a newer version, missing or unknown fields, or a
/// file reference that is not a plain file name inside the directory.
pub fn decode_metadata(file: &str, bytes: &[u8]) -> Result<SavepointMetadata, FormatError> {
    let fields = metadata_fields(
        file,
        bytes,
        SAVEPOINT_FORMAT,
        "savepoint",
        SAVEPOINT_METADATA_VERSION,
    )?;
    let m: SavepointMetadata = serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| FormatError::new(file, format!("invalid savepoint metadata: {e}")))?;
    check_names(&m).map_err(|message| FormatError::new(file, message))?;
    if m.version >= 2
        && let Some(o) = m.operators.iter().find(|o| o.source_offsets.is_some())
    {
        return Err(FormatError::new(
            file,
            format!(
                "operator `{}`: field `source_offsets` belongs to version 1; version {} stores a source's positions as its `source` operator state",
                o.uid, m.version
            ),
        ));
    }
    Ok(m)
}

/// Checks every name the metadata would have a reader join onto a
/// directory: state files and sink parts (every metadata version has the
/// same fields).
fn check_names(m: &SavepointMetadata) -> Result<(), String> {
    for o in &m.operators {
        for s in &o.keyed_states {
            for g in &s.key_groups {
                let what = format!(
                    "operator `{}` keyed state `{}` key group {}: field `file`",
                    o.uid, s.name, g.key_group
                );
                check_file_name(&what, &g.at.file)?;
            }
        }
        for s in &o.operator_states {
            for t in &s.subtasks {
                let what = format!(
                    "operator `{}` operator state `{}` subtask {}: field `file`",
                    o.uid, s.name, t.subtask
                );
                check_file_name(&what, &t.at.file)?;
            }
        }
        for (i, sink) in o.sink.iter().flatten().enumerate() {
            check_sink(
                &format!("operator `{}`: field `sink[{i}].pending`", o.uid),
                sink,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{KeyGroupSnapshot, NamedStateSnapshot};

    fn keyed() -> Vec<KeyGroupSnapshot> {
        vec![
            KeyGroupSnapshot {
                key_group: 3,
                states: vec![
                    NamedStateSnapshot {
                        name: "count".into(),
                        entries: StateEntries::Value(vec![(b"a".to_vec(), Value::Int(2))]),
                    },
                    NamedStateSnapshot {
                        name: "items".into(),
                        entries: StateEntries::Map(vec![(
                            b"a".to_vec(),
                            vec![(Value::Text("x".into()), Value::Int(1))],
                        )]),
                    },
                ],
            },
            KeyGroupSnapshot {
                key_group: 1,
                states: vec![NamedStateSnapshot {
                    name: "count".into(),
                    entries: StateEntries::Value(vec![
                        (b"b".to_vec(), Value::Int(1)),
                        (b"c".to_vec(), Value::Int(5)),
                    ]),
                }],
            },
        ]
    }

    #[test]
    fn a_state_file_round_trips_section_by_section_and_whole() {
        let ops = vec![ListSection::user(
            "offsets",
            Redistribution::Split,
            vec![Value::Uint(7), Value::Uint(9)],
        )];
        let (bytes, sections) = encode_state_file(&keyed(), &ops);
        let order: Vec<(String, Option<u32>, u64)> = sections
            .iter()
            .map(|s| (s.state.clone(), s.key_group, s.count))
            .collect();
        assert_eq!(
            order,
            [
                ("count".into(), Some(1), 2),
                ("count".into(), Some(3), 1),
                ("items".into(), Some(3), 1),
                ("offsets".into(), None, 2),
            ]
        );
        let whole = decode_state_file("f", &bytes).unwrap();
        assert_eq!(whole.len(), 4);
        for (s, decoded) in sections.iter().zip(&whole) {
            let at = SectionRef {
                file: "f".into(),
                offset: s.offset,
                len: s.len,
                count: s.count,
            };
            assert_eq!(&decode_section("f", &bytes, &at).unwrap(), decoded);
        }
        let Section::Keyed(first) = &whole[0] else {
            panic!("first section is keyed")
        };
        assert_eq!((first.state.as_str(), first.key_group), ("count", 1));
    }

    #[test]
    fn every_truncation_and_flipped_byte_is_an_error_naming_the_file() {
        let (bytes, _) = encode_state_file(&keyed(), &[]);
        for n in 0..bytes.len() {
            let e = decode_state_file("sp/x.state", &bytes[..n]).unwrap_err();
            assert!(e.to_string().contains("sp/x.state"), "{e}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode_state_file("f", &b).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn a_section_reference_outside_the_file_or_of_the_wrong_length_is_refused() {
        let (bytes, sections) = encode_state_file(&keyed(), &[]);
        let s = &sections[0];
        let mut at = SectionRef {
            file: "f".into(),
            offset: s.offset,
            len: s.len + 1,
            count: 0,
        };
        assert!(decode_section("f", &bytes, &at).is_err());
        at.len = s.len;
        at.offset = bytes.len() as u64 + 10;
        assert!(decode_section("f", &bytes, &at).is_err());
        at.offset = 0;
        assert!(decode_section("f", &bytes, &at).is_err());
    }

    fn metadata() -> SavepointMetadata {
        let (_, sections) = encode_state_file(&keyed(), &[]);
        let s = &sections[0];
        SavepointMetadata {
            version: SAVEPOINT_METADATA_VERSION,
            job_name: "wc".into(),
            savepoint_id: 4,
            trigger_time_ms: 1,
            completion_time_ms: 2,
            max_parallelism: 128,
            operators: vec![OperatorMetadata {
                uid: "count".into(),
                parallelism: 2,
                keyed_states: vec![KeyedStateMetadata {
                    name: "count".into(),
                    kind: KindName::Value,
                    type_name: Some("int".into()),
                    keys: 2,
                    bytes: s.len,
                    key_groups: vec![KeyGroupSectionRef {
                        key_group: 1,
                        at: SectionRef {
                            file: "count-0.state".into(),
                            offset: s.offset,
                            len: s.len,
                            count: 2,
                        },
                    }],
                }],
                operator_states: Vec::new(),
                source_offsets: None,
                sink: None,
            }],
        }
    }

    #[test]
    fn metadata_round_trips_and_is_checked() {
        let m = metadata();
        let bytes = encode_metadata(&m);
        assert_eq!(metadata_format(&bytes).as_deref(), Some(SAVEPOINT_FORMAT));
        assert_eq!(decode_metadata("m", &bytes).unwrap(), m);

        for bad in crate::checkpoint::tests::BAD_NAMES {
            let mut escaping = m.clone();
            escaping.operators[0].keyed_states[0].key_groups[0].at.file = (*bad).into();
            let e = decode_metadata("sp/_metadata", &encode_metadata(&escaping)).unwrap_err();
            let shown = e.to_string();
            assert!(
                shown.starts_with(
                    "sp/_metadata: operator `count` keyed state `count` key group 1: field `file`: "
                ),
                "{shown}"
            );
            assert!(shown.contains("not a plain file name"), "{shown}");

            let mut sink = m.clone();
            sink.operators[0].sink = Some(vec![
                SinkSnapshot::default(),
                SinkSnapshot {
                    pending: vec![(*bad).into()],
                    next_part: 1,
                },
            ]);
            let e = decode_metadata("sp/_metadata", &encode_metadata(&sink)).unwrap_err();
            let shown = e.to_string();
            assert!(
                shown.contains("operator `count`: field `sink[1].pending`[0]: "),
                "{shown}"
            );
        }
        let mut op_state = m.clone();
        op_state.operators[0].operator_states = vec![OperatorStateMetadata {
            namespace: Namespace::User,
            name: "offsets".into(),
            redistribution: Redistribution::Split,
            type_name: None,
            items: 1,
            bytes: 1,
            subtasks: vec![SubtaskSectionRef {
                subtask: 0,
                at: SectionRef {
                    file: "/abs".into(),
                    offset: 10,
                    len: 1,
                    count: 1,
                },
            }],
        }];
        let e = decode_metadata("m", &encode_metadata(&op_state)).unwrap_err();
        assert!(
            e.to_string()
                .contains("operator state `offsets` subtask 0: field `file`: \"/abs\""),
            "{e}"
        );

        let mut newer = m.clone();
        newer.version = SAVEPOINT_METADATA_VERSION + 1;
        assert!(decode_metadata("m", &encode_metadata(&newer)).is_err());

        let checkpoint = br#"{"format": "weir-checkpoint", "version": 1}"#;
        let e = decode_metadata("m", checkpoint).unwrap_err();
        assert!(e.to_string().contains("expected \"weir-savepoint\""), "{e}");
        // Every cut before the closing brace (the newline after it is
        // optional JSON whitespace).
        for n in 0..bytes.len() - 1 {
            assert!(decode_metadata("m", &bytes[..n]).is_err());
        }
    }

    /// Untrusted bytes never panic a decoder: random files and section
    /// references, every single-byte change of a valid file, and any
    /// field of a valid `_metadata` replaced by another JSON value.
    mod props {
        use proptest::prelude::*;

        use super::super::*;
        use super::{keyed, metadata};

        fn json_leaf() -> impl Strategy<Value = serde_json::Value> {
            use serde_json::{Value as J, json};
            prop_oneof![
                Just(J::Null),
                any::<bool>().prop_map(J::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                Just(json!(u64::MAX)),
                any::<f64>()
                    .prop_filter("JSON numbers are finite", |f| f.is_finite())
                    .prop_map(|f| json!(f)),
                prop_oneof![
                    Just("../x.state".to_owned()),
                    Just(String::new()),
                    Just("weir-savepoint".to_owned()),
                    Just("value".to_owned()),
                    Just("union".to_owned()),
                    ".{0,6}",
                ]
                .prop_map(J::String),
                Just(json!([])),
                Just(json!({})),
                Just(json!([{"file": "f", "offset": 0, "len": 0, "count": 0}])),
            ]
        }

        /// JSON pointers to every value in `v`.
        fn pointers(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, child) in m {
                        pointers(child, format!("{at}/{k}"), out);
                    }
                }
                serde_json::Value::Array(items) => {
                    for (i, child) in items.iter().enumerate() {
                        pointers(child, format!("{at}/{i}"), out);
                    }
                }
                _ => {}
            }
            out.push(at);
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn random_bytes_and_references_never_panic(
                bytes in prop::collection::vec(any::<u8>(), 0..96),
                offset in any::<u64>(),
                len in any::<u64>(),
            ) {
                let mut with_prefix = SAVEPOINT_FILE_MAGIC.to_vec();
                with_prefix.extend_from_slice(&SAVEPOINT_FILE_VERSION.to_le_bytes());
                with_prefix.extend_from_slice(&bytes);
                let at = SectionRef { file: "p.state".into(), offset, len, count: 0 };
                for b in [&bytes, &with_prefix] {
                    prop_assert!(decode_state_file("p.state", b).is_err());
                    prop_assert!(decode_section("p.state", b, &at).is_err());
                    prop_assert!(decode_metadata("_metadata", b).is_err());
                }
            }

            #[test]
            fn any_changed_byte_of_a_state_file_is_an_error(
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
            ) {
                let ops = vec![ListSection::user("offsets", Redistribution::Split, vec![Value::Uint(7)])];
                let (mut bytes, sections) = encode_state_file(&keyed(), &ops);
                let i = at.index(bytes.len());
                prop_assume!(bytes[i] != byte);
                bytes[i] = byte;
                prop_assert!(decode_state_file("f", &bytes).is_err());
                // Sections other than the changed one still decode.
                for s in &sections {
                    let r = SectionRef { file: "f".into(), offset: s.offset, len: s.len, count: s.count };
                    let hit = (s.offset..s.offset + s.len).contains(&(i as u64));
                    let decoded = decode_section("f", &bytes, &r);
                    prop_assert_eq!(decoded.is_ok(), !hit && i >= PREFIX_LEN, "byte {} section at {}", i, s.offset);
                }
            }

            #[test]
            fn any_field_of_metadata_replaced_never_panics(
                which in any::<prop::sample::Index>(),
                leaf in json_leaf(),
            ) {
                let mut json: serde_json::Value =
                    serde_json::from_slice(&encode_metadata(&metadata())).unwrap();
                let mut all = Vec::new();
                pointers(&json, String::new(), &mut all);
                let pointer = &all[which.index(all.len())];
                match json.pointer_mut(pointer) {
                    Some(slot) => *slot = leaf,
                    None => unreachable!("every pointer was taken from this value"),
                }
                let bytes = serde_json::to_vec(&json).unwrap();
                if let Ok(m) = decode_metadata("_metadata", &bytes) {
                    // What decodes round-trips.
                    prop_assert_eq!(decode_metadata("_metadata", &encode_metadata(&m)).unwrap(), m);
                }
            }
        }
    }
}
