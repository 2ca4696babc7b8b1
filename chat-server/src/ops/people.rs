//! People: another user by id (`GET /v1/users/{user_id}`) or by exact email
//! (`GET /v1/users?email=`, rate-limited like logins), and changing one's display name
//! (`PATCH /v1/users/me`). Others never see an email.

use crate::rate_limit::Guards;
use crate::state::AppState;
use chat_core::protocol::PublicUser;
use chat_core::{Error, Result, User, UserId};
use std::net::IpAddr;

/// A user by id, for any signed-in caller.
pub(crate) async fn by_id(st: &AppState, user_id: UserId) -> Result<PublicUser> {
    st.metadata
        .user(user_id)
        .await?
        .map(PublicUser::from)
        .ok_or_else(|| Error::NotFound(format!("user {user_id}")))
}

/// A user by exact (case-insensitive) email. Both limits are taken before the lookup, and a
/// malformed email is simply not found, so the answer says nothing more than "no such user".
pub(crate) async fn by_email(
    st: &AppState,
    caller: UserId,
    addr: Option<IpAddr>,
    email: Option<&str>,
) -> Result<PublicUser> {
    let email = email.ok_or_else(|| Error::InvalidArgument("email is required".into()))?;
    st.guards.lookup_per_user.check(caller)?;
    Guards::by_addr(&st.guards.lookup_per_addr, addr)?;
    let not_found = || Error::NotFound("no user with that email".into());
    let Ok(email) = st.config.limits.email(email) else {
        return Err(not_found());
    };
    st.metadata
        .user_credentials(&email)
        .await?
        .map(|c| PublicUser::from(c.user))
        .ok_or_else(not_found)
}

/// Changes the caller's display name.
pub(crate) async fn set_display_name(st: &AppState, caller: UserId, name: &str) -> Result<User> {
    if name.trim().is_empty() {
        return Err(Error::InvalidArgument(
            "display_name must not be empty".into(),
        ));
    }
    let name = st.config.limits.display_name(Some(name), "")?;
    st.metadata
        .set_display_name(caller, &name)
        .await?
        .ok_or_else(|| Error::Unauthenticated("the user no longer exists".into()))
}
