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

/// A notification ready to send: its route and the exact request, with one approval link per approver.
pub struct Prepared {
    /// Route name in the policy.
    pub route_name: String,
    /// The route.
    pub route: crate::policy::spec::RouteSpec,
    /// The request, without the secret.
    pub request: notify::Request,
    /// `(approver, url)` for approval requests.
    pub links: Vec<(String, String)>,
}

/// The notification an entry of the notifications queue makes over its route; `None` when the action has
/// no route (or is not a notification).
pub fn notification(
    policy: &Policy,
    approvals: &Config,
    entry: &LedgerEntry,
    now: DateTime<Utc>,
) -> Option<Result<Prepared, PortError>> {
    if queue_for(entry.action.kind) != "notifications" {
        return None;
    }
    let route_name = notify::route_of(&entry.action.params)?;
    let route = policy.spec.routes.get(route_name)?.clone();
    let links = approvals::links(approvals, entry, &policy.hash, now, LINK_MAX_AGE);
    let request = notify::request(
        entry,
        &route,
        &Links {
            approvals: links.clone(),
            studio: None,
        },
    );
    Some(
        request
            .map_err(PortError::Permanent)
            .map(|request| Prepared {
                route_name: route_name.to_string(),
                route,
                request,
                links,
            }),
    )
}

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
        let request = match notification(&self.policy, &self.approvals, entry, now) {
            Some(prepared) => {
                let Prepared {
                    route_name,
                    request,
                    links,
                    ..
                } = prepared?;
                let links: Vec<_> = links
                    .into_iter()
                    .map(|(a, u)| json!({ "approver": a, "url": u }))
                    .collect();
                json!({ "route": route_name, "http": request, "approval_links": links, "provenance": provenance })
            }
            None => json!({
                "queue": queue_for(action.kind),
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
