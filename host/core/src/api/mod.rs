//! The REST API of running jobs: JSON over HTTP, versioned under `/v1`,
//! shaped after Flink's. It lists jobs, triggers savepoints, stops a job
//! with a savepoint and cancels it; `docs/rest-api.yaml` is its OpenAPI
//! document.
//!
//! The server ([`bind`], or [`ApiThread`] from plain threads) serves a
//! [`Jobs`] registry on tokio with axum. It reaches a job only through its
//! [`JobControl`], never the runtime's threads, and never blocks: a
//! savepoint request is answered at once with a request id, and its
//! outcome is kept in the registry for clients to poll. [`client`] is the
//! other end, for the `weir` command.

pub mod client;
pub mod targets;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use self::targets::SavepointRoots;
use crate::error::Error;
use crate::runtime::{
    JobControl, JobInfo, SavepointFormat, SavepointInfo, SavepointRequest, StopMode,
};

/// How many savepoint requests the registry remembers per job; the oldest
/// is forgotten first.
pub const MAX_REQUESTS_PER_JOB: usize = 100;

/// How many savepoint and stop requests of one job may be in flight
/// (queued or being taken) at once; one more is answered 429.
pub const MAX_PENDING_REQUESTS_PER_JOB: usize = 8;

/// How long [`ApiServer::shutdown`] waits for a client to fetch the
/// outcome of a stop request: the job ends when its stop savepoint
/// completes, and the client that asked for it must still learn where the
/// savepoint is.
const STOP_RESULT_LINGER: Duration = Duration::from_secs(5);

/// The API's version prefix.
const V1: &str = "/v1";

// ---------------------------------------------------------------------------
// Wire types, shared with the client.

/// A job as the API shows it (`GET /v1/jobs/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    /// The job's id (32 hex digits).
    pub id: String,
    /// Its name from the job file.
    pub name: String,
    /// Its state: `CREATED`, `RUNNING`, `RESTARTING`, `STOPPING`,
    /// `CANCELLING`, `FINISHED`, `CANCELED` or `FAILED`.
    pub state: String,
    /// When it started, in milliseconds since the Unix epoch.
    pub start_time: u64,
    /// How long it has run, in milliseconds.
    pub uptime_ms: u64,
    /// The latest completed checkpoint's id, if any.
    pub last_checkpoint: Option<u64>,
    /// How many times it restarted after a failure.
    pub restarts: u64,
}

impl From<JobInfo> for JobView {
    fn from(info: JobInfo) -> Self {
        JobView {
            id: info.id.to_string(),
            name: info.name,
            state: info.state.name().to_owned(),
            start_time: info
                .started
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            uptime_ms: u64::try_from(info.uptime.as_millis()).unwrap_or(u64::MAX),
            last_checkpoint: info.last_checkpoint,
            restarts: info.restarts,
        }
    }
}

/// The answer to `GET /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobList {
    /// Every job, oldest first.
    pub jobs: Vec<JobView>,
}

/// The body of `POST /v1/jobs/{id}/savepoints`; every field is optional,
/// and so is the body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavepointBody {
    /// The directory (path or URL) the savepoint is created under: a
    /// path relative to the job's default savepoint root, or an absolute
    /// path or URL under one of its roots; by default the job file's
    /// `[savepoints] dir`.
    #[serde(
        default,
        deserialize_with = "present_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub target_directory: Option<String>,
    /// `canonical` (the default) or `native`.
    #[serde(
        default,
        deserialize_with = "present_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub format: Option<String>,
}

/// The body of `POST /v1/jobs/{id}/stop`; every field is optional, and so
/// is the body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopBody {
    /// As for [`SavepointBody`].
    #[serde(
        default,
        deserialize_with = "present_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub target_directory: Option<String>,
    /// End the input first, so operators flush (`close`) before the
    /// savepoint; by default the job is suspended as it is.
    #[serde(default)]
    pub drain: bool,
    /// As for [`SavepointBody`].
    #[serde(
        default,
        deserialize_with = "present_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub format: Option<String>,
}

/// An optional string field that, when present, must be a string: `null`
/// is refused as the OpenAPI document says (an absent field is the
/// default).
fn present_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// The answer to a savepoint or stop request (HTTP 202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Triggered {
    /// Poll `GET /v1/jobs/{id}/savepoints/{request_id}` for the outcome.
    pub request_id: String,
}

/// Where a savepoint request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RequestStatus {
    /// Not answered yet.
    InProgress,
    /// The savepoint is complete.
    Completed,
    /// The savepoint failed (a stop's job goes on running).
    Failed,
}

/// The answer to `GET /v1/jobs/{id}/savepoints/{request_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavepointStatus {
    /// Where the request is.
    pub status: RequestStatus,
    /// Completed: the savepoint's directory, which `weir run -s` accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Completed: the savepoint's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_id: Option<u64>,
    /// Failed: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Failed: whether it failed while it was taken (storage, a subtask, a
    /// timeout), so asking again may succeed, rather than being refused
    /// (no target, the job finishing), which asking again cannot change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retryable: bool,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, naming the job or request at fault.
    pub error: String,
}

/// The name of `format` in request bodies.
pub fn format_name(format: SavepointFormat) -> &'static str {
    match format {
        SavepointFormat::Canonical => "canonical",
        SavepointFormat::Native => "native",
    }
}

// ---------------------------------------------------------------------------
// The registry.

/// The jobs an API serves, by id, with the outcomes of their savepoint
/// requests. Cheap to clone; clones share the registry.
#[derive(Clone, Default)]
pub struct Jobs {
    inner: Arc<Mutex<Registry>>,
    /// Savepoint locations under it are shown relative to it (a tenant's
    /// namespace, which it names savepoints in).
    shown_under: Option<Arc<str>>,
}

#[derive(Default)]
struct Registry {
    jobs: HashMap<String, JobEntry>,
    /// The next job's [`JobEntry::order`].
    next: u64,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.controls()).finish()
    }
}

struct JobEntry {
    control: JobControl,
    /// Where its savepoints may be written.
    roots: SavepointRoots,
    /// Insertion order: jobs are listed oldest first.
    order: u64,
    /// Oldest first, at most [`MAX_REQUESTS_PER_JOB`].
    requests: VecDeque<Request>,
}

struct Request {
    id: String,
    stop: bool,
    /// The answer: the savepoint, or why not and whether retrying may help.
    outcome: Option<Result<SavepointInfo, (String, bool)>>,
    /// A client has seen the outcome.
    fetched: bool,
}

impl Jobs {
    /// An empty registry.
    pub fn new() -> Self {
        Jobs::default()
    }

    /// An empty registry whose savepoint locations under `namespace` (a
    /// directory or URL) are shown as names relative to it.
    pub fn within(namespace: &str) -> Self {
        Jobs {
            shown_under: Some(namespace.trim_end_matches('/').into()),
            ..Jobs::default()
        }
    }

    /// `location` as a client sees it: relative to the namespace if under
    /// it.
    pub fn show(&self, location: &str) -> String {
        self.shown_under
            .as_deref()
            .and_then(|ns| location.strip_prefix(ns))
            .and_then(|rest| rest.strip_prefix('/'))
            .map_or_else(|| location.to_owned(), str::to_owned)
    }

    /// Serves `control`'s job (replacing a job with the same id), whose
    /// savepoints may be written only under `roots`.
    pub fn insert(&self, control: JobControl, roots: SavepointRoots) {
        let mut registry = self.lock();
        let order = registry.next;
        registry.next += 1;
        registry.jobs.insert(
            control.id().to_string(),
            JobEntry {
                control,
                roots,
                order,
                requests: VecDeque::new(),
            },
        );
    }

    /// Stops serving job `id`; its request outcomes are forgotten.
    pub fn remove(&self, id: &str) -> Option<JobControl> {
        self.lock().jobs.remove(id).map(|e| e.control)
    }

    /// Job `id`'s handle.
    pub fn get(&self, id: &str) -> Option<JobControl> {
        self.lock().jobs.get(id).map(|e| e.control.clone())
    }

    /// Every job's handle, oldest first.
    pub fn controls(&self) -> Vec<JobControl> {
        let registry = self.lock();
        let mut all: Vec<&JobEntry> = registry.jobs.values().collect();
        all.sort_by_key(|e| e.order);
        all.into_iter().map(|e| e.control.clone()).collect()
    }

    /// The savepoint of job `id`'s completed stop request, if one
    /// completed: where the stopped job can be resumed from.
    pub fn stop_savepoint(&self, id: &str) -> Option<SavepointInfo> {
        self.lock().jobs.get(id).and_then(|e| {
            e.requests
                .iter()
                .rev()
                .find_map(|r| match (&r.outcome, r.stop) {
                    (Some(Ok(info)), true) => Some(info.clone()),
                    _ => None,
                })
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner
            .lock()
            .expect("invariant: the job registry lock is not poisoned")
    }

    /// Job `id`'s handle and savepoint roots.
    fn get_with_roots(&self, id: &str) -> Option<(JobControl, SavepointRoots)> {
        self.lock()
            .jobs
            .get(id)
            .map(|e| (e.control.clone(), e.roots.clone()))
    }

    /// Remembers a new request of job `job`, forgetting the oldest settled
    /// ones beyond [`MAX_REQUESTS_PER_JOB`]; refuses it if
    /// [`MAX_PENDING_REQUESTS_PER_JOB`] are in flight already. Checked and
    /// added under one lock, so concurrent requests cannot overshoot.
    fn add_request(&self, job: &str, id: &str, stop: bool) -> Answer<()> {
        let mut registry = self.lock();
        let Some(entry) = registry.jobs.get_mut(job) else {
            return Err(ApiError::unknown_job(job));
        };
        let pending = entry
            .requests
            .iter()
            .filter(|r| r.outcome.is_none())
            .count();
        if pending >= MAX_PENDING_REQUESTS_PER_JOB {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "job `{}` ({job}) already has {pending} savepoint or stop requests in \
                     flight, the limit ({MAX_PENDING_REQUESTS_PER_JOB}): wait until one \
                     completes (poll its status), then retry",
                    entry.control.name()
                ),
            ));
        }
        entry.requests.push_back(Request {
            id: id.to_owned(),
            stop,
            outcome: None,
            fetched: false,
        });
        while entry.requests.len() > MAX_REQUESTS_PER_JOB {
            entry.requests.pop_front();
        }
        Ok(())
    }

    /// Forgets request `id` of job `job` (the job refused it at once).
    fn forget_request(&self, job: &str, id: &str) {
        if let Some(entry) = self.lock().jobs.get_mut(job) {
            entry.requests.retain(|r| r.id != id);
        }
    }

    fn settle(&self, job: &str, id: &str, outcome: Result<SavepointInfo, Error>) {
        if let Some(request) = self
            .lock()
            .jobs
            .get_mut(job)
            .and_then(|e| e.requests.iter_mut().find(|r| r.id == id))
        {
            request.outcome =
                Some(outcome.map_err(|e| (e.to_string(), e.kind() == crate::ErrorKind::External)));
        }
    }

    /// Request `id` of job `job` as the API shows it; marks a settled
    /// outcome fetched.
    fn request_status(&self, job: &str, id: &str) -> Option<SavepointStatus> {
        let shown = |location: &str| self.show(location);
        let mut registry = self.lock();
        let request = registry
            .jobs
            .get_mut(job)?
            .requests
            .iter_mut()
            .find(|r| r.id == id)?;
        request.fetched |= request.outcome.is_some();
        Some(match &request.outcome {
            None => SavepointStatus {
                status: RequestStatus::InProgress,
                location: None,
                savepoint_id: None,
                failure: None,
                retryable: false,
            },
            Some(Ok(info)) => SavepointStatus {
                status: RequestStatus::Completed,
                location: Some(shown(&info.location)),
                savepoint_id: Some(info.id),
                failure: None,
                retryable: false,
            },
            Some(Err((why, retryable))) => SavepointStatus {
                status: RequestStatus::Failed,
                location: None,
                savepoint_id: None,
                failure: Some(why.clone()),
                retryable: *retryable,
            },
        })
    }

    /// Whether some stop request's outcome has not reached a client yet.
    fn stop_outcome_unfetched(&self) -> bool {
        self.lock()
            .jobs
            .values()
            .flat_map(|e| &e.requests)
            .any(|r| r.stop && !r.fetched)
    }
}

// ---------------------------------------------------------------------------
// The server.

/// What the API server holds every client to, so that no client can make
/// it starve the job of file descriptors, memory or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Connections served at once. At the cap the server stops accepting
    /// (new connections wait in the kernel's backlog, holding none of the
    /// process's descriptors) until one closes.
    pub max_connections: usize,
    /// How long a client has to send a request's headers, and how long an
    /// idle keep-alive connection is kept: then it is closed.
    pub header_timeout: Duration,
    /// How long reading a request's body and answering it may take: then
    /// it is answered 408 and the connection closed.
    pub request_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// [`ApiLimits::max_connections`] by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// [`ApiLimits::header_timeout`] by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// [`ApiLimits::request_timeout`] by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request body accepted (413 beyond); the API's bodies are a
/// few fields.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The read buffer of a connection, which bounds a request's headers.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// A running API server on the caller's tokio runtime.
#[derive(Debug)]
pub struct ApiServer {
    local_addr: SocketAddr,
    jobs: Jobs,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    open: Arc<AtomicUsize>,
}

/// Starts serving `jobs` on `addr` (port 0: any free port) on the current
/// tokio runtime, with the default [`ApiLimits`].
///
/// # Errors
/// [`Error::ApiBind`] if nothing can listen on `addr` (in use, not a local
/// address, no permission).
pub async fn bind(addr: SocketAddr, jobs: Jobs) -> Result<ApiServer, Error> {
    bind_with(addr, jobs, ApiLimits::default()).await
}

/// As [`bind`], holding clients to `limits`.
///
/// # Errors
/// As [`bind`].
pub async fn bind_with(
    addr: SocketAddr,
    jobs: Jobs,
    limits: ApiLimits,
) -> Result<ApiServer, Error> {
    let bind_error = |source| Error::ApiBind {
        address: addr,
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    listener.local_addr().map_err(bind_error)?;
    Ok(serve_on(listener, router(jobs.clone()), jobs, limits))
}

/// Serves `router` on `listener` under `limits` (a host's own routes); a
/// shutdown lingers for the stop outcomes of `jobs`.
pub(crate) fn serve_on(
    listener: tokio::net::TcpListener,
    router: Router,
    jobs: Jobs,
    limits: ApiLimits,
) -> ApiServer {
    let local_addr = listener
        .local_addr()
        .expect("invariant: a bound listener has an address");
    let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
    let open = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(accept_loop(listener, router, limits, signal, open.clone()));
    tracing::debug!("REST API listening on http://{local_addr}");
    ApiServer {
        local_addr,
        jobs,
        shutdown,
        task,
        open,
    }
}

/// Accepts connections while fewer than `limits.max_connections` are
/// open, each served on its own task, until `shutdown`; then lets the open
/// ones finish their requests.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ApiLimits,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
    open: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // A slot first, then accept: at the cap nothing is accepted.
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => {
                slot.expect("invariant: the connection semaphore is never closed")
            }
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, or the peer gave up: let the
                    // process recover rather than spin.
                    tracing::warn!("REST API: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        };
        while connections.try_join_next().is_some() {}
        open.fetch_add(1, Ordering::Relaxed);
        let (router, closing, open) = (router.clone(), closing_rx.clone(), open.clone());
        connections.spawn(async move {
            serve_connection(stream, router, limits, closing).await;
            open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Resolves once `closing` is true (or its sender is gone).
async fn closed(closing: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here.
    let _ = closing.wait_for(|c| *c).await.map(|_| ());
}

/// Serves HTTP/1 on one connection: headers within
/// `limits.header_timeout` (idle keep-alive included), each request
/// answered within `limits.request_timeout`; when `closing` turns true,
/// the request in flight is answered and the connection closed.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    router: Router,
    limits: ApiLimits,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    use tower::ServiceExt;
    let service = hyper::service::service_fn(move |request: axum::http::Request<_>| {
        let router = router.clone();
        async move {
            let answer = tokio::time::timeout(
                limits.request_timeout,
                router.oneshot(request.map(axum::body::Body::new)),
            )
            .await;
            Ok::<_, std::convert::Infallible>(match answer {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request was not read and answered within the limit of {:?}",
                        limits.request_timeout
                    ),
                )
                .into_response(),
            })
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let outcome = tokio::select! {
        outcome = connection.as_mut() => outcome,
        () = closed(&mut closing) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = outcome {
        tracing::debug!("REST API connection closed: {e}");
    }
}

impl ApiServer {
    /// The address it listens on (with the port chosen if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many connections it serves now (at most
    /// [`ApiLimits::max_connections`]).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Stops serving: requests in flight are answered, new connections
    /// refused. Waits first (a few seconds at most) until every stop
    /// request's outcome was fetched by a client.
    pub async fn shutdown(self) {
        let deadline = Instant::now() + STOP_RESULT_LINGER;
        while self.jobs.stop_outcome_unfetched() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.shutdown.send(());
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!("REST API on {}: {e}", self.local_addr),
            Ok(Err(e)) => tracing::warn!("REST API on {}: {e}", self.local_addr),
            Err(_) => tracing::warn!(
                "REST API on {}: requests still in flight after 5 s; dropped",
                self.local_addr
            ),
        }
    }
}

/// An API server on its own small tokio runtime, for callers that are not
/// async (the `weir run` command).
#[derive(Debug)]
pub struct ApiThread {
    runtime: tokio::runtime::Runtime,
    server: ApiServer,
}

impl ApiThread {
    /// Starts serving `jobs` on `addr` (port 0: any free port).
    ///
    /// # Errors
    /// [`Error::ApiBind`] as [`bind`]; [`Error::Internal`] if the runtime
    /// cannot start.
    pub fn start(addr: SocketAddr, jobs: Jobs) -> Result<Self, Error> {
        Self::start_with(addr, jobs, ApiLimits::default())
    }

    /// As [`start`](Self::start), holding clients to `limits`.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_with(addr: SocketAddr, jobs: Jobs, limits: ApiLimits) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weir-api")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("starting the REST API runtime: {e}")))?;
        let server = runtime.block_on(bind_with(addr, jobs, limits))?;
        Ok(ApiThread { runtime, server })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops serving, as [`ApiServer::shutdown`].
    pub fn shutdown(self) {
        self.runtime.block_on(self.server.shutdown());
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// The API's routes over `jobs`.
pub fn router(jobs: Jobs) -> Router {
    Router::new()
        .route(&format!("{V1}/jobs"), get(list_jobs))
        .route(&format!("{V1}/jobs/{{id}}"), get(job))
        .route(&format!("{V1}/jobs/{{id}}/savepoints"), post(savepoint))
        .route(
            &format!("{V1}/jobs/{{id}}/savepoints/{{request_id}}"),
            get(savepoint_status),
        )
        .route(&format!("{V1}/jobs/{{id}}/stop"), post(stop))
        .route(&format!("{V1}/jobs/{{id}}/cancel"), post(cancel))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(jobs)
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn unknown_job(id: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, format!("no job with id `{id}`"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

pub(crate) type Answer<T> = Result<T, ApiError>;

pub(crate) async fn list_jobs(State(jobs): State<Jobs>) -> axum::Json<JobList> {
    axum::Json(JobList {
        jobs: jobs
            .controls()
            .into_iter()
            .map(|c| JobView::from(c.info()))
            .collect(),
    })
}

pub(crate) async fn job(
    State(jobs): State<Jobs>,
    Path(id): Path<String>,
) -> Answer<axum::Json<JobView>> {
    let control = jobs.get(&id).ok_or_else(|| ApiError::unknown_job(&id))?;
    Ok(axum::Json(control.info().into()))
}

pub(crate) async fn savepoint(
    State(jobs): State<Jobs>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<(StatusCode, axum::Json<Triggered>)> {
    let (control, roots) = jobs
        .get_with_roots(&id)
        .ok_or_else(|| ApiError::unknown_job(&id))?;
    let body: SavepointBody = parse_body(body)?;
    let request = SavepointRequest {
        target: Some(confine(&roots, body.target_directory.as_deref())?),
        format: parse_format(body.format.as_deref())?,
        stop: None,
    };
    trigger(&jobs, &control, request)
}

pub(crate) async fn stop(
    State(jobs): State<Jobs>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<(StatusCode, axum::Json<Triggered>)> {
    let (control, roots) = jobs
        .get_with_roots(&id)
        .ok_or_else(|| ApiError::unknown_job(&id))?;
    let body: StopBody = parse_body(body)?;
    let request = SavepointRequest {
        target: Some(confine(&roots, body.target_directory.as_deref())?),
        format: parse_format(body.format.as_deref())?,
        stop: Some(if body.drain {
            StopMode::Drain
        } else {
            StopMode::Suspend
        }),
    };
    trigger(&jobs, &control, request)
}

/// Hands `request` to the job and remembers it; a task records the
/// outcome when the job answers.
fn trigger(
    jobs: &Jobs,
    control: &JobControl,
    request: SavepointRequest,
) -> Answer<(StatusCode, axum::Json<Triggered>)> {
    let stop = request.stop.is_some();
    let job = control.id().to_string();
    let request_id = format!("{:032x}", rand::random::<u128>());
    jobs.add_request(&job, &request_id, stop)?;
    let ticket = control.trigger_savepoint(request).map_err(|e| {
        jobs.forget_request(&job, &request_id);
        ApiError::new(StatusCode::CONFLICT, e.to_string())
    })?;
    let (registry, id) = (jobs.clone(), request_id.clone());
    tokio::spawn(async move {
        let outcome = ticket.wait_async().await;
        registry.settle(&job, &id, outcome);
    });
    Ok((StatusCode::ACCEPTED, axum::Json(Triggered { request_id })))
}

pub(crate) async fn savepoint_status(
    State(jobs): State<Jobs>,
    Path((id, request_id)): Path<(String, String)>,
) -> Answer<axum::Json<SavepointStatus>> {
    if jobs.get(&id).is_none() {
        return Err(ApiError::unknown_job(&id));
    }
    jobs.request_status(&id, &request_id)
        .map(axum::Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "job `{id}` has no savepoint request `{request_id}` (only the latest \
                     {MAX_REQUESTS_PER_JOB} are kept)"
                ),
            )
        })
}

pub(crate) async fn cancel(
    State(jobs): State<Jobs>,
    Path(id): Path<String>,
) -> Answer<(StatusCode, axum::Json<JobView>)> {
    let control = jobs.get(&id).ok_or_else(|| ApiError::unknown_job(&id))?;
    let state = control.state();
    if state.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job `{}` ({id}) is {}: nothing to cancel",
                control.name(),
                state.name()
            ),
        ));
    }
    control.cancel();
    Ok((StatusCode::ACCEPTED, axum::Json(control.info().into())))
}

pub(crate) async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {uri} (the API is under {V1}/jobs)"),
    )
}

pub(crate) async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {uri}"),
    )
}

/// Where a savepoint asked for with `target` may go: under the job's
/// roots, durable, normalised (see [`targets`]).
fn confine(roots: &SavepointRoots, target: Option<&str>) -> Answer<String> {
    roots
        .resolve(target)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
}

/// Parses a JSON request body; an empty body is the default. A body over
/// [`MAX_BODY_BYTES`] is 413.
pub(crate) fn parse_body<T: Default + serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Answer<T> {
    let body = body.map_err(|e| {
        let status = e.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("request body over the limit of {MAX_BODY_BYTES} bytes")
        } else {
            format!("cannot read the request body: {}", e.body_text())
        };
        ApiError::new(status, message)
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    // serde reads a struct from an array too; the schema says object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid request body: expected a JSON object",
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

fn parse_format(format: Option<&str>) -> Answer<SavepointFormat> {
    format.map_or(Ok(SavepointFormat::default()), |f| {
        f.parse()
            .map_err(|e: String| ApiError::new(StatusCode::BAD_REQUEST, e))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::sync::oneshot;

    use super::client::ApiClient;
    use super::*;
    use crate::ErrorKind;
    use crate::metrics::JobMetrics;
    use crate::runtime::JobState;

    type Reply = oneshot::Sender<Result<SavepointInfo, Error>>;

    fn metrics() -> Arc<JobMetrics> {
        Arc::new(JobMetrics::default())
    }

    /// The roots of the tests' jobs: a local default and an S3 one.
    fn roots() -> SavepointRoots {
        SavepointRoots::new(
            ["/tmp/savepoints", "s3://bucket/sp"],
            std::path::Path::new("/"),
        )
        .unwrap()
    }

    /// A running job named `name` in a new registry, served on a free
    /// port, with a client of it.
    async fn serve(name: &str) -> (ApiServer, ApiClient, JobControl) {
        let control = JobControl::new(name, metrics(), Arc::new(AtomicBool::new(false)));
        control.advance(JobState::Running);
        let jobs = Jobs::new();
        jobs.insert(control.clone(), roots());
        let server = bind("127.0.0.1:0".parse().unwrap(), jobs).await.unwrap();
        let client = ApiClient::new(&format!("http://{}", server.local_addr())).unwrap();
        (server, client, control)
    }

    /// Plays the runtime: the next request queued to `control`'s job.
    async fn next_request(control: &JobControl) -> (SavepointRequest, Reply) {
        let control = control.clone();
        tokio::task::spawn_blocking(move || {
            let pending = control
                .inbox()
                .recv_timeout(Duration::from_secs(10))
                .expect("a request reaches the job");
            (pending.request, pending.reply)
        })
        .await
        .unwrap()
    }

    /// Polls request `request` until it is no longer in progress.
    async fn settled(client: &ApiClient, job: &str, request: &str) -> SavepointStatus {
        for _ in 0..500 {
            let status = client.savepoint_status(job, request).await.unwrap();
            if status.status != RequestStatus::InProgress {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("request {request} still in progress after 5 s");
    }

    /// A raw request: the status and the JSON answer.
    async fn raw(
        method: reqwest::Method,
        url: String,
        body: &'static str,
    ) -> (u16, serde_json::Value) {
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .request(method, url)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let json = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        (status, json)
    }

    fn api_status(e: &Error) -> u16 {
        match e {
            Error::ApiRequest { status, .. } => *status,
            other => panic!("expected an API refusal, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_are_listed_and_shown_with_their_counters() {
        let (server, client, control) = serve("wordcount").await;
        let other = JobControl::new("other", metrics(), Arc::new(AtomicBool::new(false)));
        server.jobs.insert(other.clone(), roots());
        let counters = metrics();
        let third = JobControl::new("third", counters.clone(), Arc::new(AtomicBool::new(false)));
        counters.checkpoint_completed(7);
        counters.restarts.store(2, Ordering::Relaxed);
        assert!(third.advance(JobState::Running));
        assert!(third.advance(JobState::Restarting));
        server.jobs.insert(third.clone(), roots());

        let jobs = client.jobs().await.unwrap();
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["wordcount", "other", "third"], "oldest first");
        assert_eq!(jobs[0].id, control.id().as_str());
        assert_eq!(jobs[0].state, "RUNNING");
        assert_eq!(jobs[1].state, "CREATED");
        assert_eq!(jobs[0].last_checkpoint, None);

        let shown = client.job(third.id().as_str()).await.unwrap();
        assert_eq!(shown.state, "RESTARTING");
        assert_eq!(shown.last_checkpoint, Some(7));
        assert_eq!(shown.restarts, 2);
        let started = third
            .info()
            .started
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        assert_eq!(u128::from(shown.start_time), started);

        let missing = client.job("0123abcd").await.unwrap_err();
        assert_eq!(api_status(&missing), 404);
        assert_eq!(missing.kind(), ErrorKind::User);
        assert!(
            missing.to_string().contains("no job with id `0123abcd`"),
            "{missing}"
        );
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_savepoint_request_is_in_progress_until_the_job_answers() {
        let (server, client, control) = serve("wordcount").await;
        let job = control.id().to_string();
        let request_id = client
            .trigger_savepoint(&job, Some("/tmp/savepoints"), SavepointFormat::Native)
            .await
            .unwrap();
        let (request, reply) = next_request(&control).await;
        assert_eq!(
            request,
            SavepointRequest {
                target: Some("/tmp/savepoints".into()),
                format: SavepointFormat::Native,
                stop: None,
            }
        );
        let status = client.savepoint_status(&job, &request_id).await.unwrap();
        assert_eq!(status.status, RequestStatus::InProgress);
        assert_eq!((status.location, status.failure), (None, None));

        let info = SavepointInfo {
            location: "/tmp/savepoints/savepoint-wordcount-12".into(),
            id: 12,
        };
        reply.send(Ok(info.clone())).unwrap();
        let waited = client
            .wait_savepoint(&job, &request_id, Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(waited, info);
        let status = client.savepoint_status(&job, &request_id).await.unwrap();
        assert_eq!(status.status, RequestStatus::Completed);
        assert_eq!(status.location.as_deref(), Some(info.location.as_str()));
        assert_eq!(status.savepoint_id, Some(12));
        // Not a stop: nothing to show as the job's final savepoint.
        assert_eq!(server.jobs.stop_savepoint(&job), None);
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_savepoint_reports_why() {
        let (server, client, control) = serve("wordcount").await;
        let job = control.id().to_string();
        // No body at all: the defaults.
        let (code, answer) = raw(
            reqwest::Method::POST,
            format!("http://{}/v1/jobs/{job}/savepoints", server.local_addr()),
            "",
        )
        .await;
        assert_eq!(code, 202, "{answer}");
        let request_id = answer["request_id"].as_str().unwrap().to_owned();
        let (request, reply) = next_request(&control).await;
        assert_eq!(request.format, SavepointFormat::Canonical);
        // The default root.
        assert_eq!(request.target.as_deref(), Some("/tmp/savepoints"));
        reply
            .send(Err(Error::Savepoint {
                message: "no [savepoints] dir in the job file and no target given".into(),
            }))
            .unwrap();
        let status = settled(&client, &job, &request_id).await;
        assert_eq!(status.status, RequestStatus::Failed);
        assert_eq!(
            status.failure.as_deref(),
            Some("savepoint: no [savepoints] dir in the job file and no target given")
        );
        let failed = client
            .wait_savepoint(&job, &request_id, Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(matches!(failed, Error::Savepoint { .. }), "{failed:?}");
        assert!(!status.retryable, "a refusal is not retried");
        assert!(
            failed.to_string().contains("no [savepoints] dir"),
            "{failed}"
        );

        // One that failed while it was taken keeps that meaning through
        // the API: external, worth asking again.
        let request_id = client
            .trigger_savepoint(&job, None, SavepointFormat::Canonical)
            .await
            .unwrap();
        let (_, reply) = next_request(&control).await;
        reply
            .send(Err(Error::SavepointFailed {
                message: "savepoint 4 failed: storage failure".into(),
            }))
            .unwrap();
        let status = settled(&client, &job, &request_id).await;
        assert!(status.retryable);
        let failed = client
            .wait_savepoint(&job, &request_id, Duration::from_millis(10))
            .await
            .unwrap_err();
        assert_eq!(failed.kind(), crate::ErrorKind::External, "{failed:?}");

        // The job ends without answering: the request fails, not hangs.
        let request_id = client
            .trigger_savepoint(&job, None, SavepointFormat::Canonical)
            .await
            .unwrap();
        drop(next_request(&control).await);
        let status = settled(&client, &job, &request_id).await;
        assert_eq!(status.status, RequestStatus::Failed);
        assert!(
            status
                .failure
                .unwrap()
                .contains("ended before the savepoint completed"),
        );
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_is_taken_once_and_its_savepoint_kept() {
        let (server, client, control) = serve("wordcount").await;
        let job = control.id().to_string();
        let request_id = client
            .stop(
                &job,
                Some("s3://bucket/sp"),
                SavepointFormat::Canonical,
                StopMode::Drain,
            )
            .await
            .unwrap();
        let (request, reply) = next_request(&control).await;
        assert_eq!(request.stop, Some(StopMode::Drain));
        assert_eq!(request.target.as_deref(), Some("s3://bucket/sp"));

        let again = client
            .stop(&job, None, SavepointFormat::Canonical, StopMode::Suspend)
            .await
            .unwrap_err();
        assert_eq!(api_status(&again), 409);
        assert!(again.to_string().contains("already stopping"), "{again}");

        let info = SavepointInfo {
            location: "s3://bucket/sp/savepoint-wordcount-3".into(),
            id: 3,
        };
        reply.send(Ok(info.clone())).unwrap();
        let status = settled(&client, &job, &request_id).await;
        assert_eq!(status.status, RequestStatus::Completed);
        assert_eq!(server.jobs.stop_savepoint(&job), Some(info));

        // A stop without a body suspends.
        control.stop_failed();
        let (code, _) = raw(
            reqwest::Method::POST,
            format!("http://{}/v1/jobs/{job}/stop", server.local_addr()),
            "{}",
        )
        .await;
        assert_eq!(code, 202);
        assert_eq!(next_request(&control).await.0.stop, Some(StopMode::Suspend));
        // Its outcome fetched (the ticket dropped: failed), shutdown has
        // nothing to wait for.
        let request_id = server.jobs.lock().jobs[&job].requests[1].id.clone();
        assert_eq!(
            settled(&client, &job, &request_id).await.status,
            RequestStatus::Failed
        );
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_requests_are_refused_with_a_json_error() {
        let (server, _client, control) = serve("wordcount").await;
        let base = format!("http://{}/v1", server.local_addr());
        let job = control.id().to_string();
        let post = reqwest::Method::POST;
        let cases: [(reqwest::Method, String, &'static str, u16, &str); 12] = [
            (
                post.clone(),
                format!("{base}/jobs/{job}/savepoints"),
                r#"{"format": null}"#,
                400,
                "invalid type: null, expected a string",
            ),
            (
                post.clone(),
                format!("{base}/jobs/{job}/stop"),
                r#"{"target_directory": null}"#,
                400,
                "invalid type: null, expected a string",
            ),
            (
                post.clone(),
                format!("{base}/jobs/{job}/stop"),
                r#"{"drain": "yes"}"#,
                400,
                "invalid type: string",
            ),
            (
                post.clone(),
                format!("{base}/jobs/{job}/savepoints"),
                r#"{"format": 1}"#,
                400,
                "invalid type: integer",
            ),
            (
                post.clone(),
                format!("{base}/jobs/{job}/savepoints"),
                r#"[]"#,
                400,
                "invalid request body",
            ),
            (
                post.clone(),
                format!("{base}/jobs/{job}/savepoints"),
                "{",
                400,
                "invalid request body",
            ),
            (
                post.clone(),
                format!("{base}/jobs/{job}/savepoints"),
                r#"{"format": "binary"}"#,
                400,
                "unknown savepoint format `binary`",
            ),
            (
                post.clone(),
                format!("{base}/jobs/{job}/stop"),
                r#"{"drian": true}"#,
                400,
                "unknown field `drian`",
            ),
            (
                post.clone(),
                format!("{base}/jobs/nope/savepoints"),
                "{}",
                404,
                "no job with id `nope`",
            ),
            (
                reqwest::Method::GET,
                format!("{base}/jobs/{job}/savepoints/feed"),
                "",
                404,
                "has no savepoint request `feed`",
            ),
            (
                reqwest::Method::GET,
                format!("{base}/nothing"),
                "",
                404,
                "no such endpoint",
            ),
            (
                reqwest::Method::DELETE,
                format!("{base}/jobs"),
                "",
                405,
                "not allowed",
            ),
        ];
        for (method, url, body, code, needle) in cases {
            let (got, answer) = raw(method.clone(), url.clone(), body).await;
            let message = answer["error"].as_str().unwrap_or_default();
            assert_eq!(got, code, "{method} {url}: {answer}");
            assert!(message.contains(needle), "{method} {url}: {message}");
        }
        // Nothing reached the job.
        assert!(control.inbox().is_empty());
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancel_sets_the_flag_and_an_ended_job_refuses_requests() {
        let cancel = Arc::new(AtomicBool::new(false));
        let control = JobControl::new("wordcount", metrics(), cancel.clone());
        control.advance(JobState::Running);
        let jobs = Jobs::new();
        jobs.insert(control.clone(), roots());
        let server = bind("127.0.0.1:0".parse().unwrap(), jobs).await.unwrap();
        let client = ApiClient::new(&server.local_addr().to_string()).unwrap();
        let job = control.id().to_string();

        let view = client.cancel(&job).await.unwrap();
        assert_eq!(view.state, "CANCELLING");
        assert!(cancel.load(Ordering::Relaxed), "the runtime's flag is set");
        let refused = client
            .trigger_savepoint(&job, None, SavepointFormat::Canonical)
            .await
            .unwrap_err();
        assert_eq!(api_status(&refused), 409);
        assert!(refused.to_string().contains("is CANCELLING"), "{refused}");

        control.advance(JobState::Cancelled);
        let refused = client.cancel(&job).await.unwrap_err();
        assert_eq!(api_status(&refused), 409);
        assert!(
            refused
                .to_string()
                .contains("is CANCELED: nothing to cancel"),
            "{refused}"
        );
        let refused = client
            .stop(&job, None, SavepointFormat::Native, StopMode::Suspend)
            .await
            .unwrap_err();
        assert_eq!(api_status(&refused), 409);
        assert!(
            refused.to_string().contains("no savepoint can be taken"),
            "{refused}"
        );
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_latest_requests_are_kept() {
        let (server, client, control) = serve("wordcount").await;
        let job = control.id().to_string();
        let mut ids = Vec::new();
        for n in 0..MAX_REQUESTS_PER_JOB + 3 {
            let id = client
                .trigger_savepoint(&job, None, SavepointFormat::Canonical)
                .await
                .unwrap();
            // Each answered, so that no more than the limit are in flight.
            let (_, reply) = next_request(&control).await;
            reply
                .send(Ok(SavepointInfo {
                    location: format!("/tmp/savepoints/savepoint-wordcount-{n}"),
                    id: n as u64,
                }))
                .unwrap();
            settled(&client, &job, &id).await;
            ids.push(id);
        }
        for forgotten in &ids[..3] {
            let e = client.savepoint_status(&job, forgotten).await.unwrap_err();
            assert_eq!(api_status(&e), 404);
        }
        for kept in &ids[3..] {
            let status = client.savepoint_status(&job, kept).await.unwrap();
            assert_eq!(status.status, RequestStatus::Completed);
        }
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_waits_for_the_stop_outcome_to_be_fetched() {
        let (server, client, control) = serve("wordcount").await;
        let job = control.id().to_string();
        let request_id = client
            .stop(&job, None, SavepointFormat::Canonical, StopMode::Suspend)
            .await
            .unwrap();
        let (_, reply) = next_request(&control).await;
        let info = SavepointInfo {
            location: "/sp/savepoint-wordcount-9".into(),
            id: 9,
        };
        reply.send(Ok(info.clone())).unwrap();
        control.advance(JobState::Finished);
        // The job ended; `weir run` shuts its API down while the client
        // that asked for the stop has yet to poll.
        let shutdown = tokio::spawn(server.shutdown());
        let waited = client
            .wait_savepoint(&job, &request_id, Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(waited, info);
        shutdown.await.unwrap();
        let gone = client.jobs().await.unwrap_err();
        assert!(matches!(gone, Error::ApiUnreachable { .. }), "{gone:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn savepoint_targets_must_be_durable_and_under_the_roots() {
        let (server, _client, control) = serve("wordcount").await;
        let base = format!("http://{}/v1/jobs/{}", server.local_addr(), control.id());
        let refused = [
            ("memory://x", "is not durable"),
            ("/tmp/evil", "outside the allowed savepoint roots"),
            (
                "/tmp/savepoints-evil",
                "outside the allowed savepoint roots",
            ),
            ("../../../../tmp/evil2", "has a `..` segment"),
            ("/tmp/savepoints/../evil", "has a `..` segment"),
            (
                "file:///tmp/savepoints",
                "outside the allowed savepoint roots",
            ),
            ("s3://bucket/sp-evil", "outside the allowed savepoint roots"),
            ("/tmp/savepoints/%2e%2e", "%-escapes are not accepted"),
        ];
        for endpoint in ["stop", "savepoints"] {
            for (target, needle) in refused {
                let body: &'static str = format!(r#"{{"target_directory": "{target}"}}"#).leak();
                let (code, answer) =
                    raw(reqwest::Method::POST, format!("{base}/{endpoint}"), body).await;
                let message = answer["error"].as_str().unwrap_or_default();
                assert_eq!(code, 400, "{endpoint} to {target}: {answer}");
                assert!(message.contains(needle), "{endpoint} {target}: {message}");
                assert!(message.contains(target), "{message}");
                assert!(
                    message.contains("/tmp/savepoints, s3://bucket/sp"),
                    "names the roots: {message}"
                );
            }
        }
        // Nothing reached the job; it can still be stopped.
        assert!(control.inbox().is_empty());
        assert_eq!(control.state(), JobState::Running);

        // Relative targets go under the default root; S3 ones under theirs.
        for (given, resolved) in [
            ("nightly/./1", "/tmp/savepoints/nightly/1"),
            ("s3://bucket//sp/x", "s3://bucket/sp/x"),
        ] {
            let body: &'static str = format!(r#"{{"target_directory": "{given}"}}"#).leak();
            let (code, _) = raw(reqwest::Method::POST, format!("{base}/savepoints"), body).await;
            assert_eq!(code, 202);
            let (request, _reply) = next_request(&control).await;
            assert_eq!(request.target.as_deref(), Some(resolved));
        }
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_without_roots_refuses_every_savepoint() {
        let control = JobControl::new("rootless", metrics(), Arc::new(AtomicBool::new(false)));
        control.advance(JobState::Running);
        let jobs = Jobs::new();
        jobs.insert(control.clone(), SavepointRoots::none());
        let server = bind("127.0.0.1:0".parse().unwrap(), jobs).await.unwrap();
        let client = ApiClient::new(&server.local_addr().to_string()).unwrap();
        let job = control.id().to_string();
        for target in [None, Some("/tmp/x")] {
            let e = client
                .stop(&job, target, SavepointFormat::Canonical, StopMode::Suspend)
                .await
                .unwrap_err();
            assert_eq!(api_status(&e), 400);
            assert!(e.to_string().contains("no savepoint roots"), "{e}");
        }
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_in_flight_are_bounded_with_429() {
        let (server, client, control) = serve("wordcount").await;
        let job = control.id().to_string();
        for _ in 0..MAX_PENDING_REQUESTS_PER_JOB {
            client
                .trigger_savepoint(&job, None, SavepointFormat::Canonical)
                .await
                .unwrap();
        }
        let full = client
            .stop(&job, None, SavepointFormat::Canonical, StopMode::Suspend)
            .await
            .unwrap_err();
        assert_eq!(api_status(&full), 429);
        let message = full.to_string();
        assert!(message.contains("the limit (8)"), "{message}");
        assert!(message.contains("wordcount"), "{message}");
        // The refused stop did not mark the job stopping.
        assert_eq!(control.inbox().len(), MAX_PENDING_REQUESTS_PER_JOB);

        // One answered: room for one more, and a stop may be asked again.
        let (_, reply) = next_request(&control).await;
        reply
            .send(Ok(SavepointInfo {
                location: "/tmp/savepoints/savepoint-wordcount-1".into(),
                id: 1,
            }))
            .unwrap();
        let mut accepted = None;
        for _ in 0..500 {
            match client
                .stop(&job, None, SavepointFormat::Canonical, StopMode::Suspend)
                .await
            {
                Ok(id) => {
                    accepted = Some(id);
                    break;
                }
                Err(e) => assert_eq!(api_status(&e), 429),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(accepted.is_some(), "a slot frees once a request settles");
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_over_the_limit_is_413() {
        let (server, _client, control) = serve("wordcount").await;
        let url = format!(
            "http://{}/v1/jobs/{}/savepoints",
            server.local_addr(),
            control.id()
        );
        let huge: &'static str = " ".repeat(MAX_BODY_BYTES + 1).leak();
        let (code, answer) = raw(reqwest::Method::POST, url, huge).await;
        assert_eq!(code, 413, "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains(&format!("limit of {MAX_BODY_BYTES} bytes")),
            "{answer}"
        );
        assert!(control.inbox().is_empty());
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_sent_requests_are_capped_and_closed_after_the_header_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let control = JobControl::new("wordcount", metrics(), Arc::new(AtomicBool::new(false)));
        control.advance(JobState::Running);
        let jobs = Jobs::new();
        jobs.insert(control.clone(), roots());
        let limits = ApiLimits {
            max_connections: 4,
            header_timeout: Duration::from_millis(200),
            ..ApiLimits::default()
        };
        let server = bind_with("127.0.0.1:0".parse().unwrap(), jobs, limits)
            .await
            .unwrap();
        let addr = server.local_addr();
        // Three times the cap, each sending half a request and then
        // nothing.
        let mut streams = Vec::new();
        for _ in 0..12 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            streams.push(s);
        }
        // Every one is closed by the server (EOF or reset), a few at a
        // time, never more than the cap open at once.
        let mut reads = tokio::task::JoinSet::new();
        for mut s in streams {
            reads.spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        // hyper may answer 408 before closing.
                        Ok(_) => {}
                    }
                }
            });
        }
        let mut closed = 0;
        while closed < 12 {
            assert!(server.open_connections() <= 4, "the cap holds");
            tokio::select! {
                done = reads.join_next() => {
                    done.unwrap().unwrap();
                    closed += 1;
                }
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        // The API answers again.
        let client = ApiClient::new(&addr.to_string()).unwrap();
        assert_eq!(client.jobs().await.unwrap().len(), 1);
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_id_prefix_resolves_when_unique() {
        let (server, client, control) = serve("wordcount").await;
        // 17 jobs: two of them share a first digit.
        let mut ids = vec![control.id().to_string()];
        for n in 0..16 {
            let other = JobControl::new(
                &format!("j{n}"),
                metrics(),
                Arc::new(AtomicBool::new(false)),
            );
            ids.push(other.id().to_string());
            server.jobs.insert(other, roots());
        }
        let full = &ids[0];
        assert_eq!(client.resolve_job_id(full).await.unwrap(), *full);
        let unique = (1..=32)
            .map(|n| &full[..n])
            .find(|p| ids.iter().filter(|id| id.starts_with(p)).count() == 1)
            .unwrap();
        assert_eq!(
            client.resolve_job_id(&unique.to_uppercase()).await.unwrap(),
            *full
        );
        let shared = ids
            .iter()
            .map(|id| &id[..1])
            .find(|d| ids.iter().filter(|id| id.starts_with(d)).count() > 1)
            .unwrap();
        let e = client.resolve_job_id(shared).await.unwrap_err();
        assert!(matches!(e, Error::JobIdPrefix { .. }), "{e:?}");
        assert_eq!(e.kind(), ErrorKind::User);
        assert!(e.to_string().contains("is ambiguous: it matches"), "{e}");
        for e in [
            client.resolve_job_id("g").await.unwrap_err(),
            client.resolve_job_id("").await.unwrap_err(),
        ] {
            assert!(e.to_string().contains("is not a job id"), "{e}");
        }
        server.shutdown().await;
    }

    #[test]
    fn an_address_in_use_is_refused_and_a_closed_one_unreachable() {
        let first = ApiThread::start("127.0.0.1:0".parse().unwrap(), Jobs::new()).unwrap();
        let taken = first.local_addr();
        let e = ApiThread::start(taken, Jobs::new()).unwrap_err();
        assert!(
            matches!(e, Error::ApiBind { address, .. } if address == taken),
            "{e:?}"
        );
        assert_eq!(e.kind(), ErrorKind::User);
        let message = e.to_string();
        assert!(message.contains(&taken.to_string()), "{message}");
        assert!(message.contains("--rest-address"), "{message}");
        first.shutdown();

        // Nothing listens there any more.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = ApiClient::new(&taken.to_string()).unwrap();
        let e = runtime.block_on(client.jobs()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::External);
        let message = e.to_string();
        assert!(
            message.contains(&format!("cannot reach the REST API at http://{taken}")),
            "{message}"
        );
        assert!(message.contains("--address"), "{message}");
    }

    #[test]
    fn a_client_wants_an_http_address() {
        let e = ApiClient::new("https://example.com").unwrap_err();
        assert!(
            e.to_string().contains("scheme `https` is not supported"),
            "{e}"
        );
        assert_eq!(
            ApiClient::new("localhost:8081/").unwrap().address(),
            "http://localhost:8081"
        );
    }
}
