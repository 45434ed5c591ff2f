//! What each fuzz target feeds the snapshot decoders: the bytes as a whole
//! file, and the section references a reader would take from `_metadata`,
//! derived from the bytes themselves (the frames their headers claim, and
//! one reference made of the input's first bytes) so that mutated valid
//! files reach the ranged decoders too.
//!
//! Depends on `weir-format` alone, not on libFuzzer: the stable regression
//! test `host/format/tests/snapshot_decoders.rs` includes this file by path
//! and runs the checked-in corpus and mutations of it through the same
//! functions. The only failure is a panic; decoding errors are expected.

use weir_format::checkpoint;
use weir_format::frame::{FRAME_HEAD, FRAME_OVERHEAD, PREFIX_LEN};
use weir_format::manifest::Manifest;
use weir_format::savepoint;
use xxhash_rust::xxh3::xxh3_64;

/// The name the decoders see in their errors.
const FILE: &str = "fuzz-input";

/// A section as its header claims it, unverified.
struct ClaimedFrame {
    offset: u64,
    /// Frame included, saturating.
    len: u64,
    tag: u8,
    /// The first bytes of its payload (for the key group it names).
    payload: Vec<u8>,
}

/// Walks the frames the headers claim from the end of the prefix, without
/// checking checksums, stopping at the first that overruns (which is still
/// returned) and after 64.
fn claimed_frames(bytes: &[u8]) -> Vec<ClaimedFrame> {
    let mut out = Vec::new();
    let mut pos = PREFIX_LEN;
    while out.len() < 64 && pos + FRAME_HEAD <= bytes.len() {
        let tag = bytes[pos];
        let mut len = [0; 8];
        len.copy_from_slice(&bytes[pos + 1..pos + FRAME_HEAD]);
        let len = u64::from_le_bytes(len).saturating_add(FRAME_OVERHEAD as u64);
        let payload = bytes[pos + FRAME_HEAD..].iter().take(5).copied().collect();
        out.push(ClaimedFrame {
            offset: pos as u64,
            len,
            tag,
            payload,
        });
        match usize::try_from(len).ok().and_then(|l| pos.checked_add(l)) {
            Some(next) if next <= bytes.len() => pos = next,
            _ => break,
        }
    }
    out
}

/// `bytes` with the checksum of every whole frame its headers claim
/// rewritten to match, so that mutations inside a payload reach the
/// payload decoders instead of stopping at the checksum; `None` if nothing
/// changed.
fn with_checksums_repaired(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = bytes.to_vec();
    for frame in claimed_frames(bytes) {
        let (Ok(start), Ok(len)) = (usize::try_from(frame.offset), usize::try_from(frame.len))
        else {
            break;
        };
        let Some(end) = start.checked_add(len).filter(|&e| e <= out.len()) else {
            break;
        };
        let sum = xxh3_64(&out[start..end - 8]);
        out[end - 8..end].copy_from_slice(&sum.to_le_bytes());
    }
    (out != bytes).then_some(out)
}

/// An (offset, length) pair made of the input's first 16 bytes, whatever
/// they are: references that point anywhere, including past the end.
fn reference_from_first_bytes(bytes: &[u8]) -> (u64, u64) {
    let mut raw = [0u8; 16];
    for (r, b) in raw.iter_mut().zip(bytes) {
        *r = *b;
    }
    let (offset, len) = raw.split_at(8);
    let word = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8 bytes"));
    (word(offset), word(len))
}

/// The leading postcard varint of `payload` (a key-group section starts
/// with its key group), or 0.
fn leading_varint(payload: &[u8]) -> u32 {
    let mut value: u32 = 0;
    for (i, b) in payload.iter().take(5).enumerate() {
        value |= u32::from(b & 0x7f).wrapping_shl(7 * i as u32);
        if b & 0x80 == 0 {
            break;
        }
    }
    value
}

/// A checkpoint state file (`WEIRSTAT`): decoded whole, then key group by
/// key group through the extents its frames claim, alone and together;
/// then all that again with the frames' checksums repaired.
pub fn checkpoint_state_file(data: &[u8]) {
    checkpoint_state_file_as_is(data);
    if let Some(repaired) = with_checksums_repaired(data) {
        checkpoint_state_file_as_is(&repaired);
    }
}

fn checkpoint_state_file_as_is(data: &[u8]) {
    if let Ok((mut snapshot, deltas)) = checkpoint::decode_state_file_with_deltas(FILE, data) {
        // What a restore does next with a decoded file: a version-1 offset
        // becomes a split, and the splits are read back from their values;
        // an incremental file's deltas are applied over its own groups.
        snapshot.adopt_v1_source_offset(0, 1);
        let _ = snapshot.source_splits();
        let _ = checkpoint::merge_chain(vec![(snapshot.clone(), Vec::new()), (snapshot, deltas)]);
    }
    let mut extents: Vec<checkpoint::KeyGroupExtent> = claimed_frames(data)
        .into_iter()
        .filter(|f| f.tag == checkpoint::KEY_GROUP_TAG)
        .map(|f| checkpoint::KeyGroupExtent {
            key_group: leading_varint(&f.payload),
            offset: f.offset,
            len: f.len,
        })
        .collect();
    let (offset, len) = reference_from_first_bytes(data);
    extents.push(checkpoint::KeyGroupExtent {
        key_group: leading_varint(data),
        offset,
        len,
    });
    let _ = checkpoint::decode_key_groups(FILE, data, &extents);
    for extent in &extents {
        let _ = checkpoint::decode_key_groups(FILE, data, std::slice::from_ref(extent));
        // A ranged read of exactly the extent, where the bytes allow one.
        let range = usize::try_from(extent.offset)
            .ok()
            .zip(usize::try_from(extent.len).ok())
            .and_then(|(start, len)| data.get(start..start.checked_add(len)?));
        if let Some(section) = range {
            let _ = checkpoint::decode_key_group_section(FILE, extent, section);
        }
    }
}

/// A savepoint state file (`WEIRSAVE`): decoded whole, then section by
/// section through the references its frames claim; then all that again
/// with the frames' checksums repaired.
pub fn savepoint_state_file(data: &[u8]) {
    savepoint_state_file_as_is(data);
    if let Some(repaired) = with_checksums_repaired(data) {
        savepoint_state_file_as_is(&repaired);
    }
}

fn savepoint_state_file_as_is(data: &[u8]) {
    let _ = savepoint::decode_state_file(FILE, data);
    let (offset, len) = reference_from_first_bytes(data);
    let claimed = claimed_frames(data).into_iter().map(|f| (f.offset, f.len));
    for (offset, len) in claimed.chain([(offset, len)]) {
        let at = savepoint::SectionRef {
            file: FILE.into(),
            offset,
            len,
            count: 0,
        };
        let _ = savepoint::decode_section(FILE, data, &at);
    }
}

/// `_metadata` bytes through every reader of it: the checkpoint and the
/// savepoint decoders, the format sniffer and [`Manifest::decode`] (and the
/// restore record's and the lease's, which share its JSON envelope). What
/// decodes must encode to a document that decodes again (savepoint
/// metadata, which has no floats, to the same value).
fn metadata(data: &[u8]) {
    let _ = savepoint::metadata_format(data);
    // The other JSON files of a job's directory share the envelope.
    let _ = weir_format::jobdir::RestoreRecord::decode(FILE, data);
    let _ = weir_format::jobdir::LeaseFile::decode(FILE, data);
    if let Ok(m) = checkpoint::decode_metadata(FILE, data) {
        // Timings are floats, which a JSON round trip need not keep to
        // the bit: only require the re-encoding to decode.
        checkpoint::decode_metadata(FILE, &checkpoint::encode_metadata(&m))
            .expect("a decoded checkpoint _metadata re-encodes to a valid one");
        let _ = (m.total_bytes(), m.duration_ms());
    }
    if let Ok(m) = savepoint::decode_metadata(FILE, data) {
        let again = savepoint::decode_metadata(FILE, &savepoint::encode_metadata(&m))
            .expect("a decoded savepoint _metadata re-encodes to a valid one");
        assert_eq!(again, m, "savepoint _metadata round trip");
        let _ = m.files();
        let _ = m.total_bytes();
    }
    if let Ok(manifest) = Manifest::decode(FILE, data) {
        let _ = (
            manifest.id(),
            manifest.describe(),
            manifest.max_parallelism(),
            manifest.files(),
        );
    }
}

/// A checkpoint's `_metadata` (see [`metadata`]).
pub fn checkpoint_metadata(data: &[u8]) {
    metadata(data);
}

/// A savepoint's `_metadata` (see [`metadata`]).
pub fn savepoint_metadata(data: &[u8]) {
    metadata(data);
}
