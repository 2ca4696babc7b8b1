//! The metadata store conformance suite on [`CachedMetadataStore`]: the Redis and in-process
//! cache in front of a fresh SQLite store, so the cache is held to the same contract as every
//! store it fronts (a removal or logout in force at once, reads of what was just written).
//!
//! Needs a Redis: `CHAT_TEST_REDIS_URL` (set by `scripts/test.sh`, or
//! `eval "$(scripts/redis.sh env)"` after `scripts/redis.sh start`). Each test gets its own key
//! prefix, so tests share the Redis without meeting each other's keys.

use chat_server::cache::{CacheConfig, CachedMetadataStore};
use chat_storage::sqlite::SqliteStore;
use chat_storage::testing::Guarded;
use std::sync::Arc;

/// The Redis to test against, or a panic that says how to start one (never a silent skip).
fn redis_url() -> String {
    std::env::var("CHAT_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "CHAT_TEST_REDIS_URL is not set: run scripts/redis.sh start and \
             eval \"$(scripts/redis.sh env)\", or run scripts/test.sh"
        )
    })
}

/// A cache over a fresh SQLite store, with a key prefix of its own.
async fn fresh() -> Guarded<CachedMetadataStore, tempfile::TempDir> {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = SqliteStore::open(dir.path().join("chat.db")).expect("open sqlite");
    let prefix = format!("conf{}:", rand_suffix());
    let cache = CachedMetadataStore::connect(
        Arc::new(inner),
        CacheConfig {
            redis_url: redis_url(),
            prefix,
            ..CacheConfig::default()
        },
    )
    .await
    .expect("connect the cache to redis");
    Guarded::new(cache, dir)
}

/// A random hex suffix.
fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", nanos, std::process::id())
}

chat_storage::metadata_store_conformance!(fresh());
