//! The conformance suite of the chat list's read: `MessageStore::activity` (each chat's
//! `last_seq`, newest message in its current state, and tombstones above a reader's marker).
//!
//! A backend opts in with [`message_activity_conformance!`](crate::message_activity_conformance)
//! once it implements `change` (deletes and edits are how tombstones and changed newest
//! messages come about). Every function takes a fresh store by value, works in chats of its
//! own, and panics on a broken contract. Expected values are computed the slow way, by reading
//! every message with `fetch`, which is what the trait's default does.

use super::random_id;
use chat_core::ids::now_millis;
use chat_core::{
    ChatActivity, ChatId, FetchQuery, Message, MessageChange, MessageStore, NewMessage, Seq, UserId,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// A chat id no other test uses.
fn fresh_chat() -> ChatId {
    ChatId(random_id())
}

/// Appends `n` messages from user 1 to `chat`.
async fn append_n<S: MessageStore>(store: &S, chat: ChatId, n: usize) {
    for i in 0..n {
        store
            .append(NewMessage {
                reply_to_seq: None,
                chat_id: chat,
                sender_id: UserId(1),
                msg_text: format!("message {i}"),
                sent_at: now_millis(),
                timestamp: None,
                client_msg_id: None,
            })
            .await
            .expect("append");
    }
}

/// Deletes message `seq` of `chat`.
async fn delete<S: MessageStore>(store: &S, chat: ChatId, seq: i64) -> Message {
    store
        .change(chat, Seq(seq), MessageChange::Delete)
        .await
        .expect("delete")
}

/// The whole history of `chat`, ascending, read in pages.
async fn history<S: MessageStore>(store: &S, chat: ChatId) -> Vec<Message> {
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

/// What `activity` must answer for `chat` at `marker`, computed from every message.
async fn expected<S: MessageStore>(store: &S, chat: ChatId, marker: Seq) -> ChatActivity {
    let all = history(store, chat).await;
    ChatActivity {
        last_seq: all.last().map_or(Seq::ZERO, |m| m.seq),
        last_message: all.last().cloned(),
        deleted_after: all.iter().filter(|m| m.deleted && m.seq > marker).count() as u64,
    }
}

/// One chat's activity.
async fn one<S: MessageStore>(store: &S, chat: ChatId, marker: i64) -> ChatActivity {
    let mut got = store
        .activity(&[(chat, Seq(marker))])
        .await
        .expect("activity");
    assert_eq!(got.len(), 1, "one answer per chat asked");
    got.remove(0)
}

/// A chat without messages, whether it exists elsewhere or not, has `last_seq` 0, no newest
/// message and no tombstones, at any marker; an empty batch answers nothing.
pub async fn chats_without_messages_have_no_activity<S: MessageStore>(store: S) {
    let nothing = ChatActivity {
        last_seq: Seq::ZERO,
        last_message: None,
        deleted_after: 0,
    };
    let unknown = fresh_chat();
    for marker in [0, 1, 7] {
        assert_eq!(
            one(&store, unknown, marker).await,
            nothing,
            "marker {marker}"
        );
    }
    // A chat next to one that has messages.
    let busy = fresh_chat();
    append_n(&store, busy, 2).await;
    delete(&store, busy, 1).await;
    let got = store
        .activity(&[
            (unknown, Seq::ZERO),
            (busy, Seq::ZERO),
            (ChatId(-1), Seq(3)),
        ])
        .await
        .expect("activity");
    assert_eq!(got[0], nothing);
    assert_eq!(got[2], nothing, "an id no chat has");
    assert_eq!((got[1].last_seq, got[1].deleted_after), (Seq(2), 1));
    assert!(store.activity(&[]).await.expect("empty batch").is_empty());
}

/// Answers come in the order asked, one per pair, repeats and all; the same chat asked with
/// two markers is counted at each; a list of 1200 chats (longer than one statement or batch of
/// a backend) too.
pub async fn answers_follow_the_order_asked<S: MessageStore>(store: S) {
    let a = fresh_chat();
    let b = fresh_chat();
    let c = fresh_chat();
    let none = fresh_chat();
    append_n(&store, a, 3).await;
    append_n(&store, b, 5).await;
    append_n(&store, c, 1).await;
    delete(&store, a, 2).await;
    delete(&store, b, 4).await;
    delete(&store, b, 5).await;
    let asked = [
        (c, Seq::ZERO),
        (a, Seq(1)),
        (none, Seq::ZERO),
        (b, Seq(3)),
        (a, Seq(2)),
        (b, Seq(4)),
        (c, Seq::ZERO),
    ];
    let got = store.activity(&asked).await.expect("activity");
    assert_eq!(got.len(), asked.len());
    let summary: Vec<(i64, Option<i64>, u64)> = got
        .iter()
        .map(|x| {
            (
                x.last_seq.get(),
                x.last_message.as_ref().map(|m| m.chat_id.get()),
                x.deleted_after,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, Some(c.get()), 0),
            (3, Some(a.get()), 1),
            (0, None, 0),
            (5, Some(b.get()), 2),
            (3, Some(a.get()), 0),
            (5, Some(b.get()), 1),
            (1, Some(c.get()), 0),
        ]
    );
    for (x, &(chat, marker)) in got.iter().zip(&asked) {
        assert_eq!(
            *x,
            expected(&store, chat, marker).await,
            "{chat} at {marker}"
        );
    }
    // A list longer than a backend's statement or batch size keeps the order too.
    let long: Vec<(ChatId, Seq)> = (0..1200)
        .map(|i| match i % 100 {
            7 => (a, Seq(1)),
            55 => (b, Seq(3)),
            _ => (fresh_chat(), Seq(i % 3)),
        })
        .collect();
    let got = store.activity(&long).await.expect("a long list");
    assert_eq!(got.len(), long.len());
    for (i, x) in got.iter().enumerate() {
        let want = match i % 100 {
            7 => (3, 1),
            55 => (5, 2),
            _ => (0, 0),
        };
        assert_eq!((x.last_seq.get(), x.deleted_after), want, "entry {i}");
    }
}

/// Only tombstones above the marker count: at marker 0 every one, in the middle those above it,
/// at `last_seq` none; the newest message and `last_seq` do not depend on the marker.
pub async fn only_tombstones_above_the_marker_count<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    append_n(&store, chat, 10).await;
    for seq in [2, 5, 6, 9] {
        delete(&store, chat, seq).await;
    }
    let newest = history(&store, chat).await.pop();
    for (marker, want) in [
        (0, 4),
        (1, 4),
        (2, 3),
        (4, 3),
        (5, 2),
        (6, 1),
        (8, 1),
        (9, 0),
        (10, 0),
    ] {
        let got = one(&store, chat, marker).await;
        assert_eq!(got.deleted_after, want, "tombstones above {marker}");
        assert_eq!(got.last_seq, Seq(10));
        assert_eq!(got.last_message, newest);
        assert_eq!(got, expected(&store, chat, Seq(marker)).await);
    }
    // New messages above a marker at the old last_seq are unread, and not tombstones.
    append_n(&store, chat, 2).await;
    assert_eq!(
        (
            one(&store, chat, 10).await.deleted_after,
            one(&store, chat, 0).await.deleted_after
        ),
        (0, 4)
    );
    delete(&store, chat, 12).await;
    assert_eq!(one(&store, chat, 10).await.deleted_after, 1);
    assert_eq!(one(&store, chat, 12).await.deleted_after, 0);
}

/// A message deleted twice, or by several callers at once, is one tombstone.
pub async fn a_message_deleted_twice_is_one_tombstone<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    append_n(&store, chat, 4).await;
    let first = delete(&store, chat, 2).await;
    let again = delete(&store, chat, 2).await;
    assert_eq!(again, first, "a repeated delete changes nothing");
    assert_eq!(one(&store, chat, 0).await.deleted_after, 1);
    // Concurrent deletes of one message (retries racing each other, or two admins).
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { delete(&*store, chat, 3).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.expect("task").deleted);
    }
    let got = one(&*store, chat, 0).await;
    assert_eq!(got.deleted_after, 2);
    assert_eq!(got, expected(&*store, chat, Seq::ZERO).await);
    assert_eq!(one(&*store, chat, 2).await.deleted_after, 1);
}

/// The newest message is shown as it is now: edited, reacted to, and finally deleted (a
/// tombstone, counted above a marker below it); `last_seq` never moves for a change.
pub async fn the_newest_message_is_in_its_current_state<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    append_n(&store, chat, 3).await;
    let edited = store
        .change(
            chat,
            Seq(3),
            MessageChange::Edit {
                msg_text: "newest, edited".to_owned(),
                edited_at: now_millis(),
            },
        )
        .await
        .expect("edit");
    let got = one(&store, chat, 0).await;
    assert_eq!(got.last_message.as_ref(), Some(&edited));
    assert_eq!((got.last_seq, got.deleted_after), (Seq(3), 0));
    let reacted = store
        .change(
            chat,
            Seq(3),
            MessageChange::React {
                user_id: UserId(9),
                emoji: "👍".to_owned(),
                add: true,
            },
        )
        .await
        .expect("react");
    assert_eq!(
        one(&store, chat, 3).await.last_message.as_ref(),
        Some(&reacted)
    );
    // A change of an older message leaves the newest as it is.
    delete(&store, chat, 1).await;
    assert_eq!(one(&store, chat, 0).await.last_message, Some(reacted));
    let tombstone = delete(&store, chat, 3).await;
    assert!(tombstone.deleted && tombstone.msg_text.is_empty());
    let got = one(&store, chat, 2).await;
    assert_eq!(got.last_message, Some(tombstone));
    assert_eq!((got.last_seq, got.deleted_after), (Seq(3), 1));
    assert_eq!(one(&store, chat, 0).await.deleted_after, 2);
    assert_eq!(one(&store, chat, 3).await.deleted_after, 0);
}

/// One chat of [`a_batch_matches_reading_every_message`]: what is written, and the marker asked.
#[derive(Clone)]
struct Plan {
    chat: ChatId,
    messages: usize,
    deletes: Vec<i64>,
    edits: Vec<i64>,
    marker: i64,
}

/// A batch of 50 chats with random histories, deletes, edits and markers answers exactly what
/// reading every message of every chat gives.
pub async fn a_batch_matches_reading_every_message<S: MessageStore>(store: S) {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let store = Arc::new(store);
    let plans: Vec<Plan> = (0..50)
        .map(|_| {
            let chat = fresh_chat();
            let n = if rng.gen_bool(0.1) {
                0
            } else {
                rng.gen_range(1..=25)
            };
            let top = i64::try_from(n).unwrap_or(0);
            let deletes: Vec<i64> = (1..=top).filter(|_| rng.gen_bool(0.25)).collect();
            let edits: Vec<i64> = (1..=top).filter(|_| rng.gen_bool(0.1)).collect();
            let marker = match rng.gen_range(0..4) {
                0 => 0,
                1 => top,
                _ => rng.gen_range(0..=top),
            };
            Plan {
                chat,
                messages: n,
                deletes,
                edits,
                marker,
            }
        })
        .collect();
    // Chats are filled in parallel; one chat's writes in order.
    let fills: Vec<_> = plans
        .iter()
        .cloned()
        .map(|plan| {
            let store = Arc::clone(&store);
            let Plan {
                chat,
                messages,
                deletes,
                edits,
                ..
            } = plan;
            tokio::spawn(async move {
                append_n(&*store, chat, messages).await;
                for seq in edits {
                    store
                        .change(
                            chat,
                            Seq(seq),
                            MessageChange::Edit {
                                msg_text: format!("edited {seq}"),
                                edited_at: now_millis(),
                            },
                        )
                        .await
                        .expect("edit");
                }
                for seq in deletes {
                    delete(&*store, chat, seq).await;
                }
            })
        })
        .collect();
    for f in fills {
        f.await.expect("fill task");
    }
    let asked: Vec<(ChatId, Seq)> = plans.iter().map(|p| (p.chat, Seq(p.marker))).collect();
    let got = store.activity(&asked).await.expect("activity");
    assert_eq!(got.len(), asked.len());
    for (x, &(chat, marker)) in got.iter().zip(&asked) {
        let want = expected(&*store, chat, marker).await;
        assert_eq!(*x, want, "chat {chat} at marker {marker} (seed {seed})");
    }
    // What the trait's default would count, the slow way, for the same batch.
    let unread: u64 = got
        .iter()
        .zip(&asked)
        .map(|(x, &(chat, m))| {
            u64::try_from(x.last_seq.get() - m.get())
                .unwrap_or(0)
                .checked_sub(x.deleted_after)
                .unwrap_or_else(|| panic!("more tombstones than messages above {m} in {chat}"))
        })
        .sum();
    let slow: u64 = {
        let mut sum = 0;
        for &(chat, marker) in &asked {
            sum += history(&*store, chat)
                .await
                .iter()
                .filter(|m| m.seq > marker && !m.deleted)
                .count() as u64;
        }
        sum
    };
    assert_eq!(
        unread, slow,
        "unread = last_seq - marker - deleted_after (seed {seed})"
    );
}
