//! One append at a time per chat on this node, waiting in process rather than on a connection.
//!
//! The appends of one chat serialise on its `chat_seq` row lock anyway. Without a gate, every
//! concurrent append to a hot chat takes a pooled connection and then waits on that lock inside
//! the database, so a few dozen sends to one chat (a WebSocket pipelines 32) hold the whole
//! primary pool: logins, membership checks and every other chat then time out waiting for a
//! connection. With the gate, an append takes a connection only when it is its chat's turn on
//! this node, so one chat holds at most one primary connection per node for appends, and the
//! rest of the pool stays free. Throughput of the hot chat is unchanged (it was serial already);
//! the wait moves from the database to a fair (FIFO) async mutex.

use chat_core::ChatId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use tokio::sync::OwnedMutexGuard;

/// The per-chat gates. Entries are weak: a chat nobody is appending to costs one map slot until
/// the next sweep, which runs whenever the map has doubled since the last one.
#[derive(Debug, Default)]
pub(crate) struct ChatGates {
    inner: Mutex<Gates>,
}

#[derive(Debug, Default)]
struct Gates {
    by_chat: HashMap<ChatId, Weak<tokio::sync::Mutex<()>>>,
    /// Sweep dead entries once the map reaches this size.
    sweep_at: usize,
}

/// Entries below which the map is never swept.
const MIN_SWEEP: usize = 1024;

impl ChatGates {
    /// Waits for `chat`'s turn on this node; the turn lasts as long as the guard.
    pub(crate) async fn enter(&self, chat: ChatId) -> OwnedMutexGuard<()> {
        let gate = {
            let mut gates = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            match gates.by_chat.get(&chat).and_then(Weak::upgrade) {
                Some(gate) => gate,
                None => {
                    if gates.by_chat.len() >= gates.sweep_at.max(MIN_SWEEP) {
                        gates.by_chat.retain(|_, gate| gate.strong_count() > 0);
                        gates.sweep_at = gates.by_chat.len() * 2;
                    }
                    let gate = Arc::new(tokio::sync::Mutex::new(()));
                    gates.by_chat.insert(chat, Arc::downgrade(&gate));
                    gate
                }
            }
        };
        gate.lock_owned().await
    }

    /// Chats with a live gate entry (tests).
    #[cfg(test)]
    fn live(&self) -> usize {
        let gates = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        gates
            .by_chat
            .values()
            .filter(|g| g.strong_count() > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_turn_per_chat_and_other_chats_pass() {
        let gates = Arc::new(ChatGates::default());
        let first = gates.enter(ChatId(1)).await;
        // Another chat is not held up.
        let other = tokio::time::timeout(Duration::from_secs(1), gates.enter(ChatId(2)))
            .await
            .expect("another chat waits for nobody");
        // The same chat waits until the first turn ends.
        let g = gates.clone();
        let second = tokio::spawn(async move { g.enter(ChatId(1)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "two turns of one chat at once");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), second)
            .await
            .expect("the second turn follows the first")
            .expect("task");
        drop((second, other));
        assert_eq!(gates.live(), 0, "no gate outlives its turns");
    }

    #[tokio::test]
    async fn dead_entries_are_swept() {
        let gates = ChatGates::default();
        for chat in 0..(MIN_SWEEP as i64 * 3) {
            drop(gates.enter(ChatId(chat)).await);
        }
        let len = gates.inner.lock().map(|g| g.by_chat.len()).unwrap_or(0);
        assert!(len <= MIN_SWEEP, "{len} entries kept for idle chats");
    }
}
