//! The shell's side of retention: every [`Retention::interval_secs`] the core decides what
//! goes (reads only, on the core thread), and a thread of its own prunes the store, so that a
//! long pass never holds the core or a commit's answer. One pass at a time: a pass still
//! running when the next is due pushes it one interval on.

use crate::core::{RelayCore, Retention, MAX_PRUNE_PLANS};
use crate::storage::{PruneStats, Storage};
use tracing::{info, warn};

pub(super) struct RetentionPass {
    retention: Retention,
    next_ms: u64,
    running: Option<std::thread::JoinHandle<()>>,
}

impl RetentionPass {
    pub(super) fn new(retention: &Retention, now_ms: u64) -> RetentionPass {
        RetentionPass {
            retention: retention.clone(),
            next_ms: now_ms.saturating_add(interval_ms(retention)),
            running: None,
        }
    }

    /// When the next pass is due (`None`: retention is off).
    pub(super) fn next_ms(&self) -> Option<u64> {
        self.retention.enabled.then_some(self.next_ms)
    }

    /// Starts a pass if one is due.
    pub(super) fn poll<S: Storage>(&mut self, core: &RelayCore<S>, now_ms: u64) {
        if !self.retention.enabled || now_ms < self.next_ms {
            return;
        }
        self.next_ms = now_ms.saturating_add(interval_ms(&self.retention));
        if self.running.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let plans = match core.retention_plans(now_ms) {
            Ok(p) if p.is_empty() => return,
            Ok(p) => p,
            Err(e) => return warn!(error = %e, "retention: reading the floors failed"),
        };
        let store = core.store().clone();
        let metrics = core.metrics().clone();
        let spawned = std::thread::Builder::new()
            .name("tidings-relay-retention".into())
            .spawn(move || {
                let mut stats = PruneStats::default();
                for chunk in plans.chunks(MAX_PRUNE_PLANS) {
                    match store.prune(chunk) {
                        Ok(s) => stats += s,
                        Err(e) => return warn!(error = %e, "retention: pruning failed"),
                    }
                }
                if let Ok(n) = store.n_events() {
                    metrics.set_stored_events(n);
                }
                info!(
                    n_conversations = plans.len(),
                    n_bodies = stats.n_bodies,
                    n_index = stats.n_index,
                    n_statements = stats.n_statements,
                    "retention pass"
                );
            });
        match spawned {
            Ok(h) => self.running = Some(h),
            Err(e) => warn!(error = %e, "retention: no thread for the pass"),
        }
    }
}

fn interval_ms(r: &Retention) -> u64 {
    r.interval_secs.max(1).saturating_mul(1000)
}
