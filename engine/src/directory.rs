//! Which devices act for which user, as this device verified it itself.
//!
//! A relay serves device certificates and revocations (the `Devices` frame), but a device does
//! not take its word: every statement counts only if the user's identity key signed it (the
//! user id is that key, so a certificate needs nothing else to check). The directory is what
//! conversation keys get sealed to: a device certified by its user and not revoked.
//!
//! Rules (one set, used by devices here and by the relay when it registers and revokes,
//! through [`check_certificate`] and [`check_revocation`]):
//! - a revocation counts only when signed by the user that certified the device; one for a
//!   device not certified yet is kept pending under (device, user) and applied when a
//!   certificate of that same user arrives; a pending one of another user is then dropped;
//! - a revocation is final (a device revoked once is never accepted again);
//! - a device certified for one user is not accepted for another;
//! - a device's X25519 agreement key is fixed for its lifetime: a certificate of a known
//!   device with another key is refused ([`DirectoryRefusal::AgreementChanged`]); a newer
//!   certificate with the same keys renews it;
//! - a user has at most [`MAX_DEVICES_PER_USER`] device ids, revoked ones included.

use crate::crypto::AgreementPublic;
use crate::ids::{DeviceId, UserId};
use crate::wire::{DeviceRegistration, DeviceRevocation};
use std::collections::{BTreeMap, BTreeSet};

/// Most device ids one user may ever certify, revoked ones included. Revocations are kept
/// for good (a revoked device still holds a valid old certificate that could be replayed if
/// the revocation were forgotten), so every id a user ever certified is state kept forever:
/// counting revoked ids is what bounds it (a relay's and a device's directory, and the
/// `Devices` answers about one user).
pub const MAX_DEVICES_PER_USER: usize = 256;
/// Most revocations a device keeps pending (their device not certified yet); more are
/// dropped (the relay serves a revocation with its certificate, so nothing is lost).
pub const MAX_PENDING_REVOCATIONS: usize = 4096;

/// Why a statement was not taken into the directory.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryRefusal {
    /// The user's signature does not verify.
    #[error("certificate of device {device} does not verify under user {user}'s key")]
    BadCertificate {
        /// The claimed user.
        user: UserId,
        /// The device.
        device: DeviceId,
    },
    /// The revocation's signature does not verify.
    #[error("revocation of device {device} does not verify under user {user}'s key")]
    BadRevocation {
        /// The claimed user.
        user: UserId,
        /// The device.
        device: DeviceId,
    },
    /// The device is certified for another user already.
    #[error("device {device} belongs to user {owner}, not {claimed}")]
    OtherUser {
        /// The device.
        device: DeviceId,
        /// Its user in the directory.
        owner: UserId,
        /// The user the statement names.
        claimed: UserId,
    },
    /// The device was revoked: no certificate brings it back.
    #[error("device {0} is revoked")]
    Revoked(DeviceId),
    /// A certificate of a known device with another agreement key (a takeover attempt by
    /// whoever holds the user key, or a mistake): refused, the device keeps its key.
    #[error("device {device} of user {user} already has another agreement key")]
    AgreementChanged {
        /// The device.
        device: DeviceId,
        /// Its user.
        user: UserId,
    },
    /// The user has [`MAX_DEVICES_PER_USER`] device ids already.
    #[error("user {user} has {max} devices already")]
    TooManyDevices {
        /// The user.
        user: UserId,
        /// The limit.
        max: usize,
    },
    /// [`MAX_PENDING_REVOCATIONS`] revocations wait for their certificates already.
    #[error("too many pending revocations ({max})")]
    TooManyPending {
        /// The limit.
        max: usize,
    },
}

/// What [`check_certificate`] found a valid certificate to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateCheck {
    /// The device's first certificate.
    New,
    /// A newer certificate of a known device with the same keys.
    Renewal,
    /// The same or an older certificate than the one held: nothing to store.
    Held,
}

/// The certificate rule: `held` is the certificate kept for the device (if any), `revoked`
/// whether it was revoked, `n_user_devices` how many device ids `cert.user` has (revoked
/// ones included).
pub fn check_certificate(
    cert: &DeviceRegistration,
    held: Option<&DeviceRegistration>,
    revoked: bool,
    n_user_devices: usize,
) -> Result<CertificateCheck, DirectoryRefusal> {
    if !cert.verify() {
        return Err(DirectoryRefusal::BadCertificate {
            user: cert.user,
            device: cert.device,
        });
    }
    if revoked {
        return Err(DirectoryRefusal::Revoked(cert.device));
    }
    let Some(held) = held else {
        if n_user_devices >= MAX_DEVICES_PER_USER {
            return Err(DirectoryRefusal::TooManyDevices {
                user: cert.user,
                max: MAX_DEVICES_PER_USER,
            });
        }
        return Ok(CertificateCheck::New);
    };
    if held.user != cert.user {
        return Err(DirectoryRefusal::OtherUser {
            device: cert.device,
            owner: held.user,
            claimed: cert.user,
        });
    }
    if held.agreement != cert.agreement {
        return Err(DirectoryRefusal::AgreementChanged {
            device: cert.device,
            user: cert.user,
        });
    }
    if held.issued_ms >= cert.issued_ms {
        return Ok(CertificateCheck::Held);
    }
    Ok(CertificateCheck::Renewal)
}

/// What [`check_revocation`] found a valid revocation to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevocationCheck {
    /// Signed by the user that certified the device: it applies.
    Applies,
    /// The device has no certificate yet: it may apply once one of the same user arrives.
    Pending,
}

/// The revocation rule: `certified_by` is the user whose certificate of the device is held.
pub fn check_revocation(
    rev: &DeviceRevocation,
    certified_by: Option<UserId>,
) -> Result<RevocationCheck, DirectoryRefusal> {
    if !rev.verify() {
        return Err(DirectoryRefusal::BadRevocation {
            user: rev.user,
            device: rev.device,
        });
    }
    match certified_by {
        Some(owner) if owner != rev.user => Err(DirectoryRefusal::OtherUser {
            device: rev.device,
            owner,
            claimed: rev.user,
        }),
        Some(_) => Ok(RevocationCheck::Applies),
        None => Ok(RevocationCheck::Pending),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    cert: DeviceRegistration,
    /// When the device's user revoked it (the earliest revocation's time, ms), if it did.
    revoked_ms: Option<u64>,
}

/// What [`DeviceDirectory::certify`] did with a valid certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Certified {
    /// Taken in (new device or renewal): keep it.
    New,
    /// The same or an older certificate was held: nothing changed.
    Held,
    /// Taken in, and a revocation its user signed earlier, pending until now, applies: keep
    /// both.
    Revoked(DeviceRevocation),
}

/// What [`DeviceDirectory::revoke`] did with a valid revocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// The device is now revoked (or revoked earlier than known): keep it.
    New,
    /// Nothing changed.
    Held,
    /// The device is not certified yet: kept pending (not stored).
    Pending,
}

/// Verified device certificates, their revocations and revocations pending a certificate.
#[derive(Clone, Debug, Default)]
pub struct DeviceDirectory {
    devices: BTreeMap<DeviceId, Entry>,
    /// Every device id certified per user, revoked ones included.
    by_user: BTreeMap<UserId, BTreeSet<DeviceId>>,
    pending: BTreeMap<(DeviceId, UserId), DeviceRevocation>,
}

impl DeviceDirectory {
    /// An empty directory.
    pub fn new() -> DeviceDirectory {
        DeviceDirectory::default()
    }

    /// Takes in statements from an untrusted source (certificates first; a revocation whose
    /// certificate is missing waits for it). Returns what was refused.
    pub fn absorb(
        &mut self,
        registrations: &[DeviceRegistration],
        revocations: &[DeviceRevocation],
    ) -> Vec<DirectoryRefusal> {
        let mut refused = Vec::new();
        for c in registrations {
            if let Err(e) = self.certify(c) {
                refused.push(e);
            }
        }
        for r in revocations {
            if let Err(e) = self.revoke(r) {
                refused.push(e);
            }
        }
        refused
    }

    /// Takes in one certificate (see the module rules).
    pub fn certify(&mut self, cert: &DeviceRegistration) -> Result<Certified, DirectoryRefusal> {
        let held = self.devices.get(&cert.device);
        let revoked = held.is_some_and(|e| e.revoked_ms.is_some());
        let n = self.by_user.get(&cert.user).map_or(0, BTreeSet::len);
        match check_certificate(cert, held.map(|e| &e.cert), revoked, n)? {
            CertificateCheck::Held => return Ok(Certified::Held),
            CertificateCheck::Renewal => {
                if let Some(e) = self.devices.get_mut(&cert.device) {
                    e.cert = cert.clone();
                }
                return Ok(Certified::New);
            }
            CertificateCheck::New => {}
        }
        self.devices.insert(
            cert.device,
            Entry {
                cert: cert.clone(),
                revoked_ms: None,
            },
        );
        self.by_user
            .entry(cert.user)
            .or_default()
            .insert(cert.device);
        // Pending revocations of this device: its user's applies, the others' are dropped.
        let lo = (cert.device, UserId([0; 32]));
        let hi = (cert.device, UserId([0xff; 32]));
        let waiting: Vec<(DeviceId, UserId)> =
            self.pending.range(lo..=hi).map(|(k, _)| *k).collect();
        let mut applied = None;
        for k in waiting {
            if let Some(rev) = self.pending.remove(&k) {
                if k.1 == cert.user {
                    applied = Some(rev);
                }
            }
        }
        match applied {
            Some(rev) => {
                self.revoke(&rev)?;
                Ok(Certified::Revoked(rev))
            }
            None => Ok(Certified::New),
        }
    }

    /// Takes in one revocation (see the module rules).
    pub fn revoke(&mut self, rev: &DeviceRevocation) -> Result<Revoked, DirectoryRefusal> {
        let owner = self.devices.get(&rev.device).map(|e| e.cert.user);
        match check_revocation(rev, owner)? {
            RevocationCheck::Pending => {
                let key = (rev.device, rev.user);
                let earlier = self
                    .pending
                    .get(&key)
                    .is_some_and(|p| p.issued_ms <= rev.issued_ms);
                if !earlier {
                    if !self.pending.contains_key(&key)
                        && self.pending.len() >= MAX_PENDING_REVOCATIONS
                    {
                        return Err(DirectoryRefusal::TooManyPending {
                            max: MAX_PENDING_REVOCATIONS,
                        });
                    }
                    self.pending.insert(key, rev.clone());
                }
                Ok(Revoked::Pending)
            }
            RevocationCheck::Applies => {
                let Some(e) = self.devices.get_mut(&rev.device) else {
                    return Ok(Revoked::Held);
                };
                match e.revoked_ms {
                    Some(t) if t <= rev.issued_ms => Ok(Revoked::Held),
                    _ => {
                        e.revoked_ms = Some(rev.issued_ms);
                        Ok(Revoked::New)
                    }
                }
            }
        }
    }

    /// The user's devices that are certified and not revoked, with their X25519 keys.
    pub fn devices_of(&self, user: &UserId) -> Vec<(DeviceId, AgreementPublic)> {
        self.by_user
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|d| self.devices.get(d).map(|e| (d, e)))
            .filter(|(_, e)| e.revoked_ms.is_none())
            .map(|(d, e)| (*d, AgreementPublic(e.cert.agreement)))
            .collect()
    }

    /// Every device of the user this directory holds a certificate of, revoked ones
    /// included, in id order, each with whether it is revoked.
    pub fn all_devices_of(&self, user: &UserId) -> Vec<(DeviceId, bool)> {
        self.by_user
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|d| self.devices.get(d).map(|e| (*d, e.revoked_ms.is_some())))
            .collect()
    }

    /// The X25519 key of `device` when it is a certified, unrevoked device of `user`.
    pub fn agreement_of(&self, device: &DeviceId, user: &UserId) -> Option<AgreementPublic> {
        self.devices
            .get(device)
            .filter(|e| e.revoked_ms.is_none() && e.cert.user == *user)
            .map(|e| AgreementPublic(e.cert.agreement))
    }

    /// The user a certified, unrevoked device acts for.
    pub fn user_of(&self, device: &DeviceId) -> Option<UserId> {
        self.devices
            .get(device)
            .filter(|e| e.revoked_ms.is_none())
            .map(|e| e.cert.user)
    }

    /// Whether the device was revoked.
    pub fn is_revoked(&self, device: &DeviceId) -> bool {
        self.revocation(device).is_some()
    }

    /// The user who revoked the device (the user that certified it) and when (the earliest
    /// revocation's time, the user's clock, ms), if it was revoked.
    pub fn revocation(&self, device: &DeviceId) -> Option<(UserId, u64)> {
        self.devices
            .get(device)
            .and_then(|e| e.revoked_ms.map(|t| (e.cert.user, t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::DeviceKey;
    use ed25519_dalek::SigningKey;

    fn user(seed: u8) -> (SigningKey, UserId) {
        let k = SigningKey::from_bytes(&[seed; 32]);
        let id = UserId(k.verifying_key().to_bytes());
        (k, id)
    }

    #[test]
    fn only_statements_signed_by_the_user_count() {
        let (alice_key, alice) = user(1);
        let (mallory_key, _) = user(2);
        let phone = DeviceKey::from_seed([11; 32], alice);
        let laptop = DeviceKey::from_seed([12; 32], alice);
        let mut dir = DeviceDirectory::new();
        // A certificate Mallory signed, claiming to be Alice's: refused.
        let mut forged = laptop.certificate(&mallory_key, 1);
        forged.user = alice;
        let good = [
            phone.certificate(&alice_key, 1),
            laptop.certificate(&alice_key, 1),
        ];
        let refused = dir.absorb(&[forged, good[0].clone(), good[1].clone()], &[]);
        assert_eq!(
            refused,
            vec![DirectoryRefusal::BadCertificate {
                user: alice,
                device: laptop.device()
            }]
        );
        let mut devices = dir.devices_of(&alice);
        devices.sort();
        let mut want = vec![
            (phone.device(), phone.agreement_public()),
            (laptop.device(), laptop.agreement_public()),
        ];
        want.sort();
        assert_eq!(devices, want);
        // A revocation Mallory signed for Alice's laptop: refused; Alice's own: final.
        let mut fake = DeviceRevocation::sign(&mallory_key, laptop.device(), 2);
        fake.user = alice;
        assert!(matches!(
            dir.revoke(&fake),
            Err(DirectoryRefusal::BadRevocation { .. })
        ));
        let rev = DeviceRevocation::sign(&alice_key, laptop.device(), 2);
        assert_eq!(dir.absorb(&[], &[rev]), vec![]);
        assert_eq!(
            dir.devices_of(&alice),
            vec![(phone.device(), phone.agreement_public())]
        );
        assert!(dir.is_revoked(&laptop.device()));
        assert_eq!(
            dir.certify(&laptop.certificate(&alice_key, 9)),
            Err(DirectoryRefusal::Revoked(laptop.device()))
        );
    }

    #[test]
    fn a_device_belongs_to_one_user() {
        let (alice_key, alice) = user(1);
        let (bob_key, bob) = user(2);
        let phone = DeviceKey::from_seed([11; 32], alice);
        let mut dir = DeviceDirectory::new();
        dir.certify(&phone.certificate(&alice_key, 1))
            .expect("alice's");
        // Bob signs a certificate for Alice's phone: refused, and so is his revocation of it.
        let theft = DeviceRegistration::sign(&bob_key, phone.device(), [7; 32], 5);
        assert_eq!(
            dir.certify(&theft),
            Err(DirectoryRefusal::OtherUser {
                device: phone.device(),
                owner: alice,
                claimed: bob
            })
        );
        let rev = DeviceRevocation::sign(&bob_key, phone.device(), 5);
        assert!(matches!(
            dir.revoke(&rev),
            Err(DirectoryRefusal::OtherUser { .. })
        ));
        assert_eq!(dir.user_of(&phone.device()), Some(alice));
        // The agreement key is fixed: a newer certificate with another key is refused (it
        // was "newer wins" before issue #12); one with the same keys renews it.
        let rotated = DeviceRegistration::sign(&alice_key, phone.device(), [9; 32], 3);
        assert_eq!(
            dir.certify(&rotated),
            Err(DirectoryRefusal::AgreementChanged {
                device: phone.device(),
                user: alice
            })
        );
        let renewed = phone.certificate(&alice_key, 4);
        assert_eq!(dir.certify(&renewed), Ok(Certified::New));
        assert_eq!(dir.certify(&renewed), Ok(Certified::Held));
        assert_eq!(
            dir.devices_of(&alice),
            vec![(phone.device(), phone.agreement_public())]
        );
    }

    /// Issue #12, "Revocation by anyone": a revocation of a device the directory has not
    /// certified yet was taken whoever signed it, and revocations were applied before
    /// certificates, so Mallory could ban Alice's phone for good before it was ever seen.
    #[test]
    fn a_revocation_counts_only_from_the_user_that_certified_the_device() {
        let (alice_key, alice) = user(1);
        let (mallory_key, _) = user(2);
        let phone = DeviceKey::from_seed([11; 32], alice);
        let laptop = DeviceKey::from_seed([12; 32], alice);
        let tablet = DeviceKey::from_seed([13; 32], alice);
        let mut dir = DeviceDirectory::new();
        // Mallory's revocation of the phone, with a valid signature of Mallory, comes first.
        let theirs = DeviceRevocation::sign(&mallory_key, phone.device(), 1);
        let _ = dir.revoke(&theirs);
        assert!(!dir.is_revoked(&phone.device()));
        // In one answer, a certificate and a foreign revocation: the device stays.
        let laptop_ban = DeviceRevocation::sign(&mallory_key, laptop.device(), 1);
        let _ = dir.absorb(&[laptop.certificate(&alice_key, 1)], &[laptop_ban]);
        dir.certify(&phone.certificate(&alice_key, 2))
            .expect("Alice's certificate of her phone");
        let mut devices = dir.devices_of(&alice);
        devices.sort();
        let mut want = vec![
            (phone.device(), phone.agreement_public()),
            (laptop.device(), laptop.agreement_public()),
        ];
        want.sort();
        assert_eq!(
            devices, want,
            "a revocation signed by Mallory banned Alice's device"
        );
        // Alice's own revocation of a device not seen yet waits for its certificate.
        let own = DeviceRevocation::sign(&alice_key, tablet.device(), 5);
        let _ = dir.revoke(&own);
        assert!(!dir.is_revoked(&tablet.device()));
        let _ = dir.certify(&tablet.certificate(&alice_key, 3));
        assert!(dir.is_revoked(&tablet.device()));
        assert_eq!(dir.revocation(&tablet.device()), Some((alice, 5)));
    }

    /// Issue #12, "Re-certification takeover": whoever holds the user key could certify an
    /// existing device id again with another X25519 key ("newer wins") and receive the
    /// epoch keys sealed to that device from then on.
    #[test]
    fn a_devices_agreement_key_is_fixed_for_its_lifetime() {
        let (alice_key, alice) = user(1);
        let phone = DeviceKey::from_seed([11; 32], alice);
        let mut dir = DeviceDirectory::new();
        dir.certify(&phone.certificate(&alice_key, 1))
            .expect("first");
        let takeover = DeviceRegistration::sign(&alice_key, phone.device(), [66; 32], 9);
        assert!(matches!(
            dir.certify(&takeover),
            Err(DirectoryRefusal::AgreementChanged { .. })
        ));
        assert_eq!(
            dir.devices_of(&alice),
            vec![(phone.device(), phone.agreement_public())],
            "a newer certificate replaced the device's agreement key"
        );
    }
}
