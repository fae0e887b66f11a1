//! Joining and leaving channels: name rules, channel auth, presence joins through the
//! channel's home shard, and the last-event replay of cache channels.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use simd_json::prelude::*;

use super::{Shard, Subscription};
use crate::app::AppIdx;
use crate::config::WebhookEvent;
use crate::fanout::{Envelope, SocketRef};
use crate::protocol::{
    ChannelKind, ChannelNameError, USER_CHANNEL_PREFIX, cache_miss_frame, is_cache_channel,
    subscription_error_frame, subscription_succeeded, validate_channel_name,
};
use crate::registry::ConnKey;
use crate::webhooks::Event;

/// A presence member as `channel_data` describes it.
struct Member {
    user_id: String,
    /// `user_info` as JSON text, `null` when absent.
    info: String,
}

impl Shard {
    /// `pusher:subscribe`.
    pub(super) fn subscribe(
        &self,
        key: ConnKey,
        channel: &str,
        auth: Option<&str>,
        channel_data: Option<&str>,
    ) {
        let Some((app_idx, socket, already)) = self.conns.borrow().get(key).map(|c| {
            let socket = SocketRef {
                key,
                serial: c.serial,
                socket_id: c.socket_id,
            };
            (
                c.app,
                socket,
                c.channels.iter().any(|s| &*s.channel == channel),
            )
        }) else {
            return;
        };
        let app = self.apps.get(app_idx);
        if let Some(user) = channel.strip_prefix(USER_CHANNEL_PREFIX) {
            // pusher-js subscribes to its own user channel after sign-in; the socket is
            // already on it since `pusher:signin` succeeded.
            let signed_in = self.conns.borrow().get(key).and_then(|c| c.user_id.clone());
            if signed_in.as_deref() == Some(user) {
                self.send_to(key, subscription_succeeded(channel, "{}"));
            } else {
                let error = "Only the signed-in user may subscribe to its user channel.";
                self.send_to(
                    key,
                    subscription_error_frame(channel, "AuthError", error, 403),
                );
            }
            return;
        }
        if let Err(e) = validate_channel_name(channel, app.max_channel_name_length) {
            let kind = match e {
                ChannelNameError::TooLong(_) => "LimitReached",
                _ => "InvalidChannel",
            };
            self.send_to(
                key,
                subscription_error_frame(channel, kind, &e.to_string(), 4009),
            );
            return;
        }
        let kind = ChannelKind::of(channel);
        if kind.needs_auth() {
            let sid = socket.socket_id.to_string();
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
                self.send_to(
                    key,
                    subscription_error_frame(channel, "AuthError", error, 401),
                );
                return;
            }
            if let Some(c) = self.conns.borrow_mut().get_mut(key) {
                c.authorized = true;
            }
        }
        if already {
            if kind != ChannelKind::Presence {
                self.send_to(key, subscription_succeeded(channel, "{}"));
            }
            return;
        }
        if kind == ChannelKind::Presence {
            let member = match parse_member(channel_data, app.max_presence_member_size_in_kb) {
                Ok(m) => m,
                Err((kind, error, status)) => {
                    self.send_to(key, subscription_error_frame(channel, kind, &error, status));
                    return;
                }
            };
            self.join_presence(app_idx, channel, member, socket);
            return;
        }
        self.add_subscription(key, app_idx, channel, None);
        self.confirm_subscription(key, app_idx, channel, subscription_succeeded(channel, "{}"));
    }

    /// Sends `subscription_succeeded` (and a cache channel's replay), or holds them while
    /// this node's Redis subscription to the channel is not confirmed (interest routing).
    fn confirm_subscription(&self, key: ConnKey, app: AppIdx, channel: &str, frame: Bytes) {
        let mut held = self.held.borrow_mut();
        if let Some(waiting) = held.get_mut(&(app, Arc::from(channel))) {
            let serial = self.conns.borrow().get(key).map_or(0, |c| c.serial);
            waiting.push((key, serial, frame));
            return;
        }
        drop(held);
        self.send_to(key, frame);
        self.replay_cache(key, app, channel);
    }

    /// The bridge listens to `channel` in Redis now: held confirmations go out, after a
    /// cache channel's last event from Redis is kept (if this shard has none newer).
    pub(super) fn interest_ready(&self, app: AppIdx, channel: &str, last: Option<Bytes>) {
        let Some(waiting) = self.held.borrow_mut().remove(&(app, Arc::from(channel))) else {
            return;
        };
        if let Some(frame) = last
            && !self.cache.borrow().contains_key(&(app, Arc::from(channel)))
        {
            self.remember(app, channel, &frame);
        }
        for (key, serial, frame) in waiting {
            let live = self
                .conns
                .borrow()
                .get(key)
                .is_some_and(|c| c.serial == serial);
            if live {
                self.send_to(key, frame);
                self.replay_cache(key, app, channel);
            }
        }
        self.recount(app, channel);
    }

    fn join_presence(&self, app: AppIdx, channel: &str, member: Member, socket: SocketRef) {
        let home = self.home_of(app, channel);
        if home == self.id {
            if let Some(outcome) =
                self.home_join(app, channel, &member.user_id, &member.info, socket, self.id)
            {
                self.presence_joined(app, channel, &member.user_id, socket, outcome);
                self.announce_pending();
            }
        } else {
            self.send_envelope(
                home,
                Envelope::PresenceJoin {
                    app,
                    channel: Arc::from(channel),
                    user_id: Arc::from(member.user_id),
                    user_info: Arc::from(member.info),
                    from: self.id,
                    socket,
                },
            );
        }
    }

    /// The socket's side of a presence join, once the home shard has decided.
    pub(super) fn presence_joined(
        &self,
        app: AppIdx,
        channel: &str,
        user_id: &str,
        socket: SocketRef,
        outcome: Result<Bytes, Bytes>,
    ) {
        let live = self
            .conns
            .borrow()
            .get(socket.key)
            .is_some_and(|c| c.serial == socket.serial);
        let frame = match outcome {
            Err(refusal) => {
                if live {
                    self.send_to(socket.key, refusal);
                }
                return;
            }
            Ok(frame) => frame,
        };
        // Gone meanwhile, or a second join of the same socket: give the count back.
        if !live || !self.add_subscription(socket.key, app, channel, Some(user_id)) {
            self.leave_presence(app, channel, user_id);
            return;
        }
        self.confirm_subscription(socket.key, app, channel, frame);
    }

    /// Puts `key` on `channel`; false when it already was.
    fn add_subscription(
        &self,
        key: ConnKey,
        app: AppIdx,
        channel: &str,
        user: Option<&str>,
    ) -> bool {
        if !self.registry.borrow_mut().subscribe(app, channel, key) {
            return false;
        }
        let first = self
            .registry
            .borrow()
            .subscribers(app, channel)
            .is_some_and(|s| s.len() == 1);
        if first {
            self.local_occupancy(app, channel, true);
            self.tell_interest(app, channel, true);
        }
        self.count_subscription(app, channel, 1);
        self.count_change(app, channel, 1);
        if let Some(c) = self.conns.borrow_mut().get_mut(key) {
            c.channels.push(Subscription {
                channel: Arc::from(channel),
                presence_user: user.map(Arc::from),
            });
        }
        true
    }

    /// Sends a cache channel's last event, or `pusher:cache_miss`.
    fn replay_cache(&self, key: ConnKey, app: AppIdx, channel: &str) {
        if !is_cache_channel(channel) {
            return;
        }
        let hit = self
            .cache
            .borrow()
            .get(&(app, Arc::from(channel)))
            .filter(|(_, at)| at.elapsed() < self.config.cache_ttl)
            .map(|(frame, _)| frame.clone());
        match hit {
            Some(frame) => self.send_to(key, frame),
            None => {
                self.send_to(key, cache_miss_frame(channel));
                let a = app.0 as usize;
                if self.webhooks.wants(a, WebhookEvent::CacheMiss, channel) {
                    self.webhooks.send(
                        a,
                        Event::CacheMiss {
                            channel: channel.to_owned(),
                        },
                    );
                }
            }
        }
    }

    /// `pusher:unsubscribe`.
    pub(super) fn unsubscribe(&self, key: ConnKey, channel: &str) {
        let Some(app) = self.conns.borrow().get(key).map(|c| c.app) else {
            return;
        };
        if !self.leave_channel(key, app, channel) {
            return;
        }
        let sub = self.conns.borrow_mut().get_mut(key).and_then(|c| {
            let i = c.channels.iter().position(|s| &*s.channel == channel)?;
            Some(c.channels.swap_remove(i))
        });
        if let Some(Subscription {
            presence_user: Some(user),
            ..
        }) = sub
        {
            self.leave_presence(app, channel, &user);
        }
    }

    /// Takes `key` off `channel` locally; true when it was on it. The last local
    /// subscriber leaving is reported for `channel_vacated`.
    pub(super) fn leave_channel(&self, key: ConnKey, app: AppIdx, channel: &str) -> bool {
        if !self.registry.borrow_mut().unsubscribe(app, channel, key) {
            return false;
        }
        let last = self.registry.borrow().subscribers(app, channel).is_none();
        if last {
            self.local_occupancy(app, channel, false);
            self.tell_interest(app, channel, false);
        }
        self.count_subscription(app, channel, -1);
        self.count_change(app, channel, -1);
        if channel.starts_with('#') {
            self.watch_leave(key, app, channel, last);
        }
        true
    }

    /// With interest routing, tells the bridge this shard's first subscriber of `channel`
    /// arrived (its confirmations are held until the bridge answers) or its last left.
    fn tell_interest(&self, app: AppIdx, channel: &str, on: bool) {
        let Some(bridge) = self.bridge else { return };
        if !self.config.redis.interest || channel.starts_with('#') {
            return;
        }
        if on {
            self.held
                .borrow_mut()
                .entry((app, Arc::from(channel)))
                .or_default();
        }
        let envelope = Envelope::Interest {
            app,
            channel: Arc::from(channel),
            from: self.id,
            on,
        };
        self.send_envelope(bridge, envelope);
    }

    /// With the redis adapter, tells the bridge this node's count for `channel` changed
    /// (it keeps every node's counts in Redis for cluster-wide REST reads).
    fn count_subscription(&self, app: AppIdx, channel: &str, delta: i32) {
        if let Some(bridge) = self.bridge
            && !channel.starts_with('#')
        {
            let envelope = Envelope::SubscriptionDelta {
                app,
                channel: Arc::from(channel),
                delta,
            };
            self.send_envelope(bridge, envelope);
        }
    }

    /// Tells the home shard one socket of `user_id` left.
    pub(super) fn leave_presence(&self, app: AppIdx, channel: &str, user_id: &str) {
        let home = self.home_of(app, channel);
        if home == self.id {
            self.home_leave(app, channel, user_id);
        } else {
            let envelope = Envelope::PresenceLeave {
                app,
                channel: Arc::from(channel),
                user_id: Arc::from(user_id),
            };
            self.send_envelope(home, envelope);
        }
    }

    /// Drops cache entries past their time.
    pub(super) fn expire_cache(&self, now: Instant) {
        let ttl = self.config.cache_ttl;
        self.cache
            .borrow_mut()
            .retain(|_, (_, at)| now.duration_since(*at) < ttl);
    }
}

/// Reads `channel_data`: a JSON object with a `user_id` (string or number) and an
/// optional `user_info` no larger than the app allows.
fn parse_member(
    channel_data: Option<&str>,
    max_info_kb: f64,
) -> Result<Member, (&'static str, String, u16)> {
    let bad = |msg: &str| ("InvalidChannelData", msg.to_owned(), 400);
    let data = channel_data.ok_or_else(|| bad("Presence channels need channel_data."))?;
    let mut bytes = data.as_bytes().to_vec();
    let value =
        simd_json::to_borrowed_value(&mut bytes).map_err(|_| bad("channel_data is not JSON."))?;
    let user_id = match value.get("user_id") {
        Some(v) if v.is_str() => v.as_str().unwrap_or_default().to_owned(),
        Some(v) if v.is_number() => v.encode(),
        _ => return Err(bad("channel_data has no user_id.")),
    };
    if user_id.is_empty() {
        return Err(bad("channel_data has an empty user_id."));
    }
    let info = value
        .get("user_info")
        .map_or_else(|| "null".to_owned(), |v| v.encode());
    if info.len() as f64 > max_info_kb * 1024.0 {
        let error = format!("The maximum size of a presence member is {max_info_kb} KB.");
        return Err(("LimitReached", error, 4301));
    }
    Ok(Member { user_id, info })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_needs_user_id_and_fits_the_size_limit() {
        let m = parse_member(Some(r#"{"user_id":"7","user_info":{"n":"A"}}"#), 2.0).expect("ok");
        assert_eq!((m.user_id.as_str(), m.info.as_str()), ("7", r#"{"n":"A"}"#));
        let m = parse_member(Some(r#"{"user_id":42}"#), 2.0).expect("numeric id");
        assert_eq!((m.user_id.as_str(), m.info.as_str()), ("42", "null"));
        assert!(parse_member(None, 2.0).is_err());
        assert!(parse_member(Some("{}"), 2.0).is_err());
        assert!(parse_member(Some("nope"), 2.0).is_err());
        let big = format!(r#"{{"user_id":"1","user_info":"{}"}}"#, "x".repeat(3000));
        assert_eq!(parse_member(Some(&big), 2.0).err().map(|e| e.2), Some(4301));
    }
}
