//! The SQL floor: what the relay's writes cost SQLite alone, with no Rust work around them.
//!
//! After the load run, the relay's database holds one decision, ledger entry, queue row and model version per
//! request. The floor copies its schema (tables and indexes) into a fresh database and writes those rows
//! again, request by request, in transactions of one batch each, with the reads a commit makes for them
//! (deduplication, the model's pending approvals and production version, the hash chain's last record). It
//! does not decide, serialise, hash, or hand work between threads, and checkpoints are not counted: a lower
//! bound for any writer that keeps these rows and indexes, on this machine.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

/// The rows one request wrote.
struct Request {
    decision: [String; 8],
    ledger: Vec<[Option<String>; 9]>,
    queue: Vec<[Option<String>; 5]>,
    version: Option<[Option<String>; 4]>,
    approval: Option<[Option<String>; 4]>,
}

/// A table whose rows the floor can leave out, to tell what writing them costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `ledger`: the entry of each action.
    Ledger,
    /// `queue`: the outbox row of each action.
    Queue,
    /// `versions`: the model version each registration records.
    Versions,
    /// `approvals`: the pending approval each registration opens.
    Approvals,
}

impl Table {
    /// All of them.
    pub const ALL: [Table; 4] = [
        Table::Ledger,
        Table::Queue,
        Table::Versions,
        Table::Approvals,
    ];

    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Ledger => "ledger",
            Table::Queue => "queue",
            Table::Versions => "versions",
            Table::Approvals => "approvals",
        }
    }
}

/// The relay's rows, read once, to be written again as often as asked.
pub struct Floor {
    requests: Vec<Request>,
    schema: Vec<String>,
    /// Requests per transaction.
    pub batch: usize,
}

impl Floor {
    /// Reads the rows of `src`, the relay's database after the load; `batch` requests will go in a
    /// transaction.
    pub fn read(src: &Path, batch: usize) -> rusqlite::Result<Floor> {
        let from = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let schema = from
            .prepare(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' \
                 ORDER BY rowid",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(Floor {
            requests: read_requests(&from)?,
            schema,
            batch: batch.max(1),
        })
    }

    /// Requests read.
    pub fn requests(&self) -> usize {
        self.requests.len()
    }

    /// Writes every request again into a new database at `dst` (the rows of `skip` left out) and returns
    /// the time per request, in microseconds,, in the timed transactions (checkpoints not counted).
    pub fn measure(&self, dst: &Path, skip: &[Table]) -> rusqlite::Result<f64> {
        let to = Connection::open(dst)?;
        // The writer's settings (handlers/adapters/sqlite): WAL, no fsync per commit, checkpoints apart.
        to.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0; \
             PRAGMA temp_store = MEMORY;",
        )?;
        for sql in &self.schema {
            to.execute_batch(sql)?;
        }
        let mut elapsed = Duration::ZERO;
        for (n, chunk) in self.requests.chunks(self.batch).enumerate() {
            let t0 = Instant::now();
            let tx = to.unchecked_transaction()?;
            for r in chunk {
                write_request(&tx, r, skip)?;
            }
            tx.commit()?;
            elapsed += t0.elapsed();
            // The relay's checkpointer runs in the background; here, outside the timed part.
            if n % 64 == 63 {
                to.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            }
        }
        drop(to);
        for suffix in ["", "-wal", "-shm"] {
            let mut path = dst.as_os_str().to_owned();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
        Ok(elapsed.as_secs_f64() * 1e6 / self.requests.len().max(1) as f64)
    }
}

fn read_requests(c: &Connection) -> rusqlite::Result<Vec<Request>> {
    let mut ledger: HashMap<String, Vec<[Option<String>; 9]>> = HashMap::new();
    let mut stmt = c.prepare(
        "SELECT action_id, kind, model, event_id, signal_key, status, entry, recorded_at, sent_at \
         FROM ledger ORDER BY rowid",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let row: [Option<String>; 9] = columns(r)?;
        let key = row[4].clone().unwrap_or_default();
        ledger.entry(key).or_default().push(row);
    }
    let mut queue: HashMap<String, [Option<String>; 5]> = HashMap::new();
    let mut stmt =
        c.prepare("SELECT message_id, queue, message, enqueued_at, visible_at FROM queue")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let row: [Option<String>; 5] = columns(r)?;
        queue.insert(row[0].clone().unwrap_or_default(), row);
    }
    let versions: Vec<[Option<String>; 4]> = c
        .prepare("SELECT model, version, tags, seen_at FROM versions ORDER BY rowid")?
        .query_map([], columns)?
        .collect::<Result<_, _>>()?;
    let approvals: HashMap<String, [Option<String>; 4]> = c
        .prepare("SELECT model, environment, version, record FROM approvals")?
        .query_map([], columns)?
        .map(|row| row.map(|a: [Option<String>; 4]| (a[0].clone().unwrap_or_default(), a)))
        .collect::<Result<_, _>>()?;
    let mut stmt = c.prepare(
        "SELECT signal_key, decision_id, event_id, coalesce(model, ''), at, record, prev_hash, hash \
         FROM decisions ORDER BY seq",
    )?;
    let decisions: Vec<[String; 8]> = stmt.query_map([], columns)?.collect::<Result<_, _>>()?;
    // Versions are matched to decisions in order: each request registered one.
    let mut versions = versions.into_iter();
    Ok(decisions
        .into_iter()
        .map(|decision| {
            let ledger = ledger.remove(&decision[0]).unwrap_or_default();
            let queue = ledger
                .iter()
                .filter_map(|l| queue.remove(l[0].as_deref().unwrap_or_default()))
                .collect();
            let approval = approvals.get(&decision[3]).cloned();
            Request {
                decision,
                ledger,
                queue,
                version: versions.next(),
                approval,
            }
        })
        .collect())
}

/// A row's first `N` columns.
fn columns<T: rusqlite::types::FromSql, const N: usize>(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<[T; N]> {
    let values = (0..N)
        .map(|i| r.get(i))
        .collect::<rusqlite::Result<Vec<T>>>()?;
    Ok(values.try_into().ok().expect("N columns"))
}

fn write_request(tx: &Connection, r: &Request, skip: &[Table]) -> rusqlite::Result<()> {
    let [key, decision_id, event_id, model, at, record, prev, hash] = &r.decision;
    let read = |sql: &str, arg: &str| -> rusqlite::Result<()> {
        let mut stmt = tx.prepare_cached(sql)?;
        let mut rows = stmt.query([arg])?;
        while rows.next()?.is_some() {}
        Ok(())
    };
    // The reads decide() makes for a registration (deduplication, pending approvals, the champion), and the
    // hash chain's last record.
    read("SELECT seq, at FROM decisions WHERE signal_key = ?1", key)?;
    read("SELECT record FROM approvals WHERE model = ?1", model)?;
    read("SELECT record FROM production WHERE model = ?1", model)?;
    tx.prepare_cached("SELECT hash FROM decisions ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| r.get::<_, String>(0))
        .optional()?;
    tx.prepare_cached(
        "INSERT INTO decisions(signal_key, decision_id, event_id, model, at, record, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![key, decision_id, event_id, model, at, record, prev, hash])?;
    let write = |table: Table, sql: &str, values: &[Option<String>]| -> rusqlite::Result<()> {
        if !skip.contains(&table) {
            tx.prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(values))?;
        }
        Ok(())
    };
    for l in &r.ledger {
        write(
            Table::Ledger,
            "INSERT OR IGNORE INTO ledger(action_id, kind, model, event_id, signal_key, status, entry, \
             recorded_at, sent_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            l,
        )?;
    }
    for q in &r.queue {
        write(
            Table::Queue,
            "INSERT OR IGNORE INTO queue(message_id, queue, message, enqueued_at, visible_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            q,
        )?;
    }
    if let Some(v) = &r.version {
        write(
            Table::Versions,
            "INSERT INTO versions(model, version, tags, seen_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(model, version) DO UPDATE SET tags = excluded.tags, seen_at = excluded.seen_at",
            v,
        )?;
    }
    if let Some(a) = &r.approval {
        write(
            Table::Approvals,
            "INSERT INTO approvals(model, environment, version, record) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(model, environment) DO UPDATE SET version = excluded.version, record = excluded.record",
            a,
        )?;
    }
    Ok(())
}
