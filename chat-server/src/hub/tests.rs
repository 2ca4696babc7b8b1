//! The hub's tests: fan-out, membership events, resync and a hung broker, on a real SQLite store
//! and the in-process broker.

use super::resync::RESYNC_PAGE;
use super::*;
use crate::broker::LocalBroker;
use axum::extract::ws::Utf8Bytes;
use chat_core::protocol::ChatView;
use chat_core::TokenHash;
use chat_core::{Message, Seq};
use std::time::Duration;

/// The store behind a test hub, and the directory holding it.
struct Fixture {
    store: chat_storage::sqlite::SqliteStore,
    _dir: tempfile::TempDir,
}

fn hub() -> (Arc<Hub>, Arc<LocalBroker>, Arc<Metrics>, Fixture) {
    let dir = tempfile::tempdir().unwrap();
    let store = chat_storage::sqlite::SqliteStore::open(dir.path().join("hub.db")).unwrap();
    let broker = Arc::new(LocalBroker::new());
    let metrics = Arc::new(Metrics::default());
    let hub = Arc::new(Hub::new(
        broker.clone(),
        metrics.clone(),
        Arc::new(store.clone()),
        Arc::new(store.clone()),
        Duration::from_millis(50),
        Duration::ZERO,
        2,
    ));
    // The event loop, for what other tasks hand it (gap timers, catch-ups); the tests hand it
    // broker events themselves through `handle`.
    tokio::spawn(hub.clone().run(broker.events().unwrap()));
    (hub, broker, metrics, Fixture { store, _dir: dir })
}

async fn connect(
    hub: &Hub,
    user: i64,
    chats: &[i64],
    capacity: usize,
) -> (Arc<Connection>, Arc<Connection>) {
    let c = Connection::new(hub.next_id(), UserId(user), token(user), capacity);
    hub.register(c.clone()).await.unwrap();
    let chats: Vec<ChatId> = chats.iter().map(|&c| ChatId(c)).collect();
    hub.set_user_chats(&c, &chats).await.unwrap();
    (c.clone(), c)
}

fn message(chat: i64, seq: i64) -> BrokerEvent {
    BrokerEvent::Event {
        topic: Topic::Chat(ChatId(chat)),
        event: Event::Message {
            message: Message::new(ChatId(chat), Seq(seq), UserId(1), format!("m{seq}"), 0),
        },
    }
}

/// A distinct token hash per user.
fn token(user: i64) -> TokenHash {
    let mut t = [0; 32];
    t[..8].copy_from_slice(&user.to_le_bytes());
    TokenHash(t)
}

fn frame_json(f: Utf8Bytes) -> serde_json::Value {
    serde_json::from_str(f.as_str()).unwrap()
}

#[tokio::test]
async fn fans_out_one_serialization_to_every_member_connection() {
    let (hub, _, metrics, _fx) = hub();
    let (_a1, a1) = connect(&hub, 1, &[10], 8).await;
    let (_a2, a2) = connect(&hub, 1, &[10], 8).await;
    let (_b, b) = connect(&hub, 2, &[10, 11], 8).await;
    let (_c, c) = connect(&hub, 3, &[11], 8).await;
    hub.handle(message(10, 1));
    let f1 = a1.try_recv().unwrap();
    let f2 = a2.try_recv().unwrap();
    let f3 = b.try_recv().unwrap();
    // The same buffer, not three serializations.
    assert_eq!(f1.as_str().as_ptr(), f2.as_str().as_ptr());
    assert_eq!(f1.as_str().as_ptr(), f3.as_str().as_ptr());
    assert_eq!(frame_json(f1)["message"]["seq"], 1);
    assert!(c.try_recv().is_err(), "user 3 is not in chat 10");
    assert_eq!(metrics.deliveries.get(), 3);
}

/// The cached recipients of a chat follow connections coming and going.
#[tokio::test]
async fn recipients_follow_connections() {
    let (hub, _, _, _fx) = hub();
    let (_a, a) = connect(&hub, 1, &[10], 8).await;
    hub.handle(message(10, 1));
    assert_eq!(frame_json(a.try_recv().unwrap())["message"]["seq"], 1);
    // A second connection of the same user, and one of a new member.
    let (_a2, a2) = connect(&hub, 1, &[10], 8).await;
    let (b, b_rx) = connect(&hub, 2, &[10], 8).await;
    hub.handle(message(10, 2));
    for rx in [&a, &a2, &b_rx] {
        assert_eq!(frame_json(rx.try_recv().unwrap())["message"]["seq"], 2);
    }
    hub.unregister(&b);
    hub.unregister(&a2);
    hub.handle(message(10, 3));
    assert_eq!(frame_json(a.try_recv().unwrap())["message"]["seq"], 3);
    assert!(a2.try_recv().is_err() && b_rx.try_recv().is_err());
}

#[tokio::test]
async fn subscriptions_follow_connections() {
    let (hub, _, _, _fx) = hub();
    let (a, _ra) = connect(&hub, 1, &[10], 8).await;
    let (b, _rb) = connect(&hub, 2, &[10], 8).await;
    let subscribed = |hub: &Hub| hub.subscriptions.subscribed();
    assert!(subscribed(&hub).contains(&Topic::Chat(ChatId(10))));
    hub.unregister(&a);
    settle(&hub).await;
    assert!(subscribed(&hub).contains(&Topic::Chat(ChatId(10))));
    assert!(!subscribed(&hub).contains(&Topic::User(UserId(1))));
    hub.unregister(&b);
    settle(&hub).await;
    assert!(subscribed(&hub).is_empty());
    hub.wait_empty().await;
}

/// Waits until the subscription task has handled everything handed to it so far.
async fn settle(hub: &Hub) {
    hub.subscriptions.update_and_wait(Vec::new()).await.unwrap();
}

/// Asks for a resync as the broker does and waits for its task to end.
async fn resync_and_wait(hub: &Arc<Hub>) {
    hub.handle(BrokerEvent::Resync);
    while hub.resync_running() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn full_queue_closes_the_slow_consumer_once() {
    let (hub, _, metrics, _fx) = hub();
    let (slow, _rx_never_read) = connect(&hub, 1, &[10], 2).await;
    let (_fast, fast) = connect(&hub, 2, &[10], 64).await;
    for seq in 1..=10 {
        hub.handle(message(10, seq));
    }
    assert!(slow.is_closing());
    assert_eq!(
        slow.close_reason().unwrap().code,
        close_code::POLICY,
        "slow consumers are closed with a policy violation"
    );
    assert_eq!(metrics.slow_consumer_disconnects.get(), 1);
    for seq in 1..=10 {
        assert_eq!(frame_json(fast.try_recv().unwrap())["message"]["seq"], seq);
    }
}

#[tokio::test]
async fn membership_events_update_delivery() {
    let (hub, _, _, _fx) = hub();
    let (_a, a) = connect(&hub, 1, &[10], 16).await;
    let (_b, b) = connect(&hub, 2, &[], 16).await;
    let mut view = ChatView::new(ChatId(10), "x", vec![UserId(1), UserId(2)], Seq(0));
    view.owner_id = Some(UserId(1));
    // Published on the chat's topic first, then on the added user's.
    for topic in [Topic::Chat(ChatId(10)), Topic::User(UserId(2))] {
        hub.handle(BrokerEvent::Event {
            topic,
            event: Event::ChatUpdated { chat: view.clone() },
        });
    }
    assert_eq!(frame_json(a.try_recv().unwrap())["type"], "chat_updated");
    assert_eq!(frame_json(b.try_recv().unwrap())["type"], "chat_updated");
    assert!(a.try_recv().is_err() && b.try_recv().is_err(), "once each");
    hub.handle(message(10, 1));
    assert_eq!(frame_json(b.try_recv().unwrap())["type"], "message");
    a.try_recv().unwrap();

    for topic in [Topic::User(UserId(2)), Topic::Chat(ChatId(10))] {
        hub.handle(BrokerEvent::Event {
            topic,
            event: Event::RemovedFromChat {
                chat_id: ChatId(10),
                user_id: UserId(2),
            },
        });
    }
    let removed = frame_json(b.try_recv().unwrap());
    assert_eq!(removed["type"], "removed_from_chat");
    assert_eq!(removed["chat_id"], 10);
    hub.handle(message(10, 2));
    assert!(b.try_recv().is_err(), "a removed member gets nothing more");
    assert_eq!(frame_json(a.try_recv().unwrap())["message"]["seq"], 2);
}

#[tokio::test]
async fn changes_during_the_chat_list_load_are_not_lost() {
    let (hub, _, _, _fx) = hub();
    let c = Connection::new(hub.next_id(), UserId(1), token(1), 16);
    let rx = c.clone();
    hub.register(c.clone()).await.unwrap();
    // The user is added to chat 11 and removed from chat 10 after the store was read...
    for (topic, event) in [
        (
            Topic::User(UserId(1)),
            Event::ChatUpdated {
                chat: ChatView::new(ChatId(11), "n", vec![UserId(1)], Seq(0)),
            },
        ),
        (
            Topic::User(UserId(1)),
            Event::RemovedFromChat {
                chat_id: ChatId(10),
                user_id: UserId(1),
            },
        ),
    ] {
        hub.handle(BrokerEvent::Event { topic, event });
    }
    // ...so the stale list [10] must end up as [11].
    hub.set_user_chats(&c, &[ChatId(10)]).await.unwrap();
    while rx.try_recv().is_ok() {}
    hub.handle(message(10, 1));
    assert!(rx.try_recv().is_err());
    hub.handle(message(11, 1));
    assert_eq!(frame_json(rx.try_recv().unwrap())["message"]["chat_id"], 11);
}

#[tokio::test]
async fn revoked_session_closes_only_its_connections() {
    let (hub, _, _, _fx) = hub();
    let a = Connection::new(hub.next_id(), UserId(1), TokenHash([0xaa; 32]), 4);
    let b = Connection::new(hub.next_id(), UserId(1), TokenHash([0xbb; 32]), 4);
    for c in [&a, &b] {
        hub.register(c.clone()).await.unwrap();
        hub.set_user_chats(c, &[]).await.unwrap();
    }
    hub.handle(BrokerEvent::Event {
        topic: Topic::User(UserId(1)),
        event: Event::SessionRevoked {
            user_id: UserId(1),
            token_hash: TokenHash([0xaa; 32]),
        },
    });
    assert!(a.is_closing());
    assert!(!b.is_closing());
}

/// A user in the fixture's store.
async fn user(fx: &Fixture, name: &str) -> UserId {
    use chat_core::{MetadataStore as _, NewUser};
    fx.store
        .create_user(NewUser {
            email: format!("{name}@example.com"),
            display_name: name.into(),
            pw_hash: "x".into(),
            created_at: 0,
        })
        .await
        .unwrap()
        .user_id
}

/// A chat in the fixture's store with `owner` as its only member.
async fn chat_owned_by(fx: &Fixture, owner: UserId) -> ChatId {
    use chat_core::{MetadataStore as _, NewChat};
    let (chat, _) = fx
        .store
        .create_chat(NewChat {
            chat_name: "c".into(),
            owner_id: owner,
            member_ids: vec![],
            created_at: 0,
        })
        .await
        .unwrap();
    chat.chat_id
}

/// Stores a message without publishing it: the broker "lost" it.
async fn append_silently(fx: &Fixture, chat: ChatId, sender: UserId, text: &str) -> Seq {
    use chat_core::{MessageStore as _, NewMessage};
    fx.store
        .append(NewMessage {
            reply_to_seq: None,
            chat_id: chat,
            sender_id: sender,
            msg_text: text.into(),
            sent_at: 0,
            timestamp: None,
            client_msg_id: None,
        })
        .await
        .unwrap()
        .message
        .seq
}

async fn connect_ids(
    hub: &Hub,
    user: UserId,
    chats: &[ChatId],
) -> (Arc<Connection>, Arc<Connection>) {
    let c = Connection::new(hub.next_id(), user, token(user.0), 64);
    hub.register(c.clone()).await.unwrap();
    hub.set_user_chats(&c, chats).await.unwrap();
    (c.clone(), c)
}

fn seqs_of(rx: &Connection) -> Vec<i64> {
    let mut out = Vec::new();
    while let Ok(f) = rx.try_recv() {
        let v = frame_json(f);
        if v["type"] == "message" {
            out.push(v["message"]["seq"].as_i64().unwrap());
        }
    }
    out
}

#[tokio::test]
async fn resync_delivers_what_the_broker_lost_and_only_that() {
    use chat_core::{MetadataStore as _, NewChat};
    let (hub, _, metrics, fx) = hub();
    let (a, b) = (user(&fx, "a").await, user(&fx, "b").await);
    let (chat, _) = fx
        .store
        .create_chat(NewChat {
            chat_name: "c".into(),
            owner_id: a,
            member_ids: vec![b],
            created_at: 0,
        })
        .await
        .unwrap();
    let chat = chat.chat_id;
    // One message before anyone connects: a resync must not replay it.
    append_silently(&fx, chat, a, "old").await;
    let (_ca, ra) = connect_ids(&hub, a, &[chat]).await;
    let (_cb, rb) = connect_ids(&hub, b, &[chat]).await;

    // Seq 2 arrives live; 3 and 4 are stored while the broker is away.
    let s2 = append_silently(&fx, chat, a, "live").await;
    hub.handle(BrokerEvent::Event {
        topic: Topic::Chat(chat),
        event: Event::Message {
            message: Message::new(chat, s2, a, "live", 0),
        },
    });
    append_silently(&fx, chat, a, "lost 1").await;
    append_silently(&fx, chat, b, "lost 2").await;
    // And b was removed meanwhile, its event lost too.
    fx.store.remove_member(chat, b).await.unwrap();

    resync_and_wait(&hub).await;
    assert_eq!(
        seqs_of(&ra),
        vec![2, 3, 4],
        "live, then what was missed, in order"
    );
    assert_eq!(
        seqs_of(&rb),
        vec![2],
        "a removed member gets nothing from the resync"
    );
    assert_eq!(metrics.broker_resyncs.get(), 1);

    // A second resync with nothing new sends nothing.
    resync_and_wait(&hub).await;
    assert!(seqs_of(&ra).is_empty());
}

#[tokio::test]
async fn resync_after_a_long_outage_sends_a_page_and_the_newest() {
    let (hub, _, _, fx) = hub();
    let a = user(&fx, "a").await;
    let chat = chat_owned_by(&fx, a).await;
    let c = Connection::new(hub.next_id(), a, token(a.0), 2048);
    let rx = c.clone();
    hub.register(c.clone()).await.unwrap();
    hub.set_user_chats(&c, &[chat]).await.unwrap();
    let total = i64::from(RESYNC_PAGE) + 20;
    for i in 0..total {
        append_silently(&fx, chat, a, &format!("m{i}")).await;
    }
    resync_and_wait(&hub).await;
    // The first page, then the newest, which waits for the hole to be read from the store.
    let mut got = seqs_of(&rx);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < total as usize && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        got.extend(seqs_of(&rx));
    }
    let want: Vec<i64> = (1..=total).collect();
    assert_eq!(got, want, "every message, in order, each once");
}

#[tokio::test]
async fn a_chat_joined_by_event_is_caught_up_from_its_view() {
    let (hub, _, _, _fx) = hub();
    let (_c, rx) = connect(&hub, 1, &[], 16).await;
    let view = ChatView::new(ChatId(10), "x", vec![UserId(1)], Seq(7));
    hub.handle(BrokerEvent::Event {
        topic: Topic::User(UserId(1)),
        event: Event::ChatUpdated { chat: view },
    });
    assert_eq!(hub.state().forwarded(ChatId(10)), Some(Seq(7)));
    hub.handle(message(10, 8));
    assert_eq!(hub.state().forwarded(ChatId(10)), Some(Seq(8)));
    while rx.try_recv().is_ok() {}
}

/// A broker whose `subscribe` hangs once `hung` is set, like a Redis stopped with SIGSTOP.
struct HangingBroker {
    inner: LocalBroker,
    hung: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl chat_core::Broker for HangingBroker {
    async fn publish(&self, topic: Topic, event: &Event) -> Result<()> {
        self.inner.publish(topic, event).await
    }
    async fn subscribe(&self, topic: Topic) -> Result<()> {
        if self.hung.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.subscribe(topic).await
    }
    async fn unsubscribe(&self, topic: Topic) -> Result<()> {
        if self.hung.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.unsubscribe(topic).await
    }
    fn events(&self) -> Result<BrokerStream> {
        self.inner.events()
    }
    async fn health(&self) -> Result<()> {
        Ok(())
    }
}

/// With the broker hung, membership events queue their subscription changes instead of
/// blocking the hub, and messages between members on this node keep flowing.
#[tokio::test]
async fn a_hung_broker_holds_up_neither_events_nor_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let store = chat_storage::sqlite::SqliteStore::open(dir.path().join("hub.db")).unwrap();
    let broker = Arc::new(HangingBroker {
        inner: LocalBroker::new(),
        hung: std::sync::atomic::AtomicBool::new(false),
    });
    let hub = Arc::new(Hub::new(
        broker.clone(),
        Arc::new(Metrics::default()),
        Arc::new(store.clone()),
        Arc::new(store),
        Duration::from_millis(50),
        Duration::ZERO,
        2,
    ));
    let (_a, a) = connect(&hub, 1, &[10], 64).await;
    let (_b, b) = connect(&hub, 2, &[10], 64).await;
    broker.hung.store(true, Ordering::SeqCst);
    let view = |chat: i64| {
        let mut view = ChatView::new(ChatId(chat), "x", vec![UserId(1), UserId(2)], Seq(0));
        view.owner_id = Some(UserId(1));
        view
    };
    // Each of these needs a broker call that never returns; none of them may block.
    let handled = tokio::time::timeout(Duration::from_secs(5), async {
        for chat in 11..=20 {
            hub.handle(BrokerEvent::Event {
                topic: Topic::User(UserId(1)),
                event: Event::ChatUpdated { chat: view(chat) },
            });
        }
        hub.handle(BrokerEvent::Event {
            topic: Topic::User(UserId(2)),
            event: Event::RemovedFromChat {
                chat_id: ChatId(10),
                user_id: UserId(2),
            },
        });
        for seq in 1..=3 {
            hub.handle(message(10, seq));
        }
    })
    .await;
    assert!(handled.is_ok(), "the hub waited on the hung broker");
    assert_eq!(seqs_of(&a), vec![1, 2, 3], "delivery on this node goes on");
    let b_frames: Vec<String> = std::iter::from_fn(|| b.try_recv().ok())
        .map(|f| frame_json(f)["type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        b_frames,
        vec!["removed_from_chat"],
        "b left before the messages"
    );
    // The queued subscriptions are still waiting for the broker.
    assert!(!hub
        .subscriptions
        .subscribed()
        .contains(&Topic::Chat(ChatId(11))));
}

/// Messages that arrive out of order go out in `seq` order; a predecessor that never arrives is
/// read from the store after the hold bound.
#[tokio::test]
async fn live_messages_go_out_in_seq_order_and_gaps_are_filled_from_the_store() {
    use chat_core::{FetchQuery, MessageStore as _};
    let (hub, _, metrics, fx) = hub();
    let a = user(&fx, "a").await;
    let chat = chat_owned_by(&fx, a).await;
    let (_c, rx) = connect_ids(&hub, a, &[chat]).await;
    let mut stored = Vec::new();
    for i in 1..=6 {
        append_silently(&fx, chat, a, &format!("m{i}")).await;
        let page = fx
            .store
            .fetch(
                chat,
                FetchQuery::After {
                    after: Seq(i - 1),
                    limit: 1,
                },
            )
            .await
            .unwrap();
        stored.extend(page);
    }
    let live = |i: usize| BrokerEvent::Event {
        topic: Topic::Chat(chat),
        event: Event::Message {
            message: stored[i].clone(),
        },
    };
    // 2 and 3 arrive before 1: held, then released in order when 1 arrives.
    hub.handle(live(1));
    hub.handle(live(2));
    assert!(seqs_of(&rx).is_empty(), "nothing goes out ahead of seq 1");
    hub.handle(live(0));
    assert_eq!(seqs_of(&rx), vec![1, 2, 3]);
    hub.handle(live(1));
    assert!(seqs_of(&rx).is_empty(), "a duplicate is dropped");
    // 4 is lost; 6 and 5 arrive: after the hold bound, 4 is read from the store.
    hub.handle(live(5));
    hub.handle(live(4));
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.len() < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        got.extend(seqs_of(&rx));
    }
    assert_eq!(got, vec![4, 5, 6]);
    assert_eq!(metrics.live_gap_fills.get(), 1);
}
