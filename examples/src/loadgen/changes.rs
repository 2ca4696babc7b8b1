//! The changes scenario: edits and reactions at a fixed total rate, open loop, over REST, with
//! every member subscribed on a WebSocket to measure how soon `message_updated` arrives.
//!
//! Setup: U users in G groups of K members; each group gets M messages, message `s` (1-based)
//! sent by member `(s - 1) mod K`, so its sender is known without a lookup. Change `i` goes to
//! group `i mod G`, message `1 + (i / G) mod M`. A share of the changes (`edit_share`) are edits
//! by the message's sender, whose new text carries the change's number and scheduled time, so a
//! subscriber that sees the edit records change→update latency (once per edit: a later reaction
//! to the message carries the same text). The rest toggle a reaction: each
//! reaction change toggles one (member, emoji) pair of its message, cycling through the pairs:
//! added if the generator last took it back (or never added it), else taken back. So every
//! change really changes the message (none is a no-op that publishes nothing) and the expected
//! number of updates is `changed × K`.
//!
//! Change `i` is scheduled at `epoch + i / R` whatever the server does; requests in flight are
//! bounded (`max_in_flight`), and a change that cannot start because the bound is reached waits,
//! which shows up as latency, not as a lower rate.

use super::api::{accounts, Account, Api, Target};
use super::progress;
use super::stats::{Latency, LatencySummary};
use super::sysmon::{Monitor, Proc, Usage};
use super::ws::{classify, connect, Frame, LgText};
use anyhow::{bail, Context as _};
use chat_core::protocol::{EditRequest, SendRequest};
use chat_core::{ChatId, Seq};
use futures::StreamExt as _;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The emoji the reaction changes use.
const EMOJI: [&str; 4] = ["%F0%9F%91%8D", "%F0%9F%8E%89", "%F0%9F%91%80", "ok"];

/// What to run.
#[derive(Clone, Debug)]
pub struct ChangesParams {
    /// Users (U), each with one WebSocket.
    pub users: usize,
    /// Groups (G).
    pub groups: usize,
    /// Members per group (K); at most `users`.
    pub group_size: usize,
    /// Messages per group to change (M).
    pub messages: usize,
    /// Changes per second (R), across all groups.
    pub rate: f64,
    /// Share of the changes that are edits (the rest are reactions), 0 to 1.
    pub edit_share: f64,
    /// How long to make changes.
    pub duration: Duration,
    /// Requests in flight at most.
    pub max_in_flight: usize,
    /// How long to wait after the last change for outstanding answers and updates.
    pub drain_timeout: Duration,
    /// The server's PID, to report its CPU and RSS.
    pub server_pid: Option<u32>,
    /// Makes this run's e-mails unique.
    pub run_id: String,
    /// Password of every generated user.
    pub password: String,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for ChangesParams {
    fn default() -> Self {
        ChangesParams {
            users: 200,
            groups: 20,
            group_size: 10,
            messages: 50,
            rate: 500.0,
            edit_share: 0.5,
            duration: Duration::from_secs(20),
            max_in_flight: 256,
            drain_timeout: Duration::from_secs(10),
            server_pid: None,
            run_id: super::run_id(),
            password: "loadgen password".to_owned(),
            progress: true,
        }
    }
}

/// What a changes run measured.
#[derive(Clone, Debug, Serialize)]
pub struct ChangesResult {
    /// Users.
    pub users: usize,
    /// Groups.
    pub groups: usize,
    /// Members per group.
    pub group_size: usize,
    /// Messages changed per group.
    pub messages: usize,
    /// Target rate, changes per second.
    pub rate: f64,
    /// Share of edits.
    pub edit_share: f64,
    /// Changing time, seconds.
    pub duration_secs: f64,
    /// Changes scheduled.
    pub scheduled: u64,
    /// Changes answered 200.
    pub changed: u64,
    /// Of them, edits.
    pub edits: u64,
    /// Changes that failed.
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// `message_updated` frames received.
    pub updates: u64,
    /// Updates the changes should have produced (`changed × K`).
    pub expected_updates: u64,
    /// Changes answered per second, over the changing time plus the drain.
    pub changes_per_sec: f64,
    /// Changes answered per second per core the server used (when its PID is known).
    pub changes_per_server_core_sec: Option<f64>,
    /// Scheduled time to the REST answer, every change.
    pub change_to_answer: LatencySummary,
    /// Scheduled time to `message_updated` received, for edits, on every member's connection.
    pub change_to_update: LatencySummary,
    /// The server's CPU and memory over the changing time (with `server_pid`).
    pub server: Option<Usage>,
    /// The load generator's own CPU and memory.
    pub loadgen: Option<Usage>,
    /// Setup time, seconds.
    pub setup_secs: f64,
}

/// The histograms behind a result, for plotting.
#[derive(Clone, Debug, Default)]
pub struct ChangesHistograms {
    /// Change→answer.
    pub answer: Latency,
    /// Change→update (edits).
    pub update: Latency,
}

#[derive(Default)]
struct Counters {
    changed: AtomicU64,
    edits: AtomicU64,
    errors: AtomicU64,
    updates: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn failed(&self, e: &anyhow::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| format!("{e:#}"));
        }
    }
}

/// Runs the scenario against `target`.
pub async fn run(
    target: &Target,
    p: &ChangesParams,
) -> anyhow::Result<(ChangesResult, ChangesHistograms)> {
    if p.users == 0 || p.groups == 0 || p.group_size == 0 || p.messages == 0 {
        bail!("users, groups, group size and messages must be at least 1");
    }
    if p.group_size > p.users {
        bail!("a group of {} needs that many users", p.group_size);
    }
    if !p.rate.is_finite() || p.rate <= 0.0 || !(0.0..=1.0).contains(&p.edit_share) {
        bail!("the rate must be positive and the edit share between 0 and 1");
    }
    let setup_started = Instant::now();
    super::raise_fd_limit();
    let api = Api::new(target)?;
    let pb = progress::bar(p.progress, p.users as u64, "users");
    let users = accounts(
        &api,
        &format!("chg{}", p.run_id),
        &p.password,
        p.users,
        16,
        &pb,
    )
    .await?;
    pb.finish_and_clear();
    let member = |g: usize, j: usize| &users[(g * p.group_size + j) % users.len()];

    // Groups and their messages; message s of a group is sent by member (s - 1) mod K.
    let pb = progress::bar(p.progress, p.groups as u64, "groups");
    let mut chats = Vec::with_capacity(p.groups);
    for g in 0..p.groups {
        let others: Vec<_> = (1..p.group_size).map(|j| member(g, j).user_id).collect();
        let chat = api
            .create_chat(member(g, 0), &format!("changes {g}"), &others)
            .await?
            .chat_id;
        for s in 0..p.messages {
            let req = SendRequest {
                user_id: None,
                chat_id: chat,
                msg_text: format!("message {s} to change"),
                timestamp: None,
                client_msg_id: Some(format!("chg{s}")),
                reply_to_seq: None,
            };
            api.send(member(g, s % p.group_size), &req).await?;
        }
        chats.push(chat);
        pb.inc(1);
    }
    pb.finish_and_clear();

    // Every user subscribed: each counts updates and times the edits.
    let counters = Arc::new(Counters::default());
    let epoch = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut readers = Vec::with_capacity(users.len());
    for (i, u) in users.iter().enumerate() {
        let (ws, _) = connect(target, &u.token, None, 16 * 1024)
            .await
            .with_context(|| format!("opening connection {i}"))?;
        readers.push(tokio::spawn(read_loop(
            ws,
            epoch,
            counters.clone(),
            stop_rx.clone(),
        )));
    }
    let setup_secs = setup_started.elapsed().as_secs_f64();

    // Change, open loop.
    let server_mon = p.server_pid.and_then(|pid| Monitor::start(Proc::Pid(pid)));
    let self_mon = Monitor::start(Proc::SelfProc);
    let scheduled = (p.rate * p.duration.as_secs_f64()).round() as u64;
    let answers = Arc::new(Mutex::new(Latency::new()));
    let slots = Arc::new(Semaphore::new(p.max_in_flight.max(1)));
    let offset = epoch.elapsed();
    let start = Instant::now();
    let nanos_per_change = 1e9 / p.rate;
    let (g_n, m_n, k_n) = (p.groups as u64, p.messages as u64, p.group_size as u64);
    let pb = progress::bar(p.progress, scheduled, "changes");
    let mut reacted: HashMap<(usize, u64, usize, usize), bool> = HashMap::new();
    let mut tasks = Vec::with_capacity(scheduled as usize);
    for i in 0..scheduled {
        let sched = Duration::from_nanos((i as f64 * nanos_per_change) as u64);
        tokio::time::sleep_until((start + sched).into()).await;
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let g = (i % g_n) as usize;
        let round = i / g_n;
        let seq = 1 + round % m_n;
        let sender = member(g, ((seq - 1) % k_n) as usize).clone();
        // Deterministic in i, so the edit share holds over any window of the run.
        let edit = ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64)
            < p.edit_share;
        let change = if edit {
            let lg = LgText {
                id: i,
                sched_nanos: u64::try_from((offset + sched).as_nanos()).unwrap_or(u64::MAX),
            };
            Change::Edit(sender, super::padded_text(&lg.head(), 100))
        } else {
            // Reaction changes of a message cycle through (member, emoji) pairs, each toggled:
            // added if the generator last took it back (or never added it), else taken back.
            let visit = round / m_n;
            let pairs = k_n * EMOJI.len() as u64;
            let pair = visit % pairs;
            let j = (pair % k_n) as usize;
            let e = (pair / k_n) as usize;
            let on = reacted.entry((g, seq, j, e)).or_insert(false);
            *on = !*on;
            Change::React(member(g, j).clone(), EMOJI[e], *on)
        };
        let (api, counters, answers) = (api.clone(), counters.clone(), answers.clone());
        let chat = chats[g];
        tasks.push(tokio::spawn(async move {
            let is_edit = matches!(change, Change::Edit(..));
            match change.apply(&api, chat, Seq(seq as i64)).await {
                Ok(()) => {
                    counters.changed.fetch_add(1, Ordering::Relaxed);
                    if is_edit {
                        counters.edits.fetch_add(1, Ordering::Relaxed);
                    }
                    let took = start.elapsed().saturating_sub(sched);
                    if let Ok(mut h) = answers.lock() {
                        h.record(took);
                    }
                }
                Err(e) => counters.failed(&e),
            }
            drop(slot);
        }));
        pb.inc(1);
    }
    pb.finish_and_clear();
    for t in tasks {
        let _ = t.await;
    }
    let kc = p.group_size as u64;
    let deadline = Instant::now() + p.drain_timeout;
    while counters.updates.load(Ordering::Relaxed) < counters.changed.load(Ordering::Relaxed) * kc
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let active_secs = start.elapsed().as_secs_f64();
    let server = server_mon.map(Monitor::finish);
    let loadgen = self_mon.map(Monitor::finish);
    let _ = stop_tx.send(true);
    let mut hist = ChangesHistograms::default();
    for r in readers {
        if let Ok(h) = r.await {
            hist.update.merge(&h);
        }
    }
    if let Ok(h) = answers.lock() {
        hist.answer.merge(&h);
    }
    let changed = counters.changed.load(Ordering::Relaxed);
    let changes_per_sec = changed as f64 / active_secs.max(1e-9);
    let result = ChangesResult {
        users: p.users,
        groups: p.groups,
        group_size: p.group_size,
        messages: p.messages,
        rate: p.rate,
        edit_share: p.edit_share,
        duration_secs: p.duration.as_secs_f64(),
        scheduled,
        changed,
        edits: counters.edits.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        first_error: counters.first_error.lock().ok().and_then(|e| e.clone()),
        updates: counters.updates.load(Ordering::Relaxed),
        expected_updates: changed * kc,
        changes_per_sec,
        changes_per_server_core_sec: server
            .as_ref()
            .filter(|s| s.cores > 0.0)
            .map(|s| changes_per_sec / s.cores),
        change_to_answer: hist.answer.summary(),
        change_to_update: hist.update.summary(),
        server,
        loadgen,
        setup_secs,
    };
    Ok((result, hist))
}

/// One change to make.
enum Change {
    /// The sender's new text.
    Edit(Account, String),
    /// A member adds (`true`) or takes back an emoji (already percent-encoded).
    React(Account, &'static str, bool),
}

impl Change {
    async fn apply(self, api: &Api, chat: ChatId, seq: Seq) -> anyhow::Result<()> {
        match self {
            Change::Edit(who, text) => {
                api.edit(&who, chat, seq, &EditRequest { msg_text: text })
                    .await
            }
            Change::React(who, emoji, add) => api.react(&who, chat, seq, emoji, add).await,
        }
    }
}

/// Reads one connection until told to stop; returns its change→update histogram (edits).
async fn read_loop(
    ws: super::ws::WsStream,
    epoch: Instant,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> Latency {
    let (_sink, mut stream) = ws.split();
    let mut update = Latency::new();
    // A reaction to an edited message carries the edit's text again: time each edit once.
    let mut timed = std::collections::HashSet::new();
    loop {
        let msg = tokio::select! {
            biased;
            m = stream.next() => m,
            _ = stop.changed() => break,
        };
        match msg {
            Some(Ok(WsMessage::Text(t))) => {
                if let Frame::Updated(lg) = classify(t.as_str()) {
                    counters.updates.fetch_add(1, Ordering::Relaxed);
                    if let Some(lg) = lg.filter(|lg| timed.insert(lg.id)) {
                        let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        update.record_micros(now.saturating_sub(lg.sched_nanos) / 1000);
                    }
                }
            }
            Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => {}
        }
    }
    update
}
