//! The SQLite side of read state, people, chat management and direct chats (issue 15): plain
//! functions over one connection, run by the writer (writes, in its transaction) or a reader.

use super::error::db;
use super::ops::{chat, kind_of, role, user, user_exists};
use chat_core::{
    Chat, ChatId, ChatKind, Error, Member, Millis, ReadMarker, Result, Role, Seq, User, UserChat,
    UserId,
};
use rusqlite::{params, Connection, OptionalExtension};

/// Several users by id (unknown ids left out).
pub(crate) fn users(conn: &Connection, ids: &[UserId]) -> Result<Vec<User>> {
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        if let Some(u) = user(conn, id)? {
            out.push(u);
        }
    }
    Ok(out)
}

/// Sets a display name; the user afterwards.
pub(crate) fn set_display_name(conn: &Connection, id: UserId, name: &str) -> Result<Option<User>> {
    let n = conn
        .prepare_cached("UPDATE users SET display_name = ?1 WHERE user_id = ?2")
        .and_then(|mut st| st.execute(params![name, id.get()]))
        .map_err(db("set a display name"))?;
    if n == 0 {
        return Ok(None);
    }
    user(conn, id)
}

/// Renames a chat; the chat afterwards.
pub(crate) fn rename_chat(conn: &Connection, id: ChatId, name: &str) -> Result<Option<Chat>> {
    let n = conn
        .prepare_cached("UPDATE chats SET chat_name = ?1 WHERE chat_id = ?2")
        .and_then(|mut st| st.execute(params![name, id.get()]))
        .map_err(db("rename a chat"))?;
    if n == 0 {
        return Ok(None);
    }
    chat(conn, id)
}

/// Sets a member's role (never the owner's); whether they are a member.
pub(crate) fn set_role(
    conn: &Connection,
    chat_id: ChatId,
    user_id: UserId,
    r: Role,
) -> Result<bool> {
    conn.prepare_cached(
        "UPDATE user_chat SET role = ?1 WHERE chat_id = ?2 AND user_id = ?3 AND role <> 'owner'",
    )
    .and_then(|mut st| st.execute(params![r.as_str(), chat_id.get(), user_id.get()]))
    .map_err(db("set a role"))?;
    Ok(role(conn, chat_id, user_id)?.is_some())
}

/// The direct chat of `a` and `b`, created with both as members if missing. The writer runs
/// one write at a time, so looking first and inserting after cannot race; the unique pair
/// guards the data all the same.
pub(crate) fn direct_chat(
    conn: &Connection,
    a: UserId,
    b: UserId,
    name: &str,
    at: Millis,
) -> Result<(Chat, bool)> {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let existing: Option<i64> = conn
        .prepare_cached("SELECT chat_id FROM direct_chats WHERE user_lo = ?1 AND user_hi = ?2")
        .and_then(|mut st| st.query_row([lo.get(), hi.get()], |r| r.get(0)).optional())
        .map_err(db("find a direct chat"))?;
    if let Some(id) = existing {
        let c = chat(conn, ChatId(id))?.ok_or_else(|| Error::NotFound(format!("chat {id}")))?;
        return Ok((c, false));
    }
    for u in [a, b] {
        if !user_exists(conn, u)? {
            return Err(Error::NotFound(format!("user {u}")));
        }
    }
    conn.prepare_cached(
        "INSERT INTO chats (chat_name, owner_id, created_at, kind) VALUES (?1, ?2, ?3, 'direct')",
    )
    .and_then(|mut st| st.execute(params![name, a.get(), at]))
    .map_err(db("insert a direct chat"))?;
    let chat_id = ChatId(conn.last_insert_rowid());
    for u in [a, b] {
        super::ops::insert_member(
            conn,
            chat_id,
            Member {
                user_id: u,
                role: Role::Member,
            },
            at,
        )?;
    }
    conn.prepare_cached("INSERT INTO direct_chats (user_lo, user_hi, chat_id) VALUES (?1, ?2, ?3)")
        .and_then(|mut st| st.execute([lo.get(), hi.get(), chat_id.get()]))
        .map_err(db("insert a direct pair"))?;
    let c = Chat {
        chat_id,
        chat_name: name.to_owned(),
        owner_id: a,
        created_at: at,
        kind: ChatKind::Direct,
    };
    Ok((c, true))
}

/// Every chat of a user with role and marker, by chat id.
pub(crate) fn user_chats(conn: &Connection, user_id: UserId) -> Result<Vec<UserChat>> {
    let mut st = conn
        .prepare_cached(
            "SELECT c.chat_id, c.chat_name, c.owner_id, c.created_at, c.kind, uc.role, \
                    COALESCE(rm.last_read_seq, 0) \
             FROM user_chat AS uc JOIN chats AS c ON c.chat_id = uc.chat_id \
             LEFT JOIN read_markers AS rm ON rm.chat_id = uc.chat_id AND rm.user_id = uc.user_id \
             WHERE uc.user_id = ?1 ORDER BY uc.chat_id",
        )
        .map_err(db("prepare user_chats"))?;
    let rows = st
        .query_map([user_id.get()], |r| {
            Ok((
                Chat {
                    chat_id: ChatId(r.get(0)?),
                    chat_name: r.get(1)?,
                    owner_id: UserId(r.get(2)?),
                    created_at: r.get(3)?,
                    kind: kind_of(&r.get::<_, String>(4)?),
                },
                r.get::<_, String>(5)?,
                Seq(r.get(6)?),
            ))
        })
        .map_err(db("read user_chats"))?;
    rows.map(|row| {
        let (chat, role, last_read_seq) = row.map_err(db("read a user_chats row"))?;
        let role = super::ops::parse_role(&role)?;
        Ok(UserChat {
            chat,
            role,
            last_read_seq,
        })
    })
    .collect()
}

/// Moves a member's marker forward; the marker afterwards, `None` for a non-member.
pub(crate) fn mark_read(
    conn: &Connection,
    chat_id: ChatId,
    user_id: UserId,
    seq: Seq,
    at: Millis,
) -> Result<Option<ReadMarker>> {
    if role(conn, chat_id, user_id)?.is_none() {
        return Ok(None);
    }
    conn.prepare_cached(
        "INSERT INTO read_markers (chat_id, user_id, last_read_seq, read_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (chat_id, user_id) DO UPDATE SET \
           last_read_seq = excluded.last_read_seq, read_at = excluded.read_at \
         WHERE excluded.last_read_seq > read_markers.last_read_seq",
    )
    .and_then(|mut st| st.execute(params![chat_id.get(), user_id.get(), seq.get(), at]))
    .map_err(db("move a read marker"))?;
    let m = conn
        .prepare_cached(
            "SELECT last_read_seq, read_at FROM read_markers WHERE chat_id = ?1 AND user_id = ?2",
        )
        .and_then(|mut st| {
            st.query_row([chat_id.get(), user_id.get()], |r| {
                Ok((Seq(r.get(0)?), r.get::<_, Millis>(1)?))
            })
        })
        .map_err(db("read a read marker"))?;
    Ok(Some(ReadMarker {
        chat_id,
        user_id,
        last_read_seq: m.0,
        read_at: Some(m.1),
    }))
}

/// Every member's marker, by user id.
pub(crate) fn read_markers(conn: &Connection, chat_id: ChatId) -> Result<Vec<ReadMarker>> {
    let mut st = conn
        .prepare_cached(
            "SELECT uc.user_id, rm.last_read_seq, rm.read_at FROM user_chat AS uc \
             LEFT JOIN read_markers AS rm ON rm.chat_id = uc.chat_id AND rm.user_id = uc.user_id \
             WHERE uc.chat_id = ?1 ORDER BY uc.user_id",
        )
        .map_err(db("prepare read_markers"))?;
    let rows = st
        .query_map([chat_id.get()], |r| {
            Ok(ReadMarker {
                chat_id,
                user_id: UserId(r.get(0)?),
                last_read_seq: Seq(r.get::<_, Option<i64>>(1)?.unwrap_or(0)),
                read_at: r.get(2)?,
            })
        })
        .map_err(db("read read_markers"))?;
    rows.map(|r| r.map_err(db("read a marker row"))).collect()
}

/// Those of `candidates` who share a chat with `user_id`.
pub(crate) fn shared_chat_users(
    conn: &Connection,
    user_id: UserId,
    candidates: &[UserId],
) -> Result<Vec<UserId>> {
    let mut st = conn
        .prepare_cached(
            "SELECT 1 FROM user_chat AS a JOIN user_chat AS b ON a.chat_id = b.chat_id \
             WHERE a.user_id = ?1 AND b.user_id = ?2 LIMIT 1",
        )
        .map_err(db("prepare shared_chat_users"))?;
    let mut out = Vec::new();
    for &c in candidates {
        let found = st
            .query_row([user_id.get(), c.get()], |_| Ok(()))
            .optional()
            .map_err(db("read shared chats"))?;
        if found.is_some() {
            out.push(c);
        }
    }
    Ok(out)
}
