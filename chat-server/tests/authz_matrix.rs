//! The authorization matrix: every REST endpoint and every WebSocket frame type, called as each
//! kind of caller, against the answer the contract gives. The table [`MATRIX`] is the
//! specification; [`cell`] runs one entry on a fresh chat so that no entry depends on another.
//!
//! Callers: no token; an expired session; a logged-out session; "other" (a member acting on
//! another user's identity or resource: sending as someone else, removing the owner); a
//! non-member; a member; an admin; the owner.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod sqlite_server;

use chat_core::{ChatId, Member, MetadataStore, NewSession, Role, UserId};
use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use sqlite_server::{quiet_config, SqliteServer as World, PATIENCE};

/// Who calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    NoToken,
    Expired,
    LoggedOut,
    Other,
    NonMember,
    Member,
    Admin,
    Owner,
}

const WHO: [Who; 8] = [
    Who::NoToken,
    Who::Expired,
    Who::LoggedOut,
    Who::Other,
    Who::NonMember,
    Who::Member,
    Who::Admin,
    Who::Owner,
];

/// What an endpoint or frame does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Register,
    Login,
    Health,
    Metrics,
    Logout,
    Me,
    CreateChat,
    ListChats,
    ShowChat,
    AddMember,
    RemoveMember,
    LeaveChat,
    Send,
    Fetch,
    Search,
    EditMessage,
    DeleteMessage,
    React,
    Unreact,
    Changes,
    MarkRead,
    Receipts,
    RenameChat,
    SetRole,
    Direct,
    Presence,
    ShowUser,
    UpdateMe,
    WsUpgrade,
    WsSend,
    WsPing,
    WsTyping,
    WsUnknownFrame,
}

/// The expected answer: an HTTP status with its error code (`""` for success), or for frames the
/// reply's `type` and code.
type Want = (u16, &'static str);

const OK: Want = (200, "");
const CREATED: Want = (201, "");
const NO_CONTENT: Want = (204, "");
const SWITCHING: Want = (101, "");
const UNAUTH: Want = (401, "unauthenticated");
const NOT_MEMBER: Want = (403, "not_a_member");
const FORBIDDEN: Want = (403, "forbidden");
/// A frame answered with `ack` / `pong`, or with an error frame of this code.
const ACK: Want = (0, "ack");
const PONG: Want = (0, "pong");
const ERR_NOT_MEMBER: Want = (0, "not_a_member");
const ERR_BAD: Want = (0, "bad_request");

/// The matrix, one row per action, columns in the order of [`WHO`]:
/// no token, expired, logged out, other, non-member, member, admin, owner.
#[rustfmt::skip]
const MATRIX: &[(Action, [Want; 8])] = &[
    //                       no token  expired  logged out  other       non-member      member      admin       owner
    // Public endpoints answer everyone (a token, valid or not, is ignored).
    (Action::Register,       [CREATED; 8]),
    (Action::Login,          [OK; 8]),
    (Action::Health,         [OK; 8]),
    (Action::Metrics,        [OK; 8]),
    // The caller's own things: any valid session.
    (Action::Logout,         [UNAUTH, UNAUTH, UNAUTH, NO_CONTENT,     NO_CONTENT,     NO_CONTENT, NO_CONTENT, NO_CONTENT]),
    (Action::Me,             [UNAUTH, UNAUTH, UNAUTH, OK,             OK,             OK,         OK,         OK]),
    (Action::CreateChat,     [UNAUTH, UNAUTH, UNAUTH, CREATED,        CREATED,        CREATED,    CREATED,    CREATED]),
    (Action::ListChats,      [UNAUTH, UNAUTH, UNAUTH, OK,             OK,             OK,         OK,         OK]),
    // One chat's things: members only; managing members: the owner and admins only.
    (Action::ShowChat,       [UNAUTH, UNAUTH, UNAUTH, OK,             NOT_MEMBER,     OK,         OK,         OK]),
    (Action::AddMember,      [UNAUTH, UNAUTH, UNAUTH, FORBIDDEN,      NOT_MEMBER,     FORBIDDEN,  NO_CONTENT, NO_CONTENT]),
    // Removing another member (for "other": a member removing the owner).
    (Action::RemoveMember,   [UNAUTH, UNAUTH, UNAUTH, FORBIDDEN,      NOT_MEMBER,     FORBIDDEN,  NO_CONTENT, NO_CONTENT]),
    // Removing oneself.
    (Action::LeaveChat,      [UNAUTH, UNAUTH, UNAUTH, NO_CONTENT,     NOT_MEMBER,     NO_CONTENT, NO_CONTENT, NO_CONTENT]),
    // Sending (for "other": a member sending with the owner's user_id).
    (Action::Send,           [UNAUTH, UNAUTH, UNAUTH, FORBIDDEN,      NOT_MEMBER,     CREATED,    CREATED,    CREATED]),
    (Action::Fetch,          [UNAUTH, UNAUTH, UNAUTH, OK,             NOT_MEMBER,     OK,         OK,         OK]),
    // Searching one chat (`chat_id` given): members only.
    (Action::Search,         [UNAUTH, UNAUTH, UNAUTH, OK,             NOT_MEMBER,     OK,         OK,         OK]),
    // Editing: one's own message (for "other": the owner's message).
    (Action::EditMessage,    [UNAUTH, UNAUTH, UNAUTH, FORBIDDEN,      NOT_MEMBER,     OK,         OK,         OK]),
    // Deleting the owner's message: the owner and admins may, members may not.
    (Action::DeleteMessage,  [UNAUTH, UNAUTH, UNAUTH, FORBIDDEN,      NOT_MEMBER,     FORBIDDEN,  OK,         OK]),
    // Reacting to, and taking back a reaction from, the owner's message: any member.
    (Action::React,          [UNAUTH, UNAUTH, UNAUTH, OK,             NOT_MEMBER,     OK,         OK,         OK]),
    (Action::Unreact,        [UNAUTH, UNAUTH, UNAUTH, OK,             NOT_MEMBER,     OK,         OK,         OK]),
    (Action::Changes,        [UNAUTH, UNAUTH, UNAUTH, OK,             NOT_MEMBER,     OK,         OK,         OK]),
    // Read state: members only.
    (Action::MarkRead,       [UNAUTH, UNAUTH, UNAUTH, OK,             NOT_MEMBER,     OK,         OK,         OK]),
    (Action::Receipts,       [UNAUTH, UNAUTH, UNAUTH, OK,             NOT_MEMBER,     OK,         OK,         OK]),
    // Renaming: the owner and admins.
    (Action::RenameChat,     [UNAUTH, UNAUTH, UNAUTH, FORBIDDEN,      NOT_MEMBER,     FORBIDDEN,  OK,         OK]),
    // Roles: the owner only (for "other": a member demoting the owner).
    (Action::SetRole,        [UNAUTH, UNAUTH, UNAUTH, FORBIDDEN,      NOT_MEMBER,     FORBIDDEN,  FORBIDDEN,  OK]),
    // People and direct chats: any valid session (presence leaves strangers out).
    (Action::Direct,         [UNAUTH, UNAUTH, UNAUTH, CREATED,        CREATED,        CREATED,    CREATED,    CREATED]),
    (Action::Presence,       [UNAUTH, UNAUTH, UNAUTH, OK,             OK,             OK,         OK,         OK]),
    (Action::ShowUser,       [UNAUTH, UNAUTH, UNAUTH, OK,             OK,             OK,         OK,         OK]),
    (Action::UpdateMe,       [UNAUTH, UNAUTH, UNAUTH, OK,             OK,             OK,         OK,         OK]),
    (Action::WsUpgrade,      [UNAUTH, UNAUTH, UNAUTH, SWITCHING,      SWITCHING,      SWITCHING,  SWITCHING,  SWITCHING]),
    // WebSocket frames, on a socket of a valid session (the callers without one never get a
    // socket). "other" sends into a chat of people it has nothing to do with.
    (Action::WsSend,         [UNAUTH, UNAUTH, UNAUTH, ERR_NOT_MEMBER, ERR_NOT_MEMBER, ACK,        ACK,        ACK]),
    (Action::WsPing,         [UNAUTH, UNAUTH, UNAUTH, PONG,           PONG,           PONG,       PONG,       PONG]),
    // A typing frame has no answer when forwarded (the ping after it answers); "other" types
    // in a chat of people it has nothing to do with.
    (Action::WsTyping,       [UNAUTH, UNAUTH, UNAUTH, ERR_NOT_MEMBER, ERR_NOT_MEMBER, PONG,       PONG,       PONG]),
    (Action::WsUnknownFrame, [UNAUTH, UNAUTH, UNAUTH, ERR_BAD,        ERR_BAD,        ERR_BAD,    ERR_BAD,    ERR_BAD]),
];

/// One chat with an owner, an admin and two members, plus a non-member, and the tokens of every
/// kind of caller.
struct Scene {
    chat: ChatId,
    owner: (UserId, String),
    admin: (UserId, String),
    member: (UserId, String),
    member2: UserId,
    outsider: (UserId, String),
    expired: String,
    logged_out: String,
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl World {
    async fn start() -> World {
        World::launch(quiet_config("authz")).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.addr));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, v)
    }

    async fn user(&self) -> (UserId, String) {
        let email = format!("u{}@authz.test", unique());
        let creds = json!({"email": email, "password": "password123"});
        let (s, v) = self
            .call(Method::POST, "/v1/users", None, Some(creds.clone()))
            .await;
        assert_eq!(s, 201, "{v}");
        let (s, v) = self
            .call(Method::POST, "/v1/sessions", None, Some(creds))
            .await;
        assert_eq!(s, 200, "{v}");
        (
            UserId(v["user_id"].as_i64().unwrap()),
            v["token"].as_str().unwrap().to_owned(),
        )
    }

    async fn scene(&self) -> Scene {
        let owner = self.user().await;
        let admin = self.user().await;
        let member = self.user().await;
        let (member2, _) = self.user().await;
        let outsider = self.user().await;
        let (s, v) = self
            .call(
                Method::POST,
                "/v1/chats",
                Some(&owner.1),
                Some(json!({"chat_name": "matrix", "member_ids": [admin.0, member.0, member2]})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let chat = ChatId(v["chat_id"].as_i64().unwrap());
        // Promote the admin directly in the store (the API has no promotion).
        self.store.remove_member(chat, admin.0).await.unwrap();
        self.store
            .add_member(
                chat,
                Member {
                    user_id: admin.0,
                    role: Role::Admin,
                },
                100,
            )
            .await
            .unwrap();
        // An expired session, written straight into the store.
        let expired = format!("expired-token-{}", unique());
        self.store
            .create_session(NewSession {
                token_hash: chat_core::TokenHash(Sha256::digest(expired.as_bytes()).into()),
                user_id: member.0,
                created_at: 1,
                expires_at: 2,
            })
            .await
            .unwrap();
        // A session that logged out.
        let (_, logged_out) = self.user().await;
        let (s, _) = self
            .call(
                Method::DELETE,
                "/v1/sessions/current",
                Some(&logged_out),
                None,
            )
            .await;
        assert_eq!(s, 204);
        Scene {
            chat,
            owner,
            admin,
            member,
            member2,
            outsider,
            expired,
            logged_out,
        }
    }
}

impl Scene {
    fn token(&self, who: Who) -> Option<&str> {
        match who {
            Who::NoToken => None,
            Who::Expired => Some(&self.expired),
            Who::LoggedOut => Some(&self.logged_out),
            Who::Other | Who::Member => Some(&self.member.1),
            Who::NonMember => Some(&self.outsider.1),
            Who::Admin => Some(&self.admin.1),
            Who::Owner => Some(&self.owner.1),
        }
    }

    fn id(&self, who: Who) -> Option<UserId> {
        match who {
            Who::Other | Who::Member => Some(self.member.0),
            Who::NonMember => Some(self.outsider.0),
            Who::Admin => Some(self.admin.0),
            Who::Owner => Some(self.owner.0),
            _ => None,
        }
    }
}

/// Runs one cell of the matrix on a fresh scene; returns the answer as a [`Want`].
async fn cell(w: &World, action: Action, who: Who) -> (u16, String) {
    let sc = w.scene().await;
    let token = sc.token(who);
    let chat = sc.chat;
    let http = |(s, v): (u16, Value)| {
        let code = if s >= 400 {
            v["error"]["code"]
                .as_str()
                .unwrap_or("<no code>")
                .to_owned()
        } else {
            String::new()
        };
        (s, code)
    };
    match action {
        Action::Register => {
            let body =
                json!({"email": format!("new{}@authz.test", unique()), "password": "password123"});
            http(w.call(Method::POST, "/v1/users", token, Some(body)).await)
        }
        Action::Login => {
            let email = format!("l{}@authz.test", unique());
            let creds = json!({"email": email, "password": "password123"});
            w.call(Method::POST, "/v1/users", None, Some(creds.clone()))
                .await;
            http(
                w.call(Method::POST, "/v1/sessions", token, Some(creds))
                    .await,
            )
        }
        Action::Health => http(w.call(Method::GET, "/v1/health", token, None).await),
        Action::Metrics => {
            let mut req = w.http.get(format!("http://{}/metrics", w.addr));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            (req.send().await.unwrap().status().as_u16(), String::new())
        }
        Action::Logout => {
            let answer = http(
                w.call(Method::DELETE, "/v1/sessions/current", token, None)
                    .await,
            );
            if answer.0 == 204 {
                // Logged out means logged out: the token no longer works.
                let (s, _) = w.call(Method::GET, "/v1/users/me", token, None).await;
                assert_eq!(s, 401, "{who:?}: the token still works after logout");
            }
            answer
        }
        Action::Me => {
            let (s, v) = w.call(Method::GET, "/v1/users/me", token, None).await;
            if s == 200 {
                // Only ever the caller's own user.
                assert_eq!(v["user_id"].as_i64(), sc.id(who).map(|u| u.0), "{who:?}");
            }
            http((s, v))
        }
        Action::CreateChat => {
            let body = json!({"chat_name": "mine", "member_ids": []});
            http(w.call(Method::POST, "/v1/chats", token, Some(body)).await)
        }
        Action::ListChats => {
            let (s, v) = w.call(Method::GET, "/v1/chats", token, None).await;
            if s == 200 {
                let listed = v["chats"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["chat_id"] == chat.0);
                // The chat is listed exactly for its members.
                assert_eq!(listed, who != Who::NonMember, "{who:?}: {v}");
            }
            http((s, v))
        }
        Action::ShowChat => http(
            w.call(Method::GET, &format!("/v1/chats/{chat}"), token, None)
                .await,
        ),
        Action::AddMember => {
            let (newcomer, _) = w.user().await;
            let body = json!({"user_id": newcomer});
            http(
                w.call(
                    Method::POST,
                    &format!("/v1/chats/{chat}/members"),
                    token,
                    Some(body),
                )
                .await,
            )
        }
        Action::RemoveMember => {
            let target = if who == Who::Other {
                sc.owner.0
            } else {
                sc.member2
            };
            http(
                w.call(
                    Method::DELETE,
                    &format!("/v1/chats/{chat}/members/{target}"),
                    token,
                    None,
                )
                .await,
            )
        }
        Action::LeaveChat => {
            let me = sc.id(who).unwrap_or(sc.member.0);
            http(
                w.call(
                    Method::DELETE,
                    &format!("/v1/chats/{chat}/members/{me}"),
                    token,
                    None,
                )
                .await,
            )
        }
        Action::Send => {
            let mut body = json!({"chat_id": chat, "msg_text": "hello"});
            if who == Who::Other {
                body["user_id"] = json!(sc.owner.0);
            }
            let (s, v) = w.call(Method::POST, "/v1/send", token, Some(body)).await;
            if s == 201 {
                assert_eq!(v["sender_id"].as_i64(), sc.id(who).map(|u| u.0));
            }
            http((s, v))
        }
        Action::Fetch => http(
            w.call(
                Method::GET,
                &format!("/v1/fetch?chat_id={chat}"),
                token,
                None,
            )
            .await,
        ),
        Action::Search => http(
            w.call(
                Method::GET,
                &format!("/v1/search?q=hello&chat_id={chat}"),
                token,
                None,
            )
            .await,
        ),
        Action::EditMessage | Action::DeleteMessage | Action::React | Action::Unreact => {
            // The owner's message, or for a member, admin or owner editing: their own.
            let author = match (action, who) {
                (Action::EditMessage, Who::Member | Who::Admin | Who::Owner) => token,
                _ => Some(sc.owner.1.as_str()),
            };
            let body = json!({"chat_id": chat, "msg_text": "to change"});
            let (s, v) = w.call(Method::POST, "/v1/send", author, Some(body)).await;
            assert_eq!(s, 201, "{v}");
            let path = format!("/v1/chats/{chat}/messages/{}", v["seq"]);
            let (s, v) = match action {
                Action::EditMessage => {
                    let body = json!({"msg_text": "changed"});
                    w.call(Method::PATCH, &path, token, Some(body)).await
                }
                Action::DeleteMessage => w.call(Method::DELETE, &path, token, None).await,
                Action::React => {
                    let path = format!("{path}/reactions/%F0%9F%91%8D");
                    w.call(Method::PUT, &path, token, None).await
                }
                _ => {
                    let path = format!("{path}/reactions/%F0%9F%91%8D");
                    w.call(Method::DELETE, &path, token, None).await
                }
            };
            if s == 200 && action == Action::React {
                assert_eq!(v["reactions"][0]["emoji"], "👍", "{v}");
                assert_eq!(
                    v["reactions"][0]["user_ids"][0].as_i64(),
                    sc.id(who).map(|u| u.0)
                );
            }
            http((s, v))
        }
        Action::Changes => http(
            w.call(
                Method::GET,
                &format!("/v1/chats/{chat}/changes?after_rev=0"),
                token,
                None,
            )
            .await,
        ),
        Action::MarkRead => http(
            w.call(
                Method::POST,
                &format!("/v1/chats/{chat}/read"),
                token,
                Some(json!({"seq": 0})),
            )
            .await,
        ),
        Action::Receipts => http(
            w.call(
                Method::GET,
                &format!("/v1/chats/{chat}/receipts"),
                token,
                None,
            )
            .await,
        ),
        Action::RenameChat => http(
            w.call(
                Method::PATCH,
                &format!("/v1/chats/{chat}"),
                token,
                Some(json!({"chat_name": "renamed"})),
            )
            .await,
        ),
        Action::SetRole => {
            let (target, role) = if who == Who::Other {
                (sc.owner.0, "member")
            } else {
                (sc.member2, "admin")
            };
            http(
                w.call(
                    Method::PUT,
                    &format!("/v1/chats/{chat}/members/{target}/role"),
                    token,
                    Some(json!({"role": role})),
                )
                .await,
            )
        }
        Action::Direct => http(
            w.call(
                Method::POST,
                "/v1/direct",
                token,
                Some(json!({"user_id": sc.member2})),
            )
            .await,
        ),
        Action::Presence => {
            let path = format!("/v1/presence?user_ids={}", sc.owner.0);
            let (s, v) = w.call(Method::GET, &path, token, None).await;
            if s == 200 {
                // Strangers are left out.
                let listed = !v["presence"].as_array().unwrap().is_empty();
                assert_eq!(listed, who != Who::NonMember, "{who:?}: {v}");
            }
            http((s, v))
        }
        Action::ShowUser => {
            let (s, v) = w
                .call(
                    Method::GET,
                    &format!("/v1/users/{}", sc.owner.0),
                    token,
                    None,
                )
                .await;
            if s == 200 {
                assert!(v.get("email").is_none(), "never another user's email: {v}");
            }
            http((s, v))
        }
        Action::UpdateMe => http(
            w.call(
                Method::PATCH,
                "/v1/users/me",
                token,
                Some(json!({"display_name": "New Name"})),
            )
            .await,
        ),
        Action::WsUpgrade
        | Action::WsSend
        | Action::WsPing
        | Action::WsTyping
        | Action::WsUnknownFrame => ws_cell(w, &sc, action, who).await,
    }
}

/// A chat of the outsider's, which the scene's members have nothing to do with.
async fn theirs(w: &World, sc: &Scene) -> ChatId {
    let (s, v) = w
        .call(
            Method::POST,
            "/v1/chats",
            Some(&sc.outsider.1),
            Some(json!({"chat_name": "theirs", "member_ids": []})),
        )
        .await;
    assert_eq!(s, 201);
    ChatId(v["chat_id"].as_i64().unwrap())
}

async fn ws_cell(w: &World, sc: &Scene, action: Action, who: Who) -> (u16, String) {
    let mut req = format!("ws://{}/v1/ws", w.addr);
    if let Some(t) = sc.token(who) {
        req = format!("{req}?token={t}");
    }
    let mut ws = match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status().as_u16(), 101);
            ws
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or(b"null"))
                .unwrap_or(Value::Null);
            let code = body["error"]["code"]
                .as_str()
                .unwrap_or("<no code>")
                .to_owned();
            return (resp.status().as_u16(), code);
        }
        Err(e) => panic!("{action:?} as {who:?}: {e}"),
    };
    let frame = match action {
        Action::WsUpgrade => return (101, String::new()),
        Action::WsTyping => {
            let chat = if who == Who::Other {
                theirs(w, sc).await
            } else {
                sc.chat
            };
            let typing = json!({"type": "typing", "chat_id": chat});
            ws.send(WsMessage::Text(typing.to_string().into()))
                .await
                .unwrap();
            json!({"type": "ping"})
        }
        Action::WsSend => {
            // "other" sends into the chat of people it has nothing to do with.
            let chat = if who == Who::Other {
                theirs(w, sc).await
            } else {
                sc.chat
            };
            json!({"type": "send", "chat_id": chat, "msg_text": "hi", "client_msg_id": "m1"})
        }
        Action::WsPing => json!({"type": "ping"}),
        _ => json!({"type": "subscribe", "chat_id": sc.chat}),
    };
    ws.send(WsMessage::Text(frame.to_string().into()))
        .await
        .unwrap();
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let WsMessage::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        match v["type"].as_str().unwrap() {
            "ready" | "message" | "chat_updated" | "presence" | "read" | "typing" => continue,
            "error" => return (0, v["code"].as_str().unwrap().to_owned()),
            other => return (0, other.to_owned()),
        }
    }
}

#[tokio::test]
async fn every_endpoint_and_frame_answers_every_kind_of_caller_as_the_contract_says() {
    let w = World::start().await;
    let mut failures = Vec::new();
    let mut cells = 0;
    for (action, wants) in MATRIX {
        for (who, want) in WHO.iter().zip(wants) {
            let got = cell(&w, *action, *who).await;
            cells += 1;
            if (got.0, got.1.as_str()) != *want {
                failures.push(format!("{action:?} as {who:?}: want {want:?}, got {got:?}"));
            }
        }
    }
    assert_eq!(cells, MATRIX.len() * WHO.len());
    assert!(
        failures.is_empty(),
        "authorization matrix:\n{}",
        failures.join("\n")
    );
}
