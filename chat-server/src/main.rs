//! The `chat-server` binary: parses flags (and their environment variables), opens the
//! configured stores and broker, and serves until SIGTERM or Ctrl-C, then shuts down gracefully.
//!
//! With no flags it serves on 127.0.0.1:8080 with everything in SQLite under `./chat-data/`.

use anyhow::Context as _;
use chat_core::{Broker, Limits};
use chat_server::broker::LocalBroker;
use chat_server::{AbuseLimits, Config, RateLimit, Server, TlsConfig};
use chat_storage::open::{open, StoreConfig};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// jemalloc rather than the system allocator (the `jemalloc` feature, on by default): an idle
/// WebSocket costs about a quarter less resident memory than under glibc's malloc, at the same
/// throughput (docs/benchmarks.md, "Connections").
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Group chat server: REST and WebSocket.
#[derive(Debug, Parser)]
#[command(name = "chat-server", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Serve HTTPS and WSS with this PEM certificate chain (leaf first); needs --tls-key.
    /// Without both, the server speaks plain HTTP (e.g. behind a proxy that terminates TLS).
    #[arg(long, env = "CHAT_TLS_CERT", requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1); needs --tls-cert.
    #[arg(long, env = "CHAT_TLS_KEY", requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,

    /// Directory for embedded (SQLite) data.
    #[arg(long, env = "CHAT_DATA_DIR", default_value = "./chat-data")]
    data_dir: PathBuf,

    /// Metadata store (users, sessions, chats): `sqlite` or a `mysql://` URL. SQLite takes
    /// options: `sqlite?commit_delay=1ms` (how long a small batch may wait for more writes
    /// under steady load; default 5ms, `0` off).
    #[arg(long, env = "CHAT_METADATA", default_value = "sqlite")]
    metadata: String,

    /// Read replica of the metadata store (repeatable).
    #[arg(
        long = "metadata-replica",
        env = "CHAT_METADATA_REPLICAS",
        value_delimiter = ','
    )]
    metadata_replicas: Vec<String>,

    /// Message store: `sqlite`, a `mysql://` or a `cassandra://` URL.
    #[arg(long, env = "CHAT_MESSAGES", default_value = "sqlite")]
    messages: String,

    /// Broker between nodes: `local` (one node, in-process) or a Redis URL such as
    /// `redis://127.0.0.1:6390` for a cluster (feature `redis`).
    #[arg(long, env = "CHAT_BROKER", default_value = "local")]
    broker: String,

    /// Redis cache and key prefix flags (see `ClusterArgs`).
    #[command(flatten)]
    cluster: ClusterArgs,

    /// This node's name in health answers and logs (default: hostname-pid).
    #[arg(long, env = "CHAT_NODE_ID")]
    node_id: Option<String>,

    /// Log filter, e.g. `info` or `chat_server=debug,tower_http=info`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,

    /// Sustained sends per second per user (0 turns the limit off).
    #[arg(long, env = "CHAT_SEND_RATE", default_value_t = Limits::default().send_rate_per_sec)]
    send_rate: u32,

    /// Sends a user may make in a burst.
    #[arg(long, env = "CHAT_SEND_BURST", default_value_t = Limits::default().send_burst)]
    send_burst: u32,

    /// Maximum members of one chat.
    #[arg(long, env = "CHAT_MAX_MEMBERS", default_value_t = Limits::default().max_members)]
    max_members: usize,

    /// Maximum REST request body, in bytes.
    #[arg(long, env = "CHAT_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: usize,

    /// Maximum WebSocket frame, in bytes.
    #[arg(long, env = "CHAT_MAX_FRAME_BYTES", default_value_t = Limits::default().max_frame_bytes)]
    max_frame_bytes: usize,

    /// Frames queued per WebSocket before the connection is closed as a slow consumer.
    #[arg(long, env = "CHAT_OUTBOUND_QUEUE", default_value_t = Config::default().outbound_queue)]
    outbound_queue: usize,

    /// Under load, the longest (milliseconds) a fanned-out frame waits to leave in one socket
    /// write with the frames after it: a frame to a connection that wrote within this period is
    /// held until it has passed or --ws-flush-batch frames are queued. A frame to a connection
    /// that has not written within it goes out at once; replies are never held. 0 turns it off.
    #[arg(long, env = "CHAT_WS_FLUSH_DELAY_MS", default_value_t = chat_server::config::DEFAULT_FLUSH_DELAY_MS)]
    ws_flush_delay_ms: u64,

    /// Frames that end a hold early (see --ws-flush-delay-ms): a held connection writes as soon
    /// as this many are queued.
    #[arg(long, env = "CHAT_WS_FLUSH_BATCH", default_value_t = chat_server::config::DEFAULT_FLUSH_BATCH)]
    ws_flush_batch: usize,

    /// Session lifetime in seconds.
    #[arg(long, env = "CHAT_SESSION_TTL_SECS", default_value_t = Config::default().session_ttl.as_secs())]
    session_ttl_secs: u64,

    /// Seconds a graceful shutdown waits for requests and connections to finish.
    #[arg(long, env = "CHAT_SHUTDOWN_GRACE_SECS", default_value_t = Config::default().shutdown_grace.as_secs())]
    shutdown_grace_secs: u64,

    /// Milliseconds after a user's last connection closes before they are announced offline
    /// (a reconnect within it is not a flap).
    #[arg(long, env = "CHAT_PRESENCE_GRACE_MS", default_value_t = 5_000)]
    presence_grace_ms: u64,

    #[command(flatten)]
    abuse: AbuseArgs,
}

/// Abuse limits (see `chat_server::AbuseLimits`); a rate of 0 turns that limit off.
#[derive(Debug, clap::Args)]
struct AbuseArgs {
    /// Login attempts per second per client address.
    #[arg(long, env = "CHAT_LOGIN_RATE", default_value_t = AbuseLimits::default().login_per_addr.per_sec)]
    login_rate: f64,
    /// Login attempts per client address at once.
    #[arg(long, env = "CHAT_LOGIN_BURST", default_value_t = AbuseLimits::default().login_per_addr.burst)]
    login_burst: u32,
    /// Login attempts per second per account (email), from any address.
    #[arg(long, env = "CHAT_LOGIN_ACCOUNT_RATE", default_value_t = AbuseLimits::default().login_per_account.per_sec)]
    login_account_rate: f64,
    /// Login attempts per account at once.
    #[arg(long, env = "CHAT_LOGIN_ACCOUNT_BURST", default_value_t = AbuseLimits::default().login_per_account.burst)]
    login_account_burst: u32,
    /// Registrations per second per client address.
    #[arg(long, env = "CHAT_REGISTER_RATE", default_value_t = AbuseLimits::default().register_per_addr.per_sec)]
    register_rate: f64,
    /// Registrations per client address at once.
    #[arg(long, env = "CHAT_REGISTER_BURST", default_value_t = AbuseLimits::default().register_per_addr.burst)]
    register_burst: u32,
    /// Sends per second per client address (all its users together).
    #[arg(long, env = "CHAT_SEND_ADDR_RATE", default_value_t = AbuseLimits::default().send_per_addr.per_sec)]
    send_addr_rate: f64,
    /// Sends per client address at once.
    #[arg(long, env = "CHAT_SEND_ADDR_BURST", default_value_t = AbuseLimits::default().send_per_addr.burst)]
    send_addr_burst: u32,
    /// Lookups of users by email per second, per user and per client address.
    #[arg(long, env = "CHAT_EMAIL_LOOKUP_RATE", default_value_t = AbuseLimits::default().email_lookups.per_sec)]
    email_lookup_rate: f64,
    /// Lookups of users by email at once.
    #[arg(long, env = "CHAT_EMAIL_LOOKUP_BURST", default_value_t = AbuseLimits::default().email_lookups.burst)]
    email_lookup_burst: u32,
    /// Open WebSockets per user (0: no cap).
    #[arg(long, env = "CHAT_WS_PER_USER", default_value_t = AbuseLimits::default().ws_per_user)]
    ws_per_user: usize,
    /// TCP connections served at once; more wait in the listen backlog.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = AbuseLimits::default().max_connections)]
    max_connections: usize,
    /// TCP connections from one address at once (0: no cap; trusted proxies are exempt).
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_ADDR", default_value_t = AbuseLimits::default().max_connections_per_addr)]
    max_connections_per_addr: usize,
    /// Password hashes computed at once (0: one per core).
    #[arg(long, env = "CHAT_PASSWORD_HASHES_AT_ONCE", default_value_t = AbuseLimits::default().password_hashes_at_once)]
    password_hashes_at_once: usize,
    /// Logins and registrations waiting for a hashing slot before 429.
    #[arg(long, env = "CHAT_PASSWORD_HASH_QUEUE", default_value_t = AbuseLimits::default().password_hash_queue)]
    password_hash_queue: usize,
    /// Seconds a connection may take to send request headers (or idle between requests).
    #[arg(long, env = "CHAT_HEADER_TIMEOUT_SECS", default_value_t = AbuseLimits::default().header_read_timeout.as_secs())]
    header_timeout_secs: u64,
    /// Seconds one REST request may take, body included, before a 408.
    #[arg(long, env = "CHAT_REQUEST_TIMEOUT_SECS", default_value_t = AbuseLimits::default().request_timeout.as_secs())]
    request_timeout_secs: u64,
    /// An origin of a browser app on another site that may call the API, e.g.
    /// `https://app.example.com` (repeatable or comma-separated). Default: none (same origin).
    #[arg(long = "cors-origin", env = "CHAT_CORS_ORIGINS", value_delimiter = ',', value_parser = chat_server::config::parse_cors_origin)]
    cors_origins: Vec<String>,
    /// A proxy whose X-Forwarded-For is believed (repeatable; e.g. the nginx in front).
    #[arg(
        long = "trusted-proxy",
        env = "CHAT_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<std::net::IpAddr>,
}

impl AbuseArgs {
    fn limits(&self) -> AbuseLimits {
        AbuseLimits {
            login_per_addr: RateLimit::new(self.login_rate, self.login_burst),
            login_per_account: RateLimit::new(self.login_account_rate, self.login_account_burst),
            register_per_addr: RateLimit::new(self.register_rate, self.register_burst),
            send_per_addr: RateLimit::new(self.send_addr_rate, self.send_addr_burst),
            email_lookups: RateLimit::new(self.email_lookup_rate, self.email_lookup_burst),
            ws_per_user: self.ws_per_user,
            max_connections: self.max_connections,
            max_connections_per_addr: self.max_connections_per_addr,
            password_hashes_at_once: self.password_hashes_at_once,
            password_hash_queue: self.password_hash_queue,
            header_read_timeout: Duration::from_secs(self.header_timeout_secs.max(1)),
            request_timeout: Duration::from_secs(self.request_timeout_secs.max(1)),
            trusted_proxies: self.trusted_proxies.clone(),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log).context("parsing --log")?)
        .init();
    // Before anything else is opened: a bad certificate should stop the start at once.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsConfig::from_pem_files(cert, key)?),
        (None, None) => None,
        // clap's `requires` already refuses one without the other.
        _ => anyhow::bail!("--tls-cert and --tls-key go together: give both or neither"),
    };

    let defaults = Config::default();
    let config = Config {
        node_id: args.node_id.clone().unwrap_or(defaults.node_id.clone()),
        limits: Limits {
            send_rate_per_sec: args.send_rate,
            send_burst: args.send_burst,
            max_members: args.max_members,
            max_body_bytes: args.max_body_bytes,
            max_frame_bytes: args.max_frame_bytes,
            ..Limits::default()
        },
        session_ttl: Duration::from_secs(args.session_ttl_secs),
        outbound_queue: args.outbound_queue,
        ws_flush_delay: Duration::from_millis(args.ws_flush_delay_ms),
        ws_flush_batch: args.ws_flush_batch,
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        abuse: args.abuse.limits(),
        ordered_appends: Config::ordered_appends_for(&args.messages),
        presence_grace: Duration::from_millis(args.presence_grace_ms),
        cors_origins: args.abuse.cors_origins.clone(),
        tls,
        ..defaults
    };

    let store_config = StoreConfig {
        metadata: args.metadata.clone(),
        metadata_replicas: args
            .metadata_replicas
            .iter()
            .filter(|s| !s.trim().is_empty())
            .cloned()
            .collect(),
        messages: args.messages.clone(),
        data_dir: args.data_dir.clone(),
    };
    let stores = open(&store_config).await.context("opening the stores")?;
    let broker = open_broker(&args.broker, &args.cluster).await?;
    let (metadata, health_checks) =
        wrap_cache(stores.metadata, &args.broker, &args.cluster).await?;
    let presence = open_presence(&args.broker, &args.cluster).await?;
    let config = Config {
        health_checks,
        presence,
        ..config
    };

    let server = Server::new(metadata, stores.messages, broker, config);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    println!("chat-server listening on {scheme}://{addr}");
    server.serve(listener, shutdown_signal()).await
}

// ---- Cluster wiring (issue 5): the broker and the membership cache. ----

/// Flags of a node in a cluster: Redis key prefix and the membership cache.
#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// Prefix of every Redis channel and key, so several clusters can share one Redis.
    #[arg(long, env = "CHAT_REDIS_PREFIX", default_value = "chat:")]
    redis_prefix: String,

    /// User and membership cache in Redis (plus a small in-process cache): a Redis URL, or
    /// `off`. Needs the `redis` feature.
    #[arg(long, env = "CHAT_CACHE", default_value = "off")]
    cache: String,

    /// Use the broker's Redis (`--broker redis://...`) for the cache too.
    #[arg(long, env = "CHAT_CACHE_REDIS", conflicts_with = "cache")]
    cache_redis: bool,

    /// Longest an in-process cache entry lives, in milliseconds: the bound after which a
    /// member removed on another node can no longer read or send here.
    #[arg(long, env = "CHAT_CACHE_LOCAL_TTL_MS", default_value_t = 2000)]
    cache_local_ttl_ms: u64,
}

fn is_redis_url(s: &str) -> bool {
    s.starts_with("redis://") || s.starts_with("rediss://")
}

/// The broker named by `--broker`.
async fn open_broker(spec: &str, cluster: &ClusterArgs) -> anyhow::Result<Arc<dyn Broker>> {
    match spec {
        "local" => Ok(Arc::new(LocalBroker::new())),
        s if is_redis_url(s) => {
            #[cfg(feature = "redis")]
            {
                let broker =
                    chat_server::broker::redis::RedisBroker::connect(s, &cluster.redis_prefix)
                        .await
                        .with_context(|| format!("connecting the Redis broker at {s}"))?;
                tracing::info!(url = s, prefix = %cluster.redis_prefix, "Redis broker");
                Ok(Arc::new(broker))
            }
            #[cfg(not(feature = "redis"))]
            {
                let _ = cluster;
                anyhow::bail!("this build has no Redis broker; rebuild with `--features redis`")
            }
        }
        other => anyhow::bail!("unknown broker {other:?}; expected `local` or a redis:// URL"),
    }
}

/// Presence for a cluster: in the broker's Redis when the broker is Redis (every node must see
/// the same), else in process (`None`).
async fn open_presence(
    broker: &str,
    cluster: &ClusterArgs,
) -> anyhow::Result<Option<Arc<dyn chat_server::presence::PresenceStore>>> {
    if !is_redis_url(broker) {
        return Ok(None);
    }
    #[cfg(feature = "redis")]
    {
        let p = chat_server::presence::redis::RedisPresence::connect(broker, &cluster.redis_prefix)
            .await
            .context("connecting presence to Redis")?;
        Ok(Some(Arc::new(p)))
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = cluster;
        anyhow::bail!("this build has no Redis support; rebuild with `--features redis`")
    }
}

/// Wraps the metadata store in the membership cache when `--cache` (or `--cache-redis`) asks
/// for it; returns the store to serve and the health checks the cache adds.
async fn wrap_cache(
    metadata: Arc<dyn chat_core::MetadataStore>,
    broker: &str,
    cluster: &ClusterArgs,
) -> anyhow::Result<(
    Arc<dyn chat_core::MetadataStore>,
    Vec<(String, Arc<dyn chat_server::HealthCheck>)>,
)> {
    let url = if cluster.cache_redis {
        if !is_redis_url(broker) {
            anyhow::bail!("--cache-redis needs a Redis broker (--broker redis://...)");
        }
        broker.to_owned()
    } else {
        match cluster.cache.as_str() {
            "off" | "" => return Ok((metadata, Vec::new())),
            s if is_redis_url(s) => s.to_owned(),
            other => anyhow::bail!("unknown cache {other:?}; expected `off` or a redis:// URL"),
        }
    };
    #[cfg(feature = "redis")]
    {
        use chat_server::cache::{CacheConfig, CachedMetadataStore};
        let config = CacheConfig {
            redis_url: url.clone(),
            prefix: cluster.redis_prefix.clone(),
            local_ttl: Duration::from_millis(cluster.cache_local_ttl_ms.max(1)),
            ..CacheConfig::default()
        };
        let cached = Arc::new(
            CachedMetadataStore::connect(metadata, config)
                .await
                .with_context(|| format!("connecting the Redis cache at {url}"))?,
        );
        tracing::info!(
            url,
            local_ttl_ms = cluster.cache_local_ttl_ms,
            "membership cache"
        );
        let check: Arc<dyn chat_server::HealthCheck> = cached.clone();
        Ok((cached, vec![("cache".to_owned(), check)]))
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = (metadata, url);
        anyhow::bail!("this build has no Redis cache; rebuild with `--features redis`")
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}
