//! The cost of cluster-wide limits: connections per second and REST publishes per second
//! over two nodes on one Redis, with the limits off (no quota, per-node rate limiter) and
//! on (`max_connections` and `max_backend_events_per_sec` far above the load, so every
//! request is counted over the cluster but none refused; `SOKETI_RATE_LIMITER_DRIVER=redis`).
//!
//! `cargo bench --bench cluster_limits -- [--runs N] [--connections N] [--publishes N] [--threads N]`
//!
//! Each run starts a throwaway redis-server and, per mode, two fresh 2-shard nodes. The
//! connections are opened from `--threads` client threads, half on each node, and held
//! until the last one is established; the publishes are signed REST calls, half to each
//! node. Prints the median of each figure over the runs and a `RESULT {json}` line.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use common::redis_server::RedisServer;
use common::{Server, Ws};

struct Opts {
    runs: usize,
    connections: usize,
    publishes: usize,
    threads: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        runs: 3,
        connections: 4000,
        publishes: 4000,
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
            "--runs" => o.runs = value(i),
            "--connections" => o.connections = value(i),
            "--publishes" => o.publishes = value(i),
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

/// Runs `work(i)` for i in 0..n on `threads` threads; returns the rate per second.
fn rate(
    n: usize,
    threads: usize,
    work: impl Fn(usize) -> Option<Ws> + Send + Sync + 'static,
) -> f64 {
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (work, next) = (Arc::clone(&work), Arc::clone(&next));
            std::thread::spawn(move || {
                let mut held = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return held;
                    }
                    held.extend(work(i));
                }
            })
        })
        .collect();
    let held: Vec<Vec<Ws>> = workers
        .into_iter()
        .map(|w| w.join().expect("client thread"))
        .collect();
    let per_sec = n as f64 / started.elapsed().as_secs_f64();
    drop(held);
    per_sec
}

fn measure(a: &Server, b: &Server, o: &Opts) -> (f64, f64) {
    let ports = [a.port, b.port];
    let connections = rate(o.connections, o.threads, move |i| {
        let mut ws = Ws::connect(
            ports[i % 2],
            "/app/app-key?protocol=7&client=js&version=8.4.0",
        );
        let hello = ws.read_json();
        assert_eq!(hello["event"], "pusher:connection_established", "{hello}");
        Some(ws)
    });
    let body = r#"{"name":"e","channel":"c","data":"x"}"#;
    let publishes = rate(o.publishes, o.threads, move |i| {
        let (status, reply) = common::rest::post(ports[i % 2], "/apps/app-id/events", body);
        assert_eq!(status, 200, "{reply}");
        None
    });
    (connections, publishes)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let o = opts();
    let mut figures: Vec<(&str, Vec<f64>)> = vec![
        ("connections_off", Vec::new()),
        ("connections_on", Vec::new()),
        ("publishes_off", Vec::new()),
        ("publishes_on", Vec::new()),
    ];
    for run in 0..o.runs {
        let redis = RedisServer::start();
        let port = redis.port.to_string();
        let base = [
            ("SOKETI_ADAPTER_DRIVER", "redis"),
            ("SOKETI_DB_REDIS_PORT", port.as_str()),
        ];
        let on = [
            ("SOKETI_DEFAULT_APP_MAX_CONNS", "1000000"),
            ("SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC", "1000000"),
            ("SOKETI_RATE_LIMITER_DRIVER", "redis"),
        ];
        for (mode, extra) in [(0, &[][..]), (1, &on[..])] {
            let env: Vec<(&str, &str)> = base.iter().chain(extra).copied().collect();
            let a = common::start(2, &env);
            let b = common::start(2, &env);
            common::wait_linked(&a, &b);
            let (c, p) = measure(&a, &b, &o);
            figures[mode].1.push(c);
            figures[2 + mode].1.push(p);
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
        "per second, median of {} runs (2 nodes x 2 shards, one Redis, {} client threads):",
        o.runs, o.threads
    );
    let mut json = serde_json::Map::new();
    for (name, v) in figures {
        let m = median(v);
        println!("  {name:<16} {m:>8.0}");
        json.insert(name.to_owned(), serde_json::json!(m.round()));
    }
    println!("RESULT {}", serde_json::Value::Object(json));
}
