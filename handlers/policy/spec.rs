//! The policy file as written (TOML). These types are also the source of the JSON Schema shipped in
//! `schema/policy.schema.json`; validation and compilation into a [`super::Policy`] live in `check.rs`.
//!
//! Durations are written as `30m`, `6h`, `7d`. Secrets never appear here: routes name the app setting
//! (environment variable) that holds a webhook URL or a PagerDuty routing key.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The whole policy file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Environments by name, each an Azure ML workspace.
    pub environments: BTreeMap<String, EnvironmentSpec>,
    /// Promotion order, first to last, e.g. `["dev", "staging", "prod"]`. Models are registered in the
    /// first environment and cross the others through the registry.
    pub promotion: Vec<String>,
    /// The Azure ML registry models are promoted through.
    pub registry: RegistrySpec,
    /// Deduplication of inbound events.
    #[serde(default)]
    pub dedupe: DedupeSpec,
    /// Where approval pages are served.
    #[serde(default)]
    pub approvals: ApprovalSettings,
    /// Fleet-wide retrain budget and storm breaker.
    #[serde(default)]
    pub budget: Option<BudgetSpec>,
    /// Notification routes by name.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteSpec>,
    /// Drift monitors that do not name a model (legacy dataset monitors, model monitoring v2), mapped to one.
    #[serde(default, rename = "monitor")]
    pub monitors: Vec<MonitorSpec>,
    /// Infrastructure alerts (Azure Monitor) handling.
    #[serde(default)]
    pub infra: Option<InfraSpec>,
    /// Rules, matched in order: the first whose selector matches a model governs it.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleSpec>,
    /// Schedules (NCRONTAB, 6 fields).
    #[serde(default, rename = "schedule")]
    pub schedules: Vec<ScheduleSpec>,
}

/// An environment: one Azure ML workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSpec {
    /// Workspace name, e.g. `mlw-dev`.
    pub workspace: String,
    /// Subscription id; when set, events must come from it to count as this environment.
    #[serde(default)]
    pub subscription: Option<String>,
    /// Resource group; when set, events must come from it to count as this environment.
    #[serde(default)]
    pub resource_group: Option<String>,
}

/// The Azure ML registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistrySpec {
    /// Registry name, e.g. `mlr-shared`.
    pub name: String,
}

/// Deduplication settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupeSpec {
    /// How long an event id is remembered. Event Grid retries for up to 24 h, so keep at least `1d`.
    #[serde(default = "default_dedupe_window")]
    pub window: String,
}

impl Default for DedupeSpec {
    fn default() -> Self {
        DedupeSpec {
            window: default_dedupe_window(),
        }
    }
}

fn default_dedupe_window() -> String {
    "7d".into()
}

/// Approval page settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSettings {
    /// Public base URL of mlops-relay, for links in approval requests, e.g. `https://relay.contoso.com`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Model tag (or property) naming who asked for the promotion; that person may not approve it.
    #[serde(default = "default_requester_tag")]
    pub requester_tag: String,
}

// Not derived: a derived Default would leave `requester_tag` empty when [approvals] is absent.
impl Default for ApprovalSettings {
    fn default() -> Self {
        ApprovalSettings {
            base_url: None,
            requester_tag: default_requester_tag(),
        }
    }
}

fn default_requester_tag() -> String {
    "owner".into()
}

/// Fleet-wide retrain budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// At most this many retrains across all models...
    pub max_retrains: u32,
    /// ...within this sliding window, e.g. `24h`.
    pub window: String,
    /// After this many retrains were held back by the budget within the window, send one storm page.
    #[serde(default)]
    pub storm_after: Option<u32>,
    /// Route for the storm page.
    #[serde(default)]
    pub storm_route: Option<String>,
}

/// Kind of notification target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    /// Microsoft Teams Workflows webhook (Adaptive Card).
    Teams,
    /// Slack incoming webhook (blocks).
    Slack,
    /// PagerDuty Events API v2.
    Pagerduty,
    /// Any HTTPS endpoint taking our JSON.
    Webhook,
}

/// A notification route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Target kind.
    pub kind: RouteKind,
    /// App setting holding the webhook URL (Teams, Slack, webhook).
    #[serde(default)]
    pub url_setting: Option<String>,
    /// App setting holding the PagerDuty routing key.
    #[serde(default)]
    pub routing_key_setting: Option<String>,
}

/// Maps a monitor that does not name a model to the model it watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MonitorSpec {
    /// Legacy dataset monitor name, or model-monitoring v2 monitor name (its signals are named
    /// `<monitor>_<signal>`).
    pub name: String,
    /// Model it watches.
    pub model: String,
}

/// Infrastructure alert handling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InfraSpec {
    /// Route that receives pages for fired alerts (and their resolution).
    pub route: String,
    /// Page only for this severity or worse (`Sev0` is worst). Default `Sev2`.
    #[serde(default = "default_min_severity")]
    pub min_severity: String,
}

fn default_min_severity() -> String {
    "Sev2".into()
}

/// A rule: which models it governs and what happens to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Rule name, used in decisions and logs.
    pub name: String,
    /// Model name globs (`*`, `?`), e.g. `["fraud-*"]`. Default: every model.
    #[serde(default = "default_models")]
    pub models: Vec<String>,
    /// Model tags that must all be present with these values (matched against the latest registration).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Approval gates by target environment: a model enters that environment only when approved.
    #[serde(default)]
    pub gates: BTreeMap<String, GateSpec>,
    /// Deployment targets by environment.
    #[serde(default)]
    pub deploy: BTreeMap<String, DeploySpec>,
    /// Drift thresholds.
    #[serde(default)]
    pub drift: Option<DriftSpec>,
    /// Retraining pipeline.
    #[serde(default)]
    pub retrain: Option<RetrainSpec>,
    /// Where notifications for this rule's models go.
    #[serde(default)]
    pub notify: NotifySpec,
}

fn default_models() -> Vec<String> {
    vec!["*".into()]
}

/// An approval gate in front of an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    /// Who may approve (identities as the approval page sees them, e.g. e-mail addresses).
    pub approvers: Vec<String>,
    /// How many distinct approvers are needed (N of M). Default 1.
    #[serde(default = "one")]
    pub required: u32,
    /// How long a request stays open, e.g. `72h`.
    #[serde(default = "default_expiry")]
    pub expires: String,
    /// Whether the requester may approve their own model. Default false.
    #[serde(default)]
    pub requester_may_approve: bool,
    /// Champion/challenger: the new version must beat the production version on a metric tag.
    #[serde(default)]
    pub champion: Option<ChampionSpec>,
}

fn one() -> u32 {
    1
}

fn default_expiry() -> String {
    "72h".into()
}

/// Champion/challenger condition, checked when a version is registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChampionSpec {
    /// Model tag holding the metric, e.g. `auc`.
    pub metric: String,
    /// `higher` (default) or `lower` is better.
    #[serde(default)]
    pub better: Better,
    /// Minimum improvement over the champion. Default 0 (any improvement).
    #[serde(default)]
    pub min_improvement: f64,
}

/// Direction of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    /// Higher is better (AUC, accuracy).
    #[default]
    Higher,
    /// Lower is better (RMSE, loss).
    Lower,
}

/// An online deployment target in one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploySpec {
    /// Online endpoint name; `{model}` is replaced by the model name.
    pub endpoint: String,
    /// VM size. Default `Standard_DS3_v2`.
    #[serde(default = "default_instance_type")]
    pub instance_type: String,
    /// Instance count. Default 1.
    #[serde(default = "one")]
    pub instance_count: u32,
    /// Smoke test run after the deployment, before the next gate opens.
    #[serde(default)]
    pub smoke_test: Option<SmokeTestSpec>,
}

fn default_instance_type() -> String {
    "Standard_DS3_v2".into()
}

/// A smoke test against the freshly deployed endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SmokeTestSpec {
    /// JSON request body to score.
    pub request: String,
    /// Expected HTTP status. Default 200.
    #[serde(default = "default_status")]
    pub expect_status: u16,
    /// Latency bound in milliseconds. Default 1000.
    #[serde(default = "default_latency")]
    pub max_latency_ms: u64,
}

fn default_status() -> u16 {
    200
}

fn default_latency() -> u64 {
    1000
}

/// Drift thresholds and cooldown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DriftSpec {
    /// Retrain when drift is at least this.
    #[serde(default)]
    pub retrain_at: Option<f64>,
    /// Page when drift is at least this.
    #[serde(default)]
    pub page_at: Option<f64>,
    /// What to do when a monitor reports a breach without a value (model monitoring v2):
    /// any of `retrain`, `page`. Default: `["retrain"]` when the rule has a `[rule.retrain]` pipeline,
    /// else `["page"]` when it sets `page_at`.
    #[serde(default)]
    pub on_breach: Option<Vec<BreachAction>>,
    /// After a retrain (or page) for a model, hold further ones for this long, e.g. `6h`.
    #[serde(default = "default_cooldown")]
    pub cooldown: String,
    /// PagerDuty severity of drift pages. Default `warning`.
    #[serde(default = "default_severity")]
    pub page_severity: String,
}

impl DriftSpec {
    /// What a breach without a value does: `on_breach` when the policy says; otherwise retrain where the
    /// rule can (`retrains`: it has a `[rule.retrain]` pipeline), else page where it pages (`page_at`). A
    /// rule that only pages is not made to retrain, which it cannot.
    pub fn breach_actions(&self, retrains: bool) -> &[BreachAction] {
        match &self.on_breach {
            Some(actions) => actions,
            None if retrains => &[BreachAction::Retrain],
            None if self.page_at.is_some() => &[BreachAction::Page],
            None => &[],
        }
    }
}

fn default_cooldown() -> String {
    "6h".into()
}

fn default_severity() -> String {
    "warning".into()
}

/// Action taken on a breach without a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreachAction {
    /// Retrain the model.
    Retrain,
    /// Page the on-call route.
    Page,
}

/// The retraining pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrainSpec {
    /// Registered pipeline component, e.g. `azureml://registries/mlr-shared/components/train/versions/3`.
    pub pipeline: String,
    /// Environment whose workspace runs the job. Default: the first in `promotion`.
    #[serde(default)]
    pub environment: Option<String>,
    /// Experiment name. Default `{model}-retrain`.
    #[serde(default)]
    pub experiment: Option<String>,
    /// Compute target name.
    #[serde(default)]
    pub compute: Option<String>,
    /// Literal pipeline inputs.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
}

/// Notification routes of a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct NotifySpec {
    /// Approval requests.
    #[serde(default)]
    pub approvals: Option<String>,
    /// Failed runs, failed smoke tests, rejections.
    #[serde(default)]
    pub failures: Option<String>,
    /// Pages (drift above `page_at`).
    #[serde(default)]
    pub pages: Option<String>,
    /// Successful deployments.
    #[serde(default)]
    pub deployments: Option<String>,
}

/// A schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Schedule name.
    pub name: String,
    /// 6-field NCRONTAB: `second minute hour day month day-of-week`, day-of-week 0 = Sunday.
    pub cron: String,
    /// IANA time zone the expression is read in, e.g. `Europe/Amsterdam`. Default `UTC`.
    #[serde(default = "default_tz")]
    pub time_zone: String,
    /// Model to act on.
    pub model: String,
    /// What to do. Only `retrain` today.
    #[serde(default)]
    pub action: ScheduleAction,
    /// What to do about instants missed while nothing ran: `skip`, `latest` (default) or `all`.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// With `catch_up = "all"`: how far back to go. Default `1d`.
    #[serde(default)]
    pub catch_up_window: Option<String>,
}

fn default_tz() -> String {
    "UTC".into()
}

/// A scheduled action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleAction {
    /// Retrain the model.
    #[default]
    Retrain,
}

/// Catch-up policy for missed schedule instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Fire nothing that was missed.
    Skip,
    /// Fire the most recent missed instant only.
    #[default]
    Latest,
    /// Fire every missed instant within `catch_up_window`.
    All,
}
