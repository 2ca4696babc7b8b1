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
//! - A [`Subscription`] hands the application every message of every chat exactly once, in `seq`
//!   order per chat, across reconnects and server restarts (see the [`subscription`] module for
//!   how, and where each chat starts).
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
//! - [`client`]: [`Client`], its builder, [`SendOptions`], [`FetchOptions`], [`Page`].
//! - [`subscription`]: [`Subscription`] and [`Event`].
//! - [`error`]: the one [`Error`] enum and [`TransportKind`].
//! - `tls` (feature `rustls`): the rustls configuration REST and WebSocket share.
//! - [`retry`]: [`RetryPolicy`] and the jittered backoff behind retries and reconnects.

pub mod client;
pub mod error;
pub mod retry;
pub mod subscription;
#[cfg(feature = "rustls")]
mod tls;

pub use client::{Changes, Client, ClientBuilder, FetchOptions, Page, Role, SendOptions};
pub use error::{Error, Result, TransportKind};
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
