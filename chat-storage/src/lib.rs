//! Storage backends of the chat system, one module per backend behind a cargo feature.
//!
//! # Layout
//! - `sqlite` (feature `sqlite`, default): the embedded store; everything in one SQLite file.
//! - `mysql` (feature `mysql`): MySQL / MariaDB, a primary for writes and replicas for reads.
//! - `cassandra` (feature `cassandra`): messages only, partitioned by `(chat_id, bucket)`.
//! - `testing` (feature `testing`): the conformance suite every backend passes; public so that
//!   teams with their own backend can run it too.
//! - [`open`]: opens the stores a server is configured with, from URLs.

#[cfg(feature = "cassandra")]
pub mod cassandra;
#[cfg(feature = "mysql")]
pub mod mysql;
pub mod open;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;
