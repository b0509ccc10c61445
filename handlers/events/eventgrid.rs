//! Event Grid's own system events that reach a webhook ([webhook delivery](https://learn.microsoft.com/azure/event-grid/webhook-event-delivery)).

use serde::{Deserialize, Serialize};

/// Event type of the subscription-validation handshake.
pub const SUBSCRIPTION_VALIDATION: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";
/// Event type sent when a subscription is deleted.
pub const SUBSCRIPTION_DELETED: &str = "Microsoft.EventGrid.SubscriptionDeletedEvent";

/// `data` of a subscription-validation event: echo `validationCode` back, or GET `validationUrl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionValidation {
    /// Code to return as `{"validationResponse": code}`.
    #[serde(alias = "ValidationCode")]
    pub validation_code: String,
    /// URL for manual (asynchronous) validation, API version 2018-05-01-preview and later.
    #[serde(alias = "ValidationUrl", default)]
    pub validation_url: Option<String>,
}
