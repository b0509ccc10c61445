//! The approval page, as HTML. GET shows; only a POST (the buttons) acts, because mail and chat link
//! scanners follow links. No script, no outside assets: it renders the same in any browser and in tests.

use std::fmt::Write as _;

use crate::policy::ActionParams;
use crate::ports::LedgerEntry;

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn layout(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title} · mlops-relay</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem; color: #1b1b1b; }}
h1 {{ font-size: 1.4rem; }}
dl {{ display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1rem; }}
dt {{ font-weight: 600; }}
dd {{ margin: 0; }}
.buttons {{ display: flex; gap: 1rem; margin-top: 1.5rem; }}
button {{ font-size: 1rem; padding: .6rem 1.4rem; border-radius: .4rem; border: 1px solid #888; cursor: pointer; }}
button.approve {{ background: #0b6a0b; color: white; border-color: #0b6a0b; }}
button.reject {{ background: white; color: #a80000; border-color: #a80000; }}
.notice {{ padding: 1rem; border-radius: .4rem; background: #f3f3f3; }}
.refused {{ background: #fde7e9; }}
.done {{ background: #dff6dd; }}
textarea {{ width: 100%; min-height: 4rem; font: inherit; }}
</style>
</head>
<body>
{body}
</body>
</html>
"#,
        title = escape(title)
    )
}

/// What the page needs to show a request.
#[derive(Debug, Clone)]
pub struct View<'a> {
    /// The ledger entry of the `request_approval` action.
    pub entry: &'a LedgerEntry,
    /// The approver the link was issued to.
    pub approver: &'a str,
    /// The signed token, posted back with the decision.
    pub token: &'a str,
    /// What approving leads to, in words.
    pub consequence: String,
}

/// The request, with Approve and Reject buttons that POST.
pub fn request(view: &View<'_>) -> String {
    let a = &view.entry.action;
    let model = a.model.as_deref().unwrap_or("?");
    let version = a.version.as_deref().unwrap_or("?");
    let mut facts = String::new();
    let mut fact = |k: &str, v: &str| {
        let _ = write!(facts, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(v));
    };
    fact("Model", model);
    fact("Version", version);
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
        fact("Promote to", environment);
        fact(
            "Needs",
            &format!(
                "{required} of {}: {}",
                approvers.len(),
                approvers.join(", ")
            ),
        );
        if let Some(r) = requester {
            fact("Requested by", r);
        }
        fact(
            "Expires",
            &expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        for (k, v) in tags {
            fact(k, v);
        }
    }
    fact("Why it was asked", &a.reason);
    fact("Source event", &view.entry.event_id);
    let title = format!("Approve {model}:{version}?");
    let body = format!(
        r#"<h1>{h}</h1>
<p>You are deciding as <strong id="approver">{approver}</strong>.</p>
<dl>{facts}</dl>
<p class="notice" id="consequence">{consequence}</p>
<form method="post">
<input type="hidden" name="token" value="{token}">
<label for="comment">Comment (recorded in the decision log)</label>
<textarea id="comment" name="comment"></textarea>
<div class="buttons">
<button class="approve" type="submit" name="decision" value="approve" id="approve">Approve</button>
<button class="reject" type="submit" name="decision" value="reject" id="reject">Reject</button>
</div>
</form>"#,
        h = escape(&title),
        approver = escape(view.approver),
        consequence = escape(&view.consequence),
        token = escape(view.token),
    );
    layout(&title, &body)
}

/// The result of a decision, as recorded.
pub fn recorded(title: &str, lines: &[String]) -> String {
    let items: String = lines
        .iter()
        .map(|l| format!("<li>{}</li>", escape(l)))
        .collect();
    layout(
        title,
        &format!(
            r#"<h1>{}</h1><div class="notice done" id="result"><ul>{items}</ul></div>"#,
            escape(title)
        ),
    )
}

/// A refusal: expired, reused, forged, superseded. Says what happened and what to do.
pub fn refused(reason: &str, what_now: &str) -> String {
    layout(
        "Not accepted",
        &format!(
            r#"<h1>This approval link cannot be used</h1><p class="notice refused" id="refusal">{}</p><p>{}</p>"#,
            escape(reason),
            escape(what_now)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        let page = refused("<b>bad</b>", "ask again");
        assert!(page.contains("&lt;b&gt;bad&lt;/b&gt;") && !page.contains("<b>bad</b>"));
    }
}
