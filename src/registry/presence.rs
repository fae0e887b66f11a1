//! Presence rosters, kept only on each channel's home shard: one member per user id
//! however many sockets (on however many shards) it has.

use std::sync::Arc;

use ahash::{AHashMap, RandomState};
use indexmap::IndexMap;

use crate::app::AppIdx;

/// One member of a presence channel.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    /// `user_info` as JSON text (`null` when absent), as the first socket gave it.
    info: String,
    /// Sockets of this user on the channel, across all shards.
    sockets: u32,
}

/// What a join did to the roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// The user's first socket: announce `member_added`.
    NewMember,
    /// Another socket of a user already present: nothing to announce.
    AnotherSocket,
    /// The channel is at its member limit; the socket is refused.
    Full,
}

/// One presence channel's members, in join order.
#[derive(Debug, Default)]
pub struct Roster {
    members: IndexMap<String, Member, RandomState>,
}

impl Roster {
    /// Adds a socket of `user_id`; a new user needs room under `max_members`.
    pub fn join(&mut self, user_id: &str, info: &str, max_members: usize) -> Joined {
        if let Some(m) = self.members.get_mut(user_id) {
            m.sockets += 1;
            return Joined::AnotherSocket;
        }
        if self.members.len() >= max_members {
            return Joined::Full;
        }
        self.members.insert(
            user_id.to_owned(),
            Member {
                info: info.to_owned(),
                sockets: 1,
            },
        );
        Joined::NewMember
    }

    /// Removes one socket of `user_id`; true when it was the user's last (announce
    /// `member_removed`).
    pub fn leave(&mut self, user_id: &str) -> bool {
        let Some(m) = self.members.get_mut(user_id) else {
            return false;
        };
        m.sockets -= 1;
        if m.sockets == 0 {
            self.members.shift_remove(user_id);
            true
        } else {
            false
        }
    }

    /// Distinct users present.
    #[must_use]
    pub fn count(&self) -> usize {
        self.members.len()
    }

    /// Whether nobody is left.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Members in join order with their `user_info` JSON text.
    pub fn members(&self) -> impl Iterator<Item = (&str, &str)> {
        self.members
            .iter()
            .map(|(id, m)| (id.as_str(), m.info.as_str()))
    }

    /// User ids in join order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    /// `{"presence":{"ids":[..],"hash":{id: info},"count":N}}`, the data of
    /// `subscription_succeeded` on a presence channel.
    #[must_use]
    pub fn subscription_data(&self) -> String {
        let mut ids = Vec::with_capacity(16 * self.members.len());
        let mut hash = Vec::with_capacity(32 * self.members.len());
        for (i, (id, m)) in self.members.iter().enumerate() {
            if i > 0 {
                ids.push(b',');
                hash.push(b',');
            }
            let _ = serde_json::to_writer(&mut ids, id);
            let _ = serde_json::to_writer(&mut hash, id);
            hash.push(b':');
            hash.extend_from_slice(m.info.as_bytes());
        }
        let mut out = String::with_capacity(48 + ids.len() + hash.len());
        out.push_str("{\"presence\":{\"ids\":[");
        out.push_str(&String::from_utf8_lossy(&ids));
        out.push_str("],\"hash\":{");
        out.push_str(&String::from_utf8_lossy(&hash));
        out.push_str(&format!("}},\"count\":{}}}}}", self.members.len()));
        out
    }
}

/// Every roster this shard is home to.
#[derive(Debug, Default)]
pub struct Rosters {
    apps: Vec<AHashMap<Arc<str>, Roster>>,
}

impl Rosters {
    /// Empty rosters for `apps` apps.
    #[must_use]
    pub fn new(apps: usize) -> Self {
        Self {
            apps: (0..apps).map(|_| AHashMap::new()).collect(),
        }
    }

    /// The roster of `channel`, created empty when missing.
    pub fn entry(&mut self, app: AppIdx, channel: &str) -> &mut Roster {
        self.apps[app.0 as usize]
            .entry(Arc::from(channel))
            .or_default()
    }

    /// The roster of `channel`, if anyone is present.
    #[must_use]
    pub fn get(&self, app: AppIdx, channel: &str) -> Option<&Roster> {
        self.apps[app.0 as usize].get(channel)
    }

    /// Every roster of `app` with its channel name.
    pub fn channels(&self, app: AppIdx) -> impl Iterator<Item = (&str, &Roster)> {
        self.apps[app.0 as usize]
            .iter()
            .map(|(name, r)| (&**name, r))
    }

    /// Drops the roster of `channel` once empty.
    pub fn prune(&mut self, app: AppIdx, channel: &str) {
        let map = &mut self.apps[app.0 as usize];
        if map.get(channel).is_some_and(Roster::is_empty) {
            map.remove(channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_one_member_however_many_sockets() {
        let mut r = Roster::default();
        assert_eq!(r.join("u1", r#"{"name":"A"}"#, 100), Joined::NewMember);
        assert_eq!(r.join("u1", r#"{"name":"A"}"#, 100), Joined::AnotherSocket);
        assert_eq!(r.join("u2", "null", 100), Joined::NewMember);
        assert_eq!(r.count(), 2);
        assert!(!r.leave("u1"), "u1 still has a socket");
        assert!(r.leave("u1"), "last socket removes the member");
        assert!(!r.leave("u1"), "unknown user");
        assert_eq!(r.ids().collect::<Vec<_>>(), vec!["u2"]);
    }

    #[test]
    fn full_roster_refuses_new_users_but_not_existing_ones() {
        let mut r = Roster::default();
        assert_eq!(r.join("a", "null", 1), Joined::NewMember);
        assert_eq!(r.join("b", "null", 1), Joined::Full);
        assert_eq!(r.join("a", "null", 1), Joined::AnotherSocket);
    }

    #[test]
    fn subscription_data_lists_ids_hash_and_count() {
        let mut r = Roster::default();
        r.join("1", r#"{"name":"Ann"}"#, 10);
        r.join("2", "null", 10);
        let v: serde_json::Value = serde_json::from_str(&r.subscription_data()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"presence": {"ids": ["1", "2"], "hash": {"1": {"name": "Ann"}, "2": null}, "count": 2}})
        );
        let empty: serde_json::Value =
            serde_json::from_str(&Roster::default().subscription_data()).expect("json");
        assert_eq!(empty["presence"]["count"], 0);
    }
}
