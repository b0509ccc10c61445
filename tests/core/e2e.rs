//! The seed flow end to end, as local mode runs it (the same router, executor, SQLite store and queue
//! drainer), with local servers standing in for Azure ML (ARM and the scoring endpoint), Teams and
//! PagerDuty: registration → approval request → approve on the page → staging deployment → smoke test →
//! production gate → two approvals → production deployment; a drift burst → one retrain and one page;
//! and every event and message delivered twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use mlops_relay::adapters::sqlite::Sqlite;
use mlops_relay::adapters::workers::{AzureMl, LiveWorker};
use mlops_relay::approvals::Config;
use mlops_relay::executor::Relay;
use mlops_relay::functions::AppState;
use mlops_relay::policy::Policy;
use mlops_relay::ports::{Filter, LocalQueue, StateStore, SystemClock, Worker};
use mlops_relay::runtime::drain_once;
use mlops_relay::startup::{EXAMPLE_EVENT, EXAMPLE_POLICY, router};

/// Every request the stand-ins received: (service, method, path, headers we check, body).
type Log = Arc<Mutex<Vec<(String, String, String, Value)>>>;

#[derive(Clone)]
struct Stand {
    log: Log,
    base: String,
}

async fn stand_in(
    State(s): State<Stand>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let json: Value = serde_json::from_str(&body).unwrap_or(Value::String(body.clone()));
    let path = uri.path().to_string();
    let service = path.split('/').nth(1).unwrap_or("").to_string();
    let job_submitted = s.log.lock().unwrap().iter().any(|(_, m, u, _)| {
        m == "PUT" && u.split('?').next() == Some(path.as_str()) && path.contains("/jobs/")
    });
    s.log.lock().unwrap().push((
        service.clone(),
        method.to_string(),
        uri.to_string(),
        json.clone(),
    ));
    match service.as_str() {
        "teams" => StatusCode::ACCEPTED.into_response(),
        "pagerduty" => (StatusCode::ACCEPTED, axum::Json(json!({"status": "success"}))).into_response(),
        "score" => {
            // The smoke test scores the new deployment directly, with the endpoint key.
            assert_eq!(headers["authorization"], "Bearer endpoint-key");
            assert!(headers.contains_key("azureml-model-deployment"));
            axum::Json(json!([152.1])).into_response()
        }
        "operations" => axum::Json(json!({"status": "Succeeded"})).into_response(),
        _ if path.ends_with("/listKeys") => axum::Json(json!({"primaryKey": "endpoint-key"})).into_response(),
        _ if method == Method::GET && path.contains("/onlineEndpoints/") => axum::Json(json!({
            "location": "westeurope",
            "properties": {"authMode": "Key", "traffic": {"blue": 100}, "scoringUri": format!("{}/score", s.base)}
        }))
        .into_response(),
        _ if method == Method::PUT && path.contains("/onlineEndpoints/") => {
            let mut r = (StatusCode::CREATED, axum::Json(json)).into_response();
            r.headers_mut().insert("azure-asyncoperation", format!("{}/operations/1", s.base).parse().unwrap());
            r
        }
        // As Azure ML: a submitted job cannot be PUT again, and can be read.
        _ if method == Method::PUT && path.contains("/jobs/") && job_submitted => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"code": "UserError", "message": "A job with this name already exists."}})),
        )
            .into_response(),
        _ if method == Method::PUT && path.contains("/jobs/") => (StatusCode::CREATED, axum::Json(json!({"properties": {"status": "NotStarted"}}))).into_response(),
        _ if method == Method::GET && path.contains("/jobs/") && job_submitted => axum::Json(json!({"properties": {"status": "Running"}})).into_response(),
        _ => (StatusCode::NOT_FOUND, "no such stand-in").into_response(),
    }
}

struct World {
    router: Router,
    relay: Relay,
    db: Arc<Sqlite>,
    worker: Arc<LiveWorker>,
    log: Log,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log: Log = Arc::default();
    let app = Router::new().fallback(stand_in).with_state(Stand {
        log: log.clone(),
        base: base.clone(),
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Sqlite::open(dir.path().join("relay.db")).unwrap());
    let policy = Arc::new(Policy::parse(EXAMPLE_POLICY).unwrap());
    let relay = Relay {
        policy: policy.clone(),
        store: db.clone(),
        queue: db.clone(),
        clock: Arc::new(SystemClock),
    };
    let approvals = Arc::new(Config {
        key: b"e2e-key-0123456789abcdef0123456789".to_vec(),
        public_url: "http://relay.local".into(),
    });
    let teams = format!("{base}/teams/workflow");
    let settings = move |k: &str| match k {
        "TEAMS_DS_WEBHOOK_URL" => Some(teams.clone()),
        "PAGERDUTY_ROUTING_KEY" => Some("0123456789abcdef0123456789abcdef".to_string()),
        _ => None,
    };
    let mut client =
        mlops_relay::azureml::client::Client::new(&base, Arc::new(crate::helpers::FixedArmToken))
            .unwrap();
    client.poll_interval = Duration::from_millis(5);
    let worker = LiveWorker::new(policy, approvals.clone(), Arc::new(settings))
        .unwrap()
        .with_pagerduty_url(&format!("{base}/pagerduty/v2/enqueue"))
        .with_azureml(AzureMl {
            client,
            subscription: Some("sub-1".into()),
            resource_group: Some("rg-mlops".into()),
            workspaces: Vec::new(),
        });
    let worker = Arc::new(worker);
    let state = AppState {
        relay: relay.clone(),
        worker: worker.clone(),
        body_limit: 1 << 20,
        approvals,
    };
    World {
        router: router(state),
        relay,
        db,
        worker,
        log,
        _dir: dir,
    }
}

impl World {
    async fn post(&self, path: &str, content_type: &str, body: String) -> (StatusCode, String) {
        let req = Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap();
        let response = self.router.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Delivers an Event Grid event to the webhook, twice (Event Grid retries whole batches).
    async fn deliver_twice(&self, event: &Value) {
        for _ in 0..2 {
            let (status, body) = self
                .post(
                    "/api/events",
                    "application/json",
                    json!([event]).to_string(),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }

    /// Drains the queues until empty; every message is also carried out a second time (a redelivery).
    async fn drain(&self) {
        for _ in 0..20 {
            let messages: Vec<_> = self
                .db
                .messages(None)
                .await
                .unwrap()
                .into_iter()
                .filter(|(_, s)| s == "active")
                .collect();
            if messages.is_empty() {
                return;
            }
            let report = drain_once(
                &self.relay,
                self.db.as_ref(),
                self.worker.as_ref(),
                32,
                chrono::TimeDelta::seconds(60),
            )
            .await
            .unwrap();
            assert_eq!(
                report.dead_lettered,
                0,
                "{report:?}: {:?}",
                self.db.dead_letters().await.unwrap()
            );
            for (m, _) in messages {
                let entry = serde_json::from_str(&m.body).unwrap();
                // The redelivery of a message whose work was done: nothing is sent again.
                let (effect, fresh) = mlops_relay::functions::execute_once(
                    &self.relay,
                    self.worker.as_ref(),
                    &entry,
                    2,
                )
                .await
                .unwrap();
                assert!(!fresh, "{} was carried out again", effect.action_id);
                mlops_relay::functions::follow_up(&self.relay, &effect)
                    .await
                    .unwrap();
            }
        }
        panic!("queues did not drain");
    }

    fn requests(&self, service: &str) -> Vec<(String, String, Value)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == service)
            .map(|r| (r.1.clone(), r.2.clone(), r.3.clone()))
            .collect()
    }

    fn arm(&self, method: &str, contains: &str) -> Vec<(String, Value)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == "subscriptions" && r.1 == method && r.2.contains(contains))
            .map(|r| (r.2.clone(), r.3.clone()))
            .collect()
    }

    /// The approval links of the Teams cards sent so far: (approver, url).
    fn approval_links(&self) -> Vec<(String, String)> {
        self.requests("teams")
            .iter()
            .flat_map(|(_, _, card)| {
                card["attachments"][0]["content"]["actions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|a| {
                Some((
                    a["title"].as_str()?.strip_prefix("Review as ")?.to_string(),
                    a["url"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    async fn approve(&self, url: &str) -> (StatusCode, String) {
        let path = url.strip_prefix("http://relay.local").unwrap();
        let token = url.split("token=").nth(1).unwrap();
        // The page first (never acts), then the button.
        let req = Request::builder().uri(path).body(Body::empty()).unwrap();
        assert_eq!(
            self.router.clone().oneshot(req).await.unwrap().status(),
            StatusCode::OK
        );
        self.post(
            path,
            "application/x-www-form-urlencoded",
            format!("token={token}&decision=approve"),
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_to_production_with_every_delivery_twice() {
    let w = world().await;
    let mut event: Value = serde_json::from_str(EXAMPLE_EVENT).unwrap();
    event["eventTime"] = json!(chrono::Utc::now().to_rfc3339());
    w.deliver_twice(&event).await;
    w.drain().await;

    // The lead data scientist is asked once, on Teams, with a link of their own.
    let links = w.approval_links();
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0].0, "bob@contoso.example");
    let (status, page) = w.approve(&links[0].1).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (status, _) = w.approve(&links[0].1).await;
    assert_eq!(status, StatusCode::CONFLICT, "a link decides once");
    w.drain().await;

    // Staging: the registry model deployed, smoke-tested on the new deployment, then traffic moved.
    let deployments = w.arm("PUT", "/deployments/");
    assert!(!deployments.is_empty());
    let (uri, body) = &deployments[0];
    assert!(
        uri.contains(
            "/workspaces/mlw-staging/onlineEndpoints/sklearn-regression-model-staging/deployments/"
        ),
        "{uri}"
    );
    assert_eq!(
        body["properties"]["model"],
        "azureml://registries/mlr-shared/models/sklearn_regression_model/versions/22"
    );
    assert!(
        deployments.iter().all(|(u, _)| u == uri),
        "a redelivery re-PUTs the same deployment"
    );
    assert!(!w.requests("score").is_empty(), "smoke test ran");
    let traffic = w.arm("PUT", "/onlineEndpoints/sklearn-regression-model-staging?");
    assert!(
        !traffic.is_empty(),
        "traffic shifted after the passing smoke test"
    );

    // The passing smoke test opened the production gate: three software-team links, two needed.
    let prod_links: Vec<_> = w
        .approval_links()
        .into_iter()
        .filter(|(a, _)| a != "bob@contoso.example")
        .collect();
    let approvers: std::collections::BTreeSet<&str> =
        prod_links.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        approvers,
        [
            "carol@contoso.example",
            "dave@contoso.example",
            "erin@contoso.example"
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(
        w.arm("PUT", "/workspaces/mlw-prod/").len(),
        0,
        "nothing in production before the gate"
    );
    let carol = prod_links
        .iter()
        .find(|(a, _)| a == "carol@contoso.example")
        .unwrap()
        .1
        .clone();
    let dave = prod_links
        .iter()
        .find(|(a, _)| a == "dave@contoso.example")
        .unwrap()
        .1
        .clone();
    assert_eq!(w.approve(&carol).await.0, StatusCode::OK);
    w.drain().await;
    assert_eq!(
        w.arm("PUT", "/workspaces/mlw-prod/").len(),
        0,
        "1 of 2 is not enough"
    );
    assert_eq!(w.approve(&dave).await.0, StatusCode::OK);
    w.drain().await;

    // Production deploys the same registry id.
    let prod = w.arm(
        "PUT",
        "/workspaces/mlw-prod/onlineEndpoints/sklearn-regression-model/deployments/",
    );
    assert!(
        !prod.is_empty(),
        "{:?}",
        w.log
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.2.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        prod[0].1["properties"]["model"],
        "azureml://registries/mlr-shared/models/sklearn_regression_model/versions/22"
    );

    // Exactly once in the ledger, whatever was delivered twice.
    let entries = w.db.actions(&Filter::default()).await.unwrap();
    let kinds: Vec<&str> = entries.iter().map(|e| e.action.kind.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "deploy").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "request_approval").count(),
        2,
        "{kinds:?}"
    );
    let effects = w.db.effects(&Filter::default()).await.unwrap();
    assert_eq!(
        effects.len(),
        entries.len(),
        "one recorded effect per action"
    );
    w.db.verify_chain().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_burst_retrains_once_and_pages_once() {
    let w = world().await;
    for i in 0..6 {
        let report = json!({ "id": format!("burst-{i}"), "model": "fraud-detector", "version": "3", "metric": "psi", "value": 0.9, "threshold": 0.3, "source": "evidently" });
        for _ in 0..2 {
            let (status, body) = w
                .post("/api/drift", "application/json", report.to_string())
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    w.drain().await;
    let jobs = w.arm("PUT", "/jobs/");
    let names: std::collections::BTreeSet<&str> = jobs.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(
        names.len(),
        1,
        "one retraining job (re-PUT on redelivery is the same job): {names:?}"
    );
    let (uri, body) = &jobs[0];
    assert!(
        uri.contains("/workspaces/mlw-dev/jobs/mlops-relay-retrain-"),
        "{uri}"
    );
    // Carried out again without its effect (the first answer lost): Azure ML refuses the second PUT, and
    // the job it already has is the effect, not a failure to dead-letter.
    let retrain =
        w.db.actions(&Filter::default())
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.action.kind.as_str() == "retrain")
            .unwrap();
    let again = w
        .worker
        .execute(&retrain, 2, chrono::Utc::now())
        .await
        .unwrap();
    assert!(
        again.outcome.contains("already submitted (Running)"),
        "{}",
        again.outcome
    );
    assert_eq!(
        body["properties"]["jobs"]["train"]["componentId"],
        "azureml://registries/mlr-shared/components/train_pipeline/versions/4"
    );
    // The job's run fails: Azure ML's RunStatusChanged carries the tags the job was submitted with, and the
    // failure is traced back to the retrain (and the decision) that started it.
    let tags = &body["properties"]["tags"];
    let job = uri
        .split("/jobs/")
        .nth(1)
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    let failed = json!({
        "topic": "/subscriptions/sub-1/resourceGroups/rg-mlops/providers/Microsoft.MachineLearningServices/workspaces/mlw-dev",
        "subject": format!("experiments/e/runs/{job}"),
        "eventType": "Microsoft.MachineLearningServices.RunStatusChanged",
        "eventTime": chrono::Utc::now().to_rfc3339(),
        "id": "run-failed-1",
        "data": { "runId": job, "experimentName": "fraud-detector-retrain", "runTags": tags, "runStatus": "Failed" },
        "dataVersion": "", "metadataVersion": "1"
    });
    w.deliver_twice(&failed).await;
    let last =
        w.db.decisions(&Filter {
            model: None,
            limit: Some(1),
        })
        .await
        .unwrap()
        .remove(0);
    let retrain_id = tags["mlops-relay.action_id"].as_str().unwrap();
    assert!(
        last.decision
            .explanation()
            .contains(&format!("(retrain {retrain_id})")),
        "{}",
        last.decision.explanation()
    );
    assert_eq!(
        tags["mlops-relay.event_id"], "burst-0",
        "and from there to the drift report that caused it"
    );

    let pages: Vec<_> = w.requests("pagerduty");
    let keys: std::collections::BTreeSet<String> = pages
        .iter()
        .map(|(_, _, b)| b["dedup_key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys.len(),
        1,
        "one page (repeats share the dedup_key): {pages:?}"
    );
    assert_eq!(pages[0].2["event_action"], "trigger");
    assert_eq!(
        pages[0].2["routing_key"],
        "0123456789abcdef0123456789abcdef"
    );
}
