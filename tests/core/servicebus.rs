//! The Service Bus sender against a local HTTP server that records every request and answers from a script:
//! the exact request the REST documentation specifies (reference §6.3: path, api-version, BrokerProperties,
//! application-property headers, Authorization, body), how each answer is classified, the settings, and a
//! live send when a namespace is configured.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::time::OffsetDateTime;
use base64::Engine as _;
use chrono::{TimeZone, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use mlops_relay::adapters::servicebus::{
    API_VERSION, CredentialChoice, RetryPolicy, SERVICE_BUS_SCOPE, SenderOptions, ServiceBusAuth,
    ServiceBusAuthSetting, ServiceBusConnectionString, ServiceBusSender, ServiceBusSettings,
    credential_from_env, rfc1123, sas_token,
};
use mlops_relay::ports::{OutboundMessage, PortError, Queue, Sent};

const NAMESPACE: &str = "sb-mlops.servicebus.windows.net";
const KEY_NAME: &str = "RootManageSharedAccessKey";
/// A made-up key in the shape of a real one (44 base64 characters).
const KEY: &str = "dGVzdC1rZXktbm90LWEtc2VjcmV0LTAxMjM0NTY3ODk=";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const BODY: &str = r#"{"action":{"action_id":"retrain-3f2a9c","kind":"retrain","model":"fraud"},"event_id":"831e1650-001e-001b-66ab-eeb76e069631"}"#;

// ---------------------------------------------------------------------------------------------------------
// A local Service Bus: records every request, answers from a script whose last reply repeats forever.

#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Recorded {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no `{name}` header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    fn query_map(&self) -> BTreeMap<String, String> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn broker_properties(&self) -> Value {
        serde_json::from_str(self.header("brokerproperties")).expect("BrokerProperties is JSON")
    }
}

#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
    delay: Duration,
}

impl Reply {
    fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: "",
            delay: Duration::ZERO,
        }
    }
    fn header(mut self, name: &'static str, value: &'static str) -> Reply {
        self.headers.push((name, value));
        self
    }
    fn body(mut self, body: &'static str) -> Reply {
        self.body = body;
        self
    }
    fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

struct Shared {
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<VecDeque<Reply>>,
}

struct MockServiceBus {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl MockServiceBus {
    async fn start(script: Vec<Reply>) -> MockServiceBus {
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            script: Mutex::new(script.into()),
        });
        let app = Router::new().fallback(answer).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        MockServiceBus { addr, shared }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    fn only_request(&self) -> Recorded {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "expected exactly one request");
        requests.into_iter().next().unwrap()
    }
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.requests.lock().unwrap().push(Recorded {
        method,
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        headers,
        body,
    });
    let reply = {
        let mut script = shared.script.lock().unwrap();
        if script.len() > 1 {
            script.pop_front().unwrap()
        } else {
            script.front().cloned().unwrap_or(Reply::status(201))
        }
    };
    tokio::time::sleep(reply.delay).await;
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    for (name, value) in reply.headers {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

// ---------------------------------------------------------------------------------------------------------
// Builders.

/// Short timeouts and backoff so the failure tests take milliseconds, not seconds.
fn fast_options(endpoint: String) -> SenderOptions {
    SenderOptions {
        endpoint: Some(endpoint),
        request_timeout: Duration::from_millis(400),
        connect_timeout: Duration::from_millis(400),
        retry: RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(100),
        },
        time_to_live: None,
    }
}

fn sas_sender_with(options: SenderOptions) -> ServiceBusSender {
    ServiceBusSender::new(
        NAMESPACE,
        ServiceBusAuth::Sas {
            key_name: KEY_NAME.into(),
            key: Secret::new(KEY),
        },
        options,
    )
    .unwrap()
}

fn sas_sender(bus: &MockServiceBus) -> ServiceBusSender {
    sas_sender_with(fast_options(bus.endpoint()))
}

fn message() -> OutboundMessage {
    OutboundMessage {
        queue: "retrain-requests".into(),
        message_id: "retrain-3f2a9c".into(),
        correlation_id: "831e1650-001e-001b-66ab-eeb76e069631".into(),
        session_id: Some("fraud".into()),
        label: "retrain".into(),
        traceparent: Some(TRACEPARENT.into()),
        body: BODY.into(),
    }
}

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// Checks a `SharedAccessSignature` header by recomputing it from the documented algorithm; returns its fields.
fn assert_valid_sas(authorization: &str, resource: &str) -> BTreeMap<String, String> {
    let fields: BTreeMap<String, String> = authorization
        .strip_prefix("SharedAccessSignature ")
        .unwrap_or_else(|| panic!("not a SAS: {authorization}"))
        .split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    assert_eq!(
        fields.keys().collect::<Vec<_>>(),
        ["se", "sig", "skn", "sr"],
        "exactly sr, sig, se, skn"
    );
    assert_eq!(percent_decode(&fields["sr"]), resource);
    assert_eq!(fields["skn"], KEY_NAME);
    let expiry: i64 = fields["se"].parse().unwrap();
    let ahead = expiry - Utc::now().timestamp();
    assert!(
        (3500..=3600).contains(&ahead),
        "valid for an hour, is {ahead}s"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(format!("{}\n{}", fields["sr"], fields["se"]).as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(percent_decode(&fields["sig"]), expected, "signature");
    fields
}

/// A credential that hands out `token-1`, `token-2`, … each valid for `lifetime`, and counts the calls.
#[derive(Debug)]
struct FixedToken {
    lifetime: azure_core::time::Duration,
    calls: AtomicUsize,
    scopes: Mutex<Vec<String>>,
}

impl FixedToken {
    fn valid_for(lifetime: azure_core::time::Duration) -> Arc<FixedToken> {
        Arc::new(FixedToken {
            lifetime,
            calls: AtomicUsize::new(0),
            scopes: Mutex::new(Vec::new()),
        })
    }
}

#[async_trait::async_trait]
impl TokenCredential for FixedToken {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.scopes
            .lock()
            .unwrap()
            .extend(scopes.iter().map(|s| s.to_string()));
        Ok(AccessToken::new(
            format!("token-{n}"),
            OffsetDateTime::now_utc() + self.lifetime,
        ))
    }
}

#[derive(Debug)]
struct NoCredential;

#[async_trait::async_trait]
impl TokenCredential for NoCredential {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Err(azure_core::Error::with_message(
            azure_core::error::ErrorKind::Credential,
            "Please run 'az login' to set up an account",
        ))
    }
}

fn transient(result: Result<impl std::fmt::Debug, PortError>) -> String {
    match result {
        Err(PortError::Transient(m)) => m,
        other => panic!("expected a transient error, got {other:?}"),
    }
}

fn permanent(result: Result<impl std::fmt::Debug, PortError>) -> String {
    match result {
        Err(PortError::Permanent(m)) => m,
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------
// The request.

#[tokio::test]
async fn send_posts_the_documented_request_with_every_property() {
    let bus = MockServiceBus::start(vec![Reply::status(201)]).await;
    let sender = sas_sender(&bus);

    let sent = sender.send(&message()).await.unwrap();

    assert_eq!(
        sent,
        Sent::New,
        "201 is 'accepted' (a dropped duplicate is 201 too)"
    );
    let request = bus.only_request();
    assert_eq!(request.method, Method::POST);
    assert_eq!(request.path, "/retrain-requests/messages");
    assert_eq!(
        request.query_map(),
        BTreeMap::from([
            ("api-version".to_string(), API_VERSION.to_string()),
            ("timeout".to_string(), "1".to_string()),
        ]),
        "api-version, and the server-side timeout in whole seconds (400 ms rounds up to 1)"
    );
    assert_eq!(API_VERSION, "2015-01");
    assert_eq!(
        request.broker_properties(),
        json!({
            "MessageId": "retrain-3f2a9c",
            "CorrelationId": "831e1650-001e-001b-66ab-eeb76e069631",
            "SessionId": "fraud",
            "Label": "retrain",
        }),
        "exactly these broker properties: no schedule, no TTL unless asked"
    );
    assert_eq!(
        request.header("content-type"),
        "application/json;charset=utf-8"
    );
    // Application properties: one header each, string values JSON-quoted as the REST API requires.
    assert_eq!(request.header("traceparent"), format!("\"{TRACEPARENT}\""));
    assert_eq!(
        request.header("diagnostic-id"),
        format!("\"{TRACEPARENT}\"")
    );
    assert_eq!(request.header("mlops-relay-action-kind"), "\"retrain\"");
    assert_valid_sas(
        request.header("authorization"),
        "https://sb-mlops.servicebus.windows.net/retrain-requests",
    );
    assert_eq!(
        request.body,
        BODY.as_bytes(),
        "the body is sent byte for byte"
    );
    assert!(
        request.headers.get("x-ms-retrypolicy").is_none(),
        "server-side retries stay on"
    );
}

#[tokio::test]
async fn message_without_session_or_trace_omits_them() {
    let bus = MockServiceBus::start(vec![Reply::status(201)]).await;
    let sender = sas_sender(&bus);
    let m = OutboundMessage {
        queue: "notifications".into(),
        session_id: None,
        traceparent: None,
        label: "notify".into(),
        ..message()
    };

    sender.send(&m).await.unwrap();

    let request = bus.only_request();
    assert_eq!(request.path, "/notifications/messages");
    assert_eq!(
        request.broker_properties(),
        json!({
            "MessageId": "retrain-3f2a9c",
            "CorrelationId": "831e1650-001e-001b-66ab-eeb76e069631",
            "Label": "notify",
        })
    );
    assert!(request.headers.get("traceparent").is_none());
    assert!(request.headers.get("diagnostic-id").is_none());
    assert_eq!(request.header("mlops-relay-action-kind"), "\"notify\"");
    assert_valid_sas(
        request.header("authorization"),
        "https://sb-mlops.servicebus.windows.net/notifications",
    );
}

#[tokio::test]
async fn scheduled_send_sets_the_enqueue_time_in_rfc_1123() {
    let bus = MockServiceBus::start(vec![Reply::status(201)]).await;
    let sender = sas_sender(&bus);
    let at = Utc.with_ymd_and_hms(2024, 6, 16, 2, 0, 0).unwrap();

    let sent = sender.send_scheduled(&message(), at).await.unwrap();

    assert_eq!(sent, Sent::New);
    let broker = bus.only_request().broker_properties();
    assert_eq!(
        broker["ScheduledEnqueueTimeUtc"],
        "Sun, 16 Jun 2024 02:00:00 GMT"
    );
    assert_eq!(broker["MessageId"], "retrain-3f2a9c");
    assert_eq!(
        rfc1123(Utc.with_ymd_and_hms(2026, 1, 5, 9, 3, 7).unwrap()),
        "Mon, 05 Jan 2026 09:03:07 GMT",
        "two-digit day, English names, GMT"
    );
}

#[tokio::test]
async fn time_to_live_is_sent_in_seconds_when_configured() {
    let bus = MockServiceBus::start(vec![Reply::status(201)]).await;
    let sender = sas_sender_with(SenderOptions {
        time_to_live: Some(Duration::from_secs(24 * 3600)),
        ..fast_options(bus.endpoint())
    });

    sender.send(&message()).await.unwrap();

    assert_eq!(
        bus.only_request().broker_properties()["TimeToLive"],
        json!(86400)
    );
}

#[tokio::test]
async fn batch_posts_a_json_array_with_broker_and_user_properties() {
    let bus = MockServiceBus::start(vec![Reply::status(201)]).await;
    let sender = sas_sender(&bus);
    let second = OutboundMessage {
        message_id: "retrain-77b1e0".into(),
        correlation_id: "9d1c0b2e".into(),
        session_id: None,
        traceparent: None,
        body: "{\"n\":2}".into(),
        ..message()
    };

    sender
        .send_batch("retrain-requests", &[message(), second])
        .await
        .unwrap();

    let request = bus.only_request();
    assert_eq!(request.path, "/retrain-requests/messages");
    assert_eq!(request.query_map()["api-version"], API_VERSION);
    assert_eq!(
        request.header("content-type"),
        "application/vnd.microsoft.servicebus.json",
        "without charset, as the batch documentation asks"
    );
    assert!(
        request.headers.get("brokerproperties").is_none(),
        "per message, in the body"
    );
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        body,
        json!([
            {
                "Body": BODY,
                "BrokerProperties": {
                    "MessageId": "retrain-3f2a9c",
                    "CorrelationId": "831e1650-001e-001b-66ab-eeb76e069631",
                    "SessionId": "fraud",
                    "Label": "retrain",
                },
                "UserProperties": {
                    "traceparent": TRACEPARENT,
                    "Diagnostic-Id": TRACEPARENT,
                    "mlops-relay-action-kind": "retrain",
                },
            },
            {
                "Body": "{\"n\":2}",
                "BrokerProperties": {
                    "MessageId": "retrain-77b1e0",
                    "CorrelationId": "9d1c0b2e",
                    "Label": "retrain",
                },
                "UserProperties": { "mlops-relay-action-kind": "retrain" },
            },
        ])
    );
    assert_valid_sas(
        request.header("authorization"),
        "https://sb-mlops.servicebus.windows.net/retrain-requests",
    );
}

#[tokio::test]
async fn batch_refuses_a_message_for_another_queue_and_sends_nothing_for_none() {
    let bus = MockServiceBus::start(vec![Reply::status(201)]).await;
    let sender = sas_sender(&bus);

    sender.send_batch("retrain-requests", &[]).await.unwrap();
    let m = OutboundMessage {
        queue: "deploy-requests".into(),
        ..message()
    };
    let e = permanent(sender.send_batch("retrain-requests", &[m]).await);

    assert!(e.contains("deploy-requests"), "{e}");
    assert!(bus.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------------------
// Authorization.

#[test]
fn sas_token_matches_a_known_vector() {
    // Derived independently with Python's standard library, following the documented algorithm:
    //   uri = urllib.parse.quote_plus("https://sb-mlops.servicebus.windows.net/retrain-requests")
    //   sig = base64.b64encode(hmac.HMAC(KEY.encode("utf-8"), (uri + "\n" + "1718503200").encode("utf-8"),
    //                                    hashlib.sha256).digest())       # 0mwh6Z/GzNrEbnBzREdGT4d5LTTlxks9S0pYCyLh2tg=
    //   "SharedAccessSignature sr={}&sig={}&se={}&skn={}".format(uri, urllib.parse.quote_plus(sig), ...)
    assert_eq!(
        sas_token(
            "https://sb-mlops.servicebus.windows.net/retrain-requests",
            KEY_NAME,
            KEY,
            1_718_503_200
        ),
        "SharedAccessSignature sr=https%3A%2F%2Fsb-mlops.servicebus.windows.net%2Fretrain-requests\
         &sig=0mwh6Z%2FGzNrEbnBzREdGT4d5LTTlxks9S0pYCyLh2tg%3D&se=1718503200&skn=RootManageSharedAccessKey"
    );
}

#[tokio::test]
async fn bearer_token_is_requested_for_the_service_bus_scope_and_cached() {
    let bus = MockServiceBus::start(vec![Reply::status(201)]).await;
    let credential = FixedToken::valid_for(azure_core::time::Duration::hours(1));
    let sender = ServiceBusSender::new(
        NAMESPACE,
        ServiceBusAuth::Token(credential.clone()),
        fast_options(bus.endpoint()),
    )
    .unwrap();

    sender.send(&message()).await.unwrap();
    sender.send(&message()).await.unwrap();

    let requests = bus.requests();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert_eq!(r.header("authorization"), "Bearer token-1");
    }
    assert_eq!(
        credential.calls.load(Ordering::SeqCst),
        1,
        "the second send reuses the token"
    );
    assert_eq!(
        *credential.scopes.lock().unwrap(),
        ["https://servicebus.azure.net/.default"]
    );
    assert_eq!(SERVICE_BUS_SCOPE, "https://servicebus.azure.net/.default");
}

#[tokio::test]
async fn token_within_five_minutes_of_expiry_is_renewed() {
    let bus = MockServiceBus::start(vec![Reply::status(201)]).await;
    let credential = FixedToken::valid_for(azure_core::time::Duration::minutes(4));
    let sender = ServiceBusSender::new(
        NAMESPACE,
        ServiceBusAuth::Token(credential.clone()),
        fast_options(bus.endpoint()),
    )
    .unwrap();

    sender.send(&message()).await.unwrap();
    sender.send(&message()).await.unwrap();

    let auth: Vec<String> = bus
        .requests()
        .iter()
        .map(|r| r.header("authorization").to_string())
        .collect();
    assert_eq!(auth, ["Bearer token-1", "Bearer token-2"]);
}

#[tokio::test]
async fn credential_failure_is_transient_and_sends_nothing() {
    let bus = MockServiceBus::start(vec![Reply::status(201)]).await;
    let sender = ServiceBusSender::new(
        NAMESPACE,
        ServiceBusAuth::Token(Arc::new(NoCredential)),
        fast_options(bus.endpoint()),
    )
    .unwrap();

    let e = transient(sender.send(&message()).await);

    assert!(e.contains("az login"), "{e}");
    assert!(bus.requests().is_empty());
}

#[test]
fn debug_output_never_shows_the_key() {
    let sender = ServiceBusSender::from_connection_string(&format!(
        "Endpoint=sb://{NAMESPACE}/;SharedAccessKeyName={KEY_NAME};SharedAccessKey={KEY}"
    ))
    .unwrap();
    let cs = ServiceBusConnectionString::parse(&format!(
        "Endpoint=sb://{NAMESPACE}/;SharedAccessKeyName={KEY_NAME};SharedAccessKey={KEY}"
    ))
    .unwrap();

    for text in [format!("{sender:?}"), format!("{cs:?}")] {
        assert!(!text.contains(KEY), "{text}");
        assert!(text.contains(KEY_NAME), "{text}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Answers: configuration errors fail at once, passing trouble is retried then surfaced as transient.

#[tokio::test]
async fn unauthorized_fails_at_once_naming_the_role() {
    let bus = MockServiceBus::start(vec![
        Reply::status(401).body("<Error><Code>401</Code><Detail>InvalidSignature</Detail></Error>"),
    ])
    .await;

    let e = permanent(sas_sender(&bus).send(&message()).await);

    assert!(e.contains("Azure Service Bus Data Sender"), "{e}");
    assert!(
        e.contains("InvalidSignature"),
        "the server's detail is kept: {e}"
    );
    assert_eq!(bus.requests().len(), 1, "not retried");
}

#[tokio::test]
async fn forbidden_fails_at_once_naming_the_role() {
    let bus = MockServiceBus::start(vec![Reply::status(403)]).await;

    let e = permanent(sas_sender(&bus).send(&message()).await);

    assert!(
        e.contains("grant the identity 'Azure Service Bus Data Sender' on the namespace"),
        "{e}"
    );
    assert_eq!(bus.requests().len(), 1);
}

#[tokio::test]
async fn full_queue_is_transient_without_retrying_now() {
    let bus = MockServiceBus::start(vec![Reply::status(403).body(
        "<Error><Code>403</Code><Detail>QuotaExceeded: the maximum entity size has been reached</Detail></Error>",
    )])
    .await;

    let e = transient(sas_sender(&bus).send(&message()).await);

    assert!(e.contains("full"), "{e}");
    assert_eq!(bus.requests().len(), 1, "seconds will not drain a queue");
}

#[tokio::test]
async fn missing_queue_fails_at_once_naming_queue_and_namespace() {
    for status in [404, 410] {
        let bus = MockServiceBus::start(vec![Reply::status(status)]).await;

        let e = permanent(sas_sender(&bus).send(&message()).await);

        assert!(
            e.contains(
                "queue `retrain-requests` does not exist in namespace sb-mlops.servicebus.windows.net"
            ),
            "{e}"
        );
        assert_eq!(bus.requests().len(), 1);
    }
}

#[tokio::test]
async fn bad_request_and_too_large_reject_the_message_at_once() {
    // The queue refuses this message and would refuse it again; others pass. The executor dead-letters a
    // rejected action, where a permanent error fails the trigger (configuration, fixed by an operator).
    for status in [400, 413] {
        let bus = MockServiceBus::start(vec![Reply::status(status)]).await;

        let reason = match sas_sender(&bus).send(&message()).await {
            Err(PortError::Rejected(m)) => m,
            other => panic!("expected a rejected message, got {other:?}"),
        };

        assert!(reason.contains(&format!("({status}")), "{reason}");
        assert_eq!(bus.requests().len(), 1, "{status} is not retried");
    }
}

#[tokio::test]
async fn a_403_that_says_the_message_is_too_large_rejects_it() {
    // Service Bus answers 403 for "quota exceeded or message too large" (reference S20).
    let bus = MockServiceBus::start(vec![Reply::status(403).body(
        "<Error><Code>403</Code><Detail>The received message (delivery-id:0, size:262870 bytes) exceeds the limit (262144 bytes) currently allowed on the link.</Detail></Error>",
    )])
    .await;
    match sas_sender(&bus).send(&message()).await {
        Err(PortError::Rejected(m)) => assert!(m.contains("(403)"), "{m}"),
        other => panic!("expected a rejected message, got {other:?}"),
    }
    assert_eq!(bus.requests().len(), 1);
}

#[tokio::test]
async fn a_model_name_over_128_characters_gets_a_session_id_service_bus_takes() {
    // Azure ML takes model names of up to 255 characters; Service Bus refuses a SessionId over 128 (400).
    let long = format!("{}-model", "fraud".repeat(40));
    let other = format!("{}-other", "fraud".repeat(40));
    let bus = MockServiceBus::start(vec![Reply::status(201)]).await;
    let sender = sas_sender(&bus);
    for model in [&long, &long, &other, &"f".repeat(128)] {
        let mut m = message();
        m.session_id = Some(model.clone());
        sender.send(&m).await.unwrap();
    }

    let ids: Vec<String> = bus
        .requests()
        .iter()
        .map(|r| {
            r.broker_properties()["SessionId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(ids.iter().all(|id| id.chars().count() <= 128), "{ids:?}");
    assert_eq!(ids[0], ids[1], "the same model is the same session");
    assert_ne!(
        ids[0], ids[2],
        "names sharing their first 111 characters are distinct sessions"
    );
    assert!(ids[0].starts_with(&long[..111]), "{}", ids[0]);
    assert_eq!(
        ids[3],
        "f".repeat(128),
        "a name within the limit is kept as it is"
    );
    assert_eq!(mlops_relay::adapters::servicebus::session_id(&long), ids[0]);
}

#[tokio::test]
async fn non_ascii_properties_are_sent_as_json_escapes() {
    // An HTTP header carries printable ASCII only: a CloudEvents id or model name with other characters
    // used to fail before sending. JSON escapes carry the same text.
    let bus = MockServiceBus::start(vec![Reply::status(201)]).await;
    let mut m = message();
    m.correlation_id = "drift-café-😀".into();
    m.session_id = Some("modèle".into());
    m.label = "retrain\u{7f}".into();

    sas_sender(&bus).send(&m).await.unwrap();

    let request = bus.only_request();
    assert!(request.header("brokerproperties").is_ascii());
    let broker = request.broker_properties();
    assert_eq!(broker["CorrelationId"], "drift-café-😀");
    assert_eq!(broker["SessionId"], "modèle");
    assert_eq!(broker["Label"], "retrain\u{7f}");
    let kind: String = serde_json::from_str(request.header("mlops-relay-action-kind")).unwrap();
    assert_eq!(kind, "retrain\u{7f}");
}

#[tokio::test]
async fn unavailable_twice_then_created_is_retried_with_the_same_message() {
    let bus = MockServiceBus::start(vec![
        Reply::status(503),
        Reply::status(503),
        Reply::status(201),
    ])
    .await;

    let sent = sas_sender(&bus).send(&message()).await.unwrap();

    assert_eq!(sent, Sent::New);
    let requests = bus.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests {
        assert_eq!(
            r.broker_properties()["MessageId"],
            "retrain-3f2a9c",
            "a resend keeps its MessageId, so duplicate detection can absorb it"
        );
        assert_eq!(r.body, BODY.as_bytes());
    }
}

#[tokio::test]
async fn throttled_with_retry_after_is_retried() {
    let bus = MockServiceBus::start(vec![
        Reply::status(429).header("retry-after", "0"),
        Reply::status(201),
    ])
    .await;

    let sent = sas_sender(&bus).send(&message()).await.unwrap();

    assert_eq!(sent, Sent::New);
    assert_eq!(bus.requests().len(), 2);
}

#[tokio::test]
async fn retry_after_beyond_the_budget_gives_up_at_once_as_transient() {
    let bus = MockServiceBus::start(vec![Reply::status(503).header("retry-after", "120")]).await;
    let started = Instant::now();

    let e = transient(sas_sender(&bus).send(&message()).await);

    assert!(e.contains("Retry-After 120s"), "{e}");
    assert_eq!(bus.requests().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn always_unavailable_surfaces_as_transient_after_the_retries() {
    let bus = MockServiceBus::start(vec![Reply::status(503)]).await;

    let e = transient(sas_sender(&bus).send(&message()).await);

    assert_eq!(bus.requests().len(), 3, "three attempts in all");
    assert!(e.contains("after 3 attempt(s)"), "{e}");
    assert!(e.contains("503"), "{e}");
    assert!(e.contains("retrain-requests"), "{e}");
}

#[tokio::test]
async fn server_errors_and_request_timeout_are_retried() {
    for status in [500, 408] {
        let bus = MockServiceBus::start(vec![Reply::status(status), Reply::status(201)]).await;

        assert_eq!(sas_sender(&bus).send(&message()).await.unwrap(), Sent::New);
        assert_eq!(bus.requests().len(), 2, "{status} is retried");
    }
}

#[tokio::test]
async fn response_slower_than_the_timeout_is_transient() {
    let bus = MockServiceBus::start(vec![Reply::status(201).after(Duration::from_secs(3))]).await;
    let started = Instant::now();

    let e = transient(sas_sender(&bus).send(&message()).await);

    assert!(e.contains("timed out"), "{e}");
    assert_eq!(bus.requests().len(), 3, "each attempt timed out");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the client gave up, the server did not answer"
    );
}

#[tokio::test]
async fn unreachable_namespace_is_transient() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let sender = ServiceBusSender::new(
        NAMESPACE,
        ServiceBusAuth::Sas {
            key_name: KEY_NAME.into(),
            key: Secret::new(KEY),
        },
        fast_options(format!("http://{closed}/")),
    )
    .unwrap();

    let e = transient(sender.send(&message()).await);

    assert!(e.contains("could not connect"), "{e}");
}

#[tokio::test]
async fn a_key_scoped_to_one_queue_refuses_the_others_before_sending() {
    let bus = MockServiceBus::start(vec![Reply::status(201)]).await;
    let sender = ServiceBusSender::from_connection_string_with(
        &format!(
            "Endpoint=sb://{NAMESPACE}/;SharedAccessKeyName=send;SharedAccessKey={KEY};EntityPath=notifications"
        ),
        fast_options(bus.endpoint()),
    )
    .unwrap();

    let e = permanent(sender.send(&message()).await);

    assert!(e.contains("EntityPath"), "{e}");
    assert!(bus.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------------------
// Settings.

#[test]
fn settings_read_the_identity_based_connection() {
    let s = ServiceBusSettings::from_env(env(&[
        (
            "ServiceBusConnection__fullyQualifiedNamespace",
            "sb-mlops.servicebus.windows.net",
        ),
        (
            "ServiceBusConnection__clientId",
            "6f1e6a5c-0000-4000-8000-000000000001",
        ),
        ("AZURE_CLIENT_ID", "ignored-when-the-connection-names-one"),
    ]))
    .unwrap();

    assert_eq!(
        s,
        ServiceBusSettings {
            namespace: NAMESPACE.into(),
            auth: ServiceBusAuthSetting::Identity {
                client_id: Some("6f1e6a5c-0000-4000-8000-000000000001".into()),
            },
            time_to_live: None,
        }
    );
}

#[test]
fn settings_fall_back_to_azure_client_id_and_accept_a_url_form() {
    let s = ServiceBusSettings::from_env(env(&[
        (
            "ServiceBusConnection__fullyQualifiedNamespace",
            "sb://SB-MLOPS.servicebus.windows.net/",
        ),
        ("AZURE_CLIENT_ID", "uami-client-id"),
        ("RELAY_SERVICEBUS_MESSAGE_TTL", "1d"),
    ]))
    .unwrap();

    assert_eq!(s.namespace, NAMESPACE);
    assert_eq!(
        s.auth,
        ServiceBusAuthSetting::Identity {
            client_id: Some("uami-client-id".into())
        }
    );
    assert_eq!(s.time_to_live, Some(Duration::from_secs(86400)));
    let system_assigned = ServiceBusSettings::from_env(env(&[(
        "ServiceBusConnection__fullyQualifiedNamespace",
        NAMESPACE,
    )]))
    .unwrap();
    assert_eq!(
        system_assigned.auth,
        ServiceBusAuthSetting::Identity { client_id: None }
    );
}

#[test]
fn settings_take_a_connection_string_as_sas() {
    let s = ServiceBusSettings::from_env(env(&[
        (
            "ServiceBusConnection",
            format!(
                "Endpoint=sb://{NAMESPACE}/;SharedAccessKeyName={KEY_NAME};SharedAccessKey={KEY}"
            )
            .as_str(),
        ),
        (
            "ServiceBusConnection__fullyQualifiedNamespace",
            "other.servicebus.windows.net",
        ),
    ]))
    .unwrap();

    assert_eq!(s.namespace, NAMESPACE);
    let ServiceBusAuthSetting::ConnectionString(cs) = &s.auth else {
        panic!("expected SAS, got {:?}", s.auth)
    };
    assert_eq!(cs.key_name, KEY_NAME);
    assert_eq!(cs.key.secret(), KEY, "the key keeps its '=' padding");
    assert_eq!(cs.entity_path, None);
}

#[test]
fn settings_say_what_to_set_when_missing_or_malformed() {
    let e = ServiceBusSettings::from_env(env(&[])).unwrap_err();
    assert_eq!(e.setting, "ServiceBusConnection__fullyQualifiedNamespace");
    assert!(
        e.message
            .contains("ServiceBusConnection to a connection string"),
        "{e}"
    );
    assert!(e.message.contains("Azure Service Bus Data Sender"), "{e}");

    let e = ServiceBusSettings::from_env(env(&[(
        "ServiceBusConnection__fullyQualifiedNamespace",
        "sb-mlops",
    )]))
    .unwrap_err();
    assert!(e.message.contains("sb-mlops.servicebus.windows.net"), "{e}");

    let e = ServiceBusSettings::from_env(env(&[
        ("ServiceBusConnection__fullyQualifiedNamespace", NAMESPACE),
        ("RELAY_SERVICEBUS_MESSAGE_TTL", "forever"),
    ]))
    .unwrap_err();
    assert_eq!(e.setting, "RELAY_SERVICEBUS_MESSAGE_TTL");
}

#[test]
fn connection_string_errors_name_the_missing_part() {
    let cases = [
        ("SharedAccessKeyName=a;SharedAccessKey=b", "Endpoint"),
        (
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey=b",
            "SharedAccessKeyName",
        ),
        (
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=a",
            "SharedAccessKey=",
        ),
        (
            "Endpoint=sb://ns/;SharedAccessKeyName=a;SharedAccessKey=b",
            "fully qualified",
        ),
        ("just-a-key", "Name=value"),
        (
            "Endpoint=sb://localhost;SharedAccessKeyName=a;SharedAccessKey=b;UseDevelopmentEmulator=true",
            "emulator",
        ),
    ];
    for (text, expected) in cases {
        let e = ServiceBusConnectionString::parse(text).unwrap_err();
        assert_eq!(e.setting, "ServiceBusConnection");
        assert!(e.message.contains(expected), "{text}: {e}");
    }
}

#[test]
fn connection_string_keys_are_case_insensitive_and_entity_path_is_kept() {
    let cs = ServiceBusConnectionString::parse(
        "endpoint=sb://sb-mlops.servicebus.windows.net/;sharedaccesskeyname=send;sharedaccesskey=abc==;entitypath=notifications;",
    )
    .unwrap();

    assert_eq!(cs.namespace, NAMESPACE);
    assert_eq!(cs.key.secret(), "abc==");
    assert_eq!(cs.entity_path.as_deref(), Some("notifications"));
    let sender = ServiceBusSender::from_connection_string(
        "Endpoint=sb://sb-mlops.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=abc==",
    )
    .unwrap();
    assert_eq!(
        sender.endpoint(),
        "https://sb-mlops.servicebus.windows.net/"
    );
    assert_eq!(sender.namespace(), NAMESPACE);
}

#[test]
fn credential_choice_follows_the_environment() {
    assert_eq!(
        CredentialChoice::from_env(
            env(&[
                ("WEBSITE_INSTANCE_ID", "abc"),
                ("IDENTITY_ENDPOINT", "http://localhost:8081/msi/token"),
            ]),
            Some("uami")
        ),
        CredentialChoice::ManagedIdentity {
            client_id: Some("uami".into())
        },
        "Functions app: managed identity, user-assigned when named"
    );
    assert_eq!(
        CredentialChoice::from_env(env(&[("IDENTITY_ENDPOINT", "http://x")]), None),
        CredentialChoice::ManagedIdentity { client_id: None },
        "system-assigned"
    );
    assert_eq!(
        CredentialChoice::from_env(
            env(&[
                (
                    "AZURE_FEDERATED_TOKEN_FILE",
                    "/var/run/secrets/azure/tokens/azure-identity-token"
                ),
                ("AZURE_CLIENT_ID", "wi-client"),
                ("AZURE_TENANT_ID", "tenant"),
            ]),
            None
        ),
        CredentialChoice::WorkloadIdentity {
            client_id: Some("wi-client".into()),
            tenant_id: Some("tenant".into()),
            token_file: "/var/run/secrets/azure/tokens/azure-identity-token".into(),
        },
        "AKS workload identity"
    );
    assert_eq!(
        CredentialChoice::from_env(env(&[("AZURE_CLIENT_ID", "x")]), None),
        CredentialChoice::DeveloperTools,
        "a laptop: az / azd"
    );
}

#[test]
fn credentials_build_for_every_choice() {
    assert!(credential_from_env(env(&[]), None).is_ok());
    assert!(
        CredentialChoice::ManagedIdentity {
            client_id: Some("uami".into())
        }
        .build()
        .is_ok()
    );
    let e = CredentialChoice::WorkloadIdentity {
        client_id: Some("c".into()),
        tenant_id: Some("not a tenant".into()),
        token_file: "/var/run/secrets/azure/tokens/azure-identity-token".into(),
    }
    .build()
    .unwrap_err();
    assert_eq!(e.setting, "AZURE_FEDERATED_TOKEN_FILE");
    assert!(e.message.contains("invalid tenant ID"), "{e}");
}

#[test]
fn sender_from_identity_settings_uses_the_namespace() {
    let settings = ServiceBusSettings::from_env(env(&[(
        "ServiceBusConnection__fullyQualifiedNamespace",
        NAMESPACE,
    )]))
    .unwrap();

    let sender =
        ServiceBusSender::from_settings(&settings, env(&[]), SenderOptions::default()).unwrap();

    assert_eq!(
        sender.endpoint(),
        "https://sb-mlops.servicebus.windows.net/"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Live.

/// Sends one message to a real namespace when `SERVICEBUS_NAMESPACE` and `SERVICEBUS_QUEUE` are set, with
/// `SERVICEBUS_CONNECTION_STRING` (SAS) or else the environment's Entra credential (`az login` locally).
#[tokio::test]
async fn live_service_bus_send() {
    let (Some(namespace), Some(queue)) = (
        std::env::var("SERVICEBUS_NAMESPACE")
            .ok()
            .filter(|v| !v.is_empty()),
        std::env::var("SERVICEBUS_QUEUE")
            .ok()
            .filter(|v| !v.is_empty()),
    ) else {
        eprintln!(
            "\n==================== LIVE TEST SKIPPED ====================\n\
             skipped: set SERVICEBUS_NAMESPACE (and SERVICEBUS_QUEUE, credentials) to run the live Service Bus test\n\
             ===========================================================\n"
        );
        return;
    };
    let options = SenderOptions::default();
    let sender = match std::env::var("SERVICEBUS_CONNECTION_STRING") {
        Ok(cs) if !cs.is_empty() => {
            ServiceBusSender::from_connection_string_with(&cs, options).unwrap()
        }
        _ => {
            let credential = credential_from_env(|k| std::env::var(k).ok(), None).unwrap();
            ServiceBusSender::new(&namespace, ServiceBusAuth::Token(credential), options).unwrap()
        }
    };
    let id = format!(
        "live-{}",
        Utc::now().timestamp_nanos_opt().unwrap_or_default()
    );
    let m = OutboundMessage {
        queue,
        message_id: id.clone(),
        correlation_id: id,
        session_id: Some("live-test".into()),
        label: "live-test".into(),
        traceparent: Some(TRACEPARENT.into()),
        body: r#"{"live_test":true}"#.into(),
    };

    let sent = sender.send(&m).await;

    assert_eq!(sent.unwrap(), Sent::New, "201 from {namespace}");
    eprintln!("live Service Bus send to {namespace}/{}: 201", m.queue);
}
