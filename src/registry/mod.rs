//! Shard-local subscriptions: for each app, channel name -> the local connections on it.
//! Only the owning shard touches it, so there is no lock.

pub mod presence;

use std::sync::Arc;

use ahash::{AHashMap, RandomState};
use indexmap::IndexSet;

use crate::app::AppIdx;

/// A connection's slot in its shard's connection slab.
pub type ConnKey = usize;

/// The subscribers of one channel on this shard, in a set that iterates like a vector and
/// removes in O(1).
pub type Subscribers = IndexSet<ConnKey, RandomState>;

/// Channel maps for every app of this shard.
#[derive(Debug, Default)]
pub struct Registry {
    apps: Vec<AHashMap<Arc<str>, Subscribers>>,
}

impl Registry {
    /// An empty registry for `apps` apps.
    #[must_use]
    pub fn new(apps: usize) -> Self {
        Self {
            apps: (0..apps).map(|_| AHashMap::new()).collect(),
        }
    }

    /// Adds `conn` to `channel`; returns whether it was not already there.
    pub fn subscribe(&mut self, app: AppIdx, channel: &str, conn: ConnKey) -> bool {
        let map = &mut self.apps[app.0 as usize];
        if let Some(subs) = map.get_mut(channel) {
            return subs.insert(conn);
        }
        let mut subs = Subscribers::default();
        subs.insert(conn);
        map.insert(Arc::from(channel), subs);
        true
    }

    /// Removes `conn` from `channel`; returns whether it was there. An empty channel is
    /// dropped so it no longer shows in listings.
    pub fn unsubscribe(&mut self, app: AppIdx, channel: &str, conn: ConnKey) -> bool {
        let map = &mut self.apps[app.0 as usize];
        let Some(subs) = map.get_mut(channel) else {
            return false;
        };
        let removed = subs.swap_remove(&conn);
        if subs.is_empty() {
            map.remove(channel);
        }
        removed
    }

    /// The local subscribers of `channel`.
    #[must_use]
    pub fn subscribers(&self, app: AppIdx, channel: &str) -> Option<&Subscribers> {
        self.apps[app.0 as usize].get(channel)
    }

    /// Local channels of `app` with their local subscriber counts.
    pub fn channels(&self, app: AppIdx) -> impl Iterator<Item = (&str, usize)> {
        self.apps[app.0 as usize]
            .iter()
            .map(|(name, subs)| (&**name, subs.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_and_unsubscribe_track_local_connections() {
        let mut r = Registry::new(1);
        let app = AppIdx(0);
        assert!(r.subscribe(app, "chat", 1));
        assert!(!r.subscribe(app, "chat", 1));
        assert!(r.subscribe(app, "chat", 2));
        assert_eq!(r.subscribers(app, "chat").map(Subscribers::len), Some(2));
        assert!(r.unsubscribe(app, "chat", 1));
        assert!(!r.unsubscribe(app, "chat", 1));
        assert!(r.unsubscribe(app, "chat", 2));
        assert!(
            r.subscribers(app, "chat").is_none(),
            "empty channels are dropped"
        );
        assert_eq!(r.channels(app).count(), 0);
    }
}
