//! Frames the server sends. Each is built in one buffer with room reserved in front for the
//! WebSocket header, so a message costs one allocation and is never copied again: the
//! resulting `Bytes` is shared by every subscriber.

use bytes::Bytes;

use super::{ErrorCode, SocketId};
use crate::ws::{OpCode, write_frame_header};

/// Bytes reserved in front of the JSON for the largest header (2 + 8).
const HEADROOM: usize = 10;

/// An event message under construction: `{"event":..,"channel":..,"data":..}`.
pub struct EventFrame<'a> {
    /// Event name, e.g. `my-event` or `pusher_internal:member_added`.
    pub event: &'a str,
    /// Channel the event belongs to, if any.
    pub channel: Option<&'a str>,
    /// The `data` field.
    pub data: Data<'a>,
    /// The sender's user id, on client events in presence channels.
    pub user_id: Option<&'a str>,
}

/// How `data` goes on the wire.
#[derive(Clone, Copy)]
pub enum Data<'a> {
    /// A string value, JSON-escaped on output (what the REST API carries).
    Str(&'a str),
    /// Already JSON text, written as is (objects in client events and `pusher:error`).
    Json(&'a str),
}

/// Wasted work on the encode path (about 20 instructions per byte of the frame), there only
/// so `tests/perf.sh --prove-it-bites` can show the regression check fails on it.
#[cfg(feature = "perf-slowdown")]
fn slowdown(buf: &[u8]) {
    let mut sum = 0u64;
    for _ in 0..4 {
        for &b in buf {
            sum = std::hint::black_box(sum.rotate_left(5) ^ u64::from(b));
        }
    }
    std::hint::black_box(sum);
}

/// Encodes an event into a complete text frame.
#[must_use]
pub fn event_frame(msg: &EventFrame<'_>) -> Bytes {
    let mut buf = start(64 + msg.event.len() + msg.data_len());
    buf.extend_from_slice(b"{\"event\":");
    push_json_str(&mut buf, msg.event);
    if let Some(channel) = msg.channel {
        buf.extend_from_slice(b",\"channel\":");
        push_json_str(&mut buf, channel);
    }
    buf.extend_from_slice(b",\"data\":");
    match msg.data {
        Data::Str(s) => push_json_str(&mut buf, s),
        Data::Json(j) => buf.extend_from_slice(j.as_bytes()),
    }
    #[cfg(feature = "perf-slowdown")]
    slowdown(&buf);
    if let Some(user_id) = msg.user_id {
        buf.extend_from_slice(b",\"user_id\":");
        push_json_str(&mut buf, user_id);
    }
    buf.push(b'}');
    finish(buf)
}

/// `pusher_internal:member_added` with `{"user_id", "user_info"}` (`user_info` is JSON text).
#[must_use]
pub fn member_added_frame(channel: &str, user_id: &str, user_info: &str) -> Bytes {
    member_frame(
        "pusher_internal:member_added",
        channel,
        user_id,
        Some(user_info),
    )
}

/// `pusher_internal:member_removed` with `{"user_id"}`.
#[must_use]
pub fn member_removed_frame(channel: &str, user_id: &str) -> Bytes {
    member_frame("pusher_internal:member_removed", channel, user_id, None)
}

fn member_frame(event: &str, channel: &str, user_id: &str, user_info: Option<&str>) -> Bytes {
    let mut data = Vec::with_capacity(32 + user_id.len() + user_info.map_or(0, str::len));
    data.extend_from_slice(b"{\"user_id\":");
    push_json_str(&mut data, user_id);
    if let Some(info) = user_info {
        data.extend_from_slice(b",\"user_info\":");
        data.extend_from_slice(info.as_bytes());
    }
    data.push(b'}');
    let data = String::from_utf8_lossy(&data);
    event_frame(&EventFrame {
        event,
        channel: Some(channel),
        data: Data::Str(&data),
        user_id: None,
    })
}

/// `pusher:cache_miss` for a cache channel with no stored event.
#[must_use]
pub fn cache_miss_frame(channel: &str) -> Bytes {
    let mut buf = start(48 + channel.len());
    buf.extend_from_slice(b"{\"event\":\"pusher:cache_miss\",\"channel\":");
    push_json_str(&mut buf, channel);
    buf.push(b'}');
    finish(buf)
}

impl EventFrame<'_> {
    fn data_len(&self) -> usize {
        match self.data {
            Data::Str(s) | Data::Json(s) => s.len() + s.len() / 8,
        }
    }
}

/// `pusher:connection_established` with the socket id and activity timeout in seconds.
#[must_use]
pub fn connection_established(socket_id: SocketId, activity_timeout_secs: u64) -> Bytes {
    let data =
        format!("{{\"socket_id\":\"{socket_id}\",\"activity_timeout\":{activity_timeout_secs}}}");
    event_frame(&EventFrame {
        event: "pusher:connection_established",
        channel: None,
        data: Data::Str(&data),
        user_id: None,
    })
}

/// `pusher_internal:subscription_succeeded` with `data` (JSON text, `{}` for public channels),
/// sent as a JSON string as pusher-js expects.
#[must_use]
pub fn subscription_succeeded(channel: &str, data: &str) -> Bytes {
    event_frame(&EventFrame {
        event: "pusher_internal:subscription_succeeded",
        channel: Some(channel),
        data: Data::Str(data),
        user_id: None,
    })
}

/// `pusher:subscription_error` for `channel` with Pusher's `{type, error, status}` object.
#[must_use]
pub fn subscription_error_frame(channel: &str, kind: &str, error: &str, status: u16) -> Bytes {
    let mut data = Vec::with_capacity(64 + error.len());
    data.extend_from_slice(b"{\"type\":");
    push_json_str(&mut data, kind);
    data.extend_from_slice(b",\"error\":");
    push_json_str(&mut data, error);
    data.extend_from_slice(format!(",\"status\":{status}}}").as_bytes());
    let data = String::from_utf8_lossy(&data);
    event_frame(&EventFrame {
        event: "pusher:subscription_error",
        channel: Some(channel),
        data: Data::Json(&data),
        user_id: None,
    })
}

/// `pusher:error` with `{code, message}`; `message` overrides the code's default text.
#[must_use]
pub fn error_frame(code: ErrorCode, message: Option<&str>) -> Bytes {
    let mut data = Vec::with_capacity(96);
    data.extend_from_slice(format!("{{\"code\":{},\"message\":", code.code()).as_bytes());
    push_json_str(&mut data, message.unwrap_or(code.message()));
    data.push(b'}');
    let data = String::from_utf8_lossy(&data);
    event_frame(&EventFrame {
        event: "pusher:error",
        channel: None,
        data: Data::Json(&data),
        user_id: None,
    })
}

/// `pusher:pong`, the answer to a client's `pusher:ping`.
#[must_use]
pub fn pong_frame() -> Bytes {
    Bytes::from_static(b"\x81\x21{\"event\":\"pusher:pong\",\"data\":{}}")
}

/// `pusher:ping`, sent after `activity_timeout` of silence.
#[must_use]
pub fn ping_frame() -> Bytes {
    Bytes::from_static(b"\x81\x21{\"event\":\"pusher:ping\",\"data\":{}}")
}

fn start(capacity: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADROOM + capacity);
    buf.resize(HEADROOM, 0);
    buf
}

/// Writes the text-frame header just before the JSON and returns the frame without copying.
fn finish(mut buf: Vec<u8>) -> Bytes {
    let len = buf.len() - HEADROOM;
    let mut header = Vec::with_capacity(HEADROOM);
    write_frame_header(&mut header, OpCode::Text, len);
    let start = HEADROOM - header.len();
    buf[start..HEADROOM].copy_from_slice(&header);
    Bytes::from(buf).slice(start..)
}

/// Appends `s` as a JSON string literal.
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping: writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(frame: &Bytes) -> &str {
        let (len, start) = match frame[1] {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (frame.len() - 10, 10),
            n => (n as usize, 2),
        };
        assert_eq!(frame[0], 0x81, "FIN text frame");
        assert_eq!(frame.len(), start + len);
        std::str::from_utf8(&frame[start..]).expect("utf-8")
    }

    #[test]
    fn event_frame_escapes_string_data() {
        let f = event_frame(&EventFrame {
            event: "my-event",
            channel: Some("chat"),
            data: Data::Str("{\"a\":\"é\n\"}"),
            user_id: None,
        });
        let v: serde_json::Value = serde_json::from_str(payload(&f)).expect("json");
        assert_eq!(v["event"], "my-event");
        assert_eq!(v["channel"], "chat");
        assert_eq!(v["data"], "{\"a\":\"é\n\"}");
    }

    #[test]
    fn large_event_uses_extended_length_header() {
        let data = "x".repeat(70_000);
        let f = event_frame(&EventFrame {
            event: "e",
            channel: Some("c"),
            data: Data::Str(&data),
            user_id: None,
        });
        assert_eq!(f[1], 127);
        let v: serde_json::Value = serde_json::from_str(payload(&f)).expect("json");
        assert_eq!(v["data"].as_str().map(str::len), Some(70_000));
        let f = event_frame(&EventFrame {
            event: "e",
            channel: None,
            data: Data::Str(&data[..300]),
            user_id: None,
        });
        assert_eq!(f[1], 126);
        payload(&f);
    }

    #[test]
    fn connection_established_carries_socket_id_and_timeout_as_string_data() {
        let f = connection_established(SocketId { node: 7, local: 9 }, 120);
        let v: serde_json::Value = serde_json::from_str(payload(&f)).expect("json");
        assert_eq!(v["event"], "pusher:connection_established");
        let inner: serde_json::Value =
            serde_json::from_str(v["data"].as_str().expect("string data")).expect("json");
        assert_eq!(inner["socket_id"], "7.9");
        assert_eq!(inner["activity_timeout"], 120);
    }

    #[test]
    fn error_frame_carries_code_and_message_object() {
        let f = error_frame(ErrorCode::AppDoesNotExist, None);
        let v: serde_json::Value = serde_json::from_str(payload(&f)).expect("json");
        assert_eq!(v["data"]["code"], 4001);
        assert!(v["data"]["message"].is_string());
        let f = subscription_error_frame("private-x", "AuthError", "bad \"sig\"", 401);
        let v: serde_json::Value = serde_json::from_str(payload(&f)).expect("json");
        assert_eq!(v["channel"], "private-x");
        assert_eq!(v["data"]["status"], 401);
        assert_eq!(v["data"]["error"], "bad \"sig\"");
    }

    #[test]
    fn static_ping_and_pong_frames_are_well_formed() {
        let v: serde_json::Value = serde_json::from_str(payload(&pong_frame())).expect("json");
        assert_eq!(v["event"], "pusher:pong");
        let v: serde_json::Value = serde_json::from_str(payload(&ping_frame())).expect("json");
        assert_eq!(v["event"], "pusher:ping");
    }
}
