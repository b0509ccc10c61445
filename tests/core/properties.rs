//! Invariants over random histories: whatever arrives, in whatever mix of duplicates and bursts,
//! a duplicate never acts, a model never retrains twice within its cooldown, and the fleet budget holds.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use mlops_relay::domain::Signal;
use mlops_relay::policy::{ActionKind, Decision};
use proptest::prelude::*;

use crate::helpers::*;

#[derive(Debug, Clone)]
enum Step {
    Drift {
        model: usize,
        value: f64,
        gap_min: i64,
    },
    Schedule {
        week: i64,
    },
    Repeat {
        back: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0usize..5, 0.0f64..1.0, 0i64..240).prop_map(|(model, value, gap_min)| Step::Drift { model, value, gap_min }),
        1 => (0i64..3).prop_map(|week| Step::Schedule { week }),
        2 => (1usize..10).prop_map(|back| Step::Repeat { back }),
    ]
}

const MODELS: [&str; 5] = ["fraud", "churn", "ltv", "eta", "sklearn_regression_model"];

/// Turns steps into signals with non-decreasing time (duplicates are re-delivered later, as Event Grid does).
fn history(steps: &[Step]) -> Vec<(Signal, DateTime<Utc>)> {
    let mut now = t(0, 0);
    let mut out: Vec<(Signal, DateTime<Utc>)> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        match s {
            Step::Drift {
                model,
                value,
                gap_min,
            } => {
                now += TimeDelta::minutes(*gap_min);
                out.push((
                    drift(&format!("e{i}"), MODELS[*model], Some(*value), now),
                    now,
                ));
            }
            Step::Schedule { week } => {
                let due = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 11, 8, 3, 0, 0).unwrap()
                    + TimeDelta::weeks(*week);
                // Decisions are made in time order (wall clock at runtime, event-time order in replay).
                now = now.max(due);
                out.push((Signal::schedule("weekly", due), now));
            }
            Step::Repeat { back } => {
                if let Some((signal, _)) = out
                    .len()
                    .checked_sub(*back)
                    .and_then(|j| out.get(j))
                    .cloned()
                {
                    now += TimeDelta::minutes(1);
                    out.push((signal, now));
                }
            }
        }
    }
    out
}

fn run(steps: &[Step]) -> Vec<Decision> {
    let mut sim = Sim::new();
    history(steps)
        .iter()
        .map(|(s, at)| sim.run_at(s, *at))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_duplicate_never_yields_a_second_action(steps in prop::collection::vec(step(), 1..80)) {
        // The contract holds within the dedupe window (7 days here; Event Grid retries for at most one).
        let window = TimeDelta::days(7);
        let mut seen: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        for d in run(&steps) {
            let first = *seen.entry(d.signal.key.clone()).or_insert(d.at);
            if first != d.at && d.at - first < window {
                prop_assert!(d.duplicate);
                prop_assert!(d.actions.is_empty(), "duplicate {} acted: {:?}", d.signal.key, d.actions);
            }
        }
    }

    #[test]
    fn no_model_retrains_twice_within_its_cooldown(steps in prop::collection::vec(step(), 1..80)) {
        let cooldown = TimeDelta::hours(6);
        let mut last: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        for d in run(&steps) {
            for a in d.actions.iter().filter(|a| a.kind == ActionKind::Retrain) {
                let model = a.model.clone().expect("retrains name a model");
                if let Some(prev) = last.get(&model) {
                    prop_assert!(d.at - *prev >= cooldown, "{model} retrained at {prev} and again at {}", d.at);
                }
                last.insert(model, d.at);
            }
        }
    }

    #[test]
    fn the_fleet_budget_is_never_exceeded(steps in prop::collection::vec(step(), 1..120)) {
        let (max, window) = (3usize, TimeDelta::hours(24));
        let times: Vec<DateTime<Utc>> = run(&steps)
            .iter()
            .flat_map(|d| d.actions.iter().filter(|a| a.kind == ActionKind::Retrain).map(move |_| d.at))
            .collect();
        for (i, start) in times.iter().enumerate() {
            let in_window = times[i..].iter().filter(|t| **t - *start < window).count();
            prop_assert!(in_window <= max, "{in_window} retrains within 24h from {start}");
        }
    }

    #[test]
    fn decisions_are_deterministic(steps in prop::collection::vec(step(), 1..40)) {
        prop_assert_eq!(run(&steps), run(&steps));
    }
}

#[test]
fn remembered_event_keys_stay_bounded_by_the_dedupe_window() {
    let mut sim = Sim::new();
    let mut now = t(0, 0);
    for i in 0..20_000 {
        now += TimeDelta::minutes(5);
        sim.run_at(&drift(&format!("e{i}"), "fraud", Some(0.1), now), now);
    }
    // 7 days of 5-minute events is 2016 keys; 20 000 events must not all be kept.
    assert!(
        sim.state.remembered_keys() <= 7 * 24 * 12 + 1,
        "{}",
        sim.state.remembered_keys()
    );
    // Forgotten keys are swept in bulk, once the map has doubled: at most twice the window's worth is held.
    assert!(
        sim.state.held_keys() <= 2 * (7 * 24 * 12 + 1),
        "{}",
        sim.state.held_keys()
    );
}

/// A key older than the dedupe window is forgotten at once, whether or not the sweep has removed it yet: the
/// same event delivered again after the window is decided again.
#[test]
fn a_key_is_forgotten_when_the_window_has_passed_not_when_it_is_swept() {
    let mut sim = Sim::new();
    let start = t(0, 0);
    let first = sim.run_at(&drift("again", "fraud", Some(0.5), start), start);
    assert!(!first.duplicate);
    // A few other events within the window: far fewer than a sweep needs.
    for i in 0..10 {
        let at = start + TimeDelta::hours(1) + TimeDelta::minutes(i);
        sim.run_at(&drift(&format!("other-{i}"), "fraud", Some(0.1), at), at);
    }
    let inside = start + TimeDelta::days(6);
    assert!(
        sim.run_at(&drift("again", "fraud", Some(0.5), inside), inside)
            .duplicate
    );
    // The memory state forgets as of the last decision folded in (a store forgets as of the decision's time).
    let after = start + TimeDelta::days(8);
    sim.run_at(&drift("later", "fraud", Some(0.1), after), after);
    let again = sim.run_at(&drift("again", "fraud", Some(0.5), after), after);
    assert!(!again.duplicate, "{}", again.explanation());
    // Forgotten, not yet swept.
    assert!(sim.state.held_keys() > sim.state.remembered_keys());
}

/// The reorder buffer (a sorted queue for signals in order, a heap for stragglers) lets signals out in exactly
/// the order one heap over everything would, by (time, arrival), and counts the same late ones. A heap entry is
/// settled when the heap is over capacity or, with a window, when the newest time seen is more than the window
/// past it.
fn reference_order(times: &[i64], capacity: usize, window: Option<i64>) -> (Vec<usize>, u64) {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut heap = BinaryHeap::new();
    let (mut out, mut late, mut last) = (Vec::new(), 0u64, None);
    let mut take = |heap: &mut BinaryHeap<Reverse<(i64, usize)>>, out: &mut Vec<usize>| {
        let Reverse((t, i)) = heap.pop().expect("non-empty");
        if last.is_some_and(|l| t < l) {
            late += 1;
        } else {
            last = Some(t);
        }
        out.push(i);
    };
    let mut newest = i64::MIN;
    for (i, t) in times.iter().enumerate() {
        heap.push(Reverse((*t, i)));
        newest = newest.max(*t);
        while heap.len() > capacity
            || window.is_some_and(|w| heap.peek().is_some_and(|Reverse((f, _))| *f < newest - w))
        {
            take(&mut heap, &mut out);
        }
    }
    while !heap.is_empty() {
        take(&mut heap, &mut out);
    }
    (out, late)
}

proptest! {
    #[test]
    fn reorder_buffer_matches_one_heap(
        jitter in proptest::collection::vec((0i64..100, prop_oneof![4 => Just(0i64), 1 => 0i64..50]), 0..300),
        capacity in 1usize..40,
        window in proptest::option::of(0i64..60),
    ) {
        // Mostly increasing times with some stragglers (and ties).
        let times: Vec<i64> = jitter.iter().map(|(base, back)| base / 10 * 10 - back).scan(0i64, |clock, t| {
            *clock += 1;
            Some(*clock + t)
        }).collect();
        let mut ordered = mlops_relay::replay::Ordered::with_window(capacity, window.map(TimeDelta::seconds));
        let mut out = Vec::new();
        for (i, secs) in times.iter().enumerate() {
            ordered.insert(drift(&format!("e{i}"), "fraud", Some(0.1), t(0, 0) + TimeDelta::seconds(*secs)));
            while let Some(s) = ordered.pop(false) {
                out.push(s.event_id[1..].parse::<usize>().expect("index"));
            }
        }
        while let Some(s) = ordered.pop(true) {
            out.push(s.event_id[1..].parse::<usize>().expect("index"));
        }
        let (expected, late) = reference_order(&times, capacity, window);
        prop_assert_eq!(out, expected);
        prop_assert_eq!(ordered.late, late);
        prop_assert!(ordered.is_empty());
    }

    /// With a lateness window and room to spare, every event that arrives no more than the window behind the
    /// newest one before it comes out in time order, and the buffer never holds an event that is settled.
    #[test]
    fn events_within_the_window_are_decided_in_order(
        lateness in proptest::collection::vec(prop_oneof![3 => Just(0i64), 1 => 0i64..120], 1..300),
        window in 0i64..90,
    ) {
        let times: Vec<i64> = lateness.iter().enumerate().map(|(i, back)| i as i64 * 10 - back).collect();
        let mut ordered = mlops_relay::replay::Ordered::with_window(usize::MAX, Some(TimeDelta::seconds(window)));
        let (mut out, mut newest) = (Vec::new(), i64::MIN);
        let mut on_time = Vec::new();
        for (i, secs) in times.iter().enumerate() {
            on_time.push(newest == i64::MIN || newest - secs <= window);
            newest = newest.max(*secs);
            ordered.insert(drift(&format!("e{i}"), "fraud", Some(0.1), t(0, 0) + TimeDelta::seconds(*secs)));
            while let Some(s) = ordered.pop(false) {
                out.push(s.event_id[1..].parse::<usize>().expect("index"));
            }
            // Nothing held is older than the window behind the newest.
            prop_assert!(ordered.len() <= times[..=i].iter().filter(|t| **t >= newest - window).count());
        }
        while let Some(s) = ordered.pop(true) {
            out.push(s.event_id[1..].parse::<usize>().expect("index"));
        }
        let in_time: Vec<usize> = out.iter().copied().filter(|i| on_time[*i]).collect();
        let mut sorted = in_time.clone();
        sorted.sort_by_key(|i| (times[*i], *i));
        prop_assert_eq!(in_time, sorted);
    }
}
