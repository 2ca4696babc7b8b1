//! Add a member (`POST /v1/chats/{chat_id}/members`): the owner or an admin adds someone; the
//! chat's members and the new member's connections hear of it.

use super::show_chat::view_to_publish;
use super::{publish, require_member};
use crate::state::AppState;
use chat_core::{ChatId, Error, Event, Member, Result, Role, Topic, UserId};

/// Adds `user` to the chat as a member. Adding someone who is already in it changes nothing.
pub(crate) async fn run(
    st: &AppState,
    caller: UserId,
    chat_id: ChatId,
    user: UserId,
) -> Result<()> {
    let role = require_member(st, chat_id, caller).await?;
    // A direct chat has exactly its two people, whoever asks (the store refuses it too).
    if st.metadata.chat(chat_id).await?.map(|c| c.kind) == Some(chat_core::ChatKind::Direct) {
        return Err(Error::Conflict(
            "members cannot be added to a direct chat".into(),
        ));
    }
    if !role.can_manage_members() {
        return Err(Error::Forbidden(
            "only the owner or an admin may add members".into(),
        ));
    }
    let added = st
        .metadata
        .add_member(
            chat_id,
            Member {
                user_id: user,
                role: Role::Member,
            },
            st.config.limits.max_members,
        )
        .await?;
    if added {
        if let Some(view) = view_to_publish(st, chat_id).await {
            // The chat's topic first: existing members' nodes deliver it there, and the added
            // user's node delivers it from the user's topic only to a user new to the chat.
            let updated = Event::ChatUpdated { chat: view };
            publish(st, Topic::Chat(chat_id), updated.clone()).await;
            publish(st, Topic::User(user), updated).await;
        }
    }
    Ok(())
}
