//! Webhooks in Pusher's format: batching (pure) and sending (IO, on its own thread).
//!
//! A shard asks [`Webhooks::wants`] before building an event, then [`Webhooks::send`]s it;
//! `send` never blocks: it queues the event for the sender thread, or drops and counts it when
//! `max_queue` events already wait. The sender routes each event to the app's webhooks whose
//! `event_types` and filter match, batches per webhook, signs each body
//! (`X-Pusher-Signature` = hex HMAC-SHA256 of the body with the app secret, `X-Pusher-Key` =
//! app key) and POSTs it, retrying failures with capped exponential backoff.
//!
//! With the redis queue (`SOKETI_QUEUE_DRIVER=redis`, [`WebhookSettings::queue`]) the
//! signed requests are appended to Redis streams instead of sent, and the thread also
//! sends the jobs of the partitions it leases, from any node (see [`queue`]). Worker
//! mode runs this thread alone.
//!
//! Counts are per event copy: an event two webhooks want counts twice. Batches to one
//! webhook may arrive out of order when one is retried; receivers can order by `time_ms`.
//!
//! # Apps that change at run time
//!
//! [`Webhooks::start`] takes a fixed app list; [`Webhooks::start_dynamic`] starts empty and
//! [`Webhooks::set_app`] defines or replaces an app's key, secret and webhooks while events
//! flow. The handles read the routes through one `ArcSwap` (no lock on the event path); a
//! change publishes new routes in which the app's webhooks have fresh indexes, after queuing
//! their definitions for the sender. An event goes to the webhooks of the routes it was
//! counted under: one sent before the change goes to the app's old webhooks, with the old
//! key and secret, even if it is batched or retried after it; one sent after goes to the
//! new ones. Other apps' batches, retries and attempts are untouched. Indexes are never
//! reused: the sender keeps a replaced webhook's entry (its URL, secret and request head)
//! until it exits, so each replacement costs a little memory and a slot its loop walks;
//! setting an app to the definition it has costs nothing.
//!
//! # Layout
//!
//! - `event.rs`: [`Event`] and its JSON form.
//! - `route.rs`: which webhooks want an event.
//! - `batch.rs`: per-webhook batches, the body and its signature (sans-IO).
//! - `request.rs`: URL parsing, request bytes, status line (sans-IO).
//! - `schedule.rs`: attempts, backoff and the in-flight bound (sans-IO).
//! - `shared.rs`: the wake-up, stop request and counters shared with the sender thread.
//! - `sender.rs`: the thread, its monoio runtime, and the HTTP attempt.
//! - `queue/`: the durable queue in Redis streams (`SOKETI_QUEUE_DRIVER=redis`).

mod batch;
mod event;
mod grace;
pub mod queue;
mod request;
mod route;
mod schedule;
mod sender;
mod shared;

use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};

pub use batch::{Batch, Batcher, MAX_BATCH_EVENTS, encode_body, signature};
pub use event::Event;
pub use queue::{QueueCounts, QueueSettings};
pub use request::UrlError;

use crate::config::{AppConfig, Config, WebhookConfig, WebhookEvent};
use route::Routes;
use shared::{Job, Shared};

/// What an app's webhooks need: key, secret, and its webhook configs.
#[derive(Debug, Clone, PartialEq)]
pub struct AppHooks {
    /// The app id, named in log lines.
    pub app_id: String,
    /// Sent as `X-Pusher-Key`.
    pub key: String,
    /// Signs every body (`X-Pusher-Signature`).
    pub secret: String,
    /// Where its events go.
    pub hooks: Vec<WebhookConfig>,
}

impl AppHooks {
    /// The webhook part of an app's config.
    #[must_use]
    pub fn from_config(app: &AppConfig) -> Self {
        Self {
            app_id: app.id.clone(),
            key: app.key.clone(),
            secret: app.secret.clone(),
            hooks: app.webhooks.clone(),
        }
    }
}

/// How the sender batches, retries and bounds its work.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Collect events per webhook for `batching_window` and send them in one body
    /// (`SOKETI_WEBHOOKS_BATCHING`); off: one request per event, as Soketi's default.
    pub batching: bool,
    /// How long a batch collects (`SOKETI_WEBHOOKS_BATCHING_DURATION`), 50 ms.
    pub batching_window: Duration,
    /// Attempts per request, the first included, 5.
    pub max_attempts: u32,
    /// Wait before the first retry, 500 ms; doubles after each failure.
    pub first_retry: Duration,
    /// Longest wait between two attempts, 10 s.
    pub max_retry_delay: Duration,
    /// Limit on one attempt: connect, send, and the status line, 5 s.
    pub request_timeout: Duration,
    /// Events (per webhook copy) waiting or in flight before new ones are dropped and
    /// counted, 10 000. Bounds the sender's memory when receivers are slow or down.
    pub max_queue: usize,
    /// Attempts running at once, 64.
    pub max_in_flight: usize,
    /// Attempts running at once to one webhook, 16, so a hanging receiver holds at most
    /// this many slots and the other webhooks keep theirs.
    pub max_in_flight_per_hook: usize,
    /// How long `channel_vacated` and `member_removed` wait for a return that cancels
    /// them (`CORECAST_WEBHOOK_VACATE_DELAY_MS`); zero sends them at once.
    pub vacate_delay: Duration,
    /// The durable queue (`SOKETI_QUEUE_DRIVER=redis`); `None` sends from memory.
    pub queue: Option<QueueSettings>,
}

impl WebhookSettings {
    /// The defaults listed on each field.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            batching: false,
            batching_window: Duration::from_millis(50),
            max_attempts: 5,
            first_retry: Duration::from_millis(500),
            max_retry_delay: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            max_queue: 10_000,
            max_in_flight: 64,
            max_in_flight_per_hook: 16,
            vacate_delay: Duration::ZERO,
            queue: None,
        }
    }

    /// The defaults, with batching as `config` says.
    #[must_use]
    pub fn from_config(config: &Config) -> Self {
        Self {
            batching: config.webhooks_batching,
            batching_window: config.webhooks_batching_duration,
            vacate_delay: config.webhook_vacate_delay,
            queue: QueueSettings::from_config(config),
            ..Self::new()
        }
    }
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters for metrics, per event copy (one per webhook an event goes to).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// HTTP requests attempted, retries included.
    pub requests: u64,
    /// Events in requests answered 2xx.
    pub delivered: u64,
    /// Events given up: every attempt failed, or the URL is unsupported.
    pub failed: u64,
    /// Events not queued: the queue was full, or the sender was stopping.
    pub dropped: u64,
    /// Attempts after the first.
    pub retries: u64,
    /// Of `failed`, events for webhooks whose URL cannot be used (`https://` for now).
    pub unsupported: u64,
    /// Events queued, batched or in flight right now.
    pub queued: u64,
    /// Events dropped by the vacate grace: a `channel_vacated` / `member_removed` and
    /// the `channel_occupied` / `member_added` of the return within it.
    pub suppressed: u64,
}

/// Cheap cloneable handle used by shard threads; `send` never blocks.
#[derive(Clone, Default)]
pub struct Webhooks {
    /// `None`: disabled; every call is a no-op.
    inner: Option<Arc<Handle>>,
}

struct Handle {
    jobs: Sender<Job>,
    shared: Arc<Shared>,
    /// Read once by every `wants` and `send`; replaced whole by `set_app`.
    routes: ArcSwap<Routes>,
    /// Each app's current definition, by app index. `set_app` holds it while it queues the
    /// new webhooks and publishes their routes, so the order of the indexes, of the queue
    /// and of the publications agree.
    apps: Mutex<Vec<Option<AppHooks>>>,
    max_queue: usize,
    /// Whether the sender uses the redis queue.
    queue: bool,
    /// How long the sender may finish its work when every handle is dropped unstopped.
    drop_grace: Duration,
    /// Joined by the first `flush_and_stop`.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.request_stop(Instant::now() + self.drop_grace);
    }
}

impl Webhooks {
    /// Starts the sender thread (its own monoio runtime) for these apps (index = app index
    /// in the config's app list). Without any webhook, and without a queue to consume,
    /// returns [`Webhooks::disabled`], on which [`Webhooks::set_app`] does nothing: an
    /// app table filled or changed at run time needs [`Webhooks::start_dynamic`].
    pub fn start(apps: Vec<AppHooks>, settings: WebhookSettings) -> io::Result<Webhooks> {
        let consumes = settings.queue.as_ref().is_some_and(|q| q.consume);
        if !consumes && apps.iter().all(|a| a.hooks.is_empty()) {
            return Ok(Self::disabled());
        }
        Self::launch(apps, settings)
    }

    /// Starts the sender thread with no app yet, for an app table filled at run time with
    /// [`Webhooks::set_app`]. Until an app has a webhook, `wants` is false and `send` does
    /// nothing.
    pub fn start_dynamic(settings: WebhookSettings) -> io::Result<Webhooks> {
        Self::launch(Vec::new(), settings)
    }

    fn launch(apps: Vec<AppHooks>, settings: WebhookSettings) -> io::Result<Webhooks> {
        let routes = Routes::new(apps.iter().map(|a| a.hooks.as_slice()));
        let shared = Arc::new(Shared::default());
        let (jobs, rx) = mpsc::channel();
        let handle = Handle {
            jobs,
            shared: Arc::clone(&shared),
            routes: ArcSwap::from_pointee(routes),
            apps: Mutex::new(apps.iter().cloned().map(Some).collect()),
            max_queue: settings.max_queue,
            queue: settings.queue.is_some(),
            drop_grace: settings.request_timeout,
            thread: Mutex::new(None),
        };
        let thread = sender::spawn(apps, settings, shared, rx)?;
        *handle.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(thread);
        Ok(Self {
            inner: Some(Arc::new(handle)),
        })
    }

    /// A handle that sends nothing (apps without webhooks), so callers need no `Option`.
    #[must_use]
    pub fn disabled() -> Webhooks {
        Self { inner: None }
    }

    /// Defines app `app` (an index, as `wants` and `send` take) or replaces its key, secret
    /// and webhooks; apps between the last one known and `app` have no webhook until set.
    /// Every `wants` and `send` that starts after this returns sees the new webhooks.
    ///
    /// Events sent before still go where they were counted: to the app's previous webhooks,
    /// signed with the previous secret and carrying the previous key, whether they wait in
    /// a batch, a retry or an attempt. Other apps are not touched. Setting an app to the
    /// definition it has is a no-op. Callable from any thread; calls are serialized among
    /// themselves and never block `wants` or `send`. Does nothing on a [`Webhooks::disabled`]
    /// handle (as [`Webhooks::start`] returns without webhooks): use
    /// [`Webhooks::start_dynamic`] for apps that come at run time.
    pub fn set_app(&self, app: usize, hooks: AppHooks) {
        let Some(h) = &self.inner else { return };
        let mut apps = h.apps.lock().unwrap_or_else(PoisonError::into_inner);
        if apps.get(app).and_then(Option::as_ref) == Some(&hooks) {
            return;
        }
        let (routes, added) = h.routes.load().with_app(app, &hooks.hooks);
        if !added.is_empty() {
            // Queued before the routes naming the new indexes are published, so the sender
            // knows them before any event routed to them. Fails only once it has exited.
            let define = Job::Define {
                first: added.start,
                app: hooks.clone(),
            };
            if h.jobs.send(define).is_ok() {
                h.shared.notify();
            }
        }
        h.routes.store(Arc::new(routes));
        if app >= apps.len() {
            apps.resize_with(app + 1, || None);
        }
        apps[app] = Some(hooks);
    }

    /// Whether app `app` has any webhook interested in `kind` for `channel` (filters
    /// applied), so shards can skip building events nobody wants.
    #[must_use]
    pub fn wants(&self, app: usize, kind: WebhookEvent, channel: &str) -> bool {
        self.inner.as_ref().is_some_and(|h| {
            h.routes
                .load()
                .matching(app, kind, channel)
                .next()
                .is_some()
        })
    }

    /// Queues an event for app `app`; it goes to each of the app's webhooks whose
    /// event_types and filter match. Never blocks: past `max_queue` it is dropped and counted.
    pub fn send(&self, app: usize, event: Event) {
        self.queue(app, event, true);
    }

    /// [`Webhooks::send`] without the vacate grace: for `channel_vacated` and
    /// `member_removed` that already waited theirs (the redis bridge's, in Redis).
    pub fn send_now(&self, app: usize, event: Event) {
        self.queue(app, event, false);
    }

    fn queue(&self, app: usize, event: Event, graced: bool) {
        let Some(h) = &self.inner else { return };
        let routes = h.routes.load();
        let copies = routes.matching(app, event.kind(), event.channel()).count();
        if copies == 0 {
            return;
        }
        let shared = &h.shared;
        let queued = shared.queued.fetch_add(copies, Ordering::Relaxed);
        if shared.stopping() || queued + copies > h.max_queue {
            shared.queued.fetch_sub(copies, Ordering::Relaxed);
            shared.dropped.fetch_add(copies as u64, Ordering::Relaxed);
            return;
        }
        // The job carries the routes its copies were counted under.
        let routes = Guard::into_inner(routes);
        let job = Job::Event {
            app,
            event,
            routes,
            graced,
        };
        if h.jobs.send(job).is_err() {
            shared.queued.fetch_sub(copies, Ordering::Relaxed);
            shared.dropped.fetch_add(copies as u64, Ordering::Relaxed);
            return;
        }
        shared.notify();
    }

    /// Counters for metrics: requests, delivered, failed, dropped, retries.
    #[must_use]
    pub fn stats(&self) -> WebhookStats {
        self.inner
            .as_ref()
            .map_or_else(WebhookStats::default, |h| h.shared.stats())
    }

    /// The redis queue's counters, `None` with the sync driver or when disabled.
    #[must_use]
    pub fn queue_counts(&self) -> Option<QueueCounts> {
        let h = self.inner.as_ref()?;
        h.queue.then(|| h.shared.queue.counts())
    }

    /// Stops taking events and tries to deliver what is queued within `grace`, without
    /// waiting for batch windows; returns how many events were left undelivered (still
    /// queued or in flight at the deadline; those that failed earlier are in
    /// [`WebhookStats::failed`]). Later calls, and calls on clones, return 0 at once after
    /// the first one finished.
    pub fn flush_and_stop(&self, grace: Duration) -> usize {
        let Some(h) = &self.inner else { return 0 };
        h.shared.request_stop(Instant::now() + grace);
        let thread = h
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(thread) = thread else { return 0 };
        if thread.join().is_err() {
            eprintln!("corecast: the webhook sender thread panicked");
        }
        h.shared.queued.load(Ordering::Relaxed)
    }
}
