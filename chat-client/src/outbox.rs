//! The send queue: messages the application handed to the SDK that the server has not
//! acknowledged yet, visible with their state so a UI can show a message at once (local echo)
//! and mark it when the ack comes.
//!
//! # How a queued message travels
//! [`Client::enqueue`] gives the message its `client_msg_id` and puts it at the end of its
//! chat's queue as [`SendState::Pending`]. One background task per chat with pending messages
//! sends them one at a time, in queue order: over the open WebSocket of a live
//! [`Subscription`](crate::Subscription) when there is one (the `send` frame, matched to its
//! `ack` by `client_msg_id`), otherwise (or when the socket breaks mid-send) over
//! `POST /v1/send` with the client's [`RetryPolicy`](crate::RetryPolicy). Every attempt carries
//! the same `client_msg_id`, which the server deduplicates on, so however the attempts end a
//! message is stored once. Chats are independent: many chats have a send in flight at once,
//! while within a chat message N+1 leaves only after N is acknowledged, which is what keeps a
//! chat's order even when one attempt fails and the next succeeds.
//!
//! When the server stores the message the entry leaves the queue as [`SendState::Sent`] with
//! the stored message. When the server refuses it (not a member, text too long) or every retry
//! fails, it stays in the queue as [`SendState::Failed`] (without holding up the messages
//! behind it) until the application calls [`Client::retry_send`] or [`Client::discard_send`].
//! [`Client::send`] uses the same queue and waits for the outcome; its failures are returned to
//! the caller instead of staying in the queue.
//!
//! # Surviving a restart
//! With [`ClientBuilder::state_dir`](crate::ClientBuilder::state_dir) the queue is written to
//! `outbox.json` in that directory on every change (a write to a temporary file and a rename,
//! so a crash leaves the old or the new file, never half of one) and read back when a client is
//! built; pending messages go out once the client has a session and a tokio runtime. One
//! directory belongs to one account.

use crate::client::Client;
use crate::error::{Error, Result};
use chat_core::protocol::SendRequest;
use chat_core::{ChatId, ErrorCode, Message, Millis, Seq};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::sync::{broadcast, oneshot};

/// Where a queued message stands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendState {
    /// Waiting for its turn, or on its way: show it, marked as not yet delivered.
    Pending,
    /// Stored by the server: this is the stored message (its `seq`, `sent_at`). The entry has
    /// left the queue.
    Sent(Box<Message>),
    /// The server refused it or every attempt failed; it waits for
    /// [`Client::retry_send`] or [`Client::discard_send`].
    Failed {
        /// The contract's code, when the server answered.
        code: Option<ErrorCode>,
        /// What went wrong, for the user.
        message: String,
    },
}

/// A message in the send queue (the application's local echo of it).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outgoing {
    /// The id every attempt carries; the stored message has the same `client_msg_id`, so a
    /// UI can replace its local echo with the stored message when it arrives on a stream.
    pub client_msg_id: String,
    /// The chat.
    pub chat_id: ChatId,
    /// The text.
    pub text: String,
    /// The message it answers, if any.
    pub reply_to_seq: Option<Seq>,
    /// The client's timestamp of the message (ms), taken when it was queued.
    pub timestamp: Millis,
    /// Where it stands.
    pub state: SendState,
}

/// What is written to `outbox.json` for one message (pending or failed).
#[derive(Serialize, Deserialize)]
struct Stored {
    client_msg_id: String,
    chat_id: ChatId,
    text: String,
    reply_to_seq: Option<Seq>,
    timestamp: Millis,
    /// `None` while pending; the error text once failed.
    failed: Option<String>,
}

/// Events kept for slow readers of [`Client::outbox_events`] before the oldest are dropped.
const EVENTS: usize = 1024;

/// The queue's state, behind one lock that is never held across an await.
#[derive(Default)]
struct State {
    /// Every pending or failed message by id, with the order it was queued in.
    entries: HashMap<String, (u64, Outgoing)>,
    /// Per chat, the ids of its pending messages in queue order.
    queues: HashMap<ChatId, VecDeque<String>>,
    /// Chats that have a task sending their queue.
    draining: HashSet<ChatId>,
    /// Callers of [`Client::send`] waiting for their message's outcome.
    waiters: HashMap<String, oneshot::Sender<Result<Message>>>,
    /// The next queue order number.
    next: u64,
}

/// The send queue of one [`Client`] (shared by its clones).
pub(crate) struct Outbox {
    state: Mutex<State>,
    events: broadcast::Sender<Outgoing>,
    /// `outbox.json`, when the application gave a directory.
    file: Option<PathBuf>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// An empty queue, or the one saved in `dir`.
    pub(crate) fn open(dir: Option<&Path>) -> Result<Outbox> {
        let (events, _) = broadcast::channel(EVENTS);
        let file = dir.map(|d| d.join("outbox.json"));
        let mut state = State::default();
        if let Some(path) = &file {
            for s in read_json::<Vec<Stored>>(path)?.unwrap_or_default() {
                let state_of = match s.failed {
                    None => SendState::Pending,
                    Some(message) => SendState::Failed {
                        code: None,
                        message,
                    },
                };
                let out = Outgoing {
                    client_msg_id: s.client_msg_id,
                    chat_id: s.chat_id,
                    text: s.text,
                    reply_to_seq: s.reply_to_seq,
                    timestamp: s.timestamp,
                    state: state_of,
                };
                state.insert(out);
            }
        }
        Ok(Outbox {
            state: Mutex::new(state),
            events,
            file,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere leaves the maps consistent (every change is one insert/remove).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a message; with `waiter`, its outcome goes there instead of staying queued.
    fn push(&self, out: Outgoing, waiter: Option<oneshot::Sender<Result<Message>>>) {
        let mut st = self.lock();
        if let Some(w) = waiter {
            st.waiters.insert(out.client_msg_id.clone(), w);
        }
        st.insert(out.clone());
        self.save(&st);
        drop(st);
        let _ = self.events.send(out);
    }

    /// The chats with pending messages and no task sending them; marks them as being sent.
    fn claim_idle_chats(&self) -> Vec<ChatId> {
        let mut st = self.lock();
        let idle: Vec<ChatId> = st
            .queues
            .iter()
            .filter(|(c, q)| !q.is_empty() && !st.draining.contains(c))
            .map(|(c, _)| *c)
            .collect();
        st.draining.extend(idle.iter().copied());
        idle
    }

    /// The next message of the chat to send, or `None` (and the chat is no longer being sent)
    /// when its queue is empty.
    fn next(&self, chat_id: ChatId) -> Option<Outgoing> {
        let mut st = self.lock();
        let head = st.queues.get(&chat_id).and_then(|q| q.front().cloned());
        let found = head.and_then(|id| st.entries.get(&id).map(|(_, o)| o.clone()));
        if found.is_none() {
            st.queues.remove(&chat_id);
            st.draining.remove(&chat_id);
        }
        found
    }

    /// Records the outcome of sending the chat's head message.
    fn finish(&self, out: &Outgoing, result: Result<Message>) {
        let mut st = self.lock();
        if let Some(q) = st.queues.get_mut(&out.chat_id) {
            if q.front() == Some(&out.client_msg_id) {
                q.pop_front();
            }
        }
        let waiter = st.waiters.remove(&out.client_msg_id);
        let event = match (&result, waiter.is_some()) {
            (Ok(m), _) => {
                st.entries.remove(&out.client_msg_id);
                Some(SendState::Sent(Box::new(m.clone())))
            }
            // A waiting caller gets the error itself; nothing stays queued.
            (Err(_), true) => {
                st.entries.remove(&out.client_msg_id);
                None
            }
            (Err(e), false) => {
                let failed = SendState::Failed {
                    code: e.code().cloned(),
                    message: e.to_string(),
                };
                if let Some((_, o)) = st.entries.get_mut(&out.client_msg_id) {
                    o.state = failed.clone();
                }
                Some(failed)
            }
        };
        self.save(&st);
        drop(st);
        if let Some(w) = waiter {
            let _ = w.send(result);
        }
        if let Some(state) = event {
            let _ = self.events.send(Outgoing {
                state,
                ..out.clone()
            });
        }
    }

    /// Pending and failed messages, oldest first.
    fn list(&self) -> Vec<Outgoing> {
        self.lock().ordered().into_iter().cloned().collect()
    }

    /// Puts a failed message back at the end of its chat's queue.
    fn retry(&self, client_msg_id: &str) -> bool {
        let mut st = self.lock();
        let Some((_, o)) = st.entries.get_mut(client_msg_id) else {
            return false;
        };
        if o.state == SendState::Pending {
            return false;
        }
        o.state = SendState::Pending;
        let out = o.clone();
        st.queues
            .entry(out.chat_id)
            .or_default()
            .push_back(out.client_msg_id.clone());
        self.save(&st);
        drop(st);
        let _ = self.events.send(out);
        true
    }

    /// Removes a failed message for good.
    fn discard(&self, client_msg_id: &str) -> bool {
        let mut st = self.lock();
        let failed = st
            .entries
            .get(client_msg_id)
            .is_some_and(|(_, o)| o.state != SendState::Pending);
        if failed {
            st.entries.remove(client_msg_id);
            self.save(&st);
        }
        failed
    }

    /// Writes the queue to its file, if it has one. Failures are logged, not fatal: the queue
    /// in memory is still right, and the next change writes again.
    fn save(&self, st: &State) {
        let Some(path) = &self.file else { return };
        let stored: Vec<Stored> = st
            .ordered()
            .into_iter()
            .map(|o| Stored {
                client_msg_id: o.client_msg_id.clone(),
                chat_id: o.chat_id,
                text: o.text.clone(),
                reply_to_seq: o.reply_to_seq,
                timestamp: o.timestamp,
                failed: match &o.state {
                    SendState::Failed { message, .. } => Some(message.clone()),
                    _ => None,
                },
            })
            .collect();
        if let Err(e) = write_json(path, &stored) {
            tracing::warn!(error = %e, path = %path.display(), "could not save the send queue");
        }
    }
}

impl State {
    /// Pending and failed messages in the order they were queued.
    fn ordered(&self) -> Vec<&Outgoing> {
        let mut all: Vec<&(u64, Outgoing)> = self.entries.values().collect();
        all.sort_by_key(|(n, _)| *n);
        all.into_iter().map(|(_, o)| o).collect()
    }

    fn insert(&mut self, out: Outgoing) {
        let n = self.next;
        self.next += 1;
        if out.state == SendState::Pending {
            self.queues
                .entry(out.chat_id)
                .or_default()
                .push_back(out.client_msg_id.clone());
        }
        self.entries.insert(out.client_msg_id.clone(), (n, out));
    }
}

/// Reads a JSON file; `None` when it does not exist.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::State {
                path: path.to_path_buf(),
                message: format!("not a file this SDK wrote: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

/// Writes a JSON file atomically: a temporary file in the same directory, then a rename.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl Client {
    /// Queues a message for sending and returns at once with its local echo (state
    /// [`SendState::Pending`]); follow it with [`Client::outbox_events`]. See the
    /// [`outbox`](crate::outbox) module for how it travels. Without a session the message
    /// waits in the queue until [`Client::login`]. Needs a tokio runtime.
    #[tracing::instrument(level = "debug", skip(self, text, options), fields(chat_id = %chat_id))]
    pub fn enqueue(
        &self,
        chat_id: ChatId,
        text: &str,
        options: crate::SendOptions,
    ) -> Result<Outgoing> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let out = outgoing(chat_id, text, options);
        self.outbox().push(out.clone(), None);
        self.start_sending(&runtime);
        Ok(out)
    }

    /// Pending and failed messages of the send queue, oldest first.
    pub fn outbox_messages(&self) -> Vec<Outgoing> {
        self.outbox().list()
    }

    /// Every change of state in the send queue (queued, sent, failed, retried), from now on.
    /// A receiver that falls more than 1,024 events behind loses the oldest ones
    /// ([`broadcast::error::RecvError::Lagged`]); [`Client::outbox_messages`] then says where
    /// everything stands.
    pub fn outbox_events(&self) -> broadcast::Receiver<Outgoing> {
        self.outbox().events.subscribe()
    }

    /// Sends a failed message again (at the end of its chat's queue, with the same
    /// `client_msg_id`). `false` when no failed message has that id. Needs a tokio runtime.
    pub fn retry_send(&self, client_msg_id: &str) -> Result<bool> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let found = self.outbox().retry(client_msg_id);
        self.start_sending(&runtime);
        Ok(found)
    }

    /// Drops a failed message from the queue. `false` when no failed message has that id.
    pub fn discard_send(&self, client_msg_id: &str) -> bool {
        self.outbox().discard(client_msg_id)
    }

    /// Queues a message and waits for the server's ack; the queue's path for
    /// [`Client::send_with`].
    pub(crate) async fn send_queued(
        &self,
        chat_id: ChatId,
        text: &str,
        options: crate::SendOptions,
    ) -> Result<Message> {
        if self.token().is_none() {
            return Err(Error::NotLoggedIn);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (tx, rx) = oneshot::channel();
        self.outbox()
            .push(outgoing(chat_id, text, options), Some(tx));
        self.start_sending(&runtime);
        rx.await
            .map_err(|_| Error::Protocol("the send queue dropped a message".into()))?
    }

    /// Starts a sending task for every chat with pending messages and none running. Does
    /// nothing without a session (login starts them).
    pub(crate) fn start_sending(&self, runtime: &tokio::runtime::Handle) {
        if self.token().is_none() {
            return;
        }
        for chat_id in self.outbox().claim_idle_chats() {
            let client = self.clone();
            runtime.spawn(async move { client.drain(chat_id).await });
        }
    }

    /// Sends one chat's queue, one message at a time, until it is empty.
    async fn drain(self, chat_id: ChatId) {
        while let Some(out) = self.outbox().next(chat_id) {
            let request = SendRequest {
                user_id: None,
                chat_id,
                msg_text: out.text.clone(),
                timestamp: Some(out.timestamp),
                client_msg_id: Some(out.client_msg_id.clone()),
                reply_to_seq: out.reply_to_seq,
            };
            let result = self.deliver(&request).await.and_then(|m| {
                if m.chat_id == chat_id {
                    Ok(m)
                } else {
                    Err(Error::Protocol(format!(
                        "sent to chat {chat_id}, the answer is for chat {}",
                        m.chat_id
                    )))
                }
            });
            self.outbox().finish(&out, result);
        }
    }

    /// One message to the server: over the live WebSocket if there is one, else (or when that
    /// attempt is lost) over REST with retries. The same `client_msg_id` throughout.
    async fn deliver(&self, request: &SendRequest) -> Result<Message> {
        if let Some(link) = self.ws_link() {
            match link.send(request, self.request_timeout()).await {
                Ok(m) => return Ok(m),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "WebSocket send failed; sending over REST");
                }
            }
        }
        self.post_send(request).await
    }
}

/// A new pending message with its `client_msg_id` (given or generated).
fn outgoing(chat_id: ChatId, text: &str, options: crate::SendOptions) -> Outgoing {
    Outgoing {
        client_msg_id: options
            .client_msg_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        chat_id,
        text: text.to_owned(),
        reply_to_seq: options.reply_to_seq,
        timestamp: options.timestamp.unwrap_or_else(chat_core::ids::now_millis),
        state: SendState::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: &str, chat: i64) -> Outgoing {
        Outgoing {
            client_msg_id: id.into(),
            chat_id: ChatId(chat),
            text: format!("text {id}"),
            reply_to_seq: None,
            timestamp: 1,
            state: SendState::Pending,
        }
    }

    #[test]
    fn queue_order_failures_and_retries_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Outbox::open(Some(dir.path())).expect("open");
        outbox.push(pending("a", 1), None);
        outbox.push(pending("b", 1), None);
        outbox.push(pending("c", 2), None);
        let mut chats = outbox.claim_idle_chats();
        chats.sort();
        assert_eq!(chats, vec![ChatId(1), ChatId(2)]);
        assert!(outbox.claim_idle_chats().is_empty(), "claimed once");

        let a = outbox.next(ChatId(1)).expect("head of chat 1");
        assert_eq!(a.client_msg_id, "a");
        outbox.finish(
            &a,
            Err(Error::Api {
                status: 403,
                code: ErrorCode::Forbidden,
                message: "not a member".into(),
                retry_after: None,
            }),
        );
        let b = outbox
            .next(ChatId(1))
            .expect("a failure does not hold up the next");
        assert_eq!(b.client_msg_id, "b");

        // Reopened: b and c pending in order, a failed.
        let again = Outbox::open(Some(dir.path())).expect("reopen");
        let list = again.list();
        let ids: Vec<&str> = list.iter().map(|o| o.client_msg_id.as_str()).collect();
        assert_eq!(ids, vec!["a", "b", "c"]);
        assert!(matches!(list[0].state, SendState::Failed { .. }));
        assert_eq!(list[1].state, SendState::Pending);
        assert!(again.retry("a"));
        assert!(!again.retry("a"), "already pending");
        let mut chats = again.claim_idle_chats();
        chats.sort();
        assert_eq!(chats, vec![ChatId(1), ChatId(2)]);
        assert_eq!(
            again.next(ChatId(1)).map(|o| o.client_msg_id),
            Some("b".into())
        );
        assert!(!again.discard("b"), "only failed messages are discarded");
    }

    #[test]
    fn a_file_that_is_not_a_queue_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("outbox.json"), b"{not json").expect("write");
        let err = Outbox::open(Some(dir.path())).expect_err("garbage");
        assert!(err.to_string().contains("outbox.json"), "{err}");
    }
}
