//! `GET /v1/presence?user_ids=1,2`: who is online, for users who share a chat with the caller
//! (strangers are left out, never an error, so the answer does not tell who exists).

use crate::state::AppState;
use chat_core::protocol::PresenceResponse;
use chat_core::{Error, Result, UserId};
use std::collections::HashSet;

/// Most users one request may ask about.
pub(crate) const MAX_USERS: usize = 500;

/// Parses `user_ids` (comma-separated ids).
pub(crate) fn parse_ids(raw: Option<&str>) -> Result<Vec<UserId>> {
    let raw = raw.ok_or_else(|| Error::InvalidArgument("user_ids is required".into()))?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let id: i64 = part
            .parse()
            .map_err(|_| Error::InvalidArgument(format!("user_ids: {part:?} is not an id")))?;
        if seen.insert(id) {
            out.push(UserId(id));
        }
    }
    if out.len() > MAX_USERS {
        return Err(Error::InvalidArgument(format!(
            "at most {MAX_USERS} user_ids at once"
        )));
    }
    Ok(out)
}

/// The presence of the asked users who share a chat with the caller, in the order asked.
pub(crate) async fn run(
    st: &AppState,
    caller: UserId,
    users: Vec<UserId>,
) -> Result<PresenceResponse> {
    if users.is_empty() {
        return Ok(PresenceResponse {
            presence: Vec::new(),
        });
    }
    let shared: HashSet<UserId> = st
        .metadata
        .shared_chat_users(caller, &users)
        .await?
        .into_iter()
        .collect();
    let visible: Vec<UserId> = users.into_iter().filter(|u| shared.contains(u)).collect();
    let presence = match st.presence.get() {
        Some(p) => p.get(&visible).await?,
        None => Vec::new(),
    };
    Ok(PresenceResponse { presence })
}
