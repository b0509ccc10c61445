//! Approval tokens: what an approval link carries. HMAC-SHA256 signed, bound to the request (action id),
//! model, version, target environment and policy hash, with an expiry. Single use is enforced by the store
//! (a conditional create under the token's id), not here: this module is pure.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What a token vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The `request_approval` action id.
    #[serde(rename = "a")]
    pub action_id: String,
    /// Model.
    #[serde(rename = "m")]
    pub model: String,
    /// Version.
    #[serde(rename = "v")]
    pub version: String,
    /// Target environment of the gate.
    #[serde(rename = "e")]
    pub environment: String,
    /// Hash of the policy that asked.
    #[serde(rename = "p")]
    pub policy_hash: String,
    /// The approver the link was sent to: one link per approver, so N-of-M counts people, not clicks.
    #[serde(rename = "u")]
    pub approver: String,
    /// Expiry, seconds since the epoch.
    #[serde(rename = "x")]
    pub expires: i64,
}

/// Why a token was refused. The messages are shown to the person who clicked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token at all, or cut short.
    #[error("this approval link is malformed (was it cut short when copied?)")]
    Malformed,
    /// Signature does not match: forged or signed with another key.
    #[error("this approval link is not valid for this relay")]
    BadSignature,
    /// Past its expiry.
    #[error("this approval link expired at {0}")]
    Expired(DateTime<Utc>),
    /// Bound to another request, model, version, environment or policy.
    #[error("this approval link belongs to another request ({0})")]
    Mismatch(&'static str),
}

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8], payload: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(payload.as_bytes());
    mac
}

/// Signs claims: `base64url(json).base64url(hmac)`.
pub fn sign(key: &[u8], claims: &Claims) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
    let sig = URL_SAFE_NO_PAD.encode(mac(key, &payload).finalize().into_bytes());
    format!("{payload}.{sig}")
}

/// Verifies a token's signature and expiry at `now`; returns its claims.
pub fn verify(key: &[u8], token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
    let (payload, sig) = token.trim().split_once('.').ok_or(TokenError::Malformed)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| TokenError::Malformed)?;
    // Constant-time comparison.
    mac(key, payload)
        .verify_slice(&sig)
        .map_err(|_| TokenError::BadSignature)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    let expires = DateTime::from_timestamp(claims.expires, 0).ok_or(TokenError::Malformed)?;
    if now >= expires {
        return Err(TokenError::Expired(expires));
    }
    Ok(claims)
}

impl Claims {
    /// Checks that the token is for this request as it stands.
    pub fn check(
        &self,
        action_id: &str,
        model: &str,
        version: &str,
        environment: &str,
        policy_hash: &str,
    ) -> Result<(), TokenError> {
        let pairs = [
            (self.action_id.as_str(), action_id, "request"),
            (self.model.as_str(), model, "model"),
            (self.version.as_str(), version, "version"),
            (self.environment.as_str(), environment, "environment"),
            (self.policy_hash.as_str(), policy_hash, "policy"),
        ];
        match pairs.iter().find(|(a, b, _)| a != b) {
            Some((_, _, what)) => Err(TokenError::Mismatch(what)),
            None => Ok(()),
        }
    }

    /// A stable id for single-use bookkeeping (the signature part would do too; this reads better in logs).
    pub fn use_id(token: &str) -> String {
        // Trimmed as `verify` trims it: a link pasted with a space (or a `+`) is the same link, used once.
        crate::domain::content_id(token.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            action_id: "request_approval-0123".into(),
            model: "fraud".into(),
            version: "7".into(),
            environment: "staging".into(),
            policy_hash: "91d1f2c4".into(),
            approver: "lead@x.io".into(),
            expires: 1_800_000_000,
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn round_trip_and_binding() {
        let token = sign(b"k1", &claims());
        let got = verify(b"k1", &token, at(1_700_000_000)).unwrap();
        assert_eq!(got, claims());
        assert!(
            got.check("request_approval-0123", "fraud", "7", "staging", "91d1f2c4")
                .is_ok()
        );
        assert_eq!(
            got.check("request_approval-0123", "fraud", "8", "staging", "91d1f2c4"),
            Err(TokenError::Mismatch("version"))
        );
        assert_eq!(
            got.check("request_approval-0123", "fraud", "7", "prod", "91d1f2c4"),
            Err(TokenError::Mismatch("environment"))
        );
        assert_eq!(
            got.check("request_approval-0123", "fraud", "7", "staging", "ffff"),
            Err(TokenError::Mismatch("policy"))
        );
    }

    #[test]
    fn refusals() {
        let token = sign(b"k1", &claims());
        assert_eq!(verify(b"k2", &token, at(0)), Err(TokenError::BadSignature));
        assert_eq!(
            verify(b"k1", &token, at(1_800_000_000)),
            Err(TokenError::Expired(at(1_800_000_000)))
        );
        assert_eq!(verify(b"k1", "nodot", at(0)), Err(TokenError::Malformed));
        assert_eq!(
            verify(b"k1", &token[..token.len() - 3], at(0)),
            Err(TokenError::BadSignature)
        );
        // A payload swapped under a valid signature is refused.
        let mut other = claims();
        other.version = "8".into();
        let forged = format!(
            "{}.{}",
            sign(b"k1", &other).split('.').next().unwrap(),
            token.split('.').nth(1).unwrap()
        );
        assert_eq!(verify(b"k1", &forged, at(0)), Err(TokenError::BadSignature));
    }
}
