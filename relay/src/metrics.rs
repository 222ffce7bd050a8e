//! Operator metrics in Prometheus text format (prometheus-client), one registry per relay so
//! that several relays in one process (tests) keep their own figures.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Labels of the per-device backlog gauge.
pub type DeviceLabels = Vec<(String, String)>;

/// The relay's metrics. Cloning shares them.
#[derive(Clone, Debug)]
pub struct RelayMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    /// Devices with an authenticated connection.
    connected_devices: Gauge,
    /// Events durably sequenced.
    events_accepted: Counter,
    /// Submitted events refused.
    events_rejected: Counter,
    /// Group commits done.
    commits: Counter,
    /// Pushed events not yet acknowledged by their devices (all connections).
    fanout_queue_depth: Gauge,
    /// Devices switched to pull mode.
    pull_mode_switches: Counter,
    /// Bytes of the store file.
    store_size_bytes: Gauge,
    /// Events stored.
    stored_events: Gauge,
    /// Per connected device: sequenced events it has not reported received.
    device_backlog: Family<DeviceLabels, Gauge>,
    /// Connections refused by a limit.
    connections_refused: Counter,
    /// Connections refused on their first packet, before any TLS work.
    refused_before_handshake: Counter,
    /// Retry packets sent to make a peer prove its address.
    address_validations: Counter,
    /// Submitted envelopes decoded and signature-checked (only for authenticated connections).
    envelopes_verified: Counter,
    /// Requests (frames that get an answer) read from connections.
    requests_read: Counter,
    /// Connections closed for not authenticating before the handshake deadline.
    handshake_timeouts: Counter,
    /// Requests read and not yet answered, over all connections.
    requests_in_flight: Gauge,
    /// Bytes of frames queued for connections and not yet handed to QUIC.
    outgoing_bytes: Gauge,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tidings_relay");
        let connected_devices = Gauge::default();
        let events_accepted = Counter::default();
        let events_rejected = Counter::default();
        let commits = Counter::default();
        let fanout_queue_depth = Gauge::default();
        let pull_mode_switches = Counter::default();
        let store_size_bytes = Gauge::default();
        let stored_events = Gauge::default();
        let device_backlog = Family::<DeviceLabels, Gauge>::default();
        let connections_refused = Counter::default();
        let refused_before_handshake = Counter::default();
        let address_validations = Counter::default();
        let envelopes_verified = Counter::default();
        let requests_read = Counter::default();
        let handshake_timeouts = Counter::default();
        let requests_in_flight = Gauge::default();
        let outgoing_bytes = Gauge::default();
        registry.register(
            "connected_devices",
            "Devices with an authenticated connection",
            connected_devices.clone(),
        );
        registry.register(
            "events_accepted",
            "Events durably sequenced and acknowledged",
            events_accepted.clone(),
        );
        registry.register(
            "events_rejected",
            "Submitted events refused",
            events_rejected.clone(),
        );
        registry.register("commits", "Group commits to the store", commits.clone());
        registry.register(
            "fanout_queue_depth",
            "Pushed events not yet acknowledged by their devices",
            fanout_queue_depth.clone(),
        );
        registry.register(
            "pull_mode_switches",
            "Devices switched to pull mode for falling behind",
            pull_mode_switches.clone(),
        );
        registry.register(
            "store_size_bytes",
            "Size of the store file in bytes",
            store_size_bytes.clone(),
        );
        registry.register(
            "stored_events",
            "Events in the store",
            stored_events.clone(),
        );
        registry.register(
            "device_backlog_events",
            "Per connected device: sequenced events it has not reported received",
            device_backlog.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused by a connection limit",
            connections_refused.clone(),
        );
        registry.register(
            "refused_before_handshake",
            "Connections refused on their first packet, before any TLS work",
            refused_before_handshake.clone(),
        );
        registry.register(
            "address_validations",
            "QUIC Retry packets sent to make a peer prove its address",
            address_validations.clone(),
        );
        registry.register(
            "envelopes_verified",
            "Submitted envelopes decoded and signature-checked (only for authenticated connections)",
            envelopes_verified.clone(),
        );
        registry.register(
            "requests_read",
            "Requests (frames that get an answer) read from connections",
            requests_read.clone(),
        );
        registry.register(
            "handshake_timeouts",
            "Connections closed for not authenticating before the handshake deadline",
            handshake_timeouts.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests read and not yet answered, over all connections",
            requests_in_flight.clone(),
        );
        registry.register(
            "outgoing_bytes",
            "Bytes of frames queued for connections and not yet handed to QUIC",
            outgoing_bytes.clone(),
        );
        RelayMetrics {
            inner: Arc::new(Inner {
                registry,
                connected_devices,
                events_accepted,
                events_rejected,
                commits,
                fanout_queue_depth,
                pull_mode_switches,
                store_size_bytes,
                stored_events,
                device_backlog,
                connections_refused,
                refused_before_handshake,
                address_validations,
                envelopes_verified,
                requests_read,
                handshake_timeouts,
                requests_in_flight,
                outgoing_bytes,
            }),
        }
    }
}

impl RelayMetrics {
    /// Renders every metric in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.inner.registry);
        out
    }

    pub(crate) fn set_connected(&self, n: usize) {
        self.inner.connected_devices.set(as_i64(n));
    }

    pub(crate) fn accepted(&self, n: usize) {
        self.inner.events_accepted.inc_by(n as u64);
    }

    pub(crate) fn rejected(&self, n: usize) {
        self.inner.events_rejected.inc_by(n as u64);
    }

    pub(crate) fn committed(&self) {
        self.inner.commits.inc();
    }

    pub(crate) fn set_fanout_depth(&self, n: usize) {
        self.inner.fanout_queue_depth.set(as_i64(n));
    }

    pub(crate) fn pull_mode_switch(&self) {
        self.inner.pull_mode_switches.inc();
    }

    pub(crate) fn connection_refused(&self) {
        self.inner.connections_refused.inc();
    }

    pub(crate) fn refuse_before_handshake(&self) {
        self.inner.refused_before_handshake.inc();
    }

    pub(crate) fn address_validation(&self) {
        self.inner.address_validations.inc();
    }

    pub(crate) fn set_store_size(&self, bytes: u64) {
        self.inner.store_size_bytes.set(as_i64(bytes));
    }

    pub(crate) fn set_stored_events(&self, n: u64) {
        self.inner.stored_events.set(as_i64(n));
    }

    pub(crate) fn add_stored_events(&self, n: usize) {
        self.inner.stored_events.inc_by(as_i64(n));
    }

    pub(crate) fn set_backlogs(&self, backlogs: &[(String, u64)]) {
        self.inner.device_backlog.clear();
        for (device, n) in backlogs {
            self.inner
                .device_backlog
                .get_or_create(&vec![("device".to_string(), device.clone())])
                .set(as_i64(*n));
        }
    }

    pub(crate) fn verified(&self, n: usize) {
        self.inner.envelopes_verified.inc_by(n as u64);
    }

    pub(crate) fn request_read(&self) {
        self.inner.requests_read.inc();
        self.inner.requests_in_flight.inc();
    }

    pub(crate) fn requests_answered(&self, n: usize) {
        self.inner.requests_in_flight.dec_by(as_i64(n));
    }

    pub(crate) fn handshake_timeout(&self) {
        self.inner.handshake_timeouts.inc();
    }

    pub(crate) fn outgoing(&self, delta: i64) {
        self.inner.outgoing_bytes.inc_by(delta);
    }

    /// Submitted envelopes decoded and signature-checked so far (for tests and tools).
    pub fn envelopes_verified(&self) -> u64 {
        self.inner.envelopes_verified.get()
    }

    /// Requests read from connections so far (for tests and tools).
    pub fn requests_read(&self) -> u64 {
        self.inner.requests_read.get()
    }

    /// Requests read and not yet answered, over all connections (for tests and tools).
    pub fn requests_in_flight(&self) -> i64 {
        self.inner.requests_in_flight.get()
    }

    /// Connections closed at the handshake deadline so far (for tests and tools).
    pub fn handshake_timeouts(&self) -> u64 {
        self.inner.handshake_timeouts.get()
    }

    /// Connections refused by a connection limit so far (for tests and tools).
    pub fn connections_refused(&self) -> u64 {
        self.inner.connections_refused.get()
    }

    /// Connections refused on their first packet, before any TLS work, so far (for tests and
    /// tools; also counted in [`RelayMetrics::connections_refused`]).
    pub fn refused_before_handshake(&self) -> u64 {
        self.inner.refused_before_handshake.get()
    }

    /// QUIC Retry packets sent so far (for tests and tools).
    pub fn address_validations(&self) -> u64 {
        self.inner.address_validations.get()
    }

    /// Bytes queued for connections and not yet handed to QUIC (for tests and tools).
    pub fn outgoing_bytes(&self) -> i64 {
        self.inner.outgoing_bytes.get()
    }

    /// Events accepted so far (for tests and tools).
    pub fn events_accepted(&self) -> u64 {
        self.inner.events_accepted.get()
    }
}

fn as_i64<T: TryInto<i64>>(v: T) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}
