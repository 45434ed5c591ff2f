//! Operator state, owned by the host.
//!
//! Keyed state lives per key group, then per state name, then per key, so
//! a snapshot (a later issue) can write it out key group by key group and
//! a restore at another parallelism only moves whole key groups. A state
//! name is bound to one kind — value, map or list — on first use.
//!
//! This module knows nothing of Wasm: the plugin layer converts WIT values
//! to [`Value`] and calls a [`KeyedStateBackend`].

use std::collections::HashMap as StdHashMap;

use thiserror::Error;

use crate::keygroup::{KeyGroup, KeyGroupRange};

/// A typed state value; mirrors the WIT `value` variant, with `nested`
/// values held as a tree (the WIT carries them as pre-order nodes).
#[derive(Debug, Clone, PartialEq)]
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
    Bytes(Vec<u8>),
    /// No value (only meaningful inside a list, map or record).
    None,
    /// A list.
    List(Vec<Value>),
    /// A map with keys of any type, in the order written.
    Map(Vec<(Value, Value)>),
    /// A record: named fields, in the order written.
    Record(Vec<(String, Value)>),
}

impl Value {
    /// A canonical byte form, used to compare and hash map keys (floats
    /// compare by bit pattern, so `NaN` keys are usable and `-0.0 != 0.0`).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_canonical(&mut out);
        out
    }

    fn write_canonical(&self, out: &mut Vec<u8>) {
        fn len(out: &mut Vec<u8>, n: usize) {
            // Lengths past u32 cannot cross the WIT boundary anyway.
            out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
        }
        match self {
            Value::Boolean(b) => out.extend_from_slice(&[0, u8::from(*b)]),
            Value::Int(i) => {
                out.push(1);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Value::Uint(u) => {
                out.push(2);
                out.extend_from_slice(&u.to_le_bytes());
            }
            Value::Float(f) => {
                out.push(3);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Value::Text(s) => {
                out.push(4);
                len(out, s.len());
                out.extend_from_slice(s.as_bytes());
            }
            Value::Bytes(b) => {
                out.push(5);
                len(out, b.len());
                out.extend_from_slice(b);
            }
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

/// One change to a keyed state entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Set a value state.
    ValueSet(Value),
    /// Clear a value state.
    ValueClear,
    /// Put an entry into a map state.
    MapPut(Value, Value),
    /// Remove an entry from a map state.
    MapRemove(Value),
    /// Clear a map state.
    MapClear,
    /// Replace a list state.
    ListSet(Vec<Value>),
    /// Clear a list state.
    ListClear,
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

/// Why a state access failed.
#[derive(Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum StateError {
    /// A key outside the subtask's key groups: the operator does not run
    /// behind a `hash` edge on that key.
    #[error(
        "key group {kg} of the key is not owned by this subtask (owns {start}..{end}); keyed state needs a `partition = \"hash\"` input",
        kg = kg.0, start = range.start, end = range.end
    )]
    ForeignKeyGroup {
        /// The key's group.
        kg: KeyGroup,
        /// What the subtask owns.
        range: KeyGroupRange,
    },
    /// A state name used as two kinds.
    #[error("state `{name}` is a {bound} state, not a {used} state")]
    KindMismatch {
        /// The state name.
        name: String,
        /// The kind it was bound to first.
        bound: StateKind,
        /// The kind of the failing access.
        used: StateKind,
    },
}

/// Keyed state of one subtask, over the key groups it owns.
///
/// Contract: every method is applied immediately and atomically with
/// respect to the others (one subtask thread calls them); reads observe all
/// earlier writes.
pub trait KeyedStateBackend: Send {
    /// The key groups this backend holds.
    fn key_groups(&self) -> KeyGroupRange;
    /// Reads a value state.
    ///
    /// # Errors
    /// [`StateError`] for a foreign key group or a kind mismatch.
    fn value_get(&self, kg: KeyGroup, name: &str, key: &[u8]) -> Result<Option<Value>, StateError>;
    /// Reads one map entry.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::value_get`].
    fn map_get(
        &self,
        kg: KeyGroup,
        name: &str,
        key: &[u8],
        map_key: &Value,
    ) -> Result<Option<Value>, StateError>;
    /// Reads every entry of a map state, in no particular order.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::value_get`].
    fn map_entries(
        &self,
        kg: KeyGroup,
        name: &str,
        key: &[u8],
    ) -> Result<Vec<(Value, Value)>, StateError>;
    /// Reads a list state.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::value_get`].
    fn list_get(&self, kg: KeyGroup, name: &str, key: &[u8]) -> Result<Vec<Value>, StateError>;
    /// Applies one update.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::value_get`].
    fn apply(
        &mut self,
        kg: KeyGroup,
        name: &str,
        key: &[u8],
        update: Update,
    ) -> Result<(), StateError>;
    /// How many (state, key) entries the backend holds.
    fn len(&self) -> usize;
    /// Whether the backend holds no entry.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// State maps hash with foldhash: several times faster than SipHash on
/// short keys, still seeded per map so keys cannot be chosen to collide.
type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;

type MapEntries = HashMap<Vec<u8>, (Value, Value)>;

#[derive(Debug)]
enum Table {
    Value(HashMap<Vec<u8>, Value>),
    Map(HashMap<Vec<u8>, MapEntries>),
    List(HashMap<Vec<u8>, Vec<Value>>),
}

impl Table {
    fn kind(&self) -> StateKind {
        match self {
            Table::Value(_) => StateKind::Value,
            Table::Map(_) => StateKind::Map,
            Table::List(_) => StateKind::List,
        }
    }

    fn new(kind: StateKind) -> Self {
        match kind {
            StateKind::Value => Table::Value(HashMap::default()),
            StateKind::Map => Table::Map(HashMap::default()),
            StateKind::List => Table::List(HashMap::default()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Table::Value(t) => t.len(),
            Table::Map(t) => t.len(),
            Table::List(t) => t.len(),
        }
    }
}

/// The heap state backend: hash maps per key group.
#[derive(Debug)]
pub struct MemoryStateBackend {
    range: KeyGroupRange,
    groups: Vec<HashMap<String, Table>>,
    /// Kinds bound so far, per state name, across key groups.
    kinds: HashMap<String, StateKind>,
}

impl MemoryStateBackend {
    /// An empty backend for `range`.
    pub fn new(range: KeyGroupRange) -> Self {
        Self {
            range,
            groups: (0..range.len()).map(|_| HashMap::default()).collect(),
            kinds: HashMap::default(),
        }
    }

    fn check(&self, kg: KeyGroup, name: &str, kind: StateKind) -> Result<usize, StateError> {
        if !self.range.contains(kg) {
            return Err(StateError::ForeignKeyGroup {
                kg,
                range: self.range,
            });
        }
        if let Some(&bound) = self.kinds.get(name)
            && bound != kind
        {
            return Err(StateError::KindMismatch {
                name: name.to_owned(),
                bound,
                used: kind,
            });
        }
        Ok((kg.0 - self.range.start) as usize)
    }

    fn table(
        &self,
        kg: KeyGroup,
        name: &str,
        kind: StateKind,
    ) -> Result<Option<&Table>, StateError> {
        let idx = self.check(kg, name, kind)?;
        Ok(self.groups[idx].get(name))
    }

    fn table_mut(
        &mut self,
        kg: KeyGroup,
        name: &str,
        kind: StateKind,
    ) -> Result<&mut Table, StateError> {
        let idx = self.check(kg, name, kind)?;
        // Look up before inserting: `entry` would allocate the name on
        // every write, which dominates a hot word count.
        if !self.kinds.contains_key(name) {
            self.kinds.insert(name.to_owned(), kind);
        }
        let group = &mut self.groups[idx];
        if !group.contains_key(name) {
            group.insert(name.to_owned(), Table::new(kind));
        }
        let table = group.get_mut(name).expect("inserted above");
        debug_assert_eq!(table.kind(), kind);
        Ok(table)
    }
}

impl KeyedStateBackend for MemoryStateBackend {
    fn key_groups(&self) -> KeyGroupRange {
        self.range
    }

    fn value_get(&self, kg: KeyGroup, name: &str, key: &[u8]) -> Result<Option<Value>, StateError> {
        Ok(match self.table(kg, name, StateKind::Value)? {
            Some(Table::Value(t)) => t.get(key).cloned(),
            _ => None,
        })
    }

    fn map_get(
        &self,
        kg: KeyGroup,
        name: &str,
        key: &[u8],
        map_key: &Value,
    ) -> Result<Option<Value>, StateError> {
        Ok(match self.table(kg, name, StateKind::Map)? {
            Some(Table::Map(t)) => t
                .get(key)
                .and_then(|m| m.get(&map_key.canonical_bytes()))
                .map(|(_, v)| v.clone()),
            _ => None,
        })
    }

    fn map_entries(
        &self,
        kg: KeyGroup,
        name: &str,
        key: &[u8],
    ) -> Result<Vec<(Value, Value)>, StateError> {
        Ok(match self.table(kg, name, StateKind::Map)? {
            Some(Table::Map(t)) => t
                .get(key)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        })
    }

    fn list_get(&self, kg: KeyGroup, name: &str, key: &[u8]) -> Result<Vec<Value>, StateError> {
        Ok(match self.table(kg, name, StateKind::List)? {
            Some(Table::List(t)) => t.get(key).cloned().unwrap_or_default(),
            _ => Vec::new(),
        })
    }

    fn apply(
        &mut self,
        kg: KeyGroup,
        name: &str,
        key: &[u8],
        update: Update,
    ) -> Result<(), StateError> {
        let kind = match &update {
            Update::ValueSet(_) | Update::ValueClear => StateKind::Value,
            Update::MapPut(..) | Update::MapRemove(_) | Update::MapClear => StateKind::Map,
            Update::ListSet(_) | Update::ListClear => StateKind::List,
        };
        match (self.table_mut(kg, name, kind)?, update) {
            (Table::Value(t), Update::ValueSet(v)) => match t.get_mut(key) {
                Some(slot) => *slot = v,
                None => {
                    t.insert(key.to_vec(), v);
                }
            },
            (Table::Value(t), Update::ValueClear) => {
                t.remove(key);
            }
            (Table::Map(t), Update::MapPut(k, v)) => {
                t.entry(key.to_vec())
                    .or_default()
                    .insert(k.canonical_bytes(), (k, v));
            }
            (Table::Map(t), Update::MapRemove(k)) => {
                if let Some(m) = t.get_mut(key) {
                    m.remove(&k.canonical_bytes());
                    if m.is_empty() {
                        t.remove(key);
                    }
                }
            }
            (Table::Map(t), Update::MapClear) => {
                t.remove(key);
            }
            (Table::List(t), Update::ListSet(values)) if values.is_empty() => {
                t.remove(key);
            }
            (Table::List(t), Update::ListSet(values)) => {
                t.insert(key.to_vec(), values);
            }
            (Table::List(t), Update::ListClear) => {
                t.remove(key);
            }
            (table, update) => unreachable!(
                "invariant: table_mut returned a {} table for {update:?}",
                table.kind()
            ),
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.groups
            .iter()
            .flat_map(|g| g.values())
            .map(Table::len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> MemoryStateBackend {
        MemoryStateBackend::new(KeyGroupRange { start: 4, end: 8 })
    }

    #[test]
    fn value_map_and_list_round_trip() {
        let mut b = backend();
        let kg = KeyGroup(5);
        assert_eq!(b.value_get(kg, "count", b"a").unwrap(), None);
        b.apply(kg, "count", b"a", Update::ValueSet(Value::Int(3)))
            .unwrap();
        assert_eq!(b.value_get(kg, "count", b"a").unwrap(), Some(Value::Int(3)));
        b.apply(kg, "count", b"a", Update::ValueClear).unwrap();
        assert_eq!(b.value_get(kg, "count", b"a").unwrap(), None);

        let k = Value::Text("x".into());
        b.apply(kg, "m", b"a", Update::MapPut(k.clone(), Value::Float(1.5)))
            .unwrap();
        b.apply(
            kg,
            "m",
            b"a",
            Update::MapPut(Value::Int(1), Value::Boolean(true)),
        )
        .unwrap();
        assert_eq!(
            b.map_get(kg, "m", b"a", &k).unwrap(),
            Some(Value::Float(1.5))
        );
        assert_eq!(b.map_entries(kg, "m", b"a").unwrap().len(), 2);
        b.apply(kg, "m", b"a", Update::MapRemove(k.clone()))
            .unwrap();
        assert_eq!(b.map_get(kg, "m", b"a", &k).unwrap(), None);

        let list = vec![Value::Bytes(vec![1]), Value::Uint(2)];
        b.apply(kg, "l", b"a", Update::ListSet(list.clone()))
            .unwrap();
        assert_eq!(b.list_get(kg, "l", b"a").unwrap(), list);
        assert_eq!(b.list_get(kg, "l", b"other").unwrap(), vec![]);
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn state_is_per_key_group() {
        let mut b = backend();
        b.apply(KeyGroup(4), "s", b"k", Update::ValueSet(Value::Int(1)))
            .unwrap();
        assert_eq!(b.value_get(KeyGroup(5), "s", b"k").unwrap(), None);
    }

    #[test]
    fn rejects_foreign_key_groups_and_kind_changes() {
        let mut b = backend();
        let err = b.value_get(KeyGroup(8), "s", b"k").unwrap_err();
        assert!(matches!(err, StateError::ForeignKeyGroup { .. }));
        b.apply(KeyGroup(4), "s", b"k", Update::ValueSet(Value::Int(1)))
            .unwrap();
        // The kind binding holds across key groups.
        let err = b.list_get(KeyGroup(6), "s", b"k").unwrap_err();
        assert_eq!(
            err,
            StateError::KindMismatch {
                name: "s".into(),
                bound: StateKind::Value,
                used: StateKind::List
            }
        );
        assert!(
            err.to_string()
                .contains("state `s` is a value state, not a list state")
        );
    }
}
