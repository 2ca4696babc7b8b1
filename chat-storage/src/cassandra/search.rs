//! Message search on Cassandra 5.0: each message row carries its search terms in a
//! `set<text>` column with a Storage-Attached Index on its values, queried per chat partition.
//!
//! # Why terms and not an analyzed index
//! SAI with an analyzer (`index_analyzer`) does not exist in Apache Cassandra 5.0 (it refuses
//! the option), so the store tokenizes itself: every write of a message's text (the append's
//! row, a change's new state) also writes `terms`, computed by [`chat_core::search::terms`],
//! the tokenizer and case folding every backend and the query parser share. A delete writes an
//! empty set. The terms are written in the same statement and with the same write timestamp
//! as the text, so the text and its terms can never disagree, whichever claim's write wins.
//!
//! # Queries
//! `SELECT ... WHERE chat_id = ? AND bucket = ? AND terms CONTAINS ? [AND terms CONTAINS ?]...`:
//! the partition key restricts each query to one chat's bucket, so a search reads only the
//! caller's chats, never the cluster's other partitions. The query names at most
//! [`MAX_CONTAINS`] terms (one prepared statement per count, prepared at connect); every row
//! is then checked against the whole query with [`SearchQuery::matches`] on its current text,
//! so a query with more words still gets exactly its results.
//!
//! `ORDER BY` is refused with a secondary index, and within a chat `sent_at` need not grow
//! with `seq` (two nodes' clocks), so each chat's buckets are all read, newest first, and the
//! matches sorted into the result order here; chats are searched in parallel (bounded by the
//! store's in-flight semaphore) and merged. A search costs one indexed query per bucket of
//! each chat (one for a chat under `bucket_size` messages).
//!
//! # Messages stored before schema version 4
//! Migration 4 runs [`backfill`] after its DDL, before it records itself as done: one paged scan
//! of `messages` that writes the terms of every row that has text, `USING TIMESTAMP` of that
//! text's own write time. So a change written meanwhile (a newer timestamp) keeps its own
//! terms, a rerun (a crashed migration taken over) writes the same cells again, and the scan
//! never needs a lock. It reads every message of the keyspace once, at the first start of a
//! node of this version.

use super::{error, rows_to_messages, Inner};
use chat_core::search::sort_results;
use chat_core::{ChatId, Message, Result, SearchCursor, SearchQuery};
use scylla::client::session::Session;
use scylla::response::PagingState;
use scylla::value::CqlValue;
use std::ops::ControlFlow;
use std::sync::Arc;

/// Most `CONTAINS` restrictions one query carries; further words are checked on the rows.
pub(super) const MAX_CONTAINS: usize = 4;

/// Rows per page of the backfill's scan.
const BACKFILL_PAGE: i32 = 1000;

/// Writes the terms of every message of keyspace `ks` that has text (see the module doc).
/// Returns how many rows it wrote.
pub(super) async fn backfill(session: &Session, ks: &str) -> Result<u64> {
    let mut scan = session
        .prepare(format!(
            "SELECT chat_id, bucket, seq, msg_text, deleted, WRITETIME(msg_text) \
             FROM {ks}.messages"
        ))
        .await
        .map_err(|e| error::prepare("search backfill scan", e))?;
    scan.set_page_size(BACKFILL_PAGE);
    let mut write = session
        .prepare(format!(
            "UPDATE {ks}.messages USING TIMESTAMP ? SET terms = ? \
             WHERE chat_id = ? AND bucket = ? AND seq = ?"
        ))
        .await
        .map_err(|e| error::prepare("search backfill write", e))?;
    write.set_is_idempotent(true);
    type Row = (i64, i64, i64, Option<String>, Option<bool>, Option<i64>);
    let mut paging = PagingState::start();
    let mut written = 0u64;
    loop {
        let (result, next) = session
            .execute_single_page(&scan, (), paging)
            .await
            .map_err(|e| error::execution("search backfill: scanning messages", e))?;
        let rows = result
            .into_rows_result()
            .map_err(|e| error::rows("messages", e))?;
        for row in rows.rows::<Row>().map_err(|e| error::rows("messages", e))? {
            let (chat, bucket, seq, text, deleted, wts) =
                row.map_err(|e| error::rows("messages", e))?;
            let (Some(text), Some(wts)) = (text, wts) else {
                continue;
            };
            if deleted == Some(true) {
                continue;
            }
            let terms = chat_core::search::terms(&text);
            if terms.is_empty() {
                continue;
            }
            session
                .execute_unpaged(&write, (wts, terms, chat, bucket, seq))
                .await
                .map_err(|e| error::execution("search backfill: writing terms", e))?;
            written += 1;
        }
        match next.into_paging_control_flow() {
            ControlFlow::Break(()) => return Ok(written),
            ControlFlow::Continue(state) => paging = state,
        }
    }
}

/// The CQL of a search with `n` `CONTAINS` restrictions (`1..=MAX_CONTAINS`).
pub(super) fn search_cql(ks: &str, columns: &str, n: usize) -> String {
    let mut cql = format!("SELECT {columns} FROM {ks}.messages WHERE chat_id = ? AND bucket = ?");
    for _ in 0..n {
        cql.push_str(" AND terms CONTAINS ?");
    }
    cql
}

impl Inner {
    /// Up to `limit` results in one chat, strictly after `after`, newest first.
    pub(super) async fn search_chat(
        self: Arc<Self>,
        chat_id: ChatId,
        query: Arc<SearchQuery>,
        after: Option<SearchCursor>,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let words = query.terms();
        let n = words.len().min(MAX_CONTAINS);
        if n == 0 {
            return Ok(Vec::new());
        }
        let Some(stmt) = self.stmts.search.get(n - 1) else {
            return Err(error::bad_row(format!("no search statement for {n} terms")));
        };
        // `last_seq` also writes out a claim its claimer left half-written.
        let last = self.last_seq(chat_id).await?.get();
        if last == 0 {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for bucket in (0..=self.bucket(last)).rev() {
            let mut values = vec![CqlValue::BigInt(chat_id.get()), CqlValue::BigInt(bucket)];
            values.extend(words.iter().take(n).map(|t| CqlValue::Text(t.clone())));
            let result = self.exec("searching messages", stmt, values).await?;
            found.extend(
                rows_to_messages(chat_id, result)?
                    .into_iter()
                    .filter(|m| !m.deleted && query.matches(&m.msg_text))
                    .filter(|m| after.is_none_or(|a| SearchCursor::of(m).is_after(&a))),
            );
        }
        sort_results(&mut found);
        found.truncate(limit as usize);
        Ok(found)
    }
}

/// Searches every chat of `chat_ids` in parallel and merges the results into one page.
pub(super) async fn search(
    inner: &Arc<Inner>,
    chat_ids: &[ChatId],
    query: &SearchQuery,
    after: Option<SearchCursor>,
    limit: u32,
) -> Result<Vec<Message>> {
    if chat_ids.is_empty() || query.terms().is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let mut chats = chat_ids.to_vec();
    chats.sort_unstable();
    chats.dedup();
    let query = Arc::new(query.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for chat in chats {
        let work = Arc::clone(inner).search_chat(chat, Arc::clone(&query), after, limit);
        tasks.spawn(work);
    }
    let mut found = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let page = joined
            .map_err(|e| chat_core::Error::internal("cassandra: a chat's search failed", e))?;
        found.extend(page?);
    }
    sort_results(&mut found);
    found.truncate(limit as usize);
    Ok(found)
}
