//! Per-app quotas and server-wide connection limits, observed as a client sees them.

mod common;

use std::time::Duration;

use common::rest::post;
use common::{Ws, http, start};
use serde_json::json;

fn refused_code(port: u16) -> Option<u64> {
    let mut ws = Ws::connect(port, "/app/app-key?protocol=7");
    let first = ws.read_json();
    (first["event"] == "pusher:error")
        .then(|| first["data"]["code"].as_u64())
        .flatten()
}

#[test]
fn app_connection_quota_is_exact_across_shards_and_frees_on_disconnect() {
    let server = start(2, &[("SOKETI_DEFAULT_APP_MAX_CONNS", "5")]);
    let mut open: Vec<Ws> = (0..5).map(|_| Ws::pusher(server.port).0).collect();
    for _ in 0..3 {
        assert_eq!(refused_code(server.port), Some(4004));
    }
    drop(open.pop());
    std::thread::sleep(Duration::from_millis(300));
    let (_again, _) = Ws::pusher(server.port);
}

#[test]
fn server_connection_cap_answers_4100() {
    let server = start(2, &[("CORECAST_MAX_CONNECTIONS", "3")]);
    let _open: Vec<Ws> = (0..3).map(|_| Ws::pusher(server.port).0).collect();
    assert_eq!(refused_code(server.port), Some(4100));
}

#[test]
fn handshake_rate_limit_answers_4100_past_the_burst() {
    let server = start(
        1,
        &[
            ("CORECAST_MAX_HANDSHAKES_PER_SEC", "1"),
            ("CORECAST_HANDSHAKE_BURST", "3"),
        ],
    );
    let codes: Vec<Option<u64>> = (0..6).map(|_| refused_code(server.port)).collect();
    assert_eq!(codes.iter().filter(|c| c.is_none()).count(), 3, "{codes:?}");
    assert!(codes.iter().flatten().all(|&c| c == 4100), "{codes:?}");
}

#[test]
fn backend_event_rate_gets_429_with_retry_after() {
    let server = start(2, &[("SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC", "3")]);
    let body = json!({"name": "e", "channel": "c", "data": "x"}).to_string();
    let statuses: Vec<u16> = (0..8)
        .map(|_| post(server.port, "/apps/app-id/events", &body).0)
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().filter(|&&s| s == 200).count() <= 6,
        "{statuses:?}"
    );
    let target = common::rest::signed_post(
        "/apps/app-id/events",
        body.as_bytes(),
        "app-key",
        "app-secret",
        common::rest::now(),
    );
    let mut saw_retry_after = false;
    for _ in 0..5 {
        let raw = raw_post(server.port, &target, &body);
        if raw.starts_with("HTTP/1.1 429") {
            saw_retry_after = raw.to_ascii_lowercase().contains("retry-after: 1");
            break;
        }
    }
    assert!(saw_retry_after, "a 429 carries Retry-After");
}

#[test]
fn read_request_rate_gets_429() {
    let server = start(1, &[("SOKETI_DEFAULT_APP_MAX_READ_REQ_PER_SEC", "2")]);
    let statuses: Vec<u16> = (0..5)
        .map(|_| {
            let path = "/apps/app-id/channels";
            let q = format!(
                "auth_key=app-key&auth_timestamp={}&auth_version=1.0",
                common::rest::now()
            );
            let sig = common::rest::hmac_hex("app-secret", &format!("GET\n{path}\n{q}"));
            http(
                server.port,
                "GET",
                &format!("{path}?{q}&auth_signature={sig}"),
                &[],
                b"",
            )
            .expect("http")
            .0
        })
        .collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
}

fn raw_post(port: u16, target: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let req = format!(
        "POST {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
