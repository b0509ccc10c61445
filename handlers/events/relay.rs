//! Events that mlops-relay itself produces (approval decisions, deployment results) and feeds back into
//! decide(). They travel as CloudEvents so that a history file can hold them next to Azure ML's events and
//! `replay` tells the whole story.

use serde::{Deserialize, Serialize};

use super::lenient::string_or_number;

/// Event type of [`ApprovalDecided`].
pub const APPROVAL_DECIDED: &str = "MlopsRelay.ApprovalDecided";
/// Event type of [`DeploymentCompleted`].
pub const DEPLOYMENT_COMPLETED: &str = "MlopsRelay.DeploymentCompleted";

/// Whether `event_type` is one of mlops-relay's own event types, which only the relay itself may send.
pub fn is_own(event_type: &str) -> bool {
    event_type.eq_ignore_ascii_case(APPROVAL_DECIDED)
        || event_type.eq_ignore_ascii_case(DEPLOYMENT_COMPLETED)
}

/// A person approved or rejected a promotion through the approval page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalDecided {
    /// Model name.
    pub model: String,
    /// Model version.
    #[serde(deserialize_with = "string_or_number")]
    pub version: String,
    /// Target environment of the gate, e.g. `staging`.
    pub environment: String,
    /// Who decided (the signed-in identity).
    pub approver: String,
    /// `approve` or `reject`.
    pub decision: String,
    /// Why, in the approver's words.
    #[serde(default)]
    pub comment: Option<String>,
}

/// The deploy worker finished a deployment and its smoke test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentCompleted {
    /// Model name.
    pub model: String,
    /// Model version.
    #[serde(deserialize_with = "string_or_number")]
    pub version: String,
    /// Environment deployed to.
    pub environment: String,
    /// Online endpoint name.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `passed`, `failed` or `skipped`.
    pub smoke_test: String,
    /// What the smoke test saw.
    #[serde(default)]
    pub detail: Option<String>,
}
