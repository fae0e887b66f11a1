//! Partition leases: which node consumes which partition stream.
//!
//! One Lua script, run by every consuming node every second (or every third of the claim
//! timeout if shorter), does the
//! bookkeeping atomically on Redis's clock: it renews the node's heartbeat in the
//! consumers set (dropping those whose heartbeat expired), computes the fair share
//! `ceil(partitions / live consumers)`, renews the node's leases, gives back those beyond
//! its share, and takes free or expired ones up to it. It returns the partitions the node
//! owns now. A node that stops gives all of them back at once (`stop` = 1); one that dies
//! loses them when they expire, after the claim timeout.

/// `KEYS[1]` owners hash, `KEYS[2]` consumers zset; `ARGV` = consumer, ttl ms,
/// partitions, stop (0/1). Returns the owned partitions.
pub const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local function owner_of(p)
  local v = redis.call('HGET', KEYS[1], p)
  if not v then return nil, 0 end
  local o, e = string.match(v, '^(.*)|(%d+)$')
  return o, tonumber(e or 0)
end
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[2], me)
  for p = 0, n - 1 do
    if owner_of(p) == me then redis.call('HDEL', KEYS[1], p) end
  end
  return {}
end
redis.call('ZADD', KEYS[2], now + ttl, me)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local live = math.max(redis.call('ZCARD', KEYS[2]), 1)
local fair = math.ceil(n / live)
local mine, free = {}, {}
for p = 0, n - 1 do
  local o, e = owner_of(p)
  if o == me then table.insert(mine, p)
  elseif o == nil or e < now then table.insert(free, p) end
end
while #mine > fair do
  redis.call('HDEL', KEYS[1], table.remove(mine))
end
for _, p in ipairs(free) do
  if #mine >= fair then break end
  table.insert(mine, p)
end
for _, p in ipairs(mine) do
  redis.call('HSET', KEYS[1], p, me .. '|' .. (now + ttl))
end
return mine
";
