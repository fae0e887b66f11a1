//! Two nodes finding their Redis through Sentinel (`SOKETI_DB_REDIS_SENTINELS`): publishes,
//! presence and REST reads cross nodes as with a fixed address; after `SENTINEL FAILOVER`
//! both nodes move to the promoted replica within seconds and the cluster goes on; a
//! name the sentinels do not know leaves the node serving its own clients, saying why
//! once.

mod common;
#[path = "common/redis_sentinel.rs"]
mod redis_sentinel;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::rest::{KEY, SECRET, hmac_hex, now, post};
use common::{
    Server, Ws, frames_for, http, join_presence, start, user_ids, wait_event, wait_linked,
};
use redis_sentinel::{NAME, Reply, Sentinels};
use serde_json::{Value, json};

/// How long a read may take to reflect another node (heartbeats are 2 s).
const CONVERGE: Duration = Duration::from_secs(8);

/// The broadcast channel every node subscribes to (no prefix configured).
const BROADCAST: &str = "corecast#broadcast";

/// A node with 2 shards finding Redis through `set`'s sentinels. The fixed address
/// points nowhere: with sentinels it must not be used.
fn node(set: &Sentinels) -> Server {
    let sentinels = set.env_value();
    start(
        2,
        &[
            ("SOKETI_ADAPTER_DRIVER", "redis"),
            ("SOKETI_DB_REDIS_SENTINELS", &sentinels),
            ("SOKETI_DB_REDIS_HOST", "127.0.0.1"),
            ("SOKETI_DB_REDIS_PORT", "1"),
            ("SOKETI_METRICS_ENABLED", "true"),
        ],
    )
}

fn link(a: &Server, b: &Server) {
    wait_linked(a, b);
    wait_linked(b, a);
}

fn publish(port: u16, channel: &str, name: &str, data: &str) {
    let body = json!({"name": name, "channel": channel, "data": data}).to_string();
    let (status, reply) = post(port, "/apps/app-id/events", &body);
    assert_eq!(status, 200, "publishing {name} on :{port}: {reply}");
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

/// A signed GET, as the `pusher` libraries send it: `GET\npath\nsorted query`.
fn signed_get(port: u16, path: &str, params: &[(&str, &str)]) -> Value {
    let mut query: Vec<(String, String)> = vec![
        ("auth_key".into(), KEY.into()),
        ("auth_timestamp".into(), now().to_string()),
        ("auth_version".into(), "1.0".into()),
    ];
    query.extend(
        params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    query.sort();
    let query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let sig = hmac_hex(SECRET, &format!("GET\n{path}\n{query}"));
    let (status, body) = http(
        port,
        "GET",
        &format!("{path}?{query}&auth_signature={sig}"),
        &[],
        b"",
    )
    .expect("http");
    assert_eq!(
        status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap_or(Value::Null)
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
        thread::sleep(Duration::from_millis(100));
    }
}

/// `(event, user_id)` of the member events among `frames` for `channel`.
fn member_events(frames: &[Value], channel: &str) -> Vec<(String, String)> {
    frames
        .iter()
        .filter(|v| v["channel"] == channel)
        .filter_map(|v| {
            let event = v["event"].as_str()?;
            let event = event.strip_prefix("pusher_internal:member_")?;
            let data: Value = serde_json::from_str(v["data"].as_str()?).ok()?;
            Some((event.to_owned(), data["user_id"].as_str()?.to_owned()))
        })
        .collect()
}

fn member(event: &str, user: &str) -> (String, String) {
    (event.to_owned(), user.to_owned())
}

/// How many subscribers `channel` has on the Redis server at `port`.
fn numsub(set: &Sentinels, port: u16, channel: &str) -> i64 {
    match set.command(port, &["PUBSUB", "NUMSUB", channel]) {
        Ok(Reply::Array(items)) => match items.get(1) {
            Some(Reply::Int(n)) => *n,
            _ => -1,
        },
        _ => -1,
    }
}

#[test]
fn through_sentinel_publishes_presence_and_counts_cross_nodes() {
    let set = Sentinels::start(1);
    let a = node(&set);
    let b = node(&set);
    link(&a, &b);

    // Publishes: every subscriber on both nodes once, in order, with exclusion.
    let mut subs: Vec<(Ws, String)> = Vec::new();
    for server in [&a, &b, &a, &b] {
        let (mut ws, id) = Ws::pusher(server.port);
        ws.subscribe("orders");
        subs.push((ws, id));
    }
    let excluded = subs[1].1.clone();
    let body = json!({"name": "skip", "channel": "orders", "data": "x", "socket_id": excluded})
        .to_string();
    assert_eq!(post(a.port, "/apps/app-id/events", &body).0, 200);
    for n in 0..20 {
        publish(a.port, "orders", "seq", &n.to_string());
    }
    for (i, (ws, _)) in subs.iter_mut().enumerate() {
        if i != 1 {
            assert_eq!(ws.read_json()["event"], "skip", "subscriber {i}");
        }
        for n in 0..20 {
            let ev = ws.read_json();
            assert_eq!(
                (ev["event"].as_str(), ev["data"].as_str()),
                (Some("seq"), Some(n.to_string().as_str())),
                "subscriber {i}"
            );
        }
        let late = frames_for(ws, Duration::from_millis(300));
        assert!(late.is_empty(), "subscriber {i} got more: {late:?}");
    }

    // Presence: a user with sockets on both nodes is one member, announced once.
    let channel = "presence-room";
    let (mut watcher, id) = Ws::pusher(a.port);
    join_presence(&mut watcher, &id, channel, "watcher");
    let (mut alice_b, id) = Ws::pusher(b.port);
    join_presence(&mut alice_b, &id, channel, "alice");
    let (mut alice_a, id) = Ws::pusher(a.port);
    join_presence(&mut alice_a, &id, channel, "alice");
    let seen = frames_for(&mut watcher, Duration::from_millis(1500));
    assert_eq!(
        member_events(&seen, channel),
        vec![member("added", "alice")],
        "{seen:?}"
    );
    let users = format!("/apps/app-id/channels/{channel}/users");
    for (which, server) in [("A", &a), ("B", &b)] {
        let mut last = Value::Null;
        assert!(
            eventually(CONVERGE, || {
                last = signed_get(server.port, &users, &[]);
                user_ids(&last) == ["alice", "watcher"]
            }),
            "/users via node {which}: {last}"
        );
    }

    // REST counts cover both nodes.
    for (which, server) in [("A", &a), ("B", &b)] {
        let mut last = Value::Null;
        assert!(
            eventually(CONVERGE, || {
                last = signed_get(
                    server.port,
                    "/apps/app-id/channels/orders",
                    &[("info", "subscription_count")],
                );
                last["subscription_count"] == 4
            }),
            "GET /channels/orders via node {which}: {last} (2 on A + 2 on B)"
        );
        let list = signed_get(
            server.port,
            "/apps/app-id/channels",
            &[("info", "subscription_count")],
        );
        assert_eq!(
            list["channels"]["orders"]["subscription_count"], 4,
            "GET /channels via node {which}: {list}"
        );
    }
}

#[test]
fn after_sentinel_failover_both_nodes_move_to_the_new_master_within_seconds() {
    let mut set = Sentinels::start(1);
    let a = node(&set);
    let b = node(&set);
    link(&a, &b);
    let old_master = set.master_port;
    let new_master = set.replica_port;
    assert_eq!(
        numsub(&set, old_master, BROADCAST),
        2,
        "both nodes on the master"
    );

    // Presence before: a watcher on each node, carol on both.
    let channel = "presence-failover";
    let (mut watch_a, id) = Ws::pusher(a.port);
    join_presence(&mut watch_a, &id, channel, "watch-a");
    let (mut watch_b, id) = Ws::pusher(b.port);
    join_presence(&mut watch_b, &id, channel, "watch-b");
    let (mut carol_a, id) = Ws::pusher(a.port);
    join_presence(&mut carol_a, &id, channel, "carol");
    let (mut carol_b, id) = Ws::pusher(b.port);
    join_presence(&mut carol_b, &id, channel, "carol");
    let before = frames_for(&mut watch_a, Duration::from_millis(1000));
    assert_eq!(
        member_events(&before, channel),
        vec![member("added", "watch-b"), member("added", "carol")],
        "{before:?}"
    );
    frames_for(&mut watch_b, Duration::from_millis(100));

    // A steady stream published on A throughout, watched on A (local) and on B.
    let (mut steady_a, _) = Ws::pusher(a.port);
    steady_a.subscribe("steady");
    let (mut steady_b, _) = Ws::pusher(b.port);
    steady_b.subscribe("steady");
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = Arc::clone(&stop);
        let port = a.port;
        thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                publish(port, "steady", "tick", &n.to_string());
                n += 1;
                thread::sleep(Duration::from_millis(50));
            }
            n
        })
    };
    thread::sleep(Duration::from_millis(500));

    let accepted = set.failover();
    let promoted = Instant::now();
    eprintln!(
        "sentinels named the replica {:?} after SENTINEL FAILOVER was accepted",
        promoted - accepted
    );
    // Both nodes' pub/sub connections reach the new master well before Sentinel demotes
    // the old one (about 10 s later): the +switch-master event moved them.
    let mut subscribed = -1;
    assert!(
        eventually(Duration::from_secs(5), || {
            subscribed = numsub(&set, new_master, BROADCAST);
            subscribed == 2
        }),
        "5 s after the failover, {subscribed} nodes subscribed on the new master"
    );
    let moved = accepted.elapsed();
    wait_linked(&a, &b);
    let a_to_b = accepted.elapsed();
    wait_linked(&b, &a);
    let b_to_a = accepted.elapsed();
    eprintln!(
        "from SENTINEL FAILOVER: both nodes subscribed on the new master after {moved:?}, \
         A->B delivery after {a_to_b:?}, B->A after {b_to_a:?}"
    );
    assert!(
        b_to_a < Duration::from_secs(10),
        "cross-node delivery resumed only {b_to_a:?} after the failover"
    );
    // The old master, still a master until Sentinel demotes it, has none of ours left.
    assert!(
        eventually(Duration::from_secs(2), || numsub(
            &set, old_master, BROADCAST
        ) == 0),
        "a node is still subscribed on the old master"
    );

    // The stream: every tick reached A's subscriber, in order (local delivery never
    // depends on Redis); B's saw no tick twice or out of order, and the latest ones.
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let sent = publisher.join().expect("publisher thread");
    let ticks = |ws: &mut Ws| -> Vec<u32> {
        frames_for(ws, Duration::from_millis(1000))
            .iter()
            .filter(|v| v["event"] == "tick")
            .filter_map(|v| v["data"].as_str()?.parse().ok())
            .collect()
    };
    let on_a = ticks(&mut steady_a);
    assert_eq!(on_a, (0..sent).collect::<Vec<_>>(), "local ticks on node A");
    let on_b = ticks(&mut steady_b);
    assert!(
        on_b.windows(2).all(|w| w[0] < w[1]),
        "ticks on node B repeated or reordered: {on_b:?}"
    );
    assert_eq!(
        on_b.last(),
        Some(&(sent - 1)),
        "node B missed the last tick: {on_b:?}"
    );
    eprintln!("ticks: {sent} sent on A, {} reached B", on_b.len());

    // Presence: still one member per user on both nodes, nobody announced again or
    // removed, and a new join is announced once.
    let users = format!("/apps/app-id/channels/{channel}/users");
    for (which, server) in [("A", &a), ("B", &b)] {
        let mut last = Value::Null;
        assert!(
            eventually(CONVERGE, || {
                last = signed_get(server.port, &users, &[]);
                user_ids(&last) == ["carol", "watch-a", "watch-b"]
            }),
            "/users via node {which} after the failover: {last}"
        );
    }
    let (mut dave, id) = Ws::pusher(b.port);
    join_presence(&mut dave, &id, channel, "dave");
    for (which, ws) in [("A", &mut watch_a), ("B", &mut watch_b)] {
        let seen = frames_for(ws, Duration::from_millis(1500));
        assert_eq!(
            member_events(&seen, channel),
            vec![member("added", "dave")],
            "watcher on node {which} from before the failover until after dave joined: {seen:?}"
        );
    }
    for (which, server) in [("A", &a), ("B", &b)] {
        let mut last = Value::Null;
        assert!(
            eventually(CONVERGE, || {
                last = signed_get(server.port, &users, &[]);
                user_ids(&last) == ["carol", "dave", "watch-a", "watch-b"]
            }),
            "/users via node {which} after dave joined: {last}"
        );
        assert_eq!(
            metric(server.metrics_port.expect("metrics"), "corecast_redis_up"),
            Some(1.0),
            "node {which}"
        );
    }
    // The roster lives on the new master.
    let key = format!("corecast:{{app-id}}:presence:{channel}");
    let mut in_redis: Vec<String> = match set.command(new_master, &["HKEYS", &key]) {
        Ok(Reply::Array(items)) => items
            .iter()
            .filter_map(|i| i.text().map(str::to_owned))
            .collect(),
        other => panic!("HKEYS {key} on the new master: {other:?}"),
    };
    in_redis.sort();
    assert_eq!(
        in_redis,
        ["carol", "dave", "watch-a", "watch-b"],
        "{key} on the new master"
    );
}

/// A corecast process whose log lines are kept for the test.
struct LoggedNode {
    port: u16,
    metrics_port: u16,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl LoggedNode {
    fn start(env: &[(&str, &str)]) -> LoggedNode {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_corecast"));
        cmd.arg("start")
            .env("SOKETI_PORT", "0")
            .env("SOKETI_HOST", "127.0.0.1")
            .env("SOKETI_METRICS_ENABLED", "true")
            .env("SOKETI_METRICS_SERVER_PORT", "0")
            .env("CORECAST_SHARDS", "2")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn corecast");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        // Killed on drop from here on, whatever fails below.
        let mut node = LoggedNode {
            port: 0,
            metrics_port: 0,
            child,
            log,
        };
        let port_after = |log: &Mutex<Vec<String>>, tag: &str| -> Option<u16> {
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find_map(|l| l.strip_prefix(tag)?.rsplit(':').next()?.trim().parse().ok())
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.port == 0 || node.metrics_port == 0 {
            assert!(Instant::now() < deadline, "node did not report its ports");
            thread::sleep(Duration::from_millis(20));
            node.port = port_after(&node.log, "corecast: listening on ").unwrap_or(0);
            node.metrics_port = port_after(&node.log, "corecast: metrics on ").unwrap_or(0);
        }
        let port = node.port;
        assert!(
            eventually(Duration::from_secs(5), || {
                http(port, "GET", "/ready", &[], b"").is_ok_and(|(s, _)| s == 200)
            }),
            "node never became ready"
        );
        node
    }

    fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

impl Drop for LoggedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn unknown_instance_name_keeps_local_delivery_says_why_once_and_stays_down() {
    let set = Sentinels::start(1);
    // First a sentinel that is not there, then the real one: both are asked, each retry.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let real = set.sentinel_ports[0];
    let sentinels =
        format!(r#"[{{"host":"127.0.0.1","port":{dead}}},{{"host":"127.0.0.1","port":{real}}}]"#);
    let wrong = format!("not-{NAME}");
    let node = LoggedNode::start(&[
        ("SOKETI_ADAPTER_DRIVER", "redis"),
        ("SOKETI_DB_REDIS_SENTINELS", &sentinels),
        ("SOKETI_DB_REDIS_INSTANCE_NAME", &wrong),
    ]);

    // Local clients are served.
    let (mut sub, _) = Ws::pusher(node.port);
    sub.subscribe("local");
    publish(node.port, "local", "here", "x");
    wait_event(&mut sub, Duration::from_secs(3), |v| v["event"] == "here")
        .unwrap_or_else(|seen| panic!("local publish not delivered: {seen:?}"));

    // Several retries later: down, and said once, naming the instance and both sentinels.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        assert_eq!(
            metric(node.metrics_port, "corecast_redis_up"),
            Some(0.0),
            "corecast_redis_up after {:?}",
            started.elapsed()
        );
        thread::sleep(Duration::from_millis(250));
    }
    let said = node.lines_with(&format!("{wrong:?}"));
    assert_eq!(said.len(), 1, "lines naming the instance: {said:?}");
    let line = &said[0];
    for needle in [
        "redis unreachable",
        &format!("127.0.0.1:{dead}"),
        &format!("127.0.0.1:{real} does not know it"),
    ] {
        assert!(line.contains(needle), "{line:?} should contain {needle:?}");
    }
    let connects = metric(node.metrics_port, "corecast_redis_connects_total");
    assert_eq!(connects, Some(0.0), "connects");

    // Still serving.
    publish(node.port, "local", "still", "x");
    wait_event(&mut sub, Duration::from_secs(3), |v| v["event"] == "still")
        .unwrap_or_else(|seen| panic!("later local publish not delivered: {seen:?}"));
}
