//! Redis Cluster: the slot map, and a command connection that sends each command to the
//! master that owns its key.
//!
//! [`discover`] asks the seed nodes in turn for `CLUSTER SLOTS` and whether the servers
//! have sharded pub/sub (`COMMAND INFO SSUBSCRIBE SPUBLISH`, Redis 7). [`ClusterConnection`]
//! keeps one pipelined [`Connection`] per master, opened when first used. A command goes
//! to the owner of its key's hash slot ([`slot`], hash tags honoured); a `-MOVED` reply
//! re-routes it and marks the map stale (read again before the next pipeline), `-ASK`
//! sends it once more with `ASKING` to the importing node, `-TRYAGAIN` (a multi-key
//! command during a migration) waits a moment and retries. An I/O error on any master
//! fails the call: the caller drops the whole connection and discovers the cluster again,
//! as after a lost single-server connection, so a master failing over inside the cluster
//! is followed like a Sentinel failover.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::client::{Connection, RedisError, RedisOptions, Reply};

/// Hash slots of a Redis Cluster.
pub const SLOTS: usize = 16384;

/// Redirections followed for one command before giving up.
const MAX_REDIRECTS: usize = 5;

/// The hash slot of `key`: CRC16 of the key, or of its `{hash tag}` when it has one.
#[must_use]
pub fn slot(key: &[u8]) -> u16 {
    redis_protocol::redis_keyslot(key)
}

/// Where each hash slot lives.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The masters, in the order `CLUSTER SLOTS` first names them.
    pub masters: Vec<(String, u16)>,
    /// Per slot, an index into `masters`; `u16::MAX` for a slot no master serves.
    owner: Box<[u16]>,
    /// Whether the servers have sharded pub/sub (`SSUBSCRIBE`, `SPUBLISH`).
    pub sharded: bool,
}

impl Topology {
    /// The master serving `slot`, if one does.
    #[must_use]
    pub fn owner(&self, slot: u16) -> Option<usize> {
        match self.owner.get(usize::from(slot)) {
            Some(&i) if i != u16::MAX => Some(usize::from(i)),
            _ => None,
        }
    }

    /// The master serving `key`'s slot; the first master when no one serves it (the
    /// command then gets `-CLUSTERDOWN` or a redirection, which is handled).
    #[must_use]
    pub fn route(&self, key: &[u8]) -> usize {
        self.owner(slot(key)).unwrap_or(0)
    }

    /// Slots no master serves.
    #[must_use]
    pub fn uncovered(&self) -> usize {
        self.owner.iter().filter(|&&i| i == u16::MAX).count()
    }

    fn index_of(&mut self, addr: &(String, u16)) -> usize {
        match self.masters.iter().position(|m| m == addr) {
            Some(i) => i,
            None => {
                self.masters.push(addr.clone());
                self.masters.len() - 1
            }
        }
    }
}

/// Reads the slot map from the first of `seeds` that gives one. `opts` carries `AUTH`
/// and the connect timeout; its host and port are unused.
pub async fn discover(
    opts: &RedisOptions,
    seeds: &[(String, u16)],
) -> Result<Topology, RedisError> {
    let mut answers = Vec::new();
    for (host, port) in seeds {
        match ask(opts, host, *port).await {
            Ok(topology) => return Ok(topology),
            Err(e) => answers.push(format!("{host}:{port}: {e}")),
        }
    }
    Err(RedisError::NoCluster {
        answers: answers.join("; "),
    })
}

async fn ask(opts: &RedisOptions, host: &str, port: u16) -> Result<Topology, RedisError> {
    let mut node_opts = opts.clone();
    node_opts.host = host.to_owned();
    node_opts.port = port;
    node_opts.sentinels = None;
    node_opts.db = 0;
    let mut conn = Connection::connect(&node_opts).await?;
    let slots = conn.call(&[b"CLUSTER", b"SLOTS"]).await?;
    let mut topology = parse_slots(&slots, host)?;
    topology.sharded = has_sharded_pubsub(&mut conn).await?;
    Ok(topology)
}

/// Whether the server knows `SSUBSCRIBE` and `SPUBLISH` (Redis 7, not renamed away).
pub async fn has_sharded_pubsub(conn: &mut Connection) -> Result<bool, RedisError> {
    let info = conn
        .call(&[b"COMMAND", b"INFO", b"SSUBSCRIBE", b"SPUBLISH"])
        .await?;
    Ok(match info {
        Reply::Array(items) => items.len() == 2 && items.iter().all(|i| *i != Reply::Nil),
        _ => false,
    })
}

/// Parses a `CLUSTER SLOTS` reply: `[start, end, [host, port, id, ...], replicas...]` per
/// range. A master listed without a host (`""` or `"?"`) is on `asked`, the host asked.
pub fn parse_slots(reply: &Reply, asked: &str) -> Result<Topology, RedisError> {
    let bad = || RedisError::Protocol(format!("unexpected CLUSTER SLOTS reply: {reply:?}"));
    let Reply::Array(ranges) = reply else {
        return Err(bad());
    };
    let mut topology = Topology {
        masters: Vec::new(),
        owner: vec![u16::MAX; SLOTS].into_boxed_slice(),
        sharded: false,
    };
    for range in ranges {
        let Reply::Array(fields) = range else {
            return Err(bad());
        };
        let (Some(Reply::Int(start)), Some(Reply::Int(end)), Some(Reply::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return Err(bad());
        };
        let host = match master.first() {
            Some(Reply::Bulk(h)) if !h.is_empty() && &h[..] != b"?" => {
                String::from_utf8_lossy(h).into_owned()
            }
            Some(Reply::Bulk(_)) => asked.to_owned(),
            _ => return Err(bad()),
        };
        let port = match master.get(1) {
            Some(Reply::Int(p)) => u16::try_from(*p).map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        let (start, end) = (usize::try_from(*start), usize::try_from(*end));
        let (Ok(start), Ok(end)) = (start, end) else {
            return Err(bad());
        };
        if start > end || end >= SLOTS {
            return Err(bad());
        }
        let index = topology.index_of(&(host, port));
        let index = u16::try_from(index).map_err(|_| bad())?;
        topology.owner[start..=end].fill(index);
    }
    if topology.masters.is_empty() {
        return Err(RedisError::Protocol(
            "CLUSTER SLOTS names no master: the cluster has no slots assigned".to_owned(),
        ));
    }
    Ok(topology)
}

/// Commands routed over a Redis Cluster's masters.
pub struct ClusterConnection {
    opts: RedisOptions,
    seeds: Vec<(String, u16)>,
    topology: Topology,
    /// Per master (same index as `topology.masters`), opened when first used.
    conns: Vec<Option<Connection>>,
    /// A redirection said the map is out of date: read it again before the next pipeline.
    stale: bool,
    /// Redirections followed, for the metrics.
    redirects: Arc<AtomicU64>,
}

/// Where a `-MOVED` or `-ASK` reply sends a command.
#[derive(Debug, PartialEq, Eq)]
enum Redirect {
    Moved { slot: u16, addr: (String, u16) },
    Ask { addr: (String, u16) },
}

fn redirect(msg: &str) -> Option<Redirect> {
    let mut words = msg.split_whitespace();
    let kind = words.next()?;
    let slot: u16 = words.next()?.parse().ok()?;
    let (host, port) = words.next()?.rsplit_once(':')?;
    let addr = (host.to_owned(), port.parse().ok()?);
    match kind {
        "MOVED" => Some(Redirect::Moved { slot, addr }),
        "ASK" => Some(Redirect::Ask { addr }),
        _ => None,
    }
}

/// The key a command is routed by; `None` for commands any master answers.
fn key_of<A: AsRef<[u8]>>(args: &[A]) -> Option<&[u8]> {
    let name = args.first()?.as_ref();
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    if is("EVAL") || is("EVALSHA") {
        let keys: usize = std::str::from_utf8(args.get(2)?.as_ref())
            .ok()?
            .parse()
            .ok()?;
        return (keys > 0).then(|| args.get(3).map(AsRef::as_ref)).flatten();
    }
    if is("PUBSUB") {
        let sub = args.get(1)?.as_ref();
        return sub
            .eq_ignore_ascii_case(b"SHARDNUMSUB")
            .then(|| args.get(2).map(AsRef::as_ref))
            .flatten();
    }
    if is("XGROUP") {
        return args.get(2).map(AsRef::as_ref);
    }
    if is("XREADGROUP") {
        let streams = args
            .iter()
            .position(|a| a.as_ref().eq_ignore_ascii_case(b"STREAMS"))?;
        return args.get(streams + 1).map(AsRef::as_ref);
    }
    if is("PUBLISH") || is("PING") || is("INFO") || is("COMMAND") || is("CLUSTER") {
        return None;
    }
    args.get(1).map(AsRef::as_ref)
}

impl ClusterConnection {
    /// Discovers the cluster from `seeds` and connects to its first master. Each
    /// redirection followed is counted in `redirects`.
    pub async fn connect(
        opts: &RedisOptions,
        seeds: &[(String, u16)],
        redirects: Arc<AtomicU64>,
    ) -> Result<ClusterConnection, RedisError> {
        let topology = discover(opts, seeds).await?;
        let mut conn = ClusterConnection {
            opts: opts.clone(),
            seeds: seeds.to_vec(),
            conns: Vec::new(),
            topology,
            stale: false,
            redirects,
        };
        conn.conns.resize_with(conn.topology.masters.len(), || None);
        conn.node(0).await?;
        Ok(conn)
    }

    /// The slot map in use.
    #[must_use]
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// `n masters (first host:port)`, for logs.
    #[must_use]
    pub fn server(&self) -> String {
        let (host, port) = &self.topology.masters[0];
        format!(
            "a cluster of {} masters ({host}:{port}, ...)",
            self.topology.masters.len()
        )
    }

    /// The connection to master `index`, opened now if needed.
    async fn node(&mut self, index: usize) -> Result<&mut Connection, RedisError> {
        if self.conns.len() < self.topology.masters.len() {
            self.conns.resize_with(self.topology.masters.len(), || None);
        }
        if self.conns[index].is_none() {
            let (host, port) = &self.topology.masters[index];
            let mut node_opts = self.opts.clone();
            node_opts.host = host.clone();
            node_opts.port = *port;
            node_opts.sentinels = None;
            node_opts.db = 0;
            self.conns[index] = Some(Connection::connect(&node_opts).await?);
        }
        // Just opened or kept: present.
        Ok(self.conns[index].as_mut().expect("connection opened above"))
    }

    fn route<A: AsRef<[u8]>>(&self, args: &[A]) -> usize {
        key_of(args).map_or(0, |key| self.topology.route(key))
    }

    /// Reads the slot map again (from the masters known, then the seeds), keeping the
    /// connections of masters that still are.
    async fn refresh(&mut self) -> Result<(), RedisError> {
        let mut seeds = self.topology.masters.clone();
        seeds.extend(self.seeds.iter().cloned());
        let topology = discover(&self.opts, &seeds).await?;
        let mut old: Vec<((String, u16), Connection)> = self
            .topology
            .masters
            .iter()
            .cloned()
            .zip(std::mem::take(&mut self.conns))
            .filter_map(|(addr, c)| Some((addr, c?)))
            .collect();
        self.conns = topology
            .masters
            .iter()
            .map(|addr| {
                let i = old.iter().position(|(a, _)| a == addr)?;
                Some(old.swap_remove(i).1)
            })
            .collect();
        self.topology = topology;
        self.stale = false;
        Ok(())
    }

    /// Sends one command to the master owning its key and waits for its reply, following
    /// redirections. An error reply becomes [`RedisError::Server`].
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let mut target = self.route(args);
        let mut asking = false;
        for _ in 0..MAX_REDIRECTS {
            let result = if asking {
                let cmds = vec![
                    vec![Bytes::from_static(b"ASKING")],
                    args.iter().map(|a| Bytes::copy_from_slice(a)).collect(),
                ];
                let mut replies = self.node(target).await?.pipeline(&cmds).await?;
                match replies.pop() {
                    Some(Reply::Error(msg)) => Err(RedisError::Server(msg)),
                    Some(reply) => Ok(reply),
                    None => Err(RedisError::Closed),
                }
            } else {
                self.node(target).await?.call(args).await
            };
            let msg = match result {
                Err(RedisError::Server(msg)) => msg,
                other => return other,
            };
            asking = false;
            let redirected = redirect(&msg);
            if redirected.is_some() {
                self.redirects.fetch_add(1, Ordering::Relaxed);
            }
            match redirected {
                Some(Redirect::Moved { slot, addr }) => {
                    let index = self.topology.index_of(&addr);
                    if let Ok(i) = u16::try_from(index) {
                        self.topology.owner[usize::from(slot)] = i;
                    }
                    self.stale = true;
                    target = index;
                }
                Some(Redirect::Ask { addr }) => {
                    target = self.topology.index_of(&addr);
                    asking = true;
                }
                None if msg.starts_with("TRYAGAIN") => {
                    monoio::time::sleep(Duration::from_millis(20)).await;
                }
                None => return Err(RedisError::Server(msg)),
            }
        }
        Err(RedisError::Protocol(format!(
            "more than {MAX_REDIRECTS} redirections for {:?}",
            String::from_utf8_lossy(args[0])
        )))
    }

    /// Sends many commands, each to its master (one pipeline per master, the order kept
    /// per master), and returns one reply per command in order. Commands redirected are
    /// sent again one by one, in order. An error reply is [`Reply::Error`] in its place.
    pub async fn pipeline(&mut self, cmds: &[Vec<Bytes>]) -> Result<Vec<Reply>, RedisError> {
        if self.stale {
            self.refresh().await?;
        }
        let mut replies: Vec<Option<Reply>> = vec![None; cmds.len()];
        let mut order: Vec<usize> = Vec::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, cmd) in cmds.iter().enumerate() {
            let target = self.route(cmd);
            match order.iter().position(|&t| t == target) {
                Some(g) => groups[g].push(i),
                None => {
                    order.push(target);
                    groups.push(vec![i]);
                }
            }
        }
        for (target, group) in order.into_iter().zip(groups) {
            let batch: Vec<Vec<Bytes>> = group.iter().map(|&i| cmds[i].clone()).collect();
            let got = self.node(target).await?.pipeline(&batch).await?;
            for (i, reply) in group.into_iter().zip(got) {
                replies[i] = Some(reply);
            }
        }
        let mut out = Vec::with_capacity(cmds.len());
        for (cmd, reply) in cmds.iter().zip(replies) {
            let reply = reply.unwrap_or(Reply::Nil);
            let redo = matches!(&reply, Reply::Error(m)
                if redirect(m).is_some() || m.starts_with("TRYAGAIN"));
            if !redo {
                out.push(reply);
                continue;
            }
            let args: Vec<&[u8]> = cmd.iter().map(|b| &b[..]).collect();
            out.push(match self.call(&args).await {
                Ok(reply) => reply,
                Err(RedisError::Server(msg)) => Reply::Error(msg),
                Err(e) => return Err(e),
            });
        }
        Ok(out)
    }

    /// Subscribers of `channel`: `PUBSUB SHARDNUMSUB` on its slot's master with sharded
    /// pub/sub, else `PUBSUB NUMSUB` summed over the masters (each counts only its own
    /// clients).
    pub async fn numsub(&mut self, channel: &[u8], sharded: bool) -> Result<usize, RedisError> {
        if sharded {
            let reply = self.call(&[b"PUBSUB", b"SHARDNUMSUB", channel]).await?;
            return Ok(count_of(&reply));
        }
        let mut total = 0;
        for i in 0..self.topology.masters.len() {
            let reply = self
                .node(i)
                .await?
                .call(&[b"PUBSUB", b"NUMSUB", channel])
                .await?;
            total += count_of(&reply);
        }
        Ok(total)
    }
}

/// The count of a `PUBSUB NUMSUB`-style reply `[channel, n]`.
#[must_use]
pub fn count_of(reply: &Reply) -> usize {
    match reply {
        Reply::Array(items) => match items.get(1) {
            Some(Reply::Int(n)) => usize::try_from(*n).unwrap_or(0),
            _ => 0,
        },
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn hash_tags_put_keys_in_one_slot() {
        assert_eq!(slot(b"{app-1}:presence:x"), slot(b"{app-1}:occupied"));
        assert_eq!(slot(b"{app-1}:a"), slot(b"app-1"));
        // `redis-cli cluster keyslot foo`
        assert_eq!(slot(b"foo"), 12182);
    }

    #[test]
    fn commands_are_routed_by_their_key() {
        let eval: Vec<&[u8]> = vec![b"EVAL", b"return 1", b"2", b"k1", b"k2", b"arg"];
        assert_eq!(key_of(&eval), Some(&b"k1"[..]));
        let no_keys: Vec<&[u8]> = vec![b"EVAL", b"return 1", b"0", b"arg"];
        assert_eq!(key_of(&no_keys), None);
        let shard: Vec<&[u8]> = vec![b"pubsub", b"shardnumsub", b"ch"];
        assert_eq!(key_of(&shard), Some(&b"ch"[..]));
        let publish: Vec<&[u8]> = vec![b"PUBLISH", b"ch", b"x"];
        assert_eq!(key_of(&publish), None);
        let spublish: Vec<&[u8]> = vec![b"SPUBLISH", b"ch", b"x"];
        assert_eq!(key_of(&spublish), Some(&b"ch"[..]));
        let hset: Vec<&[u8]> = vec![b"HSET", b"h", b"f", b"v"];
        assert_eq!(key_of(&hset), Some(&b"h"[..]));
    }

    #[test]
    fn redirections_are_read_from_the_error_text() {
        assert_eq!(
            redirect("MOVED 3999 127.0.0.1:6381"),
            Some(Redirect::Moved {
                slot: 3999,
                addr: ("127.0.0.1".to_owned(), 6381)
            })
        );
        assert_eq!(
            redirect("ASK 3999 10.0.0.2:7000"),
            Some(Redirect::Ask {
                addr: ("10.0.0.2".to_owned(), 7000)
            })
        );
        assert_eq!(redirect("ERR unknown command"), None);
        assert_eq!(
            redirect("TRYAGAIN Multiple keys request during rehashing"),
            None
        );
    }

    #[test]
    fn slot_map_names_each_master_once_and_fills_missing_hosts() {
        let range = |start: i64, end: i64, host: &str, port: i64| {
            Reply::Array(vec![
                Reply::Int(start),
                Reply::Int(end),
                Reply::Array(vec![bulk(host), Reply::Int(port), bulk("id")]),
                Reply::Array(vec![bulk("10.0.0.9"), Reply::Int(7100), bulk("replica")]),
            ])
        };
        let reply = Reply::Array(vec![
            range(0, 5460, "10.0.0.1", 7000),
            range(5461, 10922, "", 7001),
            range(10923, 16000, "10.0.0.1", 7000),
        ]);
        let t = parse_slots(&reply, "seed").expect("parsed");
        assert_eq!(
            t.masters,
            vec![("10.0.0.1".to_owned(), 7000), ("seed".to_owned(), 7001)]
        );
        assert_eq!(t.owner(0), Some(0));
        assert_eq!(t.owner(5461), Some(1));
        assert_eq!(t.owner(16000), Some(0));
        assert_eq!(t.owner(16001), None);
        assert_eq!(t.uncovered(), SLOTS - 16001);
        assert!(parse_slots(&Reply::Array(vec![]), "seed").is_err());
        assert!(parse_slots(&bulk("x"), "seed").is_err());
    }
}
