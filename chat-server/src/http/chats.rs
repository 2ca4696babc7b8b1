//! REST handlers for chats and their members: each is an extractor and a status code around
//! one operation of `ops/`.

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract::{JsonBody, PathParams};
use crate::ops;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chat_core::protocol::{
    AddMemberRequest, ChatList, ChatView, CreateChatRequest, DirectRequest, ReadRequest, ReadState,
    ReceiptsResponse, RenameChatRequest, RoleView, SetRoleRequest,
};
use chat_core::{ChatId, UserId};
use std::sync::Arc;

/// `POST /v1/chats`: 201 with the new chat.
pub(crate) async fn create(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateChatRequest>,
) -> ApiResult<(StatusCode, Json<ChatView>)> {
    let view = ops::create_chat::run(&st, caller.user_id, req).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// `GET /v1/chats`.
pub(crate) async fn list(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<Json<ChatList>> {
    Ok(Json(ops::list_chats::run(&st, caller.user_id).await?))
}

/// `GET /v1/chats/{chat_id}`.
pub(crate) async fn show(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    PathParams(chat_id): PathParams<ChatId>,
) -> ApiResult<Json<ChatView>> {
    Ok(Json(
        ops::show_chat::run(&st, caller.user_id, chat_id).await?,
    ))
}

/// `POST /v1/chats/{chat_id}/members`: 204.
pub(crate) async fn add_member(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    PathParams(chat_id): PathParams<ChatId>,
    JsonBody(req): JsonBody<AddMemberRequest>,
) -> ApiResult<StatusCode> {
    ops::add_member::run(&st, caller.user_id, chat_id, req.user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/chats/{chat_id}/members/{user_id}`: 204.
pub(crate) async fn remove_member(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    PathParams((chat_id, user_id)): PathParams<(ChatId, UserId)>,
) -> ApiResult<StatusCode> {
    ops::remove_member::run(&st, caller.user_id, chat_id, user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH /v1/chats/{chat_id}`: 200 with the renamed chat.
pub(crate) async fn rename(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    PathParams(chat_id): PathParams<ChatId>,
    JsonBody(req): JsonBody<RenameChatRequest>,
) -> ApiResult<Json<ChatView>> {
    Ok(Json(
        ops::manage::rename(&st, caller.user_id, chat_id, &req.chat_name).await?,
    ))
}

/// `PUT /v1/chats/{chat_id}/members/{user_id}/role`: 200.
pub(crate) async fn set_role(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    PathParams((chat_id, user_id)): PathParams<(ChatId, UserId)>,
    JsonBody(req): JsonBody<SetRoleRequest>,
) -> ApiResult<Json<RoleView>> {
    Ok(Json(
        ops::manage::set_role(&st, caller.user_id, chat_id, user_id, req.role).await?,
    ))
}

/// `POST /v1/chats/{chat_id}/read`: 200 with the caller's marker.
pub(crate) async fn read(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    PathParams(chat_id): PathParams<ChatId>,
    JsonBody(req): JsonBody<ReadRequest>,
) -> ApiResult<Json<ReadState>> {
    Ok(Json(
        ops::read::mark(&st, caller.user_id, chat_id, req.seq).await?,
    ))
}

/// `GET /v1/chats/{chat_id}/receipts`.
pub(crate) async fn receipts(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    PathParams(chat_id): PathParams<ChatId>,
) -> ApiResult<Json<ReceiptsResponse>> {
    Ok(Json(
        ops::read::receipts(&st, caller.user_id, chat_id).await?,
    ))
}

/// `POST /v1/direct`: 201 when created, 200 when it existed.
pub(crate) async fn direct(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    JsonBody(req): JsonBody<DirectRequest>,
) -> ApiResult<(StatusCode, Json<ChatView>)> {
    let (view, created) = ops::direct::run(&st, caller.user_id, req.user_id).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}
