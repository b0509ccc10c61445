//! What decide() needs to remember between signals, as data: a read-only [`StateView`] going in, a list of
//! [`StateChange`]s coming out. Stores (SQLite, Blob) persist the changes; [`MemoryState`] folds them in memory
//! for `replay`, `explain` and tests. Keeping the changes explicit means decide() never writes anything.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::decide::{ActionId, ActionKind, Decision};

/// An approval request waiting for votes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingApproval {
    /// The `request_approval` action that opened it (also the approval id in links).
    pub approval_id: ActionId,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Target environment of the gate.
    pub environment: String,
    /// Who asked (may not approve unless the gate allows it).
    pub requester: Option<String>,
    /// Allowed approvers.
    pub approvers: Vec<String>,
    /// Votes needed.
    pub required: u32,
    /// Who approved so far.
    pub approvals: Vec<String>,
    /// When it was opened.
    pub opened_at: DateTime<Utc>,
    /// When it lapses.
    pub expires_at: DateTime<Utc>,
}

/// How an approval ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalOutcome {
    /// Enough approvers said yes.
    Approved,
    /// An approver said no.
    Rejected,
    /// Nobody decided in time.
    Expired,
    /// A newer version of the model was registered.
    Superseded,
}

/// A page that is open on a route (so a promotion can resolve it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenPage {
    /// PagerDuty `dedup_key`.
    pub dedup_key: String,
    /// Route it went to.
    pub route: String,
    /// When it opened.
    pub opened_at: DateTime<Utc>,
}

/// The version serving in the last environment of the promotion order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductionVersion {
    /// Version.
    pub version: String,
    /// Its tags at registration (metrics for champion/challenger).
    pub tags: BTreeMap<String, String>,
    /// Since when.
    pub since: DateTime<Utc>,
}

/// The version in production with one of its tags, as [`StateView::production_metric`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductionMetric {
    /// Version.
    pub version: String,
    /// The tag's value, when the version has it.
    pub metric: Option<String>,
}

/// When an action last happened for a model (cooldowns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionStamp {
    /// The action.
    pub action_id: ActionId,
    /// When it was decided.
    pub at: DateTime<Utc>,
}

/// A change decide() asks the store to make, besides recording its actions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum StateChange {
    /// A version was registered; its tags are remembered for rule selectors and champion checks.
    ModelSeen {
        /// Model.
        model: String,
        /// Version.
        version: String,
        /// Tags.
        tags: Arc<Tags>,
    },
    /// An approval request was opened.
    ApprovalOpened(PendingApproval),
    /// An approver said yes (not yet enough).
    ApprovalVoted {
        /// Model.
        model: String,
        /// Version.
        version: String,
        /// Environment.
        environment: String,
        /// Who.
        approver: String,
    },
    /// An approval ended.
    ApprovalClosed {
        /// Model.
        model: String,
        /// Version.
        version: String,
        /// Environment.
        environment: String,
        /// How.
        outcome: ApprovalOutcome,
    },
    /// A retrain was held back by the fleet budget (counts towards the storm breaker).
    RetrainHeldByBudget {
        /// Model.
        model: String,
    },
    /// The storm page went out.
    StormPaged,
    /// A page opened.
    PageOpened {
        /// Model, when the page is about one.
        model: Option<String>,
        /// Page.
        page: OpenPage,
    },
    /// A page was resolved.
    PageResolved {
        /// Model, when the page is about one.
        model: Option<String>,
        /// PagerDuty `dedup_key`.
        dedup_key: String,
    },
    /// A version reached the last environment.
    ProductionSet {
        /// Model.
        model: String,
        /// Version and metrics.
        production: ProductionVersion,
    },
}

/// Read access to remembered state, as decide() needs it. Implemented in memory here and by the stores.
pub trait StateView {
    /// When a signal with this dedupe key was decided, if it was (within the dedupe window).
    fn decided_at(&self, signal_key: &str) -> Option<DateTime<Utc>>;
    /// The latest action of a kind for a model (cooldowns); asked only for kinds that
    /// [have a cooldown](ActionKind::has_cooldown), the only ones a state need remember.
    fn last_action(&self, model: &str, kind: ActionKind) -> Option<ActionStamp>;
    /// Retrains decided across the fleet since `since`, oldest first (budget).
    fn retrains_since(&self, since: DateTime<Utc>) -> Vec<DateTime<Utc>>;
    /// Retrains held by the budget since `since` (storm breaker).
    fn held_since(&self, since: DateTime<Utc>) -> u32;
    /// When the storm page last went out.
    fn last_storm_page(&self) -> Option<DateTime<Utc>>;
    /// Open approval requests for a model.
    fn pending_approvals(&self, model: &str) -> Vec<PendingApproval>;
    /// Tags of a registered version (latest registration when `version` is `None`).
    fn model_tags(&self, model: &str, version: Option<&str>) -> Option<Arc<Tags>>;
    /// The version in production.
    fn production(&self, model: &str) -> Option<ProductionVersion>;
    /// The version in production and one of its tags (champion checks), without copying all of its tags.
    fn production_metric(&self, model: &str, metric: &str) -> Option<ProductionMetric> {
        self.production(model).map(|p| ProductionMetric {
            metric: p.tags.get(metric).cloned(),
            version: p.version,
        })
    }
    /// Open pages about a model (`None`: pages about no model, e.g. infrastructure).
    fn open_pages(&self, model: Option<&str>) -> Vec<OpenPage>;
}

const VERSIONS_KEPT: usize = 8;

/// Below this many keys `decided` is never swept (a sweep walks the whole map).
const SWEEP_FLOOR: usize = 1024;

/// Open pages remembered per model (and for the infrastructure), newest kept; older ones can no longer be
/// resolved by the lifecycle and are left to PagerDuty's own auto-resolution.
const PAGES_KEPT: usize = 64;

/// A model version's tags. The state and [`StateChange::ModelSeen`] hold them in an `Arc`, so remembering a
/// registration and looking its tags up (rule selectors, every event) copy nothing.
pub type Tags = BTreeMap<String, String>;

/// Hash maps of the state hash with foldhash: SipHash of every event's key (looked up and remembered once
/// per event) was a visible share of replay's time. Seeded per process, so still not
/// predictable from outside.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;

/// State held in memory, bounded: event keys are forgotten after the dedupe window and fleet counters after
/// the budget window, so memory stays flat over any length of history. Serialisable, so that a store without
/// transactions (Blob Storage) can keep it as one document replaced conditionally.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryState {
    /// Event keys (as digests) and when they were decided. Keys older than `horizon` count as forgotten and are
    /// swept out in bulk once the map has doubled since the last sweep: no queue to keep in step.
    #[serde(default, with = "digests")]
    decided: HashMap<KeyDigest, DateTime<Utc>>,
    /// The dedupe window's start at the last decision folded in: keys decided before it are forgotten.
    #[serde(default)]
    horizon: Option<DateTime<Utc>>,
    /// Size of `decided` after its last sweep.
    #[serde(default)]
    swept_len: usize,
    #[serde(default, with = "pairs")]
    last_actions: HashMap<(String, ActionKind), ActionStamp>,
    #[serde(default)]
    retrains: VecDeque<DateTime<Utc>>,
    #[serde(default)]
    held: VecDeque<DateTime<Utc>>,
    #[serde(default)]
    storm_paged: Option<DateTime<Utc>>,
    #[serde(default, with = "pairs")]
    approvals: BTreeMap<(String, String), PendingApproval>,
    #[serde(default)]
    versions: HashMap<String, VecDeque<(String, Arc<Tags>)>>,
    #[serde(default)]
    production: HashMap<String, ProductionVersion>,
    #[serde(default, with = "pairs")]
    pages: HashMap<Option<String>, Vec<OpenPage>>,
}

/// A dedupe key as the state remembers it: the first 128 bits of its SHA-256. Keys run to a hundred bytes and
/// more (event type, source and id); keeping each as a `String` cost an allocation and a copy per event, and
/// every lookup, insert and rehash read the key back from memory long gone cold: about a sixth of replay's
/// deciding thread. 128 bits of SHA-256 keep telling keys apart: a collision, which would make an event look
/// like a duplicate, takes ~2^64 work to find on purpose and will not happen by chance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyDigest([u8; 16]);

impl KeyDigest {
    fn of(key: &str) -> KeyDigest {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(key.as_bytes());
        let mut bytes = [0; 16];
        bytes.copy_from_slice(&digest[..16]);
        KeyDigest(bytes)
    }
}

impl std::hash::Hash for KeyDigest {
    /// The digest is uniform already: half of it is as good a hash as any.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut half = [0; 8];
        half.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(half));
    }
}

/// `decided` as a JSON object from the digests in hex to when. A key that is not 32 hex digits is a key itself,
/// as states saved before digests held them, and is digested on the way in.
mod digests {
    use chrono::{DateTime, Utc};
    use serde::de::{Deserialize, Deserializer};
    use serde::ser::{SerializeMap, Serializer};

    use super::{HashMap, KeyDigest};

    pub fn serialize<S: Serializer>(
        map: &HashMap<KeyDigest, DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut out = s.serialize_map(Some(map.len()))?;
        for (digest, at) in map {
            out.serialize_entry(&crate::domain::hex32(&digest.0), at)?;
        }
        out.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<HashMap<KeyDigest, DateTime<Utc>>, D::Error> {
        let saved = std::collections::HashMap::<String, DateTime<Utc>>::deserialize(d)?;
        Ok(saved
            .into_iter()
            .map(|(key, at)| (parse(&key).unwrap_or_else(|| KeyDigest::of(&key)), at))
            .collect())
    }

    /// 32 lowercase hex digits as a digest. Signal keys always hold a `|`, so none reads as one.
    pub(super) fn parse(text: &str) -> Option<KeyDigest> {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let bytes = text.as_bytes();
        if bytes.len() != 32 {
            return None;
        }
        let mut out = [0; 16];
        for (i, pair) in bytes.chunks(2).enumerate() {
            out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(KeyDigest(out))
    }
}

/// Maps whose keys are not strings, (de)serialised as lists of `[key, value]` pairs (JSON keys are strings).
mod pairs {
    use serde::de::{Deserialize, Deserializer};
    use serde::ser::{Serialize, Serializer};

    pub fn serialize<'a, M, K, V, S>(map: &'a M, s: S) -> Result<S::Ok, S::Error>
    where
        &'a M: IntoIterator<Item = (&'a K, &'a V)>,
        K: Serialize + 'a,
        V: Serialize + 'a,
        S: Serializer,
    {
        s.collect_seq(map)
    }

    pub fn deserialize<'de, M, K, V, D>(d: D) -> Result<M, D::Error>
    where
        M: FromIterator<(K, V)>,
        K: Deserialize<'de>,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

impl MemoryState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds a decision in: its key, its actions and its state changes. `dedupe_window` and `budget_window`
    /// bound what is kept.
    pub fn apply(
        &mut self,
        decision: &Decision,
        dedupe_window: TimeDelta,
        budget_window: Option<TimeDelta>,
    ) {
        let at = decision.at;
        if !decision.duplicate {
            self.decided.insert(KeyDigest::of(&decision.signal.key), at);
        }
        for action in &decision.actions {
            if let Some(model) = &action.model
                && action.kind.has_cooldown()
            {
                self.last_actions.insert(
                    (model.clone(), action.kind),
                    ActionStamp {
                        action_id: action.action_id.clone(),
                        at,
                    },
                );
            }
            if action.kind == ActionKind::Retrain {
                self.retrains.push_back(at);
            }
        }
        for change in &decision.changes {
            self.apply_change(change, at);
        }
        self.prune(at, dedupe_window, budget_window);
    }

    fn apply_change(&mut self, change: &StateChange, at: DateTime<Utc>) {
        match change {
            StateChange::ModelSeen {
                model,
                version,
                tags,
            } => {
                let versions = self.versions.entry(model.clone()).or_default();
                versions.retain(|(v, _)| v != version);
                versions.push_back((version.clone(), tags.clone()));
                while versions.len() > VERSIONS_KEPT {
                    versions.pop_front();
                }
            }
            StateChange::ApprovalOpened(p) => {
                self.approvals
                    .insert((p.model.clone(), p.environment.clone()), p.clone());
            }
            StateChange::ApprovalVoted {
                model,
                version,
                environment,
                approver,
            } => {
                if let Some(p) = self
                    .approvals
                    .get_mut(&(model.clone(), environment.clone()))
                    && &p.version == version
                {
                    p.approvals.push(approver.clone());
                }
            }
            StateChange::ApprovalClosed {
                model,
                version,
                environment,
                ..
            } => {
                let key = (model.clone(), environment.clone());
                if self
                    .approvals
                    .get(&key)
                    .is_some_and(|p| &p.version == version)
                {
                    self.approvals.remove(&key);
                }
            }
            StateChange::RetrainHeldByBudget { .. } => self.held.push_back(at),
            StateChange::StormPaged => self.storm_paged = Some(at),
            StateChange::PageOpened { model, page } => {
                let pages = self.pages.entry(model.clone()).or_default();
                pages.retain(|p| !same_key(&p.dedup_key, &page.dedup_key));
                pages.push(page.clone());
                // Bounded: alerts that never resolve (each with its own key) must not grow state forever.
                if pages.len() > PAGES_KEPT {
                    let excess = pages.len() - PAGES_KEPT;
                    pages.drain(..excess);
                }
            }
            StateChange::PageResolved { model, dedup_key } => {
                if let Some(pages) = self.pages.get_mut(model) {
                    pages.retain(|p| !same_key(&p.dedup_key, dedup_key));
                }
            }
            StateChange::ProductionSet { model, production } => {
                self.production.insert(model.clone(), production.clone());
            }
        }
    }

    fn prune(
        &mut self,
        now: DateTime<Utc>,
        dedupe_window: TimeDelta,
        budget_window: Option<TimeDelta>,
    ) {
        let horizon = now - dedupe_window;
        // The clock of a replay never goes back, but a store's may: the horizon only moves forward.
        if self.horizon.is_none_or(|h| horizon > h) {
            self.horizon = Some(horizon);
        }
        if self.decided.len() > SWEEP_FLOOR.max(2 * self.swept_len) {
            let horizon = self.horizon;
            self.decided.retain(|_, t| horizon.is_none_or(|h| *t >= h));
            self.swept_len = self.decided.len();
        }
        let keep_from = budget_window.map(|w| now - w);
        for queue in [&mut self.retrains, &mut self.held] {
            match keep_from {
                Some(from) => {
                    while queue.front().is_some_and(|t| *t < from) {
                        queue.pop_front();
                    }
                }
                None => queue.clear(),
            }
        }
    }

    /// Number of remembered event keys (for tests of boundedness).
    pub fn remembered_keys(&self) -> usize {
        self.decided
            .values()
            .filter(|t| self.is_remembered(**t))
            .count()
    }

    /// Keys held, forgotten ones not yet swept included (for tests of boundedness).
    pub fn held_keys(&self) -> usize {
        self.decided.len()
    }

    fn is_remembered(&self, decided_at: DateTime<Utc>) -> bool {
        self.horizon.is_none_or(|h| decided_at >= h)
    }
}

/// String equality checked from the end: page keys of one route share a long prefix (`infra:/subscriptions/…`)
/// and differ in their trailing id, so a mismatch shows on the first bytes compared.
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().rev().eq(b.bytes().rev())
}

impl StateView for MemoryState {
    fn decided_at(&self, signal_key: &str) -> Option<DateTime<Utc>> {
        self.decided
            .get(&KeyDigest::of(signal_key))
            .copied()
            .filter(|t| self.is_remembered(*t))
    }

    fn last_action(&self, model: &str, kind: ActionKind) -> Option<ActionStamp> {
        self.last_actions.get(&(model.to_string(), kind)).cloned()
    }

    fn retrains_since(&self, since: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        self.retrains
            .iter()
            .copied()
            .filter(|t| *t >= since)
            .collect()
    }

    fn held_since(&self, since: DateTime<Utc>) -> u32 {
        self.held.iter().filter(|t| **t >= since).count() as u32
    }

    fn last_storm_page(&self) -> Option<DateTime<Utc>> {
        self.storm_paged
    }

    fn pending_approvals(&self, model: &str) -> Vec<PendingApproval> {
        // Keys are (model, environment): the model's approvals are one contiguous range, in key order.
        self.approvals
            .range((model.to_string(), String::new())..)
            .take_while(|((m, _), _)| m == model)
            .map(|(_, p)| p.clone())
            .collect()
    }

    fn model_tags(&self, model: &str, version: Option<&str>) -> Option<Arc<Tags>> {
        let versions = self.versions.get(model)?;
        match version {
            Some(v) => versions
                .iter()
                .rev()
                .find(|(ver, _)| ver == v)
                .map(|(_, t)| t.clone()),
            None => versions.back().map(|(_, t)| t.clone()),
        }
    }

    fn production(&self, model: &str) -> Option<ProductionVersion> {
        self.production.get(model).cloned()
    }

    fn production_metric(&self, model: &str, metric: &str) -> Option<ProductionMetric> {
        self.production.get(model).map(|p| ProductionMetric {
            version: p.version.clone(),
            metric: p.tags.get(metric).cloned(),
        })
    }

    fn open_pages(&self, model: Option<&str>) -> Vec<OpenPage> {
        self.pages
            .get(&model.map(str::to_string))
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "Microsoft.MachineLearningServices.RunCompleted|/subscriptions/s/resourcegroups/rg/providers/microsoft.machinelearningservices/workspaces/mlw-dev|run-1";

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    /// States saved before keys were kept as digests held the keys themselves: they still dedupe, and are
    /// saved again as digests that read back the same.
    #[test]
    fn a_saved_state_keeps_its_keys_whether_saved_as_keys_or_as_digests() {
        let legacy = serde_json::json!({ "decided": { KEY: "2026-11-01T00:00:00Z" } });
        let state: MemoryState = serde_json::from_value(legacy).unwrap();
        assert_eq!(state.decided_at(KEY), Some(at("2026-11-01T00:00:00Z")));
        assert_eq!(state.decided_at("model_registered|mlw-dev|fraud:7"), None);

        let saved = serde_json::to_value(&state).unwrap();
        let hex = crate::domain::hex32(&KeyDigest::of(KEY).0);
        assert_eq!(
            saved["decided"],
            serde_json::json!({ hex: "2026-11-01T00:00:00Z" })
        );
        let again: MemoryState = serde_json::from_value(saved).unwrap();
        assert_eq!(again.decided_at(KEY), Some(at("2026-11-01T00:00:00Z")));
        assert_eq!(again, state);
    }

    #[test]
    fn only_32_lowercase_hex_digits_read_as_a_digest() {
        let digest = KeyDigest::of(KEY);
        assert_eq!(
            digests::parse(&crate::domain::hex32(&digest.0)),
            Some(digest)
        );
        for text in [
            "",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcdeg",
            "schedule|weekly|2026-11-01T00:00Z",
        ] {
            assert_eq!(digests::parse(text), None, "{text:?}");
        }
        assert_ne!(KeyDigest::of("a|b"), KeyDigest::of("a|c"));
    }
}
