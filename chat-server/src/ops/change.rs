//! Change a stored message (`PATCH` and `DELETE /v1/chats/{chat_id}/messages/{seq}`, `PUT` and
//! `DELETE .../reactions/{emoji}`) and read a chat's change feed
//! (`GET /v1/chats/{chat_id}/changes`).
//!
//! Who may do what: the sender edits; the sender, the owner or an admin deletes; any member
//! reacts; everyone else gets `not_a_member`. A change is published as `message_updated` on the
//! chat's topic only after the store returned it (durable), and only when it took a new `rev`:
//! a retry that changes nothing is answered with the message as it is and tells nobody.

use super::{publish, require_member};
use crate::state::AppState;
use chat_core::ids::now_millis;
use chat_core::protocol::ChangesResponse;
use chat_core::{
    ChatId, Error, Event, FetchQuery, Message, MessageChange, Result, Rev, Seq, Topic, UserId,
};
use std::collections::HashMap;

/// What a caller asks to do to one message.
pub(crate) enum ChangeInput {
    /// New text (validated here).
    Edit(String),
    /// Make it a tombstone.
    Delete,
    /// Add (`true`) or take back the caller's reaction with this emoji.
    React(String, bool),
}

/// Applies one change to message `seq` of `chat_id` for `caller` and returns the message in its
/// new state.
pub(crate) async fn run(
    st: &AppState,
    caller: UserId,
    chat_id: ChatId,
    seq: Seq,
    input: ChangeInput,
) -> Result<Message> {
    let limits = &st.config.limits;
    // Input errors first: they need no database and say the most useful thing.
    let change = match input {
        ChangeInput::Edit(text) => MessageChange::Edit {
            msg_text: limits.msg_text(&text)?,
            edited_at: now_millis(),
        },
        ChangeInput::Delete => MessageChange::Delete,
        ChangeInput::React(emoji, add) => {
            limits.emoji(&emoji)?;
            MessageChange::React {
                user_id: caller,
                emoji,
                add,
            }
        }
    };
    let role = require_member(st, chat_id, caller).await?;
    // Changes share the sender's send budget: an edit or a reaction costs what a send does.
    st.guards.send_per_user.check(caller)?;
    let before = current(st, chat_id, seq).await?;
    match &change {
        MessageChange::Edit { .. } if before.sender_id != caller => {
            return Err(Error::Forbidden(
                "only its sender may edit a message".into(),
            ));
        }
        MessageChange::Delete if before.sender_id != caller && !role.can_manage_members() => {
            return Err(Error::Forbidden(
                "only its sender, the owner or an admin may delete a message".into(),
            ));
        }
        _ => {}
    }
    let after = st.messages.change(chat_id, seq, change).await?;
    if after.rev != before.rev {
        st.metrics.messages_changed.inc();
        publish(
            st,
            Topic::Chat(chat_id),
            Event::MessageUpdated {
                message: after.clone(),
            },
        )
        .await;
    }
    Ok(after)
}

/// The stored message `seq` of `chat_id`, or `not_found`.
async fn current(st: &AppState, chat_id: ChatId, seq: Seq) -> Result<Message> {
    let not_found = || Error::NotFound(format!("message {seq} in chat {chat_id}"));
    if seq.get() < 1 {
        return Err(not_found());
    }
    let page = st
        .messages
        .fetch(
            chat_id,
            FetchQuery::After {
                after: Seq(seq.get() - 1),
                limit: 1,
            },
        )
        .await?;
    page.into_iter()
        .next()
        .filter(|m| m.seq == seq)
        .ok_or_else(not_found)
}

/// Checks a send's `reply_to_seq`: a `seq` of the same chat that exists. Seqs are dense and
/// never taken back, so it exists exactly when it is between 1 and the chat's `last_seq`.
pub(crate) async fn check_reply(st: &AppState, chat_id: ChatId, reply_to: Seq) -> Result<()> {
    if reply_to.get() >= 1 && reply_to <= st.messages.last_seq(chat_id).await? {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "reply_to_seq {reply_to} is not a message of chat {chat_id}"
        )))
    }
}

/// A parsed `GET /v1/chats/{chat_id}/changes?after_rev&limit`.
pub(crate) struct ChangesInput {
    /// Changes above this revision (default 0: everything).
    after: Rev,
    /// Page size (validated).
    limit: u32,
}

impl ChangesInput {
    /// Parses `after_rev` and `limit`: not an integer is `bad_request`, out of range is
    /// `invalid_argument`.
    pub(crate) fn parse(q: &HashMap<String, String>, limits: &chat_core::Limits) -> Result<Self> {
        let int = |name: &str| super::fetch::parse_int(q.get(name), name);
        let after = match int("after_rev")? {
            None => Rev::ZERO,
            Some(n) if n >= 0 => Rev(n),
            Some(_) => {
                return Err(Error::InvalidArgument(
                    "after_rev must not be negative".into(),
                ))
            }
        };
        let limit = limits.page_limit(int("limit")?)?;
        Ok(ChangesInput { after, limit })
    }
}

/// One page of the chat's change feed, for a member.
pub(crate) async fn feed(
    st: &AppState,
    caller: UserId,
    chat_id: ChatId,
    input: ChangesInput,
) -> Result<ChangesResponse> {
    require_member(st, chat_id, caller).await?;
    // One extra row tells whether another page follows without a second query.
    let mut messages = st
        .messages
        .changes(chat_id, input.after, input.limit + 1)
        .await?;
    let has_more = messages.len() > input.limit as usize;
    messages.truncate(input.limit as usize);
    let next_rev = messages.last().map_or(input.after, |m| m.rev);
    Ok(ChangesResponse::new(messages, next_rev, has_more))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_input_parses_the_contract() {
        let l = chat_core::Limits::default();
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>()
        };
        let i = ChangesInput::parse(&q(&[]), &l).unwrap();
        assert_eq!(i.after, Rev::ZERO);
        let i = ChangesInput::parse(&q(&[("after_rev", "7"), ("limit", "3")]), &l).unwrap();
        assert_eq!((i.after, i.limit), (Rev(7), 3));
        assert!(matches!(
            ChangesInput::parse(&q(&[("after_rev", "x")]), &l),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            ChangesInput::parse(&q(&[("after_rev", "-1")]), &l),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            ChangesInput::parse(&q(&[("limit", "0")]), &l),
            Err(Error::InvalidArgument(_))
        ));
    }
}
