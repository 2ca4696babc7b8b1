//! REST handlers for users and sessions: register, log in, log out, who am I.

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract::{ClientAddr, JsonBody};
use crate::ops;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chat_core::protocol::{LoginRequest, RegisterRequest, SessionView, UserView};
use std::sync::Arc;

/// `POST /v1/users`: 201 with the user.
pub(crate) async fn register(
    State(st): State<Arc<AppState>>,
    ClientAddr(addr): ClientAddr,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let user = ops::register::run(&st, addr, req).await?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// `POST /v1/sessions`.
pub(crate) async fn login(
    State(st): State<Arc<AppState>>,
    ClientAddr(addr): ClientAddr,
    JsonBody(req): JsonBody<LoginRequest>,
) -> ApiResult<Json<SessionView>> {
    Ok(Json(ops::login::run(&st, addr, req).await?))
}

/// `DELETE /v1/sessions/current`: 204.
pub(crate) async fn logout(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<StatusCode> {
    ops::logout::run(&st, &caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/users/me`.
pub(crate) async fn me(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<Json<UserView>> {
    Ok(Json(ops::me::run(&st, caller.user_id).await?.into()))
}
