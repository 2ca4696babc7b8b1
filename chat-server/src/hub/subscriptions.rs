//! The broker subscriptions of one node, kept in line with the hub's state by a task of their
//! own, so the hub never waits on the network.
//!
//! The hub hands this task the topics whose wanted state may have changed; the task compares
//! each with what the hub's [`Membership`] wants *now* and subscribes or unsubscribes. A broker
//! that hangs (a Redis stopped with SIGSTOP) holds up only this task: live delivery between
//! members on this node and the hub's event loop go on, and membership changes queue here
//! until the broker answers. A failed call is retried with backoff.
//!
//! Two callers wait for their topics: a new connection, which must be subscribed before it
//! reads the `last_seq`s of its `ready` frame (so everything after them is delivered live), and
//! nothing else. A chat subscribed because a member joined it by event asks for a catch-up once
//! subscribed: whatever was stored between the join and the subscription reaches the member.

use super::membership::Membership;
use super::Input;
use crate::lock;
use chat_core::{Broker, ChatId, Error, Result, Topic};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// First and longest delay before retrying topics whose broker call failed.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Longest a new connection waits for its subscriptions before its setup fails (it is closed
/// with 1011 and the client reconnects).
const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// What the hub asks of the task.
struct Request {
    topics: Vec<Topic>,
    /// Ask the hub to catch these chats up once subscribed.
    catch_up: bool,
    /// Told once the topics are in line (or failed).
    done: Option<oneshot::Sender<Result<()>>>,
}

/// The handle the hub keeps; see the module docs.
pub(crate) struct Subscriptions {
    requests: mpsc::UnboundedSender<Request>,
    /// The task's parts until it is started (on the first request, inside a runtime).
    pending: Mutex<Option<Task>>,
    /// Topics the broker is subscribed to now (the task's set, read by tests).
    #[cfg(test)]
    subscribed: Arc<Mutex<HashSet<Topic>>>,
}

impl Subscriptions {
    /// Subscriptions of `broker` following `state`; chats to catch up go to `catch_up`.
    pub(crate) fn new(
        broker: Arc<dyn Broker>,
        state: Arc<Mutex<Membership>>,
        catch_up: mpsc::UnboundedSender<Input>,
    ) -> Subscriptions {
        let (requests, rx) = mpsc::unbounded_channel();
        let subscribed = Arc::new(Mutex::new(HashSet::new()));
        Subscriptions {
            requests,
            pending: Mutex::new(Some(Task {
                broker,
                state,
                catch_up,
                requests: rx,
                #[cfg(test)]
                subscribed: subscribed.clone(),
                #[cfg(not(test))]
                subscribed,
                failed: HashSet::new(),
                to_catch_up: HashSet::new(),
            })),
            #[cfg(test)]
            subscribed,
        }
    }

    /// Hands over topics whose wanted state may have changed, without waiting.
    pub(crate) fn update(&self, topics: Vec<Topic>, catch_up: bool) {
        if topics.is_empty() {
            return;
        }
        self.send(Request {
            topics,
            catch_up,
            done: None,
        });
    }

    /// Hands over topics and waits until the broker is subscribed to those wanted.
    pub(crate) async fn update_and_wait(&self, topics: Vec<Topic>) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.send(Request {
            topics,
            catch_up: false,
            done: Some(done),
        });
        match tokio::time::timeout(WAIT_LIMIT, wait).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(stopped()),
            Err(elapsed) => Err(Error::unavailable(
                "the broker did not confirm the subscriptions in time",
                elapsed,
            )),
        }
    }

    /// The topics subscribed now.
    #[cfg(test)]
    pub(crate) fn subscribed(&self) -> HashSet<Topic> {
        lock(&self.subscribed).clone()
    }

    fn send(&self, request: Request) {
        if let Some(task) = lock(&self.pending).take() {
            tokio::spawn(task.run());
        }
        if let Err(mpsc::error::SendError(request)) = self.requests.send(request) {
            if let Some(done) = request.done {
                let _ = done.send(Err(stopped()));
            }
        }
    }
}

fn stopped() -> Error {
    Error::Unavailable {
        message: "the subscription task stopped".into(),
        source: None,
    }
}

/// The task: owns every broker `subscribe`/`unsubscribe` call of the node.
struct Task {
    broker: Arc<dyn Broker>,
    state: Arc<Mutex<Membership>>,
    catch_up: mpsc::UnboundedSender<Input>,
    requests: mpsc::UnboundedReceiver<Request>,
    subscribed: Arc<Mutex<HashSet<Topic>>>,
    /// Topics whose last call failed, retried with backoff.
    failed: HashSet<Topic>,
    /// Chats to catch up once they are subscribed.
    to_catch_up: HashSet<ChatId>,
}

impl Task {
    async fn run(mut self) {
        let mut delay = RETRY_MIN;
        loop {
            let request = if self.failed.is_empty() {
                delay = RETRY_MIN;
                match self.requests.recv().await {
                    Some(r) => Some(r),
                    None => return,
                }
            } else {
                tokio::select! {
                    r = self.requests.recv() => match r {
                        Some(r) => Some(r),
                        None => return,
                    },
                    _ = tokio::time::sleep(delay) => {
                        delay = (delay * 2).min(RETRY_MAX);
                        None
                    }
                }
            };
            let (topics, catch_up, done) = match request {
                Some(r) => (r.topics, r.catch_up, r.done),
                None => (self.failed.drain().collect(), false, None),
            };
            let mut result = Ok(());
            for topic in topics {
                if catch_up {
                    if let Topic::Chat(c) = topic {
                        self.to_catch_up.insert(c);
                    }
                }
                if let Err(e) = self.apply(topic).await {
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
            if let Some(done) = done {
                let _ = done.send(result);
            }
        }
    }

    /// Brings one topic in line with what the hub wants now.
    async fn apply(&mut self, topic: Topic) -> Result<()> {
        let want = lock(&self.state).wants(topic);
        let have = lock(&self.subscribed).contains(&topic);
        if want && !have {
            match self.broker.subscribe(topic).await {
                Ok(()) => {
                    lock(&self.subscribed).insert(topic);
                    self.failed.remove(&topic);
                    if let Topic::Chat(c) = topic {
                        if self.to_catch_up.remove(&c) {
                            let _ = self.catch_up.send(Input::CatchUp(c));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(?topic, error = %e, "broker subscribe failed; will retry");
                    self.failed.insert(topic);
                    return Err(e);
                }
            }
        } else if !want && have {
            match self.broker.unsubscribe(topic).await {
                Ok(()) => {
                    lock(&self.subscribed).remove(&topic);
                    self.failed.remove(&topic);
                }
                // Staying subscribed only costs events that find nobody to deliver to.
                Err(e) => {
                    tracing::warn!(?topic, error = %e, "broker unsubscribe failed; will retry");
                    self.failed.insert(topic);
                }
            }
        } else {
            self.failed.remove(&topic);
            // Already subscribed (another local member): no event was missed.
            if let Topic::Chat(c) = topic {
                self.to_catch_up.remove(&c);
            }
        }
        Ok(())
    }
}
