//! Fan-out on a shard: queue a shared frame on every local subscriber, hand the same
//! frame to the other shards through the rings, and flush each touched socket once.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::Shard;
use super::conn::{self, Flushed};
use crate::app::AppIdx;
use crate::fanout::{Envelope, Inbox};
use crate::metrics::Counter;
use crate::protocol::{ErrorCode, SocketId, error_frame, is_cache_channel};
use crate::registry::ConnKey;
use crate::ws::close_frame;

#[cfg(feature = "count-alloc")]
use crate::perf::alloc::delivery_scope;

/// Without the counting allocator there is nothing to scope.
#[cfg(not(feature = "count-alloc"))]
struct DeliveryScope;

#[cfg(not(feature = "count-alloc"))]
fn delivery_scope() -> DeliveryScope {
    DeliveryScope
}

/// Envelopes handled between two flushes.
const DRAIN_BATCH: usize = 256;

impl Shard {
    /// Publishes `frame` on `channel` to subscribers on every shard except `except`.
    /// Local sockets are queued now; call [`Shard::flush_dirty`] when the batch is done.
    /// `cache`: an app event, kept as the channel's last event on cache channels.
    pub fn publish(
        &self,
        app: AppIdx,
        channel: &str,
        frame: &Bytes,
        except: Option<SocketId>,
        cache: bool,
    ) {
        self.deliver_local(app, channel, frame, except);
        let cache = cache && is_cache_channel(channel);
        if cache {
            self.remember(app, channel, frame);
        }
        if self.shards < 2 && self.bridge.is_none() {
            return;
        }
        let channel: Arc<str> = Arc::from(channel);
        let at = Instant::now();
        let full = self.outbox.borrow_mut().push_all(|| Envelope::Publish {
            app,
            channel: Arc::clone(&channel),
            frame: frame.clone(),
            except,
            cache,
            at,
        });
        if full > 0 {
            self.metrics.inc(Counter::FanoutDropped, full);
        }
    }

    /// Sends `envelope` to shard `to`, counting it when the ring is full.
    pub fn send_envelope(&self, to: usize, envelope: Envelope) {
        if self.outbox.borrow_mut().push(to, envelope).is_err() {
            self.metrics.inc(Counter::FanoutDropped, 1);
        }
    }

    /// Keeps `frame` as the last event of a cache channel.
    pub fn remember(&self, app: AppIdx, channel: &str, frame: &Bytes) {
        self.cache
            .borrow_mut()
            .insert((app, Arc::from(channel)), (frame.clone(), Instant::now()));
    }

    /// Queues `frame` on each local subscriber of `channel`.
    pub fn deliver_local(
        &self,
        app: AppIdx,
        channel: &str,
        frame: &Bytes,
        except: Option<SocketId>,
    ) {
        let registry = self.registry.borrow();
        let Some(subs) = registry.subscribers(app, channel) else {
            return;
        };
        let mut evict = Vec::new();
        let mut queued = 0u64;
        let mut queued_bytes = 0u64;
        let mut compressed = super::compressed::Compressed::new(self, frame);
        {
            let _scope = delivery_scope();
            let mut conns = self.conns.borrow_mut();
            let mut dirty = self.dirty.borrow_mut();
            let limit = self.config.max_outbound_bytes;
            for &key in subs {
                let Some(c) = conns.get_mut(key) else {
                    continue;
                };
                if c.closing.is_some() || Some(c.socket_id) == except {
                    continue;
                }
                let frame = compressed.for_conn(c.deflate);
                queued_bytes += frame.len() as u64;
                if !c.out.push(frame.clone(), limit) {
                    evict.push(key);
                    continue;
                }
                queued += 1;
                if !c.dirty {
                    c.dirty = true;
                    dirty.push(key);
                }
            }
        }
        let app_index = app.0 as usize;
        self.metrics.add_ws_sent(app_index, queued, queued_bytes);
        drop(registry);
        for key in evict {
            self.evict_slow_reader(key);
        }
    }

    /// Puts `key` on the list of sockets to flush.
    pub(super) fn mark_dirty(&self, key: ConnKey) {
        if let Some(c) = self.conns.borrow_mut().get_mut(key)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.borrow_mut().push(key);
        }
    }

    /// Queues one frame for one connection (replies, errors).
    pub fn send_to(&self, key: ConnKey, frame: Bytes) {
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns.get_mut(key) else { return };
        if c.closing.is_some() {
            return;
        }
        let limit = self.config.max_outbound_bytes;
        self.metrics
            .add_ws_sent(c.app.0 as usize, 1, frame.len() as u64);
        let queued = c.out.push(frame, limit);
        if queued && !c.dirty {
            c.dirty = true;
            self.dirty.borrow_mut().push(key);
        }
        drop(conns);
        if !queued {
            self.evict_slow_reader(key);
        }
    }

    /// Starts closing a connection: `pusher:error` (for Pusher codes), then a close frame,
    /// then the write side is shut once the queue drains. The client's close or the sweep
    /// ends it.
    pub fn begin_close(&self, key: ConnKey, code: u16, pusher: Option<ErrorCode>) {
        if let Some(err) = pusher {
            self.send_to(key, error_frame(err, None));
        }
        let reason = pusher.map_or("", ErrorCode::message);
        self.send_to(key, close_frame(code, reason));
        if let Some(c) = self.conns.borrow_mut().get_mut(key) {
            c.closing = Some(Instant::now());
        }
    }

    /// Drops a connection that cannot keep up: its queue is discarded, it gets 4100 if
    /// the socket takes it, and both directions are shut so its reader task ends.
    pub fn evict_slow_reader(&self, key: ConnKey) {
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns.get_mut(key) else { return };
        if c.closing.is_some() && c.out.is_empty() {
            return;
        }
        self.metrics.inc(Counter::SlowReaderDisconnects, 1);
        c.out.clear();
        let code = ErrorCode::OverCapacity;
        c.out.push(error_frame(code, None), usize::MAX);
        c.out
            .push(close_frame(code.code(), code.message()), usize::MAX);
        c.closing = Some(Instant::now());
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*c.stream);
        let _ = c.flush();
        c.out.clear();
        conn::shutdown(fd, libc::SHUT_RDWR);
    }

    /// Hands every queued frame to the kernel; sockets that are full get a writer task.
    ///
    /// With a send ring (`CORECAST_SEND_BATCH`), every plain socket with one frame queued
    /// (nearly every delivery) is one entry of a batch submitted with a single syscall;
    /// what the batch leaves (partial sends, several frames, TLS) goes direct.
    pub fn flush_dirty(self: &Rc<Self>) {
        let _scope = delivery_scope();
        if self.dirty.borrow().is_empty() {
            // Taking the empty vector would drop the capacity it keeps for the next batch.
            return;
        }
        let keys = std::mem::take(&mut *self.dirty.borrow_mut());
        let mut conns = self.conns.borrow_mut();
        let mut ring = self.send_batch.borrow_mut();
        for (i, &key) in keys.iter().enumerate() {
            let Some(c) = conns.get_mut(key) else {
                continue;
            };
            c.dirty = false;
            if c.writer_active {
                continue;
            }
            if let Some(batch) = ring.as_mut()
                && c.tls.is_none()
                && let Some(frame) = c.out.lone()
            {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&*c.stream);
                // SAFETY: the frame is held by the connection's queue, which nothing
                // touches until the batch is submitted below (`conns` stays borrowed).
                unsafe { batch.push(fd, frame, i) };
                if !batch.has_room() {
                    self.finish_batch(batch, &keys, &mut conns);
                }
                continue;
            }
            let result = c.flush();
            self.flushed(key, c, result);
        }
        if let Some(batch) = ring.as_mut() {
            if batch.queued() > 0 {
                self.finish_batch(batch, &keys, &mut conns);
            }
            if batch.is_broken() {
                *ring = None;
            }
        }
        drop(ring);
        drop(conns);
        // Give the vector back so its capacity is reused.
        let mut keys = keys;
        keys.clear();
        let mut dirty = self.dirty.borrow_mut();
        if dirty.is_empty() {
            *dirty = keys;
        }
    }

    /// Submits `batch` and settles each connection in it: done, partly sent (the rest goes
    /// direct), full (a writer task) or failed.
    fn finish_batch(
        self: &Rc<Self>,
        batch: &mut super::sendbatch::SendBatch,
        keys: &[ConnKey],
        conns: &mut slab::Slab<conn::Conn>,
    ) {
        for &(i, result) in batch.submit() {
            let key = keys[i];
            let Some(c) = conns.get_mut(key) else {
                continue;
            };
            let flushed = match result {
                n if n >= 0 => {
                    c.out.sent(n as usize);
                    if c.out.is_empty() {
                        Flushed::Done
                    } else {
                        c.flush()
                    }
                }
                n if n == -libc::EAGAIN => Flushed::Blocked,
                n if n == -libc::EINTR || n == -libc::ECANCELED => c.flush(),
                _ => Flushed::Failed,
            };
            self.flushed(key, c, flushed);
        }
    }

    /// Acts on what a flush of `c` achieved.
    fn flushed(self: &Rc<Self>, key: ConnKey, c: &mut conn::Conn, result: Flushed) {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*c.stream);
        match result {
            Flushed::Done => {
                if c.closing.is_some() {
                    conn::shutdown(fd, libc::SHUT_WR);
                }
            }
            Flushed::Blocked => {
                c.writer_active = true;
                monoio::spawn(writer(Rc::clone(self), key, c.serial, Rc::clone(&c.stream)));
            }
            Flushed::Failed => conn::shutdown(fd, libc::SHUT_RDWR),
        }
    }
}

/// Waits for a full socket to drain, then flushes the rest of its queue.
async fn writer(shard: Rc<Shard>, key: ConnKey, serial: u64, stream: Rc<monoio::net::TcpStream>) {
    loop {
        let ready = stream.writable(false).await;
        let mut conns = shard.conns.borrow_mut();
        let Some(c) = conns.get_mut(key).filter(|c| c.serial == serial) else {
            return;
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*stream);
        let result = if ready.is_ok() {
            c.flush()
        } else {
            Flushed::Failed
        };
        match result {
            Flushed::Blocked => continue,
            Flushed::Done => {
                c.writer_active = false;
                if c.closing.is_some() {
                    conn::shutdown(fd, libc::SHUT_WR);
                }
                return;
            }
            Flushed::Failed => {
                c.writer_active = false;
                conn::shutdown(fd, libc::SHUT_RDWR);
                return;
            }
        }
    }
}

/// Drains the rings from other shards for as long as the shard lives.
pub(super) async fn inbox_loop(shard: Rc<Shard>) {
    let mut bell = crate::fanout::Bell::default();
    let mut batch = Vec::new();
    loop {
        // The inbox is borrowed only between waits: `catch_up` reads it too.
        while !shard
            .inbox
            .borrow_mut()
            .as_mut()
            .is_some_and(|inbox| inbox.ready_or_sleep(&mut bell))
        {
            bell.wait().await;
        }
        super::lifecycle::notice(&shard);
        shard.take_app_messages();
        loop {
            let n = shard.take_inbox(DRAIN_BATCH, &mut batch);
            for envelope in batch.drain(..) {
                shard.handle_envelope(envelope);
            }
            shard.flush_dirty();
            let depth = shard.inbox.borrow().as_ref().map_or(0, Inbox::depth);
            shard.metrics.set_ring_depth(depth as u64);
            if n < DRAIN_BATCH {
                break;
            }
            // Let readers and the accept loop run between large batches.
            super::yield_now().await;
        }
    }
}

impl Shard {
    /// Takes up to `max` envelopes from the rings, in causal order.
    fn take_inbox(&self, max: usize, batch: &mut Vec<Envelope>) -> usize {
        self.inbox
            .borrow_mut()
            .as_mut()
            .map_or(0, |inbox| inbox.drain_ordered(max, batch))
    }

    /// Hands on what other shards published before this shard publishes for a client
    /// (REST, client events): a client whose requests land on different shards sees its
    /// events in the order it sent them.
    pub fn catch_up(&self) {
        let mut batch = Vec::new();
        self.take_inbox(DRAIN_BATCH, &mut batch);
        for envelope in batch {
            self.handle_envelope(envelope);
        }
    }
}
