//! Drops records whose value equals a stop word; passes everything else
//! through unchanged (key, value and timestamp).
//!
//! Config: a comma-separated list of stop words; each entry is trimmed of
//! surrounding whitespace, empty entries are ignored, and a value matches
//! by exact bytes. Stateless.

use std::collections::BTreeSet;

use weir_sdk::{Context, Emitter, Error, Operator, Record};

/// The filter and its stop words.
pub struct Filter {
    // A BTreeSet, not a HashSet: std's random hash seed would make the
    // component import `wasi:random`.
    stop_words: BTreeSet<Vec<u8>>,
}

impl Operator for Filter {
    fn open(ctx: &Context) -> Result<Self, Error> {
        let stop_words = ctx
            .config()
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(|w| w.as_bytes().to_vec())
            .collect();
        Ok(Self { stop_words })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
        if !self.stop_words.contains(record.value) {
            out.emit_with_timestamp(record.key, record.value, record.timestamp);
        }
        Ok(())
    }
}

weir_sdk::export!(Filter);

#[cfg(test)]
mod tests {
    use weir_sdk::testing::{Harness, TestRecord};

    use super::Filter;

    #[test]
    fn drops_exact_stop_words_only() {
        let mut h = Harness::<Filter>::open(" the, a ,").unwrap();
        let input: Vec<_> = ["the", "a", "then", "A", ""]
            .iter()
            .map(|w| TestRecord::keyed(w, w).at(1))
            .collect();
        let out = h.process(&input).unwrap();
        assert_eq!(out, input[2..].to_vec());
    }
}
