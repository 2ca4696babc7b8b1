//! `activity`: where one chat stands for a reader (the chat list), from the head row, the newest
//! message row and the chat's tombstone rows; never from the messages above the reader's marker.
//!
//! Per chat: the head (QUORUM) gives `last_seq`; then, in parallel, one row of the newest
//! message's partition (`seq <= last_seq`, clustering order descending, `LIMIT 1`) and a
//! `COUNT(*)` of `message_tombstones` with `marker < seq <= last_seq` (one partition, as many
//! rows as there are tombstones above the marker). The head's own claim may not be written out
//! yet (in flight, or its claimer died): if the newest row is not the head's `last_seq`, or the
//! claim is a change of the newest message that its row does not show yet, or a delete above the
//! marker whose tombstone row is missing, the reader writes the claim out itself (idempotent,
//! like `last_seq` and the change feed do) and reads again. So the answer holds every append
//! and every change acknowledged before the read began.

use super::head::Claimed;
use super::{error, Inner};
use chat_core::{ChatActivity, ChatId, Error, Result, Seq};
use std::time::Duration;

/// Reads of one chat before an answer that stays incomplete is reported as `Unavailable`.
const ACTIVITY_READ_ATTEMPTS: u32 = 4;

impl Inner {
    /// Where `chat_id` stands for a reader whose marker is `marker`; see the module doc.
    pub(crate) async fn activity(&self, chat_id: ChatId, marker: Seq) -> Result<ChatActivity> {
        let marker = marker.get().max(0);
        for attempt in 0..ACTIVITY_READ_ATTEMPTS {
            let head = self.read_head(chat_id).await?;
            let last_seq = head.last_seq;
            if last_seq == 0 {
                return Ok(ChatActivity {
                    last_seq: Seq::ZERO,
                    last_message: None,
                    deleted_after: 0,
                });
            }
            // A delete claim above the marker: its tombstone row may not be written yet.
            let claimed_delete = match &head.claim {
                Claimed::Changed { change, .. } if change.deleted && change.seq > marker => {
                    Some(change.seq)
                }
                _ => None,
            };
            let newest = self.bucket_desc(chat_id, last_seq, 1);
            // The count is read only after the claimed delete's tombstone was seen: read side
            // by side, the count could miss a tombstone that another reader completing the
            // claim wrote between the two reads, and the answer would be one short.
            let count_after_delete = async {
                if let Some(seq) = claimed_delete {
                    if !self.tombstone_exists(chat_id, seq).await? {
                        return Ok((0, false));
                    }
                }
                if marker >= last_seq {
                    return Ok((0, true));
                }
                Ok((
                    self.count_tombstones(chat_id, marker, last_seq).await?,
                    true,
                ))
            };
            let (newest, counted) = tokio::join!(newest, count_after_delete);
            let newest = newest?.into_iter().next();
            let (count, delete_written): (u64, bool) = counted?;
            let claim_shown = match (&newest, &head.claim) {
                (Some(m), _) if m.seq.get() != last_seq => false,
                (None, _) => false,
                // The newest message's own change: its row must show that revision.
                (Some(m), Claimed::Changed { change, .. }) if change.seq == last_seq => {
                    m.rev.get() >= head.last_rev
                }
                _ => true,
            };
            if claim_shown && delete_written {
                return Ok(ChatActivity {
                    last_seq: Seq(last_seq),
                    last_message: newest,
                    deleted_after: count,
                });
            }
            tracing::debug!(%chat_id, attempt, "cassandra activity: completing the head's claim");
            self.materialize(chat_id, &head).await?;
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
            }
        }
        Err(Error::Unavailable {
            message: format!(
                "cassandra: the newest state of chat {chat_id} is not readable; retry"
            ),
            source: None,
        })
    }

    /// How many tombstone rows `chat_id` has with `after < seq <= upto`.
    async fn count_tombstones(&self, chat_id: ChatId, after: i64, upto: i64) -> Result<u64> {
        let rows = self
            .exec(
                "counting tombstones",
                &self.stmts.tombstone_count,
                (chat_id.get(), after, upto),
            )
            .await?
            .into_rows_result()
            .map_err(|e| error::rows("message_tombstones", e))?;
        let count = rows
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(|e| error::rows("message_tombstones", e))?
            .and_then(|(n,)| n)
            .unwrap_or(0);
        u64::try_from(count).map_err(|_| {
            error::bad_row(format!(
                "message_tombstones {chat_id}: a negative count {count}"
            ))
        })
    }

    /// Whether the tombstone row of message `seq` is there.
    async fn tombstone_exists(&self, chat_id: ChatId, seq: i64) -> Result<bool> {
        let rows = self
            .exec(
                "reading a tombstone",
                &self.stmts.tombstone_read,
                (chat_id.get(), seq),
            )
            .await?
            .into_rows_result()
            .map_err(|e| error::rows("message_tombstones", e))?;
        Ok(rows.rows_num() > 0)
    }
}
