//! Cassandra-specific behaviour beyond the conformance suite, against a real node
//! (`CHAT_TEST_CASSANDRA_URL`, see `scripts/cassandra.sh`): paging across partition buckets, the
//! bucket size pinned per keyspace, a claimer (of appends or of a change) that died between its
//! claim and its writes (also as the chat list finds it), data written before revisions existed,
//! search across many buckets, and a cluster that cannot be reached.
#![cfg(all(feature = "cassandra", feature = "testing"))]

use chat_core::{
    ChatId, Error, FetchQuery, Message, MessageChange, MessageStore, NewMessage, Rev, Seq, UserId,
};
use chat_storage::cassandra::testing::{fresh_keyspace_url, url_from_env};
use chat_storage::cassandra::{CassandraConfig, CassandraMessageStore};
use scylla::client::session_builder::SessionBuilder;

/// One message of `chat_heads.pending`: (sender_id, msg_text, sent_at, timestamp, client_msg_id).
type PendingRow<'a> = (i64, &'a str, i64, Option<i64>, Option<&'a str>);

fn base() -> String {
    url_from_env("CHAT_TEST_CASSANDRA_URL")
}

/// `url` with `extra` query parameters added.
fn with_params(url: &str, extra: &str) -> String {
    if url.contains('?') {
        format!("{url}&{extra}")
    } else {
        format!("{url}?{extra}")
    }
}

fn msg(chat: ChatId, sender: i64, text: &str, cmid: Option<&str>) -> NewMessage {
    NewMessage {
        reply_to_seq: None,
        chat_id: chat,
        sender_id: UserId(sender),
        msg_text: text.to_owned(),
        sent_at: 1_700_000_000_000,
        timestamp: None,
        client_msg_id: cmid.map(str::to_owned),
    }
}

fn seqs(page: &[Message]) -> Vec<i64> {
    page.iter().map(|m| m.seq.get()).collect()
}

async fn open(url: &str) -> CassandraMessageStore {
    CassandraMessageStore::connect(CassandraConfig::from_url(url).expect("url"))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_reads_every_bucket_of_a_chat() {
    // Bucket size 5: the search suite's chats span many partitions, and a search must read
    // each of them (newest first) and still page exactly.
    for run in 0..2 {
        let url = with_params(&fresh_keyspace_url(&base()), "bucket_size=5");
        let store = open(&url).await;
        assert_eq!(store.bucket_size(), 5);
        if run == 0 {
            chat_storage::testing::search::pages_tile_exactly(store).await;
        } else {
            chat_storage::testing::search::random_texts_match_the_reference(store).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_walk_across_small_buckets_both_ways() {
    // Bucket size 7: seqs 1..=6 in bucket 0, 7..=13 in bucket 1, ... so every page below
    // crosses partitions, at and between their edges.
    let url = with_params(&fresh_keyspace_url(&base()), "bucket_size=7");
    let store = open(&url).await;
    assert_eq!(store.bucket_size(), 7);
    let chat = ChatId(77);
    for i in 1..=40 {
        let a = store
            .append(msg(chat, 1, &format!("m{i}"), None))
            .await
            .expect("append");
        assert_eq!(a.message.seq, Seq(i));
    }
    for limit in [1_u32, 3, 6, 7, 8, 13, 14, 15, 40, 100] {
        // Forward from every position.
        for after in 0..=41_i64 {
            let page = store
                .fetch(
                    chat,
                    FetchQuery::After {
                        after: Seq(after),
                        limit,
                    },
                )
                .await
                .expect("after");
            let from = after + 1;
            let to = (after + i64::from(limit)).min(40);
            assert_eq!(
                seqs(&page),
                (from..=to).collect::<Vec<_>>(),
                "after {after} limit {limit}"
            );
        }
        // Backward from every position.
        for before in 0..=42_i64 {
            let page = store
                .fetch(
                    chat,
                    FetchQuery::Before {
                        before: Seq(before),
                        limit,
                    },
                )
                .await
                .expect("before");
            let to = (before - 1).min(40);
            let from = (to - i64::from(limit) + 1).max(1);
            let expected: Vec<i64> = if to < 1 {
                Vec::new()
            } else {
                (from..=to).collect()
            };
            assert_eq!(seqs(&page), expected, "before {before} limit {limit}");
        }
        let latest = store
            .fetch(chat, FetchQuery::Latest { limit })
            .await
            .expect("latest");
        let from = (40 - i64::from(limit) + 1).max(1);
        assert_eq!(
            seqs(&latest),
            (from..=40).collect::<Vec<_>>(),
            "latest {limit}"
        );
    }
    // Far-away bounds do not walk empty buckets forever.
    let page = store
        .fetch(
            chat,
            FetchQuery::Before {
                before: Seq(i64::MAX),
                limit: 5,
            },
        )
        .await
        .expect("before max");
    assert_eq!(seqs(&page), (36..=40).collect::<Vec<_>>());
    let page = store
        .fetch(
            chat,
            FetchQuery::After {
                after: Seq(i64::MAX - 1),
                limit: 5,
            },
        )
        .await
        .expect("after max");
    assert!(page.is_empty());
}

/// Many appenders in one process are claimed in batches; with 5 messages per bucket the batches
/// straddle bucket boundaries, and every page still reads dense.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_claims_across_bucket_boundaries_stay_dense() {
    let url = with_params(&fresh_keyspace_url(&base()), "bucket_size=5");
    let store = std::sync::Arc::new(open(&url).await);
    let chat = ChatId(55);
    let mut tasks = Vec::new();
    for t in 0..12_i64 {
        let store = std::sync::Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..15 {
                let cmid = format!("{t}-{i}");
                let a = store
                    .append(msg(chat, t, &cmid, Some(&cmid)))
                    .await
                    .expect("append");
                assert!(a.created);
                got.push(a.message);
            }
            got
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("task"));
    }
    acked.sort_by_key(|m| m.seq);
    assert_eq!(seqs(&acked), (1..=180).collect::<Vec<_>>());
    let mut read = Vec::new();
    loop {
        let after = read.last().map_or(Seq(0), |m: &Message| m.seq);
        let page = store
            .fetch(chat, FetchQuery::After { after, limit: 13 })
            .await
            .expect("fetch");
        if page.is_empty() {
            break;
        }
        read.extend(page);
    }
    assert_eq!(read, acked, "history is exactly what was acked");
    assert_eq!(store.last_seq(chat).await.expect("last_seq"), Seq(180));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_size_is_fixed_by_the_keyspace() {
    let url = fresh_keyspace_url(&base());
    let first = open(&with_params(&url, "bucket_size=50")).await;
    assert_eq!(first.bucket_size(), 50);
    // Without a bucket_size the stored one is used ...
    assert_eq!(open(&url).await.bucket_size(), 50);
    // ... and a different one is refused: it would move existing messages.
    match CassandraMessageStore::connect(
        CassandraConfig::from_url(&with_params(&url, "bucket_size=60")).expect("url"),
    )
    .await
    {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("bucket_size"), "{m}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// A process that won the LWT for seq n and died before writing message n leaves only the
/// claim (with the message in it). Nothing may be lost or left as a hole: `last_seq` and the
/// next append write it, and the sender's retry finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_writer_died_is_completed_by_others() {
    let url = fresh_keyspace_url(&base());
    let store = open(&url).await;
    let chat = ChatId(4242);
    store
        .append(msg(chat, 1, "one", Some("c1")))
        .await
        .expect("append 1");

    // Play the dead claimer: move the head to 2 with its message, write nothing else.
    let session = raw_session(&url).await;
    let ks = store.keyspace();
    let claim = appended(vec![(
        7,
        "orphan",
        1_700_000_000_500,
        Some(5),
        Some("c2"),
        None,
    )]);
    lwt(
        &session,
        format!(
            "UPDATE {ks}.chat_heads SET last_seq = 2, last_rev = 2, claim = ? WHERE chat_id = ? \
             IF last_rev = 1"
        ),
        (claim, chat.get()),
    )
    .await;

    // A fresh process (no cached head) sees seq 2 as last_seq, and then it is readable.
    let other = open(&url).await;
    assert_eq!(other.last_seq(chat).await.expect("last_seq"), Seq(2));
    let page = other
        .fetch(
            chat,
            FetchQuery::After {
                after: Seq(0),
                limit: 10,
            },
        )
        .await
        .expect("fetch");
    assert_eq!(seqs(&page), vec![1, 2]);
    assert_eq!(page[1].msg_text, "orphan");
    assert_eq!(page[1].timestamp, Some(5));
    assert_eq!(page[1].rev, Rev(2));

    // The sender's retry gets the stored message, not a second one.
    let retry = store
        .append(msg(chat, 7, "orphan again", Some("c2")))
        .await
        .expect("retry");
    assert!(!retry.created);
    assert_eq!(retry.message, page[1]);
    let next = store
        .append(msg(chat, 1, "three", None))
        .await
        .expect("append 3");
    assert_eq!((next.message.seq, next.message.rev), (Seq(3), Rev(3)));

    // Same again, but this time the next append (not last_seq) has to complete the claim.
    // This claim carries two messages (4 and 5), like a batch of a process that died.
    let claim = appended(vec![
        (8, "orphan 4", 1_700_000_000_900, None, None, None),
        (9, "orphan 5", 1_700_000_000_901, None, Some("c5"), Some(4)),
    ]);
    lwt(
        &session,
        format!(
            "UPDATE {ks}.chat_heads SET last_seq = 5, last_rev = 5, claim = ? WHERE chat_id = ? \
             IF last_rev = 3"
        ),
        (claim, chat.get()),
    )
    .await;
    let six = other
        .append(msg(chat, 2, "six", None))
        .await
        .expect("append 6");
    assert_eq!((six.message.seq, six.message.rev), (Seq(6), Rev(6)));
    let page = store
        .fetch(
            chat,
            FetchQuery::After {
                after: Seq(0),
                limit: 10,
            },
        )
        .await
        .expect("fetch");
    assert_eq!(seqs(&page), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(page[3].msg_text, "orphan 4");
    assert_eq!(page[4].msg_text, "orphan 5");
    assert_eq!(page[4].reply_to_seq, Some(Seq(4)));
    // The dead claim's dedupe keys were written too.
    let retry = store
        .append(msg(chat, 9, "orphan 5 again", Some("c5")))
        .await
        .expect("retry 5");
    assert!(!retry.created);
    assert_eq!(retry.message.seq, Seq(5));
    // And its feed rows: the feed has every message, by rev.
    let fed = store.changes(chat, Rev(0), 100).await.expect("feed");
    assert_eq!(
        fed, page,
        "the feed of a chat that never changed is its history"
    );
}

/// A process that won the LWT for a change and died before writing it out: the change is
/// not lost. The feed completes it, and the next change (of any process) writes it first, so
/// a change of the same message builds on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_writer_died_is_completed_by_others() {
    let url = fresh_keyspace_url(&base());
    let store = open(&url).await;
    let chat = ChatId(4343);
    for i in 1..=2 {
        store
            .append(msg(chat, 1, &format!("m{i}"), None))
            .await
            .expect("append");
    }
    let session = raw_session(&url).await;
    let ks = store.keyspace();
    // The dead claimer: rev 3 edits message 1, and nothing is written out.
    lwt(
        &session,
        format!(
            "UPDATE {ks}.chat_heads SET last_rev = 3, claim = ? WHERE chat_id = ? \
             IF last_rev = 2"
        ),
        (changed(1, "edited by the dead", Some(123), &[]), chat.get()),
    )
    .await;
    // The feed of another process finds rev 3 missing and writes it out.
    let other = open(&url).await;
    let fed = other.changes(chat, Rev(2), 10).await.expect("feed");
    assert_eq!(fed.len(), 1);
    assert_eq!(
        (
            fed[0].seq,
            fed[0].rev,
            fed[0].msg_text.as_str(),
            fed[0].edited_at
        ),
        (Seq(1), Rev(3), "edited by the dead", Some(123))
    );

    // Again (rev 4 reacts to message 1), and this time a change of the same message by a
    // process whose cached head is older has to build on it.
    lwt(
        &session,
        format!(
            "UPDATE {ks}.chat_heads SET last_rev = 4, claim = ? WHERE chat_id = ? \
             IF last_rev = 3"
        ),
        (
            changed(1, "edited by the dead", Some(123), &[("👍", &[5])]),
            chat.get(),
        ),
    )
    .await;
    let reacted = store
        .change(
            chat,
            Seq(1),
            MessageChange::React {
                user_id: UserId(6),
                emoji: "👍".to_owned(),
                add: true,
            },
        )
        .await
        .expect("react");
    assert_eq!(reacted.rev, Rev(5));
    assert_eq!(reacted.msg_text, "edited by the dead");
    assert_eq!(reacted.reactions.len(), 1);
    assert_eq!(reacted.reactions[0].user_ids, vec![UserId(5), UserId(6)]);
    let fed = other.changes(chat, Rev(0), 10).await.expect("feed");
    assert_eq!(
        fed.iter()
            .map(|m| (m.seq.get(), m.rev.get()))
            .collect::<Vec<_>>(),
        vec![(2, 2), (1, 5)]
    );
    assert_eq!(fed[1], reacted);
}

/// The chat list of a process that finds the head's claim not written out (its claimer died)
/// writes it out before answering: a delete of the newest message shows as a tombstone and is
/// counted, a delete of an older message above the marker is counted, an appended message is
/// the newest; and however often a delete claim is written out, it leaves one tombstone row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_completes_a_claim_whose_writer_died() {
    let url = fresh_keyspace_url(&base());
    let store = open(&url).await;
    let chat = ChatId(5454);
    for i in 1..=3 {
        store
            .append(msg(chat, 1, &format!("m{i}"), None))
            .await
            .expect("append");
    }
    let session = raw_session(&url).await;
    let ks = store.keyspace();
    let tombstones = || async {
        session
            .query_unpaged(
                format!("SELECT seq FROM {ks}.message_tombstones WHERE chat_id = ?"),
                (chat.get(),),
            )
            .await
            .expect("read tombstones")
            .into_rows_result()
            .expect("rows")
            .rows::<(i64,)>()
            .expect("typed rows")
            .map(|r| r.expect("row").0)
            .collect::<Vec<i64>>()
    };
    // The dead claimer deleted the newest message (rev 4) and wrote nothing out.
    lwt(
        &session,
        format!(
            "UPDATE {ks}.chat_heads SET last_rev = 4, claim = ? WHERE chat_id = ? \
             IF last_rev = 3"
        ),
        (deleted(3), chat.get()),
    )
    .await;
    assert!(tombstones().await.is_empty());
    let other = open(&url).await;
    let got = other
        .activity(&[(chat, Seq(1))])
        .await
        .expect("activity")
        .remove(0);
    assert_eq!((got.last_seq, got.deleted_after), (Seq(3), 1));
    let newest = got.last_message.expect("a newest message");
    assert!(newest.deleted && newest.msg_text.is_empty());
    assert_eq!((newest.seq, newest.rev), (Seq(3), Rev(4)));
    assert_eq!(tombstones().await, vec![3]);

    // Again for an older message above the marker (rev 5 deletes message 2).
    lwt(
        &session,
        format!(
            "UPDATE {ks}.chat_heads SET last_rev = 5, claim = ? WHERE chat_id = ? \
             IF last_rev = 4"
        ),
        (deleted(2), chat.get()),
    )
    .await;
    // A marker at or above it does not need it.
    let at_two = other.activity(&[(chat, Seq(2))]).await.expect("activity");
    assert_eq!(at_two[0].deleted_after, 1);
    let got = other
        .activity(&[(chat, Seq(1)), (chat, Seq::ZERO)])
        .await
        .expect("activity");
    assert_eq!(
        got.iter().map(|x| x.deleted_after).collect::<Vec<_>>(),
        vec![2, 2]
    );
    // Written out again by the feed and by the owner's own next change: still one row each.
    other.changes(chat, Rev(3), 10).await.expect("feed");
    store
        .change(chat, Seq(2), MessageChange::Delete)
        .await
        .expect("delete again");
    assert_eq!(tombstones().await, vec![2, 3]);

    // An append claim (seq 4, rev 6) whose messages were never written.
    lwt(
        &session,
        format!(
            "UPDATE {ks}.chat_heads SET last_seq = 4, last_rev = 6, claim = ? \
             WHERE chat_id = ? IF last_rev = 5"
        ),
        (
            appended(vec![(2, "from the dead", 1, None, None, None)]),
            chat.get(),
        ),
    )
    .await;
    let got = open(&url)
        .await
        .activity(&[(chat, Seq(3))])
        .await
        .expect("activity")
        .remove(0);
    assert_eq!((got.last_seq, got.deleted_after), (Seq(4), 0));
    let newest = got.last_message.expect("a newest message");
    assert_eq!(
        (newest.seq, newest.rev, newest.msg_text.as_str()),
        (Seq(4), Rev(6), "from the dead")
    );
}

/// Data written before revisions existed (schema version 1: messages without `rev`, a head
/// with `pending` and no `last_rev`) reads as `rev = seq`, is in the feed, and goes on: the
/// next append and the next change take revisions after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_from_before_revisions_reads_as_rev_equal_to_seq() {
    let url = fresh_keyspace_url(&base());
    let store = open(&url).await;
    let ks = store.keyspace().to_owned();
    let session = raw_session(&url).await;
    // Two chats as version 1 left them: messages 1..=2 written, message 3 only in the head's
    // pending claim (its claimer died).
    let old = |chat: ChatId| {
        let session = &session;
        let ks = ks.clone();
        async move {
            for seq in 1..=2_i64 {
                session
                    .query_unpaged(
                        format!(
                            "INSERT INTO {ks}.messages (chat_id, bucket, seq, sender_id, \
                             msg_text, sent_at, timestamp, client_msg_id) \
                             VALUES (?, 0, ?, 1, ?, 1700000000000, null, ?)"
                        ),
                        (chat.get(), seq, format!("old {seq}"), format!("old-{seq}")),
                    )
                    .await
                    .expect("v1 message");
                session
                    .query_unpaged(
                        format!(
                            "INSERT INTO {ks}.message_dedupe (chat_id, sender_id, \
                             client_msg_id, seq) VALUES (?, 1, ?, ?)"
                        ),
                        (chat.get(), format!("old-{seq}"), seq),
                    )
                    .await
                    .expect("v1 dedupe");
            }
            let pending: Vec<PendingRow<'_>> =
                vec![(2, "old 3", 1_700_000_000_003, None, Some("old-3"))];
            session
                .query_unpaged(
                    format!(
                        "INSERT INTO {ks}.chat_heads (chat_id, last_seq, pending) VALUES (?, 3, ?)"
                    ),
                    (chat.get(), pending),
                )
                .await
                .expect("v1 head");
        }
    };
    let (a, b) = (ChatId(501), ChatId(502));
    old(a).await;
    old(b).await;

    // Chat a: read as it is, then an append, then a change.
    let fed = store.changes(a, Rev(0), 10).await.expect("feed");
    assert_eq!(seqs(&fed), vec![1, 2, 3]);
    assert!(fed.iter().all(|m| m.rev.get() == m.seq.get() && !m.deleted));
    assert_eq!(fed[2].msg_text, "old 3");
    let retry = store
        .append(msg(a, 2, "old 3 again", Some("old-3")))
        .await
        .expect("retry");
    assert!(!retry.created);
    assert_eq!(retry.message, fed[2]);
    let four = store
        .append(msg(a, 1, "new 4", None))
        .await
        .expect("append");
    assert_eq!((four.message.seq, four.message.rev), (Seq(4), Rev(4)));
    let edited = store
        .change(
            a,
            Seq(2),
            MessageChange::Edit {
                msg_text: "old 2, edited".to_owned(),
                edited_at: 1_800_000_000_000,
            },
        )
        .await
        .expect("edit");
    assert_eq!(edited.rev, Rev(5));
    let fed = store.changes(a, Rev(0), 10).await.expect("feed");
    assert_eq!(
        fed.iter()
            .map(|m| (m.seq.get(), m.rev.get()))
            .collect::<Vec<_>>(),
        vec![(1, 1), (3, 3), (4, 4), (2, 5)]
    );
    assert_eq!(fed[3], edited);
    let page = store
        .changes(a, Rev(1), 2)
        .await
        .expect("a page of the feed");
    assert_eq!(seqs(&page), vec![3, 4]);

    // Chat b: its first claim of this version is a change (of the message only in pending).
    let deleted = store
        .change(b, Seq(3), MessageChange::Delete)
        .await
        .expect("delete");
    assert_eq!((deleted.rev, deleted.deleted), (Rev(4), true));
    let five = store.append(msg(b, 1, "new", None)).await.expect("append");
    assert_eq!((five.message.seq, five.message.rev), (Seq(4), Rev(5)));
    let fed = store.changes(b, Rev(0), 10).await.expect("feed");
    assert_eq!(
        fed.iter()
            .map(|m| (m.seq.get(), m.rev.get()))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 2), (3, 4), (4, 5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_stored_before_search_are_backfilled_by_the_migration() {
    let url = fresh_keyspace_url(&base());
    let store = open(&url).await;
    let ks = store.keyspace().to_owned();
    let chat = ChatId(41);
    for text in ["Alpha beta", "beta GAMMA", "alpha doomed"] {
        store
            .append(msg(chat, 1, text, None))
            .await
            .expect("append");
    }
    store
        .change(chat, Seq(3), MessageChange::Delete)
        .await
        .expect("delete");
    // Make the rows look written before schema version 4: no terms, and the text written after
    // the terms were dropped (as it was, before there were terms at all).
    let raw = raw_session(&url).await;
    for seq in 1..=3_i64 {
        let (text, wts): (String, i64) = raw
            .query_unpaged(
                format!(
                    "SELECT msg_text, WRITETIME(msg_text) FROM {ks}.messages \
                     WHERE chat_id = ? AND bucket = 0 AND seq = ?"
                ),
                (chat.get(), seq),
            )
            .await
            .expect("read")
            .into_rows_result()
            .expect("rows")
            .single_row()
            .expect("one row");
        raw.query_unpaged(
            format!(
                "DELETE terms FROM {ks}.messages USING TIMESTAMP ? \
                 WHERE chat_id = ? AND bucket = 0 AND seq = ?"
            ),
            (wts + 5, chat.get(), seq),
        )
        .await
        .expect("drop terms");
        raw.query_unpaged(
            format!(
                "UPDATE {ks}.messages USING TIMESTAMP ? SET msg_text = ? \
                 WHERE chat_id = ? AND bucket = 0 AND seq = ?"
            ),
            (wts + 10, text, chat.get(), seq),
        )
        .await
        .expect("touch");
    }
    let query = chat_core::SearchQuery::parse("beta").expect("query");
    assert!(
        store
            .search(&[chat], &query, None, 10)
            .await
            .expect("search")
            .is_empty(),
        "the rows have no terms"
    );
    drop(store);
    // A node of this version starting on that data: migration 4 runs (again) with its backfill.
    raw.query_unpaged(
        format!("DELETE FROM {ks}.schema_migrations WHERE version = 4"),
        (),
    )
    .await
    .expect("forget migration 4");
    let store = open(&url).await;
    let found = store
        .search(&[chat], &query, None, 10)
        .await
        .expect("search");
    assert_eq!(seqs(&found), vec![2, 1]);
    let alpha = chat_core::SearchQuery::parse("ALPHA").expect("query");
    let found = store
        .search(&[chat], &alpha, None, 10)
        .await
        .expect("search");
    assert_eq!(seqs(&found), vec![1], "a deleted message stays unfound");
}

/// A plain session to play other processes with.
async fn raw_session(url: &str) -> scylla::client::session::Session {
    let config = CassandraConfig::from_url(url).expect("url");
    SessionBuilder::new()
        .known_nodes(&config.nodes)
        .build()
        .await
        .expect("session")
}

/// Runs an LWT by hand and asserts that it applied.
async fn lwt(
    session: &scylla::client::session::Session,
    cql: String,
    values: impl scylla::serialize::row::SerializeRow,
) {
    let result = session.query_unpaged(cql, values).await.expect("lwt");
    let (applied,): (bool,) = result
        .into_rows_result()
        .expect("rows")
        .first_row::<(bool,)>()
        .expect("applied");
    assert!(applied, "the hand-made claim did not apply");
}

/// One message of a version-2 append claim: (sender_id, msg_text, sent_at, timestamp,
/// client_msg_id, reply_to_seq).
type ClaimedRow<'a> = (i64, &'a str, i64, Option<i64>, Option<&'a str>, Option<i64>);

/// A changed state in a claim: (msg_text, edited_at, deleted, reactions).
type StateRow<'a> = (&'a str, Option<i64>, bool, Vec<(&'a str, Vec<i64>)>);

/// The `claim` column: (wts, appended messages, changed seq, new state).
type ClaimValue<'a> = (
    i64,
    Option<Vec<ClaimedRow<'a>>>,
    Option<i64>,
    Option<StateRow<'a>>,
);

/// The write timestamp a hand-made claim uses: now, in µs.
fn now_micros() -> i64 {
    chat_core::ids::now_millis() * 1000
}

/// An append claim.
fn appended(msgs: Vec<ClaimedRow<'_>>) -> ClaimValue<'_> {
    (now_micros(), Some(msgs), None, None)
}

/// A change claim of `seq`.
fn changed<'a>(
    seq: i64,
    text: &'a str,
    edited_at: Option<i64>,
    reactions: &[(&'a str, &[i64])],
) -> ClaimValue<'a> {
    let reactions = reactions.iter().map(|(e, u)| (*e, u.to_vec())).collect();
    (
        now_micros(),
        None,
        Some(seq),
        Some((text, edited_at, false, reactions)),
    )
}

/// A delete claim of `seq`: a tombstone (no text, no reactions).
fn deleted<'a>(seq: i64) -> ClaimValue<'a> {
    (
        now_micros(),
        None,
        Some(seq),
        Some(("", None, true, Vec::new())),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_unavailable() {
    // Nothing listens on this loopback address's CQL port.
    let config = CassandraConfig::from_url(
        "cassandra://127.0.0.254:9042/nothing?connect_timeout_ms=2000&request_timeout_ms=2000",
    )
    .expect("url");
    match CassandraMessageStore::connect(config).await {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
