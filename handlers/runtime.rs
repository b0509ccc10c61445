//! Running the relay: the HTTP server shared by `serve` and `local`, graceful shutdown, and local mode's
//! schedule runner and queue drainer (what the Functions host's timer and Service Bus triggers do on Azure).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::AppError;
use crate::executor::Relay;
use crate::functions::AppState;
use crate::ports::{DeadLetter, LocalQueue, PortError, QUEUES, Received, Worker};
use crate::startup::router;

/// Deliveries after which a queue message is dead-lettered, as Service Bus's default `MaxDeliveryCount`.
pub const MAX_DELIVERIES: u32 = 10;

/// How long a received message stays hidden from other drainers by default (Service Bus's default
/// `LockDuration`, one minute): a drainer that dies holding it releases it when this runs out.
pub const LOCK: TimeDelta = TimeDelta::seconds(60);

/// Resolves on SIGTERM (how the Functions host and systemd stop us) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight work (Ctrl-C again to stop at once)");
    // Our SIGINT handler stays installed: without this, a second Ctrl-C would do nothing while a long
    // deployment finishes. Stopping at once is as safe as a crash: unfinished work is redelivered.
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("mlops-relay: second Ctrl-C, stopping now");
            std::process::exit(130);
        }
    });
}

/// Serves the router on `listener` until `shutdown` resolves; in-flight requests finish first.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves `GET /` at once and every other route as soon as `ready` holds the full router: the Functions host
/// polls `GET /` from the moment it starts the process, and opening the state store (creating a database,
/// reaching Blob Storage) need not delay that answer. Requests that arrive earlier wait for the router; if
/// start-up fails instead, the process exits with the error and the host restarts it.
pub async fn serve_when_ready(
    listener: TcpListener,
    ready: watch::Receiver<Option<axum::Router>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::extract::Request;
    use axum::response::IntoResponse;
    use tower::ServiceExt as _;

    let early = axum::Router::new()
        .route("/", axum::routing::get(crate::functions::ready))
        .fallback(move |request: Request| {
            let mut ready = ready.clone();
            async move {
                let router = match ready.wait_for(Option::is_some).await {
                    Ok(r) => r.clone().expect("checked by wait_for"),
                    Err(_) => {
                        return (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "mlops-relay is stopping",
                        )
                            .into_response();
                    }
                };
                match router.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        });
    axum::serve(listener, early)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr`, with a message that says what to do when the port is taken.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr}: {e} (is another relay running? choose another with --listen)"
        )
    })
}

/// What one drain pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Messages carried out and completed.
    pub completed: usize,
    /// Messages that failed transiently and will be redelivered after their lock expires.
    pub retrying: usize,
    /// Messages dead-lettered (permanent failure or too many deliveries).
    pub dead_lettered: usize,
    /// Messages whose lock expired (before their turn, or while carried out) and that another drainer received
    /// meanwhile: left to it.
    pub taken_over: usize,
}

/// Runs `work` on a received message, renewing its lock every half lock period until `work` ends. `None` when
/// a renewal finds the lock lost (it ran out while a renewal could not get through, and another drainer has
/// received the message since): `work` is stopped there, so that the new receiver is the only one carrying the
/// message out from then on, and this one neither completes nor dead-letters it.
async fn keep_locked<T>(
    relay: &Relay,
    queue: &dyn LocalQueue,
    name: &str,
    received: &Received,
    lock: TimeDelta,
    work: impl Future<Output = T>,
) -> Option<T> {
    let every = (lock / 2)
        .to_std()
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_millis(100));
    let mut renewals = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return Some(done),
            _ = renewals.tick() => {
                match queue.renew(name, received, relay.clock.now() + lock).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(message_id = %received.message.message_id, "lock lost while carrying the message out; stopped and left to its new receiver");
                        return None;
                    }
                    // Still ours until the lock runs out: the next renewal may get through.
                    Err(e) => tracing::warn!(message_id = %received.message.message_id, error = %e, "lock not renewed"),
                }
            }
        }
    }
}

/// One pass over every queue: receive, execute, record the effect, complete. The same contract as the
/// Service Bus trigger: a transient failure leaves the message to be redelivered; a permanent one, or the
/// `MAX_DELIVERIES`th delivery, dead-letters it.
pub async fn drain_once(
    relay: &Relay,
    queue: &dyn LocalQueue,
    worker: &dyn Worker,
    batch: usize,
    lock: TimeDelta,
) -> Result<DrainReport, PortError> {
    drain_pass(relay, queue, worker, batch, lock, None).await
}

/// [`drain_once`], ending early once `stop` turns true: the message being carried out finishes, the others
/// received with it are left to their locks running out (a deployment can take minutes each, and shutting
/// down must not wait for the whole batch).
async fn drain_pass(
    relay: &Relay,
    queue: &dyn LocalQueue,
    worker: &dyn Worker,
    batch: usize,
    lock: TimeDelta,
    stop: Option<&watch::Receiver<bool>>,
) -> Result<DrainReport, PortError> {
    let stopping = || stop.is_some_and(|s| *s.borrow());
    let mut report = DrainReport::default();
    for name in QUEUES {
        if stopping() {
            break;
        }
        let now = relay.clock.now();
        for received in queue.receive(name, batch, lock, now).await? {
            if stopping() {
                tracing::info!(message_id = %received.message.message_id, "stopping: left to be redelivered when its lock runs out");
                continue;
            }
            let message = &received.message;
            // Poison, or past its deliveries: kept as a dead letter and taken off the queue.
            let give_up = async |reason: String| -> Result<(), PortError> {
                let letter = DeadLetter {
                    at: relay.clock.now(),
                    source: format!("queue:{name}"),
                    reason,
                    body: message.body.clone(),
                };
                relay.store.dead_letter(&letter).await?;
                queue
                    .complete(name, &message.message_id, relay.clock.now())
                    .await
            };
            // Past the limit before any attempt: every earlier delivery ended without an outcome (the drainer
            // died carrying it out, e.g. killed by the message itself), so another would too.
            if received.delivery_count > MAX_DELIVERIES {
                give_up(format!(
                    "delivered {} times without an outcome (the drainer stopped while carrying it out each time)",
                    received.delivery_count - 1
                ))
                .await?;
                report.dead_lettered += 1;
                continue;
            }
            let entry = match serde_json::from_str(&message.body) {
                Ok(e) => e,
                Err(e) => {
                    give_up(format!("not a ledger entry: {e}")).await?;
                    report.dead_lettered += 1;
                    continue;
                }
            };
            // Messages of a batch wait for the ones before them, and a deployment can take minutes: each is
            // locked again when its turn comes, and kept locked while it runs, so that another drainer sharing
            // the store does not take it over and carry it out a second time.
            if !queue
                .renew(name, &received, relay.clock.now() + lock)
                .await?
            {
                tracing::info!(message_id = %message.message_id, "lock lost while waiting; left to its new receiver");
                report.taken_over += 1;
                continue;
            }
            let work = async {
                let (effect, _) =
                    crate::functions::execute_once(relay, worker, &entry, received.delivery_count)
                        .await?;
                let why = |m: &str| format!("effect recorded, follow-up not decided: {m}");
                match crate::functions::follow_up(relay, &effect).await {
                    Ok(_) => Ok(()),
                    Err(AppError::Unavailable(m)) => Err(PortError::Transient(why(&m))),
                    Err(AppError::Internal(m)) => Err(PortError::Permanent(why(&m))),
                    Err(e) => Err(PortError::Permanent(why(&e.to_string()))),
                }
            };
            match keep_locked(relay, queue, name, &received, lock, work).await {
                None => report.taken_over += 1,
                Some(Ok(())) => {
                    queue
                        .complete(name, &message.message_id, relay.clock.now())
                        .await?;
                    report.completed += 1;
                }
                Some(Err(PortError::Transient(reason)))
                    if received.delivery_count < MAX_DELIVERIES =>
                {
                    tracing::warn!(message_id = %message.message_id, delivery = received.delivery_count, %reason, "will be redelivered");
                    report.retrying += 1;
                }
                Some(Err(e)) => {
                    give_up(format!("after {} deliveries: {e}", received.delivery_count)).await?;
                    report.dead_lettered += 1;
                }
            }
        }
    }
    Ok(report)
}

/// Drains the queues until `stop` turns true: at once when work was found, otherwise every `idle`.
pub async fn drain_loop(
    relay: Relay,
    queue: Arc<dyn LocalQueue>,
    worker: Arc<dyn Worker>,
    idle: Duration,
    lock: TimeDelta,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // One message a queue a pass: a message received in a batch waits its turn under a lock that may run
        // out (another drainer then receives it, and each receive counts as a delivery towards
        // MAX_DELIVERIES without an attempt), and one left by a stopping drainer counts too.
        let pass = drain_pass(
            &relay,
            queue.as_ref(),
            worker.as_ref(),
            1,
            lock,
            Some(&stop),
        );
        let pause = match pass.await {
            Ok(r) if r.completed + r.dead_lettered > 0 => Duration::ZERO,
            Ok(_) => idle,
            Err(e) => {
                tracing::warn!(error = %e, "queue drain failed; retrying");
                idle * 10
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// Local mode's minute timer: a tick at start-up (catch-up after downtime) and at the top of every minute.
pub async fn schedule_loop(relay: Relay, mut stop: watch::Receiver<bool>) {
    loop {
        match relay.tick().await {
            Ok(outcomes) => {
                for o in outcomes.iter().filter(|o| !o.duplicate()) {
                    tracing::info!(schedule = %o.signal_key, "{}", o.summary());
                }
            }
            Err(e) => tracing::warn!(error = %e, "schedule tick failed; next minute will catch up"),
        }
        tokio::select! {
            _ = tokio::time::sleep(until_next_minute(relay.clock.now())) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// Time until the next whole minute (plus a little, so the tick lands after the due instant).
pub fn until_next_minute(now: DateTime<Utc>) -> Duration {
    let into = Duration::from_secs(now.second() as u64)
        + Duration::from_nanos(now.nanosecond() as u64 % 1_000_000_000);
    Duration::from_secs(60).saturating_sub(into) + Duration::from_millis(50)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_minute() {
        let t = DateTime::parse_from_rfc3339("2026-11-23T10:00:45.500Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(until_next_minute(t), Duration::from_millis(14_550));
        let t = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(until_next_minute(t), Duration::from_millis(60_050));
    }
}
