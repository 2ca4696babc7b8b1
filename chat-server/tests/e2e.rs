//! End to end: the real server on `127.0.0.1` over real stores, driven through the real
//! `chat-client` SDK (and, where the contract itself is the subject, through raw HTTP and
//! WebSocket). Each test checks one promise of the design: live delivery, ordering under
//! concurrency, idempotent sends, delivery across a cut connection and across being offline,
//! durability across a restart, and authorization.
//!
//! The stores come from `CHAT_TEST_METADATA` / `CHAT_TEST_MESSAGES` (default SQLite), see
//! `common::store_urls`.

mod common;

use chat_client::{
    ChatId, Client, ErrorCode, Event, Message, RetryPolicy, SendOptions, Seq, UserId,
};
use common::{assert_api_error, assert_dense, messages_of, next_event, uid, TestServer, PATIENCE};
use futures::StreamExt;
use std::collections::HashMap;
use std::time::Duration;

/// Sends `text` and, once its ack is in, a sentinel; returns the sentinel. A stream that shows
/// the sentinel right after the last expected message has no duplicate or stray message in
/// between, which makes "exactly once" checkable without waiting for silence.
async fn sentinel(client: &Client, chat: ChatId) -> Message {
    client.send(chat, "sentinel").await.expect("sentinel sent")
}

/// Reads the next message of `chat` and checks it is the sentinel.
async fn expect_sentinel(sub: &mut chat_client::Subscription, chat: ChatId, sentinel: &Message) {
    let next = messages_of(sub, chat, 1).await;
    assert_eq!(
        &next[0], sentinel,
        "expected nothing between the last message and the sentinel"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_users_chat_live() {
    let server = TestServer::start("two_users_chat_live").await;
    let a = server.user("alice").await;
    let b = server.user("bob").await;
    let chat = a.create_chat("pair", &[uid(&b)]).await.expect("create");
    assert_eq!(chat.last_seq, Seq::ZERO);
    let mut member_ids = chat.member_ids.clone();
    member_ids.sort();
    let mut want = vec![uid(&a), uid(&b)];
    want.sort();
    assert_eq!(member_ids, want);

    let mut sub_a = a.subscribe().await.expect("subscribe a");
    let mut sub_b = b.subscribe().await.expect("subscribe b");
    let from_a = a
        .send(chat.chat_id, "hello from alice")
        .await
        .expect("send a");
    let from_b = b
        .send(chat.chat_id, "hello from bob")
        .await
        .expect("send b");
    assert_eq!((from_a.seq, from_b.seq), (Seq(1), Seq(2)));
    assert_eq!(from_a.sender_id, uid(&a));
    assert_eq!(from_b.msg_text, "hello from bob");

    let seen_a = messages_of(&mut sub_a, chat.chat_id, 2).await;
    let seen_b = messages_of(&mut sub_b, chat.chat_id, 2).await;
    assert_eq!(seen_a, vec![from_a.clone(), from_b.clone()]);
    assert_eq!(seen_a, seen_b);
    assert_eq!(sub_b.position(chat.chat_id), Some(Seq(2)));
}

#[tokio::test(flavor = "multi_thread")]
async fn five_senders_thousand_messages_one_order_for_everyone() {
    const SENDERS: usize = 5;
    const EACH: usize = 200;
    const TOTAL: usize = SENDERS * EACH;
    let server = TestServer::start("five_senders").await;
    let users = server.users("member", SENDERS).await;
    let others: Vec<UserId> = users[1..].iter().map(uid).collect();
    let chat = users[0]
        .create_chat("five", &others)
        .await
        .expect("create")
        .chat_id;
    let mut subs = Vec::new();
    for u in &users {
        subs.push(u.subscribe().await.expect("subscribe"));
    }

    // Every sender issues all its sends at once; the SDK must still send them one after
    // another, in the order they were made.
    let acks: Vec<Vec<Message>> =
        futures::future::join_all(users.iter().enumerate().map(|(i, u)| async move {
            let sends = (0..EACH).map(|k| async move { u.send(chat, &format!("s{i}-{k}")).await });
            futures::future::join_all(sends)
                .await
                .into_iter()
                .map(|r| r.expect("send"))
                .collect::<Vec<_>>()
        }))
        .await;

    let history = users[0]
        .fetch_all_after(chat, Seq::ZERO)
        .await
        .expect("history");
    assert_eq!(history.len(), TOTAL);
    assert_dense(&history, 1);
    for (i, sender_acks) in acks.iter().enumerate() {
        let mut last = Seq::ZERO;
        for (k, ack) in sender_acks.iter().enumerate() {
            assert_eq!(ack.msg_text, format!("s{i}-{k}"));
            assert!(
                ack.seq > last,
                "sender {i}'s sends were stored out of order"
            );
            last = ack.seq;
            let stored = &history[usize::try_from(ack.seq.get() - 1).expect("seq")];
            assert_eq!(stored, ack, "the ack is what history holds");
        }
    }

    let sentinel = sentinel(&users[0], chat).await;
    for sub in &mut subs {
        let seen = messages_of(sub, chat, TOTAL).await;
        assert_eq!(seen, history, "the live stream equals history");
        expect_sentinel(sub, chat, &sentinel).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retried_send_returns_the_first_copy() {
    let server = TestServer::start("retried_send").await;
    let a = server.user("alice").await;
    let chat = a.create_chat("solo", &[]).await.expect("create").chat_id;
    let options = SendOptions::default()
        .with_client_msg_id("retry-me-1")
        .with_timestamp(1_700_000_000_000);
    let first = a
        .send_with(chat, "once", options.clone())
        .await
        .expect("send");
    let again = a.send_with(chat, "once", options).await.expect("resend");
    assert_eq!(first, again);
    assert_eq!(first.client_msg_id.as_deref(), Some("retry-me-1"));
    assert_eq!(first.timestamp, Some(1_700_000_000_000));

    // The contract itself: the repeat is a 200 with the first message, not a 201.
    let http = reqwest::Client::new();
    let token = a.token().expect("token");
    let body = serde_json::json!({"chat_id": chat, "msg_text": "raw", "client_msg_id": "raw-1"});
    let post = || {
        http.post(format!("{}/v1/send", server.url()))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let r1 = post().await.expect("post");
    assert_eq!(r1.status().as_u16(), 201);
    let m1: Message = r1.json().await.expect("message");
    let r2 = post().await.expect("post again");
    assert_eq!(r2.status().as_u16(), 200);
    let m2: Message = r2.json().await.expect("message");
    assert_eq!(m1, m2);

    let history = a.fetch_all_after(chat, Seq::ZERO).await.expect("history");
    let texts: Vec<&str> = history.iter().map(|m| m.msg_text.as_str()).collect();
    assert_eq!(texts, ["once", "raw"]);
    assert_dense(&history, 1);
}

/// How a test takes the server away under its clients.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Graceful shutdown (WebSockets closed with 1012, requests drained), then a start.
    Restart,
    /// Everything dropped at once, like a killed process, then a start on the same data.
    Crash,
}

/// A subscriber watches a chat while a sender keeps sending through a restart or a crash: the
/// subscriber ends with every message once, in order, and history agrees.
async fn stream_survives(name: &str, cut: Cut) {
    const TOTAL: usize = 300;
    const BEFORE: usize = 100;
    let mut server = TestServer::start(name).await;
    let a = server.user("alice").await;
    let b = server.user("bob").await;
    let chat = a
        .create_chat("busy", &[uid(&b)])
        .await
        .expect("create")
        .chat_id;
    let mut sub = b.subscribe().await.expect("subscribe");
    assert_eq!(next_event(&mut sub).await, Event::Connected);

    // Alice sends BEFORE messages, waits for the go, then sends the rest while the server goes
    // away and comes back: the SDK retries with the same client_msg_id, patiently enough for a
    // slow restart on a loaded machine.
    let (go, wait_for_go) = tokio::sync::oneshot::channel::<()>();
    let sender = {
        let a = Client::builder(&server.url())
            .token(a.token().expect("token"))
            .retry(RetryPolicy::default().with_max_attempts(100))
            .build()
            .expect("client");
        tokio::spawn(async move {
            let mut wait_for_go = Some(wait_for_go);
            for k in 0..TOTAL {
                if k == BEFORE {
                    if let Some(w) = wait_for_go.take() {
                        w.await.expect("go");
                    }
                }
                a.send(chat, &format!("m{k}")).await.expect("send");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    // Bob has seen part of the stream when the server goes away under him.
    let mut seen = messages_of(&mut sub, chat, BEFORE / 2).await;
    go.send(()).expect("sender waiting");
    match cut {
        Cut::Restart => server.restart().await,
        Cut::Crash => server.crash_and_start().await,
    }
    let mut disconnected = false;
    let mut reconnected = false;
    while seen.len() < TOTAL {
        match next_event(&mut sub).await {
            Event::Message(m) => seen.push(m),
            Event::Disconnected { reconnecting, .. } => {
                assert!(reconnecting, "a restart is not the end of the session");
                disconnected = true;
            }
            Event::Connected => reconnected = disconnected,
            other => panic!("unexpected event {other:?}"),
        }
    }
    tokio::time::timeout(PATIENCE, sender)
        .await
        .expect("sender finished")
        .expect("sender task");
    assert!(
        disconnected && reconnected,
        "the connection was cut and restored"
    );
    assert_dense(&seen, 1);
    let texts: Vec<String> = seen.iter().map(|m| m.msg_text.clone()).collect();
    let want: Vec<String> = (0..TOTAL).map(|k| format!("m{k}")).collect();
    assert_eq!(texts, want, "every message once, in the order it was sent");
    let history = b.fetch_all_after(chat, Seq::ZERO).await.expect("history");
    assert_eq!(history, seen, "live and history agree");
    let s = sentinel(&a, chat).await;
    expect_sentinel(&mut sub, chat, &s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_mid_stream_loses_and_repeats_nothing() {
    stream_survives("restart_mid_stream", Cut::Restart).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_mid_stream_loses_and_repeats_nothing() {
    stream_survives("crash_mid_stream", Cut::Crash).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offline_client_resumes_from_its_positions() {
    let server = TestServer::start("offline_client").await;
    let a = server.user("alice").await;
    let b = server.user("bob").await;
    let chat = a
        .create_chat("while you were away", &[uid(&b)])
        .await
        .expect("create")
        .chat_id;
    let mut sub = b.subscribe().await.expect("subscribe");
    for k in 0..10 {
        a.send(chat, &format!("early {k}")).await.expect("send");
    }
    let early = messages_of(&mut sub, chat, 10).await;
    assert_dense(&early, 1);
    let positions = sub.positions();
    assert_eq!(positions.get(&chat), Some(&Seq(10)));
    drop(sub);

    // Offline: 300 messages, and a chat Bob is added to meanwhile.
    for k in 0..300 {
        a.send(chat, &format!("late {k}")).await.expect("send");
    }
    let second = a
        .create_chat("added while away", &[uid(&b)])
        .await
        .expect("create")
        .chat_id;
    a.send(second, "welcome").await.expect("send");

    let mut sub = b.subscribe_from(positions).expect("resubscribe");
    let late = messages_of(&mut sub, chat, 300).await;
    assert_dense(&late, 11);
    assert!(late
        .iter()
        .enumerate()
        .all(|(k, m)| m.msg_text == format!("late {k}")));
    // A chat missing from the saved positions is delivered from its first message.
    let welcome = messages_of(&mut sub, second, 1).await;
    assert_eq!(welcome[0].msg_text, "welcome");
    assert_eq!(welcome[0].seq, Seq(1));
    let s = sentinel(&a, chat).await;
    expect_sentinel(&mut sub, chat, &s).await;
    assert_eq!(sub.position(chat), Some(s.seq));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_every_acked_message() {
    const TOTAL: usize = 500;
    let mut server = TestServer::start("restart_keeps_acks").await;
    let users = server.users("writer", 2).await;
    let chat = users[0]
        .create_chat("durable", &[uid(&users[1])])
        .await
        .expect("create")
        .chat_id;
    let acks: Vec<Message> = futures::future::join_all((0..TOTAL).map(|k| {
        let u = &users[k % 2];
        async move { u.send(chat, &format!("durable {k}")).await }
    }))
    .await
    .into_iter()
    .map(|r| r.expect("acked"))
    .collect();

    server.restart().await;

    // The old session survives the restart too: it is stored, not held in memory.
    let history = users[1]
        .fetch_all_after(chat, Seq::ZERO)
        .await
        .expect("history after restart");
    assert_eq!(history.len(), TOTAL);
    assert_dense(&history, 1);
    let by_seq: HashMap<Seq, &Message> = history.iter().map(|m| (m.seq, m)).collect();
    for ack in &acks {
        assert_eq!(
            by_seq.get(&ack.seq),
            Some(&ack),
            "acked message kept as acked"
        );
    }
    let after = users[0]
        .send(chat, "after")
        .await
        .expect("send after restart");
    assert_eq!(after.seq, Seq(TOTAL as i64 + 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn members_only_and_logout_revokes_everything() {
    let server = TestServer::start("authorization").await;
    let a = server.user("alice").await;
    let b = server.user("bob").await;
    let c = server.user("carol").await;
    let private = a
        .create_chat("alice and bob", &[uid(&b)])
        .await
        .expect("create")
        .chat_id;
    let carols = c
        .create_chat("carol's own", &[])
        .await
        .expect("create")
        .chat_id;
    a.send(private, "secret").await.expect("send");

    // A non-member can neither read, nor write, nor look at the chat.
    assert_api_error(
        c.fetch(private, chat_client::FetchOptions::latest(10))
            .await,
        403,
        ErrorCode::NotAMember,
    );
    assert_api_error(
        c.fetch(private, chat_client::FetchOptions::after_seq(Seq::ZERO))
            .await,
        403,
        ErrorCode::NotAMember,
    );
    assert_api_error(
        c.send(private, "let me in").await,
        403,
        ErrorCode::NotAMember,
    );
    let err = c.chat(private).await.expect_err("non-member reads a chat");
    assert!(matches!(err.status(), Some(403 | 404)), "{err:?}");
    // Each user's list holds exactly their own chats.
    let ids = |list: Vec<chat_client::ChatSummary>| {
        let mut v: Vec<ChatId> = list.into_iter().map(|s| s.chat_id).collect();
        v.sort();
        v
    };
    assert_eq!(ids(c.list_chats().await.expect("list")), vec![carols]);
    assert_eq!(ids(a.list_chats().await.expect("list")), vec![private]);
    assert_api_error(
        b.fetch(carols, chat_client::FetchOptions::latest(10)).await,
        403,
        ErrorCode::NotAMember,
    );

    // Carol subscribes: nothing of the private chat reaches her until she is added.
    let mut sub = c.subscribe().await.expect("subscribe");
    a.send(private, "still secret").await.expect("send");
    c.send(carols, "note to self").await.expect("send");
    let mine = messages_of(&mut sub, carols, 1).await;
    assert_eq!(mine[0].msg_text, "note to self");
    a.add_member(private, uid(&c)).await.expect("add carol");
    loop {
        match next_event(&mut sub).await {
            Event::ChatUpdated(chat) if chat.chat_id == private => {
                assert!(chat.member_ids.contains(&uid(&c)));
                break;
            }
            Event::Message(m) => assert_ne!(m.chat_id, private, "leaked before being added"),
            _ => {}
        }
    }
    // Now a member, she gets the chat (from its first message, as the SDK documents).
    let joined = messages_of(&mut sub, private, 2).await;
    assert_dense(&joined, 1);
    c.fetch(private, chat_client::FetchOptions::latest(10))
        .await
        .expect("a member reads");

    // A raw WebSocket opened with the token, to see the server close it on logout.
    let token = c.token().expect("token");
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/v1/ws",
            server.addr()
        ))
        .expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let (mut raw, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("raw websocket");
    let first = tokio::time::timeout(PATIENCE, raw.next())
        .await
        .expect("ready in time")
        .expect("a frame")
        .expect("ok frame");
    assert!(first.to_text().expect("text").contains("\"ready\""));

    c.logout().await.expect("logout");
    assert!(c.token().is_none());

    // The subscription ends: the session is gone, reconnecting cannot help.
    loop {
        match tokio::time::timeout(PATIENCE, sub.next())
            .await
            .expect("subscription ends in time")
        {
            Some(Event::Disconnected {
                reconnecting: false,
                ..
            }) => break,
            Some(_) => {}
            None => panic!("the stream ended without saying why"),
        }
    }
    assert_eq!(
        tokio::time::timeout(PATIENCE, sub.next())
            .await
            .expect("end"),
        None
    );
    // The raw socket is closed by the server.
    loop {
        match tokio::time::timeout(PATIENCE, raw.next())
            .await
            .expect("closed in time")
        {
            None | Some(Err(_)) => break,
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) => break,
            Some(Ok(_)) => {}
        }
    }
    // The old token works nowhere.
    let stale = Client::with_token(&server.url(), token.clone()).expect("client");
    assert_api_error(stale.list_chats().await, 401, ErrorCode::Unauthenticated);
    assert_api_error(stale.me().await, 401, ErrorCode::Unauthenticated);
    assert_api_error(
        stale.send(carols, "ghost").await,
        401,
        ErrorCode::Unauthenticated,
    );
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/v1/ws",
            server.addr()
        ))
        .expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!(
            "a revoked token opened a WebSocket: {:?}",
            other.map(|_| ())
        ),
    }
    // Everyone else is unaffected.
    a.send(private, "carol left")
        .await
        .expect("alice still sends");
}

/// Live delivery is in `seq` order on every connection, not only in history: six senders at
/// once (half over REST, half over WebSocket `send` frames) into one chat, and two raw
/// WebSocket subscribers that must see every `message` frame exactly once, each `seq` right
/// after the previous one (no SDK in between to reorder or fill holes).
#[tokio::test(flavor = "multi_thread")]
async fn live_frames_arrive_in_seq_order_under_concurrent_senders() {
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    // Six at once: on MySQL one chat's appends queue on its `chat_seq` row lock while holding
    // pool connections, and many more senders only measure that queue (their retries run
    // out); six is enough to reorder publishes on every backend.
    const SENDERS: usize = 6;
    const EACH: usize = 60;
    let server = TestServer::start("live_frames_in_order").await;
    let senders = server.users("live_order", SENDERS).await;
    let readers = server.users("live_reader", 2).await;
    let members: Vec<UserId> = senders.iter().chain(&readers).map(uid).collect();
    let chat = senders[0]
        .create_chat("order", &members)
        .await
        .expect("chat")
        .chat_id;
    let ws_url = |c: &Client| {
        format!(
            "ws://{}/v1/ws?token={}",
            server.addr(),
            c.token().expect("token")
        )
    };
    // Each reader collects the seqs of the chat's message frames, in arrival order.
    let total = SENDERS * EACH;
    let mut reader_tasks = Vec::new();
    for r in &readers {
        let mut ws = connect_ws(&ws_url(r)).await;
        // The ready frame first: from here on everything is live.
        let ready = ws.next().await.expect("ready").expect("ready frame");
        assert!(ready.to_text().unwrap_or("").contains("\"ready\""));
        reader_tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            // Reset by message frames only: the server's pings must not keep a reader that
            // lost a message waiting forever.
            let mut deadline = tokio::time::Instant::now() + PATIENCE;
            while seqs.len() < total {
                let msg = tokio::time::timeout_at(deadline, ws.next())
                    .await
                    .unwrap_or_else(|_| panic!("a reader waited too long after {seqs:?}"))
                    .expect("reader socket ended")
                    .expect("reader socket failed");
                if let WsMessage::Text(t) = msg {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
                    if v["type"] == "message" {
                        seqs.push(v["message"]["seq"].as_i64().expect("seq"));
                        deadline = tokio::time::Instant::now() + PATIENCE;
                    }
                }
            }
            seqs
        }));
    }
    // Every socket is open before anyone sends.
    let mut ws_senders = Vec::new();
    for (i, s) in senders.iter().enumerate() {
        if i % 2 == 1 {
            ws_senders.push((i, connect_ws(&ws_url(s)).await));
        }
    }
    let mut send_tasks = Vec::new();
    for (i, s) in senders.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let s = s.clone();
        send_tasks.push(tokio::spawn(async move {
            for k in 0..EACH {
                s.send(chat, &format!("rest {i}/{k}")).await.expect("send");
            }
        }));
    }
    for (i, mut ws) in ws_senders {
        send_tasks.push(tokio::spawn(async move {
            use futures::SinkExt;
            let frame = |k: usize| {
                let f = serde_json::json!({
                    "type": "send", "chat_id": chat,
                    "msg_text": format!("ws {i}/{k}"), "client_msg_id": format!("{i}-{k}"),
                });
                WsMessage::Text(f.to_string().into())
            };
            // One send at a time, each waiting for its ack (the live copies of others'
            // messages arrive on this socket too). A send the server could not take now
            // (`unavailable`, `rate_limited`) is sent again with the same client_msg_id, as a
            // client does.
            for k in 0..EACH {
                ws.send(frame(k)).await.expect("send frame");
                let deadline = tokio::time::Instant::now() + PATIENCE;
                loop {
                    let msg = tokio::time::timeout_at(deadline, ws.next())
                        .await
                        .expect("no ack in time")
                        .expect("sender socket ended")
                        .expect("sender socket failed");
                    let WsMessage::Text(t) = msg else { continue };
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
                    match v["type"].as_str() {
                        Some("ack") => break,
                        Some("error")
                            if matches!(
                                v["code"].as_str(),
                                Some("unavailable" | "rate_limited")
                            ) =>
                        {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            ws.send(frame(k)).await.expect("resend frame");
                        }
                        Some("error") => panic!("a send failed: {v}"),
                        _ => {}
                    }
                }
            }
        }));
    }
    for t in send_tasks {
        t.await.expect("sender");
    }
    for t in reader_tasks {
        let seqs = t.await.expect("reader");
        let out_of_order = seqs.windows(2).filter(|w| w[1] != w[0] + 1).count();
        assert_eq!(
            out_of_order, 0,
            "{out_of_order} of {total} live frames did not follow their predecessor: {seqs:?}"
        );
        assert_eq!(seqs.first(), Some(&1));
        assert_eq!(seqs.last(), Some(&(total as i64)));
    }
}

/// A raw WebSocket to `url`, retrying while the server answers the upgrade with an error (a
/// store that is briefly saturated answers 503, and clients try again).
async fn connect_ws(
    url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => return ws,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "no WebSocket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
