//! Append throughput and page latency of the MySQL store against the SQLite store on this
//! machine; the numbers in `docs/benchmarks-mysql.md` come from it.
//!
//! Run with (MariaDB from `scripts/mariadb.sh start`):
//! ```text
//! eval "$(scripts/mariadb.sh env)"
//! cargo run --release -p chat-storage --features mysql,sqlite,testing --example mysql_vs_sqlite
//! ```
//! Optional arguments: `MESSAGES TASKS CHATS PAGE_READS` (defaults 20000 64 16 2000).
//!
//! Append phase: `TASKS` tasks append `MESSAGES` messages in all (each with a `client_msg_id`,
//! as the SDK sends them) round-robin over `CHATS` chats, all at once; throughput is messages
//! per second of wall time, latency is per acked append. Page phase: one task reads
//! `PAGE_READS` pages of 50 (`FetchQuery::Before` at random positions, what scrolling back in
//! history does) and reports p50 / p99. Both stores run with their defaults: SQLite WAL with its
//! group-committing writer, MySQL on the primary only (InnoDB, `innodb_flush_log_at_trx_commit=1`,
//! `sync_binlog=1`, 16 pooled connections).

#[cfg(all(feature = "mysql", feature = "sqlite", feature = "testing"))]
mod bench {
    use chat_core::{ChatId, FetchQuery, MessageStore, NewMessage, Seq, UserId};
    use chat_storage::mysql::testing::{
        drop_database, fresh_database, url_from_env, PRIMARY_URL_ENV,
    };
    use chat_storage::mysql::{MysqlConfig, MysqlStore};
    use chat_storage::sqlite::SqliteStore;
    use rand::Rng;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// What the command line asks for.
    struct Params {
        messages: usize,
        tasks: usize,
        chats: usize,
        page_reads: usize,
    }

    /// One backend's results.
    struct Results {
        name: &'static str,
        appends_per_sec: f64,
        append_p50: Duration,
        append_p99: Duration,
        page_p50: Duration,
        page_p99: Duration,
    }

    fn percentile(sorted: &[Duration], p: f64) -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
        sorted[idx.min(sorted.len() - 1)]
    }

    async fn run<S: MessageStore>(name: &'static str, store: Arc<S>, p: &Params) -> Results {
        // Chat ids of this run only.
        let base: i64 = rand::thread_rng().gen_range(1_i64 << 40..1_i64 << 50);
        let chats: Vec<ChatId> = (0..p.chats as i64).map(|i| ChatId(base + i)).collect();

        let started = Instant::now();
        let mut handles = Vec::new();
        for t in 0..p.tasks {
            let store = Arc::clone(&store);
            let chats = chats.clone();
            let n = p.messages / p.tasks + usize::from(t < p.messages % p.tasks);
            handles.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(n);
                for i in 0..n {
                    let chat = chats[(t + i) % chats.len()];
                    let m = NewMessage {
reply_to_seq: None,
                        chat_id: chat,
                        sender_id: UserId(t as i64 + 1),
                        msg_text: format!("message {i} from task {t}: about a hundred bytes of chat text, as the design sketch assumes."),
                        sent_at: chat_core::ids::now_millis(),
                        timestamp: None,
                        client_msg_id: Some(format!("bench-{t}-{i}")),
                    };
                    let s = Instant::now();
                    store.append(m).await.expect("append");
                    lat.push(s.elapsed());
                }
                lat
            }));
        }
        let mut append_lat = Vec::with_capacity(p.messages);
        for h in handles {
            append_lat.extend(h.await.expect("append task"));
        }
        let elapsed = started.elapsed();
        append_lat.sort();

        // Sanity: every chat is dense and the counts add up.
        let last = store.last_seqs(&chats).await.expect("last_seqs");
        let total: i64 = last.iter().map(|s| s.get()).sum();
        assert_eq!(
            total as usize, p.messages,
            "{name}: every append stored once"
        );

        let mut page_lat = Vec::with_capacity(p.page_reads);
        let mut rng = rand::thread_rng();
        for _ in 0..p.page_reads {
            let c = rng.gen_range(0..chats.len());
            let top = last[c].get();
            let before = rng.gen_range(51.min(top)..=top).max(1) + 1;
            let s = Instant::now();
            let page = store
                .fetch(
                    chats[c],
                    FetchQuery::Before {
                        before: Seq(before),
                        limit: 50,
                    },
                )
                .await
                .expect("fetch");
            page_lat.push(s.elapsed());
            assert_eq!(page.last().map(|m| m.seq), Some(Seq(before - 1)));
        }
        page_lat.sort();
        Results {
            name,
            appends_per_sec: p.messages as f64 / elapsed.as_secs_f64(),
            append_p50: percentile(&append_lat, 0.50),
            append_p99: percentile(&append_lat, 0.99),
            page_p50: percentile(&page_lat, 0.50),
            page_p99: percentile(&page_lat, 0.99),
        }
    }

    fn ms(d: Duration) -> String {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    }

    pub async fn main() {
        let args: Vec<usize> = std::env::args()
            .skip(1)
            .map(|a| a.parse().expect("arguments are numbers"))
            .collect();
        let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d).max(1);
        let p = Params {
            messages: arg(0, 20_000),
            tasks: arg(1, 64),
            chats: arg(2, 16),
            page_reads: arg(3, 2_000),
        };
        println!(
            "{} messages, {} tasks, {} chats, {} page reads of 50",
            p.messages, p.tasks, p.chats, p.page_reads
        );

        let dir = tempfile::tempdir().expect("temp dir");
        let sqlite = Arc::new(SqliteStore::open(dir.path().join("bench.db")).expect("sqlite"));
        let sqlite_results = run("SQLite", sqlite, &p).await;

        let base = url_from_env(PRIMARY_URL_ENV).unwrap_or_else(|e| panic!("{e}"));
        let url = fresh_database(&base).await.expect("fresh database");
        let mysql = Arc::new(
            MysqlStore::connect(MysqlConfig::new(url.clone(), Vec::new()))
                .await
                .expect("mysql"),
        );
        let mysql_results = run("MySQL (MariaDB)", Arc::clone(&mysql), &p).await;
        drop(mysql);
        drop_database(&url).await.expect("drop the bench database");

        println!("| store | appends/s | append p50 | append p99 | page p50 | page p99 |");
        println!("|---|---|---|---|---|---|");
        for r in [sqlite_results, mysql_results] {
            println!(
                "| {} | {:.0} | {} | {} | {} | {} |",
                r.name,
                r.appends_per_sec,
                ms(r.append_p50),
                ms(r.append_p99),
                ms(r.page_p50),
                ms(r.page_p99)
            );
        }
    }
}

#[cfg(all(feature = "mysql", feature = "sqlite", feature = "testing"))]
fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(bench::main());
}

#[cfg(not(all(feature = "mysql", feature = "sqlite", feature = "testing")))]
fn main() {
    eprintln!("build with --features mysql,sqlite,testing (see the file's doc)");
}
