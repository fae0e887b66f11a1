//! Apps from a MySQL or MariaDB table (`SOKETI_APP_MANAGER_DRIVER=mysql`), with the
//! synchronous `mysql` client over plain TCP. Lookups are prepared statements, kept by the
//! connection's statement cache, so values arrive typed: `tinyint(1)` booleans as 0/1,
//! integers as numbers, `json` and text columns as text (a `webhooks` column is parsed as
//! JSON when the app is read).

use std::io;

use mysql::consts::ColumnType;
use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, Row};
use serde_json::{Map, Number, Value};

use super::{AppSource, CONNECT_TIMEOUT, Lookup, QUERY_TIMEOUT, SourceError};
use crate::config::{AppConfig, AppManagerConfig, is_app_column};

/// An [`AppSource`] over one MySQL connection, opened on the first lookup.
pub struct MysqlSource {
    apps: AppManagerConfig,
    opts: Opts,
    /// The queries by key and by id.
    by_key: String,
    by_id: String,
    /// `None` until connected, and again after an error.
    conn: Option<Conn>,
}

impl MysqlSource {
    /// A source for `apps.mysql`; nothing connects yet.
    #[must_use]
    pub fn new(apps: AppManagerConfig) -> Self {
        let db = &apps.mysql;
        let opts = OptsBuilder::new()
            .ip_or_hostname(Some(db.host.clone()))
            .tcp_port(db.port)
            .user(Some(db.user.clone()))
            .pass(Some(db.password.clone()))
            .db_name(Some(db.database.clone()))
            .tcp_connect_timeout(Some(CONNECT_TIMEOUT))
            .read_timeout(Some(QUERY_TIMEOUT))
            .write_timeout(Some(QUERY_TIMEOUT))
            // Stay on the configured TCP address rather than switching to a local socket.
            .prefer_socket(false);
        Self {
            by_key: super::select(&db.table, "key", '`', "?"),
            by_id: super::select(&db.table, "id", '`', "?"),
            opts: opts.into(),
            conn: None,
            apps,
        }
    }

    fn query(&mut self, by: &Lookup) -> Result<Option<Row>, mysql::Error> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(Conn::new(self.opts.clone())?),
        };
        let sql = match by {
            Lookup::Key(_) => &self.by_key,
            Lookup::Id(_) => &self.by_id,
        };
        conn.exec_first::<Row, _, _>(sql.as_str(), (by.value(),))
    }
}

impl AppSource for MysqlSource {
    fn find(&mut self, by: &Lookup) -> Result<Option<AppConfig>, SourceError> {
        let reused = self.conn.is_some();
        let mut found = self.query(by);
        if found.as_ref().is_err_and(|err| reused && broken(err)) {
            // The connection kept from an earlier lookup was closed meanwhile (a server
            // restart, `wait_timeout`): this lookup gets one new connection at once.
            self.conn = None;
            found = self.query(by);
        }
        let row = match found {
            Ok(row) => row,
            Err(err) => {
                self.conn = None;
                return Err(SourceError::Unavailable(format!("mysql: {err}")));
            }
        };
        let Some(row) = row else {
            return Ok(None);
        };
        let fields = row_fields(&row)?;
        super::app_from_row(&self.apps, &self.apps.mysql.table, by, &fields)
    }

    fn name(&self) -> &'static str {
        "mysql"
    }
}

/// Whether `err` says the connection is closed or broken, rather than slow (a read or
/// write timeout) or the query wrong (a server error).
fn broken(err: &mysql::Error) -> bool {
    let io = match err {
        mysql::Error::IoError(io) => Some(io),
        mysql::Error::CodecError(codec) => {
            std::error::Error::source(codec).and_then(|cause| cause.downcast_ref::<io::Error>())
        }
        mysql::Error::DriverError(_) => return true,
        _ => return false,
    };
    !io.is_some_and(|io| {
        matches!(
            io.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    })
}

/// The app-field columns of `row` as JSON values; NULL columns are left out.
fn row_fields(row: &Row) -> Result<Map<String, Value>, SourceError> {
    let mut fields = Map::new();
    for (i, column) in row.columns_ref().iter().enumerate() {
        let name = column.name_str();
        if !is_app_column(&name) {
            continue;
        }
        let Some(value) = row.as_ref(i) else {
            continue;
        };
        let bad = |what: &str| SourceError::BadRow(format!("column {name}: {what}"));
        let json = match value {
            mysql::Value::NULL => continue,
            mysql::Value::Int(n) => Value::from(*n),
            mysql::Value::UInt(n) => Value::from(*n),
            mysql::Value::Float(n) => float(f64::from(*n)).ok_or_else(|| bad("not finite"))?,
            mysql::Value::Double(n) => float(*n).ok_or_else(|| bad("not finite"))?,
            mysql::Value::Bytes(bytes) if column.column_type() == ColumnType::MYSQL_TYPE_BIT => {
                // BIT(n): big-endian bits; BIT(1) is a boolean.
                let n = bytes
                    .iter()
                    .try_fold(0u64, |n, b| n.checked_mul(256).map(|n| n + u64::from(*b)));
                Value::from(n.ok_or_else(|| bad("BIT value wider than 64 bits"))?)
            }
            mysql::Value::Bytes(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => Value::String(text.to_owned()),
                Err(_) => return Err(bad("not UTF-8 text")),
            },
            other => Value::String(other.as_sql(true).trim_matches('\'').to_owned()),
        };
        fields.insert(name.into_owned(), json);
    }
    Ok(fields)
}

fn float(n: f64) -> Option<Value> {
    Number::from_f64(n).map(Value::Number)
}
