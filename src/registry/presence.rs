//! Presence rosters, kept only on each channel's home shard: one member per user id
//! however many sockets (on however many shards) it has.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// With a leave grace: the user's last socket left, and the member is removed at this
    /// time unless a socket of the user joins before.
    leaving: Option<Instant>,
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
    /// Members whose last socket left within the grace.
    leaving: usize,
}

impl Roster {
    /// Adds a socket of `user_id`; a new user needs room under `max_members`. A user
    /// whose last socket left within the grace is still a member: it is back, silently.
    pub fn join(&mut self, user_id: &str, info: &str, max_members: usize) -> Joined {
        if let Some(m) = self.members.get_mut(user_id) {
            m.sockets += 1;
            if m.leaving.take().is_some() {
                self.leaving -= 1;
            }
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
                leaving: None,
            },
        );
        Joined::NewMember
    }

    /// Removes one socket of `user_id`; true when it was the user's last (announce
    /// `member_removed`).
    pub fn leave(&mut self, user_id: &str) -> bool {
        self.leave_after(user_id, Duration::ZERO, Instant::now())
    }

    /// Removes one socket of `user_id`. With a `grace`, the user's last socket leaving
    /// only marks the member as leaving at `now + grace` (see [`Roster::expire`]); without
    /// one it removes the member and returns true (announce `member_removed`).
    pub fn leave_after(&mut self, user_id: &str, grace: Duration, now: Instant) -> bool {
        let Some(m) = self.members.get_mut(user_id) else {
            return false;
        };
        if m.sockets == 0 {
            return false;
        }
        m.sockets -= 1;
        if m.sockets > 0 {
            return false;
        }
        if grace.is_zero() {
            self.members.shift_remove(user_id);
            return true;
        }
        m.leaving = Some(now + grace);
        self.leaving += 1;
        false
    }

    /// Removes the members whose grace ended by `now` and returns them (announce
    /// `member_removed` for each).
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        if self.leaving == 0 {
            return Vec::new();
        }
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.leaving.is_some_and(|at| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.members.shift_remove(id);
        }
        self.leaving -= gone.len();
        gone
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

    /// Removes, over every roster, the members whose leave grace ended by `now`:
    /// `(app, channel, user)` for each.
    pub fn expire(&mut self, now: Instant) -> Vec<(AppIdx, Arc<str>, String)> {
        let mut gone = Vec::new();
        for (i, map) in self.apps.iter_mut().enumerate() {
            for (channel, roster) in map.iter_mut() {
                for user in roster.expire(now) {
                    gone.push((AppIdx(i as u32), Arc::clone(channel), user));
                }
            }
            map.retain(|_, r| !r.is_empty());
        }
        gone
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
    fn with_a_grace_a_quick_return_is_silent_and_a_real_leave_expires() {
        let mut r = Roster::default();
        let t0 = Instant::now();
        let grace = Duration::from_secs(3);
        r.join("u1", "null", 10);
        assert!(!r.leave_after("u1", grace, t0), "held for the grace");
        assert_eq!(r.count(), 1, "still listed while leaving");
        assert!(r.expire(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(
            r.join("u1", "null", 10),
            Joined::AnotherSocket,
            "back: no member_added"
        );
        assert!(
            r.expire(t0 + Duration::from_secs(10)).is_empty(),
            "the return cancelled it"
        );
        assert!(!r.leave_after("u1", grace, t0 + Duration::from_secs(4)));
        assert!(
            !r.leave_after("u1", grace, t0 + Duration::from_secs(4)),
            "no socket left to leave"
        );
        assert_eq!(r.expire(t0 + Duration::from_secs(6)), Vec::<String>::new());
        assert_eq!(r.expire(t0 + Duration::from_secs(7)), vec!["u1".to_owned()]);
        assert!(r.is_empty());
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
