//! The [`MessageStore`] half of the conformance suite: dense `seq`, dedupe by `client_msg_id`,
//! paging, `last_seq`, round-trips.
//!
//! Every function takes a fresh store by value and panics on a broken contract. Each test works
//! in chats of its own with random ids (random ids far above what a fresh database hands out), so a shared database is fine.

use super::random_id;
use chat_core::ids::now_millis;
use chat_core::{ChatId, FetchQuery, Message, MessageStore, NewMessage, Seq, UserId};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A chat id no other test uses.
fn fresh_chat() -> ChatId {
    ChatId(random_id())
}

/// A message to append.
fn new_message(
    chat_id: ChatId,
    sender: i64,
    text: &str,
    client_msg_id: Option<&str>,
) -> NewMessage {
    NewMessage {
        reply_to_seq: None,
        chat_id,
        sender_id: UserId(sender),
        msg_text: text.to_owned(),
        sent_at: now_millis(),
        timestamp: None,
        client_msg_id: client_msg_id.map(str::to_owned),
    }
}

/// Appends `n` messages one after the other (texts `m1`, `m2`, …) and returns them.
async fn append_n<S: MessageStore>(store: &S, chat_id: ChatId, n: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    for i in 1..=n {
        let appended = store
            .append(new_message(chat_id, 1, &format!("m{i}"), None))
            .await
            .expect("append");
        assert!(
            appended.created,
            "a message without client_msg_id is always new"
        );
        out.push(appended.message);
    }
    out
}

/// The whole chat, read forward in pages of 100.
async fn fetch_all<S: MessageStore + ?Sized>(store: &S, chat_id: ChatId) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    loop {
        let after = out.last().map_or(Seq::ZERO, |m| m.seq);
        let page = store
            .fetch(chat_id, FetchQuery::After { after, limit: 100 })
            .await
            .expect("fetch after");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// The seqs of a page.
fn seqs(page: &[Message]) -> Vec<i64> {
    page.iter().map(|m| m.seq.get()).collect()
}

/// The seqs `from..=to`.
fn range(from: i64, to: i64) -> Vec<i64> {
    (from..=to).collect()
}

/// Asserts that a page holds exactly the seqs `1..=n`, in order.
fn assert_dense(page: &[Message], n: usize, what: &str) {
    let n = i64::try_from(n).expect("small n");
    assert_eq!(
        seqs(page),
        range(1, n),
        "{what}: seqs must be exactly 1..={n}"
    );
}

/// The first message of a chat gets seq 1, the next seq 2.
pub async fn first_seq_is_one<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    let a = store
        .append(new_message(chat, 1, "hello", None))
        .await
        .expect("append");
    assert_eq!(a.message.seq, Seq(1));
    assert!(a.created);
    let b = store
        .append(new_message(chat, 2, "hi", None))
        .await
        .expect("append");
    assert_eq!(b.message.seq, Seq(2));
    assert_eq!(store.last_seq(chat).await.expect("last_seq"), Seq(2));
}

/// `append` returns the message as given, with its seq, and `fetch` returns the same.
pub async fn append_returns_what_was_given<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    let input = NewMessage {
        reply_to_seq: None,
        chat_id: chat,
        sender_id: UserId(42),
        msg_text: "the text".to_owned(),
        sent_at: 1_700_000_000_000,
        timestamp: Some(1_699_999_999_000),
        client_msg_id: Some("c-1".to_owned()),
    };
    let appended = store.append(input.clone()).await.expect("append");
    assert!(appended.created);
    let mut expected = Message::new(chat, Seq(1), UserId(42), "the text", 1_700_000_000_000);
    expected.timestamp = Some(1_699_999_999_000);
    expected.client_msg_id = Some("c-1".to_owned());
    expected.rev = chat_core::Rev(1);
    assert_eq!(appended.message, expected);
    let page = store
        .fetch(chat, FetchQuery::Latest { limit: 10 })
        .await
        .expect("fetch");
    assert_eq!(page, vec![expected]);
}

/// Every append takes the chat's next revision, so while no message of a chat has changed,
/// each message's `rev` equals its `seq` (also after retries, which take nothing), and a new
/// message is plain: no reply, never edited, not deleted, no reactions.
pub async fn rev_equals_seq_while_no_message_changed<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    for i in 0..12 {
        let m = NewMessage {
            reply_to_seq: None,
            chat_id: chat,
            sender_id: UserId(1 + i % 3),
            msg_text: format!("m{i}"),
            sent_at: 1_700_000_000_000 + i,
            timestamp: None,
            client_msg_id: Some(format!("r-{i}")),
        };
        let first = store.append(m.clone()).await.expect("append");
        // A retry returns the stored message and takes no revision.
        let again = store.append(m).await.expect("retry");
        assert!(!again.created);
        assert_eq!(again.message, first.message);
    }
    let all = store
        .fetch(
            chat,
            FetchQuery::After {
                after: Seq::ZERO,
                limit: 100,
            },
        )
        .await
        .expect("fetch");
    assert_eq!(all.len(), 12);
    for m in &all {
        assert_eq!(m.rev.get(), m.seq.get(), "rev of seq {}", m.seq);
        assert_eq!(m.reply_to_seq, None);
        assert_eq!(m.edited_at, None);
        assert!(!m.deleted);
        assert!(m.reactions.is_empty());
    }
}

/// 16 tasks append 50 messages each to one chat at once: the seqs are exactly 1..=800, each
/// `(sender, client_msg_id)` is stored once, and each sender's messages are in its own order.
pub async fn dense_seq_under_concurrent_appends<S: MessageStore>(store: S) {
    const TASKS: i64 = 16;
    const PER_TASK: usize = 50;
    let store = Arc::new(store);
    let chat = fresh_chat();
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(PER_TASK);
            for i in 0..PER_TASK {
                let id = format!("t{task}-m{i}");
                let a = store
                    .append(new_message(chat, task + 1, &id, Some(&id)))
                    .await
                    .expect("append");
                assert!(a.created, "first append of {id} must create it");
                got.push(a.message.seq);
            }
            got
        }));
    }
    let mut acked = HashSet::new();
    for h in handles {
        let got = h.await.expect("appender task");
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "one sender's sequential appends must get increasing seqs: {got:?}"
        );
        for s in got {
            assert!(acked.insert(s), "seq {s} was handed out twice");
        }
    }
    let total = usize::try_from(TASKS).expect("small") * PER_TASK;
    assert_eq!(acked.len(), total);
    let all = fetch_all(&*store, chat).await;
    assert_dense(&all, total, "concurrent appends");
    let keys: HashSet<(UserId, Option<String>)> = all
        .iter()
        .map(|m| (m.sender_id, m.client_msg_id.clone()))
        .collect();
    assert_eq!(
        keys.len(),
        total,
        "each (sender, client_msg_id) exactly once"
    );
    for m in &all {
        assert_eq!(m.client_msg_id.as_deref(), Some(m.msg_text.as_str()));
    }
    assert_eq!(
        store.last_seq(chat).await.expect("last_seq"),
        Seq(i64::try_from(total).expect("small"))
    );
}

/// Chats count their seqs independently, even when appended to at the same time.
pub async fn chats_have_independent_counters<S: MessageStore>(store: S) {
    let store = Arc::new(store);
    let chats = [fresh_chat(), fresh_chat(), fresh_chat()];
    let counts = [7_usize, 13, 21];
    let mut handles = Vec::new();
    for (chat, n) in chats.into_iter().zip(counts) {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            append_n(&*store, chat, n).await;
        }));
    }
    for h in handles {
        h.await.expect("appender task");
    }
    for (chat, n) in chats.into_iter().zip(counts) {
        assert_dense(&fetch_all(&*store, chat).await, n, "independent counter");
        assert_eq!(
            store.last_seq(chat).await.expect("last_seq"),
            Seq(i64::try_from(n).expect("small"))
        );
    }
}

/// A retry (same chat, sender and `client_msg_id`) returns the stored message, with
/// `created: false`, even when the retry carries another text and time.
pub async fn retry_with_same_client_msg_id_returns_stored_message<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    let first = store
        .append(new_message(chat, 5, "original", Some("abc")))
        .await
        .expect("append");
    assert!(first.created);
    store
        .append(new_message(chat, 6, "other", None))
        .await
        .expect("append");

    let mut retry = new_message(chat, 5, "changed text", Some("abc"));
    retry.sent_at = first.message.sent_at + 12_345;
    retry.timestamp = Some(99);
    let again = store.append(retry).await.expect("retry");
    assert!(!again.created, "a retry must not create a message");
    assert_eq!(
        again.message, first.message,
        "a retry returns the stored message"
    );

    let all = fetch_all(&store, chat).await;
    assert_dense(&all, 2, "after a retry");
    assert_eq!(store.last_seq(chat).await.expect("last_seq"), Seq(2));
    let next = store
        .append(new_message(chat, 5, "next", Some("abd")))
        .await
        .expect("append");
    assert_eq!(
        next.message.seq,
        Seq(3),
        "a deduped retry must not use up a seq"
    );
}

/// Ten identical retries sent at once store one message; exactly one call reports `created`.
pub async fn concurrent_identical_retries_store_one_message<S: MessageStore>(store: S) {
    let store = Arc::new(store);
    let chat = fresh_chat();
    let msg = new_message(chat, 9, "only once", Some("retry-me"));
    let mut handles = Vec::new();
    for _ in 0..10 {
        let store = Arc::clone(&store);
        let msg = msg.clone();
        handles.push(tokio::spawn(async move {
            store.append(msg).await.expect("append")
        }));
    }
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.expect("retry task"));
    }
    assert_eq!(
        results.iter().filter(|a| a.created).count(),
        1,
        "exactly one of the identical calls stores the message"
    );
    for a in &results {
        assert_eq!(
            a.message, results[0].message,
            "every retry sees the same message"
        );
    }
    let all = fetch_all(&*store, chat).await;
    assert_dense(&all, 1, "identical retries");
    assert_eq!(all[0], results[0].message);
}

/// The same `client_msg_id` from another sender, or in another chat, is a new message.
pub async fn same_client_msg_id_from_other_sender_or_chat_is_new<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    let other_chat = fresh_chat();
    let a = store
        .append(new_message(chat, 1, "a", Some("same")))
        .await
        .expect("append");
    let b = store
        .append(new_message(chat, 2, "b", Some("same")))
        .await
        .expect("append");
    let c = store
        .append(new_message(other_chat, 1, "c", Some("same")))
        .await
        .expect("append");
    assert!(a.created && b.created && c.created);
    assert_eq!(a.message.seq, Seq(1));
    assert_eq!(b.message.seq, Seq(2));
    assert_eq!(c.message.seq, Seq(1));
    assert_eq!(b.message.sender_id, UserId(2));
    assert_eq!(fetch_all(&store, chat).await.len(), 2);
    assert_eq!(fetch_all(&store, other_chat).await.len(), 1);
}

/// Messages without a `client_msg_id` are never deduplicated, even when identical.
pub async fn messages_without_client_msg_id_never_dedupe<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    let msg = new_message(chat, 3, "same text", None);
    for expected in 1..=3 {
        let a = store.append(msg.clone()).await.expect("append");
        assert!(a.created);
        assert_eq!(a.message.seq, Seq(expected));
        assert_eq!(a.message.client_msg_id, None);
    }
    assert_dense(
        &fetch_all(&store, chat).await,
        3,
        "no dedupe without client_msg_id",
    );
}

/// `Latest`, `Before` and `After` at and around their boundaries, on a chat of 10 messages.
pub async fn fetch_latest_before_after_boundaries<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    let stored = append_n(&store, chat, 10).await;
    let page = |q| {
        let store = &store;
        async move { seqs(&store.fetch(chat, q).await.expect("fetch")) }
    };
    use FetchQuery::{After, Before, Latest};
    assert_eq!(page(Latest { limit: 3 }).await, range(8, 10));
    assert_eq!(page(Latest { limit: 1 }).await, vec![10]);
    assert_eq!(page(Latest { limit: 10 }).await, range(1, 10));
    assert_eq!(
        page(Before {
            before: Seq(5),
            limit: 2
        })
        .await,
        range(3, 4)
    );
    assert_eq!(
        page(Before {
            before: Seq(4),
            limit: 10
        })
        .await,
        range(1, 3)
    );
    assert_eq!(
        page(Before {
            before: Seq(2),
            limit: 10
        })
        .await,
        vec![1]
    );
    assert_eq!(
        page(Before {
            before: Seq(1),
            limit: 10
        })
        .await,
        Vec::<i64>::new()
    );
    assert_eq!(
        page(Before {
            before: Seq(0),
            limit: 10
        })
        .await,
        Vec::<i64>::new()
    );
    assert_eq!(
        page(Before {
            before: Seq(11),
            limit: 3
        })
        .await,
        range(8, 10)
    );
    assert_eq!(
        page(Before {
            before: Seq(1000),
            limit: 3
        })
        .await,
        range(8, 10)
    );
    assert_eq!(
        page(After {
            after: Seq(0),
            limit: 3
        })
        .await,
        range(1, 3)
    );
    assert_eq!(
        page(After {
            after: Seq(3),
            limit: 3
        })
        .await,
        range(4, 6)
    );
    assert_eq!(
        page(After {
            after: Seq(8),
            limit: 5
        })
        .await,
        range(9, 10)
    );
    assert_eq!(
        page(After {
            after: Seq(9),
            limit: 1
        })
        .await,
        vec![10]
    );
    assert_eq!(
        page(After {
            after: Seq(10),
            limit: 5
        })
        .await,
        Vec::<i64>::new()
    );
    assert_eq!(
        page(After {
            after: Seq(1000),
            limit: 5
        })
        .await,
        Vec::<i64>::new()
    );

    let latest = store
        .fetch(chat, Latest { limit: 10 })
        .await
        .expect("fetch");
    assert_eq!(
        latest, stored,
        "fetch returns the messages exactly as append returned them"
    );
}

/// A chat nobody wrote to (or that does not exist) reads as empty with `last_seq` 0.
pub async fn fetch_unknown_or_empty_chat<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    for q in [
        FetchQuery::Latest { limit: 50 },
        FetchQuery::Before {
            before: Seq(10),
            limit: 50,
        },
        FetchQuery::After {
            after: Seq::ZERO,
            limit: 50,
        },
    ] {
        assert!(
            store.fetch(chat, q).await.expect("fetch").is_empty(),
            "{q:?}"
        );
    }
    assert_eq!(store.last_seq(chat).await.expect("last_seq"), Seq::ZERO);
    // A neighbour with messages does not leak into it.
    append_n(&store, fresh_chat(), 2).await;
    assert!(store
        .fetch(chat, FetchQuery::Latest { limit: 50 })
        .await
        .expect("fetch")
        .is_empty());
}

/// A limit larger than the chat returns the whole chat, in ascending order.
pub async fn fetch_limit_larger_than_chat<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    append_n(&store, chat, 5).await;
    for q in [
        FetchQuery::Latest { limit: 1000 },
        FetchQuery::Before {
            before: Seq(6),
            limit: 1000,
        },
        FetchQuery::Before {
            before: Seq(i64::MAX),
            limit: 1000,
        },
        FetchQuery::After {
            after: Seq::ZERO,
            limit: 1000,
        },
    ] {
        let page = store.fetch(chat, q).await.expect("fetch");
        assert_dense(&page, 5, &format!("{q:?}"));
    }
}

/// Paging backward from `Latest` with `Before` the first seq of each page, until an empty page,
/// tiles the history exactly: no gap, no overlap.
pub async fn paging_backward_from_latest_tiles_history<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    let stored = append_n(&store, chat, 103).await;
    let mut pages: Vec<Vec<Message>> = Vec::new();
    let mut page = store
        .fetch(chat, FetchQuery::Latest { limit: 10 })
        .await
        .expect("fetch latest");
    while let Some(first) = page.first().map(|m| m.seq) {
        assert!(page.len() <= 10);
        assert!(
            page.windows(2).all(|w| w[1].seq == w[0].seq.next()),
            "a page is ascending and dense"
        );
        pages.push(page);
        assert!(pages.len() <= 11, "paging backward must end");
        page = store
            .fetch(
                chat,
                FetchQuery::Before {
                    before: first,
                    limit: 10,
                },
            )
            .await
            .expect("fetch before");
    }
    assert_eq!(pages.len(), 11, "103 messages in pages of 10");
    assert_eq!(pages.last().map(Vec::len), Some(3));
    let history: Vec<Message> = pages.into_iter().rev().flatten().collect();
    assert_eq!(history, stored, "backward pages tile the history exactly");
}

/// Paging forward from `After(0)` with `After` the last seq of each page tiles the history
/// exactly.
pub async fn paging_forward_from_zero_tiles_history<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    let stored = append_n(&store, chat, 47).await;
    let mut history: Vec<Message> = Vec::new();
    let mut after = Seq::ZERO;
    let mut pages = 0;
    loop {
        let page = store
            .fetch(chat, FetchQuery::After { after, limit: 7 })
            .await
            .expect("fetch after");
        let Some(last) = page.last().map(|m| m.seq) else {
            break;
        };
        assert!(page.len() <= 7);
        pages += 1;
        assert!(pages <= 7, "paging forward must end");
        history.extend(page);
        after = last;
    }
    assert_eq!(pages, 7, "47 messages in pages of 7");
    assert_eq!(history, stored, "forward pages tile the history exactly");
}

/// While appenders run, every read sees a prefix `1..=n` of the chat (a seq is never visible
/// before all smaller ones), and `n` never shrinks.
pub async fn readers_never_see_a_gap_while_appends_run<S: MessageStore>(store: S) {
    let store = Arc::new(store);
    let chat = fresh_chat();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = Arc::clone(&store);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut seen = 0_usize;
            let mut last_seq_seen = Seq::ZERO;
            loop {
                // Read `done` before reading the chat, so the final read sees every append.
                let finished = done.load(Ordering::Acquire);
                let last = store.last_seq(chat).await.expect("last_seq");
                assert!(
                    last >= last_seq_seen,
                    "last_seq went back from {last_seq_seen} to {last}"
                );
                last_seq_seen = last;
                let page = store
                    .fetch(
                        chat,
                        FetchQuery::After {
                            after: Seq::ZERO,
                            limit: 1000,
                        },
                    )
                    .await
                    .expect("fetch");
                assert_dense(&page, page.len(), "a concurrent read");
                assert!(page.len() >= seen, "a read lost messages it had seen");
                assert!(
                    i64::try_from(page.len()).expect("small") >= last.get(),
                    "fetch after last_seq returned {last} must see up to it"
                );
                seen = page.len();
                if finished {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut appenders = Vec::new();
    for task in 0..4_i64 {
        let store = Arc::clone(&store);
        appenders.push(tokio::spawn(async move {
            for i in 0..50 {
                store
                    .append(new_message(chat, task + 1, &format!("{task}/{i}"), None))
                    .await
                    .expect("append");
            }
        }));
    }
    for h in appenders {
        h.await.expect("appender task");
    }
    done.store(true, Ordering::Release);
    let seen = reader.await.expect("reader task");
    assert_eq!(seen, 200, "the final read sees every acked message");
}

/// `last_seq` and `last_seqs` (in the order asked, unknown chats 0, repeats allowed).
pub async fn last_seq_and_last_seqs<S: MessageStore>(store: S) {
    let a = fresh_chat();
    let b = fresh_chat();
    let c = fresh_chat();
    append_n(&store, a, 3).await;
    append_n(&store, c, 5).await;
    assert_eq!(store.last_seq(a).await.expect("last_seq"), Seq(3));
    assert_eq!(store.last_seq(b).await.expect("last_seq"), Seq::ZERO);
    assert_eq!(store.last_seq(c).await.expect("last_seq"), Seq(5));
    assert_eq!(
        store.last_seqs(&[a, b, c, a]).await.expect("last_seqs"),
        vec![Seq(3), Seq::ZERO, Seq(5), Seq(3)]
    );
    assert_eq!(
        store.last_seqs(&[c]).await.expect("last_seqs"),
        vec![Seq(5)]
    );
    assert!(store.last_seqs(&[]).await.expect("last_seqs").is_empty());
}

/// Unicode, quotes, control characters and texts of exactly 4096 bytes round-trip byte-exactly.
pub async fn unicode_and_max_size_text_round_trip<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    let texts = [
        "héllo wörld 👋🏽 漢字 עברית \u{200d}\u{fe0f}".to_owned(),
        "quotes ' \" ` back\\slash ; DROP TABLE messages; -- %_".to_owned(),
        "line\nbreak\ttab\r\u{1}\u{7f}".to_owned(),
        "a".repeat(4096),
        "é".repeat(2048),
        "😀".repeat(1024),
        "€".repeat(1365) + "a",
    ];
    for t in &texts {
        assert!(t.len() <= 4096);
    }
    for t in &texts {
        let a = store
            .append(new_message(chat, 1, t, Some(t)))
            .await
            .expect("append");
        assert_eq!(&a.message.msg_text, t);
        assert_eq!(a.message.client_msg_id.as_deref(), Some(t.as_str()));
    }
    let all = fetch_all(&store, chat).await;
    assert_dense(&all, texts.len(), "round-trip");
    for (m, t) in all.iter().zip(&texts) {
        assert_eq!(
            m.msg_text.as_bytes(),
            t.as_bytes(),
            "text must round-trip byte-exactly"
        );
    }
    // Dedupe matches on the exact key, including non-ASCII ones.
    let again = store
        .append(new_message(chat, 1, "x", Some(&texts[0])))
        .await
        .expect("append");
    assert!(!again.created);
    assert_eq!(again.message.seq, Seq(1));
}

/// `timestamp` and `client_msg_id`, present or absent, round-trip.
pub async fn timestamp_and_client_msg_id_round_trip<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    let cases = [
        (None, None),
        (Some(1_700_000_000_123_i64), None),
        (None, Some("cmid-1")),
        (Some(0), Some("cmid-2")),
        (Some(-5), Some("cmid-3")),
    ];
    for (ts, cmid) in cases {
        let mut m = new_message(chat, 4, "t", cmid);
        m.timestamp = ts;
        let a = store.append(m).await.expect("append");
        assert_eq!(a.message.timestamp, ts);
        assert_eq!(a.message.client_msg_id.as_deref(), cmid);
    }
    let all = fetch_all(&store, chat).await;
    assert_eq!(all.len(), cases.len());
    for (m, (ts, cmid)) in all.iter().zip(cases) {
        assert_eq!(m.timestamp, ts);
        assert_eq!(m.client_msg_id.as_deref(), cmid);
        assert_eq!(m.sender_id, UserId(4));
    }
}

/// After concurrent appends, `flush` succeeds and every acked message is readable.
pub async fn flush_keeps_every_acked_message<S: MessageStore>(store: S) {
    let store = Arc::new(store);
    let chat = fresh_chat();
    let mut handles = Vec::new();
    for i in 0..20_i64 {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            store
                .append(new_message(chat, i, "flush me", None))
                .await
                .expect("append")
        }));
    }
    for h in handles {
        h.await.expect("append task");
    }
    store.flush().await.expect("flush");
    assert_dense(&fetch_all(&*store, chat).await, 20, "after flush");
    store.flush().await.expect("a second flush");
}

/// `health` answers `Ok` on a working store.
pub async fn message_health<S: MessageStore>(store: S) {
    store.health().await.expect("health");
}
