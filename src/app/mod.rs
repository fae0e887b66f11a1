//! The app table: every app with its limits, looked up by id (REST) or key (WebSocket),
//! shared read-mostly by every shard.
//!
//! With the array app manager the table is built once at start-up and never changes. With
//! a database app manager ([`manager`]) it starts empty and the app-manager thread adds
//! apps as their keys or ids are first seen, replaces an app's row when it changes, and
//! marks apps disabled or deleted. Slots are never reused, so an [`AppIdx`] names one app
//! for the life of the process; shards read a slot's current row lock-free (`ArcSwap`).

pub mod limits;
pub mod manager;
pub mod source;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use ahash::AHashMap;
use arc_swap::{ArcSwap, Guard};

use crate::config::AppConfig;
use limits::{Lease, Quota, RateLease, RateWindow};

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
    /// With the redis adapter: connection slots of the cluster-wide `max_connections`
    /// this node holds and has not used.
    pub connection_lease: Lease,
    /// With `SOKETI_RATE_LIMITER_DRIVER=redis`: this node's unused share of the cluster's
    /// `max_backend_events_per_sec` and `max_read_req_per_sec` for the current second.
    pub backend_lease: RateLease,
    pub read_lease: RateLease,
}

/// A current row of an app, as shards read it.
pub type AppRef = Guard<Arc<AppConfig>>;

/// One app's place in the table.
#[derive(Debug)]
struct Slot {
    /// The app id; fixed for the slot's life (a row with another id is another app).
    id: Box<str>,
    /// The app's current row.
    config: ArcSwap<AppConfig>,
    /// The row is gone from the database: lookups miss, open sockets were closed.
    deleted: AtomicBool,
    usage: AppUsage,
}

/// All apps, with lookups by id and by key.
#[derive(Debug)]
pub struct AppTable {
    /// `capacity` slots, filled in order; `filled` of them hold an app.
    slots: Box<[OnceLock<Slot>]>,
    filled: AtomicU32,
    /// Lookups of a table that never changes (the array manager); `None` when an app
    /// manager fills the table, and shards resolve through it instead.
    fixed: Option<FixedIndex>,
    /// Ids of a table an app manager fills, for the threads that are not shards (the
    /// redis bridge names apps by id); written only when an app is added.
    added: RwLock<AHashMap<Box<str>, AppIdx>>,
}

#[derive(Debug)]
struct FixedIndex {
    by_id: AHashMap<String, AppIdx>,
    by_key: AHashMap<String, AppIdx>,
}

impl AppTable {
    /// The table of the array manager; the config has already rejected duplicate ids and
    /// keys.
    #[must_use]
    pub fn new(apps: Vec<AppConfig>) -> Self {
        let mut by_id = AHashMap::new();
        let mut by_key = AHashMap::new();
        let table = Self::empty(apps.len());
        for app in apps {
            let (id, key) = (app.id.clone(), app.key.clone());
            if let Some(idx) = table.insert(app) {
                by_id.insert(id, idx);
                by_key.insert(key, idx);
            }
        }
        Self {
            fixed: Some(FixedIndex { by_id, by_key }),
            ..table
        }
    }

    /// An empty table of `capacity` slots that an app manager fills.
    #[must_use]
    pub fn dynamic(capacity: usize) -> Self {
        Self::empty(capacity)
    }

    fn empty(capacity: usize) -> Self {
        Self {
            slots: (0..capacity).map(|_| OnceLock::new()).collect(),
            filled: AtomicU32::new(0),
            fixed: None,
            added: RwLock::new(AHashMap::new()),
        }
    }

    /// Whether the table never changes (lookups need no app manager).
    #[must_use]
    pub fn is_fixed(&self) -> bool {
        self.fixed.is_some()
    }

    /// The app whose id is `id`. In a table an app manager fills this takes a read lock
    /// and knows only apps already added: shards resolve ids through the app manager
    /// instead (`Shard::known_app_by_id`).
    #[must_use]
    pub fn by_id(&self, id: &str) -> Option<(AppIdx, AppRef)> {
        let idx = match &self.fixed {
            Some(fixed) => *fixed.by_id.get(id)?,
            None => {
                let added = self.added.read().unwrap_or_else(PoisonError::into_inner);
                let idx = *added.get(id)?;
                drop(added);
                if self.is_deleted(idx) {
                    return None;
                }
                idx
            }
        };
        Some((idx, self.get(idx)))
    }

    /// The app whose key is `key`, in a fixed table.
    #[must_use]
    pub fn by_key(&self, key: &str) -> Option<(AppIdx, AppRef)> {
        let idx = *self.fixed.as_ref()?.by_key.get(key)?;
        Some((idx, self.get(idx)))
    }

    /// The current row of the app at `idx`; indices come only from this table.
    #[must_use]
    pub fn get(&self, idx: AppIdx) -> AppRef {
        self.slot(idx).config.load()
    }

    /// The id of the app at `idx`.
    #[must_use]
    pub fn id(&self, idx: AppIdx) -> &str {
        &self.slot(idx).id
    }

    /// The shared quota counters of the app at `idx`.
    #[must_use]
    pub fn usage(&self, idx: AppIdx) -> &AppUsage {
        &self.slot(idx).usage
    }

    /// Whether the app's row was deleted.
    #[must_use]
    pub fn is_deleted(&self, idx: AppIdx) -> bool {
        self.slot(idx).deleted.load(Ordering::Acquire)
    }

    /// How many apps the table can hold (per-app maps and counters are sized by it).
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// How many apps it holds now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.filled.load(Ordering::Acquire) as usize
    }

    /// Whether it holds no app.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every app it holds: index and id.
    pub fn ids(&self) -> impl Iterator<Item = (AppIdx, &str)> {
        self.slots[..self.len()]
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((AppIdx(i as u32), &*s.get()?.id)))
    }

    /// Adds an app in the next free slot; `None` when the table is full. Only one thread
    /// (the start-up code or the app manager) ever inserts.
    pub fn insert(&self, app: AppConfig) -> Option<AppIdx> {
        let next = self.len();
        let slot = self.slots.get(next)?;
        let filled = slot.set(Slot {
            id: app.id.clone().into_boxed_str(),
            config: ArcSwap::from_pointee(app),
            deleted: AtomicBool::new(false),
            usage: AppUsage::default(),
        });
        if filled.is_err() {
            return None;
        }
        let idx = AppIdx(next as u32);
        self.filled.store(next as u32 + 1, Ordering::Release);
        self.added
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(self.slot(idx).id.clone(), idx);
        Some(idx)
    }

    /// Replaces the row of the app at `idx` (same id), and clears `deleted`.
    pub fn replace(&self, idx: AppIdx, app: AppConfig) {
        let slot = self.slot(idx);
        slot.config.store(Arc::new(app));
        slot.deleted.store(false, Ordering::Release);
    }

    /// Marks the app at `idx` deleted.
    pub fn delete(&self, idx: AppIdx) {
        self.slot(idx).deleted.store(true, Ordering::Release);
    }

    fn slot(&self, idx: AppIdx) -> &Slot {
        // Invariant: an AppIdx is only made by `insert`, after its slot was set.
        self.slots[idx.0 as usize]
            .get()
            .expect("an AppIdx names a filled slot")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_table_finds_apps_by_id_and_key() {
        let t = AppTable::new(vec![
            AppConfig::new("1", "k1", "s1"),
            AppConfig::new("2", "k2", "s2"),
        ]);
        assert!(t.is_fixed());
        assert_eq!(
            t.by_id("2").map(|(i, a)| (i, a.key.clone())),
            Some((AppIdx(1), "k2".into()))
        );
        assert_eq!(t.by_key("k1").map(|(i, _)| i), Some(AppIdx(0)));
        assert!(t.by_key("nope").is_none());
        assert_eq!(t.ids().map(|(_, id)| id).collect::<Vec<_>>(), ["1", "2"]);
    }

    #[test]
    fn a_dynamic_table_grows_to_its_capacity_and_swaps_rows() {
        let t = AppTable::dynamic(2);
        assert!(!t.is_fixed() && t.is_empty());
        let a = t.insert(AppConfig::new("1", "k1", "s1")).expect("room");
        let mut row = AppConfig::new("1", "k1", "rotated");
        row.enabled = false;
        t.replace(a, row);
        assert_eq!(t.get(a).secret, "rotated");
        assert!(!t.get(a).enabled);
        t.delete(a);
        assert!(t.is_deleted(a));
        assert!(t.by_id("1").is_none(), "a deleted app is not found");
        assert!(t.insert(AppConfig::new("2", "k2", "s2")).is_some());
        assert!(t.insert(AppConfig::new("3", "k3", "s3")).is_none(), "full");
        assert_eq!(t.len(), 2);
        assert_eq!(t.id(a), "1");
        assert_eq!(t.by_id("2").map(|(i, _)| i), Some(AppIdx(1)));
    }
}
