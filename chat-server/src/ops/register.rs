//! Register a user (`POST /v1/users`): rate-limited per address, the password stored only as an
//! argon2id hash.

use crate::rate_limit::Guards;
use crate::state::AppState;
use chat_core::ids::now_millis;
use chat_core::protocol::RegisterRequest;
use chat_core::{NewUser, Result, User};
use std::net::IpAddr;

/// Creates the user. A taken email is `conflict`.
pub(crate) async fn run(st: &AppState, addr: Option<IpAddr>, req: RegisterRequest) -> Result<User> {
    Guards::by_addr(&st.guards.register_per_addr, addr)?;
    let limits = &st.config.limits;
    let email = limits.email(&req.email)?;
    limits.new_password(&req.password)?;
    let display_name = limits.display_name(req.display_name.as_deref(), &email)?;
    let pw_hash = st.passwords.hash(req.password).await?;
    st.metadata
        .create_user(NewUser {
            email,
            display_name,
            pw_hash,
            created_at: now_millis(),
        })
        .await
}
