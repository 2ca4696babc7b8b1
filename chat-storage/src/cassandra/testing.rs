//! Test helpers for the Cassandra store (features `cassandra` + `testing`).

use super::{CassandraConfig, CassandraMessageStore};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// `base` (a `cassandra://hosts[:port][/keyspace][?params]` URL) with its keyspace replaced by a
/// new, unique one (`t<time><pid><counter>`), keeping hosts and parameters. Each call names a
/// keyspace no earlier call (in any process) named, so tests can run in parallel against one
/// cluster; `connect` creates it.
pub fn fresh_keyspace_url(base: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let keyspace = format!("t{micros}_{}_{n}", std::process::id());
    let (without_query, query) = match base.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (base, None),
    };
    let scheme_end = without_query.find("://").map_or(0, |i| i + 3);
    let authority = match without_query[scheme_end..].find('/') {
        Some(slash) => &without_query[..scheme_end + slash],
        None => without_query,
    };
    match query {
        Some(q) => format!("{authority}/{keyspace}?{q}"),
        None => format!("{authority}/{keyspace}"),
    }
}

/// The base URL of the test cluster from the environment variable `var` (e.g.
/// `CHAT_TEST_CASSANDRA_URL`).
///
/// # Panics
/// When the variable is unset or empty, with the commands that start a node: tests against
/// Cassandra fail loudly rather than skip.
pub fn url_from_env(var: &str) -> String {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "{var} is not set. These tests need a real Cassandra: run\n  \
             scripts/cassandra.sh start 1   # or: start 3 for the cluster tests\n\
             and then e.g.\n  \
             {var}=cassandra://127.0.0.1:9042 cargo test -p chat-storage \
             --features cassandra,testing --test cassandra_conformance"
        ),
    }
}

/// A store connected to a fresh, unique keyspace of the cluster `base` names.
///
/// # Panics
/// When the URL is malformed or the cluster cannot be reached (a test harness).
pub async fn fresh_store(base: &str) -> CassandraMessageStore {
    let url = fresh_keyspace_url(base);
    let config =
        CassandraConfig::from_url(&url).unwrap_or_else(|e| panic!("bad test URL {url}: {e}"));
    CassandraMessageStore::connect(config)
        .await
        .unwrap_or_else(|e| panic!("cannot open the Cassandra store at {url}: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cassandra::CassandraConfig;

    #[test]
    fn keeps_hosts_and_parameters_and_is_unique() {
        let a =
            fresh_keyspace_url("cassandra://127.0.0.1,127.0.0.2:9042/chat?replication_factor=3");
        let b =
            fresh_keyspace_url("cassandra://127.0.0.1,127.0.0.2:9042/chat?replication_factor=3");
        assert_ne!(a, b);
        let ca = CassandraConfig::from_url(&a).unwrap();
        assert_eq!(ca.nodes, vec!["127.0.0.1:9042", "127.0.0.2:9042"]);
        assert!(ca.keyspace.starts_with('t'));
        assert_ne!(ca.keyspace, "chat");
        assert!(a.ends_with("?replication_factor=3"));
        let c = fresh_keyspace_url("cassandra://127.0.0.1:9042");
        assert!(CassandraConfig::from_url(&c).is_ok(), "{c}");
    }
}
