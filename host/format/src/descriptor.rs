//! Type descriptors: the small text grammar in which operators declare the
//! type of a state (`keyed-state.declare`, `operator-state.declare`), and
//! the rule for whether a reader of one type reads values written as
//! another (schema evolution). Pure: no wasmtime, no I/O.
//!
//! ```text
//! type   := "bool" | "int" | "uint" | "float" | "text" | "bytes" | "any"
//!         | "list<" type ">" | "option<" type ">" | "map<" type "," type ">"
//!         | "record{" [ field ("," field)* [","] ] "}"
//! field  := name ":" type          name := [A-Za-z0-9_-]+, unique per record
//! ```
//!
//! Whitespace may separate tokens; nesting is at most
//! [`MAX_DESCRIPTOR_DEPTH`] levels. The canonical form ([`fmt::Display`])
//! is `map<text, list<int>>`, `record{count: int, tags: list<text>}`.

use std::fmt;

use thiserror::Error;

/// How deep a descriptor may nest (the same bound as a nested value's tree).
pub const MAX_DESCRIPTOR_DEPTH: usize = 64;

/// A parsed type descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeDescriptor {
    /// A boolean.
    Bool,
    /// A signed 64-bit integer.
    Int,
    /// An unsigned 64-bit integer.
    Uint,
    /// A double.
    Float,
    /// A UTF-8 string.
    Text,
    /// Opaque bytes.
    Bytes,
    /// Any value: the declaring SDK does not know (or say) the type.
    Any,
    /// A list of items of one type.
    List(Box<TypeDescriptor>),
    /// A value or none.
    Option(Box<TypeDescriptor>),
    /// A map from keys of one type to values of another.
    Map(Box<TypeDescriptor>, Box<TypeDescriptor>),
    /// A record: named fields, in declaration order.
    Record(Vec<(String, TypeDescriptor)>),
}

/// Why a descriptor did not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("type descriptor `{descriptor}` is malformed at byte {position}: {message}")]
pub struct DescriptorError {
    /// The descriptor as given.
    pub descriptor: String,
    /// The byte offset where parsing stopped.
    pub position: usize,
    /// What was expected there.
    pub message: String,
}

impl TypeDescriptor {
    /// Parses `text` in the grammar of this module.
    ///
    /// # Errors
    /// [`DescriptorError`] naming the descriptor and the byte offset of the
    /// first thing that does not fit the grammar.
    pub fn parse(text: &str) -> Result<Self, DescriptorError> {
        let mut p = Parser { text, pos: 0 };
        let result = p.ty(0).and_then(|t| {
            p.skip_ws();
            if p.pos == text.len() {
                Ok(t)
            } else {
                Err("nothing may follow the type".to_owned())
            }
        });
        result.map_err(|message| DescriptorError {
            descriptor: text.to_owned(),
            position: p.pos,
            message,
        })
    }

    /// Whether a reader expecting `self` reads every value written as
    /// `written`; on `Err`, the path and reason of the first conflict.
    ///
    /// The rules are those of `docs/sdk.md` ("Schema evolution"): `any`
    /// reads and is read as anything; integers read across `int` and
    /// `uint`, and `float` reads both; `option<T>` reads `T`; a record
    /// reads a record whose common fields it reads (a field the writer
    /// lacks takes the reader's default; a field the reader lacks is
    /// ignored); records and maps with text keys read each other.
    ///
    /// # Errors
    /// A message such as ``field `avg`: float does not read text``.
    pub fn reads(&self, written: &TypeDescriptor) -> Result<(), String> {
        use TypeDescriptor as T;
        let nested = |what: String, r: Result<(), String>| r.map_err(|e| format!("{what}: {e}"));
        match (self, written) {
            (T::Any, _) | (_, T::Any) => Ok(()),
            (T::Int | T::Uint, T::Int | T::Uint) => Ok(()),
            (T::Float, T::Int | T::Uint | T::Float) => Ok(()),
            (a, b) if a == b && a.is_scalar() => Ok(()),
            (T::List(a), T::List(b)) => nested("list item".into(), a.reads(b)),
            (T::Option(a), T::Option(b)) => a.reads(b),
            (T::Option(a), b) => a.reads(b),
            (T::Map(rk, rv), T::Map(wk, wv)) => {
                nested("map key".into(), rk.reads(wk))?;
                nested("map value".into(), rv.reads(wv))
            }
            (T::Map(rk, rv), T::Record(fields)) => {
                nested("map key".into(), rk.reads(&T::Text))?;
                for (name, w) in fields {
                    nested(format!("field `{name}`"), rv.reads(w))?;
                }
                Ok(())
            }
            (T::Record(fields), T::Map(wk, wv)) => {
                nested("map key".into(), T::Text.reads(wk))?;
                for (name, r) in fields {
                    nested(format!("field `{name}`"), r.reads(wv))?;
                }
                Ok(())
            }
            (T::Record(read), T::Record(written)) => {
                for (name, r) in read {
                    if let Some((_, w)) = written.iter().find(|(n, _)| n == name) {
                        nested(format!("field `{name}`"), r.reads(w))?;
                    }
                }
                Ok(())
            }
            (a, b) => Err(format!("{a} does not read {b}")),
        }
    }

    fn is_scalar(&self) -> bool {
        matches!(
            self,
            TypeDescriptor::Bool
                | TypeDescriptor::Int
                | TypeDescriptor::Uint
                | TypeDescriptor::Float
                | TypeDescriptor::Text
                | TypeDescriptor::Bytes
        )
    }
}

impl fmt::Display for TypeDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypeDescriptor::Bool => f.write_str("bool"),
            TypeDescriptor::Int => f.write_str("int"),
            TypeDescriptor::Uint => f.write_str("uint"),
            TypeDescriptor::Float => f.write_str("float"),
            TypeDescriptor::Text => f.write_str("text"),
            TypeDescriptor::Bytes => f.write_str("bytes"),
            TypeDescriptor::Any => f.write_str("any"),
            TypeDescriptor::List(t) => write!(f, "list<{t}>"),
            TypeDescriptor::Option(t) => write!(f, "option<{t}>"),
            TypeDescriptor::Map(k, v) => write!(f, "map<{k}, {v}>"),
            TypeDescriptor::Record(fields) => {
                f.write_str("record{")?;
                for (i, (name, t)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{name}: {t}")?;
                }
                f.write_str("}")
            }
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        let rest = &self.text[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, token: char) -> bool {
        self.skip_ws();
        if self.text[self.pos..].starts_with(token) {
            self.pos += token.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: char) -> Result<(), String> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(format!("expected `{token}`"))
        }
    }

    fn word(&mut self) -> &str {
        self.skip_ws();
        let rest = &self.text[self.pos..];
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    fn ty(&mut self, depth: usize) -> Result<TypeDescriptor, String> {
        if depth >= MAX_DESCRIPTOR_DEPTH {
            return Err(format!("nests deeper than {MAX_DESCRIPTOR_DEPTH} levels"));
        }
        let start = self.pos;
        let word = self.word();
        let t = match word {
            "bool" => TypeDescriptor::Bool,
            "int" => TypeDescriptor::Int,
            "uint" => TypeDescriptor::Uint,
            "float" => TypeDescriptor::Float,
            "text" => TypeDescriptor::Text,
            "bytes" => TypeDescriptor::Bytes,
            "any" => TypeDescriptor::Any,
            "list" | "option" => {
                let list = word == "list";
                self.expect('<')?;
                let item = Box::new(self.ty(depth + 1)?);
                self.expect('>')?;
                if list {
                    TypeDescriptor::List(item)
                } else {
                    TypeDescriptor::Option(item)
                }
            }
            "map" => {
                self.expect('<')?;
                let k = self.ty(depth + 1)?;
                self.expect(',')?;
                let v = self.ty(depth + 1)?;
                self.expect('>')?;
                TypeDescriptor::Map(Box::new(k), Box::new(v))
            }
            "record" => {
                self.expect('{')?;
                let mut fields: Vec<(String, TypeDescriptor)> = Vec::new();
                while !self.eat('}') {
                    let name = self.word().to_owned();
                    if name.is_empty() {
                        return Err("expected a field name or `}`".into());
                    }
                    if fields.iter().any(|(n, _)| *n == name) {
                        return Err(format!("field `{name}` appears twice"));
                    }
                    self.expect(':')?;
                    let t = self.ty(depth + 1)?;
                    fields.push((name, t));
                    if !self.eat(',') {
                        self.expect('}')?;
                        break;
                    }
                }
                TypeDescriptor::Record(fields)
            }
            "" => {
                self.pos = start;
                return Err("expected a type".into());
            }
            other => {
                let other = other.to_owned();
                self.pos = start;
                self.skip_ws();
                return Err(format!(
                    "unknown type `{other}` (expected bool, int, uint, float, text, bytes, any, list<T>, option<T>, map<K, V> or record{{...}})"
                ));
            }
        };
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(text: &str) -> String {
        TypeDescriptor::parse(text)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string()
    }

    #[test]
    fn every_form_parses_and_prints_canonically() {
        for t in ["bool", "int", "uint", "float", "text", "bytes", "any"] {
            assert_eq!(canonical(t), t);
        }
        assert_eq!(canonical(" list < int > "), "list<int>");
        assert_eq!(canonical("option<text>"), "option<text>");
        assert_eq!(canonical("map<text,list<float>>"), "map<text, list<float>>");
        assert_eq!(
            canonical("record{ count: int, avg: float, tags: list<text>, }"),
            "record{count: int, avg: float, tags: list<text>}"
        );
        assert_eq!(canonical("record{}"), "record{}");
        assert_eq!(
            canonical("record{inner: record{a-b: option<bytes>}}"),
            "record{inner: record{a-b: option<bytes>}}"
        );
        // The canonical form parses back to the same descriptor.
        let t = TypeDescriptor::parse("map<int, record{x: list<option<uint>>}>").unwrap();
        assert_eq!(TypeDescriptor::parse(&t.to_string()).unwrap(), t);
    }

    #[test]
    fn malformed_descriptors_name_the_position_and_the_problem() {
        let cases = [
            ("", 0, "expected a type"),
            ("integer", 0, "unknown type `integer`"),
            ("list<int", 8, "expected `>`"),
            ("map<text>", 8, "expected `,`"),
            ("record{a int}", 9, "expected `:`"),
            ("record{a: int, a: text}", 16, "field `a` appears twice"),
            ("record{: int}", 7, "expected a field name"),
            ("int int", 4, "nothing may follow"),
            ("list<>", 5, "expected a type"),
        ];
        for (text, position, message) in cases {
            let e = TypeDescriptor::parse(text).unwrap_err();
            assert_eq!(e.position, position, "{text}: {e}");
            assert!(e.message.contains(message), "{text}: {e}");
            assert!(e.to_string().contains(&format!("`{text}`")), "{e}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{}int{}", "list<".repeat(70), ">".repeat(70));
        let e = TypeDescriptor::parse(&deep).unwrap_err();
        assert!(e.message.contains("deeper than 64"), "{e}");
        let ok = format!("{}int{}", "list<".repeat(63), ">".repeat(63));
        assert!(TypeDescriptor::parse(&ok).is_ok());
    }

    fn reads(reader: &str, written: &str) -> Result<(), String> {
        TypeDescriptor::parse(reader)
            .unwrap()
            .reads(&TypeDescriptor::parse(written).unwrap())
    }

    #[test]
    fn evolution_adds_and_drops_record_fields_but_not_changes_their_types() {
        let v1 = "record{count: int, sum: float}";
        let v2 = "record{count: int, sum: float, max: option<float>}";
        assert_eq!(reads(v2, v1), Ok(()), "an added field takes its default");
        assert_eq!(reads(v1, v2), Ok(()), "a removed field is ignored");
        assert_eq!(
            reads("record{count: text}", v1),
            Err("field `count`: text does not read int".into())
        );
        assert_eq!(
            reads("list<record{a: bool}>", "list<record{a: bytes}>"),
            Err("list item: field `a`: bool does not read bytes".into())
        );
    }

    #[test]
    fn scalars_widen_as_readers_do() {
        assert_eq!(reads("uint", "int"), Ok(()));
        assert_eq!(reads("float", "uint"), Ok(()));
        assert!(reads("int", "float").is_err());
        assert_eq!(reads("option<int>", "int"), Ok(()));
        assert!(reads("int", "option<int>").is_err());
        assert_eq!(reads("any", "map<int, text>"), Ok(()));
        assert_eq!(reads("text", "any"), Ok(()));
        assert_eq!(reads("map<text, int>", "record{a: int, b: uint}"), Ok(()));
        assert_eq!(reads("record{a: int}", "map<text, int>"), Ok(()));
        assert!(reads("map<int, int>", "record{a: int}").is_err());
    }
}
