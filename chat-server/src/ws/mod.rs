//! One WebSocket connection (`GET /v1/ws`): authentication and upgrade, the `ready` frame, then
//! one task per connection that both reads client frames (size and UTF-8 violations, idle
//! timeout, up to 32 in flight) and writes the connection's bounded queue of pre-serialized
//! frames (batched, one flush per burst), pings and the close handshake.
//!
//! # Memory of an idle connection
//! A node's memory goes mostly to idle sockets, so what an idle connection keeps is kept small
//! on purpose (measured in docs/benchmarks.md, "Connections"; `examples/idle_memory.rs` lists
//! it by call site): one task of its own instead of a reader and a writer (and no split of the
//! socket into two locked halves, and not axum's upgrade task either), a future whose idle
//! state holds only the socket, the deadlines and one timer (setup, the `ready` frame and the
//! close handshake are boxed, so their larger states exist only while they run), the frames in
//! flight allocated on the first client frame and freed once answered, the outbound queue
//! allocated when a frame is queued and freed when drained ([`Connection`]), and no read
//! buffer to speak of: tungstenite's holds a frame header until a frame arrives, and the
//! socket is read in 4 KiB chunks below it into a stack buffer, what is left over kept only
//! until it is read (`accept::CountedStream`).

//! # Layout
//! - this file: the upgrade, the connection's life (setup, `ready`, serve, close);
//! - [`connection`]: the connection as the hub and its task share it (the outbox, close codes);
//! - [`flush`]: the node's flush tick, which holds fanned-out frames under load so several
//!   leave in one write;
//! - `session`: the one task's poll loop (read, write, deadlines);
//! - `pipeline`: many client frames in flight, replies and effects in frame order;
//! - `frames`: what each client frame does, dispatched to the operations layer.

pub(crate) mod connection;
pub(crate) mod flush;
pub(crate) mod frames;
pub(crate) mod pipeline;
mod session;

use crate::auth::{authenticate, bearer, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ClientAddr, QueryParams};
use crate::rate_limit::ConnectionSlot;
use crate::state::AppState;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use chat_core::protocol::{ChatCursor, ServerFrame};
use chat_core::{ChatId, Error, Result};
use connection::{close_code, serialize, truncate_reason, Connection};
use futures::StreamExt as _;
use pipeline::Pipeline;
use session::serve;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
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
    let caller = authenticate(st.metadata.as_ref(), token).await?;
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
    // first read on, idle or not, so it is as small as it gets (WS_READ_BUFFER): a client
    // frame grows it to the frame's size, up to the frame cap; the socket is read in larger
    // chunks below it, by the accept loop's read-ahead.
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
        .on_upgrade(move |socket| {
            // The connection runs in a task of its own rather than inside the task axum spawned
            // for the upgrade, which would keep its own state (the WebSocket config, this
            // closure's captures) beside ours for the connection's whole life: 1,280 B of task
            // that way, 896 B this way (docs/benchmarks.md, "Connections"). Axum's task ends
            // here.
            tokio::spawn(run(st, socket, caller, addr, slot));
            std::future::ready(())
        }))
}

/// tungstenite's read buffer: none until the first read, then room for a frame header (14 B),
/// grown to each frame's size as it arrives. Its reads are served from the accept loop's
/// read-ahead (`accept::CountedStream`), which takes up to 4 KiB from the socket per `recv`
/// and keeps what is left over only until it is read, so small reads cost a copy, not a
/// syscall, and an idle connection holds no buffer. It was 512 B per connection (and 4 KiB,
/// and 128 KiB before that): docs/benchmarks.md, "Connections".
const WS_READ_BUFFER: usize = 0;

/// Bytes of outgoing frames buffered before tungstenite writes them without waiting for a flush.
const WS_WRITE_BUFFER: usize = 8 * 1024;

/// What a connection holds until it ends, however it ends: its place in the open-connections
/// gauge (decremented on drop) and its user's connection slot.
struct Held {
    metrics: Arc<crate::metrics::Metrics>,
    _slot: ConnectionSlot,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.metrics.ws_connections.dec();
    }
}

/// Serves one upgraded connection until it closes.
///
/// A plain function returning an `async move` block rather than an `async fn`: an `async fn`
/// keeps a second copy of its arguments in its state (rust-lang/rust#62958), which here would
/// be a second 368-byte `WebSocket` in every idle connection's task (measured: 1,344 B of
/// future as an `async fn`, 912 B like this). For the same reason what the block only holds
/// (the gauge, the slot, the `Connection`) is made before it and moved in, never rebound
/// inside it: a `let` of a captured value is a second copy in the task for its whole life.
/// With `serve` made the same way, the task's cell (tokio's header, this future and its
/// trailer, rounded up to 128 B) is 896 B instead of 1,024 (`examples/idle_memory.rs`,
/// docs/benchmarks.md, "Connections").
#[allow(clippy::manual_async_fn)]
fn run(
    st: Arc<AppState>,
    mut socket: WebSocket,
    caller: Caller,
    addr: Option<IpAddr>,
    slot: ConnectionSlot,
) -> impl std::future::Future<Output = ()> {
    st.metrics.ws_connections_total.inc();
    st.metrics.ws_connections.inc();
    let held = Held {
        metrics: st.metrics.clone(),
        _slot: slot,
    };
    let conn = Connection::new(
        st.hub.next_id(),
        caller.user_id,
        caller.token_hash,
        st.config.outbound_queue,
    );
    async move {
        // Boxed here and below: these run once, and inline their states would size the future
        // an idle connection keeps for its whole life.
        let ready = Box::pin(setup(&st, &conn, &caller)).await;
        if Box::pin(send_ready(&st, &mut socket, ready)).await {
            let presence = st.presence.get();
            if let Some(p) = presence {
                p.connected(caller.user_id);
            }
            // A crash (`ServerHandle::abort`) stops the connection through the hub rather than
            // through a select on `st.crashed` here: that select would poll the token, and so
            // take its lock shared by every connection, on each of the task's wake-ups.
            let expires = session_deadline(caller.expires_at);
            let in_flight = serve(&st, &mut socket, &conn, addr, expires).await;
            Box::pin(close(&st, &mut socket, &conn, in_flight)).await;
            if let Some(p) = presence {
                p.disconnected(caller.user_id);
            }
        }
        st.hub.unregister(&conn);
        // Moved in by this last use (dropped here, or with the task if it is dropped).
        drop(held);
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
            // A slow consumer's close frame queues behind what its socket still holds; it gets
            // the write timeout to get through, so the client learns why (1008) instead of
            // seeing the connection drop.
            let grace = if r.patient {
                st.config.ws_write_timeout.max(CLOSE_TIMEOUT)
            } else {
                CLOSE_TIMEOUT
            };
            let _ = timeout(grace, socket.send(close_message(r.code, &r.reason))).await;
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
    let (seqs, revs) = tokio::join!(st.messages.last_seqs(&ids), st.messages.last_revs(&ids));
    let frame = ServerFrame::Ready {
        user_id: caller.user_id,
        chats: ids
            .into_iter()
            .zip(seqs?)
            .zip(revs?)
            .map(|((chat_id, last_seq), last_rev)| ChatCursor {
                chat_id,
                last_seq,
                last_rev: Some(last_rev),
            })
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

/// The instant a session expiring at `expires_at` (Unix ms) expires, if it is representable.
fn session_deadline(expires_at: chat_core::Millis) -> Option<tokio::time::Instant> {
    let left = expires_at
        .saturating_sub(chat_core::ids::now_millis())
        .max(0);
    tokio::time::Instant::now().checked_add(Duration::from_millis(u64::try_from(left).ok()?))
}

fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(truncate_reason(reason)),
    }))
}
