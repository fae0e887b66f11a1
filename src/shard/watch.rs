//! Watchlist events (Pusher's online status) for apps that enable them
//! (`enableWatchlistEvents`).
//!
//! A signed-in user's `user_data` may carry `watchlist: [user ids]`. A user is online
//! while it has at least one signed-in socket anywhere. Each shard reports to the user's
//! home shard when it gains its first or loses its last socket of the user; the home
//! shard decides `online` / `offline` (with the redis adapter the bridge decides for the
//! cluster in Redis) and tells every shard, which tells the local sockets watching that
//! user. After sign-in a socket gets the current state of its watchlist.
//!
//! Nothing here runs for apps that do not enable the feature, and nothing runs on the
//! delivery path: only sign-in, sign-out and the transitions themselves.

use std::cell::RefCell;
use std::sync::Arc;

use ahash::{AHashMap, AHashSet};
use bytes::Bytes;
use simd_json::prelude::*;

use super::Shard;
use crate::app::AppIdx;
use crate::fanout::{Envelope, SocketRef};
use crate::protocol::{Data, EventFrame, USER_CHANNEL_PREFIX, event_frame};
use crate::registry::ConnKey;

/// The most user ids one watchlist may hold; a longer one refuses the sign-in.
pub const MAX_WATCHLIST: usize = 100;

/// Local sockets watching each user.
type Watchers = AHashMap<(AppIdx, Arc<str>), Vec<ConnKey>>;
/// What each watching socket watches.
type Watching = AHashMap<ConnKey, (AppIdx, Vec<Arc<str>>)>;

/// A shard's watchlist state.
#[derive(Default)]
pub(super) struct Watch {
    /// Local sockets watching each user.
    watchers: RefCell<Watchers>,
    /// What each local watching socket watches, to forget it when it goes.
    watching: RefCell<Watching>,
    /// Users online on this server (without the redis adapter), as the home shards said.
    online: RefCell<AHashSet<(AppIdx, Arc<str>)>>,
    /// For users this shard is home to: how many shards have signed-in sockets of them.
    homes: RefCell<AHashMap<(AppIdx, Arc<str>), u32>>,
}

/// The `watchlist` of `user_data`: absent is empty; ids may be strings or numbers.
///
/// # Errors
/// The watchlist is not a list of ids, or holds more than [`MAX_WATCHLIST`].
pub fn watchlist_of(user_data: &str) -> Result<Vec<Arc<str>>, String> {
    let mut bytes = user_data.as_bytes().to_vec();
    let value = simd_json::to_borrowed_value(&mut bytes).map_err(|_| "user_data is not JSON")?;
    let Some(list) = value.get("watchlist") else {
        return Ok(Vec::new());
    };
    let Some(items) = list.as_array() else {
        return Err("The watchlist must be a list of user ids.".to_owned());
    };
    if items.len() > MAX_WATCHLIST {
        return Err(format!(
            "The watchlist holds {} user ids; at most {MAX_WATCHLIST} are allowed.",
            items.len()
        ));
    }
    let mut ids: Vec<Arc<str>> = Vec::with_capacity(items.len());
    for item in items {
        let id = match item.as_str() {
            Some(s) => s.to_owned(),
            None if item.is_number() => item.encode(),
            None => return Err("The watchlist must be a list of user ids.".to_owned()),
        };
        if !id.is_empty() && !ids.iter().any(|i| **i == *id) {
            ids.push(Arc::from(id));
        }
    }
    Ok(ids)
}

/// `pusher_internal:watchlist_events` with one event per non-empty group.
#[must_use]
pub fn watchlist_frame(online: &[Arc<str>], offline: &[Arc<str>]) -> Option<Bytes> {
    let group = |name: &str, ids: &[Arc<str>]| {
        let ids: Vec<&str> = ids.iter().map(|i| &**i).collect();
        serde_json::json!({"name": name, "user_ids": ids})
    };
    let mut events = Vec::new();
    if !online.is_empty() {
        events.push(group("online", online));
    }
    if !offline.is_empty() {
        events.push(group("offline", offline));
    }
    if events.is_empty() {
        return None;
    }
    let data = serde_json::json!({ "events": events }).to_string();
    Some(event_frame(&EventFrame {
        event: "pusher_internal:watchlist_events",
        channel: None,
        data: Data::Json(&data),
        user_id: None,
    }))
}

impl Shard {
    /// After a sign-in of an app with watchlist events: counts the user's socket, keeps
    /// what `key` watches, and sends it the current state of its watchlist.
    pub(super) fn watch_signin(
        &self,
        key: ConnKey,
        app: AppIdx,
        user_id: &Arc<str>,
        watchlist: Vec<Arc<str>>,
        first_socket: bool,
    ) {
        if first_socket {
            self.user_sockets(app, user_id, 1);
        }
        self.unwatch(key);
        if watchlist.is_empty() {
            return;
        }
        {
            let mut watchers = self.watch.watchers.borrow_mut();
            for user in &watchlist {
                watchers
                    .entry((app, Arc::clone(user)))
                    .or_default()
                    .push(key);
            }
        }
        self.watch
            .watching
            .borrow_mut()
            .insert(key, (app, watchlist.clone()));
        if let Some(bridge) = self.bridge {
            let Some(socket) = self.conns.borrow().get(key).map(|c| SocketRef {
                key,
                serial: c.serial,
                socket_id: c.socket_id,
            }) else {
                return;
            };
            let envelope = Envelope::WatchQuery {
                app,
                users: watchlist,
                from: self.id,
                socket,
            };
            self.send_envelope(bridge, envelope);
            return;
        }
        let online = self.watch.online.borrow();
        let (on, off): (Vec<Arc<str>>, Vec<Arc<str>>) = watchlist
            .into_iter()
            .partition(|u| online.contains(&(app, Arc::clone(u))));
        drop(online);
        if let Some(frame) = watchlist_frame(&on, &off) {
            self.send_to(key, frame);
        }
    }

    /// A socket left a user channel (sign-out is a close): forgets what it watched and
    /// counts the user's socket off when it was this shard's last.
    pub(super) fn watch_leave(&self, key: ConnKey, app: AppIdx, channel: &str, last: bool) {
        let Some(user) = channel.strip_prefix(USER_CHANNEL_PREFIX) else {
            return;
        };
        self.unwatch(key);
        if last && self.apps.get(app).enable_watchlist_events {
            self.user_sockets(app, &Arc::from(user), -1);
        }
    }

    fn unwatch(&self, key: ConnKey) {
        let Some((app, users)) = self.watch.watching.borrow_mut().remove(&key) else {
            return;
        };
        let mut watchers = self.watch.watchers.borrow_mut();
        for user in users {
            let k = (app, user);
            if let Some(keys) = watchers.get_mut(&k) {
                keys.retain(|&w| w != key);
                if keys.is_empty() {
                    watchers.remove(&k);
                }
            }
        }
    }

    /// This shard's first (`+1`) or last (`-1`) socket of `user_id`: to its home shard.
    fn user_sockets(&self, app: AppIdx, user_id: &Arc<str>, delta: i8) {
        let home = self.home_of(app, &format!("{USER_CHANNEL_PREFIX}{user_id}"));
        if home == self.id {
            self.home_user(app, user_id, delta);
        } else {
            let envelope = Envelope::UserSockets {
                app,
                user_id: Arc::clone(user_id),
                delta,
            };
            self.send_envelope(home, envelope);
        }
    }

    /// Home side: the first shard with the user makes it online, the last one going
    /// makes it offline. With the redis adapter the node-level change goes to Redis.
    pub(super) fn home_user(&self, app: AppIdx, user_id: &Arc<str>, delta: i8) {
        let key = (app, Arc::clone(user_id));
        let transition = {
            let mut homes = self.watch.homes.borrow_mut();
            let count = homes.entry(key.clone()).or_insert(0);
            let transition = if delta > 0 {
                *count += 1;
                (*count == 1).then_some(true)
            } else {
                *count = count.saturating_sub(1);
                (*count == 0).then_some(false)
            };
            if homes.get(&key) == Some(&0) {
                homes.remove(&key);
            }
            transition
        };
        let Some(online) = transition else { return };
        if let Some(bridge) = self.bridge {
            let envelope = Envelope::NodeUser {
                app,
                user_id: Arc::clone(user_id),
                online,
            };
            self.send_envelope(bridge, envelope);
            return;
        }
        self.user_online(app, user_id, online);
        for shard in (0..self.shards).filter(|&s| s != self.id) {
            let envelope = Envelope::UserOnline {
                app,
                user_id: Arc::clone(user_id),
                online,
            };
            self.send_envelope(shard, envelope);
        }
    }

    /// `user_id` came online or went offline: tells the local sockets watching it.
    pub(super) fn user_online(&self, app: AppIdx, user_id: &Arc<str>, online: bool) {
        let key = (app, Arc::clone(user_id));
        if self.bridge.is_none() {
            let mut set = self.watch.online.borrow_mut();
            if online {
                set.insert(key.clone());
            } else {
                set.remove(&key);
            }
        }
        let Some(keys) = self.watch.watchers.borrow().get(&key).cloned() else {
            return;
        };
        let user = [Arc::clone(user_id)];
        let frame = if online {
            watchlist_frame(&user, &[])
        } else {
            watchlist_frame(&[], &user)
        };
        if let Some(frame) = frame {
            for key in keys {
                self.send_to(key, frame.clone());
            }
        }
    }

    /// The bridge's answer to a watchlist query: the socket's initial state.
    pub(super) fn watch_state(&self, socket: SocketRef, frame: Bytes) {
        let live = self
            .conns
            .borrow()
            .get(socket.key)
            .is_some_and(|c| c.serial == socket.serial);
        if live {
            self.send_to(socket.key, frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchlists_are_lists_of_ids_within_the_limit() {
        let ids = watchlist_of(r#"{"id":"1","watchlist":["2",3,"2"]}"#).expect("ok");
        assert_eq!(ids, vec![Arc::<str>::from("2"), Arc::from("3")]);
        assert!(watchlist_of(r#"{"id":"1"}"#).expect("none").is_empty());
        assert!(watchlist_of(r#"{"id":"1","watchlist":"2"}"#).is_err());
        assert!(watchlist_of(r#"{"id":"1","watchlist":[{}]}"#).is_err());
        let ids: Vec<String> = (0..=MAX_WATCHLIST).map(|i| format!("\"{i}\"")).collect();
        let long = format!(r#"{{"id":"1","watchlist":[{}]}}"#, ids.join(","));
        let err = watchlist_of(&long).unwrap_err();
        assert!(err.contains("at most 100"), "{err}");
    }

    #[test]
    fn frames_group_online_and_offline_users() {
        let frame = watchlist_frame(&[Arc::from("a")], &[Arc::from("b")]).expect("frame");
        let text = String::from_utf8_lossy(&frame);
        let json = &text[text.find('{').expect("json")..];
        let v: serde_json::Value = serde_json::from_str(json).expect("valid");
        assert_eq!(v["event"], "pusher_internal:watchlist_events");
        assert_eq!(v["data"]["events"][0]["name"], "online");
        assert_eq!(v["data"]["events"][0]["user_ids"][0], "a");
        assert_eq!(v["data"]["events"][1]["name"], "offline");
        assert!(watchlist_frame(&[], &[]).is_none());
    }
}
