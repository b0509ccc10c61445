//! The approval page in a real headless Chromium (tests/browser/approval.mjs, playwright-core driving
//! Debian's chromium): load, approve, see the recorded result; a reused or expired link shows a clear
//! refusal. `make test` installs Chromium and playwright-core first (`make browser-deps`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mlops_relay::adapters::sqlite::Sqlite;
use mlops_relay::approvals::token::{Claims, sign};
use mlops_relay::ports::{Filter, StateStore};
use serde_json::Value;

use crate::processes::local;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs the browser script; returns (status, visible text).
fn browse(url: &str, action: &str) -> (u64, String) {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists()
            && Path::new(ROOT)
                .join(".tools/node_modules/playwright-core")
                .exists(),
        "the browser test needs Chromium ({chromium}) and playwright-core in .tools/: run `make browser-deps` (make test does)"
    );
    let out = Command::new("node")
        .arg(Path::new(ROOT).join("tests/browser/approval.mjs"))
        .args([url, action])
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "browser script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (
        line["status"].as_u64().unwrap(),
        line["text"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_in_a_real_browser_and_refuse_reuse_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let relay = local(&data, &dir.path().join("local.log"));
    let event =
        std::fs::read_to_string(Path::new(ROOT).join("examples/model-registered.json")).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/api/events", relay.url))
        .header("content-type", "application/json")
        .body(event)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());

    // The dry-run notify worker records the Teams card it would send, with the approver's link.
    let db = Sqlite::open(data.join("relay.db")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let link = loop {
        let effects = db.effects(&Filter::default()).await.unwrap();
        if let Some(url) = effects.iter().find_map(|e| {
            e.request["approval_links"][0]["url"]
                .as_str()
                .map(str::to_string)
        }) {
            break url;
        }
        assert!(
            Instant::now() < deadline,
            "no approval request was sent: {effects:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        link.starts_with(&format!("{}/api/approvals/request_approval-", relay.url)),
        "{link}"
    );

    let (status, text) = browse(&link, "look");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("Approve sklearn_regression_model:22?"),
        "{text}"
    );
    assert!(text.contains("bob@contoso.example"), "{text}");

    let (status, text) = browse(&link, "approve");
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("Decision recorded"), "{text}");
    assert!(
        text.contains("bob@contoso.example approves sklearn_regression_model:22 for staging"),
        "{text}"
    );
    let last = db
        .decisions(&Filter {
            model: None,
            limit: Some(1),
        })
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        last.decision.signal.kind().to_string(),
        "approval",
        "recorded in the decision log"
    );

    // The same link again: the page still shows, the button is refused.
    let (status, text) = browse(&link, "approve");
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("already been used"), "{text}");

    // A link that expired (signed with the relay's own key, an hour ago).
    let key = std::fs::read(data.join("approval.key")).unwrap();
    let token = link.split("token=").nth(1).unwrap();
    let claims_json = base64_decode(token.split('.').next().unwrap());
    let mut claims: Claims = serde_json::from_slice(&claims_json).unwrap();
    claims.expires = chrono::Utc::now().timestamp() - 3600;
    let expired = format!(
        "{}?token={}",
        link.split('?').next().unwrap(),
        sign(&key, &claims)
    );
    let (status, text) = browse(&expired, "look");
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("This approval link cannot be used") && text.contains("expired"),
        "{text}"
    );
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}
