//! Runtime tests: the hook dispatch, emits and state flushes, driven
//! natively through [`crate::testing::Harness`].

use crate::testing::{Harness, TestRecord};
use crate::{
    Context, Emitter, Error, ListState, MapState, Operator, OperatorListState, Record, Value,
    ValueState,
};

struct Counter {
    count: ValueState<i64>,
    seen: ListState<String>,
    last: MapState<String, i64>,
    batches: OperatorListState<u64>,
}

impl Operator for Counter {
    fn open(ctx: &Context) -> Result<Self, Error> {
        let count = ValueState::new("count")?;
        if let Ok(cap) = ctx.config().parse() {
            count.set_cache_capacity(cap);
        }
        Ok(Self {
            count,
            seen: ListState::new("seen")?,
            last: MapState::new("last")?,
            batches: OperatorListState::new("batches")?,
        })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
        let n = self.count.get()?.unwrap_or(0) + 1;
        self.count.set(n)?;
        self.seen.add(record.value_str()?.to_owned())?;
        self.last.put(record.value_str()?.to_owned(), n)?;
        out.emit(record.key, n.to_string().as_bytes());
        Ok(())
    }

    fn snapshot(&mut self, checkpoint_id: u64, out: &mut Emitter) -> Result<(), Error> {
        let mut ids = self.batches.get()?;
        ids.push(checkpoint_id);
        self.batches.replace(ids)?;
        out.emit(None, b"snap");
        Ok(())
    }
}

fn words(keys: &[&str]) -> Vec<TestRecord> {
    keys.iter().map(|k| TestRecord::keyed(k, k)).collect()
}

#[test]
fn state_is_cached_and_flushed_only_at_snapshot() {
    let mut h = Harness::<Counter>::open("").unwrap();
    let out = h.process(&words(&["a", "b", "a"])).unwrap();
    let values: Vec<_> = out.iter().map(|r| r.value.as_slice()).collect();
    assert_eq!(values, [b"1", b"1", b"2"]);
    // One read per key and state kind, no writes, one emit for the batch.
    assert_eq!(h.host_calls(), (6, 0, 1));
    assert_eq!(h.host_value("count", b"a"), None);

    let out = h.snapshot(1).unwrap();
    assert_eq!(out, vec![TestRecord::unkeyed("snap")]);
    assert_eq!(h.host_calls().1, 1, "one write call for all states");
    assert_eq!(h.host_value("count", b"a"), Some(Value::Int(2)));
    assert_eq!(h.host_list("seen", b"a"), vec![Value::Text("a".into()); 2]);
    assert_eq!(
        h.host_map("last", b"a"),
        vec![(Value::Text("a".into()), Value::Int(2))]
    );
    assert_eq!(h.host_operator_list("batches"), vec![Value::Uint(1)]);

    h.process(&words(&["a"])).unwrap();
    assert_eq!(h.host_calls().0, 7, "only the operator state load was new");
    h.close().unwrap();
    assert_eq!(h.host_value("count", b"a"), Some(Value::Int(3)));
    assert_eq!(h.host_calls().1, 2);
}

#[test]
fn a_restored_entry_read_but_not_written_is_not_flushed() {
    /// Reads every record's count; adds one only for `k7` and `k900`.
    struct ReadMostly(ValueState<i64>);
    impl Operator for ReadMostly {
        fn open(_: &Context) -> Result<Self, Error> {
            Ok(Self(ValueState::new("count")?))
        }
        fn process(&mut self, record: Record<'_>, _: &mut Emitter) -> Result<(), Error> {
            let n = self.0.get()?.unwrap_or(0);
            if matches!(record.key, Some(b"k7" | b"k900")) {
                self.0.set(n + 1)?;
            }
            Ok(())
        }
    }
    let mut h = Harness::<ReadMostly>::open("").unwrap();
    let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        h.put_host_value("count", key.as_bytes(), Value::Int(i as i64));
    }
    let all: Vec<&str> = keys.iter().map(String::as_str).collect();
    h.process(&words(&all)).unwrap();
    h.snapshot(1).unwrap();
    assert_eq!(h.host_writes(), 2, "only the two written entries");
    assert_eq!(h.host_calls().1, 1, "in one call");
    assert_eq!(h.host_value("count", b"k900"), Some(Value::Int(901)));
    h.snapshot(2).unwrap();
    assert_eq!(h.host_writes(), 2, "flushed entries are clean");
}

#[test]
fn over_capacity_caches_flush_and_evict_during_processing() {
    let mut h = Harness::<Counter>::open("1").unwrap();
    h.process(&words(&["a", "b"])).unwrap();
    assert_eq!(h.host_value("count", b"a"), Some(Value::Int(1)));
    let (reads, _, _) = h.host_calls();
    let out = h.process(&words(&["a"])).unwrap();
    assert_eq!(out[0].value, b"2");
    assert!(
        h.host_calls().0 >= reads,
        "evicted keys reload from the host"
    );
}

#[test]
fn keyed_state_without_a_key_names_the_state() {
    let mut h = Harness::<Counter>::open("").unwrap();
    let err = h.process(&[TestRecord::unkeyed("x")]).unwrap_err();
    assert!(
        matches!(&err, Error::NoCurrentKey { state } if state == "count"),
        "{err}"
    );
}

#[test]
fn timestamps_follow_the_input_record() {
    struct Echo;
    impl Operator for Echo {
        fn open(_: &Context) -> Result<Self, Error> {
            Ok(Echo)
        }
        fn process(&mut self, r: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
            out.emit(r.key, r.value);
            out.emit_with_timestamp(None, b"t", Some(9));
            Ok(())
        }
        fn close(&mut self, out: &mut Emitter) -> Result<(), Error> {
            out.emit(None, b"end");
            Ok(())
        }
    }
    let mut h = Harness::<Echo>::open("").unwrap();
    let out = h.process(&[TestRecord::unkeyed("v").at(3)]).unwrap();
    assert_eq!(
        out,
        vec![
            TestRecord::unkeyed("v").at(3),
            TestRecord::unkeyed("t").at(9)
        ]
    );
    assert_eq!(h.close().unwrap(), vec![TestRecord::unkeyed("end")]);
}

#[test]
fn bad_batches_and_conflicting_states_fail() {
    struct Conflict;
    impl Operator for Conflict {
        fn open(_: &Context) -> Result<Self, Error> {
            let _a = ValueState::<i64>::new("s")?;
            let _b = ListState::<i64>::new("s")?;
            Ok(Conflict)
        }
        fn process(&mut self, _: Record<'_>, _: &mut Emitter) -> Result<(), Error> {
            Ok(())
        }
    }
    assert!(matches!(
        Harness::<Conflict>::open(""),
        Err(Error::StateConflict { .. })
    ));

    let mut h = Harness::<Counter>::open("").unwrap();
    assert!(matches!(h.process_packed(&[0x80]), Err(Error::Decode(_))));
}

#[test]
fn wrong_stored_type_names_the_state() {
    struct Texty(ValueState<String>);
    impl Operator for Texty {
        fn open(_: &Context) -> Result<Self, Error> {
            Ok(Texty(ValueState::new("count")?))
        }
        fn process(&mut self, _: Record<'_>, _: &mut Emitter) -> Result<(), Error> {
            self.0.get().map(|_| ())
        }
    }
    let mut h = Harness::<Texty>::open("").unwrap();
    h.put_host_value("count", b"a", Value::Int(1));
    let err = h.process(&words(&["a"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "state `count` holds a int value where String was expected"
    );
}

mod declarations {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::declare::{Describe, record};
    use crate::{Declaration, DeclaredKind, Redistribution, Structured};

    fn declared(name: &str, kind: DeclaredKind, type_name: Option<&str>) -> Declaration {
        Declaration {
            name: name.into(),
            kind,
            type_name: type_name.map(Into::into),
        }
    }

    #[test]
    fn opening_declares_every_state_with_its_kind_and_type() {
        let h = Harness::<Counter>::open("").unwrap();
        assert_eq!(
            h.declared_states(),
            [
                declared("count", DeclaredKind::Value, Some("int")),
                declared("seen", DeclaredKind::List, Some("list<text>")),
                declared("last", DeclaredKind::Map, Some("map<text, int>")),
                declared(
                    "batches",
                    DeclaredKind::OperatorList(Redistribution::Split),
                    Some("list<uint>")
                ),
            ]
        );
    }

    /// Version 1 of a per-key summary.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct SummaryV1 {
        count: u64,
    }
    impl Structured for SummaryV1 {
        fn type_descriptor() -> Option<String> {
            Some(record(&[("count", u64::describe())]))
        }
    }

    /// Version 2: gained a field with a default.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct SummaryV2 {
        count: u64,
        #[serde(default)]
        tags: Vec<String>,
    }
    impl Structured for SummaryV2 {
        fn type_descriptor() -> Option<String> {
            Some(record(&[
                ("count", u64::describe()),
                ("tags", Vec::<String>::describe()),
            ]))
        }
    }

    /// An untyped structured value, and an operator list state that is
    /// handed whole to every subtask on rescaling.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Opaque(u8);
    impl Structured for Opaque {}

    struct Summarise<S> {
        summary: ValueState<S>,
        _registry: OperatorListState<Opaque>,
    }

    trait Bump: Structured {
        fn bump(old: Option<Self>, word: &str) -> Self;
        fn count(&self) -> u64;
    }

    impl Bump for SummaryV1 {
        fn bump(old: Option<Self>, _: &str) -> Self {
            SummaryV1 {
                count: old.map_or(0, |s| s.count) + 1,
            }
        }
        fn count(&self) -> u64 {
            self.count
        }
    }

    impl Bump for SummaryV2 {
        fn bump(old: Option<Self>, word: &str) -> Self {
            let mut s = old.unwrap_or(SummaryV2 {
                count: 0,
                tags: Vec::new(),
            });
            s.count += 1;
            s.tags.push(word.to_owned());
            s
        }
        fn count(&self) -> u64 {
            self.count
        }
    }

    impl<S: Bump> Operator for Summarise<S> {
        fn open(_: &Context) -> Result<Self, Error> {
            Ok(Self {
                summary: ValueState::new("summary")?,
                _registry: OperatorListState::with_redistribution(
                    "registry",
                    Redistribution::Union,
                )?,
            })
        }

        fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
            let s = S::bump(self.summary.get()?, record.value_str()?);
            out.emit(record.key, s.count().to_string().as_bytes());
            self.summary.set(s)?;
            Ok(())
        }
    }

    #[test]
    fn a_v2_type_with_a_defaulted_field_reads_what_v1_wrote() {
        let mut v1 = Harness::<Summarise<SummaryV1>>::open("").unwrap();
        assert_eq!(
            v1.declared_states(),
            [
                declared("summary", DeclaredKind::Value, Some("record{count: uint}")),
                declared(
                    "registry",
                    DeclaredKind::OperatorList(Redistribution::Union),
                    None
                ),
            ]
        );
        v1.process(&words(&["a", "a"])).unwrap();
        v1.close().unwrap();
        let written = v1.host_value("summary", b"a").unwrap();
        assert_eq!(
            written,
            Value::Record(vec![("count".into(), Value::Uint(2))])
        );
        drop(v1);

        // Restore what v1 wrote into v2, under the same state name.
        let mut v2 = Harness::<Summarise<SummaryV2>>::open("").unwrap();
        assert_eq!(
            v2.declared_states()[0].type_name.as_deref(),
            Some("record{count: uint, tags: list<text>}")
        );
        v2.put_host_value("summary", b"a", written);
        let out = v2.process(&words(&["a"])).unwrap();
        assert_eq!(out, [TestRecord::keyed("a", "3")]);
        v2.close().unwrap();
        assert_eq!(
            v2.host_value("summary", b"a").unwrap(),
            Value::Record(vec![
                ("count".into(), Value::Uint(3)),
                ("tags".into(), Value::List(vec![Value::Text("a".into())])),
            ])
        );
    }

    struct Conflicting;

    impl Operator for Conflicting {
        fn open(_: &Context) -> Result<Self, Error> {
            OperatorListState::<u64>::new("ids")?;
            OperatorListState::<u64>::with_redistribution("ids", Redistribution::Union)?;
            Ok(Conflicting)
        }
        fn process(&mut self, _: Record<'_>, _: &mut Emitter) -> Result<(), Error> {
            Ok(())
        }
    }

    #[test]
    fn a_conflicting_redeclaration_fails_open_naming_the_state() {
        let Err(e) = Harness::<Conflicting>::open("") else {
            panic!("two redistributions for one state must fail");
        };
        let msg = e.to_string();
        assert!(msg.contains("operator-state.declare"), "{msg}");
        assert!(msg.contains("`ids`"), "{msg}");
    }

    #[test]
    fn natively_without_a_harness_handles_still_declare() {
        // The native stub host accepts declarations, so handles can be made
        // outside a harness; state access is what it refuses.
        let count = ValueState::<i64>::new("native-count").unwrap();
        crate::state::set_current_key(Some(b"k"));
        let err = count.get().unwrap_err().to_string();
        crate::state::set_current_key(None);
        assert!(err.contains("no Weir host outside WebAssembly"), "{err}");
        crate::runtime::reset();
    }

    #[test]
    fn describe_covers_collections() {
        use std::collections::{BTreeMap, HashMap};
        assert_eq!(Option::<i32>::describe(), "option<int>");
        assert_eq!(
            HashMap::<String, Vec<f64>>::describe(),
            "map<text, list<float>>"
        );
        assert_eq!(BTreeMap::<u8, bool>::describe(), "map<uint, bool>");
        assert_eq!(Opaque::describe(), "any");
        assert_eq!(SummaryV1::describe(), "record{count: uint}");
    }
}
