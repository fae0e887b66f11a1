//! Webhooks decided for the whole cluster: with two nodes on one Redis, a channel is
//! occupied once and vacated once, and a presence member is added and removed once,
//! however the sockets are spread. A real HTTP receiver collects the webhooks.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::rest::{KEY, SECRET, hmac_hex, post};
use common::{Ws, start};
use serde_json::{Value, json};

/// Every webhook event received: its name and `channel[/user_id]`.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// Accepts webhook POSTs and keeps every event name with its channel.
fn receiver() -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let body = loop {
                let Ok(n) = stream.read(&mut chunk) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break Some(buf[end + 4..end + 4 + len].to_vec());
                }
            };
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if let Some(body) = body
                && let Ok(v) = serde_json::from_slice::<Value>(&body)
            {
                let mut seen = keep
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for e in v["events"].as_array().into_iter().flatten() {
                    let name = e["name"].as_str().unwrap_or_default().to_owned();
                    let detail = format!(
                        "{}{}",
                        e["channel"].as_str().unwrap_or_default(),
                        e["user_id"]
                            .as_str()
                            .map(|u| format!("/{u}"))
                            .unwrap_or_default()
                    );
                    seen.push((name, detail));
                }
            }
        }
    });
    (port, seen)
}

fn count(seen: &Mutex<Vec<(String, String)>>, name: &str, detail: &str) -> usize {
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|(n, d)| n == name && d == detail)
        .count()
}

fn settle(seen: &Mutex<Vec<(String, String)>>, name: &str, detail: &str, want: usize) {
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
        seen.lock().map(|s| s.clone()).unwrap_or_default()
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
    let (hook_port, seen) = receiver();
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
