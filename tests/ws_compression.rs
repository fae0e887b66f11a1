//! permessage-deflate on a live server: what is negotiated, which subscribers get a
//! compressed frame and which the plain one, and that a compressed zip bomb from a
//! client is stopped at the message limit.

mod common;

use common::rest::post;
use common::{Frame, Server, Ws, masked_frame, start};
use corecast::ws::{Deflater, Inflater};
use serde_json::{Value, json};

const PATH: &str = "/app/app-key?protocol=7&client=js&version=8.4.0";
const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
const ANSWER: &str = "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
                      client_no_context_takeover";

fn compressing() -> Server {
    start(
        1,
        &[
            ("CORECAST_WS_COMPRESSION", "on"),
            ("SOKETI_METRICS_ENABLED", "true"),
        ],
    )
}

/// A Pusher connection that offered deflate (or not); returns it and the response head.
fn pusher(port: u16, offer: bool) -> (Ws, String) {
    let (mut ws, head) = Ws::connect_with(port, PATH, if offer { OFFER } else { "" });
    let hello = ws.read_frame();
    assert!(!hello.rsv1, "small frames go plain");
    assert_eq!(hello.json()["event"], "pusher:connection_established");
    (ws, head)
}

/// About 10 KB of ordinary JSON text, as an app would publish.
fn ordinary_data(len: usize) -> String {
    let words = [
        "order",
        "shipped",
        "customer",
        "warehouse",
        "delivery",
        "status",
        "updated",
        "payment",
        "received",
        "invoice",
        "pending",
        "address",
        "changed",
        "review",
    ];
    let mut items = Vec::new();
    let mut text_len = 0;
    let mut i = 7u32;
    while text_len < len {
        i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let a = words[(i >> 16) as usize % words.len()];
        let b = words[(i >> 8) as usize % words.len()];
        let item = json!({"id": i % 100_000, "note": format!("{a} {b} for item {}", i % 977)});
        text_len += item.to_string().len() + 1;
        items.push(item);
    }
    json!({ "items": items }).to_string()
}

fn publish(port: u16, channel: &str, data: &str) {
    let body = json!({"name": "big", "channel": channel, "data": data}).to_string();
    assert_eq!(post(port, "/apps/app-id/events", &body).0, 200);
}

fn inflate(frame: &Frame) -> Vec<u8> {
    assert!(frame.rsv1, "compressed");
    Inflater::default()
        .inflate(&frame.payload, 16 << 20)
        .expect("valid deflate")
        .to_vec()
}

/// A per-shard counter from `/metrics`, summed over its `shard` labels.
fn metric(server: &Server, name: &str) -> f64 {
    let port = server.metrics_port.expect("metrics enabled");
    let (_, body) = common::http(port, "GET", "/metrics", &[], b"").expect("scrape");
    let samples: Vec<f64> = String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(!samples.is_empty(), "{name} not exported");
    samples.iter().sum()
}

#[test]
fn a_large_event_arrives_compressed_and_inflates_to_the_plain_frame() {
    let server = compressing();
    let (mut deflated, head) = pusher(server.port, true);
    assert!(head.contains(ANSWER), "{head}");
    let (mut plain, head) = pusher(server.port, false);
    assert!(!head.contains("Sec-WebSocket-Extensions"), "{head}");
    deflated.subscribe("big");
    plain.subscribe("big");
    let data = ordinary_data(10_000);
    publish(server.port, "big", &data);
    let compressed = deflated.read_frame();
    let uncompressed = plain.read_frame();
    assert!(!uncompressed.rsv1);
    assert_eq!((compressed.opcode, compressed.fin), (1, true));
    let inflated = inflate(&compressed);
    assert!(inflated == uncompressed.payload, "not byte-exact");
    let event: Value = serde_json::from_slice(&inflated).expect("json");
    assert_eq!(event["data"], data);
    assert!(
        compressed.payload.len() * 3 < uncompressed.payload.len(),
        "{} of {} bytes",
        compressed.payload.len(),
        uncompressed.payload.len()
    );
    assert_eq!(metric(&server, "corecast_ws_compressed_frames_total"), 1.0);
    let bytes_in = metric(&server, "corecast_ws_compression_bytes_in_total");
    let bytes_out = metric(&server, "corecast_ws_compression_bytes_out_total");
    assert_eq!(bytes_in, uncompressed.payload.len() as f64);
    assert_eq!(bytes_out, compressed.payload.len() as f64);
}

#[test]
fn one_compression_serves_every_compressed_subscriber() {
    let server = compressing();
    let mut subs: Vec<Ws> = (0..5).map(|_| pusher(server.port, true).0).collect();
    for ws in &mut subs {
        ws.subscribe("many");
    }
    let data = ordinary_data(10_000);
    publish(server.port, "many", &data);
    let frames: Vec<Frame> = subs.iter_mut().map(Ws::read_frame).collect();
    assert!(frames.iter().all(|f| f == &frames[0] && f.rsv1));
    assert_eq!(metric(&server, "corecast_ws_compressed_frames_total"), 1.0);
}

#[test]
fn small_events_and_declining_clients_get_plain_frames() {
    let server = compressing();
    let (mut deflated, _) = pusher(server.port, true);
    let (mut plain, _) = pusher(server.port, false);
    deflated.subscribe("mixed");
    plain.subscribe("mixed");
    publish(server.port, "mixed", "{\"small\":true}");
    let small = deflated.read_frame();
    assert!(!small.rsv1, "below CORECAST_WS_COMPRESSION_MIN_BYTES");
    assert_eq!(small.json()["data"], "{\"small\":true}");
    assert!(!plain.read_frame().rsv1);
    publish(server.port, "mixed", &ordinary_data(10_000));
    assert!(deflated.read_frame().rsv1);
    assert!(
        !plain.read_frame().rsv1,
        "a client that did not offer gets plain"
    );
}

#[test]
fn compression_off_answers_no_extension() {
    let server = start(1, &[]);
    let (mut ws, head) = pusher(server.port, true);
    assert!(!head.contains("Sec-WebSocket-Extensions"), "{head}");
    ws.subscribe("off");
    publish(server.port, "off", &ordinary_data(10_000));
    assert!(!ws.read_frame().rsv1);
    // RSV1 without a negotiated extension is still a protocol error.
    let mut data = Vec::new();
    Deflater::default().compress_into(br#"{"event":"pusher:ping","data":{}}"#, 15, &mut data);
    let mut frame = masked_frame(true, 1, &data);
    frame[0] |= 0x40;
    std::io::Write::write_all(&mut ws.stream, &frame).expect("write");
    let close = ws.read_until_closed().expect("close frame");
    assert_eq!(close.close_code(), Some(1002));
}

#[test]
fn compressed_client_messages_are_inflated() {
    let server = compressing();
    let (mut ws, _) = pusher(server.port, true);
    let mut data = Vec::new();
    let subscribe = br#"{"event":"pusher:subscribe","data":{"channel":"inflated"}}"#;
    Deflater::default().compress_into(subscribe, 15, &mut data);
    let mut frame = masked_frame(true, 1, &data);
    frame[0] |= 0x40;
    std::io::Write::write_all(&mut ws.stream, &frame).expect("write");
    let ok = ws.read_json();
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(ok["channel"], "inflated");
}

#[test]
fn a_zip_bomb_closes_with_1009_and_others_are_served() {
    let server = compressing();
    let (mut other, _) = pusher(server.port, true);
    other.subscribe("after");
    let (mut bomb, _) = pusher(server.port, true);
    // 10 MB of JSON-ish text in about 10 KB: far past the 256 KiB message limit.
    let mut data = Vec::new();
    Deflater::default().compress_into(&vec![b' '; 10 << 20], 15, &mut data);
    assert!(data.len() < 20_000, "{}", data.len());
    let mut frame = masked_frame(true, 1, &data);
    frame[0] |= 0x40;
    std::io::Write::write_all(&mut bomb.stream, &frame).expect("write");
    let close = bomb.read_until_closed().expect("close frame");
    assert_eq!(close.close_code(), Some(1009));
    let data = ordinary_data(10_000);
    publish(server.port, "after", &data);
    let event: Value = serde_json::from_slice(&inflate(&other.read_frame())).expect("json");
    assert_eq!(event["data"], data);
    let (mut fresh, _) = pusher(server.port, true);
    fresh.subscribe("after");
}
