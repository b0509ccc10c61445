//! Notification requests: the exact HTTP request each route kind expects (reference §5), built from a ledger
//! entry. Pure: the notify worker sends them (or, dry-run, records them).

use serde::Serialize;
use serde_json::{Value, json};

use crate::policy::spec::{RouteKind, RouteSpec};
use crate::policy::{ActionKind, ActionParams};
use crate::ports::LedgerEntry;

/// PagerDuty Events API v2 endpoint.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// An outgoing HTTP request, exactly as it will be (or would have been) sent. Secrets are not part of it:
/// the target URL or routing key is resolved from an app setting at send time, and recorded redacted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    /// `POST`.
    pub method: &'static str,
    /// Target URL; `None` when it comes from the route's app setting (a webhook URL is a secret).
    pub url: Option<String>,
    /// The app setting that holds the URL or routing key.
    pub setting: Option<String>,
    /// JSON body. A PagerDuty routing key is inserted at send time.
    pub body: Value,
}

/// Links shown with a notification.
#[derive(Debug, Clone, Default)]
pub struct Links {
    /// The approval page, one signed link per approver: `(approver, url)`.
    pub approvals: Vec<(String, String)>,
    /// The model in Azure ML studio.
    pub studio: Option<String>,
}

fn title(entry: &LedgerEntry) -> String {
    let a = &entry.action;
    let subject = match (&a.model, &a.version) {
        (Some(m), Some(v)) => format!("{m}:{v}"),
        (Some(m), None) => m.clone(),
        _ => "the fleet".to_string(),
    };
    match &a.params {
        ActionParams::RequestApproval { environment, .. } => {
            format!("Approval needed: {subject} → {environment}")
        }
        ActionParams::Page { .. } => format!("Paging: {subject}"),
        ActionParams::ResolvePage { .. } => format!("Resolved: {subject}"),
        ActionParams::Notify { .. } => format!("mlops-relay: {subject}"),
        ActionParams::Deploy { environment, .. } => format!("Deploying {subject} to {environment}"),
        ActionParams::Retrain { .. } => format!("Retraining {subject}"),
    }
}

fn facts(entry: &LedgerEntry) -> Vec<(String, String)> {
    let a = &entry.action;
    let mut facts = Vec::new();
    if let Some(m) = &a.model {
        facts.push(("Model".into(), m.clone()));
    }
    if let Some(v) = &a.version {
        facts.push(("Version".into(), v.clone()));
    }
    if let ActionParams::RequestApproval {
        environment,
        approvers,
        required,
        requester,
        expires_at,
        tags,
        ..
    } = &a.params
    {
        facts.push(("Target".into(), environment.clone()));
        facts.push((
            "Needs".into(),
            format!(
                "{required} of {} approvers: {}",
                approvers.len(),
                approvers.join(", ")
            ),
        ));
        if let Some(r) = requester {
            facts.push(("Requested by".into(), format!("{r} (may not approve)")));
        }
        facts.push((
            "Expires".into(),
            expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ));
        for (k, v) in tags.iter().filter(|(k, _)| *k != "owner") {
            facts.push((k.clone(), v.clone()));
        }
    }
    facts.push(("Why".into(), a.reason.clone()));
    facts.push(("Event".into(), entry.event_id.clone()));
    facts.push(("Action".into(), a.action_id.to_string()));
    facts
}

/// Microsoft Teams (Workflows webhook): a message with one Adaptive Card (reference §5.1).
pub fn teams(entry: &LedgerEntry, links: &Links) -> Value {
    let mut actions = Vec::new();
    for (approver, url) in &links.approvals {
        actions.push(json!({ "type": "Action.OpenUrl", "title": format!("Review as {approver}"), "url": url }));
    }
    if let Some(url) = &links.studio {
        actions.push(
            json!({ "type": "Action.OpenUrl", "title": "Open in Azure ML studio", "url": url }),
        );
    }
    let facts: Vec<Value> = facts(entry)
        .into_iter()
        .map(|(t, v)| json!({ "title": t, "value": v }))
        .collect();
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.2",
                "body": [
                    { "type": "TextBlock", "text": title(entry), "weight": "Bolder", "size": "Medium", "wrap": true },
                    { "type": "FactSet", "facts": facts }
                ],
                "actions": actions
            }
        }]
    })
}

/// Slack incoming webhook: fallback `text` plus blocks (reference §5.2).
pub fn slack(entry: &LedgerEntry, links: &Links) -> Value {
    // Model names, tags and reasons come from outside: in mrkdwn, `<…>` would be a mention or a link of
    // their choosing, so `&`, `<` and `>` are escaped as Slack asks.
    let fields: Vec<String> = facts(entry)
        .into_iter()
        .map(|(t, v)| format!("*{t}:* {}", slack_escape(&v)))
        .collect();
    let mut blocks = vec![
        json!({ "type": "header", "text": { "type": "plain_text", "text": cut(&title(entry), SLACK_HEADER) } }),
        json!({ "type": "section", "text": { "type": "mrkdwn", "text": cut(&fields.join("\n"), SLACK_SECTION) } }),
    ];
    let buttons: Vec<Value> = links
        .approvals
        .iter()
        .map(|(approver, url)| (format!("Review as {approver}"), url))
        .chain(links.studio.iter().map(|u| ("Open in Azure ML studio".to_string(), u)))
        .map(|(label, url)| json!({ "type": "button", "text": { "type": "plain_text", "text": cut(&label, SLACK_BUTTON) }, "url": url }))
        .collect();
    if !buttons.is_empty() {
        blocks.push(json!({ "type": "actions", "elements": buttons }));
    }
    let text = slack_escape(&format!("{}: {}", title(entry), entry.action.reason));
    json!({ "text": text, "blocks": blocks })
}

/// Slack's limits on a header's text, a section's text and a button's label, in characters: past them
/// Slack answers 400 and the message (an approval request) would be dead-lettered unsent.
const SLACK_HEADER: usize = 150;
const SLACK_SECTION: usize = 3000;
const SLACK_BUTTON: usize = 75;

/// Text for Slack's mrkdwn, with the three characters it gives meaning escaped.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `text` cut to at most `max` characters, with `…` where it was cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// PagerDuty Events API v2 `trigger` or `resolve` (reference §5.3), without the routing key.
pub fn pagerduty(entry: &LedgerEntry, links: &Links) -> Option<Value> {
    let a = &entry.action;
    let (action, dedup_key, severity, summary) = match &a.params {
        ActionParams::Page {
            dedup_key,
            severity,
            summary,
            ..
        } => ("trigger", dedup_key, severity.as_str(), summary),
        ActionParams::ResolvePage {
            dedup_key, summary, ..
        } => ("resolve", dedup_key, "info", summary),
        _ => return None,
    };
    let summary: String = summary.chars().take(1024).collect();
    let mut body = json!({
        "event_action": action,
        "dedup_key": dedup_key.chars().take(255).collect::<String>(),
        "client": "mlops-relay",
    });
    if action == "trigger" {
        body["payload"] = json!({
            "summary": summary,
            "source": a.model.as_deref().unwrap_or("mlops-relay"),
            "severity": severity,
            "timestamp": entry.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "group": "mlops",
            "class": a.kind.as_str(),
            "custom_details": { "reason": a.reason, "event_id": entry.event_id, "action_id": a.action_id, "decision_id": entry.decision_id },
        });
        // Optional: left out rather than sent as null for pages about no model.
        if let Some(model) = &a.model {
            body["payload"]["component"] = Value::String(model.clone());
        }
        let links: Vec<Value> = links
            .studio
            .iter()
            .map(|u| json!({ "href": u, "text": "Azure ML studio" }))
            .collect();
        if !links.is_empty() {
            body["links"] = Value::Array(links);
        }
    }
    Some(body)
}

/// A generic JSON webhook: the ledger entry as it stands, plus a title.
pub fn webhook(entry: &LedgerEntry, links: &Links) -> Value {
    json!({ "title": title(entry), "entry": entry, "approval_urls": links.approvals.iter().map(|(a, u)| json!({ "approver": a, "url": u })).collect::<Vec<_>>(), "studio_url": links.studio })
}

/// The request for a notification-queue action over `route`.
pub fn request(entry: &LedgerEntry, route: &RouteSpec, links: &Links) -> Result<Request, String> {
    let kind = entry.action.kind;
    if !matches!(
        kind,
        ActionKind::RequestApproval
            | ActionKind::Page
            | ActionKind::ResolvePage
            | ActionKind::Notify
    ) {
        return Err(format!("{kind} is not a notification"));
    }
    let (url, setting, body) = match route.kind {
        RouteKind::Teams => (None, route.url_setting.clone(), teams(entry, links)),
        RouteKind::Slack => (None, route.url_setting.clone(), slack(entry, links)),
        RouteKind::Webhook => (None, route.url_setting.clone(), webhook(entry, links)),
        RouteKind::Pagerduty => {
            // A notify or approval routed to PagerDuty pages with the action's own id as dedup key.
            let body = pagerduty(entry, links).unwrap_or_else(|| {
                json!({
                    "event_action": "trigger",
                    "dedup_key": entry.action.action_id.as_str(),
                    "client": "mlops-relay",
                    "payload": { "summary": title(entry), "source": entry.action.model.as_deref().unwrap_or("mlops-relay"), "severity": "info" },
                })
            });
            (
                Some(PAGERDUTY_URL.to_string()),
                route.routing_key_setting.clone(),
                body,
            )
        }
    };
    Ok(Request {
        method: "POST",
        url,
        setting,
        body,
    })
}

/// The route name an action is sent over, when it has one.
pub fn route_of(params: &ActionParams) -> Option<&str> {
    match params {
        ActionParams::RequestApproval { route, .. } => route.as_deref(),
        ActionParams::Page { route, .. }
        | ActionParams::ResolvePage { route, .. }
        | ActionParams::Notify { route, .. } => Some(route),
        _ => None,
    }
}
