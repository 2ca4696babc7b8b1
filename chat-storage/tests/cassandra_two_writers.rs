//! Two independent stores (separate driver sessions and in-process state, standing in for two
//! server nodes) append to the same chat at once through a real Cassandra
//! (`CHAT_TEST_CASSANDRA_URL`): dense seq, no duplicates, every ack present in history, and a
//! send retried through the *other* node returns the first one's message. And both change the
//! same messages while appending and while a third reader follows the change feed: every
//! revision handed out once, none skipped, no change lost, and the feed (read live or from
//! zero) ends in exactly the history's state. And both delete the same messages: one tombstone
//! each, as the chat list counts them.
#![cfg(all(feature = "cassandra", feature = "testing"))]

use chat_core::{
    Appended, ChatId, FetchQuery, Message, MessageChange, MessageStore, NewMessage, Rev, Seq,
    UserId,
};
use chat_storage::cassandra::testing::{fresh_keyspace_url, url_from_env};
use chat_storage::cassandra::{CassandraConfig, CassandraMessageStore};
use std::collections::BTreeMap;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
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

const CHANGE_TASKS_PER_NODE: i64 = 3;
const CHANGES_PER_TASK: i64 = 24;
const SEEDED: i64 = 6;

/// What one writer task did and was told.
#[derive(Default)]
struct Done {
    /// Revisions acknowledged for changes and appends that were not retried.
    revs: Vec<Rev>,
    /// Whether any operation had to be retried (its first attempt's outcome is unknown).
    retried: bool,
    /// (seq, user, emoji) of every reaction added.
    reactions: Vec<(Seq, UserId, String)>,
    /// (seq, rev, text) of every edit.
    edits: Vec<(Seq, Rev, String)>,
    /// Messages appended.
    appended: Vec<Message>,
}

/// Changes like a client: a retryable error is retried (every change here is idempotent).
async fn change_until_acked(
    store: &CassandraMessageStore,
    chat: ChatId,
    seq: Seq,
    change: &MessageChange,
) -> (Message, bool) {
    let mut retried = false;
    for _ in 0..100 {
        match store.change(chat, seq, change.clone()).await {
            Ok(m) => return (m, retried),
            Err(e) if e.is_retryable() => {
                eprintln!("change of {seq}: {e}; retrying");
                retried = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("change failed with a non-retryable error: {e:?}"),
        }
    }
    panic!("change of {seq} never succeeded")
}

/// The whole feed from `after`, in pages of `page`.
async fn feed(store: &CassandraMessageStore, chat: ChatId, after: Rev, page: u32) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    let mut after = after;
    loop {
        let got = store.changes(chat, after, page).await.expect("changes");
        if got.is_empty() {
            return out;
        }
        after = got.last().map_or(after, |m| m.rev);
        out.extend(got);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_change_the_same_messages_while_appending() {
    let url = fresh_keyspace_url(&url_from_env("CHAT_TEST_CASSANDRA_URL"));
    let (node_a, node_b) = tokio::join!(open(&url), open(&url));
    let reader = open(&url).await;
    let nodes = [Arc::clone(&node_a), Arc::clone(&node_b)];
    let chat = ChatId(9_000_002);
    for i in 0..SEEDED {
        let m = NewMessage {
            reply_to_seq: None,
            chat_id: chat,
            sender_id: UserId(1),
            msg_text: format!("seed {i}"),
            sent_at: chat_core::ids::now_millis(),
            timestamp: None,
            client_msg_id: None,
        };
        node_a.append(m).await.expect("seed");
    }

    // A client following the feed live: it keeps its cursor and the latest state per seq, and
    // checks that no page ever shows a revision at or below one it already passed.
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let stop = Arc::clone(&stop);
        let reader = Arc::clone(&reader);
        tokio::spawn(async move {
            let mut cursor = Rev::ZERO;
            let mut state: BTreeMap<Seq, Message> = BTreeMap::new();
            let mut pages = 0;
            loop {
                let done = stop.load(Ordering::SeqCst);
                let page = reader.changes(chat, cursor, 7).await.expect("follow");
                for m in &page {
                    assert!(
                        m.rev > cursor,
                        "the feed went back: {} after {cursor}",
                        m.rev
                    );
                    cursor = m.rev;
                    state.insert(m.seq, m.clone());
                }
                pages += 1;
                if page.is_empty() {
                    if done {
                        return (state, pages);
                    }
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
        })
    };

    let mut handles = Vec::new();
    for (node_index, node) in nodes.iter().enumerate() {
        for task in 0..CHANGE_TASKS_PER_NODE {
            let node = Arc::clone(node);
            let me = i64::try_from(node_index).expect("small") * 100 + task + 10;
            handles.push(tokio::spawn(async move {
                let mut done = Done::default();
                for round in 0..CHANGES_PER_TASK {
                    // Everybody works on the same few messages.
                    let seq = Seq(1 + (me + round) % SEEDED);
                    if round % 6 == 5 {
                        let cmid = format!("a{me}-{round}");
                        let m = NewMessage {
                            reply_to_seq: Some(seq),
                            chat_id: chat,
                            sender_id: UserId(me),
                            msg_text: cmid.clone(),
                            sent_at: chat_core::ids::now_millis(),
                            timestamp: None,
                            client_msg_id: Some(cmid),
                        };
                        let (a, retried) = send_until_acked(&node, &m).await;
                        done.retried |= retried;
                        if !retried {
                            done.revs.push(a.message.rev);
                        }
                        done.appended.push(a.message);
                        continue;
                    }
                    let change = if round % 4 == 3 {
                        MessageChange::Edit {
                            msg_text: format!("edit by {me} in round {round}"),
                            edited_at: chat_core::ids::now_millis(),
                        }
                    } else {
                        MessageChange::React {
                            user_id: UserId(me),
                            // A task comes back to the same message every SEEDED rounds:
                            // with another emoji each time, so no reaction is a repeat.
                            emoji: format!("e{}", round / SEEDED),
                            add: true,
                        }
                    };
                    let (m, retried) = change_until_acked(&node, chat, seq, &change).await;
                    assert_eq!(m.seq, seq);
                    done.retried |= retried;
                    if !retried {
                        done.revs.push(m.rev);
                    }
                    match change {
                        MessageChange::Edit { msg_text, .. } => {
                            assert_eq!(m.msg_text, msg_text);
                            done.edits.push((seq, m.rev, msg_text));
                        }
                        MessageChange::React { user_id, emoji, .. } => {
                            done.reactions.push((seq, user_id, emoji));
                        }
                        _ => unreachable!("only edits and reactions here"),
                    }
                }
                done
            }));
        }
    }
    let mut all = Done::default();
    for h in handles {
        let d = h.await.expect("writer task");
        all.revs.extend(d.revs);
        all.retried |= d.retried;
        all.reactions.extend(d.reactions);
        all.edits.extend(d.edits);
        all.appended.extend(d.appended);
    }
    stop.store(true, Ordering::SeqCst);
    let (followed, pages) = follower.await.expect("follower");
    eprintln!("the follower read {pages} pages");

    // Every acknowledged revision was handed out once; with no retries they are exactly the
    // revisions after the seeds (every change here changes something, so each took one).
    let operations = 2 * CHANGE_TASKS_PER_NODE * CHANGES_PER_TASK;
    let distinct: HashSet<Rev> = all.revs.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        all.revs.len(),
        "a revision handed out twice"
    );
    if !all.retried {
        let want: HashSet<Rev> = (SEEDED + 1..=SEEDED + operations).map(Rev).collect();
        assert_eq!(distinct, want, "revisions are dense and none is skipped");
    }

    for store in [&node_a, &node_b] {
        let current = history(store, chat).await;
        let by_seq: HashMap<Seq, &Message> = current.iter().map(|m| (m.seq, m)).collect();
        assert_eq!(
            current.len(),
            usize::try_from(SEEDED).expect("small") + all.appended.len()
        );
        // No reaction lost.
        for (seq, user, emoji) in &all.reactions {
            let m = by_seq[seq];
            let r = m.reactions.iter().find(|r| &r.emoji == emoji);
            assert!(
                r.is_some_and(|r| r.user_ids.contains(user)),
                "reaction {emoji} of {user} on {seq} lost"
            );
        }
        // Each message's text is that of its latest edit.
        let mut latest: HashMap<Seq, (Rev, &str)> = HashMap::new();
        for (seq, rev, text) in &all.edits {
            let e = latest.entry(*seq).or_insert((*rev, text));
            if *rev > e.0 {
                *e = (*rev, text);
            }
        }
        for (seq, (_, text)) in &latest {
            assert_eq!(by_seq[seq].msg_text, *text, "the latest edit of {seq} lost");
        }
        // Appends are there, with what they reply to.
        for a in &all.appended {
            assert_eq!(by_seq[&a.seq].reply_to_seq, a.reply_to_seq);
            assert_eq!(by_seq[&a.seq].msg_text, a.msg_text);
        }

        // The feed from zero, in small pages: strictly increasing revisions, each message once,
        // ending at the last revision, in exactly the history's state.
        let fed = feed(store, chat, Rev::ZERO, 5).await;
        assert!(
            fed.windows(2).all(|w| w[0].rev < w[1].rev),
            "feed revisions not strictly increasing"
        );
        let max_rev = current.iter().map(|m| m.rev).max().expect("messages");
        assert_eq!(fed.last().map(|m| m.rev), Some(max_rev));
        if !all.retried {
            assert_eq!(max_rev, Rev(SEEDED + operations));
        }
        let mut fed_by_seq = fed;
        fed_by_seq.sort_by_key(|m| m.seq);
        assert_eq!(fed_by_seq, current, "the feed and the history disagree");
        // The live follower ended in the same state.
        let followed: Vec<Message> = followed.values().cloned().collect();
        assert_eq!(followed, current, "the live follower missed a change");
    }
}

/// Two nodes delete the same messages at once (each delete asked of both, as a client retrying
/// through the other node would) while appending: each deleted message is one tombstone, and
/// the chat list of a third node counts exactly the history's tombstones above any marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_deleting_the_same_messages_leave_one_tombstone_each() {
    let url = fresh_keyspace_url(&url_from_env("CHAT_TEST_CASSANDRA_URL"));
    let (node_a, node_b) = tokio::join!(open(&url), open(&url));
    let reader = open(&url).await;
    let chat = ChatId(9_000_003);
    let send = move |i: i64| NewMessage {
        reply_to_seq: None,
        chat_id: chat,
        sender_id: UserId(1),
        msg_text: format!("m{i}"),
        sent_at: chat_core::ids::now_millis(),
        timestamp: None,
        client_msg_id: None,
    };
    for i in 0..30 {
        node_a.append(send(i)).await.expect("seed");
    }
    let tasks: Vec<_> = [Arc::clone(&node_a), Arc::clone(&node_b)]
        .into_iter()
        .enumerate()
        .map(|(n, node)| {
            tokio::spawn(async move {
                for seq in (3..=30).step_by(3) {
                    let mut done = false;
                    for _ in 0..100 {
                        match node.change(chat, Seq(seq), MessageChange::Delete).await {
                            Ok(m) => {
                                assert!(m.deleted);
                                done = true;
                                break;
                            }
                            Err(e) if e.is_retryable() => {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(e) => panic!("delete {seq} on node {n}: {e:?}"),
                        }
                    }
                    assert!(done, "delete {seq} never went through on node {n}");
                    if seq % 9 == 0 {
                        send_until_acked(&node, &send(100 + seq)).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("deleting node");
    }
    let all = history(&reader, chat).await;
    assert_eq!(all.iter().filter(|m| m.deleted).count(), 10);
    let last_seq = all.last().map_or(Seq::ZERO, |m| m.seq);
    let markers = [0, 2, 3, 14, 15, 29, 30, last_seq.get()];
    let asked: Vec<(ChatId, Seq)> = markers.iter().map(|&m| (chat, Seq(m))).collect();
    let got = reader.activity(&asked).await.expect("activity");
    for (x, &(_, marker)) in got.iter().zip(&asked) {
        let want = all.iter().filter(|m| m.deleted && m.seq > marker).count() as u64;
        assert_eq!(x.deleted_after, want, "tombstones above {marker}");
        assert_eq!(x.last_seq, last_seq);
        assert_eq!(x.last_message.as_ref(), all.last());
    }
}
