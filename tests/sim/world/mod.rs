//! The simulated world: device cores and the relay core over the simulated network, on
//! virtual time, every random choice drawn from one seeded PRNG.
//!
//! One run: users and devices are set up, the first devices create the conversations, then
//! for a fault phase app actions (send, read, offline/online, retry) and faults (partitions,
//! connection deaths, crashes, power cuts, transport chaos) happen at random times. At the
//! heal, faults stop, crashed processes restart and the network heals; the run ends when
//! every member device holds the same view as the others, or fails if that takes longer than
//! [`HEAL_BOUND_MS`].

use crate::check::{check_final_view, check_unique, Oracle, Timeline, Violation};
use crate::disk::SimDisk;
use crate::net::{Conn, ConnId, Ev, Queue, IDLE_MS};
use crate::trace::{client_frame_name, server_frame_name, Trace};
use ed25519_dalek::SigningKey;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use tidings::engine::store::Body;
use tidings::engine::wire::{ClientFrame, Envelope, ErrorCode, ServerFrame, UserChange};
use tidings::engine::{
    ChainIssue, ConnectionState, Conversation, ConversationId, DeviceConfig, DeviceCore,
    DeviceError, DeviceEvent, DeviceKey, Event, EventId, EventKind, EventLog, MessageId,
    RetryPolicy, ServerSeq, Status, Store, StoreConfig, UserId,
};
use tidings::relay::core::{CommitJob, Output, RelayCore, RelayStore, SessionId};
use tidings::relay::Limits;

/// Virtual time at the start of every run (2026-11-18, Unix ms): device clocks skewed by
/// minutes stay far from zero.
pub const T0: u64 = 1_795_000_000_000;
/// After the heal, every member device must hold the same view within this much virtual
/// time. Worst case without faults: a dead connection is noticed within the idle timeout
/// (30 s), the reconnect backoff is at most 30 s + 20 % jitter, an outbox entry's backoff at
/// most 60 s + 20 %, and FAILED messages are retried by the user at the next one-second tick.
pub const HEAL_BOUND_MS: u64 = 180_000;
/// A run that takes more steps than this is stuck in a loop.
const MAX_STEPS: u64 = 2_000_000;
/// The user retries FAILED messages and convergence is checked this often after the heal.
const HEAL_TICK_MS: u64 = 1_000;
/// Every this many steps, every device's view is checked, not only those that changed.
const FULL_CHECK_EVERY: u64 = 256;

/// Why a run failed: the seed, where, and the last trace lines.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub step: u64,
    pub time_ms: u64,
    pub message: String,
    pub tail: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "simulation seed {} failed at step {} (t = {}.{:03} s): {}",
            self.seed,
            self.step,
            self.time_ms / 1000,
            self.time_ms % 1000,
            self.message
        )?;
        writeln!(
            f,
            "rerun with: SEED={} cargo test --test sim -- --nocapture",
            self.seed
        )?;
        writeln!(f, "last {} trace lines:", self.tail.len())?;
        for l in &self.tail {
            writeln!(f, "  {l}")?;
        }
        Ok(())
    }
}

/// Counts of what a run did, summed over seeds for the report.
struct User {
    key: SigningKey,
    id: UserId,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Partition {
    None,
    Both,
    /// Device → relay blocked.
    Up,
    /// Relay → device blocked.
    Down,
}

struct Device {
    name: String,
    user: usize,
    key: DeviceKey,
    config: DeviceConfig,
    disk: SimDisk,
    core: Option<DeviceCore>,
    /// Bumped by every crash: events of a dead incarnation are ignored.
    inc: u64,
    skew_ms: i64,
    /// One-way latency of the device's path (ms).
    latency_ms: u64,
    os_online: bool,
    offline_id: u64,
    conn: Option<ConnId>,
    dialing: Option<u64>,
    partition: Partition,
    partition_id: u64,
    partition_since: u64,
    /// When the device wants `handle_timeout` (virtual ms).
    wake: Option<u64>,
    /// Its view changed since the last check.
    dirty: bool,
}

impl Device {
    fn dev_now(&self, now: u64) -> u64 {
        now.saturating_add_signed(self.skew_ms)
    }
}

struct Relay {
    key: DeviceKey,
    limits: Limits,
    disk: SimDisk,
    core: Option<RelayCore>,
    inc: u64,
    commit_pending: bool,
    sessions: HashMap<SessionId, ConnId>,
    /// Highest sequence per conversation after the last successful commit.
    committed_heads: BTreeMap<ConversationId, u64>,
    /// The group commit being written.
    job: Option<CommitInFlight>,
    next_job: u64,
}

struct CommitInFlight {
    id: u64,
    job: CommitJob,
    /// The write's outcome, once it was written.
    written: Option<Result<(), tidings::relay::core::StoreError>>,
}

struct ConvSpec {
    id: ConversationId,
    /// Every user that was ever a member, or is being added (indexes into `Sim::users`); the
    /// `Create` lists the first ones. Who is a member at the end is read from the relay's
    /// store (see `check::Timeline`).
    ever: Vec<usize>,
    /// Users never to be added: they forged a message into it as non-members, and that
    /// forgery must stay refused.
    no_add: Vec<usize>,
    /// The user whose first device creates it, and changes its membership.
    creator: usize,
    /// The admin's latest membership change (see `Sim::app_membership`).
    last_change: Option<EventId>,
    /// The users the `Create` lists.
    initial: Vec<usize>,
}

impl ConvSpec {
    fn new(id: ConversationId, members: Vec<usize>, creator: usize) -> ConvSpec {
        ConvSpec {
            id,
            initial: members.clone(),
            ever: members,
            no_add: Vec::new(),
            creator,
            last_change: None,
        }
    }
}

/// The result of a passing run.
#[derive(Debug)]
pub struct Report {
    pub trace_hash: String,
    pub stats: Stats,
}

pub struct Sim {
    seed: u64,
    rng: SmallRng,
    now: u64,
    step: u64,
    queue: Queue,
    profile: Profile,
    users: Vec<User>,
    devices: Vec<Device>,
    convs: Vec<ConvSpec>,
    relay: Relay,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: ConnId,
    next_dial: u64,
    oracle: Oracle,
    pub trace: Trace,
    stats: Stats,
    healing: bool,
    heal_start: u64,
    done: bool,
    n_messages: u64,
    /// Events adversarial devices submitted (see `Sim::forge`).
    forged: Vec<Event>,
    /// Adversarial requests and what they left (see `attacks`).
    attacks: AttackLog,
    /// The body of every message whose `send` returned Ok.
    bodies: HashMap<MessageId, Vec<u8>>,
    /// The relay's lie to one device, in the seeds that stage one (see `equivocation`).
    equivocation: Option<Equivocation>,
    /// Peer links, in the seeds that have them (see `peers`).
    peers: Option<SimPeers>,
}

macro_rules! tr {
    ($sim:expr, $($arg:tt)*) => {
        $sim.trace.line($sim.step, $sim.now - T0, format_args!($($arg)*))
    };
}

fn fail<T>(msg: impl Into<String>) -> Result<T, Violation> {
    Err(msg.into())
}

mod actions;
mod attacks;
mod device;
mod end;
mod equivocation;
mod network;
mod peers;
mod relay;
mod retention;
mod stats;

use actions::Profile;
use attacks::{AttackLog, ADVERSARY_REQUESTS};
use equivocation::Equivocation;
use peers::SimPeers;
use retention::SimRetention;
pub use stats::Stats;

impl Sim {
    pub fn new(seed: u64, verbose: bool) -> Result<Sim, Violation> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let profile = Profile::draw(&mut rng);
        let n_users = if profile.third_user { 3 } else { 2 };
        let users: Vec<User> = (0..n_users)
            .map(|u| {
                let key = SigningKey::from_bytes(&[u as u8 + 1; 32]);
                let id = UserId(key.verifying_key().to_bytes());
                User { key, id }
            })
            .collect();
        let relay_seed = [0xEE; 32];
        let relay_key = DeviceKey::from_seed(relay_seed, UserId([0; 32]));
        let relay_key = DeviceKey::from_seed(relay_seed, UserId(relay_key.device().0));
        let limits = Limits {
            ack_sign_threads: 1,
            max_page_items: [4, 32, 1024][rng.random_range(0..3)],
            max_submit_batch: [2, 16, 256][rng.random_range(0..3)],
            ..Limits::default()
        }
        .with_push_window([4, 64, 4096][rng.random_range(0..3)]);
        let mut devices = Vec::new();
        let per_user = [2usize, 2, 1];
        for (u, user) in users.iter().enumerate() {
            for d in 0..per_user[u] {
                let key = DeviceKey::from_seed([(16 * (u + 1) + d) as u8; 32], user.id);
                let registration = key.certificate(&user.key, 0);
                let config = DeviceConfig {
                    retry: RetryPolicy {
                        base_ms: [500, 1_000][rng.random_range(0..2)],
                        max_attempts: [3, 5, 10][rng.random_range(0..3)],
                        ..RetryPolicy::default()
                    },
                    ack_timeout_ms: [3_000, 10_000][rng.random_range(0..2)],
                    registration: Some(registration),
                    ..DeviceConfig::default()
                };
                devices.push(Device {
                    name: format!("{}{d}", (b'a' + u as u8) as char),
                    user: u,
                    key,
                    config,
                    disk: SimDisk::new(),
                    core: None,
                    inc: 0,
                    skew_ms: rng.random_range(-300_000..=300_000),
                    latency_ms: rng.random_range(5..120),
                    os_online: true,
                    offline_id: 0,
                    conn: None,
                    dialing: None,
                    partition: Partition::None,
                    partition_id: 0,
                    partition_since: 0,
                    wake: None,
                    dirty: false,
                });
            }
        }
        let mut convs = vec![ConvSpec::new(ConversationId([0xC0; 16]), vec![0, 1], 0)];
        if profile.two_convs {
            // A group of everyone, created by the last user (B, or C when there is one).
            convs.push(ConvSpec::new(
                ConversationId([0xC1; 16]),
                (0..n_users).collect(),
                n_users - 1,
            ));
        }
        let n_devices = devices.len();
        let device_users: Vec<UserId> = devices.iter().map(|d| users[d.user].id).collect();
        let attacks = AttackLog {
            flood_devices: vec![0; users.len()],
            flood_registered: vec![0; users.len()],
            agreement: devices.iter().map(|d| d.key.agreement_public().0).collect(),
            registered: vec![false; n_devices],
            rogues: (0..users.len())
                .map(|_| attacks::Rogue::default())
                .collect(),
            ..AttackLog::default()
        };
        let mut sim = Sim {
            seed,
            rng,
            now: T0,
            step: 0,
            queue: Queue::default(),
            profile,
            users,
            devices,
            convs,
            relay: Relay {
                key: relay_key,
                limits,
                disk: SimDisk::new(),
                core: None,
                inc: 0,
                commit_pending: false,
                sessions: HashMap::new(),
                committed_heads: BTreeMap::new(),
                job: None,
                next_job: 1,
            },
            conns: BTreeMap::new(),
            next_conn: 1,
            next_dial: 1,
            oracle: Oracle::new(device_users),
            trace: Trace::new(verbose),
            stats: Stats::default(),
            healing: false,
            heal_start: 0,
            done: false,
            n_messages: 0,
            forged: Vec::new(),
            attacks,
            bodies: HashMap::new(),
            equivocation: None,
            peers: None,
        };
        sim.equivocation = Equivocation::draw(seed, n_devices, &mut sim.stats);
        sim.profile.retention = SimRetention::draw(seed, sim.equivocation.is_some());
        sim.stats.retention_seeds = u64::from(sim.profile.retention.is_some());
        sim.peers = SimPeers::draw(seed, sim.equivocation.is_some());
        sim.stats.peer_seeds = u64::from(sim.peers.is_some());
        tr!(sim, "seed {seed}: {:?}", sim.profile);
        Ok(sim)
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.now - T0
    }

    /// Runs the seed to the end.
    pub fn run(&mut self) -> Result<Report, Violation> {
        self.start()?;
        while !self.done {
            self.step += 1;
            if self.step > MAX_STEPS {
                return fail(format!("no end after {MAX_STEPS} steps"));
            }
            let tq = self.queue.peek_time();
            let td = self
                .devices
                .iter()
                .enumerate()
                .filter_map(|(i, d)| d.wake.map(|t| (t, i)))
                .min();
            match (tq, td) {
                (None, Some((d, i))) => self.device_timer(i, d)?,
                (Some(q), Some((d, i))) if d < q => self.device_timer(i, d)?,
                (Some(_), _) => {
                    let (t, ev) = self.queue.pop().ok_or("queue emptied")?;
                    self.now = self.now.max(t);
                    self.handle(ev)?;
                }
                (None, None) => return fail("nothing left to happen before convergence"),
            }
            self.check_dirty()?;
        }
        self.finish()
    }

    fn start(&mut self) -> Result<(), Violation> {
        self.relay_restart()?;
        for i in 0..self.devices.len() {
            self.device_restart(i)?;
        }
        for c in 0..self.convs.len() {
            let (id, creator) = (self.convs[c].id, self.convs[c].creator);
            let creator = self.devices.iter().position(|d| d.user == creator);
            let Some(dev) = creator else { continue };
            let members: Vec<UserId> = self.convs[c]
                .ever
                .iter()
                .map(|u| self.users[*u].id)
                .collect();
            let now = self.devices[dev].dev_now(self.now);
            tr!(self, "{} creates {id}", self.devices[dev].name);
            let r = self.core(dev)?.create_conversation(id, members, now);
            self.after_app_call(dev, r, "create_conversation")?;
        }
        let first = self.next_action_gap();
        self.queue.push(self.now + first, Ev::Action);
        self.schedule_peer_sync();
        self.queue.push(self.now + self.profile.fault_ms, Ev::Heal);
        Ok(())
    }

    fn core(&mut self, i: usize) -> Result<&mut DeviceCore, Violation> {
        let name = &self.devices[i].name;
        let msg = format!("device {name} is down");
        self.devices[i].core.as_mut().ok_or(msg)
    }

    /// What device `i` shows of conversation `id`.
    fn shown(&mut self, i: usize, id: ConversationId) -> Result<&Conversation, Violation> {
        let name = self.devices[i].name.clone();
        self.core(i)?
            .store_mut()
            .conversation(id)
            .map_err(|e| format!("{name}: {e}"))
    }

    fn next_action_gap(&mut self) -> u64 {
        // Exponential inter-arrival times.
        let u: f64 = self.rng.random_range(1e-6..1.0);
        ((-u.ln()) * self.profile.action_mean_ms as f64) as u64 + 1
    }

    // ---- events ----

    fn handle(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::ToRelay { conn, frame } => self.deliver_to_relay(conn, frame),
            Ev::ToDevice { conn, frame } => self.deliver_to_device(conn, frame),
            Ev::DeviceTold { conn } => self.device_told(conn),
            Ev::RelayTold { conn } => self.relay_told(conn),
            Ev::DialDone { device, inc, dial } => self.dial_done(device, inc, dial),
            Ev::DialFailed { device, inc, dial } => self.dial_failed(device, inc, dial),
            Ev::RelayCommit { inc } => self.relay_commit(inc),
            Ev::RelayCommitDone { inc, job } => self.relay_commit_done(inc, job),
            Ev::RelayRetention { inc } => self.relay_retention(inc),
            Ev::RelayPrune { inc, plans } => self.relay_prune(inc, plans),
            Ev::RelayRestart => {
                if self.relay.core.is_none() {
                    self.relay_restart()?;
                }
                Ok(())
            }
            Ev::DeviceRestart { device } => {
                if self.devices[device].core.is_none() {
                    self.device_restart(device)?;
                }
                Ok(())
            }
            Ev::IdleCheck { conn } => self.idle_check(conn),
            Ev::HealPartition { device, partition } => {
                if self.devices[device].partition_id == partition {
                    self.heal_partition(device);
                }
                Ok(())
            }
            Ev::BackOnline { device, offline } => {
                if self.devices[device].offline_id == offline && !self.devices[device].os_online {
                    self.set_os_online(device, true)?;
                }
                Ok(())
            }
            Ev::Action => {
                if !self.healing {
                    self.action()?;
                    let gap = self.next_action_gap();
                    self.queue.push(self.now + gap, Ev::Action);
                }
                Ok(())
            }
            Ev::PeerSync => self.peer_sync(),
            Ev::Heal => self.heal(),
            Ev::HealTick => self.heal_tick(),
        }
    }
}
