//! The per-user send rate limit: a token bucket shared by REST and WebSocket sends.

use chat_core::{Error, Result, UserId};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets kept before idle (full) ones are pruned; bounds memory to the active senders.
const PRUNE_AT: usize = 10_000;

/// Token buckets per user.
pub(crate) struct SendRateLimiter {
    /// Tokens added per second; 0 turns the limit off.
    rate: f64,
    /// Bucket size.
    burst: f64,
    /// A std mutex: held for a map lookup and some arithmetic, never across an await.
    buckets: Mutex<Buckets>,
}

struct Buckets {
    map: HashMap<UserId, Bucket>,
    prune_at: usize,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl SendRateLimiter {
    /// `rate` sends per second sustained, `burst` at once.
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        SendRateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                prune_at: PRUNE_AT,
            }),
        }
    }

    /// Takes one token for `user`, or says how long to wait for one.
    pub(crate) fn check(&self, user: UserId) -> Result<()> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut b = match self.buckets.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if b.map.len() >= b.prune_at {
            let (rate, burst) = (self.rate, self.burst);
            b.map.retain(|_, bucket| {
                bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate < burst
            });
            // Amortize: prune again only after the map has doubled.
            b.prune_at = (b.map.len() * 2).max(PRUNE_AT);
        }
        let bucket = b.map.entry(user).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err(Error::RateLimited {
                retry_after_ms: (wait * 1000.0).ceil().max(1.0) as u64,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_limited_per_user() {
        let l = SendRateLimiter::new(1, 3);
        for _ in 0..3 {
            l.check(UserId(1)).unwrap();
        }
        match l.check(UserId(1)) {
            Err(Error::RateLimited { retry_after_ms }) => {
                assert!(retry_after_ms > 0 && retry_after_ms <= 1000)
            }
            other => panic!("expected rate limited, got {other:?}"),
        }
        l.check(UserId(2)).unwrap();
        let off = SendRateLimiter::new(0, 1);
        for _ in 0..1000 {
            off.check(UserId(1)).unwrap();
        }
    }
}
