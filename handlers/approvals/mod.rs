//! Approvals: signed, expiring, single-use links to a page served by the relay, where a named approver
//! approves or rejects a promotion. The decision itself goes through decide() like every other signal (as an
//! `MlopsRelay.ApprovalDecided` event), so gates, N-of-M and "the requester may not approve" live in one place.

pub mod page;
pub mod token;

use chrono::{DateTime, TimeDelta, Utc};

use crate::policy::ActionParams;
use crate::ports::LedgerEntry;
use token::Claims;

/// How approval links are made: the signing key and the relay's public base URL.
#[derive(Clone)]
pub struct Config {
    /// HMAC key for tokens.
    pub key: Vec<u8>,
    /// Base URL people reach the relay at, e.g. `https://func-mlops-relay.azurewebsites.net`.
    pub public_url: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("key", &"<redacted>")
            .field("public_url", &self.public_url)
            .finish()
    }
}

/// One link per approver of a `request_approval` entry: `{public_url}/api/approvals/{action_id}?token=…`.
/// Tokens expire with the request (at most `max_age` from `now`).
pub fn links(
    config: &Config,
    entry: &LedgerEntry,
    policy_hash: &str,
    now: DateTime<Utc>,
    max_age: TimeDelta,
) -> Vec<(String, String)> {
    let a = &entry.action;
    let ActionParams::RequestApproval {
        environment,
        approvers,
        expires_at,
        ..
    } = &a.params
    else {
        return Vec::new();
    };
    let expires = (*expires_at).min(now + max_age).timestamp();
    approvers
        .iter()
        .map(|approver| {
            let claims = Claims {
                action_id: a.action_id.to_string(),
                model: a.model.clone().unwrap_or_default(),
                version: a.version.clone().unwrap_or_default(),
                environment: environment.clone(),
                policy_hash: policy_hash.to_string(),
                approver: approver.clone(),
                expires,
            };
            let url = format!(
                "{}/api/approvals/{}?token={}",
                config.public_url.trim_end_matches('/'),
                a.action_id,
                token::sign(&config.key, &claims)
            );
            (approver.clone(), url)
        })
        .collect()
}

/// `value` with the signed token of every approval link in it replaced by `…`. A token is a bearer
/// credential for one approver's decision: once a request is sent, its record (a worker's effect) needs
/// the links' shape, not their power.
pub fn redact_tokens(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(text) if text.contains("token=") => {
            let mut out = String::with_capacity(text.len());
            let mut rest = text.as_str();
            while let Some(at) = rest.find("token=") {
                let (head, tail) = rest.split_at(at + "token=".len());
                out.push_str(head);
                out.push('…');
                let end = tail
                    .find(|c: char| {
                        matches!(c, '&' | '"' | '\'' | ')' | ']' | '>' | '<') || c.is_whitespace()
                    })
                    .unwrap_or(tail.len());
                rest = &tail[end..];
            }
            out.push_str(rest);
            *text = out;
        }
        Value::Array(items) => items.iter_mut().for_each(redact_tokens),
        Value::Object(fields) => fields.values_mut().for_each(redact_tokens),
        _ => {}
    }
}

/// What approving leads to, in words, for the page.
pub fn consequence(entry: &LedgerEntry) -> String {
    let a = &entry.action;
    let subject = format!(
        "{}:{}",
        a.model.as_deref().unwrap_or("?"),
        a.version.as_deref().unwrap_or("?")
    );
    match &a.params {
        ActionParams::RequestApproval {
            environment,
            approvers,
            required,
            ..
        } => format!(
            "Approving records your vote. Once {required} of the {} approvers have approved, {subject} is deployed to {environment} from the registry. Rejecting closes the request; nothing is deployed.",
            approvers.len()
        ),
        _ => format!("This is not an approval request ({}).", a.kind),
    }
}
