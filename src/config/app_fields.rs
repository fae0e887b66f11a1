//! Reading one app from the field names Soketi accepts (camelCase, PascalCase and the
//! snake_case of its SQL schema).
//!
//! Fields are collected raw while the config file and the environment are read, and typed
//! only at the end, because an app's missing limits default to the server-level limits
//! (`presence.*`, `channelLimits.*`, `eventLimits.*`), which the environment may set after
//! the file declared the apps.

use serde_json::{Map, Value};

use super::ConfigError;
use super::app::{AppConfig, AppDefaults};
use super::value::{self, Raw};
use super::webhook;

/// The fields written for one app, in the order they were set (file, then environment);
/// a later write of the same field wins.
#[derive(Debug, Clone, Default)]
pub(crate) struct AppFields {
    /// `(field name as written, value, option name for errors)`.
    fields: Vec<(String, Raw, String)>,
}

impl AppFields {
    /// The app Soketi starts with when nothing is configured.
    pub(crate) fn soketi_default() -> Self {
        let mut app = Self::default();
        for (field, value) in [
            ("id", "app-id"),
            ("key", "app-key"),
            ("secret", "app-secret"),
        ] {
            app.set(
                field,
                Raw::Json(Value::String(value.to_owned())),
                "the default app",
            );
        }
        app
    }

    /// The fields of one object of `appManager.array.apps`; `prefix` names it in errors.
    pub(crate) fn from_object(object: &Map<String, Value>, prefix: &str) -> Self {
        let mut app = Self::default();
        for (field, value) in object {
            app.set(
                field,
                Raw::Json(value.clone()),
                &format!("{prefix}.{field}"),
            );
        }
        app
    }

    pub(crate) fn set(&mut self, field: &str, value: Raw, option: &str) {
        self.fields
            .push((field.to_owned(), value, option.to_owned()));
    }
}

/// Types an app's fields. An unknown field is an error; a field set to `null` or `""` keeps
/// its default, as in Soketi (SQL rows use NULL for "server default"), except the
/// credentials, which must be present and non-empty.
pub(crate) fn build(
    fields: &AppFields,
    prefix: &str,
    defaults: &AppDefaults,
) -> Result<AppConfig, ConfigError> {
    let (mut id, mut key, mut secret) = (None, None, None);
    let mut app = defaults.app(String::new(), String::new(), String::new());
    for (name, raw, option) in &fields.fields {
        let Some(field) = field_for(name) else {
            return Err(ConfigError::UnknownKey {
                key: option.clone(),
            });
        };
        if raw.is_unset() {
            continue;
        }
        match field {
            Field::Id => id = Some(value::non_empty(raw, option)?),
            Field::Key => key = Some(value::non_empty(raw, option)?),
            Field::Secret => secret = Some(value::non_empty(raw, option)?),
            Field::Enabled => app.enabled = value::boolean(raw, option)?,
            Field::EnableClientMessages => {
                app.enable_client_messages = value::boolean(raw, option)?
            }
            Field::EnableUserAuthentication => {
                app.enable_user_authentication = value::boolean(raw, option)?
            }
            // Soketi reads `parseInt(maxConnections) || -1`: 0 is unlimited too.
            Field::MaxConnections => {
                app.max_connections = value::limit(raw, option)?.filter(|&n| n > 0)
            }
            Field::MaxBackendEvents => app.max_backend_events_per_sec = value::limit(raw, option)?,
            Field::MaxClientEvents => app.max_client_events_per_sec = value::limit(raw, option)?,
            Field::MaxReadRequests => app.max_read_req_per_sec = value::limit(raw, option)?,
            Field::MaxPresenceMembers => {
                let n = value::integer(raw, option, 0, u64::from(u32::MAX))?;
                app.max_presence_members_per_channel = u32::try_from(n).unwrap_or(u32::MAX);
            }
            Field::MaxPresenceMemberSize => {
                app.max_presence_member_size_in_kb = value::float(raw, option, 0.0)?
            }
            Field::MaxChannelNameLength => {
                app.max_channel_name_length = value::size(raw, option, 1)?
            }
            Field::MaxEventChannelsAtOnce => {
                app.max_event_channels_at_once = value::size(raw, option, 1)?
            }
            Field::MaxEventNameLength => app.max_event_name_length = value::size(raw, option, 1)?,
            Field::MaxEventPayload => app.max_event_payload_in_kb = value::float(raw, option, 0.0)?,
            Field::MaxEventBatchSize => app.max_event_batch_size = value::size(raw, option, 1)?,
            Field::Webhooks => app.webhooks = webhook::parse_list(raw, option)?,
            Field::EnableSubscriptionCount => {
                app.enable_subscription_count = value::boolean(raw, option)?
            }
            Field::EnableWatchlistEvents => {
                app.enable_watchlist_events = value::boolean(raw, option)?
            }
            Field::AllowedOrigins => app.allowed_origins = origin_list(raw, option)?,
        }
    }
    let missing = |field: &str| ConfigError::Missing {
        option: format!("{prefix}.{field}"),
    };
    app.id = id.ok_or_else(|| missing("id"))?;
    app.key = key.ok_or_else(|| missing("key"))?;
    app.secret = secret.ok_or_else(|| missing("secret"))?;
    Ok(app)
}

#[derive(Debug, Clone, Copy)]
enum Field {
    Id,
    Key,
    Secret,
    Enabled,
    EnableClientMessages,
    EnableUserAuthentication,
    MaxConnections,
    MaxBackendEvents,
    MaxClientEvents,
    MaxReadRequests,
    MaxPresenceMembers,
    MaxPresenceMemberSize,
    MaxChannelNameLength,
    MaxEventChannelsAtOnce,
    MaxEventNameLength,
    MaxEventPayload,
    MaxEventBatchSize,
    Webhooks,
    EnableSubscriptionCount,
    EnableWatchlistEvents,
    AllowedOrigins,
}

/// Every field name Soketi's `App` constructor reads (`extractFromPassedKeys`, v1.6).
#[rustfmt::skip]
const FIELD_NAMES: [(Field, &[&str]); 21] = [
    (Field::Id, &["id", "AppId"]),
    (Field::Key, &["key", "AppKey"]),
    (Field::Secret, &["secret", "AppSecret"]),
    (Field::Enabled, &["enabled", "Enabled"]),
    (Field::EnableClientMessages, &["enableClientMessages", "EnableClientMessages", "enable_client_messages"]),
    (Field::EnableUserAuthentication, &["enableUserAuthentication", "EnableUserAuthentication", "enable_user_authentication"]),
    (Field::MaxConnections, &["maxConnections", "MaxConnections", "max_connections"]),
    (Field::MaxBackendEvents, &["maxBackendEventsPerSecond", "MaxBackendEventsPerSecond", "max_backend_events_per_sec"]),
    (Field::MaxClientEvents, &["maxClientEventsPerSecond", "MaxClientEventsPerSecond", "max_client_events_per_sec"]),
    (Field::MaxReadRequests, &["maxReadRequestsPerSecond", "MaxReadRequestsPerSecond", "max_read_req_per_sec"]),
    (Field::MaxPresenceMembers, &["maxPresenceMembersPerChannel", "MaxPresenceMembersPerChannel", "max_presence_members_per_channel"]),
    (Field::MaxPresenceMemberSize, &["maxPresenceMemberSizeInKb", "MaxPresenceMemberSizeInKb", "max_presence_member_size_in_kb"]),
    (Field::MaxChannelNameLength, &["maxChannelNameLength", "MaxChannelNameLength", "max_channel_name_length"]),
    (Field::MaxEventChannelsAtOnce, &["maxEventChannelsAtOnce", "MaxEventChannelsAtOnce", "max_event_channels_at_once"]),
    (Field::MaxEventNameLength, &["maxEventNameLength", "MaxEventNameLength", "max_event_name_length"]),
    (Field::MaxEventPayload, &["maxEventPayloadInKb", "MaxEventPayloadInKb", "max_event_payload_in_kb"]),
    (Field::MaxEventBatchSize, &["maxEventBatchSize", "MaxEventBatchSize", "max_event_batch_size"]),
    (Field::Webhooks, &["webhooks", "Webhooks"]),
    (Field::EnableSubscriptionCount, &["enableSubscriptionCount", "EnableSubscriptionCount", "enable_subscription_count"]),
    (Field::EnableWatchlistEvents, &["enableWatchlistEvents", "EnableWatchlistEvents", "enable_watchlist_events"]),
    (Field::AllowedOrigins, &["allowedOrigins", "AllowedOrigins", "allowed_origins"]),
];

/// An origin allow-list: a JSON list of strings, or text with comma-separated entries
/// (`CORECAST_DEFAULT_APP_ALLOWED_ORIGINS`, an SQL column); JSON list text works too.
fn origin_list(raw: &Raw, option: &str) -> Result<Vec<String>, ConfigError> {
    let expected = "a list of origins (JSON list or comma-separated)";
    let entries = match raw {
        Raw::Json(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| raw.invalid(option, expected))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Raw::Env(text) | Raw::Json(Value::String(text)) => {
            let text = text.trim();
            if text.starts_with('[') {
                return origin_list(&Raw::Json(value::json(raw, option)?), option);
            }
            text.split(',').map(|e| e.trim().to_owned()).collect()
        }
        _ => return Err(raw.invalid(option, expected)),
    };
    Ok(entries.into_iter().filter(|e| !e.is_empty()).collect())
}

fn field_for(name: &str) -> Option<Field> {
    FIELD_NAMES
        .iter()
        .find(|(_, names)| names.contains(&name))
        .map(|&(f, _)| f)
}

/// Whether `name` is an app field in one of the spellings Soketi reads.
pub(crate) fn is_field(name: &str) -> bool {
    field_for(name).is_some()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn build_json(object: Value) -> Result<AppConfig, ConfigError> {
        let map = object.as_object().cloned().unwrap_or_default();
        let prefix = "appManager.array.apps.0";
        build(
            &AppFields::from_object(&map, prefix),
            prefix,
            &AppDefaults::default(),
        )
    }

    /// A valid app with one more field.
    fn with(field: &str, value: Value) -> Value {
        json!({"id": "a", "key": "k", "secret": "s", field: value})
    }

    fn sample(field: Field) -> Value {
        match field {
            Field::Id => json!("1"),
            Field::Key => json!("k"),
            Field::Secret => json!("s"),
            Field::Enabled => json!(false),
            Field::EnableClientMessages | Field::EnableUserAuthentication => json!(true),
            Field::MaxConnections => json!(10),
            Field::MaxBackendEvents => json!(20),
            Field::MaxClientEvents => json!("30"),
            Field::MaxReadRequests => json!(40),
            Field::MaxPresenceMembers => json!(50),
            Field::MaxPresenceMemberSize => json!(1.5),
            Field::MaxChannelNameLength => json!(60),
            Field::MaxEventChannelsAtOnce => json!(70),
            Field::MaxEventNameLength => json!(80),
            Field::MaxEventPayload => json!(90.5),
            Field::MaxEventBatchSize => json!(5),
            Field::Webhooks => json!([{"url": "http://h/w", "event_types": ["client_event"]}]),
            Field::EnableSubscriptionCount | Field::EnableWatchlistEvents => json!(true),
            Field::AllowedOrigins => json!("https://a.test, *.b.test"),
        }
    }

    #[test]
    fn camel_pascal_and_snake_names_set_the_same_fields() {
        let mut expected = AppConfig::new("1", "k", "s");
        expected.enabled = false;
        expected.enable_client_messages = true;
        expected.enable_user_authentication = true;
        expected.max_connections = Some(10);
        expected.max_backend_events_per_sec = Some(20);
        expected.max_client_events_per_sec = Some(30);
        expected.max_read_req_per_sec = Some(40);
        expected.max_presence_members_per_channel = 50;
        expected.max_presence_member_size_in_kb = 1.5;
        expected.max_channel_name_length = 60;
        expected.max_event_channels_at_once = 70;
        expected.max_event_name_length = 80;
        expected.max_event_payload_in_kb = 90.5;
        expected.max_event_batch_size = 5;
        expected.enable_subscription_count = true;
        expected.enable_watchlist_events = true;
        expected.allowed_origins = vec!["https://a.test".into(), "*.b.test".into()];
        expected.webhooks =
            webhook::parse_list(&Raw::Json(sample(Field::Webhooks)), "w").unwrap_or_default();
        // Spelling 0 is camelCase, 1 PascalCase, 2 snake_case (or the last one a field has).
        for spelling in 0..3 {
            let object: Map<String, Value> = FIELD_NAMES
                .iter()
                .map(|(field, names)| {
                    (
                        names[spelling.min(names.len() - 1)].to_owned(),
                        sample(*field),
                    )
                })
                .collect();
            let app = build_json(Value::Object(object)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(app, expected, "spelling {spelling}");
        }
    }

    #[test]
    fn allowed_origins_are_a_json_list_or_comma_separated_text() {
        let list = build_json(with("allowedOrigins", json!(["https://a.test", "*"])));
        let list = list.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(list.allowed_origins, ["https://a.test", "*"]);
        let text = build_json(with("allowed_origins", json!(r#"["https://a.test"]"#)));
        let text = text.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text.allowed_origins, ["https://a.test"]);
        let bad = build_json(with("allowedOrigins", json!([1]))).unwrap_err();
        assert!(bad.to_string().contains("allowedOrigins"), "{bad}");
        let none = build_json(with("id", json!("a"))).unwrap_or_else(|e| panic!("{e}"));
        assert!(none.allowed_origins.is_empty() && !none.enable_subscription_count);
    }

    #[test]
    fn unset_fields_take_server_limits_and_soketi_defaults() {
        let app = build_json(
            json!({"id": 7, "key": "k", "secret": "s", "maxConnections": null, "maxEventBatchSize": ""}),
        );
        assert_eq!(app.ok(), Some(AppConfig::new("7", "k", "s")));
    }

    #[test]
    fn minus_one_and_zero_connections_are_unlimited() {
        for value in [json!(-1), json!(0), json!("-1")] {
            let app = build_json(with("maxConnections", value));
            assert_eq!(app.map(|a| a.max_connections).ok(), Some(None));
        }
        let app = build_json(with("maxClientEventsPerSecond", json!(0)));
        assert_eq!(app.map(|a| a.max_client_events_per_sec).ok(), Some(Some(0)));
    }

    #[test]
    fn errors_name_the_app_field() {
        let cases = [
            (
                with("maxConections", json!(1)),
                "unknown config key \"appManager.array.apps.0.maxConections\"",
            ),
            (
                with("enabled", json!("yes")),
                "appManager.array.apps.0.enabled: \"yes\"",
            ),
            (
                with("max_connections", json!(-5)),
                "appManager.array.apps.0.max_connections: -5",
            ),
            (
                with("maxEventPayloadInKb", json!(-1)),
                "appManager.array.apps.0.maxEventPayloadInKb: -1",
            ),
            (
                with("maxEventBatchSize", json!(0)),
                "appManager.array.apps.0.maxEventBatchSize: 0",
            ),
            (
                with("secret", json!("")),
                "appManager.array.apps.0.secret is required",
            ),
            (
                with("key", json!(["k"])),
                "appManager.array.apps.0.key: [\"k\"]",
            ),
            (
                json!({"id": "a", "key": "k"}),
                "appManager.array.apps.0.secret is required",
            ),
        ];
        for (object, needle) in cases {
            let err = build_json(object).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should contain {needle}");
        }
    }

    #[test]
    fn later_writes_win() {
        let mut fields = AppFields::soketi_default();
        fields.set(
            "maxConnections",
            Raw::Env("5".to_owned()),
            "SOKETI_DEFAULT_APP_MAX_CONNS",
        );
        fields.set(
            "key",
            Raw::Env("other".to_owned()),
            "SOKETI_DEFAULT_APP_KEY",
        );
        let app = build(&fields, "appManager.array.apps.0", &AppDefaults::default());
        let app = app.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (app.id.as_str(), app.key.as_str(), app.secret.as_str()),
            ("app-id", "other", "app-secret")
        );
        assert_eq!(app.max_connections, Some(5));
    }
}
