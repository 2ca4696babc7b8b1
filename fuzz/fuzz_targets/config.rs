//! Configuration input: store URLs (`chat_storage::open::StoreConfig::check`, the parsing half of
//! opening the stores), `Limits` from JSON, and the `Limits` validators on arbitrary strings.
//! Nothing may panic; what validates must satisfy the limit it was checked against.

#![no_main]

use chat_core::Limits;
use chat_storage::open::StoreConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Store URLs: metadata, messages and replicas cut from the input at newlines.
    let mut lines = text.split('\n');
    let config = StoreConfig {
        metadata: lines.next().unwrap_or("").to_owned(),
        messages: lines.next().unwrap_or("").to_owned(),
        metadata_replicas: lines.map(str::to_owned).collect(),
        data_dir: "/nonexistent/fuzz".into(),
    };
    if let Err(e) = config.check() {
        assert_eq!(e.code().as_str(), "invalid_argument", "{e}");
    }
    // Passwords in URLs never reach error messages, however malformed the URL. The text between
    // the last ':' and the last '@' is where a password would be: put a marker there and check
    // that no error mentions it.
    const MARK: &str = "Zq9PassWordMarkZq9";
    for which in 0..2 {
        let mut c = config.clone();
        let mut url = if which == 0 {
            c.metadata.clone()
        } else {
            c.messages.clone()
        };
        let Some(at) = url.rfind('@') else { continue };
        let Some(colon) = url[..at].rfind(':') else {
            continue;
        };
        if url[colon + 1..at].contains(['/', '?', '#']) {
            continue;
        }
        url.replace_range(colon + 1..at, MARK);
        if which == 0 {
            c.metadata = url.clone();
        } else {
            c.messages = url.clone();
        }
        if let Err(e) = c.check() {
            assert!(!e.to_string().contains(MARK), "{url:?} leaked into {e}");
        }
    }
    // Limits as JSON (any field may be missing: defaults fill in).
    let limits: Limits = serde_json::from_str(text).unwrap_or_default();
    let _ = serde_json::to_string(&limits).expect("limits serialize");
    // Every validator on the input, with the parsed and the default limits.
    for l in [&limits, &Limits::default()] {
        if let Ok(t) = l.msg_text(text) {
            assert!(!t.is_empty() && t.len() <= l.max_msg_bytes);
            assert_eq!(t, t.trim());
        }
        if let Ok(n) = l.chat_name(text) {
            assert!(!n.is_empty() && n.chars().count() <= l.max_chat_name_chars);
        }
        if l.client_msg_id(text).is_ok() {
            assert!(!text.is_empty() && text.len() <= l.max_client_msg_id_bytes);
        }
        if let Ok(e) = l.email(text) {
            assert!(e.contains('@') && e.len() <= l.max_email_bytes.max(text.len() * 3));
        }
        let _ = l.new_password(text);
        let _ = l.display_name(Some(text), "a@b");
        let _ = l.page_limit(text.trim().parse::<i64>().ok());
        if let Ok(n) = l.page_limit(text.trim().parse::<i64>().ok()) {
            assert!(n >= 1 && n <= l.max_page.max(1), "{n} from {l:?}");
        }
    }
});
