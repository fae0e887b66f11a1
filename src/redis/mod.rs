//! Multi-node: the redis bridge, one extra thread that joins this node to the others
//! through Redis.
//!
//! - [`client`]: RESP connections on monoio sockets (commands with pipelining, pub/sub).
//! - [`resp`]: RESP encoding and decoding, pure.
//! - [`wire`]: the binary messages nodes publish to each other.
//! - [`scripts`]: the Lua scripts that keep cluster presence rosters atomic.
//! - [`cluster`]: Redis Cluster: the slot map, and commands routed to the slot's master.
//! - [`link`]: the bridge's command connection, to one server or over a cluster.
//! - [`sentinel`]: finding the master through Redis Sentinel, and hearing when it moves.
//! - [`bridge`]: the thread: publishes what local shards send it, hands what other
//!   nodes publish to every local shard, keeps cluster presence and counts in Redis,
//!   heartbeats, and removes the members of nodes that died.

pub mod bridge;
pub mod client;
pub mod cluster;
pub mod link;
pub mod resp;
pub mod scripts;
pub mod sentinel;
pub mod wire;
