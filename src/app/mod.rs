//! The app table: every configured app with its limits, looked up by id (REST) or key
//! (WebSocket). Built once at start-up and shared read-only by every shard.

pub mod limits;

use ahash::AHashMap;

use crate::config::AppConfig;
use limits::{Quota, RateWindow};

/// Index of an app in the [`AppTable`]; what envelopes and maps carry instead of strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AppIdx(pub u32);

/// Counters every shard shares for one app's quotas.
#[derive(Debug, Default)]
pub struct AppUsage {
    /// Open WebSocket connections, against `max_connections`.
    pub connections: Quota,
    /// REST publishes this second, against `max_backend_events_per_sec`.
    pub backend_events: RateWindow,
    /// REST reads this second, against `max_read_req_per_sec`.
    pub read_requests: RateWindow,
}

/// All apps, with lookups by id and by key.
#[derive(Debug)]
pub struct AppTable {
    apps: Vec<AppConfig>,
    usage: Vec<AppUsage>,
    by_id: AHashMap<String, AppIdx>,
    by_key: AHashMap<String, AppIdx>,
}

impl AppTable {
    /// Builds the table; the config has already rejected duplicate ids and keys.
    #[must_use]
    pub fn new(apps: Vec<AppConfig>) -> Self {
        let mut by_id = AHashMap::new();
        let mut by_key = AHashMap::new();
        for (i, app) in apps.iter().enumerate() {
            let idx = AppIdx(u32::try_from(i).unwrap_or(u32::MAX));
            by_id.insert(app.id.clone(), idx);
            by_key.insert(app.key.clone(), idx);
        }
        let usage = apps.iter().map(|_| AppUsage::default()).collect();
        Self {
            apps,
            usage,
            by_id,
            by_key,
        }
    }

    /// The app whose id is `id` (REST paths).
    #[must_use]
    pub fn by_id(&self, id: &str) -> Option<(AppIdx, &AppConfig)> {
        self.by_id.get(id).map(|&i| (i, &self.apps[i.0 as usize]))
    }

    /// The app whose key is `key` (WebSocket paths).
    #[must_use]
    pub fn by_key(&self, key: &str) -> Option<(AppIdx, &AppConfig)> {
        self.by_key.get(key).map(|&i| (i, &self.apps[i.0 as usize]))
    }

    /// The app at `idx`; indices come only from this table.
    #[must_use]
    pub fn get(&self, idx: AppIdx) -> &AppConfig {
        &self.apps[idx.0 as usize]
    }

    /// The shared quota counters of the app at `idx`.
    #[must_use]
    pub fn usage(&self, idx: AppIdx) -> &AppUsage {
        &self.usage[idx.0 as usize]
    }

    /// How many apps there are (per-app maps are sized by it).
    #[must_use]
    pub fn len(&self) -> usize {
        self.apps.len()
    }

    /// Whether no app is configured.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }
}
