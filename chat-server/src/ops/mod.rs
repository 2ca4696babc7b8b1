//! The operations layer: one module per operation, shared by REST (`http/`) and the WebSocket
//! (`ws/`), the way mini-redis keeps one file per command.
//!
//! Each operation takes the caller and its input, checks limits and authorization, calls the
//! stores, publishes what other nodes and connections must hear, and returns the answer as the
//! contract's types (`chat_core::protocol`). The transports only parse and encode: an HTTP
//! handler is an extractor and a status code around one call here, and a WebSocket frame is
//! dispatched to the same call (`ws::frames`). A new operation is one new file here plus its
//! route or frame.
//!
//! **Invariant:** nothing is published before the store returned (see `send`).

pub(crate) mod add_member;
pub(crate) mod change;
pub(crate) mod create_chat;
pub(crate) mod direct;
pub(crate) mod fetch;
pub(crate) mod list_chats;
pub(crate) mod login;
pub(crate) mod logout;
pub(crate) mod manage;
pub(crate) mod me;
pub(crate) mod people;
pub(crate) mod presence;
pub(crate) mod read;
pub(crate) mod register;
pub(crate) mod remove_member;
pub(crate) mod search;
pub(crate) mod send;
pub(crate) mod show_chat;
pub(crate) mod typing;

use crate::state::AppState;
use chat_core::{ChatId, Error, Event, Result, Role, Topic, UserId};

/// The caller's role in the chat: `not_found` if the chat does not exist, `not_a_member` if
/// they are not in it. Every operation on a chat starts here.
pub(crate) async fn require_member(state: &AppState, chat: ChatId, user: UserId) -> Result<Role> {
    match state.metadata.role(chat, user).await? {
        Some(role) => Ok(role),
        None => match state.metadata.chat(chat).await? {
            Some(_) => Err(Error::NotAMember(chat)),
            None => Err(Error::NotFound(format!("chat {chat}"))),
        },
    }
}

/// Publishes an event about a change that is already committed. A lost event only delays what
/// live connections see until they reconnect or resync, so a failure is logged, not returned:
/// the caller's request succeeded.
pub(crate) async fn publish(st: &AppState, topic: Topic, event: Event) {
    publish_with(&*st.broker, topic, event).await;
}

/// [`publish`] through a given broker.
pub(crate) async fn publish_with(broker: &dyn chat_core::Broker, topic: Topic, event: Event) {
    if let Err(e) = broker.publish(topic, &event).await {
        tracing::warn!(?topic, error = %e, "publishing an event failed");
    }
}
