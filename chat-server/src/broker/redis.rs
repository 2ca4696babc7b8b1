//! The Redis broker: events between server nodes over Redis pub/sub.
//!
//! Each [`Topic`] is one Redis channel (`{prefix}chat:{id}`, `{prefix}user:{id}`), so a node
//! receives only the events of the chats and users it has connected (Redis routes by channel).
//! Payloads are the JSON of [`Event`] with the publishing broker's id (`{"origin", "event"}`).
//!
//! **This node's own events never wait for Redis.** `publish` hands an event to this node's own
//! stream first, at once, when this node subscribes to its topic, and only then publishes it to
//! Redis for the other nodes; the copy that Redis echoes back is recognised by its origin and
//! dropped. So members connected to the same node keep getting each other's messages while
//! Redis is down or hung, and a message's local delivery does not include a Redis round trip.
//!
//! Redis is a wake-up path, not the record. Pub/sub delivers at most once and drops what is sent
//! while a subscriber is away, so every way an event can be lost ends in a
//! [`BrokerEvent::Resync`], after which the node catches its connections up from the store:
//! - **The subscriber connection drops or hangs** (Redis restarted, killed, stopped, a network
//!   cut; a hang is found by a probe every 2 s that must be answered within 2 s): it reconnects
//!   with backoff, subscribes again to every wanted topic, and only then yields `Resync`, so the
//!   catch-up covers everything stored before the subscriptions were live again.
//! - **A publish fails** (Redis down or unreachable from the publishing node): the message is
//!   already stored and acknowledged, so the sender loses nothing; the broker keeps trying to
//!   publish a cluster-wide resync on the control channel `{prefix}resync`, to which every node
//!   is subscribed. Once Redis answers again, every node (this one included) resyncs. This also
//!   covers a node whose own subscriber never noticed anything.
//! - **The node falls behind** (its event queue is full): further events are dropped instead of
//!   growing memory, and a `Resync` follows as soon as the queue has room.
//!
//! `subscribe` while Redis is down succeeds: the topic is remembered, subscribed on reconnect,
//! and the resync that follows delivers what was missed. So clients can connect (and read and
//! send) during a Redis outage; only live delivery waits for Redis.

use async_trait::async_trait;
use chat_core::{Broker, BrokerEvent, BrokerStream, ChatId, Error, Event, Result, Topic, UserId};
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// How long one Redis command may take before the call fails as `unavailable`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// First delay before reconnecting the subscriber or retrying the resync announcement.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
/// Longest such delay.
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Events buffered between the subscriber task and the node's hub. When it is full, events are
/// dropped and a `Resync` follows: memory stays bounded and nothing is lost for good.
const EVENT_BUFFER: usize = 65_536;
/// How often the subscriber probes its connection. A Redis that hangs (stopped, or a network
/// path that drops packets without closing) never closes the connection, so silence alone says
/// nothing; a probe unanswered within [`COMMAND_TIMEOUT`] counts as a lost connection.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// The JSON a node publishes: the event and the id of the broker that published it.
#[derive(serde::Serialize)]
struct Envelope<'a> {
    origin: &'a str,
    event: &'a Event,
}

/// An [`Envelope`] as received. A payload without an origin (a node of an older version)
/// is taken as a bare event.
#[derive(serde::Deserialize)]
struct Received {
    origin: String,
    event: Event,
}

/// A random id for one broker instance, so it can recognise its own events coming back.
fn new_origin() -> String {
    use rand::RngCore as _;
    format!("{:016x}", rand::rngs::OsRng.next_u64())
}

/// What the broker asks of its subscriber task.
enum Command {
    Subscribe(String, oneshot::Sender<Result<()>>),
    Unsubscribe(String),
}

/// A [`Broker`] over Redis pub/sub; see the module docs for how lost events are recovered.
pub struct RedisBroker {
    publisher: ConnectionManager,
    prefix: String,
    commands: mpsc::UnboundedSender<Command>,
    events: Mutex<Option<mpsc::Receiver<BrokerEvent>>>,
    /// This broker's id in the envelopes it publishes.
    origin: String,
    /// Topics this node subscribes to, for delivering its own events locally.
    local: Mutex<HashSet<Topic>>,
    /// The node's event stream, for its own events.
    local_events: mpsc::Sender<BrokerEvent>,
    /// Whether the subscriber connection is up with every wanted topic subscribed.
    connected: Arc<AtomicBool>,
    /// Set while a failed publish still has to be followed by a cluster-wide resync.
    repairing: Arc<AtomicBool>,
    /// Cancelled on drop: stops the background tasks.
    closed: CancellationToken,
}

impl RedisBroker {
    /// Connects to Redis at `url` (e.g. `redis://127.0.0.1:6379`). Channel names start with
    /// `prefix`, so several clusters can share one Redis. Fails if Redis does not answer now;
    /// later outages are survived (see the module docs).
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisBroker> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::InvalidArgument(format!("bad redis url {url:?}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(COMMAND_TIMEOUT)
            .set_response_timeout(COMMAND_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(500);
        let publisher = timeout(
            COMMAND_TIMEOUT * 2,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|e| Error::unavailable(format!("redis at {url} did not answer"), e))?
        .map_err(|e| Error::unavailable(format!("redis at {url}"), e))?;
        let (commands, rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::channel(EVENT_BUFFER);
        let connected = Arc::new(AtomicBool::new(false));
        let closed = CancellationToken::new();
        let origin = new_origin();
        let task = Subscriber {
            client,
            origin: origin.clone(),
            prefix: prefix.to_owned(),
            control: control_channel(prefix),
            commands: rx,
            events: events_tx.clone(),
            wanted: HashSet::new(),
            resync_owed: false,
            connected: connected.clone(),
        };
        let stop = closed.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = task.run() => {}
                _ = stop.cancelled() => {}
            }
        });
        Ok(RedisBroker {
            publisher,
            prefix: prefix.to_owned(),
            commands,
            events: Mutex::new(Some(events_rx)),
            origin,
            local: Mutex::new(HashSet::new()),
            local_events: events_tx,
            connected,
            repairing: Arc::new(AtomicBool::new(false)),
            closed,
        })
    }

    /// After a failed publish: announce a cluster-wide resync as soon as Redis answers (one
    /// repair task at a time).
    fn start_repair(&self) {
        if self.repairing.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut conn = self.publisher.clone();
        let control = control_channel(&self.prefix);
        let repairing = self.repairing.clone();
        let closed = self.closed.clone();
        tokio::spawn(async move {
            let mut delay = RECONNECT_MIN;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = closed.cancelled() => return,
                }
                delay = (delay * 2).min(RECONNECT_MAX);
                // A probe first: while Redis is down, publishes keep failing fast (the flag
                // stays set) instead of each waiting for a timeout.
                if !publish_control(&mut conn, &control).await {
                    continue;
                }
                // Cleared before the announcement: an event skipped before this point is
                // covered by it; a publish failing after it starts a new repair.
                repairing.store(false, Ordering::SeqCst);
                if publish_control(&mut conn, &control).await {
                    tracing::info!("redis answers again; announced a cluster-wide resync");
                    return;
                }
                if repairing.swap(true, Ordering::SeqCst) {
                    // Another failed publish started a repair task meanwhile.
                    return;
                }
            }
        });
    }
}

impl RedisBroker {
    /// Hands this node's own event to its stream at once when the node subscribes to the
    /// topic (the Redis echo is dropped by origin). A full stream drops it and owes a resync.
    fn deliver_locally(&self, topic: Topic, event: &Event) {
        if !crate::lock(&self.local).contains(&topic) {
            return;
        }
        let local = BrokerEvent::Event {
            topic,
            event: event.clone(),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.local_events.try_send(local) {
            tracing::warn!("node is behind on its own events; a resync follows");
            let events = self.local_events.clone();
            tokio::spawn(async move {
                let _ = events.send(BrokerEvent::Resync).await;
            });
        }
    }
}

/// Publishes the cluster-wide resync announcement; whether Redis took it.
async fn publish_control(conn: &mut ConnectionManager, control: &str) -> bool {
    let mut cmd = redis::cmd("PUBLISH");
    cmd.arg(control).arg("resync");
    matches!(
        timeout(COMMAND_TIMEOUT, cmd.query_async::<i64>(conn)).await,
        Ok(Ok(_))
    )
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("prefix", &self.prefix)
            .field("connected", &self.connected.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The Redis channel of a topic.
fn channel(prefix: &str, topic: Topic) -> String {
    match topic {
        Topic::Chat(c) => format!("{prefix}chat:{c}"),
        Topic::User(u) => format!("{prefix}user:{u}"),
    }
}

/// The channel on which any node announces that events may have been lost cluster-wide.
fn control_channel(prefix: &str) -> String {
    format!("{prefix}resync")
}

/// The topic of a Redis channel, if it is one of ours.
fn topic_of(prefix: &str, channel: &str) -> Option<Topic> {
    let rest = channel.strip_prefix(prefix)?;
    if let Some(id) = rest.strip_prefix("chat:") {
        return id.parse().ok().map(|id| Topic::Chat(ChatId(id)));
    }
    if let Some(id) = rest.strip_prefix("user:") {
        return id.parse().ok().map(|id| Topic::User(UserId(id)));
    }
    None
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, topic: Topic, event: &Event) -> Result<()> {
        self.deliver_locally(topic, event);
        if self.repairing.load(Ordering::SeqCst) {
            // Redis just failed and the repair task is waiting for it: fail at once instead of
            // a timeout per send. The resync the repair announces covers this event too.
            return Err(Error::Unavailable {
                message: "redis is unavailable (publish skipped until it answers)".into(),
                source: None,
            });
        }
        let payload = serde_json::to_string(&Envelope {
            origin: &self.origin,
            event,
        })
        .map_err(|e| Error::internal("serialising a broker event", e))?;
        let mut conn = self.publisher.clone();
        let mut publish_cmd = redis::cmd("PUBLISH");
        publish_cmd.arg(channel(&self.prefix, topic)).arg(payload);
        let publish = publish_cmd.query_async::<i64>(&mut conn);
        let result = match timeout(COMMAND_TIMEOUT, publish).await {
            Ok(Ok(_receivers)) => Ok(()),
            Ok(Err(e)) => Err(Error::unavailable("redis publish", e)),
            Err(elapsed) => Err(Error::unavailable("redis publish timed out", elapsed)),
        };
        if result.is_err() {
            self.start_repair();
        }
        result
    }

    async fn subscribe(&self, topic: Topic) -> Result<()> {
        crate::lock(&self.local).insert(topic);
        let (done, wait) = oneshot::channel();
        let stopped = || Error::Unavailable {
            message: "redis subscriber stopped".into(),
            source: None,
        };
        self.commands
            .send(Command::Subscribe(channel(&self.prefix, topic), done))
            .map_err(|_| stopped())?;
        match timeout(COMMAND_TIMEOUT * 2, wait).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(stopped()),
            Err(elapsed) => Err(Error::unavailable("redis subscribe timed out", elapsed)),
        }
    }

    async fn unsubscribe(&self, topic: Topic) -> Result<()> {
        crate::lock(&self.local).remove(&topic);
        // Fire and forget, in order with subscribes: a late unsubscribe only costs a few events
        // the hub drops because nobody here wants them.
        let _ = self
            .commands
            .send(Command::Unsubscribe(channel(&self.prefix, topic)));
        Ok(())
    }

    fn events(&self) -> Result<BrokerStream> {
        let rx = match self.events.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let rx = rx.ok_or_else(|| Error::Internal {
            message: "RedisBroker::events() may be called only once".into(),
            source: None,
        })?;
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|e| (e, rx))
        })))
    }

    async fn health(&self) -> Result<()> {
        let mut conn = self.publisher.clone();
        let ping_cmd = redis::cmd("PING");
        let ping = ping_cmd.query_async::<String>(&mut conn);
        match timeout(COMMAND_TIMEOUT, ping).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(Error::unavailable("redis", e)),
            Err(elapsed) => return Err(Error::unavailable("redis ping timed out", elapsed)),
        }
        if self.connected.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Error::Unavailable {
                message: "redis subscriber is reconnecting".into(),
                source: None,
            })
        }
    }
}

/// How a connected session of the subscriber ended.
enum Ended {
    /// The broker is gone (or its node stopped reading events): stop for good.
    Stop,
    /// The connection was lost: reconnect.
    Lost,
}

/// Owns the pub/sub connection: applies subscribe commands, forwards messages, and reconnects
/// (resubscribing everything and then yielding `Resync`) whenever the connection is lost.
struct Subscriber {
    client: redis::Client,
    /// The broker's own id: its events come back from Redis and are dropped (already
    /// delivered locally).
    origin: String,
    prefix: String,
    control: String,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<BrokerEvent>,
    /// Channels the node wants, whether or not they are subscribed right now.
    wanted: HashSet<String>,
    /// A `Resync` must reach the node as soon as the event queue has room.
    resync_owed: bool,
    connected: Arc<AtomicBool>,
}

impl Subscriber {
    async fn run(mut self) {
        let mut backoff = RECONNECT_MIN;
        let mut ever_connected = false;
        loop {
            match self.connect().await {
                Ok((sink, stream)) => {
                    backoff = RECONNECT_MIN;
                    // Events may have been published while nobody here listened: after any
                    // reconnect, and on a first connect if topics were wanted before it.
                    if ever_connected || !self.wanted.is_empty() {
                        tracing::info!(
                            topics = self.wanted.len(),
                            "redis subscriber connected; resync"
                        );
                        self.resync_owed = true;
                    }
                    ever_connected = true;
                    self.connected.store(true, Ordering::SeqCst);
                    let ended = self.serve(sink, stream).await;
                    self.connected.store(false, Ordering::SeqCst);
                    match ended {
                        Ended::Stop => return,
                        Ended::Lost => tracing::warn!("redis subscriber connection lost"),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "redis subscriber cannot connect");
                    if !self.wait_down(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        }
    }

    /// Opens a pub/sub connection and subscribes the control channel and every wanted topic.
    async fn connect(&self) -> Result<(PubSubSink, PubSubStream)> {
        let pubsub = timeout(COMMAND_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|e| Error::unavailable("redis connect timed out", e))?
            .map_err(|e| Error::unavailable("redis connect", e))?;
        let (mut sink, stream) = pubsub.split();
        let channels: Vec<&String> = std::iter::once(&self.control)
            .chain(self.wanted.iter())
            .collect();
        // One SUBSCRIBE with every channel: a reconnect with many topics is one round trip.
        timeout(COMMAND_TIMEOUT * 2, sink.subscribe(channels))
            .await
            .map_err(|e| Error::unavailable("redis resubscribe timed out", e))?
            .map_err(|e| Error::unavailable("redis resubscribe", e))?;
        Ok((sink, stream))
    }

    /// While Redis is down: waits `delay`, still answering commands so callers are not held up
    /// and the wanted set stays current. Returns false when the broker is gone.
    async fn wait_down(&mut self, delay: Duration) -> bool {
        let deadline = tokio::time::sleep(delay);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return true,
                cmd = self.commands.recv() => match cmd {
                    None => return false,
                    Some(Command::Subscribe(ch, done)) => {
                        // Remembered: subscribed on reconnect, and the resync then delivers
                        // whatever was published meanwhile.
                        self.wanted.insert(ch);
                        let _ = done.send(Ok(()));
                    }
                    Some(Command::Unsubscribe(ch)) => {
                        self.wanted.remove(&ch);
                    }
                },
            }
        }
    }

    /// Serves one connection until it is lost or the broker is gone.
    async fn serve(&mut self, mut sink: PubSubSink, mut stream: PubSubStream) -> Ended {
        let mut probe =
            tokio::time::interval_at(tokio::time::Instant::now() + PROBE_INTERVAL, PROBE_INTERVAL);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = probe.tick() => {
                    // Subscribing again to a subscribed channel is answered and changes
                    // nothing: a round trip on this very connection.
                    let answered = matches!(
                        timeout(COMMAND_TIMEOUT, sink.subscribe(&self.control)).await,
                        Ok(Ok(()))
                    );
                    if !answered {
                        tracing::warn!("redis did not answer the subscriber's probe; reconnecting");
                        return Ended::Lost;
                    }
                }
                permit = self.events.reserve(), if self.resync_owed => match permit {
                    Ok(p) => {
                        p.send(BrokerEvent::Resync);
                        self.resync_owed = false;
                    }
                    Err(_) => return Ended::Stop,
                },
                cmd = self.commands.recv() => match cmd {
                    None => return Ended::Stop,
                    Some(Command::Subscribe(ch, done)) => {
                        if !self.wanted.insert(ch.clone()) {
                            let _ = done.send(Ok(()));
                            continue;
                        }
                        let ok = matches!(timeout(COMMAND_TIMEOUT, sink.subscribe(&ch)).await, Ok(Ok(())));
                        // Either way the topic is wanted: if this failed, the connection is
                        // replaced, the topic subscribed again, and a resync follows.
                        let _ = done.send(Ok(()));
                        if !ok {
                            return Ended::Lost;
                        }
                    }
                    Some(Command::Unsubscribe(ch)) => {
                        if self.wanted.remove(&ch)
                            && !matches!(timeout(COMMAND_TIMEOUT, sink.unsubscribe(&ch)).await, Ok(Ok(())))
                        {
                            return Ended::Lost;
                        }
                    }
                },
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return Ended::Lost;
                    };
                    let name = msg.get_channel_name();
                    if name == self.control {
                        tracing::info!("a node announced a cluster-wide resync");
                        self.resync_owed = true;
                        continue;
                    }
                    let Some(topic) = topic_of(&self.prefix, name) else {
                        continue;
                    };
                    let payload = msg.get_payload_bytes();
                    let event = match serde_json::from_slice::<Received>(payload) {
                        Ok(r) if r.origin == self.origin => continue,
                        Ok(r) => r.event,
                        Err(_) => match serde_json::from_slice::<Event>(payload) {
                            Ok(event) => event,
                            Err(e) => {
                                tracing::warn!(error = %e, channel = name, "undecodable broker event dropped");
                                continue;
                            }
                        },
                    };
                    match self.events.try_send(BrokerEvent::Event { topic, event }) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            if !self.resync_owed {
                                tracing::warn!("node is behind on broker events; dropping them until a resync");
                            }
                            self.resync_owed = true;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return Ended::Stop,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_round_trip() {
        for t in [Topic::Chat(ChatId(42)), Topic::User(UserId(7))] {
            assert_eq!(topic_of("p:", &channel("p:", t)), Some(t));
        }
        assert_eq!(topic_of("p:", "q:chat:1"), None);
        assert_eq!(topic_of("p:", "p:chat:x"), None);
        assert_eq!(topic_of("p:", "p:room:1"), None);
        assert_eq!(topic_of("p:", &control_channel("p:")), None);
    }
}
