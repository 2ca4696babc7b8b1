//! The background checkpointer: folds the WAL back into the database file on its own thread
//! and connection, so commits do not wait for it.
//!
//! Why: by default SQLite checkpoints inside the `COMMIT` that pushes the WAL past 1,000 pages,
//! so every few hundred batches one commit also copies megabytes into the main file and fsyncs
//! it, and every send queued behind that commit waits (10% of the server's samples in the
//! 10,000 sends/s profile of `docs/benchmarks.md`, and the tail of its send→ack latency). In
//! WAL mode a checkpoint by another connection runs concurrently with the writer, so this
//! thread runs `wal_checkpoint(PASSIVE)`. PASSIVE never waits for readers or the writer; what
//! it could not copy is copied next time. The writer keeps SQLite's automatic checkpoint only
//! as a backstop, at [`BACKSTOP_PAGES`], for a checkpointer that falls far behind.
//!
//! When: after [`EVERY_BATCHES`] committed batches, or [`MAX_AGE`] after the first batch not
//! yet checkpointed, looked at every [`POLL`] (every [`IDLE_POLL`] once nothing has been
//! committed for a quarter of a second). A checkpoint still competes with commits for
//! the disk and a core while it copies, so its size is what matters: many small batches (an
//! open-loop load of single sends, where latency is judged) each dirty their own pages, so
//! they get frequent small checkpoints; a few big batches (a throughput load) re-dirty the same
//! hot pages, so they are checkpointed rarely and each page is copied once for many commits.
//! Measured on the `ack` benchmark (10,000 sends/s, `docs/benchmarks.md`): a fixed 100 ms
//! gave send→ack p99 16–18 ms, a fixed 10 ms 8–10 ms but 12% fewer acked sends/s in
//! `writes`.

use super::error::db;
use chat_core::{Error, Result};
use rusqlite::Connection;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the checkpointer looks at the commit count.
pub(crate) const POLL: Duration = Duration::from_millis(10);

/// Committed batches that trigger a checkpoint.
pub(crate) const EVERY_BATCHES: u64 = 16;

/// Longest a committed batch waits for its checkpoint.
pub(crate) const MAX_AGE: Duration = Duration::from_millis(100);

/// How often an idle checkpointer looks: after [`QUIET_POLLS`] polls with no commit it slows
/// down, so an idle server does not wake up 100 times a second.
pub(crate) const IDLE_POLL: Duration = Duration::from_millis(250);

/// Polls without a commit before the checkpointer counts as idle.
const QUIET_POLLS: u32 = 25;

/// WAL size (pages) at which the writer checkpoints inside a commit after all.
pub(crate) const BACKSTOP_PAGES: u32 = 16_384;

/// Opens the checkpointer's connection. `synchronous=FULL` makes the checkpoint fsync the main
/// file before it lets the WAL be reused.
pub(crate) fn open(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let conn = Connection::open(path).map_err(db("open the checkpointer"))?;
    conn.busy_timeout(busy_timeout)
        .map_err(db("set busy_timeout"))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(db("set synchronous"))?;
    Ok(conn)
}

/// The running checkpointer. Dropping the handle without [`Checkpointer::stop`] detaches it; it
/// stops on its own once the `Sender` is gone.
pub(crate) struct Checkpointer {
    /// Dropped to stop the thread.
    stop: Option<Sender<()>>,
    /// The thread.
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread on `conn`, checkpointing whenever `batches` moved.
    pub(crate) fn start(conn: Connection, batches: Arc<AtomicU64>) -> Result<Checkpointer> {
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("chat-sqlite-ckpt".to_owned())
            .spawn(move || run(&conn, &stopped, &batches))
            .map_err(|e| Error::unavailable("sqlite: start the checkpointer thread", e))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (at most one checkpoint in progress).
    pub(crate) fn stop(mut self) {
        self.stop = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("sqlite checkpointer thread panicked");
            }
        }
    }
}

/// The thread's loop.
fn run(conn: &Connection, stopped: &Receiver<()>, batches: &AtomicU64) {
    let mut seen = batches.load(Ordering::Relaxed);
    // When the first batch after `seen` was noticed.
    let mut pending_since: Option<Instant> = None;
    // Polls in a row that found no new commit.
    let mut quiet = 0u32;
    loop {
        let wait = if quiet >= QUIET_POLLS {
            IDLE_POLL
        } else {
            POLL
        };
        match stopped.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = batches.load(Ordering::Relaxed);
        if now == seen {
            quiet = quiet.saturating_add(1);
            continue;
        }
        quiet = 0;
        let since = *pending_since.get_or_insert_with(Instant::now);
        if now.wrapping_sub(seen) < EVERY_BATCHES && since.elapsed() < MAX_AGE {
            continue;
        }
        seen = now;
        pending_since = None;
        // (busy, WAL frames, frames copied); busy only means "try again later".
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        }) {
            Ok((busy, log, copied)) => {
                tracing::trace!(busy, log, copied, "sqlite: checkpoint");
            }
            Err(e) => tracing::warn!(error = %e, "sqlite: background checkpoint failed"),
        }
    }
}
