//! Send a message (`POST /v1/send` and the WebSocket `send` frame): validate, rate-limit,
//! check membership, append durably, then publish.
//!
//! It is split in three stages because the WebSocket pipeline runs them apart: [`prepare`]
//! (synchronous: limits and validation, taken in frame order), the membership check
//! ([`super::require_member`], concurrent across frames), and [`commit`] (the append, submitted
//! in frame order, then the publish). [`run`] is the three in a row, for REST.

use crate::metrics::seconds_since;
use crate::rate_limit::Guards;
use crate::state::AppState;
use chat_core::ids::now_millis;
use chat_core::{Appended, ChatId, Event, Millis, NewMessage, Result, Topic, UserId};
use std::time::Instant;

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
    /// The message this one replies to (checked to exist with the membership).
    pub(crate) reply_to_seq: Option<chat_core::Seq>,
    /// The client's address, for the per-address send limit (`None` when unknown).
    pub(crate) client_addr: Option<std::net::IpAddr>,
}

/// A send that passed validation and the rate limits: next comes the membership check, then
/// [`commit`].
pub(crate) struct Prepared {
    /// Target chat.
    pub(crate) chat_id: ChatId,
    /// Who sends it.
    pub(crate) sender: UserId,
    /// The validated text.
    msg_text: String,
    /// The sender's clock.
    timestamp: Option<Millis>,
    /// Idempotency key.
    client_msg_id: Option<String>,
    /// The message this one replies to.
    pub(crate) reply_to_seq: Option<chat_core::Seq>,
    /// When the send was read, for the send→ack histogram.
    started: Instant,
}

/// The whole send: stores a message and, if it is new, publishes it to the chat's topic.
///
/// The event is published only after the store returned, so nobody hears of a message that
/// could still be lost; a deduplicated retry is not published again.
pub(crate) async fn run(state: &AppState, sender: UserId, input: SendInput) -> Result<Appended> {
    let prepared = prepare(state, sender, input)?;
    admit(state, &prepared).await?;
    commit(state, prepared).await
}

/// The synchronous first part of a send: validates the input and takes a token from the
/// sender's and the address's send limits.
pub(crate) fn prepare(state: &AppState, sender: UserId, input: SendInput) -> Result<Prepared> {
    let started = Instant::now();
    let limits = &state.config.limits;
    let msg_text = limits.msg_text(&input.msg_text)?;
    if let Some(id) = &input.client_msg_id {
        limits.client_msg_id(id)?;
    }
    state.guards.send_per_user.check(sender)?;
    Guards::by_addr(&state.guards.send_per_addr, input.client_addr)?;
    Ok(Prepared {
        chat_id: input.chat_id,
        sender,
        msg_text,
        timestamp: input.timestamp,
        client_msg_id: input.client_msg_id,
        reply_to_seq: input.reply_to_seq,
        started,
    })
}

/// The second part of a send, the checks that read the stores (concurrent across frames on a
/// WebSocket): the sender is a member, and a reply's `reply_to_seq` exists.
pub(crate) async fn admit(state: &AppState, prepared: &Prepared) -> Result<()> {
    super::require_member(state, prepared.chat_id, prepared.sender).await?;
    if let Some(reply_to) = prepared.reply_to_seq {
        super::change::check_reply(state, prepared.chat_id, reply_to).await?;
    }
    Ok(())
}

/// The last part of a send, once the sender is known to be a member: appends, then publishes.
///
/// The append is the first thing this future does, so callers that need appends submitted in
/// a given order (the WebSocket pipeline) get it by polling these futures for the first time
/// in that order.
pub(crate) async fn commit(state: &AppState, prepared: Prepared) -> Result<Appended> {
    let chat_id = prepared.chat_id;
    let append_started = Instant::now();
    let appended = state
        .messages
        .append(NewMessage {
            reply_to_seq: prepared.reply_to_seq,
            chat_id,
            sender_id: prepared.sender,
            msg_text: prepared.msg_text,
            sent_at: now_millis(),
            timestamp: prepared.timestamp,
            client_msg_id: prepared.client_msg_id,
        })
        .await?;
    state
        .metrics
        .store_append_seconds
        .observe(seconds_since(append_started));
    if appended.created {
        state.metrics.messages_sent.inc();
        let event = Event::Message {
            message: appended.message.clone(),
        };
        // The message is durable; a failed publish only delays live delivery until clients
        // notice the seq gap or reconnect, so the sender still gets its success.
        super::publish(state, Topic::Chat(chat_id), event).await;
    } else {
        state.metrics.messages_deduplicated.inc();
    }
    super::read::after_send(state, prepared.sender, chat_id, appended.message.seq);
    state
        .metrics
        .send_ack_seconds
        .observe(seconds_since(prepared.started));
    Ok(appended)
}
