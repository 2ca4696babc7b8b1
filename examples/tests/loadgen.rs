//! The load generator's scenarios, each run tiny against a real server (the `chat-server`
//! library on 127.0.0.1:0 over SQLite in a temp dir). These check the generator's counts (every
//! scheduled send acked, every delivery arrived, every page read), never its speed.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

use chat_core::{ChatId, MessageStore as _};
use chat_server::broker::LocalBroker;
use chat_server::config::AbuseLimits;
use chat_server::{Config, PasswordHashing, Server, ServerHandle};
use chat_storage::sqlite::SqliteStore;
use examples::loadgen::api::Target;
use examples::loadgen::{changes, connections, fanout, history, writes};
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
