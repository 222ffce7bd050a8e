//! Retention: what the relay may drop, decided per conversation from the devices' cursors and
//! the clock (both from outside: cursors are what devices sent in `Received`, time is the
//! `now_ms` argument).
//!
//! - The acknowledged frontier of a conversation is the lowest durable cursor over the
//!   current member users' devices that are not revoked (a device that never reported one
//!   counts as 0, and so does a member with no such device: the relay has not seen one
//!   yet): every such device holds every event up to it.
//! - The time-to-live floor is the highest sequence committed more than
//!   [`Retention::ttl_ms`] ago: dropped even if some device never came back, so that a lost
//!   or silent device does not hold the frontier forever (its cursor expires with the TTL).
//! - Event bodies at or below the higher of the two go (membership changes and epoch
//!   openings stay, see [`crate::core::store::is_kept`]); dedup records (an event id's
//!   place and the statement placing it) stay for [`Retention::dedup_window_ms`] so that a
//!   resubmission within the window is answered with its original place.
//!
//! A `Pull` below the floor is answered with `HistoryGap` (see `pull.rs`).

use super::RelayCore;
use crate::storage::{PrunePlan, PruneStats, Storage, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tidings_engine::{ConversationId, DeviceId, ServerSeq};

/// Default time-to-live of an event on the relay: 30 days.
pub const DEFAULT_TTL_SECS: u64 = 30 * 24 * 3600;
/// Default dedup window: as long as the time-to-live.
pub const DEFAULT_DEDUP_WINDOW_SECS: u64 = DEFAULT_TTL_SECS;
/// Default time between two retention passes of a running relay.
pub const DEFAULT_INTERVAL_SECS: u64 = 60;
/// The most conversations one retention transaction prunes (a pass takes several).
pub const MAX_PRUNE_PLANS: usize = 256;

/// What the relay keeps and for how long (the `[retention]` section of the relay config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Retention {
    /// Run retention at all (off: the relay keeps every event forever).
    pub enabled: bool,
    /// Drop events every current member device confirmed (`Received`), before the TTL.
    pub drop_acknowledged: bool,
    /// Events older than this are dropped even if a device never confirmed them (seconds).
    pub ttl_secs: u64,
    /// How long a resubmitted event is still recognised and answered with its original place
    /// (seconds; at least `ttl_secs` is sensible: a device may retry an old event until then).
    pub dedup_window_secs: u64,
    /// Seconds between two passes of a running relay.
    pub interval_secs: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            enabled: true,
            drop_acknowledged: true,
            ttl_secs: DEFAULT_TTL_SECS,
            dedup_window_secs: DEFAULT_DEDUP_WINDOW_SECS,
            interval_secs: DEFAULT_INTERVAL_SECS,
        }
    }
}

impl Retention {
    /// Retention off: every event kept forever.
    pub fn off() -> Retention {
        Retention {
            enabled: false,
            ..Retention::default()
        }
    }

    /// Sets the time-to-live (seconds).
    pub fn with_ttl_secs(mut self, secs: u64) -> Retention {
        self.ttl_secs = secs;
        self
    }

    /// Sets the dedup window (seconds).
    pub fn with_dedup_window_secs(mut self, secs: u64) -> Retention {
        self.dedup_window_secs = secs;
        self
    }

    /// Sets whether acknowledged events are dropped before the TTL.
    pub fn with_drop_acknowledged(mut self, on: bool) -> Retention {
        self.drop_acknowledged = on;
        self
    }

    /// Sets the time between passes (seconds).
    pub fn with_interval_secs(mut self, secs: u64) -> Retention {
        self.interval_secs = secs;
        self
    }

    /// The time-to-live in ms.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_secs.saturating_mul(1000)
    }

    /// The dedup window in ms.
    pub fn dedup_window_ms(&self) -> u64 {
        self.dedup_window_secs.saturating_mul(1000)
    }
}

impl<S: Storage> RelayCore<S> {
    /// Sets the retention policy (default: [`Retention::default`]).
    pub fn set_retention(&mut self, retention: Retention) {
        self.retention = retention;
    }

    /// The retention policy.
    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    /// What one retention pass at `now_ms` drops, per conversation (reads only). The shell
    /// runs [`Storage::prune`] on them off the core's thread; [`RelayCore::handle_retention`]
    /// does both.
    pub fn retention_plans(&self, now_ms: u64) -> Result<Vec<PrunePlan>, StoreError> {
        if !self.retention.enabled {
            return Ok(Vec::new());
        }
        let ttl_cut = now_ms.saturating_sub(self.retention.ttl_ms());
        let dedup_cut = now_ms.saturating_sub(self.retention.dedup_window_ms());
        let mut cursors: HashMap<DeviceId, HashMap<ConversationId, u64>> = HashMap::new();
        let mut plans = Vec::new();
        let mut ids: Vec<&ConversationId> = self.convs.keys().collect();
        ids.sort();
        for id in ids {
            let Some(rec) = self.convs.get(id).and_then(|c| c.committed.as_ref()) else {
                continue;
            };
            let ttl_floor = self.store.sequenced_before(id, ttl_cut)?;
            let ack_floor = if self.retention.drop_acknowledged {
                self.ack_frontier(id, &mut cursors)?
            } else {
                0
            };
            let body_floor = ttl_floor.max(ack_floor).min(rec.max_seq);
            let index_floor = self.store.sequenced_before(id, dedup_cut)?.min(body_floor);
            let old = self.store.retained_floor(id)?;
            if body_floor > old || index_floor > 0 {
                plans.push(PrunePlan {
                    conversation: *id,
                    body_floor: body_floor.max(old),
                    index_floor,
                });
            }
        }
        Ok(plans)
    }

    /// One retention pass at `now_ms`: [`RelayCore::retention_plans`], then
    /// [`Storage::prune`] on this thread, [`MAX_PRUNE_PLANS`] conversations per transaction.
    pub fn handle_retention(&mut self, now_ms: u64) -> Result<PruneStats, StoreError> {
        let plans = self.retention_plans(now_ms)?;
        let mut stats = PruneStats::default();
        for chunk in plans.chunks(MAX_PRUNE_PLANS) {
            stats += self.store.prune(chunk)?;
        }
        self.metrics.set_stored_events(self.store.n_events()?);
        Ok(stats)
    }

    /// The lowest durable cursor of `conv` over its members' devices that are not revoked.
    fn ack_frontier(
        &self,
        conv: &ConversationId,
        cursors: &mut HashMap<DeviceId, HashMap<ConversationId, u64>>,
    ) -> Result<ServerSeq, StoreError> {
        let Some(rec) = self.convs.get(conv).and_then(|c| c.committed.as_ref()) else {
            return Ok(0);
        };
        let mut frontier: Option<ServerSeq> = None;
        for user in rec.membership.members() {
            let mut known = false;
            for device in self.user_devices.get(user).into_iter().flatten() {
                if self.revoked.contains_key(device) {
                    continue;
                }
                known = true;
                if !cursors.contains_key(device) {
                    cursors.insert(*device, self.store.cursors(device)?);
                }
                let at = cursors
                    .get(device)
                    .and_then(|m| m.get(conv))
                    .copied()
                    .unwrap_or(0);
                frontier = Some(frontier.map_or(at, |f| f.min(at)));
            }
            if !known {
                // A member none of whose devices the relay knows has confirmed nothing.
                return Ok(0);
            }
        }
        Ok(frontier.unwrap_or(0))
    }
}
