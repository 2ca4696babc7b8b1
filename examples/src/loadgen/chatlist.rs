//! The chat-list scenario: the home screen of a user in many chats (`GET /v1/chats`, with each
//! chat's last message and exact unread count) and read-marker writes (`POST
//! /v1/chats/{id}/read`).
//!
//! Setup: one reader and one writer; the writer creates N chats with the reader and sends M
//! messages to each (REST, concurrently across chats), then deletes one message in every
//! fourth chat, so the unread counts include tombstones. Then:
//! 1. **list**: the reader asks for the chat list, `concurrency` requests in flight, for
//!    `duration`; every answer is checked (N chats, and each chat's unread count is what the
//!    reader's marker says). Latency per request.
//! 2. **read**: the reader moves its marker forward one message at a time, chat after chat
//!    (`concurrency` in flight, one per chat at a time so each request really moves its
//!    marker), until every chat is read or `duration` is over. Writes per second and latency.
//!
//! Closed loop on purpose: this measures what one request costs, not a rate the server must
//! keep up with.

use super::api::{accounts, Account, Api, Target};
use super::progress;
use super::stats::{Latency, LatencySummary};
use super::sysmon::{Monitor, Proc, Usage};
use anyhow::{bail, Context as _};
use chat_core::protocol::{ChatList, ReadRequest, ReadState, SendRequest};
use chat_core::{ChatId, Seq};
use futures::StreamExt as _;
use serde::Serialize;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Clone, Debug)]
pub struct ChatListParams {
    /// Chats of the reader (N).
    pub chats: usize,
    /// Messages per chat (M).
    pub messages: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// How long each phase runs at most.
    pub duration: Duration,
    /// The server's PID, to report its CPU and RSS.
    pub server_pid: Option<u32>,
    /// Makes this run's e-mails unique.
    pub run_id: String,
    /// Password of the generated users.
    pub password: String,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for ChatListParams {
    fn default() -> Self {
        ChatListParams {
            chats: 500,
            messages: 20,
            concurrency: 4,
            duration: Duration::from_secs(20),
            server_pid: None,
            run_id: super::run_id(),
            password: "loadgen password".to_owned(),
            progress: true,
        }
    }
}

/// What a chat-list run measured.
#[derive(Clone, Debug, Serialize)]
pub struct ChatListResult {
    /// Chats of the reader.
    pub chats: usize,
    /// Messages per chat.
    pub messages: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Chat lists read.
    pub lists: u64,
    /// Chat lists per second.
    pub lists_per_sec: f64,
    /// Latency of `GET /v1/chats`.
    pub list_latency: LatencySummary,
    /// The server's CPU and memory while listing.
    pub list_server: Option<Usage>,
    /// Read-marker moves made.
    pub reads: u64,
    /// Read-marker moves per second.
    pub reads_per_sec: f64,
    /// Latency of `POST /v1/chats/{id}/read`.
    pub read_latency: LatencySummary,
    /// The server's CPU and memory while reading.
    pub read_server: Option<Usage>,
    /// Setup time, seconds.
    pub setup_secs: f64,
}

/// Runs the scenario against `target`.
pub async fn run(target: &Target, p: &ChatListParams) -> anyhow::Result<ChatListResult> {
    if p.chats == 0 || p.messages == 0 || p.concurrency == 0 {
        bail!("chats, messages and concurrency must be at least 1");
    }
    let started = Instant::now();
    let api = Api::new(target)?;
    let pb = progress::bar(p.progress, 2, "users");
    let users = accounts(&api, &format!("list{}", p.run_id), &p.password, 2, 2, &pb).await?;
    pb.finish_and_clear();
    let (reader, writer) = (&users[0], &users[1]);

    let pb = progress::bar(p.progress, p.chats as u64, "chats");
    let chats: Vec<ChatId> = futures::stream::iter(0..p.chats)
        .map(|i| {
            let api = api.clone();
            let writer = writer.clone();
            let reader = reader.user_id;
            let m = p.messages;
            async move {
                let chat = api
                    .create_chat(&writer, &format!("list {i}"), &[reader])
                    .await?
                    .chat_id;
                for j in 0..m {
                    let req = SendRequest {
                        user_id: None,
                        chat_id: chat,
                        msg_text: format!("message {j} of chat {i}"),
                        timestamp: None,
                        client_msg_id: Some(format!("c{i}m{j}")),
                        reply_to_seq: None,
                    };
                    api.send(&writer, &req).await?;
                }
                if i % 4 == 0 {
                    api.delete_message(&writer, chat, Seq(m as i64)).await?;
                }
                anyhow::Ok(chat)
            }
        })
        .buffer_unordered(16)
        .inspect(|_| pb.inc(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    pb.finish_and_clear();
    let setup_secs = started.elapsed().as_secs_f64();

    // 1. The chat list.
    let mon = p.server_pid.and_then(|pid| Monitor::start(Proc::Pid(pid)));
    let pb = progress::bar(p.progress, p.duration.as_secs().max(1), "listing");
    let t0 = Instant::now();
    let deadline = t0 + p.duration;
    let results = futures::stream::iter(0..p.concurrency)
        .map(|_| {
            let api = api.clone();
            let reader = reader.clone();
            let n = p.chats;
            let m = p.messages as u64;
            async move {
                let mut lat = Latency::new();
                while Instant::now() < deadline {
                    let s = Instant::now();
                    let list = api.chat_list(&reader).await?;
                    lat.record(s.elapsed());
                    if list.chats.len() != n {
                        bail!("the list has {} chats, not {n}", list.chats.len());
                    }
                    for c in &list.chats {
                        let deleted = u64::from(c.last_message.as_ref().is_some_and(|m| m.deleted));
                        let want = (m - c.last_read_seq.get() as u64).saturating_sub(deleted);
                        if c.unread_count != want {
                            bail!(
                                "chat {}: unread {} but {want} expected",
                                c.chat_id,
                                c.unread_count
                            );
                        }
                    }
                }
                anyhow::Ok(lat)
            }
        })
        .buffer_unordered(p.concurrency)
        .collect::<Vec<_>>()
        .await;
    let list_secs = t0.elapsed().as_secs_f64();
    let list_server = mon.map(Monitor::finish);
    pb.finish_and_clear();
    let mut list_latency = Latency::new();
    for r in results {
        list_latency.merge(&r?);
    }

    // 2. Read markers: each worker takes every `concurrency`-th chat and reads it message by
    // message.
    let mon = p.server_pid.and_then(|pid| Monitor::start(Proc::Pid(pid)));
    let pb = progress::bar(p.progress, p.duration.as_secs().max(1), "reading");
    let t0 = Instant::now();
    let deadline = t0 + p.duration;
    let chats = std::sync::Arc::new(chats);
    let results = futures::stream::iter(0..p.concurrency)
        .map(|w| {
            let api = api.clone();
            let reader = reader.clone();
            let chats = chats.clone();
            let (c, m) = (p.concurrency, p.messages as i64);
            async move {
                let mut lat = Latency::new();
                'chats: for chat in chats.iter().skip(w).step_by(c) {
                    for seq in 1..=m {
                        if Instant::now() >= deadline {
                            break 'chats;
                        }
                        let s = Instant::now();
                        let state = api.mark_read(&reader, *chat, Seq(seq)).await?;
                        lat.record(s.elapsed());
                        if state.last_read_seq != Seq(seq) {
                            bail!(
                                "chat {chat}: marker at {} after reading {seq}",
                                state.last_read_seq
                            );
                        }
                    }
                }
                anyhow::Ok(lat)
            }
        })
        .buffer_unordered(p.concurrency)
        .collect::<Vec<_>>()
        .await;
    let read_secs = t0.elapsed().as_secs_f64();
    let read_server = mon.map(Monitor::finish);
    pb.finish_and_clear();
    let mut read_latency = Latency::new();
    for r in results {
        read_latency.merge(&r.context("reading")?);
    }
    Ok(ChatListResult {
        chats: p.chats,
        messages: p.messages,
        concurrency: p.concurrency,
        lists: list_latency.count(),
        lists_per_sec: list_latency.count() as f64 / list_secs.max(1e-9),
        list_latency: list_latency.summary(),
        list_server,
        reads: read_latency.count(),
        reads_per_sec: read_latency.count() as f64 / read_secs.max(1e-9),
        read_latency: read_latency.summary(),
        read_server,
        setup_secs,
    })
}

impl Api {
    /// `GET /v1/chats` as the whole answer.
    pub async fn chat_list(&self, who: &Account) -> anyhow::Result<ChatList> {
        Ok(ChatList {
            chats: self.chats(who).await?,
        })
    }

    /// `POST /v1/chats/{chat}/read`.
    pub async fn mark_read(
        &self,
        who: &Account,
        chat: ChatId,
        seq: Seq,
    ) -> anyhow::Result<ReadState> {
        let what = "POST /v1/chats/{chat_id}/read";
        let resp = self
            .http
            .post(self.url(&format!("/v1/chats/{chat}/read")))
            .bearer_auth(&who.token)
            .json(&ReadRequest { seq })
            .send()
            .await
            .context(what)?;
        Ok(super::api::check(resp, what).await?.json().await?)
    }

    /// `DELETE /v1/chats/{chat}/messages/{seq}`.
    pub async fn delete_message(
        &self,
        who: &Account,
        chat: ChatId,
        seq: Seq,
    ) -> anyhow::Result<()> {
        let what = "DELETE /v1/chats/{chat_id}/messages/{seq}";
        let resp = self
            .http
            .delete(self.url(&format!("/v1/chats/{chat}/messages/{seq}")))
            .bearer_auth(&who.token)
            .send()
            .await
            .context(what)?;
        super::api::check(resp, what).await.map(drop)
    }
}
