//! Retention on the relay, in the seeds that turn it on: a short time-to-live in virtual time
//! and passes every few seconds, the plan computed at one instant and the prune written a
//! little later (the real relay plans on its core and prunes on a thread of its own, so
//! commits may land in between).
//!
//! Invariants (with `check::Oracle`):
//! - nothing a member device has not confirmed is dropped before the TTL: every sequence a
//!   prune drops was committed at least a TTL ago, or every honest device the relay knows
//!   (it registered) of every user who was a member at that sequence and still is had told
//!   the relay (`Received`) that it durably holds it;
//! - a device tells the relay it holds only what it holds (or was told is gone);
//! - after the TTL, what a device misses is reported to it as a history gap (checked at the
//!   end: a message missing on a member device lies in one of its recorded gaps), and a gap is
//!   reported only over what the relay really dropped.

use super::*;
use crate::check::kept_seqs;
use tidings::relay::core::store::PrunePlan;
use tidings::relay::core::Retention;

/// The random stream of retention's draws, apart from the main one (seeds without retention
/// run exactly as before it existed).
const STREAM: u64 = 0x7265_7465_6e74_696f;
/// One seed in this many runs with retention on.
const ONE_SEED_IN: u32 = 2;

/// A seed's retention: what the relay is configured with, in virtual time.
#[derive(Debug, Clone)]
pub(super) struct SimRetention {
    pub(super) ttl_ms: u64,
    pub(super) interval_ms: u64,
    pub(super) drop_acknowledged: bool,
}

impl SimRetention {
    /// Retention for `seed`, or none (one seed in [`ONE_SEED_IN`]; never with an
    /// equivocating relay, whose staged lie is checked against a complete store).
    pub(super) fn draw(seed: u64, equivocation: bool) -> Option<SimRetention> {
        let mut rng = SmallRng::seed_from_u64(seed ^ STREAM);
        if equivocation || !rng.random_ratio(1, ONE_SEED_IN) {
            return None;
        }
        Some(SimRetention {
            ttl_ms: [5_000, 15_000, 40_000][rng.random_range(0..3)],
            interval_ms: [1_000, 3_000, 7_000][rng.random_range(0..3)],
            drop_acknowledged: rng.random_ratio(3, 4),
        })
    }

    /// The relay configuration: the TTL in whole seconds, dedup records kept for the default
    /// 30 days (longer than any run: a resubmission is always answered with its place).
    pub(super) fn config(&self) -> Retention {
        Retention::default()
            .with_ttl_secs(self.ttl_ms / 1000)
            .with_drop_acknowledged(self.drop_acknowledged)
    }
}

impl Sim {
    /// Starts the retention passes of a (re)started relay.
    pub(super) fn schedule_retention(&mut self) {
        let Some(r) = self.profile.retention.as_ref() else {
            return;
        };
        let inc = self.relay.inc;
        let at = self.now + r.interval_ms;
        self.queue.push(at, Ev::RelayRetention { inc });
    }

    /// A retention pass: its plan now, checked against the oracle; the prune a little later.
    pub(super) fn relay_retention(&mut self, inc: u64) -> Result<(), Violation> {
        let Some(r) = self.profile.retention.clone() else {
            return Ok(());
        };
        if inc != self.relay.inc {
            return Ok(());
        }
        let Some(core) = self.relay.core.as_ref() else {
            return Ok(());
        };
        let plans = core
            .retention_plans(self.now)
            .map_err(|e| format!("relay retention plan: {e}"))?;
        let raised = plans
            .iter()
            .any(|p| p.body_floor > self.oracle.floor(&p.conversation));
        let lines = if raised {
            self.timelines()?
        } else {
            BTreeMap::new()
        };
        for plan in &plans {
            let conv = plan.conversation;
            let old = self.oracle.floor(&conv);
            if plan.body_floor <= old {
                continue;
            }
            // A commit the relay made durable just before a crash was never emitted, so the
            // oracle has not seen its statement yet: it learns the places (and their server
            // times) from the store, which the restarted relay serves as committed.
            let (stored, _) = core
                .store()
                .statements_between(&conv, old + 1, plan.body_floor, usize::MAX)
                .map_err(|e| format!("relay stored statements: {e}"))?;
            for st in &stored {
                self.oracle.record_statement(&st.0)?;
            }
            let kept = kept_seqs(core.store(), &conv, old, plan.body_floor)?;
            for seq in (old + 1..=plan.body_floor).filter(|s| !kept.contains(s)) {
                self.oracle.check_droppable(
                    conv,
                    seq,
                    self.now,
                    r.ttl_ms,
                    lines.get(&conv),
                    &self.attacks.registered,
                )?;
            }
        }
        let later = self.rng.random_range(0..20);
        self.stats.retention_passes += 1;
        tr!(
            self,
            "relay plans retention: {} (prune in {later} ms)",
            plans
                .iter()
                .map(|p| format!("{} ≤ {}", p.conversation, p.body_floor))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.queue
            .push(self.now + later, Ev::RelayPrune { inc, plans });
        self.queue
            .push(self.now + r.interval_ms, Ev::RelayRetention { inc });
        Ok(())
    }

    /// The prune of a pass planned earlier (lost if the relay died in between).
    pub(super) fn relay_prune(&mut self, inc: u64, plans: Vec<PrunePlan>) -> Result<(), Violation> {
        if inc != self.relay.inc {
            return Ok(());
        }
        let Some(core) = self.relay.core.as_ref() else {
            return Ok(());
        };
        let result = core.store().prune(&plans);
        if self.relay.disk.is_dead() {
            self.stats.relay_power_cuts += 1;
            tr!(self, "relay POWER CUT while pruning");
            return self.crash_relay();
        }
        let stats = result.map_err(|e| format!("relay prune failed without a disk fault: {e}"))?;
        self.stats.bodies_pruned += stats.n_bodies;
        for plan in &plans {
            let floor = core
                .store()
                .retained_floor(&plan.conversation)
                .map_err(|e| format!("relay retained floor: {e}"))?;
            self.oracle.raise_floor(plan.conversation, floor)?;
        }
        tr!(self, "relay pruned {} bodies", stats.n_bodies);
        Ok(())
    }

    /// A `Received` reaching the relay: the device must hold what it claims (or have been
    /// told it is gone); the oracle notes the claim.
    pub(super) fn relay_hears_received(
        &mut self,
        i: usize,
        conv: ConversationId,
        up_to: ServerSeq,
    ) -> Result<(), Violation> {
        if self.profile.retention.is_none() {
            return Ok(());
        }
        let name = self.devices[i].name.clone();
        if let Some(core) = self.devices[i].core.as_ref() {
            let log = core.store().log();
            let gaps = log
                .history_gaps(conv)
                .map_err(|e| format!("{name}: gaps: {e}"))?;
            // What it claimed before was checked then.
            let before = self.oracle.received(i, conv);
            for (seq, event) in self.oracle.events_between(conv, before, up_to) {
                let held = log.contains(&event).map_err(|e| format!("{name}: {e}"))?;
                if !held && !in_gaps(&gaps, seq) {
                    return fail(format!(
                        "{name} told the relay it holds {conv} up to seq {up_to}, but lacks \
                         event {event} at seq {seq} (not in a reported gap)"
                    ));
                }
            }
        }
        self.oracle.record_received(i, conv, up_to);
        Ok(())
    }

    /// A history gap reported to device `i`: the relay dropped what it says is gone.
    pub(super) fn device_hears_gap(
        &mut self,
        i: usize,
        conv: ConversationId,
        from: ServerSeq,
        to: ServerSeq,
    ) -> Result<(), Violation> {
        self.stats.history_gaps += 1;
        let floor = self.oracle.floor(&conv);
        tr!(
            self,
            "{} told history {from}..={to} of {conv} is gone (floor {floor})",
            self.devices[i].name
        );
        if to > floor {
            return fail(format!(
                "{} was told {from}..={to} of {conv} is gone, but the relay dropped only up \
                 to {floor}",
                self.devices[i].name
            ));
        }
        Ok(())
    }

    /// The history gaps device `i` recorded in `conv`.
    pub(super) fn gaps_of(
        &self,
        i: usize,
        conv: ConversationId,
    ) -> Result<Vec<(ServerSeq, ServerSeq)>, Violation> {
        let d = &self.devices[i];
        let core = d
            .core
            .as_ref()
            .ok_or(format!("device {} is down", d.name))?;
        core.store()
            .log()
            .history_gaps(conv)
            .map_err(|e| format!("{}: gaps: {e}", d.name))
    }
}

/// `seq` lies in one of `gaps`.
pub(super) fn in_gaps(gaps: &[(ServerSeq, ServerSeq)], seq: ServerSeq) -> bool {
    gaps.iter().any(|(from, to)| (*from..=*to).contains(&seq))
}
