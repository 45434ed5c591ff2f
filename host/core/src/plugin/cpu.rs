//! Fair CPU between groups of plugin instances: under `weir serve` each
//! tenant's instances form one [`CpuGroup`] with a weight (its
//! `cpu_share`). Time is cut into windows of [`WINDOW`]. While the busy
//! groups want no more CPU than the machine has, nobody waits (the
//! scheduler is work-conserving). When they want more, each group may use
//! its weighted share of the machine per window — `cores × weight / Σ
//! weights of the busy groups` — and an instance of a group over its
//! share sleeps, at its next epoch tick, until the window ends.
//!
//! CPU is the thread CPU time of the calls into Wasm, charged at every
//! epoch tick inside a call and at the end of each call; time spent
//! sleeping here does not count against the call's wall-clock bound.
//! Pure bookkeeping apart from reading the thread's CPU clock: the
//! instance calls [`CpuGroup::charge`] and sleeps as told.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The scheduling window.
pub const WINDOW: Duration = Duration::from_millis(100);

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
    /// All CPU charged, ns.
    total_ns: AtomicU64,
    /// All time its instances slept over their share, ns.
    throttled_ns: AtomicU64,
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

    /// A scheduler for the CPUs this process may use.
    pub fn for_this_machine() -> Self {
        Self::new(
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) as f64,
        )
    }

    /// A new group of `weight` (relative to the other groups').
    pub fn group(&self, name: &str, weight: u64) -> CpuGroup {
        let group = Arc::new(Group {
            sched: self.inner.clone(),
            name: name.into(),
            weight: AtomicU64::new(weight.max(1)),
            use_: Mutex::default(),
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

    /// When window `w` ends.
    fn window_end(&self, w: u64) -> Instant {
        self.started + WINDOW * u32::try_from(w + 1).unwrap_or(u32::MAX)
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

    /// Charges `cpu` to the group at `now`; how long the caller must wait
    /// (zero unless the machine is contended and the group is over its
    /// share of this window).
    pub fn charge(&self, cpu: Duration, now: Instant) -> Duration {
        let sched = &self.inner.sched;
        let w = sched.window(now);
        let mine = {
            let mut u = self.inner.use_.lock().unwrap_or_else(|p| p.into_inner());
            u.roll(w);
            u.now_ns += cpu.as_nanos() as u64;
            *u
        };
        self.inner
            .total_ns
            .fetch_add(cpu.as_nanos() as u64, Ordering::Relaxed);
        let (demand, weights) = {
            let groups = sched.groups.lock().unwrap_or_else(|p| p.into_inner());
            let mut demand = 0u64;
            let mut weights = 0u64;
            for g in groups.iter().filter_map(Weak::upgrade) {
                let mut u = g.use_.lock().unwrap_or_else(|p| p.into_inner());
                u.roll(w);
                if u.demand() > 0 {
                    demand += u.demand();
                    weights += g.weight.load(Ordering::Relaxed);
                }
            }
            (demand, weights.max(1))
        };
        if demand <= sched.capacity_ns {
            return Duration::ZERO;
        }
        let share = sched.capacity_ns as u128 * u128::from(self.weight()) / u128::from(weights);
        if u128::from(mine.now_ns) <= share {
            return Duration::ZERO;
        }
        let wait = sched.window_end(w).saturating_duration_since(now);
        self.inner
            .throttled_ns
            .fetch_add(wait.as_nanos() as u64, Ordering::Relaxed);
        wait
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

    #[test]
    fn nobody_waits_while_the_machine_has_room() {
        let s = CpuScheduler::new(2.0);
        let (a, b) = (s.group("a", 1), s.group("b", 1));
        let t = s.inner.started + WINDOW / 10;
        // 1.5 cores' worth between them in one window: under 2 cores.
        assert_eq!(a.charge(100 * MS, t), Duration::ZERO);
        assert_eq!(b.charge(50 * MS, t), Duration::ZERO);
    }

    #[test]
    fn a_group_over_its_share_of_a_contended_machine_waits_to_the_window_end() {
        let s = CpuScheduler::new(2.0);
        let (busy, honest) = (s.group("busy", 1), s.group("honest", 1));
        let t = s.inner.started + WINDOW / 2;
        assert_eq!(honest.charge(90 * MS, t), Duration::ZERO);
        // busy wants 1.5 cores: the machine is over, and busy over its 1.
        let wait = busy.charge(150 * MS, t);
        assert_eq!(wait, WINDOW / 2);
        assert_eq!(busy.throttled(), WINDOW / 2);
        // honest, under its share, never waits.
        assert_eq!(honest.charge(5 * MS, t), Duration::ZERO);
        assert_eq!(honest.throttled(), Duration::ZERO);
    }

    #[test]
    fn weights_divide_the_machine() {
        let s = CpuScheduler::new(1.0);
        let (big, small) = (s.group("big", 3), s.group("small", 1));
        let t = s.inner.started + WINDOW / 2;
        // Contended: 1.3 cores wanted of 1. big may use 75 ms, small 25.
        assert_eq!(big.charge(70 * MS, t), Duration::ZERO);
        assert!(small.charge(60 * MS, t) > Duration::ZERO);
        assert!(big.charge(4 * MS, t) == Duration::ZERO);
        assert!(big.charge(10 * MS, t) > Duration::ZERO);
    }

    #[test]
    fn the_previous_window_counts_as_demand_and_old_ones_do_not() {
        let s = CpuScheduler::new(1.0);
        let (a, b) = (s.group("a", 1), s.group("b", 1));
        let w0 = s.inner.started + WINDOW / 2;
        a.charge(90 * MS, w0);
        // Next window: a's last window still counts, so b is contended.
        let w1 = w0 + WINDOW;
        assert!(b.charge(60 * MS, w1) > Duration::ZERO);
        // Much later, a is idle: b alone has the machine.
        let later = w0 + WINDOW * 10;
        assert_eq!(b.charge(90 * MS, later), Duration::ZERO);
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
