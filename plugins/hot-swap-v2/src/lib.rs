//! Version 2 of the hot-swap example (`examples/hot-swap/`): counts the
//! readings of each sensor, as version 1 did, and keeps their running
//! average.
//!
//! It runs under version 1's operator uid, restored from a savepoint that
//! version 1 wrote, so it reads version 1's state: the value state
//! `sensor` was `{count: int}` and is now `{count: int, total: float,
//! averaged: int}`. The two new fields have serde defaults, so a sensor
//! version 1 counted reads as `total = 0.0, averaged = 0` (docs/sdk.md,
//! "Schema evolution"): its count continues, and its average covers the
//! readings seen since the upgrade.
//!
//! Input: records keyed by sensor whose value is a reading, a number
//! optionally prefixed with `w` (`datagen` words such as `w7`, keyed with
//! `tokenize` in `key-first` mode). For every record it emits the sensor
//! and `count=N mean=M.M`. Config: none.

use serde::{Deserialize, Serialize};
use weir_sdk::{Context, Describe, Emitter, Error, Operator, Record, Structured, ValueState};

/// What version 2 keeps per sensor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sensor {
    /// Readings seen, by version 1 and then by version 2.
    pub count: i64,
    /// Sum of the readings version 2 has seen.
    #[serde(default)]
    pub total: f64,
    /// How many readings `total` sums.
    #[serde(default)]
    pub averaged: i64,
}

impl Structured for Sensor {
    fn type_descriptor() -> Option<String> {
        Some(weir_sdk::declare::record(&[
            ("count", i64::describe()),
            ("total", f64::describe()),
            ("averaged", i64::describe()),
        ]))
    }
}

/// Counts readings per sensor and averages them, in the value state
/// `sensor`.
pub struct AverageReadings {
    sensor: ValueState<Sensor>,
}

/// The number in a reading such as `w7` or `21.5`.
fn parse_reading(value: &str) -> Option<f64> {
    let value = value.trim();
    let number = value.strip_prefix('w').unwrap_or(value);
    number.parse().ok().filter(|n: &f64| n.is_finite())
}

impl Operator for AverageReadings {
    fn open(ctx: &Context) -> Result<Self, Error> {
        if !ctx.config().trim().is_empty() {
            return Err(format!("hot-swap-v2: takes no config, got {:?}", ctx.config()).into());
        }
        Ok(Self {
            sensor: ValueState::new("sensor")?,
        })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
        let value = record.value_str_lossy();
        let reading = parse_reading(&value).ok_or_else(|| {
            format!("hot-swap-v2: expected a reading such as `w7` or `21.5`, got {value:?}")
        })?;
        let mut sensor = self.sensor.get()?.unwrap_or_default();
        sensor.count += 1;
        sensor.total += reading;
        sensor.averaged += 1;
        // `averaged` is at least 1 here, so the mean is defined.
        let mean = sensor.total / sensor.averaged as f64;
        out.emit(
            record.key,
            format!("count={} mean={mean:.1}", sensor.count).as_bytes(),
        );
        self.sensor.set(sensor)?;
        Ok(())
    }
}

weir_sdk::export!(AverageReadings);

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use weir_sdk::testing::{Harness, TestRecord};
    use weir_sdk::{StateValue, Structured, Value};

    use super::{AverageReadings, parse_reading};

    /// Version 1's state type, as `plugins/hot-swap-v1` defines it (a copy:
    /// both plugins export a component, so one cannot link the other).
    #[derive(Clone, Serialize, Deserialize)]
    struct SensorV1 {
        count: i64,
    }
    impl Structured for SensorV1 {}

    #[test]
    fn counts_and_averages_readings_per_sensor() {
        let mut h = Harness::<AverageReadings>::open("").unwrap();
        let input: Vec<_> = [("w1", "w7"), ("w2", "w3"), ("w1", "w0"), ("w1", "w8")]
            .iter()
            .map(|(k, v)| TestRecord::keyed(k, v))
            .collect();
        let out = h.process(&input).unwrap();
        assert_eq!(
            out,
            vec![
                TestRecord::keyed("w1", "count=1 mean=7.0"),
                TestRecord::keyed("w2", "count=1 mean=3.0"),
                TestRecord::keyed("w1", "count=2 mean=3.5"),
                TestRecord::keyed("w1", "count=3 mean=5.0"),
            ]
        );
    }

    /// The schema evolution the example demonstrates: a sensor version 1
    /// counted (restored from its savepoint) keeps its count, and its
    /// average starts with the first reading version 2 sees.
    #[test]
    fn continues_the_count_version_1_wrote() {
        let written_by_v1 = SensorV1 { count: 41 }.to_value().to_owned_value();
        // The same record `plugins/hot-swap-v1`'s own test finds in its host.
        assert_eq!(
            written_by_v1,
            Value::Record(vec![("count".into(), Value::Int(41))])
        );
        let mut h = Harness::<AverageReadings>::open("").unwrap();
        h.put_host_value("sensor", b"w3", written_by_v1);
        let out = h
            .process(&[
                TestRecord::keyed("w3", "w5"),
                TestRecord::keyed("w9", "w2"),
                TestRecord::keyed("w3", "w8"),
            ])
            .unwrap();
        assert_eq!(
            out,
            vec![
                TestRecord::keyed("w3", "count=42 mean=5.0"),
                TestRecord::keyed("w9", "count=1 mean=2.0"),
                TestRecord::keyed("w3", "count=43 mean=6.5"),
            ]
        );
        h.snapshot(1).unwrap();
        assert_eq!(
            h.host_value("sensor", b"w3"),
            Some(Value::Record(vec![
                ("count".into(), Value::Int(43)),
                ("total".into(), Value::Float(13.0)),
                ("averaged".into(), Value::Int(2)),
            ]))
        );
    }

    /// Rolling back works too: version 1's type reads what version 2
    /// wrote, ignoring the fields it does not know.
    #[test]
    fn version_1_reads_what_version_2_wrote() {
        let mut h = Harness::<AverageReadings>::open("").unwrap();
        h.process(&[TestRecord::keyed("w3", "w5")]).unwrap();
        h.snapshot(1).unwrap();
        let stored = h.host_value("sensor", b"w3").unwrap();
        let v1 = SensorV1::from_value(stored).expect("version 1 reads version 2's record");
        assert_eq!(v1.count, 1);
    }

    #[test]
    fn declares_the_evolved_record() {
        let h = Harness::<AverageReadings>::open("").unwrap();
        let declared = h.declared_states();
        assert_eq!(declared.len(), 1);
        assert_eq!(declared[0].name, "sensor");
        assert_eq!(
            declared[0].type_name.as_deref(),
            Some("record{count: int, total: float, averaged: int}")
        );
    }

    #[test]
    fn reads_datagen_words_and_plain_numbers() {
        assert_eq!(parse_reading("w7"), Some(7.0));
        assert_eq!(parse_reading(" 21.5 "), Some(21.5));
        assert_eq!(parse_reading("w"), None);
        assert_eq!(parse_reading("NaN"), None);
    }

    #[test]
    fn a_bad_reading_names_the_value() {
        let mut h = Harness::<AverageReadings>::open("").unwrap();
        let err = h.process(&[TestRecord::keyed("w1", "warm")]).unwrap_err();
        assert!(err.to_string().contains("got \"warm\""), "{err}");
    }
}
