//! Group commit: one writer thread per process owns a connection and runs the writes that arrive while it is
//! busy as one `BEGIN IMMEDIATE` transaction. SQLite lets one writer in at a time anyway (across processes,
//! through its file lock); batching pays for that lock, the WAL frames of shared index pages and the commit
//! once per batch instead of once per request.
//!
//! Jobs in a batch stand or fall alone. A batch first runs without savepoints, since a job seldom fails and a
//! savepoint copies every page a job touches first (~5% of the writer's time under the runtime benchmark). If
//! a job fails, the whole transaction is rolled back and the batch runs again with a savepoint per job, so
//! that only the failed job's writes are undone. A job is therefore a function of the database that may run
//! twice; only its last run counts.
//!
//! Correctness does not depend on this thread: every job is a conditional write that is still correct when
//! another process's writer commits in between, and a job's reply is sent only after its batch committed.
//!
//! The WAL is kept bounded, and each page is copied into the database about once per WAL. SQLite starts the
//! WAL over from its beginning only after a checkpoint that copied *every* frame, and under a steady write
//! load a background checkpoint can never get there (new frames arrive while it copies). Left alone, the WAL
//! grew by ~100 MB a second under the runtime benchmark. So the writer follows the WAL's size (SQLite's WAL
//! hook reports it after every commit), and once it is past [`RESET_FRAMES`]:
//!
//! 1. it wakes the [`checkpointer`], which copies the frames so far into the database and syncs it, in the
//!    background, while writes go on, and passes again over what arrived meanwhile until that is little;
//! 2. once it is done, the writer itself finishes the checkpoint between two batches, when no write is
//!    waiting, and the next transaction starts the WAL over. What is left to copy and sync then is what
//!    arrived during the last background pass (8–27 ms here under the runtime benchmark, where finishing
//!    after a pass every 16 batches took 45–80 ms).
//!
//! One background pass per WAL, rather than one every few batches, copies a page written many times over
//! (an index leaf, a small table) once instead of once per pass. Under the runtime benchmark, against a pass
//! every 16 batches: checkpointer CPU ~33 → ~15 µs per request, relay throughput +30–45%, p99 slightly
//! lower, but p99.9 ~12 → ~20–28 ms, since the WAL is synced in one piece rather than in many. If the
//! writer never finds an idle moment, the checkpointer gets another pass each [`RESET_FRAMES`], and past
//! [`MAX_FRAMES`] the writer finishes even though writes are waiting.

use std::ffi::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::ports::PortError;

/// Most jobs in one transaction: enough to amortise the commit, few enough to keep the first one's wait short.
const MAX_BATCH: usize = 64;

/// WAL frames (pages) after which the WAL is copied into the database and started over (see the module
/// docs): 64 MiB with 4 KiB pages. SQLite's own automatic checkpoint, after ~1000 frames, would run on the
/// request path and is switched off on the writer's connection.
pub(super) const RESET_FRAMES: i64 = 16384;

/// Frames the checkpointer leaves to the writer's final checkpoint: it passes again while more than this
/// arrived during its last pass.
const LEFT_FOR_THE_WRITER: i64 = 1024;

/// WAL frames after which the writer finishes the checkpoint even though writes are waiting: 1 GiB with 4 KiB
/// pages, the most disk the WAL takes under any load.
pub(super) const MAX_FRAMES: i64 = 262_144;

/// A write to run inside the writer's transaction.
trait Job: Send {
    /// Runs the write; false when it failed. It may run again (see the module docs).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Replies once the batch is over: with the job's result if the batch committed, else with `failed`.
    fn finish(self: Box<Self>, failed: Option<&BatchError>);
}

/// Why a whole batch did not commit.
#[derive(Debug, Clone)]
struct BatchError {
    transient: bool,
    message: String,
}

impl BatchError {
    fn from_sqlite(e: &rusqlite::Error) -> BatchError {
        BatchError {
            transient: super::classify_code(e),
            message: format!("sqlite: {e}"),
        }
    }

    fn to_port(&self) -> PortError {
        if self.transient {
            PortError::Transient(self.message.clone())
        } else {
            PortError::Permanent(self.message.clone())
        }
    }
}

struct Pending<T, F> {
    work: F,
    result: Option<Result<T, PortError>>,
    reply: oneshot::Sender<Result<T, PortError>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send,
    F: Fn(&Connection) -> Result<T, PortError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let work = &self.work;
        // A panicking job (a bug) fails alone; the writer and the rest of its batch carry on.
        let result = catch_unwind(AssertUnwindSafe(|| work(conn))).unwrap_or_else(|_| {
            Err(PortError::Permanent(
                "sqlite: a write panicked; see the logs".into(),
            ))
        });
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, failed: Option<&BatchError>) {
        let result = match (self.result, failed) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), None) => Ok(v),
            (_, Some(e)) => Err(e.to_port()),
            (None, None) => Err(PortError::Transient("sqlite: write not run".into())),
        };
        // The requester may have gone (its request was cancelled): the write stands, as a redelivery expects.
        let _ = self.reply.send(result);
    }
}

/// The handle to a writer thread. Dropping every handle ends the thread after its last batch.
pub(super) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
    /// The checkpointer's finished passes (tests count them).
    #[cfg(test)]
    passes: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the writer on `conn` and a checkpointer on `checkpoint_conn`.
    pub(super) fn start(conn: Connection, checkpoint_conn: Connection) -> std::io::Result<Writer> {
        Writer::start_with(conn, checkpoint_conn, [RESET_FRAMES, MAX_FRAMES])
    }

    /// [`Writer::start`] with other WAL sizes (tests use small ones).
    fn start_with(
        mut conn: Connection,
        checkpoint_conn: Connection,
        [reset_frames, max_frames]: [i64; 2],
    ) -> std::io::Result<Writer> {
        let (jobs, rx) = mpsc::channel::<Box<dyn Job>>();
        let (wake, sleep) = mpsc::sync_channel::<()>(1);
        let frames = Arc::new(AtomicI64::new(0));
        let passes = Arc::new(AtomicU64::new(0));
        let hooked = frames.clone();
        // Runs on the writer's thread after each of its commits, with the WAL's size in frames. (Set after
        // `wal_autocheckpoint`, which would replace it.)
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: c_int| {
            hooked.store(i64::from(pages), Ordering::Relaxed);
            Ok(())
        }))
        .map_err(std::io::Error::other)?;
        let (seen, done) = (frames.clone(), passes.clone());
        #[cfg(test)]
        let counted = passes.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpointer(checkpoint_conn, sleep, &seen, &done))?;
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let wal = Wal {
                    frames: &frames,
                    passes: &passes,
                    wake,
                    reset: reset_frames,
                    max: max_frames,
                };
                writer(conn, rx, &wal)
            })?;
        Ok(Writer {
            jobs,
            #[cfg(test)]
            passes: counted,
        })
    }

    /// Runs `work` in the next batch and waits for its batch to commit. `work` may run twice (see the module
    /// docs), so it is `Fn`.
    pub(super) async fn write<T, F>(&self, work: F) -> Result<T, PortError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, PortError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Pending {
            work,
            result: None,
            reply,
        });
        self.jobs
            .send(job)
            .map_err(|_| PortError::Transient("sqlite: the writer thread has stopped".into()))?;
        answer
            .await
            .map_err(|_| PortError::Transient("sqlite: the writer thread has stopped".into()))?
    }
}

/// What the writer knows of the WAL, and how it gets it copied and started over (see the module docs).
struct Wal<'a> {
    /// The WAL's size in frames after the last commit (from SQLite's WAL hook).
    frames: &'a AtomicI64,
    /// Background passes the checkpointer has finished.
    passes: &'a AtomicU64,
    /// Asks the checkpointer for a pass.
    wake: mpsc::SyncSender<()>,
    /// Frames from which the WAL is copied and started over.
    reset: i64,
    /// Frames from which the writer finishes the checkpoint even though writes wait.
    max: i64,
}

fn writer(conn: Connection, rx: mpsc::Receiver<Box<dyn Job>>, wal: &Wal<'_>) {
    // A job taken while looking whether any was waiting; it starts the next batch.
    let mut next: Option<Box<dyn Job>> = None;
    // The WAL size at which the checkpointer is next asked for a pass, and the number of passes it had
    // finished when it was last asked: the writer finishes once a later pass is over.
    let mut wake_at = wal.reset;
    let mut asked: Option<u64> = None;
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let failed = run_batch(&conn, &mut batch).err();
        if let Some(e) = &failed {
            tracing::warn!(jobs = batch.len(), error = %e.message, "sqlite: batch rolled back");
        }
        for job in batch {
            job.finish(failed.as_ref());
        }
        let frames = wal.frames.load(Ordering::Relaxed);
        if frames < wal.reset {
            // A new WAL (this writer or another process's started it over).
            wake_at = wal.reset;
            asked = None;
            continue;
        }
        if frames >= wake_at {
            // A pass is asked for once per `reset` frames; full means one is due already.
            asked = Some(wal.passes.load(Ordering::Acquire));
            let _ = wal.wake.try_send(());
            wake_at = frames + wal.reset;
        }
        let passed = asked.is_some_and(|n| wal.passes.load(Ordering::Acquire) > n);
        if !passed && frames < wal.max {
            continue;
        }
        let idle = match rx.try_recv() {
            Ok(job) => {
                next = Some(job);
                false
            }
            Err(_) => true,
        };
        if (idle || frames >= wal.max) && finish_checkpoint(&conn) {
            // The next commit starts the WAL over (and the hook reports its new size).
            wal.frames.store(0, Ordering::Relaxed);
        }
    }
}

/// One PASSIVE checkpoint: copies what it can without waiting for readers or blocking a writer. Logged;
/// whether every frame is now in the database, or None when it failed (it is retried later: a checkpoint is
/// never needed for correctness).
fn passive_checkpoint(conn: &Connection, what: &str) -> Option<bool> {
    let started = Instant::now();
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    }) {
        Ok((busy, wal, done)) => {
            tracing::debug!(busy, wal_pages = wal, checkpointed = done, took = ?started.elapsed(), "sqlite: {what}");
            Some(busy == 0 && done == wal)
        }
        Err(e) => {
            tracing::warn!(error = %e, "sqlite: {what} failed; retried later");
            None
        }
    }
}

/// Copies the frames the background checkpoint has not copied yet, between two batches; true when every frame
/// is in the database, so that the next write transaction starts the WAL over. A checkpoint already running on
/// the checkpointer (busy), or a reader still on an old snapshot (not every frame copied), leaves it for a
/// later batch.
fn finish_checkpoint(conn: &Connection) -> bool {
    passive_checkpoint(conn, "WAL reset checkpoint").unwrap_or(false)
}

/// Runs a batch in one transaction: first without savepoints, and again with one per job if a job failed
/// (see the module docs).
fn run_batch(conn: &Connection, batch: &mut [Box<dyn Job>]) -> Result<(), BatchError> {
    if run_all(conn, batch)? {
        return Ok(());
    }
    run_each(conn, batch)
}

fn exec(conn: &Connection, sql: &str) -> Result<(), BatchError> {
    super::exec(conn, sql, [])
        .map(drop)
        .map_err(|e| BatchError::from_sqlite(&e))
}

/// Rolls back what is left of a transaction that did not commit.
fn roll_back(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

/// Every job in one transaction with no savepoints: Ok(true) when all of them ran and the batch committed,
/// Ok(false) when a job failed and the transaction was rolled back.
fn run_all(conn: &Connection, batch: &mut [Box<dyn Job>]) -> Result<bool, BatchError> {
    exec(conn, "BEGIN IMMEDIATE")?;
    if !batch.iter_mut().all(|job| job.run(conn)) {
        roll_back(conn);
        return Ok(false);
    }
    exec(conn, "COMMIT").inspect_err(|_| roll_back(conn))?;
    Ok(true)
}

/// Every job in one transaction, each in its own savepoint: a failed job's writes are undone alone.
fn run_each(conn: &Connection, batch: &mut [Box<dyn Job>]) -> Result<(), BatchError> {
    exec(conn, "BEGIN IMMEDIATE")?;
    let result = (|| {
        for job in batch.iter_mut() {
            exec(conn, "SAVEPOINT job")?;
            if job.run(conn) {
                exec(conn, "RELEASE job")?;
            } else if conn.is_autocommit() {
                // Some errors (full disk, I/O) make SQLite roll the whole transaction back: every job is lost.
                return Err(BatchError {
                    transient: true,
                    message: "sqlite: the transaction was rolled back by an earlier error".into(),
                });
            } else {
                exec(conn, "ROLLBACK TO job")?;
                exec(conn, "RELEASE job")?;
            }
        }
        exec(conn, "COMMIT")
    })();
    if result.is_err() {
        roll_back(conn);
    }
    result
}

/// Runs a PASSIVE checkpoint whenever the writer asks, then syncs the database file, and counts the passes.
/// SQLite syncs the database only at the end of a checkpoint that copied every frame, which under load is
/// the one the writer finishes: it then waited for every page copied since the last reset to reach the disk
/// (85–180 ms under the runtime benchmark). Synced here, in the background, that wait is mostly gone. The
/// sync is for latency only: SQLite's own syncs keep the data safe.
fn checkpointer(
    conn: Connection,
    sleep: mpsc::Receiver<()>,
    frames: &AtomicI64,
    passes: &AtomicU64,
) {
    // Any descriptor of the file syncs its pages; none for an in-memory or temporary database.
    let db = conn
        .path()
        .filter(|p| !p.is_empty())
        .and_then(|p| std::fs::File::open(p).ok());
    while sleep.recv().is_ok() {
        // Passes again over what arrived during the last one, until that is little: what the writer has left
        // to copy and sync when it finishes is then a few milliseconds' worth.
        loop {
            let before = frames.load(Ordering::Relaxed);
            let copied = passive_checkpoint(&conn, "checkpoint");
            if copied.is_some()
                && let Some(db) = &db
            {
                let started = Instant::now();
                if let Err(e) = db.sync_data() {
                    tracing::warn!(error = %e, "sqlite: cannot sync the database file; SQLite syncs it later");
                } else {
                    tracing::debug!(took = ?started.elapsed(), "sqlite: database file synced");
                }
            }
            let arrived = frames.load(Ordering::Relaxed) - before;
            if copied.is_none() || arrived <= LEFT_FOR_THE_WRITER {
                break;
            }
        }
        // Counted even when it failed: the writer then finishes the checkpoint itself.
        passes.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn open(dir: &std::path::Path) -> (Writer, impl Fn() -> Connection) {
        let path = dir.join("w.db");
        let connect = move || {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE IF NOT EXISTS t(x INTEGER PRIMARY KEY);",
            )
            .unwrap();
            c
        };
        (Writer::start(connect(), connect()).unwrap(), connect)
    }

    fn insert(x: i64) -> impl Fn(&Connection) -> Result<i64, PortError> + Send + 'static {
        move |c| {
            c.execute("INSERT INTO t(x) VALUES (?1)", [x])
                .map_err(|e| PortError::Permanent(e.to_string()))?;
            Ok(x)
        }
    }

    fn rows(c: &Connection) -> Vec<i64> {
        let mut s = c.prepare("SELECT x FROM t ORDER BY x").unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Jobs that share a batch stand or fall alone: a failed or panicking job's writes are rolled back to its
    /// savepoint, the others commit, and the writer carries on.
    #[tokio::test]
    async fn a_failed_job_is_rolled_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, connect) = open(dir.path());
        let (a, b, c, d) = futures::join!(
            writer.write(insert(1)),
            writer.write(|c: &Connection| -> Result<(), PortError> {
                c.execute("INSERT INTO t(x) VALUES (2)", []).unwrap();
                Err(PortError::Permanent("refused after writing".into()))
            }),
            writer.write(|c: &Connection| -> Result<(), PortError> {
                c.execute("INSERT INTO t(x) VALUES (3)", []).unwrap();
                panic!("a bug in a job");
            }),
            writer.write(insert(4)),
        );
        assert_eq!(a.unwrap(), 1);
        assert!(matches!(b, Err(PortError::Permanent(m)) if m == "refused after writing"));
        assert!(matches!(c, Err(PortError::Permanent(m)) if m.contains("panicked")));
        assert_eq!(d.unwrap(), 4);
        // A conflicting write fails alone too (x = 1 exists).
        assert!(writer.write(insert(1)).await.is_err());
        assert_eq!(writer.write(insert(5)).await.unwrap(), 5);
        assert_eq!(rows(&connect()), [1, 4, 5]);
    }

    /// A batch in which a job fails runs again with a savepoint per job: the other jobs' writes land once
    /// (not once per run), the failed job's not at all, and each job answers with what its last run saw.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_run_again_after_a_failure_applies_each_write_once() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, connect) = open(dir.path());
        let writer = Arc::new(writer);
        connect()
            .execute_batch("CREATE TABLE n(v INTEGER); INSERT INTO n VALUES (0);")
            .unwrap();
        // Holds the writer so that the jobs below queue up and share the next batch.
        let blocker = tokio::spawn({
            let writer = writer.clone();
            async move {
                writer
                    .write(|_: &Connection| -> Result<(), PortError> {
                        std::thread::sleep(Duration::from_millis(100));
                        Ok(())
                    })
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let add = |c: &Connection| -> Result<i64, PortError> {
            c.execute("UPDATE n SET v = v + 1", []).unwrap();
            Ok(c.query_row("SELECT v FROM n", [], |r| r.get(0)).unwrap())
        };
        let fail = |c: &Connection| -> Result<i64, PortError> {
            c.execute("UPDATE n SET v = v + 1000", []).unwrap();
            Err(PortError::Permanent("refused".into()))
        };
        let jobs: Vec<_> = (0..21)
            .map(|i| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    if i == 10 {
                        writer.write(fail).await
                    } else {
                        writer.write(add).await
                    }
                })
            })
            .collect();
        blocker.await.unwrap().unwrap();
        let mut seen = Vec::new();
        for (i, job) in jobs.into_iter().enumerate() {
            match job.await.unwrap() {
                Ok(v) => seen.push(v),
                Err(e) => assert!(i == 10 && matches!(e, PortError::Permanent(_)), "{e}"),
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (1..=20).collect::<Vec<i64>>());
        let total: i64 = connect()
            .query_row("SELECT v FROM n", [], |r| r.get(0))
            .unwrap();
        assert_eq!(total, 20);
    }

    /// Runs `writers` concurrent writers of `each` ~4 KiB rows through a writer with WAL sizes `sizes`;
    /// asserts that every row is there and returns the WAL's size in bytes and the checkpointer's passes.
    async fn write_load(writers: i64, each: i64, sizes: [i64; 2]) -> (u64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let connect = || {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; \
                 CREATE TABLE IF NOT EXISTS b(x INTEGER PRIMARY KEY, blob BLOB);",
            )
            .unwrap();
            c
        };
        let writer = Arc::new(Writer::start_with(connect(), connect(), sizes).unwrap());
        let tasks: Vec<_> = (0..writers)
            .map(|t| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    for i in 0..each {
                        let x = t * each + i;
                        writer
                            .write(move |c: &Connection| -> Result<(), PortError> {
                                c.execute(
                                    "INSERT INTO b(x, blob) VALUES (?1, zeroblob(3000))",
                                    [x],
                                )
                                .map_err(|e| PortError::Permanent(e.to_string()))?;
                                Ok(())
                            })
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let wal = std::fs::metadata(dir.path().join("w.db-wal"))
            .unwrap()
            .len();
        let rows: i64 = connect()
            .query_row("SELECT COUNT(*) FROM b", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, writers * each);
        (wal, writer.passes.load(Ordering::Acquire))
    }

    /// [`write_load`] through a writer that starts the WAL over past 16 frames when idle and past 64 always:
    /// the WAL stays under 2 MiB, and the checkpointer has been asked to help.
    async fn assert_wal_bounded(writers: i64, each: i64) {
        let (wal, passes) = write_load(writers, each, [16, 64]).await;
        assert!(
            wal < 2 << 20,
            "the WAL holds {wal} bytes: it did not start over"
        );
        assert!(passes > 0, "the writer finished every checkpoint alone");
    }

    /// Under a steady stream of writes the WAL starts over instead of growing with everything ever written:
    /// ~8 MB of frames go through it here (12 MB of WAL without the reset), and it never holds more than a
    /// fraction of that.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_steady_write_load_keeps_the_wal_bounded() {
        assert_wal_bounded(1, 1000).await;
    }

    /// The same with writes nearly always waiting (eight writers at once), where the checkpoint is mostly
    /// finished when the WAL is past its hard limit rather than at an idle moment.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_saturating_write_load_keeps_the_wal_bounded() {
        assert_wal_bounded(8, 150).await;
    }

    /// While the WAL is under its reset size nothing is copied into the database: a page written over and
    /// over is copied once per WAL, not once per few batches as it once was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_checkpointed_before_the_wal_is_full() {
        let (wal, passes) = write_load(4, 100, [1 << 20, 1 << 21]).await;
        assert_eq!(passes, 0);
        assert!(wal > 1 << 20, "the WAL holds every frame: {wal} bytes");
    }

    /// Many concurrent writers are answered once their write is committed: every write is visible to another
    /// connection by the time its caller hears back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_answered_write_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _) = open(dir.path());
        let writer = Arc::new(writer);
        let path = dir.path().join("w.db");
        let tasks: Vec<_> = (0..200i64)
            .map(|x| {
                let (writer, path) = (writer.clone(), path.clone());
                tokio::spawn(async move {
                    writer.write(insert(x)).await.unwrap();
                    let reader = Connection::open(&path).unwrap();
                    let seen: i64 = reader
                        .query_row("SELECT COUNT(*) FROM t WHERE x = ?1", [x], |r| r.get(0))
                        .unwrap();
                    assert_eq!(seen, 1, "write {x} answered before it was committed");
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
}
