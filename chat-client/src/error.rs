//! The SDK's one error type.
//!
//! A failure is either an answer of the server (`Api`, carrying the contract's stable
//! [`ErrorCode`]), a failure to reach it (`Transport`), an answer the SDK cannot understand
//! (`Protocol`), or a misuse of the SDK itself (`NotLoggedIn`, `InvalidUrl`).

use chat_core::ErrorCode;
use std::time::Duration;

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed lower-level error (HTTP or WebSocket library), kept as the source so logs show the
/// real cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Every failure the SDK reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error status and (usually) the contract's error body.
    #[error("server answered {status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The contract's stable code. For answers without an error body (e.g. a proxy's 502)
        /// it is derived from the status.
        code: ErrorCode,
        /// The server's human text.
        message: String,
        /// The `Retry-After` the server asked for (429, sometimes 503).
        retry_after: Option<Duration>,
    },
    /// The server could not be reached, or the connection broke, or the request timed out.
    /// Whether the server acted on the request is unknown.
    #[error("transport error: {message}")]
    Transport {
        /// What failed.
        message: String,
        /// The HTTP or WebSocket library's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The server's answer did not match the wire contract.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The call needs a session: log in first (or build the client with a token).
    #[error("not logged in")]
    NotLoggedIn,
    /// The server URL given to the client is not an `http://` or `https://` URL.
    #[error("invalid server URL: {0}")]
    InvalidUrl(String),
    /// [`Client::subscribe_from`](crate::Client::subscribe_from) was called outside a tokio
    /// runtime, where its background task cannot run.
    #[error("no tokio runtime to run the subscription in")]
    NoRuntime,
    /// The client's state directory (see
    /// [`ClientBuilder::state_dir`](crate::ClientBuilder::state_dir)) could not be used.
    #[error("state file {}: {message}", path.display())]
    State {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Every attempt of a retried request failed; this is the last failure.
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        last: Box<Error>,
    },
}

impl Error {
    pub(crate) fn transport(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Transport {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// The contract's error code, for errors the server answered (also through
    /// `RetriesExhausted`); `None` for transport, protocol and local errors.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            Error::Api { code, .. } => Some(code),
            Error::RetriesExhausted { last, .. } => last.code(),
            _ => None,
        }
    }

    /// The HTTP status of a server answer, if this error is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            Error::RetriesExhausted { last, .. } => last.status(),
            _ => None,
        }
    }

    /// Whether the same request may succeed if tried again: transport failures, `unavailable`
    /// (502/503/504) and `rate_limited` (429). Only idempotent requests (reads, and sends with a
    /// `client_msg_id`) are retried by the SDK.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { .. } => true,
            Error::Api { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            _ => false,
        }
    }

    /// Whether the error means the session is missing, expired or revoked (401, or no token).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, Error::NotLoggedIn) || self.status() == Some(401)
    }

    /// The server's requested wait before retrying, if it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The code an error answer without a contract body (e.g. from a proxy) stands for.
pub(crate) fn code_for_status(status: u16) -> ErrorCode {
    match status {
        400 => ErrorCode::BadRequest,
        401 => ErrorCode::Unauthenticated,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        409 => ErrorCode::Conflict,
        413 => ErrorCode::PayloadTooLarge,
        422 => ErrorCode::InvalidArgument,
        429 => ErrorCode::RateLimited,
        502..=504 => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let e = Error::Api {
            status: 503,
            code: ErrorCode::Unavailable,
            message: "db down".into(),
            retry_after: None,
        };
        assert!(e.is_retryable());
        assert_eq!(e.code(), Some(&ErrorCode::Unavailable));
        let e = Error::Api {
            status: 403,
            code: ErrorCode::NotAMember,
            message: "no".into(),
            retry_after: None,
        };
        assert!(!e.is_retryable());
        let wrapped = Error::RetriesExhausted {
            attempts: 3,
            last: Box::new(e),
        };
        assert_eq!(wrapped.status(), Some(403));
        assert_eq!(wrapped.code(), Some(&ErrorCode::NotAMember));
        assert!(Error::NotLoggedIn.is_unauthenticated());
        assert!(Error::transport("x", std::io::Error::other("y")).is_retryable());
        assert_eq!(code_for_status(502), ErrorCode::Unavailable);
        assert_eq!(code_for_status(418), ErrorCode::Internal);
    }
}
