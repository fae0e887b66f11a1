//! The HTTP upgrade on `/app/{key}`: the RFC 6455 handshake and Pusher's refusals.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Ws, start};

fn raw_response(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn upgrade_answers_101_and_connection_established() {
    let server = start(2, &[]);
    let (_a, id_a) = Ws::pusher(server.port);
    let (_b, id_b) = Ws::pusher(server.port);
    let pattern = |id: &str| {
        let (x, y) = id.split_once('.').expect("dot");
        !x.is_empty() && !y.is_empty() && x.bytes().chain(y.bytes()).all(|b| b.is_ascii_digit())
    };
    assert!(pattern(&id_a) && pattern(&id_b), "{id_a} {id_b}");
    assert_ne!(id_a, id_b, "socket ids are unique");
}

#[test]
fn connection_established_carries_activity_timeout() {
    let server = start(1, &[]);
    let mut ws = Ws::connect(server.port, "/app/app-key?protocol=7");
    let hello = ws.read_json();
    let data: serde_json::Value =
        serde_json::from_str(hello["data"].as_str().expect("str")).expect("json");
    assert_eq!(data["activity_timeout"], 120);
}

#[test]
fn handshake_without_key_is_400_and_wrong_version_is_426() {
    let server = start(1, &[]);
    let no_key = "GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                  Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let resp = raw_response(server.port, no_key);
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let old = "GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
               Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
               Sec-WebSocket-Version: 8\r\n\r\n";
    let resp = raw_response(server.port, old);
    assert!(resp.starts_with("HTTP/1.1 426"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{resp}"
    );
}

#[test]
fn upgrade_outside_app_path_is_404() {
    let server = start(1, &[]);
    let resp = raw_response(server.port, &common::upgrade_request("/nope/app-key"));
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
}

fn refused_with(port: u16, path: &str) -> (u64, Option<u16>) {
    let mut ws = Ws::connect(port, path);
    let err = ws.read_json();
    assert_eq!(err["event"], "pusher:error", "{err}");
    let code = err["data"]["code"].as_u64().expect("numeric code");
    let close = ws.read_until_closed().and_then(|f| f.close_code());
    (code, close)
}

#[test]
fn unknown_app_key_gets_4001_then_close() {
    let server = start(1, &[]);
    assert_eq!(
        refused_with(server.port, "/app/wrong-key?protocol=7"),
        (4001, Some(4001))
    );
}

#[test]
fn missing_or_old_protocol_gets_4007_and_garbage_4006() {
    let server = start(1, &[]);
    assert_eq!(
        refused_with(server.port, "/app/app-key"),
        (4007, Some(4007))
    );
    assert_eq!(
        refused_with(server.port, "/app/app-key?protocol=6"),
        (4007, Some(4007))
    );
    assert_eq!(
        refused_with(server.port, "/app/app-key?protocol=seven"),
        (4006, Some(4006))
    );
}
