//! What a snapshot holds, whatever its layout: named sections. Keyed state
//! is stored per key group; non-keyed state is a set of operator list
//! sections, each with a [`Namespace`] and the [`Redistribution`] that
//! deals its items out when the vertex is restored at another parallelism.
//!
//! User state and the host's own state share this model and never a name:
//! an operator's list states are in [`Namespace::User`], a source's read
//! positions are the list [`SOURCE_SPLITS`] in [`Namespace::Source`], one
//! [`SourceSplit`] item per split, dealt out like any split list, which is
//! what lets a source restore at another parallelism. A transactional
//! sink that keeps its pre-committed output in the snapshot (a broker
//! sink) stores it as lists in [`Namespace::Sink`]. Timers and watermarks
//! will take namespaces of their own.

use serde::{Deserialize, Serialize};

pub use crate::declared::Redistribution;
use crate::value::Value;

/// Whose state a section holds. Durable: the variant order is the postcard
/// tag in state files, the kebab-case name the `namespace` in `_metadata`;
/// new namespaces go at the end (timers and watermarks are next).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Namespace {
    /// The operator's own states, by the names it declared.
    #[default]
    User,
    /// A source's read positions ([`SOURCE_SPLITS`]).
    Source,
    /// A sink's pre-committed transactions, by names the sink chooses.
    Sink,
}

impl Namespace {
    /// Whether this is the user namespace (serde skips writing it).
    pub fn is_user(&self) -> bool {
        *self == Namespace::User
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Namespace::User => "user",
            Namespace::Source => "source",
            Namespace::Sink => "sink",
        })
    }
}

/// The list, in [`Namespace::Source`], that holds a source's splits.
pub const SOURCE_SPLITS: &str = "splits";

/// One operator list state of one subtask: a section of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListSection {
    /// Whose state it is.
    pub namespace: Namespace,
    /// The state's name within its namespace.
    pub name: String,
    /// How its items are dealt out at another parallelism.
    pub redistribution: Redistribution,
    /// The items.
    pub items: Vec<Value>,
}

impl ListSection {
    /// A user list state.
    pub fn user(
        name: impl Into<String>,
        redistribution: Redistribution,
        items: Vec<Value>,
    ) -> Self {
        Self {
            namespace: Namespace::User,
            name: name.into(),
            redistribution,
            items,
        }
    }

    /// A sink's list `name`, dealt out round robin.
    pub fn sink(name: impl Into<String>, items: Vec<Value>) -> Self {
        Self {
            namespace: Namespace::Sink,
            name: name.into(),
            redistribution: Redistribution::Split,
            items,
        }
    }

    /// A source's splits, dealt out round robin.
    pub fn source_splits(splits: &[SourceSplit]) -> Self {
        Self {
            namespace: Namespace::Source,
            name: SOURCE_SPLITS.into(),
            redistribution: Redistribution::Split,
            items: splits.iter().map(SourceSplit::to_value).collect(),
        }
    }
}

/// One split of a source's input and how far it was read: what a source
/// stores per split, as a [`Value::Record`] item of [`SOURCE_SPLITS`]
/// (`{split, position, finished}`), so it reads in any language and
/// redistributes like any list item.
///
/// A source that divides its input into a fixed number `n` of splits names
/// them `<i>/<n>` (a file is the one split `0/1`; datagen has one stream
/// per subtask it first ran with); a broker source will name them
/// `<stream>/<partition>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSplit {
    /// Which part of the input.
    pub split: String,
    /// Where to resume: a byte offset, a record count, a broker offset.
    pub position: u64,
    /// Its input had ended: a restored source reads no more of it.
    pub finished: bool,
}

impl SourceSplit {
    /// Split `index` of `count` fixed splits, at `position`.
    pub fn numbered(index: u32, count: u32, position: u64, finished: bool) -> Self {
        Self {
            split: format!("{index}/{count}"),
            position,
            finished,
        }
    }

    /// `(index, count)` of a split named `<index>/<count>` with `index <
    /// count`, else `None`.
    pub fn number(&self) -> Option<(u32, u32)> {
        let (i, n) = self.split.split_once('/')?;
        let (i, n) = (i.parse().ok()?, n.parse().ok()?);
        (i < n).then_some((i, n))
    }

    /// The stored item.
    pub fn to_value(&self) -> Value {
        Value::Record(vec![
            ("split".into(), Value::Text(self.split.clone())),
            ("position".into(), Value::Uint(self.position)),
            ("finished".into(), Value::Boolean(self.finished)),
        ])
    }

    /// Reads a stored item.
    ///
    /// # Errors
    /// What is wrong with it: not a record of those three fields.
    pub fn from_value(value: &Value) -> Result<Self, String> {
        let Value::Record(fields) = value else {
            return Err(format!(
                "a source split is a record {{split, position, finished}}, not a {} value",
                value.kind()
            ));
        };
        let field = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
                .ok_or_else(|| format!("a source split has no field `{name}`"))
        };
        let split = match field("split")? {
            Value::Text(s) => s.clone(),
            other => return Err(format!("field `split` is a {}, not text", other.kind())),
        };
        let position = match field("position")? {
            Value::Uint(u) => *u,
            Value::Int(i) if *i >= 0 => *i as u64,
            other => {
                return Err(format!(
                    "field `position` is a {}, not an unsigned integer",
                    other.kind()
                ));
            }
        };
        let finished = match field("finished")? {
            Value::Boolean(b) => *b,
            other => {
                return Err(format!(
                    "field `finished` is a {}, not a boolean",
                    other.kind()
                ));
            }
        };
        Ok(Self {
            split,
            position,
            finished,
        })
    }

    /// The splits `lists` (one subtask's list sections) hold: those of the
    /// list [`SOURCE_SPLITS`] in [`Namespace::Source`], if there is one.
    ///
    /// # Errors
    /// What is wrong with an item that is not a split.
    pub fn in_lists(lists: &[ListSection]) -> Result<Option<Vec<Self>>, String> {
        lists
            .iter()
            .find(|l| l.namespace == Namespace::Source && l.name == SOURCE_SPLITS)
            .map(|l| l.items.iter().map(Self::from_value).collect())
            .transpose()
    }

    /// The split a version-1 snapshot stored as subtask `subtask` (of
    /// `parallelism`)'s bare `source_offset`: split `<subtask>/<parallelism>`,
    /// the top bit of the offset saying whether it had finished.
    pub fn from_v1_offset(subtask: u32, parallelism: u32, offset: u64) -> Self {
        const FINISHED: u64 = 1 << 63;
        Self::numbered(
            subtask,
            parallelism,
            offset & !FINISHED,
            offset & FINISHED != 0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_round_trips_through_its_value() {
        let s = SourceSplit::numbered(2, 3, 17, true);
        assert_eq!(s.split, "2/3");
        assert_eq!(s.number(), Some((2, 3)));
        assert_eq!(SourceSplit::from_value(&s.to_value()).unwrap(), s);
    }

    #[test]
    fn a_malformed_split_is_an_error_naming_the_field() {
        let e = SourceSplit::from_value(&Value::Int(1)).unwrap_err();
        assert!(e.contains("not a int value"), "{e}");
        let e = SourceSplit::from_value(&Value::Record(vec![(
            "split".into(),
            Value::Text("0/1".into()),
        )]))
        .unwrap_err();
        assert!(e.contains("`position`"), "{e}");
        let broker = SourceSplit {
            split: "orders/3".into(),
            position: 0,
            finished: false,
        };
        assert_eq!(broker.number(), None);
        assert_eq!(SourceSplit::numbered(3, 3, 0, false).number(), None);
    }

    #[test]
    fn a_v1_offset_reads_as_the_subtasks_split() {
        let s = SourceSplit::from_v1_offset(1, 2, 40 | 1 << 63);
        assert_eq!(s, SourceSplit::numbered(1, 2, 40, true));
        assert!(!SourceSplit::from_v1_offset(0, 1, 5).finished);
    }
}
