//! Two nodes joined through a real redis-server: a publish on one node reaches
//! subscribers on both, once, in order, with `socket_id` exclusion across nodes.

mod common;

use std::time::Duration;

use common::redis_server::RedisServer;
use common::rest::post;
use common::{Ws, start};
use serde_json::json;

fn node(redis: &RedisServer) -> common::Server {
    let port = redis.port.to_string();
    start(
        2,
        &[
            ("SOKETI_ADAPTER_DRIVER", "redis"),
            ("SOKETI_DB_REDIS_PORT", &port),
            ("SOKETI_DB_REDIS_HOST", "127.0.0.1"),
        ],
    )
}

/// Waits until a publish on `a` reaches a subscriber on `b` (both bridges subscribed).
fn wait_linked(a: &common::Server, b: &common::Server) {
    let (mut probe, _) = Ws::pusher(b.port);
    probe.subscribe("link-probe");
    probe
        .stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    for _ in 0..50 {
        let body = json!({"name": "probe", "channel": "link-probe", "data": "x"}).to_string();
        assert_eq!(post(a.port, "/apps/app-id/events", &body).0, 200);
        if probe.try_read_frame().is_ok() {
            return;
        }
    }
    panic!("nodes never linked through redis");
}

#[test]
fn publish_on_one_node_reaches_subscribers_on_both_once_and_in_order() {
    let redis = RedisServer::start();
    let a = node(&redis);
    let b = node(&redis);
    wait_linked(&a, &b);
    wait_linked(&b, &a);
    let mut subs: Vec<(Ws, String)> = Vec::new();
    for server in [&a, &b, &a, &b, &a, &b] {
        let (mut ws, id) = Ws::pusher(server.port);
        ws.subscribe("orders");
        subs.push((ws, id));
    }
    let excluded = subs[1].1.clone();
    let body = json!({"name": "skip", "channel": "orders", "data": "x", "socket_id": excluded})
        .to_string();
    assert_eq!(post(a.port, "/apps/app-id/events", &body).0, 200);
    for n in 0..30 {
        let body = json!({"name": "seq", "channel": "orders", "data": n.to_string()}).to_string();
        assert_eq!(post(a.port, "/apps/app-id/events", &body).0, 200);
    }
    for (i, (ws, _)) in subs.iter_mut().enumerate() {
        if i != 1 {
            assert_eq!(ws.read_json()["event"], "skip", "subscriber {i}");
        }
        for n in 0..30 {
            let ev = ws.read_json();
            assert_eq!(
                (ev["event"].as_str(), ev["data"].as_str()),
                (Some("seq"), Some(n.to_string().as_str())),
                "subscriber {i}"
            );
        }
        ws.stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        assert!(
            ws.try_read_frame().is_err(),
            "subscriber {i} got a duplicate"
        );
    }
}
