//! Conformance suite on cassandra (being written).
