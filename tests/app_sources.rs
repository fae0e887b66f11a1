//! Apps read from real databases: Soketi's `apps` table on a throwaway MariaDB and
//! PostgreSQL, looked up by key and by id through `corecast::app::source`, and each row
//! compared with the same app written in `appManager.array.apps`, so a row and a configured
//! app mean the same. Also: missing rows, bad rows, custom table names and column types,
//! and outages (a stopped or frozen database answers `Unavailable` within seconds, and the
//! same source works again once it is back).

#[path = "common/mariadb.rs"]
mod mariadb;
#[path = "common/postgres.rs"]
mod postgres;

use std::time::{Duration, Instant};

use corecast::app::source::{self, AppSource, Lookup, SourceError};
use corecast::config::{AppConfig, Config};
use serde_json::{Value, json};

use mariadb::MariaDb;
use postgres::Postgres;

/// Soketi's MySQL table (its docs' schema), plus two columns of the operator's own.
const MYSQL_APPS: &str = "CREATE TABLE `apps` (
    `id` varchar(255) NOT NULL,
    `key` varchar(255) NOT NULL,
    `secret` varchar(255) NOT NULL,
    `max_connections` integer(10) NOT NULL,
    `enable_client_messages` tinyint(1) NOT NULL,
    `enabled` tinyint(1) NOT NULL,
    `max_backend_events_per_sec` integer(10) NOT NULL,
    `max_client_events_per_sec` integer(10) NOT NULL,
    `max_read_req_per_sec` integer(10) NOT NULL,
    `webhooks` json,
    `max_presence_members_per_channel` tinyint(1) NULL,
    `max_presence_member_size_in_kb` tinyint(1) NULL,
    `max_channel_name_length` tinyint(1) NULL,
    `max_event_channels_at_once` tinyint(1) NULL,
    `max_event_name_length` tinyint(1) NULL,
    `max_event_payload_in_kb` tinyint(1) NULL,
    `max_event_batch_size` tinyint(1) NULL,
    `enable_user_authentication` tinyint(1) NOT NULL,
    `owner_note` varchar(255) NULL,
    `created_at` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (`id`)
)";

/// Soketi's PostgreSQL table (its docs' schema), plus two columns of the operator's own.
const POSTGRES_APPS: &str = "CREATE TABLE apps (
    id varchar(255) PRIMARY KEY,
    \"key\" varchar(255) NOT NULL,
    secret varchar(255) NOT NULL,
    max_connections integer NOT NULL,
    enable_client_messages smallint NOT NULL,
    \"enabled\" smallint NOT NULL,
    max_backend_events_per_sec integer NOT NULL,
    max_client_events_per_sec integer NOT NULL,
    max_read_req_per_sec integer NOT NULL,
    webhooks json,
    max_presence_members_per_channel integer DEFAULT NULL,
    max_presence_member_size_in_kb integer DEFAULT NULL,
    max_channel_name_length integer DEFAULT NULL,
    max_event_channels_at_once integer DEFAULT NULL,
    max_event_name_length integer DEFAULT NULL,
    max_event_payload_in_kb integer DEFAULT NULL,
    max_event_batch_size integer DEFAULT NULL,
    enable_user_authentication smallint NOT NULL,
    owner_note text,
    created_at timestamptz NOT NULL DEFAULT now()
)";

/// The rows both databases get, in Soketi's column order; `NULL` is SQL NULL.
const COLUMNS: &str = "id, `key`, secret, max_connections, enable_client_messages, enabled, \
    max_backend_events_per_sec, max_client_events_per_sec, max_read_req_per_sec, webhooks, \
    max_presence_members_per_channel, max_presence_member_size_in_kb, max_channel_name_length, \
    max_event_channels_at_once, max_event_name_length, max_event_payload_in_kb, \
    max_event_batch_size, enable_user_authentication, owner_note";

const ROWS: &[&str] = &[
    // Limits left NULL: the server-level defaults apply.
    "'app-null', 'key-null', 'secret-null', 100, 0, 1, 10, 5, 20, NULL, \
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL",
    // -1 everywhere Soketi reads it as unlimited; 0 connections is unlimited too.
    "'app-unlimited', 'key-unlimited', 'secret-unlimited', 0, 0, 1, -1, -1, -1, NULL, \
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 'no limits'",
    // Booleans as 0/1, and every limit set.
    "'app-flags', 'key-flags', 'secret-flags', -1, 1, 0, -1, 0, -1, NULL, \
     50, 3, 100, 20, 50, 64, 5, 1, NULL",
    // Webhooks as JSON text.
    "'app-hooks', 'key-hooks', 'secret-hooks', -1, 0, 1, -1, -1, -1, \
     '[{\"url\": \"http://127.0.0.1:9/hook\", \"event_types\": [\"channel_occupied\", \"member_added\"]}]', \
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 'owner: ops'",
    // An empty secret: a bad row.
    "'app-bad', 'key-bad', '', -1, 0, 1, -1, -1, -1, NULL, \
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL",
];

/// The same apps as `ROWS`, written as `appManager.array.apps` entries.
fn configured_apps() -> Vec<(&'static str, Value)> {
    vec![
        (
            "key-null",
            json!({"id": "app-null", "key": "key-null", "secret": "secret-null",
                "maxConnections": 100, "enableClientMessages": false, "enabled": true,
                "maxBackendEventsPerSecond": 10, "maxClientEventsPerSecond": 5,
                "maxReadRequestsPerSecond": 20}),
        ),
        (
            "key-unlimited",
            json!({"id": "app-unlimited", "key": "key-unlimited", "secret": "secret-unlimited"}),
        ),
        (
            "key-flags",
            json!({"id": "app-flags", "key": "key-flags", "secret": "secret-flags",
                "enableClientMessages": true, "enabled": false, "enableUserAuthentication": true,
                "maxClientEventsPerSecond": 0,
                "maxPresenceMembersPerChannel": 50, "maxPresenceMemberSizeInKb": 3,
                "maxChannelNameLength": 100, "maxEventChannelsAtOnce": 20,
                "maxEventNameLength": 50, "maxEventPayloadInKb": 64, "maxEventBatchSize": 5}),
        ),
        (
            "key-hooks",
            json!({"id": "app-hooks", "key": "key-hooks", "secret": "secret-hooks",
                "webhooks": [{"url": "http://127.0.0.1:9/hook",
                    "event_types": ["channel_occupied", "member_added"]}]}),
        ),
    ]
}

/// An app as the array driver reads it, with the same server-level environment.
fn as_configured(app: &Value, env: &[(&str, String)]) -> AppConfig {
    let file = json!({"appManager.array.apps": [app]}).to_string();
    let config = load(Some(&file), env);
    config.apps[0].clone()
}

fn load(file: Option<&str>, env: &[(&str, String)]) -> Config {
    let lookup = |name: &str| env.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
    Config::from_sources(file, &lookup).unwrap_or_else(|e| panic!("{e}"))
}

fn open(env: &[(&str, String)]) -> Box<dyn AppSource> {
    source::open(&load(None, env)).unwrap_or_else(|| panic!("no source for {env:?}"))
}

fn found(source: &mut dyn AppSource, by: Lookup) -> AppConfig {
    match source.find(&by) {
        Ok(Some(app)) => app,
        other => panic!("{} {by:?}: {other:?}", source.name()),
    }
}

/// Server-level limits the NULL columns must fall back to.
fn server_limits() -> Vec<(&'static str, String)> {
    vec![
        ("SOKETI_PRESENCE_MAX_MEMBERS", "7".to_owned()),
        ("SOKETI_EVENT_MAX_BATCH_SIZE", "4".to_owned()),
    ]
}

/// Every row by key and by id equals its configured twin; missing and odd lookups find
/// nothing; the bad row is a `BadRow` and does not break the source.
fn check_soketi_table(mut env: Vec<(&'static str, String)>) {
    env.extend(server_limits());
    let mut source = open(&env);
    for (key, app) in configured_apps() {
        let want = as_configured(&app, &server_limits());
        let id = app["id"].as_str().unwrap_or_default().to_owned();
        assert_eq!(
            found(&mut *source, Lookup::Key(key.to_owned())),
            want,
            "{key}"
        );
        assert_eq!(found(&mut *source, Lookup::Id(id)), want, "{key} by id");
    }
    let null = found(&mut *source, Lookup::Key("key-null".into()));
    assert_eq!(
        (
            null.max_presence_members_per_channel,
            null.max_event_batch_size
        ),
        (7, 4),
        "NULL limits take the server's"
    );
    for by in [
        Lookup::Key("missing".into()),
        Lookup::Id("missing".into()),
        Lookup::Key("app-null".into()),
        Lookup::Key("key-null' OR '1'='1".into()),
        // Keys and ids are exact, whatever the column's collation.
        Lookup::Key("KEY-NULL".into()),
        Lookup::Key("key-null ".into()),
        Lookup::Id("APP-NULL".into()),
        Lookup::Key(String::new()),
    ] {
        let result = source.find(&by);
        assert!(matches!(result, Ok(None)), "{by:?}: {result:?}");
    }
    let bad = source.find(&Lookup::Key("key-bad".into()));
    match bad {
        Err(SourceError::BadRow(text)) => {
            assert!(
                text.contains("apps[key=key-bad].secret is required"),
                "{text}"
            )
        }
        other => panic!("bad row: {other:?}"),
    }
    found(&mut *source, Lookup::Key("key-flags".into()));
}

/// A restart between lookups goes unnoticed; a stopped database is `Unavailable` quickly,
/// a frozen one within the query timeout; the same source finds the app again once it is
/// back, without being recreated.
fn check_outages(source: &mut dyn AppSource, outage: &mut dyn FnMut(Outage)) {
    let by = Lookup::Key("key-null".into());
    found(source, by.clone());
    // A restart while idle closes the kept connection; the next lookup opens another.
    outage(Outage::Restart);
    assert_eq!(
        found(source, by.clone()).id,
        "app-null",
        "after an idle restart"
    );
    let unavailable = |source: &mut dyn AppSource, what: &str| {
        let started = Instant::now();
        let result = source.find(&by);
        let took = started.elapsed();
        assert!(
            matches!(result, Err(SourceError::Unavailable(_))),
            "{what}: {result:?}"
        );
        assert!(took < Duration::from_secs(5), "{what} took {took:?}");
        took
    };

    outage(Outage::Stop);
    unavailable(source, "stopped, connection open before");
    unavailable(source, "stopped, connecting");
    outage(Outage::Restart);
    assert_eq!(found(source, by.clone()).id, "app-null", "after restart");

    outage(Outage::Pause);
    let took = unavailable(source, "frozen, connection open before");
    assert!(took >= source::QUERY_TIMEOUT / 2, "gave up after {took:?}");
    unavailable(source, "frozen, connecting");
    outage(Outage::Resume);
    assert_eq!(found(source, by).id, "app-null", "after resume");
}

#[derive(Debug, Clone, Copy)]
enum Outage {
    Stop,
    Restart,
    Pause,
    Resume,
}

fn insert_rows(sql: &dyn Fn(&str), table: &str, columns: &str) {
    for row in ROWS {
        sql(&format!("INSERT INTO {table} ({columns}) VALUES ({row})"));
    }
}

#[test]
fn mariadb_serves_soketis_apps_table() {
    let db = MariaDb::start();
    db.sql(MYSQL_APPS);
    insert_rows(&|s| db.sql(s), "apps", COLUMNS);
    check_soketi_table(db.env());
}

#[test]
fn mariadb_custom_table_and_column_types() {
    let db = MariaDb::start();
    db.sql(
        "CREATE TABLE `main`.`soketi apps` (
            `id` int NOT NULL AUTO_INCREMENT PRIMARY KEY,
            `key` varchar(64) NOT NULL UNIQUE,
            `secret` text NOT NULL,
            `enabled` boolean NULL,
            `enable_client_messages` bit(1) NOT NULL DEFAULT b'0',
            `max_connections` bigint unsigned NULL,
            `max_presence_member_size_in_kb` decimal(6,2) NULL,
            `max_event_payload_in_kb` double NULL,
            `webhooks` longtext NULL,
            `created_at` datetime NULL,
            `enable_subscription_count` tinyint(1) NOT NULL DEFAULT 0,
            `enable_watchlist_events` bit(1) NULL,
            `allowed_origins` text NULL
        )",
    );
    db.sql(
        "INSERT INTO `main`.`soketi apps` (id, `key`, secret, enabled, enable_client_messages,
            max_connections, max_presence_member_size_in_kb, max_event_payload_in_kb, webhooks,
            created_at, enable_subscription_count, enable_watchlist_events, allowed_origins)
         VALUES (41, 'typed', 's', TRUE, b'1', 250, 1.50, 12.5,
            '[{\"url\": \"http://127.0.0.1:9/a\", \"event_types\": [\"client_event\"]}]', NOW(),
            1, b'1', 'https://a.test, *.b.test')",
    );
    let mut env = db.env();
    env.push((
        "SOKETI_APP_MANAGER_MYSQL_TABLE",
        "main.soketi apps".to_owned(),
    ));
    let mut source = open(&env);
    let want = as_configured(
        &json!({"id": "41", "key": "typed", "secret": "s", "enabled": true,
            "enableClientMessages": true, "maxConnections": 250,
            "maxPresenceMemberSizeInKb": 1.5, "maxEventPayloadInKb": 12.5,
            "webhooks": [{"url": "http://127.0.0.1:9/a", "event_types": ["client_event"]}],
            "enableSubscriptionCount": true, "enableWatchlistEvents": true,
            "allowedOrigins": ["https://a.test", "*.b.test"]}),
        &[],
    );
    assert_eq!(found(&mut *source, Lookup::Key("typed".into())), want);
    assert_eq!(found(&mut *source, Lookup::Id("41".into())), want);
    assert!(matches!(
        source.find(&Lookup::Id("forty-one".into())),
        Ok(None)
    ));
    assert!(matches!(source.find(&Lookup::Id("041".into())), Ok(None)));
    assert!(matches!(
        source.find(&Lookup::Key("TYPED".into())),
        Ok(None)
    ));
    // The default table does not exist here: the query fails, and says so.
    let mut default_table = open(&db.env());
    match default_table.find(&Lookup::Key("typed".into())) {
        Err(SourceError::Unavailable(text)) => assert!(text.contains("apps"), "{text}"),
        other => panic!("missing table: {other:?}"),
    }
}

#[test]
fn mariadb_outages_are_unavailable_and_recover() {
    let mut db = MariaDb::start();
    db.sql(MYSQL_APPS);
    insert_rows(&|s| db.sql(s), "apps", COLUMNS);
    let mut source = open(&db.env());
    check_outages(&mut *source, &mut |outage| match outage {
        Outage::Stop => db.stop(),
        Outage::Restart => db.restart(),
        Outage::Pause => db.pause(),
        Outage::Resume => db.resume(),
    });
}

#[test]
fn postgres_serves_soketis_apps_table() {
    let db = Postgres::start();
    db.sql(POSTGRES_APPS);
    insert_rows(&|s| db.sql(s), "apps", &COLUMNS.replace('`', "\""));
    check_soketi_table(db.env());
}

#[test]
fn postgres_custom_table_and_column_types() {
    let db = Postgres::start();
    db.sql(
        "CREATE SCHEMA realtime;
         CREATE TABLE realtime.\"Apps\" (
            id serial PRIMARY KEY,
            \"key\" text NOT NULL UNIQUE,
            secret text NOT NULL,
            enabled boolean,
            enable_client_messages boolean NOT NULL DEFAULT false,
            max_connections bigint,
            max_client_events_per_sec smallint,
            max_presence_member_size_in_kb numeric(6,2),
            max_event_payload_in_kb double precision,
            max_event_name_length numeric,
            webhooks jsonb,
            created_at timestamptz DEFAULT now(),
            owner uuid DEFAULT '00010203-0405-0607-0809-0a0b0c0d0e0f',
            enable_subscription_count boolean NOT NULL DEFAULT false,
            enable_watchlist_events smallint,
            allowed_origins text
         );
         INSERT INTO realtime.\"Apps\" (id, \"key\", secret, enabled, enable_client_messages,
            max_connections, max_client_events_per_sec, max_presence_member_size_in_kb,
            max_event_payload_in_kb, max_event_name_length, webhooks, enable_subscription_count,
            enable_watchlist_events, allowed_origins)
         VALUES (41, 'typed', 's', true, true, 250, 3, 1.50, 12.5, 80,
            '[{\"url\": \"http://127.0.0.1:9/a\", \"event_types\": [\"client_event\"]}]',
            true, 1, '[\"https://a.test\", \"*.b.test\"]');
         CREATE TABLE realtime.by_uuid (id uuid PRIMARY KEY, \"key\" text, secret text);
         INSERT INTO realtime.by_uuid VALUES ('00010203-0405-0607-0809-0a0b0c0d0e0f', 'u', 's');",
    );
    let mut env = db.env();
    env.push((
        "SOKETI_APP_MANAGER_POSTGRES_TABLE",
        "realtime.Apps".to_owned(),
    ));
    let mut source = open(&env);
    let want = as_configured(
        &json!({"id": "41", "key": "typed", "secret": "s", "enabled": true,
            "enableClientMessages": true, "maxConnections": 250, "maxClientEventsPerSecond": 3,
            "maxPresenceMemberSizeInKb": 1.5, "maxEventPayloadInKb": 12.5,
            "maxEventNameLength": 80,
            "webhooks": [{"url": "http://127.0.0.1:9/a", "event_types": ["client_event"]}],
            "enableSubscriptionCount": true, "enableWatchlistEvents": true,
            "allowedOrigins": ["https://a.test", "*.b.test"]}),
        &[],
    );
    assert_eq!(found(&mut *source, Lookup::Key("typed".into())), want);
    // An integer id column: the id is sent as a number; one that is not a number is no row.
    assert_eq!(found(&mut *source, Lookup::Id("41".into())), want);
    assert!(matches!(
        source.find(&Lookup::Id("forty-one".into())),
        Ok(None)
    ));
    assert!(matches!(
        source.find(&Lookup::Id("99999999999".into())),
        Ok(None)
    ));

    // A uuid id column is compared as text.
    let mut env = db.env();
    env.push((
        "SOKETI_APP_MANAGER_POSTGRES_TABLE",
        "realtime.by_uuid".to_owned(),
    ));
    let mut by_uuid = open(&env);
    let app = found(
        &mut *by_uuid,
        Lookup::Id("00010203-0405-0607-0809-0a0b0c0d0e0f".into()),
    );
    assert_eq!(
        (app.id.as_str(), app.key.as_str()),
        ("00010203-0405-0607-0809-0a0b0c0d0e0f", "u")
    );
    assert!(matches!(
        by_uuid.find(&Lookup::Id("not-a-uuid".into())),
        Ok(None)
    ));

    // The default table does not exist here: the query fails, and says so.
    let mut default_table = open(&db.env());
    match default_table.find(&Lookup::Key("typed".into())) {
        Err(SourceError::Unavailable(text)) => assert!(text.contains("apps"), "{text}"),
        other => panic!("missing table: {other:?}"),
    }
}

#[test]
fn postgres_outages_are_unavailable_and_recover() {
    let mut db = Postgres::start();
    db.sql(POSTGRES_APPS);
    insert_rows(&|s| db.sql(s), "apps", &COLUMNS.replace('`', "\""));
    let mut source = open(&db.env());
    check_outages(&mut *source, &mut |outage| match outage {
        Outage::Stop => db.stop(),
        Outage::Restart => db.restart(),
        Outage::Pause => db.pause(),
        Outage::Resume => db.resume(),
    });
}
