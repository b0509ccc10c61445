//! Strict domain types. Every inbound record becomes exactly one [`Signal`]; this is where bad input is
//! rejected, once, with a message that names the field.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::events::aml::MONITOR_BREACH_TAG;
use crate::events::{
    self, EventError, EventPayload, Inbound, drift::DriftReport, monitor::CommonAlert,
};

/// An Azure ML workspace, parsed from an event's `topic`/`source`
/// (`/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.MachineLearningServices/workspaces/{ws}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorkspaceRef {
    /// Subscription id.
    pub subscription: String,
    /// Resource group.
    pub resource_group: String,
    /// Workspace name.
    pub workspace: String,
}

impl WorkspaceRef {
    /// Parses a workspace resource id; segment names are matched case-insensitively as ARM does.
    /// Returns `None` for anything that is not a workspace id.
    pub fn parse(resource_id: &str) -> Option<WorkspaceRef> {
        // One pass over the segments: the value after the first `subscriptions`, `resourceGroups` and
        // `workspaces` segment, and a `providers/Microsoft.MachineLearningServices` pair somewhere.
        let (mut subscription, mut resource_group, mut workspace) = (None, None, None);
        let mut provider_ok = false;
        let mut previous: Option<&str> = None;
        for part in resource_id.trim_matches('/').split('/') {
            if let Some(name) = previous {
                for (slot, segment) in [
                    (&mut subscription, "subscriptions"),
                    (&mut resource_group, "resourceGroups"),
                    (&mut workspace, "workspaces"),
                ] {
                    if slot.is_none() && name.eq_ignore_ascii_case(segment) {
                        *slot = Some(part);
                    }
                }
                provider_ok |= name.eq_ignore_ascii_case("providers")
                    && part.eq_ignore_ascii_case("Microsoft.MachineLearningServices");
            }
            previous = Some(part);
        }
        if !provider_ok {
            return None;
        }
        let value = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_string);
        Some(WorkspaceRef {
            subscription: value(subscription)?,
            resource_group: value(resource_group)?,
            workspace: value(workspace)?,
        })
    }
}

/// Workspaces already parsed, by resource id, for a caller that converts many records (replay): a history names
/// a handful of workspaces millions of times, and each parse split the id and made three `String`s that every
/// signal carried. Bounded, so memory stays flat whatever the input: cleared once it holds
/// [`Workspaces::KEPT`] ids.
#[derive(Debug, Default, Clone)]
pub struct Workspaces(HashMap<String, Option<Arc<WorkspaceRef>>, foldhash::quality::RandomState>);

impl Workspaces {
    /// Resource ids remembered at most.
    pub const KEPT: usize = 1024;

    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// [`WorkspaceRef::parse`], shared with every earlier record that named the same resource id.
    pub fn parse(&mut self, resource_id: &str) -> Option<Arc<WorkspaceRef>> {
        if let Some(known) = self.0.get(resource_id) {
            return known.clone();
        }
        let parsed = WorkspaceRef::parse(resource_id).map(Arc::new);
        if self.0.len() >= Self::KEPT {
            self.0.clear();
        }
        self.0.insert(resource_id.to_string(), parsed.clone());
        parsed
    }

    /// How many resource ids are remembered.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Parses through `cache` when there is one.
fn workspace_of(cache: Option<&mut Workspaces>, resource_id: &str) -> Option<Arc<WorkspaceRef>> {
    match cache {
        Some(cache) => cache.parse(resource_id),
        None => WorkspaceRef::parse(resource_id).map(Arc::new),
    }
}

/// The kind of a signal, as named in decisions, logs and the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// A model version was registered.
    ModelRegistered,
    /// A model version is serving in an environment (with our smoke-test verdict when we deployed it).
    ModelDeployed,
    /// A run completed.
    RunCompleted,
    /// A run failed (RunStatusChanged with a failed status).
    RunFailed,
    /// A run changed to another status.
    RunStatusChanged,
    /// Drift from any source: legacy DatasetDriftDetected, monitor v2 breach, drift webhook.
    Drift,
    /// An Azure Monitor alert fired or resolved.
    InfraAlert,
    /// A policy schedule came due.
    Schedule,
    /// A person approved or rejected a promotion.
    Approval,
    /// Nothing to act on (unknown event type, subscription handshake...).
    Ignored,
}

impl SignalKind {
    /// The snake_case name used in output and in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::ModelRegistered => "model_registered",
            SignalKind::ModelDeployed => "model_deployed",
            SignalKind::RunCompleted => "run_completed",
            SignalKind::RunFailed => "run_failed",
            SignalKind::RunStatusChanged => "run_status_changed",
            SignalKind::Drift => "drift",
            SignalKind::InfraAlert => "infra_alert",
            SignalKind::Schedule => "schedule",
            SignalKind::Approval => "approval",
            SignalKind::Ignored => "ignored",
        }
    }
}

impl fmt::Display for SignalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run (job), as far as events describe it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRef {
    /// Run id (job name).
    pub run_id: String,
    /// Experiment name.
    pub experiment: Option<String>,
    /// Model the run belongs to, from the run's tags (`mlops-relay.model`, `model`, `model_name`).
    pub model: Option<String>,
    /// Run tags.
    pub tags: BTreeMap<String, String>,
}

/// Where a drift measurement came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftSource {
    /// Legacy `DatasetDriftDetected` (v1 dataset monitor).
    DatasetMonitor,
    /// Azure ML model monitoring v2: a failed monitor run tagged `azureml_modelmonitor_threshold_breached`.
    ModelMonitor,
    /// The drift webhook.
    Webhook,
}

/// Drift, normalised across its three sources (reference §3.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    /// Where it came from.
    pub source: DriftSource,
    /// Model, when the source names it; monitor-only sources are mapped to a model by the policy.
    pub model: Option<String>,
    /// Version being monitored, when known.
    pub version: Option<String>,
    /// Monitor or signal name (legacy monitor name, v2 signal name, webhook `signal`).
    pub monitor: Option<String>,
    /// Metric name, when known.
    pub metric: Option<String>,
    /// Measured value; `None` when the monitor only says "breached".
    pub value: Option<f64>,
    /// The monitor's own threshold.
    pub threshold: Option<f64>,
    /// Observation window, as sent.
    pub window: Option<(String, String)>,
}

/// Whether an infrastructure alert fired or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertCondition {
    /// The alert fired.
    Fired,
    /// The alert resolved.
    Resolved,
}

impl AlertCondition {
    /// The dedupe key of an alert's notice of this condition: `alert|{alertId}|fired` or `…|resolved`.
    pub fn key(alert_id: &str, condition: AlertCondition) -> String {
        let condition = match condition {
            AlertCondition::Fired => "fired",
            AlertCondition::Resolved => "resolved",
        };
        format!("alert|{alert_id}|{condition}")
    }
}

/// What a signal says, by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SignalBody {
    /// See [`SignalKind::ModelRegistered`].
    ModelRegistered {
        /// Model name.
        model: String,
        /// Model version.
        version: String,
        /// Model tags.
        tags: BTreeMap<String, String>,
        /// Model properties.
        properties: BTreeMap<String, String>,
    },
    /// See [`SignalKind::ModelDeployed`].
    ModelDeployed {
        /// Deployed models (`name`, `version`).
        models: Vec<(String, Option<String>)>,
        /// Environment named by our deploy worker; otherwise resolved from the workspace by the policy.
        environment: Option<String>,
        /// Service or endpoint name.
        service: Option<String>,
        /// Smoke-test verdict: `Some(true)` passed, `Some(false)` failed, `None` not run.
        smoke_test_passed: Option<bool>,
        /// Smoke-test detail.
        detail: Option<String>,
    },
    /// See [`SignalKind::RunCompleted`].
    RunCompleted {
        /// The run.
        run: RunRef,
    },
    /// See [`SignalKind::RunFailed`].
    RunFailed {
        /// The run.
        run: RunRef,
        /// Status as sent.
        status: String,
    },
    /// See [`SignalKind::RunStatusChanged`].
    RunStatusChanged {
        /// The run.
        run: RunRef,
        /// Status as sent.
        status: String,
    },
    /// See [`SignalKind::Drift`].
    Drift(Drift),
    /// See [`SignalKind::InfraAlert`].
    InfraAlert {
        /// Alert instance id (the same on fire and resolve).
        alert_id: String,
        /// Alert rule name.
        rule: String,
        /// `Sev0`..`Sev4`.
        severity: String,
        /// Fired or resolved.
        condition: AlertCondition,
        /// Resource ids.
        targets: Vec<String>,
        /// Rule description.
        description: Option<String>,
    },
    /// See [`SignalKind::Schedule`].
    Schedule {
        /// Schedule name in the policy.
        name: String,
        /// The due instant this firing stands for.
        due: DateTime<Utc>,
    },
    /// See [`SignalKind::Approval`].
    Approval {
        /// Model name.
        model: String,
        /// Model version.
        version: String,
        /// Gate's target environment.
        environment: String,
        /// Who decided.
        approver: String,
        /// `true` approve, `false` reject.
        approve: bool,
        /// Why.
        comment: Option<String>,
    },
    /// See [`SignalKind::Ignored`].
    Ignored {
        /// Why nothing will act on it.
        reason: String,
    },
}

impl SignalBody {
    /// The model version the body names, if any.
    pub fn version(&self) -> Option<&str> {
        match self {
            SignalBody::ModelRegistered { version, .. } | SignalBody::Approval { version, .. } => {
                Some(version)
            }
            SignalBody::ModelDeployed { models, .. } => {
                models.first().and_then(|(_, v)| v.as_deref())
            }
            SignalBody::Drift(d) => d.version.as_deref(),
            _ => None,
        }
    }
}

/// One normalised input to decide(): what happened, to what, when, and its identity for deduplication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// Deduplication identity. Registrations, approvals and deployment reports use a semantic key (model,
    /// version, environment...) so that the same fact delivered under two event ids is still one fact.
    pub key: String,
    /// Source event id (or a derived id for sources without one).
    pub event_id: String,
    /// Source event type (`schedule`, `drift_webhook`, `azure_monitor_alert` for non-Event Grid sources).
    /// Borrowed for the types mlops-relay reads a payload for ([`EventPayload::event_type`]): a replay makes
    /// millions of signals, and a copy of the same name for each was an allocation per event.
    pub event_type: Cow<'static, str>,
    /// Event time (receive time when the source had none).
    pub time: DateTime<Utc>,
    /// Workspace the event came from, when it came from one (shared: many signals name the same one).
    pub workspace: Option<Arc<WorkspaceRef>>,
    /// W3C trace context to carry into actions.
    pub traceparent: Option<String>,
    /// What happened.
    pub body: SignalBody,
}

/// What a signal takes from an event's envelope: the fields it keeps, and the source to read its workspace
/// and key from.
struct EnvelopeParts<'s> {
    id: String,
    event_type: Cow<'s, str>,
    source: &'s str,
    time: Option<DateTime<chrono::FixedOffset>>,
    traceparent: Option<String>,
}

/// The first field a known event cannot do without that is empty or blank. Serde takes `""` for a string:
/// a registration of model `""` would match a `*` rule and ask for approval of `:`.
fn blank_required_field(payload: &EventPayload) -> Option<&'static str> {
    let fields: &[(&'static str, &str)] = match payload {
        EventPayload::ModelRegistered(d) => &[
            ("data.modelName", &d.model_name),
            ("data.modelVersion", &d.model_version),
        ],
        EventPayload::ModelDeployed(d) => &[("data.serviceName", &d.service_name)],
        EventPayload::RunCompleted(d) => &[("data.runId", &d.run_id)],
        EventPayload::RunStatusChanged(d) => &[("data.runId", &d.run.run_id)],
        EventPayload::DatasetDriftDetected(d) => &[("data.dataDriftName", &d.data_drift_name)],
        EventPayload::ApprovalDecided(d) => &[
            ("data.model", &d.model),
            ("data.version", &d.version),
            ("data.environment", &d.environment),
            ("data.approver", &d.approver),
        ],
        EventPayload::DeploymentCompleted(d) => &[
            ("data.model", &d.model),
            ("data.version", &d.version),
            ("data.environment", &d.environment),
        ],
        EventPayload::SubscriptionValidation(_)
        | EventPayload::SubscriptionDeleted
        | EventPayload::Unknown => &[],
    };
    fields
        .iter()
        .find(|(_, value)| value.trim().is_empty())
        .map(|(field, _)| *field)
}

/// Why an inbound record could not become a signal.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignalError {
    /// The record itself is malformed.
    #[error(transparent)]
    Event(#[from] EventError),
    /// A field is present but unusable.
    #[error("field `{field}`: {message}")]
    Invalid {
        /// Field path.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl Signal {
    /// The signal's kind.
    pub fn kind(&self) -> SignalKind {
        match &self.body {
            SignalBody::ModelRegistered { .. } => SignalKind::ModelRegistered,
            SignalBody::ModelDeployed { .. } => SignalKind::ModelDeployed,
            SignalBody::RunCompleted { .. } => SignalKind::RunCompleted,
            SignalBody::RunFailed { .. } => SignalKind::RunFailed,
            SignalBody::RunStatusChanged { .. } => SignalKind::RunStatusChanged,
            SignalBody::Drift(_) => SignalKind::Drift,
            SignalBody::InfraAlert { .. } => SignalKind::InfraAlert,
            SignalBody::Schedule { .. } => SignalKind::Schedule,
            SignalBody::Approval { .. } => SignalKind::Approval,
            SignalBody::Ignored { .. } => SignalKind::Ignored,
        }
    }

    /// The model the signal names directly, if any (drift from a monitor is resolved by the policy).
    pub fn model(&self) -> Option<&str> {
        match &self.body {
            SignalBody::ModelRegistered { model, .. } | SignalBody::Approval { model, .. } => {
                Some(model)
            }
            SignalBody::ModelDeployed { models, .. } => models.first().map(|(m, _)| m.as_str()),
            SignalBody::RunCompleted { run }
            | SignalBody::RunFailed { run, .. }
            | SignalBody::RunStatusChanged { run, .. } => run.model.as_deref(),
            SignalBody::Drift(d) => d.model.as_deref(),
            SignalBody::InfraAlert { .. }
            | SignalBody::Schedule { .. }
            | SignalBody::Ignored { .. } => None,
        }
    }

    /// The model version the signal names, if any.
    pub fn version(&self) -> Option<&str> {
        self.body.version()
    }

    /// A schedule firing: its identity is the schedule name and the due instant, so duplicate timer ticks
    /// for the same instant are one signal.
    pub fn schedule(name: &str, due: DateTime<Utc>) -> Signal {
        let due_text = due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        Signal {
            key: format!("schedule|{name}|{due_text}"),
            event_id: format!("schedule:{name}@{due_text}"),
            event_type: "schedule".into(),
            time: due,
            workspace: None,
            traceparent: None,
            body: SignalBody::Schedule {
                name: name.to_string(),
                due,
            },
        }
    }

    /// Normalises an inbound record. `received_at` stands in for the event time when the source sent none;
    /// it is passed in (not read from a clock) so that this stays pure.
    pub fn from_inbound(
        inbound: Inbound,
        received_at: DateTime<Utc>,
    ) -> Result<Signal, SignalError> {
        Signal::from_inbound_cached(inbound, received_at, None)
    }

    /// [`Signal::from_inbound`], parsing workspaces through `workspaces` when given.
    pub fn from_inbound_cached(
        inbound: Inbound,
        received_at: DateTime<Utc>,
        workspaces: Option<&mut Workspaces>,
    ) -> Result<Signal, SignalError> {
        match inbound {
            Inbound::Event(envelope) => Signal::from_envelope(envelope, received_at, workspaces),
            Inbound::Drift(report) => Signal::from_drift_report(report, received_at),
            Inbound::Alert(alert) => Signal::from_alert(alert, received_at, workspaces),
        }
    }

    /// Normalises a record read by the fast path ([`events::fast`]): the same signal as
    /// [`Signal::from_inbound`] gives for the lenient reading of the same text.
    pub fn from_fast(
        record: events::fast::FastRecord,
        received_at: DateTime<Utc>,
    ) -> Result<Signal, SignalError> {
        Signal::from_fast_cached(record, received_at, None)
    }

    /// [`Signal::from_fast`], parsing workspaces through `workspaces` when given.
    pub fn from_fast_cached(
        record: events::fast::FastRecord,
        received_at: DateTime<Utc>,
        workspaces: Option<&mut Workspaces>,
    ) -> Result<Signal, SignalError> {
        match record {
            events::fast::FastRecord::Event(env, payload) => {
                let parts = EnvelopeParts {
                    id: env.id,
                    event_type: env.event_type,
                    source: &env.source,
                    time: env.time,
                    traceparent: env.traceparent,
                };
                Signal::from_envelope_payload(parts, payload, received_at, workspaces)
            }
            events::fast::FastRecord::Drift(report) => {
                Signal::from_drift_report(report, received_at)
            }
            events::fast::FastRecord::Alert(alert) => {
                Signal::from_alert(alert, received_at, workspaces)
            }
        }
    }

    fn from_envelope(
        env: events::Envelope,
        received_at: DateTime<Utc>,
        workspaces: Option<&mut Workspaces>,
    ) -> Result<Signal, SignalError> {
        let payload = env.payload()?;
        let parts = EnvelopeParts {
            id: env.id,
            event_type: Cow::Owned(env.event_type),
            source: &env.source,
            time: env.time,
            traceparent: env.traceparent,
        };
        Signal::from_envelope_payload(parts, payload, received_at, workspaces)
    }

    fn from_envelope_payload(
        env: EnvelopeParts<'_>,
        payload: EventPayload,
        received_at: DateTime<Utc>,
        workspaces: Option<&mut Workspaces>,
    ) -> Result<Signal, SignalError> {
        if let Some(field) = blank_required_field(&payload) {
            return Err(SignalError::Invalid {
                field: field.into(),
                message: "must not be empty".into(),
            });
        }
        let workspace = workspace_of(workspaces, env.source);
        // The payload was matched by its type, spelt exactly so: a known type is kept as its `'static` name.
        let known_type = payload.event_type();
        let time = env
            .time
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(received_at);
        // `{event_type}|{source in lower case}|{id}`, built only for the kinds keyed by it.
        let keyed_by = |id: &str| {
            let mut key =
                String::with_capacity(env.event_type.len() + env.source.len() + id.len() + 2);
            key.push_str(&env.event_type);
            key.push('|');
            let from = key.len();
            key.push_str(env.source);
            key[from..].make_ascii_lowercase();
            key.push('|');
            key.push_str(id);
            key
        };
        let event_key = || keyed_by(&env.id);
        let (key, body) = match payload {
            EventPayload::ModelRegistered(d) => (
                format!(
                    "model_registered|{}|{}:{}",
                    workspace
                        .as_ref()
                        .map(|w| w.workspace.to_ascii_lowercase())
                        .unwrap_or_default(),
                    d.model_name,
                    d.model_version
                ),
                SignalBody::ModelRegistered {
                    model: d.model_name,
                    version: d.model_version,
                    tags: d.model_tags,
                    properties: d.model_properties,
                },
            ),
            EventPayload::ModelDeployed(d) => {
                let models = d.models();
                (
                    event_key(),
                    SignalBody::ModelDeployed {
                        models,
                        environment: None,
                        service: Some(d.service_name),
                        smoke_test_passed: None,
                        detail: None,
                    },
                )
            }
            EventPayload::RunCompleted(d) => {
                (event_key(), SignalBody::RunCompleted { run: run_ref(d) })
            }
            EventPayload::RunStatusChanged(d) => {
                let status = d.run_status.clone();
                if let Some(breach) = d.run.run_tags.get(MONITOR_BREACH_TAG) {
                    // Model monitoring v2 marks a breached monitor run as failed and names the signal in the tag.
                    let monitor = breach.split_whitespace().next().map(str::to_string);
                    let run = run_ref(d.run);
                    let drift = Drift {
                        source: DriftSource::ModelMonitor,
                        model: run.model.clone(),
                        version: None,
                        monitor,
                        metric: None,
                        value: None,
                        threshold: None,
                        window: None,
                    };
                    // Keyed by the run, not the event: each status change of a breached run (Finalizing,
                    // Failed, …) may carry the tag, and the breach is one fact.
                    (
                        keyed_by(&format!("breach:{}", run.run_id)),
                        SignalBody::Drift(drift),
                    )
                } else if is_failed(&status) {
                    (
                        event_key(),
                        SignalBody::RunFailed {
                            run: run_ref(d.run),
                            status,
                        },
                    )
                } else {
                    (
                        event_key(),
                        SignalBody::RunStatusChanged {
                            run: run_ref(d.run),
                            status,
                        },
                    )
                }
            }
            EventPayload::DatasetDriftDetected(d) => {
                let window = match (d.start_time, d.end_time) {
                    (Some(s), Some(e)) => Some((s, e)),
                    _ => None,
                };
                let drift = Drift {
                    source: DriftSource::DatasetMonitor,
                    model: None,
                    version: None,
                    monitor: Some(d.data_drift_name),
                    metric: Some("drift_coefficient".into()),
                    value: d.drift_coefficient,
                    threshold: None,
                    window,
                };
                (event_key(), SignalBody::Drift(drift))
            }
            EventPayload::SubscriptionValidation(_) => (
                event_key(),
                SignalBody::Ignored {
                    reason: "Event Grid subscription validation handshake".into(),
                },
            ),
            EventPayload::SubscriptionDeleted => (
                event_key(),
                SignalBody::Ignored {
                    reason: "Event Grid subscription deleted".into(),
                },
            ),
            EventPayload::ApprovalDecided(d) => {
                let approve = match d.decision.to_ascii_lowercase().as_str() {
                    "approve" | "approved" => true,
                    "reject" | "rejected" => false,
                    other => {
                        return Err(SignalError::Invalid {
                            field: "data.decision".into(),
                            message: format!("expected `approve` or `reject`, found `{other}`"),
                        });
                    }
                };
                let key = format!(
                    "approval|{}:{}|{}|{}|{}",
                    d.model,
                    d.version,
                    d.environment,
                    d.approver.to_ascii_lowercase(),
                    if approve { "approve" } else { "reject" }
                );
                let body = SignalBody::Approval {
                    model: d.model,
                    version: d.version,
                    environment: d.environment,
                    approver: d.approver,
                    approve,
                    comment: d.comment,
                };
                (key, body)
            }
            EventPayload::DeploymentCompleted(d) => {
                let passed = match d.smoke_test.to_ascii_lowercase().as_str() {
                    "passed" => Some(true),
                    "failed" => Some(false),
                    "skipped" => None,
                    other => {
                        return Err(SignalError::Invalid {
                            field: "data.smokeTest".into(),
                            message: format!(
                                "expected `passed`, `failed` or `skipped`, found `{other}`"
                            ),
                        });
                    }
                };
                let key = format!(
                    "deployed|{}:{}|{}|{}",
                    d.model,
                    d.version,
                    d.environment,
                    d.smoke_test.to_ascii_lowercase()
                );
                let body = SignalBody::ModelDeployed {
                    models: vec![(d.model, Some(d.version))],
                    environment: Some(d.environment),
                    service: d.endpoint,
                    smoke_test_passed: passed,
                    detail: d.detail,
                };
                (key, body)
            }
            EventPayload::Unknown => (
                event_key(),
                SignalBody::Ignored {
                    reason: format!(
                        "event type `{}` is not one mlops-relay acts on",
                        env.event_type
                    ),
                },
            ),
        };
        Ok(Signal {
            key,
            event_id: env.id,
            event_type: match known_type {
                Some(known) => Cow::Borrowed(known),
                None => Cow::Owned(env.event_type.into_owned()),
            },
            time,
            workspace,
            traceparent: env.traceparent,
            body,
        })
    }

    fn from_drift_report(
        mut r: DriftReport,
        received_at: DateTime<Utc>,
    ) -> Result<Signal, SignalError> {
        if r.model.trim().is_empty() {
            return Err(SignalError::Invalid {
                field: "model".into(),
                message: "must not be empty".into(),
            });
        }
        let time = match &r.time {
            Some(t) => events::parse_time(t, "time")?.with_timezone(&Utc),
            None => received_at,
        };
        // Moved out of the report, not copied: the report is done with once the identity is known.
        let event_id = match r.id.take() {
            Some(id) => id,
            // No sender id: the content is the identity, so an identical redelivery is still a duplicate.
            None => content_id(&serde_json::to_string(&r).unwrap_or_default()),
        };
        let window = r.window.take().and_then(|w| Some((w.start?, w.end?)));
        Ok(Signal {
            key: format!(
                "drift_webhook|{}|{event_id}",
                r.source.as_deref().unwrap_or("webhook")
            ),
            event_id,
            event_type: "drift_webhook".into(),
            time,
            workspace: None,
            traceparent: None,
            body: SignalBody::Drift(Drift {
                source: DriftSource::Webhook,
                model: Some(r.model),
                version: r.version,
                monitor: r.signal,
                metric: Some(r.metric),
                value: r.value,
                threshold: r.threshold,
                window,
            }),
        })
    }

    fn from_alert(
        a: CommonAlert,
        received_at: DateTime<Utc>,
        mut workspaces: Option<&mut Workspaces>,
    ) -> Result<Signal, SignalError> {
        let e = a.data.essentials;
        let condition = match e.monitor_condition.to_ascii_lowercase().as_str() {
            "fired" => AlertCondition::Fired,
            "resolved" => AlertCondition::Resolved,
            other => {
                return Err(SignalError::Invalid {
                    field: "data.essentials.monitorCondition".into(),
                    message: format!("expected `Fired` or `Resolved`, found `{other}`"),
                });
            }
        };
        let stamp = match condition {
            AlertCondition::Fired => e.fired_date_time.as_deref(),
            AlertCondition::Resolved => e
                .resolved_date_time
                .as_deref()
                .or(e.fired_date_time.as_deref()),
        };
        let time = match stamp {
            Some(t) => {
                let field = match condition {
                    AlertCondition::Resolved if e.resolved_date_time.is_some() => {
                        "data.essentials.resolvedDateTime"
                    }
                    _ => "data.essentials.firedDateTime",
                };
                events::parse_time(t, field)?.with_timezone(&Utc)
            }
            None => received_at,
        };
        let workspace = e
            .alert_target_ids
            .iter()
            .find_map(|t| workspace_of(workspaces.as_deref_mut(), t));
        Ok(Signal {
            key: AlertCondition::key(&e.alert_id, condition),
            event_id: e.alert_id.clone(),
            event_type: "azure_monitor_alert".into(),
            time,
            workspace,
            traceparent: None,
            body: SignalBody::InfraAlert {
                alert_id: e.alert_id,
                rule: e.alert_rule,
                severity: e.severity,
                condition,
                targets: e.alert_target_ids,
                description: e.description,
            },
        })
    }
}

fn is_failed(status: &str) -> bool {
    matches!(
        status.to_ascii_lowercase().as_str(),
        "failed" | "notresponding"
    )
}

fn run_ref(d: events::aml::RunCompleted) -> RunRef {
    let model = ["mlops-relay.model", "model", "model_name"]
        .iter()
        .find_map(|k| d.run_tags.get(*k))
        .cloned();
    RunRef {
        run_id: d.run_id,
        experiment: d.experiment_name,
        model,
        tags: d.run_tags,
    }
}

/// A short, stable id derived from content (SHA-256, 128 bits in hex).
pub fn content_id(content: &str) -> String {
    let digest = Sha256::digest(content.as_bytes());
    hex32(&digest)
}

/// The first 16 bytes of a digest as lowercase hex.
pub fn hex32(digest: &[u8]) -> String {
    let mut s = String::with_capacity(32);
    push_hex32(&mut s, digest);
    s
}

/// Appends the first 16 bytes of a digest as lowercase hex (a table lookup: ids are made for every decision).
pub(crate) fn push_hex32(s: &mut String, digest: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in digest.iter().take(16) {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0x0f)] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspaces_are_parsed_once_per_resource_id_and_the_cache_stays_bounded() {
        let id = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/mlw-dev";
        let mut cache = Workspaces::new();
        let first = cache.parse(id).expect("a workspace");
        assert_eq!(Some(&*first), WorkspaceRef::parse(id).as_ref());
        assert!(
            Arc::ptr_eq(&first, &cache.parse(id).unwrap()),
            "shared, not parsed again"
        );
        assert_eq!(cache.parse("/subscriptions/s/resourceGroups/rg"), None);
        assert_eq!(cache.parse("/subscriptions/s/resourceGroups/rg"), None);
        assert_eq!(cache.len(), 2);
        for i in 0..3 * Workspaces::KEPT {
            let other = cache.parse(&format!("{id}-{i}")).unwrap();
            assert_eq!(other.workspace, format!("mlw-dev-{i}"));
            assert!(cache.len() <= Workspaces::KEPT);
        }
    }

    #[test]
    fn workspace_is_parsed_from_topic_in_any_casing() {
        let ws = WorkspaceRef::parse(
            "/subscriptions/a5fe/resourcegroups/jenns/providers/microsoft.machinelearningservices/workspaces/jenns-canary",
        )
        .unwrap();
        assert_eq!(ws.subscription, "a5fe");
        assert_eq!(ws.resource_group, "jenns");
        assert_eq!(ws.workspace, "jenns-canary");
    }

    /// The earlier, allocating reading of a workspace id, kept as the reference for the one-pass reader.
    fn reference_parse(resource_id: &str) -> Option<WorkspaceRef> {
        let parts: Vec<&str> = resource_id.trim_matches('/').split('/').collect();
        let find = |name: &str| {
            parts
                .windows(2)
                .find(|w| w[0].eq_ignore_ascii_case(name))
                .map(|w| w[1].to_string())
                .filter(|v| !v.is_empty())
        };
        let provider_ok = parts.windows(2).any(|w| {
            w[0].eq_ignore_ascii_case("providers")
                && w[1].eq_ignore_ascii_case("Microsoft.MachineLearningServices")
        });
        if !provider_ok {
            return None;
        }
        Some(WorkspaceRef {
            subscription: find("subscriptions")?,
            resource_group: find("resourceGroups")?,
            workspace: find("workspaces")?,
        })
    }

    #[test]
    fn workspace_ids_read_as_the_reference_reads_them() {
        let ml = "providers/Microsoft.MachineLearningServices";
        for id in [
            format!("/subscriptions/s/resourceGroups/g/{ml}/workspaces/w"),
            format!("subscriptions/s/resourcegroups/g/{ml}/WORKSPACES/w/onlineEndpoints/e"),
            format!("/subscriptions//resourceGroups/g/{ml}/workspaces/w"),
            format!("/subscriptions/s/resourceGroups/g/{ml}/workspaces/"),
            format!("/subscriptions/s/resourceGroups/g/{ml}/workspaces"),
            format!("/subscriptions/a/subscriptions/b/resourceGroups/g/{ml}/workspaces/w"),
            format!("/subscriptions/s/resourceGroups/g/{ml}/workspaces/w/workspaces/v"),
            format!("/workspaces/w/{ml}/subscriptions/s/resourceGroups/g"),
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/workspaces/w".into(),
            format!("//subscriptions/s/resourceGroups/g/{ml}/workspaces/w//"),
            format!("/subscriptions/s/resourceGroups/g/providers/{ml}/workspaces/w"),
            "providers".into(),
            String::new(),
            "/".into(),
        ] {
            assert_eq!(WorkspaceRef::parse(&id), reference_parse(&id), "{id}");
        }
    }

    #[test]
    fn non_workspace_ids_are_not_workspaces() {
        assert!(
            WorkspaceRef::parse(
                "/subscriptions/a/resourceGroups/b/providers/Microsoft.Storage/storageAccounts/c"
            )
            .is_none()
        );
        assert!(WorkspaceRef::parse("").is_none());
    }
}
