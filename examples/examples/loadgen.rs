//! Run with: cargo run --release -p examples --example loadgen -- <scenario> [flags]
//!
//! The load generator: drives a running `chat-server` through the real protocol and measures
//! it. Scenarios (each `--help` lists its flags):
//!
//! - `fanout`: U users by WebSocket in G groups of K, open-loop sends at R msgs/s;
//!   send→deliver and send→ack latency, deliveries/s, the server's CPU and RSS.
//! - `connections`: N idle authenticated WebSockets from 127.0.0.x; server RSS per connection.
//! - `history`: page back through a long chat; latency per page.
//! - `seed-history`: write millions of messages for `history` straight into the store.
//! - `chat-list`: a user in N chats: `GET /v1/chats` latency (last messages and unread
//!   counts), then read-marker writes per second.
//! - `writes`: sustained acked sends/s through the server (WebSocket or REST).
//! - `writes-store`: sustained appends/s straight into a store backend.
//! - `serve`: the server library with load-test limits (rate limits off), as its own process.
//! - `peer-publish`, `peer-idle`: the side-by-side scenarios, against chat-server or
//!   Centrifugo (`--peer`): messages sent over HTTP into G groups of K subscribers at R/s, and
//!   N idle subscribed WebSockets; `peers-table` tabulates their reports side by side
//!   (`scripts/bench.sh peers` runs them all).
//!
//! Every scenario shows a progress bar, prints its result as JSON, and with `--out` writes it
//! (with the date and command) to a file; latency scenarios draw a percentile plot with
//! `--plot`. The exact commands behind `docs/benchmarks.md` are in `scripts/bench.sh`.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use examples::loadgen::{
    api::Target, centrifugo::Centrifugo, changes, chatlist, connections, fanout, history,
    peer::Peer, peers, peers_table, plot, report::Report, serve, stats::Latency, writes,
};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

// jemalloc, as in the `chat-server` binary, so `loadgen serve` measures what it runs (the
// `jemalloc` feature, on by default; the system allocator without it). It applies to the whole
// program, the generator too.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Load generator for the chat server.
#[derive(Parser, Debug)]
#[command(name = "loadgen", about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

/// Flags every scenario against a server takes.
#[derive(Args, Debug, Clone)]
struct Common {
    /// Server base URL.
    #[arg(long, env = "CHAT_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The server's PID, to report its CPU and RSS (read from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Password of the generated users.
    #[arg(long, default_value = "loadgen password")]
    password: String,
    /// Write the result as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Draw a latency percentile plot (PNG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// Which server a side-by-side scenario drives, and Centrifugo's secrets.
#[derive(Args, Debug, Clone)]
struct PeerArgs {
    /// The server at `--server`.
    #[arg(long, value_enum, default_value_t = PeerKind::ChatServer)]
    peer: PeerKind,
    /// Centrifugo's server API key (`http_api.key`).
    #[arg(long, env = "CENTRIFUGO_API_KEY", default_value = "")]
    centrifugo_api_key: String,
    /// Centrifugo's token secret (`client.token.hmac_secret_key`).
    #[arg(long, env = "CENTRIFUGO_HMAC_SECRET", default_value = "")]
    centrifugo_secret: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PeerKind {
    /// chat-server (`loadgen serve` or the binary).
    ChatServer,
    /// Centrifugo v6.
    Centrifugo,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Run the chat server (library) configured for load tests: rate limits and per-user caps
    /// off, connection cap raised; otherwise the same server as `chat-server`.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Data directory of `sqlite`.
        #[arg(long, default_value = "./chat-data")]
        data_dir: PathBuf,
        /// Metadata store: `sqlite` or `mysql://…`.
        #[arg(long, default_value = "sqlite")]
        metadata: String,
        /// Message store: `sqlite`, `mysql://…`, `cassandra://…`.
        #[arg(long, default_value = "sqlite")]
        messages: String,
        /// TCP connections served at once.
        #[arg(long, default_value_t = 1_000_000)]
        max_connections: usize,
        /// Frames queued per WebSocket before it is closed as a slow consumer.
        #[arg(long, default_value_t = 1024)]
        outbound_queue: usize,
        /// Hash passwords at argon2's cheapest cost (load tests only).
        #[arg(long)]
        fast_passwords: bool,
        /// The server's `--ws-flush-delay-ms` (under load, the longest a fanned-out frame waits
        /// to share a socket write; 0 = off).
        #[arg(long, env = "CHAT_WS_FLUSH_DELAY_MS", default_value_t = chat_server::config::DEFAULT_FLUSH_DELAY_MS)]
        ws_flush_delay_ms: u64,
        /// The server's `--ws-flush-batch` (frames that end a hold early).
        #[arg(long, env = "CHAT_WS_FLUSH_BATCH", default_value_t = chat_server::config::DEFAULT_FLUSH_BATCH)]
        ws_flush_batch: usize,
    },
    /// U users in G groups of K, sending R msgs/s open loop.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// Users (U).
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Groups (G).
        #[arg(long, default_value_t = 100)]
        groups: usize,
        /// Members per group (K).
        #[arg(long, default_value_t = 10)]
        group_size: usize,
        /// WebSocket connections per user.
        #[arg(long, default_value_t = 1)]
        conns_per_user: usize,
        /// Total sends per second (R).
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Bytes per message text.
        #[arg(long, default_value_t = 100)]
        msg_bytes: usize,
        /// Seconds to wait for outstanding acks and deliveries after the last send.
        #[arg(long, default_value_t = 10)]
        drain: u64,
        /// Precede every send with a typing frame from its sender (typing traffic mixed in).
        #[arg(long)]
        typing: bool,
    },
    /// A user in N chats: `GET /v1/chats` latency (last messages, unread counts), then
    /// read-marker writes per second.
    ChatList {
        #[command(flatten)]
        common: Common,
        /// Chats of the reader (N).
        #[arg(long, default_value_t = 500)]
        chats: usize,
        /// Messages per chat (M).
        #[arg(long, default_value_t = 20)]
        messages: usize,
        /// Requests in flight.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Seconds per phase at most.
        #[arg(long, default_value_t = 20)]
        duration: u64,
    },
    /// Edits and reactions at R changes/s over REST; change->update latency on every
    /// member's WebSocket.
    Changes {
        #[command(flatten)]
        common: Common,
        /// Users (U).
        #[arg(long, default_value_t = 200)]
        users: usize,
        /// Groups (G).
        #[arg(long, default_value_t = 20)]
        groups: usize,
        /// Members per group (K).
        #[arg(long, default_value_t = 10)]
        group_size: usize,
        /// Messages per group to change (M).
        #[arg(long, default_value_t = 50)]
        messages: usize,
        /// Changes per second (R).
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// Share of edits (the rest are reactions added and taken back), 0 to 1.
        #[arg(long, default_value_t = 0.5)]
        edit_share: f64,
        /// Seconds of changing.
        #[arg(long, default_value_t = 20)]
        duration: u64,
        /// Requests in flight at most.
        #[arg(long, default_value_t = 256)]
        max_in_flight: usize,
    },
    /// N idle authenticated WebSockets; the server's RSS per connection.
    Connections {
        #[command(flatten)]
        common: Common,
        /// Connections (N).
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Users the connections belong to.
        #[arg(long, default_value_t = 100)]
        users: usize,
        /// Connections per source address (127.0.0.2, .3, …); 0: do not bind.
        #[arg(long, default_value_t = 20_000)]
        per_source: usize,
        /// Connection attempts in flight.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Seconds to wait before reading the server's RSS.
        #[arg(long, default_value_t = 5)]
        settle: u64,
        /// Seconds to keep them open afterwards.
        #[arg(long, default_value_t = 0)]
        hold: u64,
    },
    /// Page back through a long chat, timing each page.
    History {
        #[command(flatten)]
        common: Common,
        /// The reader's e-mail.
        #[arg(long, default_value = "history@loadgen.test")]
        email: String,
        /// The chat's name.
        #[arg(long, default_value = "loadgen-history")]
        chat_name: String,
        /// Send messages through the server until the chat has this many (small runs; use
        /// seed-history for millions).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Messages per page.
        #[arg(long, default_value_t = 50)]
        page_size: u32,
        /// Pages per reader at most.
        #[arg(long, default_value_t = 20_000)]
        max_pages: u64,
        /// Concurrent readers.
        #[arg(long, default_value_t = 1)]
        readers: usize,
    },
    /// Write messages for `history` straight into the store (before starting the server).
    SeedHistory {
        #[command(flatten)]
        store: StoreArgs,
        /// Messages to append.
        #[arg(long, default_value_t = 10_000_000)]
        messages: u64,
        /// The reader's e-mail (created if missing).
        #[arg(long, default_value = "history@loadgen.test")]
        email: String,
        /// Its password.
        #[arg(long, default_value = "loadgen password")]
        password: String,
        /// The chat's name.
        #[arg(long, default_value = "loadgen-history")]
        chat_name: String,
    },
    /// Sustained acked sends per second through the server.
    Writes {
        #[command(flatten)]
        common: Common,
        /// Concurrent senders, each with its own chat.
        #[arg(long, default_value_t = 64)]
        senders: usize,
        /// Sends in flight per sender.
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Seconds of sending.
        #[arg(long, default_value_t = 20)]
        duration: u64,
        /// Transport.
        #[arg(long, value_enum, default_value_t = ViaArg::Ws)]
        via: ViaArg,
        /// Bytes per message text.
        #[arg(long, default_value_t = 100)]
        msg_bytes: usize,
    },
    /// Side by side: G groups of K subscribers (one WebSocket each), messages sent into them
    /// over HTTP at R/s open loop (chat-server: POST /v1/send; Centrifugo: POST /api/publish).
    PeerPublish {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        peer: PeerArgs,
        /// Groups (G).
        #[arg(long, default_value_t = 1)]
        groups: usize,
        /// Subscribers per group (K).
        #[arg(long, default_value_t = 1000)]
        group_size: usize,
        /// Total sends per second (R).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Bytes per message text.
        #[arg(long, default_value_t = 100)]
        msg_bytes: usize,
        /// Seconds to wait for outstanding answers and deliveries after the last send.
        #[arg(long, default_value_t = 10)]
        drain: u64,
        /// HTTP requests in flight at most.
        #[arg(long, default_value_t = 512)]
        max_in_flight: usize,
        /// Connections per source address (127.0.0.2, .3, …); 0: do not bind.
        #[arg(long, default_value_t = 5000)]
        per_source: usize,
    },
    /// Side by side: N idle WebSockets, authenticated and subscribed to one group each; the
    /// server's RSS per connection.
    PeerIdle {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        peer: PeerArgs,
        /// Connections (N).
        #[arg(long, default_value_t = 15_000)]
        connections: usize,
        /// Users the connections belong to.
        #[arg(long, default_value_t = 100)]
        users: usize,
        /// Users per group.
        #[arg(long, default_value_t = 5)]
        group_size: usize,
        /// Connections per source address (127.0.0.2, .3, …); 0: do not bind.
        #[arg(long, default_value_t = 5000)]
        per_source: usize,
        /// Seconds to wait before reading the server's RSS.
        #[arg(long, default_value_t = 5)]
        settle: u64,
    },
    /// The side-by-side markdown table of `peer-publish` and `peer-idle` reports.
    PeersTable {
        /// Report files (`--out` of those runs), in the order to show them.
        reports: Vec<PathBuf>,
    },
    /// Sustained appends per second straight into a store backend.
    WritesStore {
        #[command(flatten)]
        store: StoreArgs,
        /// Seconds of appending.
        #[arg(long, default_value_t = 20)]
        duration: u64,
        /// Chats to spread the appends over.
        #[arg(long, default_value_t = 16)]
        chats: usize,
    },
}

/// Where a store-level scenario writes.
#[derive(Args, Debug, Clone)]
struct StoreArgs {
    /// Message store: `sqlite` (file under --data-dir), `sqlite:///abs.db`, `mysql://…`,
    /// `cassandra://…` (the last two need `--features mysql` / `cassandra`).
    #[arg(long, default_value = "sqlite")]
    store: String,
    /// Metadata store for the owning user and chat: `sqlite` or `mysql://…`.
    #[arg(long, default_value = "sqlite")]
    metadata: String,
    /// Data directory of `sqlite` (the server's `--data-dir`).
    #[arg(long, default_value = "./chat-data")]
    data_dir: PathBuf,
    /// Appends in flight.
    #[arg(long, default_value_t = 1024)]
    concurrency: usize,
    /// Write the result as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Draw an append-latency percentile plot (PNG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ViaArg {
    /// Raw WebSocket `send` frames.
    Ws,
    /// Raw `POST /v1/send`.
    Rest,
    /// The SDK with a connected subscription (sends over its WebSocket).
    SdkWs,
    /// The SDK without a subscription (sends over REST).
    SdkRest,
}

fn main() -> anyhow::Result<()> {
    examples::init_tracing();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(cli.scenario))
}

async fn run(scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
        Scenario::Serve {
            listen,
            data_dir,
            metadata,
            messages,
            max_connections,
            outbound_queue,
            fast_passwords,
            ws_flush_delay_ms,
            ws_flush_batch,
        } => {
            let params = serve::ServeParams {
                listen,
                data_dir,
                metadata,
                messages,
                max_connections,
                outbound_queue,
                fast_passwords,
                ws_flush_delay: std::time::Duration::from_millis(ws_flush_delay_ms),
                ws_flush_batch,
            };
            serve::serve(&params, shutdown_signal()).await
        }
        Scenario::Fanout {
            common,
            users,
            groups,
            group_size,
            conns_per_user,
            rate,
            duration,
            msg_bytes,
            drain,
            typing,
        } => {
            let target = Target::new(&common.server).await?;
            let params = fanout::FanoutParams {
                typing,
                users,
                groups,
                group_size,
                conns_per_user,
                rate,
                duration: Duration::from_secs(duration),
                msg_bytes,
                drain_timeout: Duration::from_secs(drain),
                server_pid: common.server_pid,
                password: common.password.clone(),
                progress: !common.no_progress,
                ..fanout::FanoutParams::default()
            };
            let (result, hist) = fanout::run(&target, &params).await?;
            let title = format!(
                "fan-out: {users} users, {groups} groups of {group_size}, {rate} msg/s, {:.0} deliveries/s",
                result.deliveries_per_sec
            );
            finish(
                "fanout",
                &result,
                &common.out,
                &common.plot,
                &title,
                &[
                    ("send -> deliver", &hist.deliver),
                    ("send -> ack", &hist.ack),
                    ("generator lateness", &hist.lateness),
                ],
            )
        }
        Scenario::ChatList {
            common,
            chats,
            messages,
            concurrency,
            duration,
        } => {
            let target = Target::new(&common.server).await?;
            let params = chatlist::ChatListParams {
                chats,
                messages,
                concurrency,
                duration: Duration::from_secs(duration),
                server_pid: common.server_pid,
                password: common.password.clone(),
                progress: !common.no_progress,
                ..chatlist::ChatListParams::default()
            };
            let result = chatlist::run(&target, &params).await?;
            finish("chat-list", &result, &common.out, &None, "", &[])
        }
        Scenario::Changes {
            common,
            users,
            groups,
            group_size,
            messages,
            rate,
            edit_share,
            duration,
            max_in_flight,
        } => {
            let target = Target::new(&common.server).await?;
            let params = changes::ChangesParams {
                users,
                groups,
                group_size,
                messages,
                rate,
                edit_share,
                duration: Duration::from_secs(duration),
                max_in_flight,
                server_pid: common.server_pid,
                password: common.password.clone(),
                progress: !common.no_progress,
                ..changes::ChangesParams::default()
            };
            let (result, hist) = changes::run(&target, &params).await?;
            let title = format!(
                "changes: {rate} edits/reactions per s in {groups} groups of {group_size}, {:.0} answered/s",
                result.changes_per_sec
            );
            finish(
                "changes",
                &result,
                &common.out,
                &common.plot,
                &title,
                &[
                    ("change -> update (edits)", &hist.update),
                    ("change -> answer", &hist.answer),
                ],
            )
        }
        Scenario::Connections {
            common,
            connections,
            users,
            per_source,
            concurrency,
            settle,
            hold,
        } => {
            let target = Target::new(&common.server).await?;
            let params = connections::ConnectionsParams {
                connections,
                users,
                per_source,
                concurrency,
                settle: Duration::from_secs(settle),
                hold: Duration::from_secs(hold),
                server_pid: common.server_pid,
                password: common.password.clone(),
                progress: !common.no_progress,
                ..connections::ConnectionsParams::default()
            };
            let result = connections::run(&target, &params).await?;
            finish("connections", &result, &common.out, &None, "", &[])
        }
        Scenario::History {
            common,
            email,
            chat_name,
            seed,
            page_size,
            max_pages,
            readers,
        } => {
            let target = Target::new(&common.server).await?;
            let params = history::HistoryParams {
                email,
                password: common.password.clone(),
                chat_name,
                seed_via_protocol: seed,
                page_size,
                max_pages: Some(max_pages),
                readers,
                server_pid: common.server_pid,
                progress: !common.no_progress,
            };
            let (result, hist) = history::run(&target, &params).await?;
            let title = format!(
                "history: {page_size}-message pages of a {}-message chat, {readers} reader(s)",
                result.last_seq
            );
            finish(
                "history",
                &result,
                &common.out,
                &common.plot,
                &title,
                &[("GET /v1/fetch page", &hist)],
            )
        }
        Scenario::SeedHistory {
            store,
            messages,
            email,
            password,
            chat_name,
        } => {
            let params = writes::StoreWritesParams {
                email,
                password,
                chat_name,
                ..store_params(&store)
            };
            let (result, chat) = writes::seed_history(params, messages).await?;
            eprintln!("seeded chat {chat}");
            finish("seed-history", &result, &store.out, &None, "", &[])
        }
        Scenario::Writes {
            common,
            senders,
            window,
            duration,
            via,
            msg_bytes,
        } => {
            let target = Target::new(&common.server).await?;
            let params = writes::ServerWritesParams {
                senders,
                window,
                duration: Duration::from_secs(duration),
                via: match via {
                    ViaArg::Ws => writes::Via::Ws,
                    ViaArg::Rest => writes::Via::Rest,
                    ViaArg::SdkWs => writes::Via::SdkWs,
                    ViaArg::SdkRest => writes::Via::SdkRest,
                },
                msg_bytes,
                server_pid: common.server_pid,
                password: common.password.clone(),
                progress: !common.no_progress,
                ..writes::ServerWritesParams::default()
            };
            let (result, hist) = writes::run_server(&target, &params).await?;
            let title = format!(
                "writes via {:?}: {senders} senders x {window} in flight, {:.0} acked/s",
                via, result.acked_per_sec
            );
            finish(
                "writes",
                &result,
                &common.out,
                &common.plot,
                &title,
                &[("send -> ack", &hist)],
            )
        }
        Scenario::PeerPublish {
            common,
            peer,
            groups,
            group_size,
            rate,
            duration,
            msg_bytes,
            drain,
            max_in_flight,
            per_source,
        } => {
            let target = peer_target(&common, &peer).await?;
            let params = peers::PublishParams {
                groups,
                group_size,
                rate,
                duration: Duration::from_secs(duration),
                msg_bytes,
                drain_timeout: Duration::from_secs(drain),
                max_in_flight,
                per_source,
                server_pid: common.server_pid,
                password: common.password.clone(),
                progress: !common.no_progress,
                ..peers::PublishParams::default()
            };
            let (result, hist) = peers::run_publish(&target, &params).await?;
            let title = format!(
                "{}: {groups} groups of {group_size}, {rate} msg/s over HTTP, {:.0} deliveries/s",
                target.name(),
                result.delivered_per_sec
            );
            finish(
                "peer-publish",
                &result,
                &common.out,
                &common.plot,
                &title,
                &[
                    ("send -> deliver", &hist.deliver),
                    ("send -> HTTP answer", &hist.answer),
                    ("generator lateness", &hist.lateness),
                ],
            )
        }
        Scenario::PeerIdle {
            common,
            peer,
            connections,
            users,
            group_size,
            per_source,
            settle,
        } => {
            let target = peer_target(&common, &peer).await?;
            let params = peers::IdleParams {
                connections,
                users,
                group_size,
                per_source,
                settle: Duration::from_secs(settle),
                server_pid: common.server_pid,
                password: common.password.clone(),
                progress: !common.no_progress,
                ..peers::IdleParams::default()
            };
            let result = peers::run_idle(&target, &params).await?;
            finish("peer-idle", &result, &common.out, &None, "", &[])
        }
        Scenario::PeersTable { reports } => {
            let mut parsed = Vec::with_capacity(reports.len());
            for path in &reports {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                parsed.push(
                    serde_json::from_str(&text)
                        .with_context(|| format!("parsing {}", path.display()))?,
                );
            }
            print!("{}", peers_table::table(&parsed));
            Ok(())
        }
        Scenario::WritesStore {
            store,
            duration,
            chats,
        } => {
            let params = writes::StoreWritesParams {
                duration: Some(Duration::from_secs(duration)),
                chats,
                ..store_params(&store)
            };
            let (result, hist, _) = writes::run_store(&params).await?;
            let title = format!(
                "store appends ({}): {} in flight, {:.0} acked/s",
                params.store, params.concurrency, result.acked_per_sec
            );
            finish(
                "writes-store",
                &result,
                &store.out,
                &store.plot,
                &title,
                &[("append -> ack", &hist)],
            )
        }
    }
}

/// The server of a side-by-side scenario.
async fn peer_target(common: &Common, peer: &PeerArgs) -> anyhow::Result<Peer> {
    let target = Target::new(&common.server).await?;
    Ok(match peer.peer {
        PeerKind::ChatServer => Peer::ChatServer(target),
        PeerKind::Centrifugo => {
            if peer.centrifugo_api_key.is_empty() || peer.centrifugo_secret.is_empty() {
                anyhow::bail!(
                    "Centrifugo needs --centrifugo-api-key and --centrifugo-secret \
                     (or CENTRIFUGO_API_KEY and CENTRIFUGO_HMAC_SECRET)"
                );
            }
            Peer::Centrifugo(Centrifugo {
                target,
                api_key: peer.centrifugo_api_key.clone(),
                hmac_secret: peer.centrifugo_secret.clone(),
            })
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn store_params(s: &StoreArgs) -> writes::StoreWritesParams {
    writes::StoreWritesParams {
        store: s.store.clone(),
        metadata: s.metadata.clone(),
        data_dir: s.data_dir.clone(),
        concurrency: s.concurrency,
        progress: !s.no_progress,
        ..writes::StoreWritesParams::default()
    }
}

/// Prints the result, writes the JSON report and the plot.
fn finish<T: Serialize>(
    scenario: &str,
    result: &T,
    out: &Option<PathBuf>,
    plot_path: &Option<PathBuf>,
    title: &str,
    series: &[(&str, &Latency)],
) -> anyhow::Result<()> {
    let report = Report::new(scenario, result);
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = out {
        report
            .write(path)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("result written to {}", path.display());
    }
    if let Some(path) = plot_path {
        plot::percentile_plot(path, title, series)?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(())
}
