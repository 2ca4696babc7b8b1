//! WebSocket text frames: the `ClientFrame` parser, then the server's own handling of the frame
//! on a connection of a member (parse, validate, rate-limit, append, reply). Every frame must get
//! exactly one well-formed reply (`pong`, `ack` or `error`), never a panic.

#![no_main]

#[path = "common.rs"]
mod common;

use chat_core::protocol::{ClientFrame, ServerFrame};
use chat_server::fuzzing::FrameHarness;
use libfuzzer_sys::fuzz_target;
use std::sync::Mutex;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        // The transport rejects non-UTF-8 text frames before any parsing (close 1007).
        return;
    };
    // The parser alone: what parses must serialize and parse back to the same frame.
    if let Ok(frame) = serde_json::from_str::<ClientFrame>(text) {
        let again = serde_json::to_string(&frame).expect("a parsed frame serializes");
        let back: ClientFrame = serde_json::from_str(&again).expect("round trip");
        assert_eq!(back, frame);
    }
    let w = common::world();
    static CONN: OnceLock<Mutex<FrameHarness>> = OnceLock::new();
    let conn = CONN.get_or_init(|| Mutex::new(FrameHarness::new(&w.server, w.user_id)));
    let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
    // Half the inputs are steered into the member's chat so the send path gets past
    // membership; the rest keep whatever chat they name.
    let steered = text.replace("\"chat_id\":0", &format!("\"chat_id\":{}", w.chat_id));
    let replies = w.rt.block_on(conn.handle(&steered));
    assert_eq!(replies.len(), 1, "frame {steered:?} got {replies:?}");
    let reply: ServerFrame = serde_json::from_str(&replies[0]).expect("replies are frames");
    assert!(
        matches!(
            reply,
            ServerFrame::Pong | ServerFrame::Ack { .. } | ServerFrame::Error { .. }
        ),
        "unexpected reply {reply:?}"
    );
    if let ServerFrame::Error { code, .. } = &reply {
        assert_ne!(code.as_str(), "internal", "frame {steered:?} -> {reply:?}");
    }
});
