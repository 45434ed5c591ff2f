//! Restart strategies: after a task failure, whether the job restarts from
//! its latest completed checkpoint and after how long, as Flink's
//! `RestartBackoffTimeStrategy` implementations decide it.
//!
//! Pure decisions with time and randomness injected: no clock, no threads,
//! no I/O. The runtime calls [`RestartTracker::on_failure`] once per job
//! failure and sleeps for the delay it returns.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Flink's default delay before a restart (`fixed-delay`, `failure-rate`).
pub const DEFAULT_DELAY: Duration = Duration::from_secs(1);
/// Flink's default `fixed-delay` attempts.
pub const DEFAULT_ATTEMPTS: u32 = 1;
/// Flink's default first delay of `exponential-backoff`.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Flink's default longest delay of `exponential-backoff`.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Flink's default growth per failure of `exponential-backoff` (since 1.19).
pub const DEFAULT_MULTIPLIER: f64 = 1.5;
/// Flink's default jitter of `exponential-backoff` (since 1.19).
pub const DEFAULT_JITTER: f64 = 0.1;
/// Flink's default healthy run that resets `exponential-backoff`.
pub const DEFAULT_RESET_AFTER: Duration = Duration::from_secs(3600);
/// Flink's default failures per interval of `failure-rate`.
pub const DEFAULT_MAX_FAILURES: u32 = 1;
/// Flink's default window of `failure-rate`.
pub const DEFAULT_FAILURE_INTERVAL: Duration = Duration::from_secs(60);

/// How a failed job is restarted (Flink's `restart-strategy`).
#[derive(Debug, Clone, PartialEq)]
pub enum RestartStrategy {
    /// Never restart: the first failure fails the job.
    None,
    /// Restart up to `attempts` times, waiting `delay` before each restart.
    FixedDelay {
        /// Restarts allowed in all; the failure after the last one fails the job.
        attempts: u32,
        /// Wait before each restart.
        delay: Duration,
    },
    /// Restart forever, waiting longer after each failure that follows
    /// soon after the previous one (Flink's `exponential-delay`).
    ExponentialBackoff {
        /// The first delay, and the delay after a reset.
        initial: Duration,
        /// The delay never grows beyond this (jitter included).
        max: Duration,
        /// Each failure multiplies the delay by this (> 1).
        multiplier: f64,
        /// The delay varies randomly by up to this fraction of it (0 – 1),
        /// so many jobs failing together do not restart together.
        jitter: f64,
        /// A run this long without failure resets the delay to `initial`.
        reset_after: Duration,
    },
    /// Restart unless more than `max_failures` failures happened within
    /// the last `interval`, waiting `delay` before each restart.
    FailureRate {
        /// Failures tolerated within `interval`; one more fails the job.
        max_failures: u32,
        /// The sliding window failures are counted in.
        interval: Duration,
        /// Wait before each restart.
        delay: Duration,
    },
}

impl RestartStrategy {
    /// Flink's default exponential backoff: 1 s initial, 1 min max,
    /// ×1.5, jitter 0.1, reset after 1 h
    /// (`restart-strategy.exponential-delay.*` since Flink 1.19).
    pub fn default_exponential_backoff() -> Self {
        RestartStrategy::ExponentialBackoff {
            initial: DEFAULT_INITIAL_BACKOFF,
            max: DEFAULT_MAX_BACKOFF,
            multiplier: DEFAULT_MULTIPLIER,
            jitter: DEFAULT_JITTER,
            reset_after: DEFAULT_RESET_AFTER,
        }
    }

    /// The strategy of a job whose file has no `[restart]` section, as in
    /// Flink: exponential backoff when checkpointing is enabled (a restart
    /// resumes from a checkpoint), no restart when it is not (a restart
    /// would replay the whole input).
    pub fn default_for(checkpointing_enabled: bool) -> Self {
        if checkpointing_enabled {
            Self::default_exponential_backoff()
        } else {
            RestartStrategy::None
        }
    }

    /// A short description for logs, e.g. `fixed delay (3 attempts, 1s)`.
    pub fn describe(&self) -> String {
        let d = |d: &Duration| humantime::format_duration(*d).to_string();
        match self {
            RestartStrategy::None => "no restart".to_owned(),
            RestartStrategy::FixedDelay { attempts, delay } => {
                let s = if *attempts == 1 { "" } else { "s" };
                format!("fixed delay ({attempts} attempt{s}, {})", d(delay))
            }
            RestartStrategy::ExponentialBackoff {
                initial,
                max,
                multiplier,
                jitter,
                reset_after,
            } => format!(
                "exponential backoff ({} to {}, x{multiplier}, jitter {jitter}, reset after {})",
                d(initial),
                d(max),
                d(reset_after)
            ),
            RestartStrategy::FailureRate {
                max_failures,
                interval,
                delay,
            } => {
                let s = if *max_failures == 1 { "" } else { "s" };
                format!(
                    "failure rate (at most {max_failures} failure{s} per {}, {})",
                    d(interval),
                    d(delay)
                )
            }
        }
    }
}

/// Applies a [`RestartStrategy`] to the failures of one job, remembering
/// what the strategy needs (restarts so far, the current backoff, recent
/// failure times).
#[derive(Debug, Clone)]
pub struct RestartTracker {
    strategy: RestartStrategy,
    restarts: u32,
    /// Exponential backoff: the delay before jitter, and the last failure.
    backoff: Duration,
    last_failure: Option<Instant>,
    /// Failure rate: failures within the window, oldest first.
    failures: VecDeque<Instant>,
}

impl RestartTracker {
    /// A tracker that has seen no failure yet.
    pub fn new(strategy: RestartStrategy) -> Self {
        let backoff = match &strategy {
            RestartStrategy::ExponentialBackoff { initial, .. } => *initial,
            _ => Duration::ZERO,
        };
        RestartTracker {
            strategy,
            restarts: 0,
            backoff,
            last_failure: None,
            failures: VecDeque::new(),
        }
    }

    /// A task failed at `now`: `Some(delay)` to restart after `delay`,
    /// `None` to give up and fail the job.
    ///
    /// Call it once per job failure (all tasks restart together), not once
    /// per failed task. `rng_unit` is a uniform random number in `[0, 1)`
    /// for the jitter of exponential backoff; it is injected so tests are
    /// deterministic, and values outside `[0, 1)` are clamped.
    pub fn on_failure(&mut self, now: Instant, rng_unit: f64) -> Option<Duration> {
        let delay = match &self.strategy {
            RestartStrategy::None => None,
            RestartStrategy::FixedDelay { attempts, delay } => {
                (self.restarts < *attempts).then_some(*delay)
            }
            RestartStrategy::ExponentialBackoff {
                initial,
                max,
                multiplier,
                jitter,
                reset_after,
            } => {
                // As Flink: the run since the last failure must outlast the
                // backoff it waited plus `reset_after` to count as healthy.
                let healthy = self.last_failure.is_none_or(|last| {
                    now.saturating_duration_since(last) >= reset_after.saturating_add(self.backoff)
                });
                self.backoff = if healthy {
                    *initial
                } else {
                    let grown = if self.backoff < *max {
                        Duration::try_from_secs_f64(self.backoff.as_secs_f64() * multiplier)
                            .unwrap_or(*max)
                    } else {
                        self.backoff
                    };
                    grown.clamp(*initial, (*max).max(*initial))
                };
                self.last_failure = Some(now);
                Some(with_jitter(self.backoff, *jitter, *max, rng_unit))
            }
            RestartStrategy::FailureRate {
                max_failures,
                interval,
                delay,
            } => {
                // Count the failures within the window ending now, this one
                // included; Flink keeps a failure exactly `interval` old.
                while self
                    .failures
                    .front()
                    .is_some_and(|&t| now.saturating_duration_since(t) > *interval)
                {
                    self.failures.pop_front();
                }
                self.failures.push_back(now);
                (self.failures.len() <= *max_failures as usize).then_some(*delay)
            }
        };
        if delay.is_some() {
            self.restarts += 1;
        }
        delay
    }

    /// Restarts granted so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// The strategy.
    pub fn strategy(&self) -> &RestartStrategy {
        &self.strategy
    }

    /// A short description for logs, e.g. `fixed delay (3 attempts, 1s)`.
    pub fn describe(&self) -> String {
        self.strategy.describe()
    }
}

/// `backoff` moved by up to ± `jitter` × `backoff`, never above `max`.
fn with_jitter(backoff: Duration, jitter: f64, max: Duration, rng_unit: f64) -> Duration {
    let unit = if rng_unit.is_finite() {
        rng_unit.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let base = backoff.as_secs_f64();
    let offset = base * jitter * (2.0 * unit - 1.0);
    Duration::try_from_secs_f64((base + offset).max(0.0))
        .unwrap_or(backoff)
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn none_never_restarts() {
        let mut t = RestartTracker::new(RestartStrategy::None);
        assert_eq!(t.on_failure(Instant::now(), 0.5), None);
        assert_eq!(t.restarts(), 0);
        assert_eq!(t.describe(), "no restart");
    }

    #[test]
    fn fixed_delay_restarts_attempts_times_then_gives_up() {
        let mut t = RestartTracker::new(RestartStrategy::FixedDelay {
            attempts: 3,
            delay: secs(1),
        });
        let now = Instant::now();
        for i in 0..3 {
            assert_eq!(t.on_failure(now + secs(i * 100), 0.5), Some(secs(1)));
        }
        assert_eq!(t.restarts(), 3);
        assert_eq!(t.on_failure(now + secs(1000), 0.5), None);
        assert_eq!(t.restarts(), 3);
        assert_eq!(t.describe(), "fixed delay (3 attempts, 1s)");
    }

    #[test]
    fn fixed_delay_with_zero_attempts_gives_up_at_once() {
        let mut t = RestartTracker::new(RestartStrategy::FixedDelay {
            attempts: 0,
            delay: secs(1),
        });
        assert_eq!(t.on_failure(Instant::now(), 0.5), None);
    }

    fn backoff(jitter: f64) -> RestartStrategy {
        RestartStrategy::ExponentialBackoff {
            initial: secs(1),
            max: secs(10),
            multiplier: 2.0,
            jitter,
            reset_after: secs(60),
        }
    }

    #[test]
    fn exponential_backoff_grows_to_max_without_jitter() {
        let mut t = RestartTracker::new(backoff(0.0));
        let now = Instant::now();
        let delays: Vec<_> = (0..6)
            .map(|i| t.on_failure(now + secs(i), 0.9).unwrap())
            .collect();
        assert_eq!(
            delays,
            [secs(1), secs(2), secs(4), secs(8), secs(10), secs(10)]
        );
        assert_eq!(t.restarts(), 6);
    }

    #[test]
    fn exponential_backoff_resets_after_a_healthy_run() {
        let mut t = RestartTracker::new(backoff(0.0));
        let start = Instant::now();
        assert_eq!(t.on_failure(start, 0.5), Some(secs(1)));
        assert_eq!(t.on_failure(start + secs(5), 0.5), Some(secs(2)));
        assert_eq!(t.on_failure(start + secs(10), 0.5), Some(secs(4)));
        // The job ran 60 s after waiting its 4 s backoff: reset.
        let later = start + secs(10) + secs(64);
        assert_eq!(t.on_failure(later, 0.5), Some(secs(1)));
        // Just short of the threshold: keeps growing.
        assert_eq!(t.on_failure(later + secs(60), 0.5), Some(secs(2)));
    }

    #[test]
    fn exponential_backoff_jitter_stays_within_bounds() {
        let mut t = RestartTracker::new(backoff(0.25));
        let now = Instant::now();
        // First delay 1 s: jitter moves it within [0.75 s, 1.25 s].
        assert_eq!(t.on_failure(now, 0.0), Some(Duration::from_millis(750)));
        let mut t = RestartTracker::new(backoff(0.25));
        assert_eq!(t.on_failure(now, 0.5), Some(secs(1)));
        let mut t = RestartTracker::new(backoff(0.25));
        let high = t.on_failure(now, 0.999_999).unwrap();
        assert!(
            high > Duration::from_millis(1249) && high <= Duration::from_millis(1250),
            "{high:?}"
        );
        // At the cap, jitter never exceeds max.
        let mut t = RestartTracker::new(backoff(0.25));
        for i in 0..10 {
            let d = t.on_failure(now + secs(i), 0.999).unwrap();
            assert!(d <= secs(10), "{d:?}");
        }
        for unit in [0.0, 0.3, 0.7, 0.999] {
            let mut t = RestartTracker::new(backoff(0.25));
            for i in 0..5 {
                let _ = t.on_failure(now + secs(i), unit);
            }
            // Base 10 s (capped): within [7.5 s, 10 s].
            let d = t.on_failure(now + secs(5), unit).unwrap();
            assert!(d >= Duration::from_millis(7500) && d <= secs(10), "{d:?}");
        }
    }

    #[test]
    fn exponential_backoff_default_is_flinks() {
        assert_eq!(
            RestartStrategy::default_for(true),
            RestartStrategy::ExponentialBackoff {
                initial: secs(1),
                max: secs(60),
                multiplier: 1.5,
                jitter: 0.1,
                reset_after: secs(3600),
            }
        );
        assert_eq!(RestartStrategy::default_for(false), RestartStrategy::None);
        assert_eq!(
            RestartStrategy::default_exponential_backoff().describe(),
            "exponential backoff (1s to 1m, x1.5, jitter 0.1, reset after 1h)"
        );
    }

    #[test]
    fn failure_rate_gives_up_when_too_many_failures_in_the_window() {
        let mut t = RestartTracker::new(RestartStrategy::FailureRate {
            max_failures: 2,
            interval: secs(60),
            delay: secs(1),
        });
        let start = Instant::now();
        assert_eq!(t.on_failure(start, 0.5), Some(secs(1)));
        assert_eq!(t.on_failure(start + secs(30), 0.5), Some(secs(1)));
        // Third failure within 60 s of the first.
        assert_eq!(t.on_failure(start + secs(60), 0.5), None);
        assert_eq!(t.restarts(), 2);
        assert_eq!(t.describe(), "failure rate (at most 2 failures per 1m, 1s)");
    }

    #[test]
    fn failure_rate_forgets_failures_outside_the_window() {
        let mut t = RestartTracker::new(RestartStrategy::FailureRate {
            max_failures: 2,
            interval: secs(60),
            delay: secs(1),
        });
        let start = Instant::now();
        assert!(t.on_failure(start, 0.5).is_some());
        assert!(t.on_failure(start + secs(30), 0.5).is_some());
        // The first failure is now 61 s old: only two in the window.
        assert!(t.on_failure(start + secs(61), 0.5).is_some());
        assert!(t.on_failure(start + secs(200), 0.5).is_some());
        assert_eq!(t.restarts(), 4);
    }
}
