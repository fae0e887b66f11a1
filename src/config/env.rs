//! Every environment variable corecast reads, in one table: its name, the config-file key it
//! sets (Soketi's dotted option path, so env and file go through the same code), its default,
//! and what corecast does with it.
//!
//! The `SOKETI_*` names and defaults are Soketi 1.6's (`src/cli/cli.ts` and `src/server.ts`),
//! plus two names only Soketi's docs give (`SOKETI_HTTP_MAX_REQUEST_SIZE`,
//! `SOKETI_CHANNEL_MAX_NAME_LENGTH`). As in Soketi an empty variable counts as unset.
//! `CORECAST_*` names are options Soketi lacks. Any other `SOKETI_*` or `CORECAST_*` variable is
//! an error ([`check_names`]): a typo must not silently run the default.
//!
//! Notes: "ignored" means accepted for drop-in compatibility but without effect, because
//! corecast has no such subsystem; "rejected" values select a subsystem corecast lacks and
//! stop the start (see `settings.rs`).

use super::ConfigError;

/// One supported environment variable.
#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    /// The full variable name.
    pub name: &'static str,
    /// The config-file key it sets.
    pub key: &'static str,
    /// The default, as text.
    pub default: &'static str,
    /// What it does in corecast.
    pub note: &'static str,
}

const fn var(
    name: &'static str,
    key: &'static str,
    default: &'static str,
    note: &'static str,
) -> EnvVar {
    EnvVar {
        name,
        key,
        default,
        note,
    }
}

const IGNORED: &str = "ignored: corecast has no such subsystem";

/// Every variable, sorted by name.
#[rustfmt::skip]
pub const VARS: &[EnvVar] = &[
    var("CORECAST_ACTIVITY_TIMEOUT", "activityTimeout", "120", "seconds; sent in connection_established, ping after this silence"),
    var("CORECAST_APP_MANAGER_MAX_APPS", "appManager.maxApps", "10000", "apps a mysql or postgres app manager can hold; per-app maps are sized by it"),
    var("CORECAST_DEFAULT_APP_ALLOWED_ORIGINS", "appManager.array.apps.0.allowedOrigins", "*", "first app's allowed WebSocket origins, comma-separated; *.example.com allows subdomains; no Origin header is always allowed"),
    var("CORECAST_DEFAULT_APP_ENABLE_SUBSCRIPTION_COUNT", "appManager.array.apps.0.enableSubscriptionCount", "false", "first app's live subscription counts (pusher:subscription_count)"),
    var("CORECAST_DEFAULT_APP_ENABLE_WATCHLIST_EVENTS", "appManager.array.apps.0.enableWatchlistEvents", "false", "first app's watchlist online/offline events"),
    var("CORECAST_HANDSHAKE_BURST", "handshakeBurst", "1000", "WebSocket handshakes accepted at once above the steady rate"),
    var("CORECAST_IO_DRIVER", "ioDriver", "auto", "shards' IO driver: auto (io_uring, else epoll), io_uring (or fail) or epoll"),
    var("CORECAST_MAX_CONNECTIONS", "maxConnections", "0", "WebSocket connections per server over all apps; 0 is unlimited"),
    var("CORECAST_MAX_HANDSHAKES_PER_SEC", "maxHandshakesPerSec", "0", "WebSocket handshakes per second per server; 0 is unlimited"),
    var("CORECAST_MAX_OUTBOUND_KB", "maxOutboundKb", "1024", "per-connection send queue bound; past it the socket is closed"),
    var("CORECAST_MAX_WS_MESSAGE_KB", "maxWsMessageKb", "256", "largest WebSocket message accepted from a client"),
    var("CORECAST_PONG_TIMEOUT", "pongTimeout", "30", "seconds to wait for a pong before closing with 4201"),
    var("CORECAST_PRESENCE_MEMBER_REMOVED_DELAY_MS", "presence.memberRemovedDelayMs", "0", "ms a presence member whose last socket left stays listed; a return within it sends clients neither member_removed nor member_added (0: off)"),
    var("CORECAST_REDIS_INTEREST", "adapter.redis.interest", "true", "redis adapter: a node receives only the events of channels it has subscribers for"),
    var("CORECAST_RING_CAPACITY", "ringCapacity", "16384", "envelopes per shard-to-shard ring"),
    var("CORECAST_SEND_BATCH", "sendBatch", "true", "io_uring shards hand a flush's sends to the kernel as one batch (one syscall) instead of one send each"),
    var("CORECAST_SHARDS", "shards", "(available cores)", "shard threads, one per core"),
    var("CORECAST_WEBHOOK_QUEUE_CLAIM_TIMEOUT_MS", "queue.redis.claimTimeoutMs", "30000", "redis queue: a dead node's partitions and pending webhook jobs are taken over within this"),
    var("CORECAST_WEBHOOK_QUEUE_MAX_ATTEMPTS", "queue.redis.maxAttempts", "5", "redis queue: attempts per webhook job before the dead-letter stream"),
    var("CORECAST_WEBHOOK_QUEUE_MAX_LENGTH", "queue.redis.maxLength", "100000", "redis queue: approximate MAXLEN of each partition stream"),
    var("CORECAST_WEBHOOK_QUEUE_PARTITIONS", "queue.redis.partitions", "16", "redis queue: streams the jobs are spread over, each sent by one node at a time"),
    var("CORECAST_WEBHOOK_VACATE_DELAY_MS", "webhooks.vacateDelayMs", "3000", "ms channel_vacated and member_removed webhooks wait; a return within it sends neither them nor the occupied/added webhook"),
    var("CORECAST_WS_COMPRESSION", "wsCompression", "off", "permessage-deflate for clients that offer it: on or off; each event is compressed once per shard"),
    var("CORECAST_WS_COMPRESSION_MIN_BYTES", "wsCompressionMinBytes", "1024", "with compression on, frames whose payload is smaller go uncompressed"),
    var("SOKETI_ADAPTER_CLUSTER_REQUESTS_TIMEOUT", "adapter.cluster.requestsTimeout", "5000", IGNORED),
    var("SOKETI_ADAPTER_DRIVER", "adapter.driver", "local", "local or redis; cluster and nats are rejected"),
    var("SOKETI_ADAPTER_NATS_CREDENTIALS", "adapter.nats.credentials", "null", IGNORED),
    var("SOKETI_ADAPTER_NATS_NODES_NUMBER", "adapter.nats.nodesNumber", "null", IGNORED),
    var("SOKETI_ADAPTER_NATS_PASSWORD", "adapter.nats.pass", "null", IGNORED),
    var("SOKETI_ADAPTER_NATS_PREFIX", "adapter.nats.prefix", "", IGNORED),
    var("SOKETI_ADAPTER_NATS_REQUESTS_TIMEOUT", "adapter.nats.requestsTimeout", "5000", IGNORED),
    var("SOKETI_ADAPTER_NATS_SERVERS", "adapter.nats.servers", "[\"127.0.0.1:4222\"]", IGNORED),
    var("SOKETI_ADAPTER_NATS_TIMEOUT", "adapter.nats.timeout", "10000", IGNORED),
    var("SOKETI_ADAPTER_NATS_TOKEN", "adapter.nats.token", "null", IGNORED),
    var("SOKETI_ADAPTER_NATS_USER", "adapter.nats.user", "null", IGNORED),
    var("SOKETI_ADAPTER_REDIS_CLUSTER_MODE", "adapter.redis.clusterMode", "false", "Redis is a Redis Cluster: slot map from the cluster nodes, sharded pub/sub"),
    var("SOKETI_ADAPTER_REDIS_PREFIX", "adapter.redis.prefix", "", "prefix of the adapter's pub/sub channels"),
    var("SOKETI_ADAPTER_REDIS_PUB_OPTIONS", "adapter.redis.redisPubOptions", "{}", "ignored: ioredis client options"),
    var("SOKETI_ADAPTER_REDIS_REQUESTS_TIMEOUT", "adapter.redis.requestsTimeout", "5000", "ms to wait for other nodes' answers"),
    var("SOKETI_ADAPTER_REDIS_SHARD_MODE", "adapter.redis.shardMode", "false", "sharded pub/sub (SPUBLISH/SSUBSCRIBE) on a single Redis too; a cluster uses it when it can"),
    var("SOKETI_ADAPTER_REDIS_SUB_OPTIONS", "adapter.redis.redisSubOptions", "{}", "ignored: ioredis client options"),
    var("SOKETI_APP_MANAGER_CACHE_ENABLED", "appManager.cache.enabled", "false", "keep apps read from the database instead of asking it on every lookup"),
    var("SOKETI_APP_MANAGER_CACHE_TTL", "appManager.cache.ttl", "-1", "seconds a cached app is kept; -1 or 0 keeps it until restart"),
    var("SOKETI_APP_MANAGER_DRIVER", "appManager.driver", "array", "array, mysql or postgres; dynamodb is rejected"),
    var("SOKETI_APP_MANAGER_DYNAMODB_ENDPOINT", "appManager.dynamodb.endpoint", "null", IGNORED),
    var("SOKETI_APP_MANAGER_DYNAMODB_REGION", "appManager.dynamodb.region", "us-east-1", IGNORED),
    var("SOKETI_APP_MANAGER_DYNAMODB_TABLE", "appManager.dynamodb.table", "apps", IGNORED),
    var("SOKETI_APP_MANAGER_MYSQL_TABLE", "appManager.mysql.table", "apps", "table of apps of the mysql driver (schema.table allowed)"),
    var("SOKETI_APP_MANAGER_MYSQL_USE_V2", "appManager.mysql.useMysql2", "false", "ignored: picks one of Soketi's Node.js clients"),
    var("SOKETI_APP_MANAGER_MYSQL_VERSION", "appManager.mysql.version", "8.0", "ignored: the client reads the version from the server"),
    var("SOKETI_APP_MANAGER_POSTGRES_TABLE", "appManager.postgres.table", "apps", "table of apps of the postgres driver (schema.table allowed)"),
    var("SOKETI_APP_MANAGER_POSTGRES_VERSION", "appManager.postgres.version", "13.3", "ignored: the client reads the version from the server"),
    var("SOKETI_CACHE_DRIVER", "cache.driver", "memory", IGNORED),
    var("SOKETI_CACHE_REDIS_CLUSTER_MODE", "cache.redis.clusterMode", "false", IGNORED),
    var("SOKETI_CACHE_REDIS_OPTIONS", "cache.redis.redisOptions", "{}", IGNORED),
    var("SOKETI_CHANNEL_CACHE_TTL", "channelLimits.cacheTtl", "1800", "seconds a cache channel keeps its last event (Pusher: 30 minutes)"),
    var("SOKETI_CHANNEL_LIMITS_MAX_NAME_LENGTH", "channelLimits.maxNameLength", "200", "default maxChannelNameLength of apps"),
    var("SOKETI_CHANNEL_MAX_NAME_LENGTH", "channelLimits.maxNameLength", "200", "the name Soketi's docs give for the above"),
    var("SOKETI_CLUSTER_BROADCAST_ADDRESS", "cluster.broadcast", "255.255.255.255", IGNORED),
    var("SOKETI_CLUSTER_CHECK_INTERVAL", "cluster.checkInterval", "500", IGNORED),
    var("SOKETI_CLUSTER_HOST", "cluster.hostname", "0.0.0.0", IGNORED),
    var("SOKETI_CLUSTER_IGNORE_PROCESS", "cluster.ignoreProcess", "true", IGNORED),
    var("SOKETI_CLUSTER_KEEPALIVE_INTERVAL", "cluster.helloInterval", "500", IGNORED),
    var("SOKETI_CLUSTER_MASTER_TIMEOUT", "cluster.masterTimeout", "2000", IGNORED),
    var("SOKETI_CLUSTER_MULTICAST_ADDRESS", "cluster.multicast", "null", IGNORED),
    var("SOKETI_CLUSTER_NODE_TIMEOUT", "cluster.nodeTimeout", "2000", IGNORED),
    var("SOKETI_CLUSTER_PORT", "cluster.port", "11002", IGNORED),
    var("SOKETI_CLUSTER_PREFIX", "cluster.prefix", "", IGNORED),
    var("SOKETI_CLUSTER_UNICAST_ADDRESSES", "cluster.unicast", "null", IGNORED),
    var("SOKETI_DB_MYSQL_DATABASE", "database.mysql.database", "main", "MySQL database of the apps table"),
    var("SOKETI_DB_MYSQL_HOST", "database.mysql.host", "127.0.0.1", "MySQL or MariaDB host of the mysql driver"),
    var("SOKETI_DB_MYSQL_PASSWORD", "database.mysql.password", "password", "MySQL password"),
    var("SOKETI_DB_MYSQL_PORT", "database.mysql.port", "3306", "MySQL port"),
    var("SOKETI_DB_MYSQL_USERNAME", "database.mysql.user", "root", "MySQL user name"),
    var("SOKETI_DB_POOLING_ENABLED", "databasePooling.enabled", "false", "accepted: the app manager's lookups share one connection (coalesced and cached)"),
    var("SOKETI_DB_POOLING_MAX", "databasePooling.max", "7", "accepted: the app manager's lookups share one connection"),
    var("SOKETI_DB_POOLING_MIN", "databasePooling.min", "0", "accepted: the app manager's lookups share one connection"),
    var("SOKETI_DB_POSTGRES_DATABASE", "database.postgres.database", "main", "PostgreSQL database of the apps table"),
    var("SOKETI_DB_POSTGRES_HOST", "database.postgres.host", "127.0.0.1", "PostgreSQL host of the postgres driver; a /path is a socket directory"),
    var("SOKETI_DB_POSTGRES_PASSWORD", "database.postgres.password", "password", "PostgreSQL password"),
    var("SOKETI_DB_POSTGRES_PORT", "database.postgres.port", "5432", "PostgreSQL port"),
    var("SOKETI_DB_POSTGRES_USERNAME", "database.postgres.user", "postgres", "PostgreSQL user name"),
    var("SOKETI_DB_REDIS_CLUSTER_NODES", "database.redis.clusterNodes", "[]", "JSON list of {host, port} or \"host:port\" seed nodes of the Redis Cluster (cluster mode)"),
    var("SOKETI_DB_REDIS_DB", "database.redis.db", "0", "Redis database index"),
    var("SOKETI_DB_REDIS_HOST", "database.redis.host", "127.0.0.1", "Redis host for the redis adapter; unused with sentinels"),
    var("SOKETI_DB_REDIS_INSTANCE_NAME", "database.redis.name", "mymaster", "name of the master the sentinels are asked for"),
    var("SOKETI_DB_REDIS_KEY_PREFIX", "database.redis.keyPrefix", "", "prefix of every Redis key corecast writes"),
    var("SOKETI_DB_REDIS_PASSWORD", "database.redis.password", "null", "Redis AUTH password"),
    var("SOKETI_DB_REDIS_PORT", "database.redis.port", "6379", "Redis port; unused with sentinels"),
    var("SOKETI_DB_REDIS_SENTINELS", "database.redis.sentinels", "null", "JSON list of {host, port} Redis Sentinels that name the master on every connect"),
    var("SOKETI_DB_REDIS_SENTINEL_PASSWORD", "database.redis.sentinelPassword", "null", "AUTH password for the sentinels"),
    var("SOKETI_DB_REDIS_USERNAME", "database.redis.username", "null", "Redis AUTH user name"),
    var("SOKETI_DEBUG", "debug", "false", "verbose logging"),
    var("SOKETI_DEFAULT_APP_ENABLED", "appManager.array.apps.0.enabled", "true", "first app's enabled"),
    var("SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES", "appManager.array.apps.0.enableClientMessages", "false", "first app's client events"),
    var("SOKETI_DEFAULT_APP_ID", "appManager.array.apps.0.id", "app-id", "first app's id"),
    var("SOKETI_DEFAULT_APP_KEY", "appManager.array.apps.0.key", "app-key", "first app's key"),
    var("SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC", "appManager.array.apps.0.maxBackendEventsPerSecond", "-1", "-1 is unlimited"),
    var("SOKETI_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SEC", "appManager.array.apps.0.maxClientEventsPerSecond", "-1", "-1 is unlimited"),
    var("SOKETI_DEFAULT_APP_MAX_CONNS", "appManager.array.apps.0.maxConnections", "-1", "-1 is unlimited"),
    var("SOKETI_DEFAULT_APP_MAX_READ_REQ_PER_SEC", "appManager.array.apps.0.maxReadRequestsPerSecond", "-1", "-1 is unlimited"),
    var("SOKETI_DEFAULT_APP_SECRET", "appManager.array.apps.0.secret", "app-secret", "first app's secret"),
    var("SOKETI_DEFAULT_APP_USER_AUTHENTICATION", "appManager.array.apps.0.enableUserAuthentication", "false", "require pusher:signin"),
    var("SOKETI_DEFAULT_APP_WEBHOOKS", "appManager.array.apps.0.webhooks", "[]", "JSON list of webhooks"),
    var("SOKETI_EVENT_MAX_BATCH_SIZE", "eventLimits.maxBatchSize", "10", "default maxEventBatchSize of apps"),
    var("SOKETI_EVENT_MAX_CHANNELS_AT_ONCE", "eventLimits.maxChannelsAtOnce", "100", "default maxEventChannelsAtOnce of apps"),
    var("SOKETI_EVENT_MAX_NAME_LENGTH", "eventLimits.maxNameLength", "200", "default maxEventNameLength of apps"),
    var("SOKETI_EVENT_MAX_SIZE_IN_KB", "eventLimits.maxPayloadInKb", "100", "default maxEventPayloadInKb of apps"),
    var("SOKETI_HOST", "host", "0.0.0.0", "address the WebSocket and REST listener binds"),
    var("SOKETI_HTTP_ACCEPT_TRAFFIC_MEMORY_THRESHOLD", "httpApi.acceptTraffic.memoryThreshold", "85", "ignored: memory is bounded per connection"),
    var("SOKETI_HTTP_MAX_REQUEST_SIZE", "httpApi.requestLimitInMb", "100", "MB; larger REST bodies get 413"),
    var("SOKETI_METRICS_DRIVER", "metrics.driver", "prometheus", "only prometheus"),
    var("SOKETI_METRICS_ENABLED", "metrics.enabled", "false", "serve /metrics"),
    var("SOKETI_METRICS_HOST", "metrics.host", "0.0.0.0", "address the metrics listener binds"),
    var("SOKETI_METRICS_PROMETHEUS_PREFIX", "metrics.prometheus.prefix", "soketi_", "prefix of metric names"),
    var("SOKETI_METRICS_SERVER_PORT", "metrics.port", "9601", "metrics listener port"),
    var("SOKETI_MODE", "mode", "full", "full (serve and send queued webhooks), server (serve, only enqueue) or worker (only send queued webhooks; needs the redis queue)"),
    var("SOKETI_PATH_PREFIX", "pathPrefix", "", "prefix of every HTTP and WebSocket path"),
    var("SOKETI_PORT", "port", "6001", "WebSocket and REST port"),
    var("SOKETI_PRESENCE_MAX_MEMBERS", "presence.maxMembersPerChannel", "100", "default maxPresenceMembersPerChannel of apps"),
    var("SOKETI_PRESENCE_MAX_MEMBER_SIZE", "presence.maxMemberSizeInKb", "2", "default maxPresenceMemberSizeInKb of apps"),
    var("SOKETI_QUEUE_DRIVER", "queue.driver", "sync", "sync (sent from the deciding node's memory) or redis (durable Redis streams on the adapter's Redis)"),
    var("SOKETI_QUEUE_REDIS_CLUSTER_MODE", "queue.redis.clusterMode", "false", IGNORED),
    var("SOKETI_QUEUE_REDIS_CONCURRENCY", "queue.redis.concurrency", "1", IGNORED),
    var("SOKETI_QUEUE_REDIS_OPTIONS", "queue.redis.redisOptions", "{}", IGNORED),
    var("SOKETI_QUEUE_SQS_BATCH_SIZE", "queue.sqs.batchSize", "1", IGNORED),
    var("SOKETI_QUEUE_SQS_CLIENT_OPTIONS", "queue.sqs.clientOptions", "{}", IGNORED),
    var("SOKETI_QUEUE_SQS_ENDPOINT", "queue.sqs.endpoint", "null", IGNORED),
    var("SOKETI_QUEUE_SQS_POLLING_WAIT_TIME_MS", "queue.sqs.pollingWaitTimeMs", "0", IGNORED),
    var("SOKETI_QUEUE_SQS_PROCESS_BATCH", "queue.sqs.processBatch", "false", IGNORED),
    var("SOKETI_QUEUE_SQS_REGION", "queue.sqs.region", "us-east-1", IGNORED),
    var("SOKETI_QUEUE_SQS_URL", "queue.sqs.queueUrl", "", IGNORED),
    var("SOKETI_RATE_LIMITER_DRIVER", "rateLimiter.driver", "local", "local counts rate limits per node; redis over the cluster (needs the redis adapter)"),
    var("SOKETI_RATE_LIMITER_REDIS_CLUSTER_MODE", "rateLimiter.redis.clusterMode", "false", IGNORED),
    var("SOKETI_RATE_LIMITER_REDIS_OPTIONS", "rateLimiter.redis.redisOptions", "{}", IGNORED),
    var("SOKETI_SHUTDOWN_GRACE_PERIOD", "shutdownGracePeriod", "3000", "ms between closing sockets and exiting"),
    var("SOKETI_SSL_CA", "ssl.caPath", "", "CA bundle path"),
    var("SOKETI_SSL_CERT", "ssl.certPath", "", "certificate path; any SSL_* set enables TLS"),
    var("SOKETI_SSL_KEY", "ssl.keyPath", "", "private key path"),
    var("SOKETI_SSL_PASS", "ssl.passphrase", "", "private key passphrase"),
    var("SOKETI_USER_AUTHENTICATION_TIMEOUT", "userAuthenticationTimeout", "30000", "ms a socket has to pusher:signin"),
    var("SOKETI_WEBHOOKS_BATCHING", "webhooks.batching.enabled", "false", "batch webhook events"),
    var("SOKETI_WEBHOOKS_BATCHING_DURATION", "webhooks.batching.duration", "50", "ms a batch collects events"),
];

/// The supported variable with this name.
#[must_use]
pub fn lookup(name: &str) -> Option<&'static EnvVar> {
    VARS.iter().find(|v| v.name == name)
}

/// Fails on the first `SOKETI_*` or `CORECAST_*` name that is not in [`VARS`].
pub fn check_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), ConfigError> {
    for name in names {
        let ours = name.starts_with("SOKETI_") || name.starts_with("CORECAST_");
        if ours && lookup(name).is_none() {
            return Err(ConfigError::UnknownEnv {
                name: name.to_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Builder, value::Raw};
    use super::*;

    #[test]
    fn table_is_sorted_without_duplicates() {
        assert!(
            VARS.windows(2).all(|w| w[0].name < w[1].name),
            "VARS must stay sorted by name"
        );
    }

    #[test]
    fn every_variable_accepts_its_documented_default() {
        for var in VARS {
            // A computed default is covered elsewhere; an empty one gets a sample string.
            if var.default.starts_with('(') {
                continue;
            }
            let text = if var.default.is_empty() {
                "x"
            } else {
                var.default
            };
            let mut builder = Builder::new();
            let applied = builder.apply(var.key, Raw::Env(text.to_owned()), var.name);
            assert!(
                applied.is_ok(),
                "{} = {:?}: {:?}",
                var.name,
                var.default,
                applied.err()
            );
        }
    }

    #[test]
    fn unknown_soketi_and_corecast_names_are_errors_and_others_pass() {
        assert!(check_names(["PATH", "HOME", "SOKETI_PORT", "CORECAST_SHARDS", "SOKETIX"]).is_ok());
        let err = check_names(["SOKETI_PROT"]).unwrap_err().to_string();
        assert!(
            err.starts_with("unknown environment variable SOKETI_PROT"),
            "{err}"
        );
        assert!(check_names(["CORECAST_SHARD"]).is_err());
        // Names only older Soketi read are unknown now, not silently ignored.
        assert!(check_names(["SOKETI_NODE_ID"]).is_err());
    }
}
