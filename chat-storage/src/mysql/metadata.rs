//! [`MetadataStore`] on MySQL: users, sessions, chats and memberships.
//!
//! Writes and authorization reads go to the primary; `user`, `chat` and `chats_of_user` may be
//! answered by a replica under the rule in the module doc of [`crate::mysql`].

use super::error::{code, server_code, Failure};
use super::routing::Freshness;
use super::{decode, scalar, MysqlStore};
use async_trait::async_trait;
use chat_core::{
    Chat, ChatId, Error, Member, MetadataStore, Millis, NewChat, NewSession, NewUser, ReadMarker,
    Result, Role, Seq, Session, TokenHash, User, UserChat, UserCredentials, UserId,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Row, Transaction, TxOpts};
use std::collections::BTreeSet;

/// Columns of a [`User`], in the order [`user_from`] reads them.
const USER_COLS: &str = "user_id, email, display_name, created_at";
/// Columns of a [`Chat`], in the order [`chat_from`] reads them.
const CHAT_COLS: &str = "c.chat_id, c.chat_name, c.owner_id, c.created_at, c.kind";
/// Rows per multi-row INSERT when adding a chat's first members.
const MEMBER_INSERT_CHUNK: usize = 500;
/// Rows per DELETE when cleaning up sessions: small transactions, gentle on replicas.
const SESSION_DELETE_CHUNK: u64 = 5_000;

/// A user row.
fn user_from(row: Row) -> Result<User, Failure> {
    let (user_id, email, display_name, created_at): (i64, String, String, i64) =
        decode("users", row)?;
    Ok(User {
        user_id: UserId(user_id),
        email,
        display_name,
        created_at,
    })
}

/// A chat row (the first four columns of `row`).
fn chat_from(
    chat_id: i64,
    chat_name: String,
    owner_id: i64,
    created_at: Millis,
    kind: &str,
) -> Chat {
    Chat {
        chat_id: ChatId(chat_id),
        chat_name,
        owner_id: UserId(owner_id),
        created_at,
        kind: chat_core::ChatKind::parse(kind).unwrap_or_default(),
    }
}

/// A row of [`CHAT_COLS`].
fn chat_row(row: Row) -> Result<Chat, Failure> {
    let (id, name, owner, created, kind): (i64, String, i64, i64, String) = decode("chats", row)?;
    Ok(chat_from(id, name, owner, created, &kind))
}

/// A stored role name.
fn role_from(s: &str) -> Result<Role, Failure> {
    Role::parse(s).ok_or_else(|| super::error::bad_row("user_chat.role", format!("role {s:?}")))
}

/// Runs `body` in a transaction on `conn`: commit on success, roll back on failure.
macro_rules! in_transaction {
    ($conn:expr, |$tx:ident| $body:expr) => {{
        let mut $tx: Transaction<'_> = $conn.start_transaction(TxOpts::default()).await?;
        let result: Result<_, Failure> = async { $body }.await;
        match result {
            Ok(v) => {
                $tx.commit().await?;
                Ok(v)
            }
            Err(e) => {
                // Best effort: if the connection is broken the server rolls back by itself.
                let _ = $tx.rollback().await;
                Err(e)
            }
        }
    }};
}

#[async_trait]
impl MetadataStore for MysqlStore {
    async fn create_user(&self, user: NewUser) -> Result<User> {
        let user = &user;
        let email = user.email.to_lowercase();
        let email = email.as_str();
        self.pools
            .on_primary("create_user", |mut conn| async move {
                let inserted = conn
                    .exec_drop(
                        "INSERT INTO users (email, pw_hash, display_name, created_at) \
                         VALUES (?, ?, ?, ?)",
                        (email, &user.pw_hash, &user.display_name, user.created_at),
                    )
                    .await;
                match inserted {
                    Err(e) if server_code(&e) == Some(code::DUP_ENTRY) => {
                        return Err(Error::Conflict("email is already registered".into()).into())
                    }
                    other => other?,
                }
                let id = conn
                    .last_insert_id()
                    .and_then(|id| i64::try_from(id).ok())
                    .ok_or_else(|| super::error::bad_row("users", "no insert id"))?;
                Ok(User {
                    user_id: UserId(id),
                    email: email.to_owned(),
                    display_name: user.display_name.clone(),
                    created_at: user.created_at,
                })
            })
            .await
    }

    async fn user(&self, user_id: UserId) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE user_id = ?");
        let sql = sql.as_str();
        // Users never change: a row the replica has is current; a miss may be lag.
        self.pools
            .on_replica(
                "user",
                Freshness::SelfEvident(&|u: &Option<User>| u.is_some()),
                |mut conn| async move {
                    let row: Option<Row> = conn.exec_first(sql, (user_id.get(),)).await?;
                    row.map(user_from).transpose()
                },
            )
            .await
    }

    async fn user_credentials(&self, email: &str) -> Result<Option<UserCredentials>> {
        let email = email.to_lowercase();
        let email = email.as_str();
        let sql = format!("SELECT {USER_COLS}, pw_hash FROM users WHERE email = ?");
        let sql = sql.as_str();
        self.pools
            .on_primary("user_credentials", |mut conn| async move {
                let row: Option<Row> = conn.exec_first(sql, (email,)).await?;
                let Some(row) = row else { return Ok(None) };
                let (user_id, email, display_name, created_at, pw_hash): (
                    i64,
                    String,
                    String,
                    i64,
                    String,
                ) = decode("users", row)?;
                Ok(Some(UserCredentials {
                    user: User {
                        user_id: UserId(user_id),
                        email,
                        display_name,
                        created_at,
                    },
                    pw_hash,
                }))
            })
            .await
    }

    async fn create_session(&self, session: NewSession) -> Result<()> {
        let s = &session;
        self.pools
            .on_primary("create_session", |mut conn| async move {
                conn.exec_drop(
                    "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) \
                     VALUES (?, ?, ?, ?)",
                    (
                        &s.token_hash.as_bytes()[..],
                        s.user_id.get(),
                        s.created_at,
                        s.expires_at,
                    ),
                )
                .await
                .map_err(|e| match server_code(&e) {
                    Some(code::NO_REFERENCED_ROW | code::NO_REFERENCED_ROW_OLD) => {
                        Failure::Domain(Error::NotFound(format!("user {}", s.user_id)))
                    }
                    _ => Failure::Db(e),
                })
            })
            .await
    }

    async fn session(&self, token_hash: &TokenHash) -> Result<Option<Session>> {
        // Primary only: a logout must be seen by every node at once.
        self.pools
            .on_primary("session", |mut conn| async move {
                let row: Option<Row> = conn
                    .exec_first(
                        "SELECT user_id, expires_at FROM sessions WHERE token_hash = ?",
                        (&token_hash.as_bytes()[..],),
                    )
                    .await?;
                let Some(row) = row else { return Ok(None) };
                let (user_id, expires_at): (i64, i64) = decode("sessions", row)?;
                Ok(Some(Session {
                    user_id: UserId(user_id),
                    expires_at,
                }))
            })
            .await
    }

    async fn delete_session(&self, token_hash: &TokenHash) -> Result<bool> {
        self.pools
            .on_primary("delete_session", |mut conn| async move {
                conn.exec_drop(
                    "DELETE FROM sessions WHERE token_hash = ?",
                    (&token_hash.as_bytes()[..],),
                )
                .await?;
                Ok(conn.affected_rows() > 0)
            })
            .await
    }

    async fn delete_expired_sessions(&self, now: Millis) -> Result<u64> {
        let mut total = 0;
        loop {
            let removed = self
                .pools
                .on_primary("delete_expired_sessions", |mut conn| async move {
                    conn.exec_drop(
                        "DELETE FROM sessions WHERE expires_at < ? LIMIT ?",
                        (now, SESSION_DELETE_CHUNK),
                    )
                    .await?;
                    Ok(conn.affected_rows())
                })
                .await?;
            total += removed;
            if removed < SESSION_DELETE_CHUNK {
                return Ok(total);
            }
        }
    }

    async fn create_chat(&self, chat: NewChat) -> Result<(Chat, Vec<Member>)> {
        let chat = &chat;
        let others: BTreeSet<i64> = chat
            .member_ids
            .iter()
            .map(|u| u.get())
            .filter(|&u| u != chat.owner_id.get())
            .collect();
        let others: Vec<i64> = others.into_iter().collect();
        let others = &others;
        let (chat_id, mut members) = self
            .pools
            .on_primary("create_chat", |mut conn| async move {
                in_transaction!(conn, |tx| {
                    insert_chat(&mut tx, chat, others)
                        .await
                        .map_err(|f| match f {
                            Failure::Db(e)
                                if matches!(
                                    server_code(&e),
                                    Some(code::NO_REFERENCED_ROW | code::NO_REFERENCED_ROW_OLD)
                                ) =>
                            {
                                Failure::Domain(Error::NotFound(
                                    "the owner or a member is not a user".into(),
                                ))
                            }
                            f => f,
                        })
                })
            })
            .await?;
        members.sort_by_key(|m| m.user_id);
        Ok((
            chat_from(
                chat_id,
                chat.chat_name.clone(),
                chat.owner_id.get(),
                chat.created_at,
                "group",
            ),
            members,
        ))
    }

    async fn chat(&self, chat_id: ChatId) -> Result<Option<Chat>> {
        let sql = format!("SELECT {CHAT_COLS} FROM chats c WHERE c.chat_id = ?");
        let sql = sql.as_str();
        // Chats never change: a row the replica has is current; a miss may be lag.
        self.pools
            .on_replica(
                "chat",
                Freshness::SelfEvident(&|c: &Option<Chat>| c.is_some()),
                |mut conn| async move {
                    let row: Option<Row> = conn.exec_first(sql, (chat_id.get(),)).await?;
                    row.map(chat_row).transpose()
                },
            )
            .await
    }

    async fn chats_of_user(&self, user_id: UserId) -> Result<Vec<(Chat, Role)>> {
        let sql = format!(
            "SELECT {CHAT_COLS}, uc.role FROM user_chat uc \
             JOIN chats c ON c.chat_id = uc.chat_id \
             WHERE uc.user_id = ? ORDER BY uc.chat_id"
        );
        let sql = sql.as_str();
        // Memberships change: the replica answers only once it has caught up with the primary.
        self.pools
            .on_replica("chats_of_user", Freshness::Causal, |mut conn| async move {
                let rows: Vec<Row> = conn.exec(sql, (user_id.get(),)).await?;
                rows.into_iter()
                    .map(|row| {
                        let (id, name, owner, created, kind, role): (
                            i64,
                            String,
                            i64,
                            i64,
                            String,
                            String,
                        ) = decode("user_chat", row)?;
                        Ok((
                            chat_from(id, name, owner, created, &kind),
                            role_from(&role)?,
                        ))
                    })
                    .collect()
            })
            .await
    }

    async fn members(&self, chat_id: ChatId) -> Result<Vec<Member>> {
        self.pools
            .on_primary("members", |mut conn| async move {
                let rows: Vec<Row> = conn
                    .exec(
                        "SELECT user_id, role FROM user_chat WHERE chat_id = ? ORDER BY user_id",
                        (chat_id.get(),),
                    )
                    .await?;
                rows.into_iter()
                    .map(|row| {
                        let (user_id, role): (i64, String) = decode("user_chat", row)?;
                        Ok(Member {
                            user_id: UserId(user_id),
                            role: role_from(&role)?,
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn role(&self, chat_id: ChatId, user_id: UserId) -> Result<Option<Role>> {
        // Primary only: checked on every read and send; a removal must count at once.
        self.pools
            .on_primary("role", |mut conn| async move {
                let role: Option<Row> = conn
                    .exec_first(
                        "SELECT role FROM user_chat WHERE chat_id = ? AND user_id = ?",
                        (chat_id.get(), user_id.get()),
                    )
                    .await?;
                let Some(row) = role else { return Ok(None) };
                let (role,): (String,) = decode("user_chat", row)?;
                Ok(Some(role_from(&role)?))
            })
            .await
    }

    async fn add_member(
        &self,
        chat_id: ChatId,
        member: Member,
        max_members: usize,
    ) -> Result<bool> {
        let max = u64::try_from(max_members).unwrap_or(u64::MAX);
        self.pools
            .on_primary("add_member", |mut conn| async move {
                in_transaction!(conn, |tx| add_member_in(&mut tx, chat_id, member, max)
                    .await)
            })
            .await
    }

    async fn remove_member(&self, chat_id: ChatId, user_id: UserId) -> Result<bool> {
        self.pools
            .on_primary("remove_member", |mut conn| async move {
                conn.exec_drop(
                    "DELETE FROM user_chat WHERE chat_id = ? AND user_id = ?",
                    (chat_id.get(), user_id.get()),
                )
                .await?;
                Ok(conn.affected_rows() > 0)
            })
            .await
    }

    async fn health(&self) -> Result<()> {
        self.pools
            .on_primary("health", |mut conn| async move {
                conn.query_drop("SELECT 1").await?;
                Ok(())
            })
            .await
    }

    // Read state, people, chat management and direct chats (issue 15). Everything here reads
    // the primary: a marker, a name, a role or a rename must be seen at once by the request
    // that follows it.

    async fn users(&self, user_ids: &[UserId]) -> Result<Vec<User>> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = user_ids.iter().map(|u| u.get().to_string()).collect();
        // Integers formatted by us: nothing a client wrote reaches the SQL text.
        let sql = format!(
            "SELECT {USER_COLS} FROM users WHERE user_id IN ({})",
            ids.join(",")
        );
        let sql = sql.as_str();
        self.pools
            .on_primary("users", |mut conn| async move {
                let rows: Vec<Row> = conn.query(sql).await?;
                rows.into_iter().map(user_from).collect()
            })
            .await
    }

    async fn set_display_name(&self, user_id: UserId, display_name: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE user_id = ?");
        let sql = sql.as_str();
        self.pools
            .on_primary("set_display_name", |mut conn| async move {
                conn.exec_drop(
                    "UPDATE users SET display_name = ? WHERE user_id = ?",
                    (display_name, user_id.get()),
                )
                .await?;
                let row: Option<Row> = conn.exec_first(sql, (user_id.get(),)).await?;
                row.map(user_from).transpose()
            })
            .await
    }

    async fn rename_chat(&self, chat_id: ChatId, chat_name: &str) -> Result<Option<Chat>> {
        let sql = format!("SELECT {CHAT_COLS} FROM chats c WHERE c.chat_id = ?");
        let sql = sql.as_str();
        self.pools
            .on_primary("rename_chat", |mut conn| async move {
                conn.exec_drop(
                    "UPDATE chats SET chat_name = ? WHERE chat_id = ?",
                    (chat_name, chat_id.get()),
                )
                .await?;
                let row: Option<Row> = conn.exec_first(sql, (chat_id.get(),)).await?;
                row.map(chat_row).transpose()
            })
            .await
    }

    async fn set_role(&self, chat_id: ChatId, user_id: UserId, role: Role) -> Result<bool> {
        self.pools
            .on_primary("set_role", |mut conn| async move {
                conn.exec_drop(
                    "UPDATE user_chat SET role = ? \
                     WHERE chat_id = ? AND user_id = ? AND role <> 'owner'",
                    (role.as_str(), chat_id.get(), user_id.get()),
                )
                .await?;
                let row: Option<Row> = conn
                    .exec_first(
                        "SELECT role FROM user_chat WHERE chat_id = ? AND user_id = ?",
                        (chat_id.get(), user_id.get()),
                    )
                    .await?;
                Ok(row.is_some())
            })
            .await
    }

    async fn direct_chat(
        &self,
        a: UserId,
        b: UserId,
        chat_name: &str,
        created_at: Millis,
    ) -> Result<(Chat, bool)> {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let sql = format!(
            "SELECT {CHAT_COLS} FROM direct_chats d JOIN chats c ON c.chat_id = d.chat_id \
             WHERE d.user_lo = ? AND d.user_hi = ?"
        );
        let sql = sql.as_str();
        self.pools
            .on_primary("direct_chat", |mut conn| async move {
                let existing =
                    |row: Row| -> Result<(Chat, bool), Failure> { Ok((chat_row(row)?, false)) };
                if let Some(row) = conn
                    .exec_first::<Row, _, _>(sql, (lo.get(), hi.get()))
                    .await?
                {
                    return existing(row);
                }
                let created: Result<i64, Failure> = in_transaction!(conn, |tx| {
                    async {
                        for u in [a, b] {
                            let found: Option<Row> = tx
                                .exec_first(
                                    "SELECT user_id FROM users WHERE user_id = ?",
                                    (u.get(),),
                                )
                                .await?;
                            if found.is_none() {
                                return Err(Failure::Domain(Error::NotFound(format!("user {u}"))));
                            }
                        }
                        tx.exec_drop(
                            "INSERT INTO chats (chat_name, owner_id, created_at, kind) \
                             VALUES (?, ?, ?, 'direct')",
                            (chat_name, a.get(), created_at),
                        )
                        .await?;
                        let id = tx
                            .last_insert_id()
                            .and_then(|id| i64::try_from(id).ok())
                            .ok_or_else(|| super::error::bad_row("chats", "no insert id"))?;
                        tx.exec_drop(
                            "INSERT INTO user_chat (chat_id, user_id, role, joined_at) \
                             VALUES (?, ?, 'member', ?), (?, ?, 'member', ?)",
                            (id, a.get(), created_at, id, b.get(), created_at),
                        )
                        .await?;
                        // The unique pair: of two callers racing, one commits, the other fails
                        // here and reads the winner's chat below.
                        tx.exec_drop(
                            "INSERT INTO direct_chats (user_lo, user_hi, chat_id) VALUES (?, ?, ?)",
                            (lo.get(), hi.get(), id),
                        )
                        .await?;
                        Ok(id)
                    }
                    .await
                });
                match created {
                    Ok(id) => Ok((
                        Chat {
                            chat_id: ChatId(id),
                            chat_name: chat_name.to_owned(),
                            owner_id: a,
                            created_at,
                            kind: chat_core::ChatKind::Direct,
                        },
                        true,
                    )),
                    Err(Failure::Db(e))
                        if matches!(server_code(&e), Some(code::DUP_ENTRY | 1213)) =>
                    {
                        let row: Option<Row> = conn.exec_first(sql, (lo.get(), hi.get())).await?;
                        match row {
                            Some(row) => existing(row),
                            None => Err(Failure::Db(e)),
                        }
                    }
                    Err(f) => Err(f),
                }
            })
            .await
    }

    async fn user_chats(&self, user_id: UserId) -> Result<Vec<UserChat>> {
        let sql = format!(
            "SELECT {CHAT_COLS}, uc.role, COALESCE(rm.last_read_seq, 0) FROM user_chat uc \
             JOIN chats c ON c.chat_id = uc.chat_id \
             LEFT JOIN read_markers rm ON rm.chat_id = uc.chat_id AND rm.user_id = uc.user_id \
             WHERE uc.user_id = ? ORDER BY uc.chat_id"
        );
        let sql = sql.as_str();
        self.pools
            .on_primary("user_chats", |mut conn| async move {
                let rows: Vec<Row> = conn.exec(sql, (user_id.get(),)).await?;
                rows.into_iter()
                    .map(|row| {
                        let (id, name, owner, created, kind, role, marker): (
                            i64,
                            String,
                            i64,
                            i64,
                            String,
                            String,
                            i64,
                        ) = decode("user_chat", row)?;
                        Ok(UserChat {
                            chat: chat_from(id, name, owner, created, &kind),
                            role: role_from(&role)?,
                            last_read_seq: Seq(marker),
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn mark_read(
        &self,
        chat_id: ChatId,
        user_id: UserId,
        seq: Seq,
        at: Millis,
    ) -> Result<Option<ReadMarker>> {
        self.pools
            .on_primary("mark_read", |mut conn| async move {
                let member: Option<Row> = conn
                    .exec_first(
                        "SELECT role FROM user_chat WHERE chat_id = ? AND user_id = ?",
                        (chat_id.get(), user_id.get()),
                    )
                    .await?;
                if member.is_none() {
                    return Ok(None);
                }
                conn.exec_drop(
                    "INSERT INTO read_markers (chat_id, user_id, last_read_seq, read_at) \
                     VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
                     read_at = IF(VALUES(last_read_seq) > last_read_seq, VALUES(read_at), read_at), \
                     last_read_seq = GREATEST(last_read_seq, VALUES(last_read_seq))",
                    (chat_id.get(), user_id.get(), seq.get(), at),
                )
                .await?;
                let row: Option<Row> = conn
                    .exec_first(
                        "SELECT last_read_seq, read_at FROM read_markers \
                         WHERE chat_id = ? AND user_id = ?",
                        (chat_id.get(), user_id.get()),
                    )
                    .await?;
                let (marker, read_at): (i64, i64) = match row {
                    Some(r) => decode("read_markers", r)?,
                    None => return Err(super::error::bad_row("read_markers", "marker vanished")),
                };
                Ok(Some(ReadMarker {
                    chat_id,
                    user_id,
                    last_read_seq: Seq(marker),
                    read_at: Some(read_at),
                }))
            })
            .await
    }

    async fn read_markers(&self, chat_id: ChatId) -> Result<Vec<ReadMarker>> {
        self.pools
            .on_primary("read_markers", |mut conn| async move {
                let rows: Vec<Row> = conn
                    .exec(
                        "SELECT uc.user_id, rm.last_read_seq, rm.read_at FROM user_chat uc \
                         LEFT JOIN read_markers rm \
                           ON rm.chat_id = uc.chat_id AND rm.user_id = uc.user_id \
                         WHERE uc.chat_id = ? ORDER BY uc.user_id",
                        (chat_id.get(),),
                    )
                    .await?;
                rows.into_iter()
                    .map(|row| {
                        let (user, marker, read_at): (i64, Option<i64>, Option<i64>) =
                            decode("read_markers", row)?;
                        Ok(ReadMarker {
                            chat_id,
                            user_id: UserId(user),
                            last_read_seq: Seq(marker.unwrap_or(0)),
                            read_at,
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn shared_chat_users(
        &self,
        user_id: UserId,
        candidates: &[UserId],
    ) -> Result<Vec<UserId>> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = candidates.iter().map(|u| u.get().to_string()).collect();
        let sql = format!(
            "SELECT DISTINCT b.user_id FROM user_chat a JOIN user_chat b ON a.chat_id = b.chat_id \
             WHERE a.user_id = ? AND b.user_id IN ({})",
            ids.join(",")
        );
        let sql = sql.as_str();
        self.pools
            .on_primary("shared_chat_users", |mut conn| async move {
                let rows: Vec<Row> = conn.exec(sql, (user_id.get(),)).await?;
                rows.into_iter()
                    .map(|row| {
                        let (u,): (i64,) = decode("user_chat", row)?;
                        Ok(UserId(u))
                    })
                    .collect()
            })
            .await
    }
}

/// Inserts the chat, its owner and `others` (deduplicated, without the owner). Returns the new
/// chat id and the members.
async fn insert_chat(
    tx: &mut Transaction<'_>,
    chat: &NewChat,
    others: &[i64],
) -> Result<(i64, Vec<Member>), Failure> {
    tx.exec_drop(
        "INSERT INTO chats (chat_name, owner_id, created_at) VALUES (?, ?, ?)",
        (&chat.chat_name, chat.owner_id.get(), chat.created_at),
    )
    .await?;
    let chat_id = tx
        .last_insert_id()
        .and_then(|id| i64::try_from(id).ok())
        .ok_or_else(|| super::error::bad_row("chats", "no insert id"))?;
    let mut members = Vec::with_capacity(others.len() + 1);
    members.push(Member {
        user_id: chat.owner_id,
        role: Role::Owner,
    });
    members.extend(others.iter().map(|&u| Member {
        user_id: UserId(u),
        role: Role::Member,
    }));
    // A foreign key failure here (an unknown user) aborts the whole transaction.
    for chunk in members.chunks(MEMBER_INSERT_CHUNK) {
        let placeholders = vec!["(?, ?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!(
            "INSERT INTO user_chat (chat_id, user_id, role, joined_at) VALUES {placeholders}"
        );
        let mut params: Vec<mysql_async::Value> = Vec::with_capacity(chunk.len() * 4);
        for m in chunk {
            params.push(chat_id.into());
            params.push(m.user_id.get().into());
            params.push(m.role.as_str().into());
            params.push(chat.created_at.into());
        }
        tx.exec_drop(sql, params).await?;
    }
    Ok((chat_id, members))
}

/// The body of `add_member`, inside its transaction.
async fn add_member_in(
    tx: &mut Transaction<'_>,
    chat_id: ChatId,
    member: Member,
    max: u64,
) -> Result<bool, Failure> {
    // Locking the chat row serialises concurrent adds to one chat, so the count below cannot
    // be raced past the limit.
    let chat: Option<Row> = tx
        .exec_first(
            "SELECT chat_id, kind FROM chats WHERE chat_id = ? FOR UPDATE",
            (chat_id.get(),),
        )
        .await?;
    let Some(chat) = chat else {
        return Err(Error::NotFound(format!("chat {chat_id}")).into());
    };
    let (_, kind): (i64, String) = decode("chats", chat)?;
    if kind == "direct" {
        return Err(Error::Conflict("a direct chat has exactly its two people".into()).into());
    }
    let user: Option<Row> = tx
        .exec_first(
            "SELECT user_id FROM users WHERE user_id = ?",
            (member.user_id.get(),),
        )
        .await?;
    if user.is_none() {
        return Err(Error::NotFound(format!("user {}", member.user_id)).into());
    }
    let existing: Option<Row> = tx
        .exec_first(
            "SELECT role FROM user_chat WHERE chat_id = ? AND user_id = ? FOR UPDATE",
            (chat_id.get(), member.user_id.get()),
        )
        .await?;
    if existing.is_some() {
        return Ok(false);
    }
    let count: Option<Row> = tx
        .exec_first(
            "SELECT COUNT(*) FROM user_chat WHERE chat_id = ? LOCK IN SHARE MODE",
            (chat_id.get(),),
        )
        .await?;
    let count: u64 = scalar("member count", count)?.unwrap_or(0);
    if count >= max {
        return Err(Error::InvalidArgument(format!(
            "chat {chat_id} already has the maximum of {max} members"
        ))
        .into());
    }
    let joined_at = chat_core::ids::now_millis();
    match tx
        .exec_drop(
            "INSERT INTO user_chat (chat_id, user_id, role, joined_at) VALUES (?, ?, ?, ?)",
            (
                chat_id.get(),
                member.user_id.get(),
                member.role.as_str(),
                joined_at,
            ),
        )
        .await
    {
        Ok(()) => Ok(true),
        // Another transaction added them between our check and insert: they are a member.
        Err(e) if server_code(&e) == Some(code::DUP_ENTRY) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
