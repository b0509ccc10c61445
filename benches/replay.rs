//! Replay throughput and peak memory (`make bench`, or `cargo bench --locked --bench replay`).
//!
//! Generates a JSON Lines history of `BENCH_EVENTS` (default 1,000,000) mixed events in a temporary directory,
//! then measures in the same run:
//!
//! * the baseline: plain `serde_json` parsing of every line of the file into a `serde_json::Value`;
//! * the candidate: the real `mlops-relay replay --policy examples/policy.toml --format jsonl FILE` binary,
//!   run as a child process with its output sent to `/dev/null`, so its peak RSS is its own;
//! * the same replay in process (`replay::run`), and cut short after each of its stages (reader, signals,
//!   decide) to show where the time goes;
//! * the child's peak RSS over the first tenth of the history and over all of it: memory is flat when the two
//!   are about equal.
//!
//! Rates are events per second of wall time: replay reads, decides and writes on three threads, so its CPU
//! time (user + sys, from `/proc` and GNU time) counts every thread and is printed beside it, with the cores
//! it kept busy. Wall time is what a busy machine skews: run on a quiet one, with `BENCH_RUNS` > 1. The
//! baseline and the child alternate round by round, so a drift in the machine's speed reaches both, and the
//! ratio of each back-to-back pair is printed too. The target: replay at least 0.5× the baseline's
//! throughput, and flat memory.
//!
//! Environment: `BENCH_EVENTS` (number of events; 200000 for a quick run), `BENCH_RUNS` (repetitions of each
//! timed measurement, best kept; default 1), `BENCH_KEEP` (a directory to keep the generated files in),
//! `BENCH_ENFORCE=1` (exit 1 when a target is missed; by default the verdict is only reported).

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{Value, json};

use mlops_relay::policy::Policy;
use mlops_relay::replay::{self, Engine, Format, Options, Ordered, reader};

const DEFAULT_EVENTS: u64 = 1_000_000;
/// The `replay` command's default `--reorder-buffer`.
const REORDER_BUFFER: usize = 65_536;
/// The `replay` command's default `--reorder-window`.
const REORDER_WINDOW: TimeDelta = TimeDelta::hours(24);
/// Events in the reorder window at the generator's ~30 s mean spacing.
const REORDER_WINDOW_EVENTS: u64 = 24 * 3600 / 30;
/// Targets from the issue.
const TARGET_RATIO: f64 = 0.5;
/// Peak RSS at N may be at most this much above peak RSS at N/10 to count as flat.
const FLAT_TOLERANCE: f64 = 0.25;
/// Events in the policy's 7-day dedupe window at the generator's ~30 s mean spacing.
const DEDUPE_WINDOW_EVENTS: u64 = 7 * 24 * 3600 / 30;

const BIN: &str = env!("CARGO_BIN_EXE_mlops-relay");

/// The shipped binary's allocator: the baseline runs on the system allocator (a plain program), the in-process
/// replay on mimalloc as `mlops-relay replay` does, and the baseline once more on mimalloc for comparison.
#[global_allocator]
static ALLOCATOR: mlops_relay::alloc::Switchable = mlops_relay::alloc::Switchable::new();
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn main() {
    let events = env_u64("BENCH_EVENTS").unwrap_or(DEFAULT_EVENTS).max(10);
    let runs = env_u64("BENCH_RUNS").unwrap_or(1).max(1) as usize;
    let policy_path = Path::new(MANIFEST_DIR).join("examples/policy.toml");

    let tmp = tempfile::Builder::new()
        .prefix("mlops-relay-bench-")
        .tempdir()
        .expect("temporary directory");
    let dir = match std::env::var_os("BENCH_KEEP") {
        Some(d) => {
            let d = PathBuf::from(d);
            std::fs::create_dir_all(&d).expect("BENCH_KEEP directory");
            d
        }
        None => tmp.path().to_path_buf(),
    };
    let full = dir.join("history.jsonl");
    let tenth = dir.join("history-tenth.jsonl");

    let small_events = events / 10;
    eprintln!("generating {events} events into {} ...", dir.display());
    let started = Instant::now();
    let stats = generate(&full, &tenth, events, small_events).expect("generate history");
    eprintln!(
        "generated {} events ({} lines, {} duplicates, {} out of order, {:.1} MB) in {:.1} s",
        stats.events,
        stats.lines,
        stats.duplicates,
        stats.out_of_order,
        stats.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let baseline_once = || {
        let t = Stopwatch::start();
        let n = parse_plain(&full).expect("baseline parse");
        assert_eq!(n, stats.events, "baseline saw a different number of events");
        t.stop()
    };
    let measure_baseline = || best_of(runs, baseline_once);

    // The baseline and the child alternate, round by round: this machine's speed drifts over minutes, and
    // measuring one side's runs all before the other's turned that drift into the ratio.
    eprintln!(
        "baseline (serde_json parse of every line) and {BIN} replay (child process), {runs} round(s) ..."
    );
    let mut child_full: Option<ChildRun> = None;
    let mut rounds: Vec<(Timing, Timing)> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let base = baseline_once();
        let m = replay_child(&policy_path, &full);
        rounds.push((base, m.timing));
        if child_full
            .as_ref()
            .is_none_or(|b| m.peak_rss_kib > b.peak_rss_kib)
        {
            child_full = Some(m);
        }
    }
    let child_full = child_full.expect("at least one run");
    let fastest = |pick: fn(&(Timing, Timing)) -> Timing| {
        rounds
            .iter()
            .map(pick)
            .min_by(|a, b| a.secs().total_cmp(&b.secs()))
            .expect("runs ≥ 1")
    };
    let (baseline, child_time) = (fastest(|r| r.0), fastest(|r| r.1));
    let mut paired: Vec<f64> = rounds.iter().map(|(b, c)| b.secs() / c.secs()).collect();
    paired.sort_by(f64::total_cmp);

    eprintln!("replay: first tenth of the history (child process, for peak memory) ...");
    let child_tenth = replay_child(&policy_path, &tenth);

    ALLOCATOR.use_mimalloc();
    eprintln!("baseline again, on mimalloc ...");
    let baseline_mi = measure_baseline();

    eprintln!("replay: in process (replay::run) ...");
    let policy_text = std::fs::read_to_string(&policy_path).expect("read policy");
    let policy = Policy::parse(&policy_text).expect("examples/policy.toml is valid");
    let mut summary = None;
    let in_process = best_of(runs, || {
        let opts = Options {
            format: Format::Jsonl,
            reorder_buffer: REORDER_BUFFER,
            reorder_window: Some(REORDER_WINDOW),
            schedules: true,
            progress: false,
        };
        let mut out = BufWriter::with_capacity(256 * 1024, io::sink());
        let mut failed = 0u64;
        let t = Stopwatch::start();
        let s = replay::run(
            &policy,
            std::slice::from_ref(&full),
            &opts,
            &mut out,
            &mut |_| failed += 1,
        )
        .expect("in-process replay");
        let elapsed = t.stop();
        summary = Some(s);
        elapsed
    });
    let summary = summary.expect("at least one run");

    eprintln!("breakdown: replay's stages in process ...");
    let stages: Vec<(Stage, Timing)> = [Stage::Read, Stage::Signals, Stage::Decide, Stage::Write]
        .into_iter()
        .map(|stage| {
            (
                stage,
                best_of(runs, || run_stage(&policy, &full, stage, stats.events)),
            )
        })
        .collect();

    // Report.
    let mb = stats.bytes as f64 / 1e6;
    let rate = |t: Timing| stats.events as f64 / t.secs();
    let base_eps = rate(baseline);
    let child_eps = rate(child_time);
    let inproc_eps = rate(in_process);
    let ratio = child_eps / base_eps;
    let ratio_in = inproc_eps / base_eps;
    let ratio_mi = child_eps / rate(baseline_mi);
    let rss_small = child_tenth.peak_rss_kib as f64 / 1024.0;
    let rss_full = child_full.peak_rss_kib as f64 / 1024.0;
    let growth = rss_full / rss_small - 1.0;

    println!();
    println!("mlops-relay replay benchmark");
    println!("============================");
    println!(
        "history        {} events in {} lines, {:.1} MB ({:.0} bytes/event); {} duplicates, {} out of order",
        stats.events,
        stats.lines,
        mb,
        stats.bytes as f64 / stats.events as f64,
        stats.duplicates,
        stats.out_of_order
    );
    println!(
        "               event times {} .. {}",
        stats.first.to_rfc3339_opts(SecondsFormat::Secs, true),
        stats.last.to_rfc3339_opts(SecondsFormat::Secs, true)
    );
    println!(
        "policy         examples/policy.toml, --format jsonl, reorder buffer {REORDER_BUFFER} events or 24 h, schedules on; best of {runs} run(s)"
    );
    println!(
        "clock          {}; load average {}",
        format_args!(
            "rates from wall time; {} cores; CPU time (user + sys) and cores kept busy shown beside",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into())
    );
    println!();
    println!(
        "                                                   cpu s  cores    wall s      events/s     MB/s"
    );
    let row = |name: &str, t: Timing, ratio: Option<f64>| {
        println!(
            "{name:<48} {:>8} {:>6} {:>9.2} {:>13.0} {:>8.1}{}",
            t.cpu
                .map(|c| format!("{:.2}", c.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            t.cores()
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "-".into()),
            t.wall.as_secs_f64(),
            rate(t),
            mb / t.secs(),
            ratio
                .map(|r| format!("   {r:.2}× baseline"))
                .unwrap_or_default()
        );
    };
    row(
        "baseline       serde_json → Value, line by line",
        baseline,
        None,
    );
    row("baseline       the same, on mimalloc", baseline_mi, None);
    row(
        "replay         mlops-relay replay (child)",
        child_time,
        Some(ratio),
    );
    row(
        "replay         replay::run (in process)",
        in_process,
        Some(ratio_in),
    );
    println!(
        "               child/baseline in each round, run back to back: {}",
        paired
            .iter()
            .map(|r| format!("{r:.2}×"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "               {} records, {} decisions, {} failed, {} late; actions: {}",
        summary.records,
        summary.decisions,
        summary.failed,
        summary.late,
        summary
            .actions
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!(
        "where the time goes (in process, on one thread, cumulative; each stage includes the ones above it)"
    );
    let single = stages.last().map_or(in_process, |(_, t)| *t);
    let mut previous = 0.0;
    for (stage, t) in stages.iter().map(|(s, t)| (s.describe(), *t)) {
        let step = (t.secs() - previous).max(0.0);
        println!(
            "  {:<48} {:>7.2} s  (+{:>5.2} s, {:>4.1}%)   {:>5.2} µs/event",
            stage,
            t.secs(),
            step,
            100.0 * step / single.secs(),
            step * 1e6 / stats.events as f64
        );
        previous = t.secs();
    }
    println!(
        "  replay runs these on three threads (read and convert | reorder, decide and format | write), {:.2}× faster \
         than on one",
        single.secs() / in_process.secs()
    );
    println!();
    println!(
        "peak RSS       {:>10} events: {:>7.1} MiB   ({}, {:.2} s wall)",
        small_events,
        rss_small,
        child_tenth.rss_source,
        child_tenth.timing.wall.as_secs_f64()
    );
    println!(
        "peak RSS       {:>10} events: {:>7.1} MiB   ({}, {:.2} s wall)   {:+.0}%",
        stats.events,
        rss_full,
        child_full.rss_source,
        child_full.timing.wall.as_secs_f64(),
        growth * 100.0
    );
    for run in [&child_tenth, &child_full] {
        if !run.ok || !run.stderr.trim().is_empty() {
            println!(
                "               note: the child exited with {} and said: {}",
                run.status,
                first_lines(&run.stderr, 3)
            );
        }
    }
    println!();
    let speed_ok = ratio >= TARGET_RATIO;
    let flat = growth <= FLAT_TOLERANCE;
    let fills = (REORDER_BUFFER as u64).min(REORDER_WINDOW_EVENTS) + DEDUPE_WINDOW_EVENTS;
    let conclusive = small_events >= fills;
    println!(
        "verdict        throughput {:.2}× (target ≥ {TARGET_RATIO}×): {}",
        ratio,
        if speed_ok { "PASS" } else { "FAIL" }
    );
    println!(
        "               (against the baseline on mimalloc, the allocator replay uses: {ratio_mi:.2}×)"
    );
    println!(
        "               memory {:.1} → {:.1} MiB, {:+.0}% (flat: ≤ +{:.0}%): {}",
        rss_small,
        rss_full,
        growth * 100.0,
        FLAT_TOLERANCE * 100.0,
        match (flat, conclusive) {
            (true, _) => "PASS",
            (false, true) => "FAIL",
            (false, false) => "INCONCLUSIVE",
        }
    );
    if !conclusive {
        println!(
            "               caveat: {small_events} events do not yet fill the 24-hour reorder window and the \
             7-day dedupe window (~{fills} events), so some growth to N is expected; run with BENCH_EVENTS ≥ {} \
             for a conclusive memory check",
            10 * fills
        );
    }
    if let Some(keep) = std::env::var_os("BENCH_KEEP") {
        println!("files kept in  {}", PathBuf::from(keep).display());
    }
    if std::env::var("BENCH_ENFORCE").is_ok_and(|v| v == "1") && !(speed_ok && flat) {
        drop(tmp); // exit() skips destructors: remove the generated files first
        std::process::exit(1);
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let cleaned: String = text.chars().filter(|c| *c != '_' && *c != ',').collect();
    match cleaned.trim().parse() {
        Ok(v) => Some(v),
        Err(_) => panic!("{name}={text:?} is not a number"),
    }
}

/// Wall time, and CPU time (user + sys) when the platform tells it.
#[derive(Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: Option<Duration>,
}

impl Timing {
    /// The seconds rates are computed from: wall time (replay runs on several threads).
    fn secs(self) -> f64 {
        self.wall.as_secs_f64()
    }

    /// CPU time over wall time: how many cores were kept busy.
    fn cores(self) -> Option<f64> {
        self.cpu
            .map(|c| c.as_secs_f64() / self.wall.as_secs_f64().max(1e-9))
    }
}

struct Stopwatch {
    wall: Instant,
    cpu: Option<Duration>,
}

impl Stopwatch {
    fn start() -> Self {
        Stopwatch {
            cpu: process_cpu("/proc/self/stat"),
            wall: Instant::now(),
        }
    }
    fn stop(self) -> Timing {
        let wall = self.wall.elapsed();
        let cpu = match (self.cpu, process_cpu("/proc/self/stat")) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        Timing { wall, cpu }
    }
}

/// utime + stime of a process from `/proc/<pid>/stat` (Linux).
fn process_cpu(stat_file: &str) -> Option<Duration> {
    let text = std::fs::read_to_string(stat_file).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|t| t.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

fn best_of(runs: usize, mut f: impl FnMut() -> Timing) -> Timing {
    (0..runs)
        .map(|_| f())
        .min_by(|a, b| a.secs().total_cmp(&b.secs()))
        .expect("runs ≥ 1")
}

fn first_lines(text: &str, n: usize) -> String {
    text.lines().take(n).collect::<Vec<_>>().join(" | ")
}

// ---------------------------------------------------------------------------------------------------------
// Baseline.

/// Plain serde_json: each line of the file into a `Value`. Returns the number of events (array elements
/// count one each, as replay counts them).
fn parse_plain(path: &Path) -> io::Result<u64> {
    let mut reader = BufReader::with_capacity(256 * 1024, File::open(path)?);
    let mut line = String::new();
    let mut events = 0u64;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(events);
        }
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line).map_err(io::Error::other)?;
        events += match &value {
            Value::Array(items) => items.len() as u64,
            _ => 1,
        };
        std::hint::black_box(value);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Breakdown: replay's own pipeline cut short at each stage.

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// replay's reader: lines (arrays and whole-file documents into `Value`s).
    Read,
    /// + envelope parsing, typed payloads and signals, through the reorder buffer.
    Signals,
    /// + decide() against in-memory state, schedules between events (decisions dropped).
    Decide,
    /// + decisions written as JSON Lines (to a sink).
    Write,
}

impl Stage {
    fn describe(self) -> &'static str {
        match self {
            Stage::Read => "replay's reader: lines",
            Stage::Signals => "+ envelopes, payloads → signals, reorder buffer",
            Stage::Decide => "+ decide(), state, schedules (output dropped)",
            Stage::Write => "+ decisions written as JSON Lines",
        }
    }
}

fn run_stage(policy: &Policy, path: &Path, stage: Stage, expected: u64) -> Timing {
    let mut ordered = Ordered::with_window(REORDER_BUFFER, Some(REORDER_WINDOW));
    let mut engine = Engine::new(policy, true);
    let mut records = 0u64;
    let mut decisions = 0u64;
    let mut line = Vec::new();
    let mut sink = io::sink();
    let mut drop_decision = |d: mlops_relay::policy::Decision| {
        decisions += 1;
        if stage >= Stage::Write {
            replay::write_jsonl_buffered(&mut sink, &d, &mut line).expect("write to a sink");
        }
        std::hint::black_box(d);
    };
    let t = Stopwatch::start();
    reader::read_input_raw(path, &mut |_, record, _| {
        records += 1;
        let Ok(raw) = record else { return };
        if stage == Stage::Read {
            std::hint::black_box(raw);
            return;
        }
        if let Ok(signals) = ordered.push_raw(raw) {
            signals.into_iter().for_each(|s| ordered.insert(s));
        }
        while let Some(signal) = ordered.pop(false) {
            if stage >= Stage::Decide {
                engine.step_owned(signal, None, &mut drop_decision);
            } else {
                std::hint::black_box(signal);
            }
        }
    });
    while let Some(signal) = ordered.pop(true) {
        if stage >= Stage::Decide {
            engine.step_owned(signal, None, &mut drop_decision);
        } else {
            std::hint::black_box(signal);
        }
    }
    let elapsed = t.stop();
    assert!(
        records > 0 && records <= expected,
        "stage read {records} records"
    );
    std::hint::black_box(decisions);
    elapsed
}

// ---------------------------------------------------------------------------------------------------------
// Candidate: the binary as a child process.

struct ChildRun {
    timing: Timing,
    peak_rss_kib: u64,
    rss_source: &'static str,
    ok: bool,
    status: String,
    stderr: String,
}

fn replay_child(policy: &Path, input: &Path) -> ChildRun {
    let dir = input.parent().expect("input has a directory");
    let stderr_path = dir.join("child.stderr");
    let time_path = dir.join("child.time");
    let args = [
        "replay".as_ref(),
        "--policy".as_ref(),
        policy.as_os_str(),
        "--format".as_ref(),
        "jsonl".as_ref(),
        input.as_os_str(),
    ];
    let gnu_time = Path::new("/usr/bin/time");
    let use_time = gnu_time.exists()
        && Command::new(gnu_time)
            .args(["-f", "%M %U %S", "-o"])
            .arg(&time_path)
            .arg("true")
            .status()
            .is_ok_and(|s| s.success());

    let mut cmd = if use_time {
        let mut c = Command::new(gnu_time);
        c.args(["-f", "%M %U %S", "-o"]).arg(&time_path).arg(BIN);
        c
    } else {
        Command::new(BIN)
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr_path).expect("stderr file"));

    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn mlops-relay replay");
    let mut polled_hwm = 0u64;
    let mut polled_cpu = None;
    let status = if use_time {
        child.wait().expect("wait for child")
    } else {
        // No GNU time: poll the child's high-water mark. VmHWM only grows, so the last reading before exit
        // is at most 10 ms stale.
        let status_file = format!("/proc/{}/status", child.id());
        let stat_file = format!("/proc/{}/stat", child.id());
        loop {
            if let Some(kib) = read_vm_hwm(&status_file) {
                polled_hwm = polled_hwm.max(kib);
            }
            if let Some(cpu) = process_cpu(&stat_file) {
                polled_cpu = Some(cpu);
            }
            if let Some(status) = child.try_wait().expect("poll child") {
                break status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let wall = started.elapsed();

    let (peak_rss_kib, cpu, rss_source) = if use_time {
        let text = std::fs::read_to_string(&time_path).unwrap_or_default();
        // GNU time writes "Command exited with non-zero status N" before the format line on failure.
        let parsed = text.lines().rev().find_map(|l| {
            let mut f = l.split_whitespace();
            let kib = f.next()?.parse::<u64>().ok()?;
            let user = f.next()?.parse::<f64>().ok()?;
            let sys = f.next()?.parse::<f64>().ok()?;
            Some((kib, Duration::from_secs_f64(user + sys)))
        });
        match parsed {
            Some((kib, cpu)) => (kib, Some(cpu), "GNU time %M"),
            None => (0, None, "GNU time: no output"),
        }
    } else {
        (polled_hwm, polled_cpu, "/proc VmHWM, polled")
    };
    ChildRun {
        timing: Timing { wall, cpu },
        peak_rss_kib,
        rss_source,
        ok: status.success(),
        status: status.to_string(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

fn read_vm_hwm(status_file: &str) -> Option<u64> {
    let text = std::fs::read_to_string(status_file).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------------------
// History generator: deterministic, so the first tenth of the full history is exactly the small file.

/// SplitMix64: small, fast, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    fn pick_str(&mut self, items: &[&'static str]) -> &'static str {
        items[self.below(items.len() as u64) as usize]
    }
    fn uuid(&mut self) -> String {
        let a = self.next();
        let b = self.next();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }
}

const SUBSCRIPTION: &str = "/subscriptions/6f1c2a9e-0d4b-4c1e-9b7a-3e5d8f2a1c40/resourceGroups/rg-mlops/providers/Microsoft.MachineLearningServices/workspaces/";
const FAMILIES: &[&str] = &[
    "churn",
    "credit-risk",
    "demand-forecast",
    "recsys",
    "anomaly",
    "pricing",
    "ltv",
    "search-rank",
];
const MODELS: usize = 400;
const OWNERS: &[&str] = &[
    "alice@contoso.example",
    "frank@contoso.example",
    "grace@contoso.example",
    "heidi@contoso.example",
];
const ALERT_RULES: &[&str] = &[
    "online-endpoint-latency-p99",
    "compute-quota-80pct",
    "endpoint-5xx-rate",
];
const SEVERITIES: &[&str] = &["Sev0", "Sev1", "Sev2", "Sev3", "Sev4"];
const STAGING_APPROVERS: &[&str] = &["bob@contoso.example", "alice@contoso.example"];
const PROD_APPROVERS: &[&str] = &[
    "carol@contoso.example",
    "dave@contoso.example",
    "erin@contoso.example",
];

struct Stats {
    events: u64,
    lines: u64,
    duplicates: u64,
    out_of_order: u64,
    bytes: u64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
}

struct Generator {
    rng: Rng,
    clock: DateTime<Utc>,
    models: Vec<String>,
    versions: Vec<u32>,
    seq: u64,
    /// Alerts that fired and have not resolved yet: (alert id, rule, severity, model, workspace, fired at).
    open_alerts: Vec<OpenAlert>,
}

#[derive(Clone)]
struct OpenAlert {
    id: String,
    rule: &'static str,
    severity: &'static str,
    model: String,
    topic: String,
    fired: DateTime<Utc>,
}

/// How an event's time is written: Azure's 7 fractional digits, whole seconds, or an explicit offset.
fn stamp(rng: &mut Rng, t: DateTime<Utc>) -> String {
    match rng.below(4) {
        0 => format!(
            "{}.{:07}+00:00",
            t.format("%Y-%m-%dT%H:%M:%S"),
            rng.below(10_000_000)
        ),
        1 => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        _ => t.to_rfc3339_opts(SecondsFormat::Secs, true),
    }
}

impl Generator {
    fn new() -> Self {
        let mut models = vec![
            "fraud-detector".to_string(),
            "sklearn_regression_model".to_string(),
        ];
        for i in models.len()..MODELS {
            models.push(format!("{}-{i:03}", FAMILIES[i % FAMILIES.len()]));
        }
        let versions = vec![0; models.len()];
        Generator {
            rng: Rng(0x5EED_2026_0001),
            clock: "2026-01-05T00:00:00Z".parse().expect("start time"),
            models,
            versions,
            seq: 0,
            open_alerts: Vec::new(),
        }
    }

    /// A model index, skewed so that a few models are busy and most are quiet.
    fn model(&mut self) -> usize {
        let u = self.rng.unit();
        ((u * u * u) * self.models.len() as f64) as usize
    }

    /// A version that exists (registering one first if the model has none yet).
    fn known_version(&mut self, m: usize) -> u32 {
        if self.versions[m] == 0 {
            self.versions[m] = 1;
        }
        let v = self.versions[m];
        v - self.rng.below(u64::from(v.min(3))) as u32
    }

    /// Advances the clock (about 30 s per event on average) and returns this event's time; a few events are
    /// stamped up to 15 minutes in the past, as late deliveries are.
    fn tick(&mut self, late: &mut u64) -> DateTime<Utc> {
        self.clock += TimeDelta::milliseconds((1_000 + self.rng.below(58_000)) as i64);
        if self.rng.chance(0.002) {
            *late += 1;
            self.clock - TimeDelta::seconds(60 + self.rng.below(840) as i64)
        } else {
            self.clock
        }
    }

    fn workspace(&mut self) -> (&'static str, String) {
        let ws = *self
            .rng
            .pick(&["mlw-dev", "mlw-dev", "mlw-staging", "mlw-prod"]);
        (ws, format!("{SUBSCRIPTION}{ws}"))
    }

    /// Wraps an Azure ML event in an Event Grid or a CloudEvents envelope.
    fn envelope(
        &mut self,
        cloud: bool,
        event_type: &str,
        topic: &str,
        subject: &str,
        time: &str,
        data: Value,
    ) -> Value {
        let id = self.rng.uuid();
        if cloud {
            let mut v = json!({
                "specversion": "1.0",
                "type": event_type,
                "source": topic,
                "subject": subject,
                "id": id,
                "time": time,
                "datacontenttype": "application/json",
                "data": data,
            });
            if self.rng.chance(0.3) {
                v["traceparent"] = json!(format!(
                    "00-{:016x}{:016x}-{:016x}-01",
                    self.rng.next(),
                    self.rng.next(),
                    self.rng.next()
                ));
            }
            v
        } else {
            json!({
                "topic": topic,
                "subject": subject,
                "eventType": event_type,
                "eventTime": time,
                "id": id,
                "data": data,
                "dataVersion": "",
                "metadataVersion": "1",
            })
        }
    }

    /// One Azure ML event (Event Grid or CloudEvents envelope).
    fn aml_event(&mut self, t: DateTime<Utc>) -> Value {
        let time = stamp(&mut self.rng, t);
        let cloud = self.rng.chance(0.25);
        let m = self.model();
        let model = self.models[m].clone();
        let roll = self.rng.below(100);
        if roll < 15 {
            // ModelRegistered: live camelCase with a string version, or the docs' PascalCase with a number.
            self.versions[m] += 1;
            let v = self.versions[m];
            let auc = format!("{:.3}", 0.7 + self.rng.unit() * 0.29);
            let owner = *self.rng.pick(OWNERS);
            let run = format!("train-{model}-{v}");
            let data = if self.rng.chance(0.8) {
                json!({
                    "modelName": model,
                    "modelVersion": v.to_string(),
                    "modelTags": { "auc": auc, "owner": owner, "team": FAMILIES[m % FAMILIES.len()] },
                    "modelProperties": { "azureml.runId": run },
                })
            } else {
                json!({
                    "ModelName": model,
                    "ModelVersion": v,
                    "ModelTags": { "auc": auc.parse::<f64>().unwrap_or(0.8), "owner": owner },
                    "ModelProperties": {},
                })
            };
            let topic = format!("{SUBSCRIPTION}mlw-dev");
            let subject = format!("models/{model}:{v}");
            self.envelope(
                cloud,
                "Microsoft.MachineLearningServices.ModelRegistered",
                &topic,
                &subject,
                &time,
                data,
            )
        } else if roll < 50 {
            // RunCompleted: training and pipeline runs, some tagged with the model.
            let (_, topic) = self.workspace();
            let run_id = format!("{model}-train-{}", self.rng.uuid());
            let experiment = format!("{model}-retrain");
            let mut tags = json!({ "azureml.pipeline": "train_pipeline" });
            if self.rng.chance(0.6) {
                tags["mlops-relay.model"] = json!(model);
            }
            let data = json!({
                "experimentId": self.rng.uuid(),
                "experimentName": experiment,
                "runId": run_id,
                "runType": "azureml.PipelineRun",
                "runTags": tags,
                "runProperties": { "azureml.runsource": "azureml.PipelineRun", "StepType": "PythonScriptStep" },
            });
            let subject = format!("experiments/{}/runs/{run_id}", self.rng.uuid());
            self.envelope(
                cloud,
                "Microsoft.MachineLearningServices.RunCompleted",
                &topic,
                &subject,
                &time,
                data,
            )
        } else if roll < 85 {
            // RunStatusChanged: mostly progress, some failures, a few model-monitor breaches.
            let (_, topic) = self.workspace();
            let run_id = format!("{model}-run-{}", self.rng.uuid());
            let status = match self.rng.below(100) {
                0..45 => "Running",
                45..60 => "Queued",
                60..78 => "Completed",
                78..95 => "Failed",
                95..98 => "NotResponding",
                _ => "Canceled",
            };
            let mut tags = json!({ "mlops-relay.model": model });
            let mut run_type = "azureml.PipelineRun";
            if status == "Failed" && self.rng.chance(0.15) {
                let monitor = if m == 1 {
                    "sklearn_regression_monitor".to_string()
                } else {
                    format!("{model}_monitor")
                };
                tags["azureml_modelmonitor_threshold_breached"] = json!(format!(
                    "{monitor}_data_drift has failed due to one or more features violating metric thresholds"
                ));
                run_type = "azureml.scheduled";
            }
            let data = json!({
                "experimentId": self.rng.uuid(),
                "experimentName": format!("{model}-experiments"),
                "runId": run_id,
                "runType": run_type,
                "runTags": tags,
                "runProperties": {},
                "runStatus": if self.rng.chance(0.5) { status.to_string() } else { status.to_ascii_lowercase() },
            });
            let subject = format!("experiments/{}/runs/{run_id}", self.rng.uuid());
            self.envelope(
                cloud,
                "Microsoft.MachineLearningServices.RunStatusChanged",
                &topic,
                &subject,
                &time,
                data,
            )
        } else if roll < 97 {
            // DatasetDriftDetected (legacy v1 monitors), coefficient as a number or a string.
            let name = if m < 2 {
                "myDriftMonitor".to_string()
            } else {
                format!("{model}-drift")
            };
            let coefficient = (self.rng.unit() * self.rng.unit() * 1000.0).round() / 1000.0;
            let drift_id = self.rng.uuid();
            let run_id = format!("{}_{}", &drift_id[..8], t.timestamp());
            let start = (t - TimeDelta::days(1)).to_rfc3339_opts(SecondsFormat::Secs, false);
            let end = t.to_rfc3339_opts(SecondsFormat::Secs, false);
            let data = json!({
                "DataDriftId": drift_id,
                "DataDriftName": name,
                "RunId": run_id,
                "BaseDatasetId": self.rng.uuid(),
                "TargetDatasetId": self.rng.uuid(),
                "DriftCoefficient": if self.rng.chance(0.7) { json!(coefficient) } else { json!(coefficient.to_string()) },
                "StartTime": start,
                "EndTime": end,
            });
            let topic = format!("{SUBSCRIPTION}mlw-prod");
            let subject = format!("datadrift/{drift_id}/run/{run_id}");
            self.envelope(
                cloud,
                "Microsoft.MachineLearningServices.DatasetDriftDetected",
                &topic,
                &subject,
                &time,
                data,
            )
        } else {
            // ModelDeployed (v1 services) and an event type nobody acts on.
            let v = self.known_version(m);
            let (_, topic) = self.workspace();
            if self.rng.chance(0.5) {
                let data = json!({
                    "ServiceName": format!("{model}-svc"),
                    "ServiceComputeType": "AKS",
                    "ModelIds": format!("{model}:{v}"),
                    "ServiceTags": {},
                    "ServiceProperties": {},
                });
                let subject = format!("endpoints/{model}-svc");
                self.envelope(
                    cloud,
                    "Microsoft.MachineLearningServices.ModelDeployed",
                    &topic,
                    &subject,
                    &time,
                    data,
                )
            } else {
                let data = json!({ "api": "PutBlob", "contentType": "application/octet-stream", "contentLength": 52_428_800 });
                let subject =
                    format!("/blobServices/default/containers/data/blobs/{model}/batch.parquet");
                self.envelope(
                    cloud,
                    "Microsoft.Storage.BlobCreated",
                    &topic,
                    &subject,
                    &time,
                    data,
                )
            }
        }
    }

    /// A drift webhook body (Evidently, NannyML...).
    fn drift_webhook(&mut self, t: DateTime<Utc>) -> Value {
        let m = self.model();
        let model = self.models[m].clone();
        let v = self.known_version(m);
        let value = (self.rng.unit() * self.rng.unit() * 10_000.0).round() / 10_000.0;
        let metric = *self.rng.pick(&["psi", "jensen_shannon", "wasserstein"]);
        self.seq += 1;
        let mut body = json!({
            "id": format!("drift-{}-{}", self.seq, self.rng.below(1 << 32)),
            "model": model,
            "version": if self.rng.chance(0.5) { json!(v.to_string()) } else { json!(v) },
            "metric": metric,
            "value": value,
            "threshold": 0.2,
            "window": {
                "start": (t - TimeDelta::days(1)).to_rfc3339_opts(SecondsFormat::Secs, true),
                "end": t.to_rfc3339_opts(SecondsFormat::Secs, true),
            },
            "source": *self.rng.pick(&["evidently", "nannyml", "custom"]),
            "signal": format!("{model}_feature_drift"),
            "time": stamp(&mut self.rng, t),
        });
        if self.rng.chance(0.05) {
            // Some senders leave the id out; the content becomes the identity.
            if let Some(obj) = body.as_object_mut() {
                obj.remove("id");
            }
        }
        body
    }

    /// An approval vote or a deployment report, as mlops-relay feeds them back (CloudEvents).
    fn relay_event(&mut self, t: DateTime<Utc>) -> Value {
        let m = self.model();
        let model = self.models[m].clone();
        let v = self.known_version(m);
        let time = t.to_rfc3339_opts(SecondsFormat::Secs, true);
        let environment = *self.rng.pick(&["staging", "prod"]);
        self.seq += 1;
        if self.rng.chance(0.6) {
            let approver = if environment == "staging" {
                *self.rng.pick(STAGING_APPROVERS)
            } else {
                *self.rng.pick(PROD_APPROVERS)
            };
            json!({
                "specversion": "1.0",
                "type": "MlopsRelay.ApprovalDecided",
                "source": "/mlops-relay/approvals",
                "id": format!("approval-{:08x}", self.rng.next() as u32),
                "time": time,
                "data": {
                    "model": model, "version": v.to_string(), "environment": environment,
                    "approver": approver,
                    "decision": if self.rng.chance(0.9) { "approve" } else { "reject" },
                    "comment": "reviewed in the approval page",
                },
            })
        } else {
            let smoke = *self
                .rng
                .pick(&["passed", "passed", "passed", "failed", "skipped"]);
            json!({
                "specversion": "1.0",
                "type": "MlopsRelay.DeploymentCompleted",
                "source": "/mlops-relay/workers/deploy",
                "id": format!("deploy-report-{:08x}", self.rng.next() as u32),
                "time": time,
                "data": {
                    "model": model, "version": v.to_string(), "environment": environment,
                    "endpoint": if environment == "prod" { model.clone() } else { format!("{model}-{environment}") },
                    "smokeTest": smoke,
                    "detail": format!("{} in {} ms", if smoke == "failed" { 500 } else { 200 }, 40 + self.rng.below(700)),
                },
            })
        }
    }

    /// An Azure Monitor alert (common alert schema): a new alert fires, or an open one resolves under the
    /// same alert id (nearly all do, minutes to hours later).
    fn alert(&mut self, t: DateTime<Utc>) -> Value {
        // At most 50 alerts are open at once, as on a fleet whose on-call team keeps up.
        let open = self.open_alerts.len();
        let resolve = open >= 50 || (open > 0 && self.rng.chance(0.45));
        let alert = if resolve {
            let i = self.rng.below(self.open_alerts.len() as u64) as usize;
            self.open_alerts.swap_remove(i)
        } else {
            let m = self.model();
            let (_, topic) = self.workspace();
            let alert = OpenAlert {
                id: format!(
                    "/subscriptions/6f1c2a9e-0d4b-4c1e-9b7a-3e5d8f2a1c40/providers/Microsoft.AlertsManagement/alerts/{}",
                    self.rng.uuid()
                ),
                rule: self.rng.pick_str(ALERT_RULES),
                severity: self.rng.pick_str(SEVERITIES),
                model: self.models[m].clone(),
                topic,
                fired: t,
            };
            // One alert in twenty never resolves (closed by hand in the portal).
            if self.rng.chance(0.95) {
                self.open_alerts.push(alert.clone());
            }
            alert
        };
        let mut essentials = json!({
            "alertId": alert.id,
            "alertRule": alert.rule,
            "severity": alert.severity,
            "signalType": "Metric",
            "monitorCondition": if resolve { "Resolved" } else { "Fired" },
            "monitoringService": "Platform",
            "alertTargetIDs": [format!("{}/onlineEndpoints/{}", alert.topic, alert.model)],
            "configurationItems": [alert.model],
            "firedDateTime": alert.fired.to_rfc3339_opts(SecondsFormat::Secs, true),
            "description": "p99 request latency above 500 ms for 10 minutes",
            "essentialsVersion": "1.0",
            "alertContextVersion": "1.0",
        });
        if resolve {
            essentials["resolvedDateTime"] = json!(t.to_rfc3339_opts(SecondsFormat::Secs, true));
        }
        json!({
            "schemaId": "azureMonitorCommonAlertSchema",
            "data": { "essentials": essentials, "alertContext": {} },
        })
    }

    /// One record (a line): a single event, or now and then an Event Grid batch of Azure ML events. Returns
    /// the record and how many events it holds.
    fn record(&mut self, late: &mut u64) -> (Value, u64) {
        let roll = self.rng.below(1000);
        if roll < 20 {
            let n = 2 + self.rng.below(3);
            let mut batch = Vec::new();
            for _ in 0..n {
                let t = self.tick(late);
                let mut e = self.aml_event(t);
                // A batch is Event Grid schema throughout.
                if e.get("specversion").is_some() {
                    e = self.aml_event_grid_only(t);
                }
                batch.push(e);
            }
            return (Value::Array(batch), n);
        }
        let t = self.tick(late);
        let v = match roll {
            20..620 => self.aml_event(t),
            620..900 => self.drift_webhook(t),
            900..970 => self.relay_event(t),
            _ => self.alert(t),
        };
        (v, 1)
    }

    fn aml_event_grid_only(&mut self, t: DateTime<Utc>) -> Value {
        loop {
            let e = self.aml_event(t);
            if e.get("specversion").is_none() {
                return e;
            }
        }
    }
}

fn generate(full: &Path, tenth: &Path, events: u64, small_events: u64) -> io::Result<Stats> {
    let mut gen_ = Generator::new();
    let mut out = BufWriter::with_capacity(1 << 20, File::create(full)?);
    let mut small = Some(BufWriter::with_capacity(1 << 20, File::create(tenth)?));
    let mut recent: Vec<(Vec<u8>, u64)> = Vec::with_capacity(256);
    let mut stats = Stats {
        events: 0,
        lines: 0,
        duplicates: 0,
        out_of_order: 0,
        bytes: 0,
        first: gen_.clock,
        last: gen_.clock,
    };
    let mut line = Vec::with_capacity(4096);
    let progress_every = (events / 20).max(1);
    let mut next_progress = progress_every;
    while stats.events < events {
        // About 5% of records are redeliveries of one of the last few hundred, byte for byte (Event Grid
        // retries, a webhook sender re-posting).
        let (bytes, n) = if !recent.is_empty() && gen_.rng.chance(0.05) {
            stats.duplicates += 1;
            let i = gen_.rng.below(recent.len() as u64) as usize;
            recent[i].clone()
        } else {
            let (value, n) = gen_.record(&mut stats.out_of_order);
            line.clear();
            serde_json::to_writer(&mut line, &value).map_err(io::Error::other)?;
            line.push(b'\n');
            if recent.len() < 256 {
                recent.push((line.clone(), n));
            } else {
                let i = gen_.rng.below(256) as usize;
                recent[i] = (line.clone(), n);
            }
            (line.clone(), n)
        };
        out.write_all(&bytes)?;
        stats.bytes += bytes.len() as u64;
        stats.lines += 1;
        stats.events += n;
        if let Some(w) = small.as_mut() {
            w.write_all(&bytes)?;
            if stats.events >= small_events {
                written_back(small.take().expect("open"))?;
            }
        }
        if stats.events >= next_progress {
            eprint!(
                "\r  {:>3}%  {} events, {:.0} MB",
                stats.events * 100 / events,
                stats.events,
                stats.bytes as f64 / 1e6
            );
            next_progress += progress_every;
        }
    }
    eprintln!();
    if let Some(w) = small {
        written_back(w)?;
    }
    written_back(out)?;
    stats.last = gen_.clock;
    Ok(stats)
}

/// Flushes a generated file and waits until it is on disk, before anything is timed: otherwise the kernel may
/// still be writing its hundreds of MB back while the first rounds run, on a core the measurements need (and
/// replay, which keeps both cores busy, would lose more to it than the one-core baseline).
fn written_back(w: BufWriter<File>) -> io::Result<()> {
    w.into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .sync_all()
}
