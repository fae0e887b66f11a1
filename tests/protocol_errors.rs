//! Malformed, oversized and out-of-order protocol messages on raw sockets over 2 shards:
//! each gets its error (or, where Pusher expects none, nothing), and afterwards the same
//! socket still answers `pusher:ping` with `pusher:pong` and still receives a REST publish
//! on the public channel it joined. Every case runs on several sockets, so both shards
//! (SO_REUSEPORT spreads the connections) handle it.

mod common;

use common::rest::{KEY, SECRET, hmac_hex, post};
use common::{Ws, start};
use serde_json::{Value, json};

/// Sockets per case: with 2 shards, 6 connections all landing on one shard has odds 1/32.
const SOCKETS: usize = 6;

const CLIENT_EVENTS_ON: &[(&str, &str)] = &[("SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES", "true")];

/// Checks a reply frame; gets the frame and the socket id.
type Check = Box<dyn Fn(&Value, &str)>;

/// What the server must answer to the bad message.
enum Expect {
    /// The next frame is one that passes this check.
    Reply(Check),
    /// No answer at all: the next frame is the pong of the health check.
    Nothing,
}

/// Starts a 2-shard server with `env`; on each of [`SOCKETS`] sockets joins a public
/// channel, calls `send` (with the socket id), checks the answer, then proves the socket
/// and the server are still healthy.
fn run_case(env: &[(&str, &str)], send: impl Fn(&mut Ws, &str), expect: Expect) {
    let server = start(2, env);
    for i in 0..SOCKETS {
        let (mut ws, id) = Ws::pusher(server.port);
        let health = format!("health-{i}");
        ws.subscribe(&health);
        send(&mut ws, &id);
        if let Expect::Reply(check) = &expect {
            let reply = ws.read_json();
            check(&reply, &id);
        }
        assert_healthy(server.port, &mut ws, &health, i);
    }
    // A fresh connection still works too.
    let (mut ws, _) = Ws::pusher(server.port);
    ws.subscribe("health-new");
    assert_healthy(server.port, &mut ws, "health-new", SOCKETS);
}

/// Ping gets pong, and a REST publish on `channel` arrives, both as the very next frames.
fn assert_healthy(port: u16, ws: &mut Ws, channel: &str, n: usize) {
    ws.send_json(json!({"event": "pusher:ping", "data": {}}));
    let pong = ws.read_json();
    assert_eq!(
        pong["event"], "pusher:pong",
        "socket {n}: expected pong, got {pong}"
    );
    let data = format!("{{\"n\":{n}}}");
    let body = json!({"name": "still-alive", "channel": channel, "data": data}).to_string();
    let (status, resp) = post(port, "/apps/app-id/events", &body);
    assert_eq!(status, 200, "publish after the bad message: {resp}");
    let ev = ws.read_json();
    assert_eq!(
        ev,
        json!({"event": "still-alive", "channel": channel, "data": data}),
        "socket {n}: expected the published event"
    );
}

/// A `pusher:error` whose data is an object with a message and, if given, this code.
fn pusher_error(code: Option<u64>) -> Expect {
    Expect::Reply(Box::new(move |v: &Value, _id: &str| {
        assert_eq!(v["event"], "pusher:error", "expected pusher:error, got {v}");
        assert!(
            v["data"].is_object(),
            "pusher:error data must be an object: {v}"
        );
        assert!(
            v["data"]["message"].is_string(),
            "pusher:error without a message: {v}"
        );
        if let Some(code) = code {
            assert_eq!(v["data"]["code"], code, "wrong pusher:error code: {v}");
        }
    }))
}

/// A `pusher:subscription_error` for `channel`, with `status` if given.
fn subscription_error(channel: String, status: Option<u64>) -> Expect {
    Expect::Reply(Box::new(move |v: &Value, _id: &str| {
        assert_eq!(
            v["event"], "pusher:subscription_error",
            "expected subscription_error, got {v}"
        );
        assert_eq!(
            v["channel"],
            channel.as_str(),
            "subscription_error for the wrong channel: {v}"
        );
        if let Some(status) = status {
            assert_eq!(v["data"]["status"], status, "wrong status: {v}");
            assert_eq!(v["data"]["type"], "AuthError", "wrong type: {v}");
        }
    }))
}

#[test]
fn private_subscribe_without_auth_gets_subscription_error_401() {
    run_case(
        &[],
        |ws, _| {
            ws.send_json(
                json!({"event": "pusher:subscribe", "data": {"channel": "private-secret"}}),
            )
        },
        subscription_error("private-secret".into(), Some(401)),
    );
}

#[test]
fn private_subscribe_with_a_bad_signature_gets_subscription_error_401() {
    run_case(
        &[],
        |ws, id| {
            let auth = format!(
                "{KEY}:{}",
                hmac_hex("not-the-secret", &format!("{id}:private-secret"))
            );
            ws.send_json(json!({"event": "pusher:subscribe", "data": {"channel": "private-secret", "auth": auth}}));
        },
        subscription_error("private-secret".into(), Some(401)),
    );
}

#[test]
fn presence_subscribe_without_channel_data_gets_subscription_error() {
    run_case(
        &[],
        |ws, id| {
            let auth = format!("{KEY}:{}", hmac_hex(SECRET, &format!("{id}:presence-room")));
            ws.send_json(json!({"event": "pusher:subscribe", "data": {"channel": "presence-room", "auth": auth}}));
        },
        subscription_error("presence-room".into(), None),
    );
}

#[test]
fn client_event_on_a_public_channel_gets_4301() {
    run_case(
        CLIENT_EVENTS_ON,
        |ws, _| ws.send_json(json!({"event": "client-hi", "channel": "health-0", "data": {}})),
        pusher_error(Some(4301)),
    );
}

#[test]
fn client_event_on_a_channel_not_subscribed_gets_4301() {
    run_case(
        CLIENT_EVENTS_ON,
        |ws, _| {
            ws.send_json(json!({"event": "client-hi", "channel": "private-elsewhere", "data": {}}))
        },
        pusher_error(Some(4301)),
    );
}

#[test]
fn client_event_when_client_messages_are_disabled_gets_4301() {
    run_case(
        &[],
        |ws, id| {
            let auth = format!("{KEY}:{}", hmac_hex(SECRET, &format!("{id}:private-chat")));
            ws.send_json(json!({"event": "pusher:subscribe", "data": {"channel": "private-chat", "auth": auth}}));
            let ok = ws.read_json();
            assert_eq!(
                ok["event"], "pusher_internal:subscription_succeeded",
                "{ok}"
            );
            ws.send_json(json!({"event": "client-hi", "channel": "private-chat", "data": {}}));
        },
        pusher_error(Some(4301)),
    );
}

#[test]
fn oversized_client_event_gets_4301() {
    run_case(
        CLIENT_EVENTS_ON,
        |ws, id| {
            let auth = format!("{KEY}:{}", hmac_hex(SECRET, &format!("{id}:private-big")));
            ws.send_json(json!({"event": "pusher:subscribe", "data": {"channel": "private-big", "auth": auth}}));
            let ok = ws.read_json();
            assert_eq!(
                ok["event"], "pusher_internal:subscription_succeeded",
                "{ok}"
            );
            let blob = "x".repeat(101 * 1024);
            ws.send_json(
                json!({"event": "client-big", "channel": "private-big", "data": {"blob": blob}}),
            );
        },
        pusher_error(Some(4301)),
    );
}

#[test]
fn client_event_name_over_200_characters_gets_4301() {
    run_case(
        CLIENT_EVENTS_ON,
        |ws, id| {
            let auth = format!("{KEY}:{}", hmac_hex(SECRET, &format!("{id}:private-names")));
            ws.send_json(json!({"event": "pusher:subscribe", "data": {"channel": "private-names", "auth": auth}}));
            let ok = ws.read_json();
            assert_eq!(
                ok["event"], "pusher_internal:subscription_succeeded",
                "{ok}"
            );
            let name = format!("client-{}", "n".repeat(194));
            assert_eq!(name.len(), 201);
            ws.send_json(json!({"event": name, "channel": "private-names", "data": {}}));
        },
        pusher_error(Some(4301)),
    );
}

#[test]
fn invalid_json_gets_pusher_error() {
    run_case(
        &[],
        |ws, _| ws.send_text("{\"event\": \"pusher:ping\", "),
        pusher_error(None),
    );
}

#[test]
fn json_that_is_not_an_object_gets_pusher_error() {
    for text in ["[1,2,3]", "\"pusher:ping\"", "42", "null", "true"] {
        run_case(&[], move |ws, _| ws.send_text(text), pusher_error(None));
    }
}

#[test]
fn message_without_an_event_gets_pusher_error() {
    for text in [
        r#"{"data":{"channel":"x"}}"#,
        r#"{"event":5,"data":{}}"#,
        "{}",
    ] {
        run_case(&[], move |ws, _| ws.send_text(text), pusher_error(None));
    }
}

#[test]
fn subscribe_without_a_channel_gets_pusher_error() {
    for text in [
        r#"{"event":"pusher:subscribe","data":{}}"#,
        r#"{"event":"pusher:subscribe"}"#,
        r#"{"event":"pusher:subscribe","data":{"channel":7}}"#,
    ] {
        run_case(&[], move |ws, _| ws.send_text(text), pusher_error(None));
    }
}

#[test]
fn binary_frame_gets_pusher_error() {
    run_case(
        &[],
        |ws, _| ws.send_frame(true, 2, &[0x00, 0x01, 0xfe, 0xff, b'{', b'}']),
        pusher_error(None),
    );
}

#[test]
fn unsubscribe_from_a_channel_never_joined_gets_no_error_and_no_close() {
    run_case(
        &[],
        |ws, _| {
            ws.send_json(
                json!({"event": "pusher:unsubscribe", "data": {"channel": "never-joined"}}),
            )
        },
        Expect::Nothing,
    );
}

#[test]
fn channel_name_of_300_characters_gets_subscription_error() {
    let name = "c".repeat(300);
    let sent = name.clone();
    run_case(
        &[],
        move |ws, _| ws.send_json(json!({"event": "pusher:subscribe", "data": {"channel": sent}})),
        subscription_error(name, None),
    );
}

#[test]
fn errors_in_a_row_leave_the_socket_and_its_subscriptions_intact() {
    let server = start(2, CLIENT_EVENTS_ON);
    for i in 0..SOCKETS {
        let (mut ws, _) = Ws::pusher(server.port);
        let health = format!("health-{i}");
        ws.subscribe(&health);
        ws.send_text("not json");
        ws.send_text("[]");
        ws.send_frame(true, 2, b"\x01\x02");
        ws.send_json(json!({"event": "pusher:subscribe", "data": {"channel": "private-x"}}));
        ws.send_json(json!({"event": "client-x", "channel": &health, "data": {}}));
        ws.send_json(json!({"event": "pusher:unsubscribe", "data": {"channel": "never"}}));
        let replies: Vec<Value> = (0..5).map(|_| ws.read_json()).collect();
        let events: Vec<&str> = replies
            .iter()
            .map(|v| v["event"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(
            events,
            [
                "pusher:error",
                "pusher:error",
                "pusher:error",
                "pusher:subscription_error",
                "pusher:error"
            ],
            "socket {i}: {replies:?}"
        );
        assert_eq!(replies[4]["data"]["code"], 4301, "{}", replies[4]);
        assert_healthy(server.port, &mut ws, &health, i);
    }
}
