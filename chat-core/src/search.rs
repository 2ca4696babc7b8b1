//! Message search (`GET /v1/search`): the one tokenizer every store indexes with and every
//! query is parsed with, the order of results, and the page token that walks it.
//!
//! # Words
//! A word is a maximal run of letters and digits (Unicode `Alphabetic` or `Numeric`, plus the
//! combining diacritical marks that follow a letter in decomposed text); everything else
//! separates words. A word is folded to lower case character by character with Unicode's
//! mappings (`char::to_lowercase`), and a final sigma `ς` folds to `σ` like every other
//! sigma, so `ΟΔΟΣ`, `οδος` and `οδοσ` are one word. There is no stemming, no stop word and no
//! prefix match: a message matches a query when it contains every word of the query as a
//! whole word. Scripts written without spaces (Chinese, Japanese) form one word per run, so a
//! query must give the whole run.
//!
//! Characters that are syntax to some engine (FTS5's `"`, `*`, `-`, `NEAR`; MySQL's boolean
//! `+ - < > ( ) ~ * "`; CQL quotes) are therefore either separators or plain words (`NEAR` is
//! the word `near`): the stores never hand a query's text to an engine's parser, only the
//! folded words, bound as parameters or encoded (see each store).
//!
//! # Why one tokenizer
//! Every store computes a message's [`terms`] with this code when it writes the message and
//! looks up the query's [`SearchQuery::terms`] made by the same code, so SQLite, MySQL and
//! Cassandra find exactly the same messages for the same query (the conformance suite checks
//! it). A term longer than [`MAX_TERM_BYTES`] can never be part of a query, so it is not
//! indexed.
//!
//! # Order and paging
//! Results are newest first in the total order of [`SearchCursor`]: `sent_at` descending, then
//! `chat_id` descending, then `seq` descending. A page token names the last result of a page
//! (and the query it belongs to); the next page holds the results strictly after it, so pages
//! tile the results exactly, even when messages are sent meanwhile (they are newer, so they
//! sort before the token).

use crate::error::{Error, Result};
use crate::ids::{ChatId, Millis, Seq};
use crate::model::Message;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::cmp::Ordering;
use std::collections::BTreeSet;

/// The longest query, in bytes of UTF-8 (the contract's limit on `q`).
pub const MAX_QUERY_BYTES: usize = 256;

/// The longest term a store indexes, in bytes. Case folding can make a word longer (`İ`, two
/// bytes, folds to `i̇`, three), so a word of a valid query folds to at most 1.5 times
/// [`MAX_QUERY_BYTES`]; this bound is above that with room to spare, and longer terms (which no
/// query can ask for) are not indexed.
pub const MAX_TERM_BYTES: usize = 1024;

/// Whether `c` may be part of a word: letters, digits, and combining diacritical marks (which
/// decomposed text uses for accents, and which are neither letters nor digits to Unicode).
fn is_word_char(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric();
    }
    c.is_alphanumeric()
        || matches!(c,
            '\u{0300}'..='\u{036F}'   // Combining Diacritical Marks
            | '\u{1AB0}'..='\u{1AFF}' // ... Extended
            | '\u{1DC0}'..='\u{1DFF}' // ... Supplement
            | '\u{20D0}'..='\u{20FF}' // ... for Symbols
            | '\u{FE20}'..='\u{FE2F}' // Combining Half Marks
        )
}

/// Appends the case-folded form of `c` to `out`.
fn fold_into(c: char, out: &mut String) {
    if c.is_ascii() {
        out.push(c.to_ascii_lowercase());
        return;
    }
    for l in c.to_lowercase() {
        out.push(if l == 'ς' { 'σ' } else { l });
    }
}

/// The words of `text`, case-folded, in the order they occur (repeats included).
///
/// ```
/// let words: Vec<String> = chat_core::search::words("Hello, WORLD! Ünïcode-ok").collect();
/// assert_eq!(words, ["hello", "world", "ünïcode", "ok"]);
/// ```
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !is_word_char(c))
        .filter(|w| has_letter(w))
        .map(|w| {
            let mut out = String::with_capacity(w.len());
            w.chars().for_each(|c| fold_into(c, &mut out));
            out
        })
}

/// Whether a run of word characters holds at least one letter or digit (a run of combining
/// marks alone is not a word).
fn has_letter(w: &str) -> bool {
    w.chars().any(char::is_alphanumeric)
}

/// The distinct search terms of a message's text, sorted: what a store indexes for it. Terms
/// longer than [`MAX_TERM_BYTES`] are left out (no query can ask for them). A deleted
/// message has no terms (its text is empty).
///
/// ```
/// let t = chat_core::search::terms("the Cat saw the cat");
/// assert_eq!(t, ["cat", "saw", "the"]);
/// ```
pub fn terms(text: &str) -> Vec<String> {
    words(text)
        .filter(|w| w.len() <= MAX_TERM_BYTES)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// A parsed, validated search query: its distinct folded words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchQuery {
    /// Distinct folded words, sorted.
    terms: Vec<String>,
}

impl SearchQuery {
    /// Parses `q`: 1 to [`MAX_QUERY_BYTES`] bytes, not only white space, else
    /// [`Error::InvalidArgument`]. A query made only of punctuation is valid and has no words:
    /// it matches nothing (a message cannot contain the word `*`).
    pub fn parse(q: &str) -> Result<SearchQuery> {
        if q.len() > MAX_QUERY_BYTES {
            return Err(Error::InvalidArgument(format!(
                "q is {} bytes; the limit is {MAX_QUERY_BYTES}",
                q.len()
            )));
        }
        if q.trim().is_empty() {
            return Err(Error::InvalidArgument("q must not be empty".into()));
        }
        Ok(SearchQuery { terms: terms(q) })
    }

    /// The distinct folded words to find, sorted; empty when the query has no words (then
    /// nothing matches and stores answer an empty page without asking the database).
    pub fn terms(&self) -> &[String] {
        &self.terms
    }

    /// Whether a message with this text matches: it contains every word of the query. The
    /// reference the stores agree with (used by tests and the fuzz target).
    pub fn matches(&self, text: &str) -> bool {
        if self.terms.is_empty() {
            return false;
        }
        let have = terms(text);
        self.terms.iter().all(|t| have.binary_search(t).is_ok())
    }

    /// A short fingerprint of the words (FNV-1a), so a page token names its query.
    fn fingerprint(&self, chat: Option<ChatId>) -> u32 {
        let mut h: u32 = 0x811c_9dc5;
        let mut eat = |b: u8| {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        };
        for t in &self.terms {
            t.bytes().for_each(&mut eat);
            eat(0);
        }
        if let Some(c) = chat {
            c.get().to_be_bytes().into_iter().for_each(&mut eat);
        }
        h
    }
}

/// A position in the total order of search results: newest `sent_at` first, then higher
/// `chat_id`, then higher `seq`. Results "after" a cursor sort strictly after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SearchCursor {
    /// The message's server time.
    pub sent_at: Millis,
    /// Its chat.
    pub chat_id: ChatId,
    /// Its `seq`.
    pub seq: Seq,
}

impl SearchCursor {
    /// The position of a message.
    pub fn of(m: &Message) -> SearchCursor {
        SearchCursor {
            sent_at: m.sent_at,
            chat_id: m.chat_id,
            seq: m.seq,
        }
    }

    /// The result order: `Less` when `self` comes first (is newer).
    pub fn result_order(&self, other: &SearchCursor) -> Ordering {
        (other.sent_at, other.chat_id, other.seq).cmp(&(self.sent_at, self.chat_id, self.seq))
    }

    /// Whether a message at `self` comes strictly after `cursor` in the result order.
    pub fn is_after(&self, cursor: &SearchCursor) -> bool {
        cursor.result_order(self) == Ordering::Less
    }
}

/// Sorts messages into the result order (newest first).
pub fn sort_results(messages: &mut [Message]) {
    messages.sort_by(|a, b| SearchCursor::of(a).result_order(&SearchCursor::of(b)));
}

/// Longest search page token a client may send.
const MAX_TOKEN_LEN: usize = 96;

/// The opaque `page_token` of `GET /v1/search`: the last result of the previous page, bound to
/// the query's words and the `chat_id` filter, so a token used with another query is
/// `invalid_argument` rather than a silently wrong page.
pub fn encode_token(query: &SearchQuery, chat: Option<ChatId>, last: SearchCursor) -> String {
    let raw = format!(
        "s1:{:08x}:{}:{}:{}",
        query.fingerprint(chat),
        last.sent_at,
        last.chat_id,
        last.seq
    );
    URL_SAFE_NO_PAD.encode(raw)
}

/// Parses a search page token made by [`encode_token`] for the same query and filter.
pub fn decode_token(
    token: &str,
    query: &SearchQuery,
    chat: Option<ChatId>,
) -> Result<SearchCursor> {
    let bad = || Error::InvalidArgument("page_token is not valid for this search".into());
    let raw = crate::page::opaque_text(token, MAX_TOKEN_LEN).ok_or_else(bad)?;
    let mut parts = raw.split(':');
    let (Some("s1"), Some(fp), Some(sent_at), Some(chat_id), Some(seq), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad());
    };
    let fp = u32::from_str_radix(fp, 16).map_err(|_| bad())?;
    let sent_at: i64 = sent_at.parse().map_err(|_| bad())?;
    let chat_id: i64 = chat_id.parse().map_err(|_| bad())?;
    let seq: i64 = seq.parse().map_err(|_| bad())?;
    if fp != query.fingerprint(chat) || seq < 1 || chat_id < 0 {
        return Err(bad());
    }
    let cursor = SearchCursor {
        sent_at,
        chat_id: ChatId(chat_id),
        seq: Seq(seq),
    };
    // Canonical form only: one token per position.
    if encode_token(query, chat, cursor) != token {
        return Err(bad());
    }
    Ok(cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> SearchQuery {
        SearchQuery::parse(s).unwrap()
    }

    #[test]
    fn words_are_unicode_aware_and_case_folded() {
        assert_eq!(terms("Grüße aus KÖLN, köln!"), ["aus", "grüße", "köln"]);
        assert_eq!(terms("ΟΔΟΣ οδος"), ["οδοσ"]);
        assert_eq!(terms("Привет МИР"), ["мир", "привет"]);
        assert_eq!(terms("e\u{301}te\u{301}"), ["e\u{301}te\u{301}"]);
        assert_eq!(
            terms("a\"b*c NEAR(d) -e +f <g> ~h 'i' `j`"),
            ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "near"]
        );
        assert_eq!(terms("\u{301}\u{301} ?!"), Vec::<String>::new());
        assert_eq!(terms(&"x".repeat(300)).len(), 1);
        assert!(terms(&"x".repeat(MAX_TERM_BYTES + 1)).is_empty());
        // Folding may lengthen a word; a full-length query still finds its own text.
        let long = "İ".repeat(MAX_QUERY_BYTES / 2);
        assert!(q(&long).matches(&long));
    }

    #[test]
    fn queries_are_validated() {
        assert!(SearchQuery::parse("").is_err());
        assert!(SearchQuery::parse("   ").is_err());
        assert!(SearchQuery::parse(&"a".repeat(257)).is_err());
        assert_eq!(q(&"a".repeat(256)).terms().len(), 1);
        assert!(q("*\"-").terms().is_empty());
        assert!(!q("*").matches("*"));
    }

    #[test]
    fn matching_needs_every_whole_word() {
        let query = q("Hello WORLD");
        assert!(query.matches("world, hello!"));
        assert!(!query.matches("hello worlds"));
        assert!(!query.matches("hello"));
        assert!(q("ünïcode").matches("ÜNÏCODE rocks"));
    }

    #[test]
    fn order_is_newest_first_and_total() {
        let a = SearchCursor {
            sent_at: 5,
            chat_id: ChatId(1),
            seq: Seq(3),
        };
        let b = SearchCursor {
            sent_at: 5,
            chat_id: ChatId(1),
            seq: Seq(2),
        };
        let c = SearchCursor {
            sent_at: 5,
            chat_id: ChatId(0),
            seq: Seq(9),
        };
        let d = SearchCursor {
            sent_at: 4,
            chat_id: ChatId(9),
            seq: Seq(9),
        };
        assert!(b.is_after(&a) && c.is_after(&b) && d.is_after(&c));
        assert!(!a.is_after(&a));
    }

    #[test]
    fn tokens_round_trip_and_reject_forgeries() {
        let query = q("hello");
        let at = SearchCursor {
            sent_at: 17,
            chat_id: ChatId(4),
            seq: Seq(2),
        };
        let t = encode_token(&query, None, at);
        assert_eq!(decode_token(&t, &query, None).unwrap(), at);
        assert!(decode_token(&t, &q("other"), None).is_err());
        assert!(decode_token(&t, &query, Some(ChatId(4))).is_err());
        for f in ["", "!!", "czE6", &"A".repeat(200)] {
            assert!(decode_token(f, &query, None).is_err(), "{f:?}");
        }
    }
}
