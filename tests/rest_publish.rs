//! `POST /apps/{id}/events` and `batch_events` over real sockets: signing, limits and
//! statuses, and delivery to subscribers on every shard.

mod common;

use std::time::Duration;

use common::rest::{KEY, SECRET, md5_hex, now, post, post_raw, signed_post};
use common::{Ws, start};
use serde_json::json;

/// Opens `n` subscribed connections; with several shards SO_REUSEPORT spreads them.
fn subscribers(port: u16, n: usize, channel: &str) -> Vec<(Ws, String)> {
    (0..n)
        .map(|_| {
            let (mut ws, id) = Ws::pusher(port);
            ws.subscribe(channel);
            (ws, id)
        })
        .collect()
}

#[test]
fn signed_publish_reaches_every_subscriber_on_both_shards_once() {
    let server = start(2, &[]);
    let mut subs = subscribers(server.port, 24, "news");
    let (mut other, _) = Ws::pusher(server.port);
    other.subscribe("sports");
    let body = json!({"name": "headline", "channel": "news", "data": "{\"n\":1}"}).to_string();
    let (status, resp) = post(server.port, "/apps/app-id/events", &body);
    assert_eq!((status, resp), (200, json!({})));
    for (ws, _) in &mut subs {
        let ev = ws.read_json();
        assert_eq!(
            ev,
            json!({"event": "headline", "channel": "news", "data": "{\"n\":1}"})
        );
    }
    // Nothing for the other channel, and nothing twice.
    for ws in std::iter::once(&mut other).chain(subs.iter_mut().map(|(w, _)| w)) {
        ws.stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        assert!(ws.try_read_frame().is_err(), "unexpected extra frame");
    }
}

#[test]
fn socket_id_is_excluded_across_shards() {
    let server = start(2, &[]);
    let mut subs = subscribers(server.port, 8, "room");
    let excluded = subs[3].1.clone();
    let body =
        json!({"name": "e", "channel": "room", "data": "x", "socket_id": excluded}).to_string();
    assert_eq!(post(server.port, "/apps/app-id/events", &body).0, 200);
    let body = json!({"name": "after", "channel": "room", "data": "y"}).to_string();
    assert_eq!(post(server.port, "/apps/app-id/events", &body).0, 200);
    for (i, (ws, _)) in subs.iter_mut().enumerate() {
        let first = ws.read_json();
        let expected = if i == 3 { "after" } else { "e" };
        assert_eq!(first["event"], expected, "subscriber {i}");
    }
}

#[test]
fn events_from_one_publisher_arrive_in_order_on_every_shard() {
    let server = start(2, &[]);
    let mut subs = subscribers(server.port, 6, "ordered");
    for n in 0..100 {
        let body = json!({"name": "seq", "channel": "ordered", "data": n.to_string()}).to_string();
        assert_eq!(post(server.port, "/apps/app-id/events", &body).0, 200);
    }
    for (ws, _) in &mut subs {
        for n in 0..100 {
            assert_eq!(ws.read_json()["data"], n.to_string());
        }
    }
}

#[test]
fn multi_channel_and_batch_publish_deliver_each_event() {
    let server = start(2, &[]);
    let mut a = subscribers(server.port, 3, "a");
    let mut b = subscribers(server.port, 3, "b");
    let body = json!({"name": "both", "channels": ["a", "b"], "data": "d"}).to_string();
    assert_eq!(post(server.port, "/apps/app-id/events", &body).0, 200);
    let batch = json!({"batch": [
        {"name": "one", "channel": "a", "data": "1"},
        {"name": "two", "channel": "b", "data": "2"},
    ]})
    .to_string();
    assert_eq!(
        post(server.port, "/apps/app-id/batch_events", &batch).0,
        200
    );
    for (ws, _) in &mut a {
        assert_eq!(ws.read_json()["event"], "both");
        assert_eq!(ws.read_json()["event"], "one");
    }
    for (ws, _) in &mut b {
        assert_eq!(ws.read_json()["event"], "both");
        assert_eq!(ws.read_json()["event"], "two");
    }
}

fn assert_error(status: u16, body: &serde_json::Value, expected: u16) {
    assert_eq!(status, expected, "{body}");
    assert!(body["error"].is_string(), "error body {body}");
    assert_eq!(body["code"], expected);
}

#[test]
fn bad_credentials_are_401() {
    let server = start(1, &[]);
    let path = "/apps/app-id/events";
    let body = json!({"name": "e", "channel": "c", "data": "x"}).to_string();
    let wrong_secret = signed_post(path, body.as_bytes(), KEY, "not-the-secret", now());
    let (s, b) = post_raw(server.port, &wrong_secret, &body);
    assert_error(s, &b, 401);
    let stale = signed_post(path, body.as_bytes(), KEY, SECRET, now() - 700);
    let (s, b) = post_raw(server.port, &stale, &body);
    assert_error(s, &b, 401);
    let wrong_key = signed_post(path, body.as_bytes(), "other-key", SECRET, now());
    let (s, b) = post_raw(server.port, &wrong_key, &body);
    assert_error(s, &b, 401);
    // Signed for one body, sent with another: the md5 no longer matches.
    let signed = signed_post(path, b"{}", KEY, SECRET, now());
    let (s, b) = post_raw(server.port, &signed, &body);
    assert_error(s, &b, 401);
    assert_ne!(md5_hex(b"{}"), md5_hex(body.as_bytes()));
    let unsigned = format!("{path}?auth_key={KEY}");
    let (s, b) = post_raw(server.port, &unsigned, &body);
    assert_error(s, &b, 401);
}

#[test]
fn unknown_app_is_404_and_bad_bodies_are_400() {
    let server = start(1, &[]);
    let (s, b) = post(server.port, "/apps/no-such-app/events", "{}");
    assert_error(s, &b, 404);
    let (s, b) = post(server.port, "/apps/app-id/events", "{not json");
    assert_error(s, &b, 400);
    let channels: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let body = json!({"name": "e", "channels": channels, "data": "x"}).to_string();
    let (s, b) = post(server.port, "/apps/app-id/events", &body);
    assert_error(s, &b, 400);
    let batch: Vec<_> = (0..11)
        .map(|i| json!({"name": "e", "channel": format!("c{i}"), "data": "x"}))
        .collect();
    let (s, b) = post(
        server.port,
        "/apps/app-id/batch_events",
        &json!({ "batch": batch }).to_string(),
    );
    assert_error(s, &b, 400);
    let body = json!({"name": "e", "channel": "bad channel", "data": "x"}).to_string();
    let (s, b) = post(server.port, "/apps/app-id/events", &body);
    assert_error(s, &b, 400);
}

#[test]
fn payload_over_limit_is_413_and_limit_is_configurable() {
    let server = start(1, &[]);
    let big = "x".repeat(101 * 1024);
    let body = json!({"name": "e", "channel": "c", "data": big}).to_string();
    let (s, b) = post(server.port, "/apps/app-id/events", &body);
    assert_error(s, &b, 413);
    let fits = json!({"name": "e", "channel": "c", "data": "x".repeat(99 * 1024)}).to_string();
    assert_eq!(post(server.port, "/apps/app-id/events", &fits).0, 200);
    let small = start(1, &[("SOKETI_EVENT_MAX_SIZE_IN_KB", "1")]);
    let body = json!({"name": "e", "channel": "c", "data": "x".repeat(2048)}).to_string();
    let (s, b) = post(small.port, "/apps/app-id/events", &body);
    assert_error(s, &b, 413);
}

#[test]
fn health_routes_answer_ok() {
    let server = start(1, &[]);
    for path in ["/", "/ready"] {
        let (status, body) = common::http(server.port, "GET", path, &[], b"").expect("http");
        assert_eq!((status, body.as_slice()), (200, &b"OK"[..]));
    }
}
