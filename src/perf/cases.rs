//! The hot-path cases. Every `new` is setup; every `run` is the measured work and
//! returns a figure derived from its output (frames queued, bytes encoded).

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use monoio_codec::{Decoded, Decoder as _};
use monoio_http::h1::codec::decoder::RequestHeadDecoder;
use slab::Slab;

use crate::app::AppIdx;
use crate::auth::{parse_query, sign_rest_request, verify_rest_request};
use crate::config::AppConfig;
use crate::fanout::{Envelope, Inbox, Outbox, mesh};
use crate::protocol::{
    ChannelKind, ClientMessage, Data, EventFrame, SocketId, event_frame, member_added_frame,
    member_removed_frame, parse_client_message, subscription_succeeded,
};
use crate::redis::wire::Message;
use crate::registry::presence::{Joined, Rosters};
use crate::registry::{ConnKey, Registry};
use crate::shard::Outbound;
use crate::ws::{Decoder, Event, Flow};

const APP: AppIdx = AppIdx(0);
/// `CORECAST_MAX_OUTBOUND_KB`'s default, as the shard passes it to `Outbound::push`.
const OUTBOUND_LIMIT_BYTES: usize = 1024 * 1024;
/// A 100-byte event payload, the load tool's default.
const PAYLOAD: &str = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnop";

fn app() -> AppConfig {
    let mut app = AppConfig::new("app-id", "app-key", "app-secret");
    app.enable_client_messages = true;
    app
}

/// The subscribers of one channel on one shard: the registry entry and one outbound
/// queue per connection, as `Shard::deliver_local` sees them. The queues start empty, as
/// after a flush: the frame goes to each queue's inline front slot, so a delivery
/// allocates nothing.
struct Local {
    registry: Registry,
    outs: Slab<Outbound>,
    dirty: Vec<ConnKey>,
}

impl Local {
    fn new(channel: &str, subscribers: usize) -> Self {
        let mut registry = Registry::new(1);
        let mut outs = Slab::with_capacity(subscribers);
        for _ in 0..subscribers {
            let key = outs.insert(Outbound::default());
            registry.subscribe(APP, channel, key);
        }
        Local {
            registry,
            outs,
            dirty: Vec::with_capacity(subscribers),
        }
    }

    /// `deliver_local`'s loop: each subscriber but `except` gets the frame queued and
    /// goes on the dirty list once.
    fn deliver(&mut self, channel: &str, frame: &Bytes, except: Option<ConnKey>) -> usize {
        let Some(subs) = self.registry.subscribers(APP, channel) else {
            return 0;
        };
        let mut queued = 0;
        for &key in subs {
            if Some(key) == except {
                continue;
            }
            let Some(out) = self.outs.get_mut(key) else {
                continue;
            };
            let was_empty = out.is_empty();
            if out.push(frame.clone(), OUTBOUND_LIMIT_BYTES) {
                queued += 1;
                if was_empty {
                    self.dirty.push(key);
                }
            }
        }
        queued
    }
}

/// A signed `POST /apps/app-id/events` from its request bytes to the encoded frame:
/// head parsed, body length, route, query, signature and body MD5 checked, body parsed
/// and validated, frame encoded.
pub struct RestPublish {
    app: AppConfig,
    request: BytesMut,
    now_unix_secs: u64,
}

impl RestPublish {
    #[must_use]
    pub fn new() -> Self {
        let body =
            serde_json::json!({"name": "bench-event", "channel": "bench-0", "data": PAYLOAD})
                .to_string();
        let path = "/apps/app-id/events";
        let now_unix_secs = 1_700_000_000;
        let query = sign_rest_request(
            "app-key",
            "app-secret",
            "POST",
            path,
            &[],
            body.as_bytes(),
            now_unix_secs,
        );
        let request = format!(
            "POST {path}?{query} HTTP/1.1\r\nHost: 127.0.0.1:6001\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        RestPublish {
            app: app(),
            request: BytesMut::from(request.as_bytes()),
            now_unix_secs,
        }
    }

    /// Bytes of the encoded frame (0 when the request was refused).
    pub fn run(&mut self) -> usize {
        let Ok(Decoded::Some(head)) = RequestHeadDecoder.decode(&mut self.request) else {
            return 0;
        };
        let Ok(len) = crate::http::body_length(&head, 1024 * 1024) else {
            return 0;
        };
        let mut body = self.request.split_to(len.min(self.request.len()));
        let signed_path = head.uri.path();
        let Some(rest) =
            crate::http::route_path("", signed_path).and_then(|p| p.strip_prefix("/apps/"))
        else {
            return 0;
        };
        if rest.split_once('/').map(|(id, _)| id) != Some(self.app.id.as_str()) {
            return 0;
        }
        let query = parse_query(head.uri.query().unwrap_or(""));
        if verify_rest_request(
            &self.app.key,
            &self.app.secret,
            head.method.as_str(),
            signed_path,
            &query,
            &body,
            self.now_unix_secs,
        )
        .is_err()
        {
            return 0;
        }
        match crate::http::encode_event(&self.app, &mut body) {
            Ok(frames) => frames.iter().map(Bytes::len).sum(),
            Err(_) => 0,
        }
    }
}

impl Default for RestPublish {
    fn default() -> Self {
        Self::new()
    }
}

/// A masked client text frame as a browser sends it.
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x81];
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A `client-*` event from its WebSocket bytes: frame decoded and unmasked, message
/// parsed, checked (private channel, client events enabled), encoded once and queued on
/// the channel's 10 other subscribers.
pub struct ClientEvent {
    app: AppConfig,
    decoder: Decoder,
    bytes: Vec<u8>,
    local: Local,
}

impl ClientEvent {
    #[must_use]
    pub fn new() -> Self {
        let msg = serde_json::json!({
            "event": "client-typing",
            "channel": "private-room",
            "data": {"text": PAYLOAD},
        })
        .to_string();
        ClientEvent {
            app: app(),
            decoder: Decoder::new(256 * 1024),
            bytes: masked_text_frame(msg.as_bytes()),
            local: Local::new("private-room", 11),
        }
    }

    /// Frames queued.
    pub fn run(&mut self) -> usize {
        let mut message = None;
        let fed = self.decoder.feed(&mut self.bytes, |event| {
            if let Event::Text(text) = event {
                message = parse_client_message(text).ok();
            }
            Flow::Continue
        });
        if fed.is_err() {
            return 0;
        }
        let Some(ClientMessage::ClientEvent {
            event,
            channel,
            data,
        }) = message
        else {
            return 0;
        };
        if !self.app.enable_client_messages
            || !matches!(
                ChannelKind::of(&channel),
                ChannelKind::Private | ChannelKind::Presence
            )
        {
            return 0;
        }
        let frame = event_frame(&EventFrame {
            event: &event,
            channel: Some(&channel),
            data: Data::Json(&data),
            user_id: None,
        });
        // The sender is the first subscriber; it is not echoed to.
        self.local.deliver(&channel, &frame, Some(0))
    }
}

impl Default for ClientEvent {
    fn default() -> Self {
        Self::new()
    }
}

/// One encoded frame queued to every local subscriber of a channel.
pub struct Fanout {
    frame: Bytes,
    local: Local,
}

impl Fanout {
    #[must_use]
    pub fn new(subscribers: usize) -> Self {
        let frame = event_frame(&EventFrame {
            event: "bench-event",
            channel: Some("bench-0"),
            data: Data::Str(PAYLOAD),
            user_id: None,
        });
        Fanout {
            frame,
            local: Local::new("bench-0", subscribers),
        }
    }

    /// Frames queued.
    pub fn run(&mut self) -> usize {
        let frame = self.frame.clone();
        self.local.deliver("bench-0", &frame, None)
    }
}

/// On the channel's home shard, a user joins a presence channel of 100 members (roster
/// updated, `subscription_succeeded` with the roster and `member_added` encoded), then
/// leaves (`member_removed` encoded).
pub struct PresenceJoinLeave {
    rosters: Rosters,
}

impl PresenceJoinLeave {
    const CHANNEL: &'static str = "presence-room";

    #[must_use]
    pub fn new() -> Self {
        let mut rosters = Rosters::new(1);
        let roster = rosters.entry(APP, Self::CHANNEL);
        for i in 0..100 {
            roster.join(&format!("user-{i}"), r#"{"name":"someone"}"#, 100_000);
        }
        PresenceJoinLeave { rosters }
    }

    /// Bytes of the frames encoded.
    pub fn run(&mut self) -> usize {
        let (user, info) = ("user-new", r#"{"name":"newcomer"}"#);
        let roster = self.rosters.entry(APP, Self::CHANNEL);
        let mut bytes = 0;
        if roster.join(user, info, 100_000) == Joined::NewMember {
            bytes += subscription_succeeded(Self::CHANNEL, &roster.subscription_data()).len();
            bytes += member_added_frame(Self::CHANNEL, user, info).len();
        }
        if self.rosters.entry(APP, Self::CHANNEL).leave(user) {
            bytes += member_removed_frame(Self::CHANNEL, user).len();
        }
        bytes
    }
}

impl Default for PresenceJoinLeave {
    fn default() -> Self {
        Self::new()
    }
}

/// The bridge's cluster message for one publish: encoded (what it `PUBLISH`es) and
/// decoded (what a peer's bridge reads).
pub struct RedisWire {
    message: Message,
}

impl RedisWire {
    #[must_use]
    pub fn new() -> Self {
        let frame = Fanout::new(0).frame;
        RedisWire {
            message: Message::Publish {
                node: 7,
                app_id: "app-id".into(),
                channel: "bench-0".into(),
                except: SocketId::parse("123.456").ok(),
                cache: false,
                frame,
            },
        }
    }

    /// Bytes of the decoded frame.
    pub fn run(&mut self) -> usize {
        let wire = self.message.encode();
        match Message::decode(&wire) {
            Ok(Message::Publish { frame, .. }) => frame.len(),
            _ => 0,
        }
    }
}

impl Default for RedisWire {
    fn default() -> Self {
        Self::new()
    }
}

/// 64 publish envelopes pushed from shard 0 into shard 1's ring, then drained in causal
/// order by shard 1.
pub struct RingPushDrain {
    outbox: Outbox,
    inbox: Inbox,
    frame: Bytes,
    channel: Arc<str>,
    batch: Vec<Envelope>,
}

impl RingPushDrain {
    const ENVELOPES: usize = 64;

    #[must_use]
    pub fn new() -> Self {
        let mut shards = mesh(2, 16_384).into_iter();
        let (outbox, _) = shards.next().expect("shard 0");
        let (_, inbox) = shards.next().expect("shard 1");
        RingPushDrain {
            outbox,
            inbox,
            frame: Fanout::new(0).frame,
            channel: Arc::from("bench-0"),
            batch: Vec::with_capacity(Self::ENVELOPES),
        }
    }

    /// Envelopes drained.
    pub fn run(&mut self) -> usize {
        let at = Instant::now();
        for _ in 0..Self::ENVELOPES {
            let envelope = Envelope::Publish {
                app: APP,
                channel: Arc::clone(&self.channel),
                frame: self.frame.clone(),
                except: None,
                cache: false,
                at,
            };
            if self.outbox.push(1, envelope).is_err() {
                return 0;
            }
        }
        self.inbox.drain_ordered(usize::MAX, &mut self.batch)
    }
}

impl Default for RingPushDrain {
    fn default() -> Self {
        Self::new()
    }
}
