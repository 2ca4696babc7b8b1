//! [`HealthCheck`]: a dependency that `GET /v1/health` reports besides the two stores and the
//! broker (which it always checks), such as the membership cache's Redis.

use async_trait::async_trait;
use chat_core::Result;

/// A dependency checked by `GET /v1/health`, listed in
/// [`Config::health_checks`](crate::Config::health_checks) under a name that becomes a key of
/// the health answer (e.g. `"cache": "ok"`). A failing check makes the answer 503.
#[async_trait]
pub trait HealthCheck: Send + Sync + std::fmt::Debug + 'static {
    /// `Ok` when the dependency answers; `Error::Unavailable` otherwise.
    async fn check(&self) -> Result<()>;
}
