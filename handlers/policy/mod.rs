//! The policy: what should happen to which models. A TOML file ([`spec`]) validated and compiled into a
//! [`Policy`] ([`check`]), and the pure [`decide()`] that applies it to a signal.

pub mod check;
pub mod decide;
pub mod schedule;
pub mod spec;
pub mod state;

use std::collections::BTreeMap;

use chrono::TimeDelta;
use wildmatch::WildMatch;

pub use check::Diagnostic;
pub use decide::{
    Action, ActionId, ActionKind, ActionParams, Decision, Note, Suppression, decide, decide_owned,
};
pub use schedule::Schedule;
pub use spec::PolicySpec;
pub use state::{MemoryState, StateChange, StateView};

use std::sync::Arc;

use crate::domain::WorkspaceRef;

/// A validated, compiled policy. Build it with [`Policy::parse`].
#[derive(Debug, Clone)]
pub struct Policy {
    /// The file as written.
    pub spec: PolicySpec,
    /// SHA-256 (128-bit hex) of the canonical policy, recorded in every decision.
    pub hash: Arc<str>,
    /// How long event keys are remembered.
    pub dedupe_window: TimeDelta,
    /// Fleet retrain budget.
    pub budget: Option<Budget>,
    rules: Vec<Rule>,
    schedules: Vec<Schedule>,
}

/// The fleet retrain budget, compiled.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Max retrains per window.
    pub max_retrains: u32,
    /// Sliding window.
    pub window: TimeDelta,
    /// Storm page after this many held retrains.
    pub storm_after: Option<u32>,
    /// Storm page route.
    pub storm_route: Option<String>,
}

/// A rule, compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    /// As written.
    pub spec: spec::RuleSpec,
    /// The rule's name, shared with every decision it governs.
    pub name: Arc<str>,
    globs: Vec<WildMatch>,
    /// Per-model cooldown between retrains (and between pages).
    pub cooldown: Option<TimeDelta>,
    /// Approval expiry per gate.
    pub gate_expiry: BTreeMap<String, TimeDelta>,
}

impl Rule {
    /// Whether the rule's `models` globs take `model`, whatever its tags.
    pub fn names(&self, model: &str) -> bool {
        self.globs.iter().any(|g| g.matches(model))
    }

    /// Whether this rule governs `model` (tags: the latest registration's, when known).
    pub fn matches(&self, model: &str, tags: Option<&BTreeMap<String, String>>) -> bool {
        if !self.names(model) {
            return false;
        }
        if self.spec.tags.is_empty() {
            return true;
        }
        tags.is_some_and(|tags| self.spec.tags.iter().all(|(k, v)| tags.get(k) == Some(v)))
    }
}

impl Policy {
    /// The rule governing a model: the first that matches.
    pub fn rule_for(&self, model: &str, tags: Option<&BTreeMap<String, String>>) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(model, tags))
    }

    /// The first rule that governs every model (`*`, no tags): used for signals that name no model.
    pub fn catch_all_rule(&self) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.spec.tags.is_empty() && r.spec.models.iter().any(|m| m == "*"))
    }

    /// All rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The environment a workspace belongs to.
    pub fn environment_of(&self, ws: &WorkspaceRef) -> Option<&str> {
        self.spec.environments.iter().find_map(|(name, env)| {
            let same = |want: &Option<String>, have: &str| {
                want.as_deref().is_none_or(|w| w.eq_ignore_ascii_case(have))
            };
            (env.workspace.eq_ignore_ascii_case(&ws.workspace)
                && same(&env.subscription, &ws.subscription)
                && same(&env.resource_group, &ws.resource_group))
            .then_some(name.as_str())
        })
    }

    /// The environment after `env` in the promotion order.
    pub fn next_environment(&self, env: &str) -> Option<&str> {
        let i = self.spec.promotion.iter().position(|e| e == env)?;
        self.spec.promotion.get(i + 1).map(String::as_str)
    }

    /// The model a monitor watches: an exact name, or a model-monitoring signal `<monitor>_<signal>`.
    pub fn monitor_model(&self, monitor: &str) -> Option<&str> {
        self.spec
            .monitors
            .iter()
            .find(|m| m.name == monitor)
            .or_else(|| {
                self.spec
                    .monitors
                    .iter()
                    .filter(|m| {
                        monitor
                            .strip_prefix(m.name.as_str())
                            .is_some_and(|rest| rest.starts_with('_'))
                    })
                    .max_by_key(|m| m.name.len())
            })
            .map(|m| m.model.as_str())
    }

    /// A schedule by name.
    pub fn schedule(&self, name: &str) -> Option<&Schedule> {
        self.schedules.iter().find(|s| s.spec.name == name)
    }

    /// All schedules.
    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }
}
