//! The simulated network from the simulator's side: sending frames onto connections (delay,
//! partitions, transport chaos), killing connections, idle timeouts, healing partitions.

use super::*;

/// A direction on a connection.
#[derive(Clone, Copy)]
enum Direction {
    /// Device to relay.
    Up,
    /// Relay to device.
    Down,
}

impl Sim {
    pub(super) fn delay(&mut self, dev: usize) -> u64 {
        let base = self.devices[dev].latency_ms;
        let mut d = base + self.rng.random_range(0..=base / 2 + 1);
        if !self.healing && self.rng.random_bool(self.profile.spike) {
            self.stats.delay_spikes += 1;
            d += self.rng.random_range(200..4_000);
        }
        d
    }

    pub(super) fn send_up(&mut self, conn: ConnId, frame: ClientFrame) {
        self.stats.frames += 1;
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let i = c.device;
        if !c.alive {
            self.stats.frames_lost_to_dead_connections += 1;
            return;
        }
        if matches!(self.devices[i].partition, Partition::Both | Partition::Up) {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.held_up.push(frame);
            }
            return;
        }
        let delay = self.delay(i);
        let chaos = self.chaos();
        let times = self.arrivals(conn, chaos, delay, Direction::Up);
        if let Some((last, copies)) = times.split_last() {
            for at in copies {
                let frame = frame.clone();
                self.queue.push(*at, Ev::ToRelay { conn, frame });
            }
            self.queue.push(*last, Ev::ToRelay { conn, frame });
        }
    }

    pub(super) fn send_down(&mut self, conn: ConnId, frame: ServerFrame) {
        let frame = self.equivocate(conn, frame);
        self.stats.frames += 1;
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let i = c.device;
        if !c.alive {
            self.stats.frames_lost_to_dead_connections += 1;
            return;
        }
        if matches!(self.devices[i].partition, Partition::Both | Partition::Down) {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.held_down.push(frame);
            }
            return;
        }
        let delay = self.delay(i);
        let chaos = if matches!(frame, ServerFrame::Error { .. }) {
            Chaos::None
        } else {
            self.chaos()
        };
        let times = self.arrivals(conn, chaos, delay, Direction::Down);
        if let Some((last, copies)) = times.split_last() {
            for at in copies {
                let frame = frame.clone();
                self.queue.push(*at, Ev::ToDevice { conn, frame });
            }
            self.queue.push(*last, Ev::ToDevice { conn, frame });
        }
    }

    /// When the copies of one frame on `conn` arrive, in order: none (dropped: the connection
    /// is tainted), one, or two (duplicated). In-order delivery keeps to the direction's
    /// watermark; a reordered frame ignores it.
    fn arrivals(&mut self, conn: ConnId, chaos: Chaos, delay: u64, dir: Direction) -> Vec<u64> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Vec::new();
        };
        let last = match dir {
            Direction::Up => &mut c.up_last,
            Direction::Down => &mut c.down_last,
        };
        match chaos {
            Chaos::Drop => {
                self.stats.chaos_dropped += 1;
                self.taint(conn);
                Vec::new()
            }
            Chaos::Duplicate => {
                self.stats.chaos_duplicated += 1;
                let at = (self.now + delay).max(*last);
                *last = at;
                let again = self.now + delay + self.rng.random_range(0..500);
                vec![at, again]
            }
            Chaos::Reorder => {
                self.stats.chaos_reordered += 1;
                vec![self.now + self.rng.random_range(0..=delay)]
            }
            Chaos::None => {
                let at = (self.now + delay).max(*last);
                *last = at;
                vec![at]
            }
        }
    }

    pub(super) fn chaos(&mut self) -> Chaos {
        let Some((drop, dup, reorder)) = self.profile.chaos else {
            return Chaos::None;
        };
        if self.healing {
            return Chaos::None;
        }
        let x: f64 = self.rng.random();
        if x < drop {
            Chaos::Drop
        } else if x < drop + dup {
            Chaos::Duplicate
        } else if x < drop + dup + reorder {
            Chaos::Reorder
        } else {
            Chaos::None
        }
    }

    /// A connection lost a frame below the transport: it gives up within the idle timeout.
    pub(super) fn taint(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.tainted {
            return;
        }
        c.tainted = true;
        let at = self.now + self.rng.random_range(1_000..IDLE_MS);
        self.queue.push(at, Ev::IdleCheck { conn });
    }

    /// The connection dies. Frames already sent may still arrive for a short while; each side
    /// still attached is told at the given time.
    pub(super) fn kill_conn(
        &mut self,
        conn: ConnId,
        tell_device: Option<u64>,
        tell_relay: Option<u64>,
    ) {
        let up = self.now + self.rng.random_range(0..100);
        let down = self.now + self.rng.random_range(0..100);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.alive {
            self.stats.connection_kills += 1;
        }
        c.alive = false;
        c.up_cut = c.up_cut.min(up);
        c.down_cut = c.down_cut.min(down);
        self.stats.frames_lost_to_dead_connections += (c.held_up.len() + c.held_down.len()) as u64;
        c.held_up.clear();
        c.held_down.clear();
        if let (Some(t), true) = (tell_device, c.dev_attached) {
            self.queue.push(t, Ev::DeviceTold { conn });
        }
        if let (Some(t), true) = (tell_relay, c.relay_attached) {
            self.queue.push(t, Ev::RelayTold { conn });
        }
    }

    pub(super) fn idle_check(&mut self, conn: ConnId) -> Result<(), Violation> {
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        if !c.alive {
            return Ok(());
        }
        let d = &self.devices[c.device];
        let partitioned = d.partition != Partition::None && d.partition_since + IDLE_MS <= self.now;
        if !(partitioned || c.tainted) {
            return Ok(());
        }
        self.stats.idle_timeouts += 1;
        tr!(self, "conn {conn} of {} times out", d.name);
        let a = self.now + self.rng.random_range(0..2_000);
        let b = self.now + self.rng.random_range(0..2_000);
        self.kill_conn(conn, Some(a), Some(b));
        Ok(())
    }

    pub(super) fn heal_partition(&mut self, i: usize) {
        self.devices[i].partition = Partition::None;
        tr!(self, "{} partition heals", self.devices[i].name);
        let Some(conn) = self.devices[i].conn else {
            return;
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.alive {
            return;
        }
        let up = std::mem::take(&mut c.held_up);
        let down = std::mem::take(&mut c.held_down);
        for f in up {
            self.send_up(conn, f);
        }
        for f in down {
            self.send_down(conn, f);
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Chaos {
    None,
    Drop,
    Duplicate,
    Reorder,
}
