//! What the bridge adds for subscription counts, watchlist events and the webhook grace
//! across nodes.
//!
//! - **Counts.** A home shard hands over its node's count of a channel (coalesced); the
//!   bridge publishes it on the broadcast channel and keeps every other node's last count
//!   per channel, telling the channel's home shard their sum. The first time a node counts
//!   a channel it reads the other nodes' counts from their subscription hashes; a count
//!   heard since wins over what the read returns.
//! - **Watchlist.** A user's node-level first and last sockets go through the `ONLINE`
//!   script, which decides `online` / `offline` for the cluster once; the decision goes to
//!   every node. A socket's initial state is one `HMGET` of the app's online users.
//! - **Grace.** `channel_vacated` and `member_removed` leave a key with a token in Redis
//!   for the grace period; a node that brings the channel or member back first deletes it
//!   (and sends no `channel_occupied` / `member_added`). When the grace ends the deciding
//!   node sends the webhook only if its token is still there.

use std::collections::VecDeque;

use super::*;
use crate::fanout::home_shard;

/// The other nodes' counts of one channel.
#[derive(Default)]
struct Remote {
    /// The other nodes' counts were read from Redis once.
    read: bool,
    nodes: AHashMap<u32, u64>,
}

/// A webhook waiting out its grace in Redis.
struct Graced {
    due: Instant,
    key: String,
    token: String,
    app: usize,
    event: Event,
}

/// The bridge's state for the three features.
#[derive(Default)]
pub(super) struct Features {
    counts: RefCell<AHashMap<(AppIdx, Arc<str>), Remote>>,
    graced: RefCell<VecDeque<Graced>>,
    tokens: Cell<u64>,
}

impl Features {
    /// When the next held webhook is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.graced.borrow().front().map(|g| g.due)
    }
}

impl Bridge {
    /// A token no other grace key of this node holds.
    pub(super) fn grace_token(&self) -> String {
        let n = self.features.tokens.get() + 1;
        self.features.tokens.set(n);
        format!("{}:{n}", self.node)
    }

    /// How long Redis keeps a grace key: well past the grace, so a busy node still
    /// finds its token, but not forever if the node dies.
    pub(super) fn grace_px(&self) -> String {
        (self.vacate_delay * 2 + Duration::from_secs(10))
            .as_millis()
            .to_string()
    }

    /// Holds `event` until the grace ends; sent if `key` still holds `token` then.
    pub(super) fn hold(&self, key: String, token: String, app: usize, event: Event) {
        self.features.graced.borrow_mut().push_back(Graced {
            due: Instant::now() + self.vacate_delay,
            key,
            token,
            app,
            event,
        });
    }

    /// The sum of the other nodes' counts of a channel.
    fn remote_sum(&self, key: &(AppIdx, Arc<str>)) -> u64 {
        self.features
            .counts
            .borrow()
            .get(key)
            .map_or(0, |r| r.nodes.values().sum())
    }

    /// Nodes that stopped heartbeating hold no subscriptions any more: their counts go,
    /// and the home shards of the channels they had are told the new sums.
    pub(super) fn forget_counts(&self, dead: &[u32]) {
        if dead.is_empty() {
            return;
        }
        let mut changed = Vec::new();
        for (key, remote) in self.features.counts.borrow_mut().iter_mut() {
            let before = remote.nodes.len();
            remote.nodes.retain(|n, _| !dead.contains(n));
            if remote.nodes.len() != before {
                changed.push(key.clone());
            }
        }
        for (app, channel) in changed {
            self.tell_home(app, &channel);
        }
    }

    fn tell_home(&self, app: AppIdx, channel: &Arc<str>) {
        let remote = self.remote_sum(&(app, Arc::clone(channel)));
        let home = home_shard(app, channel, self.shards);
        self.to_shard(
            home,
            Envelope::RemoteCount {
                app,
                channel: Arc::clone(channel),
                remote,
            },
        );
    }

    /// Another node's count of a channel (a `Count` message).
    pub(super) fn heard_count(&self, node: u32, app: AppIdx, channel: Arc<str>, count: u64) {
        self.features
            .counts
            .borrow_mut()
            .entry((app, Arc::clone(&channel)))
            .or_default()
            .nodes
            .insert(node, count);
        self.tell_home(app, &channel);
    }
}

/// A home shard's count of its node: published to the other nodes; the first time, the
/// other nodes' counts are read and the home shard told their sum.
pub(super) async fn node_count(
    bridge: &Bridge,
    conn: &mut Link,
    app: AppIdx,
    channel: Arc<str>,
    count: u64,
    cmds: &mut Vec<Vec<Bytes>>,
) -> Result<(), RedisError> {
    let app_id = bridge.app_id(app).to_owned();
    cmds.push(bridge.publish_cmd(&Message::Count {
        node: bridge.node,
        app_id: app_id.clone(),
        channel: channel.to_string(),
        count,
    }));
    let key = (app, Arc::clone(&channel));
    let read = bridge
        .features
        .counts
        .borrow()
        .get(&key)
        .is_some_and(|r| r.read);
    if read {
        return Ok(());
    }
    let field = format!("{app_id}\n{channel}");
    // Every node that ever heartbeated, not only those seen alive so far: a node that
    // just started has not read the heartbeats yet. A dead node's hash is gone.
    let nodes_key = bridge.keys.nodes();
    let others: Vec<u32> = bulk_strings(conn.call(&[b"HKEYS", nodes_key.as_bytes()]).await?)
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    let mut found = Vec::new();
    for node in others.into_iter().filter(|&n| n != bridge.node) {
        let hash = bridge.keys.node_channels(node);
        let reply = conn
            .call(&[b"HGET", hash.as_bytes(), field.as_bytes()])
            .await?;
        if let Reply::Bulk(b) = reply
            && let Some(n) = std::str::from_utf8(&b).ok().and_then(|t| t.parse().ok())
        {
            found.push((node, n));
        }
    }
    {
        let mut counts = bridge.features.counts.borrow_mut();
        let remote = counts.entry(key).or_default();
        remote.read = true;
        for (node, n) in found {
            remote.nodes.entry(node).or_insert(n);
        }
    }
    bridge.tell_home(app, &channel);
    Ok(())
}

/// A user's first or last socket on this node: the cluster decides, and every node's
/// watchers hear a change.
pub(super) async fn node_user(
    bridge: &Bridge,
    conn: &mut Link,
    (node, app): (u32, AppIdx),
    user_id: Arc<str>,
    online: bool,
    cmds: &mut Vec<Vec<Bytes>>,
) -> Result<(), RedisError> {
    let app_id = bridge.app_id(app).to_owned();
    let sign = if online { "1" } else { "-1" };
    if node == bridge.node {
        presence::register(bridge, conn, app).await?;
    }
    let reply = presence::eval(
        conn,
        scripts::ONLINE,
        &[
            &bridge.keys.online(&app_id),
            &bridge.keys.node_online(node, &app_id),
        ],
        &[&user_id, sign],
    )
    .await?;
    let changed = matches!(
        (reply, online),
        (Reply::Int(1), true) | (Reply::Int(0), false)
    );
    if changed {
        cmds.push(bridge.publish_cmd(&Message::Online {
            node: bridge.node,
            app_id,
            user_id: user_id.to_string(),
            online,
        }));
        bridge.to_all_shards(|| Envelope::UserOnline {
            app,
            user_id: Arc::clone(&user_id),
            online,
        });
    }
    Ok(())
}

/// The initial watchlist state of a socket: which of `users` are online in the cluster.
pub(super) async fn watch_query(
    bridge: &Bridge,
    conn: &mut Link,
    app: AppIdx,
    users: Vec<Arc<str>>,
    from: usize,
    socket: SocketRef,
) -> Result<(), RedisError> {
    let key = bridge.keys.online(bridge.app_id(app));
    let mut args: Vec<&[u8]> = vec![b"HMGET", key.as_bytes()];
    args.extend(users.iter().map(|u| u.as_bytes()));
    let reply = conn.call(&args).await?;
    let Reply::Array(items) = reply else {
        return Err(RedisError::Protocol("HMGET reply".into()));
    };
    let mut on = Vec::new();
    let mut off = Vec::new();
    for (user, item) in users.into_iter().zip(items) {
        let nodes = match item {
            Reply::Bulk(b) => std::str::from_utf8(&b)
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
                .unwrap_or(0),
            _ => 0,
        };
        if nodes > 0 {
            on.push(user)
        } else {
            off.push(user)
        }
    }
    if let Some(frame) = crate::shard::watchlist_frame(&on, &off) {
        bridge.to_shard(from, Envelope::WatchState { socket, frame });
    }
    Ok(())
}

/// Sends the held webhooks whose grace is over and whose token is still in Redis. With
/// Redis unreachable they are sent: a vacate is not lost for not being checkable.
pub(super) async fn release_due(
    bridge: &Bridge,
    mut conn: Option<&mut Link>,
) -> Result<(), RedisError> {
    let now = Instant::now();
    loop {
        let due = bridge
            .features
            .graced
            .borrow()
            .front()
            .is_some_and(|g| g.due <= now);
        if !due {
            return Ok(());
        }
        let Some(g) = bridge.features.graced.borrow_mut().pop_front() else {
            return Ok(());
        };
        let send = match conn.as_deref_mut() {
            Some(c) => {
                let reply = presence::eval(c, scripts::RELEASE, &[&g.key], &[&g.token]).await;
                match reply {
                    Ok(r) => r == Reply::Int(1),
                    Err(e) => {
                        bridge.webhooks.send_now(g.app, g.event);
                        return Err(e);
                    }
                }
            }
            None => true,
        };
        if send {
            bridge.webhooks.send_now(g.app, g.event);
        }
    }
}
