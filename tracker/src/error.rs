//! Errors of the tracker library, and how they map to HTTP: every failure a
//! client can cause is a 4xx with a JSON `{"error": reason}` body;
//! trouble on our side is a 5xx and is logged.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TrackerError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("internal: {0}")]
    Internal(String),
}

impl TrackerError {
    fn status(&self) -> StatusCode {
        match self {
            TrackerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            TrackerError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            TrackerError::Forbidden(_) => StatusCode::FORBIDDEN,
            TrackerError::NotFound(_) => StatusCode::NOT_FOUND,
            TrackerError::Conflict(_) => StatusCode::CONFLICT,
            TrackerError::Redis(_) | TrackerError::ClickHouse(_) => StatusCode::SERVICE_UNAVAILABLE,
            TrackerError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for TrackerError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(cause = %self, "request failed");
        }
        let mut resp = (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
