//! Event budgets per device and per user: token buckets kept by the core across connections,
//! so that reconnecting does not refill them and a user's devices share the user's budget.
//! Also the budget of link takes per address prefix (a take comes before any identity).
//!
//! Memory is bounded by [`Limits::max_rate_buckets`]: a bucket that refilled completely is
//! indistinguishable from a new one and is dropped first; if every bucket is in use, the least
//! recently used go (their owners get a full bucket back, which is what an idle owner has).

use crate::limits::Limits;
use std::collections::HashMap;
use std::net::IpAddr;
use tidings_engine::{DeviceId, UserId};

/// Budgets of devices and users.
#[derive(Debug)]
pub(super) struct RateBuckets {
    devices: HashMap<DeviceId, TokenBucket>,
    users: HashMap<UserId, TokenBucket>,
    /// Link takes per address prefix ([`Limits::address_prefix`]).
    addresses: HashMap<IpAddr, TokenBucket>,
    max: usize,
}

impl RateBuckets {
    pub fn new(max: usize) -> RateBuckets {
        RateBuckets {
            devices: HashMap::new(),
            users: HashMap::new(),
            addresses: HashMap::new(),
            max: max.max(2),
        }
    }

    pub fn len(&self) -> usize {
        self.devices.len() + self.users.len() + self.addresses.len()
    }

    /// Takes one link take from the budget of the address prefix `prefix`
    /// ([`Limits::link_takes_per_sec`], [`Limits::link_take_burst`]); false when spent.
    pub fn take_link(&mut self, prefix: IpAddr, now_ms: u64, limits: &Limits) -> bool {
        if !self.addresses.contains_key(&prefix) && self.len() + 1 > self.max {
            self.make_room(now_ms, limits);
        }
        let b = self.addresses.entry(prefix).or_default();
        b.refill(now_ms, limits.link_takes_per_sec, limits.link_take_burst);
        if !b.has_one() {
            return false;
        }
        b.take_one();
        true
    }

    /// Takes one event from the device's and the user's budgets, or from neither; the error
    /// names the budget that is spent ("device" or "user").
    pub fn take(
        &mut self,
        device: DeviceId,
        user: UserId,
        now_ms: u64,
        limits: &Limits,
    ) -> Result<(), &'static str> {
        let new = usize::from(!self.devices.contains_key(&device))
            + usize::from(!self.users.contains_key(&user));
        if self.len() + new > self.max {
            self.make_room(now_ms, limits);
        }
        let d = self.devices.entry(device).or_default();
        d.refill(now_ms, limits.events_per_sec, limits.event_burst);
        let u = self.users.entry(user).or_default();
        u.refill(now_ms, limits.user_events_per_sec, limits.user_event_burst);
        if !d.has_one() {
            return Err("device");
        }
        if !u.has_one() {
            return Err("user");
        }
        d.take_one();
        u.take_one();
        Ok(())
    }

    /// Drops full buckets, then the least recently used, down to three quarters of the limit
    /// (so that a relay at its limit does not sweep on every event).
    fn make_room(&mut self, now_ms: u64, limits: &Limits) {
        let rate = limits.events_per_sec;
        self.devices.retain(|_, b| !b.is_full(now_ms, rate));
        let rate = limits.user_events_per_sec;
        self.users.retain(|_, b| !b.is_full(now_ms, rate));
        let rate = limits.link_takes_per_sec;
        self.addresses.retain(|_, b| !b.is_full(now_ms, rate));
        let target = self.max * 3 / 4;
        if self.len() <= target {
            return;
        }
        let mut ages: Vec<u64> = self
            .devices
            .values()
            .chain(self.users.values())
            .chain(self.addresses.values())
            .map(|b| b.last_ms)
            .collect();
        ages.sort_unstable();
        let cut = ages[self.len() - target.max(1) - 1];
        self.devices.retain(|_, b| b.last_ms > cut);
        self.users.retain(|_, b| b.last_ms > cut);
        self.addresses.retain(|_, b| b.last_ms > cut);
    }
}

/// Events-per-second budget, in thousandths of an event so integer arithmetic is exact enough.
/// A new bucket is full.
#[derive(Debug, Default)]
struct TokenBucket {
    /// Spent thousandths (0 = full): a default bucket is a full one whatever the burst.
    spent_milli: u64,
    /// The burst in thousandths, as of the last refill.
    burst_milli: u64,
    last_ms: u64,
}

impl TokenBucket {
    /// Refills at `rate` per second, up to `burst`.
    fn refill(&mut self, now_ms: u64, rate: u32, burst: u32) {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        // rate events/s = rate milli-events per ms.
        let refill = elapsed.saturating_mul(u64::from(rate));
        self.spent_milli = self
            .spent_milli
            .saturating_sub(refill)
            .min(u64::from(burst) * 1000);
        self.last_ms = self.last_ms.max(now_ms);
        self.burst_milli = u64::from(burst) * 1000;
    }

    fn has_one(&self) -> bool {
        self.spent_milli + 1000 <= self.burst_milli
    }

    fn take_one(&mut self) {
        self.spent_milli += 1000;
    }

    fn is_full(&self, now_ms: u64, rate: u32) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        elapsed.saturating_mul(u64::from(rate)) >= self.spent_milli
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(b: &mut TokenBucket, now: u64, rate: u32, burst: u32) -> bool {
        b.refill(now, rate, burst);
        let ok = b.has_one();
        if ok {
            b.take_one();
        }
        ok
    }

    #[test]
    fn bucket_refills_at_rate_up_to_burst() {
        let mut b = TokenBucket::default();
        for _ in 0..5 {
            assert!(take(&mut b, 0, 10, 5));
        }
        assert!(!take(&mut b, 0, 10, 5));
        // 100 ms at 10/s gives one event back.
        assert!(take(&mut b, 100, 10, 5));
        assert!(!take(&mut b, 100, 10, 5));
        assert!(!b.is_full(100, 10));
        // A long pause refills only up to the burst.
        assert!(b.is_full(60_000, 10));
        let granted = (0..20).filter(|_| take(&mut b, 60_000, 10, 5)).count();
        assert_eq!(granted, 5);
    }
}
