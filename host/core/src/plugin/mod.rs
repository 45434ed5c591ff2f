//! Plugins: Wasm components compiled once (and cached on disk by content
//! hash), pre-instantiated, then instantiated per subtask inside a sandbox.
//! This is the only module that touches wasmtime.

mod cache;
mod cpu;
mod declared;

mod sandbox;
mod value;

pub use self::cache::default_key_path as default_cache_key_path;
pub use self::cpu::{CpuGroup, CpuScheduler};
pub use self::declared::{DeclaredKind, DeclaredState, Redistribution};
pub use self::sandbox::{JobMemory, MemoryPool};
pub use weir_format::descriptor::{DescriptorError, MAX_DESCRIPTOR_DEPTH, TypeDescriptor};

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use weir_format::writes::{WriteOp, WritesReader};

use self::bindings::weir::operator::{
    keyed_state, logging, metrics, operator_state, output, timers, types,
};
use self::declared::Declarations;
use self::sandbox::{
    GuestOutput, LimitHit, LogMeter, MAX_LOG_LINE, MemoryLimiter, MemoryShare, Part, Stream, mib,
};
use crate::error::Error;
use crate::job::Limits;
use crate::keygroup::KeyGroupRange;
use crate::keygroup::key_group_of;
use crate::state::{KeyedStateBackend, MemoryStateBackend, StateError, Update, Value};
use crate::timers::{FiredTimer, TimeDomain, TimerService};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "stream-operator",
        // These may trap: each is where a guest could make the host
        // allocate without bound, so each enforces a limit.
        imports: {
            "weir:operator/output.emit": trappable,
            "weir:operator/logging.log": trappable,
            "weir:operator/keyed-state.write": trappable,
            "weir:operator/keyed-state.write-packed": trappable,
            "weir:operator/timers.register": trappable,
            "weir:operator/metrics.counter-add": trappable,
            // These trap when the state backend itself fails: the
            // host's failure must fail the call, not reach the guest as
            // an error it could swallow.
            "weir:operator/keyed-state.value-get": trappable,
            "weir:operator/keyed-state.map-get": trappable,
            "weir:operator/keyed-state.map-entries": trappable,
            "weir:operator/keyed-state.list-get": trappable,
            "weir:operator/timers.delete": trappable,
        },
        // Calls into the guest are futures: a long one gives its worker
        // back at an epoch tick (`on_tick`). The host's imports stay
        // synchronous: none of them waits.
        exports: { default: async },
    });
}

/// The 0.1.0 world, for components built before event time. Its types
/// are the current world's (the same shapes), so its imports are served
/// by the same host functions.
mod bindings_v1 {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
        world: "stream-operator",
        with: {
            "weir:operator/types@0.1.0": crate::plugin::bindings::weir::operator::types,
        },
        imports: {
            "weir:operator/output.emit": trappable,
            "weir:operator/logging.log": trappable,
            "weir:operator/keyed-state.write": trappable,
            "weir:operator/keyed-state.value-get": trappable,
            "weir:operator/keyed-state.map-get": trappable,
            "weir:operator/keyed-state.map-entries": trappable,
            "weir:operator/keyed-state.list-get": trappable,
        },
        exports: { default: async },
    });
}

/// The WIT world version this host implements.
pub const WORLD: &str = WORLDS[0];

/// Every world version this host loads, newest first: a component built
/// against any of them runs unchanged.
pub const WORLDS: &[&str] = &[
    "weir:operator/stream-operator@0.2.0",
    "weir:operator/stream-operator@0.1.0",
];

/// The most native stack a guest's Wasm frames may use. Deeper recursion
/// traps as a stack overflow naming this limit; it is half the stack each
/// call runs on ([`ASYNC_STACK`]), so the host functions it calls always
/// fit.
pub const MAX_WASM_STACK: usize = 512 << 10;

/// The stack each call into a guest runs on: its Wasm frames (at most
/// [`MAX_WASM_STACK`]) and the host functions it calls.
pub const ASYNC_STACK: usize = 1 << 20;

/// How often the engine's epoch advances: the resolution of the
/// wall-clock bound on hook calls (`limits.call_timeout_ms`).
const EPOCH_TICK: Duration = Duration::from_millis(10);
// A CPU group's decision stands for one tick.
const _: () = assert!(EPOCH_TICK.as_nanos() == cpu::DECIDE_EVERY.as_nanos());

/// Compiles, caches and loads plugins. One per process; cheap to share.
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<InstanceState>,
    cache: Option<cache::Cache>,
    /// Plugins loaded and still in use, by the SHA-256 of their bytes:
    /// every job running the same plugin shares its compiled code (one
    /// copy in memory and in the process's memory mappings), which lives
    /// as long as one of them does.
    loaded: Mutex<HashMap<[u8; 32], Weak<Linked>>>,
}

/// A plugin's compiled code, linked: what every job running it shares.
struct Linked {
    pre: WorldPre,
}

/// A component pre-instantiated against the world it implements.
enum WorldPre {
    V2(bindings::StreamOperatorPre<InstanceState>),
    V1(bindings_v1::StreamOperatorPre<InstanceState>),
}

impl WorldPre {
    /// The newest world `pre` implements.
    ///
    /// # Errors
    /// What the newest world misses, when it implements none.
    fn new(pre: wasmtime::component::InstancePre<InstanceState>) -> Result<Self, String> {
        let v2 = match bindings::StreamOperatorPre::new(pre.clone()) {
            Ok(p) => return Ok(WorldPre::V2(p)),
            Err(e) => e,
        };
        bindings_v1::StreamOperatorPre::new(pre)
            .map(WorldPre::V1)
            .map_err(|_| {
                format!(
                    "does not implement {WORLD} (nor {}): {v2:#}",
                    WORLDS[1..].join(", ")
                )
            })
    }

    fn engine(&self) -> &Engine {
        match self {
            WorldPre::V2(p) => p.engine(),
            WorldPre::V1(p) => p.engine(),
        }
    }
}

/// A running component's exports, by world.
enum WorldExports {
    V2(bindings::StreamOperator),
    V1(bindings_v1::StreamOperator),
}

/// How a plugin was obtained, for benchmarks and logs.
#[derive(Debug, Clone, Copy)]
pub struct LoadStats {
    /// Whether the compiled code was not compiled now: it came from the
    /// on-disk cache, or from a job already running the same plugin.
    pub from_cache: bool,
    /// Time to compile or deserialize, and pre-instantiate.
    pub elapsed: Duration,
}

/// A compiled, pre-instantiated plugin.
#[derive(Clone)]
pub struct Plugin {
    path: PathBuf,
    linked: Arc<Linked>,
    job_memory: JobMemory,
    cpu: Option<(CpuGroup, Arc<AtomicU64>)>,
    /// How it was loaded.
    pub stats: LoadStats,
}

impl PluginEngine {
    /// Creates the engine. `cache_dir`, if given, holds compiled plugins,
    /// signed with the key at [`default_cache_key_path`] (without a home
    /// directory to keep it in, plugins are not cached).
    ///
    /// # Errors
    /// [`Error::PluginCache`] if the cache directory or its key is unsafe
    /// to use (see [`PluginEngine::with_cache_key`]); [`Error::Internal`]
    /// if wasmtime rejects the configuration.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, Error> {
        let key = default_cache_key_path();
        if cache_dir.is_some() && key.is_none() {
            tracing::warn!(
                "not caching compiled plugins: neither XDG_CONFIG_HOME nor HOME is set, so there \
                 is nowhere to keep the key that signs them"
            );
        }
        match (cache_dir, key) {
            (Some(dir), Some(key)) => Self::with_cache_key(Some((dir, key))),
            _ => Self::with_cache_key(None),
        }
    }

    /// Creates the engine with compiled plugins cached in `cache.0`,
    /// signed with the key in file `cache.1` (created if missing), which
    /// must be outside the cache directory.
    ///
    /// # Errors
    /// [`Error::PluginCache`] if the directory or the key cannot be
    /// created, belongs to another user, or is open to others (the
    /// directory writable by group or others, the key readable by them);
    /// [`Error::Internal`] if wasmtime rejects the configuration.
    pub fn with_cache_key(cache: Option<(PathBuf, PathBuf)>) -> Result<Self, Error> {
        let cache = cache
            .map(|(dir, key)| cache::Cache::open(&dir, &key))
            .transpose()?;
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            // Component-model async makes every call 2–3.6× dearer and
            // synchronous operators never need it.
            .concurrency_support(false)
            // The CPU budget: costs under 10% on word count.
            .consume_fuel(true)
            // The wall-clock bound per call, for what fuel does not see.
            .epoch_interruption(true)
            // A call runs on a stack of its own, which it can leave at an
            // epoch tick; the guest's frames and the host's imports it
            // calls must fit.
            .async_stack_size(ASYNC_STACK)
            .max_wasm_stack(MAX_WASM_STACK)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine =
            Engine::new(&config).map_err(|e| Error::Internal(format!("wasmtime engine: {e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| Error::Internal(format!("linking WASI: {e:#}")))?;
        sandbox::deny_blocking(&mut linker)
            .map_err(|e| Error::Internal(format!("replacing WASI timers: {e:#}")))?;
        start_epoch_ticker(&engine)?;
        bindings::StreamOperator::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| Error::Internal(format!("linking the operator world: {e:#}")))?;
        bindings_v1::StreamOperator::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| Error::Internal(format!("linking the 0.1.0 operator world: {e:#}")))?;
        Ok(Self {
            engine,
            linker,
            cache,
            loaded: Mutex::default(),
        })
    }

    /// Loads the plugin at `path` for operator `uid`: from the cache if it
    /// was compiled before, else compiled now and cached.
    ///
    /// # Errors
    /// [`Error::Plugin`] naming `uid` and `path` if the file is missing, is
    /// not a component, fails to compile, imports what Weir does not
    /// provide, or does not export the operator world.
    pub fn load(&self, uid: &str, path: &Path) -> Result<Plugin, Error> {
        let fail = |message: String| Error::Plugin {
            uid: uid.to_owned(),
            plugin: path.to_owned(),
            message,
        };
        let started = Instant::now();
        let bytes = read_plugin_file(path).map_err(fail)?;
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        let shared = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
            .and_then(Weak::upgrade);
        let (linked, from_cache) = match shared {
            Some(linked) => (linked, true),
            None => {
                check_component_header(&bytes).map_err(fail)?;
                let (component, from_cache) = self
                    .compile_cached(&bytes)
                    .map_err(|e| fail(format!("{e:#}")))?;
                let pre = self.linker.instantiate_pre(&component).map_err(|e| {
                    fail(format!("cannot link: {e:#} (Weir provides only {WORLD} imports and WASI without capabilities)"))
                })?;
                let pre = WorldPre::new(pre).map_err(fail)?;
                let linked = Arc::new(Linked { pre });
                let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
                loaded.retain(|_, l| l.strong_count() > 0);
                loaded.insert(hash, Arc::downgrade(&linked));
                (linked, from_cache)
            }
        };
        Ok(Plugin {
            path: path.to_owned(),
            linked,
            job_memory: JobMemory::new(),
            cpu: None,
            stats: LoadStats {
                from_cache,
                elapsed: started.elapsed(),
            },
        })
    }

    /// Checks that `bytes` are a component this engine can run as an
    /// operator (header, compilation, linking, the operator world), as
    /// [`load`](Self::load) would, and returns the interfaces it imports
    /// (`wasi:io/streams@0.2.6`, …). The compiled code is cached.
    ///
    /// # Errors
    /// What is wrong, as one sentence without the plugin's name.
    pub fn inspect_component(&self, bytes: &[u8]) -> Result<Vec<String>, String> {
        check_component_header(bytes)?;
        let (component, _) = self.compile_cached(bytes).map_err(|e| format!("{e:#}"))?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            format!("cannot link: {e:#} (Weir provides only {WORLD} imports and WASI without capabilities)")
        })?;
        WorldPre::new(pre)?;
        Ok(component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect())
    }

    fn compile_cached(&self, bytes: &[u8]) -> wasmtime::Result<(Component, bool)> {
        let Some(cache) = &self.cache else {
            return Ok((Component::new(&self.engine, bytes)?, false));
        };
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut compat);
        let name = format!(
            "{}-{:016x}.cwasm",
            hex::encode(Sha256::digest(bytes)),
            compat.finish()
        );
        match cache.read(&name) {
            Ok(None) => {}
            Ok(Some(code)) => {
                // SAFETY: the entry's HMAC, under this installation's key,
                // proves this host wrote it for exactly this component and
                // engine configuration; wasmtime still checks its header.
                match unsafe { Component::deserialize(&self.engine, &code) } {
                    Ok(c) => return Ok((c, true)),
                    Err(e) => tracing::warn!(
                        "ignoring unusable plugin cache entry {}: {e:#}",
                        cache.path(&name).display()
                    ),
                }
            }
            Err(why) => tracing::warn!(
                "ignoring plugin cache entry {}: {why}; compiling the plugin again",
                cache.path(&name).display()
            ),
        }
        let component = Component::new(&self.engine, bytes)?;
        if let Err(e) = cache.write(&name, &component.serialize()?) {
            tracing::warn!(
                "cannot cache compiled plugin in {}: {e}",
                cache.dir().display()
            );
        }
        Ok((component, false))
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is
/// dropped, so a call past its deadline traps.
fn start_epoch_ticker(engine: &Engine) -> Result<(), Error> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("weir-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .map_err(|e| Error::Internal(format!("spawning the epoch ticker: {e}")))?;
    Ok(())
}

/// Tells a component from a core module or a non-Wasm file up front, since
/// wasmtime's own message for those is obscure.
/// Reads a plugin file: a regular file (a FIFO or a device would block or
/// never end) of at most [`crate::job::MAX_PLUGIN_BYTES`], read through
/// that bound so a file that grows after validation is not read whole.
fn read_plugin_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let limit = crate::job::MAX_PLUGIN_BYTES;
    crate::job::regular_file(path)?;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "is larger than {limit} bytes, the most a plugin may be"
        ));
    }
    Ok(bytes)
}

fn check_component_header(bytes: &[u8]) -> Result<(), String> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 0x0d, 0, 0x01, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', 0x01, 0, 0, 0]) => Err(
            "is a core WebAssembly module, not a component: build the plugin for the wasm32-wasip2 target".into(),
        ),
        _ => Err("is not a WebAssembly component (no `\\0asm` component header)".into()),
    }
}

/// Everything an instance of a plugin needs besides the plugin.
pub struct InstanceConfig {
    /// The operator's uid.
    pub uid: String,
    /// The config string.
    pub config: String,
    /// This subtask's index.
    pub subtask: u32,
    /// The operator's parallelism.
    pub parallelism: u32,
    /// Number of key groups.
    pub max_parallelism: u32,
    /// Memory and CPU limits.
    pub limits: Limits,
    /// The subtask's keyed state.
    pub state: Box<dyn KeyedStateBackend>,
    /// Restored operator (non-keyed) state, by name.
    pub operator_state: Vec<(String, Vec<Value>)>,
    /// How many times the job restarted before this instance.
    pub attempt_number: u32,
    /// The declared types of the restored states, by state name (from a
    /// savepoint that recorded them): a declaration whose type cannot read
    /// the stored one fails.
    pub restored_types: HashMap<String, String>,
    /// The subtask's timers (restored with `state`, whose reserved
    /// states hold them).
    pub timers: TimerService,
}

/// The store data of one instance: its sandbox and the host side of every
/// import.
pub struct InstanceState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    limits: Limits,
    output: Vec<u8>,
    /// Bytes emitted in the current call.
    emitted: u64,
    /// The limit an import refused in the current call.
    hit: Option<LimitHit>,
    log: LogMeter,
    keyed: Box<dyn KeyedStateBackend>,
    operator_state: HashMap<String, Vec<Value>>,
    declared: Declarations,
    restored_types: HashMap<String, String>,
    /// A declaration the restored state contradicts: retrying cannot help,
    /// so the failing hook fails the job as a restore error.
    restore_conflict: Option<String>,
    max_parallelism: u32,
    timers: TimerService,
    /// The operator's event-time watermark.
    watermark: i64,
    /// The operator's own counters (`metrics.counter-add`) since they were
    /// last taken.
    counters: std::collections::BTreeMap<String, u64>,
    /// How many counter names it used.
    counter_names: std::collections::BTreeSet<String>,
    uid: Arc<str>,
    tag: Arc<str>,
    /// The instance's CPU group, when it shares the machine fairly.
    cpu: CpuMeter,
}

/// What an instance keeps to bound its calls' time and, in a
/// [`CpuGroup`], to charge the group.
struct CpuMeter {
    /// The group, and the job's count of CPU nanoseconds.
    group: Option<(CpuGroup, Arc<AtomicU64>)>,
    /// Where the current call's CPU was last read, in a group.
    clock: CallClock,
    /// When the current call's wall-clock bound ends (moved on by the
    /// time the group made it wait).
    deadline: Instant,
}

/// The thread a call ran on when its CPU was last read, the thread's CPU
/// time then, and the time: a call that gave its worker up may go on on
/// another worker.
struct CallClock {
    thread: std::thread::ThreadId,
    mark: Duration,
    at: Instant,
}

impl CallClock {
    fn start(now: Instant) -> Self {
        CallClock {
            thread: std::thread::current().id(),
            mark: cpu::thread_cpu_time(),
            at: now,
        }
    }

    /// The CPU the call used since the last read: the thread's CPU clock
    /// while it stayed on one thread; after it moved, the wall-clock time
    /// since, at most one tick.
    fn used(&mut self, now: Instant) -> Duration {
        let last = std::mem::replace(self, CallClock::start(now));
        if last.thread == self.thread {
            self.mark.saturating_sub(last.mark)
        } else {
            now.saturating_duration_since(last.at).min(EPOCH_TICK)
        }
    }
}

impl CpuMeter {
    fn new(group: Option<(CpuGroup, Arc<AtomicU64>)>) -> Self {
        CpuMeter {
            group,
            clock: CallClock::start(Instant::now()),
            deadline: Instant::now(),
        }
    }

    /// In a group: the CPU the call used since it was last charged, added
    /// to the job's count, and the group to charge it to.
    fn take_used(&mut self, now: Instant) -> Option<(&CpuGroup, Duration)> {
        let (group, job) = self.group.as_ref()?;
        let used = self.clock.used(now);
        job.fetch_add(used.as_nanos() as u64, Ordering::Relaxed);
        Some((group, used))
    }
}

impl InstanceState {
    /// Starts a call's bookkeeping: its wall-clock bound and, in a CPU
    /// group, its CPU mark.
    fn arm(store: &mut Store<InstanceState>, timeout_ms: u64) {
        let meter = &mut store.data_mut().cpu;
        let now = Instant::now();
        if meter.group.is_some() {
            meter.clock = CallClock::start(now);
        }
        meter.deadline = now + Duration::from_millis(timeout_ms);
        // Every tick: check the bound, charge the group (maybe wait), give
        // the worker up.
        store.set_epoch_deadline(1);
    }

    /// Charges the CPU of the call that just returned.
    fn settle(&mut self) {
        let now = Instant::now();
        // The next tick inside a call, or the next call, decides whether
        // to wait.
        if let Some((group, used)) = self.cpu.take_used(now) {
            group.add(used, now);
        }
    }
}

/// At each epoch tick inside a call: the call is interrupted once past its
/// wall-clock bound. Otherwise it gives its worker up — to every other
/// subtask waiting for one, so a long call cannot hold a worker from the
/// job's other subtasks or from other tenants — and, in a CPU group, its
/// CPU so far is charged to the group and, if the group is over its share,
/// it waits before it goes on as long as the share takes to pay the debt
/// back (not counted against the call's bound).
fn on_tick(
    mut ctx: wasmtime::StoreContextMut<'_, InstanceState>,
) -> wasmtime::Result<wasmtime::UpdateDeadline> {
    let meter = &mut ctx.data_mut().cpu;
    let now = Instant::now();
    if now >= meter.deadline {
        return Ok(wasmtime::UpdateDeadline::Interrupt);
    }
    let wait = match meter.take_used(now) {
        Some((group, used)) => group.charge(used, now).min(cpu::WINDOW),
        None => Duration::ZERO,
    };
    if wait.is_zero() {
        return Ok(wasmtime::UpdateDeadline::Yield(1));
    }
    meter.deadline += wait;
    Ok(wasmtime::UpdateDeadline::YieldCustom(
        1,
        Box::pin(tokio::time::sleep(wait)),
    ))
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A running instance of a plugin: one per operator subtask.
pub struct OperatorInstance {
    store: Store<InstanceState>,
    exports: WorldExports,
    uid: String,
    plugin: PathBuf,
    subtask: u32,
    limits: Limits,
    stderr: GuestOutput,
    log: LogMeter,
}

impl Plugin {
    /// The plugin file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counts this plugin's instances in `memory`, the count of the job
    /// they belong to, against `limits.job_memory_mb`. A plugin loaded on
    /// its own counts in a fresh one.
    #[must_use]
    pub fn with_job_memory(mut self, memory: &JobMemory) -> Self {
        self.job_memory = memory.clone();
        self
    }

    /// The same plugin, its instances sharing the CPU as members of
    /// `group` (a `weir serve` tenant's), their CPU time also added to
    /// `job_ns` (the job's, nanoseconds).
    pub fn with_cpu_group(mut self, group: &CpuGroup, job_ns: &Arc<AtomicU64>) -> Self {
        self.cpu = Some((group.clone(), job_ns.clone()));
        self
    }

    /// Instantiates the plugin for one subtask and calls its `open` hook.
    ///
    /// # Errors
    /// [`Error::OperatorFailed`] if instantiation or `open` fails.
    pub async fn instantiate(&self, cfg: InstanceConfig) -> Result<OperatorInstance, Error> {
        let tag: Arc<str> = format!("{}#{}", cfg.uid, cfg.subtask).into();
        let log = LogMeter::new(cfg.limits.log_bytes_per_call);
        let stdout = GuestOutput::new(tag.clone(), Stream::Stdout, log.clone());
        let stderr = GuestOutput::new(tag.clone(), Stream::Stderr, log.clone());
        let engine = self.linked.pre.engine();
        let mut share = MemoryShare::new(self.job_memory.clone(), cfg.limits.job_memory_bytes);
        let restored = cfg.state.approx_bytes();
        let fail = |hook: &'static str, hit: LimitHit| Error::LimitExceeded {
            uid: cfg.uid.clone(),
            plugin: self.path.clone(),
            subtask: cfg.subtask,
            hook,
            message: hit.0,
        };
        check_state_bytes(restored, cfg.limits).map_err(|hit| fail("restore", hit))?;
        share
            .set(Part::State, restored)
            .map_err(|hit| fail("restore", hit))?;
        let mut store = Store::new(
            engine,
            InstanceState {
                wasi: sandbox::wasi_ctx(&stdout, &stderr),
                table: ResourceTable::new(),
                limiter: MemoryLimiter {
                    cap: usize::try_from(cfg.limits.memory_bytes).unwrap_or(usize::MAX),
                    hit: None,
                    share,
                },
                limits: cfg.limits,
                output: Vec::new(),
                emitted: 0,
                hit: None,
                log: log.clone(),
                keyed: cfg.state,
                operator_state: cfg.operator_state.into_iter().collect(),
                declared: Declarations::default(),
                restored_types: cfg.restored_types,
                restore_conflict: None,
                max_parallelism: cfg.max_parallelism,
                timers: cfg.timers,
                watermark: i64::MIN,
                counters: Default::default(),
                counter_names: Default::default(),
                uid: cfg.uid.as_str().into(),
                tag,
                cpu: CpuMeter::new(self.cpu.clone()),
            },
        );
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(on_tick);
        let mut instance = OperatorInstance {
            exports: instantiate_into(
                &self.linked.pre,
                &mut store,
                &cfg.uid,
                &self.path,
                cfg.subtask,
                cfg.limits,
            )
            .await?,
            store,
            uid: cfg.uid.clone(),
            plugin: self.path.clone(),
            subtask: cfg.subtask,
            limits: cfg.limits,
            stderr,
            log,
        };
        let context = types::OperatorContext {
            uid: cfg.uid,
            config: cfg.config,
            subtask_index: cfg.subtask,
            parallelism: cfg.parallelism,
            max_parallelism: cfg.max_parallelism,
            attempt_number: cfg.attempt_number,
        };
        instance.call(Hook::Open(&context)).await?;
        Ok(instance)
    }

    /// The states the plugin declares for operator `uid` with `config`,
    /// found without running a job: one instance (subtask 0, empty state)
    /// is opened, its declarations collected, and the instance dropped
    /// without `close`. `weir savepoint check` compares these with what a
    /// savepoint holds. A plugin built without `declare` returns nothing.
    ///
    /// # Errors
    /// [`Error::OperatorFailed`] if instantiation or `open` fails,
    /// including a declaration the host refuses.
    pub fn declared_states(
        &self,
        uid: &str,
        config: &str,
        parallelism: u32,
        max_parallelism: u32,
        limits: Limits,
    ) -> Result<Vec<DeclaredState>, Error> {
        let instance = futures::executor::block_on(self.instantiate(InstanceConfig {
            uid: uid.to_owned(),
            config: config.to_owned(),
            subtask: 0,
            parallelism,
            max_parallelism,
            limits,
            state: Box::new(MemoryStateBackend::new(KeyGroupRange::for_subtask(
                0,
                parallelism,
                max_parallelism,
            ))),
            operator_state: Vec::new(),
            attempt_number: 0,
            restored_types: HashMap::new(),
            timers: TimerService::new(max_parallelism),
        }))?;
        Ok(instance.declared_states().to_vec())
    }
}

async fn instantiate_into(
    pre: &WorldPre,
    store: &mut Store<InstanceState>,
    uid: &str,
    plugin: &Path,
    subtask: u32,
    limits: Limits,
) -> Result<WorldExports, Error> {
    let budget = CallBudget::of("instantiate", limits);
    store
        .set_fuel(budget.fuel)
        .map_err(|e| Error::Internal(format!("setting fuel: {e:#}")))?;
    InstanceState::arm(store, budget.timeout_ms);
    let instantiated = match pre {
        WorldPre::V2(p) => p.instantiate_async(&mut *store).await.map(WorldExports::V2),
        WorldPre::V1(p) => p.instantiate_async(&mut *store).await.map(WorldExports::V1),
    };
    store.data_mut().settle();
    instantiated.map_err(|e| {
        failure(
            &e,
            store.data(),
            uid,
            plugin,
            subtask,
            "instantiate",
            budget,
            "",
        )
    })
}

/// A call into the guest, with its arguments.
enum Hook<'a> {
    Open(&'a types::OperatorContext),
    Process(&'a Vec<u8>),
    Snapshot(u64),
    Complete(u64),
    Watermark(i64),
    Timer(&'a Vec<u8>, i64, types::TimeDomain),
    Close,
}

impl Hook<'_> {
    /// The hook's name in the WIT world (and in messages).
    fn name(&self) -> &'static str {
        match self {
            Hook::Open(_) => "open",
            Hook::Process(_) => "process",
            Hook::Snapshot(_) => "snapshot",
            Hook::Complete(_) => "on-checkpoint-complete",
            Hook::Watermark(_) => "on-watermark",
            Hook::Timer(..) => "on-timer",
            Hook::Close => "close",
        }
    }
}

/// The fuel and wall-clock time one hook call gets, and the job-file field
/// that sets its fuel.
#[derive(Clone, Copy)]
struct CallBudget {
    fuel: u64,
    timeout_ms: u64,
    fuel_knob: &'static str,
}

impl CallBudget {
    /// `snapshot` and `close` flush cached state: a budget of their own
    /// (and a wall-clock bound scaled alike), so a big flush fits while a
    /// spinning one is still stopped.
    fn of(hook: &str, limits: Limits) -> Self {
        match hook {
            "snapshot" | "close" => CallBudget {
                fuel: limits.fuel_per_snapshot,
                timeout_ms: limits
                    .call_timeout_ms
                    .saturating_mul((limits.fuel_per_snapshot / limits.fuel_per_call).max(1)),
                fuel_knob: "limits.fuel_per_snapshot",
            },
            _ => CallBudget {
                fuel: limits.fuel_per_call,
                timeout_ms: limits.call_timeout_ms,
                fuel_knob: "limits.fuel_per_call",
            },
        }
    }
}

/// Checks `bytes` of keyed state against `limits.state_mb`.
fn check_state_bytes(bytes: u64, limits: Limits) -> Result<(), LimitHit> {
    if bytes <= limits.state_bytes {
        return Ok(());
    }
    Err(LimitHit(format!(
        "holds {} MiB of keyed state, over its limit of {} MiB (`limits.state_mb`)",
        mib(bytes),
        mib(limits.state_bytes)
    )))
}

/// The error for a failed call: a limit hit names the limit (and is not
/// retried); anything else is a trap described by its kind.
#[allow(clippy::too_many_arguments)]
fn failure(
    e: &wasmtime::Error,
    data: &InstanceState,
    uid: &str,
    plugin: &Path,
    subtask: u32,
    hook: &'static str,
    budget: CallBudget,
    stderr: &str,
) -> Error {
    let CallBudget {
        fuel,
        timeout_ms,
        fuel_knob,
    } = budget;
    let hit = data
        .limiter
        .hit
        .clone()
        .or_else(|| data.hit.clone())
        .or_else(|| data.log.hit())
        .or_else(|| {
            e.chain()
                .find_map(|c| c.downcast_ref::<LimitHit>().cloned())
        })
        .or_else(|| match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => Some(LimitHit(format!(
                "exceeded its CPU budget of {fuel} fuel per call (`{fuel_knob}`)"
            ))),
            Some(Trap::Interrupt) => Some(LimitHit(format!(
                "ran longer than its wall-clock bound of {timeout_ms} ms per call \
                 (`limits.call_timeout_ms`{})",
                if fuel_knob == "limits.fuel_per_call" {
                    ""
                } else {
                    ", scaled for this hook by fuel_per_snapshot / fuel_per_call"
                }
            ))),
            Some(Trap::StackOverflow) => Some(LimitHit(format!(
                "stack overflow: recursion deeper than the host's Wasm stack limit of {} KiB \
                 (`MAX_WASM_STACK`, fixed)",
                MAX_WASM_STACK >> 10
            ))),
            _ => None,
        });
    let with_stderr = |mut msg: String| {
        if !stderr.is_empty() {
            msg.push_str("; guest stderr: ");
            msg.push_str(stderr);
        }
        msg
    };
    if let Some(BackendFailure(message)) =
        e.chain().find_map(|c| c.downcast_ref::<BackendFailure>())
    {
        return Error::StateBackend {
            uid: uid.to_owned(),
            subtask,
            message: message.clone(),
        };
    }
    match hit {
        Some(hit) => Error::LimitExceeded {
            uid: uid.to_owned(),
            plugin: plugin.to_owned(),
            subtask,
            hook,
            message: with_stderr(hit.0),
        },
        None => Error::OperatorFailed {
            uid: uid.to_owned(),
            plugin: plugin.to_owned(),
            subtask,
            hook,
            message: with_stderr(describe_trap(e)),
        },
    }
}

/// A trap that is no limit: its kind (wasmtime puts it after the
/// backtrace in the error's chain), else the first line of the error.
fn describe_trap(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<Trap>() {
        Some(trap) => format!("trapped: {trap}"),
        None => format!(
            "trapped: {}",
            format!("{e:#}").lines().next().unwrap_or_default()
        ),
    }
}

impl OperatorInstance {
    async fn call(&mut self, hook: Hook<'_>) -> Result<(), Error> {
        let name = hook.name();
        let budget = CallBudget::of(name, self.limits);
        self.store
            .set_fuel(budget.fuel)
            .map_err(|e| Error::Internal(format!("setting fuel: {e:#}")))?;
        InstanceState::arm(&mut self.store, budget.timeout_ms);
        self.begin_call();
        let store = &mut self.store;
        let result = match &self.exports {
            WorldExports::V2(exports) => {
                let ops = exports.weir_operator_operator();
                match hook {
                    Hook::Open(context) => ops.call_open(store, context).await,
                    Hook::Process(batch) => ops.call_process(store, batch).await,
                    Hook::Snapshot(id) => ops.call_snapshot(store, id).await,
                    Hook::Complete(id) => ops.call_on_checkpoint_complete(store, id).await,
                    Hook::Watermark(w) => ops.call_on_watermark(store, w).await,
                    Hook::Timer(key, ts, domain) => ops.call_on_timer(store, key, ts, domain).await,
                    Hook::Close => ops.call_close(store).await,
                }
            }
            WorldExports::V1(exports) => {
                let ops = exports.weir_operator_operator();
                match hook {
                    Hook::Open(context) => ops.call_open(store, context).await,
                    Hook::Process(batch) => ops.call_process(store, batch).await,
                    Hook::Snapshot(id) => ops.call_snapshot(store, id).await,
                    Hook::Complete(id) => ops.call_on_checkpoint_complete(store, id).await,
                    // A 0.1.0 component knows no event time: it has no
                    // timers, and a watermark passes it by.
                    Hook::Watermark(_) | Hook::Timer(..) => Ok(Ok(())),
                    Hook::Close => ops.call_close(store).await,
                }
            }
        };
        self.store.data_mut().settle();
        if !matches!(result, Ok(Ok(_)))
            && let Some(conflict) = self.store.data_mut().restore_conflict.take()
        {
            return Err(Error::Restore {
                message: format!(
                    "operator `{}` subtask {}: {conflict}",
                    self.uid, self.subtask
                ),
            });
        }
        if let Some((lines, bytes, budget)) = self.log.end_call() {
            tracing::warn!(
                target: "weir::plugin",
                "[{}#{}] dropped {lines} log line(s) ({bytes} bytes) of `{name}` over the log \
                 budget of {} KiB per call (`limits.log_kb_per_call`)",
                self.uid,
                self.subtask,
                budget >> 10
            );
        }
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(message)) => Err(Error::OperatorFailed {
                uid: self.uid.clone(),
                plugin: self.plugin.clone(),
                subtask: self.subtask,
                hook: name,
                message: format!("returned an error: {message}"),
            }),
            Err(e) => Err(failure(
                &e,
                self.store.data(),
                &self.uid,
                &self.plugin,
                self.subtask,
                name,
                budget,
                &self.stderr.tail(),
            )),
        }
    }

    /// How long the instance's CPU group must wait before its next call:
    /// zero unless the machine is contended and the group used more than
    /// its share. The caller waits without holding a worker.
    pub fn cpu_wait(&mut self) -> Duration {
        match &self.store.data().cpu.group {
            Some((group, _)) => group.wait_before_call(Instant::now()),
            None => Duration::ZERO,
        }
    }

    /// Resets what is counted per call; the records emitted by the last
    /// call were routed (the caller empties [`OperatorInstance::output`]).
    fn begin_call(&mut self) {
        self.log.begin_call();
        let data = self.store.data_mut();
        data.emitted = 0;
        data.hit = None;
        let buffered = data.output.len() as u64;
        // Shrinking a share never fails.
        let _ = data.limiter.share.set(Part::Output, buffered);
    }

    /// Hands a packed batch to the guest's `process` hook.
    ///
    /// # Errors
    /// [`Error::OperatorFailed`] on a trap, an exceeded limit or an error
    /// the guest returns. The instance must not be called again after one.
    // The generated binding takes `&Vec<u8>`; taking a slice here would force
    // a copy per batch.
    #[allow(clippy::ptr_arg)]
    pub async fn process(&mut self, batch: &Vec<u8>) -> Result<(), Error> {
        self.call(Hook::Process(batch)).await
    }

    /// Calls the guest's `snapshot` hook, after which the host holds all of
    /// its state.
    ///
    /// # Errors
    /// As [`OperatorInstance::process`].
    pub async fn snapshot(&mut self, checkpoint_id: u64) -> Result<(), Error> {
        self.call(Hook::Snapshot(checkpoint_id)).await
    }

    /// Calls the guest's `on-checkpoint-complete` hook.
    ///
    /// # Errors
    /// As [`OperatorInstance::process`].
    pub async fn on_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<(), Error> {
        self.call(Hook::Complete(checkpoint_id)).await
    }

    /// Sets the operator's watermark to `watermark` (the timers it makes
    /// due are taken with [`OperatorInstance::pop_due_timer`] and fired
    /// one by one before [`OperatorInstance::on_watermark`]).
    pub fn set_watermark(&mut self, watermark: i64) {
        let data = self.store.data_mut();
        data.watermark = data.watermark.max(watermark);
    }

    /// The earliest timer of `domain` at or before `upto`, taken out of the
    /// timer service: it fires now.
    ///
    /// # Errors
    /// [`Error::StateBackend`] if the state backend fails.
    pub fn pop_due_timer(
        &mut self,
        domain: TimeDomain,
        upto: i64,
    ) -> Result<Option<FiredTimer>, Error> {
        let data = self.store.data_mut();
        data.timers
            .pop_due(data.keyed.as_mut(), domain, upto)
            .map_err(|e| Error::StateBackend {
                uid: self.uid.clone(),
                subtask: self.subtask,
                message: e.to_string(),
            })
    }

    /// The earliest registered processing-time timer, if any.
    pub fn next_processing_timer(&self) -> Option<i64> {
        self.store.data().timers.next(TimeDomain::ProcessingTime)
    }

    /// Calls the guest's `on-timer` hook for a timer that fired.
    ///
    /// # Errors
    /// As [`OperatorInstance::process`].
    pub async fn on_timer(&mut self, timer: &FiredTimer) -> Result<(), Error> {
        let domain = match timer.domain {
            TimeDomain::EventTime => types::TimeDomain::EventTime,
            TimeDomain::ProcessingTime => types::TimeDomain::ProcessingTime,
        };
        self.call(Hook::Timer(&timer.key, timer.timestamp, domain))
            .await
    }

    /// Calls the guest's `on-watermark` hook.
    ///
    /// # Errors
    /// As [`OperatorInstance::process`].
    pub async fn on_watermark(&mut self, watermark: i64) -> Result<(), Error> {
        self.call(Hook::Watermark(watermark)).await
    }

    /// The operator's counters added since they were last taken.
    pub fn take_counters(&mut self) -> std::collections::BTreeMap<String, u64> {
        std::mem::take(&mut self.store.data_mut().counters)
    }

    /// Calls the guest's `close` hook at end of input.
    ///
    /// # Errors
    /// As [`OperatorInstance::process`].
    pub async fn close(&mut self) -> Result<(), Error> {
        self.call(Hook::Close).await
    }

    /// The packed records emitted since the last call; the caller routes
    /// them and clears the buffer.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.store.data_mut().output
    }

    /// The states the guest declared so far (normally all of them, in
    /// `open`), in declaration order.
    pub fn declared_states(&self) -> &[DeclaredState] {
        self.store.data().declared.all()
    }

    /// The subtask's keyed state.
    pub fn state(&self) -> &dyn KeyedStateBackend {
        self.store.data().keyed.as_ref()
    }

    /// The subtask's keyed state, to take a checkpoint of it.
    pub fn state_mut(&mut self) -> &mut dyn KeyedStateBackend {
        self.store.data_mut().keyed.as_mut()
    }

    /// A copy of the operator (non-keyed) state, by name, sorted.
    pub fn operator_state(&self) -> Vec<(String, Vec<Value>)> {
        let mut all: Vec<_> = self
            .store
            .data()
            .operator_state
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The operator (non-keyed) states as snapshot sections, sorted by
    /// name, each with the redistribution the plugin declared for it
    /// (split when undeclared).
    pub fn operator_lists(&self) -> Vec<weir_format::snapshot::ListSection> {
        let declared = self.store.data().declared.all();
        self.operator_state()
            .into_iter()
            .map(|(name, items)| {
                let redistribution = declared
                    .iter()
                    .find_map(|d| match d.kind {
                        DeclaredKind::OperatorList { redistribution } if d.name == name => {
                            Some(redistribution)
                        }
                        _ => None,
                    })
                    .unwrap_or_default();
                weir_format::snapshot::ListSection::user(name, redistribution, items)
            })
            .collect()
    }

    /// Ends the instance and hands back its keyed state, to give to the
    /// next instance of the same operator uid (which may run another
    /// plugin). Call after [`OperatorInstance::close`] or
    /// [`OperatorInstance::snapshot`], when the host holds all the state.
    pub fn into_state(self) -> Box<dyn KeyedStateBackend> {
        self.store.into_data().keyed
    }
}

// ---- host side of the imports ----

impl types::Host for InstanceState {}

impl InstanceState {
    /// Records `hit` as this call's failure and makes it a trap.
    fn refuse(&mut self, hit: LimitHit) -> wasmtime::Error {
        self.hit = Some(hit.clone());
        wasmtime::Error::new(hit)
    }
}

impl output::Host for InstanceState {
    fn emit(&mut self, batch: Vec<u8>) -> wasmtime::Result<()> {
        self.emitted += batch.len() as u64;
        if self.emitted > self.limits.emit_bytes_per_call {
            let hit = LimitHit(format!(
                "emitted more than {} MiB in one call (`limits.emit_mb_per_call`)",
                mib(self.limits.emit_bytes_per_call)
            ));
            return Err(self.refuse(hit));
        }
        let buffered = (self.output.len() + batch.len()) as u64;
        if let Err(hit) = self.limiter.share.set(Part::Output, buffered) {
            return Err(self.refuse(hit));
        }
        if self.output.is_empty() {
            self.output = batch;
        } else {
            self.output.extend_from_slice(&batch);
        }
        Ok(())
    }
}

impl logging::Host for InstanceState {
    fn log(&mut self, level: types::Level, mut message: String) -> wasmtime::Result<()> {
        if let Err(hit) = self.log.offer(message.len()) {
            return Err(self.refuse(hit));
        }
        let mut cut = "";
        if message.len() > MAX_LOG_LINE {
            let mut end = MAX_LOG_LINE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            cut = " [line cut at 8 KiB]";
        }
        if self.log.admit(message.len()) == sandbox::Admit::Drop {
            return Ok(());
        }
        let tag = &self.tag;
        match level {
            types::Level::Trace => {
                tracing::trace!(target: "weir::plugin", "[{tag}] {message}{cut}")
            }
            types::Level::Debug => {
                tracing::debug!(target: "weir::plugin", "[{tag}] {message}{cut}")
            }
            types::Level::Info => tracing::info!(target: "weir::plugin", "[{tag}] {message}{cut}"),
            types::Level::Warn => tracing::warn!(target: "weir::plugin", "[{tag}] {message}{cut}"),
            types::Level::Error => {
                tracing::error!(target: "weir::plugin", "[{tag}] {message}{cut}")
            }
        }
        Ok(())
    }
}

/// Parses and canonicalises a declared type descriptor, checking it fits
/// `kind` (a map state is a `map<K, V>`, a list state a `list<T>`).
fn declared_type(
    state: &str,
    kind: DeclaredKind,
    type_name: Option<String>,
) -> Result<Option<String>, String> {
    let Some(text) = type_name else {
        return Ok(None);
    };
    let t = TypeDescriptor::parse(&text).map_err(|e| format!("state `{state}`: {e}"))?;
    let fits = matches!(
        (kind, &t),
        (_, TypeDescriptor::Any)
            | (DeclaredKind::Value, _)
            | (DeclaredKind::Map, TypeDescriptor::Map(..))
            | (
                DeclaredKind::List | DeclaredKind::OperatorList { .. },
                TypeDescriptor::List(_)
            )
    );
    if !fits {
        let shape = if kind == DeclaredKind::Map {
            "map<K, V>"
        } else {
            "list<T>"
        };
        return Err(format!(
            "state `{state}` is declared {kind} with type `{t}`; the type of a {kind} state is `{shape}` or `any`"
        ));
    }
    Ok(Some(t.to_string()))
}

impl InstanceState {
    /// Refuses a declared type that cannot read the type the restored
    /// state was written with.
    fn check_restored_type(&self, state: &str, declared: Option<&str>) -> Result<(), String> {
        let (Some(new), Some(old)) = (declared, self.restored_types.get(state)) else {
            return Ok(());
        };
        let (Ok(new_t), Ok(old_t)) = (TypeDescriptor::parse(new), TypeDescriptor::parse(old))
        else {
            return Ok(());
        };
        new_t.reads(&old_t).map_err(|why| {
            format!(
                "state `{state}` of operator `{}` was saved as {old}, which the declared type {new} cannot read: {why}",
                self.uid
            )
        })
    }
}

impl keyed_state::Host for InstanceState {
    fn declare(
        &mut self,
        state: String,
        kind: types::StateKind,
        type_name: Option<String>,
    ) -> Result<(), String> {
        let kind = match kind {
            types::StateKind::Value => DeclaredKind::Value,
            types::StateKind::Map => DeclaredKind::Map,
            types::StateKind::List => DeclaredKind::List,
        };
        not_reserved(&state)?;
        let type_name = declared_type(&state, kind, type_name)?;
        self.check_restored_type(&state, type_name.as_deref())
            .inspect_err(|e| self.restore_conflict = Some(e.clone()))?;
        if let Some(bound) = self.keyed.bound_kind(&state)
            && Some(bound) != kind.keyed()
        {
            let conflict = format!(
                "state `{state}` of operator `{}` holds {bound} entries in the restored state but is declared {kind}",
                self.uid
            );
            self.restore_conflict = Some(conflict.clone());
            return Err(conflict);
        }
        self.declared.declare(DeclaredState {
            name: state,
            kind,
            type_name,
        })
    }

    fn value_get(
        &mut self,
        state: String,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<Option<types::Value>, String>> {
        if let Err(e) = not_reserved(&state) {
            return Ok(Err(e));
        }
        let kg = key_group_of(&key, self.max_parallelism);
        to_guest(
            self.keyed
                .value_get(kg, &state, &key)
                .map(|v| v.map(value::lower)),
        )
    }

    fn map_get(
        &mut self,
        state: String,
        key: Vec<u8>,
        map_key: types::Value,
    ) -> wasmtime::Result<Result<Option<types::Value>, String>> {
        if let Err(e) = not_reserved(&state) {
            return Ok(Err(e));
        }
        let kg = key_group_of(&key, self.max_parallelism);
        let map_key = match value::lift(map_key) {
            Ok(k) => k,
            Err(e) => return Ok(Err(e)),
        };
        to_guest(
            self.keyed
                .map_get(kg, &state, &key, &map_key)
                .map(|v| v.map(value::lower)),
        )
    }

    fn map_entries(
        &mut self,
        state: String,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<(types::Value, types::Value)>, String>> {
        if let Err(e) = not_reserved(&state) {
            return Ok(Err(e));
        }
        let kg = key_group_of(&key, self.max_parallelism);
        to_guest(self.keyed.map_entries(kg, &state, &key).map(|es| {
            es.into_iter()
                .map(|(k, v)| (value::lower(k), value::lower(v)))
                .collect()
        }))
    }

    fn list_get(
        &mut self,
        state: String,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<types::Value>, String>> {
        if let Err(e) = not_reserved(&state) {
            return Ok(Err(e));
        }
        let kg = key_group_of(&key, self.max_parallelism);
        to_guest(self.keyed.list_get(kg, &state, &key).map(value::lower_all))
    }

    fn write(
        &mut self,
        writes: Vec<keyed_state::StateWrite>,
    ) -> wasmtime::Result<Result<(), String>> {
        let result = self.apply_writes(writes)?;
        self.check_state_growth()?;
        Ok(result)
    }

    fn write_packed(&mut self, writes: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        let result = self.apply_packed(&writes)?;
        self.check_state_growth()?;
        Ok(result)
    }
}

impl InstanceState {
    /// Applies the guest's writes: `Ok(Err(..))` for its own mistake
    /// (returned to it), `Err` for a backend failure (the call traps).
    fn apply_writes(
        &mut self,
        writes: Vec<keyed_state::StateWrite>,
    ) -> wasmtime::Result<Result<(), String>> {
        for w in writes {
            if let Err(e) = not_reserved(&w.state) {
                return Ok(Err(e));
            }
            let kg = key_group_of(&w.key, self.max_parallelism);
            let lifted = (|| {
                Ok::<_, String>(match w.update {
                    keyed_state::Update::ValueSet(v) => Update::ValueSet(value::lift(v)?),
                    keyed_state::Update::ValueClear => Update::ValueClear,
                    keyed_state::Update::MapPut((k, v)) => {
                        Update::MapPut(value::lift(k)?, value::lift(v)?)
                    }
                    keyed_state::Update::MapRemove(k) => Update::MapRemove(value::lift(k)?),
                    keyed_state::Update::MapClear => Update::MapClear,
                    keyed_state::Update::ListSet(vs) => Update::ListSet(value::lift_all(vs)?),
                    keyed_state::Update::ListClear => Update::ListClear,
                })
            })();
            let update = match lifted {
                Ok(u) => u,
                Err(e) => return Ok(Err(e)),
            };
            if let Err(e) = to_guest(self.keyed.apply(kg, &w.state, &w.key, update))? {
                return Ok(Err(format!("state `{}`: {e}", w.state)));
            }
        }
        Ok(Ok(()))
    }
}

impl InstanceState {
    /// Applies a packed write buffer (`weir_format::writes`) as
    /// [`InstanceState::apply_writes`] applies a list: writes up to a
    /// malformed one or an operator's mistake are applied, and that one
    /// is the guest's error.
    fn apply_packed(&mut self, buf: &[u8]) -> wasmtime::Result<Result<(), String>> {
        let mut allowed: Option<&str> = None;
        for w in WritesReader::new(buf, value::MAX_DEPTH) {
            let w = match w {
                Ok(w) => w,
                Err(e) => return Ok(Err(e.to_string())),
            };
            if allowed != Some(w.state) {
                if let Err(e) = not_reserved(w.state) {
                    return Ok(Err(e));
                }
                allowed = Some(w.state);
            }
            let update = match w.op {
                WriteOp::ValueSet(v) => Update::ValueSet(v),
                WriteOp::ValueClear => Update::ValueClear,
                WriteOp::MapPut { key, value, .. } => Update::MapPut(key, value),
                WriteOp::MapRemove { key, .. } => Update::MapRemove(key),
                WriteOp::MapClear => Update::MapClear,
                WriteOp::ListSet(items) => Update::ListSet(items),
                WriteOp::ListClear => Update::ListClear,
            };
            let kg = key_group_of(w.key, self.max_parallelism);
            if let Err(e) = to_guest(self.keyed.apply(kg, w.state, w.key, update))? {
                return Ok(Err(format!("state `{}`: {e}", w.state)));
            }
        }
        Ok(Ok(()))
    }
}

/// Refuses a state name the host reserves for itself (timers).
fn not_reserved(state: &str) -> Result<(), String> {
    if crate::timers::is_reserved(state) {
        return Err(format!(
            "state `{state}`: names starting with `{}` are reserved for the host",
            crate::timers::RESERVED_PREFIX
        ));
    }
    Ok(())
}

/// A state backend's answer for the guest: the operator's own mistakes
/// (a foreign key, a kind mismatch) as its error; a failure of the backend
/// itself as a trap carrying [`BackendFailure`], so the job fails as the
/// host's error instead of the guest swallowing it.
fn to_guest<T>(result: Result<T, StateError>) -> wasmtime::Result<Result<T, String>> {
    match result {
        Ok(v) => Ok(Ok(v)),
        Err(e) if e.is_operators() => Ok(Err(e.to_string())),
        Err(e) => Err(wasmtime::Error::new(BackendFailure(e.to_string()))),
    }
}

/// The payload of a trap raised because the state backend failed.
#[derive(Debug, Clone)]
struct BackendFailure(String);

impl std::fmt::Display for BackendFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BackendFailure {}

impl operator_state::Host for InstanceState {
    fn declare(
        &mut self,
        state: String,
        redistribution: types::Redistribution,
        type_name: Option<String>,
    ) -> Result<(), String> {
        let kind = DeclaredKind::OperatorList {
            redistribution: match redistribution {
                types::Redistribution::Split => Redistribution::Split,
                types::Redistribution::Union => Redistribution::Union,
            },
        };
        let type_name = declared_type(&state, kind, type_name)?;
        self.check_restored_type(&state, type_name.as_deref())
            .inspect_err(|e| self.restore_conflict = Some(e.clone()))?;
        self.declared.declare(DeclaredState {
            name: state,
            kind,
            type_name,
        })
    }

    fn get(&mut self, state: String) -> Vec<types::Value> {
        self.operator_state
            .get(&state)
            .cloned()
            .map(value::lower_all)
            .unwrap_or_default()
    }

    fn replace(&mut self, state: String, values: Vec<types::Value>) -> Result<(), String> {
        let values = value::lift_all(values).map_err(|e| format!("state `{state}`: {e}"))?;
        self.operator_state.insert(state, values);
        Ok(())
    }
}

/// The most counters one operator instance keeps.
const MAX_COUNTERS: usize = 32;

/// The longest counter name.
const MAX_COUNTER_NAME: usize = 64;

impl InstanceState {
    /// Checks the state limits after keyed state grew (a write, a timer).
    fn check_state_growth(&mut self) -> wasmtime::Result<()> {
        let bytes = self.keyed.approx_bytes();
        if let Err(hit) = check_state_bytes(bytes, self.limits) {
            return Err(self.refuse(hit));
        }
        if let Err(hit) = self.limiter.share.set(Part::State, bytes) {
            return Err(self.refuse(hit));
        }
        Ok(())
    }
}

fn time_domain(domain: types::TimeDomain) -> TimeDomain {
    match domain {
        types::TimeDomain::EventTime => TimeDomain::EventTime,
        types::TimeDomain::ProcessingTime => TimeDomain::ProcessingTime,
    }
}

impl timers::Host for InstanceState {
    fn register(
        &mut self,
        key: Vec<u8>,
        timestamp: i64,
        domain: types::TimeDomain,
    ) -> wasmtime::Result<Result<(), String>> {
        let result = to_guest(self.timers.register(
            self.keyed.as_mut(),
            &key,
            timestamp,
            time_domain(domain),
        ))?;
        self.check_state_growth()?;
        Ok(result)
    }

    fn delete(
        &mut self,
        key: Vec<u8>,
        timestamp: i64,
        domain: types::TimeDomain,
    ) -> wasmtime::Result<Result<(), String>> {
        to_guest(
            self.timers
                .delete(self.keyed.as_mut(), &key, timestamp, time_domain(domain)),
        )
    }

    fn current_watermark(&mut self) -> i64 {
        self.watermark
    }

    fn current_processing_time(&mut self) -> i64 {
        processing_time_now()
    }
}

/// The host's clock in milliseconds since the Unix epoch: what
/// processing-time timers run on.
pub fn processing_time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl metrics::Host for InstanceState {
    fn counter_add(&mut self, name: String, delta: u64) -> wasmtime::Result<()> {
        let valid = !name.is_empty()
            && name.len() <= MAX_COUNTER_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !valid {
            let hit = LimitHit(format!(
                "named a counter `{}`: a counter name is 1 to {MAX_COUNTER_NAME} bytes of [A-Za-z0-9_.-]",
                name.escape_debug()
            ));
            return Err(self.refuse(hit));
        }
        if !self.counter_names.contains(&name) {
            if self.counter_names.len() >= MAX_COUNTERS {
                let hit = LimitHit(format!(
                    "used more than {MAX_COUNTERS} counters (`metrics.counter-add`)"
                ));
                return Err(self.refuse(hit));
            }
            self.counter_names.insert(name.clone());
        }
        let c = self.counters.entry(name).or_default();
        *c = c.saturating_add(delta);
        Ok(())
    }
}

// ---- the 0.1.0 world's imports: the same functions ----

impl bindings_v1::weir::operator::output::Host for InstanceState {
    fn emit(&mut self, batch: Vec<u8>) -> wasmtime::Result<()> {
        output::Host::emit(self, batch)
    }
}

impl bindings_v1::weir::operator::logging::Host for InstanceState {
    fn log(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
        logging::Host::log(self, level, message)
    }
}

impl bindings_v1::weir::operator::operator_state::Host for InstanceState {
    fn declare(
        &mut self,
        state: String,
        redistribution: types::Redistribution,
        type_name: Option<String>,
    ) -> Result<(), String> {
        operator_state::Host::declare(self, state, redistribution, type_name)
    }

    fn get(&mut self, state: String) -> Vec<types::Value> {
        operator_state::Host::get(self, state)
    }

    fn replace(&mut self, state: String, values: Vec<types::Value>) -> Result<(), String> {
        operator_state::Host::replace(self, state, values)
    }
}

impl bindings_v1::weir::operator::keyed_state::Host for InstanceState {
    fn declare(
        &mut self,
        state: String,
        kind: types::StateKind,
        type_name: Option<String>,
    ) -> Result<(), String> {
        keyed_state::Host::declare(self, state, kind, type_name)
    }

    fn value_get(
        &mut self,
        state: String,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<Option<types::Value>, String>> {
        keyed_state::Host::value_get(self, state, key)
    }

    fn map_get(
        &mut self,
        state: String,
        key: Vec<u8>,
        map_key: types::Value,
    ) -> wasmtime::Result<Result<Option<types::Value>, String>> {
        keyed_state::Host::map_get(self, state, key, map_key)
    }

    fn map_entries(
        &mut self,
        state: String,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<(types::Value, types::Value)>, String>> {
        keyed_state::Host::map_entries(self, state, key)
    }

    fn list_get(
        &mut self,
        state: String,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<types::Value>, String>> {
        keyed_state::Host::list_get(self, state, key)
    }

    fn write(
        &mut self,
        writes: Vec<bindings_v1::weir::operator::keyed_state::StateWrite>,
    ) -> wasmtime::Result<Result<(), String>> {
        use bindings_v1::weir::operator::keyed_state::Update as V1;
        let writes = writes
            .into_iter()
            .map(|w| keyed_state::StateWrite {
                state: w.state,
                key: w.key,
                update: match w.update {
                    V1::ValueSet(v) => keyed_state::Update::ValueSet(v),
                    V1::ValueClear => keyed_state::Update::ValueClear,
                    V1::MapPut(kv) => keyed_state::Update::MapPut(kv),
                    V1::MapRemove(k) => keyed_state::Update::MapRemove(k),
                    V1::MapClear => keyed_state::Update::MapClear,
                    V1::ListSet(vs) => keyed_state::Update::ListSet(vs),
                    V1::ListClear => keyed_state::Update::ListClear,
                },
            })
            .collect();
        keyed_state::Host::write(self, writes)
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::keygroup::KeyGroupRange;
    use crate::state::MemoryStateBackend;
    use futures::executor::block_on;

    fn cache_files(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    /// An engine caching in `cache`, with its key beside it.
    fn cached_engine(cache: &Path) -> PluginEngine {
        let key = cache.with_extension("key");
        PluginEngine::with_cache_key(Some((cache.to_owned(), key))).unwrap()
    }

    #[test]
    fn compiled_plugins_are_cached_by_content_and_a_corrupt_entry_is_recompiled() {
        let root = tempfile::tempdir().unwrap();
        let cache = root.path().join("cache");
        let engine = cached_engine(&cache);
        let wasm = Path::new(weir_test_plugins::WORD_COUNT);
        assert!(!engine.load("count", wasm).unwrap().stats.from_cache);
        let files = cache_files(&cache);
        assert_eq!(files.len(), 1, "one entry per component");
        let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
        let digest = hex::encode(Sha256::digest(std::fs::read(wasm).unwrap()));
        assert!(
            name.starts_with(&digest),
            "{name} is keyed by the content hash"
        );

        // A second engine (a new process) loads the compiled code.
        let engine = cached_engine(&cache);
        assert!(engine.load("count", wasm).unwrap().stats.from_cache);

        // A damaged entry is ignored and replaced, not trusted.
        std::fs::write(&files[0], b"garbage").unwrap();
        let plugin = engine.load("count", wasm).unwrap();
        assert!(!plugin.stats.from_cache);
        assert!(engine.load("count", wasm).unwrap().stats.from_cache);
        // Another job loading a plugin in use shares its compiled code.
        let again = engine.load("other", wasm).unwrap();
        assert!(Arc::ptr_eq(&plugin.linked, &again.linked));

        // And the recompiled plugin runs: word count over one batch.
        let mut instance = block_on(plugin.instantiate(config_over(MemoryStateBackend::new(
            KeyGroupRange::for_subtask(0, 1, 128),
        ))))
        .unwrap();
        let mut batch = weir_format::BatchWriter::default();
        for word in ["a", "b", "a"] {
            batch.push(Some(word.as_bytes()), word.as_bytes(), None);
        }
        block_on(instance.process(&batch.take().0)).unwrap();
        let emitted: Vec<_> = weir_format::BatchReader::new(instance.output())
            .map(|r| String::from_utf8(r.unwrap().value.to_vec()).unwrap())
            .collect();
        assert_eq!(emitted, ["1", "1", "2"]);
        // State reaches the host when the guest closes (or snapshots).
        assert_eq!(instance.state().len(), 0);
        block_on(instance.close()).unwrap();
        assert_eq!(instance.state().len(), 2);
    }

    #[test]
    fn a_cache_entry_swapped_for_another_plugins_is_not_loaded() {
        let root = tempfile::tempdir().unwrap();
        let cache = root.path().join("cache");
        let engine = cached_engine(&cache);
        let count = Path::new(weir_test_plugins::WORD_COUNT);
        engine.load("count", count).unwrap();
        let count_entry = cache_files(&cache).pop().unwrap();
        engine
            .load("filter", Path::new(weir_test_plugins::FILTER))
            .unwrap();
        let filter_entry = cache_files(&cache)
            .into_iter()
            .find(|f| *f != count_entry)
            .unwrap();
        // Someone puts the filter's native code where word count's was.
        std::fs::copy(&filter_entry, &count_entry).unwrap();
        let plugin = engine.load("count", count).unwrap();
        assert!(!plugin.stats.from_cache, "the swapped entry is a miss");
        // It runs as word count, and the entry was rewritten.
        let mut instance = block_on(plugin.instantiate(config_over(MemoryStateBackend::new(
            KeyGroupRange::for_subtask(0, 1, 128),
        ))))
        .unwrap();
        let mut batch = weir_format::BatchWriter::default();
        batch.push(Some(b"the"), b"the", None);
        block_on(instance.process(&batch.take().0)).unwrap();
        let emitted: Vec<_> = weir_format::BatchReader::new(instance.output())
            .map(|r| r.unwrap().value.to_vec())
            .collect();
        assert_eq!(emitted, [b"1".to_vec()], "word count, not the filter");
        assert!(engine.load("count", count).unwrap().stats.from_cache);
    }

    /// A backend whose reads fail as a disk would: the host's failure.
    struct FailingReads(MemoryStateBackend);

    use crate::keygroup::KeyGroup;

    impl KeyedStateBackend for FailingReads {
        fn key_groups(&self) -> KeyGroupRange {
            self.0.key_groups()
        }
        fn value_get(&self, _: KeyGroup, _: &str, _: &[u8]) -> Result<Option<Value>, StateError> {
            Err(StateError::Backend {
                message: "reading block 7: input/output error".into(),
            })
        }
        fn map_get(
            &self,
            kg: KeyGroup,
            name: &str,
            key: &[u8],
            map_key: &Value,
        ) -> Result<Option<Value>, StateError> {
            self.0.map_get(kg, name, key, map_key)
        }
        fn map_entries(
            &self,
            kg: KeyGroup,
            name: &str,
            key: &[u8],
        ) -> Result<Vec<(Value, Value)>, StateError> {
            self.0.map_entries(kg, name, key)
        }
        fn list_get(&self, kg: KeyGroup, name: &str, key: &[u8]) -> Result<Vec<Value>, StateError> {
            self.0.list_get(kg, name, key)
        }
        fn apply(
            &mut self,
            kg: KeyGroup,
            name: &str,
            key: &[u8],
            update: Update,
        ) -> Result<(), StateError> {
            self.0.apply(kg, name, key, update)
        }
        fn len(&self) -> usize {
            self.0.len()
        }
        fn approx_bytes(&self) -> u64 {
            self.0.approx_bytes()
        }
        fn bound_kind(&self, name: &str) -> Option<crate::state::StateKind> {
            self.0.bound_kind(name)
        }
        fn snapshot(&self) -> Vec<crate::state::KeyGroupSnapshot> {
            self.0.snapshot()
        }
        fn snapshot_views(&self) -> Vec<crate::state::KeyGroupView<'_>> {
            self.0.snapshot_views()
        }
        fn restore(
            &mut self,
            groups: Vec<crate::state::KeyGroupSnapshot>,
        ) -> Result<(), StateError> {
            self.0.restore(groups)
        }
    }

    #[test]
    fn a_state_backend_failure_traps_the_call_as_the_hosts_error_not_the_guests() {
        let engine = PluginEngine::new(None).unwrap();
        let plugin = engine
            .load("count", Path::new(weir_test_plugins::WORD_COUNT))
            .unwrap();
        let mut instance = block_on(plugin.instantiate(InstanceConfig {
            state: Box::new(FailingReads(MemoryStateBackend::new(
                KeyGroupRange::for_subtask(0, 1, 128),
            ))),
            ..config_over(MemoryStateBackend::new(KeyGroupRange::for_subtask(
                0, 1, 128,
            )))
        }))
        .unwrap();
        let mut batch = weir_format::BatchWriter::default();
        batch.push(Some(b"word"), b"word", None);
        let e = block_on(instance.process(&batch.take().0)).unwrap_err();
        assert!(matches!(e, Error::StateBackend { .. }), "{e:?}");
        assert_eq!(e.kind(), crate::ErrorKind::External);
        assert!(e.restartable(crate::job::OperatorErrors::Fail));
        assert!(e.to_string().contains("input/output error"), "{e}");
        // The operator's own mistakes still reach it as errors (to_guest).
        let foreign = to_guest::<()>(Err(StateError::KindMismatch {
            name: "count".into(),
            bound: crate::state::StateKind::Value,
            used: crate::state::StateKind::Map,
        }));
        assert!(matches!(foreign, Ok(Err(m)) if m.contains("is a value state")));
    }

    fn config_over(state: MemoryStateBackend) -> InstanceConfig {
        InstanceConfig {
            uid: "count".into(),
            config: String::new(),
            subtask: 0,
            parallelism: 1,
            max_parallelism: 128,
            limits: limits(),
            state: Box::new(state),
            operator_state: Vec::new(),
            attempt_number: 0,
            restored_types: HashMap::new(),
            timers: TimerService::new(128),
        }
    }

    #[test]
    fn restored_state_over_the_state_limit_fails_before_open() {
        let range = KeyGroupRange::for_subtask(0, 1, 128);
        let mut state = MemoryStateBackend::new(range);
        let key = b"k";
        state
            .apply(
                key_group_of(key, 128),
                "count",
                key,
                Update::ValueSet(Value::Bytes(vec![0; 3 << 20])),
            )
            .unwrap();
        let engine = PluginEngine::new(None).unwrap();
        let plugin = engine
            .load("count", Path::new(weir_test_plugins::WORD_COUNT))
            .unwrap();
        let mut cfg = config_over(state);
        cfg.limits.state_bytes = 2 << 20;
        let Err(e) = block_on(plugin.instantiate(cfg)) else {
            panic!("3 MiB of state over a 2 MiB limit must fail");
        };
        assert!(
            matches!(
                e,
                Error::LimitExceeded {
                    hook: "restore",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string().contains(
                "holds 3 MiB of keyed state, over its limit of 2 MiB (`limits.state_mb`)"
            ),
            "{e}"
        );
        assert!(!e.restartable(crate::job::OperatorErrors::Restart));
    }

    fn limits() -> Limits {
        Limits {
            memory_bytes: 64 << 20,
            fuel_per_call: 1_000_000_000,
            ..Limits::default()
        }
    }

    fn declared(name: &str, kind: DeclaredKind, type_name: Option<&str>) -> DeclaredState {
        DeclaredState {
            name: name.into(),
            kind,
            type_name: type_name.map(Into::into),
        }
    }

    #[test]
    fn plugins_in_every_language_declare_their_states_without_running_a_job() {
        let engine = PluginEngine::new(None).unwrap();
        let states = |path: &str| {
            engine
                .load("stats", Path::new(path))
                .unwrap()
                .declared_states("stats", "", 2, 128, limits())
                .unwrap()
        };
        assert_eq!(
            states(weir_test_plugins::STATS),
            [
                declared(
                    "stats",
                    DeclaredKind::Value,
                    Some("record{count: int, total: float, last: text, raw: bytes}")
                ),
                declared("items", DeclaredKind::Map, Some("map<text, int>")),
                declared("recent", DeclaredKind::List, Some("list<text>")),
            ]
        );
        // Python and JavaScript declare the same states, untyped.
        let untyped = [
            declared("stats", DeclaredKind::Value, None),
            declared("items", DeclaredKind::Map, None),
            declared("recent", DeclaredKind::List, None),
        ];
        assert_eq!(states(weir_test_plugins::PY_STATS), untyped);
        assert_eq!(states(weir_test_plugins::JS_STATS), untyped);
        assert_eq!(
            states(weir_test_plugins::WORD_COUNT),
            [declared("count", DeclaredKind::Value, Some("int"))]
        );
    }

    fn word_count_over(state: MemoryStateBackend) -> Result<OperatorInstance, Error> {
        word_count_with_types(state, HashMap::new())
    }

    fn word_count_with_types(
        state: MemoryStateBackend,
        restored_types: HashMap<String, String>,
    ) -> Result<OperatorInstance, Error> {
        let engine = PluginEngine::new(None).unwrap();
        let plugin = engine
            .load("count", Path::new(weir_test_plugins::WORD_COUNT))
            .unwrap();
        block_on(plugin.instantiate(InstanceConfig {
            attempt_number: 1,
            restored_types,
            ..config_over(state)
        }))
    }

    #[test]
    fn a_declared_type_that_cannot_read_the_saved_one_fails_open() {
        let range = KeyGroupRange::for_subtask(0, 1, 128);
        // Saved as int (what word count declares), or uint, which an int
        // reads: fine.
        for saved in ["int", "uint", "any"] {
            let types = HashMap::from([("count".to_owned(), saved.to_owned())]);
            assert!(
                word_count_with_types(MemoryStateBackend::new(range), types).is_ok(),
                "{saved}"
            );
        }
        let types = HashMap::from([("count".to_owned(), "text".to_owned())]);
        let Err(e) = word_count_with_types(MemoryStateBackend::new(range), types) else {
            panic!("an int declaration over saved text must fail");
        };
        let msg = e.to_string();
        assert!(
            msg.contains("state `count` of operator `count` was saved as text"),
            "{msg}"
        );
    }

    #[test]
    fn a_restored_state_of_another_kind_fails_open_naming_uid_and_state() {
        let range = KeyGroupRange::for_subtask(0, 1, 128);
        let key = b"k";
        let kg = key_group_of(key, 128);

        // Restored as a value state: declaring it a value state is fine.
        let mut state = MemoryStateBackend::new(range);
        state
            .apply(kg, "count", key, Update::ValueSet(Value::Int(4)))
            .unwrap();
        let instance = word_count_over(state).unwrap();
        assert_eq!(
            instance.declared_states(),
            [declared("count", DeclaredKind::Value, Some("int"))]
        );

        // Restored as a map state: `open` fails before any record.
        let mut state = MemoryStateBackend::new(range);
        state
            .apply(
                kg,
                "count",
                key,
                Update::MapPut(Value::Text("a".into()), Value::Int(1)),
            )
            .unwrap();
        let Err(e) = word_count_over(state) else {
            panic!("a value declaration over a restored map state must fail");
        };
        let msg = e.to_string();
        assert!(
            msg.contains(
                "state `count` of operator `count` holds map entries in the restored state but is declared value"
            ),
            "{msg}"
        );
        // Retrying cannot help: a restore error, not a restartable failure.
        assert!(matches!(e, Error::Restore { .. }), "{e:?}");
        assert!(!e.restartable(crate::job::OperatorErrors::Restart));
    }

    #[test]
    fn declared_types_are_parsed_canonicalised_and_checked_against_the_kind() {
        assert_eq!(
            declared_type("s", DeclaredKind::Map, Some(" map<text,int> ".into())),
            Ok(Some("map<text, int>".into()))
        );
        assert_eq!(declared_type("s", DeclaredKind::List, None), Ok(None));
        assert_eq!(
            declared_type("s", DeclaredKind::List, Some("any".into())),
            Ok(Some("any".into()))
        );
        let e = declared_type("s", DeclaredKind::List, Some("int".into())).unwrap_err();
        assert_eq!(
            e,
            "state `s` is declared list with type `int`; the type of a list state is `list<T>` or `any`"
        );
        let e = declared_type("s", DeclaredKind::Value, Some("record{a int}".into())).unwrap_err();
        assert!(
            e.starts_with("state `s`: type descriptor `record{a int}` is malformed at byte 9"),
            "{e}"
        );
        let op = DeclaredKind::OperatorList {
            redistribution: Redistribution::Union,
        };
        assert!(declared_type("s", op, Some("map<int, int>".into())).is_err());
    }

    #[test]
    fn the_hosts_timer_states_are_out_of_a_guests_reach() {
        for name in [
            crate::timers::EVENT_TIME_TIMERS,
            crate::timers::PROCESSING_TIME_TIMERS,
            "_weir/anything",
        ] {
            let e = not_reserved(name).unwrap_err();
            assert!(e.contains("reserved for the host"), "{e}");
        }
        assert!(not_reserved("count").is_ok());
        assert!(not_reserved("weir/timers").is_ok());
    }

    #[test]
    fn a_plugin_path_that_is_a_device_is_never_read() {
        let engine = PluginEngine::new(None).unwrap();
        let Err(e) = engine.load("op", Path::new("/dev/zero")) else {
            panic!("/dev/zero loaded as a plugin");
        };
        let msg = e.to_string();
        assert!(
            msg.contains("is a character device, not a regular file"),
            "{msg}"
        );
    }

    #[test]
    fn header_check_tells_modules_from_components() {
        assert!(check_component_header(b"\0asm\x0d\0\x01\0rest").is_ok());
        let err = check_component_header(b"\0asm\x01\0\0\0rest").unwrap_err();
        assert!(err.contains("core WebAssembly module"), "{err}");
        let err = check_component_header(b"hello, world").unwrap_err();
        assert!(err.contains("not a WebAssembly component"), "{err}");
    }

    #[test]
    fn a_window_plugin_fires_by_the_hosts_timers_and_counts_what_came_too_late() {
        let engine = PluginEngine::new(None).unwrap();
        let plugin = engine
            .load("windows", Path::new(weir_test_plugins::WINDOW_COUNT))
            .unwrap();
        let mut instance = block_on(plugin.instantiate(InstanceConfig {
            config: r#"{"size": 10}"#.into(),
            ..config_over(MemoryStateBackend::new(KeyGroupRange::for_subtask(
                0, 1, 128,
            )))
        }))
        .unwrap();
        let batch = |records: &[(&str, i64)]| {
            let mut b = weir_format::BatchWriter::default();
            for (key, ts) in records {
                b.push(Some(key.as_bytes()), b"x", Some(*ts));
            }
            b.take().0
        };
        block_on(instance.process(&batch(&[("a", 1), ("a", 5), ("b", 12)]))).unwrap();
        // The guest's timers are the host's, in its keyed state.
        assert_eq!(
            instance
                .state()
                .bound_kind(crate::timers::EVENT_TIME_TIMERS),
            Some(crate::state::StateKind::Map)
        );
        instance.set_watermark(9);
        let mut fired = Vec::new();
        while let Some(t) = instance.pop_due_timer(TimeDomain::EventTime, 9).unwrap() {
            block_on(instance.on_timer(&t)).unwrap();
            fired.push((String::from_utf8(t.key.clone()).unwrap(), t.timestamp));
        }
        assert_eq!(fired, [("a".to_owned(), 9)], "b's window ends at 20");
        block_on(instance.on_watermark(9)).unwrap();
        let out: Vec<String> = weir_format::BatchReader::new(instance.output())
            .map(|r| String::from_utf8(r.unwrap().value.to_vec()).unwrap())
            .collect();
        assert_eq!(out, ["a,0,10,2"]);
        instance.output().clear();
        // Too late for its only window: dropped, and counted.
        block_on(instance.process(&batch(&[("a", 3), ("a", 4)]))).unwrap();
        assert!(instance.output().is_empty());
        assert_eq!(
            instance.take_counters(),
            std::collections::BTreeMap::from([("late_records_dropped".to_owned(), 2)])
        );
        assert!(instance.take_counters().is_empty(), "taken once");
    }
}
