//! Users and client events: `pusher:signin`, the user channel that `sendToUser` reaches,
//! terminating a user's connections on every shard, and `client-*` events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use simd_json::prelude::*;

use super::{Shard, Subscription};
use crate::config::WebhookEvent;
use crate::metrics::Counter;
use crate::webhooks::Event;

/// The refusal sent past `max_client_events_per_sec`.
const RATE_LIMITED: &str = "Client event rate limit reached.";
use crate::app::AppIdx;
use crate::fanout::Envelope;
use crate::protocol::{
    ChannelKind, Data, ErrorCode, EventFrame, USER_CHANNEL_PREFIX, error_frame, event_frame,
};
use crate::registry::ConnKey;

impl Shard {
    /// `pusher:signin`: a valid signature makes the socket a user's and puts it on the
    /// user's channel; a bad one is 4009 and a close.
    pub(super) fn signin(&self, key: ConnKey, user_data: &str, auth: &str) {
        let Some((app_idx, socket_id)) = self.conns.borrow().get(key).map(|c| (c.app, c.socket_id))
        else {
            return;
        };
        let app = self.apps.get(app_idx);
        let sid = socket_id.to_string();
        let user_id = crate::auth::verify_user_auth(&app.key, &app.secret, &sid, user_data, auth)
            .then(|| user_id_of(user_data))
            .flatten();
        let Some(user_id) = user_id else {
            self.metrics.inc(Counter::ProtocolErrors, 1);
            let code = ErrorCode::Unauthorized;
            self.send_to(key, error_frame(code, Some("Invalid user authentication.")));
            self.begin_close(key, code.code(), None);
            return;
        };
        let watchlist = if app.enable_watchlist_events {
            match super::watch::watchlist_of(user_data) {
                Ok(list) => Some(list),
                Err(message) => {
                    self.metrics.inc(Counter::ProtocolErrors, 1);
                    let code = ErrorCode::Unauthorized;
                    self.send_to(key, error_frame(code, Some(&message)));
                    self.begin_close(key, code.code(), None);
                    return;
                }
            }
        } else {
            None
        };
        let user_channel = format!("{USER_CHANNEL_PREFIX}{user_id}");
        let user_id: Arc<str> = Arc::from(user_id);
        let added = self
            .registry
            .borrow_mut()
            .subscribe(app_idx, &user_channel, key);
        let first_socket = added
            && self
                .registry
                .borrow()
                .subscribers(app_idx, &user_channel)
                .is_some_and(|s| s.len() == 1);
        if added && let Some(c) = self.conns.borrow_mut().get_mut(key) {
            c.channels.push(Subscription {
                channel: Arc::from(user_channel),
                presence_user: None,
            });
        }
        if let Some(c) = self.conns.borrow_mut().get_mut(key) {
            c.user_id = Some(Arc::clone(&user_id));
            c.authorized = true;
        }
        let mut data = Vec::with_capacity(24 + user_data.len());
        data.extend_from_slice(b"{\"user_data\":");
        let _ = serde_json::to_writer(&mut data, user_data);
        data.push(b'}');
        let data = String::from_utf8_lossy(&data);
        let frame = event_frame(&EventFrame {
            event: "pusher:signin_success",
            channel: None,
            data: Data::Json(&data),
            user_id: None,
        });
        self.send_to(key, frame);
        if let Some(watchlist) = watchlist {
            // After signin_success, so the initial state follows it.
            self.watch_signin(key, app_idx, &user_id, watchlist, first_socket);
        }
    }

    /// Closes every socket of `user_id` on every shard with 4009.
    pub fn terminate_user(&self, app: AppIdx, user_id: &str) {
        self.terminate_local(app, user_id);
        let user: Arc<str> = Arc::from(user_id);
        let full = self
            .outbox
            .borrow_mut()
            .push_all(|| Envelope::TerminateUser {
                app,
                user_id: Arc::clone(&user),
            });
        if full > 0 {
            self.metrics.inc(Counter::FanoutDropped, full);
        }
    }

    /// Closes this shard's sockets of `user_id`.
    pub(super) fn terminate_local(&self, app: AppIdx, user_id: &str) {
        let keys: Vec<ConnKey> = self
            .conns
            .borrow()
            .iter()
            .filter(|(_, c)| c.app == app && c.user_id.as_deref() == Some(user_id))
            .map(|(k, _)| k)
            .collect();
        let code = ErrorCode::Unauthorized;
        for key in keys {
            self.send_to(
                key,
                error_frame(code, Some("The user's connections were terminated.")),
            );
            self.begin_close(key, code.code(), None);
        }
    }

    /// `client-*` events: only on private and presence channels the sender is on, only
    /// when the app allows them and within its limits; delivered to every other
    /// subscriber, never echoed, with `user_id` on presence channels.
    pub(super) fn client_event(&self, key: ConnKey, event: &str, channel: &str, data: &str) {
        let now = Instant::now();
        let Some((app_idx, socket_id, sub, rate)) = self.conns.borrow_mut().get_mut(key).map(|c| {
            let sub = c.channels.iter().find(|s| &*s.channel == channel).cloned();
            if now.duration_since(c.client_events.0) >= Duration::from_secs(1) {
                c.client_events = (now, 0);
            }
            c.client_events.1 += 1;
            (c.app, c.socket_id, sub, c.client_events.1)
        }) else {
            return;
        };
        let app = self.apps.get(app_idx);
        let kind = ChannelKind::of(channel);
        let refusal = if !app.enable_client_messages {
            Some("Client events are not enabled for this app.")
        } else if !matches!(kind, ChannelKind::Private | ChannelKind::Presence) {
            Some("Client events are only allowed on private and presence channels.")
        } else if sub.is_none() {
            Some("The client is not subscribed to the channel.")
        } else if event.len() > app.max_event_name_length {
            Some("The event name is too long.")
        } else if data.len() as f64 > app.max_event_payload_in_kb * 1024.0 {
            Some("The event data is too large.")
        } else if app
            .max_client_events_per_sec
            .is_some_and(|max| u64::from(rate) > max)
        {
            Some(RATE_LIMITED)
        } else {
            None
        };
        if let Some(message) = refusal {
            self.metrics.inc(Counter::ClientEventsRejected, 1);
            if message == RATE_LIMITED {
                self.metrics.inc(Counter::RateLimitedClient, 1);
            }
            let code = ErrorCode::ClientEventRejected;
            self.send_to(key, error_frame(code, Some(message)));
            return;
        }
        let member = sub.and_then(|s| s.presence_user);
        let frame = event_frame(&EventFrame {
            event,
            channel: Some(channel),
            data: Data::Json(data),
            user_id: member.as_deref(),
        });
        self.catch_up();
        self.publish(app_idx, channel, &frame, Some(socket_id), true);
        let a = app_idx.0 as usize;
        if self.webhooks.wants(a, WebhookEvent::ClientEvent, channel) {
            self.webhooks.send(
                a,
                Event::ClientEvent {
                    channel: channel.to_owned(),
                    event: event.to_owned(),
                    data: data.to_owned(),
                    socket_id: socket_id.to_string(),
                    user_id: member.as_deref().map(str::to_owned),
                },
            );
        }
    }
}

/// The `id` of `user_data`, which must be a JSON object with a non-empty string id.
fn user_id_of(user_data: &str) -> Option<String> {
    let mut bytes = user_data.as_bytes().to_vec();
    let value = simd_json::to_borrowed_value(&mut bytes).ok()?;
    let id = value.get_str("id")?;
    (!id.is_empty()).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_needs_a_string_id() {
        assert_eq!(
            user_id_of(r#"{"id":"u1","name":"A"}"#).as_deref(),
            Some("u1")
        );
        assert_eq!(user_id_of(r#"{"id":""}"#), None);
        assert_eq!(user_id_of(r#"{"id":5}"#), None);
        assert_eq!(user_id_of("nope"), None);
    }
}
