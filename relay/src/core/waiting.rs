//! Submits waiting for room in a group commit, taken round-robin by session.
//!
//! A commit holds at most `max_commit_batch` events (plus the rest of the submit that crossed
//! it). Past that, submits wait here, one queue per session, and each commit is refilled one
//! submit per session per round, starting after the session served last: a device with one
//! submit waits at most one commit behind any number of another device's, and every session
//! keeps its own order. The queues together hold at most `core_queue` submits
//! ([`RelayCore::is_backlogged`]); past that the shell stops reading, and QUIC flow control
//! pushes back on the devices.

use super::{RelayCore, SessionId};
use crate::storage::Storage;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use tidings_engine::event::DecodeError;
use tidings_engine::Event;

/// A verified Submit not staged yet.
#[derive(Debug)]
pub(super) struct WaitingSubmit {
    pub(super) request_id: u64,
    pub(super) results: Vec<Result<Event, DecodeError>>,
    pub(super) now_ms: u64,
}

/// The per-session queues and the round-robin cursor.
#[derive(Debug, Default)]
pub(super) struct Waiting {
    queues: BTreeMap<SessionId, VecDeque<WaitingSubmit>>,
    n_submits: usize,
    /// The session served last: the next round goes on after it.
    last: SessionId,
}

impl Waiting {
    pub(super) fn push(&mut self, session: SessionId, submit: WaitingSubmit) {
        self.queues.entry(session).or_default().push_back(submit);
        self.n_submits += 1;
    }

    /// The next submit in round-robin order: the oldest of the first session after the last
    /// one served that has any, wrapping around.
    pub(super) fn pop_next(&mut self) -> Option<(SessionId, WaitingSubmit)> {
        let session = self
            .queues
            .range((Bound::Excluded(self.last), Bound::Unbounded))
            .next()
            .or_else(|| self.queues.iter().next())
            .map(|(s, _)| *s)?;
        let queue = self.queues.get_mut(&session)?;
        let submit = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(&session);
        }
        self.n_submits -= 1;
        self.last = session;
        Some((session, submit))
    }

    /// Forgets a closed session's submits (never answered: the device resubmits them).
    pub(super) fn remove_session(&mut self, session: SessionId) {
        if let Some(q) = self.queues.remove(&session) {
            self.n_submits -= q.len();
        }
    }

    pub(super) fn len(&self) -> usize {
        self.n_submits
    }
}

impl<S: Storage> RelayCore<S> {
    /// Whether the submits waiting for room in a commit reach `core_queue`: the shell should
    /// stop handing the core input until a commit makes room.
    pub fn is_backlogged(&self) -> bool {
        self.waiting.len() >= self.limits.core_queue
    }

    /// Submits waiting for room in a commit.
    pub fn n_waiting_submits(&self) -> usize {
        self.waiting.len()
    }

    /// Stages waiting submits, round-robin by session, while the batch has room.
    pub(super) fn admit_waiting(&mut self) {
        while self.staged.events.len() < self.limits.max_commit_batch {
            let Some((session, w)) = self.waiting.pop_next() else {
                return;
            };
            self.stage_submit(session, w.request_id, w.results, w.now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(request_id: u64) -> WaitingSubmit {
        WaitingSubmit {
            request_id,
            results: Vec::new(),
            now_ms: 0,
        }
    }

    /// One submit per session per round, each session in its own order, from after the last
    /// session served.
    #[test]
    fn round_robin_by_session() {
        let mut w = Waiting::default();
        for (s, r) in [(5, 1), (5, 2), (5, 3), (9, 4), (2, 5), (9, 6)] {
            w.push(s, submit(r));
        }
        assert_eq!(w.len(), 6);
        let mut order = Vec::new();
        while let Some((s, x)) = w.pop_next() {
            order.push((s, x.request_id));
        }
        assert_eq!(order, [(2, 5), (5, 1), (9, 4), (5, 2), (9, 6), (5, 3)]);
        assert_eq!(w.len(), 0);
        w.push(1, submit(7));
        w.push(7, submit(8));
        assert_eq!(
            w.pop_next().map(|(s, _)| s),
            Some(7),
            "goes on after session 5"
        );
        w.remove_session(1);
        assert_eq!(w.len(), 0);
        assert!(w.pop_next().is_none());
    }
}
