//! Messages a client sends, parsed in place with simd-json.

use simd_json::BorrowedValue;
use simd_json::prelude::*;

/// One message from a client, after parsing. Owned so the caller may act on it while it
/// touches shard state; client messages are rare next to deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// `pusher:ping`: answer `pusher:pong`.
    Ping,
    /// `pusher:pong`: the answer to our ping.
    Pong,
    /// `pusher:subscribe`.
    Subscribe {
        channel: String,
        /// `key:signature` for private and presence channels.
        auth: Option<String>,
        /// Presence member data, a JSON string.
        channel_data: Option<String>,
    },
    /// `pusher:unsubscribe`.
    Unsubscribe { channel: String },
    /// `pusher:signin` (user authentication).
    Signin { user_data: String, auth: String },
    /// `client-*` event on a channel.
    ClientEvent {
        event: String,
        channel: String,
        /// The `data` value re-encoded as JSON text.
        data: String,
    },
    /// Any other event name; ignored as Pusher does.
    Other { event: String },
}

/// Why a client message could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    /// Not JSON, or not an object.
    #[error("Invalid JSON message.")]
    InvalidJson,
    /// No string `event` field.
    #[error("The message has no event name.")]
    MissingEvent,
    /// A required field is missing or not a string.
    #[error("The {event} message has no {field}.")]
    MissingField {
        event: &'static str,
        field: &'static str,
    },
}

/// Parses a client text message. `text` is scratch space: simd-json parses it in place.
pub fn parse_client_message(text: &mut [u8]) -> Result<ClientMessage, InboundError> {
    let value = simd_json::to_borrowed_value(text).map_err(|_| InboundError::InvalidJson)?;
    if !value.is_object() {
        return Err(InboundError::InvalidJson);
    }
    let event = value.get_str("event").ok_or(InboundError::MissingEvent)?;
    let data = value.get("data");
    Ok(match event {
        "pusher:ping" => ClientMessage::Ping,
        "pusher:pong" => ClientMessage::Pong,
        "pusher:subscribe" => {
            let data = object_data(data);
            let data = data.as_ref();
            ClientMessage::Subscribe {
                channel: field(data, "pusher:subscribe", "channel")?,
                auth: data.and_then(|d| d.get_str("auth")).map(str::to_owned),
                channel_data: data
                    .and_then(|d| d.get_str("channel_data"))
                    .map(str::to_owned),
            }
        }
        "pusher:unsubscribe" => {
            let data = object_data(data);
            ClientMessage::Unsubscribe {
                channel: field(data.as_ref(), "pusher:unsubscribe", "channel")?,
            }
        }
        "pusher:signin" => {
            let data = object_data(data);
            let data = data.as_ref();
            ClientMessage::Signin {
                user_data: field(data, "pusher:signin", "user_data")?,
                auth: field(data, "pusher:signin", "auth")?,
            }
        }
        e if e.starts_with("client-") => ClientMessage::ClientEvent {
            event: e.to_owned(),
            channel: value
                .get_str("channel")
                .ok_or(InboundError::MissingField {
                    event: "client event",
                    field: "channel",
                })?
                .to_owned(),
            data: data.map_or_else(|| "null".to_owned(), |d| d.encode()),
        },
        e => ClientMessage::Other {
            event: e.to_owned(),
        },
    })
}

/// `data` as an object: pusher-js sends an object, some clients a JSON string holding one.
fn object_data<'v>(data: Option<&'v BorrowedValue<'v>>) -> Option<BorrowedValue<'static>> {
    let data = data?;
    if data.is_object() {
        return Some(data.clone().into_static());
    }
    let mut text = data.as_str()?.as_bytes().to_vec();
    let parsed = simd_json::to_borrowed_value(&mut text).ok()?;
    parsed.is_object().then(|| parsed.into_static())
}

fn field(
    data: Option<&BorrowedValue<'_>>,
    event: &'static str,
    name: &'static str,
) -> Result<String, InboundError> {
    data.and_then(|d| d.get_str(name))
        .map(str::to_owned)
        .ok_or(InboundError::MissingField { event, field: name })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClientMessage, InboundError> {
        parse_client_message(&mut text.as_bytes().to_vec())
    }

    #[test]
    fn ping_and_subscribe_parse() {
        assert_eq!(
            parse(r#"{"event":"pusher:ping","data":{}}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            parse(r#"{"event":"pusher:subscribe","data":{"channel":"chat","auth":"k:s"}}"#),
            Ok(ClientMessage::Subscribe {
                channel: "chat".into(),
                auth: Some("k:s".into()),
                channel_data: None
            })
        );
    }

    #[test]
    fn subscribe_data_may_be_a_json_string() {
        assert_eq!(
            parse(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#),
            Ok(ClientMessage::Subscribe {
                channel: "a".into(),
                auth: None,
                channel_data: None
            })
        );
    }

    #[test]
    fn client_event_keeps_data_as_json_text() {
        let m = parse(r#"{"event":"client-typing","channel":"private-a","data":{"x":[1,"é"]}}"#);
        let Ok(ClientMessage::ClientEvent {
            event,
            channel,
            data,
        }) = m
        else {
            panic!("not a client event: {m:?}")
        };
        assert_eq!(
            (event.as_str(), channel.as_str()),
            ("client-typing", "private-a")
        );
        let v: serde_json::Value = serde_json::from_str(&data).expect("json");
        assert_eq!(v, serde_json::json!({"x": [1, "é"]}));
    }

    #[test]
    fn malformed_messages_get_errors() {
        assert_eq!(parse("not json"), Err(InboundError::InvalidJson));
        assert_eq!(parse("[1,2]"), Err(InboundError::InvalidJson));
        assert_eq!(parse(r#"{"data":{}}"#), Err(InboundError::MissingEvent));
        assert_eq!(
            parse(r#"{"event":"pusher:subscribe","data":{}}"#),
            Err(InboundError::MissingField {
                event: "pusher:subscribe",
                field: "channel"
            })
        );
        assert!(matches!(
            parse(r#"{"event":"client-x","data":1}"#),
            Err(InboundError::MissingField { .. })
        ));
    }
}
