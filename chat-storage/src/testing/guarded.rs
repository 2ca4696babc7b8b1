//! [`Guarded`]: a store together with whatever must live exactly as long as it (a temporary
//! directory, a handle that drops a test database), so a conformance setup can return one value.

use async_trait::async_trait;
use chat_core::{
    Appended, Chat, ChatId, FetchQuery, Member, Message, MessageChange, MessageStore,
    MetadataStore, Millis, NewChat, NewMessage, NewSession, NewUser, ReadMarker, Result, Rev, Role,
    Seq, Session, TokenHash, User, UserChat, UserCredentials, UserId,
};

/// A store and a guard value kept alive with it. Implements [`MetadataStore`] and
/// [`MessageStore`] by delegating to the store, whichever of the two the store implements.
///
/// Field order matters: the store is dropped before the guard, so e.g. a SQLite file is closed
/// before its temporary directory is removed.
#[derive(Debug)]
pub struct Guarded<S, G> {
    store: S,
    guard: G,
}

impl<S, G> Guarded<S, G> {
    /// Wraps `store`, keeping `guard` alive until the wrapper is dropped.
    pub fn new(store: S, guard: G) -> Self {
        Self { store, guard }
    }

    /// The wrapped store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The guard.
    pub fn guard(&self) -> &G {
        &self.guard
    }
}

#[async_trait]
impl<S, G> MetadataStore for Guarded<S, G>
where
    S: MetadataStore,
    G: Send + Sync + 'static,
{
    async fn create_user(&self, user: NewUser) -> Result<User> {
        self.store.create_user(user).await
    }

    async fn user(&self, user_id: UserId) -> Result<Option<User>> {
        self.store.user(user_id).await
    }

    async fn user_credentials(&self, email: &str) -> Result<Option<UserCredentials>> {
        self.store.user_credentials(email).await
    }

    async fn create_session(&self, session: NewSession) -> Result<()> {
        self.store.create_session(session).await
    }

    async fn session(&self, token_hash: &TokenHash) -> Result<Option<Session>> {
        self.store.session(token_hash).await
    }

    async fn delete_session(&self, token_hash: &TokenHash) -> Result<bool> {
        self.store.delete_session(token_hash).await
    }

    async fn delete_expired_sessions(&self, now: Millis) -> Result<u64> {
        self.store.delete_expired_sessions(now).await
    }

    async fn create_chat(&self, chat: NewChat) -> Result<(Chat, Vec<Member>)> {
        self.store.create_chat(chat).await
    }

    async fn chat(&self, chat_id: ChatId) -> Result<Option<Chat>> {
        self.store.chat(chat_id).await
    }

    async fn chats_of_user(&self, user_id: UserId) -> Result<Vec<(Chat, Role)>> {
        self.store.chats_of_user(user_id).await
    }

    async fn members(&self, chat_id: ChatId) -> Result<Vec<Member>> {
        self.store.members(chat_id).await
    }

    async fn role(&self, chat_id: ChatId, user_id: UserId) -> Result<Option<Role>> {
        self.store.role(chat_id, user_id).await
    }

    async fn add_member(
        &self,
        chat_id: ChatId,
        member: Member,
        max_members: usize,
    ) -> Result<bool> {
        self.store.add_member(chat_id, member, max_members).await
    }

    async fn remove_member(&self, chat_id: ChatId, user_id: UserId) -> Result<bool> {
        self.store.remove_member(chat_id, user_id).await
    }

    async fn health(&self) -> Result<()> {
        MetadataStore::health(&self.store).await
    }

    async fn users(&self, user_ids: &[UserId]) -> Result<Vec<User>> {
        self.store.users(user_ids).await
    }

    async fn set_display_name(&self, user_id: UserId, display_name: &str) -> Result<Option<User>> {
        self.store.set_display_name(user_id, display_name).await
    }

    async fn rename_chat(&self, chat_id: ChatId, chat_name: &str) -> Result<Option<Chat>> {
        self.store.rename_chat(chat_id, chat_name).await
    }

    async fn set_role(&self, chat_id: ChatId, user_id: UserId, role: Role) -> Result<bool> {
        self.store.set_role(chat_id, user_id, role).await
    }

    async fn direct_chat(
        &self,
        a: UserId,
        b: UserId,
        chat_name: &str,
        created_at: Millis,
    ) -> Result<(Chat, bool)> {
        self.store.direct_chat(a, b, chat_name, created_at).await
    }

    async fn user_chats(&self, user_id: UserId) -> Result<Vec<UserChat>> {
        self.store.user_chats(user_id).await
    }

    async fn mark_read(
        &self,
        chat_id: ChatId,
        user_id: UserId,
        seq: Seq,
        at: Millis,
    ) -> Result<Option<ReadMarker>> {
        self.store.mark_read(chat_id, user_id, seq, at).await
    }

    async fn read_markers(&self, chat_id: ChatId) -> Result<Vec<ReadMarker>> {
        self.store.read_markers(chat_id).await
    }

    async fn shared_chat_users(
        &self,
        user_id: UserId,
        candidates: &[UserId],
    ) -> Result<Vec<UserId>> {
        self.store.shared_chat_users(user_id, candidates).await
    }
}

#[async_trait]
impl<S, G> MessageStore for Guarded<S, G>
where
    S: MessageStore,
    G: Send + Sync + 'static,
{
    async fn append(&self, message: NewMessage) -> Result<Appended> {
        self.store.append(message).await
    }

    async fn fetch(&self, chat_id: ChatId, query: FetchQuery) -> Result<Vec<Message>> {
        self.store.fetch(chat_id, query).await
    }

    async fn last_seq(&self, chat_id: ChatId) -> Result<Seq> {
        self.store.last_seq(chat_id).await
    }

    async fn last_seqs(&self, chat_ids: &[ChatId]) -> Result<Vec<Seq>> {
        self.store.last_seqs(chat_ids).await
    }

    async fn last_revs(&self, chat_ids: &[ChatId]) -> Result<Vec<Rev>> {
        self.store.last_revs(chat_ids).await
    }

    async fn change(&self, chat_id: ChatId, seq: Seq, change: MessageChange) -> Result<Message> {
        self.store.change(chat_id, seq, change).await
    }

    async fn changes(&self, chat_id: ChatId, after: Rev, limit: u32) -> Result<Vec<Message>> {
        self.store.changes(chat_id, after, limit).await
    }

    async fn activity(&self, chats: &[(ChatId, Seq)]) -> Result<Vec<chat_core::ChatActivity>> {
        self.store.activity(chats).await
    }

    async fn search(
        &self,
        chat_ids: &[ChatId],
        query: &chat_core::SearchQuery,
        after: Option<chat_core::SearchCursor>,
        limit: u32,
    ) -> Result<Vec<Message>> {
        self.store.search(chat_ids, query, after, limit).await
    }

    async fn flush(&self) -> Result<()> {
        self.store.flush().await
    }

    async fn health(&self) -> Result<()> {
        MessageStore::health(&self.store).await
    }
}
