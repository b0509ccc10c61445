//! The Blob state store against Azurite: the same contract suite as SQLite, plus instances racing on one
//! container and a tampered log. `make test` starts Azurite (`make azurite`); the address can be changed with
//! `AZURITE_BLOB_URL`. Without Azurite these tests fail, saying how to start it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use azure_core::http::{RequestContent, Url};
use azure_storage_blob::BlobContainerClient;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use hmac::{Hmac, KeyInit, Mac};
use mlops_relay::adapters::blob::BlobStore;
use mlops_relay::domain::Signal;
use mlops_relay::policy::{Policy, decide};
use mlops_relay::ports::{Commit, Filter, PortError, StateStore};
use sha2::Sha256;

use crate::helpers::{drift, policy, registered, t};
use crate::store::{Backend, contract};

/// Azurite's well-known development account (public, documented; not a secret).
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The SAS's signed version; the string-to-sign below is the one for 2020-12-06 and later.
const SAS_VERSION: &str = "2026-04-06";

fn azurite_url() -> String {
    std::env::var("AZURITE_BLOB_URL")
        .unwrap_or_else(|_| format!("http://127.0.0.1:10000/{DEV_ACCOUNT}"))
        .trim_end_matches('/')
        .to_string()
}

/// Fails the test (never skips it) when nothing answers at the Azurite address.
async fn require_azurite(base: &str) {
    let url = Url::parse(base).unwrap_or_else(|e| panic!("AZURITE_BLOB_URL {base:?}: {e}"));
    let addr = format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port_or_known_default().unwrap_or(10000)
    );
    let reached = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(&addr),
    )
    .await;
    if !matches!(reached, Ok(Ok(_))) {
        panic!(
            "Azurite is not reachable at {base}: run `make azurite` first (`make test` starts it), \
             or point AZURITE_BLOB_URL at a running one"
        );
    }
}

/// An account SAS for the development account, signed as documented for service version 2020-12-06 and
/// later: account, permissions, services, resource types, start, expiry, IP, protocol, version, encryption
/// scope, each followed by a newline.
fn account_sas(account: &str, key_base64: &str, now: DateTime<Utc>) -> String {
    let at = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let (sp, ss, srt, spr) = ("rwdlac", "b", "sco", "https,http");
    let (st, se) = (
        at(now - TimeDelta::minutes(5)),
        at(now + TimeDelta::hours(2)),
    );
    let string_to_sign =
        format!("{account}\n{sp}\n{ss}\n{srt}\n{st}\n{se}\n\n{spr}\n{SAS_VERSION}\n\n");
    let key = STANDARD.decode(key_base64).expect("the key is base64");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(string_to_sign.as_bytes());
    let sig = STANDARD.encode(mac.finalize().into_bytes());
    let mut url = Url::parse("http://sas.invalid/").unwrap();
    url.query_pairs_mut()
        .append_pair("sv", SAS_VERSION)
        .append_pair("ss", ss)
        .append_pair("srt", srt)
        .append_pair("sp", sp)
        .append_pair("st", &st)
        .append_pair("se", &se)
        .append_pair("spr", spr)
        .append_pair("sig", &sig);
    url.query().unwrap().to_string()
}

/// A container name no other test (or earlier run) uses.
fn unique_container() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "relay-{}-{}-{}",
        std::process::id(),
        Utc::now().timestamp_micros(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh container on Azurite; every store opened on it shares its data, as instances on Azure do.
pub struct BlobBackend {
    url: String,
}

impl BlobBackend {
    pub async fn new() -> Self {
        let base = azurite_url();
        require_azurite(&base).await;
        let sas = account_sas(DEV_ACCOUNT, DEV_KEY, Utc::now());
        let backend = BlobBackend {
            url: format!("{base}/{}?{sas}", unique_container()),
        };
        backend.open().ensure_container().await.unwrap();
        backend
    }

    fn open(&self) -> BlobStore {
        BlobStore::new(&self.url, None).unwrap()
    }

    /// The same container through the SDK directly, to tamper with it.
    fn raw(&self) -> BlobContainerClient {
        BlobContainerClient::new(Url::parse(&self.url).unwrap(), None, None).unwrap()
    }
}

impl Backend for BlobBackend {
    fn store(&self) -> Arc<dyn StateStore> {
        Arc::new(self.open())
    }
    fn reopen(&self) -> Arc<dyn StateStore> {
        Arc::new(self.open())
    }
}

async fn commit(
    store: &dyn StateStore,
    policy: &Policy,
    signal: &Signal,
    now: DateTime<Utc>,
) -> Result<Commit, PortError> {
    store
        .commit(signal, now, policy.dedupe_window, {
            let (policy, signal) = (policy.clone(), signal.clone());
            Arc::new(move |view| decide(&policy, &signal, view, now))
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_store_contract_on_azurite() {
    let backend = BlobBackend::new().await;
    contract(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_blob_stores_racing_on_one_signal_decide_once() {
    let backend = BlobBackend::new().await;
    let stores: [Arc<dyn StateStore>; 2] = [backend.store(), backend.reopen()];
    let p = Arc::new(policy());
    let s = Arc::new(registered(
        "race",
        "7",
        &[("owner", "alice"), ("auc", "0.9")],
        "mlw-dev",
        t(8, 0),
    ));

    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let (store, p, s) = (stores[i % 2].clone(), p.clone(), s.clone());
            tokio::spawn(async move { commit(store.as_ref(), &p, &s, t(8, 0)).await })
        })
        .collect();
    let mut decided = 0;
    let mut sent_ids = std::collections::BTreeSet::new();
    for task in tasks {
        let c = task.await.unwrap().expect("every racer gets an answer");
        decided += c.decision.is_some() as usize;
        sent_ids.extend(c.to_send.iter().map(|e| e.action.action_id.to_string()));
    }

    assert_eq!(decided, 1, "exactly one racer decides");
    assert_eq!(
        sent_ids.len(),
        1,
        "every racer hands back the same one action"
    );
    let race = Filter {
        model: Some("race".into()),
        limit: None,
    };
    for store in &stores {
        assert_eq!(store.actions(&race).await.unwrap().len(), 1);
        assert_eq!(store.decisions(&race).await.unwrap().len(), 1);
        assert_eq!(store.verify_chain().await.unwrap(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_tampering_breaks_the_chain() {
    let backend = BlobBackend::new().await;
    let store = backend.store();
    let p = policy();
    for i in 0..3 {
        let s = drift(&format!("t{i}"), "m", Some(0.9), t(6, i));
        commit(store.as_ref(), &p, &s, t(6, i)).await.unwrap();
    }
    assert_eq!(store.verify_chain().await.unwrap(), 3);

    // Rewrite record 2 with another event id, leaving its stored hash as it was.
    let raw = backend.raw();
    let blob = raw.blob_client("log/000000000002.json");
    let original = blob
        .download(None)
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap();
    let mut log: serde_json::Value = serde_json::from_slice(&original).unwrap();
    let record = log["record"].as_str().unwrap().to_string();
    let forged = record.replace("\"t1\"", "\"forged\"");
    assert_ne!(forged, record);
    log["record"] = forged.into();
    let body: RequestContent<_, _> = azure_core::Bytes::from(log.to_string()).into();
    blob.upload(body, None).await.unwrap();
    let err = store.verify_chain().await.unwrap_err();
    assert!(err.to_string().contains("broken at record 2"), "{err}");

    // A record removed from the log is a break too.
    blob.delete(None).await.unwrap();
    let err = backend.reopen().verify_chain().await.unwrap_err();
    assert!(
        err.to_string().contains("broken at record 2") && err.to_string().contains("missing"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfigured_storage_fails_permanently_saying_what_to_fix() {
    let base = azurite_url();
    require_azurite(&base).await;
    let p = policy();
    let s = drift("misconfigured", "m", Some(0.9), t(6, 0));

    let sas = account_sas(DEV_ACCOUNT, DEV_KEY, Utc::now());
    let missing = format!("{base}/{}?{sas}", unique_container());
    let err = commit(&BlobStore::new(&missing, None).unwrap(), &p, &s, t(6, 0))
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    let wrong_key = STANDARD.encode([7u8; 64]);
    let forged = format!(
        "{base}/{}?{}",
        unique_container(),
        account_sas(DEV_ACCOUNT, &wrong_key, Utc::now())
    );
    let err = commit(&BlobStore::new(&forged, None).unwrap(), &p, &s, t(6, 0))
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(
        err.to_string().contains("Storage Blob Data Contributor"),
        "{err}"
    );
    assert!(
        !err.to_string().contains("sig="),
        "no SAS in messages: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_over_4_mib_reads_whole_while_another_instance_rewrites_it() {
    // The SDK's download fetches a blob over 4 MiB in ranges, the later ones under If-Match on the first
    // one's ETag: a write by another instance in between failed the read with "unexpected 412", which
    // failed every commit once state.json had grown past 4 MiB. Here a 6 MiB blob, read through the store
    // (a shared key is the blob read most directly), while it is rewritten without pause.
    let backend = BlobBackend::new().await;
    let raw = Arc::new(backend.raw().blob_client("keys/big.json"));
    let versions: Vec<Vec<u8>> = (0..2u8).map(|v| vec![v; 4_500_000]).collect();
    let doc = |key: &[u8]| serde_json::json!({ "key": STANDARD.encode(key) }).to_string();
    let upload = move |body: String| {
        let raw = raw.clone();
        async move {
            let content: RequestContent<_, _> = azure_core::Bytes::from(body).into();
            raw.upload(content, None).await.unwrap();
        }
    };
    upload(doc(&versions[0])).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, docs) = (stop.clone(), [doc(&versions[0]), doc(&versions[1])]);
        let upload = upload.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                upload(docs[n % 2].clone()).await;
                n += 1;
            }
            n
        })
    };
    let store = backend.open();
    for _ in 0..12 {
        let key = store.shared_key("big", b"unused").await.unwrap();
        assert!(versions.contains(&key), "a whole version, not a mix");
    }
    stop.store(true, Ordering::Relaxed);
    assert!(
        writer.await.unwrap() > 0,
        "the blob was rewritten meanwhile"
    );
}
