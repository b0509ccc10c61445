//! Builders for signals and a small policy, so decision tests read as the scenario they pin.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use mlops_relay::domain::{
    AlertCondition, Drift, DriftSource, RunRef, Signal, SignalBody, WorkspaceRef,
};
use mlops_relay::policy::{Decision, MemoryState, Policy, decide};

/// A compact policy: dev → staging → prod, staging gate 1-of-1 with champion on auc, prod gate 2-of-3,
/// drift retrain ≥ 0.3 / page ≥ 0.7 / 6h cooldown, fleet budget 3 per 24h with a storm page after 2 held.
pub const POLICY: &str = r#"
promotion = ["dev", "staging", "prod"]
[environments.dev]
workspace = "mlw-dev"
[environments.staging]
workspace = "mlw-staging"
[environments.prod]
workspace = "mlw-prod"
[registry]
name = "mlr-shared"
[budget]
max_retrains = 3
window = "24h"
storm_after = 2
storm_route = "oncall"
[routes.team]
kind = "teams"
url_setting = "TEAMS_URL"
[routes.platform]
kind = "slack"
url_setting = "SLACK_URL"
[routes.oncall]
kind = "pagerduty"
routing_key_setting = "PD_KEY"
[[monitor]]
name = "myDriftMonitor"
model = "sklearn_regression_model"
[[monitor]]
name = "fraud_monitor"
model = "fraud"
[infra]
route = "oncall"
min_severity = "Sev2"
[[rule]]
name = "default"
models = ["*"]
  [rule.gates.staging]
  approvers = ["lead@x.io", "owner@x.io"]
  required = 1
  expires = "72h"
  champion = { metric = "auc" }
  [rule.gates.prod]
  approvers = ["sw1@x.io", "sw2@x.io", "sw3@x.io"]
  required = 2
  [rule.deploy.staging]
  endpoint = "{model}-staging"
  smoke_test = { request = '{"data": [[1, 2]]}' }
  [rule.deploy.prod]
  endpoint = "{model}"
  [rule.drift]
  retrain_at = 0.3
  page_at = 0.7
  on_breach = ["retrain", "page"]
  cooldown = "6h"
  [rule.retrain]
  pipeline = "azureml://registries/mlr-shared/components/train/versions/1"
  [rule.notify]
  approvals = "team"
  failures = "team"
  pages = "oncall"
  deployments = "platform"
[[schedule]]
name = "weekly"
cron = "0 0 3 * * Sun"
model = "fraud"
"#;

pub fn policy() -> Policy {
    Policy::parse(POLICY).unwrap_or_else(|e| panic!("test policy is invalid: {e:?}"))
}

/// 2026-11-02 (a Monday) at `h:m` UTC.
pub fn t(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap()
        + TimeDelta::hours(h as i64)
        + TimeDelta::minutes(m as i64)
}

pub fn ws(name: &str) -> Arc<WorkspaceRef> {
    Arc::new(WorkspaceRef {
        subscription: "sub".into(),
        resource_group: "rg".into(),
        workspace: name.into(),
    })
}

pub fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn signal(
    key: String,
    event_id: &str,
    time: DateTime<Utc>,
    workspace: Option<Arc<WorkspaceRef>>,
    body: SignalBody,
) -> Signal {
    Signal {
        key,
        event_id: event_id.into(),
        event_type: "test".into(),
        time,
        workspace,
        traceparent: None,
        body,
    }
}

pub fn registered(
    model: &str,
    version: &str,
    tag_pairs: &[(&str, &str)],
    workspace: &str,
    time: DateTime<Utc>,
) -> Signal {
    signal(
        format!("model_registered|{workspace}|{model}:{version}"),
        &format!("reg-{model}-{version}"),
        time,
        Some(ws(workspace)),
        SignalBody::ModelRegistered {
            model: model.into(),
            version: version.into(),
            tags: tags(tag_pairs),
            properties: BTreeMap::new(),
        },
    )
}

pub fn drift(event_id: &str, model: &str, value: Option<f64>, time: DateTime<Utc>) -> Signal {
    signal(
        format!("drift|{event_id}"),
        event_id,
        time,
        None,
        SignalBody::Drift(Drift {
            source: DriftSource::Webhook,
            model: Some(model.into()),
            version: None,
            monitor: Some(format!("{model}_psi")),
            metric: Some("psi".into()),
            value,
            threshold: None,
            window: None,
        }),
    )
}

pub fn monitor_drift(
    event_id: &str,
    monitor: &str,
    value: Option<f64>,
    time: DateTime<Utc>,
) -> Signal {
    signal(
        format!("drift|{event_id}"),
        event_id,
        time,
        None,
        SignalBody::Drift(Drift {
            source: DriftSource::DatasetMonitor,
            model: None,
            version: None,
            monitor: Some(monitor.into()),
            metric: None,
            value,
            threshold: None,
            window: None,
        }),
    )
}

pub fn approval(
    model: &str,
    version: &str,
    env: &str,
    approver: &str,
    approve: bool,
    time: DateTime<Utc>,
) -> Signal {
    signal(
        format!("approval|{model}:{version}|{env}|{approver}|{approve}"),
        &format!("appr-{approver}-{env}"),
        time,
        None,
        SignalBody::Approval {
            model: model.into(),
            version: version.into(),
            environment: env.into(),
            approver: approver.into(),
            approve,
            comment: None,
        },
    )
}

pub fn deployed(
    model: &str,
    version: &str,
    env: &str,
    smoke: Option<bool>,
    time: DateTime<Utc>,
) -> Signal {
    signal(
        format!("deployed|{model}:{version}|{env}|{smoke:?}"),
        &format!("dep-{model}-{version}-{env}"),
        time,
        None,
        SignalBody::ModelDeployed {
            models: vec![(model.into(), Some(version.into()))],
            environment: Some(env.into()),
            service: None,
            smoke_test_passed: smoke,
            detail: None,
        },
    )
}

pub fn run_failed(run_id: &str, model: Option<&str>, time: DateTime<Utc>) -> Signal {
    let mut run_tags = BTreeMap::new();
    if let Some(m) = model {
        run_tags.insert("mlops-relay.model".to_string(), m.to_string());
    }
    signal(
        format!("run|{run_id}"),
        run_id,
        time,
        Some(ws("mlw-dev")),
        SignalBody::RunFailed {
            run: RunRef {
                run_id: run_id.into(),
                experiment: Some("exp".into()),
                model: model.map(str::to_string),
                tags: run_tags,
            },
            status: "Failed".into(),
        },
    )
}

pub fn alert(id: &str, severity: &str, condition: AlertCondition, time: DateTime<Utc>) -> Signal {
    signal(
        AlertCondition::key(id, condition),
        id,
        time,
        None,
        SignalBody::InfraAlert {
            alert_id: id.into(),
            rule: "latency".into(),
            severity: severity.into(),
            condition,
            targets: vec!["/subscriptions/s/resourceGroups/r/providers/X/y/endpoint-1".into()],
            description: None,
        },
    )
}

/// decide() plus the in-memory fold, as replay runs them.
pub struct Sim {
    pub policy: Policy,
    pub state: MemoryState,
}

impl Sim {
    pub fn new() -> Self {
        Sim {
            policy: policy(),
            state: MemoryState::new(),
        }
    }

    pub fn with(policy: Policy) -> Self {
        Sim {
            policy,
            state: MemoryState::new(),
        }
    }

    pub fn run(&mut self, signal: &Signal) -> Decision {
        self.run_at(signal, signal.time)
    }

    pub fn run_at(&mut self, signal: &Signal, now: DateTime<Utc>) -> Decision {
        let d = decide(&self.policy, signal, &self.state, now);
        self.state.apply(
            &d,
            self.policy.dedupe_window,
            self.policy.budget.as_ref().map(|b| b.window),
        );
        d
    }
}

pub fn kinds(d: &Decision) -> Vec<&'static str> {
    d.actions.iter().map(|a| a.kind.as_str()).collect()
}

pub fn held(d: &Decision) -> Vec<String> {
    d.suppressed
        .iter()
        .map(|s| format!("{}: {}", s.rule, s.reason))
        .collect()
}

/// The ledger entry of one of a decision's actions, as the executor records it.
pub fn ledger_entry(
    d: &Decision,
    a: &mlops_relay::policy::Action,
    traceparent: Option<&str>,
) -> mlops_relay::ports::LedgerEntry {
    mlops_relay::ports::LedgerEntry {
        action: a.clone(),
        event_id: d.signal.event_id.clone(),
        signal_key: d.signal.key.clone(),
        decision_id: d.decision_id(),
        traceparent: traceparent.map(str::to_string),
        status: mlops_relay::ports::ActionStatus::Recorded,
        recorded_at: d.at,
    }
}

/// An Entra credential that hands out a fixed ARM token (for stand-ins of Azure ML).
#[derive(Debug)]
pub struct FixedArmToken;

#[async_trait::async_trait]
impl azure_core::credentials::TokenCredential for FixedArmToken {
    async fn get_token(
        &self,
        scopes: &[&str],
        _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        assert_eq!(scopes, ["https://management.azure.com/.default"]);
        Ok(azure_core::credentials::AccessToken::new(
            "arm-token",
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}
