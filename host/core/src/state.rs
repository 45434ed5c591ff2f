//! Operator state, owned by the host.
//!
//! Keyed state lives per key group, then per state name, then per key, so
//! a checkpoint writes it out key group by key group and a restore at
//! another parallelism only moves whole key groups. A state
//! name is bound to one kind — value, map or list — on first use.
//!
//! This module knows nothing of Wasm: the plugin layer converts WIT values
//! to [`Value`] and calls a [`KeyedStateBackend`]. Nor does it know files:
//! [`KeyedStateBackend::snapshot`] hands out a plain [`KeyGroupSnapshot`]
//! copy that `weir_format::checkpoint` encodes. [`Value`] and the snapshot
//! types are durable data and live in `weir-format`.

use std::collections::HashMap as StdHashMap;

use thiserror::Error;

pub use weir_format::state::{KeyGroupSnapshot, NamedStateSnapshot, StateEntries, StateKind};
use weir_format::value::bytes_codec;
pub use weir_format::value::{MAX_DECODE_DEPTH, Value};

use crate::keygroup::{KeyGroup, KeyGroupRange};

/// A borrowed view of one key group's non-empty states (sorted by name),
/// serialized exactly as the [`KeyGroupSnapshot`] a deep copy would give.
pub struct KeyGroupView<'a> {
    key_group: u32,
    states: Vec<(&'a str, &'a Table)>,
}

impl KeyGroupView<'_> {
    /// The key group.
    pub fn key_group(&self) -> u32 {
        self.key_group
    }

    /// Its states, by name: each with its kind, number of keys and a view
    /// of its entries that serializes exactly as [`StateEntries`] does (a
    /// savepoint encodes one section per state from these).
    pub fn states(&self) -> impl Iterator<Item = (&str, StateKind, usize, EntriesView<'_>)> {
        self.states
            .iter()
            .map(|(name, table)| (*name, table.kind(), table.len(), EntriesView(table)))
    }
}

/// A borrowed view of one state's entries in one key group, serialized
/// exactly as the [`StateEntries`] a deep copy would give.
pub struct EntriesView<'a>(&'a Table);

impl serde::Serialize for EntriesView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        views::Entries(self.0).serialize(s)
    }
}

/// Encodes borrowed key-group views (see
/// [`KeyedStateBackend::snapshot_views`]) as checkpoint key-group section
/// payloads.
pub fn encode_key_groups(
    views: &[KeyGroupView<'_>],
) -> Vec<weir_format::checkpoint::EncodedKeyGroup> {
    views
        .iter()
        .map(|v| weir_format::checkpoint::EncodedKeyGroup {
            key_group: v.key_group(),
            payload: postcard::to_allocvec(v)
                .expect("invariant: postcard serializes state into a vector without error"),
            delta: false,
        })
        .collect()
}

/// Frames, as savepoint keyed sections, every non-empty state of every key group `views` show, one
/// keyed section each, without copying the state first.
pub fn frame_keyed_sections(
    views: &[KeyGroupView<'_>],
) -> Vec<weir_format::savepoint::FramedSection> {
    views
        .iter()
        .flat_map(|v| {
            v.states()
                .filter(|(_, _, n, _)| *n > 0)
                .map(|(name, kind, n, entries)| {
                    weir_format::savepoint::frame_keyed_section(
                        name,
                        kind,
                        v.key_group(),
                        n,
                        &entries,
                    )
                })
        })
        .collect()
}

mod views {
    //! Serialization of [`super::KeyGroupView`] with the shapes the derived
    //! `Serialize` of the snapshot types produce: struct fields in order,
    //! `StateEntries` variants by index, keys as bytes.

    use serde::ser::{Serialize, SerializeSeq, SerializeStruct, Serializer};

    use super::bytes_codec::BytesRef;
    use super::{HashMap, KeyGroupView, MapEntries, Table, Value};

    impl Serialize for KeyGroupView<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut st = s.serialize_struct("KeyGroupSnapshot", 2)?;
            st.serialize_field("key_group", &self.key_group)?;
            st.serialize_field("states", &States(&self.states))?;
            st.end()
        }
    }

    struct States<'a>(&'a [(&'a str, &'a Table)]);

    impl Serialize for States<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(self.0.len()))?;
            for (name, table) in self.0 {
                seq.serialize_element(&Named(name, table))?;
            }
            seq.end()
        }
    }

    struct Named<'a>(&'a str, &'a Table);

    impl Serialize for Named<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut st = s.serialize_struct("NamedStateSnapshot", 2)?;
            st.serialize_field("name", self.0)?;
            st.serialize_field("entries", &Entries(self.1))?;
            st.end()
        }
    }

    pub(super) struct Entries<'a>(pub(super) &'a Table);

    impl Serialize for Entries<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            // The indices of `StateEntries`' variants: value, map, list.
            match self.0 {
                Table::Value(t) => {
                    s.serialize_newtype_variant("StateEntries", 0, "Value", &Pairs(t))
                }
                Table::Map(t) => {
                    s.serialize_newtype_variant("StateEntries", 1, "Map", &MapPairs(t))
                }
                Table::List(t) => s.serialize_newtype_variant("StateEntries", 2, "List", &Pairs(t)),
            }
        }
    }

    struct Pairs<'a, V>(&'a HashMap<Vec<u8>, V>);

    impl<V: Serialize> Serialize for Pairs<'_, V> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(self.0.len()))?;
            for (key, value) in self.0 {
                seq.serialize_element(&(BytesRef(key), value))?;
            }
            seq.end()
        }
    }

    struct MapPairs<'a>(&'a HashMap<Vec<u8>, MapEntries>);

    impl Serialize for MapPairs<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(self.0.len()))?;
            for (key, entries) in self.0 {
                seq.serialize_element(&(BytesRef(key), MapValues(entries)))?;
            }
            seq.end()
        }
    }

    struct MapValues<'a>(&'a MapEntries);

    impl Serialize for MapValues<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(self.0.len()))?;
            for entry in self.0.values() {
                let (k, v): &(Value, Value) = entry;
                seq.serialize_element(&(k, v))?;
            }
            seq.end()
        }
    }
}

mod delta {
    //! Serialization of a key group's recorded changes with the shape of
    //! `weir_format::state::KeyGroupDelta`, straight from the live tables:
    //! a changed key still present is written with its state now, one no
    //! longer present as removed.

    use serde::ser::{Serialize, SerializeSeq, SerializeStruct, Serializer};

    use super::bytes_codec::BytesRef;
    use super::{MapEntries, Table, Value};

    /// One state's changed keys, split into those present and removed.
    pub(super) struct StateChanges<'a> {
        pub(super) name: &'a str,
        table: Option<&'a Table>,
        present: Vec<&'a [u8]>,
        removed: Vec<&'a [u8]>,
    }

    impl<'a> StateChanges<'a> {
        pub(super) fn new(
            name: &'a str,
            table: Option<&'a Table>,
            keys: impl Iterator<Item = &'a Vec<u8>>,
        ) -> Self {
            let (mut present, mut removed) = (Vec::new(), Vec::new());
            for key in keys {
                let here = match table {
                    Some(Table::Value(t)) => t.contains_key(key),
                    Some(Table::Map(t)) => t.contains_key(key),
                    Some(Table::List(t)) => t.contains_key(key),
                    None => false,
                };
                if here {
                    present.push(key.as_slice());
                } else {
                    removed.push(key.as_slice());
                }
            }
            Self {
                name,
                table,
                present,
                removed,
            }
        }
    }

    pub(super) struct DeltaView<'a> {
        pub(super) key_group: u32,
        pub(super) states: Vec<StateChanges<'a>>,
    }

    impl Serialize for DeltaView<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut st = s.serialize_struct("KeyGroupDelta", 3)?;
            st.serialize_field("key_group", &self.key_group)?;
            st.serialize_field("changed", &Changed(&self.states))?;
            st.serialize_field("removed", &Removed(&self.states))?;
            st.end()
        }
    }

    struct Changed<'a>(&'a [StateChanges<'a>]);

    impl Serialize for Changed<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let states = || self.0.iter().filter(|c| !c.present.is_empty());
            let mut seq = s.serialize_seq(Some(states().count()))?;
            for c in states() {
                seq.serialize_element(&Named(c))?;
            }
            seq.end()
        }
    }

    struct Named<'a>(&'a StateChanges<'a>);

    impl Serialize for Named<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut st = s.serialize_struct("NamedStateSnapshot", 2)?;
            st.serialize_field("name", self.0.name)?;
            st.serialize_field("entries", &Entries(self.0))?;
            st.end()
        }
    }

    struct Entries<'a>(&'a StateChanges<'a>);

    impl Serialize for Entries<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let keys = &self.0.present;
            // The indices of `StateEntries`' variants: value, map, list.
            match self.0.table {
                Some(Table::Value(t)) => {
                    s.serialize_newtype_variant("StateEntries", 0, "Value", &Pairs(keys, |k| &t[k]))
                }
                Some(Table::Map(t)) => s.serialize_newtype_variant(
                    "StateEntries",
                    1,
                    "Map",
                    &Pairs(keys, |k| MapValues(&t[k])),
                ),
                Some(Table::List(t)) => {
                    s.serialize_newtype_variant("StateEntries", 2, "List", &Pairs(keys, |k| &t[k]))
                }
                None => unreachable!("invariant: a present key has a table"),
            }
        }
    }

    struct Pairs<'a, F>(&'a [&'a [u8]], F);

    impl<'a, V: Serialize, F: Fn(&'a [u8]) -> V> Serialize for Pairs<'a, F> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(self.0.len()))?;
            for key in self.0 {
                seq.serialize_element(&(BytesRef(key), (self.1)(key)))?;
            }
            seq.end()
        }
    }

    struct MapValues<'a>(&'a MapEntries);

    impl Serialize for MapValues<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(self.0.len()))?;
            for entry in self.0.values() {
                let (k, v): &(Value, Value) = entry;
                seq.serialize_element(&(k, v))?;
            }
            seq.end()
        }
    }

    struct Removed<'a>(&'a [StateChanges<'a>]);

    impl Serialize for Removed<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let states = || self.0.iter().filter(|c| !c.removed.is_empty());
            let mut seq = s.serialize_seq(Some(states().count()))?;
            for c in states() {
                seq.serialize_element(&RemovedKeys(c))?;
            }
            seq.end()
        }
    }

    struct RemovedKeys<'a>(&'a StateChanges<'a>);

    impl Serialize for RemovedKeys<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut st = s.serialize_struct("RemovedKeys", 2)?;
            st.serialize_field("name", self.0.name)?;
            st.serialize_field("keys", &Keys(&self.0.removed))?;
            st.end()
        }
    }

    struct Keys<'a>(&'a [&'a [u8]]);

    impl Serialize for Keys<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(self.0.len()))?;
            for key in self.0 {
                seq.serialize_element(&BytesRef(key))?;
            }
            seq.end()
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
    /// The backend itself failed (a disk, a store): the host's failure,
    /// not the operator's. The plugin never sees it: the call traps and
    /// the job fails as an external error, which a restart may get past.
    #[error("the state backend failed: {message}")]
    Backend {
        /// What failed.
        message: String,
    },
}

impl StateError {
    /// Whether the operator caused it (a foreign key, a kind mismatch),
    /// so it goes back to the operator as an error it may handle; a
    /// backend failure does not.
    pub fn is_operators(&self) -> bool {
        !matches!(self, StateError::Backend { .. })
    }
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
    /// About how many bytes the entries take: keys and values with their
    /// payloads (not the hash tables' overhead). Kept up to date by every
    /// write, so the host can bound a plugin's keyed state cheaply.
    fn approx_bytes(&self) -> u64;
    /// The kind state `name` is bound to here (by a write or a restore),
    /// or `None` if it is unbound; `keyed-state.declare` checks it.
    fn bound_kind(&self, name: &str) -> Option<StateKind>;
    /// A deep copy of every non-empty key group, in ascending key-group
    /// order (the synchronous part of a checkpoint).
    ///
    /// States are sorted by name; entries within a state come in no
    /// particular order. A state whose entries were all removed is left
    /// out, and with it its kind binding.
    fn snapshot(&self) -> Vec<KeyGroupSnapshot>;
    /// Borrowed views of the same key groups as [`KeyedStateBackend::snapshot`],
    /// which serialize exactly as those copies would: encoding straight
    /// from the live state is several times cheaper than copying it first
    /// (no allocation per entry), so a checkpoint's synchronous phase
    /// encodes these instead.
    fn snapshot_views(&self) -> Vec<KeyGroupView<'_>>;
    /// Loads key groups (from a checkpoint) into this backend, replacing
    /// what it held for those groups.
    ///
    /// Either every group is loaded or, on error, the backend is unchanged.
    ///
    /// # Errors
    /// [`StateError::ForeignKeyGroup`] for a group outside
    /// [`KeyedStateBackend::key_groups`]; [`StateError::KindMismatch`] if a
    /// state name arrives as two kinds, or as another kind than it is
    /// already bound to here.
    fn restore(&mut self, groups: Vec<KeyGroupSnapshot>) -> Result<(), StateError>;
    /// Starts recording which keys change, for incremental checkpoints
    /// ([`KeyedStateBackend::encode_changes`]). A backend that cannot
    /// leaves it off, and every checkpoint of it is whole.
    fn track_changes(&mut self) {}
    /// Whether changes are recorded.
    fn tracks_changes(&self) -> bool {
        false
    }
    /// How many (state, key) changes are recorded.
    fn changes_len(&self) -> usize {
        0
    }
    /// The last change interval whose changes were not all recorded
    /// (they were dropped for a whole checkpoint, or recording stopped at
    /// its budget: then `u64::MAX`, until the next reset): a checkpoint
    /// may extend only one that ended that interval or a later one.
    fn changes_untracked_through(&self) -> u64 {
        u64::MAX
    }
    /// Records at most `budget` changed keys (more would make the next
    /// checkpoint whole anyway); past it recording stops until
    /// [`KeyedStateBackend::reset_changes`].
    fn budget_changes(&mut self, budget: usize) {
        let _ = budget;
    }
    /// Drops every recorded change, for a whole checkpoint that ended
    /// interval `through`, and records again from the next interval.
    fn reset_changes(&mut self, through: u64) {
        let _ = through;
    }
    /// Ends the current change interval and returns its number: every
    /// change recorded so far is in it or an earlier one. Intervals count
    /// from 1; a checkpoint's synchronous phase ends one.
    fn end_interval(&mut self) -> u64 {
        0
    }
    /// Forgets the changes up to interval `through`, then encodes every key
    /// changed since as key-group delta sections: its state now, or its
    /// removal. Only with [`KeyedStateBackend::tracks_changes`].
    fn encode_changes(&mut self, through: u64) -> Vec<weir_format::checkpoint::EncodedKeyGroup> {
        let _ = through;
        Vec::new()
    }
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

    /// [`KeyedStateBackend::approx_bytes`] of this table, counted afresh.
    fn approx_bytes(&self) -> u64 {
        let bytes: usize = match self {
            Table::Value(t) => t.iter().map(|(k, v)| k.len() + v.approx_bytes()).sum(),
            Table::Map(t) => t.iter().map(|(k, m)| k.len() + map_bytes(m)).sum(),
            Table::List(t) => t.iter().map(|(k, l)| k.len() + list_bytes(l)).sum(),
        };
        bytes as u64
    }

    /// A deep copy of the entries, in hash order: sorting millions of keys
    /// would lengthen the pause a snapshot imposes on processing.
    fn snapshot(&self) -> StateEntries {
        match self {
            Table::Value(t) => {
                StateEntries::Value(t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            }
            Table::Map(t) => StateEntries::Map(
                t.iter()
                    .map(|(k, m)| (k.clone(), m.values().cloned().collect()))
                    .collect(),
            ),
            Table::List(t) => {
                StateEntries::List(t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            }
        }
    }

    /// Adds restored entries (a later entry for the same key wins), keeping
    /// the table's invariants: no empty map or list is stored.
    fn load(&mut self, entries: StateEntries) {
        match (self, entries) {
            (Table::Value(t), StateEntries::Value(e)) => {
                t.reserve(e.len());
                t.extend(e);
            }
            (Table::Map(t), StateEntries::Map(e)) => {
                t.reserve(e.len());
                for (key, pairs) in e {
                    if pairs.is_empty() {
                        continue;
                    }
                    let map = t.entry(key).or_default();
                    map.reserve(pairs.len());
                    map.extend(
                        pairs
                            .into_iter()
                            .map(|(k, v)| (k.canonical_bytes(), (k, v))),
                    );
                }
            }
            (Table::List(t), StateEntries::List(e)) => {
                t.reserve(e.len());
                t.extend(e.into_iter().filter(|(_, items)| !items.is_empty()));
            }
            (table, entries) => unreachable!(
                "invariant: restore checked kinds, yet a {} table got {} entries",
                table.kind(),
                entries.kind()
            ),
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
    /// [`KeyedStateBackend::approx_bytes`], kept by every write.
    bytes: u64,
    /// What changed, once incremental checkpoints asked for it.
    changes: Option<Changes>,
}

/// The keys changed per key group and state, each with the interval it
/// last changed in (a checkpoint's synchronous phase ends an interval).
#[derive(Debug)]
struct Changes {
    interval: u64,
    groups: Vec<HashMap<String, HashMap<Vec<u8>, u64>>>,
    /// Keys recorded.
    count: usize,
    /// Most keys to record: past it recording stops, since the next
    /// checkpoint will be whole anyway, and costs nothing more.
    budget: usize,
    /// Whether recording stopped at the budget.
    stopped: bool,
    /// The last interval whose changes were not all recorded (0: none).
    untracked_through: u64,
}

impl Changes {
    fn record(&mut self, idx: usize, name: &str, key: &[u8]) {
        if self.stopped {
            return;
        }
        let group = &mut self.groups[idx];
        // Look up before inserting, as `table_mut` does: no allocation
        // for a key that changed before.
        if !group.contains_key(name) {
            group.insert(name.to_owned(), HashMap::default());
        }
        let keys = group.get_mut(name).expect("inserted above");
        match keys.get_mut(key) {
            Some(interval) => *interval = self.interval,
            None if self.count >= self.budget => self.stopped = true,
            None => {
                keys.insert(key.to_vec(), self.interval);
                self.count += 1;
            }
        }
    }

    fn forget(&mut self, through: u64) {
        for group in &mut self.groups {
            for keys in group.values_mut() {
                keys.retain(|_, interval| *interval > through);
            }
            group.retain(|_, keys| !keys.is_empty());
        }
        self.count = self.len();
    }

    fn len(&self) -> usize {
        self.groups
            .iter()
            .flat_map(|g| g.values())
            .map(|k| k.len())
            .sum()
    }
}

impl MemoryStateBackend {
    /// An empty backend for `range`.
    pub fn new(range: KeyGroupRange) -> Self {
        Self {
            range,
            groups: (0..range.len()).map(|_| HashMap::default()).collect(),
            kinds: HashMap::default(),
            bytes: 0,
            changes: None,
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

    fn bound_kind(&self, name: &str) -> Option<StateKind> {
        self.kinds.get(name).copied()
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
        let (mut added, mut removed) = (0usize, 0usize);
        match (self.table_mut(kg, name, kind)?, update) {
            (Table::Value(t), Update::ValueSet(v)) => {
                added = v.approx_bytes();
                match t.get_mut(key) {
                    Some(slot) => {
                        removed = slot.approx_bytes();
                        *slot = v;
                    }
                    None => {
                        added += key.len();
                        t.insert(key.to_vec(), v);
                    }
                }
            }
            (Table::Value(t), Update::ValueClear) => {
                if let Some(old) = t.remove(key) {
                    removed = key.len() + old.approx_bytes();
                }
            }
            (Table::Map(t), Update::MapPut(k, v)) => {
                let canonical = k.canonical_bytes();
                added = canonical.len() + k.approx_bytes() + v.approx_bytes();
                let map = match t.get_mut(key) {
                    Some(map) => map,
                    None => {
                        added += key.len();
                        t.entry(key.to_vec()).or_default()
                    }
                };
                if let Some((c, (ok, ov))) = map.remove_entry(&canonical) {
                    removed = c.len() + ok.approx_bytes() + ov.approx_bytes();
                }
                map.insert(canonical, (k, v));
            }
            (Table::Map(t), Update::MapRemove(k)) => {
                if let Some(m) = t.get_mut(key) {
                    if let Some((c, (ok, ov))) = m.remove_entry(&k.canonical_bytes()) {
                        removed = c.len() + ok.approx_bytes() + ov.approx_bytes();
                    }
                    if m.is_empty() {
                        t.remove(key);
                        removed += key.len();
                    }
                }
            }
            (Table::Map(t), Update::MapClear) => {
                if let Some(m) = t.remove(key) {
                    removed = key.len() + map_bytes(&m);
                }
            }
            (Table::List(t), Update::ListSet(values)) if values.is_empty() => {
                if let Some(old) = t.remove(key) {
                    removed = key.len() + list_bytes(&old);
                }
            }
            (Table::List(t), Update::ListSet(values)) => {
                added = key.len() + list_bytes(&values);
                if let Some(old) = t.insert(key.to_vec(), values) {
                    removed = key.len() + list_bytes(&old);
                }
            }
            (Table::List(t), Update::ListClear) => {
                if let Some(old) = t.remove(key) {
                    removed = key.len() + list_bytes(&old);
                }
            }
            (table, update) => unreachable!(
                "invariant: table_mut returned a {} table for {update:?}",
                table.kind()
            ),
        }
        self.bytes = (self.bytes + added as u64).saturating_sub(removed as u64);
        if let Some(changes) = &mut self.changes {
            changes.record((kg.0 - self.range.start) as usize, name, key);
        }
        Ok(())
    }

    fn track_changes(&mut self) {
        if self.changes.is_none() {
            self.changes = Some(Changes {
                interval: 1,
                groups: (0..self.range.len()).map(|_| HashMap::default()).collect(),
                count: 0,
                // Nothing until the first checkpoint, which is whole
                // whatever changed: its plan sets the budget.
                budget: 0,
                stopped: false,
                untracked_through: 0,
            });
        }
    }

    fn tracks_changes(&self) -> bool {
        self.changes.is_some()
    }

    fn changes_len(&self) -> usize {
        self.changes.as_ref().map_or(0, |c| c.count)
    }

    fn changes_untracked_through(&self) -> u64 {
        match &self.changes {
            Some(c) if c.stopped => u64::MAX,
            Some(c) => c.untracked_through,
            None => u64::MAX,
        }
    }

    fn budget_changes(&mut self, budget: usize) {
        if let Some(changes) = &mut self.changes {
            changes.budget = budget;
        }
    }

    fn reset_changes(&mut self, through: u64) {
        if let Some(changes) = &mut self.changes {
            changes.groups.iter_mut().for_each(HashMap::clear);
            changes.count = 0;
            changes.stopped = false;
            changes.untracked_through = changes.untracked_through.max(through);
        }
    }

    fn end_interval(&mut self) -> u64 {
        match &mut self.changes {
            Some(changes) => {
                changes.interval += 1;
                changes.interval - 1
            }
            None => 0,
        }
    }

    fn encode_changes(&mut self, through: u64) -> Vec<weir_format::checkpoint::EncodedKeyGroup> {
        let Some(changes) = &mut self.changes else {
            return Vec::new();
        };
        changes.forget(through);
        let mut out = Vec::new();
        for (kg, (tables, changed)) in
            (self.range.start..).zip(self.groups.iter().zip(&changes.groups))
        {
            if changed.is_empty() {
                continue;
            }
            let mut states: Vec<delta::StateChanges<'_>> = changed
                .iter()
                .map(|(name, keys)| delta::StateChanges::new(name, tables.get(name), keys.keys()))
                .collect();
            states.sort_unstable_by(|a, b| a.name.cmp(b.name));
            let view = delta::DeltaView {
                key_group: kg,
                states,
            };
            out.push(weir_format::checkpoint::EncodedKeyGroup {
                key_group: kg,
                payload: postcard::to_allocvec(&view)
                    .expect("invariant: postcard serializes state into a vector without error"),
                delta: true,
            });
        }
        out
    }

    fn len(&self) -> usize {
        self.groups
            .iter()
            .flat_map(|g| g.values())
            .map(Table::len)
            .sum()
    }

    fn approx_bytes(&self) -> u64 {
        self.bytes
    }

    fn snapshot(&self) -> Vec<KeyGroupSnapshot> {
        let mut out = Vec::new();
        for (kg, group) in (self.range.start..).zip(&self.groups) {
            let mut states: Vec<NamedStateSnapshot> = group
                .iter()
                .filter(|(_, table)| table.len() > 0)
                .map(|(name, table)| NamedStateSnapshot {
                    name: name.clone(),
                    entries: table.snapshot(),
                })
                .collect();
            if states.is_empty() {
                continue;
            }
            states.sort_unstable_by(|a, b| a.name.cmp(&b.name));
            out.push(KeyGroupSnapshot {
                key_group: kg,
                states,
            });
        }
        out
    }

    fn snapshot_views(&self) -> Vec<KeyGroupView<'_>> {
        let mut out = Vec::new();
        for (kg, group) in (self.range.start..).zip(&self.groups) {
            let mut states: Vec<(&str, &Table)> = group
                .iter()
                .filter(|(_, table)| table.len() > 0)
                .map(|(name, table)| (name.as_str(), table))
                .collect();
            if states.is_empty() {
                continue;
            }
            states.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(KeyGroupView {
                key_group: kg,
                states,
            });
        }
        out
    }

    fn restore(&mut self, groups: Vec<KeyGroupSnapshot>) -> Result<(), StateError> {
        // Check everything first, so a bad snapshot leaves the backend as
        // it was.
        let mut incoming: HashMap<&str, StateKind> = HashMap::default();
        for group in &groups {
            let kg = KeyGroup(group.key_group);
            if !self.range.contains(kg) {
                return Err(StateError::ForeignKeyGroup {
                    kg,
                    range: self.range,
                });
            }
            for state in &group.states {
                let kind = state.entries.kind();
                let name = state.name.as_str();
                match self.kinds.get(name).or_else(|| incoming.get(name)) {
                    Some(&bound) if bound != kind => {
                        return Err(StateError::KindMismatch {
                            name: name.to_owned(),
                            bound,
                            used: kind,
                        });
                    }
                    Some(_) => {}
                    None => {
                        incoming.insert(name, kind);
                    }
                }
            }
        }
        let new_kinds: Vec<(String, StateKind)> = incoming
            .into_iter()
            .map(|(name, kind)| (name.to_owned(), kind))
            .collect();
        self.kinds.extend(new_kinds);

        for group in &groups {
            let idx = (group.key_group - self.range.start) as usize;
            self.groups[idx].clear();
            // What a restore loads is in the snapshot it came from.
            if let Some(changes) = &mut self.changes {
                changes.groups[idx].clear();
            }
        }
        for group in groups {
            let tables = &mut self.groups[(group.key_group - self.range.start) as usize];
            for state in group.states {
                let kind = state.entries.kind();
                tables
                    .entry(state.name)
                    .or_insert_with(|| Table::new(kind))
                    .load(state.entries);
            }
        }
        self.bytes = self
            .groups
            .iter()
            .flat_map(|g| g.values())
            .map(Table::approx_bytes)
            .sum();
        Ok(())
    }
}

fn list_bytes(values: &[Value]) -> usize {
    values.iter().map(Value::approx_bytes).sum()
}

fn map_bytes(map: &MapEntries) -> usize {
    map.iter()
        .map(|(c, (k, v))| c.len() + k.approx_bytes() + v.approx_bytes())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encoding from borrowed views of the live state gives byte for byte
    /// the files a deep copy would, checkpoint and savepoint alike.
    #[test]
    fn views_of_the_live_state_encode_exactly_as_its_copy() {
        use weir_format::checkpoint::{
            SubtaskSnapshot, decode_state_file, encode_state_file, encode_state_file_with,
        };
        use weir_format::savepoint;

        use crate::keygroup::key_group_of;
        let mut b = MemoryStateBackend::new(KeyGroupRange { start: 0, end: 16 });
        for i in 0..500u32 {
            let key = format!("key-{i}").into_bytes();
            let kg = key_group_of(&key, 16);
            b.apply(
                kg,
                "count",
                &key,
                Update::ValueSet(Value::Int(i64::from(i))),
            )
            .unwrap();
            if i % 3 == 0 {
                let entry = (Value::Text(format!("m{i}")), Value::Float(f64::from(i)));
                b.apply(kg, "map", &key, Update::MapPut(entry.0, entry.1))
                    .unwrap();
            }
            if i % 5 == 0 {
                let items = vec![Value::None, Value::List(vec![Value::Uint(u64::from(i))])];
                b.apply(kg, "list", &key, Update::ListSet(items)).unwrap();
            }
        }
        // A state emptied again is left out of both.
        let gone = b"key-7".to_vec();
        b.apply(key_group_of(&gone, 16), "count", &gone, Update::ValueClear)
            .unwrap();
        let copied = encode_state_file(&SubtaskSnapshot {
            keyed: b.snapshot(),
            ..SubtaskSnapshot::default()
        });
        let viewed = encode_state_file_with(
            &SubtaskSnapshot::default(),
            encode_key_groups(&b.snapshot_views()),
        );
        assert_eq!(viewed, copied);
        let decoded = decode_state_file("f", &viewed.bytes).unwrap();
        assert_eq!(decoded.keyed, b.snapshot());
        let from_views =
            savepoint::assemble_state_file(frame_keyed_sections(&b.snapshot_views()), &[]);
        let from_copy = savepoint::encode_state_file(&b.snapshot(), &[]);
        assert_eq!(from_views, from_copy);
    }

    fn backend() -> MemoryStateBackend {
        MemoryStateBackend::new(KeyGroupRange { start: 4, end: 8 })
    }

    #[test]
    fn approx_bytes_follows_every_write_and_a_restore() {
        let mut b = backend();
        let kg = KeyGroup(5);
        let recount = |b: &MemoryStateBackend| -> u64 {
            b.groups
                .iter()
                .flat_map(|g| g.values())
                .map(Table::approx_bytes)
                .sum()
        };
        let text = |s: &str| Value::Text(s.into());
        let updates = [
            (
                "v",
                &b"k1"[..],
                Update::ValueSet(Value::Bytes(vec![0; 1000])),
            ),
            ("v", b"k1", Update::ValueSet(text("small"))),
            ("v", b"k2", Update::ValueSet(Value::Int(1))),
            ("v", b"k2", Update::ValueClear),
            ("m", b"k1", Update::MapPut(text("a"), text("xxxx"))),
            ("m", b"k1", Update::MapPut(text("a"), text("y"))),
            (
                "m",
                b"k1",
                Update::MapPut(text("b"), Value::List(vec![Value::Int(1)])),
            ),
            ("m", b"k1", Update::MapRemove(text("a"))),
            ("m", b"k2", Update::MapPut(text("c"), text("z"))),
            ("m", b"k2", Update::MapRemove(text("c"))),
            ("m", b"k3", Update::MapPut(text("c"), text("z"))),
            ("m", b"k3", Update::MapClear),
            ("l", b"k1", Update::ListSet(vec![text("one"), text("two")])),
            ("l", b"k1", Update::ListSet(vec![text("three")])),
            ("l", b"k2", Update::ListSet(vec![text("x")])),
            ("l", b"k2", Update::ListSet(vec![])),
            ("l", b"k3", Update::ListSet(vec![text("x")])),
            ("l", b"k3", Update::ListClear),
        ];
        for (name, key, update) in updates {
            b.apply(kg, name, key, update).unwrap();
            assert_eq!(b.approx_bytes(), recount(&b), "after a write to {name}");
        }
        assert!(b.approx_bytes() > 0);
        let mut restored = backend();
        restored.restore(b.snapshot()).unwrap();
        assert_eq!(restored.approx_bytes(), b.approx_bytes());
        for (name, key) in [("v", &b"k1"[..]), ("m", b"k1"), ("l", b"k1")] {
            let clear = match name {
                "v" => Update::ValueClear,
                "m" => Update::MapClear,
                _ => Update::ListClear,
            };
            b.apply(kg, name, key, clear).unwrap();
        }
        assert_eq!(b.approx_bytes(), 0);
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

    /// Snapshots with entries sorted, to compare backends whose hash
    /// orders differ.
    fn sorted(mut groups: Vec<KeyGroupSnapshot>) -> Vec<KeyGroupSnapshot> {
        for g in &mut groups {
            for s in &mut g.states {
                match &mut s.entries {
                    StateEntries::Value(e) => e.sort_by(|a, b| a.0.cmp(&b.0)),
                    StateEntries::List(e) => e.sort_by(|a, b| a.0.cmp(&b.0)),
                    StateEntries::Map(e) => {
                        e.sort_by(|a, b| a.0.cmp(&b.0));
                        for (_, m) in e {
                            m.sort_by_key(|(k, _)| k.canonical_bytes());
                        }
                    }
                }
            }
        }
        groups
    }

    fn populated() -> MemoryStateBackend {
        let mut b = backend();
        for kg in [4, 6, 7] {
            let kg = KeyGroup(kg);
            for i in 0..20u8 {
                let key = [i, kg.0 as u8];
                b.apply(kg, "count", &key, Update::ValueSet(Value::Int(i.into())))
                    .unwrap();
                b.apply(
                    kg,
                    "seen",
                    &key,
                    Update::MapPut(Value::Uint(i.into()), Value::Text(format!("{i}"))),
                )
                .unwrap();
                b.apply(
                    kg,
                    "seen",
                    &key,
                    Update::MapPut(Value::None, Value::Bytes(vec![i])),
                )
                .unwrap();
                b.apply(
                    kg,
                    "recent",
                    &key,
                    Update::ListSet(vec![Value::Float(f64::from(i)), Value::None]),
                )
                .unwrap();
            }
        }
        // A state whose only entry is gone is not in the snapshot.
        b.apply(KeyGroup(5), "gone", b"k", Update::ValueSet(Value::Int(1)))
            .unwrap();
        b.apply(KeyGroup(5), "gone", b"k", Update::ValueClear)
            .unwrap();
        b
    }

    #[test]
    fn snapshot_then_restore_gives_identical_reads() {
        let b = populated();
        let snap = b.snapshot();
        let groups: Vec<u32> = snap.iter().map(|g| g.key_group).collect();
        assert_eq!(groups, vec![4, 6, 7], "non-empty groups, ascending");
        let names: Vec<&str> = snap[0].states.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["count", "recent", "seen"], "sorted by name");

        let mut restored = backend();
        restored.restore(snap.clone()).unwrap();
        assert_eq!(restored.len(), b.len());
        assert_eq!(sorted(restored.snapshot()), sorted(snap));
        for kg in [4, 6, 7] {
            let kg = KeyGroup(kg);
            for i in 0..20u8 {
                let key = [i, kg.0 as u8];
                assert_eq!(
                    restored.value_get(kg, "count", &key).unwrap(),
                    b.value_get(kg, "count", &key).unwrap()
                );
                assert_eq!(
                    restored
                        .map_get(kg, "seen", &key, &Value::Uint(i.into()))
                        .unwrap(),
                    Some(Value::Text(format!("{i}")))
                );
                assert_eq!(restored.map_entries(kg, "seen", &key).unwrap().len(), 2);
                assert_eq!(
                    restored.list_get(kg, "recent", &key).unwrap(),
                    b.list_get(kg, "recent", &key).unwrap()
                );
            }
        }
        // Kind bindings come back with the states.
        assert!(matches!(
            restored.list_get(KeyGroup(5), "count", b"k"),
            Err(StateError::KindMismatch { .. })
        ));
    }

    /// A full checkpoint, then deltas: the chain restores exactly the
    /// state a full checkpoint taken at the last one would hold.
    #[test]
    fn a_full_checkpoint_and_its_deltas_restore_the_live_state() {
        use weir_format::checkpoint::{
            SubtaskSnapshot, decode_state_file_with_deltas, encode_state_file,
            encode_state_file_with, merge_chain,
        };
        let mut b = backend();
        b.track_changes();
        b.budget_changes(usize::MAX);
        let full = |b: &MemoryStateBackend| {
            let file = encode_state_file(&SubtaskSnapshot {
                keyed: b.snapshot(),
                ..SubtaskSnapshot::default()
            });
            decode_state_file_with_deltas("full", &file.bytes).unwrap()
        };
        let delta = |b: &mut MemoryStateBackend, through| {
            let file =
                encode_state_file_with(&SubtaskSnapshot::default(), b.encode_changes(through));
            decode_state_file_with_deltas("delta", &file.bytes).unwrap()
        };
        let populated = populated();
        b.restore(populated.snapshot()).unwrap();
        assert_eq!(b.changes_len(), 0, "what a restore loads is no change");
        // Checkpoint 1 (interval 1): full.
        let one = b.end_interval();
        let base = full(&b);
        // Interval 2: a value changes, a map entry goes, a list is
        // cleared, a new key and a new state appear, a key comes and goes.
        let kg = KeyGroup(4);
        b.apply(kg, "count", &[1, 4], Update::ValueSet(Value::Int(100)))
            .unwrap();
        b.apply(kg, "seen", &[2, 4], Update::MapRemove(Value::None))
            .unwrap();
        b.apply(KeyGroup(6), "recent", &[3, 6], Update::ListClear)
            .unwrap();
        b.apply(
            KeyGroup(5),
            "fresh",
            b"n",
            Update::ValueSet(Value::Boolean(true)),
        )
        .unwrap();
        b.apply(kg, "count", b"brief", Update::ValueSet(Value::Int(1)))
            .unwrap();
        b.apply(kg, "count", b"brief", Update::ValueClear).unwrap();
        assert_eq!(b.changes_len(), 5);
        // Checkpoint 2 extends 1: only the changes since interval 1.
        let two = b.end_interval();
        let d2 = delta(&mut b, one);
        assert_eq!(
            d2.1.iter().map(|d| d.key_group).collect::<Vec<_>>(),
            [4, 5, 6]
        );
        // Interval 3: another change. Checkpoint 3 extends 2, which
        // completed, so interval 2's changes are forgotten.
        b.apply(KeyGroup(7), "count", &[5, 7], Update::ValueClear)
            .unwrap();
        b.end_interval();
        let d3 = delta(&mut b, two);
        assert_eq!(b.changes_len(), 1);
        assert_eq!(d3.1.len(), 1);
        let merged = merge_chain(vec![base.clone(), d2, d3]).unwrap();
        assert_eq!(sorted(merged.keyed), sorted(b.snapshot()));
        // Had a checkpoint failed, the next would extend the one before
        // with every change since: a fresh tracker shows the rule.
        let mut c = backend();
        c.track_changes();
        c.budget_changes(usize::MAX);
        c.apply(kg, "count", b"x", Update::ValueSet(Value::Int(1)))
            .unwrap();
        let first = c.end_interval();
        c.apply(kg, "count", b"y", Update::ValueSet(Value::Int(2)))
            .unwrap();
        c.end_interval();
        // Nothing completed after interval 0: both changes go out.
        let d = delta(&mut c, 0);
        assert_eq!(d.1[0].changed[0].entries.len(), 2);
        // Once the checkpoint of interval 1 completed, only `y`.
        let d = delta(&mut c, first);
        assert_eq!(d.1[0].changed[0].entries.len(), 1);
    }

    #[test]
    fn recording_stops_at_its_budget_and_says_so_until_reset() {
        let mut b = backend();
        b.track_changes();
        // Before the first checkpoint's plan nothing is recorded.
        b.apply(KeyGroup(4), "count", b"z", Update::ValueSet(Value::Int(1)))
            .unwrap();
        assert_eq!(b.changes_len(), 0);
        assert_eq!(b.changes_untracked_through(), u64::MAX);
        b.reset_changes(0);
        assert_eq!(b.changes_untracked_through(), 0);
        b.budget_changes(2);
        for key in [&b"a"[..], b"b", b"a", b"c"] {
            b.apply(KeyGroup(4), "count", key, Update::ValueSet(Value::Int(1)))
                .unwrap();
        }
        // `a` and `b` recorded (again for `a`), `c` past the budget.
        assert_eq!(b.changes_len(), 2);
        assert_eq!(b.changes_untracked_through(), u64::MAX);
        let interval = b.end_interval();
        b.reset_changes(interval);
        assert_eq!(
            (b.changes_len(), b.changes_untracked_through()),
            (0, interval)
        );
        b.apply(KeyGroup(4), "count", b"d", Update::ValueSet(Value::Int(1)))
            .unwrap();
        assert_eq!(b.changes_len(), 1);
    }

    #[test]
    fn restore_replaces_only_the_restored_groups() {
        let snap = populated().snapshot();
        let mut b = backend();
        b.apply(
            KeyGroup(4),
            "count",
            b"old",
            Update::ValueSet(Value::Int(0)),
        )
        .unwrap();
        b.apply(
            KeyGroup(5),
            "count",
            b"kept",
            Update::ValueSet(Value::Int(0)),
        )
        .unwrap();
        // Restore at another parallelism: only some groups arrive.
        b.restore(snap.into_iter().filter(|g| g.key_group == 4).collect())
            .unwrap();
        assert_eq!(b.value_get(KeyGroup(4), "count", b"old").unwrap(), None);
        assert_eq!(
            b.value_get(KeyGroup(5), "count", b"kept").unwrap(),
            Some(Value::Int(0))
        );
        assert_eq!(
            b.value_get(KeyGroup(4), "count", &[3, 4]).unwrap(),
            Some(Value::Int(3))
        );
        assert_eq!(b.len(), 1 + 20 * 3);
    }

    #[test]
    fn restore_rejects_foreign_groups_and_kind_conflicts_without_change() {
        let snap = populated().snapshot();
        let mut other = MemoryStateBackend::new(KeyGroupRange { start: 0, end: 6 });
        let err = other.restore(snap).unwrap_err();
        assert_eq!(
            err,
            StateError::ForeignKeyGroup {
                kg: KeyGroup(6),
                range: KeyGroupRange { start: 0, end: 6 }
            }
        );
        assert!(other.is_empty(), "nothing loaded on error");

        let group = |kg, entries| KeyGroupSnapshot {
            key_group: kg,
            states: vec![NamedStateSnapshot {
                name: "s".into(),
                entries,
            }],
        };
        let mut b = backend();
        let err = b
            .restore(vec![
                group(4, StateEntries::Value(vec![(b"k".to_vec(), Value::Int(1))])),
                group(5, StateEntries::List(vec![])),
            ])
            .unwrap_err();
        assert_eq!(
            err,
            StateError::KindMismatch {
                name: "s".into(),
                bound: StateKind::Value,
                used: StateKind::List
            }
        );
        assert!(b.is_empty());
        b.apply(KeyGroup(6), "s", b"k", Update::ListClear).unwrap();
        let err = b
            .restore(vec![group(4, StateEntries::Map(vec![]))])
            .unwrap_err();
        assert!(matches!(
            err,
            StateError::KindMismatch {
                bound: StateKind::List,
                ..
            }
        ));
    }

    /// Measures the synchronous snapshot of 1,000,000 value entries:
    /// `cargo test -p weir-host --lib snapshot_speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn snapshot_speed() {
        use crate::checkpoint::format::{SubtaskSnapshot, decode_state_file, encode_state_file};
        use crate::keygroup::key_group_of;

        let max = 128;
        let mut b = MemoryStateBackend::new(KeyGroupRange { start: 0, end: max });
        for i in 0..1_000_000u64 {
            let key = format!("word{i:08}");
            assert_eq!(key.len(), 12);
            let kg = key_group_of(key.as_bytes(), max);
            b.apply(
                kg,
                "count",
                key.as_bytes(),
                Update::ValueSet(Value::Int(i as i64)),
            )
            .unwrap();
        }
        let t = std::time::Instant::now();
        let snap = b.snapshot();
        let sync = t.elapsed();
        let s = SubtaskSnapshot {
            keyed: snap,
            ..Default::default()
        };
        let t = std::time::Instant::now();
        let file = encode_state_file(&s);
        let encode = t.elapsed();
        let t = std::time::Instant::now();
        let back = decode_state_file("speed.state", &file.bytes).unwrap();
        let decode = t.elapsed();
        let t = std::time::Instant::now();
        let mut restored = MemoryStateBackend::new(KeyGroupRange { start: 0, end: max });
        restored.restore(back.keyed).unwrap();
        let restore = t.elapsed();
        assert_eq!(restored.len(), 1_000_000);
        println!(
            "1M value entries: snapshot {sync:?}, encode {encode:?}, decode {decode:?}, restore {restore:?}, file {} bytes ({:.1} bytes/entry)",
            file.bytes.len(),
            file.bytes.len() as f64 / 1e6
        );
    }
}
