//! Multi-process cluster tests: real `chat-server` processes (the built binary) sharing one
//! MariaDB database, Redis as broker and cache, nginx in front, each test with its own Redis,
//! nginx, nodes and database (so they run in parallel with everything else).
//!
//! Needs `CHAT_TEST_MYSQL_URL` (`scripts/mariadb.sh start && eval "$(scripts/mariadb.sh env)"`),
//! `redis-server` and `nginx` on the PATH (`scripts/redis.sh install`, `scripts/nginx.sh
//! install`). Run: `cargo test -p chat-server --all-features --test cluster`.

#![cfg(all(feature = "redis", feature = "mysql"))]

mod cluster_common;

use chat_client::{ChatId, Client, ErrorCode, Event, FetchOptions, Message};
use chat_core::{Broker, BrokerEvent, Seq, Topic, UserId};
use chat_server::broker::redis::RedisBroker;
use cluster_common::*;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The cache's in-process TTL the tests run with: the documented default bound.
const LOCAL_TTL_MS: u64 = 2000;

/// Waits for the subscription's `Connected` event.
async fn connected(sub: &mut chat_client::Subscription, who: &str) {
    loop {
        let ev = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .unwrap_or_else(|_| panic!("{who}: never connected"))
            .unwrap_or_else(|| panic!("{who}: subscription ended"));
        if ev == Event::Connected {
            return;
        }
    }
}

/// Sends `per_sender` messages from each sender concurrently (each sender in order), and
/// calls `fault` once `fault_after` sends in total were acknowledged. Returns every
/// acknowledged message. Every send must succeed: the SDK retries with the same
/// `client_msg_id` across whatever the fault does.
async fn stream_with_fault<F, Fut>(
    senders: &[Client],
    chat: ChatId,
    per_sender: usize,
    fault_after: usize,
    fault: F,
) -> Vec<Message>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let acked = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = senders
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let c = c.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for k in 0..per_sender {
                    let text = format!("s{i}-{k}");
                    let m = c
                        .send(chat, &text)
                        .await
                        .unwrap_or_else(|e| panic!("send {text} failed: {e}"));
                    assert_eq!(m.msg_text, text);
                    out.push(m);
                    acked.fetch_add(1, Ordering::SeqCst);
                    // Spread the stream over time so the fault lands in its middle.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                out
            })
        })
        .collect();
    let deadline = Instant::now() + PATIENCE;
    while acked.load(Ordering::SeqCst) < fault_after {
        assert!(
            Instant::now() < deadline,
            "the stream never reached the fault"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fault().await;
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("sender task"));
    }
    all
}

/// Checks one client's history against what was acknowledged: dense `1..=n`, in order, none
/// twice, and every acknowledged message present with its text.
fn check_history(history: &[Message], acked: &[Message], who: &str) {
    assert_dense(history, acked.len(), who);
    let by_seq: BTreeMap<i64, &str> = history
        .iter()
        .map(|m| (m.seq.0, m.msg_text.as_str()))
        .collect();
    for a in acked {
        assert_eq!(
            by_seq.get(&a.seq.0).copied(),
            Some(a.msg_text.as_str()),
            "{who}: acknowledged message {} missing or different",
            a.seq
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_on_different_nodes_and_through_nginx_chat_in_one_group() {
    let cluster = Cluster::start(3, LOCAL_TTL_MS).await;
    let [n1, n2, n3] = [0, 1, 2].map(|i| cluster.nodes[i].url());
    let lb = cluster.nginx.url();
    // Each registers and logs in through its own entry point.
    let a = user(&n1, "a").await;
    let b = user(&n2, "b").await;
    let c = user(&n3, "c").await;
    let d = user(&lb, "d").await;
    let ids: Vec<UserId> = [&b, &c, &d].iter().map(|x| x.user_id().unwrap()).collect();
    let chat = a.create_chat("everyone", &ids).await.unwrap().chat_id;

    let mut subs = Vec::new();
    for (who, cl) in [("a", &a), ("b", &b), ("c", &c), ("d", &d)] {
        let mut s = cl.subscribe().await.unwrap();
        connected(&mut s, who).await;
        subs.push((who, s));
    }

    // Only nodes with a member connected subscribe to a chat's channel: chat 2 has members on
    // n1 and n2 only.
    let pair = a
        .create_chat("pair", &[b.user_id().unwrap()])
        .await
        .unwrap()
        .chat_id;
    let channel = format!("chat:chat:{pair}");
    let deadline = Instant::now() + PATIENCE;
    while cluster.redis.subscribers(&channel).await != 2 {
        assert!(
            Instant::now() < deadline,
            "{channel} never had 2 subscribers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let senders = [a.clone(), b.clone(), c.clone(), d.clone()];
    let acked = stream_with_fault(&senders, chat, 15, 0, || async {}).await;
    assert_eq!(acked.len(), 60);
    let mut histories = Vec::new();
    for (who, s) in &mut subs {
        let h = messages(s, chat, 60, who).await;
        check_history(&h, &acked, who);
        histories.push(h);
    }
    assert!(
        histories.windows(2).all(|w| w[0] == w[1]),
        "every member holds the same history"
    );
    // Still exactly the two nodes with members of the pair, after all that traffic.
    assert_eq!(cluster.redis.subscribers(&channel).await, 2);

    for node in &cluster.nodes {
        let (status, h) = node.health().await;
        assert_eq!(status, 200, "{h}");
        assert_eq!(h["node_id"], node.name.as_str());
        assert_eq!(h["broker"], "ok");
        assert_eq!(h["cache"], "ok");
        assert_eq!(h["storage"]["metadata"], "ok");
    }
}

/// What happens to one node in the middle of the stream.
#[derive(Clone, Copy, Debug)]
enum NodeFault {
    /// `kill -9`.
    Kill,
    /// SIGTERM: graceful drain, WebSockets closed with 1012.
    Terminate,
}

/// Four users connected through nginx, three of them sending; one node (the one holding the
/// most WebSockets) fails mid-stream. At the end every client holds the same dense history.
async fn node_fails_mid_stream(fault: NodeFault) {
    let mut cluster = Cluster::start(3, LOCAL_TTL_MS).await;
    let lb = cluster.nginx.url();
    let owner = user(&lb, "owner").await;
    let mut others = Vec::new();
    for i in 0..3 {
        others.push(user(&lb, &format!("u{i}")).await);
    }
    let ids: Vec<UserId> = others
        .iter()
        .map(|c| c.user_id().expect("logged in"))
        .collect();
    let chat = owner
        .create_chat("stream", &ids)
        .await
        .expect("create chat")
        .chat_id;
    let mut subs = Vec::new();
    for (i, cl) in std::iter::once(&owner).chain(others.iter()).enumerate() {
        let who = format!("client{i}");
        let mut s = cl.subscribe().await.expect("subscribe");
        connected(&mut s, &who).await;
        subs.push((who, s));
    }
    // The victim is the node holding the most of these WebSockets.
    let mut counts = Vec::new();
    for n in &cluster.nodes {
        counts.push(n.ws_connections().await);
    }
    let victim = (0..counts.len()).max_by_key(|&i| counts[i]).expect("nodes");
    assert!(counts[victim] > 0, "no node holds a WebSocket: {counts:?}");

    let per_sender = 40;
    let victim_node = &mut cluster.nodes[victim];
    let acked = stream_with_fault(&others, chat, per_sender, per_sender, || async {
        match fault {
            NodeFault::Kill => victim_node.kill9(),
            NodeFault::Terminate => victim_node.terminate(),
        }
    })
    .await;
    assert_eq!(acked.len(), 3 * per_sender);
    let mut histories = Vec::new();
    for (who, s) in &mut subs {
        let h = messages(s, chat, acked.len(), who).await;
        check_history(&h, &acked, who);
        histories.push(h);
    }
    assert!(histories.windows(2).all(|w| w[0] == w[1]));
    // And the history itself, read back through nginx, is the same.
    let stored = owner
        .fetch_all_after(chat, Seq(0))
        .await
        .expect("fetch history");
    assert_eq!(stored, histories[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_node_mid_stream_loses_nothing() {
    node_fails_mid_stream(NodeFault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_a_node_and_its_clients_move_on_through_nginx() {
    node_fails_mid_stream(NodeFault::Terminate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_mid_stream_loses_nothing() {
    let mut cluster = Cluster::start(3, LOCAL_TTL_MS).await;
    // One user per node, connected directly: every delivery between them crosses Redis.
    let mut clients = Vec::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        clients.push(user(&n.url(), &format!("u{i}")).await);
    }
    let ids: Vec<UserId> = clients[1..].iter().map(|c| c.user_id().unwrap()).collect();
    let chat = clients[0]
        .create_chat("outage", &ids)
        .await
        .unwrap()
        .chat_id;
    let mut subs = Vec::new();
    for (i, cl) in clients.iter().enumerate() {
        let who = format!("u{i}");
        let mut s = cl.subscribe().await.unwrap();
        connected(&mut s, &who).await;
        subs.push((who, s));
    }

    // Redis dies a third of the way in; the rest of the stream, to its very end, is sent while
    // it is down (sends still succeed: the store is the record).
    let per_sender = 30;
    let t0 = Instant::now();
    let redis = &mut cluster.redis;
    let acked = stream_with_fault(&clients, chat, per_sender, per_sender, || async {
        redis.kill();
    })
    .await;
    assert_eq!(acked.len(), 3 * per_sender);
    eprintln!("stream done after {:?}", t0.elapsed());
    let (status, h) = cluster.nodes[1].health().await;
    assert_eq!(status, 503, "health while Redis is down: {h}");
    assert_ne!(h["broker"], "ok");

    // Redis comes back and nothing more is sent: the nodes' resync must deliver the tail.
    cluster.redis.restart().await;
    eprintln!("redis back after {:?}", t0.elapsed());
    for (who, s) in &mut subs {
        let h = messages(s, chat, acked.len(), who).await;
        check_history(&h, &acked, who);
    }
    eprintln!("caught up after {:?}", t0.elapsed());
    for n in &mut cluster.nodes {
        n.wait_healthy().await;
        assert!(
            n.metric("chat_broker_resyncs_total").await >= 1,
            "{} caught up without a resync?",
            n.name
        );
    }
    // Live delivery resumed: one more message reaches everyone.
    let last = clients[2].send(chat, "after the outage").await.unwrap();
    assert_eq!(last.seq.0, acked.len() as i64 + 1);
    for (who, s) in &mut subs {
        let h = messages(s, chat, 1, who).await;
        assert_eq!(h, vec![last.clone()], "{who}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_changes_reach_other_nodes_within_the_bound() {
    let cluster = Cluster::start(3, LOCAL_TTL_MS).await;
    let [n1, n2, n3] = [0, 1, 2].map(|i| cluster.nodes[i].url());
    let owner = user(&n1, "owner").await;
    let removed = user(&n2, "removed").await;
    let witness = user(&n2, "witness").await;
    let added = user(&n3, "added").await;
    let chat = owner
        .create_chat(
            "members",
            &[removed.user_id().unwrap(), witness.user_id().unwrap()],
        )
        .await
        .unwrap()
        .chat_id;
    let mut removed_sub = removed.subscribe().await.unwrap();
    connected(&mut removed_sub, "removed").await;
    let mut witness_sub = witness.subscribe().await.unwrap();
    connected(&mut witness_sub, "witness").await;

    // The removed user reads on n2 and n3 first, so both nodes cache "member".
    let removed_n3 = via(&removed, &n3);
    removed.fetch(chat, FetchOptions::latest(10)).await.unwrap();
    removed_n3
        .fetch(chat, FetchOptions::latest(10))
        .await
        .unwrap();
    let m1 = owner.send(chat, "before").await.unwrap();
    assert_eq!(
        messages(&mut removed_sub, chat, 1, "removed").await,
        vec![m1.clone()]
    );
    assert_eq!(
        messages(&mut witness_sub, chat, 1, "witness").await,
        vec![m1]
    );

    // Removed through n1.
    owner
        .remove_member(chat, removed.user_id().unwrap())
        .await
        .unwrap();
    let removed_at = Instant::now();
    // n2 tells the removed user's connection at once (the event crosses Redis).
    loop {
        let ev = tokio::time::timeout(PATIENCE, removed_sub.next())
            .await
            .expect("removed_from_chat never arrived")
            .expect("subscription ended");
        if ev == Event::RemovedFromChat(chat) {
            break;
        }
        assert!(
            !matches!(ev, Event::Message(_)),
            "message after removal: {ev:?}"
        );
    }
    // After the documented bound, neither n2 nor n3 lets the removed user read or send.
    let bound = Duration::from_millis(LOCAL_TTL_MS);
    tokio::time::sleep(bound.saturating_sub(removed_at.elapsed())).await;
    for (node, c) in [("n2", &removed), ("n3", &removed_n3)] {
        let e = c.fetch(chat, FetchOptions::latest(10)).await.unwrap_err();
        assert_eq!(e.code(), Some(&ErrorCode::NotAMember), "{node} fetch: {e}");
        let e = c.send(chat, "still here?").await.unwrap_err();
        assert_eq!(e.code(), Some(&ErrorCode::NotAMember), "{node} send: {e}");
    }
    // Nor does it receive: the witness on the same node gets the next message, the removed
    // user's stream stays silent.
    let m2 = owner.send(chat, "after").await.unwrap();
    assert_eq!(
        messages(&mut witness_sub, chat, 1, "witness").await,
        vec![m2]
    );
    if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(500), removed_sub.next()).await
    {
        assert!(!matches!(ev, Event::Message(_)), "removed user got {ev:?}");
    }

    // An added member can read on another node at once, and send on a third.
    owner
        .add_member(chat, added.user_id().unwrap())
        .await
        .unwrap();
    let page = via(&added, &n2)
        .fetch(chat, FetchOptions::latest(10))
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 2);
    via(&added, &n3).send(chat, "hello").await.unwrap();

    // A logout on n1 is refused on n2 at once (the cache's tombstone).
    let removed_n1 = via(&removed, &n1);
    removed_n1.logout().await.unwrap();
    let e = removed.me().await.unwrap_err();
    assert!(e.is_unauthenticated(), "token still accepted on n2: {e}");
}

/// The next `MessageUpdated` of a stream (other events skipped).
async fn update(sub: &mut chat_client::Subscription, who: &str) -> Message {
    loop {
        let ev = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .unwrap_or_else(|_| panic!("{who}: no message_updated within {PATIENCE:?}"))
            .unwrap_or_else(|| panic!("{who}: subscription ended"));
        if let Event::MessageUpdated(m) = ev {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edits_and_reactions_through_one_node_reach_subscribers_on_the_others() {
    let cluster = Cluster::start(2, LOCAL_TTL_MS).await;
    let [n1, n2] = [0, 1].map(|i| cluster.nodes[i].url());
    let lb = cluster.nginx.url();
    let alice = user(&n1, "alice").await;
    let bob = user(&n2, "bob").await;
    let chat = alice
        .create_chat("edits", &[bob.user_id().unwrap()])
        .await
        .unwrap()
        .chat_id;
    let mut alice_sub = alice.subscribe().await.unwrap();
    connected(&mut alice_sub, "alice").await;
    let mut bob_sub = bob.subscribe().await.unwrap();
    connected(&mut bob_sub, "bob").await;

    let sent = alice.send(chat, "teh plan").await.unwrap();
    assert_eq!(
        messages(&mut bob_sub, chat, 1, "bob").await,
        vec![sent.clone()]
    );
    // Edited through n1: Bob on n2 sees it.
    let edited = alice.edit(chat, sent.seq, "the plan").await.unwrap();
    assert_eq!(update(&mut bob_sub, "bob").await, edited);
    // Reacted through n2: Alice on n1 sees it; through nginx: both do.
    let reacted = bob.react(chat, sent.seq, "👍").await.unwrap();
    assert_eq!(
        update(&mut alice_sub, "alice").await,
        edited,
        "her own edit first"
    );
    assert_eq!(update(&mut alice_sub, "alice").await, reacted);
    let via_lb = via(&bob, &lb).unreact(chat, sent.seq, "👍").await.unwrap();
    assert_eq!(update(&mut alice_sub, "alice").await, via_lb);
    assert_eq!(update(&mut bob_sub, "bob").await, reacted);
    assert_eq!(update(&mut bob_sub, "bob").await, via_lb);
    // A reply and a delete, and every node reads the same current state.
    let reply = bob.reply(chat, sent.seq, "agreed").await.unwrap();
    assert_eq!(reply.reply_to_seq, Some(sent.seq));
    let gone = alice.delete_message(chat, sent.seq).await.unwrap();
    assert_eq!(update(&mut bob_sub, "bob").await, gone);
    for node in [&n1, &n2, &lb] {
        let page = via(&bob, node)
            .fetch(chat, FetchOptions::latest(10))
            .await
            .unwrap();
        assert_eq!(page.messages, vec![gone.clone(), reply.clone()], "{node}");
        let feed = via(&bob, node)
            .changes(chat, chat_client::Rev::ZERO, 10)
            .await
            .unwrap();
        assert_eq!(feed.messages, vec![reply.clone(), gone.clone()], "{node}");
    }
}

/// The next event of `sub` that `pick` accepts (others skipped).
async fn next_matching<T>(
    sub: &mut chat_client::Subscription,
    who: &str,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> T {
    loop {
        let ev = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .unwrap_or_else(|_| panic!("{who}: the awaited event did not come within {PATIENCE:?}"))
            .unwrap_or_else(|| panic!("{who}: subscription ended"));
        if let Some(t) = pick(ev) {
            return t;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_typing_and_presence_cross_nodes_and_a_killed_node_takes_its_users_offline() {
    let mut cluster = Cluster::start(2, LOCAL_TTL_MS).await;
    let [n1, n2] = [0, 1].map(|i| cluster.nodes[i].url());
    let alice = user(&n1, "alice").await;
    let bob_phone = user(&n1, "bob").await;
    let bob = bob_phone.user_id().unwrap();
    // Bob's laptop: the same account, connected to the other node.
    let bob_laptop = via(&bob_phone, &n2);
    let chat = alice.create_chat("live", &[bob]).await.unwrap().chat_id;
    let mut alice_sub = alice.subscribe().await.unwrap();
    connected(&mut alice_sub, "alice").await;
    let mut laptop = bob_laptop.subscribe().await.unwrap();
    connected(&mut laptop, "bob's laptop").await;

    // Presence crosses nodes: Bob is connected only to n2; Alice on n1 hears him come online,
    // and n1 answers that he is.
    let bob_online = |e: Event| match e {
        Event::Presence {
            user_id, online, ..
        } if user_id == bob => Some(online),
        _ => None,
    };
    assert!(next_matching(&mut alice_sub, "alice", bob_online).await);
    let seen = alice.presence(&[bob]).await.unwrap();
    assert!(seen[0].online, "n1 sees the user connected to n2: {seen:?}");

    // A read through n1 reaches Bob's other device on n2, and his unread count there agrees.
    for i in 1..=3 {
        alice.send(chat, &format!("m{i}")).await.unwrap();
    }
    assert_eq!(bob_phone.mark_read(chat, Seq(2)).await.unwrap(), Seq(2));
    let read = next_matching(&mut laptop, "bob's laptop", |e| match e {
        Event::Read {
            chat_id,
            user_id,
            last_read_seq,
        } if chat_id == chat && user_id == bob => Some(last_read_seq),
        _ => None,
    })
    .await;
    assert_eq!(read, Seq(2));
    let listed = bob_laptop.list_chats().await.unwrap();
    assert_eq!(
        (listed[0].last_read_seq, listed[0].unread_count),
        (Seq(2), 1)
    );

    // Typing on n1 reaches Bob on n2.
    alice_sub.typing(chat);
    let typist = next_matching(&mut laptop, "bob's laptop", |e| match e {
        Event::Typing {
            chat_id, user_id, ..
        } if chat_id == chat => Some(user_id),
        _ => None,
    })
    .await;
    assert_eq!(Some(typist), alice.user_id());

    // n2 dies without a word: within the contract's 30 s its users are announced offline and
    // shown offline by the surviving node.
    let killed = Instant::now();
    cluster.nodes[1].kill9();
    assert!(!next_matching(&mut alice_sub, "alice", bob_online).await);
    let took = killed.elapsed();
    println!("a killed node's user was announced offline after {took:?}");
    assert!(
        took < Duration::from_secs(45),
        "announced offline after {took:?}, beyond the 30 s bound (with slack for a loaded machine)"
    );
    let seen = alice.presence(&[bob]).await.unwrap();
    assert!(!seen[0].online && seen[0].last_seen.is_some(), "{seen:?}");
}

/// The next event of a broker stream.
async fn next(ev: &mut chat_core::BrokerStream) -> BrokerEvent {
    tokio::time::timeout(PATIENCE, ev.next())
        .await
        .expect("no broker event")
        .expect("stream ended")
}

/// The broker alone, over a real Redis: routing by topic, and recovery from a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_broker_routes_by_topic_and_resyncs_after_a_restart() {
    use chat_core::Event as BEvent;
    let mut redis = RedisProc::start().await;
    let b1 = RedisBroker::connect(&redis.url(), "t:").await.unwrap();
    let b2 = RedisBroker::connect(&redis.url(), "t:").await.unwrap();
    let mut ev1 = b1.events().unwrap();
    let mut ev2 = b2.events().unwrap();
    assert!(b1.events().is_err(), "events() is single-use");
    let revoked = |n: u8| BEvent::SessionRevoked {
        user_id: UserId(1),
        token_hash: chat_core::TokenHash([n; 32]),
    };
    b1.subscribe(Topic::User(UserId(1))).await.unwrap();
    b2.subscribe(Topic::User(UserId(2))).await.unwrap();
    b2.publish(Topic::User(UserId(1)), &revoked(1))
        .await
        .unwrap();
    b1.publish(Topic::User(UserId(2)), &revoked(2))
        .await
        .unwrap();
    let want = |topic, n| BrokerEvent::Event {
        topic,
        event: revoked(n),
    };
    assert_eq!(next(&mut ev1).await, want(Topic::User(UserId(1)), 1));
    // b2 gets only its own topic: the first thing it sees is event 2.
    assert_eq!(next(&mut ev2).await, want(Topic::User(UserId(2)), 2));
    b1.health().await.unwrap();

    // Restart: both subscribers reconnect, resubscribe, and say so with a Resync.
    redis.restart().await;
    assert_eq!(next(&mut ev1).await, BrokerEvent::Resync);
    assert_eq!(next(&mut ev2).await, BrokerEvent::Resync);
    // Subscribed again: a publish after the restart arrives (the publisher's first attempt may
    // find its connection dead; retry, skipping the Resync such a failure announces).
    let deadline = Instant::now() + PATIENCE;
    while b2
        .publish(Topic::User(UserId(1)), &revoked(3))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "publishing never worked again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        match next(&mut ev1).await {
            BrokerEvent::Resync => continue,
            e => {
                assert_eq!(e, want(Topic::User(UserId(1)), 3));
                break;
            }
        }
    }

    // Unsubscribed topics stop arriving.
    b1.unsubscribe(Topic::User(UserId(1))).await.unwrap();
    b1.subscribe(Topic::User(UserId(9))).await.unwrap();
    b2.publish(Topic::User(UserId(1)), &revoked(4))
        .await
        .unwrap();
    b2.publish(Topic::User(UserId(9)), &revoked(5))
        .await
        .unwrap();
    loop {
        match next(&mut ev1).await {
            BrokerEvent::Resync => continue,
            e => {
                assert_eq!(e, want(Topic::User(UserId(9)), 5));
                break;
            }
        }
    }
}

/// Redis hung with SIGSTOP (its sockets stay open and answer nothing): members connected to the
/// same node keep getting each other's messages, and a membership change is answered and
/// reaches the node's connections instead of waiting on Redis. After SIGCONT live delivery goes
/// on. One in-process node over SQLite with the Redis broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_with_sigstop_stops_neither_local_delivery_nor_membership_changes() {
    use chat_server::{AbuseLimits, Config, PasswordHashing, Server};
    let redis = RedisProc::start().await;
    /// Continues Redis however the test ends, so its Drop can stop it.
    struct Resume<'a>(&'a RedisProc);
    impl Drop for Resume<'_> {
        fn drop(&mut self) {
            self.0.signal_pause(true);
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        chat_storage::sqlite::SqliteStore::open(dir.path().join("chat.db")).expect("sqlite");
    let broker = RedisBroker::connect(&redis.url(), "hang:")
        .await
        .expect("redis broker");
    let mut config = Config {
        password_hashing: PasswordHashing::fast_insecure(),
        abuse: AbuseLimits::unthrottled(),
        ..Config::default()
    };
    config.limits.send_rate_per_sec = 0;
    let server = Server::new(
        Arc::new(store.clone()),
        Arc::new(store),
        Arc::new(broker),
        config,
    )
    .start("127.0.0.1:0".parse().expect("addr"))
    .await
    .expect("server");
    let url = format!("http://{}", server.local_addr());
    let mut people = Vec::new();
    for name in ["ann", "bob", "cid"] {
        let c = Client::new(&url).expect("client");
        let email = format!("{name}@example.com");
        c.register(&email, "a long password", None)
            .await
            .expect("register");
        c.login(&email, "a long password").await.expect("login");
        people.push(c);
    }
    let (ann, bob, cid) = (&people[0], &people[1], &people[2]);
    let bob_id = bob.user_id().expect("bob's id");
    let cid_id = cid.user_id().expect("cid's id");
    let chat = ann
        .create_chat("hang", &[bob_id])
        .await
        .expect("chat")
        .chat_id;
    let mut bob_sub = bob.subscribe().await.expect("subscribe");
    connected(&mut bob_sub, "bob").await;

    redis.signal_pause(false);
    let _resume = Resume(&redis);
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            ann.send(chat, &format!("while redis hangs {i}"))
                .await
                .expect("send"),
        );
    }
    ann.add_member(chat, cid_id)
        .await
        .expect("adding a member is answered while redis hangs");
    let mut got = Vec::new();
    let mut saw_update = false;
    while got.len() < sent.len() || !saw_update {
        match tokio::time::timeout(PATIENCE, bob_sub.next()).await {
            Ok(Some(Event::Message(m))) => got.push(m),
            Ok(Some(Event::ChatUpdated(v))) if v.member_ids.contains(&cid_id) => saw_update = true,
            Ok(Some(_)) => {}
            Ok(None) => panic!("bob's subscription ended"),
            Err(_) => panic!(
                "bob got {} of {} messages (update seen: {saw_update}) while redis hung",
                got.len(),
                sent.len()
            ),
        }
    }
    assert_eq!(got, sent, "live, in order, each once");

    drop(_resume);
    let after = ann.send(chat, "after SIGCONT").await.expect("send");
    loop {
        match tokio::time::timeout(PATIENCE, bob_sub.next()).await {
            Ok(Some(Event::Message(m))) => {
                assert_eq!(m, after);
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("no message after SIGCONT: {other:?}"),
        }
    }
    server.shutdown().await.expect("shutdown");
}

/// A Redis that hangs (SIGSTOP) never closes the subscriber's connection; the subscriber's
/// probe notices the silence, reconnects once Redis answers, and says `Resync` so the node
/// catches up on whatever it may have missed. Nothing is published meanwhile, so only the
/// probe can have noticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_broker_notices_a_hung_redis_and_resyncs() {
    let redis = RedisProc::start().await;
    let b = RedisBroker::connect(&redis.url(), "probe:").await.unwrap();
    let mut ev = b.events().unwrap();
    b.subscribe(Topic::User(UserId(1))).await.unwrap();
    b.health().await.unwrap();
    redis.signal_pause(false);
    // Longer than one probe interval plus its timeout.
    tokio::time::sleep(Duration::from_secs(6)).await;
    redis.signal_pause(true);
    assert_eq!(
        next(&mut ev).await,
        BrokerEvent::Resync,
        "the hang went unnoticed"
    );
    let deadline = Instant::now() + PATIENCE;
    while b.health().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the broker never became healthy again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Live order across nodes: senders on two nodes at once into one chat (each node hears its
/// own sends locally and the other's through Redis), and a raw WebSocket reader on each node
/// that must see every `message` frame, each `seq` right after the previous one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_frames_are_in_seq_order_on_every_node() {
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    const SENDERS: usize = 8;
    const EACH: usize = 40;
    let cluster = Cluster::start(2, LOCAL_TTL_MS).await;
    let (n1, n2) = (cluster.nodes[0].url(), cluster.nodes[1].url());
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(user(if i % 2 == 0 { &n1 } else { &n2 }, &format!("s{i}")).await);
    }
    let readers = [user(&n1, "r1").await, user(&n2, "r2").await];
    let members: Vec<UserId> = senders
        .iter()
        .chain(readers.iter())
        .map(|c| c.user_id().expect("id"))
        .collect();
    let chat = senders[0]
        .create_chat("order", &members)
        .await
        .expect("chat")
        .chat_id;
    let total = SENDERS * EACH;
    let mut reader_tasks = Vec::new();
    for (r, node) in readers.iter().zip([&n1, &n2]) {
        let url = format!(
            "{}/v1/ws?token={}",
            node.replace("http://", "ws://"),
            r.token().expect("token")
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("reader");
        let ready = ws.next().await.expect("ready").expect("ready frame");
        assert!(ready.to_text().unwrap_or("").contains("\"ready\""));
        reader_tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            // Reset by message frames only (pings must not keep a stuck reader waiting).
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
    let sends: Vec<_> = senders
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s.clone();
            tokio::spawn(async move {
                for k in 0..EACH {
                    s.send(chat, &format!("{i}/{k}")).await.expect("send");
                }
            })
        })
        .collect();
    for t in sends {
        t.await.expect("sender");
    }
    for (i, t) in reader_tasks.into_iter().enumerate() {
        let seqs = t.await.expect("reader");
        let out_of_order = seqs.windows(2).filter(|w| w[1] != w[0] + 1).count();
        assert_eq!(
            out_of_order, 0,
            "node {}: {out_of_order} of {total} live frames did not follow their predecessor: {seqs:?}",
            i + 1
        );
        assert_eq!(seqs.first(), Some(&1));
        assert_eq!(seqs.last(), Some(&(total as i64)));
    }
}

/// nginx terminating TLS (the shipped template with a certificate) in front of two nodes that
/// speak plain HTTP: a client on `wss://` through nginx receives, live, a message another client
/// sent over `https://` through nginx. The plain port stays usable (local development), and a
/// client that does not trust the certificate gets the typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_terminates_tls_for_https_and_wss_in_front_of_two_nodes() {
    let redis = RedisProc::start().await;
    let spec = NodeSpec {
        database: least_privilege_database().await,
        messages: None,
        redis: redis.url(),
        cache_local_ttl_ms: LOCAL_TTL_MS,
        replica: None,
    };
    let nodes = [
        NodeProc::start("n1", &spec).await,
        NodeProc::start("n2", &spec).await,
    ];
    let certs = tempfile::tempdir().expect("temp dir");
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
        .expect("self-signed certificate");
    let root = made.cert.pem();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert, &root).expect("write cert");
    std::fs::write(&key, made.key_pair.serialize_pem()).expect("write key");
    let upstreams: Vec<String> = nodes.iter().map(NodeProc::addr).collect();
    let nginx = NginxProc::start_with(
        &upstreams,
        Some(NginxTls {
            cert: &cert,
            key: &key,
        }),
    )
    .await;
    let https = nginx.https_url().expect("a TLS port");

    let tls_user = |name: &'static str| {
        let (https, root) = (https.clone(), root.clone());
        async move {
            let c = Client::builder(&https)
                .add_root_certificate_pem(root)
                .build()
                .expect("client");
            let email = format!("{name}-{:016x}@example.com", rand::random::<u64>());
            c.register(&email, PASSWORD, Some(name))
                .await
                .unwrap_or_else(|e| panic!("registering {name} over https: {e}"));
            c.login(&email, PASSWORD)
                .await
                .unwrap_or_else(|e| panic!("logging in {name} over https: {e}"));
            c
        }
    };
    let sender = tls_user("sender").await;
    let receiver = tls_user("receiver").await;
    let chat = sender
        .create_chat("tls", &[receiver.user_id().expect("id")])
        .await
        .expect("create chat over https")
        .chat_id;
    let mut sub = receiver.subscribe().await.expect("subscribe over wss");
    connected(&mut sub, "receiver").await;
    let sent = sender
        .send(chat, "through nginx, encrypted")
        .await
        .expect("send over https");
    let got = messages(&mut sub, chat, 1, "receiver").await;
    assert_eq!(got[0].seq, sent.seq);
    assert_eq!(got[0].msg_text, "through nginx, encrypted");

    // Plain HTTP is still served on the other port, for local development.
    let plain = via(&sender, &nginx.url());
    assert_eq!(plain.chat(chat).await.expect("plain http").chat_id, chat);
    // Without the root: the typed error, no fallback.
    let stranger = via(&sender, &https);
    let e = stranger.chat(chat).await.expect_err("untrusted");
    assert_eq!(
        e.transport_kind(),
        Some(chat_client::TransportKind::CertificateNotTrusted),
        "{e}"
    );
}
