//! The read side: a small pool of `query_only` connections, used through
//! `tokio::task::spawn_blocking`.
//!
//! Why this shape: in WAL mode readers never block the writer nor each other, so a few
//! connections let reads run in parallel with the writer and with one another; SQLite calls
//! block, so they run on tokio's blocking pool and never on a runtime worker. A semaphore with
//! one permit per connection makes callers wait asynchronously for a free connection instead of
//! piling blocked threads onto the pool. Each read is its own implicit transaction, so it sees
//! every batch committed before it started (a removal is visible as soon as it returned).

use super::error::db;
use chat_core::{Error, Result};
use rusqlite::Connection;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// The pool. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ReaderPool {
    /// The idle connections; a permit of `permits` guarantees one is here.
    idle: Arc<Mutex<Vec<Connection>>>,
    /// One permit per connection.
    permits: Arc<Semaphore>,
}

impl ReaderPool {
    /// A pool of these connections.
    pub(crate) fn new(conns: Vec<Connection>) -> ReaderPool {
        let permits = Arc::new(Semaphore::new(conns.len()));
        ReaderPool {
            idle: Arc::new(Mutex::new(conns)),
            permits,
        }
    }

    /// Runs `work` on a reader connection on the blocking pool.
    pub(crate) async fn read<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|e| Error::unavailable("sqlite: the reader pool is closed", e))?;
        let idle = Arc::clone(&self.idle);
        let joined = tokio::task::spawn_blocking(move || {
            // The lease is a local of the closure and `permit` a capture, so even if `work`
            // panics the connection goes back to the pool before its permit is released.
            let lease = Lease::take(idle)?;
            let result = work(lease.conn()?);
            drop(lease);
            drop(permit);
            result
        })
        .await;
        match joined {
            Ok(result) => result,
            Err(e) if e.is_cancelled() => Err(Error::unavailable(
                "sqlite: the runtime is shutting down",
                e,
            )),
            Err(e) => Err(Error::internal("sqlite: a read panicked", e)),
        }
    }

    /// Checks that a reader answers.
    pub(crate) async fn ping(&self) -> Result<()> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map_err(db("health check"))
                .map(|_| ())
        })
        .await
    }
}

/// A connection taken from the pool; put back when dropped.
struct Lease {
    /// The connection (always `Some` until dropped).
    conn: Option<Connection>,
    /// Where it goes back to.
    idle: Arc<Mutex<Vec<Connection>>>,
}

impl Lease {
    /// Takes an idle connection; the caller holds a permit, so one is there.
    fn take(idle: Arc<Mutex<Vec<Connection>>>) -> Result<Lease> {
        // Nothing can leave the Vec half-changed, so a poisoned lock is still usable.
        let conn = idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if conn.is_none() {
            return Err(Error::Internal {
                message: "sqlite reader pool: a permit without a connection".to_owned(),
                source: None,
            });
        }
        Ok(Lease { conn, idle })
    }

    /// The connection.
    fn conn(&self) -> Result<&Connection> {
        self.conn.as_ref().ok_or_else(|| Error::Internal {
            message: "sqlite reader pool: a lease without a connection".to_owned(),
            source: None,
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }
}
