//! Finding peers on the LAN by DNS-SD over multicast DNS (RFC 6762, RFC 6763), with the
//! `mdns-sd` crate: a [`PeerLink`] advertises itself under [`SERVICE_TYPE`] and browses for
//! other devices advertising the same.
//!
//! The record names no device: its instance name is random per session, and its TXT record
//! carries a fresh nonce and a blinded tag `SHA-256(BLIND_CONTEXT ‖ nonce ‖ device id)[..16]`.
//! Only a device that already knows the device id (it admits it: the two share a
//! conversation) can tell whose record it is; [`MdnsDiscovery::peers`] returns exactly those.
//! Discovery never grants trust: the peer link still proves each side's device key in the
//! handshake and admits only devices its directory places in a shared conversation. The
//! record's layout is in docs/PROTOCOL.md, what it reveals in docs/SECURITY.md.

use super::{Discovery, PeerAddr, PeerLink};
use mdns_sd::{ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidings_engine::DeviceId;
use tidings_transport::PeerAllowList;
use tokio::task::JoinHandle;

/// The DNS-SD service type tidings peers advertise and browse.
pub const SERVICE_TYPE: &str = "_tidings._udp.local.";
/// The discovery record's version (TXT key `v`); records of other versions are ignored.
pub const MDNS_RECORD_VERSION: &str = "1";
/// Most other devices' records kept at once; past it new records are ignored until one is
/// withdrawn (a LAN full of advertisers cannot grow this device's memory).
pub const MAX_SIGHTINGS: usize = 256;
/// Longest wait for the withdrawal (goodbye) to go out on [`MdnsDiscovery::close`].
pub const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(2);
/// Domain separation for the blinded device tag.
pub const BLIND_CONTEXT: &[u8] = b"tidings mdns blind v1";
/// Bytes of the per-session nonce (TXT key `n`, hex).
pub const NONCE_LEN: usize = 16;
/// Bytes of the blinded tag (TXT key `b`, hex).
pub const TAG_LEN: usize = 16;
/// Bytes of the random instance name (hex in the record).
const INSTANCE_LEN: usize = 8;

/// Settings of LAN discovery.
#[derive(Clone, Debug)]
pub struct MdnsConfig {
    mdns_port: u16,
}

impl Default for MdnsConfig {
    fn default() -> MdnsConfig {
        MdnsConfig {
            mdns_port: mdns_sd::MDNS_PORT,
        }
    }
}

impl MdnsConfig {
    /// The UDP port of multicast DNS (5353 by default; advertisers and browsers must agree,
    /// another one keeps tests apart from the host's own responder).
    pub fn mdns_port(mut self, port: u16) -> MdnsConfig {
        self.mdns_port = port;
        self
    }
}

/// Starting or stopping LAN discovery failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The mDNS daemon refused (no socket, a bad record).
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
    /// The peer link has no address to advertise.
    #[error("the peer link has no local address: {0}")]
    LocalAddr(String),
}

/// Another device's record, as seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sighting {
    nonce: [u8; NONCE_LEN],
    tag: [u8; TAG_LEN],
    addr: SocketAddr,
}

/// This device advertised on the LAN, and the records of others it sees. Dropping it withdraws
/// the advertisement too, without waiting for the goodbye to go out; [`MdnsDiscovery::close`]
/// waits.
pub struct MdnsDiscovery {
    daemon: ServiceDaemon,
    fullname: String,
    sightings: Arc<Mutex<HashMap<String, Sighting>>>,
    candidates: Arc<PeerAllowList>,
    browser: JoinHandle<()>,
    closed: bool,
}

impl fmt::Debug for MdnsDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MdnsDiscovery")
            .field("fullname", &self.fullname)
            .field("n_sightings", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl PeerLink {
    /// Advertises this link on the LAN and browses for other devices (see [`mdns`](self)).
    /// The link should listen on an unspecified address (`0.0.0.0:0`): the record carries the
    /// host's interface addresses and the link's port. Needs a tokio runtime.
    pub fn advertise(&self, config: MdnsConfig) -> Result<MdnsDiscovery, DiscoveryError> {
        let port = self
            .local_addr()
            .map_err(|e| DiscoveryError::LocalAddr(e.to_string()))?
            .port();
        MdnsDiscovery::start(self.config.device(), port, self.allow.clone(), config)
    }
}

impl MdnsDiscovery {
    /// Advertises `device` at `port` and browses; `candidates` are the devices it may
    /// recognise (the peer link's admitted set, kept current by the link).
    pub fn start(
        device: DeviceId,
        port: u16,
        candidates: Arc<PeerAllowList>,
        config: MdnsConfig,
    ) -> Result<MdnsDiscovery, DiscoveryError> {
        let daemon = ServiceDaemon::new_with_port(config.mdns_port)?;
        let nonce: [u8; NONCE_LEN] = rand::random();
        let instance = hex::encode(rand::random::<[u8; INSTANCE_LEN]>());
        let host = format!("{instance}.local.");
        let (v, n, b) = (
            MDNS_RECORD_VERSION.to_string(),
            hex::encode(nonce),
            hex::encode(blind(&nonce, device)),
        );
        let txt = [("v", v.as_str()), ("n", n.as_str()), ("b", b.as_str())];
        let info = ServiceInfo::new(SERVICE_TYPE, &instance, &host, (), port, &txt[..])?
            .enable_addr_auto();
        let fullname = info.get_fullname().to_string();
        let events = daemon.browse(SERVICE_TYPE)?;
        daemon.register(info)?;
        let sightings = Arc::new(Mutex::new(HashMap::new()));
        let browser = tokio::spawn(browse(events, fullname.clone(), sightings.clone()));
        Ok(MdnsDiscovery {
            daemon,
            fullname,
            sightings,
            candidates,
            browser,
            closed: false,
        })
    }

    /// This device's record name (random per session).
    pub fn instance_fullname(&self) -> &str {
        &self.fullname
    }

    /// Withdraws the advertisement (a goodbye record, so that others forget it now rather
    /// than when its TTL ends) and stops browsing.
    pub async fn close(mut self) -> Result<(), DiscoveryError> {
        self.closed = true;
        self.browser.abort();
        let withdrawn = self.daemon.unregister(&self.fullname)?;
        // The goodbye goes out before the status comes back; past the timeout the record
        // simply expires on the others' side.
        let _ = tokio::time::timeout(WITHDRAW_TIMEOUT, withdrawn.recv_async()).await;
        let stopped = self.daemon.shutdown()?;
        let _ = tokio::time::timeout(WITHDRAW_TIMEOUT, stopped.recv_async()).await;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Sighting>> {
        self.sightings.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for MdnsDiscovery {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        self.browser.abort();
        if let Err(e) = self.daemon.unregister(&self.fullname) {
            tracing::debug!(error = %e, "mDNS record not withdrawn");
        }
        if let Err(e) = self.daemon.shutdown() {
            tracing::debug!(error = %e, "mDNS daemon not stopped");
        }
    }
}

impl Discovery for MdnsDiscovery {
    /// The devices seen on the LAN that this device admits, each at one address.
    fn peers(&self) -> Vec<PeerAddr> {
        let candidates = self.candidates.devices();
        let mut found: Vec<PeerAddr> = Vec::new();
        let mut seen: Vec<Sighting> = self.lock().values().copied().collect();
        // One answer per device whatever the order the records came in.
        seen.sort_by_key(|s| (s.addr, s.nonce));
        for s in seen {
            let Some(device) = candidates
                .iter()
                .copied()
                .find(|d| blind(&s.nonce, *d) == s.tag)
            else {
                continue;
            };
            if found.iter().all(|p| p.device != device) {
                found.push(PeerAddr {
                    device,
                    addr: s.addr,
                });
            }
        }
        found
    }
}

/// The blinded tag of `device` under `nonce`.
pub fn blind(nonce: &[u8; NONCE_LEN], device: DeviceId) -> [u8; TAG_LEN] {
    let digest = Sha256::new()
        .chain_update(BLIND_CONTEXT)
        .chain_update(nonce)
        .chain_update(device.0)
        .finalize();
    let mut tag = [0; TAG_LEN];
    tag.copy_from_slice(&digest[..TAG_LEN]);
    tag
}

/// Keeps the records of others current until the daemon stops.
async fn browse(
    events: mdns_sd::Receiver<ServiceEvent>,
    own: String,
    sightings: Arc<Mutex<HashMap<String, Sighting>>>,
) {
    while let Ok(event) = events.recv_async().await {
        let mut map = sightings.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            ServiceEvent::ServiceResolved(service) if service.fullname != own => {
                let name = service.fullname.clone();
                match sighting(&service) {
                    Some(s) if map.len() < MAX_SIGHTINGS || map.contains_key(&name) => {
                        map.insert(name, s);
                    }
                    Some(_) => tracing::debug!(record = %name, "mDNS record over the limit"),
                    None => {
                        tracing::debug!(record = %name, "mDNS record not ours or malformed");
                        map.remove(&name);
                    }
                }
            }
            ServiceEvent::ServiceRemoved(_, name) => {
                map.remove(&name);
            }
            _ => {}
        }
    }
}

/// Reads a record from the LAN (untrusted): `None` unless it is a well-formed tidings record.
fn sighting(service: &ResolvedService) -> Option<Sighting> {
    if service.get_property_val_str("v")? != MDNS_RECORD_VERSION || service.port == 0 {
        return None;
    }
    let nonce = hex_array::<NONCE_LEN>(service.get_property_val_str("n")?)?;
    let tag = hex_array::<TAG_LEN>(service.get_property_val_str("b")?)?;
    // IPv4 first, then the lowest address: the same record gives the same answer.
    let ip = service
        .addresses
        .iter()
        .map(|a| a.to_ip_addr())
        .min_by_key(|ip| (!ip.is_ipv4(), *ip))?;
    Some(Sighting {
        nonce,
        tag,
        addr: SocketAddr::new(ip, service.port),
    })
}

fn hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(nonce: [u8; NONCE_LEN], device: DeviceId, other: DeviceId) {
        let tag = blind(&nonce, device);
        assert_eq!(tag, blind(&nonce, device), "the tag is a function");
        assert_ne!(tag, blind(&nonce, other), "another device, another tag");
        let mut fresh = nonce;
        fresh[0] ^= 1;
        assert_ne!(tag, blind(&fresh, device), "a new session, a new tag");
    }

    #[test]
    fn blinded_tags_separate_devices_and_sessions() {
        check([1; NONCE_LEN], DeviceId([2; 32]), DeviceId([3; 32]));
        check([0; NONCE_LEN], DeviceId([0; 32]), DeviceId([255; 32]));
    }

    #[test]
    fn malformed_hex_is_refused() {
        assert_eq!(hex_array::<2>("0a0b"), Some([10, 11]));
        assert_eq!(hex_array::<2>("0a0"), None);
        assert_eq!(hex_array::<2>("0a0b0c"), None);
        assert_eq!(hex_array::<2>("zz0b"), None);
    }
}
