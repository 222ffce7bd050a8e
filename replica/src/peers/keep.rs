//! Keeping two linked devices in step ([`PeerLink::keep_synced`]): not one session, a loop
//! that runs one again whenever this device's conversations change, and at least every
//! [`KEEP_SYNCED_EVERY`] (for what the peer wrote: run it on both devices, each toward the
//! other, and each side's changes reach the other at once).

use super::{sync_once, PeerAddr, PeerLink};
use crate::{Replica, ReplicaError};
use futures_util::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidings_transport::{PeerAllowList, PeerConfig};
use tokio::task::JoinHandle;

/// Longest wait between two sessions of [`PeerLink::keep_synced`] when nothing changes here.
pub const KEEP_SYNCED_EVERY: Duration = Duration::from_secs(2);
/// Changes that come within this long of one another go in one session.
const KEEP_SYNCED_GATHER: Duration = Duration::from_millis(5);

/// What [`PeerLink::keep_synced`] did so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSyncStats {
    /// Sessions that ran to their end.
    pub sessions: u64,
    /// Events received in them (duplicates included).
    pub received: u64,
    /// Sessions that failed (the peer unreachable, say); the loop goes on.
    pub failed: u64,
    /// Why the last one failed.
    pub last_error: Option<String>,
}

/// The loop of [`PeerLink::keep_synced`]; dropping it stops the loop.
#[derive(Debug)]
pub struct KeepSynced {
    task: JoinHandle<()>,
    stats: Arc<Mutex<PeerSyncStats>>,
}

impl KeepSynced {
    /// What the loop did so far.
    pub fn stats(&self) -> PeerSyncStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for KeepSynced {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PeerLink {
    /// Keeps this device in step with `peer`: a session now, then one after every change of
    /// this device's conversations (changes close together share one), and at least every
    /// [`KEEP_SYNCED_EVERY`]. Until the returned handle is dropped or the replica closes.
    pub fn keep_synced(&self, peer: PeerAddr) -> KeepSynced {
        let stats = Arc::new(Mutex::new(PeerSyncStats::default()));
        let task = tokio::spawn(keep(
            self.replica.clone(),
            self.config.clone(),
            self.allow.clone(),
            peer,
            stats.clone(),
        ));
        KeepSynced { task, stats }
    }
}

async fn keep(
    replica: Replica,
    config: PeerConfig,
    allow: Arc<PeerAllowList>,
    peer: PeerAddr,
    stats: Arc<Mutex<PeerSyncStats>>,
) {
    let mut updates = replica.updates();
    loop {
        let result = sync_once(&replica, &config, &allow, peer).await;
        {
            let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(report) => {
                    s.sessions += 1;
                    s.received += report.received;
                }
                Err(ReplicaError::Closed) => return,
                Err(e) => {
                    tracing::info!(peer = %peer.device, error = %e, "peer session failed");
                    s.failed += 1;
                    s.last_error = Some(e.to_string());
                }
            }
        }
        tokio::select! {
            next = updates.next() => if next.is_none() { return },
            _ = tokio::time::sleep(KEEP_SYNCED_EVERY) => {}
        }
        // What changed meanwhile goes in the same session.
        while let Ok(Some(next)) = tokio::time::timeout(KEEP_SYNCED_GATHER, updates.next()).await {
            drop(next);
        }
    }
}
