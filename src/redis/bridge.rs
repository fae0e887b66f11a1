//! The redis bridge: one thread, its own monoio runtime, two Redis connections (commands
//! and pub/sub). It sits in the shard mesh as one more participant, so shards reach it
//! and it reaches them through the same SPSC rings.
//!
//! Out: frames the local shards publish go to the broadcast channel once per node.
//! In: frames other nodes publish go to every local shard, which write the same bytes.
//! Presence: the cluster roster lives in Redis (see [`super::scripts`]); the bridge runs
//! the join and leave scripts and announces `member_added` / `member_removed` to every
//! node exactly once. Counts: each node keeps its subscription counts in Redis for REST
//! reads. Liveness: heartbeats, and the members of a node that stops heartbeating are
//! removed by another node. Redis down: local delivery goes on, cross-node publishes are
//! dropped and counted, and everything is rebuilt on reconnect.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ahash::{AHashMap, AHashSet};
use bytes::Bytes;

use super::client::{Backoff, Connection, RedisOptions, Reply, Subscriber};
use super::scripts::{self, Keys};
use super::wire::Message;
use crate::app::{AppIdx, AppTable};
use crate::config::Config;
use crate::config::WebhookEvent;
use crate::fanout::{
    ChannelPart, Envelope, Inbox, Outbox, Query, QueryReply, RosterEntry, SocketRef,
};
use crate::protocol::{
    member_added_frame, member_removed_frame, subscription_error_frame, subscription_succeeded,
};
use crate::webhooks::{Event, Webhooks};

/// How often a node writes its heartbeat and looks for dead nodes.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node silent this long is dead: its members are removed.
const NODE_TIMEOUT: Duration = Duration::from_secs(10);
/// Envelopes handled per round.
const BATCH: usize = 512;
/// How long a message from another node waits for room in a full shard ring.
const RING_PATIENCE: Duration = Duration::from_secs(2);

/// Counters the metrics scrape reads.
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// Messages published to other nodes.
    pub published: AtomicU64,
    /// Messages received from other nodes.
    pub received: AtomicU64,
    /// Publishes dropped while Redis was unreachable.
    pub dropped: AtomicU64,
    /// Messages from other nodes dropped because a shard's ring stayed full.
    pub ring_dropped: AtomicU64,
    /// Successful (re)connections.
    pub connects: AtomicU64,
    /// 1 while both connections are up.
    pub up: AtomicU64,
    /// Set once every shard has stopped: finish what is queued, then end the thread.
    pub stop: std::sync::atomic::AtomicBool,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Starts the bridge thread. `links` is the bridge's place in the mesh (index `shards`).
pub fn spawn(
    config: Arc<Config>,
    apps: Arc<AppTable>,
    node: u32,
    links: (Outbox, Inbox),
    stats: Arc<BridgeStats>,
    webhooks: Webhooks,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("corecast-redis".into())
        .spawn(move || {
            let (outbox, inbox) = links;
            let bridge = Rc::new(Bridge {
                opts: RedisOptions {
                    host: config.redis.host.clone(),
                    port: config.redis.port,
                    username: config.redis.username.clone(),
                    password: config.redis.password.clone(),
                    db: config.redis.db,
                    connect_timeout: Duration::from_secs(2),
                },
                keys: Keys::new(&config.redis.key_prefix, &config.redis.channel_prefix),
                shards: config.shards,
                apps,
                node,
                outbox: RefCell::new(outbox),
                stats,
                alive: RefCell::new(Vec::new()),
                sub_up: Cell::new(false),
                mine: RefCell::new(AHashSet::new()),
                webhooks,
            });
            let run = move || async move {
                monoio::spawn(subscriber_loop(Rc::clone(&bridge)));
                command_loop(bridge, inbox).await;
            };
            match monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build()
            {
                Ok(mut rt) => rt.block_on(run()),
                Err(e) => eprintln!("corecast: redis bridge could not start a runtime: {e}"),
            }
        })
}

struct Bridge {
    apps: Arc<AppTable>,
    node: u32,
    shards: usize,
    opts: RedisOptions,
    keys: Keys,
    outbox: RefCell<Outbox>,
    stats: Arc<BridgeStats>,
    /// Other nodes seen alive at the last heartbeat.
    alive: RefCell<Vec<u32>>,
    /// The pub/sub connection is subscribed.
    sub_up: Cell<bool>,
    /// This node's presence entries as last written to Redis, to tell after a Redis
    /// restart who left meanwhile.
    mine: RefCell<AHashSet<String>>,
    /// Cluster-wide webhooks (occupancy, members) are sent by the node that decides them.
    webhooks: Webhooks,
}

/// A resync in progress: rosters and counts collected from the shards.
#[derive(Default)]
struct Resync {
    waiting: usize,
    deadline: Option<Instant>,
    members: Vec<RosterEntry>,
    channels: Vec<(AppIdx, Arc<str>, u64)>,
}

impl Bridge {
    fn to_shard(&self, shard: usize, envelope: Envelope) {
        if self.outbox.borrow_mut().push(shard, envelope).is_err() {
            bump(&self.stats.dropped, 1);
        }
    }

    fn to_all_shards(&self, make: impl Fn() -> Envelope) {
        for s in 0..self.shards {
            self.to_shard(s, make());
        }
    }

    /// Hands an envelope from another node to every shard, waiting while a shard's ring
    /// is full (backpressure: the pub/sub socket is not read meanwhile). Only a ring that
    /// stays full for [`RING_PATIENCE`] drops the envelope, counted.
    async fn to_all_shards_waiting(&self, make: impl Fn() -> Envelope) {
        for s in 0..self.shards {
            let mut envelope = make();
            let deadline = Instant::now() + RING_PATIENCE;
            loop {
                match self.outbox.borrow_mut().push(s, envelope) {
                    Ok(()) => break,
                    Err(back) => envelope = back,
                }
                if Instant::now() >= deadline {
                    bump(&self.stats.ring_dropped, 1);
                    break;
                }
                monoio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    }

    fn app_id(&self, app: AppIdx) -> &str {
        &self.apps.get(app).id
    }

    /// Delivers a frame on this node and publishes it to the others.
    fn announce(
        &self,
        app: AppIdx,
        channel: &Arc<str>,
        frame: Bytes,
        except: Option<crate::protocol::SocketId>,
        out: &mut Vec<Vec<Bytes>>,
    ) {
        let at = Instant::now();
        self.to_all_shards(|| Envelope::Publish {
            app,
            channel: Arc::clone(channel),
            frame: frame.clone(),
            except,
            cache: false,
            at,
        });
        out.push(self.publish_cmd(&Message::Publish {
            node: self.node,
            app_id: self.app_id(app).to_owned(),
            channel: channel.to_string(),
            except,
            cache: false,
            frame,
        }));
    }

    fn publish_cmd(&self, message: &Message) -> Vec<Bytes> {
        vec![
            Bytes::from_static(b"PUBLISH"),
            Bytes::from(self.keys.broadcast.clone()),
            message.encode(),
        ]
    }
}

/// Takes envelopes from the shards and talks to Redis; reconnects with backoff.
async fn command_loop(bridge: Rc<Bridge>, mut inbox: Inbox) {
    let mut conn: Option<Connection> = None;
    let mut backoff = Backoff::new(Duration::from_secs(5));
    let mut retry_at = Instant::now();
    let mut next_beat = Instant::now();
    let mut resync: Option<Resync> = None;
    let mut deltas: AHashMap<(AppIdx, Arc<str>), i64> = AHashMap::new();
    let mut was_up = false;
    let mut bell = crate::fanout::Bell::default();
    loop {
        let wake = next_beat.min(retry_at).max(Instant::now());
        let _ = monoio::time::timeout(wake - Instant::now(), inbox.ready(&mut bell)).await;
        if conn.is_none() && Instant::now() >= retry_at {
            match Connection::connect(&bridge.opts).await {
                Ok(c) => {
                    conn = Some(c);
                    backoff.reset();
                    bump(&bridge.stats.connects, 1);
                    eprintln!(
                        "corecast: redis connected at {}:{}",
                        bridge.opts.host, bridge.opts.port
                    );
                    was_up = true;
                    // Ask every shard for its rosters and counts to rebuild what Redis
                    // may have lost.
                    bridge.to_all_shards(|| Envelope::RosterDump);
                    resync = Some(Resync {
                        waiting: bridge.shards,
                        deadline: Some(Instant::now() + Duration::from_secs(2)),
                        ..Resync::default()
                    });
                    deltas.clear();
                }
                Err(e) => {
                    if was_up {
                        eprintln!("corecast: redis unreachable ({e}); retrying with backoff");
                        was_up = false;
                    }
                    retry_at = Instant::now() + backoff.next_delay();
                }
            }
        }
        bridge.stats.up.store(
            u64::from(conn.is_some() && bridge.sub_up.get()),
            Ordering::Relaxed,
        );
        let mut batch = Vec::new();
        inbox.drain(BATCH, |e| batch.push(e));
        if batch.is_empty() && bridge.stats.stop.load(Ordering::Acquire) && inbox.depth() == 0 {
            return;
        }
        let mut cmds: Vec<Vec<Bytes>> = Vec::new();
        for envelope in batch {
            match (&mut conn, envelope) {
                (_, Envelope::RosterEntries { members, channels }) => {
                    if let Some(r) = resync.as_mut() {
                        r.members.extend(members);
                        r.channels.extend(channels);
                        r.waiting = r.waiting.saturating_sub(1);
                    }
                }
                (
                    _,
                    Envelope::SubscriptionDelta {
                        app,
                        channel,
                        delta,
                    },
                ) => {
                    *deltas.entry((app, channel)).or_insert(0) += i64::from(delta);
                }
                (None, e) => offline(&bridge, e),
                (Some(c), e) => {
                    if let Err(err) = online(&bridge, c, e, &mut cmds).await {
                        eprintln!("corecast: redis command failed ({err}); reconnecting");
                        conn = None;
                        was_up = false;
                        retry_at = Instant::now();
                    }
                }
            }
        }
        if let Some(c) = conn.as_mut() {
            if !deltas.is_empty() {
                let key = Bytes::from(bridge.keys.node_channels(bridge.node));
                for ((app, channel), delta) in deltas.drain() {
                    if delta != 0 {
                        let field = format!("{}\n{channel}", bridge.app_id(app));
                        cmds.push(vec![
                            Bytes::from_static(b"HINCRBY"),
                            key.clone(),
                            Bytes::from(field),
                            Bytes::from(delta.to_string()),
                        ]);
                    }
                }
            }
            let ready = resync
                .as_ref()
                .is_some_and(|r| r.waiting == 0 || r.deadline.is_some_and(|d| Instant::now() >= d));
            let mut failed = flush(&bridge, c, &mut cmds).await.is_err();
            if !failed
                && ready
                && let Some(r) = resync.take()
            {
                failed = apply_resync(&bridge, c, r).await.is_err();
            }
            if !failed && Instant::now() >= next_beat {
                failed = heartbeat(&bridge, c).await.is_err();
                next_beat = Instant::now() + HEARTBEAT;
            }
            if failed {
                eprintln!("corecast: redis connection lost; reconnecting");
                conn = None;
                was_up = false;
                retry_at = Instant::now();
            }
        } else {
            let dropped = cmds.len() as u64;
            bump(&bridge.stats.dropped, dropped);
            deltas.clear();
        }
    }
}

/// Sends the queued simple commands in one pipeline.
async fn flush(
    bridge: &Bridge,
    conn: &mut Connection,
    cmds: &mut Vec<Vec<Bytes>>,
) -> Result<(), super::client::RedisError> {
    if cmds.is_empty() {
        return Ok(());
    }
    let n = cmds.iter().filter(|c| c[0].as_ref() == b"PUBLISH").count() as u64;
    let result = conn.pipeline(cmds).await;
    cmds.clear();
    if result.is_err() {
        bump(&bridge.stats.dropped, n);
    }
    result?;
    bump(&bridge.stats.published, n);
    Ok(())
}

/// Redis is down: publishes are dropped and counted, presence joins are refused so no
/// roster claims what Redis never recorded, reads answer with this node alone.
fn offline(bridge: &Bridge, envelope: Envelope) {
    match envelope {
        Envelope::Publish { .. }
        | Envelope::TerminateUser { .. }
        | Envelope::ClusterLeave { .. } => {
            bump(&bridge.stats.dropped, 1);
        }
        Envelope::ClusterJoin {
            app,
            channel,
            user_id,
            from,
            home,
            socket,
            ..
        } => {
            let error = "Presence is unavailable while the cluster's Redis is unreachable.";
            let refusal = subscription_error_frame(&channel, "Unavailable", error, 503);
            bridge.to_shard(
                home,
                Envelope::RosterUndo {
                    app,
                    channel: Arc::clone(&channel),
                    user_id: Arc::clone(&user_id),
                },
            );
            bridge.to_shard(
                from,
                Envelope::PresenceJoined {
                    app,
                    channel,
                    user_id,
                    socket,
                    outcome: Err(refusal),
                },
            );
        }
        Envelope::Query { from, id, .. } => {
            bridge.to_shard(
                from,
                Envelope::Reply {
                    id,
                    reply: QueryReply::default(),
                },
            );
        }
        _ => {}
    }
}

/// Redis is up: act on one envelope. Simple commands are queued in `cmds` (sent in one
/// pipeline); those whose replies matter flush the queue first to keep order.
async fn online(
    bridge: &Bridge,
    conn: &mut Connection,
    envelope: Envelope,
    cmds: &mut Vec<Vec<Bytes>>,
) -> Result<(), super::client::RedisError> {
    match envelope {
        Envelope::Publish {
            app,
            channel,
            frame,
            except,
            cache,
            ..
        } => {
            cmds.push(bridge.publish_cmd(&Message::Publish {
                node: bridge.node,
                app_id: bridge.app_id(app).to_owned(),
                channel: channel.to_string(),
                except,
                cache,
                frame,
            }));
        }
        Envelope::TerminateUser { app, user_id } => {
            cmds.push(bridge.publish_cmd(&Message::Terminate {
                node: bridge.node,
                app_id: bridge.app_id(app).to_owned(),
                user_id: user_id.to_string(),
            }));
        }
        Envelope::ClusterJoin {
            app,
            channel,
            user_id,
            user_info,
            new_on_node,
            from,
            home,
            socket,
        } => {
            flush(bridge, conn, cmds).await?;
            let joined = join(
                bridge,
                conn,
                app,
                &channel,
                &user_id,
                &user_info,
                new_on_node,
                socket,
                from,
                home,
                cmds,
            )
            .await;
            if let Err(e) = joined {
                // The socket is waiting for an answer: refuse it as if Redis were down.
                offline(
                    bridge,
                    Envelope::ClusterJoin {
                        app,
                        channel,
                        user_id,
                        user_info,
                        new_on_node,
                        from,
                        home,
                        socket,
                    },
                );
                return Err(e);
            }
        }
        Envelope::ClusterLeave {
            app,
            channel,
            user_id,
        } => {
            flush(bridge, conn, cmds).await?;
            leave(bridge, conn, bridge.node, app, &channel, &user_id, cmds).await?;
        }
        Envelope::Query {
            from,
            id,
            app,
            query,
        } => {
            flush(bridge, conn, cmds).await?;
            let reply = read(bridge, conn, app, &query).await?;
            bridge.to_shard(from, Envelope::Reply { id, reply });
        }
        Envelope::Occupancy {
            app,
            channel,
            delta,
        } => {
            flush(bridge, conn, cmds).await?;
            occupy(bridge, conn, bridge.node, app, &channel, delta, true).await?;
        }
        _ => {}
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn join(
    bridge: &Bridge,
    conn: &mut Connection,
    app: AppIdx,
    channel: &Arc<str>,
    user_id: &Arc<str>,
    user_info: &str,
    new_on_node: bool,
    socket: SocketRef,
    from: usize,
    home: usize,
    cmds: &mut Vec<Vec<Bytes>>,
) -> Result<(), super::client::RedisError> {
    let app_id = bridge.app_id(app).to_owned();
    let max = bridge
        .apps
        .get(app)
        .max_presence_members_per_channel
        .to_string();
    let entry = scripts::entry(&app_id, channel, user_id);
    let reply = eval(
        conn,
        scripts::JOIN,
        &[
            &bridge.keys.members(&app_id, channel),
            &bridge.keys.member_nodes(&app_id, channel),
            &bridge.keys.node_entries(bridge.node),
            &bridge.keys.presence_channels(&app_id),
        ],
        &[
            user_id,
            user_info,
            &entry,
            &max,
            if new_on_node { "1" } else { "0" },
            channel,
        ],
    )
    .await?;
    let Reply::Array(items) = reply else {
        return Err(super::client::RedisError::Protocol(
            "join script reply".into(),
        ));
    };
    let added = match items.first() {
        Some(Reply::Int(n)) => *n,
        _ => 0,
    };
    if added < 0 {
        let error = format!("The maximum of {max} members on this presence channel is reached.");
        let refusal = subscription_error_frame(channel, "LimitReached", &error, 4100);
        bridge.to_shard(
            home,
            Envelope::RosterUndo {
                app,
                channel: Arc::clone(channel),
                user_id: Arc::clone(user_id),
            },
        );
        bridge.to_shard(
            from,
            Envelope::PresenceJoined {
                app,
                channel: Arc::clone(channel),
                user_id: Arc::clone(user_id),
                socket,
                outcome: Err(refusal),
            },
        );
        return Ok(());
    }
    if new_on_node {
        bridge.mine.borrow_mut().insert(entry.clone());
    }
    let pairs: Vec<(String, String)> = items[1..]
        .chunks(2)
        .filter_map(|kv| match kv {
            [Reply::Bulk(k), Reply::Bulk(v)] => Some((
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )),
            _ => None,
        })
        .collect();
    let data = roster_data(&pairs);
    let frame = subscription_succeeded(channel, &data);
    bridge.to_shard(
        from,
        Envelope::PresenceJoined {
            app,
            channel: Arc::clone(channel),
            user_id: Arc::clone(user_id),
            socket,
            outcome: Ok(frame),
        },
    );
    if added == 1 {
        let a = app.0 as usize;
        if bridge.webhooks.wants(a, WebhookEvent::MemberAdded, channel) {
            let event = Event::MemberAdded {
                channel: channel.to_string(),
                user_id: user_id.to_string(),
            };
            bridge.webhooks.send(a, event);
        }
        let frame = member_added_frame(channel, user_id, user_info);
        bridge.announce(app, channel, frame, Some(socket.socket_id), cmds);
    }
    Ok(())
}

/// Runs the leave script for `node`'s entry and announces `member_removed` when the user
/// left the cluster.
async fn leave(
    bridge: &Bridge,
    conn: &mut Connection,
    node: u32,
    app: AppIdx,
    channel: &Arc<str>,
    user_id: &str,
    cmds: &mut Vec<Vec<Bytes>>,
) -> Result<(), super::client::RedisError> {
    let app_id = bridge.app_id(app).to_owned();
    let entry = scripts::entry(&app_id, channel, user_id);
    let reply = eval(
        conn,
        scripts::LEAVE,
        &[
            &bridge.keys.members(&app_id, channel),
            &bridge.keys.member_nodes(&app_id, channel),
            &bridge.keys.node_entries(node),
            &bridge.keys.presence_channels(&app_id),
        ],
        &[user_id, &entry, channel],
    )
    .await?;
    // Forgotten only once Redis has it: a leave lost with the connection is announced
    // by the resync after reconnecting.
    if node == bridge.node {
        bridge.mine.borrow_mut().remove(&entry);
    }
    if reply == Reply::Int(1) {
        let a = app.0 as usize;
        if bridge
            .webhooks
            .wants(a, WebhookEvent::MemberRemoved, channel)
        {
            let event = Event::MemberRemoved {
                channel: channel.to_string(),
                user_id: user_id.to_owned(),
            };
            bridge.webhooks.send(a, event);
        }
        let frame = member_removed_frame(channel, user_id);
        bridge.announce(app, channel, frame, None, cmds);
    }
    Ok(())
}

/// Counts `channel` as occupied (+1) or vacated (-1) on `node`; the node that moves the
/// cluster count between 0 and 1 sends `channel_occupied` / `channel_vacated`.
async fn occupy(
    bridge: &Bridge,
    conn: &mut Connection,
    node: u32,
    app: AppIdx,
    channel: &str,
    delta: i8,
    notify: bool,
) -> Result<(), super::client::RedisError> {
    let app_id = bridge.app_id(app).to_owned();
    let field = format!("{app_id}\n{channel}");
    let sign = if delta > 0 { "1" } else { "-1" };
    let reply = eval(
        conn,
        scripts::OCCUPY,
        &[
            &bridge.keys.occupied(&app_id),
            &bridge.keys.node_occupied(node),
        ],
        &[channel, sign, &field],
    )
    .await?;
    let a = app.0 as usize;
    let event = match (reply, delta > 0) {
        (Reply::Int(1), true) => Some((
            WebhookEvent::ChannelOccupied,
            Event::ChannelOccupied {
                channel: channel.to_owned(),
            },
        )),
        (Reply::Int(0), false) => Some((
            WebhookEvent::ChannelVacated,
            Event::ChannelVacated {
                channel: channel.to_owned(),
            },
        )),
        _ => None,
    };
    if notify
        && let Some((kind, event)) = event
        && bridge.webhooks.wants(a, kind, channel)
    {
        bridge.webhooks.send(a, event);
    }
    Ok(())
}

async fn eval(
    conn: &mut Connection,
    script: &str,
    keys: &[&str],
    args: &[&str],
) -> Result<Reply, super::client::RedisError> {
    let nkeys = keys.len().to_string();
    let mut parts: Vec<&[u8]> = vec![b"EVAL", script.as_bytes(), nkeys.as_bytes()];
    parts.extend(keys.iter().map(|k| k.as_bytes()));
    parts.extend(args.iter().map(|a| a.as_bytes()));
    conn.call(&parts).await
}

/// The presence data of `subscription_succeeded` from the cluster roster.
fn roster_data(pairs: &[(String, String)]) -> String {
    let mut roster = crate::registry::presence::Roster::default();
    for (id, info) in pairs {
        roster.join(id, info, usize::MAX);
    }
    roster.subscription_data()
}

/// Answers a REST read for the other nodes: their subscription counts, and the cluster
/// roster of presence channels.
async fn read(
    bridge: &Bridge,
    conn: &mut Connection,
    app: AppIdx,
    query: &Query,
) -> Result<QueryReply, super::client::RedisError> {
    let app_id = bridge.app_id(app).to_owned();
    let others: Vec<u32> = bridge.alive.borrow().clone();
    let mut counts: AHashMap<Arc<str>, u64> = AHashMap::new();
    let wanted = |name: &str| match query {
        Query::Channels { prefix } => name.starts_with(&**prefix),
        Query::Channel { name: n } => name == &**n,
    };
    for node in others {
        let reply = conn
            .call(&[b"HGETALL", bridge.keys.node_channels(node).as_bytes()])
            .await?;
        if let Reply::Array(items) = reply {
            for kv in items.chunks(2) {
                if let [Reply::Bulk(k), Reply::Bulk(v)] = kv {
                    let k = String::from_utf8_lossy(k);
                    let Some((a, name)) = k.split_once('\n') else {
                        continue;
                    };
                    let n: i64 = std::str::from_utf8(v)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if a == app_id && n > 0 && wanted(name) {
                        *counts.entry(Arc::from(name)).or_insert(0) += n as u64;
                    }
                }
            }
        }
    }
    let mut presence: Vec<Arc<str>> = match query {
        Query::Channel { name } if name.starts_with("presence-") => vec![Arc::clone(name)],
        Query::Channel { .. } => Vec::new(),
        Query::Channels { prefix } => {
            let reply = conn
                .call(&[
                    b"SMEMBERS",
                    bridge.keys.presence_channels(&app_id).as_bytes(),
                ])
                .await?;
            bulk_strings(reply)
                .into_iter()
                .filter(|c| c.starts_with(&**prefix))
                .map(Arc::from)
                .collect()
        }
    };
    presence.sort();
    presence.dedup();
    let mut channels: Vec<ChannelPart> = Vec::new();
    for name in presence {
        let reply = conn
            .call(&[b"HKEYS", bridge.keys.members(&app_id, &name).as_bytes()])
            .await?;
        let users: Vec<Arc<str>> = bulk_strings(reply).into_iter().map(Arc::from).collect();
        let subscriptions = counts.remove(&name).unwrap_or(0);
        channels.push(ChannelPart {
            name,
            subscriptions,
            users: Some(users),
        });
    }
    channels.extend(counts.into_iter().map(|(name, subscriptions)| ChannelPart {
        name,
        subscriptions,
        users: None,
    }));
    Ok(QueryReply { channels })
}

fn bulk_strings(reply: Reply) -> Vec<String> {
    match reply {
        Reply::Array(items) => items
            .into_iter()
            .filter_map(|i| match i {
                Reply::Bulk(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Writes this node's heartbeat, learns which nodes are alive, and removes the members
/// and counts of nodes that stopped heartbeating (one node does it, under a lock).
async fn heartbeat(
    bridge: &Bridge,
    conn: &mut Connection,
) -> Result<(), super::client::RedisError> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let nodes_key = bridge.keys.nodes();
    conn.call(&[
        b"HSET",
        nodes_key.as_bytes(),
        bridge.node.to_string().as_bytes(),
        now_ms.to_string().as_bytes(),
    ])
    .await?;
    let reply = conn.call(&[b"HGETALL", nodes_key.as_bytes()]).await?;
    let mut alive = Vec::new();
    let mut dead = Vec::new();
    if let Reply::Array(items) = reply {
        for kv in items.chunks(2) {
            if let [Reply::Bulk(k), Reply::Bulk(v)] = kv {
                let node: Option<u32> = std::str::from_utf8(k).ok().and_then(|s| s.parse().ok());
                let seen: u64 = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let Some(node) = node else { continue };
                if node == bridge.node {
                    continue;
                }
                if now_ms.saturating_sub(seen) > NODE_TIMEOUT.as_millis() as u64 {
                    dead.push(node);
                } else {
                    alive.push(node);
                }
            }
        }
    }
    *bridge.alive.borrow_mut() = alive;
    for node in dead {
        reap(bridge, conn, node).await?;
    }
    Ok(())
}

/// Removes a dead node's members (announcing `member_removed` where it was the user's
/// last node) and its counts.
async fn reap(
    bridge: &Bridge,
    conn: &mut Connection,
    node: u32,
) -> Result<(), super::client::RedisError> {
    let lock = bridge.keys.reap_lock(node);
    let got = conn
        .call(&[
            b"SET",
            lock.as_bytes(),
            bridge.node.to_string().as_bytes(),
            b"NX",
            b"EX",
            b"30",
        ])
        .await?;
    if got == Reply::Nil {
        return Ok(());
    }
    eprintln!("corecast: node {node} stopped heartbeating; removing its presence members");
    let entries = bulk_strings(
        conn.call(&[b"SMEMBERS", bridge.keys.node_entries(node).as_bytes()])
            .await?,
    );
    let mut cmds = Vec::new();
    for e in &entries {
        let Some((app_id, channel, user)) = scripts::split_entry(e) else {
            continue;
        };
        let Some((app, _)) = bridge.apps.by_id(app_id) else {
            continue;
        };
        leave(
            bridge,
            conn,
            node,
            app,
            &Arc::from(channel),
            user,
            &mut cmds,
        )
        .await?;
    }
    // Its occupied channels: vacated where it was the last node.
    let occupied = bulk_strings(
        conn.call(&[b"SMEMBERS", bridge.keys.node_occupied(node).as_bytes()])
            .await?,
    );
    for field in &occupied {
        let Some((app_id, channel)) = field.split_once('\n') else {
            continue;
        };
        let Some((app, _)) = bridge.apps.by_id(app_id) else {
            continue;
        };
        occupy(bridge, conn, node, app, channel, -1, true).await?;
    }
    flush(bridge, conn, &mut cmds).await?;
    conn.call(&[
        b"DEL",
        bridge.keys.node_entries(node).as_bytes(),
        bridge.keys.node_channels(node).as_bytes(),
    ])
    .await?;
    conn.call(&[
        b"HDEL",
        bridge.keys.nodes().as_bytes(),
        node.to_string().as_bytes(),
    ])
    .await?;
    Ok(())
}

/// After (re)connecting: makes Redis match this node's shards. Entries Redis has that
/// no shard has any more are left (announcing `member_removed`); entries shards have that
/// Redis lost are joined (announcing `member_added` for users new to the cluster);
/// subscription counts are rewritten whole.
async fn apply_resync(
    bridge: &Bridge,
    conn: &mut Connection,
    resync: Resync,
) -> Result<(), super::client::RedisError> {
    let mut cmds = Vec::new();
    let in_redis: AHashSet<String> = bulk_strings(
        conn.call(&[
            b"SMEMBERS",
            bridge.keys.node_entries(bridge.node).as_bytes(),
        ])
        .await?,
    )
    .into_iter()
    .collect();
    let mut current: AHashMap<String, RosterEntry> = AHashMap::new();
    for (app, channel, user, info) in resync.members {
        current.insert(
            scripts::entry(bridge.app_id(app), &channel, &user),
            (app, channel, user, info),
        );
    }
    // What this node told Redis before, whether or not Redis still has it (a restarted
    // Redis has lost it): users gone since then are announced removed.
    let mut old: AHashSet<String> = std::mem::take(&mut *bridge.mine.borrow_mut());
    old.extend(in_redis.iter().cloned());
    for e in old.iter().filter(|e| !current.contains_key(*e)) {
        let Some((app_id, channel, user)) = scripts::split_entry(e) else {
            continue;
        };
        let Some((app, _)) = bridge.apps.by_id(app_id) else {
            continue;
        };
        leave(
            bridge,
            conn,
            bridge.node,
            app,
            &Arc::from(channel),
            user,
            &mut cmds,
        )
        .await?;
    }
    for (e, (app, channel, user, info)) in &current {
        if in_redis.contains(e) {
            bridge.mine.borrow_mut().insert(e.clone());
            continue;
        }
        // Known before (Redis lost it): restore silently; new: announce if new to the cluster.
        let known = old.contains(e);
        let app_id = bridge.app_id(*app).to_owned();
        let reply = eval(
            conn,
            scripts::JOIN,
            &[
                &bridge.keys.members(&app_id, channel),
                &bridge.keys.member_nodes(&app_id, channel),
                &bridge.keys.node_entries(bridge.node),
                &bridge.keys.presence_channels(&app_id),
            ],
            &[user, info, e, &usize::MAX.to_string(), "1", channel],
        )
        .await?;
        bridge.mine.borrow_mut().insert(e.clone());
        if let Reply::Array(items) = reply
            && items.first() == Some(&Reply::Int(1))
            && !known
        {
            let frame = member_added_frame(channel, user, info);
            bridge.announce(*app, channel, frame, None, &mut cmds);
        }
    }
    let key = bridge.keys.node_channels(bridge.node);
    cmds.push(vec![Bytes::from_static(b"DEL"), Bytes::from(key.clone())]);
    for (app, channel, count) in resync.channels {
        // Still occupied here: restore the node's share of the cluster count silently
        // (a no-op when Redis kept it).
        if count > 0
            && bridge
                .webhooks
                .wants(app.0 as usize, WebhookEvent::ChannelVacated, &channel)
        {
            occupy(bridge, conn, bridge.node, app, &channel, 1, false).await?;
        }
        let field = format!("{}\n{channel}", bridge.app_id(app));
        cmds.push(vec![
            Bytes::from_static(b"HINCRBY"),
            Bytes::from(key.clone()),
            Bytes::from(field),
            Bytes::from(count.to_string()),
        ]);
    }
    flush(bridge, conn, &mut cmds).await
}

/// Listens on the broadcast channel and hands other nodes' messages to every shard.
async fn subscriber_loop(bridge: Rc<Bridge>) {
    let mut backoff = Backoff::new(Duration::from_secs(5));
    let mut was_up = false;
    loop {
        let mut sub = match Subscriber::connect(&bridge.opts).await {
            Ok(s) => s,
            Err(e) => {
                if was_up {
                    eprintln!("corecast: redis subscriber lost ({e}); retrying with backoff");
                    was_up = false;
                }
                monoio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        if sub
            .subscribe(&[bridge.keys.broadcast.as_bytes()])
            .await
            .is_err()
        {
            monoio::time::sleep(backoff.next_delay()).await;
            continue;
        }
        backoff.reset();
        was_up = true;
        bridge.sub_up.set(true);
        while let Ok((_, payload)) = sub.next_message().await {
            let Ok(message) = Message::decode(&payload) else {
                continue;
            };
            if message.node() == bridge.node {
                continue;
            }
            bump(&bridge.stats.received, 1);
            dispatch(&bridge, message).await;
        }
        bridge.sub_up.set(false);
        eprintln!("corecast: redis subscriber disconnected; reconnecting");
    }
}

async fn dispatch(bridge: &Bridge, message: Message) {
    match message {
        Message::Publish {
            app_id,
            channel,
            except,
            cache,
            frame,
            ..
        } => {
            let Some((app, _)) = bridge.apps.by_id(&app_id) else {
                return;
            };
            let channel: Arc<str> = Arc::from(channel);
            let at = Instant::now();
            bridge
                .to_all_shards_waiting(|| Envelope::Publish {
                    app,
                    channel: Arc::clone(&channel),
                    frame: frame.clone(),
                    except,
                    cache,
                    at,
                })
                .await;
        }
        Message::Terminate {
            app_id, user_id, ..
        } => {
            let Some((app, _)) = bridge.apps.by_id(&app_id) else {
                return;
            };
            let user: Arc<str> = Arc::from(user_id);
            bridge
                .to_all_shards_waiting(|| Envelope::TerminateUser {
                    app,
                    user_id: Arc::clone(&user),
                })
                .await;
        }
    }
}
