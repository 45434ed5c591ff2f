//! Splits each record's value (a line of text, read as lossy UTF-8) into
//! words with `str::split_whitespace` and emits one record per word, with
//! key and value both the word and the input record's timestamp.
//!
//! Config: empty, or `lowercase` to lowercase every word, or `key-first`
//! to emit one record per line instead, keyed by its first word with the
//! rest of the line (trimmed) as the value. Stateless.

use std::borrow::Cow;

use weir_sdk::{Context, Emitter, Error, Operator, Record};

/// The tokenizer; the mode comes from the config.
pub struct Tokenize {
    lowercase: bool,
    key_first: bool,
}

impl Operator for Tokenize {
    fn open(ctx: &Context) -> Result<Self, Error> {
        let (lowercase, key_first) = match ctx.config().trim() {
            "" => (false, false),
            "lowercase" => (true, false),
            "key-first" => (false, true),
            other => {
                return Err(format!(
                    "tokenize: unknown config {other:?} (expected \"\", \"lowercase\" or \"key-first\")"
                )
                .into());
            }
        };
        Ok(Self {
            lowercase,
            key_first,
        })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
        let line = record.value_str_lossy();
        if self.key_first {
            let line = line.trim();
            if let Some(first) = line.split_whitespace().next() {
                let rest = line[first.len()..].trim_start();
                out.emit_with_timestamp(Some(first.as_bytes()), rest.as_bytes(), record.timestamp);
            }
            return Ok(());
        }
        for word in line.split_whitespace() {
            let word = if self.lowercase {
                Cow::Owned(word.to_lowercase())
            } else {
                Cow::Borrowed(word)
            };
            out.emit_with_timestamp(Some(word.as_bytes()), word.as_bytes(), record.timestamp);
        }
        Ok(())
    }
}

weir_sdk::export!(Tokenize);

#[cfg(test)]
mod tests {
    use weir_sdk::testing::{Harness, TestRecord};

    use super::Tokenize;

    #[test]
    fn splits_words_keeping_the_timestamp() {
        let mut h = Harness::<Tokenize>::open("lowercase").unwrap();
        let out = h
            .process(&[TestRecord::unkeyed(" Hello  wOrld\n").at(7)])
            .unwrap();
        assert_eq!(
            out,
            vec![
                TestRecord::keyed("hello", "hello").at(7),
                TestRecord::keyed("world", "world").at(7)
            ]
        );
    }

    #[test]
    fn key_first_keys_each_line_by_its_first_word() {
        let mut h = Harness::<Tokenize>::open("key-first").unwrap();
        let out = h
            .process(&[
                TestRecord::unkeyed("alice  apple 1.5\n"),
                TestRecord::unkeyed("   \n"),
                TestRecord::unkeyed("bob"),
            ])
            .unwrap();
        assert_eq!(
            out,
            vec![
                TestRecord::keyed("alice", "apple 1.5"),
                TestRecord::keyed("bob", "")
            ]
        );
    }
}
