//! Turning a [`chat_core::Error`] into the contract's HTTP answer: a status and
//! `{"error": {"code", "message"}}`, plus `Retry-After` when rate limited.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chat_core::protocol::{ErrorBody, ErrorDetail};
use chat_core::{Error, ErrorCode};

/// The error type of every handler. A thin wrapper so that `?` on any `chat_core::Result` gives
/// the contract's answer.
#[derive(Debug)]
pub(crate) struct ApiError(pub(crate) Error);

/// Shorthand for handler results.
pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let err = self.0;
        let code = err.code();
        match &err {
            // Server-side trouble is logged with its cause; client mistakes are not worth more
            // than a debug line.
            Error::Internal { .. } => tracing::error!(error = ?err, "internal error"),
            Error::Unavailable { .. } => tracing::warn!(error = ?err, "backend unavailable"),
            _ => tracing::debug!(error = %err, "request failed"),
        }
        let mut response = error_response(
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            err.client_message(),
        );
        if let Error::RateLimited { retry_after_ms } = err {
            let secs = retry_after_ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

/// Builds an error answer with an explicit status, for the few answers whose status is not the
/// code's own (405, and the 500 of a caught panic).
pub(crate) fn error_response(status: StatusCode, code: ErrorCode, message: String) -> Response {
    let body = ErrorBody {
        error: ErrorDetail { code, message },
    };
    (status, Json(body)).into_response()
}
