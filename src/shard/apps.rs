//! Finding a connection's or a request's app on a shard. A fixed app table (the array
//! manager) answers at once. With a database app manager the shard keeps its own cache of
//! answers; a key or id without a fresh answer is asked of the app-manager thread while the
//! task waits and the shard serves every other socket.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use ahash::AHashMap;

use super::Shard;
use crate::app::manager::{Outcome, Request, ShardClient, ToShard};
use crate::app::source::Lookup;
use crate::app::{AppIdx, AppRef};

/// Longest a task waits for the app manager (a database that hangs) before refusing.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(5);

/// Cache size past which expired answers are dropped (a flood of distinct wrong keys).
const CACHE_PRUNE_AT: usize = 8192;

/// A shard's cache of app lookups and the tasks waiting for answers.
#[derive(Debug)]
pub struct ShardApps {
    client: ShardClient,
    /// Answers by (is a key, key or id), until when they may be reused.
    cache: RefCell<AHashMap<(bool, String), (Outcome, Instant)>>,
    waiting: RefCell<AHashMap<u64, Waiting>>,
    next_ticket: Cell<u64>,
}

#[derive(Debug)]
struct Waiting {
    /// Where the answer is cached.
    key: (bool, String),
    answer: Option<Outcome>,
    waker: Option<Waker>,
}

impl ShardApps {
    #[must_use]
    pub fn new(client: ShardClient) -> Self {
        Self {
            client,
            cache: RefCell::new(AHashMap::new()),
            waiting: RefCell::new(AHashMap::new()),
            next_ticket: Cell::new(0),
        }
    }
}

fn cache_key(by: &Lookup) -> (bool, String) {
    match by {
        Lookup::Key(k) => (true, k.clone()),
        Lookup::Id(i) => (false, i.clone()),
    }
}

impl Shard {
    /// The app whose key is `key` (WebSocket connections).
    pub async fn app_by_key(&self, key: &str) -> Outcome {
        if self.apps.is_fixed() {
            return self
                .apps
                .by_key(key)
                .map_or(Outcome::Missing, |(idx, _)| Outcome::Found(idx));
        }
        self.resolve(Lookup::Key(key.to_owned())).await
    }

    /// The app whose id is `id` (REST requests), with its current row.
    pub async fn app_by_id(&self, id: &str) -> Result<(AppIdx, AppRef), Outcome> {
        if self.apps.is_fixed() {
            return self.apps.by_id(id).ok_or(Outcome::Missing);
        }
        match self.resolve(Lookup::Id(id.to_owned())).await {
            Outcome::Found(idx) => Ok((idx, self.apps.get(idx))),
            other => Err(other),
        }
    }

    /// The app whose id is `id`, from the fixed table or the shard's last answer.
    pub fn known_app_by_id(&self, id: &str) -> Result<(AppIdx, AppRef), Outcome> {
        if self.apps.is_fixed() {
            return self.apps.by_id(id).ok_or(Outcome::Missing);
        }
        let Some(apps) = &self.dynamic_apps else {
            return Err(Outcome::Missing);
        };
        let cached = apps
            .cache
            .borrow()
            .get(&(false, id.to_owned()))
            .map(|e| e.0);
        match cached {
            Some(Outcome::Found(idx)) if self.still_names(idx, &Lookup::Id(id.to_owned())) => {
                Ok((idx, self.apps.get(idx)))
            }
            Some(Outcome::Found(_)) | None => Err(Outcome::Missing),
            Some(other) => Err(other),
        }
    }

    /// Whether app `idx`'s current row still answers `by` (its key may have changed, or
    /// the row been deleted, since the answer was cached).
    fn still_names(&self, idx: AppIdx, by: &Lookup) -> bool {
        if self.apps.is_deleted(idx) {
            return false;
        }
        let row = self.apps.get(idx);
        match by {
            Lookup::Key(k) => row.key == *k,
            Lookup::Id(i) => row.id == *i,
        }
    }

    async fn resolve(&self, by: Lookup) -> Outcome {
        let Some(apps) = &self.dynamic_apps else {
            return Outcome::Missing;
        };
        let key = cache_key(&by);
        let cached = apps.cache.borrow().get(&key).copied();
        if let Some((outcome, until)) = cached
            && Instant::now() < until
            && match outcome {
                Outcome::Found(idx) => self.still_names(idx, &by),
                _ => true,
            }
        {
            return outcome;
        }
        let ticket = apps.next_ticket.get() + 1;
        apps.next_ticket.set(ticket);
        apps.waiting.borrow_mut().insert(
            ticket,
            Waiting {
                key,
                answer: None,
                waker: None,
            },
        );
        let request = Request {
            by,
            shard: self.id,
            ticket,
            at: Instant::now(),
        };
        if apps.client.requests.send(request).is_err() {
            apps.waiting.borrow_mut().remove(&ticket);
            return Outcome::Unavailable;
        }
        let answer = poll_fn(|cx| {
            let mut waiting = apps.waiting.borrow_mut();
            let Some(w) = waiting.get_mut(&ticket) else {
                return Poll::Ready(Outcome::Unavailable);
            };
            match w.answer.take() {
                Some(a) => Poll::Ready(a),
                None => {
                    w.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        });
        let outcome = monoio::time::timeout(LOOKUP_DEADLINE, answer)
            .await
            .unwrap_or(Outcome::Unavailable);
        apps.waiting.borrow_mut().remove(&ticket);
        if outcome == Outcome::Unavailable {
            self.metrics
                .inc(crate::metrics::Counter::AppLookupsRefused, 1);
        }
        outcome
    }

    /// Takes what the app manager delivered: answers wake their tasks (and are cached for
    /// as long as the manager allows), closes end a disabled or deleted app's sockets.
    /// The inbox loop calls it after every wake-up, then flushes.
    pub(super) fn take_app_messages(&self) {
        let Some(apps) = &self.dynamic_apps else {
            return;
        };
        for message in apps.client.mailbox.take() {
            match message {
                ToShard::Resolved {
                    ticket,
                    outcome,
                    fresh_for,
                } => {
                    let mut waiting = apps.waiting.borrow_mut();
                    let Some(w) = waiting.get_mut(&ticket) else {
                        continue;
                    };
                    w.answer = Some(outcome);
                    if let Some(waker) = w.waker.take() {
                        waker.wake();
                    }
                    if !fresh_for.is_zero() {
                        let now = Instant::now();
                        let mut cache = apps.cache.borrow_mut();
                        if cache.len() >= CACHE_PRUNE_AT {
                            cache.retain(|_, (_, until)| *until > now);
                        }
                        cache.insert(w.key.clone(), (outcome, now + fresh_for));
                    }
                }
                ToShard::Close { app, code } => {
                    apps.cache
                        .borrow_mut()
                        .retain(|_, (o, _)| *o != Outcome::Found(app));
                    let keys: Vec<_> = self
                        .conns
                        .borrow()
                        .iter()
                        .filter(|(_, c)| c.app == app && c.closing.is_none())
                        .map(|(k, _)| k)
                        .collect();
                    for key in keys {
                        self.begin_close(key, code.code(), Some(code));
                    }
                }
            }
        }
    }
}
