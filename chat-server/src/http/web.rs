//! The web client: three static files embedded in the binary (`chat-server/web/`), served at
//! `/`, `/app.js` and `/app.css` with a strict Content-Security-Policy (no inline script, no
//! other origin), `nosniff`, no referrer, and an ETag so a reload costs a 304.
//!
//! The page talks to the same server it came from (REST with a bearer token, the WebSocket
//! with `?token=`), so it needs no CORS. See `SECURITY.md` for where it keeps the token.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// The page's policy: scripts, styles, connections (REST and `ws:`/`wss:` to this host) and
/// images only from this origin; no plugins, no framing, no `<base>`, no form posts elsewhere.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; manifest-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
}

const INDEX: Asset = Asset {
    body: include_str!("../../web/index.html"),
    content_type: "text/html; charset=utf-8",
};
const APP_JS: Asset = Asset {
    body: include_str!("../../web/app.js"),
    content_type: "text/javascript; charset=utf-8",
};
const APP_CSS: Asset = Asset {
    body: include_str!("../../web/app.css"),
    content_type: "text/css; charset=utf-8",
};

/// `GET /`: the page.
pub(crate) async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, etag_of(0, &INDEX), &headers)
}

/// `GET /app.js`: the application (an ES module).
pub(crate) async fn app_js(headers: HeaderMap) -> Response {
    serve(&APP_JS, etag_of(1, &APP_JS), &headers)
}

/// `GET /app.css`: the styles.
pub(crate) async fn app_css(headers: HeaderMap) -> Response {
    serve(&APP_CSS, etag_of(2, &APP_CSS), &headers)
}

/// The strong ETag of an asset: a hash of its bytes, computed once.
fn etag_of(slot: usize, asset: &Asset) -> &'static str {
    static TAGS: [OnceLock<String>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    TAGS[slot].get_or_init(|| {
        let digest = Sha256::digest(asset.body.as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("\"{hex}\"")
    })
}

fn serve(asset: &Asset, etag: &'static str, request: &HeaderMap) -> Response {
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, asset.body).into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::ETAG, HeaderValue::from_static(etag));
    // Revalidate every time: a new server version must not run an old script.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
