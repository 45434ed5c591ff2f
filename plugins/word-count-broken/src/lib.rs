//! A test plugin: `plugins/word-count` with a fault planted in `open`, as
//! an upgrade target that passes a savepoint restore check but fails the
//! real run.
//!
//! Its states match word-count's exactly (keyed `ValueState<i64>` named
//! `count`), its config is read the same way (empty, or
//! `cache_capacity=N`) and its output is the same (each record's key and
//! the number of records seen with that key so far, in decimal ASCII). A
//! restore check that instantiates one subtask-0 instance to read the
//! declared states therefore accepts it in place of word-count. But when
//! the operator runs as more than one subtask, `open` panics (a trap) on
//! the last subtask, so the upgraded job fails to start and the host must
//! roll back or report it.

use weir_sdk::{Context, Emitter, Error, Operator, Record, ValueState};

/// The message `open` panics with on the last of several subtasks.
pub const TRAP_MESSAGE: &str = "word-count-broken traps in open on its last subtask";

/// Counts records per key in `ValueState<i64>` named `count`, like
/// word-count, but cannot open as the last of several subtasks.
pub struct WordCountBroken {
    count: ValueState<i64>,
}

impl Operator for WordCountBroken {
    /// Declares `count` and reads the config as word-count does.
    ///
    /// # Errors
    ///
    /// A config other than empty or `cache_capacity=N`.
    ///
    /// # Panics
    ///
    /// On purpose, with [`TRAP_MESSAGE`], when `ctx` is the last subtask of
    /// a parallelism above 1: the fault this plugin exists to plant.
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
        // Subtask 0 (what a restore check instantiates) always opens.
        if ctx.parallelism() > 1 && ctx.subtask_index() + 1 == ctx.parallelism() {
            panic!("{TRAP_MESSAGE}");
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

weir_sdk::export!(WordCountBroken);

#[cfg(test)]
mod tests {
    use weir_sdk::testing::{Harness, TestRecord};
    use weir_sdk::{Context, Declaration, DeclaredKind, Value};

    use super::WordCountBroken;

    fn subtask(index: u32, parallelism: u32) -> Context {
        Context::new("test", "").with_subtask(index, parallelism, 128)
    }

    #[test]
    fn counts_per_key_and_flushes_at_snapshot() {
        let mut h = Harness::<WordCountBroken>::open("").unwrap();
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

    #[test]
    fn declares_word_counts_states() {
        let h = Harness::<WordCountBroken>::open("").unwrap();
        assert_eq!(
            h.declared_states(),
            [Declaration {
                name: "count".into(),
                kind: DeclaredKind::Value,
                type_name: Some("int".into()),
            }]
        );
    }

    #[test]
    fn rejects_an_unknown_config() {
        assert!(Harness::<WordCountBroken>::open("bogus").is_err());
    }

    #[test]
    fn opens_on_every_subtask_but_the_last_of_several() {
        for (index, parallelism) in [(0, 1), (0, 2), (0, 3), (1, 3)] {
            Harness::<WordCountBroken>::open_with(&subtask(index, parallelism)).unwrap();
        }
    }

    #[test]
    #[should_panic(expected = "word-count-broken traps in open on its last subtask")]
    fn traps_in_open_on_the_last_subtask() {
        let _ = Harness::<WordCountBroken>::open_with(&subtask(2, 3));
    }
}
