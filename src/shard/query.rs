//! Scatter-gather reads: a REST read asks every shard for its part through the rings and
//! merges the replies, waiting at most [`QUERY_DEADLINE`] (with the redis adapter,
//! `SOKETI_ADAPTER_REDIS_REQUESTS_TIMEOUT` for the cluster's part); a part that does not answer in
//! time is left out rather than waited on.

use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use ahash::AHashMap;

use super::Shard;
use crate::app::AppIdx;
use crate::fanout::{ChannelPart, Envelope, Query, QueryReply};

/// How long a read waits for the other shards.
pub const QUERY_DEADLINE: Duration = Duration::from_secs(2);

/// Channel facts merged over every shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelFacts {
    /// Sockets subscribed, over all shards.
    pub subscriptions: u64,
    /// Presence members, from the channel's home shard.
    pub users: Option<Vec<Arc<str>>>,
}

/// A read waiting for replies.
pub(super) struct Pending {
    remaining: usize,
    merged: AHashMap<Arc<str>, ChannelFacts>,
    waker: Option<Waker>,
}

impl Pending {
    fn merge(&mut self, reply: QueryReply) {
        for part in reply.channels {
            let facts = self.merged.entry(part.name).or_default();
            facts.subscriptions += part.subscriptions;
            if part.users.is_some() {
                facts.users = part.users;
            }
        }
    }
}

impl Shard {
    /// Asks every shard `query` for `app` and returns the merged facts per channel.
    pub async fn gather(
        self: &Rc<Self>,
        app: AppIdx,
        query: Query,
    ) -> AHashMap<Arc<str>, ChannelFacts> {
        let mut pending = Pending {
            remaining: 0,
            merged: AHashMap::new(),
            waker: None,
        };
        pending.merge(self.answer(app, &query));
        let id = self.next_serial.get() + 1;
        self.next_serial.set(id);
        self.queries.borrow_mut().insert(id, pending);
        let mut asked = 0;
        for to in (0..self.shards)
            .filter(|&s| s != self.id)
            .chain(self.bridge)
        {
            let envelope = Envelope::Query {
                from: self.id,
                id,
                app,
                query: query.clone(),
            };
            if self.outbox.borrow_mut().push(to, envelope).is_ok() {
                asked += 1;
            }
        }
        if let Some(p) = self.queries.borrow_mut().get_mut(&id) {
            p.remaining = asked;
        }
        let wait = poll_fn(|cx| {
            let mut queries = self.queries.borrow_mut();
            match queries.get_mut(&id) {
                Some(p) if p.remaining > 0 => {
                    p.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            }
        });
        let deadline = match self.bridge {
            Some(_) => self.config.redis.requests_timeout,
            None => QUERY_DEADLINE,
        };
        let _ = monoio::time::timeout(deadline, wait).await;
        self.queries
            .borrow_mut()
            .remove(&id)
            .map(|p| p.merged)
            .unwrap_or_default()
    }

    /// This shard's part of `query`.
    pub(super) fn answer(&self, app: AppIdx, query: &Query) -> QueryReply {
        let registry = self.registry.borrow();
        let rosters = self.rosters.borrow();
        let users = |name: &str| {
            // With the redis adapter the cluster roster comes from the bridge.
            (self.bridge.is_none() && self.home_of(app, name) == self.id)
                .then(|| {
                    rosters
                        .get(app, name)
                        .map(|r| r.ids().map(Arc::from).collect())
                })
                .flatten()
        };
        let mut channels = Vec::new();
        match query {
            Query::Channels { prefix } => {
                for (name, subs) in registry.channels(app) {
                    if name.starts_with(&**prefix) && !name.starts_with('#') {
                        channels.push(ChannelPart {
                            name: Arc::from(name),
                            subscriptions: subs as u64,
                            users: users(name),
                        });
                    }
                }
                // Rosters this shard keeps for channels it has no local subscriber on.
                for (name, roster) in rosters.channels(app) {
                    if self.bridge.is_none()
                        && name.starts_with(&**prefix)
                        && registry.subscribers(app, name).is_none()
                    {
                        channels.push(ChannelPart {
                            name: Arc::from(name),
                            subscriptions: 0,
                            users: Some(roster.ids().map(Arc::from).collect()),
                        });
                    }
                }
            }
            Query::Channel { name } => {
                let subs = registry
                    .subscribers(app, name)
                    .map_or(0, |s| s.len() as u64);
                channels.push(ChannelPart {
                    name: Arc::clone(name),
                    subscriptions: subs,
                    users: users(name),
                });
            }
        }
        QueryReply { channels }
    }

    /// Merges another shard's reply and wakes the read when it was the last.
    pub(super) fn on_reply(&self, id: u64, reply: QueryReply) {
        let mut queries = self.queries.borrow_mut();
        let Some(p) = queries.get_mut(&id) else {
            return;
        };
        p.merge(reply);
        p.remaining = p.remaining.saturating_sub(1);
        if p.remaining == 0
            && let Some(w) = p.waker.take()
        {
            w.wake();
        }
    }
}
