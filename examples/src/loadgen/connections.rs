//! The connections scenario: N idle, authenticated WebSockets, and what they cost the server.
//!
//! A modest number of users is registered and each opens many connections (the server allows
//! any number of devices per user). Connections are spread over source addresses 127.0.0.2,
//! 127.0.0.3, … (`per_source` each), because one source address has only ~28,000 ephemeral
//! ports towards one server port. The server's RSS is read before the first connection and
//! again once all are open and a settle time has passed; the difference divided by the
//! connections opened is the server's memory per idle connection.
//!
//! Both processes need one file descriptor per connection: the generator raises its own soft
//! limit to the hard limit; the server must be started with `ulimit -n` raised (see
//! `scripts/bench.sh`).

use super::api::{accounts, Api, Target};
use super::progress;
use super::sysmon::{cpu_between, rss_growth_per, Proc, ProcSample};
use super::ws::connect;
use anyhow::bail;
use futures::StreamExt as _;
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// What to run.
#[derive(Clone, Debug)]
pub struct ConnectionsParams {
    /// Connections to open (N).
    pub connections: usize,
    /// Users they belong to (round robin).
    pub users: usize,
    /// Connections per source address; 0 connects from the default address (no bind).
    pub per_source: usize,
    /// Connection attempts in flight.
    pub concurrency: usize,
    /// Wait this long after the last connection opened before reading the server's RSS.
    pub settle: Duration,
    /// Keep the connections open this much longer (they answer the server's pings).
    pub hold: Duration,
    /// The server's PID, for its RSS.
    pub server_pid: Option<u32>,
    /// Makes this run's e-mails unique.
    pub run_id: String,
    /// Password of every generated user.
    pub password: String,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for ConnectionsParams {
    fn default() -> Self {
        ConnectionsParams {
            connections: 10_000,
            users: 100,
            per_source: 20_000,
            concurrency: 256,
            settle: Duration::from_secs(5),
            hold: Duration::from_secs(0),
            server_pid: None,
            run_id: super::run_id(),
            password: "loadgen password".to_owned(),
            progress: true,
        }
    }
}

/// What a connections run measured.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionsResult {
    /// Connections asked for.
    pub requested: usize,
    /// Connections that received `ready`.
    pub opened: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Connections still open at the end of the hold.
    pub alive_at_end: u64,
    /// Source addresses used.
    pub source_addresses: usize,
    /// The generator's open-file limit after raising it.
    pub fd_limit: u64,
    /// Seconds to open them all.
    pub open_secs: f64,
    /// Connections opened per second.
    pub opens_per_sec: f64,
    /// Server RSS before the first connection, KiB.
    pub server_rss_before_kib: Option<u64>,
    /// Server RSS with all connections open, after the settle time, KiB.
    pub server_rss_after_kib: Option<u64>,
    /// `(after - before) / opened`, bytes.
    pub server_rss_per_conn_bytes: Option<f64>,
    /// Server CPU seconds spent accepting them.
    pub server_cpu_secs: Option<f64>,
    /// The generator's own RSS per connection, bytes (for sizing the client side).
    pub loadgen_rss_per_conn_bytes: Option<f64>,
}

/// Runs the scenario against `target`.
pub async fn run(target: &Target, p: &ConnectionsParams) -> anyhow::Result<ConnectionsResult> {
    if p.connections == 0 || p.users == 0 {
        bail!("connections and users must be at least 1");
    }
    let fd_limit = super::raise_fd_limit();
    if (p.connections as u64) + 64 > fd_limit {
        bail!(
            "{} connections need more file descriptors than this process may open ({fd_limit}); \
             raise the hard limit (ulimit -Hn) or open fewer",
            p.connections
        );
    }
    let sources: Vec<Option<IpAddr>> = if p.per_source == 0 {
        vec![None]
    } else {
        let n = p.connections.div_ceil(p.per_source);
        if n > 250 {
            bail!("{n} source addresses needed; at most 250 (127.0.0.2 to 127.0.0.251)");
        }
        (0..n)
            .map(|i| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8))))
            .collect()
    };

    let api = Api::new(target)?;
    let pb = progress::bar(p.progress, p.users as u64, "users");
    let users = accounts(
        &api,
        &format!("conn{}", p.run_id),
        &p.password,
        p.users,
        16,
        &pb,
    )
    .await?;
    pb.finish_and_clear();

    // Let the server settle after the logins (argon2 buffers are freed) before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let server = p.server_pid.map(Proc::Pid);
    let server_before: Option<ProcSample> = server.and_then(Proc::sample);
    let self_before = Proc::SelfProc.sample();

    let pb = progress::bar(p.progress, p.connections as u64, "connecting");
    let alive = Arc::new(AtomicU64::new(0));
    let failed = AtomicU64::new(0);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let per_source = p.per_source.max(1);
    let mut holders = Vec::with_capacity(p.connections);
    let mut attempts = futures::stream::iter(0..p.connections)
        .map(|i| {
            let target = target.clone();
            let token = users[i % users.len()].token.clone();
            let source = if p.per_source == 0 {
                None
            } else {
                sources[i / per_source]
            };
            async move { connect(&target, &token, source, 1024).await }
        })
        .buffer_unordered(p.concurrency.max(1));
    while let Some(r) = attempts.next().await {
        match r {
            Ok((ws, _)) => {
                alive.fetch_add(1, Ordering::Relaxed);
                holders.push(tokio::spawn(hold(ws, alive.clone(), stop_rx.clone())));
            }
            Err(e) => {
                failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut f) = first_error.lock() {
                    f.get_or_insert_with(|| format!("{e:#}"));
                }
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
    if !p.hold.is_zero() {
        let pb = progress::bar(p.progress, p.hold.as_secs().max(1), "holding");
        let until = Instant::now() + p.hold;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_secs(1)).await;
            pb.inc(1);
            pb.set_message(format!("{} open", alive.load(Ordering::Relaxed)));
        }
        pb.finish_and_clear();
    }
    let alive_at_end = alive.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for h in holders {
        let _ = h.await;
    }

    Ok(ConnectionsResult {
        requested: p.connections,
        opened,
        failed: failed.load(Ordering::Relaxed),
        first_error: first_error.lock().ok().and_then(|f| f.clone()),
        alive_at_end,
        source_addresses: sources.len(),
        fd_limit,
        open_secs,
        opens_per_sec: opened as f64 / open_secs.max(1e-9),
        server_rss_before_kib: server_before.map(|s| s.rss_kib),
        server_rss_after_kib: server_after.map(|s| s.rss_kib),
        server_rss_per_conn_bytes: rss_growth_per(server_before, server_after, opened),
        server_cpu_secs: cpu_between(server_before, server_after),
        loadgen_rss_per_conn_bytes: rss_growth_per(self_before, self_after, opened),
    })
}

/// Keeps one connection open and idle: reads (so the server's pings are answered) until told
/// to stop or the server closes it.
async fn hold(mut ws: super::ws::WsStream, alive: Arc<AtomicU64>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            m = ws.next() => match m {
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
