//! The MySQL / MariaDB store: users, sessions, chats, memberships and messages, on a primary for
//! writes and zero or more binlog replicas for reads.
//!
//! [`MysqlStore`] implements both [`MetadataStore`](chat_core::MetadataStore) and
//! [`MessageStore`](chat_core::MessageStore); a server may use it for either or both (the same URL
//! for both shares one instance, see [`crate::open`]). Open it with [`open_from_url`] or
//! [`MysqlStore::connect`]; at start-up it creates the database if it is missing and applies the
//! versioned migrations of [`schema`] (safe when several nodes start at once).
//!
//! # Layout
//! - [`schema`]: tables and migrations.
//! - `routing`: the bounded pools, timeouts, retries, and which server answers which read.
//! - `gate`: one append at a time per chat on a node, so a hot chat cannot hold the whole pool.
//! - `metadata`, `messages`: the two trait implementations.
//! - `error`: driver and server errors onto the contract's `Error`.
//! - `testing` (features `testing` + `mysql`): a fresh database per test.
//!
//! # Sequence numbers live with the messages
//! The seed sketch keeps `last_seq` on the Chats row. Here the counter is the `chat_seq` table
//! (`chat_id`, `last_seq`), owned by the message store, and `chats` has no `last_seq` column:
//! the message store may be a different database than the one holding `chats` (metadata in
//! SQLite, messages in MySQL), and a message store must not depend on rows it does not own. An
//! append is one transaction: `INSERT INTO chat_seq ... ON DUPLICATE KEY UPDATE last_seq =
//! last_seq + 1` (which creates the counter on a chat's first message and otherwise takes the
//! counter row's exclusive lock), the message row at that `seq`, `COMMIT`, and only then the
//! answer. The row lock serialises the appends of one chat until each commits, so `seq` is dense
//! and a `seq` becomes visible only after every smaller one. A retried send (same
//! `(chat_id, sender_id, client_msg_id)`) hits the unique dedupe key: the transaction rolls back
//! (the counter increment with it, so no hole) and the stored message is returned with
//! `created: false`; this also settles two identical retries racing each other. Deadlocks and
//! lock-wait timeouts are retried. Durability is InnoDB's with `innodb_flush_log_at_trx_commit=1`
//! and `sync_binlog=1` (what `scripts/mariadb.sh` configures): an acked message is on disk.
//!
//! # Revisions come from the same row
//! `chat_seq` also holds the chat's `last_rev`. The append's upsert increments `last_seq` and
//! `last_rev` together, and the message row's `INSERT ... SELECT` takes its `rev` from that
//! locked row (both values come back in OK packets via `LAST_INSERT_ID(expr)`, so an append
//! costs no extra round trip). A change (edit, delete, reaction) runs on the primary in one
//! transaction: `SELECT last_rev ... FOR UPDATE` on the counter row (the lock every append of the
//! chat takes), then the message row `FOR UPDATE`, [`chat_core::apply_change`], and, if it
//! changed anything, the new state with `rev = last_rev + 1` and the bumped counter, `COMMIT`. A
//! change that changes nothing writes nothing and takes no `rev`. Appends and changes of a chat
//! also take the same per-node turn (`gate`). So `rev`, like `seq`, is dense and a chat's
//! revisions commit in order. The change feed (`rev > after ORDER BY rev`, index
//! `messages_by_rev`) is read on the primary.
//!
//! # Replication rule: which reads may a replica answer
//! Writes always go to the primary. A read goes to a replica only when its answer is provably as
//! current as the primary's at the moment the read began; otherwise it goes to the primary. No
//! read ever returns something older than a write that was acknowledged before the read started,
//! whichever node made the write, so "read your writes" holds across nodes, not only per node.
//!
//! | Read | Server | Why |
//! |---|---|---|
//! | `session`, `role`, `members`, `user_credentials` | primary | authorization and login: a logout or a removal must take effect at once, a member just added must be able to read, a user just registered must be able to log in |
//! | `fetch` latest / `after_seq`, `last_seq(s)` | primary | a fetch right after a send must see it; catch-up reads must see the newest messages |
//! | `user`, `chat` | replica, self-evident | users and chats are never changed or deleted, so a row the replica has is current; a miss may be lag and is asked again on the primary |
//! | `fetch` before a `seq` (history pages) | replica, checked against the chat's `rev` | messages change (edits, deletes, reactions), so the store first reads the chat's `last_rev` on the primary (one primary-key row; skipped when no replica would be asked), then reads the page on the replica together with the replica's `last_rev` in the same statement; the page is used only if the replica's `last_rev` is at least the primary's (every append and change acked before the read is then in that snapshot: a chat's revisions commit in order and replicate in commit order) and the page is complete (its newest message is `before - 1` and it holds `min(limit, before - 1)` messages); anything else is asked again on the primary |
//! | `changes` (the change feed) | primary | catch-up must reach the newest change |
//! | `activity` (the chat list) | primary | it shows `last_seq`, the newest message and the tombstones above a marker: never less than what a client was already answered for; two primary-key statements in one consistent snapshot per list |
//! | `chats_of_user` | replica, causal | the store reads the primary's `@@gtid_binlog_pos` (every acked commit is at or below it), waits with `MASTER_GTID_WAIT(pos, replica_wait)` on the replica, then reads there; on timeout the primary answers |
//!
//! A replica that is down, times out or lags beyond `replica_wait` is skipped for
//! `replica_cooldown` and its reads go to the primary: a replica never breaks reads, it only
//! takes load off the primary. [`MysqlStore::replica_stats`] counts which server answered.
//! Replica routing relies on MariaDB's GTID functions (`@@gtid_binlog_pos`, `MASTER_GTID_WAIT`);
//! on a server without them replica reads fail over to the primary.
//!
//! # Failures
//! Every pool is bounded; taking a connection (including connecting) times out after
//! `acquire_timeout` and each operation after `op_timeout`, so a database that is down answers
//! [`Error::Unavailable`] within seconds instead of hanging.
//! Broken connections are dropped by the pool, which connects again when the server is back: no
//! restart or manual step is needed. An append that times out after sending `COMMIT` may or may
//! not be stored; the client's retry with the same `client_msg_id` finds out without a duplicate.

mod error;
mod gate;
mod messages;
mod metadata;
mod routing;
pub mod schema;
mod search;
#[cfg(feature = "testing")]
pub mod testing;

use chat_core::{Error, Result};
use error::{bad_row, Failure};
use mysql_async::prelude::{FromRow, Queryable};
use mysql_async::{Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, Row};
use routing::{Pools, Timeouts};
use std::sync::Arc;
use std::time::Duration;

/// The database used when a URL names none.
pub const DEFAULT_DATABASE: &str = "chat";

/// How to reach the primary and the replicas, and how patient to be.
#[derive(Clone, Debug)]
pub struct MysqlConfig {
    /// `mysql://user:password@host:port/database` of the primary (all writes, current reads).
    /// Without a database the store uses [`DEFAULT_DATABASE`].
    pub primary_url: String,
    /// URLs of read replicas of the primary. A replica URL without a database uses the
    /// primary's database.
    pub replica_urls: Vec<String>,
    /// Most connections to the primary (per store instance).
    pub primary_pool_size: usize,
    /// Most connections to each replica.
    pub replica_pool_size: usize,
    /// Longest wait for a pooled connection, connecting included: how fast a down database
    /// answers `Unavailable`.
    pub acquire_timeout: Duration,
    /// Longest time one attempt of one operation may take once it has a connection.
    pub op_timeout: Duration,
    /// Longest wait for a replica to catch up with the primary before a causal read goes to the
    /// primary.
    pub replica_wait: Duration,
    /// How long a replica that failed or lagged is left alone.
    pub replica_cooldown: Duration,
}

impl MysqlConfig {
    /// A configuration with the default pool sizes and timeouts.
    pub fn new(primary_url: impl Into<String>, replica_urls: Vec<String>) -> MysqlConfig {
        MysqlConfig {
            primary_url: primary_url.into(),
            replica_urls,
            primary_pool_size: 16,
            replica_pool_size: 8,
            acquire_timeout: Duration::from_secs(3),
            op_timeout: Duration::from_secs(10),
            replica_wait: Duration::from_millis(500),
            replica_cooldown: Duration::from_secs(5),
        }
    }
}

/// Which server answered the reads a replica may serve (see the replication rule in the module
/// doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Reads a replica answered.
    pub replica_reads: u64,
    /// Replica-eligible reads the primary answered (replica down, lagging, or its answer could
    /// not be proven current).
    pub primary_fallbacks: u64,
}

/// The MySQL / MariaDB store; see the module doc.
pub struct MysqlStore {
    /// The pools and the routing of reads.
    pools: Pools,
    /// One append at a time per chat on this node (see `gate`).
    append_gates: gate::ChatGates,
    /// The database name (for logs and health).
    database: String,
}

impl std::fmt::Debug for MysqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlStore")
            .field("database", &self.database)
            .field("replicas", &self.pools.has_replicas())
            .finish_non_exhaustive()
    }
}

/// Opens the store for a primary URL and replica URLs with the default settings; what the URL
/// dispatch of [`crate::open`] calls.
pub async fn open_from_url(primary: &str, replicas: &[String]) -> Result<Arc<MysqlStore>> {
    MysqlStore::connect(MysqlConfig::new(primary, replicas.to_vec()))
        .await
        .map(Arc::new)
}

impl MysqlStore {
    /// Connects to the primary, creates the database if missing, applies the migrations, and
    /// sets up the replica pools (replicas are not contacted here: one that is down only sends
    /// its reads to the primary).
    ///
    /// A malformed URL is [`Error::InvalidArgument`]; a primary that cannot be reached is
    /// [`Error::Unavailable`].
    pub async fn connect(config: MysqlConfig) -> Result<MysqlStore> {
        let primary_opts = parse_url(&config.primary_url)?;
        let database = primary_opts
            .db_name()
            .unwrap_or(DEFAULT_DATABASE)
            .to_owned();
        check_database_name(&database)?;

        create_database(&primary_opts, &database, config.acquire_timeout).await?;
        let primary = pool(&primary_opts, &database, config.primary_pool_size);
        let mut replicas = Vec::with_capacity(config.replica_urls.len());
        for url in &config.replica_urls {
            let opts = parse_url(url)?;
            let db = opts.db_name().unwrap_or(&database).to_owned();
            check_database_name(&db)?;
            let label = format!("{}:{}/{}", opts.ip_or_hostname(), opts.tcp_port(), db);
            replicas.push((pool(&opts, &db, config.replica_pool_size), label));
        }
        let pools = Pools::new(
            primary,
            replicas,
            Timeouts {
                acquire: config.acquire_timeout,
                op: config.op_timeout,
                replica_wait: config.replica_wait,
                replica_cooldown: config.replica_cooldown,
            },
        );
        let db = database.clone();
        // Migrations wait up to 30 s for another node's lock, beyond the usual operation timeout.
        let mut conn = pools
            .conn(&pools.primary)
            .await
            .map_err(|f| f.into_error("migrate"))?;
        schema::migrate(&mut conn, &db)
            .await
            .map_err(|f| f.into_error("migrate"))?;
        drop(conn);
        tracing::info!(database = %database, replicas = config.replica_urls.len(), "mysql: store open");
        Ok(MysqlStore {
            pools,
            append_gates: gate::ChatGates::default(),
            database,
        })
    }

    /// The database this store works in.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Which server answered the replica-eligible reads so far.
    pub fn replica_stats(&self) -> ReplicaStats {
        self.pools.stats()
    }

    /// Closes every connection (waiting for those in use). Dropping the store also closes them,
    /// without waiting.
    pub async fn close(self) -> Result<()> {
        self.pools.disconnect().await
    }
}

/// Parses a `mysql://` URL; a bad one is the caller's mistake.
fn parse_url(url: &str) -> Result<Opts> {
    Opts::from_url(url).map_err(|e| {
        Error::InvalidArgument(format!(
            "bad MySQL URL (expected mysql://user:password@host:port/database): {e}"
        ))
    })
}

/// Database names are spliced into `CREATE DATABASE`; allow only what needs no quoting.
fn check_database_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "MySQL database name {name:?}: use 1 to 64 of [A-Za-z0-9_$]"
        )))
    }
}

/// Statements every new connection runs: strict mode so that data never gets silently
/// truncated, utf8mb4 on the wire, and bounded lock waits whatever the server's default.
const CONNECTION_SETUP: &[&str] = &[
    "SET NAMES utf8mb4",
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ENGINE_SUBSTITUTION,ERROR_FOR_DIVISION_BY_ZERO'",
    "SET SESSION innodb_lock_wait_timeout = 10",
];

/// A bounded pool for `opts`, in `database`.
fn pool(opts: &Opts, database: &str, max: usize) -> Pool {
    let max = max.max(1);
    let constraints = PoolConstraints::new(1, max).unwrap_or_default();
    let pool_opts = PoolOpts::default()
        .with_constraints(constraints)
        // Our code leaves no session state behind (every transaction ends), so skip the
        // COM_RESET_CONNECTION round trip on every return to the pool.
        .with_reset_connection(false)
        .with_inactive_connection_ttl(Duration::from_secs(60));
    let builder = OptsBuilder::from_opts(opts.clone())
        .db_name(Some(database))
        // TCP, not the server's Unix socket: the pool can then tell a dead idle connection (the
        // server restarted) from a live one before handing it out.
        .prefer_socket(false)
        .init(CONNECTION_SETUP.to_vec())
        .pool_opts(pool_opts);
    Pool::new(builder)
}

/// Creates `database` on the primary if it does not exist. A user without the right to create
/// databases can still use an existing one, so "access denied" here is not fatal.
async fn create_database(opts: &Opts, database: &str, timeout: Duration) -> Result<()> {
    let builder = OptsBuilder::from_opts(opts.clone())
        .db_name(None::<String>)
        .prefer_socket(false);
    let work = async {
        let mut conn = mysql_async::Conn::new(builder).await?;
        let r = conn
            .query_drop(format!(
                "CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            ))
            .await;
        // Closing politely is best effort; the server cleans up a dropped connection too.
        let _ = conn.disconnect().await;
        r
    };
    match tokio::time::timeout(timeout * 2, work).await {
        Err(_) => Err(Failure::Timeout("connecting to the primary").into_error("open")),
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if matches!(error::server_code(&e), Some(1044 | 1045 | 1227)) => {
            tracing::warn!(database, error = %e, "mysql: cannot create the database; assuming it exists");
            Ok(())
        }
        Ok(Err(e)) => Err(error::db_error("create database", e)),
    }
}

/// Decodes a row into `T` without panicking on unexpected column types.
fn decode<T: FromRow>(what: &str, row: Row) -> Result<T, Failure> {
    mysql_async::from_row_opt(row).map_err(|e| bad_row(what, e))
}

/// The single column of an optional row, decoded without panicking.
fn scalar<T: mysql_async::prelude::FromValue>(
    what: &str,
    row: Option<Row>,
) -> Result<Option<T>, Failure> {
    match row {
        None => Ok(None),
        Some(row) => decode::<(T,)>(what, row).map(|(v,)| Some(v)),
    }
}
