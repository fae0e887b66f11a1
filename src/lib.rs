//! corecast: a Pusher Channels (protocol 7) server, one shard per core, on io_uring.
//!
//! # Layout
//!
//! - [`config`]: the `Config` with its documented defaults, read from `--config` JSON,
//!   `SOKETI_*` and `CORECAST_*` variables.
//! - [`auth`]: HMAC signing and checking for REST requests, channel auth and user sign-in.
//! - [`ws`]: RFC 6455 framing and the upgrade handshake, sans-IO.
//! - [`protocol`]: Pusher protocol 7 messages, channel names, error codes, sans-IO.
//! - [`app`]: the app table shared read-only by every shard.
//! - [`registry`]: shard-local channel subscriptions.
//! - [`fanout`]: the envelope shards exchange and the N x N mesh of SPSC rings.
//! - [`http`]: the REST API and health routes.
//! - [`shard`]: one pinned thread per core: accept loop, connection driver, fan-out.
//! - [`server`]: starts the shards, and stops them gracefully.
//! - [`signals`]: SIGTERM/SIGINT, blocked in every thread and awaited by `main`.
//! - [`tls`]: certificate and key loading for `wss://` and `https://` on the same port.
//! - [`metrics`]: per-shard counters merged at scrape time, and the metrics server.
//! - [`webhooks`]: Pusher webhooks: batching and signing, and the sender thread.
//! - [`redis`]: the redis adapter: RESP client, wire format, and the bridge thread.
//! - `perf` (cargo features `bench`, `count-alloc`; hidden): sans-IO entry points to the
//!   hot paths for the instruction-count benchmarks, and a counting allocator.

pub mod app;
pub mod auth;
pub mod config;
pub mod fanout;
pub mod http;
pub mod metrics;
#[cfg(any(feature = "bench", feature = "count-alloc"))]
#[doc(hidden)]
pub mod perf;
pub mod protocol;
pub mod redis;
pub mod registry;
pub mod server;
pub mod shard;
pub mod signals;
pub mod tls;
pub mod webhooks;
pub mod ws;
