//! `append`: a claim on the chat head that carries its messages (see the module doc of
//! [`cassandra`](super) for the reasoning), the in-process per-chat queue and head cache
//! (group commit: one lightweight transaction claims every message waiting for that chat), and
//! writing claimed messages into `messages` ("materializing" them).

use super::head::{claim_result, tuples, Claim, Head, Pending};
use super::{error, Inner};
use chat_core::{Appended, ChatId, Error, Message, NewMessage, Result};
use scylla::statement::batch::{Batch, BatchType};
use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;
use tokio::sync::{oneshot, Mutex};

/// How many times one batch tries to claim seqs before it reports `Unavailable`. Each failed
/// try means another process won seqs of the chat, so the chat made progress meanwhile.
const MAX_CLAIM_ATTEMPTS: u32 = 200;

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
    /// Held by the one task claiming for this chat; `None` when the head is unknown (cold, or
    /// after an error).
    head: Arc<Mutex<Option<Head>>>,
}

impl Inner {
    /// The per-chat slot.
    fn chat_slot(&self, chat_id: ChatId) -> Arc<ChatSlot> {
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
            if attempt >= 2 {
                // Another process keeps winning: back off a little so Paxos rounds stop
                // colliding (Cassandra's own contention handling is slower than this).
                let ms = u64::from(attempt.min(20)) + jitter(attempt);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            attempt += 1;

            let Some(mut cur) = head.take() else {
                // Cold: an empty chat has no messages and so nothing to dedupe against.
                let new: Vec<Pending> = open.iter().map(|&i| Pending::of(&msgs[i])).collect();
                match self.claim_first(chat_id, &new).await? {
                    Claim::Won => {
                        self.materialize(chat_id, 1, &new).await?;
                        for (k, &i) in open.iter().enumerate() {
                            decided[i] = Some(created(&new[k], chat_id, 1 + as_i64(k)));
                        }
                        *head = Some(Head::claimed(as_i64(new.len()), new));
                    }
                    Claim::Lost(now) => *head = Some(now),
                }
                continue;
            };

            // Dedupe against the last claim's messages (maybe only in the head so far) ...
            let first_seq = cur.first_pending_seq();
            for &i in &open {
                if let Some(pos) = cur.pending.iter().position(|p| p.same_key(&msgs[i])) {
                    decided[i] = Some(Appended {
                        message: cur.pending[pos].message(chat_id, first_seq + as_i64(pos)),
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
                self.materialize(chat_id, first_seq, &cur.pending).await?;
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
            let n = cur.last_seq;
            match self
                .claim_next(chat_id, n, &cur.pending, n + as_i64(new.len()), &new)
                .await?
            {
                Claim::Won => {
                    self.materialize(chat_id, n + 1, &new).await?;
                    for (k, &i) in new_idx.iter().enumerate() {
                        decided[i] = Some(created(&new[k], chat_id, n + 1 + as_i64(k)));
                    }
                    *head = Some(Head::claimed(n + as_i64(new.len()), new));
                }
                Claim::Lost(now) => *head = Some(now),
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

    /// Writes messages `first_seq ..` (and their dedupe rows) at the configured consistency.
    /// Idempotent: every writer of one seq writes the same values.
    ///
    /// The message rows of one bucket go in one single-partition batch, which every replica
    /// applies atomically, and buckets are written in ascending order; so a reader never sees a
    /// later message of the claim without the earlier ones, even if this writer dies half-way.
    pub(crate) async fn materialize(
        &self,
        chat_id: ChatId,
        first_seq: i64,
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
                self.write_bucket(
                    chat_id,
                    bucket,
                    first_seq + as_i64(start),
                    &msgs[start..end],
                )
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
            match values.as_slice() {
                [] => {}
                [one] => {
                    self.exec("writing a dedupe key", &self.stmts.dedupe_write, one)
                        .await?;
                }
                _ => {
                    // One round trip for all of them; the rows need no atomicity, only to be
                    // complete before the append is acknowledged, which the batch gives.
                    let mut batch = Batch::new(BatchType::Unlogged);
                    for _ in &values {
                        batch.append_statement(self.stmts.dedupe_write.clone());
                    }
                    batch.set_is_idempotent(true);
                    let _permit = self.permit().await?;
                    self.session
                        .batch(&batch, values)
                        .await
                        .map_err(|e| error::execution("writing dedupe keys", e))?;
                }
            }
            Ok::<_, Error>(())
        };
        let (r, d) = tokio::join!(rows, dedupe);
        r?;
        d
    }

    /// Message rows `first_seq ..` of one bucket, in one statement or one unlogged
    /// single-partition batch.
    async fn write_bucket(
        &self,
        chat_id: ChatId,
        bucket: i64,
        first_seq: i64,
        msgs: &[Pending],
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
        );
        let values: Vec<MessageRow<'_>> = msgs
            .iter()
            .enumerate()
            .map(|(k, p)| {
                (
                    chat_id.get(),
                    bucket,
                    first_seq + as_i64(k),
                    p.sender_id,
                    p.msg_text.as_str(),
                    p.sent_at,
                    p.timestamp,
                    p.client_msg_id.as_deref(),
                )
            })
            .collect();
        if let [one] = values.as_slice() {
            self.exec("writing a message", &self.stmts.message_write, one)
                .await?;
            return Ok(());
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        for _ in &values {
            batch.append_statement(self.stmts.message_write.clone());
        }
        batch.set_is_idempotent(true);
        let _permit = self.permit().await?;
        self.session
            .batch(&batch, values)
            .await
            .map_err(|e| error::execution("writing messages", e))?;
        Ok(())
    }

    /// `INSERT ... IF NOT EXISTS` of the head with the first messages of the chat.
    async fn claim_first(&self, chat_id: ChatId, new: &[Pending]) -> Result<Claim> {
        let result = self
            .exec(
                "claiming the first seqs",
                &self.stmts.head_first,
                (chat_id.get(), as_i64(new.len()), tuples(new)),
            )
            .await?;
        claim_result(chat_id, result)
    }

    /// `UPDATE ... IF last_seq = n AND pending = <current>` to `last` and the new messages.
    async fn claim_next(
        &self,
        chat_id: ChatId,
        n: i64,
        current: &[Pending],
        last: i64,
        new: &[Pending],
    ) -> Result<Claim> {
        let result = self
            .exec(
                "claiming the next seqs",
                &self.stmts.head_next,
                (last, tuples(new), chat_id.get(), n, tuples(current)),
            )
            .await?;
        claim_result(chat_id, result)
    }
}

/// A newly created message's result.
fn created(p: &Pending, chat_id: ChatId, seq: i64) -> Appended {
    Appended {
        message: p.message(chat_id, seq),
        created: true,
    }
}

/// An index or length as i64 (claims are at most `MAX_CLAIM` long).
fn as_i64(n: usize) -> i64 {
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
fn share(e: &Error) -> Error {
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
