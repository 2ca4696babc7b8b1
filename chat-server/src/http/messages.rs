//! REST handlers for messages: `POST /v1/send` and `GET /v1/fetch`.

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract::{ClientAddr, JsonBody, QueryParams};
use crate::ops;
use crate::ops::fetch::FetchInput;
use crate::ops::send::SendInput;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chat_core::protocol::{FetchResponse, SendRequest};
use chat_core::{Error, Message};
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
