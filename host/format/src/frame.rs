//! What every Weir snapshot file shares: the 10-byte prefix (magic and
//! version), framed sections (tag, length, payload, xxh3-64 checksum), the
//! `_metadata` JSON envelope (`format` and `version` first), the rule for
//! file names a snapshot may reference, and [`FormatError`], which names
//! the file and byte offset of whatever is wrong.
//!
//! Decoding untrusted bytes never panics and never allocates from a length
//! it has not checked against the bytes present.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::value::{MAX_DECODE_DEPTH, watch_decode_depth};

/// Bytes before a state file's first section: an 8-byte magic and a `u16`
/// little-endian version.
pub const PREFIX_LEN: usize = 10;

/// A section's framing before its payload: tag (1 byte) and payload
/// length (`u64` LE).
pub const FRAME_HEAD: usize = 9;

/// A section's framing in all: [`FRAME_HEAD`] and the xxh3-64 checksum (8
/// bytes) after the payload, over tag, length and payload.
pub const FRAME_OVERHEAD: usize = FRAME_HEAD + 8;

/// A state or metadata file that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error("{file}: {message}")]
pub struct FormatError {
    /// The file, as the caller displays it (e.g. `chk-7/tokenize-0.state`).
    pub file: String,
    /// What is wrong, with the section and byte offset where known.
    pub message: String,
}

impl FormatError {
    /// An error about `file` (the display path), saying `message`.
    pub fn new(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            message: message.into(),
        }
    }
}

/// Appends `text` to `out` with every byte outside `[A-Za-z0-9._-]`
/// written `%XX` (uppercase hex): part of a portable path segment.
pub fn escape_segment(text: &str, out: &mut String) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Appends postcard output to an existing vector (postcard's own flavors
/// allocate a fresh one, which would cost a copy of every section).
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends one framed section (tag, length, postcard payload, checksum) to
/// `out`. Shared with the savepoint file, which frames sections the same way.
pub fn write_frame_with<T: Serialize + ?Sized>(out: &mut Vec<u8>, tag: u8, payload: &T) {
    let start = out.len();
    out.push(tag);
    out.extend_from_slice(&[0; 8]);
    postcard::serialize_with_flavor(payload, Append(out))
        .expect("invariant: postcard serializes snapshot data into a vector without error");
    let len = (out.len() - start - FRAME_HEAD) as u64;
    out[start + 1..start + FRAME_HEAD].copy_from_slice(&len.to_le_bytes());
    let checksum = xxh3_64(&out[start..]);
    out.extend_from_slice(&checksum.to_le_bytes());
}

/// Appends one framed section around already-encoded `payload`.
pub fn write_frame(out: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    let start = out.len();
    out.push(tag);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let checksum = xxh3_64(&out[start..]);
    out.extend_from_slice(&checksum.to_le_bytes());
}

/// One verified framed section.
pub struct Frame<'a> {
    /// Its tag byte.
    pub tag: u8,
    /// Its payload.
    pub payload: &'a [u8],
    /// Where the next section starts in `bytes`.
    pub next: usize,
}

/// Reads and verifies the framed section at `bytes[pos..]` (`base`: the
/// file offset of `bytes[0]`, for messages): its length fits and its
/// checksum matches.
///
/// # Errors
/// [`FormatError`] naming `file`: truncated, or a checksum mismatch.
pub fn read_frame<'a>(
    file: &str,
    bytes: &'a [u8],
    pos: usize,
    base: u64,
) -> Result<Frame<'a>, FormatError> {
    let at = base + pos as u64;
    let rest = &bytes[pos.min(bytes.len())..];
    let err = |m: String| FormatError::new(file, m);
    if rest.is_empty() {
        return Err(err(format!(
            "truncated at byte {at}: the end marker is missing"
        )));
    }
    if rest.len() < FRAME_OVERHEAD {
        return Err(err(format!(
            "truncated at byte {at}: a section needs at least {FRAME_OVERHEAD} bytes, {} remain",
            rest.len()
        )));
    }
    let tag = rest[0];
    let len = u64::from_le_bytes(rest[1..FRAME_HEAD].try_into().expect("8 bytes"));
    let room = (rest.len() - FRAME_OVERHEAD) as u64;
    if len > room {
        return Err(err(format!(
            "truncated or corrupt: the section at byte {at} (tag 0x{tag:02x}) claims {len} payload bytes, {room} remain"
        )));
    }
    let end = FRAME_HEAD + len as usize;
    let stored = u64::from_le_bytes(rest[end..end + 8].try_into().expect("8 bytes"));
    if xxh3_64(&rest[..end]) != stored {
        return Err(err(format!(
            "corrupt: checksum mismatch in the section at byte {at} (tag 0x{tag:02x}, {len} payload bytes)"
        )));
    }
    Ok(Frame {
        tag,
        payload: &rest[FRAME_HEAD..end],
        next: pos + end + 8,
    })
}

/// Decodes a section payload that must be exactly one postcard `T`;
/// `what` and `at` name the section in errors.
///
/// # Errors
/// [`FormatError`] naming `file`: undecodable, nested too deep, or stray
/// bytes after the value.
pub fn decode_payload<'a, T: Deserialize<'a>>(
    file: &str,
    what: &str,
    at: u64,
    payload: &'a [u8],
) -> Result<T, FormatError> {
    let (decoded, too_deep) = watch_decode_depth(|| postcard::take_from_bytes::<T>(payload));
    let (value, rest) = decoded.map_err(|e| {
        let why = if too_deep {
            format!("a value nested deeper than {MAX_DECODE_DEPTH} levels")
        } else {
            e.to_string()
        };
        FormatError::new(
            file,
            format!("cannot decode the {what} section at byte {at}: {why}"),
        )
    })?;
    if !rest.is_empty() {
        return Err(FormatError::new(
            file,
            format!(
                "{} stray bytes at the end of the {what} section at byte {at}",
                rest.len()
            ),
        ));
    }
    Ok(value)
}

/// Checks a 10-byte file prefix — `magic`, then a `u16` LE version from 1
/// to `newest` — and returns the version. `what` names the file kind in
/// messages. Shared by checkpoint and savepoint state files.
///
/// # Errors
/// [`FormatError`] naming `file`: empty, another magic, truncated, version
/// 0 or newer than `newest`.
pub fn read_file_prefix(
    file: &str,
    bytes: &[u8],
    magic: &[u8; 8],
    what: &str,
    newest: u16,
) -> Result<u16, FormatError> {
    if bytes.is_empty() {
        return Err(FormatError::new(
            file,
            format!("empty file: not a Weir {what}"),
        ));
    }
    let n = bytes.len().min(magic.len());
    if bytes[..n] != magic[..n] {
        return Err(FormatError::new(
            file,
            format!("not a Weir {what} (bad magic at byte 0)"),
        ));
    }
    if bytes.len() < PREFIX_LEN {
        return Err(FormatError::new(
            file,
            format!(
                "truncated at byte {}: the file header needs {PREFIX_LEN} bytes",
                bytes.len()
            ),
        ));
    }
    match u16::from_le_bytes([bytes[8], bytes[9]]) {
        0 => Err(FormatError::new(
            file,
            format!("corrupt: {what} version 0 (at byte 8) does not exist"),
        )),
        v if v > newest => Err(FormatError::new(
            file,
            format!("written by a newer Weir: {what} version {v}, this build reads up to {newest}"),
        )),
        v => Ok(v),
    }
}

/// `Vec<Vec<u8>>` as a sequence of serde byte strings (`#[serde(with)]`).
pub mod byte_strings {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::ser::{SerializeSeq, Serializer};

    use crate::value::bytes_codec::{ByteBuf, BytesRef};

    /// Serializes `items` as a sequence of byte strings.
    pub fn serialize<S: Serializer>(items: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(items.len()))?;
        for item in items {
            seq.serialize_element(&BytesRef(item))?;
        }
        seq.end()
    }

    /// Deserializes a sequence of byte strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        d.deserialize_seq(ItemsVisitor)
    }

    struct ItemsVisitor;

    impl<'de> Visitor<'de> for ItemsVisitor {
        type Value = Vec<Vec<u8>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence of byte strings")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            // The count comes from the file: preallocate a bounded amount.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(ByteBuf(item)) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }
    }
}

/// The fields of a `_metadata` JSON object whose `format` is `format`
/// (removed from the result) and whose `version` this build reads (at most
/// `newest`). The version is checked before the other fields: a newer file
/// may have fields this build does not know. `what` names the kind of
/// snapshot in messages. Shared by checkpoint and savepoint metadata.
///
/// # Errors
/// [`FormatError`] naming `file`: not JSON, not an object, another or no
/// `format`, a missing, newer or impossible version.
pub fn metadata_fields(
    file: &str,
    bytes: &[u8],
    format: &str,
    what: &str,
    newest: u32,
) -> Result<serde_json::Map<String, serde_json::Value>, FormatError> {
    let json: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| FormatError::new(file, format!("not JSON: {e}")))?;
    let serde_json::Value::Object(mut fields) = json else {
        return Err(FormatError::new(
            file,
            format!("not a {what} _metadata file: the JSON is not an object"),
        ));
    };
    match fields.remove("format") {
        Some(serde_json::Value::String(f)) if f == format => {}
        Some(other) => {
            return Err(FormatError::new(
                file,
                format!("format is {other}, expected \"{format}\""),
            ));
        }
        None => {
            return Err(FormatError::new(
                file,
                format!(
                    "no \"format\" field: not a {what} _metadata file (expected \"format\": \"{format}\")"
                ),
            ));
        }
    }
    match fields.get("version").map(|v| (v, v.as_u64())) {
        None => return Err(FormatError::new(file, "missing field `version`")),
        Some((_, Some(v))) if v > u64::from(newest) => {
            return Err(FormatError::new(
                file,
                format!(
                    "written by a newer Weir: {what} metadata version {v}, this build reads up to {newest}"
                ),
            ));
        }
        Some((_, Some(v))) if (1..=u64::from(newest)).contains(&v) => {}
        Some((v, _)) => {
            return Err(FormatError::new(
                file,
                format!("version {v} does not exist"),
            ));
        }
    }
    Ok(fields)
}

/// Why `name` is not a plain file name, one path segment inside the
/// directory it is resolved against, or `None` if it is one. Every name a
/// snapshot references goes through here when it is decoded, so a crafted
/// `_metadata` or state file can never name a path elsewhere (`..`, `/abs`,
/// `a/b`) nor one a file system would read differently (NUL, `\\`, `:`).
pub fn file_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".into());
    }
    if name == "." || name == ".." {
        return Some(format!("`{name}` names a directory"));
    }
    if let Some(c) = name.chars().find(|c| matches!(c, '/' | '\\' | ':')) {
        return Some(format!("it contains `{c}`: not a single path segment"));
    }
    if name.chars().any(char::is_control) {
        return Some("it contains a NUL or another control character".into());
    }
    None
}

/// Checks a file name read from `_metadata` or a state file, naming the
/// field it came from (`what`) in the message.
///
/// # Errors
/// A message saying which field holds which name and why it is refused.
pub fn check_file_name(what: &str, name: &str) -> Result<(), String> {
    match file_name_problem(name) {
        None => Ok(()),
        Some(why) => Err(format!(
            "{what}: {name:?} is not a plain file name inside the snapshot's directory ({why})"
        )),
    }
}
