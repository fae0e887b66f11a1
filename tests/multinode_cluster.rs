//! Nodes over a Redis Cluster (`SOKETI_ADAPTER_REDIS_CLUSTER_MODE`, seed nodes in
//! `SOKETI_DB_REDIS_CLUSTER_NODES`): the multi-node behaviours hold with the slot map,
//! sharded pub/sub spreads channels over the masters, and the nodes keep working through
//! a slot moved between masters and a master failing over; a cluster without sharded
//! pub/sub falls back to classic pub/sub and says so; seeds that do not answer are a
//! clear error, said once.

mod common;
#[path = "common/redis_cluster.rs"]
mod redis_cluster;
#[path = "common/redis_sentinel.rs"]
mod redis_sentinel;

use std::thread;
use std::time::{Duration, Instant};

use common::rest::{post, signed_get};
use common::{
    Server, Ws, frames_for, join_presence, signed_in, start, subscribe_private, user_ids,
    wait_event, wait_linked,
};
use redis_cluster::{Cluster, Shape};
use redis_sentinel::Reply;
use serde_json::{Value, json};

/// How long a read may take to reflect another node (heartbeats are 2 s).
const CONVERGE: Duration = Duration::from_secs(8);
/// The broadcast channel every node listens on (no prefix configured).
const BROADCAST: &str = "corecast#broadcast";

/// A node with 2 shards on `cluster`. The single-server address points nowhere: in
/// cluster mode only the seeds are used.
fn node(cluster: &Cluster, extra: &[(&str, &str)]) -> Server {
    let seeds = cluster.env_value();
    let mut env = vec![
        ("SOKETI_ADAPTER_DRIVER", "redis"),
        ("SOKETI_ADAPTER_REDIS_CLUSTER_MODE", "true"),
        ("SOKETI_DB_REDIS_CLUSTER_NODES", seeds.as_str()),
        ("SOKETI_DB_REDIS_PORT", "1"),
        ("SOKETI_METRICS_ENABLED", "true"),
        ("SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES", "true"),
    ];
    env.extend_from_slice(extra);
    start(2, &env)
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

/// The value of an unlabelled sample in `server`'s Prometheus scrape.
fn metric(server: &Server, name: &str) -> Option<f64> {
    let port = server.metrics_port?;
    let (status, body) = common::http(port, "GET", "/metrics", &[], b"").ok()?;
    if status != 200 {
        return None;
    }
    String::from_utf8_lossy(&body).lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series == name).then(|| value.parse().ok()).flatten()
    })
}

/// Reads `ws` until its member events for `channel` are `want` (or 10 s pass), then a
/// little longer to see that no other member event follows.
fn members_seen(ws: &mut Ws, channel: &str, want: &[(String, String)]) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while member_events(&seen, channel).len() < want.len() && Instant::now() < deadline {
        seen.extend(frames_for(ws, Duration::from_millis(100)));
    }
    seen.extend(frames_for(ws, Duration::from_millis(300)));
    assert_eq!(member_events(&seen, channel), want, "{seen:?}");
}

fn added(user: &str) -> (String, String) {
    ("added".to_owned(), user.to_owned())
}

/// Subscribers of the pub/sub `channel`: `(sharded on its slot's master, classic summed
/// over the masters)`.
fn listeners(cluster: &Cluster, channel: &str) -> (i64, i64) {
    let count = |reply: std::io::Result<Reply>| match reply {
        Ok(Reply::Array(items)) => match items.get(1) {
            Some(Reply::Int(n)) => *n,
            _ => -1,
        },
        _ => -1,
    };
    let owner = cluster.owner(cluster.slot(channel));
    let sharded = count(cluster.command(owner, &["PUBSUB", "SHARDNUMSUB", channel]));
    let classic = cluster
        .masters()
        .iter()
        .map(|&p| count(cluster.command(p, &["PUBSUB", "NUMSUB", channel])))
        .sum();
    (sharded, classic)
}

/// A counter from `INFO` (`section`, `field:value` lines) on the node at `port`.
fn info_counter(cluster: &Cluster, port: u16, args: &[&str], field: &str) -> u64 {
    let text = match cluster.command(port, args) {
        Ok(reply) => reply.text().unwrap_or("").to_owned(),
        Err(e) => panic!("{args:?} on :{port}: {e}"),
    };
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map_or(0, |v| {
            // `cmdstat_x:calls=N,usec=...` or a plain number.
            let v = v.strip_prefix("calls=").unwrap_or(v);
            v.split(',')
                .next()
                .unwrap_or("0")
                .trim()
                .parse()
                .unwrap_or(0)
        })
}

/// Per master, publishes it handled (`SPUBLISH` and `PUBLISH` calls) and pub/sub messages
/// it sent over the cluster bus so far.
fn pubsub_counts(cluster: &Cluster) -> Vec<(u64, u64)> {
    let bus = |p: u16| {
        info_counter(
            cluster,
            p,
            &["CLUSTER", "INFO"],
            "cluster_stats_messages_publish_sent",
        ) + info_counter(
            cluster,
            p,
            &["CLUSTER", "INFO"],
            "cluster_stats_messages_publishshard_sent",
        )
    };
    cluster
        .masters()
        .iter()
        .map(|&p| {
            let calls = info_counter(cluster, p, &["INFO", "commandstats"], "cmdstat_spublish")
                + info_counter(cluster, p, &["INFO", "commandstats"], "cmdstat_publish");
            (calls, bus(p))
        })
        .collect()
}

/// [`pubsub_counts`] during `f`.
fn pubsub_load(cluster: &Cluster, f: impl FnOnce()) -> Vec<(u64, u64)> {
    let before = pubsub_counts(cluster);
    f();
    pubsub_counts(cluster)
        .into_iter()
        .zip(before)
        .map(|((c, b), (c0, b0))| (c - c0, b - b0))
        .collect()
}

/// Publishes `per_channel` events on each of `channels` via `via` and waits until
/// `sub` (subscribed to all of them on another node) got them all.
fn publish_round(via: &Server, channels: &[String], per_channel: usize, sub: &mut Ws) {
    for n in 0..per_channel {
        for c in channels {
            publish(via.port, c, "load", &n.to_string());
        }
    }
    let want = channels.len() * per_channel;
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while got < want {
        assert!(Instant::now() < deadline, "{got} of {want} events arrived");
        got += frames_for(sub, Duration::from_millis(200))
            .iter()
            .filter(|v| v["event"] == "load")
            .count();
    }
}

/// The pub/sub channel of one Pusher channel of the default app (interest routing).
fn topic(channel: &str) -> String {
    format!("corecast#ch#app-id#{channel}")
}

/// 20 ordered publishes on `via` (and one excluding `subs[1]`) reach every subscriber
/// once, in order.
fn ordered_publishes_reach_everyone(via: &Server, channel: &str, subs: &mut [(Ws, String)]) {
    let excluded = subs[1].1.clone();
    let body =
        json!({"name": "skip", "channel": channel, "data": "x", "socket_id": excluded}).to_string();
    assert_eq!(post(via.port, "/apps/app-id/events", &body).0, 200);
    for n in 0..20 {
        publish(via.port, channel, "seq", &n.to_string());
    }
    for (i, (ws, _)) in subs.iter_mut().enumerate() {
        if i != 1 {
            let skip = wait_event(ws, Duration::from_secs(5), |v| v["event"] == "skip")
                .unwrap_or_else(|seen| panic!("subscriber {i} missed 'skip': {seen:?}"));
            assert_eq!(skip["channel"], channel);
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
}

fn users_everywhere(nodes: &[&Server], channel: &str, want: &[&str]) {
    let path = format!("/apps/app-id/channels/{channel}/users");
    for server in nodes {
        let mut last = Value::Null;
        assert!(
            eventually(CONVERGE, || {
                last = signed_get(server.port, &path, &[]).1;
                user_ids(&last) == want
            }),
            "/users via :{}: {last} (want {want:?})",
            server.port
        );
    }
}

#[test]
fn over_a_redis_cluster_every_multinode_behaviour_holds_with_sharded_pubsub() {
    let cluster = Cluster::start(Shape::masters(3));
    let a = node(&cluster, &[]);
    let b = node(&cluster, &[]);
    link(&a, &b);

    // Sharded pub/sub: both nodes listen on the broadcast channel's master, none with
    // classic SUBSCRIBE.
    assert_eq!(listeners(&cluster, BROADCAST), (2, 0), "{BROADCAST}");
    for server in [&a, &b] {
        assert_eq!(metric(server, "corecast_redis_sharded_pubsub"), Some(1.0));
    }

    // Publishes: every subscriber on both nodes once, in order, with exclusion.
    let mut subs: Vec<(Ws, String)> = Vec::new();
    for server in [&a, &b, &a, &b] {
        let (mut ws, id) = Ws::pusher(server.port);
        ws.subscribe("orders");
        subs.push((ws, id));
    }
    ordered_publishes_reach_everyone(&a, "orders", &mut subs);
    assert_eq!(listeners(&cluster, &topic("orders")), (2, 0));

    // Channels spread over the masters: each channel's topic is listened to on the
    // master of its own slot.
    let channels: Vec<String> = (0..6).map(|i| format!("spread-{i}")).collect();
    let mut spread = Vec::new();
    for name in &channels {
        spread.push(Ws::pusher(b.port).0);
        spread.last_mut().expect("pushed").subscribe(name);
    }
    let mut owners: Vec<u16> = channels
        .iter()
        .map(|c| cluster.owner(cluster.slot(&topic(c))))
        .collect();
    for name in &channels {
        assert_eq!(listeners(&cluster, &topic(name)), (1, 0), "{name}");
    }
    owners.sort_unstable();
    owners.dedup();
    assert!(owners.len() >= 2, "6 topics on {owners:?}");

    // Pub/sub load: each publish is handled by its channel's master alone, and none is
    // copied over the cluster bus.
    let (mut all, _) = Ws::pusher(b.port);
    for name in &channels {
        all.subscribe(name);
    }
    let load = pubsub_load(&cluster, || publish_round(&a, &channels, 10, &mut all));
    let expected: Vec<u64> = cluster
        .masters()
        .iter()
        .map(|&m| {
            let mine = channels
                .iter()
                .filter(|c| cluster.owner(cluster.slot(&topic(c))) == m)
                .count();
            10 * mine as u64
        })
        .collect();
    eprintln!("60 events over 6 channels, sharded: (publishes, bus messages) per master {load:?}");
    let calls: Vec<u64> = load.iter().map(|(c, _)| *c).collect();
    assert_eq!(calls, expected, "publishes per master");
    assert!(
        load.iter().all(|(_, bus)| *bus == 0),
        "bus messages: {load:?}"
    );

    // Client events on a private channel cross nodes, not echoed.
    let channel = "private-chat";
    let (mut on_a, id) = Ws::pusher(a.port);
    subscribe_private(&mut on_a, &id, channel);
    let (mut on_b, id) = Ws::pusher(b.port);
    subscribe_private(&mut on_b, &id, channel);
    on_a.send_json(json!({"event": "client-typing", "channel": channel, "data": {"t": 1}}));
    wait_event(&mut on_b, Duration::from_secs(5), |v| {
        v["event"] == "client-typing"
    })
    .unwrap_or_else(|seen| panic!("client event from A not on B: {seen:?}"));
    let echo = frames_for(&mut on_a, Duration::from_millis(300));
    assert!(echo.is_empty(), "client event echoed: {echo:?}");

    // Presence: a user with sockets on both nodes is one member, announced once; the
    // roster is in the cluster, on the master of the app's hash tag.
    let channel = "presence-room";
    let (mut watcher, id) = Ws::pusher(a.port);
    join_presence(&mut watcher, &id, channel, "watcher");
    let (mut alice_b, id) = Ws::pusher(b.port);
    join_presence(&mut alice_b, &id, channel, "alice");
    let (mut alice_a, id) = Ws::pusher(a.port);
    join_presence(&mut alice_a, &id, channel, "alice");
    members_seen(&mut watcher, channel, &[added("alice")]);
    users_everywhere(&[&a, &b], channel, &["alice", "watcher"]);
    let key = format!("corecast:{{app-id}}:presence:{channel}");
    let holder = cluster.owner(cluster.slot(&key));
    match cluster.command(holder, &["HLEN", &key]) {
        Ok(Reply::Int(2)) => {}
        other => panic!("HLEN {key} on :{holder}: {other:?}"),
    }

    // Counts: REST reads sum both nodes.
    for server in [&a, &b] {
        let mut last = Value::Null;
        assert!(
            eventually(CONVERGE, || {
                last = signed_get(
                    server.port,
                    "/apps/app-id/channels/orders",
                    &[("info", "subscription_count")],
                )
                .1;
                last["subscription_count"] == 4
            }),
            "GET /channels/orders via :{}: {last}",
            server.port
        );
        let list = signed_get(
            server.port,
            "/apps/app-id/channels",
            &[("info", "subscription_count")],
        )
        .1;
        assert_eq!(
            list["channels"]["orders"]["subscription_count"], 4,
            "GET /channels via :{}: {list}",
            server.port
        );
        let presence = signed_get(
            server.port,
            "/apps/app-id/channels",
            &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        )
        .1;
        assert_eq!(
            presence["channels"]["presence-room"]["user_count"], 2,
            "GET /channels?filter_by_prefix=presence- via :{}: {presence}",
            server.port
        );
    }

    // User events and termination reach the user's sockets on the other node.
    let mut u1_a = signed_in(a.port, "u1");
    let mut u1_b = signed_in(b.port, "u1");
    let body = json!({"name": "note", "channel": "#server-to-user-u1", "data": "hi"}).to_string();
    assert_eq!(post(a.port, "/apps/app-id/events", &body).0, 200);
    for ws in [&mut u1_a, &mut u1_b] {
        wait_event(ws, Duration::from_secs(5), |v| v["event"] == "note")
            .unwrap_or_else(|seen| panic!("u1 missed the note: {seen:?}"));
    }
    let (status, reply) = post(a.port, "/apps/app-id/users/u1/terminate_connections", "{}");
    assert_eq!(status, 200, "{reply}");
    u1_b.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let close = u1_b.read_until_closed().and_then(|f| f.close_code());
    assert_eq!(close, Some(4009), "u1's socket on node B");
}

#[test]
fn a_slot_moved_between_masters_mid_test_is_followed() {
    let cluster = Cluster::start(Shape::masters(3));
    let a = node(&cluster, &[]);
    let b = node(&cluster, &[]);
    link(&a, &b);
    let (mut sub_b, _) = Ws::pusher(b.port);
    sub_b.subscribe("moving");
    let channel = "presence-moving";
    let (mut watch_b, id) = Ws::pusher(b.port);
    join_presence(&mut watch_b, &id, channel, "watch-b");
    let (mut carol, id) = Ws::pusher(a.port);
    join_presence(&mut carol, &id, channel, "carol");
    members_seen(&mut watch_b, channel, &[added("carol")]);

    // Move the slots of the channel's topic, of the broadcast channel and of the app's
    // presence keys, each to another master.
    let masters = cluster.masters();
    let app_slot = cluster.slot("{app-id}");
    for name in [topic("moving"), BROADCAST.to_owned(), "{app-id}".to_owned()] {
        let slot = cluster.slot(&name);
        let from = cluster.owner(slot);
        let to = *masters
            .iter()
            .find(|&&m| m != from)
            .expect("another master");
        cluster.move_slot(slot, to);
        eprintln!("moved slot {slot} ({name}) from :{from} to :{to}");
    }
    let moved_at = Instant::now();

    // Cross-node delivery resumes on the moved slots, once per event, in order.
    let mut n = 0u32;
    let resumed = loop {
        publish(a.port, "moving", "tick", &n.to_string());
        n += 1;
        if wait_event(&mut sub_b, Duration::from_millis(200), |v| {
            v["event"] == "tick"
        })
        .is_ok()
        {
            break moved_at.elapsed();
        }
        assert!(
            moved_at.elapsed() < Duration::from_secs(15),
            "delivery did not resume"
        );
    };
    eprintln!("cross-node delivery resumed {resumed:?} after the slots moved");
    frames_for(&mut sub_b, Duration::from_millis(300));
    for i in 0..10 {
        publish(a.port, "moving", "after", &i.to_string());
    }
    let after: Vec<String> = frames_for(&mut sub_b, Duration::from_millis(1500))
        .iter()
        .filter(|v| v["event"] == "after")
        .filter_map(|v| v["data"].as_str().map(str::to_owned))
        .collect();
    let want: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(after, want, "events after the move");

    // Presence still answers from the moved slot: the roster kept, a new member announced
    // once on the other node.
    users_everywhere(&[&a, &b], channel, &["carol", "watch-b"]);
    let (mut dave, id) = Ws::pusher(a.port);
    join_presence(&mut dave, &id, channel, "dave");
    members_seen(&mut watch_b, channel, &[added("dave")]);
    // Redirections followed and pub/sub rounds restarted are counted.
    let redirects = metric(&a, "corecast_redis_redirects_total").unwrap_or(0.0);
    assert!(redirects >= 1.0, "redirects on node A: {redirects}");
    let rounds = metric(&b, "corecast_redis_subscribes_total").unwrap_or(0.0);
    assert!(rounds >= 2.0, "pub/sub rounds on node B: {rounds}");
    let key = format!("corecast:{{app-id}}:presence:{channel}");
    let holder = cluster.owner(app_slot);
    match cluster.command(holder, &["HLEN", &key]) {
        Ok(Reply::Int(3)) => {}
        other => panic!("HLEN {key} on the slot's new master :{holder}: {other:?}"),
    }
}

#[test]
fn a_master_failing_over_inside_the_cluster_is_survived() {
    let cluster = Cluster::start(Shape {
        masters: 3,
        replicas: 1,
        without_sharded_pubsub: false,
        password: None,
    });
    let a = node(&cluster, &[]);
    let b = node(&cluster, &[]);
    link(&a, &b);
    let (mut sub_b, _) = Ws::pusher(b.port);
    sub_b.subscribe("steady");
    let channel = "presence-failover";
    let (mut watch_b, id) = Ws::pusher(b.port);
    join_presence(&mut watch_b, &id, channel, "watch-b");
    let (mut carol, id) = Ws::pusher(a.port);
    join_presence(&mut carol, &id, channel, "carol");
    members_seen(&mut watch_b, channel, &[added("carol")]);

    // Fail over the master holding the app's presence keys and the broadcast channel's
    // slot (moved there first, so one failover hits both).
    let master = cluster.owner(cluster.slot("{app-id}"));
    let broadcast_slot = cluster.slot(BROADCAST);
    if cluster.owner(broadcast_slot) != master {
        cluster.move_slot(broadcast_slot, master);
    }
    let started = Instant::now();
    let promoted = cluster.failover(master);
    eprintln!(
        "replica :{promoted} took over from :{master} after {:?}",
        started.elapsed()
    );

    let mut n = 0u32;
    let resumed = loop {
        publish(a.port, "steady", "tick", &n.to_string());
        n += 1;
        if wait_event(&mut sub_b, Duration::from_millis(200), |v| {
            v["event"] == "tick"
        })
        .is_ok()
        {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "delivery did not resume"
        );
    };
    eprintln!("cross-node delivery resumed {resumed:?} after CLUSTER FAILOVER");
    link(&a, &b);

    // The roster survived on the promoted replica; a new member is announced once.
    users_everywhere(&[&a, &b], channel, &["carol", "watch-b"]);
    let (mut dave, id) = Ws::pusher(a.port);
    join_presence(&mut dave, &id, channel, "dave");
    members_seen(&mut watch_b, channel, &[added("dave")]);
    users_everywhere(&[&a, &b], channel, &["carol", "dave", "watch-b"]);
}

#[test]
fn without_sharded_pubsub_the_cluster_falls_back_to_classic_pubsub_and_says_so() {
    let cluster = Cluster::start(Shape {
        masters: 3,
        replicas: 0,
        without_sharded_pubsub: true,
        password: None,
    });
    let a = node(&cluster, &[]);
    let b = node(&cluster, &[]);
    link(&a, &b);
    let mut subs: Vec<(Ws, String)> = Vec::new();
    for server in [&a, &b, &a, &b] {
        let (mut ws, id) = Ws::pusher(server.port);
        ws.subscribe("orders");
        subs.push((ws, id));
    }
    ordered_publishes_reach_everyone(&b, "orders", &mut subs);

    // Classic pub/sub load: every publish is copied over the cluster bus to every other
    // server of the cluster.
    let channels: Vec<String> = (0..6).map(|i| format!("spread-{i}")).collect();
    let (mut all, _) = Ws::pusher(b.port);
    for name in &channels {
        all.subscribe(name);
    }
    let load = pubsub_load(&cluster, || publish_round(&a, &channels, 10, &mut all));
    eprintln!("60 events over 6 channels, classic: (publishes, bus messages) per master {load:?}");
    let calls: u64 = load.iter().map(|(c, _)| c).sum();
    let bus: u64 = load.iter().map(|(_, b)| b).sum();
    assert_eq!(calls, 60, "publishes: {load:?}");
    assert_eq!(bus, 60 * 2, "bus copies to the 2 other masters: {load:?}");
    let classic = cluster
        .masters()
        .iter()
        .map(
            |&p| match cluster.command(p, &["PUBSUB", "NUMSUB", BROADCAST]) {
                Ok(Reply::Array(items)) => match items.get(1) {
                    Some(Reply::Int(n)) => *n,
                    _ => 0,
                },
                _ => 0,
            },
        )
        .sum::<i64>();
    assert_eq!(classic, 2, "classic subscribers of {BROADCAST}");
    for server in [&a, &b] {
        let said = server.lines_with("no sharded pub/sub");
        assert_eq!(said.len(), 1, "node :{}: {said:?}", server.port);
        assert_eq!(metric(server, "corecast_redis_sharded_pubsub"), Some(0.0));
    }
}

#[test]
fn seeds_that_do_not_answer_keep_local_delivery_and_say_why_once() {
    let dead: Vec<u16> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a port")
                .port()
        })
        .collect();
    let seeds = format!(r#"["127.0.0.1:{}","127.0.0.1:{}"]"#, dead[0], dead[1]);
    let server = start(
        2,
        &[
            ("SOKETI_ADAPTER_DRIVER", "redis"),
            ("SOKETI_ADAPTER_REDIS_CLUSTER_MODE", "true"),
            ("SOKETI_DB_REDIS_CLUSTER_NODES", &seeds),
            ("SOKETI_METRICS_ENABLED", "true"),
        ],
    );
    let (mut sub, _) = Ws::pusher(server.port);
    sub.subscribe("local");
    publish(server.port, "local", "here", "x");
    wait_event(&mut sub, Duration::from_secs(3), |v| v["event"] == "here")
        .unwrap_or_else(|seen| panic!("local publish not delivered: {seen:?}"));
    // Several retries (backoff from 100 ms) later: said once, naming both seeds.
    thread::sleep(Duration::from_secs(3));
    let said = server.lines_with("no Redis Cluster node gave the slot map");
    assert_eq!(said.len(), 1, "{said:?}");
    for port in &dead {
        assert!(
            said[0].contains(&format!("127.0.0.1:{port}")),
            "{}",
            said[0]
        );
    }
    let metrics = server.metrics_port.expect("metrics port");
    let (_, body) = common::http(metrics, "GET", "/metrics", &[], b"").expect("scrape");
    let text = String::from_utf8_lossy(&body);
    assert!(text.lines().any(|l| l == "corecast_redis_up 0"), "{text}");
}

#[test]
fn shard_mode_on_a_single_redis_uses_sharded_pubsub() {
    let redis = common::redis_server::RedisServer::start();
    let port = redis.port.to_string();
    let env = [
        ("SOKETI_ADAPTER_DRIVER", "redis"),
        ("SOKETI_ADAPTER_REDIS_SHARD_MODE", "true"),
        ("SOKETI_DB_REDIS_PORT", port.as_str()),
    ];
    let a = start(2, &env);
    let b = start(2, &env);
    link(&a, &b);
    let mut subs: Vec<(Ws, String)> = Vec::new();
    for server in [&a, &b, &a, &b] {
        let (mut ws, id) = Ws::pusher(server.port);
        ws.subscribe("orders");
        subs.push((ws, id));
    }
    ordered_publishes_reach_everyone(&a, "orders", &mut subs);
    let count = |sub: &str, channel: &str| match redis_sentinel::command(
        redis.port,
        &["PUBSUB", sub, channel],
    ) {
        Ok(Reply::Array(items)) => items.get(1).cloned(),
        other => panic!("PUBSUB {sub} {channel}: {other:?}"),
    };
    assert_eq!(count("SHARDNUMSUB", BROADCAST), Some(Reply::Int(2)));
    assert_eq!(count("NUMSUB", BROADCAST), Some(Reply::Int(0)));
    assert_eq!(count("SHARDNUMSUB", &topic("orders")), Some(Reply::Int(2)));
}

#[test]
fn a_password_protected_cluster_works_with_the_password_and_says_why_without() {
    let cluster = Cluster::start(Shape {
        password: Some("cluster-secret"),
        ..Shape::masters(3)
    });
    let a = node(&cluster, &[("SOKETI_DB_REDIS_PASSWORD", "cluster-secret")]);
    let b = node(&cluster, &[("SOKETI_DB_REDIS_PASSWORD", "cluster-secret")]);
    link(&a, &b);
    let wrong = node(&cluster, &[("SOKETI_DB_REDIS_PASSWORD", "not-the-secret")]);
    let (mut sub, _) = Ws::pusher(wrong.port);
    sub.subscribe("local");
    publish(wrong.port, "local", "here", "x");
    wait_event(&mut sub, Duration::from_secs(3), |v| v["event"] == "here")
        .unwrap_or_else(|seen| panic!("local publish not delivered: {seen:?}"));
    thread::sleep(Duration::from_secs(2));
    let said = wrong.lines_with("no Redis Cluster node gave the slot map");
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("WRONGPASS"), "{}", said[0]);
    assert_eq!(metric(&wrong, "corecast_redis_up"), Some(0.0));
    assert_eq!(metric(&a, "corecast_redis_up"), Some(1.0));
}
