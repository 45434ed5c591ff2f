//! The packed record batch, layout version 1.
//!
//! A batch is the concatenation of records; each record is
//!
//! ```text
//! flags: u8                    bit 0: has key, bit 1: has timestamp
//! timestamp: i64 LE            if flags & 2
//! key_len: u32 LE, key bytes   if flags & 1
//! value_len: u32 LE, value bytes
//! ```
//!
//! Flags bits 2..8 are reserved and must be zero, so a reader of version 1
//! rejects a batch written by a future layout instead of misreading it.

use thiserror::Error;

const HAS_KEY: u8 = 1;
const HAS_TIMESTAMP: u8 = 2;
const KNOWN_FLAGS: u8 = HAS_KEY | HAS_TIMESTAMP;

/// A record borrowed from a packed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The record's key, if it has one.
    pub key: Option<&'a [u8]>,
    /// The record's value.
    pub value: &'a [u8],
    /// The record's event timestamp (milliseconds since the epoch), if any.
    pub timestamp: Option<i64>,
}

/// Why a packed batch could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The batch ends in the middle of a record.
    #[error("packed batch truncated at byte {offset}: need {needed} more bytes")]
    Truncated {
        /// Where the unreadable record part starts.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// A record's flags byte sets bits this layout version does not know.
    #[error("packed batch has unknown record flags {flags:#04x} at byte {offset}")]
    UnknownFlags {
        /// Where the flags byte is.
        offset: usize,
        /// The flags byte.
        flags: u8,
    },
}

/// Appends records to a packed batch.
#[derive(Debug, Default, Clone)]
pub struct BatchWriter {
    buf: Vec<u8>,
    len: usize,
}

impl BatchWriter {
    /// Creates an empty batch with room for `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
            len: 0,
        }
    }

    /// Appends one record.
    ///
    /// # Panics
    ///
    /// If the key or value is longer than `u32::MAX` bytes, which the layout
    /// cannot express.
    pub fn push(&mut self, key: Option<&[u8]>, value: &[u8], timestamp: Option<i64>) {
        let mut flags = 0;
        if key.is_some() {
            flags |= HAS_KEY;
        }
        if timestamp.is_some() {
            flags |= HAS_TIMESTAMP;
        }
        self.buf.push(flags);
        if let Some(ts) = timestamp {
            self.buf.extend_from_slice(&ts.to_le_bytes());
        }
        if let Some(key) = key {
            self.push_bytes(key);
        }
        self.push_bytes(value);
        self.len += 1;
    }

    /// Appends a record read from another batch.
    pub fn push_record(&mut self, record: &RecordRef<'_>) {
        self.push(record.key, record.value, record.timestamp);
    }

    fn push_bytes(&mut self, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).expect("invariant: record field fits in u32");
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(bytes);
    }

    /// Appends every record of an already packed batch of `records` records.
    pub fn extend_packed(&mut self, packed: &[u8], records: usize) {
        self.buf.extend_from_slice(packed);
        self.len += records;
    }

    /// How many records the batch holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many bytes the batch occupies.
    pub fn byte_len(&self) -> usize {
        self.buf.len()
    }

    /// The packed bytes so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Takes the packed bytes and the record count, leaving the writer empty
    /// with its capacity.
    pub fn take(&mut self) -> (Vec<u8>, usize) {
        let cap = self.buf.capacity();
        let buf = std::mem::replace(&mut self.buf, Vec::with_capacity(cap));
        (buf, std::mem::take(&mut self.len))
    }

    /// Empties the batch, keeping its allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.len = 0;
    }
}

/// Iterates the records of a packed batch without copying them.
#[derive(Debug, Clone)]
pub struct BatchReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> BatchReader<'a> {
    /// Reads `buf` as a packed batch.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.buf.len());
        match end {
            Some(end) => {
                let bytes = &self.buf[self.pos..end];
                self.pos = end;
                Ok(bytes)
            }
            None => Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n - (self.buf.len() - self.pos),
            }),
        }
    }

    fn take_len_prefixed(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.take(4)?;
        let len = u32::from_le_bytes(len.try_into().expect("took 4 bytes")) as usize;
        self.take(len)
    }

    fn next_record(&mut self) -> Result<RecordRef<'a>, DecodeError> {
        let offset = self.pos;
        let flags = self.take(1)?[0];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError::UnknownFlags { offset, flags });
        }
        let timestamp = if flags & HAS_TIMESTAMP != 0 {
            let ts = self.take(8)?;
            Some(i64::from_le_bytes(ts.try_into().expect("took 8 bytes")))
        } else {
            None
        };
        let key = if flags & HAS_KEY != 0 {
            Some(self.take_len_prefixed()?)
        } else {
            None
        };
        let value = self.take_len_prefixed()?;
        Ok(RecordRef {
            key,
            value,
            timestamp,
        })
    }
}

impl<'a> Iterator for BatchReader<'a> {
    type Item = Result<RecordRef<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let item = self.next_record();
        if item.is_err() {
            // Stop after the first error: the rest cannot be framed.
            self.pos = self.buf.len();
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field_combination() {
        let mut w = BatchWriter::default();
        w.push(None, b"v1", None);
        w.push(Some(b"k"), b"", Some(-5));
        w.push(Some(b""), b"v3", None);
        w.push(None, b"v4", Some(i64::MAX));
        assert_eq!(w.len(), 4);
        let (bytes, n) = w.take();
        assert_eq!(n, 4);
        assert!(w.is_empty());
        let records: Vec<_> = BatchReader::new(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            records,
            vec![
                RecordRef {
                    key: None,
                    value: b"v1",
                    timestamp: None
                },
                RecordRef {
                    key: Some(b"k"),
                    value: b"",
                    timestamp: Some(-5)
                },
                RecordRef {
                    key: Some(b""),
                    value: b"v3",
                    timestamp: None
                },
                RecordRef {
                    key: None,
                    value: b"v4",
                    timestamp: Some(i64::MAX)
                },
            ]
        );
    }

    #[test]
    fn rejects_truncated_and_unknown_flags() {
        let mut w = BatchWriter::default();
        w.push(Some(b"key"), b"value", None);
        let bytes = w.as_bytes();
        for cut in 1..bytes.len() {
            let res: Result<Vec<_>, _> = BatchReader::new(&bytes[..cut]).collect();
            assert!(
                matches!(res, Err(DecodeError::Truncated { .. })),
                "cut {cut}"
            );
        }
        let res: Result<Vec<_>, _> = BatchReader::new(&[0x80]).collect();
        assert_eq!(
            res,
            Err(DecodeError::UnknownFlags {
                offset: 0,
                flags: 0x80
            })
        );
    }

    #[test]
    fn huge_length_prefix_is_truncation_not_overflow() {
        let bytes = [0u8, 0xff, 0xff, 0xff, 0xff];
        let res: Result<Vec<_>, _> = BatchReader::new(&bytes).collect();
        assert!(matches!(res, Err(DecodeError::Truncated { offset: 5, .. })));
    }
}
