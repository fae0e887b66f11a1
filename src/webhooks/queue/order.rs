//! One job at a time per ordering key, sans-IO: the next job with a key starts only when
//! the one before it is resolved (delivered, or given up to the dead-letter stream), so
//! `channel_occupied` reaches the receiver before `channel_vacated` even when the first
//! needed retries. Jobs with other keys are not held up.

use std::collections::VecDeque;

use ahash::AHashMap;
use bytes::Bytes;

/// Jobs by ordering key: one active, the rest waiting in arrival order.
#[derive(Debug)]
pub struct Gate<T> {
    /// A key is present while one of its jobs is active; the deque holds those after it.
    keys: AHashMap<Bytes, VecDeque<T>>,
    /// Jobs held, active or waiting.
    len: usize,
}

impl<T> Default for Gate<T> {
    fn default() -> Self {
        Self {
            keys: AHashMap::new(),
            len: 0,
        }
    }
}

impl<T> Gate<T> {
    /// Takes a job; returns it back when it may start now (no job with its key active).
    pub fn push(&mut self, key: Bytes, job: T) -> Option<T> {
        self.len += 1;
        if let Some(waiting) = self.keys.get_mut(&key) {
            waiting.push_back(job);
            return None;
        }
        self.keys.insert(key, VecDeque::new());
        Some(job)
    }

    /// The active job of `key` is resolved: returns the next one with that key, which is
    /// active from now on.
    pub fn done(&mut self, key: &[u8]) -> Option<T> {
        let waiting = self.keys.get_mut(key)?;
        self.len = self.len.saturating_sub(1);
        let next = waiting.pop_front();
        if next.is_none() {
            self.keys.remove(key);
        }
        next
    }

    /// Drops the waiting (not active) jobs `keep` refuses, e.g. of a partition this node
    /// no longer owns; returns how many.
    pub fn retain_waiting(&mut self, mut keep: impl FnMut(&T) -> bool) -> usize {
        let before = self.len;
        for waiting in self.keys.values_mut() {
            let n = waiting.len();
            waiting.retain(&mut keep);
            self.len -= n - waiting.len();
        }
        before - self.len
    }

    /// Jobs held, active or waiting.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_runs_one_job_at_a_time_in_order_and_others_are_not_held() {
        let mut g = Gate::default();
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        assert_eq!(g.push(a.clone(), "occupied"), Some("occupied"));
        assert_eq!(g.push(a.clone(), "vacated"), None);
        assert_eq!(g.push(a.clone(), "occupied again"), None);
        assert_eq!(g.push(b.clone(), "other"), Some("other"));
        assert_eq!(g.len(), 4);
        assert_eq!(g.done(&a), Some("vacated"));
        assert_eq!(g.done(&b), None);
        assert_eq!(g.done(&a), Some("occupied again"));
        assert_eq!(g.done(&a), None);
        assert!(g.is_empty());
        // Unknown keys are ignored; a fresh key starts at once again.
        assert_eq!(g.done(&a), None);
        assert_eq!(g.push(a, "later"), Some("later"));
    }

    #[test]
    fn dropping_waiting_jobs_keeps_the_active_one() {
        let mut g = Gate::default();
        let a = Bytes::from_static(b"a");
        assert_eq!(g.push(a.clone(), 1), Some(1));
        assert_eq!(g.push(a.clone(), 2), None);
        assert_eq!(g.push(a.clone(), 3), None);
        assert_eq!(g.retain_waiting(|&n| n != 2), 1);
        assert_eq!(g.len(), 2);
        assert_eq!(g.done(&a), Some(3));
        assert_eq!(g.done(&a), None);
        assert!(g.is_empty());
    }
}
