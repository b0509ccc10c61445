//! Embedded backend on SQLite (WAL): state store, decision log and local queues in one file, shared safely by
//! several processes. Atomicity of "decide and record" comes from `BEGIN IMMEDIATE` transactions, which
//! SQLite serialises across processes through its file lock; nothing here relies on an in-memory lock.
//!
//! Writes go through one writer thread per process that group-commits whatever arrived meanwhile (see
//! `writer.rs`); reads use a small pool of connections. When the database is also the worker queue
//! ([`Sqlite::as_outbox`]), a commit enqueues the actions it records in the same transaction.
//!
//! Durability: WAL with `synchronous = NORMAL` survives a process crash (SIGKILL) with every committed
//! transaction intact; only an OS crash or power loss may drop the last ones. A caller is answered only after
//! its transaction committed.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::domain::Signal;
use crate::policy::state::{
    ActionStamp, OpenPage, PendingApproval, ProductionVersion, StateChange, Tags,
};
use crate::policy::{ActionKind, StateView};
use crate::ports::{
    ActionStatus, Commit, DeadLetter, Decider, DecisionRecord, Effect, Filter, LedgerEntry,
    LocalQueue, OutboundMessage, PortError, Queue, Received, Sent, StateStore,
};

mod writer;
use writer::Writer;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS decisions (
  seq INTEGER PRIMARY KEY,
  signal_key TEXT NOT NULL,
  decision_id TEXT NOT NULL,
  event_id TEXT NOT NULL,
  model TEXT,
  at TEXT NOT NULL,
  record TEXT NOT NULL,
  prev_hash TEXT NOT NULL,
  hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_key ON decisions(signal_key);
DROP INDEX IF EXISTS decisions_model;
CREATE TABLE IF NOT EXISTS ledger (
  action_id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  model TEXT,
  event_id TEXT NOT NULL,
  signal_key TEXT NOT NULL,
  status TEXT NOT NULL,
  entry TEXT NOT NULL,
  recorded_at TEXT NOT NULL,
  sent_at TEXT
);
DROP INDEX IF EXISTS ledger_signal;
CREATE INDEX IF NOT EXISTS ledger_unsent ON ledger(signal_key) WHERE status = 'recorded';
CREATE TABLE IF NOT EXISTS last_actions (model TEXT NOT NULL, kind TEXT NOT NULL, action_id TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (model, kind));
CREATE TABLE IF NOT EXISTS fleet_events (kind TEXT NOT NULL, at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS fleet_events_at ON fleet_events(kind, at);
CREATE TABLE IF NOT EXISTS approvals (model TEXT NOT NULL, environment TEXT NOT NULL, version TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (model, environment));
CREATE TABLE IF NOT EXISTS versions (model TEXT NOT NULL, version TEXT NOT NULL, tags TEXT NOT NULL, seen_at TEXT NOT NULL, PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS production (model TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pages (model TEXT NOT NULL, dedup_key TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (model, dedup_key));
CREATE TABLE IF NOT EXISTS schedules (name TEXT PRIMARY KEY, last_due TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (id INTEGER PRIMARY KEY, at TEXT NOT NULL, source TEXT NOT NULL, reason TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queue (
  message_id TEXT PRIMARY KEY,
  queue TEXT NOT NULL,
  message TEXT NOT NULL,
  enqueued_at TEXT NOT NULL,
  visible_at TEXT NOT NULL,
  delivery_count INTEGER NOT NULL DEFAULT 0,
  completed_at TEXT
);
CREATE TABLE IF NOT EXISTS effects (action_id TEXT PRIMARY KEY, model TEXT, record TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (name TEXT PRIMARY KEY, key BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS queue_visible ON queue(queue, completed_at, visible_at);
"#;

/// `prev_hash` of the first record of a decision log (shared by every store).
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn ts(t: DateTime<Utc>) -> String {
    // Fixed-width UTC text sorts chronologically, so range queries can compare strings.
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Runs a statement through the connection's statement cache (every write runs many times).
fn exec(c: &Connection, sql: &str, args: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(args)
}

/// One row, through the statement cache.
fn row<T>(
    c: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(args, f)
}

fn parse_ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

fn transient(e: impl std::fmt::Display) -> PortError {
    PortError::Transient(format!("sqlite: {e}"))
}

/// Whether an SQLite error may go away on retry (busy, locked, full, I/O) rather than repeat.
fn classify_code(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    if matches!(e, rusqlite::Error::FromSqlConversionFailure(..)) {
        return false; // a stored value that does not read back (see `json_column`) reads the same next time
    }
    matches!(
        e.sqlite_error_code(),
        Some(DatabaseBusy | DatabaseLocked | CannotOpen | DiskFull | SystemIoFailure | OutOfMemory)
            | None
    )
}

/// Reads a JSON column the relay wrote itself. One that does not parse (a damaged or hand-edited database, or a
/// newer relay's format) is an error that names the table, never a row silently skipped: decisions must not be
/// made on part of the state, and an inspection must not look complete when it is not.
fn json_column<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("{what} holds JSON that does not parse ({e})").into(),
        )
    })
}

fn classify(e: rusqlite::Error) -> PortError {
    if classify_code(&e) {
        transient(e)
    } else {
        PortError::Permanent(format!("sqlite: {e}"))
    }
}

/// The SQLite store and queue.
#[derive(Clone)]
pub struct Sqlite {
    path: PathBuf,
    // A pool of open connections for reads: a resource cache, not a lock anything depends on for correctness.
    pool: Arc<Mutex<Vec<Connection>>>,
    // Writes go through one group-committing writer thread per process, started on the first write.
    writer: Arc<OnceLock<Writer>>,
    // When this database is also the worker queue, a commit enqueues its actions in the same transaction.
    outbox: bool,
}

impl Sqlite {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Sqlite, PortError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                PortError::Permanent(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let store = Sqlite {
            path,
            pool: Arc::new(Mutex::new(Vec::new())),
            writer: Arc::new(OnceLock::new()),
            outbox: false,
        };
        let conn = store.connect()?;
        // One transaction: a new database is created with one WAL commit instead of one per table.
        conn.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} COMMIT;"))
            .map_err(classify)?;
        store.release(conn);
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The same database as store *and* worker queue (a transactional outbox): a commit enqueues the actions
    /// it records in the same transaction, so there is no window between ledger and queue for a crash to
    /// open, and no second write per action to mark it sent.
    pub fn as_outbox(&self) -> Sqlite {
        Sqlite {
            outbox: true,
            ..self.clone()
        }
    }

    /// Whether commits enqueue their actions themselves (see [`Sqlite::as_outbox`]).
    pub fn is_outbox(&self) -> bool {
        self.outbox
    }

    fn connect(&self) -> Result<Connection, PortError> {
        let conn = Connection::open(&self.path).map_err(classify)?;
        conn.busy_timeout(Duration::from_secs(15))
            .map_err(classify)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(classify)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }

    /// The writer thread, started on first use. Its connection does not checkpoint on commit (that would put
    /// the WAL copy and its fsync on a request's path); its checkpointer thread does, in the background.
    fn writer(&self) -> Result<&Writer, PortError> {
        if let Some(w) = self.writer.get() {
            return Ok(w);
        }
        let conn = self.connect()?;
        // Savepoints (used when a job of a batch fails, see writer.rs) journal in memory rather than in a
        // temporary file. (A larger page cache was tried: every commit then pays for truncating it.)
        // The WAL file is cut back to 192 MiB when it starts over: above its usual size at that moment (64 MiB
        // of frames and what arrives during the checkpointer's passes, 80–150 MiB under the runtime benchmark,
        // see writer.rs), so that it is reused from its beginning instead of being cut and grown again at
        // every reset, and only shrinks after a burst.
        conn.execute_batch(
            "PRAGMA wal_autocheckpoint = 0; PRAGMA temp_store = MEMORY; PRAGMA journal_size_limit = 201326592;",
        )
        .map_err(classify)?;
        let started = Writer::start(conn, self.connect()?)
            .map_err(|e| transient(format!("cannot start the writer thread: {e}")))?;
        // Two first writes may race here: the loser's writer is dropped and its threads end.
        Ok(self.writer.get_or_init(|| started))
    }

    /// Runs `work` inside the writer's next group-committed transaction; returns once it is committed.
    async fn write<T: Send + 'static>(
        &self,
        work: impl Fn(&Connection) -> Result<T, PortError> + Send + 'static,
    ) -> Result<T, PortError> {
        self.writer()?.write(work).await
    }

    fn take(&self) -> Result<Connection, PortError> {
        let pooled = self.pool.lock().map(|mut p| p.pop()).unwrap_or(None);
        match pooled {
            Some(c) => Ok(c),
            None => self.connect(),
        }
    }

    fn release(&self, conn: Connection) {
        if let Ok(mut p) = self.pool.lock()
            && p.len() < 16
        {
            p.push(conn);
        }
    }

    /// Runs blocking database work off the async runtime with a pooled connection.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, PortError> + Send + 'static,
    ) -> Result<T, PortError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = this.take()?;
            let result = f(&mut conn);
            // A connection that failed mid-transaction is dropped, not reused.
            if result.is_ok() || conn.is_autocommit() {
                this.release(conn);
            }
            result
        })
        .await
        .map_err(|e| transient(format!("worker thread: {e}")))?
    }
}

/// decide() reads state through this view inside the commit transaction. SQL errors are kept and turn the
/// whole commit into an error, so a decision is never made on a partial read.
struct TxView<'a> {
    tx: &'a Connection,
    now: DateTime<Utc>,
    window: TimeDelta,
    error: RefCell<Option<rusqlite::Error>>,
}

impl TxView<'_> {
    fn keep<T: Default>(&self, r: rusqlite::Result<T>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => {
                self.error.borrow_mut().get_or_insert(e);
                T::default()
            }
        }
    }

    fn json_rows<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Vec<T> {
        let rows = (|| {
            let mut stmt = self.tx.prepare_cached(sql)?;
            let texts = stmt
                .query_map(args, |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            texts.iter().map(|t| json_column(what, t)).collect()
        })();
        self.keep(rows)
    }
}

impl StateView for TxView<'_> {
    fn decided_at(&self, signal_key: &str) -> Option<DateTime<Utc>> {
        // Every decision of this key (normally none or one), the latest picked here: with ORDER BY or max() on
        // a bound parameter SQLite re-prepares the statement at every execution (pinned by a test below).
        let rows = (|| {
            let mut stmt = self
                .tx
                .prepare_cached("SELECT seq, at FROM decisions WHERE signal_key = ?1")?;
            stmt.query_map([signal_key], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<(i64, String)>>>()
        })();
        let at = self
            .keep(rows)
            .into_iter()
            .max_by_key(|(seq, _)| *seq)
            .map(|(_, at)| at);
        at.map(|a| parse_ts(&a))
            .filter(|a| *a >= self.now - self.window)
    }

    fn last_action(&self, model: &str, kind: ActionKind) -> Option<ActionStamp> {
        let stamp: Option<(String, String)> = self.keep(
            row(
                self.tx,
                "SELECT action_id, at FROM last_actions WHERE model = ?1 AND kind = ?2",
                [model, kind.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional(),
        );
        stamp.and_then(|(id, at)| {
            let action_id = serde_json::from_value(serde_json::Value::String(id)).ok()?;
            Some(ActionStamp {
                action_id,
                at: parse_ts(&at),
            })
        })
    }

    fn retrains_since(&self, since: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let rows = (|| {
            let mut stmt = self.tx.prepare_cached(
                "SELECT at FROM fleet_events WHERE kind = 'retrain' AND at >= ?1",
            )?;
            stmt.query_map([ts(since)], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })();
        let mut at: Vec<DateTime<Utc>> = self.keep(rows).iter().map(|s| parse_ts(s)).collect();
        at.sort_unstable();
        at
    }

    fn held_since(&self, since: DateTime<Utc>) -> u32 {
        self.keep(row(
            self.tx,
            "SELECT COUNT(*) FROM fleet_events WHERE kind = 'held' AND at >= ?1",
            [ts(since)],
            |r| r.get(0),
        ))
    }

    fn last_storm_page(&self) -> Option<DateTime<Utc>> {
        let at: Option<String> = self.keep(row(
            self.tx,
            "SELECT MAX(at) FROM fleet_events WHERE kind = 'storm'",
            [],
            |r| r.get(0),
        ));
        at.map(|a| parse_ts(&a))
    }

    fn pending_approvals(&self, model: &str) -> Vec<PendingApproval> {
        let mut pending: Vec<PendingApproval> = self.json_rows(
            "approvals.record",
            "SELECT record FROM approvals WHERE model = ?1",
            [model],
        );
        pending.sort_by(|a, b| a.environment.cmp(&b.environment));
        pending
    }

    fn model_tags(&self, model: &str, version: Option<&str>) -> Option<Arc<Tags>> {
        let tags: Option<String> = self.keep(
            match version {
                Some(v) => row(
                    self.tx,
                    "SELECT tags FROM versions WHERE model = ?1 AND version = ?2",
                    [model, v],
                    |r| r.get::<_, Option<String>>(0),
                ),
                // The most recently seen version, picked here (see decided_at).
                None => (|| {
                    let mut stmt = self
                        .tx
                        .prepare_cached("SELECT seen_at, tags FROM versions WHERE model = ?1")?;
                    let seen = stmt
                        .query_map([model], |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                        })?
                        .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
                    Ok(seen.into_iter().max().map(|(_, tags)| tags))
                })(),
            }
            .optional()
            .map(Option::flatten),
        );
        self.keep(tags.map(|t| json_column("versions.tags", &t)).transpose())
            .map(Arc::new)
    }

    fn production(&self, model: &str) -> Option<ProductionVersion> {
        self.json_rows(
            "production.record",
            "SELECT record FROM production WHERE model = ?1",
            [model],
        )
        .into_iter()
        .next()
    }

    fn open_pages(&self, model: Option<&str>) -> Vec<OpenPage> {
        let mut pages: Vec<OpenPage> = self.json_rows(
            "pages.record",
            "SELECT record FROM pages WHERE model = ?1",
            [model.unwrap_or("")],
        );
        pages.sort_by(|a, b| a.dedup_key.cmp(&b.dedup_key));
        pages
    }
}

fn apply_change(tx: &Connection, change: &StateChange, at: DateTime<Utc>) -> rusqlite::Result<()> {
    let json = |v: &dyn erased::Ser| v.to_json();
    match change {
        StateChange::ModelSeen {
            model,
            version,
            tags,
        } => {
            exec(tx,
                "INSERT INTO versions(model, version, tags, seen_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(model, version) DO UPDATE SET tags = excluded.tags, seen_at = excluded.seen_at",
                params![model, version, json(tags), ts(at)],
            )?;
        }
        StateChange::ApprovalOpened(p) => {
            exec(tx,
                "INSERT INTO approvals(model, environment, version, record) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(model, environment) DO UPDATE SET version = excluded.version, record = excluded.record",
                params![p.model, p.environment, p.version, json(p)],
            )?;
        }
        StateChange::ApprovalVoted {
            model,
            version,
            environment,
            approver,
        } => {
            let record: Option<String> = row(
                    tx,
                    "SELECT record FROM approvals WHERE model = ?1 AND environment = ?2 AND version = ?3",
                    [model, environment, version],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(mut p) =
                record.and_then(|r| serde_json::from_str::<PendingApproval>(&r).ok())
            {
                p.approvals.push(approver.clone());
                exec(
                    tx,
                    "UPDATE approvals SET record = ?1 WHERE model = ?2 AND environment = ?3",
                    params![json(&p), model, environment],
                )?;
            }
        }
        StateChange::ApprovalClosed {
            model,
            version,
            environment,
            ..
        } => {
            exec(
                tx,
                "DELETE FROM approvals WHERE model = ?1 AND environment = ?2 AND version = ?3",
                [model, environment, version],
            )?;
        }
        StateChange::RetrainHeldByBudget { .. } => {
            exec(
                tx,
                "INSERT INTO fleet_events(kind, at) VALUES ('held', ?1)",
                [ts(at)],
            )?;
        }
        StateChange::StormPaged => {
            exec(
                tx,
                "INSERT INTO fleet_events(kind, at) VALUES ('storm', ?1)",
                [ts(at)],
            )?;
        }
        StateChange::PageOpened { model, page } => {
            exec(
                tx,
                "INSERT INTO pages(model, dedup_key, record) VALUES (?1, ?2, ?3) ON CONFLICT(model, dedup_key) DO UPDATE SET record = excluded.record",
                params![model.as_deref().unwrap_or(""), page.dedup_key, json(page)],
            )?;
        }
        StateChange::PageResolved { model, dedup_key } => {
            exec(
                tx,
                "DELETE FROM pages WHERE model = ?1 AND dedup_key = ?2",
                [model.as_deref().unwrap_or(""), dedup_key],
            )?;
        }
        StateChange::ProductionSet { model, production } => {
            exec(
                tx,
                "INSERT INTO production(model, record) VALUES (?1, ?2) ON CONFLICT(model) DO UPDATE SET record = excluded.record",
                params![model, json(production)],
            )?;
        }
    }
    Ok(())
}

mod erased {
    /// Serialises any state value to JSON text for a column.
    pub trait Ser {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self) -> String {
            serde_json::to_string(self).expect("state values serialise")
        }
    }
}

/// Links a decision record to the previous one: SHA-256 over the previous hash and the record's JSON text.
pub(crate) fn chain_hash(prev: &str, record: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(record.as_bytes());
    h.finalize()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unsent(tx: &Connection, signal_key: &str) -> rusqlite::Result<Vec<LedgerEntry>> {
    let mut stmt = tx.prepare_cached(
        "SELECT entry FROM ledger WHERE signal_key = ?1 AND status = 'recorded' ORDER BY rowid",
    )?;
    let rows = stmt
        .query_map([signal_key], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    rows.iter()
        .map(|t| json_column("ledger.entry", t))
        .collect()
}

/// Puts a ledger entry on its worker queue and marks it sent, inside the commit (outbox mode).
fn enqueue_in(tx: &Connection, entry: &LedgerEntry, now: DateTime<Utc>) -> rusqlite::Result<Sent> {
    let sent = insert_outbox(tx, entry, now)?;
    exec(
        tx,
        "UPDATE ledger SET status = 'sent', sent_at = ?2 WHERE action_id = ?1 AND status = 'recorded'",
        params![entry.action.action_id.as_str(), ts(now)],
    )?;
    Ok(sent)
}

/// Enqueues a ledger entry in outbox mode. The queue row points at the entry's ledger row (its `message` is
/// empty) instead of holding a second copy of the entry, escaped inside a message (~1 KB a row, a third of
/// the database): [`queued_message`] builds the message from the entry when it is read, as
/// [`OutboundMessage::for_entry`] builds it. The ledger row is written in the same transaction and never
/// deleted.
fn insert_outbox(
    tx: &Connection,
    entry: &LedgerEntry,
    now: DateTime<Utc>,
) -> rusqlite::Result<Sent> {
    insert_row(
        tx,
        entry.action.action_id.as_str(),
        crate::ports::queue_for(entry.action.kind),
        "",
        now,
    )
}

/// The message of a queue row: its `message` column, or, for a row enqueued in outbox mode (empty
/// `message`), the one built from its ledger entry (`entry`, joined on the message id).
fn queued_message(message: &str, entry: Option<String>) -> rusqlite::Result<OutboundMessage> {
    if !message.is_empty() {
        return json_column("queue.message", message);
    }
    let Some(entry) = entry else {
        return Err(rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            "queue.message points at a ledger entry that is not there".into(),
        ));
    };
    let parsed: LedgerEntry = json_column("ledger.entry", &entry)?;
    Ok(OutboundMessage::for_entry_with_body(&parsed, entry))
}

/// Enqueues a message as its JSON text.
fn insert_message(
    tx: &Connection,
    m: &OutboundMessage,
    now: DateTime<Utc>,
) -> rusqlite::Result<Sent> {
    let text = serde_json::to_string(m).expect("message serialises");
    insert_row(tx, &m.message_id, &m.queue, &text, now)
}

/// MessageId is the primary key: Service Bus duplicate detection, locally.
fn insert_row(
    tx: &Connection,
    message_id: &str,
    queue: &str,
    message: &str,
    now: DateTime<Utc>,
) -> rusqlite::Result<Sent> {
    let inserted = exec(
        tx,
        "INSERT OR IGNORE INTO queue(message_id, queue, message, enqueued_at, visible_at) VALUES (?1, ?2, ?3, ?4, ?4)",
        params![message_id, queue, message, ts(now)],
    )?;
    Ok(if inserted == 1 {
        Sent::New
    } else {
        Sent::Duplicate
    })
}

/// Decide and record, inside the writer's transaction (see [`StateStore::commit`]).
fn commit_in(
    tx: &Connection,
    signal: &Signal,
    now: DateTime<Utc>,
    window: TimeDelta,
    decide: &Decider,
    outbox: bool,
) -> Result<Commit, PortError> {
    let view = TxView {
        tx,
        now,
        window,
        error: RefCell::new(None),
    };
    if view.decided_at(&signal.key).is_some() {
        if let Some(e) = view.error.into_inner() {
            return Err(classify(e));
        }
        let mut commit = Commit {
            decision: None,
            to_send: unsent(tx, &signal.key).map_err(classify)?,
            enqueued: Vec::new(),
        };
        if outbox {
            // Left unsent by a process that used another queue, or by a crash before outbox mode.
            for entry in std::mem::take(&mut commit.to_send) {
                let sent = enqueue_in(tx, &entry, now).map_err(classify)?;
                commit
                    .enqueued
                    .push((entry.action.action_id.to_string(), sent));
            }
        }
        return Ok(commit);
    }
    let decision = decide(&view);
    if let Some(e) = view.error.into_inner() {
        return Err(classify(e));
    }
    let record =
        serde_json::to_string(&decision).map_err(|e| PortError::Permanent(e.to_string()))?;
    let prev: String = row(
        tx,
        "SELECT hash FROM decisions ORDER BY seq DESC LIMIT 1",
        [],
        |r| r.get(0),
    )
    .optional()
    .map_err(classify)?
    .unwrap_or_else(|| GENESIS.to_string());
    let hash = chain_hash(&prev, &record);
    let decision_id = decision.decision_id();
    let at = ts(now);
    exec(
        tx,
        "INSERT INTO decisions(signal_key, decision_id, event_id, model, at, record, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![signal.key, decision_id, signal.event_id, decision.model, at, record, prev, hash],
    )
    .map_err(classify)?;
    let mut commit = Commit {
        decision: None,
        to_send: Vec::new(),
        enqueued: Vec::new(),
    };
    for action in &decision.actions {
        let entry = LedgerEntry::recorded(action, signal, &decision_id, now);
        // The conditional create: an action id already in the ledger (the same deployment approved twice,
        // say) is not recorded or sent again. In outbox mode the entry is enqueued below, in this transaction,
        // so it is recorded as sent at once.
        let entry_json = serde_json::to_string(&entry).expect("entry serialises");
        let status = if outbox {
            ActionStatus::Sent
        } else {
            ActionStatus::Recorded
        };
        let inserted = exec(
            tx,
            "INSERT OR IGNORE INTO ledger(action_id, kind, model, event_id, signal_key, status, entry, recorded_at, sent_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, CASE ?6 WHEN 'sent' THEN ?8 END)",
            params![
                action.action_id.as_str(),
                action.kind.as_str(),
                action.model,
                signal.event_id,
                signal.key,
                status.as_str(),
                entry_json,
                at
            ],
        )
        .map_err(classify)?;
        if inserted == 1 {
            if outbox {
                let sent = insert_outbox(tx, &entry, now).map_err(classify)?;
                commit
                    .enqueued
                    .push((action.action_id.as_str().to_string(), sent));
            } else {
                commit.to_send.push(entry);
            }
        }
        if let Some(model) = &action.model
            && action.kind.has_cooldown()
        {
            exec(
                tx,
                "INSERT INTO last_actions(model, kind, action_id, at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(model, kind) DO UPDATE SET action_id = excluded.action_id, at = excluded.at",
                params![model, action.kind.as_str(), action.action_id.as_str(), at],
            )
            .map_err(classify)?;
        }
        if action.kind == ActionKind::Retrain {
            exec(
                tx,
                "INSERT INTO fleet_events(kind, at) VALUES ('retrain', ?1)",
                [&at],
            )
            .map_err(classify)?;
        }
    }
    for change in &decision.changes {
        apply_change(tx, change, now).map_err(classify)?;
    }
    commit.decision = Some(decision);
    Ok(commit)
}

/// A ledger row as an entry: its JSON, with the status column (which settling updates) in place.
fn ledger_row(entry: &str, status: &str) -> rusqlite::Result<LedgerEntry> {
    let mut e: LedgerEntry = json_column("ledger.entry", entry)?;
    e.status = ActionStatus::parse(status);
    Ok(e)
}

#[async_trait::async_trait]
impl StateStore for Sqlite {
    async fn commit(
        &self,
        signal: &Signal,
        now: DateTime<Utc>,
        dedupe_window: TimeDelta,
        decide: Arc<Decider>,
    ) -> Result<Commit, PortError> {
        let signal = signal.clone();
        let outbox = self.outbox;
        self.write(move |tx| commit_in(tx, &signal, now, dedupe_window, &*decide, outbox))
            .await
    }

    async fn unsent(
        &self,
        recorded_before: DateTime<Utc>,
        after: Option<&LedgerEntry>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, PortError> {
        // The column holds ts(recorded_at), so the cursor compares in the same form.
        let after = after.map(|e| (ts(e.recorded_at), e.action.action_id.to_string()));
        self.with(move |c| {
            // ledger_unsent holds the unsent rows only, so this reads them and nothing else (and sorts few).
            let mut stmt = c
                .prepare_cached(
                    "SELECT entry FROM ledger INDEXED BY ledger_unsent WHERE status = 'recorded' \
                     AND recorded_at < ?1 AND (?3 IS NULL OR (recorded_at, action_id) > (?3, ?4)) \
                     ORDER BY recorded_at, action_id LIMIT ?2",
                )
                .map_err(classify)?;
            let (at, id) = after.clone().unzip();
            stmt.query_map(params![ts(recorded_before), limit as i64, at, id], |r| {
                json_column::<LedgerEntry>("ledger.entry", &r.get::<_, String>(0)?)
            })
            .map_err(classify)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(classify)
        })
        .await
    }

    async fn settle(
        &self,
        action_id: &str,
        status: ActionStatus,
        at: DateTime<Utc>,
    ) -> Result<(), PortError> {
        let id = action_id.to_string();
        self.write(move |c| {
            exec(c, "UPDATE ledger SET status = ?3, sent_at = ?2 WHERE action_id = ?1 AND status = 'recorded'", params![id, ts(at), status.as_str()])
                .map_err(classify)?;
            Ok(())
        })
        .await
    }

    async fn schedule_cursor(&self, name: &str) -> Result<Option<DateTime<Utc>>, PortError> {
        let name = name.to_string();
        self.with(move |c| {
            let at: Option<String> = c
                .query_row(
                    "SELECT last_due FROM schedules WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(classify)?;
            Ok(at.map(|a| parse_ts(&a)))
        })
        .await
    }

    async fn advance_schedule(
        &self,
        name: &str,
        from: Option<DateTime<Utc>>,
        to: DateTime<Utc>,
    ) -> Result<bool, PortError> {
        let name = name.to_string();
        self.write(move |c| {
            let changed = match from {
                None => c.execute(
                    "INSERT OR IGNORE INTO schedules(name, last_due) VALUES (?1, ?2)",
                    params![name, ts(to)],
                ),
                Some(f) => c.execute(
                    "UPDATE schedules SET last_due = ?2 WHERE name = ?1 AND last_due = ?3",
                    params![name, ts(to), ts(f)],
                ),
            }
            .map_err(classify)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), PortError> {
        let l = letter.clone();
        self.write(move |c| {
            exec(
                c,
                "INSERT INTO dead_letters(at, source, reason, body) VALUES (?1, ?2, ?3, ?4)",
                params![ts(l.at), l.source, l.reason, l.body],
            )
            .map_err(classify)?;
            Ok(())
        })
        .await
    }

    async fn actions(&self, filter: &Filter) -> Result<Vec<LedgerEntry>, PortError> {
        let f = filter.clone();
        self.with(move |c| {
            let mut stmt = c
                .prepare("SELECT entry, status FROM ledger WHERE (?1 IS NULL OR model = ?1) ORDER BY rowid")
                .map_err(classify)?;
            let rows = stmt
                .query_map([f.model], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(classify)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(classify)?;
            let mut out: Vec<LedgerEntry> = rows
                .into_iter()
                .map(|(entry, status)| ledger_row(&entry, &status))
                .collect::<rusqlite::Result<_>>()
                .map_err(classify)?;
            if let Some(limit) = f.limit {
                out = out.split_off(out.len().saturating_sub(limit));
            }
            Ok(out)
        })
        .await
    }

    async fn entry(&self, action_id: &str) -> Result<Option<LedgerEntry>, PortError> {
        let id = action_id.to_string();
        self.with(move |c| {
            let row: Option<(String, String)> = c
                .query_row(
                    "SELECT entry, status FROM ledger WHERE action_id = ?1",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(classify)?;
            row.map(|(entry, status)| ledger_row(&entry, &status).map_err(classify))
                .transpose()
        })
        .await
    }

    async fn decisions(&self, filter: &Filter) -> Result<Vec<DecisionRecord>, PortError> {
        let f = filter.clone();
        self.with(move |c| {
            let mut stmt = c
                .prepare("SELECT seq, record, prev_hash, hash FROM decisions WHERE (?1 IS NULL OR model = ?1) ORDER BY seq")
                .map_err(classify)?;
            let rows = stmt
                .query_map([f.model], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?)))
                .map_err(classify)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(classify)?;
            let mut out: Vec<DecisionRecord> = rows
                .into_iter()
                .map(|(seq, record, prev_hash, hash)| {
                    Ok(DecisionRecord { seq: seq as u64, decision: json_column("decisions.record", &record)?, prev_hash, hash })
                })
                .collect::<rusqlite::Result<_>>()
                .map_err(classify)?;
            if let Some(limit) = f.limit {
                out = out.split_off(out.len().saturating_sub(limit));
            }
            Ok(out)
        })
        .await
    }

    async fn verify_chain(&self) -> Result<u64, PortError> {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT seq, record, prev_hash, hash FROM decisions ORDER BY seq")
                .map_err(classify)?;
            let mut rows = stmt.query([]).map_err(classify)?;
            let mut prev = GENESIS.to_string();
            let mut n = 0u64;
            while let Some(row) = rows.next().map_err(classify)? {
                let (seq, record, prev_hash, hash): (i64, String, String, String) = (
                    row.get(0).map_err(classify)?,
                    row.get(1).map_err(classify)?,
                    row.get(2).map_err(classify)?,
                    row.get(3).map_err(classify)?,
                );
                if prev_hash != prev || chain_hash(&prev, &record) != hash {
                    return Err(PortError::Permanent(format!(
                        "decision log chain broken at record {seq}"
                    )));
                }
                prev = hash;
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, PortError> {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT at, source, reason, body FROM dead_letters ORDER BY id")
                .map_err(classify)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(DeadLetter {
                        at: parse_ts(&r.get::<_, String>(0)?),
                        source: r.get(1)?,
                        reason: r.get(2)?,
                        body: r.get(3)?,
                    })
                })
                .map_err(classify)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(classify)?;
            Ok(rows)
        })
        .await
    }

    async fn shared_key(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, PortError> {
        let (name, fresh) = (name.to_string(), fresh.to_vec());
        self.write(move |c| {
            // The first writer's key stands; everyone reads it back.
            exec(
                c,
                "INSERT OR IGNORE INTO keys(name, key) VALUES (?1, ?2)",
                params![name, fresh],
            )
            .map_err(classify)?;
            row(c, "SELECT key FROM keys WHERE name = ?1", [&name], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .map_err(classify)
        })
        .await
    }

    async fn record_effect(&self, effect: &Effect) -> Result<(), PortError> {
        let e = effect.clone();
        self.write(move |c| {
            // One effect per action: a redelivered message does not overwrite what the first delivery did.
            exec(c,
                "INSERT OR IGNORE INTO effects(action_id, model, record, at) VALUES (?1, ?2, ?3, ?4)",
                params![e.action_id, e.model, serde_json::to_string(&e).expect("effect serialises"), ts(e.at)],
            )
            .map_err(classify)?;
            Ok(())
        })
        .await
    }

    async fn effect(&self, action_id: &str) -> Result<Option<Effect>, PortError> {
        let id = action_id.to_string();
        self.with(move |c| {
            let record: Option<String> = row(
                c,
                "SELECT record FROM effects WHERE action_id = ?1",
                [&id],
                |r| r.get(0),
            )
            .optional()
            .map_err(classify)?;
            record
                .map(|r| json_column::<Effect>("effects.record", &r))
                .transpose()
                .map_err(classify)
        })
        .await
    }

    async fn effects(&self, filter: &Filter) -> Result<Vec<Effect>, PortError> {
        let f = filter.clone();
        self.with(move |c| {
            let mut stmt = c.prepare("SELECT record FROM effects WHERE (?1 IS NULL OR model = ?1) ORDER BY at, action_id").map_err(classify)?;
            let rows = stmt
                .query_map([f.model], |r| r.get::<_, String>(0))
                .map_err(classify)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(classify)?;
            rows.iter().map(|r| json_column("effects.record", r)).collect::<rusqlite::Result<_>>().map_err(classify)
        })
        .await
    }
}

#[async_trait::async_trait]
impl Queue for Sqlite {
    async fn send(&self, message: &OutboundMessage) -> Result<Sent, PortError> {
        let m = message.clone();
        self.write(move |c| insert_message(c, &m, Utc::now()).map_err(classify))
            .await
    }
}

#[async_trait::async_trait]
impl LocalQueue for Sqlite {
    async fn receive(
        &self,
        queue: &str,
        max: usize,
        lock: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<Vec<Received>, PortError> {
        let queue = queue.to_string();
        self.write(move |tx| {
            let rows: Vec<(String, String, u32, Option<String>)> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT q.message_id, q.message, q.delivery_count, l.entry FROM queue q
                         LEFT JOIN ledger l ON q.message = '' AND l.action_id = q.message_id
                         WHERE q.queue = ?1 AND q.completed_at IS NULL AND q.visible_at <= ?2
                         ORDER BY q.enqueued_at, q.message_id LIMIT ?3",
                    )
                    .map_err(classify)?;
                stmt.query_map(params![queue, ts(now), max as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .map_err(classify)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(classify)?
            };
            let mut out = Vec::new();
            for (id, message, count, entry) in rows {
                exec(tx,
                    "UPDATE queue SET visible_at = ?2, delivery_count = delivery_count + 1 WHERE message_id = ?1",
                    params![id, ts(now + lock)],
                )
                .map_err(classify)?;
                // A row that does not read back still reaches the drainer, its text as the body: the drainer
                // dead-letters it (not a ledger entry) instead of it staying on the queue, unseen, forever.
                let message = queued_message(&message, entry).unwrap_or_else(|e| {
                    tracing::warn!(message_id = %id, error = %e, "sqlite: a queue message does not read back");
                    OutboundMessage {
                        queue: queue.clone(),
                        message_id: id.clone(),
                        correlation_id: String::new(),
                        session_id: None,
                        label: String::new(),
                        traceparent: None,
                        body: message,
                    }
                });
                out.push(Received { message, delivery_count: count + 1 });
            }
            Ok(out)
        })
        .await
    }

    async fn renew(
        &self,
        queue: &str,
        received: &Received,
        until: DateTime<Utc>,
    ) -> Result<bool, PortError> {
        let (queue, id) = (queue.to_string(), received.message.message_id.clone());
        let count = received.delivery_count;
        self.write(move |c| {
            // The delivery count tells this receipt from a later one by another receiver.
            let held = exec(
                c,
                "UPDATE queue SET visible_at = ?4 WHERE queue = ?1 AND message_id = ?2 AND delivery_count = ?3 \
                 AND completed_at IS NULL",
                params![queue, id, count, ts(until)],
            )
            .map_err(classify)?;
            Ok(held == 1)
        })
        .await
    }

    async fn complete(
        &self,
        queue: &str,
        message_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PortError> {
        let (queue, id) = (queue.to_string(), message_id.to_string());
        self.write(move |c| {
            exec(
                c,
                "UPDATE queue SET completed_at = ?3 WHERE queue = ?1 AND message_id = ?2",
                params![queue, id, ts(now)],
            )
            .map_err(classify)?;
            Ok(())
        })
        .await
    }

    async fn depths(&self) -> Result<Vec<(String, u64, u64)>, PortError> {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT queue, SUM(completed_at IS NULL), SUM(completed_at IS NOT NULL) FROM queue GROUP BY queue ORDER BY queue")
                .map_err(classify)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64)))
                .map_err(classify)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(classify)?;
            Ok(rows)
        })
        .await
    }

    async fn messages(
        &self,
        queue: Option<&str>,
    ) -> Result<Vec<(OutboundMessage, String)>, PortError> {
        let queue = queue.map(str::to_string);
        self.with(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT q.message, CASE WHEN q.completed_at IS NULL THEN 'active' ELSE 'completed' END, l.entry FROM queue q
                     LEFT JOIN ledger l ON q.message = '' AND l.action_id = q.message_id
                     WHERE (?1 IS NULL OR q.queue = ?1) ORDER BY q.enqueued_at, q.message_id",
                )
                .map_err(classify)?;
            let rows = stmt
                .query_map([queue], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?)))
                .map_err(classify)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(classify)?;
            rows.into_iter()
                .map(|(m, s, entry)| Ok((queued_message(&m, entry)?, s)))
                .collect::<rusqlite::Result<_>>()
                .map_err(classify)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statements decide() runs per request must stay prepared: SQLite re-prepares (parses and plans
    /// again) a statement with ORDER BY or max() over a bound parameter at every execution, which once cost a
    /// tenth of the writer's time.
    #[test]
    fn per_request_reads_are_not_re_prepared() {
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open(dir.path().join("r.db")).unwrap();
        let conn = db.connect().unwrap();
        let reads = [
            "SELECT seq, at FROM decisions WHERE signal_key = ?1",
            "SELECT seen_at, tags FROM versions WHERE model = ?1",
            "SELECT record FROM approvals WHERE model = ?1",
            "SELECT record FROM pages WHERE model = ?1",
        ];
        for i in 0..5 {
            exec(&conn, "BEGIN IMMEDIATE", []).unwrap();
            for sql in reads {
                let mut stmt = conn.prepare_cached(sql).unwrap();
                let n = stmt
                    .query_map([format!("k{i}")], |_| Ok(()))
                    .unwrap()
                    .count();
                assert_eq!(n, 0);
            }
            exec(
                &conn,
                "INSERT INTO decisions(signal_key, decision_id, event_id, model, at, record, prev_hash, hash) \
                 VALUES (?1, 'd', 'e', 'm', 'a', 'r', 'p', 'h')",
                [format!("k{i}")],
            )
            .unwrap();
            exec(&conn, "COMMIT", []).unwrap();
        }
        for sql in reads {
            let stmt = conn.prepare_cached(sql).unwrap();
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "{sql}"
            );
        }
    }
}
