//! REST handlers for messages: `POST /v1/send`, `GET /v1/fetch`, `GET /v1/search`, and the changes to a stored
//! message (edit, delete, reactions) with the chat's change feed.

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract::{ClientAddr, JsonBody, PathParams, QueryParams};
use crate::ops;
use crate::ops::change::{ChangeInput, ChangesInput};
use crate::ops::fetch::FetchInput;
use crate::ops::search::SearchInput;
use crate::ops::send::SendInput;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chat_core::protocol::{
    ChangesResponse, EditRequest, FetchResponse, SearchResponse, SendRequest,
};
use chat_core::{ChatId, Error, Message, Seq};
use std::sync::Arc;

/// `POST /v1/send`: 201 with the stored message, or 200 with the first one for a retry.
pub(crate) async fn send(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    JsonBody(req): JsonBody<SendRequest>,
) -> ApiResult<(StatusCode, Json<Message>)> {
    if req.user_id.is_some_and(|u| u != caller.user_id) {
        return Err(Error::Forbidden("user_id must be the caller's own".into()).into());
    }
    let appended = ops::send::run(
        &st,
        caller.user_id,
        SendInput {
            chat_id: req.chat_id,
            msg_text: req.msg_text,
            timestamp: req.timestamp,
            client_msg_id: req.client_msg_id,
            reply_to_seq: req.reply_to_seq,
            client_addr: addr,
        },
    )
    .await?;
    let status = if appended.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(appended.message)))
}

/// `GET /v1/fetch?chat_id&(page_token|after_seq)&limit`.
pub(crate) async fn fetch(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    QueryParams(q): QueryParams,
) -> ApiResult<Json<FetchResponse>> {
    let input = FetchInput::parse(&q, &st.config.limits)?;
    Ok(Json(ops::fetch::run(&st, caller.user_id, input).await?))
}

/// `GET /v1/search?q&chat_id&limit&page_token`: 200 with one page of results, newest first.
pub(crate) async fn search(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    QueryParams(q): QueryParams,
) -> ApiResult<Json<SearchResponse>> {
    let input = SearchInput::parse(&q, &st.config.limits)?;
    Ok(Json(ops::search::run(&st, caller.user_id, input).await?))
}

/// `PATCH /v1/chats/{chat_id}/messages/{seq}`: 200 with the edited message.
pub(crate) async fn edit(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    PathParams((chat_id, seq)): PathParams<(ChatId, Seq)>,
    JsonBody(req): JsonBody<EditRequest>,
) -> ApiResult<Json<Message>> {
    let input = ChangeInput::Edit(req.msg_text);
    Ok(Json(
        ops::change::run(&st, caller.user_id, chat_id, seq, input).await?,
    ))
}

/// `DELETE /v1/chats/{chat_id}/messages/{seq}`: 200 with the tombstone.
pub(crate) async fn delete(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    PathParams((chat_id, seq)): PathParams<(ChatId, Seq)>,
) -> ApiResult<Json<Message>> {
    let input = ChangeInput::Delete;
    Ok(Json(
        ops::change::run(&st, caller.user_id, chat_id, seq, input).await?,
    ))
}

/// `PUT /v1/chats/{chat_id}/messages/{seq}/reactions/{emoji}`: 200 with the message.
pub(crate) async fn react(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    PathParams((chat_id, seq, emoji)): PathParams<(ChatId, Seq, String)>,
) -> ApiResult<Json<Message>> {
    let input = ChangeInput::React(emoji, true);
    Ok(Json(
        ops::change::run(&st, caller.user_id, chat_id, seq, input).await?,
    ))
}

/// `DELETE /v1/chats/{chat_id}/messages/{seq}/reactions/{emoji}`: 200 with the message.
pub(crate) async fn unreact(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    PathParams((chat_id, seq, emoji)): PathParams<(ChatId, Seq, String)>,
) -> ApiResult<Json<Message>> {
    let input = ChangeInput::React(emoji, false);
    Ok(Json(
        ops::change::run(&st, caller.user_id, chat_id, seq, input).await?,
    ))
}

/// `GET /v1/chats/{chat_id}/changes?after_rev&limit`: one page of the change feed.
pub(crate) async fn changes(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    PathParams(chat_id): PathParams<ChatId>,
    QueryParams(q): QueryParams,
) -> ApiResult<Json<ChangesResponse>> {
    let input = ChangesInput::parse(&q, &st.config.limits)?;
    Ok(Json(
        ops::change::feed(&st, caller.user_id, chat_id, input).await?,
    ))
}
