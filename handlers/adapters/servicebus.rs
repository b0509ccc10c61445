//! Service Bus sender over the documented REST API (reference §6.3): `POST https://{namespace}/{queue}/messages`.
//!
//! Why not the Functions output binding: for custom handlers it can only set the message body, never
//! `MessageId` or `SessionId` (reference S21), and the relay's exactly-once story rests on both. Why not
//! AMQP: no official Service Bus crate is published on the azure_core 1.x line yet. The sender sits behind
//! [`Queue`], so the official crate can replace it without the executor noticing.
//!
//! What a message carries:
//!
//! | REST | from | why |
//! |---|---|---|
//! | `BrokerProperties.MessageId` | action id | the queue's duplicate detection absorbs resends |
//! | `BrokerProperties.SessionId` | model name ([`session_id`]) | per-model order on session queues |
//! | `BrokerProperties.Label` | action kind | the message type a consumer switches on |
//! | `BrokerProperties.CorrelationId` | source event id | tracing back to the event |
//! | `BrokerProperties.ScheduledEnqueueTimeUtc` | [`ServiceBusSender::send_scheduled`] | delayed retries |
//! | `BrokerProperties.TimeToLive` | `RELAY_SERVICEBUS_MESSAGE_TTL` | seconds, when configured |
//! | header `traceparent`, `Diagnostic-Id` | W3C trace context | application properties, JSON-quoted |
//! | header `mlops-relay-action-kind` | action kind | application property, for subscription filters |
//!
//! Errors: 401/403/404/410 are configuration errors and fail at once as [`PortError::Permanent`] with a
//! message saying what to fix. 400/413 refuse the one message (too large, a property Service Bus does not
//! take) and fail at once as [`PortError::Rejected`]: the executor dead-letters that action instead of having
//! its trigger retried for a day. Values a header cannot carry as they are (non-ASCII text in a JSON-quoted
//! property) are sent as JSON `\u` escapes, and a SessionId is kept within Service Bus's 128 characters, so
//! that neither is refused. 408, 429, 5xx, connection failures and
//! timeouts are retried with exponential backoff and jitter (honouring `Retry-After`), then surface as
//! [`PortError::Transient`] so the function returns 5xx and the trigger redelivers. A 403 that says the
//! queue's quota is exceeded (a full queue) is transient at once: seconds of retrying will not drain it.
//!
//! Duplicates: Service Bus answers 201 whether or not duplicate detection dropped the message, so REST gives
//! no signal for one. [`Sent::New`] from this adapter means "accepted by the queue", never "not a duplicate".
//! A retry after a timeout may resend a message that did arrive: only a queue created with duplicate
//! detection (`requiresDuplicateDetection`) absorbs it, so the relay's queues must be created that way.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::{AccessToken, Secret, TokenCredential};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use reqwest::header::{
    AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER,
};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::RwLock;

use crate::config::ConfigError;
use crate::ports::{OutboundMessage, PortError, Queue, Sent};

/// The Entra scope for Service Bus data-plane calls.
pub const SERVICE_BUS_SCOPE: &str = "https://servicebus.azure.net/.default";

/// The `api-version` query parameter sent with every request. The documentation says the broker properties
/// do not depend on it and that it may be left out; it is sent so the request is unambiguous.
pub const API_VERSION: &str = "2015-01";

/// `Content-Type` of a single message: the message's `ContentType` property as consumers see it.
pub const MESSAGE_CONTENT_TYPE: &str = "application/json;charset=utf-8";

/// `Content-Type` of a batch send; the documentation asks for it without parameters.
pub const BATCH_CONTENT_TYPE: &str = "application/vnd.microsoft.servicebus.json";

/// The role an Entra identity needs to send.
pub const SENDER_ROLE: &str = "Azure Service Bus Data Sender";

/// A cached token is renewed this long before it expires.
const TOKEN_REFRESH_MARGIN: azure_core::time::Duration = azure_core::time::Duration::minutes(5);

/// How long a SAS token this sender signs stays valid.
const SAS_VALIDITY_SECS: i64 = 3600;

/// How much of an error response body goes into an error message.
const BODY_EXCERPT: usize = 400;

/// How the sender authenticates.
#[derive(Clone)]
pub enum ServiceBusAuth {
    /// An Entra token for [`SERVICE_BUS_SCOPE`] (managed identity on Azure, developer tools locally). Tokens
    /// are cached by the sender until 5 minutes before they expire (the Azure CLI credential caches nothing).
    Token(Arc<dyn TokenCredential>),
    /// A shared access key, from a connection string, for users who insist on one.
    Sas {
        /// `SharedAccessKeyName`.
        key_name: String,
        /// `SharedAccessKey`, used as is (its UTF-8 bytes are the HMAC key; it is not base64-decoded).
        key: Secret,
    },
}

impl fmt::Debug for ServiceBusAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceBusAuth::Token(c) => f.debug_tuple("Token").field(c).finish(),
            ServiceBusAuth::Sas { key_name, .. } => f
                .debug_struct("Sas")
                .field("key_name", key_name)
                .finish_non_exhaustive(),
        }
    }
}

/// How failed sends are retried in-process before giving up with [`PortError::Transient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// Delay before the first retry; it doubles for each further retry, with jitter (50–100 %).
    pub base_delay: Duration,
    /// Cap on one delay. A `Retry-After` longer than this ends the retries at once: the trigger's
    /// redelivery waits better than a function holding its invocation open.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 3 attempts, 0.5 s then 1 s apart (before jitter), capped at 4 s.
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(4),
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `retry` (1 for the first retry), jitter included.
    fn backoff(&self, retry: u32) -> Duration {
        let exponential = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)));
        exponential
            .min(self.max_delay)
            .mul_f64(0.5 + 0.5 * jitter())
    }
}

/// A number in [0, 1), different on every call; enough for jitter, not for anything secret.
fn jitter() -> f64 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let bits = std::collections::hash_map::RandomState::new().hash_one(nanos);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Tuning of a [`ServiceBusSender`].
#[derive(Debug, Clone)]
pub struct SenderOptions {
    /// Base URL the requests go to, ending in `/`; default `https://{namespace}/`. Tests point it at a
    /// local server (`http://127.0.0.1:PORT/`); tokens are still issued for the namespace.
    pub endpoint: Option<String>,
    /// Per-attempt timeout of a request (also sent as the server-side `timeout`, in whole seconds).
    pub request_timeout: Duration,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// In-process retries.
    pub retry: RetryPolicy,
    /// Per-message `TimeToLive`, when set (Service Bus caps it at the queue's default).
    pub time_to_live: Option<Duration>,
}

impl Default for SenderOptions {
    fn default() -> Self {
        SenderOptions {
            endpoint: None,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            time_to_live: None,
        }
    }
}

/// A Service Bus connection string: `Endpoint=sb://NS/;SharedAccessKeyName=..;SharedAccessKey=..[;EntityPath=..]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceBusConnectionString {
    /// Fully-qualified namespace (`sb-mlops.servicebus.windows.net`).
    pub namespace: String,
    /// `SharedAccessKeyName`.
    pub key_name: String,
    /// `SharedAccessKey`.
    pub key: Secret,
    /// `EntityPath`: the key is scoped to this one queue.
    pub entity_path: Option<String>,
}

impl ServiceBusConnectionString {
    /// Parses a connection string; keys are case-insensitive, values may contain `=` (base64 padding).
    pub fn parse(text: &str) -> Result<ServiceBusConnectionString, ConfigError> {
        let err = |message: String| ConfigError {
            setting: "ServiceBusConnection",
            message,
        };
        let (mut endpoint, mut key_name, mut key, mut entity_path) = (None, None, None, None);
        for part in text.trim().split(';').filter(|p| !p.trim().is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err(err(format!(
                    "`{}` is not `Name=value`; expected Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=...;SharedAccessKey=...",
                    part.trim()
                )));
            };
            let value = value.trim().to_string();
            match name.trim().to_ascii_lowercase().as_str() {
                "endpoint" => endpoint = Some(value),
                "sharedaccesskeyname" => key_name = Some(value),
                "sharedaccesskey" => key = Some(value),
                "entitypath" => entity_path = Some(value).filter(|v| !v.is_empty()),
                "sharedaccesssignature" => {
                    return Err(err(
                        "connection strings holding a pre-signed SharedAccessSignature are not supported; use SharedAccessKeyName and SharedAccessKey, or an identity (ServiceBusConnection__fullyQualifiedNamespace)".into(),
                    ));
                }
                "usedevelopmentemulator" => {
                    return Err(err(
                        "the Service Bus emulator speaks AMQP only, and this sender uses REST; use a real namespace, or `mlops-relay local` (SQLite queues)".into(),
                    ));
                }
                _ => {}
            }
        }
        let endpoint = endpoint.ok_or_else(|| {
            err(
                "no `Endpoint=sb://<namespace>.servicebus.windows.net/` in the connection string"
                    .into(),
            )
        })?;
        let namespace = normalise_namespace(&endpoint).map_err(err)?;
        let key_name = key_name.filter(|v| !v.is_empty()).ok_or_else(|| {
            err("no `SharedAccessKeyName=` in the connection string (e.g. RootManageSharedAccessKey)".into())
        })?;
        let key = key
            .filter(|v| !v.is_empty())
            .ok_or_else(|| err("no `SharedAccessKey=` in the connection string".into()))?;
        Ok(ServiceBusConnectionString {
            namespace,
            key_name,
            key: Secret::new(key),
            entity_path,
        })
    }
}

/// `sb://ns.servicebus.windows.net/`, `https://ns.servicebus.windows.net` or `ns.servicebus.windows.net` →
/// `ns.servicebus.windows.net`.
fn normalise_namespace(text: &str) -> Result<String, String> {
    let text = text.trim();
    let host = text
        .split_once("://")
        .map_or(text, |(_, rest)| rest)
        .trim_end_matches('/');
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err(format!(
            "`{text}` is not a namespace: expected <name>.servicebus.windows.net"
        ));
    }
    if !host.contains('.') {
        return Err(format!(
            "`{host}` is not fully qualified: use {host}.servicebus.windows.net"
        ));
    }
    Ok(host.to_ascii_lowercase())
}

/// How settings say to authenticate.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceBusAuthSetting {
    /// An Entra identity (see [`credential_from_env`]); a user-assigned managed identity's client id if given.
    Identity {
        /// `ServiceBusConnection__clientId` or `AZURE_CLIENT_ID`.
        client_id: Option<String>,
    },
    /// A shared access key from the `ServiceBusConnection` connection string.
    ConnectionString(ServiceBusConnectionString),
}

/// Service Bus settings, named as the Functions Service Bus extension names its identity-based connection
/// (reference §1.7), so the trigger and this sender read the same app settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceBusSettings {
    /// Fully-qualified namespace, e.g. `sb-mlops.servicebus.windows.net`.
    pub namespace: String,
    /// How to authenticate.
    pub auth: ServiceBusAuthSetting,
    /// `RELAY_SERVICEBUS_MESSAGE_TTL` (e.g. `24h`): per-message `TimeToLive`.
    pub time_to_live: Option<Duration>,
}

impl ServiceBusSettings {
    /// Reads `ServiceBusConnection` (a connection string: SAS) or else
    /// `ServiceBusConnection__fullyQualifiedNamespace` (identity), plus `ServiceBusConnection__clientId` /
    /// `AZURE_CLIENT_ID` and `RELAY_SERVICEBUS_MESSAGE_TTL`.
    pub fn from_env(
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ServiceBusSettings, ConfigError> {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let time_to_live = match set("RELAY_SERVICEBUS_MESSAGE_TTL") {
            None => None,
            Some(text) => match humantime::parse_duration(text.trim()) {
                Ok(d) if d >= Duration::from_secs(1) => Some(d),
                Ok(_) => {
                    return Err(ConfigError {
                        setting: "RELAY_SERVICEBUS_MESSAGE_TTL",
                        message: format!("`{text}` is shorter than one second"),
                    });
                }
                Err(e) => {
                    return Err(ConfigError {
                        setting: "RELAY_SERVICEBUS_MESSAGE_TTL",
                        message: format!("`{text}` is not a duration such as `24h`: {e}"),
                    });
                }
            },
        };
        if let Some(text) = set("ServiceBusConnection") {
            let cs = ServiceBusConnectionString::parse(&text)?;
            return Ok(ServiceBusSettings {
                namespace: cs.namespace.clone(),
                auth: ServiceBusAuthSetting::ConnectionString(cs),
                time_to_live,
            });
        }
        let text = set("ServiceBusConnection__fullyQualifiedNamespace").ok_or(ConfigError {
            setting: "ServiceBusConnection__fullyQualifiedNamespace",
            message: "not set: set it to the namespace (e.g. sb-mlops.servicebus.windows.net) and grant the app's identity 'Azure Service Bus Data Sender', or set ServiceBusConnection to a connection string".into(),
        })?;
        let namespace = normalise_namespace(&text).map_err(|message| ConfigError {
            setting: "ServiceBusConnection__fullyQualifiedNamespace",
            message,
        })?;
        let client_id = set("ServiceBusConnection__clientId").or_else(|| set("AZURE_CLIENT_ID"));
        Ok(ServiceBusSettings {
            namespace,
            auth: ServiceBusAuthSetting::Identity { client_id },
            time_to_live,
        })
    }
}

/// Which Entra credential the environment calls for. azure_identity 1.x has no `DefaultAzureCredential`, so
/// the relay chooses, in this order:
///
/// 1. `AZURE_FEDERATED_TOKEN_FILE` set → workload identity (AKS; it is only ever set on purpose);
/// 2. `IDENTITY_ENDPOINT` or `WEBSITE_INSTANCE_ID` set (App Service / Functions) → managed identity,
///    user-assigned when a client id is given;
/// 3. otherwise → developer tools (Azure CLI, then Azure Developer CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialChoice {
    /// `WorkloadIdentityCredential`.
    WorkloadIdentity {
        /// The identity's client id (`AZURE_CLIENT_ID` when not given).
        client_id: Option<String>,
        /// `AZURE_TENANT_ID`.
        tenant_id: Option<String>,
        /// `AZURE_FEDERATED_TOKEN_FILE`.
        token_file: String,
    },
    /// `ManagedIdentityCredential`.
    ManagedIdentity {
        /// A user-assigned identity's client id; system-assigned when `None`.
        client_id: Option<String>,
    },
    /// `DeveloperToolsCredential` (`az login` / `azd auth login`).
    DeveloperTools,
}

impl CredentialChoice {
    /// Chooses from `env`; `client_id` is the caller's own setting (e.g. `ServiceBusConnection__clientId`),
    /// falling back to `AZURE_CLIENT_ID`.
    pub fn from_env(
        env: impl Fn(&str) -> Option<String>,
        client_id: Option<&str>,
    ) -> CredentialChoice {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let client_id = client_id
            .filter(|v| !v.trim().is_empty())
            .map(str::to_string)
            .or_else(|| set("AZURE_CLIENT_ID"));
        if let Some(token_file) = set("AZURE_FEDERATED_TOKEN_FILE") {
            return CredentialChoice::WorkloadIdentity {
                client_id,
                tenant_id: set("AZURE_TENANT_ID"),
                token_file,
            };
        }
        if set("IDENTITY_ENDPOINT").is_some() || set("WEBSITE_INSTANCE_ID").is_some() {
            return CredentialChoice::ManagedIdentity { client_id };
        }
        CredentialChoice::DeveloperTools
    }

    /// Builds the credential. The managed-identity credential reads `IDENTITY_ENDPOINT` / `IDENTITY_HEADER`
    /// from the process environment itself.
    pub fn build(&self) -> Result<Arc<dyn TokenCredential>, ConfigError> {
        use azure_identity::{
            DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
            UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
        };
        let credential: Arc<dyn TokenCredential> = match self {
            CredentialChoice::WorkloadIdentity {
                client_id,
                tenant_id,
                token_file,
            } => WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                client_id: client_id.clone(),
                tenant_id: tenant_id.clone(),
                token_file_path: Some(token_file.into()),
                ..Default::default()
            }))
            .map_err(|e| ConfigError {
                setting: "AZURE_FEDERATED_TOKEN_FILE",
                message: format!(
                    "workload identity is not usable (needs AZURE_TENANT_ID and AZURE_CLIENT_ID too): {e}"
                ),
            })?,
            CredentialChoice::ManagedIdentity { client_id } => {
                ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                    ..Default::default()
                }))
                .map_err(|e| ConfigError {
                    setting: "AZURE_CLIENT_ID",
                    message: format!("managed identity is not usable: {e}"),
                })?
            }
            CredentialChoice::DeveloperTools => {
                DeveloperToolsCredential::new(None).map_err(|e| ConfigError {
                    setting: "AZURE_CLIENT_ID",
                    message: format!("developer credentials are not usable (run `az login`): {e}"),
                })?
            }
        };
        Ok(credential)
    }
}

/// The Entra credential the environment calls for (see [`CredentialChoice`]); shared by every adapter that
/// needs a token (Service Bus, Blob Storage, Azure ML). `client_id` is the adapter's own client-id setting,
/// if any; `AZURE_CLIENT_ID` is the fallback.
pub fn credential_from_env(
    env: impl Fn(&str) -> Option<String>,
    client_id: Option<&str>,
) -> Result<Arc<dyn TokenCredential>, ConfigError> {
    let choice = CredentialChoice::from_env(env, client_id);
    tracing::info!(credential = ?choice, "Entra credential chosen from the environment");
    choice.build()
}

/// The `SharedAccessSignature` authorization value for `resource_uri`, valid until `expiry` (Unix seconds).
///
/// The documented algorithm: `sig = base64(HMAC-SHA256(key, urlencode(resource_uri) + "\n" + expiry))`,
/// with the key's UTF-8 bytes as the HMAC key, then
/// `SharedAccessSignature sr=<urlencoded uri>&sig=<urlencoded sig>&se=<expiry>&skn=<key name>`.
/// URL encoding leaves only `A-Z a-z 0-9 - _ . ~` as they are (as Python's `quote_plus` and .NET's
/// `WebUtility.UrlEncode` do for these inputs).
pub fn sas_token(resource_uri: &str, key_name: &str, key: &str, expiry: i64) -> String {
    let encoded_uri = url_encode(resource_uri);
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(format!("{encoded_uri}\n{expiry}").as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!(
        "SharedAccessSignature sr={encoded_uri}&sig={}&se={expiry}&skn={}",
        url_encode(&signature),
        url_encode(key_name)
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters, upper-case hex.
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A queue name as a URL path: `/` (hierarchical names) stays, anything outside the unreserved set is
/// percent-encoded.
fn queue_path(queue: &str) -> String {
    queue
        .split('/')
        .map(url_encode)
        .collect::<Vec<_>>()
        .join("/")
}

/// `BrokerProperties`: the header of a single send, the object of a batch entry.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct BrokerProperties<'a> {
    message_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    correlation_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<Cow<'a, str>>,
    label: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_enqueue_time_utc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_to_live: Option<u64>,
}

/// Most characters Service Bus takes in a `SessionId` (a longer one is refused with 400).
pub const MAX_SESSION_ID: usize = 128;

/// The `SessionId` for a model: its name, or, for a name longer than [`MAX_SESSION_ID`] characters (Azure ML
/// takes up to 255), its first 111 characters, `~` and 16 hex digits of the whole name's SHA-256. Still one
/// session per model, and the same one from every instance.
pub fn session_id(model: &str) -> Cow<'_, str> {
    if model.chars().count() <= MAX_SESSION_ID {
        return Cow::Borrowed(model);
    }
    use sha2::Digest as _;
    let digest = Sha256::digest(model.as_bytes());
    let mut id: String = model.chars().take(MAX_SESSION_ID - 17).collect();
    id.push('~');
    for b in &digest[..8] {
        id.push_str(&format!("{b:02x}"));
    }
    Cow::Owned(id)
}

/// JSON text made ASCII: every character outside printable ASCII as a `\u` escape (a surrogate pair above
/// U+FFFF), which JSON reads back as the same text and an HTTP header can carry.
fn ascii_json(json: String) -> String {
    if json.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if (' '..='~').contains(&c) {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// RFC 1123, as `BrokerProperties.ScheduledEnqueueTimeUtc` wants it: `Sun, 16 Jun 2024 02:00:00 GMT`.
pub fn rfc1123(at: DateTime<Utc>) -> String {
    at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Application properties of a message: name and (unquoted) string value.
fn application_properties(message: &OutboundMessage) -> Vec<(&'static str, &str)> {
    let mut props = Vec::with_capacity(3);
    if let Some(tp) = message.traceparent.as_deref().filter(|t| !t.is_empty()) {
        props.push(("traceparent", tp));
        // The name Azure SDKs and the Functions host read to link a message to its trace (see the note on
        // header case in `send_one`).
        props.push(("Diagnostic-Id", tp));
    }
    props.push(("mlops-relay-action-kind", message.label.as_str()));
    props
}

/// Sends relay messages to Service Bus queues over REST. Cheap to share (`Arc`); holds one HTTP client.
pub struct ServiceBusSender {
    namespace: String,
    endpoint: String,
    http: reqwest::Client,
    auth: ServiceBusAuth,
    entity_path: Option<String>,
    retry: RetryPolicy,
    request_timeout: Duration,
    time_to_live: Option<Duration>,
    // A cache only: two concurrent misses both fetch a token, and either result is valid.
    token: RwLock<Option<AccessToken>>,
}

impl fmt::Debug for ServiceBusSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBusSender")
            .field("namespace", &self.namespace)
            .field("endpoint", &self.endpoint)
            .field("auth", &self.auth)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// How one attempt ended, when it did not succeed.
enum Failure {
    /// Worth another attempt; `retry_after` is the server's wish.
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Give up now, as transient: a retry later (redelivery) may succeed, one in seconds will not.
    TransientNow(String),
    /// Give up now: retrying cannot help.
    Permanent(String),
    /// Give up on this message: the queue refuses what it holds, and takes others.
    Rejected(String),
}

impl ServiceBusSender {
    /// A sender for `namespace` (fully qualified, e.g. `sb-mlops.servicebus.windows.net`).
    pub fn new(
        namespace: &str,
        auth: ServiceBusAuth,
        options: SenderOptions,
    ) -> Result<ServiceBusSender, ConfigError> {
        let namespace = normalise_namespace(namespace).map_err(|message| ConfigError {
            setting: "ServiceBusConnection__fullyQualifiedNamespace",
            message,
        })?;
        let mut endpoint = options
            .endpoint
            .unwrap_or_else(|| format!("https://{namespace}/"));
        if !endpoint.ends_with('/') {
            endpoint.push('/');
        }
        let http = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(options.connect_timeout)
            .build()
            .map_err(|e| ConfigError {
                setting: "ServiceBusConnection",
                message: format!("could not build the HTTP client: {e}"),
            })?;
        Ok(ServiceBusSender {
            namespace,
            endpoint,
            http,
            auth,
            entity_path: None,
            retry: RetryPolicy {
                attempts: options.retry.attempts.max(1),
                ..options.retry
            },
            request_timeout: options.request_timeout,
            time_to_live: options.time_to_live,
            token: RwLock::new(None),
        })
    }

    /// A SAS sender from `Endpoint=sb://..;SharedAccessKeyName=..;SharedAccessKey=..[;EntityPath=..]`.
    pub fn from_connection_string(text: &str) -> Result<ServiceBusSender, ConfigError> {
        Self::from_connection_string_with(text, SenderOptions::default())
    }

    /// [`ServiceBusSender::from_connection_string`] with options.
    pub fn from_connection_string_with(
        text: &str,
        options: SenderOptions,
    ) -> Result<ServiceBusSender, ConfigError> {
        Self::with_key(ServiceBusConnectionString::parse(text)?, options)
    }

    fn with_key(
        cs: ServiceBusConnectionString,
        options: SenderOptions,
    ) -> Result<ServiceBusSender, ConfigError> {
        let auth = ServiceBusAuth::Sas {
            key_name: cs.key_name,
            key: cs.key,
        };
        let mut sender = Self::new(&cs.namespace, auth, options)?;
        sender.entity_path = cs.entity_path;
        Ok(sender)
    }

    /// The sender the settings describe; `env` chooses the Entra credential (see [`credential_from_env`]).
    /// The settings' `time_to_live` wins over the options'.
    pub fn from_settings(
        settings: &ServiceBusSettings,
        env: impl Fn(&str) -> Option<String>,
        mut options: SenderOptions,
    ) -> Result<ServiceBusSender, ConfigError> {
        options.time_to_live = settings.time_to_live.or(options.time_to_live);
        match &settings.auth {
            ServiceBusAuthSetting::ConnectionString(cs) => Self::with_key(cs.clone(), options),
            ServiceBusAuthSetting::Identity { client_id } => {
                let credential = credential_from_env(env, client_id.as_deref())?;
                Self::new(
                    &settings.namespace,
                    ServiceBusAuth::Token(credential),
                    options,
                )
            }
        }
    }

    /// The fully-qualified namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The base URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends `message` to become visible at `at` (`ScheduledEnqueueTimeUtc`): delayed retries.
    pub async fn send_scheduled(
        &self,
        message: &OutboundMessage,
        at: DateTime<Utc>,
    ) -> Result<Sent, PortError> {
        self.send_one(message, Some(at)).await
    }

    /// Sends `messages` to `queue` in one request (Send Message Batch). Every message must name `queue`.
    /// The whole batch is accepted or refused; Service Bus limits a batch to the queue's maximum message
    /// size (256 KB on Standard).
    pub async fn send_batch(
        &self,
        queue: &str,
        messages: &[OutboundMessage],
    ) -> Result<(), PortError> {
        if messages.is_empty() {
            return Ok(());
        }
        if let Some(other) = messages.iter().find(|m| m.queue != queue) {
            return Err(PortError::Permanent(format!(
                "a batch for queue `{queue}` holds message {} for queue `{}`",
                other.message_id, other.queue
            )));
        }
        let entries = messages
            .iter()
            .map(|m| {
                let user: serde_json::Map<String, serde_json::Value> = application_properties(m)
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.into()))
                    .collect();
                serde_json::json!({
                    "Body": m.body,
                    "BrokerProperties": self.broker_properties(m, None),
                    "UserProperties": user,
                })
            })
            .collect::<Vec<_>>();
        let body = serde_json::to_vec(&entries).expect("JSON values serialise");
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(BATCH_CONTENT_TYPE));
        self.post(queue, headers, body).await?;
        tracing::debug!(queue, count = messages.len(), namespace = %self.namespace, "batch sent to Service Bus");
        Ok(())
    }

    fn broker_properties<'a>(
        &self,
        message: &'a OutboundMessage,
        scheduled: Option<DateTime<Utc>>,
    ) -> BrokerProperties<'a> {
        BrokerProperties {
            message_id: &message.message_id,
            correlation_id: &message.correlation_id,
            session_id: message.session_id.as_deref().map(session_id),
            label: &message.label,
            scheduled_enqueue_time_utc: scheduled.map(rfc1123),
            time_to_live: self.time_to_live.map(|d| d.as_secs().max(1)),
        }
    }

    async fn send_one(
        &self,
        message: &OutboundMessage,
        scheduled: Option<DateTime<Utc>>,
    ) -> Result<Sent, PortError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(MESSAGE_CONTENT_TYPE));
        let broker = ascii_json(
            serde_json::to_string(&self.broker_properties(message, scheduled))
                .expect("broker properties serialise"),
        );
        headers.insert(
            "BrokerProperties",
            header_value("BrokerProperties", &broker)?,
        );
        for (name, value) in application_properties(message) {
            // REST carries a string application property as a JSON-quoted header value (unquoted strings
            // are refused with 400). The client sends header names in lower case, as HTTP/2 would: if
            // Service Bus keeps the case it receives, the property arrives as `diagnostic-id`; the batch
            // body keeps `Diagnostic-Id` exactly.
            let quoted = ascii_json(serde_json::to_string(value).expect("strings serialise"));
            let header = HeaderName::from_bytes(name.as_bytes())
                .expect("application property names are valid header names");
            headers.insert(header, header_value(name, &quoted)?);
        }
        self.post(&message.queue, headers, message.body.clone().into_bytes())
            .await?;
        tracing::debug!(
            queue = %message.queue,
            message_id = %message.message_id,
            scheduled = ?scheduled,
            namespace = %self.namespace,
            "sent to Service Bus"
        );
        // 201 also when duplicate detection dropped it: REST cannot tell, so "accepted" it is.
        Ok(Sent::New)
    }

    /// POSTs to `{endpoint}{queue}/messages`, retrying what may pass on a second try.
    async fn post(&self, queue: &str, headers: HeaderMap, body: Vec<u8>) -> Result<(), PortError> {
        if let Some(entity) = &self.entity_path
            && entity != queue
        {
            return Err(PortError::Permanent(format!(
                "the Service Bus connection string is scoped to queue `{entity}` (EntityPath) and cannot send to `{queue}`: use a namespace-level key or an identity"
            )));
        }
        let server_timeout = self.request_timeout.as_secs_f64().ceil().max(1.0) as u64;
        let url = format!(
            "{}{}/messages?api-version={API_VERSION}&timeout={server_timeout}",
            self.endpoint,
            queue_path(queue)
        );
        let resource = format!("https://{}/{}", self.namespace, queue_path(queue));
        let attempts = self.retry.attempts;
        let mut attempt = 1;
        loop {
            let authorization = self.authorization(&resource).await?;
            let mut request_headers = headers.clone();
            request_headers.insert(
                AUTHORIZATION,
                header_value("Authorization", &authorization)?,
            );
            let result = self
                .http
                .post(&url)
                .headers(request_headers)
                .body(body.clone())
                .send()
                .await;
            let failure = match result {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => self.classify(queue, response).await,
                Err(e) if e.is_builder() => {
                    Failure::Permanent(format!("could not build the request to {url}: {e}"))
                }
                Err(e) if e.is_timeout() => Failure::Retryable {
                    reason: format!("timed out after {:?}", self.request_timeout),
                    retry_after: None,
                },
                Err(e) if e.is_connect() => Failure::Retryable {
                    reason: format!("could not connect to {}: {e}", self.endpoint),
                    retry_after: None,
                },
                Err(e) => Failure::Retryable {
                    reason: format!("request failed: {e}"),
                    retry_after: None,
                },
            };
            let (reason, retry_after) = match failure {
                Failure::Permanent(message) => {
                    tracing::error!(queue, namespace = %self.namespace, %message, "Service Bus send failed permanently");
                    return Err(PortError::Permanent(message));
                }
                Failure::Rejected(message) => {
                    tracing::error!(queue, namespace = %self.namespace, %message, "Service Bus refused the message");
                    return Err(PortError::Rejected(message));
                }
                Failure::TransientNow(message) => {
                    tracing::warn!(queue, namespace = %self.namespace, %message, "Service Bus send failed; leaving the retry to redelivery");
                    return Err(PortError::Transient(message));
                }
                Failure::Retryable {
                    reason,
                    retry_after,
                } => (reason, retry_after),
            };
            let gave_up = |why: &str| {
                PortError::Transient(format!(
                    "Service Bus send to queue `{queue}` in {} failed after {attempt} attempt(s){why}: {reason}",
                    self.namespace
                ))
            };
            if attempt >= attempts {
                tracing::warn!(queue, namespace = %self.namespace, attempt, %reason, "Service Bus send failed; giving up as transient");
                return Err(gave_up(""));
            }
            let delay = match retry_after {
                Some(wait) if wait > self.retry.max_delay => {
                    tracing::warn!(queue, namespace = %self.namespace, attempt, ?wait, %reason, "Service Bus asks to wait longer than the retry budget; giving up as transient");
                    return Err(gave_up(&format!(" (Retry-After {}s)", wait.as_secs())));
                }
                Some(wait) => wait,
                None => self.retry.backoff(attempt),
            };
            tracing::warn!(
                queue,
                namespace = %self.namespace,
                attempt,
                of = attempts,
                delay_ms = delay.as_millis() as u64,
                %reason,
                "Service Bus send failed; retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// What a non-2xx answer means.
    async fn classify(&self, queue: &str, response: reqwest::Response) -> Failure {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = response.text().await.unwrap_or_default();
        let detail = excerpt(&body);
        let ns = &self.namespace;
        match status {
            StatusCode::UNAUTHORIZED => Failure::Permanent(format!(
                "Service Bus refused the credentials for queue `{queue}` in {ns} (401): grant the identity '{SENDER_ROLE}' on the namespace (or use a key with Send rights){detail}"
            )),
            StatusCode::FORBIDDEN if body.to_ascii_lowercase().contains("quota") => {
                Failure::TransientNow(format!(
                    "queue `{queue}` in {ns} is full (403 quota exceeded): its consumers must catch up{detail}"
                ))
            }
            StatusCode::FORBIDDEN if says_message_too_large(&body) => Failure::Rejected(format!(
                "the message is larger than queue `{queue}` in {ns} accepts (403){detail}"
            )),
            StatusCode::FORBIDDEN => Failure::Permanent(format!(
                "Service Bus forbade the send to queue `{queue}` in {ns} (403): grant the identity '{SENDER_ROLE}' on the namespace; a message over the size limit also gives 403{detail}"
            )),
            StatusCode::NOT_FOUND | StatusCode::GONE => Failure::Permanent(format!(
                "queue `{queue}` does not exist in namespace {ns} ({}): create it (the relay uses retrain-requests, deploy-requests, notifications) or fix the namespace{detail}",
                status.as_u16()
            )),
            StatusCode::PAYLOAD_TOO_LARGE => Failure::Rejected(format!(
                "the message is larger than queue `{queue}` in {ns} accepts (413){detail}"
            )),
            StatusCode::BAD_REQUEST => Failure::Rejected(format!(
                "Service Bus rejected the message for queue `{queue}` in {ns} (400; a session-enabled queue needs a SessionId){detail}"
            )),
            s if s == StatusCode::REQUEST_TIMEOUT
                || s == StatusCode::TOO_MANY_REQUESTS
                || s.is_server_error() =>
            {
                Failure::Retryable {
                    reason: format!("{s}{detail}"),
                    retry_after,
                }
            }
            s => Failure::Permanent(format!(
                "unexpected answer from Service Bus for queue `{queue}` in {ns}: {s}{detail}"
            )),
        }
    }

    /// The `Authorization` value for a request on `resource`.
    async fn authorization(&self, resource: &str) -> Result<String, PortError> {
        match &self.auth {
            ServiceBusAuth::Sas { key_name, key } => Ok(sas_token(
                resource,
                key_name,
                key.secret(),
                Utc::now().timestamp() + SAS_VALIDITY_SECS,
            )),
            ServiceBusAuth::Token(credential) => {
                let fresh = |t: &AccessToken| {
                    t.expires_on
                        > azure_core::time::OffsetDateTime::now_utc() + TOKEN_REFRESH_MARGIN
                };
                if let Some(token) = self.token.read().await.as_ref().filter(|t| fresh(t)) {
                    return Ok(format!("Bearer {}", token.token.secret()));
                }
                let token = credential
                    .get_token(&[SERVICE_BUS_SCOPE], None)
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, "could not get an Entra token for Service Bus");
                        PortError::Transient(format!(
                            "could not get an Entra token for {SERVICE_BUS_SCOPE} (on Azure: is a managed identity assigned? locally: `az login`): {e}"
                        ))
                    })?;
                let value = format!("Bearer {}", token.token.secret());
                *self.token.write().await = Some(token);
                Ok(value)
            }
        }
    }
}

#[async_trait::async_trait]
impl Queue for ServiceBusSender {
    /// Sends now. [`Sent::New`] means accepted: a resend that duplicate detection drops is also a 201.
    async fn send(&self, message: &OutboundMessage) -> Result<Sent, PortError> {
        self.send_one(message, None).await
    }
}

fn header_value(name: &str, value: &str) -> Result<HeaderValue, PortError> {
    HeaderValue::from_str(value).map_err(|_| {
        PortError::Permanent(format!(
            "the {name} header value `{value}` has characters HTTP headers cannot carry"
        ))
    })
}

/// `Retry-After`: delta seconds (possibly fractional) or an HTTP date.
fn parse_retry_after(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = DateTime::parse_from_rfc2822(text).ok()?.with_timezone(&Utc);
    Some((at - Utc::now()).to_std().unwrap_or_default())
}

/// Whether a 403's body says the message itself is too large (Service Bus answers 403 for "quota exceeded
/// or message too large", reference S20), not the queue full or the rights missing: that message would be
/// refused again, so it is Rejected (dead-lettered) rather than retried.
fn says_message_too_large(body: &str) -> bool {
    let b = body.to_ascii_lowercase();
    b.contains("messagesizeexceeded")
        || (b.contains("message")
            && !b.contains("entity")
            && (b.contains("too large") || (b.contains("size") && b.contains("exceeds the limit"))))
}

/// `: <first BODY_EXCERPT chars of the body>`, or nothing for an empty body.
fn excerpt(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return String::new();
    }
    let cut: String = body.chars().take(BODY_EXCERPT).collect();
    let ellipsis = if cut.len() < body.len() { "…" } else { "" };
    format!(": {cut}{ellipsis}")
}
