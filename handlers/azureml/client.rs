//! The Azure ML control-plane client: sends [`super::ArmRequest`]s with an Entra token, follows
//! long-running operations to the end, and classifies failures for the worker (configuration errors are
//! permanent and loud; throttling and outages are transient, so the queue redelivers).

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use serde_json::Value;

use super::{ArmRequest, OperationStatus, SCOPE, operation_status};
use crate::ports::PortError;

/// Sends ARM requests.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    credential: Arc<dyn TokenCredential>,
    /// Pause between long-running-operation polls (ARM's `Retry-After` wins when given).
    pub poll_interval: Duration,
    /// Give up following an operation after this long (the message is redelivered and the PUT, being
    /// idempotent, picks the operation up again).
    pub poll_timeout: Duration,
    /// The longest one action may spend on Azure ML, every request and wait included: 9 min, under
    /// `host.json`'s 10 min `functionTimeout`. Past that the Functions host ends the invocation as failed
    /// itself, with no answer from the handler, and may restart the handler with it.
    pub action_budget: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// An ARM response: status and JSON body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Body (null when empty).
    pub body: Value,
    /// `Azure-AsyncOperation` URL, when the request started a long-running operation.
    pub async_operation: Option<String>,
    /// `Retry-After` in seconds, when ARM says how long to wait before polling again.
    pub retry_after: Option<Duration>,
}

/// The longest wait between two polls of an operation, whatever `Retry-After` says: a wait is time the
/// action's budget cannot spend on noticing the operation ended.
const LONGEST_POLL_WAIT: Duration = Duration::from_secs(60);

fn classify(status: u16, what: &str, body: &Value) -> PortError {
    let detail = body["error"]["message"]
        .as_str()
        .or(body["error"]["code"].as_str())
        .unwrap_or("")
        .to_string();
    match status {
        401 | 403 => PortError::Permanent(format!(
            "{what}: {status} {detail} — grant the relay's identity 'AzureML Data Scientist' on the workspace (and 'AzureML Registry User' on the registry)"
        )),
        404 => PortError::Permanent(format!(
            "{what}: not found ({detail}) — check the workspace, endpoint and component names in the policy"
        )),
        // ARM refuses a write while another operation on the resource runs ("Conflict of operation, another
        // operation on same entity is already running"); it resolves itself once that operation ends.
        409 => PortError::Transient(format!(
            "{what}: 409 {detail} — another operation on this resource is still running"
        )),
        408 | 429 | 500..=599 => PortError::Transient(format!("{what}: {status} {detail}")),
        _ => PortError::Permanent(format!("{what}: {status} {detail}")),
    }
}

/// A request ARM refused or did not answer: its status when there was one, and how the worker treats it.
struct Failure {
    status: Option<u16>,
    error: PortError,
}

impl From<Failure> for PortError {
    fn from(f: Failure) -> PortError {
        f.error
    }
}

/// Whether a resource's `properties.provisioningState` says no operation runs on it any more.
fn settled(resource: &Value) -> bool {
    let state = resource["properties"]["provisioningState"]
        .as_str()
        .unwrap_or("Succeeded");
    ["succeeded", "failed", "canceled", "cancelled"]
        .iter()
        .any(|s| state.eq_ignore_ascii_case(s))
}

/// See [`Client::action_budget`].
pub const ACTION_BUDGET: Duration = Duration::from_secs(540);

impl Client {
    /// A client for `base` (normally [`super::ARM`]; a local server in tests).
    pub fn new(base: &str, credential: Arc<dyn TokenCredential>) -> Result<Client, PortError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| PortError::Permanent(format!("http client: {e}")))?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            credential,
            poll_interval: Duration::from_secs(10),
            // One operation may take the whole budget; the budget still bounds the action's sum of them.
            poll_timeout: ACTION_BUDGET,
            action_budget: ACTION_BUDGET,
        })
    }

    async fn token(&self) -> Result<String, PortError> {
        let token = self
            .credential
            .get_token(&[SCOPE], None)
            .await
            .map_err(|e| PortError::Transient(format!("token for {SCOPE}: {e}")))?;
        Ok(token.token.secret().to_string())
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Response, Failure> {
        let unanswered = |e: reqwest::Error| Failure {
            status: None,
            error: PortError::Transient(format!("{what}: {e}")),
        };
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(self.token().await.map_err(|error| Failure {
                status: None,
                error,
            })?);
        if let Some(b) = body {
            request = request.json(b);
        }
        let response = request.send().await.map_err(unanswered)?;
        let status = response.status().as_u16();
        let async_operation = response
            .headers()
            .get("azure-asyncoperation")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.map_err(unanswered)?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !(200..300).contains(&status) {
            return Err(Failure {
                status: Some(status),
                error: classify(status, what, &body),
            });
        }
        Ok(Response {
            status,
            body,
            async_operation,
            retry_after,
        })
    }

    /// Sends one request.
    pub async fn call(&self, request: &ArmRequest) -> Result<Response, PortError> {
        Ok(self.send_request(request).await?)
    }

    async fn send_request(&self, request: &ArmRequest) -> Result<Response, Failure> {
        let method =
            reqwest::Method::from_bytes(request.method.as_bytes()).map_err(|e| Failure {
                status: None,
                error: PortError::Permanent(e.to_string()),
            })?;
        let url = format!("{}{}", self.base, request.path);
        self.send(
            method,
            &url,
            request.body.as_ref(),
            &format!(
                "{} {}",
                request.method,
                request.path.split('?').next().unwrap_or("")
            ),
        )
        .await
    }

    /// Sends a request and, if it started a long-running operation, polls it until it ends.
    pub async fn call_and_wait(&self, request: &ArmRequest) -> Result<Response, PortError> {
        let response = self.call(request).await?;
        self.follow(request, response).await
    }

    /// [`Client::call_and_wait`] for a PUT that may find an earlier operation on its resource still running:
    /// a deployment redelivered while its first PUT provisions, or a traffic shift while a deployment
    /// updates the endpoint. ARM refuses those with 409; this waits, polling the resource, until its
    /// `provisioningState` settles, then sends the PUT again, instead of spending a delivery on a conflict
    /// that ends by itself. Bounded by `poll_timeout`, past which it is Transient.
    pub async fn put_and_wait(&self, request: &ArmRequest) -> Result<Response, PortError> {
        let deadline = tokio::time::Instant::now() + self.poll_timeout;
        let resource = ArmRequest {
            method: "GET",
            path: request.path.clone(),
            body: None,
        };
        loop {
            let conflict = match self.send_request(request).await {
                Ok(response) => return self.follow(request, response).await,
                Err(Failure {
                    status: Some(409),
                    error: PortError::Transient(conflict),
                }) => conflict,
                Err(f) => return Err(f.error),
            };
            tracing::info!(path = %resource.path, "{conflict}; waiting for it to end");
            loop {
                if tokio::time::Instant::now() > deadline {
                    return Err(PortError::Transient(format!(
                        "{conflict}, for over {:?}",
                        self.poll_timeout
                    )));
                }
                tokio::time::sleep(self.poll_interval).await;
                match self.send_request(&resource).await {
                    Ok(r) if settled(&r.body) => break,
                    Ok(_) => {}
                    // Deleted meanwhile: the PUT creates it again.
                    Err(Failure {
                        status: Some(404), ..
                    }) => break,
                    Err(f) => return Err(f.error),
                }
            }
        }
    }

    async fn follow(
        &self,
        request: &ArmRequest,
        response: Response,
    ) -> Result<Response, PortError> {
        let Some(url) = response.async_operation.clone() else {
            return Ok(response);
        };
        // The operation URL is ARM's own; only follow it on the endpoint we talk to.
        if !url.starts_with(&self.base) {
            return Err(PortError::Permanent(format!(
                "refusing to follow an operation outside {}: {url}",
                self.base
            )));
        }
        let deadline = tokio::time::Instant::now() + self.poll_timeout;
        // ARM's `Retry-After` wins when given (on the PUT's answer, then on each poll's).
        let wait = |r: &Response| {
            r.retry_after
                .map_or(self.poll_interval, |d| d.min(LONGEST_POLL_WAIT))
        };
        let mut next = wait(&response);
        loop {
            tokio::time::sleep(next).await;
            let poll = self
                .send(reqwest::Method::GET, &url, None, "operation status")
                .await
                .map_err(PortError::from)?;
            next = wait(&poll);
            match operation_status(&poll.body) {
                OperationStatus::Succeeded => return Ok(response),
                OperationStatus::Failed => {
                    let detail = poll.body["error"]["message"]
                        .as_str()
                        .unwrap_or("no detail");
                    return Err(PortError::Permanent(format!(
                        "{} failed: {detail}",
                        request.path.split('?').next().unwrap_or("")
                    )));
                }
                OperationStatus::Running if tokio::time::Instant::now() > deadline => {
                    return Err(PortError::Transient(format!(
                        "{} still running after {:?}",
                        request.path, self.poll_timeout
                    )));
                }
                OperationStatus::Running => {}
            }
        }
    }
}
