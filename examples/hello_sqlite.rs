//! A second baseline for `benches/runtime.rs`: `hello_axum` plus the least durable work any design of the
//! relay must do per event, to tell what this machine allows before any relay logic.
//!
//! `hello-sqlite PORT [RESPONSE_BYTES]` answers like `hello-axum`, except that `POST /AmlEvents` first appends
//! the request body to an SQLite table and answers only once that row is committed: one writer thread, group
//! commit of whatever arrived meanwhile (≤ 64 rows a transaction), WAL with `synchronous = NORMAL`, as the
//! relay's store. With `HELLO_SQLITE_KEYED=1` each row also goes under a unique 64-hex-digit key (the SHA-256
//! of the body), as the decision log's and the ledger's deduplication need. The database is `HELLO_SQLITE_DB`
//! (default `hello-sqlite.db` in the temporary directory, removed first).
//!
//! Checkpoints are SQLite's own, on the writer: on this machine that measured faster here than passive
//! checkpoints from a thread of their own (keyed: 16.1k requests/s against 14.6k; without the key: 27.7k
//! against 23.8k), so it is the better floor.

#[path = "common/baseline.rs"]
mod baseline;

use std::sync::mpsc;

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::routing::post;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Job = (Bytes, oneshot::Sender<bool>);

/// The writer thread: takes what arrived, commits it in one transaction, answers each job.
fn writer(conn: rusqlite::Connection, keyed: bool, jobs: mpsc::Receiver<Job>) {
    let sql = if keyed {
        "INSERT INTO events(key, body) VALUES (?1, ?2)"
    } else {
        "INSERT INTO events(body) VALUES (?1)"
    };
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < 64 {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let committed = (|| -> rusqlite::Result<()> {
            let tx = conn.unchecked_transaction()?;
            let mut insert = tx.prepare_cached(sql)?;
            for (body, _) in &batch {
                if keyed {
                    let key = hex(&Sha256::digest(body));
                    insert.execute(rusqlite::params![key, &body[..]])?;
                } else {
                    insert.execute([&body[..]])?;
                }
            }
            drop(insert);
            tx.commit()
        })()
        .is_ok();
        for (_, done) in batch {
            let _ = done.send(committed);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn main() {
    let (port, size) = baseline::args("hello-sqlite");
    let body = Bytes::from(baseline::response_body(size));
    let keyed = std::env::var("HELLO_SQLITE_KEYED").is_ok_and(|v| v == "1");
    let path = std::env::var_os("HELLO_SQLITE_DB")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("hello-sqlite.db"));
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    let conn = rusqlite::Connection::open(&path).expect("open the database");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         CREATE TABLE events (id INTEGER PRIMARY KEY, key TEXT UNIQUE, body BLOB NOT NULL);",
    )
    .expect("create the table");
    let (tx, jobs) = mpsc::channel::<Job>();
    std::thread::spawn(move || writer(conn, keyed, jobs));

    baseline::serve(
        "hello-sqlite",
        port,
        post(move |request: Bytes| {
            let (body, tx) = (body.clone(), tx.clone());
            async move {
                let (done, committed) = oneshot::channel();
                let _ = tx.send((request, done));
                if committed.await.unwrap_or(false) {
                    Ok(([(header::CONTENT_TYPE, "application/json")], body))
                } else {
                    Err(StatusCode::SERVICE_UNAVAILABLE)
                }
            }
        }),
    );
}
