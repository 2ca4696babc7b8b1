//! Abuse limits enforced per request: token buckets keyed by user, address or account (sends,
//! logins, registrations) and the cap on open WebSockets per user.

use crate::config::{Config, RateLimit};
use chat_core::{Error, Result, UserId};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Buckets kept before idle (full) ones are pruned; bounds memory to the active keys.
const PRUNE_AT: usize = 10_000;

/// How long a client refused for too many open connections is told to wait.
const CONNECTION_RETRY_MS: u64 = 5_000;

/// Token buckets per key (a user, an address, an account).
pub(crate) struct RateLimiter<K> {
    /// Tokens added per second; 0 turns the limit off.
    rate: f64,
    /// Bucket size.
    burst: f64,
    /// What is limited, for the error message ("sends", "login attempts").
    what: &'static str,
    /// A std mutex: held for a map lookup and some arithmetic, never across an await.
    buckets: Mutex<Buckets<K>>,
}

struct Buckets<K> {
    map: HashMap<K, Bucket>,
    prune_at: usize,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// `limit.per_sec` sustained, `limit.burst` at once; `what` names the limited action.
    pub(crate) fn new(limit: RateLimit, what: &'static str) -> Self {
        let rate = if limit.per_sec.is_finite() && limit.per_sec > 0.0 {
            limit.per_sec
        } else {
            0.0
        };
        RateLimiter {
            rate,
            burst: f64::from(limit.burst.max(1)),
            what,
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                prune_at: PRUNE_AT,
            }),
        }
    }

    /// Takes one token for `key`, or says how long to wait for one.
    pub(crate) fn check(&self, key: K) -> Result<()> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut b = lock(&self.buckets);
        if b.map.len() >= b.prune_at {
            let (rate, burst) = (self.rate, self.burst);
            b.map.retain(|_, bucket| {
                bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate < burst
            });
            // Amortize: prune again only after the map has doubled.
            b.prune_at = (b.map.len() * 2).max(PRUNE_AT);
        }
        let bucket = b.map.entry(key).or_insert(Bucket {
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
            tracing::debug!(what = self.what, "rate limited");
            Err(Error::RateLimited {
                retry_after_ms: (wait * 1000.0).ceil().clamp(1.0, 86_400_000.0) as u64,
            })
        }
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain numbers; the data is
/// still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Counts each user's open WebSockets against a cap.
pub(crate) struct ConnectionCounter {
    /// 0 means no cap.
    cap: usize,
    open: Arc<Mutex<HashMap<UserId, usize>>>,
}

/// One counted connection; dropping it frees the slot.
pub(crate) struct ConnectionSlot {
    user: UserId,
    open: Arc<Mutex<HashMap<UserId, usize>>>,
}

impl ConnectionCounter {
    /// At most `cap` connections per user (0: no cap).
    pub(crate) fn new(cap: usize) -> Self {
        ConnectionCounter {
            cap,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Takes a slot for one more connection of `user`, or `rate_limited` when they have `cap`.
    pub(crate) fn acquire(&self, user: UserId) -> Result<ConnectionSlot> {
        let mut open = lock(&self.open);
        let n = open.entry(user).or_insert(0);
        if self.cap > 0 && *n >= self.cap {
            return Err(Error::RateLimited {
                retry_after_ms: CONNECTION_RETRY_MS,
            });
        }
        *n += 1;
        Ok(ConnectionSlot {
            user,
            open: self.open.clone(),
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(n) = open.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// Every per-request abuse limit of one server.
pub(crate) struct Guards {
    /// Sends per user (the contract's token bucket).
    pub(crate) send_per_user: RateLimiter<UserId>,
    /// Sends per client address.
    pub(crate) send_per_addr: RateLimiter<IpAddr>,
    /// Login attempts per client address.
    pub(crate) login_per_addr: RateLimiter<IpAddr>,
    /// Login attempts per account, keyed by the lower-cased email as given.
    pub(crate) login_per_account: RateLimiter<String>,
    /// Registrations per client address.
    pub(crate) register_per_addr: RateLimiter<IpAddr>,
    /// Open WebSockets per user.
    pub(crate) ws_per_user: ConnectionCounter,
}

impl Guards {
    /// The limits configured in `config`.
    pub(crate) fn new(config: &Config) -> Guards {
        let a = &config.abuse;
        let l = &config.limits;
        Guards {
            send_per_user: RateLimiter::new(
                RateLimit::new(f64::from(l.send_rate_per_sec), l.send_burst),
                "sends per user",
            ),
            send_per_addr: RateLimiter::new(a.send_per_addr, "sends per address"),
            login_per_addr: RateLimiter::new(a.login_per_addr, "logins per address"),
            login_per_account: RateLimiter::new(a.login_per_account, "logins per account"),
            register_per_addr: RateLimiter::new(a.register_per_addr, "registrations per address"),
            ws_per_user: ConnectionCounter::new(a.ws_per_user),
        }
    }

    /// Checks a per-address limit; a request with no known address (served without a socket,
    /// e.g. through `Router::oneshot`) is not limited by address.
    pub(crate) fn by_addr(limiter: &RateLimiter<IpAddr>, addr: Option<IpAddr>) -> Result<()> {
        match addr {
            Some(a) => limiter.check(a),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_limited_per_key() {
        let l = RateLimiter::new(RateLimit::new(1.0, 3), "test");
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
        let off = RateLimiter::new(RateLimit::OFF, "test");
        for _ in 0..1000 {
            off.check(UserId(1)).unwrap();
        }
        // Nonsense rates (NaN, negative) mean "off", never a panic or a zero division.
        for rate in [f64::NAN, -1.0, f64::INFINITY] {
            let l = RateLimiter::new(RateLimit::new(rate, 0), "test");
            for _ in 0..10 {
                l.check(1u8).unwrap();
            }
        }
    }

    #[test]
    fn fractional_rates_give_long_waits() {
        let l = RateLimiter::new(RateLimit::new(0.1, 1), "test");
        l.check("a@b".to_owned()).unwrap();
        match l.check("a@b".to_owned()) {
            Err(Error::RateLimited { retry_after_ms }) => {
                assert!(
                    retry_after_ms > 9_000 && retry_after_ms <= 10_000,
                    "{retry_after_ms}"
                )
            }
            other => panic!("expected rate limited, got {other:?}"),
        }
    }

    #[test]
    fn connection_slots_are_capped_per_user_and_freed_on_drop() {
        let c = ConnectionCounter::new(2);
        let a = c.acquire(UserId(1)).unwrap();
        let b = c.acquire(UserId(1)).unwrap();
        assert!(matches!(
            c.acquire(UserId(1)),
            Err(Error::RateLimited { .. })
        ));
        let other = c.acquire(UserId(2)).unwrap();
        drop(a);
        let again = c.acquire(UserId(1)).unwrap();
        drop((b, other, again));
        assert!(lock(&c.open).is_empty());
        let uncapped = ConnectionCounter::new(0);
        let slots: Vec<_> = (0..100)
            .map(|_| uncapped.acquire(UserId(1)).unwrap())
            .collect();
        assert_eq!(slots.len(), 100);
    }
}
