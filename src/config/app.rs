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
    /// Whether subscribers of non-presence channels get `pusher_internal:subscription_count`
    /// (and webhooks `subscription_count`); off by default, so other apps pay nothing.
    pub enable_subscription_count: bool,
    /// Whether signed-in users with a `watchlist` get `online` / `offline` watchlist
    /// events; off by default.
    pub enable_watchlist_events: bool,
    /// `Origin`s a WebSocket handshake may come from: empty or `*` allows all; an entry
    /// `*.example.com` allows every subdomain of `example.com`. A handshake without an
    /// `Origin` header (a server-side client) is always allowed.
    pub allowed_origins: Vec<String>,
}

impl AppConfig {
    /// Whether a WebSocket handshake with this `Origin` header (`None`: no header) may
    /// connect: no header, no list, `*`, an exact entry (case-insensitive), or a `*.`
    /// entry the origin's host ends with.
    #[must_use]
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        if self.allowed_origins.is_empty() {
            return true;
        }
        let origin = origin.trim().to_ascii_lowercase();
        // The host part: after the scheme, before the port.
        let host = origin.split_once("://").map_or(origin.as_str(), |(_, h)| h);
        let host = host.split(':').next().unwrap_or(host);
        self.allowed_origins.iter().any(|entry| {
            let entry = entry.trim().to_ascii_lowercase();
            if entry == "*" || entry == origin {
                return true;
            }
            match entry.strip_prefix("*.") {
                // `*.example.com` or `https://*.example.com`.
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => match entry.split_once("://*.") {
                    Some((scheme, domain)) => {
                        origin.starts_with(&format!("{scheme}://"))
                            && host.ends_with(&format!(".{domain}"))
                    }
                    // An entry without a scheme names a host.
                    None => !entry.contains("://") && host == entry,
                },
            }
        })
    }

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
            enable_subscription_count: false,
            enable_watchlist_events: false,
            allowed_origins: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(origins: &[&str]) -> AppConfig {
        let mut app = AppConfig::new("1", "k", "s");
        app.allowed_origins = origins.iter().map(|o| (*o).to_owned()).collect();
        app
    }

    #[test]
    fn origins_match_exactly_by_host_or_by_subdomain_wildcard() {
        assert!(app(&[]).origin_allowed(Some("https://evil.test")));
        assert!(app(&["*"]).origin_allowed(Some("https://evil.test")));
        let a = app(&["https://app.example.com", "*.good.test", "plain.test"]);
        assert!(a.origin_allowed(None), "server-side clients send no Origin");
        assert!(a.origin_allowed(Some("https://app.example.com")));
        assert!(a.origin_allowed(Some("HTTPS://APP.example.com")));
        assert!(!a.origin_allowed(Some("http://app.example.com")));
        assert!(!a.origin_allowed(Some("https://app.example.com.evil.test")));
        assert!(a.origin_allowed(Some("https://x.good.test")));
        assert!(a.origin_allowed(Some("http://a.b.good.test:8080")));
        assert!(!a.origin_allowed(Some("https://good.test")));
        assert!(!a.origin_allowed(Some("https://notgood.test")));
        assert!(a.origin_allowed(Some("http://plain.test:3000")));
        let s = app(&["https://*.good.test"]);
        assert!(s.origin_allowed(Some("https://x.good.test")));
        assert!(!s.origin_allowed(Some("http://x.good.test")));
    }
}
