//! Identifier newtypes: users, chats, per-chat sequence numbers and revisions, and the hash
//! that names a session.
//!
//! All of them are JSON integers below 2^53 on the wire (the contract), stored as signed 64-bit
//! integers by every backend, so they convert to and from `i64` without loss.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Largest id the wire contract allows (JSON integers below 2^53 stay exact in every language).
pub const MAX_WIRE_ID: i64 = (1 << 53) - 1;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl $name {
            /// The raw integer.
            pub const fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<i64> for $name {
            fn from(v: i64) -> Self {
                Self(v)
            }
        }

        impl From<$name> for i64 {
            fn from(v: $name) -> i64 {
                v.0
            }
        }
    };
}

id_type!(
    /// A user's id (the `user_id` of the Users table).
    UserId
);
id_type!(
    /// A chat's id (the `chat_id` of the Chats table).
    ChatId
);
id_type!(
    /// A message's position in its chat: 1, 2, 3, … with no holes. `Seq(0)` means "no message
    /// yet" (the `last_seq` of an empty chat).
    Seq
);

impl Seq {
    /// The position before any message.
    pub const ZERO: Seq = Seq(0);

    /// The next position.
    pub const fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

id_type!(
    /// A chat's revision: every change to one of its messages (a new message, an edit, a
    /// delete, a reaction added or removed) takes the chat's next `rev`, so a client that keeps
    /// one number can read exactly what changed since. `Rev(0)` means "no change yet".
    Rev
);

impl Rev {
    /// The revision before any change.
    pub const ZERO: Rev = Rev(0);
}

/// SHA-256 of a bearer token: how a session is stored and named. The token itself is never
/// stored, so a leaked database holds no usable token.
///
/// On the wire between nodes (in `Event::SessionRevoked`) it travels as 64 lower-case hex
/// digits; its `Debug` shows only the first four bytes, so logs do not collect whole hashes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// The 32 bytes, as stores keep them.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        use std::fmt::Write as _;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    /// Parses 64 hex digits (either case); anything else is `None`.
    pub fn from_hex(hex: &str) -> Option<TokenHash> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(TokenHash(out))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "TokenHash({:02x}{:02x}{:02x}{:02x}…)",
            b[0], b[1], b[2], b[3]
        )
    }
}

impl From<[u8; 32]> for TokenHash {
    fn from(bytes: [u8; 32]) -> Self {
        TokenHash(bytes)
    }
}

impl Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TokenHash::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom("a token hash is 64 hex digits"))
    }
}

/// Unix time in milliseconds, as every time on the wire is.
pub type Millis = i64;

/// The current Unix time in milliseconds.
///
/// Reading the clock is not I/O in the sense this crate avoids; it lives here so every crate
/// stamps times the same way.
pub fn now_millis() -> Millis {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hashes_round_trip_as_hex_and_reject_anything_else() {
        let h = TokenHash([0xab; 32]);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
        assert_eq!(serde_json::from_str::<TokenHash>(&json).unwrap(), h);
        assert_eq!(TokenHash::from_hex(&"AB".repeat(32)), Some(h));
        for bad in [
            "",
            "ab",
            &"zz".repeat(32),
            &"é".repeat(32),
            &"ab".repeat(33),
        ] {
            assert_eq!(TokenHash::from_hex(bad), None, "{bad:?}");
        }
        assert_eq!(format!("{h:?}"), "TokenHash(abababab…)");
    }
}
