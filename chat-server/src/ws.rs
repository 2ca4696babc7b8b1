//! One WebSocket connection (`GET /v1/ws`): authentication and upgrade, the `ready` frame, the
//! reader (client frames, size and UTF-8 violations, idle timeout) and the writer task that
//! drains the connection's bounded queue of pre-serialized frames.

use crate::auth::{authenticate, bearer, hex, Caller};
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{ClientAddr, QueryParams};
use crate::hub::{close_code, serialize, truncate_reason, Connection, Push};
use crate::rate_limit::ConnectionSlot;
use crate::send::{send_message, SendInput};
use crate::state::AppState;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use bytes::Bytes;
use chat_core::protocol::{ChatCursor, ClientFrame, ServerFrame};
use chat_core::{ChatId, Error, Result};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::timeout;

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

/// Reads client frames until the peer closes, a violation closes the connection, or the
/// connection is told to close.
async fn read_loop(
    st: &AppState,
    stream: &mut SplitStream<WebSocket>,
    conn: &Arc<Connection>,
    addr: Option<IpAddr>,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = conn.closed() => return,
            n = timeout(st.config.ws_idle_timeout, stream.next()) => n,
        };
        let msg = match next {
            Err(_) => {
                conn.close(close_code::GOING_AWAY, "idle timeout");
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                match classify(&e) {
                    Some((code, reason)) => {
                        tracing::debug!(error = %e, code, "closing WebSocket after a bad frame");
                        conn.close(code, &reason);
                    }
                    None => tracing::debug!(error = %e, "WebSocket read failed"),
                }
                return;
            }
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(text) => handle_text(st, conn, text.as_str(), addr).await,
            Message::Binary(_) => {
                conn.close(
                    close_code::UNSUPPORTED,
                    "binary frames are not supported; send JSON text frames",
                );
                return;
            }
            // The library answers pings itself; any frame counts as liveness for the timeout.
            Message::Ping(_) | Message::Pong(_) => {}
            Message::Close(_) => return,
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
/// frame and the connection stays open.
pub(crate) async fn handle_text(
    st: &AppState,
    conn: &Arc<Connection>,
    text: &str,
    addr: Option<IpAddr>,
) {
    let frame: ClientFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            // Echo the client_msg_id when one is readable so the client can match the error.
            let client_msg_id = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get("client_msg_id")?.as_str().map(str::to_owned));
            push(
                st,
                conn,
                &ServerFrame::Error {
                    code: chat_core::ErrorCode::BadRequest,
                    message: format!("invalid frame: {e}"),
                    client_msg_id,
                },
            );
            return;
        }
    };
    match frame {
        ClientFrame::Ping => push(st, conn, &ServerFrame::Pong),
        ClientFrame::Send {
            chat_id,
            msg_text,
            timestamp,
            client_msg_id,
        } => {
            let result = send_message(
                st,
                conn.user_id,
                SendInput {
                    chat_id,
                    msg_text,
                    timestamp,
                    client_msg_id: Some(client_msg_id.clone()),
                    client_addr: addr,
                },
            )
            .await;
            let reply = match result {
                Ok(appended) => ServerFrame::Ack {
                    client_msg_id,
                    message: appended.message,
                },
                Err(e) => ServerFrame::Error {
                    code: e.code(),
                    message: e.client_message(),
                    client_msg_id: Some(client_msg_id),
                },
            };
            push(st, conn, &reply);
        }
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
}
