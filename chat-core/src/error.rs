//! The one error type of the system and its stable wire codes.
//!
//! Every failure a client can see is an [`Error`]; [`Error::code`] gives the contract's
//! snake_case code and [`ErrorCode::http_status`] its HTTP status. Stores report a database that is
//! down or timing out as [`Error::Unavailable`] so the server answers 503 and the client retries,
//! never a 500.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A boxed error from a backend (a driver, an I/O error), kept as the source of `Unavailable`
/// and `Internal` so that logs show the real cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error of the system, one variant per wire code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Malformed JSON, wrong types, missing fields (400 `bad_request`).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Well-formed but unacceptable values: empty or oversized text, bad page token, bad limit
    /// (400 `invalid_argument`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Missing, unknown, expired or revoked credentials (401 `unauthenticated`).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this (403 `forbidden`).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The caller is not a member of the chat (403 `not_a_member`).
    #[error("not a member of chat {0}")]
    NotAMember(crate::ChatId),
    /// The thing does not exist (404 `not_found`).
    #[error("not found: {0}")]
    NotFound(String),
    /// The request conflicts with existing state, e.g. an email already taken (409 `conflict`).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A body or frame over the size limit (413 `payload_too_large`).
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    /// Too many requests; retry after the given number of milliseconds (429 `rate_limited`).
    #[error("rate limited: retry after {retry_after_ms} ms")]
    RateLimited {
        /// How long the caller should wait before trying again.
        retry_after_ms: u64,
    },
    /// The server's store does not support this operation (501 `not_implemented`), e.g. a
    /// third-party message store written before messages could change.
    #[error("not implemented: {0}")]
    NotImplemented(String),
    /// A backend (database, broker) is down or timing out (503 `unavailable`). Safe to retry.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What was unavailable, for the client.
        message: String,
        /// The backend's own error, for logs.
        #[source]
        source: Option<BoxError>,
    },
    /// A bug or an invariant broken inside the server (500 `internal`). Never the answer to bad
    /// input; the message sent to clients is generic.
    #[error("internal error: {message}")]
    Internal {
        /// What went wrong, for logs.
        message: String,
        /// The underlying error, for logs.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// An `Unavailable` error caused by a backend error.
    pub fn unavailable(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Unavailable {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An `Internal` error caused by another error.
    pub fn internal(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Internal {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// The stable wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::BadRequest(_) => ErrorCode::BadRequest,
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::NotAMember(_) => ErrorCode::NotAMember,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::Conflict(_) => ErrorCode::Conflict,
            Error::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Error::RateLimited { .. } => ErrorCode::RateLimited,
            Error::NotImplemented(_) => ErrorCode::NotImplemented,
            Error::Unavailable { .. } => ErrorCode::Unavailable,
            Error::Internal { .. } => ErrorCode::Internal,
        }
    }

    /// The text a client sees. Internal details never leave the server.
    pub fn client_message(&self) -> String {
        match self {
            Error::Internal { .. } => "internal error".to_owned(),
            Error::Unavailable { message, .. } => format!("unavailable: {message}"),
            other => other.to_string(),
        }
    }

    /// Whether the same request may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::RateLimited { .. })
    }
}

/// The contract's stable error codes. Unknown codes from a newer server deserialize as
/// [`ErrorCode::Other`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: malformed JSON, wrong types, missing fields.
    BadRequest,
    /// 400: empty or oversized text, bad page token, bad limit.
    InvalidArgument,
    /// 401: missing or invalid credentials.
    Unauthenticated,
    /// 403: not allowed.
    Forbidden,
    /// 403: not a member of the chat.
    NotAMember,
    /// 404: no such thing.
    NotFound,
    /// 409: conflicts with existing state.
    Conflict,
    /// 413: body or frame too large.
    PayloadTooLarge,
    /// 429: slow down.
    RateLimited,
    /// 501: the server's store does not support this operation.
    NotImplemented,
    /// 503: a backend is down.
    Unavailable,
    /// 500: a server bug.
    Internal,
    /// A code this version does not know.
    #[serde(untagged)]
    Other(String),
}

impl ErrorCode {
    /// The HTTP status that carries this code.
    pub fn http_status(&self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidArgument => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden | ErrorCode::NotAMember => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::NotImplemented => 501,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal | ErrorCode::Other(_) => 500,
        }
    }

    /// The snake_case string of the code.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotAMember => "not_a_member",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotImplemented => "not_implemented",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Other(s) => s,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_survive() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::NotAMember,
            ErrorCode::RateLimited,
            ErrorCode::Unavailable,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, code);
        }
        let other: ErrorCode = serde_json::from_str("\"teapot\"").unwrap();
        assert_eq!(other, ErrorCode::Other("teapot".into()));
        assert_eq!(other.http_status(), 500);
    }

    #[test]
    fn internal_details_stay_on_the_server() {
        let e = Error::internal("db row had NULL seq", std::io::Error::other("x"));
        assert_eq!(e.client_message(), "internal error");
        assert_eq!(e.code().http_status(), 500);
    }
}
