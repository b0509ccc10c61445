//! Validation of a policy file: every problem is reported with its line and column, and a policy that
//! passes is compiled into a [`Policy`] that decide() can trust (routes exist, environments exist, durations
//! and schedules parse).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::TimeDelta;
use sha2::{Digest, Sha256};
use toml::de::{DeTable, DeValue};
use wildmatch::WildMatch;

use super::schedule::Schedule;
use super::spec::{PolicySpec, RouteKind};
use super::{Budget, Policy, Rule};
use crate::domain::hex32;

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted path of the offending key, e.g. `rule[0].gates.staging.required`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}:{}: {}", self.line, self.column, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.line, self.column, self.path, self.message
            )
        }
    }
}

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

struct Problems<'a> {
    text: &'a str,
    doc: Option<toml::Spanned<DeTable<'a>>>,
    found: Vec<Diagnostic>,
}

impl<'a> Problems<'a> {
    fn push(&mut self, path: &[Seg], message: impl Into<String>) {
        let offset = self.locate(path);
        let (line, column) = line_col(self.text, offset);
        self.found.push(Diagnostic {
            line,
            column,
            path: render(path),
            message: message.into(),
        });
    }

    /// Byte offset of the deepest part of `path` that exists in the document.
    fn locate(&self, path: &[Seg]) -> usize {
        let Some(doc) = &self.doc else { return 0 };
        let mut best = doc.span().start;
        let mut table: Option<&DeTable<'a>> = Some(doc.get_ref());
        let mut current: Option<&toml::Spanned<DeValue<'a>>> = None;
        for seg in path {
            let next = match (seg, table, current.map(|c| c.get_ref())) {
                (Seg::Key(k), Some(t), _) => t.get(k.as_str()),
                (Seg::Index(i), _, Some(DeValue::Array(items))) => items.get(*i),
                _ => None,
            };
            let Some(value) = next else { break };
            best = value.span().start;
            table = match value.get_ref() {
                DeValue::Table(t) => Some(t),
                _ => None,
            };
            current = Some(value);
        }
        best
    }
}

fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

macro_rules! path {
    ($($seg:expr),* $(,)?) => { [$(Seg::from($seg)),*] };
}

impl From<&str> for Seg {
    fn from(s: &str) -> Seg {
        Seg::Key(s.to_string())
    }
}
impl From<&String> for Seg {
    fn from(s: &String) -> Seg {
        Seg::Key(s.clone())
    }
}
impl From<usize> for Seg {
    fn from(i: usize) -> Seg {
        Seg::Index(i)
    }
}

fn duration(p: &mut Problems<'_>, path: &[Seg], text: &str) -> Option<TimeDelta> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => {
            p.push(path, "must be longer than zero");
            None
        }
        Ok(d) => TimeDelta::from_std(d).ok(),
        Err(e) => {
            p.push(
                path,
                format!("`{text}` is not a duration ({e}); write e.g. `30m`, `6h`, `7d`"),
            );
            None
        }
    }
}

impl Policy {
    /// Parses and validates a policy. On failure returns every problem found, each with line and column.
    pub fn parse(text: &str) -> Result<Policy, Vec<Diagnostic>> {
        let (doc, syntax) = DeTable::parse_recoverable(text);
        let mut p = Problems {
            text,
            doc: None,
            found: Vec::new(),
        };
        if !syntax.is_empty() {
            for e in syntax {
                let (line, column) = line_col(text, e.span().map(|s| s.start).unwrap_or(0));
                p.found.push(Diagnostic {
                    line,
                    column,
                    path: String::new(),
                    message: e.message().trim().to_string(),
                });
            }
            return Err(p.found);
        }
        p.doc = Some(doc);
        let spec: PolicySpec = match toml::from_str(text) {
            Ok(spec) => spec,
            Err(e) => {
                let (line, column) = line_col(text, e.span().map(|s| s.start).unwrap_or(0));
                p.found.push(Diagnostic {
                    line,
                    column,
                    path: String::new(),
                    message: e.message().trim().to_string(),
                });
                return Err(p.found);
            }
        };
        let policy = compile(&mut p, spec);
        if p.found.is_empty() {
            Ok(policy.expect("no problems means compiled"))
        } else {
            p.found.sort_by_key(|d| (d.line, d.column));
            Err(p.found)
        }
    }
}

fn compile(p: &mut Problems<'_>, spec: PolicySpec) -> Option<Policy> {
    let envs: BTreeSet<&String> = spec.environments.keys().collect();
    if spec.environments.is_empty() {
        p.push(&path!["environments"], "at least one environment is needed");
    }
    for (name, env) in &spec.environments {
        if env.workspace.trim().is_empty() {
            p.push(
                &path!["environments", name, "workspace"],
                "must name an Azure ML workspace",
            );
        }
    }
    if spec.promotion.is_empty() {
        p.push(
            &path!["promotion"],
            "list the environments in promotion order, e.g. [\"dev\", \"staging\", \"prod\"]",
        );
    }
    let mut seen = BTreeSet::new();
    for (i, env) in spec.promotion.iter().enumerate() {
        if !envs.contains(env) {
            p.push(
                &path!["promotion", i],
                format!("`{env}` is not defined under [environments]"),
            );
        }
        if !seen.insert(env) {
            p.push(&path!["promotion", i], format!("`{env}` appears twice"));
        }
    }
    for env in &envs {
        if !spec.promotion.contains(env) {
            p.push(
                &path!["environments", *env],
                format!("`{env}` is not in `promotion`"),
            );
        }
    }
    if spec.registry.name.trim().is_empty() {
        p.push(&path!["registry", "name"], "must name an Azure ML registry");
    }
    let dedupe_window = duration(p, &path!["dedupe", "window"], &spec.dedupe.window);
    if let Some(window) = dedupe_window
        && window < TimeDelta::hours(24)
    {
        // Event Grid retries an event for up to 24 hours: one it redelivers after the window is decided
        // again, and although its actions are not sent twice (their ids are in the ledger), it counts again
        // against the fleet budget and restarts the cooldowns.
        p.push(
            &path!["dedupe", "window"],
            "must be at least 24h: Event Grid redelivers an event for up to 24 hours",
        );
    }

    let route_ok = |p: &mut Problems<'_>, path: &[Seg], route: &Option<String>| {
        if let Some(r) = route
            && !spec.routes.contains_key(r)
        {
            let known: Vec<&str> = spec.routes.keys().map(String::as_str).collect();
            let hint = if known.is_empty() {
                "no routes are defined".to_string()
            } else {
                format!("known: {}", known.join(", "))
            };
            p.push(
                path,
                format!("route `{r}` is not defined under [routes] ({hint})"),
            );
        }
    };
    for (name, route) in &spec.routes {
        match route.kind {
            RouteKind::Pagerduty if route.routing_key_setting.is_none() => p.push(
                &path!["routes", name],
                "a pagerduty route needs `routing_key_setting` (the app setting holding the key)",
            ),
            RouteKind::Teams | RouteKind::Slack | RouteKind::Webhook
                if route.url_setting.is_none() =>
            {
                p.push(
                    &path!["routes", name],
                    "this route needs `url_setting` (the app setting holding the webhook URL)",
                )
            }
            _ => {}
        }
    }

    let budget = spec.budget.as_ref().and_then(|b| {
        if b.max_retrains == 0 {
            p.push(
                &path!["budget", "max_retrains"],
                "must be at least 1 (remove [budget] for no limit)",
            );
        }
        if b.storm_after == Some(0) {
            p.push(&path!["budget", "storm_after"], "must be at least 1");
        }
        if b.storm_after.is_some() && b.storm_route.is_none() {
            p.push(&path!["budget"], "`storm_after` needs a `storm_route`");
        }
        route_ok(p, &path!["budget", "storm_route"], &b.storm_route);
        let window = duration(p, &path!["budget", "window"], &b.window)?;
        Some(Budget {
            max_retrains: b.max_retrains,
            window,
            storm_after: b.storm_after,
            storm_route: b.storm_route.clone(),
        })
    });

    for (i, m) in spec.monitors.iter().enumerate() {
        if m.name.trim().is_empty() {
            p.push(&path!["monitor", i, "name"], "must not be empty");
        }
        if m.model.trim().is_empty() {
            p.push(&path!["monitor", i, "model"], "must not be empty");
        }
    }
    if let Some(infra) = &spec.infra {
        route_ok(p, &path!["infra", "route"], &Some(infra.route.clone()));
        let sev = infra.min_severity.trim();
        if !(sev.len() == 4
            && sev[..3].eq_ignore_ascii_case("sev")
            && matches!(&sev[3..], "0" | "1" | "2" | "3" | "4"))
        {
            p.push(
                &path!["infra", "min_severity"],
                format!("`{sev}` is not an Azure Monitor severity (Sev0..Sev4)"),
            );
        }
    }

    if spec.rules.is_empty() {
        p.push(&path![], "no [[rule]]: nothing would ever happen");
    }
    let mut rules = Vec::new();
    let mut names = BTreeSet::new();
    let first = spec.promotion.first();
    for (i, r) in spec.rules.iter().enumerate() {
        let at = |rest: &[Seg]| {
            let mut v = vec![Seg::from("rule"), Seg::from(i)];
            v.extend(rest.iter().cloned());
            v
        };
        if !names.insert(&r.name) {
            p.push(
                &at(&path!["name"]),
                format!("rule name `{}` is used twice", r.name),
            );
        }
        if r.models.is_empty() {
            p.push(
                &at(&path!["models"]),
                "list at least one model glob (`*` for all)",
            );
        }
        for (env, gate) in &r.gates {
            let gp = |k: &str| at(&path!["gates", env, k]);
            if !envs.contains(env) {
                p.push(
                    &at(&path!["gates", env]),
                    format!("`{env}` is not defined under [environments]"),
                );
            } else if Some(env) == first {
                p.push(&at(&path!["gates", env]), format!("`{env}` is where models are registered; gates stand before later environments"));
            }
            if gate.approvers.is_empty() {
                p.push(&gp("approvers"), "a gate needs at least one approver");
            }
            let distinct: BTreeSet<String> = gate
                .approvers
                .iter()
                .map(|a| a.to_ascii_lowercase())
                .collect();
            if distinct.len() != gate.approvers.len() {
                p.push(&gp("approvers"), "an approver is listed twice");
            }
            if gate.required == 0 || gate.required as usize > distinct.len() {
                p.push(
                    &gp("required"),
                    format!(
                        "must be between 1 and the number of approvers ({})",
                        distinct.len()
                    ),
                );
            }
            if !r.deploy.contains_key(env) {
                p.push(
                    &at(&path!["gates", env]),
                    format!("a gate before `{env}` needs a deployment target [rule.deploy.{env}]"),
                );
            }
            if let Some(c) = &gate.champion {
                if c.metric.trim().is_empty() {
                    p.push(&gp("champion"), "`metric` must name a model tag");
                }
                if !c.min_improvement.is_finite() {
                    // NaN fails every comparison: the challenger would always pass.
                    p.push(&gp("champion"), "`min_improvement` must be a finite number");
                }
            }
        }
        for (env, d) in &r.deploy {
            if !envs.contains(env) {
                p.push(
                    &at(&path!["deploy", env]),
                    format!("`{env}` is not defined under [environments]"),
                );
            }
            if d.endpoint.trim().is_empty() {
                p.push(
                    &at(&path!["deploy", env, "endpoint"]),
                    "must name an online endpoint",
                );
            } else if !super::decide::valid_online_name(&super::decide::endpoint_name(
                &d.endpoint,
                "model",
            )) {
                // With a short model name: what the template itself adds must fit an endpoint name.
                p.push(
                    &at(&path!["deploy", env, "endpoint"]),
                    "must give an Azure ML endpoint name: 3–32 letters, digits and hyphens, from a letter to a letter or digit (`{model}` is filled in with `_` and `.` as `-`)",
                );
            }
            if d.instance_count == 0 {
                p.push(
                    &at(&path!["deploy", env, "instance_count"]),
                    "must be at least 1",
                );
            }
            if let Some(smoke) = &d.smoke_test
                && serde_json::from_str::<serde_json::Value>(&smoke.request).is_err()
            {
                p.push(
                    &at(&path!["deploy", env, "smoke_test", "request"]),
                    "must be a JSON document",
                );
            }
        }
        let mut cooldown = None;
        if let Some(drift) = &r.drift {
            for (key, value) in [("retrain_at", drift.retrain_at), ("page_at", drift.page_at)] {
                if let Some(v) = value
                    && !(v.is_finite() && v >= 0.0)
                {
                    p.push(&at(&path!["drift", key]), "must be a number ≥ 0");
                }
            }
            let on_breach = drift.breach_actions(r.retrain.is_some());
            if drift.retrain_at.is_none() && drift.page_at.is_none() && on_breach.is_empty() {
                p.push(
                    &at(&path!["drift"]),
                    "set `retrain_at`, `page_at` or `on_breach`",
                );
            }
            if !matches!(
                drift.page_severity.as_str(),
                "critical" | "error" | "warning" | "info"
            ) {
                p.push(
                    &at(&path!["drift", "page_severity"]),
                    "must be one of critical, error, warning, info",
                );
            }
            if (drift.page_at.is_some() || on_breach.contains(&super::spec::BreachAction::Page))
                && r.notify.pages.is_none()
            {
                p.push(
                    &at(&path!["drift"]),
                    "pages are configured but [rule.notify] has no `pages` route",
                );
            }
            if (drift.retrain_at.is_some()
                || on_breach.contains(&super::spec::BreachAction::Retrain))
                && r.retrain.is_none()
            {
                p.push(
                    &at(&path!["drift"]),
                    "retrains are configured but the rule has no [rule.retrain] pipeline",
                );
            }
            cooldown = duration(p, &at(&path!["drift", "cooldown"]), &drift.cooldown);
        }
        if let Some(rt) = &r.retrain {
            if rt.pipeline.trim().is_empty() {
                p.push(
                    &at(&path!["retrain", "pipeline"]),
                    "must name a registered pipeline component",
                );
            }
            if let Some(env) = &rt.environment
                && !envs.contains(env)
            {
                p.push(
                    &at(&path!["retrain", "environment"]),
                    format!("`{env}` is not defined under [environments]"),
                );
            }
        }
        route_ok(p, &at(&path!["notify", "approvals"]), &r.notify.approvals);
        route_ok(p, &at(&path!["notify", "failures"]), &r.notify.failures);
        route_ok(p, &at(&path!["notify", "pages"]), &r.notify.pages);
        route_ok(
            p,
            &at(&path!["notify", "deployments"]),
            &r.notify.deployments,
        );
        let mut gate_expiry = BTreeMap::new();
        for (env, gate) in &r.gates {
            if let Some(d) = duration(p, &at(&path!["gates", env, "expires"]), &gate.expires) {
                if let Some(window) = dedupe_window
                    && d > window
                {
                    // A used link is refused because its use is remembered as a decided signal, and
                    // decided signals are forgotten after the dedupe window.
                    p.push(
                        &at(&path!["gates", env, "expires"]),
                        format!(
                            "must not be longer than [dedupe] window ({}): an approval link is single-use only while its use is remembered",
                            spec.dedupe.window
                        ),
                    );
                }
                gate_expiry.insert(env.clone(), d);
            }
        }
        rules.push(Rule {
            spec: r.clone(),
            name: r.name.as_str().into(),
            globs: r.models.iter().map(|g| WildMatch::new(g)).collect(),
            cooldown,
            gate_expiry,
        });
    }

    let mut schedules = Vec::new();
    let mut schedule_names = BTreeSet::new();
    for (i, s) in spec.schedules.iter().enumerate() {
        if !schedule_names.insert(&s.name) {
            p.push(
                &path!["schedule", i, "name"],
                format!("schedule name `{}` is used twice", s.name),
            );
        }
        let window = match &s.catch_up_window {
            Some(w) => duration(p, &path!["schedule", i, "catch_up_window"], w)
                .unwrap_or(TimeDelta::days(1)),
            None => TimeDelta::days(1),
        };
        // The rule a schedule meets is chosen by the model's tags when it fires, which a check cannot know:
        // a rule that holds whatever the tags, else one that selects by tags and could retrain.
        let rule = rules
            .iter()
            .find(|r| r.matches(&s.model, None))
            .or_else(|| {
                rules
                    .iter()
                    .find(|r| r.names(&s.model) && r.spec.retrain.is_some())
            });
        match rule {
            Some(rule) if rule.spec.retrain.is_none() => p.push(
                &path!["schedule", i, "model"],
                format!(
                    "rule `{}` governs `{}` but has no [rule.retrain] pipeline",
                    rule.spec.name, s.model
                ),
            ),
            None => p.push(
                &path!["schedule", i, "model"],
                format!("no rule governs model `{}`", s.model),
            ),
            Some(_) => {}
        }
        match Schedule::new(s.clone(), window) {
            Ok(schedule) => schedules.push(schedule),
            Err(errors) => {
                for (field, message) in errors {
                    p.push(&path!["schedule", i, field], message);
                }
            }
        }
    }

    let canonical = serde_json::to_string(&spec).expect("policy serialises");
    let hash = hex32(&Sha256::digest(canonical.as_bytes()));
    Some(Policy {
        spec,
        hash: hash.into(),
        dedupe_window: dedupe_window?,
        budget,
        rules,
        schedules,
    })
}

/// The JSON Schema of the policy file, generated from its types (for editor completion and validation).
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(PolicySpec)).expect("schema serialises")
}
