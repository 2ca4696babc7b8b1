//! The cluster harness: real `chat-server` processes (the built binary), a dedicated
//! `redis-server` and `nginx` per test on free loopback ports, and a fresh MariaDB database per
//! test (from `CHAT_TEST_MYSQL_URL`) shared by the nodes for metadata and messages.
//!
//! Every process is owned by a guard that kills it on drop, so a failing test leaks nothing.
//! When a test panics, the guards print the tail of each process's log first.

#![allow(dead_code)] // Each test binary uses a different subset of the helpers.

use chat_client::{ChatId, Client, Event, Message, Subscription};
use futures::StreamExt;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The longest any single wait may take before the test fails. A failure guard only, never a
/// performance assertion: on a loaded machine things are slow, not wrong.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// The password of every test user.
pub const PASSWORD: &str = "correct horse battery";

/// The MariaDB base URL, or a panic that says how to start MariaDB (never a silent skip).
pub fn mysql_base() -> String {
    use chat_storage::mysql::testing::{url_from_env, PRIMARY_URL_ENV};
    url_from_env(PRIMARY_URL_ENV).unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh, empty database on the test MariaDB; the nodes migrate it when they open it.
pub async fn fresh_database() -> String {
    chat_storage::mysql::testing::fresh_database(&mysql_base())
        .await
        .unwrap_or_else(|e| panic!("creating a test database on {}: {e}", mysql_base()))
}

/// A fresh database migrated by the test server's administrator user, and the URL of a
/// least-privilege user for it (rows only, no DDL), as nodes run in production.
pub async fn least_privilege_database() -> String {
    use chat_storage::mysql::{MysqlConfig, MysqlStore};
    let admin = fresh_database().await;
    let store = MysqlStore::connect(MysqlConfig::new(&admin, Vec::new()))
        .await
        .unwrap_or_else(|e| panic!("migrating the test database: {e}"));
    drop(store);
    chat_storage::mysql::testing::least_privilege_user(&admin)
        .await
        .unwrap_or_else(|e| panic!("creating a least-privilege user: {e}"))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until `127.0.0.1:port` accepts TCP connections.
pub async fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{what} never listened on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints the last lines of a log file (on test failure).
fn print_tail(label: &str, path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(60);
    eprintln!("----- {label} ({}) -----", path.display());
    for l in &lines[from..] {
        eprintln!("{l}");
    }
}

/// `kill -STOP` (`cont: false`) or `kill -CONT` (`cont: true`) of process `pid` (`what` names
/// it in the failure message).
pub fn pause_pid(pid: u32, cont: bool, what: &str) {
    let sig = if cont { "-CONT" } else { "-STOP" };
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} of {what} (pid {pid}) failed");
}

/// Kills a child at once (SIGKILL) and reaps it.
fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A `redis-server` of this test only, without persistence (like `scripts/redis.sh`).
pub struct RedisProc {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl RedisProc {
    /// Starts Redis on a free port.
    pub async fn start() -> RedisProc {
        let mut r = RedisProc {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        r.spawn().await;
        r
    }

    async fn spawn(&mut self) {
        let log = File::create(self.dir.path().join("redis.log")).expect("redis log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); install it with `scripts/redis.sh install`")
            });
        self.child = Some(child);
        wait_port(self.port, "redis").await;
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `kill -STOP` (`cont: false`) or `kill -CONT` (`cont: true`): a hang, not a close. Its
    /// sockets stay open and answer nothing until it continues.
    pub fn signal_pause(&self, cont: bool) {
        if let Some(child) = &self.child {
            pause_pid(child.id(), cont, "redis-server");
        }
    }

    /// `kill -9`: every connection drops, every key and subscription is gone.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Number of subscribers of one channel (`PUBSUB NUMSUB`).
    pub async fn subscribers(&self, channel: &str) -> i64 {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection");
        let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut conn)
            .await
            .expect("PUBSUB NUMSUB");
        counts.first().map(|(_, n)| *n).unwrap_or(0)
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_tail("redis", &self.dir.path().join("redis.log"));
        }
        self.kill();
    }
}

/// How nodes find their stores, broker and cache.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// `mysql://...` of the test database (metadata, and messages unless `messages` is set).
    pub database: String,
    /// Another message store (e.g. `cassandra://...`); `None` keeps messages in `database`.
    pub messages: Option<String>,
    /// `redis://...` for the broker and the cache.
    pub redis: String,
    /// `--cache-local-ttl-ms`.
    pub cache_local_ttl_ms: u64,
    /// A read replica of `database` (`--metadata-replica`), if any.
    pub replica: Option<String>,
}

/// One `chat-server` process.
pub struct NodeProc {
    child: Option<Child>,
    /// The node's name (`--node-id`).
    pub name: String,
    port: u16,
    spec: NodeSpec,
    dir: TempDir,
}

impl NodeProc {
    /// Starts a node on a free port and waits until its health answers 200.
    pub async fn start(name: &str, spec: &NodeSpec) -> NodeProc {
        let mut n = NodeProc {
            child: None,
            name: name.to_owned(),
            port: free_port(),
            spec: spec.clone(),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        n.spawn().await;
        n
    }

    /// The node's log file (stdout and stderr, across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    async fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("node log");
        let child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--node-id", &self.name])
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["--metadata", &self.spec.database])
            .args([
                "--messages",
                self.spec.messages.as_deref().unwrap_or(&self.spec.database),
            ])
            .args(["--broker", &self.spec.redis])
            .args(
                self.spec
                    .replica
                    .iter()
                    .flat_map(|r| ["--metadata-replica", r.as_str()]),
            )
            .arg("--cache-redis")
            .args([
                "--cache-local-ttl-ms",
                &self.spec.cache_local_ttl_ms.to_string(),
            ])
            // Throttling must never decide these tests (the limiter has its own tests).
            .args(["--send-rate", "100000", "--send-burst", "100000"])
            .args(["--shutdown-grace-secs", "5"])
            .args(["--presence-grace-ms", "500"])
            .args(["--log", "info,chat_server=debug,tower_http=warn"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning chat-server");
        self.child = Some(child);
        self.wait_healthy().await;
    }

    /// Waits until `GET /v1/health` answers 200.
    pub async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(format!("{}/v1/health", self.url())).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "node {} exited with {status}; log:\n{}",
                    self.name,
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "node {} never became healthy; log:\n{}",
                self.name,
                std::fs::read_to_string(self.log_path()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, as nginx's upstream list wants it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `kill -9`: no close frames, no draining.
    pub fn kill9(&mut self) {
        kill_child(&mut self.child);
    }

    /// Starts the node again on the same port and data directory (after [`NodeProc::kill9`]),
    /// and waits until it is healthy.
    pub async fn restart(&mut self) {
        kill_child(&mut self.child);
        self.spawn().await;
    }

    /// `kill -STOP` (`cont: false`) or `kill -CONT` (`cont: true`): the node hangs with its
    /// sockets open, as a long GC pause or a frozen VM would, until it continues.
    pub fn signal_pause(&self, cont: bool) {
        if let Some(child) = &self.child {
            pause_pid(child.id(), cont, &format!("node {}", self.name));
        }
    }

    /// SIGTERM: graceful drain (WebSockets closed with 1012). Waits for the process to exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .expect("kill -TERM");
            assert!(status.success(), "kill -TERM failed");
            let deadline = Instant::now() + PATIENCE;
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => return,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        panic!("node {} did not stop after SIGTERM", self.name);
                    }
                }
            }
        }
    }

    /// `GET /v1/health` as JSON, with its status code.
    pub async fn health(&self) -> (u16, serde_json::Value) {
        let r = reqwest::get(format!("{}/v1/health", self.url()))
            .await
            .expect("health request");
        let status = r.status().as_u16();
        (status, r.json().await.expect("health body"))
    }

    /// The node's open WebSocket connections (the `/metrics` gauge).
    pub async fn ws_connections(&self) -> u64 {
        self.metric("chat_ws_connections").await
    }

    /// One unlabelled metric of `GET /metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.url()))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or(0)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_tail(&format!("node {}", self.name), &self.log_path());
        }
        kill_child(&mut self.child);
    }
}

/// nginx in front of the nodes, configured from `deploy/nginx.conf.template` (the config the
/// repo ships), in the foreground so the guard owns it.
pub struct NginxProc {
    child: Option<Child>,
    port: u16,
    /// The HTTPS and WSS port, when started with a certificate.
    tls_port: Option<u16>,
    dir: TempDir,
}

/// The PEM files nginx terminates TLS with.
pub struct NginxTls<'a> {
    /// The certificate chain.
    pub cert: &'a Path,
    /// Its private key.
    pub key: &'a Path,
}

impl NginxProc {
    /// Starts nginx on a free port in front of `upstreams` (`host:port` each), plain HTTP only.
    pub async fn start(upstreams: &[String]) -> NginxProc {
        Self::start_with(upstreams, None).await
    }

    /// [`NginxProc::start`], also terminating TLS on a second free port when `tls` is given.
    pub async fn start_with(upstreams: &[String], tls: Option<NginxTls<'_>>) -> NginxProc {
        let dir = tempfile::tempdir().expect("temp dir");
        // Workers may run as another user when the tests run as root: let them into the
        // directory (nginx creates and chowns its temp directories itself).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        let port = free_port();
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx.conf.template"),
        )
        .expect("deploy/nginx.conf.template");
        let servers: String = upstreams
            .iter()
            .map(|u| format!("        server {u} max_fails=1 fail_timeout=5s;\n"))
            .collect();
        let tls_port = tls.as_ref().map(|_| free_port());
        // The same filling as scripts/nginx.sh: a line `@UPSTREAMS@` becomes the server list,
        // and the lines between the TLS markers stay only with a certificate.
        let mut in_tls = false;
        let conf: String = template
            .replace("@DIR@", &dir.path().display().to_string())
            .replace(
                "@TLS_LISTEN@",
                &format!("127.0.0.1:{}", tls_port.unwrap_or(0)),
            )
            .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
            .replace(
                "@TLS_CERT@",
                &tls.as_ref()
                    .map(|t| t.cert.display().to_string())
                    .unwrap_or_default(),
            )
            .replace(
                "@TLS_KEY@",
                &tls.as_ref()
                    .map(|t| t.key.display().to_string())
                    .unwrap_or_default(),
            )
            .replace("daemon on;", "daemon off;")
            .lines()
            .filter_map(|l| {
                if l.contains("@TLS_BEGIN@") || l.contains("@TLS_END@") {
                    in_tls = l.contains("@TLS_BEGIN@");
                    None
                } else if in_tls && tls.is_none() {
                    None
                } else if l.trim() == "@UPSTREAMS@" {
                    Some(servers.clone())
                } else {
                    Some(format!("{l}\n"))
                }
            })
            .collect();
        assert!(
            !conf
                .lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains('@')),
            "a placeholder left in the nginx config:\n{conf}"
        );
        assert!(
            conf.contains("server 127.0.0.1:"),
            "no upstreams in the nginx config"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let log = File::create(dir.path().join("stderr.log")).expect("nginx log");
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nginx");
        let child = Command::new(nginx)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run nginx ({e}); install it with `scripts/nginx.sh install`")
            });
        let n = NginxProc {
            child: Some(child),
            port,
            tls_port,
            dir,
        };
        wait_port(port, "nginx").await;
        if let Some(p) = tls_port {
            wait_port(p, "nginx (TLS)").await;
        }
        n
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `https://127.0.0.1:TLS_PORT`, when started with a certificate.
    pub fn https_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("https://127.0.0.1:{p}"))
    }
}

impl Drop for NginxProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_tail("nginx error.log", &self.dir.path().join("error.log"));
            print_tail("nginx stderr", &self.dir.path().join("stderr.log"));
        }
        // SIGTERM (fast shutdown): the master takes its workers down with it. A SIGKILL would
        // orphan the workers, which keep the port and run on.
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A whole cluster: Redis, `n` nodes on one fresh database, nginx in front.
pub struct Cluster {
    /// The cluster's Redis (broker and cache).
    pub redis: RedisProc,
    /// The nodes, `n1`, `n2`, ...
    pub nodes: Vec<NodeProc>,
    /// The load balancer.
    pub nginx: NginxProc,
}

impl Cluster {
    /// Starts Redis, `n` nodes and nginx.
    pub async fn start(n: usize, cache_local_ttl_ms: u64) -> Cluster {
        let redis = RedisProc::start().await;
        let spec = NodeSpec {
            database: least_privilege_database().await,
            messages: None,
            redis: redis.url(),
            cache_local_ttl_ms,
            replica: None,
        };
        // Every node runs as a user that may only read and write rows: the schema was migrated
        // by the administrator's user before they start.
        let mut nodes = vec![NodeProc::start("n1", &spec).await];
        let names: Vec<String> = (2..=n).map(|i| format!("n{i}")).collect();
        let rest =
            futures::future::join_all(names.iter().map(|name| NodeProc::start(name, &spec))).await;
        nodes.extend(rest);
        let upstreams: Vec<String> = nodes.iter().map(NodeProc::addr).collect();
        let nginx = NginxProc::start(&upstreams).await;
        Cluster {
            redis,
            nodes,
            nginx,
        }
    }
}

/// Registers and logs in a user through `base_url`.
pub async fn user(base_url: &str, name: &str) -> Client {
    let c = Client::new(base_url).expect("client");
    let email = format!("{name}-{}@example.com", uuid_like());
    c.register(&email, PASSWORD, Some(name))
        .await
        .unwrap_or_else(|e| panic!("registering {name}: {e}"));
    c.login(&email, PASSWORD)
        .await
        .unwrap_or_else(|e| panic!("logging in {name}: {e}"));
    c
}

/// The same session, talking to another address (another node, or nginx).
pub fn via(client: &Client, base_url: &str) -> Client {
    let mut b = Client::builder(base_url).token(client.token().expect("logged in"));
    if let Some(id) = client.user_id() {
        b = b.user_id(id);
    }
    b.build().expect("client")
}

fn uuid_like() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Takes events from `sub` until it has delivered `n` messages of `chat`; returns them in the
/// order delivered. Other events are skipped.
pub async fn messages(sub: &mut Subscription, chat: ChatId, n: usize, who: &str) -> Vec<Message> {
    let mut got = Vec::new();
    while got.len() < n {
        let ev = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{who}: waited {PATIENCE:?} for message {} of {n} in chat {chat}; have seqs {:?}",
                    got.len() + 1,
                    got.iter().map(|m: &Message| m.seq.0).collect::<Vec<_>>()
                )
            })
            .unwrap_or_else(|| panic!("{who}: subscription ended"));
        if let Event::Message(m) = ev {
            if m.chat_id == chat {
                got.push(m);
            }
        }
    }
    got
}

/// Asserts that `msgs` is exactly seqs `1..=n` in order (dense, none twice).
pub fn assert_dense(msgs: &[Message], n: usize, who: &str) {
    let seqs: Vec<i64> = msgs.iter().map(|m| m.seq.0).collect();
    let want: Vec<i64> = (1..=n as i64).collect();
    assert_eq!(seqs, want, "{who}: history is not 1..={n} in order");
}
