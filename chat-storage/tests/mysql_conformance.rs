//! The whole storage conformance suite against a real MariaDB, twice: on the primary alone, and
//! with the replica configured (so every replica-routed read must still honour the contracts,
//! e.g. `chats_of_user` right after `remove_member`).
//!
//! Needs `CHAT_TEST_MYSQL_URL` and `CHAT_TEST_MYSQL_REPLICA_URL`:
//! `scripts/mariadb.sh start && eval "$(scripts/mariadb.sh env)"`. Without them every test
//! fails with that hint; none is skipped. Each test gets its own database, dropped afterwards.

use chat_storage::mysql::testing::{
    drop_database, fresh_database, url_from_env, with_database, PRIMARY_URL_ENV, REPLICA_URL_ENV,
};
use chat_storage::mysql::{MysqlConfig, MysqlStore};
use chat_storage::testing::Guarded;

/// Drops the test database when the store is done with it.
struct DropDatabase(String);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let url = self.0.clone();
        // Drop runs inside the test's runtime; do the async work on a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(drop_database(&url))
        });
        if let Ok(Err(e)) = cleanup.join() {
            eprintln!("could not drop test database {}: {e}", self.0);
        }
    }
}

/// A store on a fresh database of the primary, optionally reading from the replica.
async fn fresh_store(with_replica: bool) -> Guarded<MysqlStore, DropDatabase> {
    let base = url_from_env(PRIMARY_URL_ENV).unwrap_or_else(|e| panic!("{e}"));
    let url = fresh_database(&base).await.expect("create a test database");
    let replicas = if with_replica {
        let replica_base = url_from_env(REPLICA_URL_ENV).unwrap_or_else(|e| panic!("{e}"));
        let db = url.rsplit('/').next().expect("database in url").to_owned();
        vec![with_database(&replica_base, &db).expect("replica url")]
    } else {
        Vec::new()
    };
    let store = MysqlStore::connect(MysqlConfig::new(url.clone(), replicas))
        .await
        .expect("connect to MariaDB");
    Guarded::new(store, DropDatabase(url))
}

chat_storage::metadata_store_conformance!(fresh_store(false));
chat_storage::message_store_conformance!(fresh_store(false));
chat_storage::message_change_conformance!(fresh_store(false));
chat_storage::message_activity_conformance!(fresh_store(false));
chat_storage::message_search_conformance!(fresh_store(false));

/// The same suite with reads routed to the replica where the replication rule allows.
mod with_replica {
    use super::*;

    chat_storage::metadata_store_conformance!(fresh_store(true));
    chat_storage::message_store_conformance!(fresh_store(true));
    chat_storage::message_change_conformance!(fresh_store(true));
    chat_storage::message_activity_conformance!(fresh_store(true));
    chat_storage::message_search_conformance!(fresh_store(true));
}

/// The store runs as a least-privilege user (rows only: `SELECT, INSERT, UPDATE, DELETE`) once
/// the schema is migrated, and such a user meeting a schema that needs a migration is told so
/// instead of failing on the first query.
#[tokio::test]
async fn a_least_privilege_user_runs_a_migrated_schema_and_is_told_when_it_cannot_migrate() {
    use chat_core::ids::now_millis;
    use chat_core::{MessageStore as _, MetadataStore as _, NewChat, NewMessage, NewUser};
    let base = url_from_env(PRIMARY_URL_ENV).unwrap_or_else(|e| panic!("{e}"));
    let admin = fresh_database(&base).await.expect("create a test database");
    let _cleanup = DropDatabase(admin.clone());
    let app = chat_storage::mysql::testing::least_privilege_user(&admin)
        .await
        .expect("least-privilege user");
    match MysqlStore::connect(MysqlConfig::new(app.clone(), Vec::new())).await {
        Err(chat_core::Error::InvalidArgument(m)) => {
            assert!(m.contains("needs migrating"), "{m}")
        }
        Err(e) => panic!("unclear error for an unmigrated schema: {e}"),
        Ok(_) => panic!("a user without DDL rights migrated the schema"),
    }
    drop(
        MysqlStore::connect(MysqlConfig::new(admin.clone(), Vec::new()))
            .await
            .expect("the administrator migrates"),
    );
    let store = MysqlStore::connect(MysqlConfig::new(app, Vec::new()))
        .await
        .expect("the least-privilege user opens a migrated schema");
    let user = store
        .create_user(NewUser {
            email: "least@example.com".into(),
            display_name: "least".into(),
            pw_hash: "$argon2id$x".into(),
            created_at: now_millis(),
        })
        .await
        .expect("insert a user");
    let (chat, _) = store
        .create_chat(NewChat {
            chat_name: "c".into(),
            owner_id: user.user_id,
            member_ids: vec![],
            created_at: now_millis(),
        })
        .await
        .expect("create a chat");
    let appended = store
        .append(NewMessage {
            reply_to_seq: None,
            chat_id: chat.chat_id,
            sender_id: user.user_id,
            msg_text: "hello".into(),
            sent_at: now_millis(),
            timestamp: None,
            client_msg_id: None,
        })
        .await
        .expect("append");
    assert_eq!(appended.message.seq.get(), 1);
}

/// A database migrated by a build before messages could change (schema version 1) is migrated
/// to version 2 on open: its messages get `rev = seq` and its chats `last_rev = last_seq`, so
/// the next append takes `rev = seq` and the next change the revision after it. Its messages
/// are searchable (migration 5's backfill).
#[tokio::test]
async fn a_version_1_schema_is_migrated_with_rev_equal_to_seq() {
    use chat_core::ids::now_millis;
    use chat_core::{ChatId, FetchQuery, MessageChange, MessageStore as _, NewMessage, Rev, Seq};
    use mysql_async::prelude::Queryable;
    let base = url_from_env(PRIMARY_URL_ENV).unwrap_or_else(|e| panic!("{e}"));
    let url = fresh_database(&base).await.expect("create a test database");
    let _cleanup = DropDatabase(url.clone());
    // The message tables as version 1 left them, with two messages of chat 7.
    let mut conn = mysql_async::Conn::from_url(url.clone())
        .await
        .expect("connect");
    for sql in [
        "CREATE TABLE schema_migrations (version INT NOT NULL PRIMARY KEY, \
         name VARCHAR(255) NOT NULL, applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
        "INSERT INTO schema_migrations (version, name) VALUES (1, 'version 1')",
        "CREATE TABLE chat_seq (chat_id BIGINT NOT NULL, last_seq BIGINT NOT NULL, \
         PRIMARY KEY (chat_id)) ENGINE=InnoDB",
        "CREATE TABLE messages (chat_id BIGINT NOT NULL, seq BIGINT NOT NULL, \
         sender_id BIGINT NOT NULL, msg_text MEDIUMTEXT NOT NULL, sent_at BIGINT NOT NULL, \
         timestamp BIGINT NULL, client_msg_id VARBINARY(8192) NULL, \
         client_msg_hash BINARY(32) AS (UNHEX(SHA2(client_msg_id, 256))) STORED, \
         PRIMARY KEY (chat_id, seq), \
         UNIQUE KEY messages_dedupe (chat_id, sender_id, client_msg_hash)) ENGINE=InnoDB",
        "INSERT INTO chat_seq (chat_id, last_seq) VALUES (7, 2)",
        "INSERT INTO messages (chat_id, seq, sender_id, msg_text, sent_at) \
         VALUES (7, 1, 1, 'one', 1), (7, 2, 1, 'two', 2)",
    ] {
        conn.query_drop(sql).await.expect(sql);
    }
    conn.disconnect().await.expect("disconnect");

    let store = MysqlStore::connect(MysqlConfig::new(url.clone(), Vec::new()))
        .await
        .expect("open and migrate");
    let chat = ChatId(7);
    let old = store
        .fetch(
            chat,
            FetchQuery::After {
                after: Seq::ZERO,
                limit: 10,
            },
        )
        .await
        .expect("fetch");
    let revs: Vec<(i64, i64, bool)> = old
        .iter()
        .map(|m| {
            (
                m.seq.get(),
                m.rev.get(),
                m.reactions.is_empty() && !m.deleted,
            )
        })
        .collect();
    assert_eq!(revs, vec![(1, 1, true), (2, 2, true)]);
    // Migration 5 indexed the stored messages for search.
    for (q, seq) in [("TWO", 2), ("one", 1)] {
        let query = chat_core::SearchQuery::parse(q).expect("query");
        let found = store
            .search(&[chat], &query, None, 10)
            .await
            .expect("search");
        assert_eq!(
            found.iter().map(|m| m.seq.get()).collect::<Vec<_>>(),
            vec![seq]
        );
    }
    let third = store
        .append(NewMessage {
            reply_to_seq: Some(Seq(1)),
            chat_id: chat,
            sender_id: chat_core::UserId(1),
            msg_text: "three".into(),
            sent_at: now_millis(),
            timestamp: None,
            client_msg_id: None,
        })
        .await
        .expect("append");
    assert_eq!((third.message.seq, third.message.rev), (Seq(3), Rev(3)));
    let edited = store
        .change(
            chat,
            Seq(1),
            MessageChange::Edit {
                msg_text: "one, edited".into(),
                edited_at: now_millis(),
            },
        )
        .await
        .expect("edit a message stored before the migration");
    assert_eq!(edited.rev, Rev(4));
    let feed = store.changes(chat, Rev(2), 10).await.expect("feed");
    assert_eq!(feed, vec![third.message, edited]);
}
