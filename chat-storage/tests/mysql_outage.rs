//! MariaDB's primary stopped, crashed and restarted under a running store: while it is down every
//! call that needs it fails with `Unavailable` in bounded time (no hang, no panic), reads the
//! replica may answer still work, and after the restart the same store works again by itself
//! with every acknowledged message in place and `seq` still dense.
//!
//! This test stops and kills the shared primary (through `scripts/mariadb.sh stop-primary`,
//! `crash-primary` and `start-primary`), so it must not run at the same time as any other MySQL
//! test: CI runs it as its own `cargo test ... --test mysql_outage` after the others. Needs
//! `CHAT_TEST_MYSQL_URL` and `CHAT_TEST_MYSQL_REPLICA_URL` like them.
#![cfg(all(feature = "mysql", feature = "testing"))]

use chat_core::ids::now_millis;
use chat_core::{
    ChatId, Error, FetchQuery, Message, MessageStore, MetadataStore, NewChat, NewMessage,
    NewSession, NewUser, Seq, UserId,
};
use chat_storage::mysql::testing::{
    drop_database, fresh_database, url_from_env, with_database, PRIMARY_URL_ENV, REPLICA_URL_ENV,
};
use chat_storage::mysql::{MysqlConfig, MysqlStore};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A call that has not answered after this long is hung (the store's own timeouts are a few
/// seconds; this is only the test's hang detector, generous for a loaded machine).
const HANG: Duration = Duration::from_secs(60);
/// How long a restarted primary may take to serve again (crash recovery included).
const RECOVERY: Duration = Duration::from_secs(180);

/// `scripts/mariadb.sh`.
fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/mariadb.sh")
}

/// Runs `scripts/mariadb.sh <command>` and insists that it worked.
async fn mariadb(command: &str) {
    let status = tokio::process::Command::new("bash")
        .arg(script())
        .arg(command)
        .status()
        .await
        .expect("run scripts/mariadb.sh");
    assert!(status.success(), "scripts/mariadb.sh {command} failed");
}

/// Starts the primary again when dropped, so a failing test leaves the server up for the others.
struct RestartPrimary;

impl Drop for RestartPrimary {
    fn drop(&mut self) {
        let ok = std::process::Command::new("bash")
            .arg(script())
            .arg("start-primary")
            .status()
            .map(|s| s.success());
        if !matches!(ok, Ok(true)) {
            eprintln!("could not restart the MariaDB primary: {ok:?}");
        }
    }
}

/// Awaits `call`, failing the test if it hangs.
async fn answered<T>(what: &str, call: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung while the primary was down"))
}

/// Asserts that `result` is `Unavailable`.
fn assert_unavailable<T: std::fmt::Debug>(what: &str, result: chat_core::Result<T>) {
    match result {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("{what} while the primary is down must be Unavailable, got {other:?}"),
    }
}

fn message(chat: ChatId, sender: UserId, cmid: &str) -> NewMessage {
    NewMessage {
        reply_to_seq: None,
        chat_id: chat,
        sender_id: sender,
        msg_text: format!("text of {cmid}"),
        sent_at: now_millis(),
        timestamp: None,
        client_msg_id: Some(cmid.to_owned()),
    }
}

/// Waits until the store answers again, without reopening it.
async fn wait_until_healthy(store: &MysqlStore) {
    let deadline = Instant::now() + RECOVERY;
    loop {
        match MetadataStore::health(store).await {
            Ok(()) => return,
            Err(e) => {
                assert!(e.is_retryable(), "while recovering: {e:?}");
                assert!(
                    Instant::now() < deadline,
                    "the store did not recover after the restart: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The whole chat, read forward.
async fn fetch_all(store: &MysqlStore, chat: ChatId) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    loop {
        let after = out.last().map_or(Seq::ZERO, |m| m.seq);
        let page = store
            .fetch(chat, FetchQuery::After { after, limit: 200 })
            .await
            .expect("fetch");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Every acked message is stored as acked, and the chat's seqs are exactly 1..=n.
async fn assert_acked_kept(store: &MysqlStore, chat: ChatId, acked: &[Message]) {
    let all = fetch_all(store, chat).await;
    let seqs: Vec<i64> = all.iter().map(|m| m.seq.get()).collect();
    let n = i64::try_from(all.len()).expect("small");
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "seq must stay dense");
    assert_eq!(store.last_seq(chat).await.expect("last_seq"), Seq(n));
    for m in acked {
        let idx = usize::try_from(m.seq.get() - 1).expect("positive seq");
        assert_eq!(
            all.get(idx),
            Some(m),
            "an acked message was lost or changed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn primary_outage_fails_fast_and_recovers_with_every_acked_message() {
    let base = url_from_env(PRIMARY_URL_ENV).unwrap_or_else(|e| panic!("{e}"));
    let replica_base = url_from_env(REPLICA_URL_ENV).unwrap_or_else(|e| panic!("{e}"));
    let url = fresh_database(&base).await.expect("fresh database");
    let db = url.rsplit('/').next().expect("db").to_owned();
    let mut config = MysqlConfig::new(
        url.clone(),
        vec![with_database(&replica_base, &db).expect("replica url")],
    );
    config.acquire_timeout = Duration::from_secs(2);
    config.op_timeout = Duration::from_secs(5);
    let store = Arc::new(MysqlStore::connect(config).await.expect("connect"));

    // Acked before the outage.
    let alice = store
        .create_user(NewUser {
            email: format!("alice-{}@example.test", rand::random::<u64>()),
            display_name: "Alice".to_owned(),
            pw_hash: "$argon2id$x".to_owned(),
            created_at: now_millis(),
        })
        .await
        .expect("user");
    let token = chat_core::TokenHash([7_u8; 32]);
    store
        .create_session(NewSession {
            token_hash: token,
            user_id: alice.user_id,
            created_at: now_millis(),
            expires_at: now_millis() + 3_600_000,
        })
        .await
        .expect("session");
    let (chat, _) = store
        .create_chat(NewChat {
            chat_name: "outage".to_owned(),
            owner_id: alice.user_id,
            member_ids: vec![],
            created_at: now_millis(),
        })
        .await
        .expect("chat");
    let chat_id = chat.chat_id;
    let mut acked = Vec::new();
    for i in 0..20 {
        let a = store
            .append(message(chat_id, alice.user_id, &format!("before-{i}")))
            .await
            .expect("append");
        acked.push(a.message);
    }
    // Let the replica have alice, so the read it may answer can be shown to survive.
    let deadline = Instant::now() + RECOVERY;
    while store.replica_stats().replica_reads == 0 {
        assert_eq!(
            store.user(alice.user_id).await.expect("user"),
            Some(alice.clone())
        );
        assert!(Instant::now() < deadline, "the replica never served alice");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Phase 1: a clean shutdown of the primary.
    let restart = RestartPrimary;
    mariadb("stop-primary").await;
    let s = &*store;
    assert_unavailable(
        "append",
        answered(
            "append",
            s.append(message(chat_id, alice.user_id, "down-1")),
        )
        .await,
    );
    assert_unavailable(
        "fetch",
        answered("fetch", s.fetch(chat_id, FetchQuery::Latest { limit: 50 })).await,
    );
    assert_unavailable("last_seq", answered("last_seq", s.last_seq(chat_id)).await);
    assert_unavailable("session", answered("session", s.session(&token)).await);
    assert_unavailable(
        "role",
        answered("role", s.role(chat_id, alice.user_id)).await,
    );
    assert_unavailable(
        "chats_of_user",
        answered("chats_of_user", s.chats_of_user(alice.user_id)).await,
    );
    assert_unavailable("health", answered("health", MessageStore::health(s)).await);
    // A read the replica may answer still works without the primary.
    assert_eq!(
        answered("user", s.user(alice.user_id))
            .await
            .expect("user from the replica"),
        Some(alice.clone())
    );

    mariadb("start-primary").await;
    wait_until_healthy(s).await;
    assert_acked_kept(s, chat_id, &acked).await;
    assert_eq!(
        s.session(&token).await.expect("session").map(|x| x.user_id),
        Some(alice.user_id)
    );
    let after = s
        .append(message(chat_id, alice.user_id, "after-restart"))
        .await
        .expect("append after the restart");
    assert_eq!(after.message.seq, Seq(21), "failed appends left no hole");
    acked.push(after.message);

    // Phase 2: the primary crashes (SIGKILL) while appends are running.
    let mut writers = Vec::new();
    for w in 0..4 {
        let store = Arc::clone(&store);
        let sender = alice.user_id;
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut unacked = Vec::new();
            for i in 0.. {
                let m = message(chat_id, sender, &format!("crash-{w}-{i}"));
                match store.append(m.clone()).await {
                    Ok(a) => acked.push(a.message),
                    Err(Error::Unavailable { .. }) => {
                        unacked.push(m);
                        break;
                    }
                    Err(e) => panic!("append during a crash must be Unavailable, got {e:?}"),
                }
            }
            (acked, unacked)
        }));
    }
    // Let some appends through, then pull the plug.
    let deadline = Instant::now() + RECOVERY;
    while s.last_seq(chat_id).await.expect("last_seq") < Seq(60) {
        assert!(Instant::now() < deadline, "appends made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mariadb("crash-primary").await;
    let mut unacked = Vec::new();
    for w in writers {
        let (a, u) = answered("appender", w).await.expect("appender task");
        acked.extend(a);
        unacked.extend(u);
    }
    assert!(!unacked.is_empty(), "every appender saw the crash");

    mariadb("start-primary").await;
    wait_until_healthy(s).await;
    assert_acked_kept(s, chat_id, &acked).await;
    // A send that failed during the crash may or may not have been stored (its COMMIT may have
    // reached the disk before the reply was lost). Retrying it with the same client_msg_id
    // stores it at most once, and the chat stays dense.
    for m in unacked {
        let again = s.append(m.clone()).await.expect("retry after the crash");
        assert_eq!(again.message.client_msg_id, m.client_msg_id);
        acked.push(again.message);
    }
    assert_acked_kept(s, chat_id, &acked).await;

    drop(restart);
    drop_database(&url).await.expect("drop the test database");
}
