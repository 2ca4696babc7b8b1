//! Conformance suite on mysql (being written).
