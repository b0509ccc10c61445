//! Wire types: lenient mirrors of what arrives (Event Grid schema, CloudEvents 1.0, Azure ML payloads, Azure
//! Monitor alerts, our drift webhook). No decisions are made here; [`crate::domain`] turns these into signals.
//!
//! Parsing runs in two steps, as in the Lambda runtime's event crates: the envelope first, then `data` by
//! `eventType` with an explicit [`EventPayload::Unknown`] arm, so a *malformed* known event is an error that
//! names the field instead of quietly becoming "unknown".

pub mod aml;
pub mod drift;
pub mod eventgrid;
pub mod fast;
pub mod lenient;
pub mod monitor;
pub mod relay;

use base64::Engine as _;
use chrono::{DateTime, FixedOffset};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use lenient::decode_nested;

/// Which envelope an event came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schema {
    /// [Event Grid schema](https://learn.microsoft.com/azure/event-grid/event-schema): `eventType`, `topic`, `eventTime`.
    EventGrid,
    /// [CloudEvents 1.0](https://github.com/cloudevents/spec): `type`, `source`, `time`, `specversion`.
    CloudEvents,
}

/// One event, envelope fields normalised across both schemas; `data` still raw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope schema.
    pub schema: Schema,
    /// Publisher-unique id; with `source` it identifies the event.
    pub id: String,
    /// Event Grid `topic` or CloudEvents `source`: for Azure ML, the workspace resource id.
    pub source: String,
    /// Subject, e.g. `models/fraud:7`.
    pub subject: Option<String>,
    /// Event type, e.g. `Microsoft.MachineLearningServices.ModelRegistered`.
    pub event_type: String,
    /// When the publisher says it happened.
    pub time: Option<DateTime<FixedOffset>>,
    /// Event Grid `dataVersion`.
    pub data_version: Option<String>,
    /// W3C trace context, when the publisher sent one (CloudEvents extension).
    pub traceparent: Option<String>,
    /// The payload, decoded from `data_base64` or from a JSON string when it arrived that way.
    pub data: Value,
}

/// Why a delivery or an event could not be read. Messages name the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    /// The body is not JSON at all.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// The JSON is neither an object nor an array of objects.
    #[error("expected an event object or an array of events, found {0}")]
    NotAnEvent(&'static str),
    /// A required envelope field is absent or empty.
    #[error("missing required field `{0}`")]
    Missing(&'static str),
    /// An envelope field has the wrong type or format.
    #[error("field `{field}`: {message}")]
    Invalid {
        /// JSON path of the field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The record is not an Event Grid event, a CloudEvent, a drift report or an Azure Monitor alert.
    #[error(
        "unrecognised record: expected an Event Grid event (eventType), a CloudEvent (specversion), a drift report (model, metric) or an Azure Monitor alert (schemaId)"
    )]
    Unrecognised,
}

fn get<'a>(obj: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .find_map(|n| obj.get(*n))
        .filter(|v| !v.is_null())
}

fn required_string(
    obj: &Map<String, Value>,
    names: &[&str],
    field: &'static str,
) -> Result<String, EventError> {
    match get(obj, names) {
        None => Err(EventError::Missing(field)),
        Some(Value::String(s)) if s.trim().is_empty() => Err(EventError::Missing(field)),
        Some(Value::String(s)) => Ok(s.clone()),
        // Ids are occasionally numbers in hand-made test events; accept them as text.
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(other) => Err(EventError::Invalid {
            field: field.into(),
            message: format!("expected a string, found {other}"),
        }),
    }
}

fn optional_string(obj: &Map<String, Value>, names: &[&str]) -> Option<String> {
    get(obj, names).and_then(lenient::as_text)
}

/// Parses an RFC 3339 timestamp as Azure writes it (up to 7 fractional digits, `Z` or an offset).
pub fn parse_time(text: &str, field: &str) -> Result<DateTime<FixedOffset>, EventError> {
    DateTime::parse_from_rfc3339(text.trim()).map_err(|e| EventError::Invalid {
        field: field.into(),
        message: format!("`{text}` is not an RFC 3339 time ({e})"),
    })
}

impl Envelope {
    /// Reads one event object in either schema. CloudEvents is recognised by `specversion` (or the
    /// `specVersion` spelling some spec samples use); everything else must be Event Grid schema.
    pub fn from_value(value: Value) -> Result<Envelope, EventError> {
        let value = decode_nested(value);
        let Value::Object(mut obj) = value else {
            return Err(EventError::NotAnEvent(json_kind(&value)));
        };
        // Event Grid's CloudEvents dead-letter records drop `specversion` but keep `type` and `source`.
        let cloud = get(&obj, &["specversion", "specVersion"]).is_some()
            || (get(&obj, &["eventType", "EventType"]).is_none()
                && get(&obj, &["type"]).is_some()
                && get(&obj, &["source"]).is_some());
        let (schema, type_names, source_names, time_names): (_, &[&str], &[&str], &[&str]) =
            if cloud {
                (Schema::CloudEvents, &["type"], &["source"], &["time"])
            } else {
                (
                    Schema::EventGrid,
                    &["eventType", "EventType"],
                    &["topic", "Topic"],
                    &["eventTime", "EventTime"],
                )
            };
        let type_field = if cloud { "type" } else { "eventType" };
        let event_type = required_string(&obj, type_names, type_field)?;
        let id = required_string(&obj, &["id", "Id"], "id")?;
        // Event Grid sets `topic` itself; hand-written and custom-topic events may lack it.
        let source = optional_string(&obj, source_names).unwrap_or_default();
        if cloud && source.is_empty() {
            return Err(EventError::Missing("source"));
        }
        let time_field = if cloud { "time" } else { "eventTime" };
        let time = match get(&obj, time_names) {
            None => None,
            Some(Value::String(s)) => Some(parse_time(s, time_field)?),
            Some(other) => {
                return Err(EventError::Invalid {
                    field: time_field.into(),
                    message: format!("expected a string, found {other}"),
                });
            }
        };
        let data = if let Some(encoded) = get(&obj, &["data_base64"]) {
            let text = encoded.as_str().ok_or_else(|| EventError::Invalid {
                field: "data_base64".into(),
                message: "expected a base64 string".into(),
            })?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| EventError::Invalid {
                    field: "data_base64".into(),
                    message: e.to_string(),
                })?;
            serde_json::from_slice(&bytes).map_err(|e| EventError::Invalid {
                field: "data_base64".into(),
                message: format!("decoded bytes are not JSON: {e}"),
            })?
        } else {
            let key = ["data", "Data"].into_iter().find(|k| obj.contains_key(*k));
            key.and_then(|k| obj.remove(k))
                .map(decode_nested)
                .unwrap_or(Value::Null)
        };
        Ok(Envelope {
            schema,
            id,
            source,
            subject: optional_string(&obj, &["subject", "Subject"]),
            event_type,
            time,
            data_version: optional_string(&obj, &["dataVersion", "DataVersion"]),
            traceparent: traceparent(optional_string(&obj, &["traceparent"])),
            data,
        })
    }

    /// Deserialises `data` by event type. Unknown types are [`EventPayload::Unknown`], never an error.
    pub fn payload(&self) -> Result<EventPayload, EventError> {
        Ok(match self.event_type.as_str() {
            aml::MODEL_REGISTERED => EventPayload::ModelRegistered(self.data_as()?),
            aml::MODEL_DEPLOYED => EventPayload::ModelDeployed(self.data_as()?),
            aml::RUN_COMPLETED => EventPayload::RunCompleted(self.data_as()?),
            aml::RUN_STATUS_CHANGED => {
                // The shared run fields are checked on their own first: through `#[serde(flatten)]` a
                // type error would lose its field path.
                let _: aml::RunCompleted = self.data_as()?;
                EventPayload::RunStatusChanged(self.data_as()?)
            }
            aml::DATASET_DRIFT_DETECTED => EventPayload::DatasetDriftDetected(self.data_as()?),
            eventgrid::SUBSCRIPTION_VALIDATION => {
                EventPayload::SubscriptionValidation(self.data_as()?)
            }
            eventgrid::SUBSCRIPTION_DELETED => EventPayload::SubscriptionDeleted,
            relay::APPROVAL_DECIDED => EventPayload::ApprovalDecided(self.data_as()?),
            relay::DEPLOYMENT_COMPLETED => EventPayload::DeploymentCompleted(self.data_as()?),
            _ => EventPayload::Unknown,
        })
    }

    fn data_as<T: DeserializeOwned>(&self) -> Result<T, EventError> {
        if self.data.is_null() {
            return Err(EventError::Missing("data"));
        }
        serde_path_to_error::deserialize(&self.data).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "data".to_string()
            } else {
                format!("data.{path}")
            };
            EventError::Invalid {
                field,
                message: e.into_inner().to_string(),
            }
        })
    }
}

/// `data` of an event, typed by its event type.
#[derive(Debug, Clone, PartialEq)]
pub enum EventPayload {
    /// `Microsoft.MachineLearningServices.ModelRegistered`.
    ModelRegistered(aml::ModelRegistered),
    /// `Microsoft.MachineLearningServices.ModelDeployed`.
    ModelDeployed(aml::ModelDeployed),
    /// `Microsoft.MachineLearningServices.RunCompleted`.
    RunCompleted(aml::RunCompleted),
    /// `Microsoft.MachineLearningServices.RunStatusChanged` (also carries model-monitor breaches).
    RunStatusChanged(aml::RunStatusChanged),
    /// `Microsoft.MachineLearningServices.DatasetDriftDetected` (legacy v1 monitors).
    DatasetDriftDetected(aml::DatasetDriftDetected),
    /// `Microsoft.EventGrid.SubscriptionValidationEvent`.
    SubscriptionValidation(eventgrid::SubscriptionValidation),
    /// `Microsoft.EventGrid.SubscriptionDeletedEvent`.
    SubscriptionDeleted,
    /// `MlopsRelay.ApprovalDecided`.
    ApprovalDecided(relay::ApprovalDecided),
    /// `MlopsRelay.DeploymentCompleted`.
    DeploymentCompleted(relay::DeploymentCompleted),
    /// Any other event type: recognised as such and ignored by policy, never an error.
    Unknown,
}

impl EventPayload {
    /// The event type this payload is read for (the type [`Envelope::payload`] matched it by, spelt exactly
    /// so), or `None` for [`EventPayload::Unknown`].
    pub fn event_type(&self) -> Option<&'static str> {
        Some(match self {
            EventPayload::ModelRegistered(_) => aml::MODEL_REGISTERED,
            EventPayload::ModelDeployed(_) => aml::MODEL_DEPLOYED,
            EventPayload::RunCompleted(_) => aml::RUN_COMPLETED,
            EventPayload::RunStatusChanged(_) => aml::RUN_STATUS_CHANGED,
            EventPayload::DatasetDriftDetected(_) => aml::DATASET_DRIFT_DETECTED,
            EventPayload::SubscriptionValidation(_) => eventgrid::SUBSCRIPTION_VALIDATION,
            EventPayload::SubscriptionDeleted => eventgrid::SUBSCRIPTION_DELETED,
            EventPayload::ApprovalDecided(_) => relay::APPROVAL_DECIDED,
            EventPayload::DeploymentCompleted(_) => relay::DEPLOYMENT_COMPLETED,
            EventPayload::Unknown => return None,
        })
    }
}

/// Anything that can arrive at mlops-relay, before it becomes a signal.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// An Event Grid event or a CloudEvent.
    Event(Envelope),
    /// A drift report from the drift webhook.
    Drift(drift::DriftReport),
    /// An Azure Monitor alert.
    Alert(monitor::CommonAlert),
}

impl Inbound {
    /// Classifies one JSON object by its shape: CloudEvent (`specversion`), Event Grid (`eventType`), Azure
    /// Monitor alert (`schemaId`) or drift report (`model` + `metric`).
    pub fn from_value(value: Value) -> Result<Inbound, EventError> {
        let value = decode_nested(value);
        let Value::Object(obj) = &value else {
            return Err(EventError::NotAnEvent(json_kind(&value)));
        };
        let has = |k: &str| obj.contains_key(k);
        let cloud_without_version = has("type") && has("source") && has("id");
        if has("specversion")
            || has("specVersion")
            || has("eventType")
            || has("EventType")
            || cloud_without_version
        {
            return Envelope::from_value(value).map(Inbound::Event);
        }
        if has("schemaId") {
            return typed(value).map(Inbound::Alert);
        }
        if has("model") && has("metric") {
            return typed(value).map(Inbound::Drift);
        }
        Err(EventError::Unrecognised)
    }

    /// Splits a delivery (one object or an array, as Event Grid batches) into records, each parsed on its
    /// own so that one bad event does not hide the others.
    pub fn parse_delivery(value: Value) -> Result<Vec<Result<Inbound, EventError>>, EventError> {
        match decode_nested(value) {
            Value::Array(items) => Ok(items.into_iter().map(Inbound::from_value).collect()),
            obj @ Value::Object(_) => Ok(vec![Inbound::from_value(obj)]),
            other => Err(EventError::NotAnEvent(json_kind(&other))),
        }
    }

    /// Parses a delivery from bytes.
    pub fn parse_delivery_bytes(
        body: &[u8],
    ) -> Result<Vec<Result<Inbound, EventError>>, EventError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| EventError::NotJson(e.to_string()))?;
        Inbound::parse_delivery(value)
    }
}

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, EventError> {
    serde_path_to_error::deserialize(value).map_err(|e| EventError::Invalid {
        field: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A CloudEvent's `traceparent`, kept only when it is one (W3C Trace Context, version 00:
/// `00-{32 hex}-{16 hex}-{2 hex}`). It comes from outside and is sent on as a Service Bus property: anything
/// else (a long string, a control character) could have the queue refuse the action's message.
pub fn traceparent(value: Option<String>) -> Option<String> {
    value.filter(|v| {
        let parts: Vec<&str> = v.split('-').collect();
        let hex = |s: &str, n: usize| {
            s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        parts.len() == 4
            && parts[0] == "00"
            && hex(parts[1], 32)
            && hex(parts[2], 16)
            && hex(parts[3], 2)
            && parts[1].bytes().any(|b| b != b'0')
            && parts[2].bytes().any(|b| b != b'0')
    })
}
