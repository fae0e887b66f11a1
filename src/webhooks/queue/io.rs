//! The queue's two tasks on the sender thread's runtime, each with its own Redis
//! connection, so a blocking read never holds up an append or an acknowledgement:
//!
//! - the command task appends jobs, acknowledges and dead-letters them, runs the lease
//!   script, claims the pending jobs of partitions it takes over and reads the depths;
//! - the reader task blocks in `XREADGROUP` on the partitions this node owns.
//!
//! They talk with the sender's loop through [`State`] (same thread, `RefCell`s and
//! wakers). A call on a connection is never raced against a timer: the tasks only wait on
//! [`State`] with timeouts, so a connection never goes out of step.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::Bytes;

use super::wire::{self, GROUP, Job};
use super::{QueueSettings, lease};
use crate::redis::client::{Backoff, RedisError, Reply};
use crate::redis::link::Link;
use crate::webhooks::shared::Shared;

/// Most jobs one append pipeline writes, and one read takes.
const BATCH: usize = 256;
/// Jobs held by the loop (read, not yet resolved) past which the reader pauses.
const MAX_HELD: usize = 2048;
/// Longest time between two lease rounds (and depth readings).
const LEASE_ROUND: Duration = Duration::from_secs(1);
/// `MAXLEN ~` of the dead-letter stream.
const DEAD_MAX_LENGTH: &str = "100000";

/// A job read from a partition, as the loop sends it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub partition: u16,
    pub id: Bytes,
    pub job: Job,
    /// Attempts other nodes made already (from the delivery count).
    pub attempts: u32,
}

/// A job given up, for the dead-letter stream.
#[derive(Debug)]
pub struct Dead {
    pub incoming: Incoming,
    pub attempts: u32,
    pub error: String,
}

/// What the loop and the two tasks share, on the sender thread.
pub struct State {
    pub settings: QueueSettings,
    pub shared: Arc<Shared>,
    /// Jobs to append, each with its event copies.
    pub appends: RefCell<VecDeque<(u16, Job)>>,
    /// Jobs to acknowledge and delete.
    pub acks: RefCell<Vec<(u16, Bytes)>>,
    pub dead: RefCell<Vec<Dead>>,
    /// Jobs read or claimed, for the loop.
    pub inbox: RefCell<VecDeque<Incoming>>,
    /// Jobs the loop holds (gate and attempts), for the reader's pause.
    pub held: Cell<usize>,
    /// The partitions this node owns, and a count of changes.
    pub owned: RefCell<Vec<u16>>,
    pub owned_changes: Cell<u64>,
    /// The loop asks the tasks to finish: the command task flushes, gives its leases
    /// back and sets `closed`.
    pub closing: Cell<bool>,
    pub closed: Cell<bool>,
    commander: RefCell<Option<Waker>>,
    reader: RefCell<Option<Waker>>,
    pub loop_waker: RefCell<Option<Waker>>,
    /// Set by every wake-up of the loop, taken by its wait.
    pub loop_woken: Cell<bool>,
}

impl State {
    pub fn new(settings: QueueSettings, shared: Arc<Shared>) -> Rc<Self> {
        Rc::new(Self {
            settings,
            shared,
            appends: RefCell::default(),
            acks: RefCell::default(),
            dead: RefCell::default(),
            inbox: RefCell::default(),
            held: Cell::new(0),
            owned: RefCell::default(),
            owned_changes: Cell::new(0),
            closing: Cell::new(false),
            closed: Cell::new(false),
            commander: RefCell::default(),
            reader: RefCell::default(),
            loop_waker: RefCell::default(),
            loop_woken: Cell::new(false),
        })
    }

    /// Starts the tasks (the reader only on a consuming node).
    pub fn spawn(self: &Rc<Self>) {
        monoio::spawn(command_task(Rc::clone(self)));
        if self.settings.consume {
            monoio::spawn(reader_task(Rc::clone(self)));
        }
    }

    pub fn wake_commander(&self) {
        if let Some(w) = self.commander.borrow_mut().take() {
            w.wake();
        }
    }

    pub fn wake_reader(&self) {
        if let Some(w) = self.reader.borrow_mut().take() {
            w.wake();
        }
    }

    fn wake_loop(&self) {
        self.loop_woken.set(true);
        if let Some(w) = self.loop_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Nothing waits to be written to Redis.
    pub fn flushed(&self) -> bool {
        self.appends.borrow().is_empty()
            && self.acks.borrow().is_empty()
            && self.dead.borrow().is_empty()
    }

    fn partition_key(&self, p: u16) -> Bytes {
        Bytes::from(self.settings.keys.partition(p))
    }
}

/// Waits until `ready()` or `timeout`, registering `slot` for wake-ups.
async fn wait_for(slot: &RefCell<Option<Waker>>, timeout: Duration, ready: impl Fn() -> bool) {
    let wait = poll_fn(|cx| {
        if ready() {
            return Poll::Ready(());
        }
        *slot.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    });
    let _ = monoio::time::timeout(timeout, wait).await;
}

/// Connects (with back-off) and makes sure the consumer group exists; logs the first
/// failure of a series only.
async fn connect(state: &State, backoff: &mut Backoff) -> Link {
    let mut logged = false;
    loop {
        match Link::connect(&state.settings.at).await {
            Ok(mut link) => {
                create_groups(state, &mut link).await;
                backoff.reset();
                return link;
            }
            Err(e) => {
                if !logged {
                    eprintln!("corecast: webhook queue: cannot connect to Redis: {e}; retrying");
                    logged = true;
                }
                monoio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// `XGROUP CREATE ... MKSTREAM` on every partition; an existing group is fine.
async fn create_groups(state: &State, link: &mut Link) {
    for p in 0..state.settings.partitions {
        let key = state.partition_key(p);
        match link
            .call(&[
                b"XGROUP",
                b"CREATE",
                &key,
                GROUP.as_bytes(),
                b"0",
                b"MKSTREAM",
            ])
            .await
        {
            Ok(_) => {}
            Err(RedisError::Server(msg)) if msg.starts_with("BUSYGROUP") => {}
            Err(e) => {
                eprintln!("corecast: webhook queue: XGROUP CREATE {p}: {e}");
                return;
            }
        }
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn command_task(state: Rc<State>) {
    let mut backoff = Backoff::new(Duration::from_secs(2));
    let stats = &state.shared.queue;
    let tick_every =
        (state.settings.claim_timeout / 3).clamp(Duration::from_millis(100), LEASE_ROUND);
    let mut next_tick = Instant::now();
    let mut link: Option<Link> = None;
    loop {
        let conn = match &mut link {
            Some(l) => l,
            None => {
                stats.up.store(0, Ordering::Relaxed);
                let l = connect(&state, &mut backoff).await;
                stats.up.store(1, Ordering::Relaxed);
                eprintln!("corecast: webhook queue on {}", l.server());
                link.insert(l)
            }
        };
        let closing = state.closing.get();
        let result = async {
            flush(&state, conn).await?;
            if closing || Instant::now() >= next_tick {
                tick(&state, conn, closing).await?;
                next_tick = Instant::now() + tick_every;
            }
            Ok::<(), RedisError>(())
        }
        .await;
        if let Err(e) = result {
            eprintln!("corecast: webhook queue: Redis failed: {e}");
            link = None;
            if closing {
                // Leases expire by themselves; pending jobs are claimed by others.
                state.closed.set(true);
                state.wake_loop();
                return;
            }
            monoio::time::sleep(backoff.next_delay()).await;
            continue;
        }
        if closing && state.flushed() {
            state.closed.set(true);
            state.wake_loop();
            return;
        }
        let wait = next_tick.saturating_duration_since(Instant::now());
        wait_for(&state.commander, wait, || {
            !state.flushed() || state.closing.get()
        })
        .await;
    }
}

/// Writes pending appends, acks and dead letters in one pipeline per round; what fails
/// stays queued for the next.
async fn flush(state: &State, link: &mut Link) -> Result<(), RedisError> {
    let s = &state.settings;
    let maxlen = b(&s.max_length.to_string());
    while !state.flushed() {
        let appends: Vec<(u16, Job)> = {
            let mut q = state.appends.borrow_mut();
            let n = q.len().min(BATCH);
            q.drain(..n).collect()
        };
        let acks = std::mem::take(&mut *state.acks.borrow_mut());
        let dead = std::mem::take(&mut *state.dead.borrow_mut());
        let mut cmds: Vec<Vec<Bytes>> = Vec::new();
        for (p, job) in &appends {
            let mut cmd = vec![b("XADD"), state.partition_key(*p), b("MAXLEN"), b("~")];
            cmd.extend([maxlen.clone(), b("*")]);
            for (k, v) in job.fields() {
                cmd.extend([b(k), v]);
            }
            cmds.push(cmd);
        }
        for (p, id) in &acks {
            let key = state.partition_key(*p);
            cmds.push(vec![b("XACK"), key.clone(), b(GROUP), id.clone()]);
            cmds.push(vec![b("XDEL"), key, id.clone()]);
        }
        for d in &dead {
            let mut cmd = vec![b("XADD"), b(&s.keys.dead()), b("MAXLEN"), b("~")];
            cmd.extend([b(DEAD_MAX_LENGTH), b("*")]);
            for (k, v) in d.incoming.job.fields() {
                cmd.extend([b(k), v]);
            }
            cmd.extend([
                b("error"),
                b(&d.error),
                b("attempts"),
                b(&d.attempts.to_string()),
            ]);
            cmd.extend([b("source"), state.partition_key(d.incoming.partition)]);
            cmd.extend([b("source_id"), d.incoming.id.clone()]);
            cmds.push(cmd);
            let key = state.partition_key(d.incoming.partition);
            cmds.push(vec![
                b("XACK"),
                key.clone(),
                b(GROUP),
                d.incoming.id.clone(),
            ]);
            cmds.push(vec![b("XDEL"), key, d.incoming.id.clone()]);
        }
        let replies = match link.pipeline(&cmds).await {
            Ok(r) => r,
            Err(e) => {
                requeue(state, appends, acks, dead);
                state
                    .shared
                    .queue
                    .append_failures
                    .fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let stats = &state.shared.queue;
        let mut failed = Vec::new();
        for ((p, job), reply) in appends.into_iter().zip(&replies) {
            if let Reply::Error(msg) = reply {
                eprintln!("corecast: webhook queue: XADD failed: {msg}");
                failed.push((p, job));
            } else {
                state.shared.resolve(&stats.appended, job.events);
            }
        }
        stats.acked.fetch_add(acks.len() as u64, Ordering::Relaxed);
        stats
            .dead_letters
            .fetch_add(dead.len() as u64, Ordering::Relaxed);
        if !failed.is_empty() {
            stats.append_failures.fetch_add(1, Ordering::Relaxed);
            requeue(state, failed, Vec::new(), Vec::new());
            return Err(RedisError::Server("XADD refused".into()));
        }
    }
    state.wake_loop();
    Ok(())
}

fn requeue(state: &State, appends: Vec<(u16, Job)>, acks: Vec<(u16, Bytes)>, dead: Vec<Dead>) {
    let mut q = state.appends.borrow_mut();
    for a in appends.into_iter().rev() {
        q.push_front(a);
    }
    state.acks.borrow_mut().extend(acks);
    state.dead.borrow_mut().extend(dead);
}

/// A lease round (consuming nodes), claims for partitions taken over, and the depths.
async fn tick(state: &State, link: &mut Link, stop: bool) -> Result<(), RedisError> {
    let s = &state.settings;
    let stats = &state.shared.queue;
    if s.consume {
        let (owners, consumers) = (s.keys.owners(), s.keys.consumers());
        let ttl = s.claim_timeout.as_millis().to_string();
        let parts = s.partitions.to_string();
        let reply = link
            .call(&[
                b"EVAL",
                lease::SCRIPT.as_bytes(),
                b"2",
                owners.as_bytes(),
                consumers.as_bytes(),
                s.consumer.as_bytes(),
                ttl.as_bytes(),
                parts.as_bytes(),
                if stop { b"1" } else { b"0" },
            ])
            .await?;
        let now: Vec<u16> = match reply {
            Reply::Array(items) => items
                .iter()
                .filter_map(|r| match r {
                    Reply::Int(p) => u16::try_from(*p).ok(),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        // Partitions lost are dropped at once; one gained is handed to the reader only
        // once its pending jobs are claimed, so the claim (idle time 0) never takes a
        // job the reader just read. A claim that fails leaves it out, to retry next round.
        let before = state.owned.borrow().clone();
        let kept: Vec<u16> = before.iter().copied().filter(|p| now.contains(p)).collect();
        let gained: Vec<u16> = now
            .iter()
            .copied()
            .filter(|p| !before.contains(p))
            .collect();
        set_owned(state, kept);
        if !stop {
            for p in gained {
                claim(state, link, p).await?;
                let mut owned = state.owned.borrow().clone();
                owned.push(p);
                set_owned(state, owned);
            }
        }
    }
    let mut cmds: Vec<Vec<Bytes>> = (0..s.partitions)
        .map(|p| vec![b("XLEN"), state.partition_key(p)])
        .collect();
    cmds.push(vec![b("XLEN"), b(&s.keys.dead())]);
    let replies = link.pipeline(&cmds).await?;
    let len = |r: &Reply| match r {
        Reply::Int(n) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    };
    let (dead, parts) = replies
        .split_last()
        .map_or((0, &[][..]), |(d, p)| (len(d), p));
    stats
        .depth
        .store(parts.iter().map(len).sum(), Ordering::Relaxed);
    stats.dead_depth.store(dead, Ordering::Relaxed);
    Ok(())
}

/// Records the partitions owned now, telling the loop and the reader when they change.
fn set_owned(state: &State, owned: Vec<u16>) {
    if *state.owned.borrow() == owned {
        return;
    }
    let stats = &state.shared.queue;
    stats.owned.store(owned.len() as u64, Ordering::Relaxed);
    *state.owned.borrow_mut() = owned;
    state.owned_changes.set(state.owned_changes.get() + 1);
    state.wake_reader();
}

/// Takes over partition `p`'s pending jobs, oldest first, for the loop.
async fn claim(state: &State, link: &mut Link, p: u16) -> Result<(), RedisError> {
    let key = state.partition_key(p);
    let me = state.settings.consumer.as_bytes();
    let mut cursor = Bytes::from_static(b"0-0");
    let mut entries = Vec::new();
    loop {
        let count = BATCH.to_string();
        let reply = link
            .call(&[
                b"XAUTOCLAIM",
                &key,
                GROUP.as_bytes(),
                me,
                b"0",
                &cursor,
                b"COUNT",
                count.as_bytes(),
            ])
            .await?;
        let Some((next, got)) = wire::autoclaim_reply(&reply) else {
            break;
        };
        entries.extend(got);
        if &next[..] == b"0-0" {
            break;
        }
        cursor = next;
    }
    if entries.is_empty() {
        return Ok(());
    }
    let count = entries.len().to_string();
    let reply = link
        .call(&[
            b"XPENDING",
            &key,
            GROUP.as_bytes(),
            b"-",
            b"+",
            count.as_bytes(),
            me,
        ])
        .await?;
    let deliveries: AHashMap<Bytes, u32> = wire::pending_reply(&reply).into_iter().collect();
    state
        .shared
        .queue
        .claimed
        .fetch_add(entries.len() as u64, Ordering::Relaxed);
    eprintln!(
        "corecast: webhook queue: took over partition {p} with {} pending jobs",
        entries.len()
    );
    for e in entries {
        match e.job {
            Some(job) => {
                let done = deliveries.get(&e.id).map_or(0, |n| n.saturating_sub(1));
                state.inbox.borrow_mut().push_back(Incoming {
                    partition: p,
                    id: e.id,
                    job,
                    attempts: done,
                });
            }
            // Trimmed away, or not a job: nothing to send.
            None => state.acks.borrow_mut().push((p, e.id)),
        }
    }
    state.wake_loop();
    Ok(())
}

async fn reader_task(state: Rc<State>) {
    let mut backoff = Backoff::new(Duration::from_secs(2));
    let mut link: Option<Link> = None;
    let count = BATCH.to_string();
    loop {
        if state.closing.get() {
            return;
        }
        let room = || state.held.get() + state.inbox.borrow().len() < MAX_HELD;
        if state.owned.borrow().is_empty() || !room() {
            wait_for(&state.reader, Duration::from_secs(1), || {
                state.closing.get() || (!state.owned.borrow().is_empty() && room())
            })
            .await;
            continue;
        }
        let conn = match &mut link {
            Some(l) => l,
            None => link.insert(connect(&state, &mut backoff).await),
        };
        let owned = state.owned.borrow().clone();
        let keys: Vec<Bytes> = owned.iter().map(|&p| state.partition_key(p)).collect();
        let me = state.settings.consumer.as_bytes();
        let mut args: Vec<&[u8]> = vec![b"XREADGROUP", b"GROUP", GROUP.as_bytes(), me];
        args.extend([
            &b"COUNT"[..],
            count.as_bytes(),
            b"BLOCK",
            b"1000",
            b"STREAMS",
        ]);
        args.extend(keys.iter().map(|k| &k[..]));
        args.extend(keys.iter().map(|_| &b">"[..]));
        match conn.call(&args).await {
            Ok(reply) => {
                for (key, e) in wire::read_reply(&reply) {
                    let Some(p) = state.settings.keys.partition_of(&key) else {
                        continue;
                    };
                    match e.job {
                        Some(job) => state.inbox.borrow_mut().push_back(Incoming {
                            partition: p,
                            id: e.id,
                            job,
                            attempts: 0,
                        }),
                        None => {
                            state.acks.borrow_mut().push((p, e.id));
                            state.wake_commander();
                        }
                    }
                }
                state.wake_loop();
            }
            Err(RedisError::Server(msg)) if msg.starts_with("NOGROUP") => {
                // Redis lost the streams (a restart without persistence): recreate.
                create_groups(&state, conn).await;
            }
            Err(e) => {
                eprintln!("corecast: webhook queue: read failed: {e}");
                link = None;
                monoio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}
