//! Read one page of a chat's history (`GET /v1/fetch`): the newest page, a page before a
//! token, or the messages after a `seq` (catch-up). Members only.

use crate::state::AppState;
use chat_core::protocol::FetchResponse;
use chat_core::{ChatId, Error, FetchQuery, Limits, Message, PageToken, Result, Seq, UserId};
use std::collections::HashMap;

/// Where a fetch starts.
#[derive(Debug, PartialEq, Eq)]
enum Position {
    Latest,
    Before(Seq),
    After(Seq),
}

/// A parsed `GET /v1/fetch`: which chat, where to start, how many.
pub(crate) struct FetchInput {
    /// The chat.
    pub(crate) chat_id: ChatId,
    /// Where the page starts.
    position: Position,
    /// Page size (validated).
    limit: u32,
}

impl FetchInput {
    /// Parses `chat_id`, `page_token` or `after_seq`, and `limit` from the query string.
    pub(crate) fn parse(q: &HashMap<String, String>, limits: &Limits) -> Result<FetchInput> {
        let chat_id = ChatId(
            parse_int(q.get("chat_id"), "chat_id")?
                .ok_or_else(|| Error::BadRequest("missing query parameter chat_id".into()))?,
        );
        let limit = parse_limit(q.get("limit"), limits)?;
        let position = position(chat_id, q.get("page_token"), q.get("after_seq"))?;
        Ok(FetchInput {
            chat_id,
            position,
            limit,
        })
    }
}

/// One page of a chat, for a member.
pub(crate) async fn run(st: &AppState, user: UserId, input: FetchInput) -> Result<FetchResponse> {
    let FetchInput {
        chat_id,
        position,
        limit,
    } = input;
    super::require_member(st, chat_id, user).await?;
    let (messages, next) = match position {
        Position::Latest => {
            let msgs = st
                .messages
                .fetch(chat_id, FetchQuery::Latest { limit })
                .await?;
            let next = backward_token(chat_id, &msgs);
            (msgs, next)
        }
        Position::Before(before) => {
            let msgs = st
                .messages
                .fetch(chat_id, FetchQuery::Before { before, limit })
                .await?;
            let next = backward_token(chat_id, &msgs);
            (msgs, next)
        }
        Position::After(after) => {
            // One extra row tells whether another page follows without a second query.
            let mut msgs = st
                .messages
                .fetch(
                    chat_id,
                    FetchQuery::After {
                        after,
                        limit: limit + 1,
                    },
                )
                .await?;
            let more = msgs.len() > limit as usize;
            msgs.truncate(limit as usize);
            let next = match msgs.last() {
                Some(last) if more => Some(
                    PageToken::After {
                        chat_id,
                        after: last.seq,
                    }
                    .encode(),
                ),
                _ => None,
            };
            (msgs, next)
        }
    };
    Ok(FetchResponse::new(messages, next))
}

/// Parses the paging parameters; a malformed `after_seq` is `bad_request`, an unusable one
/// (negative, or given with a page token) or a forged or foreign token is `invalid_argument`.
fn position(
    chat_id: ChatId,
    page_token: Option<&String>,
    after_seq: Option<&String>,
) -> Result<Position> {
    let after = parse_int(after_seq, "after_seq")?;
    match (page_token, after) {
        (Some(_), Some(_)) => Err(Error::InvalidArgument(
            "give page_token or after_seq, not both".into(),
        )),
        (None, None) => Ok(Position::Latest),
        (None, Some(n)) if n < 0 => Err(Error::InvalidArgument(
            "after_seq must not be negative".into(),
        )),
        (None, Some(n)) => Ok(Position::After(Seq(n))),
        (Some(t), None) => Ok(match PageToken::decode(t, chat_id)? {
            PageToken::Before { before, .. } => Position::Before(before),
            PageToken::After { after, .. } => Position::After(after),
        }),
    }
}

/// An integer query parameter; present but not an integer is `bad_request`.
pub(crate) fn parse_int(value: Option<&String>, name: &str) -> Result<Option<i64>> {
    value
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| Error::BadRequest(format!("{name} must be an integer")))
        })
        .transpose()
}

/// The token to page back from a page that ends at its first message, or `None` at the start
/// of the chat.
fn backward_token(chat_id: ChatId, msgs: &[Message]) -> Option<String> {
    msgs.first().filter(|m| m.seq.get() > 1).map(|m| {
        PageToken::Before {
            chat_id,
            before: m.seq,
        }
        .encode()
    })
}

/// `limit` of a paged read: absent is the default page, otherwise an integer within the
/// server's page bounds (`invalid_argument` outside them or when not an integer).
pub(crate) fn parse_limit(raw: Option<&String>, limits: &Limits) -> Result<u32> {
    let limit = match raw {
        None => None,
        Some(s) => Some(s.trim().parse::<i64>().map_err(|_| {
            Error::InvalidArgument(format!(
                "limit must be an integer from 1 to {}",
                limits.max_page
            ))
        })?),
    };
    limits.page_limit(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        let c = ChatId(3);
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(position(c, None, None).unwrap(), Position::Latest);
        assert_eq!(
            position(c, None, s("7").as_ref()).unwrap(),
            Position::After(Seq(7))
        );
        let tok = PageToken::Before {
            chat_id: c,
            before: Seq(9),
        }
        .encode();
        assert_eq!(
            position(c, Some(&tok), None).unwrap(),
            Position::Before(Seq(9))
        );
        assert!(matches!(
            position(ChatId(4), Some(&tok), None),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            position(c, Some(&tok), s("1").as_ref()),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            position(c, None, s("-1").as_ref()),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            position(c, None, s("x").as_ref()),
            Err(Error::BadRequest(_))
        ));
    }
}
