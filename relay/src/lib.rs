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
//!   generic over its store.
//! - [`storage`]: the storage boundary ([`storage::Storage`]): the redb
//!   [`core::RelayStore`] (embedded default) and [`storage::PgStore`] (PostgreSQL, shared by
//!   several relay nodes).
//! - [`blobs`]: the blob store: encrypted media in files beside the event store, verified
//!   chunk by chunk, resumable, with size cap, quota, TTL and member-only reads.
//! - [`admission`]: which connections the relay takes, decided on their first packet and
//!   counted in one place.
//! - [`limits`]: every limit as a named constant, overridable through [`Limits`].
//! - [`metrics`]: Prometheus metrics.
//! - [`identity`]: the relay's persistent ed25519 key and self-signed certificate.
//! - [`config`]: [`RelayConfig`], the TOML file's shape.
//! - [`server`]: the quinn shell: [`start`] from a config, or [`run`] on a bound endpoint.
//! - [`verify`]: batch signature verification with a per-connection key cache.
//! - [`client`]: a minimal device-side client (tests, tools, reference for device libraries).
//! - [`cli`]: the `tidings-relay` command line (flags, config, tracing, run until a signal).
//!
//! # Starting a relay in-process
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let relay = tidings_relay::start(tidings_relay::RelayConfig::dev(dir.path())).await?;
//! println!("{} {} {}", relay.addr(), relay.relay_id(), relay.fingerprint());
//! relay.shutdown().await?;
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod admission;
pub mod blobs;
pub mod cli;
pub mod client;
pub mod config;
pub mod core;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod storage;
pub mod verify;

pub use config::{RelayConfig, StorageKind};
pub use identity::RelayIdentity;
pub use limits::Limits;
pub use server::{run, server_endpoint, start, RelayError, RelayHandle};
pub use tidings_transport::{Fingerprint, FingerprintError};
