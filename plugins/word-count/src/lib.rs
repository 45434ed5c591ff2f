//! Keyed running word count: for every record, emits its key and the
//! number of records seen with that key so far (decimal ASCII).
//!
//! Run it behind a `hash` edge: the count lives in keyed state `count`.
//! Config: empty, or `cache_capacity=N` to keep at most N keys cached in
//! the guest between flushes (the benchmark uses 0 to measure reading state
//! from the host for every new key of every batch).

use weir_sdk::{Context, Emitter, Error, Operator, Record, ValueState};

/// Counts records per key in `ValueState<i64>` named `count`.
pub struct WordCount {
    count: ValueState<i64>,
}

impl Operator for WordCount {
    fn open(ctx: &Context) -> Result<Self, Error> {
        let count = ValueState::new("count")?;
        match ctx.config().trim() {
            "" => {}
            config => {
                let n = config.strip_prefix("cache_capacity=").ok_or_else(|| {
                    format!("unknown config `{config}`: expected `cache_capacity=N`")
                })?;
                count.set_cache_capacity(n.parse()?);
            }
        }
        Ok(Self { count })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
        let count = self.count.get()?.unwrap_or(0) + 1;
        self.count.set(count)?;
        out.emit(record.key, count.to_string().as_bytes());
        Ok(())
    }
}

weir_sdk::export!(WordCount);

#[cfg(test)]
mod tests {
    use weir_sdk::Value;
    use weir_sdk::testing::{Harness, TestRecord};

    use super::WordCount;

    #[test]
    fn counts_per_key_and_flushes_at_snapshot() {
        let mut h = Harness::<WordCount>::open("").unwrap();
        let input: Vec<_> = ["a", "b", "a"]
            .iter()
            .map(|w| TestRecord::keyed(w, w))
            .collect();
        let out = h.process(&input).unwrap();
        let got: Vec<_> = out
            .iter()
            .map(|r| (r.key.clone().unwrap(), r.value.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"1".to_vec()),
                (b"a".to_vec(), b"2".to_vec())
            ]
        );
        h.snapshot(1).unwrap();
        assert_eq!(h.host_value("count", b"a"), Some(Value::Int(2)));
    }
}
