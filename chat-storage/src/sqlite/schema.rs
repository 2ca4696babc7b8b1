//! The SQLite schema, its versioned migrations, and how each connection is configured.
//!
//! The schema version lives in `PRAGMA user_version` (in the file header, written in the same
//! transaction as the migration, so a crash mid-migration leaves the old version and the old
//! schema). Migrations only ever get appended to [`MIGRATIONS`]; an applied one is never edited.

use super::error::db;
use chat_core::{Error, Result};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

/// Every migration, in order; migration `i` brings the schema from version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    -- AUTOINCREMENT: ids are never handed out twice, even after a row is deleted, so a cached
    -- id can never name someone else.
    CREATE TABLE users (
        user_id      INTEGER PRIMARY KEY AUTOINCREMENT,
        email        TEXT    NOT NULL UNIQUE,
        pw_hash      TEXT    NOT NULL,
        display_name TEXT    NOT NULL,
        created_at   INTEGER NOT NULL
    );

    CREATE TABLE chats (
        chat_id    INTEGER PRIMARY KEY AUTOINCREMENT,
        chat_name  TEXT    NOT NULL,
        owner_id   INTEGER NOT NULL REFERENCES users (user_id),
        created_at INTEGER NOT NULL
    );

    -- Clustered by chat for "members of a chat"; the index serves "chats of a user".
    CREATE TABLE user_chat (
        chat_id   INTEGER NOT NULL REFERENCES chats (chat_id),
        user_id   INTEGER NOT NULL REFERENCES users (user_id),
        role      TEXT    NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
        joined_at INTEGER NOT NULL,
        PRIMARY KEY (chat_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX user_chat_by_user ON user_chat (user_id, chat_id);

    CREATE TABLE sessions (
        token_hash BLOB    PRIMARY KEY CHECK (length(token_hash) = 32),
        user_id    INTEGER NOT NULL REFERENCES users (user_id),
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX sessions_by_expiry ON sessions (expires_at);

    -- The message store's own per-chat counter. Deliberately no foreign key to chats: the
    -- message store may be used with another metadata store.
    CREATE TABLE chat_seq (
        chat_id  INTEGER PRIMARY KEY,
        last_seq INTEGER NOT NULL
    );

    -- Clustered by (chat_id, seq): every page is one range scan of the primary key.
    -- NULL client_msg_ids are distinct under UNIQUE, so messages without one never dedupe.
    CREATE TABLE messages (
        chat_id       INTEGER NOT NULL,
        seq           INTEGER NOT NULL,
        sender_id     INTEGER NOT NULL,
        msg_text      TEXT    NOT NULL,
        sent_at       INTEGER NOT NULL,
        timestamp     INTEGER,
        client_msg_id TEXT,
        PRIMARY KEY (chat_id, seq),
        UNIQUE (chat_id, sender_id, client_msg_id)
    ) WITHOUT ROWID;
    "#,
    // 2: messages that change (issue 14). A per-chat revision counter next to `last_seq`, the
    // changeable state of a message, and the change feed's index. Every message stored so far
    // was only appended, and each append took the chat's next revision, so its `rev` is its
    // `seq` and each chat's `last_rev` is its `last_seq`.
    r#"
    ALTER TABLE chat_seq ADD COLUMN last_rev INTEGER NOT NULL DEFAULT 0;
    UPDATE chat_seq SET last_rev = last_seq;
    ALTER TABLE messages ADD COLUMN reply_to_seq INTEGER;
    ALTER TABLE messages ADD COLUMN edited_at INTEGER;
    ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
    -- JSON: [{"emoji", "count", "user_ids"}], ordered by first use.
    ALTER TABLE messages ADD COLUMN reactions TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE messages ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
    UPDATE messages SET rev = seq;
    CREATE INDEX messages_by_rev ON messages (chat_id, rev);
    "#,
    // 3: the chat list's unread counts (issue 15). Tombstones above a reader's marker are
    // counted from this partial index, which holds only deleted messages: the count reads as
    // many entries as there are tombstones above the marker, never the messages in between.
    // Built from the existing rows here (one scan of `messages`); a delete adds its entry in
    // the same UPDATE that sets `deleted`.
    r#"
    CREATE INDEX messages_tombstones ON messages (chat_id, seq) WHERE deleted = 1;
    "#,
    // 4: read markers, direct chats and chat kinds (issue 15). Markers have their own table so
    // they outlive a membership (someone added back keeps theirs); a direct chat's ordered pair
    // is unique, so a pair has one direct chat however many ask at once.
    r#"
    ALTER TABLE chats ADD COLUMN kind TEXT NOT NULL DEFAULT 'group'
        CHECK (kind IN ('group', 'direct'));
    CREATE TABLE read_markers (
        chat_id       INTEGER NOT NULL,
        user_id       INTEGER NOT NULL,
        last_read_seq INTEGER NOT NULL,
        read_at       INTEGER NOT NULL,
        PRIMARY KEY (chat_id, user_id)
    ) WITHOUT ROWID;
    CREATE TABLE direct_chats (
        user_lo INTEGER NOT NULL,
        user_hi INTEGER NOT NULL,
        chat_id INTEGER NOT NULL UNIQUE,
        PRIMARY KEY (user_lo, user_hi),
        CHECK (user_lo < user_hi)
    ) WITHOUT ROWID;
    "#,
    // 5: message search (issue 17). A rowid per indexed message and a contentless FTS5 index
    // of its terms (see `search.rs` for why hex tokens). Rebuilt by 6.
    r#"
    CREATE TABLE search_docs (
        doc_id  INTEGER PRIMARY KEY,
        chat_id INTEGER NOT NULL,
        seq     INTEGER NOT NULL,
        UNIQUE (chat_id, seq)
    );
    CREATE VIRTUAL TABLE search_fts USING fts5(
        terms, content = '', contentless_delete = 1, detail = 'none', tokenize = 'ascii'
    );
    "#,
    // 6: search documents numbered in result order (rowid = sent_at ms << 21 | counter), so a
    // search reads one page of matches instead of all of them, and the rowid kept in the
    // message's own row (`messages.doc_id`) instead of a table of its own: one index entry per
    // append instead of a row and an index entry (`search.rs`). The index is rebuilt:
    // `search::backfill` runs after this migration, in the same transaction.
    r#"
    DROP TABLE search_fts;
    DROP TABLE search_docs;
    ALTER TABLE messages ADD COLUMN doc_id INTEGER;
    CREATE INDEX messages_by_doc ON messages (doc_id) WHERE doc_id IS NOT NULL;
    CREATE VIRTUAL TABLE search_fts USING fts5(
        terms, content = '', contentless_delete = 1, detail = 'none', tokenize = 'ascii'
    );
    "#,
];

/// The migration after which the existing messages are (re)indexed for search (the backfill
/// needs the tokenizer of `chat-core`, so it is Rust, not SQL).
const SEARCH_MIGRATION: usize = 6;

/// The schema version this build writes.
pub(crate) fn current_version() -> i64 {
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}

/// Opens the writer's connection: creates the file, switches it to WAL, sets `synchronous=FULL`
/// and applies pending migrations.
pub(crate) fn open_writer(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let mut conn = Connection::open(path).map_err(db("open the database file"))?;
    conn.busy_timeout(busy_timeout)
        .map_err(db("set busy_timeout"))?;
    // WAL: readers never block the writer nor the writer them, and a commit is one append to
    // the log. The mode is stored in the file, so every later connection gets it too.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(db("enable WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Unavailable {
            message: format!("sqlite: the database refused WAL mode (journal_mode is {mode})"),
            source: None,
        });
    }
    // FULL: the WAL is fsynced at every commit, so an acked write survives power loss, not
    // only a crash of the process (NORMAL would lose the last commits on power loss).
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(db("set synchronous"))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(db("enable foreign keys"))?;
    // Every write passes through this one connection: a 64 MiB page cache keeps the B-tree
    // pages that appends touch (one leaf per active chat) in memory instead of re-reading them
    // and spilling dirty pages mid-transaction (SQLite's default is 2 MiB).
    conn.pragma_update(None, "cache_size", -65_536)
        .map_err(db("set cache_size"))?;
    // Each write runs in a savepoint, whose statement journal would otherwise be a temporary
    // file; in memory it costs a copy instead of file I/O. It only matters until COMMIT.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(db("set temp_store"))?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Opens a reader's connection. It is read-write at the file level (a read-only open would need
/// the `-shm` file to exist already) but `query_only`, so no code path can write through it.
pub(crate) fn open_reader(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(db("open a reader"))?;
    conn.busy_timeout(busy_timeout)
        .map_err(db("set busy_timeout"))?;
    conn.pragma_update(None, "query_only", "ON")
        .map_err(db("set query_only"))?;
    Ok(conn)
}

/// Applies every migration the file has not seen, in one immediate transaction.
fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("begin the migration"))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db("read the schema version"))?;
    let target = current_version();
    if version > target {
        return Err(Error::Unavailable {
            message: format!(
                "sqlite: the database has schema version {version}, newer than this build's \
                 {target}; use a newer chat-server"
            ),
            source: None,
        });
    }
    if version == target {
        return Ok(());
    }
    let start = usize::try_from(version).unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        tracing::info!(from = i, to = i + 1, "sqlite: migrating schema");
        tx.execute_batch(sql).map_err(db("apply a migration"))?;
        if i + 1 == SEARCH_MIGRATION {
            let n = super::search::backfill(&tx)?;
            tracing::info!(
                messages = n,
                "sqlite: indexed the stored messages for search"
            );
        }
    }
    tx.pragma_update(None, "user_version", target)
        .map_err(db("write the schema version"))?;
    tx.commit().map_err(db("commit the migration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_reopen_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let conn = open_writer(&path, Duration::from_secs(5)).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, current_version());
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        drop(conn);
        let conn = open_writer(&path, Duration::from_secs(5)).unwrap();
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN \
                 ('users','chats','user_chat','sessions','chat_seq','messages')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 6);
    }

    #[test]
    fn messages_stored_before_revisions_get_rev_equal_to_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute_batch(
                "INSERT INTO chat_seq VALUES (7, 2);
                 INSERT INTO messages VALUES (7, 1, 1, 'a', 10, NULL, NULL);
                 INSERT INTO messages VALUES (7, 2, 1, 'b', 11, NULL, 'k');",
            )
            .unwrap();
        }
        let conn = open_writer(&path, Duration::from_secs(5)).unwrap();
        let last_rev: i64 = conn
            .query_row("SELECT last_rev FROM chat_seq WHERE chat_id = 7", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(last_rev, 2);
        let revs: Vec<(i64, i64, String)> = conn
            .prepare("SELECT seq, rev, reactions FROM messages ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(revs, vec![(1, 1, "[]".into()), (2, 2, "[]".into())]);
    }

    #[test]
    fn tombstones_are_counted_from_the_partial_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let conn = open_writer(&path, Duration::from_secs(5)).unwrap();
        let plan: Vec<String> = conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT count(*) FROM messages \
                 INDEXED BY messages_tombstones \
                 WHERE chat_id = ?1 AND seq > ?2 AND deleted = 1",
            )
            .unwrap()
            .query_map([7, 3], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert!(
            plan[0].contains("COVERING INDEX messages_tombstones"),
            "{plan:?}"
        );
        conn.execute_batch(
            "INSERT INTO messages (chat_id, seq, sender_id, msg_text, sent_at, deleted) VALUES \
             (7, 1, 1, '', 1, 1), (7, 2, 1, 'b', 1, 0), (7, 3, 1, '', 1, 1), \
             (7, 4, 1, '', 1, 1), (8, 5, 1, '', 1, 1);",
        )
        .unwrap();
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM messages INDEXED BY messages_tombstones \
                 WHERE chat_id = 7 AND seq > 1 AND deleted = 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn messages_stored_before_search_are_indexed_by_the_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..SEARCH_MIGRATION - 1] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", SEARCH_MIGRATION - 1)
                .unwrap();
            conn.execute_batch(
                "INSERT INTO messages (chat_id, seq, sender_id, msg_text, sent_at, rev) VALUES \
                 (7, 1, 1, 'Hello old World', 10, 1), (7, 2, 1, 'hello again', 11, 2);
                 INSERT INTO messages (chat_id, seq, sender_id, msg_text, sent_at, rev, deleted) \
                 VALUES (7, 3, 1, '', 12, 3, 1);",
            )
            .unwrap();
        }
        let conn = open_writer(&path, Duration::from_secs(5)).unwrap();
        let query = chat_core::SearchQuery::parse("HELLO").unwrap();
        let found =
            super::super::search::search(&conn, &[chat_core::ChatId(7)], &query, None, 10).unwrap();
        let seqs: Vec<i64> = found.iter().map(|m| m.seq.get()).collect();
        assert_eq!(seqs, vec![2, 1]);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let conn = open_writer(&path, Duration::from_secs(5)).unwrap();
        conn.pragma_update(None, "user_version", current_version() + 1)
            .unwrap();
        drop(conn);
        match open_writer(&path, Duration::from_secs(5)) {
            Err(Error::Unavailable { message, .. }) => assert!(message.contains("newer")),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[test]
    fn readers_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let _writer = open_writer(&path, Duration::from_secs(5)).unwrap();
        let reader = open_reader(&path, Duration::from_secs(5)).unwrap();
        assert!(reader
            .execute("INSERT INTO chat_seq (chat_id, last_seq) VALUES (1, 1)", [])
            .is_err());
    }
}
