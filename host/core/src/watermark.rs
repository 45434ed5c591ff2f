//! Event-time watermarks: how a source derives them from its records'
//! timestamps, and how a subtask combines its inputs' into its own. Pure
//! state machines with time injected; the runtime carries them out.
//!
//! As in Flink, a watermark `w` says no record with a timestamp at or
//! before `w` is expected any more. A source's watermark is its greatest
//! timestamp seen minus the allowed out-of-orderness minus one
//! (`BoundedOutOfOrdernessWatermarks`), taken per split and combined as the
//! minimum over the splits that are not idle. A subtask's watermark is the
//! minimum over its input channels that are not idle ([`WatermarkValve`],
//! Flink's `StatusWatermarkValve`); an ended channel counts as `+∞`.

use std::time::{Duration, Instant};

/// A watermark in milliseconds since the epoch.
pub type Watermark = i64;

/// The watermark that ends event time: every timer fires.
pub const END_OF_TIME: Watermark = i64::MAX;

/// What flows between subtasks about event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatermarkEvent {
    /// The sender's watermark advanced to this.
    At(Watermark),
    /// The sender has no data to send for now (all its splits or inputs are
    /// idle): it holds back no one's watermark until it sends one again.
    Idle,
}

/// How a source generates watermarks (`[sources.watermarks]` in a job
/// file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkStrategy {
    /// How far behind the greatest timestamp seen a record may still
    /// arrive.
    pub out_of_orderness: Duration,
    /// A split that returned no record for this long stops holding the
    /// watermark back until it returns one again; `None`: never.
    pub idle_timeout: Option<Duration>,
}

/// One split's part of a source's watermark.
#[derive(Debug, Clone)]
struct SplitClock {
    /// The greatest timestamp the split returned, if any.
    max_timestamp: Option<i64>,
    /// When it last returned a record (or opened).
    last_record: Instant,
    finished: bool,
}

/// The watermark of one source subtask over its splits.
#[derive(Debug, Clone)]
pub struct SourceWatermarks {
    strategy: WatermarkStrategy,
    splits: Vec<SplitClock>,
    /// The greatest watermark sent.
    high: Option<Watermark>,
    /// Whether idleness was the last status sent.
    idle: bool,
}

impl SourceWatermarks {
    /// Watermarks over `splits` splits (indexed as the source's), all
    /// active and without timestamps at `now`.
    pub fn new(strategy: WatermarkStrategy, splits: usize, now: Instant) -> Self {
        Self {
            strategy,
            splits: vec![
                SplitClock {
                    max_timestamp: None,
                    last_record: now,
                    finished: false,
                };
                splits
            ],
            high: None,
            idle: false,
        }
    }

    /// Split `split` returned records at `now`, the greatest of whose
    /// timestamps is `max_timestamp` (none if they had none).
    pub fn on_records(&mut self, split: usize, max_timestamp: Option<i64>, now: Instant) {
        if let Some(s) = self.splits.get_mut(split) {
            s.last_record = now;
            s.max_timestamp = s.max_timestamp.max(max_timestamp);
        }
    }

    /// Split `split` ended: it holds nothing back any more.
    pub fn on_finished(&mut self, split: usize) {
        if let Some(s) = self.splits.get_mut(split) {
            s.finished = true;
        }
    }

    /// The subtask's watermark status at `now`: the minimum over the
    /// active splits of `max timestamp - out-of-orderness - 1` (a split
    /// without a timestamp yet holds it at `i64::MIN`), [`WatermarkEvent::Idle`]
    /// when every unfinished split is idle, `END_OF_TIME` when all ended.
    pub fn current(&self, now: Instant) -> WatermarkEvent {
        let lag = i64::try_from(self.strategy.out_of_orderness.as_millis()).unwrap_or(i64::MAX);
        let mut min: Option<Watermark> = None;
        let mut unfinished = false;
        for s in self.splits.iter().filter(|s| !s.finished) {
            unfinished = true;
            let idle = self
                .strategy
                .idle_timeout
                .is_some_and(|t| now.saturating_duration_since(s.last_record) >= t);
            if idle {
                continue;
            }
            let w = s
                .max_timestamp
                .map_or(i64::MIN, |t| t.saturating_sub(lag).saturating_sub(1));
            min = Some(min.map_or(w, |m| m.min(w)));
        }
        match (min, unfinished) {
            (Some(w), _) => WatermarkEvent::At(w),
            (None, true) => WatermarkEvent::Idle,
            (None, false) => WatermarkEvent::At(END_OF_TIME),
        }
    }

    /// What to send downstream at `now`, if anything changed: a
    /// watermark only when it advanced past the greatest one sent
    /// (watermarks never go back), idleness when it began, and the last
    /// watermark again when an idle subtask becomes active (so the
    /// receiver counts it again).
    pub fn poll(&mut self, now: Instant) -> Option<WatermarkEvent> {
        match self.current(now) {
            WatermarkEvent::Idle if self.idle => None,
            WatermarkEvent::Idle => {
                self.idle = true;
                Some(WatermarkEvent::Idle)
            }
            WatermarkEvent::At(w) if self.high.is_none_or(|h| w > h) && w > i64::MIN => {
                self.high = Some(w);
                self.idle = false;
                Some(WatermarkEvent::At(w))
            }
            WatermarkEvent::At(_) if self.idle => {
                self.idle = false;
                Some(WatermarkEvent::At(self.high.unwrap_or(i64::MIN)))
            }
            WatermarkEvent::At(_) => None,
        }
    }
}

/// One input channel's part of a subtask's watermark.
#[derive(Debug, Clone, Copy)]
struct ChannelClock {
    watermark: Watermark,
    idle: bool,
    /// Whether its watermark counts: it reached the valve's output since
    /// it last became active (a channel back from idleness behind the
    /// others must not pull the output back).
    aligned: bool,
}

/// A subtask's watermark over its input channels: the minimum over the
/// channels that are active and aligned. Pure; the gate feeds it.
#[derive(Debug, Clone)]
pub struct WatermarkValve {
    channels: Vec<ChannelClock>,
    current: Watermark,
    idle: bool,
}

impl WatermarkValve {
    /// A valve over `channels` inputs, each active at `i64::MIN`.
    pub fn new(channels: usize) -> Self {
        Self {
            channels: vec![
                ChannelClock {
                    watermark: i64::MIN,
                    idle: false,
                    aligned: true,
                };
                channels
            ],
            current: i64::MIN,
            idle: false,
        }
    }

    /// The subtask's current watermark.
    pub fn current(&self) -> Watermark {
        self.current
    }

    /// Channel `ch` sent `event`; returns what the subtask's own status
    /// became, if it changed.
    pub fn on_event(&mut self, ch: usize, event: WatermarkEvent) -> Option<WatermarkEvent> {
        let current = self.current;
        let c = self.channels.get_mut(ch)?;
        match event {
            WatermarkEvent::At(w) => {
                c.idle = false;
                c.watermark = c.watermark.max(w);
                if c.watermark >= current {
                    c.aligned = true;
                }
            }
            WatermarkEvent::Idle => {
                c.idle = true;
                c.aligned = false;
            }
        }
        self.update()
    }

    /// Channel `ch` ended: it holds nothing back any more.
    pub fn on_ended(&mut self, ch: usize) -> Option<WatermarkEvent> {
        self.on_event(ch, WatermarkEvent::At(END_OF_TIME))
    }

    fn update(&mut self) -> Option<WatermarkEvent> {
        let min = self
            .channels
            .iter()
            .filter(|c| !c.idle && c.aligned)
            .map(|c| c.watermark)
            .min();
        let all_idle = self.channels.iter().all(|c| c.idle);
        if all_idle {
            if self.idle {
                return None;
            }
            self.idle = true;
            return Some(WatermarkEvent::Idle);
        }
        let was_idle = std::mem::replace(&mut self.idle, false);
        match min {
            Some(m) if m > self.current => {
                self.current = m;
                Some(WatermarkEvent::At(m))
            }
            // Active again without an advance: say so with the watermark
            // it already had.
            _ if was_idle => Some(WatermarkEvent::At(self.current)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(w: Watermark) -> Option<WatermarkEvent> {
        Some(WatermarkEvent::At(w))
    }

    #[test]
    fn the_valve_emits_the_minimum_over_its_inputs_and_only_advances() {
        let mut v = WatermarkValve::new(2);
        assert_eq!(
            v.on_event(0, WatermarkEvent::At(10)),
            None,
            "input 1 still at MIN"
        );
        assert_eq!(v.on_event(1, WatermarkEvent::At(5)), at(5));
        assert_eq!(v.on_event(1, WatermarkEvent::At(20)), at(10));
        assert_eq!(v.on_event(0, WatermarkEvent::At(8)), None, "never back");
        assert_eq!(v.on_event(0, WatermarkEvent::At(30)), at(20));
        assert_eq!(v.current(), 20);
    }

    #[test]
    fn an_idle_input_does_not_hold_the_others_back_and_rejoins_once_caught_up() {
        let mut v = WatermarkValve::new(3);
        v.on_event(0, WatermarkEvent::At(10));
        v.on_event(1, WatermarkEvent::At(10));
        assert_eq!(v.on_event(2, WatermarkEvent::Idle), at(10));
        assert_eq!(v.on_event(0, WatermarkEvent::At(50)), None);
        assert_eq!(v.on_event(1, WatermarkEvent::At(40)), at(40));
        // Back from idleness behind the others: it does not pull the output
        // back, and does not count until it reaches it.
        assert_eq!(v.on_event(2, WatermarkEvent::At(15)), None);
        assert_eq!(v.on_event(1, WatermarkEvent::At(60)), at(50));
        assert_eq!(
            v.on_event(2, WatermarkEvent::At(52)),
            None,
            "caught up: counts now"
        );
        assert_eq!(v.on_event(0, WatermarkEvent::At(70)), at(52));
    }

    #[test]
    fn all_inputs_idle_is_idle_and_activity_is_announced_once() {
        let mut v = WatermarkValve::new(2);
        v.on_event(0, WatermarkEvent::At(10));
        v.on_event(1, WatermarkEvent::At(12));
        assert_eq!(v.on_event(0, WatermarkEvent::Idle), at(12));
        assert_eq!(
            v.on_event(1, WatermarkEvent::Idle),
            Some(WatermarkEvent::Idle)
        );
        assert_eq!(v.on_event(0, WatermarkEvent::Idle), None);
        assert_eq!(
            v.on_event(1, WatermarkEvent::At(11)),
            at(12),
            "active again"
        );
        assert_eq!(v.on_event(1, WatermarkEvent::At(20)), at(20));
    }

    #[test]
    fn an_ended_input_is_the_end_of_time() {
        let mut v = WatermarkValve::new(2);
        v.on_event(0, WatermarkEvent::At(7));
        assert_eq!(v.on_ended(1), at(7));
        assert_eq!(v.on_ended(0), at(END_OF_TIME));
    }

    fn strategy(lag_ms: u64, idle_ms: Option<u64>) -> WatermarkStrategy {
        WatermarkStrategy {
            out_of_orderness: Duration::from_millis(lag_ms),
            idle_timeout: idle_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn a_source_lags_its_slowest_split_by_the_out_of_orderness() {
        let t0 = Instant::now();
        let mut s = SourceWatermarks::new(strategy(100, None), 2, t0);
        s.on_records(0, Some(1_000), t0);
        assert_eq!(s.poll(t0), None, "split 1 has no timestamp yet");
        s.on_records(1, Some(500), t0);
        assert_eq!(s.poll(t0), at(399));
        s.on_records(1, Some(400), t0);
        assert_eq!(s.poll(t0), None, "a split's max never goes back");
        s.on_records(1, Some(2_000), t0);
        assert_eq!(s.poll(t0), at(899));
        s.on_finished(0);
        assert_eq!(s.poll(t0), at(1_899));
        s.on_finished(1);
        assert_eq!(s.poll(t0), at(END_OF_TIME));
    }

    #[test]
    fn an_idle_split_stops_holding_back_and_a_wholly_idle_source_says_so() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(600);
        let mut s = SourceWatermarks::new(strategy(0, Some(500)), 2, t0);
        s.on_records(0, Some(100), t0);
        assert_eq!(s.poll(t0), None);
        s.on_records(0, Some(200), later);
        assert_eq!(s.poll(later), at(199), "split 1 went idle");
        let much_later = later + Duration::from_millis(600);
        assert_eq!(s.poll(much_later), Some(WatermarkEvent::Idle));
        assert_eq!(s.poll(much_later), None);
        s.on_records(1, Some(150), much_later);
        assert_eq!(s.poll(much_later), at(199), "active again, not back");
        s.on_records(1, Some(300), much_later);
        assert_eq!(s.poll(much_later), at(299), "split 0 is idle: 1 leads");
    }
}
