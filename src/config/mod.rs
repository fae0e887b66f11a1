//! The server's configuration, read as Soketi reads it so corecast is a drop-in replacement:
//! built-in defaults, then the `--config` JSON file (Soketi's dotted keys, or the same keys
//! nested), then the environment (`SOKETI_*` with Soketi's names, `CORECAST_*` for options
//! Soketi lacks). Later sources win.
//!
//! Loading is strict where Soketi is lenient: an unknown key or variable, or a value that does
//! not parse, stops the start with an error naming it, instead of running a default the user
//! did not ask for. Every variable is listed, with its default, in [`env::VARS`].
//!
//! # Layout
//!
//! - `env.rs`: every environment variable, its key and default.
//! - `settings.rs`: what each dotted key does, and flattening of the file.
//! - `app.rs`: one app's credentials and limits; `app_fields.rs` reads them (camelCase,
//!   PascalCase, snake_case).
//! - `app_manager.rs`: where apps come from (array, MySQL, PostgreSQL).
//! - `webhook.rs`: an app's webhook list.
//! - `queue.rs`: `mode` and the webhook queue (`queue.*`).
//! - `value.rs`: typed readers for env text and JSON values.
//! - `error.rs`: [`ConfigError`].

mod app;
mod app_fields;
mod app_manager;
pub mod env;
mod error;
mod queue;
pub mod report;
mod settings;
mod value;
mod webhook;

use std::time::Duration;

pub use app::AppConfig;
pub use app_manager::{AppManagerConfig, AppManagerDriver, DbConfig, is_app_column};
pub use error::ConfigError;
pub use queue::{Mode, QueueConfig, QueueDriver};
pub use webhook::{WebhookConfig, WebhookEvent, WebhookFilter};

use app::AppDefaults;
use app_fields::AppFields;
use value::Raw;

/// Everything the server needs to start. Built once, then shared read-only (`Arc`) by shards.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address the WebSocket + REST listener binds (`SOKETI_HOST`, `host`), `0.0.0.0`.
    pub host: String,
    /// Port of that listener (`SOKETI_PORT`, `port`), 6001.
    pub port: u16,
    /// Prefix of every HTTP and WebSocket path (`SOKETI_PATH_PREFIX`, `pathPrefix`), empty.
    pub path_prefix: String,
    /// Shard threads (`CORECAST_SHARDS`, `shards`); default: the cores available.
    pub shards: usize,
    /// The shards' IO driver (`CORECAST_IO_DRIVER`, `ioDriver`), auto.
    pub io_driver: IoDriverChoice,
    /// The apps, in configuration order; ids and keys are unique. Empty when a SQL app
    /// manager ([`Config::app_manager`]) serves the apps.
    pub apps: Vec<AppConfig>,
    /// Sent in `connection_established`; the server pings a socket silent this long
    /// (`CORECAST_ACTIVITY_TIMEOUT`, seconds, `activityTimeout`), 120 s as Pusher.
    pub activity_timeout: Duration,
    /// How long a ping may go unanswered before close 4201 (`CORECAST_PONG_TIMEOUT`, seconds,
    /// `pongTimeout`), 30 s.
    pub pong_timeout: Duration,
    /// Bound of one connection's send queue; a slower reader is closed
    /// (`CORECAST_MAX_OUTBOUND_KB`, `maxOutboundKb`), 1024 KiB.
    pub max_outbound_bytes: usize,
    /// `flush_dirty` submits a flush's sends as one batch of io_uring operations instead
    /// of one syscall per socket (`CORECAST_SEND_BATCH`, `sendBatch`); io_uring shards only.
    pub send_batch: bool,
    /// Largest WebSocket message accepted from a client (`CORECAST_MAX_WS_MESSAGE_KB`,
    /// `maxWsMessageKb`), 256 KiB.
    pub max_ws_message_bytes: usize,
    /// Largest REST body before 413 (`SOKETI_HTTP_MAX_REQUEST_SIZE` in MB,
    /// `httpApi.requestLimitInMb`), 100 MiB as Soketi.
    pub max_http_body_bytes: usize,
    /// Envelopes per shard-to-shard ring (`CORECAST_RING_CAPACITY`, `ringCapacity`), 16384.
    pub ring_capacity: usize,
    /// Negotiate permessage-deflate with clients that offer it (`CORECAST_WS_COMPRESSION`,
    /// `wsCompression`), off.
    pub ws_compression: bool,
    /// With compression on, frames whose payload is smaller than this go uncompressed
    /// (`CORECAST_WS_COMPRESSION_MIN_BYTES`, `wsCompressionMinBytes`), 1024.
    pub ws_compression_min_bytes: usize,
    /// Serve Prometheus `/metrics` (`SOKETI_METRICS_ENABLED`, `metrics.enabled`), false.
    pub metrics_enabled: bool,
    /// Address of the metrics listener (`SOKETI_METRICS_HOST`, `metrics.host`), `0.0.0.0`.
    pub metrics_host: String,
    /// Port of the metrics listener (`SOKETI_METRICS_SERVER_PORT`, `metrics.port`), 9601.
    pub metrics_port: u16,
    /// Prefix of metric names (`SOKETI_METRICS_PROMETHEUS_PREFIX`,
    /// `metrics.prometheus.prefix`), `soketi_` so existing dashboards keep working.
    pub metrics_prefix: String,
    /// Verbose logging (`SOKETI_DEBUG`, `debug`), false.
    pub debug: bool,
    /// Time between telling sockets to go and exiting (`SOKETI_SHUTDOWN_GRACE_PERIOD`, ms,
    /// `shutdownGracePeriod`), 3 s.
    pub shutdown_grace_period: Duration,
    /// How long a socket of an app with user authentication has to `pusher:signin`
    /// (`SOKETI_USER_AUTHENTICATION_TIMEOUT`, ms, `userAuthenticationTimeout`), 30 s.
    pub user_authentication_timeout: Duration,
    /// How long a cache channel keeps its last event (`SOKETI_CHANNEL_CACHE_TTL`, seconds,
    /// `channelLimits.cacheTtl`), 30 minutes as Pusher documents.
    pub cache_ttl: Duration,
    /// WebSocket connections this server holds over all apps; 0 is unlimited
    /// (`CORECAST_MAX_CONNECTIONS`, `maxConnections`). Past it: 4100 and close.
    pub max_connections: usize,
    /// WebSocket handshakes per second this server accepts; 0 is unlimited
    /// (`CORECAST_MAX_HANDSHAKES_PER_SEC`, `maxHandshakesPerSec`). Past it: 4100 and close.
    pub max_handshakes_per_sec: usize,
    /// Handshakes accepted at once above the steady rate (`CORECAST_HANDSHAKE_BURST`), 1000.
    pub handshake_burst: usize,
    /// How nodes share messages (`SOKETI_ADAPTER_DRIVER`, `adapter.driver`), local.
    pub adapter: AdapterDriver,
    /// The Redis server of the redis adapter.
    pub redis: RedisConfig,
    /// Collect webhook events into batches (`SOKETI_WEBHOOKS_BATCHING`,
    /// `webhooks.batching.enabled`), false.
    pub webhooks_batching: bool,
    /// How long a batch collects (`SOKETI_WEBHOOKS_BATCHING_DURATION`, ms,
    /// `webhooks.batching.duration`), 50 ms.
    pub webhooks_batching_duration: Duration,
    /// How long `channel_vacated` and `member_removed` webhooks wait, and are dropped
    /// together with the `channel_occupied` / `member_added` of a return within it
    /// (`CORECAST_WEBHOOK_VACATE_DELAY_MS`, `webhooks.vacateDelayMs`), 3 s as Pusher.
    pub webhook_vacate_delay: Duration,
    /// How long a presence member whose last socket left stays a member before clients
    /// get `member_removed`; a socket of the user joining within it is a silent return
    /// (`CORECAST_PRESENCE_MEMBER_REMOVED_DELAY_MS`, `presence.memberRemovedDelayMs`),
    /// 0: off, as Pusher and Soketi.
    pub member_removed_delay: Duration,
    /// Certificate files; TLS is on when [`TlsConfig::enabled`].
    pub tls: TlsConfig,
    /// Where apps come from: the array of `apps`, or a MySQL or PostgreSQL table.
    pub app_manager: AppManagerConfig,
    /// `SOKETI_MODE`: full, server or worker; full.
    pub mode: Mode,
    /// Where webhook jobs wait: `sync` (memory) or `redis` (durable streams).
    pub queue: QueueConfig,
}

/// Which adapter carries messages between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterDriver {
    /// One node: shards talk only through their rings.
    Local,
    /// Many nodes, joined through Redis pub/sub.
    Redis,
}

/// Which IO driver the shards' runtimes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriverChoice {
    /// io_uring when the kernel allows it, else monoio's epoll driver.
    Auto,
    /// io_uring; start-up fails when the kernel refuses it.
    IoUring,
    /// The epoll driver, even where io_uring works.
    Epoll,
}

impl IoDriverChoice {
    /// Every choice, in the order the values are documented.
    pub const ALL: [IoDriverChoice; 3] = [Self::Auto, Self::IoUring, Self::Epoll];

    /// The value as written in `CORECAST_IO_DRIVER` / `ioDriver`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::IoUring => "io_uring",
            Self::Epoll => "epoll",
        }
    }
}

/// Connection to Redis for the redis adapter (Soketi's `database.redis.*` and `adapter.redis.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `SOKETI_DB_REDIS_HOST`, `127.0.0.1`; unused with `sentinels`.
    pub host: String,
    /// `SOKETI_DB_REDIS_PORT`, 6379; unused with `sentinels`.
    pub port: u16,
    /// `SOKETI_DB_REDIS_SENTINELS` (JSON list of `{host, port}`): Redis Sentinels that
    /// name the master on every connect; empty (the default) connects to `host:port`.
    pub sentinels: Vec<(String, u16)>,
    /// `SOKETI_DB_REDIS_INSTANCE_NAME`: the master's name at the sentinels, `mymaster`.
    pub name: String,
    /// `SOKETI_DB_REDIS_SENTINEL_PASSWORD`: `AUTH` for the sentinels, none.
    pub sentinel_password: Option<String>,
    /// `SOKETI_DB_REDIS_DB`, 0.
    pub db: u32,
    /// `SOKETI_DB_REDIS_USERNAME` for `AUTH user pass`, none.
    pub username: Option<String>,
    /// `SOKETI_DB_REDIS_PASSWORD`, none.
    pub password: Option<String>,
    /// `SOKETI_DB_REDIS_KEY_PREFIX`: prefix of every key written (presence rosters), empty.
    pub key_prefix: String,
    /// `SOKETI_ADAPTER_REDIS_PREFIX`: prefix of the pub/sub channels, empty.
    pub channel_prefix: String,
    /// `SOKETI_ADAPTER_REDIS_REQUESTS_TIMEOUT` (ms): how long a cross-node question waits
    /// for answers, 5 s.
    pub requests_timeout: Duration,
    /// `CORECAST_REDIS_INTEREST`: a node receives from Redis only the events of channels
    /// it has subscribers for (one pub/sub channel per Pusher channel), instead of every
    /// event published anywhere, true.
    pub interest: bool,
    /// `SOKETI_ADAPTER_REDIS_CLUSTER_MODE`: Redis is a Redis Cluster, found through
    /// `cluster_nodes` (or `host:port` when that list is empty), false.
    pub cluster_mode: bool,
    /// `SOKETI_DB_REDIS_CLUSTER_NODES` (JSON list of `{host, port}` or `"host:port"`):
    /// seed nodes of the Redis Cluster; the slot map is read from the first that answers.
    pub cluster_nodes: Vec<(String, u16)>,
    /// `SOKETI_ADAPTER_REDIS_SHARD_MODE`: use sharded pub/sub (`SPUBLISH` / `SSUBSCRIBE`,
    /// Redis 7) also on a single Redis server. A Redis Cluster uses it whenever its
    /// servers have it; without it both fall back to classic pub/sub, saying so. False.
    pub shard_mode: bool,
    /// `SOKETI_RATE_LIMITER_DRIVER=redis`: `max_backend_events_per_sec` and
    /// `max_read_req_per_sec` count over the cluster (tokens leased from Redis); `local`
    /// (the default) counts them per node. Needs the redis adapter.
    pub rate_limits: bool,
}

/// TLS files, as Soketi's `ssl.*` (`SOKETI_SSL_CERT`, `_KEY`, `_PASS`, `_CA`); empty when unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain path.
    pub cert_path: String,
    /// PEM private key path.
    pub key_path: String,
    /// Passphrase of the private key.
    pub passphrase: String,
    /// CA bundle path.
    pub ca_path: String,
}

impl TlsConfig {
    /// Whether to serve TLS: as in Soketi, when the cert, the key or the passphrase is set.
    #[must_use]
    pub fn enabled(&self) -> bool {
        !(self.cert_path.is_empty() && self.key_path.is_empty() && self.passphrase.is_empty())
    }
}

impl Default for Config {
    /// The configuration with nothing set: Soketi's defaults and its one app
    /// `app-id` / `app-key` / `app-secret`.
    fn default() -> Self {
        Self {
            host: "0.0.0.0".to_owned(),
            port: 6001,
            path_prefix: String::new(),
            shards: std::thread::available_parallelism().map_or(1, usize::from),
            io_driver: IoDriverChoice::Auto,
            apps: vec![AppConfig::new("app-id", "app-key", "app-secret")],
            activity_timeout: Duration::from_secs(120),
            pong_timeout: Duration::from_secs(30),
            max_outbound_bytes: 1024 * 1024,
            send_batch: true,
            max_ws_message_bytes: 256 * 1024,
            max_http_body_bytes: 100 * 1024 * 1024,
            ring_capacity: 16384,
            ws_compression: false,
            ws_compression_min_bytes: 1024,
            metrics_enabled: false,
            metrics_host: "0.0.0.0".to_owned(),
            metrics_port: 9601,
            metrics_prefix: "soketi_".to_owned(),
            debug: false,
            shutdown_grace_period: Duration::from_millis(3000),
            user_authentication_timeout: Duration::from_millis(30_000),
            cache_ttl: Duration::from_secs(1800),
            max_connections: 0,
            max_handshakes_per_sec: 0,
            handshake_burst: 1000,
            adapter: AdapterDriver::Local,
            redis: RedisConfig {
                host: "127.0.0.1".to_owned(),
                port: 6379,
                sentinels: Vec::new(),
                name: "mymaster".to_owned(),
                sentinel_password: None,
                db: 0,
                username: None,
                password: None,
                key_prefix: String::new(),
                channel_prefix: String::new(),
                requests_timeout: Duration::from_millis(5000),
                interest: true,
                cluster_mode: false,
                cluster_nodes: Vec::new(),
                shard_mode: false,
                rate_limits: false,
            },
            webhooks_batching: false,
            webhooks_batching_duration: Duration::from_millis(50),
            webhook_vacate_delay: Duration::from_secs(3),
            member_removed_delay: Duration::ZERO,
            tls: TlsConfig::default(),
            app_manager: AppManagerConfig::default(),
            mode: Mode::Full,
            queue: QueueConfig::default(),
        }
    }
}

impl Config {
    /// Loads the configuration. `args` are the words after `corecast start`
    /// (`--config=/x.json` or `--config /x.json`); `env` looks up one variable.
    ///
    /// `env` is only asked for the names in [`env::VARS`], so it cannot report unknown
    /// variables; [`Config::from_process_env`] does that for the real process environment.
    pub fn load(
        args: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let Some(path) = config_path(args)? else {
            return Self::from_sources(None, env);
        };
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ReadFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::build(Some((&text, &format!("config file {path}"))), env)
    }

    /// [`Config::load`] with the process environment, after checking that every `SOKETI_*` and
    /// `CORECAST_*` variable set is one corecast knows. What `main` should call.
    pub fn from_process_env(args: &[String]) -> Result<Config, ConfigError> {
        let mut names = Vec::new();
        for (name, value) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            if (name.starts_with("SOKETI_") || name.starts_with("CORECAST_"))
                && value.to_str().is_none()
            {
                let value = value.to_string_lossy().into_owned();
                return Err(ConfigError::Invalid {
                    option: name,
                    value,
                    expected: "UTF-8 text".to_owned(),
                });
            }
            names.push(name);
        }
        env::check_names(names.iter().map(String::as_str))?;
        Self::load(args, &|name| std::env::var(name).ok())
    }

    /// Builds the configuration from the config file's text (if any) and the environment;
    /// [`Config::load`] without the file system, for tests.
    pub fn from_sources(
        file: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::build(file.map(|text| (text, "the config file")), env)
    }

    /// `file` is the text and how errors name it.
    fn build(
        file: Option<(&str, &str)>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut builder = Builder::new();
        if let Some((text, name)) = file {
            let root: serde_json::Value =
                serde_json::from_str(text).map_err(|e| ConfigError::BadJson {
                    option: name.to_owned(),
                    reason: e.to_string(),
                })?;
            let serde_json::Value::Object(root) = root else {
                return Err(ConfigError::Invalid {
                    option: name.to_owned(),
                    value: Raw::Json(root).shown(),
                    expected: "a JSON object of options".to_owned(),
                });
            };
            for (key, value) in settings::flatten(&root) {
                builder.apply(&key, Raw::Json(value), &key)?;
            }
        }
        let mut set_by: Vec<(&str, &str)> = Vec::new();
        for var in env::VARS {
            // As in Soketi, an empty variable counts as unset.
            let Some(text) = env(var.name).filter(|t| !t.is_empty()) else {
                continue;
            };
            if let Some((_, other)) = set_by.iter().find(|(key, _)| *key == var.key) {
                let expected = format!("only one of {other} and {} to be set", var.name);
                return Err(ConfigError::Invalid {
                    option: var.name.to_owned(),
                    value: format!("{text:?}"),
                    expected,
                });
            }
            set_by.push((var.key, var.name));
            builder.apply(var.key, Raw::Env(text), var.name)?;
        }
        builder.finish()
    }

    /// The app with this id (REST paths).
    #[must_use]
    pub fn app_by_id(&self, id: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.id == id)
    }

    /// The app with this key (WebSocket paths).
    #[must_use]
    pub fn app_by_key(&self, key: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.key == key)
    }
}

/// The configuration while sources are applied; apps stay raw until [`Builder::finish`]
/// because their limits default to server-level limits that may be set later.
#[derive(Debug)]
pub(crate) struct Builder {
    config: Config,
    app_defaults: AppDefaults,
    apps: Vec<AppFields>,
}

impl Builder {
    pub(crate) fn new() -> Self {
        Self {
            config: Config {
                apps: Vec::new(),
                ..Config::default()
            },
            app_defaults: AppDefaults::default(),
            apps: vec![AppFields::soketi_default()],
        }
    }

    fn finish(mut self) -> Result<Config, ConfigError> {
        // As in Soketi, the configured apps (the default one included) are the array
        // driver's; a SQL driver still checks them but serves only its table's rows.
        let array = self.config.app_manager.driver == AppManagerDriver::Array;
        self.config.app_manager.app_defaults = self.app_defaults.clone();
        if array && self.apps.is_empty() {
            return Err(ConfigError::NoApps);
        }
        queue::check(self.config.mode, &self.config.queue)?;
        let redis = &self.config.redis;
        if redis.cluster_mode && !redis.sentinels.is_empty() {
            return Err(ConfigError::Conflict {
                options: "adapter.redis.clusterMode and database.redis.sentinels",
                reason: "a Redis Cluster fails over by itself; use one or the other",
            });
        }
        if redis.rate_limits && self.config.adapter != AdapterDriver::Redis {
            return Err(ConfigError::Conflict {
                options: "rateLimiter.driver redis and adapter.driver local",
                reason: "cluster-wide rate limits are kept through the redis adapter; set SOKETI_ADAPTER_DRIVER=redis",
            });
        }
        if redis.cluster_mode && redis.db != 0 {
            return Err(ConfigError::Conflict {
                options: "adapter.redis.clusterMode and database.redis.db",
                reason: "a Redis Cluster has only database 0",
            });
        }
        for (i, fields) in self.apps.iter().enumerate() {
            let prefix = format!("appManager.array.apps.{i}");
            let app = app_fields::build(fields, &prefix, &self.app_defaults)?;
            if !array {
                continue;
            }
            if self.config.apps.iter().any(|a| a.id == app.id) {
                return Err(ConfigError::DuplicateApp {
                    field: "id",
                    value: app.id,
                });
            }
            if self.config.apps.iter().any(|a| a.key == app.key) {
                return Err(ConfigError::DuplicateApp {
                    field: "key",
                    value: app.key,
                });
            }
            self.config.apps.push(app);
        }
        Ok(self.config)
    }
}

/// The path of `--config=<path>` or `--config <path>`, if given.
fn config_path(args: &[String]) -> Result<Option<&str>, ConfigError> {
    let mut path = None;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        if let Some(p) = word.strip_prefix("--config=") {
            path = Some(p);
        } else if word == "--config" {
            path = Some(
                words
                    .next()
                    .map(String::as_str)
                    .ok_or(ConfigError::MissingConfigPath)?,
            );
        } else {
            return Err(ConfigError::UnknownArgument(word.clone()));
        }
    }
    match path {
        Some("") => Err(ConfigError::MissingConfigPath),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests;
