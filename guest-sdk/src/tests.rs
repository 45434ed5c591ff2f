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
