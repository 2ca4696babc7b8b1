//! Latency histograms (HDR, microseconds) and their JSON summaries.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// Highest latency a histogram records (longer values are clamped): one minute, in µs.
const MAX_MICROS: u64 = 60_000_000;

/// A latency histogram in microseconds, 3 significant digits.
#[derive(Clone, Debug)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Latency {
        // Constant bounds that the crate accepts (1 <= low, high >= 2 * low, sigfig <= 5): this
        // cannot fail whatever the input.
        #[allow(clippy::expect_used)]
        let hist = Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid constant bounds");
        Latency { hist }
    }

    /// Records one latency.
    pub fn record(&mut self, d: Duration) {
        self.record_micros(u64::try_from(d.as_micros()).unwrap_or(MAX_MICROS));
    }

    /// Records one latency given in microseconds (clamped to 1 µs .. 60 s).
    pub fn record_micros(&mut self, us: u64) {
        self.hist.saturating_record(us.clamp(1, MAX_MICROS));
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latency) {
        // Both have the same bounds, so adding cannot fail; a failure would only lose samples.
        if let Err(e) = self.hist.add(&other.hist) {
            tracing::warn!(error = %e, "merging histograms failed");
        }
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at quantile `q` (0..=1), in microseconds.
    pub fn quantile_micros(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }

    /// The underlying histogram (for plotting).
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.hist
    }

    /// p50, p90, p99, p99.9, p99.99, max and mean, in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: self.hist.len(),
            p50_ms: ms(self.hist.value_at_quantile(0.5)),
            p90_ms: ms(self.hist.value_at_quantile(0.9)),
            p99_ms: ms(self.hist.value_at_quantile(0.99)),
            p999_ms: ms(self.hist.value_at_quantile(0.999)),
            p9999_ms: ms(self.hist.value_at_quantile(0.9999)),
            max_ms: ms(self.hist.max()),
            mean_ms: self.hist.mean() / 1000.0,
        }
    }
}

/// A latency distribution as the JSON report shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// 99.99th percentile, ms.
    pub p9999_ms: f64,
    /// Largest sample, ms.
    pub max_ms: f64,
    /// Mean, ms.
    pub mean_ms: f64,
}

impl std::fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} p50={:.3}ms p99={:.3}ms p99.9={:.3}ms max={:.3}ms",
            self.count, self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_in_milliseconds() {
        let mut l = Latency::new();
        for us in 1..=1000 {
            l.record_micros(us * 10);
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 5.0).abs() < 0.01, "{s:?}");
        assert!((s.max_ms - 10.0).abs() < 0.01, "{s:?}");
        let mut m = Latency::new();
        m.merge(&l);
        m.record(Duration::from_secs(120));
        assert_eq!(m.count(), 1001);
        assert_eq!(m.summary().max_ms, 60_000.0_f64.max(m.summary().max_ms));
    }
}
