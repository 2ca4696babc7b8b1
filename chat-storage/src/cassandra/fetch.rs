//! `fetch`: one page of a chat, walking `(chat_id, bucket)` partitions backward (`Latest`,
//! `Before`) or forward (`After`).
//!
//! Seqs are dense, so every bucket below the newest is full: a backward walk needs at most
//! `limit / bucket_size + 2` partition reads, and a forward walk stops at the first bucket that
//! ends before its last possible seq. A page that is not dense (see the module doc of
//! [`cassandra`](super): two replicas merged mid-append) is read again.

use super::{rows_to_messages, Inner};
use chat_core::{ChatId, Error, FetchQuery, Message, Result, Seq};
use std::time::Duration;

/// Reads of one page before a page that stays non-dense is reported as `Unavailable`.
const DENSE_READ_ATTEMPTS: u32 = 6;

impl Inner {
    /// One page, in ascending seq, dense.
    pub(crate) async fn fetch(&self, chat_id: ChatId, query: FetchQuery) -> Result<Vec<Message>> {
        if query.limit() == 0 {
            return Ok(Vec::new());
        }
        for attempt in 0..DENSE_READ_ATTEMPTS {
            let page = match query {
                FetchQuery::Latest { limit } => {
                    let head = self.read_head(chat_id).await?;
                    self.walk_backward(chat_id, head.last_seq, limit).await?
                }
                FetchQuery::Before { before, limit } => {
                    self.before(chat_id, before.get().saturating_sub(1), limit)
                        .await?
                }
                FetchQuery::After { after, limit } => {
                    self.walk_forward(chat_id, after.get().max(0).saturating_add(1), limit)
                        .await?
                }
            };
            let dense = page.windows(2).all(|w| w[1].seq == w[0].seq.next());
            let starts_right = match (query, page.first()) {
                (FetchQuery::After { after, .. }, Some(first)) => {
                    first.seq == Seq(after.get().max(0) + 1)
                }
                _ => true,
            };
            if dense && starts_right {
                return Ok(page);
            }
            tracing::debug!(%chat_id, attempt, "cassandra page not dense yet; reading again");
            tokio::time::sleep(Duration::from_millis(5 * (u64::from(attempt) + 1))).await;
        }
        Err(Error::Unavailable {
            message: format!("cassandra: replicas of chat {chat_id} have not converged; retry"),
            source: None,
        })
    }

    /// The newest `limit` messages with `seq <= upper`. A bound above the chat's head is
    /// clamped to it (found with one extra read) so no empty buckets are walked.
    async fn before(&self, chat_id: ChatId, upper: i64, limit: u32) -> Result<Vec<Message>> {
        if upper < 1 {
            return Ok(Vec::new());
        }
        let first = self.bucket_desc(chat_id, upper, limit).await?;
        if !first.is_empty() {
            // `first` is descending; continue below the bucket it came from.
            return self.continue_backward(chat_id, first, upper, limit).await;
        }
        // Nothing at or below `upper` in its bucket: the bound is past the head (or the chat
        // is empty, or `upper` starts a bucket still being written).
        let head = self.read_head(chat_id).await?;
        self.walk_backward(chat_id, head.last_seq.min(upper), limit)
            .await
    }

    /// The newest `limit` messages with `seq <= upper`, reading bucket by bucket downward.
    async fn walk_backward(&self, chat_id: ChatId, upper: i64, limit: u32) -> Result<Vec<Message>> {
        if upper < 1 {
            return Ok(Vec::new());
        }
        let first = self.bucket_desc(chat_id, upper, limit).await?;
        self.continue_backward(chat_id, first, upper, limit).await
    }

    /// Given the descending rows of `upper`'s bucket, reads lower buckets until `limit` rows
    /// or seq 1; returns them ascending.
    async fn continue_backward(
        &self,
        chat_id: ChatId,
        mut rows: Vec<Message>,
        upper: i64,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let want = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut bucket = self.bucket(upper);
        while rows.len() < want && bucket > 0 {
            bucket -= 1;
            let top = (bucket + 1) * self.bucket_size - 1;
            let left = u32::try_from(want - rows.len()).unwrap_or(u32::MAX);
            rows.extend(self.bucket_desc(chat_id, top, left).await?);
        }
        rows.truncate(want);
        rows.reverse();
        Ok(rows)
    }

    /// The oldest `limit` messages with `seq >= from`, bucket by bucket upward.
    pub(super) async fn walk_forward(
        &self,
        chat_id: ChatId,
        from: i64,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let want = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut rows: Vec<Message> = Vec::new();
        let mut start = from;
        loop {
            let bucket = self.bucket(start);
            let left = u32::try_from(want - rows.len()).unwrap_or(u32::MAX);
            let got = self.bucket_asc(chat_id, bucket, start, left).await?;
            let bucket_end = (bucket.saturating_add(1))
                .saturating_mul(self.bucket_size)
                .saturating_sub(1);
            let reached_end = got.last().is_some_and(|m| m.seq.get() == bucket_end);
            rows.extend(got);
            // Dense seqs: a bucket that stops before its last seq is the end of the chat.
            if rows.len() >= want || !reached_end {
                break;
            }
            start = bucket_end + 1;
        }
        Ok(rows)
    }

    /// Up to `limit` rows of `upper`'s bucket with `seq <= upper`, descending.
    pub(super) async fn bucket_desc(
        &self,
        chat_id: ChatId,
        upper: i64,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let result = self
            .exec(
                "reading a page",
                &self.stmts.page_desc,
                (chat_id.get(), self.bucket(upper), upper, limit),
            )
            .await?;
        rows_to_messages(chat_id, result)
    }

    /// Up to `limit` rows of `bucket` with `seq >= from`, ascending.
    async fn bucket_asc(
        &self,
        chat_id: ChatId,
        bucket: i64,
        from: i64,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let result = self
            .exec(
                "reading a page",
                &self.stmts.page_asc,
                (chat_id.get(), bucket, from, limit),
            )
            .await?;
        rows_to_messages(chat_id, result)
    }
}
