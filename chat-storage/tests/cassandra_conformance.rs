//! The message store conformance suite against a real Cassandra: every test in its own keyspace.
//!
//! Needs `CHAT_TEST_CASSANDRA_URL` (e.g. `cassandra://127.0.0.1:9042`) pointing at a node started
//! by `scripts/cassandra.sh start 1`; without it every test fails with instructions.

use chat_storage::cassandra::testing::{fresh_store, url_from_env};

chat_storage::message_store_conformance!(async {
    fresh_store(&url_from_env("CHAT_TEST_CASSANDRA_URL")).await
});

chat_storage::message_change_conformance!(async {
    fresh_store(&url_from_env("CHAT_TEST_CASSANDRA_URL")).await
});

chat_storage::message_activity_conformance!(async {
    fresh_store(&url_from_env("CHAT_TEST_CASSANDRA_URL")).await
});

chat_storage::message_search_conformance!(async {
    fresh_store(&url_from_env("CHAT_TEST_CASSANDRA_URL")).await
});
