//! Per-shard counters, merged when `/metrics` is scraped, and the metrics HTTP server.
//!
//! Each shard owns one [`ShardMetrics`] and is its only writer, so counting costs a
//! relaxed load and store with no contended cache line. The scrape thread reads every
//! shard through the [`Registry`] and sums per app for Soketi's series
//! (`soketi_connected{app_id,port}`, ...), keeps `corecast_*` series per shard, and
//! asks extra sources (webhooks, redis) for theirs.
//!
//! - `shard`: the counters a shard writes.
//! - `registry`: merging and rendering (Prometheus text, Soketi's `?json` and `/usage`).
//! - `exposition`: metric family building and prom-client's JSON shape.
//! - `process`: memory and CPU figures of this process, from `/proc`.
//! - `server`: the HTTP server on the metrics port.

mod exposition;
mod process;
mod registry;
mod server;
mod shard;

pub use registry::{Kind, Registry, Sample, Source};
pub use server::{MetricsServer, serve};
pub use shard::{Counter, IoDriver, LATENCY_BUCKETS_MICROS, ShardMetrics};
