//! The fault run: a Jepsen-style randomized test of the whole cluster under faults.
//!
//! Three real `chat-server` nodes behind nginx, on a MariaDB primary with a read replica
//! (metadata), a three-node Cassandra (messages, RF 3, QUORUM) and a Redis (broker and cache).
//! Clients go through nginx with the real SDK: writers send with `client_msg_id`s and retry an
//! unknown outcome with the same id (one writer per chat without the SDK's retries and with a
//! short timeout, so unknown outcomes happen); subscribers follow their chat from `seq` 0 and resume after
//! the last message they saw whenever their stream ends; a late joiner is added to each chat and
//! a member is removed from it. Meanwhile a seeded nemesis, one fault at a time, kills -9 and
//! restarts a node, pauses a node or Redis with SIGSTOP/SIGCONT (a hang, not a close), kills and
//! restarts Redis, stops a Cassandra node, and pauses the MariaDB replica.
//!
//! Every operation is written with its outcome (`ok`, `failed`, `unknown`) to a JSON Lines
//! history, followed, once every fault is healed and the streams have drained, by each chat's
//! final history. This program checks nothing itself: the independent checker
//! `tools/faults/check_history.py` (no code shared with the server) reads the history and decides.
//!
//! Run it with `scripts/faults.sh [SECONDS] [SEED]`, which starts every service, runs this
//! program and then the checker. Without `CHAT_FAULTS_SECONDS` it does nothing (so a plain
//! `cargo test --all-features` passes over it). Environment: `CHAT_FAULTS_SECONDS`,
//! `CHAT_FAULTS_SEED`, `CHAT_FAULTS_OUT` (the history file), `CHAT_TEST_MYSQL_URL`,
//! `CHAT_TEST_MYSQL_REPLICA_URL`, `CHAT_TEST_CASSANDRA_CLUSTER_URL`, `CHAT_FAULTS_REPLICA_PID`
//! (the replica's pid file).

mod cluster_common;

use chat_client::{ChatId, Client, Error, Event, RetryPolicy, SendOptions, Seq, UserId};
use cluster_common::*;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Chats in the run, and people in each.
const CHATS: usize = 3;
const WRITERS_PER_CHAT: usize = 3;
const SUBSCRIBERS_PER_CHAT: usize = 2;
/// How many times a writer sends one message again after an unknown outcome.
const RESENDS: usize = 3;
/// How long the streams get to catch up once everything is healed.
const DRAIN: Duration = Duration::from_secs(120);

/// What the run is told by its environment.
struct Settings {
    seconds: u64,
    seed: u64,
    out: PathBuf,
    cassandra: String,
    replica_base: String,
    replica_pid_file: PathBuf,
}

impl Settings {
    /// `None` when `CHAT_FAULTS_SECONDS` is not set: the run was not asked for.
    fn from_env() -> Option<Settings> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let seconds = var("CHAT_FAULTS_SECONDS")?
            .parse()
            .expect("CHAT_FAULTS_SECONDS: a number of seconds");
        let need = |name: &str| var(name).unwrap_or_else(|| panic!("{name} is not set"));
        Some(Settings {
            seconds,
            seed: var("CHAT_FAULTS_SEED").map_or(1, |s| s.parse().expect("CHAT_FAULTS_SEED")),
            out: PathBuf::from(need("CHAT_FAULTS_OUT")),
            cassandra: need("CHAT_TEST_CASSANDRA_CLUSTER_URL"),
            replica_base: need("CHAT_TEST_MYSQL_REPLICA_URL"),
            replica_pid_file: PathBuf::from(need("CHAT_FAULTS_REPLICA_PID")),
        })
    }
}

fn main() -> ExitCode {
    let Some(settings) = Settings::from_env() else {
        eprintln!("fault run not requested (CHAT_FAULTS_SECONDS unset); scripts/faults.sh runs it");
        return ExitCode::SUCCESS;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(settings));
    ExitCode::SUCCESS
}

/// The history file: one JSON object a line, times in milliseconds since the run started.
#[derive(Clone)]
struct History {
    start: Instant,
    out: Arc<Mutex<BufWriter<File>>>,
}

impl History {
    fn create(path: &PathBuf) -> History {
        let file = File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        History {
            start: Instant::now(),
            out: Arc::new(Mutex::new(BufWriter::new(file))),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn record(&self, line: Value) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        writeln!(out, "{line}").expect("writing the history");
    }

    fn flush(&self) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.flush().expect("flushing the history");
    }
}

/// `ok`, `failed` (the server definitely did not do it) or `unknown`.
fn outcome<T>(result: &Result<T, Error>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => match e.status() {
            // A 4xx other than a timeout or a throttle is a definite no.
            Some(s) if (400..500).contains(&s) && s != 408 && s != 429 => "failed",
            _ => "unknown",
        },
    }
}

fn error_text<T>(result: &Result<T, Error>) -> Option<String> {
    result.as_ref().err().map(ToString::to_string)
}

/// One person of the run: a logged-in client through nginx.
#[derive(Clone)]
struct Person {
    name: String,
    id: UserId,
    client: Client,
}

async fn person(lb: &str, name: String) -> Person {
    let client = user(lb, &name).await;
    let id = client.user_id().expect("logged in");
    Person { name, id, client }
}

/// The people of one chat.
struct ChatCast {
    chat: ChatId,
    owner: Person,
    writers: Vec<Person>,
    subscribers: Vec<Person>,
    /// Removed half-way through.
    leaver: Person,
    /// Added a quarter of the way through.
    joiner: Person,
}

async fn cast(lb: &str, index: usize) -> ChatCast {
    let mut writers = Vec::new();
    for w in 0..WRITERS_PER_CHAT {
        writers.push(person(lb, format!("c{index}w{w}")).await);
    }
    // The last writer is impatient: no SDK retries and a short timeout, so faults give it
    // unknown outcomes, which it resends under the same id (the dedupe promise under test).
    if let Some(w) = writers.last_mut() {
        w.client = Client::builder(lb)
            .token(w.client.token().expect("logged in"))
            .user_id(w.id)
            .retry(RetryPolicy::never())
            .request_timeout(Duration::from_secs(2))
            .build()
            .expect("an impatient client");
    }
    let mut subscribers = Vec::new();
    for s in 0..SUBSCRIBERS_PER_CHAT {
        subscribers.push(person(lb, format!("c{index}s{s}")).await);
    }
    let leaver = person(lb, format!("c{index}leaver")).await;
    let joiner = person(lb, format!("c{index}joiner")).await;
    let owner = writers[0].clone();
    let members: Vec<UserId> = writers[1..]
        .iter()
        .chain(&subscribers)
        .chain([&leaver])
        .map(|p| p.id)
        .collect();
    let chat = owner
        .client
        .create_chat(&format!("fault chat {index}"), &members)
        .await
        .expect("creating a chat")
        .chat_id;
    ChatCast {
        chat,
        owner,
        writers,
        subscribers,
        leaver,
        joiner,
    }
}

/// Sends until `until`, each message under its own `client_msg_id`, sent again with the same id
/// after an unknown outcome.
async fn writer(history: History, p: Person, chat: ChatId, until: Instant, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut k = 0u64;
    while Instant::now() < until {
        k += 1;
        let id = format!("{}-{chat}-{k}", p.name);
        let text = format!("{} says {k}", p.name);
        for attempt in 0..=RESENDS {
            let t0 = history.now();
            let options = SendOptions::default().with_client_msg_id(id.clone());
            let result = p.client.send_with(chat, &text, options).await;
            let outcome = outcome(&result);
            history.record(json!({
                "type": "send", "client": p.name, "user": p.id.0, "chat": chat.0,
                "client_msg_id": id, "text": text, "t0": t0, "t1": history.now(),
                "outcome": outcome, "seq": result.as_ref().ok().map(|m| m.seq.0),
                "attempt": attempt, "error": error_text(&result),
            }));
            if outcome != "unknown" {
                break;
            }
            // Back off before the resend, so the resends span a fault instead of one moment.
            let backoff = 250 * (1u64 << attempt.min(4));
            tokio::time::sleep(Duration::from_millis(backoff)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(30..150))).await;
    }
}

/// Follows one chat from `seq` 0 until told to stop, recording every message the stream yields;
/// when the stream ends it resumes after the last message seen. `last` is the newest `seq` seen.
async fn subscriber(
    history: History,
    p: Person,
    chat: ChatId,
    last: Arc<AtomicI64>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let after = last.load(Ordering::SeqCst);
        history.record(json!({
            "type": "subscribe", "subscriber": p.name, "user": p.id.0, "chat": chat.0,
            "after_seq": after, "t": history.now(),
        }));
        let mut sub = match p.client.subscribe_from(HashMap::from([(chat, Seq(after))])) {
            Ok(sub) => sub,
            Err(e) => panic!("{}: subscribe_from: {e}", p.name),
        };
        loop {
            let event = tokio::select! {
                event = sub.next() => event,
                _ = stop.changed() => return,
            };
            match event {
                Some(Event::Message(m)) if m.chat_id == chat => {
                    history.record(json!({
                        "type": "deliver", "subscriber": p.name, "user": p.id.0,
                        "chat": chat.0, "seq": m.seq.0, "client_msg_id": m.client_msg_id,
                        "text": m.msg_text, "t": history.now(),
                    }));
                    last.store(m.seq.0, Ordering::SeqCst);
                }
                Some(Event::Disconnected {
                    reason,
                    reconnecting,
                    ..
                }) => {
                    history.record(json!({
                        "type": "note", "what": "disconnected", "subscriber": p.name,
                        "reason": reason, "reconnecting": reconnecting, "t": history.now(),
                    }));
                }
                Some(Event::RemovedFromChat(c)) if c == chat => {
                    history.record(json!({
                        "type": "note", "what": "removed", "subscriber": p.name,
                        "t": history.now(),
                    }));
                }
                Some(_) => {}
                None => break,
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A membership change, tried until it has a definite outcome, as an app would: with backoff,
/// for up to about a minute.
async fn change_member(history: History, owner: Person, chat: ChatId, who: UserId, add: bool) {
    let kind = if add { "member_add" } else { "member_remove" };
    let mut wait = Duration::from_millis(250);
    for _ in 0..12 {
        let t0 = history.now();
        let result = if add {
            owner.client.add_member(chat, who).await
        } else {
            owner.client.remove_member(chat, who).await
        };
        let mut outcome = outcome(&result);
        // A repeat after an unknown outcome that finds the change already made.
        if matches!(
            result.as_ref().err().and_then(Error::status),
            Some(404 | 409)
        ) {
            outcome = "ok";
        }
        history.record(json!({
            "type": kind, "chat": chat.0, "user": who.0, "t0": t0, "t1": history.now(),
            "outcome": outcome, "error": error_text(&result),
        }));
        if outcome != "unknown" {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(8));
    }
}

/// The faults the nemesis injects.
#[derive(Clone, Copy, Debug)]
enum Fault {
    KillNode,
    PauseNode,
    PauseRedis,
    KillRedis,
    StopCassandraNode,
    PauseReplica,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Fault::KillNode,
        Fault::PauseNode,
        Fault::PauseRedis,
        Fault::KillRedis,
        Fault::StopCassandraNode,
        Fault::PauseReplica,
    ];

    fn kind(self) -> &'static str {
        match self {
            Fault::KillNode => "kill_node",
            Fault::PauseNode => "pause_node",
            Fault::PauseRedis => "pause_redis",
            Fault::KillRedis => "kill_redis",
            Fault::StopCassandraNode => "stop_cassandra_node",
            Fault::PauseReplica => "pause_replica",
        }
    }
}

/// `scripts/cassandra.sh <args>` (blocking; run on a blocking thread).
fn cassandra_sh(args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cassandra.sh");
    let status = Command::new("bash")
        .arg(script)
        .args(args)
        .status()
        .expect("running scripts/cassandra.sh");
    assert!(status.success(), "scripts/cassandra.sh {args:?} failed");
}

/// SIGSTOP / SIGCONT of the process whose pid is in `pid_file`.
fn pause_pid_file(pid_file: &PathBuf, cont: bool) {
    let pid =
        std::fs::read_to_string(pid_file).unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
    let pid = pid
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
    pause_pid(pid, cont, &pid_file.display().to_string());
}

/// The nemesis: one fault at a time, at random, until `until`; everything healed when it returns.
struct Nemesis {
    history: History,
    rng: StdRng,
    nodes: Vec<NodeProc>,
    redis: RedisProc,
    replica_pid_file: PathBuf,
    /// The Cassandra node being started again in the background, if any.
    cassandra_restart: Option<JoinHandle<()>>,
    next_id: usize,
}

impl Nemesis {
    async fn run(&mut self, until: Instant) {
        while Instant::now() < until {
            let pause = Duration::from_millis(self.rng.gen_range(2000..5000));
            tokio::time::sleep(pause).await;
            if Instant::now() >= until {
                break;
            }
            let fault = Fault::ALL[self.rng.gen_range(0..Fault::ALL.len())];
            self.inject(fault).await;
        }
        if let Some(restart) = self.cassandra_restart.take() {
            restart.await.expect("restarting a Cassandra node");
        }
    }

    fn fault_id(&mut self) -> String {
        self.next_id += 1;
        format!("f{}", self.next_id)
    }

    fn record_fault(&self, id: &str, fault: Fault, target: &str) {
        self.history.record(json!({
            "type": "fault", "id": id, "kind": fault.kind(), "target": target,
            "t": self.history.now(),
        }));
        eprintln!(
            "[{:>7} ms] fault {id}: {} {target}",
            self.history.now(),
            fault.kind()
        );
    }

    fn record_heal(&self, id: &str) {
        self.history
            .record(json!({"type": "heal", "id": id, "t": self.history.now()}));
    }

    async fn inject(&mut self, fault: Fault) {
        let id = self.fault_id();
        let hold = Duration::from_millis(self.rng.gen_range(2000..6000));
        match fault {
            Fault::KillNode | Fault::PauseNode => {
                let n = self.rng.gen_range(0..self.nodes.len());
                let name = self.nodes[n].name.clone();
                self.record_fault(&id, fault, &name);
                if matches!(fault, Fault::KillNode) {
                    self.nodes[n].kill9();
                    tokio::time::sleep(hold).await;
                    self.nodes[n].restart().await;
                } else {
                    self.nodes[n].signal_pause(false);
                    tokio::time::sleep(hold).await;
                    self.nodes[n].signal_pause(true);
                }
            }
            Fault::PauseRedis => {
                self.record_fault(&id, fault, "redis");
                self.redis.signal_pause(false);
                tokio::time::sleep(hold).await;
                self.redis.signal_pause(true);
            }
            Fault::KillRedis => {
                self.record_fault(&id, fault, "redis");
                self.redis.kill();
                tokio::time::sleep(hold).await;
                self.redis.restart().await;
            }
            Fault::PauseReplica => {
                self.record_fault(&id, fault, "mariadb replica");
                pause_pid_file(&self.replica_pid_file, false);
                tokio::time::sleep(hold).await;
                pause_pid_file(&self.replica_pid_file, true);
            }
            Fault::StopCassandraNode => {
                // One Cassandra node down at a time: with RF 3 a quorum stays.
                if self
                    .cassandra_restart
                    .as_ref()
                    .is_some_and(|r| !r.is_finished())
                {
                    self.next_id -= 1;
                    return;
                }
                let node = self.rng.gen_range(2..=3).to_string();
                self.record_fault(&id, fault, &format!("cassandra node {node}"));
                let stop = node.clone();
                tokio::task::spawn_blocking(move || cassandra_sh(&["stop-node", &stop]))
                    .await
                    .expect("stopping a Cassandra node");
                tokio::time::sleep(hold).await;
                // Starting a node takes a while: the nemesis goes on meanwhile.
                let history = self.history.clone();
                self.cassandra_restart = Some(tokio::spawn(async move {
                    tokio::task::spawn_blocking(move || cassandra_sh(&["start-node", &node]))
                        .await
                        .expect("starting a Cassandra node");
                    history.record(json!({"type": "heal", "id": id, "t": history.now()}));
                }));
                return;
            }
        }
        self.record_heal(&id);
    }
}

/// `mysql://user:password@HOST:PORT/db` of `url`, with host and port of `replica_base`.
fn on_replica(url: &str, replica_base: &str) -> String {
    let mut url = reqwest::Url::parse(url).expect("database URL");
    let replica = reqwest::Url::parse(replica_base).expect("replica URL");
    url.set_host(replica.host_str()).expect("replica host");
    url.set_port(replica.port()).expect("replica port");
    url.to_string()
}

async fn run(settings: Settings) {
    let history = History::create(&settings.out);
    let mut rng = StdRng::seed_from_u64(settings.seed);
    eprintln!(
        "fault run: {} s, seed {}, history {}",
        settings.seconds,
        settings.seed,
        settings.out.display()
    );

    let redis = RedisProc::start().await;
    let database = least_privilege_database().await;
    let spec = NodeSpec {
        replica: Some(on_replica(&database, &settings.replica_base)),
        database,
        messages: Some(chat_storage::cassandra::testing::fresh_keyspace_url(
            &settings.cassandra,
        )),
        redis: redis.url(),
        cache_local_ttl_ms: 2000,
    };
    // The first node creates the keyspace; the others find it.
    let mut nodes = vec![NodeProc::start("n1", &spec).await];
    for name in ["n2", "n3"] {
        nodes.push(NodeProc::start(name, &spec).await);
    }
    let upstreams: Vec<String> = nodes.iter().map(NodeProc::addr).collect();
    let nginx = NginxProc::start(&upstreams).await;
    let lb = nginx.url();

    let mut casts = Vec::new();
    for i in 0..CHATS {
        casts.push(cast(&lb, i).await);
    }
    history.record(json!({"type": "note", "what": "setup done", "t": history.now()}));

    let start = Instant::now();
    let until = start + Duration::from_secs(settings.seconds);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut writers = Vec::new();
    let mut subscribers = Vec::new();
    let mut changes = Vec::new();
    // Per subscriber: whether its user stays a member to the end, and the newest seq it saw.
    let mut positions: Vec<(ChatId, bool, Arc<AtomicI64>)> = Vec::new();
    for c in &casts {
        for w in &c.writers {
            let seed = rng.gen();
            writers.push(tokio::spawn(writer(
                history.clone(),
                w.clone(),
                c.chat,
                until,
                seed,
            )));
        }
        for (p, stays) in c
            .subscribers
            .iter()
            .map(|p| (p, true))
            .chain([(&c.leaver, false)])
        {
            let last = Arc::new(AtomicI64::new(0));
            positions.push((c.chat, stays, last.clone()));
            subscribers.push(tokio::spawn(subscriber(
                history.clone(),
                p.clone(),
                c.chat,
                last,
                stop_rx.clone(),
            )));
        }
        // The joiner is added a quarter of the way in and then follows the chat from seq 0;
        // the leaver is removed half-way.
        let (h, owner, chat, joiner) = (history.clone(), c.owner.clone(), c.chat, c.joiner.clone());
        let quarter = Duration::from_secs(settings.seconds) / 4;
        let last = Arc::new(AtomicI64::new(0));
        positions.push((c.chat, true, last.clone()));
        let stop = stop_rx.clone();
        changes.push(tokio::spawn(async move {
            tokio::time::sleep(quarter).await;
            change_member(h.clone(), owner, chat, joiner.id, true).await;
            subscriber(h, joiner, chat, last, stop).await;
        }));
        let (h, owner, chat, leaver) = (history.clone(), c.owner.clone(), c.chat, c.leaver.id);
        changes.push(tokio::spawn(async move {
            tokio::time::sleep(quarter * 2).await;
            change_member(h, owner, chat, leaver, false).await;
        }));
    }

    let mut nemesis = Nemesis {
        history: history.clone(),
        rng: StdRng::seed_from_u64(rng.gen()),
        nodes,
        redis,
        replica_pid_file: settings.replica_pid_file.clone(),
        cassandra_restart: None,
        next_id: 0,
    };
    nemesis.run(until).await;
    eprintln!("[{:>7} ms] every fault healed", history.now());
    for w in writers {
        w.await.expect("writer task");
    }
    history.record(json!({"type": "note", "what": "writers done", "t": history.now()}));

    // Let the streams of everyone still in a chat reach its newest message.
    let mut newest = HashMap::new();
    for c in &casts {
        let page = c
            .owner
            .client
            .fetch(c.chat, chat_client::FetchOptions::latest(1))
            .await
            .expect("newest message after the run");
        newest.insert(c.chat, page.messages.last().map_or(0, |m| m.seq.0));
    }
    let deadline = Instant::now() + DRAIN;
    while Instant::now() < deadline
        && positions
            .iter()
            .any(|(chat, stays, last)| *stays && last.load(Ordering::SeqCst) < newest[chat])
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    history.record(json!({"type": "note", "what": "streams_drained", "t": history.now()}));
    stop_tx.send(true).expect("stopping the subscribers");
    for t in subscribers.into_iter().chain(changes) {
        t.await.expect("subscriber task");
    }

    for c in &casts {
        let messages = c
            .owner
            .client
            .fetch_all_after(c.chat, Seq(0))
            .await
            .expect("final history");
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                json!({"seq": m.seq.0, "client_msg_id": m.client_msg_id, "text": m.msg_text,
                       "sender": m.sender_id.0})
            })
            .collect();
        history.record(json!({"type": "history", "chat": c.chat.0, "messages": messages}));
    }
    history.flush();
    eprintln!(
        "fault run done in {:.0?}; history in {}",
        start.elapsed(),
        settings.out.display()
    );
    // Keep the nodes' logs next to the history: they outlive the nodes' temporary directories.
    if let Some(dir) = settings.out.parent() {
        for node in &nemesis.nodes {
            let to = dir.join(format!("node-{}.log", node.name));
            if let Err(e) = std::fs::copy(node.log_path(), &to) {
                eprintln!("keeping {}: {e}", to.display());
            }
        }
    }
    drop(nginx);
    drop(nemesis);
}
