//! The typed Rust SDK of the chat server: register, log in, create chats, send, fetch history,
//! and subscribe to a stream of events that survives reconnects and never skips or repeats a
//! message.
//!
//! It speaks the wire contract v1 (`docs/protocol.md`) with the contract's own serde types from
//! [`chat_core::protocol`].
//!
//! # Example
//! ```no_run
//! use chat_client::{Client, Event, FetchOptions};
//! use futures::StreamExt;
//!
//! # async fn run() -> chat_client::Result<()> {
//! let client = Client::new("http://127.0.0.1:8080")?;
//! client.register("ada@example.com", "correct horse", Some("Ada")).await?;
//! client.login("ada@example.com", "correct horse").await?;
//!
//! let chat = client.create_chat("lovelace", &[]).await?;
//! let mut events = client.subscribe().await?;
//! let sent = client.send(chat.chat_id, "hello").await?; // acked: durably stored
//!
//! let page = client.fetch(chat.chat_id, FetchOptions::latest(50)).await?;
//! assert_eq!(page.messages.last().map(|m| m.seq), Some(sent.seq));
//!
//! while let Some(event) = events.next().await {
//!     if let Event::Message(m) = event {
//!         println!("[{}] #{} {}: {}", m.chat_id, m.seq, m.sender_id, m.msg_text);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//! - [`Client::send`] is idempotent and retried: one `client_msg_id` per message, the same on
//!   every attempt, so a retry never makes a second copy; sends to one chat leave in order.
//!   While a [`Subscription`] is connected they travel over its WebSocket (the `send` frame
//!   and its `ack`), otherwise, or when the socket breaks mid-send, over REST.
//! - [`Client::enqueue`] is the same send without waiting: it returns the message's local echo
//!   at once and reports its progress on [`Client::outbox_events`]; failures stay in the queue
//!   for the application to retry or discard (see [`outbox`]). With
//!   [`ClientBuilder::state_dir`] the queue survives a restart of the application.
//! - [`Client::subscribe`] is one stream for the whole account (chats joined later included)
//!   and resumes where the client's last stream ended (in memory, and across restarts with a
//!   state directory); [`Client::subscribe_chat`] is the same for one chat.
//! - A [`Subscription`] hands the application every message of every chat exactly once, in `seq`
//!   order per chat, across reconnects and server restarts (see the [`subscription`] module for
//!   how, and where each chat starts).
//!
//! # Data types grow without breaking you
//! The data types the SDK returns and takes ([`Message`], [`ChatView`], [`ChatSummary`],
//! [`Page`], [`Changes`], the other views re-exported below, [`SendOptions`], [`RetryPolicy`],
//! [`Outgoing`], [`ResumePoint`]) are `#[non_exhaustive]`, so a later version may add a field
//! without a breaking release. Their fields stay public to read and to change, but outside
//! their crate they cannot be written as struct literals (nor with `..Default::default()`) or
//! destructured without `..`: build them with their constructors (`Message::new`,
//! `ChatView::new`, `RetryPolicy::new`, ...) and set further fields afterwards, or chain the
//! `with_*` methods of the option types. The enums that may grow ([`Event`], [`SendState`],
//! [`Error`], [`ErrorCode`], [`Role`], [`ChatKind`]) are non-exhaustive too: a `match` on them
//! needs a wildcard arm.
//!
//! ```
//! use chat_client::{ChatId, Message, RetryPolicy, SendOptions, Seq, UserId};
//! use std::time::Duration;
//!
//! let options = SendOptions::default()
//!     .with_client_msg_id("draft-42")
//!     .with_reply_to_seq(Seq(7));
//! let retry = RetryPolicy::new(20, Duration::from_millis(200), Duration::from_secs(10));
//!
//! // E.g. a fake message for the application's own tests.
//! let mut m = Message::new(ChatId(1), Seq(8), UserId(3), "hi", 1_700_000_000_000);
//! m.reply_to_seq = options.reply_to_seq;
//! # let _ = retry;
//! ```
//!
//! # Tracing
//! Every public call of [`Client`] runs in a `tracing` span at debug level named after the
//! method (with the chat, user or `seq` it is about, never message text or credentials), and
//! a failed call records its error in it, so the SDK shows up inside the application's own
//! traces.
//!
//! # TLS
//! With the default `rustls` feature, `https://` base URLs work for REST and the subscription's
//! WebSocket uses `wss://`, both with rustls (no OpenSSL) and the same trusted roots: the
//! webpki-roots bundle plus any root added with [`ClientBuilder::add_root_certificate_pem`] (a
//! private CA or a self-signed server certificate). A certificate that does not verify is an
//! [`Error::Transport`] of kind [`TransportKind::CertificateNotTrusted`] (and ends a
//! subscription with that cause); the SDK never falls back to plain HTTP.
//!
//! ```no_run
//! # async fn run() -> chat_client::Result<()> {
//! let ca = std::fs::read("ca.pem").expect("the deployment's CA");
//! let client = chat_client::Client::builder("https://chat.internal")
//!     .add_root_certificate_pem(ca)
//!     .build()?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`client`]: [`Client`], its builder, [`SendOptions`], [`FetchOptions`], [`Page`],
//!   [`SearchOptions`] and the paging stream of a search ([`SearchPages`]).
//! - [`outbox`]: the send queue, [`Outgoing`] and [`SendState`].
//! - [`subscription`]: [`Subscription`] and [`Event`].
//! - [`error`]: the one [`Error`] enum and [`TransportKind`].
//! - `tls` (feature `rustls`): the rustls configuration REST and WebSocket share.
//! - [`retry`]: [`RetryPolicy`] and the jittered backoff behind retries and reconnects.

pub mod client;
pub mod error;
pub mod outbox;
pub mod retry;
pub mod subscription;
#[cfg(feature = "rustls")]
mod tls;

pub use client::{
    Changes, Client, ClientBuilder, FetchOptions, Page, Role, SearchOptions, SearchPage,
    SearchPages, SendOptions,
};
pub use error::{Error, Result, TransportKind};
pub use outbox::{Outgoing, SendState};
pub use retry::RetryPolicy;
pub use subscription::{Event, ResumePoint, Subscription};

/// The wire types the SDK's methods take and return, re-exported so applications need not
/// depend on `chat-core` directly.
pub use chat_core::protocol::{
    ChatSummary, ChatView, MemberView, PresenceView, PublicUser, Receipt, RoleView, SessionView,
    UserView,
};
pub use chat_core::ChatKind;
pub use chat_core::{ChatId, ErrorCode, Message, Millis, Reaction, Rev, Seq, UserId};

#[cfg(test)]
mod tests {
    /// The SDK's handles must move freely between tasks and threads.
    #[test]
    fn handles_are_send_and_sync() {
        fn send_sync<T: Send + Sync + 'static>() {}
        fn send<T: Send + 'static>() {}
        send_sync::<crate::Client>();
        send_sync::<crate::Error>();
        send::<crate::Subscription>();
    }
}
