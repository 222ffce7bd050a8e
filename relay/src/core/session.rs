//! Per-connection state: handshake phase, cursors and push window.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use tidings_engine::wire::{NONCE_LEN, TLS_BINDING_LEN};
use tidings_engine::{ConversationId, DeviceId, ServerSeq, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    AwaitHello,
    AwaitAuth {
        device: DeviceId,
        user: UserId,
    },
    Ready {
        device: DeviceId,
        user: UserId,
    },
    /// A link take was answered: nothing more is read.
    Linked,
}

#[derive(Debug)]
pub(super) struct Session {
    pub peer: IpAddr,
    /// Counted by the core's own admission (opened by `handle_connect`), not by the shell's.
    pub counted: bool,
    pub tls_binding: [u8; TLS_BINDING_LEN],
    pub nonce: [u8; NONCE_LEN],
    pub phase: Phase,
    /// Pushes are on after the device's first Sync.
    pub push_on: bool,
    /// The device fell behind; no pushes until it syncs again.
    pub pull_mode: bool,
    /// Highest sequence the device reported received, per conversation.
    pub cursors: HashMap<ConversationId, ServerSeq>,
    /// Pushed sequences not yet acknowledged, per conversation (bounded by the push window).
    window: HashMap<ConversationId, VecDeque<ServerSeq>>,
    n_unacked: usize,
}

impl Session {
    pub fn new(
        peer: IpAddr,
        tls_binding: [u8; TLS_BINDING_LEN],
        nonce: [u8; NONCE_LEN],
        counted: bool,
    ) -> Self {
        Session {
            peer,
            counted,
            tls_binding,
            nonce,
            phase: Phase::AwaitHello,
            push_on: false,
            pull_mode: false,
            cursors: HashMap::new(),
            window: HashMap::new(),
            n_unacked: 0,
        }
    }

    pub fn unacked(&self) -> usize {
        self.n_unacked
    }

    pub fn pushed(&mut self, conv: ConversationId, seq: ServerSeq) {
        self.window.entry(conv).or_default().push_back(seq);
        self.n_unacked += 1;
    }

    pub fn acknowledge(&mut self, conv: ConversationId, up_to: ServerSeq) {
        if let Some(q) = self.window.get_mut(&conv) {
            while q.front().is_some_and(|&s| s <= up_to) {
                q.pop_front();
                self.n_unacked -= 1;
            }
            if q.is_empty() {
                self.window.remove(&conv);
            }
        }
    }

    pub fn enter_pull_mode(&mut self) {
        self.pull_mode = true;
        self.window.clear();
        self.n_unacked = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_until_acknowledged() {
        let mut s = Session::new("127.0.0.1".parse().expect("ip"), [0; 32], [0; 32], true);
        let c = ConversationId([1; 16]);
        let d = ConversationId([2; 16]);
        s.pushed(c, 1);
        s.pushed(c, 2);
        s.pushed(d, 7);
        assert_eq!(s.unacked(), 3);
        s.acknowledge(c, 1);
        assert_eq!(s.unacked(), 2);
        s.acknowledge(d, 100);
        assert_eq!(s.unacked(), 1);
        s.enter_pull_mode();
        assert_eq!(s.unacked(), 0);
    }
}
