//! Typed state values: the Rust side of the WIT `value` variant.
//!
//! State is typed in the WIT (not encoded by each SDK) so an operator
//! rewritten in another language reads what this one wrote. [`StateValue`]
//! maps Rust types onto that variant; it is pure and has no host calls.

use crate::Error;

/// An owned state value, as read from the host (mirrors WIT `value`): the
/// one `Value` the host stores too, so what an operator writes is exactly
/// what a savepoint holds.
pub use weir_format::Value;

/// A borrowed state value, as handed to the host (mirrors WIT `value`).
/// Scalars borrow; a value built for the call (what a
/// [`Structured`](crate::Structured) type serialises to) is owned
/// ([`ValueRef::Tree`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ValueRef<'a> {
    /// A boolean.
    Boolean(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// An unsigned 64-bit integer.
    Uint(u64),
    /// An IEEE 754 double.
    Float(f64),
    /// A UTF-8 string.
    Text(&'a str),
    /// Opaque bytes.
    Bytes(&'a [u8]),
    /// An owned value: a list, map, record or none travels as a WIT
    /// `nested` tree, a scalar as its own case.
    Tree(Value),
}

impl<'a> From<&'a Value> for ValueRef<'a> {
    /// Borrows a value: scalars by reference, trees by copy.
    fn from(value: &'a Value) -> Self {
        match value {
            Value::Boolean(b) => ValueRef::Boolean(*b),
            Value::Int(i) => ValueRef::Int(*i),
            Value::Uint(u) => ValueRef::Uint(*u),
            Value::Float(f) => ValueRef::Float(*f),
            Value::Text(s) => ValueRef::Text(s),
            Value::Bytes(b) => ValueRef::Bytes(b),
            tree => ValueRef::Tree(tree.clone()),
        }
    }
}

/// The canonical form the packed state-write layout carries
/// (`weir_format::writes`), written straight from the borrowed value.
impl weir_format::writes::Canonical for ValueRef<'_> {
    fn write_canonical(&self, out: &mut Vec<u8>) {
        use weir_format::writes::canonical;
        match self {
            ValueRef::Boolean(b) => canonical::boolean(out, *b),
            ValueRef::Int(i) => canonical::int(out, *i),
            ValueRef::Uint(u) => canonical::uint(out, *u),
            ValueRef::Float(f) => canonical::float(out, *f),
            ValueRef::Text(s) => canonical::text(out, s),
            ValueRef::Bytes(b) => canonical::bytes(out, b),
            ValueRef::Tree(tree) => tree.write_canonical(out),
        }
    }
}

impl ValueRef<'_> {
    /// The WIT case name of this value (`boolean`, `int`, ...), for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ValueRef::Boolean(_) => "boolean",
            ValueRef::Int(_) => "int",
            ValueRef::Uint(_) => "uint",
            ValueRef::Float(_) => "float",
            ValueRef::Text(_) => "text",
            ValueRef::Bytes(_) => "bytes",
            ValueRef::Tree(tree) => tree.kind(),
        }
    }

    /// Copies this value into an owned [`Value`].
    pub fn to_owned_value(&self) -> Value {
        match self {
            ValueRef::Boolean(b) => Value::Boolean(*b),
            ValueRef::Int(i) => Value::Int(*i),
            ValueRef::Uint(u) => Value::Uint(*u),
            ValueRef::Float(f) => Value::Float(*f),
            ValueRef::Text(s) => Value::Text((*s).to_owned()),
            ValueRef::Bytes(b) => Value::Bytes(b.to_vec()),
            ValueRef::Tree(tree) => tree.clone(),
        }
    }
}

/// A Rust type that can be stored in Weir state.
///
/// Implemented for `i64`, `i32`, `u64`, `u32`, `f64`, `bool`, `String` and
/// `Vec<u8>`, and for every serde type marked [`Structured`](crate::Structured)
/// (structs, enums, collections), which are stored as nested values that
/// Python and JavaScript operators read as dicts and objects.
///
/// Integers read back across `int` and `uint` when in range, and `f64`
/// reads integers too, so a value another language wrote with a different
/// integer flavour still reads.
///
/// Contract: `from_value(to_value(x).to_owned_value()) == Some(x)`.
pub trait StateValue: Clone + 'static {
    /// The type's name in error messages, e.g. `"i64"`.
    fn type_name() -> &'static str;

    /// Borrows `self` as a WIT value.
    fn to_value(&self) -> ValueRef<'_>;

    /// Converts a stored value back, or `None` if it has another type or is
    /// out of range.
    fn from_value(value: Value) -> Option<Self>;

    /// The type descriptor declared to the host for state of this type
    /// (`docs/wit.md`, "Type descriptors"): `int` for `i64`, the
    /// [`Structured::type_descriptor`](crate::Structured::type_descriptor)
    /// of a structured type. `None` (the default) declares no type.
    fn declared_type() -> Option<String> {
        None
    }

    /// Like [`StateValue::from_value`], with the reason on failure.
    ///
    /// # Errors
    /// Why `value` is not a `Self`.
    fn try_from_value(value: Value) -> Result<Self, String> {
        let found = value.kind();
        Self::from_value(value)
            .ok_or_else(|| format!("a {found} value where {} was expected", Self::type_name()))
    }
}

/// Converts a stored value for state `state`, naming the state on mismatch.
pub(crate) fn decode<T: StateValue>(state: &str, value: Value) -> Result<T, Error> {
    T::try_from_value(value).map_err(|reason| Error::WrongType {
        state: state.to_owned(),
        reason,
    })
}

impl StateValue for i64 {
    fn declared_type() -> Option<String> {
        Some("int".to_owned())
    }
    fn type_name() -> &'static str {
        "i64"
    }
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Int(*self)
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Int(i) => Some(i),
            Value::Uint(u) => i64::try_from(u).ok(),
            _ => None,
        }
    }
}

impl StateValue for i32 {
    fn declared_type() -> Option<String> {
        Some("int".to_owned())
    }
    fn type_name() -> &'static str {
        "i32"
    }
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Int(i64::from(*self))
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Int(i) => i32::try_from(i).ok(),
            Value::Uint(u) => i32::try_from(u).ok(),
            _ => None,
        }
    }
}

impl StateValue for u64 {
    fn declared_type() -> Option<String> {
        Some("uint".to_owned())
    }
    fn type_name() -> &'static str {
        "u64"
    }
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Uint(*self)
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Uint(u) => Some(u),
            Value::Int(i) => u64::try_from(i).ok(),
            _ => None,
        }
    }
}

impl StateValue for u32 {
    fn declared_type() -> Option<String> {
        Some("uint".to_owned())
    }
    fn type_name() -> &'static str {
        "u32"
    }
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Uint(u64::from(*self))
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Uint(u) => u32::try_from(u).ok(),
            Value::Int(i) => u32::try_from(i).ok(),
            _ => None,
        }
    }
}

impl StateValue for f64 {
    fn declared_type() -> Option<String> {
        Some("float".to_owned())
    }
    fn type_name() -> &'static str {
        "f64"
    }
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Float(*self)
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Float(f) => Some(f),
            // Another language may write a whole float as an integer.
            #[allow(clippy::cast_precision_loss)]
            Value::Int(i) => Some(i as f64),
            #[allow(clippy::cast_precision_loss)]
            Value::Uint(u) => Some(u as f64),
            _ => None,
        }
    }
}

impl StateValue for bool {
    fn declared_type() -> Option<String> {
        Some("bool".to_owned())
    }
    fn type_name() -> &'static str {
        "bool"
    }
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Boolean(*self)
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Boolean(b) => Some(b),
            _ => None,
        }
    }
}

impl StateValue for String {
    fn declared_type() -> Option<String> {
        Some("text".to_owned())
    }
    fn type_name() -> &'static str {
        "String"
    }
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Text(self)
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

impl StateValue for Vec<u8> {
    fn declared_type() -> Option<String> {
        Some("bytes".to_owned())
    }
    fn type_name() -> &'static str {
        "Vec<u8>"
    }
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Bytes(self)
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: StateValue + PartialEq + std::fmt::Debug>(x: T) {
        let owned = x.to_value().to_owned_value();
        assert_eq!(T::from_value(owned), Some(x));
    }

    #[test]
    fn every_builtin_type_round_trips() {
        round_trip(-5i64);
        round_trip(i32::MIN);
        round_trip(u64::MAX);
        round_trip(7u32);
        round_trip(1.5f64);
        round_trip(true);
        round_trip(String::from("héllo"));
        round_trip(vec![0u8, 255]);
    }

    #[test]
    fn narrow_integers_reject_out_of_range() {
        assert_eq!(i32::from_value(Value::Int(i64::MAX)), None);
        assert_eq!(u32::from_value(Value::Uint(u64::MAX)), None);
        assert_eq!(u64::from_value(Value::Int(-1)), None);
        assert_eq!(i64::from_value(Value::Uint(u64::MAX)), None);
    }

    #[test]
    fn integers_read_across_flavours_and_floats_read_integers() {
        assert_eq!(u64::from_value(Value::Int(7)), Some(7));
        assert_eq!(i64::from_value(Value::Uint(7)), Some(7));
        assert_eq!(f64::from_value(Value::Int(2)), Some(2.0));
        assert_eq!(bool::from_value(Value::Int(1)), None);
    }

    #[test]
    fn wrong_type_names_the_state() {
        let err = decode::<i64>("count", Value::Text("x".into())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "state `count` holds a text value where i64 was expected"
        );
    }
}
