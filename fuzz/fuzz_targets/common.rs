//! Shared by the fuzz targets: one real server over SQLite in a temporary directory, with a
//! registered, logged-in user who owns one chat, built once per fuzzing process.

#![allow(dead_code)] // Each target uses part of it.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chat_core::{ChatId, UserId};
use chat_server::broker::LocalBroker;
use chat_server::{AbuseLimits, Config, PasswordHashing, Server};
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};
use tower::ServiceExt as _;

/// The server and what the targets need to talk to it as an authenticated member.
pub struct World {
    pub rt: tokio::runtime::Runtime,
    pub server: Server,
    pub router: axum::Router,
    pub token: String,
    pub user_id: UserId,
    pub chat_id: ChatId,
    _dir: tempfile::TempDir,
}

/// The process-wide world, built on first use.
pub fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(build)
}

fn build() -> World {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = chat_storage::sqlite::SqliteStore::open(dir.path().join("chat.db")).expect("store");
    let config = Config {
        node_id: "fuzz".into(),
        password_hashing: PasswordHashing::fast_insecure(),
        limits: chat_core::Limits {
            send_rate_per_sec: 0,
            ..chat_core::Limits::default()
        },
        abuse: AbuseLimits::unthrottled(),
        ..Config::default()
    };
    let server = Server::new(
        Arc::new(store.clone()),
        Arc::new(store),
        Arc::new(LocalBroker::new()),
        config,
    );
    let router = rt.block_on(async { server.router() });
    let (token, user_id, chat_id) = rt.block_on(async {
        let (s, _) = call(
            &router,
            "POST",
            "/v1/users",
            None,
            Some(json!({
                "email": "fuzz@fuzz.test", "password": "fuzzing password"
            })),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, v) = call(
            &router,
            "POST",
            "/v1/sessions",
            None,
            Some(json!({
                "email": "fuzz@fuzz.test", "password": "fuzzing password"
            })),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let token = v["token"].as_str().expect("token").to_owned();
        let user = UserId(v["user_id"].as_i64().expect("user_id"));
        let (s, v) = call(
            &router,
            "POST",
            "/v1/chats",
            Some(&token),
            Some(json!({
                "chat_name": "fuzz", "member_ids": []
            })),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        (token, user, ChatId(v["chat_id"].as_i64().expect("chat_id")))
    });
    World {
        rt,
        server,
        router,
        token,
        user_id,
        chat_id,
        _dir: dir,
    }
}

/// One request through the router; the answer's status and JSON body (`Null` when empty).
pub async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let bytes = body.map(|b| b.to_string().into_bytes());
    raw(router, method, uri, token, bytes).await
}

/// One request with a raw JSON body.
pub async fn raw(
    router: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b)),
        None => req.body(Body::empty()),
    }
    .expect("request");
    let resp = router
        .clone()
        .oneshot(req)
        .await
        .expect("infallible router");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .expect("body");
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "non-JSON answer {status} ({e}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (status, v)
}

/// The contract's checks on any answer: never a 5xx for client input, and every error is
/// `{"error": {"code", "message"}}` with a non-empty code.
pub fn check_answer(what: &str, status: StatusCode, body: &Value) {
    assert!(
        !status.is_server_error(),
        "{what}: server error {status}: {body}"
    );
    if status.is_client_error() {
        let code = body["error"]["code"].as_str().unwrap_or("");
        assert!(
            !code.is_empty(),
            "{what}: {status} without an error code: {body}"
        );
        assert!(body["error"]["message"].is_string(), "{what}: {body}");
    }
}
