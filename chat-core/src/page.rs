//! Opaque page tokens for `GET /v1/fetch`.
//!
//! A token names its chat and a position, so a token from another chat (or a forged one) is
//! rejected as `invalid_argument` and can never read another chat's data. The encoding is
//! base64url of a short versioned text; clients must treat it as opaque.

use crate::error::{Error, Result};
use crate::ids::{ChatId, Seq};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Where the next page starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageToken {
    /// Older messages: those with `seq < before`.
    Before {
        /// The chat the token belongs to.
        chat_id: ChatId,
        /// Exclusive upper bound.
        before: Seq,
    },
    /// Newer messages: those with `seq > after`.
    After {
        /// The chat the token belongs to.
        chat_id: ChatId,
        /// Exclusive lower bound.
        after: Seq,
    },
}

/// Longest token a client may send; anything longer is not one of ours.
const MAX_TOKEN_LEN: usize = 64;

impl PageToken {
    /// The chat this token pages through.
    pub fn chat_id(&self) -> ChatId {
        match *self {
            PageToken::Before { chat_id, .. } | PageToken::After { chat_id, .. } => chat_id,
        }
    }

    /// The opaque string form.
    pub fn encode(&self) -> String {
        let raw = match *self {
            PageToken::Before { chat_id, before } => format!("v1:{chat_id}:b:{before}"),
            PageToken::After { chat_id, after } => format!("v1:{chat_id}:a:{after}"),
        };
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Parses a token and checks that it belongs to `chat_id`.
    pub fn decode(token: &str, chat_id: ChatId) -> Result<PageToken> {
        let bad = || Error::InvalidArgument("page_token is not valid for this chat".into());
        let raw = opaque_text(token, MAX_TOKEN_LEN).ok_or_else(bad)?;
        let mut parts = raw.split(':');
        let (Some("v1"), Some(chat), Some(dir), Some(seq), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        let chat: i64 = chat.parse().map_err(|_| bad())?;
        let seq: i64 = seq.parse().map_err(|_| bad())?;
        if ChatId(chat) != chat_id || seq < 0 {
            return Err(bad());
        }
        let parsed = match dir {
            "b" if seq >= 1 => PageToken::Before {
                chat_id,
                before: Seq(seq),
            },
            "a" => PageToken::After {
                chat_id,
                after: Seq(seq),
            },
            _ => return Err(bad()),
        };
        // Canonical form only (no leading zeros, signs or padding): one token per position.
        if parsed.encode() != token {
            return Err(bad());
        }
        Ok(parsed)
    }
}

/// The text inside an opaque page token (URL-safe base64 without padding), or `None` when it is
/// empty, longer than `max_len` or not base64 of UTF-8. Shared by every kind of page token.
pub(crate) fn opaque_text(token: &str, max_len: usize) -> Option<String> {
    if token.is_empty() || token.len() > max_len {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = PageToken::Before {
            chat_id: ChatId(7),
            before: Seq(51),
        };
        assert_eq!(PageToken::decode(&t.encode(), ChatId(7)).unwrap(), t);
        let a = PageToken::After {
            chat_id: ChatId(7),
            after: Seq(0),
        };
        assert_eq!(PageToken::decode(&a.encode(), ChatId(7)).unwrap(), a);
    }

    #[test]
    fn foreign_and_forged_tokens_are_rejected() {
        let t = PageToken::Before {
            chat_id: ChatId(7),
            before: Seq(51),
        }
        .encode();
        assert!(PageToken::decode(&t, ChatId(8)).is_err());
        let forged = [
            "",
            "garbage",
            "!!!!",
            &URL_SAFE_NO_PAD.encode("v1:7:b:0"),
            &URL_SAFE_NO_PAD.encode("v1:7:b:-3"),
            &URL_SAFE_NO_PAD.encode("v1:07:b:3"),
            &URL_SAFE_NO_PAD.encode("v1:7:x:3"),
            &URL_SAFE_NO_PAD.encode("v2:7:b:3"),
            &URL_SAFE_NO_PAD.encode("v1:7:b:3:extra"),
            &URL_SAFE_NO_PAD.encode("v1:7:b:99999999999999999999999"),
        ];
        for f in forged {
            assert!(PageToken::decode(f, ChatId(7)).is_err(), "{f:?}");
        }
        assert!(PageToken::decode(&"A".repeat(1000), ChatId(7)).is_err());
    }
}
