//! Chat server library (placeholder).
