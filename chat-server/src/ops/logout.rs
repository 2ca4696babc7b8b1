//! Log out (`DELETE /v1/sessions/current`): deletes the session and tells every node to close
//! the WebSockets that use it.

use crate::auth::Caller;
use crate::state::AppState;
use chat_core::{Event, Result, Topic};

/// Ends the caller's session everywhere.
pub(crate) async fn run(st: &AppState, caller: &Caller) -> Result<()> {
    st.metadata.delete_session(&caller.token_hash).await?;
    // The session is gone from the store, so the token no longer authenticates anything new;
    // a lost event leaves open sockets open only until they reconnect.
    super::publish(
        st,
        Topic::User(caller.user_id),
        Event::SessionRevoked {
            user_id: caller.user_id,
            token_hash: caller.token_hash,
        },
    )
    .await;
    Ok(())
}
