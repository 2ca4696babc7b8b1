//! Message search end to end: `GET /v1/search` through the real SDK against a real server.
//! Members only (403 for a foreign chat, other chats never leak), edits found by their new
//! text at once, deletes never, bad input answered with the contract's codes (never a 500),
//! engine syntax taken as plain words, and pages that tile the results exactly.
//!
//! Runs on whatever stores `CHAT_TEST_METADATA` / `CHAT_TEST_MESSAGES` name (SQLite by default;
//! the README's test command runs it on MySQL and Cassandra too).

mod common;

use chat_client::{ChatId, Client, Error, ErrorCode, Message, SearchOptions};
use common::{assert_api_error, uid, TestServer};
use futures::TryStreamExt;

/// Every result of a search, read through the SDK's paging stream in pages of `limit`.
async fn all(client: &Client, options: SearchOptions) -> Vec<Message> {
    let pages: Vec<_> = client
        .search(options)
        .try_collect()
        .await
        .expect("search pages");
    pages.into_iter().flat_map(|p| p.messages).collect()
}

/// (chat, seq) of each result.
fn keys(ms: &[Message]) -> Vec<(ChatId, i64)> {
    ms.iter().map(|m| (m.chat_id, m.seq.get())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn members_find_every_word_and_nothing_else() {
    let server = TestServer::start("search_members").await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mallory = server.user("mallory").await;
    let shared = alice
        .create_chat("shared", &[uid(&bob)])
        .await
        .expect("create")
        .chat_id;
    let secret = mallory
        .create_chat("secret", &[])
        .await
        .expect("create")
        .chat_id;
    alice.send(shared, "Lunch on Friday?").await.expect("send");
    bob.send(shared, "friday LUNCH works, see you")
        .await
        .expect("send");
    bob.send(shared, "lunchtime is friday-ish")
        .await
        .expect("send");
    mallory
        .send(secret, "secret lunch friday")
        .await
        .expect("send");

    let found = all(&alice, SearchOptions::new("friday lunch")).await;
    assert_eq!(
        keys(&found),
        vec![(shared, 2), (shared, 1)],
        "newest first, whole words"
    );
    let found = all(&bob, SearchOptions::new("FRIDAY").chat(shared)).await;
    assert_eq!(keys(&found), vec![(shared, 3), (shared, 2), (shared, 1)]);

    // Another chat's messages never reach a non-member, and asking for it is 403.
    let found = all(&mallory, SearchOptions::new("friday")).await;
    assert_eq!(keys(&found), vec![(secret, 1)]);
    assert_api_error(
        alice
            .search_page(&SearchOptions::new("secret").chat(secret))
            .await,
        403,
        ErrorCode::NotAMember,
    );
    assert!(all(&alice, SearchOptions::new("secret")).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn edits_are_found_by_their_new_text_and_deletes_never() {
    let server = TestServer::start("search_changes").await;
    let alice = server.user("alice").await;
    let chat = alice.create_chat("c", &[]).await.expect("create").chat_id;
    let m = alice.send(chat, "the quick fox").await.expect("send");
    let gone = alice.send(chat, "quick and doomed").await.expect("send");
    alice
        .edit(chat, m.seq, "the slow turtle")
        .await
        .expect("edit");
    assert!(all(&alice, SearchOptions::new("fox")).await.is_empty());
    let found = all(&alice, SearchOptions::new("turtle")).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].msg_text, "the slow turtle");
    assert!(found[0].edited_at.is_some());
    alice.delete_message(chat, gone.seq).await.expect("delete");
    for q in ["doomed", "quick"] {
        assert!(all(&alice, SearchOptions::new(q)).await.is_empty(), "{q}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_answered_with_the_contracts_codes() {
    let server = TestServer::start("search_bad_input").await;
    let alice = server.user("alice").await;
    let chat = alice.create_chat("c", &[]).await.expect("create").chat_id;
    alice
        .send(chat, "quote\" star* NEAR minus-sign +plus (paren) it's")
        .await
        .expect("send");
    let invalid = |r| assert_api_error(r, 400, ErrorCode::InvalidArgument);
    invalid(alice.search_page(&SearchOptions::new("")).await);
    invalid(alice.search_page(&SearchOptions::new("   ")).await);
    invalid(
        alice
            .search_page(&SearchOptions::new("a".repeat(257)))
            .await,
    );
    invalid(alice.search_page(&SearchOptions::new("x").limit(0)).await);
    invalid(alice.search_page(&SearchOptions::new("x").limit(501)).await);
    invalid(
        alice
            .search_page(&SearchOptions::new("x").page("forged"))
            .await,
    );
    // 256 bytes is allowed.
    let page = alice
        .search_page(&SearchOptions::new("a".repeat(256)))
        .await
        .expect("256 bytes");
    assert!(page.messages.is_empty());
    // A token of another query is refused, not silently applied.
    let other = alice.send(chat, "quote again").await.expect("send");
    let page = alice
        .search_page(&SearchOptions::new("quote").limit(1))
        .await
        .expect("search");
    assert_eq!(keys(&page.messages), vec![(chat, other.seq.get())]);
    let token = page.next_page_token.expect("a second page");
    invalid(
        alice
            .search_page(&SearchOptions::new("star").page(token.clone()))
            .await,
    );
    invalid(
        alice
            .search_page(&SearchOptions::new("quote").chat(chat).page(token))
            .await,
    );
    // Engine syntax is plain text: no error, and only real word matches.
    for (q, hits) in [
        ("\"", 0),
        ("quote\"", 2),
        ("*", 0),
        ("star*", 1),
        ("NEAR", 1),
        ("near(quote, star)", 1),
        ("-sign", 1),
        ("+plus -minus", 1),
        ("(paren)", 1),
        ("it's", 1),
        ("'", 0),
        ("a OR b", 0),
        ("%", 0),
        ("\\", 0),
    ] {
        let page = alice
            .search_page(&SearchOptions::new(q))
            .await
            .unwrap_or_else(|e| panic!("{q:?}: {e}"));
        assert_eq!(page.messages.len(), hits, "{q:?}");
    }
    // A chat that does not exist is 404 (never another chat's results).
    match alice
        .search_page(&SearchOptions::new("x").chat(ChatId(i64::MAX)))
        .await
    {
        Err(Error::Api { status, .. }) => assert!(status == 404 || status == 403, "{status}"),
        other => panic!("expected 404, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_tile_the_results_exactly() {
    let server = TestServer::start("search_paging").await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mut chats = Vec::new();
    for name in ["a", "b", "c"] {
        chats.push(
            alice
                .create_chat(name, &[uid(&bob)])
                .await
                .expect("create")
                .chat_id,
        );
    }
    for i in 0..40 {
        let chat = chats[i % chats.len()];
        let text = if i % 5 == 4 {
            format!("unrelated {i}")
        } else {
            format!("needle number {i}")
        };
        alice.send(chat, &text).await.expect("send");
    }
    let everything = all(&bob, SearchOptions::new("needle").limit(500)).await;
    assert_eq!(everything.len(), 32);
    let key = |m: &Message| (m.sent_at, m.chat_id, m.seq);
    assert!(
        everything.windows(2).all(|w| key(&w[0]) > key(&w[1])),
        "newest first, one total order"
    );
    for limit in [1, 3, 7, 32] {
        let paged = all(&bob, SearchOptions::new("NEEDLE").limit(limit)).await;
        assert_eq!(keys(&paged), keys(&everything), "limit {limit}");
    }
    // New messages sent between pages sort before the token: the rest still tiles.
    let first = bob
        .search_page(&SearchOptions::new("needle").limit(10))
        .await
        .expect("first page");
    alice.send(chats[0], "needle late").await.expect("send");
    let rest = all(
        &bob,
        SearchOptions::new("needle")
            .limit(10)
            .page(first.next_page_token.clone().expect("more")),
    )
    .await;
    let mut joined = keys(&first.messages);
    joined.extend(keys(&rest));
    assert_eq!(joined, keys(&everything));
    // One chat only.
    let one = all(&bob, SearchOptions::new("needle").chat(chats[1]).limit(4)).await;
    assert!(one.iter().all(|m| m.chat_id == chats[1]));
    assert_eq!(
        keys(&one),
        keys(
            &everything
                .iter()
                .filter(|m| m.chat_id == chats[1])
                .cloned()
                .collect::<Vec<_>>()
        )
    );
}
