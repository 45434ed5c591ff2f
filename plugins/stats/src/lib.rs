//! Per-key purchase statistics, the stateful example that exists in Rust,
//! Python and JavaScript with the same state, so any of them continues
//! from the state another wrote.
//!
//! Input: records keyed by user whose value is `ITEM AMOUNT` (the job keys
//! lines with `tokenize` in `key-first` mode). State per user:
//! - value state `stats`: a record `{count: int, total: float, last: text,
//!   raw: bytes}` (the last record's value, as bytes);
//! - map state `items`: item → how many times it was bought;
//! - list state `recent`: the last three items, oldest first.
//!
//! For every record it emits the user and
//! `count=N total=T last=ITEM raw=HEX items=A:N,B:N recent=X,Y,Z`, with the
//! total to one decimal and the items sorted by name. Config: none.

use serde::{Deserialize, Serialize};
use weir_sdk::{
    Context, Describe, Emitter, Error, ListState, MapState, Operator, Record, Structured,
    ValueState,
};

/// The running totals of one user.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Records seen.
    pub count: i64,
    /// Sum of the amounts.
    pub total: f64,
    /// The last item.
    pub last: String,
    /// The last record's value, verbatim.
    #[serde(with = "serde_bytes")]
    pub raw: Vec<u8>,
}

impl Structured for Stats {
    fn type_descriptor() -> Option<String> {
        // `raw` is stored as bytes (`serde_bytes`), not as `list<uint>`.
        Some(weir_sdk::declare::record(&[
            ("count", i64::describe()),
            ("total", f64::describe()),
            ("last", String::describe()),
            ("raw", "bytes".to_owned()),
        ]))
    }
}

/// How many recent items the list state keeps.
const RECENT: usize = 3;

/// The operator's state handles.
pub struct UserStats {
    stats: ValueState<Stats>,
    items: MapState<String, i64>,
    recent: ListState<String>,
}

impl Operator for UserStats {
    fn open(ctx: &Context) -> Result<Self, Error> {
        if !ctx.config().trim().is_empty() {
            return Err(format!("stats: takes no config, got {:?}", ctx.config()).into());
        }
        Ok(Self {
            stats: ValueState::new("stats")?,
            items: MapState::new("items")?,
            recent: ListState::new("recent")?,
        })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
        let line = record.value_str_lossy();
        let (item, amount) = line
            .split_once(' ')
            .ok_or_else(|| format!("stats: expected `ITEM AMOUNT`, got {line:?}"))?;
        let amount: f64 = amount
            .trim()
            .parse()
            .map_err(|e| format!("stats: bad amount in {line:?}: {e}"))?;

        let mut stats = self.stats.get()?.unwrap_or_default();
        stats.count += 1;
        stats.total += amount;
        item.clone_into(&mut stats.last);
        record.value.clone_into(&mut stats.raw);
        self.stats.set(stats.clone())?;

        let bought = self.items.get(&item.to_owned())?.unwrap_or(0) + 1;
        self.items.put(item.to_owned(), bought)?;

        let mut recent = self.recent.get()?;
        recent.push(item.to_owned());
        if recent.len() > RECENT {
            recent.drain(..recent.len() - RECENT);
        }
        self.recent.set(recent.clone())?;

        let mut items = self.items.entries()?;
        items.sort();
        let items: Vec<String> = items.iter().map(|(k, n)| format!("{k}:{n}")).collect();
        let raw: String = stats.raw.iter().map(|b| format!("{b:02x}")).collect();
        let summary = format!(
            "count={} total={:.1} last={} raw={raw} items={} recent={}",
            stats.count,
            stats.total,
            stats.last,
            items.join(","),
            recent.join(","),
        );
        out.emit(record.key, summary.as_bytes());
        Ok(())
    }
}

weir_sdk::export!(UserStats);

#[cfg(test)]
mod tests {
    use weir_sdk::Value;
    use weir_sdk::testing::{Harness, TestRecord};

    use super::UserStats;

    #[test]
    fn keeps_a_record_a_map_and_a_list_per_user() {
        let mut h = Harness::<UserStats>::open("").unwrap();
        let input: Vec<_> = [
            ("ann", "apple 1.5"),
            ("bob", "pear 2"),
            ("ann", "fig 0.5"),
            ("ann", "apple 1"),
            ("ann", "kiwi 3"),
        ]
        .iter()
        .map(|(k, v)| TestRecord::keyed(k, v))
        .collect();
        let out = h.process(&input).unwrap();
        let last = String::from_utf8(out[4].value.clone()).unwrap();
        assert_eq!(
            last,
            "count=4 total=6.0 last=kiwi raw=6b6977692033 items=apple:2,fig:1,kiwi:1 recent=fig,apple,kiwi"
        );
        h.snapshot(1).unwrap();
        assert_eq!(
            h.host_value("stats", b"bob"),
            Some(Value::Record(vec![
                ("count".into(), Value::Int(1)),
                ("total".into(), Value::Float(2.0)),
                ("last".into(), Value::Text("pear".into())),
                ("raw".into(), Value::Bytes(b"pear 2".to_vec())),
            ]))
        );
    }

    #[test]
    fn a_bad_amount_names_the_line() {
        let mut h = Harness::<UserStats>::open("").unwrap();
        let err = h
            .process(&[TestRecord::keyed("ann", "apple lots")])
            .unwrap_err();
        assert!(
            err.to_string().contains("bad amount in \"apple lots\""),
            "{err}"
        );
    }
}
