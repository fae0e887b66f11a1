//! What each dotted option key does: the one `match` that turns a key and a raw value into a
//! field of the [`Config`](super::Config) being built. The config file and the environment
//! both end up here (env variables through their key in `env.rs`), so a key means the same
//! wherever it is written and its errors name the option as the user wrote it.

use serde_json::{Map, Value};

use super::app_fields::AppFields;
use super::value::{self, Raw};
use super::{AdapterDriver, Builder, ConfigError, IoDriverChoice};

/// Soketi options corecast accepts and ignores: a key equal to one of these or below it.
/// They configure subsystems corecast does not have (the DynamoDB app manager, SQS queues, the
/// cluster/NATS adapters, caches, CORS), so they change nothing here. The app manager's own
/// options and its SQL databases are read in `app_manager.rs`.
const IGNORED: &[&str] = &[
    "adapter.cluster",
    "adapter.nats",
    "adapter.redis.redisPubOptions",
    "adapter.redis.redisSubOptions",
    "appManager.dynamodb",
    "cache",
    "cluster",
    "cors",
    "httpApi.acceptTraffic",
    "instance",
    "queue.redis.clusterMode",
    "queue.redis.concurrency",
    "queue.redis.redisOptions",
    "queue.sqs",
    "rateLimiter",
    "webhooks.maxRetries",
];

impl Builder {
    /// Applies one option. `option` is the name the user wrote (env var or file key), used in
    /// every error; `key` is the dotted option path it sets.
    pub(crate) fn apply(&mut self, key: &str, raw: Raw, option: &str) -> Result<(), ConfigError> {
        let c = &mut self.config;
        let d = &mut self.app_defaults;
        let o = option;
        match key {
            "host" => c.host = value::non_empty(&raw, o)?,
            "port" => c.port = value::port(&raw, o)?,
            "debug" => c.debug = value::boolean(&raw, o)?,
            "pathPrefix" => c.path_prefix = value::string(&raw, o)?,
            "shards" => c.shards = value::size(&raw, o, 1)?,
            "ioDriver" => {
                let name = value::string(&raw, o)?;
                c.io_driver = IoDriverChoice::ALL
                    .into_iter()
                    .find(|d| d.as_str() == name)
                    .ok_or_else(|| raw.invalid(o, "auto, io_uring or epoll"))?;
            }
            "activityTimeout" => c.activity_timeout = value::seconds(&raw, o, 1)?,
            "pongTimeout" => c.pong_timeout = value::seconds(&raw, o, 1)?,
            "channelLimits.cacheTtl" => c.cache_ttl = value::seconds(&raw, o, 1)?,
            "sendBatch" => c.send_batch = value::boolean(&raw, o)?,
            "maxOutboundKb" => c.max_outbound_bytes = value::size(&raw, o, 1)?.saturating_mul(1024),
            "maxWsMessageKb" => {
                c.max_ws_message_bytes = value::size(&raw, o, 1)?.saturating_mul(1024)
            }
            "ringCapacity" => c.ring_capacity = value::size(&raw, o, 1)?,
            "wsCompression" => c.ws_compression = value::on_off(&raw, o)?,
            "wsCompressionMinBytes" => c.ws_compression_min_bytes = value::size(&raw, o, 0)?,
            "maxConnections" => c.max_connections = value::size(&raw, o, 0)?,
            "maxHandshakesPerSec" => c.max_handshakes_per_sec = value::size(&raw, o, 0)?,
            "handshakeBurst" => c.handshake_burst = value::size(&raw, o, 1)?,
            "httpApi.requestLimitInMb" => {
                c.max_http_body_bytes = megabytes(value::float(&raw, o, 0.0)?)
            }
            "shutdownGracePeriod" => c.shutdown_grace_period = value::millis(&raw, o)?,
            "userAuthenticationTimeout" => c.user_authentication_timeout = value::millis(&raw, o)?,
            "metrics.enabled" => c.metrics_enabled = value::boolean(&raw, o)?,
            "metrics.host" => c.metrics_host = value::non_empty(&raw, o)?,
            "metrics.port" => c.metrics_port = value::port(&raw, o)?,
            "metrics.prometheus.prefix" => c.metrics_prefix = value::string(&raw, o)?,
            "metrics.driver" => one_of(
                &raw,
                o,
                &["prometheus"],
                "metrics are served for Prometheus only",
            )?,
            "webhooks.batching.enabled" => c.webhooks_batching = value::boolean(&raw, o)?,
            "webhooks.batching.duration" => c.webhooks_batching_duration = value::millis(&raw, o)?,
            "webhooks.vacateDelayMs" => c.webhook_vacate_delay = value::millis(&raw, o)?,
            "presence.memberRemovedDelayMs" => c.member_removed_delay = value::millis(&raw, o)?,
            "ssl.certPath" => c.tls.cert_path = value::string(&raw, o)?,
            "ssl.keyPath" => c.tls.key_path = value::string(&raw, o)?,
            "ssl.passphrase" => c.tls.passphrase = value::string(&raw, o)?,
            "ssl.caPath" => c.tls.ca_path = value::string(&raw, o)?,
            "adapter.driver" => {
                c.adapter = match value::string(&raw, o)?.as_str() {
                    "local" => AdapterDriver::Local,
                    "redis" => AdapterDriver::Redis,
                    _ => {
                        return Err(unsupported(&raw, o, "use local or redis"));
                    }
                };
            }
            "adapter.redis.prefix" => c.redis.channel_prefix = value::string(&raw, o)?,
            "adapter.redis.requestsTimeout" => c.redis.requests_timeout = value::millis(&raw, o)?,
            "adapter.redis.interest" => c.redis.interest = value::boolean(&raw, o)?,
            "adapter.redis.clusterMode" => c.redis.cluster_mode = value::boolean(&raw, o)?,
            "adapter.redis.shardMode" => c.redis.shard_mode = value::boolean(&raw, o)?,
            "rateLimiter.driver" => {
                c.redis.rate_limits = match value::string(&raw, o)?.as_str() {
                    "local" => false,
                    "redis" => true,
                    _ => return Err(unsupported(&raw, o, "use local or redis")),
                };
            }
            "database.redis.host" => c.redis.host = value::non_empty(&raw, o)?,
            "database.redis.port" => c.redis.port = value::port(&raw, o)?,
            "database.redis.db" => {
                let db = value::integer(&raw, o, 0, u64::from(u32::MAX))?;
                c.redis.db = u32::try_from(db).unwrap_or(u32::MAX);
            }
            "database.redis.username" => c.redis.username = value::optional_string(&raw, o)?,
            "database.redis.password" => c.redis.password = value::optional_string(&raw, o)?,
            "database.redis.keyPrefix" => c.redis.key_prefix = value::string(&raw, o)?,
            "database.redis.sentinels" => c.redis.sentinels = address_list(&raw, o, 26379, false)?,
            "database.redis.name" => c.redis.name = value::non_empty(&raw, o)?,
            "database.redis.sentinelPassword" => {
                c.redis.sentinel_password = value::optional_string(&raw, o)?
            }
            "database.redis.clusterNodes" => {
                c.redis.cluster_nodes = address_list(&raw, o, 6379, true)?
            }
            "appManager.array.apps" => self.apps = app_list(&raw, o)?,
            "presence.maxMembersPerChannel" => {
                let n = value::integer(&raw, o, 0, u64::from(u32::MAX))?;
                d.presence_max_members = u32::try_from(n).unwrap_or(u32::MAX);
            }
            "presence.maxMemberSizeInKb" => {
                d.presence_max_member_size_kb = value::float(&raw, o, 0.0)?
            }
            "channelLimits.maxNameLength" => d.channel_max_name_length = value::size(&raw, o, 1)?,
            "eventLimits.maxChannelsAtOnce" => {
                d.event_max_channels_at_once = value::size(&raw, o, 1)?
            }
            "eventLimits.maxNameLength" => d.event_max_name_length = value::size(&raw, o, 1)?,
            "eventLimits.maxPayloadInKb" => d.event_max_payload_kb = value::float(&raw, o, 0.0)?,
            "eventLimits.maxBatchSize" => d.event_max_batch_size = value::size(&raw, o, 1)?,
            _ => {
                let (mode, queue) = (&mut self.config.mode, &mut self.config.queue);
                if super::queue::apply(mode, queue, key, &raw, o)? {
                    return Ok(());
                }
                if self.config.app_manager.apply(key, &raw, o)? {
                    return Ok(());
                }
                if let Some(rest) = key.strip_prefix("appManager.array.apps.") {
                    return self.patch_app(rest, raw, o);
                }
                let ignored = IGNORED.iter().any(|p| {
                    key.strip_prefix(p)
                        .is_some_and(|r| r.is_empty() || r.starts_with('.'))
                });
                if !ignored {
                    return Err(ConfigError::UnknownKey { key: o.to_owned() });
                }
            }
        }
        Ok(())
    }

    /// `appManager.array.apps.<index>.<field>`: sets one field of one app, as Soketi's
    /// `SOKETI_DEFAULT_APP_*` do for app 0. The index may name the next app to add one.
    fn patch_app(&mut self, rest: &str, raw: Raw, option: &str) -> Result<(), ConfigError> {
        let (index, field) = rest.split_once('.').unwrap_or((rest, ""));
        let index = match index.parse::<usize>() {
            Ok(i) if i <= self.apps.len() => i,
            _ => {
                let expected = format!("an app index from 0 to {}", self.apps.len());
                return Err(ConfigError::Invalid {
                    option: option.to_owned(),
                    value: index.to_owned(),
                    expected,
                });
            }
        };
        if index == self.apps.len() {
            self.apps.push(AppFields::default());
        }
        if field.is_empty() {
            // `{"appManager.array.apps.1": {}}` flattened to nothing but the app itself.
            return match raw {
                Raw::Json(Value::Object(ref m)) if m.is_empty() => Ok(()),
                _ => Err(raw.invalid(option, "an app object")),
            };
        }
        if field.contains('.') {
            return Err(ConfigError::UnknownKey {
                key: option.to_owned(),
            });
        }
        self.apps[index].set(field, raw, option);
        Ok(())
    }
}

/// Flattens the config file's object into `(dotted key, leaf value)` pairs, so that
/// `{"adapter": {"driver": "redis"}}` and `{"adapter.driver": "redis"}` are the same.
/// Arrays and empty objects are leaves.
pub(crate) fn flatten(object: &Map<String, Value>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    flatten_into(object, "", &mut out);
    out
}

fn flatten_into(object: &Map<String, Value>, prefix: &str, out: &mut Vec<(String, Value)>) {
    for (key, value) in object {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Object(inner) if !inner.is_empty() => flatten_into(inner, &path, out),
            _ => out.push((path, value.clone())),
        }
    }
}

fn app_list(raw: &Raw, option: &str) -> Result<Vec<AppFields>, ConfigError> {
    let list = value::json(raw, option)?;
    let Some(items) = list.as_array() else {
        return Err(raw.invalid(option, "a list of app objects"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(fields) => Ok(AppFields::from_object(fields, &format!("{option}.{i}"))),
            _ => Err(Raw::Json(item.clone()).invalid(&format!("{option}.{i}"), "an app object")),
        })
        .collect()
}

/// `database.redis.sentinels` and `.clusterNodes`: a list of `{"host": ..., "port": ...}`
/// (`default_port` when left out), with `strings` also `"host:port"`, or `null`.
fn address_list(
    raw: &Raw,
    option: &str,
    default_port: u16,
    strings: bool,
) -> Result<Vec<(String, u16)>, ConfigError> {
    let expected = if strings {
        "a JSON list of {\"host\", \"port\"} objects or \"host:port\" strings"
    } else {
        "a JSON list of {\"host\", \"port\"} objects"
    };
    let list = value::json(raw, option)?;
    if list.is_null() {
        return Ok(Vec::new());
    }
    let Some(items) = list.as_array() else {
        return Err(raw.invalid(option, expected));
    };
    let mut addrs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("{option}.{i}");
        if strings && let Value::String(text) = item {
            // ioredis's "host:port" form of a cluster node.
            let parsed = text.rsplit_once(':').and_then(|(host, port)| {
                let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
                (!host.is_empty()).then(|| (host.to_owned(), port))
            });
            match parsed {
                Some(addr) => addrs.push(addr),
                None => return Err(Raw::Json(item.clone()).invalid(&path, "\"host:port\"")),
            }
            continue;
        }
        let Value::Object(fields) = item else {
            return Err(Raw::Json(item.clone()).invalid(&path, "a {\"host\", \"port\"} object"));
        };
        if let Some(other) = fields.keys().find(|k| *k != "host" && *k != "port") {
            return Err(ConfigError::UnknownKey {
                key: format!("{path}.{other}"),
            });
        }
        let host_path = format!("{path}.host");
        let host = match fields.get("host") {
            Some(host) => value::non_empty(&Raw::Json(host.clone()), &host_path)?,
            None => return Err(ConfigError::Missing { option: host_path }),
        };
        let port = match fields.get("port") {
            // The server's own default port (Redis or Sentinel).
            None | Some(Value::Null) => default_port,
            Some(port) => {
                let port =
                    value::integer(&Raw::Json(port.clone()), &format!("{path}.port"), 1, 65535)?;
                u16::try_from(port).unwrap_or(u16::MAX)
            }
        };
        addrs.push((host, port));
    }
    Ok(addrs)
}

/// Accepts only the listed values of a Soketi option whose other values pick a subsystem
/// corecast does not have.
fn one_of(
    raw: &Raw,
    option: &str,
    allowed: &[&str],
    reason: &'static str,
) -> Result<(), ConfigError> {
    let text = value::string(raw, option)?;
    if allowed.contains(&text.as_str()) {
        Ok(())
    } else {
        Err(unsupported(raw, option, reason))
    }
}

fn unsupported(raw: &Raw, option: &str, reason: &'static str) -> ConfigError {
    ConfigError::Unsupported {
        option: option.to_owned(),
        value: raw.shown(),
        reason,
    }
}

fn megabytes(mb: f64) -> usize {
    // Soketi compares `bytes / 1024 / 1024` with the limit; the float-to-int cast saturates.
    (mb * 1024.0 * 1024.0) as usize
}
