//! Brokers that carry events between server nodes. [`LocalBroker`] serves a single node
//! in-process; `redis::RedisBroker` (feature `redis`) connects the nodes of a cluster over Redis
//! pub/sub.

use async_trait::async_trait;
use chat_core::{Broker, BrokerEvent, BrokerStream, Error, Event, Result, Topic};
use std::collections::HashSet;
use std::sync::Mutex;
use tokio::sync::mpsc;

#[cfg(feature = "redis")]
pub mod redis;

/// Events buffered between publishers and the node's hub. The hub only does non-blocking work
/// per event, so this fills only under extreme bursts, and then publishers wait (backpressure)
/// instead of memory growing.
const CHANNEL_CAPACITY: usize = 16 * 1024;

/// An in-process [`Broker`] for a single node: `publish` hands the event straight to this node's
/// event stream when the topic is subscribed.
pub struct LocalBroker {
    /// Sending half; cloned per publish so the lock is never held across an await.
    tx: mpsc::Sender<BrokerEvent>,
    /// Receiving half, taken by the first `events()` call.
    rx: Mutex<Option<mpsc::Receiver<BrokerEvent>>>,
    /// Subscribed topics. A std mutex: held only for a set operation, never across an await.
    topics: Mutex<HashSet<Topic>>,
}

impl LocalBroker {
    /// A broker with no subscriptions.
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        LocalBroker {
            tx,
            rx: Mutex::new(Some(rx)),
            topics: Mutex::new(HashSet::new()),
        }
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, HashSet<Topic>> {
        // A panic while holding this lock cannot leave the set half-updated (single
        // insert/remove), so a poisoned lock is still usable.
        match self.topics.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl Default for LocalBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for LocalBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBroker")
            .field("topics", &self.topics().len())
            .finish()
    }
}

#[async_trait]
impl Broker for LocalBroker {
    async fn publish(&self, topic: Topic, event: &Event) -> Result<()> {
        if !self.topics().contains(&topic) {
            return Ok(());
        }
        // A closed channel means the node's event stream was dropped: nobody is left to deliver
        // to, which is not the publisher's failure.
        let _ = self
            .tx
            .send(BrokerEvent::Event {
                topic,
                event: event.clone(),
            })
            .await;
        Ok(())
    }

    async fn subscribe(&self, topic: Topic) -> Result<()> {
        self.topics().insert(topic);
        Ok(())
    }

    async fn unsubscribe(&self, topic: Topic) -> Result<()> {
        self.topics().remove(&topic);
        Ok(())
    }

    fn events(&self) -> Result<BrokerStream> {
        let rx = match self.rx.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let rx = rx.ok_or_else(|| Error::Internal {
            message: "LocalBroker::events() may be called only once".into(),
            source: None,
        })?;
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|e| (e, rx))
        })))
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::{ChatId, UserId};
    use futures::StreamExt;

    #[tokio::test]
    async fn delivers_only_subscribed_topics_in_order() {
        let b = LocalBroker::new();
        let mut events = b.events().unwrap();
        assert!(b.events().is_err(), "events() is single-use");
        let revoked = |n: i64| Event::SessionRevoked {
            user_id: UserId(n),
            token_hash: chat_core::TokenHash([0; 32]),
        };
        b.publish(Topic::User(UserId(1)), &revoked(0))
            .await
            .unwrap();
        b.subscribe(Topic::User(UserId(1))).await.unwrap();
        b.publish(Topic::Chat(ChatId(1)), &revoked(1))
            .await
            .unwrap();
        b.publish(Topic::User(UserId(1)), &revoked(2))
            .await
            .unwrap();
        b.publish(Topic::User(UserId(1)), &revoked(3))
            .await
            .unwrap();
        b.unsubscribe(Topic::User(UserId(1))).await.unwrap();
        b.publish(Topic::User(UserId(1)), &revoked(4))
            .await
            .unwrap();
        for n in [2, 3] {
            assert_eq!(
                events.next().await.unwrap(),
                BrokerEvent::Event {
                    topic: Topic::User(UserId(1)),
                    event: revoked(n)
                }
            );
        }
        drop(b);
        assert!(events.next().await.is_none());
    }
}
