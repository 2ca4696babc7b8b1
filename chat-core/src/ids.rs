//! Identifier newtypes: users, chats and per-chat sequence numbers.
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
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
