//! The end-to-end harness: a real `chat-server` on `127.0.0.1` over real stores, driven through
//! the real `chat-client` SDK.
//!
//! The stores are chosen by URL, from `CHAT_TEST_METADATA` and `CHAT_TEST_MESSAGES` (default
//! `sqlite`, in a fresh temporary directory per test), so the same suite runs against MySQL and
//! Cassandra by setting two environment variables. [`store_urls`] is the one place that turns a
//! test's name into its URLs.

#![allow(dead_code)] // Each test binary uses a different subset of the helpers.

use chat_client::{ChatId, Client, Error, ErrorCode, Event, Message, Seq, Subscription};
use chat_core::Limits;
use chat_server::broker::LocalBroker;
use chat_server::{Config, PasswordHashing, Server, ServerHandle};
use chat_storage::open::{open, StoreConfig};
use futures::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// The longest any single wait in a test may take before the test fails. A failure guard only,
/// never a performance assertion: on a loaded machine things are slow, not wrong.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The password of every test user.
pub const PASSWORD: &str = "correct horse battery";

/// The metadata and message store URLs of one test.
///
/// `CHAT_TEST_METADATA` and `CHAT_TEST_MESSAGES` each name a backend (`sqlite`, `mysql`,
/// `cassandra`) or give a full store URL. `mysql` means a fresh database on the server of
/// `CHAT_TEST_MYSQL_URL` and `cassandra` a fresh keyspace on the cluster of
/// `CHAT_TEST_CASSANDRA_URL`, so tests stay isolated on shared database servers. When both are
/// `mysql`, they share one database (and so one store), as a server configured that way would.
/// SQLite needs nothing here: each test already gets its own data directory.
pub async fn store_urls(test_name: &str) -> (String, String) {
    let kind = |var: &str| std::env::var(var).unwrap_or_else(|_| "sqlite".to_owned());
    let (metadata_kind, messages_kind) = (kind("CHAT_TEST_METADATA"), kind("CHAT_TEST_MESSAGES"));
    let metadata = backend_url(&metadata_kind, test_name).await;
    let messages = if messages_kind == metadata_kind && messages_kind == "mysql" {
        metadata.clone()
    } else {
        backend_url(&messages_kind, test_name).await
    };
    (metadata, messages)
}

/// The URL of a fresh store of the named backend (or the URL itself when one is given).
async fn backend_url(kind: &str, test_name: &str) -> String {
    match kind {
        "mysql" => mysql_database(test_name).await,
        "cassandra" => cassandra_keyspace(test_name),
        other => other.to_owned(),
    }
}

#[cfg(feature = "mysql")]
async fn mysql_database(test_name: &str) -> String {
    use chat_storage::mysql::testing::{fresh_database, url_from_env, PRIMARY_URL_ENV};
    let base = url_from_env(PRIMARY_URL_ENV).unwrap_or_else(|e| panic!("{test_name}: {e}"));
    fresh_database(&base)
        .await
        .unwrap_or_else(|e| panic!("{test_name}: creating a MySQL database: {e}"))
}

#[cfg(not(feature = "mysql"))]
async fn mysql_database(test_name: &str) -> String {
    panic!("{test_name}: CHAT_TEST_*=mysql needs `--features mysql` (the test command uses --all-features)")
}

#[cfg(feature = "cassandra")]
fn cassandra_keyspace(_test_name: &str) -> String {
    use chat_storage::cassandra::testing::{fresh_keyspace_url, url_from_env};
    fresh_keyspace_url(&url_from_env("CHAT_TEST_CASSANDRA_URL"))
}

#[cfg(not(feature = "cassandra"))]
fn cassandra_keyspace(test_name: &str) -> String {
    panic!("{test_name}: CHAT_TEST_*=cassandra needs `--features cassandra` (the test command uses --all-features)")
}

/// The server configuration of the tests: cheap password hashing (hundreds of users are
/// registered) and a send rate limit far above what the tests send, so that throttling never
/// decides a test (the limiter has its own tests).
pub fn test_config() -> Config {
    Config {
        node_id: "e2e".to_owned(),
        limits: Limits {
            send_rate_per_sec: 1_000_000,
            send_burst: 1_000_000,
            ..Limits::default()
        },
        password_hashing: PasswordHashing::fast_insecure(),
        // Hundreds of users from one address: the abuse limits have their own tests.
        abuse: chat_server::AbuseLimits::unthrottled(),
        shutdown_grace: Duration::from_secs(5),
        ..Config::default()
    }
}

/// A running server and everything needed to restart it on the same data.
pub struct TestServer {
    handle: Option<ServerHandle>,
    addr: SocketAddr,
    store: StoreConfig,
    config: Config,
    /// Holds the SQLite files; removed when the test ends.
    _data_dir: TempDir,
}

impl TestServer {
    /// Starts a server on a free loopback port, over fresh stores.
    pub async fn start(test_name: &str) -> TestServer {
        Self::start_with(test_name, |_| {}).await
    }

    /// [`TestServer::start`] with the test configuration changed by `tune`.
    pub async fn start_with(test_name: &str, tune: impl FnOnce(&mut Config)) -> TestServer {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let (metadata, messages) = store_urls(test_name).await;
        let store = StoreConfig {
            metadata,
            metadata_replicas: Vec::new(),
            messages,
            data_dir: data_dir.path().to_path_buf(),
        };
        let mut config = test_config();
        tune(&mut config);
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let handle = launch(&store, &config, addr).await;
        TestServer {
            addr: handle.local_addr(),
            handle: Some(handle),
            store,
            config,
            _data_dir: data_dir,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's `GET /metrics` text (Prometheus exposition).
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url()))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// A client that is not logged in.
    pub fn client(&self) -> Client {
        Client::new(&self.url()).expect("client")
    }

    /// Shuts the server down gracefully (connections closed, stores flushed).
    pub async fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await.expect("graceful shutdown");
        }
    }

    /// Shuts the server down and starts it again on the same address and the same stores, as an
    /// operator's restart would.
    pub async fn restart(&mut self) {
        self.stop().await;
        let handle = launch(&self.store, &self.config, self.addr).await;
        assert_eq!(handle.local_addr(), self.addr);
        self.handle = Some(handle);
    }

    /// Kills the server like a crash (no close frames, no draining, no flush) and starts it again
    /// on the same address and stores: only what the stores made durable survives.
    pub async fn crash_and_start(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
        let handle = launch(&self.store, &self.config, self.addr).await;
        assert_eq!(handle.local_addr(), self.addr);
        self.handle = Some(handle);
    }

    /// Registers and logs in a user; `name` makes the email unique within the test.
    pub async fn user(&self, name: &str) -> Client {
        let client = self.client();
        let email = format!("{name}@e2e.test");
        client
            .register(&email, PASSWORD, Some(name))
            .await
            .unwrap_or_else(|e| panic!("registering {email}: {e}"));
        client
            .login(&email, PASSWORD)
            .await
            .unwrap_or_else(|e| panic!("logging in {email}: {e}"));
        client
    }

    /// `n` logged-in users named `{prefix}0`, `{prefix}1`, …, made concurrently.
    pub async fn users(&self, prefix: &str, n: usize) -> Vec<Client> {
        futures::future::join_all((0..n).map(|i| self.user_leaked(format!("{prefix}{i}")))).await
    }

    async fn user_leaked(&self, name: String) -> Client {
        self.user(&name).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// Opens the stores and serves on `addr`. Binding the old port right after a shutdown can race
/// the kernel releasing it, so that is retried for a while.
async fn launch(store: &StoreConfig, config: &Config, addr: SocketAddr) -> ServerHandle {
    let stores = open(store).await.expect("opening the stores");
    let server = Server::new(
        stores.metadata,
        stores.messages,
        Arc::new(LocalBroker::new()),
        config.clone(),
    );
    let mut last = None;
    for _ in 0..100 {
        match server.clone().start(addr).await {
            Ok(handle) => return handle,
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("starting the server on {addr}: {last:?}");
}

/// The user id of a logged-in client.
pub fn uid(client: &Client) -> chat_client::UserId {
    client.user_id().expect("logged in")
}

/// Waits for the next event, failing the test after [`PATIENCE`] or if the stream ends.
pub async fn next_event(sub: &mut Subscription) -> Event {
    match tokio::time::timeout(PATIENCE, sub.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the subscription ended"),
        Err(_) => panic!("no event within {PATIENCE:?}"),
    }
}

/// Reads events until `n` messages of `chat` have arrived and returns them; other chats'
/// messages and status events are skipped.
pub async fn messages_of(sub: &mut Subscription, chat: ChatId, n: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        if let Event::Message(m) = next_event(sub).await {
            if m.chat_id == chat {
                out.push(m);
            }
        }
    }
    out
}

/// Asserts that `messages` are exactly `seq` `first..first+len` of one chat, in order (so none
/// is missing or repeated).
pub fn assert_dense(messages: &[Message], first: i64) {
    for (i, m) in messages.iter().enumerate() {
        let want = Seq(first + i as i64);
        assert_eq!(m.seq, want, "message {i} of the stream: {m:?}");
    }
}

/// Asserts that `result` failed with this status and code.
pub fn assert_api_error<T: std::fmt::Debug>(
    result: chat_client::Result<T>,
    status: u16,
    code: ErrorCode,
) {
    match result {
        Err(Error::Api {
            status: s, code: c, ..
        }) => assert_eq!((s, c), (status, code)),
        other => panic!("expected {status} {code}, got {other:?}"),
    }
}
