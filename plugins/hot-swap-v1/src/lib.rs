//! Version 1 of the hot-swap example (`examples/hot-swap/`): counts the
//! readings of each sensor.
//!
//! Input: records keyed by sensor whose value is a reading (the example
//! keys `datagen` lines such as `w12 w7` with `tokenize` in `key-first`
//! mode: sensor `w12`, reading `w7`). Version 1 does not look at the
//! reading. State per sensor: value state `sensor`, a record
//! `{count: int}`. For every record it emits the sensor and `count=N`.
//! Config: none.
//!
//! Version 2 (`plugins/hot-swap-v2`) runs under the same operator uid,
//! restored from a savepoint of this one, and reads this state with two
//! fields added.

use serde::{Deserialize, Serialize};
use weir_sdk::{Context, Describe, Emitter, Error, Operator, Record, Structured, ValueState};

/// What version 1 keeps per sensor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sensor {
    /// Readings seen.
    pub count: i64,
}

impl Structured for Sensor {
    fn type_descriptor() -> Option<String> {
        Some(weir_sdk::declare::record(&[("count", i64::describe())]))
    }
}

/// Counts readings per sensor in the value state `sensor`.
pub struct CountReadings {
    sensor: ValueState<Sensor>,
}

impl Operator for CountReadings {
    fn open(ctx: &Context) -> Result<Self, Error> {
        if !ctx.config().trim().is_empty() {
            return Err(format!("hot-swap-v1: takes no config, got {:?}", ctx.config()).into());
        }
        Ok(Self {
            sensor: ValueState::new("sensor")?,
        })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
        let mut sensor = self.sensor.get()?.unwrap_or_default();
        sensor.count += 1;
        out.emit(record.key, format!("count={}", sensor.count).as_bytes());
        self.sensor.set(sensor)?;
        Ok(())
    }
}

weir_sdk::export!(CountReadings);

#[cfg(test)]
mod tests {
    use weir_sdk::testing::{Harness, TestRecord};
    use weir_sdk::{DeclaredKind, Value};

    use super::CountReadings;

    #[test]
    fn counts_readings_per_sensor() {
        let mut h = Harness::<CountReadings>::open("").unwrap();
        let input: Vec<_> = [("w1", "w7"), ("w2", "w3"), ("w1", "w0"), ("w1", "w9")]
            .iter()
            .map(|(k, v)| TestRecord::keyed(k, v))
            .collect();
        let out = h.process(&input).unwrap();
        assert_eq!(
            out,
            vec![
                TestRecord::keyed("w1", "count=1"),
                TestRecord::keyed("w2", "count=1"),
                TestRecord::keyed("w1", "count=2"),
                TestRecord::keyed("w1", "count=3"),
            ]
        );
    }

    /// What a savepoint holds for a sensor: the record version 2's
    /// schema-evolution test restores.
    #[test]
    fn stores_a_record_with_a_count() {
        let mut h = Harness::<CountReadings>::open("").unwrap();
        h.process(&[TestRecord::keyed("w4", "w1"), TestRecord::keyed("w4", "w2")])
            .unwrap();
        h.snapshot(1).unwrap();
        assert_eq!(
            h.host_value("sensor", b"w4"),
            Some(Value::Record(vec![("count".into(), Value::Int(2))]))
        );
        let declared = h.declared_states();
        assert_eq!(declared.len(), 1);
        assert_eq!(declared[0].name, "sensor");
        assert_eq!(declared[0].kind, DeclaredKind::Value);
        assert_eq!(declared[0].type_name.as_deref(), Some("record{count: int}"));
    }

    #[test]
    fn rejects_a_config() {
        let err = Harness::<CountReadings>::open("fast").err().unwrap();
        assert!(err.to_string().contains("takes no config"), "{err}");
    }
}
