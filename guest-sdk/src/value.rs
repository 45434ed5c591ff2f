//! Typed state values: the Rust side of the WIT `value` variant.
//!
//! State is typed in the WIT (not encoded by each SDK) so an operator
//! rewritten in another language reads what this one wrote. [`StateValue`]
//! maps Rust types onto that variant; it is pure and has no host calls.

use crate::Error;

/// An owned state value, as read from the host (mirrors WIT `value`).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A boolean.
    Boolean(bool),
    /// A signed 64-bit integer (smaller signed integers widen to this).
    Int(i64),
    /// An unsigned 64-bit integer (smaller unsigned integers widen to this).
    Uint(u64),
    /// An IEEE 754 double.
    Float(f64),
    /// A UTF-8 string.
    Text(String),
    /// Opaque bytes a plugin encodes itself.
    Bytes(Vec<u8>),
}

/// A borrowed state value, as handed to the host (mirrors WIT `value`).
#[derive(Debug, Clone, Copy, PartialEq)]
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
}

impl Value {
    /// The WIT case name of this value (`boolean`, `int`, ...), for messages.
    pub fn kind(&self) -> &'static str {
        self.as_ref().kind()
    }

    /// Borrows this value.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Boolean(b) => ValueRef::Boolean(*b),
            Value::Int(i) => ValueRef::Int(*i),
            Value::Uint(u) => ValueRef::Uint(*u),
            Value::Float(f) => ValueRef::Float(*f),
            Value::Text(s) => ValueRef::Text(s),
            Value::Bytes(b) => ValueRef::Bytes(b),
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
        }
    }

    /// Copies this value into an owned [`Value`].
    pub fn to_owned_value(&self) -> Value {
        match *self {
            ValueRef::Boolean(b) => Value::Boolean(b),
            ValueRef::Int(i) => Value::Int(i),
            ValueRef::Uint(u) => Value::Uint(u),
            ValueRef::Float(f) => Value::Float(f),
            ValueRef::Text(s) => Value::Text(s.to_owned()),
            ValueRef::Bytes(b) => Value::Bytes(b.to_vec()),
        }
    }
}

/// A Rust type that can be stored in Weir state.
///
/// Implemented for `i64`, `i32`, `u64`, `u32`, `f64`, `bool`, `String` and
/// `Vec<u8>`. Implement it for your own types by encoding them as
/// [`Value::Bytes`] (or text), keeping in mind that another language's
/// plugin must decode the same bytes after a restore.
///
/// Contract: `from_value(to_value(x).to_owned_value()) == Some(x)`.
pub trait StateValue: Clone + 'static {
    /// The type's name in error messages, e.g. `"i64"`.
    const TYPE_NAME: &'static str;

    /// Borrows `self` as a WIT value.
    fn to_value(&self) -> ValueRef<'_>;

    /// Converts a stored value back, or `None` if it has another type or is
    /// out of range.
    fn from_value(value: Value) -> Option<Self>;
}

/// Converts a stored value for state `state`, naming the state on mismatch.
pub(crate) fn decode<T: StateValue>(state: &str, value: Value) -> Result<T, Error> {
    let found = value.kind();
    T::from_value(value).ok_or_else(|| Error::WrongType {
        state: state.to_owned(),
        expected: T::TYPE_NAME,
        found: found.to_owned(),
    })
}

impl StateValue for i64 {
    const TYPE_NAME: &'static str = "i64";
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Int(*self)
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }
}

impl StateValue for i32 {
    const TYPE_NAME: &'static str = "i32";
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Int(i64::from(*self))
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Int(i) => i32::try_from(i).ok(),
            _ => None,
        }
    }
}

impl StateValue for u64 {
    const TYPE_NAME: &'static str = "u64";
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Uint(*self)
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Uint(u) => Some(u),
            _ => None,
        }
    }
}

impl StateValue for u32 {
    const TYPE_NAME: &'static str = "u32";
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Uint(u64::from(*self))
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Uint(u) => u32::try_from(u).ok(),
            _ => None,
        }
    }
}

impl StateValue for f64 {
    const TYPE_NAME: &'static str = "f64";
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Float(*self)
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Float(f) => Some(f),
            _ => None,
        }
    }
}

impl StateValue for bool {
    const TYPE_NAME: &'static str = "bool";
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
    const TYPE_NAME: &'static str = "String";
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
    const TYPE_NAME: &'static str = "Vec<u8>";
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
