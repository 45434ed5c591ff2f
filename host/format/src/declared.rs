//! The states an operator declares (`keyed-state.declare`,
//! `operator-state.declare`): names, kinds, redistribution modes and type
//! descriptors, as plain data that goes into savepoint metadata and is
//! compared by `weir savepoint check`. Pure: no wasmtime.

use serde::{Deserialize, Serialize};

use crate::descriptor::TypeDescriptor;
use crate::state::StateKind;

/// How an operator list state is redistributed when the operator is
/// restored at another parallelism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Redistribution {
    /// The lists of all old subtasks are concatenated and dealt out
    /// round-robin (Flink's `getListState`).
    #[default]
    Split,
    /// Every new subtask gets the whole concatenated list (Flink's
    /// `getUnionListState`).
    Union,
}

/// The kind of a declared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum DeclaredKind {
    /// Keyed value state.
    Value,
    /// Keyed map state.
    Map,
    /// Keyed list state.
    List,
    /// Operator (non-keyed) list state.
    OperatorList {
        /// How it is redistributed on rescaling.
        redistribution: Redistribution,
    },
}

impl DeclaredKind {
    /// The keyed state kind, or `None` for operator list state.
    pub fn keyed(self) -> Option<StateKind> {
        match self {
            DeclaredKind::Value => Some(StateKind::Value),
            DeclaredKind::Map => Some(StateKind::Map),
            DeclaredKind::List => Some(StateKind::List),
            DeclaredKind::OperatorList { .. } => None,
        }
    }
}

impl From<StateKind> for DeclaredKind {
    fn from(kind: StateKind) -> Self {
        match kind {
            StateKind::Value => DeclaredKind::Value,
            StateKind::Map => DeclaredKind::Map,
            StateKind::List => DeclaredKind::List,
        }
    }
}

impl std::fmt::Display for DeclaredKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeclaredKind::Value => f.write_str("value"),
            DeclaredKind::Map => f.write_str("map"),
            DeclaredKind::List => f.write_str("list"),
            DeclaredKind::OperatorList { redistribution } => write!(
                f,
                "operator list ({})",
                match redistribution {
                    Redistribution::Split => "split",
                    Redistribution::Union => "union",
                }
            ),
        }
    }
}

/// One state an operator declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DeclaredState {
    /// The state name.
    pub name: String,
    /// Its kind (keyed value, map, list, or operator list).
    #[serde(flatten)]
    pub kind: DeclaredKind,
    /// The declared type in canonical descriptor form (`docs/wit.md`,
    /// "Type descriptors"), or `None` if the operator declared no type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
}

impl DeclaredState {
    /// The parsed type descriptor: `None` if no type was declared, or if
    /// `type_name` does not parse (the host parsed every one it recorded;
    /// one deserialized from elsewhere may hold anything).
    pub fn type_descriptor(&self) -> Option<TypeDescriptor> {
        self.type_name
            .as_deref()
            .and_then(|t| TypeDescriptor::parse(t).ok())
    }

    /// Whether the state is keyed (value, map or list).
    pub fn is_keyed(&self) -> bool {
        self.kind.keyed().is_some()
    }
}
