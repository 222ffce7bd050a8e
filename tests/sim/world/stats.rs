//! What a run did, summed over seeds for the report.

use super::attacks::Attack;
use super::equivocation::REPORT_KINDS;
use super::HEAL_BOUND_MS;
use std::fmt;

/// How often one kind of attack was tried, and refused.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttackCount {
    pub tried: u64,
    pub refused: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub seeds: u64,
    pub steps: u64,
    pub frames: u64,
    pub frames_lost_to_dead_connections: u64,
    pub chaos_dropped: u64,
    pub chaos_duplicated: u64,
    pub chaos_reordered: u64,
    pub delay_spikes: u64,
    pub partitions_both: u64,
    pub partitions_up: u64,
    pub partitions_down: u64,
    pub idle_timeouts: u64,
    pub connections: u64,
    pub connection_kills: u64,
    pub dial_failures: u64,
    pub device_crashes: u64,
    pub device_power_cuts: u64,
    pub relay_crashes: u64,
    pub relay_power_cuts: u64,
    pub device_restarts: u64,
    pub relay_restarts: u64,
    pub clock_changes: u64,
    pub offline_periods: u64,
    pub sends: u64,
    pub reads: u64,
    pub retries: u64,
    pub device_errors: u64,
    pub relay_closes: u64,
    pub acks: u64,
    pub chain_gaps: u64,
    pub forged: u64,
    /// Per [`Attack`], in the order of [`Attack::ALL`].
    pub attacks: [AttackCount; Attack::ALL.len()],
    /// Flood invitations refused because the invited user blocks the flooder.
    pub invitations_blocked: u64,
    /// Flood invitations still pending at the end (never accepted, within the cap).
    pub invitations_pending: u64,
    /// Rogue `EpochKeys` events the relay sequenced.
    pub poison_events: u64,
    /// Epoch-key shares devices refused (`DeviceEvent::KeyShareRefused`).
    pub key_shares_refused: u64,
    /// Honest message bodies read back at the end and found as sent.
    pub bodies_checked: u64,
    /// Honest message bodies still waiting for their epoch key at the end.
    pub bodies_waiting: u64,
    pub removals: u64,
    pub additions: u64,
    pub messages_delivered_everywhere: u64,
    /// Seeds whose relay means to lie to one device (see `equivocation`).
    pub equivocations_drawn: u64,
    /// Of those, the ones where it did (an eligible frame to the victim came in time).
    pub equivocations_staged: u64,
    /// Of those, the ones whose victim still held the altered statement as a member at the
    /// end: detection was reachable.
    pub equivocations_tried: u64,
    /// Of those, the ones some device reported (all of them, or the seed fails).
    pub equivocations_detected: u64,
    /// Staged, but the victim lost the altered statement or left the conversation.
    pub equivocations_unreached: u64,
    /// Per kind of [`REPORT_KINDS`], the detected seeds in which some device reported it.
    pub equivocation_reports: [u64; REPORT_KINDS.len()],
    /// Seeds with retention on the relay, its passes, the bodies they dropped, and the
    /// history gaps devices were told of.
    pub retention_seeds: u64,
    pub retention_passes: u64,
    pub bodies_pruned: u64,
    pub history_gaps: u64,
    /// Seeds with peer links, the sessions that ran to their end, and those cut.
    pub peer_seeds: u64,
    pub peer_sessions: u64,
    pub peer_sessions_cut: u64,
    pub converge_ms_max: u64,
    pub converge_ms_sum: u64,
    pub virtual_ms: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        sum!(
            seeds,
            steps,
            frames,
            frames_lost_to_dead_connections,
            chaos_dropped,
            chaos_duplicated,
            chaos_reordered,
            delay_spikes,
            partitions_both,
            partitions_up,
            partitions_down,
            idle_timeouts,
            connections,
            connection_kills,
            dial_failures,
            device_crashes,
            device_power_cuts,
            relay_crashes,
            relay_power_cuts,
            device_restarts,
            relay_restarts,
            clock_changes,
            offline_periods,
            sends,
            reads,
            retries,
            device_errors,
            relay_closes,
            acks,
            chain_gaps,
            forged,
            invitations_blocked,
            invitations_pending,
            poison_events,
            key_shares_refused,
            bodies_checked,
            bodies_waiting,
            removals,
            additions,
            messages_delivered_everywhere,
            equivocations_drawn,
            equivocations_staged,
            equivocations_tried,
            equivocations_detected,
            equivocations_unreached,
            retention_seeds,
            retention_passes,
            bodies_pruned,
            history_gaps,
            peer_seeds,
            peer_sessions,
            peer_sessions_cut,
            converge_ms_sum,
            virtual_ms
        );
        self.converge_ms_max = self.converge_ms_max.max(o.converge_ms_max);
        for (a, b) in self
            .equivocation_reports
            .iter_mut()
            .zip(&o.equivocation_reports)
        {
            *a += b;
        }
        for (a, b) in self.attacks.iter_mut().zip(&o.attacks) {
            a.tried += b.tried;
            a.refused += b.refused;
        }
    }

    pub(super) fn attack(&mut self, kind: Attack) -> &mut AttackCount {
        let i = Attack::ALL.iter().position(|a| *a == kind).unwrap_or(0);
        &mut self.attacks[i]
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let avg = self.converge_ms_sum / self.seeds.max(1);
        writeln!(
            f,
            "seeds {}, steps {}, virtual time {} h",
            self.seeds,
            self.steps,
            self.virtual_ms / 3_600_000
        )?;
        writeln!(
            f,
            "app: {} sends, {} reads, {} retries of FAILED, {} offline periods; {} acks emitted; \
             {} messages checked on every member device; {} chain gaps reported; \
             {} forged events submitted, all refused; {} members removed, {} users added",
            self.sends,
            self.reads,
            self.retries,
            self.offline_periods,
            self.acks,
            self.messages_delivered_everywhere,
            self.chain_gaps,
            self.forged,
            self.removals,
            self.additions
        )?;
        write!(f, "attacks (tried, refused):")?;
        for (kind, c) in Attack::ALL.iter().zip(&self.attacks) {
            match kind {
                Attack::Block => write!(f, " {} {};", c.tried, kind.name())?,
                Attack::EpochKeyPoison => write!(
                    f,
                    " {} {} in {} events ({} share refusals by devices);",
                    c.tried,
                    kind.name(),
                    self.poison_events,
                    self.key_shares_refused
                )?,
                _ => write!(f, " {} {} ({} refused);", c.tried, kind.name(), c.refused)?,
            }
        }
        writeln!(
            f,
            " {} invitations refused as blocked, {} left pending (never shown); honest bodies \
             at the end: {} read as sent, {} waiting for a key, none unreadable",
            self.invitations_blocked,
            self.invitations_pending,
            self.bodies_checked,
            self.bodies_waiting
        )?;
        write!(
            f,
            "equivocating relay: {} seeds drawn, {} staged, {} tried (the victim kept the \
             other history as a member), {} detected, {} not reached; seeds with each report:",
            self.equivocations_drawn,
            self.equivocations_staged,
            self.equivocations_tried,
            self.equivocations_detected,
            self.equivocations_unreached
        )?;
        let reports: Vec<String> = REPORT_KINDS
            .iter()
            .zip(&self.equivocation_reports)
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        writeln!(f, " {}", reports.join(", "))?;
        writeln!(
            f,
            "retention: {} seeds with a short TTL on the relay, {} passes, {} bodies dropped, \
             {} history gaps reported to devices",
            self.retention_seeds, self.retention_passes, self.bodies_pruned, self.history_gaps
        )?;
        writeln!(
            f,
            "peer links: {} seeds, {} sessions done, {} cut",
            self.peer_seeds, self.peer_sessions, self.peer_sessions_cut
        )?;
        writeln!(
            f,
            "network: {} frames, {} delay spikes, {} lost with dead connections; \
             chaos: {} dropped, {} duplicated, {} reordered",
            self.frames,
            self.delay_spikes,
            self.frames_lost_to_dead_connections,
            self.chaos_dropped,
            self.chaos_duplicated,
            self.chaos_reordered
        )?;
        writeln!(
            f,
            "connections: {} opened, {} killed, {} idle timeouts, {} dial failures, \
             {} dropped by a device error, {} closed by the relay; partitions: {} two-way, \
             {} device→relay, {} relay→device",
            self.connections,
            self.connection_kills,
            self.idle_timeouts,
            self.dial_failures,
            self.device_errors,
            self.relay_closes,
            self.partitions_both,
            self.partitions_up,
            self.partitions_down
        )?;
        writeln!(
            f,
            "crashes: {} device crashes + {} device power cuts ({} restarts), {} relay crashes \
             + {} relay power cuts ({} restarts), {} device clock changes",
            self.device_crashes,
            self.device_power_cuts,
            self.device_restarts,
            self.relay_crashes,
            self.relay_power_cuts,
            self.relay_restarts,
            self.clock_changes
        )?;
        write!(
            f,
            "convergence after the heal: max {} ms, mean {} ms (bound {} ms)",
            self.converge_ms_max, avg, HEAL_BOUND_MS
        )
    }
}
