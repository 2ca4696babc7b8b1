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
//! - `ops`: the operations layer, one file per operation (send, fetch, create a chat, add a
//!   member, log in, …), shared by REST and WebSocket: limits, authorization, the stores,
//!   publishing.
//! - `http`: the router and thin handlers (an extractor and a status code around one
//!   operation), plus the layers that keep every failure in the contract's JSON error format.
//! - `ws`: one WebSocket connection: upgrade and `ready` (`ws/mod.rs`), the outbox and close
//!   codes (`connection`), the one task's poll loop (`session`), many frames in flight in frame
//!   order (`pipeline`), and what each client frame does (`frames`).
//! - `hub`: this node's live connections and the fan-out of broker events to them: the
//!   membership state machine (`membership`), the broker subscriptions' own task
//!   (`subscriptions`), and catching up after lost events (`resync`).
//! - `extract`: request extractors shared by `http` and `ws` (JSON body, path, query, bearer
//!   token, client address).
//! - [`broker`]: brokers between nodes; [`broker::LocalBroker`] for one process,
//!   `broker::redis::RedisBroker` for a cluster (feature `redis`).
//! - `cache` (feature `redis`): `CachedMetadataStore`, the user and membership cache in Redis
//!   and in-process, with its documented staleness bound, and its health check.
//! - [`presence`]: who is online on any node: connection counts per node, the grace period,
//!   heartbeats and the reaping of dead nodes, over an in-process or Redis store.
//! - [`health`]: [`HealthCheck`], extra dependencies `GET /v1/health` reports (the cache).
//! - `auth`: argon2id passwords, bearer tokens, sessions (over the metadata store alone).
//! - `accept`: the accept loop under HTTP: a cap on open connections, the header read timeout,
//!   the peer's address, the TLS handshake when configured, the graceful drain.
//! - [`tls`]: [`TlsConfig`], the certificate and key of `--tls-cert`/`--tls-key` (rustls).
//! - `rate_limit`: abuse limits: token buckets (GCRA, the `governor` crate) for sends (per user
//!   and per address), logins (per address and per account) and registrations (per address);
//!   WebSockets per user.
//! - `metrics`: Prometheus counters and latency histograms for `GET /metrics`
//!   (`prometheus-client`).
//! - `error`: `chat_core::Error` to HTTP status plus JSON error body.
//! - `state`: what every handler and connection shares.

mod accept;
mod auth;
pub mod broker;
#[cfg(feature = "redis")]
pub mod cache;
pub mod config;
mod error;
mod extract;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
mod http;
mod hub;
mod metrics;
mod ops;
pub mod presence;
mod rate_limit;
mod server;
mod state;
pub mod tls;
mod ws;

pub use config::{AbuseLimits, Config, PasswordHashing, RateLimit};
pub use health::HealthCheck;
pub use server::{Server, ServerHandle};
pub use tls::TlsConfig;

/// Locks a std mutex, using the data even if a panic poisoned it: every critical section in this
/// crate leaves its data consistent between statements that could panic, and these mutexes are
/// never held across an await.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
