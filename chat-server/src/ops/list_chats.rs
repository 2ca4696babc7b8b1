//! List the caller's chats (`GET /v1/chats`), newest activity first, each with its last
//! message, the caller's read marker and unread count, and the caller's role.
//!
//! Unread counts are exact and cost two batched reads however long the unread runs are: the
//! metadata store gives every chat of the user with the marker (one query), and the message
//! store gives, per chat, `last_seq`, the newest message and the number of tombstones above
//! the marker ([`MessageStore::activity`](chat_core::MessageStore::activity)). Then
//! `unread = last_seq - last_read_seq - deleted_after`: seqs are dense, and none of the
//! messages above the marker is the caller's own, because sending moves the sender's marker
//! to the message sent (`ops::read::after_send`; a send retried after a failed move moves it
//! again). That move is written after the send is acked; until it lands, this node adds it from
//! `OwnMarkers`, so the sender's own list is exact at once.

use crate::state::AppState;
use chat_core::protocol::{ChatList, ChatSummary};
use chat_core::{ChatId, Result, Seq, UserId};

/// The caller's chats, latest activity first.
pub(crate) async fn run(st: &AppState, caller: UserId) -> Result<ChatList> {
    // A send's own marker move may still be on its way to the store. Taken before the store
    // is read, so a move that lands in between is in one or the other (`pending_of`).
    let pending = st.own_markers.pending_of(caller);
    let mut chats = st.metadata.user_chats(caller).await?;
    for c in &mut chats {
        if let Some(&p) = pending.get(&c.chat.chat_id) {
            c.last_read_seq = c.last_read_seq.max(p);
        }
    }
    let asked: Vec<(ChatId, Seq)> = chats
        .iter()
        .map(|c| (c.chat.chat_id, c.last_read_seq))
        .collect();
    let activity = st.messages.activity(&asked).await?;
    let mut list: Vec<(i64, ChatSummary)> = chats
        .into_iter()
        .zip(activity)
        .map(|(c, a)| {
            let marker = c.last_read_seq.min(a.last_seq);
            let unread = (a.last_seq.get() - marker.get()).max(0) as u64;
            let at = a
                .last_message
                .as_ref()
                .map_or(c.chat.created_at, |m| m.sent_at.max(c.chat.created_at));
            let mut summary = ChatSummary::new(c.chat.chat_id, c.chat.chat_name, a.last_seq);
            summary.role = Some(c.role);
            summary.kind = c.chat.kind;
            summary.last_read_seq = c.last_read_seq;
            summary.unread_count = unread.saturating_sub(a.deleted_after);
            summary.last_message = a.last_message;
            (at, summary)
        })
        .collect();
    list.sort_by(|(a_at, a), (b_at, b)| b_at.cmp(a_at).then(b.chat_id.cmp(&a.chat_id)));
    Ok(ChatList {
        chats: list.into_iter().map(|(_, s)| s).collect(),
    })
}
