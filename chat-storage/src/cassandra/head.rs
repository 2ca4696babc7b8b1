//! The chat head and the claim it carries: the messages a claim took (`Pending`), the head as
//! this process last saw it (`Head`), and reading them back from CQL (a lost LWT returns the
//! head's current columns). The protocol that uses them is in `append` and the module doc of
//! [`cassandra`](super).

use super::error;
use chat_core::{ChatId, Message, NewMessage, Result, Seq, UserId};
use scylla::response::query_result::QueryResult;
use scylla::value::{CqlValue, Row};

/// One message of the `pending` list as stored:
/// `(sender_id, msg_text, sent_at, timestamp, client_msg_id)`.
pub(crate) type PendingTuple = (
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

/// A message a head claimed (everything but chat and seq).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(super) sender_id: i64,
    pub(super) msg_text: String,
    pub(super) sent_at: i64,
    pub(super) timestamp: Option<i64>,
    pub(super) client_msg_id: Option<String>,
}

impl Pending {
    pub(super) fn of(m: &NewMessage) -> Pending {
        Pending {
            sender_id: m.sender_id.get(),
            msg_text: m.msg_text.clone(),
            sent_at: m.sent_at,
            timestamp: m.timestamp,
            client_msg_id: m.client_msg_id.clone(),
        }
    }

    pub(super) fn tuple(&self) -> PendingTuple {
        (
            Some(self.sender_id),
            Some(self.msg_text.clone()),
            Some(self.sent_at),
            self.timestamp,
            self.client_msg_id.clone(),
        )
    }

    pub(super) fn message(&self, chat_id: ChatId, seq: i64) -> Message {
        Message {
            chat_id,
            seq: Seq(seq),
            sender_id: UserId(self.sender_id),
            msg_text: self.msg_text.clone(),
            sent_at: self.sent_at,
            timestamp: self.timestamp,
            client_msg_id: self.client_msg_id.clone(),
            reply_to_seq: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            rev: chat_core::Rev(seq),
        }
    }

    pub(super) fn same_key(&self, m: &NewMessage) -> bool {
        m.client_msg_id.is_some()
            && self.sender_id == m.sender_id.get()
            && self.client_msg_id == m.client_msg_id
    }
}

/// The stored form of a list of claimed messages.
pub(super) fn tuples(pending: &[Pending]) -> Vec<PendingTuple> {
    pending.iter().map(Pending::tuple).collect()
}

/// A state of a chat's head row, as one linearizable operation observed it.
#[derive(Clone, Debug)]
pub(crate) struct Head {
    /// The last seq handed out (0: no message yet).
    pub(crate) last_seq: i64,
    /// The messages of the last claim: seqs `last_seq - len + 1 ..= last_seq` (empty only when
    /// `last_seq` is 0).
    pub(crate) pending: Vec<Pending>,
    /// Whether this process knows the pending messages are in `messages` at QUORUM.
    pub(super) materialized: bool,
}

impl Head {
    /// The head of a chat without messages.
    pub(crate) fn empty() -> Head {
        Head {
            last_seq: 0,
            pending: Vec::new(),
            materialized: true,
        }
    }

    /// The seq of the first pending message.
    pub(crate) fn first_pending_seq(&self) -> i64 {
        self.last_seq - i64::try_from(self.pending.len()).unwrap_or(0) + 1
    }

    /// A head from its columns; `Internal` when they break the row's invariant.
    pub(crate) fn from_columns(
        chat_id: ChatId,
        last_seq: Option<i64>,
        pending: Option<Vec<PendingTuple>>,
    ) -> Result<Head> {
        let last_seq = last_seq
            .filter(|s| *s >= 1)
            .ok_or_else(|| error::bad_row(format!("chat_heads {chat_id}: bad last_seq")))?;
        let pending = pending.unwrap_or_default();
        if pending.is_empty() || i64::try_from(pending.len()).unwrap_or(i64::MAX) > last_seq {
            return Err(error::bad_row(format!(
                "chat_heads {chat_id}: {} pending messages for last_seq {last_seq}",
                pending.len()
            )));
        }
        let mut out = Vec::with_capacity(pending.len());
        for (sender_id, msg_text, sent_at, timestamp, client_msg_id) in pending {
            let missing =
                |col: &str| error::bad_row(format!("chat_heads {chat_id}: pending {col} is null"));
            out.push(Pending {
                sender_id: sender_id.ok_or_else(|| missing("sender_id"))?,
                msg_text: msg_text.ok_or_else(|| missing("msg_text"))?,
                sent_at: sent_at.ok_or_else(|| missing("sent_at"))?,
                timestamp,
                client_msg_id,
            });
        }
        Ok(Head {
            last_seq,
            pending: out,
            materialized: false,
        })
    }

    /// The head after this process's own successful claim and writes.
    pub(super) fn claimed(last_seq: i64, pending: Vec<Pending>) -> Head {
        Head {
            last_seq,
            pending,
            materialized: true,
        }
    }
}

/// The outcome of a claim LWT.
pub(super) enum Claim {
    /// This process owns the seqs.
    Won,
    /// Someone else moved the head; this is its current state.
    Lost(Head),
}

/// Reads an LWT result: `[applied]`, and when it did not apply, the head's current columns.
pub(super) fn claim_result(chat_id: ChatId, result: QueryResult) -> Result<Claim> {
    let rows = result
        .into_rows_result()
        .map_err(|e| error::rows("a chat_heads LWT", e))?;
    let specs = rows.column_specs();
    let index = |name: &str| specs.get_by_name(name).map(|(i, _)| i);
    let row = rows
        .maybe_first_row::<Row>()
        .map_err(|e| error::rows("a chat_heads LWT", e))?
        .ok_or_else(|| error::bad_row("chat_heads LWT: empty result"))?;
    let column = |name: &str| index(name).and_then(|i| row.columns.get(i).cloned().flatten());
    match column("[applied]") {
        Some(CqlValue::Boolean(true)) => Ok(Claim::Won),
        Some(CqlValue::Boolean(false)) => {
            let last_seq = match column("last_seq") {
                Some(CqlValue::BigInt(n)) => Some(n),
                _ => None,
            };
            let pending = match column("pending") {
                Some(CqlValue::List(items)) => Some(
                    items
                        .into_iter()
                        .map(|item| match item {
                            CqlValue::Tuple(fields) => pending_from_cql(chat_id, fields),
                            _ => Err(error::bad_row(format!(
                                "chat_heads {chat_id}: pending item is not a tuple"
                            ))),
                        })
                        .collect::<Result<Vec<_>>>()?,
                ),
                _ => None,
            };
            Ok(Claim::Lost(Head::from_columns(chat_id, last_seq, pending)?))
        }
        _ => Err(error::bad_row("chat_heads LWT: no [applied] column")),
    }
}

/// One `pending` tuple from a dynamically typed LWT result.
pub(super) fn pending_from_cql(
    chat_id: ChatId,
    fields: Vec<Option<CqlValue>>,
) -> Result<PendingTuple> {
    let bad = || error::bad_row(format!("chat_heads {chat_id}: pending has the wrong shape"));
    let mut it = fields.into_iter();
    let mut next = || it.next().ok_or_else(bad);
    let big = |v: Option<CqlValue>| match v {
        None => Ok(None),
        Some(CqlValue::BigInt(n)) => Ok(Some(n)),
        Some(_) => Err(bad()),
    };
    let text = |v: Option<CqlValue>| match v {
        None => Ok(None),
        Some(CqlValue::Text(s) | CqlValue::Ascii(s)) => Ok(Some(s)),
        Some(_) => Err(bad()),
    };
    Ok((
        big(next()?)?,
        text(next()?)?,
        big(next()?)?,
        big(next()?)?,
        text(next()?)?,
    ))
}
