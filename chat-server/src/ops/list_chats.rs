//! List the caller's chats (`GET /v1/chats`) with each chat's `last_seq` and the caller's role.

use crate::state::AppState;
use chat_core::protocol::{ChatList, ChatSummary};
use chat_core::{ChatId, Result, UserId};

/// The caller's chats, ordered by chat id.
pub(crate) async fn run(st: &AppState, caller: UserId) -> Result<ChatList> {
    let chats = st.metadata.chats_of_user(caller).await?;
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
    Ok(ChatList { chats })
}
