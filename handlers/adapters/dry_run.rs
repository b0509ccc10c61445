//! The dry-run worker: local mode's default for outside calls. It records exactly what a worker was asked
//! to do (the action and its parameters, with provenance) instead of calling Azure ML or a notification
//! service, and logs it.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::ports::{Effect, LedgerEntry, PortError, Worker, queue_for};

/// Records instead of calling out.
#[derive(Debug, Default, Clone, Copy)]
pub struct DryRunWorker;

#[async_trait::async_trait]
impl Worker for DryRunWorker {
    async fn execute(
        &self,
        entry: &LedgerEntry,
        delivery_count: u32,
        now: DateTime<Utc>,
    ) -> Result<Effect, PortError> {
        let action = &entry.action;
        let request = json!({
            "queue": queue_for(action.kind),
            "action_id": action.action_id,
            "kind": action.kind,
            "model": action.model,
            "version": action.version,
            "params": action.params,
            "provenance": { "event_id": entry.event_id, "decision_id": entry.decision_id, "traceparent": entry.traceparent },
        });
        tracing::info!(action_id = %action.action_id, kind = %action.kind, delivery_count, "dry run: {}", action.reason);
        Ok(Effect {
            action_id: action.action_id.to_string(),
            model: action.model.clone(),
            mode: "dry_run".into(),
            request,
            outcome: format!("not sent (dry run): {}", action.reason),
            at: now,
        })
    }
}
