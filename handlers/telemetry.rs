//! Logging set-up. Under the Functions host every stdout/stderr line lands in Application Insights, so logs
//! are JSON there; at a terminal they are readable text. `RUST_LOG` filters as usual (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (machines: the Functions host, log shippers).
    Json,
    /// Readable text (people).
    Text,
}

impl LogFormat {
    /// JSON when running under the Functions host (it sets `FUNCTIONS_CUSTOMHANDLER_PORT`), text otherwise.
    pub fn detect(env: impl Fn(&str) -> Option<String>) -> LogFormat {
        if env("FUNCTIONS_CUSTOMHANDLER_PORT").is_some()
            || env("RELAY_LOG_FORMAT").as_deref() == Some("json")
        {
            LogFormat::Json
        } else {
            LogFormat::Text
        }
    }
}

/// Installs the global subscriber, writing to stderr (stdout is kept for what a command prints).
/// Calling it twice is harmless.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .compact()
            .try_init(),
    };
}
