//! Replay's JSON Lines output, written straight into a line buffer.
//!
//! Escaping strings was a third of the writing thread's time with `serde_json::to_writer`: its escaper looks
//! every byte up in a table, and the explanation (streamed through `collect_str`) went through it a fragment at
//! a time. Almost no string in a decision needs escaping, so each one is checked in a single pass that the
//! compiler vectorises and then copied; the few that do need it go through serde_json's own escaper. The
//! output is byte for byte what serialising the serde types of `reference` (below) with serde_json gives,
//! which the tests check.

use chrono::{DateTime, Datelike as _, SecondsFormat, Timelike as _, Utc};

use crate::policy::Decision;

/// Appends `t` as a JSON string, as `to_rfc3339_opts(SecondsFormat::Secs, true)` writes it, without making
/// that String first (one allocation and chrono's formatter per decision).
fn push_time(buf: &mut Vec<u8>, t: DateTime<Utc>) {
    // Years outside 0000..=9999 and leap seconds are written by chrono itself.
    if !(0..=9999).contains(&t.year()) || t.nanosecond() >= 1_000_000_000 {
        push_str(buf, &t.to_rfc3339_opts(SecondsFormat::Secs, true));
        return;
    }
    let two = |buf: &mut Vec<u8>, n: u32| {
        buf.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8])
    };
    let y = t.year() as u32;
    buf.push(b'"');
    two(buf, y / 100);
    two(buf, y % 100);
    buf.push(b'-');
    two(buf, t.month());
    buf.push(b'-');
    two(buf, t.day());
    buf.push(b'T');
    two(buf, t.hour());
    buf.push(b':');
    two(buf, t.minute());
    buf.push(b':');
    two(buf, t.second());
    buf.extend_from_slice(b"Z\"");
}

/// Appends one decision as a line of JSON Lines (the object and its newline).
pub(super) fn push_line(buf: &mut Vec<u8>, d: &Decision) {
    push_decision(buf, d);
    buf.push(b'\n');
}

/// Appends one decision as a JSON object (no newline).
pub(super) fn push_decision(buf: &mut Vec<u8>, d: &Decision) {
    buf.extend_from_slice(b"{\"event_id\":");
    push_str(buf, &d.signal.event_id);
    buf.extend_from_slice(b",\"event_type\":");
    push_str(buf, &d.signal.event_type);
    buf.extend_from_slice(b",\"time\":");
    push_time(buf, d.at);
    buf.extend_from_slice(b",\"signal\":{\"kind\":");
    push_str(buf, d.signal.kind().as_str());
    if let Some(model) = &d.model {
        buf.extend_from_slice(b",\"model\":");
        push_str(buf, model);
    }
    if let Some(version) = d.signal.version() {
        buf.extend_from_slice(b",\"version\":");
        push_str(buf, version);
    }
    buf.push(b'}');
    if let Some(rule) = &d.rule {
        buf.extend_from_slice(b",\"rule\":");
        push_str(buf, rule);
    }
    buf.extend_from_slice(if d.duplicate {
        b",\"duplicate\":true,\"actions\":["
    } else {
        b",\"duplicate\":false,\"actions\":["
    });
    for (i, a) in d.actions.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(b"{\"kind\":");
        push_str(buf, a.kind.as_str());
        buf.extend_from_slice(b",\"action_id\":");
        push_str(buf, a.action_id.as_str());
        if let Some(model) = &a.model {
            buf.extend_from_slice(b",\"model\":");
            push_str(buf, model);
        }
        buf.extend_from_slice(b",\"reason\":");
        push_str(buf, &a.reason);
        buf.push(b'}');
    }
    buf.extend_from_slice(b"],\"suppressed\":[");
    for (i, s) in d.suppressed.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(b"{\"rule\":");
        push_str(buf, &s.rule);
        buf.extend_from_slice(b",\"reason\":");
        push_str(buf, &s.reason);
        buf.push(b'}');
    }
    buf.extend_from_slice(b"],\"explanation\":\"");
    // Streamed piece by piece: the explanation is never built as a String of its own.
    let _ = crate::policy::decide::Explanation(d).pieces(&mut |piece| {
        push_str_contents(buf, piece);
        Ok::<(), std::convert::Infallible>(())
    });
    buf.extend_from_slice(b"\"}");
}

/// Appends `s` as a JSON string.
fn push_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    push_str_contents(buf, s);
    buf.push(b'"');
}

/// Appends `s` escaped for inside a JSON string, as serde_json escapes it: control characters, `"` and `\`.
fn push_str_contents(buf: &mut Vec<u8>, s: &str) {
    if needs_no_escape(s.as_bytes()) {
        buf.extend_from_slice(s.as_bytes());
        return;
    }
    let start = buf.len();
    serde_json::to_writer(&mut *buf, s).expect("writing into a Vec cannot fail");
    // serde_json wrote the quotes too: keep what is between them.
    buf.pop();
    buf.remove(start);
}

/// Whether no byte of `bytes` needs escaping. No early exit within a chunk, so each chunk is a few vector
/// instructions.
fn needs_no_escape(bytes: &[u8]) -> bool {
    bytes.chunks(32).all(|chunk| {
        chunk
            .iter()
            .fold(true, |ok, &b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'))
    })
}

/// The output line as serde types: the definition [`push_decision`] is checked against.
#[cfg(test)]
pub(super) mod reference {
    use serde::Serialize;

    use crate::policy::Decision;

    #[derive(Serialize)]
    struct JsonSignal<'a> {
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        model: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        version: Option<&'a str>,
    }

    #[derive(Serialize)]
    struct JsonAction<'a> {
        kind: &'static str,
        action_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        model: Option<&'a str>,
        reason: &'a str,
    }

    #[derive(Serialize)]
    struct JsonSuppressed<'a> {
        rule: &'a str,
        reason: &'a str,
    }

    /// One line of `replay --format jsonl`.
    #[derive(Serialize)]
    pub(crate) struct JsonDecision<'a> {
        event_id: &'a str,
        event_type: &'a str,
        time: String,
        signal: JsonSignal<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<&'a str>,
        duplicate: bool,
        actions: Vec<JsonAction<'a>>,
        suppressed: Vec<JsonSuppressed<'a>>,
        explanation: String,
    }

    /// The decision as serde_json writes it.
    pub(crate) fn line(d: &Decision) -> String {
        let line = JsonDecision {
            event_id: &d.signal.event_id,
            event_type: &d.signal.event_type,
            time: d.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            signal: JsonSignal {
                kind: d.signal.kind().as_str(),
                model: d.model.as_deref(),
                version: d.signal.version(),
            },
            rule: d.rule.as_deref(),
            duplicate: d.duplicate,
            actions: d
                .actions
                .iter()
                .map(|a| JsonAction {
                    kind: a.kind.as_str(),
                    action_id: a.action_id.as_str(),
                    model: a.model.as_deref(),
                    reason: &a.reason,
                })
                .collect(),
            suppressed: d
                .suppressed
                .iter()
                .map(|s| JsonSuppressed {
                    rule: &s.rule,
                    reason: &s.reason,
                })
                .collect(),
            explanation: d.explanation(),
        };
        serde_json::to_string(&line).expect("serialises")
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    use super::*;
    use crate::domain::{Signal, SignalBody};
    use crate::policy::{MemoryState, Policy, decide};

    fn written(d: &Decision) -> String {
        let mut buf = Vec::new();
        push_decision(&mut buf, d);
        String::from_utf8(buf).expect("UTF-8")
    }

    /// Every decision of the example history is written exactly as serde_json writes it.
    #[test]
    fn example_decisions_are_written_as_serde_json_writes_them() {
        let policy = Policy::parse(include_str!("../../examples/policy.toml")).unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/events");
        let mut convert = super::super::Convert::new();
        let mut signals = Vec::new();
        for file in super::super::reader::expand(&[dir]).unwrap() {
            super::super::reader::read_input_raw(&file, &mut |_, record, _| {
                signals.extend(convert.raw(record.unwrap()).0);
            });
        }
        signals.sort_by_key(|s| s.time);
        let mut engine = super::super::Engine::new(&policy, true);
        let mut decisions = Vec::new();
        for s in signals {
            engine.step_owned(s, None, &mut |d| decisions.push(d));
        }
        assert!(decisions.len() > 10, "{}", decisions.len());
        for d in &decisions {
            assert_eq!(written(d), reference::line(d));
        }
    }

    fn text() -> impl Strategy<Value = String> {
        // Plain text, the characters JSON escapes, and non-ASCII.
        prop::collection::vec(
            prop_oneof![
                "[a-z :;.-]{1,8}",
                Just("\"".to_string()),
                Just("\\".to_string()),
                Just("\n\t\r".to_string()),
                Just("\u{1}\u{1f}\u{7f}".to_string()),
                Just("é≥🚀".to_string()),
            ],
            0..12,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        /// Decision times are written as chrono writes them, over every representable instant.
        #[test]
        fn times_are_written_as_chrono_writes_them(secs in i64::MIN / 1000..i64::MAX / 1000, nanos in 0u32..2_000_000_000) {
            if let Some(t) = DateTime::<Utc>::from_timestamp(secs, nanos) {
                let mut buf = Vec::new();
                push_time(&mut buf, t);
                let expected = serde_json::to_string(&t.to_rfc3339_opts(SecondsFormat::Secs, true)).unwrap();
                prop_assert_eq!(String::from_utf8(buf).unwrap(), expected);
            }
        }

        /// The same over the years people replay (the range above rarely lands in them).
        #[test]
        fn times_of_this_millennium_are_written_as_chrono_writes_them(secs in 0i64..253_402_300_800, nanos in 0u32..2_000_000_000) {
            // A leap second (nanos ≥ 1e9) exists only at second 59; the times around one are tried by moving
            // onto it.
            let secs = if nanos >= 1_000_000_000 { secs - secs.rem_euclid(60) + 59 } else { secs };
            let t = DateTime::<Utc>::from_timestamp(secs, nanos).unwrap();
            let mut buf = Vec::new();
            push_time(&mut buf, t);
            let expected = serde_json::to_string(&t.to_rfc3339_opts(SecondsFormat::Secs, true)).unwrap();
            prop_assert_eq!(String::from_utf8(buf).unwrap(), expected);
        }

        /// Strings with and without characters to escape, in every field the line carries.
        #[test]
        fn any_text_is_written_as_serde_json_writes_it(
            event_id in text(), model in text(), version in text(), reason in text(), held in text()
        ) {
            let policy = Policy::parse(include_str!("../../examples/policy.toml")).unwrap();
            let now = Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap();
            let mut signal = Signal::schedule("weekly", now);
            signal.event_id = event_id;
            signal.body = SignalBody::ModelRegistered {
                model: model.clone(),
                version,
                tags: Default::default(),
                properties: Default::default(),
            };
            let mut d = decide(&policy, &signal, &MemoryState::new(), now);
            d.model = Some(model);
            d.suppressed.push(crate::policy::Suppression {
                rule: held.clone(),
                reason: held,
                absorbed_into: None,
                until: None,
            });
            if let Some(a) = d.actions.first_mut() {
                a.reason = reason;
            }
            prop_assert_eq!(written(&d), reference::line(&d));
        }

        #[test]
        fn the_escape_check_agrees_with_serde_json(s in text()) {
            let escaped = serde_json::to_string(&s).unwrap();
            prop_assert_eq!(needs_no_escape(s.as_bytes()), escaped.len() == s.len() + 2);
        }
    }
}
