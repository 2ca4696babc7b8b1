//! Prometheus metrics, hand-rolled with atomics (a handful of counters and one histogram family
//! do not justify a metrics dependency), rendered by `GET /metrics` in the text format.

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Upper bounds (seconds) of the request latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Every metric of one server.
#[derive(Default)]
pub(crate) struct Metrics {
    /// WebSocket connections open now.
    pub(crate) ws_connections: AtomicI64,
    /// WebSocket connections accepted since start.
    pub(crate) ws_connections_total: AtomicU64,
    /// Messages stored (not counting deduplicated retries).
    pub(crate) messages_sent: AtomicU64,
    /// Sends answered with an already stored message (retries).
    pub(crate) messages_deduplicated: AtomicU64,
    /// Frames queued to WebSocket connections by the hub (one per connection per event).
    pub(crate) deliveries: AtomicU64,
    /// Connections closed because their outbound queue was full.
    pub(crate) slow_consumer_disconnects: AtomicU64,
    /// Events received from the broker.
    pub(crate) broker_events: AtomicU64,
    /// Times the broker said events may have been lost.
    pub(crate) broker_resyncs: AtomicU64,
    /// Latency histograms keyed by (method, route). Routes come from the router's own patterns,
    /// so the key set is small and fixed; a std mutex is right because it is held only for a
    /// map lookup, never across an await.
    routes: Mutex<BTreeMap<(String, String), Arc<Histogram>>>,
}

/// One latency histogram plus response counts by status class.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    /// Responses by status class: 1xx..5xx at index 0..4.
    status: [AtomicU64; 5],
}

impl Metrics {
    /// Records one finished request.
    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let h = {
            let mut routes = match self.routes.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            routes
                .entry((method.to_owned(), route.to_owned()))
                .or_default()
                .clone()
        };
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.buckets[i].fetch_add(1, Relaxed);
            }
        }
        h.count.fetch_add(1, Relaxed);
        h.sum_micros.fetch_add((seconds * 1e6) as u64, Relaxed);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        h.status[class].fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let counters: [(&str, &str, u64); 7] = [
            (
                "chat_ws_connections_total",
                "WebSocket connections accepted.",
                self.ws_connections_total.load(Relaxed),
            ),
            (
                "chat_messages_sent_total",
                "Messages stored.",
                self.messages_sent.load(Relaxed),
            ),
            (
                "chat_messages_deduplicated_total",
                "Sends answered with the already stored message of the same client_msg_id.",
                self.messages_deduplicated.load(Relaxed),
            ),
            (
                "chat_deliveries_total",
                "Frames queued to WebSocket connections.",
                self.deliveries.load(Relaxed),
            ),
            (
                "chat_slow_consumer_disconnects_total",
                "WebSocket connections closed because their outbound queue was full.",
                self.slow_consumer_disconnects.load(Relaxed),
            ),
            (
                "chat_broker_events_total",
                "Events received from the broker.",
                self.broker_events.load(Relaxed),
            ),
            (
                "chat_broker_resyncs_total",
                "Times the broker reported that events may have been lost.",
                self.broker_resyncs.load(Relaxed),
            ),
        ];
        let _ = writeln!(
            out,
            "# HELP chat_ws_connections WebSocket connections open now.\n\
             # TYPE chat_ws_connections gauge\nchat_ws_connections {}",
            self.ws_connections.load(Relaxed)
        );
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let routes: Vec<_> = {
            let routes = match self.routes.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            routes.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        out.push_str(
            "# HELP chat_http_request_duration_seconds HTTP request latency by route.\n\
             # TYPE chat_http_request_duration_seconds histogram\n",
        );
        for ((method, route), h) in &routes {
            let labels = format!("method=\"{method}\",route=\"{}\"", escape(route));
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "chat_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {}",
                    h.buckets[i].load(Relaxed)
                );
            }
            let count = h.count.load(Relaxed);
            let _ = writeln!(
                out,
                "chat_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}\n\
                 chat_http_request_duration_seconds_sum{{{labels}}} {}\n\
                 chat_http_request_duration_seconds_count{{{labels}}} {count}",
                h.sum_micros.load(Relaxed) as f64 / 1e6
            );
        }
        out.push_str(
            "# HELP chat_http_responses_total HTTP responses by route and status class.\n\
             # TYPE chat_http_responses_total counter\n",
        );
        for ((method, route), h) in &routes {
            for (i, n) in h.status.iter().enumerate() {
                let n = n.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "chat_http_responses_total{{method=\"{method}\",route=\"{}\",status=\"{}xx\"}} {n}",
                        escape(route),
                        i + 1
                    );
                }
            }
        }
        out
    }
}

/// Escapes a label value for the text format.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Middleware recording each request's latency under its route pattern (never the raw path, so
/// ids in paths cannot blow up the label set).
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
        &route,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.slow_consumer_disconnects.fetch_add(2, Relaxed);
        m.observe("GET", "/v1/fetch", 200, 0.003);
        m.observe("GET", "/v1/fetch", 400, 2.0);
        let text = m.render();
        assert!(text.contains("chat_slow_consumer_disconnects_total 2\n"));
        assert!(text.contains(
            "chat_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/fetch\",le=\"0.005\"} 1\n"
        ));
        assert!(text.contains(
            "chat_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/fetch\",le=\"+Inf\"} 2\n"
        ));
        assert!(text.contains(
            "chat_http_responses_total{method=\"GET\",route=\"/v1/fetch\",status=\"4xx\"} 1\n"
        ));
    }
}
