//! The embedded SQLite store: users, sessions, chats, memberships and messages in one file.
//!
//! [`SqliteStore`] implements both [`MetadataStore`] and [`MessageStore`]; it is what
//! `chat-server` uses when started with no flags.
//!
//! # How it works
//! - **One writer.** Every write goes to one dedicated thread that owns the only writing
//!   connection and commits queued writes in batches, one transaction per batch (group commit:
//!   one fsync for many sends). Each write runs in its own savepoint, so one failing write (a
//!   taken email) fails alone. See `writer.rs`.
//! - **Dense seq.** An append takes the chat's next seq from the `chat_seq` counter table
//!   (`INSERT … ON CONFLICT DO UPDATE … RETURNING`) and inserts the row in the same
//!   transaction. One writer means no two appends race for a seq, and since a batch becomes
//!   visible only when it commits, atomically, a seq is never visible before every smaller one.
//! - **Dedupe.** `(chat_id, sender_id, client_msg_id)` is UNIQUE; an append first looks it up
//!   and returns the stored message with `created: false`.
//! - **Reads** run on a small pool of `query_only` connections on tokio's blocking pool; in WAL
//!   mode they never wait for the writer. See `reader.rs`. The chat list (`activity`) is one
//!   read transaction for the whole list; it counts tombstones from a partial index of deleted
//!   messages (`ops.rs`, `schema.rs`).
//! - **Search** is an FTS5 index of each message's terms (tokenized by `chat-core`), written in
//!   the transaction of the append, edit or delete. See `search.rs`.
//! - **Checkpoints** run on a thread of their own, off the commit path. See `checkpoint.rs`.
//! - **Schema** is versioned in `PRAGMA user_version` and migrated at open. See `schema.rs`.
//!
//! # Durability
//! The database runs in WAL mode with `synchronous=FULL`: a write batch is fsynced to the WAL
//! before `COMMIT` returns, and an `append` (or any other write) returns only after the `COMMIT`
//! of its batch. So an acknowledged message survives a `kill -9` of the process **and** a power
//! loss or OS crash (as far as the disk honours fsync). If a batch cannot commit (disk full, I/O
//! error), every write in it fails with `Error::Unavailable` and none of it is applied.
//!
//! # Files
//! `<path>`, `<path>-wal` and `<path>-shm`; parent directories are created at open. Back it up
//! with SQLite's online backup or `VACUUM INTO`, not by copying the file alone.

mod checkpoint;
mod error;
mod exact_cache;
mod ops;
mod reader;
mod schema;
mod search;
mod social;
mod writer;

pub use writer::WriterStats;

use async_trait::async_trait;
use chat_core::ids::now_millis;
use chat_core::{
    Appended, Chat, ChatId, Error, FetchQuery, Member, Message, MessageChange, MessageStore,
    MetadataStore, Millis, NewChat, NewMessage, NewSession, NewUser, ReadMarker, Result, Rev, Role,
    SearchCursor, SearchQuery, Seq, Session, TokenHash, User, UserChat, UserCredentials, UserId,
};
use exact_cache::{Lookup, RoleCache, SessionCache};
use reader::ReaderPool;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use writer::Writer;

/// Knobs of a [`SqliteStore`]. `Default` suits a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Most writes committed in one transaction. Larger batches mean fewer fsyncs under load;
    /// a batch is only as large as what is queued, so light load still commits at once.
    pub max_batch: usize,
    /// Writes that may wait in the writer's queue before callers wait to enqueue (backpressure).
    pub queue_capacity: usize,
    /// Read connections (reads run in parallel with each other and with the writer).
    pub readers: usize,
    /// How long a statement waits for a lock held by another connection (another process on the
    /// same file, or a checkpoint) before failing with `Unavailable`.
    pub busy_timeout: Duration,
    /// Entries of the in-process `role(chat, user)` cache (exact: invalidated by this store's
    /// own membership writes; see `exact_cache.rs`). 0 turns it off, which is needed only if
    /// another program changes memberships in the same file while the store is open.
    pub role_cache: usize,
    /// Entries of the in-process `session(token_hash)` cache (exact: a logout invalidates its
    /// entry before it returns; see `exact_cache.rs`). 0 turns it off, which is needed only if
    /// another program deletes sessions in the same file while the store is open.
    pub session_cache: usize,
    /// How long a small batch may wait for more writes before it commits, while writes arrive
    /// faster than one per delay (see `writer.rs`): divides each commit's fixed cost (WAL
    /// frames, fsync, index segment) among a few writes at moderate load, for at most this much
    /// latency. Quiet periods and single writes never wait. Zero turns it off. A store URL can
    /// set it: `sqlite?commit_delay=1ms`.
    pub commit_delay: Duration,
}

/// The default [`SqliteOptions::commit_delay`] (docs/benchmarks.md, "Commit delay").
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_millis(5);

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            max_batch: 512,
            queue_capacity: 8192,
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            role_cache: 1 << 18,
            session_cache: 1 << 16,
            commit_delay: DEFAULT_COMMIT_DELAY,
        }
    }
}

/// The embedded store: every table of the system in one SQLite file. Cheap to clone (all clones
/// share one writer thread and one reader pool); the writer stops when the last clone is dropped.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

/// What the clones share.
struct Inner {
    /// The database file.
    path: PathBuf,
    /// The writer thread. Declared first so it is dropped (and checkpoints) before the readers
    /// close; order only matters for tidiness, not correctness.
    writer: Writer,
    /// The read connections.
    readers: ReaderPool,
    /// Known roles (see `exact_cache.rs`).
    roles: Arc<RoleCache>,
    /// Known live sessions (see `exact_cache.rs`).
    sessions: Arc<SessionCache>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with default options.
    ///
    /// This does blocking file I/O (and may migrate the schema); from async code call it inside
    /// `tokio::task::spawn_blocking` (as [`crate::open::open`] does).
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens (creating if needed) the database at `path` with these options. Creates missing
    /// parent directories, switches the file to WAL and applies pending schema migrations.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        let name = path.to_string_lossy();
        if name.is_empty() || name == ":memory:" || name.starts_with("file:") {
            // Readers and the writer must share one file; an in-memory or URI name would give
            // each connection its own database.
            return Err(Error::InvalidArgument(format!(
                "sqlite: {name:?} is not a database file path"
            )));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::unavailable(format!("sqlite: create directory {}", parent.display()), e)
            })?;
        }
        let writer_conn = schema::open_writer(&path, options.busy_timeout)?;
        let readers = (0..options.readers.max(1))
            .map(|_| schema::open_reader(&path, options.busy_timeout))
            .collect::<Result<Vec<_>>>()?;
        let checkpointer = checkpoint::open(&path, options.busy_timeout)?;
        let writer = Writer::start(
            writer_conn,
            checkpointer,
            options.max_batch,
            options.queue_capacity,
            writer::CommitDelay {
                delay: options.commit_delay,
            },
        )?;
        tracing::info!(path = %path.display(), "sqlite store open");
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                writer,
                readers: ReaderPool::new(readers),
                roles: Arc::new(RoleCache::new(options.role_cache)),
                sessions: Arc::new(SessionCache::new(options.session_cache)),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The writer's counters (ops, batches), e.g. for metrics.
    pub fn writer_stats(&self) -> WriterStats {
        self.inner.writer.stats()
    }

    /// Waits until every write queued before this call is committed.
    pub async fn flush_writes(&self) -> Result<()> {
        self.inner.writer.write(|_| Ok(())).await
    }

    /// Flushes, and if this is the last clone, stops the writer thread, checkpoints the WAL and
    /// closes every connection, waiting until that is done (so the file may be copied or
    /// reopened right after). With other clones alive it only flushes.
    pub async fn close(self) -> Result<()> {
        self.flush_writes().await?;
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                let thread = inner.writer.shut_down();
                tokio::task::spawn_blocking(move || {
                    let joined = thread.map(|t| t.join());
                    drop(inner);
                    match joined {
                        Some(Err(_)) => Err(Error::Internal {
                            message: "sqlite writer thread panicked".to_owned(),
                            source: None,
                        }),
                        _ => Ok(()),
                    }
                })
                .await
                .map_err(|e| Error::internal("sqlite: closing the store failed", e))?
            }
            Err(_) => Ok(()),
        }
    }

    /// Runs `work` on the writer inside the next batch (twice if another write of the batch
    /// failed; see `writer.rs`).
    async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&rusqlite::Connection) -> Result<T> + Send + 'static,
    {
        self.inner.writer.write(work).await
    }

    /// Runs a write that may change `user_id`'s role in `chat_id`; the role cache forgets that
    /// pair once it committed, before the caller is answered.
    async fn write_member<F>(&self, chat_id: ChatId, user_id: UserId, work: F) -> Result<bool>
    where
        F: Fn(&rusqlite::Connection) -> Result<bool> + Send + 'static,
    {
        let roles = Arc::clone(&self.inner.roles);
        let on_commit = move |_: &Result<bool>| roles.invalidate([(chat_id, user_id)]);
        self.inner.writer.write_then(work, Some(on_commit)).await
    }

    /// Runs `work` on a reader connection.
    async fn read<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
    {
        self.inner.readers.read(work).await
    }

    /// Both halves answer: the writer thread is running and a reader can query.
    async fn check_health(&self) -> Result<()> {
        if !self.inner.writer.is_running() {
            return Err(error::writer_gone());
        }
        self.inner.readers.ping().await
    }
}

#[async_trait]
impl MetadataStore for SqliteStore {
    async fn create_user(&self, user: NewUser) -> Result<User> {
        self.write(move |c| ops::create_user(c, user.clone())).await
    }

    async fn user(&self, user_id: UserId) -> Result<Option<User>> {
        self.read(move |c| ops::user(c, user_id)).await
    }

    async fn user_credentials(&self, email: &str) -> Result<Option<UserCredentials>> {
        let email = email.to_owned();
        self.read(move |c| ops::user_credentials(c, &email)).await
    }

    async fn create_session(&self, session: NewSession) -> Result<()> {
        self.write(move |c| ops::create_session(c, session.clone()))
            .await
    }

    async fn session(&self, token_hash: &TokenHash) -> Result<Option<Session>> {
        let token_hash = *token_hash;
        let ticket = match self.inner.sessions.lookup(token_hash) {
            Lookup::Hit(session) => return Ok(Some(session)),
            Lookup::Miss(ticket) => ticket,
        };
        let session = self.read(move |c| ops::session(c, &token_hash)).await?;
        if let Some(s) = &session {
            self.inner.sessions.fill(ticket, token_hash, s.clone());
        }
        Ok(session)
    }

    async fn delete_session(&self, token_hash: &TokenHash) -> Result<bool> {
        let token_hash = *token_hash;
        let sessions = Arc::clone(&self.inner.sessions);
        let on_commit = move |_: &Result<bool>| sessions.invalidate([token_hash]);
        self.inner
            .writer
            .write_then(
                move |c| ops::delete_session(c, &token_hash),
                Some(on_commit),
            )
            .await
    }

    async fn delete_expired_sessions(&self, now: Millis) -> Result<u64> {
        // Expired entries are refused by their callers anyway (they check `expires_at`);
        // forgetting them all keeps the cache from holding dead sessions.
        let sessions = Arc::clone(&self.inner.sessions);
        let on_commit = move |r: &Result<u64>| {
            if matches!(r, Ok(n) if *n > 0) {
                sessions.clear();
            }
        };
        self.inner
            .writer
            .write_then(
                move |c| ops::delete_expired_sessions(c, now),
                Some(on_commit),
            )
            .await
    }

    async fn create_chat(&self, chat: NewChat) -> Result<(Chat, Vec<Member>)> {
        // A non-member answer may be cached for an id before the chat exists.
        let roles = Arc::clone(&self.inner.roles);
        let on_commit = move |r: &Result<(Chat, Vec<Member>)>| {
            if let Ok((chat, members)) = r {
                roles.invalidate(members.iter().map(|m| (chat.chat_id, m.user_id)));
            }
        };
        self.inner
            .writer
            .write_then(move |c| ops::create_chat(c, chat.clone()), Some(on_commit))
            .await
    }

    async fn chat(&self, chat_id: ChatId) -> Result<Option<Chat>> {
        self.read(move |c| ops::chat(c, chat_id)).await
    }

    async fn chats_of_user(&self, user_id: UserId) -> Result<Vec<(Chat, Role)>> {
        self.read(move |c| ops::chats_of_user(c, user_id)).await
    }

    async fn members(&self, chat_id: ChatId) -> Result<Vec<Member>> {
        self.read(move |c| ops::members(c, chat_id)).await
    }

    async fn role(&self, chat_id: ChatId, user_id: UserId) -> Result<Option<Role>> {
        let ticket = match self.inner.roles.lookup((chat_id, user_id)) {
            Lookup::Hit(role) => return Ok(role),
            Lookup::Miss(ticket) => ticket,
        };
        let role = self.read(move |c| ops::role(c, chat_id, user_id)).await?;
        self.inner.roles.fill(ticket, (chat_id, user_id), role);
        Ok(role)
    }

    async fn add_member(
        &self,
        chat_id: ChatId,
        member: Member,
        max_members: usize,
    ) -> Result<bool> {
        let now = now_millis();
        let user_id = member.user_id;
        self.write_member(chat_id, user_id, move |c| {
            ops::add_member(c, chat_id, member, max_members, now)
        })
        .await
    }

    async fn remove_member(&self, chat_id: ChatId, user_id: UserId) -> Result<bool> {
        self.write_member(chat_id, user_id, move |c| {
            ops::remove_member(c, chat_id, user_id)
        })
        .await
    }

    async fn health(&self) -> Result<()> {
        self.check_health().await
    }

    async fn users(&self, user_ids: &[UserId]) -> Result<Vec<User>> {
        let ids = user_ids.to_vec();
        self.read(move |c| social::users(c, &ids)).await
    }

    async fn set_display_name(&self, user_id: UserId, display_name: &str) -> Result<Option<User>> {
        let name = display_name.to_owned();
        self.write(move |c| social::set_display_name(c, user_id, &name))
            .await
    }

    async fn rename_chat(&self, chat_id: ChatId, chat_name: &str) -> Result<Option<Chat>> {
        let name = chat_name.to_owned();
        self.write(move |c| social::rename_chat(c, chat_id, &name))
            .await
    }

    async fn set_role(&self, chat_id: ChatId, user_id: UserId, role: Role) -> Result<bool> {
        self.write_member(chat_id, user_id, move |c| {
            social::set_role(c, chat_id, user_id, role)
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
        let name = chat_name.to_owned();
        let roles = Arc::clone(&self.inner.roles);
        let on_commit = move |r: &Result<(Chat, bool)>| {
            if let Ok((chat, _)) = r {
                roles.invalidate([(chat.chat_id, a), (chat.chat_id, b)]);
            }
        };
        self.inner
            .writer
            .write_then(
                move |c| social::direct_chat(c, a, b, &name, created_at),
                Some(on_commit),
            )
            .await
    }

    async fn user_chats(&self, user_id: UserId) -> Result<Vec<UserChat>> {
        self.read(move |c| social::user_chats(c, user_id)).await
    }

    async fn mark_read(
        &self,
        chat_id: ChatId,
        user_id: UserId,
        seq: Seq,
        at: Millis,
    ) -> Result<Option<ReadMarker>> {
        self.write(move |c| social::mark_read(c, chat_id, user_id, seq, at))
            .await
    }

    async fn read_markers(&self, chat_id: ChatId) -> Result<Vec<ReadMarker>> {
        self.read(move |c| social::read_markers(c, chat_id)).await
    }

    async fn shared_chat_users(
        &self,
        user_id: UserId,
        candidates: &[UserId],
    ) -> Result<Vec<UserId>> {
        let ids = candidates.to_vec();
        self.read(move |c| social::shared_chat_users(c, user_id, &ids))
            .await
    }
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn append(&self, message: NewMessage) -> Result<Appended> {
        // Tokenized here, on the caller's thread: the writer is the one thread every append
        // goes through.
        let doc = search::document(message.chat_id, &message.msg_text);
        self.write(move |c| ops::append(c, message.clone(), doc.as_deref()))
            .await
    }

    async fn fetch(&self, chat_id: ChatId, query: FetchQuery) -> Result<Vec<Message>> {
        if query.limit() == 0 {
            return Ok(Vec::new());
        }
        self.read(move |c| ops::fetch(c, chat_id, query)).await
    }

    async fn last_seq(&self, chat_id: ChatId) -> Result<Seq> {
        let seqs = self.read(move |c| ops::last_seqs(c, &[chat_id])).await?;
        Ok(seqs.first().copied().unwrap_or(Seq::ZERO))
    }

    async fn last_seqs(&self, chat_ids: &[ChatId]) -> Result<Vec<Seq>> {
        if chat_ids.is_empty() {
            return Ok(Vec::new());
        }
        let chat_ids = chat_ids.to_vec();
        self.read(move |c| ops::last_seqs(c, &chat_ids)).await
    }

    async fn last_revs(&self, chat_ids: &[ChatId]) -> Result<Vec<Rev>> {
        if chat_ids.is_empty() {
            return Ok(Vec::new());
        }
        let chat_ids = chat_ids.to_vec();
        self.read(move |c| ops::last_revs(c, &chat_ids)).await
    }

    async fn change(&self, chat_id: ChatId, seq: Seq, change: MessageChange) -> Result<Message> {
        self.write(move |c| ops::change(c, chat_id, seq, &change))
            .await
    }

    async fn changes(&self, chat_id: ChatId, after: Rev, limit: u32) -> Result<Vec<Message>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |c| ops::changes(c, chat_id, after, limit))
            .await
    }

    async fn activity(&self, chats: &[(ChatId, Seq)]) -> Result<Vec<chat_core::ChatActivity>> {
        if chats.is_empty() {
            return Ok(Vec::new());
        }
        let chats = chats.to_vec();
        // One reader connection and one read transaction for the whole batch.
        self.read(move |c| ops::activity(c, &chats)).await
    }

    async fn search(
        &self,
        chat_ids: &[ChatId],
        query: &SearchQuery,
        after: Option<SearchCursor>,
        limit: u32,
    ) -> Result<Vec<Message>> {
        if chat_ids.is_empty() || query.terms().is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let (chat_ids, query) = (chat_ids.to_vec(), query.clone());
        self.read(move |c| search::search(c, &chat_ids, &query, after, limit))
            .await
    }

    async fn flush(&self) -> Result<()> {
        self.flush_writes().await
    }

    async fn health(&self) -> Result<()> {
        self.check_health().await
    }
}
