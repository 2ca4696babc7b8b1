//! Users and sessions: register, log in, log out, who am I.

use crate::auth::{hex, new_token, Caller};
use crate::error::ApiResult;
use crate::http::extract::{ClientAddr, JsonBody};
use crate::rate_limit::Guards;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chat_core::ids::now_millis;
use chat_core::protocol::{LoginRequest, RegisterRequest, SessionView, UserView};
use chat_core::{Error, Event, NewSession, NewUser, Topic};
use std::sync::Arc;

/// `POST /v1/users`.
pub(crate) async fn register(
    State(st): State<Arc<AppState>>,
    ClientAddr(addr): ClientAddr,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    Guards::by_addr(&st.guards.register_per_addr, addr)?;
    let limits = &st.config.limits;
    let email = limits.email(&req.email)?;
    limits.new_password(&req.password)?;
    let display_name = limits.display_name(req.display_name.as_deref(), &email)?;
    let pw_hash = st.passwords.hash(req.password).await?;
    let user = st
        .metadata
        .create_user(NewUser {
            email,
            display_name,
            pw_hash,
            created_at: now_millis(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// `POST /v1/sessions`. A wrong email and a wrong password get the same answer, after the same
/// amount of hashing work.
pub(crate) async fn login(
    State(st): State<Arc<AppState>>,
    ClientAddr(addr): ClientAddr,
    JsonBody(req): JsonBody<LoginRequest>,
) -> ApiResult<Json<SessionView>> {
    // Both limits are taken before any hashing: the argon2 work is what an attacker wants to
    // make the server do.
    Guards::by_addr(&st.guards.login_per_addr, addr)?;
    let limits = &st.config.limits;
    limits.password_len(&req.password)?;
    let creds = match limits.email(&req.email) {
        Ok(email) => {
            // Keyed on the validated (so bounded, normalized) email only: a malformed one
            // matches no account and is already limited per address.
            st.guards.login_per_account.check(email.clone())?;
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
        _ => return Err(Error::Unauthenticated("wrong email or password".into()).into()),
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
    Ok(Json(SessionView {
        token,
        user_id: user.user_id,
        expires_at,
    }))
}

/// `DELETE /v1/sessions/current`: deletes the session and tells every node to close the
/// WebSockets that use it.
pub(crate) async fn logout(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<StatusCode> {
    st.metadata.delete_session(&caller.token_hash).await?;
    let event = Event::SessionRevoked {
        user_id: caller.user_id,
        token_hash: hex(&caller.token_hash),
    };
    // The session is gone from the store, so the token no longer authenticates anything new;
    // a lost event leaves open sockets open only until they reconnect.
    if let Err(e) = st.broker.publish(Topic::User(caller.user_id), &event).await {
        tracing::warn!(error = %e, "publishing a session revocation failed");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/users/me`.
pub(crate) async fn me(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<Json<UserView>> {
    let user = st
        .metadata
        .user(caller.user_id)
        .await?
        .ok_or_else(|| Error::NotFound("user".into()))?;
    Ok(Json(user.into()))
}
