//! Exactly-once effects across real processes: several `mlops-relay serve` instances sharing one SQLite
//! store under duplicate concurrent deliveries, and a `local` relay killed with SIGKILL mid-burst.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};

use mlops_relay::adapters::sqlite::Sqlite;
use mlops_relay::domain::Signal;
use mlops_relay::events::Inbound;
use mlops_relay::policy::Policy;
use mlops_relay::ports::{Filter, LocalQueue, StateStore};
use mlops_relay::replay::Engine;
use mlops_relay::startup::EXAMPLE_POLICY;

const BIN: &str = env!("CARGO_BIN_EXE_mlops-relay");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const TOPIC: &str = "/subscriptions/6f1c2a9e-0d4b-4c1e-9b7a-3e5d8f2a1c40/resourceGroups/rg-mlops/providers/Microsoft.MachineLearningServices/workspaces/mlw-dev";

/// A relay process, killed when dropped.
pub(crate) struct Relay {
    child: Child,
    pub(crate) url: String,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `mlops-relay ARGS` and waits for the line that says where it listens.
pub(crate) fn start(args: &[&str], env: &[(&str, &str)], log: &Path) -> Relay {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(ROOT)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .env_remove("FUNCTIONS_CUSTOMHANDLER_PORT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawns");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| {
                panic!(
                    "exited before listening; log: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .unwrap();
        if let Some(at) = line.find("http://") {
            break line[at..].trim().to_string();
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Relay { child, url }
}

fn serve(db: &Path, log: &Path) -> Relay {
    let policy = Path::new(ROOT).join("examples/policy.toml");
    start(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("RELAY_STATE_URL", &format!("sqlite:{}", db.display())),
            ("RELAY_POLICY", policy.to_str().unwrap()),
        ],
        log,
    )
}

pub(crate) fn local(dir: &Path, log: &Path) -> Relay {
    // A short message lock, so what the killed process held is redelivered within the test.
    start(
        &[
            "local",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--message-lock",
            "2s",
        ],
        &[],
        log,
    )
}

fn registered(i: usize) -> Value {
    json!({
        "topic": TOPIC, "subject": format!("models/model-{i}:1"),
        "eventType": "Microsoft.MachineLearningServices.ModelRegistered", "eventTime": "2026-11-23T08:00:00Z",
        "id": format!("reg-{i}"),
        "data": { "modelName": format!("model-{i}"), "modelVersion": "1", "modelTags": { "auc": "0.9", "owner": "alice@contoso.example" } },
        "dataVersion": "2", "metadataVersion": "1"
    })
}

fn failed(i: usize) -> Value {
    json!({
        "topic": TOPIC, "subject": format!("experiments/e/runs/run-{i}"),
        "eventType": "Microsoft.MachineLearningServices.RunStatusChanged", "eventTime": "2026-11-23T08:01:00Z",
        "id": format!("fail-{i}"),
        "data": { "runId": format!("run-{i}"), "runTags": { "mlops-relay.model": format!("model-{i}") }, "runStatus": "Failed" },
        "dataVersion": "", "metadataVersion": "1"
    })
}

fn drift(i: usize) -> Value {
    json!({ "id": format!("drift-{i}"), "model": format!("model-{i}"), "version": "1", "metric": "psi", "value": 0.8, "threshold": 0.3, "source": "evidently" })
}

/// Where a delivery goes: the host's eventGridTrigger invocation (double-encoded, as the host sends it),
/// the Event Grid webhook, or the drift webhook.
#[derive(Clone)]
struct Delivery {
    path: &'static str,
    body: String,
    event: Value,
}

fn as_invocation(event: Value) -> Delivery {
    let twice = Value::String(Value::String(event.to_string()).to_string());
    let body =
        json!({ "Data": { "event": twice }, "Metadata": { "sys": { "MethodName": "AmlEvents" } } })
            .to_string();
    Delivery {
        path: "/AmlEvents",
        body,
        event,
    }
}

fn as_webhook(event: Value) -> Delivery {
    Delivery {
        path: "/api/events",
        body: json!([event]).to_string(),
        event,
    }
}

fn as_drift(event: Value) -> Delivery {
    Delivery {
        path: "/api/drift",
        body: event.to_string(),
        event,
    }
}

/// The action ids the policy takes for these (mutually independent) events, decided in memory.
fn expected_actions(events: &[Value]) -> BTreeSet<String> {
    let policy = Policy::parse(EXAMPLE_POLICY).unwrap();
    let mut engine = Engine::new(&policy, false);
    let mut ids = BTreeSet::new();
    for event in events {
        for record in Inbound::parse_delivery(event.clone()).unwrap() {
            let signal = Signal::from_inbound(record.unwrap(), Utc::now()).unwrap();
            engine.step(&signal, None, &mut |d| {
                ids.extend(d.actions.iter().map(|a| a.action_id.to_string()))
            });
        }
    }
    ids
}

/// Posts like the host and Event Grid do: a 5xx is retried (redelivery), anything else is final.
async fn deliver(client: &reqwest::Client, base: &str, d: &Delivery) -> u32 {
    let mut retries = 0;
    loop {
        let response = client
            .post(format!("{base}{}", d.path))
            .header("content-type", "application/json")
            .body(d.body.clone())
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => return retries,
            Ok(r) if r.status().is_server_error() && retries < 5 => retries += 1,
            Ok(r) => panic!(
                "{} answered {}: {}",
                d.path,
                r.status(),
                r.text().await.unwrap_or_default()
            ),
            Err(e) if retries < 5 => {
                eprintln!("retrying after {e}");
                retries += 1
            }
            Err(e) => panic!("{}: {e}", d.path),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn same(found: &BTreeSet<String>, expected: &BTreeSet<String>, what: &str) {
    let missing: Vec<_> = expected.difference(found).collect();
    let extra: Vec<_> = found.difference(expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, extra {extra:?}"
    );
}

struct Findings {
    decisions: usize,
    ledger: BTreeSet<String>,
    ledger_rows: usize,
    unsent: usize,
    queued: BTreeSet<String>,
    queued_rows: usize,
}

async fn findings(db: &Path) -> Findings {
    let store = Sqlite::open(db).unwrap();
    let entries: Vec<_> = store
        .actions(&Filter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| !e.event_id.starts_with("schedule:"))
        .collect();
    let messages: Vec<_> = store
        .messages(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|(m, _)| !m.correlation_id.starts_with("schedule:"))
        .collect();
    let decisions = store
        .decisions(&Filter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|r| !r.decision.signal.event_id.starts_with("schedule:"))
        .count();
    store
        .verify_chain()
        .await
        .expect("the decision log's hash chain holds");
    Findings {
        decisions,
        ledger: entries
            .iter()
            .map(|e| e.action.action_id.to_string())
            .collect(),
        ledger_rows: entries.len(),
        unsent: entries
            .iter()
            .filter(|e| e.status.as_str() != "sent")
            .count(),
        queued: messages.iter().map(|(m, _)| m.message_id.clone()).collect(),
        queued_rows: messages.len(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_deliveries_through_three_processes_act_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    // Create the schema before three processes race to.
    Sqlite::open(&db).unwrap();
    let relays: Vec<Relay> = (0..3)
        .map(|i| serve(&db, &dir.path().join(format!("serve-{i}.log"))))
        .collect();

    let mut deliveries = Vec::new();
    for i in 0..6 {
        deliveries.push(as_invocation(registered(i)));
        deliveries.push(as_webhook(failed(i)));
        deliveries.push(as_drift(drift(i)));
    }
    let events: Vec<Value> = deliveries.iter().map(|d| d.event.clone()).collect();
    let expected = expected_actions(&events);
    assert_eq!(
        expected.len(),
        6 * 4,
        "per model: request_approval, notify, retrain, page"
    );

    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (n, d) in deliveries.iter().enumerate() {
        for copy in 0..10 {
            let (client, d, base) = (
                client.clone(),
                d.clone(),
                relays[(n + copy) % 3].url.clone(),
            );
            tasks.spawn(async move { deliver(&client, &base, &d).await });
        }
    }
    let mut retried = 0;
    while let Some(r) = tasks.join_next().await {
        retried += r.unwrap();
    }

    let f = findings(&db).await;
    assert_eq!(
        f.decisions,
        deliveries.len(),
        "one decision record per event (retried deliveries: {retried})"
    );
    same(
        &f.ledger,
        &expected,
        "the ledger holds exactly the policy's actions",
    );
    assert_eq!(f.ledger_rows, expected.len(), "one ledger entry per action");
    assert_eq!(f.unsent, 0);
    same(&f.queued, &expected, "one queued message per action");
    assert_eq!(f.queued_rows, expected.len());
}

async fn wait_drained(db: &Path, actions: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let store = Sqlite::open(db).unwrap();
        let active: u64 = store.depths().await.unwrap().iter().map(|d| d.1).sum();
        let effects = store
            .effects(&Filter::default())
            .await
            .unwrap()
            .iter()
            .filter(|e| {
                !e.request["provenance"]["event_id"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("schedule:")
            })
            .count();
        if active == 0 && effects >= actions {
            return effects;
        }
        assert!(
            Instant::now() < deadline,
            "queues not drained: {active} active, {effects}/{actions} effects"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = data.join("relay.db");
    // Ten drift reports: within the example policy's fleet budget (10 retrains a day), so the actions do not
    // depend on arrival order and can be predicted.
    let deliveries: Vec<Delivery> = (0..150)
        .map(|i| {
            if i % 15 == 0 {
                as_drift(drift(i))
            } else {
                as_webhook(registered(i))
            }
        })
        .collect();
    let events: Vec<Value> = deliveries.iter().map(|d| d.event.clone()).collect();
    let expected = expected_actions(&events);

    let mut first = local(&data, &dir.path().join("local-1.log"));
    let client = reqwest::Client::new();
    let mut burst = tokio::task::JoinSet::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    // Four at a time, like a steady Event Grid stream, so the kill lands in the middle.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
    for d in deliveries.clone() {
        let (client, base, gate, done) = (
            client.clone(),
            first.url.clone(),
            gate.clone(),
            done_tx.clone(),
        );
        burst.spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let ok = client
                .post(format!("{base}{}", d.path))
                .header("content-type", "application/json")
                .body(d.body)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            let _ = done.send(ok);
        });
    }
    let mut acknowledged = 0;
    while acknowledged < 40 {
        acknowledged += done_rx.recv().await.unwrap() as usize;
    }
    // SIGKILL: no shutdown hook, no flush.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    burst.abort_all();
    while burst.join_next().await.is_some() {}
    let at_kill = findings(&db).await;
    assert!(
        at_kill.decisions < deliveries.len(),
        "the kill must land mid-burst ({} decided)",
        at_kill.decisions
    );

    // Restart and redeliver everything, as Event Grid does for what was not acknowledged (and more).
    let second = local(&data, &dir.path().join("local-2.log"));
    for d in &deliveries {
        deliver(&client, &second.url, d).await;
    }
    let effects = wait_drained(&db, expected.len()).await;

    let f = findings(&db).await;
    assert_eq!(
        f.decisions,
        deliveries.len(),
        "every event decided exactly once"
    );
    same(&f.ledger, &expected, "nothing lost, nothing extra");
    assert_eq!(f.ledger_rows, expected.len(), "nothing duplicated");
    assert_eq!(
        f.unsent, 0,
        "the crash between ledger and enqueue was healed"
    );
    same(&f.queued, &expected, "one message per action");
    assert_eq!(f.queued_rows, expected.len());
    assert_eq!(effects, expected.len(), "each action carried out once");
    let store = Sqlite::open(&db).unwrap();
    assert!(store.dead_letters().await.unwrap().is_empty());
}

/// `serve` answers `GET /` before it reads the policy, but a policy that does not parse still stops it at once,
/// with a non-zero status and the policy's diagnostics, before it serves anything else.
#[test]
fn serve_with_a_broken_policy_exits_with_its_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[defaults]\ncooldown = \"soon\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env(
            "RELAY_STATE_URL",
            format!("sqlite:{}", dir.path().join("relay.db").display()),
        )
        .env("RELAY_POLICY", &policy)
        .env_remove("FUNCTIONS_CUSTOMHANDLER_PORT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("policy.toml"), "{stderr}");
    assert!(
        !dir.path().join("relay.db").exists(),
        "the store was opened for a policy that does not parse"
    );
}
