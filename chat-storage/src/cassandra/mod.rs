//! The Cassandra message store (being written).
