//! Apps from a PostgreSQL table (`SOKETI_APP_MANAGER_DRIVER=postgres`), with
//! `tokio-postgres` over plain TCP (or a Unix socket when the host is a path).
//!
//! `tokio-postgres` is asynchronous; this source owns a current-thread tokio runtime and
//! blocks on it for each lookup, so the runtime, its timers and the connection's task all
//! live on the thread that calls [`AppSource::find`] (the app-manager thread) and run only
//! while a lookup does. Nothing else in the server runs on tokio.
//!
//! Values arrive in PostgreSQL's binary format and are read by column type: booleans,
//! `smallint`/`integer`/`bigint`, `real`/`double precision`, `numeric`, text types,
//! `json`/`jsonb` and `uuid`. The searched column may be text or an integer (`id serial`);
//! of another type it is compared as text.

use std::error::Error;
use std::fmt::Write as _;

use serde_json::{Map, Number, Value};
use tokio::runtime::Runtime;
use tokio::time::timeout;
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, NoTls, Row, Statement};

use super::{AppSource, CONNECT_TIMEOUT, Lookup, QUERY_TIMEOUT, SourceError};
use crate::config::{AppConfig, AppManagerConfig, is_app_column};

/// An [`AppSource`] over one PostgreSQL connection, opened on the first lookup.
pub struct PostgresSource {
    apps: AppManagerConfig,
    config: tokio_postgres::Config,
    /// Built on the first lookup, on the calling thread.
    runtime: Option<Runtime>,
    /// `None` until connected, and again after an error.
    conn: Option<Connected>,
}

/// An open connection and the lookups prepared on it.
struct Connected {
    client: Client,
    by_key: Option<Prepared>,
    by_id: Option<Prepared>,
}

struct Prepared {
    statement: Statement,
    param: Param,
}

/// How the searched value is sent, by the type of the searched column.
#[derive(Debug, Clone, Copy)]
enum Param {
    Text,
    Int2,
    Int4,
    Int8,
}

impl PostgresSource {
    /// A source for `apps.postgres`; nothing connects yet.
    #[must_use]
    pub fn new(apps: AppManagerConfig) -> Self {
        let db = &apps.postgres;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&db.host)
            .port(db.port)
            .user(&db.user)
            .dbname(&db.database)
            .application_name("corecast")
            .connect_timeout(CONNECT_TIMEOUT);
        if !db.password.is_empty() {
            config.password(&db.password);
        }
        Self {
            apps,
            config,
            runtime: None,
            conn: None,
        }
    }
}

impl AppSource for PostgresSource {
    fn find(&mut self, by: &Lookup) -> Result<Option<AppConfig>, SourceError> {
        let runtime = match &self.runtime {
            Some(runtime) => runtime,
            None => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                    .map_err(|e| SourceError::Unavailable(format!("postgres: runtime: {e}")))?;
                self.runtime.insert(runtime)
            }
        };
        let table = &self.apps.postgres.table;
        let reused = self.conn.is_some();
        let mut found = runtime.block_on(lookup(&mut self.conn, &self.config, table, by));
        if found.as_ref().is_err_and(|failed| failed.closed && reused) {
            // The connection kept from an earlier lookup was closed meanwhile (a server
            // restart, an idle timeout): this lookup gets one new connection at once.
            self.conn = None;
            found = runtime.block_on(lookup(&mut self.conn, &self.config, table, by));
        }
        let row = match found {
            Ok(row) => row,
            Err(failed) => {
                self.conn = None;
                return Err(failed.error);
            }
        };
        let Some(row) = row else {
            return Ok(None);
        };
        let fields = row_fields(&row)?;
        super::app_from_row(&self.apps, table, by, &fields)
    }

    fn name(&self) -> &'static str {
        "postgres"
    }
}

/// A failed connection or query.
struct Failed {
    error: SourceError,
    /// The connection was found closed or broken (not merely slow).
    closed: bool,
}

fn unavailable(what: impl std::fmt::Display) -> SourceError {
    SourceError::Unavailable(format!("postgres: {what}"))
}

/// No answer in time: the server may be alive but hung.
fn timed_out(what: String) -> Failed {
    Failed {
        error: unavailable(what),
        closed: false,
    }
}

/// A client error, named with its cause (the server's message, the IO error), which its
/// own text leaves out.
fn failed(err: tokio_postgres::Error) -> Failed {
    // A FATAL error ends the session (the server shutting down, the backend terminated).
    let fatal = err
        .as_db_error()
        .is_some_and(|db| matches!(db.severity(), "FATAL" | "PANIC"));
    let io = err
        .source()
        .is_some_and(|cause| cause.is::<std::io::Error>());
    let closed = err.is_closed() || fatal || io;
    let error = match err.source() {
        Some(cause) => unavailable(format!("{err}: {cause}")),
        None => unavailable(err),
    };
    Failed { error, closed }
}

/// Connects if needed and runs the lookup; every error here is [`SourceError::Unavailable`].
async fn lookup(
    conn: &mut Option<Connected>,
    config: &tokio_postgres::Config,
    table: &str,
    by: &Lookup,
) -> Result<Option<Row>, Failed> {
    let conn = match conn {
        Some(conn) => conn,
        None => {
            let connecting = timeout(CONNECT_TIMEOUT, config.connect(NoTls));
            let (client, connection) = connecting
                .await
                .map_err(|_| timed_out(format!("no connection within {CONNECT_TIMEOUT:?}")))?
                .map_err(failed)?;
            // The connection's socket is driven by this task, which runs while a lookup
            // blocks on the runtime; it ends when the client is dropped or the server goes.
            tokio::spawn(async move {
                let _ = connection.await;
            });
            conn.insert(Connected {
                client,
                by_key: None,
                by_id: None,
            })
        }
    };
    timeout(QUERY_TIMEOUT, query(conn, table, by))
        .await
        .map_err(|_| timed_out(format!("no answer within {QUERY_TIMEOUT:?}")))?
}

async fn query(conn: &mut Connected, table: &str, by: &Lookup) -> Result<Option<Row>, Failed> {
    let slot = match by {
        Lookup::Key(_) => &mut conn.by_key,
        Lookup::Id(_) => &mut conn.by_id,
    };
    let prepared = match slot {
        Some(prepared) => prepared,
        None => slot.insert(prepare(&conn.client, table, by.column()).await?),
    };
    let client = &conn.client;
    let statement = &prepared.statement;
    let value = by.value();
    let rows = match prepared.param {
        Param::Text => client.query(statement, &[&value]).await,
        // An id that is not a number matches no row of an integer column.
        Param::Int2 => match value.parse::<i16>() {
            Ok(n) => client.query(statement, &[&n]).await,
            Err(_) => return Ok(None),
        },
        Param::Int4 => match value.parse::<i32>() {
            Ok(n) => client.query(statement, &[&n]).await,
            Err(_) => return Ok(None),
        },
        Param::Int8 => match value.parse::<i64>() {
            Ok(n) => client.query(statement, &[&n]).await,
            Err(_) => return Ok(None),
        },
    };
    Ok(rows.map_err(failed)?.into_iter().next())
}

/// Prepares the lookup by `column`, sending the value as the column's type wants it.
async fn prepare(client: &Client, table: &str, column: &str) -> Result<Prepared, Failed> {
    let sql = super::select(table, column, '"', "$1");
    let statement = client.prepare(&sql).await.map_err(failed)?;
    let param = match statement.params().first() {
        Some(ty) if <&str as ToSql>::accepts(ty) => Some(Param::Text),
        Some(&Type::INT2) => Some(Param::Int2),
        Some(&Type::INT4) => Some(Param::Int4),
        Some(&Type::INT8) => Some(Param::Int8),
        _ => None,
    };
    if let Some(param) = param {
        return Ok(Prepared { statement, param });
    }
    let column = super::quote_ident(column, '"');
    let sql = sql.replace(&format!("{column} = $1"), &format!("{column}::text = $1"));
    let statement = client.prepare(&sql).await.map_err(failed)?;
    Ok(Prepared {
        statement,
        param: Param::Text,
    })
}

/// The app-field columns of `row` as JSON values; NULL columns are left out.
fn row_fields(row: &Row) -> Result<Map<String, Value>, SourceError> {
    let mut fields = Map::new();
    for (i, column) in row.columns().iter().enumerate() {
        if !is_app_column(column.name()) {
            continue;
        }
        let Cell(value) = row.try_get(i).map_err(|e| {
            let source = e.source().map(ToString::to_string).unwrap_or_default();
            SourceError::BadRow(format!("column {}: {e} {source}", column.name()))
        })?;
        if !value.is_null() {
            fields.insert(column.name().to_owned(), value);
        }
    }
    Ok(fields)
}

/// One value of any column type, as JSON.
struct Cell(Value);

type DecodeError = Box<dyn Error + Sync + Send>;

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, DecodeError> {
        let value = if *ty == Type::BOOL {
            Value::Bool(bool::from_sql(ty, raw)?)
        } else if *ty == Type::INT2 {
            Value::from(i16::from_sql(ty, raw)?)
        } else if *ty == Type::INT4 {
            Value::from(i32::from_sql(ty, raw)?)
        } else if *ty == Type::INT8 {
            Value::from(i64::from_sql(ty, raw)?)
        } else if *ty == Type::OID {
            Value::from(u32::from_sql(ty, raw)?)
        } else if *ty == Type::FLOAT4 {
            float(f64::from(f32::from_sql(ty, raw)?))?
        } else if *ty == Type::FLOAT8 {
            float(f64::from_sql(ty, raw)?)?
        } else if *ty == Type::NUMERIC {
            Value::String(numeric(raw)?)
        } else if *ty == Type::JSON {
            serde_json::from_slice(raw)?
        } else if *ty == Type::JSONB {
            match raw.split_first() {
                Some((1, json)) => serde_json::from_slice(json)?,
                _ => return Err("unknown jsonb format".into()),
            }
        } else if *ty == Type::UUID {
            Value::String(uuid(raw)?)
        } else if <&str as FromSql>::accepts(ty) {
            Value::String(<&str as FromSql>::from_sql(ty, raw)?.to_owned())
        } else {
            return Err(format!("a {ty} column cannot hold an app field").into());
        };
        Ok(Cell(value))
    }

    fn from_sql_null(_: &Type) -> Result<Self, DecodeError> {
        Ok(Cell(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn float(n: f64) -> Result<Value, DecodeError> {
    Number::from_f64(n)
        .map(Value::Number)
        .ok_or_else(|| "not a finite number".into())
}

/// A binary `numeric` as decimal text: `ndigits`, `weight`, `sign`, `dscale` (`u16` each),
/// then `ndigits` base-10000 digits, the first worth 10000^`weight`.
fn numeric(raw: &[u8]) -> Result<String, DecodeError> {
    let word = |i: usize| -> Result<u16, DecodeError> {
        match raw.get(2 * i..2 * i + 2) {
            Some(&[hi, lo]) => Ok(u16::from_be_bytes([hi, lo])),
            _ => Err("truncated numeric".into()),
        }
    };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| word(4 + i))
        .collect::<Result<_, _>>()?;
    let digit = |index: i32| -> u16 {
        usize::try_from(index)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut text = String::new();
    match sign {
        0x0000 => {}
        0x4000 => text.push('-'),
        _ => return Err("numeric is NaN or infinite".into()),
    }
    if weight < 0 {
        text.push('0');
    } else {
        for index in 0..=weight {
            if index == 0 {
                let _ = write!(text, "{}", digit(index));
            } else {
                let _ = write!(text, "{:04}", digit(index));
            }
        }
    }
    if dscale > 0 {
        let mut fraction = String::new();
        let mut index = weight + 1;
        while fraction.len() < dscale {
            let _ = write!(fraction, "{:04}", digit(index));
            index += 1;
        }
        fraction.truncate(dscale);
        text.push('.');
        text.push_str(&fraction);
    }
    Ok(text)
}

/// A binary `uuid` in its usual hyphenated form.
fn uuid(raw: &[u8]) -> Result<String, DecodeError> {
    if raw.len() != 16 {
        return Err("a uuid has 16 bytes".into());
    }
    let hex = hex::encode(raw);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary form of a numeric from its parts.
    fn raw(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [digits.len() as u16, weight as u16, sign, dscale] {
            out.extend_from_slice(&word.to_be_bytes());
        }
        for d in digits {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out
    }

    #[test]
    fn numerics_read_as_exact_decimal_text() {
        let cases: &[(Vec<u8>, &str)] = &[
            (raw(0, 0, 0, &[250]), "250"),
            (raw(0, 0, 2, &[1, 5000]), "1.50"),
            (raw(1, 0, 0, &[1, 0]), "10000"),
            (raw(1, 0x4000, 0, &[12, 3456]), "-123456"),
            (raw(-1, 0, 4, &[25]), "0.0025"),
            (raw(-2, 0, 8, &[7]), "0.00000007"),
            (raw(0, 0, 0, &[]), "0"),
            (raw(2, 0, 0, &[1]), "100000000"),
        ];
        for (bytes, want) in cases {
            assert_eq!(numeric(bytes).ok().as_deref(), Some(*want));
        }
        assert!(numeric(&raw(0, 0xC000, 0, &[])).is_err());
        assert!(numeric(&[0, 1]).is_err());
    }

    #[test]
    fn uuids_are_hyphenated() {
        let bytes: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            uuid(&bytes).ok().as_deref(),
            Some("00010203-0405-0607-0809-0a0b0c0d0e0f")
        );
        assert!(uuid(&bytes[..4]).is_err());
    }
}
