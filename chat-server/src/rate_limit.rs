//! Abuse limits enforced per request: token buckets keyed by user, address or account (sends,
//! logins, registrations) and the cap on open WebSockets per user.

use crate::config::{Config, RateLimit};
use crate::lock;
use chat_core::{Error, Result, UserId};
use governor::clock::{Clock as _, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter as Gcra};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Checks between two prunings of idle keys; bounds memory to the keys active recently.
const PRUNE_EVERY: u64 = 4_096;

/// How long a client refused for too many open connections is told to wait.
const CONNECTION_RETRY_MS: u64 = 5_000;

/// Longest period between two tokens (a rate of one per year); slower rates are clamped to it.
const LONGEST_PERIOD: Duration = Duration::from_secs(365 * 24 * 3600);

/// Token buckets per key (a user, an address, an account), as GCRA on the `governor` crate:
/// one atomic word per key in a sharded map, no lock shared by every caller.
pub(crate) struct RateLimiter<K: Hash + Eq + Clone> {
    /// `None` when the limit is off.
    limiter: Option<Gcra<K, DefaultKeyedStateStore<K>, DefaultClock>>,
    clock: DefaultClock,
    /// What is limited, for logs ("sends per user").
    what: &'static str,
    /// Checks since start; every [`PRUNE_EVERY`] the keys whose bucket is full again are
    /// dropped.
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `limit.per_sec` sustained, `limit.burst` at once; `what` names the limited action. A rate
    /// that is zero, negative or not a number turns the limit off.
    pub(crate) fn new(limit: RateLimit, what: &'static str) -> Self {
        let quota = (limit.per_sec.is_finite() && limit.per_sec > 0.0)
            .then(|| {
                let period = Duration::try_from_secs_f64(1.0 / limit.per_sec)
                    .unwrap_or(LONGEST_PERIOD)
                    .min(LONGEST_PERIOD);
                let burst = NonZeroU32::new(limit.burst.max(1)).unwrap_or(NonZeroU32::MIN);
                // A period that rounds to zero (billions per second) is no limit at all.
                Quota::with_period(period).map(|q| q.allow_burst(burst))
            })
            .flatten();
        RateLimiter {
            limiter: quota.map(Gcra::keyed),
            clock: DefaultClock::default(),
            what,
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one token for `key`, or says how long to wait for one.
    pub(crate) fn check(&self, key: K) -> Result<()> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            tracing::debug!(what = self.what, "rate limited");
            Error::RateLimited {
                retry_after_ms: u64::try_from(wait.as_millis())
                    .unwrap_or(u64::MAX)
                    .clamp(1, 86_400_000),
            }
        })
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
    /// Login attempts per account and client address, keyed by the lower-cased email as given
    /// and the address: a guesser locks out only its own address, never the owner elsewhere.
    pub(crate) login_per_account: RateLimiter<(String, Option<IpAddr>)>,
    /// Registrations per client address.
    pub(crate) register_per_addr: RateLimiter<IpAddr>,
    /// Lookups of users by email, per signed-in user.
    pub(crate) lookup_per_user: RateLimiter<UserId>,
    /// Lookups of users by email, per client address.
    pub(crate) lookup_per_addr: RateLimiter<IpAddr>,
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
            lookup_per_user: RateLimiter::new(a.email_lookups, "email lookups per user"),
            lookup_per_addr: RateLimiter::new(a.email_lookups, "email lookups per address"),
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
