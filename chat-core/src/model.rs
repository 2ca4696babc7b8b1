//! The domain: users, chats, memberships, sessions and messages, and the inputs the stores take.

use crate::ids::{ChatId, Millis, Rev, Seq, TokenHash, UserId};
use serde::{Deserialize, Serialize};

/// A registered user, as clients see it (never the password hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user's id.
    pub user_id: UserId,
    /// The email, normalised to lower case; unique.
    pub email: String,
    /// The name shown to others.
    pub display_name: String,
    /// When the user registered.
    pub created_at: Millis,
}

/// A user together with the password hash, as the login path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserCredentials {
    /// The user.
    pub user: User,
    /// The argon2id hash in PHC string form.
    pub pw_hash: String,
}

/// What a store needs to create a user. The email is already normalised and the password hashed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewUser {
    /// Lower-cased, validated email.
    pub email: String,
    /// Validated display name.
    pub display_name: String,
    /// argon2id hash in PHC string form.
    pub pw_hash: String,
    /// Registration time.
    pub created_at: Millis,
}

/// A login session. Only the SHA-256 hash of the bearer token is stored, so a leaked database
/// does not leak usable tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Whose session.
    pub user_id: UserId,
    /// When the token stops working.
    pub expires_at: Millis,
}

/// What a store needs to create a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSession {
    /// SHA-256 of the bearer token.
    pub token_hash: TokenHash,
    /// Whose session.
    pub user_id: UserId,
    /// Creation time.
    pub created_at: Millis,
    /// Expiry time.
    pub expires_at: Millis,
}

/// A member's role in a chat.
///
/// Non-exhaustive: a later version may add roles, so a `match` needs a wildcard arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Role {
    /// Created the chat; may add and remove anyone.
    Owner,
    /// May add and remove members (not the owner).
    Admin,
    /// May read and send.
    Member,
}

impl Role {
    /// The role's name as stored in databases and sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// Parses a stored role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }

    /// Whether this role may add and remove other members.
    pub fn can_manage_members(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

/// A chat's row in the Chats table. Its `last_seq` belongs to the message store (which may be
/// another database), so it is not here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chat {
    /// The chat's id.
    pub chat_id: ChatId,
    /// The chat's name.
    pub chat_name: String,
    /// Who created it.
    pub owner_id: UserId,
    /// When it was created.
    pub created_at: Millis,
    /// A group chat, or the one direct chat of two people.
    #[serde(default)]
    pub kind: ChatKind,
}

/// What kind of chat a chat is (protocol "Additions": direct chats).
///
/// Non-exhaustive: a later version may add kinds, so a `match` needs a wildcard arm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChatKind {
    /// A chat of any number of members, created by `POST /v1/chats`.
    #[default]
    Group,
    /// The one chat between two people (`POST /v1/direct`): exactly those two, no one added.
    Direct,
}

impl ChatKind {
    /// The kind's name as stored in databases and sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatKind::Group => "group",
            ChatKind::Direct => "direct",
        }
    }

    /// Parses a stored kind name.
    pub fn parse(s: &str) -> Option<ChatKind> {
        match s {
            "group" => Some(ChatKind::Group),
            "direct" => Some(ChatKind::Direct),
            _ => None,
        }
    }
}

/// Where one member has read a chat up to (protocol "Additions": read state). A member who
/// never read it has `last_read_seq` 0 and no `read_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMarker {
    /// The chat.
    pub chat_id: ChatId,
    /// The reader.
    pub user_id: UserId,
    /// The highest `seq` the member has read; it only moves forward.
    pub last_read_seq: Seq,
    /// When the marker last moved (server time).
    pub read_at: Option<Millis>,
}

/// One chat of a user, as the chat list needs it: the chat, the user's role and read marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserChat {
    /// The chat.
    pub chat: Chat,
    /// The user's role in it.
    pub role: Role,
    /// The user's read marker in it (0 when never read).
    pub last_read_seq: Seq,
}

/// Where one chat's messages stand, relative to a reader's marker: what the chat list shows.
/// See [`MessageStore::activity`](crate::MessageStore::activity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatActivity {
    /// The chat's newest `seq`.
    pub last_seq: Seq,
    /// The newest message in its current state (a tombstone if it was deleted), `None` when
    /// the chat has no messages.
    pub last_message: Option<Message>,
    /// How many messages with `seq` above the reader's marker are tombstones.
    pub deleted_after: u64,
}

/// One row of the UserChat table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The member.
    pub user_id: UserId,
    /// Their role.
    pub role: Role,
}

/// What a store needs to create a chat with its first members in one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewChat {
    /// Validated name.
    pub chat_name: String,
    /// The creator, who becomes the owner.
    pub owner_id: UserId,
    /// Other initial members (role member). Duplicates and the owner are ignored.
    pub member_ids: Vec<UserId>,
    /// Creation time.
    pub created_at: Millis,
}

/// A stored message, exactly as the wire contract shows it.
///
/// Non-exhaustive: later versions may add fields. Outside this crate, build one with
/// [`Message::new`] and set the other (public) fields after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Message {
    /// The chat it belongs to.
    pub chat_id: ChatId,
    /// Its position in the chat: dense, starting at 1.
    pub seq: Seq,
    /// Who sent it.
    pub sender_id: UserId,
    /// The text (validated, trimmed).
    pub msg_text: String,
    /// The server's time when it was stored.
    pub sent_at: Millis,
    /// The sender's own clock, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Millis>,
    /// The sender's idempotency key, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// The `seq` of the message this one replies to, in the same chat.
    #[serde(default)]
    pub reply_to_seq: Option<Seq>,
    /// When its text was last edited (server time), if ever.
    #[serde(default)]
    pub edited_at: Option<Millis>,
    /// Whether it was deleted: a tombstone keeps its `seq`, with no text and no reactions.
    #[serde(default)]
    pub deleted: bool,
    /// Emoji reactions, ordered by first use.
    #[serde(default)]
    pub reactions: Vec<Reaction>,
    /// The chat revision of its latest change (its append, if it never changed). In a chat
    /// none of whose messages ever changed, `rev == seq` for every message: each append takes
    /// the next revision.
    #[serde(default)]
    pub rev: Rev,
}

impl Message {
    /// A message as appended at `seq` and never changed since: no `timestamp`,
    /// `client_msg_id` or `reply_to_seq`, not edited, deleted or reacted to, and `rev == seq`
    /// (the revision of its append in a chat none of whose messages changed). Set the other
    /// fields after it where they differ.
    ///
    /// ```
    /// use chat_core::{ChatId, Message, Rev, Seq, UserId};
    ///
    /// let mut m = Message::new(ChatId(1), Seq(7), UserId(3), "hello", 1_700_000_000_000);
    /// m.reply_to_seq = Some(Seq(5));
    /// m.rev = Rev(9);
    /// assert_eq!(m.msg_text, "hello");
    /// ```
    pub fn new(
        chat_id: ChatId,
        seq: Seq,
        sender_id: UserId,
        msg_text: impl Into<String>,
        sent_at: Millis,
    ) -> Self {
        Message {
            chat_id,
            seq,
            sender_id,
            msg_text: msg_text.into(),
            sent_at,
            timestamp: None,
            client_msg_id: None,
            reply_to_seq: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            rev: Rev(seq.get()),
        }
    }
}

/// What the server asks a [`MessageStore`](crate::MessageStore) to append. The store assigns
/// `seq`; everything else is already validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// Target chat.
    pub chat_id: ChatId,
    /// Sender (a member; the server checked).
    pub sender_id: UserId,
    /// Validated text.
    pub msg_text: String,
    /// Server time.
    pub sent_at: Millis,
    /// Sender's clock.
    pub timestamp: Option<Millis>,
    /// Idempotency key; `(chat_id, sender_id, client_msg_id)` is unique.
    pub client_msg_id: Option<String>,
    /// The `seq` of the message this one replies to, in the same chat. The server checked that
    /// it exists (`1 <= reply_to_seq <= last_seq`: seqs are dense), so the store only keeps it.
    pub reply_to_seq: Option<Seq>,
}

impl NewMessage {
    /// The message as stored at `seq` with revision `rev`: as given, and not (yet) edited,
    /// deleted or reacted to.
    pub fn stored(self, seq: Seq, rev: Rev) -> Message {
        Message {
            chat_id: self.chat_id,
            seq,
            sender_id: self.sender_id,
            msg_text: self.msg_text,
            sent_at: self.sent_at,
            timestamp: self.timestamp,
            client_msg_id: self.client_msg_id,
            reply_to_seq: self.reply_to_seq,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            rev,
        }
    }
}

/// One emoji's reactions on a message, as the wire contract shows them: `count` equals
/// `user_ids.len()`, users in the order they reacted.
///
/// Non-exhaustive: later versions may add fields. Outside this crate, build one with
/// [`Reaction::new`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Reaction {
    /// The emoji (validated by [`Limits::emoji`](crate::Limits::emoji)).
    pub emoji: String,
    /// How many users reacted with it.
    pub count: u32,
    /// Who reacted with it.
    pub user_ids: Vec<UserId>,
}

impl Reaction {
    /// `emoji` as reacted by `user_ids`, in the order they reacted; `count` is their number.
    pub fn new(emoji: impl Into<String>, user_ids: Vec<UserId>) -> Self {
        Reaction {
            emoji: emoji.into(),
            count: u32::try_from(user_ids.len()).unwrap_or(u32::MAX),
            user_ids,
        }
    }
}

/// Adds (`add: true`) or takes back `user`'s `emoji` among a message's `reactions`, in place:
/// the one rule every store applies, so every backend gives the same state.
///
/// Reactions stay ordered by first use; an emoji whose last user takes it back disappears (and
/// goes to the end if used again). Returns whether anything changed: adding a reaction the user
/// already has, or taking back one they do not have, changes nothing (and so takes no `rev`).
/// A new distinct emoji beyond `max_distinct` is [`Error::InvalidArgument`](crate::Error).
pub fn apply_reaction(
    reactions: &mut Vec<Reaction>,
    user: UserId,
    emoji: &str,
    add: bool,
    max_distinct: usize,
) -> crate::Result<bool> {
    let at = reactions.iter().position(|r| r.emoji == emoji);
    match (add, at) {
        (true, Some(i)) => {
            let r = &mut reactions[i];
            if r.user_ids.contains(&user) {
                return Ok(false);
            }
            r.user_ids.push(user);
            r.count = u32::try_from(r.user_ids.len()).unwrap_or(u32::MAX);
            Ok(true)
        }
        (true, None) => {
            if reactions.len() >= max_distinct {
                return Err(crate::Error::InvalidArgument(format!(
                    "a message has at most {max_distinct} distinct reactions"
                )));
            }
            reactions.push(Reaction::new(emoji, vec![user]));
            Ok(true)
        }
        (false, Some(i)) => {
            let r = &mut reactions[i];
            let before = r.user_ids.len();
            r.user_ids.retain(|&u| u != user);
            if r.user_ids.len() == before {
                return Ok(false);
            }
            r.count = u32::try_from(r.user_ids.len()).unwrap_or(u32::MAX);
            if r.user_ids.is_empty() {
                reactions.remove(i);
            }
            Ok(true)
        }
        (false, None) => Ok(false),
    }
}

/// The state `current` takes under `change`, or `None` when the change changes nothing: the
/// rule every store applies (then gives the result the chat's next [`Rev`], which this leaves
/// to the store).
///
/// - An edit sets the text and `edited_at`; the same text again changes nothing. A deleted
///   message cannot be edited ([`Error::Conflict`](crate::Error::Conflict)).
/// - A delete empties the text and the reactions and marks the tombstone; deleting a tombstone
///   again changes nothing.
/// - A reaction follows [`apply_reaction`] with the contract's limit of distinct emoji; adding
///   one to a tombstone is a conflict, taking one back from it changes nothing.
pub fn apply_change(current: &Message, change: &MessageChange) -> crate::Result<Option<Message>> {
    let mut next = current.clone();
    match change {
        MessageChange::Edit {
            msg_text,
            edited_at,
        } => {
            if current.deleted {
                return Err(crate::Error::Conflict(
                    "a deleted message cannot be edited".into(),
                ));
            }
            if current.msg_text == *msg_text {
                return Ok(None);
            }
            next.msg_text.clone_from(msg_text);
            next.edited_at = Some(*edited_at);
        }
        MessageChange::Delete => {
            if current.deleted {
                return Ok(None);
            }
            next.deleted = true;
            next.msg_text = String::new();
            next.reactions = Vec::new();
        }
        MessageChange::React {
            user_id,
            emoji,
            add,
        } => {
            if current.deleted {
                return if *add {
                    Err(crate::Error::Conflict(
                        "a deleted message takes no reactions".into(),
                    ))
                } else {
                    Ok(None)
                };
            }
            let max = crate::Limits::default().max_reactions_per_message;
            if !apply_reaction(&mut next.reactions, *user_id, emoji, *add, max)? {
                return Ok(None);
            }
        }
    }
    Ok(Some(next))
}

/// A change to a stored message (protocol "Additions": messages that change). Each one takes
/// the chat's next [`Rev`]; the message keeps its `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageChange {
    /// New text (validated); the message gets `edited_at`. Only for a message not deleted.
    Edit {
        /// The new text.
        msg_text: String,
        /// When it was edited (server time).
        edited_at: Millis,
    },
    /// The message becomes a tombstone: its text and reactions are gone everywhere, its `seq`
    /// stays. Deleting a tombstone again changes nothing.
    Delete,
    /// A user adds (`add: true`) or takes back an emoji reaction; idempotent per
    /// (message, user, emoji).
    React {
        /// Who reacts.
        user_id: UserId,
        /// The emoji (validated: 1 to 32 bytes).
        emoji: String,
        /// Add or remove.
        add: bool,
    },
}

/// The result of an append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The stored message.
    pub message: Message,
    /// `true` if this call stored it; `false` if a message with the same
    /// `(chat_id, sender_id, client_msg_id)` already existed and is returned instead.
    pub created: bool,
}

/// Which messages of one chat to read. Every variant returns messages in ascending `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchQuery {
    /// The newest `limit` messages.
    Latest {
        /// Maximum number of messages.
        limit: u32,
    },
    /// The newest `limit` messages with `seq < before`.
    Before {
        /// Exclusive upper bound.
        before: Seq,
        /// Maximum number of messages.
        limit: u32,
    },
    /// The oldest `limit` messages with `seq > after`.
    After {
        /// Exclusive lower bound.
        after: Seq,
        /// Maximum number of messages.
        limit: u32,
    },
}

impl FetchQuery {
    /// The page size this query asks for.
    pub fn limit(&self) -> u32 {
        match *self {
            FetchQuery::Latest { limit }
            | FetchQuery::Before { limit, .. }
            | FetchQuery::After { limit, .. } => limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(reactions: &[Reaction]) -> Vec<(&str, u32, Vec<i64>)> {
        reactions
            .iter()
            .map(|r| {
                (
                    r.emoji.as_str(),
                    r.count,
                    r.user_ids.iter().map(|u| u.0).collect(),
                )
            })
            .collect()
    }

    /// One reaction step with the contract's limit; `Some(changed)`, `None` on an error.
    fn react(r: &mut Vec<Reaction>, user: i64, emoji: &str, add: bool) -> Option<bool> {
        apply_reaction(r, UserId(user), emoji, add, 20).ok()
    }

    #[test]
    fn reactions_are_idempotent_per_user_and_ordered_by_first_use() {
        let mut r = Vec::new();
        assert_eq!(react(&mut r, 1, "👍", true), Some(true));
        assert_eq!(react(&mut r, 2, "🎉", true), Some(true));
        assert_eq!(react(&mut r, 2, "👍", true), Some(true));
        // Repeats change nothing.
        assert_eq!(react(&mut r, 1, "👍", true), Some(false));
        assert_eq!(react(&mut r, 3, "🎉", false), Some(false));
        assert_eq!(react(&mut r, 3, "🙂", false), Some(false));
        assert_eq!(state(&r), vec![("👍", 2, vec![1, 2]), ("🎉", 1, vec![2])]);
        // The last user taking one back removes it; used again, it goes to the end.
        assert_eq!(react(&mut r, 1, "👍", false), Some(true));
        assert_eq!(react(&mut r, 2, "👍", false), Some(true));
        assert_eq!(state(&r), vec![("🎉", 1, vec![2])]);
        assert_eq!(react(&mut r, 1, "👍", true), Some(true));
        assert_eq!(state(&r), vec![("🎉", 1, vec![2]), ("👍", 1, vec![1])]);
    }

    #[test]
    fn at_most_max_distinct_emoji() {
        let mut r = Vec::new();
        for i in 0..3 {
            assert_eq!(
                apply_reaction(&mut r, UserId(1), &format!("e{i}"), true, 3).ok(),
                Some(true)
            );
        }
        assert!(matches!(
            apply_reaction(&mut r, UserId(1), "e3", true, 3),
            Err(crate::Error::InvalidArgument(_))
        ));
        // An emoji already there can still gain users.
        assert_eq!(
            apply_reaction(&mut r, UserId(2), "e0", true, 3).ok(),
            Some(true)
        );
        assert_eq!(r.len(), 3);
    }
}
