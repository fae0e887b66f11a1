//! REST reads and user-addressed actions across nodes joined by a real redis-server: the
//! channel list, subscription counts and presence users cover both nodes whichever node
//! is asked; `sendToUser` and `terminate_connections` reach a user's sockets everywhere.

mod common;

use common::{frames_for, join_presence, user_ids, wait_event, wait_linked};

use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::rest::{post, signed_get};
use common::{Server, Ws, signed_in, start};
use serde_json::{Value, json};

/// How long a read may take to reflect subscriptions on another node (heartbeats are 2 s).
const CONVERGE: Duration = Duration::from_secs(8);

/// A node with 2 shards on the redis adapter.
fn node(redis: &RedisServer) -> Server {
    let port = redis.port.to_string();
    start(
        2,
        &[
            ("SOKETI_ADAPTER_DRIVER", "redis"),
            ("SOKETI_DB_REDIS_HOST", "127.0.0.1"),
            ("SOKETI_DB_REDIS_PORT", &port),
        ],
    )
}

fn link(a: &Server, b: &Server) {
    wait_linked(a, b);
    wait_linked(b, a);
}

/// A signed GET, as the `pusher` libraries send it: `GET\npath\nsorted query`.
/// Polls `read` until `ok` holds or [`CONVERGE`] passes; returns the last answer and
/// whether it held.
fn poll(mut read: impl FnMut() -> Value, ok: impl Fn(&Value) -> bool) -> (Value, bool) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let v = read();
        if ok(&v) {
            return (v, true);
        }
        if Instant::now() >= deadline {
            return (v, false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A socket on `port` signed in as `user`.
fn channel_names(v: &Value) -> Vec<String> {
    v["channels"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn channel_list_via_either_node_includes_channels_occupied_on_both() {
    let redis = RedisServer::start();
    let a = node(&redis);
    let b = node(&redis);
    link(&a, &b);
    let (mut on_a, _) = Ws::pusher(a.port);
    on_a.subscribe("news-a");
    let (mut on_b, _) = Ws::pusher(b.port);
    on_b.subscribe("news-b");
    for (name, server) in [("A", &a), ("B", &b)] {
        let started = Instant::now();
        let (v, ok) = poll(
            || {
                let (status, v) = signed_get(server.port, "/apps/app-id/channels", &[]);
                assert_eq!(status, 200, "{v}");
                v
            },
            |v| {
                let names = channel_names(v);
                names.contains(&"news-a".to_owned()) && names.contains(&"news-b".to_owned())
            },
        );
        assert!(
            ok,
            "GET /channels via node {name} after {:?}: {v} (expected news-a on A and news-b on B)",
            started.elapsed()
        );
        // Filtered by prefix, still both nodes.
        let (status, v) = signed_get(
            server.port,
            "/apps/app-id/channels",
            &[("filter_by_prefix", "news-")],
        );
        assert_eq!(status, 200);
        let mut names = channel_names(&v);
        names.sort();
        assert_eq!(names, vec!["news-a", "news-b"], "via node {name}: {v}");
    }
    // A channel emptied on B leaves the list read via A.
    on_b.send_json(json!({"event": "pusher:unsubscribe", "data": {"channel": "news-b"}}));
    let (v, ok) = poll(
        || {
            signed_get(
                a.port,
                "/apps/app-id/channels",
                &[("filter_by_prefix", "news-")],
            )
            .1
        },
        |v| channel_names(v) == vec!["news-a".to_owned()],
    );
    assert!(
        ok,
        "after news-b emptied on node B, GET /channels via node A: {v}"
    );
}

#[test]
fn subscription_count_via_either_node_sums_both_nodes() {
    let redis = RedisServer::start();
    let a = node(&redis);
    let b = node(&redis);
    link(&a, &b);
    let channel = "counted";
    let mut socks = Vec::new();
    for server in [&a, &a, &b, &b, &b] {
        let (mut ws, _) = Ws::pusher(server.port);
        ws.subscribe(channel);
        socks.push(ws);
    }
    let show = format!("/apps/app-id/channels/{channel}");
    for (name, server) in [("A", &a), ("B", &b)] {
        let (v, ok) = poll(
            || signed_get(server.port, &show, &[("info", "subscription_count")]).1,
            |v| v["subscription_count"] == 5,
        );
        assert!(
            ok,
            "GET {show}?info=subscription_count via node {name}: {v} (2 on A + 3 on B)"
        );
        assert_eq!(v["occupied"], true, "{v}");
        let (status, list) = signed_get(
            server.port,
            "/apps/app-id/channels",
            &[("info", "subscription_count")],
        );
        assert_eq!(status, 200);
        assert_eq!(
            list["channels"][channel]["subscription_count"], 5,
            "GET /channels?info=subscription_count via node {name}: {list}"
        );
    }
    // One socket on B leaves: both nodes say 4.
    socks.pop();
    for (name, server) in [("A", &a), ("B", &b)] {
        let (v, ok) = poll(
            || signed_get(server.port, &show, &[("info", "subscription_count")]).1,
            |v| v["subscription_count"] == 4,
        );
        assert!(
            ok,
            "after one socket on B closed, via node {name}: {v} (expected 4)"
        );
    }
}

#[test]
fn presence_user_count_and_users_via_either_node_list_each_user_once() {
    let redis = RedisServer::start();
    let a = node(&redis);
    let b = node(&redis);
    link(&a, &b);
    let channel = "presence-crew";
    let mut socks = Vec::new();
    // u1 on both nodes, u2 on A, u3 twice on B.
    for (server, user) in [(&a, "u1"), (&b, "u1"), (&a, "u2"), (&b, "u3"), (&b, "u3")] {
        let (mut ws, id) = Ws::pusher(server.port);
        join_presence(&mut ws, &id, channel, user);
        socks.push(ws);
    }
    let show = format!("/apps/app-id/channels/{channel}");
    let users = format!("/apps/app-id/channels/{channel}/users");
    for (name, server) in [("A", &a), ("B", &b)] {
        let (v, ok) = poll(
            || signed_get(server.port, &users, &[]).1,
            |v| user_ids(v) == vec!["u1", "u2", "u3"],
        );
        assert!(
            ok,
            "GET {users} via node {name}: {v} (expected u1, u2, u3 once each)"
        );
        let (status, v) = signed_get(server.port, &show, &[("info", "user_count")]);
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["user_count"], 3,
            "GET {show}?info=user_count via node {name}: {v}"
        );
        assert_eq!(v["occupied"], true, "{v}");
        let (status, list) = signed_get(
            server.port,
            "/apps/app-id/channels",
            &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        );
        assert_eq!(status, 200, "{list}");
        assert_eq!(
            list["channels"][channel]["user_count"], 3,
            "GET /channels?filter_by_prefix=presence-&info=user_count via node {name}: {list}"
        );
    }
}

#[test]
fn send_to_user_reaches_the_users_signed_in_sockets_on_both_nodes() {
    let redis = RedisServer::start();
    let a = node(&redis);
    let b = node(&redis);
    link(&a, &b);
    let mut u1_a = signed_in(a.port, "u1");
    let mut u1_b = signed_in(b.port, "u1");
    let mut u2_b = signed_in(b.port, "u2");
    for (via_name, via) in [("A", &a), ("B", &b)] {
        let data = format!("{{\"via\":\"{via_name}\"}}");
        let body =
            json!({"name": "note", "channel": "#server-to-user-u1", "data": data}).to_string();
        let (status, reply) = post(via.port, "/apps/app-id/events", &body);
        assert_eq!(status, 200, "{reply}");
        for (who, ws) in [("u1 on A", &mut u1_a), ("u1 on B", &mut u1_b)] {
            let got = wait_event(ws, Duration::from_secs(5), |v| v["event"] == "note")
                .unwrap_or_else(|seen| {
                    panic!("{who} got nothing sent to u1 via node {via_name}: {seen:?}")
                });
            assert_eq!(got["channel"], "#server-to-user-u1", "{who}: {got}");
            assert_eq!(got["data"], data, "{who}: {got}");
            let more = frames_for(ws, Duration::from_millis(300));
            assert!(
                !more.iter().any(|v| v["event"] == "note"),
                "{who} got the note twice: {more:?}"
            );
        }
        let other = frames_for(&mut u2_b, Duration::from_millis(500));
        assert!(
            !other.iter().any(|v| v["event"] == "note"),
            "u2 got u1's note: {other:?}"
        );
    }
}

#[test]
fn terminate_connections_via_one_node_closes_the_users_sockets_on_the_other_with_4009() {
    let redis = RedisServer::start();
    let a = node(&redis);
    let b = node(&redis);
    link(&a, &b);
    let mut u1_a = signed_in(a.port, "u1");
    let mut u1_b1 = signed_in(b.port, "u1");
    let mut u1_b2 = signed_in(b.port, "u1");
    let mut u2_b = signed_in(b.port, "u2");
    let (status, reply) = post(a.port, "/apps/app-id/users/u1/terminate_connections", "{}");
    assert_eq!(status, 200, "{reply}");
    let sent = Instant::now();
    for (who, ws) in [
        ("u1 on A", &mut u1_a),
        ("u1 on B #1", &mut u1_b1),
        ("u1 on B #2", &mut u1_b2),
    ] {
        ws.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut frames = Vec::new();
        let mut close = None;
        while let Ok(f) = ws.try_read_frame() {
            if f.opcode == 8 {
                close = f.close_code();
            } else {
                frames.push(f.text());
            }
        }
        assert_eq!(
            close,
            Some(4009),
            "{who}: close code after terminate_connections via node A ({:?} later); frames: {frames:?}",
            sent.elapsed()
        );
    }
    // u2 on B is untouched.
    u2_b.send_json(json!({"event": "pusher:ping", "data": {}}));
    let pong = wait_event(&mut u2_b, Duration::from_secs(5), |v| {
        v["event"] == "pusher:pong"
    });
    assert!(
        pong.is_ok(),
        "u2's socket on node B no longer answers: {pong:?}"
    );
}
