//! Conformance suite on sqlite (being written).
