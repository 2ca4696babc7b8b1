//! One WebSocket connection (`GET /v1/ws`): authentication and upgrade, the `ready` frame, the
//! reader (client frames, size and UTF-8 violations, idle timeout) and the writer task that
//! drains the connection's bounded queue of pre-serialized frames.

use crate::auth::{authenticate, bearer, hex, Caller};
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
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{timeout, timeout_at, Instant};

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
    // memset per read (docs/benchmarks.md). Client frames are small (a send is well under 4 KiB
    // of text plus JSON), and a larger frame is read in several chunks, up to the frame cap.
    //
    // Outgoing frames collect in tungstenite's write buffer until the writer task flushes (it
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
const WS_READ_BUFFER: usize = 4 * 1024;

/// Bytes of outgoing frames buffered before tungstenite writes them without waiting for a flush.
const WS_WRITE_BUFFER: usize = 8 * 1024;

/// Most frames the writer takes from the queue for one flush. Bounds the time one batch keeps
/// the writer from noticing a close and the bytes it buffers.
const WRITE_BATCH: usize = 64;

/// Decrements the open-connections gauge however the connection ends.
struct Gauge(Arc<crate::metrics::Metrics>);

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.ws_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one upgraded connection until it closes.
async fn run(
    st: Arc<AppState>,
    mut socket: WebSocket,
    caller: Caller,
    addr: Option<IpAddr>,
    _slot: ConnectionSlot,
) {
    st.metrics
        .ws_connections_total
        .fetch_add(1, Ordering::Relaxed);
    st.metrics.ws_connections.fetch_add(1, Ordering::Relaxed);
    let _gauge = Gauge(st.metrics.clone());

    let (conn, rx) = Connection::new(
        st.hub.next_id(),
        caller.user_id,
        hex(&caller.token_hash),
        st.config.outbound_queue,
    );
    let ready = match setup(&st, &conn, &caller).await {
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
            st.hub.unregister(&conn).await;
            return;
        }
    };
    // `ready` goes straight to the socket, ahead of whatever events queued up meanwhile.
    let sent = tokio::select! {
        r = timeout(st.config.ws_write_timeout, socket.send(Message::Text(ready))) => {
            matches!(r, Ok(Ok(())))
        }
        _ = st.crashed.cancelled() => false,
    };
    if !sent {
        st.hub.unregister(&conn).await;
        return;
    }

    let (sink, mut stream) = socket.split();
    let mut writer = tokio::spawn(write_loop(
        sink,
        rx,
        conn.clone(),
        st.config.ws_ping_interval,
        st.config.ws_write_timeout,
    ));
    tokio::select! {
        _ = read_loop(&st, &mut stream, &conn, addr) => {
            // However reading ended, the writer stops (sending the close frame, if any).
            conn.stop();
            if timeout(CLOSE_TIMEOUT + Duration::from_secs(1), &mut writer).await.is_err() {
                writer.abort();
            }
            // Let the peer's close reply arrive so the closing handshake completes.
            let _ = timeout(CLOSE_TIMEOUT, async { while stream.next().await.is_some() {} }).await;
        }
        _ = st.crashed.cancelled() => {
            // Like a crash: no close frame, no draining.
            writer.abort();
        }
    }
    st.hub.unregister(&conn).await;
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
/// the memory and store work one client can hold; past it the reader stops reading, so the
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

/// Reads client frames until the peer closes, a violation closes the connection, or the
/// connection is told to close. Up to [`MAX_IN_FLIGHT`] frames are handled at once (see
/// [`Pipeline`]); whatever is in flight when reading ends is finished before returning.
async fn read_loop(
    st: &AppState,
    stream: &mut SplitStream<WebSocket>,
    conn: &Arc<Connection>,
    addr: Option<IpAddr>,
) {
    let mut pipeline = Pipeline::new(st);
    let mut deadline = Instant::now() + st.config.ws_idle_timeout;
    loop {
        let next = tokio::select! {
            biased;
            _ = conn.closed() => break,
            Some(c) = pipeline.checks.next(), if pipeline.may_append() => {
                pipeline.append(st, c);
                continue;
            }
            Some(reply) = pipeline.appends.next(), if !pipeline.appends.is_empty() => {
                push(st, conn, &reply);
                continue;
            }
            n = timeout_at(deadline, stream.next()), if pipeline.len() < MAX_IN_FLIGHT => n,
        };
        let msg = match next {
            Err(_) => {
                conn.close(close_code::GOING_AWAY, "idle timeout");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                match classify(&e) {
                    Some((code, reason)) => {
                        tracing::debug!(error = %e, code, "closing WebSocket after a bad frame");
                        conn.close(code, &reason);
                    }
                    None => tracing::debug!(error = %e, "WebSocket read failed"),
                }
                break;
            }
            Ok(Some(Ok(m))) => m,
        };
        // Any frame counts as liveness for the idle timeout.
        deadline = Instant::now() + st.config.ws_idle_timeout;
        match msg {
            Message::Text(text) => pipeline.start(st, conn.user_id, text.as_str(), addr),
            Message::Binary(_) => {
                conn.close(
                    close_code::UNSUPPORTED,
                    "binary frames are not supported; send JSON text frames",
                );
                break;
            }
            // The library answers pings itself.
            Message::Ping(_) | Message::Pong(_) => {}
            Message::Close(_) => break,
        }
    }
    // Sends already read complete (their appends may already be in the store) and get their
    // replies queued, as they did when sends were handled one at a time.
    pipeline.drain(st, conn).await;
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

/// Writes queued frames and periodic pings until the connection is told to close, then sends
/// the close frame (if a reason was given) and gives up on a peer that does not take it.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Utf8Bytes>,
    conn: Arc<Connection>,
    ping_every: Duration,
    write_timeout: Duration,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    loop {
        let msg = tokio::select! {
            biased;
            _ = conn.closed() => break,
            frame = rx.recv() => match frame {
                Some(f) => Message::Text(f),
                None => break,
            },
            _ = ping.tick() => Message::Ping(Bytes::new()),
        };
        // A write blocks while the peer is not reading; the close signal (e.g. the queue
        // overflowing) must still get through.
        let written = tokio::select! {
            biased;
            _ = conn.closed() => break,
            r = timeout(write_timeout, write_batch(&mut sink, &mut rx, msg)) => r,
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket write failed");
                conn.stop();
                return;
            }
            Err(_) => {
                conn.close(close_code::POLICY, "write timed out");
                break;
            }
        }
    }
    // Frames still queued are dropped with the queue: the client resumes by seq.
    drop(rx);
    if let Some(r) = conn.close_reason() {
        let _ = timeout(CLOSE_TIMEOUT, sink.send(close_message(r.code, &r.reason))).await;
    }
}

/// Writes `first` and every frame already queued behind it (up to [`WRITE_BATCH`]), then
/// flushes once, so a burst of frames costs one socket write instead of one per frame.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    rx: &mut mpsc::Receiver<Utf8Bytes>,
    first: Message,
) -> std::result::Result<(), axum::Error> {
    sink.feed(first).await?;
    for _ in 1..WRITE_BATCH {
        // Empty or closed: either way this batch is complete (a closed queue ends the loop at
        // the next `recv`).
        let Ok(frame) = rx.try_recv() else { break };
        sink.feed(Message::Text(frame)).await?;
    }
    sink.flush().await
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
            let (conn, mut rx) = Connection::new(st.hub.next_id(), user, String::new(), 4096);
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
                // The reader's bound: past it, it waits for the oldest frame's reply.
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
