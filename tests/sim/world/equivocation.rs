//! An equivocating relay (issue #13, "Correctness stays proven"): in some seeds the relay
//! shows one victim device another history of one conversation than every other device sees.
//!
//! The relay's shell takes one `Push` or `Page` on the victim's connection whose statement
//! places two `Send`s side by side, swaps their places, signs the altered statement with the
//! relay's own key (a misbehaving relay holds it) and sends that frame instead. The victim
//! verifies the signature and keeps the altered statement. Its view of that conversation now
//! legitimately differs from the others' (two messages trade sequences), so exactly that
//! (device, conversation) is exempt from the equality checks: the oracle's "every seq shown is
//! the one acked" and the convergence comparison between views. Everything else is checked as
//! in every seed.
//!
//! The statement chain must give it away. At the heal an honest member device sends one more
//! message into the conversation, so a later statement (naming the honest one as `prev`) is
//! sequenced and reaches the victim (`ChainIssue::BrokenLink` there), and receipts carry each
//! device's head to the others (`ChainIssue::HeadMismatch`). The run fails unless some device
//! reported a `HeadMismatch`, `Equivocation`, `Fork` or `BrokenLink` of the relay's chain in
//! that conversation, whenever the victim still holds the altered statement at the end and is
//! still a member (otherwise the history it was shown is gone, and the seed is counted as not
//! reached, not as tried).

use super::*;
use std::collections::HashSet;
use tidings::engine::{SeqEntry, ServerSeq};

/// One seed in this many stages an equivocation.
const ONE_SEED_IN: u32 = 4;
/// The relay lets up to this many eligible frames to the victim pass before it lies.
const MAX_SKIPPED_FRAMES: u32 = 1;
/// Mixed into the seed for the equivocation's own random stream: the other seeds' schedules
/// stay what they were.
const STREAM: u64 = 0x6571_7569_766f_6361;

/// The chain issues that give an equivocation away, as the counts name them.
pub(super) const REPORT_KINDS: [&str; 4] = ["head mismatch", "equivocation", "fork", "broken link"];

/// The plan and what came of it.
pub(super) struct Equivocation {
    victim: usize,
    /// Eligible frames still to let pass.
    skip: u32,
    staged: Option<Staged>,
    /// The honest follow-up message was sent (at the heal).
    followed_up: bool,
    /// Chain issues naming the conversation, as the devices reported them: (device, kind).
    reports: Vec<(String, &'static str)>,
}

/// The lie told.
struct Staged {
    conversation: ConversationId,
    /// The statement the relay signed for everyone.
    honest: EventId,
    /// The one the victim was shown instead.
    forged: EventId,
    /// The sequences whose events were swapped.
    seqs: (ServerSeq, ServerSeq),
}

/// How a seed's equivocation ended, for the counts.
pub(super) enum Outcome {
    /// Not staged in this seed, or no eligible frame came.
    None,
    /// The victim lost the altered statement (crash before it was durable, or it was removed
    /// from the conversation): nothing left to detect.
    Unreached,
    /// Staged, held by the victim at the end, and reported.
    Detected,
}

impl Equivocation {
    /// Whether seed `seed` stages an equivocation, and against which device.
    pub(super) fn draw(seed: u64, n_devices: usize, stats: &mut Stats) -> Option<Equivocation> {
        let mut rng = SmallRng::seed_from_u64(seed ^ STREAM);
        if !rng.random_ratio(1, ONE_SEED_IN) {
            return None;
        }
        stats.equivocations_drawn += 1;
        Some(Equivocation {
            victim: rng.random_range(0..n_devices),
            skip: rng.random_range(0..=MAX_SKIPPED_FRAMES),
            staged: None,
            followed_up: false,
            reports: Vec::new(),
        })
    }

    /// The (device, conversation) whose view legitimately differs, once the lie was told.
    pub(super) fn exempt(&self) -> Option<(usize, ConversationId)> {
        self.staged.as_ref().map(|s| (self.victim, s.conversation))
    }
}

impl Sim {
    /// The relay's shell may lie to the victim with this frame: returns what it sends.
    pub(super) fn equivocate(&mut self, conn: ConnId, frame: ServerFrame) -> ServerFrame {
        let Some(eq) = self.equivocation.as_ref() else {
            return frame;
        };
        let to_victim = self.conns.get(&conn).is_some_and(|c| c.device == eq.victim);
        if eq.staged.is_some() || self.healing || !to_victim {
            return frame;
        }
        match frame {
            ServerFrame::Push { events, records } => {
                let (events, records) = self.alter(events, records);
                ServerFrame::Push { events, records }
            }
            ServerFrame::Page {
                request_id,
                conversation,
                events,
                records,
                more,
            } => {
                let (events, records) = self.alter(events, records);
                ServerFrame::Page {
                    request_id,
                    conversation,
                    events,
                    records,
                    more,
                }
            }
            other => other,
        }
    }

    /// The frame's items, with one statement altered when one is eligible (two `Send`s side
    /// by side in one of the simulated conversations) and the relay has let enough eligible
    /// frames pass.
    fn alter(
        &mut self,
        mut events: Vec<Envelope>,
        mut records: Vec<Envelope>,
    ) -> (Vec<Envelope>, Vec<Envelope>) {
        // Messages and receipts of the frame: trading their places moves no event across a
        // membership change, so every device's checks still admit them where they land.
        let movable: HashSet<EventId> = events
            .iter()
            .filter_map(|e| Event::decode_trusted(&e.0).ok())
            .filter(|e| {
                matches!(
                    e.kind(),
                    EventKind::Send { .. } | EventKind::Delivered { .. } | EventKind::Read { .. }
                )
            })
            .map(|e| e.id())
            .collect();
        let found = records.iter().enumerate().find_map(|(idx, r)| {
            let st = Event::decode_trusted(&r.0).ok()?;
            if !self.convs.iter().any(|c| c.id == st.conversation()) {
                return None;
            }
            let EventKind::Sequenced { entries } = st.kind() else {
                return None;
            };
            let at = entries
                .windows(2)
                .position(|w| movable.contains(&w[0].event) && movable.contains(&w[1].event))?;
            Some((idx, entries.clone(), st, at))
        });
        let (Some((idx, entries, statement, at)), Some(eq)) = (found, self.equivocation.as_mut())
        else {
            return (events, records);
        };
        if eq.skip > 0 {
            eq.skip -= 1;
            return (events, records);
        }
        // The places trade events; the server stamps stay where they were (they never
        // decrease along a conversation).
        let (a, b) = (entries[at], entries[at + 1]);
        let mut swapped = entries.clone();
        swapped[at] = SeqEntry {
            server_ts_ms: a.server_ts_ms,
            ..b
        };
        swapped[at + 1] = SeqEntry {
            server_ts_ms: b.server_ts_ms,
            ..a
        };
        let header = statement.header().clone();
        let first = header.counter;
        let kind = EventKind::Sequenced { entries: swapped };
        let Ok(forged) = Event::sign(self.relay.key.signing_key(), header, kind) else {
            // Same size as the statement the relay signed: cannot be over a limit.
            return (events, records);
        };
        let conversation = statement.conversation();
        let seqs = (first + at as u64, first + at as u64 + 1);
        let victim = eq.victim;
        eq.staged = Some(Staged {
            conversation,
            honest: statement.id(),
            forged: forged.id(),
            seqs,
        });
        self.stats.equivocations_staged += 1;
        tr!(
            self,
            "relay EQUIVOCATES to {}: statement {} of {conversation} re-signed as {} with \
             seqs {} and {} swapped",
            self.devices[victim].name,
            statement.id(),
            forged.id(),
            seqs.0,
            seqs.1
        );
        records[idx] = Envelope(forged.into_bytes());
        // The frame's events in the order the altered statement gives them.
        let pos = |events: &[Envelope], id: EventId| {
            events
                .iter()
                .position(|e| Event::decode_trusted(&e.0).is_ok_and(|e| e.id() == id))
        };
        let x = pos(&events, a.event);
        let y = pos(&events, b.event);
        if let (Some(x), Some(y)) = (x, y) {
            events.swap(x, y);
        }
        (events, records)
    }

    /// A chain issue a device reported: true when it is the staged equivocation's (recorded),
    /// false when it must be judged as a report among honest parties.
    pub(super) fn equivocation_report(&mut self, i: usize, issue: &ChainIssue) -> bool {
        let relay = self.relay.key.device();
        let Some(eq) = self.equivocation.as_mut() else {
            return false;
        };
        let Some(staged) = eq.staged.as_ref() else {
            return false;
        };
        let kind = match issue {
            ChainIssue::HeadMismatch { conversation, .. }
            | ChainIssue::Equivocation { conversation, .. }
                if *conversation == staged.conversation =>
            {
                match issue {
                    ChainIssue::HeadMismatch { .. } => "head mismatch",
                    _ => "equivocation",
                }
            }
            ChainIssue::Fork {
                conversation,
                author,
                ..
            } if *conversation == staged.conversation && *author == relay => "fork",
            ChainIssue::BrokenLink {
                conversation,
                author,
                ..
            } if *conversation == staged.conversation && *author == relay => "broken link",
            _ => return false,
        };
        let name = self.devices[i].name.clone();
        tr!(self, "{name} reports the relay's {kind} in its chain");
        if let Some(eq) = self.equivocation.as_mut() {
            eq.reports.push((name, kind));
        }
        true
    }

    /// At the heal: an honest member device (not the victim) sends one more message into the
    /// conversation, so a statement after the altered one is sequenced and reaches everyone.
    pub(super) fn equivocation_follow_up(&mut self) -> Result<(), Violation> {
        let Some(eq) = self.equivocation.as_ref() else {
            return Ok(());
        };
        let (Some(staged), false) = (eq.staged.as_ref(), eq.followed_up) else {
            return Ok(());
        };
        let (victim, conv) = (eq.victim, staged.conversation);
        let line = self.timelines()?.remove(&conv).unwrap_or_default();
        for i in 0..self.devices.len() {
            let user = self.users[self.devices[i].user].id;
            if i == victim || !line.current.contains(&user) || self.devices[i].core.is_none() {
                continue;
            }
            if !self.known_convs(i)?.contains(&conv) {
                continue;
            }
            if let Some(eq) = self.equivocation.as_mut() {
                eq.followed_up = true;
            }
            return self.app_send_in(i, conv);
        }
        Ok(())
    }

    /// At the end: the victim still holds the altered statement as a member, so some device
    /// must have reported the lie.
    pub(super) fn check_equivocation(&mut self) -> Result<(), Violation> {
        let outcome = self.equivocation_outcome()?;
        match outcome {
            Outcome::None => {}
            Outcome::Unreached => self.stats.equivocations_unreached += 1,
            Outcome::Detected => {
                self.stats.equivocations_tried += 1;
                self.stats.equivocations_detected += 1;
            }
        }
        Ok(())
    }

    fn equivocation_outcome(&mut self) -> Result<Outcome, Violation> {
        let Some(eq) = self.equivocation.as_ref() else {
            return Ok(Outcome::None);
        };
        let Some(staged) = eq.staged.as_ref() else {
            return Ok(Outcome::None);
        };
        let (victim, conv, forged) = (eq.victim, staged.conversation, staged.forged);
        let user = self.users[self.devices[victim].user].id;
        let member = self
            .timelines()?
            .get(&conv)
            .is_some_and(|t| t.current.contains(&user));
        let name = self.devices[victim].name.clone();
        let held = self
            .core(victim)?
            .store()
            .log()
            .contains(&forged)
            .map_err(|e| format!("{name}: {e}"))?;
        if !(held && member) {
            return Ok(Outcome::Unreached);
        }
        let eq = self.equivocation.as_ref().ok_or("equivocation vanished")?;
        let staged = eq.staged.as_ref().ok_or("equivocation vanished")?;
        if eq.reports.is_empty() {
            return fail(format!(
                "the relay showed {name} statement {forged} of {conv} (seqs {} and {} swapped) \
                 instead of {}, and no device reported it",
                staged.seqs.0, staged.seqs.1, staged.honest
            ));
        }
        for (n, kind) in self.stats.equivocation_reports.iter_mut().zip(REPORT_KINDS) {
            if eq.reports.iter().any(|(_, k)| *k == kind) {
                *n += 1;
            }
        }
        Ok(Outcome::Detected)
    }
}
