//! Connection admission: which connections the relay takes, counted in one place.
//!
//! An [`Admission`] counts the connections it admitted, in total, per address prefix
//! ([`Limits::address_prefix`]) and those not authenticated yet (*pending*). The server asks it
//! about every `quinn::Incoming`, from the first packet alone, before any TLS work:
//! [`Admission::handle_incoming`] refuses past a limit, and past
//! [`Limits::retry_pending_handshakes`] pending connections it asks a peer whose address QUIC
//! has not validated to prove it (a Retry round trip: a spoofed source never answers, so it
//! costs the relay one stateless packet and no state).
//!
//! Call order, per admitted connection: [`Admission::handle_incoming`] (→ `Admit`), then at
//! most once [`Admission::handle_authenticated`], then exactly once [`Admission::handle_closed`]
//! with the same peer and whether it was still pending. [`AdmissionTicket`] keeps that order for
//! the async shell.
//!
//! Architecture invariant: each connection is counted by exactly one `Admission`. The server's
//! shell owns the one for QUIC connections and opens their sessions with
//! [`crate::RelayCore::handle_admitted`]; a core driven without the shell (tests, the simulator)
//! counts its own sessions with [`crate::RelayCore::handle_connect`].

use crate::core::ConnectError;
use crate::limits::Limits;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// What to do with a connection's first packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Take it: it is counted from now on.
    Admit,
    /// Ask the peer to prove its address first (QUIC Retry); nothing is counted.
    Validate,
}

/// The relay's count of connections. See the module documentation.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    per_prefix: HashMap<IpAddr, usize>,
    n_connections: usize,
    n_pending: usize,
}

impl Admission {
    /// Nothing admitted yet, under `limits`.
    pub fn new(limits: &Limits) -> Admission {
        Admission {
            limits: limits.clone(),
            per_prefix: HashMap::new(),
            n_connections: 0,
            n_pending: 0,
        }
    }

    /// A connection's first packet from `peer`; `validated` says whether QUIC proved the
    /// peer's address (it answered a Retry). Refused past [`Limits::max_connections`],
    /// [`Limits::max_pending_handshakes`] or [`Limits::max_connections_per_prefix`]; with
    /// [`Limits::retry_pending_handshakes`] or more pending, an unvalidated peer is asked to
    /// validate first.
    pub fn handle_incoming(
        &mut self,
        peer: IpAddr,
        validated: bool,
    ) -> Result<Verdict, ConnectError> {
        if self.n_connections >= self.limits.max_connections {
            return Err(ConnectError::TooManyConnections {
                max: self.limits.max_connections,
            });
        }
        if self.n_pending >= self.limits.max_pending_handshakes {
            return Err(ConnectError::TooManyPending {
                max: self.limits.max_pending_handshakes,
            });
        }
        let prefix = self.limits.address_prefix(peer);
        let n = self.per_prefix.get(&prefix).copied().unwrap_or(0);
        if n >= self.limits.max_connections_per_prefix {
            return Err(ConnectError::TooManyFromAddress {
                addr: prefix,
                max: self.limits.max_connections_per_prefix,
            });
        }
        if !validated && self.n_pending >= self.limits.retry_pending_handshakes {
            return Ok(Verdict::Validate);
        }
        *self.per_prefix.entry(prefix).or_default() += 1;
        self.n_connections += 1;
        self.n_pending += 1;
        Ok(Verdict::Admit)
    }

    /// An admitted connection authenticated: it no longer counts as pending.
    pub fn handle_authenticated(&mut self) {
        self.n_pending = self.n_pending.saturating_sub(1);
    }

    /// An admitted connection from `peer` ended; `pending` if it never authenticated.
    pub fn handle_closed(&mut self, peer: IpAddr, pending: bool) {
        let prefix = self.limits.address_prefix(peer);
        if let Some(n) = self.per_prefix.get_mut(&prefix) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_prefix.remove(&prefix);
            }
        }
        self.n_connections = self.n_connections.saturating_sub(1);
        if pending {
            self.n_pending = self.n_pending.saturating_sub(1);
        }
    }

    /// Connections admitted and not closed.
    pub fn n_connections(&self) -> usize {
        self.n_connections
    }

    /// Admitted connections that have not authenticated.
    pub fn n_pending(&self) -> usize {
        self.n_pending
    }
}

/// An [`Admission`] shared by the accept loop and the connection tasks (each call holds the
/// lock for a few map operations).
#[derive(Clone, Debug)]
pub(crate) struct SharedAdmission(Arc<Mutex<Admission>>);

impl SharedAdmission {
    pub(crate) fn new(limits: &Limits) -> SharedAdmission {
        SharedAdmission(Arc::new(Mutex::new(Admission::new(limits))))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Admission) -> T) -> T {
        // The counts stay consistent under a panic elsewhere: every update is one statement.
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// [`Admission::handle_incoming`]; an admitted connection gets its ticket.
    pub(crate) fn incoming(
        &self,
        peer: IpAddr,
        validated: bool,
    ) -> Result<Option<AdmissionTicket>, ConnectError> {
        match self.with(|a| a.handle_incoming(peer, validated))? {
            Verdict::Admit => Ok(Some(AdmissionTicket {
                admission: self.clone(),
                peer,
                pending: true,
            })),
            Verdict::Validate => Ok(None),
        }
    }

    #[cfg(test)]
    fn n_pending(&self) -> usize {
        self.with(|a| a.n_pending())
    }
}

/// One admitted connection's place in the count: released when dropped.
#[derive(Debug)]
pub(crate) struct AdmissionTicket {
    admission: SharedAdmission,
    peer: IpAddr,
    pending: bool,
}

impl AdmissionTicket {
    /// The connection authenticated (idempotent).
    pub(crate) fn authenticated(&mut self) {
        if std::mem::take(&mut self.pending) {
            self.admission.with(|a| a.handle_authenticated());
        }
    }
}

impl Drop for AdmissionTicket {
    fn drop(&mut self) {
        let (peer, pending) = (self.peer, self.pending);
        self.admission.with(|a| a.handle_closed(peer, pending));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_prefix: usize, pending: usize, retry_above: usize) -> Limits {
        Limits {
            max_pending_handshakes: pending,
            retry_pending_handshakes: retry_above,
            ..Limits::default().with_connections_per_prefix(per_prefix)
        }
        .clamped()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// Pending connections are capped; authenticated ones leave the pending count (and free
    /// its room) but still count per prefix; a close frees both.
    #[test]
    fn pending_connections_are_capped_apart_from_authenticated_ones() {
        let mut a = Admission::new(&limits(10, 2, 2));
        assert_eq!(a.handle_incoming(ip("10.0.0.1"), false), Ok(Verdict::Admit));
        assert_eq!(a.handle_incoming(ip("10.0.0.2"), false), Ok(Verdict::Admit));
        assert_eq!(
            a.handle_incoming(ip("10.0.0.3"), true),
            Err(ConnectError::TooManyPending { max: 2 })
        );
        a.handle_authenticated();
        assert_eq!(a.handle_incoming(ip("10.0.0.3"), true), Ok(Verdict::Admit));
        assert_eq!((a.n_connections(), a.n_pending()), (3, 2));
        a.handle_closed(ip("10.0.0.1"), false);
        a.handle_closed(ip("10.0.0.2"), true);
        assert_eq!((a.n_connections(), a.n_pending()), (1, 1));
    }

    /// Past the retry threshold an unvalidated peer is asked to validate (and is not
    /// counted); a validated one is admitted up to the pending cap.
    #[test]
    fn unvalidated_peers_are_asked_to_validate_when_many_are_pending() {
        let mut a = Admission::new(&limits(10, 3, 1));
        assert_eq!(a.handle_incoming(ip("10.0.0.1"), false), Ok(Verdict::Admit));
        assert_eq!(
            a.handle_incoming(ip("10.0.0.2"), false),
            Ok(Verdict::Validate)
        );
        assert_eq!(a.n_pending(), 1);
        assert_eq!(a.handle_incoming(ip("10.0.0.2"), true), Ok(Verdict::Admit));
    }

    /// The prefix limit counts every connection of the prefix, authenticated or not.
    #[test]
    fn the_prefix_limit_counts_authenticated_connections_too() {
        let mut a = Admission::new(&limits(2, 10, 10));
        let v6 = |s: &str| ip(s);
        assert_eq!(
            a.handle_incoming(v6("2001:db8::1"), true),
            Ok(Verdict::Admit)
        );
        a.handle_authenticated();
        assert_eq!(
            a.handle_incoming(v6("2001:db8::2"), true),
            Ok(Verdict::Admit)
        );
        assert!(matches!(
            a.handle_incoming(v6("2001:db8::3"), true),
            Err(ConnectError::TooManyFromAddress { max: 2, .. })
        ));
        a.handle_closed(v6("2001:db8::1"), false);
        assert_eq!(
            a.handle_incoming(v6("2001:db8::3"), true),
            Ok(Verdict::Admit)
        );
    }

    /// A ticket releases its place once, pending or authenticated, when dropped.
    #[test]
    fn a_ticket_releases_its_place_when_dropped() {
        let shared = SharedAdmission::new(&limits(1, 10, 10));
        let mut t = shared
            .incoming(ip("10.0.0.1"), false)
            .expect("admitted")
            .expect("no retry");
        assert!(shared.incoming(ip("10.0.0.1"), false).is_err());
        t.authenticated();
        t.authenticated();
        assert_eq!(shared.n_pending(), 0);
        drop(t);
        assert!(shared.incoming(ip("10.0.0.1"), false).is_ok());
    }
}
