//! The connection as an app shows it: where it stands and, when it keeps failing, why.

use tidings_engine::wire::ErrorCode;
use tidings_engine::{ConnectionState, DeviceId};

/// Where the connection stands, and the last reason it failed until it is up again.
///
/// A device whose relay refuses it goes Authenticating → Offline → Authenticating … for
/// ever; `problem` says why, so an app can tell its user instead of spinning.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStatus {
    /// Offline, Authenticating, Syncing or Online.
    pub state: ConnectionState,
    /// Why the last attempt failed; `None` once the relay took the device (Syncing or
    /// Online), or before any attempt failed.
    pub problem: Option<ConnectionProblem>,
}

impl ConnectionStatus {
    pub(crate) fn new(state: ConnectionState, problem: Option<ConnectionProblem>) -> Self {
        ConnectionStatus { state, problem }
    }
}

/// Why the device could not connect.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionProblem {
    /// The relay's certificate is not the one pinned: a different relay (or one that lost its
    /// data directory and made a new certificate), or someone in between.
    #[error("the relay's certificate does not match the pinned fingerprint")]
    PinMismatch,
    /// The relay's key is not the pinned one.
    #[error("the relay's key {got} is not the pinned {expected}")]
    WrongRelay {
        /// The pinned key.
        expected: DeviceId,
        /// The key the relay showed.
        got: DeviceId,
    },
    /// The relay does not know this device, and the device has no registration (a certificate
    /// signed by its user) to present.
    #[error("this device is not registered with the relay")]
    NotRegistered,
    /// The user revoked this device (from another of its devices): the relay refuses it for
    /// good. Its data directory can only be set up again as a new device.
    #[error("this device was revoked by its user")]
    Revoked,
    /// The relay refused the device, with a code.
    #[error("the relay refused: {message} ({code:?})")]
    Refused {
        /// The relay's code.
        code: ErrorCode,
        /// The relay's words.
        message: String,
    },
    /// No answer from the address (nothing listening, no route, timed out).
    #[error("the relay is unreachable: {0}")]
    Unreachable(String),
    /// The connection broke in a way the device could not classify.
    #[error("{0}")]
    Other(String),
}
