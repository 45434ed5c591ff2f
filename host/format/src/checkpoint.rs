//! The durable, versioned encodings of a checkpoint: one binary state file
//! per subtask and the `_metadata` JSON that ties them together. The
//! specification is `docs/checkpoint-format.md`; this module is its only
//! implementation, so any change here that alters bytes on disk needs a new
//! version there first.
//!
//! A state file is a magic, a version, then framed sections (header, one
//! per key group, operator state, source, sink, in-flight channels, end
//! marker), each with its length and an xxh3-64 checksum. Payloads are
//! postcard 1.x. Decoding untrusted bytes never panics, never allocates
//! from a length it has not checked against the bytes present, and always
//! names the file and byte offset of what is wrong.
//!
//! Pure data in, bytes out: no I/O, no tokio (storage does that).

use crate::frame::{
    FRAME_OVERHEAD, PREFIX_LEN, byte_strings, check_file_name, decode_payload, escape_segment,
    metadata_fields, read_file_prefix, read_frame, write_frame, write_frame_with,
};
pub use crate::frame::{FormatError, file_name_problem};
use crate::snapshot::{ListSection, Namespace, Redistribution, SourceSplit};
use crate::state::{KeyGroupDelta, KeyGroupSnapshot, NamedStateSnapshot};
use crate::value::Value;
use serde::{Deserialize, Serialize};

/// The first bytes of every state file.
pub const STATE_FILE_MAGIC: [u8; 8] = *b"WEIRSTAT";

/// The state-file version this build writes (and the newest it reads).
/// Version 3 is version 2 plus key-group delta sections (incremental
/// checkpoints); a version-2 file is read as before. Version 1 (fixed
/// operator-state and source sections) is read too.
pub const STATE_FILE_VERSION: u16 = 3;

/// The `_metadata` version this build writes (and the newest it reads).
/// Version 3 adds a subtask's `base` (the earlier checkpoints' state files
/// an incremental checkpoint extends); version 2 has the fields of version
/// 1 and references version-2 state files; version 1 references version-1
/// files.
pub const METADATA_VERSION: u32 = 3;

/// The `format` field of every `_metadata` file.
pub const METADATA_FORMAT: &str = "weir-checkpoint";

/// A checkpoint's id: 1, 2, 3, … within a job, continuing across restores
/// (a job restored from checkpoint 7 takes checkpoint 8 next).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct CheckpointId(pub u64);

impl CheckpointId {
    /// The id after this one.
    pub fn next(self) -> Self {
        CheckpointId(self.0 + 1)
    }
}

impl std::fmt::Display for CheckpointId {
    /// The number, honouring the formatter's width and alignment (the
    /// `weir checkpoints` table aligns on it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

/// Everything one subtask contributes to a checkpoint.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SubtaskSnapshot {
    /// Keyed state, in ascending key-group order.
    pub keyed: Vec<KeyGroupSnapshot>,
    /// Operator list states, one section each: the operator's own and the
    /// host's (a source's splits), sorted by namespace and name.
    pub lists: Vec<ListSection>,
    /// Transactional sinks: what awaits commit.
    pub sink: Option<SinkSnapshot>,
    /// Unaligned checkpoints: the records in flight, per input channel.
    pub in_flight: Vec<InFlightChannel>,
    /// Read from a version-1 file only: a source's bare offset, which the
    /// reader turns into its split once it knows the subtask
    /// ([`SubtaskSnapshot::adopt_v1_source_offset`]). Never written.
    pub v1_source_offset: Option<u64>,
}

impl SubtaskSnapshot {
    /// Whether there is nothing to store (no file needs to be written).
    pub fn is_empty(&self) -> bool {
        self.keyed.is_empty()
            && self.lists.is_empty()
            && self.v1_source_offset.is_none()
            && self.sink.is_none()
            && self.in_flight.is_empty()
    }

    /// The list `name` in `namespace`, if stored.
    pub fn list(&self, namespace: Namespace, name: &str) -> Option<&ListSection> {
        self.lists
            .iter()
            .find(|l| l.namespace == namespace && l.name == name)
    }

    /// A source's splits, if it stored any.
    ///
    /// # Errors
    /// What is wrong with an item that is not a [`SourceSplit`].
    pub fn source_splits(&self) -> Result<Option<Vec<SourceSplit>>, String> {
        SourceSplit::in_lists(&self.lists)
    }

    /// Turns a version-1 source offset, if any, into the split of subtask
    /// `subtask` of `parallelism` ([`SourceSplit::from_v1_offset`]).
    pub fn adopt_v1_source_offset(&mut self, subtask: u32, parallelism: u32) {
        if let Some(offset) = self.v1_source_offset.take() {
            let split = SourceSplit::from_v1_offset(subtask, parallelism, offset);
            self.lists.push(ListSection::source_splits(&[split]));
            self.lists
                .sort_by(|a, b| (a.namespace, &a.name).cmp(&(b.namespace, &b.name)));
        }
    }
}

/// A transactional sink's part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SinkSnapshot {
    /// Pre-committed part files awaiting commit.
    pub pending: Vec<String>,
    /// The number of the next part file.
    pub next_part: u64,
}

/// The records in flight on one input channel (unaligned checkpoints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlightChannel {
    /// The input channel.
    pub channel: u32,
    /// Packed record batches, in order.
    #[serde(with = "byte_strings")]
    pub batches: Vec<Vec<u8>>,
}

/// An encoded state file and where its key groups lie in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedStateFile {
    /// The whole file.
    pub bytes: Vec<u8>,
    /// One extent per key group, ascending, for the `_metadata`.
    pub key_groups: Vec<KeyGroupExtent>,
}

/// Where one key group's section lies in a state file: the whole framed
/// section (tag through checksum), so a ranged read can fetch and verify
/// it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyGroupExtent {
    /// The key group.
    pub key_group: u32,
    /// The section's first byte (its tag), from the start of the file.
    pub offset: u64,
    /// The section's length in bytes, framing included.
    pub len: u64,
}

/// The state file name of subtask `subtask` of vertex `uid`:
/// `<uid>-<subtask>.state`, one path segment.
///
/// Bytes of the uid outside `[A-Za-z0-9._-]` are written `%XX` (uppercase
/// hex), so any uid gives a portable name that cannot leave the checkpoint
/// directory. Readers take names from `_metadata` and never rebuild them.
pub fn state_file_name(uid: &str, subtask: u32) -> String {
    let mut name = String::with_capacity(uid.len() + 12);
    escape_segment(uid, &mut name);
    // A uid of only dots would make `.`/`..`-like names; the suffix below
    // already rules those out, since every name ends in `.state`.
    name.push_str(&format!("-{subtask}.state"));
    name
}

// ---------------------------------------------------------------------------
// State file: sections

/// The tag byte of a key-group section (what a ranged read of a key
/// group's extent starts with).
pub const KEY_GROUP_TAG: u8 = Tag::KeyGroup as u8;

/// Section tags. Durable: values never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Tag {
    Header = 0x01,
    KeyGroup = 0x02,
    /// Version 1 only.
    OperatorState = 0x03,
    /// Version 1 only.
    Source = 0x04,
    Sink = 0x05,
    InFlight = 0x06,
    /// Version 2: one operator list state.
    List = 0x07,
    /// Version 3: what changed in one key group (incremental).
    KeyGroupDelta = 0x08,
    End = 0xFF,
}

impl Tag {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Tag::Header,
            0x02 => Tag::KeyGroup,
            0x03 => Tag::OperatorState,
            0x04 => Tag::Source,
            0x05 => Tag::Sink,
            0x06 => Tag::InFlight,
            0x07 => Tag::List,
            0x08 => Tag::KeyGroupDelta,
            0xFF => Tag::End,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Tag::Header => "header",
            Tag::KeyGroup => "key-group",
            Tag::OperatorState => "operator-state",
            Tag::Source => "source",
            Tag::Sink => "sink",
            Tag::InFlight => "in-flight",
            Tag::List => "list",
            Tag::KeyGroupDelta => "key-group-delta",
            Tag::End => "end",
        }
    }
}

/// The header section: how many repeated sections follow, so a missing
/// one is detected.
#[derive(Debug, Serialize, Deserialize)]
struct FileHeader {
    key_groups: u32,
    in_flight_channels: u32,
}

/// The header section of a version-2 file.
#[derive(Debug, Serialize, Deserialize)]
struct FileHeaderV2 {
    key_groups: u32,
    lists: u32,
    in_flight_channels: u32,
}

fn write_section<T: Serialize + ?Sized>(out: &mut Vec<u8>, tag: Tag, payload: &T) {
    write_frame_with(out, tag as u8, payload);
}

/// One key group's section payload (the postcard encoding of its
/// [`KeyGroupSnapshot`], or of its [`KeyGroupDelta`]), encoded straight
/// from the live state in a checkpoint's synchronous phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedKeyGroup {
    /// The key group.
    pub key_group: u32,
    /// Its section payload.
    pub payload: Vec<u8>,
    /// Whether the payload is a [`KeyGroupDelta`] (a key-group delta
    /// section) rather than the whole group.
    pub delta: bool,
}

fn write_raw_section(out: &mut Vec<u8>, tag: Tag, payload: &[u8]) {
    write_frame(out, tag as u8, payload);
}

/// Encodes a subtask's snapshot as a state file (current version).
///
/// Key groups are written in ascending order whatever the order of
/// `snapshot.keyed`.
///
/// # Panics
/// If two key-group snapshots carry the same key group (a backend hands
/// out each group once).
pub fn encode_state_file(snapshot: &SubtaskSnapshot) -> EncodedStateFile {
    encode_state_file_with(snapshot, Vec::new())
}

/// As [`encode_state_file`], with more key groups already encoded.
///
/// # Panics
/// If a key group appears twice, in `snapshot.keyed` or `encoded`.
pub fn encode_state_file_with(
    snapshot: &SubtaskSnapshot,
    encoded: Vec<EncodedKeyGroup>,
) -> EncodedStateFile {
    let mut keyed: Vec<EncodedKeyGroup> = snapshot
        .keyed
        .iter()
        .map(|g| EncodedKeyGroup {
            key_group: g.key_group,
            payload: postcard::to_allocvec(g)
                .expect("invariant: postcard serializes state into a vector without error"),
            delta: false,
        })
        .chain(encoded)
        .collect();
    keyed.sort_by_key(|g| g.key_group);
    if let Some(w) = keyed.windows(2).find(|w| w[0].key_group == w[1].key_group) {
        panic!(
            "invariant: a subtask snapshot holds key group {} once, found it twice",
            w[0].key_group
        );
    }

    let mut out = Vec::new();
    out.extend_from_slice(&STATE_FILE_MAGIC);
    out.extend_from_slice(&STATE_FILE_VERSION.to_le_bytes());
    let mut lists: Vec<&ListSection> = snapshot.lists.iter().collect();
    lists.sort_by(|a, b| (a.namespace, &a.name).cmp(&(b.namespace, &b.name)));
    if let Some(w) = lists
        .windows(2)
        .find(|w| (w[0].namespace, &w[0].name) == (w[1].namespace, &w[1].name))
    {
        panic!(
            "invariant: a subtask snapshot holds list `{}` of namespace {} once, found it twice",
            w[0].name, w[0].namespace
        );
    }
    let header = FileHeaderV2 {
        key_groups: u32::try_from(keyed.len()).expect("invariant: key groups fit in u32"),
        lists: u32::try_from(lists.len()).expect("invariant: list states fit in u32"),
        in_flight_channels: u32::try_from(snapshot.in_flight.len())
            .expect("invariant: input channels fit in u32"),
    };
    write_section(&mut out, Tag::Header, &header);
    let mut key_groups = Vec::with_capacity(keyed.len());
    for group in keyed {
        let offset = out.len();
        let tag = if group.delta {
            Tag::KeyGroupDelta
        } else {
            Tag::KeyGroup
        };
        write_raw_section(&mut out, tag, &group.payload);
        key_groups.push(KeyGroupExtent {
            key_group: group.key_group,
            offset: offset as u64,
            len: (out.len() - offset) as u64,
        });
    }
    for list in lists {
        write_section(&mut out, Tag::List, list);
    }
    write_section(&mut out, Tag::Sink, &snapshot.sink);
    for channel in &snapshot.in_flight {
        write_section(&mut out, Tag::InFlight, channel);
    }
    write_section(&mut out, Tag::End, &());
    EncodedStateFile {
        bytes: out,
        key_groups,
    }
}

/// A verified section: its tag and payload.
struct Section<'a> {
    tag: Tag,
    /// Where the section starts, from the start of the file.
    offset: u64,
    payload: &'a [u8],
}

/// Reads framed sections from (part of) a state file.
struct Reader<'a> {
    file: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// The file offset of `bytes[0]` (non-zero for a ranged read).
    base: u64,
}

impl<'a> Reader<'a> {
    fn err(&self, message: impl Into<String>) -> FormatError {
        FormatError::new(self.file, message)
    }

    fn at(&self, pos: usize) -> u64 {
        self.base + pos as u64
    }

    /// Reads and verifies the next section, whatever its tag.
    fn next(&mut self) -> Result<Section<'a>, FormatError> {
        let at = self.at(self.pos);
        let frame = read_frame(self.file, self.bytes, self.pos, self.base)?;
        let Some(tag) = Tag::from_byte(frame.tag) else {
            return Err(self.err(format!(
                "unknown section tag 0x{:02x} at byte {at}",
                frame.tag
            )));
        };
        self.pos = frame.next;
        Ok(Section {
            tag,
            offset: at,
            payload: frame.payload,
        })
    }

    /// Reads the next section, which must be a `tag` section.
    fn expect(&mut self, tag: Tag) -> Result<Section<'a>, FormatError> {
        let section = self.next()?;
        if section.tag != tag {
            return Err(self.err(format!(
                "expected the {} section at byte {}, found a {} section",
                tag.name(),
                section.offset,
                section.tag.name()
            )));
        }
        Ok(section)
    }

    /// Decodes a section's payload, which must be exactly one `T`.
    fn decode<T: Deserialize<'a>>(&self, section: &Section<'a>) -> Result<T, FormatError> {
        decode_payload(
            self.file,
            section.tag.name(),
            section.offset,
            section.payload,
        )
    }

    fn key_group(&mut self) -> Result<KeyGroupSnapshot, FormatError> {
        let section = self.expect(Tag::KeyGroup)?;
        self.decode(&section)
    }
}

/// Checks the magic and returns the version.
fn read_prefix(file: &str, bytes: &[u8]) -> Result<u16, FormatError> {
    read_file_prefix(
        file,
        bytes,
        &STATE_FILE_MAGIC,
        "state file",
        STATE_FILE_VERSION,
    )
}

/// Decodes a whole state file.
///
/// # Errors
/// [`FormatError`] naming `file` (the display path) and what is wrong: not
/// a state file, a newer version, truncated, a checksum mismatch, a
/// section missing, out of order or undecodable, bytes after the end.
pub fn decode_state_file(file: &str, bytes: &[u8]) -> Result<SubtaskSnapshot, FormatError> {
    let (snapshot, deltas) = decode_state_file_with_deltas(file, bytes)?;
    if let Some(d) = deltas.first() {
        return Err(FormatError::new(
            file,
            format!(
                "holds key-group delta sections (key group {} first): it is part of an \
                 incremental checkpoint, read with the files its `_metadata` lists as `base`",
                d.key_group
            ),
        ));
    }
    Ok(snapshot)
}

/// Decodes a whole state file that may hold key-group delta sections
/// (version 3, an incremental checkpoint's): the snapshot with its whole
/// key groups, and the deltas, each ascending by key group.
///
/// # Errors
/// As [`decode_state_file`], and a delta section in a file older than
/// version 3.
pub fn decode_state_file_with_deltas(
    file: &str,
    bytes: &[u8],
) -> Result<(SubtaskSnapshot, Vec<KeyGroupDelta>), FormatError> {
    let version = read_prefix(file, bytes)?;
    let mut r = Reader {
        file,
        bytes,
        pos: PREFIX_LEN,
        base: 0,
    };
    let header_section = r.expect(Tag::Header)?;
    let header = if version == 1 {
        let v1: FileHeader = r.decode(&header_section)?;
        FileHeaderV2 {
            key_groups: v1.key_groups,
            lists: 0,
            in_flight_channels: v1.in_flight_channels,
        }
    } else {
        r.decode(&header_section)?
    };
    // The counts come from the file: a section takes at least
    // FRAME_OVERHEAD bytes, which bounds any honest count.
    let most = bytes.len() / FRAME_OVERHEAD;
    let mut keyed = Vec::with_capacity((header.key_groups as usize).min(most));
    let mut deltas: Vec<KeyGroupDelta> = Vec::new();
    let mut prev: Option<u32> = None;
    for _ in 0..header.key_groups {
        let section = r.next()?;
        let key_group = match section.tag {
            Tag::KeyGroup => {
                let group: KeyGroupSnapshot = r.decode(&section)?;
                let kg = group.key_group;
                keyed.push(group);
                kg
            }
            Tag::KeyGroupDelta if version >= 3 => {
                let delta: KeyGroupDelta = r.decode(&section)?;
                let kg = delta.key_group;
                deltas.push(delta);
                kg
            }
            other => {
                return Err(r.err(format!(
                    "expected a key-group section at byte {}, found a {} section",
                    section.offset,
                    other.name()
                )));
            }
        };
        if let Some(prev) = prev
            && prev >= key_group
        {
            return Err(r.err(format!(
                "key group {key_group} in the section at byte {} follows key group {prev}: not ascending",
                section.offset
            )));
        }
        prev = Some(key_group);
    }
    let mut lists: Vec<ListSection> = Vec::with_capacity((header.lists as usize).min(most));
    let mut v1_source_offset = None;
    if version == 1 {
        let section = r.expect(Tag::OperatorState)?;
        let operator_state: Vec<(String, Vec<Value>)> = r.decode(&section)?;
        // Version 1 did not record how a list is redistributed: split,
        // the default, as version-1 restores dealt every list.
        lists.extend(
            operator_state
                .into_iter()
                .map(|(name, items)| ListSection::user(name, Redistribution::Split, items)),
        );
        let section = r.expect(Tag::Source)?;
        v1_source_offset = r.decode(&section)?;
    } else {
        for _ in 0..header.lists {
            let section = r.expect(Tag::List)?;
            let list: ListSection = r.decode(&section)?;
            if let Some(prev) = lists.last()
                && (prev.namespace, &prev.name) >= (list.namespace, &list.name)
            {
                return Err(r.err(format!(
                    "list `{}` ({} namespace) in the section at byte {} follows list `{}` ({} namespace): not ascending",
                    list.name, list.namespace, section.offset, prev.name, prev.namespace
                )));
            }
            lists.push(list);
        }
    }
    let section = r.expect(Tag::Sink)?;
    let sink: Option<SinkSnapshot> = r.decode(&section)?;
    if let Some(sink) = &sink {
        let what = format!(
            "the sink section at byte {}: field `pending`",
            section.offset
        );
        check_sink(&what, sink).map_err(|m| r.err(m))?;
    }
    let mut in_flight = Vec::with_capacity((header.in_flight_channels as usize).min(most));
    for _ in 0..header.in_flight_channels {
        let section = r.expect(Tag::InFlight)?;
        in_flight.push(r.decode(&section)?);
    }
    let end = r.expect(Tag::End)?;
    r.decode::<()>(&end)?;
    if r.pos != bytes.len() {
        return Err(r.err(format!(
            "{} bytes after the end marker at byte {}",
            bytes.len() - r.pos,
            end.offset
        )));
    }
    Ok((
        SubtaskSnapshot {
            keyed,
            lists,
            v1_source_offset,
            sink,
            in_flight,
        },
        deltas,
    ))
}

/// The state of one subtask of an incremental checkpoint: the files of its
/// chain, oldest first (its `base`, then its own `file`), merged. Whole
/// key groups replace what came before; deltas are applied over it
/// ([`KeyGroupDelta::apply_to`]). Operator lists, the sink and the
/// in-flight records are the last file's alone.
///
/// # Errors
/// A delta changing a state as another kind than the chain holds it.
pub fn merge_chain(
    chain: Vec<(SubtaskSnapshot, Vec<KeyGroupDelta>)>,
) -> Result<SubtaskSnapshot, String> {
    use std::collections::BTreeMap;
    // Per key group: the whole group last written, and the deltas after
    // it, in order. Each group's deltas are then applied in one pass.
    let mut groups: BTreeMap<u32, (Vec<NamedStateSnapshot>, Vec<KeyGroupDelta>)> = BTreeMap::new();
    let mut last = SubtaskSnapshot::default();
    for (mut snapshot, deltas) in chain {
        for g in std::mem::take(&mut snapshot.keyed) {
            groups.insert(g.key_group, (g.states, Vec::new()));
        }
        for d in deltas {
            groups.entry(d.key_group).or_default().1.push(d);
        }
        last = snapshot;
    }
    let mut keyed = Vec::with_capacity(groups.len());
    for (key_group, (mut states, deltas)) in groups {
        KeyGroupDelta::apply_all(&mut states, deltas)?;
        if !states.is_empty() {
            keyed.push(KeyGroupSnapshot { key_group, states });
        }
    }
    last.keyed = keyed;
    Ok(last)
}

/// Decodes only the given key groups' sections of a whole state file (for
/// a restore at another parallelism), using the extents recorded in the
/// `_metadata`; groups come back in the order of `extents`.
///
/// # Errors
/// [`FormatError`] naming `file`: not a state file, a newer version, an
/// extent outside the file, or a section that is corrupt, not a key-group
/// section, or holds another key group than its extent says.
pub fn decode_key_groups(
    file: &str,
    bytes: &[u8],
    extents: &[KeyGroupExtent],
) -> Result<Vec<KeyGroupSnapshot>, FormatError> {
    read_prefix(file, bytes)?;
    extents
        .iter()
        .map(|extent| {
            let range = usize::try_from(extent.offset)
                .ok()
                .zip(usize::try_from(extent.len).ok())
                .and_then(|(start, len)| Some(start..start.checked_add(len)?))
                .filter(|r| r.start >= PREFIX_LEN && r.end <= bytes.len());
            let Some(range) = range else {
                return Err(FormatError::new(
                    file,
                    format!(
                        "key group {}: extent {}+{} lies outside the file's sections (bytes {PREFIX_LEN}..{})",
                        extent.key_group,
                        extent.offset,
                        extent.len,
                        bytes.len()
                    ),
                ));
            };
            decode_key_group_section(file, extent, &bytes[range])
        })
        .collect()
}

/// Decodes one key-group section fetched by a ranged read of exactly
/// `extent` from a state file whose version the caller knows is the
/// current one (every version-1 `_metadata` references version-1 files).
///
/// # Errors
/// [`FormatError`] naming `file`: `section` is not exactly one verified
/// key-group section of `extent.len` bytes, or holds another key group.
pub fn decode_key_group_section(
    file: &str,
    extent: &KeyGroupExtent,
    section: &[u8],
) -> Result<KeyGroupSnapshot, FormatError> {
    if section.len() as u64 != extent.len {
        return Err(FormatError::new(
            file,
            format!(
                "key group {}: got {} bytes for the section at byte {}, its extent says {}",
                extent.key_group,
                section.len(),
                extent.offset,
                extent.len
            ),
        ));
    }
    let mut r = Reader {
        file,
        bytes: section,
        pos: 0,
        base: extent.offset,
    };
    let group = r.key_group()?;
    if r.pos != section.len() {
        return Err(r.err(format!(
            "key group {}: the extent at byte {} is {} bytes longer than its section",
            extent.key_group,
            extent.offset,
            section.len() - r.pos
        )));
    }
    if group.key_group != extent.key_group {
        return Err(r.err(format!(
            "the section at byte {} holds key group {}, its extent says {}",
            extent.offset, group.key_group, extent.key_group
        )));
    }
    Ok(group)
}

// ---------------------------------------------------------------------------
// _metadata

/// A completed checkpoint's `_metadata`: what was stored, where, and how
/// long it took. Encoded as JSON with `"format": "weir-checkpoint"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMetadata {
    /// The metadata version ([`METADATA_VERSION`] when written by this
    /// build).
    pub version: u32,
    /// The job's name.
    pub job_name: String,
    /// The checkpoint's id.
    pub checkpoint_id: CheckpointId,
    /// When the checkpoint was triggered, in Unix epoch milliseconds.
    pub trigger_time_ms: u64,
    /// When it completed, in Unix epoch milliseconds.
    pub completion_time_ms: u64,
    /// The number of key groups (the job's `max_parallelism`).
    pub max_parallelism: u32,
    /// Whether barriers were aligned for exactly-once (else at-least-once).
    pub exactly_once: bool,
    /// Whether the checkpoint was unaligned (in-flight records stored).
    pub unaligned: bool,
    /// Whether this is the checkpoint a bounded job takes when its input
    /// ends.
    pub is_final: bool,
    /// Every vertex, with its subtasks' files.
    pub vertices: Vec<VertexMetadata>,
}

/// One vertex (source, operator or sink) of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VertexMetadata {
    /// The vertex's uid.
    pub uid: String,
    /// Its parallelism when the checkpoint was taken.
    pub parallelism: u32,
    /// One entry per subtask, by index.
    pub subtasks: Vec<SubtaskMetadata>,
}

/// One subtask's part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubtaskMetadata {
    /// The subtask index.
    pub subtask: u32,
    /// Its state file, relative to the checkpoint directory (e.g.
    /// `tokenize-0.state`); `None` when the subtask had nothing to store.
    pub file: Option<String>,
    /// The state file's size in bytes (0 without a file).
    pub size: u64,
    /// The first key group the subtask owned.
    pub key_group_start: u32,
    /// One past the last key group it owned.
    pub key_group_end: u32,
    /// Where each non-empty key group lies in the state file.
    pub key_groups: Vec<KeyGroupExtent>,
    /// An incremental checkpoint's base: state files of earlier
    /// checkpoints of the same job, oldest first, whose keyed state a
    /// restore reads before `file`'s (which then holds deltas). Empty for
    /// a self-contained subtask. Version 3.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub base: Vec<StateFileRef>,
    /// Milliseconds of the synchronous part (processing paused).
    #[serde(serialize_with = "finite_ms")]
    pub sync_ms: f64,
    /// Milliseconds of the asynchronous part (encode and upload).
    #[serde(serialize_with = "finite_ms")]
    pub async_ms: f64,
    /// Milliseconds from the first barrier to the last (alignment).
    #[serde(serialize_with = "finite_ms")]
    pub alignment_ms: f64,
}

/// A state file of an earlier checkpoint of the same job, which an
/// incremental checkpoint's subtask extends: `chk-<checkpoint>/<file>` in
/// the job's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFileRef {
    /// The checkpoint whose directory holds the file.
    pub checkpoint: CheckpointId,
    /// The file's name in that directory.
    pub file: String,
    /// Its size in bytes.
    pub size: u64,
    /// Where its key groups lie in it.
    pub key_groups: Vec<KeyGroupExtent>,
}

impl StateFileRef {
    /// The file's path relative to the job's directory.
    pub fn path(&self) -> String {
        format!("chk-{}/{}", self.checkpoint, self.file)
    }
}

/// Writes a timing, or 0 for a non-finite one: JSON has no NaN, and
/// serde_json would write `null`, which no reader accepts as a number.
fn finite_ms<S: serde::Serializer>(ms: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(if ms.is_finite() { *ms } else { 0.0 })
}

impl CheckpointMetadata {
    /// The bytes of the state files this checkpoint wrote (an incremental
    /// one's changes: Flink's "checkpointed data size").
    pub fn total_bytes(&self) -> u64 {
        self.vertices
            .iter()
            .flat_map(|v| &v.subtasks)
            .map(|s| s.size)
            .sum()
    }

    /// Whether a subtask extends earlier checkpoints' files (`base`).
    pub fn is_incremental(&self) -> bool {
        self.vertices
            .iter()
            .flat_map(|v| &v.subtasks)
            .any(|s| !s.base.is_empty())
    }

    /// The bytes a restore reads: its files and every file of its base
    /// (Flink's "full checkpoint data size").
    pub fn full_bytes(&self) -> u64 {
        self.vertices
            .iter()
            .flat_map(|v| &v.subtasks)
            .map(|s| s.size + s.base.iter().map(|b| b.size).sum::<u64>())
            .sum()
    }

    /// Milliseconds from trigger to completion.
    pub fn duration_ms(&self) -> u64 {
        self.completion_time_ms.saturating_sub(self.trigger_time_ms)
    }

    /// The slowest subtask's time in one phase, as Flink reports it, e.g.
    /// `m.slowest(|s| s.sync_ms)`.
    pub fn slowest(&self, phase: fn(&SubtaskMetadata) -> f64) -> f64 {
        self.vertices
            .iter()
            .flat_map(|v| &v.subtasks)
            .map(phase)
            .fold(0.0, f64::max)
    }
}

impl VertexMetadata {
    /// The bytes of this vertex's state files together.
    pub fn bytes(&self) -> u64 {
        self.subtasks.iter().map(|s| s.size).sum()
    }
}

/// The `_metadata` file as written: the format tag first, then the fields.
#[derive(Serialize)]
struct MetadataFile<'a> {
    format: &'static str,
    #[serde(flatten)]
    metadata: &'a CheckpointMetadata,
}

/// Encodes `_metadata` as pretty-printed JSON.
pub fn encode_metadata(m: &CheckpointMetadata) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(&MetadataFile {
        format: METADATA_FORMAT,
        metadata: m,
    })
    .expect("invariant: checkpoint metadata has only string map keys and finite numbers");
    out.push(b'\n');
    out
}

/// Decodes `_metadata`.
///
/// # Errors
/// [`FormatError`] naming `file`: not JSON, a wrong or missing `format`, a
/// newer version, missing or unknown fields, or a state file reference
/// or sink part name that is not a plain file name.
pub fn decode_metadata(file: &str, bytes: &[u8]) -> Result<CheckpointMetadata, FormatError> {
    let fields = metadata_fields(file, bytes, METADATA_FORMAT, "checkpoint", METADATA_VERSION)?;
    let metadata: CheckpointMetadata = serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| FormatError::new(file, format!("invalid checkpoint metadata: {e}")))?;
    for vertex in &metadata.vertices {
        for subtask in &vertex.subtasks {
            if let Some(name) = &subtask.file {
                let what = format!(
                    "vertex `{}` subtask {}: field `file`",
                    vertex.uid, subtask.subtask
                );
                check_file_name(&what, name).map_err(|m| FormatError::new(file, m))?;
            }
            for (i, base) in subtask.base.iter().enumerate() {
                let what = format!(
                    "vertex `{}` subtask {}: field `base`[{i}].file",
                    vertex.uid, subtask.subtask
                );
                check_file_name(&what, &base.file).map_err(|m| FormatError::new(file, m))?;
                if base.checkpoint >= metadata.checkpoint_id {
                    return Err(FormatError::new(
                        file,
                        format!(
                            "vertex `{}` subtask {}: field `base`[{i}].checkpoint is {}, not earlier than the checkpoint itself ({})",
                            vertex.uid, subtask.subtask, base.checkpoint, metadata.checkpoint_id
                        ),
                    ));
                }
            }
        }
    }
    Ok(metadata)
}

/// Why `name` is not the name of a `file` sink's pre-committed part,
/// `.part-<subtask>-<n>.pending`, or `None` if it is one. The sink joins
/// these names onto its directory and renames them, so nothing else may
/// pass.
pub fn pending_part_problem(name: &str) -> Option<String> {
    if let Some(why) = file_name_problem(name) {
        return Some(why);
    }
    let numbers = name
        .strip_prefix(".part-")
        .and_then(|r| r.strip_suffix(".pending"))
        .and_then(|r| r.split_once('-'));
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    match numbers {
        Some((subtask, n)) if digits(subtask) && digits(n) => None,
        _ => Some("a pending part is named `.part-<subtask>-<n>.pending`".into()),
    }
}

/// Checks a sink's pending part names, naming the field (`what`, e.g.
/// `sink.pending`) and index of a bad one.
///
/// # Errors
/// A message naming the field, the name and why it is refused.
pub fn check_sink(what: &str, sink: &SinkSnapshot) -> Result<(), String> {
    for (i, name) in sink.pending.iter().enumerate() {
        if let Some(why) = pending_part_problem(name) {
            return Err(format!(
                "{what}[{i}]: {name:?} is not a pending part file name ({why})"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use xxhash_rust::xxh3::xxh3_64;

    use super::*;
    use crate::frame::FRAME_HEAD;
    use crate::state::{NamedStateSnapshot, StateEntries};

    const FILE: &str = "chk-3/tokenize-0.state";

    fn every_value() -> Vec<Value> {
        vec![
            Value::Boolean(true),
            Value::Int(-7),
            Value::Uint(u64::MAX),
            Value::Float(-0.0),
            Value::Float(f64::INFINITY),
            Value::Text("héllo".into()),
            Value::Bytes(vec![0, 255, 7]),
            Value::None,
            Value::List(vec![Value::None, Value::List(vec![Value::Int(1)])]),
            Value::Map(vec![
                (Value::Text("k".into()), Value::Bytes(vec![])),
                (
                    Value::Int(2),
                    Value::Map(vec![(Value::None, Value::Boolean(false))]),
                ),
            ]),
            Value::Record(vec![
                ("a".into(), Value::Uint(1)),
                (
                    "nested".into(),
                    Value::Record(vec![("b".into(), Value::List(vec![]))]),
                ),
            ]),
        ]
    }

    fn rich() -> SubtaskSnapshot {
        let values = every_value();
        SubtaskSnapshot {
            keyed: vec![
                KeyGroupSnapshot {
                    key_group: 3,
                    states: vec![
                        NamedStateSnapshot {
                            name: "count".into(),
                            entries: StateEntries::Value(
                                values
                                    .iter()
                                    .enumerate()
                                    .map(|(i, v)| (vec![i as u8; i], v.clone()))
                                    .collect(),
                            ),
                        },
                        NamedStateSnapshot {
                            name: "list".into(),
                            entries: StateEntries::List(vec![(b"k".to_vec(), values.clone())]),
                        },
                        NamedStateSnapshot {
                            name: "map".into(),
                            entries: StateEntries::Map(vec![(
                                b"k".to_vec(),
                                values
                                    .iter()
                                    .cloned()
                                    .zip(values.iter().rev().cloned())
                                    .collect(),
                            )]),
                        },
                    ],
                },
                KeyGroupSnapshot {
                    key_group: 9,
                    states: vec![NamedStateSnapshot {
                        name: "empty".into(),
                        entries: StateEntries::Value(vec![]),
                    }],
                },
                KeyGroupSnapshot {
                    key_group: 70,
                    states: vec![NamedStateSnapshot {
                        name: "count".into(),
                        entries: StateEntries::Value(vec![(b"x".to_vec(), Value::Int(1))]),
                    }],
                },
            ],
            lists: vec![
                ListSection::user("buffer", Redistribution::Split, values),
                ListSection::user("none", Redistribution::Union, vec![]),
                ListSection::source_splits(&[
                    SourceSplit::numbered(0, 3, 1 << 40, false),
                    SourceSplit::numbered(2, 3, 7, true),
                ]),
            ],
            sink: Some(SinkSnapshot {
                pending: vec![".part-0-3.pending".into(), ".part-0-4.pending".into()],
                next_part: 5,
            }),
            in_flight: vec![
                InFlightChannel {
                    channel: 0,
                    batches: vec![vec![1, 2, 3], vec![]],
                },
                InFlightChannel {
                    channel: 2,
                    batches: vec![],
                },
            ],
            v1_source_offset: None,
        }
    }

    fn small() -> SubtaskSnapshot {
        SubtaskSnapshot {
            keyed: vec![
                KeyGroupSnapshot {
                    key_group: 1,
                    states: vec![NamedStateSnapshot {
                        name: "c".into(),
                        entries: StateEntries::Value(vec![(b"a".to_vec(), Value::Int(2))]),
                    }],
                },
                KeyGroupSnapshot {
                    key_group: 4,
                    states: vec![NamedStateSnapshot {
                        name: "l".into(),
                        entries: StateEntries::List(vec![(b"b".to_vec(), vec![Value::None])]),
                    }],
                },
            ],
            lists: vec![ListSection::user(
                "o",
                Redistribution::Split,
                vec![Value::Text("t".into())],
            )],
            sink: Some(SinkSnapshot {
                pending: vec![".part-1-0.pending".into()],
                next_part: 1,
            }),
            in_flight: vec![InFlightChannel {
                channel: 1,
                batches: vec![vec![9]],
            }],
            v1_source_offset: None,
        }
    }

    fn message(r: Result<impl std::fmt::Debug, FormatError>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.file, FILE);
        let shown = e.to_string();
        assert!(shown.starts_with(&format!("{FILE}: ")), "{shown}");
        shown
    }

    #[test]
    fn a_checkpoint_id_honours_width_and_alignment() {
        assert_eq!(format!("{:>6}|", CheckpointId(42)), "    42|");
        assert_eq!(format!("{:<4}|", CheckpointId(7)), "7   |");
        assert_eq!(CheckpointId(123).to_string(), "123");
    }

    fn value_state(name: &str, entries: &[(&[u8], i64)]) -> NamedStateSnapshot {
        NamedStateSnapshot {
            name: name.into(),
            entries: StateEntries::Value(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_vec(), Value::Int(*v)))
                    .collect(),
            ),
        }
    }

    fn delta_group(delta: &KeyGroupDelta) -> EncodedKeyGroup {
        EncodedKeyGroup {
            key_group: delta.key_group,
            payload: postcard::to_allocvec(delta).unwrap(),
            delta: true,
        }
    }

    #[test]
    fn a_chain_of_a_full_file_and_deltas_restores_the_state_as_it_was_last() {
        use crate::state::RemovedKeys;
        let base = SubtaskSnapshot {
            keyed: vec![
                KeyGroupSnapshot {
                    key_group: 1,
                    states: vec![value_state("c", &[(b"a", 1), (b"b", 2)])],
                },
                KeyGroupSnapshot {
                    key_group: 2,
                    states: vec![value_state("c", &[(b"x", 9)])],
                },
            ],
            ..SubtaskSnapshot::default()
        };
        let first = KeyGroupDelta {
            key_group: 1,
            changed: vec![
                value_state("c", &[(b"a", 10)]),
                value_state("d", &[(b"a", 1)]),
            ],
            removed: vec![RemovedKeys {
                name: "c".into(),
                keys: vec![b"b".to_vec()],
            }],
        };
        // Key group 2 loses its only key, and so the group.
        let second = KeyGroupDelta {
            key_group: 2,
            changed: Vec::new(),
            removed: vec![RemovedKeys {
                name: "c".into(),
                keys: vec![b"x".to_vec()],
            }],
        };
        let last = SubtaskSnapshot {
            lists: vec![ListSection::user(
                "o",
                Redistribution::Split,
                vec![Value::Int(1)],
            )],
            ..SubtaskSnapshot::default()
        };
        let files = [
            encode_state_file(&base),
            encode_state_file_with(&SubtaskSnapshot::default(), vec![delta_group(&first)]),
            encode_state_file_with(&last, vec![delta_group(&second)]),
        ];
        // Alone, a delta file is refused by the plain reader.
        let shown = message(decode_state_file(FILE, &files[1].bytes));
        assert!(shown.contains("holds key-group delta sections"), "{shown}");
        let chain = files
            .iter()
            .map(|f| decode_state_file_with_deltas(FILE, &f.bytes).unwrap())
            .collect();
        let merged = merge_chain(chain).unwrap();
        assert_eq!(
            merged.keyed,
            vec![KeyGroupSnapshot {
                key_group: 1,
                states: vec![
                    value_state("c", &[(b"a", 10)]),
                    value_state("d", &[(b"a", 1)])
                ],
            }]
        );
        assert_eq!(merged.lists, last.lists);
        // A delta changing a state as another kind is refused.
        let wrong = KeyGroupDelta {
            key_group: 1,
            changed: vec![NamedStateSnapshot {
                name: "c".into(),
                entries: StateEntries::List(vec![(b"a".to_vec(), vec![])]),
            }],
            removed: Vec::new(),
        };
        let e = merge_chain(vec![
            (base.clone(), Vec::new()),
            (SubtaskSnapshot::default(), vec![wrong]),
        ])
        .unwrap_err();
        assert!(
            e.contains("state `c` holds value entries, the delta changes list entries"),
            "{e}"
        );
    }

    #[test]
    fn deltas_applied_together_give_what_one_by_one_gives() {
        use crate::state::RemovedKeys;
        let base = vec![
            value_state("c", &[(b"a", 1), (b"b", 2), (b"c", 3)]),
            value_state("gone", &[(b"z", 1)]),
        ];
        let removed = |name: &str, keys: &[&[u8]]| RemovedKeys {
            name: name.into(),
            keys: keys.iter().map(|k| k.to_vec()).collect(),
        };
        let deltas = vec![
            KeyGroupDelta {
                key_group: 1,
                changed: vec![value_state("c", &[(b"a", 10), (b"d", 4)])],
                removed: vec![removed("c", &[b"b"]), removed("gone", &[b"z"])],
            },
            // `b` comes back, `a` goes, a new state appears.
            KeyGroupDelta {
                key_group: 1,
                changed: vec![
                    value_state("c", &[(b"b", 20)]),
                    value_state("new", &[(b"n", 1)]),
                ],
                removed: vec![removed("c", &[b"a"])],
            },
            KeyGroupDelta {
                key_group: 1,
                changed: vec![value_state("c", &[(b"d", 40)])],
                removed: Vec::new(),
            },
        ];
        let mut one_by_one = base.clone();
        for d in deltas.clone() {
            d.apply_to(&mut one_by_one).unwrap();
        }
        let mut together = base;
        KeyGroupDelta::apply_all(&mut together, deltas).unwrap();
        let sort = |mut states: Vec<NamedStateSnapshot>| {
            for s in &mut states {
                if let StateEntries::Value(e) = &mut s.entries {
                    e.sort_by(|a, b| a.0.cmp(&b.0));
                }
            }
            states
        };
        assert_eq!(sort(together.clone()), sort(one_by_one));
        assert_eq!(
            sort(together),
            vec![
                value_state("c", &[(b"b", 20), (b"c", 3), (b"d", 40)]),
                value_state("new", &[(b"n", 1)]),
            ]
        );
    }

    #[test]
    fn a_version_2_file_with_a_delta_section_is_refused() {
        let delta = KeyGroupDelta {
            key_group: 1,
            changed: Vec::new(),
            removed: Vec::new(),
        };
        let mut bytes =
            encode_state_file_with(&SubtaskSnapshot::default(), vec![delta_group(&delta)]).bytes;
        bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
        let shown = message(decode_state_file_with_deltas(FILE, &bytes));
        assert!(shown.contains("found a key-group-delta section"), "{shown}");
    }

    #[test]
    fn rich_snapshot_round_trips() {
        let s = rich();
        let encoded = encode_state_file(&s);
        assert_eq!(&encoded.bytes[..8], b"WEIRSTAT");
        assert_eq!(&encoded.bytes[8..10], &[3, 0]);
        assert_eq!(decode_state_file(FILE, &encoded.bytes).unwrap(), s);
        let groups: Vec<u32> = encoded.key_groups.iter().map(|e| e.key_group).collect();
        assert_eq!(groups, vec![3, 9, 70]);
        // Encoding is deterministic.
        assert_eq!(encode_state_file(&s).bytes, encoded.bytes);
    }

    #[test]
    fn empty_snapshot_round_trips() {
        let s = SubtaskSnapshot::default();
        assert!(s.is_empty());
        assert!(!rich().is_empty());
        let encoded = encode_state_file(&s);
        assert!(encoded.key_groups.is_empty());
        assert_eq!(decode_state_file(FILE, &encoded.bytes).unwrap(), s);
    }

    #[test]
    fn key_groups_are_written_in_ascending_order() {
        let mut s = rich();
        s.keyed.reverse();
        let encoded = encode_state_file(&s);
        assert_eq!(decode_state_file(FILE, &encoded.bytes).unwrap(), rich());
    }

    #[test]
    #[should_panic(expected = "invariant: a subtask snapshot holds key group 3 once")]
    fn a_repeated_key_group_is_a_broken_invariant() {
        let mut s = rich();
        s.keyed.push(s.keyed[0].clone());
        encode_state_file(&s);
    }

    #[test]
    fn decode_key_groups_returns_exactly_the_requested_groups() {
        let s = rich();
        let encoded = encode_state_file(&s);
        let wanted = [encoded.key_groups[2], encoded.key_groups[0]];
        let groups = decode_key_groups(FILE, &encoded.bytes, &wanted).unwrap();
        assert_eq!(groups, vec![s.keyed[2].clone(), s.keyed[0].clone()]);
        assert_eq!(
            decode_key_groups(FILE, &encoded.bytes, &[]).unwrap(),
            vec![]
        );

        // A ranged read of one section decodes alone.
        let e = encoded.key_groups[1];
        let section = &encoded.bytes[e.offset as usize..(e.offset + e.len) as usize];
        assert_eq!(
            decode_key_group_section(FILE, &e, section).unwrap(),
            s.keyed[1]
        );
    }

    #[test]
    fn decode_key_groups_rejects_wrong_extents() {
        let encoded = encode_state_file(&rich());
        let e = encoded.key_groups[0];
        let cases = [
            (
                KeyGroupExtent { key_group: 4, ..e },
                "holds key group 3, its extent says 4",
            ),
            (
                KeyGroupExtent {
                    offset: u64::MAX,
                    ..e
                },
                "outside the file",
            ),
            (
                KeyGroupExtent {
                    len: u64::MAX - 3,
                    ..e
                },
                "outside the file",
            ),
            (KeyGroupExtent { offset: 0, ..e }, "outside the file"),
            (
                KeyGroupExtent {
                    len: e.len + 1,
                    ..e
                },
                "longer than its section",
            ),
            (
                KeyGroupExtent {
                    len: e.len - 1,
                    ..e
                },
                "truncated or corrupt",
            ),
            (
                KeyGroupExtent {
                    offset: e.offset + 1,
                    ..e
                },
                "",
            ),
            // The header section is not a key-group section.
            (
                KeyGroupExtent {
                    key_group: 0,
                    offset: PREFIX_LEN as u64,
                    len: encoded.key_groups[0].offset - PREFIX_LEN as u64,
                },
                "expected the key-group section at byte 10, found a header section",
            ),
        ];
        for (extent, expected) in cases {
            let shown = message(decode_key_groups(FILE, &encoded.bytes, &[extent]));
            assert!(shown.contains(expected), "{extent:?}: {shown}");
        }
    }

    #[test]
    fn every_truncation_is_an_error_naming_the_file() {
        let bytes = encode_state_file(&small()).bytes;
        for n in 0..bytes.len() {
            let shown = message(decode_state_file(FILE, &bytes[..n]));
            if n >= PREFIX_LEN {
                assert!(
                    shown.contains("truncated") || shown.contains("end marker"),
                    "prefix {n}: {shown}"
                );
            }
        }
        // Cut exactly before the end marker: names what is missing.
        let end = bytes.len() - FRAME_OVERHEAD;
        let shown = message(decode_state_file(FILE, &bytes[..end]));
        assert!(
            shown.contains(&format!(
                "truncated at byte {end}: the end marker is missing"
            )),
            "{shown}"
        );
    }

    #[test]
    fn every_corrupted_byte_is_detected() {
        let bytes = encode_state_file(&small()).bytes;
        for pos in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xFF] {
                if pos == 8 && flip == 0x01 {
                    // Version 3 → 2: a file without delta sections reads
                    // the same as either.
                    continue;
                }
                let mut bad = bytes.clone();
                bad[pos] ^= flip;
                message(decode_state_file(FILE, &bad));
            }
        }
        let mut bad = bytes.clone();
        bad[PREFIX_LEN + FRAME_HEAD] ^= 1;
        let shown = message(decode_state_file(FILE, &bad));
        assert!(
            shown.contains("checksum mismatch in the section at byte 10"),
            "{shown}"
        );
    }

    /// A version-1 file, laid out as version 1 wrote it: fixed operator
    /// state and source sections after the key groups.
    fn v1_file(
        keyed: &[KeyGroupSnapshot],
        ops: &[(String, Vec<Value>)],
        offset: Option<u64>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&STATE_FILE_MAGIC);
        out.extend_from_slice(&1u16.to_le_bytes());
        let header = FileHeader {
            key_groups: keyed.len() as u32,
            in_flight_channels: 0,
        };
        write_section(&mut out, Tag::Header, &header);
        for g in keyed {
            write_section(&mut out, Tag::KeyGroup, g);
        }
        write_section(&mut out, Tag::OperatorState, ops);
        write_section(&mut out, Tag::Source, &offset);
        write_section(&mut out, Tag::Sink, &None::<SinkSnapshot>);
        write_section(&mut out, Tag::End, &());
        out
    }

    #[test]
    fn a_version_1_file_reads_into_sections_and_its_offset_into_a_split() {
        let keyed = small().keyed;
        let ops = vec![("o".to_owned(), vec![Value::Int(3)])];
        let bytes = v1_file(&keyed, &ops, Some(40 | 1 << 63));
        let mut read = decode_state_file(FILE, &bytes).unwrap();
        assert_eq!(read.keyed, keyed);
        // Version 1 recorded no redistribution: split, as it was restored.
        assert_eq!(
            read.lists,
            [ListSection::user(
                "o",
                Redistribution::Split,
                vec![Value::Int(3)]
            )]
        );
        assert_eq!(read.v1_source_offset, Some(40 | 1 << 63));
        read.adopt_v1_source_offset(1, 2);
        assert_eq!(read.v1_source_offset, None);
        assert_eq!(
            read.source_splits().unwrap(),
            Some(vec![SourceSplit::numbered(1, 2, 40, true)])
        );
        // Its key groups read by extent as well: the section is unchanged.
        let at = bytes.len() - 1;
        assert!(decode_state_file(FILE, &bytes[..at]).is_err());
    }

    #[test]
    fn lists_out_of_order_are_refused() {
        let mut out = Vec::new();
        out.extend_from_slice(&STATE_FILE_MAGIC);
        out.extend_from_slice(&STATE_FILE_VERSION.to_le_bytes());
        let header = FileHeaderV2 {
            key_groups: 0,
            lists: 2,
            in_flight_channels: 0,
        };
        write_section(&mut out, Tag::Header, &header);
        write_section(
            &mut out,
            Tag::List,
            &ListSection::user("b", Redistribution::Split, vec![]),
        );
        write_section(
            &mut out,
            Tag::List,
            &ListSection::user("a", Redistribution::Split, vec![]),
        );
        write_section(&mut out, Tag::Sink, &None::<SinkSnapshot>);
        write_section(&mut out, Tag::End, &());
        let shown = message(decode_state_file(FILE, &out));
        assert!(shown.contains("list `a` (user namespace)"), "{shown}");
        assert!(shown.contains("not ascending"), "{shown}");
    }

    #[test]
    fn trailing_bytes_and_missing_sections_are_errors() {
        let mut bytes = encode_state_file(&small()).bytes;
        bytes.push(0);
        let shown = message(decode_state_file(FILE, &bytes));
        assert!(shown.contains("1 bytes after the end marker"), "{shown}");

        // A well-formed file whose header promises a key group it lacks.
        let mut out = Vec::new();
        out.extend_from_slice(&STATE_FILE_MAGIC);
        out.extend_from_slice(&STATE_FILE_VERSION.to_le_bytes());
        let header = FileHeaderV2 {
            key_groups: 1,
            lists: 0,
            in_flight_channels: 0,
        };
        write_section(&mut out, Tag::Header, &header);
        write_section(&mut out, Tag::Sink, &None::<SinkSnapshot>);
        let shown = message(decode_state_file(FILE, &out));
        assert!(
            shown.contains("expected a key-group section at byte"),
            "{shown}"
        );

        // A checksummed section with an unknown tag.
        let mut out = Vec::new();
        out.extend_from_slice(&STATE_FILE_MAGIC);
        out.extend_from_slice(&STATE_FILE_VERSION.to_le_bytes());
        write_section(&mut out, Tag::Header, &header);
        out[PREFIX_LEN] = 0x42;
        let sum_at = out.len() - 8;
        let sum = xxh3_64(&out[PREFIX_LEN..sum_at]);
        out[sum_at..].copy_from_slice(&sum.to_le_bytes());
        let shown = message(decode_state_file(FILE, &out));
        assert!(
            shown.contains("unknown section tag 0x42 at byte 10"),
            "{shown}"
        );
    }

    #[test]
    fn a_newer_version_is_refused_clearly() {
        let mut bytes = encode_state_file(&small()).bytes;
        bytes[8..10].copy_from_slice(&4u16.to_le_bytes());
        let shown = message(decode_state_file(FILE, &bytes));
        assert_eq!(
            shown,
            format!(
                "{FILE}: written by a newer Weir: state file version 4, this build reads up to 3"
            )
        );
        let shown = message(decode_key_groups(FILE, &bytes, &[]));
        assert!(shown.contains("newer Weir"), "{shown}");
    }

    #[test]
    fn garbage_and_empty_input_are_errors() {
        assert!(message(decode_state_file(FILE, b"")).contains("empty file"));
        assert!(message(decode_state_file(FILE, b"PK\x03\x04 zip")).contains("bad magic"));
        assert!(message(decode_state_file(FILE, b"WEIR")).contains("truncated at byte 4"));
        // The right magic, then a huge declared length: no allocation, an
        // error.
        let mut bytes = b"WEIRSTAT\x01\x00\x01".to_vec();
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 8]);
        let shown = message(decode_state_file(FILE, &bytes));
        assert!(
            shown.contains("claims 18446744073709551615 payload bytes, 0 remain"),
            "{shown}"
        );
    }

    #[test]
    fn a_crafted_section_with_a_valid_checksum_still_cannot_harm() {
        // Huge counts inside a checksummed payload: bounded allocation and
        // an error.
        let mut out = Vec::new();
        out.extend_from_slice(&STATE_FILE_MAGIC);
        out.extend_from_slice(&STATE_FILE_VERSION.to_le_bytes());
        write_section(
            &mut out,
            Tag::Header,
            &FileHeaderV2 {
                key_groups: u32::MAX,
                lists: u32::MAX,
                in_flight_channels: u32::MAX,
            },
        );
        // A key-group section claiming a billion states.
        let payload: &[u8] = &[0x05, 0x80, 0x94, 0xeb, 0xdc, 0x03];
        let start = out.len();
        out.push(Tag::KeyGroup as u8);
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(payload);
        let sum = xxh3_64(&out[start..]);
        out.extend_from_slice(&sum.to_le_bytes());
        let shown = message(decode_state_file(FILE, &out));
        assert!(
            shown.contains("cannot decode the key-group section at byte"),
            "{shown}"
        );

        // Values nested past the decode limit are refused, not a stack
        // overflow; the guest limit is far below it.
        let deep = |n: usize| (0..n).fold(Value::Int(0), |v, _| Value::List(vec![v]));
        let ok = SubtaskSnapshot {
            lists: vec![ListSection::user(
                "d",
                Redistribution::Split,
                vec![deep(100)],
            )],
            ..Default::default()
        };
        let bytes = encode_state_file(&ok).bytes;
        assert_eq!(decode_state_file(FILE, &bytes).unwrap(), ok);
        let too_deep = SubtaskSnapshot {
            lists: vec![ListSection::user(
                "d",
                Redistribution::Split,
                vec![deep(1000)],
            )],
            ..Default::default()
        };
        let bytes = encode_state_file(&too_deep).bytes;
        let shown = message(decode_state_file(FILE, &bytes));
        assert!(
            shown.contains("a value nested deeper than 128 levels"),
            "{shown}"
        );
        // The depth count is back to zero after the error.
        assert_eq!(
            decode_state_file(FILE, &encode_state_file(&ok).bytes).unwrap(),
            ok
        );
    }

    /// Names a crafted snapshot might use to reach outside its directory.
    pub(crate) const BAD_NAMES: &[&str] = &[
        "../x",
        "/abs",
        "a/b",
        "..",
        ".",
        "",
        "x\0y",
        "a\\b",
        "c:x",
        "../precious.txt",
    ];

    #[test]
    fn file_names_from_a_snapshot_are_single_plain_segments() {
        for bad in BAD_NAMES {
            let e = check_file_name("field `file`", bad).unwrap_err();
            assert!(e.starts_with("field `file`: "), "{e}");
            assert!(e.contains("not a plain file name"), "{e}");
            assert!(pending_part_problem(bad).is_some(), "{bad:?}");
        }
        assert_eq!(file_name_problem("count-1.state"), None);
        assert_eq!(pending_part_problem(".part-0-12.pending"), None);
        for bad in [
            "part-0-1",
            ".part-0-1.inprogress",
            ".part-x-1.pending",
            ".part-0-.pending",
            ".precious",
            ".part-0-1-2.pending",
        ] {
            assert!(pending_part_problem(bad).is_some(), "{bad:?}");
        }
    }

    /// A native snapshot's sink section, checksums recomputed as an
    /// attacker would, cannot name a part outside the sink directory.
    #[test]
    fn a_sink_section_naming_a_path_is_refused_naming_the_field() {
        for bad in BAD_NAMES.iter().chain(&[".precious.txt.pending"]) {
            let s = SubtaskSnapshot {
                sink: Some(SinkSnapshot {
                    pending: vec![".part-0-1.pending".into(), (*bad).into()],
                    next_part: 3,
                }),
                ..SubtaskSnapshot::default()
            };
            let bytes = encode_state_file(&s).bytes;
            let shown = message(decode_state_file(FILE, &bytes));
            assert!(shown.contains("the sink section at byte"), "{shown}");
            assert!(shown.contains("field `pending`[1]"), "{shown}");
            assert!(shown.contains("not a pending part file name"), "{shown}");
        }
    }

    #[test]
    fn state_file_names_are_one_safe_segment() {
        assert_eq!(state_file_name("tokenize", 0), "tokenize-0.state");
        assert_eq!(state_file_name("a.b_c-D9", 12), "a.b_c-D9-12.state");
        assert_eq!(
            state_file_name("../x y/é", 1),
            "..%2Fx%20y%2F%C3%A9-1.state"
        );
        assert_eq!(file_name_problem(&state_file_name("..", 0)), None);
    }

    fn metadata() -> CheckpointMetadata {
        let encoded = encode_state_file(&rich());
        CheckpointMetadata {
            version: METADATA_VERSION,
            job_name: "wordcount".into(),
            checkpoint_id: CheckpointId(7),
            trigger_time_ms: 1_700_000_000_000,
            completion_time_ms: 1_700_000_000_250,
            max_parallelism: 128,
            exactly_once: true,
            unaligned: false,
            is_final: false,
            vertices: vec![
                VertexMetadata {
                    uid: "source".into(),
                    parallelism: 1,
                    subtasks: vec![SubtaskMetadata {
                        subtask: 0,
                        file: None,
                        size: 0,
                        key_group_start: 0,
                        key_group_end: 128,
                        key_groups: vec![],
                        base: Vec::new(),
                        sync_ms: 0.0,
                        async_ms: 0.0,
                        alignment_ms: 0.0,
                    }],
                },
                VertexMetadata {
                    uid: "count".into(),
                    parallelism: 2,
                    subtasks: vec![SubtaskMetadata {
                        subtask: 1,
                        file: Some("count-1.state".into()),
                        size: encoded.bytes.len() as u64,
                        key_group_start: 64,
                        key_group_end: 128,
                        key_groups: encoded.key_groups,
                        base: Vec::new(),
                        sync_ms: 1.25,
                        async_ms: 10.5,
                        alignment_ms: 0.125,
                    }],
                },
            ],
        }
    }

    const META: &str = "chk-7/_metadata";

    fn meta_error(bytes: &[u8]) -> String {
        let e = decode_metadata(META, bytes).unwrap_err();
        assert_eq!(e.file, META);
        e.to_string()
    }

    #[test]
    fn an_incremental_base_is_plain_names_of_earlier_checkpoints() {
        let with_base = |checkpoint: u64, file: &str| {
            let mut m = metadata();
            m.vertices[1].subtasks[0].base = vec![StateFileRef {
                checkpoint: CheckpointId(checkpoint),
                file: file.into(),
                size: 10,
                key_groups: Vec::new(),
            }];
            m
        };
        let m = with_base(5, "count-1.state");
        assert_eq!(decode_metadata(META, &encode_metadata(&m)).unwrap(), m);
        assert_eq!(
            m.vertices[1].subtasks[0].base[0].path(),
            "chk-5/count-1.state"
        );
        assert_eq!(m.full_bytes(), m.total_bytes() + 10);
        let e = meta_error(&encode_metadata(&with_base(5, "../x")));
        assert!(e.contains("field `base`[0].file"), "{e}");
        let e = meta_error(&encode_metadata(&with_base(7, "count-1.state")));
        assert!(e.contains("not earlier than the checkpoint itself"), "{e}");
        // Without a base the field is not written, as version 2 wrote it.
        let text = String::from_utf8(encode_metadata(&metadata())).unwrap();
        assert!(!text.contains("\"base\""), "{text}");
    }

    #[test]
    fn metadata_round_trips_and_reads_by_eye() {
        let m = metadata();
        let bytes = encode_metadata(&m);
        assert_eq!(decode_metadata(META, &bytes).unwrap(), m);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("{\n  \"format\": \"weir-checkpoint\",\n  \"version\": 3,\n"),
            "{text}"
        );
        assert!(text.contains("\"checkpoint_id\": 7,"), "{text}");
        assert!(text.contains("\"file\": \"count-1.state\""), "{text}");
        assert_eq!(m.duration_ms(), 250);
        assert_eq!(
            m.total_bytes(),
            encode_state_file(&rich()).bytes.len() as u64
        );
    }

    #[test]
    fn metadata_writes_non_finite_timings_as_zero() {
        let mut m = metadata();
        m.vertices[1].subtasks[0].sync_ms = f64::NAN;
        let back = decode_metadata(META, &encode_metadata(&m)).unwrap();
        assert_eq!(back.vertices[1].subtasks[0].sync_ms, 0.0);
    }

    #[test]
    fn metadata_errors_name_the_file_and_the_problem() {
        let good: serde_json::Value =
            serde_json::from_slice(&encode_metadata(&metadata())).unwrap();
        let with = |f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
            let mut v = good.clone();
            f(v.as_object_mut().unwrap());
            serde_json::to_vec(&v).unwrap()
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "not JSON"),
            (b"\x00\xff garbage".to_vec(), "not JSON"),
            (b"[1, 2]".to_vec(), "not an object"),
            (
                with(&|m| {
                    m.remove("format");
                }),
                "no \"format\" field",
            ),
            (
                with(&|m| {
                    m.insert("format".into(), "flink".into());
                }),
                "format is \"flink\", expected \"weir-checkpoint\"",
            ),
            (
                with(&|m| {
                    m.insert("version".into(), 4.into());
                }),
                "written by a newer Weir: checkpoint metadata version 4, this build reads up to 3",
            ),
            (
                with(&|m| {
                    m.insert("version".into(), 0.into());
                }),
                "version 0 does not exist",
            ),
            (
                with(&|m| {
                    m.remove("version");
                }),
                "missing field `version`",
            ),
            (
                with(&|m| {
                    m.remove("job_name");
                }),
                "missing field `job_name`",
            ),
            (
                with(&|m| {
                    m.insert("jobname".into(), "x".into());
                }),
                "unknown field `jobname`",
            ),
        ];
        let mut cases = cases;
        for bad in BAD_NAMES {
            cases.push((
                with(&|m| {
                    m["vertices"][1]["subtasks"][0]["file"] = (*bad).into();
                }),
                "vertex `count` subtask 1: field `file`: ",
            ));
        }
        for (bytes, expected) in cases {
            let shown = meta_error(&bytes);
            assert!(shown.starts_with("chk-7/_metadata: "), "{shown}");
            assert!(shown.contains(expected), "expected {expected:?} in {shown}");
        }
    }

    pub(crate) mod props {
        use proptest::prelude::*;

        use super::super::*;
        use crate::state::{NamedStateSnapshot, StateEntries};

        /// Any value, nested up to 4 levels (shared with the tests of
        /// `writes`).
        pub(crate) fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                any::<bool>().prop_map(Value::Boolean),
                any::<i64>().prop_map(Value::Int),
                any::<u64>().prop_map(Value::Uint),
                any::<f64>().prop_map(Value::Float),
                ".{0,8}".prop_map(Value::Text),
                prop::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
                Just(Value::None),
            ];
            leaf.prop_recursive(4, 32, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
                    prop::collection::vec((inner.clone(), inner.clone()), 0..4)
                        .prop_map(Value::Map),
                    prop::collection::vec(("[a-z]{0,4}", inner), 0..4).prop_map(Value::Record),
                ]
            })
        }

        fn key() -> impl Strategy<Value = Vec<u8>> {
            prop::collection::vec(any::<u8>(), 0..12)
        }

        fn entries() -> impl Strategy<Value = StateEntries> {
            prop_oneof![
                prop::collection::vec((key(), value()), 0..4).prop_map(StateEntries::Value),
                prop::collection::vec(
                    (key(), prop::collection::vec((value(), value()), 0..3)),
                    0..4
                )
                .prop_map(StateEntries::Map),
                prop::collection::vec((key(), prop::collection::vec(value(), 0..3)), 0..4)
                    .prop_map(StateEntries::List),
            ]
        }

        fn snapshot() -> impl Strategy<Value = SubtaskSnapshot> {
            let group = prop::collection::vec(("[a-z]{1,6}", entries()), 0..3).prop_map(|s| {
                s.into_iter()
                    .map(|(name, entries)| NamedStateSnapshot { name, entries })
                    .collect::<Vec<_>>()
            });
            (
                prop::collection::btree_map(any::<u16>(), group, 0..4),
                prop::collection::vec((".{0,6}", prop::collection::vec(value(), 0..3)), 0..3),
                any::<Option<u64>>(),
                proptest::option::of((
                    prop::collection::vec(
                        (any::<u32>(), any::<u64>())
                            .prop_map(|(s, n)| format!(".part-{s}-{n}.pending")),
                        0..3,
                    ),
                    any::<u64>(),
                )),
                prop::collection::vec(
                    (
                        any::<u32>(),
                        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..16), 0..3),
                    ),
                    0..3,
                ),
            )
                .prop_map(|(groups, lists, source_offset, sink, in_flight)| {
                    SubtaskSnapshot {
                        keyed: groups
                            .into_iter()
                            .map(|(kg, states)| KeyGroupSnapshot {
                                key_group: u32::from(kg),
                                states,
                            })
                            .collect(),
                        // Encoded sorted by (namespace, name), each once.
                        lists: lists
                            .into_iter()
                            .collect::<std::collections::BTreeMap<String, Vec<Value>>>()
                            .into_iter()
                            .map(|(name, items)| {
                                ListSection::user(name, Redistribution::Union, items)
                            })
                            .chain(source_offset.map(|at| {
                                ListSection::source_splits(&[SourceSplit::numbered(
                                    0, 1, at, false,
                                )])
                            }))
                            .collect(),
                        v1_source_offset: None,
                        sink: sink.map(|(pending, next_part)| SinkSnapshot { pending, next_part }),
                        in_flight: in_flight
                            .into_iter()
                            .map(|(channel, batches)| InFlightChannel { channel, batches })
                            .collect(),
                    }
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn random_snapshots_round_trip(s in snapshot()) {
                let encoded = encode_state_file(&s);
                let back = decode_state_file("p.state", &encoded.bytes).unwrap();
                // Floats compare by bits (NaN != NaN): re-encoding must give
                // the same bytes, and then the values match bit for bit.
                prop_assert_eq!(&encode_state_file(&back).bytes, &encoded.bytes);
                let all = decode_key_groups("p.state", &encoded.bytes, &encoded.key_groups).unwrap();
                prop_assert_eq!(all.len(), s.keyed.len());
                for (got, want) in all.iter().zip(&s.keyed) {
                    prop_assert_eq!(got.key_group, want.key_group);
                }
            }

            #[test]
            fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
                let mut with_magic = b"WEIRSTAT\x01\x00".to_vec();
                with_magic.extend_from_slice(&bytes);
                prop_assert!(decode_state_file("p.state", &bytes).is_err());
                prop_assert!(decode_state_file("p.state", &with_magic).is_err());
            }
        }
    }
}
