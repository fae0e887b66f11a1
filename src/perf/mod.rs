//! Sans-IO entry points to the hot paths, for the instruction-count benchmarks
//! (`benches/hot_paths.rs`, run by `tests/perf.sh`) and the allocation counts
//! (`benches/hot_allocs.rs`). Compiled only with the `bench` cargo feature and hidden
//! from the docs: nothing in the server calls it.
//!
//! Each case is built by a `setup` (not measured) and run once by `run` (measured). The
//! steps are the library's own functions in the order the shard calls them (see
//! `src/http/mod.rs`, `src/http/events.rs`, `src/shard/publish.rs`, `src/shard/home.rs`,
//! `src/shard/users.rs`), minus the sockets: frames are queued on [`Outbound`] queues as
//! `Shard::deliver_local` queues them, never written.

pub mod alloc;
#[cfg(feature = "bench")]
mod cases;

#[cfg(feature = "bench")]
pub use cases::{ClientEvent, Fanout, PresenceJoinLeave, RedisWire, RestPublish, RingPushDrain};
