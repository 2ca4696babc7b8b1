//! The conformance suite of messages that change: edits, deletes, reactions, revisions and the
//! change feed (`MessageStore::change` and `MessageStore::changes`).
//!
//! A backend opts in with [`message_change_conformance!`](crate::message_change_conformance)
//! once it implements both methods (their defaults answer `NotImplemented`). Every function
//! takes a fresh store by value, works in chats of its own, and panics on a broken contract.

use super::random_id;
use chat_core::ids::now_millis;
use chat_core::{
    ChatId, Error, FetchQuery, Message, MessageChange, MessageStore, NewMessage, Rev, Seq, UserId,
};
use std::collections::{BTreeMap, HashSet};
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

fn edit(text: &str) -> MessageChange {
    MessageChange::Edit {
        msg_text: text.to_owned(),
        edited_at: now_millis(),
    }
}

fn react(user: i64, emoji: &str, add: bool) -> MessageChange {
    MessageChange::React {
        user_id: UserId(user),
        emoji: emoji.to_owned(),
        add,
    }
}

/// The whole history of `chat`, ascending.
async fn history<S: MessageStore>(store: &S, chat: ChatId) -> Vec<Message> {
    store
        .fetch(
            chat,
            FetchQuery::After {
                after: Seq::ZERO,
                limit: 500,
            },
        )
        .await
        .expect("fetch")
}

/// The whole change feed of `chat` from `after`, read in pages of `page`.
async fn feed<S: MessageStore>(store: &S, chat: ChatId, after: Rev, page: u32) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    let mut after = after;
    loop {
        let got = store.changes(chat, after, page).await.expect("changes");
        if got.is_empty() {
            return out;
        }
        assert!(got.len() <= page as usize, "a feed page over its limit");
        after = got.last().map_or(after, |m| m.rev);
        out.extend(got);
    }
}

/// Edits, deletes and reactions each take the chat's next revision; the message keeps its
/// `seq`; reads and the feed show the current state.
pub async fn edits_deletes_and_reactions_take_revisions<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    append_n(&store, chat, 3).await;
    let edited = store
        .change(chat, Seq(2), edit("fixed typo"))
        .await
        .expect("edit");
    assert_eq!(
        (edited.seq, edited.rev, edited.msg_text.as_str()),
        (Seq(2), Rev(4), "fixed typo")
    );
    assert!(edited.edited_at.is_some());
    let reacted = store
        .change(chat, Seq(1), react(7, "👍", true))
        .await
        .expect("react");
    assert_eq!(reacted.rev, Rev(5));
    assert_eq!(reacted.reactions.len(), 1);
    assert_eq!(reacted.reactions[0].user_ids, vec![UserId(7)]);
    let deleted = store
        .change(chat, Seq(1), MessageChange::Delete)
        .await
        .expect("delete");
    assert_eq!(deleted.rev, Rev(6));
    assert!(deleted.deleted);
    assert_eq!(deleted.msg_text, "");
    assert!(
        deleted.reactions.is_empty(),
        "a tombstone keeps no reactions"
    );

    let now = history(&store, chat).await;
    assert_eq!(now.len(), 3, "a tombstone keeps its seq");
    assert_eq!(now[0], deleted);
    assert_eq!(now[1], edited);
    assert_eq!(now[2].rev, Rev(3));
    // A new message continues the revisions.
    append_n(&store, chat, 1).await;
    let all = history(&store, chat).await;
    assert_eq!((all[3].seq, all[3].rev), (Seq(4), Rev(7)));

    // The feed: each message once, in its current state, by ascending rev.
    let revs: Vec<(i64, i64)> = feed(&store, chat, Rev::ZERO, 100)
        .await
        .iter()
        .map(|m| (m.seq.get(), m.rev.get()))
        .collect();
    assert_eq!(revs, vec![(3, 3), (2, 4), (1, 6), (4, 7)]);
    let since: Vec<i64> = feed(&store, chat, Rev(4), 100)
        .await
        .iter()
        .map(|m| m.seq.get())
        .collect();
    assert_eq!(since, vec![1, 4]);
    assert!(store
        .changes(chat, Rev(7), 10)
        .await
        .expect("caught up")
        .is_empty());
}

/// Unknown messages, edits of tombstones and too many emoji are refused, changing nothing.
pub async fn changes_that_cannot_be_made_are_refused<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    append_n(&store, chat, 2).await;
    assert!(matches!(
        store.change(chat, Seq(3), edit("x")).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.change(fresh_chat(), Seq(1), edit("x")).await,
        Err(Error::NotFound(_))
    ));
    for i in 0..20 {
        store
            .change(chat, Seq(1), react(1, &format!("e{i}"), true))
            .await
            .expect("one of 20 emoji");
    }
    assert!(matches!(
        store.change(chat, Seq(1), react(1, "e20", true)).await,
        Err(Error::InvalidArgument(_))
    ));
    store
        .change(chat, Seq(2), MessageChange::Delete)
        .await
        .expect("delete");
    assert!(matches!(
        store.change(chat, Seq(2), edit("back")).await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        store.change(chat, Seq(2), react(1, "👍", true)).await,
        Err(Error::Conflict(_))
    ));
    // 2 appends + 20 reactions + 1 delete: nothing refused took a revision.
    let last = feed(&store, chat, Rev::ZERO, 100).await;
    assert_eq!(last.iter().map(|m| m.rev.get()).max(), Some(23));
}

/// Repeating a change (a retry) changes nothing and takes no revision: deleting a tombstone,
/// adding a reaction the user has, taking back one they do not have, the same text again.
pub async fn repeated_changes_take_no_revision<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    append_n(&store, chat, 2).await;
    let first = store
        .change(chat, Seq(1), react(3, "🎉", true))
        .await
        .expect("react");
    let again = store
        .change(chat, Seq(1), react(3, "🎉", true))
        .await
        .expect("react again");
    assert_eq!(again, first);
    let none = store
        .change(chat, Seq(1), react(4, "🎉", false))
        .await
        .expect("take back what is not there");
    assert_eq!(none, first);
    let edited = store.change(chat, Seq(2), edit("new")).await.expect("edit");
    assert_eq!(
        store
            .change(chat, Seq(2), edit("new"))
            .await
            .expect("same text"),
        edited
    );
    let gone = store
        .change(chat, Seq(2), MessageChange::Delete)
        .await
        .expect("delete");
    assert_eq!(
        store
            .change(chat, Seq(2), MessageChange::Delete)
            .await
            .expect("delete again"),
        gone
    );
    assert_eq!(gone.rev, Rev(5), "2 appends, 1 reaction, 1 edit, 1 delete");
}

/// Many callers change one chat's messages at once: every change gets its own revision, none
/// is lost, and reading the feed from zero gives exactly the messages' current state.
pub async fn concurrent_changes_converge_and_the_feed_has_every_one<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    append_n(&store, chat, 4).await;
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..8_i64)
        .map(|user| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut revs = Vec::new();
                for round in 0..6_i64 {
                    let seq = Seq(1 + (user + round) % 4);
                    let change = if round % 3 == 2 {
                        edit(&format!("edit by {user} in round {round}"))
                    } else {
                        react(100 + user, &format!("r{}", round % 3), true)
                    };
                    let m = store.change(chat, seq, change).await.expect("change");
                    revs.push(m.rev);
                }
                revs
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for t in tasks {
        for rev in t.await.expect("task") {
            assert!(seen.insert(rev), "two changes answered with rev {rev}");
        }
    }
    // 4 appends took revs 1..=4; every change took its own after them.
    assert_eq!(seen.len(), 8 * 6);
    assert!(seen.iter().all(|r| r.get() > 4 && r.get() <= 4 + 48));

    let current = history(&*store, chat).await;
    // Every reaction landed: each user reacted with r0 and r1 on the messages it touched.
    let by_seq: BTreeMap<Seq, &Message> = current.iter().map(|m| (m.seq, m)).collect();
    for user in 0..8_i64 {
        for round in 0..6_i64 {
            if round % 3 == 2 {
                continue;
            }
            let m = by_seq[&Seq(1 + (user + round) % 4)];
            let emoji = format!("r{}", round % 3);
            let r = m
                .reactions
                .iter()
                .find(|r| r.emoji == emoji)
                .unwrap_or_else(|| panic!("reaction {emoji} missing on seq {}", m.seq));
            assert!(
                r.user_ids.contains(&UserId(100 + user)),
                "a reaction was lost"
            );
            assert_eq!(r.count as usize, r.user_ids.len());
        }
    }
    // The feed, read in small pages, ends in exactly that state, ordered by rev.
    let fed = feed(&*store, chat, Rev::ZERO, 3).await;
    assert!(fed.windows(2).all(|w| w[0].rev < w[1].rev));
    let mut fed_by_seq: Vec<Message> = fed;
    fed_by_seq.sort_by_key(|m| m.seq);
    assert_eq!(fed_by_seq, current, "the feed and the history disagree");
}

/// A reply keeps the `seq` it replies to through the append, retries of it, reads, edits and
/// the feed.
pub async fn a_reply_keeps_what_it_replies_to<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    append_n(&store, chat, 3).await;
    let reply = NewMessage {
        reply_to_seq: Some(Seq(2)),
        chat_id: chat,
        sender_id: UserId(2),
        msg_text: "answering two".to_owned(),
        sent_at: now_millis(),
        timestamp: None,
        client_msg_id: Some("reply-1".to_owned()),
    };
    let first = store.append(reply.clone()).await.expect("append the reply");
    assert!(first.created);
    assert_eq!(first.message.seq, Seq(4));
    assert_eq!(first.message.reply_to_seq, Some(Seq(2)));
    let again = store.append(reply).await.expect("retry the reply");
    assert!(!again.created, "a retry stores no second copy");
    assert_eq!(
        again.message, first.message,
        "a retry returns the stored reply"
    );
    let read = history(&store, chat).await;
    assert_eq!(read.len(), 4);
    assert_eq!(read[3].reply_to_seq, Some(Seq(2)));
    assert!(read[..3].iter().all(|m| m.reply_to_seq.is_none()));
    let edited = store
        .change(chat, Seq(4), edit("answering two, edited"))
        .await
        .expect("edit the reply");
    assert_eq!(
        edited.reply_to_seq,
        Some(Seq(2)),
        "an edit keeps the reference"
    );
    let fed = feed(&store, chat, Rev(0), 10).await;
    assert_eq!(fed.last(), Some(&edited), "the feed shows the edited reply");
}

/// `last_revs` names each chat's newest revision (the last one the feed shows), in the order
/// asked, 0 for a chat without messages; it moves with appends and changes alike.
pub async fn last_revs_follow_appends_and_changes<S: MessageStore>(store: S) {
    let a = fresh_chat();
    let b = fresh_chat();
    let none = fresh_chat();
    append_n(&store, a, 3).await;
    append_n(&store, b, 2).await;
    store
        .change(a, Seq(1), react(5, "👍", true))
        .await
        .expect("react");
    store.change(a, Seq(2), edit("two")).await.expect("edit");
    store
        .change(b, Seq(1), MessageChange::Delete)
        .await
        .expect("delete");
    let revs = store.last_revs(&[a, none, b, a]).await.expect("last_revs");
    assert_eq!(revs, vec![Rev(5), Rev::ZERO, Rev(3), Rev(5)]);
    let fed = feed(&store, a, Rev::ZERO, 2).await;
    assert_eq!(
        fed.last().map(|m| m.rev),
        Some(revs[0]),
        "the feed ends at last_rev"
    );
}

/// An append after changes takes the revision after them and answers with exactly the message
/// it stored; a retried send of a message that changed since answers with its current state.
pub async fn appends_after_changes_answer_what_they_stored<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    append_n(&store, chat, 2).await;
    store
        .change(chat, Seq(1), edit("changed"))
        .await
        .expect("edit");
    store
        .change(chat, Seq(2), react(5, "👀", true))
        .await
        .expect("react");
    let send = NewMessage {
        reply_to_seq: None,
        chat_id: chat,
        sender_id: UserId(3),
        msg_text: "after the changes".to_owned(),
        sent_at: now_millis(),
        timestamp: None,
        client_msg_id: Some("after-changes".to_owned()),
    };
    let appended = store.append(send.clone()).await.expect("append");
    assert!(appended.created);
    assert_eq!(
        (appended.message.seq, appended.message.rev),
        (Seq(3), Rev(5)),
        "2 appends and 2 changes came before"
    );
    let read = history(&store, chat).await;
    assert_eq!(
        read.get(2),
        Some(&appended.message),
        "the answer is what was stored"
    );
    let edited = store
        .change(chat, Seq(3), edit("after the changes, edited"))
        .await
        .expect("edit the new message");
    assert_eq!(edited.rev, Rev(6));
    let retried = store.append(send).await.expect("retry the send");
    assert!(!retried.created, "a retry stores no second copy");
    assert_eq!(
        retried.message, edited,
        "a retry answers with the message as it is now"
    );
}
