//! The executor: the only place a Decision meets the ports. For each signal: decide and record atomically
//! (ledger entries created conditionally under deterministic action ids), then enqueue each new entry with
//! `MessageId = action_id`, then mark it sent. A redelivered signal finds its decision and re-sends only what
//! a crash left unsent; the queue's duplicate detection absorbs a resend that did get through.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::domain::Signal;
use crate::policy::{Decision, Policy, decide};
use crate::ports::{
    ActionStatus, Clock, DeadLetter, Decider, LedgerEntry, OutboundMessage, PortError, Queue, Sent,
    StateStore,
};

/// How late a timer tick may be and still count as on time (the Functions timer fires within seconds).
pub const TICK_GRACE: TimeDelta = TimeDelta::seconds(90);

/// How long an entry may stay recorded but unsent before a tick sends it ([`Relay::heal_unsent`]): longer
/// than a live request takes between recording and enqueueing, so the sweep rarely sends one twice.
pub const HEAL_AFTER: TimeDelta = TimeDelta::minutes(2);

/// Unsent entries read at a time by a heal (see [`HEAL_PAGES`]).
const HEAL_BATCH: usize = 100;

/// Pages of [`HEAL_BATCH`] entries one heal goes through at most: what is left waits for the next tick.
const HEAL_PAGES: usize = 10;

/// Everything the functions need: the policy and the ports.
#[derive(Clone)]
pub struct Relay {
    /// The policy in force.
    pub policy: Arc<Policy>,
    /// State, ledger and decision log.
    pub store: Arc<dyn StateStore>,
    /// Worker queues.
    pub queue: Arc<dyn Queue>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

/// What handling one signal did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The signal's dedupe key.
    pub signal_key: String,
    /// The decision, when it was made now (not a duplicate).
    pub decision: Option<Decision>,
    /// Action ids enqueued by this call (new, or healed after a crash).
    pub sent: Vec<String>,
    /// Of those, how many the queue already had.
    pub already_queued: usize,
    /// Actions the queue refused ([`PortError::Rejected`]): each dead-lettered and recorded as rejected, so
    /// that neither a redelivery nor a tick sends it again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<Rejection>,
}

/// An action the queue refused, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    /// The action's id.
    pub action_id: String,
    /// The queue's reason.
    pub reason: String,
}

/// How sending a recorded entry ended.
enum Settled {
    /// On its queue (or already there).
    Sent(Sent),
    /// Refused by the queue: dead-lettered and settled as rejected.
    Rejected(String),
}

impl Outcome {
    /// True when the signal had been decided before.
    pub fn duplicate(&self) -> bool {
        self.decision.is_none()
    }

    /// One log line.
    pub fn summary(&self) -> String {
        let mut line = self.decision_summary();
        for r in &self.rejected {
            line.push_str(&format!(
                "; action {} refused by its queue and dead-lettered: {}",
                r.action_id, r.reason
            ));
        }
        line
    }

    fn decision_summary(&self) -> String {
        match &self.decision {
            Some(d) => format!("{} → {}", self.signal_key, d.explanation()),
            None if self.sent.is_empty() => {
                format!("{} → duplicate, nothing to do", self.signal_key)
            }
            None => format!(
                "{} → duplicate; re-sent {} unsent action(s) left by an earlier attempt",
                self.signal_key,
                self.sent.len()
            ),
        }
    }
}

impl Relay {
    /// Decides, records and enqueues one signal at the clock's `now`.
    pub async fn handle(&self, signal: &Signal) -> Result<Outcome, PortError> {
        self.handle_at(signal, self.clock.now()).await
    }

    /// [`Relay::handle`] at a given time.
    pub async fn handle_at(
        &self,
        signal: &Signal,
        now: DateTime<Utc>,
    ) -> Result<Outcome, PortError> {
        let policy = self.policy.clone();
        let window = policy.dedupe_window;
        let owned = signal.clone();
        let decider: Arc<Decider> = Arc::new(move |view| decide(&policy, &owned, view, now));
        let commit = self.store.commit(signal, now, window, decider).await?;
        let mut outcome = Outcome {
            signal_key: signal.key.clone(),
            decision: commit.decision,
            sent: Vec::with_capacity(commit.enqueued.len() + commit.to_send.len()),
            already_queued: 0,
            rejected: Vec::new(),
        };
        for (id, sent) in commit.enqueued {
            if sent == Sent::Duplicate {
                outcome.already_queued += 1;
            }
            outcome.sent.push(id);
        }
        for entry in &commit.to_send {
            let id = entry.action.action_id.to_string();
            match self.send_entry(entry, now).await? {
                Settled::Sent(sent) => {
                    if sent == Sent::Duplicate {
                        outcome.already_queued += 1;
                    }
                    outcome.sent.push(id);
                }
                Settled::Rejected(reason) => outcome.rejected.push(Rejection {
                    action_id: id,
                    reason,
                }),
            }
        }
        Ok(outcome)
    }

    /// Enqueues a recorded entry (MessageId = action id), then marks it sent. An entry the queue refuses is
    /// dead-lettered, then settled as rejected: it would be refused on every redelivery and every tick, and
    /// answering the trigger with a failure would only have it retried for a day while the actions after it
    /// wait.
    async fn send_entry(
        &self,
        entry: &LedgerEntry,
        now: DateTime<Utc>,
    ) -> Result<Settled, PortError> {
        let message = OutboundMessage::for_entry(entry);
        let id = entry.action.action_id.as_str();
        match self.queue.send(&message).await {
            Ok(sent) => {
                self.store.settle(id, ActionStatus::Sent, now).await?;
                Ok(Settled::Sent(sent))
            }
            Err(PortError::Rejected(reason)) => {
                tracing::error!(action_id = id, queue = %message.queue, %reason, "the queue refused an action; dead-lettered");
                // The dead letter first: a crash before the entry is settled sends it again (and dead-letters
                // it twice) rather than losing it.
                self.store
                    .dead_letter(&DeadLetter {
                        at: now,
                        source: format!("queue {}", message.queue),
                        reason: reason.clone(),
                        body: message.body,
                    })
                    .await?;
                self.store.settle(id, ActionStatus::Rejected, now).await?;
                Ok(Settled::Rejected(reason))
            }
            Err(e) => Err(e),
        }
    }

    /// Sends the ledger entries recorded more than [`HEAL_AFTER`] before `now` and still unsent (a queue or
    /// store failure between recording and enqueueing), and marks them sent. A redelivered event heals its own
    /// entries; this heals those whose signal will not come again (a schedule instant whose tick failed and
    /// has since slid out of its catch-up window). An entry a live request is still sending is sent twice at
    /// worst: the queue drops the second by its MessageId. Returns how many were settled (sent, or refused and dead-lettered).
    ///
    /// Entries that cannot be sent (their queue missing, full or refusing them) do not hold back the entries
    /// behind them: each is tried, page after page (up to [`HEAL_PAGES`] of [`HEAL_BATCH`] a tick), and the
    /// first failure is returned after all were.
    pub async fn heal_unsent(&self, now: DateTime<Utc>) -> Result<usize, PortError> {
        let (mut settled, mut first_error) = (0, None);
        let mut after: Option<LedgerEntry> = None;
        // A queue that failed once this heal (down, full, missing) is not tried again for each of its entries.
        let mut failed: Vec<&'static str> = Vec::new();
        for _ in 0..HEAL_PAGES {
            let entries = self
                .store
                .unsent(now - HEAL_AFTER, after.as_ref(), HEAL_BATCH)
                .await?;
            for entry in &entries {
                let queue = crate::ports::queue_for(entry.action.kind);
                if failed.contains(&queue) {
                    continue;
                }
                match self.send_entry(entry, now).await {
                    Ok(outcome) => {
                        settled += 1;
                        if let Settled::Sent(_) = outcome {
                            tracing::info!(action_id = %entry.action.action_id, recorded_at = %entry.recorded_at, "sent an entry left unsent");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(action_id = %entry.action.action_id, error = %e, "an entry left unsent could not be sent; its queue waits for the next tick");
                        failed.push(queue);
                        first_error.get_or_insert(e);
                    }
                }
            }
            if entries.len() < HEAL_BATCH {
                break;
            }
            after = entries.last().cloned();
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(settled),
        }
    }

    /// One timer tick: first [`Relay::heal_unsent`]; then every schedule instant due since its cursor (per its
    /// catch-up policy) is handled, and the cursor moves with a conditional write. Duplicate and past-due
    /// ticks are harmless: a schedule signal's identity is (name, due instant), so each instant is decided
    /// once. One schedule's failure does not hold back the others; the tick returns the first failure after
    /// trying them all.
    pub async fn tick(&self) -> Result<Vec<Outcome>, PortError> {
        let now = self.clock.now();
        let mut first_error = None;
        if let Err(e) = self.heal_unsent(now).await {
            tracing::warn!(error = %e, "unsent ledger entries not healed this tick");
            first_error = Some(e);
        }
        let mut outcomes = Vec::new();
        for schedule in self.policy.schedules() {
            if let Err(e) = self.tick_schedule(schedule, now, &mut outcomes).await {
                tracing::warn!(schedule = %schedule.spec.name, error = %e, "schedule tick failed");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(outcomes),
        }
    }

    async fn tick_schedule(
        &self,
        schedule: &crate::policy::schedule::Schedule,
        now: DateTime<Utc>,
        outcomes: &mut Vec<Outcome>,
    ) -> Result<(), PortError> {
        let name = &schedule.spec.name;
        let cursor = self.store.schedule_cursor(name).await?;
        let due = schedule.due_at_tick(cursor, now, TICK_GRACE);
        for instant in &due {
            outcomes.push(
                self.handle_at(&Signal::schedule(name, *instant), now)
                    .await?,
            );
        }
        // Without a due instant the cursor still moves on first sight, so catch-up starts from now.
        let to = due
            .last()
            .copied()
            .or(if cursor.is_none() { Some(now) } else { None });
        if let Some(to) = to
            && !self.store.advance_schedule(name, cursor, to).await?
        {
            tracing::info!(schedule = %name, "another instance moved the schedule cursor first");
        }
        Ok(())
    }
}
