//! One error type for the HTTP edge. Transient failures become 5xx so that the caller (Event Grid, the
//! Functions host) retries; bad input becomes 4xx with a message that says what is wrong. Internals are
//! logged, not leaked.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::ports::PortError;

/// An error answered over HTTP.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is malformed; retrying it unchanged will fail again.
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than accepted.
    #[error("request body exceeds the {0} byte limit")]
    TooLarge(usize),
    /// Nothing here.
    #[error("{0}")]
    NotFound(String),
    /// A dependency is unavailable; retry later.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// A configuration or data error on our side.
    #[error("internal error")]
    Internal(String),
}

impl From<PortError> for AppError {
    fn from(e: PortError) -> Self {
        match e {
            PortError::Transient(m) => AppError::Unavailable(m),
            PortError::Permanent(m) | PortError::Rejected(m) => AppError::Internal(m),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        match &self {
            AppError::Internal(detail) => tracing::error!(%detail, "internal error"),
            AppError::Unavailable(detail) => tracing::warn!(%detail, "dependency unavailable"),
            _ => {}
        }
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}
