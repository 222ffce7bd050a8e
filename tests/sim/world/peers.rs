//! **On by default** in one seed of three; `SIM_PEERS=0` turns them off (every seed then runs
//! exactly as it did before peer links existed).
//!
//! Peer links, in the seeds that turn them on: now and then two devices that are up and on a
//! network (a shared Wi-Fi: a partition from the relay does not stop them) run a peer
//! session ([`PeerSession`], the protocol the replica's peer link carries), each frame handed
//! to the other core at once; a session may be cut after a few frames (a link dropped), and a
//! power cut may strike either side's disk during it. Everything a peer brings goes through
//! the same admission as the relay's pages, so every invariant of the simulator holds with
//! peers on, unchanged: convergence, no duplicates, statuses that never go back, nothing shown
//! that disappears, privacy.

use super::*;
use tidings::engine::peer::{PeerError, PeerSession};

/// The random stream of peer links, apart from the main one (seeds without peers run exactly
/// as before).
const STREAM: u64 = 0x7065_6572_5f6c_696e;
/// One seed in this many runs with peer links.
const ONE_SEED_IN: u32 = 3;
/// Most frames one session may move (a session that does not end is a violation).
const MAX_SESSION_FRAMES: u32 = 10_000;

/// A seed's peer links: how often a session starts, and how often one is cut.
#[derive(Debug)]
pub(super) struct SimPeers {
    /// Mean virtual ms between two sessions.
    pub(super) mean_gap_ms: u64,
    /// Chance that a session is cut after a few frames.
    pub(super) cut: f64,
    rng: SmallRng,
}

impl SimPeers {
    /// Peer links for `seed`, or none (never with an equivocating relay, whose victim's
    /// altered statement would travel to others over the links).
    pub(super) fn draw(seed: u64, equivocation: bool) -> Option<SimPeers> {
        if std::env::var_os("SIM_PEERS").is_some_and(|v| v == "0") {
            return None;
        }
        let mut rng = SmallRng::seed_from_u64(seed ^ STREAM);
        if equivocation || !rng.random_ratio(1, ONE_SEED_IN) {
            return None;
        }
        Some(SimPeers {
            mean_gap_ms: [1_000, 4_000, 10_000][rng.random_range(0..3)],
            cut: [0.0, 0.2, 0.5][rng.random_range(0..3)],
            rng,
        })
    }
}

/// How a session between two cores ended.
enum Ended {
    /// Both sides said Done.
    Done,
    /// The link was cut after this many frames.
    Cut(u32),
    /// A side refused the other from the start (it cannot place it).
    NotAdmitted,
    /// A side failed: (which side, the error).
    Failed(usize, PeerError),
}

impl Sim {
    /// Schedules the next peer session, if this seed has peer links.
    pub(super) fn schedule_peer_sync(&mut self) {
        let Some(p) = self.peers.as_mut() else {
            return;
        };
        let u: f64 = p.rng.random_range(1e-6..1.0);
        let gap = ((-u.ln()) * p.mean_gap_ms as f64) as u64 + 1;
        self.queue.push(self.now + gap, Ev::PeerSync);
    }

    /// Two devices that are up and online run a peer session.
    pub(super) fn peer_sync(&mut self) -> Result<(), Violation> {
        self.schedule_peer_sync();
        let up: Vec<usize> = (0..self.devices.len())
            .filter(|&i| self.devices[i].core.is_some() && self.devices[i].os_online)
            .collect();
        let Some(p) = self.peers.as_mut() else {
            return Ok(());
        };
        if up.len() < 2 {
            return Ok(());
        }
        let a = up[p.rng.random_range(0..up.len())];
        let others: Vec<usize> = up.iter().copied().filter(|&i| i != a).collect();
        let b = others[p.rng.random_range(0..others.len())];
        let cut_after = p
            .rng
            .random_bool(p.cut)
            .then(|| p.rng.random_range(1..12u32));
        let (ca, cb) = (self.devices[a].core.take(), self.devices[b].core.take());
        let (Some(mut ca), Some(mut cb)) = (ca, cb) else {
            return fail("a device went down while picked for a peer session");
        };
        let (now_a, now_b) = (
            self.devices[a].dev_now(self.now),
            self.devices[b].dev_now(self.now),
        );
        let ended = run_session(&mut ca, &mut cb, now_a, now_b, cut_after);
        self.devices[a].core = Some(ca);
        self.devices[b].core = Some(cb);
        let (na, nb) = (self.devices[a].name.clone(), self.devices[b].name.clone());
        match ended {
            Ended::Done => {
                self.stats.peer_sessions += 1;
                tr!(self, "peer session {na} ↔ {nb} done");
            }
            Ended::Cut(n) => {
                self.stats.peer_sessions_cut += 1;
                tr!(self, "peer session {na} ↔ {nb} CUT after {n} frames");
            }
            Ended::NotAdmitted => {
                tr!(self, "peer session {na} ↔ {nb} not admitted");
                return Ok(());
            }
            Ended::Failed(side, e) => {
                let i = [a, b][side];
                let name = &self.devices[i].name;
                tr!(self, "peer session {na} ↔ {nb}: {name} failed: {e}");
                if !self.devices[i].disk.is_dead() {
                    return fail(format!(
                        "{name} failed in a peer session with an honest peer, without a disk \
                         fault: {e}"
                    ));
                }
                self.stats.device_power_cuts += 1;
                self.crash_device(i)?;
            }
        }
        for i in [a, b] {
            if self.devices[i].core.is_some() {
                self.after_app_call(i, Ok(()), "peer session")?;
            }
        }
        Ok(())
    }
}

impl Ended {
    /// A failure blamed on side `side` (the receiving one of a hand-over).
    fn map_side(self, side: usize) -> Ended {
        match self {
            Ended::Failed(_, e) => Ended::Failed(side, e),
            other => other,
        }
    }
}

/// Hands every frame `from` queued to `to` (on `core`), counting them in `moved`; stops with
/// `Cut` at `cut_after` frames, or with the receiver's failure. Whether any frame moved.
fn hand_over(
    from: &mut PeerSession,
    to: &mut PeerSession,
    core: &mut DeviceCore,
    now: u64,
    cut_after: Option<u32>,
    moved: &mut u32,
) -> Result<bool, Ended> {
    let mut any = false;
    while let Some(f) = from.poll_transmit() {
        if cut_after.is_some_and(|c| *moved >= c) {
            return Err(Ended::Cut(*moved));
        }
        *moved += 1;
        any = true;
        to.handle_frame(core, f, now)
            .map_err(|e| Ended::Failed(0, e))?;
    }
    Ok(any)
}

/// Runs one session between `a` and `b`, frames handed over at once, cut after `cut_after`
/// frames if set.
fn run_session(
    a: &mut DeviceCore,
    b: &mut DeviceCore,
    now_a: u64,
    now_b: u64,
    cut_after: Option<u32>,
) -> Ended {
    let (ida, idb) = (a.store().key().device(), b.store().key().device());
    let mut sa = match PeerSession::new(a, idb) {
        Ok(s) => s,
        Err(PeerError::NotAdmitted(_)) => return Ended::NotAdmitted,
        Err(e) => return Ended::Failed(0, e),
    };
    let mut sb = match PeerSession::new(b, ida) {
        Ok(s) => s,
        Err(PeerError::NotAdmitted(_)) => return Ended::NotAdmitted,
        Err(e) => return Ended::Failed(1, e),
    };
    let mut moved = 0u32;
    loop {
        let a_to_b =
            hand_over(&mut sa, &mut sb, b, now_b, cut_after, &mut moved).map_err(|e| e.map_side(1));
        let b_to_a = match a_to_b {
            Ok(any) => hand_over(&mut sb, &mut sa, a, now_a, cut_after, &mut moved)
                .map_err(|e| e.map_side(0))
                .map(|other| any || other),
            Err(end) => return end,
        };
        match b_to_a {
            Ok(true) if moved <= MAX_SESSION_FRAMES => {}
            Ok(_) => break,
            Err(end) => return end,
        }
    }
    if sa.is_done() && sb.is_done() {
        Ended::Done
    } else {
        Ended::Failed(
            0,
            PeerError::Unexpected("the session stopped before both sides were done"),
        )
    }
}
