//! The visible state of one conversation: messages in order with their statuses.
//!
//! [`Conversation`] is a plain-Rust mirror of the conversation's automerge documents
//! (see [`crate::doc`]): the documents are the replicated truth, this mirror answers reads in
//! O(1)/O(log n) and reports what each folded event changed. Every update here is a join
//! (set insert, min of sequences, max of watermarks), which is why any order and any number of
//! duplicates give the same state.

mod view;

pub use view::{
    Change, ConversationView, DeviceMarks, MessageRecord, MessageView, Receipt, RecipientView,
};

use crate::ids::{ConversationId, DeviceId, EventId, MessageId, ServerSeq, UserId};
use crate::status::{derive_status_with, recipient_status, PeerHeld, Status, UserMarks};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// The in-memory state of one conversation.
#[derive(Clone, Debug)]
pub struct Conversation {
    id: ConversationId,
    /// Members and the `Create` event they came from (lowest id wins if a forger made two).
    members: Option<(EventId, Vec<UserId>)>,
    /// Members after each membership change the device's gate admitted, by the change's
    /// sequence; the latest overrides the `Create` list. A message's recipients are the
    /// members at its sequence, so a later join or removal never moves its status back.
    memberships: MembershipHistory,
    messages: HashMap<MessageId, MessageRecord>,
    /// The lowest sequence and its timestamp per message (a correct relay gives exactly one).
    seq_of: HashMap<MessageId, (ServerSeq, u64)>,
    /// Sequence to message, lowest message id per sequence (one, from a correct relay).
    by_seq: BTreeMap<ServerSeq, MessageId>,
    /// Messages with a record and no sequence yet, in view order.
    pending: BTreeSet<(u64, MessageId)>,
    devices: BTreeMap<DeviceId, DeviceMarks>,
    users: BTreeMap<UserId, UserMarks>,
    /// Local outbox outcome, not replicated.
    failed: HashSet<MessageId>,
    /// Peer receipts (kept by the log, not in the documents: each device has its own peers).
    peer_held: HashMap<MessageId, PeerHeld>,
}

/// Every membership change a device's gate admitted in one conversation: the change's
/// sequence → the members after it.
pub type MembershipHistory = BTreeMap<ServerSeq, Vec<UserId>>;

/// The members at `seq` (the latest for a message not sequenced yet): after the last change in
/// `history` at or below it, else `create` (the `Create` list). The one rule for a message's
/// recipients, used by the document and by the log's message listing.
pub(crate) fn members_at<'h>(
    history: &'h MembershipHistory,
    create: Option<&'h [UserId]>,
    seq: Option<ServerSeq>,
) -> Option<&'h [UserId]> {
    let at = match seq {
        Some(s) => history.range(..=s).next_back(),
        None => history.last_key_value(),
    };
    at.map(|(_, m)| m.as_slice()).or(create)
}

impl Conversation {
    /// An empty conversation.
    pub fn new(id: ConversationId) -> Conversation {
        Conversation {
            id,
            members: None,
            memberships: BTreeMap::new(),
            messages: HashMap::new(),
            seq_of: HashMap::new(),
            by_seq: BTreeMap::new(),
            pending: BTreeSet::new(),
            devices: BTreeMap::new(),
            users: BTreeMap::new(),
            failed: HashSet::new(),
            peer_held: HashMap::new(),
        }
    }

    /// The conversation id.
    pub fn id(&self) -> ConversationId {
        self.id
    }

    /// Members, once known.
    pub fn members(&self) -> Option<&[UserId]> {
        self.members_at(None)
    }

    /// Members at sequence `seq`: after the last membership change at or before it (the
    /// current members for a message not sequenced yet).
    pub fn members_at(&self, seq: Option<ServerSeq>) -> Option<&[UserId]> {
        let create = self.members.as_ref().map(|(_, m)| m.as_slice());
        members_at(&self.memberships, create, seq)
    }

    /// Number of visible messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// True when no message is visible.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Highest sequence of a visible message.
    pub fn max_seq(&self) -> ServerSeq {
        self.ordered_acked()
            .next_back()
            .map(|(s, _)| s)
            .unwrap_or_default()
    }

    /// Summary status of a message.
    pub fn status(&self, message: &MessageId) -> Option<Status> {
        let rec = self.messages.get(message)?;
        Some(self.status_of(message, rec))
    }

    /// One message.
    pub fn message(&self, message: &MessageId) -> Option<MessageView> {
        let rec = self.messages.get(message)?;
        Some(self.view_of(message, rec))
    }

    /// All messages in view order: by server sequence, then pending ones by lamport and id.
    pub fn messages(&self) -> Vec<MessageView> {
        self.ordered_ids()
            .filter_map(|m| self.message(&m))
            .collect()
    }

    /// The last `n` messages in view order.
    pub fn latest(&self, n: usize) -> Vec<MessageView> {
        let mut out: Vec<MessageView> = self
            .pending
            .iter()
            .rev()
            .take(n)
            .filter_map(|(_, m)| self.message(m))
            .collect();
        let rest = n.saturating_sub(out.len());
        out.extend(
            self.ordered_acked()
                .rev()
                .take(rest)
                .filter_map(|(_, m)| self.message(&m)),
        );
        out.reverse();
        out
    }

    /// Per-recipient detail for a message.
    pub fn recipients(&self, message: &MessageId) -> Vec<RecipientView> {
        let Some(rec) = self.messages.get(message) else {
            return Vec::new();
        };
        let seq = self.seq_of.get(message).map(|(s, _)| *s);
        let users: Vec<UserId> = match self.members_at(seq) {
            Some(m) => m.iter().copied().filter(|u| *u != rec.user).collect(),
            None => self
                .users
                .keys()
                .copied()
                .filter(|u| *u != rec.user)
                .collect(),
        };
        users
            .into_iter()
            .map(|user| RecipientView {
                user,
                status: recipient_status(seq, self.users.get(&user).copied().unwrap_or_default()),
                devices: self
                    .devices
                    .iter()
                    .filter(|(_, m)| m.user == user)
                    .map(|(d, m)| (*d, *m))
                    .collect(),
            })
            .collect()
    }

    /// Messages from other users not yet read by any device of `user`.
    pub fn unread_count(&self, user: UserId) -> usize {
        let read = self.users.get(&user).map(|m| m.read).unwrap_or_default();
        let acked_unread = self
            .by_seq
            .range(read.saturating_add(1)..)
            .filter(|(s, m)| self.seq_of.get(m).is_some_and(|(own, _)| own == *s))
            .filter(|(_, m)| self.messages.get(m).is_some_and(|r| r.user != user))
            .count();
        let pending_unread = self
            .pending
            .iter()
            .filter(|(_, m)| self.messages.get(m).is_some_and(|r| r.user != user))
            .count();
        acked_unread + pending_unread
    }

    /// Watermarks of one user (max over the user's devices).
    pub fn user_marks(&self, user: &UserId) -> UserMarks {
        self.users.get(user).copied().unwrap_or_default()
    }

    /// Watermarks of one device.
    pub fn device_marks(&self, device: &DeviceId) -> Option<DeviceMarks> {
        self.devices.get(device).copied()
    }

    /// Everything visible, for comparisons.
    pub fn view(&self) -> ConversationView {
        ConversationView {
            members: self.members().map(<[UserId]>::to_vec),
            messages: self.messages(),
            devices: self.devices.iter().map(|(d, m)| (*d, *m)).collect(),
        }
    }

    /// Marks a message FAILED (or clears it). A local outcome: it never enters the document.
    pub fn set_failed(&mut self, message: MessageId, failed: bool) -> Vec<Change> {
        let before = self.status(&message);
        if failed {
            self.failed.insert(message);
        } else {
            self.failed.remove(&message);
        }
        self.changed(message, before)
    }

    /// Records who holds a message by a peer receipt (see [`PeerHeld`]): local, like FAILED.
    pub fn set_peer_held(&mut self, message: MessageId, held: PeerHeld) -> Vec<Change> {
        let before = self.status(&message);
        self.peer_held.insert(message, held);
        self.changed(message, before)
    }

    // ---- joins, called by the document fold and by the document loader ----

    pub(crate) fn apply_create(&mut self, event: EventId, members: Vec<UserId>) -> Vec<Change> {
        if self.members.as_ref().is_some_and(|(e, _)| *e <= event) {
            return Vec::new();
        }
        let before = self.all_statuses();
        // In id order, like the gate's membership: replicas compare equal either way.
        let mut members = members;
        members.sort();
        members.dedup();
        self.members = Some((event, members));
        let mut out = vec![Change::MembersChanged {
            conversation: self.id,
        }];
        out.extend(self.diff_statuses(before));
        out
    }

    /// The members after the membership change at `seq` (one value per sequence: the gate
    /// of every device computes the same; the first one kept wins).
    pub(crate) fn apply_membership(&mut self, seq: ServerSeq, members: Vec<UserId>) -> Vec<Change> {
        if self.memberships.contains_key(&seq) {
            return Vec::new();
        }
        let before = self.all_statuses();
        let latest = self
            .memberships
            .last_key_value()
            .is_none_or(|(s, _)| *s < seq);
        self.memberships.insert(seq, members);
        let mut out = Vec::new();
        if latest {
            out.push(Change::MembersChanged {
                conversation: self.id,
            });
        }
        out.extend(self.diff_statuses(before));
        out
    }

    /// Whether the membership change at `seq` is known.
    pub(crate) fn has_membership(&self, seq: ServerSeq) -> bool {
        self.memberships.contains_key(&seq)
    }

    pub(crate) fn apply_message(&mut self, id: MessageId, record: MessageRecord) -> Vec<Change> {
        if let Some(existing) = self.messages.get(&id) {
            // Two different events claiming one message id: keep the lowest event id, so every
            // replica keeps the same one.
            if existing.event <= record.event {
                return Vec::new();
            }
            self.pending.remove(&(existing.lamport, id));
        }
        if !self.seq_of.contains_key(&id) {
            self.pending.insert((record.lamport, id));
        }
        self.messages.insert(id, record);
        let status = self.status(&id).unwrap_or(Status::Pending);
        vec![Change::MessageAdded {
            conversation: self.id,
            message: id,
            status,
        }]
    }

    pub(crate) fn apply_ack(&mut self, id: MessageId, seq: ServerSeq, ts_ms: u64) -> Vec<Change> {
        match self.by_seq.get(&seq) {
            Some(existing) if *existing <= id => {}
            _ => {
                self.by_seq.insert(seq, id);
            }
        }
        if self.seq_of.get(&id).is_some_and(|(s, _)| *s <= seq) {
            return Vec::new();
        }
        let before = self.status(&id);
        self.seq_of.insert(id, (seq, ts_ms));
        if let Some(rec) = self.messages.get(&id) {
            self.pending.remove(&(rec.lamport, id));
        }
        self.changed(id, before)
    }

    pub(crate) fn apply_receipt(
        &mut self,
        device: DeviceId,
        user: UserId,
        receipt: Receipt,
        up_to: ServerSeq,
    ) -> Vec<Change> {
        let current = self.devices.get(&device).copied().unwrap_or(DeviceMarks {
            user,
            delivered: 0,
            read: 0,
        });
        let mut marks = current;
        match receipt {
            Receipt::Delivered => marks.delivered = marks.delivered.max(up_to),
            Receipt::Read => {
                marks.read = marks.read.max(up_to);
                marks.delivered = marks.delivered.max(up_to);
            }
        }
        if marks == current {
            return Vec::new();
        }
        self.devices.insert(device, marks);
        let device_marks = marks;
        let old = self.users.get(&user).copied().unwrap_or_default();
        let new = UserMarks {
            delivered: old.delivered.max(device_marks.delivered),
            read: old.read.max(device_marks.read),
        };
        let mut out = vec![Change::MarksChanged {
            conversation: self.id,
            device,
            user,
        }];
        if new != old {
            // Only messages in (old, new] of other users can change status.
            let lo = old.read.min(old.delivered);
            let affected: Vec<MessageId> = self
                .by_seq
                .range(lo.saturating_add(1)..=new.delivered)
                .map(|(_, m)| *m)
                .filter(|m| self.messages.get(m).is_some_and(|r| r.user != user))
                .collect();
            let before: Vec<(MessageId, Option<Status>)> =
                affected.iter().map(|m| (*m, self.status(m))).collect();
            self.users.insert(user, new);
            for (m, b) in before {
                out.extend(self.changed(m, b));
            }
        }
        out
    }

    /// A message's record, as its author wrote it.
    pub(crate) fn record(&self, id: &MessageId) -> Option<&MessageRecord> {
        self.messages.get(id)
    }

    /// A message's lowest place: (seq, server ts).
    pub(crate) fn place_of(&self, id: &MessageId) -> Option<(ServerSeq, u64)> {
        self.seq_of.get(id).copied()
    }

    /// The `Create` event and the members it named.
    pub(crate) fn create_record(&self) -> Option<(EventId, &[UserId])> {
        self.members.as_ref().map(|(e, m)| (*e, m.as_slice()))
    }

    /// Every membership change known, by sequence.
    pub(crate) fn memberships(&self) -> &MembershipHistory {
        &self.memberships
    }

    /// Every device's watermarks.
    pub(crate) fn all_device_marks(&self) -> impl Iterator<Item = (&DeviceId, &DeviceMarks)> {
        self.devices.iter()
    }

    /// Messages with a record and no place yet, in view order.
    pub(crate) fn pending_ids(&self) -> Vec<MessageId> {
        self.pending.iter().map(|(_, m)| *m).collect()
    }

    /// True when folding this ack would change nothing.
    pub(crate) fn knows_ack(&self, id: &MessageId, seq: ServerSeq) -> bool {
        self.by_seq.get(&seq).is_some_and(|m| m <= id)
            && self.seq_of.get(id).is_some_and(|(s, _)| *s <= seq)
    }

    pub(crate) fn copy_failed_from(&mut self, other: &Conversation) {
        self.failed.clone_from(&other.failed);
        self.peer_held.clone_from(&other.peer_held);
    }

    /// What changed between `self` and a later state `new` of the same conversation.
    pub(crate) fn diff_to(&self, new: &Conversation) -> Vec<Change> {
        let mut out = Vec::new();
        if self.members() != new.members() {
            out.push(Change::MembersChanged {
                conversation: self.id,
            });
        }
        for (id, rec) in &new.messages {
            let to = new.status_of(id, rec);
            match self.status(id) {
                None => out.push(Change::MessageAdded {
                    conversation: self.id,
                    message: *id,
                    status: to,
                }),
                Some(from) if from != to => out.push(Change::StatusChanged {
                    conversation: self.id,
                    message: *id,
                    from,
                    to,
                }),
                Some(_) => {}
            }
        }
        for (device, marks) in &new.devices {
            if self.devices.get(device) != Some(marks) {
                out.push(Change::MarksChanged {
                    conversation: self.id,
                    device: *device,
                    user: marks.user,
                });
            }
        }
        out
    }

    // ---- helpers ----

    /// Acked messages in sequence order, one entry per message (its lowest sequence).
    fn ordered_acked(&self) -> impl DoubleEndedIterator<Item = (ServerSeq, MessageId)> + '_ {
        self.by_seq.iter().filter_map(|(s, m)| {
            let visible = self.messages.contains_key(m)
                && self.seq_of.get(m).is_some_and(|(own, _)| own == s);
            visible.then_some((*s, *m))
        })
    }

    fn ordered_ids(&self) -> impl Iterator<Item = MessageId> + '_ {
        self.ordered_acked()
            .map(|(_, m)| m)
            .chain(self.pending.iter().map(|(_, m)| *m))
    }

    fn status_of(&self, id: &MessageId, rec: &MessageRecord) -> Status {
        derive_status_with(
            self.seq_of.get(id).map(|(s, _)| *s),
            self.failed.contains(id),
            rec.user,
            self.members_at(self.seq_of.get(id).map(|(s, _)| *s)),
            &self.users,
            self.peer_held.get(id),
        )
    }

    fn view_of(&self, id: &MessageId, rec: &MessageRecord) -> MessageView {
        let seq = self.seq_of.get(id);
        MessageView {
            id: *id,
            conversation: self.id,
            record: rec.clone(),
            seq: seq.map(|(s, _)| *s),
            server_ts_ms: seq.map(|(_, t)| *t),
            status: self.status_of(id, rec),
        }
    }

    fn changed(&self, id: MessageId, before: Option<Status>) -> Vec<Change> {
        match (before, self.status(&id)) {
            (Some(from), Some(to)) if from != to => vec![Change::StatusChanged {
                conversation: self.id,
                message: id,
                from,
                to,
            }],
            _ => Vec::new(),
        }
    }

    fn all_statuses(&self) -> Vec<(MessageId, Status)> {
        self.messages
            .iter()
            .map(|(id, rec)| (*id, self.status_of(id, rec)))
            .collect()
    }

    fn diff_statuses(&self, before: Vec<(MessageId, Status)>) -> Vec<Change> {
        before
            .into_iter()
            .flat_map(|(m, b)| self.changed(m, Some(b)))
            .collect()
    }
}
