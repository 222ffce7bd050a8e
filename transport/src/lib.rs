//! tidings transport: the QUIC plumbing every party of tidings uses — devices
//! (`tidings-replica`), the relay (`tidings-relay`) and, later, peers — so that there is one
//! of each: one endpoint configuration, one certificate pin, one framed stream.
//!
//! It knows nothing of the protocol beyond the frame codec of `tidings_engine::wire`: which
//! frame answers which request is the wire module's business ([`tidings_engine::wire::ServerFrame::answers`]),
//! what a frame means is the cores' (`DeviceCore`, `RelayCore`).
//!
//! # Layout
//! - [`Fingerprint`]: the SHA-256 of a DER certificate, with its one parser and printer.
//! - [`PinnedServerCert`]: the rustls verifier that trusts one certificate by fingerprint.
//! - [`DialConfig`], [`ListenConfig`]: quinn client and server configurations (TLS 1.3,
//!   ALPN `tidings/1`, keepalive, idle timeout, stream limits); [`udp_socket`],
//!   [`endpoint`], [`client_endpoint`].
//! - [`FrameReader`], [`FrameWriter`]: length-prefixed frames over a QUIC stream pair, with
//!   the size limit checked before allocation and typed errors ([`FrameError`]).
//! - [`PeerConfig`], [`PeerIdentity`], [`PeerPolicy`]: device-to-device links (ALPN
//!   [`PEER_ALPN`]), mutual TLS where each side proves its ed25519 device key with a
//!   self-signed certificate over it, admitted only if the other side's policy names it.
//!
//! # Example
//! ```no_run
//! # async fn dial(addr: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
//! use tidings_engine::wire::{ServerFrame, MAX_FRAME_LEN};
//! use tidings_transport::{client_endpoint, DialConfig, Fingerprint, FrameReader, FrameWriter};
//!
//! // What `tidings-relay` prints when it starts.
//! let pin: Fingerprint = "5c0f1a7e9d2b4c6a8e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f".parse()?;
//! let config = DialConfig::new(pin)
//!     .keepalive(std::time::Duration::from_secs(5))
//!     .build()?;
//! let endpoint = client_endpoint(addr, config)?;
//! let connection = endpoint.connect(addr, "tidings-relay")?.await?;
//! let (send, recv) = connection.open_bi().await?;
//! let (mut writer, mut reader) = (FrameWriter::new(send), FrameReader::new(recv, MAX_FRAME_LEN));
//! # let hello: tidings_engine::wire::ClientFrame = unimplemented!();
//! writer.write_frame(&hello).await?;
//! while let Some(frame) = reader.read_frame::<ServerFrame>().await? {
//!     println!("{frame:?}");
//! }
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod endpoint;
mod fingerprint;
mod framed;
mod peer;
mod pin;

pub use endpoint::{
    client_endpoint, endpoint, udp_socket, DialConfig, ListenConfig, TransportError,
};
pub use fingerprint::{Fingerprint, FingerprintError};
pub use framed::{FrameError, FrameReader, FrameWriter};
pub use peer::{
    device_of_cert, is_blob_link, peer_device, PeerAllowList, PeerConfig, PeerIdentity, PeerPolicy,
    MAX_PEER_STREAMS, PEER_ALPN, PEER_BLOB_ALPN, PEER_SERVER_NAME,
};
pub use pin::PinnedServerCert;

/// The crypto provider every configuration uses (ring, as quinn's `rustls-ring` feature).
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
