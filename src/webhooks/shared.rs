//! What the shard handles and the sender thread share: the queue's wake-up, the stop
//! request, and the counters behind [`WebhookStats`]. Lock-free: atomics and a `OnceLock`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use atomic_waker::AtomicWaker;

use super::route::Routes;
use super::{AppHooks, Event, WebhookStats};

/// What the handles queue for the sender, handled in queue order.
pub enum Job {
    /// One event, as a shard hands it over, with the routes it was counted under: the
    /// sender routes it through the same ones, so the copies it resolves are the copies
    /// added to `queued`, whatever changed since.
    Event {
        app: usize,
        event: Event,
        routes: Arc<Routes>,
        /// Whether the vacate grace applies (it does not to events the redis bridge
        /// already held in its own, cluster-wide grace).
        graced: bool,
    },
    /// Webhooks given the indexes `first..first + app.hooks.len()`. Queued before the
    /// routes naming them are published, so it reaches the sender before any event
    /// routed to them.
    Define { first: usize, app: AppHooks },
}

/// What the shards and the sender thread share: the wake-up, the stop request, counters.
#[derive(Debug, Default)]
pub struct Shared {
    pub waker: AtomicWaker,
    /// Set by the sender just before it parks; a producer that clears it wakes it.
    pub sleeping: AtomicBool,
    /// When set, the sender stops taking its time: it sends everything at once and exits
    /// when done or at this instant, whichever is first.
    pub stop: OnceLock<Instant>,
    /// Event copies (one per webhook) accepted and not yet delivered, failed or dropped.
    pub queued: AtomicUsize,
    pub requests: AtomicU64,
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    pub retries: AtomicU64,
    pub unsupported: AtomicU64,
    /// Event copies dropped by the vacate grace (a vacate and the return within it).
    pub suppressed: AtomicU64,
    /// The redis queue's counters (all zero with the sync driver).
    pub queue: super::queue::QueueStats,
}

impl Shared {
    /// Wakes the sender if it sleeps; called after queuing a job.
    pub fn notify(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    /// Asks the sender to finish by `deadline` (the first request wins) and wakes it.
    pub fn request_stop(&self, deadline: Instant) {
        let _ = self.stop.set(deadline);
        self.waker.wake();
    }

    pub fn stopping(&self) -> bool {
        self.stop.get().is_some()
    }

    pub fn stats(&self) -> WebhookStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WebhookStats {
            requests: get(&self.requests),
            delivered: get(&self.delivered),
            failed: get(&self.failed),
            dropped: get(&self.dropped),
            retries: get(&self.retries),
            unsupported: get(&self.unsupported),
            suppressed: get(&self.suppressed),
            queued: self.queued.load(Ordering::Relaxed) as u64,
        }
    }

    /// Moves `events` from `queued` to `counter` (delivered or failed).
    pub fn resolve(&self, counter: &AtomicU64, events: usize) {
        counter.fetch_add(events as u64, Ordering::Relaxed);
        self.queued.fetch_sub(events, Ordering::Relaxed);
    }
}
