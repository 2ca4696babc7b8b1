//! The hub: this node's registry of live WebSocket connections and the fan-out of broker events
//! to them.
//!
//! It maps each connected user to their local connections and each chat to its locally
//! connected members, keeps the broker subscribed to exactly the topics it can deliver
//! (`Topic::User` of every connected user, `Topic::Chat` of every chat with a connected member),
//! and runs the one task that consumes [`Broker::events`]. A message event is serialized once and
//! the same bytes are queued to every recipient connection. Queues are bounded: a connection
//! whose queue is full is closed as a slow consumer instead of letting memory grow.
//!
//! # Resync: when the broker may have lost events
//! The broker is a wake-up path, not the record. For every chat with a local member the hub
//! keeps the highest `seq` it has forwarded (starting from the store's `last_seq` when the chat
//! got its first local member here). On [`BrokerEvent::Resync`] (a Redis restart, a subscriber
//! reconnect, a failed publish anywhere in the cluster) it, inline and before any later event:
//! 1. re-reads the chats of every locally connected user, so membership changes whose events
//!    were lost take effect before anything else is delivered (a removed member gets nothing
//!    more, an added one gets the chat), and fixes the broker subscriptions to match;
//! 2. reads `last_seq` of every local chat (one batched call) and, where the store is ahead,
//!    fetches the messages after the highest forwarded `seq` (one page of 500) plus the newest
//!    one, and fans them out as ordinary `message` frames.
//!
//! So every client ends with every message, in order, even if nothing is sent after an outage:
//! clients drop duplicates by `seq`, and a client that sees a `seq` beyond a hole fetches the
//! hole itself (which is also why one page plus the newest message suffices after a long
//! outage). If a store is down during a resync, it is retried with backoff until it succeeds;
//! live events keep flowing meanwhile.

use crate::metrics::Metrics;
use axum::extract::ws::Utf8Bytes;
use chat_core::protocol::ServerFrame;
use chat_core::{
    Broker, BrokerEvent, BrokerStream, ChatId, Event, FetchQuery, Message, MessageStore,
    MetadataStore, Result, Seq, Topic, UserId,
};
use futures::task::AtomicWaker;
use futures::{FutureExt as _, StreamExt};
use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// Messages fetched per chat in one resync (the contract's page maximum); beyond it the newest
/// message is sent too, and clients fetch the hole in between themselves.
const RESYNC_PAGE: u32 = 500;
/// Membership reads running at once during a resync.
const RESYNC_PARALLEL: usize = 16;
/// Longest one resync may hold up live delivery before it is abandoned and retried.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// First and longest delay before retrying a resync that failed (a store was down).
const RESYNC_RETRY_MIN: Duration = Duration::from_millis(200);
const RESYNC_RETRY_MAX: Duration = Duration::from_secs(5);

/// WebSocket close codes the server uses.
pub(crate) mod close_code {
    /// Going away: idle timeout, or the server stops for good.
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub(crate) const PROTOCOL: u16 = 1002;
    /// A data type the server does not accept (binary frames).
    pub(crate) const UNSUPPORTED: u16 = 1003;
    /// A text frame that is not UTF-8.
    pub(crate) const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation: slow consumer, revoked session.
    pub(crate) const POLICY: u16 = 1008;
    /// A frame or message over the size limit.
    pub(crate) const TOO_BIG: u16 = 1009;
    /// The server hit a problem (a backend is down while setting up the connection).
    pub(crate) const INTERNAL: u16 = 1011;
    /// The server is restarting; reconnect.
    pub(crate) const RESTART: u16 = 1012;
}

/// Why the server closes a connection: the close frame's code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CloseReason {
    /// WebSocket close code.
    pub(crate) code: u16,
    /// Human-readable reason (at most 123 bytes, the close frame's limit).
    pub(crate) reason: String,
}

/// What happened to a frame offered to a connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push {
    /// Queued for the connection's task to write.
    Queued,
    /// The queue was full: the connection is now closing as a slow consumer.
    SlowConsumer,
    /// The connection is already closing; the frame was dropped.
    Closing,
}

/// One live WebSocket connection, as the hub and its task share it.
///
/// It carries the connection's outbound queue itself instead of a channel: an idle connection
/// is the common case (most of a node's memory is idle sockets), and a `VecDeque` allocates
/// nothing until the first frame is queued, where a tokio channel allocates ~1.5 KiB up front
/// (its first block of 32 slots and its cache-padded state). See docs/benchmarks.md.
pub(crate) struct Connection {
    /// Unique within this node.
    pub(crate) id: u64,
    /// Whose connection.
    pub(crate) user_id: UserId,
    /// SHA-256 of the token it authenticated with, so a logout closes exactly the connections
    /// of that session.
    token_hash: [u8; 32],
    /// Most frames queued before the connection is closed as a slow consumer.
    capacity: usize,
    /// The queue and the closing state, behind one std mutex (never held across an await).
    outbox: Mutex<Outbox>,
    /// The connection's task, woken when a frame is queued or the connection must close.
    waker: AtomicWaker,
    /// Set when the socket may have become readable: the connection is itself the waker its
    /// task gives the socket's read side (see the `Wake` impl), so a wake-up for a queued frame
    /// (the common one when fanning out) can skip a read attempt that would find nothing.
    readable: AtomicBool,
}

/// What a connection's task has still to do, as [`Connection`] keeps it.
#[derive(Default)]
struct Outbox {
    /// Pre-serialized frames, oldest first. Bounded by [`Connection::capacity`].
    frames: VecDeque<Utf8Bytes>,
    /// Set when the connection must close; frames offered afterwards are dropped.
    closing: bool,
    /// The first reason given for closing (later ones lose); `None` closes without a frame.
    close_reason: Option<CloseReason>,
}

impl Connection {
    /// A connection whose outbound queue holds at most `capacity` frames.
    pub(crate) fn new(
        id: u64,
        user_id: UserId,
        token_hash: [u8; 32],
        capacity: usize,
    ) -> Arc<Connection> {
        Arc::new(Connection {
            id,
            user_id,
            token_hash,
            capacity: capacity.max(1),
            outbox: Mutex::new(Outbox::default()),
            waker: AtomicWaker::new(),
            readable: AtomicBool::new(true),
        })
    }

    /// Offers a frame without waiting. A full queue closes the connection (policy violation):
    /// the client resumes from its last `seq` after reconnecting.
    pub(crate) fn push(&self, frame: Utf8Bytes, metrics: &Metrics) -> Push {
        let mut outbox = lock(&self.outbox);
        if outbox.closing {
            return Push::Closing;
        }
        if outbox.frames.len() >= self.capacity {
            drop(outbox);
            if self.close(close_code::POLICY, "slow consumer: outbound queue full") {
                metrics
                    .slow_consumer_disconnects
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    user_id = %self.user_id,
                    conn = self.id,
                    "closing slow consumer"
                );
            }
            return Push::SlowConsumer;
        }
        outbox.frames.push_back(frame);
        // Only the first frame of a burst needs to wake the task: it takes every queued frame
        // before it waits again, and the waker it left is consumed by this wake-up.
        let first = outbox.frames.len() == 1;
        drop(outbox);
        metrics.deliveries.fetch_add(1, Ordering::Relaxed);
        if first {
            self.waker.wake();
        }
        Push::Queued
    }

    /// Asks the connection to close with this code and reason. Returns whether this call was
    /// the first to do so.
    pub(crate) fn close(&self, code: u16, reason: &str) -> bool {
        let mut outbox = lock(&self.outbox);
        if outbox.close_reason.is_some() {
            return false;
        }
        outbox.close_reason = Some(CloseReason {
            code,
            reason: truncate_reason(reason),
        });
        outbox.closing = true;
        drop(outbox);
        self.waker.wake();
        true
    }

    /// Stops the connection's task without a close frame (the peer already closed, or is
    /// gone), and drops whatever is still queued: the client resumes by `seq`.
    pub(crate) fn stop(&self) {
        let mut outbox = lock(&self.outbox);
        outbox.closing = true;
        // Frees the queue's buffer too, for the time the connection lingers in the hub.
        let frames = std::mem::take(&mut outbox.frames);
        drop(outbox);
        drop(frames);
        self.waker.wake();
    }

    /// Whether the connection has been asked to close.
    pub(crate) fn is_closing(&self) -> bool {
        lock(&self.outbox).closing
    }

    /// The reason given to [`Connection::close`], if any.
    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        lock(&self.outbox).close_reason.clone()
    }

    /// Whether this connection authenticated with the token whose hex SHA-256 is `hash`.
    pub(crate) fn has_token(&self, hash: &str) -> bool {
        crate::auth::hex(&self.token_hash) == hash
    }

    /// Registers the connection task's waker: a frame queued or a close asked after this call
    /// wakes it. Call before looking at the queue, so nothing falls in between.
    pub(crate) fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    /// Takes the oldest queued frame, if any.
    pub(crate) fn pop(&self) -> Option<Utf8Bytes> {
        let mut outbox = lock(&self.outbox);
        let frame = outbox.frames.pop_front();
        // A burst grew the queue; give the memory back once it is drained, so a connection
        // that was once busy does not keep its peak queue while idle.
        if outbox.frames.is_empty() && outbox.frames.capacity() > IDLE_QUEUE_CAPACITY {
            outbox.frames = VecDeque::new();
        }
        frame
    }

    /// Whether a frame is queued.
    pub(crate) fn has_frames(&self) -> bool {
        !lock(&self.outbox).frames.is_empty()
    }

    /// Whether the socket may have become readable since the last call (then a read must be
    /// attempted; it registers the connection as the read side's waker again).
    pub(crate) fn take_readable(&self) -> bool {
        self.readable.swap(false, Ordering::AcqRel)
    }

    /// Asks for another read attempt (the last one found data, so there may be more).
    pub(crate) fn set_readable(&self) {
        self.readable.store(true, Ordering::Release);
    }

    /// Takes the oldest queued frame (tests: what the connection's task would write next).
    #[cfg(test)]
    pub(crate) fn try_recv(&self) -> std::result::Result<Utf8Bytes, &'static str> {
        self.pop().ok_or("no frame queued")
    }
}

/// The waker a connection's task gives the socket's read side: it records that the socket may
/// be readable, then wakes the task. Being the connection itself, it costs no allocation.
impl std::task::Wake for Connection {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.readable.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// Queue slots a drained connection may keep (32 B each): enough for the usual trickle of
/// frames without reallocating, small against the rest of an idle connection.
const IDLE_QUEUE_CAPACITY: usize = 8;

/// A close frame's reason must fit in 123 bytes; cut on a character boundary.
pub(crate) fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// Locks a std mutex, using the data even if a panic poisoned it: every critical section here
/// leaves the maps consistent between statements that could panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// One user with at least one connection to this node.
#[derive(Default)]
struct LocalUser {
    /// The user's connections, by id, each with whether its chat list is loaded yet.
    conns: HashMap<u64, (Arc<Connection>, bool)>,
    /// The chats the user belongs to, as far as this node knows.
    chats: HashSet<ChatId>,
    /// Membership changes seen while a connection was loading the user's chat list from the
    /// store (`true` = added). Replayed on top of that list so a change racing with the load is
    /// not lost.
    log: Vec<(ChatId, bool)>,
}

impl LocalUser {
    fn loading(&self) -> bool {
        self.conns.values().any(|(_, loaded)| !loaded)
    }
}

/// The maps, behind one std mutex (never held across an await).
#[derive(Default)]
struct HubState {
    users: HashMap<UserId, LocalUser>,
    /// Each chat's locally connected members. Never holds an empty set.
    chats: HashMap<ChatId, HashSet<UserId>>,
    /// For chats in `chats`: the highest `seq` forwarded here, or the store's `last_seq` when
    /// the chat got its first local member. A resync fetches what came after it.
    seqs: HashMap<ChatId, Seq>,
    /// Every local connection of each chat's members, as [`HubState::recipients`] last
    /// computed it; dropped whenever the chat's members or one of their connections change.
    /// Fan-out reads it once per message instead of walking the members' maps and building a
    /// list per message (that walk was ~6% of a worker's time in the fan-out profile).
    recipients: HashMap<ChatId, Arc<[Arc<Connection>]>>,
}

impl HubState {
    fn wants(&self, topic: Topic) -> bool {
        match topic {
            Topic::User(u) => self.users.contains_key(&u),
            Topic::Chat(c) => self.chats.contains_key(&c),
        }
    }

    /// Records a membership change learnt from an event: applies it and, while a chat list is
    /// being loaded for the user, logs it for replay. Returns whether anything changed.
    fn set_member(&mut self, chat: ChatId, user: UserId, member: bool) -> bool {
        if let Some(local) = self.users.get_mut(&user) {
            if local.loading() {
                local.log.push((chat, member));
            }
        }
        self.apply_member(chat, user, member)
    }

    /// Records that `user` (connected here) is or is not a member of `chat`. Returns whether
    /// anything changed.
    fn apply_member(&mut self, chat: ChatId, user: UserId, member: bool) -> bool {
        let Some(local) = self.users.get_mut(&user) else {
            return false;
        };
        if member {
            let added = local.chats.insert(chat);
            if self.chats.entry(chat).or_default().insert(user) {
                self.recipients.remove(&chat);
            }
            added
        } else {
            let removed = local.chats.remove(&chat);
            self.drop_member(chat, user);
            removed
        }
    }

    /// Takes `user` out of `chat`'s local members, forgetting the chat when nobody is left.
    fn drop_member(&mut self, chat: ChatId, user: UserId) {
        if let Some(set) = self.chats.get_mut(&chat) {
            if set.remove(&user) {
                self.recipients.remove(&chat);
            }
            if set.is_empty() {
                self.chats.remove(&chat);
                self.seqs.remove(&chat);
            }
        }
    }

    /// Raises a local chat's forwarded `seq` (chats without local members are not tracked).
    fn saw(&mut self, chat: ChatId, seq: Seq) {
        if self.chats.contains_key(&chat) {
            let s = self.seqs.entry(chat).or_insert(seq);
            if *s < seq {
                *s = seq;
            }
        }
    }

    /// Starts tracking a local chat at `seq` unless it is tracked already (then what was
    /// forwarded stands: raising it could skip messages still in flight).
    fn track(&mut self, chat: ChatId, seq: Seq) {
        if self.chats.contains_key(&chat) {
            self.seqs.entry(chat).or_insert(seq);
        }
    }

    /// Replaces what this node knows of `user`'s chats with `wanted` (a fresh read of
    /// committed state), collecting the topics whose subscription may change.
    fn replace_chats(&mut self, user: UserId, wanted: HashSet<ChatId>, topics: &mut Vec<Topic>) {
        let Some(local) = self.users.get(&user) else {
            return;
        };
        let old: Vec<ChatId> = local.chats.iter().copied().collect();
        for c in old {
            if !wanted.contains(&c) && self.apply_member(c, user, false) {
                topics.push(Topic::Chat(c));
            }
        }
        for c in wanted {
            self.apply_member(c, user, true);
            topics.push(Topic::Chat(c));
        }
    }

    /// Forgets the cached recipients of every chat of `user`, whose connections changed.
    fn connections_changed(&mut self, user: UserId) {
        if let Some(local) = self.users.get(&user) {
            for chat in &local.chats {
                self.recipients.remove(chat);
            }
        }
    }

    /// Every local connection of `chat`'s members (empty when it has none here), cached until
    /// they change.
    fn recipients(&mut self, chat: ChatId) -> Arc<[Arc<Connection>]> {
        if let Some(r) = self.recipients.get(&chat) {
            return r.clone();
        }
        let Some(members) = self.chats.get(&chat) else {
            return Arc::from([]);
        };
        let conns: Arc<[Arc<Connection>]> = self.connections_of(members).into();
        self.recipients.insert(chat, conns.clone());
        conns
    }

    /// Every connection of the given users.
    fn connections_of<'a>(
        &'a self,
        users: impl IntoIterator<Item = &'a UserId>,
    ) -> Vec<Arc<Connection>> {
        users
            .into_iter()
            .filter_map(|u| self.users.get(u))
            .flat_map(|l| l.conns.values().map(|(c, _)| c.clone()))
            .collect()
    }
}

/// The registry of this node's connections and the consumer of its broker events.
pub(crate) struct Hub {
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    /// Read on a resync: the chats of connected users.
    metadata: Arc<dyn MetadataStore>,
    /// Read on a resync and when a chat gets its first local member: `last_seq`, missed pages.
    messages: Arc<dyn MessageStore>,
    /// Set when a resync failed (a store was down); the event loop retries it.
    resync_pending: AtomicBool,
    state: Mutex<HubState>,
    /// Topics the broker is subscribed to. A tokio mutex because it is held across the
    /// broker's `subscribe`/`unsubscribe` calls, which serializes them so concurrent joins and
    /// leaves cannot interleave into a wrong final subscription.
    subscribed: tokio::sync::Mutex<HashSet<Topic>>,
    /// Number of registered connections, watched by shutdown to know when all have closed.
    count: watch::Sender<usize>,
    next_id: AtomicU64,
}

impl Hub {
    /// An empty hub delivering the events of `broker`, catching up from the stores on a
    /// resync.
    pub(crate) fn new(
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        metadata: Arc<dyn MetadataStore>,
        messages: Arc<dyn MessageStore>,
    ) -> Hub {
        Hub {
            broker,
            metrics,
            metadata,
            messages,
            resync_pending: AtomicBool::new(false),
            state: Mutex::new(HubState::default()),
            subscribed: tokio::sync::Mutex::new(HashSet::new()),
            count: watch::channel(0).0,
            next_id: AtomicU64::new(1),
        }
    }

    /// A fresh connection id.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn state(&self) -> MutexGuard<'_, HubState> {
        lock(&self.state)
    }

    /// Adds a connection and subscribes to its user's topic. Its chats are loaded afterwards and
    /// given to [`Hub::set_user_chats`]; changes in between are not lost.
    pub(crate) async fn register(&self, conn: Arc<Connection>) -> Result<()> {
        let user = conn.user_id;
        {
            let mut st = self.state();
            st.users
                .entry(user)
                .or_default()
                .conns
                .insert(conn.id, (conn, false));
            st.connections_changed(user);
        }
        self.count.send_modify(|n| *n += 1);
        self.reconcile([Topic::User(user)]).await
    }

    /// Sets the chats of a connection's user as loaded from the store after
    /// [`Hub::register`], replaying the membership changes that arrived meanwhile.
    pub(crate) async fn set_user_chats(&self, conn: &Connection, chats: &[ChatId]) -> Result<()> {
        let mut topics = Vec::new();
        {
            let mut st = self.state();
            let st = &mut *st;
            let Some(local) = st.users.get_mut(&conn.user_id) else {
                return Ok(());
            };
            let Some(entry) = local.conns.get_mut(&conn.id) else {
                return Ok(());
            };
            entry.1 = true;
            let mut wanted: HashSet<ChatId> = chats.iter().copied().collect();
            for &(chat, member) in &local.log {
                if member {
                    wanted.insert(chat);
                } else {
                    wanted.remove(&chat);
                }
            }
            if !local.loading() {
                local.log.clear();
            }
            // The list just loaded, with the changes logged since registration replayed on
            // top, is the newest view of committed state: it replaces what this node knew.
            st.replace_chats(conn.user_id, wanted, &mut topics);
        }
        self.reconcile(topics).await?;
        self.track_new_chats().await
    }

    /// Gives every local chat that has no forwarded `seq` yet the store's `last_seq`. Runs
    /// after the subscription is in place (and before the connection's `ready` is read), so a
    /// message the broker loses after this point is above it and found by a resync.
    async fn track_new_chats(&self) -> Result<()> {
        let untracked: Vec<ChatId> = {
            let st = self.state();
            st.chats
                .keys()
                .filter(|c| !st.seqs.contains_key(c))
                .copied()
                .collect()
        };
        if untracked.is_empty() {
            return Ok(());
        }
        let seqs = self.messages.last_seqs(&untracked).await?;
        let mut st = self.state();
        for (c, seq) in untracked.into_iter().zip(seqs) {
            st.track(c, seq);
        }
        Ok(())
    }

    /// Removes a connection; unsubscribes topics nobody here needs any more.
    pub(crate) async fn unregister(&self, conn: &Connection) {
        let mut topics = Vec::new();
        let removed = {
            let mut st = self.state();
            let st = &mut *st;
            let user = conn.user_id;
            let Some(local) = st.users.get_mut(&user) else {
                return;
            };
            let removed = local.conns.remove(&conn.id).is_some();
            // The user's chats lost a recipient.
            for chat in &local.chats {
                st.recipients.remove(chat);
            }
            if local.conns.is_empty() {
                let chats: Vec<ChatId> = local.chats.iter().copied().collect();
                st.users.remove(&user);
                topics.push(Topic::User(user));
                for c in chats {
                    st.drop_member(c, user);
                    topics.push(Topic::Chat(c));
                }
            }
            removed
        };
        if removed {
            self.count.send_modify(|n| *n = n.saturating_sub(1));
        }
        if let Err(e) = self.reconcile(topics).await {
            tracing::warn!(error = %e, "could not unsubscribe from the broker");
        }
    }

    /// Asks every connection to close (graceful shutdown).
    pub(crate) fn close_all(&self, code: u16, reason: &str) {
        for c in self.all_connections() {
            c.close(code, reason);
        }
    }

    /// Stops every connection without a close frame (a simulated crash). A connection that
    /// registers afterwards finds the server shutting down and does not start.
    pub(crate) fn stop_all(&self) {
        for c in self.all_connections() {
            c.stop();
        }
    }

    /// Every registered connection, copied out so the lock is not held while acting on them.
    fn all_connections(&self) -> Vec<Arc<Connection>> {
        self.state()
            .users
            .values()
            .flat_map(|l| l.conns.values().map(|(c, _)| c.clone()))
            .collect()
    }

    /// Waits until no connection is registered.
    pub(crate) async fn wait_empty(&self) {
        let mut rx = self.count.subscribe();
        // An error means the sender (the hub itself) is gone; nothing left to wait for.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Brings the broker's subscriptions for `topics` in line with the maps.
    async fn reconcile(&self, topics: impl IntoIterator<Item = Topic>) -> Result<()> {
        let mut subscribed = self.subscribed.lock().await;
        let mut result = Ok(());
        for topic in topics {
            let want = self.state().wants(topic);
            let have = subscribed.contains(&topic);
            if want && !have {
                match self.broker.subscribe(topic).await {
                    Ok(()) => {
                        subscribed.insert(topic);
                    }
                    Err(e) => {
                        tracing::warn!(?topic, error = %e, "broker subscribe failed");
                        if result.is_ok() {
                            result = Err(e);
                        }
                    }
                }
            } else if !want && have {
                match self.broker.unsubscribe(topic).await {
                    Ok(()) => {
                        subscribed.remove(&topic);
                    }
                    // Staying subscribed only costs events that find nobody to deliver to.
                    Err(e) => tracing::warn!(?topic, error = %e, "broker unsubscribe failed"),
                }
            }
        }
        result
    }

    /// Consumes the broker's event stream until it ends, retrying a failed resync with backoff
    /// in between events.
    pub(crate) async fn run(self: Arc<Self>, mut events: BrokerStream) {
        let mut retry_delay = RESYNC_RETRY_MIN;
        loop {
            let event = if self.resync_pending.load(Ordering::SeqCst) {
                tokio::select! {
                    e = events.next() => e,
                    _ = tokio::time::sleep(retry_delay) => {
                        retry_delay = (retry_delay * 2).min(RESYNC_RETRY_MAX);
                        Some(BrokerEvent::Resync)
                    }
                }
            } else {
                retry_delay = RESYNC_RETRY_MIN;
                events.next().await
            };
            let Some(event) = event else { break };
            // One bad event must not end live delivery for the whole node.
            if AssertUnwindSafe(self.handle(event))
                .catch_unwind()
                .await
                .is_err()
            {
                tracing::error!("handling a broker event panicked; event dropped");
            }
        }
        tracing::warn!("broker event stream ended; live delivery stopped");
    }

    /// Catches this node's connections up after the broker may have lost events; see the
    /// module docs. On failure the event loop retries.
    async fn resync(&self) {
        self.metrics.broker_resyncs.fetch_add(1, Ordering::Relaxed);
        tracing::info!("broker resync: re-reading memberships and catching up from the store");
        let result = match tokio::time::timeout(RESYNC_TIMEOUT, self.try_resync()).await {
            Ok(r) => r,
            Err(_) => Err(chat_core::Error::Unavailable {
                message: "resync timed out".into(),
                source: None,
            }),
        };
        match result {
            Ok(()) => self.resync_pending.store(false, Ordering::SeqCst),
            Err(e) => {
                tracing::warn!(error = %e, "broker resync failed; retrying");
                self.resync_pending.store(true, Ordering::SeqCst);
            }
        }
    }

    async fn try_resync(&self) -> Result<()> {
        // 1. Memberships first, so nothing below reaches someone who was removed.
        let users: Vec<UserId> = self.state().users.keys().copied().collect();
        let lists: Vec<(UserId, Result<Vec<ChatId>>)> = futures::stream::iter(users)
            .map(|u| async move {
                let chats = self.metadata.chats_of_user(u).await;
                (
                    u,
                    chats.map(|l| l.into_iter().map(|(c, _)| c.chat_id).collect()),
                )
            })
            .buffer_unordered(RESYNC_PARALLEL)
            .collect()
            .await;
        let mut topics = Vec::new();
        let mut failure = None;
        {
            let mut st = self.state();
            for (user, chats) in lists {
                match chats {
                    Ok(chats) => st.replace_chats(user, chats.into_iter().collect(), &mut topics),
                    Err(e) => failure = Some(e),
                }
            }
        }
        self.reconcile(topics).await?;
        if let Some(e) = failure {
            return Err(e);
        }

        // 2. Messages stored after what was forwarded.
        let tracked: Vec<(ChatId, Option<Seq>)> = {
            let st = self.state();
            st.chats
                .keys()
                .map(|c| (*c, st.seqs.get(c).copied()))
                .collect()
        };
        let ids: Vec<ChatId> = tracked.iter().map(|(c, _)| *c).collect();
        let last = self.messages.last_seqs(&ids).await?;
        for ((chat, from), last) in tracked.into_iter().zip(last) {
            let Some(from) = from else {
                // Its first member is still being set up; it is tracked from now on.
                self.state().track(chat, last);
                continue;
            };
            if last <= from {
                continue;
            }
            let mut missed = self
                .messages
                .fetch(
                    chat,
                    FetchQuery::After {
                        after: from,
                        limit: RESYNC_PAGE,
                    },
                )
                .await?;
            if missed.last().is_some_and(|m| m.seq < last) {
                // A long outage: the newest message shows clients the hole to fetch.
                let newest = self
                    .messages
                    .fetch(chat, FetchQuery::Latest { limit: 1 })
                    .await?;
                missed.extend(newest);
            }
            tracing::debug!(%chat, n = missed.len(), "resync delivers missed messages");
            for m in missed {
                self.deliver_message(chat, m);
            }
        }
        Ok(())
    }

    /// Sends one message frame to every local connection of the chat's members.
    fn deliver_message(&self, chat: ChatId, message: Message) {
        let seq = message.seq;
        let frame = match serialize(&ServerFrame::Message { message }) {
            Some(f) => f,
            None => return,
        };
        let conns = {
            let mut st = self.state();
            st.saw(chat, seq);
            st.recipients(chat)
        };
        for c in conns.iter() {
            c.push(frame.clone(), &self.metrics);
        }
    }

    /// Applies one broker event: delivers frames and updates the maps.
    pub(crate) async fn handle(&self, event: BrokerEvent) {
        self.metrics.broker_events.fetch_add(1, Ordering::Relaxed);
        let (topic, event) = match event {
            BrokerEvent::Resync => {
                self.resync().await;
                return;
            }
            BrokerEvent::Event { topic, event } => (topic, event),
        };
        match (topic, event) {
            (Topic::Chat(chat), Event::Message { message }) => {
                if message.chat_id != chat {
                    tracing::warn!(%chat, "message event on another chat's topic ignored");
                    return;
                }
                self.deliver_message(chat, message);
            }
            (Topic::Chat(chat), Event::ChatUpdated { chat: view }) => {
                if view.chat_id != chat {
                    return;
                }
                let members: HashSet<UserId> = view.member_ids.iter().copied().collect();
                let (conns, gone) = {
                    let mut st = self.state();
                    let local: Vec<UserId> = st
                        .chats
                        .get(&chat)
                        .map(|s| s.iter().copied().collect())
                        .unwrap_or_default();
                    let (keep, gone): (Vec<UserId>, Vec<UserId>) =
                        local.into_iter().partition(|u| members.contains(u));
                    for u in &gone {
                        st.set_member(chat, *u, false);
                    }
                    (st.connections_of(&keep), !gone.is_empty())
                };
                if let Some(frame) = serialize(&ServerFrame::ChatUpdated { chat: view }) {
                    for c in conns {
                        c.push(frame.clone(), &self.metrics);
                    }
                }
                if gone {
                    self.reconcile_logged([Topic::Chat(chat)]).await;
                }
            }
            (Topic::User(user), Event::ChatUpdated { chat: view }) => {
                if !view.member_ids.contains(&user) {
                    return;
                }
                let chat = view.chat_id;
                // Existing members already got this from the chat's topic; only a user new to
                // the chat gets it here, so nobody sees it twice.
                let conns = {
                    let mut st = self.state();
                    if st.set_member(chat, user, true) {
                        // The view was read after the join committed: what follows it is new.
                        st.track(chat, view.last_seq);
                        st.connections_of([&user])
                    } else {
                        Vec::new()
                    }
                };
                if !conns.is_empty() {
                    if let Some(frame) = serialize(&ServerFrame::ChatUpdated { chat: view }) {
                        for c in conns {
                            c.push(frame.clone(), &self.metrics);
                        }
                    }
                }
                self.reconcile_logged([Topic::Chat(chat)]).await;
            }
            (topic, Event::RemovedFromChat { chat_id, user_id }) => {
                let conns = {
                    let mut st = self.state();
                    st.set_member(chat_id, user_id, false);
                    // The frame goes out on the user's own topic only, so it is sent once.
                    if topic == Topic::User(user_id) {
                        st.connections_of([&user_id])
                    } else {
                        Vec::new()
                    }
                };
                if !conns.is_empty() {
                    if let Some(frame) = serialize(&ServerFrame::RemovedFromChat { chat_id }) {
                        for c in conns {
                            c.push(frame.clone(), &self.metrics);
                        }
                    }
                }
                self.reconcile_logged([Topic::Chat(chat_id)]).await;
            }
            (
                _,
                Event::SessionRevoked {
                    user_id,
                    token_hash,
                },
            ) => {
                let conns = self.state().connections_of([&user_id]);
                for c in conns.iter().filter(|c| c.has_token(&token_hash)) {
                    c.close(close_code::POLICY, "session revoked");
                }
            }
            (Topic::User(_), Event::Message { .. }) => {
                tracing::debug!("message event on a user topic ignored");
            }
        }
    }

    async fn reconcile_logged(&self, topics: impl IntoIterator<Item = Topic>) {
        if let Err(e) = self.reconcile(topics).await {
            tracing::warn!(error = %e, "broker subscription update failed");
        }
    }
}

/// Serializes a frame once for every recipient.
pub(crate) fn serialize(frame: &ServerFrame) -> Option<Utf8Bytes> {
    match serde_json::to_string(frame) {
        Ok(s) => Some(Utf8Bytes::from(s)),
        Err(e) => {
            // Serializing these plain structs cannot fail; if it ever does, drop the frame
            // (clients catch up by seq) rather than take the hub down.
            tracing::error!(error = %e, "could not serialize a frame");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::LocalBroker;
    use chat_core::protocol::ChatView;
    use chat_core::{Message, Seq};

    /// The store behind a test hub, and the directory holding it.
    struct Fixture {
        store: chat_storage::sqlite::SqliteStore,
        _dir: tempfile::TempDir,
    }

    fn hub() -> (Arc<Hub>, Arc<LocalBroker>, Arc<Metrics>, Fixture) {
        let dir = tempfile::tempdir().unwrap();
        let store = chat_storage::sqlite::SqliteStore::open(dir.path().join("hub.db")).unwrap();
        let broker = Arc::new(LocalBroker::new());
        let metrics = Arc::new(Metrics::default());
        (
            Arc::new(Hub::new(
                broker.clone(),
                metrics.clone(),
                Arc::new(store.clone()),
                Arc::new(store.clone()),
            )),
            broker,
            metrics,
            Fixture { store, _dir: dir },
        )
    }

    async fn connect(
        hub: &Hub,
        user: i64,
        chats: &[i64],
        capacity: usize,
    ) -> (Arc<Connection>, Arc<Connection>) {
        let c = Connection::new(hub.next_id(), UserId(user), token(user), capacity);
        hub.register(c.clone()).await.unwrap();
        let chats: Vec<ChatId> = chats.iter().map(|&c| ChatId(c)).collect();
        hub.set_user_chats(&c, &chats).await.unwrap();
        (c.clone(), c)
    }

    fn message(chat: i64, seq: i64) -> BrokerEvent {
        BrokerEvent::Event {
            topic: Topic::Chat(ChatId(chat)),
            event: Event::Message {
                message: Message {
                    chat_id: ChatId(chat),
                    seq: Seq(seq),
                    sender_id: UserId(1),
                    msg_text: format!("m{seq}"),
                    sent_at: 0,
                    timestamp: None,
                    client_msg_id: None,
                },
            },
        }
    }

    /// A distinct token hash per user.
    fn token(user: i64) -> [u8; 32] {
        let mut t = [0; 32];
        t[..8].copy_from_slice(&user.to_le_bytes());
        t
    }

    fn frame_json(f: Utf8Bytes) -> serde_json::Value {
        serde_json::from_str(f.as_str()).unwrap()
    }

    #[tokio::test]
    async fn fans_out_one_serialization_to_every_member_connection() {
        let (hub, _, metrics, _fx) = hub();
        let (_a1, a1) = connect(&hub, 1, &[10], 8).await;
        let (_a2, a2) = connect(&hub, 1, &[10], 8).await;
        let (_b, b) = connect(&hub, 2, &[10, 11], 8).await;
        let (_c, c) = connect(&hub, 3, &[11], 8).await;
        hub.handle(message(10, 1)).await;
        let f1 = a1.try_recv().unwrap();
        let f2 = a2.try_recv().unwrap();
        let f3 = b.try_recv().unwrap();
        // The same buffer, not three serializations.
        assert_eq!(f1.as_str().as_ptr(), f2.as_str().as_ptr());
        assert_eq!(f1.as_str().as_ptr(), f3.as_str().as_ptr());
        assert_eq!(frame_json(f1)["message"]["seq"], 1);
        assert!(c.try_recv().is_err(), "user 3 is not in chat 10");
        assert_eq!(metrics.deliveries.load(Ordering::Relaxed), 3);
    }

    /// The cached recipients of a chat follow connections coming and going.
    #[tokio::test]
    async fn recipients_follow_connections() {
        let (hub, _, _, _fx) = hub();
        let (_a, a) = connect(&hub, 1, &[10], 8).await;
        hub.handle(message(10, 1)).await;
        assert_eq!(frame_json(a.try_recv().unwrap())["message"]["seq"], 1);
        // A second connection of the same user, and one of a new member.
        let (_a2, a2) = connect(&hub, 1, &[10], 8).await;
        let (b, b_rx) = connect(&hub, 2, &[10], 8).await;
        hub.handle(message(10, 2)).await;
        for rx in [&a, &a2, &b_rx] {
            assert_eq!(frame_json(rx.try_recv().unwrap())["message"]["seq"], 2);
        }
        hub.unregister(&b).await;
        hub.unregister(&a2).await;
        hub.handle(message(10, 3)).await;
        assert_eq!(frame_json(a.try_recv().unwrap())["message"]["seq"], 3);
        assert!(a2.try_recv().is_err() && b_rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn subscriptions_follow_connections() {
        let (hub, broker, _, _fx) = hub();
        let (a, _ra) = connect(&hub, 1, &[10], 8).await;
        let (b, _rb) = connect(&hub, 2, &[10], 8).await;
        assert!(hub
            .subscribed
            .lock()
            .await
            .contains(&Topic::Chat(ChatId(10))));
        hub.unregister(&a).await;
        assert!(hub
            .subscribed
            .lock()
            .await
            .contains(&Topic::Chat(ChatId(10))));
        assert!(!hub
            .subscribed
            .lock()
            .await
            .contains(&Topic::User(UserId(1))));
        hub.unregister(&b).await;
        assert!(hub.subscribed.lock().await.is_empty());
        drop(broker);
        hub.wait_empty().await;
    }

    #[tokio::test]
    async fn full_queue_closes_the_slow_consumer_once() {
        let (hub, _, metrics, _fx) = hub();
        let (slow, _rx_never_read) = connect(&hub, 1, &[10], 2).await;
        let (_fast, fast) = connect(&hub, 2, &[10], 64).await;
        for seq in 1..=10 {
            hub.handle(message(10, seq)).await;
        }
        assert!(slow.is_closing());
        assert_eq!(
            slow.close_reason().unwrap().code,
            close_code::POLICY,
            "slow consumers are closed with a policy violation"
        );
        assert_eq!(metrics.slow_consumer_disconnects.load(Ordering::Relaxed), 1);
        for seq in 1..=10 {
            assert_eq!(frame_json(fast.try_recv().unwrap())["message"]["seq"], seq);
        }
    }

    #[tokio::test]
    async fn membership_events_update_delivery() {
        let (hub, _, _, _fx) = hub();
        let (_a, a) = connect(&hub, 1, &[10], 16).await;
        let (_b, b) = connect(&hub, 2, &[], 16).await;
        let view = ChatView {
            chat_id: ChatId(10),
            chat_name: "x".into(),
            member_ids: vec![UserId(1), UserId(2)],
            last_seq: Seq(0),
            owner_id: Some(UserId(1)),
            created_at: None,
        };
        // Published on the chat's topic first, then on the added user's.
        for topic in [Topic::Chat(ChatId(10)), Topic::User(UserId(2))] {
            hub.handle(BrokerEvent::Event {
                topic,
                event: Event::ChatUpdated { chat: view.clone() },
            })
            .await;
        }
        assert_eq!(frame_json(a.try_recv().unwrap())["type"], "chat_updated");
        assert_eq!(frame_json(b.try_recv().unwrap())["type"], "chat_updated");
        assert!(a.try_recv().is_err() && b.try_recv().is_err(), "once each");
        hub.handle(message(10, 1)).await;
        assert_eq!(frame_json(b.try_recv().unwrap())["type"], "message");
        a.try_recv().unwrap();

        for topic in [Topic::User(UserId(2)), Topic::Chat(ChatId(10))] {
            hub.handle(BrokerEvent::Event {
                topic,
                event: Event::RemovedFromChat {
                    chat_id: ChatId(10),
                    user_id: UserId(2),
                },
            })
            .await;
        }
        let removed = frame_json(b.try_recv().unwrap());
        assert_eq!(removed["type"], "removed_from_chat");
        assert_eq!(removed["chat_id"], 10);
        hub.handle(message(10, 2)).await;
        assert!(b.try_recv().is_err(), "a removed member gets nothing more");
        assert_eq!(frame_json(a.try_recv().unwrap())["message"]["seq"], 2);
    }

    #[tokio::test]
    async fn changes_during_the_chat_list_load_are_not_lost() {
        let (hub, _, _, _fx) = hub();
        let c = Connection::new(hub.next_id(), UserId(1), token(1), 16);
        let rx = c.clone();
        hub.register(c.clone()).await.unwrap();
        // The user is added to chat 11 and removed from chat 10 after the store was read...
        for (topic, event) in [
            (
                Topic::User(UserId(1)),
                Event::ChatUpdated {
                    chat: ChatView {
                        chat_id: ChatId(11),
                        chat_name: "n".into(),
                        member_ids: vec![UserId(1)],
                        last_seq: Seq(0),
                        owner_id: None,
                        created_at: None,
                    },
                },
            ),
            (
                Topic::User(UserId(1)),
                Event::RemovedFromChat {
                    chat_id: ChatId(10),
                    user_id: UserId(1),
                },
            ),
        ] {
            hub.handle(BrokerEvent::Event { topic, event }).await;
        }
        // ...so the stale list [10] must end up as [11].
        hub.set_user_chats(&c, &[ChatId(10)]).await.unwrap();
        while rx.try_recv().is_ok() {}
        hub.handle(message(10, 1)).await;
        assert!(rx.try_recv().is_err());
        hub.handle(message(11, 1)).await;
        assert_eq!(frame_json(rx.try_recv().unwrap())["message"]["chat_id"], 11);
    }

    #[tokio::test]
    async fn revoked_session_closes_only_its_connections() {
        let (hub, _, _, _fx) = hub();
        let a = Connection::new(hub.next_id(), UserId(1), [0xaa; 32], 4);
        let b = Connection::new(hub.next_id(), UserId(1), [0xbb; 32], 4);
        for c in [&a, &b] {
            hub.register(c.clone()).await.unwrap();
            hub.set_user_chats(c, &[]).await.unwrap();
        }
        hub.handle(BrokerEvent::Event {
            topic: Topic::User(UserId(1)),
            event: Event::SessionRevoked {
                user_id: UserId(1),
                token_hash: crate::auth::hex(&[0xaa; 32]),
            },
        })
        .await;
        assert!(a.is_closing());
        assert!(!b.is_closing());
    }

    /// A user in the fixture's store.
    async fn user(fx: &Fixture, name: &str) -> UserId {
        use chat_core::{MetadataStore as _, NewUser};
        fx.store
            .create_user(NewUser {
                email: format!("{name}@example.com"),
                display_name: name.into(),
                pw_hash: "x".into(),
                created_at: 0,
            })
            .await
            .unwrap()
            .user_id
    }

    /// Stores a message without publishing it: the broker "lost" it.
    async fn append_silently(fx: &Fixture, chat: ChatId, sender: UserId, text: &str) -> Seq {
        use chat_core::{MessageStore as _, NewMessage};
        fx.store
            .append(NewMessage {
                chat_id: chat,
                sender_id: sender,
                msg_text: text.into(),
                sent_at: 0,
                timestamp: None,
                client_msg_id: None,
            })
            .await
            .unwrap()
            .message
            .seq
    }

    async fn connect_ids(
        hub: &Hub,
        user: UserId,
        chats: &[ChatId],
    ) -> (Arc<Connection>, Arc<Connection>) {
        let c = Connection::new(hub.next_id(), user, token(user.0), 64);
        hub.register(c.clone()).await.unwrap();
        hub.set_user_chats(&c, chats).await.unwrap();
        (c.clone(), c)
    }

    fn seqs_of(rx: &Connection) -> Vec<i64> {
        let mut out = Vec::new();
        while let Ok(f) = rx.try_recv() {
            let v = frame_json(f);
            if v["type"] == "message" {
                out.push(v["message"]["seq"].as_i64().unwrap());
            }
        }
        out
    }

    #[tokio::test]
    async fn resync_delivers_what_the_broker_lost_and_only_that() {
        use chat_core::{MetadataStore as _, NewChat};
        let (hub, _, metrics, fx) = hub();
        let (a, b) = (user(&fx, "a").await, user(&fx, "b").await);
        let (chat, _) = fx
            .store
            .create_chat(NewChat {
                chat_name: "c".into(),
                owner_id: a,
                member_ids: vec![b],
                created_at: 0,
            })
            .await
            .unwrap();
        let chat = chat.chat_id;
        // One message before anyone connects: a resync must not replay it.
        append_silently(&fx, chat, a, "old").await;
        let (_ca, ra) = connect_ids(&hub, a, &[chat]).await;
        let (_cb, rb) = connect_ids(&hub, b, &[chat]).await;

        // Seq 2 arrives live; 3 and 4 are stored while the broker is away.
        let s2 = append_silently(&fx, chat, a, "live").await;
        hub.handle(BrokerEvent::Event {
            topic: Topic::Chat(chat),
            event: Event::Message {
                message: Message {
                    chat_id: chat,
                    seq: s2,
                    sender_id: a,
                    msg_text: "live".into(),
                    sent_at: 0,
                    timestamp: None,
                    client_msg_id: None,
                },
            },
        })
        .await;
        append_silently(&fx, chat, a, "lost 1").await;
        append_silently(&fx, chat, b, "lost 2").await;
        // And b was removed meanwhile, its event lost too.
        fx.store.remove_member(chat, b).await.unwrap();

        hub.handle(BrokerEvent::Resync).await;
        assert_eq!(
            seqs_of(&ra),
            vec![2, 3, 4],
            "live, then what was missed, in order"
        );
        assert_eq!(
            seqs_of(&rb),
            vec![2],
            "a removed member gets nothing from the resync"
        );
        assert_eq!(metrics.broker_resyncs.load(Ordering::Relaxed), 1);
        assert!(!hub.resync_pending.load(Ordering::SeqCst));

        // A second resync with nothing new sends nothing.
        hub.handle(BrokerEvent::Resync).await;
        assert!(seqs_of(&ra).is_empty());
    }

    #[tokio::test]
    async fn resync_after_a_long_outage_sends_a_page_and_the_newest() {
        use chat_core::{MetadataStore as _, NewChat};
        let (hub, _, _, fx) = hub();
        let a = user(&fx, "a").await;
        let (chat, _) = fx
            .store
            .create_chat(NewChat {
                chat_name: "c".into(),
                owner_id: a,
                member_ids: vec![],
                created_at: 0,
            })
            .await
            .unwrap();
        let chat = chat.chat_id;
        let c = Connection::new(hub.next_id(), a, token(a.0), 2048);
        let rx = c.clone();
        hub.register(c.clone()).await.unwrap();
        hub.set_user_chats(&c, &[chat]).await.unwrap();
        let total = i64::from(RESYNC_PAGE) + 20;
        for i in 0..total {
            append_silently(&fx, chat, a, &format!("m{i}")).await;
        }
        hub.handle(BrokerEvent::Resync).await;
        let got = seqs_of(&rx);
        let mut want: Vec<i64> = (1..=i64::from(RESYNC_PAGE)).collect();
        want.push(total);
        assert_eq!(
            got, want,
            "the first page, then the newest so clients see the hole"
        );
    }

    #[tokio::test]
    async fn a_chat_joined_by_event_is_caught_up_from_its_view() {
        let (hub, _, _, _fx) = hub();
        let (_c, rx) = connect(&hub, 1, &[], 16).await;
        let view = ChatView {
            chat_id: ChatId(10),
            chat_name: "x".into(),
            member_ids: vec![UserId(1)],
            last_seq: Seq(7),
            owner_id: None,
            created_at: None,
        };
        hub.handle(BrokerEvent::Event {
            topic: Topic::User(UserId(1)),
            event: Event::ChatUpdated { chat: view },
        })
        .await;
        assert_eq!(hub.state().seqs.get(&ChatId(10)), Some(&Seq(7)));
        hub.handle(message(10, 8)).await;
        assert_eq!(hub.state().seqs.get(&ChatId(10)), Some(&Seq(8)));
        while rx.try_recv().is_ok() {}
    }
}
