//! [`Server`] (built from stores, a broker and a [`Config`]) and [`ServerHandle`]: binding,
//! serving, graceful shutdown and crash-like abort.

use crate::auth::Passwords;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::rate_limit::Guards;
use crate::state::AppState;
use crate::ws::connection::close_code;
use anyhow::Context as _;
use chat_core::{Broker, MessageStore, MetadataStore};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

/// A chat server: REST and WebSocket over the given stores and broker.
///
/// Build it with [`Server::new`], then either [`Server::start`] it on an address (tests,
/// embedding), [`Server::serve`] it on a listener until a shutdown signal (the binary), or take
/// its [`Server::router`] to mount or test without a socket. Clones share everything (one
/// hub, one set of metrics); a server (or any of its clones) is served once.
#[derive(Clone)]
pub struct Server {
    state: Arc<AppState>,
    /// The task consuming the broker's events, once started.
    hub_task: Arc<Mutex<Option<AbortHandle>>>,
}

impl Server {
    /// A server over these stores and broker. Nothing runs until it is served.
    pub fn new(
        metadata: Arc<dyn MetadataStore>,
        messages: Arc<dyn MessageStore>,
        broker: Arc<dyn Broker>,
        config: Config,
    ) -> Server {
        let metrics = Arc::new(Metrics::default());
        let state = AppState {
            hub: Arc::new(Hub::new(
                broker.clone(),
                metrics.clone(),
                metadata.clone(),
                messages.clone(),
                config.live_order_hold,
                config.ws_flush_delay,
                config.ws_flush_batch,
            )),
            guards: Guards::new(&config),
            passwords: Passwords::new(
                config.password_hashing,
                config.abuse.password_hashes_at_once,
                config.abuse.password_hash_queue,
            ),
            metadata,
            messages,
            broker,
            config,
            metrics,
            shutting_down: CancellationToken::new(),
            crashed: CancellationToken::new(),
            presence: std::sync::OnceLock::new(),
            typing: crate::ops::typing::Throttle::default(),
            own_markers: Arc::default(),
        };
        Server {
            state: Arc::new(state),
            hub_task: Arc::new(Mutex::new(None)),
        }
    }

    /// The HTTP router with every route, usable without a socket (e.g. with
    /// `tower::ServiceExt::oneshot`). Called inside a tokio runtime it also starts live event
    /// delivery, so WebSockets served through it receive events.
    pub fn router(&self) -> axum::Router {
        if tokio::runtime::Handle::try_current().is_ok() {
            if let Err(e) = self.start_hub() {
                tracing::error!(error = %e, "live event delivery did not start");
            }
        }
        crate::http::router(self.state.clone())
    }

    /// Binds `addr` (port 0 picks a free port) and serves in a background task until the
    /// returned handle shuts it down.
    pub async fn start(self, addr: SocketAddr) -> anyhow::Result<ServerHandle> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local_addr = listener.local_addr()?;
        let state = self.state.clone();
        let hub_task = self.hub_task.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(self.serve(listener, async move {
            // A dropped handle also stops the server.
            let _ = stopped.await;
        }));
        Ok(ServerHandle {
            local_addr,
            stop: Some(stop),
            task,
            state,
            hub_task,
        })
    }

    /// Serves on `listener` until `shutdown` completes, then shuts down gracefully: stops
    /// accepting, closes WebSockets with 1012 "server restarting", lets in-flight requests
    /// finish (bounded by `Config::shutdown_grace`) and flushes the message store.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.start_hub()?;
        let st = self.state.clone();
        let _hub = AbortOnDrop(self.hub_task.lock().ok().and_then(|g| g.clone()));
        let _sweeper = AbortOnDrop(Some(spawn_session_sweeper(st.clone()).abort_handle()));
        let router = self.router();
        if let Ok(addr) = listener.local_addr() {
            let tls = st.config.tls.is_some();
            tracing::info!(%addr, tls, node_id = %st.config.node_id, "chat server listening");
        }
        let serving = crate::accept::serve(
            listener,
            router,
            &st.config.abuse,
            st.config.tls.clone(),
            st.shutting_down.clone(),
            st.crashed.clone(),
        );
        tokio::pin!(serving);
        tokio::select! {
            () = &mut serving => {
                // The accept loop ends only once a shutdown was asked for.
                anyhow::bail!("the accept loop stopped unexpectedly");
            }
            _ = shutdown => {}
        }

        tracing::info!("graceful shutdown started");
        let deadline = Instant::now() + st.config.shutdown_grace;
        st.shutting_down.cancel();
        st.hub
            .close_all(close_code::RESTART, "server restarting, reconnect");
        if timeout_at(deadline, &mut serving).await.is_err() {
            tracing::warn!("in-flight requests did not finish within the grace period");
        }
        if timeout_at(deadline, st.hub.wait_empty()).await.is_err() {
            tracing::warn!("WebSocket connections did not close within the grace period");
        }
        // Senders' own read markers noted in the last moments (written every 50 ms otherwise).
        if timeout_at(deadline, st.own_markers.flush(&st.metadata))
            .await
            .is_err()
        {
            tracing::warn!("senders' read markers were not all written within the grace period");
        }
        st.messages
            .flush()
            .await
            .context("flushing the message store")?;
        tracing::info!("shutdown complete");
        Ok(())
    }

    /// The shared state, for in-crate harnesses.
    pub(crate) fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Starts the task that delivers broker events, once.
    fn start_hub(&self) -> anyhow::Result<()> {
        let mut slot = match self.hub_task.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if slot.is_none() {
            let events = self
                .state
                .broker
                .events()
                .context("subscribing to the broker's event stream")?;
            let hub = self.state.hub.clone();
            *slot = Some(tokio::spawn(hub.run(events)).abort_handle());
            let st = &self.state;
            st.presence.get_or_init(|| {
                let store = st.config.presence.clone().unwrap_or_else(|| {
                    Arc::new(crate::presence::LocalPresence::new())
                        as Arc<dyn crate::presence::PresenceStore>
                });
                crate::presence::Presence::start(
                    st.config.node_id.clone(),
                    store,
                    st.broker.clone(),
                    st.metadata.clone(),
                    st.config.presence_grace,
                )
            });
        }
        Ok(())
    }
}

/// Aborts a background task when the owner goes away (also when the owner is itself aborted).
struct AbortOnDrop(Option<AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// Deletes expired sessions now and then, so the table does not grow with abandoned logins.
fn spawn_session_sweeper(st: Arc<AppState>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let every = st
            .config
            .session_sweep_interval
            .max(std::time::Duration::from_secs(1));
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        loop {
            tick.tick().await;
            match st
                .metadata
                .delete_expired_sessions(chat_core::ids::now_millis())
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::debug!(n, "deleted expired sessions"),
                Err(e) => tracing::warn!(error = %e, "deleting expired sessions failed"),
            }
        }
    })
}

/// A running server started by [`Server::start`]. Dropping it shuts the server down
/// gracefully in the background.
pub struct ServerHandle {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    state: Arc<AppState>,
    hub_task: Arc<Mutex<Option<AbortHandle>>>,
}

impl ServerHandle {
    /// The address it listens on (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Graceful shutdown: stop accepting, close WebSockets with 1012 and a reason, drain
    /// in-flight requests (bounded by `Config::shutdown_grace`), flush the message store.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.context("server task failed")?
    }

    /// Drops everything at once, like a crash: no close frames, no draining, no flush.
    pub fn abort(mut self) {
        self.state.crashed.cancel();
        self.state.shutting_down.cancel();
        // WebSocket tasks are not watching `crashed` (polling a shared token on every wake-up
        // cost a contended lock per delivery); they are stopped directly and skip the close.
        self.state.hub.stop_all();
        self.task.abort();
        if let Ok(g) = self.hub_task.lock() {
            if let Some(h) = g.as_ref() {
                h.abort();
            }
        }
        // Dropping the sender would start a graceful shutdown of a task already aborted;
        // harmless, but forget it to make the intent plain.
        self.stop.take();
    }
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::LocalBroker;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn router_answers_without_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let store = chat_storage::sqlite::SqliteStore::open(dir.path().join("chat.db")).unwrap();
        let server = Server::new(
            Arc::new(store.clone()),
            Arc::new(store),
            Arc::new(LocalBroker::new()),
            Config {
                node_id: "oneshot".into(),
                ..Config::default()
            },
        );
        let router = server.router();
        let health = router
            .clone()
            .oneshot(Request::get("/v1/health").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        let missing = router
            .oneshot(
                Request::get("/v1/users/me")
                    .header("authorization", "Bearer nope")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        let body = axum::body::to_bytes(missing.into_body(), 4096)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "unauthenticated");
    }
}
