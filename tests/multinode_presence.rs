//! Presence and client events across nodes joined by a real redis-server: a user with
//! sockets on several nodes is one member, removed once when its last socket in the
//! cluster leaves; a node killed with SIGKILL has its members removed by another node;
//! client events cross nodes and are never echoed.

mod common;

use common::wait_event;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::rest::{KEY, SECRET, hmac_hex};
use common::{Server, Ws, start, subscribe_private, wait_linked};
use serde_json::{Value, json};

/// A node with 2 shards on the redis adapter, plus `extra` environment.
fn node(redis: &RedisServer, extra: &[(&str, &str)]) -> Server {
    let port = redis.port.to_string();
    let mut env = vec![
        ("SOKETI_ADAPTER_DRIVER", "redis"),
        ("SOKETI_DB_REDIS_HOST", "127.0.0.1"),
        ("SOKETI_DB_REDIS_PORT", port.as_str()),
    ];
    env.extend_from_slice(extra);
    start(2, &env)
}

/// Links every ordered pair of nodes.
fn link_all(nodes: &[&Server]) {
    for a in nodes {
        for b in nodes {
            if a.port != b.port {
                wait_linked(a, b);
            }
        }
    }
}

/// Reads text frames for `dur` (or until the stream ends) and returns them.
fn frames_for(ws: &mut Ws, dur: Duration) -> Vec<Value> {
    let deadline = Instant::now() + dur;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return out;
        }
        ws.stream
            .set_read_timeout(Some(left.min(Duration::from_millis(100))))
            .expect("timeout");
        match ws.try_read_frame() {
            Ok(f) if f.opcode == 1 => out.push(f.json()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return out,
        }
    }
}

/// `(event, user_id)` of the member events among `frames` for `channel`.
fn member_events(frames: &[Value], channel: &str) -> Vec<(String, String)> {
    frames
        .iter()
        .filter(|v| v["channel"] == channel)
        .filter_map(|v| {
            let event = v["event"].as_str()?;
            if !event.starts_with("pusher_internal:member_") {
                return None;
            }
            let data: Value = serde_json::from_str(v["data"].as_str()?).ok()?;
            Some((event.to_owned(), data["user_id"].as_str()?.to_owned()))
        })
        .collect()
}

fn added(user: &str) -> (String, String) {
    ("pusher_internal:member_added".to_owned(), user.to_owned())
}

fn removed(user: &str) -> (String, String) {
    ("pusher_internal:member_removed".to_owned(), user.to_owned())
}

/// Joins a presence channel as `user` and returns the `presence` part of the roster.
fn join(ws: &mut Ws, socket_id: &str, channel: &str, user: &str) -> Value {
    let data = json!({"user_id": user, "user_info": {"name": user}}).to_string();
    let auth = format!(
        "{KEY}:{}",
        hmac_hex(SECRET, &format!("{socket_id}:{channel}:{data}"))
    );
    ws.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    ws.send_json(json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth, "channel_data": data}}));
    let reply = wait_event(ws, Duration::from_secs(5), |v| {
        v["channel"] == channel
            && (v["event"] == "pusher_internal:subscription_succeeded"
                || v["event"] == "pusher:subscription_error")
    })
    .unwrap_or_else(|seen| panic!("{user} got no answer to subscribing {channel}: {seen:?}"));
    assert_eq!(
        reply["event"], "pusher_internal:subscription_succeeded",
        "{user} joining {channel}: {reply}"
    );
    let data: Value =
        serde_json::from_str(reply["data"].as_str().expect("string data")).expect("json");
    data["presence"].clone()
}

/// Subscribes to a private channel with a valid signature.
fn ids(presence: &Value) -> BTreeSet<String> {
    presence["ids"]
        .as_array()
        .expect("presence.ids")
        .iter()
        .map(|v| v.as_str().expect("string id").to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The `data` of a client event as JSON, whether sent as an object or a string.
fn data_of(v: &Value) -> Value {
    match &v["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}

#[test]
fn user_on_two_nodes_is_one_member_and_is_removed_once_when_its_last_socket_leaves() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let c = node(&redis, &[]);
    link_all(&[&a, &b, &c]);
    let channel = "presence-room";

    let (mut watcher, wid) = Ws::pusher(c.port);
    assert_eq!(join(&mut watcher, &wid, channel, "watcher")["count"], 1);

    let (mut alice_a, id) = Ws::pusher(a.port);
    let roster = join(&mut alice_a, &id, channel, "alice");
    assert_eq!(
        ids(&roster),
        set(&["watcher", "alice"]),
        "alice on node A: {roster}"
    );
    let (mut alice_b, id) = Ws::pusher(b.port);
    let roster = join(&mut alice_b, &id, channel, "alice");
    assert_eq!(
        ids(&roster),
        set(&["watcher", "alice"]),
        "alice on node B: {roster}"
    );
    assert_eq!(roster["count"], 2, "alice on node B: {roster}");

    // The watcher on node C saw alice arrive once, though she has a socket on A and on B.
    let seen = frames_for(&mut watcher, Duration::from_millis(1500));
    assert_eq!(
        member_events(&seen, channel),
        vec![added("alice")],
        "{seen:?}"
    );

    // A third socket, on node C, gets a roster with alice once.
    let (mut late, id) = Ws::pusher(c.port);
    let roster = join(&mut late, &id, channel, "late");
    assert_eq!(roster["count"], 3, "{roster}");
    assert_eq!(ids(&roster), set(&["watcher", "alice", "late"]), "{roster}");
    assert_eq!(
        roster["hash"]["alice"],
        json!({"name": "alice"}),
        "{roster}"
    );

    // Alice's socket on A leaves: she still has one on B, so nobody is removed.
    drop(alice_a);
    let seen = frames_for(&mut watcher, Duration::from_millis(2000));
    assert_eq!(
        member_events(&seen, channel),
        vec![added("late")],
        "after alice's socket on node A closed: {seen:?}"
    );

    // Her last socket in the cluster leaves: removed, once.
    let left_at = Instant::now();
    drop(alice_b);
    let first = wait_event(&mut watcher, Duration::from_secs(5), |v| {
        v["event"] == "pusher_internal:member_removed"
    })
    .unwrap_or_else(|seen| {
        panic!("no member_removed within 5 s of alice's last socket closing: {seen:?}")
    });
    assert_eq!(member_events(&[first], channel), vec![removed("alice")]);
    eprintln!("member_removed after {:?}", left_at.elapsed());
    let seen = frames_for(&mut watcher, Duration::from_millis(1500));
    assert_eq!(
        member_events(&seen, channel),
        vec![],
        "duplicate events: {seen:?}"
    );
    // The late socket saw the same.
    let seen = frames_for(&mut late, Duration::from_millis(200));
    assert_eq!(
        member_events(&seen, channel),
        vec![removed("alice")],
        "{seen:?}"
    );
}

#[test]
fn subscription_succeeded_on_either_node_lists_members_from_both_nodes() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    link_all(&[&a, &b]);
    let channel = "presence-team";
    let mut keep = Vec::new();
    for (server, user, expected) in [
        (&a, "bob", vec!["bob"]),
        (&b, "carol", vec!["bob", "carol"]),
        (&a, "dave", vec!["bob", "carol", "dave"]),
        (&b, "erin", vec!["bob", "carol", "dave", "erin"]),
    ] {
        let (mut ws, id) = Ws::pusher(server.port);
        let roster = join(&mut ws, &id, channel, user);
        assert_eq!(
            ids(&roster),
            set(&expected),
            "{user} joining on :{}: {roster}",
            server.port
        );
        assert_eq!(roster["count"], expected.len(), "{user}: {roster}");
        for u in &expected {
            assert_eq!(roster["hash"][*u], json!({"name": u}), "{user}: {roster}");
        }
        keep.push(ws);
    }
}

#[test]
fn members_of_a_node_killed_with_sigkill_are_removed_cluster_wide_within_30_s() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let mut b = node(&redis, &[]);
    link_all(&[&a, &b]);
    let channel = "presence-crash";

    let (mut observer, id) = Ws::pusher(a.port);
    join(&mut observer, &id, channel, "observer");
    // `zed` is only on node B; `both` is on A and on B.
    let (mut zed, id) = Ws::pusher(b.port);
    join(&mut zed, &id, channel, "zed");
    let (mut both_a, id) = Ws::pusher(a.port);
    join(&mut both_a, &id, channel, "both");
    let (mut both_b, id) = Ws::pusher(b.port);
    let roster = join(&mut both_b, &id, channel, "both");
    assert_eq!(ids(&roster), set(&["observer", "zed", "both"]), "{roster}");
    let seen = frames_for(&mut observer, Duration::from_millis(1000));
    assert_eq!(
        member_events(&seen, channel),
        vec![added("zed"), added("both")],
        "{seen:?}"
    );

    b.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    assert!(
        b.wait_exit(Duration::from_secs(5)).is_some(),
        "node B did not die on SIGKILL"
    );
    let mut seen = Vec::new();
    let removal = loop {
        let left = Duration::from_secs(30).saturating_sub(killed_at.elapsed());
        assert!(
            !left.is_zero(),
            "no member_removed for zed within 30 s of node B's SIGKILL; observer saw: {seen:?}"
        );
        match wait_event(&mut observer, left, |v| {
            v["event"] == "pusher_internal:member_removed"
        }) {
            Ok(v) => {
                let ev = member_events(std::slice::from_ref(&v), channel);
                seen.push(v);
                if ev == vec![removed("zed")] {
                    break killed_at.elapsed();
                }
            }
            Err(more) => seen.extend(more),
        }
    };
    eprintln!("zed removed {removal:?} after node B was killed");
    // `both` still has a socket on node A: never removed.
    seen.extend(frames_for(&mut observer, Duration::from_secs(3)));
    assert_eq!(
        member_events(&seen, channel),
        vec![removed("zed")],
        "observer's member events after the kill: {seen:?}"
    );
    // And a new joiner on node A sees the roster without zed.
    let (mut late, id) = Ws::pusher(a.port);
    let roster = join(&mut late, &id, channel, "late");
    assert_eq!(ids(&roster), set(&["observer", "both", "late"]), "{roster}");
}

#[test]
fn client_events_on_a_private_channel_cross_nodes_and_are_not_echoed() {
    let redis = RedisServer::start();
    let env = [("SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES", "true")];
    let a = node(&redis, &env);
    let b = node(&redis, &env);
    link_all(&[&a, &b]);
    let channel = "private-chat";
    let mut socks = Vec::new();
    for server in [&a, &b, &a, &b] {
        let (mut ws, id) = Ws::pusher(server.port);
        subscribe_private(&mut ws, &id, channel);
        socks.push(ws);
    }
    // Sockets 0 and 2 are on node A, 1 and 3 on node B.
    for (sender, text) in [(0usize, "from A"), (1usize, "from B")] {
        let event = json!({"event": "client-typing", "channel": channel, "data": {"text": text}});
        socks[sender].send_json(event);
        for (i, ws) in socks.iter_mut().enumerate() {
            let seen = frames_for(ws, Duration::from_millis(1500));
            let got: Vec<&Value> = seen
                .iter()
                .filter(|v| v["event"] == "client-typing")
                .collect();
            if i == sender {
                assert!(
                    got.is_empty(),
                    "socket {i} got its own client event echoed: {seen:?}"
                );
            } else {
                assert_eq!(got.len(), 1, "socket {i} and the event {text:?}: {seen:?}");
                assert_eq!(got[0]["channel"], channel);
                assert_eq!(
                    data_of(got[0]),
                    json!({"text": text}),
                    "socket {i}: {}",
                    got[0]
                );
            }
        }
    }
}

#[test]
fn client_events_on_a_presence_channel_cross_nodes_with_the_senders_user_id() {
    let redis = RedisServer::start();
    let env = [("SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES", "true")];
    let a = node(&redis, &env);
    let b = node(&redis, &env);
    link_all(&[&a, &b]);
    let channel = "presence-chat";
    let (mut ann, id) = Ws::pusher(a.port);
    join(&mut ann, &id, channel, "ann");
    let (mut ben, id) = Ws::pusher(b.port);
    join(&mut ben, &id, channel, "ben");
    ann.send_json(json!({"event": "client-wave", "channel": channel, "data": {"hi": 1}}));
    let got = wait_event(&mut ben, Duration::from_secs(5), |v| {
        v["event"] == "client-wave"
    })
    .unwrap_or_else(|seen| panic!("ben on node B never got ann's client event: {seen:?}"));
    assert_eq!(got["channel"], channel);
    assert_eq!(got["user_id"], "ann", "{got}");
    assert_eq!(data_of(&got), json!({"hi": 1}));
    let seen = frames_for(&mut ann, Duration::from_millis(1000));
    assert!(
        !seen.iter().any(|v| v["event"] == "client-wave"),
        "ann got her own client event echoed: {seen:?}"
    );
    let seen = frames_for(&mut ben, Duration::from_millis(500));
    assert!(
        !seen.iter().any(|v| v["event"] == "client-wave"),
        "ben got ann's client event twice: {seen:?}"
    );
}
