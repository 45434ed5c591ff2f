//! The edge to the Weir host: every import call goes through [`Host`].
//!
//! Inside Wasm the installed host is [`WasmHost`], which calls the WIT
//! imports. Natively (where wit-bindgen's imports are stubs) the default host
//! refuses state calls, and [`crate::testing`] installs an in-memory host,
//! so the cache and runtime logic run in plain `cargo test`.

use std::cell::RefCell;

use crate::Level;
use crate::declare::Declaration;
use crate::time::TimeDomain;
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

/// Packs `writes` in the packed state-write layout
/// (`weir_format::writes`), which `keyed-state.write-packed` takes.
#[cfg(any(target_arch = "wasm32", test))]
pub(crate) fn pack(writes: &[Write<'_>]) -> weir_format::writes::WritesWriter {
    let mut packed = weir_format::writes::WritesWriter::new();
    for w in writes {
        let (state, key) = (w.state, w.key);
        match &w.update {
            Update::ValueSet(v) => packed.value_set(state, key, v),
            Update::ValueClear => packed.value_clear(state, key),
            Update::MapPut(k, v) => packed.map_put(state, key, k, v),
            Update::MapRemove(k) => packed.map_remove(state, key, k),
            Update::MapClear => packed.map_clear(state, key),
            Update::ListSet(items) => packed.list_set(state, key, items.iter()),
            Update::ListClear => packed.list_clear(state, key),
        }
    }
    packed
}

/// The host functions the SDK needs, one per WIT import.
pub(crate) trait Host {
    /// `keyed-state.declare` or `operator-state.declare`, by kind.
    fn declare(&mut self, declaration: &Declaration) -> Result<(), String>;
    fn value_get(&mut self, state: &str, key: &[u8]) -> Result<Option<Value>, String>;
    fn map_entries(&mut self, state: &str, key: &[u8]) -> Result<Vec<(Value, Value)>, String>;
    fn list_get(&mut self, state: &str, key: &[u8]) -> Result<Vec<Value>, String>;
    fn write(&mut self, writes: &[Write<'_>]) -> Result<(), String>;
    fn operator_get(&mut self, state: &str) -> Result<Vec<Value>, String>;
    fn operator_replace(&mut self, state: &str, values: &[ValueRef<'_>]) -> Result<(), String>;
    fn emit(&mut self, batch: &[u8]);
    fn log(&mut self, level: Level, message: &str);
    /// `timers.register` (`delete = false`) or `timers.delete`.
    fn timer(
        &mut self,
        key: &[u8],
        timestamp: i64,
        domain: TimeDomain,
        delete: bool,
    ) -> Result<(), String>;
    fn current_watermark(&mut self) -> i64;
    fn current_processing_time(&mut self) -> i64;
    fn counter_add(&mut self, name: &str, delta: u64);
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
    Box::new(NativeHost::default())
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

/// The host outside Wasm when no test host is installed: it refuses
/// state access but records declarations, so state handles can be created
/// (and their declarations inspected) natively.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Default)]
struct NativeHost {
    declared: Vec<Declaration>,
}

#[cfg(not(target_arch = "wasm32"))]
impl NativeHost {
    const NO_HOST: &'static str =
        "no Weir host outside WebAssembly; use weir_sdk::testing::Harness";
}

#[cfg(not(target_arch = "wasm32"))]
impl Host for NativeHost {
    fn declare(&mut self, declaration: &Declaration) -> Result<(), String> {
        record_declaration(&mut self.declared, declaration)
    }
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
    fn timer(&mut self, _: &[u8], _: i64, _: TimeDomain, _: bool) -> Result<(), String> {
        Err(Self::NO_HOST.into())
    }
    fn current_watermark(&mut self) -> i64 {
        i64::MIN
    }
    fn current_processing_time(&mut self) -> i64 {
        0
    }
    fn counter_add(&mut self, _: &str, _: u64) {}
}

/// Records `declaration` in `declared` as a host does: an identical
/// repeat is accepted once, a differing one refused.
///
/// # Errors
/// A message naming the state if it was declared otherwise before.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn record_declaration(
    declared: &mut Vec<Declaration>,
    declaration: &Declaration,
) -> Result<(), String> {
    let operator = |d: &Declaration| matches!(d.kind, crate::DeclaredKind::OperatorList(_));
    match declared
        .iter()
        .find(|d| d.name == declaration.name && operator(d) == operator(declaration))
    {
        Some(existing) if existing == declaration => Ok(()),
        Some(existing) => Err(format!(
            "state `{}` is already declared as {:?} of type {:?}, not as {:?} of type {:?}",
            declaration.name,
            existing.kind,
            existing.type_name,
            declaration.kind,
            declaration.type_name
        )),
        None => {
            declared.push(declaration.clone());
            Ok(())
        }
    }
}

/// The host reached through the component's WIT imports.
#[cfg(target_arch = "wasm32")]
struct WasmHost;

#[cfg(target_arch = "wasm32")]
mod wasm {
    use super::*;
    use crate::bindings::weir::operator::{
        keyed_state as ks, logging, metrics, operator_state, output, timers, types,
    };
    use crate::declare::{DeclaredKind, Redistribution};

    pub(super) fn lift(v: types::ValueResult) -> Value {
        match v {
            types::ValueResult::Boolean(b) => Value::Boolean(b),
            types::ValueResult::Int(i) => Value::Int(i),
            types::ValueResult::Uint(u) => Value::Uint(u),
            types::ValueResult::Float(f) => Value::Float(f),
            types::ValueResult::Text(s) => Value::Text(s),
            types::ValueResult::Bytes(b) => Value::Bytes(b),
            // The host validated the tree when a guest wrote it; a short
            // tree would still only yield `None` leaves, never a panic.
            types::ValueResult::Nested(nodes) => lift_tree(&mut nodes.into_iter()),
        }
    }

    fn lift_tree(nodes: &mut impl Iterator<Item = types::NodeResult>) -> Value {
        match nodes.next() {
            None | Some(types::NodeResult::None) => Value::None,
            Some(types::NodeResult::Boolean(b)) => Value::Boolean(b),
            Some(types::NodeResult::Int(i)) => Value::Int(i),
            Some(types::NodeResult::Uint(u)) => Value::Uint(u),
            Some(types::NodeResult::Float(f)) => Value::Float(f),
            Some(types::NodeResult::Text(s)) => Value::Text(s),
            Some(types::NodeResult::Bytes(b)) => Value::Bytes(b),
            Some(types::NodeResult::List(n)) => {
                Value::List((0..n).map(|_| lift_tree(nodes)).collect())
            }
            Some(types::NodeResult::Map(n)) => Value::Map(
                (0..n)
                    .map(|_| (lift_tree(nodes), lift_tree(nodes)))
                    .collect(),
            ),
            Some(types::NodeResult::Record(names)) => Value::Record(
                names
                    .into_iter()
                    .map(|name| (name, lift_tree(nodes)))
                    .collect(),
            ),
        }
    }

    /// A tree's nodes in pre-order, borrowing from it; record field names
    /// are gathered per node so the WIT parameter can borrow them.
    enum Node<'a> {
        Leaf(types::NodeParam<'a>),
        Record(Vec<&'a str>),
    }

    fn flatten<'a>(v: &'a Value, out: &mut Vec<Node<'a>>) {
        // Counts fit in u32: a guest cannot hold 4 billion nodes.
        let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let leaf = match v {
            Value::None => types::NodeParam::None,
            Value::Boolean(b) => types::NodeParam::Boolean(*b),
            Value::Int(i) => types::NodeParam::Int(*i),
            Value::Uint(u) => types::NodeParam::Uint(*u),
            Value::Float(f) => types::NodeParam::Float(*f),
            Value::Text(s) => types::NodeParam::Text(s),
            Value::Bytes(b) => types::NodeParam::Bytes(b),
            Value::List(items) => {
                out.push(Node::Leaf(types::NodeParam::List(len(items.len()))));
                items.iter().for_each(|v| flatten(v, out));
                return;
            }
            Value::Map(entries) => {
                out.push(Node::Leaf(types::NodeParam::Map(len(entries.len()))));
                for (k, v) in entries {
                    flatten(k, out);
                    flatten(v, out);
                }
                return;
            }
            Value::Record(fields) => {
                out.push(Node::Record(
                    fields.iter().map(|(n, _)| n.as_str()).collect(),
                ));
                fields.iter().for_each(|(_, v)| flatten(v, out));
                return;
            }
        };
        out.push(Node::Leaf(leaf));
    }

    /// Every container tree among `values`, flattened, in order. A scalar
    /// in a tree (a serde newtype around a `String`, a unit enum variant)
    /// is lowered as its own case, never as a one-node tree.
    fn flatten_trees<'a>(values: impl Iterator<Item = &'a ValueRef<'a>>) -> Vec<Vec<Node<'a>>> {
        values
            .filter_map(|v| match v {
                ValueRef::Tree(
                    tree @ (Value::None | Value::List(_) | Value::Map(_) | Value::Record(_)),
                ) => {
                    let mut nodes = Vec::new();
                    flatten(tree, &mut nodes);
                    Some(nodes)
                }
                _ => None,
            })
            .collect()
    }

    /// The WIT nodes of flattened trees, borrowing their field names.
    fn node_params<'a>(trees: &'a [Vec<Node<'a>>]) -> Vec<Vec<types::NodeParam<'a>>> {
        trees
            .iter()
            .map(|nodes| {
                nodes
                    .iter()
                    .map(|n| match n {
                        Node::Leaf(leaf) => leaf.clone(),
                        Node::Record(names) => types::NodeParam::Record(names),
                    })
                    .collect()
            })
            .collect()
    }

    /// Lowers `v`; a tree takes the next of the lowered trees, which must
    /// come from the same values in the same order.
    fn lower<'a>(
        v: &'a ValueRef<'a>,
        trees: &mut impl Iterator<Item = &'a Vec<types::NodeParam<'a>>>,
    ) -> types::ValueParam<'a> {
        match v {
            ValueRef::Boolean(b) => types::ValueParam::Boolean(*b),
            ValueRef::Int(i) => types::ValueParam::Int(*i),
            ValueRef::Uint(u) => types::ValueParam::Uint(*u),
            ValueRef::Float(f) => types::ValueParam::Float(*f),
            ValueRef::Text(s) => types::ValueParam::Text(s),
            ValueRef::Bytes(b) => types::ValueParam::Bytes(b),
            ValueRef::Tree(Value::Boolean(b)) => types::ValueParam::Boolean(*b),
            ValueRef::Tree(Value::Int(i)) => types::ValueParam::Int(*i),
            ValueRef::Tree(Value::Uint(u)) => types::ValueParam::Uint(*u),
            ValueRef::Tree(Value::Float(f)) => types::ValueParam::Float(*f),
            ValueRef::Tree(Value::Text(s)) => types::ValueParam::Text(s),
            ValueRef::Tree(Value::Bytes(b)) => types::ValueParam::Bytes(b),
            ValueRef::Tree(_) => types::ValueParam::Nested(
                trees
                    .next()
                    .expect("invariant: one lowered tree per container tree"),
            ),
        }
    }

    impl Host for WasmHost {
        fn declare(&mut self, d: &Declaration) -> Result<(), String> {
            let type_name = d.type_name.as_deref();
            match d.kind {
                DeclaredKind::Value => ks::declare(&d.name, types::StateKind::Value, type_name),
                DeclaredKind::Map => ks::declare(&d.name, types::StateKind::Map, type_name),
                DeclaredKind::List => ks::declare(&d.name, types::StateKind::List, type_name),
                DeclaredKind::OperatorList(r) => {
                    let r = match r {
                        Redistribution::Split => types::Redistribution::Split,
                        Redistribution::Union => types::Redistribution::Union,
                    };
                    operator_state::declare(&d.name, r, type_name)
                }
            }
        }
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
            // One buffer in the packed layout: one copy across the
            // boundary, where a list of WIT records is lifted entry by
            // entry (`docs/wit.md`, "Packed state writes").
            ks::write_packed(pack(writes).as_bytes())
        }
        fn operator_get(&mut self, state: &str) -> Result<Vec<Value>, String> {
            Ok(operator_state::get(state).into_iter().map(lift).collect())
        }
        fn operator_replace(&mut self, state: &str, values: &[ValueRef<'_>]) -> Result<(), String> {
            let trees = flatten_trees(values.iter());
            let trees = node_params(&trees);
            let mut tree_iter = trees.iter();
            let lowered: Vec<_> = values.iter().map(|v| lower(v, &mut tree_iter)).collect();
            operator_state::replace(state, &lowered)
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
        fn timer(
            &mut self,
            key: &[u8],
            timestamp: i64,
            domain: TimeDomain,
            delete: bool,
        ) -> Result<(), String> {
            let domain = match domain {
                TimeDomain::EventTime => types::TimeDomain::EventTime,
                TimeDomain::ProcessingTime => types::TimeDomain::ProcessingTime,
            };
            if delete {
                timers::delete(key, timestamp, domain)
            } else {
                timers::register(key, timestamp, domain)
            }
        }
        fn current_watermark(&mut self) -> i64 {
            timers::current_watermark()
        }
        fn current_processing_time(&mut self) -> i64 {
            timers::current_processing_time()
        }
        fn counter_add(&mut self, name: &str, delta: u64) {
            metrics::counter_add(name, delta);
        }
    }
}

#[cfg(test)]
mod tests {
    use weir_format::writes::{WriteOp, WritesReader};

    use super::*;

    #[test]
    fn packed_writes_read_back_as_the_updates_they_pack() {
        let tree = Value::Record(vec![("n".into(), Value::List(vec![Value::None]))]);
        let writes = [
            Write {
                state: "count",
                key: b"a",
                update: Update::ValueSet(ValueRef::Int(3)),
            },
            Write {
                state: "count",
                key: b"b",
                update: Update::ValueClear,
            },
            Write {
                state: "seen",
                key: b"a",
                update: Update::MapPut(ValueRef::Text("x"), ValueRef::Tree(tree.clone())),
            },
            Write {
                state: "seen",
                key: b"a",
                update: Update::MapRemove(ValueRef::Bytes(b"\0")),
            },
            Write {
                state: "seen",
                key: b"c",
                update: Update::MapClear,
            },
            Write {
                state: "log",
                key: b"a",
                update: Update::ListSet(vec![ValueRef::Float(0.5), ValueRef::Boolean(true)]),
            },
            Write {
                state: "log",
                key: b"d",
                update: Update::ListClear,
            },
        ];
        let packed = pack(&writes);
        assert_eq!(packed.len(), writes.len());
        let read: Vec<_> = WritesReader::new(packed.as_bytes(), 64)
            .map(|w| w.unwrap())
            .collect();
        let ops: Vec<_> = read
            .iter()
            .map(|w| (w.state, w.key, w.op.clone()))
            .collect();
        assert_eq!(
            ops,
            vec![
                ("count", &b"a"[..], WriteOp::ValueSet(Value::Int(3))),
                ("count", b"b", WriteOp::ValueClear),
                (
                    "seen",
                    b"a",
                    WriteOp::MapPut {
                        key: Value::Text("x".into()),
                        value: tree
                    }
                ),
                (
                    "seen",
                    b"a",
                    WriteOp::MapRemove {
                        key: Value::Bytes(vec![0]),
                    }
                ),
                ("seen", b"c", WriteOp::MapClear),
                (
                    "log",
                    b"a",
                    WriteOp::ListSet(vec![Value::Float(0.5), Value::Boolean(true)])
                ),
                ("log", b"d", WriteOp::ListClear),
            ]
        );
    }
}
