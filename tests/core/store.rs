//! The state-store contract. Every adapter runs the same suite against a real backend (SQLite here; the Blob
//! adapter runs it against Azurite). A `Backend` opens a fresh store, and reopens the same one to show
//! durability.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use mlops_relay::adapters::sqlite::Sqlite;
use mlops_relay::domain::Signal;
use mlops_relay::policy::{Decision, Policy, decide};
use mlops_relay::ports::{
    ActionStatus, DeadLetter, Effect, Filter, LocalQueue, OutboundMessage, Queue, Sent, StateStore,
};
use serde_json::json;

use crate::helpers::{drift, policy, registered, t};

/// A backend under test: a fresh, empty store, and a second handle on the same data.
pub trait Backend {
    fn store(&self) -> Arc<dyn StateStore>;
    fn reopen(&self) -> Arc<dyn StateStore>;
}

pub struct SqliteBackend {
    dir: tempfile::TempDir,
}

impl SqliteBackend {
    pub fn new() -> Self {
        SqliteBackend {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("relay.db")
    }
    fn sqlite(&self) -> Sqlite {
        Sqlite::open(self.path()).unwrap()
    }
}

impl Backend for SqliteBackend {
    fn store(&self) -> Arc<dyn StateStore> {
        Arc::new(self.sqlite())
    }
    fn reopen(&self) -> Arc<dyn StateStore> {
        Arc::new(self.sqlite())
    }
}

async fn commit(
    store: &dyn StateStore,
    policy: &Policy,
    signal: &Signal,
    now: DateTime<Utc>,
) -> mlops_relay::ports::Commit {
    store
        .commit(signal, now, policy.dedupe_window, {
            let (policy, signal) = (policy.clone(), signal.clone());
            Arc::new(move |view| decide(&policy, &signal, view, now))
        })
        .await
        .unwrap()
}

fn decision(c: &mlops_relay::ports::Commit) -> &Decision {
    c.decision.as_ref().expect("decided now")
}

/// The suite. Each adapter calls it with its own backend.
pub async fn contract(backend: &dyn Backend) {
    decides_once_and_heals_unsent(backend.store().as_ref()).await;
    a_rejected_entry_is_settled_for_good(backend.store().as_ref()).await;
    state_carries_cooldowns(backend.store().as_ref()).await;
    schedule_cursors_move_conditionally(backend.store().as_ref()).await;
    dead_letters_and_effects(backend.store().as_ref()).await;
    the_log_is_chained_and_filtered(backend.store().as_ref()).await;
    concurrent_commits_decide_once(backend.store()).await;
    durable(backend).await;
    a_shared_key_is_made_once(backend).await;
}

async fn a_shared_key_is_made_once(backend: &dyn Backend) {
    // Instances starting together each offer a key of their own; all of them get the same one.
    let offers: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 48]).collect();
    let got = futures::future::join_all(offers.iter().map(|fresh| {
        let store = backend.reopen();
        async move { store.shared_key("approval-links", fresh).await.unwrap() }
    }))
    .await;
    assert!(
        offers.contains(&got[0]),
        "one of the offers won: {:?}",
        got[0]
    );
    assert!(got.iter().all(|k| *k == got[0]), "{got:?}");
    // It stands after a restart, whatever the new process offers; another name is another key.
    let reopened = backend.reopen();
    assert_eq!(
        reopened
            .shared_key("approval-links", &[9; 48])
            .await
            .unwrap(),
        got[0]
    );
    assert_eq!(
        reopened.shared_key("other", &[7; 32]).await.unwrap(),
        vec![7; 32]
    );
}

async fn decides_once_and_heals_unsent(store: &dyn StateStore) {
    let p = policy();
    let s = registered(
        "churn",
        "4",
        &[("owner", "alice"), ("auc", "0.9")],
        "mlw-dev",
        t(9, 0),
    );
    let first = commit(store, &p, &s, t(9, 0)).await;
    let d = decision(&first);
    assert_eq!(d.actions.len(), 1, "{}", d.explanation());
    assert_eq!(first.to_send.len(), 1);
    assert_eq!(first.to_send[0].action.action_id, d.actions[0].action_id);
    assert_eq!(first.to_send[0].event_id, "reg-churn-4");
    assert_eq!(first.to_send[0].decision_id, d.decision_id());

    // Redelivered before the enqueue was confirmed: no new decision, the same entry to send.
    let again = commit(store, &p, &s, t(9, 1)).await;
    assert!(again.decision.is_none());
    assert_eq!(again.to_send.len(), 1);
    assert_eq!(again.to_send[0].action.action_id, d.actions[0].action_id);

    // Unsent, for a sweep that does not wait for a redelivery: only entries recorded before the given time.
    let unsent = store.unsent(t(9, 1), None, 10).await.unwrap();
    assert_eq!(
        unsent
            .iter()
            .map(|e| e.action.action_id.clone())
            .collect::<Vec<_>>(),
        vec![d.actions[0].action_id.clone()]
    );
    assert!(
        store.unsent(t(9, 0), None, 10).await.unwrap().is_empty(),
        "recorded at 9:00, not before"
    );
    assert!(
        store.unsent(t(9, 1), None, 0).await.unwrap().is_empty(),
        "the limit holds"
    );
    // Pages: after the last entry of a page come the entries behind it, in (recorded_at, action id) order.
    let later: Vec<_> = ["5", "6"]
        .iter()
        .map(|v| {
            registered(
                "churn-pages",
                v,
                &[("owner", "alice"), ("auc", "0.9")],
                "mlw-dev",
                t(9, 0),
            )
        })
        .collect();
    for (i, signal) in later.iter().enumerate() {
        commit(
            store,
            &p,
            signal,
            t(9, 0) + TimeDelta::seconds(1 + i as i64),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.unsent(t(9, 1), after.as_ref(), 2).await.unwrap();
        seen.extend(page.iter().map(|e| e.action.action_id.to_string()));
        match page.last() {
            Some(last) if page.len() == 2 => after = Some(last.clone()),
            _ => break,
        }
    }
    assert_eq!(seen.len(), 3, "each entry once: {seen:?}");
    assert_eq!(seen[0], d.actions[0].action_id.to_string(), "oldest first");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3);
    for signal in &later {
        let entries = store
            .actions(&Filter {
                model: Some("churn-pages".into()),
                limit: None,
            })
            .await
            .unwrap();
        for e in entries.iter().filter(|e| e.event_id == signal.event_id) {
            store
                .settle(e.action.action_id.as_str(), ActionStatus::Sent, t(9, 1))
                .await
                .unwrap();
        }
    }

    store
        .settle(d.actions[0].action_id.as_str(), ActionStatus::Sent, t(9, 1))
        .await
        .unwrap();
    let third = commit(store, &p, &s, t(9, 2)).await;
    assert!(third.decision.is_none() && third.to_send.is_empty());
    assert!(
        store.unsent(t(10, 0), None, 10).await.unwrap().is_empty(),
        "sent: nothing left"
    );
    let ledger = store
        .actions(&Filter {
            model: Some("churn".into()),
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].status.as_str(), "sent");
}

async fn a_rejected_entry_is_settled_for_good(store: &dyn StateStore) {
    let p = policy();
    let s = registered(
        "ranker",
        "2",
        &[("owner", "alice"), ("auc", "0.9")],
        "mlw-dev",
        t(9, 0),
    );
    let first = commit(store, &p, &s, t(9, 0)).await;
    assert_eq!(first.to_send.len(), 1);
    let id = first.to_send[0].action.action_id.clone();

    store
        .settle(id.as_str(), ActionStatus::Rejected, t(9, 1))
        .await
        .unwrap();
    // A late "sent" (another instance's send that raced the refusal) does not overwrite the settled status.
    store
        .settle(id.as_str(), ActionStatus::Sent, t(9, 2))
        .await
        .unwrap();

    let again = commit(store, &p, &s, t(9, 3)).await;
    assert!(
        again.decision.is_none() && again.to_send.is_empty(),
        "not sent again on redelivery"
    );
    assert!(
        !store
            .unsent(t(10, 0), None, 100)
            .await
            .unwrap()
            .iter()
            .any(|e| e.action.action_id == id),
        "not swept"
    );
    let ledger = store
        .actions(&Filter {
            model: Some("ranker".into()),
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(
        ledger.iter().map(|e| e.status).collect::<Vec<_>>(),
        vec![ActionStatus::Rejected]
    );
    // The point read the approval page makes.
    assert_eq!(
        store.entry(id.as_str()).await.unwrap().as_ref(),
        ledger.first()
    );
    assert_eq!(store.entry("request_approval-0000").await.unwrap(), None);
}

async fn state_carries_cooldowns(store: &dyn StateStore) {
    let p = policy();
    let first = commit(
        store,
        &p,
        &drift("d1", "fraud", Some(0.4), t(10, 0)),
        t(10, 0),
    )
    .await;
    assert_eq!(
        decision(&first)
            .actions
            .iter()
            .map(|a| a.kind.as_str())
            .collect::<Vec<_>>(),
        vec!["retrain"]
    );
    let second = commit(
        store,
        &p,
        &drift("d2", "fraud", Some(0.5), t(10, 30)),
        t(10, 30),
    )
    .await;
    let d = decision(&second);
    assert!(
        d.actions.is_empty(),
        "within the cooldown: {}",
        d.explanation()
    );
    assert!(
        d.suppressed
            .iter()
            .any(|s| s.reason.contains("absorbed into")
                && s.reason
                    .contains(first.to_send[0].action.action_id.as_str())),
        "{:?}",
        d.suppressed
    );
    let later = commit(
        store,
        &p,
        &drift("d3", "fraud", Some(0.5), t(16, 1)),
        t(16, 1),
    )
    .await;
    assert_eq!(decision(&later).actions.len(), 1, "the cooldown has ended");
}

async fn schedule_cursors_move_conditionally(store: &dyn StateStore) {
    let (t1, t2, t3) = (t(1, 0), t(2, 0), t(3, 0));
    assert_eq!(store.schedule_cursor("nightly").await.unwrap(), None);
    assert!(store.advance_schedule("nightly", None, t1).await.unwrap());
    assert!(
        !store.advance_schedule("nightly", None, t1).await.unwrap(),
        "someone else created it first"
    );
    assert!(
        store
            .advance_schedule("nightly", Some(t1), t2)
            .await
            .unwrap()
    );
    assert!(
        !store
            .advance_schedule("nightly", Some(t1), t3)
            .await
            .unwrap(),
        "stale: the cursor moved"
    );
    assert_eq!(store.schedule_cursor("nightly").await.unwrap(), Some(t2));
    assert_eq!(
        store.schedule_cursor("weekly").await.unwrap(),
        None,
        "cursors are per schedule"
    );
}

async fn dead_letters_and_effects(store: &dyn StateStore) {
    let letter = DeadLetter {
        at: t(4, 0),
        source: "AmlEvents".into(),
        reason: "event 0: missing field `modelName`".into(),
        body: "{\"id\":1}".into(),
    };
    store.dead_letter(&letter).await.unwrap();
    assert!(store.dead_letters().await.unwrap().contains(&letter));

    let effect = |outcome: &str| Effect {
        action_id: "retrain-00000000000000000000000000000001".into(),
        model: Some("fraud".into()),
        mode: "dry_run".into(),
        request: json!({ "method": "PUT" }),
        outcome: outcome.into(),
        at: t(4, 1),
        follow_up: Vec::new(),
    };
    store
        .record_effect(&effect("first delivery"))
        .await
        .unwrap();
    store.record_effect(&effect("redelivery")).await.unwrap();
    let effects = store
        .effects(&Filter {
            model: Some("fraud".into()),
            limit: None,
        })
        .await
        .unwrap();
    let mine: Vec<_> = effects
        .iter()
        .filter(|e| e.action_id == "retrain-00000000000000000000000000000001")
        .collect();
    assert_eq!(mine.len(), 1, "one effect per action");
    assert_eq!(
        mine[0].outcome, "first delivery",
        "a redelivery does not overwrite what was done"
    );
    // The point read a redelivered message makes.
    assert_eq!(
        store
            .effect("retrain-00000000000000000000000000000001")
            .await
            .unwrap(),
        Some(effect("first delivery"))
    );
    assert_eq!(
        store
            .effect("retrain-00000000000000000000000000000099")
            .await
            .unwrap(),
        None
    );
}

async fn the_log_is_chained_and_filtered(store: &dyn StateStore) {
    let p = policy();
    let before = store.decisions(&Filter::default()).await.unwrap().len();
    for (i, model) in ["a", "b", "a"].iter().enumerate() {
        let s = drift(&format!("chain-{i}"), model, Some(0.1), t(5, i as u32));
        commit(store, &p, &s, t(5, i as u32)).await;
    }
    let all = store.decisions(&Filter::default()).await.unwrap();
    assert_eq!(all.len(), before + 3);
    for pair in all.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
        assert_eq!(pair[1].seq, pair[0].seq + 1);
    }
    assert_eq!(store.verify_chain().await.unwrap(), all.len() as u64);
    let only_a = store
        .decisions(&Filter {
            model: Some("a".into()),
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(only_a.len(), 2);
    let last = store
        .decisions(&Filter {
            model: None,
            limit: Some(1),
        })
        .await
        .unwrap();
    assert_eq!(last[0].decision.signal.event_id, "chain-2");
}

async fn concurrent_commits_decide_once(store: Arc<dyn StateStore>) {
    let p = Arc::new(policy());
    let s = Arc::new(registered(
        "race",
        "1",
        &[("owner", "alice"), ("auc", "0.9")],
        "mlw-dev",
        t(8, 0),
    ));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (store, p, s) = (store.clone(), p.clone(), s.clone());
            tokio::spawn(async move { commit(store.as_ref(), &p, &s, t(8, 0)).await })
        })
        .collect();
    let mut decided = 0;
    for task in tasks {
        decided += task.await.unwrap().decision.is_some() as usize;
    }
    assert_eq!(decided, 1);
    let ledger = store
        .actions(&Filter {
            model: Some("race".into()),
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(ledger.len(), 1);
}

async fn durable(backend: &dyn Backend) {
    let p = policy();
    let s = registered(
        "durable",
        "9",
        &[("owner", "alice"), ("auc", "0.9")],
        "mlw-dev",
        t(7, 0),
    );
    commit(backend.store().as_ref(), &p, &s, t(7, 0)).await;
    let reopened = backend.reopen();
    let again = commit(reopened.as_ref(), &p, &s, t(7, 5)).await;
    assert!(again.decision.is_none(), "the decision survived the reopen");
    assert_eq!(
        reopened
            .actions(&Filter {
                model: Some("durable".into()),
                limit: None
            })
            .await
            .unwrap()
            .len(),
        1
    );
    reopened.verify_chain().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_contract() {
    let backend = SqliteBackend::new();
    contract(&backend).await;
}

/// The state database as its own worker queue (`serve` and `local` on SQLite): a commit records and enqueues
/// in one transaction, so nothing is ever left recorded-but-unsent; entries that another mode left unsent are
/// enqueued by the next delivery of their signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outbox_enqueues_inside_the_commit() {
    let backend = SqliteBackend::new();
    let plain = backend.sqlite();
    let outbox = plain.as_outbox();
    assert!(outbox.is_outbox() && !plain.is_outbox());
    let p = policy();
    let at = |v: &str| {
        registered(
            "churn",
            v,
            &[("owner", "alice"), ("auc", "0.9")],
            "mlw-dev",
            t(9, 0),
        )
    };

    // Decided and enqueued at once.
    let first = commit(&outbox, &p, &at("4"), t(9, 0)).await;
    let id = decision(&first).actions[0].action_id.to_string();
    assert!(first.to_send.is_empty());
    assert_eq!(first.enqueued, vec![(id.clone(), Sent::New)]);
    let ledger = outbox.actions(&Filter::default()).await.unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].status.as_str(), "sent");
    let queued = outbox.messages(None).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].0.message_id, id);
    assert_eq!(queued[0].0.queue, "notifications");
    // The queue row holds no second copy of the entry; the message read back is the one `for_entry` builds,
    // its body the ledger's text, and a worker receives the same.
    let db = rusqlite::Connection::open(plain.path()).unwrap();
    let (copy, entry): (String, String) = db
        .query_row(
            "SELECT q.message, l.entry FROM queue q JOIN ledger l ON l.action_id = q.message_id",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(copy, "");
    let parsed = serde_json::from_str(&entry).unwrap();
    assert_eq!(queued[0].0, OutboundMessage::for_entry(&parsed));
    assert_eq!(queued[0].0.body, entry);
    let received = outbox
        .receive("notifications", 10, TimeDelta::seconds(60), t(9, 0))
        .await
        .unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].message, queued[0].0);
    outbox
        .complete("notifications", &id, t(9, 0))
        .await
        .unwrap();

    // A redelivery decides nothing and enqueues nothing.
    let again = commit(&outbox, &p, &at("4"), t(9, 1)).await;
    assert!(again.decision.is_none() && again.to_send.is_empty() && again.enqueued.is_empty());

    // Left recorded-but-unsent by a process with another queue: the outbox's next delivery enqueues it.
    let left = commit(&plain, &p, &at("5"), t(9, 2)).await;
    assert_eq!(left.to_send.len(), 1);
    let healed = commit(&outbox, &p, &at("5"), t(9, 3)).await;
    assert!(healed.decision.is_none() && healed.to_send.is_empty());
    let left_id = left.to_send[0].action.action_id.to_string();
    assert_eq!(healed.enqueued, vec![(left_id.clone(), Sent::New)]);
    let statuses: Vec<String> = outbox
        .actions(&Filter::default())
        .await
        .unwrap()
        .iter()
        .map(|e| e.status.as_str().to_string())
        .collect();
    assert_eq!(statuses, ["sent", "sent"]);
    assert_eq!(outbox.messages(None).await.unwrap().len(), 2);
    assert_eq!(outbox.verify_chain().await.unwrap(), 2);
}

/// A queue row that does not read back (damaged, or an outbox row whose ledger entry is gone) is still
/// received, with its text as the body, so that the drainer dead-letters it (it is not a ledger entry)
/// rather than it staying on the queue, never delivered, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queue_hands_over_rows_that_do_not_read_back() {
    let backend = SqliteBackend::new();
    let q = backend.sqlite();
    q.send(&message("retrain-1", "retrain-requests"))
        .await
        .unwrap();
    let db = rusqlite::Connection::open(q.path()).unwrap();
    db.execute_batch(
        "INSERT INTO queue(message_id, queue, message, enqueued_at, visible_at) VALUES
           ('damaged', 'retrain-requests', '{\"queue\": 1', '2000-01-01T00:00:00.000000Z', '2000-01-01T00:00:00.000000Z'),
           ('orphan', 'retrain-requests', '', '2000-01-01T00:00:01.000000Z', '2000-01-01T00:00:01.000000Z');",
    )
    .unwrap();
    let got = q
        .receive("retrain-requests", 10, TimeDelta::seconds(60), Utc::now())
        .await
        .unwrap();
    let seen: Vec<(&str, &str, &str)> = got
        .iter()
        .map(|r| {
            (
                r.message.message_id.as_str(),
                r.message.queue.as_str(),
                r.message.body.as_str(),
            )
        })
        .collect();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen[..2],
        [
            ("damaged", "retrain-requests", "{\"queue\": 1"),
            ("orphan", "retrain-requests", ""),
        ]
    );
    assert_eq!(got[2].message, message("retrain-1", "retrain-requests"));
    for r in &got[..2] {
        assert!(serde_json::from_str::<serde_json::Value>(&r.message.body).is_err());
        assert_eq!(r.delivery_count, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tampering_breaks_the_chain() {
    let backend = SqliteBackend::new();
    let store = backend.store();
    let p = policy();
    for i in 0..3 {
        commit(
            store.as_ref(),
            &p,
            &drift(&format!("t{i}"), "m", Some(0.9), t(6, i)),
            t(6, i),
        )
        .await;
    }
    assert_eq!(store.verify_chain().await.unwrap(), 3);
    let conn = rusqlite::Connection::open(backend.path()).unwrap();
    let record: String = conn
        .query_row("SELECT record FROM decisions WHERE seq = 2", [], |r| {
            r.get(0)
        })
        .unwrap();
    let forged = record.replace("\"t1\"", "\"forged\"");
    assert_ne!(forged, record);
    conn.execute("UPDATE decisions SET record = ?1 WHERE seq = 2", [forged])
        .unwrap();
    let err = store.verify_chain().await.unwrap_err();
    assert!(err.to_string().contains("broken at record 2"), "{err}");
}

/// A stored value that does not read back is reported, naming where it is, never skipped: an inspection
/// must not look complete when it is not, and no decision may be made on part of the state. The error is
/// permanent (it reads the same on retry), so the invocation dead-letters instead of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reports_stored_json_that_does_not_parse() {
    let backend = SqliteBackend::new();
    let store = backend.store();
    let p = policy();
    let c = commit(
        store.as_ref(),
        &p,
        &registered("m", "1", &[("auc", "0.9")], "mlw-dev", t(6, 0)),
        t(6, 0),
    )
    .await;
    assert_eq!(
        decision(&c).actions.len(),
        1,
        "{:?}",
        decision(&c).explanation()
    );
    let conn = rusqlite::Connection::open(backend.path()).unwrap();
    conn.execute("UPDATE ledger SET entry = '{\"cut short'", [])
        .unwrap();
    conn.execute("UPDATE approvals SET record = 'garbage'", [])
        .unwrap();

    let err = store.actions(&Filter::default()).await.unwrap_err();
    assert!(
        matches!(err, mlops_relay::ports::PortError::Permanent(_)),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("ledger.entry holds JSON that does not parse"),
        "{err}"
    );

    // The next registration of the model reads its pending approvals to supersede them.
    let next = registered("m", "2", &[("auc", "0.9")], "mlw-dev", t(6, 5));
    let err = store
        .commit(&next, t(6, 5), p.dedupe_window, {
            let (policy, signal) = (p.clone(), next.clone());
            Arc::new(move |view| decide(&policy, &signal, view, t(6, 5)))
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, mlops_relay::ports::PortError::Permanent(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("approvals.record"), "{err}");
    assert_eq!(
        store.decisions(&Filter::default()).await.unwrap().len(),
        1,
        "nothing was decided on part of the state"
    );
}

fn message(id: &str, queue: &str) -> OutboundMessage {
    OutboundMessage {
        queue: queue.into(),
        message_id: id.into(),
        correlation_id: "evt-1".into(),
        session_id: Some("fraud".into()),
        label: "retrain".into(),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        body: "{}".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queue_dedupes_and_peek_locks() {
    let backend = SqliteBackend::new();
    let q = backend.sqlite();
    assert_eq!(
        q.send(&message("retrain-1", "retrain-requests"))
            .await
            .unwrap(),
        Sent::New
    );
    assert_eq!(
        q.send(&message("retrain-1", "retrain-requests"))
            .await
            .unwrap(),
        Sent::Duplicate,
        "MessageId duplicate detection"
    );
    q.send(&message("retrain-2", "retrain-requests"))
        .await
        .unwrap();

    let now = Utc::now();
    let got = q
        .receive("retrain-requests", 1, TimeDelta::seconds(60), now)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].message,
        message("retrain-1", "retrain-requests"),
        "every property survives the queue"
    );
    assert_eq!(got[0].delivery_count, 1);
    // Locked: the next receive gets the other message only.
    let next = q
        .receive("retrain-requests", 10, TimeDelta::seconds(60), now)
        .await
        .unwrap();
    assert_eq!(
        next.iter()
            .map(|r| r.message.message_id.as_str())
            .collect::<Vec<_>>(),
        vec!["retrain-2"]
    );
    q.complete("retrain-requests", "retrain-2", now)
        .await
        .unwrap();
    // The lock expires without completion: redelivered with a higher count.
    let later = q
        .receive(
            "retrain-requests",
            10,
            TimeDelta::seconds(60),
            now + TimeDelta::seconds(61),
        )
        .await
        .unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].delivery_count, 2);
    assert!(
        q.receive("notifications", 10, TimeDelta::seconds(60), now)
            .await
            .unwrap()
            .is_empty(),
        "queues are separate"
    );
    assert_eq!(
        q.depths().await.unwrap(),
        vec![("retrain-requests".to_string(), 1, 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queue_renews_a_lock_only_for_its_holder() {
    let backend = SqliteBackend::new();
    let q = backend.sqlite();
    let (queue, lock) = ("deploy-requests", TimeDelta::seconds(60));
    q.send(&message("deploy-1", queue)).await.unwrap();
    let now = Utc::now();
    let first = q.receive(queue, 1, lock, now).await.unwrap().remove(0);

    // Held: renewed past the first lock, so a receive after it finds nothing.
    assert!(
        q.renew(queue, &first, now + TimeDelta::seconds(120))
            .await
            .unwrap()
    );
    assert!(
        q.receive(queue, 1, lock, now + TimeDelta::seconds(90))
            .await
            .unwrap()
            .is_empty(),
        "a renewed lock outlives the first one"
    );

    // Expired and received by another drainer: the first holder no longer owns it.
    let second = q
        .receive(queue, 1, lock, now + TimeDelta::seconds(121))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.delivery_count, 2);
    assert!(
        !q.renew(queue, &first, now + TimeDelta::seconds(200))
            .await
            .unwrap(),
        "a stale receipt cannot take the lock back"
    );
    assert!(
        q.renew(queue, &second, now + TimeDelta::seconds(200))
            .await
            .unwrap()
    );

    // Completed: nothing to renew.
    q.complete(queue, "deploy-1", now + TimeDelta::seconds(130))
        .await
        .unwrap();
    assert!(
        !q.renew(queue, &second, now + TimeDelta::seconds(300))
            .await
            .unwrap()
    );
}
