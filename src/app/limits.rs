//! Quotas shared by every shard: per-app connection counts and per-second request
//! windows. They sit on connect and REST paths, never on delivery, so one atomic each is
//! cheap and keeps them exact across shards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A fixed one-second window: `(second << 32) | count` in one atomic.
#[derive(Debug, Default)]
pub struct RateWindow {
    state: AtomicU64,
}

impl RateWindow {
    /// Counts one request at unix second `now_sec`; `Err(retry_after_secs)` when `limit`
    /// requests were already counted in this second.
    pub fn try_acquire(&self, now_sec: u64, limit: u64) -> Result<(), u64> {
        self.try_acquire_n(now_sec, 1, limit)
    }

    /// Counts `n` requests at once (a batch), all or none.
    pub fn try_acquire_n(&self, now_sec: u64, n: u64, limit: u64) -> Result<(), u64> {
        let second = now_sec & 0xffff_ffff;
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (win, count) = (current >> 32, current & 0xffff_ffff);
            let count = if win == second { count } else { 0 };
            if count + n > limit {
                return Err(1);
            }
            let next = (second << 32) | (count + n);
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }
}

/// A gauge with a ceiling: `try_add` fails rather than pass `max`.
#[derive(Debug, Default)]
pub struct Quota {
    used: AtomicU64,
}

impl Quota {
    /// Takes one unit unless `max` are taken (`None` is unlimited).
    pub fn try_add(&self, max: Option<u64>) -> bool {
        let Some(max) = max else {
            self.used.fetch_add(1, Ordering::AcqRel);
            return true;
        };
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives one unit back.
    pub fn release(&self) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Units in use.
    #[must_use]
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// Tokens this node holds of a cluster-wide quota (connection slots), leased from Redis
/// by the redis bridge. A shard takes one per connection without asking anyone while
/// there are some; a closed connection gives its token back to the node, and the bridge
/// returns tokens the node does not need to Redis.
#[derive(Debug, Default)]
pub struct Lease {
    /// Leased and unused.
    tokens: AtomicU64,
    /// Leased and held by open connections.
    in_use: AtomicU64,
}

impl Lease {
    /// Takes `n` unused tokens for connections, if the node holds that many.
    pub fn try_take(&self, n: u64) -> bool {
        let taken = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| t.checked_sub(n))
            .is_ok();
        if taken {
            self.in_use.fetch_add(n, Ordering::AcqRel);
        }
        taken
    }

    /// Redis granted `used` tokens for the connection that asked and `spare` more.
    pub fn granted(&self, used: u64, spare: u64) {
        self.in_use.fetch_add(used, Ordering::AcqRel);
        self.tokens.fetch_add(spare, Ordering::AcqRel);
    }

    /// `n` connections closed: their tokens are unused again.
    pub fn release(&self, n: u64) {
        let _ = self
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| t.checked_sub(n));
        self.tokens.fetch_add(n, Ordering::AcqRel);
    }

    /// Tokens leased from Redis, used or not: what Redis should count for this node.
    #[must_use]
    pub fn held(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed) + self.tokens.load(Ordering::Relaxed)
    }

    /// Takes every token above `keep`, for the bridge to return them to Redis.
    pub fn take_above(&self, keep: u64) -> u64 {
        match self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| {
                (t > keep).then_some(keep)
            }) {
            Ok(before) => before - keep,
            Err(_) => 0,
        }
    }

    /// Tokens held.
    #[must_use]
    pub fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::Relaxed)
    }
}

/// Tokens this node holds of a cluster-wide per-second limit for one unix second:
/// `(second << 32) | tokens` in one atomic. Tokens of a past second are worthless.
#[derive(Debug, Default)]
pub struct RateLease {
    state: AtomicU64,
    /// `second + 1` of a second the cluster has no tokens left in: later requests of that
    /// second are refused without asking Redis.
    exhausted: AtomicU64,
}

impl RateLease {
    /// The cluster refused tokens of second `now_sec`.
    pub fn mark_exhausted(&self, now_sec: u64) {
        self.exhausted.store(now_sec + 1, Ordering::Relaxed);
    }

    /// Whether the cluster has no tokens left in second `now_sec`.
    #[must_use]
    pub fn is_exhausted(&self, now_sec: u64) -> bool {
        self.exhausted.load(Ordering::Relaxed) == now_sec + 1
    }

    /// Takes `n` tokens of second `now_sec` if the node holds that many.
    pub fn try_take(&self, now_sec: u64, n: u64) -> bool {
        let second = now_sec & 0xffff_ffff;
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |s| {
                let (win, tokens) = (s >> 32, s & 0xffff_ffff);
                (win == second && tokens >= n).then(|| (second << 32) | (tokens - n))
            })
            .is_ok()
    }

    /// Adds `n` tokens for second `now_sec` (dropping those of an older second).
    pub fn give(&self, now_sec: u64, n: u64) {
        let second = now_sec & 0xffff_ffff;
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |s| {
                let (win, tokens) = (s >> 32, s & 0xffff_ffff);
                let tokens = match win.cmp(&second) {
                    std::cmp::Ordering::Equal => tokens,
                    std::cmp::Ordering::Less => 0,
                    // Tokens of a later second already: these are stale.
                    std::cmp::Ordering::Greater => return None,
                };
                Some((second << 32) | (tokens + n).min(0xffff_ffff))
            });
    }
}

/// A token bucket owned by one shard (no sharing): `rate` tokens a second up to `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    #[must_use]
    pub fn new(rate_per_sec: f64, burst: f64) -> Self {
        Self {
            rate: rate_per_sec,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes a token at `now`; false when empty.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Unix seconds now.
#[must_use]
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_lease_hands_out_its_tokens_and_returns_the_excess() {
        let l = Lease::default();
        assert!(!l.try_take(1));
        l.granted(1, 5);
        assert!(l.try_take(2));
        assert!(!l.try_take(4));
        assert_eq!(l.held(), 6);
        assert_eq!(l.take_above(1), 2);
        assert_eq!(l.tokens(), 1);
        assert_eq!(l.take_above(1), 0);
        l.release(3);
        assert_eq!((l.tokens(), l.held()), (4, 4));
    }

    #[test]
    fn rate_lease_tokens_are_worth_their_second_only() {
        let l = RateLease::default();
        l.give(100, 3);
        assert!(l.try_take(100, 2));
        assert!(!l.try_take(100, 2));
        assert!(!l.try_take(101, 1), "tokens of second 100 are gone in 101");
        l.give(101, 1);
        l.give(100, 5);
        assert!(l.try_take(101, 1));
        assert!(
            !l.try_take(101, 1),
            "a late grant for 100 does not count in 101"
        );
    }

    #[test]
    fn rate_window_allows_limit_per_second_then_resets() {
        let w = RateWindow::default();
        for _ in 0..3 {
            assert!(w.try_acquire(100, 3).is_ok());
        }
        assert_eq!(w.try_acquire(100, 3), Err(1));
        assert!(
            w.try_acquire(101, 3).is_ok(),
            "a new second starts a new window"
        );
    }

    #[test]
    fn quota_is_exact_across_threads() {
        let q = std::sync::Arc::new(Quota::default());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let q = std::sync::Arc::clone(&q);
                std::thread::spawn(move || (0..100).filter(|_| q.try_add(Some(150))).count())
            })
            .collect();
        let taken: usize = handles.into_iter().map(|h| h.join().expect("thread")).sum();
        assert_eq!(taken, 150);
        assert_eq!(q.used(), 150);
        q.release();
        assert_eq!(q.used(), 149);
    }

    #[test]
    fn token_bucket_refills_at_its_rate_up_to_burst() {
        let start = Instant::now();
        let mut b = TokenBucket::new(10.0, 2.0);
        b.last = start;
        assert!(b.take(start) && b.take(start));
        assert!(!b.take(start));
        assert!(b.take(start + Duration::from_millis(100)));
        assert!(!b.take(start + Duration::from_millis(100)));
        assert!(b.take(start + Duration::from_secs(10)) && b.take(start + Duration::from_secs(10)));
        assert!(
            !b.take(start + Duration::from_secs(10)),
            "never more than burst"
        );
    }
}
