//! State declarations: what the SDK tells the host about each state handle
//! (`keyed-state.declare`, `operator-state.declare`) when it is created, so
//! the host knows an operator's states, kinds and types without running it
//! (savepoint check and inspect), and [`Describe`], which gives a Rust
//! type's descriptor in the grammar of `docs/wit.md` ("Type descriptors").
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use weir_sdk::declare::{Describe, record};
//! use weir_sdk::Structured;
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Average { count: u64, sum: f64, tags: Vec<String> }
//!
//! impl Structured for Average {
//!     fn type_descriptor() -> Option<String> {
//!         Some(record(&[
//!             ("count", u64::describe()),
//!             ("sum", f64::describe()),
//!             ("tags", Vec::<String>::describe()),
//!         ]))
//!     }
//! }
//!
//! assert_eq!(
//!     Average::describe(),
//!     "record{count: uint, sum: float, tags: list<text>}"
//! );
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use crate::Structured;

/// How an operator list state is redistributed when the operator is
/// restored at another parallelism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Redistribution {
    /// The lists of all old subtasks are concatenated and dealt out
    /// round-robin, each item to one new subtask (Flink's `getListState`).
    #[default]
    Split,
    /// Every new subtask gets the whole concatenated list (Flink's
    /// `getUnionListState`).
    Union,
}

/// The kind of a declared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclaredKind {
    /// [`crate::ValueState`].
    Value,
    /// [`crate::MapState`].
    Map,
    /// [`crate::ListState`].
    List,
    /// [`crate::OperatorListState`], with its redistribution mode.
    OperatorList(Redistribution),
}

/// One declaration the SDK sent to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declaration {
    /// The state name.
    pub name: String,
    /// Its kind.
    pub kind: DeclaredKind,
    /// The type of one key's state as a whole (`T` for a value,
    /// `map<K, V>` for a map, `list<T>` for a list or operator list), or
    /// `None` when the value type gives no descriptor.
    pub type_name: Option<String>,
}

/// A Rust type's descriptor in the grammar of `docs/wit.md`, matching how
/// [`Structured`] serialises it (`Vec<u8>` inside a struct is a
/// `list<uint>` unless the field uses `serde_bytes`).
///
/// Implemented for the primitives, `String`, `Vec`, `VecDeque`, sets,
/// `HashMap`, `BTreeMap` and `Option`, and for every [`Structured`] type
/// (its [`Structured::type_descriptor`], or `any` if it gives none).
pub trait Describe {
    /// The descriptor, e.g. `"map<text, list<int>>"`.
    fn describe() -> String;
}

macro_rules! describe_as {
    ($name:literal: $($t:ty),*) => {
        $(impl Describe for $t {
            fn describe() -> String {
                $name.to_owned()
            }
        })*
    };
}

describe_as!("bool": bool);
describe_as!("int": i8, i16, i32, i64, isize);
describe_as!("uint": u8, u16, u32, u64, usize);
describe_as!("float": f32, f64);
describe_as!("text": String, char);

impl<T: Describe> Describe for Vec<T> {
    fn describe() -> String {
        format!("list<{}>", T::describe())
    }
}

impl<T: Describe> Describe for VecDeque<T> {
    fn describe() -> String {
        format!("list<{}>", T::describe())
    }
}

impl<T: Describe, S> Describe for HashSet<T, S> {
    fn describe() -> String {
        format!("list<{}>", T::describe())
    }
}

impl<T: Describe> Describe for BTreeSet<T> {
    fn describe() -> String {
        format!("list<{}>", T::describe())
    }
}

impl<T: Describe> Describe for Option<T> {
    fn describe() -> String {
        format!("option<{}>", T::describe())
    }
}

impl<K: Describe, V: Describe, S> Describe for HashMap<K, V, S> {
    fn describe() -> String {
        format!("map<{}, {}>", K::describe(), V::describe())
    }
}

impl<K: Describe, V: Describe> Describe for BTreeMap<K, V> {
    fn describe() -> String {
        format!("map<{}, {}>", K::describe(), V::describe())
    }
}

impl<T: Structured> Describe for T {
    fn describe() -> String {
        T::type_descriptor().unwrap_or_else(|| "any".to_owned())
    }
}

/// The descriptor of a record with `fields` (name, descriptor), for a
/// [`Structured::type_descriptor`].
pub fn record(fields: &[(&str, String)]) -> String {
    let fields: Vec<String> = fields.iter().map(|(n, t)| format!("{n}: {t}")).collect();
    format!("record{{{}}}", fields.join(", "))
}
