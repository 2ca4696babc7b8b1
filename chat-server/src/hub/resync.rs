//! Resync: catching this node's connections up from the store when the broker may have lost
//! events (a Redis restart, a subscriber reconnect, a failed publish anywhere in the cluster).
//!
//! The broker is a wake-up path, not the record. For every chat with a local member the hub
//! keeps the highest `seq` it has forwarded (starting from the store's `last_seq` when the chat
//! got its first local member here). A resync runs in a task of its own, never in the event
//! loop, so live delivery goes on while it reads the store:
//! 1. it re-reads the chats of every locally connected user (16 at a time), so membership
//!    changes whose events were lost take effect before it delivers anything (a removed member
//!    gets nothing more from it, an added one gets the chat); events that arrive meanwhile are
//!    replayed on top of each read (see `membership`);
//! 2. it reads `last_seq` of every local chat (one batched call) and catches up, each chat on
//!    its own (16 at a time), those where the store is ahead: the messages after the highest
//!    forwarded `seq` (one page of 500) plus the newest one, fanned out as ordinary `message`
//!    frames.
//!
//! So every client ends with every message, even if nothing is sent after an outage: clients
//! drop duplicates by `seq`, and a client that sees a `seq` beyond a hole fetches the hole itself
//! (which is also why one page plus the newest message suffices after a long outage). A resync
//! that fails (a store is down) or times out is retried with backoff until it succeeds; one
//! asked for while another runs runs once more after it.

use super::Hub;
use chat_core::{ChatId, Error, FetchQuery, Result, Seq};
use futures::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Messages fetched per chat in one catch-up (the contract's page maximum); beyond it the
/// newest message is sent too, and clients fetch the hole in between themselves.
pub(crate) const RESYNC_PAGE: u32 = 500;
/// Store reads running at once during a resync.
const RESYNC_PARALLEL: usize = 16;
/// Longest one resync attempt may take before it is abandoned and retried.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// First and longest delay before retrying a resync that failed (a store was down).
const RESYNC_RETRY_MIN: Duration = Duration::from_millis(200);
const RESYNC_RETRY_MAX: Duration = Duration::from_secs(5);

/// Whether a resync task runs, and whether another resync was asked for meanwhile.
#[derive(Default)]
pub(crate) struct ResyncState {
    running: AtomicBool,
    again: AtomicBool,
}

impl Hub {
    /// Starts a resync in the background, or has the running one go round once more.
    pub(crate) fn request_resync(self: &Arc<Self>) {
        self.metrics.broker_resyncs.inc();
        self.resync.again.store(true, Ordering::SeqCst);
        if self.resync.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move {
            let mut delay = RESYNC_RETRY_MIN;
            loop {
                hub.resync.again.store(false, Ordering::SeqCst);
                tracing::info!("broker resync: re-reading memberships and catching up");
                let result = match tokio::time::timeout(RESYNC_TIMEOUT, hub.resync()).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Unavailable {
                        message: "resync timed out".into(),
                        source: None,
                    }),
                };
                match result {
                    Ok(()) => delay = RESYNC_RETRY_MIN,
                    Err(e) => {
                        tracing::warn!(error = %e, "broker resync failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(RESYNC_RETRY_MAX);
                        hub.resync.again.store(true, Ordering::SeqCst);
                    }
                }
                if hub.resync.again.load(Ordering::SeqCst) {
                    continue;
                }
                hub.resync.running.store(false, Ordering::SeqCst);
                // Asked for between the check above and clearing `running`: take it.
                if !hub.resync.again.load(Ordering::SeqCst)
                    || hub.resync.running.swap(true, Ordering::SeqCst)
                {
                    return;
                }
            }
        });
    }

    /// Whether a resync task is running (tests wait for it to end).
    #[cfg(test)]
    pub(crate) fn resync_running(&self) -> bool {
        self.resync.running.load(Ordering::SeqCst)
    }

    /// One resync attempt; see the module docs.
    pub(crate) async fn resync(&self) -> Result<()> {
        self.resync_memberships().await?;
        let tracked = self.state().tracked_chats();
        let ids: Vec<ChatId> = tracked.iter().map(|(c, _)| *c).collect();
        let last = self.messages.last_seqs(&ids).await?;
        let mut behind = Vec::new();
        for ((chat, from), last) in tracked.into_iter().zip(last) {
            match from {
                // Its first member is still being set up; it is tracked from now on.
                None => self.state().track(chat, last),
                Some(from) if last > from => behind.push((chat, from, last)),
                Some(_) => {}
            }
        }
        let failures: Vec<Error> = futures::stream::iter(behind)
            .map(|(chat, from, last)| self.catch_up_from(chat, from, last))
            .buffer_unordered(RESYNC_PARALLEL)
            .filter_map(|r| async move { r.err() })
            .collect()
            .await;
        match failures.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Step 1: the chats of every local user, read again.
    async fn resync_memberships(&self) -> Result<()> {
        let reads = self.state().begin_resync();
        let results: Vec<_> = futures::stream::iter(reads)
            .map(|read| async move {
                let chats = self.metadata.chats_of_user(read.user).await;
                (
                    read,
                    chats.map(|l| l.into_iter().map(|(c, _)| c.chat_id).collect::<Vec<_>>()),
                )
            })
            .buffer_unordered(RESYNC_PARALLEL)
            .collect()
            .await;
        let mut topics = Vec::new();
        let mut failure = None;
        {
            let mut st = self.state();
            for (read, chats) in results {
                match chats {
                    Ok(chats) => topics.extend(st.resync_read_done(read, Some(&chats))),
                    Err(e) => {
                        st.resync_read_done(read, None);
                        failure = Some(e);
                    }
                }
            }
        }
        self.subscriptions.update(topics, true);
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Catches one chat up in the background (after it was subscribed late).
    pub(crate) fn spawn_catch_up(self: &Arc<Self>, chat: ChatId) {
        let hub = self.clone();
        tokio::spawn(async move {
            let result = async {
                let Some(from) = hub.state().forwarded(chat) else {
                    return Ok(());
                };
                let last = hub.messages.last_seq(chat).await?;
                if last > from {
                    hub.catch_up_from(chat, from, last).await?;
                }
                Ok::<(), Error>(())
            }
            .await;
            if let Err(e) = result {
                // The broker's own resync after an outage covers what this could not.
                tracing::warn!(%chat, error = %e, "catching a chat up failed");
            }
        });
    }

    /// Delivers what the store has after `from` (a page and the newest, see the module docs).
    async fn catch_up_from(&self, chat: ChatId, from: Seq, last: Seq) -> Result<()> {
        let mut missed = self
            .messages
            .fetch(
                chat,
                FetchQuery::After {
                    after: from,
                    limit: RESYNC_PAGE,
                },
            )
            .await?;
        if missed.last().is_some_and(|m| m.seq < last) {
            // A long outage: the newest message shows clients the hole to fetch.
            let newest = self
                .messages
                .fetch(chat, FetchQuery::Latest { limit: 1 })
                .await?;
            missed.extend(newest);
        }
        tracing::debug!(%chat, n = missed.len(), "catch-up delivers missed messages");
        for m in missed {
            self.deliver_message(chat, m);
        }
        Ok(())
    }
}
