//! Two nodes and a Redis that goes away: local delivery goes on, cross-node publishes made
//! during the outage are not delivered, nothing crashes, and once Redis is back delivery
//! resumes and the presence rosters are rebuilt from what the nodes still have.

mod common;

use common::{frames_for, join_presence, user_ids, wait_event};

use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::rest::{KEY, SECRET, hmac_hex, now, post};
use common::{Server, Ws, http, start};
use serde_json::{Value, json};

/// A node with 2 shards on the redis adapter and its metrics port.
fn node(redis: &RedisServer) -> (Server, u16) {
    let port = redis.port.to_string();
    let server = start(
        2,
        &[
            ("SOKETI_ADAPTER_DRIVER", "redis"),
            ("SOKETI_DB_REDIS_HOST", "127.0.0.1"),
            ("SOKETI_DB_REDIS_PORT", &port),
            ("SOKETI_METRICS_ENABLED", "true"),
        ],
    );
    let metrics = server.metrics_port.expect("metrics enabled");
    (server, metrics)
}

/// The value of an unlabelled sample in a Prometheus scrape, if present.
fn metric(port: u16, name: &str) -> Option<f64> {
    let (status, body) = http(port, "GET", "/metrics", &[], b"").ok()?;
    if status != 200 {
        return None;
    }
    String::from_utf8_lossy(&body).lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series == name).then(|| value.parse().ok()).flatten()
    })
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

/// Publishes on `a` until a subscriber on `b` gets it; the time it took, or `None`
/// after `within`.
fn probe_link(a: &Server, b: &Server, channel: &str, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let (mut probe, _) = Ws::pusher(b.port);
    probe.subscribe(channel);
    while started.elapsed() < within {
        let body = json!({"name": "probe", "channel": channel, "data": "x"}).to_string();
        let _ = common::rest::post_raw(
            a.port,
            &common::rest::signed_post("/apps/app-id/events", body.as_bytes(), KEY, SECRET, now()),
            &body,
        );
        if wait_event(&mut probe, Duration::from_millis(200), |v| {
            v["event"] == "probe"
        })
        .is_ok()
        {
            return Some(started.elapsed());
        }
    }
    None
}

fn link(a: &Server, b: &Server) {
    for (x, y) in [(a, b), (b, a)] {
        let channel = format!("link-{}-{}", x.port, y.port);
        assert!(
            probe_link(x, y, &channel, Duration::from_secs(10)).is_some(),
            "node :{} never reached node :{} through redis",
            x.port,
            y.port
        );
    }
}

fn publish(server: &Server, channel: &str, name: &str) {
    let body = json!({"name": name, "channel": channel, "data": name}).to_string();
    let (status, reply) = post(server.port, "/apps/app-id/events", &body);
    assert_eq!(
        status, 200,
        "publishing {name} on :{}: {reply}",
        server.port
    );
}

fn names(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|v| v["event"].as_str().map(str::to_owned))
        .collect()
}

fn assert_alive(server: &mut Server, which: &str) {
    assert!(
        server.wait_exit(Duration::from_millis(50)).is_none(),
        "node {which} exited"
    );
    let (status, body) = http(server.port, "GET", "/ready", &[], b"").expect("node answers HTTP");
    assert_eq!(
        status,
        200,
        "node {which} /ready: {}",
        String::from_utf8_lossy(&body)
    );
}

/// A signed GET, as the `pusher` libraries send it.
fn signed_get(port: u16, path: &str) -> (u16, Value) {
    let query = format!("auth_key={KEY}&auth_timestamp={}&auth_version=1.0", now());
    let sig = hmac_hex(SECRET, &format!("GET\n{path}\n{query}"));
    let (status, body) = http(
        port,
        "GET",
        &format!("{path}?{query}&auth_signature={sig}"),
        &[],
        b"",
    )
    .expect("http");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[test]
fn redis_outage_keeps_local_delivery_drops_cross_node_and_recovers_after_restart() {
    let mut redis = RedisServer::start();
    let (mut a, metrics_a) = node(&redis);
    let (mut b, metrics_b) = node(&redis);
    link(&a, &b);
    assert_eq!(
        metric(metrics_a, "corecast_redis_up"),
        Some(1.0),
        "node A before the outage"
    );
    let (mut sub_a, _) = Ws::pusher(a.port);
    sub_a.subscribe("live");
    let (mut sub_b, _) = Ws::pusher(b.port);
    sub_b.subscribe("live");

    redis.stop();
    let stopped = Instant::now();
    // The nodes notice: the gauge drops to 0.
    for (which, port) in [("A", metrics_a), ("B", metrics_b)] {
        assert!(
            eventually(Duration::from_secs(10), || metric(
                port,
                "corecast_redis_up"
            ) == Some(0.0)),
            "node {which}: corecast_redis_up = {:?} {:?} after redis stopped",
            metric(port, "corecast_redis_up"),
            stopped.elapsed()
        );
    }
    let dropped_before = metric(metrics_a, "corecast_redis_dropped_total").unwrap_or(0.0);

    // Local delivery keeps working on each node; nothing crosses.
    publish(&a, "live", "during-a");
    publish(&b, "live", "during-b");
    let got_a = wait_event(&mut sub_a, Duration::from_secs(3), |v| {
        v["event"] == "during-a"
    })
    .unwrap_or_else(|seen| {
        panic!("node A's subscriber lost node A's publish during the outage: {seen:?}")
    });
    assert_eq!(got_a["channel"], "live");
    wait_event(&mut sub_b, Duration::from_secs(3), |v| {
        v["event"] == "during-b"
    })
    .unwrap_or_else(|seen| {
        panic!("node B's subscriber lost node B's publish during the outage: {seen:?}")
    });
    let mut late_a = frames_for(&mut sub_a, Duration::from_millis(1000));
    let mut late_b = frames_for(&mut sub_b, Duration::from_millis(100));
    assert!(
        !names(&late_a).contains(&"during-b".to_owned()),
        "{late_a:?}"
    );
    assert!(
        !names(&late_b).contains(&"during-a".to_owned()),
        "{late_b:?}"
    );
    assert_alive(&mut a, "A");
    assert_alive(&mut b, "B");
    // Once the command connection has surely failed too (heartbeats are every 2 s),
    // another publish: still local only.
    std::thread::sleep(Duration::from_secs(3));
    let dropped_mid = metric(metrics_a, "corecast_redis_dropped_total").unwrap_or(0.0);
    publish(&a, "live", "during-a2");
    wait_event(&mut sub_a, Duration::from_secs(3), |v| {
        v["event"] == "during-a2"
    })
    .unwrap_or_else(|seen| {
        panic!("node A's subscriber lost a later publish during the outage: {seen:?}")
    });
    std::thread::sleep(Duration::from_millis(500));
    let dropped_after = metric(metrics_a, "corecast_redis_dropped_total").unwrap_or(0.0);
    eprintln!(
        "node A corecast_redis_dropped_total: {dropped_before} before, {dropped_mid} after the \
         first outage publish (+3 s), {dropped_after} after the second"
    );

    // Redis comes back (empty): cross-node delivery resumes within about 10 s.
    redis.restart();
    let restarted = Instant::now();
    let a_to_b = probe_link(&a, &b, "after-a-b", Duration::from_secs(12));
    let b_to_a = probe_link(
        &b,
        &a,
        "after-b-a",
        Duration::from_secs(12).saturating_sub(restarted.elapsed()),
    );
    eprintln!(
        "after restart: A->B {a_to_b:?}, B->A {b_to_a:?} (outage lasted {:?})",
        restarted - stopped
    );
    assert!(
        a_to_b.is_some(),
        "node A never reached node B within 12 s of redis restarting"
    );
    assert!(
        b_to_a.is_some(),
        "node B never reached node A within 12 s of redis restarting"
    );

    // Publishes made during the outage are not replayed; new ones reach both, once.
    publish(&a, "live", "after");
    for (which, ws, late) in [
        ("A", &mut sub_a, &mut late_a),
        ("B", &mut sub_b, &mut late_b),
    ] {
        late.extend(frames_for(ws, Duration::from_millis(1500)));
        let got = names(late);
        assert_eq!(
            got.iter().filter(|n| *n == "after").count(),
            1,
            "node {which}'s subscriber after the restart: {late:?}"
        );
        let other = if which == "A" { "during-b" } else { "during-a" };
        assert!(
            !got.contains(&other.to_owned()),
            "node {which} got {other} replayed: {late:?}"
        );
        assert!(
            !got.contains(&"during-a2".to_owned()) || which == "A",
            "{late:?}"
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || metric(
            metrics_a,
            "corecast_redis_up"
        ) == Some(1.0)),
        "node A: corecast_redis_up = {:?} after redis restarted",
        metric(metrics_a, "corecast_redis_up")
    );
    assert_alive(&mut a, "A");
    assert_alive(&mut b, "B");
    // Checked last so the recovery above is proven either way: the two publishes made
    // on node A during the outage were dropped for the other nodes, and counted.
    assert!(
        dropped_after - dropped_before >= 2.0,
        "node A's corecast_redis_dropped_total went {dropped_before} -> {dropped_mid} -> \
         {dropped_after} over two publishes made while redis was down (expected +2 at least)"
    );
}

#[test]
fn presence_rosters_are_rebuilt_after_redis_restarts_without_users_who_left_meanwhile() {
    let mut redis = RedisServer::start();
    let (a, _) = node(&redis);
    let (b, _) = node(&redis);
    link(&a, &b);
    let channel = "presence-rebuild";
    let users = format!("/apps/app-id/channels/{channel}/users");
    let mut socks = Vec::new();
    for (server, user) in [
        (&a, "stay-a"),
        (&a, "goer-a"),
        (&b, "stay-b"),
        (&b, "goer-b"),
    ] {
        let (mut ws, id) = Ws::pusher(server.port);
        join_presence(&mut ws, &id, channel, user);
        socks.push(ws);
    }
    let all = vec!["goer-a", "goer-b", "stay-a", "stay-b"];
    for (which, server) in [("A", &a), ("B", &b)] {
        let mut last = Value::Null;
        assert!(
            eventually(Duration::from_secs(5), || {
                last = signed_get(server.port, &users).1;
                user_ids(&last) == all
            }),
            "before the outage, /users via node {which}: {last}"
        );
    }

    redis.stop();
    std::thread::sleep(Duration::from_millis(500));
    // The goers leave while Redis is down.
    let goer_b = socks.pop().expect("goer-b");
    let _stay_b = socks.pop().expect("stay-b");
    let goer_a = socks.pop().expect("goer-a");
    drop(goer_a);
    drop(goer_b);
    std::thread::sleep(Duration::from_millis(1500));

    redis.restart();
    let restarted = Instant::now();
    let expected = vec!["stay-a".to_owned(), "stay-b".to_owned()];
    // Each node lists the other node's remaining user once Redis has it again.
    let mut via_a = Value::Null;
    let mut via_b = Value::Null;
    let rebuilt = eventually(Duration::from_secs(15), || {
        via_a = signed_get(a.port, &users).1;
        via_b = signed_get(b.port, &users).1;
        user_ids(&via_a).contains(&"stay-b".to_owned())
            && user_ids(&via_b).contains(&"stay-a".to_owned())
    });
    assert!(
        rebuilt,
        "15 s after redis restarted: /users via A = {via_a}, via B = {via_b} (expected stay-a and stay-b on both)"
    );
    eprintln!("rosters rebuilt {:?} after restart", restarted.elapsed());
    // And the users who left during the outage are not listed, now or a little later.
    for _ in 0..2 {
        let via_a = signed_get(a.port, &users).1;
        let via_b = signed_get(b.port, &users).1;
        assert_eq!(
            user_ids(&via_a),
            expected,
            "/users via node A after the restart: {via_a}"
        );
        assert_eq!(
            user_ids(&via_b),
            expected,
            "/users via node B after the restart: {via_b}"
        );
        std::thread::sleep(Duration::from_millis(1500));
    }
}

#[test]
fn members_who_left_during_the_outage_are_announced_removed_on_both_nodes_after_restart() {
    let mut redis = RedisServer::start();
    let (a, _) = node(&redis);
    let (b, _) = node(&redis);
    link(&a, &b);
    let channel = "presence-announce";
    let (mut watch_a, id) = Ws::pusher(a.port);
    join_presence(&mut watch_a, &id, channel, "watch-a");
    let (mut watch_b, id) = Ws::pusher(b.port);
    join_presence(&mut watch_b, &id, channel, "watch-b");
    let (mut goer_a, id) = Ws::pusher(a.port);
    join_presence(&mut goer_a, &id, channel, "goer-a");
    let (mut goer_b, id) = Ws::pusher(b.port);
    join_presence(&mut goer_b, &id, channel, "goer-b");
    // Both watchers saw every later member arrive.
    let seen_a = frames_for(&mut watch_a, Duration::from_millis(1000));
    let seen_b = frames_for(&mut watch_b, Duration::from_millis(200));
    for (which, seen) in [("A", &seen_a), ("B", &seen_b)] {
        let added = seen
            .iter()
            .filter(|v| v["event"] == "pusher_internal:member_added")
            .count();
        assert!(
            added >= 2,
            "watcher on node {which} before the outage: {seen:?}"
        );
    }

    redis.stop();
    std::thread::sleep(Duration::from_millis(500));
    drop(goer_a);
    drop(goer_b);
    std::thread::sleep(Duration::from_millis(1500));
    redis.restart();
    let restarted = Instant::now();

    // A member list kept by pusher-js only shrinks on member_removed: each watcher must
    // be told that both goers are gone, or it shows them forever. Members who stayed
    // through the outage are not announced as new again.
    let member = |v: &Value, event: &str| -> Option<String> {
        if v["event"] != event || v["channel"] != channel {
            return None;
        }
        let data: Value = serde_json::from_str(v["data"].as_str()?).ok()?;
        data["user_id"].as_str().map(str::to_owned)
    };
    let window = Duration::from_secs(15).saturating_sub(restarted.elapsed());
    let seen_a = frames_for(&mut watch_a, window.max(Duration::from_secs(1)));
    let seen_b = frames_for(&mut watch_b, Duration::from_millis(200));
    let observed = |seen: &[Value]| {
        let mut gone: Vec<String> = seen
            .iter()
            .filter_map(|v| member(v, "pusher_internal:member_removed"))
            .collect();
        gone.sort();
        let mut again: Vec<String> = seen
            .iter()
            .filter_map(|v| member(v, "pusher_internal:member_added"))
            .collect();
        again.sort();
        (gone, again)
    };
    let expected = (
        vec!["goer-a".to_owned(), "goer-b".to_owned()],
        Vec::<String>::new(),
    );
    assert_eq!(
        [observed(&seen_a), observed(&seen_b)],
        [expected.clone(), expected],
        "[(member_removed, member_added)] seen by the watchers on nodes [A, B] from the \
         outage until {:?} after redis restarted; frames on A: {seen_a:?}; frames on B: {seen_b:?}",
        restarted.elapsed()
    );
}
