//! The webhook events Pusher defines, and their JSON form in a webhook body.
//!
//! Field names follow Pusher's webhook documentation: every event has `name` and `channel`;
//! `member_added` / `member_removed` add `user_id`; `client_event` adds `event`, `data` (the
//! event data as a string of JSON text, as the client sent it), `socket_id`, and `user_id` on
//! presence channels only.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::config::WebhookEvent;

/// One webhook event as Pusher defines it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A channel got its first subscriber.
    ChannelOccupied { channel: String },
    /// A channel lost its last subscriber.
    ChannelVacated { channel: String },
    /// A user joined a presence channel (its first socket there).
    MemberAdded { channel: String, user_id: String },
    /// A user left a presence channel (its last socket there).
    MemberRemoved { channel: String, user_id: String },
    /// A socket sent a `client-*` event.
    ClientEvent {
        channel: String,
        /// The event name, `client-…`.
        event: String,
        /// The event data as JSON text, as the client sent it; sent as a JSON string.
        data: String,
        /// The sending socket.
        socket_id: String,
        /// The sender's user id; `Some` only on presence channels, as Pusher does.
        user_id: Option<String>,
    },
    /// A socket subscribed to a cache channel that holds no event.
    CacheMiss { channel: String },
    /// A channel's subscription count changed (coalesced, as the clients are told).
    SubscriptionCount {
        channel: String,
        subscription_count: u64,
    },
}

impl Event {
    /// The event type webhooks subscribe to with `event_types`.
    #[must_use]
    pub fn kind(&self) -> WebhookEvent {
        match self {
            Self::ChannelOccupied { .. } => WebhookEvent::ChannelOccupied,
            Self::ChannelVacated { .. } => WebhookEvent::ChannelVacated,
            Self::MemberAdded { .. } => WebhookEvent::MemberAdded,
            Self::MemberRemoved { .. } => WebhookEvent::MemberRemoved,
            Self::ClientEvent { .. } => WebhookEvent::ClientEvent,
            Self::CacheMiss { .. } => WebhookEvent::CacheMiss,
            Self::SubscriptionCount { .. } => WebhookEvent::SubscriptionCount,
        }
    }

    /// The channel the event happened on; webhook filters match against it.
    #[must_use]
    pub fn channel(&self) -> &str {
        match self {
            Self::ChannelOccupied { channel }
            | Self::ChannelVacated { channel }
            | Self::MemberAdded { channel, .. }
            | Self::MemberRemoved { channel, .. }
            | Self::ClientEvent { channel, .. }
            | Self::CacheMiss { channel }
            | Self::SubscriptionCount { channel, .. } => channel,
        }
    }

    /// The event as one element of a webhook body's `events` array.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("name".into(), self.kind().as_str().into());
        map.insert("channel".into(), self.channel().into());
        match self {
            Self::ChannelOccupied { .. } | Self::ChannelVacated { .. } | Self::CacheMiss { .. } => {
            }
            Self::MemberAdded { user_id, .. } | Self::MemberRemoved { user_id, .. } => {
                map.insert("user_id".into(), user_id.as_str().into());
            }
            Self::SubscriptionCount {
                subscription_count, ..
            } => {
                map.insert("subscription_count".into(), (*subscription_count).into());
            }
            Self::ClientEvent {
                event,
                data,
                socket_id,
                user_id,
                ..
            } => {
                map.insert("event".into(), event.as_str().into());
                map.insert("data".into(), data.as_str().into());
                map.insert("socket_id".into(), socket_id.as_str().into());
                if let Some(user_id) = user_id {
                    map.insert("user_id".into(), user_id.as_str().into());
                }
            }
        }
        Value::Object(map)
    }

    /// [`Event::to_json`] as JSON text, encoded once and shared by every webhook it goes to.
    #[must_use]
    pub(crate) fn encode(&self) -> Bytes {
        // A `Value` built from strings always serializes.
        Bytes::from(self.to_json().to_string())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn events_carry_the_fields_pusher_documents() {
        let cases = [
            (
                Event::ChannelOccupied {
                    channel: "test_channel".into(),
                },
                json!({"name": "channel_occupied", "channel": "test_channel"}),
            ),
            (
                Event::ChannelVacated {
                    channel: "test_channel".into(),
                },
                json!({"name": "channel_vacated", "channel": "test_channel"}),
            ),
            (
                Event::MemberAdded {
                    channel: "presence-room".into(),
                    user_id: "42".into(),
                },
                json!({"name": "member_added", "channel": "presence-room", "user_id": "42"}),
            ),
            (
                Event::MemberRemoved {
                    channel: "presence-room".into(),
                    user_id: "42".into(),
                },
                json!({"name": "member_removed", "channel": "presence-room", "user_id": "42"}),
            ),
            (
                Event::CacheMiss {
                    channel: "cache-prices".into(),
                },
                json!({"name": "cache_miss", "channel": "cache-prices"}),
            ),
        ];
        for (event, expected) in cases {
            assert_eq!(event.to_json(), expected);
            assert_eq!(event.kind().as_str(), expected["name"]);
        }
    }

    #[test]
    fn client_event_data_is_a_string_and_user_id_only_when_given() {
        let private = Event::ClientEvent {
            channel: "private-test_channel".into(),
            event: "client-my_event".into(),
            data: r#"{"data":1234}"#.into(),
            socket_id: "34718.5367461".into(),
            user_id: None,
        };
        assert_eq!(
            private.to_json(),
            json!({
                "name": "client_event",
                "channel": "private-test_channel",
                "event": "client-my_event",
                "data": "{\"data\":1234}",
                "socket_id": "34718.5367461"
            })
        );
        let presence = Event::ClientEvent {
            channel: "presence-room".into(),
            event: "client-typing".into(),
            data: "{}".into(),
            socket_id: "1.2".into(),
            user_id: Some("7".into()),
        };
        assert_eq!(presence.to_json()["user_id"], "7");
        assert_eq!(presence.channel(), "presence-room");
        let text: Value = serde_json::from_slice(&presence.encode()).unwrap_or_default();
        assert_eq!(text, presence.to_json());
    }
}
