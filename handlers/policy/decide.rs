//! decide(): a pure function of (policy, signal, state, now). It returns the actions to take, the state
//! changes to record, and a one-line reason for every rule that fired or was held back. No clock, no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::spec::{Better, BreachAction, DeploySpec};
use super::state::{
    ApprovalOutcome, OpenPage, PendingApproval, ProductionVersion, StateChange, StateView,
};
use super::{Policy, Rule};
use crate::domain::{AlertCondition, Drift, RunRef, Signal, SignalBody, hex32, push_hex32};

/// `format!` into a `String` with room for a one-line reason from the start. `format!` sizes its buffer from
/// the literal pieces alone, so a reason that names a run, a model and a time grew two or three times on the
/// way, each time copied into a fresh block: about a tenth of replay's deciding thread.
macro_rules! reason {
    ($($arg:tt)*) => {
        sized(format_args!($($arg)*))
    };
}

/// What [`reason!`] builds with: a plain literal as itself, anything else into [`REASON_CAPACITY`] bytes.
fn sized(args: fmt::Arguments<'_>) -> String {
    if let Some(text) = args.as_str() {
        return text.to_string();
    }
    let mut out = String::with_capacity(REASON_CAPACITY);
    fmt::Write::write_fmt(&mut out, args).expect("writing into a String cannot fail");
    out
}

/// Room [`reason!`] starts with: nine reasons in ten fit.
const REASON_CAPACITY: usize = 128;

/// What an action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Ask a gate's approvers.
    RequestApproval,
    /// Deploy a registry model version to an environment.
    Deploy,
    /// Submit the retraining pipeline.
    Retrain,
    /// Page the on-call route.
    Page,
    /// Resolve a page.
    ResolvePage,
    /// Post a notification.
    Notify,
}

impl ActionKind {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::RequestApproval => "request_approval",
            ActionKind::Deploy => "deploy",
            ActionKind::Retrain => "retrain",
            ActionKind::Page => "page",
            ActionKind::ResolvePage => "resolve_page",
            ActionKind::Notify => "notify",
        }
    }

    /// Whether a per-model cooldown holds this kind back, so that decide() asks for its latest instance
    /// ([`StateView::last_action`]). States remember the latest instance of these kinds only: nothing reads
    /// the others, and recording them was a write per registration.
    pub fn has_cooldown(self) -> bool {
        matches!(self, ActionKind::Retrain | ActionKind::Page)
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Deterministic action id: `{kind}-{32 hex}` from the action's identity. Used as the ledger key and as the
/// Service Bus `MessageId` (≤ 128 characters), so a redelivered event maps to the same message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ActionId(String);

impl ActionId {
    /// Derives the id of a `kind` action from its identity string.
    pub fn derive(kind: ActionKind, identity: &str) -> ActionId {
        // Hashed piecewise: the same bytes as `reason!("{kind}|{identity}")` without building that string.
        let digest = Sha256::new()
            .chain_update(kind.as_str())
            .chain_update(b"|")
            .chain_update(identity)
            .finalize();
        let mut id = String::with_capacity(kind.as_str().len() + 33);
        id.push_str(kind.as_str());
        id.push('-');
        push_hex32(&mut id, &digest);
        ActionId(id)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parameters of an action, by kind: everything a worker needs, so it never re-reads the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionParams {
    /// See [`ActionKind::RequestApproval`].
    RequestApproval {
        /// Gate's target environment.
        environment: String,
        /// Who may approve.
        approvers: Vec<String>,
        /// How many must.
        required: u32,
        /// Who asked.
        requester: Option<String>,
        /// When the request lapses.
        expires_at: DateTime<Utc>,
        /// Route for the request, if any.
        route: Option<String>,
        /// Model tags (metrics) shown on the approval page.
        tags: BTreeMap<String, String>,
    },
    /// See [`ActionKind::Deploy`].
    Deploy {
        /// Target environment.
        environment: String,
        /// Its workspace.
        workspace: String,
        /// `azureml://registries/{registry}/models/{name}/versions/{v}`.
        registry_model_id: String,
        /// Online endpoint.
        endpoint: String,
        /// Deployment name within the endpoint.
        deployment: String,
        /// VM size.
        instance_type: String,
        /// Instance count.
        instance_count: u32,
        /// Smoke test to run afterwards.
        smoke_test: Option<super::spec::SmokeTestSpec>,
    },
    /// See [`ActionKind::Retrain`].
    Retrain {
        /// Environment that runs the job.
        environment: String,
        /// Its workspace.
        workspace: String,
        /// Pipeline component id.
        pipeline: String,
        /// Experiment name.
        experiment: String,
        /// Compute target.
        compute: Option<String>,
        /// Literal inputs (plus `trigger`).
        inputs: BTreeMap<String, String>,
    },
    /// See [`ActionKind::Page`].
    Page {
        /// Route.
        route: String,
        /// PagerDuty `dedup_key`: repeats group, and resolve uses it.
        dedup_key: String,
        /// `critical`, `error`, `warning` or `info`.
        severity: String,
        /// One-line summary.
        summary: String,
    },
    /// See [`ActionKind::ResolvePage`].
    ResolvePage {
        /// Route.
        route: String,
        /// The page's `dedup_key`.
        dedup_key: String,
        /// Why it resolved.
        summary: String,
    },
    /// See [`ActionKind::Notify`].
    Notify {
        /// Route.
        route: String,
        /// One-line summary.
        summary: String,
    },
}

/// One thing to do, with its reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Deterministic id.
    pub action_id: ActionId,
    /// Kind (also implied by `params`).
    pub kind: ActionKind,
    /// Model it concerns.
    pub model: Option<String>,
    /// Model version it concerns.
    pub version: Option<String>,
    /// Why, in one line.
    pub reason: String,
    /// What exactly.
    pub params: ActionParams,
}

/// A rule that fired (or a remark that explains a non-action).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
    /// Rule path, e.g. `default.drift.retrain_at`.
    pub rule: String,
    /// One line.
    pub reason: String,
}

/// A rule that matched but was held back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suppression {
    /// Rule path, e.g. `default.drift.cooldown`, `budget`, `dedupe`.
    pub rule: String,
    /// One line.
    pub reason: String,
    /// The earlier action this signal was absorbed into (cooldowns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub absorbed_into: Option<ActionId>,
    /// When the hold ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

/// Everything decide() concluded about one signal. Serialised with its [`Decision::decision_id`] first, as
/// the decision log keeps it; deserialising recomputes the id rather than reading it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Decision {
    /// The normalised signal (boxed: a decision moves from thread to thread in replay, and stays small).
    pub signal: Box<Signal>,
    /// Decision time (`now`).
    pub at: DateTime<Utc>,
    /// Hash of the policy that decided.
    pub policy_hash: Arc<str>,
    /// Rule that governed the model, if one matched.
    pub rule: Option<Arc<str>>,
    /// Model the decision is about (resolved through monitors when the signal did not name it).
    pub model: Option<String>,
    /// True when the signal had already been decided.
    pub duplicate: bool,
    /// Actions to take.
    pub actions: Vec<Action>,
    /// Rules that fired, and remarks.
    pub fired: Vec<Note>,
    /// Rules held back.
    pub suppressed: Vec<Suppression>,
    /// State changes to record.
    pub changes: Vec<StateChange>,
}

impl Serialize for Decision {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("Decision", 11)?;
        st.serialize_field("decision_id", &self.decision_id())?;
        st.serialize_field("signal", &self.signal)?;
        st.serialize_field("at", &self.at)?;
        st.serialize_field("policy_hash", &self.policy_hash)?;
        st.serialize_field("rule", &self.rule)?;
        st.serialize_field("model", &self.model)?;
        st.serialize_field("duplicate", &self.duplicate)?;
        st.serialize_field("actions", &self.actions)?;
        st.serialize_field("fired", &self.fired)?;
        st.serialize_field("suppressed", &self.suppressed)?;
        st.serialize_field("changes", &self.changes)?;
        st.end()
    }
}

impl Decision {
    /// Decision id: the first 128 bits of SHA-256 over the signal key and the policy hash, in hex. Computed
    /// when asked for, not stored: replay decides millions of signals and never shows it, and it costs a hash
    /// of three blocks.
    pub fn decision_id(&self) -> String {
        // The same bytes as `format!("{key}|{hash}")`, hashed piecewise.
        let digest = Sha256::new()
            .chain_update(&self.signal.key)
            .chain_update(b"|")
            .chain_update(self.policy_hash.as_bytes())
            .finalize();
        hex32(&digest)
    }

    /// A readable one-paragraph account: what arrived, what was done, what was held back and why.
    pub fn explanation(&self) -> String {
        Explanation(self).to_string()
    }

    fn note(&mut self, rule: impl Into<String>, reason: impl Into<String>) {
        push_one(
            &mut self.fired,
            Note {
                rule: rule.into(),
                reason: reason.into(),
            },
        );
    }

    fn hold(&mut self, rule: impl Into<String>, reason: impl Into<String>) {
        push_one(
            &mut self.suppressed,
            Suppression {
                rule: rule.into(),
                reason: reason.into(),
                absorbed_into: None,
                until: None,
            },
        );
    }

    fn act(
        &mut self,
        version: Option<&str>,
        kind: ActionKind,
        identity: &str,
        reason: String,
        params: ActionParams,
    ) -> ActionId {
        let action_id = ActionId::derive(kind, identity);
        push_one(
            &mut self.actions,
            Action {
                action_id: action_id.clone(),
                kind,
                model: self.model.clone(),
                version: version.map(str::to_string),
                reason,
                params,
            },
        );
        action_id
    }

    /// [`Decision::act`] for an action about the fleet rather than the decision's model (the storm page): it
    /// names no model, so it starts no model's cooldown and is not filed under the model whose signal
    /// tipped it.
    fn act_for_the_fleet(
        &mut self,
        version: Option<&str>,
        kind: ActionKind,
        identity: &str,
        reason: String,
        params: ActionParams,
    ) -> ActionId {
        let model = self.model.take();
        let id = self.act(version, kind, identity, reason, params);
        self.model = model;
        id
    }
}

/// [`Decision::explanation`] as `Display`, so that JSON output can stream it without building the string.
pub(crate) struct Explanation<'a>(pub(crate) &'a Decision);

impl Explanation<'_> {
    /// The explanation as the pieces it is made of, in order, each handed to `out`: every piece is text already
    /// (kind, model, version, rule, reasons), so a writer can take them without going through `fmt`.
    pub(crate) fn pieces<E>(&self, out: &mut impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
        let d = self.0;
        // Parts joined with "; ": the subject line, what fired, what was held, and "no action" when idle.
        out(d.signal.kind().as_str())?;
        if let Some(m) = &d.model {
            out(" for ")?;
            out(m)?;
            if let Some(v) = d.signal.version() {
                out(":")?;
                out(v)?;
            }
        }
        if let Some(r) = &d.rule {
            out(" (rule ")?;
            out(r)?;
            out(")")?;
        }
        for n in &d.fired {
            out("; ")?;
            out(&n.reason)?;
        }
        for s in &d.suppressed {
            out("; held: ")?;
            out(&s.reason)?;
        }
        if d.actions.is_empty() {
            out("; no action")?;
        }
        Ok(())
    }
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.pieces(&mut |piece| f.write_str(piece))
    }
}

/// Pushes onto one of a decision's lists, allocating room for exactly one item the first time: most lists
/// hold zero or one, and the default first growth (four items of several hundred bytes) costs more.
fn push_one<T>(list: &mut Vec<T>, item: T) {
    if list.capacity() == 0 {
        list.reserve_exact(1);
    }
    list.push(item);
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn human(d: TimeDelta) -> String {
    humantime::format_duration(d.to_std().unwrap_or_default()).to_string()
}

/// Decides what to do about `signal`. Pure and deterministic: the same inputs give the same decision,
/// including action ids, so a redelivered event can be recognised by what it would do.
///
/// ```
/// use chrono::{TimeZone, Utc};
/// use mlops_relay::events::Inbound;
/// use mlops_relay::domain::Signal;
/// use mlops_relay::policy::{decide, ActionKind, MemoryState, Policy};
///
/// let policy = Policy::parse(include_str!("../../examples/policy.toml")).unwrap();
/// let body = br#"{"id": "w1", "model": "fraud", "metric": "psi", "value": 0.42, "time": "2026-11-02T00:00:00Z"}"#;
/// let inbound = Inbound::parse_delivery_bytes(body).unwrap().remove(0).unwrap();
/// let now = Utc.with_ymd_and_hms(2026, 11, 2, 0, 1, 0).unwrap();
/// let signal = Signal::from_inbound(inbound, now).unwrap();
///
/// let decision = decide(&policy, &signal, &MemoryState::new(), now);
///
/// assert_eq!(decision.actions[0].kind, ActionKind::Retrain); // 0.42 ≥ retrain_at 0.3
/// assert_eq!(decision.suppressed[0].rule, "default.drift.page_at"); // 0.42 < page_at 0.7
/// ```
pub fn decide<S: StateView + ?Sized>(
    policy: &Policy,
    signal: &Signal,
    state: &S,
    now: DateTime<Utc>,
) -> Decision {
    decide_owned(policy, signal.clone(), state, now)
}

/// [`decide`] taking the signal by value: it moves into the decision instead of being copied, which matters
/// when millions of signals are replayed.
pub fn decide_owned<S: StateView + ?Sized>(
    policy: &Policy,
    signal: impl Into<Box<Signal>>,
    state: &S,
    now: DateTime<Utc>,
) -> Decision {
    let signal = signal.into();
    let model = resolve_model(policy, &signal);
    let mut d = Decision {
        signal,
        at: now,
        policy_hash: policy.hash.clone(),
        rule: None,
        model,
        duplicate: false,
        actions: Vec::new(),
        fired: Vec::new(),
        suppressed: Vec::new(),
        changes: Vec::new(),
    };
    if let Some(at) = state.decided_at(&d.signal.key) {
        d.duplicate = true;
        let reason = reason!(
            "duplicate of {} already decided at {}",
            d.signal.event_id,
            ts(at)
        );
        d.hold("dedupe", reason);
        return d;
    }
    // The body is lent to the handlers while they write into `d` (which owns the signal), then put back.
    let body = std::mem::replace(
        &mut d.signal.body,
        SignalBody::Ignored {
            reason: String::new(),
        },
    );
    decide_body(
        &Cx {
            policy,
            state,
            now,
            version: body.version(),
        },
        &mut d,
        &body,
    );
    d.signal.body = body;
    d
}

fn decide_body<S: StateView + ?Sized>(cx: &Cx<'_, S>, d: &mut Decision, body: &SignalBody) {
    match body {
        SignalBody::ModelRegistered {
            model,
            version,
            tags,
            properties,
        } => cx.on_registered(d, model, version, tags, properties),
        SignalBody::ModelDeployed {
            models,
            environment,
            service,
            smoke_test_passed,
            detail,
        } => cx.on_deployed(
            d,
            models,
            environment.as_deref(),
            service.as_deref(),
            *smoke_test_passed,
            detail.as_deref(),
        ),
        SignalBody::RunCompleted { run } => cx.on_run_completed(d, run),
        SignalBody::RunFailed { run, status } => cx.on_run_failed(d, run, status),
        SignalBody::RunStatusChanged { run, status } => {
            d.note(
                "runs",
                reason!(
                    "run {} is now {status}; no rule acts on intermediate statuses",
                    run.run_id
                ),
            );
        }
        SignalBody::Drift(drift) => cx.on_drift(d, drift),
        SignalBody::InfraAlert {
            alert_id,
            rule,
            severity,
            condition,
            targets,
            description,
        } => cx.on_alert(
            d,
            alert_id,
            rule,
            severity,
            *condition,
            targets,
            description.as_deref(),
        ),
        SignalBody::Schedule { name, due } => cx.on_schedule(d, name, *due),
        SignalBody::Approval {
            model,
            version,
            environment,
            approver,
            approve,
            comment,
        } => cx.on_approval(
            d,
            model,
            version,
            environment,
            approver,
            *approve,
            comment.as_deref(),
        ),
        SignalBody::Ignored { reason } => d.note("ignored", reason.clone()),
    }
}

struct Cx<'a, S: StateView + ?Sized> {
    policy: &'a Policy,
    state: &'a S,
    now: DateTime<Utc>,
    /// The signal's model version, stamped on every action.
    version: Option<&'a str>,
}

impl<S: StateView + ?Sized> Cx<'_, S> {
    /// The rule for one version of a model, selected by that version's tags: a rule chosen by another
    /// version's tags (the latest registration's) could skip this version's gates. A version never seen
    /// falls back to the latest registration's tags.
    fn rule_for_version(&self, d: &mut Decision, model: &str, version: &str) -> Option<&Rule> {
        let tags = self
            .selects_by_tags()
            .then(|| self.state.model_tags(model, Some(version)))
            .flatten();
        self.rule_for(d, model, tags.as_deref())
    }

    /// Whether a rule selects models by tags: without one, tags need not be looked up (a copy).
    fn selects_by_tags(&self) -> bool {
        self.policy.rules().iter().any(|r| !r.spec.tags.is_empty())
    }

    fn rule_for(
        &self,
        d: &mut Decision,
        model: &str,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Option<&Rule> {
        let known;
        let tags = match tags {
            Some(t) => Some(t),
            None if !self.selects_by_tags() => None,
            None => {
                known = self.state.model_tags(model, None);
                known.as_deref()
            }
        };
        match self.policy.rule_for(model, tags) {
            Some(rule) => {
                d.rule = Some(rule.name.clone());
                Some(rule)
            }
            None => {
                d.hold("rules", reason!("no rule matches model `{model}`"));
                None
            }
        }
    }

    fn environment(&self, d: &mut Decision, explicit: Option<&str>) -> Option<String> {
        if let Some(env) = explicit {
            if self.policy.spec.environments.contains_key(env) {
                return Some(env.to_string());
            }
            d.hold(
                "environments",
                reason!("environment `{env}` is not in the policy"),
            );
            return None;
        }
        match &d.signal.workspace {
            Some(ws) => match self.policy.environment_of(ws) {
                Some(env) => Some(env.to_string()),
                None => {
                    d.hold(
                        "environments",
                        reason!(
                            "workspace `{}` is not an environment in the policy",
                            ws.workspace
                        ),
                    );
                    None
                }
            },
            None => {
                d.hold(
                    "environments",
                    "the event names no Azure ML workspace (topic/source)",
                );
                None
            }
        }
    }

    fn on_registered(
        &self,
        d: &mut Decision,
        model: &str,
        version: &str,
        tags: &BTreeMap<String, String>,
        properties: &BTreeMap<String, String>,
    ) {
        let tag = &self.policy.spec.approvals.requester_tag;
        let requester = tags.get(tag).or_else(|| properties.get(tag)).cloned();
        // Later gates (prod) read who asked from the remembered tags: a requester named only in the
        // properties is kept there too, or they could approve their own promotion at the next gate.
        let seen = match (&requester, tags.contains_key(tag)) {
            (Some(who), false) => {
                let mut kept = tags.clone();
                kept.insert(tag.clone(), who.clone());
                Arc::new(kept)
            }
            _ => Arc::new(tags.clone()),
        };
        push_one(
            &mut d.changes,
            StateChange::ModelSeen {
                model: model.into(),
                version: version.into(),
                tags: seen,
            },
        );
        let Some(env) = self.environment(d, None) else {
            return;
        };
        let Some(rule) = self.rule_for(d, model, Some(tags)) else {
            return;
        };
        let first = &self.policy.spec.promotion[0];
        if &env != first {
            d.note(
                "promotion",
                reason!("registered in {env}; promotions start from {first}, so nothing to do"),
            );
            return;
        }
        let pending = self.state.pending_approvals(model);
        if let Some(p) = pending.iter().find(|p| newer(&p.version, version)) {
            d.note(
                reason!("{}.gates.{}", rule.spec.name, p.environment),
                reason!(
                    "v{version} arrived after v{}, which is newer and awaits approval for {}; v{version} is not requested",
                    p.version,
                    p.environment
                ),
            );
            return;
        }
        // The request at the gate this version now heads for is promote()'s to supersede; the others (an
        // older version's prod request) are closed here.
        let next = self.policy.next_environment(&env);
        let promoted_through = next.filter(|n| rule.spec.gates.contains_key(*n));
        for p in &pending {
            if p.version != version && Some(p.environment.as_str()) != promoted_through {
                self.supersede(d, rule, model, version, p);
            }
        }
        match next {
            Some(next) => self.promote(
                d,
                rule,
                model,
                version,
                next,
                tags,
                requester,
                &reason!("registered in {env}"),
            ),
            None => d.note("promotion", reason!("{env} is the last environment")),
        }
    }

    /// Closes an older version's pending approval as superseded by `version`, saying so.
    fn supersede(
        &self,
        d: &mut Decision,
        rule: &Rule,
        model: &str,
        version: &str,
        p: &PendingApproval,
    ) {
        d.note(
            reason!("{}.gates.{}", rule.spec.name, p.environment),
            reason!(
                "v{version} supersedes the pending approval of v{} for {}",
                p.version,
                p.environment
            ),
        );
        push_one(
            &mut d.changes,
            StateChange::ApprovalClosed {
                model: model.into(),
                version: p.version.clone(),
                environment: p.environment.clone(),
                outcome: ApprovalOutcome::Superseded,
            },
        );
    }

    /// Moves `model:version` towards `target`: an approval request when a gate stands in front of it, a
    /// deployment when none does.
    #[allow(clippy::too_many_arguments)]
    fn promote(
        &self,
        d: &mut Decision,
        rule: &Rule,
        model: &str,
        version: &str,
        target: &str,
        tags: &BTreeMap<String, String>,
        requester: Option<String>,
        because: &str,
    ) {
        let name = &rule.spec.name;
        if let Some(gate) = rule.spec.gates.get(target) {
            let path = reason!("{name}.gates.{target}");
            if let Some(open) = self
                .state
                .pending_approvals(model)
                .into_iter()
                .find(|p| p.environment == target)
            {
                // An expired request neither waits nor holds a newer version's place, but is still closed.
                let live = open.expires_at > self.now;
                if live && open.version == version {
                    // Asking again would open the request anew and forget the votes cast so far.
                    d.note(
                        path.clone(),
                        reason!(
                            "v{version} already awaits approval for {target} ({} of {} so far, request {})",
                            open.approvals.len(),
                            open.required,
                            open.approval_id
                        ),
                    );
                    return;
                }
                if live && newer(&open.version, version) {
                    d.hold(
                        path.clone(),
                        reason!(
                            "v{}, newer than v{version}, awaits approval for {target}; v{version} does not replace it",
                            open.version
                        ),
                    );
                    return;
                }
                if open.version != version {
                    self.supersede(d, rule, model, version, &open);
                }
            }
            if let Some(champion) = &gate.champion {
                let Some(challenger) = tags.get(&champion.metric).and_then(|v| metric(v)) else {
                    d.hold(
                        reason!("{path}.champion"),
                        reason!(
                            "v{version} has no numeric `{}` tag to compare with the champion",
                            champion.metric
                        ),
                    );
                    return;
                };
                match self.state.production_metric(model, &champion.metric) {
                    Some(prod) => {
                        let best = prod.metric.as_deref().and_then(metric);
                        if let Some(best) = best {
                            let gain = match champion.better {
                                Better::Higher => challenger - best,
                                Better::Lower => best - challenger,
                            };
                            if gain <= champion.min_improvement {
                                d.hold(
                                    reason!("{path}.champion"),
                                    reason!(
                                        "challenger v{version} {} {challenger} does not beat champion v{} ({best}) by more than {}",
                                        champion.metric, prod.version, champion.min_improvement
                                    ),
                                );
                                return;
                            }
                            d.note(
                                reason!("{path}.champion"),
                                reason!(
                                    "challenger {} {challenger} beats champion v{} ({best})",
                                    champion.metric,
                                    prod.version
                                ),
                            );
                        }
                    }
                    None => d.note(
                        reason!("{path}.champion"),
                        reason!("no champion in production yet; v{version} may proceed"),
                    ),
                }
            }
            let expires_at = self.now + rule.gate_expiry[target];
            let route = rule.spec.notify.approvals.clone();
            let identity = reason!("{model}:{version}|{target}");
            let reason = reason!(
                "{because}: v{version} needs {} of {} approvers ({}) before {target}; expires {}",
                gate.required,
                gate.approvers.len(),
                gate.approvers.join(", "),
                ts(expires_at)
            );
            let id = d.act(
                self.version,
                ActionKind::RequestApproval,
                &identity,
                reason.clone(),
                ActionParams::RequestApproval {
                    environment: target.into(),
                    approvers: gate.approvers.clone(),
                    required: gate.required,
                    requester: requester.clone(),
                    expires_at,
                    route: route.clone(),
                    tags: tags.clone(),
                },
            );
            d.note(path, reason);
            if route.is_none() {
                d.note(
                    reason!("{name}.notify.approvals"),
                    "no approvals route: the request is recorded but nobody is told",
                );
            }
            push_one(
                &mut d.changes,
                StateChange::ApprovalOpened(PendingApproval {
                    approval_id: id,
                    model: model.into(),
                    version: version.into(),
                    environment: target.into(),
                    requester,
                    approvers: gate.approvers.clone(),
                    required: gate.required,
                    approvals: Vec::new(),
                    opened_at: self.now,
                    expires_at,
                }),
            );
        } else if let Some(spec) = rule.spec.deploy.get(target) {
            self.deploy(
                d,
                rule,
                model,
                version,
                target,
                spec,
                &reason!("{because}; no gate before {target}"),
            );
        } else {
            d.note(
                reason!("{name}.deploy"),
                reason!("rule {name} has no gate or deployment for {target}; stopping here"),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn deploy(
        &self,
        d: &mut Decision,
        rule: &Rule,
        model: &str,
        version: &str,
        env: &str,
        spec: &DeploySpec,
        because: &str,
    ) {
        let endpoint = endpoint_name(&spec.endpoint, model);
        if !valid_online_name(&endpoint) {
            // Azure ML would refuse the PUT and the deployment would only show up as a dead letter.
            d.hold(
                reason!("{}.deploy.{env}.endpoint", rule.spec.name),
                reason!(
                    "`{endpoint}` is not a valid Azure ML endpoint name (3–32 letters, digits and hyphens, from a letter to a letter or digit): v{version} is not deployed to {env}"
                ),
            );
            return;
        }
        let workspace = self.policy.spec.environments[env].workspace.clone();
        let registry = &self.policy.spec.registry.name;
        let reason = reason!("{because}: deploying v{version} to {env} ({endpoint})");
        d.act(
            self.version,
            ActionKind::Deploy,
            &reason!("{model}:{version}|{env}"),
            reason.clone(),
            ActionParams::Deploy {
                environment: env.into(),
                workspace,
                registry_model_id: reason!(
                    "azureml://registries/{registry}/models/{model}/versions/{version}"
                ),
                endpoint,
                deployment: deployment_name(version),
                instance_type: spec.instance_type.clone(),
                instance_count: spec.instance_count,
                smoke_test: spec.smoke_test.clone(),
            },
        );
        d.note(reason!("{}.deploy.{env}", rule.spec.name), reason);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_approval(
        &self,
        d: &mut Decision,
        model: &str,
        version: &str,
        env: &str,
        approver: &str,
        approve: bool,
        comment: Option<&str>,
    ) {
        let Some(rule) = self.rule_for_version(d, model, version) else {
            return;
        };
        let name = rule.spec.name.clone();
        let path = reason!("{name}.gates.{env}");
        let Some(gate) = rule.spec.gates.get(env) else {
            d.hold(path, reason!("rule {name} has no gate before {env}"));
            return;
        };
        let pending = self
            .state
            .pending_approvals(model)
            .into_iter()
            .find(|p| p.version == version && p.environment == env);
        let Some(pending) = pending else {
            d.hold(path, reason!("no open approval for {model}:{version} into {env} (never requested, superseded or already closed)"));
            return;
        };
        if self.now > pending.expires_at {
            d.hold(
                path,
                reason!("the approval request expired at {}", ts(pending.expires_at)),
            );
            push_one(
                &mut d.changes,
                StateChange::ApprovalClosed {
                    model: model.into(),
                    version: version.into(),
                    environment: env.into(),
                    outcome: ApprovalOutcome::Expired,
                },
            );
            return;
        }
        if !pending
            .approvers
            .iter()
            .any(|a| a.eq_ignore_ascii_case(approver))
        {
            d.hold(path, reason!("{approver} is not an approver for {env}"));
            return;
        }
        let is_requester = pending
            .requester
            .as_deref()
            .is_some_and(|r| r.eq_ignore_ascii_case(approver));
        if is_requester && !gate.requester_may_approve {
            d.hold(
                path,
                reason!("{approver} asked for this promotion and may not approve it"),
            );
            return;
        }
        let why = comment.map(|c| reason!(" (\"{c}\")")).unwrap_or_default();
        if !approve {
            d.note(
                path.clone(),
                reason!("{approver} rejected v{version} for {env}{why}"),
            );
            push_one(
                &mut d.changes,
                StateChange::ApprovalClosed {
                    model: model.into(),
                    version: version.into(),
                    environment: env.into(),
                    outcome: ApprovalOutcome::Rejected,
                },
            );
            if let Some(route) = rule.spec.notify.failures.clone() {
                let summary =
                    reason!("{model}:{version} was rejected for {env} by {approver}{why}");
                d.act(
                    self.version,
                    ActionKind::Notify,
                    &reason!("{}|{route}|rejected", d.signal.key),
                    summary.clone(),
                    ActionParams::Notify { route, summary },
                );
            }
            return;
        }
        if pending
            .approvals
            .iter()
            .any(|a| a.eq_ignore_ascii_case(approver))
        {
            d.hold(
                path,
                reason!("{approver} already approved v{version} for {env}"),
            );
            return;
        }
        let mut votes = pending.approvals.clone();
        votes.push(approver.to_string());
        let count = votes.len() as u32;
        if count < pending.required {
            d.note(
                path,
                reason!("{approver} approved v{version} for {env}{why}: {count} of {} approvals, waiting for {} more", pending.required, pending.required - count),
            );
            push_one(
                &mut d.changes,
                StateChange::ApprovalVoted {
                    model: model.into(),
                    version: version.into(),
                    environment: env.into(),
                    approver: approver.into(),
                },
            );
            return;
        }
        push_one(
            &mut d.changes,
            StateChange::ApprovalClosed {
                model: model.into(),
                version: version.into(),
                environment: env.into(),
                outcome: ApprovalOutcome::Approved,
            },
        );
        let because = reason!(
            "approved by {} ({count} of {})",
            votes.join(", "),
            pending.required
        );
        match rule.spec.deploy.get(env) {
            Some(spec) => self.deploy(d, rule, model, version, env, spec, &because),
            None => d.hold(
                reason!("{name}.deploy.{env}"),
                reason!("{because}, but rule {name} has no deployment for {env}"),
            ),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_deployed(
        &self,
        d: &mut Decision,
        models: &[(String, Option<String>)],
        environment: Option<&str>,
        service: Option<&str>,
        smoke: Option<bool>,
        detail: Option<&str>,
    ) {
        let Some((model, version)) = models.first() else {
            d.note("deployments", "the deployment names no model");
            return;
        };
        let Some(version) = version else {
            d.note(
                "deployments",
                reason!("the deployment of {model} names no version"),
            );
            return;
        };
        let Some(env) = self.environment(d, environment) else {
            return;
        };
        let Some(rule) = self.rule_for_version(d, model, version) else {
            return;
        };
        let name = rule.spec.name.clone();
        let where_ = service.map(|s| reason!(" ({s})")).unwrap_or_default();
        let detail = detail.map(|t| reason!(": {t}")).unwrap_or_default();
        if smoke == Some(false) {
            let summary = reason!(
                "smoke test of {model}:{version} failed in {env}{where_}{detail}; traffic stays on the previous deployment"
            );
            d.note(reason!("{name}.deploy.{env}.smoke_test"), summary.clone());
            match rule.spec.notify.failures.clone() {
                Some(route) => {
                    d.act(
                        self.version,
                        ActionKind::Notify,
                        &reason!("{}|{route}|smoke_failed", d.signal.key),
                        summary.clone(),
                        ActionParams::Notify { route, summary },
                    );
                }
                None => d.hold(
                    reason!("{name}.notify.failures"),
                    "no failures route configured",
                ),
            }
            return;
        }
        let tags = self
            .state
            .model_tags(model, Some(version))
            .unwrap_or_default();
        let Some(next) = self.policy.next_environment(&env) else {
            // The last environment: this version is the new champion and its open pages are over.
            d.note(
                reason!("{name}.deploy.{env}"),
                reason!("{model}:{version} now serves in {env}{where_}"),
            );
            push_one(
                &mut d.changes,
                StateChange::ProductionSet {
                    model: model.clone(),
                    production: ProductionVersion {
                        version: version.clone(),
                        tags: Arc::unwrap_or_clone(tags),
                        since: self.now,
                    },
                },
            );
            for page in self.state.open_pages(Some(model)) {
                let summary = reason!(
                    "{model}:{version} was promoted to {env}; resolving {}",
                    page.dedup_key
                );
                d.act(
                    self.version,
                    ActionKind::ResolvePage,
                    &reason!("{}|{}", d.signal.key, page.dedup_key),
                    summary.clone(),
                    ActionParams::ResolvePage {
                        route: page.route.clone(),
                        dedup_key: page.dedup_key.clone(),
                        summary,
                    },
                );
                push_one(
                    &mut d.changes,
                    StateChange::PageResolved {
                        model: Some(model.clone()),
                        dedup_key: page.dedup_key,
                    },
                );
            }
            if let Some(route) = rule.spec.notify.deployments.clone() {
                let summary = reason!("{model}:{version} is live in {env}{where_}");
                d.act(
                    self.version,
                    ActionKind::Notify,
                    &reason!("{}|{route}|live", d.signal.key),
                    summary.clone(),
                    ActionParams::Notify { route, summary },
                );
            }
            return;
        };
        let wants_smoke = rule
            .spec
            .deploy
            .get(&env)
            .is_some_and(|s| s.smoke_test.is_some());
        if wants_smoke && smoke.is_none() {
            d.hold(
                reason!("{name}.deploy.{env}.smoke_test"),
                reason!("no smoke-test verdict for {model}:{version} in {env}; {next} waits for a passing one"),
            );
            return;
        }
        let verdict = if smoke == Some(true) {
            "passed its smoke test"
        } else {
            "deployed"
        };
        let requester = tags.get(&self.policy.spec.approvals.requester_tag).cloned();
        self.promote(
            d,
            rule,
            model,
            version,
            next,
            &tags,
            requester,
            &reason!("{verdict} in {env}"),
        );
    }

    fn on_run_completed(&self, d: &mut Decision, run: &RunRef) {
        match run.tags.get("mlops-relay.action_id") {
            Some(action) => d.note(
                "runs",
                reason!("retrain {action} completed as run {}; the registration that follows will be gated", run.run_id),
            ),
            None => d.note("runs", reason!("run {} completed; no rule acts on completed runs", run.run_id)),
        }
    }

    fn on_run_failed(&self, d: &mut Decision, run: &RunRef, status: &str) {
        let rule = match run.model.as_deref() {
            Some(model) => self.rule_for(d, model, None),
            None => match self.policy.catch_all_rule() {
                Some(rule) => {
                    d.rule = Some(rule.name.clone());
                    Some(rule)
                }
                None => {
                    d.hold(
                        "rules",
                        reason!(
                            "run {} names no model and no rule matches every model",
                            run.run_id
                        ),
                    );
                    None
                }
            },
        };
        let Some(rule) = rule else { return };
        let origin = match run.tags.get("mlops-relay.action_id") {
            Some(action) => reason!(" (retrain {action})"),
            None => String::new(),
        };
        let experiment = run
            .experiment
            .as_deref()
            .map(|e| reason!(" in experiment {e}"))
            .unwrap_or_default();
        let summary = reason!("run {}{experiment}{origin} ended {status}", run.run_id);
        match rule.spec.notify.failures.clone() {
            Some(route) => {
                d.act(
                    self.version,
                    ActionKind::Notify,
                    &reason!("{}|{route}|run_failed", d.signal.key),
                    summary.clone(),
                    ActionParams::Notify {
                        route,
                        summary: summary.clone(),
                    },
                );
                d.note(reason!("{}.notify.failures", rule.spec.name), summary);
            }
            None => d.hold(
                reason!("{}.notify.failures", rule.spec.name),
                reason!("{summary}, but no failures route is configured"),
            ),
        }
    }

    fn on_drift(&self, d: &mut Decision, drift: &Drift) {
        let model = match (&drift.model, &drift.monitor) {
            (Some(m), _) => m.clone(),
            (None, Some(monitor)) => {
                match self.policy.monitor_model(monitor) {
                    Some(m) => m.to_string(),
                    None => {
                        d.hold("monitors", reason!("monitor `{monitor}` is not mapped to a model; add a [[monitor]] entry"));
                        return;
                    }
                }
            }
            (None, None) => {
                d.hold(
                    "monitors",
                    "the drift report names neither a model nor a monitor",
                );
                return;
            }
        };
        d.model = Some(model.clone());
        let Some(rule) = self.rule_for(d, &model, None) else {
            return;
        };
        let name = rule.spec.name.clone();
        let Some(spec) = &rule.spec.drift else {
            d.hold(
                reason!("{name}.drift"),
                reason!("rule {name} has no drift thresholds"),
            );
            return;
        };
        let what = drift
            .monitor
            .clone()
            .or_else(|| drift.metric.clone())
            .unwrap_or_else(|| "drift".into());
        let (retrain, page, measured) = match drift.value {
            Some(v) => {
                let retrain = spec.retrain_at.map(|t| (v >= t, t));
                let page = spec.page_at.map(|t| (v >= t, t));
                if let Some((false, t)) = retrain {
                    d.hold(
                        reason!("{name}.drift.retrain_at"),
                        reason!("{what} {v} is below the retrain threshold {t}"),
                    );
                }
                if let Some((false, t)) = page {
                    d.hold(
                        reason!("{name}.drift.page_at"),
                        reason!("{what} {v} is below the page threshold {t}"),
                    );
                }
                (
                    retrain
                        .filter(|r| r.0)
                        .map(|(_, t)| reason!("{what} {v} ≥ {t}")),
                    page.filter(|p| p.0)
                        .map(|(_, t)| reason!("{what} {v} ≥ {t}")),
                    reason!("{what} {v}"),
                )
            }
            None => {
                let breach = reason!("{what} breached its monitor's thresholds");
                let actions = spec.breach_actions(rule.spec.retrain.is_some());
                let on = |a: BreachAction| actions.contains(&a).then(|| breach.clone());
                (
                    on(BreachAction::Retrain),
                    on(BreachAction::Page),
                    breach.clone(),
                )
            }
        };
        if let Some(reason) = page {
            let dedup_key = reason!("drift:{model}:{what}");
            let summary = reason!("drift on {model}: {measured}");
            self.page(
                d,
                rule,
                &model,
                dedup_key,
                &spec.page_severity,
                summary,
                reason,
            );
        }
        if let Some(reason) = retrain {
            self.retrain(d, rule, &model, "drift", reason);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn page(
        &self,
        d: &mut Decision,
        rule: &Rule,
        model: &str,
        dedup_key: String,
        severity: &str,
        summary: String,
        reason: String,
    ) {
        let name = &rule.spec.name;
        let Some(route) = rule.spec.notify.pages.clone() else {
            d.hold(
                reason!("{name}.notify.pages"),
                reason!("{reason}, but no pages route is configured"),
            );
            return;
        };
        if let Some(held) = self.cooldown(rule, model, ActionKind::Page) {
            push_one(&mut d.suppressed, held);
            return;
        }
        d.act(
            self.version,
            ActionKind::Page,
            &reason!("{}|{dedup_key}", d.signal.key),
            reason.clone(),
            ActionParams::Page {
                route: route.clone(),
                dedup_key: dedup_key.clone(),
                severity: severity.into(),
                summary,
            },
        );
        d.note(
            reason!("{name}.drift.page_at"),
            reason!("page {route}: {reason}"),
        );
        push_one(
            &mut d.changes,
            StateChange::PageOpened {
                model: Some(model.into()),
                page: OpenPage {
                    dedup_key,
                    route,
                    opened_at: self.now,
                },
            },
        );
    }

    fn cooldown(&self, rule: &Rule, model: &str, kind: ActionKind) -> Option<Suppression> {
        debug_assert!(kind.has_cooldown(), "states keep no last {kind}");
        let window = rule.cooldown?;
        let last = self.state.last_action(model, kind)?;
        let until = last.at + window;
        (self.now < until).then(|| Suppression {
            rule: reason!("{}.drift.cooldown", rule.spec.name),
            reason: reason!(
                "{kind} absorbed into {} of {}; {model}'s {} cooldown ends {}",
                last.action_id,
                ts(last.at),
                human(window),
                ts(until)
            ),
            absorbed_into: Some(last.action_id),
            until: Some(until),
        })
    }

    fn retrain(&self, d: &mut Decision, rule: &Rule, model: &str, trigger: &str, reason: String) {
        let name = &rule.spec.name;
        let Some(spec) = &rule.spec.retrain else {
            d.hold(
                reason!("{name}.retrain"),
                reason!("{reason}, but rule {name} has no retrain pipeline"),
            );
            return;
        };
        if let Some(held) = self.cooldown(rule, model, ActionKind::Retrain) {
            push_one(&mut d.suppressed, held);
            return;
        }
        if let Some(budget) = &self.policy.budget {
            let since = self.now - budget.window;
            let used = self.state.retrains_since(since);
            if used.len() as u32 >= budget.max_retrains {
                let next_slot = used.first().map(|t| *t + budget.window).unwrap_or(self.now);
                push_one(
                    &mut d.suppressed,
                    Suppression {
                        rule: "budget".into(),
                        reason: reason!(
                            "retrain of {model} held: the fleet used its {} retrains in {}; next slot at {}",
                            budget.max_retrains,
                            human(budget.window),
                            ts(next_slot)
                        ),
                        absorbed_into: None,
                        until: Some(next_slot),
                    },
                );
                push_one(
                    &mut d.changes,
                    StateChange::RetrainHeldByBudget {
                        model: model.into(),
                    },
                );
                self.storm_breaker(d, since);
                return;
            }
        }
        let env = spec
            .environment
            .clone()
            .unwrap_or_else(|| self.policy.spec.promotion[0].clone());
        let workspace = self.policy.spec.environments[&env].workspace.clone();
        let mut inputs = spec.inputs.clone();
        inputs.insert("trigger".into(), trigger.into());
        inputs.insert("trigger_event_id".into(), d.signal.event_id.clone());
        d.act(
            self.version,
            ActionKind::Retrain,
            &reason!("{}|{model}", d.signal.key),
            reason.clone(),
            ActionParams::Retrain {
                environment: env.clone(),
                workspace,
                pipeline: spec.pipeline.clone(),
                experiment: spec
                    .experiment
                    .clone()
                    .unwrap_or_else(|| reason!("{model}-retrain"))
                    .replace("{model}", model),
                compute: spec.compute.clone(),
                inputs,
            },
        );
        let path = if trigger == "drift" {
            reason!("{name}.drift.retrain_at")
        } else {
            reason!("schedule.{trigger}")
        };
        d.note(path, reason!("retrain {model} in {env}: {reason}"));
    }

    fn storm_breaker(&self, d: &mut Decision, since: DateTime<Utc>) {
        let Some(budget) = &self.policy.budget else {
            return;
        };
        let (Some(after), Some(route)) = (budget.storm_after, budget.storm_route.clone()) else {
            return;
        };
        let held = self.state.held_since(since) + 1;
        if held < after {
            return;
        }
        if self.state.last_storm_page().is_some_and(|t| t >= since) {
            d.hold(
                "budget.storm_after",
                reason!(
                    "retrain storm already paged within {}",
                    human(budget.window)
                ),
            );
            return;
        }
        let summary = reason!(
            "retrain storm: {held} retrains held by the fleet budget in {}",
            human(budget.window)
        );
        let dedup_key = "retrain-storm".to_string();
        d.act_for_the_fleet(
            self.version,
            ActionKind::Page,
            &reason!("{}|{dedup_key}", d.signal.key),
            summary.clone(),
            ActionParams::Page {
                route: route.clone(),
                dedup_key: dedup_key.clone(),
                severity: "critical".into(),
                summary: summary.clone(),
            },
        );
        d.note("budget.storm_after", summary);
        push_one(&mut d.changes, StateChange::StormPaged);
        push_one(
            &mut d.changes,
            StateChange::PageOpened {
                model: None,
                page: OpenPage {
                    dedup_key,
                    route,
                    opened_at: self.now,
                },
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn on_alert(
        &self,
        d: &mut Decision,
        alert_id: &str,
        alert_rule: &str,
        severity: &str,
        condition: AlertCondition,
        targets: &[String],
        description: Option<&str>,
    ) {
        let Some(infra) = &self.policy.spec.infra else {
            d.hold(
                "infra",
                "no [infra] section: alerts are recorded, not paged",
            );
            return;
        };
        let dedup_key = reason!("infra:{alert_id}");
        let target = targets
            .first()
            .map(|t| t.rsplit('/').next().unwrap_or(t))
            .unwrap_or("?");
        match condition {
            AlertCondition::Fired => {
                // An alert id names one alert instance, which resolves once (a new firing is a new instance),
                // so a "fired" after its "resolved" is a late delivery: paging now would open a page whose
                // resolution was already sent.
                let resolved = AlertCondition::key(alert_id, AlertCondition::Resolved);
                if let Some(at) = self.state.decided_at(&resolved) {
                    d.hold(
                        "infra",
                        reason!("{alert_rule} on {target} was already resolved ({}); its late fired notice opens no page", ts(at)),
                    );
                    return;
                }
                let (sev, min) = (sev_rank(severity), sev_rank(&infra.min_severity));
                if sev > min {
                    d.hold(
                        "infra.min_severity",
                        reason!(
                            "{alert_rule} is {severity}, below the paging threshold {}",
                            infra.min_severity
                        ),
                    );
                    return;
                }
                let summary = reason!(
                    "{alert_rule} fired on {target} ({severity}){}",
                    description.map(|t| reason!(": {t}")).unwrap_or_default()
                );
                d.act(
                    self.version,
                    ActionKind::Page,
                    &reason!("{}|{dedup_key}", d.signal.key),
                    summary.clone(),
                    ActionParams::Page {
                        route: infra.route.clone(),
                        dedup_key: dedup_key.clone(),
                        severity: pagerduty_severity(sev).into(),
                        summary: summary.clone(),
                    },
                );
                d.note("infra", summary);
                push_one(
                    &mut d.changes,
                    StateChange::PageOpened {
                        model: None,
                        page: OpenPage {
                            dedup_key,
                            route: infra.route.clone(),
                            opened_at: self.now,
                        },
                    },
                );
            }
            AlertCondition::Resolved => {
                let summary = reason!("{alert_rule} resolved on {target}");
                d.act(
                    self.version,
                    ActionKind::ResolvePage,
                    &reason!("{}|{dedup_key}", d.signal.key),
                    summary.clone(),
                    ActionParams::ResolvePage {
                        route: infra.route.clone(),
                        dedup_key: dedup_key.clone(),
                        summary: summary.clone(),
                    },
                );
                d.note("infra", summary);
                push_one(
                    &mut d.changes,
                    StateChange::PageResolved {
                        model: None,
                        dedup_key,
                    },
                );
            }
        }
    }

    fn on_schedule(&self, d: &mut Decision, name: &str, due: DateTime<Utc>) {
        let Some(schedule) = self.policy.schedule(name) else {
            d.hold(
                "schedules",
                reason!("schedule `{name}` is not in the policy"),
            );
            return;
        };
        let model = schedule.spec.model.clone();
        d.model = Some(model.clone());
        let Some(rule) = self.rule_for(d, &model, None) else {
            return;
        };
        let reason = reason!(
            "schedule {name} ({} {}) due {}",
            schedule.spec.cron,
            schedule.spec.time_zone,
            ts(due)
        );
        self.retrain(d, rule, &model, name, reason);
    }
}

/// The model a signal is about: named by it, or through the policy (monitor mapping, schedule target).
fn resolve_model(policy: &Policy, signal: &Signal) -> Option<String> {
    match &signal.body {
        SignalBody::Drift(Drift {
            model: None,
            monitor: Some(monitor),
            ..
        }) => policy.monitor_model(monitor).map(str::to_string),
        SignalBody::Schedule { name, .. } => policy.schedule(name).map(|s| s.spec.model.clone()),
        _ => signal.model().map(str::to_string),
    }
}

/// A metric tag's value as a number: finite only, so that `NaN` (which every comparison fails) or `inf`
/// can neither beat a champion nor be one.
fn metric(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Whether version `a` is newer than `b`. Azure ML versions are mostly integers, compared as numbers ("10"
/// after "9"); versions that are not both integers have no order here, and the later event wins.
fn newer(a: &str, b: &str) -> bool {
    match (a.trim().parse::<u64>(), b.trim().parse::<u64>()) {
        (Ok(a), Ok(b)) => a > b,
        _ => false,
    }
}

/// The deployment of a version on its endpoint: `v{version}` in lower case, each character a deployment
/// name cannot hold written as `-`; `version-{version}` where that would be under 3 characters (`v7`), which
/// Azure ML refuses (see [`valid_online_name`]).
fn deployment_name(version: &str) -> String {
    let cleaned = online_name_chars(version).to_ascii_lowercase();
    let cleaned = cleaned.trim_matches('-');
    let mut name = if cleaned.len() >= 2 {
        reason!("v{cleaned}")
    } else {
        reason!("version-{cleaned}")
    };
    name.truncate(32);
    name.trim_end_matches('-').to_string()
}

/// The endpoint of a deployment: the rule's `endpoint` with `{model}` filled in, each character of the model
/// name an endpoint name cannot hold (`_`, `.`) written as `-`.
pub fn endpoint_name(template: &str, model: &str) -> String {
    template.replace("{model}", &online_name_chars(model))
}

/// `text` with each character an endpoint or deployment name cannot hold written as `-`.
fn online_name_chars(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Whether `name` may name an Azure ML online endpoint or deployment: 3–32 letters, digits and hyphens,
/// starting with a letter and ending with a letter or digit (the rule of azure-ai-ml's
/// `validate_endpoint_or_deployment_name`; an endpoint's name is also part of its host name).
pub fn valid_online_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=32).contains(&b.len())
        && b[0].is_ascii_alphabetic()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

fn sev_rank(severity: &str) -> u8 {
    severity
        .trim()
        .trim_start_matches(['S', 's'])
        .trim_start_matches(['E', 'e'])
        .trim_start_matches(['V', 'v'])
        .parse()
        .unwrap_or(4)
}

fn pagerduty_severity(rank: u8) -> &'static str {
    match rank {
        0 => "critical",
        1 => "error",
        2 => "warning",
        _ => "info",
    }
}
