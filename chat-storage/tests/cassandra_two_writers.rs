//! Two independent stores (separate driver sessions and in-process state, standing in for two
//! server nodes) append to the same chat at once through a real Cassandra
//! (`CHAT_TEST_CASSANDRA_URL`): dense seq, no duplicates, every ack present in history, and a
//! send retried through the *other* node returns the first one's message.
#![cfg(all(feature = "cassandra", feature = "testing"))]

use chat_core::{Appended, ChatId, FetchQuery, Message, MessageStore, NewMessage, Seq, UserId};
use chat_storage::cassandra::testing::{fresh_keyspace_url, url_from_env};
use chat_storage::cassandra::{CassandraConfig, CassandraMessageStore};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

const TASKS_PER_NODE: i64 = 4;
const SENDS_PER_TASK: i64 = 40;

async fn open(url: &str) -> Arc<CassandraMessageStore> {
    Arc::new(
        CassandraMessageStore::connect(CassandraConfig::from_url(url).expect("url"))
            .await
            .expect("connect"),
    )
}

async fn history(store: &CassandraMessageStore, chat: ChatId) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    loop {
        let after = out.last().map_or(Seq::ZERO, |m| m.seq);
        let page = store
            .fetch(chat, FetchQuery::After { after, limit: 100 })
            .await
            .expect("fetch");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Appends like a client: retryable errors are retried with the same message. Returns the
/// result and whether any attempt failed first.
async fn send_until_acked(store: &CassandraMessageStore, m: &NewMessage) -> (Appended, bool) {
    let mut retried = false;
    for _ in 0..100 {
        match store.append(m.clone()).await {
            Ok(a) => return (a, retried),
            Err(e) if e.is_retryable() => {
                eprintln!("send {:?}: {e}; retrying", m.client_msg_id);
                retried = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("send failed with a non-retryable error: {e:?}"),
        }
    }
    panic!("send {:?} never succeeded", m.client_msg_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_append_to_one_chat_concurrently() {
    let url = fresh_keyspace_url(&url_from_env("CHAT_TEST_CASSANDRA_URL"));
    // Both nodes start at once against a keyspace that does not exist yet: the migration claim
    // (an LWT on schema_migrations) lets one of them run the DDL while the other waits.
    let (node_a, node_b) = tokio::join!(open(&url), open(&url));
    let nodes = [Arc::clone(&node_a), Arc::clone(&node_b)];
    let chat = ChatId(9_000_001);

    let mut handles = Vec::new();
    for (node_index, node) in nodes.iter().enumerate() {
        for task in 0..TASKS_PER_NODE {
            let node = Arc::clone(node);
            let other = Arc::clone(&nodes[1 - node_index]);
            let sender = i64::try_from(node_index).expect("small") * 100 + task + 1;
            handles.push(tokio::spawn(async move {
                let mut acked: Vec<Appended> = Vec::new();
                for i in 0..SENDS_PER_TASK {
                    let cmid = format!("s{sender}-{i}");
                    let m = NewMessage {
                        reply_to_seq: None,
                        chat_id: chat,
                        sender_id: UserId(sender),
                        msg_text: cmid.clone(),
                        sent_at: chat_core::ids::now_millis(),
                        timestamp: Some(i),
                        client_msg_id: Some(cmid),
                    };
                    // Like a client: a retryable error (a lightweight transaction that timed out
                    // under contention, outcome unknown) is retried with the same client_msg_id.
                    let (first, retried) = send_until_acked(&node, &m).await;
                    assert!(
                        first.created || retried,
                        "a first send that did not fail creates its message"
                    );
                    // Every 5th send is retried through the other node (a client that
                    // reconnected elsewhere): same message back, nothing new stored.
                    if i % 5 == 0 {
                        let (again, _) = send_until_acked(&other, &m).await;
                        assert!(!again.created, "a retry through the other node must dedupe");
                        assert_eq!(again.message, first.message);
                    }
                    acked.push(first);
                }
                acked
            }));
        }
    }
    let mut acked: Vec<Appended> = Vec::new();
    for h in handles {
        let mine = h.await.expect("sender task");
        assert!(
            mine.windows(2).all(|w| w[0].message.seq < w[1].message.seq),
            "one sender's sequential sends get increasing seqs"
        );
        acked.extend(mine);
    }

    let total = usize::try_from(2 * TASKS_PER_NODE * SENDS_PER_TASK).expect("small");
    let seqs: HashSet<Seq> = acked.iter().map(|a| a.message.seq).collect();
    assert_eq!(seqs.len(), total, "no seq handed out twice");

    for reader in [&node_a, &node_b] {
        let all = history(reader, chat).await;
        let got: Vec<i64> = all.iter().map(|m| m.seq.get()).collect();
        let want: Vec<i64> = (1..=i64::try_from(total).expect("small")).collect();
        assert_eq!(got, want, "history is exactly 1..={total}");
        let by_seq: HashMap<Seq, &Message> = all.iter().map(|m| (m.seq, m)).collect();
        for a in &acked {
            assert_eq!(
                by_seq.get(&a.message.seq).copied(),
                Some(&a.message),
                "every ack is in history as acked"
            );
        }
        let keys: HashSet<(UserId, Option<String>)> = all
            .iter()
            .map(|m| (m.sender_id, m.client_msg_id.clone()))
            .collect();
        assert_eq!(keys.len(), total, "no (sender, client_msg_id) stored twice");
        assert_eq!(
            reader.last_seq(chat).await.expect("last_seq"),
            Seq(i64::try_from(total).expect("small"))
        );
    }
}
