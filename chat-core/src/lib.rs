//! Domain types, the wire protocol, validation, errors and the storage and broker traits of the
//! chat system.
//!
//! `chat-core` does no I/O: it knows nothing about SQL, Cassandra, Redis, HTTP or sockets. The
//! other crates depend on it; teams that write their own store or broker implement its traits.
//!
//! # Layout
//! - [`ids`]: `UserId`, `ChatId`, `Seq`, `Rev`, `TokenHash` and the millisecond clock type.
//! - [`model`]: `User`, `Chat`, `Member`, `Message` and the inputs the stores take.
//! - [`error`]: the one error enum; each variant maps onto a stable wire code and HTTP status.
//! - [`limits`]: the contract's limits and the validation of everything a client sends.
//! - [`page`]: opaque page tokens for `GET /v1/fetch`.
//! - [`search`]: the search tokenizer and query parser, result order and page tokens.
//! - [`protocol`]: the serde types of every REST body and WebSocket frame.
//! - [`store`]: the `MetadataStore` and `MessageStore` traits.
//! - [`broker`]: the `Broker` trait that carries events between server nodes.

pub mod broker;
pub mod error;
pub mod ids;
pub mod limits;
pub mod model;
pub mod page;
pub mod protocol;
pub mod search;
pub mod store;

pub use broker::{Broker, BrokerEvent, BrokerStream, Event, Topic};
pub use error::{Error, ErrorCode, Result};
pub use ids::{ChatId, Millis, Rev, Seq, TokenHash, UserId};
pub use limits::Limits;
pub use model::{
    apply_change, apply_reaction, Appended, Chat, ChatActivity, ChatKind, FetchQuery, Member,
    Message, MessageChange, NewChat, NewMessage, NewSession, NewUser, Reaction, ReadMarker, Role,
    Session, User, UserChat, UserCredentials,
};
pub use page::PageToken;
pub use search::{SearchCursor, SearchQuery};
pub use store::{MessageStore, MetadataStore};
