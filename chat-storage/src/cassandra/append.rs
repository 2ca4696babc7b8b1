//! `append`: a claim on the chat head that carries its messages (see the module doc of
//! [`cassandra`](super) for the reasoning), the in-process per-chat queue and head cache
//! (group commit: one lightweight transaction claims every message waiting for that chat), and
//! writing a claim out into `messages`, `message_dedupe` and `message_revs` ("materializing"
//! it; a change claim of `change` is materialized here too).

use super::head::{claim_result, Changed, Claim, Claimed, Head, Pending};
use super::{error, Inner};
use chat_core::{Appended, ChatId, Error, Message, NewMessage, Result};
use scylla::statement::batch::{Batch, BatchType};
use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;
use tokio::sync::{oneshot, Mutex};

/// How many times one batch tries to claim seqs before it reports `Unavailable`. Each failed
/// try means another process won seqs of the chat, so the chat made progress meanwhile.
pub(super) const MAX_CLAIM_ATTEMPTS: u32 = 200;

/// Chats whose head this process remembers before it forgets idle ones.
const MAX_CACHED_HEADS: usize = 50_000;

/// An append waiting for the chat's next claim.
struct Waiting {
    msg: NewMessage,
    reply: oneshot::Sender<Result<Appended>>,
}

/// Per chat: the appends waiting to be claimed, and the lock (holding the last known head)
/// that whoever claims for the chat holds.
#[derive(Default)]
pub(crate) struct ChatSlot {
    /// FIFO of appends not yet taken by a claimer. A std mutex: held only to push or drain.
    queue: StdMutex<Vec<Waiting>>,
    /// Held by the one task claiming (appends or a change) for this chat; `None` when the head
    /// is unknown (cold, or after an error).
    pub(super) head: Arc<Mutex<Option<Head>>>,
}

impl Inner {
    /// The per-chat slot.
    pub(super) fn chat_slot(&self, chat_id: ChatId) -> Arc<ChatSlot> {
        // A poisoned map only means a panic elsewhere while inserting; the map itself is fine.
        let mut slots = self
            .heads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slots.len() >= MAX_CACHED_HEADS && !slots.contains_key(&chat_id) {
            // Forget chats nobody is appending to right now (only the map holds their Arc).
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        Arc::clone(slots.entry(chat_id).or_default())
    }

    /// Appends one message; see the module doc of [`cassandra`](super).
    ///
    /// The message joins its chat's queue. Whoever gets the chat's lock claims everything
    /// queued (up to `max_claim`) with one lightweight transaction, on a task of its own so
    /// that a caller that goes away does not abandon the others in its batch.
    pub(crate) async fn append(self: &Arc<Self>, msg: NewMessage) -> Result<Appended> {
        let chat_id = msg.chat_id;
        let slot = self.chat_slot(chat_id);
        let (reply, mut answer) = oneshot::channel();
        slot.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Waiting { msg, reply });
        loop {
            let head = Arc::clone(&slot.head).lock_owned().await;
            // A claimer before us may have taken (and answered) this append already.
            match answer.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Closed) => return Err(interrupted()),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let batch: Vec<Waiting> = {
                let mut queue = slot
                    .queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let take = queue.len().min(self.max_claim);
                queue.drain(..take).collect()
            };
            if batch.is_empty() {
                // Not answered and not queued: only possible if a claimer is still answering.
                drop(head);
                return answer.await.unwrap_or_else(|_| Err(interrupted()));
            }
            let inner = Arc::clone(self);
            let claimer = tokio::spawn(async move {
                let mut head = head;
                inner.claim_batch(chat_id, &mut head, batch).await;
            });
            // Our append is in this batch or still queued (FIFO, so in a later one).
            if claimer.await.is_err() {
                return Err(Error::Internal {
                    message: "cassandra: the claiming task panicked".to_owned(),
                    source: None,
                });
            }
        }
    }

    /// Claims seqs for a batch and answers every append in it.
    async fn claim_batch(
        self: &Arc<Self>,
        chat_id: ChatId,
        head: &mut Option<Head>,
        batch: Vec<Waiting>,
    ) {
        let (msgs, replies): (Vec<NewMessage>, Vec<_>) =
            batch.into_iter().map(|w| (w.msg, w.reply)).unzip();
        // Taken out: if anything fails, the head is unknown and the next claim starts cold.
        let mut current = head.take();
        match self.claim(chat_id, &mut current, &msgs).await {
            Ok(results) => {
                *head = current;
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(share(&e)));
                }
            }
        }
    }

    /// The claim loop (see the module doc): returns one result per message, in order.
    async fn claim(
        self: &Arc<Self>,
        chat_id: ChatId,
        head: &mut Option<Head>,
        msgs: &[NewMessage],
    ) -> Result<Vec<Appended>> {
        // Within the batch, a repeated (sender, client_msg_id) follows its first occurrence.
        let mut follows: Vec<Option<usize>> = vec![None; msgs.len()];
        let mut first_of: HashMap<(i64, &str), usize> = HashMap::new();
        for (i, m) in msgs.iter().enumerate() {
            if let Some(cmid) = &m.client_msg_id {
                match first_of.get(&(m.sender_id.get(), cmid.as_str())) {
                    Some(&first) => follows[i] = Some(first),
                    None => {
                        first_of.insert((m.sender_id.get(), cmid.as_str()), i);
                    }
                }
            }
        }
        let mut decided: Vec<Option<Appended>> = vec![None; msgs.len()];
        let mut attempt = 0;
        loop {
            let open: Vec<usize> = (0..msgs.len())
                .filter(|&i| follows[i].is_none() && decided[i].is_none())
                .collect();
            if open.is_empty() {
                break;
            }
            if attempt >= MAX_CLAIM_ATTEMPTS {
                return Err(Error::Unavailable {
                    message: format!(
                        "cassandra: chat {chat_id} is under too much contention to append; retry"
                    ),
                    source: None,
                });
            }
            backoff(attempt).await;
            attempt += 1;

            let Some(mut cur) = head.take() else {
                // Cold: an empty chat has no messages and so nothing to dedupe against.
                let new: Vec<Pending> = open.iter().map(|&i| Pending::of(&msgs[i])).collect();
                let k = as_i64(new.len());
                let claim = Claimed::Appended {
                    wts: next_wts(0),
                    msgs: new,
                };
                match self.claim_first(chat_id, k, &claim).await? {
                    Claim::Won => {
                        let mut won = Head::claimed(k, k, claim, Some(0));
                        self.materialize(chat_id, &won).await?;
                        won.materialized = true;
                        for (k, &i) in open.iter().enumerate() {
                            let at = 1 + as_i64(k);
                            decided[i] = Some(created(&won.claim.messages()[k], chat_id, at, at));
                        }
                        *head = Some(won);
                    }
                    Claim::Lost(now) => *head = now,
                }
                continue;
            };

            // Dedupe against the last claim's messages (maybe only in the head so far) ...
            let first_seq = cur.first_pending_seq();
            let first_rev = if cur.is_legacy() {
                first_seq
            } else {
                cur.first_pending_rev()
            };
            for &i in &open {
                let pending = cur.claim.messages();
                if let Some(pos) = pending.iter().position(|p| p.same_key(&msgs[i])) {
                    decided[i] = Some(Appended {
                        message: pending[pos].message(
                            chat_id,
                            first_seq + as_i64(pos),
                            first_rev + as_i64(pos),
                        ),
                        created: false,
                    });
                }
            }
            // ... and against every older one, which is in message_dedupe by the invariant.
            // (All lookups at once: a batch may hold many messages with a client_msg_id.)
            let mut lookups = tokio::task::JoinSet::new();
            for i in open {
                if decided[i].is_none() && msgs[i].client_msg_id.is_some() {
                    let inner = Arc::clone(self);
                    let m = msgs[i].clone();
                    lookups.spawn(async move { (i, inner.find_duplicate(&m).await) });
                }
            }
            while let Some(joined) = lookups.join_next().await {
                let (i, found) = joined
                    .map_err(|e| Error::internal("cassandra: a dedupe lookup task failed", e))?;
                if let Some(stored) = found? {
                    decided[i] = Some(Appended {
                        message: stored,
                        created: false,
                    });
                }
            }
            // The invariant: the last claim's messages are in `messages` before the head moves
            // past them (and before a duplicate found among them is answered).
            if !cur.materialized {
                self.materialize(chat_id, &cur).await?;
                cur.materialized = true;
            }
            let new_idx: Vec<usize> = (0..msgs.len())
                .filter(|&i| follows[i].is_none() && decided[i].is_none())
                .collect();
            if new_idx.is_empty() {
                *head = Some(cur);
                break;
            }
            let new: Vec<Pending> = new_idx.iter().map(|&i| Pending::of(&msgs[i])).collect();
            let (n, r, k) = (cur.last_seq, cur.last_rev, as_i64(new.len()));
            let claim = Claimed::Appended {
                wts: next_wts(cur.claim.wts()),
                msgs: new,
            };
            match self
                .claim_after(chat_id, &cur, n + k, r + k, &claim)
                .await?
            {
                Claim::Won => {
                    let mut won = Head::claimed(n + k, r + k, claim, cur.next_implicit_revs());
                    self.materialize(chat_id, &won).await?;
                    won.materialized = true;
                    for (k, &i) in new_idx.iter().enumerate() {
                        let p = &won.claim.messages()[k];
                        decided[i] =
                            Some(created(p, chat_id, n + 1 + as_i64(k), r + 1 + as_i64(k)));
                    }
                    *head = Some(won);
                }
                Claim::Lost(now) => *head = now,
            }
        }
        let mut out = Vec::with_capacity(msgs.len());
        for i in 0..msgs.len() {
            let result = match follows[i] {
                Some(first) => decided[first].clone().map(|a| Appended {
                    message: a.message,
                    created: false,
                }),
                None => decided[i].clone(),
            };
            out.push(result.ok_or_else(|| error::bad_row("an append was left undecided"))?);
        }
        Ok(out)
    }

    /// The stored message with the same `(chat, sender, client_msg_id)`, if any.
    async fn find_duplicate(&self, msg: &NewMessage) -> Result<Option<Message>> {
        let Some(client_msg_id) = &msg.client_msg_id else {
            return Ok(None);
        };
        let rows = self
            .exec(
                "reading a dedupe key",
                &self.stmts.dedupe_read,
                (msg.chat_id.get(), msg.sender_id.get(), client_msg_id),
            )
            .await?
            .into_rows_result()
            .map_err(|e| error::rows("message_dedupe", e))?;
        let Some((seq,)) = rows
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(|e| error::rows("message_dedupe", e))?
        else {
            return Ok(None);
        };
        let seq = seq.ok_or_else(|| error::bad_row("message_dedupe: null seq"))?;
        // Dedupe rows are written with their messages, and both complete before the head
        // moves on; so a dedupe row found here points at a stored message.
        let stored = self.read_message(msg.chat_id, seq).await?.ok_or_else(|| {
            error::bad_row(format!(
                "chat {}: dedupe key points at seq {seq}, which is not stored",
                msg.chat_id
            ))
        })?;
        Ok(Some(stored))
    }

    /// Writes the head's last claim out at the configured consistency: an append claim's
    /// message rows, dedupe rows and (version 2) feed rows; a change claim's new state and its
    /// feed row. Idempotent: every writer of one claim writes the same values with the same
    /// write timestamp, so any number of processes may do it, in any order, late or not.
    pub(crate) async fn materialize(&self, chat_id: ChatId, head: &Head) -> Result<()> {
        match &head.claim {
            Claimed::Nothing => Ok(()),
            Claimed::Legacy(msgs) => {
                self.write_appended(chat_id, head.first_pending_seq(), None, msgs)
                    .await
            }
            Claimed::Appended { wts, msgs } => {
                self.write_appended(
                    chat_id,
                    head.first_pending_seq(),
                    Some((head.first_pending_rev(), *wts)),
                    msgs,
                )
                .await
            }
            Claimed::Changed { wts, change } => {
                self.write_change(chat_id, head.last_rev, *wts, change)
                    .await
            }
        }
    }

    /// Messages `first_seq ..` of an append claim, their dedupe rows and their feed rows.
    /// `revs` is `(first rev, write timestamp)`; `None` for a claim of schema version 1, whose
    /// messages have `rev = seq`, no feed rows (the feed reads them from `messages`) and the
    /// write timestamp `sent_at` (in µs: the same for every writer).
    ///
    /// The message rows of one bucket go in one single-partition batch, which every replica
    /// applies atomically, and buckets are written in ascending order; so a reader never sees a
    /// later message of the claim without the earlier ones, even if this writer dies half-way.
    async fn write_appended(
        &self,
        chat_id: ChatId,
        first_seq: i64,
        revs: Option<(i64, i64)>,
        msgs: &[Pending],
    ) -> Result<()> {
        let rows = async {
            let mut start = 0;
            while start < msgs.len() {
                let bucket = self.bucket(first_seq + as_i64(start));
                let mut end = start + 1;
                while end < msgs.len() && self.bucket(first_seq + as_i64(end)) == bucket {
                    end += 1;
                }
                self.write_bucket(chat_id, bucket, first_seq, revs, msgs, start..end)
                    .await?;
                start = end;
            }
            Ok::<_, Error>(())
        };
        let dedupe = async {
            type DedupeRow<'a> = (i64, i64, &'a str, i64);
            let values: Vec<DedupeRow<'_>> = msgs
                .iter()
                .enumerate()
                .filter_map(|(k, p)| {
                    p.client_msg_id
                        .as_deref()
                        .map(|c| (chat_id.get(), p.sender_id, c, first_seq + as_i64(k)))
                })
                .collect();
            self.write_rows("writing dedupe keys", &self.stmts.dedupe_write, values)
                .await
        };
        let feed = async {
            let Some((first_rev, wts)) = revs else {
                return Ok(());
            };
            let rows: Vec<FeedRow> = (0..msgs.len())
                .map(|k| {
                    let rev = first_rev + as_i64(k);
                    (
                        chat_id.get(),
                        self.bucket(rev),
                        rev,
                        first_seq + as_i64(k),
                        wts,
                    )
                })
                .collect();
            self.write_feed(rows).await
        };
        let (r, d, f) = tokio::join!(rows, dedupe, feed);
        r?;
        d?;
        f
    }

    /// A change claim: the message's new state (with its revision), its feed row and, for a
    /// delete, its tombstone row, all with the claim's write timestamp, so a late copy of an
    /// older change never overwrites it.
    async fn write_change(&self, chat_id: ChatId, rev: i64, wts: i64, c: &Changed) -> Result<()> {
        let state = self.exec(
            "writing a changed message",
            &self.stmts.message_change,
            (
                wts,
                c.msg_text.as_str(),
                c.edited_at,
                c.deleted,
                c.reaction_rows(),
                rev,
                // A tombstone has no text and so no terms.
                chat_core::search::terms(if c.deleted { "" } else { &c.msg_text }),
                chat_id.get(),
                self.bucket(c.seq),
                c.seq,
            ),
        );
        let feed = self.write_feed(vec![(chat_id.get(), self.bucket(rev), rev, c.seq, wts)]);
        // A delete also leaves its tombstone row (for the chat list's unread counts). Deleting
        // is final, so the only claim with `deleted` is the delete itself; every writer of it
        // (the claimer, a retry, a reader completing the head) upserts the same row with the
        // same timestamp: exactly one row however often it is written.
        let tombstone = async {
            if !c.deleted {
                return Ok(());
            }
            self.exec(
                "writing a tombstone",
                &self.stmts.tombstone_write,
                (chat_id.get(), c.seq, wts),
            )
            .await
            .map(|_| ())
        };
        let (s, f, t) = tokio::join!(state, feed, tombstone);
        s?;
        f?;
        t
    }

    /// Feed rows (ascending), one batch per bucket of revisions, buckets in ascending order.
    async fn write_feed(&self, rows: Vec<FeedRow>) -> Result<()> {
        let mut rows = rows.into_iter().peekable();
        while let Some(first) = rows.next() {
            let bucket = first.1;
            let mut same = vec![first];
            while let Some(next) = rows.next_if(|r| r.1 == bucket) {
                same.push(next);
            }
            self.write_rows("writing the change feed", &self.stmts.feed_write, same)
                .await?;
        }
        Ok(())
    }

    /// Rows of one statement in one request: the statement alone, or an unlogged batch (one
    /// round trip; the rows need no atomicity across partitions, only to be complete before the
    /// operation is acknowledged, which the batch gives; within one partition it is atomic).
    async fn write_rows<R: scylla::serialize::row::SerializeRow>(
        &self,
        context: &str,
        stmt: &scylla::statement::prepared::PreparedStatement,
        values: Vec<R>,
    ) -> Result<()> {
        match values.as_slice() {
            [] => Ok(()),
            [one] => self.exec(context, stmt, one).await.map(|_| ()),
            _ => {
                let mut batch = Batch::new(BatchType::Unlogged);
                for _ in &values {
                    batch.append_statement(stmt.clone());
                }
                batch.set_is_idempotent(true);
                let _permit = self.permit().await?;
                self.session
                    .batch(&batch, values)
                    .await
                    .map_err(|e| error::execution(context, e))?;
                Ok(())
            }
        }
    }

    /// Message rows `range` of a claim starting at `first_seq`, all in `bucket`, in one
    /// statement or one unlogged single-partition batch.
    async fn write_bucket(
        &self,
        chat_id: ChatId,
        bucket: i64,
        first_seq: i64,
        revs: Option<(i64, i64)>,
        msgs: &[Pending],
        range: std::ops::Range<usize>,
    ) -> Result<()> {
        type MessageRow<'a> = (
            i64,
            i64,
            i64,
            i64,
            &'a str,
            i64,
            Option<i64>,
            Option<&'a str>,
            Option<i64>,
            i64,
            Vec<String>,
            i64,
        );
        let values: Vec<MessageRow<'_>> = range
            .map(|k| {
                let p = &msgs[k];
                let seq = first_seq + as_i64(k);
                let (rev, wts) = match revs {
                    Some((first_rev, wts)) => (first_rev + as_i64(k), wts),
                    None => (seq, p.sent_at.saturating_mul(1000)),
                };
                (
                    chat_id.get(),
                    bucket,
                    seq,
                    p.sender_id,
                    p.msg_text.as_str(),
                    p.sent_at,
                    p.timestamp,
                    p.client_msg_id.as_deref(),
                    p.reply_to_seq,
                    rev,
                    chat_core::search::terms(&p.msg_text),
                    wts,
                )
            })
            .collect();
        self.write_rows("writing messages", &self.stmts.message_write, values)
            .await
    }

    /// `INSERT ... IF NOT EXISTS` of the head with the first `k` messages of the chat.
    async fn claim_first(&self, chat_id: ChatId, k: i64, claim: &Claimed) -> Result<Claim> {
        let result = self
            .exec(
                "claiming the first seqs",
                &self.stmts.head_first,
                (chat_id.get(), k, k, claim.to_cql()),
            )
            .await?;
        claim_result(chat_id, result)
    }

    /// Moves the head from `cur` (as observed) to `last_seq`, `last_rev` and `claim`, if it is
    /// still `cur`: `UPDATE ... IF last_seq = .. AND last_rev = .. AND claim = ..`, or for a
    /// head of schema version 1 `IF last_seq = .. AND pending = ..` (taking it over).
    pub(super) async fn claim_after(
        &self,
        chat_id: ChatId,
        cur: &Head,
        last_seq: i64,
        last_rev: i64,
        claim: &Claimed,
    ) -> Result<Claim> {
        let result = match cur.claim {
            Claimed::Nothing => {
                return Err(error::bad_row(format!(
                    "chat {chat_id}: a claim after an empty head"
                )))
            }
            Claimed::Legacy(_) => {
                self.exec(
                    "claiming the next seqs",
                    &self.stmts.head_upgrade,
                    (
                        last_seq,
                        last_rev,
                        claim.to_cql(),
                        cur.last_seq,
                        chat_id.get(),
                        cur.last_seq,
                        cur.raw_claim.clone(),
                    ),
                )
                .await?
            }
            Claimed::Appended { .. } | Claimed::Changed { .. } => {
                self.exec(
                    "claiming the next seqs",
                    &self.stmts.head_next,
                    (
                        last_seq,
                        last_rev,
                        claim.to_cql(),
                        chat_id.get(),
                        cur.last_seq,
                        cur.last_rev,
                        cur.raw_claim.clone(),
                    ),
                )
                .await?
            }
        };
        claim_result(chat_id, result)
    }
}

/// One feed row with its write timestamp: `(chat_id, bucket, rev, seq, wts)`.
type FeedRow = (i64, i64, i64, i64, i64);

/// A write timestamp (µs) for the next claim: the clock, but always above `above`, the last
/// claim's, so the write timestamps of a chat's claims increase with their revisions even when
/// the clocks of the processes that make them disagree.
pub(super) fn next_wts(above: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    now.max(above.saturating_add(1))
}

/// Waits a little before claim attempt `attempt` (from the third on): another process keeps
/// winning, so Paxos rounds should stop colliding (Cassandra's own contention handling is
/// slower than this).
pub(super) async fn backoff(attempt: u32) {
    if attempt >= 2 {
        let ms = u64::from(attempt.min(20)) + jitter(attempt);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// A newly created message's result.
fn created(p: &Pending, chat_id: ChatId, seq: i64, rev: i64) -> Appended {
    Appended {
        message: p.message(chat_id, seq, rev),
        created: true,
    }
}

/// An index or length as i64 (claims are at most `MAX_CLAIM` long).
pub(super) fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The error a caller gets when the task claiming its append went away before answering.
fn interrupted() -> Error {
    Error::Unavailable {
        message: "cassandra: the append was interrupted; its outcome is unknown, retry it".into(),
        source: None,
    }
}

/// One batch error, handed to every append of the batch (the source goes to logs once).
pub(super) fn share(e: &Error) -> Error {
    match e {
        Error::Unavailable { message, .. } => Error::Unavailable {
            message: message.clone(),
            source: None,
        },
        Error::Internal { message, .. } => Error::Internal {
            message: message.clone(),
            source: None,
        },
        Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
        other => Error::Internal {
            message: other.to_string(),
            source: None,
        },
    }
}

/// A little jitter (0..8 ms) without a random-number dependency: the low bits of the clock,
/// mixed with the attempt number, differ between the processes that collide.
fn jitter(attempt: u32) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from((nanos ^ attempt.wrapping_mul(2_654_435_761)) % 8)
}
