//! The hub's state machine: which users are connected here, with which connections, which
//! chats they are in, each chat's local recipients, and the highest `seq` forwarded per chat.
//!
//! No I/O and no async: the [`Hub`](super::Hub) holds it behind one std mutex, asks it what to
//! do, and does the I/O (store reads, broker subscriptions, socket writes) outside the lock. So
//! every rule about membership is tested here on its own.
//!
//! # Reads that race with events
//! A user's chat list is read from the store while membership events keep arriving: when a
//! connection registers (before its `ready`) and during a resync. While such a read is
//! outstanding the user is *loading*: events are applied at once and also logged, and when the
//! read lands the log is replayed on top of it, so a change that committed after the read is
//! not undone by the read. A resync's read is tied to the user's *epoch*, so it cannot land on
//! a user who disconnected and came back meanwhile.

use super::order::{Line, Offer, Update};
use crate::ws::connection::Connection;
use chat_core::{ChatId, Message, Seq, Topic, UserId};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// One user with at least one connection to this node.
#[derive(Default)]
struct LocalUser {
    /// The user's connections, by id, each with whether its chat list is loaded yet.
    conns: HashMap<u64, (Arc<Connection>, bool)>,
    /// The chats the user belongs to, as far as this node knows.
    chats: HashSet<ChatId>,
    /// Membership changes seen while the user was loading (`true` = added), replayed on top of
    /// the list read so a change racing with the read is not lost.
    log: Vec<(ChatId, bool)>,
    /// Resync reads of this user's chats started and not yet applied.
    resync_reads: u32,
    /// Which presence of the user this is (see the module docs).
    epoch: u64,
}

impl LocalUser {
    fn loading(&self) -> bool {
        self.resync_reads > 0 || self.conns.values().any(|(_, loaded)| !loaded)
    }

    /// The list read from the store with the changes logged since replayed on top.
    fn replay(&mut self, read: &[ChatId]) -> HashSet<ChatId> {
        let mut wanted: HashSet<ChatId> = read.iter().copied().collect();
        for &(chat, member) in &self.log {
            if member {
                wanted.insert(chat);
            } else {
                wanted.remove(&chat);
            }
        }
        if !self.loading() {
            self.log.clear();
        }
        wanted
    }
}

/// A resync's pending read of one user's chats (see [`Membership::begin_resync`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ResyncRead {
    /// Whose chats to read.
    pub(crate) user: UserId,
    epoch: u64,
}

/// The maps; see the module docs.
#[derive(Default)]
pub(crate) struct Membership {
    users: HashMap<UserId, LocalUser>,
    /// Each chat's locally connected members. Never holds an empty set.
    chats: HashMap<ChatId, HashSet<UserId>>,
    /// For chats in `chats`: the live order (see `order`): the highest `seq` forwarded here
    /// (from the store's `last_seq` when the chat got its first local member) and what waits
    /// for a missing predecessor. A resync fetches what came after the forwarded `seq`.
    lines: HashMap<ChatId, Line>,
    /// Every local connection of each chat's members, as [`Membership::recipients`] last
    /// computed it; dropped whenever the chat's members or one of their connections change.
    /// Fan-out reads it once per message instead of walking the members' maps and building a
    /// list per message (that walk was ~6% of a worker's time in the fan-out profile).
    recipients: HashMap<ChatId, Arc<[Arc<Connection>]>>,
    /// The epoch the next new local user gets.
    next_epoch: u64,
}

impl Membership {
    /// Whether this node needs the broker's events of `topic`.
    pub(crate) fn wants(&self, topic: Topic) -> bool {
        match topic {
            Topic::User(u) => self.users.contains_key(&u),
            Topic::Chat(c) => self.chats.contains_key(&c),
        }
    }

    /// Adds a connection whose chat list is about to be read. Returns the topic to subscribe.
    pub(crate) fn add_connection(&mut self, conn: Arc<Connection>) -> Topic {
        let user = conn.user_id;
        let next_epoch = &mut self.next_epoch;
        let local = self.users.entry(user).or_insert_with(|| {
            *next_epoch += 1;
            LocalUser {
                epoch: *next_epoch,
                ..LocalUser::default()
            }
        });
        local.conns.insert(conn.id, (conn, false));
        self.connections_changed(user);
        Topic::User(user)
    }

    /// Sets the chats of a connection's user as read from the store after
    /// [`Membership::add_connection`], replaying the changes that arrived meanwhile. Returns the
    /// topics whose subscription may change.
    pub(crate) fn chats_loaded(&mut self, conn: &Connection, chats: &[ChatId]) -> Vec<Topic> {
        let mut topics = Vec::new();
        let Some(local) = self.users.get_mut(&conn.user_id) else {
            return topics;
        };
        let Some(entry) = local.conns.get_mut(&conn.id) else {
            return topics;
        };
        entry.1 = true;
        let wanted = local.replay(chats);
        // The list just read, with the changes logged since replayed on top, is the newest
        // view of committed state: it replaces what this node knew.
        self.replace_chats(conn.user_id, wanted, &mut topics);
        topics
    }

    /// Removes a connection. Returns whether it was registered and the topics whose
    /// subscription may change.
    pub(crate) fn remove_connection(&mut self, conn: &Connection) -> (bool, Vec<Topic>) {
        let mut topics = Vec::new();
        let user = conn.user_id;
        let Some(local) = self.users.get_mut(&user) else {
            return (false, topics);
        };
        let removed = local.conns.remove(&conn.id).is_some();
        // The user's chats lost a recipient.
        for chat in &local.chats {
            self.recipients.remove(chat);
        }
        if local.conns.is_empty() {
            let chats: Vec<ChatId> = local.chats.iter().copied().collect();
            self.users.remove(&user);
            topics.push(Topic::User(user));
            for c in chats {
                self.drop_member(c, user);
                topics.push(Topic::Chat(c));
            }
        }
        (removed, topics)
    }

    /// Every registered connection.
    pub(crate) fn all_connections(&self) -> Vec<Arc<Connection>> {
        self.users
            .values()
            .flat_map(|l| l.conns.values().map(|(c, _)| c.clone()))
            .collect()
    }

    /// Local chats with no forwarded `seq` yet (their first member is being set up).
    pub(crate) fn untracked_chats(&self) -> Vec<ChatId> {
        self.chats
            .keys()
            .filter(|c| !self.lines.contains_key(c))
            .copied()
            .collect()
    }

    /// Every local chat with its forwarded `seq` (`None` while untracked).
    pub(crate) fn tracked_chats(&self) -> Vec<(ChatId, Option<Seq>)> {
        self.chats
            .keys()
            .map(|c| (*c, self.lines.get(c).map(Line::forwarded)))
            .collect()
    }

    /// The highest `seq` forwarded for a local chat.
    pub(crate) fn forwarded(&self, chat: ChatId) -> Option<Seq> {
        self.lines.get(&chat).map(Line::forwarded)
    }

    /// Starts tracking a local chat at `seq` unless it is tracked already (then what was
    /// forwarded stands: raising it could skip messages still in flight).
    pub(crate) fn track(&mut self, chat: ChatId, seq: Seq) {
        if self.chats.contains_key(&chat) {
            self.lines
                .entry(chat)
                .or_insert_with(|| Line::starting_at(seq));
        }
    }

    /// Offers a message of `chat` to its live order (see `order`). A chat without local
    /// members has nobody to deliver to; one whose first member is still being set up starts
    /// its order at this message.
    pub(crate) fn offer(&mut self, chat: ChatId, message: Message) -> Offer {
        if !self.chats.contains_key(&chat) {
            return Offer::Deliver(vec![message]);
        }
        match self.lines.get_mut(&chat) {
            Some(line) => line.offer(message),
            None => {
                self.lines.insert(chat, Line::starting_at(message.seq));
                Offer::Deliver(vec![message])
            }
        }
    }

    /// Offers a changed message of `chat` to its live order (see `order::Update`). Without a
    /// line (no local members, or the first one still being set up) it goes out as an update.
    pub(crate) fn update(&mut self, chat: ChatId, message: Message) -> Update {
        match self.lines.get_mut(&chat) {
            Some(line) if self.chats.contains_key(&chat) => line.update(message),
            _ => Update::Forward(message),
        }
    }

    /// The missing range of a chat whose messages wait for a predecessor.
    pub(crate) fn gap(&self, chat: ChatId, id: u64) -> Option<(Seq, Seq)> {
        self.lines.get(&chat).and_then(|l| l.gap(id))
    }

    /// Stops waiting for a chat's missing messages: what it held, in order.
    pub(crate) fn release(&mut self, chat: ChatId) -> Vec<Message> {
        self.lines
            .get_mut(&chat)
            .map(Line::release)
            .unwrap_or_default()
    }

    /// Records a membership change learnt from an event: applies it and, while the user's
    /// chat list is being read, logs it for replay. Returns whether anything changed.
    pub(crate) fn set_member(&mut self, chat: ChatId, user: UserId, member: bool) -> bool {
        if let Some(local) = self.users.get_mut(&user) {
            if local.loading() {
                local.log.push((chat, member));
            }
        }
        self.apply_member(chat, user, member)
    }

    /// A chat's members as an event says they are now: local users no longer in it are
    /// dropped. Returns the connections of the local members who stay (they hear of the change)
    /// and whether anyone was dropped.
    pub(crate) fn chat_members_now(
        &mut self,
        chat: ChatId,
        members: &HashSet<UserId>,
    ) -> (Vec<Arc<Connection>>, bool) {
        let local: Vec<UserId> = self
            .chats
            .get(&chat)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let (keep, gone): (Vec<UserId>, Vec<UserId>) =
            local.into_iter().partition(|u| members.contains(u));
        for u in &gone {
            self.set_member(chat, *u, false);
        }
        (self.connections_of(&keep), !gone.is_empty())
    }

    /// Starts a resync's re-read of every local user's chats: until each read is applied with
    /// [`Membership::resync_read_done`], events for that user are logged for replay.
    pub(crate) fn begin_resync(&mut self) -> Vec<ResyncRead> {
        self.users
            .iter_mut()
            .map(|(&user, local)| {
                local.resync_reads += 1;
                ResyncRead {
                    user,
                    epoch: local.epoch,
                }
            })
            .collect()
    }

    /// Applies a resync's read of a user's chats (`None`: the read failed, nothing changes).
    /// Returns the topics whose subscription may change.
    pub(crate) fn resync_read_done(
        &mut self,
        read: ResyncRead,
        chats: Option<&[ChatId]>,
    ) -> Vec<Topic> {
        let mut topics = Vec::new();
        let Some(local) = self.users.get_mut(&read.user) else {
            return topics;
        };
        if local.epoch != read.epoch {
            // The user left and came back: the new presence read its own list.
            return topics;
        }
        local.resync_reads = local.resync_reads.saturating_sub(1);
        match chats {
            Some(chats) => {
                let wanted = local.replay(chats);
                self.replace_chats(read.user, wanted, &mut topics);
            }
            None => {
                if !local.loading() {
                    local.log.clear();
                }
            }
        }
        topics
    }

    /// Every local connection of `chat`'s members (empty when it has none here), cached until
    /// they change.
    pub(crate) fn recipients(&mut self, chat: ChatId) -> Arc<[Arc<Connection>]> {
        if let Some(r) = self.recipients.get(&chat) {
            return r.clone();
        }
        let Some(members) = self.chats.get(&chat) else {
            return Arc::from([]);
        };
        let conns: Arc<[Arc<Connection>]> = self.connections_of(members).into();
        self.recipients.insert(chat, conns.clone());
        conns
    }

    /// Every connection of the given users.
    pub(crate) fn connections_of<'a>(
        &'a self,
        users: impl IntoIterator<Item = &'a UserId>,
    ) -> Vec<Arc<Connection>> {
        users
            .into_iter()
            .filter_map(|u| self.users.get(u))
            .flat_map(|l| l.conns.values().map(|(c, _)| c.clone()))
            .collect()
    }

    /// Records that `user` (connected here) is or is not a member of `chat`. Returns whether
    /// anything changed.
    fn apply_member(&mut self, chat: ChatId, user: UserId, member: bool) -> bool {
        let Some(local) = self.users.get_mut(&user) else {
            return false;
        };
        if member {
            let added = local.chats.insert(chat);
            if self.chats.entry(chat).or_default().insert(user) {
                self.recipients.remove(&chat);
            }
            added
        } else {
            let removed = local.chats.remove(&chat);
            self.drop_member(chat, user);
            removed
        }
    }

    /// Takes `user` out of `chat`'s local members, forgetting the chat when nobody is left.
    fn drop_member(&mut self, chat: ChatId, user: UserId) {
        if let Some(set) = self.chats.get_mut(&chat) {
            if set.remove(&user) {
                self.recipients.remove(&chat);
            }
            if set.is_empty() {
                self.chats.remove(&chat);
                self.lines.remove(&chat);
            }
        }
    }

    /// Replaces what this node knows of `user`'s chats with `wanted` (a fresh read of
    /// committed state), collecting the topics whose subscription may change.
    fn replace_chats(&mut self, user: UserId, wanted: HashSet<ChatId>, topics: &mut Vec<Topic>) {
        let Some(local) = self.users.get(&user) else {
            return;
        };
        let old: Vec<ChatId> = local.chats.iter().copied().collect();
        for c in old {
            if !wanted.contains(&c) && self.apply_member(c, user, false) {
                topics.push(Topic::Chat(c));
            }
        }
        for c in wanted {
            self.apply_member(c, user, true);
            topics.push(Topic::Chat(c));
        }
    }

    /// Forgets the cached recipients of every chat of `user`, whose connections changed.
    fn connections_changed(&mut self, user: UserId) {
        if let Some(local) = self.users.get(&user) {
            for chat in &local.chats {
                self.recipients.remove(chat);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::TokenHash;

    fn conn(id: u64, user: i64) -> Arc<Connection> {
        Connection::new(id, UserId(user), TokenHash([0; 32]), 8)
    }

    fn ids(conns: &[Arc<Connection>]) -> Vec<u64> {
        let mut v: Vec<u64> = conns.iter().map(|c| c.id).collect();
        v.sort();
        v
    }

    #[test]
    fn topics_follow_connections_and_chats() {
        let mut m = Membership::default();
        let a = conn(1, 1);
        assert_eq!(m.add_connection(a.clone()), Topic::User(UserId(1)));
        assert!(m.wants(Topic::User(UserId(1))));
        let topics = m.chats_loaded(&a, &[ChatId(10)]);
        assert_eq!(topics, vec![Topic::Chat(ChatId(10))]);
        assert!(m.wants(Topic::Chat(ChatId(10))));
        let (removed, topics) = m.remove_connection(&a);
        assert!(removed);
        assert!(topics.contains(&Topic::User(UserId(1))));
        assert!(topics.contains(&Topic::Chat(ChatId(10))));
        assert!(!m.wants(Topic::Chat(ChatId(10))) && !m.wants(Topic::User(UserId(1))));
    }

    #[test]
    fn recipients_are_cached_until_members_or_connections_change() {
        let mut m = Membership::default();
        let (a, b) = (conn(1, 1), conn(2, 2));
        for c in [&a, &b] {
            m.add_connection(c.clone());
            m.chats_loaded(c, &[ChatId(10)]);
        }
        let r1 = m.recipients(ChatId(10));
        assert!(Arc::ptr_eq(&r1, &m.recipients(ChatId(10))), "cached");
        assert_eq!(ids(&r1), vec![1, 2]);
        let a2 = conn(3, 1);
        m.add_connection(a2.clone());
        assert_eq!(ids(&m.recipients(ChatId(10))), vec![1, 2, 3]);
        m.set_member(ChatId(10), UserId(2), false);
        assert_eq!(ids(&m.recipients(ChatId(10))), vec![1, 3]);
    }

    #[test]
    fn a_change_during_the_read_survives_the_read() {
        let mut m = Membership::default();
        let a = conn(1, 1);
        m.add_connection(a.clone());
        // Added to 11 and removed from 10 after the store was read...
        m.set_member(ChatId(11), UserId(1), true);
        m.set_member(ChatId(10), UserId(1), false);
        // ...so the stale list [10] ends up as [11].
        m.chats_loaded(&a, &[ChatId(10)]);
        assert!(m.wants(Topic::Chat(ChatId(11))));
        assert!(!m.wants(Topic::Chat(ChatId(10))));
    }

    #[test]
    fn a_resync_read_replays_changes_and_skips_a_user_who_came_back() {
        let mut m = Membership::default();
        let a = conn(1, 1);
        m.add_connection(a.clone());
        m.chats_loaded(&a, &[ChatId(10)]);
        let reads = m.begin_resync();
        assert_eq!(reads.len(), 1);
        // Joined 12 while the resync read was out; the read (taken before) says [10, 11].
        m.set_member(ChatId(12), UserId(1), true);
        m.resync_read_done(reads[0], Some(&[ChatId(10), ChatId(11)]));
        for c in [10, 11, 12] {
            assert!(m.wants(Topic::Chat(ChatId(c))), "chat {c}");
        }
        // A read that lands after the user left and came back is dropped.
        let reads = m.begin_resync();
        m.remove_connection(&a);
        let a2 = conn(2, 1);
        m.add_connection(a2.clone());
        m.chats_loaded(&a2, &[ChatId(20)]);
        assert!(m.resync_read_done(reads[0], Some(&[ChatId(99)])).is_empty());
        assert!(!m.wants(Topic::Chat(ChatId(99))));
        assert!(m.wants(Topic::Chat(ChatId(20))));
    }

    fn msg(chat: i64, seq: i64) -> Message {
        Message::new(ChatId(chat), Seq(seq), UserId(1), "", 0)
    }

    #[test]
    fn forwarded_seqs_start_at_tracking_and_only_rise() {
        let mut m = Membership::default();
        let a = conn(1, 1);
        m.add_connection(a.clone());
        m.chats_loaded(&a, &[ChatId(10)]);
        assert_eq!(m.untracked_chats(), vec![ChatId(10)]);
        m.track(ChatId(10), Seq(5));
        m.track(ChatId(10), Seq(9));
        assert_eq!(
            m.forwarded(ChatId(10)),
            Some(Seq(5)),
            "tracking does not move it"
        );
        assert!(matches!(m.offer(ChatId(10), msg(10, 6)), Offer::Deliver(_)));
        assert_eq!(m.offer(ChatId(10), msg(10, 6)), Offer::Duplicate);
        assert_eq!(m.forwarded(ChatId(10)), Some(Seq(6)));
        assert_eq!(
            m.offer(ChatId(10), msg(10, 8)),
            Offer::Held {
                gap_opened: Some(1)
            }
        );
        assert_eq!(m.gap(ChatId(10), 1), Some((Seq(6), Seq(8))));
        assert_eq!(m.release(ChatId(10)).len(), 1);
        assert_eq!(m.forwarded(ChatId(10)), Some(Seq(8)));
        assert!(matches!(m.offer(ChatId(99), msg(99, 1)), Offer::Deliver(_)));
        assert_eq!(
            m.forwarded(ChatId(99)),
            None,
            "chats without local members are not tracked"
        );
        m.set_member(ChatId(10), UserId(1), false);
        assert_eq!(
            m.forwarded(ChatId(10)),
            None,
            "forgotten with its last member"
        );
    }

    #[test]
    fn a_chat_view_drops_members_who_left() {
        let mut m = Membership::default();
        let (a, b) = (conn(1, 1), conn(2, 2));
        for c in [&a, &b] {
            m.add_connection(c.clone());
            m.chats_loaded(c, &[ChatId(10)]);
        }
        let now: HashSet<UserId> = [UserId(1)].into();
        let (conns, gone) = m.chat_members_now(ChatId(10), &now);
        assert!(gone);
        assert_eq!(ids(&conns), vec![1]);
        assert_eq!(ids(&m.recipients(ChatId(10))), vec![1]);
    }
}
