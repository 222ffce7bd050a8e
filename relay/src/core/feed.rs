//! Over a store shared by several relay nodes: applying what the others committed.
//!
//! Every [`CHANGE_POLL_MS`] ([`RelayCore::handle_tick`]), and before each authentication
//! and each pull, the core reads the change feed ([`Storage::changes`]) and applies it to
//! its caches: certificates, revocations (a revoked device's session here is closed),
//! consent, removed members and conversation records (membership). So what a node enforces
//! is what storage says at that moment, whichever node made the change.
//!
//! On each tick it also polls the heads of the conversations its push-enabled devices are
//! in ([`Storage::heads`]), reads what other nodes appended and pushes it: a device on this
//! node gets a push for an event appended through another within about one poll interval.
//! Pushes are hints: a device that misses one catches up from storage when it syncs.
//!
//! Over redb (one node) none of this runs: the store is not shared.

use super::sequencing::{Outgoing, Statement};
use super::staged::UserRequest;
use super::store::Decision;
use super::RelayCore;
use crate::storage::{Changes, Storage};
use std::collections::{BTreeSet, HashMap};
use tidings_engine::wire::{self, ErrorCode, ServerFrame, UserChange};
use tidings_engine::{ConversationId, Event, ServerSeq};

/// How often a node over a shared store reads the change feed and the conversation heads
/// (ms): the bound on how long another node's change or append goes unseen here.
pub const CHANGE_POLL_MS: u64 = 100;

/// Most conversation heads polled per tick (the conversations of the devices connected
/// here; past it, the rest are polled on later ticks, in turn).
pub const MAX_POLLED_HEADS: usize = 4096;

/// Most events of other nodes read and pushed per conversation per tick (the rest on the
/// next ticks).
pub const MAX_STORED_PUSH: usize = 256;

impl<S: Storage> RelayCore<S> {
    /// When [`RelayCore::handle_tick`] has work next (ms), if the store is shared.
    pub fn next_tick_ms(&self) -> Option<u64> {
        self.store.is_shared().then_some(self.next_poll_ms)
    }

    /// The periodic step over a shared store: applies the change feed, then pushes what
    /// other nodes appended to the conversations of the devices connected here. Does nothing
    /// before [`RelayCore::next_tick_ms`] or over a store only this process writes.
    pub fn handle_tick(&mut self, now_ms: u64) {
        if !self.store.is_shared() || now_ms < self.next_poll_ms {
            return;
        }
        self.next_poll_ms = now_ms.saturating_add(CHANGE_POLL_MS);
        self.sync_changes();
        self.poll_heads();
    }

    /// Reads and applies the change feed now (a no-op over a store only this process
    /// writes). A read that fails leaves the caches as they are; the next tick tries again.
    pub(super) fn sync_changes(&mut self) {
        if !self.store.is_shared() {
            return;
        }
        match self.store.changes(self.change_pos) {
            Ok(changes) => self.apply_changes(changes),
            Err(e) => tracing::warn!(error = %e, "reading the change feed"),
        }
    }

    fn apply_changes(&mut self, ch: Changes) {
        for cert in ch.registrations {
            self.add_device(cert.device, cert.user);
            let newer = self
                .certs
                .get(&cert.device)
                .is_none_or(|c| c.issued_ms < cert.issued_ms);
            if newer {
                self.certs.insert(cert.device, cert);
            }
        }
        for rev in ch.revocations {
            if let Some(&sid) = self.device_sessions.get(&rev.device) {
                self.close(
                    sid,
                    ErrorCode::REVOKED,
                    "the device was revoked by its user",
                );
            }
            self.revoked.insert(rev.device, rev);
        }
        for (c, u) in ch.former {
            self.user_former.entry(u).or_default().insert(c);
        }
        for (id, rec) in ch.conversations {
            let known = self.committed_seq(&id).unwrap_or(0);
            if rec.max_seq < known {
                continue;
            }
            let busy = self.is_busy(&id);
            self.set_committed(id, rec, !busy);
        }
        // Consent last (an acceptance names the conversation's head): what changed is told
        // to the user's devices here, as the node that made the change told its own. A change
        // this node made is in its cache already, so it is not told twice.
        for i in ch.invitations {
            if self.consent.decision(&i.user, &i.conversation) == Some(i.decision) {
                continue;
            }
            self.consent
                .set(i.user, i.conversation, i.decision, i.inviter);
            let change = match i.decision {
                Decision::Pending => Some(UserChange::Invited(wire::Invitation {
                    conversation: i.conversation,
                    inviter: i.inviter,
                })),
                Decision::Accepted => None,
                Decision::Declined => Some(UserChange::Declined(i.conversation)),
            };
            for sid in self.user_sessions(&i.user) {
                let change = match &change {
                    Some(c) => c.clone(),
                    None => self.user_change(UserRequest::Accept(i.conversation), sid),
                };
                self.send(sid, ServerFrame::UserChanged { change });
            }
        }
        for (u, o, on) in ch.blocks {
            if self.consent.blocks(&u, &o) == on {
                continue;
            }
            self.consent.set_block(u, o, on);
            let request = if on {
                UserRequest::Block(o)
            } else {
                UserRequest::Unblock(o)
            };
            for sid in self.user_sessions(&u) {
                let change = self.user_change(request, sid);
                self.send(sid, ServerFrame::UserChanged { change });
            }
        }
        self.change_pos = ch.upto;
    }

    /// Whether events or a record of the conversation are staged or being written here.
    fn is_busy(&self, id: &ConversationId) -> bool {
        self.staged.touched.contains(id)
            || self.inflight.as_ref().is_some_and(|i| i.convs.contains(id))
    }

    /// The conversations of the push-enabled devices connected here, at most
    /// [`MAX_POLLED_HEADS`], starting after the last one polled.
    fn polled_conversations(&self) -> Vec<ConversationId> {
        let mut ids = BTreeSet::new();
        for (device, sid) in &self.device_sessions {
            let pushing = self
                .sessions
                .get(sid)
                .is_some_and(|s| s.push_on && !s.pull_mode);
            let Some(user) = self.devices.get(device).filter(|_| pushing) else {
                continue;
            };
            ids.extend(self.user_convs.get(user).into_iter().flatten().copied());
        }
        let after = self.heads_cursor;
        let later = ids.iter().filter(|c| after.is_none_or(|a| **c > a));
        let earlier = ids.iter().filter(|c| after.is_some_and(|a| **c <= a));
        later
            .chain(earlier)
            .take(MAX_POLLED_HEADS)
            .copied()
            .collect()
    }

    fn poll_heads(&mut self) {
        let ids = self.polled_conversations();
        self.heads_cursor = if ids.len() < MAX_POLLED_HEADS {
            None
        } else {
            ids.last().copied()
        };
        let heads = match self.store.heads(&ids) {
            Ok(h) => h,
            Err(e) => return tracing::warn!(error = %e, "reading conversation heads"),
        };
        for (id, stored) in heads {
            let Some(pushed) = self.convs.get(&id).map(|c| c.pushed) else {
                continue;
            };
            if stored <= pushed {
                continue;
            }
            if !self.is_busy(&id) && self.committed_seq(&id).unwrap_or(0) < stored {
                // Later submits here are sequenced after what the others appended.
                match self.store.conversation(&id) {
                    Ok(Some(rec)) => self.set_committed(id, rec, true),
                    Ok(None) => continue,
                    Err(e) => return tracing::warn!(error = %e, "reading a conversation"),
                }
            }
            let items = match self.stored_items(&id, pushed) {
                Ok(items) => items,
                Err(e) => return tracing::warn!(error = %e, "reading events to push"),
            };
            let Some(&(last, _)) = items.last() else {
                continue;
            };
            if let Some(c) = self.convs.get_mut(&id) {
                c.pushed = c.pushed.max(last);
            }
            self.fan_out_stored(id, items);
        }
    }

    /// Events of `conv` after `after` (at most [`MAX_STORED_PUSH`]), each with the
    /// statement placing it.
    fn stored_items(
        &self,
        conv: &ConversationId,
        after: ServerSeq,
    ) -> Result<Vec<(ServerSeq, Outgoing)>, crate::storage::StoreError> {
        let (events, records, _) =
            self.store
                .page(conv, after, MAX_STORED_PUSH, self.frame_budget())?;
        let mut placed: HashMap<ServerSeq, Statement> = HashMap::new();
        for r in records {
            let Ok(statement) = Event::decode(&r.0) else {
                continue;
            };
            let shared: Statement = r.0.into();
            for p in statement.placements() {
                placed.insert(p.seq, shared.clone());
            }
        }
        let mut items = Vec::with_capacity(events.len());
        for (seq, e) in (after.saturating_add(1)..).zip(events) {
            let Some(statement) = placed.get(&seq) else {
                continue;
            };
            items.push((
                seq,
                Outgoing {
                    event: e.0,
                    statement: statement.clone(),
                },
            ));
        }
        Ok(items)
    }
}
