//! The dry-run worker: local mode's default for outside calls. It records exactly what would be sent —
//! for notifications the HTTP request each route expects, approval links included; for Azure ML the action
//! with its parameters and provenance — instead of sending it, and logs it.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;

use crate::approvals::{self, Config};
use crate::notify::{self, Links};
use crate::policy::Policy;
use crate::ports::{Effect, LedgerEntry, PortError, Worker, queue_for};

/// Longest life of an approval link, whatever the request's own expiry.
pub const LINK_MAX_AGE: TimeDelta = TimeDelta::days(7);

/// Records instead of calling out.
#[derive(Debug, Clone)]
pub struct DryRunWorker {
    policy: Arc<Policy>,
    approvals: Arc<Config>,
}

impl DryRunWorker {
    /// A dry-run worker for this policy (routes) and approval link configuration.
    pub fn new(policy: Arc<Policy>, approvals: Arc<Config>) -> Self {
        DryRunWorker { policy, approvals }
    }
}

#[async_trait::async_trait]
impl Worker for DryRunWorker {
    async fn execute(
        &self,
        entry: &LedgerEntry,
        delivery_count: u32,
        now: DateTime<Utc>,
    ) -> Result<Effect, PortError> {
        let action = &entry.action;
        let provenance = json!({ "event_id": entry.event_id, "decision_id": entry.decision_id, "traceparent": entry.traceparent });
        let route = notify::route_of(&action.params)
            .and_then(|name| self.policy.spec.routes.get(name).map(|r| (name, r)));
        let request = match (queue_for(action.kind), route) {
            ("notifications", Some((name, route))) => {
                let links =
                    approvals::links(&self.approvals, entry, &self.policy.hash, now, LINK_MAX_AGE);
                let link = Links {
                    approvals: links.clone(),
                    studio: None,
                };
                let req = notify::request(entry, route, &link).map_err(PortError::Permanent)?;
                json!({ "route": name, "http": req, "approval_links": links.into_iter().map(|(a, u)| json!({"approver": a, "url": u})).collect::<Vec<_>>(), "provenance": provenance })
            }
            (queue, _) => json!({
                "queue": queue,
                "action_id": action.action_id,
                "kind": action.kind,
                "model": action.model,
                "version": action.version,
                "params": action.params,
                "provenance": provenance,
            }),
        };
        tracing::info!(action_id = %action.action_id, kind = %action.kind, delivery_count, request = %request, "dry run: {}", action.reason);
        Ok(Effect {
            action_id: action.action_id.to_string(),
            model: action.model.clone(),
            mode: "dry_run".into(),
            request,
            outcome: format!("not sent (dry run): {}", action.reason),
            at: now,
            follow_up: Vec::new(),
        })
    }
}
