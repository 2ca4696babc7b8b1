//! Message search on SQLite: an FTS5 index of each message's terms, kept in the transaction
//! that appends, edits or deletes the message.
//!
//! # Design
//! - `search_docs (doc_id INTEGER PRIMARY KEY, chat_id, seq)` gives each indexed message a
//!   rowid (`messages` is `WITHOUT ROWID`, and FTS5 documents are keyed by rowid).
//! - `search_fts` is a contentless FTS5 table (`content=''`, `contentless_delete=1`,
//!   `detail='none'`: no copy of the text, no positions, only which documents hold a token),
//!   with the `ascii` tokenizer. Its one column holds the message's terms as computed by
//!   [`chat_core::search::terms`], each written as lower-case hex of its UTF-8, plus the token
//!   `x<chat_id>`. So FTS5's own tokenizer, case folding and diacritics handling never decide
//!   anything: a hex token is one ASCII word to it, and a query's words reach FTS5 only as hex
//!   in double quotes, so no character of a query is ever FTS5 syntax (`"`, `*`, `NEAR`, `-`
//!   are plain words, encoded like any other). Results are exactly those of the other backends.
//! - A query is one `MATCH` of `("x<chat>" OR ...) AND "<hex term>" AND ...`: FTS5 intersects
//!   the chat tokens' doclists with the terms', so only the asked chats' matches are read; the
//!   rows are then joined to `messages` (current state: a message never found by old text)
//!   and sorted into the result order with `LIMIT`.
//! - An append indexes the message; an edit or a delete takes its document out (and an edit
//!   puts the new terms in), all in the writer's transaction of that change: a search sees a
//!   change exactly when a fetch does.
//! - Migration 5 creates the tables; [`backfill`] indexes the messages stored before it, in
//!   the migration's transaction.

use super::error::db;
use chat_core::search::terms;
use chat_core::{ChatId, Result, SearchCursor, SearchQuery, Seq};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashSet;
use std::fmt::Write as _;

/// The FTS5 token of a term: lower-case hex of its UTF-8.
fn hex(term: &str, out: &mut String) {
    for b in term.as_bytes() {
        let _ = write!(out, "{b:02x}");
    }
}

/// The FTS5 token that names a chat (`x` is not a hex digit, so it never equals a term's).
fn chat_token(chat_id: ChatId) -> String {
    format!("x{}", chat_id.get())
}

/// Indexes message `seq` of `chat_id` with the terms of `text`. Runs on the writer, inside the
/// transaction that stores the text.
pub(crate) fn index(conn: &Connection, chat_id: ChatId, seq: Seq, text: &str) -> Result<()> {
    let terms = terms(text);
    if terms.is_empty() {
        return Ok(());
    }
    let mut doc = chat_token(chat_id);
    for t in &terms {
        doc.push(' ');
        hex(t, &mut doc);
    }
    let doc_id: i64 = conn
        .prepare_cached("INSERT INTO search_docs (chat_id, seq) VALUES (?1, ?2) RETURNING doc_id")
        .and_then(|mut st| st.query_row(params![chat_id.get(), seq.get()], |r| r.get(0)))
        .map_err(db("add a search document"))?;
    conn.prepare_cached("INSERT INTO search_fts (rowid, terms) VALUES (?1, ?2)")
        .and_then(|mut st| st.execute(params![doc_id, doc]))
        .map_err(db("index a message for search"))?;
    Ok(())
}

/// Takes message `seq` of `chat_id` out of the index (nothing when it is not in it).
pub(crate) fn unindex(conn: &Connection, chat_id: ChatId, seq: Seq) -> Result<()> {
    let doc_id: Option<i64> = conn
        .prepare_cached("DELETE FROM search_docs WHERE chat_id = ?1 AND seq = ?2 RETURNING doc_id")
        .and_then(|mut st| {
            st.query_row(params![chat_id.get(), seq.get()], |r| r.get(0))
                .optional()
        })
        .map_err(db("remove a search document"))?;
    if let Some(doc_id) = doc_id {
        conn.prepare_cached("DELETE FROM search_fts WHERE rowid = ?1")
            .and_then(|mut st| st.execute([doc_id]))
            .map_err(db("unindex a message"))?;
    }
    Ok(())
}

/// Indexes every message that is not deleted: the backfill of migration 5, in its transaction.
pub(crate) fn backfill(conn: &Connection) -> Result<u64> {
    let mut st = conn
        .prepare("SELECT chat_id, seq, msg_text FROM messages WHERE deleted = 0")
        .map_err(db("read messages to index"))?;
    let mut rows = st.query([]).map_err(db("read messages to index"))?;
    let mut n = 0u64;
    while let Some(r) = rows.next().map_err(db("read messages to index"))? {
        let chat: i64 = r.get(0).map_err(db("read messages to index"))?;
        let seq: i64 = r.get(1).map_err(db("read messages to index"))?;
        let text: String = r.get(2).map_err(db("read messages to index"))?;
        index(conn, ChatId(chat), Seq(seq), &text)?;
        n += 1;
    }
    Ok(n)
}

/// The FTS5 query for `terms` in `chats`: every part a double-quoted hex or chat token, so
/// nothing in it is syntax but the `OR`s and `AND`s written here.
fn match_expression(chats: &[ChatId], query: &SearchQuery) -> String {
    let mut out = String::from("(");
    for (i, &c) in chats.iter().enumerate() {
        if i > 0 {
            out.push_str(" OR ");
        }
        out.push('"');
        out.push_str(&chat_token(c));
        out.push('"');
    }
    out.push(')');
    for t in query.terms() {
        out.push_str(" AND \"");
        hex(t, &mut out);
        out.push('"');
    }
    out
}

/// Chats per `MATCH` expression; a user in more chats gets one query per chunk, merged.
const CHAT_CHUNK: usize = 500;

/// Up to `limit` results of `query` in `chats`, strictly after `after`, newest first. Runs on
/// a reader, in one read transaction (one snapshot for every chunk of chats).
pub(crate) fn search(
    conn: &Connection,
    chats: &[ChatId],
    query: &SearchQuery,
    after: Option<SearchCursor>,
    limit: u32,
) -> Result<Vec<chat_core::Message>> {
    if chats.is_empty() || query.terms().is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let tx = conn.unchecked_transaction().map_err(db("begin a search"))?;
    let mut found = Vec::new();
    for chunk in chats.chunks(CHAT_CHUNK) {
        found.extend(search_chunk(&tx, chunk, query, after, limit)?);
    }
    tx.commit().map_err(db("end a search"))?;
    chat_core::search::sort_results(&mut found);
    found.truncate(limit as usize);
    Ok(found)
}

/// [`search`] in at most [`CHAT_CHUNK`] chats.
fn search_chunk(
    conn: &Connection,
    chats: &[ChatId],
    query: &SearchQuery,
    after: Option<SearchCursor>,
    limit: u32,
) -> Result<Vec<chat_core::Message>> {
    let expr = match_expression(chats, query);
    let (sent_at, chat, seq) = after.map_or((None, None, None), |a| {
        (Some(a.sent_at), Some(a.chat_id.get()), Some(a.seq.get()))
    });
    let mut st = conn
        .prepare_cached(
            "SELECT m.chat_id, m.seq, m.sender_id, m.msg_text, m.sent_at, m.timestamp, \
                    m.client_msg_id, m.reply_to_seq, m.edited_at, m.deleted, m.reactions, m.rev \
             FROM search_fts \
             JOIN search_docs AS d ON d.doc_id = search_fts.rowid \
             JOIN messages AS m ON m.chat_id = d.chat_id AND m.seq = d.seq \
             WHERE search_fts MATCH ?1 AND m.deleted = 0 \
               AND (?2 IS NULL OR (m.sent_at, m.chat_id, m.seq) < (?2, ?3, ?4)) \
             ORDER BY m.sent_at DESC, m.chat_id DESC, m.seq DESC LIMIT ?5",
        )
        .map_err(db("prepare a search"))?;
    let rows = st
        .query_map(
            params![expr, sent_at, chat, seq, i64::from(limit)],
            super::ops::message_from_row,
        )
        .map_err(db("search"))?;
    let found = rows
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db("read a search result"))?;
    // The MATCH already names only these chats; this keeps it so if that ever changed.
    let asked: HashSet<ChatId> = chats.iter().copied().collect();
    Ok(found
        .into_iter()
        .filter(|m| asked.contains(&m.chat_id))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn match_expressions_quote_everything() {
        let q = SearchQuery::parse("Hé \"x\" NEAR*").unwrap();
        assert_eq!(
            match_expression(&[ChatId(1), ChatId(22)], &q),
            "(\"x1\" OR \"x22\") AND \"68c3a9\" AND \"6e656172\" AND \"78\""
        );
    }

    #[test]
    fn a_user_in_many_chats_is_searched_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let conn =
            super::super::schema::open_writer(&dir.path().join("s.db"), Duration::from_secs(5))
                .unwrap();
        for (chat, seq, at) in [(3, 1, 10), (1_200, 1, 11), (777, 1, 12), (5_000, 1, 13)] {
            conn.execute(
                "INSERT INTO messages (chat_id, seq, sender_id, msg_text, sent_at, rev) \
                 VALUES (?1, ?2, 1, 'needle', ?3, ?2)",
                params![chat, seq, at],
            )
            .unwrap();
            index(&conn, ChatId(chat), Seq(seq), "needle").unwrap();
        }
        let chats: Vec<ChatId> = (1..=1_500).map(ChatId).collect();
        let q = SearchQuery::parse("NEEDLE").unwrap();
        let found = search(&conn, &chats, &q, None, 10).unwrap();
        let keys: Vec<i64> = found.iter().map(|m| m.chat_id.get()).collect();
        assert_eq!(keys, vec![777, 1_200, 3]);
        let after = Some(SearchCursor::of(&found[0]));
        let rest = search(&conn, &chats, &q, after, 1).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].chat_id, ChatId(1_200));
    }
}
