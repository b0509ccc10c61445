//! Azure Blob Storage backend for the state store, for the relay on Azure, where any number of Functions
//! instances share one container. Blob Storage has no transactions, so every guarantee comes from
//! conditional writes, never from an in-memory lock:
//!
//! - `state.json` is the one document that decides: the remembered state ([`MemoryState`]), the head of the
//!   decision log, and an outbox of ledger entries not yet confirmed sent and decision records not yet
//!   written. It is replaced with `If-Match` on its ETag (created with `If-None-Match: *`); a 412 or 409
//!   means another instance got there first, and the commit re-reads and decides again.
//! - `ledger/{action id}.json`, `log/{seq}.json`, `effects/{action id}.json` and
//!   `dead-letters/{time}-{hash}.json` are created with `If-None-Match: *` after the state write that
//!   decided them: a 409 means the blob is already there, which is fine (a redelivery or a peer healed it).
//!   The outbox in `state.json` is what survives a crash between the two writes.
//! - `schedules/{name}.json` cursors are created with `If-None-Match: *` and advanced with `If-Match`.
//!
//! Blob names carry user-given parts (schedule names, action ids) escaped so that `/`, `\`, `.` segments
//! and other characters cannot alias another blob.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::{Etag, RequestContent, Url};
use azure_storage_blob::BlobContainerClient;
use azure_storage_blob::models::{
    BlobClientDownloadOptions, BlobContainerClientListBlobsOptions, BlockBlobClientUploadOptions,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::sqlite::{GENESIS, chain_hash};
use crate::domain::Signal;
use crate::policy::state::{
    ActionStamp, MemoryState, OpenPage, PendingApproval, ProductionVersion, Tags,
};
use crate::policy::{ActionKind, StateView};
use crate::ports::{
    ActionStatus, Commit, DeadLetter, Decider, DecisionRecord, Effect, Filter, LedgerEntry,
    PortError, StateStore,
};

const STATE: &str = "state.json";
const LEDGER: &str = "ledger/";
const LOG: &str = "log/";
const SCHEDULES: &str = "schedules/";
const DEAD_LETTERS: &str = "dead-letters/";
const EFFECTS: &str = "effects/";

/// How often a conditional write that lost a race is tried again before the call gives up (transient).
const MAX_ATTEMPTS: u32 = 24;
/// Concurrent reads when listing (inspection queries, chain verification).
const READ_CONCURRENCY: usize = 8;
/// Default for [`BlobStore::with_fleet_history`].
const FLEET_HISTORY_DAYS: i64 = 31;

/// The Blob Storage state store: one container, shared by every instance of the relay.
pub struct BlobStore {
    container: BlobContainerClient,
    // The container URL without its query string: a SAS token never reaches a message or a log line.
    display: String,
    fleet_history: TimeDelta,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("container", &self.display)
            .finish()
    }
}

/// The document replaced conditionally on every decision.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct StateDoc {
    #[serde(default)]
    memory: MemoryState,
    #[serde(default)]
    log_head: LogHead,
    #[serde(default)]
    outbox: Outbox,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LogHead {
    seq: u64,
    hash: String,
}

impl Default for LogHead {
    fn default() -> Self {
        LogHead {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Outbox {
    /// Ledger entries recorded but not yet confirmed sent (their blobs may not exist yet).
    #[serde(default)]
    entries: Vec<LedgerBlob>,
    /// Decision records whose `log/` blobs may not exist yet.
    #[serde(default)]
    records: Vec<LogBlob>,
}

/// A `ledger/` blob: the entry, and where it sits in the decision log (for oldest-first order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LedgerBlob {
    entry: LedgerEntry,
    seq: u64,
    index: usize,
    #[serde(default)]
    sent_at: Option<DateTime<Utc>>,
}

/// A `log/` blob. `record` is the decision's JSON text exactly as hashed, so verification never depends on
/// serialising a parsed decision back byte for byte.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LogBlob {
    seq: u64,
    prev_hash: String,
    hash: String,
    record: String,
}

impl LogBlob {
    fn to_record(&self) -> Result<DecisionRecord, PortError> {
        Ok(DecisionRecord {
            seq: self.seq,
            decision: serde_json::from_str(&self.record).map_err(|e| {
                PortError::Permanent(format!(
                    "blob: decision record {} is corrupt: {e}",
                    self.seq
                ))
            })?,
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        })
    }
}

/// A `schedules/` blob.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cursor {
    name: String,
    last_due: DateTime<Utc>,
}

/// The precondition of a write.
enum Condition {
    /// `If-None-Match: *`: only if the blob does not exist.
    Create,
    /// `If-Match`: only if the blob is still this version.
    Match(Etag),
}

/// Whether a conditional write happened.
enum Written {
    Yes,
    /// The precondition failed (409 on create, 412 on replace): somebody else wrote first.
    Conflict,
}

/// Bytes a blob read takes in one request (see `BlobStore::get`): above anything the relay writes.
const ONE_READ: usize = 1 << 30;

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Escapes a user-given part of a blob name: ASCII letters, digits, `-`, `_` and `.` stay; everything else
/// (including `/`, `\` and `%`) becomes `%XX`, so the part is always one literal path segment.
fn segment(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn ledger_name(action_id: &str) -> String {
    format!("{LEDGER}{}.json", segment(action_id))
}

fn log_name(seq: u64) -> String {
    // Fixed width, so that listing order is log order.
    format!("{LOG}{seq:012}.json")
}

/// A key kept in the container (see [`StateStore::shared_key`]).
#[derive(Serialize, Deserialize)]
struct KeyDoc {
    /// The key's bytes, base64.
    key: String,
}

fn seq_of(name: &str) -> Option<u64> {
    name.strip_prefix(LOG)?.strip_suffix(".json")?.parse().ok()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Hides the value of a SAS signature in text that may quote a request URL (transport errors do).
fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("sig=") {
        out.push_str(&rest[..i + 4]);
        out.push_str("REDACTED");
        let tail = &rest[i + 4..];
        let end = tail
            .find(|c: char| c == '&' || c == ')' || c == '"' || c.is_whitespace())
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Full jitter: a random pause, growing with the attempt, so racing instances spread out.
async fn backoff(attempt: u32) {
    use std::hash::BuildHasher as _;
    let cap_ms = (10u64 << attempt.min(6)).min(500);
    let random = std::collections::hash_map::RandomState::new().hash_one((attempt, Utc::now()));
    tokio::time::sleep(Duration::from_millis(1 + random % cap_ms)).await;
}

fn permanent_json(what: &str, e: serde_json::Error) -> PortError {
    PortError::Permanent(format!("blob: {what} is not valid JSON: {e}"))
}

fn keep_newest<T>(mut items: Vec<T>, limit: Option<usize>) -> Vec<T> {
    if let Some(limit) = limit {
        items = items.split_off(items.len().saturating_sub(limit));
    }
    items
}

impl BlobStore {
    /// A store on the container at `container_url` (`https://{account}.blob.core.windows.net/{container}`).
    ///
    /// A URL that carries a SAS token (`?sv=…&sig=…`) is used as given, without `credential`; otherwise
    /// `credential` (a managed identity on Azure) is required, and its identity needs the Storage Blob Data
    /// Contributor role on the container.
    pub fn new(
        container_url: &str,
        credential: Option<Arc<dyn TokenCredential>>,
    ) -> Result<BlobStore, PortError> {
        let mut url = Url::parse(container_url.trim()).map_err(|e| {
            PortError::Permanent(format!(
                "blob: the container URL is not a URL ({e}); expected https://<account>.blob.core.windows.net/<container>"
            ))
        })?;
        // The SDK appends blob names as path segments: a trailing slash would put an empty segment in
        // every blob URL.
        let path = url.path().trim_end_matches('/').to_string();
        url.set_path(&path);
        let mut display = url.clone();
        display.set_query(None);
        let display = display.to_string();
        if path.is_empty() {
            return Err(PortError::Permanent(format!(
                "blob: the container URL {display} names no container"
            )));
        }
        let has_sas = url.query_pairs().any(|(k, _)| k == "sig");
        let credential = match (has_sas, credential) {
            (true, _) => None,
            (false, Some(c)) => Some(c),
            (false, None) => {
                return Err(PortError::Permanent(format!(
                    "blob: {display} carries no SAS token and no credential was given"
                )));
            }
        };
        let container = BlobContainerClient::new(url, credential, None).map_err(|e| {
            PortError::Permanent(format!("blob: {display}: {}", redact(&e.to_string())))
        })?;
        Ok(BlobStore {
            container,
            display,
            fleet_history: TimeDelta::days(FLEET_HISTORY_DAYS),
        })
    }

    /// How long fleet counters (retrains, budget holds) are remembered; must cover the policy's budget window.
    /// Defaults to 31 days.
    pub fn with_fleet_history(mut self, history: TimeDelta) -> BlobStore {
        self.fleet_history = history;
        self
    }

    /// The container URL, without any SAS token.
    pub fn container_url(&self) -> &str {
        &self.display
    }

    /// Creates the container if it does not exist. On Azure the infrastructure creates it; this is for local
    /// runs and tests against Azurite.
    pub async fn ensure_container(&self) -> Result<(), PortError> {
        match self.container.create(None).await {
            Ok(_) => Ok(()),
            Err(e) if e.http_status().map(u16::from) == Some(409) => Ok(()),
            Err(e) => Err(self.classify(e, "creating the container")),
        }
    }

    fn classify(&self, e: azure_core::Error, what: &str) -> PortError {
        let container = &self.display;
        match e.kind() {
            ErrorKind::HttpResponse {
                status, error_code, ..
            } => {
                let status = u16::from(*status);
                let code = error_code.as_deref().unwrap_or("");
                match status {
                    401 | 403 => PortError::Permanent(format!(
                        "blob: {what}: access denied ({status} {code}) on {container}: the relay's identity needs \
                         the Storage Blob Data Contributor role on the container (or the SAS token lacks \
                         permissions or has expired)"
                    )),
                    404 if code == "ContainerNotFound" => PortError::Permanent(format!(
                        "blob: {what}: the container {container} does not exist; it is created by the \
                         infrastructure (or by ensure_container for local runs)"
                    )),
                    408 | 429 | 500..=599 => {
                        PortError::Transient(format!("blob: {what}: {status} {code}"))
                    }
                    _ => PortError::Permanent(format!(
                        "blob: {what}: unexpected {status} {code} from {container}"
                    )),
                }
            }
            ErrorKind::Io | ErrorKind::Connection | ErrorKind::Credential => {
                PortError::Transient(format!("blob: {what}: {}", redact(&e.to_string())))
            }
            _ => PortError::Permanent(format!("blob: {what}: {}", redact(&e.to_string()))),
        }
    }

    /// Reads a blob and its ETag; `None` when it does not exist. One request per read: the SDK's download
    /// otherwise fetches a blob over 4 MiB in ranges, each but the first under `If-Match` on the first one's
    /// ETag, and a write by another instance in between fails the read with 412 (`state.json` passes 4 MiB
    /// with ~60k remembered events). Should a range request happen anyway, the read starts over.
    async fn get(&self, name: &str) -> Result<Option<(Vec<u8>, Option<Etag>)>, PortError> {
        let mut attempt = 0;
        loop {
            match self.get_once(name).await {
                Err(e) if e.http_status().map(u16::from) == Some(412) && attempt < 8 => {
                    attempt += 1;
                    backoff(attempt).await;
                }
                Err(e) => return Err(self.classify(e, &format!("reading {name}"))),
                Ok(read) => return Ok(read),
            }
        }
    }

    async fn get_once(
        &self,
        name: &str,
    ) -> Result<Option<(Vec<u8>, Option<Etag>)>, azure_core::Error> {
        let blob = self.container.blob_client(name);
        let options = BlobClientDownloadOptions {
            partition_size: std::num::NonZero::new(ONE_READ),
            ..Default::default()
        };
        let result = match blob.download(Some(options)).await {
            Ok(r) => r,
            Err(e) if e.http_status().map(u16::from) == Some(404) => {
                if let ErrorKind::HttpResponse {
                    error_code: Some(code),
                    ..
                } = e.kind()
                    && code == "ContainerNotFound"
                {
                    return Err(e);
                }
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let etag = result.properties.etag.clone();
        let body = result.body.collect().await?;
        Ok(Some((body.to_vec(), etag)))
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<(T, Option<Etag>)>, PortError> {
        match self.get(name).await? {
            None => Ok(None),
            Some((bytes, etag)) => {
                let value = serde_json::from_slice(&bytes).map_err(|e| permanent_json(name, e))?;
                Ok(Some((value, etag)))
            }
        }
    }

    /// Writes a blob under a precondition.
    async fn put(
        &self,
        name: &str,
        body: Vec<u8>,
        condition: Condition,
    ) -> Result<Written, PortError> {
        let options = BlockBlobClientUploadOptions {
            blob_content_type: Some("application/json".into()),
            ..Default::default()
        };
        let options = match condition {
            Condition::Create => options.if_not_exists(),
            Condition::Match(etag) => BlockBlobClientUploadOptions {
                if_match: Some(etag),
                ..options
            },
        };
        let content: RequestContent<azure_core::Bytes, azure_core::http::NoFormat> =
            azure_core::Bytes::from(body).into();
        match self
            .container
            .blob_client(name)
            .upload(content, Some(options))
            .await
        {
            Ok(_) => Ok(Written::Yes),
            Err(e) if matches!(e.http_status().map(u16::from), Some(409 | 412)) => {
                Ok(Written::Conflict)
            }
            Err(e) => Err(self.classify(e, &format!("writing {name}"))),
        }
    }

    async fn put_json<T: Serialize>(
        &self,
        name: &str,
        value: &T,
        condition: Condition,
    ) -> Result<Written, PortError> {
        let body = serde_json::to_vec(value)
            .map_err(|e| PortError::Permanent(format!("blob: {name}: {e}")))?;
        self.put(name, body, condition).await
    }

    /// Creates a blob that, once written, never changes: a conflict means it is already there.
    async fn create_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), PortError> {
        self.put_json(name, value, Condition::Create).await?;
        Ok(())
    }

    /// Blob names under a prefix, in name order.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, PortError> {
        let options = BlobContainerClientListBlobsOptions {
            prefix: Some(prefix.to_string()),
            ..Default::default()
        };
        let what = format!("listing {prefix}");
        let mut pager = self
            .container
            .list_blobs(Some(options))
            .map_err(|e| self.classify(e, &what))?;
        let mut names = Vec::new();
        while let Some(item) = pager
            .try_next()
            .await
            .map_err(|e| self.classify(e, &what))?
        {
            if let Some(name) = item.name {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Reads many JSON blobs concurrently, with their names, in the order given; blobs deleted since they
    /// were listed are skipped.
    async fn read_named<T: DeserializeOwned>(
        &self,
        names: &[String],
    ) -> Result<Vec<(String, T)>, PortError> {
        // Owned names: a closure over borrowed ones trips the higher-ranked lifetime check of Send futures.
        let found: Vec<Option<(String, T)>> = futures::stream::iter(names.to_vec())
            .map(|name| async move {
                let value = self.get_json::<T>(&name).await?;
                Ok::<_, PortError>(value.map(|(v, _)| (name, v)))
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn read_all<T: DeserializeOwned>(&self, names: &[String]) -> Result<Vec<T>, PortError> {
        Ok(self
            .read_named(names)
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Whether a blob exists (a HEAD request).
    async fn exists(&self, name: &str) -> Result<bool, PortError> {
        match self.container.blob_client(name).get_properties(None).await {
            Ok(_) => Ok(true),
            Err(e) => match e.kind() {
                ErrorKind::HttpResponse {
                    error_code: Some(code),
                    ..
                } if code == "ContainerNotFound" => {
                    Err(self.classify(e, &format!("reading {name}")))
                }
                _ if e.http_status().map(u16::from) == Some(404) => Ok(false),
                _ => Err(self.classify(e, &format!("reading {name}"))),
            },
        }
    }

    /// `state.json` and its ETag; an empty state (and no ETag) before the first decision.
    async fn read_state(&self) -> Result<(StateDoc, Option<Etag>), PortError> {
        match self.get_json::<StateDoc>(STATE).await? {
            None => Ok((StateDoc::default(), None)),
            Some((doc, Some(etag))) => Ok((doc, Some(etag))),
            Some((_, None)) => Err(PortError::Permanent(format!(
                "blob: {STATE} came back without an ETag; conditional writes are impossible"
            ))),
        }
    }

    /// Replaces `state.json` if it is still the version read (created if it did not exist).
    async fn write_state(&self, doc: &StateDoc, etag: Option<Etag>) -> Result<Written, PortError> {
        let condition = match etag {
            Some(etag) => Condition::Match(etag),
            None => Condition::Create,
        };
        self.put_json(STATE, doc, condition).await
    }

    /// Writes the outbox's decision records to `log/`; afterwards the next state write may drop them.
    async fn flush_records(&self, doc: &StateDoc) -> Result<(), PortError> {
        for record in &doc.outbox.records {
            self.create_json(&log_name(record.seq), record).await?;
        }
        Ok(())
    }

    async fn mark_ledger_blob(
        &self,
        action_id: &str,
        status: ActionStatus,
        at: DateTime<Utc>,
    ) -> Result<(), PortError> {
        let name = ledger_name(action_id);
        for attempt in 0..MAX_ATTEMPTS {
            let written = match self.get_json::<LedgerBlob>(&name).await? {
                Some((blob, _)) if blob.entry.status != ActionStatus::Recorded => return Ok(()),
                Some((mut blob, Some(etag))) => {
                    blob.entry.status = status;
                    blob.sent_at = Some(at);
                    self.put_json(&name, &blob, Condition::Match(etag)).await?
                }
                Some((_, None)) => {
                    return Err(PortError::Permanent(format!(
                        "blob: {name} came back without an ETag"
                    )));
                }
                None => {
                    // Recorded by a commit that has not written its ledger blobs yet (or crashed before):
                    // write it from the outbox.
                    let (doc, _) = self.read_state().await?;
                    let Some(pending) = doc
                        .outbox
                        .entries
                        .into_iter()
                        .find(|p| p.entry.action.action_id.as_str() == action_id)
                    else {
                        return Ok(());
                    };
                    let mut blob = pending;
                    blob.entry.status = status;
                    blob.sent_at = Some(at);
                    self.put_json(&name, &blob, Condition::Create).await?
                }
            };
            match written {
                Written::Yes => return Ok(()),
                Written::Conflict => backoff(attempt).await,
            }
        }
        Err(contended(&name))
    }
}

fn contended(name: &str) -> PortError {
    PortError::Transient(format!(
        "blob: {name} kept changing under concurrent writers; gave up after {MAX_ATTEMPTS} attempts"
    ))
}

/// decide() reads the stored state through this view, which forgets signal keys outside the dedupe window
/// (as the SQLite store's query does).
struct WindowedView<'a> {
    memory: &'a MemoryState,
    now: DateTime<Utc>,
    window: TimeDelta,
}

impl StateView for WindowedView<'_> {
    fn decided_at(&self, signal_key: &str) -> Option<DateTime<Utc>> {
        self.memory
            .decided_at(signal_key)
            .filter(|at| *at >= self.now - self.window)
    }
    fn last_action(&self, model: &str, kind: ActionKind) -> Option<ActionStamp> {
        self.memory.last_action(model, kind)
    }
    fn retrains_since(&self, since: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        self.memory.retrains_since(since)
    }
    fn held_since(&self, since: DateTime<Utc>) -> u32 {
        self.memory.held_since(since)
    }
    fn last_storm_page(&self) -> Option<DateTime<Utc>> {
        self.memory.last_storm_page()
    }
    fn pending_approvals(&self, model: &str) -> Vec<PendingApproval> {
        self.memory.pending_approvals(model)
    }
    fn model_tags(&self, model: &str, version: Option<&str>) -> Option<Arc<Tags>> {
        self.memory.model_tags(model, version)
    }
    fn production(&self, model: &str) -> Option<ProductionVersion> {
        self.memory.production(model)
    }
    fn open_pages(&self, model: Option<&str>) -> Vec<OpenPage> {
        self.memory.open_pages(model)
    }
}

#[async_trait::async_trait]
impl StateStore for BlobStore {
    async fn commit(
        &self,
        signal: &Signal,
        now: DateTime<Utc>,
        dedupe_window: TimeDelta,
        decide: Arc<Decider>,
    ) -> Result<Commit, PortError> {
        for attempt in 0..MAX_ATTEMPTS {
            // (1) The state as it is now.
            let (mut doc, etag) = self.read_state().await?;
            self.flush_records(&doc).await?;
            let view = WindowedView {
                memory: &doc.memory,
                now,
                window: dedupe_window,
            };

            // (2) Already decided: hand back what is still unsent, making sure its ledger blobs exist.
            if view.decided_at(&signal.key).is_some() {
                let pending: Vec<LedgerBlob> = doc
                    .outbox
                    .entries
                    .iter()
                    .filter(|p| p.entry.signal_key == signal.key)
                    .cloned()
                    .collect();
                for p in &pending {
                    self.create_json(&ledger_name(p.entry.action.action_id.as_str()), p)
                        .await?;
                }
                return Ok(Commit {
                    decision: None,
                    to_send: pending.into_iter().map(|p| p.entry).collect(),
                    enqueued: Vec::new(),
                });
            }

            // (3) Decide, and replace the state only if nobody else did meanwhile.
            let decision = decide(&view);
            let record = serde_json::to_string(&decision)
                .map_err(|e| PortError::Permanent(format!("blob: decision: {e}")))?;
            let seq = doc.log_head.seq + 1;
            let hash = chain_hash(&doc.log_head.hash, &record);
            let log = LogBlob {
                seq,
                prev_hash: doc.log_head.hash.clone(),
                hash: hash.clone(),
                record,
            };
            let mut new: Vec<LedgerBlob> = Vec::new();
            let decision_id = decision.decision_id();
            for (index, action) in decision.actions.iter().enumerate() {
                let id = action.action_id.as_str();
                // The conditional create of the ledger: an action id already recorded (pending in the
                // outbox, or written) is not recorded or sent again. Every recorded id is in one of the two.
                let known = new.iter().any(|p| p.entry.action.action_id.as_str() == id)
                    || doc
                        .outbox
                        .entries
                        .iter()
                        .any(|p| p.entry.action.action_id.as_str() == id)
                    || self.exists(&ledger_name(id)).await?;
                if known {
                    continue;
                }
                new.push(LedgerBlob {
                    entry: LedgerEntry::recorded(action, signal, &decision_id, now),
                    seq,
                    index,
                    sent_at: None,
                });
            }
            doc.memory
                .apply(&decision, dedupe_window, Some(self.fleet_history));
            doc.log_head = LogHead { seq, hash };
            // The records read with this version were flushed above.
            doc.outbox.records = vec![log.clone()];
            doc.outbox.entries.extend(new.iter().cloned());
            match self.write_state(&doc, etag).await? {
                Written::Conflict => {
                    backoff(attempt).await;
                    continue;
                }
                Written::Yes => {}
            }

            // (4) Decided: write the ledger and log blobs. A failure here is healed by the redelivery,
            // which finds the signal decided and writes them from the outbox.
            for p in &new {
                self.create_json(&ledger_name(p.entry.action.action_id.as_str()), p)
                    .await?;
            }
            self.create_json(&log_name(seq), &log).await?;
            return Ok(Commit {
                decision: Some(decision),
                to_send: new.into_iter().map(|p| p.entry).collect(),
                enqueued: Vec::new(),
            });
        }
        Err(contended(STATE))
    }

    async fn unsent(
        &self,
        recorded_before: DateTime<Utc>,
        after: Option<&LedgerEntry>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, PortError> {
        // Every entry not confirmed sent is in the outbox.
        let (doc, _) = self.read_state().await?;
        let order = |e: &LedgerEntry| (e.recorded_at, e.action.action_id.to_string());
        let after = after.map(order);
        let mut entries: Vec<LedgerEntry> = doc
            .outbox
            .entries
            .into_iter()
            .map(|p| p.entry)
            .filter(|e| e.recorded_at < recorded_before)
            .filter(|e| after.as_ref().is_none_or(|a| order(e) > *a))
            .collect();
        entries.sort_by_key(order);
        entries.truncate(limit);
        Ok(entries)
    }

    async fn settle(
        &self,
        action_id: &str,
        status: ActionStatus,
        at: DateTime<Utc>,
    ) -> Result<(), PortError> {
        // The ledger blob first: if the process stops before the outbox is updated, the entry is only sent
        // again (and the queue's duplicate detection absorbs it).
        self.mark_ledger_blob(action_id, status, at).await?;
        for attempt in 0..MAX_ATTEMPTS {
            let (mut doc, etag) = self.read_state().await?;
            let before = doc.outbox.entries.len();
            doc.outbox
                .entries
                .retain(|p| p.entry.action.action_id.as_str() != action_id);
            if doc.outbox.entries.len() == before {
                return Ok(());
            }
            self.flush_records(&doc).await?;
            doc.outbox.records.clear();
            match self.write_state(&doc, etag).await? {
                Written::Yes => return Ok(()),
                Written::Conflict => backoff(attempt).await,
            }
        }
        Err(contended(STATE))
    }

    async fn schedule_cursor(&self, name: &str) -> Result<Option<DateTime<Utc>>, PortError> {
        let blob = format!("{SCHEDULES}{}.json", segment(name));
        Ok(self
            .get_json::<Cursor>(&blob)
            .await?
            .map(|(c, _)| c.last_due))
    }

    async fn advance_schedule(
        &self,
        name: &str,
        from: Option<DateTime<Utc>>,
        to: DateTime<Utc>,
    ) -> Result<bool, PortError> {
        let blob = format!("{SCHEDULES}{}.json", segment(name));
        let cursor = Cursor {
            name: name.to_string(),
            last_due: to,
        };
        let condition = match from {
            None => Condition::Create,
            Some(from) => match self.get_json::<Cursor>(&blob).await? {
                Some((current, Some(etag))) if ts(current.last_due) == ts(from) => {
                    Condition::Match(etag)
                }
                _ => return Ok(false),
            },
        };
        Ok(matches!(
            self.put_json(&blob, &cursor, condition).await?,
            Written::Yes
        ))
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), PortError> {
        let body = serde_json::to_vec(letter)
            .map_err(|e| PortError::Permanent(format!("blob: dead letter: {e}")))?;
        // Time first, so that listing order is arrival order; the same letter twice is one blob.
        let name = format!(
            "{DEAD_LETTERS}{}-{}.json",
            ts(letter.at),
            &sha256_hex(&body)[..12]
        );
        self.put(&name, body, Condition::Create).await?;
        Ok(())
    }

    async fn actions(&self, filter: &Filter) -> Result<Vec<LedgerEntry>, PortError> {
        let (doc, _) = self.read_state().await?;
        let names = self.list(LEDGER).await?;
        let mut blobs: Vec<LedgerBlob> = self.read_all(&names).await?;
        let written: HashSet<String> = blobs
            .iter()
            .map(|b| b.entry.action.action_id.to_string())
            .collect();
        // Recorded by a commit whose ledger blobs are not written yet.
        blobs.extend(
            doc.outbox
                .entries
                .into_iter()
                .filter(|p| !written.contains(p.entry.action.action_id.as_str())),
        );
        blobs.retain(|b| {
            filter
                .model
                .as_deref()
                .is_none_or(|m| b.entry.action.model.as_deref() == Some(m))
        });
        blobs.sort_by_key(|b| (b.seq, b.index));
        Ok(keep_newest(
            blobs.into_iter().map(|b| b.entry).collect(),
            filter.limit,
        ))
    }

    async fn entry(&self, action_id: &str) -> Result<Option<LedgerEntry>, PortError> {
        if let Some((blob, _)) = self.get_json::<LedgerBlob>(&ledger_name(action_id)).await? {
            return Ok(Some(blob.entry));
        }
        // Recorded by a commit whose ledger blobs are not written yet.
        let (doc, _) = self.read_state().await?;
        Ok(doc
            .outbox
            .entries
            .into_iter()
            .find(|p| p.entry.action.action_id.as_str() == action_id)
            .map(|p| p.entry))
    }

    async fn decisions(&self, filter: &Filter) -> Result<Vec<DecisionRecord>, PortError> {
        let (doc, _) = self.read_state().await?;
        let mut names = self.list(LOG).await?;
        let listed: HashSet<u64> = names.iter().filter_map(|n| seq_of(n)).collect();
        let pending: Vec<LogBlob> = doc
            .outbox
            .records
            .into_iter()
            .filter(|r| !listed.contains(&r.seq))
            .collect();
        if filter.model.is_none()
            && let Some(limit) = filter.limit
        {
            names = keep_newest(names, Some(limit.saturating_sub(pending.len())));
        }
        let mut logs: Vec<LogBlob> = self.read_all(&names).await?;
        logs.extend(pending);
        logs.sort_by_key(|l| l.seq);
        let mut out = Vec::with_capacity(logs.len());
        for log in &logs {
            let record = log.to_record()?;
            if filter
                .model
                .as_deref()
                .is_none_or(|m| record.decision.model.as_deref() == Some(m))
            {
                out.push(record);
            }
        }
        Ok(keep_newest(out, filter.limit))
    }

    async fn verify_chain(&self) -> Result<u64, PortError> {
        // The head first: records a later commit adds while this runs lie beyond it and are not checked.
        let (doc, _) = self.read_state().await?;
        let head = doc.log_head;
        let names = self.list(LOG).await?;
        let mut by_seq: BTreeMap<u64, LogBlob> = BTreeMap::new();
        for (name, log) in self.read_named::<LogBlob>(&names).await? {
            // A record copied to another position is a break there.
            if seq_of(&name) != Some(log.seq) {
                return Err(broken(log.seq.min(seq_of(&name).unwrap_or(0))));
            }
            by_seq.insert(log.seq, log);
        }
        for r in doc.outbox.records {
            by_seq.entry(r.seq).or_insert(r);
        }
        let mut prev = GENESIS.to_string();
        for seq in 1..=head.seq {
            let Some(log) = by_seq.get(&seq) else {
                return Err(PortError::Permanent(format!(
                    "decision log chain broken at record {seq}: the record is missing"
                )));
            };
            if log.prev_hash != prev || chain_hash(&prev, &log.record) != log.hash {
                return Err(broken(seq));
            }
            prev = log.hash.clone();
        }
        if prev != head.hash {
            return Err(broken(head.seq));
        }
        Ok(head.seq)
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, PortError> {
        let names = self.list(DEAD_LETTERS).await?;
        self.read_all(&names).await
    }

    async fn shared_key(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, PortError> {
        let blob = format!("keys/{}.json", segment(name));
        let stored = |bytes: &[u8]| -> Result<Vec<u8>, PortError> {
            let doc: KeyDoc =
                serde_json::from_slice(bytes).map_err(|e| permanent_json(&blob, e))?;
            BASE64.decode(doc.key.as_bytes()).map_err(|e| {
                PortError::Permanent(format!("blob: {blob}: `key` is not base64: {e}"))
            })
        };
        if let Some((bytes, _)) = self.get(&blob).await? {
            return stored(&bytes);
        }
        // Created once, never replaced: a conflict means another instance created it first, and its key stands.
        self.create_json(
            &blob,
            &KeyDoc {
                key: BASE64.encode(fresh),
            },
        )
        .await?;
        match self.get(&blob).await? {
            Some((bytes, _)) => stored(&bytes),
            None => Err(PortError::Transient(format!(
                "blob: {blob} was created but does not read back yet"
            ))),
        }
    }

    async fn record_effect(&self, effect: &Effect) -> Result<(), PortError> {
        // One effect per action: a redelivered message does not overwrite what the first delivery did.
        self.create_json(&effect_blob(&effect.action_id), effect)
            .await
    }

    async fn effect(&self, action_id: &str) -> Result<Option<Effect>, PortError> {
        Ok(self
            .get_json::<Effect>(&effect_blob(action_id))
            .await?
            .map(|(e, _)| e))
    }

    async fn effects(&self, filter: &Filter) -> Result<Vec<Effect>, PortError> {
        let names = self.list(EFFECTS).await?;
        let mut effects: Vec<Effect> = self.read_all(&names).await?;
        effects.retain(|e| {
            filter
                .model
                .as_deref()
                .is_none_or(|m| e.model.as_deref() == Some(m))
        });
        effects.sort_by(|a, b| (a.at, &a.action_id).cmp(&(b.at, &b.action_id)));
        Ok(keep_newest(effects, filter.limit))
    }
}

/// The blob of an action's effect.
fn effect_blob(action_id: &str) -> String {
    format!("{EFFECTS}{}.json", segment(action_id))
}

fn broken(seq: u64) -> PortError {
    PortError::Permanent(format!("decision log chain broken at record {seq}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_given_name_parts_cannot_alias_other_blobs() {
        assert_eq!(segment("nightly-retrain_1.x"), "nightly-retrain_1.x");
        assert_eq!(segment("../state"), "..%2Fstate");
        assert_eq!(segment("a\\b c%"), "a%5Cb%20c%25");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn log_names_sort_in_log_order() {
        assert!(log_name(9) < log_name(10));
        assert_eq!(seq_of(&log_name(42)), Some(42));
        assert_eq!(seq_of("log/x.json"), None);
    }

    #[test]
    fn sas_signatures_never_reach_messages() {
        assert_eq!(
            redact("error sending request for url (http://h/c/b?sv=1&sig=abc%2B/x&se=2)"),
            "error sending request for url (http://h/c/b?sv=1&sig=REDACTED&se=2)"
        );
    }

    #[test]
    fn a_container_url_without_sas_needs_a_credential() {
        let err = BlobStore::new("https://acct.blob.core.windows.net/relay/", None).unwrap_err();
        assert!(err.to_string().contains("no SAS token"), "{err}");
    }

    #[test]
    fn a_trailing_slash_is_dropped_and_the_sas_is_kept_out_of_the_display() {
        let store = BlobStore::new(
            "http://127.0.0.1:10000/devstoreaccount1/relay/?sv=x&sig=s",
            None,
        )
        .unwrap();
        assert_eq!(
            store.container_url(),
            "http://127.0.0.1:10000/devstoreaccount1/relay"
        );
        let blob = store.container.blob_client("ledger/a.json");
        assert_eq!(blob.url().path(), "/devstoreaccount1/relay/ledger%2Fa.json");
        assert_eq!(blob.url().query(), Some("sv=x&sig=s"));
    }
}
