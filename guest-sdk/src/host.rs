//! The edge to the Weir host: every import call goes through [`Host`].
//!
//! Inside Wasm the installed host is [`WasmHost`], which calls the WIT
//! imports. Natively (where wit-bindgen's imports are stubs) the default host
//! refuses state calls, and [`crate::testing`] installs an in-memory host,
//! so the cache and runtime logic run in plain `cargo test`.

use std::cell::RefCell;

use crate::Level;
use crate::value::{Value, ValueRef};

/// One change to keyed state, borrowing from the guest caches.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Write<'a> {
    pub state: &'a str,
    pub key: &'a [u8],
    pub update: Update<'a>,
}

/// The change itself (mirrors WIT `keyed-state.update`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Update<'a> {
    ValueSet(ValueRef<'a>),
    ValueClear,
    MapPut(ValueRef<'a>, ValueRef<'a>),
    MapRemove(ValueRef<'a>),
    MapClear,
    ListSet(Vec<ValueRef<'a>>),
    ListClear,
}

/// The host functions the SDK needs, one per WIT import.
pub(crate) trait Host {
    fn value_get(&mut self, state: &str, key: &[u8]) -> Result<Option<Value>, String>;
    fn map_entries(&mut self, state: &str, key: &[u8]) -> Result<Vec<(Value, Value)>, String>;
    fn list_get(&mut self, state: &str, key: &[u8]) -> Result<Vec<Value>, String>;
    fn write(&mut self, writes: &[Write<'_>]) -> Result<(), String>;
    fn operator_get(&mut self, state: &str) -> Result<Vec<Value>, String>;
    fn operator_replace(&mut self, state: &str, values: &[ValueRef<'_>]) -> Result<(), String>;
    fn emit(&mut self, batch: &[u8]);
    fn log(&mut self, level: Level, message: &str);
}

thread_local! {
    static HOST: RefCell<Box<dyn Host>> = RefCell::new(default_host());
}

#[cfg(target_arch = "wasm32")]
fn default_host() -> Box<dyn Host> {
    Box::new(WasmHost)
}

#[cfg(not(target_arch = "wasm32"))]
fn default_host() -> Box<dyn Host> {
    Box::new(NativeHost)
}

/// Runs `f` with the installed host.
///
/// # Panics
///
/// If called re-entrantly from inside a host call, which the SDK never does.
pub(crate) fn with<R>(f: impl FnOnce(&mut dyn Host) -> R) -> R {
    HOST.with_borrow_mut(|host| f(host.as_mut()))
}

/// Installs `host` for this thread, returning the previous one.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn install(host: Box<dyn Host>) -> Box<dyn Host> {
    HOST.replace(host)
}

/// The host outside Wasm when no test host is installed.
#[cfg(not(target_arch = "wasm32"))]
struct NativeHost;

#[cfg(not(target_arch = "wasm32"))]
impl NativeHost {
    const NO_HOST: &'static str =
        "no Weir host outside WebAssembly; use weir_sdk::testing::Harness";
}

#[cfg(not(target_arch = "wasm32"))]
impl Host for NativeHost {
    fn value_get(&mut self, _: &str, _: &[u8]) -> Result<Option<Value>, String> {
        Err(Self::NO_HOST.into())
    }
    fn map_entries(&mut self, _: &str, _: &[u8]) -> Result<Vec<(Value, Value)>, String> {
        Err(Self::NO_HOST.into())
    }
    fn list_get(&mut self, _: &str, _: &[u8]) -> Result<Vec<Value>, String> {
        Err(Self::NO_HOST.into())
    }
    fn write(&mut self, _: &[Write<'_>]) -> Result<(), String> {
        Err(Self::NO_HOST.into())
    }
    fn operator_get(&mut self, _: &str) -> Result<Vec<Value>, String> {
        Err(Self::NO_HOST.into())
    }
    fn operator_replace(&mut self, _: &str, _: &[ValueRef<'_>]) -> Result<(), String> {
        Err(Self::NO_HOST.into())
    }
    fn emit(&mut self, _: &[u8]) {}
    fn log(&mut self, level: Level, message: &str) {
        eprintln!("[{level:?}] {message}");
    }
}

/// The host reached through the component's WIT imports.
#[cfg(target_arch = "wasm32")]
struct WasmHost;

#[cfg(target_arch = "wasm32")]
mod wasm {
    use super::*;
    use crate::bindings::weir::operator::{
        keyed_state as ks, logging, operator_state, output, types,
    };

    pub(super) fn lift(v: types::ValueResult) -> Value {
        match v {
            types::ValueResult::Boolean(b) => Value::Boolean(b),
            types::ValueResult::Int(i) => Value::Int(i),
            types::ValueResult::Uint(u) => Value::Uint(u),
            types::ValueResult::Float(f) => Value::Float(f),
            types::ValueResult::Text(s) => Value::Text(s),
            types::ValueResult::Bytes(b) => Value::Bytes(b),
        }
    }

    pub(super) fn lower(v: ValueRef<'_>) -> types::ValueParam<'_> {
        match v {
            ValueRef::Boolean(b) => types::ValueParam::Boolean(b),
            ValueRef::Int(i) => types::ValueParam::Int(i),
            ValueRef::Uint(u) => types::ValueParam::Uint(u),
            ValueRef::Float(f) => types::ValueParam::Float(f),
            ValueRef::Text(s) => types::ValueParam::Text(s),
            ValueRef::Bytes(b) => types::ValueParam::Bytes(b),
        }
    }

    impl Host for WasmHost {
        fn value_get(&mut self, state: &str, key: &[u8]) -> Result<Option<Value>, String> {
            ks::value_get(state, key).map(|v| v.map(lift))
        }
        fn map_entries(&mut self, state: &str, key: &[u8]) -> Result<Vec<(Value, Value)>, String> {
            ks::map_entries(state, key).map(|entries| {
                entries
                    .into_iter()
                    .map(|(k, v)| (lift(k), lift(v)))
                    .collect()
            })
        }
        fn list_get(&mut self, state: &str, key: &[u8]) -> Result<Vec<Value>, String> {
            ks::list_get(state, key).map(|vs| vs.into_iter().map(lift).collect())
        }
        fn write(&mut self, writes: &[Write<'_>]) -> Result<(), String> {
            // List updates borrow their lowered elements, so lower those first.
            let lists: Vec<Vec<types::ValueParam<'_>>> = writes
                .iter()
                .filter_map(|w| match &w.update {
                    Update::ListSet(vs) => Some(vs.iter().map(|v| lower(*v)).collect()),
                    _ => None,
                })
                .collect();
            let mut lists = lists.iter();
            let lowered: Vec<ks::StateWrite<'_>> = writes
                .iter()
                .map(|w| ks::StateWrite {
                    state: w.state,
                    key: w.key,
                    update: match &w.update {
                        Update::ValueSet(v) => ks::Update::ValueSet(lower(*v)),
                        Update::ValueClear => ks::Update::ValueClear,
                        Update::MapPut(k, v) => ks::Update::MapPut((lower(*k), lower(*v))),
                        Update::MapRemove(k) => ks::Update::MapRemove(lower(*k)),
                        Update::MapClear => ks::Update::MapClear,
                        Update::ListSet(_) => ks::Update::ListSet(
                            lists
                                .next()
                                .expect("invariant: one lowered list per list-set"),
                        ),
                        Update::ListClear => ks::Update::ListClear,
                    },
                })
                .collect();
            ks::write(&lowered)
        }
        fn operator_get(&mut self, state: &str) -> Result<Vec<Value>, String> {
            Ok(operator_state::get(state).into_iter().map(lift).collect())
        }
        fn operator_replace(&mut self, state: &str, values: &[ValueRef<'_>]) -> Result<(), String> {
            let lowered: Vec<_> = values.iter().map(|v| lower(*v)).collect();
            operator_state::replace(state, &lowered);
            Ok(())
        }
        fn emit(&mut self, batch: &[u8]) {
            output::emit(batch);
        }
        fn log(&mut self, level: Level, message: &str) {
            let level = match level {
                Level::Trace => types::Level::Trace,
                Level::Debug => types::Level::Debug,
                Level::Info => types::Level::Info,
                Level::Warn => types::Level::Warn,
                Level::Error => types::Level::Error,
            };
            logging::log(level, message);
        }
    }
}
