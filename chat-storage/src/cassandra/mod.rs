//! The Cassandra message store (feature `cassandra`): the seed's write-heavy Message table on
//! Apache Cassandra 5.0 (or ScyllaDB) through the `scylla` driver. Messages only; users, chats
//! and memberships stay in a [`MetadataStore`](chat_core::MetadataStore) elsewhere.
//!
//! # Layout
//! - [`config`]: [`CassandraConfig`] and the `cassandra://` URL.
//! - `schema`: keyspace, tables and versioned migrations (`schema_migrations`).
//! - `append`: how messages get their `seq` (below), and writing claims out.
//! - `change`: edits, deletes and reactions, and the change feed (below).
//! - `fetch`: pages, walking buckets backward and forward.
//! - `activity`: the chat list's read (head, newest row, tombstone count per chat).
//! - `search`: message search (a `terms` set per row with a Storage-Attached Index).
//! - `error`: driver errors to [`chat_core::Error`].
//! - `testing` (features `cassandra` + `testing`): a unique keyspace per test, the test URL.
//!
//! # Tables
//! - `messages ((chat_id, bucket), seq)` with `bucket = seq / bucket_size`: a partition holds at
//!   most `bucket_size` messages (default 10 000, fixed per keyspace in `store_settings`), and
//!   the partition of any `seq` is known without a lookup.
//!   A message row also holds what changes (`msg_text`, `edited_at`, `deleted`, `reactions`)
//!   and `rev`, the revision of its latest change (null: stored before revisions, `rev = seq`).
//!   Since schema version 4 it also holds `terms`, the message's search terms (`set<text>`,
//!   indexed by SAI), written with the text (see `search`).
//! - `message_dedupe ((chat_id, sender_id, client_msg_id)) -> seq`.
//! - `message_revs ((chat_id, bucket), rev) -> seq` with `bucket = rev / bucket_size`: the change
//!   feed, one row per revision handed out since schema version 2.
//! - `message_tombstones ((chat_id), seq)`: one row per message deleted since schema version 3,
//!   written with the delete claim (same write timestamp, so every writer of the claim writes
//!   the same row); the chat list counts a chat's tombstones above a marker here.
//! - `chat_heads (chat_id) -> last_seq, last_rev, claim, implicit_revs`: the last `seq` and the
//!   last revision handed out and *the claim that handed them out* (its messages, or its
//!   change). Written only by lightweight transactions (LWT); the tables above are written only
//!   by plain writes, never mixed with LWTs on the same rows. (Version 1 kept the claim's
//!   messages in `pending`; see "Revisions" for how such a head is taken over.)
//!
//! # How `seq` stays dense: a claim that carries its messages
//! Appends to one chat queue up in the process; whoever holds the chat's in-process lock takes
//! everything queued (up to `max_claim`, default 64: group commit) and, on a task of its own:
//! 1. Knows a state `(n, r, claim_n)` of the chat's head, observed linearizably: from its own
//!    last LWT on that chat, or from the current values a failed LWT returns (`pending_n`
//!    below: the messages of `claim_n`, none if it is a change). A cold process
//!    first tries `INSERT ... IF NOT EXISTS` with `last_seq = k` and its `k` messages, which
//!    succeeds only for a chat without messages and otherwise returns the current head.
//! 2. Dedupe: a message whose `(sender, client_msg_id)` is in `pending_n` gets that one back;
//!    else a QUORUM read of `message_dedupe` finds any older one (the invariant below says why
//!    it must). Repeats inside the batch follow their first occurrence.
//! 3. Materializes `claim_n`: writes its messages to `messages` (one single-partition batch
//!    per bucket, buckets in ascending order, so a reader never sees a later one without the
//!    earlier ones), their dedupe rows and their feed rows (or a change's new state and feed
//!    row), at QUORUM, unless this process already did. These writes are idempotent (same
//!    values, same write timestamp), so any number of processes may do them, and they are what
//!    lets a claimer that died never leave a hole.
//! 4. Claims: `UPDATE chat_heads SET last_seq = n+k, last_rev = r+k, claim = <the k new
//!    messages> IF last_seq = n AND last_rev = r AND claim = claim_n`. If it applies, writes
//!    messages `n+1..=n+k` (revisions `r+1..=r+k`), their dedupe rows and their feed rows the
//!    same way, then acks all k. If not, the LWT returned the current head: go to 2 with it
//!    (another process won those seqs).
//!
//! **Invariant:** the head only moves past `n` after the messages of the claim that ended at
//! `n`, and their dedupe rows, are at QUORUM. Hence:
//! - *No two messages with one seq:* seqs `n+1..=n+k` are handed out by exactly one successful
//!   LWT (Paxos), and their contents are fixed by it (every later write copies them).
//! - *No hole, ever:* the claim holds its messages; if its claimer dies before writing them,
//!   the next claim (or a `last_seq`, or the sender's retry) writes them from the head. The head
//!   never skips. Rows become visible in `seq` order: a claim's rows are written only after the
//!   previous claim's rows completed at QUORUM, and within a claim in ascending atomic buckets.
//!   Why not make the message row itself the claim (`INSERT INTO messages ... IF NOT EXISTS` at
//!   the next seq)? That also gives no duplicates and no holes, but the dedupe key then lives in
//!   another partition than the claim and no single LWT can claim both: a crash between the
//!   two, or a retry racing a timed-out first attempt, stores the message twice. And a
//!   head-first CAS *without* the messages in it leaves a permanent hole when the claimer dies
//!   between the CAS and the row write.
//! - *A retried send never duplicates:* the LWT applies only if the head is still the `(n,
//!   pending_n)` the dedupe check looked at, and every message `<= n` is either in `pending_n`
//!   or already in `message_dedupe` (by the invariant) before that check ran.
//! - *Nothing acked is lost:* an append acks only after the claim (Paxos, QUORUM commit) and
//!   its message rows (QUORUM) completed. An append whose LWT times out is `Unavailable` with an
//!   unknown outcome; the client's retry with the same `client_msg_id` finds it or stores it.
//!
//! Every claim is one Paxos round plus the QUORUM writes of its rows, plus a QUORUM read per
//! message with a `client_msg_id`. Sends to *different* chats run in parallel; sends to *one*
//! chat are serialized by the LWT, but one process claims all its waiting sends at once, so a
//! busy chat costs one Paxos round per batch, not per message. Processes (server nodes) sending
//! to the same chat contend in Paxos; the loser re-reads the head from the failed LWT and tries
//! again with a little backoff. `docs/benchmarks-cassandra.md` has the numbers, and why a
//! per-chat owner node that assigns `seq` in memory was not built.
//!
//! # Revisions: changes are claims too
//! Every append and every change takes the chat's next revision from the same head row, in
//! the same LWT that orders it, so revisions are dense and ordered exactly like seqs, and the
//! invariant above covers them: the head moves past a claim only after that claim is written
//! out at QUORUM.
//! - `change(seq, c)`: under the chat's in-process lock (shared with appends), knowing a head
//!   `(n, r, claim_r)`: write `claim_r` out if this process does not know it is (so the message
//!   row now holds every change up to `r`), read message `seq` (with `WRITETIME(msg_text)`),
//!   compute `apply_change`; nothing to change is answered from that read without a revision;
//!   else claim `UPDATE chat_heads SET last_rev = r+1, claim = <seq, new state> IF last_seq = n
//!   AND last_rev = r AND claim = claim_r`, write the new state and the feed row `r+1 -> seq`,
//!   and answer. A lost LWT returns the current head: compute again from it. If the claim
//!   applied, no claim came between `r` and `r+1`, so the base was the current state: no
//!   change is ever lost or applied to a stale state, however many processes change at once.
//! - Write timestamps: every row a claim writes carries `USING TIMESTAMP wts`, a value in the
//!   claim itself, `max(clock, previous claim's wts + 1, the base's write time + 1)`. So all
//!   writers of one claim write the same cells with the same timestamp (idempotent), and a late
//!   or repeated write of an older change can never overwrite a newer one (the newer claim has
//!   the larger timestamp, whichever write arrives last).
//! - `changes(after)`: reads the head (QUORUM), then the feed rows `after < rev <= last_rev`
//!   bucket by bucket and the messages they name; a row whose message has a newer `rev` is
//!   skipped (it comes later, at that rev), so each message appears once, at its latest
//!   change. A missing feed row, or a message older than its row, can only be the head's own
//!   claim not written out yet: the reader writes it (idempotent) and reads again. So a feed
//!   reader never sees a revision before every smaller one is readable, and a change acked
//!   before the read began is in it.
//! - Data from schema version 1: null `rev` reads as `seq`, a head without `last_rev` as
//!   `last_rev = last_seq` with its claim in `pending`. Its first claim of version 2 is
//!   `UPDATE ... SET ..., implicit_revs = n, pending = null IF last_seq = n AND pending =
//!   pending_n`: revisions `1..=implicit_revs` have no feed rows (they are the old messages'
//!   seqs, and the feed reads them from `messages`, keeping those no change has moved); and a
//!   version-1 process can no longer claim (its condition on `pending` never holds again), so
//!   old and new processes cannot interleave claims. Old messages' cells carry the
//!   coordinator's clock, which the base's write time in `wts` stays above.
//!
//! An append costs what it did plus one more write, in parallel with the others: its feed
//! rows (one batch per claim). A change is one Paxos round plus two QUORUM writes, after one
//! QUORUM read of the message.
//!
//! # Reads
//! - Reads use the configured consistency (default QUORUM). `last_seq` reads the head at QUORUM
//!   (an LWT's result is visible to QUORUM reads once it completed) and, if message `last_seq`
//!   is not yet in `messages` (an append in flight, or a claimer that died), writes the head's
//!   claim before answering, so a fetch after `last_seq` returned `n` sees `1..=n`.
//! - `Latest` reads the head to find the newest bucket; `Before`/`After` start from the bucket
//!   of their bound. Pages walk buckets backward (`Latest`, `Before`) or forward (`After`); by
//!   density a bucket that ends early is the end of the chat.
//! - A page must be dense. A QUORUM read of a partition that races two appends can, with RF 3,
//!   merge one replica that has `n+2` with one that does not yet have `n+1`; such a page is read
//!   again (the missing write is already complete), and if it stays broken the fetch is
//!   `Unavailable` rather than a gap.
//!
//! # Durability
//! Acked means: committed by Paxos and written at QUORUM, i.e. in the commit log of a majority
//! of replicas. The test scripts run Cassandra with `commitlog_sync: periodic` (10 s): a write is
//! in the commit log (the OS page cache) before it is acknowledged and fsynced within 10 s. So an
//! acked message survives a kill of any Cassandra process; with RF 1 it can be lost if the
//! machine loses power within 10 s of the ack; with RF 3 only if a majority of the replicas
//! lose power in that window. `commitlog_sync: batch` makes every ack wait for an fsync, at a
//! cost in throughput. [`MessageStore::flush`] has nothing to wait for: there is no write-behind.
//!
//! (The scripts' `-Dcassandra.unsafesystem=true` skips fsyncs of Cassandra's own system tables
//! only, to make a test run's many schema changes cheap; message data is unaffected.)
//!
//! Every data statement is prepared once at connect (only the migrations' DDL is sent as plain
//! text, once). A semaphore bounds the requests in flight (`max_in_flight`).

pub mod config;
mod error;
mod fetch;
mod schema;
#[cfg(feature = "testing")]
pub mod testing;

mod activity;
mod append;
mod change;
mod head;
mod search;

pub use config::{CassandraConfig, Replication, DEFAULT_BUCKET_SIZE, MAX_CLAIM};

use async_trait::async_trait;
use chat_core::{
    Appended, ChatActivity, ChatId, Error, FetchQuery, Message, MessageChange, MessageStore,
    NewMessage, Result, Rev, SearchCursor, SearchQuery, Seq, UserId,
};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use tokio::sync::Semaphore;

/// Opens the message store a `cassandra://` URL names (see [`config`]): connects, creates the
/// keyspace and tables if needed, prepares every statement.
pub async fn open_from_url(url: &str) -> Result<Arc<CassandraMessageStore>> {
    let config = CassandraConfig::from_url(url)?;
    Ok(Arc::new(CassandraMessageStore::connect(config).await?))
}

/// Messages in Cassandra; see the module doc for the data model and the `seq` mechanism.
pub struct CassandraMessageStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CassandraMessageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CassandraMessageStore")
            .field("keyspace", &self.inner.keyspace)
            .field("bucket_size", &self.inner.bucket_size)
            .finish_non_exhaustive()
    }
}

/// What every operation shares; behind an `Arc` so `last_seqs` can fan out into tasks.
struct Inner {
    session: Session,
    stmts: Statements,
    keyspace: String,
    /// Messages per partition, as stored in the keyspace.
    bucket_size: i64,
    /// Bounds the requests this store has in flight; each request holds a permit.
    in_flight: Semaphore,
    /// Most appends of one chat one claim carries.
    max_claim: usize,
    /// Per chat: the appends waiting for a claim, and the lock holding the last head state this
    /// process observed (see `append`). A std mutex: held only to look up or insert an entry,
    /// never across an await.
    heads: StdMutex<HashMap<ChatId, Arc<append::ChatSlot>>>,
}

/// Every statement of the data path, prepared at connect.
struct Statements {
    /// `INSERT INTO chat_heads ... IF NOT EXISTS`: claims the first seqs of an empty chat.
    head_first: PreparedStatement,
    /// `UPDATE chat_heads ... IF last_seq = ? AND last_rev = ? AND claim = ?`: the next claim.
    head_next: PreparedStatement,
    /// `UPDATE chat_heads ... IF last_seq = ? AND pending = ?`: the first claim of this schema
    /// version on a head that version 1 wrote (sets `pending` to null).
    head_upgrade: PreparedStatement,
    /// The head row at the configured consistency.
    head_read: PreparedStatement,
    /// Upserts one appended message row with its write timestamp (idempotent).
    message_write: PreparedStatement,
    /// Writes a changed message's new state with its write timestamp (idempotent).
    message_change: PreparedStatement,
    /// One message with `WRITETIME(msg_text)`: the base of a change.
    message_read_for_change: PreparedStatement,
    /// Messages of one bucket by a list of seqs.
    messages_in: PreparedStatement,
    /// Upserts one change feed row `rev -> seq` (idempotent).
    feed_write: PreparedStatement,
    /// Feed rows of one bucket with `? < rev <= ?`, ascending, limited.
    feed_page: PreparedStatement,
    /// Upserts one dedupe row (idempotent).
    dedupe_write: PreparedStatement,
    /// The seq stored for a dedupe key.
    dedupe_read: PreparedStatement,
    /// One message by seq.
    message_read: PreparedStatement,
    /// Messages of one bucket with `seq >= ?`, ascending, limited.
    page_asc: PreparedStatement,
    /// Messages of one bucket with `seq <= ?`, descending, limited.
    page_desc: PreparedStatement,
    /// Upserts one tombstone row `(chat_id, seq)` with the delete's write timestamp.
    tombstone_write: PreparedStatement,
    /// How many tombstones a chat has with `? < seq <= ?`.
    tombstone_count: PreparedStatement,
    /// One tombstone row by seq.
    tombstone_read: PreparedStatement,
    /// `SELECT release_version FROM system.local`.
    health: PreparedStatement,
    /// Search queries of one chat bucket with 1, 2, ... `search::MAX_CONTAINS` terms.
    search: Vec<PreparedStatement>,
}

/// The columns every message read selects, in the order [`rows_to_messages`] decodes them.
const MESSAGE_COLUMNS: &str = "seq, sender_id, msg_text, sent_at, timestamp, client_msg_id, \
    reply_to_seq, edited_at, deleted, reactions, rev";

impl Statements {
    async fn prepare(session: &Session, config: &CassandraConfig) -> Result<Self> {
        let ks = &config.keyspace;
        let prepare = |name: &'static str, cql: String, idempotent: bool| async move {
            let mut p = session
                .prepare(cql)
                .await
                .map_err(|e| error::prepare(name, e))?;
            p.set_consistency(config.consistency);
            p.set_serial_consistency(Some(config.serial_consistency));
            p.set_is_idempotent(idempotent);
            Ok::<_, Error>(p)
        };
        Ok(Statements {
            head_first: prepare(
                "head_first",
                format!(
                    "INSERT INTO {ks}.chat_heads (chat_id, last_seq, last_rev, claim, \
                     implicit_revs) VALUES (?, ?, ?, ?, 0) IF NOT EXISTS"
                ),
                false,
            )
            .await?,
            head_next: prepare(
                "head_next",
                format!(
                    "UPDATE {ks}.chat_heads SET last_seq = ?, last_rev = ?, claim = ? \
                     WHERE chat_id = ? IF last_seq = ? AND last_rev = ? AND claim = ?"
                ),
                false,
            )
            .await?,
            head_upgrade: prepare(
                "head_upgrade",
                format!(
                    "UPDATE {ks}.chat_heads SET last_seq = ?, last_rev = ?, claim = ?, \
                     implicit_revs = ?, pending = null WHERE chat_id = ? \
                     IF last_seq = ? AND pending = ?"
                ),
                false,
            )
            .await?,
            head_read: prepare(
                "head_read",
                format!(
                    "SELECT last_seq, last_rev, claim, implicit_revs, pending \
                     FROM {ks}.chat_heads WHERE chat_id = ?"
                ),
                true,
            )
            .await?,
            message_write: prepare(
                "message_write",
                format!(
                    "INSERT INTO {ks}.messages (chat_id, bucket, seq, sender_id, msg_text, \
                     sent_at, timestamp, client_msg_id, reply_to_seq, rev, terms) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
                ),
                true,
            )
            .await?,
            message_change: prepare(
                "message_change",
                format!(
                    "UPDATE {ks}.messages USING TIMESTAMP ? SET msg_text = ?, edited_at = ?, \
                     deleted = ?, reactions = ?, rev = ?, terms = ? \
                     WHERE chat_id = ? AND bucket = ? AND seq = ?"
                ),
                true,
            )
            .await?,
            message_read_for_change: prepare(
                "message_read_for_change",
                format!(
                    "SELECT {MESSAGE_COLUMNS}, WRITETIME(msg_text) FROM {ks}.messages \
                     WHERE chat_id = ? AND bucket = ? AND seq = ?"
                ),
                true,
            )
            .await?,
            messages_in: prepare(
                "messages_in",
                format!(
                    "SELECT {MESSAGE_COLUMNS} FROM {ks}.messages \
                     WHERE chat_id = ? AND bucket = ? AND seq IN ?"
                ),
                true,
            )
            .await?,
            feed_write: prepare(
                "feed_write",
                format!(
                    "INSERT INTO {ks}.message_revs (chat_id, bucket, rev, seq) \
                     VALUES (?, ?, ?, ?) USING TIMESTAMP ?"
                ),
                true,
            )
            .await?,
            feed_page: prepare(
                "feed_page",
                format!(
                    "SELECT rev, seq FROM {ks}.message_revs WHERE chat_id = ? AND bucket = ? \
                     AND rev > ? AND rev <= ? ORDER BY rev ASC LIMIT ?"
                ),
                true,
            )
            .await?,
            dedupe_write: prepare(
                "dedupe_write",
                format!(
                    "INSERT INTO {ks}.message_dedupe (chat_id, sender_id, client_msg_id, seq) \
                     VALUES (?, ?, ?, ?)"
                ),
                true,
            )
            .await?,
            dedupe_read: prepare(
                "dedupe_read",
                format!(
                    "SELECT seq FROM {ks}.message_dedupe \
                     WHERE chat_id = ? AND sender_id = ? AND client_msg_id = ?"
                ),
                true,
            )
            .await?,
            message_read: prepare(
                "message_read",
                format!(
                    "SELECT {MESSAGE_COLUMNS} FROM {ks}.messages \
                     WHERE chat_id = ? AND bucket = ? AND seq = ?"
                ),
                true,
            )
            .await?,
            page_asc: prepare(
                "page_asc",
                format!(
                    "SELECT {MESSAGE_COLUMNS} FROM {ks}.messages \
                     WHERE chat_id = ? AND bucket = ? AND seq >= ? ORDER BY seq ASC LIMIT ?"
                ),
                true,
            )
            .await?,
            page_desc: prepare(
                "page_desc",
                format!(
                    "SELECT {MESSAGE_COLUMNS} FROM {ks}.messages \
                     WHERE chat_id = ? AND bucket = ? AND seq <= ? ORDER BY seq DESC LIMIT ?"
                ),
                true,
            )
            .await?,
            tombstone_write: prepare(
                "tombstone_write",
                format!(
                    "INSERT INTO {ks}.message_tombstones (chat_id, seq) VALUES (?, ?) \
                     USING TIMESTAMP ?"
                ),
                true,
            )
            .await?,
            tombstone_count: prepare(
                "tombstone_count",
                format!(
                    "SELECT COUNT(*) FROM {ks}.message_tombstones \
                     WHERE chat_id = ? AND seq > ? AND seq <= ?"
                ),
                true,
            )
            .await?,
            tombstone_read: prepare(
                "tombstone_read",
                format!("SELECT seq FROM {ks}.message_tombstones WHERE chat_id = ? AND seq = ?"),
                true,
            )
            .await?,
            health: prepare(
                "health",
                "SELECT release_version FROM system.local".to_owned(),
                true,
            )
            .await?,
            search: {
                let mut stmts = Vec::with_capacity(search::MAX_CONTAINS);
                for n in 1..=search::MAX_CONTAINS {
                    stmts.push(
                        prepare("search", search::search_cql(ks, MESSAGE_COLUMNS, n), true).await?,
                    );
                }
                stmts
            },
        })
    }
}

impl CassandraMessageStore {
    /// Connects to the cluster, creates the keyspace and tables if needed (waiting for schema
    /// agreement), and prepares every statement. A cluster that cannot be reached is
    /// [`Error::Unavailable`].
    pub async fn connect(config: CassandraConfig) -> Result<CassandraMessageStore> {
        config::validate_keyspace(&config.keyspace).map_err(Error::InvalidArgument)?;
        let profile = ExecutionProfile::builder()
            .consistency(config.consistency)
            .serial_consistency(Some(config.serial_consistency))
            .request_timeout(Some(config.request_timeout))
            .build();
        let session = SessionBuilder::new()
            .known_nodes(&config.nodes)
            .connection_timeout(config.connect_timeout)
            .default_execution_profile_handle(profile.into_handle())
            // Only this keyspace's metadata is needed (for schema agreement and routing).
            .keyspaces_to_fetch([config.keyspace.clone()])
            .build()
            .await
            .map_err(error::session)?;
        let bucket_size = schema::migrate(&session, &config).await?;
        let stmts = Statements::prepare(&session, &config).await?;
        tracing::info!(
            keyspace = %config.keyspace,
            bucket_size,
            schema_version = schema::latest_version(),
            "cassandra message store connected"
        );
        Ok(CassandraMessageStore {
            inner: Arc::new(Inner {
                session,
                stmts,
                keyspace: config.keyspace,
                bucket_size,
                in_flight: Semaphore::new(config.max_in_flight),
                max_claim: config.max_claim.clamp(1, MAX_CLAIM),
                heads: StdMutex::new(HashMap::new()),
            }),
        })
    }

    /// The keyspace this store works in.
    pub fn keyspace(&self) -> &str {
        &self.inner.keyspace
    }

    /// Messages per partition in this keyspace.
    pub fn bucket_size(&self) -> i64 {
        self.inner.bucket_size
    }
}

impl Inner {
    /// A permit to have one more request in flight.
    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        self.in_flight
            .acquire()
            .await
            .map_err(|e| Error::internal("cassandra: the in-flight semaphore was closed", e))
    }

    /// Runs one prepared statement while holding an in-flight permit.
    async fn exec(
        &self,
        context: &str,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<QueryResult> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|e| Error::internal("cassandra: the in-flight semaphore was closed", e))?;
        self.session
            .execute_unpaged(stmt, values)
            .await
            .map_err(|e| error::execution(context, e))
    }

    /// The partition bucket of a seq.
    fn bucket(&self, seq: i64) -> i64 {
        seq.div_euclid(self.bucket_size)
    }

    /// The head row; [`Head::empty`](head::Head::empty) for a chat without messages.
    async fn read_head(&self, chat_id: ChatId) -> Result<head::Head> {
        let result = self
            .exec(
                "reading a chat head",
                &self.stmts.head_read,
                (chat_id.get(),),
            )
            .await?;
        head::read_result(chat_id, result)
    }

    /// The message at `seq`, if it is in `messages`.
    async fn read_message(&self, chat_id: ChatId, seq: i64) -> Result<Option<Message>> {
        let rows = self
            .exec(
                "reading a message",
                &self.stmts.message_read,
                (chat_id.get(), self.bucket(seq), seq),
            )
            .await?;
        Ok(rows_to_messages(chat_id, rows)?.into_iter().next())
    }

    /// `last_seq` of one chat; writes the head's claim first if its last message is not in
    /// `messages` yet (see the module doc).
    async fn last_seq(&self, chat_id: ChatId) -> Result<Seq> {
        let head = self.read_head(chat_id).await?;
        if head.last_seq == 0 {
            return Ok(Seq::ZERO);
        }
        // The last claim's messages are written bucket by bucket in ascending order, each
        // bucket atomically: if its last message is there, all of them are.
        if self.read_message(chat_id, head.last_seq).await?.is_none() {
            self.materialize(chat_id, &head).await?;
        }
        Ok(Seq(head.last_seq))
    }
}

/// One message row as selected by [`MESSAGE_COLUMNS`].
type RawMessage = (
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<bool>,
    Option<Vec<(Option<String>, Option<Vec<i64>>)>>,
    Option<i64>,
);

/// Decodes message rows (selected as [`MESSAGE_COLUMNS`]); a missing column is `Internal` with
/// the chat and seq, never a panic.
fn rows_to_messages(chat_id: ChatId, result: QueryResult) -> Result<Vec<Message>> {
    let rows = result
        .into_rows_result()
        .map_err(|e| error::rows("messages", e))?;
    let iter = rows
        .rows::<RawMessage>()
        .map_err(|e| error::rows("messages", e))?;
    let mut out = Vec::with_capacity(rows.rows_num());
    for row in iter {
        out.push(raw_to_message(
            chat_id,
            row.map_err(|e| error::rows("messages", e))?,
        )?);
    }
    Ok(out)
}

/// One decoded message row. A null `rev` is a message stored before revisions existed: its
/// `rev` is its `seq`; a null `deleted` is `false`, null `reactions` none.
fn raw_to_message(chat_id: ChatId, raw: RawMessage) -> Result<Message> {
    let (
        seq,
        sender_id,
        msg_text,
        sent_at,
        timestamp,
        client_msg_id,
        reply_to_seq,
        edited_at,
        deleted,
        reactions,
        rev,
    ) = raw;
    let seq = seq.ok_or_else(|| error::bad_row(format!("chat {chat_id}: message without seq")))?;
    let missing = |col: &str| error::bad_row(format!("chat {chat_id} seq {seq}: {col} is null"));
    let reactions = reactions
        .unwrap_or_default()
        .into_iter()
        .map(|(emoji, users)| {
            head::reaction(
                emoji.ok_or_else(|| missing("a reaction's emoji"))?,
                users.unwrap_or_default().into_iter().map(UserId).collect(),
            )
            .ok_or_else(|| missing("a reaction's users"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut m = Message::new(
        chat_id,
        Seq(seq),
        UserId(sender_id.ok_or_else(|| missing("sender_id"))?),
        msg_text.ok_or_else(|| missing("msg_text"))?,
        sent_at.ok_or_else(|| missing("sent_at"))?,
    );
    m.timestamp = timestamp;
    m.client_msg_id = client_msg_id;
    m.reply_to_seq = reply_to_seq.map(Seq);
    m.edited_at = edited_at;
    m.deleted = deleted.unwrap_or(false);
    m.reactions = reactions;
    m.rev = Rev(rev.unwrap_or(seq));
    Ok(m)
}

impl CassandraMessageStore {
    /// `f` of every key in `keys` (a chat, or a chat and a marker), in that order: one task per
    /// distinct key, all at once (the in-flight semaphore bounds the requests).
    async fn per_chat<K, T, F, Fut>(&self, keys: &[K], f: F) -> Result<Vec<T>>
    where
        K: Copy + Ord + std::hash::Hash + std::fmt::Debug + Send + 'static,
        T: Clone + Send + 'static,
        F: Fn(Arc<Inner>, K) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let mut tasks = tokio::task::JoinSet::new();
        let mut distinct: Vec<K> = keys.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        for key in distinct {
            let work = f(Arc::clone(&self.inner), key);
            tasks.spawn(async move { (key, work.await) });
        }
        let mut found = HashMap::with_capacity(tasks.len());
        while let Some(joined) = tasks.join_next().await {
            let (key, value) =
                joined.map_err(|e| Error::internal("cassandra: a per-chat read failed", e))?;
            found.insert(key, value?);
        }
        keys.iter()
            .map(|k| {
                found
                    .get(k)
                    .cloned()
                    .ok_or_else(|| error::bad_row(format!("a per-chat read lost {k:?}")))
            })
            .collect()
    }
}

#[async_trait]
impl MessageStore for CassandraMessageStore {
    async fn append(&self, message: NewMessage) -> Result<Appended> {
        self.inner.append(message).await
    }

    async fn fetch(&self, chat_id: ChatId, query: FetchQuery) -> Result<Vec<Message>> {
        self.inner.fetch(chat_id, query).await
    }

    async fn last_seq(&self, chat_id: ChatId) -> Result<Seq> {
        self.inner.last_seq(chat_id).await
    }

    async fn change(&self, chat_id: ChatId, seq: Seq, change: MessageChange) -> Result<Message> {
        self.inner.change(chat_id, seq, change).await
    }

    async fn changes(&self, chat_id: ChatId, after: Rev, limit: u32) -> Result<Vec<Message>> {
        self.inner.changes(chat_id, after, limit).await
    }

    async fn last_seqs(&self, chat_ids: &[ChatId]) -> Result<Vec<Seq>> {
        self.per_chat(chat_ids, |inner, chat_id| async move {
            inner.last_seq(chat_id).await
        })
        .await
    }

    async fn last_revs(&self, chat_ids: &[ChatId]) -> Result<Vec<Rev>> {
        // The head's `last_rev`, whether or not its last claim is written out yet: a reader
        // of the feed up to it writes the claim itself.
        self.per_chat(chat_ids, |inner, chat_id| async move {
            Ok(Rev(inner.read_head(chat_id).await?.last_rev))
        })
        .await
    }

    async fn activity(&self, chats: &[(ChatId, Seq)]) -> Result<Vec<ChatActivity>> {
        // Per chat: the head, then the newest row and the tombstone count in parallel (see
        // `activity.rs`); all chats at once, bounded by the in-flight semaphore.
        self.per_chat(chats, |inner, (chat_id, marker)| async move {
            inner.activity(chat_id, marker).await
        })
        .await
    }

    async fn search(
        &self,
        chat_ids: &[ChatId],
        query: &SearchQuery,
        after: Option<SearchCursor>,
        limit: u32,
    ) -> Result<Vec<Message>> {
        search::search(&self.inner, chat_ids, query, after, limit).await
    }

    async fn health(&self) -> Result<()> {
        self.inner
            .exec("health check", &self.inner.stmts.health, ())
            .await
            .map(|_| ())
    }
}
