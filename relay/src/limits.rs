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
/// Default bytes of frames queued for one connection and not yet handed to QUIC. A request is
/// read only while the queue has room for the largest answer of every request in flight
/// (each counts as [`wire::MAX_FRAME_LEN`]); a frame that does not fit closes the connection
/// with `SLOW_CONSUMER`.
pub const MAX_OUTGOING_BYTES: usize = 16 * 1024 * 1024;
/// Default sustained events per second accepted from one device (over all its connections).
pub const EVENTS_PER_SEC: u32 = 5_000;
/// Default burst of events one device may submit above its sustained rate.
pub const EVENT_BURST: u32 = 10_000;
/// Default sustained events per second accepted from all the devices of one user.
pub const USER_EVENTS_PER_SEC: u32 = 10_000;
/// Default burst of events all the devices of one user may submit above their sustained rate.
pub const USER_EVENT_BURST: u32 = 20_000;
/// Default most link bundles ([`tidings_engine::link`]) the relay keeps at once, over all users
/// (in memory: a relay restart drops them, and the user links again).
pub const MAX_LINK_SLOTS: usize = 1024;
/// Default most link bundles one user keeps at once.
pub const MAX_LINK_SLOTS_PER_USER: usize = 4;
/// Default milliseconds a link bundle waits to be taken: ten minutes.
pub const LINK_TTL_MS: u64 = 10 * 60 * 1000;
/// Default sustained link takes per second from one address prefix. A take comes before any
/// identity (the new device has none yet); this and the connection limits bound what a
/// stranger can make the relay do with them (a slot is 256 bits: guessing one is hopeless).
pub const LINK_TAKES_PER_SEC: u32 = 1;
/// Default burst of link takes from one address prefix.
pub const LINK_TAKE_BURST: u32 = 5;
/// Default most rate buckets (devices, users and address prefixes) the relay keeps; past it, buckets that
/// refilled completely (indistinguishable from new ones) are dropped first, then the least
/// recently used.
pub const MAX_RATE_BUCKETS: usize = 100_000;
/// Default most connections in total.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Default most connections from one address prefix (see [`IPV4_PREFIX_LEN`] and
/// [`IPV6_PREFIX_LEN`]).
pub const MAX_CONNECTIONS_PER_PREFIX: usize = 256;
/// Default prefix length (bits) that groups IPv4 peers for [`MAX_CONNECTIONS_PER_PREFIX`]: 32,
/// one address. A /24 would make the users behind one provider's NAT pool share a limit, while
/// an attacker rarely holds many IPv4 addresses.
pub const IPV4_PREFIX_LEN: u8 = 32;
/// Default prefix length (bits) that groups IPv6 peers: 64, the block a provider hands one
/// subscriber (an attacker has 2^64 addresses in it for free).
pub const IPV6_PREFIX_LEN: u8 = 64;
/// Default most connections that have not authenticated yet, over all peers. Checked on a
/// connection's first packet, before any TLS work: past it new connections are refused at once
/// (a stateless close), so strangers cannot make the relay spend more than this many
/// handshakes' state and CPU at a time. Honest devices authenticate within a round trip or
/// two and leave the count.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Default number of pending connections from which a new peer must first prove its address
/// (a QUIC Retry round trip; a spoofed source never answers, so it costs one stateless packet).
pub const RETRY_PENDING_HANDSHAKES: usize = 256;
/// Default milliseconds from the first packet of a connection to `Welcome`: an unauthenticated
/// connection is closed then, whatever keep-alives it sends.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Default largest frame body read before authentication: `Hello` (67 bytes), `Auth` (65) and
/// anything of a registration's size fit; nothing larger is read from a stranger.
pub const MAX_HANDSHAKE_FRAME_LEN: usize = 512;
/// Default most milliseconds a conversation's `server_ts_ms` may stay ahead of the relay's
/// clock: within it stamps never decrease (small clock steps back are absorbed); past it the
/// previous stamp came from a clock that was wrong, and stamps follow the clock again.
pub const MAX_TS_LEAD_MS: u64 = 60_000;
/// Default most events in one group commit (it may end with the rest of the submit that
/// crosses it). Submits past it wait in the core and fill the next commits one submit per
/// connection per round.
pub const MAX_COMMIT_BATCH: usize = 4096;
/// Default longest wait (ms) before staged events are committed; 0 commits as soon as no
/// input is waiting, which batches naturally under load (inputs queue up during an fsync).
pub const COMMIT_WINDOW_MS: u64 = 0;
/// Default threads that sign a commit's acks (0: one per available core).
pub const ACK_SIGN_THREADS: usize = 0;
/// Default threads that verify submitted signatures, off the async runtime (0: one per
/// available core). See [`crate::verify::VerifyPool`].
pub const VERIFY_THREADS: usize = 0;
/// Default capacity of the queue from connections to the core (inputs), and the most submits
/// that wait in the core for room in a commit (past it the core stops reading that queue).
pub const CORE_QUEUE: usize = 1024;
/// Default seconds without traffic before a QUIC connection is dropped.
pub const IDLE_TIMEOUT_SECS: u64 = 30;
/// Default seconds for the graceful shutdown to drain connections before closing them.
pub const SHUTDOWN_GRACE_SECS: u64 = 5;
/// Default UDP socket buffer, in bytes ([`crate::RelayConfig::udp_buffer_bytes`]): about 3,000
/// full-size QUIC packets.
pub const UDP_BUFFER_BYTES: usize = 4 << 20;
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
    /// See [`MAX_OUTGOING_BYTES`].
    pub max_outgoing_bytes: usize,
    /// See [`PUSH_WINDOW`].
    pub push_window: usize,
    /// See [`EVENTS_PER_SEC`].
    pub events_per_sec: u32,
    /// See [`EVENT_BURST`].
    pub event_burst: u32,
    /// See [`USER_EVENTS_PER_SEC`].
    pub user_events_per_sec: u32,
    /// See [`USER_EVENT_BURST`].
    pub user_event_burst: u32,
    /// See [`MAX_RATE_BUCKETS`].
    pub max_rate_buckets: usize,
    /// See [`MAX_LINK_SLOTS`].
    pub max_link_slots: usize,
    /// See [`MAX_LINK_SLOTS_PER_USER`].
    pub max_link_slots_per_user: usize,
    /// See [`LINK_TTL_MS`].
    pub link_ttl_ms: u64,
    /// See [`LINK_TAKES_PER_SEC`].
    pub link_takes_per_sec: u32,
    /// See [`LINK_TAKE_BURST`].
    pub link_take_burst: u32,
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`MAX_CONNECTIONS_PER_PREFIX`] (formerly `max_connections_per_ip`).
    #[serde(alias = "max_connections_per_ip")]
    pub max_connections_per_prefix: usize,
    /// See [`IPV4_PREFIX_LEN`] (at most 32).
    pub ipv4_prefix_len: u8,
    /// See [`IPV6_PREFIX_LEN`] (at most 128).
    pub ipv6_prefix_len: u8,
    /// See [`MAX_PENDING_HANDSHAKES`].
    pub max_pending_handshakes: usize,
    /// See [`RETRY_PENDING_HANDSHAKES`] (at most `max_pending_handshakes`).
    pub retry_pending_handshakes: usize,
    /// See [`HANDSHAKE_TIMEOUT_MS`].
    pub handshake_timeout_ms: u64,
    /// See [`MAX_HANDSHAKE_FRAME_LEN`].
    pub max_handshake_frame_len: usize,
    /// See [`MAX_TS_LEAD_MS`].
    pub max_ts_lead_ms: u64,
    /// See [`MAX_COMMIT_BATCH`].
    pub max_commit_batch: usize,
    /// See [`COMMIT_WINDOW_MS`].
    pub commit_window_ms: u64,
    /// See [`CORE_QUEUE`].
    pub core_queue: usize,
    /// See [`ACK_SIGN_THREADS`].
    pub ack_sign_threads: usize,
    /// See [`VERIFY_THREADS`].
    pub verify_threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_len: MAX_FRAME_LEN,
            max_submit_batch: MAX_SUBMIT_BATCH,
            max_page_items: MAX_PAGE_ITEMS,
            max_inflight_requests: MAX_INFLIGHT_REQUESTS,
            max_outgoing_bytes: MAX_OUTGOING_BYTES,
            push_window: PUSH_WINDOW,
            events_per_sec: EVENTS_PER_SEC,
            event_burst: EVENT_BURST,
            user_events_per_sec: USER_EVENTS_PER_SEC,
            user_event_burst: USER_EVENT_BURST,
            max_rate_buckets: MAX_RATE_BUCKETS,
            max_link_slots: MAX_LINK_SLOTS,
            max_link_slots_per_user: MAX_LINK_SLOTS_PER_USER,
            link_ttl_ms: LINK_TTL_MS,
            link_takes_per_sec: LINK_TAKES_PER_SEC,
            link_take_burst: LINK_TAKE_BURST,
            max_connections: MAX_CONNECTIONS,
            max_connections_per_prefix: MAX_CONNECTIONS_PER_PREFIX,
            ipv4_prefix_len: IPV4_PREFIX_LEN,
            ipv6_prefix_len: IPV6_PREFIX_LEN,
            max_pending_handshakes: MAX_PENDING_HANDSHAKES,
            retry_pending_handshakes: RETRY_PENDING_HANDSHAKES,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS,
            max_handshake_frame_len: MAX_HANDSHAKE_FRAME_LEN,
            max_ts_lead_ms: MAX_TS_LEAD_MS,
            max_commit_batch: MAX_COMMIT_BATCH,
            commit_window_ms: COMMIT_WINDOW_MS,
            core_queue: CORE_QUEUE,
            ack_sign_threads: ACK_SIGN_THREADS,
            verify_threads: VERIFY_THREADS,
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
        // Room for at least one largest answer, so that a request can always be read.
        self.max_outgoing_bytes = self
            .max_outgoing_bytes
            .max(wire::FRAME_HEADER_LEN + wire::MAX_FRAME_LEN);
        self.push_window = self.push_window.max(1);
        self.events_per_sec = self.events_per_sec.max(1);
        self.event_burst = self.event_burst.max(1);
        self.user_events_per_sec = self.user_events_per_sec.max(1);
        self.user_event_burst = self.user_event_burst.max(1);
        self.max_rate_buckets = self.max_rate_buckets.max(2);
        self.max_link_slots = self.max_link_slots.max(1);
        self.max_link_slots_per_user = self.max_link_slots_per_user.max(1);
        self.link_ttl_ms = self.link_ttl_ms.max(1);
        self.link_takes_per_sec = self.link_takes_per_sec.max(1);
        self.link_take_burst = self.link_take_burst.max(1);
        self.max_connections = self.max_connections.max(1);
        self.max_connections_per_prefix = self.max_connections_per_prefix.max(1);
        self.ipv4_prefix_len = self.ipv4_prefix_len.min(32);
        self.ipv6_prefix_len = self.ipv6_prefix_len.min(128);
        self.max_pending_handshakes = self.max_pending_handshakes.max(1);
        self.retry_pending_handshakes = self
            .retry_pending_handshakes
            .min(self.max_pending_handshakes);
        self.handshake_timeout_ms = self.handshake_timeout_ms.max(1);
        // Hello and Auth always fit.
        self.max_handshake_frame_len = self.max_handshake_frame_len.clamp(128, self.max_frame_len);
        self.max_commit_batch = self.max_commit_batch.max(1);
        self.core_queue = self.core_queue.max(1);
        self
    }

    /// Sets the rate of one device and of one user ([`Limits::events_per_sec`],
    /// [`Limits::event_burst`], [`Limits::user_events_per_sec`], [`Limits::user_event_burst`])
    /// to the same values.
    pub fn with_rate(mut self, events_per_sec: u32, event_burst: u32) -> Limits {
        self.events_per_sec = events_per_sec;
        self.event_burst = event_burst;
        self.user_events_per_sec = events_per_sec;
        self.user_event_burst = event_burst;
        self
    }

    /// Sets [`Limits::user_events_per_sec`] and [`Limits::user_event_burst`].
    pub fn with_user_rate(mut self, events_per_sec: u32, event_burst: u32) -> Limits {
        self.user_events_per_sec = events_per_sec;
        self.user_event_burst = event_burst;
        self
    }

    /// Sets [`Limits::max_connections_per_prefix`].
    pub fn with_connections_per_prefix(mut self, n: usize) -> Limits {
        self.max_connections_per_prefix = n;
        self
    }

    /// Sets [`Limits::max_pending_handshakes`] and [`Limits::retry_pending_handshakes`].
    pub fn with_pending_handshakes(mut self, max: usize, retry_from: usize) -> Limits {
        self.max_pending_handshakes = max;
        self.retry_pending_handshakes = retry_from;
        self
    }

    /// Sets [`Limits::handshake_timeout_ms`].
    pub fn with_handshake_timeout_ms(mut self, ms: u64) -> Limits {
        self.handshake_timeout_ms = ms;
        self
    }

    /// Sets [`Limits::max_outgoing_bytes`].
    pub fn with_outgoing_bytes(mut self, n: usize) -> Limits {
        self.max_outgoing_bytes = n;
        self
    }

    /// The prefix of `peer` that connection limits count by: the address cut to
    /// [`Limits::ipv4_prefix_len`] or [`Limits::ipv6_prefix_len`] bits. An IPv4-mapped IPv6
    /// address (a dual-stack socket's view of an IPv4 peer) counts as the IPv4 address.
    pub fn address_prefix(&self, peer: std::net::IpAddr) -> std::net::IpAddr {
        use std::net::IpAddr;
        match peer.to_canonical() {
            IpAddr::V4(a) => {
                let bits = u32::from(self.ipv4_prefix_len.min(32));
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let bits = u32::from(self.ipv6_prefix_len.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    /// Sets [`Limits::link_ttl_ms`].
    pub fn with_link_ttl_ms(mut self, ms: u64) -> Limits {
        self.link_ttl_ms = ms;
        self
    }

    /// Sets [`Limits::link_takes_per_sec`] and [`Limits::link_take_burst`].
    pub fn with_link_takes(mut self, per_sec: u32, burst: u32) -> Limits {
        self.link_takes_per_sec = per_sec;
        self.link_take_burst = burst;
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
