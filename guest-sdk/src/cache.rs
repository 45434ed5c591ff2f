//! Write-back caches of state in guest memory, and the registry that
//! flushes them.
//!
//! This module owns the performance design of the SDK (see `docs/sdk.md`):
//! a cache miss loads one key's state from the host once; later reads and
//! writes stay in guest memory and mark entries dirty; [`Registry::flush`]
//! hands every dirty entry to the host in as few `keyed-state.write` calls
//! as possible, then evicts clean entries beyond each cache's capacity.
//! The logic is pure: host access is a [`Host`] argument or a loader
//! closure, so it is tested natively without Wasm imports.

use std::any::Any;
use std::cell::{RefCell, RefMut};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::rc::Rc;

use crate::Error;
use crate::host::{Host, Update, Write};
use crate::value::{StateValue, ValueRef};

/// Entries a cache keeps after a flush unless the operator sets another
/// capacity.
pub(crate) const DEFAULT_CAPACITY: usize = 1_000_000;

/// Writes per `keyed-state.write` call; bounds the lowered list's size.
pub(crate) const WRITE_CHUNK: usize = 65_536;

/// A fast non-cryptographic hasher (the FxHash mix) for cache keys.
///
/// `std`'s default hasher needs a random seed, which in `wasm32-wasip2`
/// would import `wasi:random`; keys are short, so Fx is also faster.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, mut bytes: &[u8]) {
        while bytes.len() >= 8 {
            self.add(u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")));
            bytes = &bytes[8..];
        }
        if bytes.len() >= 4 {
            self.add(u64::from(u32::from_le_bytes(
                bytes[..4].try_into().expect("4 bytes"),
            )));
            bytes = &bytes[4..];
        }
        for &b in bytes {
            self.add(u64::from(b));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // Fold high bits down: hashbrown uses the top 7 bits as tags.
        self.0 ^ (self.0 >> 29)
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
type FxSet<K> = HashSet<K, BuildHasherDefault<FxHasher>>;

/// The kind of a state name, fixed by its first registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Value,
    Map,
    List,
    OperatorList,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Value => "ValueState",
            Kind::Map => "MapState",
            Kind::List => "ListState",
            Kind::OperatorList => "OperatorListState",
        }
    }
}

/// What the registry needs from every cache, whatever its value types.
pub(crate) trait CachedState {
    /// Whether any entry changed since the last flush.
    fn is_dirty(&self) -> bool;
    /// How many entries (keys) the cache holds.
    fn len(&self) -> usize;
    /// How many entries the cache keeps after a flush.
    fn capacity(&self) -> usize;
    /// Appends the keyed writes of every dirty entry.
    fn collect_writes<'a>(&'a self, state: &'a str, out: &mut Vec<Write<'a>>);
    /// The full contents of a dirty operator list state.
    fn operator_values(&self) -> Option<Vec<ValueRef<'_>>> {
        None
    }
    /// Marks every entry clean (after the host accepted the writes).
    fn mark_clean(&mut self);
    /// Drops clean entries until at most `capacity()` remain.
    fn evict(&mut self);
}

/// The entry of `key`, inserting `load()` (one host read) only on a miss.
///
/// Checks before inserting so a hit does not allocate an owned key.
fn load_on_miss<'m, V>(
    map: &'m mut FxMap<Vec<u8>, V>,
    key: &[u8],
    load: impl FnOnce() -> Result<V, Error>,
) -> Result<&'m mut V, Error> {
    if !map.contains_key(key) {
        let value = load()?;
        map.insert(key.to_vec(), value);
    }
    Ok(map.get_mut(key).expect("invariant: entry inserted above"))
}

/// Drops arbitrary entries of a fully clean map until `capacity` remain.
fn evict_to<K, V>(map: &mut FxMap<K, V>, capacity: usize, is_clean: impl Fn(&V) -> bool) {
    let mut excess = map.len().saturating_sub(capacity);
    if excess == 0 {
        return;
    }
    map.retain(|_, v| {
        if excess > 0 && is_clean(v) {
            excess -= 1;
            false
        } else {
            true
        }
    });
}

/// A whole-slot payload of a [`SlotCache`]: what one key's state holds
/// and how it is written back.
pub(crate) trait Payload: Clone {
    /// The keyed-state update that replaces the host's copy with `self`.
    fn update(&self) -> Update<'_>;
}

/// A value state's payload: the value, or `None` once cleared.
impl<T: StateValue> Payload for Option<T> {
    fn update(&self) -> Update<'_> {
        match self {
            Some(v) => Update::ValueSet(v.to_value()),
            None => Update::ValueClear,
        }
    }
}

/// A list state's payload: the whole list.
impl<T: StateValue> Payload for Vec<T> {
    fn update(&self) -> Update<'_> {
        if self.is_empty() {
            Update::ListClear
        } else {
            Update::ListSet(self.iter().map(StateValue::to_value).collect())
        }
    }
}

/// One key's cached payload.
struct Slot<P> {
    payload: P,
    dirty: bool,
}

/// A cache of one whole payload per key, written back whole when dirty.
pub(crate) struct SlotCache<P> {
    slots: FxMap<Vec<u8>, Slot<P>>,
    dirty: usize,
    pub(crate) capacity: usize,
}

/// The cache behind a [`crate::ValueState`]: key → value.
pub(crate) type ValueCache<T> = SlotCache<Option<T>>;

/// The cache behind a [`crate::ListState`]: key → whole list.
pub(crate) type ListCache<T> = SlotCache<Vec<T>>;

impl<P: Payload> SlotCache<P> {
    /// An empty cache with the default capacity.
    pub(crate) fn new() -> Self {
        Self {
            slots: FxMap::default(),
            dirty: 0,
            capacity: DEFAULT_CAPACITY,
        }
    }

    /// The slot of `key`, calling `load` (one host read) only on a miss.
    fn slot(
        &mut self,
        key: &[u8],
        load: impl FnOnce() -> Result<P, Error>,
    ) -> Result<&mut Slot<P>, Error> {
        load_on_miss(&mut self.slots, key, || {
            Ok(Slot {
                payload: load()?,
                dirty: false,
            })
        })
    }

    /// Reads `key`, calling `load` (one host read) only on a miss.
    pub(crate) fn get(
        &mut self,
        key: &[u8],
        load: impl FnOnce() -> Result<P, Error>,
    ) -> Result<P, Error> {
        // The hit path is the hot path: one hash lookup, no insert check.
        if let Some(slot) = self.slots.get(key) {
            return Ok(slot.payload.clone());
        }
        Ok(self.slot(key, load)?.payload.clone())
    }

    /// Replaces (for values, with `None` clears) `key` without reading the
    /// host.
    pub(crate) fn set(&mut self, key: &[u8], payload: P) {
        match self.slots.get_mut(key) {
            Some(slot) => {
                slot.payload = payload;
                if !slot.dirty {
                    slot.dirty = true;
                    self.dirty += 1;
                }
            }
            None => {
                self.slots.insert(
                    key.to_vec(),
                    Slot {
                        payload,
                        dirty: true,
                    },
                );
                self.dirty += 1;
            }
        }
    }
}

impl<T: StateValue> ListCache<T> {
    /// Appends to the list of `key`.
    pub(crate) fn add(
        &mut self,
        key: &[u8],
        item: T,
        load: impl FnOnce() -> Result<Vec<T>, Error>,
    ) -> Result<(), Error> {
        let slot = self.slot(key, load)?;
        slot.payload.push(item);
        if !slot.dirty {
            slot.dirty = true;
            self.dirty += 1;
        }
        Ok(())
    }
}

impl<P: Payload> CachedState for SlotCache<P> {
    fn is_dirty(&self) -> bool {
        self.dirty > 0
    }
    fn len(&self) -> usize {
        self.slots.len()
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn collect_writes<'a>(&'a self, state: &'a str, out: &mut Vec<Write<'a>>) {
        if self.dirty == 0 {
            return;
        }
        out.extend(
            self.slots
                .iter()
                .filter(|(_, s)| s.dirty)
                .map(|(key, slot)| Write {
                    state,
                    key,
                    update: slot.payload.update(),
                }),
        );
    }
    fn mark_clean(&mut self) {
        if self.dirty > 0 {
            self.slots.values_mut().for_each(|s| s.dirty = false);
            self.dirty = 0;
        }
    }
    fn evict(&mut self) {
        evict_to(&mut self.slots, self.capacity, |s| !s.dirty);
    }
}

/// One key's cached map state: the full map plus what changed.
struct MapSlot<K, V> {
    map: FxMap<K, V>,
    cleared: bool,
    changed: FxSet<K>,
}

impl<K, V> MapSlot<K, V> {
    fn is_dirty(&self) -> bool {
        self.cleared || !self.changed.is_empty()
    }
}

/// The cache behind a [`crate::MapState`]: key → whole map.
pub(crate) struct MapCache<K, V> {
    slots: FxMap<Vec<u8>, MapSlot<K, V>>,
    dirty: bool,
    pub(crate) capacity: usize,
}

impl<K: StateValue + Hash + Eq, V: StateValue> MapCache<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            slots: FxMap::default(),
            dirty: false,
            capacity: DEFAULT_CAPACITY,
        }
    }

    /// The map of `key`, loading it with `load` (one host read) on a miss.
    fn slot(
        &mut self,
        key: &[u8],
        load: impl FnOnce() -> Result<Vec<(K, V)>, Error>,
    ) -> Result<&mut MapSlot<K, V>, Error> {
        load_on_miss(&mut self.slots, key, || {
            Ok(MapSlot {
                map: load()?.into_iter().collect(),
                cleared: false,
                changed: FxSet::default(),
            })
        })
    }

    /// Reads one map entry.
    pub(crate) fn get(
        &mut self,
        key: &[u8],
        map_key: &K,
        load: impl FnOnce() -> Result<Vec<(K, V)>, Error>,
    ) -> Result<Option<V>, Error> {
        Ok(self.slot(key, load)?.map.get(map_key).cloned())
    }

    /// Puts (`Some`) or removes (`None`) one map entry.
    pub(crate) fn update(
        &mut self,
        key: &[u8],
        map_key: K,
        value: Option<V>,
        load: impl FnOnce() -> Result<Vec<(K, V)>, Error>,
    ) -> Result<(), Error> {
        let slot = self.slot(key, load)?;
        match value {
            Some(v) => {
                slot.map.insert(map_key.clone(), v);
            }
            None => {
                slot.map.remove(&map_key);
            }
        }
        slot.changed.insert(map_key);
        self.dirty = true;
        Ok(())
    }

    /// Every entry of the map.
    pub(crate) fn entries(
        &mut self,
        key: &[u8],
        load: impl FnOnce() -> Result<Vec<(K, V)>, Error>,
    ) -> Result<Vec<(K, V)>, Error> {
        let slot = self.slot(key, load)?;
        Ok(slot
            .map
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    /// Empties the map without reading the host.
    pub(crate) fn clear(&mut self, key: &[u8]) {
        let slot = MapSlot {
            map: FxMap::default(),
            cleared: true,
            changed: FxSet::default(),
        };
        self.slots.insert(key.to_vec(), slot);
        self.dirty = true;
    }
}

impl<K: StateValue + Hash + Eq, V: StateValue> CachedState for MapCache<K, V> {
    fn is_dirty(&self) -> bool {
        self.dirty
    }
    fn len(&self) -> usize {
        self.slots.len()
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn collect_writes<'a>(&'a self, state: &'a str, out: &mut Vec<Write<'a>>) {
        if !self.dirty {
            return;
        }
        for (key, slot) in self.slots.iter().filter(|(_, s)| s.is_dirty()) {
            if slot.cleared {
                out.push(Write {
                    state,
                    key,
                    update: Update::MapClear,
                });
            }
            for k in &slot.changed {
                let update = match slot.map.get(k) {
                    Some(v) => Update::MapPut(k.to_value(), v.to_value()),
                    // After a clear the host has nothing to remove.
                    None if slot.cleared => continue,
                    None => Update::MapRemove(k.to_value()),
                };
                out.push(Write { state, key, update });
            }
        }
    }
    fn mark_clean(&mut self) {
        if self.dirty {
            for slot in self.slots.values_mut() {
                slot.cleared = false;
                slot.changed.clear();
            }
            self.dirty = false;
        }
    }
    fn evict(&mut self) {
        evict_to(&mut self.slots, self.capacity, |s| !s.is_dirty());
    }
}

/// The cache behind a [`crate::OperatorListState`]: one list per subtask.
pub(crate) struct OperatorListCache<T> {
    pub(crate) items: Option<Vec<T>>,
    pub(crate) dirty: bool,
}

impl<T: StateValue> OperatorListCache<T> {
    pub(crate) fn new() -> Self {
        Self {
            items: None,
            dirty: false,
        }
    }
}

impl<T: StateValue> CachedState for OperatorListCache<T> {
    fn is_dirty(&self) -> bool {
        self.dirty
    }
    fn len(&self) -> usize {
        usize::from(self.items.is_some())
    }
    fn capacity(&self) -> usize {
        1
    }
    fn collect_writes<'a>(&'a self, _: &'a str, _: &mut Vec<Write<'a>>) {}
    fn operator_values(&self) -> Option<Vec<ValueRef<'_>>> {
        match (&self.items, self.dirty) {
            (Some(items), true) => Some(items.iter().map(StateValue::to_value).collect()),
            _ => None,
        }
    }
    fn mark_clean(&mut self) {
        self.dirty = false;
    }
    fn evict(&mut self) {}
}

/// One registered state name.
struct Registered {
    name: Rc<str>,
    kind: Kind,
    type_name: String,
    typed: Rc<dyn Any>,
    cache: Rc<RefCell<dyn CachedState>>,
}

/// Every state handle's cache, so the SDK can flush them all at once.
#[derive(Default)]
pub(crate) struct Registry {
    states: Vec<Registered>,
}

impl Registry {
    /// Registers (or finds) the cache of state `name`.
    ///
    /// Registering a name again with the same kind and types returns the
    /// same cache, so two handles never disagree.
    ///
    /// # Errors
    ///
    /// [`Error::StateConflict`] if `name` exists with another kind or type.
    pub(crate) fn register<C: CachedState + 'static>(
        &mut self,
        name: &str,
        kind: Kind,
        type_name: String,
        make: impl FnOnce() -> C,
    ) -> Result<(Rc<str>, Rc<RefCell<C>>), Error> {
        if let Some(r) = self.states.iter().find(|r| &*r.name == name) {
            let typed = Rc::clone(&r.typed).downcast::<RefCell<C>>();
            return match typed {
                Ok(cache) if r.kind == kind => Ok((Rc::clone(&r.name), cache)),
                _ => Err(Error::StateConflict {
                    state: name.to_owned(),
                    existing: format!("{}<{}>", r.kind.name(), r.type_name),
                    requested: format!("{}<{}>", kind.name(), type_name),
                }),
            };
        }
        let cache = Rc::new(RefCell::new(make()));
        let name: Rc<str> = Rc::from(name);
        self.states.push(Registered {
            name: Rc::clone(&name),
            kind,
            type_name,
            typed: cache.clone() as Rc<dyn Any>,
            cache: cache.clone() as Rc<RefCell<dyn CachedState>>,
        });
        Ok((name, cache))
    }

    /// Forgets every state (a new instance is opening).
    pub(crate) fn clear(&mut self) {
        self.states.clear();
    }

    /// Whether some cache holds more entries than its capacity.
    pub(crate) fn over_capacity(&self) -> bool {
        self.states.iter().any(|r| {
            let c = r.cache.borrow();
            c.len() > c.capacity()
        })
    }

    /// Hands every dirty entry to `host`, marks all clean, evicts.
    ///
    /// Keyed writes of all states go out together, in calls of at most
    /// [`WRITE_CHUNK`] writes; each dirty operator state is one `replace`.
    /// Returns how many `write` calls were made.
    ///
    /// # Errors
    ///
    /// [`Error::Host`] if the host rejects a write; caches stay dirty then.
    pub(crate) fn flush(&self, host: &mut dyn Host) -> Result<usize, Error> {
        let mut guards: Vec<(&str, RefMut<'_, dyn CachedState>)> = self
            .states
            .iter()
            .map(|r| (&*r.name, r.cache.borrow_mut()))
            .collect();
        let mut calls = 0;
        {
            let mut writes = Vec::new();
            for (name, cache) in guards.iter().filter(|(_, c)| c.is_dirty()) {
                cache.collect_writes(name, &mut writes);
            }
            for chunk in writes.chunks(WRITE_CHUNK) {
                calls += 1;
                host.write(chunk).map_err(|message| Error::Host {
                    operation: "keyed-state.write",
                    state: chunk[0].state.to_owned(),
                    message,
                })?;
            }
            for (name, cache) in &guards {
                if let Some(values) = cache.operator_values() {
                    host.operator_replace(name, &values)
                        .map_err(|message| Error::Host {
                            operation: "operator-state.replace",
                            state: (*name).to_owned(),
                            message,
                        })?;
                }
            }
        }
        for (_, cache) in &mut guards {
            cache.mark_clean();
            cache.evict();
        }
        Ok(calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Level;
    use crate::host::Host;
    use crate::value::Value;

    /// Records every write the registry hands over.
    #[derive(Default)]
    struct Recorder {
        calls: usize,
        writes: Vec<(String, Vec<u8>, String)>,
        replaced: Vec<(String, Vec<Value>)>,
    }

    impl Host for Recorder {
        fn declare(&mut self, _: &crate::Declaration) -> Result<(), String> {
            unreachable!("the registry itself never declares")
        }
        fn value_get(&mut self, _: &str, _: &[u8]) -> Result<Option<Value>, String> {
            unreachable!()
        }
        fn map_entries(&mut self, _: &str, _: &[u8]) -> Result<Vec<(Value, Value)>, String> {
            unreachable!()
        }
        fn list_get(&mut self, _: &str, _: &[u8]) -> Result<Vec<Value>, String> {
            unreachable!()
        }
        fn write(&mut self, writes: &[Write<'_>]) -> Result<(), String> {
            self.calls += 1;
            for w in writes {
                let update = format!("{:?}", w.update);
                self.writes
                    .push((w.state.to_owned(), w.key.to_vec(), update));
            }
            Ok(())
        }
        fn operator_get(&mut self, _: &str) -> Result<Vec<Value>, String> {
            unreachable!()
        }
        fn operator_replace(&mut self, state: &str, values: &[ValueRef<'_>]) -> Result<(), String> {
            let values = values.iter().map(ValueRef::to_owned_value).collect();
            self.replaced.push((state.to_owned(), values));
            Ok(())
        }
        fn emit(&mut self, _: &[u8]) {}
        fn log(&mut self, _: Level, _: &str) {}
        fn timer(
            &mut self,
            _: &[u8],
            _: i64,
            _: crate::time::TimeDomain,
            _: bool,
        ) -> Result<(), String> {
            Ok(())
        }
        fn current_watermark(&mut self) -> i64 {
            i64::MIN
        }
        fn current_processing_time(&mut self) -> i64 {
            0
        }
        fn counter_add(&mut self, _: &str, _: u64) {}
    }

    #[test]
    fn value_cache_loads_once_and_writes_back() {
        let mut cache = ValueCache::<i64>::new();
        let mut loads = 0;
        for _ in 0..3 {
            let v = cache
                .get(b"k", || {
                    loads += 1;
                    Ok(Some(41))
                })
                .unwrap();
            assert_eq!(v, Some(41));
        }
        assert_eq!(loads, 1);
        assert!(!cache.is_dirty());
        cache.set(b"k", Some(42));
        cache.set(b"k", Some(43));
        cache.set(b"gone", None);
        let mut writes = Vec::new();
        cache.collect_writes("count", &mut writes);
        writes.sort_by_key(|w| w.key);
        assert_eq!(
            writes,
            vec![
                Write {
                    state: "count",
                    key: b"gone",
                    update: Update::ValueClear
                },
                Write {
                    state: "count",
                    key: b"k",
                    update: Update::ValueSet(ValueRef::Int(43))
                },
            ]
        );
        cache.mark_clean();
        let mut writes = Vec::new();
        cache.collect_writes("count", &mut writes);
        assert!(writes.is_empty());
        // Hits after the flush still come from the cache.
        assert_eq!(cache.get(b"k", || unreachable!()).unwrap(), Some(43));
    }

    #[test]
    fn eviction_keeps_dirty_entries_and_bounds_clean_ones() {
        let mut cache = ValueCache::<i64>::new();
        cache.capacity = 2;
        for i in 0..5u8 {
            cache.set(&[i], Some(i64::from(i)));
        }
        cache.evict();
        assert_eq!(cache.len(), 5, "dirty entries are never evicted");
        cache.mark_clean();
        cache.evict();
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn map_cache_tracks_puts_removes_and_clears() {
        let mut cache = MapCache::<String, i64>::new();
        let load = || Ok(vec![("a".to_owned(), 1), ("b".to_owned(), 2)]);
        assert_eq!(cache.get(b"k", &"a".to_owned(), load).unwrap(), Some(1));
        cache
            .update(b"k", "c".into(), Some(3), || unreachable!())
            .unwrap();
        cache
            .update(b"k", "a".into(), None, || unreachable!())
            .unwrap();
        let mut entries = cache.entries(b"k", || unreachable!()).unwrap();
        entries.sort();
        assert_eq!(entries, vec![("b".into(), 2), ("c".into(), 3)]);
        cache.clear(b"j");
        cache
            .update(b"j", "x".into(), Some(9), || unreachable!())
            .unwrap();
        cache
            .update(b"j", "y".into(), None, || unreachable!())
            .unwrap();

        let mut writes = Vec::new();
        cache.collect_writes("m", &mut writes);
        let mut shown: Vec<String> = writes
            .iter()
            .map(|w| format!("{:?} {:?}", w.key, w.update))
            .collect();
        shown.sort();
        assert_eq!(
            shown,
            vec![
                "[106] MapClear",
                "[106] MapPut(Text(\"x\"), Int(9))",
                "[107] MapPut(Text(\"c\"), Int(3))",
                "[107] MapRemove(Text(\"a\"))",
            ]
        );
    }

    #[test]
    fn list_cache_appends_after_one_load() {
        let mut cache = ListCache::<u32>::new();
        cache.add(b"k", 3, || Ok(vec![1, 2])).unwrap();
        cache.add(b"k", 4, || unreachable!()).unwrap();
        assert_eq!(
            cache.get(b"k", || unreachable!()).unwrap(),
            vec![1, 2, 3, 4]
        );
        cache.set(b"e", Vec::new());
        let mut writes = Vec::new();
        cache.collect_writes("l", &mut writes);
        writes.sort_by_key(|w| w.key);
        assert_eq!(writes[0].update, Update::ListClear);
        assert_eq!(
            writes[1].update,
            Update::ListSet((1..=4).map(ValueRef::Uint).collect())
        );
    }

    #[test]
    fn registry_flushes_all_states_in_one_call_and_chunks_huge_ones() {
        let mut reg = Registry::default();
        let (_, count) = reg
            .register("count", Kind::Value, "i64".into(), ValueCache::<i64>::new)
            .unwrap();
        let (_, seen) = reg
            .register("seen", Kind::List, "bool".into(), ListCache::<bool>::new)
            .unwrap();
        let (_, offsets) = reg
            .register(
                "offsets",
                Kind::OperatorList,
                "u64".into(),
                OperatorListCache::<u64>::new,
            )
            .unwrap();
        count.borrow_mut().set(b"a", Some(1));
        seen.borrow_mut().set(b"a", vec![true]);
        offsets.borrow_mut().items = Some(vec![7]);
        offsets.borrow_mut().dirty = true;

        let mut host = Recorder::default();
        assert_eq!(reg.flush(&mut host).unwrap(), 1);
        assert_eq!(host.writes.len(), 2);
        assert_eq!(
            host.replaced,
            vec![("offsets".to_owned(), vec![Value::Uint(7)])]
        );
        assert!(!count.borrow().is_dirty());
        assert_eq!(reg.flush(&mut host).unwrap(), 0, "nothing dirty, no call");

        for i in 0..(WRITE_CHUNK as u32 + 1) {
            count.borrow_mut().set(&i.to_le_bytes(), Some(1));
        }
        assert_eq!(reg.flush(&mut host).unwrap(), 2);
    }

    #[test]
    fn registry_shares_same_name_and_rejects_conflicts() {
        let mut reg = Registry::default();
        let (_, a) = reg
            .register("s", Kind::Value, "i64".into(), ValueCache::<i64>::new)
            .unwrap();
        let (_, b) = reg
            .register("s", Kind::Value, "i64".into(), ValueCache::<i64>::new)
            .unwrap();
        assert!(Rc::ptr_eq(&a, &b));
        let err = reg
            .register("s", Kind::List, "i64".into(), ListCache::<i64>::new)
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "state `s` is already registered as ValueState<i64>, cannot also be ListState<i64>"
        );
        let err = reg
            .register("s", Kind::Value, "String".into(), ValueCache::<String>::new)
            .err()
            .unwrap();
        assert!(matches!(err, Error::StateConflict { .. }));
    }

    #[test]
    fn fx_hasher_spreads_short_keys() {
        let hash = |b: &[u8]| {
            let mut h = FxHasher::default();
            b.hash(&mut h);
            h.finish()
        };
        let hashes: FxSet<u64> = (0..10_000u32).map(|i| hash(&i.to_le_bytes())).collect();
        assert_eq!(hashes.len(), 10_000);
    }
}
