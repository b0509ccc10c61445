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

#[path = "common/baseline.rs"]
mod baseline;

use axum::body::Bytes;
use axum::http::header;
use axum::routing::post;

fn main() {
    let (port, size) = baseline::args("hello-axum");
    let body = Bytes::from(baseline::response_body(size));
    baseline::serve(
        "hello-axum",
        port,
        post(move |_request: Bytes| {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
}
