//! One WebSocket connection (`GET /v1/ws`): authentication and upgrade, the `ready` frame, then
//! one task per connection that both reads client frames (size and UTF-8 violations, idle
//! timeout, up to 32 in flight) and writes the connection's bounded queue of pre-serialized
//! frames (batched, one flush per burst), pings and the close handshake.
//!
//! # Memory of an idle connection
//! A node's memory goes mostly to idle sockets, so what an idle connection keeps is kept small
//! on purpose (measured in docs/benchmarks.md, "Connections"): one task instead of a reader and
//! a writer (and no split of the socket into two locked halves), a future whose idle state
//! holds only the socket, the deadlines and one timer (setup, the `ready` frame and the close
//! handshake are boxed, so their larger states exist only while they run), the frames in flight
//! allocated on the first client frame and freed once answered, the outbound queue allocated on
//! the first queued frame ([`Connection`]), and a 512-byte read buffer.

use crate::auth::{authenticate, bearer, Caller};
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{ClientAddr, QueryParams};
use crate::hub::{close_code, serialize, truncate_reason, Connection, Push};
use crate::rate_limit::ConnectionSlot;
use crate::send::{commit, prepare, require_member, Prepared, SendInput};
use crate::state::AppState;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use bytes::Bytes;
use chat_core::protocol::{ChatCursor, ClientFrame, ServerFrame};
use chat_core::{ChatId, Error, Result, UserId};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{SinkExt as _, StreamExt as _};
use std::future::Future as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::{timeout, Instant, Sleep};

/// How long the server waits to send its close frame, and then for the peer's reply, before
/// dropping the socket. Short: a peer that is not reading will never take it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /v1/ws`: authenticates (header or `?token=`), takes one of the user's connection slots,
/// then upgrades.
pub(crate) async fn upgrade(
    State(st): State<Arc<AppState>>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    QueryParams(query): QueryParams,
    upgrade: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .or(query.get("token").map(String::as_str))
        .ok_or_else(|| {
            Error::Unauthenticated("missing Authorization header or token parameter".into())
        })?;
    let caller = authenticate(&st, token).await?;
    let upgrade = upgrade.map_err(|r| {
        ApiError(Error::BadRequest(format!(
            "not a WebSocket upgrade: {}",
            r.body_text()
        )))
    })?;
    if st.shutting_down.is_cancelled() {
        return Err(Error::Unavailable {
            message: "server is shutting down".into(),
            source: None,
        }
        .into());
    }
    // Taken before upgrading so an over-cap client gets a plain 429 it can read; held by the
    // connection task until the socket closes.
    let slot = st.guards.ws_per_user.acquire(caller.user_id)?;
    let max = st.config.limits.max_frame_bytes;
    // No `Sec-WebSocket-Extensions` is ever answered (tungstenite implements none), so
    // permessage-deflate is never negotiated: a frame's size on the wire is its size in memory,
    // and the frame cap below bounds both.
    //
    // Buffers: tungstenite's default 128 KiB read buffer is zero-filled before each read, so it
    // becomes resident on the first frame: ~139 KiB of RSS per idle connection and a 128 KiB
    // memset per read (docs/benchmarks.md). Every connection pays its read buffer from its
    // first read on, idle or not, so it is small (WS_READ_BUFFER): a client frame larger than
    // it grows the buffer to the frame's size and is read in WS_READ_BUFFER chunks, up to the
    // frame cap.
    //
    // Outgoing frames collect in tungstenite's write buffer until the task flushes (it
    // writes every frame already queued, then flushes once: one `sendto` for a burst instead of
    // one per frame) or until WS_WRITE_BUFFER bytes are buffered. The buffer is a Vec that
    // grows on demand: an idle connection holds only what its largest write needed.
    Ok(upgrade
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_frame_size(max)
        .max_message_size(max)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| run(st, socket, caller, addr, slot)))
}

/// Bytes read from a WebSocket at a time (tungstenite grows the frame beyond it as needed).
/// 512 B instead of 4 KiB took an idle connection from 6.7 KB to 3.0 KB of server RSS; a
/// pipelining client's frames (~150 B each) then arrive in more, smaller reads, which did not
/// lower the acked sends/s of `scripts/bench.sh writes` (docs/benchmarks.md, "Connections").
const WS_READ_BUFFER: usize = 512;

/// Bytes of outgoing frames buffered before tungstenite writes them without waiting for a flush.
const WS_WRITE_BUFFER: usize = 8 * 1024;

/// Most frames the connection's task takes from the queue for one flush. Bounds the time one
/// batch keeps the task from reading or noticing a close, and the bytes it buffers.
const WRITE_BATCH: usize = 64;

/// Decrements the open-connections gauge however the connection ends.
struct Gauge(Arc<crate::metrics::Metrics>);

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.ws_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one upgraded connection until it closes.
///
/// A plain function returning an `async move` block rather than an `async fn`: an `async fn`
/// keeps a second copy of its arguments in its state (rust-lang/rust#62958), which here would
/// be a second 368-byte `WebSocket` in every idle connection's task (measured: 1,344 B of
/// future as an `async fn`, 912 B like this; 792 B since the crash no longer needs a select).
#[allow(clippy::manual_async_fn)]
fn run(
    st: Arc<AppState>,
    mut socket: WebSocket,
    caller: Caller,
    addr: Option<IpAddr>,
    slot: ConnectionSlot,
) -> impl std::future::Future<Output = ()> {
    async move {
        let _slot = slot;
        st.metrics
            .ws_connections_total
            .fetch_add(1, Ordering::Relaxed);
        st.metrics.ws_connections.fetch_add(1, Ordering::Relaxed);
        let _gauge = Gauge(st.metrics.clone());

        let conn = Connection::new(
            st.hub.next_id(),
            caller.user_id,
            caller.token_hash,
            st.config.outbound_queue,
        );
        // Boxed here and below: these run once, and inline their states would size the future
        // an idle connection keeps for its whole life.
        let ready = Box::pin(setup(&st, &conn, &caller)).await;
        if Box::pin(send_ready(&st, &mut socket, ready)).await {
            // A crash (`ServerHandle::abort`) stops the connection through the hub rather than
            // through a select on `st.crashed` here: that select would poll the token, and so
            // take its lock shared by every connection, on each of the task's wake-ups.
            let in_flight = serve(&st, &mut socket, &conn, addr).await;
            Box::pin(close(&st, &mut socket, &conn, in_flight)).await;
        }
        Box::pin(st.hub.unregister(&conn)).await;
    }
}

/// Sends the `ready` frame, or on a failed setup the close frame saying why. Returns whether
/// the connection goes on.
async fn send_ready(st: &AppState, socket: &mut WebSocket, ready: Result<Utf8Bytes>) -> bool {
    let ready = match ready {
        Ok(frame) => frame,
        Err(e) => {
            let (code, reason) = match e {
                _ if st.shutting_down.is_cancelled() => (
                    close_code::RESTART,
                    "server restarting, reconnect".to_owned(),
                ),
                Error::Unauthenticated(_) => (close_code::POLICY, "session revoked".to_owned()),
                e => (close_code::INTERNAL, e.client_message()),
            };
            let _ = timeout(CLOSE_TIMEOUT, socket.send(close_message(code, &reason))).await;
            return false;
        }
    };
    // `ready` goes straight to the socket, ahead of whatever events queued up meanwhile.
    tokio::select! {
        r = timeout(st.config.ws_write_timeout, socket.send(Message::Text(ready))) => {
            matches!(r, Ok(Ok(())))
        }
        _ = st.crashed.cancelled() => false,
    }
}

/// Ends a connection after [`serve`]: finishes the sends still in flight (their appends may
/// already be in the store; their replies are dropped, the connection is closing), sends the
/// close frame if a reason was given, and lets the peer's close reply arrive so the closing
/// handshake completes.
async fn close<'a>(
    st: &'a AppState,
    socket: &mut WebSocket,
    conn: &Connection,
    in_flight: Option<Box<Pipeline<'a>>>,
) {
    let reason = conn.close_reason();
    // From here on nothing more is queued, and what was queued is dropped: the client resumes
    // by seq.
    conn.stop();
    let drain = async {
        if let Some(mut pipeline) = in_flight {
            pipeline.drain(st, conn).await;
        }
    };
    let handshake = async {
        if let Some(r) = reason {
            let _ = timeout(CLOSE_TIMEOUT, socket.send(close_message(r.code, &r.reason))).await;
        }
        let _ = timeout(CLOSE_TIMEOUT, async {
            while socket.next().await.is_some() {}
        })
        .await;
    };
    tokio::select! {
        biased;
        // Like a crash: no close frame, no draining.
        _ = st.crashed.cancelled() => {}
        _ = async { tokio::join!(drain, handshake) } => {}
    }
}

/// Drives the connection until it must close or the peer is done: see [`Session`]. Returns the
/// frames still in flight, if any.
async fn serve<'a>(
    st: &'a AppState,
    socket: &mut WebSocket,
    conn: &'a Arc<Connection>,
    addr: Option<IpAddr>,
) -> Option<Box<Pipeline<'a>>> {
    let now = Instant::now();
    let mut session = Session {
        st,
        conn,
        read_waker: Waker::from(conn.clone()),
        addr,
        pipeline: None,
        reading: true,
        unflushed: false,
        ping_due: false,
        idle_deadline: now + st.config.ws_idle_timeout,
        next_ping: now + st.config.ws_ping_interval,
        write_deadline: None,
        timer_armed: false,
    };
    let timer = tokio::time::sleep_until(session.next_ping.min(session.idle_deadline));
    tokio::pin!(timer);
    std::future::poll_fn(|cx| session.poll(socket, timer.as_mut(), cx)).await;
    session.pipeline
}

/// One connection between its `ready` frame and its close: both directions of the socket, the
/// client frames in flight and the deadlines, all driven by the connection's one task.
///
/// Each poll, in order: takes the close signal; moves finished frames along the
/// [`Pipeline`] (replies are queued like any other frame, so they leave in frame order);
/// writes queued frames (up to [`WRITE_BATCH`], then one flush) and a due ping; reads client
/// frames while fewer than [`MAX_IN_FLIGHT`] are in flight; and repeats while any of that made
/// progress. Then it checks the deadlines (idle peer, stuck write, next ping) and arms the one
/// timer for the earliest.
struct Session<'a> {
    st: &'a AppState,
    conn: &'a Connection,
    /// The waker given to the socket's read side: the connection, which notes that the socket
    /// may be readable before waking the task ([`Connection::take_readable`]).
    read_waker: Waker,
    addr: Option<IpAddr>,
    /// Client frames in flight. Allocated on the first frame and freed once everything is
    /// answered: an idle connection holds none (two `FuturesOrdered` allocate ~300 B).
    pipeline: Option<Box<Pipeline<'a>>>,
    /// Client frames are still read (false once the peer closed or reading failed; the
    /// session then ends when everything in flight is answered and written).
    reading: bool,
    /// Frames handed to the socket since the last completed flush.
    unflushed: bool,
    /// A ping is due and waits for the socket.
    ping_due: bool,
    /// Some frame must arrive from the peer before this (any frame counts as liveness).
    idle_deadline: Instant,
    /// When the next ping is due.
    next_ping: Instant,
    /// Set once a write blocked: it must complete before this, so a peer that does not read
    /// cannot hold the connection (and its queue) forever.
    write_deadline: Option<Instant>,
    /// The timer has been armed (and polled, so it will wake the task) at least once.
    timer_armed: bool,
}

/// What [`Session::poll_deadlines`] found.
enum Deadlines {
    /// Nothing due; the timer is armed for the earliest deadline.
    Armed,
    /// A ping became due: go round again to write it.
    PingDue,
    /// The connection was told to close (idle peer, stuck write).
    Close,
}

impl<'a> Session<'a> {
    /// Runs the connection until it must close or the peer is done; see [`Session`].
    fn poll(
        &mut self,
        socket: &mut WebSocket,
        mut timer: Pin<&mut Sleep>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        // Before looking at the queue and the close flag, so a push in between wakes us.
        self.conn.register(cx.waker());
        loop {
            if self.conn.is_closing() {
                return Poll::Ready(());
            }
            let mut progress = self.poll_pipeline(cx);
            match self.poll_write(socket, cx) {
                Ok(wrote) => progress |= wrote,
                Err(e) => {
                    tracing::debug!(error = %e, "WebSocket write failed");
                    self.conn.stop();
                    return Poll::Ready(());
                }
            }
            progress |= self.poll_read(socket);
            if !self.reading
                && self.pipeline.is_none()
                && !self.unflushed
                && !self.conn.has_frames()
            {
                // The peer is done and everything it asked for is answered.
                return Poll::Ready(());
            }
            if progress {
                continue;
            }
            // Nothing can move until a waker fires.
            match self.poll_deadlines(timer.as_mut(), cx) {
                Deadlines::Armed => return Poll::Pending,
                Deadlines::PingDue => continue,
                Deadlines::Close => return Poll::Ready(()),
            }
        }
    }

    /// Checks the deadlines (stuck write, idle peer, next ping) and arms the one timer for the
    /// earliest. Only reads the clock when the timer fired or must fire earlier than it is
    /// armed for, which keeps it off the common poll (a frame queued and written at once).
    fn poll_deadlines(&mut self, mut timer: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Deadlines {
        // While the pipeline is full nothing is read, so the peer cannot be idle.
        let may_idle = self.may_read();
        let armed = timer.deadline();
        let earlier = |d: Instant| d < armed;
        let must_look = !self.timer_armed
            || timer.is_elapsed()
            || self.write_deadline.is_some_and(earlier)
            || (may_idle && earlier(self.idle_deadline));
        if !must_look {
            // The idle deadline moves later with every frame read; a timer armed for an older
            // one fires early and is re-armed then, so frames never touch the timer.
            return Deadlines::Armed;
        }
        let now = Instant::now();
        if self.write_deadline.is_some_and(|d| now >= d) {
            self.conn.close(close_code::POLICY, "write timed out");
            return Deadlines::Close;
        }
        if may_idle && now >= self.idle_deadline {
            self.conn.close(close_code::GOING_AWAY, "idle timeout");
            return Deadlines::Close;
        }
        if now >= self.next_ping {
            self.ping_due = true;
            self.next_ping = now + self.st.config.ws_ping_interval;
            return Deadlines::PingDue;
        }
        let mut next = self.next_ping;
        if may_idle {
            next = next.min(self.idle_deadline);
        }
        if let Some(d) = self.write_deadline {
            next = next.min(d);
        }
        timer.as_mut().reset(next);
        self.timer_armed = true;
        if timer.as_mut().poll(cx).is_ready() {
            // Fired within the timer's resolution: look again on the next poll rather than
            // spin here.
            cx.waker().wake_by_ref();
        }
        Deadlines::Armed
    }

    /// Whether another client frame may be read now.
    fn may_read(&self) -> bool {
        self.reading && self.pipeline.as_ref().map_or(0, |p| p.len()) < MAX_IN_FLIGHT
    }

    /// Moves finished checks to the append stage and queues finished replies, in frame order.
    /// Returns whether anything moved.
    fn poll_pipeline(&mut self, cx: &mut Context<'_>) -> bool {
        let (st, conn) = (self.st, self.conn);
        let Some(pipeline) = self.pipeline.as_mut() else {
            return false;
        };
        let mut progress = false;
        while pipeline.may_append() {
            match pipeline.checks.poll_next_unpin(cx) {
                Poll::Ready(Some(checked)) => {
                    pipeline.append(st, checked);
                    progress = true;
                }
                _ => break,
            }
        }
        while !pipeline.appends.is_empty() {
            match pipeline.appends.poll_next_unpin(cx) {
                Poll::Ready(Some(reply)) => {
                    push(st, conn, &reply);
                    progress = true;
                }
                _ => break,
            }
        }
        if pipeline.is_empty() {
            self.pipeline = None;
        }
        progress
    }

    /// Writes queued frames and a due ping, up to [`WRITE_BATCH`] frames per flush, so a burst
    /// costs one socket write instead of one per frame. Returns whether anything was written
    /// or flushed.
    fn poll_write(
        &mut self,
        socket: &mut WebSocket,
        cx: &mut Context<'_>,
    ) -> std::result::Result<bool, axum::Error> {
        let mut progress = false;
        let mut fed = 0;
        loop {
            if fed < WRITE_BATCH && (self.ping_due || self.conn.has_frames()) {
                match socket.poll_ready_unpin(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Err(e),
                    // The socket is full; its waker brings us back.
                    Poll::Pending => {
                        self.write_blocked();
                        break;
                    }
                }
                let msg = match self.conn.pop() {
                    Some(frame) => Message::Text(frame),
                    None => {
                        self.ping_due = false;
                        Message::Ping(Bytes::new())
                    }
                };
                socket.start_send_unpin(msg)?;
                self.unflushed = true;
                fed += 1;
                progress = true;
                continue;
            }
            if self.unflushed {
                match socket.poll_flush_unpin(cx) {
                    Poll::Ready(Ok(())) => {
                        self.unflushed = false;
                        self.write_deadline = None;
                        progress = true;
                        fed = 0;
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => self.write_blocked(),
                }
            }
            break;
        }
        Ok(progress)
    }

    /// Starts the write timeout when a write first blocks (most writes complete at once, and
    /// then the clock is never read for them).
    fn write_blocked(&mut self) {
        if self.write_deadline.is_none() {
            self.write_deadline = Some(Instant::now() + self.st.config.ws_write_timeout);
        }
    }

    /// Reads one client frame if one may be read and is there. Returns whether anything
    /// happened (a frame, or the end of reading).
    fn poll_read(&mut self, socket: &mut WebSocket) -> bool {
        // Skipped unless the socket's read side woke us (or the last read found a frame): a
        // wake-up for a queued frame has nothing to read, and trying costs a lock and a few
        // hundred nanoseconds per delivery.
        if !self.may_read() || !self.conn.take_readable() {
            return false;
        }
        let mut read_cx = Context::from_waker(&self.read_waker);
        let msg = match socket.poll_next_unpin(&mut read_cx) {
            Poll::Pending => return false,
            Poll::Ready(None) => {
                self.reading = false;
                return true;
            }
            Poll::Ready(Some(Err(e))) => {
                match classify(&e) {
                    Some((code, reason)) => {
                        tracing::debug!(error = %e, code, "closing WebSocket after a bad frame");
                        self.conn.close(code, &reason);
                    }
                    None => tracing::debug!(error = %e, "WebSocket read failed"),
                }
                self.reading = false;
                return true;
            }
            Poll::Ready(Some(Ok(m))) => m,
        };
        // There may be more behind it.
        self.conn.set_readable();
        // Any frame counts as liveness for the idle timeout.
        self.idle_deadline = Instant::now() + self.st.config.ws_idle_timeout;
        match msg {
            Message::Text(text) => {
                let st = self.st;
                self.pipeline
                    .get_or_insert_with(|| Box::new(Pipeline::new(st)))
                    .start(st, self.conn.user_id, text.as_str(), self.addr);
            }
            Message::Binary(_) => {
                self.conn.close(
                    close_code::UNSUPPORTED,
                    "binary frames are not supported; send JSON text frames",
                );
                self.reading = false;
            }
            // The library answers pings itself.
            Message::Ping(_) | Message::Pong(_) => {}
            Message::Close(_) => self.reading = false,
        }
        true
    }
}

/// Registers the connection, loads the user's chats and builds the `ready` frame. The hub
/// subscribes before the chats are read, so a message stored after `ready`'s `last_seq` is
/// always delivered live.
async fn setup(st: &AppState, conn: &Arc<Connection>, caller: &Caller) -> Result<Utf8Bytes> {
    st.hub.register(conn.clone()).await?;
    // A shutdown that began before this registration did not see the connection to close it.
    if st.shutting_down.is_cancelled() {
        return Err(Error::Unavailable {
            message: "server restarting".into(),
            source: None,
        });
    }
    // A logout between authentication and registration published its event before this
    // connection could hear it; check again now that it can.
    authenticate_hash(st, caller).await?;
    let chats = st.metadata.chats_of_user(caller.user_id).await?;
    let ids: Vec<ChatId> = chats.iter().map(|(c, _)| c.chat_id).collect();
    st.hub.set_user_chats(conn, &ids).await?;
    let seqs = st.messages.last_seqs(&ids).await?;
    let frame = ServerFrame::Ready {
        user_id: caller.user_id,
        chats: ids
            .into_iter()
            .zip(seqs)
            .map(|(chat_id, last_seq)| ChatCursor { chat_id, last_seq })
            .collect(),
    };
    serialize(&frame).ok_or_else(|| Error::Internal {
        message: "could not serialize ready".into(),
        source: None,
    })
}

async fn authenticate_hash(st: &AppState, caller: &Caller) -> Result<()> {
    match st.metadata.session(&caller.token_hash).await? {
        Some(s) if s.expires_at > chat_core::ids::now_millis() => Ok(()),
        _ => Err(Error::Unauthenticated("session revoked".into())),
    }
}

/// Sends one connection may have between reading their frame and queuing their reply. Bounds
/// the memory and store work one client can hold; past it the connection stops reading, so the
/// client's TCP window fills.
const MAX_IN_FLIGHT: usize = 32;

/// A client frame after its synchronous handling (parse, validation, rate limits) and its
/// membership check.
enum Checked {
    /// The reply is known: `pong`, or an error frame.
    Reply(ServerFrame),
    /// A send that may be appended; the `String` is its `client_msg_id`.
    Append(Prepared, String),
}

/// The frames of one connection in flight, oldest first. Replies leave in frame order, and
/// appends are submitted to the store in frame order.
///
/// Two stages, each a `FuturesOrdered` (which yields in push order): membership checks run
/// concurrently in `checks`; a finished check moves, in frame order, to `appends`, and its
/// append is submitted to the store at that moment ([`Pipeline::append`]), so appends reach
/// the store in frame order. Whether the store then keeps that order depends on it (see
/// [`crate::Config::ordered_appends`]): when it does not, at most one append is in flight.
struct Pipeline<'a> {
    checks: FuturesOrdered<BoxFuture<'a, Checked>>,
    appends: FuturesOrdered<BoxFuture<'a, ServerFrame>>,
    /// Several appends may be in flight at once (the store keeps call order).
    ordered: bool,
}

impl<'a> Pipeline<'a> {
    fn new(st: &AppState) -> Pipeline<'a> {
        Pipeline {
            checks: FuturesOrdered::new(),
            appends: FuturesOrdered::new(),
            ordered: st.config.ordered_appends,
        }
    }

    fn len(&self) -> usize {
        self.checks.len() + self.appends.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a finished check may move on to the append stage now.
    fn may_append(&self) -> bool {
        !self.checks.is_empty() && (self.ordered || self.appends.is_empty())
    }

    /// Queues one client text frame; its synchronous part (parse, limits) runs now.
    fn start(&mut self, st: &'a AppState, user: UserId, text: &str, addr: Option<IpAddr>) {
        let fut: BoxFuture<'a, Checked> = match begin(st, user, text, addr) {
            Begun::Reply(frame) => Box::pin(std::future::ready(Checked::Reply(frame))),
            Begun::Check(prepared, client_msg_id) => Box::pin(check(st, prepared, client_msg_id)),
        };
        self.checks.push_back(fut);
    }

    /// Moves a finished check to the append stage, submitting its append now: checks leave
    /// `checks` in frame order, so appends enter the store's queue in frame order.
    fn append(&mut self, st: &'a AppState, checked: Checked) {
        // Exempt from tokio's cooperative budget: with the task's budget spent, the store's
        // queue would answer `Pending` before taking the append, and the append of a later
        // frame could get in first when the futures are polled again.
        let mut fut: BoxFuture<'a, ServerFrame> =
            Box::pin(tokio::task::unconstrained(finish(st, checked)));
        // The first poll, here and now, is when the append is submitted (into the store's
        // queue, or its FIFO wait list when the queue is full). The waker does not matter:
        // `FuturesOrdered` polls every pushed future again with its own.
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(reply) => self.appends.push_back(Box::pin(std::future::ready(reply))),
            Poll::Pending => self.appends.push_back(fut),
        }
    }

    /// Runs everything in flight to the end, queuing the replies.
    async fn drain(&mut self, st: &'a AppState, conn: &Connection) {
        while !self.is_empty() {
            tokio::select! {
                biased;
                Some(c) = self.checks.next(), if self.may_append() => self.append(st, c),
                Some(reply) = self.appends.next(), if !self.appends.is_empty() => {
                    push(st, conn, &reply);
                }
            }
        }
    }
}

/// The close code and reason for a read error caused by the peer's data, or `None` for a
/// transport failure (the peer is gone; nothing can be sent).
fn classify(e: &axum::Error) -> Option<(u16, String)> {
    // axum wraps tungstenite's error without re-exporting its type, so its Display text is the
    // stable handle; the unit test below pins it to tungstenite's errors.
    let text = e.to_string();
    if text.starts_with("UTF-8 encoding error") {
        Some((
            close_code::INVALID_PAYLOAD,
            "text frame is not valid UTF-8".into(),
        ))
    } else if text.starts_with("Space limit exceeded") {
        Some((
            close_code::TOO_BIG,
            "frame or message over the size limit".into(),
        ))
    } else if text.starts_with("WebSocket protocol error") {
        Some((close_code::PROTOCOL, format!("protocol error: {text}")))
    } else {
        None
    }
}

/// Handles one client text frame: `send` or `ping`; anything else gets a `bad_request` error
/// frame and the connection stays open. The reply is queued before this returns.
pub(crate) async fn handle_text(
    st: &AppState,
    conn: &Arc<Connection>,
    text: &str,
    addr: Option<IpAddr>,
) {
    let checked = match begin(st, conn.user_id, text, addr) {
        Begun::Reply(frame) => Checked::Reply(frame),
        Begun::Check(prepared, client_msg_id) => check(st, prepared, client_msg_id).await,
    };
    let reply = finish(st, checked).await;
    push(st, conn, &reply);
}

/// A client frame after its synchronous handling.
enum Begun {
    /// The reply is known already.
    Reply(ServerFrame),
    /// A send that passed validation and the rate limits; the `String` is its `client_msg_id`.
    Check(Prepared, String),
}

/// Parses a client frame; for a `send`, validates it and takes its rate-limit tokens (in frame
/// order, at the time it is read).
fn begin(st: &AppState, user: UserId, text: &str, addr: Option<IpAddr>) -> Begun {
    let frame: ClientFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            // Echo the client_msg_id when one is readable so the client can match the error.
            let client_msg_id = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get("client_msg_id")?.as_str().map(str::to_owned));
            return Begun::Reply(ServerFrame::Error {
                code: chat_core::ErrorCode::BadRequest,
                message: format!("invalid frame: {e}"),
                client_msg_id,
            });
        }
    };
    match frame {
        ClientFrame::Ping => Begun::Reply(ServerFrame::Pong),
        ClientFrame::Send {
            chat_id,
            msg_text,
            timestamp,
            client_msg_id,
        } => {
            let input = SendInput {
                chat_id,
                msg_text,
                timestamp,
                client_msg_id: Some(client_msg_id.clone()),
                client_addr: addr,
            };
            match prepare(st, user, input) {
                Ok(prepared) => Begun::Check(prepared, client_msg_id),
                Err(e) => Begun::Reply(error_frame(e, client_msg_id)),
            }
        }
    }
}

/// The membership check of a send.
async fn check(st: &AppState, prepared: Prepared, client_msg_id: String) -> Checked {
    match require_member(st, prepared.chat_id, prepared.sender).await {
        Ok(_) => Checked::Append(prepared, client_msg_id),
        Err(e) => Checked::Reply(error_frame(e, client_msg_id)),
    }
}

/// The reply to a checked frame: for a send, its append (started on this future's first poll)
/// and publish, then the `ack` or error.
async fn finish(st: &AppState, checked: Checked) -> ServerFrame {
    match checked {
        Checked::Reply(frame) => frame,
        Checked::Append(prepared, client_msg_id) => match commit(st, prepared).await {
            Ok(appended) => ServerFrame::Ack {
                client_msg_id,
                message: appended.message,
            },
            Err(e) => error_frame(e, client_msg_id),
        },
    }
}

/// The error frame answering a send.
fn error_frame(e: Error, client_msg_id: String) -> ServerFrame {
    ServerFrame::Error {
        code: e.code(),
        message: e.client_message(),
        client_msg_id: Some(client_msg_id),
    }
}

/// Queues a frame for this connection only.
fn push(st: &AppState, conn: &Connection, frame: &ServerFrame) {
    if let Some(bytes) = serialize(frame) {
        if conn.push(bytes, &st.metrics) == Push::SlowConsumer {
            tracing::debug!(conn = conn.id, "reply dropped: connection closing as slow");
        }
    }
}

fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(truncate_reason(reason)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite;

    #[test]
    fn read_errors_map_to_close_codes() {
        let utf8 = axum::Error::new(tungstenite::Error::Utf8);
        assert_eq!(classify(&utf8).unwrap().0, close_code::INVALID_PAYLOAD);
        let big = axum::Error::new(tungstenite::Error::Capacity(
            tungstenite::error::CapacityError::MessageTooLong {
                size: 70_000,
                max_size: 65_536,
            },
        ));
        assert_eq!(classify(&big).unwrap().0, close_code::TOO_BIG);
        let proto = axum::Error::new(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::NonZeroReservedBits,
        ));
        assert_eq!(classify(&proto).unwrap().0, close_code::PROTOCOL);
        let gone = axum::Error::new(tungstenite::Error::Io(std::io::Error::other("reset")));
        assert!(classify(&gone).is_none());
    }

    /// A server over a fresh SQLite file with the send limits off, a user who owns two chats, and
    /// a chat the user is not in.
    async fn fixture(ordered: bool) -> (tempfile::TempDir, crate::Server, UserId, [ChatId; 3]) {
        use chat_core::ids::now_millis;
        use chat_core::{MetadataStore as _, NewChat, NewUser};
        let dir = tempfile::tempdir().unwrap();
        let store = chat_storage::sqlite::SqliteStore::open(dir.path().join("chat.db")).unwrap();
        let mut config = crate::Config {
            abuse: crate::AbuseLimits::unthrottled(),
            ordered_appends: ordered,
            ..crate::Config::default()
        };
        config.limits.send_rate_per_sec = 0;
        let server = crate::Server::new(
            Arc::new(store.clone()),
            Arc::new(store.clone()),
            Arc::new(crate::broker::LocalBroker::new()),
            config,
        );
        let mut users = Vec::new();
        for name in ["pipe", "other"] {
            let user = store
                .create_user(NewUser {
                    email: format!("{name}@example.com"),
                    display_name: name.into(),
                    pw_hash: "x".into(),
                    created_at: now_millis(),
                })
                .await
                .unwrap();
            users.push(user.user_id);
        }
        let mut chats = Vec::new();
        for owner in [users[0], users[0], users[1]] {
            let (chat, _) = store
                .create_chat(NewChat {
                    chat_name: "c".into(),
                    owner_id: owner,
                    member_ids: Vec::new(),
                    created_at: now_millis(),
                })
                .await
                .unwrap();
            chats.push(chat.chat_id);
        }
        (dir, server, users[0], [chats[0], chats[1], chats[2]])
    }

    /// Many frames in flight on one connection: replies come back in frame order (acks, pongs
    /// and errors mixed), and each chat's seqs follow the frame order, with the store keeping
    /// call order (SQLite) or not assumed to.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_frames_reply_and_append_in_frame_order() {
        for ordered in [true, false] {
            let (_dir, server, user, [a, b, foreign]) = fixture(ordered).await;
            let st = server.state();
            let conn = Connection::new(st.hub.next_id(), user, [0; 32], 4096);
            let rx = &conn;
            let mut pipeline = Pipeline::new(&st);
            let n = 300;
            let mut expected = Vec::new();
            for i in 0..n {
                let (text, want) = match i % 10 {
                    3 => (r#"{"type":"ping"}"#.to_owned(), ("pong", None)),
                    7 => (
                        format!(
                            r#"{{"type":"send","chat_id":{foreign},"msg_text":"x","client_msg_id":"m{i}"}}"#
                        ),
                        ("error", None),
                    ),
                    9 => ("{not json".to_owned(), ("error", None)),
                    k => {
                        let chat = if k % 2 == 0 { a } else { b };
                        (
                            format!(
                                r#"{{"type":"send","chat_id":{chat},"msg_text":"t{i}","client_msg_id":"m{i}"}}"#
                            ),
                            ("ack", Some(chat)),
                        )
                    }
                };
                pipeline.start(&st, user, &text, None);
                expected.push((i, want));
                // The connection's bound: past it, it waits for the oldest frame's reply.
                if pipeline.len() >= MAX_IN_FLIGHT {
                    tokio::select! {
                        biased;
                        Some(c) = pipeline.checks.next(), if pipeline.may_append() => {
                            pipeline.append(&st, c);
                        }
                        Some(r) = pipeline.appends.next(), if !pipeline.appends.is_empty() => {
                            push(&st, &conn, &r);
                        }
                    }
                }
            }
            pipeline.drain(&st, &conn).await;
            let mut last_seq = std::collections::HashMap::new();
            for (i, (kind, chat)) in expected {
                let frame = rx.try_recv().expect("one reply per frame");
                let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
                assert_eq!(v["type"], kind, "frame {i} (ordered: {ordered}): {v}");
                if kind == "ack" {
                    assert_eq!(v["client_msg_id"], format!("m{i}"));
                    let chat = chat.unwrap();
                    assert_eq!(v["message"]["chat_id"], serde_json::json!(chat));
                    let seq = v["message"]["seq"].as_u64().unwrap();
                    let prev = last_seq.insert(chat, seq).unwrap_or(0);
                    assert_eq!(seq, prev + 1, "frame {i}: seq out of frame order");
                } else if i % 10 == 7 {
                    assert_eq!(v["code"], "not_a_member");
                    assert_eq!(v["client_msg_id"], format!("m{i}"));
                }
            }
            assert!(rx.try_recv().is_err(), "no extra replies");
        }
    }
}
