//! The contract's limits and the validation of everything a client sends.
//!
//! Validation returns the value the server stores (trimmed text, lower-cased email) or an
//! [`Error::InvalidArgument`] whose message says which field is wrong and why.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Limits of the contract. `Default` gives the documented defaults; every one is configurable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Maximum `msg_text` length in bytes of UTF-8, after trimming.
    pub max_msg_bytes: usize,
    /// Maximum `chat_name` length in characters, after trimming.
    pub max_chat_name_chars: usize,
    /// Maximum members of one chat.
    pub max_members: usize,
    /// Maximum REST request body in bytes.
    pub max_body_bytes: usize,
    /// Maximum WebSocket frame (and message) in bytes.
    pub max_frame_bytes: usize,
    /// Maximum `client_msg_id` length in bytes.
    pub max_client_msg_id_bytes: usize,
    /// Page size when the request gives none.
    pub default_page: u32,
    /// Largest page a request may ask for.
    pub max_page: u32,
    /// Sustained sends per second per user (token bucket refill rate).
    pub send_rate_per_sec: u32,
    /// Sends a user may make at once (token bucket size).
    pub send_burst: u32,
    /// Shortest password in characters.
    pub min_password_chars: usize,
    /// Longest password in bytes (argon2 input is bounded so hashing cost is bounded).
    pub max_password_bytes: usize,
    /// Longest email in bytes (RFC 5321 path limit).
    pub max_email_bytes: usize,
    /// Longest display name in characters.
    pub max_display_name_chars: usize,
    /// Longest reaction emoji in bytes of UTF-8.
    pub max_emoji_bytes: usize,
    /// Most distinct emoji on one message.
    pub max_reactions_per_message: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_msg_bytes: 4096,
            max_chat_name_chars: 128,
            max_members: 10_000,
            max_body_bytes: 64 * 1024,
            max_frame_bytes: 64 * 1024,
            max_client_msg_id_bytes: 64,
            default_page: 50,
            max_page: 500,
            send_rate_per_sec: 20,
            send_burst: 100,
            min_password_chars: 8,
            max_password_bytes: 1024,
            max_email_bytes: 254,
            max_display_name_chars: 64,
            max_emoji_bytes: 32,
            max_reactions_per_message: 20,
        }
    }
}

impl Limits {
    /// Validates message text; returns it trimmed.
    pub fn msg_text(&self, text: &str) -> Result<String> {
        let t = text.trim();
        if t.is_empty() {
            return Err(Error::InvalidArgument("msg_text must not be empty".into()));
        }
        if t.len() > self.max_msg_bytes {
            return Err(Error::InvalidArgument(format!(
                "msg_text is {} bytes; the limit is {}",
                t.len(),
                self.max_msg_bytes
            )));
        }
        Ok(t.to_owned())
    }

    /// Validates a chat name; returns it trimmed.
    pub fn chat_name(&self, name: &str) -> Result<String> {
        let t = name.trim();
        let n = t.chars().count();
        if n == 0 || n > self.max_chat_name_chars {
            return Err(Error::InvalidArgument(format!(
                "chat_name must be 1 to {} characters",
                self.max_chat_name_chars
            )));
        }
        if t.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(
                "chat_name must not contain control characters".into(),
            ));
        }
        Ok(t.to_owned())
    }

    /// Validates a reaction emoji: 1 to 32 bytes of UTF-8 (it arrives percent-decoded from the
    /// path), no control characters or whitespace. Any such string is accepted, not only
    /// characters Unicode calls emoji: clients differ in what they offer (`+1`, skin tones,
    /// ZWJ sequences), and the store only compares bytes.
    pub fn emoji(&self, emoji: &str) -> Result<()> {
        if emoji.is_empty() || emoji.len() > self.max_emoji_bytes {
            return Err(Error::InvalidArgument(format!(
                "emoji must be 1 to {} bytes",
                self.max_emoji_bytes
            )));
        }
        if emoji.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Error::InvalidArgument(
                "emoji must not contain control characters or whitespace".into(),
            ));
        }
        Ok(())
    }

    /// Validates a client message id (1 to 64 bytes, no control characters).
    pub fn client_msg_id(&self, id: &str) -> Result<()> {
        if id.is_empty() || id.len() > self.max_client_msg_id_bytes {
            return Err(Error::InvalidArgument(format!(
                "client_msg_id must be 1 to {} bytes",
                self.max_client_msg_id_bytes
            )));
        }
        if id.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(
                "client_msg_id must not contain control characters".into(),
            ));
        }
        Ok(())
    }

    /// Validates an email; returns it trimmed and lower-cased (emails are unique
    /// case-insensitively).
    pub fn email(&self, email: &str) -> Result<String> {
        let e = email.trim();
        let bad = || Error::InvalidArgument("email must look like name@domain".into());
        if e.is_empty() || e.len() > self.max_email_bytes {
            return Err(Error::InvalidArgument(format!(
                "email must be 1 to {} bytes",
                self.max_email_bytes
            )));
        }
        let (local, domain) = e.split_once('@').ok_or_else(bad)?;
        if local.is_empty()
            || domain.is_empty()
            || domain.contains('@')
            || e.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad());
        }
        Ok(e.to_lowercase())
    }

    /// Validates a new password (the login path only bounds its length).
    pub fn new_password(&self, password: &str) -> Result<()> {
        if password.chars().count() < self.min_password_chars {
            return Err(Error::InvalidArgument(format!(
                "password must be at least {} characters",
                self.min_password_chars
            )));
        }
        self.password_len(password)
    }

    /// Bounds a password's length, so hashing cost is bounded.
    pub fn password_len(&self, password: &str) -> Result<()> {
        if password.len() > self.max_password_bytes {
            return Err(Error::InvalidArgument(format!(
                "password must be at most {} bytes",
                self.max_password_bytes
            )));
        }
        Ok(())
    }

    /// Validates a display name; an absent or blank one becomes the email's local part.
    pub fn display_name(&self, name: Option<&str>, email: &str) -> Result<String> {
        let t = name.map(str::trim).unwrap_or("");
        let t = if t.is_empty() {
            email.split('@').next().unwrap_or(email)
        } else {
            t
        };
        let n = t.chars().count();
        if n == 0 || n > self.max_display_name_chars || t.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(format!(
                "display_name must be 1 to {} printable characters",
                self.max_display_name_chars
            )));
        }
        Ok(t.to_owned())
    }

    /// Validates a requested page size; `None` gives the default.
    pub fn page_limit(&self, limit: Option<i64>) -> Result<u32> {
        match limit {
            // Clamped (found by fuzzing the config): a `default_page` of 0, or above
            // `max_page`, would otherwise give pages no request could ask for.
            None => Ok(self.default_page.clamp(1, self.max_page.max(1))),
            Some(l) if l >= 1 && l <= i64::from(self.max_page) => {
                u32::try_from(l).map_err(|_| Error::InvalidArgument("bad limit".into()))
            }
            Some(l) => Err(Error::InvalidArgument(format!(
                "limit must be 1 to {}, got {l}",
                self.max_page
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_trimmed_and_bounded_in_bytes() {
        let l = Limits::default();
        assert_eq!(l.msg_text("  hi \n").unwrap(), "hi");
        assert!(l.msg_text("   ").is_err());
        assert!(l.msg_text(&"a".repeat(4096)).is_ok());
        assert!(l.msg_text(&"a".repeat(4097)).is_err());
        // 2-byte characters count as two bytes.
        assert!(l.msg_text(&"é".repeat(2049)).is_err());
    }

    #[test]
    fn emails_are_normalised() {
        let l = Limits::default();
        assert_eq!(l.email(" Ann@Example.COM ").unwrap(), "ann@example.com");
        for bad in ["", "ann", "@x", "a@", "a b@x", "a@b@c"] {
            assert!(l.email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn page_limits() {
        let l = Limits::default();
        assert_eq!(l.page_limit(None).unwrap(), 50);
        assert_eq!(l.page_limit(Some(500)).unwrap(), 500);
        assert!(l.page_limit(Some(0)).is_err());
        assert!(l.page_limit(Some(501)).is_err());
        assert!(l.page_limit(Some(-1)).is_err());
        // Found by fuzzing: a configured default outside 1..=max_page is clamped into it.
        let zero = Limits {
            default_page: 0,
            ..Limits::default()
        };
        assert_eq!(zero.page_limit(None).unwrap(), 1);
        let big = Limits {
            default_page: 900,
            max_page: 20,
            ..Limits::default()
        };
        assert_eq!(big.page_limit(None).unwrap(), 20);
    }

    #[test]
    fn emoji() {
        let l = Limits::default();
        let long_ok = "x".repeat(32);
        for ok in ["👍", "+1", "👩🏽‍💻", "🇺🇦", long_ok.as_str()] {
            assert!(l.emoji(ok).is_ok(), "{ok:?}");
        }
        let (too_long, too_many_bytes) = ("x".repeat(33), "👍".repeat(9));
        for bad in [
            "",
            " ",
            "a b",
            "\u{7}",
            too_long.as_str(),
            too_many_bytes.as_str(),
        ] {
            assert!(
                matches!(l.emoji(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn client_msg_ids() {
        let l = Limits::default();
        assert!(l.client_msg_id("abc-123").is_ok());
        assert!(l.client_msg_id("").is_err());
        assert!(l.client_msg_id(&"x".repeat(65)).is_err());
        assert!(l.client_msg_id("a\nb").is_err());
    }
}
