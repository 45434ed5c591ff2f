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

/// What changed in one key group since the checkpoint an incremental
/// checkpoint extends: every key whose state changed, with its whole state
/// now (a map key's every entry, a list's every item), and every key whose
/// state is gone. Applied over the key group as that checkpoint restores it
/// ([`KeyGroupDelta::apply_to`]).
///
/// Durable: encoded with postcard as one key-group delta section of a
/// state file (version 3).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeyGroupDelta {
    /// The key group.
    pub key_group: u32,
    /// Keys whose state changed, with their state now, by state name
    /// (sorted).
    pub changed: Vec<NamedStateSnapshot>,
    /// Keys whose state was removed, by state name (sorted).
    pub removed: Vec<RemovedKeys>,
}

/// Keys of one state whose entries were removed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RemovedKeys {
    /// The state name.
    pub name: String,
    /// The keys.
    #[serde(with = "crate::frame::byte_strings")]
    pub keys: Vec<Vec<u8>>,
}

impl KeyGroupDelta {
    /// Applies `deltas` of one key group, in order, to `states` (sorted by
    /// name), as [`KeyGroupDelta::apply_to`] one by one would, indexing
    /// each touched state's keys once for all of them: a chain of deltas
    /// costs its state's size once, not once per delta.
    ///
    /// # Errors
    /// A delta changing a state as another kind than it holds.
    pub fn apply_all(
        states: &mut Vec<NamedStateSnapshot>,
        deltas: Vec<KeyGroupDelta>,
    ) -> Result<(), String> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut indexed: Vec<(String, Indexed)> = Vec::new();
        fn slot<'s>(
            indexed: &'s mut Vec<(String, Indexed)>,
            states: &mut Vec<NamedStateSnapshot>,
            name: &str,
        ) -> &'s mut Indexed {
            let at = match indexed.iter().position(|(n, _)| n == name) {
                Some(at) => at,
                None => {
                    let taken = states
                        .iter()
                        .position(|s| s.name == name)
                        .map(|i| states.swap_remove(i).entries);
                    indexed.push((name.to_owned(), Indexed::of(taken)));
                    indexed.len() - 1
                }
            };
            &mut indexed[at].1
        }
        for delta in deltas {
            for gone in delta.removed {
                let entries = slot(&mut indexed, states, &gone.name);
                for key in gone.keys {
                    entries.remove(&key);
                }
            }
            for changed in delta.changed {
                let entries = slot(&mut indexed, states, &changed.name);
                entries.put(delta.key_group, &changed.name, changed.entries)?;
            }
        }
        for (name, entries) in indexed {
            if let Some(entries) = entries.into_entries() {
                states.push(NamedStateSnapshot { name, entries });
            }
        }
        states.retain(|s| !s.entries.is_empty());
        states.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(())
    }

    /// Applies this delta to `states`, a key group's states sorted by name
    /// as the checkpoint it extends restores them: a changed key's state
    /// replaces the key's whole state, a removed key leaves, and a state
    /// left without keys is dropped.
    ///
    /// # Errors
    /// A state changed as another kind than it holds.
    pub fn apply_to(self, states: &mut Vec<NamedStateSnapshot>) -> Result<(), String> {
        Self::apply_all(states, vec![self])
    }
}

/// One state's entries indexed by key while deltas are applied.
enum Indexed {
    /// No entries yet: the kind comes with the first change.
    Empty,
    Value(std::collections::HashMap<Vec<u8>, Value>),
    #[allow(clippy::type_complexity)]
    Map(std::collections::HashMap<Vec<u8>, Vec<(Value, Value)>>),
    List(std::collections::HashMap<Vec<u8>, Vec<Value>>),
}

impl Indexed {
    fn of(entries: Option<StateEntries>) -> Self {
        match entries {
            None => Indexed::Empty,
            Some(StateEntries::Value(e)) => Indexed::Value(e.into_iter().collect()),
            Some(StateEntries::Map(e)) => Indexed::Map(e.into_iter().collect()),
            Some(StateEntries::List(e)) => Indexed::List(e.into_iter().collect()),
        }
    }

    fn kind(&self) -> Option<StateKind> {
        match self {
            Indexed::Empty => None,
            Indexed::Value(_) => Some(StateKind::Value),
            Indexed::Map(_) => Some(StateKind::Map),
            Indexed::List(_) => Some(StateKind::List),
        }
    }

    fn remove(&mut self, key: &[u8]) {
        match self {
            Indexed::Empty => {}
            Indexed::Value(m) => drop(m.remove(key)),
            Indexed::Map(m) => drop(m.remove(key)),
            Indexed::List(m) => drop(m.remove(key)),
        }
    }

    fn put(&mut self, key_group: u32, name: &str, entries: StateEntries) -> Result<(), String> {
        if let Some(kind) = self.kind()
            && kind != entries.kind()
        {
            return Err(format!(
                "key group {key_group}: state `{name}` holds {kind} entries, the delta changes {} entries",
                entries.kind()
            ));
        }
        match (&mut *self, entries) {
            (Indexed::Value(m), StateEntries::Value(e)) => m.extend(e),
            (Indexed::Map(m), StateEntries::Map(e)) => m.extend(e),
            (Indexed::List(m), StateEntries::List(e)) => m.extend(e),
            (Indexed::Empty, e) => *self = Indexed::of(Some(e)),
            _ => unreachable!("invariant: kinds checked above"),
        }
        Ok(())
    }

    fn into_entries(self) -> Option<StateEntries> {
        match self {
            Indexed::Empty => None,
            Indexed::Value(m) => Some(StateEntries::Value(m.into_iter().collect())),
            Indexed::Map(m) => Some(StateEntries::Map(m.into_iter().collect())),
            Indexed::List(m) => Some(StateEntries::List(m.into_iter().collect())),
        }
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
