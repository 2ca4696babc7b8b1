//! The connection's one task between its `ready` frame and its close: a hand-written poll loop
//! ([`Session`]) that reads client frames into the [`Pipeline`], writes the connection's outbox
//! in batches with one flush per burst, pings, and enforces the idle and write timeouts with
//! one timer. One task instead of a reader and a writer task keeps an idle connection small
//! (see the module docs of `ws`).

use super::connection::{close_code, Connection};
use super::pipeline::{push, Pipeline, MAX_IN_FLIGHT};
use crate::state::AppState;
use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use std::future::Future as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::time::{Instant, Sleep};

/// Most frames the connection's task takes from the queue for one flush. Bounds the time one
/// batch keeps the task from reading or noticing a close, and the bytes it buffers.
const WRITE_BATCH: usize = 64;

/// Drives the connection until it must close or the peer is done: see [`Session`]. Returns the
/// frames still in flight, if any.
///
/// Not an `async fn`: that would keep its arguments beside the [`Session`] made of them for
/// the connection's whole life (rust-lang/rust#62958); the session is made first and moved
/// into the block, which keeps every connection's task smaller (see `ws::run`).
#[allow(clippy::manual_async_fn)]
pub(super) fn serve<'a, 's>(
    st: &'a AppState,
    socket: &'s mut WebSocket,
    conn: &'a Arc<Connection>,
    addr: Option<IpAddr>,
    session_expires: Option<Instant>,
) -> impl std::future::Future<Output = Option<Box<Pipeline<'a>>>> + use<'a, 's> {
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
        session_expires,
        timer_armed: false,
    };
    let first = session.next_ping.min(session.idle_deadline);
    async move {
        let mut timer = std::pin::pin!(tokio::time::sleep_until(first));
        std::future::poll_fn(|cx| session.poll(socket, timer.as_mut(), cx)).await;
        session.pipeline
    }
}

/// One connection between its `ready` frame and its close: both directions of the socket, the
/// client frames in flight and the deadlines, all driven by the connection's one task.
///
/// Each poll, in order: takes the close signal; moves finished frames along the
/// [`Pipeline`] (replies are queued like any other frame, so they leave in frame order);
/// writes queued frames (up to [`WRITE_BATCH`], then one flush) and a due ping; reads client
/// frames while fewer than [`MAX_IN_FLIGHT`] are in flight; and repeats while any of that made
/// progress. Then it checks the deadlines (session expiry, stuck write, idle peer, next ping) and arms the one
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
    /// When the session the connection authenticated with expires: the connection closes then
    /// (1008), as a logout closes it, instead of outliving its credentials.
    session_expires: Option<Instant>,
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
        if self.session_expires.is_some_and(|d| now >= d) {
            self.conn.close(close_code::POLICY, "session expired");
            return Deadlines::Close;
        }
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
        if let Some(d) = self.session_expires {
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
        while pipeline.may_apply() {
            match pipeline.checks.poll_next_unpin(cx) {
                Poll::Ready(Some(checked)) => {
                    pipeline.apply(st, checked);
                    progress = true;
                }
                _ => break,
            }
        }
        while !pipeline.applies.is_empty() {
            match pipeline.applies.poll_next_unpin(cx) {
                Poll::Ready(Some(reply)) => {
                    if let Some(reply) = reply {
                        push(st, conn, &reply);
                    }
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
    /// costs one socket write instead of one per frame, and notes the time of the write for
    /// the flush tick. Returns whether anything was written
    /// or flushed.
    fn poll_write(
        &mut self,
        socket: &mut WebSocket,
        cx: &mut Context<'_>,
    ) -> std::result::Result<bool, axum::Error> {
        let mut progress = false;
        let mut fed = 0;
        let mut frames = false;
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
                    Some(frame) => {
                        frames = true;
                        Message::Text(frame)
                    }
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
                        self.st.metrics.ws_writes.inc();
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
        if frames {
            // Fanned-out frames arriving soon after this write may be held to leave together
            // (`ws::flush`); 0 (never) when the tick is off, without reading the clock.
            self.conn.wrote(self.st.hub.flush_tick().stamp_now());
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
