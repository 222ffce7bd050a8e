//! The relay's configuration: the TOML file's shape, with documented defaults (every key
//! with its default: `relay/relay.example.toml`).
//!
//! ```toml
//! listen = "0.0.0.0:4433"          # QUIC (UDP) address
//! data_dir = "/var/lib/tidings"    # store, key and certificate
//! metrics_listen = "127.0.0.1:9464" # Prometheus text on GET /metrics; omit to disable
//! durable = true                    # fsync every group commit
//! idle_timeout_secs = 30
//! udp_buffer_bytes = 4194304        # socket receive/send buffers (capped by the kernel)
//! shutdown_grace_secs = 5
//! storage = "redb"                  # or "postgres", with a connection string:
//! # postgres = "host=127.0.0.1 port=5432 user=tidings dbname=tidings"
//! # with a standby: both servers, and only the writable one is used (reconnects follow a
//! # promotion)
//! # postgres = "host=db1,db2 port=5432,5432 user=tidings dbname=tidings target_session_attrs=read-write"
//!
//! [limits]                          # see `Limits`; every field optional
//! events_per_sec = 5000
//!
//! [retention]                       # see `Retention`; every field optional
//! ttl_secs = 2592000                # 30 days
//! ```

use crate::core::Retention;
use crate::limits::{self, Limits};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Default QUIC listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:4433";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "tidings-relay-data";

/// Where the relay keeps its durable state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StorageKind {
    /// The embedded redb file `relay.redb` in `data_dir`: one relay process.
    #[default]
    Redb,
    /// A PostgreSQL database (`postgres` connection string): several relay nodes may share it.
    Postgres,
}

/// Everything a relay needs to start. `Default` plus setters; the TOML file deserializes into it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// QUIC (UDP) address to listen on.
    pub listen: SocketAddr,
    /// Directory of the store (`relay.redb`), the key and the certificate.
    pub data_dir: PathBuf,
    /// Address of the Prometheus metrics endpoint (HTTP), if any.
    pub metrics_listen: Option<SocketAddr>,
    /// fsync every group commit (`Durability::Immediate`); turn off only for throwaway relays.
    pub durable: bool,
    /// Seconds without traffic before a connection is dropped.
    pub idle_timeout_secs: u64,
    /// Seconds a graceful shutdown waits for connections to close after the final commit.
    pub shutdown_grace_secs: u64,
    /// Receive and send buffer of the UDP socket, in bytes. A burst of connection attempts or
    /// of sends arrives faster than one task drains it; what the kernel cannot buffer it drops,
    /// and a dropped handshake packet costs its sender a retransmission timeout that doubles
    /// each time. Linux caps the size at `net.core.rmem_max` / `wmem_max`; the relay logs a
    /// warning with the size it got when the cap is lower.
    pub udp_buffer_bytes: usize,
    /// The store: `"redb"` (default) or `"postgres"`.
    pub storage: StorageKind,
    /// PostgreSQL connection string (libpq key=value or URL), for `storage = "postgres"`.
    /// Name the primary and its standbys (`host=a,b port=p,q`) with
    /// `target_session_attrs=read-write` to follow a promotion.
    /// Relay nodes sharing one database must share one relay identity too (the key and
    /// certificate files in `data_dir`): they sign one chain of statements per conversation.
    pub postgres: Option<String>,
    /// Limits.
    pub limits: Limits,
    /// What the relay keeps and for how long.
    pub retention: Retention,
    /// Limits of the blob store (`data_dir/blobs`): size cap, quota per user, TTL.
    pub blobs: crate::blobs::BlobLimits,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 4433)),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            metrics_listen: None,
            durable: true,
            idle_timeout_secs: limits::IDLE_TIMEOUT_SECS,
            shutdown_grace_secs: limits::SHUTDOWN_GRACE_SECS,
            udp_buffer_bytes: limits::UDP_BUFFER_BYTES,
            storage: StorageKind::Redb,
            postgres: None,
            limits: Limits::default(),
            retention: Retention::default(),
            blobs: crate::blobs::BlobLimits::default(),
        }
    }
}

/// Why a config file was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The TOML is invalid or has unknown keys.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error.
        source: toml::de::Error,
    },
}

impl RelayConfig {
    /// A development relay: loopback on a free port, data in `data_dir`.
    pub fn dev(data_dir: impl Into<PathBuf>) -> RelayConfig {
        RelayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.into(),
            ..RelayConfig::default()
        }
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<RelayConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &std::path::Path) -> Result<RelayConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        RelayConfig::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Sets the listen address.
    pub fn with_listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Sets the data directory.
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }

    /// Sets the metrics address.
    pub fn with_metrics(mut self, addr: Option<SocketAddr>) -> Self {
        self.metrics_listen = addr;
        self
    }

    /// Sets the limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Stores in PostgreSQL at `url` instead of redb.
    pub fn with_postgres(mut self, url: impl Into<String>) -> Self {
        self.storage = StorageKind::Postgres;
        self.postgres = Some(url.into());
        self
    }

    /// Sets the retention policy.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Turns fsync per commit on or off.
    pub fn with_durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_with_defaults_and_overrides() {
        let c = RelayConfig::from_toml(
            "listen = \"127.0.0.1:5000\"\nmetrics_listen = \"127.0.0.1:9000\"\n[limits]\nevents_per_sec = 7\n",
        )
        .expect("parse");
        assert_eq!(c.listen, "127.0.0.1:5000".parse().expect("addr"));
        assert_eq!(c.limits.events_per_sec, 7);
        assert_eq!(c.limits.push_window, limits::PUSH_WINDOW);
        assert!(c.durable);
        assert!(RelayConfig::from_toml("nonsense = 1").is_err());
        let pg = RelayConfig::from_toml("storage = \"postgres\"\npostgres = \"host=db\"\n")
            .expect("parse");
        assert_eq!(pg.storage, StorageKind::Postgres);
        assert_eq!(pg.postgres.as_deref(), Some("host=db"));
        assert!(RelayConfig::from_toml("storage = \"sqlite\"").is_err());
        let r =
            RelayConfig::from_toml("[retention]\nttl_secs = 60\nenabled = false\n").expect("parse");
        assert_eq!(r.retention, Retention::off().with_ttl_secs(60));
        assert!(RelayConfig::from_toml("[retention]\nttl = 1").is_err());
        assert_eq!(
            RelayConfig::from_toml("").expect("empty"),
            RelayConfig::default()
        );
    }

    /// The shipped example states exactly the defaults.
    #[test]
    fn example_config_is_the_defaults() {
        let text = include_str!("../relay.example.toml");
        assert_eq!(
            RelayConfig::from_toml(text).expect("parse"),
            RelayConfig::default()
        );
    }
}
