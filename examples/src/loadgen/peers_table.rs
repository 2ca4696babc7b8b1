//! The side-by-side table: the JSON reports of `peer-publish` and `peer-idle` runs (as
//! `--out` writes them) turned into one markdown table, a row per scenario and server with
//! every run's figures, and a row of ratios chat-server / Centrifugo (of the runs' means).

use serde_json::Value;
use std::fmt::Write as _;

/// One run's figures, as the table shows them.
#[derive(Clone, Debug, Default)]
struct Run {
    delivered_per_sec: Option<f64>,
    deliveries: Option<(u64, u64)>,
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    cpu_secs: Option<f64>,
    per_cpu_sec: Option<f64>,
    rss_per_conn: Option<f64>,
}

/// A scenario's runs on each server, in the order the reports came.
struct Scenario {
    label: String,
    chat_server: Vec<Run>,
    centrifugo: Vec<Run>,
}

/// The markdown table of `reports` (parsed report files; others are skipped).
pub fn table(reports: &[Value]) -> String {
    let mut scenarios: Vec<Scenario> = Vec::new();
    for report in reports {
        let Some((label, peer, run)) = read(report) else {
            continue;
        };
        let i = match scenarios.iter().position(|s| s.label == label) {
            Some(i) => i,
            None => {
                scenarios.push(Scenario {
                    label,
                    chat_server: Vec::new(),
                    centrifugo: Vec::new(),
                });
                scenarios.len() - 1
            }
        };
        match peer.as_str() {
            "chat-server" => scenarios[i].chat_server.push(run),
            _ => scenarios[i].centrifugo.push(run),
        }
    }

    let mut out = String::new();
    out.push_str(
        "| scenario | server | delivered/s | delivered | send→deliver p50 / p99 / p99.9 (ms) | server CPU-s | deliveries per server CPU-s | server RSS per connection |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for s in &scenarios {
        for (name, runs) in [
            ("chat-server", &s.chat_server),
            ("Centrifugo", &s.centrifugo),
        ] {
            let _ = writeln!(
                out,
                "| {} | {name} | {} | {} | {} | {} | {} | {} |",
                s.label,
                join(runs, |r| r.delivered_per_sec.map(thousands)),
                join(runs, |r| r.deliveries.map(|(d, e)| if d == e {
                    "all".to_owned()
                } else {
                    format!("{} of {}", thousands(d as f64), thousands(e as f64))
                })),
                join_with("; ", runs, |r| match (r.p50, r.p99, r.p999) {
                    (Some(a), Some(b), Some(c)) => Some(format!("{a:.1} / {b:.1} / {c:.1}")),
                    _ => None,
                }),
                join(runs, |r| r.cpu_secs.map(|c| format!("{c:.2}"))),
                join(runs, |r| r.per_cpu_sec.map(thousands)),
                join(runs, |r| r.rss_per_conn.map(bytes)),
            );
        }
        let ratio = |f: fn(&Run) -> Option<f64>| -> String {
            match (mean(&s.chat_server, f), mean(&s.centrifugo, f)) {
                (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
                _ => "–".to_owned(),
            }
        };
        let _ = writeln!(
            out,
            "| {} | **ratio chat-server / Centrifugo** | {} | | {} | {} | **{}** | **{}** |",
            s.label,
            ratio(|r| r.delivered_per_sec),
            match ratio(|r| r.p99).as_str() {
                "–" => "–".to_owned(),
                p99 => format!("p99 {p99}"),
            },
            ratio(|r| r.cpu_secs),
            ratio(|r| r.per_cpu_sec),
            ratio(|r| r.rss_per_conn),
        );
    }
    out
}

/// The scenario label, the server and the figures of one report.
fn read(report: &Value) -> Option<(String, String, Run)> {
    let r = report.get("result")?;
    let peer = r.get("peer")?.as_str()?.to_owned();
    let f = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    let u = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
    match report.get("scenario")?.as_str()? {
        "peer-publish" => {
            let groups = u(r, "groups")?;
            let size = u(r, "group_size")?;
            let rate = f(r, "rate")?;
            let label = if groups == 1 {
                format!(
                    "fan-out: 1 chat of {}, {} msg/s",
                    thousands(size as f64),
                    rate
                )
            } else {
                format!(
                    "small chats: {} × {}, {} REST sends/s",
                    thousands(groups as f64),
                    size,
                    thousands(rate)
                )
            };
            let lat = r.get("send_to_deliver")?;
            let run = Run {
                delivered_per_sec: f(r, "delivered_per_sec"),
                deliveries: Some((u(r, "deliveries")?, u(r, "expected_deliveries")?)),
                p50: f(lat, "p50_ms"),
                p99: f(lat, "p99_ms"),
                p999: f(lat, "p999_ms"),
                cpu_secs: f(r, "server_cpu_secs"),
                per_cpu_sec: f(r, "deliveries_per_server_cpu_sec"),
                rss_per_conn: f(r, "server_rss_per_connection_bytes"),
            };
            Some((label, peer, run))
        }
        "peer-idle" => {
            let label = format!(
                "idle: {} subscribed WebSockets",
                thousands(u(r, "requested")? as f64)
            );
            let run = Run {
                cpu_secs: f(r, "server_cpu_secs"),
                rss_per_conn: f(r, "server_rss_per_connection_bytes"),
                ..Run::default()
            };
            Some((label, peer, run))
        }
        _ => None,
    }
}

/// The runs' values joined with " / ", or "–" when none has it.
fn join(runs: &[Run], f: impl Fn(&Run) -> Option<String>) -> String {
    join_with(" / ", runs, f)
}

/// The runs' values joined with `sep`, or "–" when none has it.
fn join_with(sep: &str, runs: &[Run], f: impl Fn(&Run) -> Option<String>) -> String {
    let parts: Vec<String> = runs.iter().filter_map(f).collect();
    if parts.is_empty() {
        "–".to_owned()
    } else {
        parts.join(sep)
    }
}

/// The mean over the runs that have the value.
fn mean(runs: &[Run], f: fn(&Run) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = runs.iter().filter_map(f).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// `1234567.8` as `1,234,568`.
fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    // The first group has 1 to 3 digits, every later one 3.
    let first = match digits.len() % 3 {
        0 => 3,
        r => r,
    };
    for (i, c) in digits.chars().enumerate() {
        if i >= first && (i - first) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Bytes as `2,894 B` or `49.1 KiB`.
fn bytes(b: f64) -> String {
    if b.abs() < 10_240.0 {
        format!("{} B", thousands(b))
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1234.0), "-1,234");
        assert_eq!(bytes(2894.0), "2,894 B");
        assert_eq!(bytes(50_278.0), "49.1 KiB");
    }

    #[test]
    fn ratios_of_means() {
        let idle = |peer: &str, rss: f64| {
            json!({"scenario": "peer-idle", "result": {"peer": peer, "requested": 15000,
                "server_cpu_secs": 1.0, "server_rss_per_connection_bytes": rss}})
        };
        let t = table(&[
            idle("chat-server", 3000.0),
            idle("centrifugo", 50_000.0),
            idle("chat-server", 3400.0),
            idle("centrifugo", 30_000.0),
            json!({"scenario": "fanout", "result": {}}),
        ]);
        assert!(
            t.contains("| idle: 15,000 subscribed WebSockets | chat-server |"),
            "{t}"
        );
        assert!(t.contains("3,000 B / 3,400 B"), "{t}");
        assert!(t.contains("| **0.08** |"), "{t}");
        assert_eq!(t.lines().count(), 2 + 3);
    }
}
