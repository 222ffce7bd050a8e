//! # tidings-relay
//!
//! The relay node: it authenticates devices, sequences every conversation's events (one
//! strictly increasing server sequence per conversation, durable in redb before the ack),
//! stores them and forwards them to member devices over QUIC.
//!
//! The protocol logic is a sans-IO [`core::RelayCore`]; the async shell ([`server`]) only moves
//! frames between quinn connections and the core.
//!
//! # Layout
//! - [`core`]: sessions, membership, the sequencer with group commit, cursors, fan-out (sans-IO),
//!   and its redb [`core::RelayStore`].
//! - [`limits`]: every limit as a named constant, overridable through [`Limits`].
//! - [`metrics`]: Prometheus metrics.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod core;
pub mod limits;
pub mod metrics;

pub use limits::Limits;
