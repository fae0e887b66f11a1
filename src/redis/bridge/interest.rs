//! Interest routing: a node listens in Redis only to the channels it has subscribers for.
//!
//! Every Pusher channel has a pub/sub channel of its own ([`Keys::topic`]). A shard tells
//! the bridge when it gets its first local subscriber of a channel and when it loses its
//! last ([`Envelope::Interest`]); the bridge keeps the node's count per channel and
//! `SUBSCRIBE`s while it is above zero. A shard holds the subscription confirmation of a
//! channel new to it until the bridge answers [`Envelope::InterestReady`], which it does
//! once Redis has confirmed the `SUBSCRIBE`: so an event published anywhere after a client
//! saw `subscription_succeeded` reaches it. Cache channels keep their last event in Redis
//! as well, for nodes that start listening later.
//!
//! Per channel, the `SUBSCRIBE`s and `UNSUBSCRIBE`s sent and not yet confirmed are kept in
//! order, so a quick leave and rejoin is answered only once Redis is in the final state.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::Poll;

use super::*;
use crate::protocol::is_cache_channel;

/// Shards to tell that `channel` of `app` is listened to: `(app, channel, shards)`.
pub(super) type Ready = (AppIdx, Arc<str>, Vec<usize>);

/// One Pusher channel this node listens to, or stops listening to, in Redis.
#[derive(Debug)]
pub(super) struct Topic {
    app: AppIdx,
    channel: Arc<str>,
    /// Local shards with subscribers of the channel.
    shards: u32,
    /// Subscribed in Redis, as of the last confirmation.
    in_redis: bool,
    /// Commands sent and not confirmed yet: true `SUBSCRIBE`, false `UNSUBSCRIBE`.
    outstanding: VecDeque<bool>,
    /// Shards waiting for [`Envelope::InterestReady`].
    waiting: Vec<usize>,
}

/// The bridge's interest state, shared by its command loop and its pub/sub tasks.
#[derive(Debug, Default)]
pub(super) struct Interest {
    pub(super) topics: RefCell<AHashMap<String, Topic>>,
    /// `(subscribe, topic)` commands for the pub/sub writer, in order.
    commands: RefCell<Vec<(bool, String)>>,
    writer_waker: RefCell<Option<std::task::Waker>>,
    /// Topics whose `SUBSCRIBE` Redis confirmed: the command loop answers their waiters.
    confirmed: RefCell<Vec<String>>,
    /// The pub/sub readers of the current round, woken when it ends (by connection).
    pub(super) reader_wakers: RefCell<AHashMap<usize, std::task::Waker>>,
}

impl Interest {
    fn send(&self, subscribe: bool, topic: &str) {
        self.commands
            .borrow_mut()
            .push((subscribe, topic.to_owned()));
        if let Some(w) = self.writer_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Sends the command that moves `topic` towards its wanted state, if needed.
    fn steer(&self, topic: &str, t: &mut Topic) {
        let wanted = t.shards > 0;
        let heading = t.outstanding.back().copied().unwrap_or(t.in_redis);
        if wanted != heading {
            t.outstanding.push_back(wanted);
            self.send(wanted, topic);
        }
    }

    /// Before (re)subscribing a new pub/sub connection: Redis listens to nothing on it,
    /// so every wanted topic is to be subscribed (in the same command as the broadcast
    /// channel, before it: a node counted on the broadcast channel listens to its topics).
    pub(super) fn reset_for_reconnect(&self) -> Vec<String> {
        let mut topics = self.topics.borrow_mut();
        topics.retain(|_, t| t.shards > 0);
        self.commands.borrow_mut().clear();
        topics
            .iter_mut()
            .map(|(name, t)| {
                t.in_redis = false;
                t.outstanding.clear();
                t.outstanding.push_back(true);
                name.clone()
            })
            .collect()
    }

    /// The `SUBSCRIBE` of a new connection confirmed `names`.
    pub(super) fn subscribed_all(&self, names: &[String]) {
        for name in names {
            self.confirm(name.as_bytes(), true);
        }
    }

    /// Redis confirmed a `SUBSCRIBE` (`true`) or `UNSUBSCRIBE` of `topic`. Returns
    /// false when that is not what this node asked for last (Redis unsubscribed a topic
    /// unasked: its slot moved to another master).
    pub(super) fn confirm(&self, topic: &[u8], subscribed: bool) -> bool {
        let Ok(name) = std::str::from_utf8(topic) else {
            return true;
        };
        let mut topics = self.topics.borrow_mut();
        let Some(t) = topics.get_mut(name) else {
            return true;
        };
        if t.outstanding.front() != Some(&subscribed) {
            return false;
        }
        t.outstanding.pop_front();
        t.in_redis = subscribed;
        if t.outstanding.is_empty() {
            if subscribed && t.shards > 0 {
                self.confirmed.borrow_mut().push(name.to_owned());
            } else if !subscribed && t.shards == 0 {
                topics.remove(name);
            }
        }
        true
    }
}

impl Bridge {
    /// A shard's first local subscriber of `channel` (`on`), or its last leaving.
    pub(super) fn interest(&self, app: AppIdx, channel: Arc<str>, from: usize, on: bool) {
        let name = self.keys.topic(self.app_id(app), &channel);
        let mut topics = self.interest.topics.borrow_mut();
        let t = topics.entry(name.clone()).or_insert_with(|| Topic {
            app,
            channel: Arc::clone(&channel),
            shards: 0,
            in_redis: false,
            outstanding: VecDeque::new(),
            waiting: Vec::new(),
        });
        if on {
            t.shards += 1;
            let settled = t.in_redis && t.outstanding.is_empty();
            if settled || !self.sub_up.get() {
                // Listening already, or Redis is away (the subscribe after reconnecting
                // covers it): the subscription may be confirmed now.
                self.pending_ready
                    .borrow_mut()
                    .push((app, Arc::clone(&channel), vec![from]));
            } else {
                t.waiting.push(from);
            }
        } else {
            t.shards = t.shards.saturating_sub(1);
        }
        self.interest.steer(&name, t);
    }

    /// The waiters of every topic Redis confirmed, with their cache channels' last
    /// events read from Redis (when it answers).
    pub(super) async fn answer_confirmed(&self, mut conn: Option<&mut Link>) {
        let names = std::mem::take(&mut *self.interest.confirmed.borrow_mut());
        let mut ready = std::mem::take(&mut *self.pending_ready.borrow_mut());
        for name in names {
            let mut topics = self.interest.topics.borrow_mut();
            if let Some(t) = topics.get_mut(&name)
                && !t.waiting.is_empty()
            {
                ready.push((
                    t.app,
                    Arc::clone(&t.channel),
                    std::mem::take(&mut t.waiting),
                ));
            }
        }
        for (app, channel, shards) in ready {
            let mut last = None;
            if is_cache_channel(&channel)
                && let Some(c) = conn.as_deref_mut()
            {
                let key = self.keys.cache(self.app_id(app), &channel);
                if let Ok(Reply::Bulk(frame)) = c.call(&[b"GET", key.as_bytes()]).await {
                    last = Some(frame);
                }
            }
            for shard in shards {
                self.to_shard(
                    shard,
                    Envelope::InterestReady {
                        app,
                        channel: Arc::clone(&channel),
                        last: last.clone(),
                    },
                );
            }
        }
    }

    /// The command publishing `message` on the broadcast channel, whatever the routing.
    pub(super) fn broadcast_cmd(&self, message: &Message) -> Vec<Bytes> {
        let command: &'static [u8] = if self.sharded.get() {
            b"SPUBLISH"
        } else {
            b"PUBLISH"
        };
        vec![
            Bytes::from_static(command),
            Bytes::from(self.keys.broadcast.clone()),
            message.encode(),
        ]
    }

    /// The pub/sub channel a message goes to: its channel's topic with interest routing,
    /// else (and for user channels and terminations) the broadcast channel.
    pub(super) fn destination(&self, message: &Message) -> String {
        match message {
            Message::Publish {
                app_id, channel, ..
            } if self.interest_routing && !channel.starts_with('#') => {
                self.keys.topic(app_id, channel)
            }
            _ => self.keys.broadcast.clone(),
        }
    }
}

/// Sends the interest commands on the pub/sub connection until it is replaced
/// (`generation` changes) or fails.
pub(super) async fn writer_loop(
    bridge: Rc<Bridge>,
    mut writers: Vec<super::super::client::SubWriter>,
    plan: Rc<super::inbound::Plan>,
    generation: u64,
) {
    loop {
        let batch = poll_fn(|cx| {
            if bridge.sub_generation.get() != generation {
                return Poll::Ready(None);
            }
            let commands = std::mem::take(&mut *bridge.interest.commands.borrow_mut());
            if commands.is_empty() {
                *bridge.interest.writer_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(Some(commands))
            }
        })
        .await;
        let Some(batch) = batch else { return };
        // Consecutive commands of one kind for one connection (and, with sharded
        // pub/sub, one slot) go in one request, keeping the order.
        let mut start = 0;
        while start < batch.len() {
            let (kind, first) = (batch[start].0, batch[start].1.as_bytes());
            let target = plan.target_of(first);
            let end = batch[start..]
                .iter()
                .position(|(k, n)| {
                    *k != kind
                        || plan.target_of(n.as_bytes()) != target
                        || !plan.same_command(first, n.as_bytes())
                })
                .map_or(batch.len(), |n| start + n);
            let names: Vec<&[u8]> = batch[start..end]
                .iter()
                .map(|(_, n)| n.as_bytes())
                .collect();
            let command = plan.command(kind);
            if writers[target].send(command, &names).await.is_err() {
                return;
            }
            start = end;
        }
    }
}

/// Ends the round of pub/sub connections: wakes its writer and its readers so they end.
pub(super) fn retire_writer(bridge: &Bridge) {
    bridge.sub_generation.set(bridge.sub_generation.get() + 1);
    if let Some(w) = bridge.interest.writer_waker.borrow_mut().take() {
        w.wake();
    }
    for (_, w) in bridge.interest.reader_wakers.borrow_mut().drain() {
        w.wake();
    }
}
