//! The app-manager thread: apps read from a database ([`super::source`]) off the shards.
//!
//! A shard that meets a key or id it has no fresh answer for sends a [`Request`] and goes
//! on serving its other sockets; this thread answers through the shard's [`Mailbox`] and
//! rings the shard's bell. Requests that arrive together for the same key or id are
//! answered by one query. Found apps are kept for the cache TTL, misses for
//! [`MISS_TTL`]; known apps are re-read every refresh interval, so a changed row (a rotated
//! secret, new limits) takes effect without a restart, and a disabled or deleted app's
//! open sockets are closed (4003 / 4001).
//!
//! While the database is unreachable, known apps keep working from their last row (stale
//! answers, counted), unknown ones get [`Outcome::Unavailable`] (a retryable refusal),
//! and the thread tries again with back-off, logging each transition once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ahash::AHashMap;

use super::source::{AppSource, Lookup};
use super::{AppIdx, AppTable};
use crate::config::AppConfig;
use crate::fanout::InboxWaker;
use crate::protocol::ErrorCode;
use crate::webhooks::{AppHooks, Webhooks};

/// How long a key or id that matched no row is answered "missing" without a query, so a
/// flood of connections with a wrong key is not a flood of queries.
pub const MISS_TTL: Duration = Duration::from_secs(2);
/// How often known apps are re-read when the app cache is off.
pub const UNCACHED_REFRESH: Duration = Duration::from_secs(5);
/// Decided answers kept to match requests made meanwhile; pruned past this many.
const ANSWERED_PRUNE_AT: usize = 4096;
/// Longest wait between attempts while the database is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The app (possibly disabled: the shard checks its row).
    Found(AppIdx),
    /// No such app.
    Missing,
    /// The database cannot say now: refuse in a way the client retries.
    Unavailable,
}

/// A shard asks for an app.
#[derive(Debug)]
pub struct Request {
    pub by: Lookup,
    pub shard: usize,
    /// The shard's own number for the waiting task.
    pub ticket: u64,
    /// When the shard asked: a request made before an answer for the same key or id was
    /// decided gets that answer, without another query.
    pub at: Instant,
}

/// What the app manager tells a shard.
#[derive(Debug)]
pub enum ToShard {
    /// The answer to a request, and how long the shard may reuse it.
    Resolved {
        ticket: u64,
        outcome: Outcome,
        fresh_for: Duration,
    },
    /// Close every socket of `app` with `code` (the app was disabled or deleted).
    Close { app: AppIdx, code: ErrorCode },
}

/// A shard's inbox from the app manager.
#[derive(Debug, Default)]
pub struct Mailbox {
    queue: Mutex<Vec<ToShard>>,
}

impl Mailbox {
    /// Takes everything delivered so far.
    pub fn take(&self) -> Vec<ToShard> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn put(&self, message: ToShard) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(message);
    }
}

/// Counters the metrics scrape reads.
#[derive(Debug, Default)]
pub struct ManagerStats {
    /// Lookups asked by shards.
    pub lookups: AtomicU64,
    /// Answered from the manager's cache without a query.
    pub cache_hits: AtomicU64,
    /// Answered by the query of another request for the same key or id.
    pub coalesced: AtomicU64,
    /// Queries that found no row.
    pub misses: AtomicU64,
    /// Queries that failed (database unreachable or a bad row).
    pub errors: AtomicU64,
    /// Known apps answered from their last row while the database was unreachable.
    pub stale: AtomicU64,
    /// Queries sent for lookups, and the time of all queries in microseconds.
    pub queries: AtomicU64,
    /// Queries sent to re-read known apps.
    pub refreshes: AtomicU64,
    pub query_micros: AtomicU64,
    /// 1 while the database answers.
    pub up: AtomicU64,
}

/// How the app manager caches and refreshes.
#[derive(Debug, Clone, Copy)]
pub struct ManagerSettings {
    /// How long a found app is reused without a query; zero: every lookup queries.
    pub cache_ttl: Duration,
}

/// What "keep until restart" means as a duration.
const FOREVER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl ManagerSettings {
    /// Soketi's cache settings: off, a TTL, or (TTL -1) until restart.
    #[must_use]
    pub fn from_config(config: &crate::config::AppManagerConfig) -> Self {
        let cache_ttl = match (config.cache_enabled, config.cache_ttl) {
            (false, _) => Duration::ZERO,
            (true, Some(ttl)) => ttl,
            (true, None) => FOREVER,
        };
        Self { cache_ttl }
    }

    fn refresh_every(self) -> Duration {
        if self.cache_ttl.is_zero() {
            UNCACHED_REFRESH
        } else {
            self.cache_ttl
        }
    }
}

/// Each shard's mailbox and bell, by shard index.
pub type ShardLinks = Vec<(Arc<Mailbox>, InboxWaker)>;

/// Starts the app-manager thread; it ends when every request sender is dropped.
pub fn spawn(
    source: Box<dyn AppSource>,
    table: Arc<AppTable>,
    settings: ManagerSettings,
    requests: Receiver<Request>,
    shards: ShardLinks,
    webhooks: Webhooks,
    stats: Arc<ManagerStats>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("corecast-apps".into())
        .spawn(move || {
            let mut manager = Manager {
                source,
                table,
                settings,
                shards,
                webhooks,
                stats,
                by_key: AHashMap::new(),
                by_id: AHashMap::new(),
                slots: AHashMap::new(),
                answered: AHashMap::new(),
                retry_at: None,
                backoff: Duration::from_millis(100),
                was_up: None,
            };
            manager.run(&requests);
        })
}

/// A cached answer.
#[derive(Debug, Clone, Copy)]
struct Entry {
    outcome: Outcome,
    at: Instant,
}

struct Manager {
    source: Box<dyn AppSource>,
    table: Arc<AppTable>,
    settings: ManagerSettings,
    shards: ShardLinks,
    /// Told each app's webhooks as its row arrives or changes.
    webhooks: Webhooks,
    stats: Arc<ManagerStats>,
    by_key: AHashMap<String, Entry>,
    by_id: AHashMap<String, Entry>,
    /// Every app ever put in the table, by id.
    slots: AHashMap<String, AppIdx>,
    /// The last answer decided for each key or id, with when.
    answered: AHashMap<Lookup, (Outcome, Duration, Instant)>,
    /// While the database is unreachable: when to query it again.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The last state logged.
    was_up: Option<bool>,
}

impl Manager {
    fn run(&mut self, requests: &Receiver<Request>) {
        let mut next_refresh = Instant::now() + self.settings.refresh_every();
        loop {
            let wait = next_refresh.saturating_duration_since(Instant::now());
            let first = match requests.recv_timeout(wait) {
                Ok(r) => Some(r),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch: Vec<Request> = first.into_iter().collect();
            batch.extend(requests.try_iter());
            self.answer(batch);
            if Instant::now() >= next_refresh {
                self.refresh();
                next_refresh = Instant::now() + self.settings.refresh_every();
            }
        }
    }

    /// Answers a batch of requests: one query per distinct key or id, none for a request
    /// made while the answer for its key or id was being decided.
    fn answer(&mut self, batch: Vec<Request>) {
        if batch.is_empty() {
            return;
        }
        self.stats
            .lookups
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut woken = vec![false; self.shards.len()];
        let mut groups: AHashMap<Lookup, Vec<(usize, u64)>> = AHashMap::new();
        for r in batch {
            match self.answered.get(&r.by) {
                Some(&(outcome, fresh_for, decided)) if r.at <= decided => {
                    self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                    self.reply(r.shard, r.ticket, outcome, fresh_for, &mut woken);
                }
                _ => groups.entry(r.by).or_default().push((r.shard, r.ticket)),
            }
        }
        for (by, waiters) in groups {
            let (outcome, fresh_for) = self.resolve(&by);
            self.stats
                .coalesced
                .fetch_add(waiters.len() as u64 - 1, Ordering::Relaxed);
            for (shard, ticket) in waiters {
                self.reply(shard, ticket, outcome, fresh_for, &mut woken);
            }
            self.answered
                .insert(by, (outcome, fresh_for, Instant::now()));
        }
        if self.answered.len() > ANSWERED_PRUNE_AT {
            // A request waits at most a few seconds: older answers can match none.
            self.answered
                .retain(|_, (_, _, decided)| decided.elapsed() < Duration::from_secs(10));
        }
        for (i, woken) in woken.into_iter().enumerate() {
            if woken {
                self.shards[i].1.poke();
            }
        }
    }

    fn reply(
        &self,
        shard: usize,
        ticket: u64,
        outcome: Outcome,
        fresh_for: Duration,
        woken: &mut [bool],
    ) {
        if let Some((mailbox, _)) = self.shards.get(shard) {
            mailbox.put(ToShard::Resolved {
                ticket,
                outcome,
                fresh_for,
            });
            woken[shard] = true;
        }
    }

    fn cache(&self, by: &Lookup) -> Option<Entry> {
        match by {
            Lookup::Key(k) => self.by_key.get(k).copied(),
            Lookup::Id(i) => self.by_id.get(i).copied(),
        }
    }

    fn ttl(&self, outcome: Outcome) -> Duration {
        match outcome {
            Outcome::Found(_) => self.settings.cache_ttl,
            Outcome::Missing => MISS_TTL,
            Outcome::Unavailable => Duration::ZERO,
        }
    }

    /// The answer for one key or id, and how long it may be reused.
    fn resolve(&mut self, by: &Lookup) -> (Outcome, Duration) {
        let cached = self.cache(by);
        if let Some(e) = cached {
            let ttl = self.ttl(e.outcome);
            if e.at.elapsed() < ttl {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                return (e.outcome, ttl - e.at.elapsed());
            }
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return self.unreachable(cached);
        }
        match self.query(by, false) {
            Ok(Some(row)) => {
                let outcome = self
                    .upsert(row)
                    .map_or(Outcome::Unavailable, Outcome::Found);
                (outcome, self.ttl(outcome))
            }
            Ok(None) => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                let entry = Entry {
                    outcome: Outcome::Missing,
                    at: Instant::now(),
                };
                match by {
                    Lookup::Key(k) => self.by_key.insert(k.clone(), entry),
                    Lookup::Id(i) => self.by_id.insert(i.clone(), entry),
                };
                (Outcome::Missing, MISS_TTL)
            }
            Err(()) => self.unreachable(cached),
        }
    }

    /// The answer while the database cannot be asked: a known app's last row, else a
    /// retryable refusal.
    fn unreachable(&self, cached: Option<Entry>) -> (Outcome, Duration) {
        match cached.map(|e| e.outcome) {
            Some(Outcome::Found(idx)) => {
                self.stats.stale.fetch_add(1, Ordering::Relaxed);
                (Outcome::Found(idx), Duration::ZERO)
            }
            _ => (Outcome::Unavailable, Duration::ZERO),
        }
    }

    /// One query; `Err` when the database did not answer (state logged once).
    fn query(&mut self, by: &Lookup, refresh: bool) -> Result<Option<AppConfig>, ()> {
        let started = Instant::now();
        let result = self.source.find(by);
        let counter = if refresh {
            &self.stats.refreshes
        } else {
            &self.stats.queries
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.stats
            .query_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match result {
            Ok(row) => {
                self.set_up(true, "");
                Ok(row)
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.set_up(false, &e.to_string());
                Err(())
            }
        }
    }

    fn set_up(&mut self, up: bool, why: &str) {
        self.stats.up.store(u64::from(up), Ordering::Relaxed);
        if up {
            self.retry_at = None;
            self.backoff = Duration::from_millis(100);
        } else {
            self.retry_at = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
        if self.was_up != Some(up) {
            let name = self.source.name();
            if up {
                eprintln!("corecast: app manager: {name} answers");
            } else {
                eprintln!(
                    "corecast: app manager: {name} unreachable ({why}); known apps keep their last row, new keys are refused until it answers"
                );
            }
            self.was_up = Some(up);
        }
    }

    /// Puts a row in the table (a new slot, or the app's slot) and caches it by key and
    /// id; closes the app's sockets when the row disables it. `None`: the table is full.
    fn upsert(&mut self, row: AppConfig) -> Option<AppIdx> {
        let entry = |idx| Entry {
            outcome: Outcome::Found(idx),
            at: Instant::now(),
        };
        let idx = if let Some(&idx) = self.slots.get(&row.id) {
            let old = self.table.get(idx);
            let was_enabled = old.enabled && !self.table.is_deleted(idx);
            if old.key != row.key {
                self.by_key.remove(&old.key);
            }
            let disable = was_enabled && !row.enabled;
            if **old != row || self.table.is_deleted(idx) {
                drop(old);
                self.table.replace(idx, row.clone());
            }
            if disable {
                self.close(idx, ErrorCode::AppDisabled);
            }
            idx
        } else {
            let Some(idx) = self.table.insert(row.clone()) else {
                eprintln!(
                    "corecast: app manager: no room for app {} ({} apps, CORECAST_APP_MANAGER_MAX_APPS)",
                    row.id,
                    self.table.capacity()
                );
                return None;
            };
            self.slots.insert(row.id.clone(), idx);
            idx
        };
        self.webhooks
            .set_app(idx.0 as usize, AppHooks::from_config(&row));
        self.by_key.insert(row.key, entry(idx));
        self.by_id.insert(row.id, entry(idx));
        Some(idx)
    }

    /// Re-reads every known app by id: changed rows replace the old, deleted apps are
    /// closed (4001).
    fn refresh(&mut self) {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let known: Vec<(String, AppIdx)> = self
            .slots
            .iter()
            .filter(|(_, idx)| !self.table.is_deleted(**idx))
            .map(|(id, idx)| (id.clone(), *idx))
            .collect();
        for (id, idx) in known {
            match self.query(&Lookup::Id(id.clone()), true) {
                Ok(Some(row)) if row.id == id => {
                    self.upsert(row);
                }
                Ok(_) => {
                    let key = self.table.get(idx).key.clone();
                    self.table.delete(idx);
                    self.by_id.remove(&id);
                    self.by_key.remove(&key);
                    self.close(idx, ErrorCode::AppDoesNotExist);
                }
                Err(()) => return,
            }
        }
    }

    /// Tells every shard to close the sockets of `app`.
    fn close(&self, app: AppIdx, code: ErrorCode) {
        eprintln!(
            "corecast: app manager: app {} {}; closing its connections ({})",
            self.table.id(app),
            if code == ErrorCode::AppDisabled {
                "was disabled"
            } else {
                "was deleted"
            },
            code.code()
        );
        for (mailbox, waker) in &self.shards {
            mailbox.put(ToShard::Close { app, code });
            waker.poke();
        }
    }
}

/// A shard's side of the app manager: where to send requests and where answers arrive.
#[derive(Debug)]
pub struct ShardClient {
    pub requests: Sender<Request>,
    pub mailbox: Arc<Mailbox>,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::app::source::SourceError;

    /// A database that takes `delay` per query and has one app, counting its queries.
    struct SlowTable {
        delay: Duration,
        queries: Arc<AtomicUsize>,
    }

    impl AppSource for SlowTable {
        fn find(&mut self, by: &Lookup) -> Result<Option<AppConfig>, SourceError> {
            self.queries.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            Ok(match by {
                Lookup::Key(k) if k == "k" => Some(AppConfig::new("a", "k", "s")),
                Lookup::Id(i) if i == "a" => Some(AppConfig::new("a", "k", "s")),
                _ => None,
            })
        }
        fn name(&self) -> &'static str {
            "slow"
        }
    }

    /// A manager without cache over [`SlowTable`], one shard; its request sender, the
    /// shard's mailbox and the query counter.
    fn manager(delay: Duration) -> (Sender<Request>, Arc<Mailbox>, Arc<AtomicUsize>) {
        let queries = Arc::new(AtomicUsize::new(0));
        let source = SlowTable {
            delay,
            queries: Arc::clone(&queries),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let mailbox = Arc::new(Mailbox::default());
        let links = crate::fanout::mesh(1, 16);
        let waker = links[0].1.waker();
        spawn(
            Box::new(source),
            Arc::new(AppTable::dynamic(4)),
            ManagerSettings {
                cache_ttl: Duration::ZERO,
            },
            rx,
            vec![(Arc::clone(&mailbox), waker)],
            Webhooks::disabled(),
            Arc::new(ManagerStats::default()),
        )
        .expect("thread");
        (tx, mailbox, queries)
    }

    fn ask(tx: &Sender<Request>, ticket: u64) {
        tx.send(Request {
            by: Lookup::Key("k".into()),
            shard: 0,
            ticket,
            at: Instant::now(),
        })
        .expect("manager runs");
    }

    /// Waits for `n` answers; their outcomes.
    fn answers(mailbox: &Mailbox, n: usize) -> Vec<Outcome> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            for m in mailbox.take() {
                if let ToShard::Resolved { outcome, .. } = m {
                    got.push(outcome);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        got
    }

    #[test]
    fn lookups_made_while_a_query_runs_share_its_answer() {
        let (tx, mailbox, queries) = manager(Duration::from_millis(200));
        ask(&tx, 0);
        std::thread::sleep(Duration::from_millis(50));
        for ticket in 1..20 {
            ask(&tx, ticket);
        }
        let got = answers(&mailbox, 20);
        assert_eq!(got, vec![Outcome::Found(AppIdx(0)); 20]);
        assert_eq!(
            queries.load(Ordering::SeqCst),
            1,
            "one query for 20 lookups"
        );
    }

    #[test]
    fn without_a_cache_a_later_lookup_queries_again() {
        let (tx, mailbox, queries) = manager(Duration::from_millis(1));
        ask(&tx, 0);
        assert_eq!(answers(&mailbox, 1), vec![Outcome::Found(AppIdx(0))]);
        ask(&tx, 1);
        assert_eq!(answers(&mailbox, 1), vec![Outcome::Found(AppIdx(0))]);
        assert_eq!(queries.load(Ordering::SeqCst), 2);
    }
}
