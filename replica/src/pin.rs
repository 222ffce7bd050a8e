//! QUIC client configuration that trusts exactly one relay certificate, by its SHA-256.
//!
//! Devices pin the relay the operator gave them (the fingerprint `tidings-relay` prints), so no
//! certificate authority can stand in for it.

use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidings_engine::wire::ALPN;

/// Parses a fingerprint as printed by the relay: 64 hex digits (colons allowed).
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let clean: String = s.chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(clean.trim(), &mut out).ok()?;
    Some(out)
}

/// SHA-256 of a DER certificate, the pinned form.
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(cert_der).into()
}

#[derive(Debug)]
struct PinnedCert {
    sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// Set when the last certificate seen did not match, so the dialer can tell a pin
    /// mismatch from an unreachable relay.
    mismatch: Arc<AtomicBool>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let matches = fingerprint(end_entity.as_ref()) == self.sha256;
        self.mismatch.store(!matches, Ordering::Relaxed);
        if matches {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A quinn client config pinned to `sha256`, with keepalives so a dead path is noticed
/// within `idle_timeout`.
pub fn client_config(
    sha256: [u8; 32],
    keepalive: Duration,
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig, String> {
    pinned_client_config(sha256, keepalive, idle_timeout, Arc::default())
}

/// [`client_config`], setting `mismatch` at every handshake to whether the relay's
/// certificate failed the pin.
pub fn pinned_client_config(
    sha256: [u8; 32],
    keepalive: Duration,
    idle_timeout: Duration,
    mismatch: Arc<AtomicBool>,
) -> Result<quinn::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCert {
            sha256,
            provider,
            mismatch,
        }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(keepalive));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle_timeout).map_err(|e| e.to_string())?,
    ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let fp = [0xab; 32];
        let plain = hex::encode(fp);
        assert_eq!(parse_fingerprint(&plain), Some(fp));
        let colons: Vec<String> = fp.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(parse_fingerprint(&colons.join(":")), Some(fp));
        assert_eq!(parse_fingerprint("abc"), None);
    }
}
