//! Keyed state as it is stored: one key group's states with their
//! entries. The serde derives are the durable encoding (postcard) of a
//! key-group section (`docs/checkpoint-format.md`), so their shape never
//! changes within a format version.

use crate::value::{Value, bytes_codec};

/// One key group's state: every state name with its entries (a deep copy).
///
/// Durable: encoded with postcard as one section of a state file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeyGroupSnapshot {
    /// The key group.
    pub key_group: u32,
    /// Its states, sorted by name.
    pub states: Vec<NamedStateSnapshot>,
}

/// One state name's entries within a key group.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NamedStateSnapshot {
    /// The state name.
    pub name: String,
    /// Its entries, by kind.
    pub entries: StateEntries,
}

/// The entries of one state, by state kind, in no particular order.
///
/// Durable: the variant order (value, map, list) is the postcard tag.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum StateEntries {
    /// Value state: key → value.
    Value(#[serde(with = "keyed_entries")] Vec<(Vec<u8>, Value)>),
    /// Map state: key → its (map key, value) entries.
    // Spelled out, not aliased: the shape is what a reader of the
    // snapshot (and of the format document) needs to see.
    #[allow(clippy::type_complexity)]
    Map(#[serde(with = "keyed_entries")] Vec<(Vec<u8>, Vec<(Value, Value)>)>),
    /// List state: key → its items.
    List(#[serde(with = "keyed_entries")] Vec<(Vec<u8>, Vec<Value>)>),
}

impl StateEntries {
    /// The kind of state these entries belong to.
    pub fn kind(&self) -> StateKind {
        match self {
            StateEntries::Value(_) => StateKind::Value,
            StateEntries::Map(_) => StateKind::Map,
            StateEntries::List(_) => StateKind::List,
        }
    }

    /// How many keys hold an entry.
    pub fn len(&self) -> usize {
        match self {
            StateEntries::Value(e) => e.len(),
            StateEntries::Map(e) => e.len(),
            StateEntries::List(e) => e.len(),
        }
    }

    /// Whether no key holds an entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The kind a state name is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    /// `ValueState`.
    Value,
    /// `MapState`.
    Map,
    /// `ListState`.
    List,
}

impl std::fmt::Display for StateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StateKind::Value => "value",
            StateKind::Map => "map",
            StateKind::List => "list",
        })
    }
}

mod keyed_entries {
    use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
    use serde::ser::{Serialize, SerializeSeq, Serializer};

    use super::bytes_codec::{ByteBuf, BytesRef};

    pub(super) fn serialize<S: Serializer, V: Serialize>(
        entries: &[(Vec<u8>, V)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(entries.len()))?;
        for (key, value) in entries {
            seq.serialize_element(&(BytesRef(key), value))?;
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, V: Deserialize<'de>>(
        d: D,
    ) -> Result<Vec<(Vec<u8>, V)>, D::Error> {
        d.deserialize_seq(EntriesVisitor(std::marker::PhantomData))
    }

    struct EntriesVisitor<V>(std::marker::PhantomData<V>);

    impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
        type Value = Vec<(Vec<u8>, V)>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence of (key bytes, entry) pairs")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            // The declared count comes from the file: trust it only up to
            // 1 MiB of entries (as serde does), then let the vector grow.
            let cap = seq
                .size_hint()
                .unwrap_or(0)
                .min((1 << 20) / std::mem::size_of::<(Vec<u8>, V)>().max(1));
            let mut out = Vec::with_capacity(cap);
            while let Some((ByteBuf(key), value)) = seq.next_element::<(ByteBuf, V)>()? {
                out.push((key, value));
            }
            Ok(out)
        }
    }
}
