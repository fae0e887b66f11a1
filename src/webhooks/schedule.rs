//! Deliveries and their retries, sans-IO: which request to attempt next, when a failed one is
//! tried again, and when it is given up.
//!
//! A delivery is one signed request (one batch for one webhook). An attempt holds one of the
//! `max_in_flight` slots only while it runs; a failed delivery waits for its backoff outside
//! the slots, so a dead receiver never holds up later batches. Due retries start before fresh
//! deliveries (they are older). Backoff doubles from `first_retry` up to `max_retry_delay`.

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
    /// Fresh deliveries, oldest first.
    ready: VecDeque<usize>,
    /// Failed deliveries by the time their next attempt may start.
    retries: BinaryHeap<Reverse<(Instant, usize)>>,
    in_flight: usize,
    /// Events in every delivery held here.
    pending: usize,
}

impl Scheduler {
    #[must_use]
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            deliveries: Slab::new(),
            ready: VecDeque::new(),
            retries: BinaryHeap::new(),
            in_flight: 0,
            pending: 0,
        }
    }

    /// Queues a new delivery of `request`, carrying `events` events, to webhook `hook`.
    pub fn add(&mut self, hook: usize, request: Bytes, events: usize) {
        let id = self.deliveries.insert(Delivery {
            hook,
            request,
            events,
            attempts: 0,
        });
        self.pending += events;
        self.ready.push_back(id);
    }

    /// The next attempt to start at `now`, if a slot is free and one is waiting.
    pub fn poll_start(&mut self, now: Instant) -> Option<Start> {
        if self.in_flight >= self.policy.max_in_flight.max(1) {
            return None;
        }
        let id = match self.retries.peek() {
            Some(Reverse((at, id))) if *at <= now => {
                let id = *id;
                self.retries.pop();
                id
            }
            _ => self.ready.pop_front()?,
        };
        let delivery = self.deliveries.get_mut(id)?;
        delivery.attempts += 1;
        self.in_flight += 1;
        Some(Start {
            id,
            hook: delivery.hook,
            request: delivery.request.clone(),
            attempt: delivery.attempts,
        })
    }

    /// Records how attempt `id` ended; `delivered` is a 2xx answer. `None` for an unknown id.
    pub fn handle_outcome(&mut self, id: usize, delivered: bool, now: Instant) -> Option<Resolution> {
        let delivery = self.deliveries.get(id)?;
        self.in_flight -= 1;
        let hook = delivery.hook;
        if !delivered && delivery.attempts < self.policy.max_attempts {
            let at = now + backoff(&self.policy, delivery.attempts);
            self.retries.push(Reverse((at, id)));
            return Some(Resolution::Retry { hook, at });
        }
        let events = self.deliveries.remove(id).events;
        self.pending -= events;
        Some(if delivered {
            Resolution::Delivered { hook, events }
        } else {
            Resolution::Failed { hook, events }
        })
    }

    /// When [`Scheduler::poll_start`] may next return something without an outcome coming
    /// in first: the earliest retry, if a slot is free for it.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.in_flight >= self.policy.max_in_flight.max(1) {
            return None;
        }
        self.retries.peek().map(|Reverse((at, _))| *at)
    }

    /// Nothing waiting, running or to retry.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.deliveries.is_empty()
    }

    /// Events in deliveries not yet resolved.
    #[must_use]
    pub fn pending_events(&self) -> usize {
        self.pending
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

    fn policy(max_attempts: u32, max_in_flight: usize) -> Policy {
        Policy {
            max_attempts,
            first_retry: Duration::from_millis(500),
            max_retry_delay: Duration::from_secs(10),
            max_in_flight,
        }
    }

    #[test]
    fn backoff_doubles_from_the_first_retry_and_is_capped() {
        let p = policy(10, 1);
        let delays: Vec<u128> = (1..=7).map(|a| backoff(&p, a).as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(backoff(&p, u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn failures_retry_after_backoff_then_give_up_after_max_attempts() {
        let mut s = Scheduler::new(policy(3, 4));
        let t0 = Instant::now();
        s.add(7, Bytes::from_static(b"req"), 2);
        let a1 = s.poll_start(t0).unwrap_or_else(|| panic!("a ready delivery starts"));
        assert_eq!((a1.hook, a1.attempt), (7, 1));
        assert_eq!(s.poll_start(t0), None);

        let r = s.handle_outcome(a1.id, false, t0);
        let at1 = t0 + Duration::from_millis(500);
        assert_eq!(r, Some(Resolution::Retry { hook: 7, at: at1 }));
        assert_eq!(s.next_deadline(), Some(at1));
        assert_eq!(s.poll_start(at1 - Duration::from_millis(1)), None);
        let a2 = s.poll_start(at1).unwrap_or_else(|| panic!("the retry is due"));
        assert_eq!((a2.attempt, &a2.request[..]), (2, &b"req"[..]));

        let r = s.handle_outcome(a2.id, false, at1);
        let at2 = at1 + Duration::from_secs(1);
        assert_eq!(r, Some(Resolution::Retry { hook: 7, at: at2 }));
        let a3 = s.poll_start(at2).unwrap_or_else(|| panic!("the retry is due"));
        assert_eq!(a3.attempt, 3);
        assert_eq!(s.pending_events(), 2);
        assert_eq!(
            s.handle_outcome(a3.id, false, at2),
            Some(Resolution::Failed { hook: 7, events: 2 })
        );
        assert!(s.is_idle());
        assert_eq!(s.pending_events(), 0);
    }

    #[test]
    fn a_success_resolves_the_delivery() {
        let mut s = Scheduler::new(policy(5, 1));
        let now = Instant::now();
        s.add(0, Bytes::new(), 3);
        let a = s.poll_start(now).unwrap_or_else(|| panic!("starts"));
        assert_eq!(
            s.handle_outcome(a.id, true, now),
            Some(Resolution::Delivered { hook: 0, events: 3 })
        );
        assert_eq!(s.handle_outcome(a.id, true, now), None);
        assert!(s.is_idle());
    }

    #[test]
    fn waiting_retries_hold_no_slot_and_later_batches_go_first() {
        let mut s = Scheduler::new(policy(5, 1));
        let t0 = Instant::now();
        s.add(0, Bytes::from_static(b"dead"), 1);
        let a = s.poll_start(t0).unwrap_or_else(|| panic!("starts"));
        // One slot: nothing else starts while the attempt runs.
        s.add(1, Bytes::from_static(b"live"), 1);
        assert_eq!(s.poll_start(t0), None);
        assert_eq!(s.next_deadline(), None);
        s.handle_outcome(a.id, false, t0);
        // The failed one waits for its backoff; the later batch takes the slot now.
        let b = s.poll_start(t0).unwrap_or_else(|| panic!("the fresh batch starts"));
        assert_eq!(b.hook, 1);
        assert_eq!(s.next_deadline(), None, "no slot free while b runs");
        s.handle_outcome(b.id, true, t0);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_millis(500)));
    }
}
