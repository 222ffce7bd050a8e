//! A rustls server-certificate verifier that trusts exactly one certificate, by its
//! [`Fingerprint`].

use crate::Fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Accepts exactly the certificate whose SHA-256 is the pinned fingerprint; the name dialed
/// and the validity dates are not checked (the pin is the trust), the handshake signatures
/// are (so only the holder of the certificate's key gets through).
#[derive(Debug)]
pub struct PinnedServerCert {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
    /// Set at every handshake to whether the certificate failed the pin, so a dialer can tell
    /// a pin mismatch from an unreachable server.
    mismatch: Option<Arc<AtomicBool>>,
}

impl PinnedServerCert {
    /// A verifier for `pin` with the ring provider.
    pub fn new(pin: Fingerprint) -> PinnedServerCert {
        PinnedServerCert {
            pin,
            provider: crate::provider(),
            mismatch: None,
        }
    }

    /// Sets `flag` at every handshake to whether the certificate failed the pin.
    pub fn report_mismatch(mut self, flag: Arc<AtomicBool>) -> PinnedServerCert {
        self.mismatch = Some(flag);
        self
    }

    /// The pinned fingerprint.
    pub fn pin(&self) -> Fingerprint {
        self.pin
    }
}

/// The TLS version of a handshake signature.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Tls {
    V12,
    V13,
}

/// Checks a handshake signature with the certificate's key: what every verifier here does
/// after it accepted the certificate itself.
pub(crate) fn signature(
    provider: &CryptoProvider,
    version: Tls,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let algorithms = &provider.signature_verification_algorithms;
    match version {
        Tls::V12 => verify_tls12_signature(message, cert, dss, algorithms),
        Tls::V13 => verify_tls13_signature(message, cert, dss, algorithms),
    }
}

impl ServerCertVerifier for PinnedServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let matches = self.pin.matches(end_entity.as_ref());
        if let Some(flag) = &self.mismatch {
            flag.store(!matches, Ordering::Relaxed);
        }
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
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
