//! Typed state handles over the host's keyed and operator state.
//!
//! Handles are cheap clones of a shared write-back cache (`cache` module):
//! reads and writes touch the host only on a cache miss; the SDK flushes
//! every dirty entry when `snapshot` and `close` return. Keyed handles are
//! scoped to the key of the record being processed, which the SDK sets
//! around every [`crate::Operator::process`] call.

use std::cell::RefCell;
use std::hash::Hash;
use std::rc::Rc;

use crate::cache::{Kind, ListCache, MapCache, OperatorListCache, Registry, ValueCache};
use crate::declare::{Declaration, DeclaredKind, Redistribution};
use crate::value::{StateValue, decode};
use crate::{Error, host};

/// The key of the record being processed, if it has one.
struct CurrentKey {
    buf: Vec<u8>,
    present: bool,
}

thread_local! {
    static CURRENT_KEY: RefCell<CurrentKey> =
        const { RefCell::new(CurrentKey { buf: Vec::new(), present: false }) };
    pub(crate) static REGISTRY: RefCell<Registry> = RefCell::new(Registry::default());
}

/// Scopes keyed state to `key` (or to no key) until the next call.
pub(crate) fn set_current_key(key: Option<&[u8]>) {
    CURRENT_KEY.with_borrow_mut(|k| {
        k.buf.clear();
        k.present = key.is_some();
        if let Some(key) = key {
            k.buf.extend_from_slice(key);
        }
    });
}

/// Runs `f` with the current key, or fails naming `state`.
pub(crate) fn with_key<R>(
    state: &str,
    f: impl FnOnce(&[u8]) -> Result<R, Error>,
) -> Result<R, Error> {
    CURRENT_KEY.with_borrow(|k| {
        if k.present {
            f(&k.buf)
        } else {
            Err(Error::NoCurrentKey {
                state: state.to_owned(),
            })
        }
    })
}

fn host_error(operation: &'static str, state: &str) -> impl FnOnce(String) -> Error {
    let state = state.to_owned();
    move |message| Error::Host {
        operation,
        state,
        message,
    }
}

/// Declares state `name` to the host (`keyed-state.declare` or
/// `operator-state.declare`); the host accepts an identical repeat, so
/// every handle creation declares.
fn declare(name: &str, kind: DeclaredKind, type_name: Option<String>) -> Result<(), Error> {
    let operation = match kind {
        DeclaredKind::OperatorList(_) => "operator-state.declare",
        _ => "keyed-state.declare",
    };
    let declaration = Declaration {
        name: name.to_owned(),
        kind,
        type_name,
    };
    host::with(|h| h.declare(&declaration)).map_err(host_error(operation, name))
}

/// `wrap<inner>` if the inner descriptor is known, else `None`.
fn wrapped(wrap: &str, inner: Option<String>) -> Option<String> {
    inner.map(|t| format!("{wrap}<{t}>"))
}

/// A single value per key, like Flink's `ValueState`.
///
/// ```
/// use weir_sdk::{Context, Emitter, Error, Operator, Record, ValueState};
///
/// struct Sum { total: ValueState<i64> }
///
/// impl Operator for Sum {
///     fn open(_: &Context) -> Result<Self, Error> {
///         Ok(Sum { total: ValueState::new("total")? })
///     }
///     fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
///         let n: i64 = record.value_str()?.trim().parse()?;
///         let total = self.total.get()?.unwrap_or(0) + n;
///         self.total.set(total)?;
///         out.emit(record.key, total.to_string().as_bytes());
///         Ok(())
///     }
/// }
/// ```
pub struct ValueState<T> {
    name: Rc<str>,
    cache: Rc<RefCell<ValueCache<T>>>,
}

impl<T: StateValue> ValueState<T> {
    /// Registers (or finds) the value state `name` and declares it to the
    /// host as a value state of `T`'s [`StateValue::declared_type`].
    ///
    /// # Errors
    ///
    /// [`Error::StateConflict`] if `name` is registered as another kind or
    /// value type; [`Error::Host`] if the host refuses the declaration (the
    /// restored state holds `name` as another kind).
    pub fn new(name: &str) -> Result<Self, Error> {
        let (name, cache) = REGISTRY.with_borrow_mut(|r| {
            r.register(
                name,
                Kind::Value,
                T::type_name().into(),
                ValueCache::<T>::new,
            )
        })?;
        declare(&name, DeclaredKind::Value, T::declared_type())?;
        Ok(Self { name, cache })
    }

    /// Sets how many keys stay cached after a flush (default 1,000,000).
    pub fn set_cache_capacity(&self, entries: usize) {
        self.cache.borrow_mut().capacity = entries;
    }

    /// The current key's value, or `None` if it has none.
    ///
    /// # Errors
    ///
    /// No current key, a host failure, or a stored value of another type.
    pub fn get(&self) -> Result<Option<T>, Error> {
        let name = &*self.name;
        with_key(name, |key| {
            self.cache.borrow_mut().get(key, || {
                let v = host::with(|h| h.value_get(name, key))
                    .map_err(host_error("value-get", name))?;
                v.map(|v| decode(name, v)).transpose()
            })
        })
    }

    /// Sets the current key's value.
    ///
    /// # Errors
    ///
    /// [`Error::NoCurrentKey`].
    pub fn set(&self, value: T) -> Result<(), Error> {
        with_key(&self.name, |key| {
            self.cache.borrow_mut().set(key, Some(value));
            Ok(())
        })
    }

    /// Clears the current key's value.
    ///
    /// # Errors
    ///
    /// [`Error::NoCurrentKey`].
    pub fn clear(&self) -> Result<(), Error> {
        with_key(&self.name, |key| {
            self.cache.borrow_mut().set(key, None);
            Ok(())
        })
    }
}

/// A map per key, like Flink's `MapState`. The whole map of a key is loaded
/// on first use and cached.
///
/// ```
/// use weir_sdk::{Context, Error, MapState};
///
/// fn open(_: &Context) -> Result<MapState<String, u64>, Error> {
///     let per_word = MapState::<String, u64>::new("per-word")?;
///     per_word.set_cache_capacity(10_000);
///     Ok(per_word)
/// }
/// ```
pub struct MapState<K, V> {
    name: Rc<str>,
    cache: Rc<RefCell<MapCache<K, V>>>,
}

impl<K: StateValue + Hash + Eq, V: StateValue> MapState<K, V> {
    /// Registers (or finds) the map state `name` and declares it to the
    /// host as a map state of type `map<K, V>` (`any` for a side without a
    /// descriptor; untyped if neither has one).
    ///
    /// # Errors
    ///
    /// [`Error::StateConflict`] if `name` is registered as another kind or
    /// key/value types; [`Error::Host`] if the host refuses the declaration.
    pub fn new(name: &str) -> Result<Self, Error> {
        let types = format!("{}, {}", K::type_name(), V::type_name());
        let (name, cache) = REGISTRY
            .with_borrow_mut(|r| r.register(name, Kind::Map, types, MapCache::<K, V>::new))?;
        let type_name = match (K::declared_type(), V::declared_type()) {
            (None, None) => None,
            (k, v) => Some(format!(
                "map<{}, {}>",
                k.as_deref().unwrap_or("any"),
                v.as_deref().unwrap_or("any")
            )),
        };
        declare(&name, DeclaredKind::Map, type_name)?;
        Ok(Self { name, cache })
    }

    /// Sets how many keys' maps stay cached after a flush (default
    /// 1,000,000).
    pub fn set_cache_capacity(&self, entries: usize) {
        self.cache.borrow_mut().capacity = entries;
    }

    fn loader<'a>(
        name: &'a str,
        key: &'a [u8],
    ) -> impl FnOnce() -> Result<Vec<(K, V)>, Error> + 'a {
        move || {
            let entries = host::with(|h| h.map_entries(name, key))
                .map_err(host_error("map-entries", name))?;
            entries
                .into_iter()
                .map(|(k, v)| Ok((decode(name, k)?, decode(name, v)?)))
                .collect()
        }
    }

    /// The current key's value for `map_key`.
    ///
    /// # Errors
    ///
    /// No current key, a host failure, or stored values of another type.
    pub fn get(&self, map_key: &K) -> Result<Option<V>, Error> {
        let name = &*self.name;
        with_key(name, |key| {
            self.cache
                .borrow_mut()
                .get(key, map_key, Self::loader(name, key))
        })
    }

    /// Puts `map_key → value` into the current key's map.
    ///
    /// # Errors
    ///
    /// No current key, or (on first use of the key) a host failure.
    pub fn put(&self, map_key: K, value: V) -> Result<(), Error> {
        let name = &*self.name;
        with_key(name, |key| {
            self.cache
                .borrow_mut()
                .update(key, map_key, Some(value), Self::loader(name, key))
        })
    }

    /// Removes `map_key` from the current key's map.
    ///
    /// # Errors
    ///
    /// No current key, or (on first use of the key) a host failure.
    pub fn remove(&self, map_key: &K) -> Result<(), Error> {
        let name = &*self.name;
        with_key(name, |key| {
            self.cache
                .borrow_mut()
                .update(key, map_key.clone(), None, Self::loader(name, key))
        })
    }

    /// Every entry of the current key's map, in no particular order.
    ///
    /// # Errors
    ///
    /// No current key, a host failure, or stored values of another type.
    pub fn entries(&self) -> Result<Vec<(K, V)>, Error> {
        let name = &*self.name;
        with_key(name, |key| {
            self.cache
                .borrow_mut()
                .entries(key, Self::loader(name, key))
        })
    }

    /// Empties the current key's map.
    ///
    /// # Errors
    ///
    /// [`Error::NoCurrentKey`].
    pub fn clear(&self) -> Result<(), Error> {
        with_key(&self.name, |key| {
            self.cache.borrow_mut().clear(key);
            Ok(())
        })
    }
}

/// A list per key, like Flink's `ListState`.
pub struct ListState<T> {
    name: Rc<str>,
    cache: Rc<RefCell<ListCache<T>>>,
}

impl<T: StateValue> ListState<T> {
    /// Registers (or finds) the list state `name` and declares it to the
    /// host as a list state of type `list<T>`.
    ///
    /// # Errors
    ///
    /// [`Error::StateConflict`] if `name` is registered as another kind or
    /// element type; [`Error::Host`] if the host refuses the declaration.
    pub fn new(name: &str) -> Result<Self, Error> {
        let (name, cache) = REGISTRY.with_borrow_mut(|r| {
            r.register(name, Kind::List, T::type_name().into(), ListCache::<T>::new)
        })?;
        declare(
            &name,
            DeclaredKind::List,
            wrapped("list", T::declared_type()),
        )?;
        Ok(Self { name, cache })
    }

    /// Sets how many keys' lists stay cached after a flush (default
    /// 1,000,000).
    pub fn set_cache_capacity(&self, entries: usize) {
        self.cache.borrow_mut().capacity = entries;
    }

    fn loader<'a>(name: &'a str, key: &'a [u8]) -> impl FnOnce() -> Result<Vec<T>, Error> + 'a {
        move || {
            let values =
                host::with(|h| h.list_get(name, key)).map_err(host_error("list-get", name))?;
            values.into_iter().map(|v| decode(name, v)).collect()
        }
    }

    /// The current key's list (empty if it has none).
    ///
    /// # Errors
    ///
    /// No current key, a host failure, or stored values of another type.
    pub fn get(&self) -> Result<Vec<T>, Error> {
        let name = &*self.name;
        with_key(name, |key| {
            self.cache.borrow_mut().get(key, Self::loader(name, key))
        })
    }

    /// Appends `item` to the current key's list.
    ///
    /// # Errors
    ///
    /// No current key, or (on first use of the key) a host failure.
    pub fn add(&self, item: T) -> Result<(), Error> {
        let name = &*self.name;
        with_key(name, |key| {
            self.cache
                .borrow_mut()
                .add(key, item, Self::loader(name, key))
        })
    }

    /// Replaces the current key's list.
    ///
    /// # Errors
    ///
    /// [`Error::NoCurrentKey`].
    pub fn set(&self, items: Vec<T>) -> Result<(), Error> {
        with_key(&self.name, |key| {
            self.cache.borrow_mut().set(key, items);
            Ok(())
        })
    }

    /// Clears the current key's list.
    ///
    /// # Errors
    ///
    /// [`Error::NoCurrentKey`].
    pub fn clear(&self) -> Result<(), Error> {
        self.set(Vec::new())
    }
}

/// Non-keyed list state owned by the subtask, like Flink's operator
/// `ListState`. Usable in every hook; loaded on first use, written back
/// (one `operator-state.replace`) when `snapshot` and `close` return.
pub struct OperatorListState<T> {
    name: Rc<str>,
    cache: Rc<RefCell<OperatorListCache<T>>>,
}

impl<T: StateValue> OperatorListState<T> {
    /// Registers (or finds) the operator list state `name`, redistributed
    /// round-robin on rescaling ([`Redistribution::Split`]).
    ///
    /// # Errors
    ///
    /// As [`OperatorListState::with_redistribution`].
    pub fn new(name: &str) -> Result<Self, Error> {
        Self::with_redistribution(name, Redistribution::Split)
    }

    /// Registers (or finds) the operator list state `name` and declares it
    /// to the host with `redistribution` and type `list<T>`.
    ///
    /// # Errors
    ///
    /// [`Error::StateConflict`] if `name` is registered as another kind or
    /// element type; [`Error::Host`] if the host refuses the declaration
    /// (`name` declared before with another redistribution).
    pub fn with_redistribution(name: &str, redistribution: Redistribution) -> Result<Self, Error> {
        let (name, cache) = REGISTRY.with_borrow_mut(|r| {
            r.register(
                name,
                Kind::OperatorList,
                T::type_name().into(),
                OperatorListCache::<T>::new,
            )
        })?;
        declare(
            &name,
            DeclaredKind::OperatorList(redistribution),
            wrapped("list", T::declared_type()),
        )?;
        Ok(Self { name, cache })
    }

    fn load(&self) -> Result<(), Error> {
        if self.cache.borrow().items.is_some() {
            return Ok(());
        }
        let name = &*self.name;
        let values =
            host::with(|h| h.operator_get(name)).map_err(host_error("operator-state.get", name))?;
        let items = values
            .into_iter()
            .map(|v| decode(name, v))
            .collect::<Result<_, _>>()?;
        self.cache.borrow_mut().items = Some(items);
        Ok(())
    }

    /// The list's contents.
    ///
    /// # Errors
    ///
    /// A host failure or stored values of another type.
    pub fn get(&self) -> Result<Vec<T>, Error> {
        self.load()?;
        Ok(self.cache.borrow().items.clone().unwrap_or_default())
    }

    /// Replaces the list's contents.
    ///
    /// # Errors
    ///
    /// None today; kept fallible so a later version may check sizes.
    pub fn replace(&self, items: Vec<T>) -> Result<(), Error> {
        let mut cache = self.cache.borrow_mut();
        cache.items = Some(items);
        cache.dirty = true;
        Ok(())
    }
}
