//! Connection pools and the routing of each statement to the primary or to a replica.
//!
//! [`Pools`] owns one bounded pool for the primary and one per replica, and runs every database
//! step through one of two doors:
//! - [`Pools::on_primary`]: writes and the reads that must be current. Each attempt acquires a
//!   connection within `acquire_timeout` and must finish within `op_timeout`; InnoDB deadlocks and
//!   lock-wait timeouts (which roll the transaction back) are retried a few times.
//! - [`Pools::on_replica`]: reads a replica may serve. The result is used only if it is provably
//!   current (see the module doc of [`crate::mysql`] for the rule); otherwise, and whenever the
//!   replica is down, lagging or slow, the same read runs on the primary. A replica that failed
//!   is skipped for `replica_cooldown`, so a dead replica costs one failed attempt per cooldown,
//!   not one per read.

use super::error::Failure;
use super::ReplicaStats;
use chat_core::{Error, Result};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How many times a transaction that lost a deadlock or a lock wait is run in all.
const LOCK_ATTEMPTS: u32 = 4;

/// How a replica's answer is checked before it is used.
pub(crate) enum Freshness<'a, T> {
    /// Before reading, wait (up to `replica_wait`) until the replica has applied everything the
    /// primary had written when the read began (its `@@gtid_binlog_pos`).
    Causal,
    /// Read at once; the answer is used only if this returns `true` for it (the answer proves
    /// itself current, e.g. an immutable row that was found, or a page of dense `seq`s with
    /// nothing missing read together with the chat's `last_rev`, checked against the primary's
    /// read before). Otherwise the primary answers.
    SelfEvident(&'a (dyn Fn(&T) -> bool + Send + Sync)),
}

/// One replica and its health.
struct Replica {
    /// The bounded pool of connections to it.
    pool: Pool,
    /// The replica's address without credentials, for logs.
    label: String,
    /// Until when (milliseconds since `Pools::epoch`) the replica is skipped after a failure.
    down_until_ms: AtomicU64,
}

/// The primary, the replicas, the timeouts and the routing counters.
pub(crate) struct Pools {
    /// Writes and current reads.
    pub(crate) primary: Pool,
    /// Replicas for reads; may be empty.
    replicas: Vec<Replica>,
    /// Round-robin cursor over `replicas`.
    next_replica: AtomicUsize,
    /// Longest wait for a connection from a pool (including connecting).
    acquire_timeout: Duration,
    /// Longest time one attempt of one operation may take once it has its connection.
    op_timeout: Duration,
    /// Longest `MASTER_GTID_WAIT` on a replica before the read goes to the primary.
    replica_wait: Duration,
    /// How long a failed or lagging replica is left alone.
    replica_cooldown: Duration,
    /// Zero point of `down_until_ms`.
    epoch: Instant,
    /// Reads a replica answered.
    replica_reads: AtomicU64,
    /// Replica-eligible reads that the primary answered after all.
    primary_fallbacks: AtomicU64,
}

/// The timeouts of [`Pools`].
pub(crate) struct Timeouts {
    /// See [`Pools::acquire_timeout`].
    pub(crate) acquire: Duration,
    /// See [`Pools::op_timeout`].
    pub(crate) op: Duration,
    /// See [`Pools::replica_wait`].
    pub(crate) replica_wait: Duration,
    /// See [`Pools::replica_cooldown`].
    pub(crate) replica_cooldown: Duration,
}

impl Pools {
    /// Longest wait for a connection; an append's wait for its chat's turn has the same bound.
    pub(crate) fn acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }

    /// Pools for a primary and replicas (each given with a label for logs).
    pub(crate) fn new(primary: Pool, replicas: Vec<(Pool, String)>, t: Timeouts) -> Pools {
        Pools {
            primary,
            replicas: replicas
                .into_iter()
                .map(|(pool, label)| Replica {
                    pool,
                    label,
                    down_until_ms: AtomicU64::new(0),
                })
                .collect(),
            next_replica: AtomicUsize::new(0),
            acquire_timeout: t.acquire,
            op_timeout: t.op,
            replica_wait: t.replica_wait,
            replica_cooldown: t.replica_cooldown,
            epoch: Instant::now(),
            replica_reads: AtomicU64::new(0),
            primary_fallbacks: AtomicU64::new(0),
        }
    }

    /// The routing counters so far.
    pub(crate) fn stats(&self) -> ReplicaStats {
        ReplicaStats {
            replica_reads: self.replica_reads.load(Ordering::Relaxed),
            primary_fallbacks: self.primary_fallbacks.load(Ordering::Relaxed),
        }
    }

    /// Whether any replica is configured.
    pub(crate) fn has_replicas(&self) -> bool {
        !self.replicas.is_empty()
    }

    /// A connection from `pool`, within the acquire timeout.
    pub(crate) async fn conn(&self, pool: &Pool) -> Result<Conn, Failure> {
        match tokio::time::timeout(self.acquire_timeout, pool.get_conn()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(Failure::Db(e)),
            Err(_) => Err(Failure::Timeout("acquiring a connection")),
        }
    }

    /// Runs `step` on a primary connection: within the timeouts, retrying lock conflicts.
    ///
    /// `step` gets the connection by value; a connection dropped mid-transaction goes back to
    /// the pool, which rolls the transaction back (or discards a broken connection).
    pub(crate) async fn on_primary<T, F, Fut>(&self, what: &str, step: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut attempt = 1;
        loop {
            match self.attempt(&self.primary, &step).await {
                Ok(v) => return Ok(v),
                Err(f) if f.is_retryable_lock() && attempt < LOCK_ATTEMPTS => {
                    tracing::debug!(what, attempt, "mysql: lock conflict; running again");
                    // A short, growing pause lets the winner of the conflict finish first.
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(f) => return Err(f.into_error(what)),
            }
        }
    }

    /// One attempt of `step` on a connection of `pool`.
    async fn attempt<T, F, Fut>(&self, pool: &Pool, step: &F) -> Result<T, Failure>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let conn = self.conn(pool).await?;
        match tokio::time::timeout(self.op_timeout, step(conn)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout("the statement")),
        }
    }

    /// Runs the read `step` on a replica if one is healthy and its answer passes `freshness`;
    /// otherwise (no replica, replica down, lagging, or an answer that does not prove itself)
    /// on the primary.
    pub(crate) async fn on_replica<T, F, Fut>(
        &self,
        what: &str,
        freshness: Freshness<'_, T>,
        step: F,
    ) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        if let Some(replica) = self.pick_replica() {
            // The primary's position is read first, so that a primary that is down is not
            // blamed on the replica.
            let position = match freshness {
                Freshness::Causal => Some(
                    self.primary_position()
                        .await
                        .map_err(|f| f.into_error(what))?,
                ),
                Freshness::SelfEvident(_) => None,
            };
            match self
                .try_replica(replica, position.as_deref(), &freshness, &step)
                .await
            {
                Ok(Some(v)) => {
                    self.replica_reads.fetch_add(1, Ordering::Relaxed);
                    return Ok(v);
                }
                // Not provably current: the primary decides. Not a fault of the replica.
                Ok(None) => {}
                Err(Failure::Domain(e)) => return Err(e),
                Err(f) => {
                    tracing::warn!(
                        what,
                        replica = %replica.label,
                        error = ?f,
                        "mysql: replica read failed; reading from the primary"
                    );
                    if f.is_unavailable() {
                        self.mark_down(replica);
                    }
                }
            }
            self.primary_fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        self.on_primary(what, step).await
    }

    /// The replica read itself: `Ok(None)` when the answer may be stale. `position` is the
    /// primary's GTID position for a causal read.
    async fn try_replica<T, F, Fut>(
        &self,
        replica: &Replica,
        position: Option<&str>,
        freshness: &Freshness<'_, T>,
        step: &F,
    ) -> Result<Option<T>, Failure>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        match freshness {
            Freshness::SelfEvident(complete) => {
                let v = self.attempt(&replica.pool, step).await?;
                Ok(complete(&v).then_some(v))
            }
            Freshness::Causal => {
                let position = position.unwrap_or_default();
                let mut conn = self.conn(&replica.pool).await?;
                let waited = tokio::time::timeout(
                    self.replica_wait + self.op_timeout,
                    conn.exec_first::<mysql_async::Row, _, _>(
                        "SELECT MASTER_GTID_WAIT(?, ?)",
                        (position, self.replica_wait.as_secs_f64()),
                    ),
                )
                .await
                .map_err(|_| Failure::Timeout("waiting for the replica"))??;
                let waited: Option<Option<i64>> = super::scalar("MASTER_GTID_WAIT", waited)?;
                if waited != Some(Some(0)) {
                    // -1: timed out (lagging, or its SQL thread is stopped); NULL: error.
                    tracing::info!(
                        replica = %replica.label,
                        gtid = %position,
                        "mysql: replica behind the primary; reading from the primary"
                    );
                    self.mark_down(replica);
                    return Ok(None);
                }
                let v = tokio::time::timeout(self.op_timeout, step(conn))
                    .await
                    .map_err(|_| Failure::Timeout("the statement"))??;
                Ok(Some(v))
            }
        }
    }

    /// The primary's binlog GTID position: every transaction committed (acked) before this call
    /// is at or below it.
    async fn primary_position(&self) -> Result<String, Failure> {
        let mut conn = self.conn(&self.primary).await?;
        let pos = tokio::time::timeout(
            self.op_timeout,
            conn.query_first::<mysql_async::Row, _>("SELECT @@GLOBAL.gtid_binlog_pos"),
        )
        .await
        .map_err(|_| Failure::Timeout("reading the primary's GTID position"))??;
        let pos: Option<Option<String>> = super::scalar("gtid_binlog_pos", pos)?;
        Ok(pos.flatten().unwrap_or_default())
    }

    /// Whether a replica may be asked now (one is configured and not in its cooldown): a read
    /// that needs a value from the primary to check a replica's answer skips that step when no
    /// replica would be asked.
    pub(crate) fn replica_ready(&self) -> bool {
        let now = self.now_ms();
        self.replicas
            .iter()
            .any(|r| r.down_until_ms.load(Ordering::Relaxed) <= now)
    }

    /// The next healthy replica, round robin.
    fn pick_replica(&self) -> Option<&Replica> {
        let n = self.replicas.len();
        if n == 0 {
            return None;
        }
        let now = self.now_ms();
        let start = self.next_replica.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.replicas[(start + i) % n])
            .find(|r| r.down_until_ms.load(Ordering::Relaxed) <= now)
    }

    /// Skips `replica` for the cooldown.
    fn mark_down(&self, replica: &Replica) {
        let until = self.now_ms() + u64::try_from(self.replica_cooldown.as_millis()).unwrap_or(0);
        replica.down_until_ms.store(until, Ordering::Relaxed);
    }

    /// Milliseconds since `epoch`.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Closes every pool (waits for connections in use to come back).
    pub(crate) async fn disconnect(self) -> Result<()> {
        let mut first_error: Option<Error> = None;
        let pools = std::iter::once(self.primary).chain(self.replicas.into_iter().map(|r| r.pool));
        for pool in pools {
            if let Err(e) = pool.disconnect().await {
                first_error.get_or_insert(Failure::Db(e).into_error("disconnect"));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
