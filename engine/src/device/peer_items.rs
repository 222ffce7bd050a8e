//! What a peer device sends ([`crate::peer`]), taken in by the device core on the relay's path.

use super::*;

impl DeviceCore {
    /// Events and relay statements a peer device sent: admitted exactly as a relay page is
    /// (each signature checked by [`VerifiedItems::verify`], only statements of the pinned
    /// relay trusted, an event taken only with the statement that places it, then the gate at
    /// its place in the relay's order). Cursors move over what the log now holds, so the next
    /// catch-up with the relay asks only for the rest, and Delivered receipts for what arrived
    /// go out through the outbox.
    pub fn handle_peer_items(
        &mut self,
        items: VerifiedItems,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        self.on_items(items, now_ms)?;
        self.after_frame(now_ms)
    }

    /// Device certificates and revocations a peer device sent: each verified under its
    /// user's key by the directory, as the relay's are. A peer's list settles nobody (only the
    /// relay's complete answer can make an unknown author final).
    pub fn handle_peer_directory(
        &mut self,
        registrations: &[DeviceRegistration],
        revocations: &[DeviceRevocation],
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        let out = self.store.absorb_devices(registrations, revocations, &[])?;
        self.take_gate_outcome(out, now_ms)
    }
}
