//! One app of `appManager.array.apps`: credentials, switches and limits, with Soketi's
//! defaults. How an app is read from the config is in `app_fields.rs`.

use super::webhook::WebhookConfig;

/// One app's credentials and limits. Shared read-only by every shard.
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    /// The id in REST paths (`/apps/{id}/events`).
    pub id: String,
    /// The public key clients connect with (`/app/{key}`) and signatures start with.
    pub key: String,
    /// The HMAC secret for channel auth, sign-in and REST signatures.
    pub secret: String,
    /// A disabled app refuses connections (4003) and REST calls.
    pub enabled: bool,
    /// Whether `client-*` events from sockets are relayed.
    pub enable_client_messages: bool,
    /// Whether sockets must `pusher:signin` within the user authentication timeout.
    pub enable_user_authentication: bool,
    /// Concurrent connections allowed; `None` is unlimited (Soketi's -1, and its 0).
    pub max_connections: Option<u64>,
    /// REST-triggered events per second; `None` is unlimited.
    pub max_backend_events_per_sec: Option<u64>,
    /// Client events per second per socket; `None` is unlimited.
    pub max_client_events_per_sec: Option<u64>,
    /// REST read requests per second; `None` is unlimited.
    pub max_read_req_per_sec: Option<u64>,
    /// Members a presence channel may hold.
    pub max_presence_members_per_channel: u32,
    /// Largest presence `user_info`, in KB (1024 bytes).
    pub max_presence_member_size_in_kb: f64,
    /// Longest channel name, prefix included.
    pub max_channel_name_length: usize,
    /// Most channels one REST event may target.
    pub max_event_channels_at_once: usize,
    /// Longest event name.
    pub max_event_name_length: usize,
    /// Largest event `data`, in KB (1024 bytes).
    pub max_event_payload_in_kb: f64,
    /// Most events in one `/batch_events` call.
    pub max_event_batch_size: usize,
    /// Where this app's webhooks go.
    pub webhooks: Vec<WebhookConfig>,
}

impl AppConfig {
    /// An app with Soketi's defaults: enabled, no client messages, no user authentication,
    /// no rate or connection limits, no webhooks, and Soketi's server-level size limits.
    #[must_use]
    pub fn new(id: &str, key: &str, secret: &str) -> Self {
        AppDefaults::default().app(id.to_owned(), key.to_owned(), secret.to_owned())
    }
}

/// Soketi's server-level limits, inherited by every app that does not set its own.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AppDefaults {
    /// `presence.maxMembersPerChannel`, 100.
    pub presence_max_members: u32,
    /// `presence.maxMemberSizeInKb`, 2.
    pub presence_max_member_size_kb: f64,
    /// `channelLimits.maxNameLength`, 200.
    pub channel_max_name_length: usize,
    /// `eventLimits.maxChannelsAtOnce`, 100.
    pub event_max_channels_at_once: usize,
    /// `eventLimits.maxNameLength`, 200.
    pub event_max_name_length: usize,
    /// `eventLimits.maxPayloadInKb`, 100.
    pub event_max_payload_kb: f64,
    /// `eventLimits.maxBatchSize`, 10.
    pub event_max_batch_size: usize,
}

impl Default for AppDefaults {
    fn default() -> Self {
        Self {
            presence_max_members: 100,
            presence_max_member_size_kb: 2.0,
            channel_max_name_length: 200,
            event_max_channels_at_once: 100,
            event_max_name_length: 200,
            event_max_payload_kb: 100.0,
            event_max_batch_size: 10,
        }
    }
}

impl AppDefaults {
    pub(crate) fn app(&self, id: String, key: String, secret: String) -> AppConfig {
        AppConfig {
            id,
            key,
            secret,
            enabled: true,
            enable_client_messages: false,
            enable_user_authentication: false,
            max_connections: None,
            max_backend_events_per_sec: None,
            max_client_events_per_sec: None,
            max_read_req_per_sec: None,
            max_presence_members_per_channel: self.presence_max_members,
            max_presence_member_size_in_kb: self.presence_max_member_size_kb,
            max_channel_name_length: self.channel_max_name_length,
            max_event_channels_at_once: self.event_max_channels_at_once,
            max_event_name_length: self.event_max_name_length,
            max_event_payload_in_kb: self.event_max_payload_kb,
            max_event_batch_size: self.event_max_batch_size,
            webhooks: Vec::new(),
        }
    }
}
