//! The live worker: carries out queue messages for real where the policy's routes are configured (their app
//! settings hold a URL or routing key), and falls back to recording a dry run where they are not, so local
//! mode calls exactly the endpoints a team has set up and nothing else.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::adapters::dry_run::{DryRunWorker, LINK_MAX_AGE};
use crate::approvals::{self, Config};
use crate::notify::{self, Links};
use crate::policy::Policy;
use crate::policy::spec::RouteKind;
use crate::ports::{Effect, LedgerEntry, PortError, Worker, queue_for};

/// Looks up an app setting (the process environment in production; a map in tests).
pub type Settings = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Sends notifications over configured routes; everything else is recorded as a dry run.
pub struct LiveWorker {
    policy: Arc<Policy>,
    approvals: Arc<Config>,
    settings: Settings,
    http: reqwest::Client,
    dry: DryRunWorker,
    pagerduty_url: String,
}

impl LiveWorker {
    /// A worker reading route secrets through `settings`.
    pub fn new(
        policy: Arc<Policy>,
        approvals: Arc<Config>,
        settings: Settings,
    ) -> Result<Self, PortError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| PortError::Permanent(format!("http client: {e}")))?;
        let dry = DryRunWorker::new(policy.clone(), approvals.clone());
        Ok(LiveWorker {
            policy,
            approvals,
            settings,
            http,
            dry,
            pagerduty_url: notify::PAGERDUTY_URL.to_string(),
        })
    }

    /// Sends PagerDuty events elsewhere (an EU service region, or a stand-in in tests).
    pub fn with_pagerduty_url(mut self, url: &str) -> Self {
        self.pagerduty_url = url.to_string();
        self
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
        let route = notify::route_of(&action.params).and_then(|name| {
            self.policy
                .spec
                .routes
                .get(name)
                .map(|r| (name.to_string(), r.clone()))
        });
        let Some((name, route)) = route.filter(|_| queue_for(action.kind) == "notifications")
        else {
            return self.dry.execute(entry, delivery_count, now).await;
        };
        let links = approvals::links(&self.approvals, entry, &self.policy.hash, now, LINK_MAX_AGE);
        let link = Links {
            approval: links.first().map(|(_, u)| u.clone()),
            studio: None,
        };
        let request = notify::request(entry, &route, &link).map_err(PortError::Permanent)?;
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
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| PortError::Transient(format!("route {name}: {e}")))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let outcome = classify(route.kind, status, &text).map_err(|e| match e {
            PortError::Transient(m) => PortError::Transient(format!("route {name}: {m}")),
            PortError::Permanent(m) => PortError::Permanent(format!("route {name}: {m}")),
        })?;
        tracing::info!(action_id = %action.action_id, route = %name, status, "notification sent");
        Ok(Effect {
            action_id: action.action_id.to_string(),
            model: action.model.clone(),
            mode: "live".into(),
            // The request as sent, minus the secret (URL or routing key).
            request: json!({ "route": name, "http": request, "status": status }),
            outcome,
            at: now,
        })
    }
}
