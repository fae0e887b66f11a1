//! Client threads: each runs one monoio runtime, opens its share of the
//! connections in waves, then either reads deliveries or just holds them open.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use monoio::io::{AsyncWriteRentExt, Canceller};

use super::ws::{self, Conn, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};

/// Per connection: connect, upgrade, subscribe.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long read tasks get to finish once cancelled.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A sequence number beyond this is garbage, not a reason to allocate.
const MAX_SEQ: u64 = 1 << 26;
/// Samples of unexpected things kept for the report.
const MAX_SAMPLES: usize = 3;

/// State every client thread and the main thread see.
pub struct Shared {
    /// Time zero for the `t=` field of every event.
    pub base: Instant,
    /// Deliveries received in `[win_start_ns, win_end_ns)` count and are timed.
    pub win_start_ns: AtomicU64,
    pub win_end_ns: AtomicU64,
    /// Tells the threads to stop reading and close their connections.
    pub stop: AtomicBool,
    /// Progress of the connect phase.
    pub opened: AtomicUsize,
    pub failed: AtomicUsize,
    /// Bench events received by all threads so far, updated every ~10 ms: tells the
    /// main thread when the tail of a run has stopped arriving.
    pub received: AtomicU64,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            base: Instant::now(),
            win_start_ns: AtomicU64::new(u64::MAX),
            win_end_ns: AtomicU64::new(u64::MAX),
            stop: AtomicBool::new(false),
            opened: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            received: AtomicU64::new(0),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// What the client threads do.
pub struct Plan {
    pub addr: SocketAddr,
    /// `/app/{key}?protocol=7&...`
    pub path: String,
    pub prefix: &'static str,
    pub channels: usize,
    pub connections: usize,
    pub threads: usize,
    /// Concurrent opens per wave, all threads together.
    pub batch: usize,
    /// Read deliveries (delivery scenario) or only hold the sockets.
    pub read: bool,
    /// Signs the subscriptions of `private-` channels (client-events scenario).
    pub auth: Option<ws::Auth>,
}

/// Thread to main thread.
pub enum Msg {
    /// The thread's connect phase is over.
    Connected {
        opened: usize,
        failed: usize,
    },
    Done(Box<ThreadReport>),
}

/// How one receiving connection ended and what it saw.
pub struct ConnResult {
    pub channel: usize,
    /// Distinct sequence numbers received.
    pub distinct: u64,
    pub dups: u64,
    /// Arrived after a higher sequence number on the same channel.
    pub reordered: u64,
    /// The first reordered delivery: (seq, highest seq already seen, latency µs).
    pub first_reorder: Option<(u64, u64, u64)>,
    /// One past the highest sequence number received: what is missing below it is a
    /// gap, what is missing above it never arrived before the end (the tail).
    pub next: u64,
    /// Bench events whose seq/time could not be parsed or were absurd.
    pub bogus: u64,
    pub end: End,
}

pub enum End {
    /// We stopped it: the normal case.
    Stopped,
    Eof,
    Close(u16),
    ReadError(String),
}

/// Everything one thread measured.
pub struct ThreadReport {
    pub open_errors: BTreeMap<&'static str, (usize, String)>,
    pub recv: Recv,
    pub conns: Vec<ConnResult>,
    /// Read tasks that did not finish within `JOIN_TIMEOUT` after cancel.
    pub stuck: usize,
    /// Held connections (memory, connect) the server had closed by the end.
    pub held_closed: usize,
    /// Held connections with unread bytes at the end (a close frame, a ping).
    pub held_unread: usize,
}

/// Delivery counters shared by the read tasks of one thread.
pub struct Recv {
    /// Microseconds from publish to receipt, deliveries in the window only.
    pub hist: Histogram<u64>,
    pub window: u64,
    pub total: u64,
    pub pings: u64,
    pub other: u64,
    pub other_samples: Vec<String>,
}

impl Recv {
    pub fn new() -> Recv {
        Recv {
            // Bounds are constants within hdrhistogram's limits.
            hist: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
            window: 0,
            total: 0,
            pings: 0,
            other: 0,
            other_samples: Vec::new(),
        }
    }
}

/// Starts `plan.threads` client threads; they report on the returned channel.
pub fn spawn(plan: Arc<Plan>, shared: Arc<Shared>) -> mpsc::Receiver<Msg> {
    let (tx, rx) = mpsc::channel();
    for t in 0..plan.threads {
        let (plan, shared, tx) = (plan.clone(), shared.clone(), tx.clone());
        std::thread::Builder::new()
            .name(format!("loadgen-client-{t}"))
            .spawn(move || {
                let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .with_entries(4096)
                    .enable_timer()
                    .build();
                match rt {
                    Ok(mut rt) => {
                        let report = rt.block_on(client_thread(t, plan, shared, tx.clone()));
                        let _ = tx.send(Msg::Done(Box::new(report)));
                    }
                    Err(e) => {
                        eprintln!("loadgen: client runtime: {e}");
                        let _ = tx.send(Msg::Connected {
                            opened: 0,
                            failed: 0,
                        });
                    }
                }
            })
            .expect("spawning a client thread");
    }
    rx
}

async fn client_thread(
    t: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Msg>,
) -> ThreadReport {
    let mine: Vec<usize> = (t..plan.connections).step_by(plan.threads).collect();
    let per_wave = plan.batch.div_ceil(plan.threads).max(1);
    let mut open_errors: BTreeMap<&'static str, (usize, String)> = BTreeMap::new();
    let mut conns: Vec<(usize, Conn)> = Vec::with_capacity(mine.len());
    for wave in mine.chunks(per_wave) {
        let handles: Vec<_> = wave
            .iter()
            .map(|&i| {
                let channel = format!("{}-{}", plan.prefix, i % plan.channels);
                let (addr, path, auth) = (plan.addr, plan.path.clone(), plan.auth.clone());
                monoio::spawn(async move {
                    let open = ws::open(addr, &path, &channel, auth.as_ref());
                    let r = monoio::time::timeout(OPEN_TIMEOUT, open);
                    (i, r.await)
                })
            })
            .collect();
        for h in handles {
            let (i, r) = h.await;
            let err = match r {
                Ok(Ok(mut conn)) => {
                    if !plan.read {
                        conn.frames.release();
                    }
                    conns.push((i, conn));
                    shared.opened.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Ok(Err(e)) => (e.stage, e.detail),
                Err(_) => ("timeout", format!("not subscribed within {OPEN_TIMEOUT:?}")),
            };
            shared.failed.fetch_add(1, Ordering::Relaxed);
            let entry = open_errors.entry(err.0).or_insert((0, err.1));
            entry.0 += 1;
        }
    }
    let failed = mine.len() - conns.len();
    let _ = tx.send(Msg::Connected {
        opened: conns.len(),
        failed,
    });

    let recv = Rc::new(RefCell::new(Recv::new()));
    let mut canceller = Canceller::new();
    let tasks: Vec<_> = if plan.read {
        conns
            .drain(..)
            .map(|(i, conn)| {
                let track = Track::new(i % plan.channels);
                let (recv, shared, cancel) = (recv.clone(), shared.clone(), canceller.handle());
                monoio::spawn(read_loop(conn, track, recv, shared, cancel))
            })
            .collect()
    } else {
        Vec::new()
    };

    let mut counted = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        monoio::time::sleep(Duration::from_millis(10)).await;
        let total = recv.borrow().total;
        shared
            .received
            .fetch_add(total - counted, Ordering::Relaxed);
        counted = total;
    }
    canceller = canceller.cancel();
    let mut results = Vec::with_capacity(tasks.len());
    let n_tasks = tasks.len();
    let joined = monoio::time::timeout(JOIN_TIMEOUT, async {
        for h in tasks {
            results.push(h.await);
        }
    })
    .await;
    drop(canceller);
    let stuck = if joined.is_err() {
        n_tasks - results.len()
    } else {
        0
    };
    let (held_closed, held_unread) = peek_all(&conns);
    drop(conns);
    let recv = Rc::try_unwrap(recv)
        .map(RefCell::into_inner)
        .unwrap_or_else(|rc| {
            // Stuck tasks still hold a clone; copy what they counted.
            let r = rc.borrow();
            let mut copy = Recv::new();
            let _ = copy.hist.add(&r.hist);
            copy.window = r.window;
            copy.total = r.total;
            copy.pings = r.pings;
            copy.other = r.other;
            copy.other_samples = r.other_samples.clone();
            copy
        });
    ThreadReport {
        open_errors,
        recv,
        conns: results,
        stuck,
        held_closed,
        held_unread,
    }
}

/// Without reading: how many sockets are at EOF and how many have bytes waiting.
fn peek_all(conns: &[(usize, Conn)]) -> (usize, usize) {
    let (mut closed, mut unread) = (0, 0);
    let mut byte = [0u8; 1];
    for (_, c) in conns {
        // SAFETY: the fd is open (owned by `c`), the buffer is 1 byte we own, and
        // MSG_PEEK | MSG_DONTWAIT neither consumes data nor blocks.
        let n = unsafe {
            libc::recv(
                c.stream.as_raw_fd(),
                byte.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => closed += 1,
            n if n > 0 => unread += 1,
            _ => {}
        }
    }
    (closed, unread)
}

/// Per-connection bookkeeping of sequence numbers on its one channel.
struct Track {
    res: ConnResult,
    /// Bit per sequence number seen.
    seen: Vec<u64>,
}

impl Track {
    fn new(channel: usize) -> Track {
        let res = ConnResult {
            channel,
            distinct: 0,
            dups: 0,
            reordered: 0,
            first_reorder: None,
            next: 0,
            bogus: 0,
            end: End::Stopped,
        };
        Track {
            res,
            seen: Vec::new(),
        }
    }

    fn see(&mut self, seq: u64, latency_us: u64) {
        if seq >= MAX_SEQ {
            self.res.bogus += 1;
            return;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.seen.len() {
            self.seen.resize(word + 1 + self.seen.len() / 2, 0);
        }
        if self.seen[word] & bit != 0 {
            self.res.dups += 1;
            return;
        }
        self.seen[word] |= bit;
        self.res.distinct += 1;
        if seq < self.res.next {
            self.res.reordered += 1;
            if self.res.first_reorder.is_none() {
                self.res.first_reorder = Some((seq, self.res.next - 1, latency_us));
            }
        } else {
            self.res.next = seq + 1;
        }
    }
}

/// `s=SEQ;t=NANOS` right after `"data":"`.
fn parse_bench(msg: &[u8]) -> Option<Option<(u64, u64)>> {
    const KEY: &[u8] = b"\"data\":\"s=";
    let at = ws::find(msg, KEY)? + KEY.len();
    let (seq, rest) = digits(&msg[at..]);
    let parsed = match (seq, rest.strip_prefix(b";t=")) {
        (Some(seq), Some(rest)) => digits(rest).0.map(|t| (seq, t)),
        _ => None,
    };
    Some(parsed)
}

fn digits(b: &[u8]) -> (Option<u64>, &[u8]) {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return (None, b);
    }
    let v = b[..n]
        .iter()
        .fold(0u64, |acc, c| acc * 10 + u64::from(c - b'0'));
    (Some(v), &b[n..])
}

const PONG: &[u8] = br#"{"event":"pusher:pong","data":{}}"#;

async fn read_loop(
    mut conn: Conn,
    mut track: Track,
    recv: Rc<RefCell<Recv>>,
    shared: Arc<Shared>,
    cancel: monoio::io::CancelHandle,
) -> ConnResult {
    let mut frag: Vec<u8> = Vec::new();
    let mut frag_compressed = false;
    let mut replies: Vec<Vec<u8>> = Vec::new();
    loop {
        while let Some(f) = conn.frames.next_frame() {
            let payload = conn.frames.bytes(&f.payload);
            match f.opcode {
                OP_TEXT if f.fin && f.rsv1 => {
                    let inflated = ws::with_inflated(payload, |text| {
                        on_text(text, &mut track, &recv, &shared, &mut replies);
                    });
                    if inflated.is_none() {
                        track.res.bogus += 1;
                    }
                }
                OP_TEXT if f.fin => on_text(payload, &mut track, &recv, &shared, &mut replies),
                OP_TEXT | OP_CONT => {
                    if f.opcode == OP_TEXT {
                        frag_compressed = f.rsv1;
                    }
                    frag.extend_from_slice(payload);
                    if f.fin {
                        let whole = std::mem::take(&mut frag);
                        let ok = if frag_compressed {
                            ws::with_inflated(&whole, |text| {
                                on_text(text, &mut track, &recv, &shared, &mut replies);
                            })
                        } else {
                            on_text(&whole, &mut track, &recv, &shared, &mut replies);
                            Some(())
                        };
                        if ok.is_none() {
                            track.res.bogus += 1;
                        }
                    }
                }
                OP_PING => replies.push(ws::client_frame(OP_PONG, payload)),
                OP_CLOSE => {
                    track.res.end = End::Close(ws::close_code(payload));
                    return track.res;
                }
                _ => {}
            }
        }
        for r in replies.drain(..) {
            let (res, _) = conn.stream.write_all(r).await;
            if let Err(e) = res {
                track.res.end = End::ReadError(format!("write: {e}"));
                return track.res;
            }
        }
        match conn.frames.fill(&mut conn.stream, Some(&cancel)).await {
            Ok(0) => {
                if !shared.stop.load(Ordering::Relaxed) {
                    track.res.end = End::Eof;
                }
                return track.res;
            }
            Ok(_) => {}
            Err(e) => {
                if !shared.stop.load(Ordering::Relaxed) {
                    track.res.end = End::ReadError(e.to_string());
                }
                return track.res;
            }
        }
    }
}

fn on_text(
    msg: &[u8],
    track: &mut Track,
    recv: &RefCell<Recv>,
    shared: &Shared,
    replies: &mut Vec<Vec<u8>>,
) {
    match parse_bench(msg) {
        Some(Some((seq, t_ns))) => {
            let now = shared.now_ns();
            let mut r = recv.borrow_mut();
            r.total += 1;
            let start = shared.win_start_ns.load(Ordering::Relaxed);
            let end = shared.win_end_ns.load(Ordering::Relaxed);
            let latency_us = (now.saturating_sub(t_ns) / 1000).max(1);
            if now >= start && now < end {
                r.window += 1;
                r.hist.saturating_record(latency_us);
            }
            drop(r);
            track.see(seq, latency_us);
        }
        Some(None) => track.res.bogus += 1,
        None => {
            let mut r = recv.borrow_mut();
            if ws::event_name(msg) == Some(b"pusher:ping") {
                r.pings += 1;
                replies.push(ws::client_frame(OP_TEXT, PONG));
            } else {
                r.other += 1;
                if r.other_samples.len() < MAX_SAMPLES {
                    let s = String::from_utf8_lossy(&msg[..msg.len().min(300)]).into_owned();
                    r.other_samples.push(s);
                }
            }
        }
    }
}
