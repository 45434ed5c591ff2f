//! `GET /metrics`: the host's jobs in the Prometheus text format, per
//! tenant, job and vertex, encoded by `prometheus-client` from the live
//! counters at each scrape.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Inner;

type Labels = Vec<(String, String)>;

/// One family of the scrape.
struct Metric<M> {
    family: Family<Labels, M>,
}

impl<
    M: Default
        + Clone
        + prometheus_client::metrics::TypedMetric
        + Send
        + Sync
        + std::fmt::Debug
        + 'static,
> Metric<M>
where
    M: prometheus_client::encoding::EncodeMetric,
{
    fn register(registry: &mut Registry, name: &str, help: &str) -> Self {
        let family = Family::<Labels, M>::default();
        registry.register(name, help, family.clone());
        Metric { family }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The scrape: every tenant's jobs, or only `tenant`'s.
pub(super) fn render(inner: &Inner, tenant: Option<&str>) -> String {
    let mut registry = Registry::with_prefix("weir");
    let job_up = Metric::<Gauge>::register(
        &mut registry,
        "job_running",
        "1 while the job runs (by state), 0 once it ended",
    );
    let records_in = Metric::<Counter>::register(
        &mut registry,
        "vertex_records_in",
        "Records a vertex received",
    );
    let records_out = Metric::<Counter>::register(
        &mut registry,
        "vertex_records_out",
        "Records a vertex sent downstream (sinks: wrote)",
    );
    let operator_counters = Metric::<Counter>::register(
        &mut registry,
        "operator_counter",
        "An operator's own counter (`metrics.counter-add`), by name",
    );
    let restarts =
        Metric::<Counter>::register(&mut registry, "job_restarts", "Restarts after a failure");
    let completed = Metric::<Counter>::register(
        &mut registry,
        "checkpoints_completed",
        "Checkpoints completed",
    );
    let failed = Metric::<Counter>::register(
        &mut registry,
        "checkpoints_failed",
        "Checkpoints that failed or were aborted",
    );
    let duration = Metric::<Gauge<f64, AtomicU64>>::register(
        &mut registry,
        "checkpoint_last_duration_seconds",
        "The latest completed checkpoint's duration",
    );
    let size = Metric::<Gauge>::register(
        &mut registry,
        "checkpoint_last_size_bytes",
        "The latest completed checkpoint's size",
    );
    let job_memory = Metric::<Gauge>::register(
        &mut registry,
        "job_memory_bytes",
        "Memory the job's plugin instances hold (guest memories, keyed state, emitted records)",
    );
    let job_cpu = Metric::<Counter<f64, AtomicU64>>::register(
        &mut registry,
        "job_cpu_seconds",
        "CPU time of the job's plugin calls in its current run",
    );
    let memory = Metric::<Gauge>::register(
        &mut registry,
        "tenant_memory_bytes",
        "Plugin memory (guest memories, keyed state, emitted records) over the tenant's jobs",
    );
    let memory_quota = Metric::<Gauge>::register(
        &mut registry,
        "tenant_memory_quota_bytes",
        "The tenant's `memory_mb` quota",
    );
    let cpu = Metric::<Counter<f64, AtomicU64>>::register(
        &mut registry,
        "tenant_cpu_seconds",
        "CPU time of the tenant's plugin calls",
    );
    let throttled = Metric::<Counter<f64, AtomicU64>>::register(
        &mut registry,
        "tenant_cpu_throttled_seconds",
        "Time the tenant's plugin calls waited over its CPU share",
    );
    let running_jobs = Metric::<Gauge>::register(
        &mut registry,
        "tenant_running_jobs",
        "The tenant's jobs not yet ended",
    );
    for job in inner.all_jobs() {
        let t = job.tenant.name.as_str();
        if tenant.is_some_and(|want| want != t) {
            continue;
        }
        let record = job.record();
        let state = job.control().state();
        let base = labels(&[
            ("tenant", t),
            ("job", &record.id),
            ("job_name", &record.name),
        ]);
        let mut with_state = base.clone();
        with_state.push(("state".into(), state.name().into()));
        job_up
            .family
            .get_or_create(&with_state)
            .set(i64::from(!state.is_terminal()));
        let m = job.metrics();
        for v in &m.vertices {
            let mut l = base.clone();
            l.push(("vertex".into(), v.uid.clone()));
            records_in.family.get_or_create(&l).inc_by(v.records_in());
            records_out.family.get_or_create(&l).inc_by(v.records_out());
            for (name, value) in v.counters() {
                let mut l = l.clone();
                l.push(("counter".into(), name));
                operator_counters.family.get_or_create(&l).inc_by(value);
            }
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        restarts
            .family
            .get_or_create(&base)
            .inc_by(load(&m.restarts));
        completed
            .family
            .get_or_create(&base)
            .inc_by(load(&m.checkpoints.completed));
        failed
            .family
            .get_or_create(&base)
            .inc_by(load(&m.checkpoints.failed));
        duration
            .family
            .get_or_create(&base)
            .set(load(&m.checkpoints.last_duration_ms) as f64 / 1000.0);
        size.family
            .get_or_create(&base)
            .set(load(&m.checkpoints.last_bytes) as i64);
        job_memory
            .family
            .get_or_create(&base)
            .set(load(&m.plugin_memory) as i64);
        job_cpu
            .family
            .get_or_create(&base)
            .inc_by(load(&m.plugin_cpu_ns) as f64 / 1e9);
    }
    for t in inner.tenants().values() {
        if tenant.is_some_and(|want| want != t.name) {
            continue;
        }
        let l = labels(&[("tenant", &t.name)]);
        memory.family.get_or_create(&l).set(t.memory.used() as i64);
        memory_quota
            .family
            .get_or_create(&l)
            .set(t.memory.budget() as i64);
        cpu.family
            .get_or_create(&l)
            .inc_by(t.cpu.cpu_time().as_secs_f64());
        throttled
            .family
            .get_or_create(&l)
            .inc_by(t.cpu.throttled().as_secs_f64());
        running_jobs
            .family
            .get_or_create(&l)
            .set(i64::from(inner.running(Some(t)).jobs));
    }
    let mut out = String::new();
    encode(&mut out, &registry).expect("invariant: writing to a String cannot fail");
    out
}
