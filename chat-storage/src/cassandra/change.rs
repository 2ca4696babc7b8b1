//! `change` and `changes`: a change is a claim on the chat head like an append, one revision
//! long, that carries the message's new state; the change feed reads `message_revs` up to the
//! head it read first (see the module doc of [`cassandra`](super) for the reasoning).

use super::append::{backoff, next_wts, MAX_CLAIM_ATTEMPTS};
use super::head::{Changed, Claim, Claimed, Head};
use super::{error, raw_to_message, rows_to_messages, Inner};
use chat_core::{apply_change, ChatId, Error, Message, MessageChange, Result, Rev, Seq};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Reads of one feed page before a page that stays incomplete is reported as `Unavailable`.
const FEED_READ_ATTEMPTS: u32 = 6;

/// Revisions (or seqs, below `implicit_revs`) the feed reads per step; also the most seqs one
/// `IN` list of a message read holds.
const FEED_CHUNK: i64 = 100;

/// One message row with `WRITETIME(msg_text)`.
type RawWithWritetime = (
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
    Option<i64>,
);

impl Inner {
    /// Applies one change to message `seq`; see `MessageStore::change` and the module doc.
    ///
    /// Holds the chat's in-process lock (the one appends claim under) and claims on a task of
    /// its own, so a caller that goes away does not leave the cached head half-updated.
    pub(crate) async fn change(
        self: &Arc<Self>,
        chat_id: ChatId,
        seq: Seq,
        change: MessageChange,
    ) -> Result<Message> {
        let slot = self.chat_slot(chat_id);
        let guard = Arc::clone(&slot.head).lock_owned().await;
        let inner = Arc::clone(self);
        let task = tokio::spawn(async move {
            let mut guard = guard;
            inner
                .claim_change(chat_id, seq.get(), &change, &mut guard)
                .await
        });
        task.await
            .map_err(|e| Error::internal("cassandra: the change task failed", e))?
    }

    /// The claim loop of a change. `head` is the chat's cached head: taken out, and put back
    /// only when its state is known (so after an error the next claim starts cold).
    async fn claim_change(
        &self,
        chat_id: ChatId,
        seq: i64,
        change: &MessageChange,
        head: &mut Option<Head>,
    ) -> Result<Message> {
        let not_found = || Error::NotFound(format!("message {seq} of chat {chat_id}"));
        if seq < 1 {
            return Err(not_found());
        }
        // The head to claim after, and whether it was observed during this call.
        let mut known: Option<(Head, bool)> = head.take().map(|h| (h, false));
        for attempt in 0..MAX_CLAIM_ATTEMPTS {
            backoff(attempt).await;
            let (mut cur, fresh) = match known.take() {
                Some(k) => k,
                None => (self.read_head(chat_id).await?, true),
            };
            if seq > cur.last_seq {
                if fresh {
                    *head = Some(cur);
                    return Err(not_found());
                }
                // Another process may have appended it since this one last looked.
                continue;
            }
            // The base must include every earlier change: every claim before `cur`'s is
            // written out (the invariant); `cur`'s own is written here if nobody did yet.
            if !cur.materialized {
                self.materialize(chat_id, &cur).await?;
                cur.materialized = true;
            }
            let Some((base, written_at)) = self.read_for_change(chat_id, seq).await? else {
                return Err(Error::Unavailable {
                    message: format!(
                        "cassandra: message {seq} of chat {chat_id} is claimed but not readable \
                         yet; retry"
                    ),
                    source: None,
                });
            };
            let mut next = match apply_change(&base, change) {
                Ok(Some(next)) => next,
                // Nothing changes: no revision, the message as it is.
                Ok(None) => {
                    *head = Some(cur);
                    return Ok(base);
                }
                Err(e) => {
                    *head = Some(cur);
                    return Err(e);
                }
            };
            let rev = cur.last_rev + 1;
            // Above the last claim's timestamp and above the base's own cells (which a version-1
            // process wrote with the coordinator's clock).
            let claim = Claimed::Changed {
                wts: next_wts(cur.claim.wts().max(written_at)),
                change: Changed::of(&next),
            };
            match self
                .claim_after(chat_id, &cur, cur.last_seq, rev, &claim)
                .await?
            {
                Claim::Won => {
                    let mut won = Head::claimed(cur.last_seq, rev, claim, cur.next_implicit_revs());
                    self.materialize(chat_id, &won).await?;
                    won.materialized = true;
                    *head = Some(won);
                    next.rev = Rev(rev);
                    return Ok(next);
                }
                Claim::Lost(now) => known = now.map(|h| (h, true)),
            }
        }
        Err(Error::Unavailable {
            message: format!(
                "cassandra: chat {chat_id} is under too much contention to change; retry"
            ),
            source: None,
        })
    }

    /// Message `seq` and the write timestamp of its text, if it is in `messages`.
    async fn read_for_change(&self, chat_id: ChatId, seq: i64) -> Result<Option<(Message, i64)>> {
        let rows = self
            .exec(
                "reading a message to change",
                &self.stmts.message_read_for_change,
                (chat_id.get(), self.bucket(seq), seq),
            )
            .await?
            .into_rows_result()
            .map_err(|e| error::rows("messages", e))?;
        let Some(row) = rows
            .maybe_first_row::<RawWithWritetime>()
            .map_err(|e| error::rows("messages", e))?
        else {
            return Ok(None);
        };
        let (a, b, c, d, e, f, g, h, i, j, k, written_at) = row;
        let message = raw_to_message(chat_id, (a, b, c, d, e, f, g, h, i, j, k))?;
        Ok(Some((message, written_at.unwrap_or(0))))
    }

    /// The change feed; see `MessageStore::changes` and the module doc.
    pub(crate) async fn changes(
        &self,
        chat_id: ChatId,
        after: Rev,
        limit: u32,
    ) -> Result<Vec<Message>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let after = after.get().max(0);
        let want = usize::try_from(limit).unwrap_or(usize::MAX);
        for attempt in 0..FEED_READ_ATTEMPTS {
            // Read only up to the head read first: every claim before its own is written out
            // (the invariant), and its own is written below if the page finds it missing.
            let head = self.read_head(chat_id).await?;
            if head.last_rev <= after {
                return Ok(Vec::new());
            }
            if let Some(page) = self.feed(chat_id, &head, after, want).await? {
                return Ok(page);
            }
            tracing::debug!(%chat_id, attempt, "cassandra feed incomplete; completing the head");
            self.materialize(chat_id, &head).await?;
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
            }
        }
        Err(Error::Unavailable {
            message: format!("cassandra: the change feed of chat {chat_id} is not readable; retry"),
            source: None,
        })
    }

    /// One page of the feed up to `head`, or `None` if something up to it is not readable yet
    /// (a missing feed row, or a message older than its feed row says).
    async fn feed(
        &self,
        chat_id: ChatId,
        head: &Head,
        after: i64,
        want: usize,
    ) -> Result<Option<Vec<Message>>> {
        let top = head.last_rev;
        let implicit = head
            .next_implicit_revs()
            .ok_or_else(|| error::bad_row(format!("chat_heads {chat_id}: no implicit_revs")))?
            .min(top);
        let mut out: Vec<Message> = Vec::new();
        let mut cursor = after;
        // Revisions of messages stored before revisions existed: rev = seq, so they are read
        // from `messages`, keeping the ones no change has moved (those come later, by rev).
        while cursor < implicit {
            let chunk = (implicit - cursor).min(FEED_CHUNK);
            let page = self
                .walk_forward(chat_id, cursor + 1, u32::try_from(chunk).unwrap_or(1))
                .await?;
            let complete = i64::try_from(page.len()).ok() == Some(chunk)
                && page
                    .iter()
                    .zip(cursor + 1..)
                    .all(|(m, seq)| m.seq.get() == seq);
            if !complete {
                return Ok(None);
            }
            for m in page {
                cursor = m.seq.get();
                if m.rev.get() == cursor {
                    out.push(m);
                    if out.len() >= want {
                        return Ok(Some(out));
                    }
                }
            }
        }
        cursor = cursor.max(implicit);
        while cursor < top {
            let upto = cursor + (top - cursor).min(FEED_CHUNK);
            let entries = self.feed_rows(chat_id, cursor, upto).await?;
            let dense = i64::try_from(entries.len()).ok() == Some(upto - cursor)
                && entries
                    .iter()
                    .zip(cursor + 1..)
                    .all(|(&(rev, _), want_rev)| rev == want_rev);
            if !dense {
                return Ok(None);
            }
            let messages = self
                .messages_by_seq(chat_id, entries.iter().map(|&(_, seq)| seq))
                .await?;
            for (rev, seq) in entries {
                cursor = rev;
                match messages.get(&seq) {
                    Some(m) if m.rev.get() == rev => {
                        out.push(m.clone());
                        if out.len() >= want {
                            return Ok(Some(out));
                        }
                    }
                    // Changed again since: it comes at its newer revision.
                    Some(m) if m.rev.get() > rev => {}
                    // Not written out yet.
                    _ => return Ok(None),
                }
            }
        }
        Ok(Some(out))
    }

    /// Feed rows `(rev, seq)` with `after < rev <= upto`, ascending, across buckets.
    async fn feed_rows(&self, chat_id: ChatId, after: i64, upto: i64) -> Result<Vec<(i64, i64)>> {
        let mut out = Vec::new();
        let mut bucket = self.bucket(after + 1);
        while bucket <= self.bucket(upto) {
            let limit = i32::try_from(upto - after).unwrap_or(i32::MAX);
            let rows = self
                .exec(
                    "reading the change feed",
                    &self.stmts.feed_page,
                    (chat_id.get(), bucket, after, upto, limit),
                )
                .await?
                .into_rows_result()
                .map_err(|e| error::rows("message_revs", e))?;
            for row in rows
                .rows::<(Option<i64>, Option<i64>)>()
                .map_err(|e| error::rows("message_revs", e))?
            {
                match row.map_err(|e| error::rows("message_revs", e))? {
                    (Some(rev), Some(seq)) => out.push((rev, seq)),
                    _ => {
                        return Err(error::bad_row(format!(
                            "chat {chat_id}: a change feed row without rev or seq"
                        )))
                    }
                }
            }
            bucket += 1;
        }
        Ok(out)
    }

    /// The stored messages of `seqs`, by seq (one read per bucket).
    async fn messages_by_seq(
        &self,
        chat_id: ChatId,
        seqs: impl Iterator<Item = i64>,
    ) -> Result<HashMap<i64, Message>> {
        let mut by_bucket: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for seq in seqs {
            by_bucket.entry(self.bucket(seq)).or_default().push(seq);
        }
        let mut out = HashMap::new();
        for (bucket, mut seqs) in by_bucket {
            seqs.sort_unstable();
            seqs.dedup();
            let result = self
                .exec(
                    "reading changed messages",
                    &self.stmts.messages_in,
                    (chat_id.get(), bucket, seqs),
                )
                .await?;
            for m in rows_to_messages(chat_id, result)? {
                out.insert(m.seq.get(), m);
            }
        }
        Ok(out)
    }
}
