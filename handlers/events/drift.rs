//! The drift webhook body: our own small schema so that Evidently, NannyML or a custom monitor can feed
//! drift to mlops-relay without pretending to be Azure ML.
//!
//! ```json
//! { "id": "evt-42", "model": "fraud", "version": "7", "metric": "psi", "value": 0.42, "threshold": 0.2,
//!   "window": { "start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z" },
//!   "source": "evidently", "signal": "fraud_feature_drift", "time": "2026-11-02T00:05:00Z" }
//! ```

use serde::{Deserialize, Serialize};

use super::lenient::{opt_f64, opt_string_or_number};

/// A drift measurement pushed by an outside monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriftReport {
    /// Sender's id for this report; makes redeliveries recognisable. Derived from the content when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Model name as registered in Azure ML.
    pub model: String,
    /// Model version being monitored.
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub version: Option<String>,
    /// Metric name, e.g. `psi`, `jensen_shannon`.
    pub metric: String,
    /// Measured drift; compared with the policy's thresholds.
    #[serde(deserialize_with = "opt_f64")]
    pub value: Option<f64>,
    /// The monitor's own threshold, for the record.
    #[serde(default, deserialize_with = "opt_f64")]
    pub threshold: Option<f64>,
    /// Observation window.
    #[serde(default)]
    pub window: Option<DriftWindow>,
    /// Who measured it, e.g. `evidently`.
    #[serde(default)]
    pub source: Option<String>,
    /// Monitor signal name, for grouping pages.
    #[serde(default)]
    pub signal: Option<String>,
    /// When it was measured (RFC 3339). The receive time is used when absent.
    #[serde(default)]
    pub time: Option<String>,
}

/// Start and end of a drift observation window (RFC 3339).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DriftWindow {
    /// Window start.
    #[serde(default)]
    pub start: Option<String>,
    /// Window end.
    #[serde(default)]
    pub end: Option<String>,
}
