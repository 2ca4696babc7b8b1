//! The side-by-side scenarios: the same load against chat-server or Centrifugo ([`Peer`]),
//! measured the same way (`scripts/bench.sh peers` runs them interleaved and tabulates them).
//!
//! - [`run_publish`]: G groups of K members, each member one WebSocket subscribed to its group,
//!   and messages sent over HTTP into the groups at a fixed total rate R, **open loop** (send
//!   `i` is due at `start + i/R` whatever the server does; its text carries that time).
//!   Measures send→deliver (scheduled time to the frame read on each member's socket),
//!   send→answer (to the HTTP response), delivered/s, and the server's CPU seconds, so
//!   deliveries per server CPU-second. One group of 1,000 is the fan-out shape; 2,000 groups of
//!   5 at 1,000 sends/s is the small-chats shape.
//! - [`run_idle`]: N idle WebSockets, authenticated and subscribed to one group each, and the
//!   server's RSS per connection (the growth of its RSS while they opened, divided by N).
//!
//! Send `i` goes to group `i mod G` from its member `(i / G) mod K`; member `j` of group `g` is
//! user `g*K + j` (groups do not overlap). Sends are spread over HTTP requests in flight up to a
//! cap; one that has to wait for a free slot is late, and that shows in its latencies.

use super::peer::{Cast, Event, Peer, Protocol, Publisher};
use super::progress;
use super::stats::{Latency, LatencySummary};
use super::sysmon::{cpu_between, rss_growth_per, Monitor, Proc, Usage};
use super::ws::{LgText, WsStream};
use anyhow::{bail, Context as _};
use futures::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Read buffer of each subscriber's socket: deliveries are small, and Centrifugo batches a few
/// into one frame.
const READ_BUFFER: usize = 16 * 1024;

/// What to publish.
#[derive(Clone, Debug)]
pub struct PublishParams {
    /// Groups (G).
    pub groups: usize,
    /// Members per group (K), each with one WebSocket.
    pub group_size: usize,
    /// Total sends per second (R), across all groups.
    pub rate: f64,
    /// How long to send.
    pub duration: Duration,
    /// Bytes of each message text.
    pub msg_bytes: usize,
    /// How long to wait after the last send for answers and deliveries.
    pub drain_timeout: Duration,
    /// HTTP requests in flight at most.
    pub max_in_flight: usize,
    /// Connections per source address (127.0.0.2, .3, …); 0: do not bind.
    pub per_source: usize,
    /// The server's PID, for its CPU and RSS.
    pub server_pid: Option<u32>,
    /// Makes this run's names unique.
    pub run_id: String,
    /// Password of every generated chat-server user.
    pub password: String,
    /// Registrations, chat creations and connection attempts in flight during setup.
    pub setup_concurrency: usize,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for PublishParams {
    fn default() -> Self {
        PublishParams {
            groups: 1,
            group_size: 1000,
            rate: 100.0,
            duration: Duration::from_secs(30),
            msg_bytes: 100,
            drain_timeout: Duration::from_secs(10),
            max_in_flight: 512,
            per_source: 5000,
            server_pid: None,
            run_id: super::run_id(),
            password: "loadgen password".to_owned(),
            setup_concurrency: 64,
            progress: true,
        }
    }
}

/// What a publish run measured.
#[derive(Clone, Debug, Serialize)]
pub struct PublishResult {
    /// `chat-server` or `centrifugo`.
    pub peer: String,
    /// Groups.
    pub groups: usize,
    /// Members (connections) per group.
    pub group_size: usize,
    /// WebSockets open.
    pub connections: usize,
    /// Target rate, sends per second.
    pub rate: f64,
    /// Sending time, seconds.
    pub duration_secs: f64,
    /// Bytes per message text.
    pub msg_bytes: usize,
    /// Sends scheduled (= rate × duration).
    pub scheduled: u64,
    /// Sends the server answered with success.
    pub published: u64,
    /// Sends that failed (HTTP error, API error, transport).
    pub publish_errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Deliveries of this run's messages read on the subscribers' sockets.
    pub deliveries: u64,
    /// Deliveries the successful sends should have produced (`published × K`).
    pub expected_deliveries: u64,
    /// Errors the server reported on a subscriber's socket.
    pub socket_errors: u64,
    /// Subscriber connections the server closed (or that failed) during the run.
    pub disconnects: u64,
    /// Deliveries per second, over the sending time plus the drain.
    pub delivered_per_sec: f64,
    /// Server CPU seconds over the same time.
    pub server_cpu_secs: Option<f64>,
    /// Deliveries per server CPU-second.
    pub deliveries_per_server_cpu_sec: Option<f64>,
    /// The server's RSS growth while the subscribers connected, per connection, bytes.
    pub server_rss_per_connection_bytes: Option<f64>,
    /// Scheduled send time to the delivery read, for every delivery.
    pub send_to_deliver: LatencySummary,
    /// Scheduled send time to the HTTP answer, for every successful send.
    pub send_to_answer: LatencySummary,
    /// How late the generator started each send relative to its schedule.
    pub generator_lateness: LatencySummary,
    /// The server's CPU and memory over the sending time and drain.
    pub server: Option<Usage>,
    /// The load generator's own over the same time.
    pub loadgen: Option<Usage>,
    /// Setup time (users, groups, connections), seconds.
    pub setup_secs: f64,
}

/// The histograms behind a publish result, for plotting.
#[derive(Clone, Debug, Default)]
pub struct PublishHistograms {
    /// Send→deliver.
    pub deliver: Latency,
    /// Send→answer.
    pub answer: Latency,
    /// Generator lateness.
    pub lateness: Latency,
}

/// Counters shared by the readers and the senders.
#[derive(Default)]
struct Counters {
    published: AtomicU64,
    publish_errors: AtomicU64,
    deliveries: AtomicU64,
    socket_errors: AtomicU64,
    disconnects: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn error(&self, e: String) {
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert(e);
        }
    }
}

/// The source address of connection `i` (127.0.0.2 onwards, `per_source` each), or none.
fn source(i: usize, per_source: usize) -> anyhow::Result<Option<IpAddr>> {
    if per_source == 0 {
        return Ok(None);
    }
    let n = i / per_source;
    if n >= 250 {
        bail!("too many connections for 250 source addresses of {per_source}");
    }
    Ok(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + n as u8))))
}

/// Runs the publish scenario against `peer`.
pub async fn run_publish(
    peer: &Peer,
    p: &PublishParams,
) -> anyhow::Result<(PublishResult, PublishHistograms)> {
    if p.groups == 0 || p.group_size == 0 {
        bail!("groups and group size must be at least 1");
    }
    if !p.rate.is_finite() || p.rate <= 0.0 {
        bail!("the rate must be positive");
    }
    let setup_started = Instant::now();
    super::raise_fd_limit();
    let users = p.groups * p.group_size;
    let layout: Vec<Vec<usize>> = (0..p.groups)
        .map(|g| (g * p.group_size..(g + 1) * p.group_size).collect())
        .collect();
    let pb = progress::bar(p.progress, users as u64, "users");
    let cast = peer
        .setup(
            &format!("pub{}", p.run_id),
            &p.password,
            users,
            &layout,
            p.setup_concurrency,
            &pb,
        )
        .await?;
    pb.finish_and_clear();

    // Let the server settle after the setup before the RSS baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = p.server_pid.map(Proc::Pid);
    let rss_before = server.and_then(Proc::sample);
    let pb = progress::bar(p.progress, users as u64, "connections");
    let counters = Arc::new(Counters::default());
    let epoch = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let opened = futures::stream::iter(0..users)
        .map(|u| {
            let room = &cast.rooms[u / p.group_size];
            let member = &cast.members[u];
            async move {
                let src = source(u, p.per_source)?;
                peer.open(member, room, src, READ_BUFFER)
                    .await
                    .with_context(|| format!("opening connection {u}"))
            }
        })
        .buffered(p.setup_concurrency.max(1))
        .inspect(|_| pb.inc(1))
        .collect::<Vec<_>>()
        .await;
    let mut readers = Vec::with_capacity(users);
    for ws in opened {
        readers.push(tokio::spawn(read_loop(
            ws?,
            peer.protocol(),
            epoch,
            counters.clone(),
            stop_rx.clone(),
        )));
    }
    pb.finish_and_clear();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = server.and_then(Proc::sample);
    let setup_secs = setup_started.elapsed().as_secs_f64();

    // Send, open loop.
    let publisher = peer.publisher()?;
    let server_mon = server.and_then(Monitor::start);
    let self_mon = Monitor::start(Proc::SelfProc);
    let scheduled = (p.rate * p.duration.as_secs_f64()).round() as u64;
    let answers = Arc::new(Mutex::new(Latency::new()));
    let pb = progress::bar(p.progress, p.duration.as_secs().max(1), "sending");
    let send_start = Instant::now();
    let lateness = schedule(
        p, &cast, &publisher, scheduled, epoch, &counters, &answers, &pb,
    )
    .await;
    pb.finish_and_clear();

    // Drain: every send answered, every delivery of a successful one arrived.
    let k = p.group_size as u64;
    let deadline = Instant::now() + p.drain_timeout;
    loop {
        let published = counters.published.load(Ordering::Relaxed);
        let answered = published + counters.publish_errors.load(Ordering::Relaxed);
        let delivered = counters.deliveries.load(Ordering::Relaxed);
        if (answered >= scheduled && delivered >= published * k) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let active_secs = send_start.elapsed().as_secs_f64();
    let server_usage = server_mon.map(Monitor::finish);
    let loadgen = self_mon.map(Monitor::finish);

    let _ = stop_tx.send(true);
    let mut hist = PublishHistograms {
        lateness,
        answer: answers.lock().map(|a| a.clone()).unwrap_or_default(),
        ..PublishHistograms::default()
    };
    for r in readers {
        if let Ok(deliver) = r.await {
            hist.deliver.merge(&deliver);
        }
    }

    let published = counters.published.load(Ordering::Relaxed);
    let deliveries = counters.deliveries.load(Ordering::Relaxed);
    let delivered_per_sec = deliveries as f64 / active_secs.max(1e-9);
    let server_cpu_secs = server_usage.as_ref().map(|u| u.cpu_secs);
    let result = PublishResult {
        peer: peer.name().to_owned(),
        groups: p.groups,
        group_size: p.group_size,
        connections: users,
        rate: p.rate,
        duration_secs: p.duration.as_secs_f64(),
        msg_bytes: p.msg_bytes,
        scheduled,
        published,
        publish_errors: counters.publish_errors.load(Ordering::Relaxed),
        first_error: counters.first_error.lock().ok().and_then(|e| e.clone()),
        deliveries,
        expected_deliveries: published * k,
        socket_errors: counters.socket_errors.load(Ordering::Relaxed),
        disconnects: counters.disconnects.load(Ordering::Relaxed),
        delivered_per_sec,
        server_cpu_secs,
        deliveries_per_server_cpu_sec: server_cpu_secs
            .filter(|&s| s > 0.0)
            .map(|s| deliveries as f64 / s),
        server_rss_per_connection_bytes: rss_growth_per(rss_before, rss_after, users as u64),
        send_to_deliver: hist.deliver.summary(),
        send_to_answer: hist.answer.summary(),
        generator_lateness: hist.lateness.summary(),
        server: server_usage,
        loadgen,
        setup_secs,
    };
    Ok((result, hist))
}

/// Starts every scheduled send at its time (as an HTTP request of its own, at most
/// `max_in_flight` at once); returns the lateness histogram once the last has started.
#[allow(clippy::too_many_arguments)]
async fn schedule(
    p: &PublishParams,
    cast: &Cast,
    publisher: &Publisher,
    total: u64,
    epoch: Instant,
    counters: &Arc<Counters>,
    answers: &Arc<Mutex<Latency>>,
    pb: &indicatif::ProgressBar,
) -> Latency {
    let mut lateness = Latency::new();
    let slots = Arc::new(Semaphore::new(p.max_in_flight.max(1)));
    let g = p.groups as u64;
    let k = p.group_size as u64;
    let nanos_per_send = 1e9 / p.rate;
    let offset = epoch.elapsed();
    let start = Instant::now();
    let mut last_report = start;
    for i in 0..total {
        let sched = Duration::from_nanos((i as f64 * nanos_per_send) as u64);
        tokio::time::sleep_until((start + sched).into()).await;
        // A full set of requests in flight makes this send (and those after it) late.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let now = Instant::now();
        lateness.record(now.duration_since(start).saturating_sub(sched));
        let group = (i % g) as usize;
        let member = ((i / g) % k) as usize;
        let sender = cast.members[group * p.group_size + member].clone();
        let room = cast.rooms[group].clone();
        let lg = LgText {
            id: i,
            sched_nanos: u64::try_from((offset + sched).as_nanos()).unwrap_or(u64::MAX),
        };
        let text = super::padded_text(&lg.head(), p.msg_bytes);
        let publisher = publisher.clone();
        let task_counters = counters.clone();
        let answers = answers.clone();
        tokio::spawn(async move {
            let counters = task_counters;
            let r = publisher.publish(&sender, &room, text).await;
            let took = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            match r {
                Ok(()) => {
                    counters.published.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut a) = answers.lock() {
                        a.record_micros(took.saturating_sub(lg.sched_nanos) / 1000);
                    }
                }
                Err(e) => {
                    counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                    counters.error(format!("{e:#}"));
                }
            }
            drop(slot);
        });
        if now.duration_since(last_report) >= Duration::from_millis(250) {
            last_report = now;
            pb.set_position(now.duration_since(start).as_secs());
            pb.set_message(format!(
                "published {} delivered {}",
                counters.published.load(Ordering::Relaxed),
                counters.deliveries.load(Ordering::Relaxed)
            ));
        }
    }
    lateness
}

/// Reads one subscriber's socket until told to stop, answering protocol pings; returns its
/// send→deliver histogram.
async fn read_loop(
    mut ws: WsStream,
    protocol: Protocol,
    epoch: Instant,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> Latency {
    let mut deliver = Latency::new();
    loop {
        let msg = tokio::select! {
            biased;
            m = ws.next() => m,
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                break;
            }
        };
        match msg {
            Some(Ok(WsMessage::Text(t))) => {
                let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let mut pings = 0;
                protocol.events(t.as_str(), |e| match e {
                    Event::Delivery(lg) => {
                        deliver.record_micros(now.saturating_sub(lg.sched_nanos) / 1000);
                        counters.deliveries.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::Ping => pings += 1,
                    Event::Error(raw) => {
                        counters.socket_errors.fetch_add(1, Ordering::Relaxed);
                        counters.error(raw.to_owned());
                    }
                    Event::Other => {}
                });
                if let (true, Some(pong)) = (pings > 0, protocol.pong()) {
                    if ws.send(WsMessage::text(pong)).await.is_err() {
                        counters.disconnects.fetch_add(1, Ordering::Relaxed);
                        break;
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
    deliver
}

/// How many idle connections, and how.
#[derive(Clone, Debug)]
pub struct IdleParams {
    /// Connections to open (N).
    pub connections: usize,
    /// Users they belong to (round robin).
    pub users: usize,
    /// Users per group; each connection subscribes to its user's group.
    pub group_size: usize,
    /// Connections per source address (127.0.0.2, .3, …); 0: do not bind.
    pub per_source: usize,
    /// Connection attempts in flight.
    pub concurrency: usize,
    /// Wait this long after the last connection opened before reading the server's RSS.
    pub settle: Duration,
    /// The server's PID, for its RSS.
    pub server_pid: Option<u32>,
    /// Makes this run's names unique.
    pub run_id: String,
    /// Password of every generated chat-server user.
    pub password: String,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for IdleParams {
    fn default() -> Self {
        IdleParams {
            connections: 15_000,
            users: 100,
            group_size: 5,
            per_source: 5000,
            concurrency: 256,
            settle: Duration::from_secs(5),
            server_pid: None,
            run_id: super::run_id(),
            password: "loadgen password".to_owned(),
            progress: true,
        }
    }
}

/// What an idle-connections run measured.
#[derive(Clone, Debug, Serialize)]
pub struct IdleResult {
    /// `chat-server` or `centrifugo`.
    pub peer: String,
    /// Connections asked for.
    pub requested: usize,
    /// Connections authenticated and subscribed.
    pub opened: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Connections still open when the RSS was read.
    pub alive_at_end: u64,
    /// Seconds to open them all.
    pub open_secs: f64,
    /// Server RSS before the first connection, KiB.
    pub server_rss_before_kib: Option<u64>,
    /// Server RSS with all open, after the settle time, KiB.
    pub server_rss_after_kib: Option<u64>,
    /// `(after - before) / opened`, bytes.
    pub server_rss_per_connection_bytes: Option<f64>,
    /// Server CPU seconds spent opening them (and while they settled).
    pub server_cpu_secs: Option<f64>,
    /// The generator's own RSS per connection, bytes.
    pub loadgen_rss_per_connection_bytes: Option<f64>,
}

/// Runs the idle-connections scenario against `peer`.
pub async fn run_idle(peer: &Peer, p: &IdleParams) -> anyhow::Result<IdleResult> {
    if p.connections == 0 || p.users == 0 || p.group_size == 0 {
        bail!("connections, users and group size must be at least 1");
    }
    let fd_limit = super::raise_fd_limit();
    if (p.connections as u64) + 64 > fd_limit {
        bail!(
            "{} connections need more file descriptors than this process may open ({fd_limit})",
            p.connections
        );
    }
    let layout: Vec<Vec<usize>> = (0..p.users.div_ceil(p.group_size))
        .map(|g| (g * p.group_size..((g + 1) * p.group_size).min(p.users)).collect())
        .collect();
    let pb = progress::bar(p.progress, p.users as u64, "users");
    let cast = peer
        .setup(
            &format!("idle{}", p.run_id),
            &p.password,
            p.users,
            &layout,
            16,
            &pb,
        )
        .await?;
    pb.finish_and_clear();

    // Let the server settle after the logins before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let server = p.server_pid.map(Proc::Pid);
    let server_before = server.and_then(Proc::sample);
    let self_before = Proc::SelfProc.sample();

    let pb = progress::bar(p.progress, p.connections as u64, "connecting");
    let alive = Arc::new(AtomicU64::new(0));
    let mut failed = 0u64;
    let mut first_error = None;
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let mut holders = Vec::with_capacity(p.connections);
    let mut attempts = futures::stream::iter(0..p.connections)
        .map(|i| {
            let u = i % p.users;
            let member = &cast.members[u];
            let room = &cast.rooms[u / p.group_size];
            async move {
                let src = source(i, p.per_source)?;
                peer.open(member, room, src, 1024).await
            }
        })
        .buffer_unordered(p.concurrency.max(1));
    while let Some(r) = attempts.next().await {
        match r {
            Ok(ws) => {
                alive.fetch_add(1, Ordering::Relaxed);
                holders.push(tokio::spawn(hold(
                    ws,
                    peer.protocol(),
                    alive.clone(),
                    stop_rx.clone(),
                )));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
        pb.inc(1);
    }
    drop(attempts);
    pb.finish_and_clear();
    let open_secs = started.elapsed().as_secs_f64();
    let opened = holders.len() as u64;

    tokio::time::sleep(p.settle).await;
    let server_after = server.and_then(Proc::sample);
    let self_after = Proc::SelfProc.sample();
    let alive_at_end = alive.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for h in holders {
        let _ = h.await;
    }
    Ok(IdleResult {
        peer: peer.name().to_owned(),
        requested: p.connections,
        opened,
        failed,
        first_error,
        alive_at_end,
        open_secs,
        server_rss_before_kib: server_before.map(|s| s.rss_kib),
        server_rss_after_kib: server_after.map(|s| s.rss_kib),
        server_rss_per_connection_bytes: rss_growth_per(server_before, server_after, opened),
        server_cpu_secs: cpu_between(server_before, server_after),
        loadgen_rss_per_connection_bytes: rss_growth_per(self_before, self_after, opened),
    })
}

/// Keeps one connection open and idle, answering the server's pings, until told to stop or the
/// server closes it.
async fn hold(
    mut ws: WsStream,
    protocol: Protocol,
    alive: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(WsMessage::Text(t))) => {
                    let mut ping = false;
                    protocol.events(t.as_str(), |e| ping |= e == Event::Ping);
                    if let (true, Some(pong)) = (ping, protocol.pong()) {
                        if ws.send(WsMessage::text(pong)).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                break;
            }
        }
    }
    alive.fetch_sub(1, Ordering::Relaxed);
}
