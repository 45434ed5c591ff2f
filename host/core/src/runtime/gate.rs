//! A subtask's inputs: the [`InputGate`] reads whichever channel has data
//! and aligns checkpoint barriers with a [`BarrierAligner`].
//!
//! Alignment (exactly-once): once barrier *n* arrived on a channel, the gate
//! stops reading that channel — its records after the barrier stay in the
//! channel, which backpressures the sender — and keeps reading the others
//! until every channel delivered barrier *n*. Then the subtask snapshots,
//! forwards the barrier and the gate reads every channel again, so the
//! records held back come first. At-least-once reads every channel all the
//! time and reports the barrier once the last channel delivered it, so the
//! snapshot may include records from after the barrier (replayed after a
//! restore: duplicates, never loss).
//!
//! A channel that ended counts as having delivered every barrier.
//!
//! Unaligned (exactly-once without blocking): the first arrival of barrier
//! *n* — usually on a channel's priority lane, overtaking the queued records
//! — makes the subtask snapshot at once. The gate then pulls every queued
//! record up to each channel's in-band barrier *n* ahead into its own
//! buffer, so upstream senders unblock, and records them (and every record
//! arriving before a channel's in-band barrier) as the checkpoint's
//! in-flight data; the subtask processes them as usual. A restored subtask
//! gets its in-flight records back first, before anything new.
//!
//! With an alignment timeout, a checkpoint starts aligned and switches to
//! unaligned when its alignment has not finished in time (or when an
//! upstream subtask already switched and its barrier arrives on the
//! priority lane); the records the blocked channels held back after their
//! barriers stay where they are, the others become in-flight data.

use std::collections::VecDeque;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TryRecvError;
use weir_format::BatchReader;

use super::{CheckpointBarrier, Control, ControlReceiver, DataReceiver, Element, Exit};
use crate::checkpoint::CheckpointId;
use crate::checkpoint::format::InFlightChannel;
use crate::watermark::{WatermarkEvent, WatermarkValve};

/// What the aligner tells the gate.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Aligned {
    /// Every channel delivered the barrier: snapshot now. `alignment` is
    /// the time from its first to its last arrival.
    Barrier {
        barrier: CheckpointBarrier,
        alignment: Duration,
    },
    /// This checkpoint cannot be taken here: a newer one overtook it before
    /// every channel delivered its barrier.
    Abandoned(CheckpointId),
}

/// One checkpoint being aligned.
#[derive(Debug)]
struct Pending {
    barrier: CheckpointBarrier,
    first_arrival: Instant,
    delivered: Vec<bool>,
    remaining: usize,
}

/// Barrier alignment over `channels` input channels: a pure state machine,
/// driven by the gate with every barrier and channel end.
#[derive(Debug)]
pub(crate) struct BarrierAligner {
    /// Exactly-once: block a channel from its barrier until alignment.
    blocking: bool,
    closed: Vec<bool>,
    /// Checkpoints seen on some but not yet all channels, oldest first (at
    /// most one when blocking).
    pending: Vec<Pending>,
    /// The newest checkpoint aligned or abandoned: older barriers are late.
    latest: Option<CheckpointId>,
}

impl BarrierAligner {
    /// An aligner for `channels` channels; `blocking` for exactly-once.
    pub(crate) fn new(channels: usize, blocking: bool) -> Self {
        Self {
            blocking,
            closed: vec![false; channels],
            pending: Vec::new(),
            latest: None,
        }
    }

    /// The oldest checkpoint being aligned and its first barrier's arrival.
    /// A savepoint never times out into an unaligned one.
    pub(crate) fn aligning_since(&self) -> Option<Instant> {
        self.pending
            .first()
            .filter(|p| !p.barrier.savepoint)
            .map(|p| p.first_arrival)
    }

    /// The newest checkpoint aligned or given up here.
    pub(crate) fn latest(&self) -> Option<CheckpointId> {
        self.latest
    }

    /// The oldest checkpoint being aligned.
    pub(crate) fn aligning(&self) -> Option<CheckpointId> {
        self.pending.first().map(|p| p.barrier.id)
    }

    /// Gives up aligning checkpoint `id` (to take it unaligned instead):
    /// its barrier and which channels delivered it.
    pub(crate) fn take_pending(
        &mut self,
        id: CheckpointId,
    ) -> Option<(CheckpointBarrier, Vec<bool>)> {
        let at = self.pending.iter().position(|p| p.barrier.id == id)?;
        let p = self.pending.remove(at);
        self.latest = self.latest.max(Some(id));
        Some((p.barrier, p.delivered))
    }

    /// Whether the gate must not read `channel` now.
    pub(crate) fn is_blocked(&self, channel: usize) -> bool {
        self.blocking && self.pending.first().is_some_and(|p| p.delivered[channel])
    }

    /// Barrier `barrier` arrived on `channel`.
    pub(crate) fn on_barrier(
        &mut self,
        channel: usize,
        barrier: CheckpointBarrier,
        now: Instant,
    ) -> Vec<Aligned> {
        let mut out = Vec::new();
        if self.latest.is_some_and(|l| l >= barrier.id) {
            return out;
        }
        let idx = match self.pending.iter().position(|p| p.barrier.id >= barrier.id) {
            Some(i) if self.pending[i].barrier.id == barrier.id => i,
            at => {
                if self.blocking {
                    // A newer barrier on a channel that never delivered the
                    // pending one: the pending one can never align.
                    for p in self.pending.drain(..) {
                        out.push(Aligned::Abandoned(p.barrier.id));
                        self.latest = Some(p.barrier.id);
                    }
                }
                let at = at.unwrap_or(self.pending.len()).min(self.pending.len());
                let remaining = self.closed.iter().filter(|c| !**c).count();
                self.pending.insert(
                    at,
                    Pending {
                        barrier,
                        first_arrival: now,
                        delivered: self.closed.clone(),
                        remaining,
                    },
                );
                at
            }
        };
        let p = &mut self.pending[idx];
        if !p.delivered[channel] {
            p.delivered[channel] = true;
            p.remaining -= 1;
        }
        self.complete(now, &mut out);
        out
    }

    /// `channel` ended: it counts as having delivered every barrier.
    pub(crate) fn on_closed(&mut self, channel: usize, now: Instant) -> Vec<Aligned> {
        self.closed[channel] = true;
        for p in &mut self.pending {
            if !p.delivered[channel] {
                p.delivered[channel] = true;
                p.remaining -= 1;
            }
        }
        let mut out = Vec::new();
        self.complete(now, &mut out);
        out
    }

    /// Reports the newest fully delivered checkpoint, abandoning older
    /// ones still incomplete (as Flink's barrier tracker does).
    fn complete(&mut self, now: Instant, out: &mut Vec<Aligned>) {
        let Some(newest) = self.pending.iter().rposition(|p| p.remaining == 0) else {
            return;
        };
        for p in self.pending.drain(..=newest) {
            self.latest = Some(p.barrier.id);
            out.push(if p.remaining == 0 {
                Aligned::Barrier {
                    barrier: p.barrier,
                    alignment: now.saturating_duration_since(p.first_arrival),
                }
            } else {
                Aligned::Abandoned(p.barrier.id)
            });
        }
    }
}

/// How a gate treats barriers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GateMode {
    /// Exactly-once, aligned: block each channel from its barrier.
    Aligned,
    /// Exactly-once, unaligned: snapshot at the first barrier, store the
    /// records in flight.
    Unaligned,
    /// At-least-once: never block.
    AtLeastOnce,
}

/// What a subtask gets from its gate, in order.
#[derive(Debug)]
pub(crate) enum GateEvent {
    /// A packed batch of `len` records.
    Records(Vec<u8>, usize),
    /// Snapshot now, then forward the barrier. `unaligned`: the snapshot is
    /// complete only with the in-flight records a later
    /// [`GateEvent::InFlight`] brings.
    Barrier {
        barrier: CheckpointBarrier,
        alignment: Duration,
        unaligned: bool,
    },
    /// Unaligned checkpoint `id`: every channel delivered its in-band
    /// barrier; these records were in flight at the snapshot.
    InFlight {
        id: CheckpointId,
        channels: Vec<InFlightChannel>,
    },
    /// The subtask cannot take this checkpoint: decline it.
    Abandoned(CheckpointId),
    /// The subtask's watermark (the minimum over its inputs) advanced, or
    /// every input went idle.
    Watermark(WatermarkEvent),
    /// Every channel delivered all its data (barriers may still follow).
    /// Not when a channel ended without it (a stop with savepoint
    /// suspended its sender): the data did not end, it was interrupted.
    EndOfData {
        /// Every channel's data had already ended at the snapshot the job
        /// was restored from: this subtask ran its `close` before it.
        restored: bool,
    },
    /// A message from the job (checkpoint complete, cancel).
    Control(Control),
    /// Every channel ended.
    End,
}

/// What one wait on a gate's inputs brought: `None` when the channel
/// closed.
enum Input {
    Control(Option<Control>),
    Data(usize, Option<Element>),
}

/// An unaligned checkpoint between its snapshot and the last channel's
/// in-band barrier.
struct InFlightRecording {
    barrier: CheckpointBarrier,
    delivered: Vec<bool>,
    remaining: usize,
    recorded: Vec<Vec<Vec<u8>>>,
}

/// A subtask's input channels and its control channel.
pub(crate) struct InputGate {
    channels: Vec<DataReceiver>,
    open: Vec<bool>,
    open_count: usize,
    data_ended: Vec<bool>,
    data_open: usize,
    /// Channels whose end of data had already happened before the restore.
    restored_ends: usize,
    control: ControlReceiver,
    control_open: bool,
    /// The channel read first next time, so a busy channel cannot starve
    /// the others.
    first: usize,
    mode: GateMode,
    /// Unaligned mode: align first, and switch after this long.
    aligned_timeout: Option<Duration>,
    aligner: BarrierAligner,
    recording: Option<InFlightRecording>,
    latest_unaligned: Option<CheckpointId>,
    /// Per channel: elements taken off the channel but not yet handed to
    /// the subtask (pulled ahead by an unaligned barrier, or restored).
    front: Vec<VecDeque<Element>>,
    ready: VecDeque<GateEvent>,
    /// The subtask's watermark over its channels.
    valve: WatermarkValve,
}

impl InputGate {
    /// A gate over `channels` and the subtask's `control` channel;
    /// `aligned_timeout` only matters in [`GateMode::Unaligned`].
    pub(crate) fn new(
        channels: Vec<DataReceiver>,
        control: ControlReceiver,
        mode: GateMode,
        aligned_timeout: Option<Duration>,
    ) -> Self {
        let n = channels.len();
        Self {
            open: vec![true; n],
            open_count: n,
            data_ended: vec![false; n],
            data_open: n,
            restored_ends: 0,
            control,
            control_open: true,
            first: 0,
            mode,
            aligned_timeout: aligned_timeout.filter(|_| mode == GateMode::Unaligned),
            aligner: BarrierAligner::new(
                n,
                mode == GateMode::Aligned
                    || (mode == GateMode::Unaligned && aligned_timeout.is_some()),
            ),
            recording: None,
            latest_unaligned: None,
            front: (0..n).map(|_| VecDeque::new()).collect(),
            channels,
            ready: VecDeque::new(),
            valve: WatermarkValve::new(n),
        }
    }

    /// The control channel, for a subtask that waits on it alone.
    pub(crate) fn control(&mut self) -> &mut ControlReceiver {
        &mut self.control
    }

    /// How the gate treats barriers.
    pub(crate) fn mode(&self) -> GateMode {
        self.mode
    }

    /// Queues a restored checkpoint's in-flight records ahead of anything
    /// new on their channels.
    ///
    /// # Errors
    /// [`Error::Restore`] if a channel does not exist in this job.
    pub(crate) fn preload(
        &mut self,
        in_flight: Vec<InFlightChannel>,
    ) -> Result<(), crate::error::Error> {
        for c in in_flight {
            let Some(front) = self.front.get_mut(c.channel as usize) else {
                return Err(crate::error::Error::Restore {
                    message: format!(
                        "in-flight records of input channel {} but the subtask has {}",
                        c.channel,
                        self.channels.len()
                    ),
                });
            };
            for data in c.batches {
                let len = BatchReader::new(&data).count();
                front.push_back(Element::Records { data, len });
            }
        }
        Ok(())
    }

    /// The next event.
    ///
    /// # Errors
    /// [`Exit::Cancelled`] when an upstream subtask hung up without ending
    /// its channel (it failed).
    pub(crate) async fn next(&mut self) -> Result<GateEvent, Exit> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Ok(e);
            }
            if self.recording.is_some() {
                // Keep pulling ahead while recording, so the in-band
                // barriers are seen without first working through the
                // buffered records (which may take long under backpressure).
                for c in 0..self.channels.len() {
                    self.pull_ahead(c);
                }
                if let Some(e) = self.ready.pop_front() {
                    return Ok(e);
                }
            }
            if let Some(ch) = self.front.iter().position(|f| !f.is_empty()) {
                let element = self.front[ch]
                    .pop_front()
                    .expect("invariant: the front buffer is not empty");
                self.arrived(ch, element, false);
                continue;
            }
            if self.open_count == 0 {
                return Ok(GateEvent::End);
            }
            let deadline = self
                .aligned_timeout
                .zip(self.aligner.aligning_since())
                .map(|(timeout, since)| since + timeout);
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.alignment_timed_out();
                continue;
            }
            assert!(
                self.control_open
                    || (0..self.channels.len())
                        .any(|i| self.open[i] && !self.aligner.is_blocked(i)),
                "invariant: an aligning gate always has an unblocked open channel"
            );
            let input = std::future::poll_fn(|cx| self.poll_inputs(cx));
            // The next loop sees the deadline passed and switches.
            let input = match deadline {
                Some(d) => match tokio::time::timeout_at(d.into(), input).await {
                    Ok(input) => input,
                    Err(_) => continue,
                },
                None => input.await,
            };
            match input {
                Input::Control(Some(Control::PriorityBarrier { barrier, channel })) => {
                    self.priority_barrier(channel, barrier);
                }
                Input::Control(Some(c)) => return Ok(GateEvent::Control(c)),
                Input::Control(None) => self.control_open = false,
                Input::Data(idx, Some(element)) => self.arrived(idx, element, true),
                // The sender exited without ending its channel: it failed.
                Input::Data(_, None) => return Err(Exit::Cancelled),
            }
        }
    }

    /// The control channel first, then the open channels not blocked by an
    /// alignment, starting one further each time; `Pending` (woken by any
    /// of them) when none has anything.
    fn poll_inputs(&mut self, cx: &mut Context<'_>) -> Poll<Input> {
        if self.control_open
            && let Poll::Ready(c) = self.control.poll_recv(cx)
        {
            return Poll::Ready(Input::Control(c));
        }
        let n = self.channels.len();
        let first = self.first;
        self.first = if n == 0 { 0 } else { (first + 1) % n };
        for k in 0..n {
            let i = (first + k) % n;
            if self.open[i]
                && !self.aligner.is_blocked(i)
                && let Poll::Ready(e) = self.channels[i].poll_recv(cx)
            {
                return Poll::Ready(Input::Data(i, e));
            }
        }
        Poll::Pending
    }

    /// Handles one element from channel `ch`; `live` when it comes straight
    /// off the channel (not from the front buffer), so an unaligned
    /// checkpoint may have to record it.
    fn arrived(&mut self, ch: usize, element: Element, live: bool) {
        match element {
            Element::Records { data, len } => {
                if live
                    && let Some(r) = &mut self.recording
                    && !r.delivered[ch]
                {
                    r.recorded[ch].push(data.clone());
                }
                self.ready.push_back(GateEvent::Records(data, len));
            }
            Element::Barrier(b) => {
                // Savepoints are always aligned, as in Flink.
                let unaligned = self.mode == GateMode::Unaligned
                    && !b.savepoint
                    && (self.aligned_timeout.is_none()
                        || self.latest_unaligned.is_some_and(|l| l >= b.id));
                if unaligned {
                    self.unaligned_barrier(ch, b, true);
                } else {
                    let events = self.aligner.on_barrier(ch, b, Instant::now());
                    self.push_aligned(events);
                }
            }
            Element::Watermark(w) => self.watermark(ch, w),
            Element::EndOfData { restored } => self.data_ended(ch, restored),
            // Without end of data first, the sender was suspended (stop
            // with savepoint): the data is not over, so no `EndOfData`.
            Element::EndOfInput => {
                self.open[ch] = false;
                self.open_count -= 1;
                self.delivered(ch);
                let events = self.aligner.on_closed(ch, Instant::now());
                self.push_aligned(events);
            }
        }
    }

    fn watermark(&mut self, ch: usize, w: WatermarkEvent) {
        if let Some(out) = self.valve.on_event(ch, w) {
            self.ready.push_back(GateEvent::Watermark(out));
        }
    }

    fn data_ended(&mut self, ch: usize, restored: bool) {
        // An ended channel holds no one's event time back.
        if let Some(out) = self.valve.on_ended(ch) {
            self.ready.push_back(GateEvent::Watermark(out));
        }
        if !self.data_ended[ch] {
            self.data_ended[ch] = true;
            self.data_open -= 1;
            self.restored_ends += usize::from(restored);
            if self.data_open == 0 {
                self.ready.push_back(GateEvent::EndOfData {
                    restored: self.restored_ends == self.channels.len(),
                });
            }
        }
    }

    /// An upstream subtask's unaligned barrier on the priority lane.
    fn priority_barrier(&mut self, ch: usize, barrier: CheckpointBarrier) {
        if self.mode != GateMode::Unaligned || barrier.savepoint {
            return;
        }
        match self.aligner.take_pending(barrier.id) {
            // It was being aligned here: switch now, as upstream did.
            Some((barrier, delivered)) => self.start_recording(barrier, delivered),
            None => self.unaligned_barrier(ch, barrier, false),
        }
    }

    /// The oldest aligning checkpoint ran out of time: take it unaligned.
    fn alignment_timed_out(&mut self) {
        let Some(id) = self.aligner.aligning() else {
            return;
        };
        if let Some((barrier, delivered)) = self.aligner.take_pending(id) {
            tracing::debug!("checkpoint {id} did not align in time: switching to unaligned");
            self.start_recording(barrier, delivered);
        }
    }

    /// Unaligned barrier `barrier` on channel `ch`: in-band (the marker
    /// after the channel's records) or from the priority lane.
    fn unaligned_barrier(&mut self, ch: usize, barrier: CheckpointBarrier, in_band: bool) {
        if self
            .recording
            .as_ref()
            .is_some_and(|r| r.barrier.id == barrier.id)
        {
            if in_band {
                self.delivered(ch);
            }
            return;
        }
        // Late: already taken here, unaligned or (with an alignment
        // timeout) aligned — e.g. a priority barrier read after the
        // in-band barriers that completed the alignment.
        if self.latest_unaligned.max(self.aligner.latest()) >= Some(barrier.id) {
            return;
        }
        let mut delivered: Vec<bool> = self.open.iter().map(|o| !o).collect();
        // Its in-band barrier came: nothing after it on `ch` is in flight.
        delivered[ch] |= in_band;
        self.start_recording(barrier, delivered);
    }

    /// Snapshots for unaligned checkpoint `barrier` now and records the
    /// in-flight records of every channel not `delivered` yet.
    fn start_recording(&mut self, barrier: CheckpointBarrier, delivered: Vec<bool>) {
        if let Some(old) = self.recording.take() {
            // At most one unaligned checkpoint runs at a time (the job file
            // requires max_concurrent = 1); an older one cannot finish.
            self.ready.push_back(GateEvent::Abandoned(old.barrier.id));
        }
        self.latest_unaligned = Some(barrier.id);
        let n = self.channels.len();
        // Records taken off a channel but not yet processed are not in the
        // snapshot: they are in flight too.
        let recorded = self
            .front
            .iter()
            .map(|f| {
                f.iter()
                    .filter_map(|e| match e {
                        Element::Records { data, .. } => Some(data.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        self.recording = Some(InFlightRecording {
            barrier,
            remaining: delivered.iter().filter(|d| !**d).count(),
            delivered,
            recorded,
        });
        self.ready.push_back(GateEvent::Barrier {
            barrier,
            alignment: Duration::ZERO,
            unaligned: true,
        });
        for c in 0..n {
            self.pull_ahead(c);
        }
        // Every channel may have delivered already (a switch after the last
        // open channel's barrier arrived).
        self.finish_if_complete();
    }

    /// Takes channel `c`'s queued elements up to its in-band barrier into
    /// the front buffer, recording the records, so its sender unblocks.
    fn pull_ahead(&mut self, c: usize) {
        loop {
            let Some(r) = &mut self.recording else {
                return;
            };
            if !self.open[c] || r.delivered[c] {
                return;
            }
            match self.channels[c].try_recv() {
                Ok(Element::Records { data, len }) => {
                    r.recorded[c].push(data.clone());
                    self.front[c].push_back(Element::Records { data, len });
                }
                Ok(Element::Barrier(b)) if b.id == r.barrier.id => self.delivered(c),
                // An older barrier, already handled.
                Ok(Element::Barrier(_)) => {}
                // Watermarks are not in flight: a restored job starts its
                // event time over, as Flink's does.
                Ok(e @ (Element::EndOfData { .. } | Element::Watermark(_))) => {
                    self.front[c].push_back(e)
                }
                Ok(e @ Element::EndOfInput) => {
                    self.front[c].push_back(e);
                    self.delivered(c);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    /// Channel `ch` delivered the recording checkpoint's in-band barrier
    /// (or ended); once all did, the in-flight records are complete.
    fn delivered(&mut self, ch: usize) {
        let Some(r) = &mut self.recording else {
            return;
        };
        if !r.delivered[ch] {
            r.delivered[ch] = true;
            r.remaining -= 1;
        }
        self.finish_if_complete();
    }

    /// Reports the in-flight records once every channel delivered.
    fn finish_if_complete(&mut self) {
        if self.recording.as_ref().is_some_and(|r| r.remaining == 0) {
            let r = self.recording.take().expect("invariant: recording");
            let channels = r
                .recorded
                .into_iter()
                .enumerate()
                .filter(|(_, b)| !b.is_empty())
                .map(|(c, batches)| InFlightChannel {
                    channel: c as u32,
                    batches,
                })
                .collect();
            self.ready.push_back(GateEvent::InFlight {
                id: r.barrier.id,
                channels,
            });
        }
    }

    fn push_aligned(&mut self, events: Vec<Aligned>) {
        self.ready.extend(events.into_iter().map(|e| match e {
            Aligned::Barrier { barrier, alignment } => GateEvent::Barrier {
                barrier,
                alignment,
                unaligned: false,
            },
            Aligned::Abandoned(id) => GateEvent::Abandoned(id),
        }));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::runtime::block_on;

    fn barrier(id: u64) -> CheckpointBarrier {
        CheckpointBarrier {
            id: CheckpointId(id),
            is_final: false,
            savepoint: false,
            stop: false,
        }
    }

    #[test]
    fn blocks_each_channel_from_its_barrier_until_all_delivered() {
        let t = Instant::now();
        let mut a = BarrierAligner::new(3, true);
        assert!(a.on_barrier(1, barrier(1), t).is_empty());
        assert!(a.is_blocked(1) && !a.is_blocked(0) && !a.is_blocked(2));
        assert!(a.on_barrier(0, barrier(1), t).is_empty());
        let done = a.on_barrier(2, barrier(1), t + Duration::from_millis(5));
        assert_eq!(
            done,
            vec![Aligned::Barrier {
                barrier: barrier(1),
                alignment: Duration::from_millis(5)
            }]
        );
        assert!((0..3).all(|c| !a.is_blocked(c)));
    }

    #[test]
    fn an_ended_channel_counts_as_delivered() {
        let t = Instant::now();
        let mut a = BarrierAligner::new(2, true);
        assert!(a.on_barrier(0, barrier(4), t).is_empty());
        assert!(matches!(
            a.on_closed(1, t).as_slice(),
            [Aligned::Barrier { barrier: b, .. }] if b.id == CheckpointId(4)
        ));
        // Later barriers need only the open channel.
        assert_eq!(a.on_barrier(0, barrier(5), t).len(), 1);
    }

    #[test]
    fn a_newer_barrier_abandons_an_unfinished_alignment_and_late_ones_are_ignored() {
        let t = Instant::now();
        let mut a = BarrierAligner::new(2, true);
        a.on_barrier(0, barrier(1), t);
        // Channel 1 never carried barrier 1 (its upstream skipped it).
        let out = a.on_barrier(1, barrier(2), t);
        assert_eq!(out, vec![Aligned::Abandoned(CheckpointId(1))]);
        assert!(a.on_barrier(0, barrier(1), t).is_empty(), "late");
        assert_eq!(a.on_barrier(0, barrier(2), t).len(), 1);
    }

    #[test]
    fn at_least_once_never_blocks_and_tracks_overlapping_checkpoints() {
        let t = Instant::now();
        let mut a = BarrierAligner::new(2, false);
        a.on_barrier(0, barrier(1), t);
        a.on_barrier(0, barrier(2), t);
        assert!(!a.is_blocked(0));
        assert_eq!(a.on_barrier(1, barrier(1), t).len(), 1);
        assert_eq!(a.on_barrier(1, barrier(2), t).len(), 1);
    }

    /// A channel's script: records (unique ids) and barriers 1..=n in order.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Item {
        Record(u64),
        Barrier(u64),
    }

    fn scripts() -> impl Strategy<Value = (Vec<Vec<Item>>, Vec<usize>)> {
        (1usize..5, 1u64..5).prop_flat_map(|(channels, barriers)| {
            let per_channel = proptest::collection::vec(
                proptest::collection::vec(0usize..4, barriers as usize + 1),
                channels,
            );
            (per_channel, proptest::collection::vec(0usize..64, 0..400)).prop_map(
                move |(gaps, picks)| {
                    let mut next = 0;
                    let scripts = gaps
                        .into_iter()
                        .map(|g| {
                            let mut s = Vec::new();
                            for (b, records) in g.into_iter().enumerate() {
                                for _ in 0..records {
                                    s.push(Item::Record(next));
                                    next += 1;
                                }
                                if (b as u64) < barriers {
                                    s.push(Item::Barrier(b as u64 + 1));
                                }
                            }
                            s
                        })
                        .collect();
                    (scripts, picks)
                },
            )
        })
    }

    /// Feeds the scripts through an aligner in an order chosen by `picks`
    /// among the channels it may read; returns, per aligned barrier, the
    /// records processed before its snapshot.
    fn replay(scripts: &[Vec<Item>], picks: &[usize], blocking: bool) -> Vec<(u64, BTreeSet<u64>)> {
        let t = Instant::now();
        let mut a = BarrierAligner::new(scripts.len(), blocking);
        let mut pos = vec![0; scripts.len()];
        let mut processed = BTreeSet::new();
        let mut snapshots = Vec::new();
        let mut picks = picks.iter().copied().cycle();
        loop {
            let readable: Vec<usize> = (0..scripts.len())
                .filter(|&c| pos[c] <= scripts[c].len() && !a.is_blocked(c))
                .collect();
            if readable.is_empty() {
                assert!(pos.iter().zip(scripts).all(|(p, s)| *p > s.len()), "stuck");
                return snapshots;
            }
            let c = readable[picks.next().unwrap_or(0) % readable.len()];
            let events = match scripts[c].get(pos[c]) {
                Some(Item::Record(r)) => {
                    processed.insert(*r);
                    Vec::new()
                }
                Some(Item::Barrier(id)) => a.on_barrier(c, barrier(*id), t),
                None => a.on_closed(c, t),
            };
            pos[c] += 1;
            for e in events {
                match e {
                    Aligned::Barrier { barrier, .. } => {
                        snapshots.push((barrier.id.0, processed.clone()));
                    }
                    Aligned::Abandoned(id) => panic!("checkpoint {id} abandoned"),
                }
            }
        }
    }

    fn before(scripts: &[Vec<Item>], id: u64) -> BTreeSet<u64> {
        scripts
            .iter()
            .flat_map(|s| {
                s.iter()
                    .take_while(move |i| **i != Item::Barrier(id))
                    .filter_map(|i| match i {
                        Item::Record(r) => Some(*r),
                        Item::Barrier(_) => None,
                    })
            })
            .collect()
    }

    proptest! {
        /// Exactly-once: every snapshot holds exactly the records before
        /// the barrier on every channel, whatever the interleaving.
        #[test]
        fn aligned_snapshots_hold_exactly_the_records_before_the_barrier(
            (scripts, picks) in scripts()
        ) {
            let barriers = scripts[0].iter().filter(|i| matches!(i, Item::Barrier(_))).count() as u64;
            let snapshots = replay(&scripts, &picks, true);
            prop_assert_eq!(snapshots.iter().map(|s| s.0).collect::<Vec<_>>(), (1..=barriers).collect::<Vec<_>>());
            for (id, processed) in snapshots {
                prop_assert_eq!(processed, before(&scripts, id), "checkpoint {}", id);
            }
        }

        /// At-least-once: every snapshot holds at least the records before
        /// the barrier (maybe more, replayed as duplicates).
        #[test]
        fn unblocked_snapshots_hold_at_least_the_records_before_the_barrier(
            (scripts, picks) in scripts()
        ) {
            for (id, processed) in replay(&scripts, &picks, false) {
                prop_assert!(processed.is_superset(&before(&scripts, id)), "checkpoint {}", id);
            }
        }
    }

    fn records(values: &[&str]) -> Element {
        let mut w = weir_format::BatchWriter::default();
        for v in values {
            w.push(None, v.as_bytes(), None);
        }
        let (data, len) = w.take();
        Element::Records { data, len }
    }

    fn values(data: &[u8]) -> Vec<String> {
        BatchReader::new(data)
            .map(|r| String::from_utf8(r.unwrap().value.to_vec()).unwrap())
            .collect()
    }

    /// Whatever order the gate reads its channels in, and whenever the
    /// priority barrier comes (before any record is read, or after one,
    /// two or three events), an unaligned snapshot plus its in-flight
    /// records hold every record before the barrier exactly once, and
    /// nothing after it.
    #[test]
    fn an_unaligned_barrier_overtakes_queued_records_which_become_in_flight() {
        for (first, priority_after) in (0..2).flat_map(|f| (0..4).map(move |p| (f, p))) {
            let (tx0, rx0) = tokio::sync::mpsc::channel(16);
            let (tx1, rx1) = tokio::sync::mpsc::channel(16);
            let (ctl, ctl_rx) = tokio::sync::mpsc::unbounded_channel();
            let mut gate = InputGate::new(vec![rx0, rx1], ctl_rx, GateMode::Unaligned, None);
            gate.first = first;
            for e in [
                records(&["a", "b"]),
                Element::Barrier(barrier(1)),
                records(&["c"]),
            ] {
                tx0.try_send(e).unwrap();
            }
            for e in [
                records(&["x"]),
                records(&["y"]),
                Element::Barrier(barrier(1)),
            ] {
                tx1.try_send(e).unwrap();
            }
            for tx in [&tx0, &tx1] {
                tx.try_send(records(&["after"])).unwrap();
                tx.try_send(Element::EndOfInput).unwrap();
            }
            let (mut before, mut after, mut in_flight) = (Vec::new(), Vec::new(), None);
            let mut snapshotted = false;
            for events in 0.. {
                if events == priority_after {
                    ctl.send(Control::PriorityBarrier {
                        barrier: barrier(1),
                        channel: 1,
                    })
                    .unwrap();
                }
                match block_on(gate.next()).ok().unwrap() {
                    GateEvent::Records(data, _) if snapshotted => after.extend(values(&data)),
                    GateEvent::Records(data, _) => before.extend(values(&data)),
                    GateEvent::Barrier { unaligned, .. } => {
                        assert!(unaligned && !snapshotted);
                        snapshotted = true;
                    }
                    GateEvent::InFlight { id, channels } => {
                        assert_eq!(id, CheckpointId(1));
                        let all: Vec<String> = channels
                            .iter()
                            .flat_map(|c| &c.batches)
                            .flat_map(|b| values(b))
                            .collect();
                        in_flight = Some(all);
                    }
                    GateEvent::End => break,
                    GateEvent::EndOfData { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            let mut in_flight = in_flight.expect("the in-flight records were reported");
            let mut covered: Vec<String> = before.iter().chain(&in_flight).cloned().collect();
            covered.sort();
            assert_eq!(
                covered,
                ["a", "b", "x", "y"],
                "before the barrier, exactly once"
            );
            in_flight.sort();
            let mut processed_after: Vec<String> = after
                .into_iter()
                .filter(|v| !in_flight.contains(v))
                .collect();
            processed_after.sort();
            assert_eq!(processed_after, ["after", "after", "c"]);
        }
    }

    #[test]
    fn restored_in_flight_records_come_before_new_ones() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (_ctl, ctl_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut gate = InputGate::new(vec![rx], ctl_rx, GateMode::Unaligned, None);
        let Element::Records { data, .. } = records(&["old1", "old2"]) else {
            unreachable!()
        };
        gate.preload(vec![InFlightChannel {
            channel: 0,
            batches: vec![data],
        }])
        .unwrap();
        tx.try_send(records(&["new"])).unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            match block_on(gate.next()).ok().unwrap() {
                GateEvent::Records(data, len) => {
                    assert_eq!(len, values(&data).len());
                    seen.extend(values(&data));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, ["old1", "old2", "new"]);
        assert!(
            gate.preload(vec![InFlightChannel {
                channel: 3,
                batches: vec![]
            }])
            .is_err()
        );
    }

    #[test]
    fn a_slow_alignment_switches_to_unaligned_after_the_timeout() {
        let (tx0, rx0) = tokio::sync::mpsc::channel(16);
        let (tx1, rx1) = tokio::sync::mpsc::channel(16);
        let (_ctl, ctl_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut gate = InputGate::new(
            vec![rx0, rx1],
            ctl_rx,
            GateMode::Unaligned,
            Some(Duration::from_millis(20)),
        );
        for e in [
            records(&["a"]),
            Element::Barrier(barrier(1)),
            records(&["post"]),
        ] {
            tx0.try_send(e).unwrap();
        }
        tx1.try_send(records(&["b"])).unwrap();
        let mut before = Vec::new();
        loop {
            match block_on(gate.next()).ok().unwrap() {
                GateEvent::Records(data, _) => before.extend(values(&data)),
                GateEvent::Barrier { unaligned, .. } => {
                    assert!(unaligned, "switched after the timeout");
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        before.sort();
        assert_eq!(
            before,
            ["a", "b"],
            "channel 0 stayed blocked while aligning"
        );
        tx1.try_send(records(&["x"])).unwrap();
        tx1.try_send(Element::Barrier(barrier(1))).unwrap();
        for tx in [&tx0, &tx1] {
            tx.try_send(Element::EndOfInput).unwrap();
        }
        let (mut after, mut in_flight) = (Vec::new(), None);
        loop {
            match block_on(gate.next()).ok().unwrap() {
                GateEvent::Records(data, _) => after.extend(values(&data)),
                GateEvent::InFlight { channels, .. } => {
                    let all: Vec<String> = channels
                        .iter()
                        .flat_map(|c| &c.batches)
                        .flat_map(|b| values(b))
                        .collect();
                    in_flight = Some(all);
                }
                GateEvent::EndOfData { .. } => {}
                GateEvent::End => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            in_flight.unwrap(),
            ["x"],
            "only the unaligned channel's records"
        );
        after.sort();
        assert_eq!(after, ["post", "x"]);
    }

    #[test]
    fn a_priority_barrier_after_the_alignment_completed_is_ignored() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (ctl, ctl_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut gate = InputGate::new(
            vec![rx],
            ctl_rx,
            GateMode::Unaligned,
            Some(Duration::from_secs(60)),
        );
        tx.try_send(Element::Barrier(barrier(1))).unwrap();
        match block_on(gate.next()).ok().unwrap() {
            GateEvent::Barrier { unaligned, .. } => assert!(!unaligned, "aligned in time"),
            other => panic!("unexpected {other:?}"),
        }
        // The upstream switched to unaligned; its priority barrier comes
        // after its in-band one completed the alignment here.
        ctl.send(Control::PriorityBarrier {
            barrier: barrier(1),
            channel: 0,
        })
        .unwrap();
        tx.try_send(Element::EndOfData { restored: false }).unwrap();
        tx.try_send(Element::EndOfInput).unwrap();
        let mut rest = Vec::new();
        loop {
            match block_on(gate.next()).ok().unwrap() {
                GateEvent::End => break,
                e => rest.push(format!("{e:?}")),
            }
        }
        assert_eq!(
            rest,
            [END_OF_TIME, "EndOfData { restored: false }"],
            "no second snapshot"
        );
    }

    /// Every event until the gate ends, as text.
    fn drain_gate(gate: &mut InputGate) -> Vec<String> {
        let mut events = Vec::new();
        loop {
            match block_on(gate.next()).ok().unwrap() {
                GateEvent::End => return events,
                e => events.push(format!("{e:?}")),
            }
        }
    }

    #[test]
    fn a_channel_ended_without_end_of_data_was_suspended_so_data_never_ends() {
        let (tx0, rx0) = tokio::sync::mpsc::channel(1024);
        let (tx1, rx1) = tokio::sync::mpsc::channel(1024);
        let (_ctl, ctl_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut gate = InputGate::new(vec![rx0, rx1], ctl_rx, GateMode::Aligned, None);
        // A bounded input ended; the other was suspended by a stop.
        tx0.try_send(Element::EndOfData { restored: false })
            .unwrap();
        tx0.try_send(Element::EndOfInput).unwrap();
        tx1.try_send(Element::EndOfInput).unwrap();
        assert!(
            drain_gate(&mut gate).is_empty(),
            "no end of data: the operator must not close"
        );
    }

    #[test]
    fn end_of_data_is_restored_only_when_every_channel_had_ended_before_the_restore() {
        for (flags, restored) in [([true, true], true), ([true, false], false)] {
            let (tx0, rx0) = tokio::sync::mpsc::channel(1024);
            let (tx1, rx1) = tokio::sync::mpsc::channel(1024);
            let (_ctl, ctl_rx) = tokio::sync::mpsc::unbounded_channel();
            let mut gate = InputGate::new(vec![rx0, rx1], ctl_rx, GateMode::Aligned, None);
            for (tx, flag) in [(&tx0, flags[0]), (&tx1, flags[1])] {
                tx.try_send(Element::EndOfData { restored: flag }).unwrap();
                tx.try_send(Element::EndOfInput).unwrap();
            }
            assert_eq!(
                drain_gate(&mut gate),
                [
                    END_OF_TIME.to_owned(),
                    format!("EndOfData {{ restored: {restored} }}")
                ]
            );
        }
    }

    /// The watermark every ended input brings, as [`drain_gate`] shows it.
    const END_OF_TIME: &str = "Watermark(At(9223372036854775807))";

    #[test]
    fn the_gate_passes_on_the_minimum_watermark_of_its_channels_after_their_records() {
        let (tx0, rx0) = tokio::sync::mpsc::channel(1024);
        let (tx1, rx1) = tokio::sync::mpsc::channel(1024);
        let (_ctl, ctl_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut gate = InputGate::new(vec![rx0, rx1], ctl_rx, GateMode::Aligned, None);
        let at = |w| Element::Watermark(WatermarkEvent::At(w));
        for e in [records(&["a"]), at(10), at(30), records(&["b"])] {
            tx0.try_send(e).unwrap();
        }
        for e in [at(20), Element::Watermark(WatermarkEvent::Idle)] {
            tx1.try_send(e).unwrap();
        }
        for tx in [&tx0, &tx1] {
            tx.try_send(Element::EndOfData { restored: false }).unwrap();
            tx.try_send(Element::EndOfInput).unwrap();
        }
        let events = drain_gate(&mut gate);
        let watermarks: Vec<&str> = events
            .iter()
            .map(String::as_str)
            .filter(|e| e.starts_with("Watermark"))
            .collect();
        assert_eq!(
            watermarks,
            // Channel 1 at 20 holds channel 0's 30 back until it goes
            // idle; then 30 passes (20 was never the minimum).
            ["Watermark(At(10))", "Watermark(At(30))", END_OF_TIME]
        );
        assert_eq!(events.last().unwrap(), "EndOfData { restored: false }");
    }
}
