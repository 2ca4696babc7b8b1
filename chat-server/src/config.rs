//! [`Config`]: everything a [`Server`](crate::Server) can be tuned with, with the contract's
//! defaults.

use chat_core::Limits;
use std::net::IpAddr;
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
    /// Under load, the longest a fanned-out frame waits so that it leaves in one socket write
    /// with the frames after it. A frame to a connection that wrote within this period is held
    /// until the period has passed since the hold began or [`Config::ws_flush_batch`] frames
    /// are queued; a frame to a connection that has not written within it (a quiet chat, an
    /// idle node) goes out at once. Only fan-outs to many local connections are paced, and
    /// replies to the client's own frames are never held. Zero turns it off (every frame wakes
    /// its connection at once). See `ws::flush`.
    pub ws_flush_delay: Duration,
    /// A connection whose frames are held (see [`Config::ws_flush_delay`]) writes as soon as
    /// this many are queued, without waiting out the delay (at least 2).
    pub ws_flush_batch: usize,
    /// How often expired sessions are deleted from the metadata store.
    pub session_sweep_interval: Duration,
    /// How long `GET /v1/health` waits for each backend before calling it down.
    pub health_timeout: Duration,
    /// Further dependencies `GET /v1/health` checks, by the name it reports them under (e.g.
    /// `("cache", ..)` for the membership cache's Redis). Empty by default.
    pub health_checks: Vec<(String, std::sync::Arc<dyn crate::HealthCheck>)>,
    /// Limits against abuse: login, registration and send rates per address and account,
    /// connection caps and timeouts. See [`AbuseLimits`].
    pub abuse: AbuseLimits,
    /// Whether the message store stores concurrent appends in the order their
    /// `MessageStore::append` futures were first polled. SQLite's single writer thread does (its
    /// queue is FIFO); MySQL and Cassandra do not (concurrent appends race for the chat's next
    /// `seq`). When true, a WebSocket connection keeps several sends' appends in flight at once
    /// and they still get `seq`s in frame order; when false, it has one append in flight at a
    /// time (membership checks still overlap). `false` by default: see
    /// [`Config::ordered_appends_for`].
    pub ordered_appends: bool,
    /// How long a live message waits for a missing predecessor before the hub reads the gap
    /// from the store (live delivery is in `seq` order per chat on every connection). Only a
    /// message that arrives ahead of its predecessor waits; in-order messages never do.
    pub live_order_hold: Duration,
    /// Where presence is kept: `None` for this process alone (one node); a cluster shares one
    /// store (`presence::redis::RedisPresence`), so a user is online while connected to any
    /// node.
    pub presence: Option<std::sync::Arc<dyn crate::presence::PresenceStore>>,
    /// How long after a user's last connection closes they are announced offline: a reconnect
    /// within it is not a flap.
    pub presence_grace: Duration,
    /// Origins of browser apps served from elsewhere that may call the API (CORS), exactly as
    /// browsers send them (`https://app.example.com`, no path). Empty (the default): no CORS
    /// headers, so only pages served by this server itself (same origin) can use the API.
    pub cors_origins: Vec<String>,
    /// Serve HTTPS and WSS with this certificate instead of plain HTTP (`None`, the default).
    /// A plain-HTTP request to a TLS listener is answered with a plain 400 saying so.
    pub tls: Option<crate::TlsConfig>,
}

impl Config {
    /// The right [`Config::ordered_appends`] for a message store URL as `chat_storage::open`
    /// takes it: true for SQLite (`sqlite`, `sqlite://…`), false for anything else.
    pub fn ordered_appends_for(messages_url: &str) -> bool {
        let url = messages_url.trim().to_ascii_lowercase();
        url == "sqlite" || url.starts_with("sqlite?") || url.starts_with("sqlite://")
    }
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
            ws_flush_delay: Duration::from_millis(DEFAULT_FLUSH_DELAY_MS),
            ws_flush_batch: DEFAULT_FLUSH_BATCH,
            session_sweep_interval: Duration::from_secs(600),
            health_timeout: Duration::from_secs(3),
            health_checks: Vec::new(),
            abuse: AbuseLimits::default(),
            ordered_appends: false,
            live_order_hold: Duration::from_millis(50),
            presence: None,
            presence_grace: Duration::from_secs(5),
            cors_origins: Vec::new(),
            tls: None,
        }
    }
}

/// [`Config::ws_flush_delay`]'s default, in milliseconds (see docs/benchmarks.md, "Coalesced
/// writes").
pub const DEFAULT_FLUSH_DELAY_MS: u64 = 25;

/// [`Config::ws_flush_batch`]'s default (see docs/benchmarks.md, "Coalesced writes").
pub const DEFAULT_FLUSH_BATCH: usize = 4;

/// Checks one `--cors-origin`: a scheme (`http` or `https`), a host and an optional port, and
/// nothing else (browsers send the `Origin` header in exactly that form, so anything more
/// would never match). Returns it as browsers send it.
pub fn parse_cors_origin(origin: &str) -> Result<String, String> {
    let o = origin.trim();
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
        .ok_or_else(|| format!("CORS origin {o:?} must start with http:// or https://"))?;
    let valid_host = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !valid_host {
        return Err(format!(
            "CORS origin {o:?} must be scheme://host[:port] with no path, query or trailing slash"
        ));
    }
    Ok(o.to_ascii_lowercase())
}

/// A token bucket: `per_sec` tokens refill each second up to `burst`. A `per_sec` of 0 turns the
/// limit off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Sustained rate, in events per second (fractions allowed: 0.1 is six a minute).
    pub per_sec: f64,
    /// Events allowed at once.
    pub burst: u32,
}

impl RateLimit {
    /// No limit.
    pub const OFF: RateLimit = RateLimit {
        per_sec: 0.0,
        burst: 0,
    };

    /// `per_sec` sustained, `burst` at once.
    pub const fn new(per_sec: f64, burst: u32) -> RateLimit {
        RateLimit { per_sec, burst }
    }
}

/// Limits that keep one client, address or account from exhausting the server. The per-user
/// send rate is [`Limits::send_rate_per_sec`]; everything else hostile clients can drive is here.
///
/// Per-address limits key on the TCP peer's address, or, when the peer is one of
/// [`AbuseLimits::trusted_proxies`], on the client address that proxy reports in
/// `X-Forwarded-For`. Behind a proxy that is not listed, every client shares the proxy's address.
#[derive(Clone, Debug, PartialEq)]
pub struct AbuseLimits {
    /// Login attempts per client address. Each costs an argon2 hash, the most expensive thing
    /// an anonymous client can ask for.
    pub login_per_addr: RateLimit,
    /// Login attempts per account (email) from one client address: bounds password guessing
    /// against one account from each address, while someone guessing from one address cannot
    /// lock the owner out of their account from another (the owner's own address keeps its own
    /// allowance). Guessing spread over many addresses is bounded by the per-address limits and
    /// the bounded password hashing.
    pub login_per_account: RateLimit,
    /// Registrations per client address.
    pub register_per_addr: RateLimit,
    /// Lookups of a user by email (`GET /v1/users?email=`) per signed-in user, and the same
    /// limit per client address: an exact match tells whether an account exists, so it is
    /// limited like logins and cannot be used to list the users.
    pub email_lookups: RateLimit,
    /// Sends per client address, over all the users behind it (REST and WebSocket together).
    pub send_per_addr: RateLimit,
    /// Open WebSockets per user; one more upgrade gets 429 `rate_limited`. 0 means no cap.
    pub ws_per_user: usize,
    /// TCP connections served at once (HTTP and WebSocket). The accept loop waits for a free
    /// slot instead of accepting more, so the process never runs out of file descriptors or
    /// memory because of connections.
    pub max_connections: usize,
    /// TCP connections from one address at once (0: no cap). Connections from
    /// [`AbuseLimits::trusted_proxies`] are exempt (their clients are limited by the other
    /// per-address limits, on the address the proxy reports). Past it a new connection from
    /// that address is closed at once, so one address cannot take every slot of
    /// [`AbuseLimits::max_connections`] and health checks from elsewhere still get in.
    pub max_connections_per_addr: usize,
    /// Password hashes (argon2id, ~19 MiB each at the default cost) computed at once; 0 means
    /// one per CPU core. Logins and registrations beyond it wait in a short queue.
    pub password_hashes_at_once: usize,
    /// Logins and registrations that may wait for a hashing slot; past it (or after waiting
    /// 2 s) they are answered 429 `rate_limited` with `Retry-After`. Bounds the memory that
    /// anonymous clients can make the server hold.
    pub password_hash_queue: usize,
    /// How long a connection may take to send a request's headers, and how long a kept-alive
    /// connection may sit idle before its next request. A client that opens sockets and sends
    /// nothing holds them only this long. Not much shorter than clients' pool idle times: a
    /// client reusing a pooled connection just as it is closed sees a spurious error.
    pub header_read_timeout: Duration,
    /// How long one REST request (reading its body included) may take before it is answered
    /// with 408; stops slow-body clients from holding a connection.
    pub request_timeout: Duration,
    /// Proxies (e.g. the nginx in front) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for AbuseLimits {
    fn default() -> Self {
        AbuseLimits {
            login_per_addr: RateLimit::new(1.0, 30),
            login_per_account: RateLimit::new(0.2, 10),
            register_per_addr: RateLimit::new(0.5, 20),
            email_lookups: RateLimit::new(0.2, 20),
            send_per_addr: RateLimit::new(200.0, 1000),
            ws_per_user: 32,
            max_connections: 4096,
            max_connections_per_addr: 512,
            password_hashes_at_once: 0,
            password_hash_queue: 32,
            header_read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
        }
    }
}

impl AbuseLimits {
    /// The rate limits off and the caps raised, for test suites that register hundreds of users
    /// from one address; the timeouts and the connection cap stay at their defaults.
    pub fn unthrottled() -> Self {
        AbuseLimits {
            login_per_addr: RateLimit::OFF,
            login_per_account: RateLimit::OFF,
            register_per_addr: RateLimit::OFF,
            email_lookups: RateLimit::OFF,
            send_per_addr: RateLimit::OFF,
            ws_per_user: 0,
            max_connections_per_addr: 0,
            password_hash_queue: usize::MAX,
            ..AbuseLimits::default()
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

#[cfg(test)]
mod tests {
    use super::parse_cors_origin;

    #[test]
    fn cors_origins_are_scheme_host_and_port_only() {
        assert_eq!(
            parse_cors_origin(" https://App.Example.com ").as_deref(),
            Ok("https://app.example.com")
        );
        assert_eq!(
            parse_cors_origin("http://localhost:5173").as_deref(),
            Ok("http://localhost:5173")
        );
        assert_eq!(
            parse_cors_origin("http://[::1]:8080").as_deref(),
            Ok("http://[::1]:8080")
        );
        for bad in [
            "app.example.com",
            "ftp://app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://",
            "https://a b",
            "*",
        ] {
            assert!(parse_cors_origin(bad).is_err(), "{bad} must be refused");
        }
    }
}
