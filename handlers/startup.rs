//! The one place the application is assembled: the router over [`AppState`], used by `serve`, `local` and
//! the tests (which call it with `tower::ServiceExt::oneshot`, no socket).

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::functions::{self, AppState};

/// The example policy, embedded: `local` runs on it when no `--policy` is given.
pub const EXAMPLE_POLICY: &str = include_str!("../examples/policy.toml");

/// An example ModelRegistered delivery, written next to local mode's data for the ready-made `curl`.
pub const EXAMPLE_EVENT: &str = include_str!("../examples/model-registered.json");

/// Default request body limit of the webhooks: 1 MiB (Event Grid deliveries may be twice that, see
/// [`AppState::events_body_limit`]).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The router: readiness, host invocations (`POST /{FunctionName}`) and the HTTP functions under `/api`.
pub fn router(state: AppState) -> Router {
    let limit = state.body_limit;
    // Host invocations may be larger than what the webhooks take (see AppState::host_body_limit).
    let host = DefaultBodyLimit::max(state.host_body_limit() + 1);
    Router::new()
        .route("/", get(functions::ready))
        .route("/AmlEvents", post(functions::aml_events).layer(host))
        .route("/Scheduler", post(functions::scheduler).layer(host))
        .route("/{function}", post(functions::worker).layer(host))
        .route(
            "/api/events",
            post(functions::events_webhook)
                .options(functions::events_options)
                .layer(DefaultBodyLimit::max(state.events_body_limit() + 1)),
        )
        .route("/api/drift", post(functions::drift_webhook))
        .route("/api/alerts", post(functions::alerts_webhook))
        .route(
            "/api/approvals/{id}",
            get(functions::approval_page).post(functions::approval_decision),
        )
        .route("/api/health", get(functions::health))
        // One byte over the limit is enough to tell; the handlers answer 413 with a clear message.
        .layer(DefaultBodyLimit::max(limit + 1))
        .with_state(state)
}
