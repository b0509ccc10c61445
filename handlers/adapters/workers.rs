//! The live worker: carries out queue messages for real where the policy's routes are configured (their app
//! settings hold a URL or routing key), and falls back to recording a dry run where they are not, so local
//! mode calls exactly the endpoints a team has set up and nothing else.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::adapters::dry_run::{DryRunWorker, Prepared, notification};
use crate::approvals::Config;
use crate::azureml::{self, Workspace};
use crate::notify;
use crate::policy::spec::RouteKind;
use crate::policy::{ActionParams, Policy};
use crate::ports::{Effect, LedgerEntry, PortError, Worker};

/// Looks up an app setting (the process environment in production; a map in tests).
pub type Settings = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Sends notifications over configured routes and calls Azure ML when it is configured; everything else
/// is recorded as a dry run.
pub struct LiveWorker {
    policy: Arc<Policy>,
    approvals: Arc<Config>,
    settings: Settings,
    // Built on first use: loading the TLS roots costs ~10 ms that `GET /` readiness should not wait for.
    http: std::sync::OnceLock<reqwest::Client>,
    dry: DryRunWorker,
    pagerduty_url: String,
    azureml: Option<AzureMl>,
}

/// Azure ML access for retrain and deploy actions.
pub struct AzureMl {
    /// The control-plane client.
    pub client: azureml::client::Client,
    /// Subscription for workspaces whose environment in the policy names none.
    pub subscription: Option<String>,
    /// Resource group for workspaces whose environment in the policy names none.
    pub resource_group: Option<String>,
    /// Workspaces known by their resource ids (`RELAY_AZUREML_WORKSPACE_IDS`, set by the deployment): where
    /// a workspace the policy names lives when its environment does not say.
    pub workspaces: Vec<Workspace>,
}

impl AzureMl {
    /// Parses `RELAY_AZUREML_WORKSPACE_IDS`: workspace resource ids separated by commas (or whitespace).
    pub fn parse_workspace_ids(text: &str) -> Result<Vec<Workspace>, String> {
        text.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|id| !id.is_empty())
            .map(Workspace::from_id)
            .collect()
    }
}

impl LiveWorker {
    /// A worker reading route secrets through `settings`.
    pub fn new(
        policy: Arc<Policy>,
        approvals: Arc<Config>,
        settings: Settings,
    ) -> Result<Self, PortError> {
        let http = std::sync::OnceLock::new();
        let dry = DryRunWorker::new(policy.clone(), approvals.clone());
        Ok(LiveWorker {
            policy,
            approvals,
            settings,
            http,
            dry,
            pagerduty_url: notify::PAGERDUTY_URL.to_string(),
            azureml: None,
        })
    }

    fn http(&self) -> Result<&reqwest::Client, PortError> {
        if let Some(c) = self.http.get() {
            return Ok(c);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| PortError::Permanent(format!("http client: {e}")))?;
        // A concurrent first use may have set it meanwhile; either client is fine.
        Ok(self.http.get_or_init(|| client))
    }

    /// Sends PagerDuty events elsewhere (an EU service region, or a stand-in in tests).
    pub fn with_pagerduty_url(mut self, url: &str) -> Self {
        self.pagerduty_url = url.to_string();
        self
    }

    /// Carries out retrain and deploy actions against Azure ML.
    pub fn with_azureml(mut self, azureml: AzureMl) -> Self {
        self.azureml = Some(azureml);
        self
    }

    /// Why the policy's environments whose workspace cannot be placed in ARM (no subscription or resource
    /// group from the policy, `RELAY_AZUREML_WORKSPACE_IDS` or the defaults) are so: their retrain and deploy
    /// actions would be dead-lettered. Empty without Azure ML.
    pub fn unplaced_environments(&self) -> Vec<String> {
        let Some(aml) = &self.azureml else {
            return Vec::new();
        };
        self.policy
            .spec
            .environments
            .iter()
            .filter_map(|(env, spec)| self.workspace(aml, env, &spec.workspace).err())
            .map(|e| e.to_string())
            .collect()
    }

    fn workspace(
        &self,
        aml: &AzureMl,
        environment: &str,
        name: &str,
    ) -> Result<Workspace, PortError> {
        let spec = self.policy.spec.environments.get(environment);
        let (sub, group) = (
            spec.and_then(|e| e.subscription.clone()),
            spec.and_then(|e| e.resource_group.clone()),
        );
        // The policy's environment first. Where it names neither, the workspace's resource id gives both,
        // when exactly one listed workspace has the name (two in different groups would be a guess); then the
        // defaults. Never a subscription from one source with a resource group from another id.
        let matching: Vec<&Workspace> = aml
            .workspaces
            .iter()
            .filter(|w| w.name.eq_ignore_ascii_case(name))
            .collect();
        if sub.is_none() && group.is_none() && matching.len() > 1 {
            return Err(PortError::Permanent(format!(
                "workspace {name} ({environment}): RELAY_AZUREML_WORKSPACE_IDS lists {} workspaces of that name; set `subscription` and `resource_group` for the environment in the policy",
                matching.len()
            )));
        }
        let known = matching
            .first()
            .filter(|_| sub.is_none() && group.is_none());
        let subscription = sub
            .or_else(|| known.map(|w| w.subscription.clone()))
            .or_else(|| aml.subscription.clone());
        let resource_group = group
            .or_else(|| known.map(|w| w.resource_group.clone()))
            .or_else(|| aml.resource_group.clone());
        match (subscription, resource_group) {
            (Some(subscription), Some(resource_group)) => Ok(Workspace {
                subscription,
                resource_group,
                name: name.to_string(),
            }),
            _ => Err(PortError::Permanent(format!(
                "workspace {name} ({environment}): set `subscription` and `resource_group` for the environment in the policy, or list the workspace's resource id in RELAY_AZUREML_WORKSPACE_IDS, or set RELAY_AZUREML_SUBSCRIPTION_ID and RELAY_AZUREML_RESOURCE_GROUP"
            ))),
        }
    }

    async fn retrain(
        &self,
        aml: &AzureMl,
        entry: &LedgerEntry,
        now: DateTime<Utc>,
    ) -> Result<Effect, PortError> {
        let ActionParams::Retrain {
            environment,
            workspace,
            ..
        } = &entry.action.params
        else {
            return Err(PortError::Permanent("not a retrain".into()));
        };
        let ws = self.workspace(aml, environment, workspace)?;
        let request = azureml::submit_job(entry, &ws).map_err(PortError::Permanent)?;
        let name = azureml::job_name(entry.action.action_id.as_str());
        let (response, again) = match aml.client.call(&request).await {
            Ok(r) => (r, false),
            // A redelivery after an earlier submit got through (its answer lost, or the process stopped
            // before the effect was recorded): Azure ML refuses to PUT a submitted job again ("a job with
            // this name already exists", 400, or 409 while it starts). The name is this action's, so a job
            // there is this one, whatever the refusal said.
            Err(refused) => {
                let get = azureml::ArmRequest {
                    method: "GET",
                    path: request.path.clone(),
                    body: None,
                };
                match aml.client.call(&get).await {
                    Ok(existing) => (existing, true),
                    Err(_) => return Err(refused),
                }
            }
        };
        let status = response.body["properties"]["status"]
            .as_str()
            .unwrap_or("submitted")
            .to_string();
        let already = if again { " already submitted" } else { "" };
        Ok(effect(
            entry,
            json!({ "arm": request }),
            format!("job {name} in {}{already} ({status})", ws.name),
            now,
            Vec::new(),
        ))
    }

    /// A deployment within the client's action budget: a deployment PUT and a traffic shift may each wait up
    /// to `poll_timeout` on their operation, which together would outlast the invocation. Past the budget the
    /// message is redelivered (Transient) and the deployment PUT, being idempotent, picks the operation up.
    async fn deploy(
        &self,
        aml: &AzureMl,
        entry: &LedgerEntry,
        now: DateTime<Utc>,
    ) -> Result<Effect, PortError> {
        let budget = aml.client.action_budget;
        tokio::time::timeout(budget, self.deploy_steps(aml, entry, now))
            .await
            .unwrap_or_else(|_| {
                Err(PortError::Transient(format!(
                    "deployment {} not finished within {budget:?}; carried on when the message is redelivered",
                    entry.action.action_id
                )))
            })
    }

    async fn deploy_steps(
        &self,
        aml: &AzureMl,
        entry: &LedgerEntry,
        now: DateTime<Utc>,
    ) -> Result<Effect, PortError> {
        let ActionParams::Deploy {
            environment,
            workspace,
            endpoint,
            deployment,
            smoke_test,
            ..
        } = &entry.action.params
        else {
            return Err(PortError::Permanent("not a deployment".into()));
        };
        let ws = self.workspace(aml, environment, workspace)?;
        let current = aml
            .client
            .call(&azureml::get_endpoint(&ws, endpoint))
            .await?
            .body;
        let location = current["location"].as_str().unwrap_or_default().to_string();
        let put = azureml::deploy(entry, &ws, &location).map_err(PortError::Permanent)?;
        aml.client.put_and_wait(&put).await?;
        // The smoke test scores the new deployment directly (azureml-model-deployment header) before any
        // traffic moves: a failing version never serves, so traffic stays where it was.
        let (verdict, detail) = match smoke_test {
            None => ("skipped", "no smoke test configured".to_string()),
            Some(spec) => {
                let auth_mode = current["properties"]["authMode"].as_str().unwrap_or("Key");
                let answer = aml
                    .client
                    .call(&azureml::scoring_credential(&ws, endpoint, auth_mode))
                    .await?
                    .body;
                let secret = azureml::scoring_secret(&answer).ok_or_else(|| {
                    PortError::Permanent(format!(
                        "endpoint {endpoint}: no scoring key or token in the answer"
                    ))
                })?;
                let uri = current["properties"]["scoringUri"]
                    .as_str()
                    .ok_or_else(|| {
                        PortError::Permanent(format!("endpoint {endpoint} has no scoringUri"))
                    })?;
                let started = std::time::Instant::now();
                let result = self
                    .http()?
                    .post(uri)
                    .bearer_auth(secret)
                    .header("azureml-model-deployment", deployment.as_str())
                    .header("content-type", "application/json")
                    .body(spec.request.clone())
                    .timeout(Duration::from_millis(spec.max_latency_ms.max(1) * 5))
                    .send()
                    .await;
                let elapsed = started.elapsed().as_millis() as u64;
                match result {
                    Ok(r)
                        if r.status().as_u16() == spec.expect_status
                            && elapsed <= spec.max_latency_ms =>
                    {
                        ("passed", format!("{} in {elapsed} ms", r.status().as_u16()))
                    }
                    Ok(r) if r.status().as_u16() == spec.expect_status => (
                        "failed",
                        format!("{elapsed} ms is over the {} ms bound", spec.max_latency_ms),
                    ),
                    Ok(r) => (
                        "failed",
                        format!(
                            "status {} (expected {})",
                            r.status().as_u16(),
                            spec.expect_status
                        ),
                    ),
                    Err(e) => ("failed", format!("no answer: {e}")),
                }
            }
        };
        let mut requests = vec![json!(put)];
        if verdict != "failed" {
            let traffic =
                azureml::shift_traffic(&ws, endpoint, &current, &[(deployment.as_str(), 100)]);
            aml.client.put_and_wait(&traffic).await?;
            requests.push(json!(traffic));
        }
        let follow_up = vec![azureml::deployment_completed(
            entry, endpoint, verdict, &detail, now,
        )];
        let outcome = format!(
            "{deployment} on {endpoint} in {}: smoke test {verdict} ({detail})",
            ws.name
        );
        Ok(effect(
            entry,
            json!({ "arm": requests }),
            outcome,
            now,
            follow_up,
        ))
    }
}

fn effect(
    entry: &LedgerEntry,
    request: Value,
    outcome: String,
    now: DateTime<Utc>,
    follow_up: Vec<Value>,
) -> Effect {
    tracing::info!(action_id = %entry.action.action_id, "{outcome}");
    Effect {
        action_id: entry.action.action_id.to_string(),
        model: entry.action.model.clone(),
        mode: "live".into(),
        request,
        outcome,
        at: now,
        follow_up,
    }
}

/// Reads a notification service's answer (reference §5): Teams' legacy connectors report throttling as
/// 200 with a 429 text; Slack answers `ok`; PagerDuty 202.
pub fn classify(kind: RouteKind, status: u16, body: &str) -> Result<String, PortError> {
    let short: String = body.chars().take(200).collect();
    if kind == RouteKind::Teams && status == 200 && body.contains("429") {
        return Err(PortError::Transient(format!(
            "Teams throttled the webhook: {short}"
        )));
    }
    match status {
        200..=299 => Ok(format!("sent ({status})")),
        408 | 429 | 500..=599 => Err(PortError::Transient(format!("{status}: {short}"))),
        401 | 403 | 404 | 410 => Err(PortError::Permanent(format!(
            "{status}: {short} — check the route's webhook URL or key"
        ))),
        _ => Err(PortError::Permanent(format!("{status}: {short}"))),
    }
}

#[async_trait::async_trait]
impl Worker for LiveWorker {
    async fn execute(
        &self,
        entry: &LedgerEntry,
        delivery_count: u32,
        now: DateTime<Utc>,
    ) -> Result<Effect, PortError> {
        let action = &entry.action;
        if let Some(aml) = &self.azureml {
            match &action.params {
                ActionParams::Retrain { .. } => return self.retrain(aml, entry, now).await,
                ActionParams::Deploy { .. } => return self.deploy(aml, entry, now).await,
                _ => {}
            }
        }
        let Some(prepared) = notification(&self.policy, &self.approvals, entry, now) else {
            return self.dry.execute(entry, delivery_count, now).await;
        };
        let Prepared {
            route_name: name,
            route,
            request,
            ..
        } = prepared?;
        let secret = request
            .setting
            .as_deref()
            .and_then(|s| (self.settings)(s))
            .filter(|v| !v.trim().is_empty());
        let Some(secret) = secret else {
            return self.dry.execute(entry, delivery_count, now).await;
        };
        let (url, mut body) = match route.kind {
            RouteKind::Pagerduty => (self.pagerduty_url.clone(), request.body.clone()),
            _ => (secret.clone(), request.body.clone()),
        };
        if route.kind == RouteKind::Pagerduty {
            body["routing_key"] = Value::String(secret);
        }
        let response = self
            .http()?
            .post(&url)
            .json(&body)
            .send()
            .await
            // The URL is the secret of a webhook route (Teams, Slack): kept out of the error, which is logged.
            .map_err(|e| PortError::Transient(format!("route {name}: {}", e.without_url())))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let outcome = classify(route.kind, status, &text).map_err(|e| match e {
            PortError::Transient(m) => PortError::Transient(format!("route {name}: {m}")),
            PortError::Permanent(m) | PortError::Rejected(m) => {
                PortError::Permanent(format!("route {name}: {m}"))
            }
        })?;
        tracing::info!(action_id = %action.action_id, route = %name, status, "notification sent");
        Ok(Effect {
            action_id: action.action_id.to_string(),
            model: action.model.clone(),
            mode: "live".into(),
            // The request as sent, minus the secrets: the URL or routing key, and the approval links' tokens.
            request: {
                let mut sent = json!({ "route": name, "http": request, "status": status });
                crate::approvals::redact_tokens(&mut sent);
                sent
            },
            outcome,
            at: now,
            follow_up: Vec::new(),
        })
    }
}
