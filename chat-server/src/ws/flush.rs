//! The node-wide flush tick: under load, fanned-out frames wait a little so that several leave
//! in one socket write instead of one write each (a write of a small frame costs a few µs of
//! kernel time, most of a delivery's cost; see docs/benchmarks.md, "Coalesced writes").
//!
//! The rule, per connection: a fanned-out frame that finds the connection's queue empty is
//! written at once if the connection has not written in the last
//! [`Config::ws_flush_delay`](crate::Config::ws_flush_delay) (D). If it has, the frame is
//! *held*: the connection is put on this node's hold queue, and its task is woken when D has
//! passed since the hold began, or earlier, as soon as
//! [`Config::ws_flush_batch`](crate::Config::ws_flush_batch) (N) frames are queued. So a
//! connection that gets less than a frame per D (a quiet chat, an idle node) sends every frame
//! at once; one that gets many writes about once per D, or per N frames, each frame at most D
//! late. The hub paces only fan-outs to many local connections (`hub::PACED_FANOUT_MIN`), and
//! replies to the client's own frames (acks, answers) are never held: they wake the task at once
//! and take whatever is held with them.
//!
//! Why one queue and one task for the node rather than a timer per connection: the case it
//! serves is one message fanned out to many connections, whose holds all begin within the same
//! fan-out and end together: one timer wake-up releases them all. Holds begin in time order,
//! so the queue is FIFO and the task sleeps until the front's deadline. It costs a pointer and a
//! timestamp per held connection, and nothing while nobody is held (the task then sleeps on a
//! [`Notify`]).

use super::connection::Connection;
use crate::lock;
use crate::metrics::{thread_cpu, Metrics};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The node's flush tick; see the module docs. A zero delay turns it off: every frame wakes its
/// connection's task at once.
pub(crate) struct FlushTick {
    /// D in microseconds; 0 when off.
    delay_us: u64,
    /// N: a held connection is woken once this many frames are queued.
    batch: usize,
    /// Timestamps are microseconds since this instant, plus one (0 means "never").
    origin: Instant,
    /// Held connections with the time their hold began, oldest first (see
    /// `Connection::push_paced`; a hold ended early leaves a stale entry, ignored at release).
    held: Mutex<VecDeque<(u64, Arc<Connection>)>>,
    /// Wakes the tick's task when the queue stops being empty.
    first_held: Notify,
}

impl FlushTick {
    /// A tick holding frames up to `delay` (whole microseconds; zero turns it off) or until
    /// `batch` frames are queued (at least 2).
    pub(crate) fn new(delay: Duration, batch: usize) -> FlushTick {
        FlushTick {
            delay_us: u64::try_from(delay.as_micros()).unwrap_or(u64::MAX),
            batch: batch.max(2),
            origin: Instant::now(),
            held: Mutex::new(VecDeque::new()),
            first_held: Notify::new(),
        }
    }

    /// Whether frames may be held at all.
    pub(crate) fn enabled(&self) -> bool {
        self.delay_us > 0
    }

    /// N, the frames that end a hold early.
    pub(crate) fn batch(&self) -> usize {
        self.batch
    }

    /// The timestamp of `at` (microseconds since the origin, plus one).
    pub(crate) fn stamp_at(&self, at: Instant) -> u64 {
        let us = at.saturating_duration_since(self.origin).as_micros();
        // Past u64 microseconds is 580,000 years of uptime.
        u64::try_from(us).unwrap_or(u64::MAX - 1) + 1
    }

    /// The timestamp of now; 0 without reading the clock when the tick is off.
    pub(crate) fn stamp_now(&self) -> u64 {
        if !self.enabled() {
            return 0;
        }
        self.stamp_at(Instant::now())
    }

    /// Whether a frame arriving at `now` to a connection that last wrote at `wrote` (0: never)
    /// is held.
    pub(crate) fn holds(&self, wrote: u64, now: u64) -> bool {
        self.enabled() && wrote != 0 && now.saturating_sub(wrote) < self.delay_us
    }

    /// Puts a connection on the hold queue, its hold begun at `now` (`Outbox::held_since`).
    pub(crate) fn hold(&self, conn: Arc<Connection>, now: u64) {
        let mut held = lock(&self.held);
        let first = held.is_empty();
        held.push_back((now, conn));
        drop(held);
        if first {
            self.first_held.notify_one();
        }
    }

    /// Connections held now (tests).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        lock(&self.held).len()
    }

    /// Starts the tick's task, if the tick is on; it stops when the returned guard is dropped.
    pub(crate) fn start(self: &Arc<Self>, metrics: Arc<Metrics>) -> TickTask {
        if !self.enabled() {
            return TickTask(None);
        }
        let tick = self.clone();
        TickTask(Some(tokio::spawn(tick.run(metrics)).abort_handle()))
    }

    /// Forever: sleeps until the oldest hold is D old (or, with none, until one begins), then
    /// releases every hold that old.
    async fn run(self: Arc<Self>, metrics: Arc<Metrics>) {
        let mut due: Vec<(u64, Arc<Connection>)> = Vec::new();
        loop {
            let oldest = lock(&self.held).front().map(|(since, _)| *since);
            let Some(since) = oldest else {
                self.first_held.notified().await;
                continue;
            };
            // Stamps count from 1, so a hold begun at `since` ends `since - 1 + D` µs after
            // the origin.
            let end = self.origin
                + Duration::from_micros(since.saturating_sub(1).saturating_add(self.delay_us));
            tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
            let cpu = thread_cpu();
            let now = self.stamp_now();
            {
                let mut held = lock(&self.held);
                while held
                    .front()
                    .is_some_and(|(since, _)| now.saturating_sub(*since) >= self.delay_us)
                {
                    if let Some(entry) = held.pop_front() {
                        due.push(entry);
                    }
                }
            }
            // Woken outside the lock, so pushes are not kept waiting behind a thousand wakes.
            for (since, conn) in due.drain(..) {
                conn.release(since);
            }
            metrics
                .flush_tick_cpu_seconds
                .inc_by(thread_cpu().saturating_sub(cpu).as_secs_f64());
        }
    }
}

/// The flush tick's task, aborted when dropped (with the hub's event loop that owns it).
pub(crate) struct TickTask(Option<tokio::task::AbortHandle>);

impl Drop for TickTask {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::connection::Push;
    use axum::extract::ws::Utf8Bytes;
    use chat_core::{TokenHash, UserId};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    /// Counts the wake-ups of the connection's task.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A connection whose task is "waiting" with a counting waker.
    fn conn() -> (Arc<Connection>, Arc<Wakes>) {
        let c = Connection::new(1, UserId(1), TokenHash([0; 32]), 64);
        let wakes = Arc::new(Wakes::default());
        c.register(&Waker::from(wakes.clone()));
        (c, wakes)
    }

    fn frame() -> Utf8Bytes {
        Utf8Bytes::from_static("{}")
    }

    /// What the connection's task does when woken: takes every frame, notes the write, waits
    /// again.
    fn write(c: &Connection, wakes: &Arc<Wakes>, at: u64) -> usize {
        let mut n = 0;
        while c.pop().is_some() {
            n += 1;
        }
        c.wrote(at);
        c.register(&Waker::from(wakes.clone()));
        n
    }

    const MS: u64 = 1000;

    #[test]
    fn a_frame_is_held_only_after_a_recent_write_and_until_a_batch() {
        let tick = FlushTick::new(Duration::from_millis(10), 3);
        let m = Metrics::default();
        let (c, wakes) = conn();
        let woken = || wakes.0.load(Ordering::SeqCst);

        // Never written: at once.
        assert_eq!(c.push_paced(frame(), &m, &tick, 100 * MS), Push::Queued);
        assert_eq!((woken(), tick.held()), (1, 0));
        assert_eq!(write(&c, &wakes, 100 * MS), 1);

        // 5 ms after a write: held; a second frame joins the hold.
        c.push_paced(frame(), &m, &tick, 105 * MS);
        c.push_paced(frame(), &m, &tick, 106 * MS);
        assert_eq!((woken(), tick.held()), (1, 1));
        // The third makes a batch: the task is woken without waiting out the delay.
        c.push_paced(frame(), &m, &tick, 107 * MS);
        assert_eq!(woken(), 2);
        assert_eq!(write(&c, &wakes, 107 * MS), 3);

        // A new hold; the stale entry of the one a batch ended does not end it.
        c.push_paced(frame(), &m, &tick, 108 * MS);
        c.release(105 * MS);
        assert_eq!(woken(), 2, "a stale release is ignored");
        c.release(108 * MS);
        assert_eq!(woken(), 3, "the hold's own release wakes the task");
        assert_eq!(write(&c, &wakes, 118 * MS), 1);

        // A reply is never held, and takes held frames with it.
        c.push_paced(frame(), &m, &tick, 119 * MS);
        assert_eq!(woken(), 3);
        c.push(frame(), &m);
        assert_eq!(woken(), 4);
        assert_eq!(write(&c, &wakes, 119 * MS), 2);

        // A delay after the last write: at once again.
        c.push_paced(frame(), &m, &tick, 129 * MS);
        assert_eq!(woken(), 5);
    }

    #[test]
    fn off_never_holds() {
        let tick = FlushTick::new(Duration::ZERO, 8);
        let m = Metrics::default();
        let (c, wakes) = conn();
        for i in 0..3 {
            c.push_paced(frame(), &m, &tick, tick.stamp_now());
            assert_eq!(write(&c, &wakes, tick.stamp_now()), 1);
            assert_eq!(wakes.0.load(Ordering::SeqCst), i + 1);
        }
        assert_eq!(tick.held(), 0);
    }

    #[tokio::test]
    async fn the_tick_releases_a_hold_after_the_delay() {
        let tick = Arc::new(FlushTick::new(Duration::from_millis(300), 8));
        let _task = tick.start(Arc::new(Metrics::default()));
        let m = Metrics::default();
        let (c, wakes) = conn();
        c.wrote(tick.stamp_now());
        c.push_paced(frame(), &m, &tick, tick.stamp_now());
        assert_eq!((wakes.0.load(Ordering::SeqCst), tick.held()), (0, 1));
        // Released once the delay has passed (however late the test runs), never before.
        for _ in 0..600 {
            if wakes.0.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!((wakes.0.load(Ordering::SeqCst), tick.held()), (1, 0));
        assert!(tick.stamp_now() >= 300 * MS, "not before the delay");
    }
}
