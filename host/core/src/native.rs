//! Operators compiled into the host. They are the baseline the benchmark
//! measures Wasm plugins against, so they do the same work the example
//! plugins do, with state in the same [`KeyedStateBackend`].

use weir_format::{BatchReader, BatchWriter};

use crate::keygroup::key_group_of;
use crate::state::{KeyedStateBackend, Update, Value};

/// An operator implemented in Rust inside the host.
pub trait NativeOperator: Send {
    /// Processes a packed batch, emitting into `out`.
    ///
    /// # Errors
    /// A message describing a bad record or a state error.
    fn process(
        &mut self,
        batch: &[u8],
        state: &mut dyn KeyedStateBackend,
        max_parallelism: u32,
        out: &mut BatchWriter,
    ) -> Result<(), String>;
}

/// Makes one [`NativeOperator`] per subtask.
pub trait NativeOperatorFactory: Send + Sync {
    /// A name for logs.
    fn name(&self) -> &str;
    /// A fresh instance.
    fn create(&self) -> Box<dyn NativeOperator>;
}

/// Splits each line on whitespace into `word → word` records, as the
/// `tokenize` plugin does.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tokenize;

impl NativeOperator for Tokenize {
    fn process(
        &mut self,
        batch: &[u8],
        _: &mut dyn KeyedStateBackend,
        _: u32,
        out: &mut BatchWriter,
    ) -> Result<(), String> {
        for record in BatchReader::new(batch) {
            let record = record.map_err(|e| e.to_string())?;
            let line = String::from_utf8_lossy(record.value);
            for word in line.split_whitespace() {
                out.push(Some(word.as_bytes()), word.as_bytes(), record.timestamp);
            }
        }
        Ok(())
    }
}

impl NativeOperatorFactory for Tokenize {
    fn name(&self) -> &str {
        "native-tokenize"
    }
    fn create(&self) -> Box<dyn NativeOperator> {
        Box::new(Tokenize)
    }
}

/// A keyed running count in value state `count`, emitting `key → count`,
/// as the `word-count` plugin does.
#[derive(Debug, Default, Clone, Copy)]
pub struct WordCount;

impl NativeOperator for WordCount {
    fn process(
        &mut self,
        batch: &[u8],
        state: &mut dyn KeyedStateBackend,
        max_parallelism: u32,
        out: &mut BatchWriter,
    ) -> Result<(), String> {
        let mut digits = itoa::Buffer::new();
        for record in BatchReader::new(batch) {
            let record = record.map_err(|e| e.to_string())?;
            let key = record.key.ok_or("word-count needs keyed records")?;
            let kg = key_group_of(key, max_parallelism);
            let count = match state
                .value_get(kg, "count", key)
                .map_err(|e| e.to_string())?
            {
                Some(Value::Int(n)) => n + 1,
                Some(other) => return Err(format!("state `count` holds {other:?}, not an int")),
                None => 1,
            };
            state
                .apply(kg, "count", key, Update::ValueSet(Value::Int(count)))
                .map_err(|e| e.to_string())?;
            out.push(Some(key), digits.format(count).as_bytes(), record.timestamp);
        }
        Ok(())
    }
}

impl NativeOperatorFactory for WordCount {
    fn name(&self) -> &str {
        "native-word-count"
    }
    fn create(&self) -> Box<dyn NativeOperator> {
        Box::new(WordCount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keygroup::KeyGroupRange;
    use crate::state::MemoryStateBackend;

    #[test]
    fn tokenize_then_count() {
        let mut input = BatchWriter::default();
        input.push(None, b"a b  a", Some(7));
        let mut state = MemoryStateBackend::new(KeyGroupRange::for_subtask(0, 1, 128));
        let mut words = BatchWriter::default();
        Tokenize
            .process(input.as_bytes(), &mut state, 128, &mut words)
            .unwrap();
        let mut counts = BatchWriter::default();
        WordCount
            .process(words.as_bytes(), &mut state, 128, &mut counts)
            .unwrap();
        let got: Vec<_> = BatchReader::new(counts.as_bytes())
            .map(|r| r.unwrap())
            .map(|r| (r.key.unwrap().to_vec(), r.value.to_vec(), r.timestamp))
            .collect();
        assert_eq!(
            got,
            vec![
                (b"a".to_vec(), b"1".to_vec(), Some(7)),
                (b"b".to_vec(), b"1".to_vec(), Some(7)),
                (b"a".to_vec(), b"2".to_vec(), Some(7)),
            ]
        );
    }
}
