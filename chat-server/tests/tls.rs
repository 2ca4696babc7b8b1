//! TLS end to end on one node: a real `chat-server` serving HTTPS and WSS with a certificate made
//! at test time (`rcgen`), driven through the real `chat-client` SDK.
//!
//! - With the certificate added as a root, the SDK registers, creates a chat, subscribes over
//!   `wss://`, sends over `https://` and receives the message live.
//! - Without it, REST and the subscription fail with the typed "certificate not trusted" error,
//!   never falling back to plain HTTP.
//! - Plain `http://` to the TLS port gets a clear 400; `https://` to a plain port is a TLS error.
//!
//! The cluster path (nginx terminating TLS in front of two nodes) is in `tests/cluster.rs`.

mod common;

use chat_client::{Client, Error, Event, TransportKind};
use common::{next_event, TestServer, PASSWORD, PATIENCE};
use futures::StreamExt;
use std::collections::HashMap;

/// A self-signed certificate for 127.0.0.1 and localhost: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let c =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("self-signed certificate");
    (c.cert.pem(), c.key_pair.serialize_pem())
}

/// A server serving HTTPS and WSS with a fresh self-signed certificate; returns it with the
/// certificate's PEM (the root a client must trust).
async fn tls_server(name: &str) -> (TestServer, String) {
    let (cert, key) = self_signed();
    let tls =
        chat_server::TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).expect("TLS config");
    let server = TestServer::start_with(name, |c| c.tls = Some(tls)).await;
    (server, cert)
}

fn https_url(server: &TestServer) -> String {
    format!("https://127.0.0.1:{}", server.addr().port())
}

/// A logged-in user over `https://`, trusting `root`.
async fn tls_user(url: &str, root: &str, name: &str) -> Client {
    let client = Client::builder(url)
        .add_root_certificate_pem(root)
        .build()
        .expect("client");
    let email = format!("{name}@tls.test");
    client
        .register(&email, PASSWORD, Some(name))
        .await
        .unwrap_or_else(|e| panic!("registering {name} over https: {e}"));
    client
        .login(&email, PASSWORD)
        .await
        .unwrap_or_else(|e| panic!("logging in {name} over https: {e}"));
    client
}

#[tokio::test]
async fn the_sdk_trusting_the_root_chats_over_https_and_wss() {
    let (server, root) = tls_server("tls_chat").await;
    let url = https_url(&server);
    let ada = tls_user(&url, &root, "ada").await;
    let bob = tls_user(&url, &root, "bob").await;
    let chat = ada
        .create_chat("over tls", &[bob.user_id().expect("bob's id")])
        .await
        .expect("create chat over https");

    let mut sub = bob.subscribe().await.expect("subscribe over wss");
    loop {
        match next_event(&mut sub).await {
            Event::Connected => break,
            Event::Disconnected { reason, .. } => panic!("wss did not connect: {reason}"),
            _ => {}
        }
    }
    let sent = ada
        .send(chat.chat_id, "hello over TLS")
        .await
        .expect("send over https");
    let got = common::messages_of(&mut sub, chat.chat_id, 1).await;
    assert_eq!(got[0].seq, sent.seq);
    assert_eq!(got[0].msg_text, "hello over TLS");
}

#[tokio::test]
async fn without_the_root_rest_and_subscribe_fail_with_certificate_not_trusted() {
    let (server, root) = tls_server("tls_untrusted").await;
    let url = https_url(&server);
    let trusted = tls_user(&url, &root, "carol").await;

    // REST: the built-in roots only.
    let stranger = Client::new(&url).expect("client");
    let e = stranger
        .register("dave@tls.test", PASSWORD, None)
        .await
        .expect_err("an untrusted certificate must fail");
    assert!(matches!(e, Error::Transport { .. }), "{e:?}");
    assert_eq!(
        e.transport_kind(),
        Some(TransportKind::CertificateNotTrusted),
        "{e}"
    );
    assert!(e.to_string().contains("certificate not trusted"), "{e}");
    // Retried reads are not retried on it: the same certificate fails the same way.
    let same_session = Client::builder(&url)
        .token(trusted.token().expect("token"))
        .build()
        .expect("client");
    let e = same_session.me().await.expect_err("untrusted");
    assert!(matches!(e, Error::Transport { .. }), "not retried: {e:?}");
    assert_eq!(
        e.transport_kind(),
        Some(TransportKind::CertificateNotTrusted)
    );

    // WebSocket: the stream ends at once with the cause, instead of reconnecting forever.
    let mut sub = same_session
        .subscribe_from(HashMap::new())
        .expect("subscription");
    match next_event(&mut sub).await {
        Event::Disconnected {
            reason,
            cause,
            reconnecting,
        } => {
            assert_eq!(
                cause,
                Some(TransportKind::CertificateNotTrusted),
                "{reason}"
            );
            assert!(!reconnecting, "{reason}");
            assert!(reason.contains("certificate not trusted"), "{reason}");
        }
        other => panic!("expected a disconnect, got {other:?}"),
    }
    let end = tokio::time::timeout(PATIENCE, sub.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "the stream ends after the certificate error"
    );
}

#[tokio::test]
async fn plain_http_to_the_tls_port_and_https_to_a_plain_port_fail_cleanly() {
    let (server, _root) = tls_server("tls_plain").await;
    let plain = Client::new(&format!("http://127.0.0.1:{}", server.addr().port())).expect("client");
    let e = tokio::time::timeout(PATIENCE, plain.register("erin@tls.test", PASSWORD, None))
        .await
        .expect("answered, not hung")
        .expect_err("plain HTTP to a TLS port must fail");
    assert_eq!(e.status(), Some(400), "{e:?}");
    assert!(e.to_string().contains("https://"), "{e}");

    let plain_server = TestServer::start("tls_plain_server").await;
    let wrong =
        Client::new(&format!("https://127.0.0.1:{}", plain_server.addr().port())).expect("client");
    let e = tokio::time::timeout(PATIENCE, wrong.register("finn@tls.test", PASSWORD, None))
        .await
        .expect("answered, not hung")
        .expect_err("https:// to a plain port must fail");
    assert_eq!(e.transport_kind(), Some(TransportKind::Tls), "{e}");
}
