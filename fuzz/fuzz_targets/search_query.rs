//! Search queries and search page tokens: `SearchQuery::parse` never panics, accepts exactly
//! the contract's 1 to 256 bytes (not only white space), makes sorted, distinct, bounded terms,
//! and a query always finds the text it was typed from; `decode_token` never panics and every
//! token it accepts encodes back to itself.

#![no_main]

use chat_core::search::{decode_token, encode_token, terms, MAX_QUERY_BYTES, MAX_TERM_BYTES};
use chat_core::{ChatId, SearchQuery};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First line: the query; the rest: a page token to try with it.
    let (q, token) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(q) = std::str::from_utf8(q) else {
        return;
    };
    let valid = !q.is_empty() && q.len() <= MAX_QUERY_BYTES && !q.trim().is_empty();
    let parsed = SearchQuery::parse(q);
    assert_eq!(parsed.is_ok(), valid, "{q:?}");
    let Ok(query) = parsed else {
        return;
    };
    let words = query.terms();
    assert!(words.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
    assert!(words.iter().all(|w| !w.is_empty() && w.len() <= MAX_TERM_BYTES));
    // Indexing the query's own text gives the same terms, so the query finds it.
    assert_eq!(terms(q), words);
    assert_eq!(query.matches(q), !words.is_empty());
    if let Ok(token) = std::str::from_utf8(token) {
        for chat in [None, Some(ChatId(7))] {
            if let Ok(at) = decode_token(token, &query, chat) {
                assert_eq!(encode_token(&query, chat, at), token);
            }
        }
    }
});
