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

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::runtime::{
    JobControl, JobInfo, SavepointFormat, SavepointInfo, SavepointRequest, StopMode,
};

/// How many savepoint requests the registry remembers per job; the oldest
/// is forgotten first.
pub const MAX_REQUESTS_PER_JOB: usize = 100;

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
    /// The directory (path or URL) the savepoint is created under; by
    /// default the job file's `[savepoints] dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_directory: Option<String>,
    /// `canonical` (the default) or `native`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// The body of `POST /v1/jobs/{id}/stop`; every field is optional, and so
/// is the body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopBody {
    /// As for [`SavepointBody`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_directory: Option<String>,
    /// End the input first, so operators flush (`close`) before the
    /// savepoint; by default the job is suspended as it is.
    #[serde(default)]
    pub drain: bool,
    /// As for [`SavepointBody`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
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
    /// Insertion order: jobs are listed oldest first.
    order: u64,
    /// Oldest first, at most [`MAX_REQUESTS_PER_JOB`].
    requests: VecDeque<Request>,
}

struct Request {
    id: String,
    stop: bool,
    outcome: Option<Result<SavepointInfo, String>>,
    /// A client has seen the outcome.
    fetched: bool,
}

impl Jobs {
    /// An empty registry.
    pub fn new() -> Self {
        Jobs::default()
    }

    /// Serves `control`'s job (replacing a job with the same id).
    pub fn insert(&self, control: JobControl) {
        let mut registry = self.lock();
        let order = registry.next;
        registry.next += 1;
        registry.jobs.insert(
            control.id().to_string(),
            JobEntry {
                control,
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

    /// Remembers a new request of job `job`, forgetting the oldest beyond
    /// [`MAX_REQUESTS_PER_JOB`].
    fn add_request(&self, job: &str, id: &str, stop: bool) {
        if let Some(entry) = self.lock().jobs.get_mut(job) {
            entry.requests.push_back(Request {
                id: id.to_owned(),
                stop,
                outcome: None,
                fetched: false,
            });
            while entry.requests.len() > MAX_REQUESTS_PER_JOB {
                entry.requests.pop_front();
            }
        }
    }

    fn settle(&self, job: &str, id: &str, outcome: Result<SavepointInfo, Error>) {
        if let Some(request) = self
            .lock()
            .jobs
            .get_mut(job)
            .and_then(|e| e.requests.iter_mut().find(|r| r.id == id))
        {
            request.outcome = Some(outcome.map_err(|e| e.to_string()));
        }
    }

    /// Request `id` of job `job` as the API shows it; marks a settled
    /// outcome fetched.
    fn request_status(&self, job: &str, id: &str) -> Option<SavepointStatus> {
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
            },
            Some(Ok(info)) => SavepointStatus {
                status: RequestStatus::Completed,
                location: Some(info.location.clone()),
                savepoint_id: Some(info.id),
                failure: None,
            },
            Some(Err(why)) => SavepointStatus {
                status: RequestStatus::Failed,
                location: None,
                savepoint_id: None,
                failure: Some(why.clone()),
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

/// A running API server on the caller's tokio runtime.
#[derive(Debug)]
pub struct ApiServer {
    local_addr: SocketAddr,
    jobs: Jobs,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Starts serving `jobs` on `addr` (port 0: any free port) on the current
/// tokio runtime.
///
/// # Errors
/// [`Error::ApiBind`] if nothing can listen on `addr` (in use, not a local
/// address, no permission).
pub async fn bind(addr: SocketAddr, jobs: Jobs) -> Result<ApiServer, Error> {
    let bind_error = |source| Error::ApiBind {
        address: addr,
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
    let serve = axum::serve(listener, router(jobs.clone())).with_graceful_shutdown(async {
        let _ = signal.await;
    });
    let task = tokio::spawn(std::future::IntoFuture::into_future(serve));
    tracing::debug!("REST API listening on http://{local_addr}");
    Ok(ApiServer {
        local_addr,
        jobs,
        shutdown,
        task,
    })
}

impl ApiServer {
    /// The address it listens on (with the port chosen if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weir-api")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("starting the REST API runtime: {e}")))?;
        let server = runtime.block_on(bind(addr, jobs))?;
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
        .with_state(jobs)
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
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

type Answer<T> = Result<T, ApiError>;

async fn list_jobs(State(jobs): State<Jobs>) -> axum::Json<JobList> {
    axum::Json(JobList {
        jobs: jobs
            .controls()
            .into_iter()
            .map(|c| JobView::from(c.info()))
            .collect(),
    })
}

async fn job(State(jobs): State<Jobs>, Path(id): Path<String>) -> Answer<axum::Json<JobView>> {
    let control = jobs.get(&id).ok_or_else(|| ApiError::unknown_job(&id))?;
    Ok(axum::Json(control.info().into()))
}

async fn savepoint(
    State(jobs): State<Jobs>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer<(StatusCode, axum::Json<Triggered>)> {
    let control = jobs.get(&id).ok_or_else(|| ApiError::unknown_job(&id))?;
    let body: SavepointBody = parse_body(&body)?;
    let request = SavepointRequest {
        target: body.target_directory,
        format: parse_format(body.format.as_deref())?,
        stop: None,
    };
    trigger(&jobs, &control, request)
}

async fn stop(
    State(jobs): State<Jobs>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer<(StatusCode, axum::Json<Triggered>)> {
    let control = jobs.get(&id).ok_or_else(|| ApiError::unknown_job(&id))?;
    let body: StopBody = parse_body(&body)?;
    let request = SavepointRequest {
        target: body.target_directory,
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
    let ticket = control
        .trigger_savepoint(request)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e.to_string()))?;
    let job = control.id().to_string();
    let request_id = format!("{:032x}", rand::random::<u128>());
    jobs.add_request(&job, &request_id, stop);
    let (registry, id) = (jobs.clone(), request_id.clone());
    tokio::spawn(async move {
        let outcome = ticket.wait_async().await;
        registry.settle(&job, &id, outcome);
    });
    Ok((StatusCode::ACCEPTED, axum::Json(Triggered { request_id })))
}

async fn savepoint_status(
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

async fn cancel(
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

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {uri} (the API is under {V1}/jobs)"),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {uri}"),
    )
}

/// Parses a JSON request body; an empty body is the default.
fn parse_body<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Answer<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
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
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use tokio::sync::oneshot;

    use super::client::ApiClient;
    use super::*;
    use crate::ErrorKind;
    use crate::metrics::JobMetrics;
    use crate::runtime::JobState;

    type Reply = oneshot::Sender<Result<SavepointInfo, Error>>;

    fn metrics() -> Arc<JobMetrics> {
        Arc::new(JobMetrics {
            vertices: Vec::new(),
            last_checkpoint: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
        })
    }

    /// A running job named `name` in a new registry, served on a free
    /// port, with a client of it.
    async fn serve(name: &str) -> (ApiServer, ApiClient, JobControl) {
        let control = JobControl::new(name, metrics(), Arc::new(AtomicBool::new(false)));
        control.set_state(JobState::Running);
        let jobs = Jobs::new();
        jobs.insert(control.clone());
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
        server.jobs.insert(other.clone());
        let counters = metrics();
        let third = JobControl::new("third", counters.clone(), Arc::new(AtomicBool::new(false)));
        counters.checkpoint_completed(7);
        counters.restarts.store(2, Ordering::Relaxed);
        third.set_state(JobState::Restarting);
        server.jobs.insert(third.clone());

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
        assert_eq!(request.target, None);
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
        assert!(
            failed.to_string().contains("no [savepoints] dir"),
            "{failed}"
        );

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
        let cases: [(reqwest::Method, String, &'static str, u16, &str); 7] = [
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
        control.set_state(JobState::Running);
        let jobs = Jobs::new();
        jobs.insert(control.clone());
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

        control.set_state(JobState::Cancelled);
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
        for _ in 0..MAX_REQUESTS_PER_JOB + 3 {
            ids.push(
                client
                    .trigger_savepoint(&job, None, SavepointFormat::Canonical)
                    .await
                    .unwrap(),
            );
        }
        for forgotten in &ids[..3] {
            let e = client.savepoint_status(&job, forgotten).await.unwrap_err();
            assert_eq!(api_status(&e), 404);
        }
        for kept in &ids[3..] {
            let status = client.savepoint_status(&job, kept).await.unwrap();
            assert_eq!(status.status, RequestStatus::InProgress);
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
        control.set_state(JobState::Finished);
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
