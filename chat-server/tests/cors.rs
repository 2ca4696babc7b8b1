//! CORS: browser apps on the origins given with `--cors-origin` may call the API; other origins,
//! and every origin when the flag is absent, get no CORS headers (so browsers keep them out).
//! The WebSocket and the SDK work the same with CORS on.

mod common;

use common::{messages_of, uid, TestServer};
use reqwest::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ORIGIN,
};
use reqwest::Method;

const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example.net";

/// A preflight for `POST /v1/chats` with a bearer token, as a browser sends it.
async fn preflight(server: &TestServer, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(Method::OPTIONS, format!("{}/v1/chats", server.url()))
        .header(ORIGIN, origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("preflight")
}

/// `GET /v1/health` from a page on `origin`.
async fn simple_get(server: &TestServer, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}/v1/health", server.url()))
        .header(ORIGIN, origin)
        .send()
        .await
        .expect("get")
}

fn header<'a>(resp: &'a reqwest::Response, name: &reqwest::header::HeaderName) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_origins_get_cors_headers_and_others_none() {
    let server = TestServer::start_with("cors_allowed", |c| {
        c.cors_origins = vec![APP.to_owned(), "http://localhost:5173".to_owned()];
    })
    .await;

    let ok = preflight(&server, APP).await;
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(header(&ok, &ACCESS_CONTROL_ALLOW_ORIGIN), Some(APP));
    let methods = header(&ok, &ACCESS_CONTROL_ALLOW_METHODS).unwrap_or_default();
    assert!(
        methods.contains("POST") && methods.contains("PATCH"),
        "{methods}"
    );
    let headers = header(&ok, &ACCESS_CONTROL_ALLOW_HEADERS)
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        headers.contains("authorization") && headers.contains("content-type"),
        "{headers}"
    );

    let other = preflight(&server, EVIL).await;
    assert_eq!(header(&other, &ACCESS_CONTROL_ALLOW_ORIGIN), None);

    let get = simple_get(&server, "http://localhost:5173").await;
    assert_eq!(get.status(), 200);
    assert_eq!(
        header(&get, &ACCESS_CONTROL_ALLOW_ORIGIN),
        Some("http://localhost:5173")
    );
    let get = simple_get(&server, EVIL).await;
    assert_eq!(
        get.status(),
        200,
        "the server answers; the browser hides it"
    );
    assert_eq!(header(&get, &ACCESS_CONTROL_ALLOW_ORIGIN), None);

    // The SDK and the WebSocket are unaffected.
    let a = server.user("cors-a").await;
    let b = server.user("cors-b").await;
    let chat = a.create_chat("cors", &[uid(&b)]).await.expect("create");
    let mut sub = b.subscribe().await.expect("subscribe");
    a.send(chat.chat_id, "through CORS").await.expect("send");
    let got = messages_of(&mut sub, chat.chat_id, 1).await;
    assert_eq!(got[0].msg_text, "through CORS");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_flag_no_origin_gets_cors_headers() {
    let server = TestServer::start("cors_off").await;
    let pre = preflight(&server, APP).await;
    assert_eq!(header(&pre, &ACCESS_CONTROL_ALLOW_ORIGIN), None);
    assert!(
        !pre.status().is_success(),
        "no preflight answer: {}",
        pre.status()
    );
    let get = simple_get(&server, APP).await;
    assert_eq!(get.status(), 200);
    assert_eq!(header(&get, &ACCESS_CONTROL_ALLOW_ORIGIN), None);
}
