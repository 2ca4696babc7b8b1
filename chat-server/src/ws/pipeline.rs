//! The frames of one connection in flight: many client frames at once (up to
//! [`MAX_IN_FLIGHT`]), their replies in frame order, their effects submitted in frame order.
//! What each frame does is `frames`; this file only orders them.

use super::connection::{serialize, Connection, Push};
use super::frames::{apply, begin, check, Begun, Checked};
use crate::state::AppState;
use chat_core::protocol::ServerFrame;
use chat_core::UserId;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::StreamExt as _;
use std::net::IpAddr;
use std::task::{Context, Poll};

/// Sends one connection may have between reading their frame and queuing their reply. Bounds
/// the memory and store work one client can hold; past it the connection stops reading, so the
/// client's TCP window fills.
pub(crate) const MAX_IN_FLIGHT: usize = 32;

/// The frames of one connection in flight, oldest first. Replies leave in frame order, and
/// effects (appends) are submitted to the store in frame order.
///
/// Two stages, each a `FuturesOrdered` (which yields in push order): authorization checks run
/// concurrently in `checks`; a finished check moves, in frame order, to `applies`, and its
/// effect is submitted to the store at that moment ([`Pipeline::apply`]), so appends reach
/// the store in frame order. Whether the store then keeps that order depends on it (see
/// [`crate::Config::ordered_appends`]): when it does not, at most one effect is in flight.
pub(crate) struct Pipeline<'a> {
    pub(crate) checks: FuturesOrdered<BoxFuture<'a, Checked>>,
    pub(crate) applies: FuturesOrdered<BoxFuture<'a, Option<ServerFrame>>>,
    /// Several applies may be in flight at once (the store keeps call order).
    ordered: bool,
}

impl<'a> Pipeline<'a> {
    pub(crate) fn new(st: &AppState) -> Pipeline<'a> {
        Pipeline {
            checks: FuturesOrdered::new(),
            applies: FuturesOrdered::new(),
            ordered: st.config.ordered_appends,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.checks.len() + self.applies.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a finished check may move on to the effect stage now.
    pub(crate) fn may_apply(&self) -> bool {
        !self.checks.is_empty() && (self.ordered || self.applies.is_empty())
    }

    /// Queues one client text frame; its synchronous part (parse, limits) runs now.
    pub(crate) fn start(
        &mut self,
        st: &'a AppState,
        user: UserId,
        text: &str,
        addr: Option<IpAddr>,
    ) {
        let fut: BoxFuture<'a, Checked> = match begin(st, user, text, addr) {
            Begun::Reply(frame) => Box::pin(std::future::ready(Checked::Reply(frame))),
            Begun::Silent => Box::pin(std::future::ready(Checked::Silent)),
            Begun::Check(op) => Box::pin(check(st, op)),
        };
        self.checks.push_back(fut);
    }

    /// Moves a finished check to the append stage, submitting its append now: checks leave
    /// `checks` in frame order, so applies enter the store's queue in frame order.
    pub(crate) fn apply(&mut self, st: &'a AppState, checked: Checked) {
        // Exempt from tokio's cooperative budget: with the task's budget spent, the store's
        // queue would answer `Pending` before taking the append, and the append of a later
        // frame could get in first when the futures are polled again.
        let mut fut: BoxFuture<'a, Option<ServerFrame>> =
            Box::pin(tokio::task::unconstrained(apply(st, checked)));
        // The first poll, here and now, is when the append is submitted (into the store's
        // queue, or its FIFO wait list when the queue is full). The waker does not matter:
        // `FuturesOrdered` polls every pushed future again with its own.
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(reply) => self.applies.push_back(Box::pin(std::future::ready(reply))),
            Poll::Pending => self.applies.push_back(fut),
        }
    }

    /// Runs everything in flight to the end, queuing the replies.
    pub(crate) async fn drain(&mut self, st: &'a AppState, conn: &Connection) {
        while !self.is_empty() {
            tokio::select! {
                biased;
                Some(c) = self.checks.next(), if self.may_apply() => self.apply(st, c),
                Some(reply) = self.applies.next(), if !self.applies.is_empty() => {
                    if let Some(reply) = reply {
                        push(st, conn, &reply);
                    }
                }
            }
        }
    }
}

/// Queues a frame for this connection only.
pub(crate) fn push(st: &AppState, conn: &Connection, frame: &ServerFrame) {
    if let Some(bytes) = serialize(frame) {
        if conn.push(bytes, &st.metrics) == Push::SlowConsumer {
            tracing::debug!(conn = conn.id, "reply dropped: connection closing as slow");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::connection::Connection;
    use chat_core::{ChatId, TokenHash};
    use std::sync::Arc;

    /// A server over a fresh SQLite file with the send limits off, a user who owns two chats, and
    /// a chat the user is not in.
    async fn fixture(ordered: bool) -> (tempfile::TempDir, crate::Server, UserId, [ChatId; 3]) {
        use chat_core::ids::now_millis;
        use chat_core::{MetadataStore as _, NewChat, NewUser};
        let dir = tempfile::tempdir().unwrap();
        let store = chat_storage::sqlite::SqliteStore::open(dir.path().join("chat.db")).unwrap();
        let mut config = crate::Config {
            abuse: crate::AbuseLimits::unthrottled(),
            ordered_appends: ordered,
            ..crate::Config::default()
        };
        config.limits.send_rate_per_sec = 0;
        let server = crate::Server::new(
            Arc::new(store.clone()),
            Arc::new(store.clone()),
            Arc::new(crate::broker::LocalBroker::new()),
            config,
        );
        let mut users = Vec::new();
        for name in ["pipe", "other"] {
            let user = store
                .create_user(NewUser {
                    email: format!("{name}@example.com"),
                    display_name: name.into(),
                    pw_hash: "x".into(),
                    created_at: now_millis(),
                })
                .await
                .unwrap();
            users.push(user.user_id);
        }
        let mut chats = Vec::new();
        for owner in [users[0], users[0], users[1]] {
            let (chat, _) = store
                .create_chat(NewChat {
                    chat_name: "c".into(),
                    owner_id: owner,
                    member_ids: Vec::new(),
                    created_at: now_millis(),
                })
                .await
                .unwrap();
            chats.push(chat.chat_id);
        }
        (dir, server, users[0], [chats[0], chats[1], chats[2]])
    }

    /// Many frames in flight on one connection: replies come back in frame order (acks, pongs
    /// and errors mixed), and each chat's seqs follow the frame order, with the store keeping
    /// call order (SQLite) or not assumed to.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_frames_reply_and_append_in_frame_order() {
        for ordered in [true, false] {
            let (_dir, server, user, [a, b, foreign]) = fixture(ordered).await;
            let st = server.state();
            let conn = Connection::new(st.hub.next_id(), user, TokenHash([0; 32]), 4096);
            let rx = &conn;
            let mut pipeline = Pipeline::new(&st);
            let n = 300;
            let mut expected = Vec::new();
            for i in 0..n {
                let (text, want) = match i % 10 {
                    3 => (r#"{"type":"ping"}"#.to_owned(), ("pong", None)),
                    7 => (
                        format!(
                            r#"{{"type":"send","chat_id":{foreign},"msg_text":"x","client_msg_id":"m{i}"}}"#
                        ),
                        ("error", None),
                    ),
                    9 => ("{not json".to_owned(), ("error", None)),
                    k => {
                        let chat = if k % 2 == 0 { a } else { b };
                        (
                            format!(
                                r#"{{"type":"send","chat_id":{chat},"msg_text":"t{i}","client_msg_id":"m{i}"}}"#
                            ),
                            ("ack", Some(chat)),
                        )
                    }
                };
                pipeline.start(&st, user, &text, None);
                expected.push((i, want));
                // The connection's bound: past it, it waits for the oldest frame's reply.
                if pipeline.len() >= MAX_IN_FLIGHT {
                    tokio::select! {
                        biased;
                        Some(c) = pipeline.checks.next(), if pipeline.may_apply() => {
                            pipeline.apply(&st, c);
                        }
                        Some(r) = pipeline.applies.next(), if !pipeline.applies.is_empty() => {
                            if let Some(r) = r {
                                push(&st, &conn, &r);
                            }
                        }
                    }
                }
            }
            pipeline.drain(&st, &conn).await;
            let mut last_seq = std::collections::HashMap::new();
            for (i, (kind, chat)) in expected {
                let frame = rx.try_recv().expect("one reply per frame");
                let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
                assert_eq!(v["type"], kind, "frame {i} (ordered: {ordered}): {v}");
                if kind == "ack" {
                    assert_eq!(v["client_msg_id"], format!("m{i}"));
                    let chat = chat.unwrap();
                    assert_eq!(v["message"]["chat_id"], serde_json::json!(chat));
                    let seq = v["message"]["seq"].as_u64().unwrap();
                    let prev = last_seq.insert(chat, seq).unwrap_or(0);
                    assert_eq!(seq, prev + 1, "frame {i}: seq out of frame order");
                } else if i % 10 == 7 {
                    assert_eq!(v["code"], "not_a_member");
                    assert_eq!(v["client_msg_id"], format!("m{i}"));
                }
            }
            assert!(rx.try_recv().is_err(), "no extra replies");
        }
    }
}
