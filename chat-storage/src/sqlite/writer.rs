//! The single writer: one OS thread that owns the only writing connection and commits every
//! write of the store, batched (group commit).
//!
//! Callers send a [`WriteOp`] down a bounded channel and await a oneshot reply. The thread takes
//! the first queued op, drains up to `max_batch - 1` more without waiting, and runs them all in
//! ONE `BEGIN IMMEDIATE … COMMIT`: at `synchronous=FULL` that is one fsync for the whole batch,
//! which is where the throughput comes from. An op that fails (a taken email, an unknown
//! member) fails alone and the rest of the batch still commits: the batch first runs every op
//! plainly (the common case: nothing fails), and if one fails it rolls the whole transaction
//! back and runs the batch again with each op inside its own `SAVEPOINT`, so the failed op is
//! undone alone. Savepoints are not the default because they are not free: every page an op
//! changes that an earlier op of the batch already changed is copied to the statement journal
//! first (a group of appends to one chat keeps changing the same pages), which was ~15% of the
//! writer's time in the `writes` benchmark. So ops must be repeatable (`Fn`). Replies are sent
//! only after the `COMMIT` returned; if the transaction as a whole fails (a full disk, an I/O
//! error) every op of the batch gets `Unavailable` and nothing of it is applied.
//!
//! Under steady load a batch may wait a little before it commits (the commit delay, like
//! PostgreSQL's `commit_delay` with `commit_siblings`): each commit has a fixed cost (its WAL
//! frames, the fsync, the full-text index's segment) that a batch of one pays alone. At 1,000
//! writes/s each write arrives after the previous commit finished and would be a batch of its
//! own; waiting up to [`CommitDelay::delay`] gathers a few and divides that cost (measured in
//! docs/benchmarks.md, "Commit delay"). The wait is adaptive ([`Busy`]):
//! - it engages only when the writer is busy: the first write of a batch arrived within the
//!   delay of the previous commit for [`BUSY_STREAK`] batches in a row, so a lone write or a
//!   short burst after a quiet spell commits at once;
//! - it ends as soon as the batch holds [`DELAY_TARGET`] writes (at 10,000 writes/s that takes
//!   well under the delay), or once no write arrived for about twice the usual gap between
//!   writes ([`Busy::quiet`]: clients that wait for each commit before writing again arrive
//!   together and then stop), so it adds at most the delay to any write and usually less;
//! - a wait that gathered nothing (one client writing in a closed loop, whose next write
//!   cannot come before this one commits) backs the delay off for exponentially more batches,
//!   a fruitful wait halves that back-off, so such a client pays the quiet gap rarely.
//!
//! Why a dedicated thread and not `spawn_blocking` per batch: the connection, its prepared
//! statement cache and the batching loop live in one place with no locking, and a busy writer
//! never competes with reads for the blocking pool.

use super::checkpoint::Checkpointer;
use super::error::{db, writer_gone};
use chat_core::{Error, Result};
use rusqlite::Connection;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Batches in a row whose first write arrived within the commit delay of the previous commit
/// before the writer starts waiting (so a short burst after a quiet spell never waits).
const BUSY_STREAK: u32 = 3;

/// A batch this large shares its commit well enough: the wait ends (or never starts) there.
const DELAY_TARGET: usize = 16;

/// The longest a wait goes on without a write arriving, as a fraction of the delay (see
/// [`Busy::quiet`]).
const QUIET_FRACTION: u32 = 4;

/// The shortest quiet gap that ends a wait: below this, timer resolution and scheduling noise
/// dominate.
const MIN_QUIET: Duration = Duration::from_micros(50);

/// Most batches a fruitless wait turns the delay off for (the back-off doubles up to this).
const MAX_BACKOFF: u32 = 256;

/// The writer's commit delay (see the module docs): how long a small batch may wait for more
/// writes while the writer is busy. Zero turns it off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CommitDelay {
    /// The longest a write waits for company before its batch commits.
    pub(crate) delay: Duration,
}

/// When the delay engages: the writer's recent history (see the module docs).
#[derive(Debug, Default)]
struct Busy {
    /// When the last batch committed (or failed).
    last_commit: Option<Instant>,
    /// Consecutive batches whose first write arrived within the delay of the previous commit.
    streak: u32,
    /// Batches still to commit without waiting, after a wait that gathered nothing.
    skip: u32,
    /// What `skip` is set to after the next fruitless wait: doubles with each fruitless wait,
    /// up to [`MAX_BACKOFF`], and halves with each fruitful one (so a stray write now and then,
    /// such as a periodic flush landing in a wait, does not undo the back-off).
    backoff: u32,
    /// Smoothed time between writes arriving during waits (`None` before the first).
    gap: Option<Duration>,
}

impl Busy {
    /// How long a wait goes on without a write arriving: twice the usual gap between writes
    /// seen in waits, between [`MIN_QUIET`] and a [`QUIET_FRACTION`] of the delay. Writers in a
    /// closed loop (each waits for its commit before writing again) arrive close together and
    /// then stop: once they are all in, the wait ends a couple of gaps later instead of holding
    /// them for the whole delay. Writes arriving at a steady rate keep the wait going until the
    /// delay or [`DELAY_TARGET`].
    fn quiet(&self, delay: Duration) -> Duration {
        let most = (delay / QUIET_FRACTION).max(MIN_QUIET);
        self.gap
            .map_or(most, |gap| (gap * 2).clamp(MIN_QUIET, most))
    }

    /// Notes the time between two writes arriving during a wait.
    fn gap_seen(&mut self, gap: Duration) {
        // An exponentially weighted mean, 1/8 per sample.
        self.gap = Some(self.gap.map_or(gap, |g| (g * 7 + gap) / 8));
    }

    /// Notes a batch's first write arriving at `now`; returns whether its batch should wait.
    fn arrived(&mut self, now: Instant, delay: Duration) -> bool {
        let close = self
            .last_commit
            .is_some_and(|t| now.saturating_duration_since(t) < delay);
        self.streak = if close {
            self.streak.saturating_add(1)
        } else {
            0
        };
        if self.streak < BUSY_STREAK {
            return false;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    /// Notes how a wait went: whether it gathered any write.
    fn waited(&mut self, gathered: bool) {
        if gathered {
            self.backoff = (self.backoff / 2).max(1);
        } else {
            self.backoff = self.backoff.clamp(1, MAX_BACKOFF);
            self.skip = self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// One write, run by the writer thread inside the batch transaction.
trait WriteOp: Send {
    /// Runs the op with no savepoint and keeps its result; whether it succeeded. After a
    /// failure the caller must roll back the whole transaction.
    fn run(&mut self, conn: &Connection) -> bool;

    /// Runs the op inside its own savepoint. `Err` means the savepoint machinery itself failed,
    /// so the transaction is in an unknown state and the whole batch must be rolled back; the
    /// op's own failure is kept for its reply instead.
    fn apply(&mut self, conn: &Connection) -> Result<()>;

    /// The batch committed: send the op's own result.
    fn committed(self: Box<Self>);

    /// The batch did not commit: send `err`.
    fn failed(self: Box<Self>, err: Error);
}

/// A [`WriteOp`] made of a closure and the oneshot its result goes back on.
struct Op<T, F, H> {
    /// The work; run once, or twice if another op of its batch failed.
    work: F,
    /// The work's result, waiting for the commit.
    result: Option<Result<T>>,
    /// Where the caller waits.
    reply: oneshot::Sender<Result<T>>,
    /// Runs on the writer thread once the batch committed, with the op's result, before the
    /// reply is sent (cache invalidation: see `exact_cache.rs`).
    on_commit: Option<H>,
}

impl<T, F, H> WriteOp for Op<T, F, H>
where
    T: Send + 'static,
    F: Fn(&Connection) -> Result<T> + Send + 'static,
    H: FnOnce(&Result<T>) + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.work)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn apply(&mut self, conn: &Connection) -> Result<()> {
        savepoint(conn, "SAVEPOINT op").map_err(db("open a savepoint"))?;
        let result = (self.work)(conn);
        if result.is_err() {
            // Undo whatever the failed op wrote before it failed; the batch goes on.
            savepoint(conn, "ROLLBACK TO op").map_err(db("roll back a savepoint"))?;
        }
        savepoint(conn, "RELEASE op").map_err(db("release a savepoint"))?;
        self.result = Some(result);
        Ok(())
    }

    fn committed(self: Box<Self>) {
        let result = self.result.unwrap_or_else(|| {
            Err(Error::Internal {
                message: "sqlite writer: an op of a committed batch was never applied".to_owned(),
                source: None,
            })
        });
        if let Some(hook) = self.on_commit {
            hook(&result);
        }
        // The caller may have given up waiting (its future was dropped); the write stands.
        let _ = self.reply.send(result);
    }

    fn failed(self: Box<Self>, err: Error) {
        let _ = self.reply.send(Err(err));
    }
}

/// Counters of the writer, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Ops handed to the writer's queue so far.
    pub submitted: u64,
    /// Ops whose batch committed (their own result may still be an error such as `Conflict`).
    pub committed: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Transactions that failed as a whole (every op in them got `Unavailable`).
    pub failed_batches: u64,
}

/// The counters, shared between the handle and the thread.
#[derive(Debug, Default)]
struct Counters {
    submitted: AtomicU64,
    committed: AtomicU64,
    /// Shared with the checkpointer, which runs when it moved.
    batches: Arc<AtomicU64>,
    failed_batches: AtomicU64,
}

/// The handle to the writer thread. Dropping it closes the queue; the thread then finishes
/// what is queued, checkpoints the WAL and exits.
pub(crate) struct Writer {
    /// The queue; `None` once shut down.
    tx: Option<mpsc::Sender<Box<dyn WriteOp>>>,
    /// The thread; `None` once joined or detached.
    thread: Option<JoinHandle<()>>,
    /// Shared counters.
    counters: Arc<Counters>,
}

impl Writer {
    /// Starts the writer thread on `conn`, and the background checkpointer on `checkpointer`
    /// (see `checkpoint.rs`).
    pub(crate) fn start(
        conn: Connection,
        checkpointer: Connection,
        max_batch: usize,
        queue: usize,
        commit_delay: CommitDelay,
    ) -> Result<Writer> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let max_batch = max_batch.max(1);
        conn.pragma_update(
            None,
            "wal_autocheckpoint",
            super::checkpoint::BACKSTOP_PAGES,
        )
        .map_err(db("set wal_autocheckpoint"))?;
        let checkpointer = Checkpointer::start(checkpointer, Arc::clone(&counters.batches))?;
        let thread = std::thread::Builder::new()
            .name("chat-sqlite-writer".to_owned())
            .spawn(move || {
                run(
                    conn,
                    rx,
                    max_batch,
                    commit_delay,
                    &thread_counters,
                    checkpointer,
                )
            })
            .map_err(|e| Error::unavailable("sqlite: start the writer thread", e))?;
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
            counters,
        })
    }

    /// Runs `work` on the writer connection inside the next batch and returns its result once
    /// the batch committed.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T> + Send + 'static,
    {
        self.write_then(work, None::<fn(&Result<T>)>).await
    }

    /// [`Writer::write`], and once the batch committed, `on_commit` runs on the writer thread
    /// with the op's result before the reply is sent, even if the caller stopped waiting.
    pub(crate) async fn write_then<T, F, H>(&self, work: F, on_commit: Option<H>) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T> + Send + 'static,
        H: FnOnce(&Result<T>) + Send + 'static,
    {
        let tx = self.tx.as_ref().ok_or_else(writer_gone)?;
        let (reply, rx) = oneshot::channel();
        let op: Box<dyn WriteOp> = Box::new(Op {
            work,
            result: None,
            reply,
            on_commit,
        });
        tx.send(op).await.map_err(|_| writer_gone())?;
        self.counters.submitted.fetch_add(1, Ordering::Relaxed);
        rx.await.map_err(|_| writer_gone())?
    }

    /// Whether the thread is still taking writes.
    pub(crate) fn is_running(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| !tx.is_closed())
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> WriterStats {
        WriterStats {
            submitted: self.counters.submitted.load(Ordering::Relaxed),
            committed: self.counters.committed.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            failed_batches: self.counters.failed_batches.load(Ordering::Relaxed),
        }
    }

    /// Closes the queue and returns the thread to join (the thread drains the queue first).
    pub(crate) fn shut_down(&mut self) -> Option<JoinHandle<()>> {
        self.tx = None;
        self.thread.take()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let thread = self.shut_down();
        // Joining blocks until the queue is drained and the WAL checkpointed. Do that only when
        // not inside an async runtime, whose worker we must not block; there the thread is
        // detached and finishes on its own (`SqliteStore::close` waits for it properly).
        if let Some(thread) = thread {
            if tokio::runtime::Handle::try_current().is_err() && thread.join().is_err() {
                tracing::error!("sqlite writer thread panicked");
            }
        }
    }
}

/// The writer thread's loop.
fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn WriteOp>>,
    max_batch: usize,
    commit_delay: CommitDelay,
    counters: &Counters,
    checkpointer: Checkpointer,
) {
    let mut batch: Vec<Box<dyn WriteOp>> = Vec::with_capacity(max_batch);
    let delay = commit_delay.delay;
    // The wait needs a receive with a timeout, which tokio's receiver offers only in async
    // code: a small runtime of the writer's own, with a timer, used only while waiting.
    let waiter = if delay.is_zero() {
        None
    } else {
        match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => Some(rt),
            Err(e) => {
                tracing::warn!(error = %e, "sqlite writer: no timer for the commit delay; committing without it");
                None
            }
        }
    };
    let target = DELAY_TARGET.min(max_batch);
    let mut busy = Busy::default();
    while let Some(first) = rx.blocking_recv() {
        let arrived = waiter.as_ref().map(|_| Instant::now());
        batch.push(first);
        drain(&mut rx, &mut batch, max_batch);
        if let (Some(rt), Some(arrived)) = (&waiter, arrived) {
            if busy.arrived(arrived, delay) && batch.len() < target {
                let before = batch.len();
                let deadline = tokio::time::Instant::from_std(arrived + delay);
                rt.block_on(async {
                    let mut last = tokio::time::Instant::now();
                    while batch.len() < target {
                        let until = deadline.min(last + busy.quiet(delay));
                        match tokio::time::timeout_at(until, rx.recv()).await {
                            Ok(Some(op)) => {
                                batch.push(op);
                                drain(&mut rx, &mut batch, max_batch);
                                let now = tokio::time::Instant::now();
                                busy.gap_seen(now - last);
                                last = now;
                            }
                            Ok(None) | Err(_) => break,
                        }
                    }
                });
                busy.waited(batch.len() > before);
            }
        }
        commit_batch(&conn, &mut batch, counters);
        if waiter.is_some() {
            busy.last_commit = Some(Instant::now());
        }
    }
    // Every handle is gone: stop the background checkpointer, then fold the WAL back into the
    // main file so the next open starts from a small log. Busy (a reader still open) is fine;
    // the next writer checkpoints later.
    checkpointer.stop();
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::debug!(error = %e, "sqlite: checkpoint at close did not complete");
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "sqlite: closing the writer connection failed");
    }
}

/// Moves what is queued into `batch`, up to `max_batch`, without waiting.
fn drain(
    rx: &mut mpsc::Receiver<Box<dyn WriteOp>>,
    batch: &mut Vec<Box<dyn WriteOp>>,
    max_batch: usize,
) {
    while batch.len() < max_batch {
        match rx.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
}

/// Runs one batch in one transaction and answers every op in it.
fn commit_batch(conn: &Connection, batch: &mut Vec<Box<dyn WriteOp>>, counters: &Counters) {
    let outcome = (|| -> Result<()> {
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(db("begin a write transaction"))?;
        if !batch.iter_mut().all(|op| op.run(conn)) {
            // An op failed and may have written part of its work: start over, this time with
            // a savepoint around each op so the failure is undone alone.
            rollback(conn);
            conn.execute_batch("BEGIN IMMEDIATE")
                .map_err(db("begin a write transaction"))?;
            for op in batch.iter_mut() {
                if let Err(e) = op.apply(conn) {
                    rollback(conn);
                    return Err(e);
                }
            }
        }
        if let Err(e) = conn.execute_batch("COMMIT") {
            rollback(conn);
            return Err(db("commit")(e));
        }
        Ok(())
    })();
    let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
    match outcome {
        Ok(()) => {
            counters.batches.fetch_add(1, Ordering::Relaxed);
            counters.committed.fetch_add(n, Ordering::Relaxed);
            for op in batch.drain(..) {
                op.committed();
            }
        }
        Err(e) => {
            counters.failed_batches.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, ops = n, "sqlite: a write batch failed; nothing of it was applied");
            // `Error` is not `Clone`: every op gets its own copy of the cause, as text.
            let cause = error_chain(&e);
            for op in batch.drain(..) {
                op.failed(Error::unavailable(
                    "sqlite: the write transaction failed",
                    std::io::Error::other(cause.clone()),
                ));
            }
        }
    }
}

/// Runs one savepoint statement, prepared once per connection.
fn savepoint(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Rolls back the open transaction, if any. A failed COMMIT may already have rolled back by
/// itself, so "no transaction is active" is expected here.
fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "sqlite: rollback failed");
        }
    }
}

/// An error and its sources, as one line.
fn error_chain(e: &Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(2);

    /// Drives `busy` through a batch arriving `gap` after the previous commit.
    fn batch_after(busy: &mut Busy, t: &mut Instant, gap: Duration) -> bool {
        busy.last_commit = Some(*t);
        *t += gap;
        busy.arrived(*t, DELAY)
    }

    #[test]
    fn the_delay_engages_only_after_a_streak_of_busy_batches() {
        let mut t = Instant::now();
        let mut busy = Busy::default();
        let close = Duration::from_micros(500);
        // The first write ever, and writes right after a commit until the streak is long enough.
        assert!(!busy.arrived(t, DELAY));
        for _ in 0..BUSY_STREAK - 1 {
            assert!(!batch_after(&mut busy, &mut t, close));
        }
        assert!(
            batch_after(&mut busy, &mut t, close),
            "a steady stream waits"
        );
        busy.waited(true);
        assert!(batch_after(&mut busy, &mut t, close), "and keeps waiting");
        busy.waited(true);
        // A quiet spell longer than the delay resets it: the next writes commit at once.
        assert!(!batch_after(&mut busy, &mut t, Duration::from_millis(3)));
        assert!(!batch_after(&mut busy, &mut t, close));
    }

    #[test]
    fn the_quiet_gap_follows_the_gaps_between_writes_within_bounds() {
        let mut busy = Busy::default();
        assert_eq!(busy.quiet(DELAY), DELAY / QUIET_FRACTION);
        for _ in 0..50 {
            busy.gap_seen(Duration::from_micros(100));
        }
        assert_eq!(busy.quiet(DELAY), Duration::from_micros(200));
        for _ in 0..50 {
            busy.gap_seen(Duration::from_micros(1));
        }
        assert_eq!(busy.quiet(DELAY), MIN_QUIET);
        for _ in 0..80 {
            busy.gap_seen(Duration::from_millis(3));
        }
        assert_eq!(busy.quiet(DELAY), DELAY / QUIET_FRACTION);
    }

    #[test]
    fn fruitless_waits_back_off_exponentially_and_fruitful_ones_halve_it() {
        let mut t = Instant::now();
        let mut busy = Busy::default();
        let close = Duration::from_micros(300);
        for _ in 0..BUSY_STREAK {
            batch_after(&mut busy, &mut t, close);
        }
        // A closed-loop client: every wait gathers nothing. Count the batches that wait.
        let mut waits = Vec::new();
        for i in 0..600 {
            if batch_after(&mut busy, &mut t, close) {
                waits.push(i);
                busy.waited(false);
            }
        }
        // 1, 2, 4, … batches skipped between waits, capped at MAX_BACKOFF.
        let gaps: Vec<_> = waits.windows(2).map(|w| w[1] - w[0] - 1).collect();
        assert_eq!(&gaps[..8], &[1, 2, 4, 8, 16, 32, 64, 128]);
        assert!(
            gaps[8..].iter().all(|&g| g == MAX_BACKOFF as usize),
            "{gaps:?}"
        );
        // Company again: each fruitful wait halves the back-off.
        let backoff = busy.backoff;
        busy.waited(true);
        assert_eq!(busy.backoff, backoff / 2);
        busy.skip = 0;
        assert!(batch_after(&mut busy, &mut t, close));
        busy.waited(false);
        assert_eq!(busy.skip, backoff / 2);
        for _ in 0..20 {
            busy.waited(true);
        }
        assert_eq!(busy.backoff, 1);
    }
}
