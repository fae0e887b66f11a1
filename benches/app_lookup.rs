//! Connections per second by app manager: the array manager, and apps in MariaDB and
//! PostgreSQL, first seen (every key a database round trip) and cached.
//!
//! `cargo bench --bench app_lookup -- [--apps N] [--runs N] [--threads N]`
//!
//! Each run starts a throwaway MariaDB and PostgreSQL (as the tests do), fills Soketi's
//! `apps` table with `--apps` apps, then for each manager starts a fresh 2-shard server
//! and opens one WebSocket per app key from `--threads` client threads: the time from the
//! first connect to the last `connection_established` gives connections per second. The
//! database servers run the whole time, so "first seen" pays one query per key and
//! "cached" none. Prints the median of each figure over the runs and a `RESULT {json}` line.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/mariadb.rs"]
mod mariadb;
#[path = "../tests/common/postgres.rs"]
mod postgres;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use common::Ws;

struct Opts {
    apps: usize,
    runs: usize,
    threads: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        apps: 1000,
        runs: 3,
        threads: 8,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = |i: usize| -> usize {
            args.get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{} takes a number", args[i]))
        };
        match args[i].as_str() {
            "--apps" => o.apps = value(i),
            "--runs" => o.runs = value(i),
            "--threads" => o.threads = value(i),
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown option {other}; see the file's header"),
        }
        i += 2;
    }
    o
}

/// Opens one connection per key and waits for `connection_established`; connections/s.
fn connect_all(port: u16, keys: &[String], threads: usize) -> f64 {
    let keys = Arc::new(keys.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (keys, next) = (Arc::clone(&keys), Arc::clone(&next));
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(key) = keys.get(i) else { return };
                    let mut ws = Ws::connect(
                        port,
                        &format!("/app/{key}?protocol=7&client=js&version=8.4.0"),
                    );
                    let hello = ws.read_json();
                    assert_eq!(
                        hello["event"], "pusher:connection_established",
                        "{key}: {hello}"
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client thread");
    }
    keys.len() as f64 / started.elapsed().as_secs_f64()
}

fn fill(sql: &dyn Fn(&str), key_column: &str, apps: usize) {
    let rows: Vec<String> = (0..apps)
        .map(|i| format!("('a{i}', 'k{i}', 's{i}', -1, 0, 1, -1, -1, -1, 0)"))
        .collect();
    sql(&format!(
        "INSERT INTO apps (id, {key_column}, secret, max_connections, enable_client_messages, \
         enabled, max_backend_events_per_sec, max_client_events_per_sec, max_read_req_per_sec, \
         enable_user_authentication) VALUES {}",
        rows.join(", ")
    ));
}

const TABLE: &str = "apps (id varchar(255) PRIMARY KEY, KEYCOL varchar(255) NOT NULL, \
    secret varchar(255) NOT NULL, max_connections integer NOT NULL, \
    enable_client_messages smallint NOT NULL, enabled smallint NOT NULL, \
    max_backend_events_per_sec integer NOT NULL, max_client_events_per_sec integer NOT NULL, \
    max_read_req_per_sec integer NOT NULL, webhooks json, \
    enable_user_authentication smallint NOT NULL)";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let o = opts();
    let keys: Vec<String> = (0..o.apps).map(|i| format!("k{i}")).collect();
    let default_keys: Vec<String> = (0..o.apps).map(|_| "app-key".to_owned()).collect();
    let mut figures: Vec<(&str, Vec<f64>)> = vec![
        ("array", Vec::new()),
        ("mysql_first_seen", Vec::new()),
        ("mysql_cached", Vec::new()),
        ("postgres_first_seen", Vec::new()),
        ("postgres_cached", Vec::new()),
    ];
    for run in 0..o.runs {
        let my = mariadb::MariaDb::start();
        my.sql(&format!(
            "CREATE TABLE {}",
            TABLE.replace("KEYCOL", "`key`")
        ));
        fill(&|s| my.sql(s), "`key`", o.apps);
        let pg = postgres::Postgres::start();
        pg.sql(&format!(
            "CREATE TABLE {}",
            TABLE.replace("KEYCOL", "\"key\"")
        ));
        fill(&|s| pg.sql(s), "\"key\"", o.apps);

        let array = common::start(2, &[]);
        figures[0]
            .1
            .push(connect_all(array.port, &default_keys, o.threads));
        drop(array);
        for (i, env) in [(1, my.env()), (3, pg.env())] {
            let mut pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            pairs.push(("SOKETI_APP_MANAGER_CACHE_ENABLED", "true"));
            pairs.push(("SOKETI_APP_MANAGER_CACHE_TTL", "600"));
            let server = common::start(2, &pairs);
            figures[i]
                .1
                .push(connect_all(server.port, &keys, o.threads));
            figures[i + 1]
                .1
                .push(connect_all(server.port, &keys, o.threads));
        }
        eprintln!(
            "run {}: {}",
            run + 1,
            figures
                .iter()
                .map(|(n, v)| format!("{n} {:.0}/s", v.last().copied().unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "connections per second, median of {} runs ({} connections, {} client threads, 2 shards):",
        o.runs, o.apps, o.threads
    );
    let mut json = serde_json::Map::new();
    for (name, v) in figures {
        let m = median(v);
        println!("  {name:<20} {m:>8.0}");
        json.insert(name.to_owned(), serde_json::json!(m.round()));
    }
    println!("RESULT {}", serde_json::Value::Object(json));
}
