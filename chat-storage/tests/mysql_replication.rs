//! The replication rule on a real MariaDB primary and binlog replica: the reads the rule sends to
//! the replica are answered by it, a lagging replica is never read stale, every caller reads its
//! own writes at once, and a dead replica only sends reads to the primary.
//!
//! Needs `CHAT_TEST_MYSQL_URL` and `CHAT_TEST_MYSQL_REPLICA_URL`
//! (`scripts/mariadb.sh start && eval "$(scripts/mariadb.sh env)"`); fails without them.
//! The lag tests stop the replica's SQL thread for a while (one at a time, and restart it even
//! when they fail): other tests running at the same time stay correct, their replica reads just
//! go to the primary.
#![cfg(all(feature = "mysql", feature = "testing"))]

use chat_core::ids::now_millis;
use chat_core::{
    FetchQuery, Member, MessageChange, MessageStore, MetadataStore, NewChat, NewMessage, NewUser,
    Rev, Role, Seq, UserId,
};
use chat_storage::mysql::testing::{
    drop_database, fresh_database, url_from_env, with_database, PRIMARY_URL_ENV, REPLICA_URL_ENV,
};
use chat_storage::mysql::{MysqlConfig, MysqlStore};
use mysql_async::prelude::Queryable;
use std::time::{Duration, Instant};

/// Generous bound for the replica to catch up on a loaded machine.
const CATCH_UP: Duration = Duration::from_secs(120);

fn new_user(tag: &str) -> NewUser {
    NewUser {
        email: format!("{tag}-{}@example.test", rand::random::<u64>()),
        display_name: format!("User {tag}"),
        pw_hash: "$argon2id$v=19$m=19456,t=2,p=1$x$y".to_owned(),
        created_at: now_millis(),
    }
}

fn message(chat: chat_core::ChatId, sender: UserId, text: &str) -> NewMessage {
    NewMessage {
        reply_to_seq: None,
        chat_id: chat,
        sender_id: sender,
        msg_text: text.to_owned(),
        sent_at: now_millis(),
        timestamp: None,
        client_msg_id: Some(format!("cmid-{text}")),
    }
}

/// A fresh database and a store that reads from the replica, with short waits so the test does
/// not crawl while the replica lags.
async fn setup() -> (MysqlStore, String) {
    let base = url_from_env(PRIMARY_URL_ENV).unwrap_or_else(|e| panic!("{e}"));
    let replica_base = url_from_env(REPLICA_URL_ENV).unwrap_or_else(|e| panic!("{e}"));
    let url = fresh_database(&base).await.expect("fresh database");
    let db = url.rsplit('/').next().expect("db").to_owned();
    let replica_url = with_database(&replica_base, &db).expect("replica url");
    let mut config = MysqlConfig::new(url.clone(), vec![replica_url]);
    config.replica_wait = Duration::from_millis(300);
    config.replica_cooldown = Duration::from_millis(200);
    let store = MysqlStore::connect(config).await.expect("connect");
    (store, url)
}

/// A plain connection to the replica (no default database: the test database may not have
/// been replicated yet), to look at what it really has.
async fn replica_conn() -> mysql_async::Conn {
    let base = url_from_env(REPLICA_URL_ENV).unwrap_or_else(|e| panic!("{e}"));
    mysql_async::Conn::from_url(base)
        .await
        .expect("connect to the replica")
}

/// One number from the replica.
async fn replica_count(conn: &mut mysql_async::Conn, sql: &str) -> i64 {
    conn.query_first::<i64, _>(sql)
        .await
        .expect("query the replica")
        .expect("a row")
}

/// Waits until `sql` on the replica returns `want` (errors such as a table that has not been
/// replicated yet count as "not yet").
async fn wait_for_replica(conn: &mut mysql_async::Conn, sql: &str, want: i64) {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let got = conn.query_first::<i64, _>(sql).await;
        if matches!(got, Ok(Some(n)) if n == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never caught up: {sql} = {got:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Held by every test that stops the replica's SQL thread: two of them at once would start it
/// again under each other's feet.
static REPLICA_PAUSE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Restarts the replica's SQL thread when dropped, so a failing test does not leave it stopped.
struct RestartSlave(String);

impl Drop for RestartSlave {
    fn drop(&mut self) {
        let url = self.0.clone();
        let restarted = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut conn = mysql_async::Conn::from_url(url).await?;
                conn.query_drop("START SLAVE SQL_THREAD").await
            })
        })
        .join();
        if !matches!(restarted, Ok(Ok(()))) {
            eprintln!("could not restart the replica's SQL thread: {restarted:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_serves_reads_but_never_stale_ones() {
    let (store, url) = setup().await;
    let db = url.rsplit('/').next().expect("db").to_owned();
    let mut replica = replica_conn().await;

    // Some history, replicated.
    let alice = store.create_user(new_user("alice")).await.expect("user");
    let bob = store.create_user(new_user("bob")).await.expect("user");
    let (chat, _) = store
        .create_chat(NewChat {
            chat_name: "replicated".to_owned(),
            owner_id: alice.user_id,
            member_ids: vec![],
            created_at: now_millis(),
        })
        .await
        .expect("chat");
    for i in 1..=10 {
        store
            .append(message(chat.chat_id, alice.user_id, &format!("m{i}")))
            .await
            .expect("append");
    }
    wait_for_replica(
        &mut replica,
        &format!(
            "SELECT COUNT(*) FROM `{db}`.messages WHERE chat_id = {}",
            chat.chat_id
        ),
        10,
    )
    .await;

    // 1. The replica answers what the rule sends it. Proof that it is the replica: give alice
    //    a display name that only the replica has (the test user may write to the read-only
    //    replica; the application never does), read it through the store, then put it back.
    replica
        .query_drop(format!(
            "UPDATE `{db}`.users SET display_name = 'only on the replica' WHERE user_id = {}",
            alice.user_id
        ))
        .await
        .expect("mark the replica");
    let seen = store
        .user(alice.user_id)
        .await
        .expect("user")
        .expect("alice");
    assert_eq!(
        seen.display_name, "only on the replica",
        "user() must be answered by the replica"
    );
    replica
        .query_drop(format!(
            "UPDATE `{db}`.users SET display_name = 'User alice' WHERE user_id = {}",
            alice.user_id
        ))
        .await
        .expect("unmark the replica");
    let before = store.replica_stats();
    assert_eq!(
        store.chat(chat.chat_id).await.expect("chat"),
        Some(chat.clone())
    );
    let page = store
        .fetch(
            chat.chat_id,
            FetchQuery::Before {
                before: Seq(6),
                limit: 3,
            },
        )
        .await
        .expect("history");
    assert_eq!(
        page.iter().map(|m| m.seq.get()).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    let after = store.replica_stats();
    assert_eq!(
        after.replica_reads,
        before.replica_reads + 2,
        "chat() and a complete history page come from the replica: {before:?} -> {after:?}"
    );

    // 2. The replica lags: its SQL thread stops applying what the primary writes.
    let _pause = REPLICA_PAUSE.lock().await;
    replica
        .query_drop("STOP SLAVE SQL_THREAD")
        .await
        .expect("stop the replica's SQL thread");
    let _restart = RestartSlave(url_from_env(REPLICA_URL_ENV).unwrap_or_else(|e| panic!("{e}")));

    let added = store
        .add_member(
            chat.chat_id,
            Member {
                user_id: bob.user_id,
                role: Role::Member,
            },
            100,
        )
        .await
        .expect("add bob");
    assert!(added);
    let sent = store
        .append(message(chat.chat_id, bob.user_id, "m11"))
        .await
        .expect("send")
        .message;
    assert_eq!(sent.seq, Seq(11));
    let carol = store.create_user(new_user("carol")).await.expect("user");

    // The replica really does not have them...
    let membership_sql = format!(
        "SELECT COUNT(*) FROM `{db}`.user_chat WHERE chat_id = {} AND user_id = {}",
        chat.chat_id, bob.user_id
    );
    let newest_sql = format!(
        "SELECT COALESCE(MAX(seq), 0) FROM `{db}`.messages WHERE chat_id = {}",
        chat.chat_id
    );
    let carol_sql = format!(
        "SELECT COUNT(*) FROM `{db}`.users WHERE user_id = {}",
        carol.user_id
    );
    assert_eq!(replica_count(&mut replica, &membership_sql).await, 0);
    assert_eq!(replica_count(&mut replica, &newest_sql).await, 10);
    assert_eq!(replica_count(&mut replica, &carol_sql).await, 0);

    // ...yet every read through the store sees every write at once.
    let fallbacks_before = store.replica_stats().primary_fallbacks;
    assert_eq!(
        store.role(chat.chat_id, bob.user_id).await.expect("role"),
        Some(Role::Member),
        "a member just added can read"
    );
    let latest = store
        .fetch(chat.chat_id, FetchQuery::Latest { limit: 50 })
        .await
        .expect("fetch");
    assert_eq!(
        latest.last(),
        Some(&sent),
        "a fetch right after a send sees it"
    );
    let catch_up = store
        .fetch(
            chat.chat_id,
            FetchQuery::After {
                after: Seq(10),
                limit: 50,
            },
        )
        .await
        .expect("fetch after");
    assert_eq!(catch_up, vec![sent.clone()]);
    assert_eq!(
        store.last_seq(chat.chat_id).await.expect("last_seq"),
        Seq(11)
    );
    let newest_page = store
        .fetch(
            chat.chat_id,
            FetchQuery::Before {
                before: Seq(12),
                limit: 3,
            },
        )
        .await
        .expect("history");
    assert_eq!(
        newest_page.iter().map(|m| m.seq.get()).collect::<Vec<_>>(),
        [9, 10, 11],
        "a page the replica cannot complete comes from the primary"
    );
    assert_eq!(
        store.user(carol.user_id).await.expect("user"),
        Some(carol.clone()),
        "a user just registered is found"
    );
    let bobs_chats = store.chats_of_user(bob.user_id).await.expect("chats");
    assert_eq!(
        bobs_chats,
        vec![(chat.clone(), Role::Member)],
        "chats_of_user waits for the replica or asks the primary"
    );
    let fallbacks_after = store.replica_stats().primary_fallbacks;
    assert!(
        fallbacks_after >= fallbacks_before + 3,
        "user(), the newest page and chats_of_user fell back to the primary: \
         {fallbacks_before} -> {fallbacks_after}"
    );

    // 3. The replica catches up; its reads are served by it again.
    replica
        .query_drop("START SLAVE SQL_THREAD")
        .await
        .expect("start the replica's SQL thread");
    wait_for_replica(&mut replica, &newest_sql, 11).await;
    wait_for_replica(&mut replica, &membership_sql, 1).await;
    wait_for_replica(&mut replica, &carol_sql, 1).await;
    // The store skipped the lagging replica for its cooldown; wait until it uses it again.
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let stats = store.replica_stats();
        let chats = store.chats_of_user(bob.user_id).await.expect("chats");
        assert_eq!(chats, vec![(chat.clone(), Role::Member)]);
        if store.replica_stats().replica_reads > stats.replica_reads {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store never read from the caught-up replica again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = store.replica_stats();
    assert_eq!(store.user(carol.user_id).await.expect("user"), Some(carol));
    assert_eq!(
        store.replica_stats().replica_reads,
        before.replica_reads + 1,
        "a converged replica answers"
    );

    drop(replica);
    store.close().await.expect("close");
    drop_database(&url).await.expect("drop the test database");
}

/// A history page read right after an edit, a delete or a reaction shows it, although the
/// replica holds every row of the page (in its old state): the page comes from the replica only
/// when the replica has the chat's current `rev`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_is_read_back_at_once_while_the_replica_lags() {
    let (store, url) = setup().await;
    let db = url.rsplit('/').next().expect("db").to_owned();
    let mut replica = replica_conn().await;
    let alice = store.create_user(new_user("alice")).await.expect("user");
    let (chat, _) = store
        .create_chat(NewChat {
            chat_name: "edited".to_owned(),
            owner_id: alice.user_id,
            member_ids: vec![],
            created_at: now_millis(),
        })
        .await
        .expect("chat");
    for i in 1..=5 {
        store
            .append(message(chat.chat_id, alice.user_id, &format!("e{i}")))
            .await
            .expect("append");
    }
    let rev_sql = format!(
        "SELECT COALESCE(MAX(last_rev), 0) FROM `{db}`.chat_seq WHERE chat_id = {}",
        chat.chat_id
    );
    wait_for_replica(&mut replica, &rev_sql, 5).await;
    let page_query = FetchQuery::Before {
        before: Seq(6),
        limit: 5,
    };

    // A caught-up replica answers the page.
    let before = store.replica_stats();
    let page = store.fetch(chat.chat_id, page_query).await.expect("page");
    assert_eq!(page.len(), 5);
    assert_eq!(
        store.replica_stats().replica_reads,
        before.replica_reads + 1,
        "a replica at the chat's revision answers the page"
    );

    // The replica stops applying; the message changes on the primary.
    let _pause = REPLICA_PAUSE.lock().await;
    replica
        .query_drop("STOP SLAVE SQL_THREAD")
        .await
        .expect("stop the replica's SQL thread");
    let _restart = RestartSlave(url_from_env(REPLICA_URL_ENV).unwrap_or_else(|e| panic!("{e}")));
    let edited = store
        .change(
            chat.chat_id,
            Seq(3),
            MessageChange::Edit {
                msg_text: "e3, edited".to_owned(),
                edited_at: now_millis(),
            },
        )
        .await
        .expect("edit");
    assert_eq!(edited.rev, Rev(6));
    let deleted = store
        .change(chat.chat_id, Seq(4), MessageChange::Delete)
        .await
        .expect("delete");
    let reacted = store
        .change(
            chat.chat_id,
            Seq(5),
            MessageChange::React {
                user_id: alice.user_id,
                emoji: "👍".to_owned(),
                add: true,
            },
        )
        .await
        .expect("react");
    assert_eq!(
        replica_count(&mut replica, &rev_sql).await,
        5,
        "the replica lags"
    );
    let old_text_sql = format!(
        "SELECT COUNT(*) FROM `{db}`.messages WHERE chat_id = {} AND msg_text IN ('e3', 'e4')",
        chat.chat_id
    );
    assert_eq!(
        replica_count(&mut replica, &old_text_sql).await,
        2,
        "the replica still has the old texts"
    );

    // Yet the page shows every change at once: the primary answers it.
    let fallbacks = store.replica_stats().primary_fallbacks;
    let page = store.fetch(chat.chat_id, page_query).await.expect("page");
    assert_eq!(page[2], edited, "an edit is read back at once");
    assert_eq!(page[3], deleted, "a deleted text never comes back");
    assert!(page[3].msg_text.is_empty());
    assert_eq!(page[4], reacted, "a reaction is read back at once");
    assert!(
        store.replica_stats().primary_fallbacks > fallbacks,
        "the lagging replica's page was refused"
    );
    let feed = store
        .changes(chat.chat_id, Rev(5), 10)
        .await
        .expect("change feed");
    assert_eq!(feed, vec![edited.clone(), deleted.clone(), reacted.clone()]);

    // Caught up, the replica answers again, with the current state.
    replica
        .query_drop("START SLAVE SQL_THREAD")
        .await
        .expect("start the replica's SQL thread");
    wait_for_replica(&mut replica, &rev_sql, 8).await;
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let stats = store.replica_stats();
        let page = store.fetch(chat.chat_id, page_query).await.expect("page");
        assert_eq!(
            &page[2..],
            &[edited.clone(), deleted.clone(), reacted.clone()]
        );
        if store.replica_stats().replica_reads > stats.replica_reads {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store never read from the caught-up replica again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    drop(replica);
    store.close().await.expect("close");
    drop_database(&url).await.expect("drop the test database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_only_sends_reads_to_the_primary() {
    let base = url_from_env(PRIMARY_URL_ENV).unwrap_or_else(|e| panic!("{e}"));
    let url = fresh_database(&base).await.expect("fresh database");
    // Nothing listens on port 1: every replica attempt is refused.
    let dead = with_database("mysql://chat:x@127.0.0.1:1", "whatever").expect("url");
    let store = MysqlStore::connect(MysqlConfig::new(url.clone(), vec![dead]))
        .await
        .expect("a dead replica does not stop the store from opening");

    let user = store.create_user(new_user("dave")).await.expect("user");
    let (chat, _) = store
        .create_chat(NewChat {
            chat_name: "solo".to_owned(),
            owner_id: user.user_id,
            member_ids: vec![],
            created_at: now_millis(),
        })
        .await
        .expect("chat");
    for i in 1..=3 {
        store
            .append(message(chat.chat_id, user.user_id, &format!("d{i}")))
            .await
            .expect("append");
    }
    assert_eq!(
        store.user(user.user_id).await.expect("user"),
        Some(user.clone())
    );
    assert_eq!(
        store.chat(chat.chat_id).await.expect("chat"),
        Some(chat.clone())
    );
    assert_eq!(
        store.chats_of_user(user.user_id).await.expect("chats"),
        vec![(chat.clone(), Role::Owner)]
    );
    let page = store
        .fetch(
            chat.chat_id,
            FetchQuery::Before {
                before: Seq(4),
                limit: 10,
            },
        )
        .await
        .expect("history");
    assert_eq!(page.len(), 3);
    let stats = store.replica_stats();
    assert_eq!(stats.replica_reads, 0);
    assert!(stats.primary_fallbacks >= 1, "{stats:?}");

    store.close().await.expect("close");
    drop_database(&url).await.expect("drop the test database");
}
