//! Live delivery in `seq` order, per chat: the hub's sequencer.
//!
//! A node hears of a chat's messages in whatever order their publishes happen to arrive: two
//! sends whose appends finish close together publish in either order, and a message sent
//! through another node comes through Redis while one sent here is delivered locally at once.
//! So for every chat with local members the hub keeps the highest `seq` it has forwarded and
//! forwards only the next one; a message that arrives early is held back until its predecessors
//! arrive. If they have not arrived within a short bound (`Config::live_order_hold`), the hub
//! reads them from the store (a message is published only after it is stored, and a `seq` is
//! visible only once every smaller one is, so the store has them), forwards them, and goes on.
//! A message at or below the forwarded `seq` is a duplicate (a resync overlapping live events)
//! and is dropped, unless it is one the hub gave up waiting for: a message passed over with its
//! hole (the store did not have it yet, after a few tries) is still forwarded when it arrives,
//! late and out of order, rather than lost.
//!
//! No I/O here: [`Line::offer`] says what to deliver now; the hub runs the timer and the read.

use chat_core::{Message, Seq};
use std::collections::{BTreeMap, BTreeSet};

/// Most messages held back per chat; past it the hub stops waiting and forwards them with the
/// hole (clients fill a hole themselves), so a lost event cannot make memory grow.
pub(crate) const MAX_HELD: usize = 1024;

/// Most passed-over `seq`s remembered per chat (the oldest are forgotten first).
const MAX_SKIPPED: usize = 4096;

/// One chat's ordering state.
#[derive(Debug)]
pub(crate) struct Line {
    /// The highest `seq` forwarded (or the store's `last_seq` when tracking began).
    forwarded: Seq,
    /// Messages that arrived ahead of a missing predecessor, by `seq`.
    held: BTreeMap<Seq, Message>,
    /// Gaps opened so far: names the current one, so a timer set for a gap that has since
    /// closed does not act on a newer one early.
    gaps: u64,
    /// `seq`s below `forwarded` that were passed over with their hole and have not arrived:
    /// forwarded (late) if they do.
    skipped: BTreeSet<Seq>,
}

/// What to do with an offered message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Forward these, in this order (the offered message, then any held ones it unblocked).
    Deliver(Vec<Message>),
    /// Held back behind a missing predecessor; `gap_opened` names the gap when it is the first
    /// one held, so the caller starts the timer for it.
    Held {
        /// The new gap's id when no message was held before this one.
        gap_opened: Option<u64>,
    },
    /// Already forwarded: dropped.
    Duplicate,
}

/// What to do with an offered change to a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Update {
    /// The message was forwarded before: send this as `message_updated`.
    Forward(Message),
    /// Not forwarded yet: treated as the message itself (see [`Offer`]).
    AsMessage(Offer),
}

impl Line {
    /// A line that has forwarded everything up to `seq`.
    pub(crate) fn starting_at(seq: Seq) -> Line {
        Line {
            forwarded: seq,
            held: BTreeMap::new(),
            gaps: 0,
            skipped: BTreeSet::new(),
        }
    }

    /// The highest `seq` forwarded.
    pub(crate) fn forwarded(&self) -> Seq {
        self.forwarded
    }

    /// Offers one message; see [`Offer`].
    pub(crate) fn offer(&mut self, message: Message) -> Offer {
        let seq = message.seq;
        if seq <= self.forwarded {
            return if self.skipped.remove(&seq) {
                Offer::Deliver(vec![message])
            } else {
                Offer::Duplicate
            };
        }
        if self.held.contains_key(&seq) {
            return Offer::Duplicate;
        }
        if seq != self.forwarded.next() {
            let gap_opened = self.held.is_empty().then(|| {
                self.gaps += 1;
                self.gaps
            });
            self.held.insert(seq, message);
            if self.held.len() > MAX_HELD {
                // Waiting any longer only holds memory: forward what is held, hole and all.
                return Offer::Deliver(self.release());
            }
            return Offer::Held { gap_opened };
        }
        self.forwarded = seq;
        let mut out = vec![message];
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != self.forwarded.next() {
                break;
            }
            let m = entry.remove();
            self.forwarded = m.seq;
            out.push(m);
        }
        Offer::Deliver(out)
    }

    /// Offers the current state of a message that changed; see [`Update`].
    pub(crate) fn update(&mut self, message: Message) -> Update {
        let seq = message.seq;
        if seq <= self.forwarded && !self.skipped.contains(&seq) {
            return Update::Forward(message);
        }
        if let Some(held) = self.held.get_mut(&seq) {
            if message.rev > held.rev {
                *held = message;
            }
            return Update::AsMessage(Offer::Held { gap_opened: None });
        }
        Update::AsMessage(self.offer(message))
    }

    /// The missing range `(forwarded, first held)`, exclusive, if messages are held behind
    /// the gap `id`.
    pub(crate) fn gap(&self, id: u64) -> Option<(Seq, Seq)> {
        if id != self.gaps {
            return None;
        }
        self.held
            .keys()
            .next()
            .map(|&first| (self.forwarded, first))
    }

    /// Gives up waiting: every held message, in order, and moves past them.
    pub(crate) fn release(&mut self) -> Vec<Message> {
        let held = std::mem::take(&mut self.held);
        let out: Vec<Message> = held.into_values().collect();
        for m in &out {
            // Remember the hole in front of each message, bounded.
            let mut s = self.forwarded.next();
            while s < m.seq && self.skipped.len() < MAX_SKIPPED {
                self.skipped.insert(s);
                s = s.next();
            }
            self.forwarded = m.seq;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::{ChatId, UserId};

    fn m(seq: i64) -> Message {
        Message::new(ChatId(1), Seq(seq), UserId(1), format!("m{seq}"), 0)
    }

    fn seqs(offer: Offer) -> Vec<i64> {
        match offer {
            Offer::Deliver(ms) => ms.iter().map(|m| m.seq.get()).collect(),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    #[test]
    fn in_order_messages_pass_at_once() {
        let mut line = Line::starting_at(Seq(4));
        assert_eq!(seqs(line.offer(m(5))), vec![5]);
        assert_eq!(seqs(line.offer(m(6))), vec![6]);
        assert_eq!(line.forwarded(), Seq(6));
        assert_eq!(line.gap(line.gaps), None);
    }

    #[test]
    fn early_messages_wait_for_their_predecessors() {
        let mut line = Line::starting_at(Seq(0));
        assert_eq!(
            line.offer(m(3)),
            Offer::Held {
                gap_opened: Some(1)
            }
        );
        assert_eq!(line.offer(m(2)), Offer::Held { gap_opened: None });
        assert_eq!(line.gap(1), Some((Seq(0), Seq(2))));
        assert_eq!(seqs(line.offer(m(1))), vec![1, 2, 3]);
        assert_eq!(line.gap(line.gaps), None);
        assert_eq!(line.offer(m(2)), Offer::Duplicate);
        assert_eq!(
            line.offer(m(5)),
            Offer::Held {
                gap_opened: Some(2)
            }
        );
        assert_eq!(
            line.gap(1),
            None,
            "the first gap's timer does not act on the second"
        );
        assert_eq!(line.offer(m(5)), Offer::Duplicate, "held once");
    }

    #[test]
    fn giving_up_forwards_the_held_in_order_and_moves_past_them() {
        let mut line = Line::starting_at(Seq(0));
        line.offer(m(4));
        line.offer(m(3));
        let out: Vec<i64> = line.release().iter().map(|m| m.seq.get()).collect();
        assert_eq!(out, vec![3, 4]);
        assert_eq!(line.forwarded(), Seq(4));
        assert_eq!(
            seqs(line.offer(m(1))),
            vec![1],
            "a message passed over arrives late: forwarded, not lost"
        );
        assert_eq!(line.offer(m(1)), Offer::Duplicate, "once");
        assert_eq!(seqs(line.offer(m(2))), vec![2]);
        assert_eq!(line.offer(m(3)), Offer::Duplicate);
    }

    fn changed(seq: i64, rev: i64) -> Message {
        let mut changed = m(seq);
        changed.msg_text = format!("m{seq} edited");
        changed.rev = chat_core::Rev(rev);
        changed
    }

    #[test]
    fn a_change_never_reaches_a_connection_before_its_message() {
        let mut line = Line::starting_at(Seq(0));
        assert_eq!(seqs(line.offer(m(1))), vec![1]);
        assert_eq!(
            line.update(changed(1, 5)),
            Update::Forward(changed(1, 5)),
            "a change to a forwarded message goes out as an update"
        );
        assert!(matches!(line.offer(m(3)), Offer::Held { .. }));
        assert_eq!(
            line.update(changed(3, 6)),
            Update::AsMessage(Offer::Held { gap_opened: None })
        );
        assert_eq!(
            line.update(changed(3, 4)),
            Update::AsMessage(Offer::Held { gap_opened: None }),
            "an older state does not replace a newer one"
        );
        let out = match line.offer(m(2)) {
            Offer::Deliver(ms) => ms,
            other => panic!("expected a delivery, got {other:?}"),
        };
        assert_eq!(
            out,
            vec![m(2), changed(3, 6)],
            "the held message goes out changed"
        );
        assert_eq!(
            line.update(changed(4, 7)),
            Update::AsMessage(Offer::Deliver(vec![changed(4, 7)])),
            "a change to a message not heard of yet is the message itself"
        );
        assert_eq!(
            line.offer(m(4)),
            Offer::Duplicate,
            "and its late event is dropped"
        );
    }

    #[test]
    fn too_many_held_are_forwarded_with_the_hole() {
        let mut line = Line::starting_at(Seq(0));
        for s in 2..(2 + MAX_HELD as i64) {
            assert!(matches!(line.offer(m(s)), Offer::Held { .. }));
        }
        let out = seqs(line.offer(m(2 + MAX_HELD as i64)));
        assert_eq!(out.len(), MAX_HELD + 1);
        assert_eq!(line.gap(line.gaps), None);
    }
}
