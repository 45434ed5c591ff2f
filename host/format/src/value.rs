//! The one typed state value host and guests share: what the WIT `value`
//! variant carries, what state files store, and what the Rust SDK hands an
//! operator. Its serde shape (postcard) is durable
//! (`docs/checkpoint-format.md`, "Values").

/// A typed state value; mirrors the WIT `value` variant, with `nested`
/// values held as a tree (the WIT carries them as pre-order nodes).
///
/// Durable: checkpoint files store a value as its postcard encoding, whose
/// first byte is the variant's index in this declaration. Never reorder,
/// remove or insert variants; a new kind of value goes at the end, and
/// only with a new state-file version. Decoding refuses values nested
/// deeper than [`MAX_DECODE_DEPTH`] levels (guests cannot build deeper
/// ones), so a crafted file cannot overflow the stack.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Value {
    /// A boolean.
    Boolean(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    Uint(u64),
    /// A double.
    Float(f64),
    /// A UTF-8 string.
    Text(String),
    /// Opaque bytes.
    Bytes(#[serde(with = "bytes_codec")] Vec<u8>),
    /// No value (only meaningful inside a list, map or record).
    None,
    /// A list.
    List(Vec<Value>),
    /// A map with keys of any type, in the order written.
    Map(Vec<(Value, Value)>),
    /// A record: named fields, in the order written.
    Record(Vec<(String, Value)>),
}

/// The deepest [`Value`] nesting a decoder accepts: twice what a guest may
/// build (the host's `plugin::value::MAX_DEPTH`), and shallow enough that decoding
/// stays far from the end of a 2 MiB thread stack.
pub const MAX_DECODE_DEPTH: usize = 128;

/// [`Value`]'s wire shape for decoding: the same variants in the same
/// order, so it reads exactly what the derived `Serialize` writes. Decoding
/// goes through it so that every nested [`Value`] passes the depth guard.
#[derive(serde::Deserialize)]
#[serde(rename = "Value")]
enum ValueWire {
    Boolean(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Text(String),
    Bytes(#[serde(with = "bytes_codec")] Vec<u8>),
    None,
    List(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Record(Vec<(String, Value)>),
}

thread_local! {
    /// How deep the [`Value`] being decoded on this thread is nested.
    static DECODE_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Whether a decode on this thread hit [`MAX_DECODE_DEPTH`] (postcard
    /// replaces custom serde messages with a generic one).
    static DEPTH_EXCEEDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `decode` and reports whether it refused a [`Value`] nested deeper
/// than [`MAX_DECODE_DEPTH`], so the caller can say so in its error.
pub fn watch_decode_depth<T>(decode: impl FnOnce() -> T) -> (T, bool) {
    DEPTH_EXCEEDED.with(|e| e.set(false));
    let out = decode();
    (out, DEPTH_EXCEEDED.with(|e| e.replace(false)))
}

/// One level of [`Value`] nesting while decoding; leaving it (also by an
/// error or unwind) gives the level back.
struct DepthGuard;

impl DepthGuard {
    fn enter() -> Option<Self> {
        DECODE_DEPTH.with(|d| {
            if d.get() >= MAX_DECODE_DEPTH {
                DEPTH_EXCEEDED.with(|e| e.set(true));
                None
            } else {
                d.set(d.get() + 1);
                Some(DepthGuard)
            }
        })
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        DECODE_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

impl<'de> serde::Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Some(_guard) = DepthGuard::enter() else {
            return Err(serde::de::Error::custom(format_args!(
                "value nested deeper than {MAX_DECODE_DEPTH} levels"
            )));
        };
        Ok(match ValueWire::deserialize(d)? {
            ValueWire::Boolean(b) => Value::Boolean(b),
            ValueWire::Int(i) => Value::Int(i),
            ValueWire::Uint(u) => Value::Uint(u),
            ValueWire::Float(f) => Value::Float(f),
            ValueWire::Text(s) => Value::Text(s),
            ValueWire::Bytes(b) => Value::Bytes(b),
            ValueWire::None => Value::None,
            ValueWire::List(items) => Value::List(items),
            ValueWire::Map(entries) => Value::Map(entries),
            ValueWire::Record(fields) => Value::Record(fields),
        })
    }
}

impl Value {
    /// The WIT case name of this value (`boolean`, `int`, ...), for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Boolean(_) => "boolean",
            Value::Int(_) => "int",
            Value::Uint(_) => "uint",
            Value::Float(_) => "float",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
            Value::None => "none",
            Value::List(_) => "list",
            Value::Map(_) => "map",
            Value::Record(_) => "record",
        }
    }

    /// About how many bytes the value takes in memory: its own size and
    /// its payload's, nested values included.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Value>()
            + match self {
                Value::Boolean(_)
                | Value::Int(_)
                | Value::Uint(_)
                | Value::Float(_)
                | Value::None => 0,
                Value::Text(s) => s.len(),
                Value::Bytes(b) => b.len(),
                Value::List(items) => items.iter().map(Value::approx_bytes).sum(),
                Value::Map(pairs) => pairs
                    .iter()
                    .map(|(k, v)| k.approx_bytes() + v.approx_bytes())
                    .sum(),
                Value::Record(fields) => fields
                    .iter()
                    .map(|(name, v)| name.len() + v.approx_bytes())
                    .sum(),
            }
    }

    /// A canonical byte form, used to compare and hash map keys (floats
    /// compare by bit pattern, so `NaN` keys are usable and `-0.0 != 0.0`).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_canonical(&mut out);
        out
    }

    pub(crate) fn write_canonical(&self, out: &mut Vec<u8>) {
        use crate::writes::canonical;
        fn len(out: &mut Vec<u8>, n: usize) {
            // Lengths past u32 cannot cross the WIT boundary anyway.
            out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
        }
        match self {
            Value::Boolean(b) => canonical::boolean(out, *b),
            Value::Int(i) => canonical::int(out, *i),
            Value::Uint(u) => canonical::uint(out, *u),
            Value::Float(f) => canonical::float(out, *f),
            Value::Text(s) => canonical::text(out, s),
            Value::Bytes(b) => canonical::bytes(out, b),
            Value::None => out.push(6),
            Value::List(items) => {
                out.push(7);
                len(out, items.len());
                items.iter().for_each(|v| v.write_canonical(out));
            }
            Value::Map(entries) => {
                out.push(8);
                len(out, entries.len());
                for (k, v) in entries {
                    k.write_canonical(out);
                    v.write_canonical(out);
                }
            }
            Value::Record(fields) => {
                out.push(9);
                len(out, fields.len());
                for (name, v) in fields {
                    len(out, name.len());
                    out.extend_from_slice(name.as_bytes());
                    v.write_canonical(out);
                }
            }
        }
    }
}

/// Byte strings as serde bytes (postcard: a varint length, then the bytes
/// in one copy) instead of serde's default sequence of `u8` elements.
pub mod bytes_codec {
    use serde::{Deserializer, Serializer};

    /// Serializes `bytes` as serde bytes.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    /// Deserializes serde bytes into an owned vector.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(ByteBufVisitor)
    }

    struct ByteBufVisitor;

    impl serde::de::Visitor<'_> for ByteBufVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }

    /// Borrowed bytes that serialize as serde bytes.
    pub struct BytesRef<'a>(pub &'a [u8]);

    impl serde::Serialize for BytesRef<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    /// Owned bytes that deserialize from serde bytes.
    pub struct ByteBuf(pub Vec<u8>);

    impl<'de> serde::Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            deserialize(d).map(ByteBuf)
        }
    }
}
