//! Peer links: device to device, without the relay. Both sides present a self-signed
//! certificate over their device's ed25519 key (the key that is their [`DeviceId`]), and each
//! accepts the other only if the certificate's key is a device its [`PeerPolicy`] admits. The
//! TLS handshake proves possession: each side signs the handshake transcript with that key.
//!
//! Who is admitted is not decided here: the policy is the device's (the same membership and
//! certificate rules its gate applies, see the peer sync in `tidings-replica`); the transport
//! only refuses, during the handshake, a key the policy does not name.

use crate::endpoint::idle;
use crate::pin::{signature, Tls};
use crate::TransportError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tidings_engine::{DeviceId, DeviceKey};

/// The application protocol of peer links (a relay never speaks it, so a device cannot mistake
/// one for the other).
pub const PEER_ALPN: &[u8] = b"tidings-peer/1";
/// The application protocol of a peer connection that carries blob streams (media fetched
/// from a device that holds it). Its own connection, not a stream beside a sync session: a
/// session's connection ends with the session, a blob connection lives across downloads, and
/// the session protocol stays as it is.
pub const PEER_BLOB_ALPN: &[u8] = b"tidings-peer-blob/1";
/// Bidirectional streams a peer may have open at once on one connection: a session uses one,
/// a blob connection one per transfer.
pub const MAX_PEER_STREAMS: u32 = 4;
/// The server name a peer dials: the certificate is judged by its key, never by a name.
pub const PEER_SERVER_NAME: &str = "tidings-peer";

/// DER of an ed25519 SubjectPublicKeyInfo up to the 32 key bytes (RFC 8410).
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER of an ed25519 PKCS#8 v1 private key up to the 32 seed bytes (RFC 8410).
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Which devices a peer link accepts. Called during the TLS handshake, for every dial and
/// every incoming connection; it must answer from memory (no IO).
pub trait PeerPolicy: Send + Sync + fmt::Debug {
    /// Whether a peer proving `device`'s key may connect.
    fn admits(&self, device: DeviceId) -> bool;
}

/// A [`PeerPolicy`] over a set the device keeps current (the devices it can place in its
/// directory that share a conversation with it, minus the revoked ones).
#[derive(Debug, Default)]
pub struct PeerAllowList {
    devices: RwLock<HashSet<DeviceId>>,
}

impl PeerAllowList {
    /// Replaces the admitted devices.
    pub fn set(&self, devices: impl IntoIterator<Item = DeviceId>) {
        let next: HashSet<DeviceId> = devices.into_iter().collect();
        *self.devices.write().unwrap_or_else(|e| e.into_inner()) = next;
    }

    /// The admitted devices now (discovery matches what it sees on the LAN against them).
    pub fn devices(&self) -> Vec<DeviceId> {
        self.devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// Stops admitting `device` (a revocation seen, a conversation left).
    pub fn remove(&self, device: &DeviceId) {
        self.devices
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(device);
    }
}

impl PeerPolicy for PeerAllowList {
    fn admits(&self, device: DeviceId) -> bool {
        self.devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&device)
    }
}

/// A device's certificate for peer links: self-signed over its ed25519 device key.
pub struct PeerIdentity {
    device: DeviceId,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl fmt::Debug for PeerIdentity {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl PeerIdentity {
    /// The peer certificate of `key`'s device.
    pub fn new(key: &DeviceKey) -> Result<PeerIdentity, TransportError> {
        let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(&key.seed());
        let der = PrivatePkcs8KeyDer::from(pkcs8);
        let pair = rcgen::KeyPair::try_from(&der).map_err(TransportError::Certificate)?;
        let params = rcgen::CertificateParams::new(vec![PEER_SERVER_NAME.to_string()])
            .map_err(TransportError::Certificate)?;
        let cert = params
            .self_signed(&pair)
            .map_err(TransportError::Certificate)?;
        Ok(PeerIdentity {
            device: key.device(),
            cert: cert.der().clone(),
            key: der,
        })
    }

    /// The device this identity proves.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The certificate (DER).
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }
}

/// The device whose key a peer certificate carries, if it is an ed25519 certificate.
pub fn device_of_cert(cert: &CertificateDer<'_>) -> Option<DeviceId> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let key = spki.as_ref().strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    Some(DeviceId(key.try_into().ok()?))
}

/// The device on the other end of an established peer connection (its key was proven in the
/// handshake and admitted by the policy).
pub fn peer_device(conn: &quinn::Connection) -> Option<DeviceId> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    device_of_cert(certs.first()?)
}

/// Whether an established peer connection carries blob streams ([`PEER_BLOB_ALPN`]) rather
/// than a sync session.
pub fn is_blob_link(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == PEER_BLOB_ALPN)
}

/// Peer link settings: the device's identity, who it admits, the connection's timing.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    identity: Arc<PeerIdentity>,
    policy: Arc<dyn PeerPolicy>,
    keepalive: Duration,
    idle_timeout: Duration,
}

impl PeerConfig {
    /// Peer links for `identity` admitting what `policy` admits; keepalive 5 s, idle timeout
    /// 30 s until set.
    pub fn new(identity: PeerIdentity, policy: Arc<dyn PeerPolicy>) -> PeerConfig {
        PeerConfig {
            identity: Arc::new(identity),
            policy,
            keepalive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }

    /// Keepalive interval.
    pub fn keepalive(mut self, interval: Duration) -> PeerConfig {
        self.keepalive = interval;
        self
    }

    /// Idle timeout.
    pub fn idle_timeout(mut self, timeout: Duration) -> PeerConfig {
        self.idle_timeout = timeout;
        self
    }

    /// The device this config proves.
    pub fn device(&self) -> DeviceId {
        self.identity.device
    }

    fn verifier(&self, expect: Option<DeviceId>) -> Arc<PeerCertVerifier> {
        Arc::new(PeerCertVerifier {
            policy: Arc::clone(&self.policy),
            provider: crate::provider(),
            expect,
        })
    }

    fn transport(&self) -> Result<Arc<quinn::TransportConfig>, TransportError> {
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(self.keepalive))
            .max_idle_timeout(Some(idle(self.idle_timeout)?))
            .max_concurrent_bidi_streams(MAX_PEER_STREAMS.into())
            .max_concurrent_uni_streams(0u32.into());
        Ok(Arc::new(transport))
    }

    /// The client side of a link to `expect` (the device the app or discovery named; a peer
    /// proving another key is refused even if the policy admits it).
    pub fn dial(&self, expect: DeviceId) -> Result<quinn::ClientConfig, TransportError> {
        self.dial_for(expect, PEER_ALPN)
    }

    /// [`PeerConfig::dial`] for a connection of blob streams ([`PEER_BLOB_ALPN`]).
    pub fn dial_blobs(&self, expect: DeviceId) -> Result<quinn::ClientConfig, TransportError> {
        self.dial_for(expect, PEER_BLOB_ALPN)
    }

    fn dial_for(
        &self,
        expect: DeviceId,
        alpn: &[u8],
    ) -> Result<quinn::ClientConfig, TransportError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(self.verifier(Some(expect)))
            .with_client_auth_cert(
                vec![self.identity.cert.clone()],
                PrivateKeyDer::Pkcs8(self.identity.key.clone_key()),
            )?;
        tls.alpn_protocols = vec![alpn.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(self.transport()?);
        Ok(config)
    }

    /// The server side: accepts peers that prove an admitted device key, and only those, for a
    /// sync session or for blob streams ([`is_blob_link`] tells which).
    pub fn listen(&self) -> Result<quinn::ServerConfig, TransportError> {
        let mut tls = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(self.verifier(None))
            .with_single_cert(
                vec![self.identity.cert.clone()],
                PrivateKeyDer::Pkcs8(self.identity.key.clone_key()),
            )?;
        tls.alpn_protocols = vec![PEER_ALPN.to_vec(), PEER_BLOB_ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(self.transport()?);
        Ok(config)
    }
}

/// Judges the other side's certificate by the device key it carries.
#[derive(Debug)]
struct PeerCertVerifier {
    policy: Arc<dyn PeerPolicy>,
    provider: Arc<CryptoProvider>,
    /// On the dialing side, the device dialed.
    expect: Option<DeviceId>,
}

impl PeerCertVerifier {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let refused = || {
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )
        };
        let device = device_of_cert(cert).ok_or_else(refused)?;
        if self.expect.is_some_and(|e| e != device) || !self.policy.admits(device) {
            return Err(refused());
        }
        Ok(())
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        // Device keys are ed25519: nothing else can prove one.
        vec![SignatureScheme::ED25519]
    }
}

impl ServerCertVerifier for PeerCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signature(&self.provider, Tls::V12, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signature(&self.provider, Tls::V13, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for PeerCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signature(&self.provider, Tls::V12, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signature(&self.provider, Tls::V13, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}
