//! The router as the Functions host and Event Grid drive it: host-shaped invocation bodies for every
//! trigger (including the double-encoded variants of reference §1.2), the webhook handshakes, limits, and
//! the function-defs/ folders against the route table.

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use mlops_relay::adapters::dry_run::DryRunWorker;
use mlops_relay::adapters::sqlite::Sqlite;
use mlops_relay::executor::Relay;
use mlops_relay::functions::{AppState, FUNCTIONS, Trigger};
use mlops_relay::policy::Policy;
use mlops_relay::ports::{
    Clock, Filter, LedgerEntry, LocalQueue, OutboundMessage, PortError, Queue, Sent, StateStore,
};
use mlops_relay::startup::{EXAMPLE_EVENT, EXAMPLE_POLICY, router};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A clock the test moves by hand.
pub struct TestClock(Mutex<DateTime<Utc>>);

impl TestClock {
    pub fn at(t: &str) -> Arc<TestClock> {
        Arc::new(TestClock(Mutex::new(t.parse().unwrap())))
    }
    pub fn set(&self, t: &str) {
        *self.0.lock().unwrap() = t.parse().unwrap();
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// A queue that is down until switched on: the crash between ledger and enqueue.
struct FlakyQueue {
    inner: Arc<Sqlite>,
    down: Mutex<bool>,
    /// Refuses every message (as Service Bus answers 400 or 413 for one it will not take).
    refusing: Mutex<bool>,
    /// A queue that fails every send for good (missing, or the rights to it).
    broken: Mutex<Option<&'static str>>,
}

#[async_trait::async_trait]
impl Queue for FlakyQueue {
    async fn send(&self, message: &OutboundMessage) -> Result<Sent, PortError> {
        if *self.down.lock().unwrap() {
            return Err(PortError::Transient("queue unreachable".into()));
        }
        if *self.broken.lock().unwrap() == Some(message.queue.as_str()) {
            return Err(PortError::Permanent(format!(
                "queue `{}` does not exist",
                message.queue
            )));
        }
        if *self.refusing.lock().unwrap() {
            return Err(PortError::Rejected(format!(
                "the message is larger than queue `{}` accepts (413)",
                message.queue
            )));
        }
        self.inner.send(message).await
    }
}

pub struct App {
    pub router: Router,
    pub approvals: Arc<mlops_relay::approvals::Config>,
    pub store: Arc<Sqlite>,
    pub clock: Arc<TestClock>,
    _dir: tempfile::TempDir,
}

pub fn app_with(limit: usize, queue: Option<Arc<dyn Queue>>) -> App {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Sqlite::open(dir.path().join("relay.db")).unwrap());
    let clock = TestClock::at("2026-11-23T09:00:30Z");
    let relay = Relay {
        policy: Arc::new(Policy::parse(EXAMPLE_POLICY).unwrap()),
        store: store.clone(),
        queue: queue.unwrap_or_else(|| store.clone()),
        clock: clock.clone(),
    };
    let approvals = Arc::new(mlops_relay::approvals::Config {
        key: b"test-key-0123456789abcdef-0123456789".to_vec(),
        public_url: "https://relay.example".into(),
    });
    let worker = Arc::new(DryRunWorker::new(relay.policy.clone(), approvals.clone()));
    let state = AppState {
        relay,
        worker,
        body_limit: limit,
        approvals: approvals.clone(),
    };
    App {
        router: router(state),
        store,
        clock,
        approvals,
        _dir: dir,
    }
}

pub fn app() -> App {
    app_with(mlops_relay::startup::BODY_LIMIT, None)
}

async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = router
        .clone()
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (parts.status, parts.headers, value)
}

async fn post(router: &Router, uri: &str, body: &Value) -> (StatusCode, Value) {
    let (status, _, value) = call(router, "POST", uri, &[], body.to_string()).await;
    (status, value)
}

fn fixture(name: &str) -> Value {
    let path = Path::new(ROOT).join("tests/fixtures/azure-docs").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn example_event() -> Value {
    serde_json::from_str(EXAMPLE_EVENT).unwrap()
}

/// The host's eventGridTrigger request: `Data.event` as given, `Metadata` with `sys` and optional `data`.
fn grid_invocation(event: Value, metadata_data: Option<Value>) -> Value {
    let mut metadata = json!({ "sys": { "MethodName": "AmlEvents", "UtcNow": "2026-11-23T09:00:30Z", "RandGuid": "0f0e" } });
    if let Some(d) = metadata_data {
        metadata["data"] = d;
    }
    json!({ "Data": { "event": event }, "Metadata": metadata })
}

fn once(v: &Value) -> Value {
    Value::String(v.to_string())
}

fn twice(v: &Value) -> Value {
    Value::String(once(v).to_string())
}

async fn actions(store: &Sqlite) -> Vec<(String, String)> {
    store
        .actions(&Filter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            (
                e.action.kind.as_str().to_string(),
                e.status.as_str().to_string(),
            )
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Object,
    EncodedOnce,
    EncodedTwice,
    DataOnlyInMetadata,
    DataInMetadataEncodedTwice,
}

#[rstest::rstest]
#[case::object(Shape::Object)]
#[case::encoded_once(Shape::EncodedOnce)]
#[case::encoded_twice(Shape::EncodedTwice)]
#[case::data_only_in_metadata(Shape::DataOnlyInMetadata)]
#[case::data_in_metadata_encoded_twice(Shape::DataInMetadataEncodedTwice)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aml_events_invocation_decides_every_host_encoding(#[case] shape: Shape) {
    let app = app();
    let event = example_event();
    let mut bare = event.clone();
    let data = bare.as_object_mut().unwrap().remove("data").unwrap();
    let body = match shape {
        Shape::Object => grid_invocation(event, None),
        Shape::EncodedOnce => grid_invocation(once(&event), None),
        Shape::EncodedTwice => grid_invocation(twice(&event), None),
        Shape::DataOnlyInMetadata => grid_invocation(bare, Some(once(&data))),
        Shape::DataInMetadataEncodedTwice => grid_invocation(once(&bare), Some(twice(&data))),
    };
    let (status, response) = post(&app.router, "/AmlEvents", &body).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(response["Outputs"], json!({}));
    assert!(
        response["Logs"][0]
            .as_str()
            .unwrap()
            .contains("needs 1 of 1 approvers"),
        "{response}"
    );
    assert_eq!(
        actions(&app.store).await,
        vec![("request_approval".to_string(), "sent".to_string())]
    );
    let queued = app.store.messages(Some("notifications")).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(
        queued[0].0.correlation_id,
        "5d0f3a1e-7c2b-4e8a-9f61-2b7c4d9e0a11"
    );
    assert_eq!(
        queued[0].0.session_id.as_deref(),
        Some("sklearn_regression_model")
    );
    assert_eq!(queued[0].0.label, "request_approval");

    // The same delivery again (Event Grid retries whole batches): nothing new.
    let (status, response) = post(&app.router, "/AmlEvents", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        response["Logs"][0].as_str().unwrap().contains("duplicate"),
        "{response}"
    );
    assert_eq!(
        app.store.actions(&Filter::default()).await.unwrap().len(),
        1
    );
    assert_eq!(
        app.store.decisions(&Filter::default()).await.unwrap().len(),
        1
    );
}

#[rstest::rstest]
#[case("aml_model_registered.eventgrid.json", "model_registered")]
#[case("aml_model_deployed.eventgrid.json", "model_deployed")]
#[case("aml_run_completed.eventgrid.json", "run_completed")]
#[case("aml_run_status_changed.eventgrid.json", "run_failed")]
#[case("aml_dataset_drift.eventgrid.json", "drift")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_samples_arrive_through_the_trigger(#[case] file: &str, #[case] kind: &str) {
    let app = app();
    // The trigger binds one event per invocation; the docs show it in a batch array.
    let event = fixture(file)[0].clone();
    let (status, response) = post(
        &app.router,
        "/AmlEvents",
        &grid_invocation(twice(&event), None),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let records = app.store.decisions(&Filter::default()).await.unwrap();
    assert_eq!(records.len(), 1, "{response}");
    assert_eq!(records[0].decision.signal.kind().to_string(), kind);
    assert_eq!(
        records[0].decision.signal.event_id,
        event["id"].as_str().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_acknowledged_and_dead_lettered() {
    let app = app();
    let mut event = example_event();
    event["data"].as_object_mut().unwrap().remove("modelName");
    let invocation = grid_invocation(once(&event), None);
    let (status, response) = post(&app.router, "/AmlEvents", &invocation).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a poison event must not be retried forever"
    );
    let log = response["Logs"][0].as_str().unwrap();
    assert!(
        log.contains("dead-lettered") && log.to_lowercase().contains("modelname"),
        "{log}"
    );
    let letters = app.store.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].source, "AmlEvents");
    assert!(
        letters[0].body.contains("5d0f3a1e"),
        "the message is kept as received"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&letters[0].body).unwrap(),
        invocation,
        "the dead letter is the whole invocation, Metadata included"
    );
    assert!(
        app.store
            .actions(&Filter::default())
            .await
            .unwrap()
            .is_empty()
    );

    let (status, _) = post(
        &app.router,
        "/AmlEvents",
        &json!({ "Data": {}, "Metadata": {} }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.store.dead_letters().await.unwrap().len(), 2);
}

/// An app whose queue is down until `flaky.down` is cleared, and the SQLite queue behind it.
fn app_with_a_queue_down() -> (tempfile::TempDir, Arc<Sqlite>, Arc<FlakyQueue>, App) {
    let dir = tempfile::tempdir().unwrap();
    let backing = Arc::new(Sqlite::open(dir.path().join("q.db")).unwrap());
    let flaky = Arc::new(FlakyQueue {
        inner: backing.clone(),
        down: Mutex::new(true),
        refusing: Mutex::new(false),
        broken: Mutex::new(None),
    });
    let app = app_with(1024 * 1024, Some(flaky.clone()));
    (dir, backing, flaky, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_outage_is_a_5xx_and_the_redelivery_heals_it() {
    let (_dir, backing, flaky, app) = app_with_a_queue_down();
    let body = grid_invocation(example_event(), None);

    let (status, response) = post(&app.router, "/AmlEvents", &body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{response}");
    // Decided and recorded, not yet sent.
    assert_eq!(
        actions(&app.store).await,
        vec![("request_approval".to_string(), "recorded".to_string())]
    );
    assert!(backing.messages(None).await.unwrap().is_empty());

    *flaky.down.lock().unwrap() = false;
    let (status, response) = post(&app.router, "/AmlEvents", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        response["Logs"][0].as_str().unwrap().contains("re-sent 1"),
        "{response}"
    );
    assert_eq!(
        actions(&app.store).await,
        vec![("request_approval".to_string(), "sent".to_string())]
    );
    assert_eq!(backing.messages(None).await.unwrap().len(), 1);
    assert_eq!(
        app.store.decisions(&Filter::default()).await.unwrap().len(),
        1,
        "decided once"
    );

    let (_, response) = post(&app.router, "/AmlEvents", &body).await;
    assert!(
        response["Logs"][0]
            .as_str()
            .unwrap()
            .contains("nothing to do"),
        "{response}"
    );
    assert_eq!(backing.messages(None).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_queue_refuses_is_dead_lettered_once_and_not_retried() {
    let (_dir, backing, flaky, app) = app_with_a_queue_down();
    *flaky.down.lock().unwrap() = false;
    *flaky.refusing.lock().unwrap() = true;
    let body = grid_invocation(example_event(), None);

    // Answered 200: retrying the event would be refused the same way, for a day.
    let (status, response) = post(&app.router, "/AmlEvents", &body).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let log = response["Logs"][0].as_str().unwrap();
    assert!(
        log.contains("refused by its queue and dead-lettered") && log.contains("(413)"),
        "{response}"
    );
    assert_eq!(
        actions(&app.store).await,
        vec![("request_approval".to_string(), "rejected".to_string())]
    );
    let letters = app.store.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].source, "queue notifications");
    assert!(letters[0].reason.contains("(413)"), "{letters:?}");
    let entry: LedgerEntry = serde_json::from_str(&letters[0].body).unwrap();
    assert_eq!(entry.action.kind.as_str(), "request_approval");

    // Neither a redelivery nor a later tick sends it again (before the fix: every tick retried it, first).
    let (_, response) = post(&app.router, "/AmlEvents", &body).await;
    assert!(
        response["Logs"][0]
            .as_str()
            .unwrap()
            .contains("nothing to do"),
        "{response}"
    );
    app.clock.set("2026-11-23T09:10:30Z");
    let (status, response) = post(&app.router, "/Scheduler", &timer_invocation(json!(false))).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(app.store.dead_letters().await.unwrap().len(), 1);
    assert!(backing.messages(None).await.unwrap().is_empty());
}

fn timer_invocation(past_due: Value) -> Value {
    let mut timer = fixture("functions_timer_object.docs.json");
    timer["IsPastDue"] = past_due;
    json!({ "Data": { "timer": once(&timer) }, "Metadata": { "sys": { "MethodName": "Scheduler" } } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_past_due_ticks_fire_each_instant_once() {
    let app = app();
    // fraud-weekly-retrain: Sundays 03:00 Europe/Amsterdam = 02:00 UTC in November.
    app.clock.set("2026-11-22T02:00:20Z");
    let ticks = (0..4).map(|i| {
        let router = app.router.clone();
        let body = timer_invocation(if i % 2 == 0 {
            json!(false)
        } else {
            json!("true")
        });
        tokio::spawn(async move { post(&router, "/Scheduler", &body).await })
    });
    for tick in ticks {
        let (status, response) = tick.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{response}");
    }
    let entries = app.store.actions(&Filter::default()).await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].action.kind.as_str(), "retrain");
    assert_eq!(entries[0].action.model.as_deref(), Some("fraud-detector"));
    assert_eq!(
        app.store
            .schedule_cursor("fraud-weekly-retrain")
            .await
            .unwrap(),
        Some("2026-11-22T02:00:00Z".parse().unwrap())
    );

    // A past-due tick an hour later: nothing new is due.
    app.clock.set("2026-11-22T03:00:10Z");
    let (_, response) = post(&app.router, "/Scheduler", &timer_invocation(json!("true"))).await;
    assert!(
        response["Logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("past due")),
        "{response}"
    );
    assert_eq!(
        app.store.actions(&Filter::default()).await.unwrap().len(),
        1
    );

    // After a week of downtime the next instant is caught up once ("latest").
    app.clock.set("2026-11-29T09:30:00Z");
    post(&app.router, "/Scheduler", &timer_invocation(json!(true))).await;
    post(&app.router, "/Scheduler", &timer_invocation(json!(true))).await;
    let entries = app.store.actions(&Filter::default()).await.unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        app.store
            .schedule_cursor("fraud-weekly-retrain")
            .await
            .unwrap(),
        Some("2026-11-29T02:00:00Z".parse().unwrap())
    );
}

async fn one_queued_entry(app: &App) -> Value {
    post(
        &app.router,
        "/AmlEvents",
        &grid_invocation(example_event(), None),
    )
    .await;
    let (message, _) = app
        .store
        .messages(Some("notifications"))
        .await
        .unwrap()
        .remove(0);
    serde_json::from_str(&message.body).unwrap()
}

#[rstest::rstest]
#[case::object(false, json!(1))]
#[case::string_json_and_string_count(true, json!("3"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_invocations_carry_out_the_ledger_entry(
    #[case] encoded: bool,
    #[case] delivery: Value,
) {
    let app = app();
    let entry = one_queued_entry(&app).await;
    let message = if encoded { once(&entry) } else { entry.clone() };
    let body = json!({
        "Data": { "message": message },
        "Metadata": { "DeliveryCount": delivery, "MessageId": once(&entry["action"]["action_id"]), "SessionId": "sklearn_regression_model", "sys": { "MethodName": "NotifyWorker" } }
    });
    let (status, response) = post(&app.router, "/NotifyWorker", &body).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert!(
        response["Logs"][0].as_str().unwrap().contains("dry run"),
        "{response}"
    );
    let effects = app.store.effects(&Filter::default()).await.unwrap();
    assert_eq!(effects.len(), 1);
    assert_eq!(
        effects[0].action_id,
        entry["action"]["action_id"].as_str().unwrap()
    );
    assert_eq!(
        effects[0].request["provenance"]["event_id"],
        "5d0f3a1e-7c2b-4e8a-9f61-2b7c4d9e0a11"
    );

    // Redelivered: still one effect.
    post(&app.router, "/NotifyWorker", &body).await;
    assert_eq!(
        app.store.effects(&Filter::default()).await.unwrap().len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_queue_message_is_completed_and_dead_lettered() {
    let app = app();
    let body = json!({ "Data": { "message": "\"{ message: \\\"not json\\\" }\"" }, "Metadata": { "DeliveryCount": "1" } });
    let (status, response) = post(&app.router, "/RetrainWorker", &body).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "2xx completes the message instead of redelivering it ten times"
    );
    assert!(
        response["Logs"][0]
            .as_str()
            .unwrap()
            .contains("not a ledger entry"),
        "{response}"
    );
    let letters = app.store.dead_letters().await.unwrap();
    assert_eq!(letters[0].source, "RetrainWorker");

    let (status, response) = post(&app.router, "/NoSuchWorker", &body).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(response["error"].as_str().unwrap().contains("NoSuchWorker"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_validation_handshake() {
    let app = app();
    let body = fixture("eventgrid_subscription_validation.json");
    let expected = fixture("eventgrid_subscription_validation.response.json");
    let (status, _, response) = call(
        &app.router,
        "POST",
        "/api/events",
        &[("aeg-event-type", "SubscriptionValidation")],
        body.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response, expected);
    assert_eq!(
        response["validationResponse"],
        "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"
    );
    // Without the header (some proxies drop it) the event type alone is enough.
    let (status, _, response) =
        call(&app.router, "POST", "/api/events", &[], body.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response, expected);
    assert!(
        app.store
            .decisions(&Filter::default())
            .await
            .unwrap()
            .is_empty(),
        "a handshake is not an event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_abuse_protection_handshake() {
    let app = app();
    let (status, headers, _) = call(
        &app.router,
        "OPTIONS",
        "/api/events",
        &[
            ("WebHook-Request-Origin", "eventgrid.azure.net"),
            ("WebHook-Request-Rate", "120"),
        ],
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["webhook-allowed-origin"], "eventgrid.azure.net");
    assert_eq!(headers["webhook-allowed-rate"], "120");
    assert!(headers["allow"].to_str().unwrap().contains("POST"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_decides_batches_of_both_schemas() {
    let app = app();
    let grid = example_event();
    let mut cloud = fixture("aml_run_status_changed.cloudevent.json");
    if let Value::Array(items) = &cloud {
        cloud = items[0].clone();
    }
    let batch = json!([grid, cloud, grid]);
    let (status, _, response) = call(
        &app.router,
        "POST",
        "/api/events",
        &[("aeg-event-type", "Notification")],
        batch.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(response["decided"], 3);
    assert_eq!(response["duplicates"], 1);
    assert_eq!(
        app.store.decisions(&Filter::default()).await.unwrap().len(),
        2
    );
    let (status, _, response) = call(&app.router, "POST", "/api/events", &[], "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(response["error"].as_str().unwrap().contains("not JSON"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_a_clear_413() {
    let app = app_with(4096, None);
    let big = Value::Array(vec![example_event(); 400]).to_string();
    assert!(big.len() > 8 * 4096);
    // Host invocations may be 8 times the webhooks' limit (an event arrives there twice, escaped), Event
    // Grid deliveries twice (a 1 MB event comes with an envelope around it).
    for (uri, limit) in [
        ("/api/events", 2 * 4096),
        ("/api/drift", 4096),
        ("/AmlEvents", 8 * 4096),
    ] {
        let (status, _, response) = call(&app.router, "POST", uri, &[], big.clone()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{uri}");
        assert_eq!(
            response["error"],
            format!("request body exceeds the {limit} byte limit"),
            "{uri}"
        );
    }
    assert!(
        app.store
            .decisions(&Filter::default())
            .await
            .unwrap()
            .is_empty()
    );
    // Over the webhooks' limit, within an Event Grid delivery's: decided.
    let mut delivery = Value::Array(vec![example_event()]);
    delivery[0]["data"]["modelTags"]["notes"] = Value::String("x".repeat(5000));
    let delivery = delivery.to_string();
    assert!((4096..2 * 4096).contains(&delivery.len()));
    let (status, _, response) = call(&app.router, "POST", "/api/events", &[], delivery).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(response["decided"], 1, "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drift_webhook_retrains_once_and_names_bad_fields() {
    let app = app();
    let report = json!({ "id": "evidently-1", "model": "sklearn_regression_model", "version": "21", "metric": "psi", "value": "0.81", "threshold": 0.3, "source": "evidently" });
    let (status, response) = post(&app.router, "/api/drift", &report).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let mut kinds: Vec<String> = actions(&app.store)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec!["page", "retrain"],
        "0.81 ≥ 0.3 retrains and ≥ 0.7 pages"
    );

    let (status, response) = post(
        &app.router,
        "/api/drift",
        &json!([{ "model": "m", "metric": "psi", "value": "high" }]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        response["error"].as_str().unwrap().contains("value"),
        "{response}"
    );
    assert_eq!(app.store.dead_letters().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_health() {
    let app = app();
    let (status, _, body) = call(&app.router, "GET", "/", &[], Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "mlops-relay ready");
    let (status, _, body) = call(&app.router, "GET", "/api/health", &[], Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["policy_hash"].as_str().unwrap().len(), 32);
}

/// The approval links the notify worker would send for the example registration, per approver.
async fn approval_links(app: &App) -> (String, Vec<(String, String)>) {
    post(
        &app.router,
        "/AmlEvents",
        &grid_invocation(example_event(), None),
    )
    .await;
    let entry = app
        .store
        .actions(&Filter::default())
        .await
        .unwrap()
        .remove(0);
    let policy = Policy::parse(EXAMPLE_POLICY).unwrap();
    let links = mlops_relay::approvals::links(
        &app.approvals,
        &entry,
        &policy.hash,
        app.clock.now(),
        chrono::TimeDelta::days(7),
    );
    (entry.action.action_id.to_string(), links)
}

async fn page(
    app: &App,
    method: &str,
    url: &str,
    form: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let path = url.strip_prefix("https://relay.example").unwrap();
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/x-www-form-urlencoded");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = app
        .router
        .clone()
        .oneshot(req.body(Body::from(form.to_string())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    assert_eq!(
        response.headers()["cache-control"],
        "no-store",
        "a page with a token in its URL is never cached"
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

fn token_of(url: &str) -> &str {
    url.split("token=").nth(1).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approval_page_shows_and_only_a_post_decides_once() {
    let app = app();
    let (id, links) = approval_links(&app).await;
    assert_eq!(
        links.len(),
        1,
        "example policy: bob@contoso.example approves staging"
    );
    let (approver, url) = &links[0];
    assert_eq!(approver, "bob@contoso.example");
    assert!(url.starts_with(&format!("https://relay.example/api/approvals/{id}?token=")));

    let decisions_before = app.store.decisions(&Filter::default()).await.unwrap().len();
    let (status, html) = page(&app, "GET", url, "", &[]).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains("sklearn_regression_model") && html.contains(">22<"),
        "model and version shown"
    );
    assert!(
        html.contains("auc") && html.contains("0.93"),
        "metrics shown"
    );
    assert!(
        html.contains("bob@contoso.example") && html.contains("deployed to staging"),
        "who decides and what happens"
    );
    assert!(
        html.contains(r#"<form method="post">"#)
            && html.contains(r#"value="approve""#)
            && html.contains(r#"value="reject""#)
    );
    page(&app, "GET", url, "", &[]).await;
    assert_eq!(
        app.store.decisions(&Filter::default()).await.unwrap().len(),
        decisions_before,
        "GET never acts"
    );

    let form = format!(
        "token={}&decision=approve&comment=looks+good",
        token_of(url)
    );
    let (status, html) = page(&app, "POST", url, &form, &[]).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains("Decision recorded")
            && html
                .contains("bob@contoso.example approves sklearn_regression_model:22 for staging"),
        "{html}"
    );
    let last = app
        .store
        .decisions(&Filter {
            model: None,
            limit: Some(1),
        })
        .await
        .unwrap()
        .remove(0);
    assert_eq!(last.decision.signal.kind().to_string(), "approval");
    let kinds: Vec<&str> = last
        .decision
        .actions
        .iter()
        .map(|a| a.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        vec!["deploy"],
        "1 of 1 approved: staging deployment ({})",
        last.decision.explanation()
    );

    // The same link again, even to reject: refused, nothing new.
    let form = format!("token={}&decision=reject", token_of(url));
    let (status, html) = page(&app, "POST", url, &form, &[]).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(html.contains("already been used"), "{html}");
    assert_eq!(
        app.store.actions(&Filter::default()).await.unwrap().len(),
        2,
        "approval request + one deploy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_links_are_refused_clearly() {
    let app = app();
    let (id, links) = approval_links(&app).await;
    let url = &links[0].1;
    let (status, html) = page(
        &app,
        "GET",
        &format!("https://relay.example/api/approvals/{id}"),
        "",
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(html.contains("needs the link"), "{html}");

    let tampered = format!("{}x", url);
    let (status, html) = page(&app, "GET", &tampered, "", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("not valid"), "{html}");

    let (status, html) = page(
        &app,
        "GET",
        url,
        "",
        &[("x-ms-client-principal-name", "mallory@contoso.example")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        html.contains("signed in as mallory@contoso.example"),
        "{html}"
    );

    // Another request's id with this token.
    let other = url.replace(&id, "request_approval-00000000000000000000000000000000");
    let (status, _) = page(&app, "GET", &other, "", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    app.clock.set("2026-12-30T00:00:00Z");
    let (status, html) = page(
        &app,
        "POST",
        url,
        &format!("token={}&decision=approve", token_of(url)),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("expired"), "{html}");
}

/// function-defs/ and the route table agree both ways, binding names included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_folder_has_a_route_and_every_route_a_folder() {
    let app = app();
    let dir = Path::new(ROOT).join("function-defs");
    let mut folders: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    let mut names: Vec<String> = FUNCTIONS.iter().map(|f| f.name.to_string()).collect();
    names.sort();
    assert_eq!(folders, names, "function-defs/ folders vs FUNCTIONS");

    for def in FUNCTIONS {
        let text = std::fs::read_to_string(dir.join(def.name).join("function.json")).unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        let bindings = json["bindings"].as_array().unwrap();
        let trigger = bindings
            .iter()
            .find(|b| b["direction"] == "in" && b["type"].as_str().unwrap().ends_with("Trigger"))
            .unwrap();
        assert_eq!(trigger["name"], def.binding, "{}: binding name", def.name);
        match def.trigger {
            Trigger::EventGrid => {
                assert_eq!(trigger["type"], "eventGridTrigger");
                let (status, _, _) = call(
                    &app.router,
                    "POST",
                    &format!("/{}", def.name),
                    &[],
                    json!({"Data": {}, "Metadata": {}}).to_string(),
                )
                .await;
                assert_eq!(status, StatusCode::OK, "{}", def.name);
            }
            Trigger::Timer => {
                assert_eq!(trigger["type"], "timerTrigger");
                assert_eq!(
                    trigger["schedule"], "0 * * * * *",
                    "every minute; the policy's schedules are evaluated inside"
                );
                let (status, _, _) = call(
                    &app.router,
                    "POST",
                    &format!("/{}", def.name),
                    &[],
                    timer_invocation(json!(false)).to_string(),
                )
                .await;
                assert_eq!(status, StatusCode::OK, "{}", def.name);
            }
            Trigger::ServiceBus(queue) => {
                assert_eq!(trigger["type"], "serviceBusTrigger");
                assert_eq!(trigger["queueName"], queue);
                assert_eq!(
                    trigger["connection"], "ServiceBusConnection",
                    "identity-based: ServiceBusConnection__fullyQualifiedNamespace"
                );
                assert!(mlops_relay::ports::QUEUES.contains(&queue));
                let (status, _, _) = call(
                    &app.router,
                    "POST",
                    &format!("/{}", def.name),
                    &[],
                    json!({"Data": {"message": "{}"}, "Metadata": {}}).to_string(),
                )
                .await;
                assert_eq!(status, StatusCode::OK, "{}", def.name);
            }
            Trigger::Http(route, methods) => {
                assert_eq!(trigger["type"], "httpTrigger");
                assert_eq!(trigger["route"], route);
                let listed: Vec<&str> = trigger["methods"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.as_str().unwrap())
                    .collect();
                assert_eq!(listed, methods, "{}: methods", def.name);
                assert!(
                    bindings
                        .iter()
                        .any(|b| b["type"] == "http" && b["direction"] == "out"),
                    "forwarding needs exactly one http out"
                );
                // Forwarded requests arrive at the original path: /api/{route}.
                let path = format!("/api/{}", route.replace("{id}", "some-id"));
                for method in methods {
                    let (status, _, _) =
                        call(&app.router, &method.to_uppercase(), &path, &[], "{}").await;
                    assert!(
                        status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                        "{} {method} {path}: {status}",
                        def.name
                    );
                }
            }
        }
    }

    let host: Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(ROOT).join("host.json")).unwrap())
            .unwrap();
    assert_eq!(
        host["customHandler"]["description"]["defaultExecutablePath"],
        "mlops-relay"
    );
    assert_eq!(host["customHandler"]["enableForwardingHttpRequest"], true);
    assert_eq!(host["extensionBundle"]["version"], "[4.*, 5.0.0)");
    assert_eq!(host["extensions"]["http"]["routePrefix"], "api");
    // An action gives up on Azure ML a minute before the host would end the invocation itself, and its message
    // lock is renewed for as long as the invocation may run.
    let seconds = |v: &Value| -> u64 {
        let hms: Vec<u64> = v
            .as_str()
            .unwrap()
            .split(':')
            .map(|p| p.parse().unwrap())
            .collect();
        hms[0] * 3600 + hms[1] * 60 + hms[2]
    };
    let timeout = seconds(&host["functionTimeout"]);
    let budget = mlops_relay::azureml::client::ACTION_BUDGET.as_secs();
    assert!(
        budget + 60 <= timeout,
        "action budget {budget} s, functionTimeout {timeout} s"
    );
    assert!(seconds(&host["extensions"]["serviceBus"]["maxAutoLockRenewalDuration"]) >= timeout);
}

/// `serve` answers the host's `GET /` before its store is open; other requests wait for the full router and
/// are then answered by it, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_answers_before_the_store_is_open_and_other_routes_wait_for_it() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(None);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mlops_relay::runtime::serve_when_ready(
        listener,
        ready_rx,
        async {
            let _ = stop_rx.await;
        },
    ));
    let client = reqwest::Client::new();
    let root = client.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(root.status(), 200);
    assert_eq!(root.text().await.unwrap(), "mlops-relay ready");

    // An event posted now waits for the router...
    let invocation = grid_invocation(example_event(), None);
    let early = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .post(format!("http://{addr}/AmlEvents"))
                .json(&invocation)
                .send()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!early.is_finished(), "answered before the store was ready");

    // ... and is decided once it is there.
    let app = app();
    ready_tx.send(Some(app.router.clone())).unwrap();
    let response = early.await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["Logs"][0]
            .as_str()
            .unwrap()
            .contains("needs 1 of 1 approvers"),
        "{body}"
    );
    assert_eq!(actions(&app.store).await.len(), 1);

    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// A worker whose every action takes `takes`, and that remembers what it carried out.
struct Slow {
    takes: std::time::Duration,
    runs: Mutex<Vec<String>>,
    /// Actions begun.
    started: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl mlops_relay::ports::Worker for Slow {
    async fn execute(
        &self,
        entry: &LedgerEntry,
        _delivery: u32,
        now: DateTime<Utc>,
    ) -> Result<mlops_relay::ports::Effect, PortError> {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(self.takes).await;
        let id = entry.action.action_id.to_string();
        self.runs.lock().unwrap().push(id.clone());
        Ok(mlops_relay::ports::Effect {
            action_id: id,
            model: entry.action.model.clone(),
            mode: "dry_run".into(),
            request: json!({}),
            outcome: "done".into(),
            at: now,
            follow_up: Vec::new(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_drainers_sharing_a_store_carry_out_each_message_once_however_long_it_takes() {
    // A drainer takes a batch under one lock and works through it in turn: without renewal, the second
    // message's lock runs out while the first is carried out, the other drainer receives it, and both carry
    // it out. Here each action takes longer than the lock.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let relay = |db: &Arc<Sqlite>| Relay {
        policy: Arc::new(crate::helpers::policy()),
        store: db.clone(),
        queue: db.clone(),
        clock: Arc::new(mlops_relay::ports::SystemClock),
    };
    let (a, b) = (
        Arc::new(Sqlite::open(&path).unwrap().as_outbox()),
        Arc::new(Sqlite::open(&path).unwrap().as_outbox()),
    );
    let (relay_a, relay_b) = (relay(&a), relay(&b));
    for version in ["4", "5"] {
        let tags = [("owner", "alice"), ("auc", "0.9")];
        let signal = crate::helpers::registered("churn", version, &tags, "mlw-dev", Utc::now());
        let outcome = relay_a.handle(&signal).await.unwrap();
        assert_eq!(outcome.decision.as_ref().map(|d| d.actions.len()), Some(1));
    }
    let worker = Arc::new(Slow {
        takes: std::time::Duration::from_millis(900),
        runs: Mutex::default(),
        started: Default::default(),
    });
    let lock = chrono::TimeDelta::milliseconds(600);
    let first = {
        let (a, worker) = (a.clone(), worker.clone());
        tokio::spawn(async move {
            mlops_relay::runtime::drain_once(&relay_a, a.as_ref(), worker.as_ref(), 32, lock).await
        })
    };
    // The second drainer starts after the first one's batch lock has run out.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let second = mlops_relay::runtime::drain_once(&relay_b, b.as_ref(), worker.as_ref(), 32, lock)
        .await
        .unwrap();
    let first = first.await.unwrap().unwrap();

    let mut runs = worker.runs.lock().unwrap().clone();
    runs.sort();
    let mut unique = runs.clone();
    unique.dedup();
    assert_eq!(
        runs.len(),
        2,
        "each action carried out once: {runs:?} ({first:?}, {second:?})"
    );
    assert_eq!(unique.len(), 2, "{runs:?}");
    assert_eq!(
        first.completed + second.completed,
        2,
        "{first:?}, {second:?}"
    );
    assert_eq!(first.taken_over, second.completed, "{first:?}, {second:?}");
    assert!(a.dead_letters().await.unwrap().is_empty());
}

/// A relay on a fresh SQLite database that is its own queue (local mode's outbox), on the test policy.
fn outbox_relay(clock: Arc<dyn Clock>) -> (tempfile::TempDir, Arc<Sqlite>, Relay) {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(
        Sqlite::open(dir.path().join("state.db"))
            .unwrap()
            .as_outbox(),
    );
    let relay = Relay {
        policy: Arc::new(crate::helpers::policy()),
        store: db.clone(),
        queue: db.clone(),
        clock,
    };
    (dir, db, relay)
}

/// The SQLite queue, except that once `lost` is set its renewals answer that the lock was lost (as when it ran
/// out while the writer was backlogged and another drainer received the message).
struct LosesLocks {
    inner: Arc<Sqlite>,
    lost: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Queue for LosesLocks {
    async fn send(&self, message: &OutboundMessage) -> Result<Sent, PortError> {
        self.inner.send(message).await
    }
}

#[async_trait::async_trait]
impl LocalQueue for LosesLocks {
    async fn receive(
        &self,
        queue: &str,
        max: usize,
        lock: chrono::TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<Vec<mlops_relay::ports::Received>, PortError> {
        self.inner.receive(queue, max, lock, now).await
    }
    async fn renew(
        &self,
        queue: &str,
        received: &mlops_relay::ports::Received,
        until: DateTime<Utc>,
    ) -> Result<bool, PortError> {
        if self.lost.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        self.inner.renew(queue, received, until).await
    }
    async fn complete(
        &self,
        queue: &str,
        message_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PortError> {
        self.inner.complete(queue, message_id, now).await
    }
    async fn depths(&self) -> Result<Vec<(String, u64, u64)>, PortError> {
        self.inner.depths().await
    }
    async fn messages(
        &self,
        queue: Option<&str>,
    ) -> Result<Vec<(OutboundMessage, String)>, PortError> {
        self.inner.messages(queue).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drainer_that_loses_its_lock_while_carrying_a_message_out_stops_and_leaves_it_to_the_new_receiver()
 {
    let (_dir, db, relay) = outbox_relay(Arc::new(mlops_relay::ports::SystemClock));
    let tags = [("owner", "alice"), ("auc", "0.9")];
    let signal = crate::helpers::registered("churn", "4", &tags, "mlw-dev", Utc::now());
    relay.handle(&signal).await.unwrap();
    let queue = Arc::new(LosesLocks {
        inner: db.clone(),
        lost: false.into(),
    });
    let worker = Arc::new(Slow {
        takes: std::time::Duration::from_millis(1500),
        runs: Mutex::default(),
        started: Default::default(),
    });
    let lock = chrono::TimeDelta::milliseconds(400);
    let drain = {
        let (queue, worker) = (queue.clone(), worker.clone());
        tokio::spawn(async move {
            mlops_relay::runtime::drain_once(&relay, queue.as_ref(), worker.as_ref(), 32, lock)
                .await
        })
    };
    // A renewal or two get through, then the lock is lost while the action is still being carried out.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    queue.lost.store(true, std::sync::atomic::Ordering::SeqCst);
    let report = drain.await.unwrap().unwrap();

    assert_eq!(report.taken_over, 1, "{report:?}");
    assert_eq!(report.completed, 0, "{report:?}");
    assert!(
        worker.runs.lock().unwrap().is_empty(),
        "the work was stopped, not finished alongside the new receiver"
    );
    // Not completed: the message stays for its new receiver.
    let depths = db.depths().await.unwrap();
    assert!(
        depths
            .iter()
            .any(|(_, active, completed)| *active == 1 && *completed == 0),
        "{depths:?}"
    );
    assert!(db.dead_letters().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_drainer_dies_every_time_is_dead_lettered_after_the_most_deliveries() {
    // Each delivery ends with the drainer gone (the message kills the process, say): its lock runs out
    // and it is received again, with no outcome recorded. Past MAX_DELIVERIES it is dead-lettered unopened.
    let clock = TestClock::at("2026-11-22T09:00:00Z");
    let (_dir, db, relay) = outbox_relay(clock.clone());
    let tags = [("owner", "alice"), ("auc", "0.9")];
    let signal = crate::helpers::registered("churn", "4", &tags, "mlw-dev", clock.now());
    relay.handle(&signal).await.unwrap();
    let lock = chrono::TimeDelta::seconds(60);
    let queue = "notifications"; // where an approval request goes
    for n in 0..mlops_relay::runtime::MAX_DELIVERIES {
        let now = clock.now() + lock * (n as i32 * 2);
        let got = db.receive(queue, 1, lock, now).await.unwrap();
        assert_eq!(got.len(), 1, "delivery {}", n + 1);
    }
    clock.set("2026-11-22T10:00:00Z");
    let worker = Slow {
        takes: std::time::Duration::ZERO,
        runs: Mutex::default(),
        started: Default::default(),
    };
    let report = mlops_relay::runtime::drain_once(&relay, db.as_ref(), &worker, 32, lock)
        .await
        .unwrap();

    assert_eq!(report.dead_lettered, 1, "{report:?}");
    assert!(
        worker.runs.lock().unwrap().is_empty(),
        "not attempted again"
    );
    let letters = db.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0]
            .reason
            .contains("delivered 10 times without an outcome"),
        "{}",
        letters[0].reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_drainer_waits_for_the_message_in_hand_only() {
    let (_dir, db, relay) = outbox_relay(Arc::new(mlops_relay::ports::SystemClock));
    for model in ["churn", "fraud", "ltv"] {
        let tags = [("owner", "alice"), ("auc", "0.9")];
        let signal = crate::helpers::registered(model, "4", &tags, "mlw-dev", Utc::now());
        relay.handle(&signal).await.unwrap();
    }
    let worker = Arc::new(Slow {
        takes: std::time::Duration::from_millis(800),
        runs: Mutex::default(),
        started: Default::default(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let drainer = tokio::spawn(mlops_relay::runtime::drain_loop(
        relay,
        db.clone(),
        worker.clone(),
        std::time::Duration::from_millis(50),
        chrono::TimeDelta::seconds(60),
        stop_rx,
    ));
    // Stop once the first message is being carried out.
    while worker.started.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop_tx.send(true).unwrap();
    drainer.await.unwrap();

    // The first message finished; the other two (2 × 800 ms more) were not waited for.
    assert_eq!(worker.runs.lock().unwrap().len(), 1);
    let depths = db.depths().await.unwrap();
    assert!(
        depths
            .iter()
            .any(|(q, active, done)| q == "notifications" && *active == 2 && *done == 1),
        "{depths:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_instant_left_unsent_by_a_failed_tick_is_sent_by_a_later_one() {
    let (_dir, backing, flaky, app) = app_with_a_queue_down();
    // fraud-weekly-retrain is due at 02:00 UTC; the queue is down at that tick.
    app.clock.set("2026-11-22T02:00:20Z");
    let (status, response) = post(&app.router, "/Scheduler", &timer_invocation(json!(false))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{response}");
    assert_eq!(
        actions(&app.store).await,
        vec![("retrain".to_string(), "recorded".to_string())]
    );

    // Five minutes on, 02:00 is no longer due (outside the tick's grace, and the policy catches up only the
    // latest instant): the tick sends the entry left unsent anyway, and decides nothing new.
    *flaky.down.lock().unwrap() = false;
    app.clock.set("2026-11-22T02:05:00Z");
    let (status, response) = post(&app.router, "/Scheduler", &timer_invocation(json!(false))).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(
        actions(&app.store).await,
        vec![("retrain".to_string(), "sent".to_string())]
    );
    let queued = backing.messages(None).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].0.queue, "retrain-requests");
    assert_eq!(
        app.store.decisions(&Filter::default()).await.unwrap().len(),
        1,
        "decided once"
    );

    // Later ticks find nothing left to send.
    app.clock.set("2026-11-22T02:10:00Z");
    post(&app.router, "/Scheduler", &timer_invocation(json!(false))).await;
    assert_eq!(backing.messages(None).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_cannot_be_sent_does_not_hold_back_the_unsent_entries_behind_it() {
    let (_dir, backing, flaky, app) = app_with_a_queue_down();
    // While the queue is down: the 02:00 retrain (oldest), then a registration's approval request.
    app.clock.set("2026-11-22T02:00:20Z");
    post(&app.router, "/Scheduler", &timer_invocation(json!(false))).await;
    app.clock.set("2026-11-22T02:01:00Z");
    let (status, _) = post(
        &app.router,
        "/AmlEvents",
        &grid_invocation(example_event(), None),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // Back, but retrain-requests fails for good: the approval request behind the retrain still goes out.
    *flaky.down.lock().unwrap() = false;
    *flaky.broken.lock().unwrap() = Some("retrain-requests");
    app.clock.set("2026-11-22T02:05:00Z");
    post(&app.router, "/Scheduler", &timer_invocation(json!(false))).await;
    let mut statuses = actions(&app.store).await;
    statuses.sort();
    assert_eq!(
        statuses,
        vec![
            ("request_approval".to_string(), "sent".to_string()),
            ("retrain".to_string(), "recorded".to_string()),
        ]
    );
    assert_eq!(
        backing.messages(None).await.unwrap()[0].0.queue,
        "notifications"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_page_of_entries_that_cannot_be_sent_does_not_hold_back_the_ones_after_it() {
    let (_dir, backing, flaky, app) = app_with_a_queue_down();
    // While the queue is down: 100 approval requests (a heal's page), then the 02:00 retrain.
    app.clock.set("2026-11-22T01:59:00Z");
    for i in 0..100 {
        let mut event = example_event();
        event["id"] = json!(format!("reg-{i}"));
        event["data"]["modelVersion"] = json!(format!("{}", 100 + i));
        let (status, _) = post(&app.router, "/AmlEvents", &grid_invocation(event, None)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    app.clock.set("2026-11-22T02:00:20Z");
    post(&app.router, "/Scheduler", &timer_invocation(json!(false))).await;

    // Back, but notifications fails for good: the retrain behind the first page still goes out.
    *flaky.down.lock().unwrap() = false;
    *flaky.broken.lock().unwrap() = Some("notifications");
    app.clock.set("2026-11-22T02:05:00Z");
    post(&app.router, "/Scheduler", &timer_invocation(json!(false))).await;
    let statuses = actions(&app.store).await;
    assert_eq!(statuses.len(), 101);
    assert!(
        statuses.contains(&("retrain".to_string(), "sent".to_string())),
        "{:?}",
        statuses
            .iter()
            .filter(|(k, _)| k == "retrain")
            .collect::<Vec<_>>()
    );
    let queued = backing.messages(None).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].0.queue, "retrain-requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drift_webhook_reads_a_report_as_a_report_whatever_its_other_fields() {
    // `type`, `source` and `id` together make an object look like a CloudEvent; `eventType` like an Event
    // Grid event. Posted to /api/drift, either is still a drift report.
    let app = app();
    let reports = json!([
        { "id": "evt-42", "model": "sklearn_regression_model", "version": "21", "metric": "psi", "value": 0.42, "source": "evidently", "type": "data_drift" },
        { "id": "evt-43", "model": "sklearn_regression_model", "version": "22", "metric": "psi", "value": 0.42, "eventType": "drift" }
    ]);
    let (status, response) = post(&app.router, "/api/drift", &reports).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(response["decided"], 2, "{response}");
    let decisions = app.store.decisions(&Filter::default()).await.unwrap();
    assert_eq!(decisions.len(), 2);
    for d in &decisions {
        assert_eq!(
            d.decision.signal.kind(),
            mlops_relay::domain::SignalKind::Drift,
            "{}",
            d.decision.explanation()
        );
    }
    let kinds: Vec<String> = actions(&app.store)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        kinds,
        vec!["retrain"],
        "0.42 ≥ 0.3 retrains (once: the second is in its cooldown)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_within_event_grids_limit_is_decided_however_the_host_inflates_it() {
    // A 600 KB event (Event Grid takes up to 1 MB) whose text is full of quotes: the host sends it
    // double-encoded in Data and again in Metadata.data, near 2 MB in all, above the webhooks' 1 MiB limit.
    let app = app_with(1024 * 1024, None);
    let mut event = example_event();
    event["data"]["modelTags"]["notes"] = json!("say \"ok\" ".repeat(60_000));
    assert!(event.to_string().len() < 1_000_000);
    let invocation = grid_invocation(twice(&event), Some(event["data"].clone()));
    let body = invocation.to_string();
    assert!(body.len() > 1024 * 1024 + 900_000, "{}", body.len());
    let (status, response) = post(&app.router, "/AmlEvents", &invocation).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(
        actions(&app.store).await,
        vec![("request_approval".to_string(), "sent".to_string())],
        "{response}"
    );
}

/// An approval as the approval page records it, but posted from outside.
fn forged_approval() -> Value {
    json!({
        "specversion": "1.0", "type": "MlopsRelay.ApprovalDecided", "source": "mlops-relay/approvals",
        "id": "forged-1", "time": "2026-11-23T09:00:40Z",
        "data": { "model": "sklearn_regression_model", "version": "22", "environment": "staging",
                  "approver": "bob@contoso.example", "decision": "approve" }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_own_events_are_refused_from_a_delivery() {
    let app = app();
    approval_links(&app).await;
    let deployment = json!({
        "specversion": "1.0", "type": "MlopsRelay.DeploymentCompleted", "source": "mlops-relay/worker",
        "id": "forged-2", "time": "2026-11-23T09:00:50Z",
        "data": { "model": "sklearn_regression_model", "version": "22", "environment": "staging",
                  "endpoint": "e", "deployment": "d", "smokeTest": "passed" }
    });
    let (status, body) = post(
        &app.router,
        "/api/events",
        &json!([forged_approval(), deployment]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["decided"], 0, "{body}");
    assert!(
        body["dead_lettered"][0]
            .as_str()
            .unwrap()
            .contains("mlops-relay's own event type"),
        "{body}"
    );
    let (status, body) = post(
        &app.router,
        "/AmlEvents",
        &grid_invocation(forged_approval(), None),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        actions(&app.store)
            .await
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>(),
        vec!["request_approval"],
        "no vote counted, no deployment: only the approval page's signed links decide"
    );
    // One dead letter per delivery, with every reason and the body once.
    let letters = app.store.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 2);
    let batch = letters.iter().find(|l| l.source == "Events").unwrap();
    assert!(
        batch.reason.contains("event 0: ") && batch.reason.contains("event 1: "),
        "{}",
        batch.reason
    );
    assert_eq!(batch.body.matches("forged-1").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_link_decides_once_however_its_token_is_padded() {
    let app = app();
    let (_, links) = approval_links(&app).await;
    let url = &links[0].1;
    let form = format!("token={}&decision=approve", token_of(url));
    let (status, html) = page(&app, "POST", url, &form, &[]).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    // `+` is a space in a form: the same token with a space after it.
    let form = format!("token={}+&decision=reject", token_of(url));
    let (status, html) = page(&app, "POST", url, &form, &[]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{html}");
    assert!(html.contains("already been used"), "{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_batch_with_a_bad_record_decides_nothing() {
    let app = app();
    let batch = json!([
        { "id": "a", "model": "sklearn_regression_model", "metric": "psi", "value": 0.8 },
        { "id": "b", "model": "sklearn_regression_model", "metric": "psi", "value": 0.5, "time": "soon" },
    ]);
    let (status, body) = post(&app.router, "/api/drift", &batch).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("event 1"),
        "{body}"
    );
    assert!(
        actions(&app.store).await.is_empty(),
        "nothing of a refused batch is half done"
    );
    assert_eq!(
        app.store.decisions(&Filter::default()).await.unwrap().len(),
        0
    );
    assert_eq!(app.store.dead_letters().await.unwrap().len(), 1);
}

/// A SQLite store whose effects cannot be written (as Blob Storage answers 403 while a role assignment
/// propagates).
struct EffectsRefused(Arc<Sqlite>);

#[async_trait::async_trait]
impl StateStore for EffectsRefused {
    async fn commit(
        &self,
        signal: &mlops_relay::domain::Signal,
        now: DateTime<Utc>,
        window: chrono::TimeDelta,
        decide: Arc<mlops_relay::ports::Decider>,
    ) -> Result<mlops_relay::ports::Commit, PortError> {
        self.0.commit(signal, now, window, decide).await
    }
    async fn unsent(
        &self,
        before: DateTime<Utc>,
        after: Option<&LedgerEntry>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, PortError> {
        self.0.unsent(before, after, limit).await
    }
    async fn settle(
        &self,
        id: &str,
        status: mlops_relay::ports::ActionStatus,
        at: DateTime<Utc>,
    ) -> Result<(), PortError> {
        self.0.settle(id, status, at).await
    }
    async fn schedule_cursor(&self, name: &str) -> Result<Option<DateTime<Utc>>, PortError> {
        self.0.schedule_cursor(name).await
    }
    async fn advance_schedule(
        &self,
        name: &str,
        from: Option<DateTime<Utc>>,
        to: DateTime<Utc>,
    ) -> Result<bool, PortError> {
        self.0.advance_schedule(name, from, to).await
    }
    async fn dead_letter(&self, letter: &mlops_relay::ports::DeadLetter) -> Result<(), PortError> {
        self.0.dead_letter(letter).await
    }
    async fn actions(&self, filter: &Filter) -> Result<Vec<LedgerEntry>, PortError> {
        self.0.actions(filter).await
    }
    async fn entry(&self, id: &str) -> Result<Option<LedgerEntry>, PortError> {
        self.0.entry(id).await
    }
    async fn decisions(
        &self,
        filter: &Filter,
    ) -> Result<Vec<mlops_relay::ports::DecisionRecord>, PortError> {
        self.0.decisions(filter).await
    }
    async fn shared_key(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, PortError> {
        self.0.shared_key(name, fresh).await
    }
    async fn verify_chain(&self) -> Result<u64, PortError> {
        self.0.verify_chain().await
    }
    async fn dead_letters(&self) -> Result<Vec<mlops_relay::ports::DeadLetter>, PortError> {
        self.0.dead_letters().await
    }
    async fn record_effect(&self, _: &mlops_relay::ports::Effect) -> Result<(), PortError> {
        Err(PortError::Permanent(
            "PUT effects/…: 403 AuthorizationPermissionMismatch".into(),
        ))
    }
    async fn effect(&self, id: &str) -> Result<Option<mlops_relay::ports::Effect>, PortError> {
        self.0.effect(id).await
    }
    async fn effects(&self, filter: &Filter) -> Result<Vec<mlops_relay::ports::Effect>, PortError> {
        self.0.effects(filter).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_in_a_worker_is_retried_not_dead_lettered() {
    let app = app();
    let entry = one_queued_entry(&app).await;
    let relay = Relay {
        policy: Arc::new(Policy::parse(EXAMPLE_POLICY).unwrap()),
        store: Arc::new(EffectsRefused(app.store.clone())),
        queue: app.store.clone(),
        clock: app.clock.clone(),
    };
    let worker = Arc::new(DryRunWorker::new(
        relay.policy.clone(),
        app.approvals.clone(),
    ));
    let router = router(AppState {
        relay,
        worker,
        body_limit: mlops_relay::startup::BODY_LIMIT,
        approvals: app.approvals.clone(),
    });
    let body = json!({ "Data": { "message": entry }, "Metadata": { "DeliveryCount": "1" } });
    let (status, response) = post(&router, "/NotifyWorker", &body).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "redelivered: {response}"
    );
    assert!(app.store.dead_letters().await.unwrap().is_empty());
}
