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
