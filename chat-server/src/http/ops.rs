//! Operations endpoints: `GET /v1/health` and `GET /metrics`.

use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::future::Future;
use std::sync::Arc;

/// `GET /v1/health`: 200 when every backend answers, else 503 naming the part that is down
/// (and 503 `draining` once a graceful shutdown has begun, so balancers stop choosing the node).
pub(crate) async fn health(State(st): State<Arc<AppState>>) -> Response {
    let t = st.config.health_timeout;
    let (metadata, messages, broker) = tokio::join!(
        check(t, st.metadata.health()),
        check(t, st.messages.health()),
        check(t, st.broker.health()),
    );
    let extra = futures::future::join_all(
        st.config
            .health_checks
            .iter()
            .map(|(name, c)| async move { (name.clone(), check(t, c.check()).await) }),
    )
    .await;
    let draining = st.shutting_down.is_cancelled();
    let ok = metadata == "ok"
        && messages == "ok"
        && broker == "ok"
        && extra.iter().all(|(_, s)| *s == "ok")
        && !draining;
    let mut body = json!({
        "status": if draining { "draining" } else if ok { "ok" } else { "unavailable" },
        "node_id": st.config.node_id,
        "storage": {"metadata": metadata, "messages": messages},
        "broker": broker,
    });
    // Extra dependencies (the cache) sit beside `broker`, under their own names.
    if let Some(obj) = body.as_object_mut() {
        for (name, status) in extra {
            obj.entry(name).or_insert_with(|| status.into());
        }
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn check(
    timeout: std::time::Duration,
    f: impl Future<Output = chat_core::Result<()>>,
) -> &'static str {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(())) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check failed");
            "unavailable"
        }
        Err(_) => "timeout",
    }
}

/// `GET /metrics` in the Prometheus text format.
pub(crate) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        st.metrics.render(),
    )
        .into_response()
}
