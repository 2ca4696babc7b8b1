//! Run with: cargo run --release -p examples --example idle_memory -- [CONNECTIONS] [PORT]
//!
//! Where the server's heap goes per idle WebSocket, by call site. This process runs the
//! `loadgen serve` server (one worker thread, as `scripts/bench.sh peers` pins it to one
//! core) under the `dhat` heap profiler; a child process (this program again, `client` mode)
//! registers 100 users in chats of 5, as the peers idle scenario does, then opens N
//! authenticated WebSockets and leaves them idle. The server's heap is read before the first
//! connection and 3 s after the last, and the growth is reported per connection: bytes asked
//! for, glibc chunk bytes (each block's 8-byte header and 16-byte rounding), live blocks and
//! blocks allocated while opening. Then the profile is written (`dhat-idle.json`, viewable in
//! dhat's viewer) and the call sites that hold at least 4 B per connection are listed.
//!
//! dhat's own bookkeeping makes this process's RSS meaningless; resident memory per connection
//! (heap plus what the allocator cannot reuse) is what `scripts/bench.sh connections` and the
//! idle step of `scripts/bench.sh peers` measure.

use anyhow::Context as _;
use examples::loadgen::api::Target;
use examples::loadgen::peer::Peer;
use examples::loadgen::serve::{serve, ServeParams};
use futures::StreamExt as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// The users and chat size of the peers idle scenario.
const USERS: usize = 100;
const GROUP: usize = 5;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("client") {
        let port = args.get(1).context("client PORT N")?.parse()?;
        let n = args.get(2).context("client PORT N")?.parse()?;
        return client(port, n);
    }
    let n: usize = args.first().map(|a| a.parse()).transpose()?.unwrap_or(5000);
    let port: u16 = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(19381);
    let out = std::env::var("IDLE_MEMORY_OUT").unwrap_or_else(|_| "dhat-idle.json".into());
    let data = std::env::temp_dir().join(format!("idle-memory-{}", std::process::id()));
    std::fs::create_dir_all(&data)?;
    let params = ServeParams {
        listen: ([127, 0, 0, 1], port).into(),
        data_dir: data.clone(),
        metadata: "sqlite".into(),
        messages: "sqlite".into(),
        max_connections: 100_000,
        outbound_queue: 1024,
        fast_passwords: true,
        ws_flush_delay: chat_server::Config::default().ws_flush_delay,
        ws_flush_batch: chat_server::Config::default().ws_flush_batch,
    };
    let mut profiler = Some(dhat::Profiler::builder().file_name(&out).build());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(async move {
        serve(&params, async {
            let _ = stop_rx.await;
        })
        .await
    });

    let mut child = Command::new(std::env::current_exe()?)
        .args(["client", &port.to_string(), &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut to_child = child.stdin.take().context("child stdin")?;
    let mut from_child = BufReader::new(child.stdout.take().context("child stdout")?).lines();
    let mut expect = |what: &str| -> anyhow::Result<()> {
        match from_child.next() {
            Some(Ok(line)) if line == what => Ok(()),
            other => anyhow::bail!("the client said {other:?}, expected {what}"),
        }
    };
    expect("set up")?;
    std::thread::sleep(Duration::from_secs(1));
    let before = dhat::HeapStats::get();
    writeln!(to_child, "open")?;
    expect("opened")?;
    // Long enough for every connection's first read and the setup's leftovers; shorter than
    // the ping interval.
    std::thread::sleep(Duration::from_secs(3));
    let after = dhat::HeapStats::get();
    let per = |a: usize, b: usize| (a as f64 - b as f64) / n as f64;
    println!("{n} idle WebSockets, server heap per connection:");
    println!(
        "  bytes asked for       {:8.1} B",
        per(after.curr_bytes, before.curr_bytes)
    );
    println!(
        "  live blocks           {:8.2}",
        per(after.curr_blocks, before.curr_blocks)
    );
    println!(
        "  blocks allocated      {:8.1} (while opening and settling)",
        (after.total_blocks - before.total_blocks) as f64 / n as f64
    );
    // Written while the connections are open, so "at t-end" is the idle state.
    drop(profiler.take());
    sites(&out, n)?;

    writeln!(to_child, "close")?;
    drop(to_child);
    let _ = child.wait();
    let _ = stop_tx.send(());
    let _ = rt.block_on(server);
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// The call sites of dhat's profile that hold at least 4 B per connection at its end, with
/// their glibc chunk bytes.
fn sites(path: &str, n: usize) -> anyhow::Result<()> {
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let frames = json["ftbl"].as_array().context("ftbl")?;
    let mut rows = Vec::new();
    for pp in json["pps"].as_array().context("pps")? {
        let bytes = pp["eb"].as_f64().unwrap_or(0.0) / n as f64;
        let blocks = pp["ebk"].as_f64().unwrap_or(0.0) / n as f64;
        if bytes < 4.0 {
            continue;
        }
        // glibc: each block takes its size plus an 8-byte header, rounded up to 16, at least
        // 32 (the average block stands for all of them).
        let avg = bytes / blocks.max(f64::MIN_POSITIVE);
        let chunk = blocks * (((avg + 8.0) / 16.0).ceil() * 16.0).max(32.0);
        let stack: Vec<String> = pp["fs"]
            .as_array()
            .context("fs")?
            .iter()
            .filter_map(|f| frames.get(f.as_u64()? as usize)?.as_str())
            .filter(|f| !boring(f))
            .take(4)
            .map(short)
            .collect();
        rows.push((bytes, blocks, chunk, stack));
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (bytes, blocks, chunk) = rows
        .iter()
        .fold((0.0, 0.0, 0.0), |t, r| (t.0 + r.0, t.1 + r.1, t.2 + r.2));
    println!(
        "call sites holding >= 4 B per connection at the end: {bytes:.0} B in {blocks:.2} blocks \
         ({chunk:.0} B of glibc chunks)"
    );
    for (bytes, blocks, chunk, stack) in rows {
        println!("  {bytes:7.1} B {blocks:5.2} blocks {chunk:7.1} B chunks");
        for f in stack {
            println!("        {f}");
        }
    }
    Ok(())
}

/// Frames that say nothing about who allocated: the allocator, collections, dhat.
fn boring(frame: &str) -> bool {
    [
        "dhat::",
        "alloc::",
        "core::",
        "std::",
        "__rust",
        "<alloc::",
        "<core::",
        "<std::",
        "bytes::bytes_mut::BytesMut::with_capacity",
        "[root]",
    ]
    .iter()
    .any(|p| frame.contains(p) && !frame.contains("chat_server"))
        && !frame.contains("tungstenite")
        && !frame.contains("hyper")
        && !frame.contains("axum")
        && !frame.contains("tokio::")
}

/// A frame without its address and with the path shortened.
fn short(frame: &str) -> String {
    let f = frame.split_once(": ").map_or(frame, |(_, rest)| rest);
    let f = f.replace("/root/.cargo/registry/src/index.crates.io-", "");
    if f.chars().count() > 200 {
        format!("{}…", f.chars().take(200).collect::<String>())
    } else {
        f
    }
}

/// The child: sets the users up, waits for `open`, opens N WebSockets, waits for `close`.
fn client(port: u16, n: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let base = format!("http://127.0.0.1:{port}");
        let mut up = false;
        for _ in 0..100 {
            if reqwest::get(format!("{base}/v1/health")).await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::ensure!(up, "the server did not come up on {base}");
        let peer = Peer::ChatServer(Target::new(&base).await?);
        let rooms: Vec<Vec<usize>> = (0..USERS / GROUP)
            .map(|g| (g * GROUP..(g + 1) * GROUP).collect())
            .collect();
        let pb = indicatif::ProgressBar::hidden();
        let cast = peer
            .setup("idlemem", "idle memory password", USERS, &rooms, 16, &pb)
            .await?;
        let mut stdin = BufReader::new(std::io::stdin()).lines();
        println!("set up");
        anyhow::ensure!(matches!(stdin.next(), Some(Ok(l)) if l == "open"));
        let opened: Vec<_> = futures::stream::iter(0..n)
            .map(|i| {
                let (member, room) = (&cast.members[i % USERS], &cast.rooms[i % USERS / GROUP]);
                let peer = &peer;
                async move { peer.open(member, room, None, 1024).await }
            })
            .buffer_unordered(256)
            .collect()
            .await;
        let sockets = opened.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        println!("opened");
        // Held until the server is done measuring.
        let _ = stdin.next();
        drop(sockets);
        Ok(())
    })
}
