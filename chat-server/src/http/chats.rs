//! Chats and their members: create, list, show, add and remove members. Membership changes are
//! published so that live connections learn of them on every node.

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::http::extract::{JsonBody, PathParams};
use crate::send::require_member;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chat_core::ids::now_millis;
use chat_core::protocol::{AddMemberRequest, ChatList, ChatSummary, ChatView, CreateChatRequest};
use chat_core::{ChatId, Error, Event, Member, NewChat, Result, Role, Topic, UserId};
use std::collections::BTreeSet;
use std::sync::Arc;

/// `POST /v1/chats`: the creator becomes the owner.
pub(crate) async fn create(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateChatRequest>,
) -> ApiResult<(StatusCode, Json<ChatView>)> {
    let limits = &st.config.limits;
    let chat_name = limits.chat_name(&req.chat_name)?;
    let others: BTreeSet<UserId> = req
        .member_ids
        .into_iter()
        .filter(|&u| u != caller.user_id)
        .collect();
    if others.len() + 1 > limits.max_members {
        return Err(Error::InvalidArgument(format!(
            "a chat has at most {} members",
            limits.max_members
        ))
        .into());
    }
    let (chat, members) = st
        .metadata
        .create_chat(NewChat {
            chat_name,
            owner_id: caller.user_id,
            member_ids: others.into_iter().collect(),
            created_at: now_millis(),
        })
        .await?;
    let mut member_ids: Vec<UserId> = members.iter().map(|m| m.user_id).collect();
    member_ids.sort();
    let view = ChatView {
        chat_id: chat.chat_id,
        chat_name: chat.chat_name,
        member_ids,
        last_seq: chat_core::Seq::ZERO,
        owner_id: Some(chat.owner_id),
        created_at: Some(chat.created_at),
    };
    // Every member's live connections (the creator's other devices included) learn of it.
    for &u in &view.member_ids {
        publish(
            &st,
            Topic::User(u),
            Event::ChatUpdated { chat: view.clone() },
        )
        .await;
    }
    Ok((StatusCode::CREATED, Json(view)))
}

/// `GET /v1/chats`: the caller's chats with their `last_seq`.
pub(crate) async fn list(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<Json<ChatList>> {
    let chats = st.metadata.chats_of_user(caller.user_id).await?;
    let ids: Vec<ChatId> = chats.iter().map(|(c, _)| c.chat_id).collect();
    let seqs = st.messages.last_seqs(&ids).await?;
    let chats = chats
        .into_iter()
        .zip(seqs)
        .map(|((chat, role), last_seq)| ChatSummary {
            chat_id: chat.chat_id,
            chat_name: chat.chat_name,
            last_seq,
            role: Some(role),
        })
        .collect();
    Ok(Json(ChatList { chats }))
}

/// `GET /v1/chats/{chat_id}`: members only.
pub(crate) async fn show(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    PathParams(chat_id): PathParams<ChatId>,
) -> ApiResult<Json<ChatView>> {
    require_member(&st, chat_id, caller.user_id).await?;
    Ok(Json(chat_view(&st, chat_id).await?))
}

/// `POST /v1/chats/{chat_id}/members`: the owner or an admin adds someone.
pub(crate) async fn add_member(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    PathParams(chat_id): PathParams<ChatId>,
    JsonBody(req): JsonBody<AddMemberRequest>,
) -> ApiResult<StatusCode> {
    let role = require_member(&st, chat_id, caller.user_id).await?;
    if !role.can_manage_members() {
        return Err(Error::Forbidden("only the owner or an admin may add members".into()).into());
    }
    let added = st
        .metadata
        .add_member(
            chat_id,
            Member {
                user_id: req.user_id,
                role: Role::Member,
            },
            st.config.limits.max_members,
        )
        .await?;
    if added {
        if let Some(view) = view_to_publish(&st, chat_id).await {
            // The chat's topic first: existing members' nodes deliver it there, and the added
            // user's node delivers it from the user's topic only to a user new to the chat.
            let updated = Event::ChatUpdated { chat: view };
            publish(&st, Topic::Chat(chat_id), updated.clone()).await;
            publish(&st, Topic::User(req.user_id), updated).await;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/chats/{chat_id}/members/{user_id}`: anyone may leave; the owner or an admin
/// removes others, but an admin cannot remove the owner.
pub(crate) async fn remove_member(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    PathParams((chat_id, user_id)): PathParams<(ChatId, UserId)>,
) -> ApiResult<StatusCode> {
    let role = require_member(&st, chat_id, caller.user_id).await?;
    if user_id != caller.user_id {
        if !role.can_manage_members() {
            return Err(
                Error::Forbidden("only the owner or an admin may remove others".into()).into(),
            );
        }
        match st.metadata.role(chat_id, user_id).await? {
            None => return Err(Error::NotFound(format!("user {user_id} in chat {chat_id}")).into()),
            Some(Role::Owner) if role != Role::Owner => {
                return Err(Error::Forbidden("an admin cannot remove the owner".into()).into())
            }
            Some(_) => {}
        }
    }
    if !st.metadata.remove_member(chat_id, user_id).await? {
        return Err(Error::NotFound(format!("user {user_id} in chat {chat_id}")).into());
    }
    let removed = Event::RemovedFromChat { chat_id, user_id };
    publish(&st, Topic::User(user_id), removed.clone()).await;
    publish(&st, Topic::Chat(chat_id), removed).await;
    if let Some(view) = view_to_publish(&st, chat_id).await {
        publish(&st, Topic::Chat(chat_id), Event::ChatUpdated { chat: view }).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The chat with its members and `last_seq`.
async fn chat_view(st: &AppState, chat_id: ChatId) -> Result<ChatView> {
    let chat = st
        .metadata
        .chat(chat_id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("chat {chat_id}")))?;
    let members = st.metadata.members(chat_id).await?;
    let last_seq = st.messages.last_seq(chat_id).await?;
    Ok(ChatView {
        chat_id,
        chat_name: chat.chat_name,
        member_ids: members.iter().map(|m| m.user_id).collect(),
        last_seq,
        owner_id: Some(chat.owner_id),
        created_at: Some(chat.created_at),
    })
}

/// The chat as it is after a committed membership change, for the event. The change already
/// succeeded, so failing to read it back only costs the live notification (logged); the request
/// still succeeds.
async fn view_to_publish(st: &AppState, chat_id: ChatId) -> Option<ChatView> {
    match chat_view(st, chat_id).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(%chat_id, error = %e, "could not read the chat to publish its update");
            None
        }
    }
}

/// Publishes a membership event. The change is committed; a lost event only delays what live
/// connections see until they reconnect, so it is logged, not returned.
async fn publish(st: &AppState, topic: Topic, event: Event) {
    if let Err(e) = st.broker.publish(topic, &event).await {
        tracing::warn!(?topic, error = %e, "publishing a membership event failed");
    }
}
