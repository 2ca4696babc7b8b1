//! The SQL of every store operation, as plain functions on a connection.
//!
//! Write functions run on the writer thread inside the batch transaction (each in its own
//! savepoint, see `writer.rs`); read functions run on a reader connection. All statements are
//! cached per connection (`prepare_cached`), so a hot path parses its SQL once.

use super::error::{db, db_error, violation, Violation};
use chat_core::{
    Appended, Chat, ChatId, Error, FetchQuery, Member, Message, MessageChange, Millis, NewChat,
    NewMessage, NewSession, NewUser, Result, Rev, Role, Seq, Session, TokenHash, User,
    UserCredentials, UserId,
};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::collections::BTreeSet;

/// The columns of a message, in the order [`message_from_row`] reads them.
const MESSAGE_COLUMNS: &str = "chat_id, seq, sender_id, msg_text, sent_at, timestamp, \
     client_msg_id, reply_to_seq, edited_at, deleted, reactions, rev";

/// A message from a row of [`MESSAGE_COLUMNS`] (`activity` names them with a table prefix: keep
/// the two lists in step).
pub(crate) fn message_from_row(r: &Row<'_>) -> rusqlite::Result<Message> {
    let reactions: String = r.get(10)?;
    let reactions = serde_json::from_str(&reactions).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(10, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let mut m = Message::new(
        ChatId(r.get(0)?),
        Seq(r.get(1)?),
        UserId(r.get(2)?),
        r.get::<_, String>(3)?,
        r.get(4)?,
    );
    m.timestamp = r.get(5)?;
    m.client_msg_id = r.get(6)?;
    m.reply_to_seq = r.get::<_, Option<i64>>(7)?.map(Seq);
    m.edited_at = r.get(8)?;
    m.deleted = r.get(9)?;
    m.reactions = reactions;
    m.rev = Rev(r.get(11)?);
    Ok(m)
}

/// A role stored as text.
pub(crate) fn parse_role(s: &str) -> Result<Role> {
    Role::parse(s).ok_or_else(|| Error::Internal {
        message: format!("sqlite: unknown role {s:?} stored in user_chat"),
        source: None,
    })
}

/// A page limit as an SQL integer.
fn sql_limit(limit: u32) -> i64 {
    i64::from(limit)
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// Appends a message: returns the stored one if `(chat, sender, client_msg_id)` exists, else
/// takes the chat's next seq and inserts the row, and indexes it for search with `doc` (its
/// `search::document`, computed before the writer). Runs on the writer.
pub(crate) fn append(conn: &Connection, m: NewMessage, doc: Option<&str>) -> Result<Appended> {
    if let Some(client_msg_id) = &m.client_msg_id {
        let existing = conn
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages \
                 WHERE chat_id = ?1 AND sender_id = ?2 AND client_msg_id = ?3"
            ))
            .and_then(|mut st| {
                st.query_row(
                    params![m.chat_id.get(), m.sender_id.get(), client_msg_id],
                    message_from_row,
                )
                .optional()
            })
            .map_err(db("look up a client_msg_id"))?;
        if let Some(message) = existing {
            return Ok(Appended {
                message,
                created: false,
            });
        }
    }
    // A new message takes the chat's next seq and its next revision.
    let (seq, rev) = next_seq_and_rev(conn, m.chat_id)?;
    // The search document's rowid goes into the row itself (see `search.rs`).
    let doc_id = doc
        .map(|_| super::search::next_doc_id(conn, m.sent_at))
        .transpose()?;
    conn.prepare_cached(&format!(
        "INSERT INTO messages ({MESSAGE_COLUMNS}, doc_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, 0, '[]', ?9, ?10)"
    ))
    .and_then(|mut st| {
        st.execute(params![
            m.chat_id.get(),
            seq,
            m.sender_id.get(),
            m.msg_text,
            m.sent_at,
            m.timestamp,
            m.client_msg_id,
            m.reply_to_seq.map(Seq::get),
            rev,
            doc_id,
        ])
    })
    .map_err(|e| match violation(&e) {
        // The counter is behind the rows: someone wrote messages without it. Never overwrite.
        Some(Violation::Unique) => Error::internal(
            format!("sqlite: seq {seq} of chat {} is already taken", m.chat_id),
            e,
        ),
        _ => db_error("insert a message", e),
    })?;
    if let (Some(id), Some(doc)) = (doc_id, doc) {
        super::search::add(conn, id, doc)?;
    }
    Ok(Appended {
        message: m.stored(Seq(seq), Rev(rev)),
        created: true,
    })
}

/// Takes chat `chat_id`'s next seq and next revision (creating its counter row at 1, 1).
///
/// Plain `UPDATE`, `INSERT` and `SELECT`, never `RETURNING`: SQLite runs a `RETURNING`
/// statement with a statement journal (it is built like a trigger), and every statement
/// journal opened after a search document was written makes FTS5 flush its pending terms into
/// a new segment (one segment per append instead of one per batch: a third of the appends/s,
/// measured). The same holds for every statement the writer runs often; see `search.rs`.
fn next_seq_and_rev(conn: &Connection, chat_id: ChatId) -> Result<(i64, i64)> {
    let bumped = conn
        .prepare_cached(
            "UPDATE chat_seq SET last_seq = last_seq + 1, last_rev = last_rev + 1 \
             WHERE chat_id = ?1",
        )
        .and_then(|mut st| st.execute([chat_id.get()]))
        .map_err(db("take the next seq"))?;
    if bumped == 0 {
        conn.prepare_cached("INSERT INTO chat_seq (chat_id, last_seq, last_rev) VALUES (?1, 1, 1)")
            .and_then(|mut st| st.execute([chat_id.get()]))
            .map_err(db("start a chat's seq"))?;
        return Ok((1, 1));
    }
    conn.prepare_cached("SELECT last_seq, last_rev FROM chat_seq WHERE chat_id = ?1")
        .and_then(|mut st| st.query_row([chat_id.get()], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(db("take the next seq"))
}

/// Applies one change to a stored message and gives it the chat's next revision; a change
/// that changes nothing (a repeated delete or reaction, the same text) takes none and returns
/// the message as it is. Runs on the writer, so the read-modify-write cannot race.
pub(crate) fn change(
    conn: &Connection,
    chat_id: ChatId,
    seq: Seq,
    change: &MessageChange,
) -> Result<Message> {
    let current = conn
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND seq = ?2"
        ))
        .and_then(|mut st| {
            st.query_row(params![chat_id.get(), seq.get()], message_from_row)
                .optional()
        })
        .map_err(db("read a message to change"))?
        .ok_or_else(|| Error::NotFound(format!("message {seq} of chat {chat_id}")))?;
    let Some(mut next) = chat_core::apply_change(&current, change)? else {
        return Ok(current);
    };
    // No `RETURNING` (see `next_seq_and_rev`).
    conn.prepare_cached("UPDATE chat_seq SET last_rev = last_rev + 1 WHERE chat_id = ?1")
        .and_then(|mut st| st.execute([chat_id.get()]))
        .map_err(db("take the next rev"))?;
    let rev: i64 = conn
        .prepare_cached("SELECT last_rev FROM chat_seq WHERE chat_id = ?1")
        .and_then(|mut st| st.query_row([chat_id.get()], |r| r.get(0)))
        .map_err(db("take the next rev"))?;
    let reactions = serde_json::to_string(&next.reactions)
        .map_err(|e| Error::internal("sqlite: encode reactions", e))?;
    conn.prepare_cached(
        "UPDATE messages SET msg_text = ?3, edited_at = ?4, deleted = ?5, reactions = ?6, \
         rev = ?7 WHERE chat_id = ?1 AND seq = ?2",
    )
    .and_then(|mut st| {
        st.execute(params![
            chat_id.get(),
            seq.get(),
            next.msg_text,
            next.edited_at,
            next.deleted,
            reactions,
            rev,
        ])
    })
    .map_err(db("store a changed message"))?;
    // The search index follows the text in the same transaction: an edit is found by its new
    // words only, a tombstone by none.
    if next.msg_text != current.msg_text || next.deleted != current.deleted {
        super::search::unindex(conn, chat_id, seq)?;
        if !next.deleted {
            let doc = super::search::document(chat_id, &next.msg_text);
            super::search::index_stored(conn, chat_id, seq, next.sent_at, doc.as_deref())?;
        }
    }
    next.rev = Rev(rev);
    Ok(next)
}

/// The change feed: messages whose latest change is above `after`, by ascending revision.
pub(crate) fn changes(
    conn: &Connection,
    chat_id: ChatId,
    after: Rev,
    limit: u32,
) -> Result<Vec<Message>> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND rev > ?2 \
             ORDER BY rev LIMIT ?3"
        ))
        .map_err(db("prepare the change feed"))?;
    let rows = st
        .query_map(
            params![chat_id.get(), after.get(), sql_limit(limit)],
            message_from_row,
        )
        .map_err(db("read the change feed"))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db("read the change feed"))
}

/// One page of a chat, ascending. Every variant is one range scan of the primary key.
pub(crate) fn fetch(conn: &Connection, chat_id: ChatId, query: FetchQuery) -> Result<Vec<Message>> {
    let chat = chat_id.get();
    let collect = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> Result<Vec<Message>> {
        let mut st = conn.prepare_cached(sql).map_err(db("prepare a fetch"))?;
        let rows = st
            .query_map(params, message_from_row)
            .map_err(db("fetch messages"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db("read a message row"))
    };
    match query {
        FetchQuery::Latest { limit } => {
            let mut page = collect(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 \
                     ORDER BY seq DESC LIMIT ?2"
                ),
                &[&chat, &sql_limit(limit)],
            )?;
            page.reverse();
            Ok(page)
        }
        FetchQuery::Before { before, limit } => {
            let mut page = collect(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND seq < ?2 \
                     ORDER BY seq DESC LIMIT ?3"
                ),
                &[&chat, &before.get(), &sql_limit(limit)],
            )?;
            page.reverse();
            Ok(page)
        }
        FetchQuery::After { after, limit } => collect(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND seq > ?2 \
                 ORDER BY seq ASC LIMIT ?3"
            ),
            &[&chat, &after.get(), &sql_limit(limit)],
        ),
    }
}

/// The newest seq of each chat, in order; `Seq::ZERO` for a chat without messages.
pub(crate) fn last_seqs(conn: &Connection, chat_ids: &[ChatId]) -> Result<Vec<Seq>> {
    let mut st = conn
        .prepare_cached("SELECT last_seq FROM chat_seq WHERE chat_id = ?1")
        .map_err(db("prepare last_seq"))?;
    chat_ids
        .iter()
        .map(|c| {
            st.query_row([c.get()], |r| r.get::<_, i64>(0))
                .optional()
                .map(|s| s.map_or(Seq::ZERO, Seq))
                .map_err(db("read last_seq"))
        })
        .collect()
}

/// The newest rev of each chat, in order; `Rev::ZERO` for a chat without messages.
pub(crate) fn last_revs(conn: &Connection, chat_ids: &[ChatId]) -> Result<Vec<Rev>> {
    let mut st = conn
        .prepare_cached("SELECT last_rev FROM chat_seq WHERE chat_id = ?1")
        .map_err(db("prepare last_rev"))?;
    chat_ids
        .iter()
        .map(|c| {
            st.query_row([c.get()], |r| r.get::<_, i64>(0))
                .optional()
                .map(|s| s.map_or(Rev::ZERO, Rev))
                .map_err(db("read last_rev"))
        })
        .collect()
}

/// Where each chat stands for a reader at the paired marker (`MessageStore::activity`), in the
/// order asked, from one read transaction (one snapshot for the whole batch). Per chat: its
/// counter row for `last_seq`, the newest message by the primary key, and the tombstones above
/// the marker counted from the partial index `messages_tombstones` (deleted messages only), so
/// no message between the marker and `last_seq` is read. Runs on a reader.
pub(crate) fn activity(
    conn: &Connection,
    chats: &[(ChatId, Seq)],
) -> Result<Vec<chat_core::ChatActivity>> {
    // A deferred transaction on a `query_only` connection: its snapshot is taken at the first
    // SELECT and held until the end, so the counters, the messages and the tombstones agree.
    let tx = conn
        .unchecked_transaction()
        .map_err(db("begin the activity read"))?;
    let out = {
        // One statement per chat: the head row's `last_seq` joined to that message (messages
        // are never removed, only tombstoned, so the newest message is the one at `last_seq`).
        let mut newest = tx
            .prepare_cached(
                "SELECT m.chat_id, m.seq, m.sender_id, m.msg_text, m.sent_at, m.timestamp, \
                        m.client_msg_id, m.reply_to_seq, m.edited_at, m.deleted, m.reactions, m.rev \
                 FROM chat_seq AS cs \
                 JOIN messages AS m ON m.chat_id = cs.chat_id AND m.seq = cs.last_seq \
                 WHERE cs.chat_id = ?1",
            )
            .map_err(db("prepare the newest message"))?;
        // INDEXED BY: the count must come from the tombstone index, never from a range scan of
        // the primary key over an unread run (SQLite fails the statement rather than do that).
        let mut tombstones = tx
            .prepare_cached(
                "SELECT count(*) FROM messages INDEXED BY messages_tombstones \
                 WHERE chat_id = ?1 AND seq > ?2 AND deleted = 1",
            )
            .map_err(db("prepare the tombstone count"))?;
        let mut out = Vec::with_capacity(chats.len());
        for &(chat_id, marker) in chats {
            let Some(last_message) = newest
                .query_row([chat_id.get()], message_from_row)
                .optional()
                .map_err(db("read the newest message"))?
            else {
                out.push(chat_core::ChatActivity {
                    last_seq: Seq::ZERO,
                    last_message: None,
                    deleted_after: 0,
                });
                continue;
            };
            let last_seq = last_message.seq;
            let deleted_after = if marker < last_seq {
                let n: i64 = tombstones
                    .query_row(params![chat_id.get(), marker.get()], |r| r.get(0))
                    .map_err(db("count tombstones"))?;
                u64::try_from(n).unwrap_or(0)
            } else {
                0
            };
            out.push(chat_core::ChatActivity {
                last_seq,
                last_message: Some(last_message),
                deleted_after,
            });
        }
        out
    };
    tx.commit().map_err(db("end the activity read"))?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Users and sessions
// ---------------------------------------------------------------------------------------------

/// Creates a user; a taken email is `Conflict`. Runs on the writer.
pub(crate) fn create_user(conn: &Connection, u: NewUser) -> Result<User> {
    let email = u.email.to_lowercase();
    conn.prepare_cached(
        "INSERT INTO users (email, pw_hash, display_name, created_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut st| st.execute(params![email, u.pw_hash, u.display_name, u.created_at]))
    .map_err(|e| match violation(&e) {
        Some(Violation::Unique) => Error::Conflict("email already registered".to_owned()),
        _ => db_error("insert a user", e),
    })?;
    Ok(User {
        user_id: UserId(conn.last_insert_rowid()),
        email,
        display_name: u.display_name,
        created_at: u.created_at,
    })
}

/// A user by id.
pub(crate) fn user(conn: &Connection, user_id: UserId) -> Result<Option<User>> {
    conn.prepare_cached(
        "SELECT user_id, email, display_name, created_at FROM users WHERE user_id = ?1",
    )
    .and_then(|mut st| {
        st.query_row([user_id.get()], |r| {
            Ok(User {
                user_id: UserId(r.get(0)?),
                email: r.get(1)?,
                display_name: r.get(2)?,
                created_at: r.get(3)?,
            })
        })
        .optional()
    })
    .map_err(db("read a user"))
}

/// A user and password hash by email (compared lower-cased, as stored).
pub(crate) fn user_credentials(conn: &Connection, email: &str) -> Result<Option<UserCredentials>> {
    conn.prepare_cached(
        "SELECT user_id, email, display_name, created_at, pw_hash FROM users WHERE email = ?1",
    )
    .and_then(|mut st| {
        st.query_row([email.to_lowercase()], |r| {
            Ok(UserCredentials {
                user: User {
                    user_id: UserId(r.get(0)?),
                    email: r.get(1)?,
                    display_name: r.get(2)?,
                    created_at: r.get(3)?,
                },
                pw_hash: r.get(4)?,
            })
        })
        .optional()
    })
    .map_err(db("read credentials"))
}

/// Stores a session. An unknown user is `NotFound`, a token hash already stored `Conflict`.
pub(crate) fn create_session(conn: &Connection, s: NewSession) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut st| {
        st.execute(params![
            &s.token_hash.as_bytes()[..],
            s.user_id.get(),
            s.created_at,
            s.expires_at
        ])
    })
    .map_err(|e| match violation(&e) {
        Some(Violation::Unique) => Error::Conflict("session token already exists".to_owned()),
        Some(Violation::ForeignKey) => Error::NotFound(format!("user {}", s.user_id)),
        None => db_error("insert a session", e),
    })?;
    Ok(())
}

/// A session by token hash.
pub(crate) fn session(conn: &Connection, token_hash: &TokenHash) -> Result<Option<Session>> {
    conn.prepare_cached("SELECT user_id, expires_at FROM sessions WHERE token_hash = ?1")
        .and_then(|mut st| {
            st.query_row([&token_hash.as_bytes()[..]], |r| {
                Ok(Session {
                    user_id: UserId(r.get(0)?),
                    expires_at: r.get(1)?,
                })
            })
            .optional()
        })
        .map_err(db("read a session"))
}

/// Deletes a session; whether it existed.
pub(crate) fn delete_session(conn: &Connection, token_hash: &TokenHash) -> Result<bool> {
    conn.prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")
        .and_then(|mut st| st.execute([&token_hash.as_bytes()[..]]))
        .map(|n| n > 0)
        .map_err(db("delete a session"))
}

/// Deletes the sessions that expired before `now`; how many.
pub(crate) fn delete_expired_sessions(conn: &Connection, now: Millis) -> Result<u64> {
    conn.prepare_cached("DELETE FROM sessions WHERE expires_at < ?1")
        .and_then(|mut st| st.execute([now]))
        .map(|n| u64::try_from(n).unwrap_or(u64::MAX))
        .map_err(db("delete expired sessions"))
}

// ---------------------------------------------------------------------------------------------
// Chats and members
// ---------------------------------------------------------------------------------------------

/// Whether a user exists.
pub(crate) fn user_exists(conn: &Connection, user_id: UserId) -> Result<bool> {
    conn.prepare_cached("SELECT 1 FROM users WHERE user_id = ?1")
        .and_then(|mut st| st.exists([user_id.get()]))
        .map_err(db("check a user"))
}

/// Inserts one membership row.
pub(crate) fn insert_member(
    conn: &Connection,
    chat_id: ChatId,
    m: Member,
    joined_at: Millis,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO user_chat (chat_id, user_id, role, joined_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut st| {
        st.execute(params![
            chat_id.get(),
            m.user_id.get(),
            m.role.as_str(),
            joined_at
        ])
    })
    .map_err(|e| match violation(&e) {
        Some(Violation::ForeignKey) => Error::NotFound(format!("user {}", m.user_id)),
        _ => db_error("insert a member", e),
    })?;
    Ok(())
}

/// Creates a chat with its owner and members; any unknown user is `NotFound` and nothing is
/// written (the savepoint of the op is rolled back). Runs on the writer.
pub(crate) fn create_chat(conn: &Connection, c: NewChat) -> Result<(Chat, Vec<Member>)> {
    let others: BTreeSet<UserId> = c
        .member_ids
        .iter()
        .copied()
        .filter(|&u| u != c.owner_id)
        .collect();
    for &u in std::iter::once(&c.owner_id).chain(&others) {
        if !user_exists(conn, u)? {
            return Err(Error::NotFound(format!("user {u}")));
        }
    }
    conn.prepare_cached("INSERT INTO chats (chat_name, owner_id, created_at) VALUES (?1, ?2, ?3)")
        .and_then(|mut st| st.execute(params![c.chat_name, c.owner_id.get(), c.created_at]))
        .map_err(db("insert a chat"))?;
    let chat = Chat {
        chat_id: ChatId(conn.last_insert_rowid()),
        chat_name: c.chat_name,
        owner_id: c.owner_id,
        created_at: c.created_at,
        kind: chat_core::ChatKind::Group,
    };
    let mut members: Vec<Member> = std::iter::once(Member {
        user_id: c.owner_id,
        role: Role::Owner,
    })
    .chain(others.into_iter().map(|user_id| Member {
        user_id,
        role: Role::Member,
    }))
    .collect();
    for &m in &members {
        insert_member(conn, chat.chat_id, m, c.created_at)?;
    }
    members.sort_by_key(|m| m.user_id);
    Ok((chat, members))
}

/// A chat by id.
pub(crate) fn chat(conn: &Connection, chat_id: ChatId) -> Result<Option<Chat>> {
    conn.prepare_cached(
        "SELECT chat_id, chat_name, owner_id, created_at, kind FROM chats WHERE chat_id = ?1",
    )
    .and_then(|mut st| {
        st.query_row([chat_id.get()], |r| {
            Ok(Chat {
                chat_id: ChatId(r.get(0)?),
                chat_name: r.get(1)?,
                owner_id: UserId(r.get(2)?),
                created_at: r.get(3)?,
                kind: kind_of(&r.get::<_, String>(4)?),
            })
        })
        .optional()
    })
    .map_err(db("read a chat"))
}

/// Every chat of a user with the user's role, by chat id (the `(user_id, chat_id)` index).
pub(crate) fn chats_of_user(conn: &Connection, user_id: UserId) -> Result<Vec<(Chat, Role)>> {
    let mut st = conn
        .prepare_cached(
            "SELECT c.chat_id, c.chat_name, c.owner_id, c.created_at, uc.role, c.kind \
             FROM user_chat AS uc JOIN chats AS c ON c.chat_id = uc.chat_id \
             WHERE uc.user_id = ?1 ORDER BY uc.chat_id",
        )
        .map_err(db("prepare chats_of_user"))?;
    let rows = st
        .query_map([user_id.get()], |r| {
            Ok((
                Chat {
                    chat_id: ChatId(r.get(0)?),
                    chat_name: r.get(1)?,
                    owner_id: UserId(r.get(2)?),
                    created_at: r.get(3)?,
                    kind: kind_of(&r.get::<_, String>(5)?),
                },
                r.get::<_, String>(4)?,
            ))
        })
        .map_err(db("read chats of a user"))?;
    rows.map(|row| {
        let (chat, role) = row.map_err(db("read a chat row"))?;
        Ok((chat, parse_role(&role)?))
    })
    .collect()
}

/// Every member of a chat, by user id.
pub(crate) fn members(conn: &Connection, chat_id: ChatId) -> Result<Vec<Member>> {
    let mut st = conn
        .prepare_cached("SELECT user_id, role FROM user_chat WHERE chat_id = ?1 ORDER BY user_id")
        .map_err(db("prepare members"))?;
    let rows = st
        .query_map([chat_id.get()], |r| {
            Ok((UserId(r.get(0)?), r.get::<_, String>(1)?))
        })
        .map_err(db("read members"))?;
    rows.map(|row| {
        let (user_id, role) = row.map_err(db("read a member row"))?;
        Ok(Member {
            user_id,
            role: parse_role(&role)?,
        })
    })
    .collect()
}

/// A user's role in a chat.
pub(crate) fn role(conn: &Connection, chat_id: ChatId, user_id: UserId) -> Result<Option<Role>> {
    let role: Option<String> = conn
        .prepare_cached("SELECT role FROM user_chat WHERE chat_id = ?1 AND user_id = ?2")
        .and_then(|mut st| {
            st.query_row([chat_id.get(), user_id.get()], |r| r.get(0))
                .optional()
        })
        .map_err(db("read a role"))?;
    role.map(|r| parse_role(&r)).transpose()
}

/// Adds a member: `false` if already one; unknown chat or user `NotFound`; a full chat
/// `InvalidArgument`. Runs on the writer, so the count and the insert cannot race.
pub(crate) fn add_member(
    conn: &Connection,
    chat_id: ChatId,
    member: Member,
    max_members: usize,
    now: Millis,
) -> Result<bool> {
    match chat(conn, chat_id)? {
        None => return Err(Error::NotFound(format!("chat {chat_id}"))),
        Some(c) if c.kind == chat_core::ChatKind::Direct => {
            return Err(Error::Conflict(
                "a direct chat has exactly its two people".into(),
            ))
        }
        Some(_) => {}
    }
    if role(conn, chat_id, member.user_id)?.is_some() {
        return Ok(false);
    }
    if !user_exists(conn, member.user_id)? {
        return Err(Error::NotFound(format!("user {}", member.user_id)));
    }
    let count: i64 = conn
        .prepare_cached("SELECT count(*) FROM user_chat WHERE chat_id = ?1")
        .and_then(|mut st| st.query_row([chat_id.get()], |r| r.get(0)))
        .map_err(db("count members"))?;
    if usize::try_from(count).unwrap_or(usize::MAX) >= max_members {
        return Err(Error::InvalidArgument(format!(
            "chat {chat_id} already has the maximum of {max_members} members"
        )));
    }
    insert_member(conn, chat_id, member, now)?;
    Ok(true)
}

/// Removes a member; whether they were one.
pub(crate) fn remove_member(conn: &Connection, chat_id: ChatId, user_id: UserId) -> Result<bool> {
    conn.prepare_cached("DELETE FROM user_chat WHERE chat_id = ?1 AND user_id = ?2")
        .and_then(|mut st| st.execute([chat_id.get(), user_id.get()]))
        .map(|n| n > 0)
        .map_err(db("remove a member"))
}

/// A stored chat kind (anything unknown reads as a group).
pub(crate) fn kind_of(s: &str) -> chat_core::ChatKind {
    chat_core::ChatKind::parse(s).unwrap_or_default()
}
