//! Read state, liveness and people, end to end through the real SDK against a real server:
//! read markers and exact unread counts, receipts, the chat list by latest activity, typing,
//! presence, looking people up, display names, renaming, roles and direct chats, with the
//! contract's answers to bad input.
//!
//! Runs on whatever stores `CHAT_TEST_METADATA` / `CHAT_TEST_MESSAGES` name (SQLite by default;
//! the README's test command runs it with MySQL metadata and with Cassandra messages too).

mod common;

use chat_client::{ChatKind, ErrorCode, Event, Role, Seq, Subscription, UserId};
use common::{assert_api_error, next_event, uid, TestServer, PATIENCE};
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The next event of the stream that `pick` accepts (others skipped).
async fn next_matching<T>(sub: &mut Subscription, mut pick: impl FnMut(Event) -> Option<T>) -> T {
    loop {
        if let Some(t) = pick(next_event(sub).await) {
            return t;
        }
    }
}

/// Waits for a `Read` event of `user` in `chat` and returns its marker.
async fn next_read(sub: &mut Subscription, chat: chat_client::ChatId, user: UserId) -> Seq {
    next_matching(sub, |e| match e {
        Event::Read {
            chat_id,
            user_id,
            last_read_seq,
        } if chat_id == chat && user_id == user => Some(last_read_seq),
        _ => None,
    })
    .await
}

/// Waits until the subscription is connected (its `ready` arrived).
async fn connected(sub: &mut Subscription) {
    next_matching(sub, |e| matches!(e, Event::Connected).then_some(())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_markers_give_exact_unread_counts_on_every_device() {
    let server = TestServer::start("social_read").await;
    let alice = server.user("alice").await;
    let bob_phone = server.user("bob").await;
    let carol = server.user("carol").await;
    let outsider = server.user("mallory").await;
    let bob_laptop = server.client();
    bob_laptop
        .login("bob@e2e.test", common::PASSWORD)
        .await
        .expect("second device");
    let chat = alice
        .create_chat("reading", &[uid(&bob_phone), uid(&carol)])
        .await
        .expect("create")
        .chat_id;
    let mut phone = bob_phone.subscribe().await.expect("subscribe");
    let mut laptop = bob_laptop.subscribe().await.expect("subscribe");
    let mut alice_sub = alice.subscribe().await.expect("subscribe");
    for s in [&mut phone, &mut laptop, &mut alice_sub] {
        connected(s).await;
    }
    for i in 1..=5 {
        alice.send(chat, &format!("m{i}")).await.expect("send");
    }

    let list = bob_phone.list_chats().await.expect("list");
    let c = list.iter().find(|c| c.chat_id == chat).expect("listed");
    assert_eq!((c.last_read_seq, c.unread_count), (Seq(0), 5));
    assert_eq!(c.kind, ChatKind::Group);
    let last = c.last_message.as_ref().expect("last message");
    assert_eq!((last.seq, last.msg_text.as_str()), (Seq(5), "m5"));
    // The sender's own messages are never unread: sending moved her marker.
    let mine = alice.list_chats().await.expect("list");
    assert_eq!((mine[0].last_read_seq, mine[0].unread_count), (Seq(5), 0));

    // A read on the phone reaches the laptop (and the other members) live.
    assert_eq!(
        bob_phone.mark_read(chat, Seq(3)).await.expect("read"),
        Seq(3)
    );
    assert_eq!(next_read(&mut laptop, chat, uid(&bob_phone)).await, Seq(3));
    assert_eq!(next_read(&mut phone, chat, uid(&bob_phone)).await, Seq(3));
    assert_eq!(
        next_read(&mut alice_sub, chat, uid(&bob_phone)).await,
        Seq(3)
    );
    let unread = |l: Vec<chat_client::ChatSummary>| {
        l.into_iter()
            .find(|c| c.chat_id == chat)
            .map(|c| (c.last_read_seq, c.unread_count))
    };
    assert_eq!(
        unread(bob_laptop.list_chats().await.unwrap()),
        Some((Seq(3), 2))
    );
    // Only forward: a lower seq leaves it.
    assert_eq!(
        bob_phone.mark_read(chat, Seq(2)).await.expect("read"),
        Seq(3)
    );
    assert_api_error(
        bob_phone.mark_read(chat, Seq(6)).await,
        400,
        ErrorCode::InvalidArgument,
    );
    assert_api_error(
        outsider.mark_read(chat, Seq(1)).await,
        403,
        ErrorCode::NotAMember,
    );
    assert_api_error(
        bob_phone
            .mark_read(chat_client::ChatId(9_999_999), Seq(1))
            .await,
        404,
        ErrorCode::NotFound,
    );

    // Tombstones above the marker do not count; below it, they change nothing.
    alice.delete_message(chat, Seq(5)).await.expect("delete");
    assert_eq!(
        unread(bob_phone.list_chats().await.unwrap()),
        Some((Seq(3), 1))
    );
    alice.delete_message(chat, Seq(1)).await.expect("delete");
    alice
        .delete_message(chat, Seq(5))
        .await
        .expect("delete twice");
    assert_eq!(
        unread(bob_phone.list_chats().await.unwrap()),
        Some((Seq(3), 1))
    );
    let list = bob_phone.list_chats().await.unwrap();
    assert!(list[0].last_message.as_ref().is_some_and(|m| m.deleted));

    // Bob answers: his marker moves to his message; Alice now has one unread.
    bob_phone.send(chat, "ok").await.expect("send");
    assert_eq!(
        unread(bob_laptop.list_chats().await.unwrap()),
        Some((Seq(6), 0))
    );
    assert_eq!(unread(alice.list_chats().await.unwrap()), Some((Seq(5), 1)));

    // Receipts: every member, the one who never read at 0 with no time.
    let receipts = carol.receipts(chat).await.expect("receipts");
    let by_user: Vec<(UserId, Seq, bool)> = receipts
        .iter()
        .map(|r| (r.user_id, r.last_read_seq, r.read_at.is_some()))
        .collect();
    let mut want = vec![
        (uid(&alice), Seq(5), true),
        (uid(&bob_phone), Seq(6), true),
        (uid(&carol), Seq(0), false),
    ];
    want.sort();
    assert_eq!(by_user, want);
    assert_api_error(outsider.receipts(chat).await, 403, ErrorCode::NotAMember);

    // The list is ordered by latest activity: a newer chat comes first until the old one
    // speaks again.
    let newer = carol
        .create_chat("newer", &[uid(&bob_phone)])
        .await
        .expect("create")
        .chat_id;
    let order = |l: Vec<chat_client::ChatSummary>| l.iter().map(|c| c.chat_id).collect::<Vec<_>>();
    assert_eq!(
        order(bob_phone.list_chats().await.unwrap()),
        vec![newer, chat]
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    alice.send(chat, "again").await.expect("send");
    assert_eq!(
        order(bob_phone.list_chats().await.unwrap()),
        vec![chat, newer]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn typing_reaches_the_other_members_and_floods_are_throttled() {
    let server = TestServer::start("social_typing").await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let chat = alice
        .create_chat("typing", &[uid(&bob)])
        .await
        .expect("create")
        .chat_id;
    let mut alice_sub = alice.subscribe().await.expect("subscribe");
    let mut bob_sub = bob.subscribe().await.expect("subscribe");
    connected(&mut alice_sub).await;
    connected(&mut bob_sub).await;

    let before = chat_core::ids::now_millis();
    alice_sub.typing(chat);
    let (who, until) = next_matching(&mut bob_sub, |e| match e {
        Event::Typing {
            chat_id,
            user_id,
            until,
        } if chat_id == chat => Some((user_id, until)),
        _ => None,
    })
    .await;
    assert_eq!(who, uid(&alice));
    assert!(until >= before + 4_000, "until is about five seconds ahead");

    // A flood: 50 frames at once; at most one a second goes through. A message sent after the
    // flood marks where to stop counting.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for _ in 0..50 {
        alice_sub.typing(chat);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.send(chat, "done typing").await.expect("send");
    let mut forwarded = 0;
    loop {
        match next_event(&mut bob_sub).await {
            Event::Typing { .. } => forwarded += 1,
            Event::Message(m) if m.msg_text == "done typing" => break,
            _ => {}
        }
    }
    assert_eq!(forwarded, 1, "a flood is throttled, not forwarded");

    // A typing frame for a chat one is not in is answered with the error frame, on a raw
    // socket (the SDK only sends typing for chats it was given).
    let stranger = server.user("mallory").await;
    let url = format!(
        "ws://{}/v1/ws?token={}",
        server.addr(),
        stranger.token().expect("token")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let frame = format!(r#"{{"type":"typing","chat_id":{chat}}}"#);
    ws.send(WsMessage::Text(frame.into())).await.expect("send");
    let error = tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(m)) = ws.next().await {
            if let WsMessage::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
                if v["type"] == "error" {
                    return v;
                }
            }
        }
        panic!("socket closed without an error frame");
    })
    .await
    .expect("error frame in time");
    assert_eq!(error["code"], "not_a_member");
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_follows_connections_with_a_grace_period() {
    let server = TestServer::start_with("social_presence", |c| {
        c.presence_grace = Duration::from_millis(300);
    })
    .await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let stranger = server.user("mallory").await;
    alice
        .create_chat("presence", &[uid(&bob)])
        .await
        .expect("create");
    let mut bob_sub = bob.subscribe().await.expect("subscribe");
    connected(&mut bob_sub).await;
    let state = |e: Event| match e {
        Event::Presence {
            user_id,
            online,
            last_seen,
        } if user_id == uid(&alice) => Some((online, last_seen)),
        _ => None,
    };

    let alice_sub = alice.subscribe().await.expect("subscribe");
    let (online, _) = next_matching(&mut bob_sub, state).await;
    assert!(online, "alice came online");
    let seen = bob
        .presence(&[uid(&alice), uid(&stranger)])
        .await
        .expect("presence");
    assert_eq!(seen.len(), 1, "strangers are left out: {seen:?}");
    assert!(seen[0].online && seen[0].user_id == uid(&alice));
    assert!(stranger
        .presence(&[uid(&alice)])
        .await
        .expect("presence")
        .is_empty());

    drop(alice_sub);
    let (online, last_seen) = next_matching(&mut bob_sub, state).await;
    assert!(!online, "alice went offline after the grace");
    assert!(last_seen.is_some());
    let seen = bob.presence(&[uid(&alice)]).await.expect("presence");
    assert!(!seen[0].online);
    assert_eq!(seen[0].last_seen, last_seen);
}

#[tokio::test(flavor = "multi_thread")]
async fn people_names_roles_and_direct_chats() {
    let server = TestServer::start("social_people").await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;

    // Looking people up: by id for anyone signed in, by exact email in any case; never the
    // email itself.
    let found = carol.find_user("BOB@e2e.test").await.expect("by email");
    assert_eq!(
        (found.user_id, found.display_name.as_str()),
        (uid(&bob), "bob")
    );
    assert_eq!(
        carol.user(uid(&alice)).await.expect("by id").display_name,
        "alice"
    );
    assert_api_error(
        carol.find_user("nobody@e2e.test").await,
        404,
        ErrorCode::NotFound,
    );
    assert_api_error(
        carol.find_user("not an email").await,
        404,
        ErrorCode::NotFound,
    );
    assert_api_error(
        carol.user(UserId(9_999_999)).await,
        404,
        ErrorCode::NotFound,
    );
    let raw: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v1/users/{}", server.url(), uid(&alice)))
        .bearer_auth(carol.token().expect("token"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert!(raw.get("email").is_none(), "{raw}");

    // Display names show wherever a member is listed.
    let me = bob.set_display_name("  Bobby  ").await.expect("rename me");
    assert_eq!(me.display_name, "Bobby");
    assert_api_error(
        bob.set_display_name("   ").await,
        400,
        ErrorCode::InvalidArgument,
    );
    let chat = alice
        .create_chat("team", &[uid(&bob), uid(&carol)])
        .await
        .expect("create");
    let bob_entry = chat
        .members
        .iter()
        .find(|m| m.user_id == uid(&bob))
        .expect("bob");
    assert_eq!(
        (bob_entry.display_name.as_str(), bob_entry.role),
        ("Bobby", Role::Member)
    );
    let chat = chat.chat_id;

    // Renaming: owner or admin; members hear chat_updated.
    let mut carol_sub = carol.subscribe().await.expect("subscribe");
    connected(&mut carol_sub).await;
    assert_api_error(
        bob.rename_chat(chat, "mine").await,
        403,
        ErrorCode::Forbidden,
    );
    let renamed = alice.rename_chat(chat, "the team").await.expect("rename");
    assert_eq!(renamed.chat_name, "the team");
    let heard = next_matching(&mut carol_sub, |e| match e {
        Event::ChatUpdated(c) if c.chat_id == chat => Some(c.chat_name),
        _ => None,
    })
    .await;
    assert_eq!(heard, "the team");
    assert_api_error(
        alice.rename_chat(chat, "").await,
        400,
        ErrorCode::InvalidArgument,
    );

    // Roles: only the owner grants and takes back admin; an admin may then rename and add.
    assert_api_error(
        bob.set_role(chat, uid(&carol), Role::Admin).await,
        403,
        ErrorCode::Forbidden,
    );
    let granted = alice
        .set_role(chat, uid(&bob), Role::Admin)
        .await
        .expect("grant");
    assert_eq!(granted.role, Role::Admin);
    bob.rename_chat(chat, "bob's team")
        .await
        .expect("admin renames");
    assert_api_error(
        bob.set_role(chat, uid(&carol), Role::Admin).await,
        403,
        ErrorCode::Forbidden,
    );
    assert_api_error(
        alice.set_role(chat, uid(&alice), Role::Member).await,
        409,
        ErrorCode::Conflict,
    );
    assert_api_error(
        alice.set_role(chat, uid(&carol), Role::Owner).await,
        400,
        ErrorCode::InvalidArgument,
    );
    let outsider = server.user("mallory").await;
    assert_api_error(
        alice.set_role(chat, uid(&outsider), Role::Admin).await,
        404,
        ErrorCode::NotFound,
    );
    alice
        .set_role(chat, uid(&bob), Role::Member)
        .await
        .expect("take back");
    assert_api_error(
        bob.rename_chat(chat, "again").await,
        403,
        ErrorCode::Forbidden,
    );
    let roles: Vec<(UserId, Role)> = alice
        .chat(chat)
        .await
        .expect("chat")
        .members
        .iter()
        .map(|m| (m.user_id, m.role))
        .collect();
    assert!(
        roles.contains(&(uid(&bob), Role::Member)) && roles.contains(&(uid(&alice), Role::Owner))
    );

    // Direct chats: one per pair, the same for both, even when both ask at the same moment.
    let (a, b) = tokio::join!(
        alice.direct_chat(uid(&carol)),
        carol.direct_chat(uid(&alice))
    );
    let (a, b) = (a.expect("direct"), b.expect("direct"));
    assert_eq!(a.chat_id, b.chat_id, "the same chat for both");
    assert_eq!(a.kind, ChatKind::Direct);
    let again = alice.direct_chat(uid(&carol)).await.expect("again");
    assert_eq!(again.chat_id, a.chat_id);
    let mut members = again.member_ids.clone();
    members.sort();
    let mut want = vec![uid(&alice), uid(&carol)];
    want.sort();
    assert_eq!(members, want);
    assert_api_error(
        alice.add_member(a.chat_id, uid(&bob)).await,
        409,
        ErrorCode::Conflict,
    );
    assert_api_error(
        alice.direct_chat(uid(&alice)).await,
        400,
        ErrorCode::InvalidArgument,
    );
    assert_api_error(
        alice.direct_chat(UserId(9_999_999)).await,
        404,
        ErrorCode::NotFound,
    );
    alice
        .send(a.chat_id, "hi carol")
        .await
        .expect("send in a direct chat");
    let listed = carol.list_chats().await.expect("list");
    assert_eq!(listed[0].chat_id, a.chat_id);
    assert_eq!(
        (listed[0].kind, listed[0].unread_count),
        (ChatKind::Direct, 1)
    );
}
