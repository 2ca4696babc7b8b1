//! [`AppState`]: what every handler and connection shares.

use crate::auth::Passwords;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::rate_limit::Guards;
use chat_core::{Broker, MessageStore, MetadataStore};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Shared by every request handler and WebSocket connection of one server.
pub(crate) struct AppState {
    /// Users, sessions, chats, memberships.
    pub(crate) metadata: Arc<dyn MetadataStore>,
    /// The message table.
    pub(crate) messages: Arc<dyn MessageStore>,
    /// Carries events to every node, this one included.
    pub(crate) broker: Arc<dyn Broker>,
    /// Settings.
    pub(crate) config: Config,
    /// This node's live connections.
    pub(crate) hub: Arc<Hub>,
    /// Counters for `GET /metrics`.
    pub(crate) metrics: Arc<Metrics>,
    /// Rate limits (sends, logins, registrations) and the WebSocket cap per user.
    pub(crate) guards: Guards,
    /// argon2id with the configured cost.
    pub(crate) passwords: Passwords,
    /// Cancelled when a graceful shutdown starts: new WebSockets are refused.
    pub(crate) shutting_down: CancellationToken,
    /// Cancelled by `ServerHandle::abort`: connections drop at once, like a crash.
    pub(crate) crashed: CancellationToken,
    /// Presence, started with live delivery (it needs the runtime).
    pub(crate) presence: std::sync::OnceLock<crate::presence::Presence>,
    /// Typing frames forwarded lately, to forward at most one per user and chat a second.
    pub(crate) typing: crate::ops::typing::Throttle,
    /// Senders' own read-marker moves on their way to the store.
    pub(crate) own_markers: Arc<crate::ops::read::OwnMarkers>,
}
