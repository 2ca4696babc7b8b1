//! A real server on `127.0.0.1:0` over a fresh SQLite store in a temporary directory, plus an
//! HTTP client: the harness of the tests that talk raw HTTP and WebSocket and reach into the
//! store (`http_api`, `abuse`, `authz_matrix`). Each test file adds its own request helpers in an
//! `impl SqliteServer` block of its own.

#![allow(dead_code, clippy::unwrap_used)] // Each test binary uses a subset; a failed unwrap fails the test.

use chat_core::Limits;
use chat_server::broker::LocalBroker;
use chat_server::{AbuseLimits, Config, PasswordHashing, Server, ServerHandle};
use chat_storage::sqlite::SqliteStore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// A failure guard for every wait, never a performance assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Cheap password hashing and no effective send, login, registration or connection limit, so
/// only the tests about a limit meet it (they set it low in the config they pass).
pub fn quiet_config(node_id: &str) -> Config {
    Config {
        node_id: node_id.into(),
        limits: Limits {
            send_rate_per_sec: 1_000_000,
            send_burst: 1_000_000,
            ..Limits::default()
        },
        password_hashing: PasswordHashing::fast_insecure(),
        abuse: AbuseLimits::unthrottled(),
        ..Config::default()
    }
}

/// A running server, its store and an HTTP client. Dropping it aborts the server.
pub struct SqliteServer {
    /// The server; `None` once shut down.
    pub handle: Option<ServerHandle>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// A client with [`PATIENCE`] as its timeout.
    pub http: reqwest::Client,
    /// The server's store, for setting up what the API cannot (admins, expired sessions).
    pub store: SqliteStore,
    _dir: TempDir,
}

impl SqliteServer {
    /// Starts a server with `config` over a fresh store.
    pub async fn launch(config: Config) -> SqliteServer {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("chat.db")).unwrap();
        let server = Server::new(
            Arc::new(store.clone()),
            Arc::new(store.clone()),
            Arc::new(LocalBroker::new()),
            config,
        );
        let handle = server.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        SqliteServer {
            addr: handle.local_addr(),
            handle: Some(handle),
            http: reqwest::Client::builder()
                .timeout(PATIENCE)
                .build()
                .unwrap(),
            store,
            _dir: dir,
        }
    }
}

impl Drop for SqliteServer {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}
