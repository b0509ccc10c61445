//! Azure ML control-plane requests against a local server standing in for ARM: paths, api-version, bodies
//! (single-node pipeline job, registry-referenced deployment, traffic), provenance tags, bearer tokens, and
//! long-running operations followed to the end.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use mlops_relay::adapters::workers::{AzureMl, LiveWorker};
use mlops_relay::approvals::Config;
use mlops_relay::azureml::{self, Workspace, client::Client};
use mlops_relay::policy::{Action, Decision};
use mlops_relay::ports::{LedgerEntry, PortError, Worker};

use crate::helpers::{FixedArmToken, Sim, approval, drift, ledger_entry, registered, t};

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    auth: String,
    body: Value,
}

#[derive(Clone, Default)]
struct Arm {
    seen: Arc<Mutex<Vec<Seen>>>,
    polls: Arc<Mutex<u32>>,
    fail_with: Arc<Mutex<Option<u16>>>,
    /// The traffic shift's operation never ends.
    stuck_traffic: Arc<Mutex<bool>>,
    /// An earlier operation on the deployment runs for this many more reads of it: its PUT is refused with
    /// 409 and its GET says `Updating` until then (`u32::MAX`: it never ends).
    busy_deployment: Arc<Mutex<u32>>,
    /// The job was submitted already: its PUT is refused with 409, its GET finds it running.
    job_exists: Arc<Mutex<bool>>,
}

async fn arm(
    State(s): State<(Arm, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let (arm, base) = s;
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    arm.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        uri: uri.to_string(),
        auth,
        body: body.clone(),
    });
    if let Some(code) = *arm.fail_with.lock().unwrap() {
        return (
            StatusCode::from_u16(code).unwrap(),
            axum::Json(json!({"error": {"code": "Denied", "message": "no"}})),
        )
            .into_response();
    }
    let path = uri.path();
    if path.contains("/deployments/") {
        let mut busy = arm.busy_deployment.lock().unwrap();
        if *busy > 0 && method == Method::PUT {
            return (
                StatusCode::CONFLICT,
                axum::Json(json!({"error": {"code": "Conflict", "message": "Conflict of operation, another operation on same entity is already running in workspace mlw-staging."}})),
            )
                .into_response();
        }
        if method == Method::GET {
            let state = if *busy > 0 { "Updating" } else { "Succeeded" };
            if *busy != u32::MAX {
                *busy = busy.saturating_sub(1);
            }
            return axum::Json(json!({ "properties": { "provisioningState": state } }))
                .into_response();
        }
    }
    if path.contains("/jobs/") && *arm.job_exists.lock().unwrap() {
        if method == Method::PUT {
            return (
                StatusCode::CONFLICT,
                axum::Json(json!({"error": {"code": "Conflict", "message": "Conflict of operation, another operation on same entity is already running in workspace mlw-dev."}})),
            )
                .into_response();
        }
        return axum::Json(json!({ "properties": { "status": "Running" } })).into_response();
    }
    if path.starts_with("/operations/traffic") && *arm.stuck_traffic.lock().unwrap() {
        return axum::Json(json!({ "status": "InProgress" })).into_response();
    }
    if path.starts_with("/operations/") {
        let mut polls = arm.polls.lock().unwrap();
        *polls += 1;
        let status = if *polls < 3 {
            "InProgress"
        } else {
            "Succeeded"
        };
        let mut r = axum::Json(json!({ "status": status })).into_response();
        r.headers_mut().insert("retry-after", "0".parse().unwrap());
        return r;
    }
    if method == Method::GET && path.contains("/onlineEndpoints/") {
        return axum::Json(json!({
            "location": "westeurope", "identity": {"type": "SystemAssigned"}, "tags": {"team": "ml"},
            "properties": {"authMode": "Key", "traffic": {"blue": 100}, "scoringUri": "https://e.westeurope.inference.ml.azure.com/score"}
        }))
        .into_response();
    }
    if path.contains("/deployments/")
        || (method == Method::PUT && path.contains("/onlineEndpoints/"))
    {
        let operation = if path.contains("/deployments/") {
            "1"
        } else {
            "traffic"
        };
        let mut r = (StatusCode::CREATED, axum::Json(body)).into_response();
        r.headers_mut().insert("retry-after", "0".parse().unwrap());
        r.headers_mut().insert(
            "azure-asyncoperation",
            format!("{base}/operations/{operation}?api-version=2024-10-01")
                .parse()
                .unwrap(),
        );
        return r;
    }
    (
        StatusCode::CREATED,
        axum::Json(json!({ "properties": { "status": "NotStarted" } })),
    )
        .into_response()
}

async fn start() -> (Arm, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = Arm::default();
    let app = Router::new()
        .fallback(arm)
        .with_state((state.clone(), base.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (state, base)
}

fn client(base: &str) -> Client {
    let mut c = Client::new(base, Arc::new(FixedArmToken)).unwrap();
    c.poll_interval = Duration::from_millis(10);
    c
}

fn entry(d: &Decision, a: &Action) -> LedgerEntry {
    ledger_entry(
        d,
        a,
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    )
}

fn ws() -> Workspace {
    Workspace {
        subscription: "sub-1".into(),
        resource_group: "rg-mlops".into(),
        name: "mlw-dev".into(),
    }
}

/// The staging deployment an approved registration of fraud:7 asks for, and the simulation that decided it.
fn staging_deployment() -> (Sim, LedgerEntry) {
    let mut sim = Sim::new();
    sim.run(&registered(
        "fraud",
        "7",
        &[("owner", "owner@x.io"), ("auc", "0.93")],
        "mlw-dev",
        t(9, 0),
    ));
    let d = sim.run(&approval(
        "fraud",
        "7",
        "staging",
        "lead@x.io",
        true,
        t(9, 5),
    ));
    let e = entry(
        &d,
        d.actions
            .iter()
            .find(|a| a.kind.as_str() == "deploy")
            .expect("approved → deploy"),
    );
    (sim, e)
}

/// [`staging_deployment`] with no smoke test: straight from the deployment to the traffic shift.
fn staging_deployment_without_smoke_test() -> (Sim, LedgerEntry) {
    let (sim, mut e) = staging_deployment();
    let mlops_relay::policy::ActionParams::Deploy { smoke_test, .. } = &mut e.action.params else {
        panic!("a deployment");
    };
    *smoke_test = None;
    (sim, e)
}

const WS_PATH: &str = "/subscriptions/sub-1/resourceGroups/rg-mlops/providers/Microsoft.MachineLearningServices/workspaces/mlw-dev";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrain_submits_a_single_node_pipeline_job_named_after_the_action() {
    let (arm, base) = start().await;
    let mut sim = Sim::new();
    let d = sim.run(&drift("d-9", "fraud", Some(0.5), t(2, 0)));
    let e = entry(
        &d,
        d.actions
            .iter()
            .find(|a| a.kind.as_str() == "retrain")
            .unwrap(),
    );
    let request = azureml::submit_job(&e, &ws()).unwrap();
    let response = client(&base).call_and_wait(&request).await.unwrap();
    assert_eq!(response.status, 201);

    let seen = arm.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "PUT");
    assert_eq!(
        s.uri,
        format!(
            "{WS_PATH}/jobs/mlops-relay-{}?api-version=2024-10-01",
            e.action.action_id
        )
    );
    assert_eq!(s.auth, "Bearer arm-token");
    let p = &s.body["properties"];
    assert_eq!(p["jobType"], "Pipeline");
    assert_eq!(p["jobs"]["train"]["type"], "pipeline");
    assert_eq!(
        p["jobs"]["train"]["componentId"],
        "azureml://registries/mlr-shared/components/train/versions/1"
    );
    assert_eq!(p["tags"]["mlops-relay.event_id"], "d-9");
    assert_eq!(
        p["tags"]["mlops-relay.decision_id"],
        Value::String(d.decision_id())
    );
    assert_eq!(
        p["tags"]["mlops-relay.action_id"],
        Value::String(e.action.action_id.to_string())
    );
    assert_eq!(
        p["tags"]["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    for (name, input) in p["inputs"].as_object().unwrap() {
        assert_eq!(input["jobInputType"], "literal", "{name}");
        assert_eq!(
            p["jobs"]["train"]["inputs"][name]["value"],
            format!("${{{{parent.inputs.{name}}}}}")
        );
    }

    // A retry re-PUTs the same job: same name, so Azure ML updates instead of starting another.
    client(&base).call(&request).await.unwrap();
    let seen = arm.seen.lock().unwrap().clone();
    assert_eq!(seen[0].uri, seen[1].uri);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_is_polled_when_arms_retry_after_says() {
    let (arm, base) = start().await;
    let (_, e) = staging_deployment();
    let staging = Workspace {
        name: "mlw-staging".into(),
        ..ws()
    };
    let mut c = client(&base);
    c.poll_interval = Duration::from_secs(3600);
    let request = azureml::deploy(&e, &staging, "westeurope").unwrap();
    let done = tokio::time::timeout(Duration::from_secs(20), c.call_and_wait(&request)).await;
    assert!(
        matches!(done, Ok(Ok(_))),
        "Retry-After: 0 polls at once, not after the hour"
    );
    assert_eq!(*arm.polls.lock().unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_references_the_registry_model_and_follows_the_operation() {
    let (arm, base) = start().await;
    let (_, e) = staging_deployment();
    let staging = Workspace {
        name: "mlw-staging".into(),
        ..ws()
    };
    let c = client(&base);
    let endpoint = c
        .call(&azureml::get_endpoint(&staging, "fraud-staging"))
        .await
        .unwrap();
    let request =
        azureml::deploy(&e, &staging, endpoint.body["location"].as_str().unwrap()).unwrap();
    c.call_and_wait(&request).await.unwrap();
    assert_eq!(*arm.polls.lock().unwrap(), 3, "polled until Succeeded");

    let seen = arm.seen.lock().unwrap().clone();
    let put = seen.iter().find(|s| s.method == "PUT").unwrap();
    assert!(put.uri.starts_with("/subscriptions/sub-1/resourceGroups/rg-mlops/providers/Microsoft.MachineLearningServices/workspaces/mlw-staging/onlineEndpoints/fraud-staging/deployments/"), "{}", put.uri);
    assert!(put.uri.ends_with("?api-version=2024-10-01"));
    assert_eq!(put.body["location"], "westeurope");
    assert_eq!(
        put.body["properties"]["model"],
        "azureml://registries/mlr-shared/models/fraud/versions/7"
    );
    assert_eq!(put.body["properties"]["endpointComputeType"], "Managed");
    assert!(put.body["sku"]["capacity"].as_u64().unwrap() >= 1);
    assert_eq!(put.body["tags"]["mlops-relay.environment"], "staging");

    // Traffic moves with a re-PUT of the endpoint as read.
    let traffic =
        azureml::shift_traffic(&staging, "fraud-staging", &endpoint.body, &[("green", 100)]);
    c.call_and_wait(&traffic).await.unwrap();
    let seen = arm.seen.lock().unwrap().clone();
    let last_put = seen.iter().rev().find(|s| s.method == "PUT").unwrap();
    assert_eq!(
        last_put.body["properties"]["traffic"],
        json!({"green": 100})
    );
    assert_eq!(
        last_put.body["properties"]["authMode"], "Key",
        "everything else as it was"
    );
    assert_eq!(last_put.body["tags"], json!({"team": "ml"}));
}

/// A deployment ends within the client's action budget, under the Functions host's `functionTimeout`, even
/// though its PUT and its traffic shift may each wait up to `poll_timeout`: past the budget it is Transient
/// (the message comes back) instead of running on until the host ends the invocation itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_ends_within_the_action_budget() {
    let (arm, base) = start().await;
    *arm.stuck_traffic.lock().unwrap() = true;
    let (sim, e) = staging_deployment_without_smoke_test();
    let mut c = client(&base);
    c.poll_timeout = Duration::from_millis(600);
    c.action_budget = Duration::from_millis(300);
    let worker = live_worker(&sim, c);
    let started = std::time::Instant::now();
    let err = worker.execute(&e, 1, t(9, 6)).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, PortError::Transient(m) if m.contains("not finished within 300ms")),
        "{err:?}"
    );
    assert!(
        took < Duration::from_millis(550),
        "took {took:?}, past the budget"
    );
    let seen = arm.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|s| s.uri.starts_with("/operations/traffic")),
        "it got as far as the traffic shift"
    );
}

fn live_worker(sim: &Sim, c: Client) -> LiveWorker {
    worker_on(
        sim,
        AzureMl {
            client: c,
            subscription: Some("sub-1".into()),
            resource_group: Some("rg-mlops".into()),
            workspaces: Vec::new(),
        },
    )
}

/// A worker on the simulation's policy, with no notification routes, calling Azure ML as `aml` says.
fn worker_on(sim: &Sim, aml: AzureMl) -> LiveWorker {
    LiveWorker::new(
        Arc::new(sim.policy.clone()),
        Arc::new(Config {
            key: b"k".to_vec(),
            public_url: "http://relay.local".into(),
        }),
        Arc::new(|_: &str| None),
    )
    .unwrap()
    .with_azureml(aml)
}

/// A deployment redelivered while its first PUT is still provisioning (or one whose endpoint is busy) is
/// refused with 409 by ARM. The worker waits for the deployment to settle and PUTs again, instead of
/// failing a conflict that ends by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_waits_out_an_operation_already_running_on_it() {
    let (arm, base) = start().await;
    *arm.busy_deployment.lock().unwrap() = 2;
    let (sim, e) = staging_deployment_without_smoke_test();
    let effect = live_worker(&sim, client(&base))
        .execute(&e, 2, t(9, 6))
        .await
        .unwrap();
    assert!(
        effect.outcome.contains("smoke test skipped"),
        "{}",
        effect.outcome
    );
    let seen = arm.seen.lock().unwrap().clone();
    let on_deployment: Vec<&str> = seen
        .iter()
        .filter(|s| s.uri.contains("/deployments/"))
        .map(|s| s.method.as_str())
        .collect();
    assert_eq!(
        on_deployment,
        ["PUT", "GET", "GET", "GET", "PUT"],
        "refused, read until settled, sent again"
    );
}

/// A retrain redelivered after its job was submitted finds the job it named (the name is the action's),
/// whether Azure ML refuses the second PUT with 400 or, while the job starts, with 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubmitted_retrain_finds_its_job_behind_a_conflict() {
    let (arm, base) = start().await;
    *arm.job_exists.lock().unwrap() = true;
    let mut sim = Sim::new();
    let d = sim.run(&drift("d-10", "fraud", Some(0.5), t(2, 0)));
    let retrain = d
        .actions
        .iter()
        .find(|a| a.kind.as_str() == "retrain")
        .expect("drift → retrain");
    let effect = live_worker(&sim, client(&base))
        .execute(&entry(&d, retrain), 2, t(2, 1))
        .await
        .unwrap();
    assert!(
        effect.outcome.contains("already submitted (Running)"),
        "{}",
        effect.outcome
    );
}

/// An operation that never ends on the deployment is Transient within `poll_timeout`: the message comes back
/// later rather than being dead-lettered as a bad request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_that_does_not_end_is_transient() {
    let (arm, base) = start().await;
    *arm.busy_deployment.lock().unwrap() = u32::MAX;
    let (sim, e) = staging_deployment();
    let mut c = client(&base);
    c.poll_timeout = Duration::from_millis(200);
    let err = live_worker(&sim, c)
        .execute(&e, 1, t(9, 6))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PortError::Transient(m) if !m.starts_with("transient") && m.contains("409") && m.contains("another operation") && m.contains("for over 200ms")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_classified() {
    let (arm, base) = start().await;
    let req = azureml::get_endpoint(&ws(), "missing");
    for (code, transient, needle) in [
        (403, false, "AzureML Data Scientist"),
        (404, false, "not found"),
        (
            409,
            true,
            "another operation on this resource is still running",
        ),
        (429, true, "429"),
        (503, true, "503"),
    ] {
        *arm.fail_with.lock().unwrap() = Some(code);
        match client(&base).call(&req).await.unwrap_err() {
            PortError::Transient(m) => assert!(transient && m.contains(needle), "{code}: {m}"),
            PortError::Permanent(m) => assert!(!transient && m.contains(needle), "{code}: {m}"),
            other => panic!("{code}: Azure ML never rejects as a queue does: {other:?}"),
        }
    }
}

/// A live worker that knows where workspaces live only by their resource ids.
fn placed_by_ids(sim: &Sim, base: &str, ids: Vec<Workspace>) -> LiveWorker {
    worker_on(
        sim,
        AzureMl {
            client: client(base),
            subscription: None,
            resource_group: None,
            workspaces: ids,
        },
    )
}

/// The deployment gives the relay its workspaces' resource ids (`RELAY_AZUREML_WORKSPACE_IDS`): a policy that
/// names only workspaces (as the example does) then deploys into the right subscription and resource group,
/// where without them every deployment was dead-lettered for want of a resource group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_known_by_its_resource_id_is_deployed_into_where_it_lives() {
    let ids = AzureMl::parse_workspace_ids(
        " /subscriptions/sub-9/resourceGroups/rg-ml-staging/providers/Microsoft.MachineLearningServices/workspaces/mlw-staging,\
         /SUBSCRIPTIONS/sub-9/resourcegroups/rg-ml-dev/providers/microsoft.machinelearningservices/WORKSPACES/mlw-dev/ ",
    )
    .unwrap();
    assert_eq!(
        ids.iter()
            .map(|w| w.resource_group.as_str())
            .collect::<Vec<_>>(),
        ["rg-ml-staging", "rg-ml-dev"]
    );
    for bad in [
        "/subscriptions/sub-9/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st",
        "mlw-staging",
        "/subscriptions//resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/w",
    ] {
        let e = AzureMl::parse_workspace_ids(bad).unwrap_err();
        assert!(
            e.contains("is not an Azure ML workspace resource id"),
            "{e}"
        );
    }

    let (arm, base) = start().await;
    let (sim, e) = staging_deployment_without_smoke_test();
    let worker = placed_by_ids(&sim, &base, ids);
    let unplaced = worker.unplaced_environments();
    assert!(
        unplaced.len() == 1 && unplaced[0].contains("workspace mlw-prod (prod)"),
        "only prod is not listed: {unplaced:?}"
    );
    worker.execute(&e, 1, t(9, 6)).await.unwrap();
    let seen = arm.seen.lock().unwrap().clone();
    let put = seen
        .iter()
        .find(|s| s.method == "PUT" && s.uri.contains("/deployments/"))
        .expect("the deployment was PUT");
    assert!(
        put.uri.starts_with("/subscriptions/sub-9/resourceGroups/rg-ml-staging/providers/Microsoft.MachineLearningServices/workspaces/mlw-staging/onlineEndpoints/"),
        "{}",
        put.uri
    );

    // Two watched workspaces of that name: which one is a guess, so neither.
    let twins = AzureMl::parse_workspace_ids(
        "/subscriptions/sub-9/resourceGroups/rg-a/providers/Microsoft.MachineLearningServices/workspaces/mlw-staging,\
         /subscriptions/sub-9/resourceGroups/rg-b/providers/Microsoft.MachineLearningServices/workspaces/mlw-staging",
    )
    .unwrap();
    let worker = placed_by_ids(&sim, &base, twins);
    assert!(
        worker
            .unplaced_environments()
            .iter()
            .any(|why| why.contains("lists 2 workspaces of that name")),
        "{:?}",
        worker.unplaced_environments()
    );
}
