//! Sending the jobs this node read from its partitions, inside the sender thread's loop:
//! through the ordering gate, then a scheduler of their own (its webhooks are the URLs
//! seen in jobs), then the same HTTP attempt as the sync driver. A 2xx acknowledges the
//! job; the last failed attempt dead-letters it.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ahash::{AHashMap, AHashSet};

use super::io::{Dead, Incoming, State};
use super::order::Gate;
use crate::webhooks::WebhookSettings;
use crate::webhooks::request::{HttpTarget, parse_url};
use crate::webhooks::schedule::{Policy, Resolution, Scheduler};
use crate::webhooks::sender::{AttemptError, Finished, post};

/// The consuming side of the queue on one node.
pub struct Consumer {
    state: Rc<State>,
    gate: Gate<Incoming>,
    scheduler: Scheduler,
    /// By scheduler webhook index: the URL's target (`None`: unusable URL).
    targets: Vec<Option<Rc<HttpTarget>>>,
    by_url: AHashMap<String, usize>,
    /// By scheduler delivery id.
    jobs: AHashMap<usize, Incoming>,
    pub finished: Rc<Finished>,
    /// Attempts running.
    running: usize,
    /// URLs whose last job was dead-lettered; only changes are logged.
    failing: AHashSet<String>,
    seen_changes: u64,
    timeout: Duration,
}

impl Consumer {
    pub fn new(state: Rc<State>, settings: &WebhookSettings) -> Self {
        let policy = Policy {
            max_attempts: state.settings.max_attempts,
            first_retry: settings.first_retry,
            max_retry_delay: settings.max_retry_delay,
            max_in_flight: settings.max_in_flight.max(1),
            max_in_flight_per_hook: settings.max_in_flight_per_hook.max(1),
        };
        Self {
            state,
            gate: Gate::default(),
            scheduler: Scheduler::new(policy, 0),
            targets: Vec::new(),
            by_url: AHashMap::new(),
            jobs: AHashMap::new(),
            finished: Rc::default(),
            running: 0,
            failing: AHashSet::new(),
            seen_changes: 0,
            timeout: settings.request_timeout,
        }
    }

    /// Attempts running.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Takes the jobs read or claimed, and forgets the waiting jobs of partitions lost.
    pub fn take(&mut self) {
        if self.seen_changes != self.state.owned_changes.get() {
            self.seen_changes = self.state.owned_changes.get();
            let owned = self.state.owned.borrow().clone();
            self.gate.retain_waiting(|i| owned.contains(&i.partition));
        }
        let incoming: Vec<Incoming> = self.state.inbox.borrow_mut().drain(..).collect();
        for job in incoming {
            if let Some(job) = self.gate.push(job.job.key.clone(), job) {
                self.schedule(job);
            }
        }
        self.state.held.set(self.gate.len());
    }

    fn schedule(&mut self, incoming: Incoming) {
        let hook = match self.by_url.get(&incoming.job.url) {
            Some(&h) => h,
            None => {
                let h = self.targets.len();
                self.targets
                    .push(parse_url(&incoming.job.url).ok().map(Rc::new));
                self.by_url.insert(incoming.job.url.clone(), h);
                self.scheduler.grow(h + 1);
                h
            }
        };
        if self.targets[hook].is_none() {
            let error = "the webhook URL cannot be used".to_owned();
            self.give_up(incoming, 0, error);
            return;
        }
        let (request, events) = (incoming.job.request.clone(), incoming.job.events);
        if let Some(id) = self
            .scheduler
            .add_after(hook, request, events, incoming.attempts)
        {
            self.jobs.insert(id, incoming);
        }
    }

    /// Starts the attempts due (none once stopping: the jobs stay pending in Redis and
    /// the leases given back let another node send them).
    pub fn start_due(&mut self, now: Instant, stopping: bool) {
        if stopping {
            return;
        }
        let shared = &self.state.shared;
        while let Some(start) = self.scheduler.poll_start(now) {
            shared.requests.fetch_add(1, Ordering::Relaxed);
            if start.attempt > 1 {
                shared.retries.fetch_add(1, Ordering::Relaxed);
                shared.queue.retries.fetch_add(1, Ordering::Relaxed);
            }
            let Some(target) = self.targets[start.hook].clone() else {
                continue;
            };
            self.running += 1;
            let finished = Rc::clone(&self.finished);
            let timeout = self.timeout;
            monoio::spawn(async move {
                let result = monoio::time::timeout(timeout, post(&target, start.request))
                    .await
                    .unwrap_or(Err(AttemptError::Timeout));
                finished.push(start.id, result);
            });
        }
    }

    /// Handles finished attempts: acknowledge, retry later, or dead-letter.
    pub fn take_results(&mut self, now: Instant) {
        let results = std::mem::take(&mut *self.finished.results.borrow_mut());
        let state = Rc::clone(&self.state);
        let shared = &state.shared;
        for (id, result) in results {
            self.running = self.running.saturating_sub(1);
            let delivered = matches!(result, Ok(200..=299));
            match self.scheduler.handle_outcome(id, delivered, now) {
                Some(Resolution::Delivered { events, .. }) => {
                    shared.delivered.fetch_add(events as u64, Ordering::Relaxed);
                    if let Some(job) = self.jobs.remove(&id) {
                        if self.failing.remove(&job.job.url) {
                            eprintln!("corecast: webhook {} delivers again", job.job.url);
                        }
                        self.state
                            .acks
                            .borrow_mut()
                            .push((job.partition, job.id.clone()));
                        self.next(&job);
                    }
                }
                Some(Resolution::Failed { events, .. }) => {
                    shared.failed.fetch_add(events as u64, Ordering::Relaxed);
                    if let Some(job) = self.jobs.remove(&id) {
                        let why = match result {
                            Ok(status) => format!("HTTP status {status}"),
                            Err(e) => e.to_string(),
                        };
                        let attempts = self.state.settings.max_attempts;
                        self.give_up(job, attempts, why);
                    }
                }
                Some(Resolution::Retry { .. }) | None => {}
            }
        }
        self.state.held.set(self.gate.len());
        self.state.wake_commander();
        self.state.wake_reader();
    }

    /// Moves a job to the dead-letter stream and lets the next one with its key start.
    fn give_up(&mut self, job: Incoming, attempts: u32, error: String) {
        if self.failing.insert(job.job.url.clone()) {
            eprintln!(
                "corecast: webhook {} failed after {attempts} attempts ({error}); its jobs go to {} (counted, not logged)",
                job.job.url,
                self.state.settings.keys.dead()
            );
        }
        self.next(&job);
        self.state.dead.borrow_mut().push(Dead {
            incoming: job,
            attempts,
            error,
        });
        self.state.wake_commander();
    }

    /// The job with `job`'s key after it, if any, is scheduled.
    fn next(&mut self, job: &Incoming) {
        if let Some(next) = self.gate.done(&job.job.key) {
            self.schedule(next);
        }
    }

    /// When the earliest retry is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.scheduler.next_deadline()
    }
}
