//! Webhooks decided for the whole cluster: with two nodes on one Redis, a channel is
//! occupied once and vacated once, and a presence member is added and removed once,
//! however the sockets are spread. A real HTTP receiver collects the webhooks.

mod common;

use std::time::{Duration, Instant};

use common::receiver::{self, Requests};
use common::redis_server::RedisServer;
use common::rest::{KEY, SECRET, hmac_hex, post};
use common::{Ws, start};
use serde_json::json;

fn count(seen: &Requests, name: &str, detail: &str) -> usize {
    receiver::events(seen)
        .iter()
        .filter(|(n, d)| n == name && d == detail)
        .count()
}

fn settle(seen: &Requests, name: &str, detail: &str, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(8);
    while count(seen, name, detail) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Give duplicates a moment to show up.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count(seen, name, detail),
        want,
        "{name} {detail}: {:?}",
        receiver::events(seen)
    );
}

fn join(ws: &mut Ws, socket_id: &str, channel: &str, user: &str) {
    let data = json!({"user_id": user}).to_string();
    let auth = format!(
        "{KEY}:{}",
        hmac_hex(SECRET, &format!("{socket_id}:{channel}:{data}"))
    );
    ws.send_json(json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth, "channel_data": data}}));
    ws.read_event("pusher_internal:subscription_succeeded");
}

#[test]
fn occupancy_and_membership_webhooks_fire_once_for_the_cluster() {
    let redis = RedisServer::start();
    let (hook_port, seen) = receiver::start();
    let hooks = json!([{"url": format!("http://127.0.0.1:{hook_port}/hook"),
        "event_types": ["channel_occupied", "channel_vacated", "member_added", "member_removed"]}])
    .to_string();
    let rport = redis.port.to_string();
    let env = [
        ("SOKETI_ADAPTER_DRIVER", "redis"),
        ("SOKETI_DB_REDIS_PORT", rport.as_str()),
        ("SOKETI_DEFAULT_APP_WEBHOOKS", hooks.as_str()),
    ];
    let a = start(2, &env);
    let b = start(2, &env);
    // Both bridges must be connected before the first subscription counts.
    let (mut probe, _) = Ws::pusher(b.port);
    probe.subscribe("probe");
    probe
        .stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let linked = (0..50).any(|_| {
        let body = json!({"name": "p", "channel": "probe", "data": "x"}).to_string();
        post(a.port, "/apps/app-id/events", &body);
        probe.try_read_frame().is_ok()
    });
    assert!(linked, "nodes never linked");

    let mut socks: Vec<Ws> = Vec::new();
    for server in [&a, &b, &a, &b] {
        let (mut ws, _) = Ws::pusher(server.port);
        ws.subscribe("room-1");
        socks.push(ws);
    }
    settle(&seen, "channel_occupied", "room-1", 1);
    socks.truncate(1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count(&seen, "channel_vacated", "room-1"),
        0,
        "still occupied on node A"
    );
    socks.clear();
    settle(&seen, "channel_vacated", "room-1", 1);

    let mut members: Vec<Ws> = Vec::new();
    for server in [&a, &b, &b] {
        let (mut ws, id) = Ws::pusher(server.port);
        join(&mut ws, &id, "presence-team", "ann");
        members.push(ws);
    }
    settle(&seen, "member_added", "presence-team/ann", 1);
    members.clear();
    settle(&seen, "member_removed", "presence-team/ann", 1);
}
