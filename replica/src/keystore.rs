//! The device's key material in its data directory.
//!
//! Two files, each written atomically (a temporary file in the same directory, fsync, rename,
//! fsync of the directory) with mode `0600`. Loading refuses a file that group or others can
//! access in any way ([`KeystoreError::InsecurePermissions`]), a file of the wrong length,
//! magic, version or checksum ([`KeystoreError::Malformed`], [`KeystoreError::UnsupportedVersion`])
//! and a wrong passphrase ([`KeystoreError::WrongPassphrase`]).
//!
//! ## `device.key` (133 bytes)
//! | offset | len | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `TDDK` |
//! | 4 | 1 | version = 1 |
//! | 5 | 32 | ed25519 signing seed (the device key) |
//! | 37 | 32 | X25519 seed (the device's key-agreement key) |
//! | 69 | 32 | storage key (data at rest) |
//! | 101 | 32 | SHA-256 of bytes 0..101 (catches a damaged file before it becomes a wrong key) |
//!
//! ## `user.key`
//! | offset | len | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `TDUK` |
//! | 4 | 1 | version = 1 |
//! | 5 | 1 | protection: 0 = plain, 1 = passphrase |
//! | 6 | … | plain: ed25519 seed (32) ‖ SHA-256 of bytes 0..38 (32); passphrase: the output of [`tidings_engine::crypto::wrap_with_passphrase`] (102, authenticated) |
//!
//! Secrets are kept in zeroizing buffers and never appear in `Debug` output or logs. Not
//! covered: the file owner is not checked (std has no portable way to learn our own uid without
//! `unsafe` or another crate), and copies the OS makes (swap, page cache) are out of our hands.

use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tidings_engine::crypto::{self, AgreementSecret, CryptoError, KdfParams, StorageKey};
use tidings_engine::identity::user_id_from_seed;
use tidings_engine::{DeviceKey, UserId};
use zeroize::Zeroizing;

/// File name of the device's secrets in the data directory.
pub const DEVICE_KEY_FILE: &str = "device.key";
/// File name of the user's identity seed in the data directory.
pub const USER_KEY_FILE: &str = "user.key";

const DEVICE_MAGIC: &[u8; 4] = b"TDDK";
const USER_MAGIC: &[u8; 4] = b"TDUK";
const VERSION: u8 = 1;
const DEVICE_LEN: usize = 4 + 1 + 32 * 3 + 32;
const USER_PLAIN: u8 = 0;
const USER_WRAPPED: u8 = 1;
const USER_PLAIN_LEN: usize = 6 + 32 + 32;
/// Key files are tiny; never read more than this from one.
const MAX_FILE_LEN: u64 = 4096;

/// Why key material could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// The key file does not exist (first start: generate and save).
    #[error("{} does not exist", path.display())]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is readable or writable by group or others, or is not a regular file.
    #[error("{} has insecure permissions {mode:o} (must be 0600, owner only)", path.display())]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// Wrong length, magic, checksum or layout.
    #[error("{} is not a valid key file: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A version this build does not know.
    #[error("{} has unsupported version {version}", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u8,
    },
    /// The user key is passphrase-protected and no passphrase was given.
    #[error("the user key is protected by a passphrase")]
    PassphraseRequired,
    /// The passphrase does not open the user key (or the file was tampered with).
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// A cryptographic step failed (e.g. bad key-derivation parameters in the file).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The OS random number generator failed.
    #[error("the OS random number generator failed: {0}")]
    Random(String),
    /// [`Keys::create`] found key files already in the directory (it never overwrites them).
    #[error("{} already exists; keys are never overwritten", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

/// A device's keys as the key store holds them: its secrets, its user's identity seed, and
/// the certificate that seed signs for the device (how the relay learns the device belongs to
/// the user).
///
/// ```
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use tidings_replica::keystore::Keys;
/// let dir = tempfile::tempdir()?;
/// let made = Keys::create(dir.path(), Some(b"correct horse"))?;
/// let loaded = Keys::load(dir.path(), Some(b"correct horse"))?;
/// assert_eq!(made.user, loaded.user);
/// assert_eq!(made.device_key().device(), loaded.device_key().device());
/// # Ok(()) }
/// # demo().unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct Keys {
    /// The device's own secrets.
    pub device: DeviceSecrets,
    /// The user's identity seed.
    pub user_secret: UserSecret,
    /// The user.
    pub user: UserId,
    /// The device's certificate signed by the user's key, presented when the relay does not
    /// know the device yet.
    pub registration: Option<tidings_engine::wire::DeviceRegistration>,
}

impl Keys {
    /// Makes a new user identity and its first device, and saves both in `dir` (the user key
    /// under `passphrase` when given). Refuses to overwrite key files ([`KeystoreError::Exists`]).
    pub fn create(dir: impl AsRef<Path>, passphrase: Option<&[u8]>) -> Result<Keys, KeystoreError> {
        Keys::create_linked(dir, passphrase, UserSecret::generate()?)
    }

    /// Makes a new device of an existing user (whose seed came in a link bundle, see
    /// [`crate::link`]) and saves both in `dir`, like [`Keys::create`].
    pub fn create_linked(
        dir: impl AsRef<Path>,
        passphrase: Option<&[u8]>,
        user_secret: UserSecret,
    ) -> Result<Keys, KeystoreError> {
        let dir = dir.as_ref();
        for name in [DEVICE_KEY_FILE, USER_KEY_FILE] {
            let path = dir.join(name);
            if path.exists() {
                return Err(KeystoreError::Exists { path });
            }
        }
        let device = DeviceSecrets::generate()?;
        device.save(dir)?;
        user_secret.save(dir, passphrase)?;
        Ok(Keys::from_secrets(device, user_secret))
    }

    /// A revocation of `device` (a device of this user) signed by the user's key, for
    /// [`crate::Replica::revoke_device`]. `issued_ms` is the user's clock (Unix ms).
    pub fn revocation(
        &self,
        device: tidings_engine::DeviceId,
        issued_ms: u64,
    ) -> tidings_engine::wire::DeviceRevocation {
        let user_key = DeviceKey::from_seed(*self.user_secret.seed(), self.user);
        tidings_engine::wire::DeviceRevocation::sign(user_key.signing_key(), device, issued_ms)
    }

    /// Loads the keys [`Keys::create`] saved in `dir`; `passphrase` opens a protected user key.
    pub fn load(dir: impl AsRef<Path>, passphrase: Option<&[u8]>) -> Result<Keys, KeystoreError> {
        let dir = dir.as_ref();
        let device = DeviceSecrets::load(dir)?;
        let user_secret = UserSecret::load(dir, passphrase)?;
        Ok(Keys::from_secrets(device, user_secret))
    }

    /// The keys of a device of the user whose seed is `user_secret`.
    pub fn from_secrets(device: DeviceSecrets, user_secret: UserSecret) -> Keys {
        let user = user_secret.user_id();
        let user_key = DeviceKey::from_seed(*user_secret.seed(), user);
        // Issued at 0: the same certificate at every load (ed25519 signatures are
        // deterministic), so the relay sees one registration per device.
        let registration = Some(
            device
                .device_key(user)
                .certificate(user_key.signing_key(), 0),
        );
        Keys {
            device,
            user_secret,
            user,
            registration,
        }
    }

    /// The device's signing and agreement key.
    pub fn device_key(&self) -> DeviceKey {
        self.device.device_key(self.user)
    }
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, KeystoreError> {
    use rand::TryRngCore;
    let mut bytes = Zeroizing::new([0u8; N]);
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes[..])
        .map_err(|e| KeystoreError::Random(e.to_string()))?;
    Ok(bytes)
}

fn checksum(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn take32(bytes: &[u8], at: usize) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Some(src) = bytes.get(at..at + 32) {
        out.copy_from_slice(src);
    }
    out
}

/// The device's own secrets: its ed25519 signing seed, its X25519 key-agreement secret and its
/// storage key for data at rest.
#[derive(Clone)]
pub struct DeviceSecrets {
    signing_seed: Zeroizing<[u8; 32]>,
    agreement: AgreementSecret,
    storage: StorageKey,
}

impl fmt::Debug for DeviceSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceSecrets")
            .field("agreement", &self.agreement.public())
            .finish_non_exhaustive()
    }
}

impl DeviceSecrets {
    /// New secrets from the OS random number generator.
    pub fn generate() -> Result<DeviceSecrets, KeystoreError> {
        let signing = random::<32>()?;
        let agreement = random::<32>()?;
        let storage = random::<32>()?;
        Ok(DeviceSecrets::from_parts(*signing, *agreement, *storage))
    }

    /// Secrets from their bytes (tests, migration).
    pub fn from_parts(
        signing_seed: [u8; 32],
        agreement_seed: [u8; 32],
        storage_key: [u8; 32],
    ) -> DeviceSecrets {
        DeviceSecrets {
            signing_seed: Zeroizing::new(signing_seed),
            agreement: AgreementSecret::from_seed(agreement_seed),
            storage: StorageKey::from_bytes(storage_key),
        }
    }

    /// The ed25519 signing seed (see [`DeviceKey::from_seed`]).
    pub fn signing_seed(&self) -> &[u8; 32] {
        &self.signing_seed
    }

    /// The device's signing key, acting for `user`.
    pub fn device_key(&self, user: UserId) -> DeviceKey {
        DeviceKey::from_seeds(*self.signing_seed, *self.agreement.to_seed(), user)
    }

    /// The X25519 secret that epoch keys are sealed to.
    pub fn agreement(&self) -> &AgreementSecret {
        &self.agreement
    }

    /// The key for local data at rest.
    pub fn storage_key(&self) -> &StorageKey {
        &self.storage
    }

    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(DEVICE_LEN));
        out.extend_from_slice(DEVICE_MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.signing_seed[..]);
        out.extend_from_slice(&self.agreement.to_seed()[..]);
        out.extend_from_slice(self.storage.as_bytes());
        let sum = checksum(&out);
        out.extend_from_slice(&sum);
        out
    }

    fn decode(path: &Path, bytes: &[u8]) -> Result<DeviceSecrets, KeystoreError> {
        let malformed = |reason| KeystoreError::Malformed {
            path: path.to_owned(),
            reason,
        };
        check_magic_and_version(path, bytes, DEVICE_MAGIC, "not a device key file")?;
        if bytes.len() != DEVICE_LEN {
            return Err(malformed("wrong length"));
        }
        if checksum(&bytes[..DEVICE_LEN - 32]) != take32(bytes, DEVICE_LEN - 32) {
            return Err(malformed("checksum mismatch"));
        }
        let signing = Zeroizing::new(take32(bytes, 5));
        let agreement = Zeroizing::new(take32(bytes, 37));
        let storage = Zeroizing::new(take32(bytes, 69));
        Ok(DeviceSecrets::from_parts(*signing, *agreement, *storage))
    }

    /// Loads `dir/device.key`.
    pub fn load(dir: impl AsRef<Path>) -> Result<DeviceSecrets, KeystoreError> {
        let path = dir.as_ref().join(DEVICE_KEY_FILE);
        let bytes = read_secret_file(&path)?;
        DeviceSecrets::decode(&path, &bytes)
    }

    /// Writes `dir/device.key` atomically with mode 0600, creating `dir` (0700) if needed.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), KeystoreError> {
        write_secret_file(dir.as_ref(), DEVICE_KEY_FILE, &self.encode())
    }
}

/// The user's identity seed (ed25519), shared by the user's devices.
#[derive(Clone)]
pub struct UserSecret {
    seed: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for UserSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserSecret")
            .field("user", &self.user_id())
            .finish_non_exhaustive()
    }
}

impl UserSecret {
    /// A new identity from the OS random number generator.
    pub fn generate() -> Result<UserSecret, KeystoreError> {
        Ok(UserSecret {
            seed: random::<32>()?,
        })
    }

    /// The identity from its seed.
    pub fn from_seed(seed: [u8; 32]) -> UserSecret {
        UserSecret {
            seed: Zeroizing::new(seed),
        }
    }

    /// The ed25519 seed.
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// The user id (the identity's public key).
    pub fn user_id(&self) -> UserId {
        user_id_from_seed(*self.seed)
    }

    /// Writes `dir/user.key` atomically with mode 0600: plain, or wrapped under `passphrase`
    /// with [`KdfParams::default`].
    pub fn save(
        &self,
        dir: impl AsRef<Path>,
        passphrase: Option<&[u8]>,
    ) -> Result<(), KeystoreError> {
        self.save_with_params(dir, passphrase, KdfParams::default())
    }

    /// [`UserSecret::save`] with explicit key-derivation parameters (tests use
    /// [`KdfParams::for_tests`]).
    pub fn save_with_params(
        &self,
        dir: impl AsRef<Path>,
        passphrase: Option<&[u8]>,
        params: KdfParams,
    ) -> Result<(), KeystoreError> {
        let mut out = Zeroizing::new(Vec::with_capacity(USER_PLAIN_LEN.max(6 + 102)));
        out.extend_from_slice(USER_MAGIC);
        out.push(VERSION);
        match passphrase {
            None => {
                out.push(USER_PLAIN);
                out.extend_from_slice(&self.seed[..]);
                let sum = checksum(&out);
                out.extend_from_slice(&sum);
            }
            Some(passphrase) => {
                out.push(USER_WRAPPED);
                let salt = random::<16>()?;
                let nonce = random::<24>()?;
                let wrapped =
                    crypto::wrap_with_passphrase(&self.seed, passphrase, *salt, *nonce, params)?;
                out.extend_from_slice(&wrapped);
            }
        }
        write_secret_file(dir.as_ref(), USER_KEY_FILE, &out)
    }

    /// Whether `dir/user.key` is passphrase-protected.
    pub fn is_protected(dir: impl AsRef<Path>) -> Result<bool, KeystoreError> {
        let path = dir.as_ref().join(USER_KEY_FILE);
        let bytes = read_secret_file(&path)?;
        Ok(user_header(&path, &bytes)? == USER_WRAPPED)
    }

    /// Loads `dir/user.key`. A protected file needs `passphrase`
    /// ([`KeystoreError::PassphraseRequired`] without one); a plain file ignores it.
    pub fn load(
        dir: impl AsRef<Path>,
        passphrase: Option<&[u8]>,
    ) -> Result<UserSecret, KeystoreError> {
        let path = dir.as_ref().join(USER_KEY_FILE);
        let bytes = read_secret_file(&path)?;
        UserSecret::decode(&path, &bytes, passphrase)
    }

    fn decode(
        path: &Path,
        bytes: &[u8],
        passphrase: Option<&[u8]>,
    ) -> Result<UserSecret, KeystoreError> {
        let malformed = |reason| KeystoreError::Malformed {
            path: path.to_owned(),
            reason,
        };
        match user_header(path, bytes)? {
            USER_PLAIN => {
                if bytes.len() != USER_PLAIN_LEN {
                    return Err(malformed("wrong length"));
                }
                if checksum(&bytes[..USER_PLAIN_LEN - 32]) != take32(bytes, USER_PLAIN_LEN - 32) {
                    return Err(malformed("checksum mismatch"));
                }
                Ok(UserSecret::from_seed(take32(bytes, 6)))
            }
            _ => {
                let passphrase = passphrase.ok_or(KeystoreError::PassphraseRequired)?;
                let wrapped = bytes.get(6..).unwrap_or_default();
                if !crypto::is_passphrase_wrapped(wrapped) {
                    return Err(malformed("wrong length"));
                }
                match crypto::unwrap_with_passphrase(wrapped, passphrase) {
                    Ok(seed) => Ok(UserSecret { seed }),
                    Err(CryptoError::Decrypt) => Err(KeystoreError::WrongPassphrase),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}

/// Checks a key file's 4-byte magic and its version byte (the layout both files start with).
fn check_magic_and_version(
    path: &Path,
    bytes: &[u8],
    magic: &[u8],
    not_ours: &'static str,
) -> Result<(), KeystoreError> {
    if bytes.get(..4) != Some(magic) {
        return Err(KeystoreError::Malformed {
            path: path.to_owned(),
            reason: not_ours,
        });
    }
    match bytes.get(4) {
        Some(&VERSION) => Ok(()),
        Some(&version) => Err(KeystoreError::UnsupportedVersion {
            path: path.to_owned(),
            version,
        }),
        None => Err(KeystoreError::Malformed {
            path: path.to_owned(),
            reason: "truncated",
        }),
    }
}

/// Checks magic and version and returns the protection byte.
fn user_header(path: &Path, bytes: &[u8]) -> Result<u8, KeystoreError> {
    let malformed = |reason| KeystoreError::Malformed {
        path: path.to_owned(),
        reason,
    };
    check_magic_and_version(path, bytes, USER_MAGIC, "not a user key file")?;
    match bytes.get(5) {
        Some(&p @ (USER_PLAIN | USER_WRAPPED)) => Ok(p),
        Some(_) => Err(malformed("unknown protection")),
        None => Err(malformed("truncated")),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeystoreError + '_ {
    move |source| KeystoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads a key file after checking it is a regular file that only its owner can access.
fn read_secret_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeystoreError::NotFound {
                path: path.to_owned(),
            })
        }
        Err(e) => return Err(io(path)(e)),
    };
    // Check the file we opened, not the path (no race with a swapped file).
    let meta = file.metadata().map_err(io(path))?;
    let mode = meta.mode() & 0o7777;
    if !meta.is_file() || mode & 0o077 != 0 {
        return Err(KeystoreError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(256));
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(KeystoreError::Malformed {
            path: path.to_owned(),
            reason: "too large",
        });
    }
    Ok(bytes)
}

/// Writes `dir/name` atomically: a new 0600 temporary file in `dir`, fsync, rename over the
/// old file, fsync of `dir`. The temporary file is removed if any step fails.
fn write_secret_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), KeystoreError> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    let suffix = random::<8>()?;
    let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(*suffix)));
    let write = || -> Result<(), KeystoreError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        let path = dir.join(name);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(())
    };
    let result = write();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    tracing::debug!(file = name, ok = result.is_ok(), "key file written");
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn device_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            DeviceSecrets::load(dir.path()),
            Err(KeystoreError::NotFound { .. })
        ));
        let secrets = DeviceSecrets::generate().unwrap();
        secrets.save(dir.path()).unwrap();
        let path = dir.path().join(DEVICE_KEY_FILE);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::metadata(&path).unwrap().len(), DEVICE_LEN as u64);
        let loaded = DeviceSecrets::load(dir.path()).unwrap();
        assert_eq!(loaded.signing_seed(), secrets.signing_seed());
        assert_eq!(loaded.agreement().public(), secrets.agreement().public());
        assert_eq!(
            loaded.storage_key().as_bytes(),
            secrets.storage_key().as_bytes()
        );
        let user = UserId([3; 32]);
        assert_eq!(
            loaded.device_key(user).device(),
            secrets.device_key(user).device()
        );
        // The device key publishes the stored X25519 key, not one derived from the seed.
        assert_eq!(
            loaded.device_key(user).agreement_public(),
            secrets.agreement().public()
        );
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [DEVICE_KEY_FILE]);
        // Overwriting keeps the mode.
        DeviceSecrets::generate().unwrap().save(dir.path()).unwrap();
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn save_creates_a_private_directory() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        DeviceSecrets::generate().unwrap().save(&sub).unwrap();
        assert_eq!(mode(&sub), 0o700);
        assert!(DeviceSecrets::load(&sub).is_ok());
    }

    #[test]
    fn group_or_other_access_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        DeviceSecrets::generate().unwrap().save(dir.path()).unwrap();
        UserSecret::generate()
            .unwrap()
            .save(dir.path(), None)
            .unwrap();
        for name in [DEVICE_KEY_FILE, USER_KEY_FILE] {
            let path = dir.path().join(name);
            for bad in [0o644, 0o640, 0o604, 0o620, 0o602, 0o610, 0o601] {
                chmod(&path, bad);
                let err = if name == DEVICE_KEY_FILE {
                    DeviceSecrets::load(dir.path()).unwrap_err()
                } else {
                    UserSecret::load(dir.path(), None).unwrap_err()
                };
                assert!(
                    matches!(err, KeystoreError::InsecurePermissions { mode, .. } if mode == bad),
                    "{name} {bad:o}: {err:?}"
                );
            }
            chmod(&path, 0o400);
        }
        assert!(DeviceSecrets::load(dir.path()).is_ok());
        assert!(UserSecret::load(dir.path(), None).is_ok());
    }

    #[test]
    fn user_plain_and_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let user = UserSecret::generate().unwrap();
        user.save(dir.path(), None).unwrap();
        assert!(!UserSecret::is_protected(dir.path()).unwrap());
        assert_eq!(mode(&dir.path().join(USER_KEY_FILE)), 0o600);
        let loaded = UserSecret::load(dir.path(), None).unwrap();
        assert_eq!(loaded.seed(), user.seed());
        assert_eq!(loaded.user_id(), user.user_id());

        user.save_with_params(dir.path(), Some(b"hunter2"), KdfParams::for_tests())
            .unwrap();
        assert!(UserSecret::is_protected(dir.path()).unwrap());
        assert_eq!(mode(&dir.path().join(USER_KEY_FILE)), 0o600);
        assert!(matches!(
            UserSecret::load(dir.path(), None),
            Err(KeystoreError::PassphraseRequired)
        ));
        assert!(matches!(
            UserSecret::load(dir.path(), Some(b"hunter3")),
            Err(KeystoreError::WrongPassphrase)
        ));
        let loaded = UserSecret::load(dir.path(), Some(b"hunter2")).unwrap();
        assert_eq!(loaded.seed(), user.seed());
    }

    proptest::proptest! {
        /// Any file content is an error or a key, never a panic.
        #[test]
        fn arbitrary_file_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            device in proptest::prelude::any::<bool>(),
        ) {
            let path = Path::new("key");
            let mut bytes = bytes;
            if device && bytes.len() >= 5 {
                bytes[..4].copy_from_slice(DEVICE_MAGIC);
                bytes[4] = VERSION;
            }
            if !device && bytes.len() >= 6 {
                bytes[..4].copy_from_slice(USER_MAGIC);
                bytes[4] = VERSION;
            }
            let _ = DeviceSecrets::decode(path, &bytes);
            // Without a passphrase no Argon2 runs (a random in-range cost could take seconds).
            let _ = UserSecret::decode(path, &bytes, None);
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let d = DeviceSecrets::from_parts([0xaa; 32], [0xbb; 32], [0xcc; 32]);
        let u = UserSecret::from_seed([0xdd; 32]);
        let shown = format!("{d:?} {u:?}");
        for needle in [
            "aaaa", "bbbb", "cccc", "dddd", "170, 170", "187, 187", "204, 204", "221, 221",
        ] {
            assert!(!shown.contains(needle), "{needle} in {shown}");
        }
    }

    /// Writes `bytes` as a 0600 key file (no fsync: thousands of these per test).
    fn put(dir: &Path, name: &str, bytes: &[u8]) {
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        chmod(&path, 0o600);
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = DeviceSecrets::from_parts([1; 32], [2; 32], [3; 32]);
        let good = secrets.encode().to_vec();
        // Every truncation, every flipped bit.
        for len in 0..good.len() {
            put(dir.path(), DEVICE_KEY_FILE, &good[..len]);
            assert!(
                matches!(
                    DeviceSecrets::load(dir.path()),
                    Err(KeystoreError::Malformed { .. })
                ),
                "{len}"
            );
        }
        for i in 0..good.len() * 8 {
            let mut b = good.clone();
            b[i / 8] ^= 1 << (i % 8);
            put(dir.path(), DEVICE_KEY_FILE, &b);
            assert!(
                matches!(
                    DeviceSecrets::load(dir.path()),
                    Err(KeystoreError::Malformed { .. } | KeystoreError::UnsupportedVersion { .. })
                ),
                "bit {i}"
            );
        }
        let mut v2 = good.clone();
        v2[4] = 2;
        put(dir.path(), DEVICE_KEY_FILE, &v2);
        assert!(matches!(
            DeviceSecrets::load(dir.path()),
            Err(KeystoreError::UnsupportedVersion { version: 2, .. })
        ));
        put(dir.path(), DEVICE_KEY_FILE, &vec![0x5a; 10_000]);
        assert!(matches!(
            DeviceSecrets::load(dir.path()),
            Err(KeystoreError::Malformed { .. })
        ));

        // User key: plain and wrapped, truncated.
        let user = UserSecret::from_seed([4; 32]);
        for passphrase in [None, Some(&b"pw"[..])] {
            user.save_with_params(dir.path(), passphrase, KdfParams::for_tests())
                .unwrap();
            let good = fs::read(dir.path().join(USER_KEY_FILE)).unwrap();
            for len in 0..good.len() {
                put(dir.path(), USER_KEY_FILE, &good[..len]);
                let err = UserSecret::load(dir.path(), passphrase).unwrap_err();
                assert!(
                    matches!(err, KeystoreError::Malformed { .. }),
                    "{len}: {err:?}"
                );
            }
            for i in 0..good.len() * 8 {
                let mut b = good.clone();
                b[i / 8] ^= 1 << (i % 8);
                put(dir.path(), USER_KEY_FILE, &b);
                // Some flips land in Argon2 parameters: keep them cheap by bounding what we try.
                if passphrase.is_some() && (8..20).contains(&(i / 8)) {
                    continue;
                }
                assert!(
                    UserSecret::load(dir.path(), Some(b"pw")).is_err(),
                    "bit {i}"
                );
            }
        }
        // Garbage.
        put(dir.path(), USER_KEY_FILE, b"hello, I am not a key");
        assert!(matches!(
            UserSecret::load(dir.path(), None),
            Err(KeystoreError::Malformed { .. })
        ));
    }
}
