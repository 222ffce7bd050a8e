//! Linking a new device to the user: what the existing device puts in the bundle, and the
//! new device's side (take the bundle with the code, before it has any identity).
//!
//! ```no_run
//! # async fn demo(old: tidings_replica::Replica, keys: tidings_replica::keystore::Keys,
//! #     relay: Vec<std::net::SocketAddr>, pin: tidings_replica::RelayPin)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use tidings_replica::link::{join, LinkBundle};
//! use tidings_replica::keystore::Keys;
//! // On the existing device: the code to show, valid for the relay's link TTL.
//! let bundle = LinkBundle::new(&keys, relay.clone(), pin, b"app settings".to_vec());
//! let invite = old.link_device(&bundle).await?;
//! println!("{}", invite.code);
//! // On the new device, with the code typed in:
//! let bundle = join(&relay, &pin, &invite.code).await?;
//! let keys = Keys::create_linked("data/new", None, bundle.user_secret.clone())?;
//! # Ok(()) }
//! ```
//!
//! The bundle holds the user's identity seed: whoever takes it first acts as the user (see
//! docs/SECURITY.md, "Linking a device"). The code is shown once, taken once, and expires.

use crate::keystore::{Keys, UserSecret};
use crate::RelayPin;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;
use tidings_engine::link::{LinkCodeError, LinkError, LinkSecret, MAX_LINK_PLAINTEXT_LEN};
use tidings_engine::wire::{ServerFrame, MAX_FRAME_LEN};
use tidings_transport::{DialConfig, FrameError, FrameReader, FrameWriter};
use zeroize::Zeroizing;

/// Version of the bundle's layout.
const BUNDLE_VERSION: u8 = 1;
/// How long [`join`] waits for each relay address.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a new device gets from the existing one: the user's identity, the relay, and what the
/// app wants to carry over (its settings, contacts: opaque here).
#[derive(Clone, Debug)]
pub struct LinkBundle {
    /// The user's identity seed.
    pub user_secret: UserSecret,
    /// The relay's addresses.
    pub relay: Vec<SocketAddr>,
    /// The relay's pin.
    pub pin: RelayPin,
    /// The app's own bytes (at most what fits in [`MAX_LINK_PLAINTEXT_LEN`] with the rest).
    pub app: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Encoded {
    version: u8,
    user_seed: [u8; 32],
    relay: Vec<SocketAddr>,
    relay_key: [u8; 32],
    cert_sha256: [u8; 32],
    app: Vec<u8>,
}

impl LinkBundle {
    /// A bundle of `keys`' user.
    pub fn new(keys: &Keys, relay: Vec<SocketAddr>, pin: RelayPin, app: Vec<u8>) -> LinkBundle {
        LinkBundle {
            user_secret: keys.user_secret.clone(),
            relay,
            pin,
            app,
        }
    }

    /// The bundle's bytes (before sealing).
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, LinkJoinError> {
        let e = Encoded {
            version: BUNDLE_VERSION,
            user_seed: *self.user_secret.seed(),
            relay: self.relay.clone(),
            relay_key: self.pin.relay.0,
            cert_sha256: self.pin.cert_sha256.to_bytes(),
            app: self.app.clone(),
        };
        let bytes = Zeroizing::new(postcard::to_stdvec(&e).map_err(|_| LinkJoinError::Bundle)?);
        let mut e = e;
        zeroize::Zeroize::zeroize(&mut e.user_seed);
        if bytes.len() > MAX_LINK_PLAINTEXT_LEN {
            return Err(LinkJoinError::Link(LinkError::TooLarge {
                len: bytes.len(),
                max: MAX_LINK_PLAINTEXT_LEN,
            }));
        }
        Ok(bytes)
    }

    /// Reads what [`LinkBundle::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<LinkBundle, LinkJoinError> {
        let mut e: Encoded = postcard::from_bytes(bytes).map_err(|_| LinkJoinError::Bundle)?;
        if e.version != BUNDLE_VERSION {
            return Err(LinkJoinError::Bundle);
        }
        let bundle = LinkBundle {
            user_secret: UserSecret::from_seed(e.user_seed),
            relay: std::mem::take(&mut e.relay),
            pin: RelayPin {
                relay: tidings_engine::DeviceId(e.relay_key),
                cert_sha256: e.cert_sha256.into(),
            },
            app: std::mem::take(&mut e.app),
        };
        zeroize::Zeroize::zeroize(&mut e.user_seed);
        Ok(bundle)
    }
}

/// What [`crate::Replica::link_device`] gives: the code to show on the existing device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInvite {
    /// The one-time code, `ABCD-EFGH-…` (see [`LinkSecret::code`]).
    pub code: String,
    /// When the relay drops the bundle (relay clock, Unix ms).
    pub expires_ms: u64,
}

/// Why a new device could not join with a code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkJoinError {
    /// The code is not a link code (a typo, caught by its checksum, or the wrong length).
    #[error("not a link code: {0}")]
    Code(#[from] LinkCodeError),
    /// The relay has no bundle under the code (wrong, expired or used), refused, or the bundle
    /// does not open.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The bundle opened but is not one this build reads.
    #[error("the link bundle is not one this version of tidings reads")]
    Bundle,
    /// No relay address answered (or the relay's certificate is not the pinned one).
    #[error("could not reach the relay: {0}")]
    Unreachable(String),
}

/// The new device's side: takes the bundle the code names from the relay (each address in
/// turn until one answers), once, and opens it. A wrong, expired or used code is
/// [`LinkError::NotFound`]; a typo is caught before anything is sent.
pub async fn join(
    relay: &[SocketAddr],
    pin: &RelayPin,
    code: &str,
) -> Result<LinkBundle, LinkJoinError> {
    let secret = LinkSecret::parse(code)?;
    let mut last = String::from("no relay address");
    for addr in relay {
        match tokio::time::timeout(JOIN_TIMEOUT, take(*addr, pin, &secret)).await {
            Ok(Ok(answer)) => {
                let plain = secret.take_answer(answer)?;
                return LinkBundle::decode(&plain);
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: no answer within {} s", JOIN_TIMEOUT.as_secs()),
        }
    }
    Err(LinkJoinError::Unreachable(last))
}

/// One link connection: the take frame out, one frame back.
async fn take(
    addr: SocketAddr,
    pin: &RelayPin,
    secret: &LinkSecret,
) -> Result<ServerFrame, String> {
    let config = DialConfig::new(pin.cert_sha256)
        .keepalive(Duration::from_secs(1))
        .idle_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let endpoint = tidings_transport::client_endpoint(addr, config).map_err(|e| e.to_string())?;
    let result = async {
        let connection = endpoint
            .connect(addr, "tidings-relay")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        let mut writer = FrameWriter::new(send);
        writer
            .write_frame(&secret.take_frame())
            .await
            .map_err(|e| e.to_string())?;
        let frame = match FrameReader::new(recv, MAX_FRAME_LEN)
            .read_frame::<ServerFrame>()
            .await
        {
            Ok(Some(f)) => f,
            Ok(None) => return Err("the relay closed the stream".to_string()),
            // The relay's close carries the code of the Error frame it wrote before it.
            Err(FrameError::Read(quinn::ReadError::ConnectionLost(
                quinn::ConnectionError::ApplicationClosed(close),
            ))) => {
                let code = u16::try_from(close.error_code.into_inner()).unwrap_or(u16::MAX);
                ServerFrame::Error {
                    code: tidings_engine::wire::ErrorCode(code),
                    message: String::from_utf8_lossy(&close.reason).into_owned(),
                }
            }
            Err(e) => return Err(e.to_string()),
        };
        connection.close(0u32.into(), b"linked");
        Ok(frame)
    }
    .await;
    endpoint.wait_idle().await;
    result
}
