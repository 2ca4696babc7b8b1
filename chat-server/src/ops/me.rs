//! Who am I (`GET /v1/users/me`).

use crate::state::AppState;
use chat_core::{Error, Result, User, UserId};

/// The caller's own user.
pub(crate) async fn run(st: &AppState, caller: UserId) -> Result<User> {
    st.metadata
        .user(caller)
        .await?
        .ok_or_else(|| Error::NotFound("user".into()))
}
