//! One thin handler per Azure Function: extract → decide → execute → respond. The same handlers serve the
//! Functions host (`POST /{FunctionName}` with `{Data, Metadata}`, and forwarded HTTP at `/api/...`) and the
//! standalone relay.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::domain::Signal;
use crate::error::AppError;
use crate::events::{EventPayload, Inbound, drift::DriftReport, monitor::CommonAlert};
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
        trigger: Trigger::Http("approvals/{id?}", &["get"]),
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
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
}

fn body(bytes: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, AppError> {
    match bytes {
        Ok(b) if b.len() > limit => Err(AppError::TooLarge(limit)),
        Ok(b) => Ok(b),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(AppError::TooLarge(limit)),
        Err(r) => Err(AppError::BadRequest(r.body_text())),
    }
}

fn invocation(
    bytes: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<InvocationRequest, AppError> {
    let b = body(bytes, limit)?;
    serde_json::from_slice(&b)
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

/// Decides every record of a delivery. Malformed records are dead-lettered (and listed in the logs);
/// a transient failure fails the whole delivery so that it is retried, duplicates being harmless.
async fn decide_all(
    relay: &Relay,
    source: &str,
    value: Value,
) -> Result<(Vec<Outcome>, Vec<String>), AppError> {
    let now = relay.clock.now();
    let raw = value.to_string();
    let records =
        Inbound::parse_delivery(value).map_err(|e| AppError::BadRequest(e.to_string()))?;
    let (mut outcomes, mut problems) = (Vec::new(), Vec::new());
    for (i, record) in records.into_iter().enumerate() {
        match record
            .map_err(|e| e.to_string())
            .and_then(|r| Signal::from_inbound(r, now).map_err(|e| e.to_string()))
        {
            Ok(signal) => {
                let outcome = relay.handle(&signal).await?;
                tracing::info!(%source, event_id = %signal.event_id, sent = outcome.sent.len(), "{}", outcome.summary());
                outcomes.push(outcome);
            }
            Err(reason) => {
                let reason = format!("event {i}: {reason}");
                dead_letter(relay, source, reason.clone(), raw.clone()).await?;
                problems.push(reason);
            }
        }
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

/// `GET /`: the host polls it for readiness; answers at once.
pub async fn ready() -> &'static str {
    "mlops-relay ready"
}

/// `POST /AmlEvents`: an eventGridTrigger invocation.
pub async fn aml_events(
    State(s): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<InvocationResponse>, AppError> {
    let req = invocation(bytes, s.body_limit)?;
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
    let (outcomes, problems) = match decide_all(&s.relay, "AmlEvents", event.clone()).await {
        Err(AppError::BadRequest(reason)) => {
            // A poison event is answered 2xx so the host does not retry it forever; it is kept as a dead letter.
            dead_letter(&s.relay, "AmlEvents", reason.clone(), event.to_string()).await?;
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
    let req = invocation(bytes, s.body_limit)?;
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
    let req = invocation(bytes, s.body_limit)?;
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
    let now = s.relay.clock.now();
    match s.worker.execute(&entry, delivery, now).await {
        Ok(effect) => {
            s.relay.store.record_effect(&effect).await?;
            Ok(Json(InvocationResponse::logs(vec![format!(
                "{}: {}",
                effect.action_id, effect.outcome
            )]))
            .into_response())
        }
        Err(e @ PortError::Transient(_)) => Err(e.into()),
        Err(PortError::Permanent(reason)) => {
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
    let b = body(bytes, s.body_limit)?;
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
    let (outcomes, problems) = decide_all(&s.relay, "Events", value).await?;
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
    typed_webhook::<DriftReport>(&s, "Drift", bytes).await
}

/// `POST /api/alerts`: Azure Monitor alerts (common alert schema).
pub async fn alerts_webhook(
    State(s): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    typed_webhook::<CommonAlert>(&s, "Alerts", bytes).await
}

async fn typed_webhook<T: serde::de::DeserializeOwned>(
    s: &AppState,
    source: &str,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let b = body(bytes, s.body_limit)?;
    let value: Value = serde_json::from_slice(&b)
        .map_err(|e| AppError::BadRequest(format!("body is not JSON: {e}")))?;
    // Check the shape up front so the sender gets a 400 naming the field rather than a silent dead letter.
    let items = match &value {
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    for (i, item) in items.iter().enumerate() {
        if let Err(e) = serde_path_to_error::deserialize::<_, T>(item) {
            let reason = format!("record {i}: field `{}`: {}", e.path(), e.inner());
            dead_letter(&s.relay, source, reason.clone(), item.to_string()).await?;
            return Err(AppError::BadRequest(reason));
        }
    }
    let (outcomes, problems) = decide_all(&s.relay, source, value).await?;
    if !problems.is_empty() {
        return Err(AppError::BadRequest(problems.join("; ")));
    }
    Ok(Json(json!({ "decided": outcomes.len(), "outcomes": outcomes.iter().map(Outcome::summary).collect::<Vec<_>>() })).into_response())
}

/// `GET /api/approvals` and `/api/approvals/{id}`: open approval requests (read-only).
pub async fn approvals(
    State(s): State<AppState>,
    id: Option<Path<String>>,
) -> Result<Response, AppError> {
    let entries = s.relay.store.actions(&Default::default()).await?;
    let requests: Vec<&LedgerEntry> = entries
        .iter()
        .filter(|e| e.action.kind == crate::policy::ActionKind::RequestApproval)
        .collect();
    match id {
        None => Ok(Json(json!({ "approval_requests": requests })).into_response()),
        Some(Path(id)) => match requests.iter().find(|e| e.action.action_id.as_str() == id) {
            Some(e) => Ok(Json(json!(e)).into_response()),
            None => Err(AppError::NotFound(format!("no approval request `{id}`"))),
        },
    }
}

/// `GET /api/health`.
pub async fn health(State(s): State<AppState>) -> Json<Value> {
    Json(
        json!({ "status": "ok", "policy_hash": s.relay.policy.hash, "version": env!("CARGO_PKG_VERSION") }),
    )
}
