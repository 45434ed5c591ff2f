//! The savepoint and stop-with-savepoint state machine: which request a
//! triggered savepoint answers, what a failure undoes, what a completion
//! tells the job. Pure: who asked (`R`, a reply handle) and where it goes
//! (`T`, a storage location) are opaque here; the runtime carries the
//! [`Effect`]s out in order.
//!
//! The coordinator ([`super::coordinator`]) decides *when* a savepoint is
//! triggered (after a pending checkpoint, one at a time); this decides
//! *for whom*. Requests are answered in the order they came; a stop with
//! drain has no place in that queue: its savepoint is the job's final
//! checkpoint, triggered once every source has ended.

use std::collections::{BTreeMap, VecDeque};

use crate::checkpoint::CheckpointId;
use crate::runtime::StopMode;

/// What the runtime must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect<R, T> {
    /// Answer `requester` at once: the request cannot be served (a user
    /// error). If it asked to stop, the stop is undone.
    Refuse {
        /// Who asked.
        requester: R,
        /// Why, naming what to fix.
        message: String,
        /// It asked to stop the job.
        stop: bool,
    },
    /// The job is stopping: no new stop may start.
    Stopping,
    /// Ask the coordinator for a savepoint (it triggers one as soon as it
    /// may).
    RequestSavepoint,
    /// End the sources' input; the coordinator's final checkpoint, once
    /// they all ended, is the savepoint.
    Drain,
    /// Delete what savepoint `id` wrote to `target`: it failed.
    Discard {
        /// The savepoint.
        id: CheckpointId,
        /// Where it was being written.
        target: T,
    },
    /// A stop failed: the sources resume and the job runs on.
    Resume,
    /// Answer `requester`: savepoint `id` failed while it was taken (not
    /// the requester's fault; asking again may succeed).
    Fail {
        /// Who asked.
        requester: R,
        /// The savepoint.
        id: CheckpointId,
        /// Why.
        reason: String,
    },
    /// Answer `requester`: savepoint `id` is complete in `target`.
    Answer {
        /// Who asked.
        requester: R,
        /// The savepoint.
        id: CheckpointId,
        /// Where it is.
        target: T,
    },
    /// The job stopped with savepoint `id`: tell every task (sinks commit
    /// what it pre-committed, suspended sources end).
    Stopped {
        /// The savepoint.
        id: CheckpointId,
        /// Where it is.
        target: T,
    },
}

/// A savepoint between trigger and completion.
#[derive(Debug, Clone)]
struct Taking<R, T> {
    target: T,
    /// Who asked; `None` once answered (a drain retried after a failed
    /// final savepoint was answered already).
    requester: Option<R>,
    stop: Option<StopMode>,
}

/// The savepoint requests of one job, from request to answer.
#[derive(Debug, Clone)]
pub struct Savepoints<R, T> {
    /// Asked for, not yet triggered, oldest first.
    queued: VecDeque<(R, T, Option<StopMode>)>,
    /// A stop with drain: its target, and who asked until answered.
    drain: Option<(T, Option<R>)>,
    taking: BTreeMap<CheckpointId, Taking<R, T>>,
}

impl<R, T> Default for Savepoints<R, T> {
    fn default() -> Self {
        Self {
            queued: VecDeque::new(),
            drain: None,
            taking: BTreeMap::new(),
        }
    }
}

impl<R, T: Clone> Savepoints<R, T> {
    /// A request from `requester` for a savepoint into `target` (`Err`:
    /// why no target can be used), stopping the job with `stop`.
    /// `finishing`: every source has ended, so no savepoint can be taken.
    pub fn request(
        &mut self,
        requester: R,
        target: Result<T, String>,
        stop: Option<StopMode>,
        finishing: Option<&str>,
    ) -> Vec<Effect<R, T>> {
        let refuse = |requester, message| {
            vec![Effect::Refuse {
                requester,
                message,
                stop: stop.is_some(),
            }]
        };
        if let Some(job) = finishing {
            return refuse(
                requester,
                format!(
                    "job `{job}` is finishing (all its input ended): no savepoint can be taken now"
                ),
            );
        }
        let target = match target {
            Ok(t) => t,
            Err(message) => return refuse(requester, message),
        };
        let mut out = Vec::new();
        if stop.is_some() {
            out.push(Effect::Stopping);
        }
        if stop == Some(StopMode::Drain) {
            self.drain = Some((target, Some(requester)));
            out.push(Effect::Drain);
        } else {
            self.queued.push_back((requester, target, stop));
            out.push(Effect::RequestSavepoint);
        }
        out
    }

    /// Savepoint `id` was triggered (`is_final`: the final checkpoint of a
    /// drain): it answers the oldest queued request, or the drain. Returns
    /// its target and stop mode.
    ///
    /// # Panics
    /// If nothing asked for it (the coordinator triggers a savepoint only
    /// for a request).
    pub fn triggered(&mut self, id: CheckpointId, is_final: bool) -> (T, Option<StopMode>) {
        let taking = if is_final {
            let (target, requester) = self
                .drain
                .as_mut()
                .expect("invariant: a final savepoint follows a drain request");
            Taking {
                target: target.clone(),
                requester: requester.take(),
                stop: Some(StopMode::Drain),
            }
        } else {
            let (requester, target, stop) = self
                .queued
                .pop_front()
                .expect("invariant: a savepoint is triggered for a queued request");
            Taking {
                target,
                requester: Some(requester),
                stop,
            }
        };
        let out = (taking.target.clone(), taking.stop);
        self.taking.insert(id, taking);
        out
    }

    /// Savepoint `id` failed (expired, declined, its upload or commit
    /// failed): discard it, undo a suspend, tell whoever asked. A drain
    /// stays requested (its sources have ended; the coordinator retries
    /// the final savepoint).
    pub fn failed(&mut self, id: CheckpointId, reason: &str) -> Vec<Effect<R, T>> {
        let Some(t) = self.taking.remove(&id) else {
            return Vec::new();
        };
        let mut out = vec![Effect::Discard {
            id,
            target: t.target,
        }];
        if t.stop == Some(StopMode::Suspend) {
            out.push(Effect::Resume);
        }
        if let Some(requester) = t.requester {
            out.push(Effect::Fail {
                requester,
                id,
                reason: reason.to_owned(),
            });
        }
        out
    }

    /// Savepoint `id` completed: a stop ends the job with it; whoever
    /// asked gets its location.
    pub fn completed(&mut self, id: CheckpointId) -> Vec<Effect<R, T>> {
        let Some(t) = self.taking.remove(&id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if t.stop.is_some() {
            out.push(Effect::Stopped {
                id,
                target: t.target.clone(),
            });
        }
        if let Some(requester) = t.requester {
            out.push(Effect::Answer {
                requester,
                id,
                target: t.target,
            });
        }
        out
    }

    /// Whether savepoint `id` is being taken.
    pub fn is_taking(&self, id: CheckpointId) -> bool {
        self.taking.contains_key(&id)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::snapshot::protocol::coordinator::{
        CheckpointConfig, CheckpointCoordinator, Decision,
    };

    /// A requester: a name. A target: a directory name.
    type Book = Savepoints<&'static str, &'static str>;

    /// The coordinator and the savepoint book together, as the runtime
    /// drives them, over an in-memory store of savepoint directories.
    struct Harness {
        coordinator: CheckpointCoordinator,
        book: Book,
        now: Instant,
        /// Savepoint directories with something written in them.
        store: BTreeSet<String>,
        /// What each requester was told.
        answers: Vec<(&'static str, Result<String, String>)>,
        running: bool,
        stopped_with: Option<CheckpointId>,
    }

    impl Harness {
        fn new(interval: Option<Duration>) -> Self {
            let now = Instant::now();
            let config = CheckpointConfig {
                interval,
                max_concurrent: 2,
                ..CheckpointConfig::default()
            };
            Self {
                coordinator: CheckpointCoordinator::new(
                    &config,
                    2,
                    CheckpointId(1),
                    Vec::new(),
                    now,
                ),
                book: Book::default(),
                now,
                store: BTreeSet::new(),
                answers: Vec::new(),
                running: true,
                stopped_with: None,
            }
        }

        /// Carries effects out; returns the decisions they led to.
        fn effects(&mut self, effects: Vec<Effect<&'static str, &'static str>>) -> Vec<Decision> {
            let mut decisions = Vec::new();
            for e in effects {
                match e {
                    Effect::Refuse {
                        requester, message, ..
                    } => {
                        self.answers.push((requester, Err(message)));
                    }
                    Effect::Stopping => self.running = false,
                    Effect::RequestSavepoint => {
                        decisions.extend(self.coordinator.request_savepoint(self.now));
                    }
                    Effect::Drain => self.coordinator.request_drain(),
                    Effect::Discard { id, target } => {
                        self.store.remove(&format!("{target}/sp-{id}"));
                    }
                    Effect::Resume => self.running = true,
                    Effect::Fail {
                        requester, reason, ..
                    } => {
                        self.answers.push((requester, Err(reason)));
                    }
                    Effect::Answer {
                        requester,
                        id,
                        target,
                    } => {
                        self.answers
                            .push((requester, Ok(format!("{target}/sp-{id}"))));
                    }
                    Effect::Stopped { id, .. } => self.stopped_with = Some(id),
                }
            }
            decisions
        }

        /// Triggers what the decisions say: a savepoint takes its request
        /// and starts writing to its target. Returns the ids triggered.
        fn trigger(&mut self, decisions: &[Decision]) -> Vec<(CheckpointId, bool)> {
            let mut out = Vec::new();
            for d in decisions {
                if let Decision::Trigger {
                    id,
                    is_final,
                    savepoint,
                } = *d
                {
                    if savepoint {
                        let (target, _) = self.book.triggered(id, is_final);
                        self.store.insert(format!("{target}/sp-{id}"));
                    }
                    out.push((id, savepoint));
                }
            }
            out
        }

        /// Both tasks acknowledge `id`; its commit succeeds or fails.
        fn ack_all(&mut self, id: CheckpointId, commit_ok: bool) -> Vec<Decision> {
            let mut d = self.coordinator.acknowledge(id, 0, self.now);
            d.extend(self.coordinator.acknowledge(id, 1, self.now));
            assert!(d.contains(&Decision::AllAcknowledged(id)), "{d:?}");
            let mut d = if commit_ok {
                self.coordinator.completed(id, self.now)
            } else {
                self.coordinator
                    .commit_failed(id, "storage failure", self.now)
            };
            // The runtime polls after every message.
            d.extend(self.coordinator.poll(self.now));
            d
        }

        fn settle(&mut self, decisions: Vec<Decision>) {
            for d in decisions {
                match d {
                    Decision::SavepointCompleted(id) => {
                        let e = self.book.completed(id);
                        self.effects(e);
                    }
                    Decision::Abort { id, reason } => {
                        let e = self.book.failed(id, &reason);
                        self.effects(e);
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn a_savepoint_asked_for_during_a_checkpoint_follows_it_and_answers_its_requester() {
        let mut h = Harness::new(Some(Duration::from_secs(1)));
        h.now += Duration::from_secs(1);
        let d = h.coordinator.poll(h.now);
        let checkpoint = h.trigger(&d);
        assert_eq!(checkpoint, [(CheckpointId(1), false)]);
        // Two requests while checkpoint 1 is pending: answered in order.
        let e = h.book.request("alice", Ok("/sp"), None, None);
        let d = h.effects(e);
        assert!(h.trigger(&d).is_empty(), "waits for the pending checkpoint");
        let e = h.book.request("bob", Ok("/other"), None, None);
        let d = h.effects(e);
        assert!(h.trigger(&d).is_empty());
        let d = h.ack_all(CheckpointId(1), true);
        let triggered = h.trigger(&d);
        assert_eq!(triggered, [(CheckpointId(2), true)]);
        let d = h.ack_all(CheckpointId(2), true);
        h.settle(d.clone());
        let triggered = h.trigger(&d);
        assert_eq!(triggered, [(CheckpointId(3), true)], "bob's, next");
        let d = h.ack_all(CheckpointId(3), true);
        h.settle(d);
        assert_eq!(
            h.answers,
            [
                ("alice", Ok("/sp/sp-2".to_owned())),
                ("bob", Ok("/other/sp-3".to_owned()))
            ]
        );
        assert!(h.running && h.stopped_with.is_none());
    }

    #[test]
    fn a_stop_without_drain_suspends_and_a_failed_upload_resumes_the_job() {
        let mut h = Harness::new(None);
        let e = h
            .book
            .request("ops", Ok("/sp"), Some(StopMode::Suspend), None);
        let d = h.effects(e);
        assert!(!h.running, "stopping");
        let triggered = h.trigger(&d);
        assert_eq!(triggered, [(CheckpointId(1), true)]);
        assert!(h.store.contains("/sp/sp-1"));
        // A task's upload fails: it declines, the savepoint is aborted.
        let d = h
            .coordinator
            .decline(CheckpointId(1), 1, "uploading: storage failure", h.now);
        h.settle(d);
        assert!(h.running, "the stop failed: the job goes on");
        assert!(h.store.is_empty(), "what it wrote is discarded");
        assert!(matches!(&h.answers[..], [("ops", Err(m))] if m.contains("storage failure")));
        // Asked again, it stops.
        let e = h
            .book
            .request("ops", Ok("/sp"), Some(StopMode::Suspend), None);
        let d = h.effects(e);
        let (id, _) = h.trigger(&d)[0];
        let d = h.ack_all(id, true);
        h.settle(d);
        assert_eq!(h.stopped_with, Some(id));
        assert_eq!(h.answers[1], ("ops", Ok(format!("/sp/sp-{id}"))));
    }

    #[test]
    fn a_stop_with_drain_is_the_final_checkpoint_and_survives_a_failed_commit() {
        let mut h = Harness::new(Some(Duration::from_secs(1)));
        let e = h
            .book
            .request("ops", Ok("/sp"), Some(StopMode::Drain), None);
        let d = h.effects(e);
        assert!(d.is_empty(), "nothing triggers until the sources ended");
        assert!(!h.running);
        let d = h.coordinator.sources_finished(h.now);
        let (id, savepoint) = h.trigger(&d)[0];
        assert!(savepoint);
        // Its commit fails: the requester hears of it; the final savepoint
        // is retried (the sources have ended) and ends the job.
        let d = h.ack_all(id, false);
        h.settle(d.clone());
        assert!(matches!(&h.answers[..], [("ops", Err(_))]));
        let (again, _) = h.trigger(&d)[0];
        assert!(again > id);
        let d = h.ack_all(again, true);
        h.settle(d);
        assert_eq!(h.stopped_with, Some(again));
        assert_eq!(h.answers.len(), 1, "answered once, when it failed");
        assert!(h.coordinator.final_completed());
    }

    #[test]
    fn requests_that_cannot_be_served_are_refused_at_once() {
        let mut book = Book::default();
        let e = book.request("a", Ok("/sp"), Some(StopMode::Suspend), Some("wordcount"));
        assert!(
            matches!(&e[..], [Effect::Refuse { requester: "a", stop: true, message }]
            if message.contains("job `wordcount` is finishing"))
        );
        let e = book.request("b", Err("no savepoint directory".into()), None, None);
        assert_eq!(
            e,
            [Effect::Refuse {
                requester: "b",
                message: "no savepoint directory".into(),
                stop: false
            }]
        );
        assert!(!book.is_taking(CheckpointId(1)));
        // Unknown ids change nothing.
        assert!(book.failed(CheckpointId(9), "x").is_empty());
        assert!(book.completed(CheckpointId(9)).is_empty());
    }
}
