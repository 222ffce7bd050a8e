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

impl DeviceCore {
    /// Events a peer device handed over before the relay placed them: each signature checked
    /// here, then stored and judged by the gate's rules now ([`Store::apply_early`]); those
    /// admitted show at once where pending messages show, and take their server place when
    /// the relay's statement comes. An envelope that does not verify is skipped (logged).
    pub fn handle_peer_early(
        &mut self,
        events: &[Envelope],
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        let mut verified = Vec::with_capacity(events.len());
        for ev in Event::decode_batch(events) {
            match ev {
                Ok(ev) => verified.push(ev),
                Err(e) => {
                    tracing::warn!(error = %e, "a peer sent an event that does not verify; skipped")
                }
            }
        }
        if verified.is_empty() {
            return Ok(());
        }
        let out = self.store.apply_early(&verified, now_ms)?;
        for r in &out.held_early {
            tracing::warn!(conversation = %r.conversation, event = %r.event, author = %r.author,
                kind = r.kind, reason = %r.refusal, "held an early event the gate's rules refuse");
        }
        self.emit_outcome(out, now_ms);
        self.after_frame(now_ms)
    }
}

impl DeviceCore {
    /// A peer device's receipt: per conversation and author device, it holds every event up to
    /// the counter given. Messages every recipient now has show DELIVERED (✓✓), placed by the
    /// relay or not.
    pub fn handle_peer_holds(
        &mut self,
        holder: DeviceId,
        vectors: &[crate::log::HoldsVector<'_>],
    ) -> Result<(), DeviceError> {
        let changes = self.store.apply_holds(holder, vectors)?;
        self.emit(changes);
        Ok(())
    }
}
