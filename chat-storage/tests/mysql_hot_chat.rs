//! One hot chat must not take the MySQL store away from everyone else.
//!
//! Appends to one chat serialise on its `chat_seq` row lock. Before appends waited for their
//! chat's turn in process, each concurrent append held a pooled primary connection while it
//! waited on that lock, so a burst of sends to one chat held the whole pool and every other
//! operation (a login's user lookup, another chat's send) timed out waiting for a connection.
//! Here a small pool (4 connections, 1 s to get one) takes bursts of 200 concurrent appends to
//! one chat while other chats send and users are read: the other operations must all succeed,
//! and every append that was acked must be in the hot chat, once, with `seq` dense.
//!
//! Needs `CHAT_TEST_MYSQL_URL` (`scripts/mariadb.sh start && eval "$(scripts/mariadb.sh env)"`).
#![cfg(all(feature = "mysql", feature = "testing"))]

use chat_core::ids::now_millis;
use chat_core::{
    ChatId, Error, FetchQuery, MessageStore, MetadataStore, NewChat, NewMessage, NewUser, Seq,
    UserId,
};
use chat_storage::mysql::testing::{drop_database, fresh_database, url_from_env, PRIMARY_URL_ENV};
use chat_storage::mysql::{MysqlConfig, MysqlStore};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent appends to the hot chat per burst, and bursts.
const BURST: usize = 200;
const BURSTS: usize = 3;

fn message(chat: ChatId, sender: UserId, id: String) -> NewMessage {
    NewMessage {
        reply_to_seq: None,
        chat_id: chat,
        sender_id: sender,
        msg_text: format!("text of {id}"),
        sent_at: now_millis(),
        timestamp: None,
        client_msg_id: Some(id),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_chat_cannot_hold_the_whole_pool() {
    let base = url_from_env(PRIMARY_URL_ENV).unwrap_or_else(|e| panic!("{e}"));
    let url = fresh_database(&base).await.expect("fresh database");
    let mut config = MysqlConfig::new(url.clone(), Vec::new());
    config.primary_pool_size = 4;
    config.acquire_timeout = Duration::from_secs(1);
    let store = Arc::new(MysqlStore::connect(config).await.expect("connect"));

    let user = store
        .create_user(NewUser {
            email: format!("hot-{}@example.test", rand::random::<u64>()),
            display_name: "hot".into(),
            pw_hash: "$argon2id$v=19$m=19456,t=2,p=1$x$y".into(),
            created_at: now_millis(),
        })
        .await
        .expect("user");
    let mut chats = Vec::new();
    for name in ["hot", "quiet 1", "quiet 2"] {
        let (chat, _) = store
            .create_chat(NewChat {
                chat_name: name.into(),
                owner_id: user.user_id,
                member_ids: Vec::new(),
                created_at: now_millis(),
            })
            .await
            .expect("chat");
        chats.push(chat.chat_id);
    }
    let hot = chats[0];

    let mut acked = HashSet::new();
    let mut backed_up = 0usize;
    for burst in 0..BURSTS {
        let appends: Vec<_> = (0..BURST)
            .map(|i| {
                let store = store.clone();
                let m = message(hot, user.user_id, format!("b{burst}-{i}"));
                tokio::spawn(async move { (m.client_msg_id.clone(), store.append(m).await) })
            })
            .collect();
        // Meanwhile: other chats' sends and user lookups, one after another.
        let started = Instant::now();
        let mut others = 0;
        while started.elapsed() < Duration::from_millis(1500) {
            for &quiet in &chats[1..] {
                let m = message(quiet, user.user_id, format!("q{burst}-{others}-{quiet}"));
                store
                    .append(m)
                    .await
                    .unwrap_or_else(|e| panic!("a quiet chat's send failed during the burst: {e}"));
            }
            store
                .user(user.user_id)
                .await
                .unwrap_or_else(|e| panic!("a user lookup failed during the burst: {e}"))
                .expect("the user exists");
            others += 1;
        }
        for task in appends {
            match task.await.expect("append task") {
                (Some(id), Ok(a)) => {
                    assert!(acked.insert(id), "one client_msg_id acked twice");
                    assert!(a.created);
                }
                // The hot chat itself may shed load (retryable), never the others.
                (_, Err(Error::Unavailable { .. })) => backed_up += 1,
                (_, Err(e)) => panic!("hot chat append: {e}"),
                (None, Ok(_)) => unreachable!("every append has an id"),
            }
        }
    }
    eprintln!(
        "hot chat: {} acked, {backed_up} answered 503 of {}",
        acked.len(),
        BURST * BURSTS
    );

    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(Seq::ZERO, |m: &chat_core::Message| m.seq);
        let page = store
            .fetch(hot, FetchQuery::After { after, limit: 500 })
            .await
            .expect("history page");
        if page.is_empty() {
            break;
        }
        all.extend(page);
    }
    // Every ack is stored, once; `seq` is dense. (An append that timed out after its COMMIT
    // went out may be stored without an ack: that is what client_msg_id retries are for.)
    let mut stored = HashSet::new();
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.seq.get(), i as i64 + 1, "seq is not dense");
        let id = m.client_msg_id.clone().expect("id");
        assert!(stored.insert(id), "a client_msg_id stored twice");
    }
    let missing: Vec<_> = acked.difference(&stored).collect();
    assert!(missing.is_empty(), "acked but not stored: {missing:?}");
    drop(store);
    drop_database(&url).await.expect("drop the test database");
}
