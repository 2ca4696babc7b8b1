//! The storage conformance suite: every contract of
//! [`MetadataStore`](chat_core::MetadataStore) and [`MessageStore`](chat_core::MessageStore)
//! written once as a test, runnable against any backend.
//!
//! Each test is a `pub async fn` in [`metadata`] or [`messages`] that takes a freshly made,
//! isolated store by value and panics when the store breaks its contract. The macros
//! [`metadata_store_conformance!`](crate::metadata_store_conformance) and
//! [`message_store_conformance!`](crate::message_store_conformance) instantiate the whole suite
//! for one backend: one `#[test]` per suite function, each running on its own multi-threaded
//! tokio runtime with 4 workers and calling the setup expression for a fresh store. A backend
//! that implements edits, deletes and reactions also runs [`changes`] and [`activity`] (the chat
//! list's read) with [`message_change_conformance!`](crate::message_change_conformance) and
//! [`message_activity_conformance!`](crate::message_activity_conformance), and one that
//! implements search runs [`search`] with
//! [`message_search_conformance!`](crate::message_search_conformance).
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")]
//! # mod example {
//! // tests/my_backend_conformance.rs: `fresh()` returns a fresh, isolated store.
//! use chat_storage::sqlite::SqliteStore;
//! use chat_storage::testing::Guarded;
//!
//! async fn fresh() -> Guarded<SqliteStore, tempfile::TempDir> {
//!     let dir = tempfile::tempdir().unwrap();
//!     let store = SqliteStore::open(dir.path().join("chat.db")).unwrap();
//!     Guarded::new(store, dir)
//! }
//!
//! chat_storage::metadata_store_conformance!(fresh());
//! chat_storage::message_store_conformance!(fresh());
//! # }
//! ```
//!
//! The macros expand to a module each (`metadata_store_conformance`, `message_store_conformance`)
//! that glob-imports the calling module, so the setup expression may use the caller's imports and
//! private helpers. A failing test is named e.g.
//! `message_store_conformance::dense_seq_under_concurrent_appends`.
//!
//! When a store needs something kept alive as long as it is (a temporary directory, a database
//! dropped afterwards), wrap both in [`Guarded`].
//!
//! The tests make their own unique emails, chat ids of their own for the message store and
//! random unknown ids, so they may also run in parallel against one shared database.

pub mod activity;
pub mod changes;
mod guarded;
pub mod messages;
pub mod metadata;
pub mod search;

pub use guarded::Guarded;

use std::future::Future;

/// Runs one conformance test on a fresh multi-threaded runtime with 4 worker threads (what
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 4)]` would build).
///
/// The macros call this instead of using `#[tokio::test]` so that the calling crate does not
/// need tokio's `macros` feature, or tokio at all, in its own dependencies.
///
/// # Panics
/// If the runtime cannot be built, or when the test itself panics: this is a test harness.
pub fn run_conformance_test<F>(test: F)
where
    F: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("build the tokio runtime of a conformance test");
    runtime.block_on(test);
}

/// Instantiates the [`MetadataStore`](chat_core::MetadataStore) conformance suite.
///
/// The argument is an expression evaluating to a future whose output is a fresh, isolated
/// `impl MetadataStore`; it is evaluated once per test. Expands to a module
/// `metadata_store_conformance` with one `#[test]` per function of
/// [`testing::metadata`](crate::testing::metadata).
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # mod example {
/// chat_storage::metadata_store_conformance!(async {
///     let dir = tempfile::tempdir().unwrap();
///     let store = chat_storage::sqlite::SqliteStore::open(dir.path().join("chat.db")).unwrap();
///     chat_storage::testing::Guarded::new(store, dir)
/// });
/// # }
/// ```
#[macro_export]
macro_rules! metadata_store_conformance {
    ($setup:expr $(,)?) => {
        $crate::__conformance_tests!(metadata_store_conformance, metadata, $setup;
            create_and_get_user,
            unknown_user_is_none,
            duplicate_email_is_conflict,
            concurrent_duplicate_emails_create_one_user,
            user_credentials_by_email,
            session_create_get_delete,
            expired_sessions_are_cleaned_up,
            create_chat_with_owner_and_members,
            create_chat_with_unknown_member_is_not_found_and_creates_nothing,
            unknown_chat_is_none,
            chats_of_user_ordered_by_chat_id_with_roles,
            members_ordered_by_user_id,
            role_of_non_member_is_none,
            add_member_true_then_false,
            add_member_unknown_chat_or_user_is_not_found,
            add_member_beyond_max_members_is_invalid_argument,
            remove_member,
            metadata_health,
            users_by_ids_leave_out_unknown,
            display_names_and_chat_names_change,
            set_role_grants_and_takes_back_admin,
            direct_chat_is_one_per_pair,
            concurrent_direct_chats_create_one,
            read_markers_move_forward_only,
            shared_chat_users_are_chat_partners,
        );
    };
}

/// Instantiates the [`MessageStore`](chat_core::MessageStore) conformance suite.
///
/// The argument is an expression evaluating to a future whose output is a fresh, isolated
/// `impl MessageStore`; it is evaluated once per test. Expands to a module
/// `message_store_conformance` with one `#[test]` per function of
/// [`testing::messages`](crate::testing::messages).
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # mod example {
/// chat_storage::message_store_conformance!(async {
///     let dir = tempfile::tempdir().unwrap();
///     let store = chat_storage::sqlite::SqliteStore::open(dir.path().join("chat.db")).unwrap();
///     chat_storage::testing::Guarded::new(store, dir)
/// });
/// # }
/// ```
#[macro_export]
macro_rules! message_store_conformance {
    ($setup:expr $(,)?) => {
        $crate::__conformance_tests!(message_store_conformance, messages, $setup;
            first_seq_is_one,
            append_returns_what_was_given,
            rev_equals_seq_while_no_message_changed,
            dense_seq_under_concurrent_appends,
            chats_have_independent_counters,
            retry_with_same_client_msg_id_returns_stored_message,
            concurrent_identical_retries_store_one_message,
            same_client_msg_id_from_other_sender_or_chat_is_new,
            messages_without_client_msg_id_never_dedupe,
            fetch_latest_before_after_boundaries,
            fetch_unknown_or_empty_chat,
            fetch_limit_larger_than_chat,
            paging_backward_from_latest_tiles_history,
            paging_forward_from_zero_tiles_history,
            readers_never_see_a_gap_while_appends_run,
            last_seq_and_last_seqs,
            unicode_and_max_size_text_round_trip,
            timestamp_and_client_msg_id_round_trip,
            flush_keeps_every_acked_message,
            message_health,
        );
    };
}

/// The conformance tests of messages that change (edits, deletes, reactions, the change
/// feed), for a backend that implements `MessageStore::change` and `MessageStore::changes`.
/// Same setup expression as [`message_store_conformance!`].
#[macro_export]
macro_rules! message_change_conformance {
    ($setup:expr $(,)?) => {
        $crate::__conformance_tests!(message_change_conformance, changes, $setup;
            edits_deletes_and_reactions_take_revisions,
            changes_that_cannot_be_made_are_refused,
            repeated_changes_take_no_revision,
            concurrent_changes_converge_and_the_feed_has_every_one,
            a_reply_keeps_what_it_replies_to,
            last_revs_follow_appends_and_changes,
            appends_after_changes_answer_what_they_stored,
        );
    };
}

/// The conformance tests of the chat list's read, `MessageStore::activity` (`last_seq`, the
/// newest message in its current state, tombstones above a marker), for a backend that also
/// implements `MessageStore::change`. Same setup expression as [`message_store_conformance!`].
#[macro_export]
macro_rules! message_activity_conformance {
    ($setup:expr $(,)?) => {
        $crate::__conformance_tests!(message_activity_conformance, activity, $setup;
            chats_without_messages_have_no_activity,
            answers_follow_the_order_asked,
            only_tombstones_above_the_marker_count,
            a_message_deleted_twice_is_one_tombstone,
            the_newest_message_is_in_its_current_state,
            a_batch_matches_reading_every_message,
        );
    };
}

/// The conformance tests of message search, `MessageStore::search` (every word, whole words,
/// Unicode case folding, edits and deletes visible at once, only the chats asked, pages that
/// tile exactly, engine syntax as plain words), for a backend that also implements
/// `MessageStore::change`. Same setup expression as [`message_store_conformance!`].
#[macro_export]
macro_rules! message_search_conformance {
    ($setup:expr $(,)?) => {
        $crate::__conformance_tests!(message_search_conformance, search, $setup;
            finds_every_word_case_insensitively,
            unicode_words_match,
            edits_and_deletes_show_at_once,
            only_the_chats_asked,
            pages_tile_exactly,
            engine_syntax_is_plain_words,
            random_texts_match_the_reference,
        );
    };
}

/// Expands a list of suite functions into one `#[test]` each. Not public API: use
/// [`metadata_store_conformance!`] or [`message_store_conformance!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($module:ident, $suite:ident, $setup:expr; $($name:ident),+ $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            $(
                #[test]
                fn $name() {
                    $crate::testing::run_conformance_test(async {
                        let store = $setup.await;
                        $crate::testing::$suite::$name(store).await;
                    });
                }
            )+
        }
    };
}

/// A random positive id in `[2^40, 2^52)`: far above the ids a fresh database hands out, and
/// distinct between tests with overwhelming probability, so tests sharing a database do not
/// meet each other's chats.
pub(crate) fn random_id() -> i64 {
    use rand::Rng;
    rand::thread_rng().gen_range((1_i64 << 40)..(1_i64 << 52))
}

/// A random lower-case alphanumeric suffix for unique emails.
pub(crate) fn random_suffix() -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(16)
        .map(|c| char::from(c).to_ascii_lowercase())
        .collect()
}
