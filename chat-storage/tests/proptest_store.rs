//! Property tests of the message store's invariants on [`SqliteStore`]: for any interleaving of
//! appends (alone and concurrent, so they share group commits), retries of earlier sends,
//! fetches, and reopening the file,
//! - `seq` is dense: each chat's messages are exactly 1..=n, and `last_seq` is n;
//! - dedupe holds: a retry with the same `(chat, sender, client_msg_id)` returns the first
//!   message (same `seq`, same text) with `created == false`, and is never stored twice;
//! - pages tile the history exactly: paging back with `Before` from the newest and paging forward
//!   with `After` from 0, at any page size, each visit every message once, in order.
//!
//! Case counts stay modest so the suite runs in well under a minute on two cores.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed case.

use chat_core::{Appended, ChatId, FetchQuery, Message, MessageStore, NewMessage, Seq, UserId};
use chat_storage::sqlite::SqliteStore;
use proptest::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// Chats, senders and client message ids are drawn from small ranges so that retries and
/// collisions are frequent.
const CHATS: i64 = 3;
const SENDERS: i64 = 3;
const CMIDS: u8 = 6;

#[derive(Clone, Debug)]
struct Send {
    chat: i64,
    sender: i64,
    client_msg_id: Option<u8>,
    text: String,
}

#[derive(Clone, Debug)]
enum Op {
    /// One append.
    Append(Send),
    /// Several appends at once (they race into the writer's batches).
    Concurrent(Vec<Send>),
    /// The same request as an earlier append (by index, modulo how many there were).
    Retry(usize),
    /// A page: latest, before or after a position, at a page size.
    Fetch {
        chat: i64,
        kind: u8,
        at: i64,
        limit: u32,
    },
    /// Close the store and open the file again.
    Reopen,
}

fn send() -> impl Strategy<Value = Send> {
    (
        1..=CHATS,
        1..=SENDERS,
        proptest::option::of(0..CMIDS),
        "[a-z ]{1,12}",
    )
        .prop_map(|(chat, sender, client_msg_id, text)| Send {
            chat,
            sender,
            client_msg_id,
            text,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => send().prop_map(Op::Append),
        2 => proptest::collection::vec(send(), 2..6).prop_map(Op::Concurrent),
        2 => any::<usize>().prop_map(Op::Retry),
        2 => (1..=CHATS, 0..3u8, 0..12i64, 1..6u32)
            .prop_map(|(chat, kind, at, limit)| Op::Fetch { chat, kind, at, limit }),
        1 => Just(Op::Reopen),
    ]
}

fn new_message(s: &Send) -> NewMessage {
    NewMessage {
        reply_to_seq: None,
        chat_id: ChatId(s.chat),
        sender_id: UserId(s.sender),
        msg_text: s.text.clone(),
        sent_at: 1_700_000_000_000,
        timestamp: Some(42),
        client_msg_id: s.client_msg_id.map(|c| format!("cmid-{c}")),
    }
}

/// What the store must hold: every chat's messages by seq, and the first message of each
/// idempotency key.
#[derive(Default)]
struct Model {
    chats: HashMap<i64, Vec<Message>>,
    keys: HashMap<(i64, i64, u8), Message>,
    sent: Vec<Send>,
}

impl Model {
    /// Checks one append's answer against the model and records it.
    fn record(&mut self, s: &Send, a: &Appended) {
        let m = &a.message;
        assert_eq!((m.chat_id, m.sender_id), (ChatId(s.chat), UserId(s.sender)));
        if let Some(c) = s.client_msg_id {
            if let Some(first) = self.keys.get(&(s.chat, s.sender, c)) {
                assert!(!a.created, "a retry stored a second copy: {m:?}");
                assert_eq!(m, first, "a retry returned a different message");
                return;
            }
            self.keys.insert((s.chat, s.sender, c), m.clone());
        }
        assert!(
            a.created,
            "a new request was reported as a duplicate: {m:?}"
        );
        assert_eq!(m.msg_text, s.text);
        self.chats.entry(s.chat).or_default().push(m.clone());
    }

    /// Orders each chat by seq after concurrent appends (their order is the store's to pick)
    /// and checks density: the seqs are exactly 1..=n.
    fn settle(&mut self) {
        for (chat, msgs) in &mut self.chats {
            msgs.sort_by_key(|m| m.seq);
            for (i, m) in msgs.iter().enumerate() {
                assert_eq!(m.seq, Seq(i as i64 + 1), "chat {chat}: seq is not dense");
            }
        }
    }

    fn history(&self, chat: i64) -> &[Message] {
        self.chats.get(&chat).map_or(&[], Vec::as_slice)
    }
}

async fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path).unwrap()
}

/// Pages back from the newest with `Before` and forward from 0 with `After`; both must visit the
/// whole history once, in order.
async fn check_tiling(store: &SqliteStore, chat: i64, want: &[Message], limit: u32) {
    let chat_id = ChatId(chat);
    assert_eq!(
        store.last_seq(chat_id).await.unwrap(),
        Seq(want.len() as i64)
    );
    // Backward.
    let mut pages: Vec<Vec<Message>> = Vec::new();
    let mut page = store
        .fetch(chat_id, FetchQuery::Latest { limit })
        .await
        .unwrap();
    loop {
        assert!(page.len() <= limit as usize);
        assert!(
            page.windows(2).all(|w| w[0].seq < w[1].seq),
            "page not ascending"
        );
        let Some(first) = page.first().map(|m| m.seq) else {
            break;
        };
        pages.push(page);
        if first == Seq(1) {
            break;
        }
        page = store
            .fetch(
                chat_id,
                FetchQuery::Before {
                    before: first,
                    limit,
                },
            )
            .await
            .unwrap();
        assert!(
            !page.is_empty(),
            "a page before seq {first:?} came back empty"
        );
    }
    let backward: Vec<Message> = pages.into_iter().rev().flatten().collect();
    assert_eq!(
        backward, want,
        "chat {chat}: backward pages at limit {limit}"
    );
    // Forward.
    let mut forward: Vec<Message> = Vec::new();
    loop {
        let after = forward.last().map_or(Seq(0), |m| m.seq);
        let page = store
            .fetch(chat_id, FetchQuery::After { after, limit })
            .await
            .unwrap();
        assert!(page.len() <= limit as usize);
        if page.is_empty() {
            break;
        }
        forward.extend(page);
    }
    assert_eq!(forward, want, "chat {chat}: forward pages at limit {limit}");
}

async fn run(ops: Vec<Op>, tiling_limit: u32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let mut store = open(&path).await;
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Append(s) => {
                let a = store.append(new_message(&s)).await.unwrap();
                model.record(&s, &a);
                model.sent.push(s);
            }
            Op::Concurrent(sends) => {
                let results =
                    futures::future::join_all(sends.iter().map(|s| store.append(new_message(s))))
                        .await;
                // Racing sends with the same key: exactly one was created, the others are its
                // duplicates. Record the created ones first so the model knows the original.
                let mut pairs: Vec<(&Send, Appended)> = sends
                    .iter()
                    .zip(results.into_iter().map(Result::unwrap))
                    .collect();
                pairs.sort_by_key(|(_, a)| !a.created);
                for (s, a) in &pairs {
                    model.record(s, a);
                }
                model.sent.extend(sends);
            }
            Op::Retry(i) => {
                if model.sent.is_empty() {
                    continue;
                }
                let s = model.sent[i % model.sent.len()].clone();
                let a = store.append(new_message(&s)).await.unwrap();
                model.record(&s, &a);
                model.sent.push(s);
            }
            Op::Fetch {
                chat,
                kind,
                at,
                limit,
            } => {
                model.settle();
                let history = model.history(chat);
                let query = match kind {
                    0 => FetchQuery::Latest { limit },
                    1 => FetchQuery::Before {
                        before: Seq(at.max(1)),
                        limit,
                    },
                    _ => FetchQuery::After {
                        after: Seq(at),
                        limit,
                    },
                };
                let got = store.fetch(ChatId(chat), query).await.unwrap();
                let want: Vec<Message> = match query {
                    FetchQuery::Latest { limit } => {
                        let n = history.len().saturating_sub(limit as usize);
                        history[n..].to_vec()
                    }
                    FetchQuery::Before { before, limit } => {
                        let older: Vec<_> =
                            history.iter().filter(|m| m.seq < before).cloned().collect();
                        let n = older.len().saturating_sub(limit as usize);
                        older[n..].to_vec()
                    }
                    FetchQuery::After { after, limit } => history
                        .iter()
                        .filter(|m| m.seq > after)
                        .take(limit as usize)
                        .cloned()
                        .collect(),
                };
                assert_eq!(got, want, "{query:?} on chat {chat}");
            }
            Op::Reopen => {
                store.close().await.unwrap();
                store = open(&path).await;
            }
        }
    }
    model.settle();
    for chat in 1..=CHATS {
        check_tiling(&store, chat, model.history(chat), tiling_limit).await;
    }
    store.close().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        // Shrinking replays whole histories; a few hundred steps is plenty to find a small one.
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn seq_dense_dedupe_and_pages_tile(
        ops in proptest::collection::vec(op(), 1..40),
        tiling_limit in 1..7u32,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(ops, tiling_limit));
    }
}
