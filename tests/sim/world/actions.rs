//! What happens during the fault phase: app actions and faults, at random times, in
//! proportions drawn per seed.

use super::*;

/// What a seed turns on, and how much.
#[derive(Debug, Clone)]
pub(super) struct Profile {
    pub(super) fault_ms: u64,
    pub(super) action_mean_ms: u64,
    pub(super) third_user: bool,
    pub(super) two_convs: bool,
    /// Transport chaos below QUIC: (drop, duplicate, reorder) probabilities per frame.
    pub(super) chaos: Option<(f64, f64, f64)>,
    pub(super) spike: f64,
    /// The adversary may flood the directory (a few seeds: the flood is costly to verify).
    pub(super) registration_flood: bool,
    /// Weights of [`Action`]s.
    pub(super) weights: Vec<(Action, u32)>,
    /// Retention on the relay (drawn apart: see `retention`).
    pub(super) retention: Option<super::SimRetention>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Send,
    Read,
    Offline,
    Retry,
    Partition,
    KillConn,
    DeviceCrash,
    DevicePowerCut,
    RelayCrash,
    RelayPowerCut,
    /// A device turns adversary for one frame: it submits an event the rules forbid.
    Forge,
    /// The conversation's admin removes a member, or adds a user (back).
    Membership,
    /// A device's shell turns adversary for one request (see `attacks`).
    Attack,
}

impl Profile {
    pub(super) fn draw(rng: &mut SmallRng) -> Profile {
        let intensity = [0u32, 1, 2, 4][rng.random_range(0..4)];
        let crashes = [0u32, 1, 2][rng.random_range(0..3)];
        let chaos = rng.random_bool(0.4).then(|| {
            (
                rng.random_range(0.0..0.05),
                rng.random_range(0.0..0.05),
                rng.random_range(0.0..0.08),
            )
        });
        Profile {
            fault_ms: rng.random_range(15_000..75_000),
            action_mean_ms: rng.random_range(800..2_500),
            third_user: rng.random_bool(0.5),
            two_convs: rng.random_bool(0.7),
            chaos,
            spike: rng.random_range(0.0..0.05),
            registration_flood: rng.random_bool(1.0 / 8.0),
            weights: vec![
                (Action::Send, 30),
                (Action::Read, 8),
                (Action::Offline, 2 * intensity),
                (Action::Retry, 4),
                (Action::Partition, 3 * intensity),
                (Action::KillConn, 2 * intensity),
                (Action::DeviceCrash, 2 * crashes),
                (Action::DevicePowerCut, 2 * crashes),
                (Action::RelayCrash, crashes),
                (Action::RelayPowerCut, crashes),
                (Action::Forge, [0u32, 0, 2, 4][rng.random_range(0..4)]),
                (Action::Membership, [0u32, 0, 1, 3][rng.random_range(0..4)]),
                (Action::Attack, [0u32, 2, 4, 6][rng.random_range(0..4)]),
            ],
            retention: None,
        }
    }
}

impl Sim {
    pub(super) fn action(&mut self) -> Result<(), Violation> {
        let total: u32 = self.profile.weights.iter().map(|(_, w)| w).sum();
        let mut x = self.rng.random_range(0..total.max(1));
        let mut kind = Action::Send;
        for (a, w) in &self.profile.weights {
            if x < *w {
                kind = *a;
                break;
            }
            x -= w;
        }
        let i = self.rng.random_range(0..self.devices.len());
        let up = self.devices[i].core.is_some();
        match kind {
            Action::Send if up => self.app_send(i),
            Action::Forge if up && self.devices[i].conn.is_some() => self.forge(i),
            Action::Attack if up => self.attack(i),
            Action::Read if up => self.app_read(i),
            Action::Membership => self.app_membership(),
            Action::Retry if up => self.app_retry(i, false),
            Action::Offline if up && self.devices[i].os_online => {
                self.stats.offline_periods += 1;
                self.devices[i].offline_id += 1;
                let id = self.devices[i].offline_id;
                let back = self.now + self.rng.random_range(1_000..60_000);
                self.queue.push(
                    back,
                    Ev::BackOnline {
                        device: i,
                        offline: id,
                    },
                );
                self.set_os_online(i, false)
            }
            Action::Partition if self.devices[i].partition == Partition::None => {
                let p = match self.rng.random_range(0..4) {
                    0 | 1 => {
                        self.stats.partitions_both += 1;
                        Partition::Both
                    }
                    2 => {
                        self.stats.partitions_up += 1;
                        Partition::Up
                    }
                    _ => {
                        self.stats.partitions_down += 1;
                        Partition::Down
                    }
                };
                let d = &mut self.devices[i];
                d.partition = p;
                d.partition_id += 1;
                d.partition_since = self.now;
                let (pid, conn) = (d.partition_id, d.conn);
                let until = self.now + self.rng.random_range(1_000..90_000);
                tr!(
                    self,
                    "{} PARTITION {p:?} until +{} ms",
                    self.devices[i].name,
                    until - self.now
                );
                self.queue.push(
                    until,
                    Ev::HealPartition {
                        device: i,
                        partition: pid,
                    },
                );
                if let Some(conn) = conn {
                    self.queue.push(self.now + IDLE_MS, Ev::IdleCheck { conn });
                }
                Ok(())
            }
            Action::KillConn => {
                if let Some(conn) = self.devices[i].conn {
                    tr!(self, "{} conn {conn} DIES", self.devices[i].name);
                    let a = self.now + self.rng.random_range(0..IDLE_MS);
                    let b = self.now + self.rng.random_range(0..IDLE_MS);
                    self.kill_conn(conn, Some(a), Some(b));
                }
                Ok(())
            }
            Action::DeviceCrash if up => {
                self.stats.device_crashes += 1;
                self.crash_device(i)
            }
            Action::DevicePowerCut if up => {
                let n = self.rng.random_range(1..=4);
                tr!(
                    self,
                    "{} power cut armed at its sync +{n}",
                    self.devices[i].name
                );
                self.devices[i].disk.arm_power_cut(n);
                Ok(())
            }
            Action::RelayCrash if self.relay.core.is_some() => {
                self.stats.relay_crashes += 1;
                self.crash_relay()
            }
            Action::RelayPowerCut if self.relay.core.is_some() => {
                let n = self.rng.random_range(1..=3);
                tr!(self, "relay power cut armed at its sync +{n}");
                self.relay.disk.arm_power_cut(n);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Conversations the device can show (it holds their Create event). A removed member's
    /// devices keep showing the conversation (and try to write into it until they learn).
    pub(super) fn known_convs(&mut self, i: usize) -> Result<Vec<ConversationId>, Violation> {
        let user = self.devices[i].user;
        let ids: Vec<ConversationId> = self
            .convs
            .iter()
            .filter(|c| c.ever.contains(&user))
            .map(|c| c.id)
            .collect();
        let core = self.core(i)?;
        let mut out = Vec::new();
        for id in ids {
            let c = core
                .store_mut()
                .conversation(id)
                .map_err(|e| format!("reading {id}: {e}"))?;
            if c.members().is_some() {
                out.push(id);
            }
        }
        Ok(out)
    }

    pub(super) fn app_send(&mut self, i: usize) -> Result<(), Violation> {
        let known = self.known_convs(i)?;
        if known.is_empty() {
            return Ok(());
        }
        let conv = known[self.rng.random_range(0..known.len())];
        self.app_send_in(i, conv)
    }

    /// Device `i`'s user sends a message into `conv`.
    pub(super) fn app_send_in(&mut self, i: usize, conv: ConversationId) -> Result<(), Violation> {
        self.n_messages += 1;
        let body = format!("{} #{}", self.devices[i].name, self.n_messages).into_bytes();
        let now = self.devices[i].dev_now(self.now);
        self.stats.sends += 1;
        let r = self.core(i)?.send(conv, body.clone(), Vec::new(), now);
        let r = match r {
            Ok(message) => {
                tr!(self, "{} SEND {message} in {conv}", self.devices[i].name);
                self.oracle.sent.insert(message, (conv, i));
                let members = self
                    .core(i)?
                    .store()
                    .log()
                    .conversation_meta(conv)
                    .map_err(|e| format!("meta: {e}"))?
                    .and_then(|m| m.members)
                    .map(|(_, users)| users.into_iter().collect())
                    .unwrap_or_default();
                self.oracle.sent_members.insert(message, members);
                self.bodies.insert(message, body);
                Ok(())
            }
            Err(e) => Err(e),
        };
        self.after_app_call(i, r, "send")
    }

    /// Device `i` submits, on its live connection, an event no honest device writes: a message
    /// into a conversation its user is not a member of, a membership change by a non-admin, an
    /// event claiming another user, a relay ack, or a `Send` of another device's message id
    /// (a hijack: the id is bound to its author). The relay must refuse it; at the end, no
    /// relay store and no device log may hold it (and no honest device may report an event it
    /// ignored, see `drain_device`).
    pub(super) fn forge(&mut self, i: usize) -> Result<(), Violation> {
        let Some(conn) = self.devices[i].conn else {
            return Ok(());
        };
        // Only an authenticated session may submit at all (before that the relay closes it).
        if !matches!(
            self.core(i)?.connection(),
            ConnectionState::Syncing | ConnectionState::Online
        ) {
            return Ok(());
        }
        let mut spec = self.rng.random_range(0..self.convs.len());
        let pick = self.rng.random_range(0..5);
        // A hijack targets a message another device sent, in its conversation.
        let mut hijacked = None;
        if pick == 4 && !self.oracle.sent.is_empty() {
            let n = self.rng.random_range(0..self.oracle.sent.len());
            if let Some((m, (c, author))) = self.oracle.sent.iter().nth(n) {
                if let Some(s) = self.convs.iter().position(|x| x.id == *c) {
                    if *author != i {
                        spec = s;
                        hijacked = Some(*m);
                    }
                }
            }
        }
        let (conv, ever, creator) = {
            let c = &self.convs[spec];
            (c.id, c.ever.clone(), c.creator)
        };
        let user = self.devices[i].user;
        let other = (user + 1) % self.users.len();
        if pick == 0 && !ever.contains(&user) && !self.convs[spec].no_add.contains(&user) {
            // Never to be added to it: an add sequenced before the forgery arrives would
            // make it a member's message.
            self.convs[spec].no_add.push(user);
        }
        let (claimed, kind, what) = match pick {
            0 if !ever.contains(&user) => (
                self.users[user].id,
                EventKind::Send {
                    message: MessageId(self.rng.random()),
                    body: b"forged".to_vec(),
                    media: Vec::new(),
                },
                "a message from a non-member",
            ),
            1 if ever.contains(&user) && user != creator => (
                self.users[user].id,
                EventKind::AddMember {
                    user: self.users[other].id,
                    admin: true,
                },
                "a membership change by a non-admin",
            ),
            2 => (
                self.users[other].id,
                EventKind::Read {
                    up_to: 1,
                    head: None,
                },
                "an event claiming another user",
            ),
            4 if hijacked.is_some() => (
                self.users[user].id,
                EventKind::Send {
                    message: hijacked.unwrap_or_default(),
                    body: b"hijacked".to_vec(),
                    media: Vec::new(),
                },
                "a Send of another device's message id",
            ),
            _ => (
                self.users[user].id,
                EventKind::ServerAck {
                    event: EventId(self.rng.random()),
                    message: None,
                    seq: 1,
                    server_ts_ms: 0,
                },
                "a relay ack",
            ),
        };
        let key = &self.devices[i].key;
        let counter = self.rng.random_range(1..50);
        let mut header = key.header(conv, counter, None, counter, self.now);
        header.user = claimed;
        if counter > 1 {
            header.prev = Some(EventId(self.rng.random()));
        }
        let event = Event::sign(key.signing_key(), header, kind).map_err(|e| e.to_string())?;
        tr!(
            self,
            "{} FORGES {what} in {conv}: {}",
            self.devices[i].name,
            event.id()
        );
        self.stats.forged += 1;
        let request_id = (1 << 60) + self.stats.forged;
        self.forged.push(event.clone());
        self.send_up(
            conn,
            ClientFrame::Submit {
                request_id,
                events: vec![Envelope(event.bytes().to_vec())],
            },
        );
        Ok(())
    }

    /// The admin (the creator's first device) removes a member for good, or adds a user who
    /// never was one. One change at a time: the previous one must be sequenced and through
    /// the admin's gate (or lost in a crash), so each change is valid where the relay places
    /// it. (Adding a removed member back is not drawn: see docs/RELIABILITY.md.)
    pub(super) fn app_membership(&mut self) -> Result<(), Violation> {
        let spec = self.rng.random_range(0..self.convs.len());
        let (conv, creator, last) = {
            let c = &self.convs[spec];
            (c.id, c.creator, c.last_change)
        };
        let Some(admin) = self.devices.iter().position(|d| d.user == creator) else {
            return Ok(());
        };
        let Some(core) = self.devices[admin].core.as_mut() else {
            return Ok(());
        };
        let log = core.store().log();
        let gate = log.gate(conv).map_err(|e| format!("gate: {e}"))?;
        if gate.membership.is_none() {
            return Ok(());
        }
        if let Some(last) = last {
            let lost = !log.contains(&last).map_err(|e| format!("log: {e}"))?;
            match log.ack_of(&last).map_err(|e| format!("ack: {e}"))? {
                Some((seq, _)) if seq <= gate.through => {}
                None if lost => {}
                _ => return Ok(()),
            }
        }
        let members = gate.members();
        let target = self.rng.random_range(0..self.users.len());
        if target == creator {
            return Ok(());
        }
        let id = self.users[target].id;
        let now = self.devices[admin].dev_now(self.now);
        let name = self.devices[admin].name.clone();
        let r = if members.contains(&id) {
            tr!(self, "{name} REMOVES user {target} from {conv}");
            self.stats.removals += 1;
            self.core(admin)?.remove_member(conv, id, now)
        } else if self.convs[spec].ever.contains(&target)
            || self.convs[spec].no_add.contains(&target)
        {
            return Ok(());
        } else {
            tr!(self, "{name} ADDS user {target} to {conv}");
            self.stats.additions += 1;
            self.convs[spec].ever.push(target);
            self.core(admin)?.add_member(conv, id, false, now)
        };
        if r.is_ok() {
            // The change is the admin's newest event in the conversation.
            let core = self.core(admin)?;
            let key = core.store().key().device();
            let head = core
                .store()
                .log()
                .chain_head(conv, key)
                .map_err(|e| format!("chain head: {e}"))?;
            self.convs[spec].last_change = head.map(|(_, id)| id);
        }
        self.after_app_call(admin, r, "membership change")
    }

    pub(super) fn app_read(&mut self, i: usize) -> Result<(), Violation> {
        let known = self.known_convs(i)?;
        if known.is_empty() {
            return Ok(());
        }
        let conv = known[self.rng.random_range(0..known.len())];
        let now = self.devices[i].dev_now(self.now);
        tr!(self, "{} READ {conv}", self.devices[i].name);
        self.stats.reads += 1;
        let r = self.core(i)?.mark_read(conv, None, now);
        self.after_app_call(i, r, "mark_read")
    }

    /// The user taps retry on one FAILED message (or on all of them).
    pub(super) fn app_retry(&mut self, i: usize, all: bool) -> Result<(), Violation> {
        let known = self.known_convs(i)?;
        let mut failed = Vec::new();
        for conv in known {
            let c = self
                .core(i)?
                .store_mut()
                .conversation(conv)
                .map_err(|e| format!("reading {conv}: {e}"))?;
            failed.extend(
                c.messages()
                    .into_iter()
                    .filter(|m| m.status == Status::Failed)
                    .map(|m| m.id),
            );
        }
        // And what the outbox gave up on whatever its ticks: a message delivered peer to peer
        // shows ✓✓ though the relay never took it; an app learns of it from the report of
        // FAILED messages (`failed_messages`), not from the ticks.
        let now = self.devices[i].dev_now(self.now);
        // (Only with peer links, so that the default seeds run as before.)
        let given_up = match self.peers {
            Some(_) => self
                .core(i)?
                .failed_messages(now, 0)
                .map_err(|e| format!("failed messages: {e}"))?,
            None => Vec::new(),
        };
        for f in given_up {
            if !failed.contains(&f.message) {
                failed.push(f.message);
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        if !all {
            let pick = failed[self.rng.random_range(0..failed.len())];
            failed = vec![pick];
        }
        for m in failed {
            if self.devices[i].core.is_none() {
                break;
            }
            let now = self.devices[i].dev_now(self.now);
            tr!(self, "{} RETRY {m}", self.devices[i].name);
            self.stats.retries += 1;
            let r = self.core(i)?.retry(m, now);
            self.after_app_call(i, r, "retry")?;
        }
        Ok(())
    }
}
