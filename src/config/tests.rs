//! End-to-end loading: each option through each source (env, dotted file key, nested file
//! object), precedence, and every error naming its option.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::*;

fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

fn load(file: Option<&str>, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_sources(file, &env_of(pairs))
}

fn error(file: Option<&str>, pairs: &[(&str, &str)]) -> String {
    load(file, pairs).map(|_| ()).unwrap_err().to_string()
}

type Check = fn(&Config) -> bool;

/// One case per effective variable: the value to set and what the config must then show.
#[rustfmt::skip]
const CASES: &[(&str, &str, Check)] = &[
    ("CORECAST_ACTIVITY_TIMEOUT", "60", |c| c.activity_timeout == Duration::from_secs(60)),
    ("CORECAST_MAX_OUTBOUND_KB", "64", |c| c.max_outbound_bytes == 64 * 1024),
    ("CORECAST_SEND_BATCH", "false", |c| !c.send_batch),
    ("CORECAST_MAX_WS_MESSAGE_KB", "8", |c| c.max_ws_message_bytes == 8 * 1024),
    ("CORECAST_PONG_TIMEOUT", "10", |c| c.pong_timeout == Duration::from_secs(10)),
    ("CORECAST_RING_CAPACITY", "1024", |c| c.ring_capacity == 1024),
    ("CORECAST_WEBHOOK_VACATE_DELAY_MS", "500", |c| c.webhook_vacate_delay == Duration::from_millis(500)),
    ("CORECAST_PRESENCE_MEMBER_REMOVED_DELAY_MS", "2500", |c| c.member_removed_delay == Duration::from_millis(2500)),
    ("CORECAST_DEFAULT_APP_ENABLE_SUBSCRIPTION_COUNT", "true", |c| c.apps[0].enable_subscription_count),
    ("CORECAST_DEFAULT_APP_ENABLE_WATCHLIST_EVENTS", "true", |c| c.apps[0].enable_watchlist_events),
    ("CORECAST_DEFAULT_APP_ALLOWED_ORIGINS", "https://a.test,*.b.test", |c| c.apps[0].allowed_origins == ["https://a.test", "*.b.test"]),
    ("SOKETI_CHANNEL_CACHE_TTL", "60", |c| c.cache_ttl == Duration::from_secs(60)),
    ("CORECAST_MAX_CONNECTIONS", "500", |c| c.max_connections == 500),
    ("CORECAST_MAX_HANDSHAKES_PER_SEC", "50", |c| c.max_handshakes_per_sec == 50),
    ("CORECAST_HANDSHAKE_BURST", "7", |c| c.handshake_burst == 7),
    ("CORECAST_APP_MANAGER_MAX_APPS", "50", |c| c.app_manager.max_apps == 50),
    ("CORECAST_IO_DRIVER", "epoll", |c| c.io_driver == IoDriverChoice::Epoll),
    ("CORECAST_WS_COMPRESSION", "on", |c| c.ws_compression),
    ("CORECAST_WS_COMPRESSION_MIN_BYTES", "0", |c| c.ws_compression_min_bytes == 0),
    ("CORECAST_SHARDS", "300", |c| c.shards == 300),
    ("SOKETI_ADAPTER_DRIVER", "redis", |c| c.adapter == AdapterDriver::Redis),
    ("SOKETI_ADAPTER_REDIS_PREFIX", "cc", |c| c.redis.channel_prefix == "cc"),
    ("SOKETI_ADAPTER_REDIS_REQUESTS_TIMEOUT", "750", |c| c.redis.requests_timeout == Duration::from_millis(750)),
    ("CORECAST_REDIS_INTEREST", "false", |c| !c.redis.interest),
    ("SOKETI_APP_MANAGER_CACHE_ENABLED", "true", |c| c.app_manager.cache_enabled),
    ("SOKETI_APP_MANAGER_CACHE_TTL", "300", |c| c.app_manager.cache_ttl == Some(Duration::from_secs(300))),
    ("SOKETI_APP_MANAGER_DRIVER", "array", |c| c.apps.len() == 1),
    ("SOKETI_APP_MANAGER_DRIVER", "mysql", |c| c.app_manager.driver == AppManagerDriver::Mysql && c.apps.is_empty()),
    ("SOKETI_APP_MANAGER_DRIVER", "postgres", |c| c.app_manager.driver == AppManagerDriver::Postgres && c.apps.is_empty()),
    ("SOKETI_APP_MANAGER_MYSQL_TABLE", "soketi_apps", |c| c.app_manager.mysql.table == "soketi_apps"),
    ("SOKETI_APP_MANAGER_POSTGRES_TABLE", "public.apps", |c| c.app_manager.postgres.table == "public.apps"),
    ("SOKETI_CHANNEL_LIMITS_MAX_NAME_LENGTH", "50", |c| c.apps[0].max_channel_name_length == 50),
    ("SOKETI_CHANNEL_MAX_NAME_LENGTH", "60", |c| c.apps[0].max_channel_name_length == 60),
    ("SOKETI_DB_MYSQL_DATABASE", "realtime", |c| c.app_manager.mysql.database == "realtime"),
    ("SOKETI_DB_MYSQL_HOST", "mysql.internal", |c| c.app_manager.mysql.host == "mysql.internal"),
    ("SOKETI_DB_MYSQL_PASSWORD", "hunter2", |c| c.app_manager.mysql.password == "hunter2"),
    ("SOKETI_DB_MYSQL_PORT", "3307", |c| c.app_manager.mysql.port == 3307),
    ("SOKETI_DB_MYSQL_USERNAME", "soketi", |c| c.app_manager.mysql.user == "soketi"),
    ("SOKETI_DB_POOLING_ENABLED", "true", |c| c.app_manager.pool_enabled),
    ("SOKETI_DB_POOLING_MAX", "3", |c| c.app_manager.pool_max == 3),
    ("SOKETI_DB_POOLING_MIN", "2", |c| c.app_manager.pool_min == 2),
    ("SOKETI_DB_POSTGRES_DATABASE", "realtime", |c| c.app_manager.postgres.database == "realtime"),
    ("SOKETI_DB_POSTGRES_HOST", "pg.internal", |c| c.app_manager.postgres.host == "pg.internal"),
    ("SOKETI_DB_POSTGRES_PASSWORD", "hunter2", |c| c.app_manager.postgres.password == "hunter2"),
    ("SOKETI_DB_POSTGRES_PORT", "6432", |c| c.app_manager.postgres.port == 6432),
    ("SOKETI_DB_POSTGRES_USERNAME", "soketi", |c| c.app_manager.postgres.user == "soketi"),
    ("SOKETI_DB_REDIS_DB", "3", |c| c.redis.db == 3),
    ("SOKETI_DB_REDIS_HOST", "redis.internal", |c| c.redis.host == "redis.internal"),
    ("SOKETI_DB_REDIS_INSTANCE_NAME", "cache", |c| c.redis.name == "cache"),
    ("SOKETI_DB_REDIS_KEY_PREFIX", "k:", |c| c.redis.key_prefix == "k:"),
    ("SOKETI_DB_REDIS_PASSWORD", "hunter2", |c| c.redis.password.as_deref() == Some("hunter2")),
    ("SOKETI_DB_REDIS_PORT", "6380", |c| c.redis.port == 6380),
    ("SOKETI_DB_REDIS_SENTINELS", r#"[{"host":"s1","port":26380},{"host":"s2"}]"#, |c| c.redis.sentinels == [("s1".to_owned(), 26380), ("s2".to_owned(), 26379)]),
    ("SOKETI_DB_REDIS_CLUSTER_NODES", r#"[{"host":"r1","port":7000},{"host":"r2"},"r3:7002"]"#, |c| c.redis.cluster_nodes == [("r1".to_owned(), 7000), ("r2".to_owned(), 6379), ("r3".to_owned(), 7002)]),
    ("SOKETI_ADAPTER_REDIS_CLUSTER_MODE", "true", |c| c.redis.cluster_mode),
    ("SOKETI_ADAPTER_REDIS_SHARD_MODE", "true", |c| c.redis.shard_mode),
    ("SOKETI_RATE_LIMITER_DRIVER", "local", |c| !c.redis.rate_limits),
    ("SOKETI_DB_REDIS_SENTINEL_PASSWORD", "s3cret", |c| c.redis.sentinel_password.as_deref() == Some("s3cret")),
    ("SOKETI_DB_REDIS_USERNAME", "cc", |c| c.redis.username.as_deref() == Some("cc")),
    ("SOKETI_DEBUG", "1", |c| c.debug),
    ("SOKETI_DEFAULT_APP_ENABLED", "false", |c| !c.apps[0].enabled),
    ("SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES", "true", |c| c.apps[0].enable_client_messages),
    ("SOKETI_DEFAULT_APP_ID", "42", |c| c.apps[0].id == "42" && c.apps[0].key == "app-key"),
    ("SOKETI_DEFAULT_APP_KEY", "k1", |c| c.apps[0].key == "k1" && c.apps[0].id == "app-id"),
    ("SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC", "100", |c| c.apps[0].max_backend_events_per_sec == Some(100)),
    ("SOKETI_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SEC", "5", |c| c.apps[0].max_client_events_per_sec == Some(5)),
    ("SOKETI_DEFAULT_APP_MAX_CONNS", "1000", |c| c.apps[0].max_connections == Some(1000)),
    ("SOKETI_DEFAULT_APP_MAX_READ_REQ_PER_SEC", "7", |c| c.apps[0].max_read_req_per_sec == Some(7)),
    ("SOKETI_DEFAULT_APP_SECRET", "s3", |c| c.apps[0].secret == "s3"),
    ("SOKETI_DEFAULT_APP_USER_AUTHENTICATION", "true", |c| c.apps[0].enable_user_authentication),
    ("SOKETI_DEFAULT_APP_WEBHOOKS", r#"[{"url":"http://h/w","event_types":["member_added"]}]"#, |c| c.apps[0].webhooks.len() == 1 && c.apps[0].webhooks[0].event_types == [WebhookEvent::MemberAdded]),
    ("SOKETI_EVENT_MAX_BATCH_SIZE", "3", |c| c.apps[0].max_event_batch_size == 3),
    ("SOKETI_EVENT_MAX_CHANNELS_AT_ONCE", "4", |c| c.apps[0].max_event_channels_at_once == 4),
    ("SOKETI_EVENT_MAX_NAME_LENGTH", "20", |c| c.apps[0].max_event_name_length == 20),
    ("SOKETI_EVENT_MAX_SIZE_IN_KB", "10.5", |c| c.apps[0].max_event_payload_in_kb == 10.5),
    ("SOKETI_HOST", "127.0.0.1", |c| c.host == "127.0.0.1"),
    ("SOKETI_HTTP_MAX_REQUEST_SIZE", "2", |c| c.max_http_body_bytes == 2 * 1024 * 1024),
    ("SOKETI_METRICS_DRIVER", "prometheus", |c| !c.metrics_enabled),
    ("SOKETI_METRICS_ENABLED", "true", |c| c.metrics_enabled),
    ("SOKETI_METRICS_HOST", "127.0.0.1", |c| c.metrics_host == "127.0.0.1"),
    ("SOKETI_METRICS_PROMETHEUS_PREFIX", "cc_", |c| c.metrics_prefix == "cc_"),
    ("SOKETI_METRICS_SERVER_PORT", "9700", |c| c.metrics_port == 9700),
    ("SOKETI_MODE", "server", |c| c.mode == crate::config::Mode::Server),
    ("SOKETI_QUEUE_DRIVER", "redis", |c| c.queue.driver == crate::config::QueueDriver::Redis),
    ("CORECAST_WEBHOOK_QUEUE_PARTITIONS", "4", |c| c.queue.partitions == 4),
    ("CORECAST_WEBHOOK_QUEUE_CLAIM_TIMEOUT_MS", "1500", |c| c.queue.claim_timeout == Duration::from_millis(1500)),
    ("CORECAST_WEBHOOK_QUEUE_MAX_ATTEMPTS", "2", |c| c.queue.max_attempts == 2),
    ("CORECAST_WEBHOOK_QUEUE_MAX_LENGTH", "50", |c| c.queue.max_length == 50),
    ("SOKETI_PATH_PREFIX", "/ws", |c| c.path_prefix == "/ws"),
    ("SOKETI_PORT", "7001", |c| c.port == 7001),
    ("SOKETI_PRESENCE_MAX_MEMBERS", "5", |c| c.apps[0].max_presence_members_per_channel == 5),
    ("SOKETI_PRESENCE_MAX_MEMBER_SIZE", "0.5", |c| c.apps[0].max_presence_member_size_in_kb == 0.5),
    ("SOKETI_SHUTDOWN_GRACE_PERIOD", "1500", |c| c.shutdown_grace_period == Duration::from_millis(1500)),
    ("SOKETI_SSL_CA", "/ca.pem", |c| c.tls.ca_path == "/ca.pem" && !c.tls.enabled()),
    ("SOKETI_SSL_CERT", "/cert.pem", |c| c.tls.cert_path == "/cert.pem" && c.tls.enabled()),
    ("SOKETI_SSL_KEY", "/key.pem", |c| c.tls.key_path == "/key.pem" && c.tls.enabled()),
    ("SOKETI_SSL_PASS", "pw", |c| c.tls.passphrase == "pw" && c.tls.enabled()),
    ("SOKETI_USER_AUTHENTICATION_TIMEOUT", "5000", |c| c.user_authentication_timeout == Duration::from_secs(5)),
    ("SOKETI_WEBHOOKS_BATCHING", "true", |c| c.webhooks_batching),
    ("SOKETI_WEBHOOKS_BATCHING_DURATION", "200", |c| c.webhooks_batching_duration == Duration::from_millis(200)),
];

/// The value as it would be written in JSON: JSON text as such, anything else as a string.
fn as_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// `{"a.b.c": v}` written as `{"a": {"b": {"c": v}}}`.
fn nested(key: &str, value: Value) -> Value {
    key.rsplit('.').fold(value, |inner, part| {
        let mut map = Map::new();
        map.insert(part.to_owned(), inner);
        Value::Object(map)
    })
}

#[test]
fn nothing_set_gives_soketi_defaults_and_one_app() {
    let c = load(None, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c, Config::default());
    assert_eq!(
        c.apps,
        vec![AppConfig::new("app-id", "app-key", "app-secret")]
    );
    assert_eq!(
        (c.host.as_str(), c.port, c.debug, c.path_prefix.as_str()),
        ("0.0.0.0", 6001, false, "")
    );
    assert!(c.shards >= 1);
    assert_eq!(
        (c.activity_timeout.as_secs(), c.pong_timeout.as_secs()),
        (120, 30)
    );
    assert_eq!(
        (c.max_outbound_bytes, c.max_ws_message_bytes),
        (1 << 20, 256 << 10)
    );
    assert_eq!((c.max_http_body_bytes, c.ring_capacity), (100 << 20, 16384));
    assert_eq!(
        (c.metrics_enabled, c.metrics_port, c.metrics_prefix.as_str()),
        (false, 9601, "soketi_")
    );
    assert_eq!(
        (
            c.shutdown_grace_period.as_millis(),
            c.user_authentication_timeout.as_millis()
        ),
        (3000, 30_000)
    );
    assert_eq!(
        (c.adapter, c.redis.host.as_str(), c.redis.port, c.redis.db),
        (AdapterDriver::Local, "127.0.0.1", 6379, 0)
    );
    assert_eq!(
        (
            c.redis.requests_timeout.as_millis(),
            c.webhooks_batching_duration.as_millis()
        ),
        (5000, 50)
    );
    assert!(!c.tls.enabled() && !c.webhooks_batching);
    let app = &c.apps[0];
    assert!(app.enabled && !app.enable_client_messages && !app.enable_user_authentication);
    assert_eq!(
        (
            app.max_connections,
            app.max_backend_events_per_sec,
            app.max_read_req_per_sec
        ),
        (None, None, None)
    );
    assert_eq!(
        (
            app.max_presence_members_per_channel,
            app.max_presence_member_size_in_kb
        ),
        (100, 2.0)
    );
    assert_eq!(
        (app.max_channel_name_length, app.max_event_channels_at_once),
        (200, 100)
    );
    assert_eq!(
        (
            app.max_event_name_length,
            app.max_event_payload_in_kb,
            app.max_event_batch_size
        ),
        (200, 100.0, 10)
    );
}

#[test]
fn every_env_var_sets_its_option() {
    for &(name, text, check) in CASES {
        assert!(
            !check(&Config::default())
                || name.ends_with("_DRIVER") && name != "SOKETI_QUEUE_DRIVER",
            "{name}: case must observe a change"
        );
        let config = load(None, &[(name, text)]).unwrap_or_else(|e| panic!("{name}={text}: {e}"));
        assert!(check(&config), "{name}={text} had no effect");
    }
}

#[test]
fn every_config_key_sets_its_option_dotted_and_nested() {
    for &(name, text, check) in CASES {
        let key = env::lookup(name)
            .map(|v| v.key)
            .unwrap_or_else(|| panic!("{name} not in env::VARS"));
        let dotted = json!({ key: as_json(text) }).to_string();
        let config = load(Some(&dotted), &[]).unwrap_or_else(|e| panic!("{dotted}: {e}"));
        assert!(check(&config), "{dotted} had no effect");
        let nested = nested(key, as_json(text)).to_string();
        let config = load(Some(&nested), &[]).unwrap_or_else(|e| panic!("{nested}: {e}"));
        assert!(check(&config), "{nested} had no effect");
    }
}

#[test]
fn every_effective_variable_has_a_case() {
    for var in env::VARS {
        let inert = var.note.starts_with("ignored") || var.note.contains("rejected");
        let tested = CASES.iter().any(|(name, _, _)| *name == var.name);
        assert!(inert || tested, "{} has no case in CASES", var.name);
    }
}

#[test]
fn environment_overrides_file_and_file_overrides_defaults() {
    let file = r#"{"port": 7000, "debug": true}"#;
    assert_eq!(
        load(Some(file), &[]).map(|c| (c.port, c.debug)).ok(),
        Some((7000, true))
    );
    assert_eq!(
        load(Some(file), &[("SOKETI_PORT", "8000")])
            .map(|c| c.port)
            .ok(),
        Some(8000)
    );
    // An empty variable is unset, as in Soketi: the file value stays.
    assert_eq!(
        load(Some(file), &[("SOKETI_PORT", "")])
            .map(|c| c.port)
            .ok(),
        Some(7000)
    );
}

#[test]
fn default_app_variables_patch_the_first_file_app_only() {
    let file = r#"{"appManager.array.apps": [
        {"id": "1", "key": "k1", "secret": "s1", "max_connections": 10},
        {"id": "2", "key": "k2", "secret": "s2"}]}"#;
    let config = load(
        Some(file),
        &[
            ("SOKETI_DEFAULT_APP_SECRET", "rotated"),
            ("SOKETI_DEFAULT_APP_MAX_CONNS", "-1"),
        ],
    );
    let config = config.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.apps.len(), 2);
    assert_eq!(
        (
            config.apps[0].secret.as_str(),
            config.apps[0].max_connections
        ),
        ("rotated", None)
    );
    assert_eq!(config.apps[1].secret, "s2");
}

#[test]
fn server_limits_default_apps_that_do_not_set_their_own() {
    let file = r#"{"appManager": {"array": {"apps": [
        {"id": "1", "key": "k1", "secret": "s1", "maxEventPayloadInKb": 4},
        {"id": "2", "key": "k2", "secret": "s2"}]}},
        "eventLimits": {"maxPayloadInKb": 50}}"#;
    let config =
        load(Some(file), &[("SOKETI_PRESENCE_MAX_MEMBERS", "7")]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.apps[0].max_event_payload_in_kb, 4.0);
    assert_eq!(config.apps[1].max_event_payload_in_kb, 50.0);
    assert!(
        config
            .apps
            .iter()
            .all(|a| a.max_presence_members_per_channel == 7)
    );
}

#[test]
fn indexed_app_keys_add_and_patch_apps() {
    let file = r#"{"appManager.array.apps.1.id": "two", "appManager.array.apps.1.key": "k2",
        "appManager.array.apps.1.secret": "s2", "appManager.array.apps.0.enableClientMessages": true}"#;
    let config = load(Some(file), &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.apps.len(), 2);
    assert!(config.apps[0].enable_client_messages);
    assert_eq!(config.app_by_key("k2").map(|a| a.id.as_str()), Some("two"));
    assert_eq!(
        config.app_by_id("app-id").map(|a| a.key.as_str()),
        Some("app-key")
    );
}

#[test]
fn ignored_soketi_options_are_accepted() {
    let file = r#"{"queue.sqs": {"region": "x"}, "cors": {"origin": ["*"]}, "cluster.port": 11002,
        "appManager.mysql": {"table": "apps"}, "adapter.redis.redisPubOptions": {}, "rateLimiter.redis.clusterMode": true}"#;
    assert!(
        load(
            Some(file),
            &[
                ("SOKETI_QUEUE_REDIS_CONCURRENCY", "3"),
                ("SOKETI_ADAPTER_NATS_PREFIX", "n")
            ]
        )
        .is_ok()
    );
}

/// A config file (if any), environment pairs, and text the error must contain.
type ErrorCase = (
    Option<&'static str>,
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[rustfmt::skip]
const ERROR_CASES: &[ErrorCase] = &[
    (None, &[("SOKETI_PORT", "http")], "invalid value for SOKETI_PORT: \"http\""),
    (None, &[("SOKETI_DEBUG", "yes")], "invalid value for SOKETI_DEBUG: \"yes\""),
    (None, &[("CORECAST_SHARDS", "-2")], "invalid value for CORECAST_SHARDS: \"-2\""),
    (None, &[("SOKETI_DEFAULT_APP_MAX_CONNS", "-3")], "SOKETI_DEFAULT_APP_MAX_CONNS: \"-3\""),
    (None, &[("SOKETI_DEFAULT_APP_WEBHOOKS", "[{")], "SOKETI_DEFAULT_APP_WEBHOOKS is not valid JSON"),
    (None, &[("SOKETI_ADAPTER_DRIVER", "nats")], "SOKETI_ADAPTER_DRIVER: \"nats\" is not supported"),
    (None, &[("SOKETI_APP_MANAGER_DRIVER", "dynamodb")], "SOKETI_APP_MANAGER_DRIVER: \"dynamodb\" is not supported by corecast (DynamoDB"),
    (None, &[("SOKETI_MODE", "worker")], "mode and queue.driver cannot be used together: a worker sends queued webhooks"),
    (None, &[("SOKETI_MODE", "queue")], "invalid value for SOKETI_MODE: \"queue\" (expected full, server or worker)"),
    (None, &[("SOKETI_QUEUE_DRIVER", "sqs")], "SOKETI_QUEUE_DRIVER: \"sqs\" is not supported"),
    (None, &[("CORECAST_WEBHOOK_QUEUE_PARTITIONS", "0")], "invalid value for CORECAST_WEBHOOK_QUEUE_PARTITIONS: \"0\""),
    (None, &[("SOKETI_ADAPTER_REDIS_CLUSTER_MODE", "yes")], "invalid value for SOKETI_ADAPTER_REDIS_CLUSTER_MODE: \"yes\""),
    (None, &[("SOKETI_DB_REDIS_CLUSTER_NODES", r#"["s"]"#)], "invalid value for SOKETI_DB_REDIS_CLUSTER_NODES.0: \"s\" (expected \"host:port\")"),
    (None, &[("SOKETI_DB_REDIS_CLUSTER_NODES", r#"[{"host":"s","port":70000}]"#)], "invalid value for SOKETI_DB_REDIS_CLUSTER_NODES.0.port: 70000"),
    (None, &[("SOKETI_ADAPTER_REDIS_CLUSTER_MODE", "true"), ("SOKETI_DB_REDIS_SENTINELS", r#"[{"host":"s"}]"#)], "adapter.redis.clusterMode and database.redis.sentinels cannot be used together"),
    (None, &[("SOKETI_ADAPTER_REDIS_CLUSTER_MODE", "true"), ("SOKETI_DB_REDIS_DB", "2")], "adapter.redis.clusterMode and database.redis.db cannot be used together"),
    (None, &[("SOKETI_RATE_LIMITER_DRIVER", "redis")], "rateLimiter.driver redis and adapter.driver local cannot be used together"),
    (None, &[("SOKETI_RATE_LIMITER_DRIVER", "cluster")], "SOKETI_RATE_LIMITER_DRIVER: \"cluster\" is not supported"),
    (None, &[("SOKETI_DB_REDIS_SENTINELS", r#"{"host":"s"}"#)], "invalid value for SOKETI_DB_REDIS_SENTINELS: \"{"),
    (None, &[("SOKETI_DB_REDIS_SENTINELS", r#"[{"port":26379}]"#)], "SOKETI_DB_REDIS_SENTINELS.0.host is required"),
    (None, &[("SOKETI_DB_REDIS_SENTINELS", r#"[{"host":"s"},{"host":"t","port":0}]"#)], "invalid value for SOKETI_DB_REDIS_SENTINELS.1.port: 0"),
    (None, &[("SOKETI_DB_REDIS_SENTINELS", r#"[{"host":"s","pot":1}]"#)], "unknown config key \"SOKETI_DB_REDIS_SENTINELS.0.pot\""),
    (None, &[("SOKETI_DB_REDIS_SENTINELS", "[\"s:26379\"]")], "invalid value for SOKETI_DB_REDIS_SENTINELS.0: \"s:26379\""),
    (Some(r#"{"database": {"redis": {"name": ""}}}"#), &[], "invalid value for database.redis.name: \"\""),
    (None, &[("SOKETI_CHANNEL_MAX_NAME_LENGTH", "5"), ("SOKETI_CHANNEL_LIMITS_MAX_NAME_LENGTH", "6")], "only one of"),
    (Some(r#"{"prot": 1}"#), &[], "unknown config key \"prot\""),
    (Some(r#"{"eventLimits": {"maxNameLenght": 1}}"#), &[], "unknown config key \"eventLimits.maxNameLenght\""),
    (Some(r#"{"port": "6001x"}"#), &[], "invalid value for port: \"6001x\""),
    (Some(r#"{"metrics.port": -1}"#), &[], "invalid value for metrics.port: -1"),
    (Some(r#"{"port": 6001,}"#), &[], "the config file is not valid JSON"),
    (Some("[1]"), &[], "invalid value for the config file: [1]"),
    (Some(r#"{"appManager.array.apps": []}"#), &[], "at least one app is required"),
    (Some(r#"{"appManager.array.apps": [1]}"#), &[], "invalid value for appManager.array.apps.0: 1"),
    (Some(r#"{"appManager.array.apps.5.id": "x"}"#), &[], "invalid value for appManager.array.apps.5.id: 5"),
    (Some(r#"{"appManager.array.apps": [{"id": "a", "key": "k", "secret": "s", "x": 1}]}"#), &[], "\"appManager.array.apps.0.x\""),
];

#[test]
fn errors_name_the_option_and_value() {
    for (file, pairs, needle) in ERROR_CASES {
        let text = error(*file, pairs);
        assert!(text.contains(needle), "{text:?} should contain {needle:?}");
        assert!(!text.contains('\n'), "{text:?} must be one line");
    }
}

#[test]
fn duplicate_app_ids_or_keys_are_rejected() {
    let same_id = r#"{"appManager.array.apps": [{"id": "1", "key": "a", "secret": "s"}, {"id": "1", "key": "b", "secret": "s"}]}"#;
    assert_eq!(
        error(Some(same_id), &[]),
        "duplicate app id \"1\" in appManager.array.apps"
    );
    let same_key = r#"{"appManager.array.apps": [{"id": "1", "key": "a", "secret": "s"}, {"id": "2", "key": "a", "secret": "s"}]}"#;
    assert_eq!(
        error(Some(same_key), &[]),
        "duplicate app key \"a\" in appManager.array.apps"
    );
}

#[test]
fn config_argument_takes_both_forms_and_reads_the_file() {
    let path = std::env::temp_dir().join(format!("corecast-config-{}.json", std::process::id()));
    std::fs::write(&path, r#"{"port": 7100}"#).unwrap_or_else(|e| panic!("{e}"));
    let path_text = path.to_string_lossy().into_owned();
    let no_env = |_: &str| None;
    for args in [
        vec![format!("--config={path_text}")],
        vec!["--config".to_owned(), path_text.clone()],
    ] {
        assert_eq!(
            Config::load(&args, &no_env).map(|c| c.port).ok(),
            Some(7100),
            "{args:?}"
        );
    }
    std::fs::write(&path, "{").unwrap_or_else(|e| panic!("{e}"));
    let bad = Config::load(&[format!("--config={path_text}")], &no_env)
        .map(|_| ())
        .unwrap_err();
    assert!(
        bad.to_string()
            .starts_with(&format!("config file {path_text} is not valid JSON")),
        "{bad}"
    );
    let _ = std::fs::remove_file(&path);
    let missing = Config::load(&[format!("--config={path_text}")], &no_env)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        missing.starts_with(&format!("cannot read config file {path_text}")),
        "{missing}"
    );
    assert_eq!(Config::load(&[], &no_env).map(|c| c.port).ok(), Some(6001));
}

#[test]
fn bad_arguments_are_errors() {
    let no_env = |_: &str| None;
    let text = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        Config::load(&args, &no_env)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        text(&["--config"]),
        "--config needs a path: --config=<file.json>"
    );
    assert_eq!(
        text(&["--config="]),
        "--config needs a path: --config=<file.json>"
    );
    assert!(text(&["--port=1"]).starts_with("unknown argument \"--port=1\""));
}
