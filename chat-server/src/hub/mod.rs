//! The hub: this node's registry of live WebSocket connections and the fan-out of broker events
//! to them.
//!
//! - [`membership`]: the state machine (who is connected, in which chats, each chat's
//!   recipients and forwarded `seq`); no I/O, tested on its own.
//! - [`subscriptions`]: the broker subscriptions, kept in line with the state by a task of their
//!   own, so the hub never waits on the network.
//! - [`resync`]: catching connections up from the store after the broker may have lost events,
//!   in the background and per chat.
//! - [`order`]: live delivery in `seq` order per chat: early messages wait (briefly) for their
//!   predecessors, which are read from the store if they do not arrive.
//! - This file: [`Hub`], which registers connections, runs the event loop that consumes
//!   [`Broker::events`], and fans events out. A message event is serialized once and the same
//!   bytes are queued to every recipient connection's bounded outbox
//!   ([`Connection`]); a connection whose outbox is full is closed as a slow consumer. Fan-outs
//!   to many connections ([`PACED_FANOUT_MIN`]) are paced by the node's flush tick
//!   (`ws::flush`), so under load several frames share a socket write.
//!
//! **Invariant:** the event loop never awaits I/O. Handling an event is synchronous: it updates
//! the state, queues frames, and hands subscription changes and catch-ups to their tasks.

pub(crate) mod membership;
pub(crate) mod order;
pub(crate) mod resync;
pub(crate) mod subscriptions;

use crate::lock;
use crate::metrics::{seconds_since, Metrics};
use crate::ws::connection::{close_code, serialize, Connection};
use crate::ws::flush::FlushTick;
use axum::extract::ws::Utf8Bytes;
use chat_core::protocol::ServerFrame;
use chat_core::{
    Broker, BrokerEvent, BrokerStream, ChatId, Event, Message, MessageStore, MetadataStore, Result,
    Topic, UserId,
};
use futures::StreamExt;
use membership::Membership;
use order::{Offer, Update};
use resync::ResyncState;
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use subscriptions::Subscriptions;
use tokio::sync::{mpsc, watch};

/// Reads of a live gap before its held messages go out with the hole (waits of 1, 2, 4 and 8
/// times `live_order_hold` in between: 750 ms at the default).
const GAP_FILL_ATTEMPTS: u32 = 5;

/// Fan-outs to at least this many local connections are paced by the flush tick
/// (`ws::flush`); smaller ones wake each connection at once. A message to a few sockets costs
/// far less in writes than its send (token and membership checks, a durable append: ~200 µs,
/// against ~3 µs per write), so holding its frames would add latency and save little; to
/// hundreds of sockets the writes are most of its cost.
pub(crate) const PACED_FANOUT_MIN: usize = 32;

/// What other tasks hand the event loop.
pub(crate) enum Input {
    /// Catch this chat up from the store (it was subscribed late).
    CatchUp(ChatId),
    /// A chat's held messages have waited long enough: fill the gap (its id) from the store.
    GapDue(ChatId, u64),
}

/// The registry of this node's connections and the consumer of its broker events.
pub(crate) struct Hub {
    metrics: Arc<Metrics>,
    /// Read on a resync: the chats of connected users.
    metadata: Arc<dyn MetadataStore>,
    /// Read on a resync and when a chat gets its first local member: `last_seq`, missed pages.
    messages: Arc<dyn MessageStore>,
    /// The maps, behind one std mutex (never held across an await).
    state: Arc<Mutex<Membership>>,
    /// The broker subscriptions' task.
    subscriptions: Subscriptions,
    /// Work for the event loop from other tasks: chats to catch up (from the subscription
    /// task), held messages whose wait is over (from their timers).
    inbox: mpsc::UnboundedSender<Input>,
    /// The event loop's end of `inbox`, taken when it starts.
    inbox_rx: Mutex<Option<mpsc::UnboundedReceiver<Input>>>,
    /// How long a message waits for a missing predecessor before it is read from the store.
    order_hold: Duration,
    /// Whether a resync runs, and whether another was asked for meanwhile.
    resync: ResyncState,
    /// Number of registered connections, watched by shutdown to know when all have closed.
    count: watch::Sender<usize>,
    /// Which connections heard a user's latest presence change (it arrives once per shared
    /// chat; each connection hears it once).
    presence_sent: PresenceSent,
    /// Paces fanned-out frames under load (`Config::ws_flush_delay`); its task runs with the
    /// event loop.
    flush: Arc<FlushTick>,
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
        order_hold: Duration,
        flush_delay: Duration,
        flush_batch: usize,
    ) -> Hub {
        let state = Arc::new(Mutex::new(Membership::default()));
        let (inbox, inbox_rx) = mpsc::unbounded_channel();
        Hub {
            subscriptions: Subscriptions::new(broker, state.clone(), inbox.clone()),
            inbox,
            inbox_rx: Mutex::new(Some(inbox_rx)),
            order_hold,
            metrics,
            metadata,
            messages,
            state,
            resync: ResyncState::default(),
            count: watch::channel(0).0,
            presence_sent: PresenceSent::default(),
            flush: Arc::new(FlushTick::new(flush_delay, flush_batch)),
            next_id: AtomicU64::new(1),
        }
    }

    /// The node's flush tick, which connection tasks tell when they write.
    pub(crate) fn flush_tick(&self) -> &FlushTick {
        &self.flush
    }

    /// A fresh connection id.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn state(&self) -> MutexGuard<'_, Membership> {
        lock(&self.state)
    }

    /// Adds a connection and subscribes to its user's topic. Its chats are loaded afterwards and
    /// given to [`Hub::set_user_chats`]; changes in between are not lost.
    pub(crate) async fn register(&self, conn: Arc<Connection>) -> Result<()> {
        let topic = self.state().add_connection(conn);
        self.count.send_modify(|n| *n += 1);
        self.subscriptions.update_and_wait(vec![topic]).await
    }

    /// Sets the chats of a connection's user as loaded from the store after
    /// [`Hub::register`], replaying the membership changes that arrived meanwhile, and waits
    /// until their topics are subscribed.
    pub(crate) async fn set_user_chats(&self, conn: &Connection, chats: &[ChatId]) -> Result<()> {
        let topics = self.state().chats_loaded(conn, chats);
        self.subscriptions.update_and_wait(topics).await?;
        self.track_new_chats().await
    }

    /// Gives every local chat that has no forwarded `seq` yet the store's `last_seq`. Runs
    /// after the subscription is in place (and before the connection's `ready` is read), so a
    /// message the broker loses after this point is above it and found by a resync.
    async fn track_new_chats(&self) -> Result<()> {
        let untracked = self.state().untracked_chats();
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

    /// Removes a connection; topics nobody here needs any more are unsubscribed in the
    /// background.
    pub(crate) fn unregister(&self, conn: &Connection) {
        let (removed, topics) = self.state().remove_connection(conn);
        if removed {
            self.count.send_modify(|n| *n = n.saturating_sub(1));
        }
        self.subscriptions.update(topics, false);
    }

    /// Asks every connection to close (graceful shutdown).
    pub(crate) fn close_all(&self, code: u16, reason: &str) {
        for c in self.state().all_connections() {
            c.close(code, reason);
        }
    }

    /// Stops every connection without a close frame (a simulated crash). A connection that
    /// registers afterwards finds the server shutting down and does not start.
    pub(crate) fn stop_all(&self) {
        for c in self.state().all_connections() {
            c.stop();
        }
    }

    /// Waits until no connection is registered.
    pub(crate) async fn wait_empty(&self) {
        let mut rx = self.count.subscribe();
        // An error means the sender (the hub itself) is gone; nothing left to wait for.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Consumes the broker's event stream until it ends. Catch-ups asked for by the
    /// subscription task are started from here too, each in a task of its own.
    pub(crate) async fn run(self: Arc<Self>, mut events: BrokerStream) {
        let mut inbox = lock(&self.inbox_rx).take();
        let _tick = self.flush.start(self.metrics.clone());
        loop {
            let event = match inbox.as_mut() {
                Some(rx) => tokio::select! {
                    e = events.next() => e,
                    Some(input) = rx.recv() => {
                        match input {
                            Input::CatchUp(chat) => self.spawn_catch_up(chat),
                            Input::GapDue(chat, gap) => self.spawn_gap_fill(chat, gap),
                        }
                        continue;
                    }
                },
                None => events.next().await,
            };
            let Some(event) = event else { break };
            let cpu = crate::metrics::thread_cpu();
            // One bad event must not end live delivery for the whole node.
            if std::panic::catch_unwind(AssertUnwindSafe(|| self.handle(event))).is_err() {
                tracing::error!("handling a broker event panicked; event dropped");
            }
            // The handling is synchronous, so it ran on this thread alone.
            self.metrics.hub_cpu_seconds.inc_by(
                crate::metrics::thread_cpu()
                    .saturating_sub(cpu)
                    .as_secs_f64(),
            );
        }
        tracing::warn!("broker event stream ended; live delivery stopped");
    }

    /// Offers one message of a chat to its live order and sends what is due (the message, and
    /// any it unblocked) to every local connection of the chat's members, each serialized once.
    pub(crate) fn deliver_message(&self, chat: ChatId, message: Message) {
        let started = Instant::now();
        let (offer, conns) = {
            let mut st = self.state();
            let offer = st.offer(chat, message);
            let conns = match offer {
                Offer::Deliver(_) => Some(st.recipients(chat)),
                _ => None,
            };
            (offer, conns)
        };
        self.act_on(chat, offer, conns, started);
    }

    /// Offers the new state of a changed message to the chat's live order: an update of a
    /// message already forwarded goes to every local member's connection as `message_updated`;
    /// otherwise it takes the place of the message itself (see `order::Update`).
    pub(crate) fn deliver_update(&self, chat: ChatId, message: Message) {
        let started = Instant::now();
        let (update, conns) = {
            let mut st = self.state();
            let update = st.update(chat, message);
            let conns = match update {
                Update::Forward(_) | Update::AsMessage(Offer::Deliver(_)) => {
                    Some(st.recipients(chat))
                }
                Update::AsMessage(_) => None,
            };
            (update, conns)
        };
        match update {
            Update::Forward(message) => {
                let conns = conns.unwrap_or_else(|| Arc::from([]));
                self.push_all(&conns, &ServerFrame::MessageUpdated { message });
                self.metrics.fanout_seconds.observe(seconds_since(started));
            }
            Update::AsMessage(offer) => self.act_on(chat, offer, conns, started),
        }
    }

    /// Carries out what the live order said about an offered message.
    fn act_on(
        &self,
        chat: ChatId,
        offer: Offer,
        conns: Option<Arc<[Arc<Connection>]>>,
        started: Instant,
    ) {
        match offer {
            Offer::Deliver(messages) => {
                let conns = conns.unwrap_or_else(|| Arc::from([]));
                self.send_messages(&conns, messages, self.flush.stamp_at(started));
                self.metrics.fanout_seconds.observe(seconds_since(started));
            }
            Offer::Held { gap_opened } => {
                self.metrics.live_held.inc();
                if let Some(gap) = gap_opened {
                    self.start_gap_timer(chat, gap);
                }
            }
            Offer::Duplicate => {
                self.metrics.live_duplicates.inc();
            }
        }
    }

    /// Queues each message, serialized once, to every connection in `conns` (`now`: the flush
    /// tick's timestamp of the fan-out).
    fn send_messages(&self, conns: &[Arc<Connection>], messages: Vec<Message>, now: u64) {
        for message in messages {
            let Some(frame) = serialize(&ServerFrame::Message { message }) else {
                continue;
            };
            self.fan_out(conns, &frame, now);
        }
    }

    /// Queues one serialized frame to every connection in `conns`: paced by the flush tick if
    /// they are many (see [`PACED_FANOUT_MIN`]), at once otherwise.
    fn fan_out(&self, conns: &[Arc<Connection>], frame: &Utf8Bytes, now: u64) {
        if conns.len() >= PACED_FANOUT_MIN && self.flush.enabled() {
            for c in conns {
                c.push_paced(frame.clone(), &self.metrics, &self.flush, now);
            }
        } else {
            for c in conns {
                c.push(frame.clone(), &self.metrics);
            }
        }
    }

    /// After the hold bound, asks the event loop to fill the chat's gap.
    fn start_gap_timer(&self, chat: ChatId, gap: u64) {
        let inbox = self.inbox.clone();
        let hold = self.order_hold;
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            let _ = inbox.send(Input::GapDue(chat, gap));
        });
    }

    /// Reads a chat's missing messages from the store and delivers them with what waited for
    /// them, trying again (after twice the wait each time) while some are still missing: a
    /// store may show a message a moment after another node published it (Cassandra writes a
    /// claimed batch's rows concurrently). Whatever is still missing after the last try (or if
    /// the store fails) is skipped: the held messages go out with the hole, which clients fill
    /// themselves, and a skipped message that arrives later is still forwarded.
    pub(crate) fn spawn_gap_fill(self: &Arc<Self>, chat: ChatId, gap: u64) {
        if self.state().gap(chat, gap).is_none() {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move {
            let mut wait = hub.order_hold;
            for attempt in 0..GAP_FILL_ATTEMPTS {
                let Some((from, until)) = hub.state().gap(chat, gap) else {
                    return;
                };
                hub.metrics.live_gap_fills.inc();
                let missing = until.get() - from.get() - 1;
                let limit = u32::try_from(missing.clamp(1, i64::from(resync::RESYNC_PAGE)))
                    .unwrap_or(resync::RESYNC_PAGE);
                match hub
                    .messages
                    .fetch(chat, chat_core::FetchQuery::After { after: from, limit })
                    .await
                {
                    Ok(found) => {
                        for m in found {
                            hub.deliver_message(chat, m);
                        }
                    }
                    Err(e) => tracing::warn!(%chat, error = %e, "filling a live gap failed"),
                }
                if hub.state().gap(chat, gap).is_none() {
                    return;
                }
                if attempt + 1 < GAP_FILL_ATTEMPTS {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
            let (rest, conns) = {
                let mut st = hub.state();
                let rest = st.release(chat);
                (rest, st.recipients(chat))
            };
            if !rest.is_empty() {
                tracing::debug!(%chat, n = rest.len(), "live messages forwarded past a hole");
                hub.send_messages(&conns, rest, hub.flush.stamp_now());
            }
        });
    }

    /// Queues one frame to each of `conns`, serialized once.
    fn push_all(&self, conns: &[Arc<Connection>], frame: &ServerFrame) {
        if conns.is_empty() {
            return;
        }
        if let Some(bytes) = serialize(frame) {
            self.fan_out(conns, &bytes, self.flush.stamp_now());
        }
    }

    /// Applies one broker event: delivers frames, updates the state, and hands subscription
    /// changes and resyncs to their tasks. Never waits.
    pub(crate) fn handle(self: &Arc<Self>, event: BrokerEvent) {
        self.metrics.broker_events.inc();
        let (topic, event) = match event {
            BrokerEvent::Resync => {
                self.request_resync();
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
            (Topic::Chat(chat), Event::MessageUpdated { message }) => {
                if message.chat_id != chat {
                    tracing::warn!(%chat, "update event on another chat's topic ignored");
                    return;
                }
                self.deliver_update(chat, message);
            }
            (Topic::Chat(chat), Event::ChatUpdated { chat: view }) => {
                if view.chat_id != chat {
                    return;
                }
                let members: HashSet<UserId> = view.member_ids.iter().copied().collect();
                let (conns, gone) = self.state().chat_members_now(chat, &members);
                self.push_all(&conns, &ServerFrame::ChatUpdated { chat: view });
                if gone {
                    self.subscriptions.update(vec![Topic::Chat(chat)], false);
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
                self.push_all(&conns, &ServerFrame::ChatUpdated { chat: view });
                // If the chat is new to this node, what is stored between the view and the
                // subscription is caught up once the subscription is live.
                self.subscriptions.update(vec![Topic::Chat(chat)], true);
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
                self.push_all(&conns, &ServerFrame::RemovedFromChat { chat_id });
                self.subscriptions.update(vec![Topic::Chat(chat_id)], false);
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
            (
                Topic::Chat(chat),
                Event::Read {
                    chat_id,
                    user_id,
                    last_read_seq,
                },
            ) if chat == chat_id => {
                let conns = self.state().recipients(chat);
                let frame = ServerFrame::Read {
                    chat_id,
                    user_id,
                    last_read_seq,
                };
                self.push_all(&conns, &frame);
            }
            (
                Topic::Chat(chat),
                Event::Typing {
                    chat_id,
                    user_id,
                    until,
                },
            ) if chat == chat_id => {
                let conns = self.state().recipients(chat);
                let others: Vec<Arc<Connection>> = conns
                    .iter()
                    .filter(|c| c.user_id != user_id)
                    .cloned()
                    .collect();
                let frame = ServerFrame::Typing {
                    chat_id,
                    user_id,
                    until,
                };
                self.push_all(&others, &frame);
            }
            (
                Topic::Chat(chat),
                Event::Presence {
                    chat_id,
                    user_id,
                    online,
                    last_seen,
                },
            ) if chat == chat_id => {
                let conns = self.state().recipients(chat);
                let fresh = self.presence_sent.fresh(user_id, online, last_seen, &conns);
                let frame = ServerFrame::Presence {
                    user_id,
                    online,
                    last_seen,
                };
                self.push_all(&fresh, &frame);
            }
            (_, Event::Read { .. } | Event::Typing { .. } | Event::Presence { .. }) => {
                tracing::debug!("chat event on another topic ignored");
            }
            (Topic::User(_), Event::Message { .. } | Event::MessageUpdated { .. }) => {
                tracing::debug!("message event on a user topic ignored");
            }
        }
    }
}

/// A user's presence change is published on each of their chats' topics, so a connection
/// that shares several chats with them would hear it several times. This remembers, per user,
/// the latest change and the connections that heard it.
#[derive(Default)]
struct PresenceSent {
    latest: Mutex<std::collections::HashMap<UserId, Heard>>,
}

/// A user's latest presence (online, last seen), when it arrived, and who heard it.
type Heard = (bool, Option<chat_core::Millis>, Instant, HashSet<u64>);

impl PresenceSent {
    /// Entries kept before those older than a minute are dropped.
    const SWEEP_AT: usize = 16_384;

    /// Those of `conns` that have not heard this change yet (the user's own left out).
    fn fresh(
        &self,
        user: UserId,
        online: bool,
        last_seen: Option<chat_core::Millis>,
        conns: &[Arc<Connection>],
    ) -> Vec<Arc<Connection>> {
        let mut latest = lock(&self.latest);
        if latest.len() >= Self::SWEEP_AT {
            latest.retain(|_, e| e.2.elapsed() < Duration::from_secs(60));
        }
        let e = latest
            .entry(user)
            .or_insert_with(|| (online, last_seen, Instant::now(), HashSet::new()));
        if (e.0, e.1) != (online, last_seen) {
            *e = (online, last_seen, Instant::now(), HashSet::new());
        }
        conns
            .iter()
            .filter(|c| c.user_id != user && e.3.insert(c.id))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests;
