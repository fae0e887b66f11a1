//! A shard: one thread pinned to one core, with its own monoio runtime, its own
//! `SO_REUSEPORT` listener on the shared port, its own connections and channel maps.
//!
//! Tasks on a shard: the accept loop, one reader task per connection (plus a writer task
//! while a socket is full), the inbox loop that drains the rings from other shards, and a
//! once-a-second sweep for activity timeouts and stuck closes.

mod apps;
mod compressed;
mod conn;
mod counts;
mod driver;
mod home;
mod lease;
mod lifecycle;
mod publish;
mod query;
mod sendbatch;
mod session;
mod subscribe;
mod sweep;
mod tls;
mod users;
mod watch;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::Bytes;
use slab::Slab;

pub use conn::{Conn, Flushed, Outbound, Subscription};
pub use lease::Rate;
pub use query::ChannelFacts;
pub use watch::{MAX_WATCHLIST, watchlist_frame};

use crate::app::limits::{Quota, TokenBucket};
use crate::app::{AppIdx, AppTable};
use crate::config::{Config, IoDriverChoice};
use crate::fanout::{Inbox, Outbox};
use crate::metrics::{IoDriver, ShardMetrics};
use crate::protocol::SocketId;
use crate::registry::presence::Rosters;
use crate::registry::{ConnKey, Registry};
use crate::webhooks::Webhooks;

/// Size of the per-shard read buffer every connection reads into in turn.
const SCRATCH_BYTES: usize = 64 * 1024;

/// Everything a shard owns. Single-threaded: interior mutability, no locks.
pub struct Shard {
    /// This shard's number, 0..shards.
    pub id: usize,
    /// How many shards the process runs.
    pub shards: usize,
    /// The process's socket-id prefix.
    pub node: u32,
    pub config: Arc<Config>,
    pub apps: Arc<AppTable>,
    /// Local connections, by slot.
    pub conns: RefCell<Slab<Conn>>,
    /// Local channel subscriptions.
    pub registry: RefCell<Registry>,
    /// Presence rosters of the channels this shard is home to.
    pub rosters: RefCell<Rosters>,
    /// Last event of each cache channel, with when it was published.
    pub cache: RefCell<AHashMap<(AppIdx, Arc<str>), CachedEvent>>,
    /// For channels this shard is home to: how many shards have subscribers, to send
    /// `channel_occupied` / `channel_vacated` once for the whole server.
    occupancy: RefCell<AHashMap<(AppIdx, Arc<str>), u32>>,
    /// Subscription counts of the channels this shard is home to (apps that enable them).
    counts: counts::Counts,
    /// Watchlists of local sockets and online users (apps that enable watchlist events).
    watch: watch::Watch,
    /// `member_added` frames to publish once the join reply is on its way.
    pending_announcements: RefCell<Vec<Announcement>>,
    /// Scatter-gather reads waiting for other shards' replies.
    queries: RefCell<AHashMap<u64, query::Pending>>,
    /// Lease requests to the redis bridge waiting for its answer (cluster-wide limits).
    leases: RefCell<AHashMap<u64, lease::LeaseWait>>,
    /// Rings towards the other shards (and the redis bridge).
    pub outbox: RefCell<Outbox>,
    /// The redis bridge's place in the mesh, with the redis adapter.
    pub bridge: Option<usize>,
    /// Connections with queued frames not yet handed to the kernel.
    dirty: RefCell<Vec<ConnKey>>,
    /// The ring `flush_dirty` submits its sends through (`CORECAST_SEND_BATCH` on an
    /// io_uring shard); `None` sends each socket's frames with its own syscall.
    send_batch: RefCell<Option<sendbatch::SendBatch>>,
    /// The read buffer, taken out while in use.
    scratch: RefCell<Vec<u8>>,
    /// Compresses published frames for connections that negotiated permessage-deflate:
    /// one stream per window size for the whole shard, reset between messages.
    pub deflater: RefCell<crate::ws::Deflater>,
    /// Inflates compressed client messages of every connection, reset per message.
    pub inflater: RefCell<crate::ws::Inflater>,
    /// Source of connection serials and socket ids.
    next_serial: Cell<u64>,
    /// This shard's counters; only this thread writes them, a scrape merges all shards.
    pub metrics: Arc<ShardMetrics>,
    /// The webhook sender (its own thread); `send` never blocks.
    pub webhooks: Webhooks,
    /// TLS settings when the server serves `wss://` and `https://`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// What every shard of the process shares: connection count, shutdown flag.
    pub server: Arc<ServerState>,
    /// This shard's part of the handshake rate limit.
    handshakes: RefCell<Option<TokenBucket>>,
    /// The listening socket, shut when the server stops accepting.
    listener_fd: Cell<std::os::fd::RawFd>,
    /// The main task, parked until shutdown.
    stop_waker: RefCell<Option<std::task::Waker>>,
    /// REST requests being handled; shutdown lets them finish.
    pub http_in_flight: Cell<usize>,
    /// With a database app manager: this shard's answers and its link to the manager.
    dynamic_apps: Option<apps::ShardApps>,
    /// With interest routing: channels new to this shard whose Redis subscription is not
    /// confirmed yet, and the subscription confirmations held until it is.
    held: RefCell<HeldConfirmations>,
    /// The rings from the other shards (and the bridge), read by the inbox loop and,
    /// before a REST or client publish, by [`Shard::catch_up`].
    inbox: RefCell<Option<Inbox>>,
}

/// Process-wide state the shards share (never touched on the delivery path).
#[derive(Debug, Default)]
pub struct ServerState {
    /// WebSocket connections over all shards, against `max_connections`.
    pub connections: Quota,
    /// Set once on SIGTERM/SIGINT; shards then drain and stop.
    pub shutting_down: AtomicBool,
    /// Each shard's IO driver and why, as the shards start; shard 0 logs them once all
    /// have bound.
    io_drivers: std::sync::Mutex<Vec<(usize, IoDriver, String)>>,
}

impl ServerState {
    /// Notes the IO driver shard `id` runs on, and why.
    fn record_io_driver(&self, id: usize, driver: IoDriver, why: String) {
        self.io_drivers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((id, driver, why));
    }

    /// Logs the shards' IO drivers in one line: `io_uring (4096 entries)` when every
    /// shard agrees, else each driver with the shards on it.
    fn log_io_drivers(&self) {
        let mut seen = self
            .io_drivers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        seen.sort_by_key(|(id, _, _)| *id);
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (id, driver, why) in seen {
            let text = format!("{} ({why})", driver.label());
            match groups.iter_mut().find(|(t, _)| *t == text) {
                Some((_, ids)) => ids.push(id),
                None => groups.push((text, vec![id])),
            }
        }
        let line = if groups.len() == 1 {
            groups.remove(0).0
        } else {
            let parts: Vec<String> = groups
                .iter()
                .map(|(text, ids)| {
                    let ids: Vec<String> = ids.iter().map(usize::to_string).collect();
                    format!("{text} on shards {}", ids.join(","))
                })
                .collect();
            parts.join("; ")
        };
        eprintln!("corecast: io driver {line}");
    }
}

/// A cache channel's last event and when it was published.
pub type CachedEvent = (Bytes, Instant);

/// Subscription confirmations held for interest routing, per channel: socket, its
/// serial, the frame.
type HeldConfirmations = AHashMap<(AppIdx, Arc<str>), Vec<(ConnKey, u64, Bytes)>>;

/// A `member_added` waiting to be published: app, channel, frame, the joining socket.
type Announcement = (AppIdx, Arc<str>, Bytes, Option<SocketId>);

/// How a shard reports its start: its bound address (or why it could not bind), and a
/// barrier every shard passes once all have bound.
pub struct Startup {
    pub ready: std::sync::mpsc::Sender<io::Result<SocketAddr>>,
    pub all_bound: Arc<std::sync::Barrier>,
}

/// What a shard is given from the process: read-only or shard-owned handles.
pub struct Context {
    pub config: Arc<Config>,
    pub apps: Arc<AppTable>,
    /// The socket-id prefix of this process.
    pub node: u32,
    pub server: Arc<ServerState>,
    /// The counters this shard (alone) writes.
    pub metrics: Arc<ShardMetrics>,
    pub webhooks: Webhooks,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// This shard's link to the app-manager thread, with a database app manager.
    pub app_manager: Option<crate::app::manager::ShardClient>,
}

/// Starts shard `id` on its own thread and returns its handle.
pub fn spawn(
    id: usize,
    cx: Context,
    links: (Outbox, Inbox),
    startup: Startup,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("corecast-shard-{id}"))
        .spawn(move || {
            pin_to_core(id);
            let Context {
                config,
                apps,
                node,
                server,
                metrics,
                webhooks,
                tls,
                app_manager,
            } = cx;
            let (outbox, inbox) = links;
            let handshakes = RefCell::new(handshake_bucket(&config, config.shards));
            let bridge =
                (config.adapter == crate::config::AdapterDriver::Redis).then_some(config.shards);
            let shard = Rc::new(Shard {
                id,
                bridge,
                shards: config.shards,
                node,
                registry: RefCell::new(Registry::new(apps.capacity())),
                rosters: RefCell::new(Rosters::new(apps.capacity())),
                cache: RefCell::new(AHashMap::new()),
                queries: RefCell::new(AHashMap::new()),
                leases: RefCell::new(AHashMap::new()),
                pending_announcements: RefCell::new(Vec::new()),
                occupancy: RefCell::new(AHashMap::new()),
                counts: counts::Counts::default(),
                watch: watch::Watch::default(),
                config,
                apps,
                conns: RefCell::new(Slab::new()),
                outbox: RefCell::new(outbox),
                dirty: RefCell::new(Vec::new()),
                send_batch: RefCell::new(None),
                scratch: RefCell::new(vec![0; SCRATCH_BYTES]),
                deflater: RefCell::new(crate::ws::Deflater::default()),
                inflater: RefCell::new(crate::ws::Inflater::default()),
                next_serial: Cell::new(0),
                metrics,
                webhooks,
                tls,
                handshakes,
                listener_fd: Cell::new(-1),
                stop_waker: RefCell::new(None),
                http_in_flight: Cell::new(0),
                server,
                dynamic_apps: app_manager.map(apps::ShardApps::new),
                held: RefCell::new(AHashMap::new()),
                inbox: RefCell::new(None),
            });
            let (mut runtime, driver, why) = match build_runtime(shard.config.io_driver) {
                Ok(built) => built,
                Err(e) => {
                    let _ = startup.ready.send(Err(e));
                    startup.all_bound.wait();
                    return;
                }
            };
            shard.metrics.set_io_driver(driver);
            if shard.config.send_batch && driver == IoDriver::IoUring {
                *shard.send_batch.borrow_mut() = sendbatch::SendBatch::new().ok();
            }
            shard.server.record_io_driver(id, driver, why);
            runtime.block_on(serve(shard, inbox, startup));
        })
}

/// This shard's share of the server's handshake rate, or `None` when unlimited.
fn handshake_bucket(config: &Config, shards: usize) -> Option<TokenBucket> {
    let rate = config.max_handshakes_per_sec;
    (rate > 0).then(|| {
        let shards = shards.max(1) as f64;
        let burst = (config.handshake_burst as f64 / shards).max(1.0);
        TokenBucket::new(rate as f64 / shards, burst)
    })
}

/// Submission queue entries of each shard's io_uring instance.
const URING_ENTRIES: u32 = 4096;

type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;
type EpollRuntime = monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>;

/// A shard's runtime, on the driver it got.
enum Runtime {
    Uring(UringRuntime),
    Epoll(EpollRuntime),
}

impl Runtime {
    fn block_on(&mut self, task: impl std::future::Future<Output = ()>) {
        match self {
            Runtime::Uring(rt) => rt.block_on(task),
            Runtime::Epoll(rt) => rt.block_on(task),
        }
    }
}

/// Builds a shard's runtime on the driver `choice` asks for: io_uring when the kernel
/// allows it (else epoll, unless io_uring was required), or epoll. Returns the runtime,
/// its driver and why it is that driver (for the start-up log line).
///
/// # Errors
/// With [`IoDriverChoice::IoUring`] when io_uring is unavailable, or when no runtime can
/// be built at all.
fn build_runtime(choice: IoDriverChoice) -> io::Result<(Runtime, IoDriver, String)> {
    let refused = match choice {
        IoDriverChoice::Epoll => None,
        IoDriverChoice::Auto | IoDriverChoice::IoUring => match uring_runtime() {
            Ok(rt) => {
                let why = format!("{URING_ENTRIES} entries");
                return Ok((Runtime::Uring(rt), IoDriver::IoUring, why));
            }
            Err(why) => Some(why),
        },
    };
    if let Some(why) = &refused
        && choice == IoDriverChoice::IoUring
    {
        return Err(io::Error::other(format!(
            "io driver io_uring required (CORECAST_IO_DRIVER=io_uring) but {why}"
        )));
    }
    let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start the epoll driver: {e}")))?;
    let why = refused.unwrap_or_else(|| "chosen by CORECAST_IO_DRIVER=epoll".to_owned());
    Ok((Runtime::Epoll(rt), IoDriver::Epoll, why))
}

/// An io_uring runtime, or why the kernel will not give one.
fn uring_runtime() -> Result<UringRuntime, String> {
    // monoio's probe: io_uring sets up and supports every operation monoio issues.
    let usable = monoio::utils::detect_uring();
    let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(URING_ENTRIES)
        .enable_timer()
        .build();
    match built {
        Ok(rt) if usable => Ok(rt),
        Ok(_) if std::env::var_os("MONOIO_FORCE_LEGACY_DRIVER").is_some() => {
            Err("MONOIO_FORCE_LEGACY_DRIVER is set".to_owned())
        }
        Ok(_) => Err("the kernel's io_uring lacks operations corecast uses".to_owned()),
        Err(e) => Err(uring_refusal(&e)),
    }
}

/// Why `io_uring_setup` failed, in words that point at the fix.
fn uring_refusal(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => "kernel has no io_uring".to_owned(),
        Some(libc::EPERM) => {
            let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .ok()
                .filter(|v| v.trim() != "0");
            match disabled {
                Some(v) => format!("io_uring refused: kernel.io_uring_disabled = {}", v.trim()),
                None => format!("io_uring refused: {e}; likely a seccomp filter (container)"),
            }
        }
        Some(libc::ENOMEM) => {
            format!("io_uring refused: {e}; raise the locked-memory limit (LimitMEMLOCK)")
        }
        _ => format!("io_uring refused: {e}"),
    }
}

fn pin_to_core(id: usize) {
    if let Some(cores) = core_affinity::get_core_ids()
        && !cores.is_empty()
    {
        core_affinity::set_for_current(cores[id % cores.len()]);
    }
}

/// The shard's main task: bind, then accept forever while the helpers run.
async fn serve(shard: Rc<Shard>, inbox: Inbox, startup: Startup) {
    let addr = format!("{}:{}", shard.config.host, shard.config.port);
    let opts = monoio::net::ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(4096);
    let listener = match monoio::net::TcpListener::bind_with_config(&addr, &opts) {
        Ok(l) => l,
        Err(e) => {
            let e = io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"));
            let _ = startup.ready.send(Err(e));
            startup.all_bound.wait();
            return;
        }
    };
    let _ = startup.ready.send(listener.local_addr());
    // Accept only once every shard has bound, so the kernel spreads the very first
    // connections over all of them.
    startup.all_bound.wait();
    if shard.id == 0 {
        shard.server.log_io_drivers();
    }
    shard
        .listener_fd
        .set(std::os::fd::AsRawFd::as_raw_fd(&listener));
    *shard.inbox.borrow_mut() = Some(inbox);
    monoio::spawn(publish::inbox_loop(Rc::clone(&shard)));
    monoio::spawn(sweep::sweep_loop(Rc::clone(&shard)));
    monoio::spawn(counts::count_loop(Rc::clone(&shard)));
    monoio::spawn(accept_loop(Rc::clone(&shard), listener));
    lifecycle::stopped(&shard).await;
    lifecycle::drain(&shard).await;
}

async fn accept_loop(shard: Rc<Shard>, listener: monoio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                monoio::spawn(driver::handle_connection(Rc::clone(&shard), stream));
            }
            Err(_) if shard.shutting_down() => return,
            Err(e) => {
                // Out of fds or a transient error: back off briefly, never spin or die.
                eprintln!("corecast: shard {} accept failed: {e}", shard.id);
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Shard {
    /// A new socket id, unique in this process.
    fn next_socket_id(&self) -> (u64, SocketId) {
        let serial = self.next_serial.get() + 1;
        self.next_serial.set(serial);
        let local = serial * self.shards as u64 + self.id as u64;
        (
            serial,
            SocketId {
                node: self.node,
                local,
            },
        )
    }

    /// Whether the server is shutting down.
    #[must_use]
    pub fn shutting_down(&self) -> bool {
        self.server.shutting_down.load(Ordering::Acquire)
    }

    /// Takes a handshake token; false when the rate limit is hit.
    fn admit_handshake(&self) -> bool {
        self.handshakes
            .borrow_mut()
            .as_mut()
            .is_none_or(|b| b.take(Instant::now()))
    }

    /// The shard that keeps `channel`'s roster and answers for it: FNV-1a of app and name.
    #[must_use]
    pub fn home_of(&self, app: AppIdx, channel: &str) -> usize {
        crate::fanout::home_shard(app, channel, self.shards)
    }

    /// Takes the shared read buffer; give it back with `put_scratch` before any await.
    fn take_scratch(&self) -> Vec<u8> {
        let buf = std::mem::take(&mut *self.scratch.borrow_mut());
        if buf.is_empty() {
            vec![0; SCRATCH_BYTES]
        } else {
            buf
        }
    }

    fn put_scratch(&self, buf: Vec<u8>) {
        *self.scratch.borrow_mut() = buf;
    }
}

/// Lets the other tasks of the shard run once before continuing.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}
