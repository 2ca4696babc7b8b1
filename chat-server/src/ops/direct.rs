//! Direct chats (`POST /v1/direct`): the one chat of two people, the same for both, created by
//! whoever asks first (the store's unique key on the ordered pair settles a race).

use super::publish;
use super::show_chat::view;
use crate::state::AppState;
use chat_core::ids::now_millis;
use chat_core::protocol::ChatView;
use chat_core::{Error, Event, Result, Topic, UserId};

/// The direct chat of the caller and `other`, and whether this call created it.
pub(crate) async fn run(st: &AppState, caller: UserId, other: UserId) -> Result<(ChatView, bool)> {
    if other == caller {
        return Err(Error::InvalidArgument(
            "a direct chat needs another person".into(),
        ));
    }
    let names = st.metadata.users(&[caller, other]).await?;
    let name_of = |u: UserId| {
        names
            .iter()
            .find(|x| x.user_id == u)
            .map(|x| x.display_name.clone())
    };
    let Some(theirs) = name_of(other) else {
        return Err(Error::NotFound(format!("user {other}")));
    };
    let mine = name_of(caller).unwrap_or_default();
    // The stored name is what clients that know no better show; apps show the other person.
    let chat_name: String = format!("{mine} & {theirs}")
        .chars()
        .take(st.config.limits.max_chat_name_chars)
        .collect();
    let (chat, created) = st
        .metadata
        .direct_chat(caller, other, &chat_name, now_millis())
        .await?;
    let view = view(st, chat.chat_id).await?;
    if created {
        let event = Event::ChatUpdated { chat: view.clone() };
        publish(st, Topic::User(caller), event.clone()).await;
        publish(st, Topic::User(other), event).await;
    }
    Ok((view, created))
}
