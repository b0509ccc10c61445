//! What the runtime benchmark's baseline servers (`hello_axum`, `hello_sqlite`) share: their command line,
//! their response, and the server around their `POST /AmlEvents` handler.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::{MethodRouter, get};

/// `NAME PORT [RESPONSE_BYTES]`: the port (0 picks a free one) and the response size (default 289, the size
/// of a typical relay response). Exits with usage on a missing or bad port.
pub fn args(name: &str) -> (u16, usize) {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: {name} PORT [RESPONSE_BYTES]");
        std::process::exit(2)
    });
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(289);
    (port, size)
}

/// A JSON invocation response of exactly `size` bytes (at least the empty skeleton's length).
pub fn response_body(size: usize) -> String {
    let skeleton = r#"{"Outputs":{},"Logs":[""],"ReturnValue":null}"#;
    let pad = size.saturating_sub(skeleton.len());
    format!(
        r#"{{"Outputs":{{}},"Logs":["{}"],"ReturnValue":null}}"#,
        "x".repeat(pad)
    )
}

/// Serves `GET /` (readiness, like the relay's) and `POST /AmlEvents` with `handler` on 127.0.0.1:`port`, on
/// the same runtime as `mlops-relay serve` (tokio multi-thread); prints `NAME listening on http://ADDR` once it
/// accepts connections.
pub fn serve(name: &str, port: u16, handler: MethodRouter) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .expect("bind");
        let app = Router::new()
            .route("/", get(|| async { "hello ready" }))
            .route("/AmlEvents", handler);
        println!(
            "{name} listening on http://{}",
            listener.local_addr().expect("address")
        );
        axum::serve(listener, app).await.expect("serve");
    });
}
