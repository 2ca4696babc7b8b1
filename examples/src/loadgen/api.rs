//! The REST calls the scenarios need, made directly with `reqwest` and the contract's own serde
//! types (no SDK retries, so every failure shows up in the numbers).

use anyhow::{bail, Context as _};
use chat_core::protocol::{
    ChatList, ChatSummary, ChatView, CreateChatRequest, EditRequest, FetchResponse, LoginRequest,
    RegisterRequest, SendRequest, SessionView,
};
use chat_core::{ChatId, Message, Seq, UserId};
use futures::StreamExt as _;
use indicatif::ProgressBar;
use std::net::SocketAddr;
use std::time::Duration;

/// The server under test: its base URL and resolved address.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http://host:port`, without a trailing slash.
    pub base: String,
    /// The address the WebSocket connections dial.
    pub addr: SocketAddr,
    /// `host:port` as given (the `Host` header of WebSocket handshakes).
    pub authority: String,
}

impl Target {
    /// Parses `http://host:port` and resolves the host.
    pub async fn new(base: &str) -> anyhow::Result<Target> {
        let base = base.trim_end_matches('/').to_owned();
        let authority = base
            .strip_prefix("http://")
            .context("the server URL must start with http:// (the load generator speaks plain HTTP and ws://)")?
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let addr = tokio::net::lookup_host(&authority)
            .await
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .with_context(|| format!("{authority} resolves to no address"))?;
        Ok(Target {
            base,
            addr,
            authority,
        })
    }

    /// The WebSocket URL (`ws://host:port/v1/ws`).
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.authority)
    }
}

/// A logged-in user.
#[derive(Clone, Debug)]
pub struct Account {
    /// The user's id.
    pub user_id: UserId,
    /// Bearer token.
    pub token: String,
    /// The e-mail it was registered with.
    pub email: String,
}

/// The load generator's HTTP client: a pool kept warm for thousands of requests in flight,
/// no Nagle delay, a minute's timeout.
pub(crate) fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()
}

/// A REST client for one server (a shared connection pool).
#[derive(Clone, Debug)]
pub struct Api {
    pub(crate) http: reqwest::Client,
    base: String,
}

impl Api {
    /// A client for `target`.
    pub fn new(target: &Target) -> anyhow::Result<Api> {
        Ok(Api {
            http: http_client()?,
            base: target.base.clone(),
        })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Registers `email` (an existing account is fine) and logs in.
    pub async fn register_and_login(&self, email: &str, password: &str) -> anyhow::Result<Account> {
        let resp = self
            .http
            .post(self.url("/v1/users"))
            .json(&RegisterRequest {
                email: email.to_owned(),
                password: password.to_owned(),
                display_name: None,
            })
            .send()
            .await
            .context("POST /v1/users")?;
        if resp.status() != reqwest::StatusCode::CONFLICT {
            check(resp, "POST /v1/users").await?;
        }
        let resp = self
            .http
            .post(self.url("/v1/sessions"))
            .json(&LoginRequest {
                email: email.to_owned(),
                password: password.to_owned(),
            })
            .send()
            .await
            .context("POST /v1/sessions")?;
        let session: SessionView = check(resp, "POST /v1/sessions").await?.json().await?;
        Ok(Account {
            user_id: session.user_id,
            token: session.token,
            email: email.to_owned(),
        })
    }

    /// Creates a chat owned by `owner` with these other members.
    pub async fn create_chat(
        &self,
        owner: &Account,
        name: &str,
        members: &[UserId],
    ) -> anyhow::Result<ChatView> {
        let resp = self
            .http
            .post(self.url("/v1/chats"))
            .bearer_auth(&owner.token)
            .json(&CreateChatRequest {
                chat_name: name.to_owned(),
                member_ids: members.to_vec(),
            })
            .send()
            .await
            .context("POST /v1/chats")?;
        Ok(check(resp, "POST /v1/chats").await?.json().await?)
    }

    /// The caller's chats.
    pub async fn chats(&self, who: &Account) -> anyhow::Result<Vec<ChatSummary>> {
        let resp = self
            .http
            .get(self.url("/v1/chats"))
            .bearer_auth(&who.token)
            .send()
            .await
            .context("GET /v1/chats")?;
        let list: ChatList = check(resp, "GET /v1/chats").await?.json().await?;
        Ok(list.chats)
    }

    /// One page of history: the newest `limit` messages, or the page a token names.
    pub async fn fetch_page(
        &self,
        who: &Account,
        chat: ChatId,
        page_token: Option<&str>,
        limit: u32,
    ) -> anyhow::Result<FetchResponse> {
        let mut query = vec![("chat_id", chat.to_string()), ("limit", limit.to_string())];
        if let Some(t) = page_token {
            query.push(("page_token", t.to_owned()));
        }
        let resp = self
            .http
            .get(self.url("/v1/fetch"))
            .bearer_auth(&who.token)
            .query(&query)
            .send()
            .await
            .context("GET /v1/fetch")?;
        Ok(check(resp, "GET /v1/fetch").await?.json().await?)
    }

    /// `POST /v1/send`; returns the stored message.
    pub async fn send(&self, who: &Account, req: &SendRequest) -> anyhow::Result<Message> {
        let resp = self
            .http
            .post(self.url("/v1/send"))
            .bearer_auth(&who.token)
            .json(req)
            .send()
            .await
            .context("POST /v1/send")?;
        Ok(check(resp, "POST /v1/send").await?.json().await?)
    }
}

impl Api {
    /// `PATCH /v1/chats/{chat}/messages/{seq}`.
    pub async fn edit(
        &self,
        who: &Account,
        chat: ChatId,
        seq: Seq,
        req: &EditRequest,
    ) -> anyhow::Result<()> {
        let what = "PATCH /v1/chats/{chat_id}/messages/{seq}";
        let resp = self
            .http
            .patch(self.url(&format!("/v1/chats/{chat}/messages/{seq}")))
            .bearer_auth(&who.token)
            .json(req)
            .send()
            .await
            .context(what)?;
        check(resp, what).await.map(drop)
    }

    /// `PUT` (`add`) or `DELETE` `/v1/chats/{chat}/messages/{seq}/reactions/{emoji}`, with
    /// `emoji` already percent-encoded.
    pub async fn react(
        &self,
        who: &Account,
        chat: ChatId,
        seq: Seq,
        emoji: &str,
        add: bool,
    ) -> anyhow::Result<()> {
        let what = "PUT/DELETE /v1/chats/{chat_id}/messages/{seq}/reactions/{emoji}";
        let url = self.url(&format!(
            "/v1/chats/{chat}/messages/{seq}/reactions/{emoji}"
        ));
        let rb = if add {
            self.http.put(url)
        } else {
            self.http.delete(url)
        };
        let resp = rb.bearer_auth(&who.token).send().await.context(what)?;
        check(resp, what).await.map(drop)
    }
}

/// Passes a 2xx answer through; turns anything else into an error carrying the body.
pub(crate) async fn check(
    resp: reqwest::Response,
    what: &str,
) -> anyhow::Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    bail!("{what}: HTTP {status}: {body}")
}

/// Registers and logs in `n` users named `<prefix>-<i>@loadgen.test`, `concurrency` at a time.
/// Password hashing (argon2id) makes this the slow part of a large setup.
pub async fn accounts(
    api: &Api,
    prefix: &str,
    password: &str,
    n: usize,
    concurrency: usize,
    pb: &ProgressBar,
) -> anyhow::Result<Vec<Account>> {
    let mut out: Vec<Option<Account>> = vec![None; n];
    let mut results = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let email = format!("{prefix}-{i}@loadgen.test");
            let password = password.to_owned();
            async move { (i, api.register_and_login(&email, &password).await) }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some((i, r)) = results.next().await {
        out[i] = Some(r.with_context(|| format!("setting up user {i}"))?);
        pb.inc(1);
    }
    Ok(out.into_iter().flatten().collect())
}
