//! Page tokens: `PageToken::decode` never panics, accepts only tokens of the chat it is asked
//! about, and every token it accepts encodes back to one that decodes the same.

#![no_main]

use chat_core::{ChatId, PageToken};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (chat, token) = match data.split_first_chunk::<8>() {
        Some((chat, rest)) => (i64::from_le_bytes(*chat), rest),
        None => (1, data),
    };
    let Ok(token) = std::str::from_utf8(token) else {
        return;
    };
    let chat = ChatId(chat);
    if let Ok(t) = PageToken::decode(token, chat) {
        assert_eq!(t.chat_id(), chat);
        let again = PageToken::decode(&t.encode(), chat).expect("our own token decodes");
        assert_eq!(again, t);
        // The same token is never valid for another chat.
        if let Some(other) = chat.0.checked_add(1) {
            assert!(PageToken::decode(token, ChatId(other)).is_err());
        }
    }
    // Our encoder's output for any position decodes back (within the token length bound).
    let seq = chat.0.unsigned_abs() as i64 & i64::MAX;
    for t in [
        PageToken::Before {
            chat_id: chat,
            before: chat_core::Seq(seq.max(1)),
        },
        PageToken::After {
            chat_id: chat,
            after: chat_core::Seq(seq),
        },
    ] {
        assert_eq!(PageToken::decode(&t.encode(), chat).ok(), Some(t));
    }
});
