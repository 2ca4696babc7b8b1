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
use tokio::sync::{mpsc, oneshot};

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
            .spawn(move || run(conn, rx, max_batch, &thread_counters, checkpointer))
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
    counters: &Counters,
    checkpointer: Checkpointer,
) {
    let mut batch: Vec<Box<dyn WriteOp>> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        commit_batch(&conn, &mut batch, counters);
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
