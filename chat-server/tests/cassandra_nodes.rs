//! Two `chat-server` processes appending to one chat at the same time through Cassandra: the
//! real binary, messages in a fresh Cassandra keyspace, users and chats in a fresh MariaDB
//! database, Redis between the nodes. Every acknowledged message must be in the history exactly
//! once, `seq` must be dense, and subscribers on both nodes must see the same order.
//!
//! Needs `CHAT_TEST_CASSANDRA_URL` (`scripts/cassandra.sh start && scripts/cassandra.sh url`) and
//! `CHAT_TEST_MYSQL_URL` (`scripts/mariadb.sh start && eval "$(scripts/mariadb.sh env)"`). Run:
//! `cargo test -p chat-server --all-features --test cassandra_nodes`.

#![cfg(all(feature = "redis", feature = "mysql", feature = "cassandra"))]

mod cluster_common;

use chat_client::{FetchOptions, Message, SendOptions};
use cluster_common::*;
use std::collections::{BTreeMap, HashSet};

/// Senders per node and messages per sender.
const SENDERS_PER_NODE: usize = 3;
const PER_SENDER: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_append_to_one_chat_through_cassandra() {
    let base = chat_storage::cassandra::testing::url_from_env("CHAT_TEST_CASSANDRA_URL");
    let keyspace = chat_storage::cassandra::testing::fresh_keyspace_url(&base);
    let redis = RedisProc::start().await;
    let spec = NodeSpec {
        database: fresh_database().await,
        messages: Some(keyspace),
        redis: redis.url(),
        cache_local_ttl_ms: 2000,
        replica: None,
    };
    // The first node creates the keyspace and migrates the database; the second finds them.
    let a = NodeProc::start("a", &spec).await;
    let b = NodeProc::start("b", &spec).await;

    let (url_a, url_b) = (a.url(), b.url());
    let owner = user(&url_a, "owner").await;
    let mut senders_a = Vec::new();
    let mut senders_b = Vec::new();
    for i in 0..SENDERS_PER_NODE {
        senders_a.push(user(&url_a, &format!("sa{i}")).await);
        senders_b.push(via(&user(&url_a, &format!("sb{i}")).await, &url_b));
    }
    let ids: Vec<_> = senders_a
        .iter()
        .chain(&senders_b)
        .map(|c| c.user_id().expect("logged in"))
        .collect();
    let chat = owner
        .create_chat("two nodes", &ids)
        .await
        .expect("chat")
        .chat_id;

    // A subscriber on each node.
    let mut sub_a = owner.subscribe().await.expect("subscribe on a");
    let mut sub_b = via(&owner, &b.url())
        .subscribe()
        .await
        .expect("subscribe on b");

    let total = 2 * SENDERS_PER_NODE * PER_SENDER;
    let tasks: Vec<_> = senders_a
        .iter()
        .chain(&senders_b)
        .enumerate()
        .map(|(s, c)| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut acked = Vec::with_capacity(PER_SENDER);
                for i in 0..PER_SENDER {
                    let opts = SendOptions::default().with_client_msg_id(format!("s{s}-m{i}"));
                    let m = c
                        .send_with(chat, &format!("sender {s} message {i}"), opts)
                        .await
                        .unwrap_or_else(|e| panic!("sender {s} message {i}: {e}"));
                    acked.push(m);
                }
                acked
            })
        })
        .collect();
    let mut acked: Vec<Message> = Vec::with_capacity(total);
    for t in tasks {
        acked.extend(t.await.expect("sender task"));
    }
    assert_eq!(acked.len(), total);

    // A retry through the *other* node returns the stored message, never a second one.
    let first = &acked[0];
    let again = senders_a[0]
        .send_with(
            chat,
            "a retry",
            SendOptions::default().with_client_msg_id(
                first
                    .client_msg_id
                    .clone()
                    .expect("the SDK gives every send a client_msg_id"),
            ),
        )
        .await
        .expect("retry");
    assert_eq!(again.seq, first.seq, "a retried send got a new seq");

    // History through either node: exactly 1..=total, each client_msg_id once, every ack in it.
    for (name, node) in [("a", &a), ("b", &b)] {
        let history = via(&owner, &node.url())
            .fetch_all_after(chat, chat_client::Seq(0))
            .await
            .expect("history");
        assert_dense(&history, total, name);
        let ids: HashSet<_> = history.iter().map(|m| m.client_msg_id.clone()).collect();
        assert_eq!(ids.len(), total, "{name}: a client_msg_id is stored twice");
        let by_seq: BTreeMap<_, _> = history.iter().map(|m| (m.seq, m)).collect();
        for m in &acked {
            let stored = by_seq
                .get(&m.seq)
                .unwrap_or_else(|| panic!("{name}: acked seq {} missing", m.seq));
            assert_eq!(
                stored.client_msg_id, m.client_msg_id,
                "{name}: seq {} changed",
                m.seq
            );
            assert_eq!(stored.msg_text, m.msg_text);
        }
    }
    let newest = owner
        .fetch(chat, FetchOptions::latest(1))
        .await
        .expect("latest");
    assert_eq!(newest.messages.last().map(|m| m.seq.0), Some(total as i64));

    // Both subscribers saw the same dense order, whichever node each message came through.
    let seen_a = messages(&mut sub_a, chat, total, "subscriber on a").await;
    let seen_b = messages(&mut sub_b, chat, total, "subscriber on b").await;
    assert_dense(&seen_a, total, "subscriber on a");
    assert_dense(&seen_b, total, "subscriber on b");
    assert_eq!(seen_a, seen_b);
}
