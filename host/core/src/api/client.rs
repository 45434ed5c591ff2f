//! A client of the REST API ([`super`]), for the `weir` command: one
//! method per endpoint, plus waiting for a savepoint request's outcome.
//!
//! Errors say which address was tried: [`Error::ApiUnreachable`] when
//! nothing (or not the Weir API) answers there, [`Error::ApiRequest`] with
//! the API's own message when it refuses a request.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    ErrorBody, JobList, JobView, RequestStatus, SavepointBody, SavepointStatus, StopBody,
    Triggered, format_name,
};
use crate::error::Error;
use crate::runtime::{SavepointFormat, SavepointInfo, StopMode};

/// The default address of a job's API, as `weir run` serves it.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8081";

/// A client of one API server.
#[derive(Debug, Clone)]
pub struct ApiClient {
    /// The base URL, without a trailing `/`.
    base: String,
    http: reqwest::Client,
    /// Sent as `Authorization: Bearer …` (a `weir serve` tenant's).
    token: Option<String>,
}

impl ApiClient {
    /// A client of the API at `address`: a URL such as
    /// `http://127.0.0.1:8081`, or `host:port` (plain HTTP is assumed).
    ///
    /// # Errors
    /// [`Error::ApiUnreachable`] if `address` is not an `http` URL or the
    /// HTTP client cannot start.
    pub fn new(address: &str) -> Result<Self, Error> {
        let address = address.trim().trim_end_matches('/');
        let base = if address.contains("://") {
            address.to_owned()
        } else {
            format!("http://{address}")
        };
        let unusable = |message: String| Error::ApiUnreachable {
            address: base.clone(),
            message,
        };
        let url = reqwest::Url::parse(&base).map_err(|e| unusable(format!("not a URL: {e}")))?;
        if url.scheme() != "http" {
            return Err(unusable(format!(
                "scheme `{}` is not supported: the API speaks plain `http`",
                url.scheme()
            )));
        }
        let http = reqwest::Client::builder()
            // The API is reached directly, whatever proxy the environment
            // names for other traffic.
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| unusable(format!("starting the HTTP client: {}", root_cause(&e))))?;
        Ok(ApiClient {
            base,
            http,
            token: None,
        })
    }

    /// The same client, sending `token` with every request (a tenant's
    /// token for `weir serve`).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// The base URL requests go to.
    pub fn address(&self) -> &str {
        &self.base
    }

    /// Every job the API serves (`GET /v1/jobs`).
    ///
    /// # Errors
    /// [`Error::ApiUnreachable`] or [`Error::ApiRequest`].
    pub async fn jobs(&self) -> Result<Vec<JobView>, Error> {
        let list: JobList = self
            .call(reqwest::Method::GET, "/v1/jobs", None::<&()>)
            .await?;
        Ok(list.jobs)
    }

    /// The full id of the job whose id is or starts with `given` (case
    /// insensitive): a full 32-hex id is taken as it is, a shorter prefix
    /// is looked up in `GET /v1/jobs`.
    ///
    /// # Errors
    /// [`Error::JobIdPrefix`] if no job or several match; as
    /// [`jobs`](Self::jobs).
    pub async fn resolve_job_id(&self, given: &str) -> Result<String, Error> {
        let prefix = given.trim().to_ascii_lowercase();
        if prefix.len() == 32 {
            return Ok(prefix);
        }
        let problem = |problem: String| Error::JobIdPrefix {
            prefix: given.to_owned(),
            address: self.base.clone(),
            problem,
        };
        if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(problem(
                "is not a job id: expected hex digits (see `weir list`)".into(),
            ));
        }
        let jobs = self.jobs().await?;
        let ids: Vec<&str> = jobs
            .iter()
            .map(|j| j.id.as_str())
            .filter(|id| id.starts_with(&prefix))
            .collect();
        match ids.as_slice() {
            [one] => Ok((*one).to_owned()),
            [] => Err(problem(format!(
                "matches no job ({} running; see `weir list`)",
                jobs.len()
            ))),
            many => Err(problem(format!(
                "is ambiguous: it matches {}; give more digits",
                many.join(", ")
            ))),
        }
    }

    /// Job `id` (`GET /v1/jobs/{id}`).
    ///
    /// # Errors
    /// [`Error::ApiRequest`] (404) if there is no such job; as
    /// [`jobs`](Self::jobs).
    pub async fn job(&self, id: &str) -> Result<JobView, Error> {
        self.call(reqwest::Method::GET, &job_path(id, ""), None::<&()>)
            .await
    }

    /// Asks job `id` for a savepoint under `target` (by default the job
    /// file's `[savepoints] dir`); returns the request id.
    ///
    /// # Errors
    /// [`Error::ApiRequest`]: 404 no such job, 409 the job cannot take a
    /// savepoint now (ended, cancelling); as [`jobs`](Self::jobs).
    pub async fn trigger_savepoint(
        &self,
        id: &str,
        target: Option<&str>,
        format: SavepointFormat,
    ) -> Result<String, Error> {
        let body = SavepointBody {
            target_directory: target.map(str::to_owned),
            format: Some(format_name(format).to_owned()),
        };
        let triggered: Triggered = self
            .call(
                reqwest::Method::POST,
                &job_path(id, "/savepoints"),
                Some(&body),
            )
            .await?;
        Ok(triggered.request_id)
    }

    /// Asks job `id` to stop with a savepoint; returns the request id,
    /// whose outcome [`savepoint_status`](Self::savepoint_status) gives.
    ///
    /// # Errors
    /// As [`trigger_savepoint`](Self::trigger_savepoint); 409 also when
    /// the job is already stopping.
    pub async fn stop(
        &self,
        id: &str,
        target: Option<&str>,
        format: SavepointFormat,
        mode: StopMode,
    ) -> Result<String, Error> {
        let body = StopBody {
            target_directory: target.map(str::to_owned),
            drain: mode == StopMode::Drain,
            format: Some(format_name(format).to_owned()),
        };
        let triggered: Triggered = self
            .call(reqwest::Method::POST, &job_path(id, "/stop"), Some(&body))
            .await?;
        Ok(triggered.request_id)
    }

    /// Where savepoint (or stop) request `request_id` of job `id` is.
    ///
    /// # Errors
    /// [`Error::ApiRequest`] (404) if the job or the request is unknown;
    /// as [`jobs`](Self::jobs).
    pub async fn savepoint_status(
        &self,
        id: &str,
        request_id: &str,
    ) -> Result<SavepointStatus, Error> {
        let path = job_path(id, &format!("/savepoints/{}", segment(request_id)));
        self.call(reqwest::Method::GET, &path, None::<&()>).await
    }

    /// Polls request `request_id` of job `id` every `poll` until it is
    /// answered.
    ///
    /// # Errors
    /// [`Error::Savepoint`] with the API's reason if the savepoint failed;
    /// as [`savepoint_status`](Self::savepoint_status).
    pub async fn wait_savepoint(
        &self,
        id: &str,
        request_id: &str,
        poll: Duration,
    ) -> Result<SavepointInfo, Error> {
        loop {
            let status = self.savepoint_status(id, request_id).await?;
            match status.status {
                RequestStatus::InProgress => tokio::time::sleep(poll).await,
                RequestStatus::Completed => {
                    return match (status.location, status.savepoint_id) {
                        (Some(location), Some(id)) => Ok(SavepointInfo { location, id }),
                        _ => Err(Error::ApiUnreachable {
                            address: self.base.clone(),
                            message: format!(
                                "request `{request_id}` is COMPLETED but the answer lacks \
                                 its location or savepoint id"
                            ),
                        }),
                    };
                }
                RequestStatus::Failed => {
                    let message = status
                        .failure
                        .unwrap_or_else(|| format!("request `{request_id}` failed"));
                    // The job's answer keeps its meaning: failed while
                    // taken (external), or refused (the user's to fix).
                    return Err(if status.retryable {
                        Error::SavepointFailed { message }
                    } else {
                        Error::Savepoint { message }
                    });
                }
            }
        }
    }

    /// Cancels job `id` (`POST /v1/jobs/{id}/cancel`); returns the job as
    /// it is then (`CANCELLING`). Does not wait for it to end.
    ///
    /// # Errors
    /// [`Error::ApiRequest`]: 404 no such job, 409 it has ended; as
    /// [`jobs`](Self::jobs).
    pub async fn cancel(&self, id: &str) -> Result<JobView, Error> {
        self.call(reqwest::Method::POST, &job_path(id, "/cancel"), None::<&()>)
            .await
    }

    /// Uploads a plugin to a `weir serve` host (`POST /v1/plugins`):
    /// it is validated and compiled there; the answer names it.
    ///
    /// # Errors
    /// [`Error::ApiRequest`]: 400 not a plugin the host runs (naming an
    /// import it does not grant), 413 too large; as [`jobs`](Self::jobs).
    pub async fn upload_plugin(&self, bytes: Vec<u8>) -> Result<crate::serve::PluginView, Error> {
        self.send(
            reqwest::Method::POST,
            "/v1/plugins",
            Some(("application/wasm", bytes)),
            Duration::from_secs(300),
        )
        .await
    }

    /// Submits a job to a `weir serve` host (`POST /v1/jobs`).
    ///
    /// # Errors
    /// [`Error::ApiRequest`]: 400 an invalid job (naming its fields), 403
    /// over a quota; as [`jobs`](Self::jobs).
    pub async fn submit(&self, body: &crate::serve::SubmitBody) -> Result<JobView, Error> {
        self.call(reqwest::Method::POST, "/v1/jobs", Some(body))
            .await
    }

    /// Upgrades job `id` in place on a `weir serve` host.
    ///
    /// # Errors
    /// [`Error::ApiRequest`]: 400 the new plugins are not uploaded or do
    /// not fit the job, 409 the job is not running or its stop failed; as
    /// [`jobs`](Self::jobs).
    pub async fn upgrade(
        &self,
        id: &str,
        body: &crate::serve::UpgradeBody,
    ) -> Result<crate::serve::UpgradeView, Error> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| Error::Internal(format!("encoding a request body: {e}")))?;
        self.send(
            reqwest::Method::POST,
            &job_path(id, "/upgrade"),
            Some(("application/json", bytes)),
            Duration::from_secs(300),
        )
        .await
    }

    /// The tenant's savepoints on a `weir serve` host.
    ///
    /// # Errors
    /// As [`jobs`](Self::jobs).
    pub async fn savepoints(&self) -> Result<Vec<crate::serve::SavepointEntry>, Error> {
        #[derive(serde::Deserialize)]
        struct List {
            savepoints: Vec<crate::serve::SavepointEntry>,
        }
        let list: List = self
            .call(reqwest::Method::GET, "/v1/savepoints", None::<&()>)
            .await?;
        Ok(list.savepoints)
    }

    /// What the tenant's savepoint `name` holds, as a report.
    ///
    /// # Errors
    /// [`Error::ApiRequest`] (400 not a name, 404 no such savepoint); as
    /// [`jobs`](Self::jobs).
    pub async fn inspect_savepoint(&self, name: &str) -> Result<String, Error> {
        let v: serde_json::Value = self
            .send(
                reqwest::Method::GET,
                &savepoint_path(name),
                None,
                Duration::from_secs(60),
            )
            .await?;
        Ok(v["report"].as_str().unwrap_or_default().to_owned())
    }

    /// Disposes of the tenant's savepoint `name`; how many files went.
    ///
    /// # Errors
    /// As [`inspect_savepoint`](Self::inspect_savepoint).
    pub async fn dispose_savepoint(&self, name: &str) -> Result<u64, Error> {
        let v: serde_json::Value = self
            .send(
                reqwest::Method::DELETE,
                &savepoint_path(name),
                None,
                Duration::from_secs(60),
            )
            .await?;
        Ok(v["deleted_files"].as_u64().unwrap_or_default())
    }

    /// Sends one request and decodes its JSON answer, or its error body.
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Error> {
        let body = body
            .map(|b| {
                serde_json::to_vec(b)
                    .map(|bytes| ("application/json", bytes))
                    .map_err(|e| Error::Internal(format!("encoding a request body: {e}")))
            })
            .transpose()?;
        self.send(method, path, body, Duration::from_secs(30)).await
    }

    /// Sends one request with `body` (content type, bytes), answered
    /// within `timeout`.
    async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        timeout: Duration,
    ) -> Result<T, Error> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url).timeout(timeout);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some((content_type, bytes)) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        let unreachable = |message: String| Error::ApiUnreachable {
            address: self.base.clone(),
            message,
        };
        let response = request
            .send()
            .await
            .map_err(|e| unreachable(root_cause(&e)))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| {
            unreachable(format!(
                "reading the answer to {method} {path}: {}",
                root_cause(&e)
            ))
        })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                unreachable(format!(
                    "the answer to {method} {path} is not what the Weir API sends: {e}"
                ))
            });
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(Error::ApiRequest {
                address: self.base.clone(),
                status: status.as_u16(),
                message: body.error,
            }),
            Err(_) => Err(unreachable(format!(
                "{method} {path} answered {status}, not as the Weir API does: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))),
        }
    }
}

/// `/v1/savepoints/{name}`, each segment of the name escaped.
fn savepoint_path(name: &str) -> String {
    let segments: Vec<String> = name.split('/').map(segment).collect();
    format!("/v1/savepoints/{}", segments.join("/"))
}

/// `/v1/jobs/{id}{rest}`.
fn job_path(id: &str, rest: &str) -> String {
    format!("/v1/jobs/{}{rest}", segment(id))
}

/// `s` as one path segment: ids are hex, but a mistyped one must not
/// reach another endpoint.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The innermost cause of `e`: "connection refused" rather than "error
/// sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
