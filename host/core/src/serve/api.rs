//! The host's REST API: every endpoint needs a tenant's token
//! (`Authorization: Bearer …`), except `GET /healthz`. A missing or wrong
//! token is 401; another tenant's job, plugin or savepoint is 404, as if it
//! did not exist. `/metrics` takes a tenant's token (its own jobs) or an
//! admin token (every tenant's).
//!
//! Per-job verbs (show, savepoint, stop, cancel, request status) are the
//! single-job API's own handlers over the tenant's [`Jobs`]; the rest
//! (plugins, submit, upgrade, delete, savepoints, quota) call
//! [`Inner`]'s operations in `ops.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRef, Path, State};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::ops::{Refusal, SubmitBody, UpgradeBody};
use super::{Host, Inner, Tenant};
use crate::api::{self, ApiError, ApiLimits, ApiServer, JobView, Jobs, MAX_BODY_BYTES};
use crate::error::Error;

/// The largest `POST /v1/jobs` body: a job file of the most bytes, escaped.
const MAX_SUBMIT_BYTES: usize = 3 << 20;

/// What a tenant's routes see.
#[derive(Clone)]
struct TenantCtx {
    inner: Arc<Inner>,
    tenant: Arc<Tenant>,
}

impl FromRef<TenantCtx> for Jobs {
    fn from_ref(ctx: &TenantCtx) -> Jobs {
        ctx.tenant.jobs.clone()
    }
}

/// The host's API server.
#[derive(Debug)]
pub struct ServeApi {
    server: ApiServer,
}

impl ServeApi {
    /// Serves `host`'s API on `addr` (port 0: any free port) on the
    /// current tokio runtime.
    ///
    /// # Errors
    /// [`Error::ApiBind`] if nothing can listen on `addr`.
    pub async fn bind(host: &Host, addr: SocketAddr, limits: ApiLimits) -> Result<Self, Error> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::ApiBind {
                address: addr,
                source,
            })?;
        let routers = Arc::new(RwLock::new(HashMap::<String, Router>::new()));
        let inner = host.inner.clone();
        let router = Router::new()
            .route("/healthz", get(healthz))
            .fallback(move |request: Request<Body>| {
                let (inner, routers) = (inner.clone(), routers.clone());
                async move { dispatch(inner, routers, request).await }
            })
            .with_state(host.inner.clone());
        Ok(ServeApi {
            server: api::serve_on(listener, router, Jobs::new(), limits),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops serving.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

async fn healthz(State(inner): State<Arc<Inner>>) -> axum::Json<serde_json::Value> {
    let jobs = inner.all_jobs();
    let running = jobs
        .iter()
        .filter(|j| j.running.load(std::sync::atomic::Ordering::Relaxed))
        .count();
    axum::Json(serde_json::json!({
        "status": "ok",
        "uptime_s": inner.started.elapsed().as_secs(),
        "running_jobs": running,
    }))
}

/// Who a request's token names.
enum Caller {
    Tenant(Arc<Tenant>),
    Admin,
}

fn unauthorized(why: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, why).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        "Bearer".parse().expect("invariant: a valid header"),
    );
    response
}

fn caller(inner: &Inner, headers: &HeaderMap) -> Result<Caller, &'static str> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err("no token: send `Authorization: Bearer <token>` (`--token` or WEIR_TOKEN)");
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 512);
    let Some(token) = token else {
        return Err("malformed Authorization header: expected `Bearer <token>`");
    };
    let hash = super::config::token_hash(token);
    let config = inner.config();
    if let Some(t) = config.tenant_of(&hash) {
        return inner
            .tenant(&t.name)
            .map(Caller::Tenant)
            .ok_or("the token is not valid");
    }
    if config.is_admin(&hash) {
        return Ok(Caller::Admin);
    }
    Err("the token is not valid")
}

/// Authenticates, then hands the request to the tenant's routes.
async fn dispatch(
    inner: Arc<Inner>,
    routers: Arc<RwLock<HashMap<String, Router>>>,
    request: Request<Body>,
) -> Response {
    use tower::ServiceExt;
    let caller = match caller(&inner, request.headers()) {
        Ok(c) => c,
        Err(why) => return unauthorized(why),
    };
    if request.uri().path() == "/metrics" {
        if request.method() != axum::http::Method::GET {
            return ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics only")
                .into_response();
        }
        let tenant = match &caller {
            Caller::Tenant(t) => Some(t.name.as_str()),
            Caller::Admin => None,
        };
        return (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            super::metrics::render(&inner, tenant),
        )
            .into_response();
    }
    let Caller::Tenant(tenant) = caller else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "an admin token reads /metrics only; use a tenant's token",
        )
        .into_response();
    };
    let cached = routers
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&tenant.name)
        .cloned();
    let router = match cached {
        Some(r) => r,
        None => {
            let r = tenant_router(TenantCtx {
                inner: inner.clone(),
                tenant: tenant.clone(),
            });
            routers
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(tenant.name.clone(), r.clone());
            r
        }
    };
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn tenant_router(ctx: TenantCtx) -> Router {
    let max_plugin = ctx.inner.config().max_plugin_bytes as usize;
    Router::new()
        .route(
            "/v1/plugins",
            get(list_plugins)
                .post(upload)
                .layer(DefaultBodyLimit::max(max_plugin)),
        )
        .route(
            "/v1/jobs",
            get(api::list_jobs)
                .post(submit)
                .layer(DefaultBodyLimit::max(MAX_SUBMIT_BYTES)),
        )
        .route("/v1/jobs/{id}", get(api::job).delete(delete_job))
        .route("/v1/jobs/{id}/savepoints", post(savepoint))
        .route(
            "/v1/jobs/{id}/savepoints/{request_id}",
            get(api::savepoint_status),
        )
        .route("/v1/jobs/{id}/stop", post(stop))
        .route("/v1/jobs/{id}/cancel", post(api::cancel))
        .route("/v1/jobs/{id}/upgrade", post(upgrade))
        .route("/v1/jobs/{id}/checkpoints", get(checkpoints))
        .route("/v1/jobs/{id}/vertices", get(vertices))
        .route("/v1/jobs/{id}/record", get(job_record))
        .route("/v1/savepoints", get(list_savepoints))
        .route(
            "/v1/savepoints/{*name}",
            get(inspect_savepoint).delete(dispose_savepoint),
        )
        .route("/v1/quota", get(quota))
        .fallback(api::no_route)
        .method_not_allowed_fallback(api::wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(ctx)
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Refusal::Bad(m) => (StatusCode::BAD_REQUEST, m),
            Refusal::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Refusal::Conflict(m) => (StatusCode::CONFLICT, m),
            Refusal::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            Refusal::Quota(m) => (StatusCode::FORBIDDEN, m),
            Refusal::Full(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            Refusal::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
        };
        ApiError::new(status, message).into_response()
    }
}

type Answer<T> = Result<T, Refusal>;

fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Answer<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal::Bad(format!("request body over the limit of {limit} bytes"))
        } else {
            Refusal::Bad(format!("cannot read the request body: {}", e.body_text()))
        }
    })
}

/// `POST /v1/jobs/{id}/savepoints`, unless the tenant's storage is over
/// its quota.
async fn savepoint(
    State(ctx): State<TenantCtx>,
    id: Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match super::ops::storage_within_quota(&ctx.tenant) {
        Ok(()) => api::savepoint(State(ctx.tenant.jobs.clone()), id, body)
            .await
            .into_response(),
        Err(r) => r.into_response(),
    }
}

/// `POST /v1/jobs/{id}/stop`, as [`savepoint`].
async fn stop(
    State(ctx): State<TenantCtx>,
    id: Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match super::ops::storage_within_quota(&ctx.tenant) {
        Ok(()) => api::stop(State(ctx.tenant.jobs.clone()), id, body)
            .await
            .into_response(),
        Err(r) => r.into_response(),
    }
}

async fn upload(State(ctx): State<TenantCtx>, body: Result<Bytes, BytesRejection>) -> Response {
    let limit = ctx.inner.config().max_plugin_bytes as usize;
    let bytes = match body_bytes(body, limit) {
        Ok(b) => b,
        Err(Refusal::Bad(m)) if m.contains("over the limit") => {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m).into_response();
        }
        Err(r) => return r.into_response(),
    };
    match ctx.inner.upload(&ctx.tenant, bytes).await {
        Ok((true, view)) => (StatusCode::CREATED, axum::Json(view)).into_response(),
        Ok((false, view)) => (StatusCode::OK, axum::Json(view)).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn list_plugins(State(ctx): State<TenantCtx>) -> Answer<axum::Json<serde_json::Value>> {
    let plugins = ctx.inner.plugins(&ctx.tenant).await?;
    Ok(axum::Json(serde_json::json!({ "plugins": plugins })))
}

async fn submit(
    State(ctx): State<TenantCtx>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<JobView>), Response> {
    let body: SubmitBody = api::parse_body(body).map_err(IntoResponse::into_response)?;
    if body.job.trim().is_empty() {
        return Err(
            Refusal::Bad("`job` is missing: send the job file's text".into()).into_response(),
        );
    }
    let record = ctx
        .inner
        .submit(&ctx.tenant, body)
        .await
        .map_err(IntoResponse::into_response)?;
    let view = ctx
        .tenant
        .jobs
        .get(&record.id)
        .map(|c| JobView::from(c.info()))
        .ok_or_else(|| Refusal::Internal("the job vanished".into()).into_response())?;
    Ok((StatusCode::CREATED, axum::Json(view)))
}

async fn upgrade(
    State(ctx): State<TenantCtx>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<super::ops::UpgradeView>, Response> {
    // Another tenant's job is not found before its body is even read.
    ctx.inner
        .job_of(&ctx.tenant, &id)
        .map_err(IntoResponse::into_response)?;
    let body: UpgradeBody = api::parse_body(body).map_err(IntoResponse::into_response)?;
    ctx.inner
        .upgrade(&ctx.tenant, &id, body)
        .await
        .map(axum::Json)
        .map_err(IntoResponse::into_response)
}

async fn delete_job(State(ctx): State<TenantCtx>, Path(id): Path<String>) -> Answer<StatusCode> {
    ctx.inner.delete(&ctx.tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn checkpoints(
    State(ctx): State<TenantCtx>,
    Path(id): Path<String>,
) -> Answer<axum::Json<serde_json::Value>> {
    let job = ctx.inner.job_of(&ctx.tenant, &id)?;
    let m = job.metrics();
    let c = &m.checkpoints;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let history = c.history();
    let latest = history.iter().rev().find(|s| s.failure.is_none()).cloned();
    Ok(axum::Json(serde_json::json!({
        "counts": { "completed": load(&c.completed), "failed": load(&c.failed) },
        "latest": { "completed": latest },
        "history": history,
    })))
}

async fn vertices(
    State(ctx): State<TenantCtx>,
    Path(id): Path<String>,
) -> Answer<axum::Json<serde_json::Value>> {
    let job = ctx.inner.job_of(&ctx.tenant, &id)?;
    let vertices: Vec<serde_json::Value> = job
        .metrics()
        .vertices
        .iter()
        .map(|v| {
            serde_json::json!({
                "uid": v.uid,
                "records_in": v.records_in(),
                "records_out": v.records_out(),
                "counters": v.counters(),
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "vertices": vertices })))
}

async fn job_record(
    State(ctx): State<TenantCtx>,
    Path(id): Path<String>,
) -> Answer<axum::Json<super::record::JobRecord>> {
    let job = ctx.inner.job_of(&ctx.tenant, &id)?;
    Ok(axum::Json(job.record()))
}

async fn list_savepoints(State(ctx): State<TenantCtx>) -> Answer<axum::Json<serde_json::Value>> {
    let savepoints = ctx.inner.savepoints(&ctx.tenant).await?;
    Ok(axum::Json(serde_json::json!({ "savepoints": savepoints })))
}

async fn inspect_savepoint(
    State(ctx): State<TenantCtx>,
    Path(name): Path<String>,
) -> Answer<axum::Json<serde_json::Value>> {
    let report = ctx.inner.inspect_savepoint(&ctx.tenant, &name).await?;
    Ok(axum::Json(
        serde_json::json!({ "name": name, "report": report }),
    ))
}

async fn dispose_savepoint(
    State(ctx): State<TenantCtx>,
    Path(name): Path<String>,
) -> Answer<axum::Json<serde_json::Value>> {
    let deleted = ctx.inner.dispose(&ctx.tenant, &name).await?;
    Ok(axum::Json(serde_json::json!({ "deleted_files": deleted })))
}

async fn quota(State(ctx): State<TenantCtx>) -> axum::Json<super::ops::QuotaView> {
    axum::Json(ctx.inner.quota_view(&ctx.tenant))
}
