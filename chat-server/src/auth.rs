//! Authentication: argon2id password hashing (off the async threads), bearer tokens (32 random
//! bytes, only their SHA-256 stored) and resolving a token to its user.

use crate::config::PasswordHashing;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chat_core::ids::now_millis;
use chat_core::{Error, MetadataStore, Result, TokenHash, UserId};
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Longest bearer token accepted before hashing (ours are 43 characters); anything longer is
/// rejected without touching the store.
const MAX_TOKEN_LEN: usize = 256;

/// Who is calling: the user of a valid, unexpired session.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    /// The session's user.
    pub(crate) user_id: UserId,
    /// SHA-256 of the bearer token, identifying the session.
    pub(crate) token_hash: TokenHash,
    /// When the session expires (Unix ms): an open WebSocket closes then.
    pub(crate) expires_at: chat_core::Millis,
}

/// Longest a login or registration waits for a hashing slot before it is answered 429.
const HASH_QUEUE_WAIT: Duration = Duration::from_secs(2);

/// What a caller refused a hashing slot is told to wait.
const HASH_RETRY_MS: u64 = 1_000;

/// Password hashing with the configured argon2id cost, a bounded number at a time.
///
/// Each argon2id hash holds its memory cost (19 MiB by default) while it runs, and anonymous
/// clients can ask for one per login, so the number running at once is bounded (one per core:
/// more would not finish sooner) and so is the queue waiting for a slot; past it the answer is
/// 429 with `Retry-After`, before any memory is taken.
#[derive(Clone)]
pub(crate) struct Passwords {
    argon2: Argon2<'static>,
    /// One permit per hash allowed to run.
    slots: Arc<Semaphore>,
    /// Callers waiting for a slot or holding one.
    queued: Arc<AtomicUsize>,
    /// Most callers waiting for a slot (beyond those running).
    queue_limit: usize,
    running_limit: usize,
}

impl Passwords {
    /// Hashing with these parameters (values argon2 rejects are raised to its minimums), at
    /// most `at_once` at a time (0: one per core), with at most `queue` callers waiting.
    pub(crate) fn new(cost: PasswordHashing, at_once: usize, queue: usize) -> Passwords {
        let p = cost.parallelism.max(1);
        let params = Params::new(cost.memory_kib.max(8 * p), cost.iterations.max(1), p, None)
            .unwrap_or_default();
        let at_once = match at_once {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Passwords {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            slots: Arc::new(Semaphore::new(at_once)),
            queued: Arc::new(AtomicUsize::new(0)),
            queue_limit: queue,
            running_limit: at_once,
        }
    }

    /// Runs one hash on the blocking pool once a slot is free; 429 past the queue.
    async fn bounded<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let busy = || Error::RateLimited {
            retry_after_ms: HASH_RETRY_MS,
        };
        let queued = self.queued.fetch_add(1, Ordering::SeqCst);
        let _queued = Dequeue(&self.queued);
        if queued >= self.running_limit.saturating_add(self.queue_limit) {
            tracing::debug!("password hashing queue full");
            return Err(busy());
        }
        let permit =
            match tokio::time::timeout(HASH_QUEUE_WAIT, self.slots.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) | Err(_) => return Err(busy()),
            };
        run_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
    }

    /// The PHC string of an argon2id hash of `password` with a fresh salt.
    pub(crate) async fn hash(&self, password: String) -> Result<String> {
        let argon2 = self.argon2.clone();
        self.bounded(move || {
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| Error::internal("password hashing failed", e.to_string()))
        })
        .await
    }

    /// Whether `password` matches `hash`. With no hash (unknown email) it still spends the time
    /// of one hash, so a wrong email and a wrong password cannot be told apart by timing.
    pub(crate) async fn verify(&self, password: String, hash: Option<String>) -> Result<bool> {
        let argon2 = self.argon2.clone();
        self.bounded(move || {
            let Some(hash) = hash else {
                let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
                let _ = argon2.hash_password(password.as_bytes(), &salt);
                return Ok(false);
            };
            let parsed = PasswordHash::new(&hash)
                .map_err(|e| Error::internal("stored password hash is malformed", e.to_string()))?;
            // The stored hash carries its own parameters, so hashes made under an older cost
            // setting still verify.
            Ok(argon2.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
    }
}

/// Takes a caller off the hashing queue however its request ends.
struct Dequeue<'a>(&'a AtomicUsize);

impl Drop for Dequeue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs CPU-heavy work on the blocking pool.
async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal("blocking task failed", e))?
}

/// A fresh bearer token and its SHA-256.
pub(crate) fn new_token() -> (String, TokenHash) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_token(&token);
    (token, hash)
}

/// SHA-256 of a token, as sessions are stored.
pub(crate) fn hash_token(token: &str) -> TokenHash {
    TokenHash(Sha256::digest(token.as_bytes()).into())
}

/// Resolves a bearer token to its caller: the session must exist and not be expired.
pub(crate) async fn authenticate(metadata: &dyn MetadataStore, token: &str) -> Result<Caller> {
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(Error::Unauthenticated("invalid or expired token".into()));
    }
    let token_hash = hash_token(token);
    match metadata.session(&token_hash).await? {
        Some(s) if s.expires_at > now_millis() => Ok(Caller {
            user_id: s.user_id,
            token_hash,
            expires_at: s.expires_at,
        }),
        _ => Err(Error::Unauthenticated("invalid or expired token".into())),
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub(crate) fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_unknown_users_fail() {
        let p = Passwords::new(PasswordHashing::fast_insecure(), 0, 8);
        let h = p.hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(p
            .verify("correct horse".into(), Some(h.clone()))
            .await
            .unwrap());
        assert!(!p.verify("wrong".into(), Some(h)).await.unwrap());
        assert!(!p.verify("x".into(), None).await.unwrap());
        assert!(p.verify("x".into(), Some("garbage".into())).await.is_err());
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (t1, h1) = new_token();
        let (t2, _) = new_token();
        assert_ne!(t1, t2);
        assert_eq!(t1.len(), 43);
        assert_eq!(hash_token(&t1), h1);
        assert_eq!(h1.to_hex().len(), 64);
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
    }
}
