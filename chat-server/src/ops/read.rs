//! Read state: move a read marker (`POST /v1/chats/{chat_id}/read`) and list every member's
//! (`GET /v1/chats/{chat_id}/receipts`).

use super::{publish, require_member};
use crate::state::AppState;
use chat_core::ids::now_millis;
use chat_core::protocol::{ReadState, Receipt, ReceiptsResponse};
use chat_core::{ChatId, Error, Event, Result, Seq, Topic, UserId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Moves the caller's marker forward to `seq` (a lower one leaves it) and tells every member's
/// connections, the caller's other devices included, when it moved.
pub(crate) async fn mark(
    st: &AppState,
    caller: UserId,
    chat_id: ChatId,
    seq: Seq,
) -> Result<ReadState> {
    require_member(st, chat_id, caller).await?;
    if seq.get() < 0 {
        return Err(Error::InvalidArgument("seq must not be negative".into()));
    }
    let last_seq = st.messages.last_seq(chat_id).await?;
    if seq > last_seq {
        return Err(Error::InvalidArgument(format!(
            "seq {seq} is beyond the chat's last_seq {last_seq}"
        )));
    }
    let marker = st
        .metadata
        .mark_read(chat_id, caller, seq, now_millis())
        .await?
        .ok_or(Error::NotAMember(chat_id))?;
    if marker.last_read_seq == seq && seq > Seq::ZERO {
        let event = Event::Read {
            chat_id,
            user_id: caller,
            last_read_seq: marker.last_read_seq,
        };
        publish(st, Topic::Chat(chat_id), event).await;
    }
    Ok(ReadState {
        chat_id,
        last_read_seq: marker.last_read_seq,
    })
}

/// Moves a sender's marker to the message they just sent (the contract: sending reads
/// everything before it), without holding up the send's ack: the move is noted in
/// [`OwnMarkers`] at once (so this node's chat list counts it already) and written by a task
/// that coalesces a sender's moves in one chat (at most one write in flight per sender and
/// chat; moves that arrive meanwhile become one more write of the highest). The message is
/// stored already, so a failed write is logged, not returned; the next send or read moves the
/// marker again. A node that stops before the write lands loses the move: the sender then sees
/// their own last messages as unread until they next read or send in that chat.
pub(crate) fn after_send(st: &AppState, sender: UserId, chat_id: ChatId, seq: Seq) {
    let key = (chat_id, sender);
    if !st.own_markers.note(key, seq) {
        return;
    }
    let metadata = Arc::clone(&st.metadata);
    let markers = Arc::clone(&st.own_markers);
    tokio::spawn(async move {
        let mut seq = seq;
        loop {
            if let Err(e) = metadata.mark_read(chat_id, sender, seq, now_millis()).await {
                tracing::warn!(%chat_id, %sender, error = %e, "moving the sender's read marker failed");
            }
            match markers.written(key, seq) {
                Some(next) => seq = next,
                None => break,
            }
        }
    });
}

/// Senders' own read-marker moves noted but not yet written, per (chat, sender): the highest
/// `seq` to move to. An entry lives while its writer task runs.
#[derive(Default)]
pub(crate) struct OwnMarkers {
    pending: Mutex<HashMap<(ChatId, UserId), Seq>>,
}

impl OwnMarkers {
    /// Notes a move; `true` when no writer runs for this key (the caller starts one).
    fn note(&self, key: (ChatId, UserId), seq: Seq) -> bool {
        let mut p = crate::lock(&self.pending);
        match p.get_mut(&key) {
            Some(v) => {
                *v = (*v).max(seq);
                false
            }
            None => {
                p.insert(key, seq);
                true
            }
        }
    }

    /// After writing `written`: the next `seq` to write, or `None` (and the entry is gone).
    fn written(&self, key: (ChatId, UserId), written: Seq) -> Option<Seq> {
        let mut p = crate::lock(&self.pending);
        match p.get(&key) {
            Some(&v) if v > written => Some(v),
            _ => {
                p.remove(&key);
                None
            }
        }
    }

    /// The move noted for `user` in `chat` and not yet written, if any.
    pub(crate) fn pending(&self, chat_id: ChatId, user: UserId) -> Option<Seq> {
        crate::lock(&self.pending).get(&(chat_id, user)).copied()
    }
}

/// Every member's marker.
pub(crate) async fn receipts(
    st: &AppState,
    caller: UserId,
    chat_id: ChatId,
) -> Result<ReceiptsResponse> {
    require_member(st, chat_id, caller).await?;
    let markers = st.metadata.read_markers(chat_id).await?;
    Ok(ReceiptsResponse {
        receipts: markers
            .into_iter()
            .map(|m| Receipt::new(m.user_id, m.last_read_seq, m.read_at))
            .collect(),
    })
}
