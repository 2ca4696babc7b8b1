//! What each client frame does, dispatched by its `type`: the WebSocket side of the operations
//! layer (`ops/`).
//!
//! A frame goes through three steps, which the [`Pipeline`](super::pipeline::Pipeline) runs
//! apart so that many frames can be in flight while replies and effects keep frame order:
//! 1. [`begin`] (synchronous, in frame order): parse, validate, take rate-limit tokens. A frame
//!    that needs nothing more (`ping`, a bad frame) has its reply now.
//! 2. [`check`] (concurrent across frames): authorization against the stores (membership).
//! 3. [`apply`] (submitted in frame order): the effect (the append and publish of a `send`),
//!    then the reply (`ack` or `error`).
//!
//! A new frame type is a variant of [`ClientFrame`], an arm in [`begin`], and, if it needs the
//! stores, a variant of [`Op`] with its arms in [`check`] and [`apply`], each calling its
//! operation in `ops/`.

use super::connection::Connection;
use super::pipeline::push;
use crate::ops;
use crate::ops::send::{Prepared, SendInput};
use crate::state::AppState;
use chat_core::protocol::{ClientFrame, ServerFrame};
use chat_core::{Error, UserId};
use std::net::IpAddr;
use std::sync::Arc;

/// A frame that needs the stores, between its steps.
pub(crate) enum Op {
    /// A send that passed validation and the rate limits, with its `client_msg_id`.
    Send(Prepared, String),
    /// A typing frame within its throttle: forwarded if the user is a member.
    Typing(UserId, chat_core::ChatId),
}

/// A client frame after [`begin`].
pub(crate) enum Begun {
    /// The reply is known already.
    Reply(ServerFrame),
    /// Nothing to do and nothing to answer (a throttled typing frame).
    Silent,
    /// It needs [`check`] and [`apply`].
    Check(Op),
}

/// A client frame after [`check`].
pub(crate) enum Checked {
    /// The reply is known: an error frame (not authorized), or a frame that needed no check.
    Reply(ServerFrame),
    /// No reply.
    Silent,
    /// Authorized: [`apply`] it.
    Apply(Op),
}

/// Step 1: parses a client frame; for a `send`, validates it and takes its rate-limit tokens
/// (in frame order, at the time it is read). Unknown or malformed frames get a `bad_request`
/// error frame and the connection stays open.
pub(crate) fn begin(st: &AppState, user: UserId, text: &str, addr: Option<IpAddr>) -> Begun {
    let frame: ClientFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            // Echo the client_msg_id when one is readable so the client can match the error.
            let client_msg_id = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get("client_msg_id")?.as_str().map(str::to_owned));
            return Begun::Reply(ServerFrame::Error {
                code: chat_core::ErrorCode::BadRequest,
                message: format!("invalid frame: {e}"),
                client_msg_id,
            });
        }
    };
    match frame {
        ClientFrame::Ping => Begun::Reply(ServerFrame::Pong),
        // At most one a second per user and chat goes further; the rest are dropped quietly
        // (a client repeats typing frames anyway).
        ClientFrame::Typing { chat_id } => {
            if st.typing.admit(user, chat_id) {
                Begun::Check(Op::Typing(user, chat_id))
            } else {
                Begun::Silent
            }
        }
        ClientFrame::Send {
            chat_id,
            msg_text,
            timestamp,
            client_msg_id,
            reply_to_seq,
        } => {
            let input = SendInput {
                chat_id,
                msg_text,
                timestamp,
                client_msg_id: Some(client_msg_id.clone()),
                reply_to_seq,
                client_addr: addr,
            };
            match ops::send::prepare(st, user, input) {
                Ok(prepared) => Begun::Check(Op::Send(prepared, client_msg_id)),
                Err(e) => Begun::Reply(error_frame(e, Some(client_msg_id))),
            }
        }
    }
}

/// Step 2: the authorization check (and a reply's target).
pub(crate) async fn check(st: &AppState, op: Op) -> Checked {
    match op {
        Op::Send(prepared, client_msg_id) => match ops::send::admit(st, &prepared).await {
            Ok(_) => Checked::Apply(Op::Send(prepared, client_msg_id)),
            Err(e) => Checked::Reply(error_frame(e, Some(client_msg_id))),
        },
        Op::Typing(user, chat_id) => match ops::require_member(st, chat_id, user).await {
            Ok(_) => Checked::Apply(Op::Typing(user, chat_id)),
            Err(e) => Checked::Reply(error_frame(e, None)),
        },
    }
}

/// Step 3: the effect, started on this future's first poll, then the reply (if any).
pub(crate) async fn apply(st: &AppState, checked: Checked) -> Option<ServerFrame> {
    let frame = match checked {
        Checked::Reply(frame) => frame,
        Checked::Silent => return None,
        Checked::Apply(Op::Typing(user, chat_id)) => {
            ops::typing::publish(st, user, chat_id).await;
            return None;
        }
        Checked::Apply(Op::Send(prepared, client_msg_id)) => {
            match ops::send::commit(st, prepared).await {
                Ok(appended) => ServerFrame::Ack {
                    client_msg_id,
                    message: appended.message,
                },
                Err(e) => error_frame(e, Some(client_msg_id)),
            }
        }
    };
    Some(frame)
}

/// Handles one client text frame start to end, without a pipeline (the fuzz targets), and
/// queues its reply.
pub(crate) async fn handle_text(
    st: &AppState,
    conn: &Arc<Connection>,
    text: &str,
    addr: Option<IpAddr>,
) {
    let checked = match begin(st, conn.user_id, text, addr) {
        Begun::Reply(frame) => Checked::Reply(frame),
        Begun::Silent => Checked::Silent,
        Begun::Check(op) => check(st, op).await,
    };
    if let Some(reply) = apply(st, checked).await {
        push(st, conn, &reply);
    }
}

/// The error frame answering a frame, echoing its `client_msg_id`.
fn error_frame(e: Error, client_msg_id: Option<String>) -> ServerFrame {
    ServerFrame::Error {
        code: e.code(),
        message: e.client_message(),
        client_msg_id,
    }
}
