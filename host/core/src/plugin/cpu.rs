//! Fair CPU between groups of plugin instances: under `weir serve` each
//! tenant's instances form one [`CpuGroup`] with a weight (its
//! `cpu_share`). A group is busy while it used CPU in the current or the
//! previous window of [`WINDOW`]. While the busy groups want no more CPU
//! than the machine has, nobody waits (the scheduler is work-conserving).
//! When they want more, each group's CPU is metered by a token bucket
//! filled at its weighted share of the machine — `cores × weight / Σ
//! weights of the busy groups` — holding at most one window's worth, and
//! an instance of a group whose bucket is in debt waits — at its next
//! epoch tick inside a call, or before its next call — as long as the
//! share takes to pay the debt back, as a task that gives its worker to
//! others meanwhile, not as a sleeping thread.
//!
//! CPU is the thread CPU time of the calls into Wasm, charged at every
//! epoch tick inside a call and at the end of each call. Pure bookkeeping
//! apart from reading the thread's CPU clock: the instance calls
//! [`CpuGroup::charge`] at each tick, [`CpuGroup::wait_before_call`]
//! before a call and [`CpuGroup::add`] at the end of one, and waits as
//! told.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The scheduling window.
pub const WINDOW: Duration = Duration::from_millis(100);

/// How long a group's decision to wait (or not) stands for the calls
/// that ask before it is made again: the engine's epoch tick.
pub const DECIDE_EVERY: Duration = Duration::from_millis(10);

/// The machine the groups share. Cheap to clone.
#[derive(Clone)]
pub struct CpuScheduler {
    inner: Arc<Sched>,
}

struct Sched {
    /// CPU nanoseconds the machine has per window.
    capacity_ns: u64,
    started: Instant,
    groups: Mutex<Vec<Weak<Group>>>,
}

/// One group's share and use. Cheap to clone; clones share the counts.
#[derive(Clone)]
pub struct CpuGroup {
    inner: Arc<Group>,
}

struct Group {
    sched: Arc<Sched>,
    name: Arc<str>,
    weight: AtomicU64,
    use_: Mutex<Use>,
    bucket: Mutex<Bucket>,
    /// All CPU charged, ns.
    total_ns: AtomicU64,
    /// All time its instances slept over their share, ns.
    throttled_ns: AtomicU64,
}

/// A group's allowance while the machine is contended: CPU nanoseconds
/// it may still use (negative: its debt), as of `at`.
struct Bucket {
    tokens: i64,
    at: Instant,
    /// The latest decision ([`CpuGroup::charge`]): when, and until when
    /// the group's instances wait.
    decided: Option<Instant>,
    resume_at: Instant,
}

/// CPU used in the current window and the one before it.
#[derive(Default, Clone, Copy)]
struct Use {
    window: u64,
    now_ns: u64,
    prev_ns: u64,
}

impl Use {
    /// Moves to window `w`, if it is later.
    fn roll(&mut self, w: u64) {
        if w > self.window {
            self.prev_ns = if w == self.window + 1 { self.now_ns } else { 0 };
            self.now_ns = 0;
            self.window = w;
        }
    }

    /// The group's demand, ns per window: the larger of the windows.
    fn demand(&self) -> u64 {
        self.now_ns.max(self.prev_ns)
    }
}

impl std::fmt::Debug for CpuScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuScheduler")
            .field("capacity_ns", &self.inner.capacity_ns)
            .finish()
    }
}

impl std::fmt::Debug for CpuGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuGroup")
            .field("name", &self.inner.name)
            .field("weight", &self.weight())
            .finish()
    }
}

impl CpuScheduler {
    /// A scheduler for `cores` CPUs.
    pub fn new(cores: f64) -> Self {
        CpuScheduler {
            inner: Arc::new(Sched {
                capacity_ns: (cores.max(0.1) * WINDOW.as_nanos() as f64) as u64,
                started: Instant::now(),
                groups: Mutex::default(),
            }),
        }
    }

    /// A new group of `weight` (relative to the other groups').
    pub fn group(&self, name: &str, weight: u64) -> CpuGroup {
        let group = Arc::new(Group {
            sched: self.inner.clone(),
            name: name.into(),
            weight: AtomicU64::new(weight.max(1)),
            use_: Mutex::default(),
            bucket: Mutex::new(Bucket {
                tokens: 0,
                at: Instant::now(),
                decided: None,
                resume_at: Instant::now(),
            }),
            total_ns: AtomicU64::new(0),
            throttled_ns: AtomicU64::new(0),
        });
        let mut groups = self.inner.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.retain(|g| g.strong_count() > 0);
        groups.push(Arc::downgrade(&group));
        CpuGroup { inner: group }
    }
}

impl Sched {
    fn window(&self, now: Instant) -> u64 {
        (now.duration_since(self.started).as_nanos() / WINDOW.as_nanos()) as u64
    }
}

impl CpuGroup {
    /// Its weight.
    pub fn weight(&self) -> u64 {
        self.inner.weight.load(Ordering::Relaxed)
    }

    /// Sets its weight (a reloaded config).
    pub fn set_weight(&self, weight: u64) {
        self.inner.weight.store(weight.max(1), Ordering::Relaxed);
    }

    /// All CPU its instances were charged.
    pub fn cpu_time(&self) -> Duration {
        Duration::from_nanos(self.inner.total_ns.load(Ordering::Relaxed))
    }

    /// All time its instances slept over their share.
    pub fn throttled(&self) -> Duration {
        Duration::from_nanos(self.inner.throttled_ns.load(Ordering::Relaxed))
    }

    /// Charges `cpu` to the group at `now`, without deciding anything: the
    /// cheap end of every call.
    pub fn add(&self, cpu: Duration, now: Instant) {
        self.record(cpu, now);
        let mut b = self.inner.bucket.lock().unwrap_or_else(|p| p.into_inner());
        b.tokens -= cpu.as_nanos() as i64;
    }

    fn record(&self, cpu: Duration, now: Instant) -> (u64, Use) {
        let w = self.inner.sched.window(now);
        let mine = {
            let mut u = self.inner.use_.lock().unwrap_or_else(|p| p.into_inner());
            u.roll(w);
            u.now_ns += cpu.as_nanos() as u64;
            *u
        };
        self.inner
            .total_ns
            .fetch_add(cpu.as_nanos() as u64, Ordering::Relaxed);
        (w, mine)
    }

    /// Charges `cpu` to the group at `now`; how long the caller must wait
    /// (zero unless the machine is contended and the group's bucket is in
    /// debt). Looks at every group: for the epoch tick, not every call.
    pub fn charge(&self, cpu: Duration, now: Instant) -> Duration {
        let sched = &self.inner.sched;
        let (w, _) = self.record(cpu, now);
        let (demand, weights, others) = {
            let groups = sched.groups.lock().unwrap_or_else(|p| p.into_inner());
            let (mut demand, mut weights, mut others) = (0u64, 0u64, 0usize);
            for g in groups.iter().filter_map(Weak::upgrade) {
                let mut u = g.use_.lock().unwrap_or_else(|p| p.into_inner());
                u.roll(w);
                if u.demand() > 0 {
                    demand += u.demand();
                    weights += g.weight.load(Ordering::Relaxed);
                    others += usize::from(!Arc::ptr_eq(&g, &self.inner));
                }
            }
            (demand, weights.max(1), others)
        };
        // Alone, a group has the machine; and a call is charged to the
        // window it ends in, so a window can seem to hold a little more
        // than the machine gives: only a clear excess is contention.
        // The share, as CPU nanoseconds per window.
        let share = (sched.capacity_ns as u128 * u128::from(self.weight()) / u128::from(weights))
            .max(1) as i64;
        let window = WINDOW.as_nanos() as i64;
        let mut b = self.inner.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(b.at).as_nanos() as i64;
        b.at = now;
        b.tokens = (b.tokens + elapsed.saturating_mul(share) / window).min(share);
        b.tokens -= cpu.as_nanos() as i64;
        let contended = others > 0 && demand > sched.capacity_ns + sched.capacity_ns / 10;
        if !contended {
            // Nobody waits; no debt carries into a contended time.
            b.tokens = b.tokens.max(0);
        }
        // The time the share takes to pay the debt back, if any.
        let wait = Duration::from_nanos(
            u64::try_from(
                b.tokens.min(0).unsigned_abs() as i128 * i128::from(window) / i128::from(share),
            )
            .unwrap_or(u64::MAX),
        )
        .min(WINDOW);
        b.decided = Some(now);
        b.resume_at = now + wait;
        self.inner
            .throttled_ns
            .fetch_add(wait.as_nanos() as u64, Ordering::Relaxed);
        wait
    }

    /// How long an instance of the group waits before a call at `now`: what
    /// the latest decision left of its wait, decided afresh ([`charge`])
    /// only once that decision is a tick (10 ms) old — so the
    /// scan over every group happens once a tick per group, not once a
    /// call.
    ///
    /// [`charge`]: CpuGroup::charge
    pub fn wait_before_call(&self, now: Instant) -> Duration {
        {
            let b = self.inner.bucket.lock().unwrap_or_else(|p| p.into_inner());
            if b.decided
                .is_some_and(|d| now.saturating_duration_since(d) < DECIDE_EVERY)
            {
                return b.resume_at.saturating_duration_since(now);
            }
        }
        self.charge(Duration::ZERO, now)
    }
}

/// The CPU time this thread has used.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the call's duration.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Each group, unless it was told to wait, uses `cpu` per 10 ms tick
    /// for a simulated second: what each was told to wait in all, and the
    /// CPU each got.
    fn simulate(
        s: &CpuScheduler,
        groups: &[(&CpuGroup, Duration)],
    ) -> (Vec<Duration>, Vec<Duration>) {
        let mut waits = vec![Duration::ZERO; groups.len()];
        let mut got = vec![Duration::ZERO; groups.len()];
        let mut until = vec![s.inner.started; groups.len()];
        for tick in 1..=100u32 {
            let now = s.inner.started + 10 * MS * tick;
            for (i, (g, cpu)) in groups.iter().enumerate() {
                if now < until[i] {
                    continue;
                }
                got[i] += *cpu;
                let wait = g.charge(*cpu, now);
                waits[i] += wait;
                until[i] = now + wait;
            }
        }
        (waits, got)
    }

    #[test]
    fn nobody_waits_while_the_machine_has_room() {
        let s = CpuScheduler::new(2.0);
        let (a, b) = (s.group("a", 1), s.group("b", 1));
        // 1.5 cores between them: under 2.
        let (waits, _) = simulate(&s, &[(&a, 10 * MS), (&b, 5 * MS)]);
        assert_eq!(waits, [Duration::ZERO, Duration::ZERO]);
    }

    #[test]
    fn a_busy_group_waits_and_one_within_its_share_never_does() {
        let s = CpuScheduler::new(2.0);
        let (busy, honest) = (s.group("busy", 1), s.group("honest", 1));
        // busy wants 4 cores, honest 1: its share of 2.
        let (waits, got) = simulate(&s, &[(&busy, 40 * MS), (&honest, 10 * MS)]);
        assert!(waits[0] > 100 * MS, "{waits:?}");
        assert_eq!(waits[1], Duration::ZERO);
        // honest got its whole core; busy far less than it wanted.
        assert_eq!(got[1], 1000 * MS);
        assert!(
            got[0] < 2000 * MS,
            "busy got less than the 4 s it wanted: {got:?}"
        );
        assert_eq!(busy.throttled(), waits[0]);
        assert_eq!(honest.throttled(), Duration::ZERO);
    }

    #[test]
    fn weights_divide_the_machine() {
        let s = CpuScheduler::new(1.0);
        let (big, small) = (s.group("big", 3), s.group("small", 1));
        // Each wants the whole core: big may have 3/4, small 1/4.
        let (_, got) = simulate(&s, &[(&big, 10 * MS), (&small, 10 * MS)]);
        assert!(got[0] > got[1] * 2, "{got:?}");
    }

    #[test]
    fn before_a_call_a_decision_stands_for_a_tick_then_is_made_again() {
        let s = CpuScheduler::new(2.0);
        let (busy, honest) = (s.group("busy", 1), s.group("honest", 1));
        let t = s.inner.started + WINDOW / 2;
        honest.charge(90 * MS, t);
        // busy wants 3 cores: in debt, told to wait.
        let wait = busy.charge(300 * MS, t);
        assert!(wait > Duration::ZERO);
        let throttled = busy.throttled();
        // Within the tick the decision stands: what is left of the wait,
        // and no new decision (no more time counted as throttled).
        assert_eq!(busy.wait_before_call(t + MS), wait - MS);
        assert_eq!(busy.throttled(), throttled);
        // A tick later the group is looked at again.
        busy.wait_before_call(t + DECIDE_EVERY);
        assert!(busy.throttled() > throttled);
        // A group never decided about decides at once.
        assert_eq!(honest.wait_before_call(t), Duration::ZERO);
    }

    #[test]
    fn a_group_alone_never_waits() {
        let s = CpuScheduler::new(1.0);
        let alone = s.group("alone", 1);
        let t = s.inner.started + WINDOW / 2;
        // More than a window's worth, charged late: still no wait.
        assert_eq!(alone.charge(250 * MS, t), Duration::ZERO);
    }

    #[test]
    fn a_group_idle_for_a_while_no_longer_counts_as_busy() {
        let s = CpuScheduler::new(1.0);
        let (a, b) = (s.group("a", 1), s.group("b", 1));
        let t = s.inner.started + WINDOW / 2;
        a.charge(90 * MS, t);
        // Ten windows later a is idle: b alone has the machine.
        assert_eq!(b.charge(90 * MS, t + WINDOW * 10), Duration::ZERO);
        assert_eq!(a.cpu_time(), 90 * MS);
    }

    #[test]
    fn the_thread_cpu_clock_advances_with_work() {
        let before = thread_cpu_time();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_time() > before);
    }
}
