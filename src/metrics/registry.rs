//! What a scrape reads: every shard's counters, merged, plus extra sources; rendered in
//! the Prometheus text format (or Soketi's `?json` form) and as Soketi's `/usage`.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};
use serde_json::{Value, json};

use super::exposition::{Families, family_json, label};
use super::process;
use super::shard::{AppCells, Counter, IoDriver, LATENCY_BUCKETS_MICROS, ShardMetrics};

/// Whether an extra sample is a counter or a gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One extra series a source reports at scrape time (webhook counters, redis state).
/// Samples that share a name form one family; the first one's help and kind win.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The full metric name, prefix included.
    pub name: String,
    pub help: String,
    pub kind: Kind,
    /// `(label name, value)` pairs, in the order to render them.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// A counter sample without labels.
    #[must_use]
    pub fn counter(name: impl Into<String>, help: impl Into<String>, value: f64) -> Self {
        Self {
            name: name.into(),
            help: help.into(),
            kind: Kind::Counter,
            labels: Vec::new(),
            value,
        }
    }

    /// A gauge sample without labels.
    #[must_use]
    pub fn gauge(name: impl Into<String>, help: impl Into<String>, value: f64) -> Self {
        Self {
            kind: Kind::Gauge,
            ..Self::counter(name, help, value)
        }
    }

    /// Adds one label.
    #[must_use]
    pub fn with_label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((name.into(), value.into()));
        self
    }
}

/// A callback run at every scrape for its extra samples.
pub type Source = Box<dyn Fn() -> Vec<Sample> + Send + Sync>;

/// Everything a scrape reads: every shard's metrics plus extra sources.
pub struct Registry {
    /// Put before every Soketi metric name (`soketi_` by default).
    prefix: String,
    /// The WebSocket port, the value of Soketi's `port` label.
    port: String,
    /// App ids by app index, the value of Soketi's `app_id` label.
    app_ids: Vec<String>,
    /// A table an app manager fills: its apps are read at each scrape instead.
    table: Option<Arc<crate::app::AppTable>>,
    /// One per shard, in shard order (the `shard` label is the position).
    shards: Vec<Arc<ShardMetrics>>,
    /// Extra samples, asked for at each scrape.
    sources: Vec<Source>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("prefix", &self.prefix)
            .field("port", &self.port)
            .field("app_ids", &self.app_ids)
            .field("shards", &self.shards.len())
            .field("sources", &self.sources.len())
            .finish()
    }
}

/// One of Soketi's per-app series: name after the prefix, help, type, the cell to read.
type SoketiSeries = (&'static str, &'static str, MetricType, fn(&AppCells) -> f64);

/// Soketi's per-app series, in the order its Prometheus driver registers them.
const SOKETI_SERIES: [SoketiSeries; 10] = [
    (
        "connected",
        "The number of currently connected sockets.",
        MetricType::GAUGE,
        |c| c.connected.load(Relaxed) as f64,
    ),
    (
        "new_connections_total",
        "Total amount of soketi connection requests.",
        MetricType::COUNTER,
        |c| c.new_connections.load(Relaxed) as f64,
    ),
    (
        "new_disconnections_total",
        "Total amount of soketi disconnections.",
        MetricType::COUNTER,
        |c| c.new_disconnections.load(Relaxed) as f64,
    ),
    (
        "socket_received_bytes",
        "Total amount of bytes that soketi received.",
        MetricType::COUNTER,
        |c| c.socket_received_bytes.load(Relaxed) as f64,
    ),
    (
        "socket_transmitted_bytes",
        "Total amount of bytes that soketi transmitted.",
        MetricType::COUNTER,
        |c| c.socket_transmitted_bytes.load(Relaxed) as f64,
    ),
    (
        "ws_messages_received_total",
        "The total amount of WS messages received from connections by the server.",
        MetricType::COUNTER,
        |c| c.ws_messages_received.load(Relaxed) as f64,
    ),
    (
        "ws_messages_sent_total",
        "The total amount of WS messages sent to the connections from the server.",
        MetricType::COUNTER,
        |c| c.ws_messages_sent.load(Relaxed) as f64,
    ),
    (
        "http_received_bytes",
        "Total amount of bytes that soketi's REST API received.",
        MetricType::COUNTER,
        |c| c.http_received_bytes.load(Relaxed) as f64,
    ),
    (
        "http_transmitted_bytes",
        "Total amount of bytes that soketi's REST API sent back.",
        MetricType::COUNTER,
        |c| c.http_transmitted_bytes.load(Relaxed) as f64,
    ),
    (
        "http_calls_received_total",
        "Total amount of received REST API calls.",
        MetricType::COUNTER,
        |c| c.http_calls_received.load(Relaxed) as f64,
    ),
];

/// corecast's per-shard counters: family name, help, and the `kind` label if any.
fn counter_family(counter: Counter) -> (&'static str, &'static str, Option<&'static str>) {
    match counter {
        Counter::FanoutDropped => (
            "corecast_fanout_dropped_total",
            "Best-effort envelopes dropped because a ring to another shard was full.",
            None,
        ),
        Counter::SlowReaderDisconnects => (
            "corecast_slow_reader_disconnects_total",
            "Connections closed because their outbound queue passed its bound.",
            None,
        ),
        Counter::ProtocolErrors => (
            "corecast_protocol_errors_total",
            "Client messages that broke the Pusher protocol.",
            None,
        ),
        Counter::ClientEventsRejected => (
            "corecast_client_events_rejected_total",
            "Client events refused.",
            None,
        ),
        Counter::RateLimitedBackend => (RATE_LIMITED, RATE_LIMITED_HELP, Some("backend")),
        Counter::RateLimitedRead => (RATE_LIMITED, RATE_LIMITED_HELP, Some("read")),
        Counter::RateLimitedClient => (RATE_LIMITED, RATE_LIMITED_HELP, Some("client")),
        Counter::ConnectionsRejected => (
            "corecast_connections_rejected_total",
            "Connections refused by the app's connection limit.",
            None,
        ),
        Counter::HandshakesRejected => (
            "corecast_handshakes_rejected_total",
            "WebSocket upgrades refused.",
            None,
        ),
        Counter::AppLookupsRefused => (
            "corecast_app_lookups_refused_total",
            "Connections and REST requests refused while the app manager's database was unreachable.",
            None,
        ),
        Counter::OriginsRejected => (
            "corecast_origins_rejected_total",
            "WebSocket handshakes refused because the app does not allow their Origin.",
            None,
        ),
        Counter::WsCompressionBytesIn => (
            "corecast_ws_compression_bytes_in_total",
            "Payload bytes of published frames compressed for permessage-deflate, before compression.",
            None,
        ),
        Counter::WsCompressionBytesOut => (
            "corecast_ws_compression_bytes_out_total",
            "Payload bytes of the same frames after compression.",
            None,
        ),
        Counter::WsFramesCompressed => (
            "corecast_ws_compressed_frames_total",
            "Published frames compressed, once per shard and window size.",
            None,
        ),
    }
}

const RATE_LIMITED: &str = "corecast_rate_limited_total";
const RATE_LIMITED_HELP: &str = "Requests refused by a rate limit, by kind of limit.";
const LATENCY: &str = "corecast_delivery_latency_seconds";
const IO_DRIVER: &str = "corecast_io_driver";
const IO_DRIVER_HELP: &str =
    "1 for the IO driver the shard runs on (io_uring, or epoll as the fallback), 0 for the other.";

impl Registry {
    /// A registry over `shards`; `port` is the WebSocket port for Soketi's `port` label
    /// and `app_ids` the app ids by app index.
    #[must_use]
    pub fn new(
        prefix: &str,
        port: u16,
        app_ids: Vec<String>,
        shards: Vec<Arc<ShardMetrics>>,
    ) -> Self {
        Self {
            prefix: prefix.to_owned(),
            port: port.to_string(),
            app_ids,
            table: None,
            shards,
            sources: Vec::new(),
        }
    }

    /// Takes the apps from `table` at each scrape (a table an app manager fills).
    #[must_use]
    pub fn with_app_table(mut self, table: Arc<crate::app::AppTable>) -> Self {
        self.table = Some(table);
        self
    }

    /// Adds a callback that returns extra samples at scrape time (webhook counters,
    /// redis state).
    pub fn add_source(&mut self, source: Source) {
        self.sources.push(source);
    }

    /// The Prometheus text exposition: Soketi's series with the prefix and labels
    /// `app_id` and `port`, summed over shards; `corecast_*` series per shard with a
    /// `shard` label; the delivery latency as a histogram; then the sources' samples.
    #[must_use]
    pub fn render(&self) -> String {
        let families = self.families();
        let mut out = Vec::new();
        // Encoding into a Vec only fails for a family without metrics or name, and
        // `families` returns neither; an empty answer is the fallback, not a panic.
        if TextEncoder::new().encode(&families, &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The same series in the JSON shape Soketi's `/metrics?json` answers with
    /// (prom-client's `getMetricsAsJSON`).
    #[must_use]
    pub fn render_json(&self) -> String {
        let families: Vec<Value> = self.families().iter().map(family_json).collect();
        Value::Array(families).to_string()
    }

    /// Soketi's `/usage` body: `{"memory":{"free","used","total","percent"}}` in bytes,
    /// for this process (resident set against the cgroup or machine memory).
    #[must_use]
    pub fn usage_json(&self) -> String {
        let u = process::usage();
        json!({
            "memory": {
                "free": u.free,
                "used": u.used,
                "total": u.total,
                "percent": u.percent,
            }
        })
        .to_string()
    }

    /// Every family of one scrape, none empty.
    fn families(&self) -> Vec<MetricFamily> {
        let mut fams = Families::default();
        self.soketi_families(&mut fams);
        self.process_families(&mut fams);
        self.shard_families(&mut fams);
        for source in &self.sources {
            for s in source() {
                let kind = match s.kind {
                    Kind::Counter => MetricType::COUNTER,
                    Kind::Gauge => MetricType::GAUGE,
                };
                let labels = s.labels.iter().map(|(k, v)| label(k, v)).collect();
                fams.push(&s.name, &s.help, kind, labels, s.value);
            }
        }
        fams.finish()
    }

    fn soketi_families(&self, fams: &mut Families) {
        let added: Vec<String>;
        let app_ids = match &self.table {
            Some(table) => {
                added = table.ids().map(|(_, id)| id.to_owned()).collect();
                &added
            }
            None => &self.app_ids,
        };
        for (suffix, help, kind, read) in SOKETI_SERIES {
            let name = format!("{}{suffix}", self.prefix);
            fams.declare(&name, help, kind);
            for (i, app_id) in app_ids.iter().enumerate() {
                let value: f64 = self
                    .shards
                    .iter()
                    .filter_map(|s| s.apps().get(i))
                    .map(read)
                    .sum();
                fams.push(&name, help, kind, self.app_labels(app_id), value);
            }
            let unattributed: f64 = self.shards.iter().map(|s| read(s.unattributed())).sum();
            if unattributed != 0.0 {
                fams.push(&name, help, kind, self.app_labels(""), unattributed);
            }
        }
    }

    fn process_families(&self, fams: &mut Families) {
        let p = process::stats();
        let cpu_total = p
            .cpu_user_seconds
            .zip(p.cpu_system_seconds)
            .map(|(u, s)| u + s);
        let series = [
            (
                "process_cpu_user_seconds_total",
                "Total user CPU time spent in seconds.",
                MetricType::COUNTER,
                p.cpu_user_seconds,
            ),
            (
                "process_cpu_system_seconds_total",
                "Total system CPU time spent in seconds.",
                MetricType::COUNTER,
                p.cpu_system_seconds,
            ),
            (
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                MetricType::COUNTER,
                cpu_total,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                MetricType::GAUGE,
                p.start_time_seconds,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                MetricType::GAUGE,
                p.resident_memory_bytes.map(|v| v as f64),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                MetricType::GAUGE,
                p.virtual_memory_bytes.map(|v| v as f64),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                MetricType::GAUGE,
                p.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                MetricType::GAUGE,
                p.max_fds.map(|v| v as f64),
            ),
        ];
        for (suffix, help, kind, value) in series {
            if let Some(value) = value {
                let name = format!("{}{suffix}", self.prefix);
                fams.push(&name, help, kind, vec![label("port", &self.port)], value);
            }
        }
        // Only a binary built with the counting allocator has a meaningful count.
        #[cfg(feature = "count-alloc")]
        fams.push(
            "corecast_heap_allocations_total",
            "Heap allocations since start (the count-alloc build's counting allocator).",
            MetricType::COUNTER,
            vec![label("port", &self.port)],
            crate::perf::alloc::allocations() as f64,
        );
        #[cfg(feature = "count-alloc")]
        fams.push(
            "corecast_delivery_heap_allocations_total",
            "Heap allocations while shards queue frames on subscribers and flush their sockets (count-alloc build).",
            MetricType::COUNTER,
            vec![label("port", &self.port)],
            crate::perf::alloc::delivery_allocations() as f64,
        );
    }

    fn shard_families(&self, fams: &mut Families) {
        let shard_label = |i: usize| label("shard", &i.to_string());
        for (i, s) in self.shards.iter().enumerate() {
            fams.push(
                "corecast_connections",
                "WebSocket connections open on the shard.",
                MetricType::GAUGE,
                vec![shard_label(i)],
                s.connections() as f64,
            );
        }
        for (i, s) in self.shards.iter().enumerate() {
            // Shards not started yet have no driver and no series.
            let Some(running) = s.io_driver() else {
                continue;
            };
            for driver in IoDriver::ALL {
                fams.push(
                    IO_DRIVER,
                    IO_DRIVER_HELP,
                    MetricType::GAUGE,
                    vec![shard_label(i), label("driver", driver.label())],
                    f64::from(u8::from(driver == running)),
                );
            }
        }
        for (i, s) in self.shards.iter().enumerate() {
            fams.push(
                "corecast_ring_depth",
                "Envelopes waiting in the shard's inbound rings when it last looked.",
                MetricType::GAUGE,
                vec![shard_label(i)],
                s.ring_depth() as f64,
            );
        }
        for counter in Counter::ALL {
            let (name, help, kind) = counter_family(counter);
            for (i, s) in self.shards.iter().enumerate() {
                let mut labels = vec![shard_label(i)];
                if let Some(kind) = kind {
                    labels.push(label("kind", kind));
                }
                fams.push(
                    name,
                    help,
                    MetricType::COUNTER,
                    labels,
                    s.counter(counter) as f64,
                );
            }
        }
        for (i, s) in self.shards.iter().enumerate() {
            let (counts, sum_micros) = s.latency();
            let mut cumulative = 0;
            let mut buckets = Vec::with_capacity(LATENCY_BUCKETS_MICROS.len());
            for (upper, count) in LATENCY_BUCKETS_MICROS.iter().zip(counts) {
                cumulative += count;
                let mut b = Bucket::default();
                b.set_upper_bound(*upper as f64 / 1e6);
                b.set_cumulative_count(cumulative);
                buckets.push(b);
            }
            // The encoder writes the `+Inf` bucket from the sample count.
            let total = cumulative + counts[LATENCY_BUCKETS_MICROS.len()];
            let mut h = Histogram::default();
            h.set_bucket(buckets);
            h.set_sample_count(total);
            h.set_sample_sum(sum_micros as f64 / 1e6);
            let mut m = Metric::default();
            m.set_label(vec![shard_label(i)]);
            m.set_histogram(h);
            fams.push_metric(
                LATENCY,
                "Time from publish to write on the subscriber's socket, in seconds.",
                MetricType::HISTOGRAM,
                m,
            );
        }
    }

    fn app_labels(&self, app_id: &str) -> Vec<LabelPair> {
        vec![label("app_id", app_id), label("port", &self.port)]
    }
}

#[cfg(test)]
mod tests;
