//! Structs, enums and collections in state, through serde.
//!
//! A type marked [`Structured`] is stored as a nested [`Value`]: structs
//! become records, sequences and tuples lists, maps maps, `None` and `()`
//! none, and enums follow serde's external tagging (a unit variant is its
//! name as text, any other variant a one-field record named after it). So a
//! Python operator reads a struct as a `dict` and a JavaScript operator as
//! an object, and a struct that gained a field with `#[serde(default)]`
//! reads values written before the field existed.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use weir_sdk::{StateValue, Structured};
//!
//! #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
//! struct Average {
//!     count: u64,
//!     sum: f64,
//! }
//! impl Structured for Average {}
//!
//! let avg = Average { count: 2, sum: 5.0 };
//! let stored = avg.to_value().to_owned_value();
//! assert_eq!(stored.kind(), "record");
//! assert_eq!(Average::from_value(stored), Some(avg));
//! ```

use std::fmt;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};

use crate::value::{StateValue, Value, ValueRef};

/// Marks a serde type as storable in state as a nested value; add
/// `impl Structured for MyType {}` beside its derives.
///
/// Serialising must succeed for every value stored: integers beyond 64
/// bits, or a `Serialize` impl that returns an error, fail the hook that
/// flushes the state with the serde message.
///
/// Override [`Structured::type_descriptor`] to declare the type to the host
/// (so `weir savepoint check` can compare it); [`crate::declare::Describe`]
/// and [`crate::declare::record`] build one.
pub trait Structured: Serialize + DeserializeOwned + Clone + 'static {
    /// This type's descriptor (`docs/wit.md`, "Type descriptors"), e.g.
    /// `record{count: uint, sum: float}`. The default, `None`, declares
    /// states of this type untyped.
    fn type_descriptor() -> Option<String> {
        None
    }
}

impl<T: Structured> StateValue for T {
    fn type_name() -> &'static str {
        std::any::type_name::<T>()
    }

    fn declared_type() -> Option<String> {
        <T as Structured>::type_descriptor()
    }

    fn to_value(&self) -> ValueRef<'_> {
        // The serialised value is owned, so even a scalar (a newtype, a
        // unit variant) travels as a tree; lowering sends it as a scalar.
        match to_value(self) {
            Ok(tree) => ValueRef::Tree(tree),
            Err(e) => panic!(
                "state value of type {} cannot be stored: {e}",
                std::any::type_name::<T>()
            ),
        }
    }

    fn from_value(value: Value) -> Option<Self> {
        from_value(value).ok()
    }

    fn try_from_value(value: Value) -> Result<Self, String> {
        from_value(value).map_err(|e| format!("a value that is not a {}: {e}", Self::type_name()))
    }
}

/// Converts any serde value into a state [`Value`].
///
/// # Errors
/// Integers beyond 64 bits, or an error from the type's `Serialize`.
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, StructuredError> {
    value.serialize(Serializer)
}

/// Converts a state [`Value`] into any serde type.
///
/// # Errors
/// The value does not have the type's shape (serde's message says where).
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, StructuredError> {
    T::deserialize(Tree(value))
}

/// Why a value did not convert to or from a serde type.
#[derive(Debug, Clone, PartialEq)]
pub struct StructuredError(String);

impl fmt::Display for StructuredError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StructuredError {}

impl ser::Error for StructuredError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        Self(msg.to_string())
    }
}

impl de::Error for StructuredError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        Self(msg.to_string())
    }
}

// ---- serialising ----

struct Serializer;

/// Collects a list, or a map's entries, or a record's fields.
struct Collect {
    /// Set for a variant: the result is wrapped as `{variant: ...}`.
    variant: Option<&'static str>,
    items: Vec<Value>,
    entries: Vec<(Value, Value)>,
    fields: Vec<(String, Value)>,
    pending_key: Option<Value>,
}

impl Collect {
    fn new(variant: Option<&'static str>, len: usize) -> Self {
        Self {
            variant,
            items: Vec::with_capacity(len),
            entries: Vec::new(),
            fields: Vec::new(),
            pending_key: None,
        }
    }

    fn wrap(variant: Option<&'static str>, value: Value) -> Value {
        match variant {
            Some(name) => Value::Record(vec![(name.to_owned(), value)]),
            None => value,
        }
    }
}

impl ser::Serializer for Serializer {
    type Ok = Value;
    type Error = StructuredError;
    type SerializeSeq = Collect;
    type SerializeTuple = Collect;
    type SerializeTupleStruct = Collect;
    type SerializeTupleVariant = Collect;
    type SerializeMap = Collect;
    type SerializeStruct = Collect;
    type SerializeStructVariant = Collect;

    fn serialize_bool(self, v: bool) -> Result<Value, StructuredError> {
        Ok(Value::Boolean(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, StructuredError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, StructuredError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, StructuredError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, StructuredError> {
        Ok(Value::Int(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Value, StructuredError> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| ser::Error::custom(format!("{v} does not fit in 64 bits")))
    }
    fn serialize_u8(self, v: u8) -> Result<Value, StructuredError> {
        Ok(Value::Uint(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, StructuredError> {
        Ok(Value::Uint(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, StructuredError> {
        Ok(Value::Uint(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, StructuredError> {
        Ok(Value::Uint(v))
    }
    fn serialize_u128(self, v: u128) -> Result<Value, StructuredError> {
        u64::try_from(v)
            .map(Value::Uint)
            .map_err(|_| ser::Error::custom(format!("{v} does not fit in 64 bits")))
    }
    fn serialize_f32(self, v: f32) -> Result<Value, StructuredError> {
        Ok(Value::Float(v.into()))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, StructuredError> {
        Ok(Value::Float(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, StructuredError> {
        Ok(Value::Text(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, StructuredError> {
        Ok(Value::Text(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, StructuredError> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn serialize_none(self) -> Result<Value, StructuredError> {
        Ok(Value::None)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<Value, StructuredError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, StructuredError> {
        Ok(Value::None)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Value, StructuredError> {
        Ok(Value::None)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Value, StructuredError> {
        Ok(Value::Text(variant.to_owned()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<Value, StructuredError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<Value, StructuredError> {
        Ok(Collect::wrap(Some(variant), v.serialize(self)?))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Collect, StructuredError> {
        Ok(Collect::new(None, len.unwrap_or(0)))
    }
    fn serialize_tuple(self, len: usize) -> Result<Collect, StructuredError> {
        Ok(Collect::new(None, len))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        len: usize,
    ) -> Result<Collect, StructuredError> {
        Ok(Collect::new(None, len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Collect, StructuredError> {
        Ok(Collect::new(Some(variant), len))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Collect, StructuredError> {
        Ok(Collect::new(None, 0))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Collect, StructuredError> {
        Ok(Collect::new(None, 0))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Collect, StructuredError> {
        Ok(Collect::new(Some(variant), 0))
    }
}

impl ser::SerializeSeq for Collect {
    type Ok = Value;
    type Error = StructuredError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), StructuredError> {
        self.items.push(v.serialize(Serializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, StructuredError> {
        Ok(Collect::wrap(self.variant, Value::List(self.items)))
    }
}

impl ser::SerializeTuple for Collect {
    type Ok = Value;
    type Error = StructuredError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), StructuredError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Value, StructuredError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for Collect {
    type Ok = Value;
    type Error = StructuredError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), StructuredError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Value, StructuredError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleVariant for Collect {
    type Ok = Value;
    type Error = StructuredError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), StructuredError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Value, StructuredError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeMap for Collect {
    type Ok = Value;
    type Error = StructuredError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), StructuredError> {
        self.pending_key = Some(k.serialize(Serializer)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), StructuredError> {
        let key = self
            .pending_key
            .take()
            .ok_or_else(|| ser::Error::custom("map value without a key"))?;
        self.entries.push((key, v.serialize(Serializer)?));
        Ok(())
    }
    fn end(self) -> Result<Value, StructuredError> {
        Ok(Collect::wrap(self.variant, Value::Map(self.entries)))
    }
}

impl ser::SerializeStruct for Collect {
    type Ok = Value;
    type Error = StructuredError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        v: &T,
    ) -> Result<(), StructuredError> {
        self.fields
            .push((name.to_owned(), v.serialize(Serializer)?));
        Ok(())
    }
    fn end(self) -> Result<Value, StructuredError> {
        Ok(Collect::wrap(self.variant, Value::Record(self.fields)))
    }
}

impl ser::SerializeStructVariant for Collect {
    type Ok = Value;
    type Error = StructuredError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        v: &T,
    ) -> Result<(), StructuredError> {
        ser::SerializeStruct::serialize_field(self, name, v)
    }
    fn end(self) -> Result<Value, StructuredError> {
        ser::SerializeStruct::end(self)
    }
}

// ---- deserialising ----

/// A [`Value`] as a serde deserializer (a local type: the value itself is
/// `weir-format`'s).
struct Tree(Value);

impl<'de> IntoDeserializer<'de, StructuredError> for Tree {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

/// The entries of a map or a record (field names as text keys).
fn entries(value: Value) -> Vec<(Value, Value)> {
    match value {
        Value::Map(entries) => entries,
        Value::Record(fields) => fields
            .into_iter()
            .map(|(name, v)| (Value::Text(name), v))
            .collect(),
        _ => Vec::new(),
    }
}

impl<'de> de::Deserializer<'de> for Tree {
    type Error = StructuredError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, StructuredError> {
        match self.0 {
            Value::Boolean(b) => visitor.visit_bool(b),
            Value::Int(i) => visitor.visit_i64(i),
            Value::Uint(u) => visitor.visit_u64(u),
            Value::Float(f) => visitor.visit_f64(f),
            Value::Text(s) => visitor.visit_string(s),
            Value::Bytes(b) => visitor.visit_byte_buf(b),
            Value::None => visitor.visit_unit(),
            Value::List(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter().map(Tree));
                let v = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(v)
            }
            map @ (Value::Map(_) | Value::Record(_)) => {
                let mut map =
                    MapDeserializer::new(entries(map).into_iter().map(|(k, v)| (Tree(k), Tree(v))));
                let v = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(v)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, StructuredError> {
        match self.0 {
            Value::None => visitor.visit_none(),
            v => visitor.visit_some(Tree(v)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, StructuredError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, StructuredError> {
        match self.0 {
            Value::Text(variant) => visitor.visit_enum(variant.into_deserializer()),
            value @ (Value::Map(_) | Value::Record(_)) => {
                let mut entries = entries(value);
                if entries.len() != 1 {
                    return Err(de::Error::custom(format!(
                        "an enum is a variant name or a record of one field, not {} fields",
                        entries.len()
                    )));
                }
                let (variant, content) = entries.remove(0);
                visitor.visit_enum(Variant { variant, content })
            }
            other => Err(de::Error::custom(format!(
                "an enum is a variant name or a record of one field, not a {} value",
                other.kind()
            ))),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

/// A variant with content: `{variant: content}`.
struct Variant {
    variant: Value,
    content: Value,
}

impl<'de> de::EnumAccess<'de> for Variant {
    type Error = StructuredError;
    type Variant = Tree;
    fn variant_seed<S: de::DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Tree), StructuredError> {
        Ok((seed.deserialize(Tree(self.variant))?, Tree(self.content)))
    }
}

impl<'de> de::VariantAccess<'de> for Tree {
    type Error = StructuredError;
    fn unit_variant(self) -> Result<(), StructuredError> {
        match self.0 {
            Value::None => Ok(()),
            other => Err(de::Error::custom(format!(
                "a unit variant has no content, found a {} value",
                other.kind()
            ))),
        }
    }
    fn newtype_variant_seed<S: de::DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, StructuredError> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(
        self,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, StructuredError> {
        de::Deserializer::deserialize_any(self, visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, StructuredError> {
        de::Deserializer::deserialize_any(self, visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Point,
        Circle(f64),
        Rect { w: u32, h: u32 },
        Pair(i64, i64),
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Everything {
        flag: bool,
        small: i8,
        big: u64,
        ratio: f64,
        name: String,
        tags: Vec<String>,
        scores: BTreeMap<u32, f64>,
        maybe: Option<i64>,
        nothing: Option<i64>,
        shapes: Vec<Shape>,
        unit: (),
    }
    impl Structured for Everything {}

    fn everything() -> Everything {
        Everything {
            flag: true,
            small: -3,
            big: u64::MAX,
            ratio: 0.25,
            name: "héllo".into(),
            tags: vec!["a".into(), "b".into()],
            scores: BTreeMap::from([(1, 0.5), (7, 2.0)]),
            maybe: Some(-9),
            nothing: None,
            shapes: vec![
                Shape::Point,
                Shape::Circle(1.5),
                Shape::Rect { w: 2, h: 3 },
                Shape::Pair(-1, 1),
            ],
            unit: (),
        }
    }

    #[test]
    fn every_serde_shape_round_trips() {
        let x = everything();
        let stored = x.to_value().to_owned_value();
        assert_eq!(Everything::from_value(stored), Some(x));
    }

    #[test]
    fn structs_are_records_and_enums_are_externally_tagged() {
        let v = to_value(&everything()).unwrap();
        let Value::Record(fields) = v else {
            panic!("a struct is a record: {v:?}")
        };
        let field = |name: &str| fields.iter().find(|(n, _)| n == name).unwrap().1.clone();
        assert_eq!(field("small"), Value::Int(-3));
        assert_eq!(field("big"), Value::Uint(u64::MAX));
        assert_eq!(field("nothing"), Value::None);
        assert_eq!(field("maybe"), Value::Int(-9));
        assert_eq!(
            field("shapes"),
            Value::List(vec![
                Value::Text("Point".into()),
                Value::Record(vec![("Circle".into(), Value::Float(1.5))]),
                Value::Record(vec![(
                    "Rect".into(),
                    Value::Record(vec![
                        ("w".into(), Value::Uint(2)),
                        ("h".into(), Value::Uint(3))
                    ])
                )]),
                Value::Record(vec![(
                    "Pair".into(),
                    Value::List(vec![Value::Int(-1), Value::Int(1)])
                )]),
            ])
        );
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct V1 {
        count: u64,
    }
    impl Structured for V1 {}

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct V2 {
        count: u64,
        #[serde(default)]
        sum: f64,
        #[serde(default = "unknown")]
        label: String,
    }
    impl Structured for V2 {}

    fn unknown() -> String {
        "unknown".into()
    }

    #[test]
    fn a_field_added_with_a_default_reads_old_values() {
        let old = V1 { count: 4 }.to_value().to_owned_value();
        assert_eq!(
            V2::from_value(old),
            Some(V2 {
                count: 4,
                sum: 0.0,
                label: "unknown".into()
            })
        );
        // And the old type reads the new value, ignoring the new fields.
        let new = V2 {
            count: 5,
            sum: 1.0,
            label: "x".into(),
        };
        assert_eq!(
            V1::from_value(new.to_value().to_owned_value()),
            Some(V1 { count: 5 })
        );
    }

    #[test]
    fn what_other_languages_write_reads_back() {
        // A Python dict with text keys may arrive as a map; ints as `int`.
        let from_python = Value::Map(vec![
            (Value::Text("count".into()), Value::Int(3)),
            (Value::Text("sum".into()), Value::Int(6)),
        ]);
        assert_eq!(
            from_value::<V2>(from_python).unwrap(),
            V2 {
                count: 3,
                sum: 6.0,
                label: "unknown".into()
            }
        );
    }

    #[test]
    fn a_mismatch_says_what_is_missing() {
        let err = V1::try_from_value(Value::Record(vec![])).unwrap_err();
        assert!(err.contains("missing field `count`"), "{err}");
        let err = V1::try_from_value(Value::Text("x".into())).unwrap_err();
        assert!(err.contains("invalid type: string \"x\""), "{err}");
    }
}
