//! Exact in-process caches of the two reads in front of every request: `role(chat, user)`
//! (every send and read) and `session(token_hash)` (every REST call and WebSocket login).
//!
//! Why they exist: without them every send pays two trips to the blocking pool and two SQLite
//! read transactions just to learn that the token is valid and the sender still a member (the
//! profile of the 10,000 sends/s benchmark in `docs/benchmarks.md` put the role read alone at
//! ~15% of the server's CPU, plus the thread hand-offs). Roles and sessions change only through
//! this store's own writer (`create_chat`, `add_member`, `remove_member`, `set_role`,
//! `delete_session`), so the store can keep the answers exactly, with no TTL: every write
//! that changes them invalidates its keys **on the writer thread, after its `COMMIT` and
//! before its caller is answered**. So when `remove_member` or a logout returns, no later
//! lookup can answer from an entry older than it, and a caller that gave up waiting (a
//! dropped future) cannot leave a stale entry behind either. A session's expiry needs no
//! invalidation: the caller checks `expires_at` on every use.
//!
//! The one race left is a fill: a lookup misses, reads the database, and stores what it read.
//! If a removal commits and invalidates between that read and the store, the store would put
//! the pre-removal answer back. A generation counter closes it: a miss notes the generation
//! before it reads, every invalidation bumps it, and a fill is kept only if the generation has
//! not moved (so a fill may be dropped needlessly, never kept wrongly).
//!
//! The caches assume this process is the only writer of the file while the store is open,
//! which is how the server runs SQLite (one node, local broker). A membership or session
//! edited by another program on the same file would not be seen until restart; set
//! `SqliteOptions::role_cache` and `session_cache` to 0 for such setups.

use chat_core::{ChatId, Role, Session, TokenHash, UserId};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

/// The role cache: a chat and a user to their role, or `None` for a non-member.
pub(crate) type RoleCache = ExactCache<(ChatId, UserId), Option<Role>>;

/// The session cache: live sessions only (a miss for an unknown token is never kept, so
/// random tokens cannot crowd out real ones).
pub(crate) type SessionCache = ExactCache<TokenHash, Session>;

/// A cache kept exact by invalidation. Bounded: at capacity, a fill evicts an arbitrary entry.
#[derive(Debug)]
pub(crate) struct ExactCache<K, V> {
    /// Most entries kept; 0 disables the cache.
    capacity: usize,
    /// The entries and the generation, under one lock (held for a map operation only).
    state: Mutex<State<K, V>>,
}

/// What the lock guards.
#[derive(Debug)]
struct State<K, V> {
    /// Known answers.
    entries: HashMap<K, V>,
    /// Bumped by every invalidation.
    generation: u64,
}

/// What a lookup found.
pub(crate) enum Lookup<V> {
    /// The cached answer.
    Hit(V),
    /// Not cached: read the database, then [`ExactCache::fill`] with this ticket.
    Miss(Ticket),
}

/// The generation a miss saw; a fill with an outdated ticket is dropped.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket(u64);

impl<K: Eq + Hash + Copy, V: Clone> ExactCache<K, V> {
    /// A cache of at most `capacity` entries (0: every lookup misses and nothing is kept).
    pub(crate) fn new(capacity: usize) -> ExactCache<K, V> {
        ExactCache {
            capacity,
            state: Mutex::new(State {
                entries: HashMap::new(),
                generation: 0,
            }),
        }
    }

    /// The lock. Every critical section leaves the state consistent, so a poisoned lock is
    /// still usable.
    fn state(&self) -> MutexGuard<'_, State<K, V>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached answer for `key`, or a ticket to fill it.
    pub(crate) fn lookup(&self, key: K) -> Lookup<V> {
        let state = self.state();
        match state.entries.get(&key) {
            Some(v) => Lookup::Hit(v.clone()),
            None => Lookup::Miss(Ticket(state.generation)),
        }
    }

    /// Stores what the database answered, unless something changed since `ticket` was taken.
    pub(crate) fn fill(&self, ticket: Ticket, key: K, value: V) {
        if self.capacity == 0 {
            return;
        }
        let mut state = self.state();
        if state.generation != ticket.0 {
            return;
        }
        if state.entries.len() >= self.capacity && !state.entries.contains_key(&key) {
            if let Some(victim) = state.entries.keys().next().copied() {
                state.entries.remove(&victim);
            }
        }
        state.entries.insert(key, value);
    }

    /// Forgets each key, after a write that may have changed them committed.
    pub(crate) fn invalidate(&self, keys: impl IntoIterator<Item = K>) {
        let mut state = self.state();
        state.generation = state.generation.wrapping_add(1);
        for key in keys {
            state.entries.remove(&key);
        }
    }

    /// Forgets every entry.
    pub(crate) fn clear(&self) {
        let mut state = self.state();
        state.generation = state.generation.wrapping_add(1);
        state.entries.clear();
    }

    /// Entries held (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.state().entries.len()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn ids(c: i64, u: i64) -> (ChatId, UserId) {
        (ChatId::from(c), UserId::from(u))
    }

    #[test]
    fn a_fill_started_before_an_invalidation_is_dropped() {
        let cache = RoleCache::new(16);
        let (chat, user) = ids(1, 2);
        let Lookup::Miss(ticket) = cache.lookup((chat, user)) else {
            panic!("empty cache hit");
        };
        // A removal commits while the miss is reading the old answer from the database.
        cache.invalidate([(chat, user)]);
        cache.fill(ticket, (chat, user), Some(Role::Member));
        assert!(matches!(cache.lookup((chat, user)), Lookup::Miss(_)));
    }

    #[test]
    fn fills_hit_until_invalidated() {
        let cache = RoleCache::new(16);
        let (chat, user) = ids(1, 2);
        let Lookup::Miss(ticket) = cache.lookup((chat, user)) else {
            panic!("empty cache hit");
        };
        cache.fill(ticket, (chat, user), None);
        assert!(matches!(cache.lookup((chat, user)), Lookup::Hit(None)));
        cache.invalidate([(chat, user)]);
        assert!(matches!(cache.lookup((chat, user)), Lookup::Miss(_)));
    }

    #[test]
    fn capacity_bounds_the_entries_and_zero_disables() {
        let cache = RoleCache::new(4);
        for u in 0..100 {
            let (chat, user) = ids(1, u);
            if let Lookup::Miss(t) = cache.lookup((chat, user)) {
                cache.fill(t, (chat, user), Some(Role::Member));
            }
        }
        assert_eq!(cache.len(), 4);

        let off = RoleCache::new(0);
        let (chat, user) = ids(1, 2);
        if let Lookup::Miss(t) = off.lookup((chat, user)) {
            off.fill(t, (chat, user), Some(Role::Owner));
        }
        assert!(matches!(off.lookup((chat, user)), Lookup::Miss(_)));
    }
}
