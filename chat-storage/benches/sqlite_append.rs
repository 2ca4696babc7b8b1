//! Criterion bench of the SQLite store's append path: batches of concurrent appends through the
//! group-commit writer, on a real file in a temp dir (WAL, `synchronous=FULL`, so every batch
//! pays one fsync).
//!
//! Run with: `cargo bench -p chat-storage --bench sqlite_append`
//!
//! Each iteration submits `n` appends at once (spread over 16 chats, 100-byte texts like the
//! seed's) and waits for every ack; the throughput line is acked appends per second. With
//! `n = 1` it is the latency of one lone append (one transaction, one fsync); with large `n`
//! the writer commits up to `SqliteOptions::max_batch` appends per transaction.

#![allow(missing_docs)]

use chat_core::{ChatId, MessageStore, NewMessage, UserId};
use chat_storage::sqlite::SqliteStore;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::{Duration, Instant};

/// A 100-byte message body, the seed's average message size.
const TEXT: &str = "the quick brown fox jumps over the lazy dog; the quick brown fox jumps over the lazy dog! 0123456789";

fn append_batches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("bench.db")).expect("open sqlite");

    let mut group = c.benchmark_group("sqlite_append");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for n in [1usize, 64, 512, 4096] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("concurrent", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let store = store.clone();
                rt.block_on(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let appends = (0..n).map(|i| {
                            let store = store.clone();
                            tokio::spawn(async move {
                                store
                                    .append(NewMessage {
                                        reply_to_seq: None,
                                        chat_id: ChatId(1 + (i % 16) as i64),
                                        sender_id: UserId(1),
                                        msg_text: TEXT.to_owned(),
                                        sent_at: 0,
                                        timestamp: None,
                                        client_msg_id: None,
                                    })
                                    .await
                            })
                        });
                        for r in futures::future::join_all(appends).await {
                            r.expect("task").expect("append");
                        }
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, append_batches);
criterion_main!(benches);
