//! Insider and stranger attacks on the directory and on consent (issue #12): a device's shell
//! turns adversary and writes requests on its live connection that no honest device writes.
//! Their answers go back to the adversary (not to the core, which never asked), are checked
//! against what the rules allow, and counted; what the attacks leave behind is checked at the
//! end (`check_attacks`).
//!
//! - Registration flood: the user certifies devices past [`MAX_DEVICES_PER_USER`].
//! - Foreign revocation: a user revokes another user's device, registered or not yet.
//! - Re-certification: a device id certified again with another agreement key.
//! - Invitation flood: Creates listing another user, who never accepts them.
//! - Blocking: the flooded user blocks the flooder.
//! - Epoch-key poisoning: a device the user registers for the purpose (its "rogue" device,
//!   which only ever writes `EpochKeys`) shares a wrong key for an existing epoch, or opens an
//!   epoch committing to one key and seals another to some members. The relay cannot tell;
//!   every device must refuse the wrong shares (counted from `DeviceEvent::KeyShareRefused`),
//!   keep asking, and no honest message may read as anything but what was sent
//!   (`Sim::check_bodies`).

use super::*;
use tidings::engine::crypto::EpochKey;
use tidings::engine::directory::MAX_DEVICES_PER_USER;
use tidings::engine::e2ee::{epoch_commitment, seal_epoch_key, EpochOrigin};
use tidings::engine::wire::{
    DeviceRegistration, DeviceRevocation, SubmitOutcome, MAX_INVITATIONS_PER_INVITER,
};
use tidings::engine::DeviceId;
use tidings::relay::core::store::Decision;

/// Request ids from here up are the adversary's (the honest cores count from 1, forged
/// submissions use `1 << 60` and up): their answers never reach a core.
pub(super) const ADVERSARY_REQUESTS: u64 = 1 << 61;
/// Most device certificates one registration flood writes.
const MAX_FLOOD_REGISTRATIONS: usize = MAX_DEVICES_PER_USER + 8;
/// Most Creates one invitation flood writes (the cap per inviter is 32).
const MAX_FLOOD_INVITATIONS: u64 = 40;

/// The kinds of attack, for the counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Attack {
    RegistrationFlood,
    ForeignRevocation,
    Recertification,
    InvitationFlood,
    Block,
    EpochKeyPoison,
}

impl Attack {
    pub(super) const ALL: [Attack; 6] = [
        Attack::RegistrationFlood,
        Attack::ForeignRevocation,
        Attack::Recertification,
        Attack::InvitationFlood,
        Attack::Block,
        Attack::EpochKeyPoison,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Attack::RegistrationFlood => "device registrations past the cap",
            Attack::ForeignRevocation => "revocations of another user's device",
            Attack::Recertification => "re-certifications with another agreement key",
            Attack::InvitationFlood => "invitations from a flooder",
            Attack::Block => "blocks of the flooder",
            Attack::EpochKeyPoison => "poisoned epoch-key shares sealed",
        }
    }
}

/// What an adversarial request may get as its answer.
#[derive(Debug)]
pub(super) enum Expect {
    /// A flood device: stored while the user has room, else `TOO_MANY_DEVICES`.
    FloodDevice { user: usize },
    /// A revocation signed by a user who did not certify the device: `BAD_REVOCATION`.
    ForeignRevocation,
    /// The victim registers the device id a stranger revoked first: stored (or the victim's
    /// user is full).
    PreRevokedDevice,
    /// A certificate of a registered device with another agreement key:
    /// `AGREEMENT_KEY_CHANGED`.
    Recertification,
    /// Creates listing `invited`: sequenced (a pending invitation) or refused as full, blocked
    /// or over the rate.
    Invitations {
        inviter: usize,
        invited: usize,
        convs: Vec<ConversationId>,
    },
    /// The user's rogue device: stored (or the user is full).
    RogueDevice { user: usize },
    /// A rogue `EpochKeys` event: sequenced (the relay cannot read shares), or refused
    /// (the user was removed meanwhile, or over the rate); its chain place is then free again.
    Poison {
        user: usize,
        n_wrong: u64,
        device: usize,
        event: Vec<u8>,
    },
}

/// A user's rogue device: registered once, then writes a chain of `EpochKeys` events.
#[derive(Debug, Default)]
pub(super) struct Rogue {
    /// Its registration was written.
    pub(super) asked: bool,
    pub(super) registered: bool,
    /// Per conversation, its last event (counter, id); what it was before the one in flight.
    pub(super) chains: BTreeMap<ConversationId, (u64, EventId)>,
    /// The event in flight: its conversation and the chain's end before it. Its answer may
    /// be lost with the connection: the chain may then hold the event or not, so the rogue
    /// writes no more.
    pub(super) inflight: Option<(ConversationId, Option<(u64, EventId)>)>,
}

/// What the attacks did in one run, beyond the counts.
#[derive(Debug, Default)]
pub(super) struct AttackLog {
    pub(super) requests: BTreeMap<u64, Expect>,
    pub(super) next_request: u64,
    /// Per user, flood devices written so far.
    pub(super) flood_devices: Vec<usize>,
    /// Per user, flood devices the relay stored.
    pub(super) flood_registered: Vec<usize>,
    /// Per (inviter, invited), Creates written so far.
    pub(super) flood_convs: BTreeMap<(usize, usize), u64>,
    /// Flood conversations the relay sequenced: (inviter, invited, conversation).
    pub(super) invitations: Vec<(usize, usize, ConversationId)>,
    /// Device ids another user revoked before the victim registered them.
    pub(super) pre_revoked: Vec<DeviceId>,
    /// Per device (index), the agreement key its certificate holds.
    pub(super) agreement: Vec<[u8; 32]>,
    /// Per device, whether the relay registered it (it reached `Ready` once).
    pub(super) registered: Vec<bool>,
    /// Per user, its rogue device.
    pub(super) rogues: Vec<Rogue>,
}

impl Sim {
    /// One attack from device `i`'s live, authenticated connection (or, for a block, by
    /// device `i`'s user).
    pub(super) fn attack(&mut self, i: usize) -> Result<(), Violation> {
        let Some(conn) = self.devices[i].conn else {
            return Ok(());
        };
        if !matches!(
            self.core(i)?.connection(),
            ConnectionState::Syncing | ConnectionState::Online
        ) {
            return Ok(());
        }
        // The user's rogue device (see `poison`) is registered at its first attack, so that
        // later ones can use it.
        let u = self.devices[i].user;
        if !self.attacks.rogues[u].asked {
            self.register_rogue(i, conn);
        }
        // Poisoning thrice as often: it needs its rogue device registered first.
        let kinds: Vec<Attack> = Attack::ALL
            .into_iter()
            .chain([Attack::EpochKeyPoison, Attack::EpochKeyPoison])
            .filter(|a| *a != Attack::RegistrationFlood || self.profile.registration_flood)
            .collect();
        match kinds[self.rng.random_range(0..kinds.len())] {
            Attack::RegistrationFlood => self.flood_registrations(i, conn),
            Attack::ForeignRevocation => self.revoke_foreign(i, conn),
            Attack::Recertification => self.recertify(i, conn),
            Attack::InvitationFlood => self.flood_invitations(i, conn),
            Attack::Block => self.block_flooder(i),
            Attack::EpochKeyPoison => self.poison(i, conn),
        }
    }

    fn register_rogue(&mut self, i: usize, conn: ConnId) {
        let u = self.devices[i].user;
        self.attacks.rogues[u].asked = true;
        let registration = rogue_key(u, self.users[u].id).certificate(&self.users[u].key, self.now);
        let request_id = self.adversary_request(Expect::RogueDevice { user: u });
        tr!(self, "{} REGISTERS a rogue device", self.devices[i].name);
        self.send_up(
            conn,
            ClientFrame::RegisterDevice {
                request_id,
                registration,
            },
        );
    }

    /// Device `i`'s user has its rogue device write a poisoned `EpochKeys` event into a
    /// conversation (registering the rogue device first).
    fn poison(&mut self, i: usize, conn: ConnId) -> Result<(), Violation> {
        let u = self.devices[i].user;
        let rogue_key = rogue_key(u, self.users[u].id);
        let rogue = &self.attacks.rogues[u];
        if !rogue.registered || rogue.inflight.is_some() {
            return Ok(());
        }
        // A conversation the user is a member of at the relay, and an epoch device i holds.
        let lines = match self.relay.core {
            Some(_) => self.timelines()?,
            None => return Ok(()),
        };
        let uid = self.users[u].id;
        let convs: Vec<ConversationId> = lines
            .iter()
            .filter(|(_, t)| t.current.contains(&uid))
            .map(|(c, _)| *c)
            .collect();
        if convs.is_empty() {
            return Ok(());
        }
        let conv = convs[self.rng.random_range(0..convs.len())];
        let epochs = self
            .core(i)?
            .store_mut()
            .epochs(conv)
            .map_err(|e| format!("epochs: {e}"))?;
        let members = &lines[&conv].current;
        let recipients: Vec<(DeviceId, tidings::engine::crypto::AgreementPublic)> = self
            .devices
            .iter()
            .filter(|d| d.user != u && members.contains(&self.users[d.user].id))
            .map(|d| (d.key.device(), d.key.agreement_public()))
            .collect();
        if recipients.is_empty() {
            return Ok(());
        }
        let before = self.attacks.rogues[u].chains.get(&conv).copied();
        let (counter, prev) = before.map_or((1, None), |(c, id)| (c + 1, Some(id)));
        let wrong = EpochKey::from_bytes(self.rng.random());
        let ephemerals: Vec<[u8; 32]> = (0..recipients.len()).map(|_| self.rng.random()).collect();
        let split = epochs.is_empty() || self.rng.random_bool(0.5);
        let (kind, n_wrong, what) = if split {
            // An opening that commits to one key and seals another to half the devices.
            let right = EpochKey::from_bytes(self.rng.random());
            let origin = EpochOrigin::New {
                author: rogue_key.device(),
                counter,
            };
            let cut = self.rng.random_range(0..recipients.len());
            let mut keys = seal_epoch_key(conv, origin, &right, &recipients[..cut], &ephemerals);
            keys.extend(seal_epoch_key(
                conv,
                origin,
                &wrong,
                &recipients[cut..],
                &ephemerals[cut..],
            ));
            let commitment = epoch_commitment(conv, rogue_key.device(), counter, &right);
            let kind = EventKind::EpochKeys {
                epoch: None,
                commitment: Some(commitment),
                keys,
            };
            let n_wrong = (recipients.len() - cut) as u64;
            (
                kind,
                n_wrong,
                format!("opens a split epoch ({n_wrong} wrong shares)"),
            )
        } else {
            let epoch = epochs[self.rng.random_range(0..epochs.len())];
            let origin = EpochOrigin::Shared(epoch);
            let keys = seal_epoch_key(conv, origin, &wrong, &recipients, &ephemerals);
            let kind = EventKind::EpochKeys {
                epoch: Some(epoch),
                commitment: None,
                keys,
            };
            let n_wrong = recipients.len() as u64;
            (
                kind,
                n_wrong,
                format!("shares a wrong key for epoch {epoch}"),
            )
        };
        let header = rogue_key.header(conv, counter, prev, counter, self.now);
        let event =
            Event::sign(rogue_key.signing_key(), header, kind).map_err(|e| e.to_string())?;
        tr!(
            self,
            "{}'s rogue device {what} in {conv}: {}",
            self.devices[i].name,
            event.id()
        );
        let rogue = &mut self.attacks.rogues[u];
        rogue.chains.insert(conv, (counter, event.id()));
        rogue.inflight = Some((conv, before));
        let request_id = self.adversary_request(Expect::Poison {
            user: u,
            n_wrong,
            device: i,
            event: event.bytes().to_vec(),
        });
        self.send_up(
            conn,
            ClientFrame::Submit {
                request_id,
                events: vec![Envelope(event.bytes().to_vec())],
            },
        );
        Ok(())
    }

    fn adversary_request(&mut self, expect: Expect) -> u64 {
        let log = &mut self.attacks;
        log.next_request += 1;
        let id = ADVERSARY_REQUESTS + log.next_request;
        log.requests.insert(id, expect);
        id
    }

    /// A device of user `u` whose certificate the relay stores, all of them when `all`.
    fn registered(&self, u: usize) -> bool {
        self.devices
            .iter()
            .zip(&self.attacks.registered)
            .filter(|(d, _)| d.user == u)
            .all(|(_, r)| *r)
    }

    /// The user certifies devices (ids of no real device) until the relay refuses them: a
    /// user's devices are capped, and the honest gates still reach their verdicts.
    fn flood_registrations(&mut self, i: usize, conn: ConnId) -> Result<(), Violation> {
        let u = self.devices[i].user;
        // A full user could not register its own devices any more: flood only once all of
        // them are in (the user hurts nobody but itself).
        let start = self.attacks.flood_devices[u];
        if !self.registered(u) || start >= MAX_FLOOD_REGISTRATIONS {
            return Ok(());
        }
        // At once past the cap: what the cap is for.
        let end = MAX_FLOOD_REGISTRATIONS;
        self.attacks.flood_devices[u] = end;
        tr!(
            self,
            "{} FLOODS the directory: devices {start}..{end} of user {u}",
            self.devices[i].name
        );
        for k in start..end {
            let device = flood_device(u, k);
            let reg = DeviceRegistration::sign(&self.users[u].key, device, [0x5A; 32], self.now);
            let request_id = self.adversary_request(Expect::FloodDevice { user: u });
            self.stats.attack(Attack::RegistrationFlood).tried += 1;
            self.send_up(
                conn,
                ClientFrame::RegisterDevice {
                    request_id,
                    registration: reg,
                },
            );
        }
        Ok(())
    }

    /// Device `i`'s user revokes a device of another user: a registered one, or an id nobody
    /// registered yet, which that user then registers (a revocation first must not ban it).
    fn revoke_foreign(&mut self, i: usize, conn: ConnId) -> Result<(), Violation> {
        let u = self.devices[i].user;
        let victims: Vec<usize> = (0..self.devices.len())
            .filter(|k| self.devices[*k].user != u)
            .collect();
        if victims.is_empty() {
            return Ok(());
        }
        let k = victims[self.rng.random_range(0..victims.len())];
        let v = self.devices[k].user;
        let fresh = self.rng.random_bool(0.5);
        let device = if fresh {
            let id = DeviceId(self.rng.random());
            self.attacks.pre_revoked.push(id);
            id
        } else {
            self.devices[k].key.device()
        };
        tr!(
            self,
            "{} REVOKES a device of user {v}: {device}{}",
            self.devices[i].name,
            if fresh { " (not registered yet)" } else { "" }
        );
        let revocation = DeviceRevocation::sign(&self.users[u].key, device, self.now);
        let request_id = self.adversary_request(Expect::ForeignRevocation);
        self.stats.attack(Attack::ForeignRevocation).tried += 1;
        self.send_up(
            conn,
            ClientFrame::Revoke {
                request_id,
                revocation,
            },
        );
        if fresh {
            // The victim registers that id, on the same stream after the revocation.
            let reg = DeviceRegistration::sign(&self.users[v].key, device, [0x5B; 32], self.now);
            let request_id = self.adversary_request(Expect::PreRevokedDevice);
            self.send_up(
                conn,
                ClientFrame::RegisterDevice {
                    request_id,
                    registration: reg,
                },
            );
        }
        Ok(())
    }

    /// Whoever holds a user's key certifies one of its registered devices again, with an
    /// agreement key of its own: refused, and no epoch key is ever sealed to that key.
    fn recertify(&mut self, i: usize, conn: ConnId) -> Result<(), Violation> {
        let targets: Vec<usize> = (0..self.devices.len())
            .filter(|k| self.attacks.registered[*k])
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        let k = targets[self.rng.random_range(0..targets.len())];
        let (v, device) = (self.devices[k].user, self.devices[k].key.device());
        let agreement: [u8; 32] = self.rng.random();
        tr!(
            self,
            "{} RE-CERTIFIES {}'s device id with another agreement key",
            self.devices[i].name,
            self.devices[k].name
        );
        let reg = DeviceRegistration::sign(&self.users[v].key, device, agreement, self.now);
        let request_id = self.adversary_request(Expect::Recertification);
        self.stats.attack(Attack::Recertification).tried += 1;
        self.send_up(
            conn,
            ClientFrame::RegisterDevice {
                request_id,
                registration: reg,
            },
        );
        Ok(())
    }

    /// Device `i`'s user creates conversations listing another user, who never accepts
    /// them. Their ids sort before every real one, so a Sync cut by count would lose the
    /// real ones first.
    fn flood_invitations(&mut self, i: usize, conn: ConnId) -> Result<(), Violation> {
        let u = self.devices[i].user;
        let v = (u + 1 + self.rng.random_range(0..self.users.len() - 1)) % self.users.len();
        // The flooder's own invitations of `v` into its real conversations would be refused
        // past the cap too (the user hurts itself): flood only once the Creates of those are
        // sequenced and no add of `v` may be in flight, and never add `v` to them after.
        let Some(relay) = self.relay.core.as_ref() else {
            return Ok(());
        };
        let heads = end::store_heads(relay.store())?;
        let mut no_add = Vec::new();
        for (s, spec) in self.convs.iter().enumerate() {
            if spec.creator != u {
                continue;
            }
            let late_add = spec.ever.contains(&v) && !spec.initial.contains(&v);
            if !heads.contains_key(&spec.id) || late_add {
                return Ok(());
            }
            if !spec.ever.contains(&v) {
                no_add.push(s);
            }
        }
        for s in no_add {
            if !self.convs[s].no_add.contains(&v) {
                self.convs[s].no_add.push(v);
            }
        }
        let n = self.rng.random_range(4..=MAX_FLOOD_INVITATIONS);
        let batch = self.relay.limits.max_submit_batch.max(1);
        let now = self.devices[i].dev_now(self.now);
        let mut events = Vec::new();
        for _ in 0..n {
            let written = self.attacks.flood_convs.entry((u, v)).or_insert(0);
            *written += 1;
            let mut id = [0u8; 16];
            id[0] = 0x0F;
            id[1] = u as u8;
            id[2] = v as u8;
            id[3] = i as u8;
            id[8..].copy_from_slice(&written.to_be_bytes());
            let conv = ConversationId(id);
            let key = &self.devices[i].key;
            let header = key.header(conv, 1, None, 1, now);
            let members = vec![self.users[u].id, self.users[v].id];
            let event = Event::sign(key.signing_key(), header, EventKind::Create { members })
                .map_err(|e| e.to_string())?;
            events.push(event);
        }
        tr!(
            self,
            "{} FLOODS user {v} with {n} invitations",
            self.devices[i].name
        );
        self.stats.attack(Attack::InvitationFlood).tried += n;
        for chunk in events.chunks(batch) {
            let convs = chunk.iter().map(|e| e.conversation()).collect();
            let request_id = self.adversary_request(Expect::Invitations {
                inviter: u,
                invited: v,
                convs,
            });
            let events = chunk.iter().map(|e| Envelope(e.bytes().to_vec())).collect();
            self.send_up(conn, ClientFrame::Submit { request_id, events });
        }
        Ok(())
    }

    /// Device `i`'s user blocks a user that flooded it. Not while a real conversation of the
    /// flooder's is pending for the user, or an add of the user may still be in flight: the
    /// block would decline or refuse it.
    fn block_flooder(&mut self, i: usize) -> Result<(), Violation> {
        let v = self.devices[i].user;
        let flooders: Vec<usize> = self
            .attacks
            .flood_convs
            .keys()
            .filter(|(_, invited)| *invited == v)
            .map(|(inviter, _)| *inviter)
            .collect();
        if flooders.is_empty() {
            return Ok(());
        }
        let u = flooders[self.rng.random_range(0..flooders.len())];
        let Some(relay) = self.relay.core.as_ref() else {
            return Ok(());
        };
        let rows = relay.store().invitations().map_err(|e| e.to_string())?;
        let (uid, vid) = (self.users[u].id, self.users[v].id);
        let mut no_add = Vec::new();
        for (s, spec) in self.convs.iter().enumerate() {
            if spec.creator != u {
                continue;
            }
            if !spec.ever.contains(&v) {
                no_add.push(s);
                continue;
            }
            let accepted = rows.iter().any(|r| {
                r.user == vid && r.conversation == spec.id && r.decision == Decision::Accepted
            });
            if !accepted || !spec.initial.contains(&v) {
                return Ok(());
            }
        }
        for s in no_add {
            if !self.convs[s].no_add.contains(&v) {
                self.convs[s].no_add.push(v);
            }
        }
        tr!(self, "{} BLOCKS user {u}", self.devices[i].name);
        self.stats.attack(Attack::Block).tried += 1;
        self.core(i)?.block(uid);
        self.after_app_call(i, Ok(()), "block")
    }

    /// An answer to an adversarial request, on device `i`'s connection.
    pub(super) fn adversary_answer(&mut self, frame: ServerFrame) -> Result<(), Violation> {
        let Some(id) = frame.answers() else {
            return Ok(());
        };
        // Transport chaos may duplicate a request: only its first answer counts.
        let Some(expect) = self.attacks.requests.remove(&id) else {
            return Ok(());
        };
        let refused =
            |code: ErrorCode| matches!(&frame, ServerFrame::Refused { code: c, .. } if *c == code);
        match expect {
            Expect::FloodDevice { user } => {
                if refused(ErrorCode::TOO_MANY_DEVICES) {
                    self.stats.attack(Attack::RegistrationFlood).refused += 1;
                } else if matches!(frame, ServerFrame::Registered { .. }) {
                    self.attacks.flood_registered[user] += 1;
                } else {
                    return fail(format!("a flood registration got {frame:?}"));
                }
            }
            Expect::ForeignRevocation => {
                if !refused(ErrorCode::BAD_REVOCATION) {
                    return fail(format!(
                        "a revocation of another user's device got {frame:?}"
                    ));
                }
                self.stats.attack(Attack::ForeignRevocation).refused += 1;
            }
            Expect::PreRevokedDevice => {
                let full = refused(ErrorCode::TOO_MANY_DEVICES);
                if !(full || matches!(frame, ServerFrame::Registered { .. })) {
                    return fail(format!(
                        "a device another user revoked first could not be registered: {frame:?}"
                    ));
                }
            }
            Expect::Recertification => {
                if !refused(ErrorCode::AGREEMENT_KEY_CHANGED) {
                    return fail(format!(
                        "a certificate with another agreement key for a registered device got \
                         {frame:?}"
                    ));
                }
                self.stats.attack(Attack::Recertification).refused += 1;
            }
            Expect::Invitations {
                inviter,
                invited,
                convs,
            } => self.invitations_answered(inviter, invited, &convs, frame)?,
            Expect::RogueDevice { user } => match frame {
                ServerFrame::Registered { .. } => self.attacks.rogues[user].registered = true,
                ServerFrame::Refused {
                    code: ErrorCode::TOO_MANY_DEVICES,
                    ..
                } => {}
                other => return fail(format!("a rogue device's registration got {other:?}")),
            },
            Expect::Poison {
                user,
                n_wrong,
                device,
                event,
            } => self.poison_answered(user, n_wrong, device, event, frame)?,
        }
        Ok(())
    }

    fn poison_answered(
        &mut self,
        user: usize,
        n_wrong: u64,
        device: usize,
        event: Vec<u8>,
        frame: ServerFrame,
    ) -> Result<(), Violation> {
        let rogue = &mut self.attacks.rogues[user];
        let Some((conv, before)) = rogue.inflight.take() else {
            return fail("an answer to a rogue event that is not in flight");
        };
        let (outcome, records) = match frame {
            ServerFrame::SubmitResult {
                mut outcomes,
                records,
                ..
            } if outcomes.len() == 1 => (outcomes.remove(0), records),
            ServerFrame::Refused {
                code: ErrorCode::RATE_LIMITED,
                ..
            } => (
                SubmitOutcome::Rejected {
                    code: ErrorCode::RATE_LIMITED,
                    reason: String::new(),
                },
                Vec::new(),
            ),
            other => return fail(format!("a rogue EpochKeys event got {other:?}")),
        };
        match outcome {
            SubmitOutcome::Accepted { .. } => {
                for r in &records {
                    self.oracle.record_statement(&r.0)?;
                }
                self.stats.poison_events += 1;
                self.stats.attack(Attack::EpochKeyPoison).tried += n_wrong;
                // The relay pushes an event to every session but the one that submitted it,
                // which holds it: the adversary's shell hands it to its core, as a push
                // (seeds 4219, 4250, 4376: the device otherwise lacked it until its next Sync).
                let push = ServerFrame::Push {
                    events: vec![Envelope(event)],
                    records,
                };
                if self.devices[device].core.is_some() && self.devices[device].conn.is_some() {
                    let now = self.devices[device].dev_now(self.now);
                    let r = self.core(device)?.handle_frame(push, now);
                    match r {
                        Ok(()) => {
                            self.drain_device(device)?;
                            self.refresh_wake(device);
                        }
                        Err(e) => return self.device_failed(device, e, "handle_frame"),
                    }
                }
            }
            SubmitOutcome::Rejected { code, reason } => {
                if !matches!(
                    code,
                    ErrorCode::NOT_MEMBER | ErrorCode::RATE_LIMITED | ErrorCode::REVOKED
                ) {
                    return fail(format!(
                        "a rogue EpochKeys event was refused: code {} ({reason})",
                        code.0
                    ));
                }
                match before {
                    Some(b) => rogue.chains.insert(conv, b),
                    None => rogue.chains.remove(&conv),
                };
            }
        }
        Ok(())
    }

    fn invitations_answered(
        &mut self,
        inviter: usize,
        invited: usize,
        convs: &[ConversationId],
        frame: ServerFrame,
    ) -> Result<(), Violation> {
        let outcomes = match frame {
            ServerFrame::SubmitResult {
                outcomes, records, ..
            } if outcomes.len() == convs.len() => {
                for r in &records {
                    self.oracle.record_statement(&r.0)?;
                }
                outcomes
            }
            // A whole batch refused (over the rate): nothing was stored.
            ServerFrame::Refused {
                code: ErrorCode::RATE_LIMITED,
                ..
            } => {
                self.stats.attack(Attack::InvitationFlood).refused += convs.len() as u64;
                return Ok(());
            }
            other => return fail(format!("an invitation flood got {other:?}")),
        };
        for (o, conv) in outcomes.iter().zip(convs) {
            match o {
                SubmitOutcome::Accepted { .. } => {
                    self.attacks.invitations.push((inviter, invited, *conv));
                }
                SubmitOutcome::Rejected { code, .. }
                    if matches!(
                        *code,
                        ErrorCode::INVITATIONS_FULL | ErrorCode::BLOCKED | ErrorCode::RATE_LIMITED
                    ) =>
                {
                    self.stats.attack(Attack::InvitationFlood).refused += 1;
                    if *code == ErrorCode::BLOCKED {
                        self.stats.invitations_blocked += 1;
                    }
                }
                SubmitOutcome::Rejected { code, reason } => {
                    return fail(format!(
                        "a flood invitation was refused for another reason: code {} ({reason})",
                        code.0
                    ))
                }
            }
        }
        Ok(())
    }

    /// At the end: what the attacks could have changed did not change.
    pub(super) fn check_attacks(&mut self) -> Result<(), Violation> {
        let core = self.relay.core.as_ref().ok_or("relay down at the end")?;
        let store = core.store();
        let regs = store.registrations().map_err(|e| e.to_string())?;
        // A user's devices are capped.
        for (u, user) in self.users.iter().enumerate() {
            let n = regs.iter().filter(|r| r.user == user.id).count();
            if n > MAX_DEVICES_PER_USER {
                return fail(format!(
                    "the relay holds {n} devices of user {u}, over the cap of \
                     {MAX_DEVICES_PER_USER}"
                ));
            }
        }
        // Every real device keeps the agreement key it registered with, at the relay.
        for (k, d) in self.devices.iter().enumerate() {
            if !self.attacks.registered[k] {
                continue;
            }
            let id = d.key.device();
            match regs.iter().find(|r| r.device == id) {
                Some(r) if r.agreement == self.attacks.agreement[k] => {}
                Some(_) => {
                    return fail(format!(
                        "the relay holds {}'s device id with another agreement key",
                        d.name
                    ))
                }
                None => return fail(format!("the relay lost {}'s certificate", d.name)),
            }
        }
        // Only the certifying user's revocations are kept (nobody here revokes for real).
        let revs = store.revocations().map_err(|e| e.to_string())?;
        if let Some(r) = revs.first() {
            return fail(format!(
                "the relay keeps a revocation of {} signed by {}",
                r.device, r.user
            ));
        }
        // Pending invitations are capped per inviter, and a block leaves none.
        let rows = store.invitations().map_err(|e| e.to_string())?;
        let blocked = store.blocked().map_err(|e| e.to_string())?;
        let mut pending: BTreeMap<(UserId, UserId), usize> = BTreeMap::new();
        for r in rows.iter().filter(|r| r.decision == Decision::Pending) {
            *pending.entry((r.inviter, r.user)).or_default() += 1;
        }
        for ((inviter, user), n) in &pending {
            if *n > MAX_INVITATIONS_PER_INVITER {
                return fail(format!(
                    "{user} holds {n} pending invitations from {inviter}, over the cap of \
                     {MAX_INVITATIONS_PER_INVITER}"
                ));
            }
            if blocked.contains(&(*user, *inviter)) {
                return fail(format!(
                    "{user} blocks {inviter} and still holds {n} pending invitations from it"
                ));
            }
        }
        self.stats.invitations_pending += pending.values().sum::<usize>() as u64;
        let agreements = self.attacks.agreement.clone();
        let registered = self.attacks.registered.clone();
        let invitations = self.attacks.invitations.clone();
        let pre_revoked = self.attacks.pre_revoked.clone();
        for i in 0..self.devices.len() {
            let name = self.devices[i].name.clone();
            let user = self.devices[i].user;
            let ids: Vec<(DeviceId, UserId)> = self
                .devices
                .iter()
                .map(|d| (d.key.device(), self.users[d.user].id))
                .collect();
            let core = self.core(i)?;
            // An invitation never accepted never reaches the invited user's devices.
            for (_, invited, conv) in &invitations {
                if *invited != user {
                    continue;
                }
                let c = core
                    .store_mut()
                    .conversation(*conv)
                    .map_err(|e| format!("{name}: {e}"))?;
                if c.members().is_some() {
                    return fail(format!(
                        "{name} holds {conv}, an invitation its user never accepted"
                    ));
                }
            }
            // No device is revoked, and every known device has its own agreement key.
            let dir = core
                .store_mut()
                .directory()
                .map_err(|e| format!("{name}: {e}"))?;
            for (k, (id, uid)) in ids.iter().enumerate() {
                if dir.is_revoked(id) {
                    return fail(format!("{name} holds device {k} as revoked"));
                }
                let Some((_, key)) = dir.devices_of(uid).into_iter().find(|(d, _)| d == id) else {
                    continue;
                };
                if registered[k] && key.0 != agreements[k] {
                    return fail(format!(
                        "{name} holds device {k} with an agreement key it never had"
                    ));
                }
            }
            for id in &pre_revoked {
                if dir.is_revoked(id) {
                    return fail(format!(
                        "{name} holds {id} as revoked by a user that never certified it"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The key of user `u`'s rogue device.
fn rogue_key(u: usize, user: UserId) -> DeviceKey {
    DeviceKey::from_seed([0xE0 + u as u8; 32], user)
}

/// A device id of flood device `k` of user `u` (no key behind it: nobody connects as it).
fn flood_device(u: usize, k: usize) -> DeviceId {
    let mut id = [0xF1u8; 32];
    id[0] = u as u8;
    id[1..9].copy_from_slice(&(k as u64).to_be_bytes());
    DeviceId(id)
}
