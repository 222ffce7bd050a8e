//! Opening a replica: [`ReplicaBuilder`] and the settings it takes ([`RelayPin`], [`Profile`],
//! [`Connectivity`], [`Clock`]).

use crate::keystore::Keys;
use crate::{HistoryPolicy, Replica, ReplicaConfig, ReplicaError};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tidings_engine::{DeviceConfig, DeviceId};
use tidings_transport::{Fingerprint, FingerprintError};

/// The relay a device trusts: its key (which signs the order of events) and the SHA-256 of its
/// TLS certificate, parsed from the one string the relay prints on its `pin:` line,
/// `<relay id>@<certificate sha256>` (both lowercase hex).
///
/// ```
/// use tidings_replica::RelayPin;
/// let text = format!("{}@{}", "ab".repeat(32), "cd".repeat(32));
/// let pin: RelayPin = text.parse()?;
/// assert_eq!(pin.to_string(), text);
/// # Ok::<(), tidings_replica::PinError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RelayPin {
    /// The relay's key: the statements that order events must be signed by it.
    pub relay: DeviceId,
    /// SHA-256 of the relay's certificate (DER): the only certificate the device accepts.
    pub cert_sha256: Fingerprint,
}

/// Why a [`RelayPin`] did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// No `@` between the relay id and the fingerprint.
    #[error(
        "a relay pin is <relay id>@<certificate sha256>, as the relay prints it on its `pin:` line"
    )]
    Shape,
    /// The relay id is not 64 hex digits.
    #[error("the relay id before '@' is not 64 hex digits")]
    RelayId,
    /// The fingerprint after `@` does not parse.
    #[error("the certificate sha256 after '@': {0}")]
    Fingerprint(#[from] FingerprintError),
}

impl FromStr for RelayPin {
    type Err = PinError;

    fn from_str(s: &str) -> Result<RelayPin, PinError> {
        let (id, fp) = s.trim().split_once('@').ok_or(PinError::Shape)?;
        let relay = DeviceId::from_hex(id.trim()).ok_or(PinError::RelayId)?;
        let cert_sha256 = fp.parse()?;
        Ok(RelayPin { relay, cert_sha256 })
    }
}

impl fmt::Display for RelayPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.relay, self.cert_sha256)
    }
}

/// How often the device talks to keep its connection, against how soon it notices a dead
/// path. Each keepalive wakes the radio: a phone on battery wants them rare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Profile {
    /// Keepalive every 1 s, a dead path noticed within 5 s (the default).
    #[default]
    Desktop,
    /// Keepalive every 25 s (under the 30 s that most NAT mappings for UDP survive), a dead
    /// path noticed within 60 s. Pair it with the platform's connectivity signal
    /// ([`Connectivity::App`]): a network change is then noticed at once anyway.
    Mobile,
}

impl Profile {
    /// The QUIC keepalive interval.
    pub fn keepalive(self) -> Duration {
        match self {
            Profile::Desktop => Duration::from_secs(1),
            Profile::Mobile => Duration::from_secs(25),
        }
    }

    /// How long a silent connection lives.
    pub fn idle_timeout(self) -> Duration {
        match self {
            Profile::Desktop => Duration::from_secs(5),
            Profile::Mobile => Duration::from_secs(60),
        }
    }

    /// The keepalive and idle timeout to use once the relay said how long it keeps a silent
    /// connection (`Welcome::idle_timeout_ms`). Desktop keeps its own (it wants a dead path
    /// noticed fast). Mobile sleeps as long as the relay lets it: idle timeout the relay's, a
    /// keepalive at three quarters of it (one lost keepalive short of the relay dropping it is
    /// enough margin; at least 1 s). With the default relay (30 s) that is 22.5 s; a relay set
    /// to 300 s for phones lets them wake every 225 s. NAT mappings shorter than that are the
    /// platform's business: mobile platforms reconnect on their own connectivity signal.
    pub fn timing_for_relay(self, relay_idle: Duration) -> (Duration, Duration) {
        match self {
            Profile::Desktop => (self.keepalive(), self.idle_timeout()),
            Profile::Mobile => {
                let idle = relay_idle.max(Duration::from_secs(1));
                ((idle * 3 / 4).max(Duration::from_secs(1)), idle)
            }
        }
    }
}

/// Where the device learns that the network came or went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Connectivity {
    /// The operating system's interface changes (the `if-watch` crate: netlink on Linux), fed
    /// to the same path as [`Replica::network_changed`]: no address at all is offline; an
    /// address appearing retries at once. The default.
    #[default]
    Os,
    /// The app calls [`Replica::network_changed`] itself (mobile platforms, which have their
    /// own signal; tests that cut the network by hand).
    App,
}

/// Where the device reads the time it stamps on its events and runs its timers by.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Opens a [`Replica`]; made by [`Replica::builder`].
///
/// Required: [`relay`](Self::relay) and [`keys`](Self::keys). Everything else has a default:
/// [`Profile::Desktop`], [`Connectivity::Os`], [`SystemClock`], the device protocol's
/// [`DeviceConfig::default`].
///
/// ```no_run
/// # async fn demo(pin: &str) -> Result<(), Box<dyn std::error::Error>> {
/// use tidings_replica::{keystore::Keys, Profile, Replica};
/// let keys = Keys::load("data/alice", None)?;
/// let replica = Replica::builder("data/alice")
///     .relay(["127.0.0.1:4433".parse()?], pin.parse()?)
///     .keys(keys)
///     .profile(Profile::Mobile)
///     .open()
///     .await?;
/// # let _ = replica; Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `open`"]
pub struct ReplicaBuilder {
    dir: PathBuf,
    relay: Option<(Vec<SocketAddr>, RelayPin)>,
    keys: Option<Keys>,
    profile: Profile,
    connectivity: Connectivity,
    clock: Arc<dyn Clock>,
    history: HistoryPolicy,
    device: DeviceConfig,
    read_receipts: bool,
    failed_report_after: Option<Duration>,
}

impl ReplicaBuilder {
    pub(crate) fn new(dir: PathBuf) -> ReplicaBuilder {
        ReplicaBuilder {
            dir,
            relay: None,
            keys: None,
            profile: Profile::default(),
            connectivity: Connectivity::default(),
            clock: Arc::new(SystemClock),
            history: HistoryPolicy::All,
            device: DeviceConfig::default(),
            read_receipts: true,
            failed_report_after: None,
        }
    }

    /// Report a message that has been FAILED for `age` ([`crate::Update::FailedExpired`], once
    /// per failure and process; default: never). Nothing is dropped on its own: the app
    /// retries it ([`crate::Replica::retry`]) or drops it ([`crate::Replica::discard_failed`]).
    pub fn failed_report_after(mut self, age: Duration) -> Self {
        self.failed_report_after = Some(age);
        self
    }

    /// Read receipts (default on). Off, the device tells nobody what its user read (no `Read`
    /// event: senders' ticks stop at ✓✓ delivered and the user's other devices keep their own
    /// unread counts), and, by WhatsApp's rule, shows others' READ as DELIVERED. A per-user
    /// choice: give every device of the user the same value (the `tidings` command keeps it in
    /// its settings file and copies it to a device it links).
    pub fn read_receipts(mut self, on: bool) -> Self {
        self.read_receipts = on;
        self
    }

    /// The relay: its addresses (tried in turn, one per dial) and its pin.
    pub fn relay(mut self, addresses: impl IntoIterator<Item = SocketAddr>, pin: RelayPin) -> Self {
        self.relay = Some((addresses.into_iter().collect(), pin));
        self
    }

    /// The device's keys, from the key store ([`Keys::load`] or [`Keys::create`]).
    pub fn keys(mut self, keys: Keys) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Keepalive and idle timeouts (default [`Profile::Desktop`]).
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// Where network changes come from (default [`Connectivity::Os`]).
    pub fn connectivity(mut self, connectivity: Connectivity) -> Self {
        self.connectivity = connectivity;
        self
    }

    /// The clock (default [`SystemClock`]): a test gives a skewed or stepped one.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How much history a new device of the user gets from this one, and this one takes when
    /// it is new (default [`HistoryPolicy::All`]: every conversation key; `LastDays(n)`: the
    /// epochs in use during the last `n` days, and through the relay only the bodies placed in
    /// them; `Nothing`: neither keys nor bodies from before the device's first catch-up).
    pub fn history(mut self, policy: HistoryPolicy) -> Self {
        self.history = policy;
        self
    }

    /// Outbox, retry, reconnect and catch-up settings (default [`DeviceConfig::default`]).
    /// The registration comes from [`keys`](Self::keys) whatever this holds.
    pub fn device_config(mut self, device: DeviceConfig) -> Self {
        self.device = device;
        self
    }

    /// The settings this builder stands for, for [`Replica::open`].
    pub fn config(self) -> Result<(PathBuf, Keys, ReplicaConfig), ReplicaError> {
        let (addrs, pin) = self.relay.ok_or(ReplicaError::Missing("relay"))?;
        let keys = self.keys.ok_or(ReplicaError::Missing("keys"))?;
        let (first, rest) = addrs
            .split_first()
            .ok_or(ReplicaError::Missing("relay address"))?;
        let mut config = ReplicaConfig::new(*first, pin.relay, pin.cert_sha256);
        config.fallback_addrs = rest.to_vec();
        config.keepalive = self.profile.keepalive();
        config.idle_timeout = self.profile.idle_timeout();
        config.profile = self.profile;
        config.connectivity = self.connectivity;
        config.clock = self.clock;
        config.device = self.device;
        config.device.history = Some(self.history);
        config.device.read_receipts = self.read_receipts;
        if let Some(age) = self.failed_report_after {
            config.device.failed_report_after_ms =
                Some(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        }
        config.device.registration = keys.registration.clone();
        config.storage_key = Some(keys.device.storage_key().clone());
        Ok((self.dir, keys, config))
    }

    /// Opens the replica (see [`Replica::open`]).
    pub async fn open(self) -> Result<Replica, ReplicaError> {
        let (dir, keys, config) = self.config()?;
        Replica::open(dir, keys.device_key(), config).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The history policy reaches the device's config whatever else is set (the device
    /// settings used to be copied over it, so `history` never took effect).
    #[test]
    fn the_history_policy_reaches_the_device() {
        let dir = tempfile::tempdir().expect("tmp");
        let keys = Keys::create(dir.path(), None).expect("keys");
        let pin = RelayPin {
            relay: keys.device_key().device(),
            cert_sha256: Fingerprint::from([7; 32]),
        };
        let (_, _, config) = ReplicaBuilder::new(dir.path().to_path_buf())
            .relay(["127.0.0.1:9".parse().expect("addr")], pin)
            .keys(keys)
            .history(HistoryPolicy::LastDays(3))
            .device_config(DeviceConfig::default())
            .config()
            .expect("config");
        assert_eq!(config.device.history, Some(HistoryPolicy::LastDays(3)));
    }

    #[test]
    fn a_phone_sleeps_as_long_as_the_relay_lets_it_and_a_desktop_does_not() {
        let s = Duration::from_secs;
        assert_eq!(
            Profile::Mobile.timing_for_relay(s(30)),
            (Duration::from_millis(22_500), s(30))
        );
        assert_eq!(Profile::Mobile.timing_for_relay(s(300)), (s(225), s(300)));
        // A relay that keeps silent connections only briefly gets keepalives often enough.
        assert_eq!(
            Profile::Mobile.timing_for_relay(Duration::from_millis(10)),
            (s(1), s(1))
        );
        assert_eq!(
            Profile::Desktop.timing_for_relay(s(300)),
            (
                Profile::Desktop.keepalive(),
                Profile::Desktop.idle_timeout()
            )
        );
    }
}
