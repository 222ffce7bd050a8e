//! Peer receipts taken in: what a peer device said it holds turns into DELIVERED for the
//! messages every recipient now has (see [`crate::log::EventLog::record_holds`]).

use super::*;
use crate::log::HoldsVector;

impl Store {
    /// `holder`, a peer device, holds per conversation and author device every event up to
    /// the counter given. Kept durably; returns the statuses that moved. A device the
    /// directory cannot place (unknown, revoked) says nothing.
    pub fn apply_holds(
        &mut self,
        holder: DeviceId,
        vectors: &[HoldsVector<'_>],
    ) -> Result<Vec<Change>, StoreError> {
        let directory = self.directory()?;
        let Some(user) = directory.user_of(&holder) else {
            return Ok(Vec::new());
        };
        if directory.is_revoked(&holder) {
            return Ok(Vec::new());
        }
        let updated = self.log.record_holds(holder, user, vectors)?;
        let mut changes = Vec::new();
        for (conversation, message, held) in updated {
            self.ensure_loaded(conversation)?;
            let doc = &mut self.loaded(conversation)?.doc;
            changes.extend(doc.set_peer_held(message, held));
        }
        Ok(changes)
    }
}
