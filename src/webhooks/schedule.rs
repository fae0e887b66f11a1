//! Deliveries and their retries, sans-IO: which request to attempt next, when a failed one is
//! tried again, and when it is given up.
//!
//! A delivery is one signed request (one batch for one webhook). An attempt holds a slot
//! (of `max_in_flight` in all, `max_in_flight_per_hook` per webhook) only while it runs; a
//! failed delivery waits for its backoff outside the slots, so a dead receiver never holds up
//! later batches, and a hanging one holds only its own webhook's slots. Webhooks take turns;
//! within one, a due retry goes before fresh deliveries (it is older). Backoff doubles from
//! `first_retry` up to `max_retry_delay`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;

/// Retry policy and concurrency bound.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Attempts per delivery, the first included (at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles after each failure.
    pub first_retry: Duration,
    /// Longest delay between two attempts.
    pub max_retry_delay: Duration,
    /// Attempts running at once (at least 1).
    pub max_in_flight: usize,
    /// Attempts running at once to one webhook (at least 1), so a hanging receiver leaves
    /// slots for the others.
    pub max_in_flight_per_hook: usize,
}

/// An attempt to start now.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    /// Hand it back to [`Scheduler::handle_outcome`].
    pub id: usize,
    /// The webhook to send to.
    pub hook: usize,
    /// The full request bytes, the same for every attempt.
    pub request: Bytes,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// What became of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The receiver answered 2xx: `events` events are delivered.
    Delivered { hook: usize, events: usize },
    /// The attempt failed; another one starts at `at`.
    Retry { hook: usize, at: Instant },
    /// The last attempt failed: `events` events are given up.
    Failed { hook: usize, events: usize },
}

#[derive(Debug)]
struct Delivery {
    hook: usize,
    request: Bytes,
    events: usize,
    attempts: u32,
}

/// Deliveries waiting, running, or waiting to be retried.
#[derive(Debug)]
pub struct Scheduler {
    policy: Policy,
    deliveries: Slab<Delivery>,
    /// Per webhook, deliveries that may start, oldest first (a due retry goes in front).
    ready: Vec<VecDeque<usize>>,
    /// Failed deliveries by the time their next attempt may start.
    retries: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Attempts running, in all and per webhook.
    in_flight: usize,
    hook_in_flight: Vec<usize>,
    /// The webhook the round-robin looks at first.
    cursor: usize,
}

impl Scheduler {
    /// A scheduler for `hooks` webhooks.
    #[must_use]
    pub fn new(policy: Policy, hooks: usize) -> Self {
        Self {
            policy,
            deliveries: Slab::new(),
            ready: (0..hooks).map(|_| VecDeque::new()).collect(),
            retries: BinaryHeap::new(),
            in_flight: 0,
            hook_in_flight: vec![0; hooks],
            cursor: 0,
        }
    }

    /// Makes room for webhooks up to index `hooks - 1` (webhooks added at run time);
    /// deliveries waiting, running or to retry are untouched. Never shrinks.
    pub fn grow(&mut self, hooks: usize) {
        if hooks > self.ready.len() {
            self.ready.resize_with(hooks, VecDeque::new);
            self.hook_in_flight.resize(hooks, 0);
        }
    }

    /// Queues a new delivery of `request`, carrying `events` events, to webhook `hook`;
    /// returns its id (as [`Start::id`]), `None` for an unknown webhook.
    pub fn add(&mut self, hook: usize, request: Bytes, events: usize) -> Option<usize> {
        self.add_after(hook, request, events, 0)
    }

    /// Like [`Scheduler::add`] for a delivery that already had `attempts` attempts
    /// elsewhere (a queued job taken over from another node): it gets what is left of the
    /// attempt budget, at least one.
    pub fn add_after(
        &mut self,
        hook: usize,
        request: Bytes,
        events: usize,
        attempts: u32,
    ) -> Option<usize> {
        let queue = self.ready.get_mut(hook)?;
        let attempts = attempts.min(self.policy.max_attempts.saturating_sub(1));
        let id = self.deliveries.insert(Delivery {
            hook,
            request,
            events,
            attempts,
        });
        queue.push_back(id);
        Some(id)
    }

    /// The next attempt to start at `now`, if one is waiting and slots are free: in all
    /// (`max_in_flight`) and for its webhook (`max_in_flight_per_hook`). Webhooks take turns.
    pub fn poll_start(&mut self, now: Instant) -> Option<Start> {
        while let Some(Reverse((at, id))) = self.retries.peek().copied() {
            if at > now {
                break;
            }
            self.retries.pop();
            if let Some(d) = self.deliveries.get(id) {
                self.ready[d.hook].push_front(id);
            }
        }
        if self.in_flight >= self.policy.max_in_flight.max(1) {
            return None;
        }
        let hooks = self.ready.len();
        let per_hook = self.policy.max_in_flight_per_hook.max(1);
        let hook = (0..hooks)
            .map(|i| (self.cursor + i) % hooks)
            .find(|&h| !self.ready[h].is_empty() && self.hook_in_flight[h] < per_hook)?;
        self.cursor = (hook + 1) % hooks;
        let id = self.ready[hook].pop_front()?;
        let delivery = self.deliveries.get_mut(id)?;
        delivery.attempts += 1;
        self.in_flight += 1;
        self.hook_in_flight[hook] += 1;
        Some(Start {
            id,
            hook,
            request: delivery.request.clone(),
            attempt: delivery.attempts,
        })
    }

    /// Records how attempt `id` ended; `delivered` is a 2xx answer. `None` for an unknown id.
    pub fn handle_outcome(
        &mut self,
        id: usize,
        delivered: bool,
        now: Instant,
    ) -> Option<Resolution> {
        let delivery = self.deliveries.get(id)?;
        let hook = delivery.hook;
        self.in_flight -= 1;
        self.hook_in_flight[hook] -= 1;
        if !delivered && delivery.attempts < self.policy.max_attempts {
            let at = now + backoff(&self.policy, delivery.attempts);
            self.retries.push(Reverse((at, id)));
            return Some(Resolution::Retry { hook, at });
        }
        let events = self.deliveries.remove(id).events;
        Some(if delivered {
            Resolution::Delivered { hook, events }
        } else {
            Resolution::Failed { hook, events }
        })
    }

    /// When the earliest waiting retry becomes ready; after [`Scheduler::poll_start`] at
    /// `now` this is always later than `now`.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.retries.peek().map(|Reverse((at, _))| *at)
    }

    /// Nothing waiting, running or to retry.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.deliveries.is_empty()
    }
}

/// The wait after `attempts` failed attempts: `first_retry * 2^(attempts - 1)`, capped.
#[must_use]
pub fn backoff(policy: &Policy, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(30);
    policy
        .first_retry
        .saturating_mul(1 << doublings)
        .min(policy.max_retry_delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32, max_in_flight: usize, per_hook: usize) -> Policy {
        Policy {
            max_attempts,
            first_retry: Duration::from_millis(500),
            max_retry_delay: Duration::from_secs(10),
            max_in_flight,
            max_in_flight_per_hook: per_hook,
        }
    }

    fn start(s: &mut Scheduler, now: Instant) -> Start {
        s.poll_start(now)
            .unwrap_or_else(|| panic!("an attempt should start"))
    }

    #[test]
    fn backoff_doubles_from_the_first_retry_and_is_capped() {
        let p = policy(10, 1, 1);
        let delays: Vec<u128> = (1..=7).map(|a| backoff(&p, a).as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(backoff(&p, u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn failures_retry_after_backoff_then_give_up_after_max_attempts() {
        let mut s = Scheduler::new(policy(3, 4, 4), 8);
        let t0 = Instant::now();
        s.add(7, Bytes::from_static(b"req"), 2);
        let a1 = start(&mut s, t0);
        assert_eq!((a1.hook, a1.attempt), (7, 1));
        assert_eq!(s.poll_start(t0), None);

        let at1 = t0 + Duration::from_millis(500);
        assert_eq!(
            s.handle_outcome(a1.id, false, t0),
            Some(Resolution::Retry { hook: 7, at: at1 })
        );
        assert_eq!(s.next_deadline(), Some(at1));
        assert_eq!(s.poll_start(at1 - Duration::from_millis(1)), None);
        let a2 = start(&mut s, at1);
        assert_eq!((a2.attempt, &a2.request[..]), (2, &b"req"[..]));
        assert_eq!(s.next_deadline(), None);

        let at2 = at1 + Duration::from_secs(1);
        assert_eq!(
            s.handle_outcome(a2.id, false, at1),
            Some(Resolution::Retry { hook: 7, at: at2 })
        );
        let a3 = start(&mut s, at2);
        assert_eq!(a3.attempt, 3);
        assert_eq!(
            s.handle_outcome(a3.id, false, at2),
            Some(Resolution::Failed { hook: 7, events: 2 })
        );
        assert!(s.is_idle());
    }

    #[test]
    fn a_success_resolves_the_delivery() {
        let mut s = Scheduler::new(policy(5, 1, 1), 1);
        let now = Instant::now();
        s.add(0, Bytes::new(), 3);
        let a = start(&mut s, now);
        assert_eq!(
            s.handle_outcome(a.id, true, now),
            Some(Resolution::Delivered { hook: 0, events: 3 })
        );
        assert_eq!(s.handle_outcome(a.id, true, now), None);
        assert!(s.is_idle());
    }

    #[test]
    fn waiting_retries_hold_no_slot_and_later_batches_go_first() {
        let mut s = Scheduler::new(policy(5, 1, 1), 2);
        let t0 = Instant::now();
        s.add(0, Bytes::from_static(b"dead"), 1);
        let a = start(&mut s, t0);
        // One slot: nothing else starts while the attempt runs.
        s.add(1, Bytes::from_static(b"live"), 1);
        assert_eq!(s.poll_start(t0), None);
        s.handle_outcome(a.id, false, t0);
        // The failed one waits for its backoff; the later batch takes the slot now.
        let b = start(&mut s, t0);
        assert_eq!(b.hook, 1);
        s.handle_outcome(b.id, true, t0);
        let retry_at = t0 + Duration::from_millis(500);
        assert_eq!(s.next_deadline(), Some(retry_at));
        assert_eq!(start(&mut s, retry_at).hook, 0);
    }

    #[test]
    fn a_hanging_webhook_holds_only_its_own_slots_and_webhooks_take_turns() {
        let mut s = Scheduler::new(policy(5, 4, 2), 2);
        let now = Instant::now();
        for _ in 0..5 {
            s.add(0, Bytes::from_static(b"hang"), 1);
        }
        for _ in 0..3 {
            s.add(1, Bytes::from_static(b"ok"), 1);
        }
        let hooks: Vec<usize> = std::iter::from_fn(|| s.poll_start(now))
            .map(|a| a.hook)
            .collect();
        // Two each: webhook 0 is at its own bound, webhook 1 too, 4 in all.
        assert_eq!(hooks, [0, 1, 0, 1]);
        let mut s = Scheduler::new(policy(5, 64, 2), 2);
        for _ in 0..5 {
            s.add(0, Bytes::from_static(b"hang"), 1);
        }
        for _ in 0..3 {
            s.add(1, Bytes::from_static(b"ok"), 1);
        }
        let mut started: Vec<Start> = std::iter::from_fn(|| s.poll_start(now)).collect();
        assert_eq!(started.iter().filter(|a| a.hook == 0).count(), 2);
        // Webhook 1 answers; its next batch starts while webhook 0 still hangs.
        let done = started.iter().position(|a| a.hook == 1).unwrap_or(0);
        let done = started.remove(done);
        s.handle_outcome(done.id, true, now);
        assert_eq!(start(&mut s, now).hook, 1);
        assert_eq!(s.poll_start(now), None);
    }

    #[test]
    fn grow_adds_webhooks_without_disturbing_running_deliveries_and_retries() {
        let mut s = Scheduler::new(policy(3, 4, 1), 1);
        let t0 = Instant::now();
        s.add(0, Bytes::from_static(b"a"), 1);
        s.add(0, Bytes::from_static(b"b"), 1);
        // Unknown webhooks are ignored until the scheduler grows.
        s.add(1, Bytes::from_static(b"lost"), 1);
        let a = start(&mut s, t0);
        assert_eq!(s.poll_start(t0), None);

        s.grow(3);
        s.grow(2);
        s.add(2, Bytes::from_static(b"c"), 2);
        // Webhook 0 is at its bound; the new one takes a slot.
        let c = start(&mut s, t0);
        assert_eq!((c.hook, &c.request[..]), (2, &b"c"[..]));
        assert_eq!(s.poll_start(t0), None);

        let at = t0 + Duration::from_millis(500);
        assert_eq!(
            s.handle_outcome(a.id, false, t0),
            Some(Resolution::Retry { hook: 0, at })
        );
        let b = start(&mut s, t0);
        assert_eq!(&b.request[..], b"b");
        assert_eq!(
            s.handle_outcome(c.id, true, t0),
            Some(Resolution::Delivered { hook: 2, events: 2 })
        );
        s.handle_outcome(b.id, true, t0);
        let retry = start(&mut s, at);
        assert_eq!(
            (retry.hook, retry.attempt, &retry.request[..]),
            (0, 2, &b"a"[..])
        );
        s.handle_outcome(retry.id, true, at);
        assert!(s.is_idle());
    }
}
