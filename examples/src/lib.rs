//! Shared helpers for the example programs: signing in (register on first use) and logging.
//!
//! The programs themselves live in `examples/` (`bot`, `loadgen`; the terminal client is the
//! `chat-term` crate); this library holds the load generator's core ([`loadgen`]), which the
//! test suite runs in-process, and re-exports what the programs share from `chat-term`.

pub mod loadgen;

// Signing in and logging live with the terminal client, which depends on the SDK only.
pub use chat_term::{init_tracing, sign_in};
