//! Support for the webhook queue tests: the environment of a node on the redis queue,
//! events that make webhooks, metrics, signatures, and Redis looked at with `redis-cli`.
#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use super::receiver::{Received, Requests};
use super::rest::{KEY, SECRET, hmac_hex};
use super::{Server, Ws};

/// The queue's stream keys with no key prefix.
pub const DEAD: &str = "{corecast:webhooks}:dead";

/// `SOKETI_DEFAULT_APP_WEBHOOKS` for occupancy webhooks to `port`.
pub fn hooks(port: u16) -> String {
    json!([{"url": format!("http://127.0.0.1:{port}/hook"),
        "event_types": ["channel_occupied", "channel_vacated"]}])
    .to_string()
}

/// Owned pairs for [`super::start`] on the redis queue at `redis_port`, with metrics and
/// without the vacate grace.
pub fn env(redis_port: u16, hooks: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("SOKETI_QUEUE_DRIVER", "redis"),
        ("SOKETI_DB_REDIS_PORT", &redis_port.to_string()),
        ("SOKETI_DEFAULT_APP_WEBHOOKS", hooks),
        ("SOKETI_METRICS_ENABLED", "true"),
        // Vacated webhooks go out at once, so the order tests see them race occupied.
        ("CORECAST_WEBHOOK_VACATE_DELAY_MS", "0"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    env
}

/// Borrowed view of [`env`]'s pairs.
pub fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Occupies and vacates each of `channels` on `port`, in that order per channel.
pub fn occupy_and_vacate(port: u16, channels: &[String]) {
    let (mut ws, _) = Ws::pusher(port);
    for ch in channels {
        ws.subscribe(ch);
        ws.send_json(json!({"event": "pusher:unsubscribe", "data": {"channel": ch}}));
    }
    // A ping answered means the unsubscribes before it were handled.
    ws.send_json(json!({"event": "pusher:ping", "data": {}}));
    ws.read_event("pusher:pong");
}

/// The value of an unlabelled sample in `server`'s scrape, 0 when absent.
pub fn metric(server: &Server, name: &str) -> f64 {
    let Some(port) = server.metrics_port else {
        return 0.0;
    };
    let Ok((200, body)) = super::http(port, "GET", "/metrics", &[], b"") else {
        return 0.0;
    };
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; panics with `what`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every request kept by the receiver, copied.
pub fn requests(seen: &Requests) -> Vec<Received> {
    seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Asserts every request carries the app key and a valid signature of its body.
pub fn assert_signed(seen: &Requests) {
    for r in requests(seen) {
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.header("x-pusher-key"), Some(KEY), "{body}");
        assert_eq!(
            r.header("x-pusher-signature"),
            Some(hmac_hex(SECRET, &body).as_str()),
            "bad signature on {body}"
        );
    }
}

/// `redis-cli -p port args...`, its output lines.
pub fn redis_cli(port: u16, args: &[&str]) -> Vec<String> {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli runs (apt-get install -y redis-tools)");
    assert!(out.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}
