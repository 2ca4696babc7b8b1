//! Message search on SQLite: an FTS5 index of each message's terms, kept in the transaction
//! that appends, edits or deletes the message.
//!
//! # Design
//! - Each indexed message has a document rowid in its own row, `messages.doc_id` (with the
//!   partial index `messages_by_doc`; `messages` is `WITHOUT ROWID`, and FTS5 documents are
//!   keyed by rowid). The rowid **is the result order**: `sent_at` (clamped to `0..2^42` ms, year 2109) in the high bits and
//!   a counter among the documents of that millisecond in the low [`COUNTER_BITS`]
//!   (see [`doc_id_range`]). So FTS5 can hand out a query's matches newest first
//!   (`ORDER BY rowid DESC`, which it walks lazily) and a search stops after one page.
//! - `search_fts` is a contentless FTS5 table (`content=''`, `contentless_delete=1`,
//!   `detail='none'`: no copy of the text, no positions, only which documents hold a token),
//!   with the `ascii` tokenizer. Its one column holds the message's terms as computed by
//!   [`chat_core::search::terms`], each written as lower-case hex of its UTF-8, plus the token
//!   `x<chat_id>`. So FTS5's own tokenizer, case folding and diacritics handling never decide
//!   anything: a hex token is one ASCII word to it, and a query's words reach FTS5 only as hex
//!   in double quotes, so no character of a query is ever FTS5 syntax (`"`, `*`, `NEAR`, `-`
//!   are plain words, encoded like any other). Results are exactly those of the other backends.
//! - A query is one `MATCH` of `"<hex term>" AND ... AND ("x<chat>" OR ...)` with
//!   `ORDER BY rowid DESC`: FTS5 intersects the chat tokens' doclists with the terms' from the
//!   newest end, so only the asked chats' newest matches are read. Each match is joined to
//!   `messages` (current state: a message is never found by old text) and the walk stops once
//!   it holds `limit` results and the next match is from an older millisecond than all of them
//!   (matches of one millisecond are all read, then sorted exactly by `(sent_at, chat_id,
//!   seq)`). The cost is one page, not every match: a common word in 10 million messages costs
//!   what it costs in a thousand.
//! - An append indexes the message; an edit or a delete takes its document out (and an edit
//!   puts the new terms in, under a new rowid of the same millisecond), all in the writer's
//!   transaction of that change: a search sees a change exactly when a fetch does.
//! - The write path's cost is the writer thread's, the one thread every append goes through,
//!   so: the document is tokenized before the append reaches the writer ([`document`]); the
//!   rowid lives in the message row (one index entry per append, not a table row and an index
//!   entry); and no statement on the writer uses `RETURNING` (SQLite runs those with a
//!   statement journal, and opening one makes FTS5 flush its pending terms into a new segment:
//!   a segment per append instead of one per batch). Measured in `docs/benchmarks.md`.
//! - Migration 5 created a first version of the index; migration 6 replaces it and
//!   [`backfill`] indexes every stored message with ordered rowids, in the migration's
//!   transaction.

use super::error::db;
use chat_core::search::terms;
use chat_core::{ChatId, Error, Result, SearchCursor, SearchQuery, Seq};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashSet;

/// The FTS5 token of a term: lower-case hex of its UTF-8.
fn hex(term: &str, out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(term.len() * 2);
    for b in term.bytes() {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// The FTS5 token that names a chat (`x` is not a hex digit, so it never equals a term's).
fn chat_token(chat_id: ChatId) -> String {
    format!("x{}", chat_id.get())
}

/// Bits of a document's rowid that count the documents of one millisecond.
const COUNTER_BITS: u32 = 21;

/// The largest `sent_at` prefix a rowid holds (`2^42 - 1` ms, in the year 2109); later and
/// negative times are clamped, which keeps the order (their ties are sorted exactly).
const MAX_PREFIX: i64 = (1 << 42) - 1;

/// The rowid prefix of a message sent at `sent_at` (ms).
fn prefix(sent_at: i64) -> i64 {
    sent_at.clamp(0, MAX_PREFIX)
}

/// The rowids of the documents of messages sent at `sent_at`: inclusive bounds.
fn doc_id_range(sent_at: i64) -> (i64, i64) {
    let lo = prefix(sent_at) << COUNTER_BITS;
    (lo, lo | ((1 << COUNTER_BITS) - 1))
}

/// The FTS5 document of a message of `chat_id` with text `text`: its chat token and its terms,
/// or `None` when the text has no terms (nothing to index). Pure: the store computes it before
/// handing the append to the writer, so the single writer thread does not tokenize.
pub(crate) fn document(chat_id: ChatId, text: &str) -> Option<String> {
    let terms = terms(text);
    if terms.is_empty() {
        return None;
    }
    let mut doc = chat_token(chat_id);
    for t in &terms {
        doc.push(' ');
        hex(t, &mut doc);
    }
    Some(doc)
}

/// The rowid for a new document of a message sent at `sent_at`: the next free one of that
/// millisecond (see [`doc_id_range`]). Runs on the writer.
pub(crate) fn next_doc_id(conn: &Connection, sent_at: i64) -> Result<i64> {
    let (lo, hi) = doc_id_range(sent_at);
    let last: Option<i64> = conn
        .prepare_cached("SELECT max(doc_id) FROM messages WHERE doc_id BETWEEN ?1 AND ?2")
        .and_then(|mut st| st.query_row(params![lo, hi], |r| r.get(0)))
        .map_err(db("number a search document"))?;
    match last {
        None => Ok(lo),
        Some(last) if last < hi => Ok(last + 1),
        Some(_) => Err(Error::internal(
            format!("sqlite: more than 2^{COUNTER_BITS} messages indexed at {sent_at} ms"),
            std::io::Error::other("search rowids of one millisecond exhausted"),
        )),
    }
}

/// Adds a message's [`document`] to the index under `doc_id` (the message row already names
/// `doc_id`). Runs on the writer, inside the transaction that stores the text.
pub(crate) fn add(conn: &Connection, doc_id: i64, doc: &str) -> Result<()> {
    conn.prepare_cached("INSERT INTO search_fts (rowid, terms) VALUES (?1, ?2)")
        .and_then(|mut st| st.execute(params![doc_id, doc]))
        .map_err(db("index a message for search"))?;
    Ok(())
}

/// Takes document `doc_id` out of the index. Runs on the writer, inside the transaction that
/// changes the message (which also clears or replaces its `doc_id`).
pub(crate) fn remove(conn: &Connection, doc_id: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM search_fts WHERE rowid = ?1")
        .and_then(|mut st| st.execute([doc_id]))
        .map_err(db("unindex a message"))?;
    Ok(())
}

/// (Re)indexes stored message `seq` of `chat_id` under a new rowid: notes it in the row's
/// `doc_id` (cleared when the text has no terms) and adds the document. For messages already
/// stored: the backfill, and edits.
pub(crate) fn index_stored(
    conn: &Connection,
    chat_id: ChatId,
    seq: Seq,
    sent_at: i64,
    doc: Option<&str>,
) -> Result<()> {
    let doc_id = doc.map(|_| next_doc_id(conn, sent_at)).transpose()?;
    conn.prepare_cached("UPDATE messages SET doc_id = ?3 WHERE chat_id = ?1 AND seq = ?2")
        .and_then(|mut st| st.execute(params![chat_id.get(), seq.get(), doc_id]))
        .map_err(db("note a search document"))?;
    if let (Some(id), Some(doc)) = (doc_id, doc) {
        add(conn, id, doc)?;
    }
    Ok(())
}

/// Takes message `seq` of `chat_id` out of the index (nothing when it is not in it) and clears
/// its `doc_id`.
pub(crate) fn unindex(conn: &Connection, chat_id: ChatId, seq: Seq) -> Result<()> {
    let doc_id: Option<i64> = conn
        .prepare_cached("SELECT doc_id FROM messages WHERE chat_id = ?1 AND seq = ?2")
        .and_then(|mut st| {
            st.query_row(params![chat_id.get(), seq.get()], |r| r.get(0))
                .optional()
        })
        .map_err(db("find a search document"))?
        .flatten();
    if let Some(doc_id) = doc_id {
        remove(conn, doc_id)?;
        conn.prepare_cached("UPDATE messages SET doc_id = NULL WHERE chat_id = ?1 AND seq = ?2")
            .and_then(|mut st| st.execute(params![chat_id.get(), seq.get()]))
            .map_err(db("clear a search document"))?;
    }
    Ok(())
}

/// Indexes every message that is not deleted: the backfill of migration 6, in its transaction.
/// Reads the messages in pages by key and updates each row after its page was read (never
/// while a statement over `messages` is still stepping).
pub(crate) fn backfill(conn: &Connection) -> Result<u64> {
    const PAGE: i64 = 10_000;
    let read = db("read messages to index");
    let mut st = conn
        .prepare(
            "SELECT chat_id, seq, sent_at, msg_text FROM messages \
             WHERE deleted = 0 AND (chat_id, seq) > (?1, ?2) ORDER BY chat_id, seq LIMIT ?3",
        )
        .map_err(read)?;
    let (mut chat, mut seq) = (i64::MIN, i64::MIN);
    let mut n = 0u64;
    loop {
        let page = st
            .query_map(params![chat, seq, PAGE], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<(i64, i64, i64, String)>>>())
            .map_err(db("read messages to index"))?;
        let Some(&(last_chat, last_seq, _, _)) = page.last() else {
            return Ok(n);
        };
        for (c, s, sent_at, text) in &page {
            let c = ChatId(*c);
            index_stored(conn, c, Seq(*s), *sent_at, document(c, text).as_deref())?;
            n += 1;
        }
        (chat, seq) = (last_chat, last_seq);
    }
}

/// The FTS5 query for `terms` in `chats`: every part a double-quoted hex or chat token, so
/// nothing in it is syntax but the `OR`s and `AND`s written here. The terms come first: FTS5
/// then leads the intersection with them and seeks the chats' `OR` (one seek per chat) only at
/// their matches (a common and a rare word in 10 million messages: p99 38 ms instead of 47).
fn match_expression(chats: &[ChatId], query: &SearchQuery) -> String {
    let mut out = String::new();
    for t in query.terms() {
        out.push('"');
        hex(t, &mut out);
        out.push_str("\" AND ");
    }
    out.push('(');
    for (i, &c) in chats.iter().enumerate() {
        if i > 0 {
            out.push_str(" OR ");
        }
        out.push('"');
        out.push_str(&chat_token(c));
        out.push('"');
    }
    out.push(')');
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

/// [`search`] in at most [`CHAT_CHUNK`] chats: walks the matches newest first (by rowid) and
/// stops after the page (see the module's design).
fn search_chunk(
    conn: &Connection,
    chats: &[ChatId],
    query: &SearchQuery,
    after: Option<SearchCursor>,
    limit: u32,
) -> Result<Vec<chat_core::Message>> {
    let expr = match_expression(chats, query);
    // Only documents of the cursor's millisecond or older can come after it.
    let below = after.map_or(i64::MAX, |a| doc_id_range(a.sent_at).1.saturating_add(1));
    let mut matches = conn
        .prepare_cached(
            "SELECT rowid FROM search_fts WHERE search_fts MATCH ?1 AND rowid < ?2 \
             ORDER BY rowid DESC",
        )
        .map_err(db("prepare a search"))?;
    let mut message = conn
        .prepare_cached(
            "SELECT m.chat_id, m.seq, m.sender_id, m.msg_text, m.sent_at, m.timestamp, \
                    m.client_msg_id, m.reply_to_seq, m.edited_at, m.deleted, m.reactions, m.rev \
             FROM messages AS m WHERE m.doc_id = ?1 AND m.deleted = 0",
        )
        .map_err(db("prepare a search"))?;
    let asked: HashSet<ChatId> = chats.iter().copied().collect();
    let mut rows = matches.query(params![expr, below]).map_err(db("search"))?;
    let mut found = Vec::new();
    // Once `limit` results are held: the millisecond of the last one. Matches of that
    // millisecond may still sort before it; older ones never do.
    let mut last_prefix = None;
    while let Some(row) = rows.next().map_err(db("search"))? {
        let doc_id: i64 = row.get(0).map_err(db("read a search match"))?;
        if last_prefix.is_some_and(|p| doc_id >> COUNTER_BITS < p) {
            break;
        }
        let Some(m) = message
            .query_row([doc_id], super::ops::message_from_row)
            .optional()
            .map_err(db("read a search result"))?
        else {
            continue;
        };
        // The MATCH already names only these chats; this keeps it so if that ever changed.
        if !asked.contains(&m.chat_id) || after.is_some_and(|a| !SearchCursor::of(&m).is_after(&a))
        {
            continue;
        }
        found.push(m);
        if last_prefix.is_none() && found.len() >= limit as usize {
            last_prefix = Some(doc_id >> COUNTER_BITS);
        }
    }
    Ok(found)
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
            "\"68c3a9\" AND \"6e656172\" AND \"78\" AND (\"x1\" OR \"x22\")"
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
            index_stored(
                &conn,
                ChatId(chat),
                Seq(seq),
                at,
                document(ChatId(chat), "needle").as_deref(),
            )
            .unwrap();
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

    #[test]
    fn times_outside_the_rowid_range_keep_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let conn =
            super::super::schema::open_writer(&dir.path().join("s.db"), Duration::from_secs(5))
                .unwrap();
        let times = [-5_i64, 1 << 50, 0, -1, 7, (1 << 50) + 1, -5, MAX_PREFIX];
        for (i, at) in times.iter().enumerate() {
            let seq = i as i64 + 1;
            conn.execute(
                "INSERT INTO messages (chat_id, seq, sender_id, msg_text, sent_at, rev) \
                 VALUES (1, ?1, 1, 'needle', ?2, ?1)",
                params![seq, at],
            )
            .unwrap();
            index_stored(
                &conn,
                ChatId(1),
                Seq(seq),
                *at,
                document(ChatId(1), "needle").as_deref(),
            )
            .unwrap();
        }
        let q = SearchQuery::parse("needle").unwrap();
        let want: Vec<(i64, i64)> = vec![(1 << 50) + 1, 1 << 50, MAX_PREFIX, 7, 0, -1, -5, -5]
            .into_iter()
            .zip([6, 2, 8, 5, 3, 4, 7, 1])
            .collect();
        let mut paged = Vec::new();
        loop {
            let after = paged.last().map(|&(at, seq)| SearchCursor {
                sent_at: at,
                chat_id: ChatId(1),
                seq: Seq(seq),
            });
            let page = search(&conn, &[ChatId(1)], &q, after, 1).unwrap();
            let Some(m) = page.first() else { break };
            paged.push((m.sent_at, m.seq.get()));
        }
        assert_eq!(paged, want);
    }

    #[test]
    fn document_lookups_use_the_doc_id_index() {
        let dir = tempfile::tempdir().unwrap();
        let conn =
            super::super::schema::open_writer(&dir.path().join("s.db"), Duration::from_secs(5))
                .unwrap();
        for sql in [
            "SELECT max(doc_id) FROM messages WHERE doc_id BETWEEN 1 AND 2",
            "SELECT msg_text FROM messages AS m WHERE m.doc_id = 1 AND m.deleted = 0",
        ] {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map([], |r| r.get(3))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert!(
                plan.iter().any(|p| p.contains("messages_by_doc")),
                "{sql}: {plan:?}"
            );
        }
    }
}
