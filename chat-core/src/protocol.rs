//! The wire contract (v1): every REST body and WebSocket frame as serde types.
//!
//! The contract lets newer clients add fields, so unknown fields
//! are ignored. Missing required fields and wrong types fail to deserialize, which the server
//! answers with `bad_request`.

use crate::error::ErrorCode;
use crate::ids::{ChatId, Millis, Rev, Seq, UserId};
use crate::model::{ChatKind, Message, Role, User};
use serde::{Deserialize, Serialize};

/// `POST /v1/users` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Email; unique case-insensitively.
    pub email: String,
    /// Password; stored only as an argon2id hash.
    pub password: String,
    /// Optional display name (defaults to the email's local part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// A user as `POST /v1/users` and `GET /v1/users/me` return it.
///
/// Non-exhaustive: later versions may add fields. Outside this crate, build one with
/// [`UserView::new`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UserView {
    /// The user's id.
    pub user_id: UserId,
    /// Normalised email.
    pub email: String,
    /// Display name.
    pub display_name: String,
}

impl UserView {
    /// A user's own view of themselves.
    pub fn new(user_id: UserId, email: impl Into<String>, display_name: impl Into<String>) -> Self {
        UserView {
            user_id,
            email: email.into(),
            display_name: display_name.into(),
        }
    }
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView {
            user_id: u.user_id,
            email: u.email,
            display_name: u.display_name,
        }
    }
}

/// `POST /v1/sessions` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRequest {
    /// Email (any case).
    pub email: String,
    /// Password.
    pub password: String,
}

/// `POST /v1/sessions` answer.
///
/// Non-exhaustive: later versions may add fields. Outside this crate, build one with
/// [`SessionView::new`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionView {
    /// Bearer token for `Authorization: Bearer <token>`.
    pub token: String,
    /// Whose session.
    pub user_id: UserId,
    /// When the token stops working.
    pub expires_at: Millis,
}

impl SessionView {
    /// A session of `user_id` whose bearer `token` works until `expires_at`.
    pub fn new(token: impl Into<String>, user_id: UserId, expires_at: Millis) -> Self {
        SessionView {
            token: token.into(),
            user_id,
            expires_at,
        }
    }
}

/// `POST /v1/chats` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateChatRequest {
    /// The chat's name.
    pub chat_name: String,
    /// Initial members besides the creator.
    #[serde(default)]
    pub member_ids: Vec<UserId>,
}

/// A chat with its members: `POST /v1/chats`, `GET /v1/chats/{id}` and `chat_updated` frames.
///
/// Non-exhaustive: later versions may add fields. Outside this crate, build one with
/// [`ChatView::new`] and set the other (public) fields after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatView {
    /// The chat's id.
    pub chat_id: ChatId,
    /// The chat's name.
    pub chat_name: String,
    /// Every member, the creator included.
    pub member_ids: Vec<UserId>,
    /// The newest message's `seq` (0 when empty).
    pub last_seq: Seq,
    /// The creator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<UserId>,
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Millis>,
    /// `group` or `direct`.
    #[serde(default)]
    pub kind: ChatKind,
    /// Every member with their display name and role, ordered by user id.
    #[serde(default)]
    pub members: Vec<MemberView>,
}

impl ChatView {
    /// A chat with these members whose newest message is `last_seq`; no `owner_id` or
    /// `created_at`, kind [`ChatKind::Group`] and no `members` details. Set those after it.
    pub fn new(
        chat_id: ChatId,
        chat_name: impl Into<String>,
        member_ids: Vec<UserId>,
        last_seq: Seq,
    ) -> Self {
        ChatView {
            chat_id,
            chat_name: chat_name.into(),
            member_ids,
            last_seq,
            owner_id: None,
            created_at: None,
            kind: ChatKind::default(),
            members: Vec::new(),
        }
    }
}

/// A member as `GET /v1/chats/{chat_id}` lists them.
///
/// Non-exhaustive: later versions may add fields. Outside this crate, build one with
/// [`MemberView::new`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MemberView {
    /// The member.
    pub user_id: UserId,
    /// Their display name.
    pub display_name: String,
    /// Their role in the chat.
    pub role: Role,
}

impl MemberView {
    /// A member with their display name and role.
    pub fn new(user_id: UserId, display_name: impl Into<String>, role: Role) -> Self {
        MemberView {
            user_id,
            display_name: display_name.into(),
            role,
        }
    }
}

/// One entry of `GET /v1/chats`.
///
/// Non-exhaustive: later versions may add fields. Outside this crate, build one with
/// [`ChatSummary::new`] and set the other (public) fields after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatSummary {
    /// The chat's id.
    pub chat_id: ChatId,
    /// The chat's name.
    pub chat_name: String,
    /// The newest message's `seq` (0 when empty).
    pub last_seq: Seq,
    /// The caller's role in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// `group` or `direct`.
    #[serde(default)]
    pub kind: ChatKind,
    /// The caller's read marker.
    #[serde(default)]
    pub last_read_seq: Seq,
    /// Messages above the marker sent by others and not deleted: exact.
    #[serde(default)]
    pub unread_count: u64,
    /// The newest message in its current state, or null for an empty chat.
    #[serde(default)]
    pub last_message: Option<Message>,
}

impl ChatSummary {
    /// A chat list entry whose newest message is `last_seq`: no role, kind
    /// [`ChatKind::Group`], read marker 0, nothing unread and no `last_message`. Set those
    /// after it.
    pub fn new(chat_id: ChatId, chat_name: impl Into<String>, last_seq: Seq) -> Self {
        ChatSummary {
            chat_id,
            chat_name: chat_name.into(),
            last_seq,
            role: None,
            kind: ChatKind::default(),
            last_read_seq: Seq(0),
            unread_count: 0,
            last_message: None,
        }
    }
}

/// `POST /v1/chats/{chat_id}/read` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRequest {
    /// The `seq` read up to (at most the chat's `last_seq`).
    pub seq: Seq,
}

/// `POST /v1/chats/{chat_id}/read` answer: the caller's marker as it is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadState {
    /// The chat.
    pub chat_id: ChatId,
    /// The marker; it only moves forward.
    pub last_read_seq: Seq,
}

/// One member's entry in `GET /v1/chats/{chat_id}/receipts`.
///
/// Non-exhaustive: later versions may add fields. Outside this crate, build one with
/// [`Receipt::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Receipt {
    /// The member.
    pub user_id: UserId,
    /// Where they have read up to (0 when never).
    pub last_read_seq: Seq,
    /// When their marker last moved, null when never.
    pub read_at: Option<Millis>,
}

impl Receipt {
    /// A member's receipt: read up to `last_read_seq`, last moved at `read_at` (`None`: never).
    pub fn new(user_id: UserId, last_read_seq: Seq, read_at: Option<Millis>) -> Self {
        Receipt {
            user_id,
            last_read_seq,
            read_at,
        }
    }
}

/// `GET /v1/chats/{chat_id}/receipts` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptsResponse {
    /// Every member's receipt, ordered by user id.
    pub receipts: Vec<Receipt>,
}

/// One user's entry in `GET /v1/presence`.
///
/// Non-exhaustive: later versions may add fields. Outside this crate, build one with
/// [`PresenceView::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PresenceView {
    /// The user.
    pub user_id: UserId,
    /// Whether any connection of theirs is open on any node.
    pub online: bool,
    /// When they were last seen online (null when never, since presence was kept).
    pub last_seen: Option<Millis>,
}

impl PresenceView {
    /// A user's presence: online or not, last seen at `last_seen` (`None`: never recorded).
    pub fn new(user_id: UserId, online: bool, last_seen: Option<Millis>) -> Self {
        PresenceView {
            user_id,
            online,
            last_seen,
        }
    }
}

/// `GET /v1/presence` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceResponse {
    /// The asked users who share a chat with the caller, in the order asked.
    pub presence: Vec<PresenceView>,
}

/// Another user as anyone signed in may see them (`GET /v1/users/{id}`): never the email.
///
/// Non-exhaustive: later versions may add fields. Outside this crate, build one with
/// [`PublicUser::new`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PublicUser {
    /// The user's id.
    pub user_id: UserId,
    /// Their display name.
    pub display_name: String,
}

impl PublicUser {
    /// Another user as anyone signed in may see them.
    pub fn new(user_id: UserId, display_name: impl Into<String>) -> Self {
        PublicUser {
            user_id,
            display_name: display_name.into(),
        }
    }
}

impl From<User> for PublicUser {
    fn from(u: User) -> Self {
        PublicUser {
            user_id: u.user_id,
            display_name: u.display_name,
        }
    }
}

/// `PATCH /v1/users/me` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateMeRequest {
    /// The new display name.
    pub display_name: String,
}

/// `PATCH /v1/chats/{chat_id}` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenameChatRequest {
    /// The new name (same limits as on creation).
    pub chat_name: String,
}

/// `PUT /v1/chats/{chat_id}/members/{user_id}/role` body: `admin` or `member`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRoleRequest {
    /// The role to give.
    pub role: Role,
}

/// `PUT /v1/chats/{chat_id}/members/{user_id}/role` answer.
///
/// Non-exhaustive: later versions may add fields. Outside this crate, build one with
/// [`RoleView::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RoleView {
    /// The chat.
    pub chat_id: ChatId,
    /// The member.
    pub user_id: UserId,
    /// Their role now.
    pub role: Role,
}

impl RoleView {
    /// A member's role in a chat.
    pub fn new(chat_id: ChatId, user_id: UserId, role: Role) -> Self {
        RoleView {
            chat_id,
            user_id,
            role,
        }
    }
}

/// `POST /v1/direct` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectRequest {
    /// The other person.
    pub user_id: UserId,
}

/// `GET /v1/chats` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatList {
    /// The caller's chats.
    pub chats: Vec<ChatSummary>,
}

/// `POST /v1/chats/{chat_id}/members` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddMemberRequest {
    /// Who to add.
    pub user_id: UserId,
}

/// `POST /v1/send` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRequest {
    /// When present, must be the caller's id (else 403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// Target chat.
    pub chat_id: ChatId,
    /// The text.
    pub msg_text: String,
    /// The sender's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Millis>,
    /// Idempotency key (up to 64 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// The `seq` of an existing message of the same chat this one replies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to_seq: Option<Seq>,
}

/// `PATCH /v1/chats/{chat_id}/messages/{seq}` body: the new text (same limits as a send).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditRequest {
    /// The new text.
    pub msg_text: String,
}

/// `GET /v1/chats/{chat_id}/changes` answer: one page of the change feed.
///
/// Non-exhaustive: later versions may add fields. Outside this crate, build one with
/// [`ChangesResponse::new`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChangesResponse {
    /// Messages whose latest change is above `after_rev`, in their current state, by ascending
    /// `rev`.
    pub messages: Vec<Message>,
    /// The `after_rev` to ask with next: the last message's `rev`, or the asked `after_rev`
    /// when the page is empty.
    pub next_rev: Rev,
    /// Whether more changes are already there to read.
    pub has_more: bool,
}

impl ChangesResponse {
    /// A page of the change feed: `messages` by ascending `rev`, the `next_rev` to ask with
    /// next, and whether more changes are already there.
    pub fn new(messages: Vec<Message>, next_rev: Rev, has_more: bool) -> Self {
        ChangesResponse {
            messages,
            next_rev,
            has_more,
        }
    }
}

/// `GET /v1/fetch` answer.
///
/// Non-exhaustive: later versions may add fields. Outside this crate, build one with
/// [`FetchResponse::new`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FetchResponse {
    /// Messages in ascending `seq`.
    pub messages: Vec<Message>,
    /// Token for the next page, `null` at the end.
    pub next_page_token: Option<String>,
}

impl FetchResponse {
    /// A page of history: `messages` in ascending `seq` and the token of the next page
    /// (`None` at the end).
    pub fn new(messages: Vec<Message>, next_page_token: Option<String>) -> Self {
        FetchResponse {
            messages,
            next_page_token,
        }
    }
}

/// `GET /v1/search` answer: one page of results.
///
/// Non-exhaustive: later versions may add fields. Outside this crate, build one with
/// [`SearchResponse::new`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SearchResponse {
    /// Matching messages in their current state, newest first (`sent_at` descending, then
    /// `chat_id` and `seq` descending).
    pub messages: Vec<Message>,
    /// Token for the next page (older results), `null` at the end.
    pub next_page_token: Option<String>,
}

impl SearchResponse {
    /// A page of results, newest first, and the token of the next page (`None` at the end).
    pub fn new(messages: Vec<Message>, next_page_token: Option<String>) -> Self {
        SearchResponse {
            messages,
            next_page_token,
        }
    }
}

/// The body of every error answer: `{"error": {"code", "message"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable code.
    pub code: ErrorCode,
    /// Human text.
    pub message: String,
}

/// Where one chat stands, in the `ready` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatCursor {
    /// The chat.
    pub chat_id: ChatId,
    /// Its newest `seq`.
    pub last_seq: Seq,
    /// Its newest `rev` (see the change feed), so a client knows whether it missed changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rev: Option<Rev>,
}

/// Frames the server sends on `GET /v1/ws`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame: who you are and where each of your chats stands.
    Ready {
        /// The connected user.
        user_id: UserId,
        /// Every chat of the user with its `last_seq`.
        chats: Vec<ChatCursor>,
    },
    /// A new message in one of the user's chats.
    Message {
        /// The message.
        message: Message,
    },
    /// A message of one of the user's chats was edited, deleted or reacted to: its current
    /// state (keep the one with the highest `rev`).
    MessageUpdated {
        /// The message as it is now.
        message: Message,
    },
    /// The answer to a `send` on this connection.
    Ack {
        /// The `client_msg_id` of the send.
        client_msg_id: String,
        /// The stored message.
        message: Message,
    },
    /// A request on this connection failed, or the server is about to close it.
    Error {
        /// Stable code.
        code: ErrorCode,
        /// Human text.
        message: String,
        /// The `client_msg_id` of the failed send, if it was one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
    },
    /// The user was added to a chat, or its members changed.
    ChatUpdated {
        /// The chat as it is now.
        chat: ChatView,
    },
    /// The user left or was removed from a chat.
    RemovedFromChat {
        /// The chat.
        chat_id: ChatId,
    },
    /// A member's read marker moved (to every member's connections, the reader's other
    /// devices included).
    Read {
        /// The chat.
        chat_id: ChatId,
        /// The reader.
        user_id: UserId,
        /// Their marker now.
        last_read_seq: Seq,
    },
    /// Another member is typing in a chat, until about `until` (server time).
    Typing {
        /// The chat.
        chat_id: ChatId,
        /// Who is typing.
        user_id: UserId,
        /// Server time + 5 s: show "typing" until then unless another frame extends it.
        until: Millis,
    },
    /// A user who shares a chat with you came online or went offline.
    Presence {
        /// The user.
        user_id: UserId,
        /// Whether any connection of theirs is open on any node.
        online: bool,
        /// When they were last seen online (null when never recorded).
        last_seen: Option<Millis>,
    },
    /// Answer to `ping`.
    Pong,
}

/// Frames a client sends on `GET /v1/ws`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Send a message; same rules as `POST /v1/send`.
    Send {
        /// Target chat.
        chat_id: ChatId,
        /// The text.
        msg_text: String,
        /// Sender's clock.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timestamp: Option<Millis>,
        /// Idempotency key; required on the WebSocket so the ack can be matched.
        client_msg_id: String,
        /// The `seq` of an existing message of the same chat this one replies to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to_seq: Option<Seq>,
    },
    /// The person is typing in a chat (members only; repeat every few seconds while typing).
    Typing {
        /// The chat.
        chat_id: ChatId,
    },
    /// Keep-alive; answered with `pong`.
    Ping,
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    #[test]
    fn frames_match_the_contract() {
        let f: ClientFrame = serde_json::from_value(json!({
            "type": "send", "chat_id": 3, "msg_text": "hi", "client_msg_id": "c1"
        }))
        .unwrap();
        assert_eq!(
            f,
            ClientFrame::Send {
                chat_id: ChatId(3),
                msg_text: "hi".into(),
                timestamp: None,
                client_msg_id: "c1".into(),
                reply_to_seq: None,
            }
        );
        let ping: ClientFrame = serde_json::from_str(r#"{"type":"ping"}"#).unwrap();
        assert_eq!(ping, ClientFrame::Ping);
        assert_eq!(
            serde_json::to_value(ServerFrame::Pong).unwrap(),
            json!({"type": "pong"})
        );
        assert_eq!(
            serde_json::to_value(ServerFrame::RemovedFromChat { chat_id: ChatId(9) }).unwrap(),
            json!({"type": "removed_from_chat", "chat_id": 9})
        );
        let mut m = Message::new(ChatId(1), Seq(2), UserId(3), "x", 5);
        m.client_msg_id = Some("k".into());
        assert_eq!(
            serde_json::to_value(ServerFrame::Ack {
                client_msg_id: "k".into(),
                message: m
            })
            .unwrap(),
            json!({"type": "ack", "client_msg_id": "k", "message": {
                "chat_id": 1, "seq": 2, "sender_id": 3, "msg_text": "x", "sent_at": 5,
                "client_msg_id": "k", "reply_to_seq": null, "edited_at": null, "deleted": false,
                "reactions": [], "rev": 2}})
        );
    }

    /// The constructors leave the optional fields as a body without them reads.
    #[test]
    fn constructors_match_the_wire_defaults() {
        let chat: ChatView = serde_json::from_value(json!({
            "chat_id": 1, "chat_name": "n", "member_ids": [2], "last_seq": 3
        }))
        .unwrap();
        assert_eq!(chat, ChatView::new(ChatId(1), "n", vec![UserId(2)], Seq(3)));
        let summary: ChatSummary = serde_json::from_value(json!({
            "chat_id": 1, "chat_name": "n", "last_seq": 3
        }))
        .unwrap();
        assert_eq!(summary, ChatSummary::new(ChatId(1), "n", Seq(3)));
        let m: Message = serde_json::from_value(json!({
            "chat_id": 1, "seq": 2, "sender_id": 3, "msg_text": "x", "sent_at": 5, "rev": 2
        }))
        .unwrap();
        assert_eq!(m, Message::new(ChatId(1), Seq(2), UserId(3), "x", 5));
    }

    #[test]
    fn wrong_shapes_fail() {
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"send","chat_id":"x"}"#).is_err());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"nope"}"#).is_err());
        assert!(serde_json::from_str::<SendRequest>(r#"{"chat_id":1}"#).is_err());
    }
}
