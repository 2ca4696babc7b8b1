//! The load generator's core, as a library so the test suite can run every scenario in-process
//! against a real server (the `loadgen` example is only its command line).
//!
//! Every scenario drives a running server through the real protocol: REST for setup, the
//! WebSocket for live traffic. Latencies go into HDR histograms (microseconds).
//!
//! # Layout
//! - [`api`]: the REST calls the scenarios need (register, log in, create chats, send, fetch).
//! - [`ws`]: raw WebSocket connections, optionally from a chosen 127.0.0.x source address.
//! - [`stats`]: latency histograms and their JSON summaries.
//! - [`sysmon`]: a process's CPU time and RSS from `/proc` (the server's, by PID, and our own).
//! - [`fanout`]: U users in G groups of K, open-loop sends at a fixed rate, send→deliver and
//!   send→ack latency.
//! - [`changes`]: edits and reactions at a fixed rate over REST, change→update latency on
//!   every member's WebSocket.
//! - [`connections`]: N idle authenticated WebSockets; the server's RSS per connection.
//! - [`history`]: paging back through a long chat; latency per page.
//! - [`writes`]: sustained acked appends per second, through the server or straight into a store
//!   (which also seeds the history scenario's chat).
//! - [`peer`] / [`peers`]: the side-by-side scenarios (publish into groups over HTTP, idle
//!   subscribed connections) against chat-server or Centrifugo, the same code for both;
//!   [`centrifugo`]: Centrifugo's client protocol, tokens and server API; [`peers_table`]: the
//!   side-by-side markdown table of their reports.
//! - [`report`]: the JSON result file.
//! - [`plot`]: the percentile plot (PNG).
//! - [`progress`]: the progress bar.
//! - [`serve`]: the server library configured for load tests (`loadgen serve`).

pub mod api;
pub mod centrifugo;
pub mod changes;
pub mod chatlist;
pub mod connections;
pub mod fanout;
pub mod history;
pub mod peer;
pub mod peers;
pub mod peers_table;
pub mod plot;
pub mod progress;
pub mod report;
pub mod serve;
pub mod stats;
pub mod sysmon;
pub mod writes;
pub mod ws;

/// A 100-byte filler: the seed's average message is about 100 bytes.
pub(crate) const FILLER: &str =
    "the quick brown fox jumps over the lazy dog; the quick brown fox jumps over the lazy dog! 0123456789";

/// A message text of exactly `bytes` bytes (at least the head) starting with `head`.
pub(crate) fn padded_text(head: &str, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes.max(head.len()));
    s.push_str(head);
    while s.len() < bytes {
        let room = bytes - s.len();
        s.push_str(&FILLER[..room.min(FILLER.len())]);
    }
    s
}

/// A prefix that makes this run's e-mail addresses unique, so runs against the same server do
/// not collide with each other's accounts.
pub fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:04x}", nanos / 1_000_000, std::process::id() & 0xffff)
}

/// Raises this process's open-file limit as far as the hard limit allows and returns it.
/// Thousands of sockets need it; the hard limit itself can only be raised by the operator.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise RLIMIT_NOFILE");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_text_has_the_asked_length() {
        assert_eq!(padded_text("lg 1 2 ", 100).len(), 100);
        assert_eq!(padded_text("lg 1 2 ", 250).len(), 250);
        assert_eq!(padded_text("lg 1 2 ", 3), "lg 1 2 ");
    }
}
