//! The keyspace, its tables and their versioned migrations.
//!
//! `connect` creates the keyspace if it is missing (with the configured replication), then the
//! `schema_migrations` table, then applies every migration this code knows and the keyspace has
//! not recorded yet. A migration is claimed with a lightweight transaction on its row in
//! `schema_migrations`, so several servers starting at once do not run the same DDL at the same
//! time (concurrent `CREATE TABLE` of one table on two coordinators is what Cassandra handles
//! worst); a claim whose owner died is taken over after [`STALE_CLAIM`]. Every DDL step waits for
//! schema agreement, so the prepared statements that follow see the same schema on every node.
//!
//! The bucket size is stored in `store_settings` the first time, by a lightweight transaction:
//! it decides which partition every message lives in, so it can never change under existing data.

use super::config::CassandraConfig;
use super::error;
use chat_core::{Error, Result};
use scylla::client::session::Session;
use scylla::frame::types::Consistency;
use scylla::statement::prepared::PreparedStatement;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A claim older than this whose owner has not finished is presumed dead and taken over.
const STALE_CLAIM: Duration = Duration::from_secs(120);

/// Longest wait for another process's migration before giving up.
const MIGRATION_WAIT: Duration = Duration::from_secs(300);

/// One schema version: its number, what it does, and its DDL (`{ks}` is the keyspace).
struct Migration {
    version: i32,
    description: &'static str,
    statements: &'static [&'static str],
}

/// Every migration, in order. Never edit one that has shipped; add a new version instead.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "messages by (chat_id, bucket), dedupe keys, chat heads, settings",
        statements: &[
            // Settings that must never change under existing data (the bucket size).
            "CREATE TABLE IF NOT EXISTS {ks}.store_settings (
            name text PRIMARY KEY,
            value bigint)",
            // The message table of the seed: one partition per (chat, bucket of BUCKET_SIZE seqs),
            // so a partition stays bounded and the partition of any seq is known without a lookup.
            "CREATE TABLE IF NOT EXISTS {ks}.messages (
            chat_id bigint,
            bucket bigint,
            seq bigint,
            sender_id bigint,
            msg_text text,
            sent_at bigint,
            timestamp bigint,
            client_msg_id text,
            PRIMARY KEY ((chat_id, bucket), seq))
          WITH CLUSTERING ORDER BY (seq ASC)",
            // (chat, sender, client_msg_id) -> seq of every stored message that has a client_msg_id.
            "CREATE TABLE IF NOT EXISTS {ks}.message_dedupe (
            chat_id bigint,
            sender_id bigint,
            client_msg_id text,
            seq bigint,
            PRIMARY KEY ((chat_id, sender_id, client_msg_id)))",
            // One row per chat, written only by lightweight transactions: the last seq handed out
            // and the messages of the claim that handed it out (each as sender_id, msg_text,
            // sent_at, timestamp, client_msg_id; seqs last_seq - len + 1 ..= last_seq), kept until
            // the next claim has made sure they are in `messages` (see the module doc).
            "CREATE TABLE IF NOT EXISTS {ks}.chat_heads (
            chat_id bigint PRIMARY KEY,
            last_seq bigint,
            pending frozen<list<frozen<tuple<bigint, text, bigint, bigint, text>>>>)",
        ],
    },
    Migration {
        version: 2,
        description:
            "messages that change: replies, edits, deletes, reactions, revisions, the feed",
        // `ADD IF NOT EXISTS` (Cassandra 4.1+): a migration that died half-way can run again.
        // A null in a new column means what the data meant before: a message without `rev` has
        // `rev = seq`, a head without `last_rev` has `last_rev = last_seq` (its `pending` is the
        // last claim, as version 1 wrote it). See the module doc of `cassandra`.
        statements: &[
            "ALTER TABLE {ks}.messages ADD IF NOT EXISTS reply_to_seq bigint",
            "ALTER TABLE {ks}.messages ADD IF NOT EXISTS edited_at bigint",
            "ALTER TABLE {ks}.messages ADD IF NOT EXISTS deleted boolean",
            // (emoji, user ids in the order they reacted), ordered by first use; one cell, so a
            // change replaces it whole and the write with the newer timestamp wins.
            "ALTER TABLE {ks}.messages ADD IF NOT EXISTS reactions \
            frozen<list<frozen<tuple<text, frozen<list<bigint>>>>>>",
            "ALTER TABLE {ks}.messages ADD IF NOT EXISTS rev bigint",
            // The revision counter next to last_seq (every append and every change takes the next).
            "ALTER TABLE {ks}.chat_heads ADD IF NOT EXISTS last_rev bigint",
            // The last claim, replacing `pending` (which this version sets to null, so a process of
            // version 1 can no longer claim: its condition `pending = ...` never holds again):
            // (write timestamp, appended messages as (sender_id, msg_text, sent_at, timestamp,
            // client_msg_id, reply_to_seq), changed seq, its new state as (msg_text, edited_at,
            // deleted, reactions)). Either the messages or the change is set.
            "ALTER TABLE {ks}.chat_heads ADD IF NOT EXISTS claim frozen<tuple<
            bigint,
            frozen<list<frozen<tuple<bigint, text, bigint, bigint, text, bigint>>>>,
            bigint,
            frozen<tuple<text, bigint, boolean,
                frozen<list<frozen<tuple<text, frozen<list<bigint>>>>>>>>>>",
            // Revisions 1..=implicit_revs are those of messages stored before version 2 (rev = seq):
            // the feed reads them from `messages`; every later one is in `message_revs`.
            "ALTER TABLE {ks}.chat_heads ADD IF NOT EXISTS implicit_revs bigint",
            // The change feed: revision -> seq, by (chat, bucket of revisions), written with the
            // claim that took the revision.
            "CREATE TABLE IF NOT EXISTS {ks}.message_revs (
            chat_id bigint,
            bucket bigint,
            rev bigint,
            seq bigint,
            PRIMARY KEY ((chat_id, bucket), rev))
          WITH CLUSTERING ORDER BY (rev ASC)",
        ],
    },
    Migration {
        version: 3,
        description: "message tombstones: each chat's deleted seqs, for unread counts",
        // One row per deleted message, written with the delete claim (same write timestamp, so
        // every writer of the claim writes the same row): the chat list counts a chat's
        // tombstones above a reader's marker here instead of reading its messages. One
        // partition per chat: deletes are few next to messages. Deletes made before this version
        // have no row here until their claim is written out again (see `activity`).
        statements: &["CREATE TABLE IF NOT EXISTS {ks}.message_tombstones (
            chat_id bigint,
            seq bigint,
            PRIMARY KEY ((chat_id), seq))
          WITH CLUSTERING ORDER BY (seq ASC)"],
    },
    Migration {
        version: SEARCH_VERSION,
        description: "message search: a terms set per message with a Storage-Attached Index",
        // Cassandra 5.0's SAI has no analyzer: the store writes each message's terms (chat-core's
        // tokenizer) with its text, and a search asks `terms CONTAINS` per chat partition. See
        // `search.rs`. The messages written before this version get their terms from
        // `search::backfill`, run after these statements and before the version is recorded.
        statements: &[
            "ALTER TABLE {ks}.messages ADD IF NOT EXISTS terms set<text>",
            "CREATE CUSTOM INDEX IF NOT EXISTS messages_terms ON {ks}.messages (values(terms)) \
             USING 'StorageAttachedIndex'",
        ],
    },
];

/// The migration that adds search (its backfill runs after its statements).
const SEARCH_VERSION: i32 = 4;

/// The current schema version this code expects.
pub(crate) fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Creates the keyspace and applies pending migrations; returns the bucket size in force.
pub(crate) async fn migrate(session: &Session, config: &CassandraConfig) -> Result<i64> {
    let ks = &config.keyspace;
    ddl(
        session,
        &format!(
            "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {} AND durable_writes = true",
            config.replication.cql()
        ),
    )
    .await?;
    ddl(
        session,
        &format!(
            "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations (
                version int PRIMARY KEY,
                description text,
                owner text,
                done boolean,
                updated_at bigint)"
        ),
    )
    .await?;

    let stmts = MigrationStatements::prepare(session, config).await?;
    let owner = owner_id();
    for migration in MIGRATIONS {
        apply(session, &stmts, migration, ks, &owner).await?;
    }
    bucket_size(session, config).await
}

/// Runs one DDL statement and waits until every node agrees on the schema.
async fn ddl(session: &Session, cql: &str) -> Result<()> {
    session
        .query_unpaged(cql, ())
        .await
        .map_err(|e| error::execution("schema change", e))?;
    session
        .await_schema_agreement()
        .await
        .map_err(|e| Error::unavailable("cassandra: schema agreement", e))?;
    Ok(())
}

/// The statements on `schema_migrations`.
struct MigrationStatements {
    read: PreparedStatement,
    claim: PreparedStatement,
    take_over: PreparedStatement,
    finish: PreparedStatement,
}

impl MigrationStatements {
    async fn prepare(session: &Session, config: &CassandraConfig) -> Result<Self> {
        let ks = &config.keyspace;
        let prep = |cql: String| async move {
            let mut p = session
                .prepare(cql)
                .await
                .map_err(|e| error::prepare("schema_migrations", e))?;
            p.set_consistency(Consistency::Serial);
            p.set_serial_consistency(Some(config.serial_consistency));
            Ok::<_, Error>(p)
        };
        let lwt = |cql: String| async move {
            let mut p = prep(cql).await?;
            p.set_consistency(config.consistency);
            Ok::<_, Error>(p)
        };
        Ok(MigrationStatements {
            // Read at SERIAL: sees a claim or completion the moment its LWT finished.
            read: prep(format!(
                "SELECT owner, done, updated_at FROM {ks}.schema_migrations WHERE version = ?"
            ))
            .await?,
            claim: lwt(format!(
                "INSERT INTO {ks}.schema_migrations (version, description, owner, done, updated_at)
                 VALUES (?, ?, ?, false, ?) IF NOT EXISTS"
            ))
            .await?,
            take_over: lwt(format!(
                "UPDATE {ks}.schema_migrations SET owner = ?, updated_at = ?
                 WHERE version = ? IF owner = ? AND done = false"
            ))
            .await?,
            finish: lwt(format!(
                "UPDATE {ks}.schema_migrations SET done = true, updated_at = ?
                 WHERE version = ? IF owner = ?"
            ))
            .await?,
        })
    }
}

/// Applies one migration unless it is recorded as done, waiting for (or taking over from)
/// another process that claimed it.
async fn apply(
    session: &Session,
    stmts: &MigrationStatements,
    migration: &Migration,
    ks: &str,
    owner: &str,
) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        let row = session
            .execute_unpaged(&stmts.read, (migration.version,))
            .await
            .map_err(|e| error::execution("reading schema_migrations", e))?
            .into_rows_result()
            .map_err(|e| error::rows("schema_migrations", e))?
            .maybe_first_row::<(Option<String>, Option<bool>, Option<i64>)>()
            .map_err(|e| error::rows("schema_migrations", e))?;
        let mine = match row {
            Some((_, Some(true), _)) => return Ok(()),
            None => applied(
                session
                    .execute_unpaged(
                        &stmts.claim,
                        (migration.version, migration.description, owner, now_ms()),
                    )
                    .await,
                "claiming a migration",
            )?,
            Some((holder, _, updated_at)) => {
                let age = now_ms().saturating_sub(updated_at.unwrap_or(0));
                if u128::try_from(age).unwrap_or(0) > STALE_CLAIM.as_millis() {
                    tracing::warn!(
                        version = migration.version,
                        holder = holder.as_deref().unwrap_or("?"),
                        "taking over a stale schema migration claim"
                    );
                    applied(
                        session
                            .execute_unpaged(
                                &stmts.take_over,
                                (owner, now_ms(), migration.version, holder),
                            )
                            .await,
                        "taking over a migration",
                    )?
                } else {
                    false
                }
            }
        };
        if mine {
            tracing::info!(
                version = migration.version,
                keyspace = ks,
                "applying cassandra schema migration"
            );
            for statement in migration.statements {
                ddl(session, &statement.replace("{ks}", ks)).await?;
            }
            if migration.version == SEARCH_VERSION {
                let n = super::search::backfill(session, ks).await?;
                tracing::info!(
                    keyspace = ks,
                    messages = n,
                    "indexed stored messages for search"
                );
            }
            applied(
                session
                    .execute_unpaged(&stmts.finish, (now_ms(), migration.version, owner))
                    .await,
                "recording a migration",
            )?;
            continue; // re-read: the row now says done (or someone took over; then we wait)
        }
        if started.elapsed() > MIGRATION_WAIT {
            return Err(Error::Unavailable {
                message: format!(
                    "cassandra: schema migration {} of keyspace {ks} is claimed by another \
                     process that has not finished",
                    migration.version
                ),
                source: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether an LWT applied, from its result.
fn applied(
    result: std::result::Result<
        scylla::response::query_result::QueryResult,
        scylla::errors::ExecutionError,
    >,
    context: &str,
) -> Result<bool> {
    let rows = result
        .map_err(|e| error::execution(context, e))?
        .into_rows_result()
        .map_err(|e| error::rows(context, e))?;
    let (idx, _) = rows
        .column_specs()
        .get_by_name("[applied]")
        .ok_or_else(|| error::bad_row(format!("{context}: no [applied] column")))?;
    let row = rows
        .maybe_first_row::<scylla::value::Row>()
        .map_err(|e| error::rows(context, e))?
        .ok_or_else(|| error::bad_row(format!("{context}: empty LWT result")))?;
    match row.columns.get(idx) {
        Some(Some(scylla::value::CqlValue::Boolean(b))) => Ok(*b),
        _ => Err(error::bad_row(format!(
            "{context}: [applied] is not a boolean"
        ))),
    }
}

/// The bucket size stored in the keyspace, storing the configured (or default) one if none is.
async fn bucket_size(session: &Session, config: &CassandraConfig) -> Result<i64> {
    let ks = &config.keyspace;
    let wanted = config
        .bucket_size
        .unwrap_or(super::config::DEFAULT_BUCKET_SIZE);
    let mut insert = session
        .prepare(format!(
            "INSERT INTO {ks}.store_settings (name, value) VALUES ('bucket_size', ?) IF NOT EXISTS"
        ))
        .await
        .map_err(|e| error::prepare("store_settings", e))?;
    insert.set_consistency(config.consistency);
    insert.set_serial_consistency(Some(config.serial_consistency));
    let rows = session
        .execute_unpaged(&insert, (wanted,))
        .await
        .map_err(|e| error::execution("storing the bucket size", e))?
        .into_rows_result()
        .map_err(|e| error::rows("store_settings", e))?;
    let row = rows
        .maybe_first_row::<scylla::value::Row>()
        .map_err(|e| error::rows("store_settings", e))?
        .ok_or_else(|| error::bad_row("store_settings: empty LWT result"))?;
    let value_at = |name: &str| {
        rows.column_specs()
            .get_by_name(name)
            .and_then(|(i, _)| row.columns.get(i).cloned().flatten())
    };
    let stored = match value_at("[applied]") {
        Some(scylla::value::CqlValue::Boolean(true)) => wanted,
        Some(scylla::value::CqlValue::Boolean(false)) => match value_at("value") {
            Some(scylla::value::CqlValue::BigInt(v)) if v > 0 => v,
            _ => {
                return Err(error::bad_row(
                    "store_settings: bucket_size is not a positive bigint",
                ))
            }
        },
        _ => return Err(error::bad_row("store_settings: no [applied] column")),
    };
    if let Some(asked) = config.bucket_size {
        if asked != stored {
            return Err(Error::InvalidArgument(format!(
                "cassandra URL: bucket_size={asked}, but keyspace {ks} was created with \
                 bucket_size={stored}; it cannot change under existing messages"
            )));
        }
    }
    Ok(stored)
}

/// Whose claim a migration row records: unique per process and connect.
fn owner_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("pid{}-{nanos}", std::process::id())
}

/// Now in Unix milliseconds.
fn now_ms() -> i64 {
    chat_core::ids::now_millis()
}
