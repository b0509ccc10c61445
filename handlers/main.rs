//! The `mlops-relay` command line. Thin: parsing arguments, reading files, printing; the work is in the library.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

mod commands;

/// glibc's allocator for the short commands; `serve`, `local`, `replay` and `policy diff` switch to
/// mimalloc (see [`mlops_relay::alloc`]).
#[global_allocator]
static ALLOCATOR: mlops_relay::alloc::Switchable = mlops_relay::alloc::Switchable::new();

use mlops_relay::config::StateUrl;
use mlops_relay::domain::Signal;
use mlops_relay::policy::{Policy, check::json_schema};
use mlops_relay::replay::{self, Engine, Format, Options, RecordError, reader};

/// Event-driven MLOps automation for Azure: Azure ML events in; approvals, deployments, retrains and pages
/// out, each exactly once and with a recorded reason.
#[derive(Parser)]
#[command(name = "mlops-relay", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decide recorded events with a policy, with no side effects, and print what would have happened.
    Replay {
        /// Policy file (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// `jsonl`: one object per decision; `text`: a readable story.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        #[command(flatten)]
        reorder: Reorder,
        /// Do not fire the policy's schedules between events.
        #[arg(long)]
        no_schedules: bool,
        /// Event files (JSON array, one object, or JSON Lines), directories, or `-` for standard input.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Explain, in words, what the policy decides for the events in a file.
    Explain {
        /// Policy file (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// Decide at this time (RFC 3339) instead of each event's own time.
        #[arg(long)]
        at: Option<DateTime<Utc>>,
        /// Event file.
        event_file: PathBuf,
    },
    /// Run as an Azure Functions custom handler: listen on 127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT.
    ///
    /// Settings come from the environment: FUNCTIONS_CUSTOMHANDLER_PORT (set by the host), RELAY_STATE_URL
    /// (`sqlite:PATH` or a Blob container URL), RELAY_POLICY (default: policy.toml in the app root).
    Serve {
        /// Listen here instead of 127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT (port 0 picks a free one).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// The standalone relay on embedded backends: the same routes as `serve`, plus the schedule runner and
    /// the queue drainer. Outside calls are dry-run: the exact request is logged and recorded.
    Local {
        /// Policy file (default: the embedded example policy).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Where the SQLite database lives (created if missing).
        #[arg(long, default_value = ".mlops-relay")]
        data_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7071")]
        listen: SocketAddr,
        /// How long a message taken by the drainer stays hidden; a drainer that dies holding one releases it
        /// when this runs out (Service Bus's LockDuration). From 1s to 5m.
        #[arg(long, default_value = "60s", value_parser = message_lock)]
        message_lock: std::time::Duration,
    },
    /// Read the decision log, the action ledger, the queues, worker effects and dead letters.
    Inspect {
        /// What to show.
        #[arg(value_enum)]
        what: Inspect,
        /// Local mode's data directory.
        #[arg(long, conflicts_with = "state")]
        data_dir: Option<PathBuf>,
        /// A state URL (`sqlite:PATH`). Without it or --data-dir: RELAY_STATE_URL, else `.mlops-relay`.
        #[arg(long)]
        state: Option<String>,
        /// Only this model.
        #[arg(long)]
        model: Option<String>,
        /// JSON Lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Assemble the deployable Function App: DIR/app/ (a folder) and DIR/mlops-relay.zip (for Flex Consumption's
    /// one-deploy), with host.json, one folder per function, the binary and policy.toml.
    Package {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// The Linux x86-64 executable to ship (default: this executable).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// The policy to ship as policy.toml (default: examples/policy.toml under --root).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The project root, holding host.json and function-defs/.
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate policy files; every error is printed with line and column.
    Check {
        /// Policy files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the policy file's JSON Schema (for editor completion).
    Schema,
    /// Show what changing a policy would have changed over the same history: actions per model.
    Diff {
        /// The current policy.
        #[arg(long)]
        old: PathBuf,
        /// The proposed policy.
        #[arg(long)]
        new: PathBuf,
        /// `text`: `model: +3 retrain, -12 page`; `json`: counts per model and kind.
        #[arg(long, value_enum, default_value = "text")]
        format: DiffFormat,
        #[command(flatten)]
        reorder: Reorder,
        /// Event files, directories, or `-`.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

/// How replayed events are put back in event-time order.
#[derive(clap::Args)]
struct Reorder {
    /// Most events held to sort by event time (memory stays bounded by this).
    #[arg(long, default_value_t = 65_536)]
    reorder_buffer: usize,
    /// How late (in event time, behind the newest event read so far) an event may arrive and still be decided
    /// in order; events are held no longer than this. The default is Event Grid's longest retry period.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    reorder_window: std::time::Duration,
}

impl Reorder {
    fn window(&self) -> Option<chrono::TimeDelta> {
        chrono::TimeDelta::from_std(self.reorder_window).ok()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Inspect {
    /// The decision log, with its hash chain verified.
    Decisions,
    /// The action ledger.
    Actions,
    /// Queue depths and messages.
    Queues,
    /// What workers did (or would have done, dry-run) per action.
    Effects,
    /// Messages that will not be retried, and why.
    DeadLetters,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DiffFormat {
    Text,
    Json,
}

/// `--message-lock`: a duration from 1 s (renewed every half lock, a shorter one would run out between
/// renewals and let a second drainer take the message while the first carries it out) to 5 min (Service
/// Bus's longest LockDuration).
fn message_lock(text: &str) -> Result<std::time::Duration, String> {
    let lock = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(300)).contains(&lock) {
        return Err(format!(
            "{text} is outside 1s..=5m (the drainer renews a lock every half of it; Service Bus's longest is 5 minutes)"
        ));
    }
    Ok(lock)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load_policy(path: &std::path::Path) -> Result<Policy, ExitCode> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read policy {}: {e}", path.display());
            return Err(ExitCode::from(2));
        }
    };
    Policy::parse(&text).map_err(|diagnostics| {
        for d in &diagnostics {
            eprintln!("{}:{d}", path.display());
        }
        eprintln!("{}: {} error(s)", path.display(), diagnostics.len());
        ExitCode::from(1)
    })
}

fn report(e: &RecordError) {
    eprintln!("{}: {}", e.origin, e.message);
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve { listen } => {
            ALLOCATOR.use_mimalloc();
            commands::serve(listen)
        }
        Command::Package {
            out,
            binary,
            policy,
            root,
        } => {
            let binary = match binary {
                Some(path) => path,
                None => std::env::current_exe().context("cannot locate this executable")?,
            };
            let policy = policy.unwrap_or_else(|| root.join("examples").join("policy.toml"));
            let built = mlops_relay::package::build(&mlops_relay::package::Options {
                root,
                out,
                binary,
                policy,
            })?;
            println!(
                "{} ({} function(s): {}; executable {}; policy {}; needs glibc {})",
                built.app_dir.display(),
                built.functions.len(),
                built.functions.join(", "),
                built.executable,
                built.policy_hash,
                built
                    .glibc
                    .map_or("none (static)".to_string(), |(a, b)| format!(">= {a}.{b}"))
            );
            println!("{}", built.zip.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Local {
            policy,
            data_dir,
            listen,
            message_lock,
        } => {
            ALLOCATOR.use_mimalloc();
            commands::local(policy, data_dir, listen, message_lock)
        }
        Command::Inspect {
            what,
            data_dir,
            state,
            model,
            json,
        } => {
            // RELAY_STATE_URL is a fallback, not a flag: a data directory given on the command line (the
            // command `local` prints) wins over the environment `local` itself may have read.
            let url = match (
                data_dir,
                state.or_else(|| std::env::var("RELAY_STATE_URL").ok()),
            ) {
                (Some(dir), _) => StateUrl::in_data_dir(&dir),
                (None, Some(url)) => StateUrl::parse(&url)?,
                (None, None) => StateUrl::in_data_dir(std::path::Path::new(".mlops-relay")),
            };
            commands::inspect(what, &url, model, json)
        }
        Command::Replay {
            policy,
            format,
            reorder,
            no_schedules,
            paths,
        } => {
            ALLOCATOR.use_mimalloc();
            let policy = match load_policy(&policy) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            let opts = Options {
                format,
                reorder_buffer: reorder.reorder_buffer,
                reorder_window: reorder.window(),
                schedules: !no_schedules,
                progress: true,
            };
            let stdout = io::stdout();
            let mut out = io::BufWriter::with_capacity(256 * 1024, stdout.lock());
            let summary = replay::run(&policy, &paths, &opts, &mut out, &mut |e| report(e))
                .context("replay failed")?;
            drop(out);
            if format == Format::Text {
                let actions: Vec<String> = summary
                    .actions
                    .iter()
                    .map(|(k, n)| format!("{n} {k}"))
                    .collect();
                eprintln!(
                    "{} record(s), {} decision(s), {} failed; actions: {}",
                    summary.records,
                    summary.decisions,
                    summary.failed,
                    if actions.is_empty() {
                        "none".into()
                    } else {
                        actions.join(", ")
                    }
                );
            }
            if summary.late > 0 {
                eprintln!(
                    "note: {} event(s) arrived later than --reorder-window or --reorder-buffer allow and were decided out of order",
                    summary.late
                );
            }
            Ok(if summary.failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Explain {
            policy,
            at,
            event_file,
        } => {
            let policy = match load_policy(&policy) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            explain(&policy, at, &event_file)
        }
        Command::Policy {
            command: PolicyCommand::Check { files },
        } => {
            let mut failed = false;
            for file in &files {
                match load_policy(file) {
                    Ok(p) => println!(
                        "{}: ok (policy {}; {} rule(s), {} schedule(s))",
                        file.display(),
                        p.hash,
                        p.rules().len(),
                        p.schedules().len()
                    ),
                    Err(_) => failed = true,
                }
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Policy {
            command: PolicyCommand::Schema,
        } => {
            println!("{}", serde_json::to_string_pretty(&json_schema())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy {
            command:
                PolicyCommand::Diff {
                    old,
                    new,
                    format,
                    reorder,
                    paths,
                },
        } => {
            ALLOCATOR.use_mimalloc();
            let (old, new) = match (load_policy(&old), load_policy(&new)) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(code), _) | (_, Err(code)) => return Ok(code),
            };
            let mut failed = 0u64;
            let impact = replay::diff(
                &old,
                &new,
                &paths,
                reorder.reorder_buffer,
                reorder.window(),
                &mut |e| {
                    failed += 1;
                    report(e)
                },
            )?;
            let mut out = io::stdout().lock();
            match format {
                DiffFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&impact)?)?,
                DiffFormat::Text => {
                    let lines = impact.lines();
                    if lines.is_empty() {
                        writeln!(
                            out,
                            "no change: both policies take the same actions over this history"
                        )?;
                    }
                    for line in lines {
                        writeln!(out, "{line}")?;
                    }
                }
            }
            Ok(if failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn explain(policy: &Policy, at: Option<DateTime<Utc>>, file: &std::path::Path) -> Result<ExitCode> {
    let mut engine = Engine::new(policy, false);
    let mut ordered = replay::Ordered::new(usize::MAX);
    let mut failed = false;
    reader::read_input(file, &mut |origin, record, _| match record
        .and_then(|v| ordered.push_record(v))
    {
        Ok(signals) => signals.into_iter().for_each(|s| ordered.insert(s)),
        Err(message) => {
            failed = true;
            report(&RecordError { origin, message });
        }
    });
    let mut out = io::stdout().lock();
    let mut n = 0;
    while let Some(signal) = ordered.pop(true) {
        let mut text = String::new();
        engine.step(&signal, at, &mut |d| text = render_explanation(&signal, &d));
        if n > 0 {
            writeln!(out)?;
        }
        write!(out, "{text}")?;
        n += 1;
    }
    if n == 0 && !failed {
        eprintln!("{}: no events", file.display());
        return Ok(ExitCode::from(1));
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn render_explanation(signal: &Signal, d: &mlops_relay::policy::Decision) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "Event {} ({})", signal.event_id, signal.event_type);
    let _ = writeln!(
        s,
        "  signal:   {}{}",
        signal.kind(),
        d.model
            .as_deref()
            .map(|m| format!(
                " for {m}{}",
                signal
                    .version()
                    .map(|v| format!(":{v}"))
                    .unwrap_or_default()
            ))
            .unwrap_or_default()
    );
    if let Some(ws) = &signal.workspace {
        let _ = writeln!(
            s,
            "  from:     workspace {} (resource group {}, subscription {})",
            ws.workspace, ws.resource_group, ws.subscription
        );
    }
    let _ = writeln!(
        s,
        "  decided:  {} with policy {}",
        d.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        d.policy_hash
    );
    let _ = writeln!(s, "  rule:     {}", d.rule.as_deref().unwrap_or("(none)"));
    if d.actions.is_empty() {
        let _ = writeln!(s, "  Nothing will be done.");
    } else {
        let _ = writeln!(s, "  It will:");
        for a in &d.actions {
            let _ = writeln!(s, "    - {} ({}): {}", a.kind, a.action_id, a.reason);
        }
    }
    if !d.fired.is_empty() {
        let _ = writeln!(s, "  Because:");
        for n in &d.fired {
            let _ = writeln!(s, "    - [{}] {}", n.rule, n.reason);
        }
    }
    if !d.suppressed.is_empty() {
        let _ = writeln!(s, "  Held back:");
        for h in &d.suppressed {
            let _ = writeln!(s, "    - [{}] {}", h.rule, h.reason);
        }
    }
    s
}
