//! Peer receipts: what a peer device said it holds ([`crate::peer::PeerFrame::Holds`]: per
//! author device, every event up to a counter), kept per (conversation, holder, author), and
//! turned into the one fact a status needs, per message: which recipient users hold it
//! ([`PeerHeld`]). Both tables only grow, so statuses derived from them never go back.
//!
//! A message whose sequence the holder's user already covered with a relay receipt gets no
//! row: the relay's watermark says it already.

use super::error::corrupt;
use super::tables::{Conv, Id32, ACKS, BY_AUTHOR, CONVS, MARKS};
use super::txn::encode;
use super::{read_meta, user_marks, EventLog, LogError};
use crate::event::{Event, EventKind};
use crate::ids::{ConversationId, DeviceId, MessageId, ServerSeq, UserId};
use crate::status::{PeerHeld, UserMarks};
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;

/// (conversation, holder device, author device) → (holder's user, counter): the holder said
/// it holds every event of the author up to the counter.
pub(super) const PEER_HOLDS: TableDefinition<(Conv, Id32, Id32), (Id32, u64)> =
    TableDefinition::new("peer_holds");
/// (conversation, message id) → postcard([`PeerHeld`]): the recipient users that hold the
/// message by a peer receipt.
pub(super) const PEER_HELD: TableDefinition<(Conv, &[u8; 16]), &[u8]> =
    TableDefinition::new("peer_held");

/// One conversation's receipt from a peer: (author device, counter) pairs.
pub type HoldsVector<'a> = (ConversationId, &'a [(DeviceId, u64)]);

impl EventLog {
    /// Records that `holder` (a device of `user`) holds, per conversation and author device,
    /// every event up to the counter given, in one durable transaction. Returns the messages
    /// whose [`PeerHeld`] changed, with the new value. Counters at or below what the holder
    /// said before change nothing; only events this log holds are looked at.
    pub fn record_holds(
        &self,
        holder: DeviceId,
        user: UserId,
        vectors: &[HoldsVector<'_>],
    ) -> Result<Vec<(ConversationId, MessageId, PeerHeld)>, LogError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut out = Vec::new();
        {
            let mut holds = txn.open_table(PEER_HOLDS)?;
            let mut held = txn.open_table(PEER_HELD)?;
            let by_author = txn.open_table(BY_AUTHOR)?;
            let events = super::entries::write(&txn)?;
            let acks = txn.open_table(ACKS)?;
            let convs = txn.open_table(CONVS)?;
            let marks = txn.open_table(MARKS)?;
            for (conversation, authors) in vectors {
                let c = &conversation.0;
                let members = read_meta(&convs, conversation)?
                    .and_then(|m| m.members)
                    .map(|(_, m)| m);
                let relay_marks = user_marks(&marks, conversation)?;
                let covered = relay_marks.get(&user).map_or(0, |m| m.delivered);
                for (author, counter) in authors.iter() {
                    let key = (c, &holder.0, &author.0);
                    let old = holds.get(key)?.map_or(0, |g| g.value().1);
                    if *counter <= old {
                        continue;
                    }
                    holds.insert(key, (&user.0, *counter))?;
                    let mut ids = Vec::new();
                    for row in
                        by_author.range((c, &author.0, old + 1)..=(c, &author.0, *counter))?
                    {
                        ids.push(*row?.1.value());
                    }
                    for id in ids {
                        let Some(g) = events.get(&id)? else { continue };
                        let ev =
                            Event::decode_trusted(g.value().1).map_err(|e| corrupt("events", e))?;
                        let EventKind::Send { message, .. } = ev.kind() else {
                            continue;
                        };
                        let sender = ev.header().user;
                        let seq = acks.get(&id)?.map(|g| g.value().0);
                        if sender == user || seq.is_some_and(|s| s <= covered) {
                            continue;
                        }
                        let mut h: PeerHeld = match held.get((c, &message.0))? {
                            Some(v) => postcard::from_bytes(v.value())
                                .map_err(|e| corrupt("peer_held", e))?,
                            None => PeerHeld::default(),
                        };
                        if !h.users.insert(user) {
                            continue;
                        }
                        h.complete |=
                            every_recipient(&h, sender, members.as_deref(), seq, &relay_marks);
                        held.insert((c, &message.0), encode(&h).as_slice())?;
                        out.push((*conversation, *message, h));
                    }
                }
            }
        }
        txn.commit()?;
        self.count_durable(Durability::Immediate);
        Ok(out)
    }

    /// Every message of a conversation that some recipient holds by a peer receipt.
    pub fn peer_held(
        &self,
        conversation: ConversationId,
    ) -> Result<Vec<(MessageId, PeerHeld)>, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PEER_HELD)?;
        let c = &conversation.0;
        let mut out = Vec::new();
        for row in table.range((c, &[0u8; 16])..=(c, &[0xffu8; 16]))? {
            let (k, v) = row?;
            let h = postcard::from_bytes(v.value()).map_err(|e| corrupt("peer_held", e))?;
            out.push((MessageId(*k.value().1), h));
        }
        Ok(out)
    }

    /// What `holder` said it holds in `conversation`, per author device.
    pub fn holds_of(
        &self,
        conversation: ConversationId,
        holder: DeviceId,
    ) -> Result<Vec<(DeviceId, u64)>, LogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PEER_HOLDS)?;
        let (c, h) = (&conversation.0, &holder.0);
        let mut out = Vec::new();
        for row in table.range((c, h, &[0u8; 32])..=(c, h, &[0xffu8; 32]))? {
            let (k, v) = row?;
            out.push((DeviceId(*k.value().2), v.value().1));
        }
        Ok(out)
    }
}

/// Whether every recipient of the message (the members but its sender) has it: by a peer
/// receipt, or by a relay receipt covering its sequence.
fn every_recipient(
    held: &PeerHeld,
    sender: UserId,
    members: Option<&[UserId]>,
    seq: Option<ServerSeq>,
    marks: &BTreeMap<UserId, UserMarks>,
) -> bool {
    let Some(members) = members else {
        return false;
    };
    let mut recipients = members.iter().filter(|u| **u != sender).peekable();
    recipients.peek().is_some()
        && recipients.all(|u| {
            held.users.contains(u)
                || seq.is_some_and(|s| marks.get(u).is_some_and(|m| m.delivered >= s))
        })
}

/// The [`PeerHeld`] of one message, from the read path.
pub(super) fn read_peer_held(
    table: &impl ReadableTable<(Conv, &'static [u8; 16]), &'static [u8]>,
    conversation: &ConversationId,
    message: &MessageId,
) -> Result<Option<PeerHeld>, LogError> {
    match table.get((&conversation.0, &message.0))? {
        Some(v) => postcard::from_bytes(v.value())
            .map(Some)
            .map_err(|e| corrupt("peer_held", e)),
        None => Ok(None),
    }
}
