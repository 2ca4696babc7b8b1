//! The HTTP surface: the router with every REST route and `GET /v1/ws`, the fallbacks that keep
//! every failure in the contract's JSON error format, and the cross-cutting layers (body limit,
//! request timeout, panic catching, metrics, tracing), and the web client at `/` (`web.rs`).

mod chats;
mod messages;
mod ops;
mod users;
mod web;

use crate::error::{error_response, ApiError};
use crate::state::AppState;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, patch, post, put};
use axum::Router;
use chat_core::{Error, ErrorCode};
use futures::FutureExt as _;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

/// Every route of the contract, with its layers.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/users", post(users::register).get(users::lookup))
        .route("/v1/users/me", get(users::me).patch(users::update_me))
        .route("/v1/users/{user_id}", get(users::show))
        .route("/v1/presence", get(users::presence))
        .route("/v1/direct", post(chats::direct))
        .route("/v1/sessions", post(users::login))
        .route("/v1/sessions/current", delete(users::logout))
        .route("/v1/chats", post(chats::create).get(chats::list))
        .route("/v1/chats/{chat_id}", get(chats::show).patch(chats::rename))
        .route("/v1/chats/{chat_id}/read", post(chats::read))
        .route("/v1/chats/{chat_id}/receipts", get(chats::receipts))
        .route(
            "/v1/chats/{chat_id}/members/{user_id}/role",
            put(chats::set_role),
        )
        .route("/v1/chats/{chat_id}/members", post(chats::add_member))
        .route(
            "/v1/chats/{chat_id}/members/{user_id}",
            delete(chats::remove_member),
        )
        .route(
            "/v1/chats/{chat_id}/messages/{seq}",
            patch(messages::edit).delete(messages::delete),
        )
        .route(
            "/v1/chats/{chat_id}/messages/{seq}/reactions/{emoji}",
            put(messages::react).delete(messages::unreact),
        )
        .route("/v1/chats/{chat_id}/changes", get(messages::changes))
        .route("/v1/send", post(messages::send))
        .route("/v1/fetch", get(messages::fetch))
        .route("/v1/search", get(messages::search))
        .route("/v1/ws", get(crate::ws::upgrade))
        .route("/v1/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .route("/", get(web::index))
        .route("/app.js", get(web::app_js))
        .route("/app.css", get(web::app_css))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.config.abuse.request_timeout,
            request_timeout,
        ))
        .layer(middleware::from_fn(catch_panic))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .layer(TraceLayer::new_for_http())
        .layer(cors(&state.config.cors_origins))
        .with_state(state)
}

/// CORS for the configured origins: a preflight from one of them is answered (methods, the
/// headers the API reads, cached for 10 minutes); any other origin gets no CORS headers, so
/// browsers keep its pages out. Outermost, so preflights never reach authentication.
fn cors(origins: &[String]) -> tower::util::Either<CorsLayer, tower::layer::util::Identity> {
    use axum::http::{header, HeaderValue, Method};
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if allowed.is_empty() {
        return tower::util::Either::Right(tower::layer::util::Identity::new());
    }
    tower::util::Either::Left(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(allowed))
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PATCH,
                Method::PUT,
                Method::DELETE,
            ])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([header::RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    )
}

async fn not_found() -> ApiError {
    Error::NotFound("no such route".into()).into()
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Other("method_not_allowed".into()),
        "method not allowed on this route".into(),
    )
}

/// Answers 408 `request_timeout` when a request (reading its body included) takes longer than
/// the configured limit, so a client trickling a body cannot hold a connection forever. A
/// WebSocket upgrade answers at once; the socket's own idle timeout covers it afterwards.
async fn request_timeout(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error_response(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::Other("request_timeout".into()),
            "the request took too long".into(),
        ),
    }
}

/// Turns a panicking handler into a 500 `internal` answer instead of a dropped connection.
/// Handlers are written not to panic; this is the safety net.
async fn catch_panic(request: Request, next: Next) -> Response {
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %what, "request handler panicked");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error".into(),
            )
        }
    }
}
