//! Read state: move a read marker (`POST /v1/chats/{chat_id}/read`) and list every member's
//! (`GET /v1/chats/{chat_id}/receipts`).

use super::{publish, require_member};
use crate::state::AppState;
use chat_core::ids::now_millis;
use chat_core::protocol::{ReadState, Receipt, ReceiptsResponse};
use chat_core::{ChatId, Error, Event, MetadataStore, Result, Seq, Topic, UserId};
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

/// How long a sender's own marker move waits before it is written: every move noted in that
/// window (any sender, any chat) is written together, so they share one group commit instead
/// of one commit each (at 1,000 sends/s into small chats, one commit per send doubled the
/// writer's work). The window only delays what other nodes see: this node answers the chat
/// list and the receipts with the pending moves merged in.
const OWN_MARKER_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// Own-marker writes in flight at once per flush (each a small write; the store batches them).
const OWN_MARKER_WRITES: usize = 512;

/// Moves a sender's marker to the message they just sent (the contract: sending reads
/// everything before it), without holding up the send's ack: the move is noted in
/// [`OwnMarkers`] and written by one flusher task with every other move noted within
/// [`OWN_MARKER_DELAY`], highest `seq` per sender and chat. The message is stored already, so a
/// failed write is logged, not returned; the next send or read moves the marker again. A node
/// that stops before the write lands loses the move: the sender then sees their own last
/// messages as unread until they next read or send in that chat; a graceful shutdown writes what
/// is pending first ([`OwnMarkers::flush`]).
pub(crate) fn after_send(st: &AppState, sender: UserId, chat_id: ChatId, seq: Seq) {
    if !st.own_markers.note((chat_id, sender), seq) {
        return;
    }
    let metadata = Arc::clone(&st.metadata);
    let markers = Arc::downgrade(&st.own_markers);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(OWN_MARKER_DELAY).await;
            // The server is gone: nothing left to answer for.
            let Some(markers) = markers.upgrade() else {
                return;
            };
            let Some(batch) = markers.take_batch() else {
                return;
            };
            markers.write(&metadata, &batch).await;
        }
    });
}

/// Senders' own read-marker moves noted but not yet written, per (chat, sender): the highest
/// `seq` to move to. An entry lives until a write of its `seq` (or a higher one) returned.
#[derive(Default)]
pub(crate) struct OwnMarkers {
    state: Mutex<MarkerState>,
}

/// What [`OwnMarkers`] guards.
#[derive(Default)]
struct MarkerState {
    /// The moves to write (and being written).
    pending: HashMap<(ChatId, UserId), Seq>,
    /// Whether a flusher task runs.
    flusher: bool,
}

impl OwnMarkers {
    /// Notes a move; `true` when no flusher runs (the caller starts one).
    fn note(&self, key: (ChatId, UserId), seq: Seq) -> bool {
        let mut s = crate::lock(&self.state);
        let v = s.pending.entry(key).or_insert(seq);
        *v = (*v).max(seq);
        !std::mem::replace(&mut s.flusher, true)
    }

    /// Every move to write now; `None` when there is none, and then the flusher stops (under
    /// the same lock as [`OwnMarkers::note`], so a move noted meanwhile starts a new one).
    fn take_batch(&self) -> Option<Vec<((ChatId, UserId), Seq)>> {
        let mut s = crate::lock(&self.state);
        if s.pending.is_empty() {
            s.flusher = false;
            return None;
        }
        Some(s.pending.iter().map(|(&k, &v)| (k, v)).collect())
    }

    /// Writes `batch` (moves taken from the pending set), [`OWN_MARKER_WRITES`] at a time, and
    /// drops each entry whose write returned (unless a higher move came meanwhile).
    async fn write(&self, metadata: &Arc<dyn MetadataStore>, batch: &[((ChatId, UserId), Seq)]) {
        for chunk in batch.chunks(OWN_MARKER_WRITES) {
            let writes = chunk.iter().map(|&((chat_id, sender), seq)| async move {
                let r = metadata.mark_read(chat_id, sender, seq, now_millis()).await;
                ((chat_id, sender), seq, r)
            });
            for (key, seq, r) in futures::future::join_all(writes).await {
                if let Err(e) = r {
                    tracing::warn!(chat_id = %key.0, sender = %key.1, error = %e,
                        "moving the sender's read marker failed");
                }
                self.written(key, seq);
            }
        }
    }

    /// Writes every pending move now, at a graceful shutdown, so a clean restart loses none.
    /// The periodic flusher may be writing some of them too; a marker only moves forward, so
    /// writing one twice is harmless.
    pub(crate) async fn flush(&self, metadata: &Arc<dyn MetadataStore>) {
        let batch: Vec<_> = crate::lock(&self.state)
            .pending
            .iter()
            .map(|(&k, &v)| (k, v))
            .collect();
        self.write(metadata, &batch).await;
    }

    /// After writing `written` for `key`: the entry goes unless a higher move came meanwhile.
    fn written(&self, key: (ChatId, UserId), written: Seq) {
        let mut s = crate::lock(&self.state);
        if s.pending.get(&key).is_some_and(|&v| v <= written) {
            s.pending.remove(&key);
        }
    }

    /// Every move noted for `user` and not yet written, by chat.
    ///
    /// Readers take this **before** they read the markers from the store: a move whose write
    /// lands after this call is here, one that landed before it is in what the store returns
    /// next. Read the other way round, a write landing between the two reads is in neither.
    pub(crate) fn pending_of(&self, user: UserId) -> HashMap<ChatId, Seq> {
        crate::lock(&self.state)
            .pending
            .iter()
            .filter(|((_, u), _)| *u == user)
            .map(|(&(c, _), &s)| (c, s))
            .collect()
    }

    /// Every member's move noted in `chat` and not yet written (taken before the store's
    /// markers are read, as for [`OwnMarkers::pending_of`]).
    fn pending_in(&self, chat_id: ChatId) -> Vec<(UserId, Seq)> {
        crate::lock(&self.state)
            .pending
            .iter()
            .filter(|((c, _), _)| *c == chat_id)
            .map(|(&(_, u), &s)| (u, s))
            .collect()
    }
}

/// Every member's marker.
pub(crate) async fn receipts(
    st: &AppState,
    caller: UserId,
    chat_id: ChatId,
) -> Result<ReceiptsResponse> {
    require_member(st, chat_id, caller).await?;
    // Before the store's markers: see `OwnMarkers::pending_of`.
    let pending = st.own_markers.pending_in(chat_id);
    let markers = st.metadata.read_markers(chat_id).await?;
    let mut receipts: Vec<Receipt> = markers
        .into_iter()
        .map(|m| Receipt::new(m.user_id, m.last_read_seq, m.read_at))
        .collect();
    // Senders' own moves this node has noted but not yet written (see `after_send`).
    // Every member has a receipt (0 when never read); a pending move of someone no longer a
    // member is not shown.
    for (user, seq) in pending {
        if let Some(r) = receipts
            .iter_mut()
            .find(|r| r.user_id == user && r.last_read_seq < seq)
        {
            *r = Receipt::new(user, seq, Some(now_millis()));
        }
    }
    Ok(ReceiptsResponse { receipts })
}
