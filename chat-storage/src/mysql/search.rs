//! Message search on MySQL / MariaDB: a terms table written in the transaction of the append,
//! edit or delete, queried per chat by counting matched terms.
//!
//! # Why not InnoDB FULLTEXT
//! A FULLTEXT index tokenizes with the server's own parser: its minimum token size
//! (`innodb_ft_min_token_size`, 3 by default), its stopword list (`the`, `a`, `about`, ...),
//! its notion of a word character and its collation's case and accent rules (`utf8mb4_*_ci`
//! equates `a` and `ä`) all differ from `chat-core`'s tokenizer, and they are server settings
//! this code does not own; a query in boolean mode also has its own syntax (`+ - < > ( ) ~ * "`)
//! to escape. The same query would find different messages on MySQL than on SQLite and
//! Cassandra. A FULLTEXT index is also updated only at commit through an auxiliary cache,
//! which is not the same transaction as far as a concurrent reader is concerned.
//!
//! Instead, `message_terms (chat_id, term, seq)` holds one row per distinct term of each live
//! message, the terms computed by [`chat_core::search::terms`] (the tokenizer every backend
//! uses), `term` a `VARBINARY` compared byte for byte. So results are the same as on every
//! other backend by construction, and a query's text is only ever bound as parameters.
//!
//! # Writes
//! - An append inserts the message's terms in its transaction (multi-row inserts of
//!   [`INSERT_CHUNK`] rows).
//! - An edit deletes the terms only the old text had and inserts those only the new one has;
//!   a delete deletes all of the old text's terms: in the change's transaction, under the
//!   chat's counter lock, so a search sees exactly the committed text.
//! - Migration 5 creates the table and [`backfill`] fills it from the stored messages
//!   (`INSERT IGNORE`, so a node that died mid-way can run it again).
//!
//! # Reads
//! `SELECT chat_id, seq FROM message_terms WHERE chat_id IN (chats) AND term IN (terms)
//! GROUP BY chat_id, seq HAVING COUNT(*) = <number of terms>` (terms are distinct per message
//! and per query, so the count is the number of query terms matched), joined to `messages`
//! by primary key and sorted into the result order with `LIMIT`. Each chat's postings for each
//! term are one primary-key range: only the caller's chats are read. Read on the primary, so a
//! search right after an edit finds the new text.

use super::error::{bad_row, Failure};
use chat_core::search::terms;
use chat_core::{ChatId, Message, SearchCursor, SearchQuery, Seq};
use mysql_async::prelude::Queryable;
use mysql_async::{Row, Value};
use std::collections::BTreeSet;

/// Rows per multi-row `INSERT` of terms (a fixed size keeps the prepared statements few).
const INSERT_CHUNK: usize = 32;
/// Chats per search statement; a user in more chats gets one statement per chunk, merged.
const CHAT_CHUNK: usize = 1000;
/// Messages read per batch by the backfill.
const BACKFILL_BATCH: u32 = 1000;

/// The `CREATE TABLE` of migration 5.
pub(crate) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS message_terms (
            chat_id BIGINT NOT NULL,
            term VARBINARY(1024) NOT NULL,
            seq BIGINT NOT NULL,
            PRIMARY KEY (chat_id, term, seq)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// Inserts `(chat, term, seq)` for each of `terms` (`ignore`: skip rows already there).
async fn insert_terms<Q: Queryable>(
    q: &mut Q,
    chat: ChatId,
    seq: Seq,
    terms: &[&str],
    ignore: bool,
) -> Result<(), Failure> {
    for chunk in terms.chunks(INSERT_CHUNK) {
        let rows = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let verb = if ignore { "INSERT IGNORE" } else { "INSERT" };
        let sql = format!("{verb} INTO message_terms (chat_id, term, seq) VALUES {rows}");
        let mut params: Vec<Value> = Vec::with_capacity(chunk.len() * 3);
        for t in chunk {
            params.push(chat.get().into());
            params.push(t.as_bytes().into());
            params.push(seq.get().into());
        }
        q.exec_drop(sql, params).await?;
    }
    Ok(())
}

/// Deletes `(chat, term, seq)` for each of `terms`.
async fn delete_terms<Q: Queryable>(
    q: &mut Q,
    chat: ChatId,
    seq: Seq,
    terms: &[&str],
) -> Result<(), Failure> {
    for chunk in terms.chunks(INSERT_CHUNK) {
        let list = vec!["?"; chunk.len()].join(", ");
        let sql =
            format!("DELETE FROM message_terms WHERE chat_id = ? AND seq = ? AND term IN ({list})");
        let mut params: Vec<Value> = vec![chat.get().into(), seq.get().into()];
        params.extend(chunk.iter().map(|t| Value::from(t.as_bytes())));
        q.exec_drop(sql, params).await?;
    }
    Ok(())
}

/// Indexes a new message (in its append's transaction).
pub(crate) async fn index<Q: Queryable>(
    q: &mut Q,
    chat: ChatId,
    seq: Seq,
    text: &str,
) -> Result<(), Failure> {
    let terms = terms(text);
    let terms: Vec<&str> = terms.iter().map(String::as_str).collect();
    insert_terms(q, chat, seq, &terms, false).await
}

/// Moves a changed message's terms from `old` text to `new` (`None`: deleted), in the change's
/// transaction: only the difference is written.
pub(crate) async fn reindex<Q: Queryable>(
    q: &mut Q,
    chat: ChatId,
    seq: Seq,
    old: &str,
    new: Option<&str>,
) -> Result<(), Failure> {
    let old: BTreeSet<String> = terms(old).into_iter().collect();
    let new: BTreeSet<String> = new.map(terms).unwrap_or_default().into_iter().collect();
    let gone: Vec<&str> = old.difference(&new).map(String::as_str).collect();
    let added: Vec<&str> = new.difference(&old).map(String::as_str).collect();
    delete_terms(q, chat, seq, &gone).await?;
    insert_terms(q, chat, seq, &added, false).await
}

/// Indexes every live message stored before migration 5, in batches by primary key.
pub(crate) async fn backfill(conn: &mut mysql_async::Conn) -> Result<u64, Failure> {
    let mut from = (i64::MIN, 0_i64);
    let mut n = 0u64;
    loop {
        let rows: Vec<Row> = conn
            .exec(
                // Written as ranges (not a row comparison) so every batch is a range scan
                // of the primary key on every MariaDB / MySQL version.
                "SELECT chat_id, seq, msg_text FROM messages \
                 WHERE (chat_id > ? OR (chat_id = ? AND seq > ?)) AND NOT deleted \
                 ORDER BY chat_id, seq LIMIT ?",
                (from.0, from.0, from.1, BACKFILL_BATCH),
            )
            .await?;
        if rows.is_empty() {
            return Ok(n);
        }
        for row in rows {
            let (chat, seq, text): (i64, i64, String) =
                mysql_async::from_row_opt(row).map_err(|e| bad_row("messages", e))?;
            let terms = terms(&text);
            let terms: Vec<&str> = terms.iter().map(String::as_str).collect();
            insert_terms(conn, ChatId(chat), Seq(seq), &terms, true).await?;
            from = (chat, seq);
            n += 1;
        }
    }
}

/// Up to `limit` results in `chats` (at most [`CHAT_CHUNK`] of them), strictly after `after`,
/// newest first. `cols` are the message columns, read back by `decode`.
pub(crate) async fn search_chunk<Q: Queryable>(
    q: &mut Q,
    cols: &str,
    chats: &[ChatId],
    query: &SearchQuery,
    after: Option<SearchCursor>,
    limit: u32,
) -> Result<Vec<Row>, Failure> {
    let chat_list = vec!["?"; chats.len()].join(", ");
    let term_list = vec!["?"; query.terms().len()].join(", ");
    let cursor = if after.is_some() {
        "AND (m.sent_at, m.chat_id, m.seq) < (?, ?, ?)"
    } else {
        ""
    };
    let sql = format!(
        "SELECT {cols} FROM \
           (SELECT chat_id, seq FROM message_terms \
            WHERE chat_id IN ({chat_list}) AND term IN ({term_list}) \
            GROUP BY chat_id, seq HAVING COUNT(*) = ?) AS hit \
         JOIN messages AS m ON m.chat_id = hit.chat_id AND m.seq = hit.seq \
         WHERE NOT m.deleted {cursor} \
         ORDER BY m.sent_at DESC, m.chat_id DESC, m.seq DESC LIMIT ?"
    );
    let mut params: Vec<Value> = chats.iter().map(|c| Value::from(c.get())).collect();
    params.extend(query.terms().iter().map(|t| Value::from(t.as_bytes())));
    params.push(Value::from(query.terms().len() as u64));
    if let Some(a) = after {
        params.push(a.sent_at.into());
        params.push(a.chat_id.get().into());
        params.push(a.seq.get().into());
    }
    params.push(limit.into());
    Ok(q.exec(sql, params).await?)
}

/// Merges per-chunk result lists into one page: sorted into the result order, `limit` long.
pub(crate) fn merge(mut found: Vec<Message>, limit: u32) -> Vec<Message> {
    chat_core::search::sort_results(&mut found);
    found.truncate(limit as usize);
    found
}

/// Splits the chats asked into statement-sized chunks.
pub(crate) fn chunks(chats: &[ChatId]) -> std::slice::Chunks<'_, ChatId> {
    chats.chunks(CHAT_CHUNK)
}
