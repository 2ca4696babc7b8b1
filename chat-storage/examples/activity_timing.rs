//! How long `MessageStore::activity` (the chat list's read) takes for a user in many chats, on
//! SQLite and on MariaDB, against the trait's default (which reads every message above the
//! marker). Not a test: it prints numbers and asserts only that both answers agree.
//!
//! Run with (MariaDB from `scripts/mariadb.sh start`):
//! ```text
//! eval "$(scripts/mariadb.sh env)"
//! cargo run --release -p chat-storage --features mysql,sqlite,testing --example activity_timing
//! ```
//! Optional arguments: `CHATS MESSAGES LONG_RUN READS` (defaults 500 20 100000 200).
//!
//! Data: `CHATS` chats of `MESSAGES` messages each (appended through the store, all chats at
//! once), a tenth of them with a few deletes, markers spread from 0 to `last_seq`; plus two
//! chats of `LONG_RUN` messages (inserted in bulk with SQL, bypassing the store, which would
//! take minutes on MariaDB) with 50 deletes through the store, read from marker 0: unread runs
//! that long must not make the list slower. Then `READS` calls of `activity` for every chat,
//! one after another: p50 / p99 / max. The default implementation is timed over 3 calls.

#[cfg(all(feature = "mysql", feature = "sqlite", feature = "testing"))]
mod timing {
    use async_trait::async_trait;
    use chat_core::{
        Appended, ChatActivity, ChatId, FetchQuery, Message, MessageChange, MessageStore,
        NewMessage, Result, Rev, Seq, UserId,
    };
    use chat_storage::mysql::testing::{
        drop_database, fresh_database, url_from_env, PRIMARY_URL_ENV,
    };
    use chat_storage::mysql::{MysqlConfig, MysqlStore};
    use chat_storage::sqlite::SqliteStore;
    use mysql_async::prelude::Queryable;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// What the command line asks for.
    struct Params {
        chats: usize,
        messages: usize,
        long_run: i64,
        reads: usize,
    }

    /// A store seen only through the trait's required methods: `activity` is the default.
    struct Plain<S>(Arc<S>);

    #[async_trait]
    impl<S: MessageStore> MessageStore for Plain<S> {
        async fn append(&self, m: NewMessage) -> Result<Appended> {
            self.0.append(m).await
        }
        async fn fetch(&self, chat_id: ChatId, query: FetchQuery) -> Result<Vec<Message>> {
            self.0.fetch(chat_id, query).await
        }
        async fn last_seq(&self, chat_id: ChatId) -> Result<Seq> {
            self.0.last_seq(chat_id).await
        }
        async fn change(&self, chat_id: ChatId, seq: Seq, c: MessageChange) -> Result<Message> {
            self.0.change(chat_id, seq, c).await
        }
        async fn changes(&self, chat_id: ChatId, after: Rev, limit: u32) -> Result<Vec<Message>> {
            self.0.changes(chat_id, after, limit).await
        }
        async fn health(&self) -> Result<()> {
            self.0.health().await
        }
    }

    /// Where [`bulk`] inserts.
    #[derive(Clone, Copy)]
    enum Bulk<'a> {
        /// The SQLite file (a connection of its own next to the store's).
        Sqlite(&'a std::path::Path),
        /// The MariaDB database URL.
        Mysql(&'a str),
    }

    /// Bulk-inserts `n` messages into `chat` (seq = rev = 1..=n) and its counter row.
    async fn bulk(target: Bulk<'_>, chat: ChatId, n: i64) {
        let c = chat.get();
        match target {
            Bulk::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).expect("open sqlite");
                conn.busy_timeout(Duration::from_secs(30)).expect("busy");
                conn.execute_batch(&format!(
                    "BEGIN;
                     WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < {n})
                     INSERT INTO messages (chat_id, seq, sender_id, msg_text, sent_at, rev)
                     SELECT {c}, x, 2, 'a message in a long unread run', 0, x FROM s;
                     INSERT INTO chat_seq (chat_id, last_seq, last_rev) VALUES ({c}, {n}, {n});
                     COMMIT;"
                ))
                .expect("bulk insert (sqlite)");
            }
            Bulk::Mysql(url) => {
                let mut conn = mysql_async::Conn::from_url(url).await.expect("connect");
                // The Sequence engine's seq_1_to_N table (built into MariaDB).
                conn.query_drop(format!(
                    "INSERT INTO messages (chat_id, seq, sender_id, msg_text, sent_at, rev) \
                     SELECT {c}, seq, 2, 'a message in a long unread run', 0, seq \
                     FROM seq_1_to_{n}"
                ))
                .await
                .expect("bulk insert (mysql)");
                conn.query_drop(format!(
                    "INSERT INTO chat_seq (chat_id, last_seq, last_rev) VALUES ({c}, {n}, {n})"
                ))
                .await
                .expect("counter (mysql)");
                conn.disconnect().await.expect("disconnect");
            }
        }
    }

    /// Fills the store; returns what to ask `activity` for.
    async fn fill<S: MessageStore>(
        store: &Arc<S>,
        target: Bulk<'_>,
        p: &Params,
    ) -> Vec<(ChatId, Seq)> {
        let mut rng = StdRng::seed_from_u64(15);
        let base: i64 = rand::thread_rng().gen_range(1_i64 << 40..1_i64 << 50);
        let chats: Vec<ChatId> = (0..p.chats as i64).map(|i| ChatId(base + i)).collect();
        let tasks: Vec<_> = chats
            .iter()
            .map(|&chat| {
                let store = Arc::clone(store);
                let n = p.messages;
                tokio::spawn(async move {
                    for i in 0..n {
                        store
                            .append(NewMessage {
                                reply_to_seq: None,
                                chat_id: chat,
                                sender_id: UserId(1 + (i % 3) as i64),
                                msg_text: format!("message {i}: about a hundred bytes of chat text, as the design sketch assumes."),
                                sent_at: chat_core::ids::now_millis(),
                                timestamp: None,
                                client_msg_id: None,
                            })
                            .await
                            .expect("append");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("append task");
        }
        let top = p.messages as i64;
        let mut asked = Vec::new();
        for &chat in &chats {
            if rng.gen_bool(0.1) && top > 0 {
                for _ in 0..3 {
                    let seq = rng.gen_range(1..=top);
                    store
                        .change(chat, Seq(seq), MessageChange::Delete)
                        .await
                        .expect("delete");
                }
            }
            asked.push((chat, Seq(rng.gen_range(0..=top))));
        }
        for k in 0..2 {
            let chat = ChatId(base + p.chats as i64 + k);
            bulk(target, chat, p.long_run).await;
            for _ in 0..50 {
                let seq = rng.gen_range(1..=p.long_run);
                store
                    .change(chat, Seq(seq), MessageChange::Delete)
                    .await
                    .expect("delete in the long run");
            }
            asked.push((chat, Seq::ZERO));
        }
        asked
    }

    fn percentile(sorted: &[Duration], q: f64) -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }

    fn ms(d: Duration) -> String {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    }

    /// Times `activity` and the default; prints one table row.
    async fn measure<S: MessageStore>(
        name: &str,
        store: Arc<S>,
        asked: &[(ChatId, Seq)],
        p: &Params,
    ) {
        let fast: Vec<ChatActivity> = store.activity(asked).await.expect("activity");
        let plain = Plain(Arc::clone(&store));
        let slow_start = Instant::now();
        let slow = plain.activity(asked).await.expect("default activity");
        let mut slow_times = vec![slow_start.elapsed()];
        assert_eq!(fast, slow, "{name}: the override and the default disagree");
        for _ in 0..2 {
            let t = Instant::now();
            plain.activity(asked).await.expect("default activity");
            slow_times.push(t.elapsed());
        }
        slow_times.sort();
        let mut times = Vec::with_capacity(p.reads);
        for _ in 0..p.reads {
            let t = Instant::now();
            let got = store.activity(asked).await.expect("activity");
            times.push(t.elapsed());
            assert_eq!(got.len(), asked.len());
        }
        times.sort();
        let unread: i64 = fast
            .iter()
            .zip(asked)
            .map(|(a, &(_, m))| a.last_seq.get() - m.get() - a.deleted_after as i64)
            .sum();
        println!(
            "| {name} | {} | {} | {} | {} | {} | {unread} |",
            asked.len(),
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(times.last().copied().unwrap_or_default()),
            ms(percentile(&slow_times, 0.5)),
        );
    }

    pub async fn main() {
        let args: Vec<usize> = std::env::args()
            .skip(1)
            .map(|a| a.parse().expect("arguments are numbers"))
            .collect();
        let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d).max(1);
        let p = Params {
            chats: arg(0, 500),
            messages: arg(1, 20),
            long_run: arg(2, 100_000) as i64,
            reads: arg(3, 200),
        };
        println!(
            "{} chats of {} messages + 2 of {} unread; {} reads of all of them",
            p.chats, p.messages, p.long_run, p.reads
        );
        println!("| store | chats | activity p50 | p99 | max | default (median of 3) | unread |");
        println!("|---|---|---|---|---|---|---|");

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("activity.db");
        let sqlite = Arc::new(SqliteStore::open(&path).expect("sqlite"));
        let asked = fill(&sqlite, Bulk::Sqlite(&path), &p).await;
        measure("SQLite", sqlite, &asked, &p).await;

        let base = url_from_env(PRIMARY_URL_ENV).unwrap_or_else(|e| panic!("{e}"));
        let url = fresh_database(&base).await.expect("fresh database");
        let mysql = Arc::new(
            MysqlStore::connect(MysqlConfig::new(url.clone(), Vec::new()))
                .await
                .expect("mysql"),
        );
        let asked = fill(&mysql, Bulk::Mysql(&url), &p).await;
        measure("MySQL (MariaDB)", Arc::clone(&mysql), &asked, &p).await;
        drop(mysql);
        drop_database(&url).await.expect("drop the database");
    }
}

#[cfg(all(feature = "mysql", feature = "sqlite", feature = "testing"))]
fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(timing::main());
}

#[cfg(not(all(feature = "mysql", feature = "sqlite", feature = "testing")))]
fn main() {
    eprintln!("build with --features mysql,sqlite,testing (see the file's doc)");
}
