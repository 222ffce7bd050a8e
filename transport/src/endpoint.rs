//! quinn client and server configurations (TLS 1.3, ALPN, transport parameters) and UDP
//! endpoints.

use crate::{Fingerprint, PinnedServerCert};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tidings_engine::wire::ALPN;

/// Why a configuration or an endpoint could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// rustls refused the TLS configuration (a key that does not fit the certificate, …).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The TLS configuration has no cipher suite QUIC can use for its initial packets.
    #[error("TLS configuration unusable by QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// An idle timeout QUIC cannot encode.
    #[error("idle timeout {timeout:?} is out of range")]
    IdleTimeout {
        /// The timeout asked for.
        timeout: Duration,
    },
    /// The socket could not be set up.
    #[error("UDP socket: {0}")]
    Io(#[from] std::io::Error),
    /// A peer certificate could not be made from the device key.
    #[error("peer certificate: {0}")]
    Certificate(rcgen::Error),
    /// No async runtime to run the endpoint on.
    #[error("no tokio runtime to run the QUIC endpoint on")]
    NoRuntime,
}

/// How a device dials: the server certificate it pins and the connection's timing.
#[derive(Debug, Clone)]
pub struct DialConfig {
    pin: Fingerprint,
    keepalive: Option<Duration>,
    idle_timeout: Option<Duration>,
    mismatch: Option<Arc<AtomicBool>>,
}

impl DialConfig {
    /// Dials servers whose certificate has fingerprint `pin`; quinn's default timing (no
    /// keepalive, 30 s idle timeout) until set.
    pub fn new(pin: Fingerprint) -> DialConfig {
        DialConfig {
            pin,
            keepalive: None,
            idle_timeout: None,
            mismatch: None,
        }
    }

    /// Sends a keepalive after this long without traffic, so a dead path is noticed within
    /// the idle timeout and NAT bindings stay open.
    pub fn keepalive(mut self, interval: Duration) -> DialConfig {
        self.keepalive = Some(interval);
        self
    }

    /// Closes the connection after this long without hearing from the server.
    pub fn idle_timeout(mut self, timeout: Duration) -> DialConfig {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Sets `flag` at every handshake to whether the server's certificate failed the pin.
    pub fn report_mismatch(mut self, flag: Arc<AtomicBool>) -> DialConfig {
        self.mismatch = Some(flag);
        self
    }

    /// The quinn client configuration: TLS 1.3 only, ALPN [`ALPN`], the pinning verifier.
    pub fn build(&self) -> Result<quinn::ClientConfig, TransportError> {
        let mut verifier = PinnedServerCert::new(self.pin);
        if let Some(flag) = &self.mismatch {
            verifier = verifier.report_mismatch(Arc::clone(flag));
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(self.keepalive);
        if let Some(timeout) = self.idle_timeout {
            transport.max_idle_timeout(Some(idle(timeout)?));
        }
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}

/// How a server listens: its certificate and what each connection may open.
#[derive(Debug)]
pub struct ListenConfig {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    idle_timeout: Duration,
    max_bidi_streams: u32,
    max_uni_streams: u32,
}

impl ListenConfig {
    /// A server presenting `cert` (signed by `key`); one bidirectional stream per connection,
    /// no unidirectional ones, 30 s idle timeout until set.
    pub fn new(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> ListenConfig {
        ListenConfig {
            cert,
            key,
            idle_timeout: Duration::from_secs(30),
            max_bidi_streams: 1,
            max_uni_streams: 0,
        }
    }

    /// Closes a connection after this long without hearing from the client (at least 1 ms).
    pub fn idle_timeout(mut self, timeout: Duration) -> ListenConfig {
        self.idle_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Bidirectional streams a client may have open at once.
    pub fn max_bidi_streams(mut self, n: u32) -> ListenConfig {
        self.max_bidi_streams = n;
        self
    }

    /// Unidirectional streams a client may have open at once.
    pub fn max_uni_streams(mut self, n: u32) -> ListenConfig {
        self.max_uni_streams = n;
        self
    }

    /// The quinn server configuration: TLS 1.3 only, ALPN [`ALPN`], no client certificates.
    pub fn build(self) -> Result<quinn::ServerConfig, TransportError> {
        let mut tls = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert], self.key)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let mut server =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(self.max_bidi_streams.into())
            .max_concurrent_uni_streams(self.max_uni_streams.into())
            .max_idle_timeout(Some(idle(self.idle_timeout)?));
        server.transport_config(Arc::new(transport));
        Ok(server)
    }
}

pub(crate) fn idle(timeout: Duration) -> Result<quinn::IdleTimeout, TransportError> {
    quinn::IdleTimeout::try_from(timeout).map_err(|_| TransportError::IdleTimeout { timeout })
}

/// A UDP socket bound to `addr` whose receive and send buffers were asked for `buffer_bytes`
/// each, and the smaller of the two sizes the kernel granted. It may grant less (Linux caps at
/// `net.core.rmem_max` / `wmem_max`): the socket works, only with more loss under bursts, so the
/// caller decides how loudly to say so. An IPv6 address also takes IPv4 where the system allows
/// it, as `quinn::Endpoint::client` does.
pub fn udp_socket(
    addr: SocketAddr,
    buffer_bytes: usize,
) -> std::io::Result<(std::net::UdpSocket, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Best effort: some systems refuse dual-stack sockets; IPv6 alone still works.
        let _ = sock.set_only_v6(false);
    }
    sock.set_recv_buffer_size(buffer_bytes)?;
    sock.set_send_buffer_size(buffer_bytes)?;
    // Linux reports twice the size granted (its bookkeeping overhead), other systems the size.
    let granted = sock.recv_buffer_size()?.min(sock.send_buffer_size()?);
    sock.bind(&addr.into())?;
    Ok((sock.into(), granted))
}

/// A quinn endpoint on `socket` (a server if `server` is given), on the current tokio runtime.
pub fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, TransportError> {
    let runtime = quinn::default_runtime().ok_or(TransportError::NoRuntime)?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        runtime,
    )?)
}

/// A client endpoint on an ephemeral port of the unspecified address of `remote`'s family,
/// dialing with `dial` by default.
pub fn client_endpoint(
    remote: SocketAddr,
    dial: quinn::ClientConfig,
) -> Result<quinn::Endpoint, TransportError> {
    let bind: SocketAddr = if remote.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(dial);
    Ok(endpoint)
}
