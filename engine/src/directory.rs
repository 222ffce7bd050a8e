//! Which devices act for which user, as this device verified it itself.
//!
//! A relay serves device certificates and revocations (the `Devices` frame), but a device does
//! not take its word: every statement counts only if the user's identity key signed it (the
//! user id is that key, so a certificate needs nothing else to check). The directory is what
//! conversation keys get sealed to: a device certified by its user and not revoked.
//!
//! Rules: a revocation is final (a device revoked once is never accepted again, even if a
//! certificate for it arrives later); a device certified for one user is not accepted for
//! another; a newer certificate of the same device and user replaces the older one (a new
//! X25519 key).

use crate::crypto::AgreementPublic;
use crate::ids::{DeviceId, UserId};
use crate::wire::{DeviceRegistration, DeviceRevocation};
use std::collections::{BTreeMap, BTreeSet};

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
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    user: UserId,
    agreement: AgreementPublic,
    issued_ms: u64,
}

/// Verified device certificates minus revoked devices.
#[derive(Clone, Debug, Default)]
pub struct DeviceDirectory {
    devices: BTreeMap<DeviceId, Entry>,
    /// Revoked devices, with the user who revoked them and when they signed it.
    revoked: BTreeMap<DeviceId, (UserId, u64)>,
    by_user: BTreeMap<UserId, BTreeSet<DeviceId>>,
}

impl DeviceDirectory {
    /// An empty directory.
    pub fn new() -> DeviceDirectory {
        DeviceDirectory::default()
    }

    /// Takes in statements from an untrusted source (revocations first, so a certificate and
    /// its revocation in one answer leave the device out). Returns what was refused.
    pub fn absorb(
        &mut self,
        registrations: &[DeviceRegistration],
        revocations: &[DeviceRevocation],
    ) -> Vec<DirectoryRefusal> {
        let mut refused = Vec::new();
        for r in revocations {
            if let Err(e) = self.revoke(r) {
                refused.push(e);
            }
        }
        for c in registrations {
            if let Err(e) = self.certify(c) {
                refused.push(e);
            }
        }
        refused
    }

    /// Takes in one certificate. `Ok(true)` when it is now the device's certificate,
    /// `Ok(false)` when a newer one was already held.
    pub fn certify(&mut self, cert: &DeviceRegistration) -> Result<bool, DirectoryRefusal> {
        if !cert.verify() {
            return Err(DirectoryRefusal::BadCertificate {
                user: cert.user,
                device: cert.device,
            });
        }
        if self.revoked.contains_key(&cert.device) {
            return Err(DirectoryRefusal::Revoked(cert.device));
        }
        if let Some(e) = self.devices.get(&cert.device) {
            if e.user != cert.user {
                return Err(DirectoryRefusal::OtherUser {
                    device: cert.device,
                    owner: e.user,
                    claimed: cert.user,
                });
            }
            if e.issued_ms >= cert.issued_ms {
                return Ok(false);
            }
        }
        self.devices.insert(
            cert.device,
            Entry {
                user: cert.user,
                agreement: AgreementPublic(cert.agreement),
                issued_ms: cert.issued_ms,
            },
        );
        self.by_user
            .entry(cert.user)
            .or_default()
            .insert(cert.device);
        Ok(true)
    }

    /// Takes in one revocation. A revocation signed by another user than the device's is
    /// refused. `Ok(true)` when it is new.
    pub fn revoke(&mut self, rev: &DeviceRevocation) -> Result<bool, DirectoryRefusal> {
        if !rev.verify() {
            return Err(DirectoryRefusal::BadRevocation {
                user: rev.user,
                device: rev.device,
            });
        }
        if let Some(e) = self.devices.get(&rev.device) {
            if e.user != rev.user {
                return Err(DirectoryRefusal::OtherUser {
                    device: rev.device,
                    owner: e.user,
                    claimed: rev.user,
                });
            }
        }
        if let Some(e) = self.devices.remove(&rev.device) {
            if let Some(set) = self.by_user.get_mut(&e.user) {
                set.remove(&rev.device);
            }
        }
        let issued = self
            .revoked
            .get(&rev.device)
            .map_or(rev.issued_ms, |(_, t)| (*t).min(rev.issued_ms));
        let new = self.revoked.get(&rev.device) != Some(&(rev.user, issued));
        self.revoked.insert(rev.device, (rev.user, issued));
        Ok(new)
    }

    /// The user's devices that are certified and not revoked, with their X25519 keys.
    pub fn devices_of(&self, user: &UserId) -> Vec<(DeviceId, AgreementPublic)> {
        self.by_user
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|d| self.devices.get(d).map(|e| (*d, e.agreement)))
            .collect()
    }

    /// The user a certified, unrevoked device acts for.
    pub fn user_of(&self, device: &DeviceId) -> Option<UserId> {
        self.devices.get(device).map(|e| e.user)
    }

    /// Whether the device was revoked.
    pub fn is_revoked(&self, device: &DeviceId) -> bool {
        self.revoked.contains_key(device)
    }

    /// The user who revoked the device and when (the earliest revocation's time, the user's
    /// clock, ms), if it was revoked.
    pub fn revocation(&self, device: &DeviceId) -> Option<(UserId, u64)> {
        self.revoked.get(device).copied()
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
        // A newer certificate from Alice replaces the X25519 key; an older one does not.
        let rotated = DeviceRegistration::sign(&alice_key, phone.device(), [9; 32], 3);
        dir.certify(&rotated).expect("newer");
        let stale = DeviceRegistration::sign(&alice_key, phone.device(), [8; 32], 2);
        dir.certify(&stale).expect("older is ignored");
        assert_eq!(
            dir.devices_of(&alice),
            vec![(phone.device(), AgreementPublic([9; 32]))]
        );
    }
}
