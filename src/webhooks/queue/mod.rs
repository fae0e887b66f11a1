//! The durable webhook queue (`SOKETI_QUEUE_DRIVER=redis`): webhook jobs in Redis streams,
//! sent by the sender threads of any node.
//!
//! # Layout in Redis
//!
//! Jobs are spread over `partitions` streams `{prefix}{corecast:webhooks}:p{n}` by the
//! CRC16 of their ordering key (the webhook URL, plus the channel when a request carries
//! one event; the URL alone with batching on). Every node reads them in the consumer group
//! `corecast`, as consumer `{hostname}-{pid}-{start time}`. A partition is consumed by one
//! node at a time, the one holding its lease (`lease.rs`): leases live in the hash
//! `{prefix}{corecast:webhooks}:owners` and are renewed every second (every third of the claim timeout if that is shorter), so
//! a partition given back is taken within a second;
//! nodes share the partitions evenly. Jobs given up go to the dead-letter stream
//! `{prefix}{corecast:webhooks}:dead`, with the error and the attempts. All keys carry one
//! hash tag, so a Redis Cluster keeps them on one master.
//!
//! # A job's life
//!
//! 1. A shard or the redis bridge calls `Webhooks::send` (never blocks); the sender thread
//!    batches, signs and renders the request as with the sync driver, then appends it
//!    (`XADD ... MAXLEN ~ max_length`) on its own connection. Only then is it "sent" for
//!    the node (`corecast_webhook_queue_appended_total`). Until then it lives in the
//!    thread's memory: a SIGKILL loses what the last pipeline had not written, normally
//!    the events of the last few milliseconds. A failed append is retried, counted.
//! 2. The lease owner reads it (`XREADGROUP ... BLOCK 1000` on a connection of its own)
//!    and sends it. Jobs with one ordering key go one at a time in stream order
//!    (`order.rs`); other keys run in parallel, within the sender's in-flight bounds.
//! 3. A 2xx answer: `XACK` and `XDEL`. A failure: retried with the sender's back-off, up to
//!    `max_attempts`; then `XADD` to the dead-letter stream, `XACK`, `XDEL`.
//! 4. When a node dies its leases expire; the node taking a partition over claims its
//!    pending jobs (`XAUTOCLAIM ... 0`: the lease says nobody else sends them) in id order
//!    before reading new ones, and counts the attempts already made from the delivery
//!    count `XPENDING` reports. Delivery is at least once: a job whose 2xx came just before
//!    its sender died is sent again.
//!
//! Ordering holds per key while one node owns the partition; a lease moving to another
//! node (a dead node, or a new node taking its share) may let an attempt already running
//! on the old owner land after the new owner's next job.
//!
//! # Layout
//!
//! - `wire.rs`: key names, a job's fields, reply parsing (sans-IO).
//! - `order.rs`: one job at a time per ordering key (sans-IO).
//! - `lease.rs`: the lease script.
//! - `io.rs`: the command task (appends, acks, dead letters, leases, claims, depth) and
//!   the reader task, each on its own Redis connection.
//! - `consume.rs`: sending the jobs read, in the sender thread's loop.

pub(crate) mod consume;
pub(crate) mod io;
mod lease;
pub(crate) mod order;
pub(crate) mod wire;

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{Config, Mode, QueueDriver};
use crate::redis::client::RedisOptions;
use crate::redis::link::Deployment;

/// How this node uses the queue.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// The adapter's Redis.
    pub at: Deployment,
    /// Key names.
    pub keys: wire::Keys,
    /// This process's consumer name, unique per start.
    pub consumer: String,
    pub partitions: u16,
    /// Lease lifetime: a dead node's partitions are taken over within it.
    pub claim_timeout: Duration,
    /// Attempts per job before the dead-letter stream.
    pub max_attempts: u32,
    /// Approximate `MAXLEN` of each partition stream.
    pub max_length: u64,
    /// Appends the webhooks this node decides (modes full and server).
    pub enqueue: bool,
    /// Reads and sends queued jobs (modes full and worker).
    pub consume: bool,
}

impl QueueSettings {
    /// The queue of `config`, `None` with the sync driver.
    #[must_use]
    pub fn from_config(config: &Config) -> Option<Self> {
        if config.queue.driver != QueueDriver::Redis {
            return None;
        }
        let r = &config.redis;
        let opts = RedisOptions {
            host: r.host.clone(),
            port: r.port,
            username: r.username.clone(),
            password: r.password.clone(),
            db: r.db,
            connect_timeout: Duration::from_secs(2),
            sentinels: crate::redis::sentinel::Sentinels::from_config(r),
        };
        Some(Self {
            at: Deployment::from_config(r, opts),
            keys: wire::Keys::new(&r.key_prefix),
            consumer: consumer_name(),
            partitions: config.queue.partitions.max(1),
            claim_timeout: config.queue.claim_timeout,
            max_attempts: config.queue.max_attempts.max(1),
            max_length: config.queue.max_length,
            enqueue: config.mode != Mode::Worker,
            consume: config.mode != Mode::Server,
        })
    }
}

/// `{hostname}-{pid}-{ms since the epoch}`: unique even for containers that all run as
/// pid 1, so a restarted node never inherits a dead one's pending jobs by name.
fn consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{host}-{}-{ms}", std::process::id())
}

/// The queue's counters and gauges, for `corecast_webhook_queue_*`.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// 1 while the command connection is up.
    pub up: AtomicU64,
    /// Event copies appended to the streams.
    pub appended: AtomicU64,
    /// Append pipelines that failed (Redis down, an error reply); their jobs are retried.
    pub append_failures: AtomicU64,
    /// Jobs in the partition streams (`XLEN`), as of the last lease round.
    pub depth: AtomicU64,
    /// Entries in the dead-letter stream, as of the last lease round.
    pub dead_depth: AtomicU64,
    /// Jobs this node moved to the dead-letter stream.
    pub dead_letters: AtomicU64,
    /// Retries of queued jobs sent by this node.
    pub retries: AtomicU64,
    /// Pending jobs this node claimed when it took a partition over.
    pub claimed: AtomicU64,
    /// Partitions this node owns now.
    pub owned: AtomicU64,
    /// Jobs read, sent and acknowledged after a 2xx by this node.
    pub acked: AtomicU64,
}

/// A copy of [`QueueStats`], for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub up: u64,
    pub appended: u64,
    pub append_failures: u64,
    pub depth: u64,
    pub dead_depth: u64,
    pub dead_letters: u64,
    pub retries: u64,
    pub claimed: u64,
    pub owned: u64,
    pub acked: u64,
}

impl QueueStats {
    /// The values now.
    #[must_use]
    pub fn counts(&self) -> QueueCounts {
        let g = |c: &AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        QueueCounts {
            up: g(&self.up),
            appended: g(&self.appended),
            append_failures: g(&self.append_failures),
            depth: g(&self.depth),
            dead_depth: g(&self.dead_depth),
            dead_letters: g(&self.dead_letters),
            retries: g(&self.retries),
            claimed: g(&self.claimed),
            owned: g(&self.owned),
            acked: g(&self.acked),
        }
    }
}
