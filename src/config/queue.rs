//! Which processes send webhooks, and how: Soketi's `mode` (`SOKETI_MODE`) and
//! `queue.driver` (`SOKETI_QUEUE_DRIVER`), and the durable queue's own settings
//! (`queue.redis.*`, `CORECAST_WEBHOOK_QUEUE_*`).
//!
//! `sync` (the default) sends webhooks from the memory of the node that decided them, as
//! before. `redis` appends every webhook job to Redis streams first (the adapter's Redis,
//! `database.redis.*`), and sender threads on any node consume them; see
//! `src/webhooks/queue/`.

use std::time::Duration;

use super::ConfigError;
use super::value::{self, Raw};

/// What a process does (`SOKETI_MODE`, `mode`), as Soketi's modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// WebSocket and REST, and (with the redis queue) sending queued webhooks.
    Full,
    /// WebSocket and REST; with the redis queue it only enqueues webhooks.
    Server,
    /// Only sends queued webhooks: no WebSocket or REST listener (needs the redis queue).
    Worker,
}

impl Mode {
    /// The mode's name, as `mode` spells it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Server => "server",
            Mode::Worker => "worker",
        }
    }
}

/// Where webhook jobs wait (`SOKETI_QUEUE_DRIVER`, `queue.driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueDriver {
    /// In the deciding node's memory; lost when it dies.
    Sync,
    /// In Redis streams, consumed by any node.
    Redis,
}

/// The webhook queue's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// `SOKETI_QUEUE_DRIVER`, `sync`.
    pub driver: QueueDriver,
    /// `CORECAST_WEBHOOK_QUEUE_PARTITIONS`: streams the jobs are spread over by webhook
    /// and channel; each is consumed by one node at a time, which keeps a channel's
    /// webhooks in order. More partitions spread the sending over more nodes. 16.
    pub partitions: u16,
    /// `CORECAST_WEBHOOK_QUEUE_CLAIM_TIMEOUT_MS`: how long a node's partition leases last
    /// without renewal; a node that dies without goodbye has its partitions and pending
    /// jobs taken over by another within it. 30 s.
    pub claim_timeout: Duration,
    /// `CORECAST_WEBHOOK_QUEUE_MAX_ATTEMPTS`: attempts per job, the first included,
    /// before it goes to the dead-letter stream. 5.
    pub max_attempts: u32,
    /// `CORECAST_WEBHOOK_QUEUE_MAX_LENGTH`: approximate `MAXLEN` of each partition
    /// stream, bounding Redis memory when no node sends; past it the oldest jobs are
    /// trimmed. 100 000.
    pub max_length: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            driver: QueueDriver::Sync,
            partitions: 16,
            claim_timeout: Duration::from_secs(30),
            max_attempts: 5,
            max_length: 100_000,
        }
    }
}

/// Applies `mode` or a `queue.*` key this module owns; `Ok(false)` for other keys.
pub(crate) fn apply(
    mode: &mut Mode,
    q: &mut QueueConfig,
    key: &str,
    raw: &Raw,
    o: &str,
) -> Result<bool, ConfigError> {
    match key {
        "mode" => {
            *mode = match value::string(raw, o)?.as_str() {
                "full" => Mode::Full,
                "server" => Mode::Server,
                "worker" => Mode::Worker,
                _ => return Err(raw.invalid(o, "full, server or worker")),
            }
        }
        "queue.driver" => {
            q.driver = match value::string(raw, o)?.as_str() {
                "sync" => QueueDriver::Sync,
                "redis" => QueueDriver::Redis,
                _ => {
                    return Err(ConfigError::Unsupported {
                        option: o.to_owned(),
                        value: raw.shown(),
                        reason: "use sync or redis",
                    });
                }
            }
        }
        "queue.redis.partitions" => {
            let n = value::integer(raw, o, 1, 1024)?;
            q.partitions = u16::try_from(n).unwrap_or(1024);
        }
        "queue.redis.claimTimeoutMs" => {
            let ms = value::integer(raw, o, 300, 3_600_000)?;
            q.claim_timeout = Duration::from_millis(ms);
        }
        "queue.redis.maxAttempts" => {
            let n = value::integer(raw, o, 1, 1000)?;
            q.max_attempts = u32::try_from(n).unwrap_or(1000);
        }
        "queue.redis.maxLength" => q.max_length = value::integer(raw, o, 1, u64::MAX)?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// Refuses a worker without the redis queue: it would have nothing to do.
pub(crate) fn check(mode: Mode, q: &QueueConfig) -> Result<(), ConfigError> {
    if mode == Mode::Worker && q.driver != QueueDriver::Redis {
        return Err(ConfigError::Conflict {
            options: "mode and queue.driver",
            reason: "a worker sends queued webhooks: set queue.driver to redis",
        });
    }
    Ok(())
}
