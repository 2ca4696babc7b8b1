//! One live WebSocket connection as the hub and the connection's task share it: its bounded
//! outbound queue of pre-serialized frames (the outbox), its close reason, and the waker of its
//! task. The hub pushes frames; the session (`ws::session`) pops and writes them.
//!
//! It also names the close codes the server uses, and serializes frames once for every
//! recipient ([`serialize`]).

use super::flush::FlushTick;
use crate::lock;
use crate::metrics::Metrics;
use axum::extract::ws::Utf8Bytes;
use chat_core::protocol::ServerFrame;
use chat_core::{TokenHash, UserId};
use futures::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    /// The peer is reading, only slowly (a slow consumer): its close frame waits behind
    /// everything already in the socket's buffers, so it gets the write timeout to arrive
    /// rather than the short grace of other closes.
    pub(crate) patient: bool,
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
    token_hash: TokenHash,
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
    /// When the task last wrote to the socket, as a [`FlushTick`] timestamp (0: not yet, or the
    /// tick is off): a fanned-out frame arriving soon after may be held (see `ws::flush`).
    wrote_at: AtomicU64,
}

/// What a connection's task has still to do, as [`Connection`] keeps it.
#[derive(Default)]
struct Outbox {
    /// Pre-serialized frames, oldest first. Bounded by [`Connection::capacity`].
    frames: VecDeque<Utf8Bytes>,
    /// Set when the connection must close; frames offered afterwards are dropped.
    closing: bool,
    /// The first reason given for closing (later ones lose); `None` closes without a frame.
    /// Boxed: set once at the end, it would otherwise add 24 B to every live connection.
    close_reason: Option<Box<CloseReason>>,
    /// When the current hold began (a [`FlushTick`] timestamp; 0: not held). The tick's
    /// queue entry for it ends it; a hold ended earlier (by a full batch or a reply) leaves its
    /// entry behind, which then finds another or no hold here and does nothing.
    held_since: u64,
}

impl Connection {
    /// A connection whose outbound queue holds at most `capacity` frames.
    pub(crate) fn new(
        id: u64,
        user_id: UserId,
        token_hash: TokenHash,
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
            wrote_at: AtomicU64::new(0),
        })
    }

    /// Offers a frame to be written at once (a reply to the client's own frame), without
    /// waiting. A full queue closes the connection (policy violation): the client resumes from
    /// its last `seq` after reconnecting.
    pub(crate) fn push(&self, frame: Utf8Bytes, metrics: &Metrics) -> Push {
        let mut outbox = match self.enqueue(frame, metrics) {
            Ok(outbox) => outbox,
            Err(refused) => return refused,
        };
        // Only the first frame of a burst needs to wake the task: it takes every queued frame
        // before it waits again, and the waker it left is consumed by this wake-up. Frames held
        // for the flush tick go out with this one, which ends their hold.
        let wake = outbox.frames.len() == 1 || outbox.held_since != 0;
        outbox.held_since = 0;
        drop(outbox);
        if wake {
            self.waker.wake();
        }
        Push::Queued
    }

    /// Offers a fanned-out frame, which may be held for a moment if this connection wrote
    /// lately, so that it leaves with the frames after it (`ws::flush`; `now` is the tick's
    /// [`FlushTick::stamp_at`] of the fan-out). Otherwise as [`Connection::push`].
    pub(crate) fn push_paced(
        self: &Arc<Self>,
        frame: Utf8Bytes,
        metrics: &Metrics,
        tick: &FlushTick,
        now: u64,
    ) -> Push {
        let mut outbox = match self.enqueue(frame, metrics) {
            Ok(outbox) => outbox,
            Err(refused) => return refused,
        };
        let queued = outbox.frames.len();
        if outbox.held_since != 0 {
            // Enough for one write: the hold ends now.
            if queued >= tick.batch() {
                outbox.held_since = 0;
                drop(outbox);
                self.waker.wake();
            }
            return Push::Queued;
        }
        // Behind other frames the task is already woken.
        if queued > 1 {
            return Push::Queued;
        }
        if tick.holds(self.wrote_at.load(Ordering::Relaxed), now) {
            outbox.held_since = now;
            drop(outbox);
            tick.hold(self.clone(), now);
        } else {
            drop(outbox);
            self.waker.wake();
        }
        Push::Queued
    }

    /// Queues a frame unless the connection is closing or its queue is full (then closes it as
    /// a slow consumer). Returns the locked outbox with the frame in it.
    fn enqueue(
        &self,
        frame: Utf8Bytes,
        metrics: &Metrics,
    ) -> std::result::Result<std::sync::MutexGuard<'_, Outbox>, Push> {
        let mut outbox = lock(&self.outbox);
        if outbox.closing {
            return Err(Push::Closing);
        }
        if outbox.frames.len() >= self.capacity {
            drop(outbox);
            if self.close_with(
                close_code::POLICY,
                "slow consumer: outbound queue full",
                true,
            ) {
                metrics.slow_consumer_disconnects.inc();
                tracing::info!(
                    user_id = %self.user_id,
                    conn = self.id,
                    "closing slow consumer"
                );
            }
            return Err(Push::SlowConsumer);
        }
        outbox.frames.push_back(frame);
        metrics.deliveries.inc();
        Ok(outbox)
    }

    /// The flush tick ends the hold begun at `since`: wakes the task for the frames held,
    /// unless that hold already ended.
    pub(crate) fn release(&self, since: u64) {
        let mut outbox = lock(&self.outbox);
        if outbox.held_since != since {
            return;
        }
        outbox.held_since = 0;
        drop(outbox);
        self.waker.wake();
    }

    /// Notes when the task last wrote to the socket (a [`FlushTick`] timestamp).
    pub(crate) fn wrote(&self, at: u64) {
        self.wrote_at.store(at, Ordering::Relaxed);
    }

    /// Asks the connection to close with this code and reason. Returns whether this call was
    /// the first to do so.
    pub(crate) fn close(&self, code: u16, reason: &str) -> bool {
        self.close_with(code, reason, false)
    }

    /// [`Connection::close`], saying whether the close frame may take the write timeout to
    /// get through (see [`CloseReason::patient`]).
    fn close_with(&self, code: u16, reason: &str, patient: bool) -> bool {
        let mut outbox = lock(&self.outbox);
        if outbox.close_reason.is_some() {
            return false;
        }
        outbox.close_reason = Some(Box::new(CloseReason {
            code,
            reason: truncate_reason(reason),
            patient,
        }));
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
        lock(&self.outbox).close_reason.as_deref().cloned()
    }

    /// Whether this connection authenticated with the session `hash`.
    pub(crate) fn has_token(&self, hash: &TokenHash) -> bool {
        self.token_hash == *hash
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
        // Give the queue's buffer back once it is drained, so an idle connection holds none
        // (even one frame allocates room for four, 128 B, and most connections are idle most
        // of the time). The next frame allocates it again: one small malloc per burst, not
        // measurable in fan-out (docs/benchmarks.md, "Connections").
        if outbox.frames.is_empty() {
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

/// A close frame's reason must fit in 123 bytes; cut on a character boundary.
pub(crate) fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
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
