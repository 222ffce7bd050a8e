//! The link mailbox: sealed bundles an existing device leaves for a new device of its user
//! (see [`tidings_engine::link`]), each kept until taken once or until it expires.
//!
//! Bounded everywhere: a bundle is at most [`MAX_LINK_BUNDLE_LEN`] bytes (the wire decoder
//! refuses more), the mailbox holds at most [`Limits::max_link_slots`] bundles and a user at
//! most [`Limits::max_link_slots_per_user`], each for [`Limits::link_ttl_ms`]. Only a
//! registered device deposits, and a deposit costs one event of the device's and the user's
//! budgets. A take comes before any identity, as the only frame of a connection: it costs one
//! take of its address prefix's budget ([`Limits::link_takes_per_sec`]) on top of the
//! connection limits that hold for every stranger, and the connection reads nothing after it.
//!
//! Kept in memory, on the node that took the deposit: a relay restart drops the bundles (the
//! user links again), and with several relay nodes the new device must reach the same node.

use super::session::Phase;
use super::{RelayCore, SessionId};
use crate::limits::Limits;
use crate::storage::Storage;
use std::collections::HashMap;
use tidings_engine::link::{LinkSlot, MAX_LINK_BUNDLE_LEN};
use tidings_engine::wire::{ErrorCode, ServerFrame};
use tidings_engine::UserId;

/// One bundle waiting.
#[derive(Debug)]
struct Slot {
    user: UserId,
    sealed: Vec<u8>,
    expires_ms: u64,
}

/// The bundles waiting, by slot.
#[derive(Debug, Default)]
pub(super) struct Mailbox {
    slots: HashMap<LinkSlot, Slot>,
}

/// Why a deposit was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DepositRefusal {
    /// The mailbox, or the user's share of it, is full.
    Full,
    /// Another bundle waits in the slot.
    SlotTaken,
}

impl Mailbox {
    /// Drops the bundles that expired at `now_ms`.
    fn sweep(&mut self, now_ms: u64) {
        self.slots.retain(|_, s| s.expires_ms > now_ms);
    }

    /// Keeps `sealed` in `slot` for `user`; returns when it expires. The same deposit again
    /// (a device that lost the answer) gets the same answer.
    pub(super) fn deposit(
        &mut self,
        user: UserId,
        slot: LinkSlot,
        sealed: Vec<u8>,
        now_ms: u64,
        limits: &Limits,
    ) -> Result<u64, DepositRefusal> {
        self.sweep(now_ms);
        if let Some(held) = self.slots.get(&slot) {
            return if held.user == user && held.sealed == sealed {
                Ok(held.expires_ms)
            } else {
                Err(DepositRefusal::SlotTaken)
            };
        }
        let of_user = self.slots.values().filter(|s| s.user == user).count();
        if self.slots.len() >= limits.max_link_slots || of_user >= limits.max_link_slots_per_user {
            return Err(DepositRefusal::Full);
        }
        let expires_ms = now_ms.saturating_add(limits.link_ttl_ms);
        self.slots.insert(
            slot,
            Slot {
                user,
                sealed,
                expires_ms,
            },
        );
        Ok(expires_ms)
    }

    /// Takes the bundle in `slot`, once, if it has not expired.
    pub(super) fn take(&mut self, slot: &LinkSlot, now_ms: u64) -> Option<Vec<u8>> {
        self.sweep(now_ms);
        self.slots.remove(slot).map(|s| s.sealed)
    }

    /// Bundles waiting (expired ones included until the next deposit or take).
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }
}

impl<S: Storage> RelayCore<S> {
    pub(super) fn on_link_deposit(
        &mut self,
        session: SessionId,
        request_id: u64,
        slot: LinkSlot,
        sealed: Vec<u8>,
        now_ms: u64,
    ) {
        let Some((device, user)) = self.registered(session) else {
            let msg = "device is not registered to its user";
            return self.refuse(session, request_id, ErrorCode::NOT_REGISTERED, msg);
        };
        if sealed.len() > MAX_LINK_BUNDLE_LEN {
            let msg = format!("{} bytes, limit {MAX_LINK_BUNDLE_LEN}", sealed.len());
            return self.refuse(session, request_id, ErrorCode::MALFORMED_FRAME, &msg);
        }
        if let Err(which) = self.rates.take(device, user, now_ms, &self.limits) {
            let msg = format!("{which} rate limit");
            return self.refuse(session, request_id, ErrorCode::RATE_LIMITED, &msg);
        }
        match self.links.deposit(user, slot, sealed, now_ms, &self.limits) {
            Ok(expires_ms) => self.send(
                session,
                ServerFrame::LinkDeposited {
                    request_id,
                    slot,
                    expires_ms,
                },
            ),
            Err(DepositRefusal::Full) => {
                let msg = "the relay holds as many link bundles as it keeps; try again later";
                self.refuse(session, request_id, ErrorCode::LINK_FULL, msg)
            }
            Err(DepositRefusal::SlotTaken) => {
                let msg = "another link bundle waits in this slot";
                self.refuse(session, request_id, ErrorCode::FORBIDDEN, msg)
            }
        }
    }

    /// A take: the first frame of a connection with no identity. Answered with the bundle
    /// (the connection then reads nothing more), or closed.
    pub(super) fn on_link_take(&mut self, session: SessionId, slot: LinkSlot, now_ms: u64) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        s.phase = Phase::Linked;
        let prefix = self.limits.address_prefix(s.peer);
        if !self.rates.take_link(prefix, now_ms, &self.limits) {
            return self.close(
                session,
                ErrorCode::RATE_LIMITED,
                "too many link requests from this address; wait a few seconds",
            );
        }
        match self.links.take(&slot, now_ms) {
            Some(sealed) => self.send(session, ServerFrame::LinkBundle { sealed }),
            None => self.close(
                session,
                ErrorCode::LINK_NOT_FOUND,
                "no link is waiting under this code: it is wrong, expired, or was used already",
            ),
        }
    }

    /// Link bundles waiting (for tests and metrics).
    pub fn n_link_bundles(&self) -> usize {
        self.links.len()
    }
}
