//! The chat head and the claim it carries: the messages an append claim took (`Pending`), the
//! new state a change claim gives one message (`Changed`), the head as this process last saw it
//! (`Head`), and reading them back from CQL (a lost LWT returns the head's current columns). The
//! protocol that uses them is in `append`, `change` and the module doc of [`cassandra`](super).
//!
//! The `claim` column is handled as a [`CqlValue`] both ways: the value a condition compares is
//! exactly the value the head holds (as a read or a failed LWT returned it, or as this process
//! wrote it), never a re-encoding of it.

use super::error;
use chat_core::{ChatId, Message, NewMessage, Reaction, Result, Rev, Seq, UserId};
use scylla::response::query_result::QueryResult;
use scylla::value::{CqlValue, Row};

/// A message an append claim took (everything but chat, seq and rev).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(super) sender_id: i64,
    pub(super) msg_text: String,
    pub(super) sent_at: i64,
    pub(super) timestamp: Option<i64>,
    pub(super) client_msg_id: Option<String>,
    pub(super) reply_to_seq: Option<i64>,
}

impl Pending {
    pub(super) fn of(m: &NewMessage) -> Pending {
        Pending {
            sender_id: m.sender_id.get(),
            msg_text: m.msg_text.clone(),
            sent_at: m.sent_at,
            timestamp: m.timestamp,
            client_msg_id: m.client_msg_id.clone(),
            reply_to_seq: m.reply_to_seq.map(Seq::get),
        }
    }

    /// The message as appended at `seq` with revision `rev`.
    pub(super) fn message(&self, chat_id: ChatId, seq: i64, rev: i64) -> Message {
        let mut m = Message::new(
            chat_id,
            Seq(seq),
            UserId(self.sender_id),
            self.msg_text.clone(),
            self.sent_at,
        );
        m.timestamp = self.timestamp;
        m.client_msg_id.clone_from(&self.client_msg_id);
        m.reply_to_seq = self.reply_to_seq.map(Seq);
        m.rev = Rev(rev);
        m
    }

    pub(super) fn same_key(&self, m: &NewMessage) -> bool {
        m.client_msg_id.is_some()
            && self.sender_id == m.sender_id.get()
            && self.client_msg_id == m.client_msg_id
    }

    fn to_cql(&self) -> CqlValue {
        CqlValue::Tuple(vec![
            Some(CqlValue::BigInt(self.sender_id)),
            Some(CqlValue::Text(self.msg_text.clone())),
            Some(CqlValue::BigInt(self.sent_at)),
            self.timestamp.map(CqlValue::BigInt),
            self.client_msg_id.clone().map(CqlValue::Text),
            self.reply_to_seq.map(CqlValue::BigInt),
        ])
    }
}

/// The new state of one changed message: what a change may change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Changed {
    pub(super) seq: i64,
    pub(super) msg_text: String,
    pub(super) edited_at: Option<i64>,
    pub(super) deleted: bool,
    pub(super) reactions: Vec<Reaction>,
}

impl Changed {
    /// The changeable part of `m`.
    pub(super) fn of(m: &Message) -> Changed {
        Changed {
            seq: m.seq.get(),
            msg_text: m.msg_text.clone(),
            edited_at: m.edited_at,
            deleted: m.deleted,
            reactions: m.reactions.clone(),
        }
    }

    /// The reactions as stored: `(emoji, user ids)`.
    pub(super) fn reaction_rows(&self) -> Vec<(&str, Vec<i64>)> {
        self.reactions
            .iter()
            .map(|r| {
                (
                    r.emoji.as_str(),
                    r.user_ids.iter().map(|u| u.get()).collect(),
                )
            })
            .collect()
    }
}

/// What the head's last claim holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// Nothing: the chat has no messages (no head row).
    Nothing,
    /// Messages claimed by a process of schema version 1 (the `pending` column): their `rev` is
    /// their `seq`, they reply to nothing, and their rows carry no write timestamp of ours.
    Legacy(Vec<Pending>),
    /// Appended messages: seqs `last_seq - len + 1 ..= last_seq`, revs `last_rev - len + 1 ..=
    /// last_rev`, every row written with timestamp `wts`.
    Appended {
        /// The write timestamp (µs) of every row this claim writes.
        wts: i64,
        /// The messages, in seq order.
        msgs: Vec<Pending>,
    },
    /// One change, revision `last_rev`, written with timestamp `wts`.
    Changed {
        /// The write timestamp (µs) of every row this claim writes.
        wts: i64,
        /// The message's new state.
        change: Changed,
    },
}

impl Claimed {
    /// The write timestamp this claim's rows carry (0 when they carry none of ours).
    pub(super) fn wts(&self) -> i64 {
        match self {
            Claimed::Nothing | Claimed::Legacy(_) => 0,
            Claimed::Appended { wts, .. } | Claimed::Changed { wts, .. } => *wts,
        }
    }

    /// The appended messages of this claim (none for a change).
    pub(super) fn messages(&self) -> &[Pending] {
        match self {
            Claimed::Legacy(msgs) | Claimed::Appended { msgs, .. } => msgs,
            Claimed::Nothing | Claimed::Changed { .. } => &[],
        }
    }

    /// The `claim` column's value for this claim (`Nothing` and `Legacy` have none).
    pub(super) fn to_cql(&self) -> Option<CqlValue> {
        match self {
            Claimed::Nothing | Claimed::Legacy(_) => None,
            Claimed::Appended { wts, msgs } => Some(CqlValue::Tuple(vec![
                Some(CqlValue::BigInt(*wts)),
                Some(CqlValue::List(msgs.iter().map(Pending::to_cql).collect())),
                None,
                None,
            ])),
            Claimed::Changed { wts, change } => Some(CqlValue::Tuple(vec![
                Some(CqlValue::BigInt(*wts)),
                None,
                Some(CqlValue::BigInt(change.seq)),
                Some(CqlValue::Tuple(vec![
                    Some(CqlValue::Text(change.msg_text.clone())),
                    change.edited_at.map(CqlValue::BigInt),
                    Some(CqlValue::Boolean(change.deleted)),
                    Some(CqlValue::List(
                        change
                            .reactions
                            .iter()
                            .map(|r| {
                                CqlValue::Tuple(vec![
                                    Some(CqlValue::Text(r.emoji.clone())),
                                    Some(CqlValue::List(
                                        r.user_ids
                                            .iter()
                                            .map(|u| CqlValue::BigInt(u.get()))
                                            .collect(),
                                    )),
                                ])
                            })
                            .collect(),
                    )),
                ])),
            ])),
        }
    }
}

/// A state of a chat's head row, as one linearizable operation observed it.
#[derive(Clone, Debug)]
pub(crate) struct Head {
    /// The last seq handed out (0: no message yet).
    pub(crate) last_seq: i64,
    /// The last revision handed out (`last_seq` for a head of schema version 1).
    pub(crate) last_rev: i64,
    /// What the last claim holds.
    pub(crate) claim: Claimed,
    /// The claim exactly as the head holds it: the `claim` column, or for a version-1 head the
    /// `pending` column (`None` for a chat without messages).
    pub(super) raw_claim: Option<CqlValue>,
    /// Revisions `1..=implicit_revs` belong to messages stored before revisions existed (the
    /// feed reads them from `messages`); `None` when the observation did not include it.
    pub(crate) implicit_revs: Option<i64>,
    /// Whether this process knows the last claim is written out (in `messages`, and for a
    /// version-2 claim in `message_revs`) at the configured consistency.
    pub(super) materialized: bool,
}

impl Head {
    /// The head of a chat without messages.
    pub(crate) fn empty() -> Head {
        Head {
            last_seq: 0,
            last_rev: 0,
            claim: Claimed::Nothing,
            raw_claim: None,
            implicit_revs: Some(0),
            materialized: true,
        }
    }

    /// Whether this head was last written by schema version 1 (no `last_rev` yet).
    pub(crate) fn is_legacy(&self) -> bool {
        matches!(self.claim, Claimed::Legacy(_))
    }

    /// `implicit_revs` of the head after the next claim: a version-1 head's `last_seq` (every
    /// revision so far is a message's seq), else unchanged.
    pub(super) fn next_implicit_revs(&self) -> Option<i64> {
        if self.is_legacy() {
            Some(self.last_seq)
        } else {
            self.implicit_revs
        }
    }

    /// The seq of the first message of the last claim (meaningful for appends).
    pub(crate) fn first_pending_seq(&self) -> i64 {
        self.last_seq - as_i64(self.claim.messages().len()) + 1
    }

    /// The revision of the first message of the last claim (meaningful for appends).
    pub(crate) fn first_pending_rev(&self) -> i64 {
        self.last_rev - as_i64(self.claim.messages().len()) + 1
    }

    /// The head after this process's own successful claim (not yet materialized).
    pub(super) fn claimed(
        last_seq: i64,
        last_rev: i64,
        claim: Claimed,
        implicit_revs: Option<i64>,
    ) -> Head {
        Head {
            last_seq,
            last_rev,
            raw_claim: claim.to_cql(),
            claim,
            implicit_revs,
            materialized: false,
        }
    }

    /// A head from its columns, as a read or a failed LWT returned them. `column(name)` is
    /// `None` when the result does not have that column and `Some(None)` when it is null.
    /// Returns `None` when the result does not say enough to know the head (a failed LWT on a
    /// version-1 head that someone else upgraded meanwhile): the caller reads it again.
    fn from_columns(
        chat_id: ChatId,
        column: &dyn Fn(&str) -> Option<Option<CqlValue>>,
    ) -> Result<Option<Head>> {
        let bad = |what: &str| error::bad_row(format!("chat_heads {chat_id}: {what}"));
        let last_seq = match column("last_seq") {
            Some(Some(CqlValue::BigInt(n))) if n >= 1 => n,
            _ => return Err(bad("bad last_seq")),
        };
        let implicit_revs = match column("implicit_revs") {
            Some(Some(CqlValue::BigInt(n))) if n >= 0 => Some(n),
            Some(Some(_)) => return Err(bad("bad implicit_revs")),
            _ => None,
        };
        let head = |last_rev: i64, claim: Claimed, raw_claim: Option<CqlValue>| Head {
            last_seq,
            last_rev,
            claim,
            raw_claim,
            implicit_revs,
            materialized: false,
        };
        match column("last_rev") {
            Some(Some(CqlValue::BigInt(last_rev))) if last_rev >= last_seq => {
                let raw = match column("claim") {
                    None => return Ok(None),
                    Some(None) => return Err(bad("last_rev without a claim")),
                    Some(Some(raw)) => raw,
                };
                let claim = claim_from_cql(chat_id, raw.clone())?;
                let len = as_i64(claim.messages().len());
                if len > last_seq || len > last_rev {
                    return Err(bad("a claim longer than the chat"));
                }
                Ok(Some(head(last_rev, claim, Some(raw))))
            }
            Some(Some(_)) => Err(bad("bad last_rev")),
            // Null, or not in the result: a version-1 head has its claim in `pending` (which
            // version 2 sets to null when it takes the head over).
            rev => match column("pending") {
                Some(Some(CqlValue::List(items))) => {
                    let raw = CqlValue::List(items.clone());
                    let msgs = items
                        .into_iter()
                        .map(|item| match item {
                            CqlValue::Tuple(fields) => legacy_pending(chat_id, fields),
                            _ => Err(bad("pending item is not a tuple")),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    if msgs.is_empty() || as_i64(msgs.len()) > last_seq {
                        return Err(bad("pending does not fit last_seq"));
                    }
                    Ok(Some(head(last_seq, Claimed::Legacy(msgs), Some(raw))))
                }
                Some(Some(_)) => Err(bad("pending is not a list")),
                Some(None) if rev.is_some() => Err(bad("neither last_rev nor pending")),
                _ => Ok(None),
            },
        }
    }
}

/// The outcome of a claim LWT.
pub(super) enum Claim {
    /// This process owns the seqs and revisions.
    Won,
    /// Someone else moved the head; its current state, if the result told it.
    Lost(Option<Head>),
}

/// Reads an LWT result: `[applied]`, and when it did not apply, the head's current columns.
pub(super) fn claim_result(chat_id: ChatId, result: QueryResult) -> Result<Claim> {
    match head_row(result, "a chat_heads LWT")? {
        None => Err(error::bad_row("chat_heads LWT: empty result")),
        Some((applied, column)) => match applied {
            Some(true) => Ok(Claim::Won),
            Some(false) => Ok(Claim::Lost(Head::from_columns(chat_id, &column)?)),
            None => Err(error::bad_row("chat_heads LWT: no [applied] column")),
        },
    }
}

/// Reads the head from a `SELECT` of its columns: `Head::empty()` when there is no row.
pub(super) fn read_result(chat_id: ChatId, result: QueryResult) -> Result<Head> {
    match head_row(result, "chat_heads")? {
        None => Ok(Head::empty()),
        Some((_, column)) => Head::from_columns(chat_id, &column)?
            .ok_or_else(|| error::bad_row(format!("chat_heads {chat_id}: incomplete read"))),
    }
}

/// The first row of a head result: its `[applied]` (if any) and a column lookup by name.
#[allow(clippy::type_complexity)]
fn head_row(
    result: QueryResult,
    context: &str,
) -> Result<Option<(Option<bool>, impl Fn(&str) -> Option<Option<CqlValue>>)>> {
    let rows = result
        .into_rows_result()
        .map_err(|e| error::rows(context, e))?;
    let names: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|spec| spec.name().to_owned())
        .collect();
    let Some(row) = rows
        .maybe_first_row::<Row>()
        .map_err(|e| error::rows(context, e))?
    else {
        return Ok(None);
    };
    let columns = row.columns;
    let applied = names
        .iter()
        .position(|n| n == "[applied]")
        .and_then(|i| match columns.get(i) {
            Some(Some(CqlValue::Boolean(b))) => Some(*b),
            _ => None,
        });
    let column = move |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .map(|i| columns.get(i).cloned().flatten())
    };
    Ok(Some((applied, column)))
}

/// A `claim` column value.
fn claim_from_cql(chat_id: ChatId, value: CqlValue) -> Result<Claimed> {
    let bad = || error::bad_row(format!("chat_heads {chat_id}: claim has the wrong shape"));
    let CqlValue::Tuple(fields) = value else {
        return Err(bad());
    };
    let mut it = fields.into_iter();
    let mut next = || it.next().ok_or_else(bad);
    let wts = big(next()?).map_err(|()| bad())?.ok_or_else(bad)?;
    let msgs = match next()? {
        None => Vec::new(),
        Some(CqlValue::List(items)) => items
            .into_iter()
            .map(|item| match item {
                CqlValue::Tuple(fields) => pending(chat_id, fields),
                _ => Err(bad()),
            })
            .collect::<Result<Vec<_>>>()?,
        Some(_) => return Err(bad()),
    };
    let seq = big(next()?).map_err(|()| bad())?;
    let state = next()?;
    match (msgs.is_empty(), seq, state) {
        (false, None, None) => Ok(Claimed::Appended { wts, msgs }),
        (true, Some(seq), Some(CqlValue::Tuple(state))) if seq >= 1 => {
            let mut it = state.into_iter();
            let mut next = || it.next().ok_or_else(bad);
            let msg_text = text(next()?).map_err(|()| bad())?.ok_or_else(bad)?;
            let edited_at = big(next()?).map_err(|()| bad())?;
            let deleted = match next()? {
                Some(CqlValue::Boolean(b)) => b,
                _ => return Err(bad()),
            };
            let reactions = match next()? {
                None => Vec::new(),
                Some(CqlValue::List(items)) => items
                    .into_iter()
                    .map(|item| reaction_from_cql(item).ok_or_else(bad))
                    .collect::<Result<Vec<_>>>()?,
                Some(_) => return Err(bad()),
            };
            Ok(Claimed::Changed {
                wts,
                change: Changed {
                    seq,
                    msg_text,
                    edited_at,
                    deleted,
                    reactions,
                },
            })
        }
        _ => Err(bad()),
    }
}

/// One `(emoji, user ids)` reaction from CQL.
fn reaction_from_cql(value: CqlValue) -> Option<Reaction> {
    let CqlValue::Tuple(fields) = value else {
        return None;
    };
    let mut it = fields.into_iter();
    let emoji = text(it.next()?).ok()??;
    let user_ids = match it.next()? {
        None => Vec::new(),
        Some(CqlValue::List(ids)) => ids
            .into_iter()
            .map(|id| match id {
                CqlValue::BigInt(n) => Some(UserId(n)),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?,
        Some(_) => return None,
    };
    reaction(emoji, user_ids)
}

/// A reaction from its stored parts; `None` for one without users (never stored).
pub(super) fn reaction(emoji: String, user_ids: Vec<UserId>) -> Option<Reaction> {
    if user_ids.is_empty() {
        return None;
    }
    u32::try_from(user_ids.len()).ok()?;
    Some(Reaction::new(emoji, user_ids))
}

/// One message of a version-2 claim: (sender_id, msg_text, sent_at, timestamp, client_msg_id,
/// reply_to_seq).
fn pending(chat_id: ChatId, fields: Vec<Option<CqlValue>>) -> Result<Pending> {
    pending_fields(chat_id, fields, true)
}

/// One message of a version-1 `pending` list: (sender_id, msg_text, sent_at, timestamp,
/// client_msg_id).
fn legacy_pending(chat_id: ChatId, fields: Vec<Option<CqlValue>>) -> Result<Pending> {
    pending_fields(chat_id, fields, false)
}

fn pending_fields(
    chat_id: ChatId,
    fields: Vec<Option<CqlValue>>,
    with_reply: bool,
) -> Result<Pending> {
    let bad = || {
        error::bad_row(format!(
            "chat_heads {chat_id}: a claimed message is malformed"
        ))
    };
    let mut it = fields.into_iter();
    let mut next = || it.next().ok_or_else(bad);
    let sender_id = big(next()?).map_err(|()| bad())?.ok_or_else(bad)?;
    let msg_text = text(next()?).map_err(|()| bad())?.ok_or_else(bad)?;
    let sent_at = big(next()?).map_err(|()| bad())?.ok_or_else(bad)?;
    let timestamp = big(next()?).map_err(|()| bad())?;
    let client_msg_id = text(next()?).map_err(|()| bad())?;
    let reply_to_seq = if with_reply {
        big(next()?).map_err(|()| bad())?
    } else {
        None
    };
    Ok(Pending {
        sender_id,
        msg_text,
        sent_at,
        timestamp,
        client_msg_id,
        reply_to_seq,
    })
}

/// A nullable bigint.
fn big(v: Option<CqlValue>) -> std::result::Result<Option<i64>, ()> {
    match v {
        None => Ok(None),
        Some(CqlValue::BigInt(n)) => Ok(Some(n)),
        Some(_) => Err(()),
    }
}

/// A nullable text.
fn text(v: Option<CqlValue>) -> std::result::Result<Option<String>, ()> {
    match v {
        None => Ok(None),
        Some(CqlValue::Text(s) | CqlValue::Ascii(s)) => Ok(Some(s)),
        Some(_) => Err(()),
    }
}

/// A length as i64 (claims are at most `MAX_CLAIM` long).
fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
