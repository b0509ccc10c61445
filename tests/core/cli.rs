//! The `mlops-relay` command line, run as a user runs it.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mlops-relay");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn relay(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("runs")
}

fn relay_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(ROOT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    // A command that fails on its arguments exits without reading its input: the pipe may close under us.
    match child.stdin.take().unwrap().write_all(input.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn replay_of_the_examples_prints_one_json_object_per_decision_with_reasons() {
    let out = relay(&[
        "replay",
        "--policy",
        "examples/policy.toml",
        "--format",
        "jsonl",
        "examples/events",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(lines.len() >= 20, "{}", lines.len());
    let mut times = Vec::new();
    for line in &lines {
        for key in ["event_id", "event_type", "explanation"] {
            assert!(line[key].is_string(), "{key} missing in {line}");
        }
        assert!(line["signal"]["kind"].is_string());
        for a in line["actions"].as_array().unwrap() {
            for key in ["kind", "action_id", "reason"] {
                assert!(
                    a[key].as_str().is_some_and(|s| !s.is_empty()),
                    "{key} in {a}"
                );
            }
        }
        for s in line["suppressed"].as_array().unwrap() {
            assert!(s["rule"].as_str().is_some_and(|r| !r.is_empty()));
            assert!(
                s["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "every suppression has a reason: {s}"
            );
        }
        times.push(line["time"].as_str().unwrap().to_string());
    }
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(
        times, sorted,
        "decisions come out in event-time order across files"
    );
    let count = |kind: &str| {
        lines
            .iter()
            .flat_map(|l| l["actions"].as_array().unwrap().iter())
            .filter(|a| a["kind"] == kind)
            .count()
    };
    assert_eq!(count("deploy"), 2, "staging then prod");
    assert_eq!(count("page"), 2, "one drift page, one infra page");
    assert!(
        lines
            .iter()
            .any(|l| l["duplicate"] == true && l["suppressed"][0]["rule"] == "dedupe")
    );
    assert!(
        lines
            .iter()
            .any(|l| l["signal"]["kind"] == "schedule" && l["actions"][0]["kind"] == "retrain")
    );
}

#[test]
fn replay_as_text_tells_the_story() {
    let out = relay(&[
        "replay",
        "--policy",
        "examples/policy.toml",
        "--format",
        "text",
        "examples/events",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let story = text(&out.stdout);
    for expected in [
        "request_approval",
        "held by dedupe",
        "absorbed into retrain-",
        "cooldown ends",
        "does not beat champion",
        "→ deploy",
    ] {
        assert!(
            story.contains(expected),
            "missing `{expected}` in:\n{story}"
        );
    }
    assert!(text(&out.stderr).contains("decision(s)"));
}

#[test]
fn malformed_records_are_reported_with_file_and_line_and_the_rest_still_decided() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.jsonl");
    std::fs::write(
        &path,
        concat!(
            r#"{"id":"w1","model":"fraud","metric":"psi","value":0.5,"time":"2026-11-02T00:00:00Z"}"#, "\n",
            "this is not json\n",
            r#"{"eventType":"Microsoft.MachineLearningServices.ModelRegistered","id":"x","topic":"/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/mlw-dev","eventTime":"2026-11-02T01:00:00Z","data":{"modelVersion":"3"}}"#, "\n",
            r#"{"id":"w2","model":"churn","metric":"psi","value":0.5,"time":"2026-11-02T02:00:00Z"}"#, "\n",
        ),
    )
    .unwrap();
    let out = relay(&[
        "replay",
        "--policy",
        "examples/policy.toml",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("mixed.jsonl:2: not JSON"), "{err}");
    assert!(
        err.contains("mixed.jsonl:3:") && err.contains("modelName"),
        "the error names the field: {err}"
    );
    assert_eq!(
        text(&out.stdout).lines().count(),
        2,
        "the two good records were decided"
    );
}

#[test]
fn replay_reads_standard_input() {
    let input =
        r#"[{"id":"w1","model":"fraud","metric":"psi","value":0.9,"time":"2026-11-02T00:00:00Z"}]"#;
    let out = relay_stdin(&["replay", "--policy", "examples/policy.toml", "-"], input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(line["actions"].as_array().unwrap().len(), 2);
}

/// An event that arrives late is put back in event-time order when it is within `--reorder-window` of the
/// newest one read before it; beyond the window it is decided where it arrived, and the run says so.
#[test]
fn replay_reorders_late_events_within_the_window() {
    let drift = |id: &str, time: &str| {
        format!(r#"{{"id":"{id}","model":"fraud","metric":"psi","value":0.1,"time":"{time}"}}"#)
    };
    let input = [
        drift("a", "2026-11-02T00:00:00Z"),
        drift("b", "2026-11-02T03:00:00Z"),
        drift("late", "2026-11-01T23:00:00Z"), // four hours behind b, and before a
    ]
    .join("\n");
    let order = |window: &str| {
        let out = relay_stdin(
            &[
                "replay",
                "--policy",
                "examples/policy.toml",
                "--reorder-window",
                window,
                "-",
            ],
            &input,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let ids: Vec<String> = text(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["event_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        (ids, text(&out.stderr))
    };
    let (ids, stderr) = order("24h");
    assert_eq!(ids, ["late", "a", "b"]);
    // A window longer than the calendar reaches back holds everything (up to the buffer's size).
    assert_eq!(order("1000000years").0, ["late", "a", "b"]);
    assert!(!stderr.contains("out of order"), "{stderr}");
    let (ids, stderr) = order("1h");
    // `a` was settled (and decided) once `b`, three hours newer, was read; `late` still goes before `b`.
    assert_eq!(ids, ["a", "late", "b"]);
    assert!(
        stderr.contains("1 event(s) arrived later than --reorder-window"),
        "{stderr}"
    );
    let out = relay_stdin(
        &[
            "replay",
            "--policy",
            "examples/policy.toml",
            "--reorder-window",
            "soon",
            "-",
        ],
        &input,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--reorder-window"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn explain_says_what_will_happen_and_why() {
    let out = relay(&[
        "explain",
        "--policy",
        "examples/policy.toml",
        "tests/fixtures/azure-docs/aml_dataset_drift.eventgrid.json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.contains("signal:   drift for sklearn_regression_model"),
        "{s}"
    );
    assert!(
        s.contains("It will:") && s.contains("retrain") && s.contains("page"),
        "{s}"
    );
    assert!(s.contains("Because:"), "{s}");
}

#[test]
fn explain_at_a_later_time_uses_that_time() {
    let out = relay(&[
        "explain",
        "--policy",
        "examples/policy.toml",
        "--at",
        "2030-01-01T00:00:00Z",
        "examples/events/04-new-versions.json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("decided:  2030-01-01T00:00:00Z"));
}

#[test]
fn policy_check_accepts_the_example() {
    let out = relay(&["policy", "check", "examples/policy.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok"));
}

const BAD: &str = r#"promotion = ["dev", "staging", "qa"]
[environments.dev]
workspace = "mlw-dev"
[environments.staging]
workspace = "mlw-staging"
[registry]
name = "mlr"
[[rule]]
name = "r"
  [rule.gates.staging]
  approvers = ["a@x.io"]
  required = 3
  [rule.deploy.staging]
  endpoint = "e"
  [rule.drift]
  retrain_at = 0.3
  cooldown = "six hours"
  [rule.notify]
  pages = "nowhere"
[[schedule]]
name = "s"
cron = "0 3 * * 0"
time_zone = "Mars/Olympus"
model = "m"
"#;

#[test]
fn policy_check_reports_every_error_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, BAD).unwrap();
    let out = relay(&["policy", "check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let at = |line: usize, needle: &str| {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("bad.toml:{line}:")) && l.contains(needle)),
            "expected `{needle}` at line {line} in:\n{err}"
        )
    };
    at(1, "`qa` is not defined");
    at(12, "required");
    at(15, "no [rule.retrain] pipeline");
    at(24, "has no [rule.retrain] pipeline");
    at(17, "not a duration");
    at(19, "route `nowhere`");
    at(22, "6");
    at(23, "IANA");
}

#[test]
fn policy_check_reports_syntax_and_type_errors_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let syntax = dir.path().join("syntax.toml");
    std::fs::write(&syntax, "promotion = [\"dev\"\n[environments.dev]\n").unwrap();
    let out = relay(&["policy", "check", syntax.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("syntax.toml:2:"),
        "{}",
        text(&out.stderr)
    );

    let typo = dir.path().join("typo.toml");
    std::fs::write(
        &typo,
        "promotion = [\"dev\"]\n[environments.dev]\nworkspace = \"w\"\nworkspase = \"w\"\n",
    )
    .unwrap();
    let out = relay(&["policy", "check", typo.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(
        err.contains("typo.toml:4:") && err.contains("workspase"),
        "unknown keys are errors: {err}"
    );
}

#[test]
fn the_committed_json_schema_is_the_generated_one() {
    let out = relay(&["policy", "schema"]);
    assert!(out.status.success());
    let generated: Value = serde_json::from_slice(&out.stdout).unwrap();
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("schema/policy.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        generated, committed,
        "run `mlops-relay policy schema > schema/policy.schema.json`"
    );
    assert!(generated["properties"]["rule"].is_object());
}

#[test]
fn policy_diff_reports_the_impact_per_model() {
    let dir = tempfile::tempdir().unwrap();
    let stricter = dir.path().join("stricter.toml");
    let text_policy =
        std::fs::read_to_string(Path::new(ROOT).join("examples/policy.toml")).unwrap();
    std::fs::write(
        &stricter,
        text_policy
            .replace("retrain_at = 0.3", "retrain_at = 0.5")
            .replace("page_at = 0.7", "page_at = 0.5"),
    )
    .unwrap();
    let out = relay(&[
        "policy",
        "diff",
        "--old",
        "examples/policy.toml",
        "--new",
        stricter.to_str().unwrap(),
        "examples/events",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(report.contains("fraud-detector: -1 retrain"), "{report}");

    let same = relay(&[
        "policy",
        "diff",
        "--old",
        "examples/policy.toml",
        "--new",
        "examples/policy.toml",
        "examples/events",
    ]);
    assert!(text(&same.stdout).contains("no change"));
}

#[test]
fn help_is_available_for_every_command() {
    for args in [
        &["--help"][..],
        &["replay", "--help"],
        &["explain", "--help"],
        &["policy", "check", "--help"],
        &["policy", "diff", "--help"],
    ] {
        let out = relay(args);
        assert!(out.status.success());
        assert!(text(&out.stdout).contains("Usage"));
    }
}

#[test]
fn inspect_with_a_data_dir_reads_it_even_when_relay_state_url_is_set() {
    // `local` reads RELAY_STATE_URL and prints `inspect … --data-dir DIR`: that command must work in the same
    // shell. (With RELAY_STATE_URL as the flag's env, clap counted it as given and refused the pair.)
    let dir = tempfile::tempdir().unwrap();
    mlops_relay::adapters::sqlite::Sqlite::open(dir.path().join("relay.db")).unwrap();
    let out = Command::new(BIN)
        .args(["inspect", "actions", "--json", "--data-dir"])
        .arg(dir.path())
        .env("RELAY_STATE_URL", "sqlite:/nonexistent/elsewhere.db")
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        dir.path().join("relay.db").exists(),
        "read the data directory's store"
    );
    // Both given on the command line is still a mistake worth saying.
    let out = relay(&[
        "inspect",
        "actions",
        "--data-dir",
        "x",
        "--state",
        "sqlite:y.db",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn local_refuses_a_message_lock_it_could_not_renew_in_time() {
    for lock in ["0s", "100ms", "10m"] {
        let out = relay(&["local", "--message-lock", lock, "--listen", "127.0.0.1:0"]);
        assert_eq!(out.status.code(), Some(2), "{lock}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("outside 1s..=5m"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn inspect_queues_lists_every_queue_and_refuses_a_model_filter() {
    let dir = tempfile::tempdir().unwrap();
    mlops_relay::adapters::sqlite::Sqlite::open(dir.path().join("relay.db")).unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let out = relay(&["inspect", "queues", "--json", "--data-dir", data_dir]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = lines.iter().map(|l| l["queue"].as_str().unwrap()).collect();
    assert_eq!(names, mlops_relay::ports::QUEUES, "empty queues too");
    assert!(
        lines
            .iter()
            .all(|l| l["active"] == 0 && l["completed"] == 0)
    );

    for what in ["queues", "dead-letters"] {
        let out = relay(&["inspect", what, "--model", "fraud", "--data-dir", data_dir]);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains(&format!("--model does not apply to `inspect {what}`")),
            "{}",
            text(&out.stderr)
        );
    }
}
