//! The load generator's scenarios, each run tiny against a real server (the `chat-server`
//! library on 127.0.0.1:0 over SQLite in a temp dir). These check the generator's counts (every
//! scheduled send acked, every delivery arrived, every page read), never its speed.
//!
//! The side-by-side scenarios' Centrifugo protocol path is checked at the frame level always
//! (newline-batched replies, pushes, pings, the connection JWT), and against a real Centrifugo
//! v6 only when `CHAT_TEST_CENTRIFUGO=/path/to/centrifugo` is set (`scripts/bench.sh peers`
//! installs one under the target dir, `centrifugo-bin/centrifugo`); without it that test passes
//! without running. The project's CI does not set it.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

use chat_core::{ChatId, MessageStore as _};
use chat_server::broker::LocalBroker;
use chat_server::config::AbuseLimits;
use chat_server::{Config, PasswordHashing, Server, ServerHandle};
use chat_storage::sqlite::SqliteStore;
use examples::loadgen::api::Target;
use examples::loadgen::centrifugo::{self, Centrifugo, Reply};
use examples::loadgen::peer::{Event, Peer, Protocol};
use examples::loadgen::ws::LgText;
use examples::loadgen::{changes, connections, fanout, history, peers, writes};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A server over SQLite in `dir`, with cheap password hashing and no send rate limit.
async fn server(dir: &Path) -> (ServerHandle, SqliteStore, Target) {
    let store = SqliteStore::open(dir.join("chat.db")).unwrap();
    let mut config = Config {
        password_hashing: PasswordHashing::fast_insecure(),
        abuse: AbuseLimits::unthrottled(),
        ..Config::default()
    };
    config.limits.send_rate_per_sec = 0;
    let handle = Server::new(
        Arc::new(store.clone()),
        Arc::new(store.clone()),
        Arc::new(LocalBroker::new()),
        config,
    )
    .start("127.0.0.1:0".parse().unwrap())
    .await
    .unwrap();
    let target = Target::new(&format!("http://{}", handle.local_addr()))
        .await
        .unwrap();
    (handle, store, target)
}

/// Every message stored on the server (its chats have small ids).
async fn stored_messages(store: &SqliteStore) -> i64 {
    let ids: Vec<ChatId> = (1..=200).map(ChatId).collect();
    store
        .last_seqs(&ids)
        .await
        .unwrap()
        .iter()
        .map(|s| s.get())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_scheduled_send_to_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, store, target) = server(dir.path()).await;
    let params = fanout::FanoutParams {
        users: 10,
        groups: 2,
        group_size: 5,
        conns_per_user: 1,
        rate: 50.0,
        duration: Duration::from_secs(2),
        drain_timeout: Duration::from_secs(60),
        server_pid: Some(std::process::id()),
        progress: false,
        ..fanout::FanoutParams::default()
    };
    let (r, hist) = fanout::run(&target, &params).await.unwrap();
    assert_eq!(r.scheduled, 100);
    assert_eq!(r.sent, 100, "{r:?}");
    assert_eq!(r.acked, 100, "{r:?}");
    assert_eq!(r.send_errors, 0, "{r:?}");
    assert_eq!(r.disconnects, 0);
    assert_eq!(r.unsendable, 0);
    assert_eq!(r.expected_deliveries, 500);
    assert_eq!(r.deliveries, 500, "{r:?}");
    assert_eq!(r.send_to_deliver.count, 500);
    assert_eq!(r.send_to_ack.count, 100);
    assert_eq!(hist.lateness.count(), 100);
    assert!(r.server.is_some(), "the server's /proc entry was readable");
    assert_eq!(stored_messages(&store).await, 100);
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reaches_every_device_of_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, _store, target) = server(dir.path()).await;
    // 6 users in 3 groups of 4: groups overlap (group g has users 4g..4g+3 mod 6).
    let params = fanout::FanoutParams {
        users: 6,
        groups: 3,
        group_size: 4,
        conns_per_user: 2,
        rate: 30.0,
        duration: Duration::from_secs(1),
        drain_timeout: Duration::from_secs(60),
        progress: false,
        ..fanout::FanoutParams::default()
    };
    let (r, _) = fanout::run(&target, &params).await.unwrap();
    assert_eq!(r.acked, 30, "{r:?}");
    assert_eq!(r.deliveries, 30 * 4 * 2, "{r:?}");
    assert_eq!(r.deliveries, r.expected_deliveries);
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_open_from_several_source_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, _store, target) = server(dir.path()).await;
    let params = connections::ConnectionsParams {
        connections: 50,
        users: 5,
        per_source: 20,
        concurrency: 16,
        settle: Duration::from_millis(200),
        hold: Duration::from_secs(1),
        server_pid: Some(std::process::id()),
        progress: false,
        ..connections::ConnectionsParams::default()
    };
    let r = connections::run(&target, &params).await.unwrap();
    assert_eq!(r.failed, 0, "{r:?}");
    assert_eq!(r.opened, 50);
    assert_eq!(r.alive_at_end, 50);
    assert_eq!(r.source_addresses, 3);
    assert!(r.server_rss_per_conn_bytes.is_some());
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_back_through_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, _store, target) = server(dir.path()).await;
    let params = history::HistoryParams {
        seed_via_protocol: 230,
        page_size: 50,
        readers: 2,
        max_pages: None,
        progress: false,
        ..history::HistoryParams::default()
    };
    let (r, hist) = history::run(&target, &params).await.unwrap();
    assert_eq!(r.seeded, 230);
    assert_eq!(r.last_seq, 230);
    // 50, 50, 50, 50, 30 for each of the two readers.
    assert_eq!(r.pages, 10, "{r:?}");
    assert_eq!(r.messages, 460);
    assert_eq!(r.broken_pages, 0);
    assert_eq!(r.reached_start, 2);
    assert_eq!(hist.count(), 10);

    // A second run finds the chat already seeded and sends nothing.
    let (again, _) = history::run(
        &target,
        &history::HistoryParams {
            readers: 1,
            max_pages: Some(2),
            ..params
        },
    )
    .await
    .unwrap();
    assert_eq!(again.seeded, 0);
    assert_eq!(again.pages, 2);
    assert_eq!(again.messages, 100);
    assert_eq!(again.reached_start, 0);
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_server_count_what_was_stored() {
    for via in [writes::Via::Ws, writes::Via::Rest] {
        let dir = tempfile::tempdir().unwrap();
        let (handle, store, target) = server(dir.path()).await;
        let params = writes::ServerWritesParams {
            senders: 3,
            window: 4,
            duration: Duration::from_secs(1),
            via,
            progress: false,
            ..writes::ServerWritesParams::default()
        };
        let (r, hist) = writes::run_server(&target, &params).await.unwrap();
        assert_eq!(r.errors, 0, "{via:?}: {r:?}");
        assert!(r.acked > 0, "{via:?}: {r:?}");
        assert_eq!(hist.count(), r.acked);
        assert_eq!(stored_messages(&store).await, r.acked as i64, "{via:?}");
        handle.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_store_is_read_back_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let reader = history::HistoryParams::default();
    let seed = writes::StoreWritesParams {
        email: reader.email.clone(),
        password: reader.password.clone(),
        chat_name: reader.chat_name.clone(),
        store: "sqlite".into(),
        metadata: "sqlite".into(),
        data_dir: dir.path().to_path_buf(),
        concurrency: 64,
        progress: false,
        ..writes::StoreWritesParams::default()
    };
    let (r, chat) = writes::seed_history(seed.clone(), 1000).await.unwrap();
    assert_eq!(r.acked, 1000);
    assert_eq!(r.errors, 0);

    // Store-only writes over several chats of the same owner.
    let (w, hist, chats) = writes::run_store(&writes::StoreWritesParams {
        chats: 4,
        count: Some(400),
        duration: None,
        chat_name: "spread".into(),
        ..seed
    })
    .await
    .unwrap();
    assert_eq!((w.acked, w.errors, hist.count()), (400, 0, 400));
    assert_eq!(chats.len(), 4);
    assert!(!chats.contains(&chat));

    let (handle, _store, target) = server(dir.path()).await;
    let (h, _) = history::run(
        &target,
        &history::HistoryParams {
            max_pages: None,
            progress: false,
            ..history::HistoryParams::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(h.chat_id, chat);
    assert_eq!(h.last_seq, 1000);
    assert_eq!((h.pages, h.messages, h.broken_pages), (20, 1000, 0));
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_every_member_and_none_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, _store, target) = server(dir.path()).await;
    let params = changes::ChangesParams {
        users: 6,
        groups: 2,
        group_size: 3,
        messages: 4,
        rate: 200.0,
        edit_share: 0.3,
        duration: Duration::from_secs(1),
        progress: false,
        ..changes::ChangesParams::default()
    };
    let (result, hist) = changes::run(&target, &params).await.unwrap();
    assert_eq!(result.scheduled, 200);
    assert_eq!(result.errors, 0, "{:?}", result.first_error);
    assert_eq!(result.changed, 200);
    assert!(
        result.edits > 0 && result.edits < 200,
        "a mix: {}",
        result.edits
    );
    // Every change took a revision and reached each of the group's three members.
    assert_eq!(result.expected_updates, 600);
    assert_eq!(result.updates, 600);
    assert_eq!(
        hist.update.count(),
        result.edits * 3,
        "every edit timed on every member"
    );
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_by_side_scenarios_count_every_delivery_on_chat_server() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, store, target) = server(dir.path()).await;
    let peer = Peer::ChatServer(target);
    let (r, hist) = peers::run_publish(&peer, &small_publish()).await.unwrap();
    assert_eq!(r.peer, "chat-server");
    assert_eq!(
        (r.scheduled, r.published, r.publish_errors),
        (40, 40, 0),
        "{r:?}"
    );
    assert_eq!(r.expected_deliveries, 200);
    assert_eq!(r.deliveries, 200, "{r:?}");
    assert_eq!(hist.deliver.count(), 200);
    assert_eq!(hist.answer.count(), 40);
    assert!(r.deliveries_per_server_cpu_sec.is_some());
    assert_eq!(stored_messages(&store).await, 40);
    let idle = peers::run_idle(&peer, &small_idle()).await.unwrap();
    assert_eq!(
        (idle.opened, idle.failed, idle.alive_at_end),
        (30, 0, 30),
        "{idle:?}"
    );
    assert!(idle.server_rss_per_connection_bytes.is_some());
    handle.shutdown().await.unwrap();
}

/// 2 groups of 5, 40 sends over 1 s.
fn small_publish() -> peers::PublishParams {
    peers::PublishParams {
        groups: 2,
        group_size: 5,
        rate: 40.0,
        duration: Duration::from_secs(1),
        drain_timeout: Duration::from_secs(60),
        per_source: 4,
        server_pid: Some(std::process::id()),
        progress: false,
        ..peers::PublishParams::default()
    }
}

/// 30 connections of 7 users from several source addresses.
fn small_idle() -> peers::IdleParams {
    peers::IdleParams {
        connections: 30,
        users: 7,
        group_size: 3,
        per_source: 10,
        settle: Duration::from_millis(200),
        server_pid: Some(std::process::id()),
        progress: false,
        ..peers::IdleParams::default()
    }
}

#[test]
fn centrifugo_frames_batched_on_lines_are_read_one_by_one() {
    let lg = LgText {
        id: 42,
        sched_nanos: 1_234_567,
    };
    let text = format!("{}and the rest", lg.head());
    // A reply, a ping, two publications and a join push in one WebSocket frame, as Centrifugo
    // batches them (a trailing newline included).
    let frame = format!(
        "{{\"id\":2,\"subscribe\":{{}}}}\n{{}}\n\
         {{\"push\":{{\"channel\":\"chat:a\",\"pub\":{{\"data\":{{\"text\":\"{text}\"}},\"offset\":1}}}}}}\n\
         {{\"push\":{{\"channel\":\"chat:a\",\"pub\":{{\"data\":{{\"text\":\"hello\"}}}}}}}}\n\
         {{\"push\":{{\"channel\":\"chat:a\",\"join\":{{\"info\":{{\"user\":\"u\"}}}}}}}}\n"
    );
    let replies: Vec<Reply<'_>> = centrifugo::lines(&frame)
        .map(centrifugo::classify)
        .collect();
    assert_eq!(replies.len(), 5, "{replies:?}");
    assert_eq!(replies[0], Reply::Result { id: 2, error: None });
    assert_eq!(replies[1], Reply::Ping);
    assert_eq!(replies[2], Reply::Publication(Some(lg)));
    assert_eq!(replies[3], Reply::Publication(None));
    assert!(matches!(replies[4], Reply::Other(_)));

    let mut events = Vec::new();
    Protocol::Centrifugo.events(&frame, |e| events.push(e));
    assert_eq!(
        events,
        vec![
            Event::Other,
            Event::Ping,
            Event::Delivery(lg),
            Event::Other,
            Event::Other
        ]
    );
    assert_eq!(Protocol::Centrifugo.pong(), Some("{}"));

    let err = r#"{"id":1,"error":{"code":103,"message":"permission denied"}}"#;
    match centrifugo::classify(err) {
        Reply::Result {
            id: 1,
            error: Some(e),
        } => assert!(e.contains("103"), "{e}"),
        other => panic!("{other:?}"),
    }
    let mut events = Vec::new();
    Protocol::Centrifugo.events(err, |e| events.push(e));
    assert_eq!(events, vec![Event::Error(err)]);
    assert!(matches!(centrifugo::classify("not json"), Reply::Other(_)));
    assert_eq!(centrifugo::lines("\n\n").count(), 0);
}

#[test]
fn centrifugo_commands_are_the_protocols_json() {
    let connect: serde_json::Value =
        serde_json::from_str(&centrifugo::connect_command(1, "t.o.k")).unwrap();
    assert_eq!(connect["id"], 1);
    assert_eq!(connect["connect"]["token"], "t.o.k");
    let sub: serde_json::Value =
        serde_json::from_str(&centrifugo::subscribe_command(7, "chat:x")).unwrap();
    assert_eq!(sub["id"], 7);
    assert_eq!(sub["subscribe"]["channel"], "chat:x");
}

#[test]
fn centrifugo_connection_token_is_an_hs256_jwt() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwt = centrifugo::connection_token(b"secret", "user-7", 2_000_000_000);
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let header: serde_json::Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "HS256");
    assert_eq!(header["typ"], "JWT");
    let claims: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["sub"], "user-7");
    assert_eq!(claims["exp"], 2_000_000_000u64);
    let signature = b64.decode(parts[2]).unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret");
    let signed = format!("{}.{}", parts[0], parts[1]);
    ring::hmac::verify(&key, signed.as_bytes(), &signature).unwrap();
    assert!(ring::hmac::verify(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"other"),
        signed.as_bytes(),
        &signature
    )
    .is_err());
}

/// A Centrifugo process, killed when dropped.
struct CentrifugoProcess(std::process::Child);

impl Drop for CentrifugoProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the side-by-side scenarios tiny against a real Centrifugo v6, when
/// `CHAT_TEST_CENTRIFUGO` names its binary (else passes without running).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_by_side_scenarios_against_a_real_centrifugo() {
    let Some(bin) = std::env::var_os("CHAT_TEST_CENTRIFUGO") else {
        eprintln!("CHAT_TEST_CENTRIFUGO is not set: skipping the real Centrifugo run");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A free port (released just before Centrifugo binds it).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = serde_json::json!({
        "http_server": {"address": "127.0.0.1", "port": port},
        "log": {"level": "warn"},
        "client": {"token": {"hmac_secret_key": "test secret"}},
        "http_api": {"key": "test key"},
        "channel": {"namespaces": [{"name": "chat", "allow_subscribe_for_client": true}]},
        "health": {"enabled": true},
        "usage_stats": {"disabled": true}
    });
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let child = std::process::Command::new(&bin)
        .arg("-c")
        .arg(&path)
        .current_dir(dir.path())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _guard = CentrifugoProcess(child);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut healthy = false;
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{base}/health")).send().await {
            healthy = r.status().is_success();
            if healthy {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "Centrifugo did not become healthy on {base}");

    let peer = Peer::Centrifugo(Centrifugo {
        target: Target::new(&base).await.unwrap(),
        api_key: "test key".into(),
        hmac_secret: "test secret".into(),
    });
    let (r, hist) = peers::run_publish(
        &peer,
        &peers::PublishParams {
            server_pid: Some(pid),
            ..small_publish()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.peer, "centrifugo");
    assert_eq!(
        (r.scheduled, r.published, r.publish_errors),
        (40, 40, 0),
        "{r:?}"
    );
    assert_eq!((r.deliveries, r.expected_deliveries), (200, 200), "{r:?}");
    assert_eq!((r.socket_errors, r.disconnects), (0, 0), "{r:?}");
    assert_eq!(hist.deliver.count(), 200);
    assert!(r.server.is_some());
    let idle = peers::run_idle(
        &peer,
        &peers::IdleParams {
            server_pid: Some(pid),
            ..small_idle()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (idle.opened, idle.failed, idle.alive_at_end),
        (30, 0, 30),
        "{idle:?}"
    );

    // A token signed with another secret is refused at `connect`.
    let wrong = Centrifugo {
        hmac_secret: "wrong".into(),
        ..match &peer {
            Peer::Centrifugo(c) => c.clone(),
            Peer::ChatServer(_) => unreachable!(),
        }
    };
    let token = wrong.token("intruder");
    assert!(wrong
        .open(&token, &["chat:x".into()], None, 1024)
        .await
        .is_err());
}
