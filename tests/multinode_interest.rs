//! Interest routing over a real redis-server: a node receives from Redis only the events
//! of channels it has subscribers for. Three nodes, subscribers on B only, publishes on A:
//! node C receives nothing (and everything when interest routing is off). An event
//! published right after a client saw `subscription_succeeded` on another node reaches
//! it; a quick leave and rejoin gets each later event once; a cache channel's last event
//! reaches a node that subscribes after it was published.

mod common;

use std::time::Duration;

use common::redis_server::RedisServer;
use common::rest::post;
use common::{Server, Ws, frames_for, http, start, wait_event, wait_linked};
use serde_json::json;

fn node(redis: &RedisServer, interest: bool) -> Server {
    node_via(redis.port, interest)
}

fn node_via(redis_port: u16, interest: bool) -> Server {
    let port = redis_port.to_string();
    start(
        2,
        &[
            ("SOKETI_ADAPTER_DRIVER", "redis"),
            ("SOKETI_DB_REDIS_HOST", "127.0.0.1"),
            ("SOKETI_DB_REDIS_PORT", &port),
            ("SOKETI_METRICS_ENABLED", "true"),
            (
                "CORECAST_REDIS_INTEREST",
                if interest { "true" } else { "false" },
            ),
        ],
    )
}

/// An unlabelled counter from the node's `/metrics`.
fn metric(s: &Server, name: &str) -> f64 {
    let port = s.metrics_port.expect("metrics enabled");
    let (_, body) = http(port, "GET", "/metrics", &[], b"").expect("scrape");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not exported"))
}

fn publish(s: &Server, channel: &str, name: &str) {
    let body = json!({"name": name, "channel": channel, "data": name}).to_string();
    let (status, reply) = post(s.port, "/apps/app-id/events", &body);
    assert_eq!(status, 200, "{reply}");
}

/// Messages and bytes node C took from Redis while A published 100 events to channels
/// that only B has subscribers for.
fn traffic_to_a_bystander(interest: bool) -> (f64, f64) {
    let redis = RedisServer::start();
    let (a, b, c) = (
        node(&redis, interest),
        node(&redis, interest),
        node(&redis, interest),
    );
    wait_linked(&a, &b);
    wait_linked(&a, &c);
    let mut subs: Vec<Ws> = (0..10)
        .map(|i| {
            let (mut ws, _) = Ws::pusher(b.port);
            ws.subscribe(&format!("only-b-{i}"));
            ws
        })
        .collect();
    // C's probe subscription from wait_linked is gone; let its unsubscribe settle.
    std::thread::sleep(Duration::from_millis(300));
    let (msgs, bytes) = (
        metric(&c, "corecast_redis_received_total"),
        metric(&c, "corecast_redis_received_bytes_total"),
    );
    for n in 0..100 {
        publish(&a, &format!("only-b-{}", n % 10), &format!("e{n}"));
    }
    for (i, ws) in subs.iter_mut().enumerate() {
        for n in (i..100).step_by(10) {
            let want = format!("e{n}");
            let got = wait_event(ws, Duration::from_secs(5), |v| v["event"] == want.as_str());
            assert!(got.is_ok(), "subscriber {i} on B got {want}: {got:?}");
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    (
        metric(&c, "corecast_redis_received_total") - msgs,
        metric(&c, "corecast_redis_received_bytes_total") - bytes,
    )
}

#[test]
fn a_node_without_subscribers_receives_none_of_their_events() {
    let (msgs, bytes) = traffic_to_a_bystander(true);
    assert_eq!(
        (msgs, bytes),
        (0.0, 0.0),
        "node C took messages for B's channels"
    );
}

#[test]
fn without_interest_routing_every_node_receives_every_event() {
    let (msgs, bytes) = traffic_to_a_bystander(false);
    assert_eq!(
        msgs, 100.0,
        "node C gets all 100 events over the broadcast channel"
    );
    assert!(bytes >= 100.0 * 60.0, "{bytes} bytes for 100 events");
}

/// A TCP proxy to `target` that holds every chunk for `delay` in both directions: a slow
/// network between a node and Redis. Returns its port.
fn delaying_proxy(target: u16, delay: Duration) -> u16 {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let pipe = move |mut from: TcpStream, mut to: TcpStream| {
        let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
        std::thread::spawn(move || {
            for (at, chunk) in rx {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                if to.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0
                    || tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                {
                    return;
                }
            }
        });
    };
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            let (c2, s2) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            pipe(client, server);
            pipe(s2, c2);
        }
    });
    port
}

#[test]
fn an_event_published_right_after_subscription_succeeded_is_delivered() {
    let redis = RedisServer::start();
    // Node B reaches Redis over a slow link: its SUBSCRIBE lands 150 ms after it is
    // sent, so a confirmation sent before Redis has it would let the event pass by.
    let slow = delaying_proxy(redis.port, Duration::from_millis(150));
    let (a, b) = (node(&redis, true), node_via(slow, true));
    wait_linked(&a, &b);
    for i in 0..10 {
        let channel = format!("fresh-{i}");
        let (mut ws, _) = Ws::pusher(b.port);
        ws.subscribe(&channel);
        publish(&a, &channel, "first");
        let got = wait_event(&mut ws, Duration::from_secs(5), |v| v["event"] == "first");
        assert!(
            got.is_ok(),
            "{channel}: the first event after subscribing: {got:?}"
        );
    }
}

#[test]
fn leaving_and_rejoining_at_once_gets_each_later_event_once() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, true), node(&redis, true));
    wait_linked(&a, &b);
    let (mut ws, _) = Ws::pusher(b.port);
    for round in 0..10 {
        let channel = format!("churn-{round}");
        ws.subscribe(&channel);
        ws.send_json(json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}));
        ws.subscribe(&channel);
        publish(&a, &channel, "after");
        let frames = frames_for(&mut ws, Duration::from_millis(700));
        let seen = frames.iter().filter(|v| v["event"] == "after").count();
        assert_eq!(seen, 1, "round {round}: {frames:?}");
    }
}

#[test]
fn a_cache_channels_last_event_reaches_a_node_that_subscribes_later() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, true), node(&redis, true));
    wait_linked(&a, &b);
    publish(&a, "cache-news", "kept");
    let (mut ws, _) = Ws::pusher(b.port);
    ws.subscribe("cache-news");
    let got = wait_event(&mut ws, Duration::from_secs(5), |v| v["event"] == "kept");
    assert!(got.is_ok(), "the last event replayed on node B: {got:?}");
}
