//! Fault test on a real three-node Cassandra cluster with replication factor 3
//! (`CHAT_TEST_CASSANDRA_CLUSTER_URL`, e.g. `cassandra://127.0.0.1,127.0.0.2,127.0.0.3:9042`,
//! started by `scripts/cassandra.sh start 3`): node 3 is stopped in the middle of a stream of
//! sends; sends and fetches keep working at QUORUM; node 3 comes back; nothing acked is missing,
//! nothing is stored twice, seq stays dense.
//!
//! The test stops and starts node 3 itself through `scripts/cassandra.sh`, and starts it again
//! even when it fails half-way, so later tests find the whole cluster.
#![cfg(all(feature = "cassandra", feature = "testing"))]

use chat_core::{ChatId, Error, FetchQuery, Message, MessageStore, NewMessage, Seq, UserId};
use chat_storage::cassandra::testing::{fresh_keyspace_url, url_from_env};
use chat_storage::cassandra::{CassandraConfig, CassandraMessageStore, Replication};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SENDERS: i64 = 3;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cassandra.sh")
}

/// Runs `scripts/cassandra.sh <args>`, panicking with its output if it fails.
fn cassandra_sh(args: &[&str]) {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("run scripts/cassandra.sh");
    assert!(
        out.status.success(),
        "scripts/cassandra.sh {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts node 3 again when dropped, so a failing test does not leave the cluster degraded.
struct RestartNode3 {
    armed: bool,
}

impl Drop for RestartNode3 {
    fn drop(&mut self) {
        if self.armed {
            let _ = Command::new("bash")
                .arg(script())
                .args(["start-node", "3"])
                .status();
        }
    }
}

/// Sends one message like a client does: a retryable error is retried with the same
/// `client_msg_id` until it succeeds.
async fn send_until_acked(store: &CassandraMessageStore, m: NewMessage) -> Message {
    for attempt in 0..300 {
        match store.append(m.clone()).await {
            Ok(a) => return a.message,
            Err(e) if e.is_retryable() => {
                eprintln!("send {:?} attempt {attempt}: {e}", m.client_msg_id);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("send failed with a non-retryable error: {e:?}"),
        }
    }
    panic!("send {:?} never succeeded", m.client_msg_id);
}

/// A fetch that must work while one replica is down (a couple of retries cover the moment the
/// driver learns that the node went away).
async fn fetch_ok(store: &CassandraMessageStore, chat: ChatId, q: FetchQuery) -> Vec<Message> {
    let mut last: Option<Error> = None;
    for _ in 0..5 {
        match store.fetch(chat, q).await {
            Ok(page) => return page,
            Err(e) => {
                eprintln!("fetch {q:?}: {e}");
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    panic!("fetch {q:?} kept failing with a node down: {last:?}");
}

async fn wait_for_acks(acked: &AtomicUsize, at_least: usize) {
    for _ in 0..3000 {
        if acked.load(Ordering::SeqCst) >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "sends stalled at {} acks, waiting for {at_least}",
        acked.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stops_mid_stream_and_nothing_acked_is_lost() {
    let url = fresh_keyspace_url(&url_from_env("CHAT_TEST_CASSANDRA_CLUSTER_URL"));
    let mut config = CassandraConfig::from_url(&url).expect("url");
    config.replication = Replication::Simple { factor: 3 };
    assert!(
        config.nodes.len() >= 3,
        "CHAT_TEST_CASSANDRA_CLUSTER_URL must name the three nodes: {url}"
    );
    let store = Arc::new(
        CassandraMessageStore::connect(config)
            .await
            .expect("connect"),
    );
    let chat = ChatId(31_337);

    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for sender in 1..=SENDERS {
        let store = Arc::clone(&store);
        let acked = Arc::clone(&acked);
        let stop = Arc::clone(&stop);
        senders.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut i = 0_i64;
            // Paced (about 50 sends/s per sender) so the stream lasts through a slow node
            // restart without a huge history; bounded in count as well as by `stop`.
            while !stop.load(Ordering::SeqCst) && i < 20_000 {
                let cmid = format!("s{sender}-{i}");
                let m = NewMessage {
                    reply_to_seq: None,
                    chat_id: chat,
                    sender_id: UserId(sender),
                    msg_text: cmid.clone(),
                    sent_at: chat_core::ids::now_millis(),
                    timestamp: None,
                    client_msg_id: Some(cmid),
                };
                mine.push(send_until_acked(&store, m).await);
                acked.fetch_add(1, Ordering::SeqCst);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            mine
        }));
    }

    // Phase 1: all three nodes up.
    wait_for_acks(&acked, 60).await;
    // Phase 2: node 3 down, in the middle of the stream.
    let mut restart_guard = RestartNode3 { armed: true };
    tokio::task::spawn_blocking(|| cassandra_sh(&["stop-node", "3"]))
        .await
        .expect("stop node 3");
    let acked_when_down = acked.load(Ordering::SeqCst);
    wait_for_acks(&acked, acked_when_down + 90).await;
    let latest = fetch_ok(&store, chat, FetchQuery::Latest { limit: 50 }).await;
    assert!(!latest.is_empty(), "fetch with a node down sees messages");
    let from_start = fetch_ok(
        &store,
        chat,
        FetchQuery::After {
            after: Seq::ZERO,
            limit: 30,
        },
    )
    .await;
    assert_eq!(
        from_start.iter().map(|m| m.seq.get()).collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>(),
        "history reads dense with a node down"
    );
    // Phase 3: node 3 back.
    tokio::task::spawn_blocking(|| cassandra_sh(&["start-node", "3"]))
        .await
        .expect("start node 3");
    restart_guard.armed = false;
    let acked_when_back = acked.load(Ordering::SeqCst);
    wait_for_acks(&acked, acked_when_back + 60).await;
    stop.store(true, Ordering::SeqCst);

    let mut all_acked: Vec<Message> = Vec::new();
    for s in senders {
        all_acked.extend(s.await.expect("sender task"));
    }
    let mut history: Vec<Message> = Vec::new();
    loop {
        let after = history.last().map_or(Seq::ZERO, |m| m.seq);
        let page = fetch_ok(&store, chat, FetchQuery::After { after, limit: 200 }).await;
        if page.is_empty() {
            break;
        }
        history.extend(page);
    }
    let seqs: Vec<i64> = history.iter().map(|m| m.seq.get()).collect();
    let n = i64::try_from(history.len()).expect("small");
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "history is dense");
    let by_seq: HashMap<Seq, &Message> = history.iter().map(|m| (m.seq, m)).collect();
    for m in &all_acked {
        assert_eq!(
            by_seq.get(&m.seq).copied(),
            Some(m),
            "acked message is in history"
        );
    }
    let keys: HashSet<(UserId, Option<String>)> = history
        .iter()
        .map(|m| (m.sender_id, m.client_msg_id.clone()))
        .collect();
    assert_eq!(keys.len(), history.len(), "nothing stored twice");
    assert_eq!(
        history.len(),
        all_acked.len(),
        "every stored message was acked exactly once"
    );
    eprintln!(
        "{} acked; node 3 went down after {acked_when_down} and was back after {acked_when_back}",
        all_acked.len()
    );
}
