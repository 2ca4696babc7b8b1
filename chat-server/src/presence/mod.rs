//! Presence: who is online, across every node of a cluster (protocol "Additions": typing and
//! presence).
//!
//! A user is online while any connection of theirs is open on any node. Each node counts its
//! own connections per user (`Presence`); when a user's first connection opens here, the
//! node tells the shared [`PresenceStore`]; when the last one closes, it waits a grace period
//! (a reconnect within it is not a flap) and then tells the store the user left this node. The
//! store answers whether that changed the user's state on the whole cluster, and only then the
//! node announces it: an [`Event::Presence`] on the topic of every chat of the user, so every
//! node with a member of one of those chats delivers it to its local members.
//!
//! A node that dies cannot say its users left. So every node refreshes a heartbeat and its
//! users' entries in the store every [`HEARTBEAT`]; entries live [`ENTRY_TTL`], and every node
//! looks for nodes whose heartbeat expired and announces their users offline (one node wins the
//! claim for each dead node). A dead node's users show offline in `GET /v1/presence` within
//! [`ENTRY_TTL`] and are announced within `ENTRY_TTL + HEARTBEAT` (25 s), inside the contract's
//! 30 s.
//!
//! Stores: [`LocalPresence`] (one node, in process) and, with the `redis` feature,
//! [`redis::RedisPresence`] (a cluster, in the broker's Redis).
//!
//! Presence work runs on one task per node, in order, so the store sees a user's arrivals and
//! departures here in the order they happened; nothing on the connection path waits for it.

#[cfg(feature = "redis")]
pub mod redis;

use async_trait::async_trait;
use chat_core::ids::now_millis;
use chat_core::protocol::PresenceView;
use chat_core::{Broker, Event, MetadataStore, Millis, Result, Topic, UserId};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often a node refreshes its heartbeat and its users' entries, and looks for dead nodes.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a node's entries live without a refresh: the bound after which a dead node's users
/// show offline.
pub const ENTRY_TTL: Duration = Duration::from_secs(20);

/// Where a cluster keeps who is online on which node.
#[async_trait]
pub trait PresenceStore: Send + Sync + std::fmt::Debug + 'static {
    /// `user` has a connection on `node` now. Returns whether they were offline on every node
    /// before (so the change is news).
    async fn arrive(&self, node: &str, user: UserId, now: Millis) -> Result<bool>;

    /// `user` has no connection on `node` any more. Returns whether they are now offline on
    /// every node; then `now` is their `last_seen`.
    async fn leave(&self, node: &str, user: UserId, now: Millis) -> Result<bool>;

    /// Refreshes `node`'s heartbeat and the entries of its `users`.
    async fn heartbeat(&self, node: &str, users: &[UserId], now: Millis) -> Result<()>;

    /// Finds nodes whose heartbeat expired (and, once, `node`'s own entries from before a
    /// restart when `include_self`), drops their entries, and returns the users who are now
    /// offline everywhere with their `last_seen`. Each dead node is claimed by one caller.
    async fn reap(
        &self,
        node: &str,
        include_self: bool,
        now: Millis,
    ) -> Result<Vec<(UserId, Millis)>>;

    /// The presence of each user, in the order asked.
    async fn get(&self, users: &[UserId], now: Millis) -> Result<Vec<PresenceView>>;

    /// Checks that the store answers.
    async fn health(&self) -> Result<()> {
        Ok(())
    }
}

/// Presence of a single node, in process.
#[derive(Debug, Default)]
pub struct LocalPresence {
    users: Mutex<HashMap<UserId, (bool, Option<Millis>)>>,
}

impl LocalPresence {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, (bool, Option<Millis>)>> {
        crate::lock(&self.users)
    }
}

#[async_trait]
impl PresenceStore for LocalPresence {
    async fn arrive(&self, _node: &str, user: UserId, _now: Millis) -> Result<bool> {
        let mut users = self.users();
        let e = users.entry(user).or_insert((false, None));
        let news = !e.0;
        e.0 = true;
        Ok(news)
    }

    async fn leave(&self, _node: &str, user: UserId, now: Millis) -> Result<bool> {
        let mut users = self.users();
        let e = users.entry(user).or_insert((false, None));
        let news = e.0;
        *e = (false, Some(now));
        Ok(news)
    }

    async fn heartbeat(&self, _node: &str, _users: &[UserId], _now: Millis) -> Result<()> {
        Ok(())
    }

    async fn reap(&self, _: &str, _: bool, _: Millis) -> Result<Vec<(UserId, Millis)>> {
        Ok(Vec::new())
    }

    async fn get(&self, users: &[UserId], _now: Millis) -> Result<Vec<PresenceView>> {
        let map = self.users();
        Ok(users
            .iter()
            .map(|&user_id| {
                let (online, last_seen) = map.get(&user_id).copied().unwrap_or((false, None));
                PresenceView::new(user_id, online, last_seen)
            })
            .collect())
    }
}

/// This node's connections per user.
#[derive(Default)]
struct Local {
    /// Open connections per user; a user at 0 is in the grace period.
    conns: HashMap<UserId, usize>,
    /// Bumped on every departure, so a grace timer knows whether it is still the latest.
    generation: HashMap<UserId, u64>,
}

enum Work {
    Arrive(UserId),
    /// Ends the grace period of the departure with this generation.
    Leave(UserId, u64),
    Tick {
        first: bool,
    },
}

/// This node's side of presence: counts connections, applies the grace period, keeps the
/// store up to date and announces changes.
pub(crate) struct Presence {
    local: Arc<Mutex<Local>>,
    work: mpsc::UnboundedSender<Work>,
    grace: Duration,
    store: Arc<dyn PresenceStore>,
}

impl Presence {
    /// Starts the node's presence task (call inside a tokio runtime).
    pub(crate) fn start(
        node: String,
        store: Arc<dyn PresenceStore>,
        broker: Arc<dyn Broker>,
        metadata: Arc<dyn MetadataStore>,
        grace: Duration,
    ) -> Presence {
        let local = Arc::new(Mutex::new(Local::default()));
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Worker {
            node,
            store: store.clone(),
            broker,
            metadata,
            local: local.clone(),
            on_store: HashSet::new(),
        };
        tokio::spawn(worker.run(rx));
        // Weak, so the ticks stop once the server (holding `tx`) is gone.
        let ticks = tx.downgrade();
        tokio::spawn(async move {
            let mut first = true;
            let mut every = tokio::time::interval(HEARTBEAT);
            loop {
                every.tick().await;
                let Some(tx) = ticks.upgrade() else { return };
                if tx.send(Work::Tick { first }).is_err() {
                    return;
                }
                first = false;
            }
        });
        Presence {
            local,
            work: tx,
            grace,
            store,
        }
    }

    /// A connection of `user` opened on this node.
    pub(crate) fn connected(&self, user: UserId) {
        let first = {
            let mut l = crate::lock(&self.local);
            let n = l.conns.entry(user).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            let _ = self.work.send(Work::Arrive(user));
        }
    }

    /// A connection of `user` closed on this node. After the grace period, if no other one
    /// opened here meanwhile, the user leaves this node.
    pub(crate) fn disconnected(&self, user: UserId) {
        let generation = {
            let mut l = crate::lock(&self.local);
            let Some(n) = l.conns.get_mut(&user) else {
                return;
            };
            *n = n.saturating_sub(1);
            if *n > 0 {
                return;
            }
            let g = l.generation.entry(user).or_insert(0);
            *g += 1;
            *g
        };
        let work = self.work.clone();
        let grace = self.grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = work.send(Work::Leave(user, generation));
        });
    }

    /// The presence of `users` (the caller already left out strangers).
    pub(crate) async fn get(&self, users: &[UserId]) -> Result<Vec<PresenceView>> {
        self.store.get(users, now_millis()).await
    }
}

/// The task that talks to the store, one change at a time.
struct Worker {
    node: String,
    store: Arc<dyn PresenceStore>,
    broker: Arc<dyn Broker>,
    metadata: Arc<dyn MetadataStore>,
    local: Arc<Mutex<Local>>,
    /// Users this node has told the store it has.
    on_store: HashSet<UserId>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Work>) {
        while let Some(work) = rx.recv().await {
            match work {
                Work::Arrive(user) => self.arrive(user).await,
                Work::Leave(user, generation) => self.leave(user, generation).await,
                Work::Tick { first } => self.tick(first).await,
            }
        }
    }

    async fn arrive(&mut self, user: UserId) {
        let still_here = crate::lock(&self.local)
            .conns
            .get(&user)
            .is_some_and(|n| *n > 0);
        if !still_here || self.on_store.contains(&user) {
            // Gone again before this ran (its departure follows), or a reconnect within the
            // grace period: nothing changed for anyone else.
            return;
        }
        let now = now_millis();
        match self.store.arrive(&self.node, user, now).await {
            Ok(news) => {
                self.on_store.insert(user);
                if news {
                    self.announce(user, true, Some(now)).await;
                }
            }
            Err(e) => tracing::warn!(%user, error = %e, "recording presence failed"),
        }
    }

    async fn leave(&mut self, user: UserId, generation: u64) {
        {
            let mut l = crate::lock(&self.local);
            let current = l.generation.get(&user).copied().unwrap_or(0);
            let idle = l.conns.get(&user).is_none_or(|n| *n == 0);
            if current != generation || !idle {
                return;
            }
            l.conns.remove(&user);
            l.generation.remove(&user);
        }
        if !self.on_store.remove(&user) {
            return;
        }
        let now = now_millis();
        match self.store.leave(&self.node, user, now).await {
            Ok(true) => self.announce(user, false, Some(now)).await,
            Ok(false) => {}
            Err(e) => tracing::warn!(%user, error = %e, "recording a departure failed"),
        }
    }

    async fn tick(&mut self, first: bool) {
        let now = now_millis();
        let users: Vec<UserId> = self.on_store.iter().copied().collect();
        if let Err(e) = self.store.heartbeat(&self.node, &users, now).await {
            tracing::warn!(error = %e, "presence heartbeat failed");
        }
        match self.store.reap(&self.node, first, now).await {
            Ok(gone) => {
                for (user, last_seen) in gone {
                    // Reaping this node's own entries from before a restart must not take
                    // away a user who is connected here again.
                    if self.on_store.contains(&user) {
                        if let Err(e) = self.store.arrive(&self.node, user, now).await {
                            tracing::warn!(%user, error = %e, "recording presence failed");
                        }
                        continue;
                    }
                    self.announce(user, false, Some(last_seen)).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "looking for dead nodes failed"),
        }
    }

    /// Tells every chat of `user` about the change.
    async fn announce(&self, user: UserId, online: bool, last_seen: Option<Millis>) {
        let chats = match self.metadata.chats_of_user(user).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%user, error = %e, "reading chats to announce presence failed");
                return;
            }
        };
        for (chat, _) in chats {
            let event = Event::Presence {
                chat_id: chat.chat_id,
                user_id: user,
                online,
                last_seen,
            };
            crate::ops::publish_with(&*self.broker, Topic::Chat(chat.chat_id), event).await;
        }
    }
}
