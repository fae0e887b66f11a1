//! The counters one shard writes: per app where Soketi labels by app, per shard otherwise.
//!
//! Every cell has exactly one writer, the shard thread that owns the `ShardMetrics`; the
//! scrape thread only reads. So an update is a relaxed load and a relaxed store (a plain
//! `add` to memory on x86), never a locked read-modify-write, and no cache line is
//! contended on the hot path. A second writer would not be undefined behaviour, only lost
//! updates: keep each `ShardMetrics` on its shard.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering::Relaxed};

/// Upper bounds of the delivery latency buckets, in microseconds; `+Inf` follows.
pub const LATENCY_BUCKETS_MICROS: [u64; 15] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

/// A per-shard counter that Soketi does not have (rendered as `corecast_*_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Best-effort envelopes dropped because a ring to another shard was full.
    FanoutDropped,
    /// Connections closed because their outbound queue passed its byte bound.
    SlowReaderDisconnects,
    /// Client messages that broke the protocol (bad JSON, bad frames, ...).
    ProtocolErrors,
    /// Client events refused (disabled for the app, not subscribed, too large, ...).
    ClientEventsRejected,
    /// REST publishes refused by the backend events rate limit.
    RateLimitedBackend,
    /// REST reads refused by the read requests rate limit.
    RateLimitedRead,
    /// Client events refused by the client events rate limit.
    RateLimitedClient,
    /// Connections refused by the app's connection limit.
    ConnectionsRejected,
    /// WebSocket upgrades refused (unknown app key, disabled app, bad handshake).
    HandshakesRejected,
    /// Connections and REST requests refused because the app manager could not say
    /// whether their app exists (database unreachable).
    AppLookupsRefused,
    /// WebSocket handshakes refused because their `Origin` is not in the app's
    /// `allowedOrigins`.
    OriginsRejected,
    /// Payload bytes of published frames compressed for permessage-deflate, before.
    WsCompressionBytesIn,
    /// The same frames' payload bytes once compressed.
    WsCompressionBytesOut,
    /// Published frames compressed (once per shard and window size, not per socket).
    WsFramesCompressed,
}

impl Counter {
    /// How many variants there are: the length of the per-shard counter array.
    pub const COUNT: usize = 14;

    /// Every variant, in index order.
    pub const ALL: [Counter; Counter::COUNT] = [
        Counter::FanoutDropped,
        Counter::SlowReaderDisconnects,
        Counter::ProtocolErrors,
        Counter::ClientEventsRejected,
        Counter::RateLimitedBackend,
        Counter::RateLimitedRead,
        Counter::RateLimitedClient,
        Counter::ConnectionsRejected,
        Counter::HandshakesRejected,
        Counter::AppLookupsRefused,
        Counter::OriginsRejected,
        Counter::WsCompressionBytesIn,
        Counter::WsCompressionBytesOut,
        Counter::WsFramesCompressed,
    ];

    const fn index(self) -> usize {
        self as usize
    }
}

/// The IO driver a shard's monoio runtime runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDriver {
    /// io_uring.
    IoUring,
    /// monoio's legacy driver, on epoll.
    Epoll,
}

impl IoDriver {
    /// Every driver, in the order the `driver` label values are rendered.
    pub const ALL: [IoDriver; 2] = [IoDriver::IoUring, IoDriver::Epoll];

    /// The value of the `driver` label, and the name in the start-up log line.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            IoDriver::IoUring => "io_uring",
            IoDriver::Epoll => "epoll",
        }
    }

    /// The non-zero code kept in the metrics cell (0 is "not started").
    const fn code(self) -> u8 {
        match self {
            IoDriver::IoUring => 1,
            IoDriver::Epoll => 2,
        }
    }

    const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(IoDriver::IoUring),
            2 => Some(IoDriver::Epoll),
            _ => None,
        }
    }
}

/// One app's cells on one shard. Aligned so that two apps never share a cache line
/// with another shard's cells (each shard allocates its own).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct AppCells {
    /// Sockets of this app open on this shard (a gauge: up on open, down on close).
    pub(crate) connected: AtomicI64,
    pub(crate) new_connections: AtomicU64,
    pub(crate) new_disconnections: AtomicU64,
    pub(crate) socket_received_bytes: AtomicU64,
    pub(crate) socket_transmitted_bytes: AtomicU64,
    pub(crate) ws_messages_received: AtomicU64,
    pub(crate) ws_messages_sent: AtomicU64,
    pub(crate) http_received_bytes: AtomicU64,
    pub(crate) http_transmitted_bytes: AtomicU64,
    pub(crate) http_calls_received: AtomicU64,
}

/// Counters one shard writes, per app where Soketi labels by app (index = app index).
#[derive(Debug)]
#[repr(align(128))]
pub struct ShardMetrics {
    /// Soketi's per-app series, indexed by the app's index in the app table.
    apps: Box<[AppCells]>,
    /// HTTP calls that matched no app (health checks, 404s): only their bytes and
    /// calls count, under an empty `app_id`.
    unattributed: AppCells,
    /// corecast's own counters, indexed by `Counter as usize`.
    counters: [AtomicU64; Counter::COUNT],
    /// Envelopes waiting in this shard's inbound rings, as the shard last saw them.
    ring_depth: AtomicU64,
    /// Delivery latency: one count per bucket of `LATENCY_BUCKETS_MICROS`, then `+Inf`
    /// (not cumulative; the scrape sums them).
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_MICROS.len() + 1],
    /// Sum of every observed latency, in microseconds.
    latency_sum_micros: AtomicU64,
    /// The shard's IO driver ([`IoDriver::code`]), set once when its runtime starts; 0
    /// before.
    io_driver: AtomicU8,
}

impl ShardMetrics {
    /// Zeroed counters for `apps` apps.
    #[must_use]
    pub fn new(apps: usize) -> Self {
        Self {
            apps: (0..apps).map(|_| AppCells::default()).collect(),
            unattributed: AppCells::default(),
            counters: Default::default(),
            ring_depth: AtomicU64::new(0),
            latency_buckets: Default::default(),
            latency_sum_micros: AtomicU64::new(0),
            io_driver: AtomicU8::new(0),
        }
    }

    /// Moves the `connected` gauge of `app` by `delta` (+1 on open, -1 on close).
    #[inline]
    pub fn add_connected(&self, app: usize, delta: i64) {
        if let Some(cells) = self.app(app) {
            add_i64(&cells.connected, delta);
        }
    }

    /// Counts one WebSocket connection accepted for `app`.
    #[inline]
    pub fn inc_new_connection(&self, app: usize) {
        if let Some(cells) = self.app(app) {
            add(&cells.new_connections, 1);
        }
    }

    /// Counts one WebSocket connection of `app` closed, for whatever reason.
    #[inline]
    pub fn inc_disconnection(&self, app: usize) {
        if let Some(cells) = self.app(app) {
            add(&cells.new_disconnections, 1);
        }
    }

    /// Counts `messages` WebSocket messages of `bytes` payload bytes received for `app`.
    #[inline]
    pub fn add_ws_received(&self, app: usize, messages: u64, bytes: u64) {
        if let Some(cells) = self.app(app) {
            add(&cells.ws_messages_received, messages);
            add(&cells.socket_received_bytes, bytes);
        }
    }

    /// Counts `messages` WebSocket messages of `bytes` payload bytes sent for `app`.
    #[inline]
    pub fn add_ws_sent(&self, app: usize, messages: u64, bytes: u64) {
        if let Some(cells) = self.app(app) {
            add(&cells.ws_messages_sent, messages);
            add(&cells.socket_transmitted_bytes, bytes);
        }
    }

    /// Counts one REST call and its body bytes; `app` is `None` when no app matched.
    #[inline]
    pub fn add_http(&self, app: Option<usize>, received_bytes: u64, transmitted_bytes: u64) {
        let cells = match app {
            Some(app) => match self.app(app) {
                Some(cells) => cells,
                None => return,
            },
            None => &self.unattributed,
        };
        add(&cells.http_calls_received, 1);
        add(&cells.http_received_bytes, received_bytes);
        add(&cells.http_transmitted_bytes, transmitted_bytes);
    }

    /// Adds `n` to one of corecast's own counters.
    #[inline]
    pub fn inc(&self, counter: Counter, n: u64) {
        add(&self.counters[counter.index()], n);
    }

    /// Records how many envelopes wait in this shard's inbound rings.
    #[inline]
    pub fn set_ring_depth(&self, depth: u64) {
        self.ring_depth.store(depth, Relaxed);
    }

    /// Records one delivery that took `micros` microseconds from publish to write.
    #[inline]
    pub fn observe_latency(&self, micros: u64) {
        let bucket = LATENCY_BUCKETS_MICROS.partition_point(|&upper| upper < micros);
        add(&self.latency_buckets[bucket], 1);
        add(&self.latency_sum_micros, micros);
    }

    /// Records the IO driver the shard's runtime runs on (once, at start).
    pub fn set_io_driver(&self, driver: IoDriver) {
        self.io_driver.store(driver.code(), Relaxed);
    }

    /// The cells of `app`, or `None` (and a debug assertion) for an index the app
    /// table never handed out.
    #[inline]
    fn app(&self, app: usize) -> Option<&AppCells> {
        let cells = self.apps.get(app);
        debug_assert!(cells.is_some(), "app index {app} out of range");
        cells
    }

    // Reads, for the scrape thread.

    pub(crate) fn apps(&self) -> &[AppCells] {
        &self.apps
    }

    pub(crate) fn unattributed(&self) -> &AppCells {
        &self.unattributed
    }

    pub(crate) fn counter(&self, counter: Counter) -> u64 {
        self.counters[counter.index()].load(Relaxed)
    }

    /// The shard's IO driver, once its runtime has started.
    pub(crate) fn io_driver(&self) -> Option<IoDriver> {
        IoDriver::from_code(self.io_driver.load(Relaxed))
    }

    pub(crate) fn ring_depth(&self) -> u64 {
        self.ring_depth.load(Relaxed)
    }

    /// Sockets open on this shard, over every app.
    pub(crate) fn connections(&self) -> i64 {
        self.apps.iter().map(|c| c.connected.load(Relaxed)).sum()
    }

    /// The latency histogram as non-cumulative bucket counts (the last is `+Inf`) and
    /// the sum in microseconds.
    pub(crate) fn latency(&self) -> ([u64; LATENCY_BUCKETS_MICROS.len() + 1], u64) {
        let buckets = std::array::from_fn(|i| self.latency_buckets[i].load(Relaxed));
        (buckets, self.latency_sum_micros.load(Relaxed))
    }
}

/// Single-writer add: the owning shard is the only thread that stores to `cell`.
#[inline]
fn add(cell: &AtomicU64, n: u64) {
    cell.store(cell.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Single-writer add for gauges that go down as well as up.
#[inline]
fn add_i64(cell: &AtomicI64, n: i64) {
    cell.store(cell.load(Relaxed).wrapping_add(n), Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_first_bucket_that_holds_it() {
        let m = ShardMetrics::new(0);
        m.observe_latency(0);
        m.observe_latency(50);
        m.observe_latency(51);
        m.observe_latency(2_500_000);
        m.observe_latency(2_500_001);
        let (buckets, sum) = m.latency();
        assert_eq!(buckets[0], 2, "0 and 50 are <= 50");
        assert_eq!(buckets[1], 1, "51 is <= 100");
        assert_eq!(buckets[LATENCY_BUCKETS_MICROS.len() - 1], 1);
        assert_eq!(
            buckets[LATENCY_BUCKETS_MICROS.len()],
            1,
            "past the last bound is +Inf"
        );
        assert_eq!(sum, 50 + 51 + 2_500_000 + 2_500_001);
    }

    #[test]
    fn io_driver_is_unset_until_recorded() {
        let m = ShardMetrics::new(0);
        assert_eq!(m.io_driver(), None);
        for driver in IoDriver::ALL {
            m.set_io_driver(driver);
            assert_eq!(m.io_driver(), Some(driver));
        }
    }

    #[test]
    fn counter_indices_match_all() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
    }

    #[test]
    fn connections_sum_the_apps_gauges() {
        let m = ShardMetrics::new(3);
        m.add_connected(0, 2);
        m.add_connected(2, 5);
        m.add_connected(2, -1);
        assert_eq!(m.connections(), 6);
    }

    #[test]
    fn unknown_app_index_is_ignored_in_release() {
        // Only meaningful without debug assertions; with them, the index is a bug to catch.
        if cfg!(debug_assertions) {
            return;
        }
        let m = ShardMetrics::new(1);
        m.add_ws_sent(7, 1, 1);
        assert_eq!(m.apps().len(), 1);
    }
}
