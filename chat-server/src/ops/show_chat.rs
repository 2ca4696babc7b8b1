//! Show one chat with its members and `last_seq` (`GET /v1/chats/{chat_id}`), members only;
//! also the view that membership events carry.

use crate::state::AppState;
use chat_core::protocol::ChatView;
use chat_core::{ChatId, Error, Result, UserId};

/// The chat, for a member.
pub(crate) async fn run(st: &AppState, caller: UserId, chat_id: ChatId) -> Result<ChatView> {
    super::require_member(st, chat_id, caller).await?;
    view(st, chat_id).await
}

/// The chat with its members and `last_seq`.
pub(crate) async fn view(st: &AppState, chat_id: ChatId) -> Result<ChatView> {
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
/// succeeded, so failing to read it back only costs the live notification (logged); the
/// request still succeeds.
pub(crate) async fn view_to_publish(st: &AppState, chat_id: ChatId) -> Option<ChatView> {
    match view(st, chat_id).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(%chat_id, error = %e, "could not read the chat to publish its update");
            None
        }
    }
}
