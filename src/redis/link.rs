//! The redis bridge's command connection: to one Redis server (at a fixed address or
//! found through Sentinel) or over a Redis Cluster's masters, with one interface.
//!
//! It also settles which pub/sub the node uses: sharded (`SPUBLISH` / `SSUBSCRIBE`) in
//! a cluster whose servers have it, or on one server with shard mode and Redis 7;
//! classic (`PUBLISH` / `SUBSCRIBE`) otherwise.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;

use super::client::{Connection, RedisError, RedisOptions, Reply};
use super::cluster::{self, ClusterConnection};
use crate::config::RedisConfig;

/// Where the Redis of the adapter is, and how to use its pub/sub.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// `AUTH`, `SELECT`, timeouts; the address (or the sentinels) of a single server.
    pub opts: RedisOptions,
    /// Seed nodes of a Redis Cluster (`adapter.redis.clusterMode`); `None` for one server.
    pub cluster: Option<Vec<(String, u16)>>,
    /// Sharded pub/sub on a single server too (`adapter.redis.shardMode`).
    pub shard_mode: bool,
    /// Counts the cluster's `-MOVED` and `-ASK` redirections followed.
    pub redirects: Arc<AtomicU64>,
}

impl Deployment {
    /// The deployment the configuration describes, connecting with `opts`. A cluster
    /// without seed nodes is found through `database.redis.host` and `.port`.
    #[must_use]
    pub fn from_config(redis: &RedisConfig, opts: RedisOptions) -> Self {
        let cluster = redis.cluster_mode.then(|| {
            if redis.cluster_nodes.is_empty() {
                vec![(redis.host.clone(), redis.port)]
            } else {
                redis.cluster_nodes.clone()
            }
        });
        Self {
            opts,
            cluster,
            shard_mode: redis.shard_mode,
            redirects: Arc::default(),
        }
    }

    /// Whether sharded pub/sub is wanted (it is used when the servers have it).
    #[must_use]
    pub fn wants_sharded(&self) -> bool {
        self.cluster.is_some() || self.shard_mode
    }
}

/// A command connection to the deployment.
pub enum Link {
    /// One server; `sharded` when shard mode is on and the server has sharded pub/sub.
    Single { conn: Connection, sharded: bool },
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl Link {
    /// Connects: to the server, or discovers the cluster from its seeds.
    pub async fn connect(at: &Deployment) -> Result<Link, RedisError> {
        if let Some(seeds) = &at.cluster {
            return Ok(Link::Cluster(
                ClusterConnection::connect(&at.opts, seeds, Arc::clone(&at.redirects)).await?,
            ));
        }
        let mut conn = Connection::connect(&at.opts).await?;
        let sharded = at.shard_mode && cluster::has_sharded_pubsub(&mut conn).await?;
        Ok(Link::Single { conn, sharded })
    }

    /// Whether publishes go out with `SPUBLISH` (and nodes listen with `SSUBSCRIBE`).
    #[must_use]
    pub fn sharded(&self) -> bool {
        match self {
            Link::Single { sharded, .. } => *sharded,
            Link::Cluster(c) => c.topology().sharded,
        }
    }

    /// What this connection reached, for logs.
    #[must_use]
    pub fn server(&self) -> String {
        match self {
            Link::Single { conn, .. } => conn.server().to_owned(),
            Link::Cluster(c) => c.server(),
        }
    }

    /// Connected through sentinels, which have announced a new master since.
    #[must_use]
    pub fn moved(&self) -> bool {
        match self {
            Link::Single { conn, .. } => conn.moved(),
            Link::Cluster(_) => false,
        }
    }

    /// One command and its reply; see [`Connection::call`].
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        match self {
            Link::Single { conn, .. } => conn.call(args).await,
            Link::Cluster(c) => c.call(args).await,
        }
    }

    /// Many commands, one reply each in order; see [`Connection::pipeline`].
    pub async fn pipeline(&mut self, cmds: &[Vec<Bytes>]) -> Result<Vec<Reply>, RedisError> {
        match self {
            Link::Single { conn, .. } => conn.pipeline(cmds).await,
            Link::Cluster(c) => c.pipeline(cmds).await,
        }
    }

    /// How many connections listen to the pub/sub `channel` (in the mode in use).
    pub async fn numsub(&mut self, channel: &[u8]) -> Result<usize, RedisError> {
        match self {
            Link::Single { conn, sharded } => {
                let sub: &[u8] = if *sharded { b"SHARDNUMSUB" } else { b"NUMSUB" };
                let reply = conn.call(&[b"PUBSUB", sub, channel]).await?;
                Ok(cluster::count_of(&reply))
            }
            Link::Cluster(c) => {
                let sharded = c.topology().sharded;
                c.numsub(channel, sharded).await
            }
        }
    }
}
