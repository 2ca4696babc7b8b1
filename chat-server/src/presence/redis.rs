//! [`RedisPresence`]: presence of a cluster in Redis (feature `redis`).
//!
//! Keys (all under the cluster's prefix):
//! - `presence:user:{id}`, a hash: field `n:{node}` = the time (ms) until which that node's
//!   claim that the user is connected holds (refreshed every heartbeat), and `last_seen`.
//! - `presence:alive:{node}`: the node's heartbeat, with a TTL of [`ENTRY_TTL`].
//! - `presence:nodes`: the set of nodes that may hold entries.
//! - `presence:on:{node}`: the set of users that node has recorded, so the node that reaps a
//!   dead one knows whose entries to drop.
//!
//! A user is online when any `n:*` field is in the future, so a dead node's claims stop
//! counting within [`ENTRY_TTL`] even before anyone reaps them. Reaping is claimed with `SREM`
//! on `presence:nodes`, which only one caller can win per node.

use super::{PresenceStore, ENTRY_TTL};
use async_trait::async_trait;
use chat_core::protocol::PresenceView;
use chat_core::{Error, Millis, Result, UserId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashMap;
use std::time::Duration;

/// How long one Redis command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Presence kept in Redis, shared by every node of a cluster.
#[derive(Clone)]
pub struct RedisPresence {
    redis: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn ttl_ms() -> Millis {
    Millis::try_from(ENTRY_TTL.as_millis()).unwrap_or(20_000)
}

impl RedisPresence {
    /// Connects to Redis at `url`; keys start with `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::InvalidArgument(format!("bad redis url: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(COMMAND_TIMEOUT)
            .set_response_timeout(COMMAND_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(500);
        let redis = tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|e| Error::unavailable("redis presence did not answer", e))?
        .map_err(|e| Error::unavailable("redis presence", e))?;
        Ok(RedisPresence {
            redis,
            prefix: prefix.to_owned(),
        })
    }

    fn user_key(&self, user: UserId) -> String {
        format!("{}presence:user:{user}", self.prefix)
    }

    fn alive_key(&self, node: &str) -> String {
        format!("{}presence:alive:{node}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}presence:nodes", self.prefix)
    }

    fn on_key(&self, node: &str) -> String {
        format!("{}presence:on:{node}", self.prefix)
    }

    async fn run<T: redis::FromRedisValue>(&self, what: &str, cmd: &redis::Pipeline) -> Result<T> {
        let mut conn = self.redis.clone();
        match tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::unavailable(format!("redis presence: {what}"), e)),
            Err(e) => Err(Error::unavailable(
                format!("redis presence: {what} timed out"),
                e,
            )),
        }
    }

    /// The user's hash: `(online now, last_seen)`, leaving `skip_node`'s claim out.
    async fn state(
        &self,
        user: UserId,
        skip_node: Option<&str>,
        now: Millis,
    ) -> Result<(bool, Option<Millis>)> {
        let mut p = redis::pipe();
        p.cmd("HGETALL").arg(self.user_key(user));
        let (fields,): (HashMap<String, i64>,) = self.run("read", &p).await?;
        Ok(decode(&fields, skip_node, now))
    }
}

/// Reads a user's hash: online when some node's claim is still in the future.
fn decode(
    fields: &HashMap<String, i64>,
    skip_node: Option<&str>,
    now: Millis,
) -> (bool, Option<Millis>) {
    let skip = skip_node.map(|n| format!("n:{n}"));
    let online = fields
        .iter()
        .any(|(k, until)| k.starts_with("n:") && Some(k) != skip.as_ref() && *until > now);
    (online, fields.get("last_seen").copied())
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn arrive(&self, node: &str, user: UserId, now: Millis) -> Result<bool> {
        let (before, _) = self.state(user, Some(node), now).await?;
        let mut p = redis::pipe();
        p.cmd("HSET")
            .arg(self.user_key(user))
            .arg(format!("n:{node}"))
            .arg(now + ttl_ms())
            .ignore();
        p.cmd("SADD")
            .arg(self.on_key(node))
            .arg(user.get())
            .ignore();
        p.cmd("SADD").arg(self.nodes_key()).arg(node).ignore();
        self.run::<()>("arrive", &p).await?;
        Ok(!before)
    }

    async fn leave(&self, node: &str, user: UserId, now: Millis) -> Result<bool> {
        let mut p = redis::pipe();
        p.cmd("HDEL")
            .arg(self.user_key(user))
            .arg(format!("n:{node}"))
            .ignore();
        p.cmd("SREM")
            .arg(self.on_key(node))
            .arg(user.get())
            .ignore();
        self.run::<()>("leave", &p).await?;
        let (online, _) = self.state(user, None, now).await?;
        if online {
            return Ok(false);
        }
        let mut p = redis::pipe();
        p.cmd("HSET")
            .arg(self.user_key(user))
            .arg("last_seen")
            .arg(now)
            .ignore();
        self.run::<()>("last seen", &p).await?;
        Ok(true)
    }

    async fn heartbeat(&self, node: &str, users: &[UserId], now: Millis) -> Result<()> {
        let mut p = redis::pipe();
        p.cmd("SET")
            .arg(self.alive_key(node))
            .arg(now)
            .arg("PX")
            .arg(ttl_ms())
            .ignore();
        p.cmd("SADD").arg(self.nodes_key()).arg(node).ignore();
        for chunk in users.chunks(1_000) {
            for &u in chunk {
                p.cmd("HSET")
                    .arg(self.user_key(u))
                    .arg(format!("n:{node}"))
                    .arg(now + ttl_ms())
                    .ignore();
            }
        }
        self.run::<()>("heartbeat", &p).await
    }

    async fn reap(
        &self,
        node: &str,
        include_self: bool,
        now: Millis,
    ) -> Result<Vec<(UserId, Millis)>> {
        let mut p = redis::pipe();
        p.cmd("SMEMBERS").arg(self.nodes_key());
        let (nodes,): (Vec<String>,) = self.run("list nodes", &p).await?;
        let mut gone = Vec::new();
        for other in nodes {
            let own = other == node;
            if own && !include_self {
                continue;
            }
            if !own {
                let mut p = redis::pipe();
                p.cmd("EXISTS").arg(self.alive_key(&other));
                let (alive,): (bool,) = self.run("check a node", &p).await?;
                if alive {
                    continue;
                }
                // Only one node wins the claim to reap a dead one.
                let mut p = redis::pipe();
                p.cmd("SREM").arg(self.nodes_key()).arg(&other);
                let (claimed,): (i64,) = self.run("claim a dead node", &p).await?;
                if claimed == 0 {
                    continue;
                }
            }
            let mut p = redis::pipe();
            p.cmd("SMEMBERS").arg(self.on_key(&other));
            p.cmd("DEL").arg(self.on_key(&other)).ignore();
            let (users,): (Vec<i64>,) = self.run("read a dead node's users", &p).await?;
            for u in users.into_iter().map(UserId) {
                let mut p = redis::pipe();
                p.cmd("HGET")
                    .arg(self.user_key(u))
                    .arg(format!("n:{other}"));
                p.cmd("HDEL")
                    .arg(self.user_key(u))
                    .arg(format!("n:{other}"))
                    .ignore();
                let (until,): (Option<i64>,) = self.run("drop a dead node's entry", &p).await?;
                let (online, _) = self.state(u, None, now).await?;
                if online {
                    continue;
                }
                // Last seen at the dead node's last heartbeat (or now, if that is later).
                let last_seen = until.map_or(now, |t| (t - ttl_ms()).min(now));
                let mut p = redis::pipe();
                p.cmd("HSET")
                    .arg(self.user_key(u))
                    .arg("last_seen")
                    .arg(last_seen)
                    .ignore();
                self.run::<()>("last seen", &p).await?;
                gone.push((u, last_seen));
            }
        }
        Ok(gone)
    }

    async fn get(&self, users: &[UserId], now: Millis) -> Result<Vec<PresenceView>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for &u in users {
            p.cmd("HGETALL").arg(self.user_key(u));
        }
        let all: Vec<HashMap<String, i64>> = self.run("read presence", &p).await?;
        Ok(users
            .iter()
            .zip(all)
            .map(|(&user_id, fields)| {
                let (online, last_seen) = decode(&fields, None, now);
                PresenceView::new(user_id, online, last_seen)
            })
            .collect())
    }

    async fn health(&self) -> Result<()> {
        let mut p = redis::pipe();
        p.cmd("PING");
        self.run::<(String,)>("ping", &p).await.map(|_| ())
    }
}
