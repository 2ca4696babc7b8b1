//! Server-level tests over raw HTTP and WebSocket: a real server on `127.0.0.1:0` over a real
//! SQLite store in a temporary directory, driven with `reqwest` and `tokio-tungstenite` (not the
//! SDK), so every status code, error code and close code of the contract is checked as a client
//! on the wire sees it. Every bad-input test also checks that the server keeps serving.

// Test code: a failed unwrap is a failed test. (clippy.toml allows it inside `#[test]` functions
// only, not in this file's helpers.)
#![allow(clippy::unwrap_used)]

mod sqlite_server;

use chat_core::{ChatId, Member, MetadataStore, Role, UserId};
use chat_server::Config;
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use sqlite_server::{quiet_config, SqliteServer as Harness, PATIENCE};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The tests' configuration: no effective limits (the abuse limits have their own tests).
fn config() -> Config {
    Config {
        shutdown_grace: Duration::from_secs(5),
        ..quiet_config("http-test")
    }
}

impl Harness {
    async fn start() -> Harness {
        Harness::launch(config()).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends a request with an optional bearer token and JSON body; returns status, parsed body
    /// (`Null` when empty) and headers.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        finish(req).await
    }

    /// Sends raw bytes with the given content type.
    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path)).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let (s, v, _) = finish(req).await;
        (s, v)
    }

    /// Registers and logs in; returns the user id and token.
    async fn user(&self, name: &str) -> (UserId, String) {
        let email = format!("{name}@http.test");
        let (s, body, _) = self
            .call(
                Method::POST,
                "/v1/users",
                None,
                Some(json!({"email": email, "password": "password123", "display_name": name})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        let (s, body, _) = self
            .call(
                Method::POST,
                "/v1/sessions",
                None,
                Some(json!({"email": email, "password": "password123"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        (
            UserId(body["user_id"].as_i64().unwrap()),
            body["token"].as_str().unwrap().to_owned(),
        )
    }

    async fn chat(&self, token: &str, members: &[UserId]) -> ChatId {
        let (s, body, _) = self
            .call(
                Method::POST,
                "/v1/chats",
                Some(token),
                Some(json!({"chat_name": "room", "member_ids": members})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        assert_eq!(body["last_seq"], 0);
        ChatId(body["chat_id"].as_i64().unwrap())
    }

    async fn send(&self, token: &str, chat: ChatId, text: &str) -> (StatusCode, Value) {
        let (s, v, _) = self
            .call(
                Method::POST,
                "/v1/send",
                Some(token),
                Some(json!({"chat_id": chat, "msg_text": text})),
            )
            .await;
        (s, v)
    }

    /// The server still answers: health is ok and a fresh user can create a chat, send and
    /// fetch.
    async fn assert_serving(&self) {
        let (s, body, _) = self.call(Method::GET, "/v1/health", None, None).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "ok");
        let name = format!("probe{}", rand_suffix());
        let (_, token) = self.user(&name).await;
        let chat = self.chat(&token, &[]).await;
        let (s, body) = self.send(&token, chat, "still here").await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        let (s, body, _) = self
            .call(
                Method::GET,
                &format!("/v1/fetch?chat_id={chat}"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body["messages"][0]["msg_text"], "still here");
    }

    async fn metric(&self, name: &str) -> u64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
            .trim()
            .parse()
            .unwrap()
    }

    /// A WebSocket authenticated with `?token=`, after its `ready` frame.
    async fn ws(&self, token: &str) -> (Ws, Value) {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?token={token}", self.addr))
                .await
                .unwrap();
        let ready = next_json(&mut ws).await;
        assert_eq!(ready["type"], "ready", "{ready}");
        (ws, ready)
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn finish(req: reqwest::RequestBuilder) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("non-JSON body ({e}): {:?}", String::from_utf8_lossy(&bytes))
        })
    };
    (status, body, headers)
}

/// Asserts the contract's error shape and code.
fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// The next text frame as JSON, skipping control frames.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("no frame in time")
            .expect("stream ended")
            .expect("read failed");
        match msg {
            WsMessage::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                // Presence notices (another test user connecting) are not what these tests
                // read; e2e_social covers them.
                if v["type"] != "presence" {
                    return v;
                }
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Reads until the server's close frame; returns its code and reason.
async fn close_of(ws: &mut Ws) -> (u16, String) {
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("no close in time");
        match msg {
            Some(Ok(WsMessage::Close(Some(f)))) => {
                return (u16::from(f.code), f.reason.to_string())
            }
            Some(Ok(WsMessage::Close(None))) => panic!("close frame without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("connection failed without a close frame: {e}"),
            None => panic!("connection ended without a close frame"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// REST: bad input
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_json_wrong_types_and_missing_fields_are_bad_request() {
    let h = Harness::start().await;
    let (_, token) = h.user("ann").await;
    let chat = h.chat(&token, &[]).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("/v1/send", b"{\"chat_id\": ".to_vec()),
        ("/v1/send", b"not json at all".to_vec()),
        ("/v1/send", b"".to_vec()),
        ("/v1/send", b"[]".to_vec()),
        (
            "/v1/send",
            br#"{"chat_id": "abc", "msg_text": "x"}"#.to_vec(),
        ),
        (
            "/v1/send",
            format!(r#"{{"chat_id": {chat}, "msg_text": 5}}"#).into_bytes(),
        ),
        (
            "/v1/send",
            format!(r#"{{"chat_id": {chat}, "msg_text": "x", "timestamp": "soon"}}"#).into_bytes(),
        ),
        ("/v1/send", format!(r#"{{"chat_id": {chat}}}"#).into_bytes()),
        ("/v1/send", br#"{"msg_text": "x"}"#.to_vec()),
        ("/v1/chats", br#"{"chat_name": 7}"#.to_vec()),
        ("/v1/chats", br#"{"member_ids": [1]}"#.to_vec()),
        (
            "/v1/chats",
            br#"{"chat_name": "x", "member_ids": "all"}"#.to_vec(),
        ),
    ];
    // Invalid UTF-8 inside a JSON string.
    let mut not_utf8 = format!(r#"{{"chat_id": {chat}, "msg_text": ""#).into_bytes();
    not_utf8.extend([0xff, b'"', b'}']);
    let mut cases = cases;
    cases.push(("/v1/send", not_utf8));
    for (path, body) in cases {
        let (s, v) = h
            .raw(
                Method::POST,
                path,
                Some(&token),
                Some("application/json"),
                body.clone(),
            )
            .await;
        assert_error(s, &v, 400, "bad_request");
    }
    // Unauthenticated routes parse bodies the same way.
    for body in [
        &b"{"[..],
        br#"{"email": "a@b.c"}"#,
        br#"{"email": 1, "password": "x"}"#,
    ] {
        for path in ["/v1/users", "/v1/sessions"] {
            let (s, v) = h
                .raw(
                    Method::POST,
                    path,
                    None,
                    Some("application/json"),
                    body.to_vec(),
                )
                .await;
            assert_error(s, &v, 400, "bad_request");
        }
    }
    h.assert_serving().await;
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_bad_request() {
    let h = Harness::start().await;
    let (_, token) = h.user("ann").await;
    let chat = h.chat(&token, &[]).await;
    let body = json!({"chat_id": chat, "msg_text": "hi"})
        .to_string()
        .into_bytes();
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let (s, v) = h
            .raw(Method::POST, "/v1/send", Some(&token), ct, body.clone())
            .await;
        assert_error(s, &v, 400, "bad_request");
    }
    let (s, v) = h
        .raw(
            Method::POST,
            "/v1/send",
            Some(&token),
            Some("application/json; charset=utf-8"),
            body,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    h.assert_serving().await;
}

#[tokio::test]
async fn empty_and_oversized_text_are_invalid_argument() {
    let h = Harness::start().await;
    let (_, token) = h.user("ann").await;
    let chat = h.chat(&token, &[]).await;
    for text in [
        String::new(),
        "   \n\t ".to_owned(),
        "a".repeat(4097),
        "é".repeat(2049),
    ] {
        let (s, v) = h.send(&token, chat, &text).await;
        assert_error(s, &v, 400, "invalid_argument");
    }
    // Exactly at the limit (after trimming) is fine.
    let (s, v) = h
        .send(&token, chat, &format!("  {}  ", "a".repeat(4096)))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["msg_text"].as_str().unwrap().len(), 4096);
    assert_eq!(v["seq"], 1, "rejected sends took no seq");
    // Other invalid values.
    let (s, v, _) = h
        .call(
            Method::POST,
            "/v1/send",
            Some(&token),
            Some(json!({"chat_id": chat, "msg_text": "x", "client_msg_id": "x".repeat(65)})),
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    let (s, v, _) = h
        .call(
            Method::POST,
            "/v1/chats",
            Some(&token),
            Some(json!({"chat_name": "   ", "member_ids": []})),
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    let (s, v, _) = h
        .call(
            Method::POST,
            "/v1/users",
            None,
            Some(json!({"email": "nope", "password": "password123"})),
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    let (s, v, _) = h
        .call(
            Method::POST,
            "/v1/users",
            None,
            Some(json!({"email": "short@pw.test", "password": "123"})),
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    h.assert_serving().await;
}

#[tokio::test]
async fn oversized_body_is_payload_too_large() {
    let h = Harness::start().await;
    let (_, token) = h.user("ann").await;
    let chat = h.chat(&token, &[]).await;
    let body = json!({"chat_id": chat, "msg_text": "a".repeat(70 * 1024)})
        .to_string()
        .into_bytes();
    assert!(body.len() > 64 * 1024);
    let (s, v) = h
        .raw(
            Method::POST,
            "/v1/send",
            Some(&token),
            Some("application/json"),
            body,
        )
        .await;
    assert_error(s, &v, 413, "payload_too_large");
    h.assert_serving().await;
}

#[tokio::test]
async fn query_and_path_parameters_are_checked() {
    let h = Harness::start().await;
    let (_, token) = h.user("ann").await;
    let chat = h.chat(&token, &[]).await;
    for limit in ["0", "501", "-1", "abc", "1.5", ""] {
        let (s, v, _) = h
            .call(
                Method::GET,
                &format!("/v1/fetch?chat_id={chat}&limit={limit}"),
                Some(&token),
                None,
            )
            .await;
        assert_error(s, &v, 400, "invalid_argument");
    }
    for limit in ["1", "500"] {
        let (s, v, _) = h
            .call(
                Method::GET,
                &format!("/v1/fetch?chat_id={chat}&limit={limit}"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    for q in [
        "chat_id=abc",
        "chat_id=",
        "limit=5",
        "",
        "chat_id=1&after_seq=x",
    ] {
        let (s, v, _) = h
            .call(Method::GET, &format!("/v1/fetch?{q}"), Some(&token), None)
            .await;
        assert_error(s, &v, 400, "bad_request");
    }
    let (s, v, _) = h
        .call(
            Method::GET,
            &format!("/v1/fetch?chat_id={chat}&after_seq=-1"),
            Some(&token),
            None,
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    for path in [
        "/v1/chats/abc",
        "/v1/chats/1.5",
        "/v1/chats/99999999999999999999",
    ] {
        let (s, v, _) = h.call(Method::GET, path, Some(&token), None).await;
        assert_error(s, &v, 400, "bad_request");
    }
    let (s, v, _) = h
        .call(
            Method::DELETE,
            &format!("/v1/chats/{chat}/members/me"),
            Some(&token),
            None,
        )
        .await;
    assert_error(s, &v, 400, "bad_request");
    h.assert_serving().await;
}

#[tokio::test]
async fn forged_and_foreign_page_tokens_are_invalid_argument() {
    let h = Harness::start().await;
    let (_, token) = h.user("ann").await;
    let chat_a = h.chat(&token, &[]).await;
    let chat_b = h.chat(&token, &[]).await;
    for i in 0..3 {
        h.send(&token, chat_a, &format!("a{i}")).await;
        h.send(&token, chat_b, &format!("b{i}")).await;
    }
    let (s, v, _) = h
        .call(
            Method::GET,
            &format!("/v1/fetch?chat_id={chat_a}&limit=1"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let a_token = v["next_page_token"].as_str().unwrap().to_owned();
    // A token of chat A used on chat B: never B's data, never A's.
    let (s, v, _) = h
        .call(
            Method::GET,
            &format!("/v1/fetch?chat_id={chat_b}&page_token={a_token}"),
            Some(&token),
            None,
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    for forged in ["garbage", "AAAA", "djE6MTpiOjA", "%00", &"A".repeat(500)] {
        let (s, v, _) = h
            .call(
                Method::GET,
                &format!("/v1/fetch?chat_id={chat_a}&page_token={forged}"),
                Some(&token),
                None,
            )
            .await;
        assert_error(s, &v, 400, "invalid_argument");
    }
    let (s, v, _) = h
        .call(
            Method::GET,
            &format!("/v1/fetch?chat_id={chat_a}&page_token={a_token}&after_seq=0"),
            Some(&token),
            None,
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    h.assert_serving().await;
}

#[tokio::test]
async fn unknown_things_and_strangers_get_their_codes() {
    let h = Harness::start().await;
    let (ann_id, ann) = h.user("ann").await;
    let (_, bob) = h.user("bob").await;
    let chat = h.chat(&ann, &[]).await;

    let (s, v, _) = h
        .call(Method::GET, "/v1/fetch?chat_id=987654", Some(&ann), None)
        .await;
    assert_error(s, &v, 404, "not_found");
    let (s, v) = h.send(&ann, ChatId(987654), "x").await;
    assert_error(s, &v, 404, "not_found");
    let (s, v, _) = h
        .call(Method::GET, "/v1/chats/987654", Some(&ann), None)
        .await;
    assert_error(s, &v, 404, "not_found");

    // Bob is not a member.
    let (s, v, _) = h
        .call(
            Method::GET,
            &format!("/v1/fetch?chat_id={chat}"),
            Some(&bob),
            None,
        )
        .await;
    assert_error(s, &v, 403, "not_a_member");
    let (s, v) = h.send(&bob, chat, "let me in").await;
    assert_error(s, &v, 403, "not_a_member");
    let (s, v, _) = h
        .call(Method::GET, &format!("/v1/chats/{chat}"), Some(&bob), None)
        .await;
    assert_error(s, &v, 403, "not_a_member");

    // Sending as somebody else.
    let (s, v, _) = h
        .call(
            Method::POST,
            "/v1/send",
            Some(&bob),
            Some(json!({"user_id": ann_id, "chat_id": chat, "msg_text": "spoof"})),
        )
        .await;
    assert_error(s, &v, 403, "forbidden");

    // Unknown routes and methods answer in JSON too.
    let (s, v, _) = h.call(Method::GET, "/v1/nope", Some(&ann), None).await;
    assert_error(s, &v, 404, "not_found");
    let (s, v, _) = h.call(Method::PUT, "/v1/send", Some(&ann), None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{v}");
    assert!(v["error"]["code"].is_string());

    // Registering a taken email, in another case.
    let (s, v, _) = h
        .call(
            Method::POST,
            "/v1/users",
            None,
            Some(json!({"email": "ANN@http.test", "password": "password123"})),
        )
        .await;
    assert_error(s, &v, 409, "conflict");
    h.assert_serving().await;
}

#[tokio::test]
async fn authentication_and_logout() {
    let h = Harness::start().await;
    let (ann_id, ann) = h.user("ann").await;

    let (s, v, _) = h.call(Method::GET, "/v1/users/me", None, None).await;
    assert_error(s, &v, 401, "unauthenticated");
    let (s, v, _) = h
        .call(Method::GET, "/v1/users/me", Some("not-a-token"), None)
        .await;
    assert_error(s, &v, 401, "unauthenticated");
    let (s, v, _) = h.call(Method::GET, "/v1/users/me", Some(&ann), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["user_id"], ann_id.get());
    assert_eq!(v["email"], "ann@http.test");

    // Wrong email and wrong password look the same.
    let (s1, v1, _) = h
        .call(
            Method::POST,
            "/v1/sessions",
            None,
            Some(json!({"email": "nobody@http.test", "password": "password123"})),
        )
        .await;
    let (s2, v2, _) = h
        .call(
            Method::POST,
            "/v1/sessions",
            None,
            Some(json!({"email": "ann@http.test", "password": "wrong-password"})),
        )
        .await;
    assert_error(s1, &v1, 401, "unauthenticated");
    assert_eq!((s1, &v1), (s2, &v2));

    // Email is case-insensitive at login.
    let (s, v, _) = h
        .call(
            Method::POST,
            "/v1/sessions",
            None,
            Some(json!({"email": "Ann@HTTP.test", "password": "password123"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let second = v["token"].as_str().unwrap().to_owned();

    // Logout ends only that session.
    let (s, _, _) = h
        .call(Method::DELETE, "/v1/sessions/current", Some(&ann), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v, _) = h.call(Method::GET, "/v1/users/me", Some(&ann), None).await;
    assert_error(s, &v, 401, "unauthenticated");
    let (s, _, _) = h
        .call(Method::GET, "/v1/users/me", Some(&second), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    h.assert_serving().await;
}

#[tokio::test]
async fn sends_over_the_rate_get_429_with_retry_after() {
    let mut cfg = config();
    cfg.limits.send_rate_per_sec = 1;
    cfg.limits.send_burst = 3;
    let h = Harness::launch(cfg).await;
    let (_, ann) = h.user("ann").await;
    let (_, bob) = h.user("bob").await;
    let chat = h.chat(&ann, &[]).await;
    let mut limited = None;
    // The burst is 3; at 1 token a second a fourth or fifth send in a row is refused even on a
    // slow machine (the loop allows a little refill).
    for i in 0..10 {
        let (s, v, headers) = h
            .call(
                Method::POST,
                "/v1/send",
                Some(&ann),
                Some(json!({"chat_id": chat, "msg_text": format!("m{i}")})),
            )
            .await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((v, headers));
            break;
        }
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (v, headers) = limited.expect("never rate limited");
    assert_eq!(v["error"]["code"], "rate_limited");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    // Another user has their own bucket.
    let bob_chat = h.chat(&bob, &[]).await;
    let (s, v) = h.send(&bob, bob_chat, "mine").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

// ---------------------------------------------------------------------------------------------
// REST: behaviour
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn retried_send_returns_the_first_message_with_200() {
    let h = Harness::start().await;
    let (_, ann) = h.user("ann").await;
    let chat = h.chat(&ann, &[]).await;
    let body =
        json!({"chat_id": chat, "msg_text": "once", "client_msg_id": "k-1", "timestamp": 42});
    let (s1, first, _) = h
        .call(Method::POST, "/v1/send", Some(&ann), Some(body.clone()))
        .await;
    assert_eq!(s1, StatusCode::CREATED);
    assert_eq!(first["timestamp"], 42);
    let (s2, again, _) = h
        .call(Method::POST, "/v1/send", Some(&ann), Some(body))
        .await;
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(first, again);
    let (_, page, _) = h
        .call(
            Method::GET,
            &format!("/v1/fetch?chat_id={chat}"),
            Some(&ann),
            None,
        )
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn fetch_pages_backward_and_forward() {
    let h = Harness::start().await;
    let (_, ann) = h.user("ann").await;
    let chat = h.chat(&ann, &[]).await;
    for i in 1..=7 {
        let (s, v) = h.send(&ann, chat, &format!("m{i}")).await;
        assert_eq!(s, StatusCode::CREATED);
        assert_eq!(v["seq"], i);
    }
    let seqs = |v: &Value| -> Vec<i64> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect()
    };
    let get = |q: String| {
        let h = &h;
        let ann = ann.clone();
        async move {
            let (s, v, _) = h
                .call(Method::GET, &format!("/v1/fetch?{q}"), Some(&ann), None)
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            v
        }
    };
    // Backward from the newest.
    let p1 = get(format!("chat_id={chat}&limit=3")).await;
    assert_eq!(seqs(&p1), [5, 6, 7]);
    let t = p1["next_page_token"].as_str().unwrap();
    let p2 = get(format!("chat_id={chat}&limit=3&page_token={t}")).await;
    assert_eq!(seqs(&p2), [2, 3, 4]);
    let t = p2["next_page_token"].as_str().unwrap();
    let p3 = get(format!("chat_id={chat}&limit=3&page_token={t}")).await;
    assert_eq!(seqs(&p3), [1]);
    assert!(p3["next_page_token"].is_null());
    // Default limit covers everything here.
    let all = get(format!("chat_id={chat}")).await;
    assert_eq!(seqs(&all), [1, 2, 3, 4, 5, 6, 7]);
    assert!(all["next_page_token"].is_null());
    // Forward from a seq.
    let f1 = get(format!("chat_id={chat}&after_seq=0&limit=3")).await;
    assert_eq!(seqs(&f1), [1, 2, 3]);
    let t = f1["next_page_token"].as_str().unwrap();
    let f2 = get(format!("chat_id={chat}&limit=3&page_token={t}")).await;
    assert_eq!(seqs(&f2), [4, 5, 6]);
    let t = f2["next_page_token"].as_str().unwrap();
    let f3 = get(format!("chat_id={chat}&limit=3&page_token={t}")).await;
    assert_eq!(seqs(&f3), [7]);
    assert!(f3["next_page_token"].is_null());
    let f4 = get(format!("chat_id={chat}&after_seq=4&limit=3")).await;
    assert_eq!(seqs(&f4), [5, 6, 7]);
    assert!(
        f4["next_page_token"].is_null(),
        "exactly the rest: no more pages"
    );
    let none = get(format!("chat_id={chat}&after_seq=7")).await;
    assert!(seqs(&none).is_empty());
    assert!(none["next_page_token"].is_null());
}

#[tokio::test]
async fn chats_and_membership_rules() {
    let h = Harness::start().await;
    let (ann_id, ann) = h.user("ann").await;
    let (bob_id, bob) = h.user("bob").await;
    let (cat_id, cat) = h.user("cat").await;
    let (dan_id, _dan) = h.user("dan").await;
    let chat = h.chat(&ann, &[bob_id, bob_id, ann_id]).await;

    let (s, v, _) = h
        .call(Method::GET, &format!("/v1/chats/{chat}"), Some(&bob), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["member_ids"], json!([ann_id, bob_id]));
    let (s, v, _) = h.call(Method::GET, "/v1/chats", Some(&bob), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["chats"][0]["chat_id"], chat.get());
    assert_eq!(v["chats"][0]["role"], "member");

    // A plain member may not add.
    let path = format!("/v1/chats/{chat}/members");
    let (s, v, _) = h
        .call(
            Method::POST,
            &path,
            Some(&bob),
            Some(json!({"user_id": cat_id})),
        )
        .await;
    assert_error(s, &v, 403, "forbidden");
    // The owner may; an unknown user is 404; adding twice changes nothing.
    let (s, _, _) = h
        .call(
            Method::POST,
            &path,
            Some(&ann),
            Some(json!({"user_id": cat_id})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = h
        .call(
            Method::POST,
            &path,
            Some(&ann),
            Some(json!({"user_id": cat_id})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v, _) = h
        .call(
            Method::POST,
            &path,
            Some(&ann),
            Some(json!({"user_id": 99999})),
        )
        .await;
    assert_error(s, &v, 404, "not_found");

    // Make cat an admin directly in the store (the REST API has no promotion yet).
    h.store.remove_member(chat, cat_id).await.unwrap();
    h.store
        .add_member(
            chat,
            Member {
                user_id: cat_id,
                role: Role::Admin,
            },
            100,
        )
        .await
        .unwrap();
    // An admin adds and removes members but not the owner.
    let (s, _, _) = h
        .call(
            Method::POST,
            &path,
            Some(&cat),
            Some(json!({"user_id": dan_id})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = h
        .call(
            Method::DELETE,
            &format!("{path}/{dan_id}"),
            Some(&cat),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v, _) = h
        .call(
            Method::DELETE,
            &format!("{path}/{ann_id}"),
            Some(&cat),
            None,
        )
        .await;
    assert_error(s, &v, 403, "forbidden");
    // A member cannot remove others but may leave.
    let (s, v, _) = h
        .call(
            Method::DELETE,
            &format!("{path}/{cat_id}"),
            Some(&bob),
            None,
        )
        .await;
    assert_error(s, &v, 403, "forbidden");
    let (s, _, _) = h
        .call(
            Method::DELETE,
            &format!("{path}/{bob_id}"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = h.send(&bob, chat, "still in?").await;
    assert_error(s, &v, 403, "not_a_member");
    // Removing someone who is not a member.
    let (s, v, _) = h
        .call(
            Method::DELETE,
            &format!("{path}/{bob_id}"),
            Some(&ann),
            None,
        )
        .await;
    assert_error(s, &v, 404, "not_found");
}

#[tokio::test]
async fn health_and_metrics() {
    let h = Harness::start().await;
    let (s, v, _) = h.call(Method::GET, "/v1/health", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v,
        json!({"status": "ok", "node_id": "http-test",
               "storage": {"metadata": "ok", "messages": "ok"}, "broker": "ok"})
    );
    let (_, ann) = h.user("ann").await;
    let chat = h.chat(&ann, &[]).await;
    h.send(&ann, chat, "one").await;
    assert_eq!(h.metric("chat_messages_sent_total").await, 1);
    let text = h
        .http
        .get(h.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(
        "chat_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/send\"} 1"
    ));
    assert!(text.contains("# TYPE chat_slow_consumer_disconnects counter"));
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn websocket_ready_send_ack_delivery_and_ping() {
    let h = Harness::start().await;
    let (ann_id, ann) = h.user("ann").await;
    let (bob_id, bob) = h.user("bob").await;
    let chat = h.chat(&ann, &[bob_id]).await;
    h.send(&ann, chat, "before").await;

    let (mut a, ready) = h.ws(&ann).await;
    assert_eq!(ready["user_id"], ann_id.get());
    assert_eq!(
        ready["chats"],
        json!([{"chat_id": chat, "last_seq": 1, "last_rev": 1}])
    );
    let (mut b, _) = h.ws(&bob).await;

    a.send(WsMessage::text(
        json!({"type": "send", "chat_id": chat, "msg_text": " hi ", "client_msg_id": "c1"})
            .to_string(),
    ))
    .await
    .unwrap();
    // Ann's connection gets both the ack and the message event (in some order).
    let mut got = [next_json(&mut a).await, next_json(&mut a).await];
    got.sort_by_key(|v| v["type"].as_str().unwrap().to_owned());
    assert_eq!(got[0]["type"], "ack");
    assert_eq!(got[0]["client_msg_id"], "c1");
    assert_eq!(got[0]["message"]["seq"], 2);
    assert_eq!(got[0]["message"]["msg_text"], "hi");
    assert_eq!(got[1]["type"], "message");
    let m = next_json(&mut b).await;
    assert_eq!(m["type"], "message");
    assert_eq!(m["message"], got[0]["message"]);

    // A retry is acked with the original and not delivered again.
    a.send(WsMessage::text(
        json!({"type": "send", "chat_id": chat, "msg_text": "changed", "client_msg_id": "c1"})
            .to_string(),
    ))
    .await
    .unwrap();
    let ack = next_json(&mut a).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["message"], got[0]["message"]);

    // A REST send reaches both sockets.
    h.send(&bob, chat, "from rest").await;
    assert_eq!(next_json(&mut a).await["message"]["seq"], 3);
    assert_eq!(next_json(&mut b).await["message"]["seq"], 3);

    a.send(WsMessage::text(r#"{"type":"ping"}"#)).await.unwrap();
    assert_eq!(next_json(&mut a).await, json!({"type": "pong"}));

    // Errors on a send come back as error frames with the client_msg_id.
    a.send(WsMessage::text(
        json!({"type": "send", "chat_id": chat, "msg_text": "   ", "client_msg_id": "c2"})
            .to_string(),
    ))
    .await
    .unwrap();
    let e = next_json(&mut a).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "invalid_argument");
    assert_eq!(e["client_msg_id"], "c2");
    a.send(WsMessage::text(
        json!({"type": "send", "chat_id": 424242, "msg_text": "x", "client_msg_id": "c3"})
            .to_string(),
    ))
    .await
    .unwrap();
    let e = next_json(&mut a).await;
    assert_eq!(e["code"], "not_found");
}

#[tokio::test]
async fn websocket_rejects_bad_credentials_and_non_upgrades() {
    let h = Harness::start().await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?token=nope", h.addr))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!("expected an HTTP 401, got {other}"),
    }
    let (_, ann) = h.user("ann").await;
    // Authorization header works too.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/v1/ws", h.addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {ann}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "ready");
    // A plain GET is not an upgrade.
    let (s, v, _) = h.call(Method::GET, "/v1/ws", Some(&ann), None).await;
    assert_error(s, &v, 400, "bad_request");
}

#[tokio::test]
async fn websocket_bad_frames_get_error_frames_and_the_connection_stays() {
    let h = Harness::start().await;
    let (_, ann) = h.user("ann").await;
    let chat = h.chat(&ann, &[]).await;
    let (mut ws, _) = h.ws(&ann).await;
    for bad in [
        "not json".to_owned(),
        "{}".to_owned(),
        r#"{"type":"dance"}"#.to_owned(),
        json!({"type": "send", "chat_id": "abc", "msg_text": "x", "client_msg_id": "k"})
            .to_string(),
        json!({"type": "send", "chat_id": chat, "msg_text": 5, "client_msg_id": "k5"}).to_string(),
        json!({"type": "send", "chat_id": chat, "msg_text": "no id"}).to_string(),
    ] {
        ws.send(WsMessage::text(bad.clone())).await.unwrap();
        let e = next_json(&mut ws).await;
        assert_eq!(e["type"], "error", "{bad}");
        assert_eq!(e["code"], "bad_request", "{bad}");
    }
    ws.send(WsMessage::text(
        json!({"type": "send", "chat_id": chat, "msg_text": 5, "client_msg_id": "k5"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["client_msg_id"], "k5");
    ws.send(WsMessage::text(r#"{"type":"ping"}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    h.assert_serving().await;
}

#[tokio::test]
async fn websocket_invalid_utf8_closes_with_1007() {
    let h = Harness::start().await;
    let (_, ann) = h.user("ann").await;
    let (mut ws, _) = h.ws(&ann).await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    ws.send(WsMessage::Frame(frame)).await.unwrap();
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, 1007);
    assert!(reason.contains("UTF-8"), "{reason}");
    h.assert_serving().await;
}

#[tokio::test]
async fn websocket_frame_over_64k_closes_with_1009() {
    let h = Harness::start().await;
    let (_, ann) = h.user("ann").await;
    let (mut ws, _) = h.ws(&ann).await;
    ws.send(WsMessage::text("x".repeat(64 * 1024 + 1)))
        .await
        .unwrap();
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, 1009);
    assert!(!reason.is_empty());
    h.assert_serving().await;
}

#[tokio::test]
async fn websocket_binary_frame_closes_with_1003() {
    let h = Harness::start().await;
    let (_, ann) = h.user("ann").await;
    let (mut ws, _) = h.ws(&ann).await;
    ws.send(WsMessage::binary(vec![1u8, 2, 3])).await.unwrap();
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, u16::from(CloseCode::Unsupported));
    assert!(!reason.is_empty());
    h.assert_serving().await;
}

#[tokio::test]
async fn logout_closes_that_sessions_sockets_only() {
    let h = Harness::start().await;
    let (_, ann) = h.user("ann").await;
    let (s, v, _) = h
        .call(
            Method::POST,
            "/v1/sessions",
            None,
            Some(json!({"email": "ann@http.test", "password": "password123"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let other = v["token"].as_str().unwrap().to_owned();
    let (mut ws1, _) = h.ws(&ann).await;
    let (mut ws2, _) = h.ws(&other).await;
    let (s, _, _) = h
        .call(Method::DELETE, "/v1/sessions/current", Some(&ann), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (code, reason) = close_of(&mut ws1).await;
    assert_eq!(code, 1008);
    assert_eq!(reason, "session revoked");
    ws2.send(WsMessage::text(r#"{"type":"ping"}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws2).await["type"], "pong");
}

#[tokio::test]
async fn membership_changes_reach_live_sockets() {
    let h = Harness::start().await;
    let (_, ann) = h.user("ann").await;
    let (bob_id, bob) = h.user("bob").await;
    let chat = h.chat(&ann, &[]).await;
    let (mut a, _) = h.ws(&ann).await;
    let (mut b, ready) = h.ws(&bob).await;
    assert_eq!(ready["chats"], json!([]));

    let path = format!("/v1/chats/{chat}/members");
    let (s, _, _) = h
        .call(
            Method::POST,
            &path,
            Some(&ann),
            Some(json!({"user_id": bob_id})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let upd = next_json(&mut b).await;
    assert_eq!(upd["type"], "chat_updated");
    assert_eq!(upd["chat"]["chat_id"], chat.get());
    let upd = next_json(&mut a).await;
    assert_eq!(upd["type"], "chat_updated");
    assert_eq!(upd["chat"]["member_ids"].as_array().unwrap().len(), 2);

    // Bob now gets the chat's messages live.
    h.send(&ann, chat, "welcome").await;
    assert_eq!(next_json(&mut b).await["message"]["msg_text"], "welcome");
    assert_eq!(next_json(&mut a).await["message"]["msg_text"], "welcome");

    // Removed: one removed_from_chat, then nothing of that chat.
    let (s, _, _) = h
        .call(
            Method::DELETE,
            &format!("{path}/{bob_id}"),
            Some(&ann),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let gone = next_json(&mut b).await;
    assert_eq!(gone, json!({"type": "removed_from_chat", "chat_id": chat}));
    assert_eq!(next_json(&mut a).await["type"], "chat_updated");
    h.send(&ann, chat, "private").await;
    assert_eq!(next_json(&mut a).await["message"]["msg_text"], "private");
    // Bob's next frame is the pong, not the private message.
    b.send(WsMessage::text(r#"{"type":"ping"}"#)).await.unwrap();
    assert_eq!(next_json(&mut b).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn slow_reader_is_disconnected_and_others_keep_being_served() {
    let mut cfg = config();
    cfg.outbound_queue = 32;
    let h = Harness::launch(cfg).await;
    let (_, ann) = h.user("ann").await;
    let (slow_id, slow) = h.user("slow").await;
    let (fast_id, fast) = h.user("fast").await;
    let chat = h.chat(&ann, &[slow_id, fast_id]).await;

    // The slow reader: a small receive buffer and a client that never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(h.addr).await.unwrap();
    let (mut slow_ws, _) = tokio_tungstenite::client_async(
        format!("ws://{}/v1/ws?token={slow}", h.addr),
        MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();

    // A fast reader in the same chat reads everything as it comes.
    let (mut fast_ws, _) = h.ws(&fast).await;
    let fast_reader = tokio::spawn(async move {
        let mut last = 0;
        loop {
            let v = next_json(&mut fast_ws).await;
            if v["type"] == "message" {
                let seq = v["message"]["seq"].as_i64().unwrap();
                assert_eq!(seq, last + 1, "the fast reader misses nothing");
                last = seq;
                if v["message"]["msg_text"] == "done" {
                    return (last, fast_ws);
                }
            }
        }
    });

    let before = h.metric("chat_slow_consumer_disconnects_total").await;
    let text = "x".repeat(4000);
    let mut sent = 0i64;
    // Flood until the server gives up on the slow reader; the cap only guards against a hang.
    while h.metric("chat_slow_consumer_disconnects_total").await == before {
        assert!(sent < 20_000, "the slow reader was never disconnected");
        for _ in 0..50 {
            let (s, v) = h.send(&ann, chat, &text).await;
            assert_eq!(s, StatusCode::CREATED, "the sender keeps being served: {v}");
            sent += 1;
        }
    }
    let (s, _) = h.send(&ann, chat, "done").await;
    assert_eq!(s, StatusCode::CREATED);
    sent += 1;
    let (last, _fast_ws) = tokio::time::timeout(PATIENCE, fast_reader)
        .await
        .expect("fast reader finished")
        .unwrap();
    assert_eq!(last, sent);

    // The slow reader comes back to its socket a while later (slow, not gone), drains what
    // the kernel buffered and then finds the close frame (1008, saying why): the server waits
    // for it to get through behind the buffered frames.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ended = tokio::time::timeout(PATIENCE, async {
        let mut frames = 0i64;
        loop {
            match slow_ws.next().await {
                Some(Ok(WsMessage::Close(Some(f)))) => {
                    assert_eq!(u16::from(f.code), 1008);
                    assert!(f.reason.as_str().starts_with("slow consumer"), "{f:?}");
                    return frames;
                }
                Some(Ok(_)) => frames += 1,
                Some(Err(e)) => {
                    panic!("the slow reader's stream failed before its close frame: {e}")
                }
                None => panic!("the slow reader's stream ended without its close frame"),
            }
        }
    })
    .await
    .expect("the slow reader's connection was closed");
    assert!(
        ended < sent,
        "the slow reader got {ended} frames of {sent} messages: it was cut off"
    );
    // Only the fast reader is left once the server has torn the slow connection down.
    let left = tokio::time::timeout(PATIENCE, async {
        loop {
            let n = h.metric("chat_ws_connections").await;
            if n == 1 {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(left, Ok(1));
    h.assert_serving().await;
}

/// The server pings; a client that answers (any frame counts as liveness) stays connected past
/// the idle timeout, and one that stops answering is closed with 1001.
#[tokio::test]
async fn pings_keep_a_reading_client_alive_and_a_silent_one_is_closed_1001() {
    let mut cfg = config();
    cfg.ws_ping_interval = Duration::from_millis(100);
    cfg.ws_idle_timeout = Duration::from_millis(500);
    let h = Harness::launch(cfg).await;
    let (_, token) = h.user("pinged").await;
    let (mut ws, _) = h.ws(&token).await;

    // Reading makes the client library answer each ping with a pong.
    let mut pings = 0;
    let reading = tokio::time::timeout(Duration::from_millis(1500), async {
        while let Some(msg) = ws.next().await {
            match msg.unwrap() {
                WsMessage::Ping(_) => pings += 1,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    })
    .await;
    assert!(
        reading.is_err(),
        "the connection stayed open while answering"
    );
    assert!(pings >= 5, "the server pinged every 100 ms, got {pings}");

    // Silent: nothing read, so no pongs; the server gives up after the idle timeout.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
}

/// `ServerHandle::abort` is a crash: open WebSockets end without a close frame.
#[tokio::test]
async fn abort_drops_sockets_without_a_close_frame() {
    let mut h = Harness::start().await;
    let (_, ann) = h.user("ann").await;
    let (mut ws, _) = h.ws(&ann).await;
    h.handle.take().unwrap().abort();
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the socket ended");
    assert!(
        !matches!(ended, Some(Ok(_))),
        "no frame after a crash, got {ended:?}"
    );
}

#[tokio::test]
async fn graceful_shutdown_closes_sockets_with_1012() {
    let mut h = Harness::start().await;
    let (_, ann) = h.user("ann").await;
    let chat = h.chat(&ann, &[]).await;
    h.send(&ann, chat, "kept").await;
    let (mut ws, _) = h.ws(&ann).await;
    let handle = h.handle.take().unwrap();
    let shutdown = tokio::spawn(handle.shutdown());
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, 1012);
    assert!(!reason.is_empty());
    tokio::time::timeout(PATIENCE, shutdown)
        .await
        .expect("shutdown finished")
        .unwrap()
        .unwrap();
    // No longer accepting.
    assert!(TcpStream::connect(h.addr).await.is_err());
    // What was acked is in the store.
    let page =
        chat_core::MessageStore::fetch(&h.store, chat, chat_core::FetchQuery::Latest { limit: 10 })
            .await
            .unwrap();
    assert_eq!(page.len(), 1);
}

/// A send moves the sender's own read marker a moment later (written in batches); a graceful
/// shutdown right after the send writes it first, so a clean restart loses no move.
#[tokio::test]
async fn graceful_shutdown_writes_the_senders_pending_read_marker() {
    let mut h = Harness::start().await;
    let (ann_id, ann) = h.user("ann").await;
    let (bob_id, bob) = h.user("bob").await;
    let chat = h.chat(&ann, &[bob_id]).await;
    h.send(&bob, chat, "first").await;
    // Shut down at once: well within the flusher's window after the send.
    let (s, _) = h.send(&ann, chat, "last words").await;
    assert_eq!(s, StatusCode::CREATED);
    let handle = h.handle.take().unwrap();
    tokio::time::timeout(PATIENCE, handle.shutdown())
        .await
        .expect("shutdown finished")
        .unwrap();
    let markers = chat_core::MetadataStore::read_markers(&h.store, chat)
        .await
        .unwrap();
    let ann_marker = markers.iter().find(|m| m.user_id == ann_id).unwrap();
    assert_eq!(ann_marker.last_read_seq, chat_core::Seq(2), "{markers:?}");
}

/// The web client's files: each with its content type, the page's security headers and an
/// ETag that turns a reload into a 304; everything else under `/` stays the API's JSON 404.
#[tokio::test]
async fn the_web_client_is_served_with_its_headers_and_other_paths_stay_api_errors() {
    let h = Harness::start().await;
    for (path, content_type, needle) in [
        (
            "/",
            "text/html; charset=utf-8",
            "<script type=\"module\" src=\"/app.js\">",
        ),
        ("/app.js", "text/javascript; charset=utf-8", "textContent"),
        ("/app.css", "text/css; charset=utf-8", "@media"),
    ] {
        let r = h.http.get(h.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(header("content-type"), content_type, "{path}");
        let csp = header("content-security-policy");
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
        ] {
            assert!(csp.contains(part), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(header("cache-control"), "no-cache", "{path}");
        let etag = header("etag");
        assert!(etag.starts_with('"') && etag.len() > 2, "{path}: {etag}");
        assert!(r.text().await.unwrap().contains(needle), "{path}");

        let again = h
            .http
            .get(h.url(path))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert!(again.bytes().await.unwrap().is_empty(), "{path}");
    }
    // No inline script in the page: the CSP would refuse it, so none may be needed.
    let page = h.http.get(h.url("/")).send().await.unwrap();
    let page = page.text().await.unwrap();
    assert_eq!(page.matches("<script").count(), 1, "only the module script");
    let inline_handler = page.match_indices(" on").any(|(i, _)| {
        let rest = &page[i + 3..];
        let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
        name_len > 0 && rest[name_len..].starts_with('=')
    });
    assert!(!inline_handler, "no inline event handler attributes");

    for path in ["/index.html", "/app.js.map", "/v1", "/web/app.js"] {
        let (status, body, _) = h.call(Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
}
