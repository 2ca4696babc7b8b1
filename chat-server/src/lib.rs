//! The chat server: REST and WebSocket (axum on tokio) over pluggable stores and a broker, as a
//! library to embed and as the `chat-server` binary.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use chat_server::{broker::LocalBroker, Config, Server};
//! use std::sync::Arc;
//! let store = chat_storage::sqlite::SqliteStore::open("chat.db")?;
//! let server = Server::new(
//!     Arc::new(store.clone()),
//!     Arc::new(store),
//!     Arc::new(LocalBroker::new()),
//!     Config::default(),
//! );
//! let handle = server.start("127.0.0.1:8080".parse()?).await?;
//! println!("listening on {}", handle.local_addr());
//! handle.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`server`](Server): `Server` and `ServerHandle`: binding, serving, graceful shutdown.
//! - [`config`]: [`Config`], every tunable with its default.
//! - [`broker`]: brokers between nodes; [`broker::LocalBroker`] for one process,
//!   `broker::redis::RedisBroker` for a cluster (feature `redis`).
//! - `cache` (feature `redis`): `CachedMetadataStore`, the user and membership cache in Redis
//!   and in-process, with its documented staleness bound.
//! - [`health`]: [`HealthCheck`], extra dependencies `GET /v1/health` reports (the cache).
//! - `http`: the router, one file per resource (users, chats, messages, ops) and the extractors
//!   that keep every failure in the contract's JSON error format.
//! - `ws`: one WebSocket connection: upgrade, `ready`, the reader and the writer task.
//! - `hub`: this node's live connections and the fan-out of broker events to them, with the
//!   bounded per-connection queues that close slow consumers.
//! - `send`: the one send path shared by REST and WebSocket: validate, rate-limit, check
//!   membership, append, publish.
//! - `auth`: argon2id passwords, bearer tokens, sessions.
//! - `accept`: the accept loop under HTTP: a cap on open connections, the header read timeout,
//!   the peer's address, the graceful drain.
//! - `rate_limit`: abuse limits: token buckets for sends (per user and per address), logins
//!   (per address and per account) and registrations (per address); WebSockets per user.
//! - `metrics`: Prometheus counters and latency histograms for `GET /metrics`.
//! - `error`: `chat_core::Error` to HTTP status plus JSON error body.
//! - `state`: what every handler and connection shares.

mod accept;
mod auth;
pub mod broker;
#[cfg(feature = "redis")]
pub mod cache;
pub mod config;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
mod http;
mod hub;
mod metrics;
mod rate_limit;
mod send;
mod server;
mod state;
mod ws;

pub use config::{AbuseLimits, Config, PasswordHashing, RateLimit};
pub use health::HealthCheck;
pub use server::{Server, ServerHandle};
