//! Search the caller's messages (`GET /v1/search`): every word of `q`, newest first, only in
//! chats the caller belongs to (or the one `chat_id` given, members only).

use crate::state::AppState;
use chat_core::protocol::SearchResponse;
use chat_core::search::{decode_token, encode_token};
use chat_core::{ChatId, Limits, Result, SearchCursor, SearchQuery, UserId};
use std::collections::HashMap;

/// A parsed `GET /v1/search`: the query, the optional chat, where to start, how many.
pub(crate) struct SearchInput {
    /// The validated query.
    query: SearchQuery,
    /// Only this chat, when given.
    chat_id: Option<ChatId>,
    /// Results strictly after this position (from `page_token`).
    after: Option<SearchCursor>,
    /// Page size (validated).
    limit: u32,
}

impl SearchInput {
    /// Parses `q` (1 to 256 bytes: missing, empty or longer is `invalid_argument`), `chat_id`
    /// (not an integer: `bad_request`), `limit` and `page_token` (forged, or made for another
    /// query: `invalid_argument`).
    pub(crate) fn parse(q: &HashMap<String, String>, limits: &Limits) -> Result<SearchInput> {
        let query = SearchQuery::parse(q.get("q").map_or("", String::as_str))?;
        let chat_id = super::fetch::parse_int(q.get("chat_id"), "chat_id")?.map(ChatId);
        let limit = super::fetch::parse_limit(q.get("limit"), limits)?;
        let after = q
            .get("page_token")
            .map(|t| decode_token(t, &query, chat_id))
            .transpose()?;
        Ok(SearchInput {
            query,
            chat_id,
            after,
            limit,
        })
    }
}

/// One page of results for `user`.
pub(crate) async fn run(st: &AppState, user: UserId, input: SearchInput) -> Result<SearchResponse> {
    let SearchInput {
        query,
        chat_id,
        after,
        limit,
    } = input;
    let chats: Vec<ChatId> = match chat_id {
        Some(chat) => {
            super::require_member(st, chat, user).await?;
            vec![chat]
        }
        None => st
            .metadata
            .chats_of_user(user)
            .await?
            .into_iter()
            .map(|(c, _)| c.chat_id)
            .collect(),
    };
    // One extra result tells whether another page follows.
    let mut found = st
        .messages
        .search(&chats, &query, after, limit.saturating_add(1))
        .await?;
    let more = found.len() > limit as usize;
    found.truncate(limit as usize);
    let next = match found.last() {
        Some(last) if more => Some(encode_token(&query, chat_id, SearchCursor::of(last))),
        _ => None,
    };
    Ok(SearchResponse::new(found, next))
}
