//! The one send path shared by `POST /v1/send` and the WebSocket `send` frame:
//! validate, rate-limit, check membership, append durably, then publish.

use crate::rate_limit::Guards;
use crate::state::AppState;
use chat_core::ids::now_millis;
use chat_core::{Appended, ChatId, Error, Event, Millis, NewMessage, Result, Role, Topic, UserId};
use std::sync::atomic::Ordering;

/// A send request, from either transport.
pub(crate) struct SendInput {
    /// Target chat.
    pub(crate) chat_id: ChatId,
    /// Text as sent (validated here).
    pub(crate) msg_text: String,
    /// The sender's clock.
    pub(crate) timestamp: Option<Millis>,
    /// Idempotency key.
    pub(crate) client_msg_id: Option<String>,
    /// The client's address, for the per-address send limit (`None` when unknown).
    pub(crate) client_addr: Option<std::net::IpAddr>,
}

/// Stores a message and, if it is new, publishes it to the chat's topic.
///
/// The event is published only after the store returned, so nobody hears of a message that
/// could still be lost; a deduplicated retry is not published again.
pub(crate) async fn send_message(
    state: &AppState,
    sender: UserId,
    input: SendInput,
) -> Result<Appended> {
    let limits = &state.config.limits;
    let msg_text = limits.msg_text(&input.msg_text)?;
    if let Some(id) = &input.client_msg_id {
        limits.client_msg_id(id)?;
    }
    state.guards.send_per_user.check(sender)?;
    Guards::by_addr(&state.guards.send_per_addr, input.client_addr)?;
    require_member(state, input.chat_id, sender).await?;
    let appended = state
        .messages
        .append(NewMessage {
            chat_id: input.chat_id,
            sender_id: sender,
            msg_text,
            sent_at: now_millis(),
            timestamp: input.timestamp,
            client_msg_id: input.client_msg_id,
        })
        .await?;
    if appended.created {
        state.metrics.messages_sent.fetch_add(1, Ordering::Relaxed);
        let event = Event::Message {
            message: appended.message.clone(),
        };
        // The message is durable; a failed publish only delays live delivery until clients
        // notice the seq gap or reconnect, so the sender still gets its success.
        if let Err(e) = state
            .broker
            .publish(Topic::Chat(input.chat_id), &event)
            .await
        {
            tracing::warn!(chat_id = %input.chat_id, error = %e, "publishing a message failed");
        }
    } else {
        state
            .metrics
            .messages_deduplicated
            .fetch_add(1, Ordering::Relaxed);
    }
    Ok(appended)
}

/// The caller's role in the chat: `not_found` if the chat does not exist, `not_a_member` if
/// they are not in it.
pub(crate) async fn require_member(state: &AppState, chat: ChatId, user: UserId) -> Result<Role> {
    match state.metadata.role(chat, user).await? {
        Some(role) => Ok(role),
        None => match state.metadata.chat(chat).await? {
            Some(_) => Err(Error::NotAMember(chat)),
            None => Err(Error::NotFound(format!("chat {chat}"))),
        },
    }
}
