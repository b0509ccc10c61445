//! The ports: small traits between the executor and the outside world. Adapters in `adapters/` implement
//! them (SQLite for local mode and tests; Blob Storage and Service Bus on Azure). Every guarantee the
//! relay gives under concurrency comes from these traits' conditional writes, never from an in-memory lock:
//! several processes may share one store.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::Signal;
use crate::policy::{Action, ActionKind, Decision, StateView};

/// Why a store or queue call failed. `Transient` failures are retried by the caller's trigger (the function
/// returns 5xx); `Permanent` ones would fail again the same way; `Rejected` is a queue refusing one message
/// for what it holds, while it takes others.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Unreachable, busy, throttled: try again later.
    #[error("transient: {0}")]
    Transient(String),
    /// Misconfigured or corrupt: retrying will not help.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The queue refused this message (too large, a property it does not accept) and would refuse it again;
    /// other messages go through. Sending it again cannot help, and retrying the trigger would only delay
    /// the message's dead letter.
    #[error("rejected: {0}")]
    Rejected(String),
}

impl PortError {
    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, PortError::Transient(_))
    }
}

/// Where an action is carried out: the Service Bus queue (or local queue) per worker.
pub fn queue_for(kind: ActionKind) -> &'static str {
    match kind {
        ActionKind::Retrain => "retrain-requests",
        ActionKind::Deploy => "deploy-requests",
        ActionKind::RequestApproval
        | ActionKind::Page
        | ActionKind::ResolvePage
        | ActionKind::Notify => "notifications",
    }
}

/// Every queue the relay uses.
pub const QUEUES: [&str; 3] = ["retrain-requests", "deploy-requests", "notifications"];

/// Ledger status of an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// Recorded, not yet confirmed enqueued (a crash here is healed on redelivery).
    Recorded,
    /// Enqueued.
    Sent,
    /// Refused by the queue ([`PortError::Rejected`]): dead-lettered, never carried out.
    Rejected,
}

impl ActionStatus {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Recorded => "recorded",
            ActionStatus::Sent => "sent",
            ActionStatus::Rejected => "rejected",
        }
    }

    /// The status named `name` ([`ActionStatus::as_str`]); an unknown name reads as recorded, the status
    /// that gets an entry sent again.
    pub fn parse(name: &str) -> ActionStatus {
        match name {
            "sent" => ActionStatus::Sent,
            "rejected" => ActionStatus::Rejected,
            _ => ActionStatus::Recorded,
        }
    }
}

/// One ledger entry: an action under its deterministic id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The action (its id is the ledger key and the queue `MessageId`).
    pub action: Action,
    /// Source event id.
    pub event_id: String,
    /// Dedupe key of the signal that decided it.
    pub signal_key: String,
    /// Decision that produced it.
    pub decision_id: String,
    /// W3C trace context of the source event, when it had one.
    pub traceparent: Option<String>,
    /// Status.
    pub status: ActionStatus,
    /// When recorded.
    pub recorded_at: DateTime<Utc>,
}

impl LedgerEntry {
    /// A new entry for one of a decision's actions, as every store records it before sending (`decision_id`:
    /// [`Decision::decision_id`], computed once for all of its actions).
    pub fn recorded(
        action: &Action,
        signal: &Signal,
        decision_id: &str,
        now: DateTime<Utc>,
    ) -> LedgerEntry {
        LedgerEntry {
            action: action.clone(),
            event_id: signal.event_id.clone(),
            signal_key: signal.key.clone(),
            decision_id: decision_id.to_string(),
            traceparent: signal.traceparent.clone(),
            status: ActionStatus::Recorded,
            recorded_at: now,
        }
    }
}

/// The result of [`StateStore::commit`].
#[derive(Debug, Clone)]
pub struct Commit {
    /// The decision made now, or `None` when the signal had already been decided (a duplicate).
    pub decision: Option<Decision>,
    /// Ledger entries of this signal not yet confirmed sent: the new ones, or leftovers of a crash between
    /// recording and enqueueing that this redelivery now heals.
    pub to_send: Vec<LedgerEntry>,
    /// Action ids the store enqueued itself, in the same transaction (a store that is also the worker queue:
    /// a transactional outbox); these are already marked sent.
    pub enqueued: Vec<(String, Sent)>,
}

/// One record of the decision log, hash-chained to the previous one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Position in the log, from 1.
    pub seq: u64,
    /// The decision.
    pub decision: Decision,
    /// Hash of the previous record (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and the decision's canonical JSON.
    pub hash: String,
}

/// A message that could not be processed and will not be retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// When.
    pub at: DateTime<Utc>,
    /// Function or route that received it.
    pub source: String,
    /// Why.
    pub reason: String,
    /// The message as received.
    pub body: String,
}

/// Filter for inspection queries.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this model.
    pub model: Option<String>,
    /// At most this many, newest last.
    pub limit: Option<usize>,
}

/// The decision function a store runs inside its commit: decide() over the store's view of state. Owned
/// (`'static`), so that a store may run it on its writer thread.
pub type Decider = dyn for<'v> Fn(&'v (dyn StateView + 'v)) -> Decision + Send + Sync;

/// Durable state: ledger, decision log, cooldown/budget/approval state, schedule cursors, dead letters.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync {
    /// Atomically: if `signal` was already decided, returns its unsent ledger entries; otherwise runs
    /// `decide` against the stored state, appends the decision to the log, records each action in the ledger
    /// with a conditional create (an id already present is left as is), and applies the state changes.
    async fn commit(
        &self,
        signal: &Signal,
        now: DateTime<Utc>,
        dedupe_window: chrono::TimeDelta,
        decide: std::sync::Arc<Decider>,
    ) -> Result<Commit, PortError>;

    /// Ledger entries recorded before `recorded_before` and still not marked sent, in (`recorded_at`,
    /// action id) order, after `after` when given (the last entry of the previous page), at most `limit`: what
    /// a failure between recording and enqueueing left behind, when the signal that would heal it (its
    /// redelivery) may never come, as for a schedule instant whose tick failed.
    async fn unsent(
        &self,
        recorded_before: DateTime<Utc>,
        after: Option<&LedgerEntry>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, PortError>;

    /// Settles a recorded action: enqueued ([`ActionStatus::Sent`]) or refused by the queue
    /// ([`ActionStatus::Rejected`]). Either way it is no longer [`StateStore::unsent`]. An entry already
    /// settled keeps its status.
    async fn settle(
        &self,
        action_id: &str,
        status: ActionStatus,
        at: DateTime<Utc>,
    ) -> Result<(), PortError>;

    /// The last due instant a schedule fired for.
    async fn schedule_cursor(&self, name: &str) -> Result<Option<DateTime<Utc>>, PortError>;

    /// Moves a schedule's cursor from `from` to `to` if nobody moved it meanwhile; false if somebody did.
    async fn advance_schedule(
        &self,
        name: &str,
        from: Option<DateTime<Utc>>,
        to: DateTime<Utc>,
    ) -> Result<bool, PortError>;

    /// Records a message that will not be retried.
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), PortError>;

    /// Ledger entries, oldest first.
    async fn actions(&self, filter: &Filter) -> Result<Vec<LedgerEntry>, PortError>;

    /// One ledger entry, by its action id: what the approval page reads for its request, so a point read
    /// rather than a listing (which grows with every action ever recorded).
    async fn entry(&self, action_id: &str) -> Result<Option<LedgerEntry>, PortError>;

    /// Decision log records, oldest first.
    async fn decisions(&self, filter: &Filter) -> Result<Vec<DecisionRecord>, PortError>;

    /// Recomputes the decision log's hash chain; returns the number of records, or where it breaks.
    async fn verify_chain(&self) -> Result<u64, PortError>;

    /// Dead letters, oldest first.
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, PortError>;

    /// Records what a worker did (or, dry-run, would have done) for an action: one record per action id.
    async fn record_effect(&self, effect: &Effect) -> Result<(), PortError>;

    /// The effect recorded for an action, if any: what a redelivered message checks before doing the work
    /// again, so a point read rather than a listing.
    async fn effect(&self, action_id: &str) -> Result<Option<Effect>, PortError>;

    /// Effects, oldest first.
    async fn effects(&self, filter: &Filter) -> Result<Vec<Effect>, PortError>;

    /// The secret kept in the store under `name` (the key that signs approval links), created as `fresh`
    /// when the store has none: every process sharing the store gets the same bytes, whichever created them,
    /// and keeps getting them after restarts.
    async fn shared_key(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, PortError>;
}

/// What a worker did for an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Effect {
    /// The action.
    pub action_id: String,
    /// Its model.
    pub model: Option<String>,
    /// `dry_run` (request recorded, not sent) or `live`.
    pub mode: String,
    /// The request made or that would have been made.
    pub request: serde_json::Value,
    /// The outcome, in words.
    pub outcome: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Events the work produced, to be decided next (e.g. `MlopsRelay.DeploymentCompleted` with the smoke
    /// test's verdict, which opens the next gate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub follow_up: Vec<serde_json::Value>,
}

/// The time, for everything that is not the pure core (which is handed `now`).
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A message for a worker queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundMessage {
    /// Queue name.
    pub queue: String,
    /// Service Bus `MessageId`: the action id, so the queue's duplicate detection absorbs resends.
    pub message_id: String,
    /// `CorrelationId`: the source event id.
    pub correlation_id: String,
    /// `SessionId`: the model name (per-model order on session queues).
    pub session_id: Option<String>,
    /// `Label`/`Subject`: the action kind.
    pub label: String,
    /// W3C trace context.
    pub traceparent: Option<String>,
    /// JSON body: the ledger entry.
    pub body: String,
}

impl OutboundMessage {
    /// The message that carries a ledger entry to its worker.
    pub fn for_entry(entry: &LedgerEntry) -> OutboundMessage {
        let body = serde_json::to_string(entry).expect("ledger entries serialise");
        OutboundMessage::for_entry_with_body(entry, body)
    }

    /// [`OutboundMessage::for_entry`] with the entry's JSON already at hand (the ledger stores the same text).
    pub fn for_entry_with_body(entry: &LedgerEntry, body: String) -> OutboundMessage {
        OutboundMessage {
            queue: queue_for(entry.action.kind).to_string(),
            message_id: entry.action.action_id.to_string(),
            correlation_id: entry.event_id.clone(),
            session_id: entry.action.model.clone(),
            label: entry.action.kind.as_str().to_string(),
            traceparent: entry.traceparent.clone(),
            body,
        }
    }
}

/// What happened to a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Enqueued now.
    New,
    /// A message with this id was already enqueued (duplicate detection).
    Duplicate,
}

/// A message taken from a queue by the local drainer.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The message.
    pub message: OutboundMessage,
    /// How many times it was delivered, this time included.
    pub delivery_count: u32,
}

/// Worker queues.
#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// Enqueues a message; a message id seen before is a duplicate and is not enqueued twice.
    async fn send(&self, message: &OutboundMessage) -> Result<Sent, PortError>;
}

/// A queue the relay can also consume itself (local mode's drainer).
#[async_trait::async_trait]
pub trait LocalQueue: Queue {
    /// Takes up to `max` visible messages from `queue`, hiding them for `lock` (peek-lock).
    async fn receive(
        &self,
        queue: &str,
        max: usize,
        lock: chrono::TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<Vec<Received>, PortError>;
    /// Extends the lock of a received message to `until`, while its receiver still holds it: `false` when it
    /// was completed or received again since (its lock had expired), so the caller no longer owns it. The
    /// peek-lock renewal Service Bus gives a Functions host that works on a message longer than its lock.
    async fn renew(
        &self,
        queue: &str,
        received: &Received,
        until: DateTime<Utc>,
    ) -> Result<bool, PortError>;
    /// Completes (removes) a received message.
    async fn complete(
        &self,
        queue: &str,
        message_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PortError>;
    /// Counts per queue: (queue, active, completed).
    async fn depths(&self) -> Result<Vec<(String, u64, u64)>, PortError>;
    /// Messages of a queue (inspection), oldest first.
    async fn messages(
        &self,
        queue: Option<&str>,
    ) -> Result<Vec<(OutboundMessage, String)>, PortError>;
}

/// Carries out an action taken from a worker queue (Azure ML call, notification). Must be idempotent:
/// the same entry may arrive more than once.
#[async_trait::async_trait]
pub trait Worker: Send + Sync {
    /// Executes (or, dry-run, describes) the action; returns what was done.
    async fn execute(
        &self,
        entry: &LedgerEntry,
        delivery_count: u32,
        now: DateTime<Utc>,
    ) -> Result<Effect, PortError>;
}
