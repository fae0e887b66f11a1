//! A server whose apps live in a real database (MariaDB and PostgreSQL, each started by
//! the test): apps in Soketi's table connect and publish, an app inserted while the server
//! runs works once its key is first seen, a rotated secret replaces the old one within the
//! cache TTL, `enabled = 0` closes the app's sockets with 4003, a deleted row closes them
//! with 4001, and while the database is stopped known apps keep working, unknown keys get a
//! retryable 4101 and REST for unknown apps 503, until it is back.

mod common;

#[path = "common/mariadb.rs"]
mod mariadb;
#[path = "common/postgres.rs"]
mod postgres;

use std::time::{Duration, Instant};

use common::rest::{hmac_hex, now, post_raw, signed_post};
use common::{Server, Ws, start, wait_event};
use serde_json::{Value, json};

/// What the test needs of a database server.
trait Db {
    fn env(&self) -> Vec<(&'static str, String)>;
    fn sql(&self, statement: &str);
    fn stop(&mut self);
    fn restart(&mut self);
    /// The table, in this database's dialect.
    fn create_table(&self);
    /// How the reserved column name `key` is written.
    fn key_column(&self) -> &'static str;
}

impl Db for mariadb::MariaDb {
    fn env(&self) -> Vec<(&'static str, String)> {
        mariadb::MariaDb::env(self)
    }
    fn sql(&self, statement: &str) {
        mariadb::MariaDb::sql(self, statement);
    }
    fn stop(&mut self) {
        mariadb::MariaDb::stop(self);
    }
    fn restart(&mut self) {
        mariadb::MariaDb::restart(self);
    }
    fn create_table(&self) {
        self.sql(
            "CREATE TABLE apps (id varchar(255) NOT NULL PRIMARY KEY, `key` varchar(255) NOT NULL, \
             secret varchar(255) NOT NULL, max_connections integer NOT NULL, \
             enable_client_messages tinyint(1) NOT NULL, enabled tinyint(1) NOT NULL, \
             max_backend_events_per_sec integer NOT NULL, max_client_events_per_sec integer NOT NULL, \
             max_read_req_per_sec integer NOT NULL, webhooks json, \
             max_presence_members_per_channel tinyint(1) NULL, enable_user_authentication tinyint(1) NOT NULL)",
        );
    }
    fn key_column(&self) -> &'static str {
        "`key`"
    }
}

impl Db for postgres::Postgres {
    fn env(&self) -> Vec<(&'static str, String)> {
        postgres::Postgres::env(self)
    }
    fn sql(&self, statement: &str) {
        postgres::Postgres::sql(self, statement);
    }
    fn stop(&mut self) {
        postgres::Postgres::stop(self);
    }
    fn restart(&mut self) {
        postgres::Postgres::restart(self);
    }
    fn create_table(&self) {
        self.sql(
            "CREATE TABLE apps (id varchar(255) PRIMARY KEY, \"key\" varchar(255) NOT NULL, \
             secret varchar(255) NOT NULL, max_connections integer NOT NULL, \
             enable_client_messages smallint NOT NULL, enabled smallint NOT NULL, \
             max_backend_events_per_sec integer NOT NULL, max_client_events_per_sec integer NOT NULL, \
             max_read_req_per_sec integer NOT NULL, webhooks json, \
             max_presence_members_per_channel integer NULL, enable_user_authentication smallint NOT NULL)",
        );
    }
    fn key_column(&self) -> &'static str {
        "\"key\""
    }
}

/// Inserts an enabled app without limits.
fn insert(db: &dyn Db, id: &str, client_messages: bool) {
    insert_with_webhooks(db, id, client_messages, "NULL");
}

/// Inserts an enabled app without limits, with `webhooks` (SQL text: `NULL` or a string).
fn insert_with_webhooks(db: &dyn Db, id: &str, client_messages: bool, webhooks: &str) {
    let key = db.key_column();
    db.sql(&format!(
        "INSERT INTO apps (id, {key}, secret, max_connections, enable_client_messages, enabled, \
         max_backend_events_per_sec, max_client_events_per_sec, max_read_req_per_sec, webhooks, \
         max_presence_members_per_channel, enable_user_authentication) \
         VALUES ('{id}', 'key-{id}', 'secret-{id}', -1, {}, 1, -1, -1, -1, {webhooks}, NULL, 0)",
        u8::from(client_messages)
    ));
}

/// A server metric (an unlabelled sample) from `/metrics`.
fn metric(s: &Server, name: &str) -> f64 {
    let port = s.metrics_port.expect("metrics enabled");
    let (_, body) = common::http(port, "GET", "/metrics", &[], b"").expect("scrape");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not exported"))
}

/// The cache TTL the server runs with, in seconds.
const TTL_SECS: u64 = 1;

fn server(db: &dyn Db) -> Server {
    let env = db.env();
    let mut pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pairs.push(("SOKETI_APP_MANAGER_CACHE_ENABLED", "true"));
    pairs.push(("SOKETI_APP_MANAGER_CACHE_TTL", "1"));
    pairs.push(("SOKETI_METRICS_ENABLED", "true"));
    start(2, &pairs)
}

/// Connects with `key`; the first frame's event, and the pusher:error code if it is one.
fn first_frame(port: u16, key: &str) -> (Ws, Value) {
    let mut ws = Ws::connect(
        port,
        &format!("/app/{key}?protocol=7&client=js&version=8.4.0"),
    );
    let first = ws.read_json();
    (ws, first)
}

fn error_code(frame: &Value) -> Option<i64> {
    (frame["event"] == "pusher:error").then(|| frame["data"]["code"].as_i64())?
}

/// Connects with `key` and asserts `connection_established`; the client and its socket id.
fn connect(port: u16, key: &str) -> (Ws, String) {
    let (ws, hello) = first_frame(port, key);
    assert_eq!(
        hello["event"], "pusher:connection_established",
        "key {key}: {hello}"
    );
    let data: Value = serde_json::from_str(hello["data"].as_str().expect("data")).expect("json");
    (
        ws,
        data["socket_id"].as_str().expect("socket id").to_owned(),
    )
}

/// Publishes `name` on `channel` for app `id`, signed with `secret`; the HTTP status.
fn publish(port: u16, id: &str, secret: &str, channel: &str, name: &str) -> u16 {
    let body = json!({"name": name, "channel": channel, "data": name}).to_string();
    let path = format!("/apps/{id}/events");
    let target = signed_post(&path, body.as_bytes(), &format!("key-{id}"), secret, now());
    post_raw(port, &target, &body).0
}

fn got(ws: &mut Ws, name: &str) -> bool {
    wait_event(ws, Duration::from_secs(5), |v| v["event"] == name).is_ok()
}

/// Polls `f` every 100 ms until it is true or `within` passes.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads until the server closes; the close code it sent.
fn close_code(ws: &mut Ws) -> Option<u16> {
    ws.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    ws.read_until_closed().and_then(|f| f.close_code())
}

fn private_auth(socket_id: &str, channel: &str, id: &str) -> String {
    format!(
        "key-{id}:{}",
        hmac_hex(&format!("secret-{id}"), &format!("{socket_id}:{channel}"))
    )
}

fn apps_from_a_database_follow_the_table(db: &mut dyn Db) {
    db.create_table();
    insert(db, "alpha", true);
    insert(db, "beta", false);
    let s = server(db);

    // Public channel and REST publish with an app from the table.
    let (mut sub, _) = connect(s.port, "key-alpha");
    sub.subscribe("news");
    assert_eq!(
        publish(s.port, "alpha", "secret-alpha", "news", "hello"),
        200
    );
    assert!(got(&mut sub, "hello"), "a table app's event is delivered");

    // Private channel and client events where the row enables them, refused where not.
    let (mut a1, id1) = connect(s.port, "key-alpha");
    let (mut a2, id2) = connect(s.port, "key-alpha");
    for (ws, id) in [(&mut a1, &id1), (&mut a2, &id2)] {
        let auth = private_auth(id, "private-room", "alpha");
        ws.send_json(
            json!({"event": "pusher:subscribe", "data": {"channel": "private-room", "auth": auth}}),
        );
        assert!(got(ws, "pusher_internal:subscription_succeeded"));
    }
    a1.send_json(json!({"event": "client-typing", "channel": "private-room", "data": {}}));
    assert!(
        got(&mut a2, "client-typing"),
        "client event relayed on alpha"
    );
    let (mut b1, idb) = connect(s.port, "key-beta");
    let auth = private_auth(&idb, "private-room", "beta");
    b1.send_json(
        json!({"event": "pusher:subscribe", "data": {"channel": "private-room", "auth": auth}}),
    );
    assert!(got(&mut b1, "pusher_internal:subscription_succeeded"));
    b1.send_json(json!({"event": "client-typing", "channel": "private-room", "data": {}}));
    let refusal = wait_event(&mut b1, Duration::from_secs(5), |v| {
        v["event"] == "pusher:error"
    })
    .expect("client event refused on beta");
    assert_eq!(refusal["data"]["code"], 4301, "{refusal}");

    // An unknown key is 4001; an app inserted now works once its key is first seen.
    let (_, refused) = first_frame(s.port, "key-gamma");
    assert_eq!(error_code(&refused), Some(4001), "{refused}");
    insert(db, "gamma", false);
    assert!(
        eventually(Duration::from_secs(5), || {
            let (_, f) = first_frame(s.port, "key-gamma");
            f["event"] == "pusher:connection_established"
        }),
        "an inserted app connects within the miss cache"
    );
    let (mut g, _) = connect(s.port, "key-gamma");
    g.subscribe("g");
    assert_eq!(
        publish(s.port, "gamma", "secret-gamma", "g", "for-gamma"),
        200
    );
    assert!(got(&mut g, "for-gamma"));

    // Many sockets that come at once with a new key are answered by one query.
    insert(db, "crowd", false);
    let queries = metric(&s, "corecast_app_manager_queries_total");
    let go = std::sync::Arc::new(std::sync::Barrier::new(20));
    let port = s.port;
    let crowd: Vec<_> = (0..20)
        .map(|_| {
            let go = std::sync::Arc::clone(&go);
            std::thread::spawn(move || {
                go.wait();
                connect(port, "key-crowd")
            })
        })
        .collect();
    for c in crowd {
        c.join().expect("client");
    }
    // One query, or two if the crowd outlasted the 1 s TTL on a loaded machine.
    let asked = metric(&s, "corecast_app_manager_queries_total") - queries;
    assert!(
        (1.0..=2.0).contains(&asked),
        "20 concurrent first connections took {asked} queries"
    );

    // The row's webhooks: a channel occupied on this app reaches its receiver, signed with
    // the app's key and secret.
    let (hook_port, received) = common::receiver::start();
    let hooks = format!(
        "'[{{\"url\": \"http://127.0.0.1:{hook_port}/hook\", \"event_types\": [\"channel_occupied\"]}}]'"
    );
    insert_with_webhooks(db, "hooked", false, &hooks);
    let (mut h, _) = connect(s.port, "key-hooked");
    h.subscribe("watched");
    assert!(
        eventually(Duration::from_secs(5), || {
            common::receiver::events(&received)
                .contains(&("channel_occupied".into(), "watched".into()))
        }),
        "the row's webhook fires: {:?}",
        common::receiver::events(&received)
    );
    let request = received.lock().expect("requests")[0].clone();
    assert_eq!(request.header("x-pusher-key"), Some("key-hooked"));
    assert_eq!(
        request.header("x-pusher-signature").map(str::to_owned),
        Some(hmac_hex(
            "secret-hooked",
            &String::from_utf8_lossy(&request.body)
        ))
    );
    drop(h);

    // A rotated secret: the old one is refused within the TTL, the new one accepted.
    db.sql("UPDATE apps SET secret = 'rotated' WHERE id = 'alpha'");
    assert!(
        eventually(Duration::from_secs(TTL_SECS + 5), || {
            publish(s.port, "alpha", "secret-alpha", "news", "old") == 401
        }),
        "the old secret is refused after the TTL"
    );
    assert_eq!(publish(s.port, "alpha", "rotated", "news", "new"), 200);
    assert!(got(&mut sub, "new"));

    // enabled = 0: open sockets are closed with 4003, new ones refused with 4003, REST 404.
    db.sql("UPDATE apps SET enabled = 0 WHERE id = 'beta'");
    assert_eq!(
        close_code(&mut b1),
        Some(4003),
        "beta's open socket is closed"
    );
    let (_, refused) = first_frame(s.port, "key-beta");
    assert_eq!(error_code(&refused), Some(4003), "{refused}");
    assert_eq!(publish(s.port, "beta", "secret-beta", "x", "x"), 404);

    // A deleted row: open sockets closed with 4001, new ones refused with 4001.
    db.sql("DELETE FROM apps WHERE id = 'gamma'");
    assert_eq!(
        close_code(&mut g),
        Some(4001),
        "gamma's open socket is closed"
    );
    let (_, refused) = first_frame(s.port, "key-gamma");
    assert_eq!(error_code(&refused), Some(4001), "{refused}");

    // The database goes away: known apps keep working, unknown keys are told to retry.
    db.stop();
    assert_eq!(publish(s.port, "alpha", "rotated", "news", "during"), 200);
    assert!(
        got(&mut sub, "during"),
        "open sockets of known apps keep receiving"
    );
    std::thread::sleep(Duration::from_millis(TTL_SECS * 1000 + 200));
    let (_, hello) = first_frame(s.port, "key-alpha");
    assert_eq!(
        hello["event"], "pusher:connection_established",
        "a known app connects from its last row: {hello}"
    );
    let (_, refused) = first_frame(s.port, "key-delta");
    assert_eq!(
        error_code(&refused),
        Some(4101),
        "retryable refusal: {refused}"
    );
    assert_eq!(publish(s.port, "delta", "secret-delta", "x", "x"), 503);

    // Back: a new app works again.
    db.restart();
    insert(db, "delta", false);
    assert!(
        eventually(Duration::from_secs(15), || {
            let (_, f) = first_frame(s.port, "key-delta");
            f["event"] == "pusher:connection_established"
        }),
        "a new app connects once the database is back"
    );
    assert_eq!(publish(s.port, "delta", "secret-delta", "x", "x"), 200);
}

#[test]
fn mysql_apps_follow_the_table_and_survive_an_outage() {
    let mut db = mariadb::MariaDb::start();
    apps_from_a_database_follow_the_table(&mut db);
}

#[test]
fn postgres_apps_follow_the_table_and_survive_an_outage() {
    let mut db = postgres::Postgres::start();
    apps_from_a_database_follow_the_table(&mut db);
}
