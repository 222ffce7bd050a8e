//! New-device history on the device core (see [`crate::history`]): the keys handed over a
//! peer link, the keys taken from one, and the re-shares through the relay when the device
//! learns a new device of its user.

use super::*;
use crate::history::{HistoryKey, HistoryKeysOutcome};

impl DeviceCore {
    /// The epoch keys this device's history policy offers, sealed to `peer` when it is another
    /// device of this user (none otherwise), for [`crate::peer::PeerFrame::HistoryKeys`].
    pub fn seal_history_keys(
        &mut self,
        peer: DeviceId,
        now_ms: u64,
    ) -> Result<Vec<HistoryKey>, DeviceError> {
        Ok(self.store.seal_history_keys(peer, now_ms)?)
    }

    /// History keys `from` sealed to this device ([`Store::take_history_keys`]); the bodies
    /// they open are reported as changes. A frame from a device that is not one of this
    /// user's is an error (the peer link closes).
    pub fn handle_history_keys(
        &mut self,
        from: DeviceId,
        keys: &[HistoryKey],
        now_ms: u64,
    ) -> Result<HistoryKeysOutcome, DeviceError> {
        let (outcome, changes) = self.store.take_history_keys(from, keys, now_ms)?;
        self.emit(changes);
        Ok(outcome)
    }

    /// Reports a history session's progress ([`DeviceEvent::HistoryProgress`]).
    pub(crate) fn report_history_progress(
        &mut self,
        peer: DeviceId,
        events: u64,
        keys: u64,
        done: bool,
    ) {
        self.events.push_back(DeviceEvent::HistoryProgress {
            peer,
            events,
            keys,
            done,
        });
    }

    /// Certificates the relay listed: every other device of this user gets the history keys
    /// it is not known to hold, through the relay ([`Store::share_history`]), so a device
    /// linked while this one is online reads the past even after this one goes off.
    pub(super) fn share_history_with(
        &mut self,
        registrations: &[DeviceRegistration],
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        let me = self.store.key().user();
        let own: Vec<DeviceId> = registrations
            .iter()
            .filter(|r| r.user == me)
            .map(|r| r.device)
            .collect();
        if own.is_empty() {
            return Ok(());
        }
        let (n_shared, changes) = self.store.share_history(&own, now_ms)?;
        self.emit(changes);
        if n_shared > 0 {
            self.flush(now_ms)?;
        }
        Ok(())
    }
}
