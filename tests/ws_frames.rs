//! WebSocket framing on a live Pusher connection: masking, fragmentation, control frames,
//! and the close codes for frames that break RFC 6455.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Ws, masked_frame, start};

#[test]
fn fragmented_message_with_interleaved_ping_is_reassembled() {
    let server = start(1, &[]);
    let (mut ws, _) = Ws::pusher(server.port);
    let msg = br#"{"event":"pusher:subscribe","data":{"channel":"frag-test"}}"#;
    ws.send_frame(false, 1, &msg[..10]);
    ws.send_frame(true, 9, b"mid");
    ws.send_frame(false, 0, &msg[10..30]);
    ws.send_frame(true, 0, &msg[30..]);
    let pong = ws.read_frame();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (10, &b"mid"[..]));
    let ok = ws.read_json();
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(ok["channel"], "frag-test");
}

#[test]
fn frames_split_across_tcp_writes_are_decoded() {
    let server = start(1, &[]);
    let (mut ws, _) = Ws::pusher(server.port);
    ws.stream.set_nodelay(true).expect("nodelay");
    let mut bytes = masked_frame(true, 1, br#"{"event":"pusher:ping","data":{}}"#);
    bytes.extend(masked_frame(
        true,
        1,
        br#"{"event":"pusher:ping","data":{}}"#,
    ));
    for b in bytes {
        ws.stream.write_all(&[b]).expect("write");
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(ws.read_json()["event"], "pusher:pong");
    assert_eq!(ws.read_json()["event"], "pusher:pong");
}

#[test]
fn websocket_ping_is_answered_with_same_payload() {
    let server = start(1, &[]);
    let (mut ws, _) = Ws::pusher(server.port);
    ws.send_frame(true, 9, b"hello");
    let f = ws.read_frame();
    assert_eq!((f.opcode, f.payload), (10, b"hello".to_vec()));
}

fn assert_closed_with(ws: &mut Ws, code: u16) {
    let close = ws.read_until_closed().expect("a close frame");
    assert_eq!(
        close.close_code(),
        Some(code),
        "close payload {:?}",
        close.payload
    );
}

#[test]
fn unmasked_client_frame_closes_with_1002() {
    let server = start(1, &[]);
    let (mut ws, _) = Ws::pusher(server.port);
    let payload = br#"{"event":"pusher:ping","data":{}}"#;
    let mut frame = vec![0x81, payload.len() as u8];
    frame.extend_from_slice(payload);
    ws.stream.write_all(&frame).expect("write");
    assert_closed_with(&mut ws, 1002);
}

#[test]
fn invalid_utf8_text_closes_with_1007() {
    let server = start(1, &[]);
    let (mut ws, _) = Ws::pusher(server.port);
    ws.send_frame(true, 1, &[0x7b, 0xff, 0xfe, 0x7d]);
    assert_closed_with(&mut ws, 1007);
}

#[test]
fn oversized_message_closes_with_1009() {
    let server = start(1, &[("CORECAST_MAX_WS_MESSAGE_KB", "1")]);
    let (mut ws, _) = Ws::pusher(server.port);
    ws.send_frame(true, 1, &vec![b'x'; 4096]);
    assert_closed_with(&mut ws, 1009);
}

#[test]
fn reserved_opcode_closes_with_1002() {
    let server = start(1, &[]);
    let (mut ws, _) = Ws::pusher(server.port);
    ws.send_frame(true, 3, b"");
    assert_closed_with(&mut ws, 1002);
}

#[test]
fn client_close_is_echoed_with_its_code() {
    let server = start(1, &[]);
    let (mut ws, _) = Ws::pusher(server.port);
    ws.send_frame(true, 8, &[0x03, 0xe8]);
    assert_closed_with(&mut ws, 1000);
}

#[test]
fn protocol_error_on_one_socket_leaves_others_working() {
    let server = start(2, &[]);
    let mut healthy: Vec<Ws> = (0..4).map(|_| Ws::pusher(server.port).0).collect();
    let (mut bad, _) = Ws::pusher(server.port);
    bad.send_frame(true, 1, &[0xc0, 0xaf]);
    assert_closed_with(&mut bad, 1007);
    for ws in &mut healthy {
        ws.send_json(serde_json::json!({"event": "pusher:ping", "data": {}}));
        assert_eq!(ws.read_json()["event"], "pusher:pong");
    }
}

#[test]
fn binary_frames_and_bad_json_get_errors_without_closing() {
    let server = start(1, &[]);
    let (mut ws, _) = Ws::pusher(server.port);
    ws.send_frame(true, 2, b"\x00\x01");
    assert_eq!(ws.read_json()["event"], "pusher:error");
    ws.send_text("{not json");
    assert_eq!(ws.read_json()["event"], "pusher:error");
    ws.send_text(r#"{"event":"pusher:subscribe","data":{}}"#);
    assert_eq!(ws.read_json()["event"], "pusher:error");
    ws.send_json(serde_json::json!({"event": "pusher:ping", "data": {}}));
    assert_eq!(ws.read_json()["event"], "pusher:pong");
}
