//! The SDK's send queue and resuming streams, against the real server: sends go over the
//! subscription's WebSocket when one is up and over REST otherwise, a queued message shows at
//! once and is marked when its ack comes, failures wait for the application without holding
//! up the chat, the queue survives a restart of the application, and a new subscription
//! continues where the last one ended (in the same process and, with a state directory, in the
//! next one).

mod common;

use chat_client::{
    ChatId, Client, ErrorCode, Event, Message, Outgoing, RetryPolicy, SendOptions, SendState, Seq,
};
use common::{assert_dense, messages_of, next_event, uid, TestServer, PATIENCE};
use std::time::Duration;

/// How many `POST /v1/send` the server has answered, from its Prometheus metrics.
async fn rest_sends(server: &TestServer) -> u64 {
    server
        .metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("chat_http_request_duration_seconds_count"))
        .filter(|l| l.contains("/v1/send\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits until the subscription says it is connected.
async fn connected(sub: &mut chat_client::Subscription) {
    loop {
        if let Event::Connected = next_event(sub).await {
            return;
        }
    }
}

/// Waits for the queue's next event for one message in a given state kind.
async fn sent_event(events: &mut tokio::sync::broadcast::Receiver<Outgoing>) -> Outgoing {
    loop {
        let ev = tokio::time::timeout(PATIENCE, events.recv())
            .await
            .expect("a queue event in time")
            .expect("queue events flow");
        if !matches!(ev.state, SendState::Pending) {
            return ev;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sends_use_the_websocket_while_subscribed_and_rest_without_one() {
    let server = TestServer::start("sdk_sends_ws_or_rest").await;
    let a = server.user("ws-alice").await;
    let b = server.user("ws-bob").await;
    let chat = a.create_chat("pair", &[uid(&b)]).await.expect("create");
    let id = chat.chat_id;

    // No stream: REST.
    let before = rest_sends(&server).await;
    for i in 1..=3 {
        let m = a.send(id, &format!("rest {i}")).await.expect("send");
        assert_eq!(m.seq, Seq(i));
    }
    assert_eq!(rest_sends(&server).await - before, 3, "three REST sends");

    // A connected stream: the WebSocket, many in flight across calls, order kept.
    let mut sub_a = a.subscribe().await.expect("subscribe");
    connected(&mut sub_a).await;
    let mut sub_b = b.subscribe().await.expect("subscribe b");
    connected(&mut sub_b).await;
    let before = rest_sends(&server).await;
    let sends = (0..40).map(|i| {
        let a = a.clone();
        async move { a.send(id, &format!("ws {i}")).await }
    });
    let acked: Vec<Message> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.expect("ws send"))
        .collect();
    assert_eq!(
        rest_sends(&server).await,
        before,
        "no REST send while the socket is up"
    );
    // Calls of one chat are served in the order they were made.
    for (i, m) in acked.iter().enumerate() {
        assert_eq!(m.msg_text, format!("ws {i}"));
        assert_eq!(m.seq, Seq(4 + i as i64));
    }
    // b's stream started from now (seq 3): the forty arrive live, in order.
    let live = messages_of(&mut sub_b, id, 40).await;
    assert_dense(&live, 4);

    // A refusal over the socket is the same typed error as over REST.
    let bobs = b.create_chat("bob only", &[]).await.expect("create");
    let err = a
        .send(bobs.chat_id, "not mine")
        .await
        .expect_err("not a member");
    assert_eq!(err.code(), Some(&ErrorCode::NotAMember), "{err}");
    let err = a
        .send(ChatId(id.get() + 1_000_000), "nowhere")
        .await
        .expect_err("no such chat");
    assert_eq!(err.code(), Some(&ErrorCode::NotFound), "{err}");
    assert_eq!(
        rest_sends(&server).await,
        before,
        "refused over the socket too"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_messages_echo_at_once_and_failures_wait_for_the_app() {
    let server = TestServer::start("sdk_outbox_echo").await;
    let a = server.user("q-alice").await;
    let chat = a.create_chat("queue", &[]).await.expect("create");
    let mut events = a.outbox_events();

    let mut queued = Vec::new();
    for i in 0..30 {
        let out = a
            .enqueue(chat.chat_id, &format!("q {i}"), SendOptions::default())
            .expect("enqueue");
        assert_eq!(out.state, SendState::Pending, "the local echo is pending");
        assert_eq!(out.text, format!("q {i}"));
        queued.push(out.client_msg_id);
    }
    // One for a chat the user is not in, in the middle of the queue of another chat.
    let stranger = server.user("q-stranger").await;
    let theirs = stranger.create_chat("theirs", &[]).await.expect("create");
    let bad = a
        .enqueue(theirs.chat_id, "refused", SendOptions::default())
        .expect("enqueue");

    let mut sent = Vec::new();
    let mut failed = None;
    while sent.len() < 30 || failed.is_none() {
        let ev = sent_event(&mut events).await;
        match ev.state {
            SendState::Sent(m) => {
                assert_eq!(m.client_msg_id.as_deref(), Some(ev.client_msg_id.as_str()));
                sent.push(*m);
            }
            SendState::Failed { code, .. } => {
                assert_eq!(ev.client_msg_id, bad.client_msg_id);
                assert_eq!(code, Some(ErrorCode::NotAMember));
                failed = Some(ev.client_msg_id);
            }
            _ => unreachable!("pending events are skipped"),
        }
    }
    assert_dense(&sent, 1);
    let ids: Vec<String> = sent
        .iter()
        .filter_map(|m| m.client_msg_id.clone())
        .collect();
    assert_eq!(ids, queued, "stored in the order queued");

    // The failure stays visible until the app acts on it.
    let left = a.outbox_messages();
    assert_eq!(left.len(), 1);
    assert!(matches!(left[0].state, SendState::Failed { .. }));
    assert!(a.retry_send(&bad.client_msg_id).expect("retry"));
    let again = sent_event(&mut events).await;
    assert!(
        matches!(again.state, SendState::Failed { .. }),
        "refused again"
    );
    assert!(a.discard_send(&bad.client_msg_id));
    assert!(a.outbox_messages().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_queue_survives_a_restart_of_the_app_and_sends_each_message_once() {
    let mut server = TestServer::start("sdk_outbox_restart").await;
    let a = server.user("r-alice").await;
    let chat = a.create_chat("durable", &[]).await.expect("create");
    let id = chat.chat_id;
    let token = a.token().expect("token");
    let dir = tempfile::tempdir().expect("state dir");

    // The "app" queues five messages while the server is down, then exits.
    server.stop().await;
    let url = server.url();
    let state = dir.path().to_path_buf();
    let token_1 = token.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let app = Client::builder(&url)
                .token(token_1)
                .retry(RetryPolicy::new(
                    1_000,
                    Duration::from_millis(50),
                    Duration::from_millis(100),
                ))
                .state_dir(&state)
                .build()
                .expect("client");
            for i in 0..5 {
                app.enqueue(id, &format!("offline {i}"), SendOptions::default())
                    .expect("enqueue");
            }
            assert_eq!(app.outbox_messages().len(), 5);
            tokio::time::sleep(Duration::from_millis(300)).await;
        });
        // Dropping the runtime ends the app, its sending tasks included.
    })
    .join()
    .expect("first run");

    // The next run finds them and sends them once the server is back.
    server.restart().await;
    let app = Client::builder(&server.url())
        .token(token)
        .state_dir(dir.path())
        .build()
        .expect("client");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !app.outbox_messages().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "queue not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = app
        .fetch(id, chat_client::FetchOptions::latest(50))
        .await
        .expect("fetch");
    let texts: Vec<&str> = page.messages.iter().map(|m| m.msg_text.as_str()).collect();
    assert_eq!(
        texts,
        vec![
            "offline 0",
            "offline 1",
            "offline 2",
            "offline 3",
            "offline 4"
        ],
        "each once, in order"
    );
    // And the file says so: a third run has nothing to send.
    let third = Client::builder(&server.url())
        .state_dir(dir.path())
        .build()
        .expect("client");
    assert!(third.outbox_messages().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_subscription_resumes_where_the_last_one_ended() {
    let server = TestServer::start("sdk_resume_default").await;
    let a = server.user("res-alice").await;
    let b = server.user("res-bob").await;
    let chat = a.create_chat("resume", &[uid(&b)]).await.expect("create");
    let id = chat.chat_id;
    let dir = tempfile::tempdir().expect("state dir");
    let reader = Client::builder(&server.url())
        .token(b.token().expect("token"))
        .state_dir(dir.path())
        .build()
        .expect("client");

    let mut sub = reader.subscribe().await.expect("subscribe");
    connected(&mut sub).await;
    for i in 1..=3 {
        a.send(id, &format!("first {i}")).await.expect("send");
    }
    assert_dense(&messages_of(&mut sub, id, 3).await, 1);
    drop(sub);

    // Sent while nobody listens.
    for i in 4..=6 {
        a.send(id, &format!("away {i}")).await.expect("send");
    }
    let mut sub = reader.subscribe().await.expect("subscribe again");
    assert_dense(&messages_of(&mut sub, id, 3).await, 4);
    drop(sub);

    // A new process (a new client on the same directory) continues from there too.
    for i in 7..=8 {
        a.send(id, &format!("later {i}")).await.expect("send");
    }
    let next_run = Client::builder(&server.url())
        .token(b.token().expect("token"))
        .state_dir(dir.path())
        .build()
        .expect("client");
    assert_eq!(
        next_run.saved_positions().get(&id).map(|p| p.seq),
        Some(Seq(6))
    );
    let mut sub = next_run
        .subscribe()
        .await
        .expect("subscribe in the next run");
    assert_dense(&messages_of(&mut sub, id, 2).await, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn sends_in_flight_on_a_socket_that_dies_are_resent_once_over_rest() {
    let mut server = TestServer::start("sdk_ws_send_crash").await;
    let a = server.user("crash-alice").await;
    let chat = a.create_chat("crash", &[]).await.expect("create");
    let id = chat.chat_id;
    let mut sub = a.subscribe().await.expect("subscribe");
    connected(&mut sub).await;

    // Sends racing a crash of the server.
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..200 {
                acked.push(
                    a.send(id, &format!("m {i}"))
                        .await
                        .expect("acked despite the crash"),
                );
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    server.crash_and_start().await;
    let acked = tokio::time::timeout(PATIENCE, sender)
        .await
        .expect("sends finish")
        .expect("sender task");
    assert_dense(&acked, 1);
    let all = a.fetch_all_after(id, Seq::ZERO).await.expect("history");
    let texts: Vec<String> = all.iter().map(|m| m.msg_text.clone()).collect();
    let want: Vec<String> = (0..200).map(|i| format!("m {i}")).collect();
    assert_eq!(texts, want, "every message once, in order");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chat_subscription_sees_its_chat_only_and_resumes_too() {
    let server = TestServer::start("sdk_subscribe_chat").await;
    let a = server.user("one-alice").await;
    let b = server.user("one-bob").await;
    let wanted = a
        .create_chat("wanted", &[uid(&b)])
        .await
        .expect("create")
        .chat_id;
    let other = a
        .create_chat("other", &[uid(&b)])
        .await
        .expect("create")
        .chat_id;
    a.send(wanted, "before").await.expect("send");

    let mut sub = b
        .subscribe_chat(wanted)
        .await
        .expect("subscribe to one chat");
    connected(&mut sub).await;
    for i in 0..3 {
        a.send(other, &format!("elsewhere {i}"))
            .await
            .expect("send");
        a.send(wanted, &format!("here {i}")).await.expect("send");
    }
    // Only the wanted chat's messages, from after the subscription started, in order; a
    // message of the other chat would fail `messages_of`'s count or the seq check.
    let mut got = Vec::new();
    while got.len() < 3 {
        match next_event(&mut sub).await {
            Event::Message(m) => got.push(m),
            Event::ChatUpdated(c) => assert_eq!(c.chat_id, wanted),
            _ => {}
        }
    }
    assert!(got.iter().all(|m| m.chat_id == wanted), "{got:?}");
    assert_dense(&got, 2);
    drop(sub);

    a.send(wanted, "while away").await.expect("send");
    let mut sub = b.subscribe_chat(wanted).await.expect("again");
    let back = messages_of(&mut sub, wanted, 1).await;
    assert_eq!(
        (back[0].seq, back[0].msg_text.as_str()),
        (Seq(5), "while away")
    );
}
