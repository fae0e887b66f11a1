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

mod cluster;
mod features;
mod inbound;
mod interest;
mod limits;
mod presence;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ahash::{AHashMap, AHashSet};
use bytes::Bytes;

use super::client::{Backoff, RedisError, RedisOptions, Reply, Subscriber};
use super::link::{Deployment, Link};
use super::scripts::{self, Keys};
use super::wire::Message;
use crate::app::{AppIdx, AppTable};
use crate::config::Config;
use crate::config::WebhookEvent;
use crate::fanout::{
    ChannelPart, Envelope, Inbox, InboxWaker, Outbox, Query, QueryReply, RosterEntry, SocketRef,
};
use crate::protocol::{
    member_added_frame, member_removed_frame, subscription_error_frame, subscription_succeeded,
};
use crate::webhooks::{Event, Webhooks};
use cluster::{bulk_strings, heartbeat, read};
use inbound::subscriber_loop;
use presence::{apply_resync, join, leave, occupy};

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
    /// Messages received from other nodes, and their bytes.
    pub received: AtomicU64,
    pub received_bytes: AtomicU64,
    /// Publishes dropped while Redis was unreachable.
    pub dropped: AtomicU64,
    /// Messages from other nodes dropped because a shard's ring stayed full.
    pub ring_dropped: AtomicU64,
    /// Successful (re)connections.
    pub connects: AtomicU64,
    /// 1 while both connections are up.
    pub up: AtomicU64,
    /// 1 while publishes go out with sharded pub/sub (`SPUBLISH`).
    pub sharded: AtomicU64,
    /// Rounds of pub/sub connections started (the first, then one per reconnect or
    /// slot map change).
    pub listens: AtomicU64,
    /// `-MOVED` / `-ASK` redirections of a Redis Cluster followed.
    pub redirects: Arc<AtomicU64>,
    /// Cluster-wide limits: leases asked of Redis, refused (the cluster was at the
    /// limit), and answered without Redis (unreachable).
    pub lease_requests: AtomicU64,
    pub lease_refused: AtomicU64,
    pub lease_unavailable: AtomicU64,
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
            let own_waker = inbox.waker();
            let mut at = Deployment::from_config(
                &config.redis,
                RedisOptions {
                    host: config.redis.host.clone(),
                    port: config.redis.port,
                    username: config.redis.username.clone(),
                    password: config.redis.password.clone(),
                    db: config.redis.db,
                    connect_timeout: Duration::from_secs(2),
                    sentinels: super::sentinel::Sentinels::from_config(&config.redis),
                },
            );
            at.redirects = Arc::clone(&stats.redirects);
            let bridge = Rc::new(Bridge {
                at,
                sharded: Cell::new(false),
                registered: RefCell::new(AHashSet::new()),
                reclaim_asked: RefCell::new(Vec::new()),
                reclaim_done: RefCell::new(Vec::new()),
                full: RefCell::new(AHashMap::new()),
                debug: config.debug,
                limits_offline: Cell::new(false),
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
                interest_routing: config.redis.interest,
                cache_ttl: config.cache_ttl,
                interest: interest::Interest::default(),
                pending_ready: RefCell::new(Vec::new()),
                sub_generation: Cell::new(0),
                own_waker,
                vacate_delay: config.webhook_vacate_delay,
                features: features::Features::default(),
            });
            let run = move || async move {
                if let Some(sentinels) = bridge.at.opts.sentinels.clone() {
                    let waker = bridge.own_waker.clone();
                    monoio::spawn(super::sentinel::watch(sentinels, move || waker.poke()));
                }
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
    /// Where Redis is: one server, its sentinels, or a cluster's seed nodes.
    at: Deployment,
    /// Publishes go out with `SPUBLISH` (sharded pub/sub), as of the last connect.
    sharded: Cell<bool>,
    /// Apps recorded in this node's `node_apps` set since the last connect.
    registered: RefCell<AHashSet<AppIdx>>,
    /// Apps whose unused connection slots other nodes asked for (cluster-wide quota).
    reclaim_asked: RefCell<Vec<AppIdx>>,
    /// Apps for which another node answered this node's reclaim.
    reclaim_done: RefCell<Vec<AppIdx>>,
    /// Apps found at their cluster-wide connection quota after a reclaim, and when.
    full: RefCell<AHashMap<AppIdx, Instant>>,
    /// `SOKETI_DEBUG`: log each lease decision.
    debug: bool,
    /// A lease was answered without Redis since the last connect (logged once).
    limits_offline: Cell<bool>,
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
    /// Publish each channel's events on a pub/sub channel of its own, listened to only by
    /// nodes with subscribers (`CORECAST_REDIS_INTEREST`).
    interest_routing: bool,
    /// How long Redis keeps a cache channel's last event.
    cache_ttl: Duration,
    /// Which channels this node listens to in Redis.
    interest: interest::Interest,
    /// Shards whose interest can be confirmed at once: `(app, channel, shards)`.
    pending_ready: RefCell<Vec<interest::Ready>>,
    /// Bumped when the pub/sub connection is replaced, to end the old writer.
    sub_generation: Cell<u64>,
    /// Wakes the command loop (a confirmation arrived on the pub/sub connection).
    own_waker: InboxWaker,
    /// `CORECAST_WEBHOOK_VACATE_DELAY_MS`: the grace of vacate webhooks, kept in Redis.
    vacate_delay: Duration,
    /// Subscription counts of other nodes, and webhooks waiting out their grace.
    features: features::Features,
}

/// A resync in progress: rosters and counts collected from the shards.
#[derive(Default)]
struct Resync {
    waiting: usize,
    deadline: Option<Instant>,
    members: Vec<RosterEntry>,
    channels: Vec<(AppIdx, Arc<str>, u64)>,
    /// Pub/sub subscribers the resync waits for before it announces anything: this node
    /// and the nodes alive before the reconnect. Pub/sub keeps nothing for a node that
    /// is not subscribed yet, so a leaver announced before the other nodes are back
    /// would never reach their clients.
    listeners: usize,
    /// When to stop waiting for them (a node that does not come back is dead).
    listen_deadline: Option<Instant>,
    /// When to count the subscribers again.
    next_count: Option<Instant>,
}

/// How often a pending resync counts the broadcast channel's subscribers.
const LISTENER_POLL: Duration = Duration::from_millis(100);

impl Resync {
    /// Every shard has answered, or the wait for them is over.
    fn dumped(&self) -> bool {
        self.waiting == 0 || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

impl Bridge {
    fn to_shard(&self, shard: usize, envelope: Envelope) {
        if self.outbox.borrow_mut().push(shard, envelope).is_err() {
            bump(&self.stats.dropped, 1);
        }
    }

    fn to_all_shards(&self, make: impl Fn() -> Envelope) {
        let full = self.outbox.borrow_mut().push_all(make);
        bump(&self.stats.ring_dropped, full);
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
        self.apps.id(app)
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
        let command: &'static [u8] = if self.sharded.get() {
            b"SPUBLISH"
        } else {
            b"PUBLISH"
        };
        vec![
            Bytes::from_static(command),
            Bytes::from(self.destination(message)),
            message.encode(),
        ]
    }
}

/// Takes envelopes from the shards and talks to Redis; reconnects with backoff.
async fn command_loop(bridge: Rc<Bridge>, mut inbox: Inbox) {
    let mut conn: Option<Link> = None;
    let mut said_classic = false;
    let mut backoff = Backoff::new(Duration::from_secs(5));
    let mut retry_at = Instant::now();
    let mut next_beat = Instant::now();
    let mut resync: Option<Resync> = None;
    let mut deltas: AHashMap<(AppIdx, Arc<str>), i64> = AHashMap::new();
    let mut was_up = false;
    let mut last_failure: Option<String> = None;
    let mut bell = crate::fanout::Bell::default();
    let mut reclaiming: Vec<limits::Reclaiming> = Vec::new();
    loop {
        let mut wake = next_beat.min(retry_at);
        if let Some(due) = bridge.features.next_due() {
            wake = wake.min(due);
        }
        let mut wake = wake.max(Instant::now());
        if let Some(first) = reclaiming.iter().map(|r| r.deadline).min() {
            wake = wake.min(first.max(Instant::now()));
        }
        if let Some(r) = &resync
            && r.dumped()
        {
            wake = wake.min(Instant::now() + LISTENER_POLL);
        }
        let _ = monoio::time::timeout(wake - Instant::now(), inbox.ready(&mut bell)).await;
        if conn.as_ref().is_some_and(Link::moved) {
            // The sentinels switched masters: move before the next write goes astray.
            eprintln!("corecast: redis master moved; reconnecting");
            conn = None;
            was_up = false;
            retry_at = Instant::now();
        }
        if conn.is_none() && Instant::now() >= retry_at {
            match Link::connect(&bridge.at).await {
                Ok(c) => {
                    eprintln!("corecast: redis connected at {}", c.server());
                    bridge.sharded.set(c.sharded());
                    bridge.limits_offline.set(false);
                    bridge
                        .stats
                        .sharded
                        .store(u64::from(c.sharded()), Ordering::Relaxed);
                    bridge.registered.borrow_mut().clear();
                    if bridge.at.wants_sharded() && !c.sharded() && !said_classic {
                        eprintln!(
                            "corecast: redis has no sharded pub/sub (SSUBSCRIBE needs Redis 7); \
                             using classic pub/sub, which a cluster sends to every one of its nodes"
                        );
                        said_classic = true;
                    }
                    conn = Some(c);
                    backoff.reset();
                    bump(&bridge.stats.connects, 1);
                    was_up = true;
                    last_failure = None;
                    // Ask every shard for its rosters and counts to rebuild what Redis
                    // may have lost.
                    bridge.to_all_shards(|| Envelope::RosterDump);
                    resync = Some(Resync {
                        waiting: bridge.shards,
                        deadline: Some(Instant::now() + Duration::from_secs(2)),
                        listeners: bridge.alive.borrow().len() + 1,
                        listen_deadline: Some(Instant::now() + NODE_TIMEOUT),
                        ..Resync::default()
                    });
                    deltas.clear();
                }
                Err(e) => {
                    // Once per change of cause (from start-up on), not once per retry.
                    let why = e.to_string();
                    if was_up || last_failure.as_ref() != Some(&why) {
                        eprintln!("corecast: redis unreachable ({why}); retrying with backoff");
                        last_failure = Some(why);
                    }
                    was_up = false;
                    retry_at = Instant::now() + backoff.next_delay();
                }
            }
        }
        bridge.stats.up.store(
            u64::from(conn.is_some() && bridge.sub_up.get()),
            Ordering::Relaxed,
        );
        let mut batch = Vec::new();
        inbox.drain_ordered(BATCH, &mut batch);
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
                (
                    _,
                    Envelope::Interest {
                        app,
                        channel,
                        from,
                        on,
                    },
                ) => bridge.interest(app, channel, from, on),
                (None, e) => offline(&bridge, e),
                (Some(c), e) => {
                    if let Err(err) = online(&bridge, c, e, &mut cmds, &mut reclaiming).await {
                        eprintln!("corecast: redis command failed ({err}); reconnecting");
                        conn = None;
                        was_up = false;
                        retry_at = Instant::now();
                    }
                }
            }
        }
        bridge.answer_confirmed(conn.as_mut()).await;
        if features::release_due(&bridge, conn.as_mut()).await.is_err() {
            eprintln!("corecast: redis command failed; reconnecting");
            conn = None;
            was_up = false;
            retry_at = Instant::now();
        }
        for app in bridge.reclaim_done.borrow_mut().drain(..) {
            limits::answered(&mut reclaiming, app);
        }
        if conn.is_none() {
            for r in reclaiming.drain(..) {
                offline(
                    &bridge,
                    Envelope::Lease {
                        from: r.from(),
                        id: r.id(),
                        app: r.app(),
                        kind: crate::fanout::LeaseKind::Connections,
                        need: 0,
                    },
                );
            }
            bridge.reclaim_asked.borrow_mut().clear();
        }
        if let Some(c) = conn.as_mut() {
            let asked = std::mem::take(&mut *bridge.reclaim_asked.borrow_mut());
            let mut failed_limits =
                !asked.is_empty() && limits::give_back(&bridge, c, asked).await.is_err();
            if !failed_limits && !reclaiming.is_empty() {
                failed_limits = limits::retry_due(&bridge, c, &mut reclaiming)
                    .await
                    .is_err();
            }
            if failed_limits {
                eprintln!("corecast: redis connection lost; reconnecting");
                conn = None;
                was_up = false;
                retry_at = Instant::now();
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
            let mut failed = flush(&bridge, c, &mut cmds).await.is_err();
            if !failed
                && let Some(r) = resync.as_mut()
                && r.dumped()
                && r.next_count.is_none_or(|at| Instant::now() >= at)
            {
                match listening(&bridge, c, r).await {
                    Ok(true) => {
                        if let Some(r) = resync.take() {
                            failed = apply_resync(&bridge, c, r).await.is_err()
                                || limits::restore(&bridge, c).await.is_err();
                        }
                    }
                    Ok(false) => r.next_count = Some(Instant::now() + LISTENER_POLL),
                    Err(_) => failed = true,
                }
            }
            if !failed && Instant::now() >= next_beat {
                failed = heartbeat(&bridge, c).await.is_err()
                    || limits::return_unused(&bridge, c).await.is_err();
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

/// Whether the nodes a resync waits for are subscribed to the broadcast channel (or the
/// wait is over).
async fn listening(bridge: &Bridge, conn: &mut Link, resync: &Resync) -> Result<bool, RedisError> {
    let subscribed = conn.numsub(bridge.keys.broadcast.as_bytes()).await?;
    if subscribed >= resync.listeners {
        return Ok(true);
    }
    if resync.listen_deadline.is_some_and(|d| Instant::now() >= d) {
        eprintln!(
            "corecast: redis resync goes on with {subscribed} of {} nodes listening",
            resync.listeners
        );
        return Ok(true);
    }
    Ok(false)
}

/// Sends the queued simple commands in one pipeline.
async fn flush(
    bridge: &Bridge,
    conn: &mut Link,
    cmds: &mut Vec<Vec<Bytes>>,
) -> Result<(), RedisError> {
    if cmds.is_empty() {
        return Ok(());
    }
    let n = cmds
        .iter()
        .filter(|c| matches!(c[0].as_ref(), b"PUBLISH" | b"SPUBLISH"))
        .count() as u64;
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
        Envelope::Lease { from, id, .. } => limits::lease_offline(bridge, from, id),
        _ => {}
    }
}

/// Redis is up: act on one envelope. Simple commands are queued in `cmds` (sent in one
/// pipeline); those whose replies matter flush the queue first to keep order.
async fn online(
    bridge: &Bridge,
    conn: &mut Link,
    envelope: Envelope,
    cmds: &mut Vec<Vec<Bytes>>,
    reclaiming: &mut Vec<limits::Reclaiming>,
) -> Result<(), RedisError> {
    match envelope {
        Envelope::Publish {
            app,
            channel,
            frame,
            except,
            cache,
            ..
        } => {
            if cache && bridge.interest_routing {
                // Nodes that start listening later read it from here.
                let ttl = bridge.cache_ttl.as_millis().max(1).to_string();
                cmds.push(vec![
                    Bytes::from_static(b"SET"),
                    Bytes::from(bridge.keys.cache(bridge.app_id(app), &channel)),
                    frame.clone(),
                    Bytes::from_static(b"PX"),
                    Bytes::from(ttl),
                ]);
            }
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
        Envelope::Lease {
            from,
            id,
            app,
            kind,
            need,
        } => {
            flush(bridge, conn, cmds).await?;
            let pending = Some(&reclaiming[..]);
            match limits::lease(bridge, conn, (from, id, app), kind, need, pending).await {
                Ok(Some(waiting)) => reclaiming.push(waiting),
                Ok(None) => {}
                Err(e) => {
                    // The shard is waiting: answer as if Redis were down.
                    limits::lease_offline(bridge, from, id);
                    return Err(e);
                }
            }
        }
        Envelope::NodeCount {
            app,
            channel,
            count,
        } => {
            // Replies matter when the other nodes' counts are read: queued commands
            // go first.
            flush(bridge, conn, cmds).await?;
            features::node_count(bridge, conn, app, channel, count, cmds).await?;
        }
        Envelope::NodeUser {
            app,
            user_id,
            online,
        } => {
            flush(bridge, conn, cmds).await?;
            features::node_user(bridge, conn, (bridge.node, app), user_id, online, cmds).await?;
        }
        Envelope::WatchQuery {
            app,
            users,
            from,
            socket,
        } => {
            flush(bridge, conn, cmds).await?;
            features::watch_query(bridge, conn, app, users, from, socket).await?;
        }
        _ => {}
    }
    Ok(())
}
