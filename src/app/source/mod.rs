//! Where the app-manager thread reads apps from when they live in a database: Soketi's
//! `mysql` and `postgres` app managers (`SOKETI_APP_MANAGER_DRIVER`).
//!
//! An [`AppSource`] answers one lookup at a time and blocks while it does, so it is only
//! ever called on the app-manager thread, never on a shard. Each lookup is Soketi's query,
//! `SELECT * FROM <table> WHERE key = ? LIMIT 1` (or `WHERE id = ?`), with the table and
//! column names quoted the way the database wants (backticks for MySQL, where `key` is a
//! reserved word; double quotes for PostgreSQL).
//!
//! A source connects on its first lookup and keeps the connection. When a connection or a
//! query fails the lookup returns [`SourceError::Unavailable`] and the connection is
//! dropped; the next lookup connects again. A lookup makes one attempt, bounded by
//! [`CONNECT_TIMEOUT`] to connect and [`QUERY_TIMEOUT`] for the answer, so a database that
//! is down or hung costs the caller a few seconds at most, never a loop or a panic. The
//! one exception: when the kept connection turns out closed (the server restarted, or
//! dropped it as idle), the lookup opens one new connection at once rather than failing
//! on a database that is up.
//!
//! A row becomes an [`AppConfig`] through [`AppManagerConfig::app_from_row`]: each column
//! that is an app field is turned into a JSON value (numbers, text, booleans; NULL leaves
//! the field out so the server-level default applies) and read exactly as an app object
//! of `appManager.array.apps` is. Other columns are ignored. Keys and ids match exactly,
//! whatever the column's collation.

pub mod mysql;
pub mod postgres;

use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::{AppConfig, AppManagerConfig, AppManagerDriver, Config};

/// Longest wait to open a connection and log in.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait for the answer to one lookup on an open connection.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// What to look an app up by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lookup {
    /// The public key clients connect with (`/app/{key}`): column `key`.
    Key(String),
    /// The id of REST paths (`/apps/{id}/...`): column `id`.
    Id(String),
}

impl Lookup {
    /// The column searched.
    #[must_use]
    pub fn column(&self) -> &'static str {
        match self {
            Lookup::Key(_) => "key",
            Lookup::Id(_) => "id",
        }
    }

    /// The value searched for.
    #[must_use]
    pub fn value(&self) -> &str {
        match self {
            Lookup::Key(v) | Lookup::Id(v) => v,
        }
    }

    /// How errors name the row, e.g. `apps[key=app-key]`.
    fn origin(&self, table: &str) -> String {
        format!("{table}[{}={}]", self.column(), self.value())
    }
}

/// Why a lookup gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The database could not be reached or the query failed; worth retrying later.
    #[error("app database unavailable: {0}")]
    Unavailable(String),
    /// A row was found but is not a valid app (a bad value, a missing secret).
    #[error("bad app row: {0}")]
    BadRow(String),
}

/// A blocking reader of apps from a database, used on the app-manager thread only.
pub trait AppSource: Send {
    /// The app found by `by`, `Ok(None)` when there is no such row. Connects if not
    /// connected; one attempt, bounded by [`CONNECT_TIMEOUT`] and [`QUERY_TIMEOUT`] (see
    /// the module's documentation).
    fn find(&mut self, by: &Lookup) -> Result<Option<AppConfig>, SourceError>;

    /// The driver's name for logs: `mysql` or `postgres`.
    fn name(&self) -> &'static str;
}

/// The source of the configured app manager; `None` for the array driver, whose apps are
/// all in [`Config::apps`]. Nothing connects until the first lookup.
#[must_use]
pub fn open(config: &Config) -> Option<Box<dyn AppSource>> {
    let apps = &config.app_manager;
    match apps.driver {
        AppManagerDriver::Array => None,
        AppManagerDriver::Mysql => Some(Box::new(mysql::MysqlSource::new(apps.clone()))),
        AppManagerDriver::Postgres => Some(Box::new(postgres::PostgresSource::new(apps.clone()))),
    }
}

/// Reads the row found for `by` (column → value, app-field columns only) as an app.
///
/// Keys and ids are exact, as in Pusher: a row whose key (or id) is not the one looked up
/// is no match. (MySQL's usual collations compare `APP-KEY` equal to `app-key` and ignore
/// trailing spaces; an integer column finds `041` for `41`.)
fn app_from_row(
    apps: &AppManagerConfig,
    table: &str,
    by: &Lookup,
    row: &Map<String, Value>,
) -> Result<Option<AppConfig>, SourceError> {
    let app = apps
        .app_from_row(row, &by.origin(table))
        .map_err(|e| SourceError::BadRow(e.to_string()))?;
    let found = match by {
        Lookup::Key(_) => &app.key,
        Lookup::Id(_) => &app.id,
    };
    Ok((found == by.value()).then_some(app))
}

/// `name` quoted as an identifier with `quote` (`` ` `` or `"`), a dotted name part by
/// part (`schema.table`), a quote inside doubled.
fn quote_ident(name: &str, quote: char) -> String {
    let doubled = format!("{quote}{quote}");
    name.split('.')
        .map(|part| format!("{quote}{}{quote}", part.replace(quote, &doubled)))
        .collect::<Vec<_>>()
        .join(".")
}

/// Soketi's query for one lookup, with identifiers quoted by `quote` and the parameter
/// written `param` (`?` or `$1`).
fn select(table: &str, column: &str, quote: char, param: &str) -> String {
    format!(
        "SELECT * FROM {} WHERE {} = {param} LIMIT 1",
        quote_ident(table, quote),
        quote_ident(column, quote)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_part_by_part() {
        assert_eq!(quote_ident("apps", '`'), "`apps`");
        assert_eq!(quote_ident("main.apps", '`'), "`main`.`apps`");
        assert_eq!(quote_ident("we`ird", '`'), "`we``ird`");
        assert_eq!(quote_ident("public.Apps", '"'), "\"public\".\"Apps\"");
        assert_eq!(quote_ident("a\"b", '"'), "\"a\"\"b\"");
    }

    #[test]
    fn lookups_use_soketis_query() {
        assert_eq!(
            select("apps", Lookup::Key("k".into()).column(), '`', "?"),
            "SELECT * FROM `apps` WHERE `key` = ? LIMIT 1"
        );
        assert_eq!(
            select("apps", Lookup::Id("1".into()).column(), '"', "$1"),
            "SELECT * FROM \"apps\" WHERE \"id\" = $1 LIMIT 1"
        );
        assert_eq!(Lookup::Key("k".into()).origin("apps"), "apps[key=k]");
    }

    #[test]
    fn the_array_driver_has_no_source() {
        assert!(open(&Config::default()).is_none());
        let mut config = Config::default();
        config.app_manager.driver = AppManagerDriver::Mysql;
        assert_eq!(open(&config).map(|s| s.name()), Some("mysql"));
        config.app_manager.driver = AppManagerDriver::Postgres;
        assert_eq!(open(&config).map(|s| s.name()), Some("postgres"));
    }

    #[test]
    fn an_unreachable_database_is_unavailable_quickly() {
        // A port nothing listens on: refused at once, so each lookup fails fast.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1);
        for driver in [AppManagerDriver::Mysql, AppManagerDriver::Postgres] {
            let mut config = Config::default();
            config.app_manager.driver = driver;
            config.app_manager.mysql.port = port;
            config.app_manager.postgres.port = port;
            let mut source = open(&config).unwrap_or_else(|| panic!("no source"));
            for _ in 0..2 {
                let started = std::time::Instant::now();
                let result = source.find(&Lookup::Key("k".into()));
                assert!(
                    matches!(result, Err(SourceError::Unavailable(_))),
                    "{driver:?}: {result:?}"
                );
                assert!(started.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(1));
            }
        }
    }
}
