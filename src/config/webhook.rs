//! An app's webhooks, in Soketi's format: `[{"url": ..., "headers": {...}, "event_types": [...],
//! "filter": {"channel_name_starts_with": ..., "channel_name_ends_with": ...}}]`.
//!
//! Parsed strictly: Soketi turns a malformed list into "no webhooks" without a word, which
//! loses events silently; here an unknown field, a bad event type or a missing URL is an error.

use serde_json::{Map, Value};

use super::ConfigError;
use super::value::{self, Raw};

/// One HTTP endpoint that receives webhook batches for an app.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    /// Where the signed `POST` goes (`http://` or `https://`).
    pub url: String,
    /// Extra request headers, e.g. an API token the receiver checks.
    pub headers: Vec<(String, String)>,
    /// The events this endpoint wants; others are not sent to it.
    pub event_types: Vec<WebhookEvent>,
    /// Restricts the events to channels whose name matches.
    pub filter: WebhookFilter,
}

/// Channel-name filter of a webhook; both parts must match when both are set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookFilter {
    /// Only channels whose name starts with this.
    pub channel_name_starts_with: Option<String>,
    /// Only channels whose name ends with this.
    pub channel_name_ends_with: Option<String>,
}

impl WebhookFilter {
    /// Whether an event on `channel` passes this filter.
    #[must_use]
    pub fn matches(&self, channel: &str) -> bool {
        self.channel_name_starts_with
            .as_deref()
            .is_none_or(|p| channel.starts_with(p))
            && self
                .channel_name_ends_with
                .as_deref()
                .is_none_or(|s| channel.ends_with(s))
    }
}

/// The webhook event names Pusher (and Soketi) define.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookEvent {
    /// `client_event`: a client sent a `client-*` event.
    ClientEvent,
    /// `channel_occupied`: a channel got its first subscriber.
    ChannelOccupied,
    /// `channel_vacated`: a channel lost its last subscriber.
    ChannelVacated,
    /// `member_added`: a user joined a presence channel.
    MemberAdded,
    /// `member_removed`: a user left a presence channel.
    MemberRemoved,
    /// `cache_miss`: a subscriber joined a cache channel that holds no event.
    CacheMiss,
    /// `subscription_count`: a channel's subscription count changed (apps with
    /// `enableSubscriptionCount`).
    SubscriptionCount,
}

impl WebhookEvent {
    /// Every event type, in the order the names are documented.
    pub const ALL: [WebhookEvent; 7] = [
        Self::ClientEvent,
        Self::ChannelOccupied,
        Self::ChannelVacated,
        Self::MemberAdded,
        Self::MemberRemoved,
        Self::CacheMiss,
        Self::SubscriptionCount,
    ];

    /// The name used in config and in webhook payloads.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClientEvent => "client_event",
            Self::ChannelOccupied => "channel_occupied",
            Self::ChannelVacated => "channel_vacated",
            Self::MemberAdded => "member_added",
            Self::MemberRemoved => "member_removed",
            Self::CacheMiss => "cache_miss",
            Self::SubscriptionCount => "subscription_count",
        }
    }

    /// The event type with this name, if any.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// Reads a webhook list from a JSON array or from text holding one (the env form).
pub(crate) fn parse_list(raw: &Raw, option: &str) -> Result<Vec<WebhookConfig>, ConfigError> {
    let list = value::json(raw, option)?;
    let Value::Array(items) = list else {
        return Err(invalid(option, &list, "a JSON array of webhooks"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_one(item, &format!("{option}.{i}")))
        .collect()
}

fn parse_one(item: &Value, option: &str) -> Result<WebhookConfig, ConfigError> {
    let Value::Object(fields) = item else {
        return Err(invalid(option, item, "an object with url and event_types"));
    };
    let mut url = None;
    let mut headers = Vec::new();
    let mut event_types = None;
    let mut filter = WebhookFilter::default();
    for (name, field) in fields {
        let path = format!("{option}.{name}");
        match name.as_str() {
            "url" => url = Some(parse_url(field, &path)?),
            "headers" => headers = string_map(field, &path)?,
            "event_types" => event_types = Some(parse_events(field, &path)?),
            "filter" => filter = parse_filter(field, &path)?,
            "lambda_function" | "lambda" => {
                return Err(ConfigError::Unsupported {
                    option: path,
                    value: field.to_string(),
                    reason: "AWS Lambda webhooks are not implemented; use an HTTP url",
                });
            }
            _ => return Err(ConfigError::UnknownKey { key: path }),
        }
    }
    Ok(WebhookConfig {
        url: url.ok_or_else(|| ConfigError::Missing {
            option: format!("{option}.url"),
        })?,
        headers,
        event_types: event_types.ok_or_else(|| ConfigError::Missing {
            option: format!("{option}.event_types"),
        })?,
        filter,
    })
}

fn parse_url(field: &Value, path: &str) -> Result<String, ConfigError> {
    match field.as_str() {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            Ok(url.to_owned())
        }
        _ => Err(invalid(path, field, "an http:// or https:// URL")),
    }
}

fn parse_events(field: &Value, path: &str) -> Result<Vec<WebhookEvent>, ConfigError> {
    let expected = "a list of client_event, channel_occupied, channel_vacated, member_added, member_removed, cache_miss";
    let Value::Array(names) = field else {
        return Err(invalid(path, field, expected));
    };
    names
        .iter()
        .map(|name| {
            name.as_str()
                .and_then(WebhookEvent::from_name)
                .ok_or_else(|| invalid(path, name, expected))
        })
        .collect()
}

fn parse_filter(field: &Value, path: &str) -> Result<WebhookFilter, ConfigError> {
    let mut filter = WebhookFilter::default();
    for (name, part) in string_map(field, path)? {
        let part = (!part.is_empty()).then_some(part);
        match name.as_str() {
            "channel_name_starts_with" => filter.channel_name_starts_with = part,
            "channel_name_ends_with" => filter.channel_name_ends_with = part,
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: format!("{path}.{name}"),
                });
            }
        }
    }
    Ok(filter)
}

/// An object whose values are all strings, as pairs in key order.
fn string_map(field: &Value, path: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let Value::Object(map) = field else {
        return Err(invalid(path, field, "an object of strings"));
    };
    let map: &Map<String, Value> = map;
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            _ => Err(invalid(&format!("{path}.{k}"), v, "a string")),
        })
        .collect()
}

fn invalid(option: &str, value: &Value, expected: &str) -> ConfigError {
    Raw::Json(value.clone()).invalid(option, expected)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(value: Value) -> Result<Vec<WebhookConfig>, ConfigError> {
        parse_list(&Raw::Json(value), "appManager.array.apps.0.webhooks")
    }

    #[test]
    fn reads_url_headers_event_types_and_filter() {
        let hooks = parse(json!([{
            "url": "https://example.com/hook",
            "headers": {"X-Token": "t"},
            "event_types": ["channel_occupied", "member_added"],
            "filter": {"channel_name_starts_with": "presence-", "channel_name_ends_with": "-room"}
        }]))
        .unwrap_or_default();
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0].url, "https://example.com/hook");
        assert_eq!(
            hooks[0].headers,
            vec![("X-Token".to_owned(), "t".to_owned())]
        );
        assert_eq!(
            hooks[0].event_types,
            vec![WebhookEvent::ChannelOccupied, WebhookEvent::MemberAdded]
        );
        assert!(hooks[0].filter.matches("presence-chat-room"));
        assert!(!hooks[0].filter.matches("private-chat-room"));
        assert!(!hooks[0].filter.matches("presence-chat"));
    }

    #[test]
    fn env_text_is_parsed_as_json() {
        let raw = Raw::Env(r#"[{"url":"http://h/x","event_types":["client_event"]}]"#.to_owned());
        let hooks = parse_list(&raw, "SOKETI_DEFAULT_APP_WEBHOOKS").unwrap_or_default();
        assert_eq!(hooks[0].event_types, vec![WebhookEvent::ClientEvent]);
        assert!(hooks[0].filter.matches("anything"));
    }

    #[test]
    fn errors_name_the_webhook_field() {
        let cases = [
            (
                json!([{"url": "ftp://x", "event_types": []}]),
                "webhooks.0.url",
            ),
            (
                json!([{"url": "http://x", "event_types": ["channel_exploded"]}]),
                "webhooks.0.event_types",
            ),
            (
                json!([{"url": "http://x"}]),
                "webhooks.0.event_types is required",
            ),
            (json!([{"event_types": []}]), "webhooks.0.url is required"),
            (
                json!([{"url": "http://x", "event_types": [], "retries": 3}]),
                "webhooks.0.retries",
            ),
            (
                json!([{"url": "http://x", "event_types": [], "filter": {"prefix": "a"}}]),
                "webhooks.0.filter.prefix",
            ),
            (
                json!([{"lambda_function": "f", "event_types": []}]),
                "webhooks.0.lambda_function",
            ),
            (
                json!([{"url": "http://x", "event_types": [], "headers": {"A": 1}}]),
                "webhooks.0.headers.A",
            ),
            (json!({"url": "http://x"}), "webhooks: {"),
        ];
        for (value, needle) in cases {
            let err = parse(value).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should contain {needle}");
        }
        let err = parse_list(&Raw::Env("[".to_owned()), "SOKETI_DEFAULT_APP_WEBHOOKS").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("SOKETI_DEFAULT_APP_WEBHOOKS is not valid JSON")
        );
    }

    #[test]
    fn event_names_round_trip() {
        for event in WebhookEvent::ALL {
            assert_eq!(WebhookEvent::from_name(event.as_str()), Some(event));
        }
    }
}
