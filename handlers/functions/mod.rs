//! One thin handler per Azure Function: extract → decide → execute → respond. The same handlers serve the
//! Functions host (`POST /{FunctionName}` with `{Data, Metadata}`, and forwarded HTTP at `/api/...`) and the
//! standalone relay.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::approvals::page;
use crate::domain::Signal;
use crate::error::AppError;
use crate::events::{EventPayload, Inbound};
use crate::executor::{Outcome, Relay};
use crate::host::{InvocationRequest, InvocationResponse};
use crate::ports::{DeadLetter, LedgerEntry, PortError, Worker};

/// The trigger of a function, as function.json names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `eventGridTrigger`.
    EventGrid,
    /// `timerTrigger`.
    Timer,
    /// `serviceBusTrigger` on a queue.
    ServiceBus(&'static str),
    /// `httpTrigger` with a route under `/api` and its methods.
    Http(&'static str, &'static [&'static str]),
}

/// One Azure Function: its folder name in `function-defs/`, trigger and trigger binding name.
#[derive(Debug, Clone, Copy)]
pub struct FunctionDef {
    /// Function name (folder name).
    pub name: &'static str,
    /// Trigger.
    pub trigger: Trigger,
    /// Trigger binding name, as read by the handler.
    pub binding: &'static str,
}

/// Every function the handler serves. A test checks this table against `function-defs/` both ways.
pub const FUNCTIONS: &[FunctionDef] = &[
    FunctionDef {
        name: "AmlEvents",
        trigger: Trigger::EventGrid,
        binding: "event",
    },
    FunctionDef {
        name: "Scheduler",
        trigger: Trigger::Timer,
        binding: "timer",
    },
    FunctionDef {
        name: "RetrainWorker",
        trigger: Trigger::ServiceBus("retrain-requests"),
        binding: "message",
    },
    FunctionDef {
        name: "DeployWorker",
        trigger: Trigger::ServiceBus("deploy-requests"),
        binding: "message",
    },
    FunctionDef {
        name: "NotifyWorker",
        trigger: Trigger::ServiceBus("notifications"),
        binding: "message",
    },
    FunctionDef {
        name: "Events",
        trigger: Trigger::Http("events", &["post", "options"]),
        binding: "req",
    },
    FunctionDef {
        name: "Drift",
        trigger: Trigger::Http("drift", &["post"]),
        binding: "req",
    },
    FunctionDef {
        name: "Alerts",
        trigger: Trigger::Http("alerts", &["post"]),
        binding: "req",
    },
    FunctionDef {
        name: "Approvals",
        trigger: Trigger::Http("approvals/{id}", &["get", "post"]),
        binding: "req",
    },
    FunctionDef {
        name: "Health",
        trigger: Trigger::Http("health", &["get"]),
        binding: "req",
    },
];

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Policy and ports.
    pub relay: Relay,
    /// Carries out queue messages.
    pub worker: Arc<dyn Worker>,
    /// Largest accepted request body, in bytes (see [`AppState::host_body_limit`] for host invocations).
    pub body_limit: usize,
    /// Approval links: signing key and public URL.
    pub approvals: Arc<crate::approvals::Config>,
}

/// How many times `body_limit` a host invocation may be (see [`AppState::host_body_limit`]).
pub const HOST_BODY_FACTOR: usize = 8;

impl AppState {
    /// Largest accepted host invocation (`POST /{FunctionName}`). The host sends an event twice (in
    /// `Data`, JSON-encoded once or twice, and in `Metadata.data`), and encoding escapes every quote and
    /// backslash again: an event Event Grid accepted (≤ 1 MB) can arrive as several. Refusing it would not
    /// make it a dead letter but a failed invocation, retried for 24 hours and then dropped.
    pub fn host_body_limit(&self) -> usize {
        self.body_limit.saturating_mul(HOST_BODY_FACTOR)
    }

    /// Largest accepted Event Grid delivery (`POST /api/events`): twice `body_limit`. Event Grid sends an
    /// event of up to 1 MB alone, with the fields it adds (`topic`, `metadataVersion`) and the array around
    /// it, so a delivery can pass 1 MiB; and it does not retry a 413, so a refused delivery is lost.
    pub fn events_body_limit(&self) -> usize {
        self.body_limit.saturating_mul(2)
    }
}

fn body(bytes: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, AppError> {
    match bytes {
        Ok(b) if b.len() > limit => Err(AppError::TooLarge(limit)),
        Ok(b) => Ok(b),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(AppError::TooLarge(limit)),
        Err(r) => Err(AppError::BadRequest(r.body_text())),
    }
}

/// A request body as text, made only when a dead letter needs it.
fn raw_body(b: &Bytes) -> impl Fn() -> String + Sync + '_ {
    move || String::from_utf8_lossy(b).into_owned()
}

fn invocation(
    bytes: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<InvocationRequest, AppError> {
    parse_invocation(&body(bytes, limit)?)
}

/// A custom-handler invocation read from its body.
fn parse_invocation(b: &Bytes) -> Result<InvocationRequest, AppError> {
    serde_json::from_slice(b)
        .map_err(|e| AppError::BadRequest(format!("not a custom-handler invocation: {e}")))
}

async fn dead_letter(
    relay: &Relay,
    source: &str,
    reason: String,
    body: String,
) -> Result<(), AppError> {
    tracing::warn!(%source, %reason, "dead-lettered");
    let letter = DeadLetter {
        at: relay.clock.now(),
        source: source.into(),
        reason,
        body,
    };
    relay
        .store
        .dead_letter(&letter)
        .await
        .map_err(AppError::from)
}

/// Where a delivery came from. mlops-relay's own events (an approval decided, a deployment completed) are
/// taken only from the relay itself: the approval page builds them after checking the signed token and the
/// signed-in approver, and workers report what they did. From a delivery (Event Grid, the webhooks) they
/// would be a way around those checks: anyone who can post an event could approve a promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Event Grid, the webhooks: what the outside world sends.
    Outside,
    /// The relay's own follow-up events.
    Relay,
}

impl Origin {
    fn admits(self, signal: Signal) -> Result<Signal, String> {
        if self == Origin::Outside && crate::events::relay::is_own(&signal.event_type) {
            return Err(format!(
                "`{}` is mlops-relay's own event type and is taken only from its approval page and \
                 workers, never from a delivery (it would skip the approval token and identity checks)",
                signal.event_type
            ));
        }
        Ok(signal)
    }
}

/// Decides every record of a delivery. Malformed records are dead-lettered with `raw()`, the delivery as it
/// came (and listed in the logs); a transient failure fails the whole delivery so that it is retried,
/// duplicates being harmless.
pub(crate) async fn decide_all(
    relay: &Relay,
    source: &str,
    origin: Origin,
    value: Value,
    raw: &(dyn Fn() -> String + Sync),
) -> Result<(Vec<Outcome>, Vec<String>), AppError> {
    let records =
        Inbound::parse_delivery(value).map_err(|e| AppError::BadRequest(e.to_string()))?;
    let records = records
        .into_iter()
        .map(|r| r.map_err(|e| e.to_string()))
        .collect();
    let signals = signals(relay, origin, records);
    decide_signals(relay, source, signals, raw).await
}

/// Normalises records into signals, each on its own: a bad one does not spoil the others.
fn signals(
    relay: &Relay,
    origin: Origin,
    records: Vec<Result<Inbound, String>>,
) -> Vec<Result<Signal, String>> {
    let now = relay.clock.now();
    records
        .into_iter()
        .enumerate()
        .map(|(i, record)| {
            record
                .and_then(|r| Signal::from_inbound(r, now).map_err(|e| e.to_string()))
                .and_then(|signal| origin.admits(signal))
                .map_err(|reason| format!("event {i}: {reason}"))
        })
        .collect()
}

/// Decides the signals in order. The bad ones make one dead letter for the delivery, with every reason and
/// `raw()` once: a batch of 5,000 bad events in 1 MB is 1 MB kept, not 5 GB.
async fn decide_signals(
    relay: &Relay,
    source: &str,
    signals: Vec<Result<Signal, String>>,
    raw: &(dyn Fn() -> String + Sync),
) -> Result<(Vec<Outcome>, Vec<String>), AppError> {
    let (mut outcomes, mut problems) = (Vec::new(), Vec::new());
    for signal in signals {
        match signal {
            Ok(signal) => {
                let outcome = relay.handle(&signal).await?;
                tracing::info!(%source, event_id = %signal.event_id, sent = outcome.sent.len(), "{}", outcome.summary());
                outcomes.push(outcome);
            }
            Err(reason) => problems.push(reason),
        }
    }
    if !problems.is_empty() {
        dead_letter(relay, source, problems.join("; "), raw()).await?;
    }
    Ok((outcomes, problems))
}

fn logs(outcomes: &[Outcome], problems: &[String]) -> Vec<String> {
    outcomes
        .iter()
        .map(Outcome::summary)
        .chain(problems.iter().map(|p| format!("dead-lettered: {p}")))
        .collect()
}

/// Decides the events a worker's effect produced (a deployment's report opens the next gate). Before the
/// message completes: if this fails, the redelivery decides them (their ids are deterministic).
pub async fn follow_up(
    relay: &Relay,
    effect: &crate::ports::Effect,
) -> Result<Vec<String>, AppError> {
    let mut lines = Vec::new();
    for event in &effect.follow_up {
        let (outcomes, problems) =
            decide_all(relay, "worker", Origin::Relay, event.clone(), &|| {
                event.to_string()
            })
            .await?;
        lines.extend(logs(&outcomes, &problems));
    }
    Ok(lines)
}

/// Carries out a queue message once in effect: when an effect is already recorded for the action (an
/// earlier delivery did the work but did not complete the message), nothing is sent again; its follow-up
/// events are decided again, which is harmless (their ids are deterministic).
pub async fn execute_once(
    relay: &Relay,
    worker: &dyn Worker,
    entry: &LedgerEntry,
    delivery: u32,
) -> Result<(crate::ports::Effect, bool), PortError> {
    if let Some(done) = relay
        .store
        .effect(entry.action.action_id.as_str())
        .await
        .map_err(store_failure)?
    {
        return Ok((done, false));
    }
    let effect = worker.execute(entry, delivery, relay.clock.now()).await?;
    relay
        .store
        .record_effect(&effect)
        .await
        .map_err(store_failure)?;
    Ok((effect, true))
}

/// A state store failure while carrying out a message is not the message's fault (a role assignment still
/// propagating answers 403): it is retried by redelivery, and the queue's own dead-letter after its most
/// deliveries keeps the message if it never heals. Only the worker's permanent answer makes a message poison.
fn store_failure(e: PortError) -> PortError {
    match e {
        PortError::Transient(m) | PortError::Permanent(m) | PortError::Rejected(m) => {
            PortError::Transient(format!("state store: {m}"))
        }
    }
}

/// `GET /`: the host polls it for readiness; answers at once.
pub async fn ready() -> &'static str {
    "mlops-relay ready"
}

/// `POST /AmlEvents`: an eventGridTrigger invocation.
pub async fn aml_events(
    State(s): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<InvocationResponse>, AppError> {
    let b = body(bytes, s.host_body_limit())?;
    let req = parse_invocation(&b)?;
    // What a dead letter keeps: the invocation as the host sent it (no copy of the event is made for it).
    let raw = raw_body(&b);
    let Some(event) = req.event_grid_event("event") else {
        let raw = serde_json::to_string(&req.data).unwrap_or_default();
        dead_letter(
            &s.relay,
            "AmlEvents",
            "the invocation has no `event` binding".into(),
            raw,
        )
        .await?;
        return Ok(Json(InvocationResponse::logs(vec![
            "dead-lettered: no `event` binding in Data".into(),
        ])));
    };
    let (outcomes, problems) =
        match decide_all(&s.relay, "AmlEvents", Origin::Outside, event, &raw).await {
            Err(AppError::BadRequest(reason)) => {
                // A poison event is answered 2xx so the host does not retry it forever; it is kept as a dead letter.
                dead_letter(&s.relay, "AmlEvents", reason.clone(), raw()).await?;
                return Ok(Json(InvocationResponse::logs(vec![format!(
                    "dead-lettered: {reason}"
                )])));
            }
            other => other?,
        };
    Ok(Json(InvocationResponse::logs(logs(&outcomes, &problems))))
}

/// `POST /Scheduler`: the minute timer; evaluates every policy schedule.
pub async fn scheduler(
    State(s): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<InvocationResponse>, AppError> {
    let req = invocation(bytes, s.host_body_limit())?;
    let past_due = req.binding("timer").and_then(|t| {
        t.get("IsPastDue")
            .and_then(|v| v.as_bool().or_else(|| v.as_str().map(|s| s == "true")))
    });
    let outcomes = s.relay.tick().await?;
    let mut lines: Vec<String> = outcomes.iter().map(Outcome::summary).collect();
    if past_due == Some(true) {
        lines.push(
            "timer was past due; missed instants handled by each schedule's catch-up policy".into(),
        );
    }
    Ok(Json(InvocationResponse::logs(lines)))
}

/// `POST /{Retrain,Deploy,Notify}Worker`: a serviceBusTrigger invocation carrying a ledger entry.
pub async fn worker(
    State(s): State<AppState>,
    Path(function): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let Some(def) = FUNCTIONS
        .iter()
        .find(|f| f.name == function && matches!(f.trigger, Trigger::ServiceBus(_)))
    else {
        return Err(AppError::NotFound(format!(
            "no function named `{function}`"
        )));
    };
    let req = invocation(bytes, s.host_body_limit())?;
    let delivery = req.meta_u64("DeliveryCount").unwrap_or(1) as u32;
    let message = req.binding(def.binding);
    let entry = message
        .clone()
        .ok_or_else(|| "no `message` binding".to_string())
        .and_then(|m| {
            serde_json::from_value::<LedgerEntry>(m).map_err(|e| format!("not a ledger entry: {e}"))
        });
    let entry = match entry {
        Ok(e) => e,
        Err(reason) => {
            let raw = message.map(|m| m.to_string()).unwrap_or_default();
            dead_letter(&s.relay, def.name, reason.clone(), raw).await?;
            return Ok(Json(InvocationResponse::logs(vec![format!(
                "dead-lettered: {reason}"
            )]))
            .into_response());
        }
    };
    match execute_once(&s.relay, s.worker.as_ref(), &entry, delivery).await {
        Ok((effect, fresh)) => {
            let done = if fresh {
                ""
            } else {
                " (already done by an earlier delivery)"
            };
            let mut lines = vec![format!("{}: {}{done}", effect.action_id, effect.outcome)];
            lines.extend(follow_up(&s.relay, &effect).await?);
            Ok(Json(InvocationResponse::logs(lines)).into_response())
        }
        Err(e @ PortError::Transient(_)) => Err(e.into()),
        Err(PortError::Permanent(reason) | PortError::Rejected(reason)) => {
            dead_letter(
                &s.relay,
                def.name,
                reason.clone(),
                serde_json::to_string(&entry).unwrap_or_default(),
            )
            .await?;
            Ok(Json(InvocationResponse::logs(vec![format!(
                "failed permanently: {reason}"
            )]))
            .into_response())
        }
    }
}

/// `POST /api/events`: the Event Grid webhook for standalone deployments (Event Grid schema or CloudEvents,
/// single or batched), with the subscription-validation handshake. Answers 200 only once every event in the
/// batch is durably decided.
pub async fn events_webhook(
    State(s): State<AppState>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let b = body(bytes, s.events_body_limit())?;
    let value: Value = serde_json::from_slice(&b)
        .map_err(|e| AppError::BadRequest(format!("body is not JSON: {e}")))?;
    let kind = headers
        .get("aeg-event-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Notification");
    if kind.eq_ignore_ascii_case("SubscriptionValidation") || is_validation(&value) {
        return validation_response(&value);
    }
    if kind.eq_ignore_ascii_case("Unsubscribe") {
        return Ok(StatusCode::OK.into_response());
    }
    let raw = raw_body(&b);
    let (outcomes, problems) = decide_all(&s.relay, "Events", Origin::Outside, value, &raw).await?;
    Ok(Json(json!({
        "decided": outcomes.len(),
        "duplicates": outcomes.iter().filter(|o| o.duplicate()).count(),
        "dead_lettered": problems,
    }))
    .into_response())
}

fn is_validation(value: &Value) -> bool {
    let first = match value {
        Value::Array(items) if items.len() == 1 => &items[0],
        other => other,
    };
    first
        .get("eventType")
        .or_else(|| first.get("type"))
        .and_then(Value::as_str)
        == Some(crate::events::eventgrid::SUBSCRIPTION_VALIDATION)
}

fn validation_response(value: &Value) -> Result<Response, AppError> {
    let records =
        Inbound::parse_delivery(value.clone()).map_err(|e| AppError::BadRequest(e.to_string()))?;
    for record in records.into_iter().flatten() {
        if let Inbound::Event(env) = record
            && let Ok(EventPayload::SubscriptionValidation(v)) = env.payload()
        {
            tracing::info!(validation_url = ?v.validation_url, "Event Grid subscription validated");
            return Ok((
                StatusCode::OK,
                Json(json!({ "validationResponse": v.validation_code })),
            )
                .into_response());
        }
    }
    Err(AppError::BadRequest(
        "SubscriptionValidation without a validationCode".into(),
    ))
}

/// `OPTIONS /api/events`: the CloudEvents webhook abuse-protection handshake.
pub async fn events_options(headers: HeaderMap) -> Response {
    let origin = headers
        .get("webhook-request-origin")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("*"));
    let rate = headers
        .get("webhook-request-rate")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("*"));
    let mut response = StatusCode::OK.into_response();
    let h = response.headers_mut();
    h.insert("webhook-allowed-origin", origin);
    h.insert("webhook-allowed-rate", rate);
    h.insert("allow", HeaderValue::from_static("POST, OPTIONS"));
    response
}

/// `POST /api/drift`: drift reports (one or an array) from outside monitors.
pub async fn drift_webhook(
    State(s): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    typed_webhook(&s, "Drift", bytes, Inbound::Drift).await
}

/// `POST /api/alerts`: Azure Monitor alerts (common alert schema).
pub async fn alerts_webhook(
    State(s): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    typed_webhook(&s, "Alerts", bytes, Inbound::Alert).await
}

/// A webhook that takes one kind of record (or an array of them). Each is read as that kind, whatever else
/// its fields look like: a drift report with a `type`, `source` and `id` is still a drift report, not a
/// CloudEvent of an unknown type.
async fn typed_webhook<T: serde::de::DeserializeOwned>(
    s: &AppState,
    source: &str,
    bytes: Result<Bytes, BytesRejection>,
    into: fn(T) -> Inbound,
) -> Result<Response, AppError> {
    let b = body(bytes, s.body_limit)?;
    let value: Value = serde_json::from_slice(&b)
        .map_err(|e| AppError::BadRequest(format!("body is not JSON: {e}")))?;
    let items = match crate::events::lenient::decode_nested(value) {
        Value::Array(items) => items,
        other => vec![other],
    };
    // Every record is read before any is decided, so the sender gets a 400 naming the field rather than a
    // silent dead letter, and nothing of a bad batch is half done.
    let mut records = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match serde_path_to_error::deserialize::<_, T>(&item) {
            Ok(record) => records.push(Ok(into(record))),
            Err(e) => {
                let reason = format!("record {i}: field `{}`: {}", e.path(), e.inner());
                dead_letter(&s.relay, source, reason.clone(), item.to_string()).await?;
                return Err(AppError::BadRequest(reason));
            }
        }
    }
    // Normalising can still refuse a record (a time that is not one, a blank model): that too is found
    // before anything is decided.
    let signals = signals(&s.relay, Origin::Outside, records);
    let raw = raw_body(&b);
    let problems: Vec<&str> = signals
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(String::as_str)
        .collect();
    if !problems.is_empty() {
        let reason = problems.join("; ");
        dead_letter(&s.relay, source, reason.clone(), raw()).await?;
        return Err(AppError::BadRequest(reason));
    }
    let (outcomes, _) = decide_signals(&s.relay, source, signals, &raw).await?;
    Ok(Json(json!({ "decided": outcomes.len(), "outcomes": outcomes.iter().map(Outcome::summary).collect::<Vec<_>>() })).into_response())
}

/// The approval link's query and form fields.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ApprovalForm {
    /// The signed token from the link.
    #[serde(default)]
    pub token: Option<String>,
    /// `approve` or `reject` (POST only).
    #[serde(default)]
    pub decision: Option<String>,
    /// The approver's comment (POST only).
    #[serde(default)]
    pub comment: Option<String>,
}

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, axum::response::Html(body)).into_response();
    // The page carries a bearer token in its URL: keep it out of caches and referrers.
    let h = r.headers_mut();
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("content-security-policy", HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"));
    r
}

const ASK_AGAIN: &str = "Ask for a fresh link: it comes with the next approval request, or from whoever runs mlops-relay.";

/// Checks a link's token against the request it names; the refusal page on failure.
async fn admit(
    s: &AppState,
    id: &str,
    token: Option<&str>,
    headers: &HeaderMap,
) -> Result<(LedgerEntry, crate::approvals::token::Claims, String), Response> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(html(
            StatusCode::UNAUTHORIZED,
            page::refused(
                "This page needs the link from your approval request (it carries a signed token).",
                ASK_AGAIN,
            ),
        ));
    };
    let now = s.relay.clock.now();
    let claims = crate::approvals::token::verify(&s.approvals.key, token, now).map_err(|e| {
        html(
            StatusCode::FORBIDDEN,
            page::refused(&e.to_string(), ASK_AGAIN),
        )
    })?;
    // Behind App Service authentication, the signed-in person must be the one the link was sent to.
    if let Some(principal) = headers
        .get("x-ms-client-principal-name")
        .and_then(|v| v.to_str().ok())
        && !principal.eq_ignore_ascii_case(&claims.approver)
    {
        return Err(html(
            StatusCode::FORBIDDEN,
            page::refused(
                &format!(
                    "This link was sent to {}, but you are signed in as {principal}.",
                    claims.approver
                ),
                ASK_AGAIN,
            ),
        ));
    }
    let entry = s
        .relay
        .store
        .entry(id)
        .await
        .map_err(|e| AppError::from(e).into_response())?;
    let Some(entry) = entry else {
        return Err(html(
            StatusCode::NOT_FOUND,
            page::refused(&format!("There is no approval request `{id}`."), ASK_AGAIN),
        ));
    };
    let environment = match &entry.action.params {
        crate::policy::ActionParams::RequestApproval { environment, .. } => environment.clone(),
        _ => {
            return Err(html(
                StatusCode::NOT_FOUND,
                page::refused(&format!("`{id}` is not an approval request."), ASK_AGAIN),
            ));
        }
    };
    let (model, version) = (
        entry.action.model.clone().unwrap_or_default(),
        entry.action.version.clone().unwrap_or_default(),
    );
    claims
        .check(id, &model, &version, &environment, &s.relay.policy.hash)
        .map_err(|e| html(StatusCode::CONFLICT, page::refused(&e.to_string(), "The policy or the request changed since the link was sent; a new request carries a new link.")))?;
    Ok((entry, claims, token.to_string()))
}

/// `GET /api/approvals/{id}?token=…`: the approval page. Never acts.
pub async fn approval_page(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ApprovalForm>,
    headers: HeaderMap,
) -> Response {
    match admit(&s, &id, q.token.as_deref(), &headers).await {
        Err(refusal) => refusal,
        Ok((entry, claims, token)) => {
            let view = page::View {
                entry: &entry,
                approver: &claims.approver,
                token: &token,
                consequence: crate::approvals::consequence(&entry),
            };
            html(StatusCode::OK, page::request(&view))
        }
    }
}

/// `POST /api/approvals/{id}`: an approver's decision, from the page's buttons. Decided like any other
/// signal; the token is single-use because the signal's identity is the token itself.
pub async fn approval_decision(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ApprovalForm>,
) -> Response {
    let (entry, claims, token) = match admit(&s, &id, form.token.as_deref(), &headers).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let decision = match form.decision.as_deref() {
        Some(d @ ("approve" | "reject")) => d,
        _ => {
            return html(
                StatusCode::BAD_REQUEST,
                page::refused(
                    "Choose Approve or Reject.",
                    "Go back and press one of the two buttons.",
                ),
            );
        }
    };
    let use_id = crate::approvals::token::Claims::use_id(&token);
    let now = s.relay.clock.now();
    let event = json!({
        "specversion": "1.0",
        "type": crate::events::relay::APPROVAL_DECIDED,
        "source": "mlops-relay/approvals",
        "id": format!("approval-{use_id}"),
        "time": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "subject": format!("models/{}:{}", claims.model, claims.version),
        "data": {
            "model": claims.model, "version": claims.version, "environment": claims.environment,
            "approver": claims.approver, "decision": decision, "comment": form.comment.filter(|c| !c.trim().is_empty()),
            "requestActionId": entry.action.action_id,
        },
    });
    let signal = Inbound::parse_delivery(event)
        .ok()
        .and_then(|mut records| records.pop())
        .and_then(|r| r.ok())
        .and_then(|r| Signal::from_inbound(r, now).ok());
    let Some(mut signal) = signal else {
        return AppError::Internal("approval event did not parse".into()).into_response();
    };
    // One decision per token: a second use is a duplicate of the first.
    signal.key = format!("approval-token|{use_id}");
    match s.relay.handle(&signal).await {
        Err(e) => AppError::from(e).into_response(),
        Ok(outcome) => match outcome.decision {
            None => html(
                StatusCode::CONFLICT,
                page::refused(
                    "This link has already been used: its decision is recorded.",
                    "Each link decides once. Nothing more to do.",
                ),
            ),
            Some(d) => {
                tracing::info!(approver = %claims.approver, %decision, model = %claims.model, version = %claims.version, "approval recorded: {}", d.explanation());
                let mut lines = vec![format!(
                    "{} {}s {}:{} for {}.",
                    claims.approver, decision, claims.model, claims.version, claims.environment
                )];
                lines.extend(d.fired.iter().map(|n| n.reason.clone()));
                lines.extend(d.suppressed.iter().map(|h| format!("Held: {}", h.reason)));
                lines.extend(
                    d.actions
                        .iter()
                        .map(|a| format!("Next: {} ({})", a.reason, a.action_id)),
                );
                lines.push(format!(
                    "Recorded in the decision log at {} (decision {}).",
                    d.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    d.decision_id()
                ));
                html(StatusCode::OK, page::recorded("Decision recorded", &lines))
            }
        },
    }
}

/// `GET /api/health`.
pub async fn health(State(s): State<AppState>) -> Json<Value> {
    Json(
        json!({ "status": "ok", "policy_hash": s.relay.policy.hash, "version": env!("CARGO_PKG_VERSION") }),
    )
}
