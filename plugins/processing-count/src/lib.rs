//! Counts records per key and reports each key's count on a
//! processing-time timer: the first record of a key since its last report
//! registers a timer `every` ms (the config, default 200) after the host's
//! clock, which emits `timer,<count>` and starts the count over.
//! Processing-time timers do not fire once the input ended (as in Flink),
//! so each key also has an event-time timer at the end of time, which the
//! final watermark fires: it reports what is left as `end,<count>`.

use weir_sdk::time::{
    TimeDomain, current_processing_time, register_event_time_timer, register_processing_time_timer,
};
use weir_sdk::{Context, Emitter, Error, Operator, Record, Timer, ValueState};

/// Counts per key, reported by processing-time timers.
pub struct ProcessingCount {
    every: i64,
    count: ValueState<i64>,
}

impl Operator for ProcessingCount {
    fn open(ctx: &Context) -> Result<Self, Error> {
        let every = match ctx.config().trim() {
            "" => 200,
            n => n
                .parse()
                .map_err(|_| Error::msg(format!("processing-count: `{n}` is not milliseconds")))?,
        };
        Ok(Self {
            every,
            count: ValueState::new("count")?,
        })
    }

    fn process(&mut self, _: Record<'_>, _: &mut Emitter) -> Result<(), Error> {
        let count = self.count.get()?.unwrap_or(0);
        if count == 0 {
            register_processing_time_timer(current_processing_time() + self.every)?;
            register_event_time_timer(i64::MAX)?;
        }
        self.count.set(count + 1)
    }

    fn on_timer(&mut self, timer: Timer<'_>, out: &mut Emitter) -> Result<(), Error> {
        let count = self.count.get()?.unwrap_or(0);
        if count > 0 {
            let why = match timer.domain {
                TimeDomain::ProcessingTime => "timer",
                TimeDomain::EventTime => "end",
            };
            out.emit_with_timestamp(Some(timer.key), format!("{why},{count}").as_bytes(), None);
            self.count.clear()?;
        }
        Ok(())
    }
}

weir_sdk::export!(ProcessingCount);
