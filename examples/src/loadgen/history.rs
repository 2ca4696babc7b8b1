//! The history scenario: page back through a long chat with `GET /v1/fetch` and its page
//! tokens, timing every page.
//!
//! The chat is found by name among the user's chats. For millions of messages it is seeded
//! beforehand straight into the store ([`super::writes::seed_history`], the `seed-history`
//! command); for small runs (and the test suite) `seed_via_protocol` sends the missing messages
//! through the server first. Each reader starts at the newest page and follows
//! `next_page_token` back until the start of the chat (or `max_pages`); readers run
//! concurrently. Every page is checked: ascending, dense `seq`, continuing exactly where the
//! previous (newer) page began.

use super::api::{Account, Api, Target};
use super::progress;
use super::stats::{Latency, LatencySummary};
use super::sysmon::{Monitor, Proc, Usage};
use super::ws::connect;
use anyhow::{bail, Context as _};
use chat_core::protocol::ClientFrame;
use chat_core::ChatId;
use futures::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// What to run.
#[derive(Clone, Debug)]
pub struct HistoryParams {
    /// The reader's account (registered if needed when seeding through the protocol).
    pub email: String,
    /// Its password.
    pub password: String,
    /// The chat's name.
    pub chat_name: String,
    /// Make sure the chat has at least this many messages by sending the missing ones through
    /// the server (WebSocket) first; 0 sends nothing (the chat must exist).
    pub seed_via_protocol: u64,
    /// Messages per page (the contract allows 1..=500).
    pub page_size: u32,
    /// Stop each reader after this many pages.
    pub max_pages: Option<u64>,
    /// Concurrent readers, each paging from the newest message back.
    pub readers: usize,
    /// The server's PID, for its CPU and RSS.
    pub server_pid: Option<u32>,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for HistoryParams {
    fn default() -> Self {
        HistoryParams {
            email: "history@loadgen.test".into(),
            password: "loadgen password".into(),
            chat_name: "loadgen-history".into(),
            seed_via_protocol: 0,
            page_size: 50,
            max_pages: Some(20_000),
            readers: 1,
            server_pid: None,
            progress: true,
        }
    }
}

/// What a history run measured.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryResult {
    /// The chat.
    pub chat_id: ChatId,
    /// Its newest `seq` when the run started.
    pub last_seq: i64,
    /// Messages sent through the server to seed it.
    pub seeded: u64,
    /// Page size asked for.
    pub page_size: u32,
    /// Concurrent readers.
    pub readers: usize,
    /// Pages read (all readers).
    pub pages: u64,
    /// Messages read (all readers).
    pub messages: u64,
    /// Pages whose seqs were not dense and ascending, or did not continue the previous page.
    pub broken_pages: u64,
    /// Readers that reached the start of the chat (`next_page_token` null).
    pub reached_start: u64,
    /// Pages per second (all readers).
    pub pages_per_sec: f64,
    /// Latency of one `GET /v1/fetch` page.
    pub page_latency: LatencySummary,
    /// The server's usage while reading.
    pub server: Option<Usage>,
}

/// Runs the scenario against `target`; returns the result and the page-latency histogram.
pub async fn run(target: &Target, p: &HistoryParams) -> anyhow::Result<(HistoryResult, Latency)> {
    if p.readers == 0 || p.page_size == 0 {
        bail!("readers and page size must be at least 1");
    }
    let api = Api::new(target)?;
    let who = api
        .register_and_login(&p.email, &p.password)
        .await
        .with_context(|| format!("logging in as {}", p.email))?;
    let found = api
        .chats(&who)
        .await?
        .into_iter()
        .filter(|c| c.chat_name == p.chat_name)
        .max_by_key(|c| c.last_seq);
    let (chat_id, mut last_seq) = match found {
        Some(c) => (c.chat_id, c.last_seq.get()),
        None if p.seed_via_protocol > 0 => {
            (api.create_chat(&who, &p.chat_name, &[]).await?.chat_id, 0)
        }
        None => bail!(
            "{} has no chat named {:?}; seed one first (seed-history) or pass --seed",
            p.email,
            p.chat_name
        ),
    };
    let mut seeded = 0;
    if (last_seq as u64) < p.seed_via_protocol {
        seeded = p.seed_via_protocol - last_seq as u64;
        seed(target, &who, chat_id, seeded, p.progress).await?;
        last_seq = p.seed_via_protocol as i64;
    }

    let pages_total = p
        .max_pages
        .unwrap_or(u64::MAX)
        .min((last_seq as u64).div_ceil(u64::from(p.page_size)).max(1));
    let pb = progress::bar(p.progress, pages_total * p.readers as u64, "pages");
    let counters = Arc::new(PageCounters::default());
    let server_mon = p.server_pid.and_then(|pid| Monitor::start(Proc::Pid(pid)));
    let started = Instant::now();
    let readers: Vec<_> = (0..p.readers)
        .map(|_| {
            let api = api.clone();
            let who = who.clone();
            let counters = counters.clone();
            let pb = pb.clone();
            let (page_size, max_pages) = (p.page_size, p.max_pages);
            tokio::spawn(async move {
                read_back(&api, &who, chat_id, page_size, max_pages, &counters, &pb).await
            })
        })
        .collect();
    let mut hist = Latency::new();
    for r in futures::future::join_all(readers).await {
        hist.merge(&r.context("reader task")??);
    }
    let secs = started.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let pages = counters.pages.load(Ordering::Relaxed);
    Ok((
        HistoryResult {
            chat_id,
            last_seq,
            seeded,
            page_size: p.page_size,
            readers: p.readers,
            pages,
            messages: counters.messages.load(Ordering::Relaxed),
            broken_pages: counters.broken.load(Ordering::Relaxed),
            reached_start: counters.reached_start.load(Ordering::Relaxed),
            pages_per_sec: pages as f64 / secs.max(1e-9),
            page_latency: hist.summary(),
            server: server_mon.map(Monitor::finish),
        },
        hist,
    ))
}

#[derive(Default)]
struct PageCounters {
    pages: AtomicU64,
    messages: AtomicU64,
    broken: AtomicU64,
    reached_start: AtomicU64,
}

/// One reader: newest page, then back by token.
async fn read_back(
    api: &Api,
    who: &Account,
    chat: ChatId,
    page_size: u32,
    max_pages: Option<u64>,
    counters: &PageCounters,
    pb: &indicatif::ProgressBar,
) -> anyhow::Result<Latency> {
    let mut hist = Latency::new();
    let mut token: Option<String> = None;
    // The seq the next (older) page must end just below.
    let mut expect_below: Option<i64> = None;
    let mut pages = 0u64;
    loop {
        let t = Instant::now();
        let page = api
            .fetch_page(who, chat, token.as_deref(), page_size)
            .await?;
        hist.record(t.elapsed());
        pages += 1;
        counters.pages.fetch_add(1, Ordering::Relaxed);
        counters
            .messages
            .fetch_add(page.messages.len() as u64, Ordering::Relaxed);
        pb.inc(1);
        let seqs: Vec<i64> = page.messages.iter().map(|m| m.seq.get()).collect();
        let dense = seqs.windows(2).all(|w| w[1] == w[0] + 1);
        let continues = match (expect_below, seqs.last()) {
            (Some(below), Some(&last)) => last == below - 1,
            (_, None) => page.next_page_token.is_none(),
            (None, Some(_)) => true,
        };
        if !dense || !continues {
            counters.broken.fetch_add(1, Ordering::Relaxed);
        }
        expect_below = seqs.first().copied();
        match page.next_page_token {
            None => {
                counters.reached_start.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Some(t) => token = Some(t),
        }
        if max_pages.is_some_and(|m| pages >= m) {
            break;
        }
    }
    Ok(hist)
}

/// Sends `n` messages to `chat` over one WebSocket, 64 in flight, waiting for every ack.
async fn seed(
    target: &Target,
    who: &Account,
    chat: ChatId,
    n: u64,
    show: bool,
) -> anyhow::Result<()> {
    let pb = progress::bar(show, n, "seeding");
    let (ws, _) = connect(target, &who.token, None, 16 * 1024).await?;
    let (mut sink, mut stream) = ws.split();
    let mut sent = 0u64;
    let mut acked = 0u64;
    let run = super::run_id();
    let frame = |i: u64| {
        serde_json::to_string(&ClientFrame::Send {
            reply_to_seq: None,
            chat_id: chat,
            msg_text: super::padded_text(&format!("history {i} "), 100),
            timestamp: None,
            client_msg_id: format!("h{run}-{i}"),
        })
    };
    while sent < n.min(64) {
        sink.send(WsMessage::text(frame(sent)?)).await?;
        sent += 1;
    }
    while acked < n {
        let msg = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .context("no ack within 60 s while seeding")?
            .context("connection closed while seeding")??;
        let WsMessage::Text(t) = msg else { continue };
        if t.as_str().starts_with(r#"{"type":"ack""#) {
            acked += 1;
            pb.inc(1);
            if sent < n {
                sink.send(WsMessage::text(frame(sent)?)).await?;
                sent += 1;
            }
        } else if t.as_str().starts_with(r#"{"type":"error""#) {
            bail!(
                "seeding failed (raise the server's --send-rate): {}",
                t.as_str()
            );
        }
    }
    pb.finish_and_clear();
    let _ = sink.close().await;
    Ok(())
}
