//! The SDK's one error type.
//!
//! A failure is either an answer of the server (`Api`, carrying the contract's stable
//! [`ErrorCode`]), a failure to reach it (`Transport`, with a [`TransportKind`] saying why), an
//! answer the SDK cannot understand (`Protocol`), or a misuse of the SDK itself (`NotLoggedIn`,
//! `InvalidUrl`, `InvalidCertificate`).
//!
//! The kind of a transport failure is found by walking the `source()` chain of the HTTP,
//! WebSocket, TLS and I/O errors underneath ([`TransportKind::of`]), so an application can tell
//! "the server is down" from "the server's certificate is not trusted" without parsing text.

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
    /// Whether the server acted on the request is unknown. `kind` says why; a server whose TLS
    /// certificate does not verify is [`TransportKind::CertificateNotTrusted`], never a
    /// fallback to plain HTTP.
    #[error("transport error ({kind}): {message}")]
    Transport {
        /// Why, as far as the error chain tells.
        kind: TransportKind,
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
    /// A root certificate given to
    /// [`ClientBuilder::add_root_certificate_pem`](crate::ClientBuilder::add_root_certificate_pem)
    /// is not a PEM certificate the TLS library accepts.
    #[error("invalid root certificate: {0}")]
    InvalidCertificate(String),
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

/// Why a transport failure happened, as far as the underlying errors tell. Its `Display` is the
/// short cause an operator or a status line wants ("certificate not trusted").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportKind {
    /// Nothing listens at the server's address (TCP connection refused).
    ConnectionRefused,
    /// The server's host name did not resolve (DNS).
    NameNotResolved,
    /// The server's TLS certificate did not verify against the client's roots (unknown issuer,
    /// expired, issued for another name, ...). Retrying does not help; add the deployment's
    /// root with [`ClientBuilder::add_root_certificate_pem`](crate::ClientBuilder::add_root_certificate_pem)
    /// or fix the server's certificate.
    CertificateNotTrusted,
    /// The TLS handshake failed for another reason (e.g. the port does not speak TLS).
    Tls,
    /// Connecting or the request took longer than the configured timeout.
    TimedOut,
    /// Anything else: a reset or closed connection, an unreachable network, ...
    Other,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::ConnectionRefused => "connection refused",
            TransportKind::NameNotResolved => "name not resolved",
            TransportKind::CertificateNotTrusted => "certificate not trusted",
            TransportKind::Tls => "TLS handshake failed",
            TransportKind::TimedOut => "timed out",
            TransportKind::Other => "connection failed",
        })
    }
}

/// Longest `source()` chain walked, so a cyclic or absurd chain cannot loop.
const MAX_CHAIN: usize = 32;

impl TransportKind {
    /// Classifies a failure by walking its `source()` chain (reqwest, hyper, tungstenite,
    /// rustls and `std::io` errors; an `io::Error`'s wrapped error is looked into too). When
    /// several causes show, the most specific wins: a certificate problem over other TLS
    /// failures over refused, unresolved and timed-out connections.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> TransportKind {
        let mut found = Found::default();
        visit(error, &mut found, 0);
        if found.certificate {
            TransportKind::CertificateNotTrusted
        } else if found.tls {
            TransportKind::Tls
        } else if found.refused {
            TransportKind::ConnectionRefused
        } else if found.dns {
            TransportKind::NameNotResolved
        } else if found.timed_out {
            TransportKind::TimedOut
        } else {
            TransportKind::Other
        }
    }
}

/// The causes seen along an error chain.
#[derive(Default)]
struct Found {
    certificate: bool,
    tls: bool,
    refused: bool,
    dns: bool,
    timed_out: bool,
}

/// Looks at `e`, what an `io::Error` wraps, and the rest of the chain.
fn visit(e: &(dyn std::error::Error + 'static), found: &mut Found, depth: usize) {
    if depth > MAX_CHAIN {
        return;
    }
    #[cfg(feature = "rustls")]
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        match tls {
            rustls::Error::InvalidCertificate(_) => found.certificate = true,
            _ => found.tls = true,
        }
    }
    if let Some(r) = e.downcast_ref::<reqwest::Error>() {
        found.timed_out |= r.is_timeout();
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        match io.kind() {
            std::io::ErrorKind::ConnectionRefused => found.refused = true,
            std::io::ErrorKind::TimedOut => found.timed_out = true,
            _ => {}
        }
        // `io::Error::source` skips the error it wraps (it returns that error's source), and
        // TLS libraries report handshake failures as an `io::Error` wrapping their own error.
        if let Some(inner) = io.get_ref() {
            visit(inner, found, depth + 1);
        }
    }
    // Name resolution failures have no kind of their own: getaddrinfo's text, or hyper's
    // "dns error" wrapper around it.
    let text = e.to_string().to_ascii_lowercase();
    if text.starts_with("dns error")
        || text.contains("failed to lookup address")
        || text.contains("name or service not known")
        || text.contains("no such host")
        || text.contains("nodename nor servname")
    {
        found.dns = true;
    }
    if let Some(next) = e.source() {
        visit(next, found, depth + 1);
    }
}

impl Error {
    /// A transport error whose kind is read from `source`'s chain and whose message ends with
    /// the deepest cause, so logs say what happened without printing the chain.
    pub(crate) fn transport(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        let source: BoxError = source.into();
        let kind = TransportKind::of(source.as_ref());
        let mut message = message.into();
        let root = root_cause(source.as_ref()).to_string();
        if !message.contains(&root) {
            message = format!("{message}: {root}");
        }
        Error::Transport {
            kind,
            message,
            source: Some(source),
        }
    }

    /// Why a transport failure happened (also through `RetriesExhausted`); `None` for other
    /// errors.
    pub fn transport_kind(&self) -> Option<TransportKind> {
        match self {
            Error::Transport { kind, .. } => Some(*kind),
            Error::RetriesExhausted { last, .. } => last.transport_kind(),
            _ => None,
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
    /// A certificate that is not trusted is not retried: it will not verify next time either.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { kind, .. } => *kind != TransportKind::CertificateNotTrusted,
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

/// The last error of a `source()` chain (bounded), descending into what an `io::Error` wraps.
fn root_cause<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> &'a (dyn std::error::Error + 'static) {
    let mut e = e;
    for _ in 0..MAX_CHAIN {
        let next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
        match next {
            Some(n) => e = n,
            None => break,
        }
    }
    e
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

    /// An error that wraps another, as hyper's and reqwest's do.
    #[derive(Debug)]
    struct Wrapper(&'static str, Box<dyn std::error::Error + Send + Sync>);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(self.1.as_ref())
        }
    }

    fn kind_of(e: impl std::error::Error + 'static) -> TransportKind {
        TransportKind::of(&e)
    }

    #[test]
    fn transport_causes_are_classified_along_the_source_chain() {
        use std::io::{Error as IoError, ErrorKind};
        let refused = Wrapper(
            "client error (Connect)",
            IoError::from(ErrorKind::ConnectionRefused).into(),
        );
        assert_eq!(kind_of(refused), TransportKind::ConnectionRefused);
        let dns = Wrapper(
            "client error (Connect)",
            Box::new(Wrapper(
                "dns error",
                IoError::other("failed to lookup address information: Name or service not known")
                    .into(),
            )),
        );
        assert_eq!(kind_of(dns), TransportKind::NameNotResolved);
        assert_eq!(
            kind_of(IoError::from(ErrorKind::TimedOut)),
            TransportKind::TimedOut
        );
        assert_eq!(
            kind_of(IoError::from(ErrorKind::ConnectionReset)),
            TransportKind::Other
        );
    }

    #[cfg(feature = "rustls")]
    #[test]
    fn tls_failures_inside_io_errors_are_found() {
        use std::io::{Error as IoError, ErrorKind};
        // TLS libraries report a failed handshake as an `io::Error` wrapping their own error;
        // `io::Error::source` skips the wrapped error, so the walk must look inside.
        let untrusted = Wrapper(
            "error sending request",
            Box::new(IoError::new(
                ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            )),
        );
        assert_eq!(kind_of(untrusted), TransportKind::CertificateNotTrusted);
        let not_tls = IoError::new(
            ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert_eq!(kind_of(not_tls), TransportKind::Tls);

        let e = Error::transport(
            "request failed",
            IoError::new(
                ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
            ),
        );
        assert_eq!(
            e.transport_kind(),
            Some(TransportKind::CertificateNotTrusted)
        );
        let text = e.to_string();
        assert!(text.contains("certificate not trusted"), "{text}");
        assert!(
            text.contains("Expired"),
            "the root cause is in the message: {text}"
        );
        assert!(!e.is_retryable(), "a certificate that failed fails again");
    }

    #[tokio::test]
    async fn real_connection_failures_say_their_cause() {
        // Port 1 on loopback refuses connections.
        let http = reqwest::Client::new();
        let err = http
            .get("http://127.0.0.1:1/")
            .send()
            .await
            .expect_err("nothing listens on port 1");
        let e = Error::transport(format!("request failed: {err}"), err);
        assert_eq!(e.transport_kind(), Some(TransportKind::ConnectionRefused));
        assert!(e.to_string().contains("connection refused"), "{e}");

        let ws = tokio_tungstenite::connect_async("ws://127.0.0.1:1/v1/ws")
            .await
            .expect_err("nothing listens on port 1");
        let e = Error::transport("connecting failed", ws);
        assert_eq!(e.transport_kind(), Some(TransportKind::ConnectionRefused));
    }
}
