//! REST handlers for users and sessions: register, log in, log out, who am I.

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract::{ClientAddr, JsonBody, PathParams, QueryParams};
use crate::ops;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chat_core::protocol::{
    LoginRequest, PresenceResponse, PublicUser, RegisterRequest, SessionView, UpdateMeRequest,
    UserView,
};
use chat_core::UserId;
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

/// `PATCH /v1/users/me`: 200 with the user.
pub(crate) async fn update_me(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    JsonBody(req): JsonBody<UpdateMeRequest>,
) -> ApiResult<Json<UserView>> {
    let user = ops::people::set_display_name(&st, caller.user_id, &req.display_name).await?;
    Ok(Json(user.into()))
}

/// `GET /v1/users/{user_id}`.
pub(crate) async fn show(
    State(st): State<Arc<AppState>>,
    _caller: Caller,
    PathParams(user_id): PathParams<UserId>,
) -> ApiResult<Json<PublicUser>> {
    Ok(Json(ops::people::by_id(&st, user_id).await?))
}

/// `GET /v1/users?email=..`.
pub(crate) async fn lookup(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    QueryParams(q): QueryParams,
) -> ApiResult<Json<PublicUser>> {
    let email = q.get("email").map(String::as_str);
    Ok(Json(
        ops::people::by_email(&st, caller.user_id, addr, email).await?,
    ))
}

/// `GET /v1/presence?user_ids=1,2`.
pub(crate) async fn presence(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    QueryParams(q): QueryParams,
) -> ApiResult<Json<PresenceResponse>> {
    let ids = ops::presence::parse_ids(q.get("user_ids").map(String::as_str))?;
    Ok(Json(ops::presence::run(&st, caller.user_id, ids).await?))
}
