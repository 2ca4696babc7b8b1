//! Remove a member (`DELETE /v1/chats/{chat_id}/members/{user_id}`): anyone may leave; the
//! owner or an admin removes others, but an admin cannot remove the owner. A direct chat has
//! exactly its two people: nobody leaves it or is removed (409), so `POST /v1/direct` always
//! finds both in it.

use super::show_chat::view_to_publish;
use super::{publish, require_member};
use crate::state::AppState;
use chat_core::{ChatId, Error, Event, Result, Role, Topic, UserId};

/// Takes `user` out of the chat and tells them, the chat's members and every node.
pub(crate) async fn run(
    st: &AppState,
    caller: UserId,
    chat_id: ChatId,
    user: UserId,
) -> Result<()> {
    let role = require_member(st, chat_id, caller).await?;
    let kind = st.metadata.chat(chat_id).await?.map(|c| c.kind);
    if kind == Some(chat_core::ChatKind::Direct) {
        return Err(Error::Conflict(
            "a direct chat has exactly its two people; nobody leaves it".into(),
        ));
    }
    if user != caller {
        if !role.can_manage_members() {
            return Err(Error::Forbidden(
                "only the owner or an admin may remove others".into(),
            ));
        }
        match st.metadata.role(chat_id, user).await? {
            None => return Err(Error::NotFound(format!("user {user} in chat {chat_id}"))),
            Some(Role::Owner) if role != Role::Owner => {
                return Err(Error::Forbidden("an admin cannot remove the owner".into()))
            }
            Some(_) => {}
        }
    }
    if !st.metadata.remove_member(chat_id, user).await? {
        return Err(Error::NotFound(format!("user {user} in chat {chat_id}")));
    }
    let removed = Event::RemovedFromChat {
        chat_id,
        user_id: user,
    };
    publish(st, Topic::User(user), removed.clone()).await;
    publish(st, Topic::Chat(chat_id), removed).await;
    if let Some(view) = view_to_publish(st, chat_id).await {
        publish(st, Topic::Chat(chat_id), Event::ChatUpdated { chat: view }).await;
    }
    Ok(())
}
