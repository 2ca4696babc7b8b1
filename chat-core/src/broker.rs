//! The [`Broker`]: how events travel between server nodes.
//!
//! A broker is a wake-up path, not the record. Events may be lost (a broker restart, a node that
//! was disconnected); the message store is the truth and clients fill holes by `seq`. A broker
//! that may have dropped events says so with [`BrokerEvent::Resync`], and the node then catches
//! its connected clients up from the store.

use crate::error::Result;
use crate::ids::{ChatId, Millis, Seq, TokenHash, UserId};
use crate::model::Message;
use crate::protocol::ChatView;
use async_trait::async_trait;
use futures_core::Stream;
use serde::{Deserialize, Serialize};
use std::pin::Pin;

/// What an event is about. A node subscribes to the chats that have a member connected to it
/// and to the users connected to it, so it receives only events it can deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Topic {
    /// Events of one chat: new messages, member changes.
    Chat(ChatId),
    /// Events of one user: added to or removed from a chat, a session revoked.
    User(UserId),
}

/// An event carried between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A message was stored (published on `Topic::Chat`).
    Message {
        /// The stored message.
        message: Message,
    },
    /// A stored message was edited, deleted or reacted to, durably (on `Topic::Chat`): its
    /// current state.
    MessageUpdated {
        /// The message as it is now.
        message: Message,
    },
    /// A chat's members changed, or a user was added to it (published on `Topic::Chat` for the
    /// members and `Topic::User` for the user added).
    ChatUpdated {
        /// The chat as it is now.
        chat: ChatView,
    },
    /// A user left or was removed (published on `Topic::User` of that user and `Topic::Chat`).
    RemovedFromChat {
        /// The chat.
        chat_id: ChatId,
        /// Who was removed.
        user_id: UserId,
    },
    /// A member's read marker moved (on `Topic::Chat`): every member's connections hear it.
    Read {
        /// The chat.
        chat_id: ChatId,
        /// The reader.
        user_id: UserId,
        /// The marker now.
        last_read_seq: Seq,
    },
    /// A member is typing (on `Topic::Chat`); never stored. Delivered to the other members.
    Typing {
        /// The chat.
        chat_id: ChatId,
        /// Who types.
        user_id: UserId,
        /// Until when to show it (server time).
        until: Millis,
    },
    /// A user came online or went offline (on `Topic::Chat` of each chat of theirs, so every
    /// node with a member of one of those chats hears it).
    Presence {
        /// The chat this copy is for.
        chat_id: ChatId,
        /// The user.
        user_id: UserId,
        /// Online on any node.
        online: bool,
        /// Last seen online.
        last_seen: Option<Millis>,
    },
    /// A session was revoked (logout); connections using it must close (on `Topic::User`).
    SessionRevoked {
        /// Whose session.
        user_id: UserId,
        /// The revoked session (hex on the wire).
        token_hash: TokenHash,
    },
}

/// What a broker hands its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerEvent {
    /// An event on a subscribed topic.
    Event {
        /// The topic it was published on.
        topic: Topic,
        /// The event.
        event: Event,
    },
    /// Events may have been lost (reconnect after an outage); catch up from the store.
    Resync,
}

/// The stream of events a broker delivers to its node.
pub type BrokerStream = Pin<Box<dyn Stream<Item = BrokerEvent> + Send>>;

/// Carries events between the nodes of a cluster (in-process for one node, Redis for many).
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes an event to every node subscribed to `topic`, this one included.
    async fn publish(&self, topic: Topic, event: &Event) -> Result<()>;

    /// Starts delivering events of `topic` to this node.
    async fn subscribe(&self, topic: Topic) -> Result<()>;

    /// Stops delivering events of `topic` to this node.
    async fn unsubscribe(&self, topic: Topic) -> Result<()>;

    /// The node's event stream. Called once; later calls may fail.
    fn events(&self) -> Result<BrokerStream>;

    /// Checks that the broker answers; for `GET /v1/health`.
    async fn health(&self) -> Result<()>;
}
