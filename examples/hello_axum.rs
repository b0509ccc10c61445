//! The bare-axum baseline for `benches/runtime.rs`: a hello-world axum server with nothing behind it.
//!
//! `hello-axum PORT [RESPONSE_BYTES]` listens on 127.0.0.1:PORT (0 picks a free port) and answers
//!
//! * `GET /` with 200 `hello ready`, like the relay's readiness route;
//! * `POST /AmlEvents` by reading and discarding the request body, then answering 200 with a fixed
//!   `application/json` body of exactly RESPONSE_BYTES bytes (default 289, the size of a typical relay
//!   response), shaped like a custom-handler invocation response.
//!
//! It runs on the same runtime as `mlops-relay serve` (tokio multi-thread, one worker per core) and prints
//! `hello-axum listening on http://ADDR` once it accepts connections. Nothing is logged.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::{get, post};

/// A JSON invocation response of exactly `size` bytes (at least the empty skeleton's length).
fn response_body(size: usize) -> String {
    let skeleton = r#"{"Outputs":{},"Logs":[""],"ReturnValue":null}"#;
    let pad = size.saturating_sub(skeleton.len());
    format!(
        r#"{{"Outputs":{{}},"Logs":["{}"],"ReturnValue":null}}"#,
        "x".repeat(pad)
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: hello-axum PORT [RESPONSE_BYTES]");
        std::process::exit(2)
    });
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(289);
    let body = Bytes::from(response_body(size));

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
            .route(
                "/AmlEvents",
                post(move |_request: Bytes| {
                    let body = body.clone();
                    async move { ([(header::CONTENT_TYPE, "application/json")], body) }
                }),
            );
        println!(
            "hello-axum listening on http://{}",
            listener.local_addr().expect("address")
        );
        axum::serve(listener, app).await.expect("serve");
    });
}
