//! REST request bodies and query strings, through the real router over a real SQLite store:
//! the first byte picks the endpoint, the rest is the body (or the query string). No answer may
//! be a 5xx, and every error must be in the contract's format.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let w = common::world();
    let chat = w.chat_id;
    let token = Some(w.token.as_str());
    let body = Some(rest.to_vec());
    let (what, method, uri, token, body) = match which % 8 {
        0 => ("register", "POST", "/v1/users".to_owned(), None, body),
        1 => ("login", "POST", "/v1/sessions".to_owned(), None, body),
        2 => ("create chat", "POST", "/v1/chats".to_owned(), token, body),
        3 => (
            "add member",
            "POST",
            format!("/v1/chats/{chat}/members"),
            token,
            body,
        ),
        4 => ("send", "POST", "/v1/send".to_owned(), token, body),
        5 | 6 => {
            // The query string of a fetch: percent-encode what a URI cannot carry raw.
            let q: String = rest
                .iter()
                .map(|&b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'=' | b'&' | b'_' | b'-' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            let uri = if which % 8 == 5 {
                format!("/v1/fetch?chat_id={chat}&{q}")
            } else {
                format!("/v1/fetch?{q}")
            };
            ("fetch", "GET", uri, token, None)
        }
        _ => {
            // A path segment where an id belongs.
            let seg: String = rest
                .iter()
                .map(|&b| match b {
                    b'a'..=b'z' | b'0'..=b'9' | b'-' => (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect();
            ("show chat", "GET", format!("/v1/chats/{seg}"), token, None)
        }
    };
    let (status, answer) =
        w.rt.block_on(common::raw(&w.router, method, &uri, token, body));
    common::check_answer(what, status, &answer);
});
