//! The relay as a server, against a bare axum server (`cargo bench --locked --bench runtime`).
//!
//! Measures in one run, on loopback, with both servers as child processes so they are measured alike:
//!
//! 1. throughput and latency of `POST /AmlEvents` at `BENCH_CONNECTIONS` (16) concurrent keep-alive
//!    connections, closed loop, for `BENCH_SECONDS` (10) after `BENCH_WARMUP_SECONDS` (1) of warm-up:
//!    `mlops-relay serve` on a fresh SQLite state (every request a distinct ModelRegistered event, so each one
//!    decides, writes the decision log and the ledger, and enqueues) against `examples/hello_axum.rs`, which
//!    reads and discards the same request bodies and answers with a fixed body of the relay's response size;
//! 2. start-up: process spawn → first `GET /` 200, `BENCH_STARTS` (20) times each, for `mlops-relay serve`
//!    (fresh database, and an existing one) and the hello-world binary;
//! 3. idle RSS (VmRSS, VmHWM) of both, `BENCH_IDLE_SECONDS` (3) after start-up;
//! 4. the SQL floor (see `runtime/floor.rs`): the relay's rows written again into a copy of its schema, with a
//!    commit's reads and nothing else, for what one SQLite writer of these rows could do at best;
//! 5. the durable floor: the same load against `examples/hello_sqlite.rs`, bare axum that first commits each
//!    request body as one SQLite row under a unique key (what deduplicating the event needs; group commit,
//!    WAL, SQLite's own checkpoints) before answering: the least any design that keeps events durably in
//!    SQLite before acknowledging them can do, on this machine, with no relay logic at all.
//!
//! The targets: relay throughput ≥ 0.5× bare, relay p99 ≤ 2 ms, start-up ≤ 1.5× hello-world, idle RSS
//! ≤ 10 MB. The client runs in this process on a tokio runtime of `BENCH_CLIENT_THREADS` (1) threads and shares
//! the machine's cores with the server under test.
//!
//! Both binaries are the shipped build, `cargo build --profile dist` (fat LTO; what `make package` packs).
//! Other settings: `BENCH_RELAY_BIN` (another mlops-relay build to measure, e.g. one built with other flags),
//! `BENCH_HELLO_BIN` (a prebuilt hello-axum binary), `BENCH_DURABLE_BIN` (a prebuilt hello-sqlite binary),
//! `BENCH_KEEP` (keep the relay's database in this directory).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "runtime/floor.rs"]
mod floor;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const TOPIC: &str = "/subscriptions/6f1c2a9e-0d4b-4c1e-9b7a-3e5d8f2a1c40/resourceGroups/rg-mlops/providers/Microsoft.MachineLearningServices/workspaces/mlw-dev";

/// Targets from the issue.
const TARGET_THROUGHPUT_RATIO: f64 = 0.5;
const TARGET_P99: Duration = Duration::from_millis(2);
const TARGET_START_RATIO: f64 = 1.5;
const TARGET_IDLE_RSS_KIB: u64 = 10 * 1024;

/// Distinct events used to measure the relay's response size before the load starts.
const PROBES: u64 = 32;

struct Settings {
    seconds: f64,
    warmup: f64,
    connections: usize,
    starts: usize,
    idle: f64,
    client_threads: usize,
}

fn main() {
    let settings = Settings {
        seconds: env_f64("BENCH_SECONDS").unwrap_or(10.0),
        warmup: env_f64("BENCH_WARMUP_SECONDS").unwrap_or(1.0),
        connections: env_f64("BENCH_CONNECTIONS").unwrap_or(16.0).max(1.0) as usize,
        starts: env_f64("BENCH_STARTS").unwrap_or(20.0).max(1.0) as usize,
        idle: env_f64("BENCH_IDLE_SECONDS").unwrap_or(3.0),
        client_threads: env_f64("BENCH_CLIENT_THREADS").unwrap_or(1.0).max(1.0) as usize,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let hello = example_binary("BENCH_HELLO_BIN", "hello_axum");
    let durable_bin = example_binary("BENCH_DURABLE_BIN", "hello_sqlite");
    let _ = relay_binary();
    let tmp = tempfile::Builder::new()
        .prefix("mlops-relay-runtime-bench-")
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

    let load_before = load_average();
    let rt = client_runtime(settings.client_threads);
    let bodies = Bodies::new();

    // 1. Throughput and latency. The relay first: its response size sets the bare server's.
    eprintln!("load: mlops-relay serve on a fresh SQLite state ...");
    let db = dir.join("load.db");
    let mut relay = Server::relay(&db, &dir.join("load-relay.log"));
    let (size, sample) = rt.block_on(probe(&relay.addr, &bodies));
    let relay_load = rt.block_on(load(&relay, &bodies, PROBES, &settings));
    let relay_proc = relay.stats();
    relay.stop();
    let rows = ledger_rows(&db);
    eprintln!("SQL floor: the relay's rows written again into a copy of its schema ...");
    let floor = floor::Floor::read(&db, settings.connections).expect("the relay's rows");
    let floor_path = dir.join("floor.db");
    let floor_us = floor.measure(&floor_path, &[]).expect("SQL floor");
    let floor_without: Vec<(floor::Table, f64)> = floor::Table::ALL
        .into_iter()
        .map(|t| (t, floor.measure(&floor_path, &[t]).expect("SQL floor")))
        .collect();
    let floor_decision = floor
        .measure(&floor_path, &floor::Table::ALL)
        .expect("SQL floor");

    eprintln!("load: hello-axum (bare axum, {size}-byte responses) ...");
    let mut bare = Server::hello(&hello, size);
    let bare_load = rt.block_on(load(&bare, &bodies, PROBES, &settings));
    let bare_proc = bare.stats();
    bare.stop();

    eprintln!("load: hello-sqlite (bare axum + one keyed SQLite row a request) ...");
    let mut durable = Server::durable(&durable_bin, size, &dir.join("durable.db"));
    let durable_load = rt.block_on(load(&durable, &bodies, PROBES, &settings));
    let durable_proc = durable.stats();
    durable.stop();
    drop(rt);

    // 2. Start-up, interleaved so that drift in the machine's state affects all three alike.
    eprintln!("start-up: {} spawns of each ...", settings.starts);
    let existing = dir.join("existing.db");
    drop(Server::relay(&existing, &dir.join("existing-init.log"))); // create it once
    let (mut t_hello, mut t_fresh, mut t_existing) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..settings.starts {
        t_hello.push(start_time(|port| Server::spawn_hello(&hello, port, size)));
        let fresh = dir.join(format!("fresh-{i}.db"));
        let log = dir.join("start-relay.log");
        t_fresh.push(start_time(|port| Server::spawn_relay(&fresh, port, &log)));
        t_existing.push(start_time(|port| {
            Server::spawn_relay(&existing, port, &log)
        }));
        let _ = std::fs::remove_file(&fresh);
        let _ = std::fs::remove_file(fresh.with_extension("db-wal"));
        let _ = std::fs::remove_file(fresh.with_extension("db-shm"));
    }

    // 3. Idle memory, a few seconds after start-up.
    eprintln!("idle memory: {:.0} s after start-up ...", settings.idle);
    let mut idle_relay = Server::relay(&dir.join("idle.db"), &dir.join("idle-relay.log"));
    let mut idle_hello = Server::hello(&hello, size);
    wait_ready(idle_relay.addr, Instant::now() + Duration::from_secs(10)).expect("relay ready");
    wait_ready(idle_hello.addr, Instant::now() + Duration::from_secs(10)).expect("hello ready");
    std::thread::sleep(Duration::from_secs_f64(settings.idle));
    let relay_idle = idle_relay.stats();
    let hello_idle = idle_hello.stats();
    idle_relay.stop();
    idle_hello.stop();

    // Report.
    let ratio = relay_load.rate() / bare_load.rate();
    let p99 = relay_load.percentile(0.99);
    let (h50, f50, e50) = (median(&t_hello), median(&t_fresh), median(&t_existing));
    let start_ratio = f50.as_secs_f64() / h50.as_secs_f64();
    let start_ratio_existing = e50.as_secs_f64() / h50.as_secs_f64();

    println!();
    println!("mlops-relay runtime benchmark");
    println!("=============================");
    println!(
        "machine        {cores} core(s); client (this process, {} tokio thread(s)) and server share them; loopback",
        settings.client_threads
    );
    println!(
        "               load average {load_before} before the run, {} after",
        load_average()
    );
    println!("relay binary   {}", relay_binary().display());
    println!(
        "load           POST /AmlEvents, {} keep-alive connections, closed loop, {:.0} s after {:.0} s warm-up",
        settings.connections, settings.seconds, settings.warmup
    );
    println!(
        "               host-shaped invocations (event double-encoded), ~{} bytes each; every event distinct",
        bodies.typical_len()
    );
    println!(
        "               (ModelRegistered model-{{i % 500}} v{{i}} in mlw-dev: request approval for staging)"
    );
    println!("               relay response: {size} bytes, e.g. {sample}");
    println!();
    println!(
        "               {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}   {:>12}  {:>9}  {:>8}",
        "req/s", "p50", "p90", "p99", "p99.9", "max", "CPU/request", "errors", "threads"
    );
    for (name, l, p) in [
        ("bare axum", &bare_load, &bare_proc),
        ("durable floor", &durable_load, &durable_proc),
        ("mlops-relay", &relay_load, &relay_proc),
    ] {
        println!(
            "{:<14} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9}   {:>12}  {:>9}  {:>8}",
            name,
            l.rate(),
            ms(l.percentile(0.50)),
            ms(l.percentile(0.90)),
            ms(l.percentile(0.99)),
            ms(l.percentile(0.999)),
            ms(l.max()),
            format!(
                "{:.0} µs",
                (p.cpu_ticks.saturating_sub(l.server_cpu_before)) as f64 * 1e4
                    / l.total_requests as f64
            ),
            l.errors,
            p.threads
        );
    }
    println!(
        "               client CPU: {:.0} µs/request (bare), {:.0} µs/request (relay)",
        bare_load.client_cpu_ticks as f64 * 1e4 / bare_load.total_requests as f64,
        relay_load.client_cpu_ticks as f64 * 1e4 / relay_load.total_requests as f64
    );
    // What each would do on an otherwise idle machine: all cores busy with this client and that server only.
    let ceiling = |l: &Load, p: &ProcStats| {
        let cpu =
            (l.client_cpu_ticks + p.cpu_ticks.saturating_sub(l.server_cpu_before)) as f64 / 100.0;
        l.total_requests as f64 * cores as f64 / cpu.max(1e-9)
    };
    let (bare_ceiling, relay_ceiling) = (
        ceiling(&bare_load, &bare_proc),
        ceiling(&relay_load, &relay_proc),
    );
    println!(
        "               CPU-bound ceiling (cores ÷ server+client CPU per request): bare {:.0}/s, relay {:.0}/s, {:.2}×",
        bare_ceiling,
        relay_ceiling,
        relay_ceiling / bare_ceiling
    );
    // The SQLite writer is one thread that every request waits for: whatever the cores, it cannot commit
    // more requests per second than one second of its CPU time holds.
    let per_request = |ticks: u64| ticks as f64 * 1e4 / relay_load.total_requests as f64;
    let threads: Vec<(String, f64)> = relay_proc
        .by_thread
        .iter()
        .map(|(name, after)| {
            let before = relay_load
                .server_threads_before
                .get(name)
                .copied()
                .unwrap_or(0);
            (name.clone(), per_request(after.saturating_sub(before)))
        })
        .filter(|(_, us)| *us >= 0.5)
        .collect();
    println!(
        "               relay CPU by thread: {}",
        threads
            .iter()
            .map(|(name, us)| format!("{name} {us:.0} µs/request"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some((_, writer)) = threads.iter().find(|(name, _)| name == "sqlite-writer") {
        let ceiling = 1e6 / writer.max(1e-9);
        println!(
            "               single-writer ceiling: 1 s ÷ {writer:.0} µs = {ceiling:.0} requests/s, {:.2}× bare \
             ({TARGET_THROUGHPUT_RATIO}× bare needs the writer at ≤ {:.0} µs/request)",
            ceiling / bare_load.rate(),
            1e6 / (TARGET_THROUGHPUT_RATIO * bare_load.rate())
        );
    }
    println!(
        "               SQL floor: the relay's {} requests' rows written again into a copy of its schema, {} \
         a transaction, with a commit's reads and nothing else (no decide, JSON, hashing, threads, checkpoints): \
         {floor_us:.0} µs/request, so one writer ≤ {:.0}/s, {:.2}× bare",
        floor.requests(),
        floor.batch,
        1e6 / floor_us.max(1e-9),
        1e6 / floor_us.max(1e-9) / bare_load.rate()
    );
    println!(
        "               of which (the floor less the same run without them): {}",
        floor_without
            .iter()
            .map(|(t, us)| format!("{} rows {:.0} µs", t.name(), floor_us - us))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "               the decision record and the reads alone (none of those rows): {floor_decision:.0} µs/request, \
         so one writer ≤ {:.0}/s, {:.2}× bare",
        1e6 / floor_decision.max(1e-9),
        1e6 / floor_decision.max(1e-9) / bare_load.rate()
    );
    println!(
        "               durable floor (examples/hello_sqlite.rs: bare axum + each request body committed as one SQLite \
         row under a unique key before the answer): {:.2}× bare, p99 {}, CPU-bound ceiling {:.0}/s, {:.2}× bare; \
         the relay does {:.2}× of it",
        durable_load.rate() / bare_load.rate(),
        ms(durable_load.percentile(0.99)),
        ceiling(&durable_load, &durable_proc),
        ceiling(&durable_load, &durable_proc) / bare_load.rate(),
        relay_load.rate() / durable_load.rate()
    );
    for (name, l, p) in [
        ("bare", &bare_load, &bare_proc),
        ("durable floor", &durable_load, &durable_proc),
        ("relay", &relay_load, &relay_proc),
    ] {
        let ours = l.client_cpu_ticks + p.cpu_ticks.saturating_sub(l.server_cpu_before);
        let [tasks, irq] = l.machine_busy_ticks;
        let others = tasks.saturating_sub(ours);
        let pct = |ticks: u64| ticks as f64 / (l.elapsed.as_secs_f64() * cores as f64);
        println!(
            "               machine during the {name} run: client+server {:.0}%, interrupts/softirq {:.0}%, \
             other processes (and kernel threads) {:.0}% of {cores} cores{}",
            pct(ours),
            pct(irq),
            pct(others),
            if pct(others) > 15.0 {
                " (noisy: the figures are pessimistic)"
            } else {
                ""
            }
        );
    }
    println!(
        "               relay/bare throughput {:.2}×; {} relay requests measured, {} bare",
        ratio,
        relay_load.latencies.len(),
        bare_load.latencies.len()
    );
    println!(
        "               relay state afterwards: {} decisions, {} ledger entries, {} queue messages for {} relay \
         requests answered 200 (probe + warm-up + measured)",
        rows.decisions, rows.ledger, rows.queue, relay_load.ok_with_probe
    );
    println!(
        "               RSS after load: relay {} (peak {}), bare {} (peak {})",
        mib(relay_proc.rss_kib),
        mib(relay_proc.hwm_kib),
        mib(bare_proc.rss_kib),
        mib(bare_proc.hwm_kib)
    );
    println!();
    println!(
        "start-up       spawn → first GET / 200, {} runs each, polled every 1 ms",
        settings.starts
    );
    for (name, t) in [
        ("hello-axum", &t_hello),
        ("relay, new db", &t_fresh),
        ("relay, old db", &t_existing),
    ] {
        println!(
            "  {:<14} median {:>8}   p90 {:>8}   min {:>8}   max {:>8}   {:.2}× hello",
            name,
            ms(median(t)),
            ms(percentile_of(t, 0.9)),
            ms(*t.iter().min().expect("runs")),
            ms(*t.iter().max().expect("runs")),
            median(t).as_secs_f64() / h50.as_secs_f64()
        );
    }
    println!();
    println!(
        "idle memory    {:.0} s after start-up (VmRSS = RssAnon + RssFile + RssShmem)",
        settings.idle
    );
    for (name, p) in [("hello-axum", &hello_idle), ("mlops-relay", &relay_idle)] {
        println!(
            "  {:<14} VmRSS {:>9}  VmHWM {:>9}  (anon {:>9}, file {:>9})  {} threads",
            name,
            mib(p.rss_kib),
            mib(p.hwm_kib),
            mib(p.anon_kib),
            mib(p.file_kib),
            p.threads
        );
    }
    println!(
        "  binary sizes: mlops-relay {}, hello-axum {}",
        mib(file_kib(&relay_binary())),
        mib(file_kib(&hello))
    );
    println!();
    let verdict = |ok: bool| if ok { "MET" } else { "NOT MET" };
    println!(
        "verdict        throughput {:.2}× bare (target ≥ {TARGET_THROUGHPUT_RATIO}×): {}",
        ratio,
        verdict(ratio >= TARGET_THROUGHPUT_RATIO)
    );
    println!(
        "               p99 {} at {} connections (target ≤ {}): {}",
        ms(p99),
        settings.connections,
        ms(TARGET_P99),
        verdict(p99 <= TARGET_P99)
    );
    println!(
        "               start-up {:.2}× hello-world with a new database, {:.2}× with an existing one \
         (target ≤ {TARGET_START_RATIO}×): {}",
        start_ratio,
        start_ratio_existing,
        verdict(start_ratio.max(start_ratio_existing) <= TARGET_START_RATIO)
    );
    println!(
        "               idle RSS {} (target ≤ {}): {}",
        mib(relay_idle.rss_kib),
        mib(TARGET_IDLE_RSS_KIB),
        verdict(relay_idle.rss_kib <= TARGET_IDLE_RSS_KIB)
    );
    if relay_load.errors + bare_load.errors + durable_load.errors > 0 {
        println!(
            "note           {} relay, {} bare and {} durable-floor requests failed; see the logs",
            relay_load.errors, bare_load.errors, durable_load.errors
        );
    }
    if rows.decisions < relay_load.ok_with_probe {
        println!(
            "note           fewer decisions than requests: some requests did not decide anything new"
        );
    }
    if let Some(keep) = std::env::var_os("BENCH_KEEP") {
        println!("files kept in  {}", PathBuf::from(keep).display());
    }
}

// ---------------------------------------------------------------------------------------------------------
// Servers.

/// A server child process, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

/// What /proc says about a process.
#[derive(Debug, Default, Clone)]
struct ProcStats {
    rss_kib: u64,
    hwm_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    threads: u64,
    /// utime + stime, in clock ticks (1/100 s).
    cpu_ticks: u64,
    /// utime + stime of the live threads, by thread name (threads of one name added up), in clock ticks.
    by_thread: std::collections::BTreeMap<String, u64>,
}

impl Server {
    fn spawn_relay(db: &Path, port: u16, log: &Path) -> Child {
        let policy = Path::new(ROOT).join("examples/policy.toml");
        Command::new(relay_binary())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .current_dir(ROOT)
            .env("RELAY_STATE_URL", format!("sqlite:{}", db.display()))
            .env("RELAY_POLICY", policy)
            .env("RUST_LOG", "warn")
            .env_remove("FUNCTIONS_CUSTOMHANDLER_PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .expect("log file"),
            )
            .spawn()
            .expect("spawn mlops-relay")
    }

    /// A baseline server's command: `BIN PORT RESPONSE_BYTES`, its stdout read for the address.
    fn baseline(bin: &Path, port: u16, size: usize) -> Command {
        let mut command = Command::new(bin);
        command
            .args([port.to_string(), size.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        command
    }

    fn spawn_hello(bin: &Path, port: u16, size: usize) -> Child {
        Server::baseline(bin, port, size)
            .spawn()
            .expect("spawn hello-axum")
    }

    fn relay(db: &Path, log: &Path) -> Server {
        Server::from_child(Server::spawn_relay(db, 0, log), log)
    }

    fn hello(bin: &Path, size: usize) -> Server {
        Server::from_child(Server::spawn_hello(bin, 0, size), Path::new("(stderr)"))
    }

    /// `hello-sqlite`, keyed, on a database at `db`.
    fn durable(bin: &Path, size: usize, db: &Path) -> Server {
        let child = Server::baseline(bin, 0, size)
            .env("HELLO_SQLITE_KEYED", "1")
            .env("HELLO_SQLITE_DB", db)
            .spawn()
            .expect("spawn hello-sqlite");
        Server::from_child(child, Path::new("(stderr)"))
    }

    /// Waits for the line that says where the child listens; keeps draining its stdout afterwards.
    fn from_child(mut child: Child, log: &Path) -> Server {
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!(
                    "server exited before listening; log {}: {}",
                    log.display(),
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            };
            if let Some(at) = line.find("http://") {
                break line[at + 7..].trim().parse().expect("listen address");
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Server { child, addr }
    }

    fn stats(&self) -> ProcStats {
        proc_stats(self.child.id())
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn proc_stats(pid: u32) -> ProcStats {
    let mut s = ProcStats::default();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    for line in status.lines() {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let value: u64 = value.parse().unwrap_or(0);
        match key {
            "VmRSS:" => s.rss_kib = value,
            "VmHWM:" => s.hwm_kib = value,
            "RssAnon:" => s.anon_kib = value,
            "RssFile:" => s.file_kib = value,
            "Threads:" => s.threads = value,
            _ => {}
        }
    }
    s.cpu_ticks = cpu_ticks(&format!("/proc/{pid}/stat"));
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        *s.by_thread.entry(name.trim().to_string()).or_default() +=
            cpu_ticks(&path.join("stat").to_string_lossy());
    }
    s
}

/// utime + stime from a /proc/.../stat file, in clock ticks.
fn cpu_ticks(path: &str) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// Busy time of all cores together since boot, in clock ticks: [user + nice + system, irq + softirq + steal].
fn machine_busy_ticks() -> [u64; 2] {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return [0, 0];
    };
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let sum =
        |fields: &[usize]| -> u64 { fields.iter().map(|&i| f.get(i).copied().unwrap_or(0)).sum() };
    [sum(&[0, 1, 2]), sum(&[5, 6, 7])]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn file_kib(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len() / 1024)
}

/// The relay: `BENCH_RELAY_BIN` (to compare builds), or the shipped build (`--profile dist`, what
/// `make package` packs), built once by cargo.
fn relay_binary() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var_os("BENCH_RELAY_BIN").map_or_else(
            || cargo_build(&["--bin", "mlops-relay"], "mlops-relay"),
            PathBuf::from,
        )
    })
    .clone()
}

/// A baseline server: the binary `setting` names, or example `name` built by cargo with the same profile as the
/// relay.
fn example_binary(setting: &str, name: &str) -> PathBuf {
    std::env::var_os(setting).map_or_else(|| cargo_build(&["--example", name], name), PathBuf::from)
}

/// Builds a target with `--profile dist` and returns its executable.
fn cargo_build(what: &[&str], name: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building {name} (--profile dist) ...");
    let out = Command::new(cargo)
        .args(["build", "--profile", "dist", "--locked"])
        .args(what)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(ROOT)
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(out.status.success(), "cargo build of {name} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no executable for {name}"))
}

// ---------------------------------------------------------------------------------------------------------
// Request bodies.

/// Host-shaped `AmlEvents` invocations, each for a distinct ModelRegistered event (model-{i % 500}, version
/// i, id reg-i), built from a template so that making a body costs the client next to nothing.
struct Bodies {
    /// The template cut at every placeholder: text, placeholder, text, placeholder, ..., text.
    pieces: Vec<String>,
    holes: Vec<Hole>,
}

#[derive(Clone, Copy)]
enum Hole {
    Index,
    Model,
}

impl Bodies {
    fn new() -> Bodies {
        let event = json!({
            "topic": TOPIC, "subject": "models/model-%M%:%I%",
            "eventType": "Microsoft.MachineLearningServices.ModelRegistered", "eventTime": "2026-11-23T08:00:00Z",
            "id": "reg-%I%",
            "data": { "modelName": "model-%M%", "modelVersion": "%I%", "modelTags": { "auc": "0.9", "owner": "alice@contoso.example" } },
            "dataVersion": "2", "metadataVersion": "1"
        });
        // As the host sends it: the event JSON-encoded twice.
        let twice = Value::String(Value::String(event.to_string()).to_string());
        let template = json!({
            "Data": { "event": twice },
            "Metadata": { "sys": { "MethodName": "AmlEvents", "UtcNow": "2026-11-23T09:00:30Z", "RandGuid": "0f0e" } }
        })
        .to_string();
        let (mut pieces, mut holes) = (Vec::new(), Vec::new());
        let mut rest = template.as_str();
        while let Some(at) = rest.find('%') {
            let hole = match &rest[at..at + 3] {
                "%I%" => Hole::Index,
                "%M%" => Hole::Model,
                other => panic!("unexpected placeholder {other}"),
            };
            pieces.push(rest[..at].to_string());
            holes.push(hole);
            rest = &rest[at + 3..];
        }
        pieces.push(rest.to_string());
        Bodies { pieces, holes }
    }

    fn body(&self, i: u64) -> String {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(self.pieces.iter().map(String::len).sum::<usize>() + 64);
        for (piece, hole) in self.pieces.iter().zip(&self.holes) {
            s.push_str(piece);
            let _ = match hole {
                Hole::Index => write!(s, "{i}"),
                Hole::Model => write!(s, "{}", i % 500),
            };
        }
        s.push_str(self.pieces.last().expect("pieces"));
        s
    }

    fn typical_len(&self) -> usize {
        self.body(123_456).len()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Load.

fn client_runtime(threads: usize) -> tokio::runtime::Runtime {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("client runtime")
}

fn client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// Sends `PROBES` distinct events one at a time: the relay's response size (median) and one response.
async fn probe(addr: &SocketAddr, bodies: &Bodies) -> (usize, String) {
    let client = client(1);
    let url = format!("http://{addr}/AmlEvents");
    let mut sizes = Vec::new();
    let mut sample = String::new();
    for i in 0..PROBES {
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(bodies.body(i))
            .send()
            .await
            .expect("probe request");
        assert!(
            response.status().is_success(),
            "probe answered {}",
            response.status()
        );
        let text = response.text().await.expect("probe response");
        assert!(
            text.contains("(rule default)") && !text.contains("dead-lettered"),
            "the probe event was not decided: {text}"
        );
        sizes.push(text.len());
        sample = text;
    }
    sizes.sort_unstable();
    (sizes[sizes.len() / 2], sample)
}

struct Load {
    /// Latency of each request started in the measured window, in nanoseconds.
    latencies: Vec<u64>,
    /// From the start of the measured window to the last of its requests finishing.
    window: Duration,
    errors: u64,
    /// Requests sent in all (warm-up and measured).
    total_requests: u64,
    /// Requests answered 200, including the probes (the relay's expected number of decisions).
    ok_with_probe: u64,
    server_cpu_before: u64,
    /// The server's [`ProcStats::by_thread`] when the run started.
    server_threads_before: std::collections::BTreeMap<String, u64>,
    client_cpu_ticks: u64,
    /// CPU time the whole machine spent busy during the run, in clock ticks (all cores): in tasks, and in
    /// interrupts (on loopback, most of the TCP stack's work is softirq time, charged to no process).
    machine_busy_ticks: [u64; 2],
    /// Elapsed time of the whole run (warm-up and measured).
    elapsed: Duration,
}

impl Load {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.window.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        Duration::from_nanos(percentile(&self.latencies, p))
    }

    fn max(&self) -> Duration {
        Duration::from_nanos(self.latencies.last().copied().unwrap_or(0))
    }
}

/// `connections` tasks in a closed loop, each sending the next request as soon as the previous one is
/// answered; requests are numbered from `first` on, shared by all tasks, so every body is distinct.
async fn load(server: &Server, bodies: &Bodies, first: u64, s: &Settings) -> Load {
    let client = client(s.connections);
    let url = Arc::new(format!("http://{}/AmlEvents", server.addr));
    let next = Arc::new(AtomicU64::new(first));
    let server_before = server.stats();
    let cpu_before = server_before.cpu_ticks;
    let client_before = cpu_ticks("/proc/self/stat");
    let busy_before = machine_busy_ticks();
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + Duration::from_secs_f64(s.warmup);
    let until = measure_from + Duration::from_secs_f64(s.seconds);
    let bodies = Arc::new(Bodies {
        pieces: bodies.pieces.clone(),
        holes: bodies.holes.clone(),
    });
    let mut tasks = Vec::new();
    for _ in 0..s.connections {
        let (client, url, next, bodies) =
            (client.clone(), url.clone(), next.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            let mut latencies = Vec::with_capacity(1 << 16);
            let (mut errors, mut ok, mut last_end) = (0u64, 0u64, measure_from);
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                let body = bodies.body(next.fetch_add(1, Ordering::Relaxed));
                let result = client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let good = match result {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        if errors < 3 {
                            eprintln!("  answered {status}: {text}");
                        }
                        false
                    }
                    Err(e) => {
                        if errors < 3 {
                            eprintln!("  request failed: {e}");
                        }
                        false
                    }
                };
                let t1 = Instant::now();
                if good {
                    ok += 1;
                } else {
                    errors += 1;
                }
                if t0 >= measure_from {
                    latencies.push((t1 - t0).as_nanos() as u64);
                    last_end = last_end.max(t1);
                }
            }
            (latencies, errors, ok, last_end)
        }));
    }
    let mut all = Vec::new();
    let (mut errors, mut ok, mut last_end) = (0, 0, measure_from);
    for task in tasks {
        let (l, e, o, end) = task.await.expect("load task");
        all.extend(l);
        errors += e;
        ok += o;
        last_end = last_end.max(end);
    }
    all.sort_unstable();
    Load {
        latencies: all,
        window: last_end - measure_from,
        errors,
        total_requests: next.load(Ordering::Relaxed) - first,
        ok_with_probe: ok + first,
        server_cpu_before: cpu_before,
        server_threads_before: server_before.by_thread,
        client_cpu_ticks: cpu_ticks("/proc/self/stat") - client_before,
        machine_busy_ticks: {
            let after = machine_busy_ticks();
            [after[0] - busy_before[0], after[1] - busy_before[1]]
        },
        elapsed: start.elapsed(),
    }
}

struct Rows {
    decisions: u64,
    ledger: u64,
    queue: u64,
}

fn ledger_rows(db: &Path) -> Rows {
    let conn = rusqlite::Connection::open(db).expect("open the relay's database");
    let count = |table: &str| -> u64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| {
            r.get::<_, i64>(0)
        })
        .map_or(0, |n| n as u64)
    };
    Rows {
        decisions: count("decisions"),
        ledger: count("ledger"),
        queue: count("queue"),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Start-up.

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Spawn → first `GET /` 200 for the child `spawn` starts on a free port. The child is killed afterwards.
fn start_time(spawn: impl FnOnce(u16) -> Child) -> Duration {
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let t0 = Instant::now();
    let mut child = spawn(port);
    let ready = wait_ready(addr, t0 + Duration::from_secs(10));
    let elapsed = t0.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    ready.expect("the server answered GET / within 10 s");
    elapsed
}

/// Polls `GET /` every millisecond (a refused connection means not yet) until it answers 200.
fn wait_ready(addr: SocketAddr, deadline: Instant) -> Result<(), String> {
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    loop {
        if let Ok(mut stream) = TcpStream::connect(addr) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut head = [0u8; 12];
            if stream.write_all(request.as_bytes()).is_ok()
                && stream.read_exact(&mut head).is_ok()
                && &head == b"HTTP/1.1 200"
            {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("{addr} did not answer GET / with 200"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Numbers.

fn env_f64(name: &str) -> Option<f64> {
    let text = std::env::var(name).ok()?;
    match text.trim().replace('_', "").parse() {
        Ok(v) => Some(v),
        Err(_) => panic!("{name}={text:?} is not a number"),
    }
}

/// The p-quantile of sorted values (nearest rank).
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn percentile_of(times: &[Duration], p: f64) -> Duration {
    let mut nanos: Vec<u64> = times.iter().map(|t| t.as_nanos() as u64).collect();
    nanos.sort_unstable();
    Duration::from_nanos(percentile(&nanos, p))
}

fn median(times: &[Duration]) -> Duration {
    percentile_of(times, 0.5)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
