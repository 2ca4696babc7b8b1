//! [`MessageStore`] on MySQL: the append transaction over `chat_seq` and `messages`, and paging.
//!
//! See the module doc of [`crate::mysql`] for why the counter is its own table and how the row
//! lock keeps `seq` dense; history pages (`FetchQuery::Before`) may be answered by a replica when
//! the page proves itself complete.

use super::error::{bad_row, Failure};
use super::routing::Freshness;
use super::{decode, MysqlStore};
use async_trait::async_trait;
use chat_core::{
    Appended, ChatId, FetchQuery, Message, MessageStore, NewMessage, Result, Seq, UserId,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Row, Transaction, TxOpts};
use std::collections::HashMap;

/// Columns of a [`Message`], in the order [`message_from`] reads them.
const MESSAGE_COLS: &str = "chat_id, seq, sender_id, msg_text, sent_at, timestamp, client_msg_id";
/// Chat ids per `IN (...)` in `last_seqs`.
const LAST_SEQS_CHUNK: usize = 500;
/// How many times an append whose dedupe key collided looks for the stored message (it can
/// only be missing if it was deleted in between, which this store never does).
const DEDUPE_ATTEMPTS: u32 = 3;

/// A message row.
fn message_from(row: Row) -> Result<Message, Failure> {
    type Cols = (i64, i64, i64, String, i64, Option<i64>, Option<String>);
    let (chat_id, seq, sender_id, msg_text, sent_at, timestamp, client_msg_id): Cols =
        decode("messages", row)?;
    Ok(Message {
        chat_id: ChatId(chat_id),
        seq: Seq(seq),
        sender_id: UserId(sender_id),
        msg_text,
        sent_at,
        timestamp,
        client_msg_id,
        reply_to_seq: None,
        edited_at: None,
        deleted: false,
        reactions: Vec::new(),
        rev: chat_core::Rev(seq),
    })
}

/// Rows into messages.
fn messages_from(rows: Vec<Row>) -> Result<Vec<Message>, Failure> {
    rows.into_iter().map(message_from).collect()
}

/// Allocates the next `seq` of the chat and inserts the message, inside `tx`. Returns the `seq`.
async fn append_in(tx: &mut Transaction<'_>, m: &NewMessage) -> Result<Seq, Failure> {
    // Creates the counter at 1 or increments it, holding the row's exclusive lock until the
    // transaction ends: the next append to this chat waits here. LAST_INSERT_ID(expr) hands the
    // new value back in the OK packet, saving a SELECT.
    tx.exec_drop(
        "INSERT INTO chat_seq (chat_id, last_seq) VALUES (?, LAST_INSERT_ID(1)) \
         ON DUPLICATE KEY UPDATE last_seq = LAST_INSERT_ID(last_seq + 1)",
        (m.chat_id.get(),),
    )
    .await?;
    let seq = match tx.last_insert_id().and_then(|v| i64::try_from(v).ok()) {
        Some(seq) if seq > 0 => seq,
        // A server that does not report it: read the counter (our own locked row).
        _ => {
            let row: Option<Row> = tx
                .exec_first(
                    "SELECT last_seq FROM chat_seq WHERE chat_id = ?",
                    (m.chat_id.get(),),
                )
                .await?;
            let row = row.ok_or_else(|| bad_row("chat_seq", "counter row missing"))?;
            let (seq,): (i64,) = decode("chat_seq", row)?;
            seq
        }
    };
    tx.exec_drop(
        "INSERT INTO messages \
         (chat_id, seq, sender_id, msg_text, sent_at, timestamp, client_msg_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            m.chat_id.get(),
            seq,
            m.sender_id.get(),
            &m.msg_text,
            m.sent_at,
            m.timestamp,
            m.client_msg_id.as_deref(),
        ),
    )
    .await?;
    Ok(Seq(seq))
}

/// The message stored under the dedupe key of `m`, if any.
async fn find_duplicate(
    conn: &mut mysql_async::Conn,
    m: &NewMessage,
    client_msg_id: &str,
) -> Result<Option<Message>, Failure> {
    let sql = format!(
        "SELECT {MESSAGE_COLS} FROM messages \
         WHERE chat_id = ? AND sender_id = ? \
         AND client_msg_hash = UNHEX(SHA2(?, 256)) AND client_msg_id = ?"
    );
    let row: Option<Row> = conn
        .exec_first(
            sql,
            (
                m.chat_id.get(),
                m.sender_id.get(),
                client_msg_id,
                client_msg_id,
            ),
        )
        .await?;
    row.map(message_from).transpose()
}

/// What one append transaction did.
enum Outcome {
    /// Stored at this `seq`.
    Stored(Seq),
    /// A message with the same dedupe key was already stored (returned).
    Duplicate(Message),
}

/// Whether a `Before` page read on a replica is complete: messages are immutable and a chat's
/// `seq`s reach a replica in order (a prefix `1..=k`), so the page is the primary's answer iff it
/// ends at `before - 1` and holds `min(limit, before - 1)` messages. An empty page below `seq` 1
/// is complete too.
fn before_page_is_complete(before: Seq, limit: u32, page: &[Message]) -> bool {
    let want = i64::from(limit).min(before.get() - 1).max(0);
    let len = i64::try_from(page.len()).unwrap_or(i64::MAX);
    len == want && (want == 0 || page.last().map(|m| m.seq.get()) == Some(before.get() - 1))
}

#[async_trait]
impl MessageStore for MysqlStore {
    async fn append(&self, message: NewMessage) -> Result<Appended> {
        let m = &message;
        // Wait for this chat's turn before taking a connection (see `gate`), no longer than a
        // connection may take: a chat whose appends cannot keep up answers 503, retryable.
        let wait = self.pools.acquire_timeout();
        let _turn = tokio::time::timeout(wait, self.append_gates.enter(m.chat_id))
            .await
            .map_err(|_| chat_core::Error::Unavailable {
                message: format!(
                    "mysql: appends to chat {} are backed up (waited {wait:?} for a turn)",
                    m.chat_id
                ),
                source: None,
            })?;
        for _ in 0..DEDUPE_ATTEMPTS {
            let outcome = self
                .pools
                .on_primary("append", |mut conn| async move {
                    let mut tx = conn.start_transaction(TxOpts::default()).await?;
                    match append_in(&mut tx, m).await {
                        Ok(seq) => {
                            // Acked only after COMMIT returned: the message is durable.
                            tx.commit().await?;
                            Ok(Some(Outcome::Stored(seq)))
                        }
                        Err(f) => {
                            // Undo the counter increment with the failed insert: no hole.
                            let _ = tx.rollback().await;
                            let Some(cmid) = m.client_msg_id.as_deref() else {
                                return Err(f);
                            };
                            if !f.is_duplicate_key() {
                                return Err(f);
                            }
                            // A retry of a stored message (possibly racing its twin, which
                            // committed first): answer with the stored one.
                            Ok(find_duplicate(&mut conn, m, cmid)
                                .await?
                                .map(Outcome::Duplicate))
                        }
                    }
                })
                .await?;
            match outcome {
                Some(Outcome::Stored(seq)) => {
                    return Ok(Appended {
                        // Messages here never change yet: an append's rev is its seq.
                        message: m.clone().stored(seq, chat_core::Rev(seq.get())),
                        created: true,
                    });
                }
                Some(Outcome::Duplicate(stored)) => {
                    return Ok(Appended {
                        message: stored,
                        created: false,
                    })
                }
                None => {
                    tracing::warn!(chat_id = %m.chat_id, "mysql: dedupe key collided but no stored message; retrying");
                }
            }
        }
        Err(chat_core::Error::Internal {
            message: format!(
                "mysql: append to chat {}: duplicate key without a stored message",
                m.chat_id
            ),
            source: None,
        })
    }

    async fn fetch(&self, chat_id: ChatId, query: FetchQuery) -> Result<Vec<Message>> {
        let chat = chat_id.get();
        match query {
            FetchQuery::Latest { limit } => {
                let sql = format!(
                    "SELECT {MESSAGE_COLS} FROM messages WHERE chat_id = ? \
                     ORDER BY seq DESC LIMIT ?"
                );
                let sql = sql.as_str();
                // Primary: a fetch right after a send must see it.
                self.pools
                    .on_primary("fetch latest", |mut conn| async move {
                        let rows: Vec<Row> = conn.exec(sql, (chat, limit)).await?;
                        let mut page = messages_from(rows)?;
                        page.reverse();
                        Ok(page)
                    })
                    .await
            }
            FetchQuery::After { after, limit } => {
                let sql = format!(
                    "SELECT {MESSAGE_COLS} FROM messages WHERE chat_id = ? AND seq > ? \
                     ORDER BY seq ASC LIMIT ?"
                );
                let sql = sql.as_str();
                // Primary: catch-up after a reconnect must reach the newest message.
                self.pools
                    .on_primary("fetch after", |mut conn| async move {
                        let rows: Vec<Row> = conn.exec(sql, (chat, after.get(), limit)).await?;
                        messages_from(rows)
                    })
                    .await
            }
            FetchQuery::Before { before, limit } => {
                let sql = format!(
                    "SELECT {MESSAGE_COLS} FROM messages WHERE chat_id = ? AND seq < ? \
                     ORDER BY seq DESC LIMIT ?"
                );
                let sql = sql.as_str();
                let complete =
                    move |page: &Vec<Message>| before_page_is_complete(before, limit, page);
                self.pools
                    .on_replica(
                        "fetch before",
                        Freshness::SelfEvident(&complete),
                        |mut conn| async move {
                            let rows: Vec<Row> =
                                conn.exec(sql, (chat, before.get(), limit)).await?;
                            let mut page = messages_from(rows)?;
                            page.reverse();
                            Ok(page)
                        },
                    )
                    .await
            }
        }
    }

    async fn last_seq(&self, chat_id: ChatId) -> Result<Seq> {
        self.pools
            .on_primary("last_seq", |mut conn| async move {
                let row: Option<Row> = conn
                    .exec_first(
                        "SELECT last_seq FROM chat_seq WHERE chat_id = ?",
                        (chat_id.get(),),
                    )
                    .await?;
                let Some(row) = row else {
                    return Ok(Seq::ZERO);
                };
                let (seq,): (i64,) = decode("chat_seq", row)?;
                Ok(Seq(seq))
            })
            .await
    }

    async fn last_seqs(&self, chat_ids: &[ChatId]) -> Result<Vec<Seq>> {
        let mut known: HashMap<i64, i64> = HashMap::with_capacity(chat_ids.len());
        for chunk in chat_ids.chunks(LAST_SEQS_CHUNK) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql =
                format!("SELECT chat_id, last_seq FROM chat_seq WHERE chat_id IN ({placeholders})");
            let sql = sql.as_str();
            let ids: Vec<i64> = chunk.iter().map(|c| c.get()).collect();
            let ids = &ids;
            let rows = self
                .pools
                .on_primary("last_seqs", |mut conn| async move {
                    let rows: Vec<Row> = conn.exec(sql, ids.clone()).await?;
                    rows.into_iter()
                        .map(|row| decode::<(i64, i64)>("chat_seq", row))
                        .collect::<Result<Vec<_>, Failure>>()
                })
                .await?;
            known.extend(rows);
        }
        Ok(chat_ids
            .iter()
            .map(|c| Seq(known.get(&c.get()).copied().unwrap_or(0)))
            .collect())
    }

    async fn health(&self) -> Result<()> {
        // The same primary ping as the metadata side.
        chat_core::MetadataStore::health(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(seqs: &[i64]) -> Vec<Message> {
        seqs.iter()
            .map(|&s| Message {
                chat_id: ChatId(1),
                seq: Seq(s),
                sender_id: UserId(1),
                msg_text: "x".into(),
                sent_at: 0,
                timestamp: None,
                client_msg_id: None,
                reply_to_seq: None,
                edited_at: None,
                deleted: false,
                reactions: Vec::new(),
                rev: chat_core::Rev(s),
            })
            .collect()
    }

    #[test]
    fn before_pages_prove_themselves_complete() {
        // Full page ending right below `before`.
        assert!(before_page_is_complete(Seq(11), 3, &page(&[8, 9, 10])));
        // The replica lags: it has 1..=9 only.
        assert!(!before_page_is_complete(Seq(11), 3, &page(&[7, 8, 9])));
        // Short page at the start of the chat.
        assert!(before_page_is_complete(Seq(3), 10, &page(&[1, 2])));
        assert!(!before_page_is_complete(Seq(3), 10, &page(&[1])));
        // Nothing below seq 1.
        assert!(before_page_is_complete(Seq(1), 10, &page(&[])));
        // Empty replica answer for a chat that has messages below `before`.
        assert!(!before_page_is_complete(Seq(5), 10, &page(&[])));
        // Limit 0 asks for nothing.
        assert!(before_page_is_complete(Seq(5), 0, &page(&[])));
    }
}
