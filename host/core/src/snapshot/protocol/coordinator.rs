//! The checkpoint coordinator's decisions: when to trigger a checkpoint,
//! when one is complete, when to abort, subsume or fail the job — Flink's
//! `CheckpointCoordinator`, `CheckpointRequestDecider` and
//! `CheckpointFailureManager` as one pure state machine.
//!
//! No tokio, no threads, no I/O, no clock: the runtime passes the time
//! into every call and carries out the [`Decision`]s returned, in order.
//! It drives the coordinator like this:
//!
//! - sleep until [`CheckpointCoordinator::next_wakeup`] (recomputed after
//!   every call), then [`poll`](CheckpointCoordinator::poll): periodic
//!   triggers and expiry are the only time-driven decisions;
//! - forward every task's acknowledgement or decline;
//! - on [`Decision::AllAcknowledged`], write and commit the checkpoint's
//!   `_metadata`, then report [`completed`](CheckpointCoordinator::completed)
//!   or [`commit_failed`](CheckpointCoordinator::commit_failed);
//! - when every source has ended (a bounded job),
//!   [`sources_finished`](CheckpointCoordinator::sources_finished), and
//!   finish the job once [`final_completed`](CheckpointCoordinator::final_completed).
//!
//! Timing rules, as Flink's:
//!
//! - a periodic checkpoint is due `interval` after the previous trigger (the
//!   first `interval` after start), and `min_pause` after the last
//!   *completion*; aborted checkpoints do not restart the pause (Flink's
//!   `CheckpointRequestDecider` measures from `lastCheckpointCompletion`);
//! - no trigger while `max_concurrent` checkpoints are pending; a due
//!   trigger then waits and fires at the first poll after a slot frees;
//! - a pending checkpoint expires `timeout` after its trigger, unless every
//!   task has acknowledged it: from then on the runtime's commit decides.
//!
//! Commits are serialised: at most one checkpoint's `_metadata` is being
//! committed at a time, oldest fully acknowledged first, so checkpoints
//! complete in id order and a commit is never raced by an abort.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::checkpoint::CheckpointId;

/// The consistency a checkpoint guarantees (Flink's `CheckpointingMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointingMode {
    /// Operators with several inputs align barriers: state reflects every
    /// record exactly once.
    ExactlyOnce,
    /// No alignment: after a restore some records may be reflected twice,
    /// in exchange for lower latency.
    AtLeastOnce,
}

/// What happens to retained checkpoints when the job is cancelled (Flink's
/// `ExternalizedCheckpointRetention`). A job that fails always keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetentionOnCancel {
    /// Keep them, so the job can be resumed from the latest one.
    Retain,
    /// Delete them.
    Delete,
}

/// A job's checkpointing settings (the job file's `[checkpoints]` section).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointConfig {
    /// Time between periodic checkpoints; `None` turns checkpoints off.
    pub interval: Option<Duration>,
    /// Exactly-once (aligned barriers) or at-least-once.
    pub mode: CheckpointingMode,
    /// A checkpoint not acknowledged by every task within this is aborted.
    pub timeout: Duration,
    /// Least time between a checkpoint's completion and the next trigger.
    pub min_pause: Duration,
    /// Most checkpoints in progress at once.
    pub max_concurrent: u32,
    /// Consecutive failed checkpoints tolerated; one more fails the job.
    pub tolerable_failures: u32,
    /// Barriers overtake buffered records, which are stored with the
    /// checkpoint (exactly-once only).
    pub unaligned: bool,
    /// With `unaligned`: start aligned and switch to unaligned after this;
    /// `None` is unaligned from the start.
    pub aligned_timeout: Option<Duration>,
    /// Completed checkpoints kept; older ones are deleted.
    pub retained: u32,
    /// Whether cancelling the job deletes its retained checkpoints.
    pub retention_on_cancel: RetentionOnCancel,
    /// Whether a checkpoint writes only the keyed state that changed
    /// since the last completed one, referencing that one's files.
    pub incremental: bool,
    /// Where checkpoints are stored: a URL (`s3://…`, `memory://`) or a
    /// path, relative paths against the job file's directory.
    pub storage: String,
}

/// Flink's default checkpoint timeout (`execution.checkpointing.timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Default checkpoint storage, relative to the job file's directory.
pub const DEFAULT_STORAGE: &str = "weir-data";

impl Default for CheckpointConfig {
    /// Checkpoints off; every other setting at Flink's default.
    fn default() -> Self {
        CheckpointConfig {
            interval: None,
            mode: CheckpointingMode::ExactlyOnce,
            timeout: DEFAULT_TIMEOUT,
            min_pause: Duration::ZERO,
            max_concurrent: 1,
            tolerable_failures: 0,
            unaligned: false,
            aligned_timeout: None,
            retained: 1,
            retention_on_cancel: RetentionOnCancel::Retain,
            incremental: false,
            storage: DEFAULT_STORAGE.to_owned(),
        }
    }
}

impl CheckpointConfig {
    /// Whether checkpoints are on (an interval is set).
    pub fn enabled(&self) -> bool {
        self.interval.is_some()
    }
}

/// What the runtime must do, returned by every [`CheckpointCoordinator`]
/// call; carry them out in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Inject barrier `id` at every source. `is_final`: the last checkpoint
    /// of a bounded job (every source has ended).
    Trigger {
        /// The new checkpoint.
        id: CheckpointId,
        /// Whether it is the final checkpoint of a bounded job.
        is_final: bool,
        /// Whether it is a savepoint (always aligned, stored apart, never
        /// subsumed, not counted as a checkpoint failure).
        savepoint: bool,
    },
    /// Every task acknowledged `id`: the runtime now writes and commits its
    /// `_metadata`, then calls [`CheckpointCoordinator::completed`] (or
    /// [`CheckpointCoordinator::commit_failed`]).
    AllAcknowledged(CheckpointId),
    /// Abandon `id` (expired, declined, subsumed, or its commit failed):
    /// the runtime tells tasks and deletes its files.
    Abort {
        /// The abandoned checkpoint.
        id: CheckpointId,
        /// Why, for logs.
        reason: String,
    },
    /// `id` is complete: tell every task (two-phase commit of sinks;
    /// plugins' `on-checkpoint-complete`).
    NotifyComplete(CheckpointId),
    /// Savepoint `id` is complete. It changes nothing about checkpoints:
    /// the runtime answers whoever asked for it (and, for a stop, tells
    /// the tasks so sinks commit and sources end).
    SavepointCompleted(CheckpointId),
    /// Delete these completed checkpoints, oldest first: more than
    /// `retained` are kept, and newer ones subsume them.
    Subsume(Vec<CheckpointId>),
    /// More consecutive failures than `tolerable_failures`: fail the job
    /// (then the restart strategy decides).
    FailJob {
        /// Why, for logs and the job's failure.
        reason: String,
    },
}

/// Where a pending checkpoint is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for acknowledgements.
    Acking,
    /// Every task acknowledged; waiting for an older commit to finish.
    Acknowledged,
    /// The runtime is committing its `_metadata`.
    Committing,
}

#[derive(Debug, Clone)]
struct Pending {
    is_final: bool,
    savepoint: bool,
    acked: Vec<bool>,
    missing: usize,
    /// `None`: the timeout is so long that it never expires.
    deadline: Option<Instant>,
    stage: Stage,
}

/// The final checkpoint of a bounded job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Final {
    /// Sources still running.
    NotRequested,
    /// To trigger at the first poll from this instant on with a free slot.
    Due(Instant),
    /// Triggered, in progress.
    Pending(CheckpointId),
    /// Completed: the job may finish.
    Completed,
}

/// Decides when checkpoints are triggered, completed, aborted and
/// subsumed, and when checkpoint failures fail the job.
///
/// Tasks — the subtasks that must acknowledge every checkpoint — are
/// numbered `0..tasks`.
#[derive(Debug, Clone)]
pub struct CheckpointCoordinator {
    interval: Option<Duration>,
    timeout: Duration,
    min_pause: Duration,
    max_concurrent: usize,
    tolerable_failures: u32,
    retained: usize,
    tasks: usize,
    next_id: CheckpointId,
    /// `None`: no periodic trigger will ever be due (off, or overflow).
    next_periodic: Option<Instant>,
    last_completion: Option<Instant>,
    pending: BTreeMap<CheckpointId, Pending>,
    /// Completed checkpoints still kept, oldest first.
    completed: VecDeque<CheckpointId>,
    latest_completed: Option<CheckpointId>,
    consecutive_failures: u32,
    final_checkpoint: Final,
    /// Savepoints asked for and not yet triggered.
    savepoints_wanted: usize,
    /// A stop with drain asked for: the final checkpoint is a savepoint.
    drain: bool,
}

impl CheckpointCoordinator {
    /// A coordinator for `tasks` tasks.
    ///
    /// `first_id`: the id of the first checkpoint to trigger (1, or one
    /// past the restored checkpoint). `completed`: ids of completed
    /// checkpoints already in storage, oldest first (after a restore), so
    /// they are subsumed in turn as new checkpoints complete. The first
    /// periodic checkpoint is due one `interval` after `now`.
    ///
    /// `max_concurrent` and `retained` of 0, which the job file rejects,
    /// are taken as 1.
    ///
    /// # Panics
    /// If `completed` is not strictly increasing or does not end below
    /// `first_id`: ids only grow, across restores too.
    pub fn new(
        config: &CheckpointConfig,
        tasks: usize,
        first_id: CheckpointId,
        completed: Vec<CheckpointId>,
        now: Instant,
    ) -> Self {
        assert!(
            completed.windows(2).all(|w| w[0] < w[1])
                && completed.last().is_none_or(|&last| last < first_id),
            "checkpoint ids only grow: completed {completed:?} must be increasing and below the first id {first_id}"
        );
        CheckpointCoordinator {
            interval: config.interval,
            timeout: config.timeout,
            min_pause: config.min_pause,
            max_concurrent: config.max_concurrent.max(1) as usize,
            tolerable_failures: config.tolerable_failures,
            retained: config.retained.max(1) as usize,
            tasks,
            next_id: first_id,
            next_periodic: config.interval.and_then(|i| now.checked_add(i)),
            last_completion: None,
            latest_completed: completed.last().copied(),
            completed: completed.into(),
            pending: BTreeMap::new(),
            consecutive_failures: 0,
            final_checkpoint: Final::NotRequested,
            savepoints_wanted: 0,
            drain: false,
        }
    }

    /// Time-driven decisions at `now`: expiry of pending checkpoints past
    /// their timeout, then at most one trigger — the final checkpoint if it
    /// is due, else a periodic one when `interval` has passed since the
    /// last trigger, `min_pause` since the last completion, and fewer than
    /// `max_concurrent` checkpoints are pending.
    pub fn poll(&mut self, now: Instant) -> Vec<Decision> {
        let mut out = Vec::new();
        if !self.active() {
            return out;
        }
        let expired: Vec<CheckpointId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.stage != Stage::Committing && p.deadline.is_some_and(|d| d <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            let reason = format!(
                "expired: not acknowledged by every task within its timeout of {}",
                humantime::format_duration(self.timeout)
            );
            self.fail(id, reason, now, &mut out);
        }
        self.advance_commit(&mut out);
        if self.savepoints_wanted > 0 && self.pending.is_empty() {
            self.trigger(now, false, true, &mut out);
        } else if self.trigger_due().is_some_and(|due| due <= now) {
            let is_final = matches!(self.final_checkpoint, Final::Due(_));
            self.trigger(now, is_final, is_final && self.drain, &mut out);
        }
        out
    }

    /// A savepoint is asked for: it triggers as soon as no checkpoint is
    /// in progress (at once if none is), whatever the interval and the
    /// minimum pause, and periodic checkpoints wait while it runs. Works
    /// with periodic checkpoints off too.
    pub fn request_savepoint(&mut self, now: Instant) -> Vec<Decision> {
        self.savepoints_wanted += 1;
        self.poll(now)
    }

    /// A stop with drain is asked for: the final checkpoint, taken once
    /// every source has ended, is a savepoint.
    pub fn request_drain(&mut self) {
        self.drain = true;
    }

    /// Task `task` acknowledged checkpoint `id` (its snapshot is durable).
    /// Acknowledgements of unknown or aborted checkpoints and duplicates
    /// are ignored: late acknowledgements happen.
    ///
    /// # Panics
    /// If `task` is not below the `tasks` given to [`new`](Self::new).
    pub fn acknowledge(&mut self, id: CheckpointId, task: usize, _now: Instant) -> Vec<Decision> {
        self.check_task(task);
        let mut out = Vec::new();
        let Some(p) = self.pending.get_mut(&id) else {
            return out;
        };
        if p.stage != Stage::Acking || p.acked[task] {
            return out;
        }
        p.acked[task] = true;
        p.missing -= 1;
        if p.missing == 0 {
            p.stage = Stage::Acknowledged;
            self.advance_commit(&mut out);
        }
        out
    }

    /// Task `task` could not take its part of checkpoint `id`: abort it,
    /// counting a failure. Declines of unknown, aborted or fully
    /// acknowledged checkpoints are ignored.
    ///
    /// # Panics
    /// If `task` is not below the `tasks` given to [`new`](Self::new).
    pub fn decline(
        &mut self,
        id: CheckpointId,
        task: usize,
        reason: &str,
        now: Instant,
    ) -> Vec<Decision> {
        self.check_task(task);
        let mut out = Vec::new();
        if self
            .pending
            .get(&id)
            .is_some_and(|p| p.stage == Stage::Acking)
        {
            self.fail(
                id,
                format!("declined by task {task}: {reason}"),
                now,
                &mut out,
            );
            self.advance_commit(&mut out);
        }
        out
    }

    /// The runtime committed checkpoint `id`'s `_metadata`: it is complete.
    /// Returns aborts of older pending checkpoints (subsumed by this one),
    /// [`Decision::NotifyComplete`], [`Decision::Subsume`] of completed
    /// checkpoints beyond `retained`, and the next commit if one waits.
    ///
    /// # Panics
    /// If `id` is not being committed (no [`Decision::AllAcknowledged`] for
    /// it, or already reported).
    pub fn completed(&mut self, id: CheckpointId, now: Instant) -> Vec<Decision> {
        let p = self.take_committing(id, "completed");
        let mut out = Vec::new();
        if p.savepoint {
            if p.is_final {
                self.final_checkpoint = Final::Completed;
            }
            out.push(Decision::SavepointCompleted(id));
            self.advance_commit(&mut out);
            return out;
        }
        let older: Vec<CheckpointId> = self.pending.range(..id).map(|(&o, _)| o).collect();
        for o in older {
            self.pending.remove(&o);
            out.push(Decision::Abort {
                id: o,
                reason: format!("subsumed by checkpoint {id}"),
            });
        }
        self.last_completion = Some(now);
        self.consecutive_failures = 0;
        self.latest_completed = Some(id);
        if p.is_final {
            self.final_checkpoint = Final::Completed;
        }
        out.push(Decision::NotifyComplete(id));
        self.completed.push_back(id);
        let excess = self.completed.len().saturating_sub(self.retained);
        if excess > 0 {
            out.push(Decision::Subsume(self.completed.drain(..excess).collect()));
        }
        self.advance_commit(&mut out);
        out
    }

    /// Committing checkpoint `id`'s `_metadata` failed: abort it, counting
    /// a failure. A failed final checkpoint is triggered again at the next
    /// poll.
    ///
    /// # Panics
    /// If `id` is not being committed (no [`Decision::AllAcknowledged`] for
    /// it, or already reported).
    pub fn commit_failed(&mut self, id: CheckpointId, reason: &str, now: Instant) -> Vec<Decision> {
        let p = self.take_committing(id, "commit_failed");
        // Back in the map so `fail` handles it like any other failure.
        self.pending.insert(id, p);
        let mut out = Vec::new();
        self.fail(id, format!("commit failed: {reason}"), now, &mut out);
        self.advance_commit(&mut out);
        out
    }

    /// Every source has ended: trigger the final checkpoint at once,
    /// ignoring `interval` and `min_pause` (but not `max_concurrent`: with
    /// no free slot it fires at the first poll after one frees). If it
    /// fails, the next poll triggers another final one. Periodic
    /// checkpoints stop. With checkpoints off this does nothing (and
    /// [`final_completed`](Self::final_completed) is already true).
    pub fn sources_finished(&mut self, now: Instant) -> Vec<Decision> {
        let mut out = Vec::new();
        if !(self.enabled() || self.drain) || self.final_checkpoint != Final::NotRequested {
            return out;
        }
        self.final_checkpoint = Final::Due(now);
        if self.pending.len() < self.max_concurrent {
            self.trigger(now, true, self.drain, &mut out);
        }
        out
    }

    /// When [`poll`](Self::poll) next has something to do (a trigger or an
    /// expiry; possibly already past), or `None` when only other events can
    /// change anything.
    pub fn next_wakeup(&self) -> Option<Instant> {
        if !self.active() {
            return None;
        }
        let expiry = self
            .pending
            .values()
            .filter(|p| p.stage != Stage::Committing)
            .filter_map(|p| p.deadline)
            .min();
        match (expiry, self.trigger_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ids of the checkpoints in progress (triggered, not yet completed or
    /// aborted), oldest first.
    pub fn pending(&self) -> Vec<CheckpointId> {
        self.pending.keys().copied().collect()
    }

    /// The newest completed checkpoint, restored ones included.
    pub fn latest_completed(&self) -> Option<CheckpointId> {
        self.latest_completed
    }

    /// Whether the final checkpoint completed, so a bounded job may finish.
    /// Always true with checkpoints off.
    pub fn final_completed(&self) -> bool {
        !(self.enabled() || self.drain) || self.final_checkpoint == Final::Completed
    }

    fn enabled(&self) -> bool {
        self.interval.is_some()
    }

    /// Whether anything can happen: periodic checkpoints, or savepoints
    /// asked for or in progress.
    fn active(&self) -> bool {
        self.enabled() || self.drain || self.savepoints_wanted > 0 || !self.pending.is_empty()
    }

    fn check_task(&self, task: usize) {
        assert!(
            task < self.tasks,
            "task index {task} out of range: the coordinator was built for {} tasks",
            self.tasks
        );
    }

    /// When the next trigger is due, if a slot is free for it.
    fn trigger_due(&self) -> Option<Instant> {
        if self.pending.len() >= self.max_concurrent {
            return None;
        }
        match self.final_checkpoint {
            Final::Due(at) => Some(at),
            Final::Pending(_) | Final::Completed => None,
            Final::NotRequested => {
                let periodic = self.next_periodic?;
                match self.last_completion {
                    None => Some(periodic),
                    Some(c) => Some(periodic.max(c.checked_add(self.min_pause)?)),
                }
            }
        }
    }

    fn trigger(&mut self, now: Instant, is_final: bool, savepoint: bool, out: &mut Vec<Decision>) {
        let id = self.next_id;
        self.next_id = id.next();
        self.pending.insert(
            id,
            Pending {
                is_final,
                savepoint,
                acked: vec![false; self.tasks],
                missing: self.tasks,
                deadline: now.checked_add(self.timeout),
                stage: if self.tasks == 0 {
                    Stage::Acknowledged
                } else {
                    Stage::Acking
                },
            },
        );
        if is_final {
            self.final_checkpoint = Final::Pending(id);
        } else if savepoint {
            self.savepoints_wanted -= 1;
        } else {
            self.next_periodic = self.interval.and_then(|i| now.checked_add(i));
        }
        out.push(Decision::Trigger {
            id,
            is_final,
            savepoint,
        });
        self.advance_commit(out);
    }

    /// Starts the commit of the oldest fully acknowledged checkpoint unless
    /// a commit is in progress.
    fn advance_commit(&mut self, out: &mut Vec<Decision>) {
        if self.pending.values().any(|p| p.stage == Stage::Committing) {
            return;
        }
        if let Some((&id, p)) = self
            .pending
            .iter_mut()
            .find(|(_, p)| p.stage == Stage::Acknowledged)
        {
            p.stage = Stage::Committing;
            out.push(Decision::AllAcknowledged(id));
        }
    }

    fn take_committing(&mut self, id: CheckpointId, call: &str) -> Pending {
        match self.pending.remove(&id) {
            Some(p) if p.stage == Stage::Committing => p,
            other => panic!(
                "{call}({id}) for a checkpoint that is not being committed ({:?}): \
                 the runtime reports a commit only after AllAcknowledged, once",
                other.map(|p| p.stage)
            ),
        }
    }

    /// Aborts pending checkpoint `id` as failed; counts the failure and
    /// fails the job when too many failed in a row.
    fn fail(&mut self, id: CheckpointId, reason: String, now: Instant, out: &mut Vec<Decision>) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        if p.is_final {
            self.final_checkpoint = Final::Due(now);
        }
        if p.savepoint {
            // A failed savepoint says nothing about checkpoints' health.
            out.push(Decision::Abort { id, reason });
            return;
        }
        // As Flink's CheckpointFailureManager: a failure older than the
        // latest success says nothing about the job's health now.
        let counts = self.latest_completed.is_none_or(|c| id > c);
        let summary = format!("checkpoint {id} {reason}");
        out.push(Decision::Abort { id, reason });
        if counts {
            self.consecutive_failures += 1;
            if self.consecutive_failures > self.tolerable_failures {
                out.push(Decision::FailJob {
                    reason: format!(
                        "{} consecutive checkpoint failures, more than tolerable_failures = {}; last: {summary}",
                        self.consecutive_failures, self.tolerable_failures
                    ),
                });
                self.consecutive_failures = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn id(n: u64) -> CheckpointId {
        CheckpointId(n)
    }

    fn config(interval_ms: u64) -> CheckpointConfig {
        CheckpointConfig {
            interval: Some(ms(interval_ms)),
            timeout: ms(1000),
            ..CheckpointConfig::default()
        }
    }

    /// A coordinator and a clock that tests advance by hand.
    struct Harness {
        c: CheckpointCoordinator,
        t0: Instant,
        now: Instant,
        tasks: usize,
    }

    impl Harness {
        fn new(config: CheckpointConfig, tasks: usize) -> Self {
            Self::restored(config, tasks, id(1), vec![])
        }

        fn restored(
            config: CheckpointConfig,
            tasks: usize,
            first: CheckpointId,
            completed: Vec<CheckpointId>,
        ) -> Self {
            let t0 = Instant::now();
            Harness {
                c: CheckpointCoordinator::new(&config, tasks, first, completed, t0),
                t0,
                now: t0,
                tasks,
            }
        }

        fn at(&mut self, ms_since_start: u64) -> Vec<Decision> {
            self.now = self.t0 + ms(ms_since_start);
            self.c.poll(self.now)
        }

        /// Every task acknowledges `n`; returns the decisions of the last.
        fn ack_all(&mut self, n: u64) -> Vec<Decision> {
            let mut last = Vec::new();
            for task in 0..self.tasks {
                last = self.c.acknowledge(id(n), task, self.now);
            }
            last
        }

        fn complete(&mut self, n: u64) -> Vec<Decision> {
            self.c.completed(id(n), self.now)
        }

        /// Moves the clock to `ms_since_start` and returns that instant.
        fn now(&mut self, ms_since_start: u64) -> Instant {
            self.now = self.t0 + ms(ms_since_start);
            self.now
        }

        /// Acknowledged by all and committed.
        fn finish(&mut self, n: u64) -> Vec<Decision> {
            assert_eq!(self.ack_all(n), [Decision::AllAcknowledged(id(n))]);
            self.complete(n)
        }
    }

    fn trigger(n: u64) -> Decision {
        Decision::Trigger {
            id: id(n),
            is_final: false,
            savepoint: false,
        }
    }

    fn final_trigger(n: u64) -> Decision {
        Decision::Trigger {
            id: id(n),
            is_final: true,
            savepoint: false,
        }
    }

    #[test]
    fn default_config_is_off_with_flinks_defaults() {
        let c = CheckpointConfig::default();
        assert!(!c.enabled());
        assert_eq!(c.timeout, Duration::from_secs(600));
        assert_eq!(c.mode, CheckpointingMode::ExactlyOnce);
        assert_eq!(
            (c.max_concurrent, c.retained, c.tolerable_failures),
            (1, 1, 0)
        );
        assert_eq!(c.storage, "weir-data");
        assert!(config(100).enabled());
    }

    #[test]
    fn triggers_periodically() {
        let mut h = Harness::new(config(100), 2);
        assert_eq!(h.c.next_wakeup(), Some(h.t0 + ms(100)));
        assert_eq!(h.at(99), []);
        assert_eq!(h.at(100), [trigger(1)]);
        assert_eq!(h.c.pending(), [id(1)]);
        assert_eq!(h.c.acknowledge(id(1), 0, h.now), []);
        assert_eq!(
            h.c.acknowledge(id(1), 1, h.now),
            [Decision::AllAcknowledged(id(1))]
        );
        assert_eq!(h.complete(1), [Decision::NotifyComplete(id(1))]);
        assert_eq!(h.c.latest_completed(), Some(id(1)));
        assert_eq!(h.c.pending(), []);
        // Interval counts from the previous trigger.
        assert_eq!(h.c.next_wakeup(), Some(h.t0 + ms(200)));
        assert_eq!(h.at(150), []);
        assert_eq!(h.at(200), [trigger(2)]);
    }

    #[test]
    fn min_pause_counts_from_the_last_completion() {
        let mut h = Harness::new(
            CheckpointConfig {
                min_pause: ms(80),
                ..config(100)
            },
            1,
        );
        assert_eq!(h.at(100), [trigger(1)]);
        h.now = h.t0 + ms(170);
        h.finish(1);
        // Interval says 200, min pause says 250.
        assert_eq!(h.c.next_wakeup(), Some(h.t0 + ms(250)));
        assert_eq!(h.at(200), []);
        assert_eq!(h.at(249), []);
        assert_eq!(h.at(250), [trigger(2)]);
    }

    #[test]
    fn min_pause_is_not_restarted_by_an_abort() {
        let mut h = Harness::new(
            CheckpointConfig {
                min_pause: ms(500),
                tolerable_failures: 5,
                ..config(100)
            },
            1,
        );
        assert_eq!(h.at(100), [trigger(1)]);
        h.finish(1);
        assert_eq!(h.at(600), [trigger(2)]);
        let d = h.c.decline(id(2), 0, "disk full", h.now);
        assert!(matches!(d[..], [Decision::Abort { .. }]), "{d:?}");
        // As Flink: the pause counts from the completion of 1 (at 100), so
        // the next trigger only waits for the interval.
        assert_eq!(h.c.next_wakeup(), Some(h.t0 + ms(700)));
        assert_eq!(h.at(700), [trigger(3)]);
    }

    #[test]
    fn max_concurrent_blocks_triggers_until_a_slot_frees() {
        let mut h = Harness::new(
            CheckpointConfig {
                max_concurrent: 2,
                ..config(100)
            },
            1,
        );
        assert_eq!(h.at(100), [trigger(1)]);
        assert_eq!(h.at(200), [trigger(2)]);
        assert_eq!(h.at(300), []);
        assert_eq!(h.at(400), []);
        assert_eq!(h.c.pending(), [id(1), id(2)]);
        // Blocked: only the expiry of 1 (triggered at 100) is ahead.
        assert_eq!(h.c.next_wakeup(), Some(h.t0 + ms(1100)));
        h.finish(1);
        // Due since 300: fires at the next poll.
        assert!(h.c.next_wakeup().is_some_and(|w| w <= h.now));
        assert_eq!(h.at(410), [trigger(3)]);
        assert_eq!(h.c.pending(), [id(2), id(3)]);
    }

    #[test]
    fn expiry_aborts_and_with_zero_tolerance_fails_the_job() {
        let mut h = Harness::new(config(100), 2);
        assert_eq!(h.at(100), [trigger(1)]);
        h.c.acknowledge(id(1), 0, h.now);
        assert_eq!(h.c.next_wakeup(), Some(h.t0 + ms(1100)));
        let d = h.at(1100);
        assert_eq!(d.len(), 3, "{d:?}");
        assert_eq!(
            d[0],
            Decision::Abort {
                id: id(1),
                reason: "expired: not acknowledged by every task within its timeout of 1s".into()
            }
        );
        let Decision::FailJob { reason } = &d[1] else {
            panic!("{d:?}")
        };
        assert!(
            reason
                .starts_with("1 consecutive checkpoint failures, more than tolerable_failures = 0"),
            "{reason}"
        );
        // Triggering goes on (the runtime fails the job anyway).
        assert_eq!(d[2], trigger(2));
        // A late acknowledgement of the aborted checkpoint is ignored.
        assert_eq!(h.c.acknowledge(id(1), 1, h.now), []);
    }

    #[test]
    fn expired_checkpoints_count_against_tolerable_failures() {
        // A task that never acknowledges (a guest blocked in a call): every
        // checkpoint expires, and one more than tolerated fails the job,
        // naming the timeout and the count.
        let mut h = Harness::new(
            CheckpointConfig {
                tolerable_failures: 2,
                ..config(100)
            },
            2,
        );
        let fail_job = |d: &[Decision]| {
            d.iter().find_map(|d| match d {
                Decision::FailJob { reason } => Some(reason.clone()),
                _ => None,
            })
        };
        let mut t = 100;
        assert_eq!(h.at(t), [trigger(1)]);
        for n in 1..=3 {
            h.c.acknowledge(id(n), 0, h.now);
            let expiry = h.c.next_wakeup().expect("a pending checkpoint expires");
            assert_eq!(expiry, h.now + ms(1000), "the timeout, from the trigger");
            t += 1000;
            let d = h.at(t);
            assert!(
                d.contains(&Decision::Abort {
                    id: id(n),
                    reason: "expired: not acknowledged by every task within its timeout of 1s"
                        .into()
                }),
                "{d:?}"
            );
            match (n, fail_job(&d)) {
                (1 | 2, None) => {}
                (3, Some(reason)) => {
                    assert!(
                        reason.starts_with(
                            "3 consecutive checkpoint failures, more than tolerable_failures = 2"
                        ) && reason.contains("checkpoint 3 expired")
                            && reason.contains("timeout of 1s"),
                        "{reason}"
                    );
                }
                other => panic!("checkpoint {n}: {other:?}"),
            }
            // The next one triggers at once: the interval has passed.
            assert_eq!(d.last(), Some(&trigger(n + 1)), "{d:?}");
        }
    }

    #[test]
    fn a_fully_acknowledged_checkpoint_does_not_expire_while_committing() {
        let mut h = Harness::new(config(100), 1);
        assert_eq!(h.at(100), [trigger(1)]);
        assert_eq!(h.ack_all(1), [Decision::AllAcknowledged(id(1))]);
        assert_eq!(h.c.next_wakeup(), None);
        assert_eq!(h.at(5000), []);
        assert_eq!(h.complete(1), [Decision::NotifyComplete(id(1))]);
    }

    #[test]
    fn tolerable_failures_counts_consecutive_failures_and_resets_on_success() {
        let mut h = Harness::new(
            CheckpointConfig {
                tolerable_failures: 2,
                ..config(100)
            },
            1,
        );
        let fail_job = |d: &[Decision]| d.iter().any(|d| matches!(d, Decision::FailJob { .. }));
        // Two failures: tolerated.
        assert_eq!(h.at(100), [trigger(1)]);
        assert!(!fail_job(&h.c.decline(id(1), 0, "x", h.now)));
        assert_eq!(h.at(200), [trigger(2)]);
        assert_eq!(h.ack_all(2), [Decision::AllAcknowledged(id(2))]);
        let d = h.c.commit_failed(id(2), "store down", h.now);
        assert_eq!(
            d,
            [Decision::Abort {
                id: id(2),
                reason: "commit failed: store down".into()
            }]
        );
        // A success resets the count.
        assert_eq!(h.at(300), [trigger(3)]);
        h.finish(3);
        for (n, at) in [(4, 400), (5, 500)] {
            assert_eq!(h.at(at), [trigger(n)]);
            assert!(!fail_job(&h.c.decline(id(n), 0, "x", h.now)));
        }
        // The third in a row is one too many.
        assert_eq!(h.at(600), [trigger(6)]);
        let d = h.c.decline(id(6), 0, "x", h.now);
        assert!(fail_job(&d), "{d:?}");
        // Duplicate decline of the aborted checkpoint: ignored.
        assert_eq!(h.c.decline(id(6), 0, "x", h.now), []);
    }

    #[test]
    fn failures_older_than_the_latest_completion_do_not_count() {
        let mut h = Harness::new(
            CheckpointConfig {
                max_concurrent: 2,
                ..config(100)
            },
            2,
        );
        assert_eq!(h.at(100), [trigger(1)]);
        assert_eq!(h.at(200), [trigger(2)]);
        // 2 completes first, subsuming 1.
        assert_eq!(h.ack_all(2), [Decision::AllAcknowledged(id(2))]);
        assert_eq!(
            h.complete(2),
            [
                Decision::Abort {
                    id: id(1),
                    reason: "subsumed by checkpoint 2".into()
                },
                Decision::NotifyComplete(id(2)),
            ]
        );
        // Subsumed, not failed: no FailJob despite zero tolerance, and late
        // acks or declines of 1 are ignored.
        assert_eq!(h.c.acknowledge(id(1), 0, h.now), []);
        assert_eq!(h.c.decline(id(1), 1, "late", h.now), []);
    }

    #[test]
    fn an_abort_does_not_abort_older_pending_checkpoints() {
        let mut h = Harness::new(
            CheckpointConfig {
                max_concurrent: 3,
                tolerable_failures: 9,
                ..config(100)
            },
            2,
        );
        assert_eq!(h.at(100), [trigger(1)]);
        assert_eq!(h.at(200), [trigger(2)]);
        assert_eq!(h.c.decline(id(2), 1, "x", h.now).len(), 1);
        assert_eq!(h.c.pending(), [id(1)]);
        assert_eq!(h.ack_all(1), [Decision::AllAcknowledged(id(1))]);
    }

    #[test]
    fn duplicate_and_unknown_acks_are_ignored() {
        let mut h = Harness::new(config(100), 2);
        assert_eq!(h.at(100), [trigger(1)]);
        assert_eq!(h.c.acknowledge(id(1), 0, h.now), []);
        assert_eq!(h.c.acknowledge(id(1), 0, h.now), []);
        assert_eq!(h.c.acknowledge(id(7), 1, h.now), []);
        assert_eq!(h.c.pending(), [id(1)]);
        assert_eq!(
            h.c.acknowledge(id(1), 1, h.now),
            [Decision::AllAcknowledged(id(1))]
        );
        // Acks after all acknowledged: ignored, no second AllAcknowledged.
        assert_eq!(h.c.acknowledge(id(1), 1, h.now), []);
    }

    #[test]
    fn commits_are_serialised_in_id_order() {
        let mut h = Harness::new(
            CheckpointConfig {
                max_concurrent: 3,
                ..config(100)
            },
            1,
        );
        assert_eq!(h.at(100), [trigger(1)]);
        assert_eq!(h.at(200), [trigger(2)]);
        assert_eq!(h.at(300), [trigger(3)]);
        assert_eq!(h.ack_all(2), [Decision::AllAcknowledged(id(2))]);
        // 3 is acknowledged while 2 commits: it waits its turn.
        assert_eq!(h.ack_all(3), []);
        assert_eq!(
            h.complete(2),
            [
                Decision::Abort {
                    id: id(1),
                    reason: "subsumed by checkpoint 2".into()
                },
                Decision::NotifyComplete(id(2)),
                Decision::AllAcknowledged(id(3)),
            ]
        );
        assert_eq!(
            h.complete(3),
            [
                Decision::NotifyComplete(id(3)),
                Decision::Subsume(vec![id(2)])
            ]
        );
    }

    #[test]
    #[should_panic(expected = "not being committed")]
    fn completing_an_unacknowledged_checkpoint_is_a_broken_invariant() {
        let mut h = Harness::new(config(100), 2);
        h.at(100);
        h.complete(1);
    }

    #[test]
    fn subsumes_beyond_retained_including_restored_checkpoints() {
        let mut h = Harness::restored(
            CheckpointConfig {
                retained: 2,
                ..config(100)
            },
            1,
            id(8),
            vec![id(5), id(6), id(7)],
        );
        assert_eq!(h.c.latest_completed(), Some(id(7)));
        assert_eq!(h.at(100), [trigger(8)]);
        assert_eq!(
            h.finish(8),
            [
                Decision::NotifyComplete(id(8)),
                Decision::Subsume(vec![id(5), id(6)])
            ]
        );
        assert_eq!(h.at(200), [trigger(9)]);
        assert_eq!(
            h.finish(9),
            [
                Decision::NotifyComplete(id(9)),
                Decision::Subsume(vec![id(7)])
            ]
        );
        assert_eq!(h.c.latest_completed(), Some(id(9)));
    }

    #[test]
    fn final_checkpoint_triggers_at_once_and_ends_periodic_ones() {
        let mut h = Harness::new(
            CheckpointConfig {
                min_pause: ms(1000),
                ..config(100)
            },
            1,
        );
        assert_eq!(h.at(100), [trigger(1)]);
        h.finish(1);
        assert!(!h.c.final_completed());
        h.now = h.t0 + ms(120);
        assert_eq!(h.c.sources_finished(h.now), [final_trigger(2)]);
        // Idempotent.
        assert_eq!(h.c.sources_finished(h.now), []);
        assert_eq!(h.at(1000), []);
        h.finish(2);
        assert!(h.c.final_completed());
        assert_eq!(h.c.next_wakeup(), None);
        assert_eq!(h.at(9000), []);
    }

    #[test]
    fn a_failed_final_checkpoint_is_retried_at_the_next_poll() {
        let mut h = Harness::new(
            CheckpointConfig {
                tolerable_failures: 3,
                ..config(100)
            },
            1,
        );
        assert_eq!(h.c.sources_finished(h.now), [final_trigger(1)]);
        assert_eq!(h.c.decline(id(1), 0, "x", h.now).len(), 1);
        assert_eq!(h.c.next_wakeup(), Some(h.now));
        assert_eq!(h.at(0), [final_trigger(2)]);
        // Expiry of the retry: retried again.
        let d = h.at(1000);
        assert!(
            matches!(
                d[0],
                Decision::Abort {
                    id: CheckpointId(2),
                    ..
                }
            ),
            "{d:?}"
        );
        assert_eq!(d[1..], [final_trigger(3)]);
        // A failed commit too.
        assert_eq!(h.ack_all(3), [Decision::AllAcknowledged(id(3))]);
        assert_eq!(h.c.commit_failed(id(3), "x", h.now).len(), 1);
        assert!(!h.c.final_completed());
        assert_eq!(h.at(1001), [final_trigger(4)]);
        h.finish(4);
        assert!(h.c.final_completed());
    }

    #[test]
    fn final_checkpoint_waits_for_a_free_slot() {
        let mut h = Harness::new(config(100), 1);
        assert_eq!(h.at(100), [trigger(1)]);
        assert_eq!(h.c.sources_finished(h.now), []);
        assert_eq!(h.c.next_wakeup(), Some(h.t0 + ms(1100)));
        h.finish(1);
        // The completion of a periodic checkpoint does not end the job.
        assert!(!h.c.final_completed());
        assert_eq!(h.c.next_wakeup(), Some(h.t0 + ms(100)));
        assert_eq!(h.at(101), [final_trigger(2)]);
    }

    #[test]
    fn disabled_checkpoints_never_trigger_and_finish_at_once() {
        let mut h = Harness::new(CheckpointConfig::default(), 2);
        assert_eq!(h.at(1_000_000), []);
        assert_eq!(h.c.sources_finished(h.now), []);
        assert!(h.c.final_completed());
        assert_eq!(h.c.next_wakeup(), None);
    }

    #[test]
    fn next_wakeup_is_the_earlier_of_trigger_and_expiry() {
        let mut h = Harness::new(
            CheckpointConfig {
                max_concurrent: 2,
                timeout: ms(150),
                ..config(100)
            },
            1,
        );
        assert_eq!(h.at(100), [trigger(1)]);
        // Next trigger 200, expiry of 1 at 250.
        assert_eq!(h.c.next_wakeup(), Some(h.t0 + ms(200)));
        assert_eq!(h.at(200), [trigger(2)]);
        // Slots full: expiry of 1 at 250.
        assert_eq!(h.c.next_wakeup(), Some(h.t0 + ms(250)));
    }

    fn savepoint(n: u64) -> Decision {
        Decision::Trigger {
            id: id(n),
            is_final: false,
            savepoint: true,
        }
    }

    #[test]
    fn a_savepoint_waits_for_a_pending_checkpoint_then_blocks_periodic_ones() {
        let mut t = Harness::new(config(100), 1);
        assert_eq!(t.at(100), [trigger(1)]);
        let now = t.now(110);
        assert!(t.c.request_savepoint(now).is_empty());
        assert_eq!(t.ack_all(1), [Decision::AllAcknowledged(id(1))]);
        assert!(t.complete(1).contains(&Decision::NotifyComplete(id(1))));
        assert_eq!(t.at(120), [savepoint(2)]);
        // Periodic checkpoint 3 waits for the savepoint's slot.
        assert!(t.at(250).is_empty());
        assert_eq!(t.ack_all(2), [Decision::AllAcknowledged(id(2))]);
        // A savepoint completes without notifying, subsuming or counting
        // as the latest checkpoint.
        assert_eq!(t.complete(2), [Decision::SavepointCompleted(id(2))]);
        assert_eq!(t.c.latest_completed(), Some(id(1)));
        assert_eq!(t.at(260), [trigger(3)]);
    }

    #[test]
    fn savepoints_work_with_checkpoints_off_and_failures_do_not_count() {
        let mut t = Harness::new(CheckpointConfig::default(), 2);
        assert!(t.at(1000).is_empty());
        let now = t.now(1000);
        assert_eq!(t.c.request_savepoint(now), [savepoint(1)]);
        let now = t.now(1001);
        let d = t.c.decline(id(1), 0, "disk full", now);
        assert!(
            matches!(&d[..], [Decision::Abort { id: i, .. }] if *i == id(1)),
            "{d:?}"
        );
        let now = t.now(1002);
        assert_eq!(t.c.request_savepoint(now), [savepoint(2)]);
        assert_eq!(t.ack_all(2), [Decision::AllAcknowledged(id(2))]);
        assert_eq!(t.complete(2), [Decision::SavepointCompleted(id(2))]);
        assert!(t.c.next_wakeup().is_none());
    }

    #[test]
    fn with_drain_the_final_checkpoint_is_a_savepoint() {
        let mut t = Harness::new(CheckpointConfig::default(), 1);
        t.c.request_drain();
        assert!(!t.c.final_completed());
        let now = t.now(5);
        assert_eq!(
            t.c.sources_finished(now),
            [Decision::Trigger {
                id: id(1),
                is_final: true,
                savepoint: true
            }]
        );
        assert_eq!(t.ack_all(1), [Decision::AllAcknowledged(id(1))]);
        assert_eq!(t.complete(1), [Decision::SavepointCompleted(id(1))]);
        assert!(t.c.final_completed());
    }

    #[test]
    #[should_panic(expected = "task index 2 out of range")]
    fn a_task_index_out_of_range_is_a_broken_invariant() {
        let mut h = Harness::new(config(100), 2);
        h.at(100);
        h.c.acknowledge(id(1), 2, h.now);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::collections::{BTreeSet, HashMap, HashSet};

        #[derive(Debug, Clone)]
        enum Event {
            Advance(u64),
            Poll,
            Ack { pick: usize, task: usize },
            Decline { pick: usize, task: usize },
            Commit { ok: bool },
            SourcesFinished,
        }

        fn event() -> impl Strategy<Value = Event> {
            prop_oneof![
                3 => (1u64..80).prop_map(Event::Advance),
                3 => Just(Event::Poll),
                6 => (0usize..4, 0usize..4).prop_map(|(pick, task)| Event::Ack { pick, task }),
                1 => (0usize..4, 0usize..4).prop_map(|(pick, task)| Event::Decline { pick, task }),
                2 => prop::bool::weighted(0.8).prop_map(|ok| Event::Commit { ok }),
                1 => Just(Event::SourcesFinished),
            ]
        }

        fn setup() -> impl Strategy<Value = (CheckpointConfig, usize, Vec<u64>)> {
            (
                10u64..100,
                20u64..300,
                0u64..60,
                1u32..4,
                0u32..3,
                1u32..4,
                1usize..4,
                0usize..4,
            )
                .prop_map(
                    |(
                        interval,
                        timeout,
                        pause,
                        max_concurrent,
                        tolerable,
                        retained,
                        tasks,
                        restored,
                    )| {
                        let config = CheckpointConfig {
                            interval: Some(ms(interval)),
                            timeout: ms(timeout),
                            min_pause: ms(pause),
                            max_concurrent,
                            tolerable_failures: tolerable,
                            retained,
                            ..CheckpointConfig::default()
                        };
                        (config, tasks, (1..=restored as u64).collect())
                    },
                )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]
            #[test]
            fn invariants_hold_for_any_event_sequence(
                (config, tasks, restored) in setup(),
                events in prop::collection::vec(event(), 1..200),
            ) {
                let t0 = Instant::now();
                let mut now = t0;
                let first = CheckpointId(restored.len() as u64 + 1);
                let restored: Vec<CheckpointId> = restored.into_iter().map(CheckpointId).collect();
                let mut c = CheckpointCoordinator::new(&config, tasks, first, restored.clone(), now);

                // The model, built only from decisions and our own calls.
                let mut last_trigger: Option<CheckpointId> = None;
                let mut acks: HashMap<CheckpointId, HashSet<usize>> = HashMap::new();
                let mut finished: HashSet<CheckpointId> = HashSet::new(); // completed or aborted
                let mut all_acked: BTreeSet<CheckpointId> = BTreeSet::new();
                let mut committing: Option<CheckpointId> = None;
                let mut kept: VecDeque<CheckpointId> = restored.into_iter().collect();
                let mut final_done = false;
                let mut failures = 0u32;
                let mut must_fail = false;

                for e in events {
                    let mut just_committed: Option<CheckpointId> = None;
                    let pending = c.pending();
                    let decisions = match e {
                        Event::Advance(d) => { now += ms(d); Vec::new() }
                        Event::Poll => c.poll(now),
                        Event::Ack { pick, task } => match pending.get(pick % pending.len().max(1)) {
                            Some(&id) if task < tasks => {
                                acks.entry(id).or_default().insert(task);
                                c.acknowledge(id, task, now)
                            }
                            _ => Vec::new(),
                        },
                        Event::Decline { pick, task } => match pending.get(pick % pending.len().max(1)) {
                            Some(&id) if task < tasks => c.decline(id, task, "test", now),
                            _ => Vec::new(),
                        },
                        Event::Commit { ok } => match committing.take() {
                            Some(id) if ok => { just_committed = Some(id); c.completed(id, now) }
                            Some(id) => c.commit_failed(id, "test", now),
                            None => Vec::new(),
                        },
                        Event::SourcesFinished => c.sources_finished(now),
                    };
                    for d in decisions {
                        match d {
                            Decision::Trigger { id, is_final, .. } => {
                                prop_assert!(last_trigger.is_none_or(|l| id > l), "ids grow: {id} after {last_trigger:?}");
                                prop_assert!(id >= first);
                                prop_assert!(!final_done, "trigger {id} after the final checkpoint completed");
                                let _ = is_final;
                                last_trigger = Some(id);
                            }
                            Decision::AllAcknowledged(id) => {
                                prop_assert_eq!(acks.get(&id).map_or(0, HashSet::len), tasks, "{} not acked by all", id);
                                prop_assert!(committing.is_none(), "two commits at once");
                                prop_assert!(all_acked.insert(id), "AllAcknowledged({}) twice", id);
                                committing = Some(id);
                            }
                            Decision::Abort { id, reason } => {
                                prop_assert!(last_trigger.is_some_and(|l| id <= l), "abort of untriggered {}", id);
                                if !reason.starts_with("subsumed") && kept.back().is_none_or(|&k| id > k) {
                                    failures += 1;
                                    must_fail = failures > config.tolerable_failures;
                                }
                                prop_assert!(finished.insert(id), "{} finished twice", id);
                                prop_assert!(Some(id) != committing, "abort of committing {}", id);
                            }
                            Decision::SavepointCompleted(id) => {
                                prop_assert!(false, "savepoint {} completed but none was asked for", id);
                            }
                            Decision::NotifyComplete(id) => {
                                prop_assert_eq!(Some(id), just_committed, "notify without commit");
                                prop_assert!(all_acked.contains(&id));
                                prop_assert!(finished.insert(id), "{} finished twice", id);
                                prop_assert!(kept.back().is_none_or(|&k| id > k), "completions in id order");
                                kept.push_back(id);
                                failures = 0;
                                if c.final_completed() { final_done = true; }
                            }
                            Decision::Subsume(ids) => {
                                for id in ids {
                                    prop_assert_eq!(kept.pop_front(), Some(id), "subsume oldest first");
                                }
                                prop_assert_eq!(kept.len(), config.retained as usize);
                            }
                            Decision::FailJob { .. } => {
                                prop_assert!(must_fail, "FailJob after {} failures", failures);
                                failures = 0;
                                must_fail = false;
                            }
                        }
                    }
                    prop_assert!(!must_fail, "{} consecutive failures without FailJob", failures);
                    prop_assert!(c.pending().len() <= config.max_concurrent as usize, "too many pending: {:?}", c.pending());
                    if just_committed.is_some() {
                        prop_assert!(kept.len() <= config.retained as usize, "kept {kept:?}");
                    }
                    prop_assert_eq!(c.latest_completed(), kept.back().copied());
                    for id in c.pending() {
                        prop_assert!(!finished.contains(&id));
                    }
                    if let Some(w) = c.next_wakeup() {
                        // Nothing due before the announced wakeup.
                        let mut probe = c.clone();
                        if w > now {
                            prop_assert_eq!(probe.poll(now), vec![]);
                        }
                    }
                }
            }
        }
    }
}
