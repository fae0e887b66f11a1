//! The sender thread: its own monoio runtime, so a slow or dead receiver never blocks a shard.
//!
//! The loop, in order: take the jobs the handles queued (routing each event to its webhooks
//! and their batches, adding the webhooks an app change defines), take the results of
//! finished attempts, move due batches into deliveries, start attempts while slots are free,
//! then sleep until a job, a result, a batch window, a retry, or the stop deadline. Each
//! attempt is its own task: connect, write the request, read the status line, all within
//! `request_timeout`.
//!
//! Host names are resolved with the system resolver on this thread; use an IP address in
//! webhook URLs where resolution may be slow.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::task::{Poll, Waker};
use std::thread::{self, JoinHandle};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::batch::{Batch, Batcher, encode_body, signature};
use super::grace::{Grace, Offered};
use super::queue::consume::Consumer;
use super::queue::io::State;
use super::queue::wire;
use super::request::{HttpTarget, MalformedResponse, UrlError, build_request, parse_status};
use super::route::Routes;
use super::schedule::{Policy, Resolution, Scheduler, Start};
use super::shared::{Job, Shared};
use super::{AppHooks, Event, WebhookSettings};

/// A webhook as the sender needs it.
struct Hook {
    url: String,
    /// The app's id, carried by queued jobs for logs.
    app: String,
    secret: String,
    /// Request line and body-independent headers, rendered once.
    head: Vec<u8>,
    target: Result<Rc<HttpTarget>, UrlError>,
    /// Whether the last delivery failed; only changes are logged.
    failing: bool,
}

/// Starts the sender thread; returns once its runtime runs, or with the reason it cannot.
pub(crate) fn spawn(
    apps: Vec<AppHooks>,
    settings: WebhookSettings,
    shared: Arc<Shared>,
    jobs: Receiver<Job>,
) -> io::Result<JoinHandle<()>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let thread = thread::Builder::new()
        .name("corecast-webhooks".into())
        .spawn(move || {
            run_runtime(&ready_tx, move || async move {
                let hooks = apps.iter().flat_map(hooks).collect();
                Sender::new(hooks, settings, shared, jobs)
                    .with_queue()
                    .run()
                    .await;
            });
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(io::Error::other(
            "the webhook sender thread exited at start",
        )),
    }
}

/// Runs `make()` on monoio's fusion driver (io_uring, else epoll) with timers, falling back
/// to the epoll driver if building it fails; reports the outcome on `ready` first.
fn run_runtime<F, Fut>(ready: &SyncSender<io::Result<()>>, make: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    match monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(256)
        .enable_timer()
        .build()
    {
        Ok(mut rt) => {
            let _ = ready.send(Ok(()));
            rt.block_on(make());
        }
        Err(_) => match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
        {
            Ok(mut rt) => {
                let _ = ready.send(Ok(()));
                rt.block_on(make());
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        },
    }
}

/// `app`'s webhooks as the sender needs them, in config order; their key and secret are
/// the app's at this point and stay with them.
fn hooks(app: &AppHooks) -> impl Iterator<Item = Hook> + '_ {
    app.hooks.iter().map(|config| {
        let target = super::request::parse_url(&config.url);
        let head = match &target {
            Ok(t) => super::request::render_head(t, &app.key, &config.headers),
            Err(e) => {
                eprintln!(
                    "corecast: app {} webhook {}: {e}; its events are counted as failed",
                    app.app_id, config.url
                );
                Vec::new()
            }
        };
        Hook {
            url: config.url.clone(),
            app: app.app_id.clone(),
            secret: app.secret.clone(),
            head,
            target: target.map(Rc::new),
            failing: false,
        }
    })
}

/// Why an attempt did not get a status code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    #[error("connect failed: {0}")]
    Connect(io::Error),
    #[error("i/o error: {0}")]
    Io(io::Error),
    #[error("the receiver closed the connection before answering")]
    Closed,
    #[error(transparent)]
    Malformed(#[from] MalformedResponse),
    #[error("no answer within the request timeout")]
    Timeout,
}

/// Results of finished attempts, handed from their tasks to the loop.
#[derive(Default)]
pub(crate) struct Finished {
    pub(crate) results: RefCell<Vec<(usize, Result<u16, AttemptError>)>>,
    waker: RefCell<Option<Waker>>,
}

impl Finished {
    pub(crate) fn push(&self, id: usize, result: Result<u16, AttemptError>) {
        self.results.borrow_mut().push((id, result));
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

struct Sender {
    /// By webhook index; webhooks an app no longer has stay, to drain what they hold.
    hooks: Vec<Hook>,
    settings: WebhookSettings,
    shared: Arc<Shared>,
    jobs: Receiver<Job>,
    /// Every sender handle is gone: stop polling `jobs`.
    closed: bool,
    /// A job the wait took from `jobs` to learn it was non-empty; routed first next turn.
    stash: RefCell<Option<Job>>,
    batcher: Batcher,
    scheduler: Scheduler,
    /// `channel_vacated` / `member_removed` waiting out their grace.
    grace: Grace,
    finished: Rc<Finished>,
    /// With the redis queue: its tasks' state (batches are appended, not sent).
    queue: Option<Rc<State>>,
    /// With the redis queue on a consuming node: the jobs read from it.
    consumer: Option<Consumer>,
}

impl Sender {
    fn new(
        hooks: Vec<Hook>,
        settings: WebhookSettings,
        shared: Arc<Shared>,
        jobs: Receiver<Job>,
    ) -> Self {
        let window = settings.batching.then_some(settings.batching_window);
        let policy = Policy {
            max_attempts: settings.max_attempts.max(1),
            first_retry: settings.first_retry,
            max_retry_delay: settings.max_retry_delay,
            max_in_flight: settings.max_in_flight.max(1),
            max_in_flight_per_hook: settings.max_in_flight_per_hook.max(1),
        };
        Self {
            batcher: Batcher::new(hooks.len(), window),
            grace: Grace::new(settings.vacate_delay),
            scheduler: Scheduler::new(policy, hooks.len()),
            hooks,
            settings,
            shared,
            jobs,
            closed: false,
            stash: RefCell::new(None),
            finished: Rc::default(),
            queue: None,
            consumer: None,
        }
    }

    /// Starts the queue's tasks when `settings` has one (inside the runtime).
    fn with_queue(mut self) -> Self {
        if let Some(q) = self.settings.queue.clone() {
            let state = State::new(q, Arc::clone(&self.shared));
            state.spawn();
            if state.settings.consume {
                self.consumer = Some(Consumer::new(Rc::clone(&state), &self.settings));
            }
            self.queue = Some(state);
        }
        self
    }

    async fn run(mut self) {
        loop {
            let now = Instant::now();
            self.take_jobs(now);
            self.take_results(now);
            let stop = self.shared.stop.get().copied();
            let mut released = Vec::new();
            self.grace
                .due(now, stop.is_some(), |job| released.push(job));
            for (app, event, routes) in released {
                self.route(app, &event, &routes, now);
            }
            let mut ready = Vec::new();
            if stop.is_some() {
                self.batcher.flush(|b| ready.push(b));
            } else {
                self.batcher.poll_due(now, |b| ready.push(b));
            }
            for batch in ready {
                self.deliver(batch, None);
            }
            while let Some(start) = self.scheduler.poll_start(now) {
                self.start(start);
            }
            if let Some(c) = &mut self.consumer {
                c.take();
                c.take_results(now);
                c.start_due(now, stop.is_some());
            }
            if let Some(deadline) = stop
                && (now >= deadline || self.idle())
            {
                self.close_queue(deadline).await;
                return;
            }
            let wake_at = [
                self.batcher.next_deadline(),
                self.scheduler.next_deadline(),
                self.grace.next_deadline(),
                self.consumer.as_ref().and_then(Consumer::next_deadline),
                stop,
            ]
            .into_iter()
            .flatten()
            .min();
            self.wait(wake_at, stop.is_some()).await;
        }
    }

    /// Nothing left to do before exiting: no local delivery, nothing waiting to be
    /// appended, no attempt of a queued job running.
    fn idle(&self) -> bool {
        self.scheduler.is_idle()
            && self.queue.as_ref().is_none_or(|q| q.flushed())
            && self.consumer.as_ref().is_none_or(|c| c.running() == 0)
    }

    /// Lets the queue's command task flush and give the leases back, until `deadline`.
    async fn close_queue(&self, deadline: Instant) {
        let Some(q) = &self.queue else { return };
        q.closing.set(true);
        q.wake_commander();
        q.wake_reader();
        let closed = poll_fn(|cx| {
            if q.closed.get() {
                return Poll::Ready(());
            }
            *q.loop_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        });
        let _ = monoio::time::timeout_at(deadline.into(), closed).await;
    }

    /// Handles every queued job, in order: events go to their webhooks' batches.
    fn take_jobs(&mut self, now: Instant) {
        if let Some(job) = self.stash.get_mut().take() {
            self.handle(job, now);
        }
        while !self.closed {
            match self.jobs.try_recv() {
                Ok(job) => self.handle(job, now),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.closed = true;
                    self.shared
                        .request_stop(now + self.settings.request_timeout);
                }
            }
        }
    }

    fn handle(&mut self, job: Job, now: Instant) {
        match job {
            Job::Event {
                app,
                event,
                routes,
                graced,
            } => {
                if !graced {
                    self.route(app, &event, &routes, now);
                    return;
                }
                match self.grace.offer((app, event, routes), now) {
                    Offered::Now((app, event, routes)) => self.route(app, &event, &routes, now),
                    Offered::Held => {}
                    Offered::Cancelled { vacate, back } => {
                        // Neither is sent: their copies leave the queue count.
                        for (app, event, routes) in [vacate, back] {
                            let copies =
                                routes.matching(app, event.kind(), event.channel()).count();
                            self.shared.queued.fetch_sub(copies, Ordering::Relaxed);
                            self.shared
                                .suppressed
                                .fetch_add(copies as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
            Job::Define { first, app } => self.define(first, &app),
        }
    }

    /// Adds webhooks `first..`; the indexes come in order, so `first` is the list's end.
    fn define(&mut self, first: usize, app: &AppHooks) {
        debug_assert_eq!(
            first,
            self.hooks.len(),
            "webhook indexes are handed out in order"
        );
        self.hooks.extend(hooks(app));
        self.batcher.grow(self.hooks.len());
        self.scheduler.grow(self.hooks.len());
    }

    /// Puts `event` in the batch of each of `app`'s webhooks `routes` name for it (the
    /// routes its copies were counted under).
    fn route(&mut self, app: usize, event: &Event, routes: &Routes, now: Instant) {
        let channel = event.channel();
        let mut encoded: Option<Bytes> = None;
        for hook in routes.matching(app, event.kind(), event.channel()) {
            if self.hooks.get(hook).is_none_or(|h| h.target.is_err()) {
                self.shared.unsupported.fetch_add(1, Ordering::Relaxed);
                self.shared.resolve(&self.shared.failed, 1);
                continue;
            }
            let event = encoded.get_or_insert_with(|| event.encode()).clone();
            if let Some(batch) = self.batcher.push(hook, event, now) {
                self.deliver(batch, Some(channel));
            }
        }
    }

    /// Turns a batch into a signed request and queues its delivery, or with the redis
    /// queue its append. `channel`: the channel of a batch of one event, which orders it
    /// per channel in the queue (batches of many are ordered per webhook).
    fn deliver(&mut self, batch: Batch, channel: Option<&str>) {
        let hook = &self.hooks[batch.hook];
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let body = encode_body(time_ms, &batch.events);
        let request = build_request(&hook.head, &signature(&hook.secret, &body), &body);
        if let Some(q) = &self.queue
            && q.settings.enqueue
        {
            let key = match channel.filter(|_| batch.events.len() == 1) {
                Some(ch) => format!("{}\n{ch}", hook.url),
                None => hook.url.clone(),
            };
            let partition = wire::partition_for(key.as_bytes(), q.settings.partitions);
            let job = wire::Job {
                url: hook.url.clone(),
                request: Bytes::from(request),
                key: Bytes::from(key),
                events: batch.events.len(),
                app: hook.app.clone(),
            };
            q.appends.borrow_mut().push_back((partition, job));
            q.wake_commander();
            return;
        }
        let _ = self
            .scheduler
            .add(batch.hook, Bytes::from(request), batch.events.len());
    }

    fn start(&self, start: Start) {
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        if start.attempt > 1 {
            self.shared.retries.fetch_add(1, Ordering::Relaxed);
        }
        let Ok(target) = self.hooks[start.hook].target.clone() else {
            // Unsupported webhooks never get a delivery (see `route`).
            self.finished.push(start.id, Err(AttemptError::Closed));
            return;
        };
        let finished = Rc::clone(&self.finished);
        let timeout = self.settings.request_timeout;
        monoio::spawn(async move {
            let result = monoio::time::timeout(timeout, post(&target, start.request))
                .await
                .unwrap_or(Err(AttemptError::Timeout));
            finished.push(start.id, result);
        });
    }

    fn take_results(&mut self, now: Instant) {
        let results = std::mem::take(&mut *self.finished.results.borrow_mut());
        for (id, result) in results {
            let delivered = matches!(result, Ok(200..=299));
            match self.scheduler.handle_outcome(id, delivered, now) {
                Some(Resolution::Delivered { hook, events }) => {
                    self.shared.resolve(&self.shared.delivered, events);
                    let hook = &mut self.hooks[hook];
                    if hook.failing {
                        hook.failing = false;
                        eprintln!("corecast: webhook {} delivers again", hook.url);
                    }
                }
                Some(Resolution::Failed { hook, events }) => {
                    self.shared.resolve(&self.shared.failed, events);
                    let hook = &mut self.hooks[hook];
                    if !hook.failing {
                        hook.failing = true;
                        let why = match result {
                            Ok(status) => format!("HTTP status {status}"),
                            Err(e) => e.to_string(),
                        };
                        eprintln!(
                            "corecast: webhook {} failed after {} attempts ({why}); further failures are counted, not logged",
                            hook.url, self.settings.max_attempts
                        );
                    }
                }
                Some(Resolution::Retry { .. }) | None => {}
            }
        }
    }

    /// Sleeps until a job or a result comes in, a stop is requested, or `until`.
    async fn wait(&self, until: Option<Instant>, stopping: bool) {
        let ready = poll_fn(|cx| {
            let consumed = self
                .consumer
                .as_ref()
                .is_some_and(|c| !c.finished.results.borrow().is_empty());
            let queue_woke = self
                .queue
                .as_ref()
                .is_some_and(|q| q.loop_woken.replace(false));
            if !self.finished.results.borrow().is_empty() || consumed || queue_woke {
                return Poll::Ready(());
            }
            *self.finished.waker.borrow_mut() = Some(cx.waker().clone());
            if let Some(c) = &self.consumer {
                *c.finished.waker.borrow_mut() = Some(cx.waker().clone());
            }
            if let Some(q) = &self.queue {
                *q.loop_waker.borrow_mut() = Some(cx.waker().clone());
            }
            self.shared.waker.register(cx.waker());
            self.shared.sleeping.store(true, Ordering::SeqCst);
            let has_job = !self.closed
                && match self.jobs.try_recv() {
                    Ok(job) => {
                        *self.stash.borrow_mut() = Some(job);
                        true
                    }
                    // `take_jobs` sees it too and stops polling `jobs`.
                    Err(TryRecvError::Disconnected) => true,
                    Err(TryRecvError::Empty) => false,
                };
            if has_job || (!stopping && self.shared.stopping()) {
                self.shared.sleeping.store(false, Ordering::SeqCst);
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        match until {
            Some(at) => {
                let _ = monoio::time::timeout_at(at.into(), ready).await;
            }
            None => ready.await,
        }
    }
}

/// One attempt: connect, send `request`, read the status code.
pub(crate) async fn post(target: &HttpTarget, request: Bytes) -> Result<u16, AttemptError> {
    let mut stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(AttemptError::Connect)?;
    let (written, _) = stream.write_all(request).await;
    written.map_err(AttemptError::Io)?;
    let mut head = Vec::new();
    loop {
        let (read, buf) = stream.read(Vec::with_capacity(1024)).await;
        let n = read.map_err(AttemptError::Io)?;
        if n == 0 {
            return Err(AttemptError::Closed);
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(status) = parse_status(&head)? {
            return Ok(status);
        }
    }
}
