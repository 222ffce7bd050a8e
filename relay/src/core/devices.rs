//! The device directory: registering devices, revoking them, and serving a user's `Devices`.

use super::staged::{PendingRegistration, PendingRevocation};
use super::{RelayCore, SessionId};
use crate::storage::Storage;
use std::collections::BTreeSet;
use tidings_engine::directory::{self, CertificateCheck, DirectoryRefusal, RevocationCheck};
use tidings_engine::wire::{self, DeviceRegistration, DeviceRevocation, ErrorCode, ServerFrame};
use tidings_engine::{ConversationId, DeviceId, UserId};

impl<S: Storage> RelayCore<S> {
    pub(super) fn on_register(
        &mut self,
        session: SessionId,
        request_id: u64,
        reg: DeviceRegistration,
        now_ms: u64,
    ) {
        // The one directory rule (the devices' own, see `tidings_engine::directory`), against
        // the certificate held, staged or in flight.
        let staged = self.staged_registration(&reg.device);
        let held = staged.as_ref().or_else(|| self.certs.get(&reg.device));
        let revoked = self.revoked.contains_key(&reg.device);
        let n_devices = self.n_devices(&reg.user);
        match directory::check_certificate(&reg, held, revoked, n_devices) {
            Err(e) => {
                let code = match e {
                    DirectoryRefusal::BadCertificate { .. } => ErrorCode::BAD_REGISTRATION,
                    DirectoryRefusal::Revoked(_) => ErrorCode::REVOKED,
                    DirectoryRefusal::OtherUser { .. } => ErrorCode::DEVICE_TAKEN,
                    DirectoryRefusal::AgreementChanged { .. } => ErrorCode::AGREEMENT_KEY_CHANGED,
                    DirectoryRefusal::TooManyDevices { .. } => ErrorCode::TOO_MANY_DEVICES,
                    _ => ErrorCode::BAD_REGISTRATION,
                };
                self.refuse(session, request_id, code, &e.to_string())
            }
            // Already registered (an equal or older certificate): nothing to store.
            Ok(CertificateCheck::Held) if staged.is_none() => self.send(
                session,
                ServerFrame::Registered {
                    request_id,
                    user: reg.user,
                    device: reg.device,
                },
            ),
            Ok(_) => {
                self.staged.since_ms.get_or_insert(now_ms);
                self.staged.registrations.push(PendingRegistration {
                    session,
                    request_id,
                    user: reg.user,
                    device: reg.device,
                    cert: reg,
                });
            }
        }
    }

    /// Device ids of `user`, revoked ones included, registered or being registered.
    pub(super) fn n_devices(&self, user: &UserId) -> usize {
        let known = self.user_devices.get(user).map_or(0, Vec::len);
        let mut new: BTreeSet<DeviceId> = BTreeSet::new();
        let staged = self.staged.registrations.iter().map(|r| (r.device, r.user));
        let inflight = self
            .inflight
            .iter()
            .flat_map(|i| i.registrations.iter().copied());
        for (d, u) in staged.chain(inflight) {
            if u == *user && !self.devices.contains_key(&d) {
                new.insert(d);
            }
        }
        known + new.len()
    }

    /// The newest certificate of `device` staged or in flight, if any.
    pub(super) fn staged_registration(&self, device: &DeviceId) -> Option<DeviceRegistration> {
        let staged = self
            .staged
            .registrations
            .iter()
            .filter(|r| r.device == *device)
            .map(|r| &r.cert);
        let inflight = self
            .inflight
            .iter()
            .flat_map(|i| i.certs.iter())
            .filter(|c| c.device == *device);
        staged.chain(inflight).max_by_key(|c| c.issued_ms).cloned()
    }

    /// The user a device is being registered to in the staged batch or the commit in flight.
    pub(super) fn staged_device_user(&self, device: &DeviceId) -> Option<UserId> {
        self.staged
            .registrations
            .iter()
            .map(|r| (r.device, r.user))
            .chain(
                self.inflight
                    .iter()
                    .flat_map(|i| i.registrations.iter().copied()),
            )
            .find(|(d, _)| d == device)
            .map(|(_, u)| u)
    }

    pub(super) fn on_revoke(
        &mut self,
        session: SessionId,
        request_id: u64,
        rev: DeviceRevocation,
        now: u64,
    ) {
        // The one directory rule: only the user that certified the device revokes it. The
        // relay knows every registration, so a revocation of a device it has no certificate
        // of (pending on a device) is refused here.
        let certified_by = self
            .devices
            .get(&rev.device)
            .copied()
            .or_else(|| self.staged_device_user(&rev.device));
        match directory::check_revocation(&rev, certified_by) {
            Ok(RevocationCheck::Applies) => {}
            Ok(RevocationCheck::Pending) => {
                let msg = "the device is not registered to the revoking user";
                return self.refuse(session, request_id, ErrorCode::BAD_REVOCATION, msg);
            }
            Err(e) => {
                return self.refuse(
                    session,
                    request_id,
                    ErrorCode::BAD_REVOCATION,
                    &e.to_string(),
                )
            }
        }
        let pending = self
            .staged
            .revocations
            .iter()
            .any(|r| r.revocation.device == rev.device)
            || self
                .inflight
                .as_ref()
                .is_some_and(|i| i.revocations.contains(&rev.device));
        if self.revoked.contains_key(&rev.device) && !pending {
            return self.send(
                session,
                ServerFrame::Revoked {
                    request_id,
                    user: rev.user,
                    device: rev.device,
                },
            );
        }
        // In force at once: the device's session ends and nothing more of it is accepted;
        // the answer waits for the commit.
        self.revoked
            .entry(rev.device)
            .or_insert_with(|| rev.clone());
        if let Some(&sid) = self.device_sessions.get(&rev.device) {
            self.close(
                sid,
                ErrorCode::REVOKED,
                "the device was revoked by its user",
            );
        }
        self.staged.since_ms.get_or_insert(now);
        self.staged.revocations.push(PendingRevocation {
            session,
            request_id,
            revocation: rev,
        });
    }

    /// Certificates and durable revocations of the asked users who are or were members of a
    /// conversation the asking user is or was a member of, and of itself.
    pub(super) fn on_devices(
        &mut self,
        session: SessionId,
        request_id: u64,
        users: &[UserId],
        after: Option<DeviceId>,
    ) {
        let Some((_, me)) = self.registered(session) else {
            let msg = "device is not registered to its user";
            return self.refuse(session, request_id, ErrorCode::NOT_REGISTERED, msg);
        };
        // A removed member's device may still hold events from its time in the conversation
        // that it has not verified yet (it crashed before asking, say): it needs the same
        // certificates as the members.
        let my_convs = self.user_convs.get(&me).into_iter().flatten();
        let my_former = self.user_former.get(&me).into_iter().flatten();
        let my_convs: BTreeSet<&ConversationId> = my_convs.chain(my_former).collect();
        let shares = |u: &UserId| {
            *u == me
                || my_convs.iter().any(|c| {
                    self.convs
                        .get(c)
                        .and_then(|c| c.committed.as_ref())
                        .is_some_and(|r| r.membership.is_member(u))
                        || self.user_former.get(u).is_some_and(|f| f.contains(*c))
                })
        };
        // One page: users in the order asked, each user's devices in id order, at most
        // `max_devices` devices (certificate and revocation each) so that the frame stays
        // within the relay's frame length.
        let max_devices = (self.limits.max_frame_len.saturating_sub(4096)
            / wire::MAX_DEVICE_STATEMENTS_LEN)
            .clamp(1, wire::MAX_LISTED_DEVICES);
        let mut registrations = Vec::new();
        let mut revocations = Vec::new();
        let mut seen = BTreeSet::new();
        let mut complete = users.len();
        let mut resume_after = None;
        let mut n_listed = 0usize;
        'users: for (i, u) in users.iter().enumerate() {
            if !seen.insert(*u) || !shares(u) {
                continue;
            }
            let mut devices: Vec<DeviceId> = self
                .user_devices
                .get(u)
                .into_iter()
                .flatten()
                .copied()
                .collect();
            devices.sort();
            let start = if i == 0 { after } else { None };
            let mut last = start;
            for d in devices.into_iter().filter(|d| start.is_none_or(|a| *d > a)) {
                if n_listed >= max_devices {
                    complete = i;
                    resume_after = last;
                    break 'users;
                }
                n_listed += 1;
                last = Some(d);
                if let Some(c) = self.certs.get(&d) {
                    registrations.push(c.clone());
                }
                // Only durable revocations: the answer states what the relay keeps.
                let pending = self
                    .staged
                    .revocations
                    .iter()
                    .any(|r| r.revocation.device == d)
                    || self
                        .inflight
                        .as_ref()
                        .is_some_and(|i| i.revocations.contains(&d));
                if let (Some(r), false) = (self.revoked.get(&d), pending) {
                    revocations.push(r.clone());
                }
            }
        }
        // `complete` fits: users are at most MAX_DEVICE_QUERY_USERS.
        let complete = u32::try_from(complete).unwrap_or(u32::MAX);
        self.send(
            session,
            ServerFrame::Devices {
                request_id,
                registrations,
                revocations,
                complete,
                resume_after,
            },
        );
    }
}
