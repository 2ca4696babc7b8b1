//! Read state: move a read marker (`POST /v1/chats/{chat_id}/read`) and list every member's
//! (`GET /v1/chats/{chat_id}/receipts`).

use super::{publish, require_member};
use crate::state::AppState;
use chat_core::ids::now_millis;
use chat_core::protocol::{ReadState, Receipt, ReceiptsResponse};
use chat_core::{ChatId, Error, Event, Result, Seq, Topic, UserId};

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
/// everything before it). The message is stored already, so a failure is logged, not
/// returned; a retried send moves it again.
pub(crate) async fn after_send(st: &AppState, sender: UserId, chat_id: ChatId, seq: Seq) {
    if let Err(e) = st
        .metadata
        .mark_read(chat_id, sender, seq, now_millis())
        .await
    {
        tracing::warn!(%chat_id, %sender, error = %e, "moving the sender's read marker failed");
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
