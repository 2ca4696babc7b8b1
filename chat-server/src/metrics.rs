//! Prometheus metrics for `GET /metrics`, on the `prometheus-client` crate (one registry per
//! server, so several servers in one process, as in the tests, keep their own numbers).
//!
//! Counters and gauges are single atomics, cheap enough for the per-delivery path. Latency
//! histograms: every HTTP request by route, and the three stages of a message's life: the store
//! append, send→ack (from the moment the send is read to its ack being ready), and the hub's
//! fan-out of one event to every local recipient.

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;

/// The content type of the exposition `GET /metrics` answers with.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the HTTP request latency buckets.
const HTTP_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Buckets of the message-path histograms: 25 µs doubling to about 1.6 s, since an append to
/// SQLite or a fan-out takes tens of microseconds and a Cassandra claim milliseconds.
fn path_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_025, 2.0, 17))
}

fn http_buckets() -> Histogram {
    Histogram::new(HTTP_BUCKETS)
}

/// A route pattern (never the raw path, so ids cannot blow up the label set) and its method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

/// A route with the status class of its responses (`2xx` … `5xx`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    method: &'static str,
    route: String,
    status: &'static str,
}

/// Every metric of one server.
pub(crate) struct Metrics {
    registry: Registry,
    /// WebSocket connections open now.
    pub(crate) ws_connections: Gauge,
    /// WebSocket connections accepted since start.
    pub(crate) ws_connections_total: Counter,
    /// Messages stored (not counting deduplicated retries).
    pub(crate) messages_sent: Counter,
    /// Sends answered with an already stored message (retries).
    pub(crate) messages_deduplicated: Counter,
    /// Edits, deletes and reactions that took a new revision.
    pub(crate) messages_changed: Counter,
    /// Frames queued to WebSocket connections by the hub (one per connection per event).
    pub(crate) deliveries: Counter,
    /// Socket flushes of queued frames by connection tasks: `deliveries` over this is the
    /// frames per socket write (raised under load by the flush delay, `ws::flush`).
    pub(crate) ws_writes: Counter,
    /// Connections closed because their outbound queue was full.
    pub(crate) slow_consumer_disconnects: Counter,
    /// Events received from the broker.
    pub(crate) broker_events: Counter,
    /// CPU time the hub's event loop spent handling events (its thread's CPU clock around each
    /// one): with `deliveries`, the hub's CPU per delivery, which says how many cores one hub
    /// per node can keep busy (docs/benchmarks.md, "The hub's CPU per delivery").
    pub(crate) hub_cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// CPU time the flush tick's task spent ending holds (`ws::flush`), the other per-node
    /// serial step of a paced fan-out.
    pub(crate) flush_tick_cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Times the broker said events may have been lost.
    pub(crate) broker_resyncs: Counter,
    /// Live messages held back for a missing predecessor (see `hub::order`).
    pub(crate) live_held: Counter,
    /// Live gaps filled from the store after the hold bound.
    pub(crate) live_gap_fills: Counter,
    /// Live messages dropped as already forwarded.
    pub(crate) live_duplicates: Counter,
    /// `MessageStore::append`, as the send path waits for it.
    pub(crate) store_append_seconds: Histogram,
    /// A send from being read (REST body or WebSocket frame) to its ack being ready.
    pub(crate) send_ack_seconds: Histogram,
    /// One event's fan-out: serialize once and queue to every local recipient.
    pub(crate) fanout_seconds: Histogram,
    http_latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    http_responses: Family<StatusLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let ws_connections = Gauge::default();
        registry.register(
            "chat_ws_connections",
            "WebSocket connections open now",
            ws_connections.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let ws_connections_total = counter(
            &mut registry,
            "chat_ws_connections_accepted",
            "WebSocket connections accepted",
        );
        let messages_sent = counter(&mut registry, "chat_messages_sent", "Messages stored");
        let messages_deduplicated = counter(
            &mut registry,
            "chat_messages_deduplicated",
            "Sends answered with the already stored message of the same client_msg_id",
        );
        let messages_changed = counter(
            &mut registry,
            "chat_messages_changed",
            "Edits, deletes and reactions that changed a stored message",
        );
        let deliveries = counter(
            &mut registry,
            "chat_deliveries",
            "Frames queued to WebSocket connections",
        );
        let ws_writes = counter(
            &mut registry,
            "chat_ws_writes",
            "Socket flushes of queued frames by WebSocket connection tasks",
        );
        let slow_consumer_disconnects = counter(
            &mut registry,
            "chat_slow_consumer_disconnects",
            "WebSocket connections closed because their outbound queue was full",
        );
        let hub_cpu_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "chat_hub_cpu_seconds",
            "CPU time of the hub's event loop handling events",
            hub_cpu_seconds.clone(),
        );
        let flush_tick_cpu_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "chat_flush_tick_cpu_seconds",
            "CPU time of the flush tick ending holds of fanned-out frames",
            flush_tick_cpu_seconds.clone(),
        );
        let broker_events = counter(
            &mut registry,
            "chat_broker_events",
            "Events received from the broker",
        );
        let broker_resyncs = counter(
            &mut registry,
            "chat_broker_resyncs",
            "Times the broker reported that events may have been lost",
        );
        let live_held = counter(
            &mut registry,
            "chat_live_held",
            "Live messages held back until their predecessor arrived",
        );
        let live_gap_fills = counter(
            &mut registry,
            "chat_live_gap_fills",
            "Live gaps filled from the store after the hold bound",
        );
        let live_duplicates = counter(
            &mut registry,
            "chat_live_duplicates",
            "Live messages dropped as already forwarded",
        );
        let histogram = |registry: &mut Registry, name: &str, help: &str| {
            let h = path_buckets();
            registry.register(name, help, h.clone());
            h
        };
        let store_append_seconds = histogram(
            &mut registry,
            "chat_store_append_seconds",
            "Message store appends on the send path",
        );
        let send_ack_seconds = histogram(
            &mut registry,
            "chat_send_ack_seconds",
            "Sends from being read to their ack being ready",
        );
        let fanout_seconds = histogram(
            &mut registry,
            "chat_fanout_seconds",
            "Fan-out of one event to every local recipient",
        );
        let http_latency: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(http_buckets);
        registry.register(
            "chat_http_request_duration_seconds",
            "HTTP request latency by route",
            http_latency.clone(),
        );
        let http_responses = Family::<StatusLabels, Counter>::default();
        registry.register(
            "chat_http_responses",
            "HTTP responses by route and status class",
            http_responses.clone(),
        );
        Metrics {
            registry,
            ws_connections,
            ws_connections_total,
            messages_sent,
            messages_deduplicated,
            messages_changed,
            deliveries,
            ws_writes,
            slow_consumer_disconnects,
            broker_events,
            hub_cpu_seconds,
            flush_tick_cpu_seconds,
            broker_resyncs,
            live_held,
            live_gap_fills,
            live_duplicates,
            store_append_seconds,
            send_ack_seconds,
            fanout_seconds,
            http_latency,
            http_responses,
        }
    }
}

impl Metrics {
    /// Records one finished request.
    fn observe(&self, method: &'static str, route: String, status: u16, seconds: f64) {
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let class = CLASSES[usize::from(status / 100).clamp(1, 5) - 1];
        self.http_responses
            .get_or_create(&StatusLabels {
                method,
                route: route.clone(),
                status: class,
            })
            .inc();
        self.http_latency
            .get_or_create(&RouteLabels { method, route })
            .observe(seconds);
    }

    /// The OpenMetrics text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Writing into a String cannot fail; if the encoder ever does, say so in the scrape.
            tracing::error!(error = %e, "could not encode the metrics");
        }
        out
    }
}

/// Seconds since `start`, for the histograms.
pub(crate) fn seconds_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// Middleware recording each request's latency under its route pattern.
pub(crate) async fn track(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let start = Instant::now();
    let response = next.run(request).await;
    metrics.observe(
        method,
        route,
        response.status().as_u16(),
        seconds_since(start),
    );
    response
}

/// This thread's CPU time so far (zero where the platform has no thread CPU clock).
pub(crate) fn thread_cpu() -> std::time::Duration {
    #[cfg(unix)]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        std::time::Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_nsec).unwrap_or(0),
        )
    }
    #[cfg(not(unix))]
    {
        std::time::Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.slow_consumer_disconnects.inc_by(2);
        m.ws_connections.inc();
        m.observe("GET", "/v1/fetch".into(), 200, 0.003);
        m.observe("GET", "/v1/fetch".into(), 400, 2.0);
        m.store_append_seconds.observe(0.000_030);
        let text = m.render();
        assert!(text.contains("# TYPE chat_slow_consumer_disconnects counter\n"));
        assert!(text.contains("chat_slow_consumer_disconnects_total 2\n"));
        assert!(text.contains("chat_ws_connections 1\n"));
        assert!(text.contains("chat_ws_connections_accepted_total 0\n"));
        assert!(text.contains(
            "chat_http_request_duration_seconds_bucket{le=\"0.005\",method=\"GET\",route=\"/v1/fetch\"} 1\n"
        ) || text.contains(
            "chat_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/fetch\",le=\"0.005\"} 1\n"
        ), "{text}");
        assert!(
            text.contains(
                "chat_http_responses_total{method=\"GET\",route=\"/v1/fetch\",status=\"4xx\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("chat_store_append_seconds_count 1\n"),
            "{text}"
        );
        assert!(
            text.contains("chat_store_append_seconds_bucket{le=\"5e-5\"} 1\n")
                || text.contains("chat_store_append_seconds_bucket{le=\"0.00005\"} 1\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
