//! The pub/sub side: other nodes' messages handed to every local shard.
//!
//! One round of listening ([`listen`]) opens the pub/sub connections, subscribes the
//! node's topics and the broadcast channel, then reads until a connection fails. On one
//! server that is one connection. In a Redis Cluster with sharded pub/sub it is one
//! connection per master, each channel subscribed (`SSUBSCRIBE`, one command per hash
//! slot) on the master owning its slot; a slot moving away (Redis then unsubscribes its
//! channels unasked) or any connection failing ends the round, and the next one reads the
//! slot map again. In a cluster without sharded pub/sub one connection to any master
//! hears everything (classic `PUBLISH` reaches every node of a cluster).

use std::future::poll_fn;
use std::task::Poll;

use super::*;
use crate::redis::client::{Connection, SubReader};
use crate::redis::cluster::{self, Topology};
use crate::redis::resp::PushEvent;

/// The pub/sub connections of one round and how channels map onto them.
pub(super) struct Plan {
    /// Where each connection goes.
    targets: Vec<RedisOptions>,
    /// The slot map, with sharded pub/sub over a cluster's masters.
    topology: Option<Topology>,
    /// `SSUBSCRIBE` / `SUNSUBSCRIBE` instead of `SUBSCRIBE` / `UNSUBSCRIBE`.
    pub(super) sharded: bool,
}

impl Plan {
    async fn make(bridge: &Bridge) -> Result<Plan, RedisError> {
        let opts = &bridge.at.opts;
        let Some(seeds) = &bridge.at.cluster else {
            let sharded = if bridge.at.shard_mode {
                let mut conn = Connection::connect(opts).await?;
                cluster::has_sharded_pubsub(&mut conn).await?
            } else {
                false
            };
            return Ok(Plan {
                targets: vec![opts.clone()],
                topology: None,
                sharded,
            });
        };
        let topology = cluster::discover(opts, seeds).await?;
        let mut targets: Vec<RedisOptions> = topology
            .masters
            .iter()
            .map(|(host, port)| RedisOptions {
                host: host.clone(),
                port: *port,
                sentinels: None,
                db: 0,
                ..opts.clone()
            })
            .collect();
        if topology.sharded {
            return Ok(Plan {
                targets,
                topology: Some(topology),
                sharded: true,
            });
        }
        targets.truncate(1);
        Ok(Plan {
            targets,
            topology: None,
            sharded: false,
        })
    }

    /// The connection `channel` is subscribed on.
    pub(super) fn target_of(&self, channel: &[u8]) -> usize {
        self.topology.as_ref().map_or(0, |t| t.route(channel))
    }

    /// The command for (un)subscribing.
    pub(super) fn command(&self, subscribe: bool) -> &'static [u8] {
        match (self.sharded, subscribe) {
            (true, true) => b"SSUBSCRIBE",
            (true, false) => b"SUNSUBSCRIBE",
            (false, true) => b"SUBSCRIBE",
            (false, false) => b"UNSUBSCRIBE",
        }
    }

    /// Whether `a` and `b` may share one (un)subscribe command: sharded pub/sub takes
    /// the channels of one hash slot per command.
    pub(super) fn same_command(&self, a: &[u8], b: &[u8]) -> bool {
        !self.sharded || cluster::slot(a) == cluster::slot(b)
    }
}

/// Listens to other nodes, round after round, with backoff between failed starts.
pub(super) async fn subscriber_loop(bridge: Rc<Bridge>) {
    let mut backoff = Backoff::new(Duration::from_secs(5));
    // The command connection reports Redis unreachable; this side only says when a
    // round that ran cannot start again.
    let mut was_up = false;
    loop {
        match listen(&bridge, &mut backoff).await {
            Ok(()) => {
                was_up = true;
                eprintln!("corecast: redis subscriber disconnected; reconnecting");
            }
            Err(e) => {
                if was_up {
                    eprintln!("corecast: redis subscriber lost ({e}); retrying with backoff");
                    was_up = false;
                }
                monoio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// One round: connect, subscribe, read until a connection ends. `Err` when the round
/// could not start.
async fn listen(bridge: &Rc<Bridge>, backoff: &mut Backoff) -> Result<(), RedisError> {
    let plan = Rc::new(Plan::make(bridge).await?);
    let mut subs = Vec::with_capacity(plan.targets.len());
    for opts in &plan.targets {
        subs.push(Subscriber::connect(opts).await?);
    }
    let topics = bridge.interest.reset_for_reconnect();
    let broadcast = bridge.keys.broadcast.as_bytes();
    let home = plan.target_of(broadcast);
    let subscribe = plan.command(true);
    // Topics first, the broadcast channel last: a node counted on the broadcast channel
    // listens to its topics.
    let mut order: Vec<usize> = (0..subs.len()).filter(|&i| i != home).collect();
    order.push(home);
    for i in order {
        let mut mine: Vec<&[u8]> = topics
            .iter()
            .map(|t| t.as_bytes())
            .filter(|t| plan.target_of(t) == i)
            .collect();
        mine.sort_by_key(|t| cluster::slot(t));
        let mut groups: Vec<&[&[u8]]> = mine.chunk_by(|a, b| plan.same_command(a, b)).collect();
        let last = [broadcast];
        if i == home {
            groups.push(&last);
        }
        subs[i].subscribe_groups(subscribe, &groups).await?;
    }
    bridge.interest.subscribed_all(&topics);
    bump(&bridge.stats.listens, 1);
    bridge.own_waker.poke();
    backoff.reset();
    // Reading goes on in one task per connection; (un)subscribing for interest routing
    // is written by a task of its own, and Redis confirms each change on the read side.
    let generation = bridge.sub_generation.get();
    let mut readers = Vec::with_capacity(subs.len());
    let mut writers = Vec::with_capacity(subs.len());
    for sub in subs {
        let (reader, writer) = sub.split();
        readers.push(reader);
        writers.push(writer);
    }
    monoio::spawn(super::interest::writer_loop(
        Rc::clone(bridge),
        writers,
        Rc::clone(&plan),
        generation,
    ));
    bridge.sub_up.set(true);
    let mut readers = readers.into_iter().enumerate();
    let (_, first) = readers.next().expect("a plan has at least one target");
    for (i, reader) in readers {
        let (bridge, plan) = (Rc::clone(bridge), Rc::clone(&plan));
        monoio::spawn(async move { read_loop(&bridge, &plan, reader, generation, i).await });
    }
    read_loop(bridge, &plan, first, generation, 0).await;
    Ok(())
}

/// Reads one connection until it fails, Redis unsubscribes it unasked, or another
/// connection of the round ended; then ends the round for all.
async fn read_loop(bridge: &Bridge, plan: &Plan, mut reader: SubReader, generation: u64, i: usize) {
    loop {
        let event = monoio::select! {
            event = reader.next_event() => event,
            () = retired(bridge, generation, i) => return,
        };
        let Ok(event) = event else { break };
        let payload = match event {
            PushEvent::Message { payload, .. } => payload,
            PushEvent::Subscribed { channel, .. } => {
                bridge.interest.confirm(&channel, true);
                bridge.own_waker.poke();
                continue;
            }
            PushEvent::Unsubscribed { channel, .. } => {
                let asked = channel != bridge.keys.broadcast.as_bytes()
                    && bridge.interest.confirm(&channel, false);
                if !asked && plan.sharded {
                    // The slot moved to another master (or Redis dropped us): listen
                    // again from a fresh slot map.
                    break;
                }
                continue;
            }
            _ => continue,
        };
        let Ok(message) = Message::decode(&payload) else {
            continue;
        };
        if message.node() == bridge.node {
            continue;
        }
        bump(&bridge.stats.received, 1);
        bump(&bridge.stats.received_bytes, payload.len() as u64);
        dispatch(bridge, message).await;
    }
    if bridge.sub_generation.get() == generation {
        bridge.sub_up.set(false);
        super::interest::retire_writer(bridge);
    }
}

/// Resolves once the round `generation` is over.
async fn retired(bridge: &Bridge, generation: u64, i: usize) {
    poll_fn(|cx| {
        if bridge.sub_generation.get() != generation {
            return Poll::Ready(());
        }
        bridge
            .interest
            .reader_wakers
            .borrow_mut()
            .insert(i, cx.waker().clone());
        Poll::Pending
    })
    .await;
}

pub(super) async fn dispatch(bridge: &Bridge, message: Message) {
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
        Message::Reclaim { app_id, done, .. } => {
            let Some((app, _)) = bridge.apps.by_id(&app_id) else {
                return;
            };
            if done {
                bridge.reclaim_done.borrow_mut().push(app);
            } else {
                bridge.reclaim_asked.borrow_mut().push(app);
            }
            bridge.own_waker.poke();
        }
        Message::Count {
            node,
            app_id,
            channel,
            count,
        } => {
            let Some((app, _)) = bridge.apps.by_id(&app_id) else {
                return;
            };
            bridge.heard_count(node, app, Arc::from(channel), count);
        }
        Message::Online {
            app_id,
            user_id,
            online,
            ..
        } => {
            let Some((app, _)) = bridge.apps.by_id(&app_id) else {
                return;
            };
            let user: Arc<str> = Arc::from(user_id);
            bridge
                .to_all_shards_waiting(|| Envelope::UserOnline {
                    app,
                    user_id: Arc::clone(&user),
                    online,
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
