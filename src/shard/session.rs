//! A Pusher WebSocket session on its shard: read frames, act on each client message,
//! and leave every channel when the socket goes.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use monoio::net::TcpStream;

use super::driver::fd_of;
use super::{Shard, Stats, conn};
use crate::protocol::{
    ChannelKind, ChannelNameError, ClientMessage, Data, ErrorCode, EventFrame, InboundError,
    event_frame, parse_client_message, pong_frame, subscription_error_frame,
    subscription_succeeded, validate_channel_name,
};
use crate::registry::ConnKey;
use crate::ws::{self, Decoder, Event, Flow};

/// Reads and handles frames until the socket closes or the session ends.
pub(super) async fn run(shard: &Rc<Shard>, key: ConnKey, stream: &TcpStream) {
    let fd = fd_of(stream);
    let mut decoder = Decoder::new(shard.config.max_ws_message_bytes);
    loop {
        if stream.readable(false).await.is_err() {
            return;
        }
        let mut scratch = shard.take_scratch();
        let got = conn::recv_now(fd, &mut scratch);
        let keep_going = match got {
            Ok(0) => false,
            Ok(n) => handle_bytes(shard, key, &mut decoder, &mut scratch[..n]),
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        };
        shard.put_scratch(scratch);
        shard.flush_dirty();
        if !keep_going {
            return;
        }
    }
}

/// Feeds bytes to the frame decoder; false when the session is over.
fn handle_bytes(shard: &Rc<Shard>, key: ConnKey, decoder: &mut Decoder, data: &mut [u8]) -> bool {
    let mut open = true;
    let result = decoder.feed(data, |event| {
        touch(shard, key);
        match event {
            Event::Text(text) => {
                Stats::add(&shard.stats.ws_messages_received, 1);
                handle_text(shard, key, text);
            }
            Event::Binary(_) => {
                Stats::add(&shard.stats.protocol_errors, 1);
                send_error(shard, key, "Binary messages are not supported.");
            }
            Event::Ping(payload) => shard.send_to(key, ws::pong_frame(payload)),
            Event::Pong(_) => {}
            Event::Close { code, .. } => {
                let closing = shard
                    .conns
                    .borrow()
                    .get(key)
                    .is_some_and(|c| c.closing.is_some());
                if !closing {
                    shard.send_to(key, ws::close_frame(code.unwrap_or(1000), ""));
                }
                open = false;
                return Flow::Stop;
            }
        }
        Flow::Continue
    });
    if let Err(e) = result {
        Stats::add(&shard.stats.protocol_errors, 1);
        shard.begin_close(key, e.close_code(), None);
        return true; // wait for the client's close or the sweep
    }
    open
}

/// Anything from the client counts as activity and answers an outstanding ping.
fn touch(shard: &Shard, key: ConnKey) {
    if let Some(c) = shard.conns.borrow_mut().get_mut(key) {
        c.last_seen = Instant::now();
        c.ping_sent = None;
    }
}

fn handle_text(shard: &Rc<Shard>, key: ConnKey, text: &mut [u8]) {
    let msg = match parse_client_message(text) {
        Ok(m) => m,
        Err(e) => {
            Stats::add(&shard.stats.protocol_errors, 1);
            let text = match e {
                InboundError::InvalidJson => "Invalid JSON message.".to_owned(),
                other => other.to_string(),
            };
            send_error(shard, key, &text);
            return;
        }
    };
    match msg {
        ClientMessage::Ping => shard.send_to(key, pong_frame()),
        ClientMessage::Pong | ClientMessage::Other { .. } => {}
        ClientMessage::Subscribe {
            channel,
            auth,
            channel_data,
        } => {
            subscribe(
                shard,
                key,
                &channel,
                auth.as_deref(),
                channel_data.as_deref(),
            );
        }
        ClientMessage::Unsubscribe { channel } => unsubscribe(shard, key, &channel),
        ClientMessage::ClientEvent {
            event,
            channel,
            data,
        } => {
            client_event(shard, key, &event, &channel, &data);
        }
        ClientMessage::Signin { .. } => {
            send_error(
                shard,
                key,
                "User authentication is not enabled for this app.",
            );
        }
    }
}

/// A `pusher:error` that keeps the connection open (bad input the client can correct).
fn send_error(shard: &Shard, key: ConnKey, message: &str) {
    let mut data = Vec::new();
    data.extend_from_slice(b"{\"code\":null,\"message\":");
    let _ = serde_json::to_writer(&mut data, message);
    data.push(b'}');
    let data = String::from_utf8_lossy(&data);
    shard.send_to(
        key,
        event_frame(&EventFrame {
            event: "pusher:error",
            channel: None,
            data: Data::Json(&data),
        }),
    );
}

fn subscribe(
    shard: &Shard,
    key: ConnKey,
    channel: &str,
    auth: Option<&str>,
    channel_data: Option<&str>,
) {
    let Some((app_idx, socket_id)) = shard.conns.borrow().get(key).map(|c| (c.app, c.socket_id))
    else {
        return;
    };
    let app = shard.apps.get(app_idx);
    if let Err(e) = validate_channel_name(channel, app.max_channel_name_length) {
        let kind = match e {
            ChannelNameError::TooLong(_) => "LimitReached",
            _ => "InvalidChannel",
        };
        shard.send_to(
            key,
            subscription_error_frame(channel, kind, &e.to_string(), 4009),
        );
        return;
    }
    let kind = ChannelKind::of(channel);
    if kind.needs_auth() {
        let sid = socket_id.to_string();
        let data = if kind == ChannelKind::Presence {
            channel_data
        } else {
            None
        };
        let ok = auth.is_some_and(|a| {
            crate::auth::verify_channel_auth(&app.key, &app.secret, &sid, channel, data, a)
        });
        if !ok {
            let error = "Invalid signature: the auth does not match this socket and channel.";
            shard.send_to(
                key,
                subscription_error_frame(channel, "AuthError", error, 401),
            );
            return;
        }
        if kind == ChannelKind::Presence {
            let error = "Presence channels are not available on this server yet.";
            shard.send_to(
                key,
                subscription_error_frame(channel, "UnsupportedChannel", error, 501),
            );
            return;
        }
    }
    if shard.registry.borrow_mut().subscribe(app_idx, channel, key)
        && let Some(c) = shard.conns.borrow_mut().get_mut(key)
    {
        c.channels.push(Arc::from(channel));
    }
    shard.send_to(key, subscription_succeeded(channel, "{}"));
}

fn unsubscribe(shard: &Shard, key: ConnKey, channel: &str) {
    let Some(app) = shard.conns.borrow().get(key).map(|c| c.app) else {
        return;
    };
    if shard.registry.borrow_mut().unsubscribe(app, channel, key)
        && let Some(c) = shard.conns.borrow_mut().get_mut(key)
    {
        c.channels.retain(|ch| &**ch != channel);
    }
}

/// `client-*` events: only on private channels the sender is on, only when the app
/// allows them; delivered to every other subscriber, never echoed.
fn client_event(shard: &Shard, key: ConnKey, event: &str, channel: &str, data: &str) {
    let Some((app_idx, socket_id, subscribed)) = shard.conns.borrow().get(key).map(|c| {
        (
            c.app,
            c.socket_id,
            c.channels.iter().any(|ch| &**ch == channel),
        )
    }) else {
        return;
    };
    let app = shard.apps.get(app_idx);
    let refusal = if !app.enable_client_messages {
        Some("Client events are not enabled for this app.")
    } else if !matches!(ChannelKind::of(channel), ChannelKind::Private) {
        Some("Client events are only allowed on private and presence channels.")
    } else if !subscribed {
        Some("The client is not subscribed to the channel.")
    } else if event.len() > app.max_event_name_length {
        Some("The event name is too long.")
    } else if data.len() as f64 > app.max_event_payload_in_kb * 1024.0 {
        Some("The event data is too large.")
    } else {
        None
    };
    if let Some(message) = refusal {
        let code = ErrorCode::ClientEventRejected;
        shard.send_to(key, crate::protocol::error_frame(code, Some(message)));
        return;
    }
    let frame = event_frame(&EventFrame {
        event,
        channel: Some(channel),
        data: Data::Json(data),
    });
    shard.publish(app_idx, channel, &frame, Some(socket_id));
}

/// Leaves every channel and frees the slot; the socket closes when its last handle drops.
pub(super) fn cleanup(shard: &Shard, key: ConnKey) {
    let Some(c) = shard.conns.borrow_mut().try_remove(key) else {
        return;
    };
    let mut registry = shard.registry.borrow_mut();
    for channel in &c.channels {
        registry.unsubscribe(c.app, channel, key);
    }
    conn::shutdown(fd_of(&c.stream), libc::SHUT_RDWR);
}
