//! Chat management: rename a chat (`PATCH /v1/chats/{chat_id}`, owner or admin) and grant or
//! take back the admin role (`PUT /v1/chats/{chat_id}/members/{user_id}/role`, owner only).
//! Members hear `chat_updated` either way.

use super::show_chat::{view, view_to_publish};
use super::{publish, require_member};
use crate::state::AppState;
use chat_core::protocol::{ChatView, RoleView};
use chat_core::{ChatId, Error, Event, Result, Role, Topic, UserId};

/// Renames the chat.
pub(crate) async fn rename(
    st: &AppState,
    caller: UserId,
    chat_id: ChatId,
    name: &str,
) -> Result<ChatView> {
    let role = require_member(st, chat_id, caller).await?;
    if !role.can_manage_members() {
        return Err(Error::Forbidden(
            "only the owner or an admin may rename the chat".into(),
        ));
    }
    let name = st.config.limits.chat_name(name)?;
    st.metadata
        .rename_chat(chat_id, &name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("chat {chat_id}")))?;
    let chat = view(st, chat_id).await?;
    publish(
        st,
        Topic::Chat(chat_id),
        Event::ChatUpdated { chat: chat.clone() },
    )
    .await;
    Ok(chat)
}

/// Gives `user` the role `admin` or `member`.
pub(crate) async fn set_role(
    st: &AppState,
    caller: UserId,
    chat_id: ChatId,
    user: UserId,
    role: Role,
) -> Result<RoleView> {
    let caller_role = require_member(st, chat_id, caller).await?;
    if role == Role::Owner {
        return Err(Error::InvalidArgument(
            "role must be \"admin\" or \"member\"".into(),
        ));
    }
    if caller_role != Role::Owner {
        return Err(Error::Forbidden("only the owner may change roles".into()));
    }
    match st.metadata.role(chat_id, user).await? {
        None => {
            return Err(Error::NotFound(format!(
                "user {user} is not a member of chat {chat_id}"
            )))
        }
        Some(Role::Owner) => {
            return Err(Error::Conflict("the owner's role cannot be changed".into()))
        }
        Some(current) if current == role => return Ok(RoleView::new(chat_id, user, role)),
        Some(_) => {}
    }
    if !st.metadata.set_role(chat_id, user, role).await? {
        return Err(Error::NotFound(format!(
            "user {user} is not a member of chat {chat_id}"
        )));
    }
    if let Some(chat) = view_to_publish(st, chat_id).await {
        publish(st, Topic::Chat(chat_id), Event::ChatUpdated { chat }).await;
    }
    Ok(RoleView::new(chat_id, user, role))
}
