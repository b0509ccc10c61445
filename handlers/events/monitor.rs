//! Azure Monitor alerts in the [common alert schema](https://learn.microsoft.com/azure/azure-monitor/alerts/alerts-common-schema):
//! infrastructure alerts (endpoint latency, quota, compute failures) that should page the on-call team.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `schemaId` of a common-alert-schema payload.
pub const COMMON_ALERT_SCHEMA_ID: &str = "azureMonitorCommonAlertSchema";

/// A whole alert notification: `{ "schemaId": ..., "data": { "essentials": ..., "alertContext": ... } }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommonAlert {
    /// Always `azureMonitorCommonAlertSchema`.
    pub schema_id: String,
    /// Essentials and context.
    pub data: CommonAlertData,
}

/// `data` of a [`CommonAlert`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommonAlertData {
    /// The fields every alert has.
    pub essentials: AlertEssentials,
    /// Signal-specific context, kept as is.
    #[serde(default)]
    pub alert_context: Value,
}

/// The `essentials` section shared by all alert types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertEssentials {
    /// Unique alert instance id; the same id is sent when the alert resolves.
    pub alert_id: String,
    /// Alert rule name.
    pub alert_rule: String,
    /// `Sev0` (critical) to `Sev4` (verbose).
    pub severity: String,
    /// `Metric`, `Log`, `ActivityLog`...
    #[serde(default)]
    pub signal_type: Option<String>,
    /// `Fired` or `Resolved`.
    pub monitor_condition: String,
    /// Service that raised it, e.g. `Platform`.
    #[serde(default)]
    pub monitoring_service: Option<String>,
    /// Resource ids the alert is about.
    #[serde(default, rename = "alertTargetIDs")]
    pub alert_target_ids: Vec<String>,
    /// Resource names the alert is about.
    #[serde(default)]
    pub configuration_items: Vec<String>,
    /// When it fired (ISO-8601).
    #[serde(default)]
    pub fired_date_time: Option<String>,
    /// When it resolved (ISO-8601), for resolved alerts.
    #[serde(default)]
    pub resolved_date_time: Option<String>,
    /// Rule description.
    #[serde(default)]
    pub description: Option<String>,
}
