//! What `corecast config` prints: every option of [`env::VARS`] with its config-file key, its
//! effective value and where that value came from, then the apps.
//!
//! The report is built next to a [`Config`] already loaded from the same arguments and
//! environment, so it describes a configuration that starts. Values come from the `Config`
//! where it has a field for the option, and from the text as written otherwise (options
//! without a field: ignored ones, server-level app limits, values only checked). Passwords,
//! app secrets and client option objects are masked: the report never contains them.

use serde_json::{Map, Value, json};

use super::{
    AdapterDriver, AppConfig, Config, ConfigError, QueueDriver, config_path, env, settings,
};

/// What a masked value prints as; nothing of the value is kept.
pub const MASK: &str = "****";

/// What an unset or empty value prints as in the table.
pub const UNSET: &str = "(unset)";

const APPS: &str = "appManager.array.apps";

/// Where an option's value came from. Later sources win: environment over file over default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Nothing set it: corecast's (Soketi's) default.
    Default,
    /// The `--config` file sets its key.
    File,
    /// Its variable is set, non-empty, in the environment.
    Env,
}

impl Source {
    /// `default`, `file` or `env`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Env => "env",
        }
    }
}

/// One option of [`env::VARS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionLine {
    /// The environment variable, e.g. `SOKETI_PORT`.
    pub name: &'static str,
    /// The config-file key, e.g. `port`.
    pub key: &'static str,
    /// The effective value as text ([`MASK`] for a set secret); `None` when unset or empty.
    pub value: Option<String>,
    /// Where the value came from.
    pub source: Source,
    /// Whether the value is masked.
    pub secret: bool,
    /// For an option corecast accepts but ignores: why it has no effect.
    pub ignored: Option<&'static str>,
}

/// One app of the effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppLine {
    /// Position in `appManager.array.apps`.
    pub index: usize,
    /// The app id.
    pub id: String,
    /// The app key.
    pub key: String,
    /// Where its fields came from: `Default` (Soketi's default app) or `File`, then `Env` when
    /// `SOKETI_DEFAULT_APP_*` variables change it.
    pub sources: Vec<Source>,
}

impl AppLine {
    /// The sources joined with `+`, e.g. `file+env`.
    #[must_use]
    pub fn source(&self) -> String {
        let names: Vec<&str> = self.sources.iter().map(|s| s.as_str()).collect();
        names.join("+")
    }
}

/// The effective configuration, option by option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The `--config` path, if one was given.
    pub config_file: Option<String>,
    /// One line per entry of [`env::VARS`], in its order.
    pub options: Vec<OptionLine>,
    /// The apps, in configuration order.
    pub apps: Vec<AppLine>,
}

impl Report {
    /// Describes `config`, which was loaded from the same `args` (the words after
    /// `corecast start`) and `env` by [`Config::load`] or [`Config::from_process_env`].
    pub fn build(
        args: &[String],
        config: &Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Report, ConfigError> {
        let Some(path) = config_path(args)? else {
            return Ok(Self::from_file_text(None, config, env));
        };
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ReadFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let mut report = Self::from_file_text(Some(&text), config, env);
        report.config_file = Some(path.to_owned());
        Ok(report)
    }

    /// [`Report::build`] from the config file's text, for a `config` built by
    /// [`Config::from_sources`] with the same text and `env`.
    #[must_use]
    pub fn from_file_text(
        file: Option<&str>,
        config: &Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Report {
        let entries = file
            .and_then(|text| serde_json::from_str::<Value>(text).ok())
            .and_then(|root| match root {
                Value::Object(root) => Some(settings::flatten(&root)),
                _ => None,
            })
            .unwrap_or_default();
        let set_in_env = |key: &str| {
            env::VARS
                .iter()
                .filter(|v| v.key == key)
                .find_map(|v| env(v.name).filter(|t| !t.is_empty()))
        };
        let options = env::VARS
            .iter()
            .map(|var| {
                let (source, written) = if let Some(text) = set_in_env(var.key) {
                    (Source::Env, Some(text))
                } else if let Some(value) = file_value(&entries, var.key) {
                    (Source::File, json_text(&value))
                } else {
                    let unset = matches!(var.default, "" | "null");
                    (Source::Default, (!unset).then(|| var.default.to_owned()))
                };
                let value = effective(config, var.key)
                    .unwrap_or(written)
                    .filter(|v| !v.is_empty());
                let secret = is_secret(var.name);
                let value = if secret { value.map(mask) } else { value };
                OptionLine {
                    name: var.name,
                    key: var.key,
                    value,
                    source,
                    secret,
                    ignored: var.note.starts_with("ignored").then_some(var.note),
                }
            })
            .collect();
        let app0_in_env = env::VARS.iter().any(|v| {
            v.key.starts_with("appManager.array.apps.0.")
                && env(v.name).is_some_and(|t| !t.is_empty())
        });
        let apps = config
            .apps
            .iter()
            .enumerate()
            .map(|(index, app)| {
                let mut sources = vec![if file_defines_app(&entries, index) {
                    Source::File
                } else {
                    Source::Default
                }];
                if index == 0 && app0_in_env {
                    sources.push(Source::Env);
                }
                AppLine {
                    index,
                    id: app.id.clone(),
                    key: app.key.clone(),
                    sources,
                }
            })
            .collect();
        Report {
            config_file: None,
            options,
            apps,
        }
    }

    /// The report as aligned text: a header, one line per option, then one line per app.
    #[must_use]
    pub fn table(&self) -> String {
        let mut out = String::new();
        let file = self.config_file.as_deref().unwrap_or("none");
        out.push_str(&format!("config file: {file}\n"));
        out.push_str("precedence: default < file < env; secrets are shown as ****\n\n");
        let mut rows = vec![["VARIABLE", "KEY", "VALUE", "SOURCE", "NOTE"].map(str::to_owned)];
        for o in &self.options {
            rows.push([
                o.name.to_owned(),
                o.key.to_owned(),
                o.value.clone().unwrap_or_else(|| UNSET.to_owned()),
                o.source.as_str().to_owned(),
                o.ignored.unwrap_or_default().to_owned(),
            ]);
        }
        align(&rows, &mut out);
        out.push('\n');
        let mut rows = vec![["APP", "ID", "KEY", "SECRET", "SOURCE"].map(str::to_owned)];
        for a in &self.apps {
            rows.push([
                a.index.to_string(),
                a.id.clone(),
                a.key.clone(),
                MASK.to_owned(),
                a.source(),
            ]);
        }
        align(&rows, &mut out);
        out
    }

    /// The report as JSON: `{"config_file", "options": [...], "apps": [...]}`; an unset value
    /// is `null`.
    #[must_use]
    pub fn json(&self) -> Value {
        let options: Vec<Value> = self
            .options
            .iter()
            .map(|o| {
                json!({
                    "name": o.name,
                    "key": o.key,
                    "value": o.value,
                    "source": o.source.as_str(),
                    "secret": o.secret,
                    "ignored": o.ignored.is_some(),
                    "note": o.ignored,
                })
            })
            .collect();
        let apps: Vec<Value> = self
            .apps
            .iter()
            .map(|a| {
                json!({
                    "index": a.index,
                    "id": a.id,
                    "key": a.key,
                    "secret": MASK,
                    "source": a.source(),
                })
            })
            .collect();
        json!({ "config_file": self.config_file, "options": options, "apps": apps })
    }
}

/// Whether the variable holds a credential whose value must not be printed: passwords, app
/// secrets, the TLS key passphrase, tokens, and client option objects (which can carry
/// passwords).
#[must_use]
pub fn is_secret(name: &str) -> bool {
    name.contains("PASSWORD")
        || name.contains("SECRET")
        || name.ends_with("_PASS")
        || name.ends_with("_TOKEN")
        || name.ends_with("_OPTIONS")
}

/// An empty object or list says nothing secret; anything else is replaced whole.
fn mask(value: String) -> String {
    if value == "{}" || value == "[]" {
        value
    } else {
        MASK.to_owned()
    }
}

/// Pads each column to its widest cell, two spaces apart; the last column is not padded.
fn align<const N: usize>(rows: &[[String; N]], out: &mut String) {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < N {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// A value from the file as text: strings unquoted, `null` and `""` unset, others as JSON.
fn json_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The value the flattened file gives `key`, applied in file order as the loader does (a later
/// entry wins): the key itself, keys below it (an object option written nested), or, for a
/// field of an app, the app object inside an `appManager.array.apps` list.
fn file_value(entries: &[(String, Value)], key: &str) -> Option<Value> {
    let app_field = key
        .strip_prefix("appManager.array.apps.")
        .and_then(|rest| rest.split_once('.'))
        .and_then(|(i, field)| Some((i.parse::<usize>().ok()?, field)));
    let mut found = None;
    for (k, v) in entries {
        if k == key {
            found = Some(v.clone());
        } else if let Some(rest) = k.strip_prefix(key).and_then(|r| r.strip_prefix('.')) {
            let mut object = match found.take() {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            insert_path(&mut object, rest, v.clone());
            found = Some(Value::Object(object));
        } else if let (true, Some((index, field))) = (k == APPS, app_field) {
            // A list of apps replaces the apps before it, fields patched earlier included.
            found = v
                .get(index)
                .and_then(Value::as_object)
                .and_then(|app| app_field_value(app, field))
                .cloned();
        }
    }
    found
}

fn insert_path(object: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            object.insert(path.to_owned(), value);
        }
        Some((head, rest)) => {
            let inner = object
                .entry(head.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !inner.is_object() {
                *inner = Value::Object(Map::new());
            }
            if let Value::Object(inner) = inner {
                insert_path(inner, rest, value);
            }
        }
    }
}

/// The field of an app object, under any of the names Soketi accepts for it: the camelCase
/// name of the key, its PascalCase and snake_case forms, and the odd names of Soketi's SQL
/// schema.
fn app_field_value<'a>(app: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    let pascal: String = field
        .chars()
        .enumerate()
        .map(|(i, c)| if i == 0 { c.to_ascii_uppercase() } else { c })
        .collect();
    let snake: String = field
        .chars()
        .flat_map(|c| {
            let lower = c.to_ascii_lowercase();
            if c.is_ascii_uppercase() {
                vec!['_', lower]
            } else {
                vec![lower]
            }
        })
        .collect();
    let extra = match field {
        "id" => "AppId",
        "key" => "AppKey",
        "secret" => "AppSecret",
        "maxBackendEventsPerSecond" => "max_backend_events_per_sec",
        "maxClientEventsPerSecond" => "max_client_events_per_sec",
        "maxReadRequestsPerSecond" => "max_read_req_per_sec",
        _ => field,
    };
    [field, &pascal, &snake, extra]
        .into_iter()
        .find_map(|name| app.get(name))
}

/// Whether the file declares app `index`: in an `appManager.array.apps` list, or by a key below
/// `appManager.array.apps.<index>`.
fn file_defines_app(entries: &[(String, Value)], index: usize) -> bool {
    let own = format!("{APPS}.{index}");
    let mut defined = false;
    for (k, v) in entries {
        if k == APPS {
            defined = v.as_array().is_some_and(|list| list.len() > index);
        } else if k == &own || k.starts_with(&format!("{own}.")) {
            defined = true;
        }
    }
    defined
}

/// The value `config` holds for `key`: `Some(None)` when it is unset, `None` when the config
/// has no field for the key (the written text is shown instead).
fn effective(c: &Config, key: &str) -> Option<Option<String>> {
    let s = |text: &str| Some(text.to_owned());
    let n = |v: &dyn ToString| Some(v.to_string());
    let secs = |d: std::time::Duration| Some(d.as_secs().to_string());
    let millis = |d: std::time::Duration| Some(d.as_millis().to_string());
    Some(match key {
        "host" => s(&c.host),
        "port" => n(&c.port),
        "debug" => n(&c.debug),
        "pathPrefix" => s(&c.path_prefix),
        "shards" => n(&c.shards),
        "activityTimeout" => secs(c.activity_timeout),
        "pongTimeout" => secs(c.pong_timeout),
        "channelLimits.cacheTtl" => secs(c.cache_ttl),
        "sendBatch" => n(&c.send_batch),
        "maxOutboundKb" => n(&(c.max_outbound_bytes / 1024)),
        "maxWsMessageKb" => n(&(c.max_ws_message_bytes / 1024)),
        "ringCapacity" => n(&c.ring_capacity),
        "wsCompression" => s(if c.ws_compression { "on" } else { "off" }),
        "wsCompressionMinBytes" => n(&c.ws_compression_min_bytes),
        "maxConnections" => n(&c.max_connections),
        "maxHandshakesPerSec" => n(&c.max_handshakes_per_sec),
        "handshakeBurst" => n(&c.handshake_burst),
        "httpApi.requestLimitInMb" => n(&(c.max_http_body_bytes as f64 / (1024.0 * 1024.0))),
        "shutdownGracePeriod" => millis(c.shutdown_grace_period),
        "userAuthenticationTimeout" => millis(c.user_authentication_timeout),
        "metrics.enabled" => n(&c.metrics_enabled),
        "metrics.host" => s(&c.metrics_host),
        "metrics.port" => n(&c.metrics_port),
        "metrics.prometheus.prefix" => s(&c.metrics_prefix),
        "webhooks.batching.enabled" => n(&c.webhooks_batching),
        "webhooks.batching.duration" => millis(c.webhooks_batching_duration),
        "webhooks.vacateDelayMs" => millis(c.webhook_vacate_delay),
        "presence.memberRemovedDelayMs" => millis(c.member_removed_delay),
        "ssl.certPath" => s(&c.tls.cert_path),
        "ssl.keyPath" => s(&c.tls.key_path),
        "ssl.passphrase" => s(&c.tls.passphrase),
        "ssl.caPath" => s(&c.tls.ca_path),
        "adapter.driver" => s(match c.adapter {
            AdapterDriver::Local => "local",
            AdapterDriver::Redis => "redis",
        }),
        "adapter.redis.prefix" => s(&c.redis.channel_prefix),
        "adapter.redis.requestsTimeout" => millis(c.redis.requests_timeout),
        "database.redis.host" => s(&c.redis.host),
        "database.redis.port" => n(&c.redis.port),
        "database.redis.db" => n(&c.redis.db),
        "database.redis.username" => c.redis.username.clone(),
        "database.redis.password" => c.redis.password.clone(),
        "database.redis.keyPrefix" => s(&c.redis.key_prefix),
        "database.redis.sentinels" => (!c.redis.sentinels.is_empty()).then(|| {
            let list: Vec<Value> = c
                .redis
                .sentinels
                .iter()
                .map(|(host, port)| json!({"host": host, "port": port}))
                .collect();
            Value::Array(list).to_string()
        }),
        "database.redis.name" => s(&c.redis.name),
        "database.redis.clusterNodes" => (!c.redis.cluster_nodes.is_empty()).then(|| {
            let list: Vec<Value> = c
                .redis
                .cluster_nodes
                .iter()
                .map(|(host, port)| json!({"host": host, "port": port}))
                .collect();
            Value::Array(list).to_string()
        }),
        "adapter.redis.clusterMode" => n(&c.redis.cluster_mode),
        "adapter.redis.shardMode" => n(&c.redis.shard_mode),
        "rateLimiter.driver" => s(if c.redis.rate_limits {
            "redis"
        } else {
            "local"
        }),
        "database.redis.sentinelPassword" => c.redis.sentinel_password.clone(),
        "mode" => s(c.mode.name()),
        "queue.driver" => s(match c.queue.driver {
            QueueDriver::Sync => "sync",
            QueueDriver::Redis => "redis",
        }),
        "queue.redis.partitions" => n(&c.queue.partitions),
        "queue.redis.claimTimeoutMs" => millis(c.queue.claim_timeout),
        "queue.redis.maxAttempts" => n(&c.queue.max_attempts),
        "queue.redis.maxLength" => n(&c.queue.max_length),
        _ => {
            let field = key.strip_prefix("appManager.array.apps.0.")?;
            return c.apps.first().and_then(|app| app_value(app, field));
        }
    })
}

/// The value of a field of the first app, for the `SOKETI_DEFAULT_APP_*` lines.
fn app_value(app: &AppConfig, field: &str) -> Option<Option<String>> {
    let limit = |l: Option<u64>| Some(l.map_or_else(|| "-1".to_owned(), |n| n.to_string()));
    Some(match field {
        "id" => Some(app.id.clone()),
        "key" => Some(app.key.clone()),
        "secret" => Some(app.secret.clone()),
        "enabled" => Some(app.enabled.to_string()),
        "enableClientMessages" => Some(app.enable_client_messages.to_string()),
        "enableUserAuthentication" => Some(app.enable_user_authentication.to_string()),
        "maxConnections" => limit(app.max_connections),
        "maxBackendEventsPerSecond" => limit(app.max_backend_events_per_sec),
        "maxClientEventsPerSecond" => limit(app.max_client_events_per_sec),
        "maxReadRequestsPerSecond" => limit(app.max_read_req_per_sec),
        "enableSubscriptionCount" => Some(app.enable_subscription_count.to_string()),
        "enableWatchlistEvents" => Some(app.enable_watchlist_events.to_string()),
        "allowedOrigins" => Some(if app.allowed_origins.is_empty() {
            "*".to_owned()
        } else {
            app.allowed_origins.join(",")
        }),
        // The URLs and headers may hold tokens: only how many.
        "webhooks" => Some(match app.webhooks.len() {
            0 => "[]".to_owned(),
            1 => "1 webhook".to_owned(),
            n => format!("{n} webhooks"),
        }),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(file: Option<&str>, vars: &[(&str, &str)]) -> Report {
        let env = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        let config = Config::from_sources(file, &env).expect("valid config");
        Report::from_file_text(file, &config, &env)
    }

    fn line<'a>(report: &'a Report, name: &str) -> &'a OptionLine {
        report
            .options
            .iter()
            .find(|o| o.name == name)
            .expect("listed")
    }

    #[test]
    fn every_variable_is_listed_once_with_a_source() {
        let r = report(None, &[]);
        assert_eq!(r.options.len(), env::VARS.len());
        assert!(r.options.iter().all(|o| o.source == Source::Default));
        assert_eq!(line(&r, "SOKETI_PORT").value.as_deref(), Some("6001"));
        assert_eq!(line(&r, "SOKETI_PATH_PREFIX").value, None);
        assert_eq!(r.apps[0].source(), "default");
    }

    #[test]
    fn nested_and_dotted_file_keys_are_file_and_env_wins() {
        let file = r#"{"adapter": {"redis": {"prefix": "p1"}}, "metrics.port": 9700,
                       "port": 7000}"#;
        let r = report(Some(file), &[("SOKETI_PORT", "7001")]);
        let prefix = line(&r, "SOKETI_ADAPTER_REDIS_PREFIX");
        assert_eq!(
            (prefix.value.as_deref(), prefix.source),
            (Some("p1"), Source::File)
        );
        let metrics = line(&r, "SOKETI_METRICS_SERVER_PORT");
        assert_eq!(
            (metrics.value.as_deref(), metrics.source),
            (Some("9700"), Source::File)
        );
        let port = line(&r, "SOKETI_PORT");
        assert_eq!(
            (port.value.as_deref(), port.source),
            (Some("7001"), Source::Env)
        );
    }

    #[test]
    fn app_fields_of_a_file_list_are_file_under_any_spelling() {
        let file = r#"{"appManager.array.apps": [{"AppId": "a1", "key": "k1",
            "secret": "s1", "max_read_req_per_sec": 5}]}"#;
        let r = report(Some(file), &[("SOKETI_DEFAULT_APP_KEY", "k2")]);
        let id = line(&r, "SOKETI_DEFAULT_APP_ID");
        assert_eq!((id.value.as_deref(), id.source), (Some("a1"), Source::File));
        let reads = line(&r, "SOKETI_DEFAULT_APP_MAX_READ_REQ_PER_SEC");
        assert_eq!(
            (reads.value.as_deref(), reads.source),
            (Some("5"), Source::File)
        );
        let conns = line(&r, "SOKETI_DEFAULT_APP_MAX_CONNS");
        assert_eq!(
            (conns.value.as_deref(), conns.source),
            (Some("-1"), Source::Default)
        );
        let key = line(&r, "SOKETI_DEFAULT_APP_KEY");
        assert_eq!(
            (key.value.as_deref(), key.source),
            (Some("k2"), Source::Env)
        );
        assert_eq!(r.apps[0].source(), "file+env");
        assert_eq!(r.apps[0].key, "k2");
    }

    #[test]
    fn secrets_are_masked_and_unset_secrets_are_unset() {
        let file = r#"{"adapter.redis.redisPubOptions": {"password": "pw-in-options"}}"#;
        let vars = [
            ("SOKETI_DEFAULT_APP_SECRET", "top-secret"),
            ("SOKETI_SSL_PASS", "key-pass-1"),
        ];
        let r = report(Some(file), &vars);
        let text = format!("{}{}", r.table(), r.json());
        for secret in ["top-secret", "key-pass-1", "pw-in-options", "app-secret"] {
            assert!(!text.contains(secret), "{secret} leaked");
        }
        assert_eq!(line(&r, "SOKETI_SSL_PASS").value.as_deref(), Some(MASK));
        let options = line(&r, "SOKETI_ADAPTER_REDIS_PUB_OPTIONS");
        assert_eq!(
            (options.value.as_deref(), options.source),
            (Some(MASK), Source::File)
        );
        assert_eq!(line(&r, "SOKETI_DB_REDIS_PASSWORD").value, None);
        assert_eq!(
            line(&r, "SOKETI_ADAPTER_REDIS_SUB_OPTIONS")
                .value
                .as_deref(),
            Some("{}")
        );
    }

    #[test]
    fn ignored_options_are_marked() {
        let r = report(None, &[("SOKETI_QUEUE_REDIS_CONCURRENCY", "4")]);
        let queue = line(&r, "SOKETI_QUEUE_REDIS_CONCURRENCY");
        assert!(queue.ignored.is_some_and(|n| n.starts_with("ignored")));
        assert_eq!(
            (queue.value.as_deref(), queue.source),
            (Some("4"), Source::Env)
        );
        let r = report(None, &[("SOKETI_QUEUE_DRIVER", "redis")]);
        let driver = line(&r, "SOKETI_QUEUE_DRIVER");
        assert!(driver.ignored.is_none());
        assert_eq!(driver.value.as_deref(), Some("redis"));
        assert!(line(&r, "SOKETI_PORT").ignored.is_none());
    }
}
