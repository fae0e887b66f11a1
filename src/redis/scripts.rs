//! The Lua scripts that keep cluster presence atomic in Redis, and the key names.
//!
//! Per presence channel: a hash of members (`user_id -> user_info`) and a hash counting
//! the nodes each member is on. Per node and app: a set of its `(app, channel, user)`
//! entries, so another node can remove them when this one dies, and its occupied
//! channels; per node: the apps it has entries of, and a hash of its local subscription
//! counts. A hash of nodes holds each node's last heartbeat.
//!
//! Every key a script touches carries the app id as its hash tag (`{app-id}`), so in a
//! Redis Cluster all of one app's presence and occupancy keys live in one slot and each
//! script stays atomic on one master.

/// Adds a node's first socket of a user (`ARGV[5] == "1"`), unless the channel is full;
/// returns `{added, members...}` (added: 1 new in the cluster, 0 not, -1 refused).
/// KEYS: members, node counts, the node's entries of the app, presence channels of the app.
/// ARGV: user_id, user_info, entry, max members, new on this node, channel.
pub const JOIN: &str = r"
local added = 0
if ARGV[5] == '1' then
  if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
    return {-1}
  end
  local n = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
  if n == 1 then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
    added = 1
  end
  redis.call('SADD', KEYS[3], ARGV[3])
  redis.call('SADD', KEYS[4], ARGV[6])
end
local out = {added}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all do out[#out + 1] = all[i] end
return out
";

/// Removes a node's last socket of a user; returns 1 when the user left the cluster.
/// KEYS: members, node counts, the node's entries of the app, presence channels of the app.
/// ARGV: user_id, entry, channel.
pub const LEAVE: &str = r"
redis.call('SREM', KEYS[3], ARGV[2])
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
if n <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
  if redis.call('HLEN', KEYS[1]) == 0 then
    redis.call('SREM', KEYS[4], ARGV[3])
  end
  return 1
end
return 0
";

/// Counts the nodes on which a channel is occupied; returns the new count.
/// KEYS: occupied counts of the app, the node's occupied channels of the app.
/// ARGV: channel, +1 or -1, `app\nchannel`. Returns -1 when the node's state did not change.
pub const OCCUPY: &str = r"
if ARGV[2] == '1' then
  if redis.call('SADD', KEYS[2], ARGV[3]) == 0 then return -1 end
else
  if redis.call('SREM', KEYS[2], ARGV[3]) == 0 then return -1 end
end
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], tonumber(ARGV[2]))
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
";

/// Leases connection slots of an app's cluster-wide `max_connections` to a node. Grants
/// the `need` slots asked for if that many are not leased to any node (else none), plus
/// headroom for later connections: half of what stays free, at most `block`. Near the
/// quota the headroom is 0, so each connection is decided here, exactly. Returns the
/// slots granted.
/// KEYS: the app's leases (`node -> slots`). ARGV: node, need, max, block.
pub const CONNECTION_LEASE: &str = r"
local others, mine = 0, 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] == ARGV[1] then mine = tonumber(all[i + 1]) else others = others + tonumber(all[i + 1]) end
end
local free = tonumber(ARGV[3]) - others - mine
local need = tonumber(ARGV[2])
if need > free then return 0 end
local extra = math.floor((free - need) / 2)
if extra > tonumber(ARGV[4]) then extra = tonumber(ARGV[4]) end
local grant = need + extra
if grant > 0 then redis.call('HINCRBY', KEYS[1], ARGV[1], grant) end
return grant
";

/// Leases tokens of an app's cluster-wide per-second limit for one second, on the same
/// rule: the `need` asked for if the second has them left (else none), plus half of what
/// stays, at most `block`. Returns the tokens granted.
/// KEYS: the second's counter. ARGV: need, limit, block.
pub const RATE_LEASE: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local free = tonumber(ARGV[2]) - used
local need = tonumber(ARGV[1])
if need > free then return 0 end
local extra = math.floor((free - need) / 2)
if extra > tonumber(ARGV[3]) then extra = tonumber(ARGV[3]) end
local grant = need + extra
redis.call('INCRBY', KEYS[1], grant)
redis.call('EXPIRE', KEYS[1], 5)
return grant
";

/// [`OCCUPY`] with the webhook grace: a vacate leaves `KEYS[3]` holding `ARGV[4]` for
/// `ARGV[5]` ms; a first node back while it exists deletes it and returns -2 (no
/// `channel_occupied`, and the holder's `channel_vacated` is not sent).
/// KEYS: occupied counts, the node's occupied channels, the vacating key.
/// ARGV: channel, +1 or -1, `app\nchannel`, token, ms.
pub const OCCUPY_GRACE: &str = r"
if ARGV[2] == '1' then
  if redis.call('SADD', KEYS[2], ARGV[3]) == 0 then return -1 end
else
  if redis.call('SREM', KEYS[2], ARGV[3]) == 0 then return -1 end
end
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], tonumber(ARGV[2]))
if n <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
  return 0
end
if n == 1 and ARGV[2] == '1' and redis.call('DEL', KEYS[3]) == 1 then return -2 end
return n
";

/// [`JOIN`] with the webhook grace: a user new to the cluster whose leaving key
/// (`KEYS[5]`) still exists came back within the grace: it is deleted and `added` is 2
/// (announced to clients, but no `member_added` webhook).
pub const JOIN_GRACE: &str = r"
local added = 0
if ARGV[5] == '1' then
  if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
    return {-1}
  end
  local n = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
  if n == 1 then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
    added = 1
    if redis.call('DEL', KEYS[5]) == 1 then added = 2 end
  end
  redis.call('SADD', KEYS[3], ARGV[3])
  redis.call('SADD', KEYS[4], ARGV[6])
end
local out = {added}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all do out[#out + 1] = all[i] end
return out
";

/// [`LEAVE`] with the webhook grace: a user leaving the cluster leaves `KEYS[5]` holding
/// `ARGV[4]` for `ARGV[5]` ms. ARGV: user_id, entry, channel, token, ms.
pub const LEAVE_GRACE: &str = r"
redis.call('SREM', KEYS[3], ARGV[2])
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
if n <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
  if redis.call('HLEN', KEYS[1]) == 0 then
    redis.call('SREM', KEYS[4], ARGV[3])
  end
  redis.call('SET', KEYS[5], ARGV[4], 'PX', ARGV[5])
  return 1
end
return 0
";

/// Counts the nodes a user has signed-in sockets on (watchlist events); returns 1 when
/// the user came online in the cluster (`+1`), 0 when it went offline (`-1`), -1 when
/// neither. The node's own set of online users makes it idempotent per node and lets
/// whoever reaps a dead node take its users offline.
/// KEYS: the app's online users, the node's online users of the app. ARGV: user_id, +1 or -1.
pub const ONLINE: &str = r"
if ARGV[2] == '1' then
  if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return -1 end
else
  if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return -1 end
end
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], tonumber(ARGV[2]))
if n <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  if ARGV[2] == '-1' then return 0 end
  return -1
end
if n == 1 and ARGV[2] == '1' then return 1 end
return -1
";

/// Ends a grace period: deletes `KEYS[1]` and returns 1 if it still holds `ARGV[1]` (no
/// node came back meanwhile), else 0. KEYS: the vacating or leaving key. ARGV: token.
pub const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// Key and channel names under the configured prefixes.
#[derive(Debug, Clone)]
pub struct Keys {
    key_prefix: String,
    channel_prefix: String,
    /// The pub/sub channel every node listens on.
    pub broadcast: String,
}

impl Keys {
    /// Names for the given `key_prefix` (keys) and `channel_prefix` (pub/sub).
    #[must_use]
    pub fn new(key_prefix: &str, channel_prefix: &str) -> Self {
        Self {
            key_prefix: key_prefix.to_owned(),
            channel_prefix: channel_prefix.to_owned(),
            broadcast: format!("{channel_prefix}corecast#broadcast"),
        }
    }

    /// The pub/sub channel of one Pusher channel, which only nodes with subscribers of
    /// it listen on (interest routing).
    #[must_use]
    pub fn topic(&self, app_id: &str, channel: &str) -> String {
        format!("{}corecast#ch#{app_id}#{channel}", self.channel_prefix)
    }

    /// The last event of a cache channel, for nodes that subscribe after it was sent.
    /// No hash tag: cache channels spread over the cluster's slots.
    #[must_use]
    pub fn cache(&self, app_id: &str, channel: &str) -> String {
        format!("{}corecast:cache:{app_id}:{channel}", self.key_prefix)
    }

    /// Members of a presence channel: `user_id -> user_info`.
    #[must_use]
    pub fn members(&self, app_id: &str, channel: &str) -> String {
        format!(
            "{}corecast:{{{app_id}}}:presence:{channel}",
            self.key_prefix
        )
    }

    /// How many nodes each member of a presence channel is on.
    #[must_use]
    pub fn member_nodes(&self, app_id: &str, channel: &str) -> String {
        format!(
            "{}corecast:{{{app_id}}}:presence-nodes:{channel}",
            self.key_prefix
        )
    }

    /// Presence channels of an app that have members.
    #[must_use]
    pub fn presence_channels(&self, app_id: &str) -> String {
        format!("{}corecast:{{{app_id}}}:presence-channels", self.key_prefix)
    }

    /// A node's presence entries of one app (`app\nchannel\nuser`).
    #[must_use]
    pub fn node_entries(&self, node: u32, app_id: &str) -> String {
        format!(
            "{}corecast:{{{app_id}}}:node:{node}:presence",
            self.key_prefix
        )
    }

    /// The apps a node has presence entries or occupied channels of, so that whoever
    /// removes a dead node knows which apps' keys to look at.
    #[must_use]
    pub fn node_apps(&self, node: u32) -> String {
        format!("{}corecast:node:{node}:apps", self.key_prefix)
    }

    /// A node's local subscription counts (`app\nchannel -> count`).
    #[must_use]
    pub fn node_channels(&self, node: u32) -> String {
        format!("{}corecast:node:{node}:channels", self.key_prefix)
    }

    /// How many nodes each channel of an app is occupied on.
    #[must_use]
    pub fn occupied(&self, app_id: &str) -> String {
        format!("{}corecast:{{{app_id}}}:occupied", self.key_prefix)
    }

    /// A node's occupied channels of one app (`app\nchannel`).
    #[must_use]
    pub fn node_occupied(&self, node: u32, app_id: &str) -> String {
        format!(
            "{}corecast:{{{app_id}}}:node:{node}:occupied",
            self.key_prefix
        )
    }

    /// Connection slots of an app's cluster-wide quota leased to each node.
    #[must_use]
    pub fn connection_leases(&self, app_id: &str) -> String {
        format!("{}corecast:{{{app_id}}}:connection-leases", self.key_prefix)
    }

    /// Tokens of an app's per-second limit (`backend` or `read`) taken in one unix second.
    #[must_use]
    pub fn rate(&self, app_id: &str, kind: &str, second: u64) -> String {
        format!(
            "{}corecast:{{{app_id}}}:rate:{kind}:{second}",
            self.key_prefix
        )
    }

    /// An app's online users (watchlist events): `user_id -> nodes with its sockets`.
    #[must_use]
    pub fn online(&self, app_id: &str) -> String {
        format!("{}corecast:{{{app_id}}}:online", self.key_prefix)
    }

    /// The users of an app with signed-in sockets on one node (watchlist events).
    #[must_use]
    pub fn node_online(&self, node: u32, app_id: &str) -> String {
        format!(
            "{}corecast:{{{app_id}}}:node:{node}:online",
            self.key_prefix
        )
    }

    /// A channel vacated within the webhook grace period: holds the token of the node
    /// that will send `channel_vacated` unless a node takes the channel back first.
    #[must_use]
    pub fn vacating(&self, app_id: &str, channel: &str) -> String {
        format!(
            "{}corecast:{{{app_id}}}:vacating:{channel}",
            self.key_prefix
        )
    }

    /// A presence member gone within the webhook grace period, as [`Keys::vacating`].
    #[must_use]
    pub fn leaving(&self, app_id: &str, channel: &str, user_id: &str) -> String {
        format!(
            "{}corecast:{{{app_id}}}:leaving:{channel}\n{user_id}",
            self.key_prefix
        )
    }

    /// Every node's last heartbeat (unix ms).
    #[must_use]
    pub fn nodes(&self) -> String {
        format!("{}corecast:nodes", self.key_prefix)
    }

    /// The lock a node takes before removing a dead node's members.
    #[must_use]
    pub fn reap_lock(&self, node: u32) -> String {
        format!("{}corecast:reap:{node}", self.key_prefix)
    }
}

/// `app\nchannel\nuser`: one presence entry of a node.
#[must_use]
pub fn entry(app_id: &str, channel: &str, user_id: &str) -> String {
    format!("{app_id}\n{channel}\n{user_id}")
}

/// Splits an entry back into `(app, channel, user)`.
#[must_use]
pub fn split_entry(entry: &str) -> Option<(&str, &str, &str)> {
    let mut parts = entry.splitn(3, '\n');
    Some((parts.next()?, parts.next()?, parts.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_even_with_odd_user_ids() {
        let e = entry("app", "presence-x", "user\nwith newline");
        assert_eq!(
            split_entry(&e),
            Some(("app", "presence-x", "user\nwith newline"))
        );
        assert_eq!(split_entry("nope"), None);
    }

    #[test]
    fn keys_carry_both_prefixes() {
        let k = Keys::new("kp:", "cp:");
        assert_eq!(k.broadcast, "cp:corecast#broadcast");
        assert_eq!(
            k.members("a", "presence-x"),
            "kp:corecast:{a}:presence:presence-x"
        );
        assert_eq!(k.node_entries(7, "a"), "kp:corecast:{a}:node:7:presence");
    }

    #[test]
    fn the_keys_of_each_script_share_one_cluster_slot() {
        use crate::redis::cluster::slot;
        let k = Keys::new("kp:", "cp:");
        let keys = [
            k.members("app-1", "presence-x"),
            k.member_nodes("app-1", "presence-x"),
            k.node_entries(3, "app-1"),
            k.presence_channels("app-1"),
            k.occupied("app-1"),
            k.node_occupied(3, "app-1"),
            k.online("app-1"),
            k.vacating("app-1", "c"),
            k.leaving("app-1", "presence-x", "u"),
        ];
        let first = slot(keys[0].as_bytes());
        for key in &keys {
            assert_eq!(slot(key.as_bytes()), first, "{key}");
        }
        assert_ne!(slot(k.members("app-2", "presence-x").as_bytes()), first);
    }
}
