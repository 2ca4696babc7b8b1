//! The abuse limits, each against a real server on `127.0.0.1:0` with that limit set low:
//! login, registration and send rates per address and per account, WebSockets per user, the
//! connection cap and the cap per address, bounded password hashing, header read and request
//! timeouts, sessions expiring under open WebSockets, `X-Forwarded-For` only from trusted
//! proxies, and no permessage-deflate.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod sqlite_server;

use chat_server::{AbuseLimits, Config, RateLimit};
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use sqlite_server::{quiet_config, SqliteServer as Harness, PATIENCE};

/// A limit that refills so slowly that no test sees a refill.
fn burst(n: u32) -> RateLimit {
    RateLimit::new(0.0001, n)
}

impl Harness {
    async fn start(abuse: AbuseLimits) -> Harness {
        Harness::launch(Config {
            abuse,
            ..quiet_config("abuse")
        })
        .await
    }

    async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Value,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut req = self
            .http
            .post(format!("http://{}{path}", self.addr))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let h = resp.headers().clone();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, v, h)
    }

    async fn register(&self, email: &str, headers: &[(&str, &str)]) -> StatusCode {
        let body = json!({"email": email, "password": "password123"});
        self.post("/v1/users", None, headers, body).await.0
    }

    async fn login(&self, email: &str, password: &str) -> (StatusCode, Value) {
        let body = json!({"email": email, "password": password});
        let (s, v, h) = self.post("/v1/sessions", None, &[], body).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert_rate_limited(s, &v, &h);
        }
        (s, v)
    }

    /// Registers and logs in; returns the token.
    async fn user(&self, email: &str) -> String {
        assert_eq!(self.register(email, &[]).await, StatusCode::CREATED);
        let (s, v) = self.login(email, "password123").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    async fn ws(
        &self,
        token: &str,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
        tokio_tungstenite::tungstenite::Error,
    > {
        let url = format!("ws://{}/v1/ws?token={token}", self.addr);
        tokio_tungstenite::connect_async(url)
            .await
            .map(|(ws, _)| ws)
    }
}

fn assert_rate_limited(s: StatusCode, v: &Value, h: &reqwest::header::HeaderMap) {
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
}

#[tokio::test]
async fn logins_are_limited_per_address_and_per_account_and_address() {
    let h = Harness::start(AbuseLimits {
        login_per_addr: burst(4),
        ..AbuseLimits::unthrottled()
    })
    .await;
    h.user("a@abuse.test").await; // one login
    for _ in 0..3 {
        assert_eq!(
            h.login("a@abuse.test", "wrong pass").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    // The address has used its four attempts: even the right password is refused now.
    assert_eq!(
        h.login("a@abuse.test", "password123").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );

    let h = Harness::start(AbuseLimits {
        login_per_account: burst(2),
        ..AbuseLimits::unthrottled()
    })
    .await;
    h.user("victim@abuse.test").await;
    assert_eq!(
        h.login("VICTIM@abuse.test", "guess one").await.0,
        StatusCode::UNAUTHORIZED
    );
    // The account's attempts from this address are spent (case-insensitively); another
    // account is untouched.
    assert_eq!(
        h.login("victim@abuse.test", "guess two").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    h.user("other@abuse.test").await;
    // The owner, from another address, still gets in: a guesser cannot lock them out.
    let owner = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 3]))
        .build()
        .unwrap();
    let resp = owner
        .post(format!("http://{}/v1/sessions", h.addr))
        .json(&json!({"email": "victim@abuse.test", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the owner was locked out");
}

#[tokio::test]
async fn registrations_are_limited_per_address_and_forwarded_for_needs_a_trusted_proxy() {
    let h = Harness::start(AbuseLimits {
        register_per_addr: burst(2),
        ..AbuseLimits::unthrottled()
    })
    .await;
    assert_eq!(h.register("r1@abuse.test", &[]).await, StatusCode::CREATED);
    // A bad request still costs an attempt (it is work the server did for this address).
    assert_eq!(
        h.register("not an email", &[]).await,
        StatusCode::BAD_REQUEST
    );
    // X-Forwarded-For from an untrusted peer is ignored: this is still the same address.
    let forged = [("x-forwarded-for", "198.51.100.1")];
    let (s, v, hd) = h
        .post(
            "/v1/users",
            None,
            &forged,
            json!({"email": "r2@abuse.test", "password": "password123"}),
        )
        .await;
    assert_rate_limited(s, &v, &hd);

    // Behind a trusted proxy (this test's loopback), each forwarded client has its own bucket.
    let h = Harness::start(AbuseLimits {
        register_per_addr: burst(1),
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..AbuseLimits::unthrottled()
    })
    .await;
    let client_a = [("x-forwarded-for", "203.0.113.1")];
    let client_b = [("x-forwarded-for", "192.0.2.9, 203.0.113.2")];
    assert_eq!(
        h.register("a1@abuse.test", &client_a).await,
        StatusCode::CREATED
    );
    assert_eq!(
        h.register("a2@abuse.test", &client_a).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The rightmost untrusted hop counts; the client-written "192.0.2.9" does not.
    assert_eq!(
        h.register("b1@abuse.test", &client_b).await,
        StatusCode::CREATED
    );
    assert_eq!(h.register("c1@abuse.test", &[]).await, StatusCode::CREATED);
}

#[tokio::test]
async fn sends_are_limited_per_address_over_rest_and_websocket() {
    let h = Harness::start(AbuseLimits {
        send_per_addr: burst(3),
        ..AbuseLimits::unthrottled()
    })
    .await;
    let alice = h.user("alice@abuse.test").await;
    let bob = h.user("bob@abuse.test").await;
    let (s, chat, _) = h
        .post(
            "/v1/chats",
            Some(&alice),
            &[],
            json!({"chat_name": "c", "member_ids": []}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let chat_id = chat["chat_id"].as_i64().unwrap();
    let (_, bob_chat, _) = h
        .post(
            "/v1/chats",
            Some(&bob),
            &[],
            json!({"chat_name": "b", "member_ids": []}),
        )
        .await;
    for i in 0..2 {
        let (s, v, _) = h
            .post(
                "/v1/send",
                Some(&alice),
                &[],
                json!({"chat_id": chat_id, "msg_text": format!("m{i}")}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    // The third send from this address is bob's, on a WebSocket: it is the last one allowed.
    let mut ws = h.ws(&bob).await.unwrap();
    let send = |n: u32| {
        WsMessage::Text(
            json!({"type": "send", "chat_id": bob_chat["chat_id"], "msg_text": "hi", "client_msg_id": format!("c{n}")})
                .to_string()
                .into(),
        )
    };
    ws.send(send(1)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "ack");
    ws.send(send(2)).await.unwrap();
    let err = next_json(&mut ws).await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "rate_limited", "{err}");
    let (s, v, hd) = h
        .post(
            "/v1/send",
            Some(&alice),
            &[],
            json!({"chat_id": chat_id, "msg_text": "more"}),
        )
        .await;
    assert_rate_limited(s, &v, &hd);
}

async fn next_json(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) -> Value {
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match msg {
            WsMessage::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                // Skip the greeting, the live copies of our own messages and presence notices.
                if v["type"] != "ready" && v["type"] != "message" && v["type"] != "presence" {
                    return v;
                }
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn websockets_per_user_are_capped_and_slots_come_back() {
    let h = Harness::start(AbuseLimits {
        ws_per_user: 2,
        ..AbuseLimits::unthrottled()
    })
    .await;
    let token = h.user("ws@abuse.test").await;
    let other = h.user("ws2@abuse.test").await;
    let mut first = h.ws(&token).await.unwrap();
    let _second = h.ws(&token).await.unwrap();
    match h.ws(&token).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
        }
        other => panic!("a third socket was not refused: {:?}", other.map(|_| ())),
    }
    // Another user is not affected.
    let _theirs = h.ws(&other).await.unwrap();
    // Closing one frees its slot (the server notices the close asynchronously: retry).
    first.close(None).await.unwrap();
    while first.next().await.is_some() {}
    let mut again = None;
    for _ in 0..600 {
        if let Ok(ws) = h.ws(&token).await {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "the closed socket's slot never came back");
}

#[tokio::test]
async fn silent_and_trickling_clients_are_dropped_by_the_header_timeout() {
    let h = Harness::start(AbuseLimits {
        header_read_timeout: Duration::from_millis(500),
        ..AbuseLimits::unthrottled()
    })
    .await;
    // Sends nothing at all.
    let mut silent = TcpStream::connect(h.addr).await.unwrap();
    // Sends half a request line, then stops.
    let mut trickle = TcpStream::connect(h.addr).await.unwrap();
    trickle.write_all(b"GET /v1/health HT").await.unwrap();
    for sock in [&mut silent, &mut trickle] {
        let mut buf = Vec::new();
        // The server closes the socket (possibly after a 408); reading returns EOF rather than
        // waiting forever.
        let read = tokio::time::timeout(PATIENCE, sock.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the server kept an idle socket open");
    }
    // And it still serves.
    let resp = h
        .http
        .get(format!("http://{}/v1/health", h.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_slow_body_gets_408_in_the_error_format() {
    let h = Harness::start(AbuseLimits {
        request_timeout: Duration::from_millis(500),
        ..AbuseLimits::unthrottled()
    })
    .await;
    let mut sock = TcpStream::connect(h.addr).await.unwrap();
    sock.write_all(
        b"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\"",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(PATIENCE, sock.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let h = Harness::start(AbuseLimits {
        max_connections: 2,
        ..AbuseLimits::unthrottled()
    })
    .await;
    // Two kept-alive connections hold both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(s);
    }
    // A third is not served while they stay open...
    let third = tokio::spawn({
        let http = h.http.clone();
        let url = format!("http://{}/v1/health", h.addr);
        async move { http.get(url).send().await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a connection over the cap was served");
    // ...and is served as soon as one goes away.
    drop(held.pop());
    let status = tokio::time::timeout(PATIENCE, third)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn permessage_deflate_is_never_negotiated() {
    let h = Harness::start(AbuseLimits::unthrottled()).await;
    let token = h.user("deflate@abuse.test").await;
    let mut req = format!("ws://{}/v1/ws?token={token}", h.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-extensions",
        "permessage-deflate; client_max_window_bits"
            .parse()
            .unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert!(
        resp.headers().get("sec-websocket-extensions").is_none(),
        "the server agreed to an extension: {:?}",
        resp.headers()
    );
    ws.send(WsMessage::Text(json!({"type": "ping"}).to_string().into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "pong");
}

/// The peak resident set of this process (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Anonymous logins cannot make the server hash without bound: argon2id at its real cost
/// (19 MiB a hash) runs one per core, a short queue waits, and everyone else is told 429 with
/// `Retry-After` before any memory is taken. 150 concurrent logins for unknown emails used to
/// take the server from ~150 MB to 2.8 GB.
#[tokio::test]
async fn concurrent_logins_cannot_exhaust_memory_with_password_hashing() {
    let h = Harness::launch(Config {
        password_hashing: chat_server::PasswordHashing::default(),
        abuse: AbuseLimits {
            password_hash_queue: 8,
            ..AbuseLimits::unthrottled()
        },
        ..quiet_config("hashing")
    })
    .await;
    let before = peak_rss();
    let logins: Vec<_> = (0..150)
        .map(|i| {
            let http = h.http.clone();
            let url = format!("http://{}/v1/sessions", h.addr);
            tokio::spawn(async move {
                let body = json!({"email": format!("nobody{i}@abuse.test"), "password": "guess"});
                let resp = http.post(url).json(&body).send().await.unwrap();
                let status = resp.status();
                let retry_after = resp.headers().get("retry-after").cloned();
                let v = resp.json::<Value>().await.unwrap_or(Value::Null);
                (status, retry_after, v)
            })
        })
        .collect();
    let (mut refused, mut answered) = (0, 0);
    for l in logins {
        let (status, retry_after, v) = l.await.unwrap();
        match status {
            StatusCode::UNAUTHORIZED => answered += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(v["error"]["code"], "rate_limited", "{v}");
                assert!(retry_after.is_some(), "429 without Retry-After");
                refused += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert!(refused > 0, "no login was refused: hashing is not bounded");
    assert!(answered > 0, "no login was served");
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 600 << 20,
        "peak RSS grew by {} MiB for 150 logins",
        grown >> 20
    );
}

/// One address cannot take every connection slot: past its own cap its connections are closed
/// at once, and a health check from another address is answered while it holds its share.
#[tokio::test]
async fn one_address_cannot_take_every_connection_slot() {
    let h = Harness::start(AbuseLimits {
        max_connections: 16,
        max_connections_per_addr: 8,
        header_read_timeout: Duration::from_secs(600),
        ..AbuseLimits::unthrottled()
    })
    .await;
    // 20 silent connections from 127.0.0.1: 8 are held, the rest are closed by the server.
    let mut held = Vec::new();
    let mut closed = 0;
    for _ in 0..20 {
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        let mut buf = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(_)) => panic!("the server wrote to a silent connection"),
            Err(_) => held.push(s),
        }
    }
    assert_eq!(held.len(), 8, "connections held for one address");
    assert_eq!(closed, 12);
    // Another address still gets in, long before the silent ones time out.
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let status = tokio::time::timeout(
        Duration::from_secs(20),
        other.get(format!("http://{}/v1/health", h.addr)).send(),
    )
    .await
    .expect("the health check waited behind another address's connections")
    .unwrap()
    .status();
    assert_eq!(status, StatusCode::OK);
    drop(held);
}

/// An open WebSocket does not outlive its session: when the session expires, the server closes
/// the socket with 1008, as a logout does, and REST answers 401.
#[tokio::test]
async fn an_expired_session_closes_its_open_websocket() {
    let h = Harness::launch(Config {
        session_ttl: Duration::from_secs(3),
        ..quiet_config("expiry")
    })
    .await;
    let token = h.user("expiry@abuse.test").await;
    let mut ws = h.ws(&token).await.unwrap();
    let close = loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the socket outlived its session")
            .expect("the socket ended without a close frame")
            .unwrap();
        match msg {
            WsMessage::Close(frame) => break frame.expect("a close frame with a code"),
            WsMessage::Text(_) | WsMessage::Ping(_) | WsMessage::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "session expired");
    let me = h
        .http
        .get(format!("http://{}/v1/users/me", h.addr))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);
}
