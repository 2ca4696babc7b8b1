//! The web client in a real browser: Chromium from Debian's packages, driven over WebDriver
//! (chromedriver) by `fantoccini`, against the real server.
//!
//! Two browser sessions register through the page and chat with each other and with an SDK
//! client; one loses its network (a TCP proxy between it and the server is cut) and catches up
//! when it comes back; history scrolls back to a chat's first message; message text that looks
//! like HTML shows as text; the page carries its Content-Security-Policy. A screenshot of the
//! chat view is saved under the target directory (`tmp/browser-artifacts/chat.png`).
//!
//! Needs `chromedriver` and `chromium` (`scripts/browser.sh install`, run by `scripts/test.sh`);
//! `CHAT_TEST_CHROMEDRIVER` may name the driver. Without them the test fails and says so,
//! unless `CHAT_TEST_SKIP_BROWSER=1` is set.

mod common;

use chat_client::{ChatId, Event};
use common::{TestServer, PATIENCE};
use fantoccini::{Client as Browser, Locator};
use futures::StreamExt;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A chromedriver process on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// Starts chromedriver, or returns `None` when the run opted out of browser tests.
    async fn start() -> Option<Driver> {
        let path = std::env::var("CHAT_TEST_CHROMEDRIVER").ok().or_else(|| {
            ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
                .iter()
                .find(|p| std::path::Path::new(p).exists())
                .map(|p| (*p).to_owned())
        });
        let Some(path) = path else {
            if std::env::var("CHAT_TEST_SKIP_BROWSER").as_deref() == Ok("1") {
                eprintln!("CHAT_TEST_SKIP_BROWSER=1: skipping the browser test");
                return None;
            }
            panic!(
                "chromedriver not found: run scripts/browser.sh install (or set \
                 CHAT_TEST_CHROMEDRIVER; CHAT_TEST_SKIP_BROWSER=1 skips this test)"
            );
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {path}: {e}"));
        let url = format!("http://127.0.0.1:{port}");
        let driver = Driver { child, url };
        for _ in 0..100 {
            if reqwest::get(format!("{}/status", driver.url)).await.is_ok() {
                return Some(driver);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not answer on {}", driver.url);
    }

    /// A new headless Chromium session.
    async fn browser(&self) -> Browser {
        let mut caps = serde_json::Map::new();
        let mut options = json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--window-size=1100,800",
            ]
        });
        if std::path::Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        caps.insert("goog:chromeOptions".into(), options);
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of the server whose "network" the test can cut: open connections are
/// reset and new ones refused until it is restored. The page loaded through it reaches the
/// server (REST and WebSocket) only through it.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<JoinSet<()>>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the browser sees the connection fail
                }
                conns2.lock().expect("conns").spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut upstream).await;
                    }
                });
            }
        });
        Proxy { addr, up, conns }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.conns.lock().expect("conns").abort_all();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Runs `body` (a JS function body that returns a value) in the page.
async fn js(b: &Browser, body: &str) -> Value {
    b.execute(body, Vec::new()).await.expect("script runs")
}

/// Waits until the JS expression `cond` is true in the page.
async fn wait_until(b: &Browser, cond: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if js(b, &format!("return !!({cond});")).await == json!(true) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let shown = js(b, "return document.body.innerText;").await;
            panic!("waited {PATIENCE:?} for {what}; the page shows:\n{shown}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The texts of the open chat's messages (acked ones; not pending echoes), in order.
async fn texts(b: &Browser) -> Vec<String> {
    let v = js(
        b,
        "return [...document.querySelectorAll('#messages .msg:not(.pending) .text')]\
         .map(e => e.textContent);",
    )
    .await;
    serde_json::from_value(v).expect("strings")
}

/// A JS expression: the open chat shows an acked message with exactly this text.
fn shows(text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#messages .msg:not(.pending) .text')]\
         .some(e => e.textContent === {})",
        json!(text)
    )
}

async fn fill(b: &Browser, id: &str, text: &str) {
    let e = b.find(Locator::Id(id)).await.expect("field");
    e.clear().await.expect("clear");
    e.send_keys(text).await.expect("type");
}

async fn click(b: &Browser, css: &str) {
    b.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .expect("click");
}

/// Registers through the page and waits for the signed-in view.
async fn register(b: &Browser, origin: &str, email: &str, name: &str) {
    b.goto(&format!("{origin}/")).await.expect("open the page");
    wait_until(
        b,
        "!document.getElementById('signin').hidden",
        "the sign-in form",
    )
    .await;
    fill(b, "email", email).await;
    fill(b, "password", "web password").await;
    fill(b, "display-name", name).await;
    click(b, "#register").await;
    wait_until(
        b,
        "!document.getElementById('app').hidden",
        "the signed-in view",
    )
    .await;
}

/// Types a message into the composer and sends it with Enter.
async fn say(b: &Browser, text: &str) {
    fill(b, "text", text).await;
    b.find(Locator::Id("text"))
        .await
        .expect("composer")
        .send_keys("\u{E007}")
        .await
        .expect("enter");
}

/// Opens the chat whose list entry contains `name`.
async fn open_chat(b: &Browser, name: &str) {
    let cond = format!(
        "[...document.querySelectorAll('#chat-list .name')].some(e => e.textContent.includes({}))",
        json!(name)
    );
    wait_until(b, &cond, &format!("chat {name} in the list")).await;
    js(
        b,
        &format!(
            "[...document.querySelectorAll('#chat-list button')]\
             .find(e => e.querySelector('.name').textContent.includes({})).click(); return 0;",
            json!(name)
        ),
    )
    .await;
    wait_until(
        b,
        &format!(
            "document.getElementById('chat-title').textContent.includes({})",
            json!(name)
        ),
        "the chat to open",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_browsers_and_an_sdk_client_chat_and_a_browser_catches_up_after_going_offline() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let server = TestServer::start("browser").await;
    let proxy = Proxy::start(server.addr()).await;

    // The page's headers: a CSP that forbids inline script and other origins.
    let page = reqwest::get(format!("{}/", server.url()))
        .await
        .expect("GET /");
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(
        page.headers()
            .get("x-content-type-options")
            .and_then(|v| v.to_str().ok()),
        Some("nosniff")
    );

    let ada = driver.browser().await;
    let bob = driver.browser().await;
    register(&ada, &server.url(), "ada@web.test", "Ada").await;
    register(&bob, &proxy.url(), "bob@web.test", "Bob").await;
    let carol = server.user("carol").await;

    // Ada starts a direct chat with Bob by his email; they talk, live, both ways.
    fill(&ada, "dm-email", "bob@web.test").await;
    click(&ada, "#new-dm button").await;
    wait_until(
        &ada,
        "!document.getElementById('text').disabled",
        "the direct chat",
    )
    .await;
    say(&ada, "hello bob").await;
    wait_until(&ada, &shows("hello bob"), "Ada's message acked").await;
    open_chat(&bob, "Ada").await;
    wait_until(&bob, &shows("hello bob"), "Ada's message at Bob's").await;
    say(&bob, "hi ada").await;
    wait_until(&ada, &shows("hi ada"), "Bob's answer, live").await;

    // A group with the SDK user: Ada creates it and adds both by email.
    fill(&ada, "new-chat-name", "trio").await;
    click(&ada, "#new-chat button").await;
    wait_until(
        &ada,
        "document.getElementById('chat-title').textContent === 'trio'",
        "the new chat",
    )
    .await;
    for email in ["bob@web.test", "carol@e2e.test"] {
        fill(&ada, "add-email", email).await;
        click(&ada, "#add-member button").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let trio = wait_for_chat(&carol, "trio").await;
    let mut carol_events = carol.subscribe_chat(trio).await.expect("subscribe");
    carol
        .send(trio, "hello from the sdk")
        .await
        .expect("sdk send");
    wait_until(
        &ada,
        &shows("hello from the sdk"),
        "the SDK's message at Ada's",
    )
    .await;
    open_chat(&bob, "trio").await;
    wait_until(
        &bob,
        &shows("hello from the sdk"),
        "the SDK's message at Bob's",
    )
    .await;

    // Text that looks like HTML is text.
    let hostile = "<script>alert(1)</script><b>x</b>";
    say(&ada, hostile).await;
    wait_until(&bob, &shows(hostile), "the hostile text at Bob's").await;
    assert_eq!(
        js(
            &bob,
            "return document.querySelectorAll('#messages b, #messages script, #messages img').length;"
        )
        .await,
        json!(0),
        "no element was made from message text"
    );
    let got = next_message(&mut carol_events).await;
    assert_eq!(got, hostile, "the SDK gets the same text");

    // Bob's network goes down; the others keep talking; Bob comes back and catches up.
    proxy.cut();
    wait_until(
        &bob,
        "document.getElementById('conn').classList.contains('down')",
        "Bob to notice he is offline",
    )
    .await;
    for i in 1..=3 {
        carol
            .send(trio, &format!("while bob was away {i}"))
            .await
            .expect("send");
    }
    wait_until(&ada, &shows("while bob was away 3"), "Ada to see them").await;
    proxy.restore();
    wait_until(&bob, &shows("while bob was away 3"), "Bob to catch up").await;
    let at_bob = texts(&bob).await;
    let tail: Vec<&str> = at_bob
        .iter()
        .rev()
        .take(4)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(
        tail,
        vec![
            hostile,
            "while bob was away 1",
            "while bob was away 2",
            "while bob was away 3"
        ],
        "in order, once each"
    );

    // History: scrolling up reaches the first of 130 messages, each shown once.
    let long = carol
        .create_chat("long history", &[])
        .await
        .expect("create");
    carol
        .add_member(long.chat_id, bob_id(&ada).await)
        .await
        .expect("add bob");
    for i in 0..130 {
        carol
            .send(long.chat_id, &format!("history {i}"))
            .await
            .expect("seed");
    }
    open_chat(&bob, "long history").await;
    wait_until(&bob, &shows("history 129"), "the newest page").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while js(
        &bob,
        "return !!document.querySelector('#messages .history-start');",
    )
    .await
        != json!(true)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reached the start"
        );
        js(
            &bob,
            "document.getElementById('messages').scrollTop = 0; return 0;",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let history = texts(&bob).await;
    let want: Vec<String> = (0..130).map(|i| format!("history {i}")).collect();
    assert_eq!(history, want, "every message once, oldest first");

    // A picture of the chat view, for the record.
    let shot = ada.screenshot().await.expect("screenshot");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    std::fs::write(dir.join("chat.png"), shot).expect("save screenshot");

    ada.close().await.expect("close");
    bob.close().await.expect("close");
}

/// Waits until the SDK user is in a chat of that name.
async fn wait_for_chat(client: &chat_client::Client, name: &str) -> ChatId {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let chats = client.list_chats().await.expect("list");
        if let Some(c) = chats.iter().find(|c| c.chat_name == name) {
            return c.chat_id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not added to {name}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of the next message on an SDK stream other than Carol's greeting.
async fn next_message(sub: &mut chat_client::Subscription) -> String {
    loop {
        match tokio::time::timeout(PATIENCE, sub.next()).await {
            // Carol's own first message comes too; the one after it is the subject.
            Ok(Some(Event::Message(m))) if m.msg_text != "hello from the sdk" => {
                return m.msg_text;
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("stream ended"),
            Err(_) => panic!("no message in time"),
        }
    }
}

/// Bob's user id, as Ada's page knows it from the direct chat's members.
async fn bob_id(ada: &Browser) -> chat_client::UserId {
    let v = js(
        ada,
        "return fetch('/v1/users?email=bob%40web.test', {headers: {Authorization: \
         'Bearer ' + sessionStorage.getItem('chat.token')}}).then(r => r.json()).then(u => u.user_id);",
    )
    .await;
    chat_client::UserId(v.as_i64().expect("an id"))
}
