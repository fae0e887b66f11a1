//! A Pusher WebSocket session on its shard: read frames, act on each client message,
//! and leave every channel when the socket goes.

use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;

use super::driver::fd_of;
use super::tls::TlsBroken;
use super::{Shard, conn};
use crate::metrics::Counter;
use crate::protocol::{
    ClientMessage, Data, EventFrame, InboundError, event_frame, parse_client_message, pong_frame,
};
use crate::registry::ConnKey;
use crate::ws::{self, Decoder, Event, Flow};

/// Reads and handles frames until the socket closes or the session ends.
pub(super) async fn run(shard: &Rc<Shard>, key: ConnKey, stream: &TcpStream) {
    let fd = fd_of(stream);
    let mut decoder = Decoder::new(shard.config.max_ws_message_bytes);
    let deflate = shard
        .conns
        .borrow()
        .get(key)
        .is_some_and(|c| c.deflate.is_some());
    loop {
        if stream.readable(false).await.is_err() {
            return;
        }
        let mut scratch = shard.take_scratch();
        let got = conn::recv_now(fd, &mut scratch);
        let keep_going = match got {
            Ok(0) => false,
            Ok(n) => match decrypt(shard, key, &scratch[..n]) {
                None => handle_bytes(shard, key, &mut decoder, deflate, &mut scratch[..n]),
                Some(Ok(mut plain)) => {
                    plain.is_empty() || handle_bytes(shard, key, &mut decoder, deflate, &mut plain)
                }
                Some(Err(_)) => false,
            },
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        };
        shard.put_scratch(scratch);
        shard.flush_dirty();
        if !keep_going {
            return;
        }
    }
}

/// On TLS connections, the plaintext of what was read (and any TLS answer is queued).
fn decrypt(shard: &Shard, key: ConnKey, cipher: &[u8]) -> Option<Result<Vec<u8>, TlsBroken>> {
    let mut conns = shard.conns.borrow_mut();
    let tls = conns.get_mut(key)?.tls.as_mut()?;
    let mut plain = Vec::new();
    let result = tls.read(cipher, &mut plain).map(|()| plain);
    let answer = tls.has_pending();
    drop(conns);
    if answer {
        shard.mark_dirty(key);
    }
    Some(result)
}

/// Feeds bytes to the frame decoder (inflating compressed messages with the shard's
/// inflater when the connection negotiated permessage-deflate); false when the session
/// is over.
fn handle_bytes(
    shard: &Rc<Shard>,
    key: ConnKey,
    decoder: &mut Decoder,
    deflate: bool,
    data: &mut [u8],
) -> bool {
    let mut open = true;
    let on_event = |event: Event<'_>| {
        touch(shard, key);
        match event {
            Event::Text(text) => {
                if let Some(app) = shard.conns.borrow().get(key).map(|c| c.app.0 as usize) {
                    shard.metrics.add_ws_received(app, 1, text.len() as u64);
                }
                handle_text(shard, key, text);
            }
            Event::Binary(_) => {
                shard.metrics.inc(Counter::ProtocolErrors, 1);
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
    };
    // Nothing an event handler does inflates, so the shard's inflater stays borrowed for
    // the whole read.
    let result = if deflate {
        decoder.feed_inflating(data, &mut shard.inflater.borrow_mut(), on_event)
    } else {
        decoder.feed(data, on_event)
    };
    if let Err(e) = result {
        shard.metrics.inc(Counter::ProtocolErrors, 1);
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
            shard.metrics.inc(Counter::ProtocolErrors, 1);
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
            shard.subscribe(key, &channel, auth.as_deref(), channel_data.as_deref());
        }
        ClientMessage::Unsubscribe { channel } => shard.unsubscribe(key, &channel),
        ClientMessage::ClientEvent {
            event,
            channel,
            data,
        } => {
            shard.client_event(key, &event, &channel, &data);
        }
        ClientMessage::Signin { user_data, auth } => shard.signin(key, &user_data, &auth),
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
            user_id: None,
        }),
    );
}

/// Leaves every channel (presence members through their home shard) and frees the slot.
pub(super) fn cleanup(shard: &Shard, key: ConnKey) {
    let Some(c) = shard.conns.borrow_mut().try_remove(key) else {
        return;
    };
    if shard.config.debug {
        eprintln!(
            "corecast: shard {} connection {} closed",
            shard.id, c.socket_id
        );
    }
    shard.server.connections.release();
    shard.apps.usage(c.app).connections.release();
    if c.leased_slot {
        shard.apps.usage(c.app).connection_lease.release(1);
    }
    shard.metrics.inc_disconnection(c.app.0 as usize);
    shard.metrics.add_connected(c.app.0 as usize, -1);
    for sub in &c.channels {
        shard.leave_channel(key, c.app, &sub.channel);
        if let Some(user) = &sub.presence_user {
            shard.leave_presence(c.app, &sub.channel, user);
        }
    }
    conn::shutdown(fd_of(&c.stream), libc::SHUT_RDWR);
}
