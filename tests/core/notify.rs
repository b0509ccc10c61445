//! Notification requests against the documented shapes (reference §5): Teams Adaptive Card message, Slack
//! blocks, PagerDuty Events API v2 trigger/resolve with a stable dedup_key, generic webhook.

use mlops_relay::notify::{self, Links, PAGERDUTY_URL};
use mlops_relay::policy::spec::{RouteKind, RouteSpec};
use mlops_relay::policy::{Action, Decision};
use mlops_relay::ports::LedgerEntry;
use serde_json::Value;

use crate::helpers::{Sim, drift, ledger_entry, registered, t};

fn entry(d: &Decision, a: &Action) -> LedgerEntry {
    ledger_entry(d, a, None)
}

fn approval_entry() -> LedgerEntry {
    let mut sim = Sim::new();
    let d = sim.run(&registered(
        "fraud",
        "7",
        &[("owner", "owner@x.io"), ("auc", "0.93")],
        "mlw-dev",
        t(9, 0),
    ));
    let a = d
        .actions
        .iter()
        .find(|a| a.kind.as_str() == "request_approval")
        .expect("approval requested");
    entry(&d, a)
}

fn page_entries() -> Vec<LedgerEntry> {
    let mut sim = Sim::new();
    let d = sim.run(&drift("d-1", "fraud", Some(0.9), t(2, 5)));
    d.actions.iter().map(|a| entry(&d, a)).collect()
}

fn links() -> Links {
    Links {
        approvals: vec![(
            "lead@x.io".into(),
            "https://relay.example/api/approvals/request_approval-1?token=abc".into(),
        )],
        studio: None,
    }
}

fn route(kind: RouteKind) -> RouteSpec {
    RouteSpec {
        kind,
        url_setting: Some("HOOK_URL".into()),
        routing_key_setting: Some("PD_KEY".into()),
    }
}

#[test]
fn teams_gets_an_adaptive_card_with_the_approval_link() {
    let e = approval_entry();
    let req = notify::request(&e, &route(RouteKind::Teams), &links()).unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.url, None,
        "the webhook URL is a secret read from the app setting at send time"
    );
    assert_eq!(req.setting.as_deref(), Some("HOOK_URL"));
    let b = &req.body;
    assert_eq!(b["type"], "message");
    let att = &b["attachments"][0];
    assert_eq!(
        att["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert!(att["contentUrl"].is_null());
    let card = &att["content"];
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["version"], "1.2");
    assert_eq!(
        card["$schema"],
        "http://adaptivecards.io/schemas/adaptive-card.json"
    );
    assert_eq!(card["body"][0]["type"], "TextBlock");
    assert_eq!(
        card["body"][0]["text"],
        "Approval needed: fraud:7 → staging"
    );
    let facts: Vec<(String, String)> = card["body"][1]["facts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["title"].as_str().unwrap().into(),
                f["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        facts.contains(&("auc".into(), "0.93".into())),
        "metrics are shown: {facts:?}"
    );
    assert!(
        facts
            .iter()
            .any(|(t, v)| t == "Needs" && v.starts_with("1 of 2 approvers")),
        "{facts:?}"
    );
    assert!(
        facts
            .iter()
            .any(|(t, v)| t == "Requested by" && v.contains("may not approve")),
        "{facts:?}"
    );
    // Only the actions Workflows supports; no Action.Submit.
    assert_eq!(card["actions"][0]["type"], "Action.OpenUrl");
    assert_eq!(
        card["actions"][0]["title"], "Review as lead@x.io",
        "one link per approver"
    );
    assert_eq!(
        card["actions"][0]["url"],
        "https://relay.example/api/approvals/request_approval-1?token=abc"
    );
}

#[test]
fn slack_text_from_outside_cannot_mention_or_link_and_stays_within_slacks_limits() {
    let mut sim = Sim::new();
    let model = format!("fraud{}", "x".repeat(140));
    let d = sim.run(&registered(
        &model,
        "7",
        &[
            ("auc", "0.9"),
            (
                "note",
                "<!channel> <https://evil.example|Review as lead@x.io> & co",
            ),
        ],
        "mlw-dev",
        t(9, 0),
    ));
    let e = entry(&d, &d.actions[0]);
    let b = notify::request(&e, &route(RouteKind::Slack), &links())
        .unwrap()
        .body;
    let all = b.to_string();
    assert!(
        !all.contains("<!channel>") && !all.contains("<https://evil"),
        "{all}"
    );
    assert!(
        b["blocks"][1]["text"]["text"]
            .as_str()
            .unwrap()
            .contains("&lt;!channel&gt;")
    );
    let header = b["blocks"][0]["text"]["text"].as_str().unwrap();
    assert!(
        header.chars().count() <= 150 && header.ends_with('…'),
        "{header}"
    );
}

#[test]
fn slack_gets_text_and_blocks() {
    let e = approval_entry();
    let req = notify::request(&e, &route(RouteKind::Slack), &links()).unwrap();
    let b = &req.body;
    assert!(
        b["text"]
            .as_str()
            .unwrap()
            .starts_with("Approval needed: fraud:7 → staging: "),
        "fallback text for notifications"
    );
    assert_eq!(b["blocks"][0]["type"], "header");
    assert_eq!(b["blocks"][1]["type"], "section");
    assert_eq!(b["blocks"][1]["text"]["type"], "mrkdwn");
    assert!(
        b["blocks"][1]["text"]["text"]
            .as_str()
            .unwrap()
            .contains("*Model:* fraud")
    );
    assert_eq!(b["blocks"][2]["elements"][0]["type"], "button");
    assert_eq!(
        b["blocks"][2]["elements"][0]["url"],
        "https://relay.example/api/approvals/request_approval-1?token=abc"
    );
}

#[test]
fn pagerduty_trigger_has_the_documented_fields_and_a_stable_dedup_key() {
    let entries = page_entries();
    let page = entries
        .iter()
        .find(|e| e.action.kind.as_str() == "page")
        .expect("0.9 pages");
    let req = notify::request(page, &route(RouteKind::Pagerduty), &Links::default()).unwrap();
    assert_eq!(req.url.as_deref(), Some(PAGERDUTY_URL));
    assert_eq!(
        req.setting.as_deref(),
        Some("PD_KEY"),
        "the routing key comes from the app setting"
    );
    let b = &req.body;
    assert!(b.get("routing_key").is_none(), "never recorded");
    assert_eq!(b["event_action"], "trigger");
    let key = b["dedup_key"].as_str().unwrap();
    assert!(key.contains("fraud") && key.len() <= 255, "{key}");
    let p = &b["payload"];
    assert!(["critical", "error", "warning", "info"].contains(&p["severity"].as_str().unwrap()));
    assert!(
        !p["summary"].as_str().unwrap().is_empty() && p["summary"].as_str().unwrap().len() <= 1024
    );
    assert_eq!(p["source"], "fraud");
    assert_eq!(p["component"], "fraud");
    assert_eq!(p["timestamp"], "2026-11-02T02:05:00Z");
    assert_eq!(p["custom_details"]["event_id"], "d-1");

    // The same model and signal pages with the same key, so repeats group.
    let again = page_entries();
    let again = again
        .iter()
        .find(|e| e.action.kind.as_str() == "page")
        .unwrap();
    assert_eq!(
        notify::request(again, &route(RouteKind::Pagerduty), &Links::default())
            .unwrap()
            .body["dedup_key"],
        key
    );
}

#[test]
fn a_page_about_no_model_sends_no_component_rather_than_null() {
    let mut sim = Sim::new();
    let d = sim.run(&crate::helpers::alert(
        "a1",
        "Sev1",
        mlops_relay::domain::AlertCondition::Fired,
        t(0, 0),
    ));
    let req = notify::request(
        &entry(&d, &d.actions[0]),
        &route(RouteKind::Pagerduty),
        &Links::default(),
    )
    .unwrap();
    assert_eq!(req.body["payload"]["source"], "mlops-relay");
    assert!(
        req.body["payload"].get("component").is_none(),
        "{}",
        req.body
    );
}

#[test]
fn webhook_carries_the_entry() {
    let e = approval_entry();
    let req = notify::request(&e, &route(RouteKind::Webhook), &links()).unwrap();
    assert_eq!(
        req.body["entry"]["action"]["action_id"],
        Value::String(e.action.action_id.to_string())
    );
    assert_eq!(
        req.body["approval_urls"][0]["url"],
        "https://relay.example/api/approvals/request_approval-1?token=abc"
    );
}

#[test]
fn only_notifications_are_notified() {
    let entries = page_entries();
    let retrain = entries
        .iter()
        .find(|e| e.action.kind.as_str() == "retrain")
        .expect("0.9 retrains");
    let err = notify::request(retrain, &route(RouteKind::Teams), &Links::default()).unwrap_err();
    assert!(err.contains("not a notification"));
}

mod live {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use mlops_relay::adapters::workers::{LiveWorker, classify};
    use mlops_relay::approvals::Config;
    use mlops_relay::policy::spec::RouteKind;
    use mlops_relay::ports::{PortError, Worker};
    use serde_json::Value;

    use super::{approval_entry, page_entries};
    use crate::helpers::policy;

    type Seen = Arc<Mutex<Vec<(String, Value)>>>;

    async fn server(status: u16, reply: &'static str) -> (Seen, String) {
        let seen: Seen = Arc::default();
        let app = Router::new()
            .fallback(
                move |State(seen): State<Seen>, uri: axum::http::Uri, body: String| async move {
                    seen.lock()
                        .unwrap()
                        .push((uri.path().to_string(), serde_json::from_str(&body).unwrap()));
                    (StatusCode::from_u16(status).unwrap(), reply)
                },
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (seen, base)
    }

    fn worker(settings: Vec<(&'static str, String)>) -> LiveWorker {
        let config = Arc::new(Config {
            key: b"k".repeat(32),
            public_url: "https://relay.example".into(),
        });
        let lookup = move |k: &str| {
            settings
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
        };
        LiveWorker::new(Arc::new(policy()), config, Arc::new(lookup)).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_configured_teams_route_is_called_with_the_card_and_per_approver_link() {
        let (seen, base) = server(202, "").await;
        let w = worker(vec![("TEAMS_URL", format!("{base}/workflows/hook"))]);
        let e = approval_entry();
        let effect = w.execute(&e, 1, e.recorded_at).await.unwrap();
        assert_eq!(effect.mode, "live");
        assert_eq!(effect.outcome, "sent (202)");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, "/workflows/hook");
        let card = &seen[0].1["attachments"][0]["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        let url = card["actions"][0]["url"].as_str().unwrap();
        assert!(
            url.starts_with(&format!(
                "https://relay.example/api/approvals/{}?token=",
                e.action.action_id
            )),
            "{url}"
        );
        assert!(
            !effect.request.to_string().contains(&base),
            "the webhook URL is a secret and is not recorded"
        );
        let token = url.split("token=").nth(1).unwrap();
        assert!(
            !effect.request.to_string().contains(token),
            "an approval link's token is not recorded once sent"
        );
        assert!(effect.request.to_string().contains("?token=…"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_webhook_that_does_not_answer_leaves_its_url_out_of_the_error() {
        let w = worker(vec![(
            "TEAMS_URL",
            "http://127.0.0.1:1/hook?sig=SECRET".into(),
        )]);
        let e = approval_entry();
        let err = w.execute(&e, 1, e.recorded_at).await.unwrap_err();
        assert!(matches!(err, PortError::Transient(_)), "{err:?}");
        assert!(!format!("{err:?}").contains("SECRET"), "{err:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pagerduty_gets_the_routing_key_and_unconfigured_routes_stay_dry() {
        let (seen, base) = server(202, r#"{"status":"success"}"#).await;
        let entries = page_entries();
        let page = entries
            .iter()
            .find(|e| e.action.kind.as_str() == "page")
            .unwrap();
        let dry = worker(vec![])
            .execute(page, 1, page.recorded_at)
            .await
            .unwrap();
        assert_eq!(dry.mode, "dry_run", "no PD_KEY: recorded, not sent");
        assert!(seen.lock().unwrap().is_empty());

        let key = "0123456789abcdef0123456789abcdef".to_string();
        let live =
            worker(vec![("PD_KEY", key.clone())]).with_pagerduty_url(&format!("{base}/v2/enqueue"));
        let effect = live.execute(page, 1, page.recorded_at).await.unwrap();
        assert_eq!(effect.mode, "live");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0].0, "/v2/enqueue");
        assert_eq!(seen[0].1["routing_key"], Value::String(key.clone()));
        assert_eq!(seen[0].1["event_action"], "trigger");
        assert!(
            !effect.request.to_string().contains(&key),
            "the routing key is never recorded"
        );
    }

    #[test]
    fn answers_are_classified() {
        assert!(matches!(
            classify(
                RouteKind::Teams,
                200,
                "Microsoft Teams endpoint returned HTTP error 429"
            ),
            Err(PortError::Transient(_))
        ));
        assert_eq!(classify(RouteKind::Teams, 200, "1").unwrap(), "sent (200)");
        assert!(matches!(
            classify(RouteKind::Slack, 429, "rate_limited"),
            Err(PortError::Transient(_))
        ));
        assert!(
            matches!(classify(RouteKind::Slack, 404, "channel_not_found"), Err(PortError::Permanent(m)) if m.contains("channel_not_found"))
        );
        assert!(matches!(
            classify(RouteKind::Pagerduty, 400, "invalid event"),
            Err(PortError::Permanent(_))
        ));
        assert_eq!(
            classify(RouteKind::Pagerduty, 202, "{}").unwrap(),
            "sent (202)"
        );
        assert!(matches!(
            classify(RouteKind::Webhook, 503, ""),
            Err(PortError::Transient(_))
        ));
    }
}
