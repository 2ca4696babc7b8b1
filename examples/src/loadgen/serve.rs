//! `loadgen serve`: the `chat-server` library with the settings a load test needs, as its own
//! process (so its CPU and RSS are measured apart from the generator's).
//!
//! It differs from `chat-server` started with no flags only in its limits: the per-user and
//! per-address send, login and registration rate limits are off (every generated user logs in
//! from 127.0.0.1), the per-user WebSocket cap is off, and the connection cap is raised (the
//! open-file limit is then the bound). Optionally it hashes passwords at argon2's cheapest cost,
//! so setting up thousands of users does not dominate a run. The request path, the hub, the
//! stores and their durability are the same code as the binary's.

use anyhow::Context as _;
use chat_server::broker::LocalBroker;
use chat_server::{AbuseLimits, Config, PasswordHashing, Server};
use chat_storage::open::{open, StoreConfig};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// How to run the server.
#[derive(Clone, Debug)]
pub struct ServeParams {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where `sqlite` keeps its file.
    pub data_dir: PathBuf,
    /// Metadata store URL (`sqlite` or `mysql://…`).
    pub metadata: String,
    /// Message store URL (`sqlite`, `mysql://…`, `cassandra://…`).
    pub messages: String,
    /// TCP connections served at once.
    pub max_connections: usize,
    /// Frames queued per WebSocket before it is closed as a slow consumer.
    pub outbound_queue: usize,
    /// argon2 at its cheapest cost (load tests only: such hashes are easy to brute-force).
    pub fast_passwords: bool,
    /// `Config::ws_flush_delay` (zero: off).
    pub ws_flush_delay: std::time::Duration,
    /// `Config::ws_flush_batch`.
    pub ws_flush_batch: usize,
}

/// The server's configuration for a load test.
pub fn config(p: &ServeParams) -> Config {
    let mut config = Config {
        abuse: AbuseLimits {
            max_connections: p.max_connections,
            ..AbuseLimits::unthrottled()
        },
        outbound_queue: p.outbound_queue,
        ws_flush_delay: p.ws_flush_delay,
        ws_flush_batch: p.ws_flush_batch,
        ordered_appends: Config::ordered_appends_for(&p.messages),
        ..Config::default()
    };
    config.limits.send_rate_per_sec = 0;
    if p.fast_passwords {
        config.password_hashing = PasswordHashing::fast_insecure();
    }
    config
}

/// Serves until `shutdown` completes, then shuts down gracefully.
pub async fn serve(
    p: &ServeParams,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let fds = super::raise_fd_limit();
    let stores = open(&StoreConfig {
        metadata: p.metadata.clone(),
        metadata_replicas: Vec::new(),
        messages: p.messages.clone(),
        data_dir: p.data_dir.clone(),
    })
    .await
    .context("opening the stores")?;
    let server = Server::new(
        stores.metadata,
        stores.messages,
        Arc::new(LocalBroker::new()),
        config(p),
    );
    let listener = tokio::net::TcpListener::bind(p.listen)
        .await
        .with_context(|| format!("binding {}", p.listen))?;
    println!(
        "loadgen serve: chat server listening on http://{} (pid {}, open-file limit {fds})",
        listener.local_addr()?,
        std::process::id()
    );
    server.serve(listener, shutdown).await
}
