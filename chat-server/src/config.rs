//! [`Config`]: everything a [`Server`](crate::Server) can be tuned with, with the contract's
//! defaults.

use chat_core::Limits;
use std::time::Duration;

/// The server's settings. `Config::default()` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's name, shown by `GET /v1/health` and in logs; distinct per node of a cluster.
    pub node_id: String,
    /// The contract's limits (text sizes, page sizes, body and frame sizes, send rate).
    pub limits: Limits,
    /// How long a login token stays valid.
    pub session_ttl: Duration,
    /// Frames queued per WebSocket connection before it is closed as too slow. Bounds the memory
    /// one slow reader can hold.
    pub outbound_queue: usize,
    /// How long a graceful shutdown waits for in-flight requests and connections to finish.
    pub shutdown_grace: Duration,
    /// The cost of the argon2id password hash.
    pub password_hashing: PasswordHashing,
    /// How often the server pings an idle WebSocket, so dead peers are noticed and proxies keep
    /// the connection open.
    pub ws_ping_interval: Duration,
    /// A WebSocket from which nothing (not even a pong) arrives for this long is closed.
    pub ws_idle_timeout: Duration,
    /// How long one write to a WebSocket (or its closing frame) may block before the connection
    /// is given up. A peer that stops reading is caught by the queue bound first; this catches a
    /// peer whose socket is stuck with an empty queue.
    pub ws_write_timeout: Duration,
    /// How often expired sessions are deleted from the metadata store.
    pub session_sweep_interval: Duration,
    /// How long `GET /v1/health` waits for each backend before calling it down.
    pub health_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: default_node_id(),
            limits: Limits::default(),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            outbound_queue: 1024,
            shutdown_grace: Duration::from_secs(10),
            password_hashing: PasswordHashing::default(),
            ws_ping_interval: Duration::from_secs(30),
            ws_idle_timeout: Duration::from_secs(90),
            ws_write_timeout: Duration::from_secs(10),
            session_sweep_interval: Duration::from_secs(600),
            health_timeout: Duration::from_secs(3),
        }
    }
}

/// argon2id cost parameters. The default is the argon2 crate's recommended cost (19 MiB, two
/// passes); tests use [`PasswordHashing::fast_insecure`] so a suite that registers hundreds of
/// users stays quick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordHashing {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism.
    pub parallelism: u32,
}

impl Default for PasswordHashing {
    fn default() -> Self {
        PasswordHashing {
            memory_kib: argon2::Params::DEFAULT_M_COST,
            iterations: argon2::Params::DEFAULT_T_COST,
            parallelism: argon2::Params::DEFAULT_P_COST,
        }
    }
}

impl PasswordHashing {
    /// The cheapest parameters argon2 accepts. For tests only: hashes made with them are easy to
    /// brute-force.
    pub fn fast_insecure() -> Self {
        PasswordHashing {
            memory_kib: argon2::Params::MIN_M_COST.max(8),
            iterations: 1,
            parallelism: 1,
        }
    }
}

/// `hostname-pid`, or a random name when the host name is unknown.
fn default_node_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty());
    match host {
        Some(h) => format!("{h}-{}", std::process::id()),
        None => format!("node-{:08x}", rand::random::<u32>()),
    }
}
