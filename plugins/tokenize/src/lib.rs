//! Splits each record's value (a line of text, read as lossy UTF-8) into
//! words with `str::split_whitespace` and emits one record per word, with
//! key and value both the word and the input record's timestamp.
//!
//! Config: empty, or `lowercase` to lowercase every word. Stateless.

use std::borrow::Cow;

use weir_sdk::{Context, Emitter, Error, Operator, Record};

/// The tokenizer; `lowercase` comes from the config.
pub struct Tokenize {
    lowercase: bool,
}

impl Operator for Tokenize {
    fn open(ctx: &Context) -> Result<Self, Error> {
        let lowercase = match ctx.config().trim() {
            "" => false,
            "lowercase" => true,
            other => {
                return Err(format!(
                    "tokenize: unknown config {other:?} (expected \"\" or \"lowercase\")"
                )
                .into());
            }
        };
        Ok(Self { lowercase })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
        let line = record.value_str_lossy();
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
}
