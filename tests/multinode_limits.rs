//! Cluster-wide limits over two nodes and one Redis: an app's `max_connections` holds for
//! the cluster (4004 on whichever node the connection over it lands, a slot freed by a
//! close reusable anywhere, a SIGKILL'd node's slots freed after the dead-node timeout),
//! and with `SOKETI_RATE_LIMITER_DRIVER=redis` the per-second REST limits count over
//! the cluster instead of per node.

mod common;

use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::redis_server::RedisServer;
use common::rest::{post, signed_get};
use common::{Server, Ws, start, wait_linked};
use serde_json::json;

fn node(redis: &RedisServer, extra: &[(&str, &str)]) -> Server {
    let port = redis.port.to_string();
    let mut env = vec![
        ("SOKETI_ADAPTER_DRIVER", "redis"),
        ("SOKETI_DB_REDIS_PORT", port.as_str()),
        ("SOKETI_METRICS_ENABLED", "true"),
    ];
    env.extend_from_slice(extra);
    start(2, &env)
}

/// Opens a connection: `Ok(socket)` when established, `Err(code)` when refused.
fn connect(port: u16) -> Result<Ws, u64> {
    let mut ws = Ws::connect(port, "/app/app-key?protocol=7");
    let first = ws.read_json();
    if first["event"] == "pusher:connection_established" {
        return Ok(ws);
    }
    assert_eq!(first["event"], "pusher:error", "{first}");
    let code = first["data"]["code"].as_u64().unwrap_or(0);
    let close = ws.read_until_closed().and_then(|f| f.close_code());
    assert_eq!(close, Some(code as u16), "the refusal closes with its code");
    Err(code)
}

/// The value of an unlabelled sample in `server`'s Prometheus scrape.
fn metric(server: &Server, name: &str) -> f64 {
    let port = server.metrics_port.expect("metrics");
    let (_, body) = common::http(port, "GET", "/metrics", &[], b"").expect("scrape");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

#[test]
fn the_connection_quota_holds_over_the_cluster() {
    let redis = RedisServer::start();
    let quota = [("SOKETI_DEFAULT_APP_MAX_CONNS", "3")];
    let a = node(&redis, &quota);
    let b = node(&redis, &quota);
    wait_linked(&a, &b);

    let a1 = connect(a.port).expect("a1");
    let _a2 = connect(a.port).expect("a2");
    let _b1 = connect(b.port).expect("b1");
    // The cluster is full: refused on either node.
    assert_eq!(connect(a.port).err(), Some(4004), "4th connection on A");
    assert_eq!(connect(b.port).err(), Some(4004), "4th connection on B");
    // A slot freed on A is taken on B.
    drop(a1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let b2 = loop {
        match connect(b.port) {
            Ok(ws) => break ws,
            Err(code) => {
                assert_eq!(code, 4004);
                assert!(Instant::now() < deadline, "the freed slot never reached B");
                thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(connect(a.port).err(), Some(4004), "full again");
    assert!(metric(&a, "corecast_limits_lease_refused_total") >= 1.0);

    // B dies without goodbye, holding two slots: they come back within the dead-node
    // timeout (10 s, heartbeats every 2 s).
    drop(b2);
    b.signal(libc::SIGKILL);
    let killed = Instant::now();
    let mut reopened = Vec::new();
    while reopened.len() < 2 {
        match connect(a.port) {
            Ok(ws) => reopened.push(ws),
            Err(code) => {
                assert_eq!(code, 4004);
                assert!(
                    killed.elapsed() < Duration::from_secs(20),
                    "the dead node's slots were not freed"
                );
                thread::sleep(Duration::from_millis(200));
            }
        }
    }
    eprintln!(
        "the dead node's slots were free again after {:?}",
        killed.elapsed()
    );
    // 3 on A now: the quota holds.
    assert_eq!(
        connect(a.port).err(),
        Some(4004),
        "the quota after the reap"
    );
}

/// Unix milliseconds now.
fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis()
}

/// Publishes as fast as two threads can, one per node, from just after a second starts
/// until just before the third one after it ends: exactly three rate windows. Returns
/// the accepted publishes per node.
fn publish_for_three_seconds(a: &Server, b: &Server) -> (usize, usize) {
    let start = (now_ms() / 1000 + 1) * 1000;
    let end = start + 2950;
    while now_ms() < start + 10 {
        thread::sleep(Duration::from_millis(1));
    }
    let run = |port: u16| {
        thread::spawn(move || {
            let body = json!({"name": "e", "channel": "c", "data": "x"}).to_string();
            let mut accepted = 0;
            while now_ms() < end {
                match post(port, "/apps/app-id/events", &body).0 {
                    200 => accepted += 1,
                    429 => {}
                    other => panic!("publish on :{port}: {other}"),
                }
            }
            accepted
        })
    };
    let (ta, tb) = (run(a.port), run(b.port));
    (ta.join().expect("thread A"), tb.join().expect("thread B"))
}

#[test]
fn with_the_redis_rate_limiter_backend_events_count_over_the_cluster() {
    let redis = RedisServer::start();
    let env = [
        ("SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC", "20"),
        ("SOKETI_RATE_LIMITER_DRIVER", "redis"),
    ];
    let a = node(&redis, &env);
    let b = node(&redis, &env);
    wait_linked(&a, &b);
    let (on_a, on_b) = publish_for_three_seconds(&a, &b);
    eprintln!("redis rate limiter: accepted {on_a} on A and {on_b} on B in 3 windows of 20");
    let total = on_a + on_b;
    // Never past the limit; at most the tokens a node holds unused when a second ends
    // (half the free rest, at most a tenth of the limit) are lost to the other.
    assert!(
        total <= 60,
        "{total} accepted in 3 s against 20/s over the cluster"
    );
    assert!(total >= 48, "only {total} accepted in 3 s against 20/s");
    assert!(on_a > 0 && on_b > 0, "both nodes publish: {on_a} / {on_b}");
    // Far below the limit a node asks Redis once per several publishes, not each one.
    let asked = metric(&a, "corecast_limits_lease_requests_total");
    assert!(
        asked < on_a as f64,
        "{asked} lease requests for {on_a} publishes on A"
    );
}

#[test]
fn with_the_local_rate_limiter_each_node_counts_alone() {
    let redis = RedisServer::start();
    let env = [("SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC", "20")];
    let a = node(&redis, &env);
    let b = node(&redis, &env);
    wait_linked(&a, &b);
    let (on_a, on_b) = publish_for_three_seconds(&a, &b);
    eprintln!("local rate limiter: accepted {on_a} on A and {on_b} on B in 3 windows of 20");
    assert_eq!((on_a, on_b), (60, 60), "20 per second on each node");
}

#[test]
fn with_the_redis_rate_limiter_read_requests_count_over_the_cluster() {
    let redis = RedisServer::start();
    let env = [
        ("SOKETI_DEFAULT_APP_MAX_READ_REQ_PER_SEC", "6"),
        ("SOKETI_RATE_LIMITER_DRIVER", "redis"),
    ];
    let a = node(&redis, &env);
    let b = node(&redis, &env);
    wait_linked(&a, &b);
    // Twelve reads alternating over the nodes inside one second: six pass.
    let start = (now_ms() / 1000 + 1) * 1000;
    while now_ms() < start + 10 {
        thread::sleep(Duration::from_millis(1));
    }
    let statuses: Vec<u16> = (0..12)
        .map(|i| {
            let port = if i % 2 == 0 { a.port } else { b.port };
            signed_get(port, "/apps/app-id/channels", &[]).0
        })
        .collect();
    assert!(now_ms() < start + 1000, "the reads took over a second");
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(ok, 6, "{statuses:?}");
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 429),
        "{statuses:?}"
    );
}

#[test]
fn during_a_redis_outage_a_node_keeps_to_its_share_of_the_quota() {
    let mut redis = RedisServer::start();
    let quota = [("SOKETI_DEFAULT_APP_MAX_CONNS", "10")];
    let a = node(&redis, &quota);
    let b = node(&redis, &quota);
    wait_linked(&a, &b);
    let mut open: Vec<Ws> = (0..3)
        .map(|i| connect(a.port).unwrap_or_else(|c| panic!("a{i}: {c}")))
        .collect();

    redis.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&a, "corecast_redis_up") != 0.0 {
        assert!(Instant::now() < deadline, "node A never saw Redis go");
        thread::sleep(Duration::from_millis(100));
    }
    // Past the slots it holds (3 open and at most a tenth of the quota unused) the node
    // refuses, although the cluster has room: nobody can tell it otherwise.
    let mut accepted = 0;
    let refused = loop {
        match connect(a.port) {
            Ok(ws) => {
                accepted += 1;
                open.push(ws);
                assert!(
                    accepted <= 1,
                    "{accepted} connections past the node's share"
                );
            }
            Err(code) => break code,
        }
    };
    assert_eq!(refused, 4004);
    assert!(metric(&a, "corecast_limits_redis_unavailable_total") >= 1.0);
    assert_eq!(
        a.lines_with("connection quotas hold at this node's share")
            .len(),
        1
    );

    // Redis back: the node writes what it holds again and leases more.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let again = loop {
        if let Ok(ws) = connect(a.port) {
            break ws;
        }
        assert!(
            Instant::now() < deadline,
            "no connection after Redis came back"
        );
        thread::sleep(Duration::from_millis(200));
    };
    open.push(again);
    let _b1 = connect(b.port).expect("B takes a slot too");
}
