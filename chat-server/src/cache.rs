//! The seed's user and membership cache: [`CachedMetadataStore`], a [`MetadataStore`] decorator
//! with a small in-process cache in front of a shared Redis cache, in front of the real store
//! (MySQL or SQLite). Feature `redis`; chosen with `--cache redis://...` (or `--cache-redis` to
//! reuse the broker's Redis).
//!
//! # What is cached, and how each entry stays correct
//! - `role(chat, user)`, the check on every read and send: in-process (for
//!   [`CacheConfig::local_ttl`]) and in Redis. Fills (a miss answered from the database) are
//!   written with `SET NX`, so a fill carrying an answer read before a change can never
//!   overwrite the change's own entry:
//!   - **removal**: the node writes the negative entry into Redis (`SET`, overwriting) *before*
//!     it deletes the row. From then on no node can read "member" from Redis, and no late fill
//!     can put it back. If Redis cannot take that write, the removal fails with `unavailable`
//!     (nothing changed; the client retries): a removal that Redis might not reflect would have
//!     no bound at all.
//!   - **addition** and **chat creation**: written through (`SET`, overwriting) after the
//!     commit, so an added member can read at once on every node (unless that node answered
//!     "not a member" to the same user and chat within the last `local_ttl`).
//!   - Every change is broadcast on `{prefix}invalidate`, so other nodes drop their in-process
//!     copy at once. Negative answers live in Redis only [`CacheConfig::negative_ttl`] (30 s):
//!     long enough to outlive any in-flight fill, short enough that a write-through lost to a
//!     Redis outage heals by itself.
//! - `session(token_hash)`: Redis only (never in-process), filled with `SET NX`. Logout writes a
//!   **tombstone** (`SET`, overwriting) *before* deleting the row, so a logged-out token is
//!   refused by every node as soon as the logout returned; if Redis cannot take the tombstone,
//!   the logout fails with `unavailable` and changes nothing.
//! - `user(id)` (and `users`): in-process and in Redis with a TTL. A display name change
//!   overwrites the Redis entry after the commit and is broadcast, so other nodes drop their
//!   in-process copy at once (at the latest after `local_ttl * 30` if the broadcast is lost).
//! - `set_role`: written through and broadcast like an addition. A demotion (admin to member)
//!   is seen by another node at once, or at the latest after `local_ttl`, like a removal's
//!   in-process bound.
//! - Not cached: `members`, `chats_of_user`, `chat`, credentials. They are read on membership
//!   changes, connection setup and chat views, not on every message, and `members` feeds the
//!   `chat_updated` events that the hub's delivery depends on, so it must be exact.
//!
//! # The bound
//! A member removed through node A can no longer read or send through node B once B's
//! in-process entry is gone: at once when the invalidation broadcast arrives, and at the latest
//! [`CacheConfig::local_ttl`] (default 2 s) after the removal returned, broadcast lost or not.
//! Live delivery is bounded separately by the hub (see `hub.rs`): the `removed_from_chat` event
//! updates B's delivery set at once, and if that event is lost, the broker's resync re-reads
//! the memberships before delivering anything else.
//!
//! If Redis is down, every lookup falls through to the database (correct, slower): the cache
//! never makes a down Redis an outage for reads and sends.

use async_trait::async_trait;
use chat_core::MetadataStore;
use chat_core::{
    Chat, ChatId, Error, Member, Millis, NewChat, NewSession, NewUser, ReadMarker, Result, Role,
    Seq, Session, TokenHash, User, UserChat, UserCredentials, UserId,
};
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long one Redis command may take before the cache gives up and asks the database.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// After a Redis failure, lookups skip Redis this long (straight to the database), so an
/// outage costs each request nothing instead of a timeout per lookup. Writes that guard the
/// staleness bound (removal, logout) always try.
const REDIS_BACKOFF: Duration = Duration::from_secs(1);

/// Cache settings.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Redis URL, e.g. `redis://127.0.0.1:6379`.
    pub redis_url: String,
    /// Prefix of every key and channel, so clusters can share one Redis.
    pub prefix: String,
    /// Longest an in-process entry lives: the documented bound on staleness.
    pub local_ttl: Duration,
    /// Most entries each in-process map holds.
    pub local_capacity: usize,
    /// How long Redis keeps a positive answer (a role, a user, a live session).
    pub redis_ttl: Duration,
    /// How long Redis keeps a negative answer ("not a member", a session tombstone's minimum).
    pub negative_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            redis_url: "redis://127.0.0.1:6379".into(),
            prefix: "chat:".into(),
            local_ttl: Duration::from_secs(2),
            local_capacity: 100_000,
            redis_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(30),
        }
    }
}

/// A bounded map whose entries expire. When full, expired entries go first; if none expired,
/// the whole map is dropped (a cache may forget; it must not grow without bound).
struct Local<K, V> {
    map: Mutex<HashMap<K, (Instant, V)>>,
    ttl: Duration,
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> Local<K, V> {
    fn new(ttl: Duration, capacity: usize) -> Self {
        Local {
            map: Mutex::new(HashMap::new()),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// Locks the map; a poisoned lock is still usable (every critical section is one call).
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<K, (Instant, V)>> {
        match self.map.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn get(&self, k: &K) -> Option<V> {
        match self.map().get(k) {
            Some((at, v)) if at.elapsed() < self.ttl => Some(v.clone()),
            _ => None,
        }
    }

    fn put(&self, k: K, v: V) {
        let mut map = self.map();
        if map.len() >= self.capacity {
            let ttl = self.ttl;
            map.retain(|_, (at, _)| at.elapsed() < ttl);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(k, (Instant::now(), v));
    }

    fn remove(&self, k: &K) {
        self.map().remove(k);
    }

    fn clear(&self) {
        self.map().clear();
    }
}

/// An invalidation broadcast to every node: drop these in-process role entries.
#[derive(Debug, Serialize, Deserialize)]
struct Invalidation {
    chat_id: ChatId,
    user_ids: Vec<UserId>,
    /// Users whose profile (display name) changed: their in-process entries go.
    #[serde(default)]
    profiles: Vec<UserId>,
}

/// The in-process maps, shared with the invalidation listener.
struct Caches {
    roles: Local<(ChatId, UserId), Option<Role>>,
    users: Local<UserId, User>,
}

/// A session answer as cached in Redis: present, or revoked (the tombstone).
#[derive(Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum CachedSession {
    Live { user_id: UserId, expires_at: Millis },
    Revoked,
}

/// A [`MetadataStore`] with the seed's cache in front of it. See the module docs for what is
/// cached and the staleness bound.
pub struct CachedMetadataStore {
    inner: Arc<dyn MetadataStore>,
    redis: ConnectionManager,
    config: CacheConfig,
    caches: Arc<Caches>,
    /// Until when lookups skip Redis after a failure (see [`REDIS_BACKOFF`]).
    down_until: Mutex<Option<Instant>>,
    /// Cancelled on drop: stops the invalidation listener.
    closed: CancellationToken,
}

impl CachedMetadataStore {
    /// Wraps `inner`, connects to Redis and starts listening for invalidations from other
    /// nodes. Fails if Redis does not answer now; later outages fall through to `inner`.
    pub async fn connect(inner: Arc<dyn MetadataStore>, config: CacheConfig) -> Result<Self> {
        let client = redis::Client::open(config.redis_url.as_str())
            .map_err(|e| Error::InvalidArgument(format!("bad redis url: {e}")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(500);
        let redis = tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client.clone(), manager_config),
        )
        .await
        .map_err(|e| Error::unavailable("redis cache did not answer", e))?
        .map_err(|e| Error::unavailable("redis cache", e))?;
        let caches = Arc::new(Caches {
            roles: Local::new(config.local_ttl, config.local_capacity),
            // Users never change; a longer life costs nothing but memory.
            users: Local::new(config.local_ttl * 30, config.local_capacity),
        });
        let closed = CancellationToken::new();
        let listener = listen_for_invalidations(
            client,
            format!("{}invalidate", config.prefix),
            Arc::downgrade(&caches),
        );
        let stop = closed.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = listener => {}
                _ = stop.cancelled() => {}
            }
        });
        Ok(CachedMetadataStore {
            inner,
            redis,
            config,
            caches,
            down_until: Mutex::new(None),
            closed,
        })
    }

    /// Checks that the cache's Redis answers; for `GET /v1/health` (a down cache is slower,
    /// not wrong).
    pub async fn redis_health(&self) -> Result<()> {
        let mut conn = self.redis.clone();
        let ping_cmd = redis::cmd("PING");
        let ping = ping_cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(REDIS_TIMEOUT * 4, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::unavailable("redis cache", e)),
            Err(e) => Err(Error::unavailable("redis cache ping timed out", e)),
        }
    }

    fn role_key(&self, chat_id: ChatId, user_id: UserId) -> String {
        format!("{}role:{chat_id}:{user_id}", self.config.prefix)
    }

    fn session_key(&self, token_hash: &TokenHash) -> String {
        format!("{}session:{}", self.config.prefix, token_hash.to_hex())
    }

    fn user_key(&self, user_id: UserId) -> String {
        format!("{}user:{user_id}", self.config.prefix)
    }

    /// Whether Redis failed within the last [`REDIS_BACKOFF`].
    fn redis_down(&self) -> bool {
        let g = match self.down_until.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        g.is_some_and(|t| Instant::now() < t)
    }

    /// Records a Redis failure: lookups skip Redis for a while.
    fn mark_down(&self) {
        let mut g = match self.down_until.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *g = Some(Instant::now() + REDIS_BACKOFF);
    }

    /// Reads a cached JSON value; `None` on a miss or when Redis is unreachable.
    async fn redis_get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        if self.redis_down() {
            return None;
        }
        let mut conn = self.redis.clone();
        let mut get_cmd = redis::cmd("GET");
        get_cmd.arg(key);
        let get = get_cmd.query_async::<Option<Vec<u8>>>(&mut conn);
        match tokio::time::timeout(REDIS_TIMEOUT, get).await {
            Ok(Ok(Some(bytes))) => serde_json::from_slice(&bytes).ok(),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis cache get failed; asking the database");
                self.mark_down();
                None
            }
            Err(_) => {
                self.mark_down();
                None
            }
        }
    }

    /// Stores a JSON value. `only_if_absent` is the fill rule: a fill never overwrites. Returns
    /// whether Redis answered (a refused `NX` counts as answered).
    async fn redis_set<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
        only_if_absent: bool,
    ) -> bool {
        if only_if_absent && self.redis_down() {
            // A fill is only an optimisation: skip it while Redis is failing.
            return false;
        }
        let Ok(bytes) = serde_json::to_vec(value) else {
            return false;
        };
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(bytes).arg("PX").arg(millis);
        if only_if_absent {
            cmd.arg("NX");
        }
        let mut conn = self.redis.clone();
        let set = cmd.query_async::<Option<String>>(&mut conn);
        match tokio::time::timeout(REDIS_TIMEOUT, set).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis cache set failed");
                self.mark_down();
                false
            }
            Err(_) => {
                self.mark_down();
                false
            }
        }
    }

    /// Tells every node to drop its in-process role entries for these members. Best effort:
    /// a lost broadcast is bounded by `local_ttl`.
    async fn broadcast(&self, chat_id: ChatId, user_ids: Vec<UserId>) {
        self.publish_invalidation(Invalidation {
            chat_id,
            user_ids,
            profiles: Vec::new(),
        })
        .await;
    }

    async fn publish_invalidation(&self, inv: Invalidation) {
        if self.redis_down() {
            return;
        }
        let Ok(payload) = serde_json::to_string(&inv) else {
            return;
        };
        let mut conn = self.redis.clone();
        let mut publish_cmd = redis::cmd("PUBLISH");
        publish_cmd
            .arg(format!("{}invalidate", self.config.prefix))
            .arg(payload);
        let publish = publish_cmd.query_async::<i64>(&mut conn);
        let _ = tokio::time::timeout(REDIS_TIMEOUT, publish).await;
    }

    /// Writes a role answer through to Redis (overwriting) with the TTL its kind gets.
    async fn write_role(&self, chat_id: ChatId, user_id: UserId, role: Option<Role>) -> bool {
        let ttl = match role {
            Some(_) => self.config.redis_ttl,
            None => self.config.negative_ttl,
        };
        self.redis_set(&self.role_key(chat_id, user_id), &role, ttl, false)
            .await
    }
}

impl Drop for CachedMetadataStore {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

impl std::fmt::Debug for CachedMetadataStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedMetadataStore")
            .field("prefix", &self.config.prefix)
            .field("local_ttl", &self.config.local_ttl)
            .finish_non_exhaustive()
    }
}

/// Drops in-process entries named by other nodes' broadcasts. Reconnects with backoff; after a
/// reconnect every in-process role is dropped, since broadcasts may have been missed.
async fn listen_for_invalidations(client: redis::Client, channel: String, caches: Weak<Caches>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let pubsub =
            match tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub()).await {
                Ok(Ok(mut p)) => match p.subscribe(&channel).await {
                    Ok(()) => Some(p),
                    Err(_) => None,
                },
                _ => None,
            };
        let Some(mut pubsub) = pubsub else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        };
        backoff = Duration::from_millis(50);
        match caches.upgrade() {
            Some(c) => c.roles.clear(),
            None => return,
        }
        let mut stream = pubsub.on_message();
        while let Some(msg) = stream.next().await {
            let Some(c) = caches.upgrade() else { return };
            match serde_json::from_slice::<Invalidation>(msg.get_payload_bytes()) {
                Ok(inv) => {
                    for u in inv.user_ids {
                        c.roles.remove(&(inv.chat_id, u));
                    }
                    for u in inv.profiles {
                        c.users.remove(&u);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "bad cache invalidation dropped"),
            }
        }
        tracing::warn!("cache invalidation listener lost redis; reconnecting");
    }
}

#[async_trait]
impl MetadataStore for CachedMetadataStore {
    async fn create_user(&self, user: NewUser) -> Result<User> {
        self.inner.create_user(user).await
    }

    async fn user(&self, user_id: UserId) -> Result<Option<User>> {
        if let Some(u) = self.caches.users.get(&user_id) {
            return Ok(Some(u));
        }
        let key = self.user_key(user_id);
        if let Some(u) = self.redis_get::<User>(&key).await {
            self.caches.users.put(user_id, u.clone());
            return Ok(Some(u));
        }
        let found = self.inner.user(user_id).await?;
        if let Some(u) = &found {
            self.caches.users.put(user_id, u.clone());
            self.redis_set(&key, u, self.config.redis_ttl, true).await;
        }
        Ok(found)
    }

    async fn user_credentials(&self, email: &str) -> Result<Option<UserCredentials>> {
        // Logins are rare and must see a just-registered user: straight to the store.
        self.inner.user_credentials(email).await
    }

    async fn create_session(&self, session: NewSession) -> Result<()> {
        self.inner.create_session(session).await
    }

    async fn session(&self, token_hash: &TokenHash) -> Result<Option<Session>> {
        let key = self.session_key(token_hash);
        match self.redis_get::<CachedSession>(&key).await {
            Some(CachedSession::Revoked) => return Ok(None),
            Some(CachedSession::Live {
                user_id,
                expires_at,
            }) => {
                return Ok(Some(Session {
                    user_id,
                    expires_at,
                }))
            }
            None => {}
        }
        let found = self.inner.session(token_hash).await?;
        if let Some(s) = &found {
            let left = s.expires_at.saturating_sub(chat_core::ids::now_millis());
            if left > 0 {
                let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
                let live = CachedSession::Live {
                    user_id: s.user_id,
                    expires_at: s.expires_at,
                };
                self.redis_set(&key, &live, self.config.redis_ttl.min(left), true)
                    .await;
            }
        }
        Ok(found)
    }

    async fn delete_session(&self, token_hash: &TokenHash) -> Result<bool> {
        // The tombstone goes first and outlives any fill that read the session before the
        // delete (fills never overwrite). Without it the logout would not be seen everywhere.
        let key = self.session_key(token_hash);
        let ttl = self.config.redis_ttl.max(self.config.negative_ttl);
        if !self
            .redis_set(&key, &CachedSession::Revoked, ttl, false)
            .await
        {
            return Err(Error::Unavailable {
                message: "the session cache (redis) is unavailable; logout not done".into(),
                source: None,
            });
        }
        self.inner.delete_session(token_hash).await
    }

    async fn delete_expired_sessions(&self, now: Millis) -> Result<u64> {
        // Cached live sessions carry `expires_at`; callers refuse expired ones.
        self.inner.delete_expired_sessions(now).await
    }

    async fn create_chat(&self, chat: NewChat) -> Result<(Chat, Vec<Member>)> {
        let (chat, members) = self.inner.create_chat(chat).await?;
        // Written through: a "not a member" answered for this id before it existed (someone
        // probed it) must not hide the new chat from its members.
        for m in &members {
            self.caches
                .roles
                .put((chat.chat_id, m.user_id), Some(m.role));
            self.write_role(chat.chat_id, m.user_id, Some(m.role)).await;
        }
        self.broadcast(chat.chat_id, members.iter().map(|m| m.user_id).collect())
            .await;
        Ok((chat, members))
    }

    async fn chat(&self, chat_id: ChatId) -> Result<Option<Chat>> {
        self.inner.chat(chat_id).await
    }

    async fn chats_of_user(&self, user_id: UserId) -> Result<Vec<(Chat, Role)>> {
        self.inner.chats_of_user(user_id).await
    }

    async fn members(&self, chat_id: ChatId) -> Result<Vec<Member>> {
        self.inner.members(chat_id).await
    }

    async fn role(&self, chat_id: ChatId, user_id: UserId) -> Result<Option<Role>> {
        if let Some(r) = self.caches.roles.get(&(chat_id, user_id)) {
            return Ok(r);
        }
        let key = self.role_key(chat_id, user_id);
        if let Some(r) = self.redis_get::<Option<Role>>(&key).await {
            self.caches.roles.put((chat_id, user_id), r);
            return Ok(r);
        }
        let r = self.inner.role(chat_id, user_id).await?;
        self.caches.roles.put((chat_id, user_id), r);
        let ttl = match r {
            Some(_) => self.config.redis_ttl,
            None => self.config.negative_ttl,
        };
        self.redis_set(&key, &r, ttl, true).await;
        Ok(r)
    }

    async fn add_member(
        &self,
        chat_id: ChatId,
        member: Member,
        max_members: usize,
    ) -> Result<bool> {
        let added = self.inner.add_member(chat_id, member, max_members).await?;
        if added {
            self.caches
                .roles
                .put((chat_id, member.user_id), Some(member.role));
            // If Redis misses this write, a negative entry there expires within negative_ttl.
            self.write_role(chat_id, member.user_id, Some(member.role))
                .await;
            self.broadcast(chat_id, vec![member.user_id]).await;
        }
        Ok(added)
    }

    async fn remove_member(&self, chat_id: ChatId, user_id: UserId) -> Result<bool> {
        // "Not a member" goes into Redis before the row goes: see the module docs.
        if !self.write_role(chat_id, user_id, None).await {
            return Err(Error::Unavailable {
                message: "the membership cache (redis) is unavailable; member not removed".into(),
                source: None,
            });
        }
        let result = self.inner.remove_member(chat_id, user_id).await;
        // On failure the removal may or may not have committed. The negative entry stays: a
        // member it wrongly refuses is refused for at most `negative_ttl` (and the client
        // retries the removal); deleting it instead would let a stale fill say "member".
        self.caches.roles.put((chat_id, user_id), None);
        self.broadcast(chat_id, vec![user_id]).await;
        result
    }

    async fn health(&self) -> Result<()> {
        self.inner.health().await
    }

    async fn users(&self, user_ids: &[UserId]) -> Result<Vec<User>> {
        let mut found = Vec::with_capacity(user_ids.len());
        let mut missing = Vec::new();
        for &u in user_ids {
            match self.caches.users.get(&u) {
                Some(user) => found.push(user),
                None => missing.push(u),
            }
        }
        if !missing.is_empty() {
            for user in self.inner.users(&missing).await? {
                self.caches.users.put(user.user_id, user.clone());
                found.push(user);
            }
        }
        Ok(found)
    }

    async fn set_display_name(&self, user_id: UserId, display_name: &str) -> Result<Option<User>> {
        let user = self.inner.set_display_name(user_id, display_name).await?;
        if let Some(u) = &user {
            self.caches.users.put(user_id, u.clone());
            self.redis_set(&self.user_key(user_id), u, self.config.redis_ttl, false)
                .await;
            self.publish_invalidation(Invalidation {
                chat_id: ChatId(0),
                user_ids: Vec::new(),
                profiles: vec![user_id],
            })
            .await;
        }
        Ok(user)
    }

    async fn rename_chat(&self, chat_id: ChatId, chat_name: &str) -> Result<Option<Chat>> {
        self.inner.rename_chat(chat_id, chat_name).await
    }

    async fn set_role(&self, chat_id: ChatId, user_id: UserId, role: Role) -> Result<bool> {
        let changed = self.inner.set_role(chat_id, user_id, role).await?;
        if changed {
            self.caches.roles.put((chat_id, user_id), Some(role));
            self.write_role(chat_id, user_id, Some(role)).await;
            self.broadcast(chat_id, vec![user_id]).await;
        }
        Ok(changed)
    }

    async fn direct_chat(
        &self,
        a: UserId,
        b: UserId,
        chat_name: &str,
        created_at: Millis,
    ) -> Result<(Chat, bool)> {
        let (chat, created) = self.inner.direct_chat(a, b, chat_name, created_at).await?;
        if created {
            for u in [a, b] {
                self.caches.roles.put((chat.chat_id, u), Some(Role::Member));
                self.write_role(chat.chat_id, u, Some(Role::Member)).await;
            }
            self.broadcast(chat.chat_id, vec![a, b]).await;
        }
        Ok((chat, created))
    }

    async fn user_chats(&self, user_id: UserId) -> Result<Vec<UserChat>> {
        self.inner.user_chats(user_id).await
    }

    async fn mark_read(
        &self,
        chat_id: ChatId,
        user_id: UserId,
        seq: Seq,
        at: Millis,
    ) -> Result<Option<ReadMarker>> {
        self.inner.mark_read(chat_id, user_id, seq, at).await
    }

    async fn read_markers(&self, chat_id: ChatId) -> Result<Vec<ReadMarker>> {
        self.inner.read_markers(chat_id).await
    }

    async fn shared_chat_users(
        &self,
        user_id: UserId,
        candidates: &[UserId],
    ) -> Result<Vec<UserId>> {
        self.inner.shared_chat_users(user_id, candidates).await
    }
}

#[async_trait]
impl crate::HealthCheck for CachedMetadataStore {
    async fn check(&self) -> Result<()> {
        self.redis_health().await
    }
}
