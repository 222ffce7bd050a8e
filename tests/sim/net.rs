//! The simulated network: one QUIC-like connection per device session, and the event queue.
//!
//! A live connection is what a QUIC stream promises: frames arrive reliably and in order,
//! after a delay (datagram loss below QUIC shows up as a delay spike: the retransmission).
//! What QUIC does not hide is modelled too: connections die (a path fails, a process dies, an
//! idle timeout fires during a partition) and each side learns it at its own time, frames
//! sent before the death may still arrive (a prefix of them), frames sent after it never do;
//! a one-way partition holds frames in one direction until it heals or the idle timeout
//! kills the connection.
//!
//! Below that, a seed may turn on transport chaos: frames on a live connection dropped,
//! duplicated or delivered out of order — what a buggy transport or shell could do. A
//! connection that lost a frame is marked tainted and dies within the idle timeout, the way a
//! transport that noticed its own corruption would give up.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use tidings::engine::wire::{ClientFrame, ServerFrame};
use tidings::relay::core::store::PrunePlan;
use tidings::relay::core::SessionId;

/// QUIC idle timeout: a connection with no traffic in one direction for this long is dead.
pub const IDLE_MS: u64 = 30_000;

pub type ConnId = u64;

#[derive(Debug)]
pub struct Conn {
    pub device: usize,
    /// The device and relay incarnations the connection belongs to.
    pub device_inc: u64,
    pub relay_inc: u64,
    pub session: SessionId,
    /// Frames can still be sent.
    pub alive: bool,
    /// The device still uses it (it has not been told it died).
    pub dev_attached: bool,
    /// The relay core still has the session.
    pub relay_attached: bool,
    /// Arrival time of the last in-order frame, per direction (FIFO).
    pub up_last: u64,
    pub down_last: u64,
    /// After a death: frames arriving later than this are lost.
    pub up_cut: u64,
    pub down_cut: u64,
    /// Frames held by a one-way partition, in order.
    pub held_up: Vec<ClientFrame>,
    pub held_down: Vec<ServerFrame>,
    /// Lost a frame to transport chaos.
    pub tainted: bool,
}

impl Conn {
    pub fn new(
        device: usize,
        device_inc: u64,
        relay_inc: u64,
        session: SessionId,
        now: u64,
    ) -> Conn {
        Conn {
            device,
            device_inc,
            relay_inc,
            session,
            alive: true,
            dev_attached: true,
            relay_attached: true,
            up_last: now,
            down_last: now,
            up_cut: u64::MAX,
            down_cut: u64::MAX,
            held_up: Vec::new(),
            held_down: Vec::new(),
            tainted: false,
        }
    }
}

/// Something that happens at a point of virtual time.
#[derive(Debug)]
pub enum Ev {
    /// A frame reaches the relay.
    ToRelay {
        conn: ConnId,
        frame: ClientFrame,
    },
    /// A frame reaches the device.
    ToDevice {
        conn: ConnId,
        frame: ServerFrame,
    },
    /// The device learns that the connection died.
    DeviceTold {
        conn: ConnId,
    },
    /// The relay learns that the connection died.
    RelayTold {
        conn: ConnId,
    },
    /// A dial's handshake would complete now.
    DialDone {
        device: usize,
        inc: u64,
        dial: u64,
    },
    /// A dial gave up (handshake timeout or refused).
    DialFailed {
        device: usize,
        inc: u64,
        dial: u64,
    },
    /// The relay's shell starts a group commit of what the core staged.
    RelayCommit {
        inc: u64,
    },
    /// The write of that commit completes.
    RelayCommitDone {
        inc: u64,
        job: u64,
    },
    /// A retention pass of the relay plans what to drop.
    RelayRetention {
        inc: u64,
    },
    /// Its prune is written.
    RelayPrune {
        inc: u64,
        plans: Vec<PrunePlan>,
    },
    RelayRestart,
    DeviceRestart {
        device: usize,
    },
    /// A partition has lasted an idle timeout: its connection may die.
    IdleCheck {
        conn: ConnId,
    },
    HealPartition {
        device: usize,
        partition: u64,
    },
    /// The device's operating system reports the network back.
    BackOnline {
        device: usize,
        offline: u64,
    },
    /// The next app action or fault.
    Action,
    /// Two devices run a peer session (seeds with peer links).
    PeerSync,
    /// Faults stop; the network heals.
    Heal,
    /// Periodic work after the heal: the user retries FAILED messages; convergence check.
    HealTick,
}

/// Events ordered by time, then by insertion (deterministic ties).
#[derive(Debug, Default)]
pub struct Queue {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Ev>,
    next: u64,
}

impl Queue {
    pub fn push(&mut self, at: u64, ev: Ev) {
        let id = self.next;
        self.next += 1;
        self.heap.push(Reverse((at, id)));
        self.events.insert(id, ev);
    }

    pub fn peek_time(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    pub fn pop(&mut self) -> Option<(u64, Ev)> {
        let Reverse((t, id)) = self.heap.pop()?;
        self.events.remove(&id).map(|ev| (t, ev))
    }
}
