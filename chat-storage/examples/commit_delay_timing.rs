//! What the SQLite writer's commit delay (`SqliteOptions::commit_delay`) does to appends, at
//! the store, with no server or network in the way: writers in a closed loop (each awaits its
//! append before the next: one client typing, a few, many) and an open-loop rate (appends
//! arriving on a schedule, as sends from many users do), each with the delay off and on,
//! interleaved. Not a test: it prints numbers and asserts only that every append succeeded.
//!
//! Run with:
//! ```text
//! cargo run --release -p chat-storage --features sqlite,testing --example commit_delay_timing
//! ```
//! Optional arguments: `SECONDS DELAY_MS ROUNDS` (defaults 5 5 2). Each line reports appends
//! per second, appends per commit, the process's CPU per append (from `/proc/self/stat`, so
//! it counts the writer, the checkpointer and the callers) and the append latency p50 / p99.

#[cfg(feature = "sqlite")]
mod timing {
    use chat_core::{ids::now_millis, ChatId, MessageStore, NewMessage, UserId};
    use chat_storage::sqlite::{SqliteOptions, SqliteStore};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// One shape of load.
    #[derive(Clone, Copy, Debug)]
    enum Shape {
        /// This many writers, each appending to a chat of its own and awaiting each append.
        Closed(usize),
        /// Appends arriving at this rate, over 500 chats, whatever the store's latency.
        Open(u64),
    }

    /// What one run measured.
    struct Run {
        appends: u64,
        secs: f64,
        commits: u64,
        cpu_secs: f64,
        latencies_us: Vec<u64>,
    }

    /// The process's user + system CPU time so far, from `/proc/self/stat` (clock ticks of
    /// 1/100 s on Linux), or 0 where that file is missing.
    fn cpu_secs() -> f64 {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return 0.0;
        };
        // Fields after the command name, which is in parentheses and may contain spaces.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        // utime and stime are fields 14 and 15 of the line; 12 and 13 after the name.
        ticks(11).unwrap_or(0.0) / 100.0 + ticks(12).unwrap_or(0.0) / 100.0
    }

    /// A message of about 100 bytes, like the load generator's.
    fn message(chat: i64, n: u64) -> NewMessage {
        NewMessage {
            chat_id: ChatId(chat),
            sender_id: UserId(chat),
            msg_text: format!("message {n} of a steady stream of appends, padded to about one hundred bytes of text"),
            sent_at: now_millis(),
            timestamp: None,
            client_msg_id: None,
            reply_to_seq: None,
        }
    }

    /// Runs `shape` for `secs` on a fresh store with this delay.
    async fn run(shape: Shape, delay: Duration, secs: u64) -> Run {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = SqliteOptions {
            commit_delay: delay,
            ..SqliteOptions::default()
        };
        let store =
            Arc::new(SqliteStore::open_with(dir.path().join("chat.db"), options).expect("open"));
        // Warm up: the chats exist and the file has grown past its first pages.
        for chat in 1..=500 {
            store.append(message(chat, 0)).await.expect("append");
        }
        store.flush_writes().await.expect("flush");
        let commits_before = store.writer_stats().batches;
        let cpu_before = cpu_secs();
        let started = Instant::now();
        let until = started + Duration::from_secs(secs);
        let counter = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        match shape {
            Shape::Closed(writers) => {
                for w in 0..writers {
                    let (store, counter) = (Arc::clone(&store), Arc::clone(&counter));
                    tasks.push(tokio::spawn(async move {
                        let mut latencies = Vec::new();
                        let chat = i64::try_from(w).unwrap_or(0) + 1;
                        while Instant::now() < until {
                            let n = counter.fetch_add(1, Ordering::Relaxed);
                            let t = Instant::now();
                            store.append(message(chat, n)).await.expect("append");
                            latencies.push(t.elapsed().as_micros() as u64);
                        }
                        latencies
                    }));
                }
            }
            Shape::Open(rate) => {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut n = 0u64;
                while Instant::now() < until {
                    tick.tick().await;
                    n += 1;
                    let store = Arc::clone(&store);
                    let chat = i64::try_from(n % 500).unwrap_or(0) + 1;
                    counter.fetch_add(1, Ordering::Relaxed);
                    tasks.push(tokio::spawn(async move {
                        let t = Instant::now();
                        store.append(message(chat, n)).await.expect("append");
                        vec![t.elapsed().as_micros() as u64]
                    }));
                }
            }
        }
        let mut latencies_us = Vec::new();
        for task in tasks {
            latencies_us.extend(task.await.expect("task"));
        }
        let secs = started.elapsed().as_secs_f64();
        let run = Run {
            appends: latencies_us.len() as u64,
            secs,
            commits: store.writer_stats().batches - commits_before,
            cpu_secs: cpu_secs() - cpu_before,
            latencies_us,
        };
        drop(store);
        run
    }

    /// The `q` quantile of sorted `v`.
    fn quantile(v: &[u64], q: f64) -> u64 {
        if v.is_empty() {
            return 0;
        }
        v[((v.len() - 1) as f64 * q).round() as usize]
    }

    pub async fn main() {
        let args: Vec<u64> = std::env::args()
            .skip(1)
            .map(|a| {
                a.parse()
                    .expect("numeric arguments: SECONDS DELAY_MS ROUNDS")
            })
            .collect();
        let secs = args.first().copied().unwrap_or(5);
        let delay = Duration::from_millis(args.get(1).copied().unwrap_or(5));
        let rounds = args.get(2).copied().unwrap_or(2);
        let shapes = [
            Shape::Closed(1),
            Shape::Closed(4),
            Shape::Closed(16),
            Shape::Open(1_000),
            Shape::Open(10_000),
        ];
        println!("| load | commit delay | appends/s | appends per commit | CPU per append | latency p50 / p99 |");
        println!("| --- | --- | --- | --- | --- | --- |");
        for shape in shapes {
            for round in 0..rounds {
                for d in [Duration::ZERO, delay] {
                    let mut r = run(shape, d, secs).await;
                    r.latencies_us.sort_unstable();
                    let load = match shape {
                        Shape::Closed(w) => format!("{w} closed-loop writer(s)"),
                        Shape::Open(rate) => format!("open loop {rate}/s"),
                    };
                    println!(
                        "| {load} (run {}) | {:?} | {:.0} | {:.1} | {:.1} µs | {:.2} / {:.2} ms |",
                        round + 1,
                        d,
                        r.appends as f64 / r.secs,
                        r.appends as f64 / r.commits.max(1) as f64,
                        r.cpu_secs / r.appends.max(1) as f64 * 1e6,
                        quantile(&r.latencies_us, 0.5) as f64 / 1000.0,
                        quantile(&r.latencies_us, 0.99) as f64 / 1000.0,
                    );
                }
            }
        }
    }
}

#[cfg(feature = "sqlite")]
#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    timing::main().await;
}

#[cfg(not(feature = "sqlite"))]
fn main() {
    eprintln!("build with --features sqlite");
}
