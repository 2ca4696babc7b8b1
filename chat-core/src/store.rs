//! The storage traits: [`MetadataStore`] (users, sessions, chats, memberships) and
//! [`MessageStore`] (the write-heavy message table).
//!
//! The two are separate because the seed keeps them in different databases (MySQL and
//! Cassandra); one backend may implement both. Every method reports a database that is down as
//! [`Error::Unavailable`](crate::Error::Unavailable). `chat-storage` has a conformance suite that
//! checks any implementation against the contracts written here.

use crate::error::Result;
use crate::ids::{ChatId, Millis, Rev, Seq, TokenHash, UserId};
use crate::model::{
    Appended, Chat, ChatActivity, FetchQuery, Member, Message, MessageChange, NewChat, NewMessage,
    NewSession, NewUser, ReadMarker, Role, Session, User, UserChat, UserCredentials,
};
use crate::search::{SearchCursor, SearchQuery};
use async_trait::async_trait;

/// Users, sessions, chats and memberships (the seed's Users, Chats and UserChat tables).
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Creates a user. An email that is taken (already normalised by the caller) is
    /// [`Error::Conflict`](crate::Error::Conflict).
    async fn create_user(&self, user: NewUser) -> Result<User>;

    /// A user by id.
    async fn user(&self, user_id: UserId) -> Result<Option<User>>;

    /// A user with the password hash, by normalised email.
    async fn user_credentials(&self, email: &str) -> Result<Option<UserCredentials>>;

    /// Stores a session (only the token's hash).
    async fn create_session(&self, session: NewSession) -> Result<()>;

    /// The session of a token hash, expired or not (the caller checks `expires_at`). A deleted
    /// session is `None` on every node at once: this read never goes to a lagging replica.
    async fn session(&self, token_hash: &TokenHash) -> Result<Option<Session>>;

    /// Deletes a session (logout). Returns whether it existed.
    async fn delete_session(&self, token_hash: &TokenHash) -> Result<bool>;

    /// Deletes sessions that expired before `now`; returns how many.
    async fn delete_expired_sessions(&self, now: Millis) -> Result<u64>;

    /// Creates a chat with its owner and first members in one transaction. A member id that is
    /// not a user is [`Error::NotFound`](crate::Error::NotFound) and nothing is created.
    /// Duplicate ids and the owner's own id in `member_ids` are ignored.
    async fn create_chat(&self, chat: NewChat) -> Result<(Chat, Vec<Member>)>;

    /// A chat by id.
    async fn chat(&self, chat_id: ChatId) -> Result<Option<Chat>>;

    /// Every chat the user belongs to, with the user's role, ordered by chat id.
    async fn chats_of_user(&self, user_id: UserId) -> Result<Vec<(Chat, Role)>>;

    /// Every member of a chat, ordered by user id.
    async fn members(&self, chat_id: ChatId) -> Result<Vec<Member>>;

    /// The user's role in the chat, `None` if not a member. Used on every read and send, so it
    /// must reflect a removal as soon as the removal returned.
    async fn role(&self, chat_id: ChatId, user_id: UserId) -> Result<Option<Role>>;

    /// Adds a member. Returns `false` if they already were one (their role is unchanged).
    /// Unknown chat or user is [`Error::NotFound`](crate::Error::NotFound); a chat that already
    /// has `max_members` is [`Error::InvalidArgument`](crate::Error::InvalidArgument); a direct
    /// chat is [`Error::Conflict`](crate::Error::Conflict) (it has exactly its two people).
    async fn add_member(&self, chat_id: ChatId, member: Member, max_members: usize)
        -> Result<bool>;

    /// Removes a member. Returns whether they were one. Their read marker is kept, so someone
    /// added back does not find their own old messages unread.
    async fn remove_member(&self, chat_id: ChatId, user_id: UserId) -> Result<bool>;

    /// Checks that the database answers; for `GET /v1/health`.
    async fn health(&self) -> Result<()>;

    // ---- People, chat management, direct chats and read state (protocol "Additions"). The
    // defaults answer `NotImplemented`, so a store written before these compiles and serves
    // everything else (the server then answers those routes with 501).

    /// Several users by id, in no particular order; unknown ids are left out.
    async fn users(&self, user_ids: &[UserId]) -> Result<Vec<User>> {
        let mut out = Vec::with_capacity(user_ids.len());
        for &u in user_ids {
            if let Some(user) = self.user(u).await? {
                out.push(user);
            }
        }
        Ok(out)
    }

    /// Changes a user's display name (already validated); `None` when there is no such user.
    async fn set_display_name(&self, user_id: UserId, display_name: &str) -> Result<Option<User>> {
        let _ = (user_id, display_name);
        Err(not_implemented("display names"))
    }

    /// Renames a chat (the name already validated); `None` when there is no such chat.
    async fn rename_chat(&self, chat_id: ChatId, chat_name: &str) -> Result<Option<Chat>> {
        let _ = (chat_id, chat_name);
        Err(not_implemented("renaming chats"))
    }

    /// Sets a member's role. Returns `false` when they are not a member. The owner's role is
    /// never changed here (the caller refuses it).
    async fn set_role(&self, chat_id: ChatId, user_id: UserId, role: Role) -> Result<bool> {
        let _ = (chat_id, user_id, role);
        Err(not_implemented("roles"))
    }

    /// The one direct chat of `a` and `b` (`a != b`), created with both as members if it does
    /// not exist yet; `true` when this call created it. Exactly one chat per unordered pair,
    /// however many callers (and server nodes) ask at once: the store holds a unique key on the
    /// ordered pair. `b` (or `a`) not being a user is [`Error::NotFound`](crate::Error::NotFound).
    /// `chat.owner_id` is `a` when this call creates it; both members have the role member.
    async fn direct_chat(
        &self,
        a: UserId,
        b: UserId,
        chat_name: &str,
        created_at: Millis,
    ) -> Result<(Chat, bool)> {
        let _ = (a, b, chat_name, created_at);
        Err(not_implemented("direct chats"))
    }

    /// Every chat of the user with their role and read marker, ordered by chat id.
    async fn user_chats(&self, user_id: UserId) -> Result<Vec<UserChat>> {
        let _ = user_id;
        Err(not_implemented("read state"))
    }

    /// Moves the member's read marker forward to `seq` (never back) and stamps `read_at` when
    /// it moved. Returns the marker as it is afterwards, `None` when the user is not a member.
    /// The caller checked `seq` against the chat's `last_seq`.
    async fn mark_read(
        &self,
        chat_id: ChatId,
        user_id: UserId,
        seq: Seq,
        at: Millis,
    ) -> Result<Option<ReadMarker>> {
        let _ = (chat_id, user_id, seq, at);
        Err(not_implemented("read state"))
    }

    /// Every member's read marker, ordered by user id (0 and no `read_at` for a member who
    /// never read).
    async fn read_markers(&self, chat_id: ChatId) -> Result<Vec<ReadMarker>> {
        let _ = chat_id;
        Err(not_implemented("read state"))
    }

    /// Those of `candidates` who share at least one chat with `user_id` (the user counts when
    /// they are in any chat), in no particular order. Presence is shown only to them.
    async fn shared_chat_users(
        &self,
        user_id: UserId,
        candidates: &[UserId],
    ) -> Result<Vec<UserId>> {
        let _ = (user_id, candidates);
        Err(not_implemented("presence"))
    }
}

fn not_implemented(what: &str) -> crate::Error {
    crate::Error::NotImplemented(format!("this metadata store has no {what}"))
}

/// The message table: append with a dense per-chat `seq`, fetch by page.
///
/// # Contract
/// - `append` gives the message the chat's next `seq` (1 for the first) and makes it durable
///   before it returns: a returned message survives a crash of the process at the durability the
///   backend documents. No two messages of a chat share a `seq` and no `seq` is skipped, however
///   many callers (or server nodes) append at once.
/// - A message with the same `(chat_id, sender_id, client_msg_id)` as a stored one is not stored
///   again: `append` returns the stored one with `created: false`.
/// - A `seq` is never visible to `fetch` before every smaller `seq` of the chat is: a reader that
///   has seen `seq` n will never later find a new message below n.
/// - `fetch` returns messages in ascending `seq`.
///
/// # Messages that change
/// [`change`](MessageStore::change) and [`changes`](MessageStore::changes) are the store side
/// of edits, deletes and reactions: every change, like every append, takes the chat's next
/// [`Rev`], and the change feed lists messages in their current state by ascending `rev`. Both
/// have defaults that answer [`Error::NotImplemented`](crate::Error::NotImplemented), so a
/// store written before messages could change still compiles and serves everything else; the
/// server then answers those routes with 501. Code that caches or replicates messages must not
/// assume a message never changes once these are implemented.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Appends a message; see the trait's contract.
    async fn append(&self, message: NewMessage) -> Result<Appended>;

    /// Reads one page of a chat.
    async fn fetch(&self, chat_id: ChatId, query: FetchQuery) -> Result<Vec<Message>>;

    /// The chat's newest `seq` (`Seq::ZERO` when it has no messages or is unknown).
    async fn last_seq(&self, chat_id: ChatId) -> Result<Seq>;

    /// `last_seq` of several chats, in the same order. Backends override this to batch.
    async fn last_seqs(&self, chat_ids: &[ChatId]) -> Result<Vec<Seq>> {
        let mut out = Vec::with_capacity(chat_ids.len());
        for &c in chat_ids {
            out.push(self.last_seq(c).await?);
        }
        Ok(out)
    }

    /// The newest [`Rev`] of each chat, in the order asked (`Rev::ZERO` for a chat without
    /// messages): where a client that is up to date now starts reading the change feed. The
    /// default is right for a store whose messages never change (`rev == seq`); a store that
    /// implements [`change`](MessageStore::change) overrides it.
    async fn last_revs(&self, chat_ids: &[ChatId]) -> Result<Vec<Rev>> {
        Ok(self
            .last_seqs(chat_ids)
            .await?
            .into_iter()
            .map(|s| Rev(s.get()))
            .collect())
    }

    /// Applies one change to message `seq` of `chat_id`, gives it the chat's next [`Rev`], and
    /// returns the message in its new state. A message that does not exist is
    /// [`Error::NotFound`](crate::Error::NotFound); editing a deleted one is
    /// [`Error::Conflict`](crate::Error::Conflict).
    async fn change(&self, chat_id: ChatId, seq: Seq, change: MessageChange) -> Result<Message> {
        let _ = (chat_id, seq, change);
        Err(crate::Error::NotImplemented(
            "this message store keeps messages unchanged".into(),
        ))
    }

    /// The change feed: up to `limit` messages of the chat whose latest change has a revision
    /// above `after`, in their current state, by ascending revision.
    async fn changes(&self, chat_id: ChatId, after: Rev, limit: u32) -> Result<Vec<Message>> {
        let _ = (chat_id, after, limit);
        Err(crate::Error::NotImplemented(
            "this message store has no change feed".into(),
        ))
    }

    /// Where each chat stands for a reader whose marker is the paired `Seq`: `last_seq`, the
    /// newest message, and how many messages above the marker are tombstones, in the order
    /// asked. The chat list needs this for every chat of a user, so backends answer it without
    /// reading every chat's messages (one batched read each for the heads, the newest messages
    /// and the tombstones). The default asks the other methods chat by chat, and counts
    /// tombstones by reading the messages above the marker: right for any store, slow for
    /// long unread runs.
    async fn activity(&self, chats: &[(ChatId, Seq)]) -> Result<Vec<ChatActivity>> {
        let mut out = Vec::with_capacity(chats.len());
        for &(chat_id, marker) in chats {
            let last_seq = self.last_seq(chat_id).await?;
            let last_message = self
                .fetch(chat_id, FetchQuery::Latest { limit: 1 })
                .await?
                .pop();
            let mut deleted_after = 0u64;
            let mut after = marker;
            while after < last_seq {
                let page = self
                    .fetch(chat_id, FetchQuery::After { after, limit: 500 })
                    .await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                deleted_after += page.iter().filter(|m| m.deleted).count() as u64;
            }
            out.push(ChatActivity {
                last_seq,
                last_message,
                deleted_after,
            });
        }
        Ok(out)
    }

    /// Message search: up to `limit` messages of the chats `chat_ids` that contain every term
    /// of `query` (as [`search::terms`](crate::search::terms) computes them from the
    /// message's current text), newest first in the order of [`SearchCursor`], strictly after
    /// `after` when given.
    ///
    /// A deleted message is never found; an edited one only by its new text, from the moment
    /// the edit returned. A query without terms finds nothing. Only the chats asked are read:
    /// the caller passes the chats the user belongs to. The default answers
    /// [`Error::NotImplemented`](crate::Error::NotImplemented) (the server then answers 501).
    async fn search(
        &self,
        chat_ids: &[ChatId],
        query: &SearchQuery,
        after: Option<SearchCursor>,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let _ = (chat_ids, query, after, limit);
        Err(crate::Error::NotImplemented(
            "this message store has no search".into(),
        ))
    }

    /// Waits until everything acked is on disk and background work is done (graceful shutdown).
    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// Checks that the database answers; for `GET /v1/health`.
    async fn health(&self) -> Result<()>;
}
