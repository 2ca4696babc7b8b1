//! The writes scenario: sustained acknowledged appends per second.
//!
//! - [`run_server`]: S senders against a running server, each with a window of W sends in
//!   flight (closed loop: a new send leaves when an ack comes back), over the WebSocket or
//!   `POST /v1/send`. Each sender writes to its own chat (of which it is the only member), so the
//!   fan-out is one delivery per send and the store's append path is what is measured. The
//!   server's per-user send rate limit must be off (`chat-server --send-rate 0`).
//! - [`run_store`]: the same straight into a store backend (SQLite file, MySQL or Cassandra URL)
//!   through `chat_storage::open`, without a server: the store's own ceiling. It also seeds the
//!   history scenario's chat ([`seed_history`]).

use super::api::{accounts, Account, Api, Target};
use super::progress;
use super::stats::{Latency, LatencySummary};
use super::sysmon::{Monitor, Proc, Usage};
use super::ws::{classify, connect, Frame, LgText};
use anyhow::{bail, Context as _};
use argon2::password_hash::{PasswordHasher as _, SaltString};
use chat_core::protocol::{ClientFrame, SendRequest};
use chat_core::{ChatId, NewChat, NewMessage, NewUser, UserId};
use chat_storage::open::{open, StoreConfig, Stores};
use futures::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// How sends reach the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// WebSocket `send` frames, answered by `ack` frames.
    Ws,
    /// `POST /v1/send`, answered by 201.
    Rest,
    /// The SDK (`chat_client::Client::send`) with a connected subscription: its sends travel
    /// over the subscription's WebSocket. The SDK keeps one send in flight per chat, so
    /// `window` is the number of concurrent callers queued on the sender's chat.
    SdkWs,
    /// The SDK without a subscription: its sends go over REST.
    SdkRest,
}

/// What to run against a server.
#[derive(Clone, Debug)]
pub struct ServerWritesParams {
    /// Concurrent senders (users), each with its own chat.
    pub senders: usize,
    /// Sends in flight per sender.
    pub window: usize,
    /// How long to send.
    pub duration: Duration,
    /// Transport.
    pub via: Via,
    /// Bytes per message text.
    pub msg_bytes: usize,
    /// The server's PID, for its CPU and RSS.
    pub server_pid: Option<u32>,
    /// Makes this run's e-mails unique.
    pub run_id: String,
    /// Password of every generated user.
    pub password: String,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for ServerWritesParams {
    fn default() -> Self {
        ServerWritesParams {
            senders: 64,
            window: 32,
            duration: Duration::from_secs(20),
            via: Via::Ws,
            msg_bytes: 100,
            server_pid: None,
            run_id: super::run_id(),
            password: "loadgen password".to_owned(),
            progress: true,
        }
    }
}

/// What a writes run measured.
#[derive(Clone, Debug, Serialize)]
pub struct WritesResult {
    /// `ws`, `rest` or `store`.
    pub via: String,
    /// The store URL for store runs.
    pub store: Option<String>,
    /// Concurrent writers.
    pub writers: usize,
    /// In flight per writer.
    pub window: usize,
    /// Appends acknowledged.
    pub acked: u64,
    /// Appends that failed.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Seconds from the first send to the last ack.
    pub secs: f64,
    /// Acknowledged appends per second.
    pub acked_per_sec: f64,
    /// Send (or `append` call) to acknowledgement.
    pub ack_latency: LatencySummary,
    /// The server's usage (server runs with its PID).
    pub server: Option<Usage>,
    /// The generator's (or, for store runs, the store's and generator's) usage.
    pub loadgen: Option<Usage>,
}

/// Failure bookkeeping shared by the writers.
#[derive(Default)]
struct Tally {
    acked: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.first_error.lock() {
            f.get_or_insert(e);
        }
    }
}

/// Runs sustained sends against `target`; returns the result and the ack-latency histogram.
pub async fn run_server(
    target: &Target,
    p: &ServerWritesParams,
) -> anyhow::Result<(WritesResult, Latency)> {
    if p.senders == 0 || p.window == 0 {
        bail!("senders and window must be at least 1");
    }
    super::raise_fd_limit();
    let api = Api::new(target)?;
    let pb = progress::bar(p.progress, p.senders as u64, "users");
    let users = accounts(
        &api,
        &format!("wr{}", p.run_id),
        &p.password,
        p.senders,
        16,
        &pb,
    )
    .await?;
    pb.finish_and_clear();
    let mut chats = Vec::with_capacity(users.len());
    for (i, u) in users.iter().enumerate() {
        chats.push(
            api.create_chat(u, &format!("writes {i}"), &[])
                .await?
                .chat_id,
        );
    }

    let tally = Arc::new(Tally::default());
    let server_mon = p.server_pid.and_then(|pid| Monitor::start(Proc::Pid(pid)));
    let self_mon = Monitor::start(Proc::SelfProc);
    let started = Instant::now();
    let deadline = started + p.duration;
    let mut tasks = Vec::new();
    for (i, (u, chat)) in users.iter().zip(&chats).enumerate() {
        match p.via {
            Via::Ws => {
                let (ws, _) = connect(target, &u.token, None, 16 * 1024)
                    .await
                    .with_context(|| format!("connecting sender {i}"))?;
                tasks.push(tokio::spawn(ws_sender(
                    ws,
                    *chat,
                    p.window,
                    p.msg_bytes,
                    started,
                    deadline,
                    tally.clone(),
                )));
            }
            Via::SdkWs | Via::SdkRest => {
                let client = chat_client::Client::builder(&target.base)
                    .token(u.token.clone())
                    .user_id(u.user_id)
                    .build()
                    .with_context(|| format!("SDK client of sender {i}"))?;
                let sub = if p.via == Via::SdkWs {
                    Some(
                        sdk_connected(&client)
                            .await
                            .with_context(|| format!("subscribing sender {i}"))?,
                    )
                } else {
                    None
                };
                for w in 0..p.window {
                    tasks.push(tokio::spawn(sdk_sender(
                        client.clone(),
                        *chat,
                        (i * p.window + w) as u64,
                        p.msg_bytes,
                        deadline,
                        tally.clone(),
                    )));
                }
                // The stream must live (and be read) for the socket to stay up.
                if let Some(mut sub) = sub {
                    tokio::spawn(async move {
                        use futures::StreamExt as _;
                        while sub.next().await.is_some() {}
                    });
                }
            }
            Via::Rest => {
                for w in 0..p.window {
                    tasks.push(tokio::spawn(rest_sender(
                        api.clone(),
                        u.clone(),
                        *chat,
                        (i * p.window + w) as u64,
                        p.msg_bytes,
                        deadline,
                        tally.clone(),
                    )));
                }
            }
        }
    }
    let hist = progress_until_done(p.progress, Measure::Seconds(p.duration), &tally, tasks).await;
    let secs = started.elapsed().as_secs_f64();
    let acked = tally.acked.load(Ordering::Relaxed);
    Ok((
        WritesResult {
            via: match p.via {
                Via::Ws => "ws".into(),
                Via::Rest => "rest".into(),
                Via::SdkWs => "sdk_ws".into(),
                Via::SdkRest => "sdk_rest".into(),
            },
            store: None,
            writers: p.senders,
            window: p.window,
            acked,
            errors: tally.errors.load(Ordering::Relaxed),
            first_error: tally.first_error.lock().ok().and_then(|f| f.clone()),
            secs,
            acked_per_sec: acked as f64 / secs.max(1e-9),
            ack_latency: hist.summary(),
            server: server_mon.map(Monitor::finish),
            loadgen: self_mon.map(Monitor::finish),
        },
        hist,
    ))
}

/// What the progress bar of a writes run counts.
#[derive(Clone, Copy)]
enum Measure {
    /// A run of fixed length: the bar is seconds.
    Seconds(Duration),
    /// A run of fixed size: the bar is appends.
    Appends(u64),
}

/// Shows progress while the writer tasks run; merges their histograms.
async fn progress_until_done(
    show: bool,
    measure: Measure,
    tally: &Tally,
    tasks: Vec<tokio::task::JoinHandle<Latency>>,
) -> Latency {
    let pb = match measure {
        Measure::Seconds(d) => progress::bar(show, d.as_secs().max(1), "writing"),
        Measure::Appends(n) => progress::bar(show, n, "appending"),
    };
    let started = Instant::now();
    let mut all = futures::future::join_all(tasks);
    let results = loop {
        tokio::select! {
            r = &mut all => break r,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                let acked = tally.acked.load(Ordering::Relaxed);
                let rate = acked as f64 / started.elapsed().as_secs_f64().max(1e-9);
                match measure {
                    Measure::Seconds(_) => {
                        pb.set_position(started.elapsed().as_secs());
                        pb.set_message(format!("acked {acked} ({rate:.0}/s)"));
                    }
                    Measure::Appends(_) => {
                        pb.set_position(acked);
                        pb.set_message(format!("{rate:.0}/s"));
                    }
                }
            }
        }
    };
    pb.finish_and_clear();
    let mut hist = Latency::new();
    for h in results.into_iter().flatten() {
        hist.merge(&h);
    }
    hist
}

/// One WebSocket sender: keeps `window` sends in flight until the deadline, then waits for the
/// outstanding acks.
async fn ws_sender(
    ws: super::ws::WsStream,
    chat: ChatId,
    window: usize,
    msg_bytes: usize,
    epoch: Instant,
    deadline: Instant,
    tally: Arc<Tally>,
) -> Latency {
    let mut hist = Latency::new();
    let (mut sink, mut stream) = ws.split();
    let mut next_id = 0u64;
    let mut in_flight = 0usize;
    let frame = |id: u64| {
        let lg = LgText {
            id,
            sched_nanos: u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX),
        };
        serde_json::to_string(&ClientFrame::Send {
            reply_to_seq: None,
            chat_id: chat,
            msg_text: super::padded_text(&lg.head(), msg_bytes),
            timestamp: None,
            client_msg_id: format!("w{id}"),
        })
        .unwrap_or_default()
    };
    for _ in 0..window {
        if sink.feed(WsMessage::text(frame(next_id))).await.is_err() {
            tally.error("connection closed while sending".into());
            return hist;
        }
        next_id += 1;
        in_flight += 1;
    }
    if sink.flush().await.is_err() {
        tally.error("connection closed while sending".into());
        return hist;
    }
    // The server may close a connection and stop answering; bound the wait for stragglers.
    let give_up = deadline + Duration::from_secs(30);
    while in_flight > 0 {
        let msg = match tokio::time::timeout_at(give_up.into(), stream.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(_) => {
                tally.error("connection closed with sends in flight".into());
                break;
            }
            Err(_) => {
                tally.error(format!("{in_flight} sends unanswered 30 s after the end"));
                break;
            }
        };
        let WsMessage::Text(t) = msg else { continue };
        let answered = match classify(t.as_str()) {
            Frame::Ack(lg) => {
                let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                hist.record_micros(now.saturating_sub(lg.sched_nanos) / 1000);
                tally.acked.fetch_add(1, Ordering::Relaxed);
                true
            }
            Frame::Error(raw) => {
                tally.error(raw.to_owned());
                true
            }
            _ => false,
        };
        if !answered {
            continue;
        }
        in_flight -= 1;
        if Instant::now() < deadline {
            if sink.send(WsMessage::text(frame(next_id))).await.is_err() {
                tally.error("connection closed while sending".into());
                break;
            }
            next_id += 1;
            in_flight += 1;
        }
    }
    let _ = sink.close().await;
    hist
}

/// One REST sender: one request at a time until the deadline.
async fn rest_sender(
    api: Api,
    who: Account,
    chat: ChatId,
    worker: u64,
    msg_bytes: usize,
    deadline: Instant,
    tally: Arc<Tally>,
) -> Latency {
    let mut hist = Latency::new();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let req = SendRequest {
            reply_to_seq: None,
            user_id: None,
            chat_id: chat,
            msg_text: super::padded_text(&format!("lg {n} 0 "), msg_bytes),
            timestamp: None,
            client_msg_id: Some(format!("r{worker}-{n}")),
        };
        n += 1;
        let t = Instant::now();
        match api.send(&who, &req).await {
            Ok(_) => {
                hist.record(t.elapsed());
                tally.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tally.error(format!("{e:#}")),
        }
    }
    hist
}

/// A subscription of `client` that has connected (so the SDK's sends use its socket).
async fn sdk_connected(client: &chat_client::Client) -> anyhow::Result<chat_client::Subscription> {
    use futures::StreamExt as _;
    let mut sub = client.subscribe().await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Ok(Some(chat_client::Event::Connected)) => return Ok(sub),
            Ok(Some(_)) => {}
            Ok(None) => bail!("the subscription ended before connecting"),
            Err(_) => bail!("the subscription did not connect within 10 s"),
        }
    }
}

/// One caller of the SDK's `send`, closed loop, until the deadline.
async fn sdk_sender(
    client: chat_client::Client,
    chat: ChatId,
    worker: u64,
    msg_bytes: usize,
    deadline: Instant,
    tally: Arc<Tally>,
) -> Latency {
    let mut hist = Latency::new();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let text = super::padded_text(&format!("lg {n} 0 "), msg_bytes);
        let options =
            chat_client::SendOptions::default().with_client_msg_id(format!("s{worker}-{n}"));
        n += 1;
        let t = Instant::now();
        match client.send_with(chat, &text, options).await {
            Ok(_) => {
                hist.record(t.elapsed());
                tally.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tally.error(e.to_string()),
        }
    }
    hist
}

/// What to run straight against a store.
#[derive(Clone, Debug)]
pub struct StoreWritesParams {
    /// Message store: `sqlite` (a file under `data_dir`), `sqlite:///path.db`, `mysql://…` or
    /// `cassandra://…` (the last two need the `mysql` / `cassandra` features).
    pub store: String,
    /// Metadata store for the user and chat the messages belong to: `sqlite` (under
    /// `data_dir`) or `mysql://…`. Cassandra stores messages only.
    pub metadata: String,
    /// Where `sqlite` keeps its file.
    pub data_dir: PathBuf,
    /// Appends in flight.
    pub concurrency: usize,
    /// Stop after this many appends (whichever of count and duration comes first).
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Chats to spread the appends over (each gets its own seq counter).
    pub chats: usize,
    /// Bytes per message text.
    pub msg_bytes: usize,
    /// Owner of the chats (created if missing).
    pub email: String,
    /// Its password (stored as an argon2id hash so the user can log in through the server).
    pub password: String,
    /// Name of the chats (found by name if they exist; `<name>` for one chat, `<name> <i>` for
    /// several).
    pub chat_name: String,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for StoreWritesParams {
    fn default() -> Self {
        StoreWritesParams {
            store: "sqlite".into(),
            metadata: "sqlite".into(),
            data_dir: PathBuf::from("./chat-data"),
            concurrency: 1024,
            count: None,
            duration: Some(Duration::from_secs(20)),
            chats: 16,
            msg_bytes: 100,
            email: "writer@loadgen.test".into(),
            password: "loadgen password".into(),
            chat_name: "loadgen-writes".into(),
            progress: true,
        }
    }
}

/// Appends straight into a store; returns the result, the append-latency histogram and the
/// chats written to.
pub async fn run_store(
    p: &StoreWritesParams,
) -> anyhow::Result<(WritesResult, Latency, Vec<ChatId>)> {
    if p.concurrency == 0 || p.chats == 0 {
        bail!("concurrency and chats must be at least 1");
    }
    if p.count.is_none() && p.duration.is_none() {
        bail!("give a count or a duration");
    }
    let stores = open(&StoreConfig {
        metadata: p.metadata.clone(),
        metadata_replicas: Vec::new(),
        messages: p.store.clone(),
        data_dir: p.data_dir.clone(),
    })
    .await
    .with_context(|| format!("opening {} / {}", p.metadata, p.store))?;
    let (owner, chats) = ensure_chats(&stores, p).await?;

    let tally = Arc::new(Tally::default());
    let issued = Arc::new(AtomicU64::new(0));
    let self_mon = Monitor::start(Proc::SelfProc);
    let started = Instant::now();
    let deadline = p.duration.map(|d| started + d);
    let limit = p.count.unwrap_or(u64::MAX);
    let text = super::padded_text("", p.msg_bytes);
    let mut tasks = Vec::with_capacity(p.concurrency);
    for _ in 0..p.concurrency {
        let messages = stores.messages.clone();
        let tally = tally.clone();
        let issued = issued.clone();
        let chats = chats.clone();
        let text = text.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Latency::new();
            loop {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if i >= limit || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let t = Instant::now();
                let r = messages
                    .append(NewMessage {
                        reply_to_seq: None,
                        chat_id: chats[(i % chats.len() as u64) as usize],
                        sender_id: owner,
                        msg_text: text.clone(),
                        sent_at: chat_core::ids::now_millis(),
                        timestamp: None,
                        client_msg_id: None,
                    })
                    .await;
                match r {
                    Ok(_) => {
                        hist.record(t.elapsed());
                        tally.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tally.error(e.to_string()),
                }
            }
            hist
        }));
    }
    let measure = match (p.count, p.duration) {
        (Some(count), _) => Measure::Appends(count),
        (None, d) => Measure::Seconds(d.unwrap_or_default()),
    };
    let hist = progress_until_done(p.progress, measure, &tally, tasks).await;
    stores.messages.flush().await?;
    let secs = started.elapsed().as_secs_f64();
    let acked = tally.acked.load(Ordering::Relaxed);
    Ok((
        WritesResult {
            via: "store".into(),
            store: Some(chat_storage::open::redact(&p.store)),
            writers: p.concurrency,
            window: 1,
            acked,
            errors: tally.errors.load(Ordering::Relaxed),
            first_error: tally.first_error.lock().ok().and_then(|f| f.clone()),
            secs,
            acked_per_sec: acked as f64 / secs.max(1e-9),
            ack_latency: hist.summary(),
            server: None,
            loadgen: self_mon.map(Monitor::finish),
        },
        hist,
        chats,
    ))
}

/// Finds or creates the owner account and its chats in the metadata store.
async fn ensure_chats(
    stores: &Stores,
    p: &StoreWritesParams,
) -> anyhow::Result<(UserId, Vec<ChatId>)> {
    let email = p.email.trim().to_lowercase();
    let owner = match stores.metadata.user_credentials(&email).await? {
        Some(c) => c.user.user_id,
        None => {
            let pw = p.password.clone();
            let pw_hash = tokio::task::spawn_blocking(move || {
                let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
                argon2::Argon2::default()
                    .hash_password(pw.as_bytes(), &salt)
                    .map(|h| h.to_string())
                    .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
            })
            .await??;
            stores
                .metadata
                .create_user(NewUser {
                    email: email.clone(),
                    display_name: "loadgen".into(),
                    pw_hash,
                    created_at: chat_core::ids::now_millis(),
                })
                .await?
                .user_id
        }
    };
    let existing = stores.metadata.chats_of_user(owner).await?;
    let mut chats = Vec::with_capacity(p.chats);
    for i in 0..p.chats {
        let name = if p.chats == 1 {
            p.chat_name.clone()
        } else {
            format!("{} {i}", p.chat_name)
        };
        let id = match existing.iter().find(|(c, _)| c.chat_name == name) {
            Some((c, _)) => c.chat_id,
            None => {
                stores
                    .metadata
                    .create_chat(NewChat {
                        chat_name: name,
                        owner_id: owner,
                        member_ids: Vec::new(),
                        created_at: chat_core::ids::now_millis(),
                    })
                    .await?
                    .0
                    .chat_id
            }
        };
        chats.push(id);
    }
    Ok((owner, chats))
}

/// Seeds the history scenario's chat: appends `messages` messages to one chat named
/// `chat_name`, owned by `email`, straight into the store (run it before starting the server,
/// or against its data directory while it runs: SQLite's WAL lets two processes share the
/// file). Returns the append result and the chat.
pub async fn seed_history(
    mut p: StoreWritesParams,
    messages: u64,
) -> anyhow::Result<(WritesResult, ChatId)> {
    p.chats = 1;
    p.count = Some(messages);
    p.duration = None;
    let (result, _, chats) = run_store(&p).await?;
    let chat = chats.first().copied().context("no chat was created")?;
    Ok((result, chat))
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            chat_storage::open::redact("mysql://root:secret@127.0.0.1:3306/chat"),
            "mysql://root:***@127.0.0.1:3306/chat"
        );
        assert_eq!(chat_storage::open::redact("sqlite"), "sqlite");
    }
}
