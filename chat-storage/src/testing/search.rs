//! The conformance suite of message search: `MessageStore::search`.
//!
//! A backend opts in with [`message_search_conformance!`](crate::message_search_conformance)
//! once it implements `search` (and `change`: edits and deletes must show in results at once).
//! Expected results are computed the slow way, from every message read with `fetch` and
//! [`SearchQuery::matches`], the one reference every backend is held to: a backend that passes
//! finds the same messages, in the same order, as every other that passes.

use super::random_id;
use chat_core::search::sort_results;
use chat_core::{
    ChatId, FetchQuery, Message, MessageChange, MessageStore, Millis, NewMessage, SearchCursor,
    SearchQuery, Seq, UserId,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A chat id no other test uses.
fn fresh_chat() -> ChatId {
    ChatId(random_id())
}

/// A parsed query (the tests only use valid ones).
fn q(text: &str) -> SearchQuery {
    SearchQuery::parse(text).expect("a valid query")
}

/// Appends `text` to `chat` at server time `sent_at`.
async fn say<S: MessageStore>(store: &S, chat: ChatId, text: &str, sent_at: Millis) -> Message {
    store
        .append(NewMessage {
            reply_to_seq: None,
            chat_id: chat,
            sender_id: UserId(1),
            msg_text: text.to_owned(),
            sent_at,
            timestamp: None,
            client_msg_id: None,
        })
        .await
        .expect("append")
        .message
}

/// The whole history of `chat`, ascending, read in pages.
async fn history<S: MessageStore>(store: &S, chat: ChatId) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    loop {
        let after = out.last().map_or(Seq::ZERO, |m| m.seq);
        let page = store
            .fetch(chat, FetchQuery::After { after, limit: 200 })
            .await
            .expect("fetch");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Every result of `query` in `chats`, computed from every message: what `search` must find.
async fn expected<S: MessageStore>(
    store: &S,
    chats: &[ChatId],
    query: &SearchQuery,
) -> Vec<Message> {
    let mut all = Vec::new();
    for &c in chats {
        all.extend(
            history(store, c)
                .await
                .into_iter()
                .filter(|m| !m.deleted && query.matches(&m.msg_text)),
        );
    }
    sort_results(&mut all);
    all
}

/// Every result of `query` in `chats`, read from `search` in pages of `limit`.
async fn paged<S: MessageStore>(
    store: &S,
    chats: &[ChatId],
    query: &SearchQuery,
    limit: u32,
) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    loop {
        let after = out.last().map(SearchCursor::of);
        let page = store
            .search(chats, query, after, limit)
            .await
            .expect("search");
        assert!(
            page.len() <= limit as usize,
            "a page is at most `limit` long"
        );
        let full = page.len() == limit as usize;
        out.extend(page);
        if !full {
            return out;
        }
    }
}

/// (chat, seq, text) of each message, for readable assertion failures.
fn keys(ms: &[Message]) -> Vec<(i64, i64, String)> {
    ms.iter()
        .map(|m| (m.chat_id.get(), m.seq.get(), m.msg_text.clone()))
        .collect()
}

/// Asserts that `search` (one big page and small pages) finds exactly the reference results.
async fn check<S: MessageStore>(store: &S, chats: &[ChatId], text: &str) {
    let query = q(text);
    let want = keys(&expected(store, chats, &query).await);
    let one = store
        .search(chats, &query, None, 500)
        .await
        .expect("search");
    assert_eq!(keys(&one), want, "query {text:?}");
    assert_eq!(
        keys(&paged(store, chats, &query, 2).await),
        want,
        "query {text:?}, pages of 2"
    );
}

/// Every word must be there, as a whole word, in any case; results are newest first.
pub async fn finds_every_word_case_insensitively<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    say(&store, chat, "Hello world", 10).await;
    say(&store, chat, "hello there", 11).await;
    say(&store, chat, "WORLD, HELLO!", 12).await;
    say(&store, chat, "helloworld worlds hell", 13).await;
    let found = store
        .search(&[chat], &q("hello WORLD"), None, 10)
        .await
        .expect("search");
    assert_eq!(
        keys(&found),
        vec![
            (chat.get(), 3, "WORLD, HELLO!".to_owned()),
            (chat.get(), 1, "Hello world".to_owned())
        ]
    );
    for text in [
        "hello",
        "world",
        "HeLLo",
        "hell",
        "worlds",
        "nothing",
        "hello there",
    ] {
        check(&store, &[chat], text).await;
    }
}

/// Words in any script, accents (composed and decomposed) and case folding beyond ASCII.
pub async fn unicode_words_match<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    for (i, text) in [
        "Grüße aus Köln",
        "GRÜSSE aus KÖLN",
        "ΟΔΟΣ και οδος",
        "Привет, МИР",
        "cafe\u{301} crème",
        "東京 タワー",
        "emoji 🎉 party",
    ]
    .into_iter()
    .enumerate()
    {
        say(&store, chat, text, 100 + i as i64).await;
    }
    for text in [
        "grüße",
        "KÖLN",
        "οδοσ",
        "ΟΔΟΣ",
        "мир привет",
        "cafe\u{301}",
        "café",
        "東京",
        "タワー",
        "party 🎉",
        "🎉",
    ] {
        check(&store, &[chat], text).await;
    }
    let found = store
        .search(&[chat], &q("οδος"), None, 10)
        .await
        .expect("search");
    assert_eq!(found.len(), 1, "final sigma folds like every sigma");
}

/// An edit is found by its new text only, at once; a deleted message never.
pub async fn edits_and_deletes_show_at_once<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    let a = say(&store, chat, "the old apple", 1).await;
    let b = say(&store, chat, "banana apple", 2).await;
    store
        .change(
            chat,
            a.seq,
            MessageChange::Edit {
                msg_text: "the new cherry".into(),
                edited_at: 5,
            },
        )
        .await
        .expect("edit");
    let old = store
        .search(&[chat], &q("old"), None, 10)
        .await
        .expect("search");
    assert!(old.is_empty(), "the old text is gone: {:?}", keys(&old));
    let new = store
        .search(&[chat], &q("cherry"), None, 10)
        .await
        .expect("search");
    assert_eq!(
        keys(&new),
        vec![(chat.get(), 1, "the new cherry".to_owned())]
    );
    assert!(new[0].edited_at.is_some());
    store
        .change(chat, b.seq, MessageChange::Delete)
        .await
        .expect("delete");
    for text in ["banana", "apple", "banana apple"] {
        let found = store
            .search(&[chat], &q(text), None, 10)
            .await
            .expect("search");
        assert!(
            found.is_empty(),
            "{text:?} finds a deleted message: {:?}",
            keys(&found)
        );
    }
    // A reaction changes no text: the message is still found, with its reaction.
    store
        .change(
            chat,
            a.seq,
            MessageChange::React {
                user_id: UserId(2),
                emoji: "👍".into(),
                add: true,
            },
        )
        .await
        .expect("react");
    let found = store
        .search(&[chat], &q("cherry"), None, 10)
        .await
        .expect("search");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].reactions.len(), 1);
}

/// Only the chats asked are searched.
pub async fn only_the_chats_asked<S: MessageStore>(store: S) {
    let (mine, other, third) = (fresh_chat(), fresh_chat(), fresh_chat());
    say(&store, mine, "secret plan", 1).await;
    say(&store, other, "secret plan", 2).await;
    say(&store, third, "secret plan", 3).await;
    let found = store
        .search(&[mine], &q("secret"), None, 10)
        .await
        .expect("search");
    assert_eq!(
        keys(&found),
        vec![(mine.get(), 1, "secret plan".to_owned())]
    );
    let found = store
        .search(&[mine, third], &q("plan"), None, 10)
        .await
        .expect("search");
    assert_eq!(
        keys(&found),
        vec![
            (third.get(), 1, "secret plan".to_owned()),
            (mine.get(), 1, "secret plan".to_owned())
        ]
    );
    assert!(store
        .search(&[], &q("secret"), None, 10)
        .await
        .expect("search")
        .is_empty());
}

/// Pages across chats, with many messages at one `sent_at`, tile the results exactly.
pub async fn pages_tile_exactly<S: MessageStore>(store: S) {
    let chats = [fresh_chat(), fresh_chat(), fresh_chat()];
    let mut rng = StdRng::seed_from_u64(17);
    for i in 0..60 {
        let chat = chats[rng.gen_range(0..chats.len())];
        let text = if i % 4 == 3 { "other words" } else { "find me" };
        // Few distinct times: ties are broken by chat and seq.
        say(&store, chat, text, 1_000 + rng.gen_range(0..6)).await;
    }
    let query = q("find");
    let want = keys(&expected(&store, &chats, &query).await);
    assert_eq!(want.len(), 45);
    for limit in [1, 3, 7, 45, 500] {
        assert_eq!(
            keys(&paged(&store, &chats, &query, limit).await),
            want,
            "limit {limit}"
        );
    }
    // A page read after new messages arrived still continues where the last one ended.
    let first = store
        .search(&chats, &query, None, 10)
        .await
        .expect("search");
    say(&store, chats[0], "find me too", 2_000).await;
    let last = first.last().map(SearchCursor::of);
    let next = store
        .search(&chats, &query, last, 500)
        .await
        .expect("search");
    let mut joined = keys(&first);
    joined.extend(keys(&next));
    assert_eq!(joined, want);
}

/// What is syntax to FTS5, MySQL's boolean mode or CQL is plain text: never an error, never
/// another message.
pub async fn engine_syntax_is_plain_words<S: MessageStore>(store: S) {
    let chat = fresh_chat();
    for (i, text) in [
        "say \"quoted\" words",
        "star* power",
        "NEAR the end",
        "minus -sign and +plus",
        "it's O'Brien's",
        "(paren) <angle> ~tilde @at",
        "semi; drop table messages; --",
        "back\\slash % _ under_score",
    ]
    .into_iter()
    .enumerate()
    {
        say(&store, chat, text, 10 + i as i64).await;
    }
    for text in [
        "\"quoted\"",
        "\"",
        "star*",
        "*",
        "NEAR",
        "near(the end)",
        "-sign",
        "+plus -minus",
        "O'Brien's",
        "'",
        "''",
        "(paren)",
        "<angle> ~tilde",
        "@at",
        "drop; table",
        "--",
        "back\\slash",
        "%",
        "_",
        "under_score",
        "a AND b OR c NOT d",
        "\u{0}",
    ] {
        check(&store, &[chat], text).await;
    }
}

/// Random texts and queries over a small vocabulary, with edits and deletes: every result is
/// what the reference finds.
pub async fn random_texts_match_the_reference<S: MessageStore>(store: S) {
    const WORDS: &[&str] = &[
        "alpha", "Beta", "GAMMA", "délta", "ÉPSILON", "ζήτα", "ΖΉΤΑ", "日本", "a", "1", "x1",
        "near", "and",
    ];
    const SEPS: &[&str] = &[" ", ", ", "-", "\"", "*", "'", "\n", " + "];
    let chats = [fresh_chat(), fresh_chat()];
    let mut rng = StdRng::seed_from_u64(42);
    let text = |rng: &mut StdRng| {
        let n = rng.gen_range(1..6);
        let mut s = String::new();
        for i in 0..n {
            if i > 0 {
                s.push_str(SEPS[rng.gen_range(0..SEPS.len())]);
            }
            s.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
        }
        s
    };
    let mut sent = Vec::new();
    for _ in 0..80 {
        let chat = chats[rng.gen_range(0..chats.len())];
        let t = text(&mut rng);
        sent.push(say(&store, chat, &t, rng.gen_range(0..20)).await);
    }
    for _ in 0..15 {
        let m = &sent[rng.gen_range(0..sent.len())];
        let change = if rng.gen_bool(0.5) {
            MessageChange::Delete
        } else {
            MessageChange::Edit {
                msg_text: text(&mut rng),
                edited_at: 100,
            }
        };
        // Editing a deleted message is refused; that is not what this test is about.
        let _ = store.change(m.chat_id, m.seq, change).await;
    }
    for _ in 0..25 {
        let t = text(&mut rng);
        check(&store, &chats, &t).await;
    }
}
