//! Event-time windows over keyed state: tumbling, sliding and session
//! windows with an aggregate, allowed lateness, and late records dropped
//! (counted) or sent to a late output. Built on [`crate::time`]; the
//! semantics and the state layout are those of `docs/sdk.md` ("Windows"),
//! shared by the Python and JavaScript SDKs, so a window operator restores
//! from another language's savepoint.
//!
//! ```
//! use weir_sdk::window::{Assigner, Window, WindowConfig, WindowFunction, Windowed};
//! use weir_sdk::{Context, Error, Record};
//!
//! /// Counts records per key in 10-second tumbling windows.
//! struct Count;
//!
//! impl WindowFunction for Count {
//!     type Acc = i64;
//!     fn open(_: &Context) -> Result<(Self, WindowConfig), Error> {
//!         Ok((Count, WindowConfig::new(Assigner::tumbling(10_000))))
//!     }
//!     fn create(&self) -> i64 {
//!         0
//!     }
//!     fn add(&self, acc: i64, _: &Record<'_>) -> Result<i64, Error> {
//!         Ok(acc + 1)
//!     }
//!     fn result(&self, _: &[u8], w: Window, acc: &i64) -> Result<Vec<u8>, Error> {
//!         Ok(format!("{},{acc}", w.start).into_bytes())
//!     }
//! }
//!
//! weir_sdk::export!(Windowed<Count>);
//! ```

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::time::{self, TimeDomain, Timer};
use crate::{Context, Emitter, Error, MapState, Operator, Record, Structured};

/// The keyed map state every window operator keeps its windows in.
pub const WINDOWS_STATE: &str = "windows";

/// The counter of late records dropped.
pub const LATE_DROPPED_COUNTER: &str = "late_records_dropped";

/// A window `[start, end)`, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    /// Its first timestamp.
    pub start: i64,
    /// One past its last timestamp.
    pub end: i64,
}

impl Window {
    /// Its last timestamp, `end - 1`: the watermark that fires it, and the
    /// timestamp of its result.
    pub fn max_timestamp(&self) -> i64 {
        self.end - 1
    }
}

/// How records are assigned to windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assigner {
    /// Fixed windows of `size` ms, starting at multiples of `size` shifted
    /// by `offset`.
    Tumbling {
        /// Window length, ms.
        size: i64,
        /// Shift of the window starts, ms.
        offset: i64,
    },
    /// Windows of `size` ms starting every `slide` ms.
    Sliding {
        /// Window length, ms.
        size: i64,
        /// Distance between window starts, ms.
        slide: i64,
        /// Shift of the window starts, ms.
        offset: i64,
    },
    /// Per key, records closer than `gap` ms form one window.
    Session {
        /// The inactivity that ends a session, ms.
        gap: i64,
    },
}

impl Assigner {
    /// Tumbling windows of `size` ms.
    pub fn tumbling(size: i64) -> Self {
        Assigner::Tumbling { size, offset: 0 }
    }

    /// Sliding windows of `size` ms every `slide` ms.
    pub fn sliding(size: i64, slide: i64) -> Self {
        Assigner::Sliding {
            size,
            slide,
            offset: 0,
        }
    }

    /// Session windows closed by `gap` ms without records.
    pub fn session(gap: i64) -> Self {
        Assigner::Session { gap }
    }

    /// The windows a record at `ts` belongs to (a session record: its own
    /// window, before merging).
    pub fn windows(&self, ts: i64) -> impl Iterator<Item = Window> + use<> {
        // The newest start, the step back to the next older one, the
        // length and how many: computed, not collected, because this runs
        // for every record.
        let (newest, step, size, count) = match *self {
            Assigner::Tumbling { size, offset } => {
                (ts - (ts - offset).rem_euclid(size), size, size, 1)
            }
            Assigner::Sliding {
                size,
                slide,
                offset,
            } => {
                let newest = ts - (ts - offset).rem_euclid(slide);
                // Starts newest, newest - slide, … while start > ts - size.
                let span = newest - ts + size;
                (newest, slide, size, (span + slide - 1) / slide)
            }
            Assigner::Session { gap } => (ts, gap, gap, 1),
        };
        (0..count).map(move |k| {
            let start = newest - k * step;
            Window {
                start,
                end: start + size,
            }
        })
    }

    fn check(&self) -> Result<(), Error> {
        let positive = match *self {
            Assigner::Tumbling { size, .. } => size > 0,
            Assigner::Sliding { size, slide, .. } => size > 0 && slide > 0,
            Assigner::Session { gap } => gap > 0,
        };
        if positive {
            Ok(())
        } else {
            Err(Error::msg(format!(
                "window sizes, slides and gaps must be positive: {self:?}"
            )))
        }
    }
}

/// How a window operator assigns and keeps windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    /// The window assigner.
    pub assigner: Assigner,
    /// How long after a window fired it still takes late records (and
    /// fires again with each), ms.
    pub allowed_lateness: i64,
}

impl WindowConfig {
    /// Windows from `assigner`, no allowed lateness.
    pub fn new(assigner: Assigner) -> Self {
        Self {
            assigner,
            allowed_lateness: 0,
        }
    }

    /// The same, keeping windows `ms` after they fired.
    #[must_use]
    pub fn with_allowed_lateness(mut self, ms: i64) -> Self {
        self.allowed_lateness = ms;
        self
    }
}

/// What a window operator computes: an aggregate over each window's
/// records. [`Windowed`] turns it into an [`Operator`].
pub trait WindowFunction: Sized + 'static {
    /// The accumulator, a state value (so any SDK reads it).
    type Acc: Serialize + DeserializeOwned + Clone + 'static;

    /// Creates the function and its windows' configuration for a subtask.
    ///
    /// # Errors
    /// Bad configuration.
    fn open(ctx: &Context) -> Result<(Self, WindowConfig), Error>;

    /// A new, empty accumulator.
    fn create(&self) -> Self::Acc;

    /// The accumulator with `record` added.
    ///
    /// # Errors
    /// A record the function cannot read: fails the job.
    fn add(&self, acc: Self::Acc, record: &Record<'_>) -> Result<Self::Acc, Error>;

    /// One accumulator of two merged session windows (`a` the older).
    ///
    /// # Errors
    /// The default: only session windows merge, and they need this.
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Result<Self::Acc, Error> {
        let _ = (a, b);
        Err(Error::msg(
            "session windows merge: implement WindowFunction::merge",
        ))
    }

    /// The value emitted for `window` of `key` when it fires.
    ///
    /// # Errors
    /// Anything that should fail the job.
    fn result(&self, key: &[u8], window: Window, acc: &Self::Acc) -> Result<Vec<u8>, Error>;

    /// The key of the record a window's result is emitted as: `None` (the
    /// default) keeps the window's key; another key re-partitions the
    /// results downstream (for example by window, to rank them).
    fn result_key(&self, key: &[u8], window: Window) -> Option<Vec<u8>> {
        let _ = (key, window);
        None
    }

    /// The late output: the value to emit for a record too late for every
    /// window, or `None` (the default) to drop it, counted in the metric
    /// `late_records_dropped`.
    fn late(&self, record: &Record<'_>) -> Option<Vec<u8>> {
        let _ = record;
        None
    }
}

/// A key's windows as stored: start → entry.
type Stored<A> = Vec<(i64, Entry<A>)>;

/// One window's state: its end and its accumulator.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry<A> {
    end: i64,
    acc: A,
}

impl<A: Serialize + DeserializeOwned + Clone + 'static> Structured for Entry<A> {
    fn type_descriptor() -> Option<String> {
        Some("record{end: int, acc: any}".into())
    }
}

/// The operator that runs a [`WindowFunction`]: pass `Windowed<F>` to
/// [`crate::export!`]. Its input must be keyed (a `hash` edge).
pub struct Windowed<F: WindowFunction> {
    f: F,
    config: WindowConfig,
    windows: MapState<i64, Entry<F::Acc>>,
}

impl<F: WindowFunction> Windowed<F> {
    /// The timers of a window: when it fires and, with allowed lateness,
    /// when it is dropped.
    fn timestamps(&self, w: Window) -> impl Iterator<Item = i64> {
        let lateness = self.config.allowed_lateness;
        [
            Some(w.max_timestamp()),
            (lateness > 0).then(|| w.max_timestamp().saturating_add(lateness)),
        ]
        .into_iter()
        .flatten()
    }

    /// Registers a new window's timers; not the firing one when the
    /// watermark already passed it (the window fires at once instead).
    fn register(&self, w: Window, wm: i64) -> Result<(), Error> {
        for ts in self.timestamps(w) {
            if ts > wm || ts != w.max_timestamp() {
                time::register_event_time_timer(ts)?;
            }
        }
        Ok(())
    }

    /// Whether `w` is past its allowed lateness at watermark `wm`.
    fn expired(&self, w: Window, wm: i64) -> bool {
        w.max_timestamp()
            .saturating_add(self.config.allowed_lateness)
            <= wm
    }

    fn fire(&self, key: &[u8], w: Window, acc: &F::Acc, out: &mut Emitter) -> Result<(), Error> {
        let value = self.f.result(key, w, acc)?;
        let result_key = self.f.result_key(key, w);
        out.emit_with_timestamp(
            Some(result_key.as_deref().unwrap_or(key)),
            &value,
            Some(w.max_timestamp()),
        );
        Ok(())
    }

    /// Adds `record` to window `w` (new or stored); fires it at once if
    /// the watermark already passed it.
    fn add(
        &self,
        key: &[u8],
        w: Window,
        acc: Option<F::Acc>,
        record: &Record<'_>,
        wm: i64,
        out: &mut Emitter,
    ) -> Result<(), Error> {
        let new = acc.is_none();
        let acc = self.f.add(acc.unwrap_or_else(|| self.f.create()), record)?;
        if new {
            self.register(w, wm)?;
        }
        if w.max_timestamp() <= wm {
            self.fire(key, w, &acc, out)?;
        }
        self.windows.put(w.start, Entry { end: w.end, acc })
    }

    fn session(
        &self,
        key: &[u8],
        own: Window,
        record: &Record<'_>,
        wm: i64,
        out: &mut Emitter,
    ) -> Result<(), Error> {
        let (mut merged, kept): (Stored<F::Acc>, Stored<F::Acc>) = self
            .windows
            .entries()?
            .into_iter()
            .partition(|(start, e)| *start <= own.end && e.end >= own.start);
        if merged.is_empty() {
            return self.add(key, own, None, record, wm, out);
        }
        merged.sort_by_key(|(start, _)| *start);
        let mut window = own;
        let mut acc: Option<F::Acc> = None;
        let mut old_timers = Vec::new();
        for (start, e) in merged {
            let old = Window { start, end: e.end };
            window.start = window.start.min(start);
            window.end = window.end.max(e.end);
            old_timers.extend(self.timestamps(old));
            self.windows.remove(&start)?;
            acc = Some(match acc {
                None => e.acc,
                Some(a) => self.f.merge(a, e.acc)?,
            });
        }
        // Timers are per key and timestamp: keep those another window of
        // the key (or the merged one) still needs.
        let mut needed: Vec<i64> = kept
            .iter()
            .flat_map(|(start, e)| {
                self.timestamps(Window {
                    start: *start,
                    end: e.end,
                })
            })
            .collect();
        needed.extend(self.timestamps(window));
        for ts in old_timers {
            if !needed.contains(&ts) {
                time::delete_event_time_timer(ts)?;
            }
        }
        // The merged window is new: its timers are registered afresh.
        let acc = self
            .f
            .add(acc.expect("invariant: at least one window merged"), record)?;
        self.register(window, wm)?;
        if window.max_timestamp() <= wm {
            self.fire(key, window, &acc, out)?;
        }
        self.windows.put(
            window.start,
            Entry {
                end: window.end,
                acc,
            },
        )
    }

    fn late(&self, record: &Record<'_>, out: &mut Emitter) {
        match self.f.late(record) {
            Some(value) => out.emit_with_timestamp(record.key, &value, record.timestamp),
            None => time::counter_add(LATE_DROPPED_COUNTER, 1),
        }
    }
}

impl<F: WindowFunction> Operator for Windowed<F> {
    fn open(ctx: &Context) -> Result<Self, Error> {
        let (f, config) = F::open(ctx)?;
        config.assigner.check()?;
        if config.allowed_lateness < 0 {
            return Err(Error::msg("allowed lateness must not be negative"));
        }
        Ok(Self {
            f,
            config,
            windows: MapState::new(WINDOWS_STATE)?,
        })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
        let ts = record.timestamp.ok_or_else(|| {
            Error::msg("a window operator needs event timestamps: the record has none")
        })?;
        let key = record.key.ok_or_else(|| {
            Error::msg("a window operator needs keyed input: the record has no key")
        })?;
        let wm = time::current_watermark();
        if let Assigner::Session { gap } = self.config.assigner {
            let own = Window {
                start: ts,
                end: ts.saturating_add(gap),
            };
            if self.expired(own, wm) {
                self.late(&record, out);
                return Ok(());
            }
            return self.session(key, own, &record, wm, out);
        }
        let mut taken = false;
        for w in self.config.assigner.windows(ts) {
            if self.expired(w, wm) {
                continue;
            }
            taken = true;
            let acc = self.windows.get(&w.start)?.map(|e| e.acc);
            self.add(key, w, acc, &record, wm, out)?;
        }
        if !taken {
            self.late(&record, out);
        }
        Ok(())
    }

    fn on_timer(&mut self, timer: Timer<'_>, out: &mut Emitter) -> Result<(), Error> {
        if timer.domain != TimeDomain::EventTime {
            return Ok(());
        }
        let t = timer.timestamp;
        let lateness = self.config.allowed_lateness;
        let mut windows: Stored<F::Acc> = match self.config.assigner {
            Assigner::Session { .. } => self.windows.entries()?,
            Assigner::Tumbling { size, .. } | Assigner::Sliding { size, .. } => {
                // The window this timer fires, and the one it drops.
                let mut starts = vec![t + 1 - size];
                if lateness > 0 {
                    starts.push(t + 1 - lateness - size);
                }
                let mut found = Vec::new();
                for start in starts {
                    if let Some(e) = self.windows.get(&start)? {
                        found.push((start, e));
                    }
                }
                found
            }
        };
        windows.sort_by_key(|(start, _)| *start);
        for (start, e) in &windows {
            let w = Window {
                start: *start,
                end: e.end,
            };
            if w.max_timestamp() == t {
                self.fire(timer.key, w, &e.acc, out)?;
                if lateness == 0 {
                    self.windows.remove(start)?;
                }
            }
        }
        if lateness > 0 {
            for (start, e) in &windows {
                if (e.end - 1).saturating_add(lateness) == t {
                    self.windows.remove(start)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::testing::{Harness, TestRecord};

    /// Counts per key and window; config `"<kind> <a> [<b>] [lateness=<ms>] [late]"`.
    struct Count {
        late_output: bool,
    }

    impl WindowFunction for Count {
        type Acc = i64;
        fn open(ctx: &Context) -> Result<(Self, WindowConfig), Error> {
            let words: Vec<&str> = ctx.config().split_whitespace().collect();
            let n = |i: usize| words[i].parse::<i64>().unwrap();
            let assigner = match words[0] {
                "tumbling" => Assigner::tumbling(n(1)),
                "sliding" => Assigner::sliding(n(1), n(2)),
                _ => Assigner::session(n(1)),
            };
            let lateness = words
                .iter()
                .find_map(|w| w.strip_prefix("lateness="))
                .map_or(0, |v| v.parse().unwrap());
            Ok((
                Count {
                    late_output: words.contains(&"late"),
                },
                WindowConfig::new(assigner).with_allowed_lateness(lateness),
            ))
        }
        fn create(&self) -> i64 {
            0
        }
        fn add(&self, acc: i64, _: &Record<'_>) -> Result<i64, Error> {
            Ok(acc + 1)
        }
        fn merge(&self, a: i64, b: i64) -> Result<i64, Error> {
            Ok(a + b)
        }
        fn result(&self, key: &[u8], w: Window, acc: &i64) -> Result<Vec<u8>, Error> {
            Ok(format!(
                "{},{},{},{acc}",
                String::from_utf8_lossy(key),
                w.start,
                w.end
            )
            .into_bytes())
        }
        fn late(&self, record: &Record<'_>) -> Option<Vec<u8>> {
            self.late_output
                .then(|| format!("late {}", record.timestamp.unwrap()).into_bytes())
        }
    }

    fn at(key: &str, ts: i64) -> TestRecord {
        TestRecord::keyed(key, "x").at(ts)
    }

    fn values(records: Vec<TestRecord>) -> Vec<String> {
        records
            .into_iter()
            .map(|r| String::from_utf8(r.value).unwrap())
            .collect()
    }

    #[test]
    fn tumbling_windows_fire_once_the_watermark_passes_their_end() {
        let mut h = Harness::<Windowed<Count>>::open("tumbling 10").unwrap();
        h.process(&[at("a", 1), at("a", 9), at("b", 10), at("a", -1)])
            .unwrap();
        assert_eq!(values(h.watermark(8).unwrap()), ["a,-10,0,1"]);
        let fired = h.watermark(9).unwrap();
        assert_eq!(values(fired.clone()), ["a,0,10,2"]);
        assert_eq!(fired[0].timestamp, Some(9), "a result is stamped end - 1");
        assert_eq!(values(h.watermark(100).unwrap()), ["b,10,20,1"]);
        h.snapshot(1).unwrap();
        assert!(
            h.host_map(WINDOWS_STATE, b"a").is_empty(),
            "fired windows are gone"
        );
        assert!(h.timers(TimeDomain::EventTime).is_empty());
    }

    #[test]
    fn sliding_windows_are_every_start_a_slide_apart_that_still_holds_the_record() {
        for (size, slide, offset) in [(10, 5, 0), (10, 3, 0), (10, 10, 2), (7, 2, 1), (5, 7, 0)] {
            let a = Assigner::Sliding {
                size,
                slide,
                offset,
            };
            for ts in -30..30 {
                let got: Vec<i64> = a.windows(ts).map(|w| w.start).collect();
                let mut want = Vec::new();
                let mut start = ts - (ts - offset).rem_euclid(slide);
                while start > ts - size {
                    want.push(start);
                    start -= slide;
                }
                assert_eq!(
                    got, want,
                    "size {size} slide {slide} offset {offset} at {ts}"
                );
                assert!(a.windows(ts).all(|w| w.start <= ts && ts < w.end));
            }
        }
    }

    #[test]
    fn a_batch_reads_the_watermark_from_the_host_once() {
        let mut h = Harness::<Windowed<Count>>::open("tumbling 10").unwrap();
        let batch: Vec<TestRecord> = (0..100).map(|ts| at("k", ts)).collect();
        h.process(&batch).unwrap();
        assert_eq!(h.watermark_reads(), 1);
        h.watermark(50).unwrap();
        h.process(&[at("k", 60), at("k", 61)]).unwrap();
        assert!(h.watermark_reads() <= 4, "once per hook call");
    }

    #[test]
    fn sliding_windows_hold_a_record_in_size_over_slide_windows() {
        let mut h = Harness::<Windowed<Count>>::open("sliding 10 5").unwrap();
        h.process(&[at("k", 7)]).unwrap();
        assert_eq!(values(h.watermark(20).unwrap()), ["k,0,10,1", "k,5,15,1"]);
    }

    #[test]
    fn session_windows_merge_records_closer_than_the_gap() {
        let mut h = Harness::<Windowed<Count>>::open("session 5").unwrap();
        h.process(&[at("k", 0), at("k", 10), at("k", 5), at("j", 2)])
            .unwrap();
        // 0..5 and 10..15 are bridged by 5..10, which touches both.
        assert_eq!(h.timers(TimeDomain::EventTime).len(), 2);
        assert_eq!(values(h.watermark(100).unwrap()), ["j,2,7,1", "k,0,15,3"]);
    }

    #[test]
    fn allowed_lateness_refires_and_then_drops_the_window() {
        let mut h = Harness::<Windowed<Count>>::open("tumbling 10 lateness=5").unwrap();
        h.process(&[at("k", 3)]).unwrap();
        assert_eq!(values(h.watermark(9).unwrap()), ["k,0,10,1"]);
        // Late but allowed: fires again at once with the update.
        assert_eq!(values(h.process(&[at("k", 4)]).unwrap()), ["k,0,10,2"]);
        assert_eq!(values(h.watermark(14).unwrap()), Vec::<String>::new());
        // Past the lateness: dropped and counted.
        assert_eq!(
            values(h.process(&[at("k", 5)]).unwrap()),
            Vec::<String>::new()
        );
        assert_eq!(h.counters()[LATE_DROPPED_COUNTER], 1);
        h.snapshot(1).unwrap();
        assert!(h.host_map(WINDOWS_STATE, b"k").is_empty());
    }

    #[test]
    fn late_records_go_to_the_late_output_when_one_is_given() {
        let mut h = Harness::<Windowed<Count>>::open("tumbling 10 late").unwrap();
        h.watermark(50).unwrap();
        let out = h.process(&[at("k", 12)]).unwrap();
        assert_eq!(values(out.clone()), ["late 12"]);
        assert_eq!(out[0].timestamp, Some(12));
        assert!(h.counters().is_empty());
    }

    #[test]
    fn a_record_without_a_timestamp_fails() {
        let mut h = Harness::<Windowed<Count>>::open("tumbling 10").unwrap();
        let e = h.process(&[TestRecord::keyed("k", "x")]).unwrap_err();
        assert!(e.to_string().contains("event timestamps"), "{e}");
    }
}
