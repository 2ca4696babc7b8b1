//! Jittered exponential backoff, shared by request retries and WebSocket reconnects.
//!
//! Jitter matters more than the exponent: after a server restart every client reconnects and
//! retries at once, and random spreading keeps them from arriving in synchronized waves.

use rand::Rng;
use std::time::Duration;

/// How the SDK retries idempotent requests (reads, and sends, which carry a `client_msg_id`).
///
/// Non-exhaustive: later versions may add settings. Build one with [`RetryPolicy::new`],
/// [`RetryPolicy::default`] or [`RetryPolicy::never`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Total attempts, the first included. `1` disables retries.
    pub max_attempts: u32,
    /// The first delay before jitter; doubled on every further retry.
    pub base_delay: Duration,
    /// The largest delay between two attempts (a server's `Retry-After` may exceed it).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 8 attempts, 100 ms doubling up to 5 s: rides out a server restart of a few seconds.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// A policy of `max_attempts` attempts in all (the first included; `1` never retries),
    /// waiting `base_delay` (jittered) before the first retry and doubling it on every further
    /// one, up to `max_delay` between two attempts.
    ///
    /// ```
    /// use chat_client::RetryPolicy;
    /// use std::time::Duration;
    ///
    /// let patient = RetryPolicy::new(20, Duration::from_millis(200), Duration::from_secs(10));
    /// assert_eq!(patient.max_attempts, 20);
    /// ```
    pub fn new(max_attempts: u32, base_delay: Duration, max_delay: Duration) -> Self {
        RetryPolicy {
            max_attempts,
            base_delay,
            max_delay,
        }
    }

    /// A policy that tries once and never retries.
    pub fn never() -> Self {
        RetryPolicy::default().with_max_attempts(1)
    }

    /// This policy with `max_attempts` attempts in all (the first included), e.g.
    /// `RetryPolicy::default().with_max_attempts(20)` for the default delays, more patiently.
    #[must_use]
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }
}

/// A sequence of growing, jittered delays.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The next delay: uniformly random in `[d/2, d]` where `d = min(base * 2^n, max)`
    /// ("equal jitter": never zero, so a tight retry loop cannot form, yet well spread).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.base.saturating_mul(factor).min(self.max);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_micros()).unwrap_or(u64::MAX);
        let jitter = if spread == 0 {
            0
        } else {
            rand::thread_rng().gen_range(0..=spread)
        };
        half + Duration::from_micros(jitter)
    }

    /// Starts over from the base delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_jittered_within_bounds() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let mut b = Backoff::new(base, max);
        for n in 0..30u32 {
            let d = b.next_delay();
            let ceiling = base.saturating_mul(1u32 << n.min(20)).min(max);
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {n}: {d:?}");
        }
        b.reset();
        assert!(b.next_delay() <= base);
    }
}
