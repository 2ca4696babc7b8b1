//! `append`: a claim on the chat head that carries its message (see the module doc of
//! [`cassandra`](super) for the reasoning), the in-process per-chat lock and head cache, and
//! writing a claimed message into `messages` ("materializing" it).

use super::{error, Inner};
use chat_core::{Appended, ChatId, Error, Message, NewMessage, Result, Seq, UserId};
use scylla::response::query_result::QueryResult;
use scylla::value::{CqlValue, Row};
use std::sync::Arc;
use std::time::Duration;

/// How many times one append tries to claim a seq before it reports `Unavailable`. Each failed
/// try means another appender won a seq, so the chat made progress meanwhile.
const MAX_CLAIM_ATTEMPTS: u32 = 200;

/// Chats whose head this process remembers before it forgets idle ones.
const MAX_CACHED_HEADS: usize = 50_000;

/// The `pending` tuple as stored: `(sender_id, msg_text, sent_at, timestamp, client_msg_id)`.
pub(crate) type PendingTuple = (
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

/// The message a head claimed (everything but chat and seq).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    sender_id: i64,
    msg_text: String,
    sent_at: i64,
    timestamp: Option<i64>,
    client_msg_id: Option<String>,
}

impl Pending {
    fn of(m: &NewMessage) -> Pending {
        Pending {
            sender_id: m.sender_id.get(),
            msg_text: m.msg_text.clone(),
            sent_at: m.sent_at,
            timestamp: m.timestamp,
            client_msg_id: m.client_msg_id.clone(),
        }
    }

    fn tuple(&self) -> PendingTuple {
        (
            Some(self.sender_id),
            Some(self.msg_text.clone()),
            Some(self.sent_at),
            self.timestamp,
            self.client_msg_id.clone(),
        )
    }

    fn message(&self, chat_id: ChatId, seq: i64) -> Message {
        Message {
            chat_id,
            seq: Seq(seq),
            sender_id: UserId(self.sender_id),
            msg_text: self.msg_text.clone(),
            sent_at: self.sent_at,
            timestamp: self.timestamp,
            client_msg_id: self.client_msg_id.clone(),
        }
    }

    fn same_key(&self, m: &NewMessage) -> bool {
        m.client_msg_id.is_some()
            && self.sender_id == m.sender_id.get()
            && self.client_msg_id == m.client_msg_id
    }
}

/// A state of a chat's head row, as one linearizable operation observed it.
#[derive(Clone, Debug)]
pub(crate) struct Head {
    /// The last seq handed out (0: no message yet).
    pub(crate) last_seq: i64,
    /// The message of `last_seq` (`None` only when `last_seq` is 0).
    pub(crate) pending: Option<Pending>,
    /// Whether this process knows message `last_seq` is in `messages` at QUORUM.
    materialized: bool,
}

impl Head {
    /// The head of a chat without messages.
    pub(crate) fn empty() -> Head {
        Head {
            last_seq: 0,
            pending: None,
            materialized: true,
        }
    }

    /// A head from its columns; `Internal` when they break the row's invariant.
    pub(crate) fn from_columns(
        chat_id: ChatId,
        last_seq: Option<i64>,
        pending: Option<PendingTuple>,
    ) -> Result<Head> {
        let last_seq = last_seq
            .filter(|s| *s >= 1)
            .ok_or_else(|| error::bad_row(format!("chat_heads {chat_id}: bad last_seq")))?;
        let (sender_id, msg_text, sent_at, timestamp, client_msg_id) = pending
            .ok_or_else(|| error::bad_row(format!("chat_heads {chat_id}: no pending message")))?;
        let missing =
            |col: &str| error::bad_row(format!("chat_heads {chat_id}: pending {col} is null"));
        Ok(Head {
            last_seq,
            pending: Some(Pending {
                sender_id: sender_id.ok_or_else(|| missing("sender_id"))?,
                msg_text: msg_text.ok_or_else(|| missing("msg_text"))?,
                sent_at: sent_at.ok_or_else(|| missing("sent_at"))?,
                timestamp,
                client_msg_id,
            }),
            materialized: false,
        })
    }

    /// The head after this process's own successful claim and writes.
    fn claimed(last_seq: i64, pending: Pending) -> Head {
        Head {
            last_seq,
            pending: Some(pending),
            materialized: true,
        }
    }
}

/// The outcome of a claim LWT.
enum Claim {
    /// This append owns the seq.
    Won,
    /// Someone else moved the head; this is its current state.
    Lost(Head),
}

impl Inner {
    /// The per-chat lock holding this process's last known head of the chat.
    fn head_slot(&self, chat_id: ChatId) -> Arc<tokio::sync::Mutex<Option<Head>>> {
        // A poisoned map only means a panic elsewhere while inserting; the map itself is fine.
        let mut heads = self
            .heads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if heads.len() >= MAX_CACHED_HEADS && !heads.contains_key(&chat_id) {
            // Forget chats nobody is appending to right now (only the map holds their Arc).
            heads.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        Arc::clone(heads.entry(chat_id).or_default())
    }

    /// Appends one message; see the module doc of [`cassandra`](super).
    pub(crate) async fn append(&self, msg: NewMessage) -> Result<Appended> {
        let chat_id = msg.chat_id;
        let slot = self.head_slot(chat_id);
        let mut cached = slot.lock().await;
        // Taken out: if anything below fails, the head is unknown and the next append starts
        // cold, from what the database says.
        let mut head = cached.take();
        let pending = Pending::of(&msg);
        for attempt in 0..MAX_CLAIM_ATTEMPTS {
            if attempt >= 4 {
                // Another process keeps winning: back off a little so Paxos rounds do not
                // collide (Cassandra's own contention handling is slower than this).
                let ms = 1 + u64::from(attempt.min(20)) + fastrand_jitter(attempt);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let Some(mut current) = head.take() else {
                // Cold: an empty chat has no messages and so nothing to dedupe against.
                match self.claim_first(chat_id, &pending).await? {
                    Claim::Won => {
                        self.materialize(chat_id, 1, &pending).await?;
                        *cached = Some(Head::claimed(1, pending.clone()));
                        return Ok(Appended {
                            message: pending.message(chat_id, 1),
                            created: true,
                        });
                    }
                    Claim::Lost(now) => {
                        head = Some(now);
                        continue;
                    }
                }
            };
            let n = current.last_seq;
            let current_pending = current
                .pending
                .clone()
                .ok_or_else(|| error::bad_row(format!("chat_heads {chat_id}: no pending")))?;
            // Dedupe against the newest message (still only in the head, maybe) ...
            if current_pending.same_key(&msg) {
                if !current.materialized {
                    self.materialize(chat_id, n, &current_pending).await?;
                    current.materialized = true;
                }
                *cached = Some(current);
                return Ok(Appended {
                    message: current_pending.message(chat_id, n),
                    created: false,
                });
            }
            // ... and against every older one, which is in message_dedupe by the invariant.
            if let Some(stored) = self.find_duplicate(&msg).await? {
                *cached = Some(current);
                return Ok(Appended {
                    message: stored,
                    created: false,
                });
            }
            // The invariant: message n is in `messages` before the head moves past it.
            if !current.materialized {
                self.materialize(chat_id, n, &current_pending).await?;
                current.materialized = true;
            }
            match self
                .claim_next(chat_id, n, &current_pending, &pending)
                .await?
            {
                Claim::Won => {
                    self.materialize(chat_id, n + 1, &pending).await?;
                    *cached = Some(Head::claimed(n + 1, pending.clone()));
                    return Ok(Appended {
                        message: pending.message(chat_id, n + 1),
                        created: true,
                    });
                }
                Claim::Lost(now) => head = Some(now),
            }
        }
        Err(Error::Unavailable {
            message: format!(
                "cassandra: chat {chat_id} is under too much contention to append; retry"
            ),
            source: None,
        })
    }

    /// The stored message with the same `(chat, sender, client_msg_id)`, if any.
    async fn find_duplicate(&self, msg: &NewMessage) -> Result<Option<Message>> {
        let Some(client_msg_id) = &msg.client_msg_id else {
            return Ok(None);
        };
        let rows = self
            .exec(
                "reading a dedupe key",
                &self.stmts.dedupe_read,
                (msg.chat_id.get(), msg.sender_id.get(), client_msg_id),
            )
            .await?
            .into_rows_result()
            .map_err(|e| error::rows("message_dedupe", e))?;
        let Some((seq,)) = rows
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(|e| error::rows("message_dedupe", e))?
        else {
            return Ok(None);
        };
        let seq = seq.ok_or_else(|| error::bad_row("message_dedupe: null seq"))?;
        // The dedupe row is written together with (never before) its message row completes.
        let stored = self.read_message(msg.chat_id, seq).await?.ok_or_else(|| {
            error::bad_row(format!(
                "chat {}: dedupe key points at seq {seq}, which is not stored",
                msg.chat_id
            ))
        })?;
        Ok(Some(stored))
    }

    /// Writes message `seq` (and its dedupe row) at the configured consistency. Idempotent:
    /// every writer of one seq writes the same values.
    pub(crate) async fn materialize(&self, chat_id: ChatId, seq: i64, p: &Pending) -> Result<()> {
        let message = self.exec(
            "writing a message",
            &self.stmts.message_write,
            (
                chat_id.get(),
                self.bucket(seq),
                seq,
                p.sender_id,
                &p.msg_text,
                p.sent_at,
                p.timestamp,
                &p.client_msg_id,
            ),
        );
        match &p.client_msg_id {
            Some(client_msg_id) => {
                let dedupe = self.exec(
                    "writing a dedupe key",
                    &self.stmts.dedupe_write,
                    (chat_id.get(), p.sender_id, client_msg_id, seq),
                );
                let (m, d) = tokio::join!(message, dedupe);
                m?;
                d?;
            }
            None => {
                message.await?;
            }
        }
        Ok(())
    }

    /// `INSERT ... IF NOT EXISTS` of the head with `last_seq = 1`.
    async fn claim_first(&self, chat_id: ChatId, p: &Pending) -> Result<Claim> {
        let result = self
            .exec(
                "claiming seq 1",
                &self.stmts.head_first,
                (chat_id.get(), p.tuple()),
            )
            .await?;
        claim_result(chat_id, result)
    }

    /// `UPDATE ... IF last_seq = n AND pending = pending_n` to `n + 1` and the new message.
    async fn claim_next(
        &self,
        chat_id: ChatId,
        n: i64,
        current: &Pending,
        next: &Pending,
    ) -> Result<Claim> {
        let result = self
            .exec(
                "claiming the next seq",
                &self.stmts.head_next,
                (n + 1, next.tuple(), chat_id.get(), n, current.tuple()),
            )
            .await?;
        claim_result(chat_id, result)
    }
}

/// Reads an LWT result: `[applied]`, and when it did not apply, the head's current columns.
fn claim_result(chat_id: ChatId, result: QueryResult) -> Result<Claim> {
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
                Some(CqlValue::Tuple(fields)) => Some(pending_from_cql(chat_id, fields)?),
                _ => None,
            };
            Ok(Claim::Lost(Head::from_columns(chat_id, last_seq, pending)?))
        }
        _ => Err(error::bad_row("chat_heads LWT: no [applied] column")),
    }
}

/// The `pending` tuple from a dynamically typed LWT result.
fn pending_from_cql(chat_id: ChatId, fields: Vec<Option<CqlValue>>) -> Result<PendingTuple> {
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

/// A little jitter (0..8 ms) without a random-number dependency: the low bits of the clock,
/// mixed with the attempt number, differ between the processes that collide.
fn fastrand_jitter(attempt: u32) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from((nanos ^ attempt.wrapping_mul(2_654_435_761)) % 8)
}
