//! The fan-out scenario: U users connected by WebSocket, in G groups of K members, sending at
//! a fixed total rate R, open loop.
//!
//! Send `i` is scheduled at `epoch + i / R` whatever the server does; a scheduler task hands it
//! to its sender's connection when that time comes (in batches, every millisecond). The message
//! text carries the scheduled time, so send→deliver and send→ack latencies are measured from
//! when the message *should* have left: a server (or generator) that falls behind shows up in
//! the latencies instead of silently lowering the rate. How late the scheduler itself was is
//! recorded separately (`generator_lateness`), so a saturated generator is visible too.
//!
//! Group `g` has members `(g*K + j) mod U` for `j < K`; send `i` goes to group `i mod G` from
//! its member `(i / G) mod K`, over that member's connection `(i / (G*K)) mod C`. Every member
//! connection (the sender's own included) receives each message once, so a run expects
//! `acked × K × C` deliveries.

use super::api::{accounts, Account, Api, Target};
use super::progress;
use super::stats::{Latency, LatencySummary};
use super::sysmon::{Monitor, Proc, Usage};
use super::ws::{classify, connect, Frame, LgText};
use anyhow::{bail, Context as _};
use chat_core::protocol::ClientFrame;
use chat_core::ChatId;
use futures::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// What to run.
#[derive(Clone, Debug)]
pub struct FanoutParams {
    /// Users (U), each with `conns_per_user` WebSockets.
    pub users: usize,
    /// Groups (G).
    pub groups: usize,
    /// Members per group (K); at most `users`.
    pub group_size: usize,
    /// WebSocket connections per user (C), like a user's several devices.
    pub conns_per_user: usize,
    /// Total sends per second (R), across all groups.
    pub rate: f64,
    /// How long to send.
    pub duration: Duration,
    /// Bytes of each message text (the seed's average is 100).
    pub msg_bytes: usize,
    /// How long to wait after the last send for outstanding acks and deliveries.
    pub drain_timeout: Duration,
    /// The server's PID, to report its CPU and RSS.
    pub server_pid: Option<u32>,
    /// Makes this run's e-mails unique.
    pub run_id: String,
    /// Password of every generated user.
    pub password: String,
    /// Registrations and logins in flight during setup.
    pub setup_concurrency: usize,
    /// Show a progress bar.
    pub progress: bool,
    /// Precede every send with a typing frame from its sender to its chat, as a client does
    /// while the person types (the server forwards at most one per user and chat a second).
    pub typing: bool,
}

impl Default for FanoutParams {
    fn default() -> Self {
        FanoutParams {
            users: 1000,
            groups: 100,
            group_size: 10,
            conns_per_user: 1,
            rate: 1000.0,
            duration: Duration::from_secs(30),
            msg_bytes: 100,
            drain_timeout: Duration::from_secs(10),
            server_pid: None,
            run_id: super::run_id(),
            password: "loadgen password".to_owned(),
            setup_concurrency: 16,
            progress: true,
            typing: false,
        }
    }
}

/// What a fan-out run measured.
#[derive(Clone, Debug, Serialize)]
pub struct FanoutResult {
    /// Users.
    pub users: usize,
    /// Groups.
    pub groups: usize,
    /// Members per group.
    pub group_size: usize,
    /// Connections per user.
    pub conns_per_user: usize,
    /// Target rate, sends per second.
    pub rate: f64,
    /// Sending time, seconds.
    pub duration_secs: f64,
    /// Bytes per message text.
    pub msg_bytes: usize,
    /// Sends scheduled (= rate × duration).
    pub scheduled: u64,
    /// Sends written to a socket.
    pub sent: u64,
    /// Sends acknowledged.
    pub acked: u64,
    /// Sends answered with an `error` frame.
    pub send_errors: u64,
    /// The first error frame seen, if any.
    pub first_error: Option<String>,
    /// `message` frames received.
    pub deliveries: u64,
    /// Deliveries the acked sends should have produced (`acked × K × C`).
    pub expected_deliveries: u64,
    /// Connections the server closed (or that failed) during the run.
    pub disconnects: u64,
    /// Scheduled sends that could not be queued because their connection was gone.
    pub unsendable: u64,
    /// Deliveries per second, over the sending time plus the drain.
    pub deliveries_per_sec: f64,
    /// Acks per second, over the same time.
    pub acks_per_sec: f64,
    /// Deliveries per second per core the server used (when its PID is known).
    pub deliveries_per_server_core_sec: Option<f64>,
    /// Scheduled send time to `message` frame received, for every delivery.
    pub send_to_deliver: LatencySummary,
    /// Scheduled send time to `ack` received.
    pub send_to_ack: LatencySummary,
    /// How late the generator put sends on the wire relative to their schedule.
    pub generator_lateness: LatencySummary,
    /// The server's CPU and memory over the sending time (with `server_pid`).
    pub server: Option<Usage>,
    /// The load generator's own CPU and memory over the same time.
    pub loadgen: Option<Usage>,
    /// Setup time (accounts, chats, connections), seconds.
    pub setup_secs: f64,
    /// Typing frames sent (with `--typing`).
    pub typing_sent: u64,
    /// Typing frames received from the server (other members' typing).
    pub typing_received: u64,
}

/// The histograms behind a result, for plotting.
#[derive(Clone, Debug, Default)]
pub struct FanoutHistograms {
    /// Send→deliver.
    pub deliver: Latency,
    /// Send→ack.
    pub ack: Latency,
    /// Generator lateness.
    pub lateness: Latency,
}

/// Counters shared by every connection's reader.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    deliveries: AtomicU64,
    disconnects: AtomicU64,
    unsendable: AtomicU64,
    typing_sent: AtomicU64,
    typing_received: AtomicU64,
    first_error: Mutex<Option<String>>,
}

/// Runs the scenario against `target`.
pub async fn run(
    target: &Target,
    p: &FanoutParams,
) -> anyhow::Result<(FanoutResult, FanoutHistograms)> {
    if p.users == 0 || p.groups == 0 || p.group_size == 0 || p.conns_per_user == 0 {
        bail!("users, groups, group size and connections per user must be at least 1");
    }
    if p.group_size > p.users {
        bail!(
            "a group of {} members needs at least that many users (have {})",
            p.group_size,
            p.users
        );
    }
    if !p.rate.is_finite() || p.rate <= 0.0 {
        bail!("the rate must be positive");
    }
    let setup_started = Instant::now();
    super::raise_fd_limit();
    let api = Api::new(target)?;

    let pb = progress::bar(p.progress, p.users as u64, "users");
    let users = accounts(
        &api,
        &format!("fan{}", p.run_id),
        &p.password,
        p.users,
        p.setup_concurrency,
        &pb,
    )
    .await?;
    pb.finish_and_clear();

    let pb = progress::bar(p.progress, p.groups as u64, "groups");
    let chats = create_groups(&api, &users, p, &pb).await?;
    pb.finish_and_clear();

    // Connect everyone: connection (u, c) is at index u * C + c.
    let pb = progress::bar(
        p.progress,
        (p.users * p.conns_per_user) as u64,
        "connections",
    );
    let counters = Arc::new(Counters::default());
    let epoch = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = Vec::with_capacity(p.users * p.conns_per_user);
    let mut readers = Vec::with_capacity(p.users * p.conns_per_user);
    let opened = futures::stream::iter(
        users
            .iter()
            .flat_map(|u| (0..p.conns_per_user).map(move |_| u.clone())),
    )
    .map(|u: Account| {
        let target = target.clone();
        async move { connect(&target, &u.token, None, 16 * 1024).await }
    })
    .buffered(64)
    .collect::<Vec<_>>()
    .await;
    for (i, r) in opened.into_iter().enumerate() {
        let (ws, _) = r.with_context(|| format!("opening connection {i}"))?;
        let (sink, stream) = ws.split();
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(write_loop(sink, rx, counters.clone()));
        readers.push(tokio::spawn(read_loop(
            stream,
            epoch,
            counters.clone(),
            stop_rx.clone(),
        )));
        conns.push(tx);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let setup_secs = setup_started.elapsed().as_secs_f64();

    // Send, open loop.
    let server_mon = p.server_pid.and_then(|pid| Monitor::start(Proc::Pid(pid)));
    let self_mon = Monitor::start(Proc::SelfProc);
    let scheduled = (p.rate * p.duration.as_secs_f64()).round() as u64;
    let pb = progress::bar(p.progress, p.duration.as_secs().max(1), "sending");
    let send_start = Instant::now();
    let lateness = schedule(p, &chats, &conns, scheduled, epoch, &counters, &pb).await;
    pb.finish_and_clear();

    // Drain: wait for every send to be answered and every delivery to arrive.
    let kc = (p.group_size * p.conns_per_user) as u64;
    let deadline = Instant::now() + p.drain_timeout;
    loop {
        // Every queued send, not just those already flushed, must be answered.
        let queued = scheduled - counters.unsendable.load(Ordering::Relaxed);
        let acked = counters.acked.load(Ordering::Relaxed);
        let answered = acked + counters.errors.load(Ordering::Relaxed);
        let delivered = counters.deliveries.load(Ordering::Relaxed);
        if (answered >= queued && delivered >= acked * kc) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let active_secs = send_start.elapsed().as_secs_f64();
    let server = server_mon.map(Monitor::finish);
    let loadgen = self_mon.map(Monitor::finish);

    // Stop the readers and collect their histograms.
    let _ = stop_tx.send(true);
    drop(conns);
    let mut hist = FanoutHistograms {
        lateness,
        ..FanoutHistograms::default()
    };
    for r in readers {
        if let Ok((deliver, ack)) = r.await {
            hist.deliver.merge(&deliver);
            hist.ack.merge(&ack);
        }
    }

    let acked = counters.acked.load(Ordering::Relaxed);
    let deliveries = counters.deliveries.load(Ordering::Relaxed);
    let deliveries_per_sec = deliveries as f64 / active_secs.max(1e-9);
    let first_error = counters.first_error.lock().ok().and_then(|e| e.clone());
    let result = FanoutResult {
        users: p.users,
        groups: p.groups,
        group_size: p.group_size,
        conns_per_user: p.conns_per_user,
        rate: p.rate,
        duration_secs: p.duration.as_secs_f64(),
        msg_bytes: p.msg_bytes,
        scheduled,
        sent: counters.sent.load(Ordering::Relaxed),
        acked,
        send_errors: counters.errors.load(Ordering::Relaxed),
        first_error,
        deliveries,
        expected_deliveries: acked * kc,
        disconnects: counters.disconnects.load(Ordering::Relaxed),
        unsendable: counters.unsendable.load(Ordering::Relaxed),
        deliveries_per_sec,
        acks_per_sec: acked as f64 / active_secs.max(1e-9),
        deliveries_per_server_core_sec: server
            .as_ref()
            .filter(|s| s.cores > 0.0)
            .map(|s| deliveries_per_sec / s.cores),
        send_to_deliver: hist.deliver.summary(),
        send_to_ack: hist.ack.summary(),
        generator_lateness: hist.lateness.summary(),
        server,
        loadgen,
        setup_secs,
        typing_sent: counters.typing_sent.load(Ordering::Relaxed),
        typing_received: counters.typing_received.load(Ordering::Relaxed),
    };
    Ok((result, hist))
}

/// Creates the G group chats; returns their ids.
async fn create_groups(
    api: &Api,
    users: &[Account],
    p: &FanoutParams,
    pb: &indicatif::ProgressBar,
) -> anyhow::Result<Vec<ChatId>> {
    let made = futures::stream::iter(0..p.groups)
        .map(|g| {
            let members: Vec<&Account> = (0..p.group_size)
                .map(|j| &users[(g * p.group_size + j) % users.len()])
                .collect();
            let others: Vec<_> = members[1..].iter().map(|a| a.user_id).collect();
            let owner = members[0].clone();
            let api = api.clone();
            async move {
                api.create_chat(&owner, &format!("fanout {g}"), &others)
                    .await
                    .map(|c| c.chat_id)
            }
        })
        .buffered(8)
        .inspect(|_| pb.inc(1))
        .collect::<Vec<_>>()
        .await;
    made.into_iter().collect()
}

/// Hands every scheduled send to its connection at its time; returns the lateness histogram.
async fn schedule(
    p: &FanoutParams,
    chats: &[ChatId],
    conns: &[mpsc::UnboundedSender<String>],
    total: u64,
    epoch: Instant,
    counters: &Counters,
    pb: &indicatif::ProgressBar,
) -> Latency {
    let mut lateness = Latency::new();
    let g = p.groups as u64;
    let k = p.group_size as u64;
    let c = p.conns_per_user as u64;
    let u = p.users as u64;
    let nanos_per_send = 1e9 / p.rate;
    // Sends are timed from now; `epoch` (the readers' clock origin) is a little earlier.
    let offset = epoch.elapsed();
    let start = Instant::now();
    let mut next: u64 = 0;
    let mut last_report = start;
    while next < total {
        let now = Instant::now();
        let elapsed = now.duration_since(start).as_nanos() as f64;
        let due = ((elapsed / nanos_per_send).floor() as u64 + 1).min(total);
        while next < due {
            let i = next;
            next += 1;
            let sched = Duration::from_nanos((i as f64 * nanos_per_send) as u64);
            lateness.record(now.duration_since(start).saturating_sub(sched));
            let group = (i % g) as usize;
            let member = (i / g) % k;
            let user = ((group as u64) * k + member) % u;
            let conn = (user * c + (i / (g * k)) % c) as usize;
            let lg = LgText {
                id: i,
                sched_nanos: u64::try_from((offset + sched).as_nanos()).unwrap_or(u64::MAX),
            };
            if p.typing {
                let typing = ClientFrame::Typing {
                    chat_id: chats[group],
                };
                if let Ok(json) = serde_json::to_string(&typing) {
                    if conns[conn].send(json).is_ok() {
                        counters.typing_sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let frame = ClientFrame::Send {
                reply_to_seq: None,
                chat_id: chats[group],
                msg_text: super::padded_text(&lg.head(), p.msg_bytes),
                timestamp: Some(chat_core::ids::now_millis()),
                client_msg_id: format!("lg{i}"),
            };
            let Ok(json) = serde_json::to_string(&frame) else {
                continue;
            };
            if conns[conn].send(json).is_err() {
                // The connection's writer is gone (the server closed it).
                counters.unsendable.fetch_add(1, Ordering::Relaxed);
            }
        }
        if now.duration_since(last_report) >= Duration::from_millis(250) {
            last_report = now;
            pb.set_position(now.duration_since(start).as_secs());
            pb.set_message(format!(
                "sent {} acked {} delivered {}",
                counters.sent.load(Ordering::Relaxed),
                counters.acked.load(Ordering::Relaxed),
                counters.deliveries.load(Ordering::Relaxed)
            ));
        }
        if next < total {
            let at = start + Duration::from_nanos((next as f64 * nanos_per_send) as u64);
            tokio::time::sleep_until(at.into()).await;
        }
    }
    lateness
}

/// Writes queued sends to one connection, batching whatever is queued into one flush.
async fn write_loop(
    mut sink: futures::stream::SplitSink<super::ws::WsStream, WsMessage>,
    mut rx: mpsc::UnboundedReceiver<String>,
    counters: Arc<Counters>,
) {
    while let Some(first) = rx.recv().await {
        let mut n = 1;
        if sink.feed(WsMessage::text(first)).await.is_err() {
            return;
        }
        while let Ok(more) = rx.try_recv() {
            n += 1;
            if sink.feed(WsMessage::text(more)).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
        counters.sent.fetch_add(n, Ordering::Relaxed);
    }
    // The scheduler is done with this connection: close it politely.
    let _ = sink.close().await;
}

/// Reads one connection until told to stop; returns its send→deliver and send→ack histograms.
async fn read_loop(
    mut stream: futures::stream::SplitStream<super::ws::WsStream>,
    epoch: Instant,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> (Latency, Latency) {
    let mut deliver = Latency::new();
    let mut ack = Latency::new();
    loop {
        let msg = tokio::select! {
            biased;
            m = stream.next() => m,
            _ = stop.changed() => break,
        };
        match msg {
            Some(Ok(WsMessage::Text(t))) => {
                let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                match classify(t.as_str()) {
                    Frame::Message(lg) => {
                        deliver.record_micros(now.saturating_sub(lg.sched_nanos) / 1000);
                        counters.deliveries.fetch_add(1, Ordering::Relaxed);
                    }
                    Frame::Ack(lg) => {
                        ack.record_micros(now.saturating_sub(lg.sched_nanos) / 1000);
                        counters.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Frame::Error(raw) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut first) = counters.first_error.lock() {
                            first.get_or_insert_with(|| raw.to_owned());
                        }
                    }
                    Frame::Updated(_) => {}
                    Frame::Other => {
                        if t.as_str().starts_with(r#"{"type":"typing""#) {
                            counters.typing_received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => {
                if !*stop.borrow() {
                    counters.disconnects.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
            Some(Ok(_)) => {}
        }
    }
    (deliver, ack)
}
