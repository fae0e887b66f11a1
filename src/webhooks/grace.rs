//! The grace period before `channel_vacated` and `member_removed` (sans-IO).
//!
//! Pusher waits a few seconds before it says a channel was vacated or a member left, so a
//! page reload (leave, then join again a moment later) sends no webhook at all. Here a
//! vacate waits `delay`; a `channel_occupied` for the same channel (or a `member_added`
//! for the same member) within it drops both. One that is still held when its time comes
//! is sent.
//!
//! This covers the webhooks one server decides. With the redis adapter the bridge decides
//! the cluster's and keeps its own grace in Redis, so a reload onto another node is
//! recognised too; it hands those over with [`super::Webhooks::send_now`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;

use super::Event;
use super::route::Routes;

/// What a vacate and the return that cancels it have in common.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    app: usize,
    /// `true` for members (`member_removed` / `member_added`), `false` for channels.
    member: bool,
    channel: String,
    user_id: String,
}

impl Key {
    /// The key of a vacate (`Some(true)`), of a return (`Some(false)`), or `None` for
    /// events the grace does not concern.
    fn of(app: usize, event: &Event) -> Option<(Self, bool)> {
        let (member, channel, user_id, vacate) = match event {
            Event::ChannelVacated { channel } => (false, channel, "", true),
            Event::ChannelOccupied { channel } => (false, channel, "", false),
            Event::MemberRemoved { channel, user_id } => (true, channel, user_id.as_str(), true),
            Event::MemberAdded { channel, user_id } => (true, channel, user_id.as_str(), false),
            _ => return None,
        };
        let key = Self {
            app,
            member,
            channel: channel.clone(),
            user_id: user_id.to_owned(),
        };
        Some((key, vacate))
    }
}

/// An event and the routes its copies were counted under.
pub(crate) type Job = (usize, Event, Arc<Routes>);

struct Held {
    id: u64,
    due: Instant,
    key: Key,
    job: Job,
}

/// The vacates being held, in the order they fall due.
pub(crate) struct Grace {
    delay: Duration,
    held: VecDeque<Held>,
    /// The id of the held vacate of each key; a held entry whose key names another id
    /// (or none) was cancelled.
    live: AHashMap<Key, u64>,
    next_id: u64,
}

/// What [`Grace::offer`] decided.
pub(crate) enum Offered {
    /// Not the grace's business, or no vacate to cancel: route it now.
    Now(Job),
    /// Held until its grace ends.
    Held,
    /// A return within the grace: both it and the held vacate are dropped.
    Cancelled { vacate: Job, back: Job },
}

impl Grace {
    pub(crate) fn new(delay: Duration) -> Self {
        Self {
            delay,
            held: VecDeque::new(),
            live: AHashMap::new(),
            next_id: 0,
        }
    }

    /// Takes one event as a handle queued it.
    pub(crate) fn offer(&mut self, job: Job, now: Instant) -> Offered {
        if self.delay.is_zero() {
            return Offered::Now(job);
        }
        let Some((key, vacate)) = Key::of(job.0, &job.1) else {
            return Offered::Now(job);
        };
        if vacate {
            self.next_id += 1;
            let id = self.next_id;
            self.live.insert(key.clone(), id);
            self.held.push_back(Held {
                id,
                due: now + self.delay,
                key,
                job,
            });
            return Offered::Held;
        }
        let Some(id) = self.live.remove(&key) else {
            return Offered::Now(job);
        };
        let i = self.held.iter().position(|h| h.id == id);
        match i.and_then(|i| self.held.remove(i)) {
            Some(h) => Offered::Cancelled {
                vacate: h.job,
                back: job,
            },
            None => Offered::Now(job),
        }
    }

    /// The vacates whose grace is over at `now` (all of them when `all`), in order.
    pub(crate) fn due(&mut self, now: Instant, all: bool, mut f: impl FnMut(Job)) {
        while let Some(front) = self.held.front() {
            if !all && front.due > now {
                break;
            }
            let Some(h) = self.held.pop_front() else {
                break;
            };
            if self.live.get(&h.key) == Some(&h.id) {
                self.live.remove(&h.key);
            }
            f(h.job);
        }
    }

    /// When the next held vacate falls due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.held.front().map(|h| h.due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(event: Event) -> Job {
        (0, event, Arc::new(Routes::new(std::iter::empty())))
    }

    fn vacated() -> Event {
        Event::ChannelVacated {
            channel: "c".into(),
        }
    }

    fn occupied() -> Event {
        Event::ChannelOccupied {
            channel: "c".into(),
        }
    }

    #[test]
    fn a_return_within_the_grace_drops_both_events() {
        let t = Instant::now();
        let mut g = Grace::new(Duration::from_secs(3));
        assert!(matches!(g.offer(job(vacated()), t), Offered::Held));
        let back = g.offer(job(occupied()), t + Duration::from_secs(1));
        assert!(matches!(back, Offered::Cancelled { .. }));
        let mut sent = Vec::new();
        g.due(t + Duration::from_secs(10), false, |j| sent.push(j.1));
        assert!(sent.is_empty());
        assert!(g.next_deadline().is_none());
    }

    #[test]
    fn a_vacate_is_sent_when_its_grace_ends_and_a_later_return_is_not_dropped() {
        let t = Instant::now();
        let mut g = Grace::new(Duration::from_secs(3));
        assert!(matches!(g.offer(job(vacated()), t), Offered::Held));
        let mut sent = Vec::new();
        g.due(t + Duration::from_secs(2), false, |j| sent.push(j.1));
        assert!(sent.is_empty());
        assert_eq!(g.next_deadline(), Some(t + Duration::from_secs(3)));
        g.due(t + Duration::from_secs(3), false, |j| sent.push(j.1));
        assert_eq!(sent, vec![vacated()]);
        let back = g.offer(job(occupied()), t + Duration::from_secs(4));
        assert!(matches!(back, Offered::Now(_)));
    }

    #[test]
    fn members_are_matched_by_channel_and_user_and_other_events_pass() {
        let t = Instant::now();
        let mut g = Grace::new(Duration::from_secs(3));
        let removed = Event::MemberRemoved {
            channel: "presence-x".into(),
            user_id: "1".into(),
        };
        assert!(matches!(g.offer(job(removed), t), Offered::Held));
        let other = Event::MemberAdded {
            channel: "presence-x".into(),
            user_id: "2".into(),
        };
        assert!(matches!(g.offer(job(other), t), Offered::Now(_)));
        let same = Event::MemberAdded {
            channel: "presence-x".into(),
            user_id: "1".into(),
        };
        assert!(matches!(g.offer(job(same), t), Offered::Cancelled { .. }));
        let miss = Event::CacheMiss {
            channel: "cache-x".into(),
        };
        assert!(matches!(g.offer(job(miss), t), Offered::Now(_)));
        assert!(matches!(
            Grace::new(Duration::ZERO).offer(job(vacated()), t),
            Offered::Now(_)
        ));
    }
}
