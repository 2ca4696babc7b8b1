//! Appends per second and page latency of the Cassandra message store on a running cluster.
//!
//! Run with (after `scripts/cassandra.sh start 1`):
//! `cargo run --release -p chat-storage --features cassandra --example cassandra_bench`
//!
//! Environment: `CHAT_BENCH_CASSANDRA_URL` (default `cassandra://127.0.0.1:9042`),
//! `CHAT_BENCH_SCALE` (default 1; multiplies the number of operations). Every run uses a new
//! keyspace. Besides the store itself it measures plain (non-LWT) QUORUM writes of the same rows,
//! the floor of any mechanism that assigns `seq` without a lightweight transaction (a per-chat
//! owner node), as the basis for estimating that mechanism.

#[cfg(not(feature = "cassandra"))]
fn main() {
    eprintln!("build with --features cassandra");
    std::process::exit(2);
}

#[cfg(feature = "cassandra")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench::run())
}

#[cfg(feature = "cassandra")]
mod bench {
    use chat_core::{ChatId, FetchQuery, MessageStore, NewMessage, Seq, UserId};
    use chat_storage::cassandra::{CassandraConfig, CassandraMessageStore};
    use scylla::client::session_builder::SessionBuilder;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

    fn msg(chat: ChatId, sender: i64, i: i64, with_cmid: bool) -> NewMessage {
        NewMessage {
reply_to_seq: None,
            chat_id: chat,
            sender_id: UserId(sender),
            // ~100 bytes, the seed's average message.
            msg_text: format!("{i:>8} the quick brown fox jumps over the lazy dog, twice: the quick brown fox jumps"),
            sent_at: chat_core::ids::now_millis(),
            timestamp: Some(chat_core::ids::now_millis()),
            client_msg_id: with_cmid.then(|| format!("b-{sender}-{i}")),
        }
    }

    /// p50 / p99 / max of latencies, in ms.
    fn summary(mut lat: Vec<Duration>) -> String {
        lat.sort_unstable();
        let at = |q: f64| {
            let i = ((lat.len() as f64 - 1.0) * q).round() as usize;
            lat.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            at(0.5),
            at(0.99),
            at(1.0)
        )
    }

    /// `tasks` tasks over `stores`, each appending `per_task` messages to `chat_of(task)`.
    async fn appends(
        label: &str,
        stores: &[Arc<CassandraMessageStore>],
        tasks: usize,
        per_task: i64,
        chat_of: impl Fn(usize) -> ChatId,
    ) -> BoxResult<()> {
        let started = Instant::now();
        let mut handles = Vec::new();
        for t in 0..tasks {
            let store = Arc::clone(&stores[t % stores.len()]);
            let chat = chat_of(t);
            handles.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut retries = 0_u32;
                for i in 0..per_task {
                    let m = msg(chat, t as i64 + 1, i, true);
                    let t0 = Instant::now();
                    loop {
                        match store.append(m.clone()).await {
                            Ok(_) => break,
                            Err(e) if e.is_retryable() => retries += 1,
                            Err(e) => return Err(e),
                        }
                    }
                    lat.push(t0.elapsed());
                }
                Ok((lat, retries))
            }));
        }
        let mut lat = Vec::new();
        let mut retries = 0;
        for h in handles {
            let (l, r) = h.await??;
            lat.extend(l);
            retries += r;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{label}: {} appends in {secs:.1} s = {:.0} appends/s; latency {}; {retries} retried after timeouts",
            lat.len(),
            lat.len() as f64 / secs,
            summary(lat)
        );
        Ok(())
    }

    /// Plain QUORUM writes of message + dedupe rows (no LWT): the floor of an owner-assigns-seq
    /// mechanism.
    async fn plain_writes(
        label: &str,
        config: &CassandraConfig,
        tasks: usize,
        per_task: i64,
        chat_of: impl Fn(usize) -> i64,
    ) -> BoxResult<()> {
        let keyspace = &config.keyspace;
        let session = Arc::new(
            SessionBuilder::new()
                .known_nodes(&config.nodes)
                .build()
                .await?,
        );
        let mut m = session
            .prepare(format!(
                "INSERT INTO {keyspace}.messages (chat_id, bucket, seq, sender_id, msg_text, sent_at, timestamp, client_msg_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?;
        m.set_consistency(config.consistency);
        let mut d = session
            .prepare(format!(
                "INSERT INTO {keyspace}.message_dedupe (chat_id, sender_id, client_msg_id, seq) VALUES (?, ?, ?, ?)"
            ))
            .await?;
        d.set_consistency(config.consistency);
        let (m, d) = (Arc::new(m), Arc::new(d));
        let seq = Arc::new(AtomicI64::new(0));
        let started = Instant::now();
        let mut handles = Vec::new();
        for t in 0..tasks {
            let (session, m, d, seq) = (
                Arc::clone(&session),
                Arc::clone(&m),
                Arc::clone(&d),
                Arc::clone(&seq),
            );
            let chat = chat_of(t);
            handles.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                for i in 0..per_task {
                    let s = seq.fetch_add(1, Ordering::SeqCst) + 1;
                    let cmid = format!("p-{t}-{i}");
                    let text = "x".repeat(100);
                    let t0 = Instant::now();
                    let (a, b) = tokio::join!(
                        session.execute_unpaged(
                            &m,
                            (
                                chat,
                                s / 10_000,
                                s,
                                t as i64,
                                &text,
                                0_i64,
                                Some(0_i64),
                                Some(&cmid)
                            )
                        ),
                        session.execute_unpaged(&d, (chat, t as i64, &cmid, s))
                    );
                    a?;
                    b?;
                    lat.push(t0.elapsed());
                }
                Ok::<_, scylla::errors::ExecutionError>(lat)
            }));
        }
        let mut lat = Vec::new();
        for h in handles {
            lat.extend(h.await??);
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{label}: {} plain message+dedupe writes in {secs:.1} s = {:.0}/s; latency {}",
            lat.len(),
            lat.len() as f64 / secs,
            summary(lat)
        );
        Ok(())
    }

    async fn pages(
        store: &CassandraMessageStore,
        chat: ChatId,
        n: i64,
        reads: usize,
    ) -> BoxResult<()> {
        for (label, q) in [
            ("Latest 50", FetchQuery::Latest { limit: 50 }),
            (
                "Before 50 (mid-history)",
                FetchQuery::Before {
                    before: Seq(n / 2),
                    limit: 50,
                },
            ),
            (
                "After 50 (from seq 0)",
                FetchQuery::After {
                    after: Seq(0),
                    limit: 50,
                },
            ),
            (
                "After 50 (across a bucket boundary)",
                FetchQuery::After {
                    after: Seq(9_975),
                    limit: 50,
                },
            ),
            ("Latest 500", FetchQuery::Latest { limit: 500 }),
        ] {
            let mut lat = Vec::with_capacity(reads);
            for _ in 0..reads {
                let t0 = Instant::now();
                let page = store.fetch(chat, q).await?;
                lat.push(t0.elapsed());
                assert!(!page.is_empty(), "{label} returned nothing");
            }
            println!("page {label}: {reads} reads, {}", summary(lat));
        }
        let mut lat = Vec::with_capacity(reads);
        for _ in 0..reads {
            let t0 = Instant::now();
            store.last_seq(chat).await?;
            lat.push(t0.elapsed());
        }
        println!("last_seq: {reads} reads, {}", summary(lat));
        Ok(())
    }

    pub(crate) async fn run() -> BoxResult<()> {
        let base = std::env::var("CHAT_BENCH_CASSANDRA_URL")
            .unwrap_or_else(|_| "cassandra://127.0.0.1:9042".to_owned());
        let scale: i64 = std::env::var("CHAT_BENCH_SCALE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let keyspace = format!("bench_{stamp}");
        let mut config = CassandraConfig::from_url(&base)?;
        config.keyspace = keyspace.clone();
        println!("cassandra_bench on {base}, keyspace {keyspace} (scale {scale})");

        let t0 = Instant::now();
        let a = Arc::new(CassandraMessageStore::connect(config.clone()).await?);
        println!(
            "connect + create keyspace and tables: {:.2} s",
            t0.elapsed().as_secs_f64()
        );
        let t0 = Instant::now();
        let b = Arc::new(CassandraMessageStore::connect(config.clone()).await?);
        println!(
            "connect to an existing keyspace: {:.2} s",
            t0.elapsed().as_secs_f64()
        );

        // Warm up the JIT of the node and the driver's connections.
        appends("warm-up", &[Arc::clone(&a)], 8, 50, |t| {
            ChatId(1_000 + t as i64)
        })
        .await?;

        // One LWT per message (max_claim=1): the mechanism without group commit.
        let mut single = config.clone();
        single.max_claim = 1;
        let s1 = Arc::new(CassandraMessageStore::connect(single.clone()).await?);
        let s2 = Arc::new(CassandraMessageStore::connect(single).await?);
        let lwt_each: [(&str, Vec<Arc<CassandraMessageStore>>, usize, i64); 4] = [
            (
                "[LWT per message] 1 sender, 1 chat",
                vec![Arc::clone(&s1)],
                1,
                500,
            ),
            (
                "[LWT per message] 16 senders, 1 chat, 1 process",
                vec![Arc::clone(&s1)],
                16,
                50,
            ),
            (
                "[LWT per message] 16 senders, 1 chat, 2 processes (8 + 8)",
                vec![Arc::clone(&s1), Arc::clone(&s2)],
                16,
                50,
            ),
            (
                "[LWT per message] 64 senders, 64 chats",
                vec![Arc::clone(&s1)],
                64,
                40,
            ),
        ];
        for (i, (label, stores, tasks, per_task)) in lwt_each.into_iter().enumerate() {
            let base_chat = 10_000 * (i as i64 + 1);
            let many = tasks == 64;
            appends(label, &stores, tasks, per_task * scale, move |t| {
                ChatId(if many {
                    base_chat + t as i64
                } else {
                    base_chat
                })
            })
            .await?;
        }

        appends(
            "1 sender, 1 chat",
            &[Arc::clone(&a)],
            1,
            500 * scale,
            |_| ChatId(1),
        )
        .await?;
        appends(
            "16 senders, 1 chat, 1 process",
            &[Arc::clone(&a)],
            16,
            50 * scale,
            |_| ChatId(2),
        )
        .await?;
        appends(
            "16 senders, 1 chat, 2 processes (8 + 8)",
            &[Arc::clone(&a), Arc::clone(&b)],
            16,
            50 * scale,
            |_| ChatId(3),
        )
        .await?;
        appends(
            "64 senders, 64 chats",
            &[Arc::clone(&a)],
            64,
            40 * scale,
            |t| ChatId(100 + t as i64),
        )
        .await?;

        plain_writes("plain, 1 writer", &config, 1, 500 * scale, |_| 50).await?;
        plain_writes("plain, 16 writers, 1 chat", &config, 16, 50 * scale, |_| 51).await?;
        plain_writes(
            "plain, 64 writers, 64 chats",
            &config,
            64,
            40 * scale,
            |t| 200 + t as i64,
        )
        .await?;

        // A chat of 10 500 messages (two buckets) for the page reads.
        let history = ChatId(7);
        appends(
            "fill 10 500 (16 senders, 1 chat)",
            &[Arc::clone(&a)],
            16,
            657,
            |_| history,
        )
        .await?;
        let n = a.last_seq(history).await?.get();
        pages(&a, history, n, 200).await?;
        Ok(())
    }
}
