//! The schema and its versioned migrations, applied at start-up.
//!
//! Every migration has a version; `schema_migrations` records the applied ones. Several nodes may
//! start at once against one database: each takes the named lock
//! `GET_LOCK('chat_schema_migration:<database>', 30)` on one connection, reads the applied
//! versions, applies the missing ones in order and releases the lock, so exactly one node applies
//! each migration and the others see it applied. (The lock name carries the database name so
//! that test databases on one server migrate in parallel.) MySQL commits DDL implicitly, so each
//! statement is written to be safe to run again (`IF NOT EXISTS`) in case a node died between a
//! migration's statements and its row in `schema_migrations`.
//!
//! # Tables
//! - `users`, `chats`, `user_chat`, `sessions`: the metadata store (the seed's Users, Chats and
//!   UserChat, plus sessions). `user_chat` has its primary key `(chat_id, user_id)` for "members
//!   of a chat" and "role of a user in a chat", and the key `(user_id, chat_id)` for "chats of a
//!   user". Emails and client message ids are binary strings: compared byte for byte, never by a
//!   collation that would equate `a` and `ä` or ignore trailing spaces.
//! - `messages`, `chat_seq`: the message store. `chat_seq` holds each chat's counter (see the
//!   module doc of [`crate::mysql`] for why it is not a column of `chats`). `client_msg_id` can
//!   be longer than an index allows, so the dedupe key indexes its SHA-256 in a stored generated
//!   column; lookups compare the id itself too.
//! - Messages that change (migration 2): `chat_seq.last_rev` is each chat's revision counter,
//!   next to `last_seq`; a message row carries `reply_to_seq`, `edited_at`, `deleted`,
//!   `reactions` (JSON text: `[{"emoji", "count", "user_ids"}]`, ordered by first use) and `rev`
//!   (the revision of its latest change), and `messages_by_rev (chat_id, rev)` serves the change
//!   feed. Existing rows get `rev = seq` and `last_rev = last_seq`. Nodes of a build before
//!   migration 2 must not append once it ran (their rows would miss a `rev`): upgrade them
//!   together.
//! - `message_tombstones (chat_id, seq)` (migration 3): one row per deleted message, inserted in
//!   the transaction that deletes it; the chat list counts a chat's tombstones above a reader's
//!   marker from it (why a table and not an index: see the migration).
//! - `message_terms (chat_id, term, seq)` (migration 5): one row per distinct search term of
//!   each live message, written with the message (why not FULLTEXT: see `search.rs`).

use super::error::{bad_row, Failure};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

/// One migration: a version, a name for humans, and its statements.
struct Migration {
    /// Applied in ascending order; never reused.
    version: u32,
    /// What it does.
    name: &'static str,
    /// The statements, each safe to run twice.
    statements: &'static [&'static str],
}

/// Every migration, oldest first.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "users, chats, user_chat, sessions, messages, chat_seq",
        statements: &[
            "CREATE TABLE IF NOT EXISTS users (
            user_id BIGINT NOT NULL AUTO_INCREMENT,
            email VARBINARY(1024) NOT NULL,
            pw_hash VARCHAR(1024) NOT NULL,
            display_name VARCHAR(512) NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (user_id),
            UNIQUE KEY users_email (email)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            "CREATE TABLE IF NOT EXISTS chats (
            chat_id BIGINT NOT NULL AUTO_INCREMENT,
            chat_name VARCHAR(512) NOT NULL,
            owner_id BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (chat_id),
            KEY chats_owner (owner_id),
            CONSTRAINT chats_owner_fk FOREIGN KEY (owner_id) REFERENCES users (user_id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            "CREATE TABLE IF NOT EXISTS user_chat (
            chat_id BIGINT NOT NULL,
            user_id BIGINT NOT NULL,
            role VARCHAR(16) NOT NULL,
            joined_at BIGINT NOT NULL,
            PRIMARY KEY (chat_id, user_id),
            KEY user_chat_by_user (user_id, chat_id),
            CONSTRAINT user_chat_chat_fk FOREIGN KEY (chat_id) REFERENCES chats (chat_id),
            CONSTRAINT user_chat_user_fk FOREIGN KEY (user_id) REFERENCES users (user_id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            "CREATE TABLE IF NOT EXISTS sessions (
            token_hash BINARY(32) NOT NULL,
            user_id BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            PRIMARY KEY (token_hash),
            KEY sessions_expiry (expires_at),
            KEY sessions_user (user_id),
            CONSTRAINT sessions_user_fk FOREIGN KEY (user_id) REFERENCES users (user_id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            // No foreign keys from here on: the message tables may live in another database than
            // the users and chats (metadata in SQLite, messages in MySQL).
            "CREATE TABLE IF NOT EXISTS chat_seq (
            chat_id BIGINT NOT NULL,
            last_seq BIGINT NOT NULL,
            PRIMARY KEY (chat_id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            "CREATE TABLE IF NOT EXISTS messages (
            chat_id BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            sender_id BIGINT NOT NULL,
            msg_text MEDIUMTEXT NOT NULL,
            sent_at BIGINT NOT NULL,
            timestamp BIGINT NULL,
            client_msg_id VARBINARY(8192) NULL,
            client_msg_hash BINARY(32) AS (UNHEX(SHA2(client_msg_id, 256))) STORED,
            PRIMARY KEY (chat_id, seq),
            UNIQUE KEY messages_dedupe (chat_id, sender_id, client_msg_hash)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
        ],
    },
    Migration {
        version: 2,
        name: "messages that change: chat_seq.last_rev; replies, edits, deletes, reactions, rev",
        // A chat none of whose messages changed has `rev == seq` for every message (each
        // append takes the next of both), so existing messages get `rev = seq` and each chat
        // `last_rev = last_seq`. The UPDATEs only touch rows still at the column default (0),
        // so running them again after a node died half-way is harmless. `IF NOT EXISTS` on
        // columns and indexes is MariaDB's (the store already relies on MariaDB for replicas).
        statements: &[
            "ALTER TABLE chat_seq ADD COLUMN IF NOT EXISTS last_rev BIGINT NOT NULL DEFAULT 0",
            "UPDATE chat_seq SET last_rev = last_seq WHERE last_rev = 0",
            "ALTER TABLE messages \
             ADD COLUMN IF NOT EXISTS reply_to_seq BIGINT NULL, \
             ADD COLUMN IF NOT EXISTS edited_at BIGINT NULL, \
             ADD COLUMN IF NOT EXISTS deleted BOOLEAN NOT NULL DEFAULT FALSE, \
             ADD COLUMN IF NOT EXISTS reactions MEDIUMTEXT NOT NULL DEFAULT '[]', \
             ADD COLUMN IF NOT EXISTS rev BIGINT NOT NULL DEFAULT 0",
            "UPDATE messages SET rev = seq WHERE rev = 0",
            "CREATE INDEX IF NOT EXISTS messages_by_rev ON messages (chat_id, rev)",
        ],
    },
    Migration {
        version: 3,
        name: "message_tombstones: each chat's deleted messages, for unread counts",
        // The chat list counts the tombstones above a reader's marker. MariaDB has no partial
        // index, and an index on `messages (chat_id, deleted, seq)` would put an entry for every
        // message on the append path to serve a count that only ever wants the deleted ones; this
        // table has a row per deleted message only, written in the delete's own transaction
        // (see `messages.rs`), so appends are unchanged and the count is a primary-key range scan
        // over tombstones alone. The copy of the deletes made so far is one scan of `messages`,
        // and `INSERT IGNORE` makes it safe to run again. A node of a build before this
        // migration would delete without a tombstone row: upgrade the nodes together.
        statements: &[
            "CREATE TABLE IF NOT EXISTS message_tombstones (
            chat_id BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            PRIMARY KEY (chat_id, seq)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            "INSERT IGNORE INTO message_tombstones (chat_id, seq) \
             SELECT chat_id, seq FROM messages WHERE deleted",
        ],
    },
    Migration {
        version: 4,
        name: "read markers, direct chats, chat kinds",
        // Markers have their own table so they outlive a membership; a direct chat's ordered
        // pair is the primary key of `direct_chats`, so concurrent callers on any node end with
        // one chat (the loser's transaction fails on the key and reads the winner's).
        statements: &[
            "ALTER TABLE IF EXISTS chats ADD COLUMN IF NOT EXISTS kind VARCHAR(16) NOT NULL DEFAULT 'group'",
            "CREATE TABLE IF NOT EXISTS read_markers (
            chat_id BIGINT NOT NULL,
            user_id BIGINT NOT NULL,
            last_read_seq BIGINT NOT NULL,
            read_at BIGINT NOT NULL,
            PRIMARY KEY (chat_id, user_id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            "CREATE TABLE IF NOT EXISTS direct_chats (
            user_lo BIGINT NOT NULL,
            user_hi BIGINT NOT NULL,
            chat_id BIGINT NOT NULL,
            PRIMARY KEY (user_lo, user_hi),
            UNIQUE KEY direct_chats_chat (chat_id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
        ],
    },
    Migration {
        version: SEARCH_VERSION,
        name: "message_terms: each live message's search terms",
        // Why a terms table and not a FULLTEXT index: see `search.rs`. The stored messages are
        // indexed by `search::backfill` (Rust: it needs chat-core's tokenizer) after this
        // statement and before the version is recorded; it uses INSERT IGNORE, so it is safe
        // to run again. A node of a build before this migration would append without terms:
        // upgrade the nodes together.
        statements: &[super::search::CREATE_TABLE],
    },
];

/// The migration that adds search; its backfill runs after its statements.
const SEARCH_VERSION: u32 = 5;

/// The newest schema version this code knows.
pub(crate) const LATEST_VERSION: u32 = 5;

/// How long a node waits for another node's migration before giving up (seconds).
const LOCK_WAIT_SECS: u32 = 30;

/// Applies the missing migrations on `conn` (a primary connection whose default database is
/// `database`), under the named lock.
///
/// A schema that is already current is only read (no lock, no DDL), so the server can run as a
/// least-privilege user (`SELECT, INSERT, UPDATE, DELETE` on its database) once a user that
/// may alter the schema has started it once; such a user meeting a schema that needs a
/// migration gets an error that says so.
pub(crate) async fn migrate(conn: &mut Conn, database: &str) -> Result<(), Failure> {
    if schema_is_current(conn).await? {
        return Ok(());
    }
    match migrate_locked(conn, database).await {
        Err(Failure::Db(e))
            if matches!(
                super::error::server_code(&e),
                Some(1044 | 1045 | 1142 | 1143 | 1227)
            ) =>
        {
            Err(Failure::Domain(chat_core::Error::InvalidArgument(format!(
                "mysql: the schema of `{database}` needs migrating to version {LATEST_VERSION} \
                 and this user may not alter it ({e}); start the server once with a user that \
                 may (CREATE, ALTER, INDEX on the database), then run it with this one"
            ))))
        }
        other => other,
    }
}

/// Whether every migration this build knows is recorded (a missing table is "no").
async fn schema_is_current(conn: &mut Conn) -> Result<bool, Failure> {
    let rows: Vec<mysql_async::Row> =
        match conn.query("SELECT version FROM schema_migrations").await {
            Ok(rows) => rows,
            // 1146: no such table (a new database).
            Err(e) if super::error::server_code(&e) == Some(1146) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
    let mut applied = Vec::with_capacity(rows.len());
    for row in rows {
        let (v,): (u32,) =
            mysql_async::from_row_opt(row).map_err(|e| bad_row("schema_migrations", e))?;
        applied.push(v);
    }
    Ok(MIGRATIONS.iter().all(|m| applied.contains(&m.version)))
}

/// [`migrate`] under the lock, for a schema that needs it.
async fn migrate_locked(conn: &mut Conn, database: &str) -> Result<(), Failure> {
    // Lock names are at most 64 characters.
    let lock: String = format!("chat_schema_migration:{database}")
        .chars()
        .take(64)
        .collect();
    let got: Option<mysql_async::Row> = conn
        .exec_first("SELECT GET_LOCK(?, ?)", (lock.as_str(), LOCK_WAIT_SECS))
        .await?;
    let got: Option<Option<i64>> = super::scalar("GET_LOCK", got)?;
    if got != Some(Some(1)) {
        return Err(Failure::Timeout(
            "waiting for another node's schema migration",
        ));
    }
    let result = apply_missing(conn).await;
    // Released on every path; a lost connection releases it too.
    let released: Result<Option<mysql_async::Row>, _> = conn
        .exec_first("SELECT RELEASE_LOCK(?)", (lock.as_str(),))
        .await;
    result?;
    released?;
    Ok(())
}

/// Applies every migration not yet recorded (the caller holds the lock).
async fn apply_missing(conn: &mut Conn) -> Result<(), Failure> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INT NOT NULL PRIMARY KEY,
            name VARCHAR(255) NOT NULL,
            applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    )
    .await?;
    let rows: Vec<mysql_async::Row> = conn.query("SELECT version FROM schema_migrations").await?;
    let mut applied = Vec::with_capacity(rows.len());
    for row in rows {
        let (v,): (u32,) =
            mysql_async::from_row_opt(row).map_err(|e| bad_row("schema_migrations", e))?;
        applied.push(v);
    }
    if let Some(&newest) = applied.iter().max() {
        if newest > LATEST_VERSION {
            // A newer node migrated this database; this one still works with the tables it
            // knows (migrations only add), so say so and carry on.
            tracing::warn!(
                newest,
                known = LATEST_VERSION,
                "mysql: the schema is newer than this build"
            );
        }
    }
    for m in MIGRATIONS {
        if applied.contains(&m.version) {
            continue;
        }
        tracing::info!(
            version = m.version,
            name = m.name,
            "mysql: applying migration"
        );
        for statement in m.statements {
            conn.query_drop(*statement).await?;
        }
        if m.version == SEARCH_VERSION {
            let n = super::search::backfill(conn).await?;
            tracing::info!(
                messages = n,
                "mysql: indexed the stored messages for search"
            );
        }
        conn.exec_drop(
            "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
            (m.version, m.name),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_ascend_and_end_at_latest() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(LATEST_VERSION));
    }
}
