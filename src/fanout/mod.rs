//! The N x N mesh of wait-free SPSC rings between shards, and the envelope they carry.
//!
//! Every shard owns one producer towards each other shard and one consumer from each.
//! A consumer that finds its rings empty parks its task; the producer that next pushes
//! wakes it through a socket-pair bell its runtime polls, so an idle shard never spins.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use rtrb::{Consumer, Producer, RingBuffer};

use crate::app::AppIdx;
use crate::protocol::SocketId;

/// What one shard asks another to do.
#[derive(Debug)]
pub enum Envelope {
    /// Write `frame` (already encoded, shared by refcount) to every local subscriber of
    /// `channel` except the socket `except`.
    Publish {
        app: AppIdx,
        channel: Arc<str>,
        frame: Bytes,
        except: Option<SocketId>,
        /// An app event on a cache channel: keep it as the channel's last event.
        cache: bool,
        /// When it was published, for the delivery latency histogram.
        at: std::time::Instant,
    },
    /// To a presence channel's home shard: a socket on shard `from` joins as `user_id`.
    PresenceJoin {
        app: AppIdx,
        channel: Arc<str>,
        user_id: Arc<str>,
        /// `user_info` as JSON text.
        user_info: Arc<str>,
        from: usize,
        socket: SocketRef,
    },
    /// From the home shard: the join's outcome, a `subscription_succeeded` frame with the
    /// roster, or the error frame that refuses it.
    PresenceJoined {
        app: AppIdx,
        channel: Arc<str>,
        user_id: Arc<str>,
        socket: SocketRef,
        outcome: Result<Bytes, Bytes>,
    },
    /// To the home shard: one socket of `user_id` left the channel.
    PresenceLeave {
        app: AppIdx,
        channel: Arc<str>,
        user_id: Arc<str>,
    },
    /// A scatter-gather read: answer shard `from` with this shard's part.
    Query {
        from: usize,
        id: u64,
        app: AppIdx,
        query: Query,
    },
    /// This shard's part of query `id`.
    Reply { id: u64, reply: QueryReply },
    /// To the home shard: `channel` became occupied (+1) or vacated (-1) on one shard.
    Occupancy {
        app: AppIdx,
        channel: Arc<str>,
        delta: i8,
    },
    /// To the redis bridge: a socket joins a presence channel; `new_on_node` when it is
    /// the user's first socket on this node. The bridge answers shard `from` with
    /// `PresenceJoined`, and the home shard with `RosterUndo` if the cluster refuses.
    ClusterJoin {
        app: AppIdx,
        channel: Arc<str>,
        user_id: Arc<str>,
        user_info: Arc<str>,
        new_on_node: bool,
        from: usize,
        home: usize,
        socket: SocketRef,
    },
    /// To the redis bridge: the user's last socket on this node left the channel.
    ClusterLeave {
        app: AppIdx,
        channel: Arc<str>,
        user_id: Arc<str>,
    },
    /// From the redis bridge to a home shard: forget a join the cluster refused.
    RosterUndo {
        app: AppIdx,
        channel: Arc<str>,
        user_id: Arc<str>,
    },
    /// To the redis bridge: this node's subscriptions to `channel` changed by `delta`.
    SubscriptionDelta {
        app: AppIdx,
        channel: Arc<str>,
        delta: i32,
    },
    /// To the redis bridge (interest routing): shard `from` got its first local
    /// subscriber of `channel` (`on`), or lost its last (`!on`).
    Interest {
        app: AppIdx,
        channel: Arc<str>,
        from: usize,
        on: bool,
    },
    /// From the redis bridge: this node listens to `channel` in Redis now, so events
    /// published anywhere reach it; `last` is a cache channel's last event, if Redis has
    /// one. Held subscription confirmations go out.
    InterestReady {
        app: AppIdx,
        channel: Arc<str>,
        last: Option<Bytes>,
    },
    /// From the redis bridge after (re)connecting: send your rosters and counts.
    RosterDump,
    /// A shard's rosters (`app, channel, user, info`) and local subscription counts.
    RosterEntries {
        members: Vec<RosterEntry>,
        channels: Vec<(AppIdx, Arc<str>, u64)>,
    },
    /// Close every local socket signed in as `user_id` (4009).
    TerminateUser { app: AppIdx, user_id: Arc<str> },
    /// To the redis bridge: shard `from` needs `need` more tokens of a cluster-wide limit
    /// of `app` than this node holds; the bridge answers with `Leased`.
    Lease {
        from: usize,
        id: u64,
        app: AppIdx,
        kind: LeaseKind,
        need: u64,
    },
    /// From the redis bridge: the answer to lease request `id`.
    Leased { id: u64, verdict: LeaseVerdict },
    /// To a channel's home shard (apps with subscription counts): this shard's
    /// subscriptions to `channel` changed by `delta`.
    CountDelta {
        app: AppIdx,
        channel: Arc<str>,
        delta: i32,
    },
    /// From a home shard to the redis bridge: this node has `count` subscriptions to
    /// `channel` now (coalesced), for the other nodes' subscription counts.
    NodeCount {
        app: AppIdx,
        channel: Arc<str>,
        count: u64,
    },
    /// From the redis bridge to a channel's home shard: the other nodes hold `remote`
    /// subscriptions to `channel`.
    RemoteCount {
        app: AppIdx,
        channel: Arc<str>,
        remote: u64,
    },
    /// To a user's home shard (apps with watchlist events): this shard gained its first
    /// (`+1`) or lost its last (`-1`) signed-in socket of `user_id`.
    UserSockets {
        app: AppIdx,
        user_id: Arc<str>,
        delta: i8,
    },
    /// From a user's home shard to the redis bridge: the node gained its first or lost
    /// its last signed-in socket of `user_id`; Redis decides for the cluster.
    NodeUser {
        app: AppIdx,
        user_id: Arc<str>,
        online: bool,
    },
    /// To every shard: `user_id` came online (its first signed-in socket anywhere) or
    /// went offline (its last one went); watchers of it are told.
    UserOnline {
        app: AppIdx,
        user_id: Arc<str>,
        online: bool,
    },
    /// To the redis bridge: which of `users` are online in the cluster, for the initial
    /// watchlist state of `socket` on shard `from`.
    WatchQuery {
        app: AppIdx,
        users: Vec<Arc<str>>,
        from: usize,
        socket: SocketRef,
    },
    /// From the redis bridge: the initial watchlist frame for `socket`.
    WatchState { socket: SocketRef, frame: Bytes },
}

/// Which cluster-wide limit a lease is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseKind {
    /// Connection slots of `max_connections`.
    Connections,
    /// Points of `max_backend_events_per_sec` in unix second `second`.
    BackendEvents { second: u64 },
    /// Requests of `max_read_req_per_sec` in unix second `second`.
    ReadRequests { second: u64 },
}

/// How the redis bridge answered a lease request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseVerdict {
    /// The tokens asked for are the requester's (more may have been added to the node's
    /// lease for later requests).
    Granted,
    /// The cluster is at its limit.
    Refused,
    /// Redis is unreachable: the node decides alone (see the limit's documentation).
    Unavailable,
}

/// The home shard of `channel` among `shards`: FNV-1a of app and name. Its roster,
/// occupancy and subscription count live there; the redis bridge uses it too.
#[must_use]
pub fn home_shard(app: AppIdx, channel: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in app.0.to_le_bytes().iter().chain(channel.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// One presence member of a shard's roster: app, channel, user id, `user_info` JSON.
pub type RosterEntry = (AppIdx, Arc<str>, Arc<str>, Arc<str>);

/// A socket on a given shard: its slab slot and the serial that tells reuse apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketRef {
    pub key: usize,
    pub serial: u64,
    pub socket_id: SocketId,
}

/// What a REST read asks every shard.
#[derive(Debug, Clone)]
pub enum Query {
    /// Local channels whose names start with the prefix, and rosters this shard is home to.
    Channels { prefix: Arc<str> },
    /// One channel's local subscriber count and, on its home shard, its users.
    Channel { name: Arc<str> },
}

/// One shard's part of a query.
#[derive(Debug, Clone, Default)]
pub struct QueryReply {
    pub channels: Vec<ChannelPart>,
}

/// What one shard knows of one channel.
#[derive(Debug, Clone)]
pub struct ChannelPart {
    pub name: Arc<str>,
    /// Local subscriptions.
    pub subscriptions: u64,
    /// The members, when this shard is the channel's home.
    pub users: Option<Vec<Arc<str>>>,
}

/// The wake-up side of a shard's inbox, shared with every producer.
///
/// A producer wakes a sleeping consumer by writing one byte to a socket pair whose other
/// end the consumer's runtime polls through io_uring. Its completion is reaped even while
/// that runtime is busy with other tasks, which a cross-thread task waker is not.
#[derive(Debug)]
struct Signal {
    /// The write end of the consumer's bell.
    bell: std::os::unix::net::UnixStream,
    /// Set by the consumer just before it parks; a producer that clears it rings.
    sleeping: AtomicBool,
    /// Set by [`InboxWaker::poke`]: wake up although the rings are empty.
    poked: AtomicBool,
}

impl Signal {
    fn ring(&self) {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.bell);
        // SAFETY: a one-byte send from a static buffer; a full socket (EAGAIN) means the
        // consumer has a wake-up pending already.
        unsafe {
            libc::send(
                fd,
                b"!".as_ptr().cast(),
                1,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
    }
}

/// Wakes a shard's inbox from any thread without sending an envelope (shutdown).
#[derive(Clone, Debug)]
pub struct InboxWaker(Arc<Signal>);

impl InboxWaker {
    /// Makes the shard's inbox loop run once.
    pub fn poke(&self) {
        self.0.poked.store(true, Ordering::SeqCst);
        self.0.sleeping.store(false, Ordering::SeqCst);
        self.0.ring();
    }
}

/// A shard's producers, one per other shard (`None` at its own index).
pub struct Outbox {
    targets: Vec<Option<(Producer<Envelope>, Arc<Signal>)>>,
}

/// A shard's consumers, one per other shard.
pub struct Inbox {
    rings: Vec<Consumer<Envelope>>,
    signal: Arc<Signal>,
    /// The read end of the bell, until the consumer's runtime takes it.
    bell: Option<std::os::unix::net::UnixStream>,
}

/// The read end of an inbox's bell inside the consumer's runtime (not `Send`, so it is
/// made on the consumer's thread: `Bell::default()` there).
#[derive(Default)]
pub struct Bell(Option<monoio::net::UnixStream>);

impl Bell {
    /// Waits for a ring of the bell (after [`Inbox::ready_or_sleep`] said no), then
    /// empties it.
    pub async fn wait(&self) {
        match &self.0 {
            Some(listener) => {
                let _ = listener.readable(false).await;
                let fd = std::os::fd::AsRawFd::as_raw_fd(listener);
                let mut sink = [0u8; 64];
                // SAFETY: `sink` is valid for writes of its length; drains the bell.
                while unsafe {
                    libc::recv(fd, sink.as_mut_ptr().cast(), sink.len(), libc::MSG_DONTWAIT)
                } > 0
                {}
            }
            // No bell (it could not be registered): poll gently instead.
            None => monoio::time::sleep(std::time::Duration::from_millis(1)).await,
        }
    }
}

/// Builds the mesh for `shards` shards with rings of `capacity` envelopes; element `i` is
/// shard `i`'s outbox and inbox.
#[must_use]
pub fn mesh(shards: usize, capacity: usize) -> Vec<(Outbox, Inbox)> {
    let mut bells = Vec::with_capacity(shards);
    let signals: Vec<Arc<Signal>> = (0..shards)
        .map(|_| {
            // A socket pair is the one resource here that cannot be had, so failing to
            // make one is fatal at start-up rather than a silent loss of wake-ups.
            let (tx, rx) =
                std::os::unix::net::UnixStream::pair().expect("socketpair for a shard's bell");
            let _ = tx.set_nonblocking(true);
            let _ = rx.set_nonblocking(true);
            bells.push(rx);
            Arc::new(Signal {
                bell: tx,
                sleeping: AtomicBool::new(false),
                poked: AtomicBool::new(false),
            })
        })
        .collect();
    let mut bells = bells.into_iter();
    let mut outboxes: Vec<Outbox> = (0..shards)
        .map(|_| Outbox {
            targets: (0..shards).map(|_| None).collect(),
        })
        .collect();
    let mut inboxes: Vec<Inbox> = signals
        .iter()
        .map(|signal| Inbox {
            rings: Vec::new(),
            signal: Arc::clone(signal),
            bell: bells.next(),
        })
        .collect();
    for (from, outbox) in outboxes.iter_mut().enumerate() {
        for (to, (inbox, signal)) in inboxes.iter_mut().zip(&signals).enumerate() {
            if from == to {
                continue;
            }
            let (producer, consumer) = RingBuffer::new(capacity);
            outbox.targets[to] = Some((producer, Arc::clone(signal)));
            inbox.rings.push(consumer);
        }
    }
    outboxes.into_iter().zip(inboxes).collect()
}

impl Outbox {
    /// Pushes `make()` towards every target (all other shards, and the redis bridge when
    /// it is in the mesh); returns how many rings were full.
    pub fn push_all(&mut self, make: impl Fn() -> Envelope) -> u64 {
        let mut full = 0;
        for (producer, signal) in self.targets.iter_mut().flatten() {
            if producer.push(make()).is_err() {
                full += 1;
            } else if signal.sleeping.swap(false, Ordering::SeqCst) {
                signal.ring();
            }
        }
        full
    }

    /// The fewest free slots in any ring this outbox feeds (room for that many
    /// broadcasts).
    #[must_use]
    pub fn min_free(&self) -> usize {
        self.targets
            .iter()
            .flatten()
            .map(|(p, _)| p.slots())
            .min()
            .unwrap_or(usize::MAX)
    }

    /// Pushes `envelope` towards shard `to` and wakes it if it sleeps. A full ring hands
    /// the envelope back: the caller decides whether to wait or to drop and count.
    pub fn push(&mut self, to: usize, envelope: Envelope) -> Result<(), Envelope> {
        let Some(Some((producer, signal))) = self.targets.get_mut(to) else {
            return Err(envelope);
        };
        producer
            .push(envelope)
            .map_err(|rtrb::PushError::Full(e)| e)?;
        if signal.sleeping.swap(false, Ordering::SeqCst) {
            signal.ring();
        }
        Ok(())
    }
}

impl Inbox {
    /// A handle other threads use to wake this inbox.
    #[must_use]
    pub fn waker(&self) -> InboxWaker {
        InboxWaker(Arc::clone(&self.signal))
    }

    /// Pops up to `max` envelopes, oldest first per ring, and hands each to `f`.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(Envelope)) -> usize {
        let mut n = 0;
        for ring in &mut self.rings {
            while n < max {
                match ring.pop() {
                    Ok(envelope) => {
                        f(envelope);
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
        }
        n
    }

    /// Waits until some ring holds an envelope (or the inbox was poked). Must be called
    /// on the consumer's runtime.
    pub async fn ready(&mut self, listener: &mut Bell) {
        while !self.ready_or_sleep(listener) {
            listener.wait().await;
        }
    }

    /// True when some ring holds an envelope (or the inbox was poked); otherwise marks the
    /// consumer asleep, so the next producer rings `listener`, and returns false: then
    /// await [`Bell::wait`] (without holding the inbox) and ask again.
    pub fn ready_or_sleep(&mut self, listener: &mut Bell) -> bool {
        if self.has_items() {
            return true;
        }
        self.signal.sleeping.store(true, Ordering::SeqCst);
        if self.has_items() {
            self.signal.sleeping.store(false, Ordering::SeqCst);
            return true;
        }
        if listener.0.is_none()
            && let Some(bell) = self.bell.take()
        {
            listener.0 = monoio::net::UnixStream::from_std(bell).ok();
        }
        false
    }

    /// Takes up to `max` envelopes in causal order: rings are read until a pass finds
    /// them all empty, so everything pushed before any envelope taken is taken too, and
    /// publishes that came through different rings are put in the order they entered
    /// the mesh (`at`). Without that, two publishes one client made in turn through two
    /// shards could be passed on in the wrong order.
    pub fn drain_ordered(&mut self, max: usize, out: &mut Vec<Envelope>) -> usize {
        let start = out.len();
        let mut rings_used = 0;
        loop {
            let before = out.len();
            for ring in &mut self.rings {
                let ring_before = out.len();
                while out.len() - start < max {
                    match ring.pop() {
                        Ok(envelope) => out.push(envelope),
                        Err(_) => break,
                    }
                }
                if out.len() > ring_before {
                    rings_used += 1;
                }
            }
            if out.len() == before || out.len() - start >= max {
                break;
            }
        }
        if rings_used > 1 {
            out[start..].sort_by_key(|e| match e {
                Envelope::Publish { at, .. } => Some(*at),
                _ => None,
            });
        }
        out.len() - start
    }

    /// Envelopes waiting in all rings (the ring-depth gauge).
    #[must_use]
    pub fn depth(&self) -> usize {
        self.rings.iter().map(Consumer::slots).sum()
    }

    fn has_items(&self) -> bool {
        self.signal.poked.swap(false, Ordering::SeqCst) || self.rings.iter().any(|r| !r.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(n: u64) -> Envelope {
        Envelope::Publish {
            app: AppIdx(0),
            channel: Arc::from("c"),
            frame: Bytes::from(n.to_string()),
            except: None,
            cache: false,
            at: std::time::Instant::now(),
        }
    }

    #[test]
    fn drain_ordered_puts_publishes_from_different_rings_in_publish_order() {
        let mut shards = mesh(3, 8);
        // Shard 1 publishes first, then shard 0: a drain that reads shard 0's ring first
        // would hand them on the wrong way round.
        shards[1].0.push(2, publish(1)).expect("room");
        shards[0].0.push(2, publish(2)).expect("room");
        shards[1].0.push(2, publish(3)).expect("room");
        let mut out = Vec::new();
        assert_eq!(shards[2].1.drain_ordered(100, &mut out), 3);
        let frames: Vec<Bytes> = out
            .into_iter()
            .filter_map(|e| match e {
                Envelope::Publish { frame, .. } => Some(frame),
                _ => None,
            })
            .collect();
        assert_eq!(frames, ["1", "2", "3"].map(Bytes::from));
    }

    #[test]
    fn mesh_delivers_in_order_between_every_pair() {
        let mut shards = mesh(3, 8);
        for (outbox, _) in &mut shards {
            for n in 0..3 {
                assert_eq!(outbox.push_all(|| publish(n)), 0, "no ring is full");
            }
        }
        for (_, inbox) in &mut shards {
            let mut seen = Vec::new();
            inbox.drain(100, |e| {
                if let Envelope::Publish { frame, .. } = e {
                    seen.push(frame);
                }
            });
            assert_eq!(seen.len(), 6);
            assert_eq!(
                &seen[..3],
                &[Bytes::from("0"), Bytes::from("1"), Bytes::from("2")]
            );
        }
    }

    #[test]
    fn full_ring_hands_the_envelope_back() {
        let mut shards = mesh(2, 1);
        assert!(shards[0].0.push(1, publish(1)).is_ok());
        assert!(shards[0].0.push(1, publish(2)).is_err());
    }

    #[test]
    fn parked_consumer_is_woken_by_another_thread() {
        let mut shards = mesh(2, 4);
        let (mut producer_side, _) = shards.remove(0);
        let (_, inbox) = shards.remove(0);
        let handle = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(producer_side.push(1, publish(1)).is_ok());
        });
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut inbox = inbox;
            inbox.ready(&mut Bell::default()).await;
        });
        handle.join().expect("producer thread");
    }
}
