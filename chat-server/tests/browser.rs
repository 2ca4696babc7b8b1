//! The web client in a real browser: Chromium from Debian's packages, driven over WebDriver
//! (chromedriver) by `fantoccini`, against the real server.
//!
//! Two browser sessions register through the page and chat with each other and with an SDK
//! client; one loses its network (a TCP proxy between it and the server is cut) and catches up
//! when it comes back; history scrolls back to a chat's first message; message text that looks
//! like HTML shows as text; the page carries its Content-Security-Policy. Search finds messages
//! newest first and opens one deep in a chat's history. A screenshot of the
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

    /// A new headless Chromium session in a desktop-sized window.
    async fn browser(&self) -> Browser {
        self.browser_sized(1100, 800).await
    }

    /// A new headless Chromium session in a window of this size.
    async fn browser_sized(&self, width: u32, height: u32) -> Browser {
        let mut caps = serde_json::Map::new();
        let mut options = json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                format!("--window-size={width},{height}"),
            ]
        });
        if std::path::Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        caps.insert("goog:chromeOptions".into(), options);
        // The console, so a test can check that nothing broke the policy or threw.
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

impl Driver {
    /// The console errors the page logged since the last call: uncaught exceptions and
    /// Content-Security-Policy violations (network errors while offline are expected and left
    /// out).
    async fn console_problems(&self, b: &Browser) -> Vec<String> {
        let session = b
            .session_id()
            .await
            .expect("session id")
            .expect("a session");
        let log: Value = reqwest::Client::new()
            .post(format!("{}/session/{session}/se/log", self.url))
            .json(&json!({"type": "browser"}))
            .send()
            .await
            .expect("read the console")
            .json()
            .await
            .expect("console as JSON");
        let entries = log["value"].as_array().cloned().unwrap_or_default();
        assert!(
            log["value"].is_array(),
            "chromedriver gave no console log: {log}"
        );
        entries
            .iter()
            .filter_map(|e| e["message"].as_str())
            .filter(|m| m.contains("Content Security Policy") || m.contains("Uncaught"))
            .map(str::to_owned)
            .collect()
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

/// The page draws the message list anew on every event, so an element found a moment ago may
/// be gone by the time it is clicked: a stale element is looked up again (the click had not
/// happened), anything else fails the test.
async fn again_if_stale<F, Fut>(what: &str, mut act: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
{
    for _ in 0..50 {
        match act().await {
            Ok(()) => return,
            Err(e) if e.is_stale_element_reference() => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    panic!("{what}: the element kept going stale");
}

async fn click(b: &Browser, css: &str) {
    again_if_stale(css, || async {
        b.find(Locator::Css(css)).await?.click().await
    })
    .await;
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

/// One browser scenario at a time: each runs two Chromiums, and on a 2-core machine two
/// scenarios at once would only make both slow.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_browsers_and_an_sdk_client_chat_and_a_browser_catches_up_after_going_offline() {
    let _turn = ONE_AT_A_TIME.lock().await;
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
    // Ada, the owner, makes Carol an admin from the member list (and the SDK sees it).
    wait_until(
        &ada,
        "document.querySelector('#chat-members button[aria-label=\"make admin: carol\"]')",
        "Carol's make-admin button",
    )
    .await;
    click(
        &ada,
        "#chat-members button[aria-label=\"make admin: carol\"]",
    )
    .await;
    wait_until(
        &ada,
        "document.getElementById('chat-members').textContent.includes('carol (admin)')",
        "Carol shown as an admin",
    )
    .await;
    let carol_id = common::uid(&carol);
    let view = carol.chat(trio).await.expect("the chat");
    let role = view
        .members
        .iter()
        .find(|m| m.user_id == carol_id)
        .map(|m| m.role);
    assert_eq!(role, Some(chat_client::Role::Admin));
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

    // History: scrolling up reaches the first of 260 messages (six pages of 50), each
    // shown once.
    let long = carol
        .create_chat("long history", &[])
        .await
        .expect("create");
    carol
        .add_member(long.chat_id, bob_id(&ada).await)
        .await
        .expect("add bob");
    for i in 0..260 {
        carol
            .send(long.chat_id, &format!("history {i}"))
            .await
            .expect("seed");
    }
    open_chat(&bob, "long history").await;
    wait_until(&bob, &shows("history 259"), "the newest page").await;
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
    let want: Vec<String> = (0..260).map(|i| format!("history {i}")).collect();
    assert_eq!(history, want, "every message once, oldest first");

    // A picture of the chat view, for the record.
    let shot = ada.screenshot().await.expect("screenshot");
    save_artifact("chat.png", &shot);

    for b in [&ada, &bob] {
        let problems = driver.console_problems(b).await;
        assert!(problems.is_empty(), "the console: {problems:#?}");
    }
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

/// Types `keys` (characters, or WebDriver key codes such as [`ENTER`]) into whatever has the
/// focus, as a person at the keyboard would: WebDriver key actions, which go to the focused
/// element whichever it is by then (the list is drawn anew on events, keeping the focus).
async fn key(b: &Browser, keys: &str) {
    use fantoccini::actions::{InputSource, KeyAction, KeyActions};
    let mut typing = KeyActions::new("keyboard".to_owned());
    for c in keys.chars() {
        typing = typing
            .then(KeyAction::Down { value: c })
            .then(KeyAction::Up { value: c });
    }
    b.perform_actions(typing).await.expect("key press");
}

const ENTER: &str = "\u{E007}";
const ESCAPE: &str = "\u{E00C}";
const TAB: &str = "\u{E004}";

/// Moves the focus to the element `css` and presses Enter on it (a button, by keyboard).
async fn press(b: &Browser, css: &str) {
    js(
        b,
        &format!(
            "const e = document.querySelector({}); if (!e) throw new Error('no ' + {0}); \
             e.focus(); return 0;",
            json!(css)
        ),
    )
    .await;
    key(b, ENTER).await;
}

/// A JS expression: the open chat's message `seq` (an element, or undefined).
fn msg(seq: u64) -> String {
    format!("document.querySelector('#messages .msg[data-seq=\"{seq}\"]')")
}

/// A JS expression: whether the member `name` shows an online dot in the chat's header.
fn online(name: &str) -> String {
    format!(
        "[...document.querySelectorAll('#chat-members > span')]\
         .find(s => s.querySelector('.member-name')?.textContent === {})?.querySelector('.dot')?.classList.contains('on')",
        json!(name)
    )
}

/// A JS expression: whether the element `id` is laid out (not `display: none`, itself or above).
fn displayed(id: &str) -> String {
    format!(
        "document.getElementById({}).offsetParent !== null",
        json!(id)
    )
}

/// The chat list as shown: `name|unread` per entry, top first.
async fn chat_list(b: &Browser) -> Vec<String> {
    let v = js(
        b,
        "return [...document.querySelectorAll('#chat-list button')].map(e => \
         e.querySelector('.name').textContent + '|' + e.querySelector('.unread').textContent);",
    )
    .await;
    serde_json::from_value(v).expect("strings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replies_edits_deletes_reactions_receipts_typing_presence_by_keyboard_on_a_phone() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(driver) = Driver::start().await else {
        return;
    };
    let server = TestServer::start("browser_actions").await;
    let proxy = Proxy::start(server.addr()).await;
    let ada = driver.browser().await;
    // Bob is on a phone-sized screen, and reaches the server through a network the test can cut.
    let bob = driver.browser_sized(390, 800).await;

    // The sign-in form in keyboard order.
    ada.goto(&format!("{}/", server.url()))
        .await
        .expect("open the page");
    wait_until(
        &ada,
        "!document.getElementById('signin').hidden",
        "the sign-in form",
    )
    .await;
    js(&ada, "document.getElementById('email').focus(); return 0;").await;
    let mut order = Vec::new();
    for _ in 0..4 {
        key(&ada, TAB).await;
        order.push(js(&ada, "return document.activeElement.id;").await);
    }
    assert_eq!(
        order,
        [
            json!("password"),
            json!("display-name"),
            json!("login"),
            json!("register")
        ],
        "Tab walks the form in order"
    );

    register(&ada, &server.url(), "ada@web.test", "Ada").await;
    register(&bob, &proxy.url(), "bob@web.test", "Bob").await;
    let dan = server.user("dan").await;

    // A direct chat first, then a group with Bob and the SDK user Dan, all by email.
    fill(&ada, "dm-email", "bob@web.test").await;
    click(&ada, "#new-dm button").await;
    wait_until(
        &ada,
        "!document.getElementById('text').disabled",
        "the direct chat",
    )
    .await;
    say(&ada, "dm first").await;
    wait_until(&ada, &shows("dm first"), "the direct message acked").await;
    fill(&ada, "new-chat-name", "plans").await;
    click(&ada, "#new-chat button").await;
    wait_until(
        &ada,
        "document.getElementById('chat-title').textContent === 'plans'",
        "the new chat",
    )
    .await;
    for email in ["bob@web.test", "dan@e2e.test"] {
        fill(&ada, "add-email", email).await;
        click(&ada, "#add-member button").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let plans = wait_for_chat(&dan, "plans").await;

    // On the phone, the list and the chat take the screen in turn. (Headless Chromium keeps a
    // window at least 500 px wide; the page's one-column layout starts below 700.)
    let width = js(&bob, "return window.innerWidth;").await;
    assert!(
        width.as_u64().is_some_and(|w| w < 700),
        "a narrow window: {width}"
    );
    wait_until(
        &bob,
        "[...document.querySelectorAll('#chat-list .name')].some(e => e.textContent === '# plans')",
        "plans in Bob's list",
    )
    .await;
    assert_eq!(
        js(&bob, &format!("return {};", displayed("chat"))).await,
        json!(false)
    );
    open_chat(&bob, "plans").await;
    assert_eq!(
        js(
            &bob,
            &format!("return [{}, {}];", displayed("sidebar"), displayed("back"))
        )
        .await,
        json!([false, true]),
        "on a phone an open chat hides the list and offers a way back"
    );

    // Presence: Bob's page is open; Dan comes online when his SDK connects.
    wait_until(&ada, &online("Bob"), "Bob's online dot").await;
    assert_eq!(
        js(&ada, &format!("return !!({});", online("dan"))).await,
        json!(false)
    );
    let mut dan_events = dan.subscribe_chat(plans).await.expect("subscribe");
    wait_until(&ada, &online("dan"), "Dan's online dot").await;

    // Typing.
    bob.find(Locator::Id("text"))
        .await
        .expect("composer")
        .send_keys("hm")
        .await
        .expect("type");
    wait_until(
        &ada,
        "document.getElementById('typing').textContent === 'Bob is typing…'",
        "Bob typing, at Ada's",
    )
    .await;
    js(
        &bob,
        "document.getElementById('text').value = ''; return 0;",
    )
    .await;

    dan.send(plans, "lunch at noon?").await.expect("send"); // seq 1
    wait_until(&ada, &shows("lunch at noon?"), "Dan's message at Ada's").await;

    // A reply, by keyboard: the message's Reply button, then type and Enter.
    press(&ada, "button[aria-label='Reply message 1']").await;
    wait_until(
        &ada,
        "document.getElementById('composing-what').textContent === 'Replying to #1' \
         && document.activeElement.id === 'text'",
        "the reply bar, focus in the composer",
    )
    .await;
    key(&ada, "see you there").await;
    key(&ada, ENTER).await; // seq 2
    wait_until(
        &bob,
        &format!(
            "{m}?.querySelector('.quote')?.textContent === '↪ dan: lunch at noon?' \
             && {m}.querySelector('.text').textContent === 'see you there'",
            m = msg(2)
        ),
        "the reply, quoted, at Bob's",
    )
    .await;
    let reply = next_event_message(&mut dan_events, "see you there").await;
    assert_eq!(
        reply.reply_to_seq.map(|s| s.0),
        Some(1),
        "the SDK sees the reply"
    );

    // Escape cancels a reply: the next message is a plain one.
    press(&ada, "button[aria-label='Reply message 1']").await;
    wait_until(
        &ada,
        "!document.getElementById('composing').hidden",
        "reply bar",
    )
    .await;
    key(&ada, ESCAPE).await;
    wait_until(
        &ada,
        "document.getElementById('composing').hidden",
        "reply cancelled",
    )
    .await;
    say(&ada, "or at one").await; // seq 3
    wait_until(
        &bob,
        &format!("{}?.textContent.includes('or at one')", msg(3)),
        "seq 3",
    )
    .await;
    assert_eq!(
        js(
            &bob,
            &format!("return !!{}.querySelector('.quote');", msg(3))
        )
        .await,
        json!(false),
        "a cancelled reply sends a plain message"
    );

    // An edit, by keyboard; then an edit cancelled with Escape leaves the message alone.
    press(&ada, "button[aria-label='Edit message 2']").await;
    wait_until(
        &ada,
        "document.getElementById('text').value === 'see you there'",
        "the text to edit in the composer",
    )
    .await;
    fill(&ada, "text", "see you at noon").await;
    key(&ada, ENTER).await;
    wait_until(
        &bob,
        &format!(
            "{m}?.querySelector('.text').textContent === 'see you at noon' \
             && {m}.querySelector('.meta').textContent.includes('edited')",
            m = msg(2)
        ),
        "the edit at Bob's",
    )
    .await;
    press(&ada, "button[aria-label='Edit message 3']").await;
    wait_until(
        &ada,
        "document.getElementById('text').value === 'or at one'",
        "edit 3",
    )
    .await;
    key(&ada, ESCAPE).await;
    wait_until(
        &ada,
        "document.getElementById('composing').hidden && document.getElementById('text').value === ''",
        "the edit cancelled",
    )
    .await;

    // A reaction from Bob, seen by Ada; then Ada deletes her message 3.
    click(&bob, "button[aria-label='React message 1']").await;
    wait_until(
        &ada,
        &format!(
            "{}?.querySelector('.reactions button')?.textContent === '👍 1'",
            msg(1)
        ),
        "Bob's reaction at Ada's",
    )
    .await;
    wait_until(
        &bob,
        &format!(
            "{}?.querySelector('.reactions button')?.getAttribute('aria-pressed') === 'true'",
            msg(1)
        ),
        "Bob's own reaction, pressed",
    )
    .await;
    click(&ada, "button[aria-label='Delete message 3']").await;
    wait_until(
        &bob,
        &format!(
            "{m}?.classList.contains('deleted') && {m}.querySelector('.text').textContent === 'message deleted'",
            m = msg(3)
        ),
        "the delete at Bob's",
    )
    .await;
    assert_eq!(
        js(
            &bob,
            "return document.getElementById('messages').textContent.includes('or at one');"
        )
        .await,
        json!(false),
        "a deleted text is gone"
    );

    // Read receipts: Bob has the chat open, so Ada's message is seen by one (Dan reads nothing).
    wait_until(
        &ada,
        &format!(
            "{}?.querySelector('.meta').textContent.includes('seen by 1')",
            msg(2)
        ),
        "seen by Bob",
    )
    .await;
    let shot = ada.screenshot().await.expect("screenshot");
    save_artifact("actions.png", &shot);

    // Someone at the keyboard keeps their place on a message's button while messages arrive
    // (the list is drawn anew for each).
    js(
        &ada,
        "document.querySelector(\"button[aria-label='Reply message 1']\").focus(); return 0;",
    )
    .await;
    dan.send(plans, "still there?").await.expect("send");
    wait_until(&ada, &shows("still there?"), "Dan's next message at Ada's").await;
    assert_eq!(
        js(
            &ada,
            "return document.activeElement.getAttribute('aria-label');"
        )
        .await,
        json!("Reply message 1"),
        "the focus stayed"
    );
    assert_eq!(
        js(
            &ada,
            "return document.getElementById('announce').textContent;"
        )
        .await,
        json!("dan: still there?"),
        "a new message is announced to screen readers"
    );

    // Local echo: what Bob sends while his network is down shows at once as pending and is
    // sent, once, when it comes back.
    proxy.cut();
    wait_until(
        &bob,
        "document.getElementById('conn').classList.contains('down')",
        "Bob offline",
    )
    .await;
    say(&bob, "typed offline").await;
    wait_until(
        &bob,
        "[...document.querySelectorAll('#messages .msg.pending .text')]\
         .some(e => e.textContent === 'typed offline')",
        "the pending echo",
    )
    .await;
    proxy.restore();
    wait_until(&bob, &shows("typed offline"), "the echo acked").await;
    wait_until(
        &ada,
        &shows("typed offline"),
        "the offline message at Ada's",
    )
    .await;
    let once = "return [...document.querySelectorAll('#messages .msg .text')]\
                .filter(e => e.textContent === 'typed offline').length;";
    assert_eq!(js(&bob, once).await, json!(1), "once at Bob's");
    assert_eq!(js(&ada, once).await, json!(1), "once at Ada's");

    // A send the server refuses (too long) is marked failed, with Retry and Discard.
    js(
        &bob,
        "document.getElementById('text').value = 'x'.repeat(5000); return 0;",
    )
    .await;
    bob.find(Locator::Id("text"))
        .await
        .expect("composer")
        .send_keys(ENTER)
        .await
        .expect("enter");
    wait_until(
        &bob,
        "[...document.querySelectorAll('#messages .msg.failed button')].map(b => b.textContent).join() === 'Retry,Discard'",
        "the failed send",
    )
    .await;
    let shot = bob.screenshot().await.expect("screenshot");
    save_artifact("phone.png", &shot);
    click(&bob, "#messages .msg.failed button:last-child").await;
    wait_until(
        &bob,
        "!document.querySelector('#messages .msg.failed')",
        "discarded",
    )
    .await;

    // The chat list on the phone: latest activity first, unread counts.
    click(&bob, "#back").await;
    wait_until(&bob, &displayed("sidebar"), "the list again").await;
    dan.send(plans, "one").await.expect("send");
    dan.send(plans, "two").await.expect("send");
    wait_until(
        &bob,
        "document.querySelector('#chat-list button .unread').textContent === '2'",
        "two unread in plans",
    )
    .await;
    let list = chat_list(&bob).await;
    assert_eq!(list[0], "# plans|2", "{list:?}");
    assert!(
        list[1].ends_with("|1"),
        "the direct chat, one unread: {list:?}"
    );

    // Logging out forgets the token in the tab and ends it on the server.
    let token = js(&bob, "return sessionStorage.getItem('chat.token');").await;
    let token = token.as_str().expect("a token").to_owned();
    click(&bob, "#logout").await;
    wait_until(
        &bob,
        "!document.getElementById('signin').hidden \
         && sessionStorage.getItem('chat.token') === null \
         && document.querySelectorAll('#chat-list li, #messages li').length === 0",
        "signed out, nothing left on the page",
    )
    .await;
    let me = reqwest::Client::new()
        .get(format!("{}/v1/users/me", server.url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET /v1/users/me");
    assert_eq!(me.status(), 401, "the old token no longer works");

    for b in [&ada, &bob] {
        let problems = driver.console_problems(b).await;
        assert!(problems.is_empty(), "the console: {problems:#?}");
    }
    ada.close().await.expect("close");
    bob.close().await.expect("close");
}

/// Saves a test artifact under the target directory (`tmp/browser-artifacts/`).
fn save_artifact(name: &str, bytes: &[u8]) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    std::fs::write(dir.join(name), bytes).expect("save artifact");
}

/// The next message on an SDK stream with this text.
async fn next_event_message(
    sub: &mut chat_client::Subscription,
    text: &str,
) -> chat_client::Message {
    loop {
        match tokio::time::timeout(PATIENCE, sub.next()).await {
            Ok(Some(Event::Message(m))) if m.msg_text == text => return m,
            Ok(Some(_)) => {}
            Ok(None) => panic!("stream ended"),
            Err(_) => panic!("no message {text:?} in time"),
        }
    }
}

/// The texts of the search results shown, top first.
async fn result_texts(b: &Browser) -> Vec<String> {
    let v = js(
        b,
        "return [...document.querySelectorAll('#result-list .text')].map(e => e.textContent);",
    )
    .await;
    serde_json::from_value(v).expect("strings")
}

/// Types `q` into the search box and submits it with Enter.
async fn search_for(b: &Browser, q: &str) {
    fill(b, "search-q", q).await;
    b.find(Locator::Id("search-q"))
        .await
        .expect("search box")
        .send_keys(ENTER)
        .await
        .expect("enter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn search_finds_messages_newest_first_and_a_chat_is_renamed_and_left() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(driver) = Driver::start().await else {
        return;
    };
    let server = TestServer::start("browser_search").await;
    let ada = driver.browser().await;
    register(&ada, &server.url(), "ada@search.test", "Ada").await;
    let token = js(&ada, "return sessionStorage.getItem('chat.token');").await;
    let sdk = chat_client::Client::with_token(&server.url(), token.as_str().expect("a token"))
        .expect("an SDK client with the page's token");

    // Two chats; the oldest hit sits under a page and a half of later messages.
    let trip = sdk.create_chat("trip", &[]).await.expect("create").chat_id;
    let other = sdk.create_chat("other", &[]).await.expect("create").chat_id;
    let first = sdk
        .send(trip, "The address is 42 Elm Street")
        .await
        .expect("send");
    for i in 0..80 {
        sdk.send(trip, &format!("filler {i}")).await.expect("send");
    }
    sdk.send(trip, "<b>address</b> in bold?")
        .await
        .expect("send");
    let gone = sdk.send(trip, "old address, deleted").await.expect("send");
    sdk.delete_message(trip, gone.seq).await.expect("delete");
    let edited = sdk.send(trip, "an address typo").await.expect("send");
    sdk.edit(trip, edited.seq, "fixed now").await.expect("edit");
    sdk.send(other, "Address of the other place")
        .await
        .expect("send");
    js(&ada, "location.reload(); return 0;").await;
    wait_until(
        &ada,
        "!document.getElementById('app').hidden && document.querySelectorAll('#chat-list li').length === 2",
        "both chats listed",
    )
    .await;

    // Case-insensitive whole words, newest first, every chat of hers; no deleted or
    // edited-away text; HTML shows as text.
    search_for(&ada, "ADDRESS").await;
    wait_until(
        &ada,
        "document.querySelectorAll('#result-list li').length === 3",
        "three results",
    )
    .await;
    assert_eq!(
        result_texts(&ada).await,
        [
            "Address of the other place",
            "<b>address</b> in bold?",
            "The address is 42 Elm Street",
        ]
    );
    assert_eq!(
        js(
            &ada,
            "return document.querySelectorAll('#result-list b').length;"
        )
        .await,
        json!(0),
        "message text is never HTML"
    );
    assert!(
        js(&ada, &format!("return {};", displayed("chat-list"))).await == json!(false),
        "the results replace the chat list"
    );

    // Opening the oldest result pages back until it is on screen, marked.
    js(
        &ada,
        "[...document.querySelectorAll('#result-list button')].at(-1).click(); return 0;",
    )
    .await;
    wait_until(
        &ada,
        &format!(
            "document.querySelector('#messages .msg.hit[data-seq=\"{}\"]')",
            first.seq
        ),
        "the oldest hit opened in its chat",
    )
    .await;
    let visible = js(
        &ada,
        "const r = document.querySelector('#messages .msg.hit').getBoundingClientRect(); \
         const box = document.getElementById('messages').getBoundingClientRect(); \
         return r.bottom > box.top && r.top < box.bottom;",
    )
    .await;
    assert_eq!(visible, json!(true), "the hit is scrolled into view");

    // Only in the open chat.
    click(&ada, "#search-here").await;
    search_for(&ada, "address").await;
    wait_until(
        &ada,
        "document.getElementById('results-title').textContent.includes('in trip') \
         && document.querySelectorAll('#result-list li').length === 2",
        "two results in trip",
    )
    .await;

    // Too long is said before asking the server; nothing matching says so.
    search_for(&ada, &"x".repeat(300)).await;
    wait_until(
        &ada,
        "document.getElementById('results-title').textContent.includes('1 to 256 bytes')",
        "the length rule",
    )
    .await;
    search_for(&ada, "NEAR \"street\" -elm*").await;
    wait_until(
        &ada,
        "document.getElementById('results-title').textContent.startsWith('No messages')",
        "engine syntax taken as plain words",
    )
    .await;

    // Back to the chat list.
    click(&ada, "#results-close").await;
    wait_until(&ada, &displayed("chat-list"), "the chat list again").await;

    // The owner renames a chat (everyone hears it) and then leaves it.
    open_chat(&ada, "other").await;
    fill(&ada, "rename-name", "elsewhere").await;
    click(&ada, "#rename button").await;
    wait_until(
        &ada,
        "document.getElementById('chat-title').textContent === 'elsewhere' \
         && [...document.querySelectorAll('#chat-list .name')].some(e => e.textContent.includes('elsewhere'))",
        "the new name in the title and the list",
    )
    .await;
    assert_eq!(
        sdk.chat(other).await.expect("the chat").chat_name,
        "elsewhere"
    );
    click(&ada, "#leave").await;
    ada.accept_alert().await.expect("confirm leaving");
    wait_until(
        &ada,
        "document.querySelectorAll('#chat-list li').length === 1 \
         && document.getElementById('chat-title').textContent === 'Pick a chat'",
        "the chat gone from the list",
    )
    .await;

    let problems = driver.console_problems(&ada).await;
    assert!(problems.is_empty(), "the console: {problems:#?}");
    ada.close().await.expect("close");
}
