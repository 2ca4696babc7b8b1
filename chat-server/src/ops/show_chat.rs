//! Show one chat with its members and `last_seq` (`GET /v1/chats/{chat_id}`), members only;
//! also the view that membership events carry.

use crate::state::AppState;
use chat_core::protocol::{ChatView, MemberView};
use chat_core::{Chat, ChatId, Error, Member, Result, Seq, UserId};
use std::collections::HashMap;

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
    let (members, last_seq) =
        tokio::join!(st.metadata.members(chat_id), st.messages.last_seq(chat_id));
    assemble(st, chat, members?, last_seq?).await
}

/// The view of a chat with these members: their display names are read in one batch.
pub(crate) async fn assemble(
    st: &AppState,
    chat: Chat,
    mut members: Vec<Member>,
    last_seq: Seq,
) -> Result<ChatView> {
    members.sort_by_key(|m| m.user_id);
    let ids: Vec<UserId> = members.iter().map(|m| m.user_id).collect();
    let names: HashMap<UserId, String> = st
        .metadata
        .users(&ids)
        .await?
        .into_iter()
        .map(|u| (u.user_id, u.display_name))
        .collect();
    let mut view = ChatView::new(chat.chat_id, chat.chat_name, ids, last_seq);
    view.owner_id = Some(chat.owner_id);
    view.created_at = Some(chat.created_at);
    view.kind = chat.kind;
    view.members = members
        .into_iter()
        .map(|m| {
            let name = names.get(&m.user_id).cloned().unwrap_or_default();
            MemberView::new(m.user_id, name, m.role)
        })
        .collect();
    Ok(view)
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
