//! The live event stream: [`Subscription`], a `Stream` of [`Event`]s that survives reconnects
//! and hands the application every message exactly once, in `seq` order per chat.
//!
//! # How it keeps the promise
//! A background task owns the WebSocket (`GET /v1/ws`) and, per chat, the highest `seq` it has
//! queued for the application. Live frames are a fast path, not the record:
//! - `seq == queued + 1`: delivered;
//! - `seq <= queued`: a duplicate (e.g. a frame racing a catch-up), dropped;
//! - `seq > queued + 1`: a hole; the task fetches `after_seq = queued` (paging forward), delivers
//!   what it gets in order, then carries on.
//!
//! After every (re)connect the server's `ready` frame says where each chat stands, and the task
//! fetches whatever it missed the same way. Any close or error (a restart, a load balancer, a
//! `1008` slow-consumer close) leads to a reconnect with jittered exponential backoff (100 ms
//! doubling to 5 s); only a rejected session (401) ends the stream.
//!
//! # Messages that change
//! Edits, deletes and reactions arrive as [`Event::MessageUpdated`] with the message's whole
//! current state; keep, per message, the state with the highest `rev`. An update never comes
//! before its message. Per chat the task also keeps a position in the chat's change feed
//! (`GET /v1/chats/{id}/changes`): after every reconnect it reads the feed from there and hands
//! over, as updates, the changes to messages already delivered that it missed, skipping any
//! state it already handed over, so within one subscription nothing is missed or repeated. The
//! position moves on each feed read (on reconnects, and after every
//! 512 live events of a chat); [`Subscription::resume_points`] saves it with the `seq`. A
//! subscription resumed from saved points may repeat an update the application already applied
//! (one that came live after the last feed read), never miss one; applying updates by `rev`
//! makes a repeat harmless.
//!
//! # Where each chat starts
//! - [`Client::subscribe`]: the chats the user has when it is called start at their current
//!   `last_seq` (only new messages).
//! - [`Client::subscribe_from`]: the given positions; every message with a larger `seq` comes.
//! - Any other chat (the user is added to it, or creates it, while subscribed or while away) is
//!   delivered **from its first message**: for a chat app the history of a chat one just joined
//!   is what the user expects to see, and it is the only choice that cannot lose messages sent
//!   between the join and the moment the SDK learns of it.
//! - A chat the user leaves keeps its position; if the user is added again, delivery resumes
//!   after the last message delivered, so nothing is ever handed over twice.

use crate::client::{Client, FetchOptions};
use crate::error::{Error, TransportKind};
use crate::retry::Backoff;
use chat_core::protocol::SendRequest;
use chat_core::protocol::{ChatView, ClientFrame, ServerFrame};
use chat_core::{ChatId, Message, Millis, Rev, Seq, UserId};
use futures::{SinkExt, Stream, StreamExt};
use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::UrlError;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Events queued for the application before the task waits for it to catch up. Bounded so a
/// slow application cannot make the SDK's memory grow; while it is full the task stops reading
/// the socket, and if the server gives up on the connection the task resumes by `seq` later.
const QUEUE: usize = 1024;
/// Frames the application may queue for the socket (typing) before more are dropped.
const OUTGOING: usize = 64;

/// First reconnect delay (before jitter).
const RECONNECT_BASE: Duration = Duration::from_millis(100);

/// Longest reconnect delay.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// How often the task pings the server, so a dead connection (no FIN, e.g. a host that
/// vanished) is noticed.
const PING_EVERY: Duration = Duration::from_secs(15);

/// Silence after which the connection is presumed dead and replaced.
const SILENCE_LIMIT: Duration = Duration::from_secs(45);

/// How often a stream hands its positions to the client (and its state file) while events
/// flow; also on drop.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Page size of catch-up fetches (the contract's maximum).
const CATCH_UP_PAGE: u32 = 500;

/// Live events of a chat remembered above its change-feed position before the task reads the
/// feed to move the position on (and forget them).
const SEEN_MAX: usize = 512;

/// Where a chat stands for a resumed subscription: the last `seq` handed over and the position
/// in the chat's change feed (`None`: unknown, so changes made to older messages while away are
/// not looked for).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ResumePoint {
    /// The last message handed over.
    pub seq: Seq,
    /// Every change up to this revision is reflected in what was handed over.
    pub rev: Option<Rev>,
}

impl ResumePoint {
    /// A point after message `seq` and change-feed revision `rev`.
    pub fn new(seq: Seq, rev: Option<Rev>) -> Self {
        ResumePoint { seq, rev }
    }
}

/// The change-feed positions the task reached and how far the application has read, shared
/// between them: a position counts once the application has taken every event queued before
/// it.
#[derive(Debug, Default)]
struct FeedProgress {
    /// Per chat, the position the application has caught up to.
    revs: HashMap<ChatId, Rev>,
    /// Events the application has taken.
    taken: u64,
    /// Positions the task reached, with the number of events it had queued by then.
    marks: VecDeque<(u64, ChatId, Rev)>,
}

impl FeedProgress {
    /// Moves every position whose events the application has all taken into `revs`.
    fn settle(&mut self) {
        while let Some(&(queued, chat_id, rev)) = self.marks.front() {
            if queued > self.taken {
                break;
            }
            self.marks.pop_front();
            let r = self.revs.entry(chat_id).or_insert(rev);
            *r = (*r).max(rev);
        }
    }
}

/// Something that happened, in the order the application should see it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The connection is up and the server's `ready` arrived; catch-up messages follow.
    Connected,
    /// The connection was lost. With `reconnecting: true` the SDK is already reconnecting and
    /// will catch up; with `false` the stream ends after this event (the session was rejected,
    /// e.g. after a logout, the server's TLS certificate is not trusted, or the SDK cannot
    /// connect at all).
    Disconnected {
        /// Why, for logs and status lines.
        reason: String,
        /// The transport cause when connecting failed (refused, not resolved, certificate not
        /// trusted, timed out, ...); `None` when a connection that was up ended, or the server
        /// refused the session.
        cause: Option<TransportKind>,
        /// Whether the SDK keeps trying.
        reconnecting: bool,
    },
    /// A message, exactly once, in `seq` order within its chat.
    Message(Message),
    /// A message already handed over was edited, deleted or reacted to: its whole current
    /// state. Keep the one with the highest `rev`.
    MessageUpdated(Message),
    /// The user was added to a chat, or its members changed. For a newly joined chat, its
    /// messages follow this event.
    ChatUpdated(ChatView),
    /// The user left or was removed from a chat; its messages stop.
    RemovedFromChat(ChatId),
    /// A member's read marker moved (the user's own included, from another device): unread
    /// counts and receipts follow from it.
    Read {
        /// The chat.
        chat_id: ChatId,
        /// The reader.
        user_id: UserId,
        /// Their marker now.
        last_read_seq: Seq,
    },
    /// Another member is typing; show it until `until` (server time, ms) unless another
    /// `Typing` extends it or their message arrives.
    Typing {
        /// The chat.
        chat_id: ChatId,
        /// Who types.
        user_id: UserId,
        /// Until when.
        until: Millis,
    },
    /// Someone who shares a chat with the user came online or went offline. Emitted only when
    /// it changes what the SDK last reported for that user.
    Presence {
        /// The user.
        user_id: UserId,
        /// Online on any server node.
        online: bool,
        /// When last seen online.
        last_seen: Option<Millis>,
    },
}

/// The live event stream of one session; a [`futures::Stream`] of [`Event`]s.
///
/// Made by [`Client::subscribe`] or [`Client::subscribe_from`]. Dropping it closes the
/// connection and stops the background task.
#[derive(Debug)]
pub struct Subscription {
    events: mpsc::Receiver<Event>,
    /// Per chat, the last `seq` the application has taken from the stream (plus the starting
    /// positions of chats with nothing taken yet). Updated in `poll_next`, so a saved position
    /// never runs ahead of what the application actually saw.
    positions: Arc<Mutex<HashMap<ChatId, Seq>>>,
    /// Change-feed positions, shared with the task.
    feed: Arc<Mutex<FeedProgress>>,
    /// Frames for the task to send on the socket (typing).
    outgoing: mpsc::Sender<ClientFrame>,
    task: JoinHandle<()>,
    /// The client, which keeps where this stream left each chat for the next subscription.
    client: Client,
    /// When positions were last handed to the client.
    last_saved: Instant,
}

impl Subscription {
    /// Spawns the background task on the current tokio runtime.
    pub(crate) fn start(
        runtime: &tokio::runtime::Handle,
        client: Client,
        start: HashMap<ChatId, ResumePoint>,
        only: Option<ChatId>,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (outgoing, outgoing_rx) = mpsc::channel(OUTGOING);
        let positions = Arc::new(Mutex::new(start.iter().map(|(c, p)| (*c, p.seq)).collect()));
        let feed = Arc::new(Mutex::new(FeedProgress {
            revs: start
                .iter()
                .filter_map(|(c, p)| Some((*c, p.rev?)))
                .collect(),
            ..FeedProgress::default()
        }));
        let worker = Worker {
            client: client.clone(),
            tx,
            chats: start
                .into_iter()
                .map(|(chat_id, point)| (chat_id, ChatState::new(point.seq, point.rev)))
                .collect(),
            positions: positions.clone(),
            feed: feed.clone(),
            queued_events: 0,
            outgoing: outgoing_rx,
            presence: HashMap::new(),
            announced_down: false,
            inflight: HashMap::new(),
            only,
            cause: None,
        };
        let task = runtime.spawn(worker.run());
        Subscription {
            events: rx,
            positions,
            feed,
            outgoing,
            task,
            client,
            last_saved: Instant::now(),
        }
    }

    /// Tells the chat's other members that the user is typing (they see it for about 5 s;
    /// call it again every few seconds while the person keeps typing). Sent on this
    /// subscription's WebSocket; dropped quietly while it is reconnecting, since a typing
    /// notice is only worth something now. The server forwards at most one a second.
    pub fn typing(&self, chat_id: ChatId) {
        let _ = self.outgoing.try_send(ClientFrame::Typing { chat_id });
    }

    /// The last `seq` delivered to the application, per chat (chats with nothing delivered yet
    /// show their starting position). Persist it and pass it to [`Client::subscribe_from`] to
    /// resume later without missing or repeating a message.
    pub fn positions(&self) -> HashMap<ChatId, Seq> {
        lock(&self.positions).clone()
    }

    /// The last `seq` delivered to the application in one chat.
    pub fn position(&self, chat_id: ChatId) -> Option<Seq> {
        lock(&self.positions).get(&chat_id).copied()
    }

    /// Where each chat stands, with its change-feed position: persist it and pass it to
    /// [`Client::resume`] to continue later with every new message and every change made
    /// meanwhile (see the module docs).
    pub fn resume_points(&self) -> HashMap<ChatId, ResumePoint> {
        let positions = lock(&self.positions);
        let mut feed = lock(&self.feed);
        feed.settle();
        positions
            .iter()
            .map(|(c, seq)| (*c, ResumePoint::new(*seq, feed.revs.get(c).copied())))
            .collect()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
        // The next subscription of this client (or of the next run, with a state directory)
        // continues from here.
        self.client.save_positions(&self.resume_points());
    }
}

impl Stream for Subscription {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        let polled = this.events.poll_recv(cx);
        if let Poll::Ready(Some(event)) = &polled {
            if let Event::Message(m) = event {
                let mut positions = lock(&this.positions);
                let pos = positions.entry(m.chat_id).or_insert(Seq::ZERO);
                *pos = (*pos).max(m.seq);
            }
            lock(&this.feed).taken += 1;
            if this.last_saved.elapsed() >= SAVE_EVERY {
                this.last_saved = Instant::now();
                let points = this.resume_points();
                this.client.save_positions(&points);
            }
        }
        polled
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning only means a panic elsewhere; a map of positions stays usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the task knows about one chat.
#[derive(Clone, Debug)]
struct ChatState {
    /// Highest `seq` handed to the event queue; everything up to it was queued exactly once.
    queued: Seq,
    /// Whether the user is (as far as the task knows) a member.
    member: bool,
    /// The change-feed position: every change up to it is reflected in what was queued
    /// (`None`: not known yet).
    rev: Option<Rev>,
    /// Messages queued (new or updated) above `rev`: the `rev` of the state queued last, so a
    /// feed read does not hand the same state over again.
    seen: HashMap<Seq, Rev>,
    /// Size of `seen` at which live events trigger a feed read.
    feed_due: usize,
}

impl ChatState {
    /// A chat the task starts following now, from `queued`.
    fn new(queued: Seq, rev: Option<Rev>) -> Self {
        ChatState {
            queued,
            member: true,
            rev,
            seen: HashMap::new(),
            feed_due: SEEN_MAX,
        }
    }

    /// Whether this state of a message was already queued (or is covered by the feed position).
    fn has_seen(&self, m: &Message) -> bool {
        self.rev.is_some_and(|r| m.rev <= r) || self.seen.get(&m.seq).is_some_and(|r| m.rev <= *r)
    }

    /// Notes a queued state of a message, while the feed position is known.
    fn saw(&mut self, m: &Message) {
        if self.rev.is_some_and(|r| m.rev > r) {
            let r = self.seen.entry(m.seq).or_insert(m.rev);
            *r = (*r).max(m.rev);
        }
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum Stop {
    /// The application dropped the subscription.
    ConsumerGone,
    /// Reconnecting cannot help (the session was rejected); the stream ends.
    Fatal(String),
    /// Reconnect after a backoff.
    Reconnect(String),
}

/// The background task.
struct Worker {
    client: Client,
    tx: mpsc::Sender<Event>,
    chats: HashMap<ChatId, ChatState>,
    positions: Arc<Mutex<HashMap<ChatId, Seq>>>,
    /// Change-feed positions reached, for [`Subscription::resume_points`].
    feed: Arc<Mutex<FeedProgress>>,
    /// Events queued so far (`Disconnected` included), to place feed positions among them.
    queued_events: u64,
    /// Frames the application asked to send (typing).
    outgoing: mpsc::Receiver<ClientFrame>,
    /// The presence last reported per user, so repeated frames are not events.
    presence: HashMap<UserId, bool>,
    /// Whether a `Disconnected` has been emitted since the last `Connected`, so a server that
    /// stays down produces one event, not one per attempt.
    announced_down: bool,
    /// Sends written on this connection and waiting for their `ack` (or error frame), by
    /// `client_msg_id`. Dropped with the connection, which tells the senders it was lost.
    inflight: HashMap<String, oneshot::Sender<Result<Message, Error>>>,
    /// A subscription to one chat ([`Client::subscribe_chat`]): events of other chats are
    /// not followed or handed over.
    only: Option<ChatId>,
    /// The transport cause of the last failed connection attempt, for `Disconnected`.
    cause: Option<TransportKind>,
}

/// The WebSocket of a connected subscription, offered to the client's send queue.
#[derive(Clone, Debug)]
pub(crate) struct WsLink {
    /// Tells one connection's link from the next.
    id: u64,
    tx: mpsc::Sender<LinkSend>,
}

/// One send for the connection to write, and where its outcome goes.
#[derive(Debug)]
pub(crate) struct LinkSend {
    client_msg_id: String,
    text: String,
    reply: oneshot::Sender<Result<Message, Error>>,
}

/// Sends the send queue may have waiting for the socket writer.
const LINK_QUEUE: usize = 256;

/// Numbers connections' links.
static LINK_IDS: AtomicU64 = AtomicU64::new(1);

impl WsLink {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Writes a `send` frame and waits for its `ack` (or error frame). A lost connection or no
    /// answer within `timeout` is a retryable transport error: the caller resends (over REST)
    /// with the same `client_msg_id`, which the server deduplicates.
    pub(crate) async fn send(
        &self,
        request: &SendRequest,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let client_msg_id = request.client_msg_id.clone().unwrap_or_default();
        let frame = ClientFrame::Send {
            chat_id: request.chat_id,
            msg_text: request.msg_text.clone(),
            timestamp: request.timestamp,
            client_msg_id: client_msg_id.clone(),
            reply_to_seq: request.reply_to_seq,
        };
        let text = serde_json::to_string(&frame)
            .map_err(|e| Error::Protocol(format!("encoding a send frame: {e}")))?;
        let (reply, answer) = oneshot::channel();
        let lost = || Error::Transport {
            kind: TransportKind::Other,
            message: "the WebSocket closed before the ack".into(),
            source: None,
        };
        self.tx
            .send(LinkSend {
                client_msg_id,
                text,
                reply,
            })
            .await
            .map_err(|_| lost())?;
        match tokio::time::timeout(timeout, answer).await {
            Err(_) => Err(Error::Transport {
                kind: TransportKind::TimedOut,
                message: format!("no ack on the WebSocket within {timeout:?}"),
                source: None,
            }),
            Ok(Err(_)) => Err(lost()),
            Ok(Ok(result)) => result,
        }
    }
}

impl Worker {
    async fn run(mut self) {
        let mut backoff = Backoff::new(RECONNECT_BASE, RECONNECT_MAX);
        loop {
            let mut ready = false;
            let stop = self.connection(&mut ready).await;
            if ready {
                backoff.reset();
            }
            match stop {
                Stop::ConsumerGone => return,
                Stop::Fatal(reason) => {
                    tracing::warn!(%reason, "subscription ended");
                    let _ = self
                        .emit(Event::Disconnected {
                            reason,
                            cause: self.cause,
                            reconnecting: false,
                        })
                        .await;
                    return;
                }
                Stop::Reconnect(reason) => {
                    tracing::debug!(%reason, "subscription reconnecting");
                    if !self.announced_down {
                        self.announced_down = true;
                        let event = Event::Disconnected {
                            reason,
                            cause: self.cause,
                            reconnecting: true,
                        };
                        if self.emit(event).await.is_err() {
                            return;
                        }
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// One connection, from handshake to close. Sets `ready` once the server's `ready` frame
    /// has been handled. While it is up, the client's sends go over it.
    async fn connection(&mut self, ready: &mut bool) -> Stop {
        self.cause = None;
        let (tx, mut sends) = mpsc::channel(LINK_QUEUE);
        let link = WsLink {
            id: LINK_IDS.fetch_add(1, Ordering::Relaxed),
            tx,
        };
        let stop = self.connected(ready, &link, &mut sends).await;
        self.client.clear_ws_link(link.id);
        // Dropping the waiting senders tells each that the connection was lost.
        self.inflight.clear();
        stop
    }

    async fn connected(
        &mut self,
        ready: &mut bool,
        link: &WsLink,
        sends: &mut mpsc::Receiver<LinkSend>,
    ) -> Stop {
        let mut offered = false;
        let mut request = match self.client.ws_url().into_client_request() {
            Ok(r) => r,
            Err(e) => return Stop::Fatal(format!("bad WebSocket URL: {e}")),
        };
        match self.client.bearer() {
            Ok(v) => {
                request.headers_mut().insert(AUTHORIZATION, v);
            }
            Err(e) => return Stop::Fatal(e.to_string()),
        }
        // `wss://` goes through the same rustls configuration as REST (same roots).
        #[cfg(feature = "rustls")]
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            request,
            None,
            true,
            Some(tokio_tungstenite::Connector::Rustls(self.client.tls())),
        );
        #[cfg(not(feature = "rustls"))]
        let connect = tokio_tungstenite::connect_async_with_config(request, None, true);
        let mut ws = match tokio::time::timeout(self.client.connect_timeout(), connect).await {
            Err(_) => {
                self.cause = Some(TransportKind::TimedOut);
                return Stop::Reconnect("connecting timed out".into());
            }
            Ok(Ok((ws, _))) => ws,
            Ok(Err(WsError::Http(resp))) if resp.status().as_u16() == 401 => {
                return Stop::Fatal("the server rejected the session (401)".into())
            }
            Ok(Err(WsError::Http(resp))) => {
                return Stop::Reconnect(format!("handshake answered {}", resp.status()))
            }
            Ok(Err(WsError::Url(UrlError::TlsFeatureNotEnabled))) => {
                return Stop::Fatal("wss:// needs chat-client's `rustls` feature".into())
            }
            Ok(Err(e)) => {
                let error = Error::transport("connecting failed", e);
                let kind = error.transport_kind();
                self.cause = kind;
                // A certificate that does not verify will not verify next time either: end
                // the stream and say so rather than retry forever in silence.
                return if kind == Some(TransportKind::CertificateNotTrusted) {
                    Stop::Fatal(error.to_string())
                } else {
                    Stop::Reconnect(error.to_string())
                };
            }
        };
        let ping = match serde_json::to_string(&ClientFrame::Ping) {
            Ok(p) => p,
            Err(e) => return Stop::Fatal(format!("encoding ping: {e}")),
        };
        let mut ticker = tokio::time::interval(PING_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut last_heard = Instant::now();
        // Typing notices asked for while disconnected are stale now.
        while self.outgoing.try_recv().is_ok() {}
        loop {
            tokio::select! {
                frame = ws.next() => {
                    last_heard = Instant::now();
                    let text = match frame {
                        None => return Stop::Reconnect("connection closed".into()),
                        Some(Err(e)) => return Stop::Reconnect(format!("connection error: {e}")),
                        Some(Ok(WsMessage::Text(t))) => t,
                        Some(Ok(WsMessage::Close(close))) => {
                            return Stop::Reconnect(match close {
                                Some(c) => format!("closed by server: {} {}", u16::from(c.code), c.reason),
                                None => "closed by server".into(),
                            })
                        }
                        // Pings are answered by tungstenite itself; binary frames are not part
                        // of the contract.
                        Some(Ok(_)) => continue,
                    };
                    let frame: ServerFrame = match serde_json::from_str(text.as_str()) {
                        Ok(f) => f,
                        Err(e) => {
                            // A newer server may send frame types this SDK does not know.
                            tracing::debug!(error = %e, "ignoring an unknown frame");
                            continue;
                        }
                    };
                    if let Err(stop) = self.handle(frame, ready).await {
                        return stop;
                    }
                    if *ready && !offered {
                        offered = true;
                        self.client.set_ws_link(link.clone());
                    }
                }
                Some(send) = sends.recv() => {
                    self.inflight.insert(send.client_msg_id, send.reply);
                    if let Err(e) = ws.send(WsMessage::Text(send.text.into())).await {
                        return Stop::Reconnect(format!("sending a message failed: {e}"));
                    }
                }
                Some(out) = self.outgoing.recv() => {
                    let Ok(text) = serde_json::to_string(&out) else { continue };
                    if let Err(e) = ws.send(WsMessage::Text(text.into())).await {
                        return Stop::Reconnect(format!("sending a frame failed: {e}"));
                    }
                }
                _ = ticker.tick() => {
                    if last_heard.elapsed() > SILENCE_LIMIT {
                        return Stop::Reconnect("the server went silent".into());
                    }
                    if let Err(e) = ws.send(WsMessage::Text(ping.clone().into())).await {
                        return Stop::Reconnect(format!("sending a ping failed: {e}"));
                    }
                }
            }
        }
    }

    async fn handle(&mut self, frame: ServerFrame, ready: &mut bool) -> Result<(), Stop> {
        if let Some(only) = self.only {
            let about = match &frame {
                ServerFrame::Message { message } | ServerFrame::MessageUpdated { message } => {
                    Some(message.chat_id)
                }
                ServerFrame::ChatUpdated { chat } => Some(chat.chat_id),
                ServerFrame::RemovedFromChat { chat_id }
                | ServerFrame::Read { chat_id, .. }
                | ServerFrame::Typing { chat_id, .. } => Some(*chat_id),
                _ => None,
            };
            if about.is_some_and(|c| c != only) {
                return Ok(());
            }
        }
        match frame {
            ServerFrame::Ready { mut chats, .. } => {
                if let Some(only) = self.only {
                    chats.retain(|c| c.chat_id == only);
                }
                *ready = true;
                self.announced_down = false;
                self.emit(Event::Connected).await?;
                let listed: HashSet<ChatId> = chats.iter().map(|c| c.chat_id).collect();
                let gone: Vec<ChatId> = self
                    .chats
                    .iter()
                    .filter(|(id, st)| st.member && !listed.contains(id))
                    .map(|(id, _)| *id)
                    .collect();
                for chat_id in gone {
                    self.left(chat_id).await?;
                }
                for cursor in chats {
                    let queued = self.track(cursor.chat_id);
                    if cursor.last_seq > queued {
                        self.catch_up(cursor.chat_id).await?;
                    }
                    // A server that does not say `last_rev` has no change feed to read.
                    if cursor.last_rev.is_some() {
                        self.catch_up_changes(cursor.chat_id, cursor.last_rev)
                            .await?;
                    }
                }
            }
            ServerFrame::Message { message } => self.live(message).await?,
            ServerFrame::MessageUpdated { message } => self.live_update(message).await?,
            ServerFrame::ChatUpdated { chat } => {
                let chat_id = chat.chat_id;
                let last_seq = chat.last_seq;
                let queued = self.track(chat_id);
                self.emit(Event::ChatUpdated(chat)).await?;
                if last_seq > queued {
                    self.catch_up(chat_id).await?;
                }
            }
            ServerFrame::RemovedFromChat { chat_id } => self.left(chat_id).await?,
            ServerFrame::Read {
                chat_id,
                user_id,
                last_read_seq,
            } => {
                self.emit(Event::Read {
                    chat_id,
                    user_id,
                    last_read_seq,
                })
                .await?
            }
            ServerFrame::Typing {
                chat_id,
                user_id,
                until,
            } => {
                self.emit(Event::Typing {
                    chat_id,
                    user_id,
                    until,
                })
                .await?
            }
            ServerFrame::Presence {
                user_id,
                online,
                last_seen,
            } => {
                // The server sends one copy per shared chat; report changes only.
                if self.presence.insert(user_id, online) != Some(online) {
                    self.emit(Event::Presence {
                        user_id,
                        online,
                        last_seen,
                    })
                    .await?
                }
            }
            ServerFrame::Error {
                code,
                message,
                client_msg_id,
            } => {
                tracing::debug!(%code, %message, "server error frame");
                if let Some(reply) = client_msg_id.and_then(|id| self.inflight.remove(&id)) {
                    let _ = reply.send(Err(Error::Api {
                        status: code.http_status(),
                        code,
                        message,
                        retry_after: None,
                    }));
                }
            }
            ServerFrame::Ack {
                client_msg_id,
                message,
            } => {
                if let Some(reply) = self.inflight.remove(&client_msg_id) {
                    let _ = reply.send(Ok(message));
                }
            }
            ServerFrame::Pong => {}
        }
        Ok(())
    }

    /// The chat's state, creating it (from seq 0, see the module docs) if it is new, and
    /// marking it as one the user belongs to.
    /// Returns its queued position. A chat new to the task starts at seq 0 and at revision 0
    /// (its history comes in current state; the feed then skips every state already queued).
    fn track(&mut self, chat_id: ChatId) -> Seq {
        let mut new = false;
        let st = self.chats.entry(chat_id).or_insert_with(|| {
            new = true;
            ChatState::new(Seq::ZERO, Some(Rev::ZERO))
        });
        st.member = true;
        let queued = st.queued;
        if new {
            self.reached(chat_id, Rev::ZERO);
        }
        lock(&self.positions).entry(chat_id).or_insert(queued);
        queued
    }

    /// The user is no longer in the chat: stop expecting its messages and tell the app once.
    async fn left(&mut self, chat_id: ChatId) -> Result<(), Stop> {
        match self.chats.get_mut(&chat_id) {
            Some(st) if st.member => {
                st.member = false;
                self.emit(Event::RemovedFromChat(chat_id)).await
            }
            _ => Ok(()),
        }
    }

    async fn live(&mut self, message: Message) -> Result<(), Stop> {
        let queued = self.track(message.chat_id);
        if message.seq <= queued {
            Ok(())
        } else if message.seq == queued.next() {
            let chat_id = message.chat_id;
            self.deliver(message).await?;
            self.maybe_read_feed(chat_id).await
        } else {
            // A hole: the missing messages (and this one) come from history, in order.
            self.catch_up(message.chat_id).await
        }
    }

    /// A live change to a message: queued unless that state was queued already. A change to a
    /// message not queued yet (the server sends none, but a hole may hide it) is left to the
    /// catch-up, which reads the message in its current state.
    async fn live_update(&mut self, message: Message) -> Result<(), Stop> {
        let chat_id = message.chat_id;
        let Some(st) = self.chats.get(&chat_id).filter(|st| st.member) else {
            return Ok(());
        };
        if message.seq > st.queued {
            return self.catch_up(chat_id).await;
        }
        if st.has_seen(&message) {
            return Ok(());
        }
        self.deliver_update(message).await?;
        self.maybe_read_feed(chat_id).await
    }

    /// Reads the chat's change feed from its position to the end and queues, as updates, the
    /// states of messages already queued that were not queued yet; then moves the position on.
    /// `server_rev` is the chat's newest revision when known (from `ready`): nothing to read
    /// when the position is there already; `None` reads anyway. A chat whose position is unknown starts at
    /// `server_rev` (changes made before are not looked for).
    async fn catch_up_changes(
        &mut self,
        chat_id: ChatId,
        server_rev: Option<Rev>,
    ) -> Result<(), Stop> {
        let Some(st) = self.chats.get_mut(&chat_id).filter(|st| st.member) else {
            return Ok(());
        };
        let from = match (st.rev, server_rev) {
            (None, None) => return Ok(()),
            (None, Some(now)) => {
                st.rev = Some(now);
                self.reached(chat_id, now);
                return Ok(());
            }
            (Some(at), Some(now)) if now <= at => return Ok(()),
            (Some(at), _) => at,
        };
        let (changed, next) = match self.client.changes_all_after(chat_id, from).await {
            Ok(found) => found,
            Err(e) if e.is_unauthenticated() => {
                return Err(Stop::Fatal(format!(
                    "reading changes of chat {chat_id}: {e}"
                )))
            }
            Err(e) if matches!(e.status(), Some(403 | 404)) => return self.left(chat_id).await,
            Err(e) if e.status() == Some(501) => {
                // The server's store keeps messages unchanged: there is no feed to follow.
                if let Some(st) = self.chats.get_mut(&chat_id) {
                    st.rev = None;
                    st.seen.clear();
                }
                return Ok(());
            }
            Err(e) => {
                return Err(Stop::Reconnect(format!(
                    "reading changes of chat {chat_id}: {e}"
                )))
            }
        };
        // The position moves to the last revision before the first message not queued yet: that
        // one comes live (or by a catch-up) in the state of its publish, and a change to it
        // after that must still count as unseen.
        let mut handled = from;
        let mut blocked = false;
        for m in changed {
            let Some(st) = self.chats.get(&chat_id) else {
                return Ok(());
            };
            if m.seq > st.queued {
                blocked = true;
                continue;
            }
            if !blocked {
                handled = m.rev;
            }
            if !st.has_seen(&m) {
                self.deliver_update(m).await?;
            }
        }
        if !blocked {
            handled = handled.max(next);
        }
        if let Some(st) = self.chats.get_mut(&chat_id) {
            st.rev = Some(handled);
            st.seen.retain(|_, r| *r > handled);
            st.feed_due = st.seen.len() + SEEN_MAX;
        }
        self.reached(chat_id, handled);
        Ok(())
    }

    /// Queues a message's new state.
    async fn deliver_update(&mut self, message: Message) -> Result<(), Stop> {
        if let Some(st) = self.chats.get_mut(&message.chat_id) {
            st.saw(&message);
        }
        self.emit(Event::MessageUpdated(message)).await
    }

    /// Fetches and delivers everything after the chat's queued position, to the end.
    async fn catch_up(&mut self, chat_id: ChatId) -> Result<(), Stop> {
        loop {
            let Some(queued) = self.chats.get(&chat_id).map(|st| st.queued) else {
                return Ok(());
            };
            let options = FetchOptions::after_seq(queued).limit(CATCH_UP_PAGE);
            let page = match self.client.fetch(chat_id, options).await {
                Ok(page) => page,
                Err(e) if e.is_unauthenticated() => {
                    return Err(Stop::Fatal(format!("catching up chat {chat_id}: {e}")))
                }
                Err(e) if matches!(e.status(), Some(403 | 404)) => {
                    // Removed meanwhile; the server's own event or next `ready` agrees.
                    return self.left(chat_id).await;
                }
                Err(e) => return Err(Stop::Reconnect(format!("catching up chat {chat_id}: {e}"))),
            };
            let more = page.next_page_token.is_some();
            if page.messages.is_empty() {
                return Ok(());
            }
            let before = queued;
            for message in page.messages {
                let queued = self.chats.get(&chat_id).map_or(Seq::ZERO, |st| st.queued);
                if message.seq <= queued {
                    continue;
                }
                if message.seq != queued.next() {
                    // History itself has a hole: never skip; try again after a reconnect.
                    return Err(Stop::Reconnect(format!(
                        "history of chat {chat_id} jumps from {queued} to {}",
                        message.seq
                    )));
                }
                self.deliver(message).await?;
            }
            let after = self.chats.get(&chat_id).map_or(Seq::ZERO, |st| st.queued);
            if after == before {
                // Only old messages came back: asking again would loop forever.
                return Err(Stop::Reconnect(format!(
                    "fetch after {before} of chat {chat_id} made no progress"
                )));
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// Queues a message that is exactly the next of its chat.
    async fn deliver(&mut self, message: Message) -> Result<(), Stop> {
        if let Some(st) = self.chats.get_mut(&message.chat_id) {
            st.queued = message.seq;
            st.saw(&message);
        }
        self.emit(Event::Message(message)).await
    }

    /// Reads the chat's change feed once enough live events are remembered above its
    /// position, so the memory stays bounded and saved resume points stay recent.
    async fn maybe_read_feed(&mut self, chat_id: ChatId) -> Result<(), Stop> {
        if self
            .chats
            .get(&chat_id)
            .is_some_and(|st| st.seen.len() > st.feed_due)
        {
            self.catch_up_changes(chat_id, None).await?;
        }
        Ok(())
    }

    async fn emit(&mut self, event: Event) -> Result<(), Stop> {
        self.tx.send(event).await.map_err(|_| Stop::ConsumerGone)?;
        self.queued_events += 1;
        Ok(())
    }

    /// Records that every change of the chat up to `rev` is in the events queued so far.
    fn reached(&mut self, chat_id: ChatId, rev: Rev) {
        let mut feed = lock(&self.feed);
        feed.marks.push_back((self.queued_events, chat_id, rev));
        feed.settle();
    }
}

#[cfg(test)]
mod tests {
    //! The subscription against a scripted peer: a tiny loopback server that answers
    //! `GET /v1/fetch` from an in-memory history and plays exact WebSocket frame sequences
    //! (holes, duplicates, a slow-consumer close, new and removed chats) that a real server
    //! produces only by chance. The real server is exercised by `chat-server/tests/e2e.rs`.

    use super::*;
    use chat_core::protocol::{ChatCursor, FetchResponse};
    use chat_core::UserId;
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::WebSocketStream;

    const CHAT: ChatId = ChatId(1);
    const NEW_CHAT: ChatId = ChatId(2);

    fn msg(chat_id: ChatId, seq: i64) -> Message {
        Message::new(chat_id, Seq(seq), UserId(7), format!("m{seq}"), seq)
    }

    /// The peer's state: how much of each chat's history exists so far.
    #[derive(Default)]
    struct Peer {
        visible: AtomicI64,
        new_chat_visible: AtomicI64,
        connections: AtomicUsize,
        /// Fetches answered, to check that duplicates are dropped without asking history.
        fetches: AtomicUsize,
        /// The highest seq of `CHAT` a fetch has returned, so the script can wait for the
        /// client's catch-up before it plays the next frame.
        served: AtomicI64,
    }

    impl Peer {
        fn history(&self, chat: ChatId, after: i64, limit: i64) -> FetchResponse {
            let end = if chat == CHAT {
                self.visible.load(Ordering::SeqCst)
            } else {
                self.new_chat_visible.load(Ordering::SeqCst)
            };
            let last = end.min(after + limit);
            self.fetches.fetch_add(1, Ordering::SeqCst);
            if chat == CHAT {
                self.served.fetch_max(last, Ordering::SeqCst);
            }
            FetchResponse::new(
                (after + 1..=last).map(|s| msg(chat, s)).collect(),
                (last < end).then(|| "more".to_owned()),
            )
        }

        /// Waits until the client has fetched `CHAT` up to `seq`.
        async fn wait_served(&self, seq: i64) {
            tokio::time::timeout(Duration::from_secs(60), async {
                while self.served.load(Ordering::SeqCst) < seq {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await
            .expect("the client fetched in time");
        }
    }

    async fn serve(listener: TcpListener, peer: Arc<Peer>) {
        while let Ok((stream, _)) = listener.accept().await {
            let peer = peer.clone();
            tokio::spawn(async move { connection(stream, peer).await });
        }
    }

    async fn connection(mut stream: TcpStream, peer: Arc<Peer>) {
        // Look at the request head without consuming it, so a WebSocket handshake can still
        // read it in full.
        let mut buf = vec![0u8; 8192];
        let head = loop {
            let n = stream.peek(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.contains("\r\n\r\n") {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let target = head
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        assert!(
            head.to_lowercase().contains("authorization: bearer t"),
            "{head}"
        );
        if target.starts_with("/v1/ws") {
            let ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let n = peer.connections.fetch_add(1, Ordering::SeqCst);
            script(n, ws, &peer).await;
            return;
        }
        let mut head_bytes = vec![0u8; head.find("\r\n\r\n").unwrap() + 4];
        stream.read_exact(&mut head_bytes).await.unwrap();
        let query: HashMap<&str, &str> = target
            .split_once('?')
            .map(|(_, q)| q.split('&').filter_map(|kv| kv.split_once('=')).collect())
            .unwrap_or_default();
        assert!(target.starts_with("/v1/fetch?"), "{target}");
        let chat = ChatId(query["chat_id"].parse().unwrap());
        let after: i64 = query["after_seq"].parse().unwrap();
        let limit: i64 = query["limit"].parse().unwrap();
        let body = serde_json::to_string(&peer.history(chat, after, limit)).unwrap();
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await.unwrap();
    }

    async fn frame(ws: &mut WebSocketStream<TcpStream>, f: ServerFrame) {
        let text = serde_json::to_string(&f).unwrap();
        ws.send(WsMessage::Text(text.into())).await.unwrap();
    }

    fn live(seq: i64) -> ServerFrame {
        ServerFrame::Message {
            message: msg(CHAT, seq),
        }
    }

    async fn script(n: usize, mut ws: WebSocketStream<TcpStream>, peer: &Peer) {
        let ready = |last: i64| ServerFrame::Ready {
            user_id: UserId(1),
            chats: vec![ChatCursor {
                chat_id: CHAT,
                last_seq: Seq(last),
                last_rev: None,
            }],
        };
        match n {
            0 => {
                peer.visible.store(3, Ordering::SeqCst);
                frame(&mut ws, ready(3)).await;
                peer.wait_served(3).await;
                peer.visible.store(5, Ordering::SeqCst);
                frame(&mut ws, live(5)).await; // a hole: 4 is missing
                peer.wait_served(5).await;
                frame(&mut ws, live(4)).await; // late duplicate
                peer.visible.store(6, Ordering::SeqCst);
                frame(&mut ws, live(6)).await;
                frame(&mut ws, live(6)).await; // duplicate
                let close = CloseFrame {
                    code: CloseCode::Policy,
                    reason: "slow consumer".into(),
                };
                ws.close(Some(close)).await.unwrap();
            }
            1 => {
                // While away, 7 and 8 were stored; more than a page of the new chat exists.
                peer.visible.store(8, Ordering::SeqCst);
                frame(&mut ws, ready(8)).await;
                peer.wait_served(8).await;
                peer.visible.store(9, Ordering::SeqCst);
                frame(&mut ws, live(9)).await;
                peer.new_chat_visible.store(1200, Ordering::SeqCst);
                let chat = ChatView::new(NEW_CHAT, "new", vec![UserId(1), UserId(7)], Seq(1200));
                frame(&mut ws, ServerFrame::ChatUpdated { chat }).await;
                frame(&mut ws, live(9)).await; // duplicate after a catch-up
                frame(&mut ws, ServerFrame::RemovedFromChat { chat_id: CHAT }).await;
                frame(&mut ws, ServerFrame::RemovedFromChat { chat_id: CHAT }).await;
                // Stay open until the client goes away.
                while let Some(Ok(_)) = ws.next().await {}
            }
            _ => panic!("unexpected reconnect {n}"),
        }
    }

    #[tokio::test]
    async fn holes_are_filled_duplicates_dropped_and_reconnects_resume() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = Arc::new(Peer::default());
        tokio::spawn(serve(listener, peer.clone()));
        let client = Client::with_token(&format!("http://{addr}"), "t").unwrap();
        let mut sub = client
            .subscribe_from(HashMap::from([(CHAT, Seq(2))]))
            .unwrap();

        let mut got = Vec::new();
        let mut new_chat_messages = 0i64;
        loop {
            let event = tokio::time::timeout(Duration::from_secs(60), sub.next())
                .await
                .expect("event in time")
                .expect("stream open");
            match event {
                Event::Message(m) if m.chat_id == NEW_CHAT => {
                    new_chat_messages += 1;
                    assert_eq!(m.seq, Seq(new_chat_messages), "new chat in order from 1");
                }
                Event::Message(m) => got.push(format!("m{}", m.seq)),
                Event::MessageUpdated(m) => got.push(format!("u{}", m.seq)),
                Event::Connected => got.push("connected".into()),
                Event::Disconnected {
                    reconnecting,
                    reason,
                    cause: _,
                } => {
                    assert!(reconnecting);
                    assert!(reason.contains("1008"), "{reason}");
                    got.push("disconnected".into());
                }
                Event::ChatUpdated(c) => got.push(format!("updated {}", c.chat_id)),
                Event::RemovedFromChat(c) => {
                    got.push(format!("removed {c}"));
                    break;
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
        assert_eq!(
            got,
            [
                "connected",
                "m3",
                "m4",
                "m5",
                "m6",
                "disconnected",
                "connected",
                "m7",
                "m8",
                "m9",
                "updated 2",
                "removed 1"
            ]
        );
        assert_eq!(new_chat_messages, 1200);
        // After `ready` (twice), for the hole, and three pages of the new chat; duplicates
        // and in-order frames never cost a fetch.
        assert_eq!(peer.fetches.load(Ordering::SeqCst), 6);
        assert_eq!(
            sub.positions(),
            HashMap::from([(CHAT, Seq(9)), (NEW_CHAT, Seq(1200))])
        );
    }
}
