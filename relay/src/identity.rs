//! The relay's persistent identity: its ed25519 key (which signs ServerAck events; its
//! DeviceId is what devices pin) and its self-signed TLS certificate (pinned by fingerprint).
//!
//! Files in the data directory:
//! - `relay.key`: the 32-byte ed25519 seed;
//! - `tls.cert.der`: the certificate (DER);
//! - `tls.key.der`: the certificate's private key (PKCS#8 DER).

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use tidings_engine::{DeviceId, DeviceKey, UserId};
use tidings_transport::Fingerprint;

/// Names the certificate is issued for. Devices pin the fingerprint, so the name they dial
/// only has to be one of these.
pub const CERT_NAMES: &[&str] = &["tidings-relay", "localhost"];

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing a file failed.
    #[error("relay identity file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file has the wrong size or content.
    #[error("relay identity file {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// Generating the certificate failed.
    #[error("generating the relay certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// The relay's key and certificate.
#[derive(Debug)]
pub struct RelayIdentity {
    key: DeviceKey,
    cert: CertificateDer<'static>,
    cert_key: PrivatePkcs8KeyDer<'static>,
}

impl Clone for RelayIdentity {
    fn clone(&self) -> Self {
        RelayIdentity {
            key: self.key.clone(),
            cert: self.cert.clone(),
            cert_key: self.cert_key.clone_key(),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

impl RelayIdentity {
    /// A fresh identity from a key seed (the certificate is generated anew).
    pub fn generate(seed: [u8; 32]) -> Result<RelayIdentity, IdentityError> {
        let names: Vec<String> = CERT_NAMES.iter().map(|s| s.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names)?;
        Ok(RelayIdentity {
            key: relay_key(seed),
            cert: certified.cert.der().clone(),
            cert_key: PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()),
        })
    }

    /// Loads the identity from `dir`, creating it (with fresh OS randomness) if absent.
    pub fn load_or_create(dir: &Path) -> Result<RelayIdentity, IdentityError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let key_path = dir.join("relay.key");
        let cert_path = dir.join("tls.cert.der");
        let cert_key_path = dir.join("tls.key.der");
        if !key_path.exists() {
            let id = RelayIdentity::generate(rand::random())?;
            // The certificate first: a crash in between leaves no key, so the next start
            // generates everything again instead of pairing a key with a stale certificate.
            for p in [&cert_path, &cert_key_path] {
                if p.exists() {
                    fs::remove_file(p).map_err(io_err(p))?;
                }
            }
            write_private(&cert_path, &id.cert)?;
            write_private(&cert_key_path, id.cert_key.secret_pkcs8_der())?;
            write_private(&key_path, &id.key.seed())?;
            return Ok(id);
        }
        let seed = fs::read(&key_path).map_err(io_err(&key_path))?;
        let seed: [u8; 32] = seed.try_into().map_err(|_| IdentityError::Invalid {
            path: key_path.clone(),
            reason: "not 32 bytes",
        })?;
        let cert = fs::read(&cert_path).map_err(io_err(&cert_path))?;
        let cert_key = fs::read(&cert_key_path).map_err(io_err(&cert_key_path))?;
        if cert.is_empty() || cert_key.is_empty() {
            return Err(IdentityError::Invalid {
                path: cert_path,
                reason: "empty certificate or key",
            });
        }
        Ok(RelayIdentity {
            key: relay_key(seed),
            cert: CertificateDer::from(cert),
            cert_key: PrivatePkcs8KeyDer::from(cert_key),
        })
    }

    /// The key that signs acks.
    pub fn key(&self) -> &DeviceKey {
        &self.key
    }

    /// The relay's DeviceId (also its UserId in ack headers).
    pub fn relay_id(&self) -> DeviceId {
        self.key.device()
    }

    /// The certificate (DER).
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The certificate's private key.
    pub fn cert_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.cert_key.clone_key())
    }

    /// The fingerprint devices pin: the SHA-256 of the DER certificate, printed as 64
    /// lowercase hex digits.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_cert(&self.cert)
    }
}

/// The relay signs as a device whose user id is its own device id.
fn relay_key(seed: [u8; 32]) -> DeviceKey {
    let device = DeviceKey::from_seed(seed, UserId([0; 32])).device();
    DeviceKey::from_seed(seed, UserId(device.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_across_loads() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = RelayIdentity::load_or_create(dir.path()).expect("create");
        let b = RelayIdentity::load_or_create(dir.path()).expect("load");
        assert_eq!(a.relay_id(), b.relay_id());
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().to_string().len(), 64);
        assert_eq!(a.key().user().0, a.relay_id().0);
        fs::write(dir.path().join("relay.key"), b"short").expect("write");
        assert!(matches!(
            RelayIdentity::load_or_create(dir.path()),
            Err(IdentityError::Invalid { .. })
        ));
    }
}
