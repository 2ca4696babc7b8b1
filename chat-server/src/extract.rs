//! Request extractors shared by the REST handlers and the WebSocket upgrade. They answer
//! failures in the contract's error format instead of axum's plain-text rejections: JSON bodies,
//! path and query parameters, and the bearer token; plus the client's address for the
//! per-address limits.

use crate::auth::{authenticate, bearer, Caller};
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use chat_core::Error;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// A JSON body: wrong content type, malformed JSON, wrong types and missing fields are
/// `bad_request`; a body over the limit is `payload_too_large`.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(Error::BadRequest("expected Content-Type: application/json".into()).into());
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")).into())
    }
}

fn is_json(value: Option<&header::HeaderValue>) -> bool {
    let Some(v) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

fn body_rejection(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::PayloadTooLarge("request body is over the size limit".into()).into()
    } else {
        Error::BadRequest(format!("could not read the body: {}", r.body_text())).into()
    }
}

/// Path parameters; a value of the wrong type (`/v1/chats/abc`) is `bad_request`.
pub(crate) struct PathParams<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for PathParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| PathParams(t))
            .map_err(|e| Error::BadRequest(format!("bad path parameter: {}", e.body_text())).into())
    }
}

/// The query string as raw key/value strings; handlers parse each value so they can tell a
/// malformed id (`bad_request`) from an out-of-range value (`invalid_argument`).
pub(crate) struct QueryParams(pub(crate) HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| QueryParams(q))
            .map_err(|e| Error::BadRequest(format!("bad query string: {}", e.body_text())).into())
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or_else(|| {
                Error::Unauthenticated("missing Authorization: Bearer <token> header".into())
            })?;
        Ok(authenticate(state.metadata.as_ref(), token).await?)
    }
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the nearest
/// untrusted address in `X-Forwarded-For`. `None` when the request came without a socket.
pub(crate) struct ClientAddr(pub(crate) Option<IpAddr>);

impl FromRequestParts<Arc<AppState>> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Infallible> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip());
        Ok(ClientAddr(peer.map(|p| {
            client_ip(p, &parts.headers, &state.config.abuse.trusted_proxies)
        })))
    }
}

/// Most header values a forwarded chain is read from; a longer chain is someone stuffing it.
const MAX_FORWARDED_HOPS: usize = 32;

/// The address a request is limited under. `X-Forwarded-For` is believed only from a trusted
/// proxy, and read from the right (the end the trusted proxies appended) to the first address
/// that is not itself a trusted proxy: anything further left was written by the client and may
/// be forged.
fn client_ip(peer: IpAddr, headers: &axum::http::HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.contains(&normalize(*ip));
    if !is_trusted(&peer) {
        return normalize(peer);
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev().take(MAX_FORWARDED_HOPS) {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => continue,
            Ok(ip) => return normalize(ip),
            // Garbage where an address should be: stop believing the chain here.
            Err(_) => break,
        }
    }
    normalize(peer)
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry, so a dual-stack listener
/// cannot give one client two buckets.
fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, 203.0.113.7"),
        );
        // Not trusted: the header is ignored.
        assert_eq!(client_ip(proxy, &h, &[]), proxy);
        // Trusted: the rightmost untrusted hop (the client's forged "1.2.3.4" is left of it).
        assert_eq!(client_ip(proxy, &h, &[proxy]), client);
        // A chain of two trusted proxies.
        let inner: IpAddr = "10.0.0.2".parse().unwrap();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.7, 10.0.0.2"),
        );
        assert_eq!(client_ip(proxy, &h, &[proxy, inner]), client);
        // Garbage or nothing: the proxy itself.
        h.insert("x-forwarded-for", HeaderValue::from_static("nonsense"));
        assert_eq!(client_ip(proxy, &h, &[proxy]), proxy);
        assert_eq!(
            client_ip(proxy, &axum::http::HeaderMap::new(), &[proxy]),
            proxy
        );
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_ip(mapped, &h, &[]), proxy);
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(is_json(Some(&HeaderValue::from_static(ok))), "{ok}");
        }
        for bad in ["text/plain", "application/x-www-form-urlencoded", "json"] {
            assert!(!is_json(Some(&HeaderValue::from_static(bad))), "{bad}");
        }
        assert!(!is_json(None));
    }
}
