//! Every limit the relay enforces: a named default and a field of [`Limits`] to override it
//! (the `[limits]` table of the TOML config).

use serde::{Deserialize, Serialize};
use tidings_engine::wire;

/// Default largest frame body read from a device (bytes).
pub const MAX_FRAME_LEN: usize = wire::MAX_FRAME_LEN;
/// Default most envelopes per Submit frame.
pub const MAX_SUBMIT_BATCH: usize = wire::MAX_SUBMIT_BATCH;
/// Default most items per Page or Push frame.
pub const MAX_PAGE_ITEMS: usize = wire::MAX_PAGE_ITEMS;
/// Default most unanswered requests per connection; the relay stops reading beyond it, so
/// QUIC flow control pushes back on the device.
pub const MAX_INFLIGHT_REQUESTS: usize = 32;
/// Default pushed events a device may leave unacknowledged before it is switched to pull mode.
pub const PUSH_WINDOW: usize = 4096;
/// Default sustained events per second accepted from one device.
pub const EVENTS_PER_SEC: u32 = 5_000;
/// Default burst of events one device may submit above its sustained rate.
pub const EVENT_BURST: u32 = 10_000;
/// Default most connections in total.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Default most connections from one IP address.
pub const MAX_CONNECTIONS_PER_IP: usize = 256;
/// Default most events in one group commit.
pub const MAX_COMMIT_BATCH: usize = 4096;
/// Default longest wait (ms) before staged events are committed; 0 commits as soon as no
/// input is waiting, which batches naturally under load (inputs queue up during an fsync).
pub const COMMIT_WINDOW_MS: u64 = 0;
/// Default threads that sign a commit's acks (0: one per available core).
pub const ACK_SIGN_THREADS: usize = 0;
/// Default capacity of the queue from connections to the core (inputs).
pub const CORE_QUEUE: usize = 1024;
/// Default seconds without traffic before a QUIC connection is dropped.
pub const IDLE_TIMEOUT_SECS: u64 = 30;
/// Default seconds for the graceful shutdown to drain connections before closing them.
pub const SHUTDOWN_GRACE_SECS: u64 = 5;
/// Most bytes of an HTTP request head read by the metrics endpoint.
pub const MAX_METRICS_REQUEST: usize = 8 * 1024;

/// The relay's limits; `Default` gives the constants above.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// See [`MAX_FRAME_LEN`] (capped at the wire maximum).
    pub max_frame_len: usize,
    /// See [`MAX_SUBMIT_BATCH`] (capped at the wire maximum).
    pub max_submit_batch: usize,
    /// See [`MAX_PAGE_ITEMS`] (capped at the wire maximum).
    pub max_page_items: usize,
    /// See [`MAX_INFLIGHT_REQUESTS`].
    pub max_inflight_requests: usize,
    /// See [`PUSH_WINDOW`].
    pub push_window: usize,
    /// See [`EVENTS_PER_SEC`].
    pub events_per_sec: u32,
    /// See [`EVENT_BURST`].
    pub event_burst: u32,
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`MAX_CONNECTIONS_PER_IP`].
    pub max_connections_per_ip: usize,
    /// See [`MAX_COMMIT_BATCH`].
    pub max_commit_batch: usize,
    /// See [`COMMIT_WINDOW_MS`].
    pub commit_window_ms: u64,
    /// See [`CORE_QUEUE`].
    pub core_queue: usize,
    /// See [`ACK_SIGN_THREADS`].
    pub ack_sign_threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_len: MAX_FRAME_LEN,
            max_submit_batch: MAX_SUBMIT_BATCH,
            max_page_items: MAX_PAGE_ITEMS,
            max_inflight_requests: MAX_INFLIGHT_REQUESTS,
            push_window: PUSH_WINDOW,
            events_per_sec: EVENTS_PER_SEC,
            event_burst: EVENT_BURST,
            max_connections: MAX_CONNECTIONS,
            max_connections_per_ip: MAX_CONNECTIONS_PER_IP,
            max_commit_batch: MAX_COMMIT_BATCH,
            commit_window_ms: COMMIT_WINDOW_MS,
            core_queue: CORE_QUEUE,
            ack_sign_threads: ACK_SIGN_THREADS,
        }
    }
}

impl Limits {
    /// The limits with every value clamped to what the wire format allows and to at least 1.
    pub fn clamped(mut self) -> Limits {
        self.max_frame_len = self
            .max_frame_len
            .clamp(64 * 1024 + 1024, wire::MAX_FRAME_LEN);
        self.max_submit_batch = self.max_submit_batch.clamp(1, wire::MAX_SUBMIT_BATCH);
        self.max_page_items = self.max_page_items.clamp(1, wire::MAX_PAGE_ITEMS);
        self.max_inflight_requests = self.max_inflight_requests.max(1);
        self.push_window = self.push_window.max(1);
        self.events_per_sec = self.events_per_sec.max(1);
        self.event_burst = self.event_burst.max(1);
        self.max_connections = self.max_connections.max(1);
        self.max_connections_per_ip = self.max_connections_per_ip.max(1);
        self.max_commit_batch = self.max_commit_batch.max(1);
        self.core_queue = self.core_queue.max(1);
        self
    }

    /// Sets [`Limits::events_per_sec`] and [`Limits::event_burst`].
    pub fn with_rate(mut self, events_per_sec: u32, event_burst: u32) -> Limits {
        self.events_per_sec = events_per_sec;
        self.event_burst = event_burst;
        self
    }

    /// Sets [`Limits::max_connections_per_ip`].
    pub fn with_connections_per_ip(mut self, n: usize) -> Limits {
        self.max_connections_per_ip = n;
        self
    }

    /// Sets [`Limits::push_window`].
    pub fn with_push_window(mut self, n: usize) -> Limits {
        self.push_window = n;
        self
    }

    /// Sets [`Limits::max_frame_len`].
    pub fn with_max_frame_len(mut self, n: usize) -> Limits {
        self.max_frame_len = n;
        self
    }

    /// What devices are told in Welcome.
    pub fn wire(&self) -> wire::WireLimits {
        let c = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        wire::WireLimits {
            max_frame_len: c(self.max_frame_len),
            max_submit_batch: c(self.max_submit_batch),
            max_page_items: c(self.max_page_items),
            max_inflight_requests: c(self.max_inflight_requests),
            push_window: c(self.push_window),
        }
    }
}
