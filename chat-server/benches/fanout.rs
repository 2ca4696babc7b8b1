//! Criterion bench of the hub's fan-out, through the public API only (the hub itself is
//! crate-private): a real server on 127.0.0.1:0 over SQLite in a temp dir, `K` members of one
//! chat connected by WebSocket, and each iteration publishes one message event straight into the
//! server's `LocalBroker` (skipping the store, so only fan-out is measured) and waits until all
//! `K` sockets have read it.
//!
//! Run with: `cargo bench -p chat-server --bench fanout`
//!
//! The time per iteration covers: the hub serializing the frame once, queueing it to `K`
//! connections, `K` writer tasks writing it, and `K` client reads on the same machine (the
//! client side shares the CPU, so this is a lower bound of the server's own rate). The
//! throughput line is deliveries per second.

#![allow(missing_docs)]

use chat_client::Client;
use chat_core::{Broker, ChatId, Event, Message, Seq, Topic, UserId};
use chat_server::broker::LocalBroker;
use chat_server::{AbuseLimits, Config, PasswordHashing, Server, ServerHandle};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::StreamExt as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// A 100-byte message body, the seed's average message size.
const TEXT: &str = "the quick brown fox jumps over the lazy dog; the quick brown fox jumps over the lazy dog! 0123456789";

/// One chat of `k` connected members.
struct Room {
    broker: Arc<LocalBroker>,
    chat_id: ChatId,
    /// Message frames read by all members so far.
    received: Arc<AtomicU64>,
    notify: Arc<Notify>,
    _server: ServerHandle,
    _dir: tempfile::TempDir,
}

async fn room(k: usize) -> Room {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        chat_storage::sqlite::SqliteStore::open(dir.path().join("chat.db")).expect("sqlite");
    let broker = Arc::new(LocalBroker::new());
    let config = Config {
        password_hashing: PasswordHashing::fast_insecure(),
        // Hundreds of registrations and logins from one address.
        abuse: AbuseLimits::unthrottled(),
        outbound_queue: 1 << 16,
        ..Config::default()
    };
    let server = Server::new(
        Arc::new(store.clone()),
        Arc::new(store),
        broker.clone(),
        config,
    )
    .start("127.0.0.1:0".parse().expect("addr"))
    .await
    .expect("start server");
    let base = format!("http://{}", server.local_addr());

    let mut clients = Vec::with_capacity(k);
    for i in 0..k {
        let c = Client::new(&base).expect("client");
        let email = format!("fan{i}@bench.test");
        c.register(&email, "bench password", None)
            .await
            .expect("register");
        c.login(&email, "bench password").await.expect("login");
        clients.push(c);
    }
    let members: Vec<UserId> = clients[1..].iter().filter_map(|c| c.user_id()).collect();
    let chat = clients[0]
        .create_chat("fanout", &members)
        .await
        .expect("create chat");

    let received = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(Notify::new());
    for c in &clients {
        let mut req = format!("ws://{}/v1/ws", server.local_addr())
            .into_client_request()
            .expect("request");
        let auth = format!("Bearer {}", c.token().expect("token"));
        req.headers_mut()
            .insert("authorization", auth.parse().expect("header"));
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("connect");
        // The first frame is `ready`; after it the connection is registered with the hub.
        ws.next().await.expect("ready").expect("ready frame");
        let received = received.clone();
        let notify = notify.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = ws.next().await {
                if frame.is_text() {
                    received.fetch_add(1, Ordering::Relaxed);
                    notify.notify_one();
                }
            }
        });
    }
    Room {
        broker,
        chat_id: chat.chat_id,
        received,
        notify,
        _server: server,
        _dir: dir,
    }
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("hub_fanout");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for k in [10usize, 100, 1000] {
        let room = rt.block_on(room(k));
        let mut seq = 0i64;
        group.throughput(Throughput::Elements(k as u64));
        group.bench_with_input(BenchmarkId::new("members", k), &k, |b, &k| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        seq += 1;
                        let target = room.received.load(Ordering::Relaxed) + k as u64;
                        let event = Event::Message {
                            message: Message::new(room.chat_id, Seq(seq), UserId(1), TEXT, 0),
                        };
                        room.broker
                            .publish(Topic::Chat(room.chat_id), &event)
                            .await
                            .expect("publish");
                        while room.received.load(Ordering::Relaxed) < target {
                            room.notify.notified().await;
                        }
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
