//! Decision tables: one table per rule of the policy, each row a scenario and what decide() must conclude.

use chrono::TimeDelta;
use mlops_relay::domain::{AlertCondition, Signal};
use mlops_relay::policy::{ActionKind, ActionParams, Policy, decide};
use rstest::rstest;

use crate::helpers::*;

#[rstest]
#[case::below_both(0.1, &[], &["default.drift.retrain_at", "default.drift.page_at"])]
#[case::at_retrain_threshold(0.3, &["retrain"], &["default.drift.page_at"])]
#[case::between(0.69, &["retrain"], &["default.drift.page_at"])]
#[case::at_page_threshold(0.7, &["page", "retrain"], &[])]
#[case::far_above(0.95, &["page", "retrain"], &[])]
fn drift_thresholds_decide_retrain_and_page(
    #[case] value: f64,
    #[case] expected: &[&str],
    #[case] held_rules: &[&str],
) {
    let mut sim = Sim::new();
    let d = sim.run(&drift("e1", "fraud", Some(value), t(2, 0)));
    assert_eq!(kinds(&d), expected);
    let rules: Vec<&str> = d.suppressed.iter().map(|s| s.rule.as_str()).collect();
    assert_eq!(rules, held_rules);
    assert!(
        d.suppressed
            .iter()
            .all(|s| s.reason.contains(&value.to_string())),
        "{:?}",
        held(&d)
    );
}

#[rstest]
#[case::one_hour_later(1, 0, false)]
#[case::a_minute_before_the_end(5, 59, false)]
#[case::exactly_at_the_end(6, 0, true)]
#[case::a_day_later(24, 0, true)]
fn a_second_drift_within_the_cooldown_is_absorbed_into_the_first_retrain(
    #[case] hours: u32,
    #[case] minutes: u32,
    #[case] retrains_again: bool,
) {
    let mut sim = Sim::new();
    let first = sim.run(&drift("e1", "fraud", Some(0.4), t(0, 0)));
    let first_id = first.actions[0].action_id.clone();

    let second = sim.run(&drift("e2", "fraud", Some(0.4), t(hours, minutes)));

    if retrains_again {
        assert_eq!(kinds(&second), ["retrain"]);
        assert_ne!(second.actions[0].action_id, first_id);
    } else {
        assert!(second.actions.is_empty());
        let hold = second
            .suppressed
            .iter()
            .find(|s| s.rule == "default.drift.cooldown")
            .expect("cooldown hold");
        assert_eq!(hold.absorbed_into.as_ref(), Some(&first_id));
        assert_eq!(hold.until, Some(t(6, 0)));
        assert!(
            hold.reason.contains(first_id.as_str()) && hold.reason.contains("2026-11-02T06:00:00Z"),
            "{}",
            hold.reason
        );
    }
}

#[test]
fn cooldown_is_per_model() {
    let mut sim = Sim::new();
    sim.run(&drift("e1", "fraud", Some(0.4), t(0, 0)));
    let other = sim.run(&drift("e2", "churn", Some(0.4), t(0, 5)));
    assert_eq!(kinds(&other), ["retrain"]);
}

#[test]
fn a_drift_burst_yields_one_retrain_and_one_page() {
    let mut sim = Sim::new();
    let values = [0.45, 0.52, 0.81, 0.9, 0.33, 0.75];
    let all: Vec<_> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            sim.run(&drift(
                &format!("e{i}"),
                "fraud",
                Some(*v),
                t(2, i as u32 * 5),
            ))
        })
        .collect();
    let count = |k: ActionKind| {
        all.iter()
            .flat_map(|d| &d.actions)
            .filter(|a| a.kind == k)
            .count()
    };
    assert_eq!(count(ActionKind::Retrain), 1);
    assert_eq!(count(ActionKind::Page), 1);
}

#[test]
fn the_fleet_budget_holds_the_fourth_retrain_and_names_the_next_slot() {
    let mut sim = Sim::new();
    for (i, model) in ["a", "b", "c"].iter().enumerate() {
        assert_eq!(
            kinds(&sim.run(&drift(&format!("e{i}"), model, Some(0.5), t(1, i as u32)))),
            ["retrain"]
        );
    }
    let d = sim.run(&drift("e4", "d", Some(0.5), t(2, 0)));
    assert!(!kinds(&d).contains(&"retrain"));
    let hold = d
        .suppressed
        .iter()
        .find(|s| s.rule == "budget")
        .expect("budget hold");
    assert_eq!(hold.until, Some(t(25, 0)));
    assert!(hold.reason.contains("3 retrains"), "{}", hold.reason);
}

#[test]
fn the_storm_breaker_turns_held_retrains_into_one_storm_page() {
    let mut sim = Sim::new();
    for (i, model) in ["a", "b", "c"].iter().enumerate() {
        sim.run(&drift(&format!("e{i}"), model, Some(0.5), t(1, i as u32)));
    }
    let first_held = sim.run(&drift("h1", "d", Some(0.5), t(2, 0)));
    assert!(
        first_held.actions.is_empty(),
        "one held retrain is below storm_after = 2"
    );
    let second_held = sim.run(&drift("h2", "e", Some(0.5), t(2, 1)));
    assert_eq!(kinds(&second_held), ["page"]);
    match &second_held.actions[0].params {
        ActionParams::Page {
            route,
            dedup_key,
            severity,
            ..
        } => {
            assert_eq!(
                (route.as_str(), dedup_key.as_str(), severity.as_str()),
                ("oncall", "retrain-storm", "critical")
            );
        }
        other => panic!("expected a page, got {other:?}"),
    }
    let third_held = sim.run(&drift("h3", "f", Some(0.5), t(2, 2)));
    assert!(
        third_held.actions.is_empty(),
        "the storm pages once per window"
    );
    assert!(
        held(&third_held)
            .iter()
            .any(|h| h.contains("already paged"))
    );
    assert_eq!(
        second_held.actions[0].model, None,
        "the storm is the fleet's"
    );
    // The storm page is not e's page: e's own drift past page_at still pages.
    let e_pages = sim.run(&drift("h4", "e", Some(0.9), t(3, 0)));
    assert_eq!(kinds(&e_pages), ["page"], "{}", e_pages.explanation());
}

#[test]
fn a_duplicate_event_yields_no_action_with_reason_duplicate() {
    let mut sim = Sim::new();
    let s = drift("e1", "fraud", Some(0.9), t(0, 0));
    let first = sim.run(&s);
    let again = sim.run_at(&s, t(0, 3));
    assert_eq!(kinds(&first), ["page", "retrain"]);
    assert!(again.duplicate);
    assert!(again.actions.is_empty());
    assert_eq!(again.suppressed[0].rule, "dedupe");
    assert!(again.suppressed[0].reason.contains("duplicate"));
}

#[test]
fn action_ids_are_deterministic_and_differ_per_event() {
    let p = policy();
    let state = mlops_relay::policy::MemoryState::new();
    let a = decide(
        &p,
        &drift("e1", "fraud", Some(0.9), t(0, 0)),
        &state,
        t(0, 0),
    );
    let b = decide(
        &p,
        &drift("e1", "fraud", Some(0.9), t(0, 0)),
        &state,
        t(0, 0),
    );
    let c = decide(
        &p,
        &drift("e2", "fraud", Some(0.9), t(0, 0)),
        &state,
        t(0, 0),
    );
    assert_eq!(a, b);
    assert_ne!(a.actions[0].action_id, c.actions[0].action_id);
    assert!(
        a.actions.iter().all(|x| x.action_id.as_str().len() <= 128
            && x.action_id.as_str().starts_with(x.kind.as_str()))
    );
}

#[test]
fn the_decision_id_derives_from_key_and_policy_and_leads_the_serialised_decision() {
    use sha2::{Digest, Sha256};
    let p = policy();
    let state = mlops_relay::policy::MemoryState::new();
    let signal = drift("e1", "fraud", Some(0.9), t(0, 0));
    let d = decide(&p, &signal, &state, t(0, 0));
    let expected = Sha256::digest(format!("{}|{}", signal.key, p.hash));
    let hex: String = expected[..16].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(d.decision_id(), hex);
    // Another event, or the same under another policy, is another decision.
    let other = decide(
        &p,
        &drift("e2", "fraud", Some(0.9), t(0, 0)),
        &state,
        t(0, 0),
    );
    assert_ne!(other.decision_id(), d.decision_id());

    // The decision log's JSON keeps the id as its first field, and reads back into the same decision.
    let json = serde_json::to_string(&d).unwrap();
    assert!(
        json.starts_with(&format!("{{\"decision_id\":\"{hex}\",\"signal\":")),
        "{json}"
    );
    let back: mlops_relay::policy::Decision = serde_json::from_str(&json).unwrap();
    assert_eq!(back, d);
    assert_eq!(back.decision_id(), hex);
}
#[test]
fn a_registration_under_another_event_id_is_the_same_fact() {
    let mut sim = Sim::new();
    let mut first = registered("fraud", "7", &[("auc", "0.9")], "mlw-dev", t(0, 0));
    first.event_id = "id-1".into();
    let mut second = first.clone();
    second.event_id = "id-2".into();
    assert_eq!(kinds(&sim.run(&first)), ["request_approval"]);
    let again = sim.run(&second);
    assert!(
        again.duplicate,
        "same model version registered in the same workspace is one fact"
    );
}

#[test]
fn states_remember_the_last_action_only_of_the_kinds_a_cooldown_reads() {
    use mlops_relay::policy::StateView;
    let mut sim = Sim::new();
    let reg = sim.run(&registered(
        "fraud",
        "7",
        &[("auc", "0.9")],
        "mlw-dev",
        t(0, 0),
    ));
    assert_eq!(kinds(&reg), ["request_approval"]);
    let burst = sim.run(&drift("e1", "fraud", Some(0.9), t(1, 0)));
    assert_eq!(kinds(&burst), ["page", "retrain"]);
    for kind in [ActionKind::Page, ActionKind::Retrain] {
        assert!(kind.has_cooldown());
        let last = sim.state.last_action("fraud", kind).expect("remembered");
        assert!(burst.actions.iter().any(|a| a.action_id == last.action_id));
    }
    for kind in [
        ActionKind::RequestApproval,
        ActionKind::Deploy,
        ActionKind::ResolvePage,
        ActionKind::Notify,
    ] {
        assert!(!kind.has_cooldown());
        assert_eq!(sim.state.last_action("fraud", kind), None, "{kind}");
    }
}

#[rstest]
#[case::unknown_workspace("mlw-sandbox", "environments")]
#[case::registered_in_staging("mlw-staging", "")]
fn registrations_outside_the_first_environment_request_nothing(
    #[case] workspace: &str,
    #[case] held_rule: &str,
) {
    let mut sim = Sim::new();
    let d = sim.run(&registered(
        "fraud",
        "7",
        &[("auc", "0.9")],
        workspace,
        t(0, 0),
    ));
    assert!(d.actions.is_empty());
    if held_rule.is_empty() {
        assert!(
            d.fired
                .iter()
                .any(|n| n.reason.contains("promotions start from dev"))
        );
    } else {
        assert_eq!(d.suppressed[0].rule, held_rule);
    }
}

#[test]
fn registration_in_dev_requests_the_staging_gate() {
    let mut sim = Sim::new();
    let d = sim.run(&registered(
        "fraud",
        "7",
        &[("auc", "0.9"), ("owner", "owner@x.io")],
        "mlw-dev",
        t(0, 0),
    ));
    assert_eq!(kinds(&d), ["request_approval"]);
    match &d.actions[0].params {
        ActionParams::RequestApproval {
            environment,
            approvers,
            required,
            requester,
            expires_at,
            route,
            ..
        } => {
            assert_eq!(environment, "staging");
            assert_eq!(approvers, &["lead@x.io", "owner@x.io"]);
            assert_eq!(*required, 1);
            assert_eq!(requester.as_deref(), Some("owner@x.io"));
            assert_eq!(*expires_at, t(72, 0));
            assert_eq!(route.as_deref(), Some("team"));
        }
        other => panic!("{other:?}"),
    }
}

fn promoted_to_prod(sim: &mut Sim, version: &str, auc: &str) -> mlops_relay::policy::Decision {
    sim.run(&registered(
        "fraud",
        version,
        &[("auc", auc), ("owner", "owner@x.io")],
        "mlw-dev",
        t(0, 0),
    ));
    sim.run(&approval(
        "fraud",
        version,
        "staging",
        "lead@x.io",
        true,
        t(1, 0),
    ));
    sim.run(&deployed("fraud", version, "staging", Some(true), t(1, 30)));
    sim.run(&approval(
        "fraud",
        version,
        "prod",
        "sw1@x.io",
        true,
        t(2, 0),
    ));
    sim.run(&approval(
        "fraud",
        version,
        "prod",
        "sw2@x.io",
        true,
        t(2, 5),
    ));
    sim.run(&deployed("fraud", version, "prod", None, t(2, 30)))
}

#[rstest]
#[case::better("0.95", true)]
#[case::equal("0.90", false)]
#[case::worse("0.85", false)]
#[case::not_a_number("n/a", false)]
fn a_challenger_must_beat_the_champions_metric(#[case] auc: &str, #[case] proceeds: bool) {
    let mut sim = Sim::new();
    let _ = promoted_to_prod(&mut sim, "1", "0.90");
    let d = sim.run(&registered(
        "fraud",
        "2",
        &[("auc", auc)],
        "mlw-dev",
        t(10, 0),
    ));
    assert_eq!(!d.actions.is_empty(), proceeds, "{:?}", held(&d));
    if !proceeds {
        assert_eq!(d.suppressed[0].rule, "default.gates.staging.champion");
    }
}

#[test]
fn lower_is_better_metrics_compare_the_other_way() {
    let text = POLICY.replace(
        "champion = { metric = \"auc\" }",
        "champion = { metric = \"rmse\", better = \"lower\", min_improvement = 0.01 }",
    );
    let mut sim = Sim::with(Policy::parse(&text).unwrap());
    sim.run(&registered(
        "fraud",
        "1",
        &[("rmse", "0.50")],
        "mlw-dev",
        t(0, 0),
    ));
    sim.run(&approval(
        "fraud",
        "1",
        "staging",
        "lead@x.io",
        true,
        t(1, 0),
    ));
    sim.run(&deployed("fraud", "1", "staging", Some(true), t(1, 30)));
    sim.run(&approval("fraud", "1", "prod", "sw1@x.io", true, t(2, 0)));
    sim.run(&approval("fraud", "1", "prod", "sw2@x.io", true, t(2, 5)));
    sim.run(&deployed("fraud", "1", "prod", None, t(2, 30)));
    assert!(
        sim.run(&registered(
            "fraud",
            "2",
            &[("rmse", "0.495")],
            "mlw-dev",
            t(3, 0)
        ))
        .actions
        .is_empty(),
        "0.005 better is not 0.01 better"
    );
    assert_eq!(
        kinds(&sim.run(&registered(
            "fraud",
            "3",
            &[("rmse", "0.45")],
            "mlw-dev",
            t(4, 0)
        ))),
        ["request_approval"]
    );
}

#[rstest]
#[case::not_an_approver("mallory@x.io", "is not an approver")]
#[case::the_requester("owner@x.io", "may not approve")]
fn approvals_from_the_wrong_people_are_refused(#[case] who: &str, #[case] why: &str) {
    let mut sim = Sim::new();
    sim.run(&registered(
        "fraud",
        "7",
        &[("auc", "0.9"), ("owner", "owner@x.io")],
        "mlw-dev",
        t(0, 0),
    ));
    let d = sim.run(&approval("fraud", "7", "staging", who, true, t(1, 0)));
    assert!(d.actions.is_empty());
    assert!(held(&d)[0].contains(why), "{:?}", held(&d));
}

#[test]
fn the_full_promotion_runs_dev_to_prod_with_n_of_m_at_the_prod_gate() {
    let mut sim = Sim::new();
    let reg = sim.run(&registered(
        "fraud",
        "7",
        &[("auc", "0.9"), ("owner", "owner@x.io")],
        "mlw-dev",
        t(0, 0),
    ));
    assert_eq!(kinds(&reg), ["request_approval"]);

    let staging = sim.run(&approval(
        "fraud",
        "7",
        "staging",
        "lead@x.io",
        true,
        t(1, 0),
    ));
    assert_eq!(kinds(&staging), ["deploy"]);
    match &staging.actions[0].params {
        ActionParams::Deploy {
            environment,
            workspace,
            registry_model_id,
            endpoint,
            smoke_test,
            ..
        } => {
            assert_eq!(
                (environment.as_str(), workspace.as_str()),
                ("staging", "mlw-staging")
            );
            assert_eq!(
                registry_model_id,
                "azureml://registries/mlr-shared/models/fraud/versions/7"
            );
            assert_eq!(endpoint, "fraud-staging");
            assert!(smoke_test.is_some());
        }
        other => panic!("{other:?}"),
    }

    let smoke = sim.run(&deployed("fraud", "7", "staging", Some(true), t(1, 30)));
    assert_eq!(kinds(&smoke), ["request_approval"]);

    let one = sim.run(&approval("fraud", "7", "prod", "sw1@x.io", true, t(2, 0)));
    assert!(one.actions.is_empty());
    assert!(one.fired[0].reason.contains("1 of 2"));
    let same_person = sim.run(&approval("fraud", "7", "prod", "SW1@x.io", true, t(2, 1)));
    assert!(same_person.actions.is_empty(), "one person counts once");

    let two = sim.run(&approval("fraud", "7", "prod", "sw2@x.io", true, t(2, 5)));
    assert_eq!(kinds(&two), ["deploy"]);
    match &two.actions[0].params {
        ActionParams::Deploy {
            registry_model_id,
            environment,
            ..
        } => {
            assert_eq!(environment, "prod");
            assert_eq!(
                registry_model_id, "azureml://registries/mlr-shared/models/fraud/versions/7",
                "prod deploys the same registry id"
            );
        }
        other => panic!("{other:?}"),
    }
    let live = sim.run(&deployed("fraud", "7", "prod", None, t(2, 30)));
    assert_eq!(kinds(&live), ["notify"]);
}

#[test]
fn a_failed_smoke_test_notifies_and_opens_no_gate() {
    let mut sim = Sim::new();
    sim.run(&registered(
        "fraud",
        "7",
        &[("auc", "0.9")],
        "mlw-dev",
        t(0, 0),
    ));
    sim.run(&approval(
        "fraud",
        "7",
        "staging",
        "lead@x.io",
        true,
        t(1, 0),
    ));
    let d = sim.run(&deployed("fraud", "7", "staging", Some(false), t(1, 30)));
    assert_eq!(kinds(&d), ["notify"]);
    assert!(d.actions[0].reason.contains("smoke test"));
}

#[test]
fn a_staging_deployment_without_a_smoke_verdict_waits() {
    let mut sim = Sim::new();
    sim.run(&registered(
        "fraud",
        "7",
        &[("auc", "0.9")],
        "mlw-dev",
        t(0, 0),
    ));
    let d = sim.run(&deployed("fraud", "7", "staging", None, t(1, 30)));
    assert!(d.actions.is_empty());
    assert_eq!(d.suppressed[0].rule, "default.deploy.staging.smoke_test");
}

#[test]
fn a_newer_registration_supersedes_the_pending_approval() {
    let mut sim = Sim::new();
    sim.run(&registered(
        "fraud",
        "7",
        &[("auc", "0.9")],
        "mlw-dev",
        t(0, 0),
    ));
    let newer = sim.run(&registered(
        "fraud",
        "8",
        &[("auc", "0.91")],
        "mlw-dev",
        t(1, 0),
    ));
    assert!(
        newer
            .fired
            .iter()
            .any(|n| n.reason.contains("supersedes the pending approval of v7"))
    );
    let closed = |d: &mlops_relay::policy::Decision| {
        d.changes
            .iter()
            .filter(|c| matches!(c, mlops_relay::policy::StateChange::ApprovalClosed { .. }))
            .count()
    };
    assert_eq!(
        closed(&newer),
        1,
        "v7's request is closed once: {}",
        newer.explanation()
    );
    let late = sim.run(&approval(
        "fraud",
        "7",
        "staging",
        "lead@x.io",
        true,
        t(2, 0),
    ));
    assert!(late.actions.is_empty());
    assert!(held(&late)[0].contains("no open approval"));
    assert_eq!(
        kinds(&sim.run(&approval(
            "fraud",
            "8",
            "staging",
            "lead@x.io",
            true,
            t(2, 1)
        ))),
        ["deploy"]
    );
}

#[test]
fn an_expired_approval_is_refused() {
    let mut sim = Sim::new();
    sim.run(&registered(
        "fraud",
        "7",
        &[("auc", "0.9")],
        "mlw-dev",
        t(0, 0),
    ));
    let d = sim.run(&approval(
        "fraud",
        "7",
        "staging",
        "lead@x.io",
        true,
        t(73, 0),
    ));
    assert!(d.actions.is_empty());
    assert!(held(&d)[0].contains("expired"));
}

#[test]
fn a_rejection_closes_the_gate_and_tells_the_team() {
    let mut sim = Sim::new();
    sim.run(&registered(
        "fraud",
        "7",
        &[("auc", "0.9")],
        "mlw-dev",
        t(0, 0),
    ));
    let no = sim.run(&approval(
        "fraud",
        "7",
        "staging",
        "lead@x.io",
        false,
        t(1, 0),
    ));
    assert_eq!(kinds(&no), ["notify"]);
    let later_yes = sim.run(&approval(
        "fraud",
        "7",
        "staging",
        "owner@x.io",
        true,
        t(1, 5),
    ));
    assert!(later_yes.actions.is_empty());
}

#[test]
fn promotion_to_prod_resolves_the_models_open_pages() {
    let mut sim = Sim::new();
    let page = sim.run(&drift("d1", "fraud", Some(0.9), t(0, 0)));
    let dedup = match &page.actions[0].params {
        ActionParams::Page { dedup_key, .. } => dedup_key.clone(),
        other => panic!("{other:?}"),
    };
    let d = promoted_to_prod(&mut sim, "7", "0.9");
    let resolve = d
        .actions
        .iter()
        .find(|a| a.kind == ActionKind::ResolvePage)
        .expect("resolve");
    match &resolve.params {
        ActionParams::ResolvePage {
            dedup_key, route, ..
        } => assert_eq!((dedup_key, route.as_str()), (&dedup, "oncall")),
        other => panic!("{other:?}"),
    }
    let next = sim.run(&deployed("fraud", "8", "prod", None, t(30, 0)));
    assert!(
        next.actions
            .iter()
            .all(|a| a.kind != ActionKind::ResolvePage),
        "a page resolves once"
    );
}

#[rstest]
#[case::legacy_monitor("myDriftMonitor", Some("sklearn_regression_model"))]
#[case::v2_signal_of_a_monitor("fraud_monitor_data_drift", Some("fraud"))]
#[case::unmapped("somebody_elses_monitor", None)]
fn monitors_are_mapped_to_models(#[case] monitor: &str, #[case] model: Option<&str>) {
    let mut sim = Sim::new();
    let d = sim.run(&monitor_drift("m1", monitor, Some(0.5), t(0, 0)));
    assert_eq!(d.model.as_deref(), model);
    match model {
        Some(_) => assert_eq!(kinds(&d), ["retrain"]),
        None => assert_eq!(d.suppressed[0].rule, "monitors"),
    }
}

#[test]
fn a_breach_without_a_value_follows_on_breach() {
    let mut sim = Sim::new();
    let d = sim.run(&monitor_drift(
        "m1",
        "fraud_monitor_data_drift",
        None,
        t(0, 0),
    ));
    assert_eq!(kinds(&d), ["page", "retrain"]);
}

#[rstest]
#[case::sev0("Sev0", Some("critical"))]
#[case::sev1("Sev1", Some("error"))]
#[case::sev2("Sev2", Some("warning"))]
#[case::sev3("Sev3", None)]
#[case::sev4("Sev4", None)]
fn infra_alerts_page_at_or_above_the_minimum_severity(
    #[case] severity: &str,
    #[case] pd: Option<&str>,
) {
    let mut sim = Sim::new();
    let d = sim.run(&alert("a1", severity, AlertCondition::Fired, t(0, 0)));
    match pd {
        Some(expected) => match &d.actions[0].params {
            ActionParams::Page {
                severity,
                dedup_key,
                ..
            } => {
                assert_eq!(severity, expected);
                assert_eq!(dedup_key, "infra:a1");
            }
            other => panic!("{other:?}"),
        },
        None => assert_eq!(d.suppressed[0].rule, "infra.min_severity"),
    }
}

#[test]
fn a_resolved_alert_resolves_its_page_with_the_same_key() {
    let mut sim = Sim::new();
    sim.run(&alert("a1", "Sev1", AlertCondition::Fired, t(0, 0)));
    let d = sim.run(&alert("a1", "Sev1", AlertCondition::Resolved, t(0, 30)));
    match &d.actions[0].params {
        ActionParams::ResolvePage { dedup_key, .. } => assert_eq!(dedup_key, "infra:a1"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_fired_notice_that_arrives_after_its_resolution_opens_no_page() {
    let mut sim = Sim::new();
    let resolved = sim.run(&alert("a1", "Sev1", AlertCondition::Resolved, t(0, 30)));
    assert_eq!(kinds(&resolved), ["resolve_page"]);
    let late = sim.run(&alert("a1", "Sev1", AlertCondition::Fired, t(0, 31)));
    assert!(late.actions.is_empty(), "{}", late.explanation());
    assert!(
        held(&late)[0].contains("already resolved"),
        "{:?}",
        held(&late)
    );
    assert_eq!(
        kinds(&sim.run(&alert("a2", "Sev1", AlertCondition::Fired, t(0, 40)))),
        ["page"]
    );
}

#[rstest]
#[case::named_model(Some("fraud"))]
#[case::no_model_uses_the_catch_all_rule(None)]
fn a_failed_run_notifies_the_team(#[case] model: Option<&str>) {
    let mut sim = Sim::new();
    let d = sim.run(&run_failed("run-1", model, t(0, 0)));
    assert_eq!(kinds(&d), ["notify"]);
    assert!(d.actions[0].reason.contains("run-1"));
}

#[test]
fn a_schedule_retrains_its_model_and_respects_the_cooldown() {
    let mut sim = Sim::new();
    let due = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 11, 8, 3, 0, 0).unwrap();
    sim.run(&drift("d1", "fraud", Some(0.4), due - TimeDelta::hours(1)));
    let held_by_cooldown = sim.run(&Signal::schedule("weekly", due));
    assert!(held_by_cooldown.actions.is_empty());
    let next_week = sim.run(&Signal::schedule("weekly", due + TimeDelta::days(7)));
    assert_eq!(kinds(&next_week), ["retrain"]);
    assert_eq!(next_week.model.as_deref(), Some("fraud"));
    let tick_again = sim.run(&Signal::schedule("weekly", due + TimeDelta::days(7)));
    assert!(
        tick_again.duplicate,
        "a duplicate timer tick for the same instant fires once"
    );
}

#[test]
fn no_rule_means_no_action_and_a_reason() {
    let text = POLICY.replace("models = [\"*\"]", "models = [\"fraud\", \"fraud-*\"]");
    let mut sim = Sim::with(Policy::parse(&text).unwrap());
    let d = sim.run(&drift("d1", "churn", Some(0.9), t(0, 0)));
    assert!(d.actions.is_empty());
    assert_eq!(held(&d), ["rules: no rule matches model `churn`"]);
}

#[test]
fn every_decision_explains_itself() {
    let mut sim = Sim::new();
    for s in [
        drift("d1", "fraud", Some(0.1), t(0, 0)),
        drift("d2", "fraud", Some(0.9), t(0, 1)),
        drift("d2", "fraud", Some(0.9), t(0, 1)),
        registered("fraud", "7", &[("auc", "0.9")], "mlw-dev", t(0, 2)),
    ] {
        let d = sim.run(&s);
        let text = d.explanation();
        assert!(text.starts_with(d.signal.kind().as_str()), "{text}");
        for h in &d.suppressed {
            assert!(!h.reason.is_empty() && text.contains(&h.reason), "{text}");
        }
    }
}

/// The helper policy with a first rule for `tier = "critical"` models whose prod gate needs 2 of 3, and a
/// default rule (the helper's, without gates) for the rest.
fn critical_and_ungated_policy() -> Policy {
    let gated = POLICY
        .split("[[rule]]")
        .nth(1)
        .unwrap()
        .split("[[schedule]]")
        .next()
        .unwrap();
    let ungated: String = gated
        .lines()
        .filter(|l| {
            !l.trim_start().starts_with("[rule.gates.prod]")
                && !l.contains("sw1@x.io")
                && !l.contains("required = 2")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let critical = gated.replace(
        "name = \"default\"",
        "name = \"critical\"\ntags = { tier = \"critical\" }",
    );
    let text = format!(
        "{}[[rule]]{critical}[[rule]]{ungated}\n",
        POLICY.split("[[rule]]").next().unwrap()
    );
    let policy = Policy::parse(&text).unwrap();
    assert!(
        !policy.rules()[1].spec.gates.contains_key("prod"),
        "default has no prod gate"
    );
    policy
}

#[test]
fn a_version_is_governed_by_its_own_tags_not_the_latest_registrations() {
    let mut sim = Sim::with(critical_and_ungated_policy());
    sim.run(&registered(
        "fraud",
        "7",
        &[("tier", "critical"), ("auc", "0.9")],
        "mlw-dev",
        t(0, 0),
    ));
    sim.run(&approval(
        "fraud",
        "7",
        "staging",
        "lead@x.io",
        true,
        t(1, 0),
    ));
    // A newer version without tags, registered while v7 is in staging (its own staging request opens).
    sim.run(&registered(
        "fraud",
        "8",
        &[("auc", "0.8")],
        "mlw-dev",
        t(1, 10),
    ));
    let d = sim.run(&deployed("fraud", "7", "staging", Some(true), t(1, 30)));
    assert_eq!(d.rule.as_deref(), Some("critical"), "{}", d.explanation());
    assert_eq!(
        kinds(&d),
        ["request_approval"],
        "v7 is critical: its prod gate stands ({})",
        d.explanation()
    );
}

#[test]
fn a_requester_named_in_the_properties_may_not_approve_at_the_prod_gate_either() {
    let mut sim = Sim::new();
    let mut reg = registered("fraud", "7", &[("auc", "0.9")], "mlw-dev", t(0, 0));
    if let mlops_relay::domain::SignalBody::ModelRegistered { properties, .. } = &mut reg.body {
        properties.insert("owner".into(), "sw1@x.io".into());
    }
    sim.run(&reg);
    sim.run(&approval(
        "fraud",
        "7",
        "staging",
        "lead@x.io",
        true,
        t(1, 0),
    ));
    assert_eq!(
        kinds(&sim.run(&deployed("fraud", "7", "staging", Some(true), t(1, 30)))),
        ["request_approval"]
    );
    let own = sim.run(&approval("fraud", "7", "prod", "sw1@x.io", true, t(2, 0)));
    assert!(own.actions.is_empty());
    assert!(
        held(&own).iter().any(|h| h.contains("may not approve")),
        "{:?}",
        held(&own)
    );
}

#[rstest]
#[case::nan("NaN")]
#[case::infinite("inf")]
fn a_metric_that_is_not_a_finite_number_never_beats_the_champion(#[case] auc: &str) {
    let mut sim = Sim::new();
    let _ = promoted_to_prod(&mut sim, "1", "0.90");
    let d = sim.run(&registered(
        "fraud",
        "2",
        &[("auc", auc)],
        "mlw-dev",
        t(10, 0),
    ));
    assert!(d.actions.is_empty(), "{}", d.explanation());
    assert_eq!(d.suppressed[0].rule, "default.gates.staging.champion");
}

#[test]
fn a_champion_gate_with_a_nan_margin_is_refused() {
    let text = POLICY.replace(
        "champion = { metric = \"auc\" }",
        "champion = { metric = \"auc\", min_improvement = nan }",
    );
    let err = format!("{:?}", Policy::parse(&text).unwrap_err());
    assert!(err.contains("min_improvement"), "{err}");
}

#[test]
fn a_late_registration_of_an_older_version_leaves_the_newer_request_open() {
    let mut sim = Sim::new();
    sim.run(&registered(
        "fraud",
        "10",
        &[("auc", "0.9")],
        "mlw-dev",
        t(1, 0),
    ));
    let late = sim.run(&registered(
        "fraud",
        "9",
        &[("auc", "0.9")],
        "mlw-dev",
        t(1, 5),
    ));
    assert!(late.actions.is_empty(), "{}", late.explanation());
    assert!(
        late.explanation().contains("v10, which is newer"),
        "{}",
        late.explanation()
    );
    assert_eq!(
        kinds(&sim.run(&approval(
            "fraud",
            "10",
            "staging",
            "lead@x.io",
            true,
            t(2, 0)
        ))),
        ["deploy"],
        "v10's request is still open"
    );
}

#[test]
fn an_older_version_reaching_a_gate_does_not_replace_a_newer_versions_request_or_its_votes() {
    let mut sim = Sim::new();
    for (v, at) in [("7", 0), ("8", 2)] {
        sim.run(&registered(
            "fraud",
            v,
            &[("auc", "0.9")],
            "mlw-dev",
            t(at, 0),
        ));
        sim.run(&approval(
            "fraud",
            v,
            "staging",
            "lead@x.io",
            true,
            t(at, 10),
        ));
    }
    assert_eq!(
        kinds(&sim.run(&deployed("fraud", "8", "staging", Some(true), t(3, 0)))),
        ["request_approval"]
    );
    sim.run(&approval("fraud", "8", "prod", "sw1@x.io", true, t(3, 10)));
    let late = sim.run(&deployed("fraud", "7", "staging", Some(true), t(3, 20)));
    assert!(late.actions.is_empty(), "{}", late.explanation());
    assert!(
        held(&late).iter().any(|h| h.contains("v8, newer than v7")),
        "{:?}",
        held(&late)
    );
    // The same report again does not reopen v8's request either: sw1's vote still counts.
    let again = sim.run(&deployed("fraud", "8", "staging", None, t(3, 25)));
    assert!(again.actions.is_empty(), "{}", again.explanation());
    assert_eq!(
        kinds(&sim.run(&approval("fraud", "8", "prod", "sw2@x.io", true, t(3, 30)))),
        ["deploy"],
        "2 of 3 with sw1's earlier vote"
    );
}

#[test]
fn a_rule_that_only_pages_is_accepted_and_a_breach_without_a_value_pages() {
    let text = POLICY
        .replace("  retrain_at = 0.3\n", "")
        .replace("  on_breach = [\"retrain\", \"page\"]\n", "")
        .replace(
            "  [rule.retrain]\n  pipeline = \"azureml://registries/mlr-shared/components/train/versions/1\"\n",
            "",
        )
        .replace("[[schedule]]\nname = \"weekly\"\ncron = \"0 0 3 * * Sun\"\nmodel = \"fraud\"\n", "");
    let policy = Policy::parse(&text).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(policy.rules()[0].spec.retrain.is_none());
    let mut sim = Sim::with(policy);
    let d = sim.run(&monitor_drift("b1", "fraud_monitor", None, t(2, 0)));
    assert_eq!(kinds(&d), ["page"], "{}", d.explanation());
    assert_eq!(
        kinds(&sim.run(&drift("b2", "churn", Some(0.8), t(2, 5)))),
        ["page"]
    );
}

#[test]
fn a_gate_that_outlives_the_dedupe_window_is_refused() {
    let text = POLICY.replace("expires = \"72h\"", "expires = \"14d\"");
    let err = format!("{:?}", Policy::parse(&text).unwrap_err());
    assert!(
        err.contains("gates.staging.expires") && err.contains("single-use"),
        "{err}"
    );
    let longer = text.replace("[budget]", "[dedupe]\nwindow = \"14d\"\n[budget]");
    assert!(Policy::parse(&longer).is_ok());
}

#[test]
fn a_schedule_may_name_a_model_that_only_a_tag_selected_rule_governs() {
    let text = POLICY.replace(
        "models = [\"*\"]",
        "models = [\"*\"]\ntags = { tier = \"critical\" }",
    );
    let policy = Policy::parse(&text).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(!policy.rules()[0].spec.tags.is_empty());
}

/// The deploy action of `model:version` to staging, once its staging gate is approved.
fn staging_deploy(sim: &mut Sim, model: &str, version: &str) -> mlops_relay::policy::Decision {
    sim.run(&registered(
        model,
        version,
        &[("auc", "0.9")],
        "mlw-dev",
        t(0, 0),
    ));
    sim.run(&approval(
        model,
        version,
        "staging",
        "lead@x.io",
        true,
        t(1, 0),
    ))
}

#[test]
fn endpoint_and_deployment_names_are_ones_azure_ml_accepts() {
    let mut sim = Sim::new();
    let d = staging_deploy(&mut sim, "credit_risk.v2", "7");
    match &d.actions[0].params {
        ActionParams::Deploy {
            endpoint,
            deployment,
            ..
        } => {
            assert_eq!(
                endpoint, "credit-risk-v2-staging",
                "`_` and `.` are not allowed"
            );
            assert_eq!(deployment, "version-7", "`v7` is under 3 characters");
        }
        other => panic!("{other:?}"),
    }
    let d = staging_deploy(&mut sim, "fraud", "12");
    assert!(
        matches!(&d.actions[0].params, ActionParams::Deploy { deployment, .. } if deployment == "v12")
    );

    // Past 32 characters: held with the reason rather than refused by Azure ML and dead-lettered.
    let long = "a_model_name_that_is_long_enough";
    let d = staging_deploy(&mut sim, long, "3");
    assert!(d.actions.is_empty(), "{}", d.explanation());
    let hold = &d.suppressed[0];
    assert_eq!(hold.rule, "default.deploy.staging.endpoint");
    assert!(
        hold.reason
            .contains("a-model-name-that-is-long-enough-staging"),
        "{}",
        hold.reason
    );
}

#[test]
fn an_endpoint_template_no_model_could_fill_in_validly_is_refused() {
    let text = POLICY.replace(
        "endpoint = \"{model}-staging\"",
        "endpoint = \"{model}_staging\"",
    );
    let err = format!("{:?}", Policy::parse(&text).unwrap_err());
    assert!(
        err.contains("deploy.staging.endpoint") && err.contains("3–32"),
        "{err}"
    );
}

#[test]
fn a_dedupe_window_shorter_than_event_grids_retries_is_refused() {
    let text = POLICY.replace("[budget]", "[dedupe]\nwindow = \"1h\"\n[budget]");
    let err = format!("{:?}", Policy::parse(&text).unwrap_err());
    assert!(
        err.contains("dedupe.window") && err.contains("24h"),
        "{err}"
    );
}
