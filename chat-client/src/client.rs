//! The REST half of the SDK: [`Client`], its builder, and the options of `send` and `fetch`.
//!
//! Every method maps onto one endpoint of the wire contract (`docs/protocol.md`) and uses the
//! contract's own serde types from `chat_core::protocol`. Reads, sends and changes to messages
//! are retried on transport errors, 429 and 502/503/504 (sends are safe to retry because each
//! carries a `client_msg_id` the server deduplicates on; edits, deletes and reactions are
//! idempotent); other writes are not retried, since repeating them could act twice.

use crate::error::{code_for_status, Error, Result};
use crate::outbox::{read_json, write_json, Outbox};
use crate::retry::{Backoff, RetryPolicy};
use crate::subscription::WsLink;
use crate::subscription::{lock, ResumePoint, Subscription};
use chat_core::protocol::{
    AddMemberRequest, ChangesResponse, ChatList, ChatSummary, ChatView, CreateChatRequest,
    DirectRequest, EditRequest, ErrorBody, FetchResponse, LoginRequest, PresenceResponse,
    PresenceView, PublicUser, ReadRequest, ReadState, Receipt, ReceiptsResponse, RegisterRequest,
    RenameChatRequest, RoleView, SearchResponse, SendRequest, SessionView, SetRoleRequest,
    UpdateMeRequest, UserView,
};
pub use chat_core::Role;
use chat_core::{ChatId, Message, Millis, Rev, Seq, UserId};
use reqwest::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// One page of history, as `GET /v1/fetch` returns it: messages in ascending `seq` and the token
/// of the next page (`None` at the end).
pub type Page = FetchResponse;

/// One page of search results, as `GET /v1/search` returns them: messages newest first and
/// the token of the next page (`None` at the end).
pub type SearchPage = SearchResponse;

/// The pages of one search, as [`Client::search`] reads them: each item is one request.
pub type SearchPages = futures::stream::BoxStream<'static, Result<SearchPage>>;

/// One page of a chat's change feed, as `GET /v1/chats/{chat_id}/changes` returns it.
pub type Changes = ChangesResponse;

/// Largest page the contract allows; used when the SDK pages through history itself.
const MAX_PAGE: u32 = 500;

/// Longest error text kept from an answer that is not a contract error body (e.g. a proxy page).
const MAX_FOREIGN_ERROR_TEXT: usize = 200;

/// Configures a [`Client`] before building it.
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    base_url: String,
    token: Option<String>,
    user_id: Option<UserId>,
    retry: RetryPolicy,
    request_timeout: Duration,
    connect_timeout: Duration,
    state_dir: Option<PathBuf>,
    /// PEM texts of extra trusted roots (parsed in `build`).
    #[cfg(feature = "rustls")]
    root_certificates: Vec<Vec<u8>>,
}

impl ClientBuilder {
    /// Trusts the root certificate(s) in `pem` (one or more `-----BEGIN CERTIFICATE-----`
    /// blocks) for `https://` and `wss://`, besides the built-in webpki roots: for a private
    /// deployment whose certificates come from its own CA, or a self-signed server certificate.
    /// REST and the WebSocket of [`Client::subscribe`] trust exactly the same roots. A PEM
    /// without a certificate makes [`ClientBuilder::build`] fail with
    /// [`Error::InvalidCertificate`].
    ///
    /// ```no_run
    /// # fn run() -> chat_client::Result<()> {
    /// let ca = std::fs::read("/etc/chat/ca.pem").expect("CA file");
    /// let client = chat_client::Client::builder("https://chat.internal:8443")
    ///     .add_root_certificate_pem(ca)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "rustls")]
    pub fn add_root_certificate_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.root_certificates.push(pem.as_ref().to_vec());
        self
    }

    /// Uses an existing bearer token (e.g. one saved from an earlier [`Client::login`]).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Records whose token it is, so [`Client::user_id`] answers without a round trip.
    pub fn user_id(mut self, user_id: UserId) -> Self {
        self.user_id = Some(user_id);
        self
    }

    /// How reads and sends are retried. Default: [`RetryPolicy::default`].
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The longest one HTTP request may take, end to end. Default: 30 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The longest connecting (TCP, TLS, WebSocket handshake) may take. Default: 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// A directory the client keeps its state in across restarts of the application: the send
    /// queue (`outbox.json`, see [`outbox`](crate::outbox)) and where each chat's stream
    /// stands (`positions.json`, so [`Client::subscribe`] resumes where the last run ended).
    /// Created if missing. One directory per account; without one, that state lives in memory
    /// for as long as the client.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Builds the client. Fails if the URL is not `http://` or `https://` (`https://` needs the
    /// default `rustls` feature), if an added root certificate is not valid PEM, or if the
    /// state directory cannot be created or holds files this SDK did not write.
    pub fn build(self) -> Result<Client> {
        let parsed = reqwest::Url::parse(&self.base_url)
            .map_err(|e| Error::InvalidUrl(format!("{}: {e}", self.base_url)))?;
        let ws_scheme = match parsed.scheme() {
            "http" => "ws",
            "https" => "wss",
            other => {
                return Err(Error::InvalidUrl(format!(
                    "{}: scheme {other:?} is not http or https",
                    self.base_url
                )))
            }
        };
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(Error::InvalidUrl(format!(
                "{}: a server URL has no query or fragment",
                self.base_url
            )));
        }
        // Keep any path prefix (a server mounted under /chat behind a proxy) and append the
        // contract's paths to it.
        let base = parsed.as_str().trim_end_matches('/').to_owned();
        let ws_base = format!("{ws_scheme}{}", &base[parsed.scheme().len()..]);
        let https = parsed.scheme() == "https";
        let http = reqwest::Client::builder()
            .timeout(self.request_timeout)
            .connect_timeout(self.connect_timeout)
            // Never follow a redirect from https:// down to plain http://.
            .https_only(https);
        #[cfg(feature = "rustls")]
        let tls = crate::tls::client_config(&self.root_certificates)?;
        #[cfg(feature = "rustls")]
        let http = http.use_preconfigured_tls(rustls::ClientConfig::clone(&tls));
        #[cfg(not(feature = "rustls"))]
        if https {
            return Err(Error::InvalidUrl(format!(
                "{}: https:// needs chat-client's `rustls` feature",
                self.base_url
            )));
        }
        let http = http
            .build()
            .map_err(|e| Error::transport("building the HTTP client", e))?;
        if let Some(dir) = &self.state_dir {
            std::fs::create_dir_all(dir).map_err(|e| Error::State {
                path: dir.clone(),
                message: e.to_string(),
            })?;
        }
        let outbox = Outbox::open(self.state_dir.as_deref())?;
        let positions = match &self.state_dir {
            Some(dir) => read_json::<Vec<SavedPosition>>(&dir.join(POSITIONS_FILE))?
                .unwrap_or_default()
                .into_iter()
                .map(|p| (p.chat_id, ResumePoint::new(p.seq, p.rev)))
                .collect(),
            None => HashMap::new(),
        };
        let client = Client {
            inner: Arc::new(Inner {
                base,
                ws_url: format!("{ws_base}/v1/ws"),
                http,
                session: RwLock::new(SessionState {
                    token: self.token,
                    user_id: self.user_id,
                }),
                retry: self.retry,
                connect_timeout: self.connect_timeout,
                request_timeout: self.request_timeout,
                outbox,
                ws_link: Mutex::new(None),
                positions: Mutex::new(positions),
                state_dir: self.state_dir,
                #[cfg(feature = "rustls")]
                tls,
            }),
        };
        // Messages queued by an earlier run go out now if they can (or after login).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            client.start_sending(&runtime);
        }
        Ok(client)
    }
}

/// Options of [`Client::send_with`].
///
/// Non-exhaustive: later versions may add options. Start from [`SendOptions::default`] and
/// chain the `with_*` methods (or set the public fields).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendOptions {
    /// The idempotency key (up to 64 bytes). `None`: the SDK generates a UUID v4. Give your own
    /// to make a send that survives an application restart idempotent (store the key with the
    /// draft, send with it again after the restart).
    pub client_msg_id: Option<String>,
    /// The sender's clock, in Unix milliseconds. `None`: the SDK stamps the local clock.
    pub timestamp: Option<Millis>,
    /// Makes the message a reply to this `seq` of the same chat (which must exist).
    pub reply_to_seq: Option<Seq>,
}

impl SendOptions {
    /// Sends with this idempotency key instead of a generated one (see
    /// [`SendOptions::client_msg_id`]).
    #[must_use]
    pub fn with_client_msg_id(mut self, client_msg_id: impl Into<String>) -> Self {
        self.client_msg_id = Some(client_msg_id.into());
        self
    }

    /// Stamps the message with this sender's clock (Unix milliseconds) instead of the local
    /// clock.
    #[must_use]
    pub fn with_timestamp(mut self, timestamp: Millis) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// Makes the message a reply to this `seq` of the same chat.
    #[must_use]
    pub fn with_reply_to_seq(mut self, seq: Seq) -> Self {
        self.reply_to_seq = Some(seq);
        self
    }
}

/// Where a [`Client::fetch`] starts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FetchFrom {
    Latest,
    Token(String),
    AfterSeq(Seq),
}

/// Which page [`Client::fetch`] reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchOptions {
    from: FetchFrom,
    limit: Option<u32>,
}

impl FetchOptions {
    /// The newest `limit` messages (1..=500). Page back with [`FetchOptions::before`].
    pub fn latest(limit: u32) -> Self {
        FetchOptions {
            from: FetchFrom::Latest,
            limit: Some(limit),
        }
    }

    /// The page a `next_page_token` points at: older messages after a [`FetchOptions::latest`]
    /// page. Tokens are opaque; pass them back as received.
    pub fn before(token: impl Into<String>) -> Self {
        Self::page(token)
    }

    /// The page a `next_page_token` points at, whichever direction it pages (back after
    /// [`FetchOptions::latest`], forward after [`FetchOptions::after_seq`]).
    pub fn page(token: impl Into<String>) -> Self {
        FetchOptions {
            from: FetchFrom::Token(token.into()),
            limit: None,
        }
    }

    /// The messages with `seq > seq`, oldest first (catch-up after being away).
    pub fn after_seq(seq: Seq) -> Self {
        FetchOptions {
            from: FetchFrom::AfterSeq(seq),
            limit: None,
        }
    }

    /// Sets the page size (1..=500; the server's default is 50).
    #[must_use]
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// What [`Client::search`] and [`Client::search_page`] look for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchOptions {
    q: String,
    chat_id: Option<ChatId>,
    limit: Option<u32>,
    page_token: Option<String>,
}

impl SearchOptions {
    /// Messages containing every word of `q` (1 to 256 bytes; case-insensitive, whole words),
    /// in every chat of the caller.
    pub fn new(q: impl Into<String>) -> Self {
        SearchOptions {
            q: q.into(),
            chat_id: None,
            limit: None,
            page_token: None,
        }
    }

    /// Only in this chat (the caller must be a member: else `not_a_member`).
    #[must_use]
    pub fn chat(mut self, chat_id: ChatId) -> Self {
        self.chat_id = Some(chat_id);
        self
    }

    /// Sets the page size (1..=500; the server's default is 50).
    #[must_use]
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Continues after the page whose `next_page_token` this is (same `q` and chat).
    #[must_use]
    pub fn page(mut self, token: impl Into<String>) -> Self {
        self.page_token = Some(token.into());
        self
    }
}

/// The token and user of the current session.
#[derive(Debug)]
struct SessionState {
    token: Option<String>,
    user_id: Option<UserId>,
}

/// Shared state behind every clone of a [`Client`].
#[derive(Debug)]
struct Inner {
    /// Server URL without a trailing slash.
    base: String,
    /// `ws://…/v1/ws` or `wss://…/v1/ws`.
    ws_url: String,
    /// One connection pool for every clone.
    http: reqwest::Client,
    /// A std lock: it is held only to copy the token out, never across an await.
    session: RwLock<SessionState>,
    retry: RetryPolicy,
    connect_timeout: Duration,
    request_timeout: Duration,
    /// The send queue: every send goes through it, one at a time per chat.
    outbox: Outbox,
    /// The WebSocket of the live subscription, when one is connected: sends go over it.
    ws_link: Mutex<Option<WsLink>>,
    /// Where each chat's stream stands, as the last subscription left it: where the next
    /// [`Client::subscribe`] resumes.
    positions: Mutex<HashMap<ChatId, ResumePoint>>,
    /// Where `outbox.json` and `positions.json` live, if anywhere.
    state_dir: Option<PathBuf>,
    /// The TLS settings REST uses, handed to the WebSocket connector too, so both trust the
    /// same roots.
    #[cfg(feature = "rustls")]
    tls: Arc<rustls::ClientConfig>,
}

/// `positions.json` in the state directory.
const POSITIONS_FILE: &str = "positions.json";

/// One chat's entry in `positions.json`.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedPosition {
    chat_id: ChatId,
    seq: Seq,
    rev: Option<Rev>,
}

/// A connection to one chat server, for one user session.
///
/// Cheap to clone (an `Arc` inside); every clone shares the HTTP connection pool, the session,
/// the send queue and the saved stream positions, so logging in on one clone logs in all of
/// them. `Send + Sync`.
///
/// # Example: an app's main loop
/// One stream for the whole account, sends with local echo, and state kept across restarts.
/// (`no_run`: it needs a server; `chat-server/tests/sdk_queue.rs` does the same against a
/// real one.)
/// ```no_run
/// use chat_client::{Client, Event, SendOptions, SendState};
/// use futures::StreamExt;
///
/// # async fn run() -> chat_client::Result<()> {
/// let client = Client::builder("https://chat.example.com")
///     .state_dir("/var/lib/my-app/chat") // the send queue and stream positions live here
///     .build()?;
/// client.login("ada@example.com", "correct horse").await?;
///
/// let chat = client.list_chats().await?.into_iter().next().expect("a chat");
/// // Shown at once as pending; marked when the server stores it.
/// let echo = client.enqueue(chat.chat_id, "on my way", SendOptions::default())?;
/// let mut queue = client.outbox_events();
///
/// // Resumes where the last run's stream ended.
/// let mut events = client.subscribe().await?;
/// loop {
///     tokio::select! {
///         Some(event) = events.next() => match event {
///             Event::Message(m) => println!("#{} {}: {}", m.seq, m.sender_id, m.msg_text),
///             Event::Disconnected { reason, .. } => eprintln!("offline: {reason}"),
///             _ => {}
///         },
///         Ok(update) = queue.recv() => match update.state {
///             SendState::Sent(m) if update.client_msg_id == echo.client_msg_id => {
///                 println!("delivered as #{}", m.seq)
///             }
///             SendState::Failed { message, .. } => eprintln!("not sent: {message}"),
///             _ => {}
///         },
///     }
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// A client for the server at `base_url` (e.g. `"http://127.0.0.1:8080"`), not logged in.
    pub fn new(base_url: &str) -> Result<Client> {
        Client::builder(base_url).build()
    }

    /// A client that uses an existing bearer token.
    pub fn with_token(base_url: &str, token: impl Into<String>) -> Result<Client> {
        Client::builder(base_url).token(token).build()
    }

    /// A builder, for retry policy, timeouts and extra TLS roots.
    pub fn builder(base_url: &str) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.to_owned(),
            token: None,
            user_id: None,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            state_dir: None,
            #[cfg(feature = "rustls")]
            root_certificates: Vec::new(),
        }
    }

    /// The server URL (without a trailing slash).
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// The bearer token of the current session, if logged in (to save it for later).
    pub fn token(&self) -> Option<String> {
        self.session().token.clone()
    }

    /// The logged-in user's id, if known (after [`Client::login`] or [`Client::me`]).
    pub fn user_id(&self) -> Option<UserId> {
        self.session().user_id
    }

    /// Replaces the session's token (e.g. one saved earlier); `None` logs out locally only.
    pub fn set_token(&self, token: Option<String>) {
        let mut s = self.session_mut();
        s.token = token;
        s.user_id = None;
    }

    /// `POST /v1/users`: registers a user. Does not log in.
    #[tracing::instrument(level = "debug", skip_all, err(Display, level = "debug"))]
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        display_name: Option<&str>,
    ) -> Result<UserView> {
        let body = RegisterRequest {
            email: email.to_owned(),
            password: password.to_owned(),
            display_name: display_name.map(str::to_owned),
        };
        let rb = self.request(Method::POST, "/v1/users", false)?.json(&body);
        json(execute(rb).await?).await
    }

    /// `POST /v1/sessions`: logs in and keeps the token inside the client for every later call.
    #[tracing::instrument(level = "debug", skip_all, err(Display, level = "debug"))]
    pub async fn login(&self, email: &str, password: &str) -> Result<SessionView> {
        let body = LoginRequest {
            email: email.to_owned(),
            password: password.to_owned(),
        };
        let rb = self
            .request(Method::POST, "/v1/sessions", false)?
            .json(&body);
        let session: SessionView = json(execute(rb).await?).await?;
        {
            let mut s = self.session_mut();
            s.token = Some(session.token.clone());
            s.user_id = Some(session.user_id);
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.start_sending(&runtime);
        }
        Ok(session)
    }

    /// `DELETE /v1/sessions/current`: ends the session on the server (the token stops working
    /// everywhere, open WebSockets included) and forgets it locally, even if the server call
    /// fails.
    #[tracing::instrument(level = "debug", skip_all, err(Display, level = "debug"))]
    pub async fn logout(&self) -> Result<()> {
        let rb = self.request(Method::DELETE, "/v1/sessions/current", true)?;
        let result = execute(rb).await.map(drop);
        self.set_token(None);
        result
    }

    /// `GET /v1/users/me`: the logged-in user.
    #[tracing::instrument(level = "debug", skip_all, err(Display, level = "debug"))]
    pub async fn me(&self) -> Result<UserView> {
        let me: UserView = self
            .retrying(|| async {
                let rb = self.request(Method::GET, "/v1/users/me", true)?;
                json(execute(rb).await?).await
            })
            .await?;
        let mut s = self.session_mut();
        if s.token.is_some() {
            s.user_id = Some(me.user_id);
        }
        Ok(me)
    }

    /// `POST /v1/chats`: creates a chat; the caller becomes its owner and `member_ids` its other
    /// members.
    #[tracing::instrument(level = "debug", skip_all, err(Display, level = "debug"))]
    pub async fn create_chat(&self, name: &str, member_ids: &[UserId]) -> Result<ChatView> {
        let body = CreateChatRequest {
            chat_name: name.to_owned(),
            member_ids: member_ids.to_vec(),
        };
        let rb = self.request(Method::POST, "/v1/chats", true)?.json(&body);
        json(execute(rb).await?).await
    }

    /// `GET /v1/chats/{chat_id}`: one chat with its members (members only).
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?chat_id), err(Display, level = "debug"))]
    pub async fn chat(&self, chat_id: ChatId) -> Result<ChatView> {
        let path = format!("/v1/chats/{chat_id}");
        self.retrying(|| async {
            let rb = self.request(Method::GET, &path, true)?;
            json(execute(rb).await?).await
        })
        .await
    }

    /// `GET /v1/chats`: the caller's chats, latest activity first, each with its last message,
    /// the caller's read marker and exact unread count.
    #[tracing::instrument(level = "debug", skip_all, err(Display, level = "debug"))]
    pub async fn list_chats(&self) -> Result<Vec<ChatSummary>> {
        let list: ChatList = self
            .retrying(|| async {
                let rb = self.request(Method::GET, "/v1/chats", true)?;
                json(execute(rb).await?).await
            })
            .await?;
        Ok(list.chats)
    }

    /// `GET /v1/users/{user_id}`: another user's id and display name (never the email).
    #[tracing::instrument(level = "debug", skip_all, fields(user_id = ?user_id), err(Display, level = "debug"))]
    pub async fn user(&self, user_id: UserId) -> Result<PublicUser> {
        let path = format!("/v1/users/{user_id}");
        self.get_json(&path).await
    }

    /// `GET /v1/users?email=`: the user with exactly this email (any case), to start a chat with
    /// someone whose address one knows. Rate-limited like logins; `not_found` when nobody has
    /// it.
    #[tracing::instrument(level = "debug", skip_all, err(Display, level = "debug"))]
    pub async fn find_user(&self, email: &str) -> Result<PublicUser> {
        let path = format!("/v1/users?email={}", percent_encode(email));
        self.get_json(&path).await
    }

    /// `PATCH /v1/users/me`: changes the caller's display name.
    #[tracing::instrument(level = "debug", skip_all, err(Display, level = "debug"))]
    pub async fn set_display_name(&self, display_name: &str) -> Result<UserView> {
        let body = UpdateMeRequest {
            display_name: display_name.to_owned(),
        };
        self.retrying(|| async {
            let rb = self
                .request(Method::PATCH, "/v1/users/me", true)?
                .json(&body);
            json(execute(rb).await?).await
        })
        .await
    }

    /// `PATCH /v1/chats/{chat_id}`: renames a chat (owner or admin).
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?chat_id), err(Display, level = "debug"))]
    pub async fn rename_chat(&self, chat_id: ChatId, chat_name: &str) -> Result<ChatView> {
        let path = format!("/v1/chats/{chat_id}");
        let body = RenameChatRequest {
            chat_name: chat_name.to_owned(),
        };
        self.retrying(|| async {
            let rb = self.request(Method::PATCH, &path, true)?.json(&body);
            json(execute(rb).await?).await
        })
        .await
    }

    /// `PUT /v1/chats/{chat_id}/members/{user_id}/role`: makes a member an admin or takes it
    /// back ([`Role::Admin`] or [`Role::Member`]; the owner only).
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?chat_id, user_id = ?user_id), err(Display, level = "debug"))]
    pub async fn set_role(&self, chat_id: ChatId, user_id: UserId, role: Role) -> Result<RoleView> {
        let path = format!("/v1/chats/{chat_id}/members/{user_id}/role");
        let body = SetRoleRequest { role };
        self.retrying(|| async {
            let rb = self.request(Method::PUT, &path, true)?.json(&body);
            json(execute(rb).await?).await
        })
        .await
    }

    /// `POST /v1/direct`: the one direct chat of the caller and `user_id`, created if needed
    /// (the same chat for both of them, even when both ask at once).
    #[tracing::instrument(level = "debug", skip_all, fields(user_id = ?user_id), err(Display, level = "debug"))]
    pub async fn direct_chat(&self, user_id: UserId) -> Result<ChatView> {
        let body = DirectRequest { user_id };
        self.retrying(|| async {
            let rb = self.request(Method::POST, "/v1/direct", true)?.json(&body);
            json(execute(rb).await?).await
        })
        .await
    }

    /// `POST /v1/chats/{chat_id}/read`: moves the caller's read marker forward to `seq` (a
    /// lower one leaves it) and returns where it stands. Every device of every member hears
    /// [`Event::Read`](crate::Event::Read).
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?chat_id, seq = ?seq), err(Display, level = "debug"))]
    pub async fn mark_read(&self, chat_id: ChatId, seq: Seq) -> Result<Seq> {
        let path = format!("/v1/chats/{chat_id}/read");
        let body = ReadRequest { seq };
        let state: ReadState = self
            .retrying(|| async {
                let rb = self.request(Method::POST, &path, true)?.json(&body);
                json(execute(rb).await?).await
            })
            .await?;
        Ok(state.last_read_seq)
    }

    /// `GET /v1/chats/{chat_id}/receipts`: where every member has read up to.
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?chat_id), err(Display, level = "debug"))]
    pub async fn receipts(&self, chat_id: ChatId) -> Result<Vec<Receipt>> {
        let path = format!("/v1/chats/{chat_id}/receipts");
        let r: ReceiptsResponse = self.get_json(&path).await?;
        Ok(r.receipts)
    }

    /// `GET /v1/presence`: who of `user_ids` is online. Users who share no chat with the
    /// caller are left out of the answer.
    #[tracing::instrument(level = "debug", skip_all, err(Display, level = "debug"))]
    pub async fn presence(&self, user_ids: &[UserId]) -> Result<Vec<PresenceView>> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = user_ids.iter().map(|u| u.to_string()).collect();
        let path = format!("/v1/presence?user_ids={}", ids.join(","));
        let r: PresenceResponse = self.get_json(&path).await?;
        Ok(r.presence)
    }

    /// A GET of a JSON answer, retried.
    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.retrying(|| async {
            let rb = self.request(Method::GET, path, true)?;
            json(execute(rb).await?).await
        })
        .await
    }

    /// `POST /v1/chats/{chat_id}/members`: adds a user (owner or admin only).
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?chat_id, user_id = ?user_id), err(Display, level = "debug"))]
    pub async fn add_member(&self, chat_id: ChatId, user_id: UserId) -> Result<()> {
        let path = format!("/v1/chats/{chat_id}/members");
        let rb = self
            .request(Method::POST, &path, true)?
            .json(&AddMemberRequest { user_id });
        execute(rb).await.map(drop)
    }

    /// `DELETE /v1/chats/{chat_id}/members/{user_id}`: leaves (own id) or removes a member
    /// (owner or admin).
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?chat_id, user_id = ?user_id), err(Display, level = "debug"))]
    pub async fn remove_member(&self, chat_id: ChatId, user_id: UserId) -> Result<()> {
        let path = format!("/v1/chats/{chat_id}/members/{user_id}");
        let rb = self.request(Method::DELETE, &path, true)?;
        execute(rb).await.map(drop)
    }

    /// `POST /v1/send`: sends `text` to a chat and returns the stored message once the server
    /// has made it durable. See [`Client::send_with`].
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?chat_id), err(Display, level = "debug"))]
    pub async fn send(&self, chat_id: ChatId, text: &str) -> Result<Message> {
        self.send_with(chat_id, text, SendOptions::default()).await
    }

    /// `POST /v1/send` with explicit options.
    ///
    /// - Idempotent: every attempt carries the same `client_msg_id` (generated if not given),
    ///   and the server returns the first stored copy for a repeat, so a retry never duplicates.
    /// - Retried on transport errors, timeouts, 429 (honouring `Retry-After`) and 502/503/504,
    ///   with jittered exponential backoff, up to the [`RetryPolicy`]'s attempts.
    /// - Ordered per chat: sends to one chat go out one at a time, so message N+1 of a chat is
    ///   not sent before N is acknowledged (or has finally failed). Concurrent calls for one chat
    ///   are served in the order they first await. Sends to different chats run in parallel.
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?chat_id), err(Display, level = "debug"))]
    pub async fn send_with(
        &self,
        chat_id: ChatId,
        text: &str,
        options: SendOptions,
    ) -> Result<Message> {
        self.send_queued(chat_id, text, options).await
    }

    /// `POST /v1/send` with retries: the REST path of the send queue.
    pub(crate) async fn post_send(&self, body: &SendRequest) -> Result<Message> {
        self.retrying(|| async {
            let rb = self.request(Method::POST, "/v1/send", true)?.json(body);
            json::<Message>(execute(rb).await?).await
        })
        .await
    }

    /// Sends `text` as a reply to message `reply_to` of the same chat: [`Client::send_with`]
    /// with [`SendOptions::reply_to_seq`].
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?chat_id, reply_to = ?reply_to), err(Display, level = "debug"))]
    pub async fn reply(&self, chat_id: ChatId, reply_to: Seq, text: &str) -> Result<Message> {
        let options = SendOptions::default().with_reply_to_seq(reply_to);
        self.send_with(chat_id, text, options).await
    }

    /// `PATCH /v1/chats/{chat_id}/messages/{seq}`: replaces the text of one's own message and
    /// returns it with `edited_at`. Editing to the same text changes nothing; a deleted message
    /// cannot be edited (409 `conflict`). Retried like a read: an edit is idempotent.
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?chat_id, seq = ?seq), err(Display, level = "debug"))]
    pub async fn edit(&self, chat_id: ChatId, seq: Seq, text: &str) -> Result<Message> {
        let body = EditRequest {
            msg_text: text.to_owned(),
        };
        self.change(Method::PATCH, chat_id, seq, "", Some(&body))
            .await
    }

    /// `DELETE /v1/chats/{chat_id}/messages/{seq}`: makes a message a tombstone (`deleted`,
    /// no text, no reactions; its `seq` stays). Its sender, the chat's owner or an admin may.
    /// Deleting twice is fine.
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?chat_id, seq = ?seq), err(Display, level = "debug"))]
    pub async fn delete_message(&self, chat_id: ChatId, seq: Seq) -> Result<Message> {
        self.change(Method::DELETE, chat_id, seq, "", None).await
    }

    /// `PUT /v1/chats/{chat_id}/messages/{seq}/reactions/{emoji}`: adds the caller's reaction
    /// (1 to 32 bytes; at most 20 distinct emoji per message). Idempotent.
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?chat_id, seq = ?seq), err(Display, level = "debug"))]
    pub async fn react(&self, chat_id: ChatId, seq: Seq, emoji: &str) -> Result<Message> {
        let tail = format!("/reactions/{}", percent_encode(emoji));
        self.change(Method::PUT, chat_id, seq, &tail, None).await
    }

    /// `DELETE /v1/chats/{chat_id}/messages/{seq}/reactions/{emoji}`: takes the caller's
    /// reaction back. Idempotent.
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?chat_id, seq = ?seq), err(Display, level = "debug"))]
    pub async fn unreact(&self, chat_id: ChatId, seq: Seq, emoji: &str) -> Result<Message> {
        let tail = format!("/reactions/{}", percent_encode(emoji));
        self.change(Method::DELETE, chat_id, seq, &tail, None).await
    }

    /// One change to message `seq` of `chat_id` (`tail` continues its path), retried (every
    /// change is idempotent), checked to answer for that message.
    async fn change(
        &self,
        method: Method,
        chat_id: ChatId,
        seq: Seq,
        tail: &str,
        body: Option<&EditRequest>,
    ) -> Result<Message> {
        let path = format!("/v1/chats/{chat_id}/messages/{seq}{tail}");
        let m = self
            .retrying(|| async {
                let mut rb = self.request(method.clone(), &path, true)?;
                if let Some(body) = body {
                    rb = rb.json(body);
                }
                json::<Message>(execute(rb).await?).await
            })
            .await?;
        same_message(chat_id, seq, m)
    }

    /// `GET /v1/chats/{chat_id}/changes`: one page of the chat's change feed, the messages
    /// whose latest change is above `after_rev`, in current state, by ascending `rev`.
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?chat_id, after_rev = ?after_rev), err(Display, level = "debug"))]
    pub async fn changes(&self, chat_id: ChatId, after_rev: Rev, limit: u32) -> Result<Changes> {
        let path = format!("/v1/chats/{chat_id}/changes");
        let query = [
            ("after_rev", after_rev.get().to_string()),
            ("limit", limit.to_string()),
        ];
        let page: Changes = self
            .retrying(|| async {
                let rb = self.request(Method::GET, &path, true)?.query(&query);
                json(execute(rb).await?).await
            })
            .await?;
        if let Some(m) = page.messages.iter().find(|m| m.chat_id != chat_id) {
            return Err(Error::Protocol(format!(
                "changes of chat {chat_id} hold a message of chat {}",
                m.chat_id
            )));
        }
        let ascending = page.messages.windows(2).all(|w| w[0].rev < w[1].rev);
        if !ascending || page.messages.first().is_some_and(|m| m.rev <= after_rev) {
            return Err(Error::Protocol(format!(
                "changes of chat {chat_id} after {after_rev} are not in ascending rev"
            )));
        }
        Ok(page)
    }

    /// Every change of a chat above `after_rev`, paging to the end: the messages in their
    /// current state (by ascending `rev`) and the `rev` to continue from next time.
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?chat_id, after_rev = ?after_rev), err(Display, level = "debug"))]
    pub async fn changes_all_after(
        &self,
        chat_id: ChatId,
        after_rev: Rev,
    ) -> Result<(Vec<Message>, Rev)> {
        let mut out = Vec::new();
        let mut cursor = after_rev;
        loop {
            let page = self.changes(chat_id, cursor, MAX_PAGE).await?;
            cursor = page.next_rev.max(cursor);
            out.extend(page.messages);
            if !page.has_more {
                return Ok((out, cursor));
            }
        }
    }

    /// `GET /v1/search`: one page of the messages that contain every word of the query,
    /// newest first, in the caller's chats (or the one chat asked). Bad input is
    /// `invalid_argument` (empty or over 256 bytes, a token of another search); a chat the
    /// caller is not in is `not_a_member`.
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?options.chat_id), err(Display, level = "debug"))]
    pub async fn search_page(&self, options: &SearchOptions) -> Result<SearchPage> {
        let mut query: Vec<(&str, String)> = vec![("q", options.q.clone())];
        if let Some(chat) = options.chat_id {
            query.push(("chat_id", chat.to_string()));
        }
        if let Some(limit) = options.limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(t) = &options.page_token {
            query.push(("page_token", t.clone()));
        }
        let page: SearchPage = self
            .retrying(|| async {
                let rb = self.request(Method::GET, "/v1/search", true)?.query(&query);
                json(execute(rb).await?).await
            })
            .await?;
        if let Some(chat) = options.chat_id {
            if let Some(m) = page.messages.iter().find(|m| m.chat_id != chat) {
                return Err(Error::Protocol(format!(
                    "searched chat {chat}, got a message of chat {}",
                    m.chat_id
                )));
            }
        }
        let key = |m: &Message| (m.sent_at, m.chat_id, m.seq);
        if page.messages.windows(2).any(|w| key(&w[0]) <= key(&w[1])) {
            return Err(Error::Protocol(
                "search results are not newest first".into(),
            ));
        }
        Ok(page)
    }

    /// Every page of a search, as a stream: the first page of `options`, then each page its
    /// `next_page_token` points at, until the last. Each page is one request, made when the
    /// stream is polled for it; the stream ends after an error.
    ///
    /// ```no_run
    /// use chat_client::{Client, SearchOptions};
    /// use futures::TryStreamExt;
    ///
    /// # async fn run(client: Client) -> chat_client::Result<()> {
    /// let mut pages = client.search(SearchOptions::new("lunch friday").limit(20));
    /// while let Some(page) = pages.try_next().await? {
    ///     for m in page.messages {
    ///         println!("chat {} #{}: {}", m.chat_id, m.seq, m.msg_text);
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn search(&self, options: SearchOptions) -> SearchPages {
        let client = self.clone();
        let stream = futures::stream::try_unfold(Some(options), move |next| {
            let client = client.clone();
            async move {
                let Some(options) = next else {
                    return Ok(None);
                };
                let page = client.search_page(&options).await?;
                let next = page
                    .next_page_token
                    .clone()
                    .map(|t| options.clone().page(t));
                Ok(Some((page, next)))
            }
        });
        Box::pin(stream)
    }

    /// `GET /v1/fetch`: one page of a chat's history (members only).
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?chat_id), err(Display, level = "debug"))]
    pub async fn fetch(&self, chat_id: ChatId, options: FetchOptions) -> Result<Page> {
        let mut query: Vec<(&str, String)> = vec![("chat_id", chat_id.to_string())];
        match &options.from {
            FetchFrom::Latest => {}
            FetchFrom::Token(t) => query.push(("page_token", t.clone())),
            FetchFrom::AfterSeq(s) => query.push(("after_seq", s.to_string())),
        }
        if let Some(limit) = options.limit {
            query.push(("limit", limit.to_string()));
        }
        let page: Page = self
            .retrying(|| async {
                let rb = self.request(Method::GET, "/v1/fetch", true)?.query(&query);
                json(execute(rb).await?).await
            })
            .await?;
        if let Some(m) = page.messages.iter().find(|m| m.chat_id != chat_id) {
            return Err(Error::Protocol(format!(
                "fetched chat {chat_id}, got a message of chat {}",
                m.chat_id
            )));
        }
        if page.messages.windows(2).any(|w| w[0].seq >= w[1].seq) {
            return Err(Error::Protocol(format!(
                "page of chat {chat_id} is not in ascending seq"
            )));
        }
        Ok(page)
    }

    /// Every message of a chat with `seq > after`, oldest first, paging forward to the end.
    #[tracing::instrument(level = "debug", skip_all, fields(chat_id = ?chat_id, after = ?after), err(Display, level = "debug"))]
    pub async fn fetch_all_after(&self, chat_id: ChatId, after: Seq) -> Result<Vec<Message>> {
        let mut out = Vec::new();
        let mut cursor = after;
        loop {
            let page = self
                .fetch(chat_id, FetchOptions::after_seq(cursor).limit(MAX_PAGE))
                .await?;
            let Some(last) = page.messages.last() else {
                break;
            };
            if last.seq <= cursor {
                return Err(Error::Protocol(format!(
                    "fetch after {cursor} of chat {chat_id} went backwards"
                )));
            }
            cursor = last.seq;
            let done = page.next_page_token.is_none();
            out.extend(page.messages.into_iter().filter(|m| m.seq > after));
            if done {
                break;
            }
        }
        Ok(out)
    }

    /// Opens the live event stream of the whole account: every chat the user is in, including
    /// chats they join later (delivered from their first message). See [`Subscription`].
    ///
    /// Resuming is the default: when an earlier stream of this client (or, with
    /// [`ClientBuilder::state_dir`], of an earlier run) saved where it stood, the new stream
    /// continues from there, with every message and change it missed
    /// ([`Client::saved_positions`]). The first stream ever starts from now: only messages
    /// stored after this call returns, for the chats the user has now.
    #[tracing::instrument(level = "debug", skip_all, err(Display, level = "debug"))]
    pub async fn subscribe(&self) -> Result<Subscription> {
        let saved = self.saved_positions();
        if !saved.is_empty() {
            return self.resume(saved);
        }
        let positions = self
            .list_chats()
            .await?
            .into_iter()
            .map(|c| (c.chat_id, c.last_seq))
            .collect();
        self.subscribe_from(positions)
    }

    /// Opens the live event stream, resuming from saved positions (e.g. from
    /// [`Subscription::positions`] of an earlier run): every message with a larger `seq` is
    /// delivered. Chats missing from `positions` are delivered from their first message.
    /// Changes made meanwhile to messages at or below a position are not looked for; save
    /// [`Subscription::resume_points`] and use [`Client::resume`] for those.
    /// Needs a tokio runtime; does no I/O itself (the connection is made in the background).
    pub fn subscribe_from(&self, positions: HashMap<ChatId, Seq>) -> Result<Subscription> {
        if self.token().is_none() {
            return Err(Error::NotLoggedIn);
        }
        let points = positions
            .into_iter()
            .map(|(c, seq)| (c, ResumePoint::new(seq, None)))
            .collect();
        self.resume(points)
    }

    /// Opens the live event stream from saved [`Subscription::resume_points`]: every message
    /// after each point's `seq`, and, as [`Event::MessageUpdated`](crate::Event), every change
    /// made since its `rev` to messages handed over before. Chats missing from `points` are
    /// delivered from their first message. Needs a tokio runtime; does no I/O itself.
    pub fn resume(&self, points: HashMap<ChatId, ResumePoint>) -> Result<Subscription> {
        if self.token().is_none() {
            return Err(Error::NotLoggedIn);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        Ok(Subscription::start(&runtime, self.clone(), points, None))
    }

    /// Opens a live stream of one chat only (e.g. for a window that shows that chat), beside
    /// or instead of the account's stream: its messages exactly once and in order, its
    /// updates, reads and typing, and presence. It resumes where this client's streams left
    /// the chat ([`Client::saved_positions`]); the first time, it starts from the chat's
    /// current `last_seq`. If the user leaves the chat, [`Event::RemovedFromChat`] comes and
    /// then nothing more until they are added again.
    ///
    /// [`Event::RemovedFromChat`]: crate::Event::RemovedFromChat
    pub async fn subscribe_chat(&self, chat_id: ChatId) -> Result<Subscription> {
        let point = match self.saved_positions().get(&chat_id) {
            Some(p) => *p,
            None => ResumePoint::new(self.chat(chat_id).await?.last_seq, None),
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let points = HashMap::from([(chat_id, point)]);
        Ok(Subscription::start(
            &runtime,
            self.clone(),
            points,
            Some(chat_id),
        ))
    }

    pub(crate) fn ws_url(&self) -> &str {
        &self.inner.ws_url
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.inner.connect_timeout
    }

    /// The TLS settings of REST, for the WebSocket connector.
    #[cfg(feature = "rustls")]
    pub(crate) fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.inner.tls.clone()
    }

    /// The `Authorization` header value of the current session.
    pub(crate) fn bearer(&self) -> Result<HeaderValue> {
        let token = self.token().ok_or(Error::NotLoggedIn)?;
        HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Error::Protocol("the token is not a valid header value".into()))
    }

    fn session(&self) -> std::sync::RwLockReadGuard<'_, SessionState> {
        // A poisoned lock only means another thread panicked while holding it; the two
        // Option fields are always consistent, so keep going.
        self.inner
            .session
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn session_mut(&self) -> std::sync::RwLockWriteGuard<'_, SessionState> {
        self.inner
            .session
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    pub(crate) fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    /// The live subscription's WebSocket, if one is connected.
    pub(crate) fn ws_link(&self) -> Option<WsLink> {
        lock(&self.inner.ws_link).clone()
    }

    /// Offers the connected subscription's WebSocket for sends.
    pub(crate) fn set_ws_link(&self, link: WsLink) {
        *lock(&self.inner.ws_link) = Some(link);
    }

    /// Withdraws a subscription's WebSocket (only if it is still the one offered).
    pub(crate) fn clear_ws_link(&self, id: u64) {
        let mut l = lock(&self.inner.ws_link);
        if l.as_ref().is_some_and(|x| x.id() == id) {
            *l = None;
        }
    }

    /// Remembers where a subscription left each chat, for the next [`Client::subscribe`]
    /// (and in `positions.json` when the client has a state directory).
    pub(crate) fn save_positions(&self, points: &HashMap<ChatId, ResumePoint>) {
        let mut book = lock(&self.inner.positions);
        for (chat_id, p) in points {
            let e = book.entry(*chat_id).or_default();
            if p.seq >= e.seq {
                *e = *p;
            }
        }
        if let Some(dir) = &self.inner.state_dir {
            let saved: Vec<SavedPosition> = book
                .iter()
                .map(|(c, p)| SavedPosition {
                    chat_id: *c,
                    seq: p.seq,
                    rev: p.rev,
                })
                .collect();
            let path = dir.join(POSITIONS_FILE);
            if let Err(e) = write_json(&path, &saved) {
                tracing::warn!(error = %e, path = %path.display(), "could not save stream positions");
            }
        }
    }

    /// Where the streams of this client (and, with a state directory, of earlier runs) left
    /// each chat: what [`Client::subscribe`] resumes from.
    pub fn saved_positions(&self) -> HashMap<ChatId, ResumePoint> {
        lock(&self.inner.positions).clone()
    }

    fn request(&self, method: Method, path: &str, auth: bool) -> Result<RequestBuilder> {
        let rb = self
            .inner
            .http
            .request(method, format!("{}{path}", self.inner.base));
        if auth {
            Ok(rb.header(AUTHORIZATION, self.bearer()?))
        } else {
            Ok(rb)
        }
    }

    /// Runs `op` until it succeeds, fails with a non-retryable error, or the policy's attempts
    /// are spent.
    async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let policy = self.inner.retry;
        let mut backoff = Backoff::new(policy.base_delay, policy.max_delay);
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < policy.max_attempts.max(1) => {
                    let delay = backoff.next_delay();
                    let delay = e.retry_after().map_or(delay, |ra| ra.max(delay));
                    tracing::debug!(error = %e, attempt, ?delay, "retrying request");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) if e.is_retryable() && attempt > 1 => {
                    return Err(Error::RetriesExhausted {
                        attempts: attempt,
                        last: Box::new(e),
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Sends a request and turns an error status into [`Error::Api`].
async fn execute(rb: RequestBuilder) -> Result<reqwest::Response> {
    let resp = rb.send().await.map_err(|e| {
        if e.is_builder() {
            Error::InvalidUrl(e.to_string())
        } else {
            Error::transport(format!("request failed: {e}"), e)
        }
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| Error::transport(format!("reading the {status} answer: {e}"), e))?;
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => (body.error.code, body.error.message),
        Err(_) => (
            code_for_status(status.as_u16()),
            foreign_error_text(status, &bytes),
        ),
    };
    Err(Error::Api {
        status: status.as_u16(),
        code,
        message,
        retry_after,
    })
}

/// Reads a success answer's JSON body.
async fn json<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| Error::transport(format!("reading the {status} answer: {e}"), e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::Protocol(format!(
            "{status} answer does not match the contract ({e}): {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_FOREIGN_ERROR_TEXT)])
        ))
    })
}

/// The text of an error answer that is not the contract's body.
fn foreign_error_text(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_FOREIGN_ERROR_TEXT)]);
    let text = text.trim();
    if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text.to_owned()
    }
}

/// `Retry-After` in delta-seconds (integer or decimal). HTTP dates are not used by this server
/// and are ignored (the backoff applies instead).
fn parse_retry_after(v: &str) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    if secs.is_finite() && secs >= 0.0 {
        // Capped so a hostile or buggy header cannot park a send for hours.
        Some(Duration::from_secs_f64(secs.min(300.0)))
    } else {
        None
    }
}

/// Checks that a changed message is the one asked for.
fn same_message(chat_id: ChatId, seq: Seq, m: Message) -> Result<Message> {
    if m.chat_id == chat_id && m.seq == seq {
        Ok(m)
    } else {
        Err(Error::Protocol(format!(
            "changed message {seq} of chat {chat_id}, the answer is {} of chat {}",
            m.seq, m.chat_id
        )))
    }
}

/// Percent-encodes a path segment (every byte but RFC 3986's unreserved ones), so an emoji,
/// or a `/` or `?` in one, reaches the server as one segment.
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len() * 3);
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_derived_from_the_base() {
        let c = Client::new("http://127.0.0.1:8080/").unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:8080");
        assert_eq!(c.ws_url(), "ws://127.0.0.1:8080/v1/ws");
        let c = Client::new("https://chat.example/prefix").unwrap();
        assert_eq!(c.ws_url(), "wss://chat.example/prefix/v1/ws");
        assert!(matches!(Client::new("ftp://x"), Err(Error::InvalidUrl(_))));
        assert!(matches!(
            Client::new("not a url"),
            Err(Error::InvalidUrl(_))
        ));
        assert!(matches!(
            Client::new("http://x/?a=b"),
            Err(Error::InvalidUrl(_))
        ));
    }

    #[test]
    fn tokens_are_shared_between_clones() {
        let c = Client::with_token("http://localhost:1", "t1").unwrap();
        let d = c.clone();
        assert_eq!(d.token().as_deref(), Some("t1"));
        c.set_token(None);
        assert_eq!(d.token(), None);
        assert!(matches!(
            d.subscribe_from(HashMap::new()),
            Err(Error::NotLoggedIn)
        ));
    }

    #[test]
    fn retry_after_parsing() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("1e9"), Some(Duration::from_secs(300)));
    }

    #[tokio::test]
    async fn requests_without_a_session_fail_locally() {
        let c = Client::new("http://127.0.0.1:1").unwrap();
        assert!(matches!(c.me().await, Err(Error::NotLoggedIn)));
        assert!(matches!(
            c.send(ChatId(1), "hi").await,
            Err(Error::NotLoggedIn)
        ));
    }

    #[tokio::test]
    async fn unreachable_server_is_a_retryable_transport_error_and_retries_end() {
        // Port 1 on loopback refuses connections: every attempt fails fast.
        let c = Client::builder("http://127.0.0.1:1")
            .token("t")
            .retry(RetryPolicy {
                max_attempts: 3,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(5),
            })
            .build()
            .unwrap();
        match c.list_chats().await {
            Err(Error::RetriesExhausted { attempts, last }) => {
                assert_eq!(attempts, 3);
                assert!(matches!(*last, Error::Transport { .. }));
            }
            other => panic!("expected exhausted retries, got {other:?}"),
        }
    }
}
