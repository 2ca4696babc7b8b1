//! Log in (`POST /v1/sessions`): a wrong email and a wrong password get the same answer, after
//! the same amount of hashing work; a session stores only the token's hash.

use crate::auth::new_token;
use crate::rate_limit::Guards;
use crate::state::AppState;
use chat_core::ids::now_millis;
use chat_core::protocol::{LoginRequest, SessionView};
use chat_core::{Error, NewSession, Result};
use std::net::IpAddr;

/// Checks the password and opens a session.
pub(crate) async fn run(
    st: &AppState,
    addr: Option<IpAddr>,
    req: LoginRequest,
) -> Result<SessionView> {
    // Both limits are taken before any hashing: the argon2 work is what an attacker wants to
    // make the server do.
    Guards::by_addr(&st.guards.login_per_addr, addr)?;
    let limits = &st.config.limits;
    limits.password_len(&req.password)?;
    let creds = match limits.email(&req.email) {
        Ok(email) => {
            // Keyed on the validated (so bounded, normalized) email and the client's address: a
            // malformed email matches no account and is already limited per address, and
            // someone guessing from one address cannot lock the owner out everywhere.
            st.guards.login_per_account.check((email.clone(), addr))?;
            st.metadata.user_credentials(&email).await?
        }
        Err(_) => None,
    };
    let (user, hash) = match creds {
        Some(c) => (Some(c.user), Some(c.pw_hash)),
        None => (None, None),
    };
    let ok = st.passwords.verify(req.password, hash).await?;
    let user = match (ok, user) {
        (true, Some(u)) => u,
        _ => return Err(Error::Unauthenticated("wrong email or password".into())),
    };
    let (token, token_hash) = new_token();
    let now = now_millis();
    let ttl = i64::try_from(st.config.session_ttl.as_millis()).unwrap_or(i64::MAX);
    let expires_at = now.saturating_add(ttl);
    st.metadata
        .create_session(NewSession {
            token_hash,
            user_id: user.user_id,
            created_at: now,
            expires_at,
        })
        .await?;
    Ok(SessionView::new(token, user.user_id, expires_at))
}
