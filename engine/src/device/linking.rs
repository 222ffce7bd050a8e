//! Requests about the user's devices: keeping a link bundle at the relay for a new device
//! ([`DeviceCore::deposit_link`], see [`crate::link`]) and revoking a device
//! ([`DeviceCore::revoke`]). Both wait for a connection, are sent again after a reconnect
//! until answered, and end in one [`DeviceEvent`] each with the relay's answer.

use super::{DeviceCore, DeviceError, DeviceEvent, Request, State};
use crate::link::{LinkSlot, MAX_LINK_BUNDLE_LEN};
use crate::wire::{ClientFrame, DeviceRevocation, ErrorCode};
use crate::DeviceId;

/// A request about the user's devices, waiting for a connection or for its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DeviceRequest {
    /// Keep `sealed` in `slot` for a new device.
    Link {
        /// The slot.
        slot: LinkSlot,
        /// The sealed bundle.
        sealed: Vec<u8>,
    },
    /// Revoke a device of this user.
    Revoke(DeviceRevocation),
}

/// The relay's refusal of a request, as the device reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRefused {
    /// The relay's code.
    pub code: ErrorCode,
    /// The relay's words.
    pub reason: String,
}

impl DeviceCore {
    /// Asks the relay to keep a sealed link bundle in `slot` for a new device of this user
    /// (see [`crate::link`]). Sent when connected (again after a reconnect until answered);
    /// [`DeviceEvent::LinkDeposit`] reports the answer.
    pub fn deposit_link(&mut self, slot: LinkSlot, sealed: Vec<u8>) -> Result<(), DeviceError> {
        if sealed.len() > MAX_LINK_BUNDLE_LEN {
            return Err(DeviceError::LinkTooLarge {
                len: sealed.len(),
                max: MAX_LINK_BUNDLE_LEN,
            });
        }
        self.device_request(DeviceRequest::Link { slot, sealed });
        Ok(())
    }

    /// Revokes a device of this user with a revocation the user's key signed (the device
    /// core holds no user key): the relay refuses the device from then on, and this device
    /// stops sealing conversation keys to it once the relay stored it. Sent when connected;
    /// [`DeviceEvent::Revocation`] reports the answer.
    pub fn revoke(&mut self, revocation: DeviceRevocation) -> Result<(), DeviceError> {
        if revocation.user != self.store.key().user() || !revocation.verify() {
            return Err(DeviceError::BadRevocation {
                device: revocation.device,
            });
        }
        self.device_request(DeviceRequest::Revoke(revocation));
        Ok(())
    }

    fn device_request(&mut self, request: DeviceRequest) {
        if self.state == State::Ready {
            self.send_device_request(request);
        } else {
            self.device_requests.push_back(request);
        }
    }

    pub(super) fn send_device_request(&mut self, request: DeviceRequest) {
        let request_id = self.request_id();
        let frame = match &request {
            DeviceRequest::Link { slot, sealed } => ClientFrame::LinkDeposit {
                request_id,
                slot: *slot,
                sealed: sealed.clone(),
            },
            DeviceRequest::Revoke(revocation) => ClientFrame::Revoke {
                request_id,
                revocation: revocation.clone(),
            },
        };
        self.requests.insert(request_id, Request::Device(request));
        self.transmit.push_back(frame);
    }

    pub(super) fn on_link_deposited(
        &mut self,
        request_id: u64,
        slot: LinkSlot,
        expires_ms: u64,
    ) -> Result<(), DeviceError> {
        match self.requests.remove(&request_id) {
            Some(Request::Device(DeviceRequest::Link { slot: asked, .. })) if asked == slot => {}
            _ => return Err(DeviceError::Protocol("LinkDeposited answer to no deposit")),
        }
        self.events.push_back(DeviceEvent::LinkDeposit {
            slot,
            outcome: Ok(expires_ms),
        });
        self.report_if_caught_up()
    }

    pub(super) fn on_revoked(
        &mut self,
        request_id: u64,
        device: DeviceId,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        let revocation = match self.requests.remove(&request_id) {
            Some(Request::Device(DeviceRequest::Revoke(r))) if r.device == device => r,
            _ => return Err(DeviceError::Protocol("Revoked answer to no revocation")),
        };
        // The directory takes it in now: the next epoch key goes to the user's devices
        // without the revoked one, whether or not the relay serves the revocation later.
        let out = self.store.absorb_devices(&[], &[revocation], &[])?;
        self.take_gate_outcome(out, now_ms)?;
        self.events.push_back(DeviceEvent::Revocation {
            device,
            outcome: Ok(()),
        });
        self.report_if_caught_up()
    }

    /// The relay refused a request about the user's devices.
    pub(super) fn device_request_refused(
        &mut self,
        request: DeviceRequest,
        code: ErrorCode,
        reason: String,
    ) {
        let refused = RequestRefused { code, reason };
        self.events.push_back(match request {
            DeviceRequest::Link { slot, .. } => DeviceEvent::LinkDeposit {
                slot,
                outcome: Err(refused),
            },
            DeviceRequest::Revoke(r) => DeviceEvent::Revocation {
                device: r.device,
                outcome: Err(refused),
            },
        });
    }
}
