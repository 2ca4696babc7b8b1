//! The flush delay (`Config::ws_flush_delay`, `ws::flush`), through the real server and the
//! real `chat-client` SDK: fanned-out frames held to share a socket write all arrive, once and
//! in order; a frame to a connection that has not written lately is not held; frames that
//! follow one closely wait until a batch is full (or the delay has passed).
//!
//! The hub paces only fan-outs to at least 32 local connections, so each test has 32
//! subscribed members and a sender who sends over REST without a subscription.

mod common;

use chat_client::{ChatId, Client, Event, Message, Subscription};
use common::{assert_dense, messages_of, uid, TestServer, PATIENCE};
use futures::StreamExt as _;
use std::time::Duration;

/// Subscribed members: the hub's `PACED_FANOUT_MIN`.
const SUBSCRIBERS: usize = 32;

/// A chat of a sender and [`SUBSCRIBERS`] members, each member subscribed.
async fn room(server: &TestServer) -> (Client, ChatId, Vec<Subscription>) {
    let sender = server.user("sender").await;
    let members = server.users("member", SUBSCRIBERS).await;
    let ids: Vec<_> = members.iter().map(uid).collect();
    let chat = sender.create_chat("big room", &ids).await.expect("create");
    let mut subs = Vec::with_capacity(SUBSCRIBERS);
    for m in &members {
        subs.push(m.subscribe().await.expect("subscribe"));
    }
    (sender, chat.chat_id, subs)
}

/// The next message of `chat` within `wait`, skipping other events (presence); `None` if none
/// came.
async fn message_within(sub: &mut Subscription, chat: ChatId, wait: Duration) -> Option<Message> {
    tokio::time::timeout(wait, async {
        loop {
            match sub.next().await {
                Some(Event::Message(m)) if m.chat_id == chat => return m,
                Some(_) => continue,
                None => panic!("the subscription ended"),
            }
        }
    })
    .await
    .ok()
}

/// A counter of the server's `GET /metrics`.
async fn metric(server: &TestServer, name: &str) -> f64 {
    server
        .metrics_text()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread")]
async fn held_frames_all_arrive_in_order_in_fewer_writes() {
    let server = TestServer::start_with("held_frames_all_arrive", |c| {
        c.ws_flush_delay = Duration::from_millis(200);
        c.ws_flush_batch = 4;
    })
    .await;
    let (sender, chat, mut subs) = room(&server).await;
    let writes_before = metric(&server, "chat_ws_writes_total").await;
    let deliveries_before = metric(&server, "chat_deliveries_total").await;

    let mut sent = Vec::new();
    for i in 0..40 {
        sent.push(sender.send(chat, &format!("m{i}")).await.expect("send"));
    }
    let last = sender.send(chat, "sentinel").await.expect("sentinel");
    for sub in &mut subs {
        let got = messages_of(sub, chat, sent.len() + 1).await;
        assert_dense(&got, 1);
        assert_eq!(got[..sent.len()], sent[..], "every message, in order");
        assert_eq!(
            got[sent.len()],
            last,
            "nothing between the last and the sentinel"
        );
    }

    // Sends a few ms apart land within the 200 ms of each other, so most frames were held
    // and shared a write with others.
    let writes = metric(&server, "chat_ws_writes_total").await - writes_before;
    let deliveries = metric(&server, "chat_deliveries_total").await - deliveries_before;
    assert!(
        writes < deliveries,
        "{deliveries} frames went out in {writes} socket writes: none was coalesced"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lone_frame_leaves_at_once_and_close_followers_wait_for_a_batch() {
    // A delay far longer than any delivery takes here, so "held" and "not held" are told apart
    // by whether a frame comes before the delay could have passed.
    let delay = Duration::from_secs(3);
    let server = TestServer::start_with("lone_frame_not_held", |c| {
        c.ws_flush_delay = delay;
        c.ws_flush_batch = 3;
    })
    .await;
    let (sender, chat, mut subs) = room(&server).await;
    // Presence frames went out while the members connected; after the delay nobody has
    // written lately.
    tokio::time::sleep(delay + Duration::from_millis(500)).await;

    // Idle connections: the frame is not held.
    let first = sender.send(chat, "lone").await.expect("send");
    for sub in &mut subs {
        let got = message_within(sub, chat, delay / 2).await;
        assert_eq!(
            got.as_ref(),
            Some(&first),
            "a lone frame is written at once"
        );
    }

    // Every connection has just written: the next two are held (fewer than a batch of 3)...
    let second = sender.send(chat, "held 1").await.expect("send");
    let third = sender.send(chat, "held 2").await.expect("send");
    let got = message_within(&mut subs[0], chat, Duration::from_millis(300)).await;
    assert_eq!(
        got, None,
        "frames right after a write wait for a batch or the delay"
    );

    // ...until the third makes a batch, which goes out before the delay has passed.
    let fourth = sender.send(chat, "batch full").await.expect("send");
    for sub in &mut subs {
        let mut got = Vec::new();
        for _ in 0..3 {
            let m = message_within(sub, chat, delay / 2).await;
            got.push(m.expect("the full batch is written without waiting out the delay"));
        }
        assert_eq!(got, vec![second.clone(), third.clone(), fourth.clone()]);
    }

    // A held frame that no batch completes still arrives once the delay has passed.
    let fifth = sender
        .send(chat, "waits out the delay")
        .await
        .expect("send");
    for sub in &mut subs {
        let got = message_within(sub, chat, PATIENCE).await;
        assert_eq!(got.as_ref(), Some(&fifth));
    }
}
