//! The binary's long-running and inspection commands: `serve`, `local`, `inspect`. Argument handling and
//! printing only; the work is in the library (`runtime`, `executor`, the adapters).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use tokio::sync::watch;

use mlops_relay::adapters::blob::BlobStore;
use mlops_relay::adapters::servicebus::{
    SenderOptions, ServiceBusSender, ServiceBusSettings, credential_from_env,
};
use mlops_relay::adapters::{
    sqlite::Sqlite,
    workers::{AzureMl, LiveWorker},
};
use mlops_relay::approvals::Config;
use mlops_relay::azureml;
use mlops_relay::config::{ServeSettings, StateUrl};
use mlops_relay::executor::Relay;
use mlops_relay::functions::AppState;
use mlops_relay::policy::Policy;
use mlops_relay::ports::{Filter, LocalQueue, Queue, StateStore, SystemClock};
use mlops_relay::startup::{BODY_LIMIT, EXAMPLE_EVENT, EXAMPLE_POLICY};
use mlops_relay::{runtime, startup, telemetry};

use crate::Inspect;

/// The name under which `serve` keeps its approval link key in the state store when `RELAY_APPROVAL_KEY` is
/// not set.
const APPROVAL_KEY_NAME: &str = "approval-links";

/// The approval link key kept in the state store (see [`retry_transient`]: the process has already answered
/// `GET /`, and exiting on a brief outage would only have the host start it again).
async fn stored_key(store: &dyn StateStore) -> Result<Vec<u8>> {
    let fresh = random_key()?;
    retry_transient(Duration::from_millis(500), || {
        store.shared_key(APPROVAL_KEY_NAME, &fresh)
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!("cannot read or create the approval link key in the state store: {e}")
    })
}

/// Runs `op` until it succeeds or fails other than transiently, 8 attempts at most, waiting `first` and then
/// twice as long each time (at most 15 s: about a minute in all from 500 ms).
async fn retry_transient<T, F>(
    first: Duration,
    mut op: impl FnMut() -> F,
) -> Result<T, mlops_relay::ports::PortError>
where
    F: Future<Output = Result<T, mlops_relay::ports::PortError>>,
{
    let mut wait = first;
    let mut attempt = 1;
    loop {
        match op().await {
            Err(mlops_relay::ports::PortError::Transient(e)) if attempt < 8 => {
                tracing::warn!(error = %e, attempt, "state store not reached; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(15));
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn random_key() -> Result<Vec<u8>> {
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| anyhow::anyhow!("no randomness for the approval key: {e}"))?;
    Ok(key)
}

/// Local mode's approval key: made once and kept in the data directory (readable by the owner only), so
/// links survive restarts. Local processes starting together on a fresh directory agree on one key: each
/// writes its own to a file of its own and links it into place, which is atomic and never replaces, so the
/// first link wins and the others read the winner's key.
fn local_key(data_dir: &Path) -> Result<Vec<u8>> {
    let path = data_dir.join("approval.key");
    let existing = std::fs::read(&path).ok();
    if let Some(key) = &existing
        && key.len() >= 32
    {
        return Ok(key.clone());
    }
    let key = random_key()?;
    let tmp = data_dir.join(format!(
        "approval.key.{}.{:?}.tmp",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(&tmp)
        .and_then(|mut f| f.write_all(&key).and_then(|()| f.sync_all()))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    // A key file too short to be one (damaged) is replaced; otherwise the first link wins.
    let placed = if existing.is_some() {
        std::fs::rename(&tmp, &path)
    } else {
        std::fs::hard_link(&tmp, &path)
    };
    let _ = std::fs::remove_file(&tmp);
    match placed {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(&path)
            .ok()
            .filter(|k| k.len() >= 32)
            .with_context(|| format!("{} is not a usable key", path.display())),
        Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
    }
}

/// The async runtime of `serve` and `local`. Its workers leave a core to the SQLite writer thread, which is
/// busy all the time under load: with a worker per core the workers preempt it (on 2 cores, one worker gave
/// +6% throughput and -8% CPU per request under the runtime benchmark). `TOKIO_WORKER_THREADS` decides when
/// set, as for any tokio runtime.
fn runtime() -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn parse_policy(text: &str, origin: &str) -> Result<Policy> {
    Policy::parse(text).map_err(|diagnostics| {
        let lines: Vec<String> = diagnostics
            .iter()
            .map(|d| format!("{origin}:{d}"))
            .collect();
        anyhow::anyhow!("invalid policy:\n{}", lines.join("\n"))
    })
}

fn read_policy(path: &Path) -> Result<Policy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy {}", path.display()))?;
    parse_policy(&text, &path.display().to_string())
}

/// Opens the state store `RELAY_STATE_URL` names: SQLite, or a Blob container (with its SAS when the URL
/// carries one, otherwise the Entra credential the environment calls for). Fleet counters are kept for the
/// policy's budget window at least.
async fn open_store(
    url: &StateUrl,
    policy: Option<&Policy>,
) -> Result<(Arc<dyn StateStore>, Option<Arc<Sqlite>>)> {
    match url {
        StateUrl::Sqlite(path) => {
            let path = path.clone();
            let db = tokio::task::spawn_blocking(move || {
                Sqlite::open(&path).with_context(|| format!("cannot open {}", path.display()))
            })
            .await??;
            let db = Arc::new(db);
            Ok((db.clone(), Some(db)))
        }
        StateUrl::Blob(container) => {
            let env = |k: &str| std::env::var(k).ok();
            let has_sas = container.contains("sig=");
            let credential = if has_sas {
                None
            } else {
                Some(credential_from_env(env, env("AZURE_CLIENT_ID").as_deref())?)
            };
            let mut store = BlobStore::new(container, credential)?;
            if let Some(window) = policy.and_then(|p| p.budget.as_ref()).map(|b| b.window) {
                store = store.with_fleet_history(window.max(chrono::TimeDelta::days(1)));
            }
            Ok((Arc::new(store), None))
        }
    }
}

/// The worker queues: Service Bus when `ServiceBusConnection…` is set; otherwise the SQLite state database
/// itself, as a transactional outbox (its commits enqueue their actions), which then becomes the store too.
fn open_queue(
    store: Arc<dyn StateStore>,
    fallback: Option<&Arc<Sqlite>>,
    on_azure: bool,
) -> Result<(Arc<dyn StateStore>, Arc<dyn Queue>)> {
    let env = |k: &str| std::env::var(k).ok();
    let configured = env("ServiceBusConnection").is_some()
        || env("ServiceBusConnection__fullyQualifiedNamespace").is_some();
    match (configured, fallback) {
        (true, _) => {
            let settings = ServiceBusSettings::from_env(env)?;
            let sender = ServiceBusSender::from_settings(&settings, env, SenderOptions::default())?;
            tracing::info!(namespace = %sender.namespace(), "worker queues on Service Bus");
            Ok((store, Arc::new(sender)))
        }
        (false, Some(db)) if !on_azure => {
            tracing::warn!(
                "no ServiceBusConnection: actions are queued in the SQLite state database, which `serve` does not drain (the Functions host's Service Bus triggers would); `mlops-relay local` drains it"
            );
            let outbox = Arc::new(db.as_outbox());
            Ok((outbox.clone(), outbox))
        }
        _ => bail!(
            "ServiceBusConnection__fullyQualifiedNamespace: not set: with Blob state (and on Azure) the worker queues are Service Bus queues"
        ),
    }
}

/// The worker: notifications over the routes whose app settings are set; Azure ML when a subscription is
/// known (RELAY_AZUREML_SUBSCRIPTION_ID, or per environment in the policy); dry runs for the rest, and for
/// everything when RELAY_DRY_RUN is `true`.
fn live_worker(policy: &Arc<Policy>, approvals: &Arc<Config>) -> Result<Arc<LiveWorker>> {
    worker_from(policy, approvals, |k: &str| std::env::var(k).ok())
}

/// [`live_worker`] on the settings `env` gives.
fn worker_from(
    policy: &Arc<Policy>,
    approvals: &Arc<Config>,
    env: impl Fn(&str) -> Option<String> + Send + Sync + Clone + 'static,
) -> Result<Arc<LiveWorker>> {
    let env = move |k: &str| env(k).filter(|v| !v.trim().is_empty());
    // Checked in a dry run too: a bad value is found in the stamp that rehearses, not first in production.
    let workspaces = env("RELAY_AZUREML_WORKSPACE_IDS")
        .map(|ids| AzureMl::parse_workspace_ids(&ids))
        .transpose()
        .map_err(|e| anyhow::anyhow!("RELAY_AZUREML_WORKSPACE_IDS: {e}"))?
        .unwrap_or_default();
    // A stamp that rehearses another (the guide's dev and staging stamps watch the workspaces production
    // acts in): it decides and records, and every outside call is a dry run, so that one registration does
    // not ask for approval, or deploy, once per stamp.
    let dry_run = match env("RELAY_DRY_RUN").map(|v| v.trim().to_ascii_lowercase()) {
        None => false,
        Some(v) if v == "true" || v == "1" => true,
        Some(v) if v == "false" || v == "0" => false,
        Some(v) => bail!("RELAY_DRY_RUN: `{v}` is neither true nor false"),
    };
    if dry_run {
        tracing::info!("RELAY_DRY_RUN: every notification, retrain and deployment is a dry run");
        return Ok(Arc::new(LiveWorker::new(
            policy.clone(),
            approvals.clone(),
            Arc::new(|_: &str| None),
        )?));
    }
    let settings = env.clone();
    let mut worker = LiveWorker::new(
        policy.clone(),
        approvals.clone(),
        Arc::new(move |k: &str| settings(k)),
    )?;
    let subscription = env("RELAY_AZUREML_SUBSCRIPTION_ID");
    let configured = subscription.is_some()
        || !workspaces.is_empty()
        || policy
            .spec
            .environments
            .values()
            .any(|e| e.subscription.is_some());
    if configured {
        let client_id = env("AZURE_CLIENT_ID");
        let credential = credential_from_env(env.clone(), client_id.as_deref())?;
        let base = env("RELAY_ARM_ENDPOINT").unwrap_or_else(|| azureml::ARM.to_string());
        let client = azureml::client::Client::new(&base, credential)?;
        tracing::info!(%base, "retrain and deploy actions call Azure ML");
        worker = worker.with_azureml(AzureMl {
            client,
            subscription,
            resource_group: env("RELAY_AZUREML_RESOURCE_GROUP"),
            workspaces,
        });
        // Not fatal: a stamp may hold environments it never acts in; said at start rather than found in
        // the dead letters later.
        for why in worker.unplaced_environments() {
            tracing::warn!("{why}: its retrain and deploy actions will be dead-lettered");
        }
    } else {
        tracing::info!(
            "retrain and deploy actions are dry runs: set RELAY_AZUREML_SUBSCRIPTION_ID (and RELAY_AZUREML_RESOURCE_GROUP) to call Azure ML"
        );
    }
    Ok(Arc::new(worker))
}

fn relay(policy: Arc<Policy>, store: Arc<dyn StateStore>, queue: Arc<dyn Queue>) -> Relay {
    Relay {
        policy,
        store,
        queue,
        clock: Arc::new(SystemClock),
    }
}

/// `serve`: the custom handler.
pub fn serve(listen: Option<SocketAddr>) -> Result<ExitCode> {
    let env = |k: &str| std::env::var(k).ok();
    telemetry::init(telemetry::LogFormat::detect(env));
    let settings = match (ServeSettings::from_env(env), listen) {
        (Ok(s), _) => s,
        // By hand with --listen: the port setting is not needed; the rest still applies.
        (Err(e), Some(addr)) if e.setting == "FUNCTIONS_CUSTOMHANDLER_PORT" => {
            let port = addr.port().to_string();
            ServeSettings::from_env(|k| {
                if k == "FUNCTIONS_CUSTOMHANDLER_PORT" {
                    Some(port.clone())
                } else {
                    env(k)
                }
            })?
        }
        (Err(e), _) => return Err(e.into()),
    };
    let addr = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], settings.port)));
    let rt = runtime()?;
    rt.block_on(async move {
        // Bind and answer GET / first: the host polls it from the moment it starts us. The other routes
        // wait for the store (see runtime::serve_when_ready).
        let listener = runtime::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (ready_tx, ready_rx) = watch::channel(None);
        let server = tokio::spawn(runtime::serve_when_ready(listener, ready_rx, runtime::shutdown_signal()));
        println!("mlops-relay listening on http://{local_addr}");
        let _ = std::io::stdout().flush();
        // A policy that does not parse stops the process here with its diagnostics, as a store that cannot be
        // opened does; the host then restarts it and logs why.
        let policy = read_policy(&settings.policy)?;
        let (store, db) = open_store(&settings.state, Some(&policy)).await?;
        let (store, queue) = open_queue(store, db.as_ref(), settings.on_azure)?;
        let relay = relay(Arc::new(policy), store, queue);
        // Where people reach the page: RELAY_PUBLIC_URL / the site's host name, else the policy's
        // `[approvals] base_url`, else this listener.
        let public_url = settings
            .public_url
            .clone()
            .or_else(|| relay.policy.spec.approvals.base_url.clone())
            .unwrap_or_else(|| format!("http://{local_addr}"));
        // Every instance must sign with the same key, across restarts: the setting's, else the store's.
        let key = match settings.approval_key.clone() {
            Some(k) => k,
            None => stored_key(relay.store.as_ref()).await?,
        };
        let approvals = Arc::new(Config { key, public_url });
        let worker = live_worker(&relay.policy, &approvals)?;
        tracing::info!(addr = %local_addr, policy = %relay.policy.hash, state = ?settings.state, "mlops-relay serve: ready");
        let state = AppState { relay, worker, body_limit: BODY_LIMIT, approvals };
        let _ = ready_tx.send(Some(startup::router(state)));
        server.await.context("the server task failed")??;
        Ok(ExitCode::SUCCESS)
    })
}

/// `local`: the standalone relay on embedded backends.
pub fn local(
    policy: Option<PathBuf>,
    data_dir: PathBuf,
    listen: SocketAddr,
    message_lock: Duration,
) -> Result<ExitCode> {
    let lock = chrono::TimeDelta::from_std(message_lock).context("--message-lock is too long")?;
    telemetry::init(telemetry::LogFormat::detect(|k| std::env::var(k).ok()));
    let (policy, policy_origin) = match &policy {
        Some(path) => (read_policy(path)?, path.display().to_string()),
        None => (
            parse_policy(EXAMPLE_POLICY, "examples/policy.toml")?,
            "embedded examples/policy.toml".to_string(),
        ),
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let example = data_dir.join("example-event.json");
    std::fs::write(&example, EXAMPLE_EVENT)
        .with_context(|| format!("cannot write {}", example.display()))?;
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = runtime::bind(listen).await?;
        let addr = listener.local_addr()?;
        // RELAY_STATE_URL may put state elsewhere (a Blob container); the drained queues stay local.
        let state_url = std::env::var("RELAY_STATE_URL").ok();
        let url = match &state_url {
            Some(u) => StateUrl::parse(u)?,
            None => StateUrl::in_data_dir(&data_dir),
        };
        let (store, db) = open_store(&url, Some(&policy)).await?;
        // SQLite state is the queue too (a transactional outbox); with Blob state the queues get their own file.
        let (store, db): (Arc<dyn StateStore>, _) = match db {
            Some(db) => {
                let outbox = Arc::new(db.as_outbox());
                (outbox.clone(), outbox)
            }
            None => (store, Arc::new(Sqlite::open(data_dir.join("queues.db"))?)),
        };
        let relay = relay(Arc::new(policy), store, db.clone());
        // RELAY_PUBLIC_URL when people reach this relay by another address (a proxy, a tunnel); not the
        // policy's base_url, which names the deployed relay.
        let public_url = mlops_relay::config::public_url(|k| std::env::var(k).ok())
            .unwrap_or_else(|| format!("http://{addr}"));
        let approvals = Arc::new(Config { key: local_key(&data_dir)?, public_url });
        let worker = live_worker(&relay.policy, &approvals)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let drainer = tokio::spawn(runtime::drain_loop(
            relay.clone(),
            db.clone() as Arc<dyn LocalQueue>,
            worker.clone(),
            Duration::from_millis(200),
            lock,
            stop_rx.clone(),
        ));
        let timer = tokio::spawn(runtime::schedule_loop(relay.clone(), stop_rx));
        println!("mlops-relay local: listening on http://{addr}");
        println!("  policy  {policy_origin} ({})", relay.policy.hash);
        println!("  state   {}", match &url { StateUrl::Sqlite(p) => p.display().to_string(), StateUrl::Blob(c) => c.split('?').next().unwrap_or(c).to_string() });
        // With RELAY_STATE_URL set, inspect in this shell reads that same store without a flag (and a URL that
        // may carry a SAS token is not printed).
        let inspect_at = match state_url {
            Some(_) => String::new(),
            None => format!(" --data-dir {}", data_dir.display()),
        };
        println!("  outside calls are dry-run unless a route's app setting holds its URL or key: each request is logged and recorded (mlops-relay inspect effects{inspect_at})");
        println!();
        println!("Post an example Azure ML event:");
        println!(
            "  curl -sS -X POST http://{addr}/api/events -H 'content-type: application/json' -H 'aeg-event-type: Notification' --data @{}",
            example.display()
        );
        println!("Then: mlops-relay inspect actions{inspect_at}");
        let _ = std::io::stdout().flush();
        let state = AppState { relay, worker, body_limit: BODY_LIMIT, approvals };
        runtime::serve(listener, state, runtime::shutdown_signal()).await?;
        let _ = stop_tx.send(true);
        let _ = tokio::join!(drainer, timer);
        Ok(ExitCode::SUCCESS)
    })
}

/// `inspect`: read what the relay recorded.
pub fn inspect(
    what: Inspect,
    url: &StateUrl,
    model: Option<String>,
    json: bool,
) -> Result<ExitCode> {
    if let StateUrl::Sqlite(path) = url
        && !path.exists()
    {
        bail!(
            "no relay state at {} (run `mlops-relay local` first, or pass --data-dir)",
            path.display()
        );
    }
    // Queue counts and dead letters are not per model: a filter that would be ignored is refused instead.
    if model.is_some() && matches!(what, Inspect::Queues | Inspect::DeadLetters) {
        bail!(
            "--model does not apply to `inspect {}`",
            clap::ValueEnum::to_possible_value(&what)
                .map(|v| v.get_name().to_string())
                .unwrap_or_default()
        );
    }
    let filter = Filter { model, limit: None };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    rt.block_on(async {
        let (store, db) = open_store(url, None).await?;
        match what {
            Inspect::Decisions => {
                let records = store.decisions(&filter).await?;
                for r in &records {
                    let d = &r.decision;
                    if json {
                        writeln!(out, "{}", serde_json::to_string(r)?)?;
                    } else {
                        writeln!(out, "#{:<5} {}  {:<16} {}", r.seq, d.at.format("%Y-%m-%d %H:%M:%SZ"), d.signal.event_id, d.explanation())?;
                    }
                }
                let verified = store.verify_chain().await;
                if !json {
                    match &verified {
                        Ok(n) => writeln!(out, "{} record(s) shown; hash chain verified over all {n}", records.len())?,
                        Err(e) => writeln!(out, "HASH CHAIN BROKEN: {e}")?,
                    }
                }
                if let Err(e) = verified {
                    out.flush()?;
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(1));
                }
            }
            Inspect::Actions => {
                for e in store.actions(&filter).await? {
                    let a = &e.action;
                    if json {
                        let line = json!({
                            "action_id": a.action_id, "kind": a.kind, "model": a.model, "version": a.version,
                            "event_id": e.event_id, "decision_id": e.decision_id, "status": e.status,
                            "recorded_at": e.recorded_at, "reason": a.reason,
                        });
                        writeln!(out, "{line}")?;
                    } else {
                        writeln!(
                            out,
                            "{:<48} {:<8} {:<16} {:<28} {}",
                            a.action_id.as_str(),
                            e.status.as_str(),
                            a.kind.as_str(),
                            format!("{}{}", a.model.as_deref().unwrap_or("-"), a.version.as_deref().map(|v| format!(":{v}")).unwrap_or_default()),
                            a.reason
                        )?;
                    }
                }
            }
            Inspect::Queues => {
                let Some(db) = &db else {
                    bail!("the worker queues of a Blob-state relay are Service Bus queues: see their metrics in the Azure portal or `az servicebus queue show`");
                };
                let depths = db.depths().await?;
                // Every worker queue, empty or not, in JSON as in text.
                let counts = mlops_relay::ports::QUEUES.map(|name| {
                    let (a, c) = depths.iter().find(|d| d.0 == name).map_or((0, 0), |d| (d.1, d.2));
                    (name, a, c)
                });
                if json {
                    for (queue, active, completed) in counts {
                        writeln!(out, "{}", json!({ "queue": queue, "active": active, "completed": completed }))?;
                    }
                } else {
                    writeln!(out, "{:<20} {:>8} {:>10}", "queue", "active", "completed")?;
                    for (name, a, c) in counts {
                        writeln!(out, "{name:<20} {a:>8} {c:>10}")?;
                    }
                    writeln!(out, "dead letters: {}", store.dead_letters().await?.len())?;
                }
            }
            Inspect::Effects => {
                for e in store.effects(&filter).await? {
                    if json {
                        writeln!(out, "{}", serde_json::to_string(&e)?)?;
                    } else {
                        writeln!(out, "{}  {:<48} {:<8} {}", e.at.format("%Y-%m-%d %H:%M:%SZ"), e.action_id, e.mode, e.outcome)?;
                    }
                }
            }
            Inspect::DeadLetters => {
                for l in store.dead_letters().await? {
                    if json {
                        writeln!(out, "{}", serde_json::to_string(&l)?)?;
                    } else {
                        writeln!(out, "{}  {:<12} {}", l.at.format("%Y-%m-%d %H:%M:%SZ"), l.source, l.reason)?;
                    }
                }
            }
        }
        out.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An approval request as the example policy records it (route `ds-team`, whose webhook is
    /// TEAMS_DS_WEBHOOK_URL).
    fn approval_request() -> mlops_relay::ports::LedgerEntry {
        serde_json::from_value(json!({
            "action": {
                "action_id": "request_approval-380262e1863f0f628d092c495fd79727",
                "kind": "request_approval", "model": "model-101", "version": "101",
                "reason": "registered in dev: v101 needs 1 of 1 approvers",
                "params": { "request_approval": {
                    "environment": "staging", "approvers": ["bob@contoso.example"], "required": 1,
                    "requester": "alice@contoso.example", "expires_at": "2026-12-08T07:09:02Z",
                    "route": "ds-team", "tags": {}
                } }
            },
            "event_id": "reg-101", "signal_key": "model_registered|mlw-dev|model-101:101",
            "decision_id": "a338aa1c5f0fa9997010fe1baf59267a", "traceparent": null,
            "status": "recorded", "recorded_at": "2026-12-05T07:09:02Z"
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn start_up_retries_a_transient_store_failure_and_not_a_permanent_one() {
        use mlops_relay::ports::PortError;
        let calls = std::sync::atomic::AtomicU32::new(0);
        let got = retry_transient(Duration::from_millis(1), || {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                match n {
                    0 | 1 => Err(PortError::Transient("503".into())),
                    _ => Ok(vec![1u8; 32]),
                }
            }
        })
        .await;
        assert_eq!(got.unwrap(), vec![1u8; 32]);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);

        let calls = std::sync::atomic::AtomicU32::new(0);
        let got: Result<(), _> = retry_transient(Duration::from_millis(1), || {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err(PortError::Permanent("403".into())) }
        })
        .await;
        assert!(got.is_err());
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "not retried"
        );
        let got: Result<(), _> = retry_transient(Duration::from_millis(1), || async {
            Err(PortError::Transient("down".into()))
        })
        .await;
        assert!(
            matches!(got, Err(PortError::Transient(_))),
            "gives up after its attempts"
        );
    }

    #[tokio::test]
    async fn relay_dry_run_makes_every_outside_call_a_dry_run() {
        use mlops_relay::ports::Worker as _;
        let policy = Arc::new(parse_policy(EXAMPLE_POLICY, "examples/policy.toml").unwrap());
        let approvals = Arc::new(Config {
            key: vec![7; 32],
            public_url: "https://relay.example".into(),
        });
        let settings = |dry: Option<&'static str>| {
            move |k: &str| match k {
                // Nothing listens there: a live call fails.
                "TEAMS_DS_WEBHOOK_URL" => Some("http://127.0.0.1:9/teams".to_string()),
                "RELAY_AZUREML_SUBSCRIPTION_ID" => Some("sub-1".to_string()),
                "RELAY_DRY_RUN" => dry.map(str::to_string),
                _ => None,
            }
        };
        let now = chrono::Utc::now();
        let dry = worker_from(&policy, &approvals, settings(Some("TRUE"))).unwrap();
        let effect = dry.execute(&approval_request(), 1, now).await.unwrap();
        assert_eq!(effect.mode, "dry_run", "{}", effect.outcome);
        assert!(dry.unplaced_environments().is_empty(), "no Azure ML at all");

        let live = worker_from(&policy, &approvals, settings(Some("false"))).unwrap();
        let tried = live.execute(&approval_request(), 1, now).await;
        assert!(
            tried.as_ref().is_err() || tried.as_ref().is_ok_and(|e| e.mode != "dry_run"),
            "{tried:?}"
        );
        let Err(e) = worker_from(&policy, &approvals, settings(Some("maybe"))) else {
            panic!("RELAY_DRY_RUN=maybe accepted");
        };
        assert!(e.to_string().contains("RELAY_DRY_RUN"), "{e}");
    }

    #[test]
    fn processes_starting_together_agree_on_one_approval_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| local_key(dir.path()).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| k == &keys[0] && k.len() == 32));
        assert_eq!(
            std::fs::read(dir.path().join("approval.key")).unwrap(),
            keys[0]
        );
        assert_eq!(
            local_key(dir.path()).unwrap(),
            keys[0],
            "kept across restarts"
        );
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files left");
    }

    #[test]
    fn a_damaged_key_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("approval.key"), b"short").unwrap();
        let key = local_key(dir.path()).unwrap();
        assert_eq!(key.len(), 32);
        assert_eq!(std::fs::read(dir.path().join("approval.key")).unwrap(), key);
    }
}
