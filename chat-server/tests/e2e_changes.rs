//! Messages that change, end to end: replies, edits, deletes and reactions through the real SDK
//! against a real server, live on every member's stream, in every read, and in the change feed
//! that brings an offline subscriber to exactly the server's state.
//!
//! Runs on whatever stores `CHAT_TEST_METADATA` / `CHAT_TEST_MESSAGES` name (SQLite by default;
//! the README's test command runs it on MySQL and Cassandra too).

mod common;

use chat_client::{ChatId, Client, Error, ErrorCode, Event, Message, Rev, Seq, Subscription};
use common::{assert_api_error, messages_of, next_event, uid, TestServer, PATIENCE};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};

/// The next `MessageUpdated` of the stream (other events skipped).
async fn next_update(sub: &mut Subscription) -> Message {
    loop {
        if let Event::MessageUpdated(m) = next_event(sub).await {
            return m;
        }
    }
}

/// Every message of a chat in its current state, by `seq`, read page by page.
async fn history(client: &Client, chat: ChatId) -> BTreeMap<Seq, Message> {
    client
        .fetch_all_after(chat, Seq::ZERO)
        .await
        .expect("history")
        .into_iter()
        .map(|m| (m.seq, m))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_edits_deletes_and_reactions_reach_members_live() {
    let server = TestServer::start("changes_live").await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let outsider = server.user("mallory").await;
    let chat = alice
        .create_chat("changes", &[uid(&bob), uid(&carol)])
        .await
        .expect("create")
        .chat_id;
    let mut bob_sub = bob.subscribe().await.expect("subscribe bob");
    let mut carol_sub = carol.subscribe().await.expect("subscribe carol");

    let first = alice.send(chat, "helo").await.expect("send");
    assert_eq!((first.seq, first.rev), (Seq(1), Rev(1)));
    let reply = bob.reply(chat, first.seq, "hi alice").await.expect("reply");
    assert_eq!(reply.reply_to_seq, Some(Seq(1)));
    let live = messages_of(&mut bob_sub, chat, 2).await;
    assert_eq!(live[1], reply, "a reply arrives live with its reference");

    // The sender edits; every member sees the new state live, and every read shows it.
    let edited = alice.edit(chat, first.seq, "hello").await.expect("edit");
    assert_eq!(edited.msg_text, "hello");
    assert!(edited.edited_at.is_some());
    assert_eq!(
        edited.rev,
        Rev(3),
        "the edit takes the chat's next revision"
    );
    assert_eq!(next_update(&mut bob_sub).await, edited);
    let same = alice
        .edit(chat, first.seq, "hello")
        .await
        .expect("same edit");
    assert_eq!(same, edited, "the same text again changes nothing");

    // Reactions: idempotent per user and emoji, counted per emoji in order of first use.
    let r1 = bob.react(chat, first.seq, "👍").await.expect("react");
    let r2 = carol.react(chat, first.seq, "👍").await.expect("react");
    let r3 = carol.react(chat, first.seq, "🎉").await.expect("react");
    let again = carol
        .react(chat, first.seq, "🎉")
        .await
        .expect("react again");
    assert_eq!(again, r3, "reacting twice changes nothing");
    assert_eq!(r3.reactions.len(), 2);
    assert_eq!(r3.reactions[0].emoji, "👍");
    assert_eq!(r3.reactions[0].count, 2);
    assert_eq!(r3.reactions[0].user_ids, vec![uid(&bob), uid(&carol)]);
    assert_eq!(r3.reactions[1].emoji, "🎉");
    let r4 = bob.unreact(chat, first.seq, "👍").await.expect("unreact");
    assert_eq!(r4.reactions[0].user_ids, vec![uid(&carol)]);
    for want in [&r1, &r2, &r3, &r4] {
        assert_eq!(&next_update(&mut bob_sub).await, want);
    }
    assert!(r1.rev < r2.rev && r2.rev < r3.rev && r3.rev < r4.rev);

    // Who may do what.
    assert_api_error(
        bob.edit(chat, first.seq, "not mine").await,
        403,
        ErrorCode::Forbidden,
    );
    assert_api_error(
        bob.delete_message(chat, first.seq).await,
        403,
        ErrorCode::Forbidden,
    );
    for result in [
        outsider.edit(chat, first.seq, "x").await,
        outsider.react(chat, first.seq, "👍").await,
        outsider.delete_message(chat, first.seq).await,
    ] {
        assert_api_error(result, 403, ErrorCode::NotAMember);
    }
    assert_api_error(
        outsider.changes(chat, Rev::ZERO, 10).await,
        403,
        ErrorCode::NotAMember,
    );
    assert_api_error(
        alice.edit(chat, Seq(99), "x").await,
        404,
        ErrorCode::NotFound,
    );
    assert_api_error(
        alice.react(chat, Seq(99), "👍").await,
        404,
        ErrorCode::NotFound,
    );
    assert_api_error(
        alice.edit(ChatId(987_654_321), Seq(1), "x").await,
        404,
        ErrorCode::NotFound,
    );

    // Bad input: the contract's code, never a 500, and nothing changes.
    assert_api_error(
        alice.edit(chat, first.seq, "   ").await,
        400,
        ErrorCode::InvalidArgument,
    );
    assert_api_error(
        alice.edit(chat, first.seq, &"x".repeat(4097)).await,
        400,
        ErrorCode::InvalidArgument,
    );
    assert_api_error(
        bob.react(chat, first.seq, &"e".repeat(33)).await,
        400,
        ErrorCode::InvalidArgument,
    );
    assert_api_error(
        bob.reply(chat, Seq(50), "to nothing").await,
        400,
        ErrorCode::InvalidArgument,
    );
    assert_api_error(
        bob.reply(chat, Seq(0), "to nothing").await,
        400,
        ErrorCode::InvalidArgument,
    );
    let target = alice.send(chat, "react to me").await.expect("send");
    for i in 0..20 {
        alice
            .react(chat, target.seq, &format!("e{i}"))
            .await
            .expect("react");
    }
    assert_api_error(
        alice.react(chat, target.seq, "one too many").await,
        400,
        ErrorCode::InvalidArgument,
    );
    // Odd emoji travel as one path segment.
    let odd = bob.react(chat, first.seq, "a/b?c#d%").await.expect("odd");
    assert!(odd.reactions.iter().any(|r| r.emoji == "a/b?c#d%"));

    // Deletes: the sender, or the owner or an admin; a tombstone keeps its seq and nothing else.
    let gone = bob
        .delete_message(chat, reply.seq)
        .await
        .expect("delete own");
    assert!(gone.deleted);
    assert_eq!((gone.seq, gone.msg_text.as_str()), (reply.seq, ""));
    assert!(gone.reactions.is_empty());
    let again = bob
        .delete_message(chat, reply.seq)
        .await
        .expect("delete twice");
    assert_eq!(again, gone, "deleting twice changes nothing");
    assert_api_error(
        bob.edit(chat, reply.seq, "back").await,
        409,
        ErrorCode::Conflict,
    );
    let by_owner = alice
        .delete_message(chat, first.seq)
        .await
        .expect("the owner deletes another's message");
    assert!(by_owner.deleted && by_owner.reactions.is_empty());
    let read = history(&carol, chat).await;
    assert_eq!(read[&reply.seq], gone);
    assert_eq!(read[&first.seq], by_owner);
    assert!(read
        .values()
        .filter(|m| m.deleted)
        .all(|m| m.msg_text.is_empty()));

    // The feed lists each message once, at its latest revision, in ascending order.
    let (feed, next) = carol
        .changes_all_after(chat, Rev::ZERO)
        .await
        .expect("feed");
    assert_eq!(feed.len(), read.len());
    assert!(feed.windows(2).all(|w| w[0].rev < w[1].rev));
    for m in &feed {
        assert_eq!(&read[&m.seq], m, "the feed and history agree");
    }
    assert_eq!(next, feed.last().map(|m| m.rev).unwrap_or_default());
    let page = carol.changes(chat, next, 10).await.expect("feed tail");
    assert!(page.messages.is_empty() && !page.has_more);
    assert_eq!(page.next_rev, next);

    // A removed member hears of nothing more.
    alice
        .remove_member(chat, uid(&carol))
        .await
        .expect("remove carol");
    loop {
        match next_event(&mut carol_sub).await {
            Event::RemovedFromChat(c) if c == chat => break,
            _ => continue,
        }
    }
    let late = alice.send(chat, "after carol").await.expect("send");
    alice
        .edit(chat, late.seq, "after carol, edited")
        .await
        .expect("edit");
    let probe = alice
        .create_chat("probe", &[uid(&carol)])
        .await
        .expect("probe");
    alice
        .send(probe.chat_id, "probe")
        .await
        .expect("send probe");
    loop {
        match next_event(&mut carol_sub).await {
            Event::Message(m) if m.chat_id == probe.chat_id => break,
            Event::Message(m) | Event::MessageUpdated(m) => {
                assert_ne!(m.chat_id, chat, "a removed member got {m:?}")
            }
            _ => continue,
        }
    }
}

/// Applies one stream event to a subscriber's view of a chat, checking that nothing is handed
/// over twice: a message once, in order; an update only to a message already there, newer than
/// what the view holds.
fn apply(view: &mut BTreeMap<Seq, Message>, event: Event, chat: ChatId) {
    match event {
        Event::Message(m) if m.chat_id == chat => {
            let expected = view.keys().next_back().map_or(Seq(1), |s| s.next());
            assert_eq!(m.seq, expected, "messages in order, once");
            view.insert(m.seq, m);
        }
        Event::MessageUpdated(m) if m.chat_id == chat => {
            let held = view
                .get(&m.seq)
                .unwrap_or_else(|| panic!("an update before its message: {m:?}"));
            assert!(
                m.rev > held.rev,
                "an update repeats or goes back: held {held:?}, got {m:?}"
            );
            view.insert(m.seq, m);
        }
        _ => {}
    }
}

/// Reads the stream into `view` until it equals `want`.
async fn converge(
    sub: &mut Subscription,
    view: &mut BTreeMap<Seq, Message>,
    chat: ChatId,
    want: &BTreeMap<Seq, Message>,
) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while view != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the view did not converge; {} messages of {}",
            view.len(),
            want.len()
        );
        apply(view, next_event(sub).await, chat);
    }
}

/// One random change by one of `users` to the chat: a new message (sometimes a reply), an edit
/// of one's own message, a delete, or a reaction added or taken back. Refusals the contract
/// allows (editing a tombstone, deleting another's message as a member) are fine.
async fn random_change(
    rng: &mut rand::rngs::StdRng,
    users: &[Client],
    chat: ChatId,
    last: &mut i64,
) {
    let who = &users[rng.gen_range(0..users.len())];
    let seq = Seq(rng.gen_range(1..=(*last).max(1)));
    let result = match rng.gen_range(0..10) {
        0..=2 => {
            let text = format!("m{}", rng.gen::<u32>());
            let sent = if rng.gen_bool(0.3) && *last > 0 {
                who.reply(chat, seq, &text).await
            } else {
                who.send(chat, &text).await
            };
            sent.map(|m| *last = (*last).max(m.seq.get()))
        }
        3..=4 => who
            .edit(chat, seq, &format!("edit {}", rng.gen::<u32>()))
            .await
            .map(drop),
        5 => who.delete_message(chat, seq).await.map(drop),
        6..=7 => who
            .react(chat, seq, ["👍", "🎉", "👀"][rng.gen_range(0..3)])
            .await
            .map(drop),
        _ => who
            .unreact(chat, seq, ["👍", "🎉", "👀"][rng.gen_range(0..3)])
            .await
            .map(drop),
    };
    match result {
        Ok(()) => {}
        Err(Error::Api {
            status: 403 | 409, ..
        }) => {}
        Err(e) => panic!("change failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offline_subscriber_catches_up_on_a_thousand_mixed_changes() {
    let mut server = TestServer::start("changes_offline").await;
    let users = vec![
        server.user("ann").await,
        server.user("ben").await,
        server.user("cat").await,
    ];
    let reader = server.user("dan").await;
    let ids: Vec<_> = users.iter().map(uid).chain([uid(&reader)]).collect();
    let chat = users[0]
        .create_chat("busy", &ids[1..])
        .await
        .expect("create")
        .chat_id;
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let mut last = 0i64;
    for i in 0..30 {
        users[i % 3]
            .send(chat, &format!("start {i}"))
            .await
            .expect("send");
        last += 1;
    }

    // Online: the reader follows the chat from its start.
    let mut sub = reader.resume(HashMap::new()).expect("subscribe");
    let mut view = BTreeMap::new();
    converge(&mut sub, &mut view, chat, &history(&reader, chat).await).await;
    // The task reads the feed after the catch-up; wait until its position is the newest.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let points = loop {
        let points = sub.resume_points();
        if points[&chat].rev == Some(Rev(30)) {
            break points;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no feed position: {points:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(points[&chat].seq, Seq(30));
    drop(sub);

    // Offline: a thousand mixed changes from three users.
    for _ in 0..1_000 {
        random_change(&mut rng, &users, chat, &mut last).await;
    }
    let want = history(&reader, chat).await;
    assert!(
        want.values().any(|m| m.deleted),
        "the mix deleted something"
    );
    assert!(
        want.values().any(|m| m.edited_at.is_some()),
        "and edited something"
    );
    assert!(
        want.values().any(|m| !m.reactions.is_empty()),
        "and reacted"
    );

    // Back online from the saved points: exactly the server's state, nothing twice.
    let mut sub = reader.resume(points).expect("resume");
    converge(&mut sub, &mut view, chat, &want).await;

    // Live again, with a server restart in the middle: the reconnect reads the feed.
    for _ in 0..100 {
        random_change(&mut rng, &users, chat, &mut last).await;
    }
    server.restart().await;
    for _ in 0..100 {
        random_change(&mut rng, &users, chat, &mut last).await;
    }
    let want = history(&reader, chat).await;
    converge(&mut sub, &mut view, chat, &want).await;
}
