//! Typing (`{"type": "typing", "chat_id"}` on the WebSocket): forwarded to the chat's other
//! members on every node through the broker, at most once per user and chat a second, never
//! stored.

use crate::state::AppState;
use chat_core::ids::now_millis;
use chat_core::{ChatId, Event, Topic, UserId};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a typing frame says the person types: `until` = now + this.
pub(crate) const TYPING_FOR_MS: i64 = 5_000;
/// At most one typing frame per user and chat is forwarded in this long.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Entries kept before old ones are swept.
const SWEEP_AT: usize = 65_536;

/// When each (user, chat) last had a typing frame forwarded by this node.
#[derive(Default)]
pub(crate) struct Throttle {
    last: Mutex<HashMap<(UserId, ChatId), Instant>>,
}

impl Throttle {
    /// Whether a typing frame of `user` in `chat` may be forwarded now; takes the slot if so.
    pub(crate) fn admit(&self, user: UserId, chat: ChatId) -> bool {
        let now = Instant::now();
        let mut last = crate::lock(&self.last);
        if last.len() >= SWEEP_AT {
            last.retain(|_, t| now.duration_since(*t) < MIN_INTERVAL);
        }
        match last.get(&(user, chat)) {
            Some(t) if now.duration_since(*t) < MIN_INTERVAL => false,
            _ => {
                last.insert((user, chat), now);
                true
            }
        }
    }
}

/// Forwards one typing frame of a member (the caller took the throttle and checked the
/// membership).
pub(crate) async fn publish(st: &AppState, user: UserId, chat_id: ChatId) {
    let event = Event::Typing {
        chat_id,
        user_id: user,
        until: now_millis() + TYPING_FOR_MS,
    };
    super::publish(st, Topic::Chat(chat_id), event).await;
}
