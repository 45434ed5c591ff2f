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

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select};

use super::{CheckpointBarrier, Control, Element, Exit};
use crate::checkpoint::CheckpointId;

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

/// What a subtask gets from its gate, in order.
#[derive(Debug)]
pub(crate) enum GateEvent {
    /// A packed batch of `len` records.
    Records(Vec<u8>, usize),
    /// Snapshot now, then forward the barrier.
    Barrier {
        barrier: CheckpointBarrier,
        alignment: Duration,
    },
    /// The subtask cannot take this checkpoint: decline it.
    Abandoned(CheckpointId),
    /// Every channel delivered all its data (barriers may still follow).
    EndOfData,
    /// A message from the job (checkpoint complete, cancel).
    Control(Control),
    /// Every channel ended.
    End,
}

/// A subtask's input channels and its control channel.
pub(crate) struct InputGate {
    channels: Vec<Receiver<Element>>,
    open: Vec<bool>,
    open_count: usize,
    data_ended: Vec<bool>,
    data_open: usize,
    control: Receiver<Control>,
    control_open: bool,
    aligner: BarrierAligner,
    ready: VecDeque<GateEvent>,
}

impl InputGate {
    /// A gate over `channels`; `blocking` aligns barriers for exactly-once.
    pub(crate) fn new(
        channels: Vec<Receiver<Element>>,
        control: Receiver<Control>,
        blocking: bool,
    ) -> Self {
        let n = channels.len();
        Self {
            open: vec![true; n],
            open_count: n,
            data_ended: vec![false; n],
            data_open: n,
            control,
            control_open: true,
            aligner: BarrierAligner::new(n, blocking),
            channels,
            ready: VecDeque::new(),
        }
    }

    /// The control channel, for a subtask that waits on it alone.
    pub(crate) fn control(&self) -> &Receiver<Control> {
        &self.control
    }

    /// The next event.
    ///
    /// # Errors
    /// [`Exit::Cancelled`] when an upstream subtask hung up without ending
    /// its channel (it failed).
    pub(crate) fn next(&mut self) -> Result<GateEvent, Exit> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Ok(e);
            }
            if self.open_count == 0 {
                return Ok(GateEvent::End);
            }
            let mut select = Select::new();
            let mut ids = Vec::with_capacity(self.open_count + 1);
            for (i, ch) in self.channels.iter().enumerate() {
                if self.open[i] && !self.aligner.is_blocked(i) {
                    select.recv(ch);
                    ids.push(Some(i));
                }
            }
            if self.control_open {
                select.recv(&self.control);
                ids.push(None);
            }
            assert!(
                !ids.is_empty(),
                "invariant: an aligning gate always has an unblocked open channel"
            );
            let op = select.select();
            let Some(idx) = ids[op.index()] else {
                match op.recv(&self.control) {
                    Ok(c) => return Ok(GateEvent::Control(c)),
                    Err(_) => {
                        self.control_open = false;
                        continue;
                    }
                }
            };
            match op.recv(&self.channels[idx]) {
                Ok(Element::Records { data, len }) => return Ok(GateEvent::Records(data, len)),
                Ok(Element::Barrier(b)) => {
                    let events = self.aligner.on_barrier(idx, b, Instant::now());
                    self.push_aligned(events);
                }
                Ok(Element::EndOfData) => {
                    if !self.data_ended[idx] {
                        self.data_ended[idx] = true;
                        self.data_open -= 1;
                        if self.data_open == 0 {
                            self.ready.push_back(GateEvent::EndOfData);
                        }
                    }
                }
                Ok(Element::EndOfInput) => {
                    self.open[idx] = false;
                    self.open_count -= 1;
                    if !self.data_ended[idx] {
                        self.data_ended[idx] = true;
                        self.data_open -= 1;
                        if self.data_open == 0 {
                            self.ready.push_back(GateEvent::EndOfData);
                        }
                    }
                    let events = self.aligner.on_closed(idx, Instant::now());
                    self.push_aligned(events);
                }
                // The sender exited without ending its channel: it failed.
                Err(_) => return Err(Exit::Cancelled),
            }
        }
    }

    fn push_aligned(&mut self, events: Vec<Aligned>) {
        self.ready.extend(events.into_iter().map(|e| match e {
            Aligned::Barrier { barrier, alignment } => GateEvent::Barrier { barrier, alignment },
            Aligned::Abandoned(id) => GateEvent::Abandoned(id),
        }));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn barrier(id: u64) -> CheckpointBarrier {
        CheckpointBarrier {
            id: CheckpointId(id),
            is_final: false,
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
}
