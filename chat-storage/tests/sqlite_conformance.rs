//! The storage conformance suite on [`SqliteStore`], one fresh database file per test, plus the
//! SQLite-specific promises: acked writes survive a reopen, seq continues densely after it, and
//! the writer really commits concurrent writes in shared batches (group commit).

use chat_core::ids::now_millis;
use chat_core::{
    ChatId, Error, FetchQuery, MessageStore, MetadataStore, NewMessage, NewUser, Seq, UserId,
};
use chat_storage::sqlite::{SqliteOptions, SqliteStore};
use chat_storage::testing::Guarded;
use std::path::Path;
use std::time::{Duration, Instant};

/// A fresh store in its own temporary directory, removed after the store is dropped.
async fn fresh() -> Guarded<SqliteStore, tempfile::TempDir> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path().join("nested/dir/chat.db")).expect("open sqlite");
    Guarded::new(store, dir)
}

chat_storage::metadata_store_conformance!(fresh());
chat_storage::message_store_conformance!(fresh());
chat_storage::message_change_conformance!(fresh());
chat_storage::message_activity_conformance!(fresh());
chat_storage::message_search_conformance!(fresh());

/// A message for `chat` from `sender`.
fn msg(chat: i64, sender: i64, text: &str, client_msg_id: Option<String>) -> NewMessage {
    NewMessage {
        reply_to_seq: None,
        chat_id: ChatId(chat),
        sender_id: UserId(sender),
        msg_text: text.to_owned(),
        sent_at: now_millis(),
        timestamp: None,
        client_msg_id,
    }
}

/// Every seq of a chat, read forward.
async fn all_seqs(store: &SqliteStore, chat: i64) -> Vec<i64> {
    let mut out = Vec::new();
    loop {
        let after = Seq(out.last().copied().unwrap_or(0));
        let page = store
            .fetch(ChatId(chat), FetchQuery::After { after, limit: 500 })
            .await
            .expect("fetch");
        if page.is_empty() {
            return out;
        }
        out.extend(page.iter().map(|m| m.seq.get()));
    }
}

/// Appends `tasks * per_task` messages to `chat` concurrently and returns the acked seqs.
async fn append_concurrently(store: &SqliteStore, chat: i64, tasks: i64, per_task: i64) {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                let a = store
                    .append(msg(chat, t, &format!("{t}/{i}"), Some(format!("{t}/{i}"))))
                    .await
                    .expect("append");
                assert!(a.created);
            }
        }));
    }
    for h in handles {
        h.await.expect("appender");
    }
}

/// Holds SQLite's write lock on `path` from another connection until dropped (rolled back), so
/// the store's writer waits in `BEGIN IMMEDIATE` and writes pile up in its queue.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(path: &Path) -> WriteLock {
        let conn = rusqlite::Connection::open(path).expect("open lock connection");
        conn.busy_timeout(Duration::from_secs(60))
            .expect("busy_timeout");
        conn.execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        WriteLock(conn)
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        self.0
            .execute_batch("ROLLBACK")
            .expect("release the write lock");
    }
}

/// Waits (generously) until the writer's queue has received `n` ops.
async fn wait_until_submitted(store: &SqliteStore, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while store.writer_stats().submitted < n {
        assert!(
            Instant::now() < deadline,
            "writes were not queued: {:?}",
            store.writer_stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Options whose writer waits long enough for a test's [`WriteLock`].
fn patient() -> SqliteOptions {
    SqliteOptions {
        busy_timeout: Duration::from_secs(120),
        ..SqliteOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reopen_after_drop_keeps_every_acked_write_and_seq_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chat.db");
    let store = SqliteStore::open(&path).expect("open");
    append_concurrently(&store, 7, 8, 25).await;
    let user = store
        .create_user(NewUser {
            email: "keep@example.test".to_owned(),
            display_name: "Keep".to_owned(),
            pw_hash: "h".to_owned(),
            created_at: 1,
        })
        .await
        .expect("create_user");
    // A plain drop inside the runtime: the writer finishes on its own thread.
    drop(store);

    let store = SqliteStore::open(&path).expect("reopen");
    assert_eq!(all_seqs(&store, 7).await, (1..=200).collect::<Vec<_>>());
    assert_eq!(store.last_seq(ChatId(7)).await.expect("last_seq"), Seq(200));
    let next = store
        .append(msg(7, 1, "after reopen", None))
        .await
        .expect("append");
    assert_eq!(
        next.message.seq,
        Seq(201),
        "seq continues densely after a reopen"
    );
    // Dedupe survives the reopen too.
    let retry = store
        .append(msg(7, 3, "retry", Some("3/4".to_owned())))
        .await
        .expect("retry");
    assert!(!retry.created);
    assert_eq!(retry.message.msg_text, "3/4");
    assert_eq!(store.user(user.user_id).await.expect("user"), Some(user));

    // close() waits for the writer; a third open then sees everything as well.
    store.close().await.expect("close");
    let store = SqliteStore::open(&path).expect("third open");
    assert_eq!(all_seqs(&store, 7).await, (1..=201).collect::<Vec<_>>());
    store.close().await.expect("close");
}

#[test]
fn drop_outside_a_runtime_joins_the_writer_and_checkpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chat.db");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let store = SqliteStore::open(&path).expect("open");
    runtime.block_on(append_concurrently(&store, 1, 4, 10));
    let clone = store.clone();
    drop(store);
    // A clone keeps the store open.
    runtime.block_on(async {
        assert_eq!(clone.last_seq(ChatId(1)).await.expect("last_seq"), Seq(40));
    });
    drop(clone);
    // The writer checkpointed with TRUNCATE at close: the WAL is empty.
    let wal = std::fs::metadata(dir.path().join("chat.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(wal, 0, "the WAL is folded into the database on close");
    let store = SqliteStore::open(&path).expect("reopen");
    assert_eq!(
        runtime.block_on(all_seqs(&store, 1)),
        (1..=40).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_puts_concurrent_appends_into_few_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chat.db");
    let store = SqliteStore::open_with(&path, patient()).expect("open");
    let lock = WriteLock::take(&path);

    let mut handles = Vec::new();
    for i in 0..1000_i64 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            store
                .append(msg(3, i % 10, "batched", Some(i.to_string())))
                .await
        }));
    }
    wait_until_submitted(&store, 1000).await;
    drop(lock);

    let mut seqs = Vec::new();
    for h in handles {
        seqs.push(h.await.expect("task").expect("append").message.seq.get());
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=1000).collect::<Vec<_>>(),
        "acked seqs are exactly 1..=1000"
    );
    assert_eq!(all_seqs(&store, 3).await, (1..=1000).collect::<Vec<_>>());

    let stats = store.writer_stats();
    assert_eq!(stats.committed, 1000);
    assert_eq!(stats.failed_batches, 0);
    // The first op may be alone in its batch (taken before the rest was queued); the other 999
    // waited in the queue and go in batches of at most 512.
    assert!(
        stats.batches <= 3,
        "1000 queued appends took {} transactions",
        stats.batches
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_write_in_a_batch_fails_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chat.db");
    let store = SqliteStore::open_with(&path, patient()).expect("open");
    let lock = WriteLock::take(&path);

    // 10 emails registered twice each, and 20 appends, all queued behind the lock.
    let mut users = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        users.push(tokio::spawn(async move {
            store
                .create_user(NewUser {
                    email: format!("u{}@example.test", i % 10),
                    display_name: format!("u{i}"),
                    pw_hash: "h".to_owned(),
                    created_at: 1,
                })
                .await
        }));
    }
    let mut appends = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        appends.push(tokio::spawn(async move {
            store.append(msg(9, 1, "x", Some(i.to_string()))).await
        }));
    }
    wait_until_submitted(&store, 40).await;
    drop(lock);

    let mut created = 0;
    let mut conflicts = 0;
    for h in users {
        match h.await.expect("task") {
            Ok(_) => created += 1,
            Err(Error::Conflict(_)) => conflicts += 1,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!((created, conflicts), (10, 10));
    for h in appends {
        h.await
            .expect("task")
            .expect("append beside failing writes");
    }
    assert_eq!(all_seqs(&store, 9).await, (1..=20).collect::<Vec<_>>());
    let stats = store.writer_stats();
    assert_eq!(
        stats.failed_batches, 0,
        "a conflict must not fail its batch"
    );
    assert!(
        stats.batches <= 2,
        "40 queued writes took {} transactions",
        stats.batches
    );
    for i in 0..10 {
        let email = format!("u{i}@example.test");
        assert!(store
            .user_credentials(&email)
            .await
            .expect("credentials")
            .is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_held_past_busy_timeout_is_unavailable_and_applies_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chat.db");
    let options = SqliteOptions {
        busy_timeout: Duration::from_millis(50),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(&path, options).expect("open");
    store
        .append(msg(5, 1, "before", None))
        .await
        .expect("append");

    let lock = WriteLock::take(&path);
    match store.append(msg(5, 1, "blocked", None)).await {
        Err(e @ Error::Unavailable { .. }) => assert!(e.is_retryable()),
        other => panic!("a write that cannot get the lock must be Unavailable, got {other:?}"),
    }
    drop(lock);

    let next = store
        .append(msg(5, 1, "after", None))
        .await
        .expect("append");
    assert_eq!(next.message.seq, Seq(2), "the failed write used up no seq");
    assert_eq!(all_seqs(&store, 5).await, vec![1, 2]);
    assert_eq!(store.writer_stats().failed_batches, 1);
    MessageStore::health(&store).await.expect("healthy again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn emails_are_stored_lower_cased() {
    let store = fresh().await;
    let user = store
        .create_user(NewUser {
            email: "Mixed.Case@Example.TEST".to_owned(),
            display_name: "M".to_owned(),
            pw_hash: "h".to_owned(),
            created_at: 1,
        })
        .await
        .expect("create_user");
    assert_eq!(user.email, "mixed.case@example.test");
    let creds = store
        .user_credentials("MIXED.case@example.test")
        .await
        .expect("credentials")
        .expect("found");
    assert_eq!(creds.user, user);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_names_are_refused() {
    match SqliteStore::open(":memory:") {
        Err(Error::InvalidArgument(_)) => {}
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_file_stay_dense() {
    // Not how the server runs (open() shares one store per file), but two writers on one file
    // must still keep seq dense: each append is one transaction under SQLite's write lock.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chat.db");
    let a = SqliteStore::open_with(&path, patient()).expect("open a");
    let b = SqliteStore::open_with(&path, patient()).expect("open b");
    let from_b = async {
        let mut hs = Vec::new();
        for t in 10..14 {
            let s = b.clone();
            hs.push(tokio::spawn(async move {
                for i in 0..25 {
                    s.append(msg(2, t, "b", Some(format!("{t}/{i}"))))
                        .await
                        .expect("append");
                }
            }));
        }
        for h in hs {
            h.await.expect("task");
        }
    };
    tokio::join!(append_concurrently(&a, 2, 4, 25), from_b);
    assert_eq!(all_seqs(&a, 2).await, (1..=200).collect::<Vec<_>>());
    assert_eq!(all_seqs(&b, 2).await, (1..=200).collect::<Vec<_>>());
}

/// Set in the child process of [`acked_appends_survive_kill_9`]: the database it appends to.
const KILL9_DB_ENV: &str = "CHAT_STORAGE_KILL9_DB";

/// The appender of [`acked_appends_survive_kill_9`]. Run by the parent (with
/// [`KILL9_DB_ENV`] set) it appends from 8 tasks until it is killed, printing `acked <seq>` after
/// each append returned. Run on its own (as part of the suite) it appends 8 x 40 messages to a
/// temporary database and checks they are dense.
#[test]
fn kill9_child_appender() {
    let child_db = std::env::var_os(KILL9_DB_ENV).map(std::path::PathBuf::from);
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = child_db
        .clone()
        .unwrap_or_else(|| tmp.path().join("chat.db"));
    let per_task: i64 = if child_db.is_some() { 1_000_000 } else { 40 };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = SqliteStore::open(&path).expect("open");
        let mut handles = Vec::new();
        for t in 0..8_i64 {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                for i in 0..per_task {
                    let a = store
                        .append(msg(11, t, "durable", Some(format!("{t}/{i}"))))
                        .await
                        .expect("append");
                    // Captured by the test harness when run on its own; a line on stdout (which
                    // flushes at every newline) in the child.
                    println!("acked {}", a.message.seq);
                }
            }));
        }
        for h in handles {
            h.await.expect("appender");
        }
        assert_eq!(
            all_seqs(&store, 11).await,
            (1..=8 * per_task).collect::<Vec<_>>()
        );
    });
}

/// SIGKILLs a process that is appending, then checks that every append it acknowledged is in
/// the reopened database, that the chat is dense, and that seq continues after it.
#[test]
fn acked_appends_survive_kill_9() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chat.db");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "kill9_child_appender",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILL9_DB_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the appender");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child stdout");
        if let Some(seq) = line.strip_prefix("acked ") {
            acked.push(seq.trim().parse::<i64>().expect("a seq"));
            if acked.len() == 300 {
                // Kill mid-flight: other appends are queued or being committed right now.
                child.kill().expect("SIGKILL the appender");
                break;
            }
        }
    }
    child.wait().expect("reap the appender");
    assert_eq!(
        acked.len(),
        300,
        "the appender acked 300 messages before it was killed"
    );

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = SqliteStore::open(&path).expect("reopen after kill -9");
        let seqs = all_seqs(&store, 11).await;
        let last = seqs.last().copied().unwrap_or(0);
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "dense after kill -9");
        for s in &acked {
            assert!(
                *s <= last,
                "acked seq {s} was lost (the chat ends at {last})"
            );
        }
        assert_eq!(
            store.last_seq(ChatId(11)).await.expect("last_seq"),
            Seq(last)
        );
        let next = store
            .append(msg(11, 99, "after", None))
            .await
            .expect("append");
        assert_eq!(next.message.seq, Seq(last + 1));
    });
}

/// The role cache (`exact_cache.rs`) never answers from before a membership change: with readers
/// hammering `role` all the time, each `remove_member` / `add_member` is seen by the very next
/// call, and a chat id asked about before the chat existed is not stuck as "not a member".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn role_answers_follow_every_membership_change_under_concurrent_reads() {
    use chat_core::{Member, NewChat, Role};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let store = fresh().await;
    let owner = new_user(store.store(), "owner").await;
    let guest = new_user(store.store(), "guest").await;

    // Asked before the chat exists (ids start at 1): "not a member", possibly cached.
    assert_eq!(store.role(ChatId(1), owner).await.expect("role"), None);
    let (chat, _) = store
        .create_chat(NewChat {
            chat_name: "c".to_owned(),
            owner_id: owner,
            member_ids: Vec::new(),
            created_at: now_millis(),
        })
        .await
        .expect("create_chat");
    assert_eq!(chat.chat_id, ChatId(1));
    assert_eq!(
        store.role(chat.chat_id, owner).await.expect("role"),
        Some(Role::Owner)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let store: SqliteStore = store.store().clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    store.role(chat.chat_id, guest).await.expect("role");
                    // A cached answer returns without yielding; let the runtime stop us.
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for round in 0..200 {
        let member = Member {
            user_id: guest,
            role: Role::Member,
        };
        assert!(store
            .add_member(chat.chat_id, member, 100)
            .await
            .expect("add"));
        assert_eq!(
            store.role(chat.chat_id, guest).await.expect("role"),
            Some(Role::Member),
            "round {round}: added but not a member"
        );
        assert!(store
            .remove_member(chat.chat_id, guest)
            .await
            .expect("remove"));
        assert_eq!(
            store.role(chat.chat_id, guest).await.expect("role"),
            None,
            "round {round}: removed but still a member"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.expect("reader");
    }
}

/// The session cache (`exact_cache.rs`) never answers from before a logout: with readers
/// asking for the session all the time, each logout is seen by the very next call, and a
/// token asked about before its session existed is found once it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_answers_follow_every_logout_under_concurrent_reads() {
    use chat_core::{NewSession, TokenHash};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let store = fresh().await;
    let user = new_user(store.store(), "user").await;
    let stop = Arc::new(AtomicBool::new(false));
    for round in 0..100u8 {
        let hash = TokenHash([round; 32]);
        // Unknown before it is created: a miss that must not stick.
        assert_eq!(store.session(&hash).await.expect("session"), None);
        store
            .create_session(NewSession {
                token_hash: hash,
                user_id: user,
                created_at: now_millis(),
                expires_at: now_millis() + 60_000,
            })
            .await
            .expect("create_session");
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let store: SqliteStore = store.store().clone();
                let stop = Arc::clone(&stop);
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        store.session(&hash).await.expect("session");
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let found = store.session(&hash).await.expect("session");
        assert_eq!(found.map(|s| s.user_id), Some(user), "round {round}");
        assert!(store.delete_session(&hash).await.expect("logout"));
        assert_eq!(
            store.session(&hash).await.expect("session"),
            None,
            "round {round}: logged out but still a session"
        );
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.await.expect("reader");
        }
        stop.store(false, Ordering::Relaxed);
        assert_eq!(store.session(&hash).await.expect("session"), None);
    }
}

/// The background checkpointer (`checkpoint.rs`) copies committed pages into the main file by
/// itself, well before the WAL reaches the writer's backstop size, so commits never have to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_background_checkpointer_folds_the_wal_into_the_main_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chat.db");
    let store = SqliteStore::open(&path).expect("open");
    let main_size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let before = main_size();
    // ~2 MB of text: ~500 pages, far below the 16,384-page backstop, so only the background
    // thread can move it into the main file.
    let text = "x".repeat(1000);
    let mut handles = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        let text = text.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..250 {
                store
                    .append(msg(9, t, &text, Some(format!("{t}/{i}"))))
                    .await
                    .expect("append");
            }
        }));
    }
    for h in handles {
        h.await.expect("appender");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while main_size() < before + 1_500_000 {
        assert!(
            Instant::now() < deadline,
            "the main file stayed at {} bytes (was {before}): no background checkpoint",
            main_size()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(all_seqs(&store, 9).await.len(), 2000);
}

/// A write that fails after it already wrote part of its work (a chat row, then an unknown
/// member) is undone alone, whichever way the batch ran: the writer runs a batch plainly
/// first and, when an op fails, again with a savepoint per op (`writer.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_failing_halfway_in_a_batch_leaves_nothing_behind() {
    use chat_core::NewChat;

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chat.db");
    let store = SqliteStore::open_with(&path, patient()).expect("open");
    let owner = new_user(&store, "owner").await;
    let lock = WriteLock::take(&path);
    let mut chats = Vec::new();
    for (i, members) in [vec![], vec![UserId(999_999)], vec![]]
        .into_iter()
        .enumerate()
    {
        let store = store.clone();
        chats.push(tokio::spawn(async move {
            store
                .create_chat(NewChat {
                    chat_name: format!("c{i}"),
                    owner_id: owner,
                    member_ids: members,
                    created_at: now_millis(),
                })
                .await
        }));
    }
    let mut appends = Vec::new();
    for i in 0..10 {
        let store = store.clone();
        appends.push(tokio::spawn(async move {
            store.append(msg(77, 1, "x", Some(i.to_string()))).await
        }));
    }
    wait_until_submitted(&store, 14).await;
    drop(lock);

    let results: Vec<_> = futures_join(chats).await;
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(
        matches!(results[1], Err(Error::NotFound(_))),
        "{:?}",
        results[1]
    );
    for h in appends {
        h.await.expect("task").expect("append");
    }
    let names: Vec<String> = store
        .chats_of_user(owner)
        .await
        .expect("chats")
        .into_iter()
        .map(|(c, _)| c.chat_name)
        .collect();
    assert_eq!(names.len(), 2, "the failed chat left a row: {names:?}");
    assert!(!names.contains(&"c1".to_owned()));
    assert_eq!(all_seqs(&store, 77).await, (1..=10).collect::<Vec<_>>());
}

/// Registers `<name>@example.test`.
async fn new_user(store: &SqliteStore, name: &str) -> UserId {
    store
        .create_user(NewUser {
            email: format!("{name}@example.test"),
            display_name: name.to_owned(),
            pw_hash: "h".to_owned(),
            created_at: 1,
        })
        .await
        .expect("create_user")
        .user_id
}

/// Awaits every task, in order.
async fn futures_join<T: std::fmt::Debug>(
    tasks: Vec<tokio::task::JoinHandle<chat_core::Result<T>>>,
) -> Vec<chat_core::Result<T>> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}
