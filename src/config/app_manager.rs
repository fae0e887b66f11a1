//! Where apps come from: Soketi's app manager (`appManager.*`) and the SQL databases its
//! `mysql` and `postgres` drivers read (`database.mysql.*`, `database.postgres.*`,
//! `databasePooling.*`).
//!
//! With the `array` driver the apps are [`Config::apps`](super::Config::apps). With a SQL
//! driver they are rows of one table, looked up by key (WebSocket) or id (REST) as
//! `SELECT * FROM <table> WHERE key = ?` (`src/app/source/`). A row is read like an app
//! object of the config file: columns are app fields by their snake_case names, NULL
//! keeps the server-level default, -1 is unlimited, booleans may be 0/1, and `webhooks`
//! is JSON text. As in Soketi the default app (`SOKETI_DEFAULT_APP_*`) belongs to the
//! array driver only: a SQL driver serves the table's apps and no other.

use std::time::Duration;

use serde_json::{Map, Value};

use super::ConfigError;
use super::app::{AppConfig, AppDefaults};
use super::app_fields::{self, AppFields};
use super::value::{self, Raw};

/// Which app manager serves the apps (`SOKETI_APP_MANAGER_DRIVER`, `appManager.driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppManagerDriver {
    /// The apps of the configuration (`appManager.array.apps`).
    Array,
    /// Rows of a MySQL or MariaDB table.
    Mysql,
    /// Rows of a PostgreSQL table.
    Postgres,
}

impl AppManagerDriver {
    /// The driver's name, as `appManager.driver` spells it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            AppManagerDriver::Array => "array",
            AppManagerDriver::Mysql => "mysql",
            AppManagerDriver::Postgres => "postgres",
        }
    }
}

/// One SQL database and the table of apps in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbConfig {
    /// Host name or address (`database.<db>.host`), `127.0.0.1`. For PostgreSQL a path
    /// (starting with `/`) names the directory of its Unix socket.
    pub host: String,
    /// TCP port (`database.<db>.port`): 3306 for MySQL, 5432 for PostgreSQL.
    pub port: u16,
    /// User name (`database.<db>.user`): `root` for MySQL, `postgres` for PostgreSQL.
    pub user: String,
    /// Password (`database.<db>.password`), `password` as in Soketi.
    pub password: String,
    /// Database (schema) name (`database.<db>.database`), `main`.
    pub database: String,
    /// Table of apps (`appManager.<db>.table`), `apps`. A dotted name is
    /// `schema.table`.
    pub table: String,
}

impl DbConfig {
    fn new(port: u16, user: &str) -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port,
            user: user.to_owned(),
            password: "password".to_owned(),
            database: "main".to_owned(),
            table: "apps".to_owned(),
        }
    }
}

/// The app manager: which driver, its databases, the cache of looked-up apps and the
/// connection pool bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct AppManagerConfig {
    /// `SOKETI_APP_MANAGER_DRIVER`, `appManager.driver`: array.
    pub driver: AppManagerDriver,
    /// `SOKETI_DB_MYSQL_*` and `SOKETI_APP_MANAGER_MYSQL_TABLE`.
    pub mysql: DbConfig,
    /// `SOKETI_DB_POSTGRES_*` and `SOKETI_APP_MANAGER_POSTGRES_TABLE`.
    pub postgres: DbConfig,
    /// Keep apps read from the database instead of asking it again on every lookup
    /// (`SOKETI_APP_MANAGER_CACHE_ENABLED`, `appManager.cache.enabled`), false.
    pub cache_enabled: bool,
    /// How long a cached app is kept (`SOKETI_APP_MANAGER_CACHE_TTL`, seconds,
    /// `appManager.cache.ttl`); `None` keeps it until the server stops, which is what
    /// Soketi's default -1 (and any value up to 0) means.
    pub cache_ttl: Option<Duration>,
    /// Keep several database connections (`SOKETI_DB_POOLING_ENABLED`,
    /// `databasePooling.enabled`), false.
    pub pool_enabled: bool,
    /// Connections kept open even when idle, with pooling (`SOKETI_DB_POOLING_MIN`,
    /// `databasePooling.min`), 0.
    pub pool_min: usize,
    /// Most connections open at once, with pooling (`SOKETI_DB_POOLING_MAX`,
    /// `databasePooling.max`), 7.
    pub pool_max: usize,
    /// How many apps a database app manager can hold (`CORECAST_APP_MANAGER_MAX_APPS`,
    /// `appManager.maxApps`), 10,000: every shard sizes its per-app maps and counters by
    /// it (about 200 bytes per app and shard); an app past it is refused as unavailable.
    pub max_apps: usize,
    /// The server-level limits (`presence.*`, `channelLimits.*`, `eventLimits.*`) that a
    /// row's NULL limits fall back to.
    pub(crate) app_defaults: AppDefaults,
}

impl Default for AppManagerConfig {
    fn default() -> Self {
        Self {
            driver: AppManagerDriver::Array,
            mysql: DbConfig::new(3306, "root"),
            postgres: DbConfig::new(5432, "postgres"),
            cache_enabled: false,
            cache_ttl: None,
            pool_enabled: false,
            pool_min: 0,
            pool_max: 7,
            max_apps: 10_000,
            app_defaults: AppDefaults::default(),
        }
    }
}

impl AppManagerConfig {
    /// The database of the selected driver; `None` for the array driver.
    #[must_use]
    pub fn database(&self) -> Option<&DbConfig> {
        match self.driver {
            AppManagerDriver::Array => None,
            AppManagerDriver::Mysql => Some(&self.mysql),
            AppManagerDriver::Postgres => Some(&self.postgres),
        }
    }

    /// How many database connections the app manager may hold: `pool_max` with pooling,
    /// else one.
    #[must_use]
    pub fn pool_size(&self) -> usize {
        if self.pool_enabled {
            self.pool_max.max(1)
        } else {
            1
        }
    }

    /// Builds an app from one database row given as column name → value, with the same
    /// rules and defaults as an app object of `appManager.array.apps`. Columns that are
    /// not app fields ([`is_app_column`]) are skipped; JSON `null` keeps the default.
    /// `origin` names the row in errors (e.g. `apps[key=app-key]`).
    pub fn app_from_row(
        &self,
        row: &Map<String, Value>,
        origin: &str,
    ) -> Result<AppConfig, ConfigError> {
        let known: Map<String, Value> = row
            .iter()
            .filter(|(column, _)| is_app_column(column))
            .map(|(column, value)| (column.clone(), value.clone()))
            .collect();
        let fields = AppFields::from_object(&known, origin);
        app_fields::build(&fields, origin, &self.app_defaults)
    }

    /// Applies one `appManager.*` (except `appManager.array.*`), `database.mysql.*`,
    /// `database.postgres.*` or `databasePooling.*` option; `Ok(false)` when `key` is
    /// none of these.
    pub(crate) fn apply(
        &mut self,
        key: &str,
        raw: &Raw,
        option: &str,
    ) -> Result<bool, ConfigError> {
        let o = option;
        match key {
            "appManager.driver" => self.driver = driver(raw, o)?,
            "appManager.cache.enabled" => self.cache_enabled = value::boolean(raw, o)?,
            // Soketi's caches expire an entry only for a TTL above 0.
            "appManager.cache.ttl" => {
                self.cache_ttl = value::limit(raw, o)?
                    .filter(|&secs| secs > 0)
                    .map(Duration::from_secs);
            }
            "appManager.mysql.table" => self.mysql.table = value::non_empty(raw, o)?,
            "appManager.postgres.table" => self.postgres.table = value::non_empty(raw, o)?,
            // They pick and tune Soketi's Node.js client; checked, without effect here.
            "appManager.mysql.useMysql2" => {
                value::boolean(raw, o)?;
            }
            "appManager.mysql.version" | "appManager.postgres.version" => {
                value::string(raw, o)?;
            }
            "appManager.maxApps" => self.max_apps = value::size(raw, o, 1)?,
            "databasePooling.enabled" => self.pool_enabled = value::boolean(raw, o)?,
            "databasePooling.min" => self.pool_min = value::size(raw, o, 0)?,
            "databasePooling.max" => self.pool_max = value::size(raw, o, 1)?,
            _ => {
                let (db, field) = if let Some(field) = key.strip_prefix("database.mysql.") {
                    (&mut self.mysql, field)
                } else if let Some(field) = key.strip_prefix("database.postgres.") {
                    (&mut self.postgres, field)
                } else {
                    return Ok(false);
                };
                match field {
                    "host" => db.host = value::non_empty(raw, o)?,
                    "port" => db.port = value::port(raw, o)?,
                    "user" => db.user = value::non_empty(raw, o)?,
                    "password" => db.password = value::string(raw, o)?,
                    "database" => db.database = value::non_empty(raw, o)?,
                    _ => return Ok(false),
                }
            }
        }
        Ok(true)
    }
}

/// Whether a column of the apps table is an app field (any spelling Soketi reads, such as
/// `max_connections` or `enabled`); other columns of a row are ignored.
#[must_use]
pub fn is_app_column(column: &str) -> bool {
    app_fields::is_field(column)
}

fn driver(raw: &Raw, option: &str) -> Result<AppManagerDriver, ConfigError> {
    match value::string(raw, option)?.as_str() {
        "array" => Ok(AppManagerDriver::Array),
        "mysql" => Ok(AppManagerDriver::Mysql),
        "postgres" => Ok(AppManagerDriver::Postgres),
        "dynamodb" => Err(ConfigError::Unsupported {
            option: option.to_owned(),
            value: raw.shown(),
            reason: "DynamoDB is not supported; use array, mysql or postgres",
        }),
        _ => Err(raw.invalid(option, "array, mysql or postgres")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::Config;
    use super::*;

    fn load(file: Option<&str>, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        };
        Config::from_sources(file, &env)
    }

    fn loaded(file: Option<&str>, pairs: &[(&str, &str)]) -> Config {
        load(file, pairs).unwrap_or_else(|e| panic!("{e}"))
    }

    fn error(file: Option<&str>, pairs: &[(&str, &str)]) -> String {
        load(file, pairs).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_soketis() {
        let m = loaded(None, &[]).app_manager;
        assert_eq!(m.driver, AppManagerDriver::Array);
        assert_eq!(m.database(), None);
        let mysql = DbConfig {
            host: "127.0.0.1".to_owned(),
            port: 3306,
            user: "root".to_owned(),
            password: "password".to_owned(),
            database: "main".to_owned(),
            table: "apps".to_owned(),
        };
        assert_eq!(m.mysql, mysql);
        let postgres = DbConfig {
            port: 5432,
            user: "postgres".to_owned(),
            ..mysql
        };
        assert_eq!(m.postgres, postgres);
        assert!(!m.cache_enabled && m.cache_ttl.is_none());
        assert_eq!((m.pool_enabled, m.pool_min, m.pool_max), (false, 0, 7));
        assert_eq!(m.pool_size(), 1);
    }

    #[test]
    fn environment_sets_the_mysql_driver_and_database() {
        let c = loaded(
            None,
            &[
                ("SOKETI_APP_MANAGER_DRIVER", "mysql"),
                ("SOKETI_DB_MYSQL_HOST", "db.internal"),
                ("SOKETI_DB_MYSQL_PORT", "3307"),
                ("SOKETI_DB_MYSQL_USERNAME", "soketi"),
                ("SOKETI_DB_MYSQL_PASSWORD", "hunter2"),
                ("SOKETI_DB_MYSQL_DATABASE", "realtime"),
                ("SOKETI_APP_MANAGER_MYSQL_TABLE", "soketi_apps"),
                ("SOKETI_APP_MANAGER_MYSQL_USE_V2", "true"),
                ("SOKETI_APP_MANAGER_MYSQL_VERSION", "5.7"),
                ("SOKETI_APP_MANAGER_CACHE_ENABLED", "true"),
                ("SOKETI_APP_MANAGER_CACHE_TTL", "60"),
                ("SOKETI_DB_POOLING_ENABLED", "true"),
                ("SOKETI_DB_POOLING_MIN", "1"),
                ("SOKETI_DB_POOLING_MAX", "3"),
            ],
        );
        let m = &c.app_manager;
        assert_eq!(m.driver, AppManagerDriver::Mysql);
        let db = m.database().unwrap_or_else(|| panic!("no database"));
        assert_eq!(
            (
                db.host.as_str(),
                db.port,
                db.user.as_str(),
                db.password.as_str(),
                db.database.as_str(),
                db.table.as_str()
            ),
            (
                "db.internal",
                3307,
                "soketi",
                "hunter2",
                "realtime",
                "soketi_apps"
            )
        );
        assert_eq!(m.postgres.port, 5432, "postgres settings are apart");
        assert!(m.cache_enabled);
        assert_eq!(m.cache_ttl, Some(Duration::from_secs(60)));
        assert_eq!((m.pool_min, m.pool_max, m.pool_size()), (1, 3, 3));
    }

    #[test]
    fn file_keys_set_the_postgres_driver_dotted_and_nested() {
        let dotted = r#"{"appManager.driver": "postgres", "database.postgres.host": "/run/postgresql",
            "database.postgres.port": 6543, "database.postgres.user": "u", "database.postgres.password": 1234,
            "database.postgres.database": "d", "appManager.postgres.table": "public.apps",
            "appManager.postgres.version": 16}"#;
        let nested = r#"{"appManager": {"driver": "postgres", "postgres": {"table": "public.apps", "version": "16"}},
            "database": {"postgres": {"host": "/run/postgresql", "port": "6543", "user": "u",
            "password": "1234", "database": "d"}}}"#;
        for file in [dotted, nested] {
            let c = loaded(Some(file), &[]);
            assert_eq!(c.app_manager.driver, AppManagerDriver::Postgres);
            let db = c.app_manager.database().cloned();
            let want = DbConfig {
                host: "/run/postgresql".to_owned(),
                port: 6543,
                user: "u".to_owned(),
                password: "1234".to_owned(),
                database: "d".to_owned(),
                table: "public.apps".to_owned(),
            };
            assert_eq!(db, Some(want), "{file}");
        }
    }

    #[test]
    fn cache_ttl_of_minus_one_or_zero_never_expires() {
        for ttl in ["-1", "0"] {
            let c = loaded(None, &[("SOKETI_APP_MANAGER_CACHE_TTL", ttl)]);
            assert_eq!(c.app_manager.cache_ttl, None, "{ttl}");
        }
        assert!(error(None, &[("SOKETI_APP_MANAGER_CACHE_TTL", "-5")]).contains("-5"));
    }

    #[test]
    fn a_sql_driver_serves_no_configured_app() {
        for driver in ["mysql", "postgres"] {
            let c = loaded(
                Some(r#"{"appManager.array.apps": [{"id": "1", "key": "k", "secret": "s"}]}"#),
                &[
                    ("SOKETI_APP_MANAGER_DRIVER", driver),
                    ("SOKETI_DEFAULT_APP_KEY", "other"),
                ],
            );
            assert!(c.apps.is_empty(), "{driver}: {:?}", c.apps);
        }
        // An empty list is no error then; a malformed app still is.
        let empty = r#"{"appManager.array.apps": [], "appManager.driver": "mysql"}"#;
        assert!(loaded(Some(empty), &[]).apps.is_empty());
        let text = error(
            None,
            &[
                ("SOKETI_APP_MANAGER_DRIVER", "mysql"),
                ("SOKETI_DEFAULT_APP_MAX_CONNS", "many"),
            ],
        );
        assert!(text.contains("SOKETI_DEFAULT_APP_MAX_CONNS"), "{text}");
    }

    #[test]
    fn dynamodb_and_unknown_drivers_and_keys_are_errors() {
        let text = error(None, &[("SOKETI_APP_MANAGER_DRIVER", "dynamodb")]);
        assert_eq!(
            text,
            "SOKETI_APP_MANAGER_DRIVER: \"dynamodb\" is not supported by corecast \
             (DynamoDB is not supported; use array, mysql or postgres)"
        );
        let text = error(None, &[("SOKETI_APP_MANAGER_DRIVER", "sqlite")]);
        assert!(text.contains("expected array, mysql or postgres"), "{text}");
        let text = error(Some(r#"{"database.mysql.hots": "h"}"#), &[]);
        assert_eq!(text, "unknown config key \"database.mysql.hots\"");
        let text = error(Some(r#"{"appManager.mysql.tabel": "t"}"#), &[]);
        assert_eq!(text, "unknown config key \"appManager.mysql.tabel\"");
        let text = error(None, &[("SOKETI_DB_POSTGRES_PORT", "99999")]);
        assert!(text.contains("SOKETI_DB_POSTGRES_PORT"), "{text}");
        let text = error(None, &[("SOKETI_DB_POOLING_MAX", "0")]);
        assert!(text.contains("SOKETI_DB_POOLING_MAX"), "{text}");
        // DynamoDB settings stay accepted (without effect) while the driver is another.
        assert!(load(None, &[("SOKETI_APP_MANAGER_DYNAMODB_TABLE", "t")]).is_ok());
    }

    fn row(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_row_is_read_like_a_configured_app() {
        let m = loaded(None, &[("SOKETI_PRESENCE_MAX_MEMBERS", "9")]).app_manager;
        let app = m.app_from_row(
            &row(json!({
                "id": 12, "key": "k", "secret": "s", "created_at": "2024-01-01",
                "max_connections": -1, "enable_client_messages": 1, "enabled": 0,
                "max_client_events_per_sec": "20", "max_presence_members_per_channel": null,
                "max_event_payload_in_kb": "1.50",
                "webhooks": r#"[{"url": "http://h/w", "event_types": ["channel_occupied"]}]"#
            })),
            "apps[key=k]",
        );
        let app = app.unwrap_or_else(|e| panic!("{e}"));
        let mut want = AppConfig::new("12", "k", "s");
        want.enable_client_messages = true;
        want.enabled = false;
        want.max_client_events_per_sec = Some(20);
        want.max_presence_members_per_channel = 9;
        want.max_event_payload_in_kb = 1.5;
        want.webhooks = app.webhooks.clone();
        assert_eq!(app, want);
        assert_eq!(app.webhooks.len(), 1);
    }

    #[test]
    fn a_bad_row_names_the_row_and_column() {
        let m = AppManagerConfig::default();
        let bad = m
            .app_from_row(
                &row(json!({"id": "1", "key": "k", "secret": "s", "max_connections": "lots"})),
                "apps[id=1]",
            )
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(bad.contains("apps[id=1].max_connections"), "{bad}");
        let missing = m
            .app_from_row(
                &row(json!({"id": "1", "key": "k", "secret": null})),
                "apps[id=1]",
            )
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert_eq!(missing, "apps[id=1].secret is required");
    }

    #[test]
    fn app_columns_are_the_app_fields() {
        for column in [
            "id",
            "key",
            "secret",
            "enabled",
            "max_connections",
            "webhooks",
            "enable_subscription_count",
            "enable_watchlist_events",
            "allowed_origins",
        ] {
            assert!(is_app_column(column), "{column}");
        }
        for column in ["created_at", "name", ""] {
            assert!(!is_app_column(column), "{column}");
        }
    }
}
