//! Starting the server: build the app table, the ring mesh, the webhook sender and the
//! metrics registry, start one shard per core, and stop them gracefully. In worker mode
//! (`SOKETI_MODE=worker`) only the webhook sender and the metrics server run.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use crate::app::AppTable;
use crate::app::manager::{self, Mailbox, ManagerSettings, ManagerStats, ShardClient};
use crate::config::{AdapterDriver, Config, Mode};
use crate::fanout::{self, InboxWaker};
use crate::metrics::{self, MetricsServer, Registry, Sample, ShardMetrics};
use crate::redis::bridge::{self, BridgeStats};
use crate::shard::{self, ServerState};
use crate::webhooks::{AppHooks, WebhookSettings, Webhooks};

/// A running server: its shards' threads and the address they listen on.
pub struct Server {
    /// The bound address (useful when the port was 0); `None` for a worker, which has no
    /// WebSocket or REST listener.
    pub addr: Option<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
    state: Arc<ServerState>,
    wakers: Vec<InboxWaker>,
    webhooks: Webhooks,
    metrics: Option<MetricsServer>,
    config: Arc<Config>,
    /// The redis bridge thread and its waker, with the redis adapter.
    bridge: Option<(InboxWaker, JoinHandle<()>)>,
    bridge_stats: Arc<BridgeStats>,
    /// The app-manager thread, with a database app manager; it ends with the shards.
    app_manager: Option<JoinHandle<()>>,
}

impl Server {
    /// Asks every shard to stop: new WebSockets are refused and `/ready` answers 503,
    /// every client gets `pusher:error` 4200, REST requests in flight finish; each shard
    /// stops within the grace period.
    pub fn shutdown(&self) {
        self.state.shutting_down.store(true, Ordering::Release);
        if let Some(m) = &self.metrics {
            m.set_ready(false);
        }
        for w in &self.wakers {
            w.poke();
        }
    }

    /// Waits for every shard to stop, then gives queued webhooks what is left of the
    /// grace period and reports any that could not be delivered.
    pub fn join(self) {
        let started = std::time::Instant::now();
        for t in self.threads {
            let _ = t.join();
        }
        // Its requests' senders went with the shards, so the app manager ends after the
        // query it may be in (bounded by the database timeouts); nobody waits for it.
        drop(self.app_manager);
        // The shards' last leaves are queued for the bridge: let it send them to Redis.
        if let Some((waker, handle)) = self.bridge {
            self.bridge_stats.stop.store(true, Ordering::Release);
            waker.poke();
            let deadline = started + self.config.shutdown_grace_period;
            while !handle.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let grace = self
            .config
            .shutdown_grace_period
            .saturating_sub(started.elapsed());
        let left = self
            .webhooks
            .flush_and_stop(grace.max(std::time::Duration::from_millis(200)));
        if left > 0 {
            eprintln!("corecast: {left} webhook events were not delivered before shutdown");
        }
    }
}

/// Starts every shard and returns once all of them listen; a worker starts only its
/// webhook sender.
pub fn start(config: Config) -> io::Result<Server> {
    if config.mode == Mode::Worker {
        return start_worker(config);
    }
    let shards = config.shards.max(1);
    // Port 0: every shard binds the one port the kernel picks here, held until they have.
    let reservation = reserve_port(&config)?;
    let port = match &reservation {
        Some(r) => r.port,
        None => config.port,
    };
    let config = Arc::new(Config {
        shards,
        port,
        ..config
    });
    let tls = if config.tls.enabled() {
        Some(crate::tls::server_config(&config.tls).map_err(|e| io::Error::other(e.to_string()))?)
    } else {
        None
    };
    // A database app manager fills the table at run time; the array manager's is fixed.
    let source = crate::app::source::open(&config);
    let (apps, webhooks) = if source.is_some() {
        (
            Arc::new(AppTable::dynamic(config.app_manager.max_apps)),
            Webhooks::start_dynamic(WebhookSettings::from_config(&config))?,
        )
    } else {
        (
            Arc::new(AppTable::new(config.apps.clone())),
            Webhooks::start(
                config.apps.iter().map(AppHooks::from_config).collect(),
                WebhookSettings::from_config(&config),
            )?,
        )
    };
    let manager_stats = Arc::new(ManagerStats::default());
    let mut app_requests = None;
    let mut mailboxes = Vec::new();
    if source.is_some() {
        let (tx, rx) = std::sync::mpsc::channel();
        app_requests = Some((tx, rx));
        mailboxes = (0..shards).map(|_| Arc::new(Mailbox::default())).collect();
    }
    let shard_metrics: Vec<Arc<ShardMetrics>> = (0..shards)
        .map(|_| Arc::new(ShardMetrics::new(apps.capacity())))
        .collect();
    let node = node_id();
    let (tx, rx) = std::sync::mpsc::channel();
    let all_bound = Arc::new(std::sync::Barrier::new(shards));
    let state = Arc::new(ServerState::default());
    let mut threads = Vec::with_capacity(shards + 1);
    let mut wakers = Vec::with_capacity(shards);
    let redis = config.adapter == AdapterDriver::Redis;
    // With the redis adapter the bridge is one more participant in the mesh, last.
    let mut mesh = fanout::mesh(shards + usize::from(redis), config.ring_capacity);
    let bridge_stats = Arc::new(BridgeStats::default());
    let mut bridge = None;
    if redis && let Some(links) = mesh.pop() {
        let waker = links.1.waker();
        bridge = Some((
            waker,
            bridge::spawn(
                Arc::clone(&config),
                Arc::clone(&apps),
                node,
                links,
                Arc::clone(&bridge_stats),
                webhooks.clone(),
            )?,
        ));
    }
    for (id, links) in mesh.into_iter().enumerate() {
        wakers.push(links.1.waker());
        threads.push(shard::spawn(
            id,
            shard::Context {
                config: Arc::clone(&config),
                apps: Arc::clone(&apps),
                node,
                server: Arc::clone(&state),
                metrics: Arc::clone(&shard_metrics[id]),
                webhooks: webhooks.clone(),
                tls: tls.clone(),
                app_manager: app_requests.as_ref().map(|(tx, _)| ShardClient {
                    requests: tx.clone(),
                    mailbox: Arc::clone(&mailboxes[id]),
                }),
            },
            links,
            shard::Startup {
                ready: tx.clone(),
                all_bound: Arc::clone(&all_bound),
            },
        )?);
    }
    drop(tx);
    let mut app_manager = None;
    if let (Some(source), Some((requests, rx))) = (source, app_requests) {
        // The shards hold the senders: the thread ends when they are gone.
        drop(requests);
        let links = mailboxes.into_iter().zip(wakers.iter().cloned()).collect();
        app_manager = Some(manager::spawn(
            source,
            Arc::clone(&apps),
            ManagerSettings::from_config(&config.app_manager),
            rx,
            links,
            webhooks.clone(),
            Arc::clone(&manager_stats),
        )?);
    }
    let mut addr = None;
    for _ in 0..shards {
        match rx.recv() {
            Ok(Ok(a)) => addr = Some(a),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("a shard stopped before it was listening")),
        }
    }
    let addr = addr.ok_or_else(|| io::Error::other("no shard started"))?;
    drop(reservation);
    let metrics = if config.metrics_enabled {
        let mut registry = Registry::new(
            &config.metrics_prefix,
            addr.port(),
            config.apps.iter().map(|a| a.id.clone()).collect(),
            shard_metrics,
        );
        if !apps.is_fixed() {
            registry = registry.with_app_table(Arc::clone(&apps));
            let stats = Arc::clone(&manager_stats);
            registry.add_source(Box::new(move || app_manager_samples(&stats)));
        }
        let hooks = webhooks.clone();
        registry.add_source(Box::new(move || webhook_samples(&hooks)));
        if redis {
            let stats = Arc::clone(&bridge_stats);
            registry.add_source(Box::new(move || redis_samples(&stats)));
        }
        let server = metrics::serve(
            Arc::new(registry),
            &config.metrics_host,
            config.metrics_port,
        )?;
        eprintln!("corecast: metrics on {}", server.addr);
        Some(server)
    } else {
        None
    };
    Ok(Server {
        addr: Some(addr),
        threads,
        state,
        wakers,
        webhooks,
        metrics,
        config,
        bridge,
        bridge_stats,
        app_manager,
    })
}

/// A worker: the webhook sender consuming the redis queue, and the metrics server. Jobs
/// carry their signed requests, so it needs no app table.
fn start_worker(config: Config) -> io::Result<Server> {
    let config = Arc::new(config);
    let webhooks = Webhooks::start(Vec::new(), WebhookSettings::from_config(&config))?;
    let metrics = if config.metrics_enabled {
        let mut registry = Registry::new(&config.metrics_prefix, 0, Vec::new(), Vec::new());
        let hooks = webhooks.clone();
        registry.add_source(Box::new(move || webhook_samples(&hooks)));
        let server = metrics::serve(
            Arc::new(registry),
            &config.metrics_host,
            config.metrics_port,
        )?;
        eprintln!("corecast: metrics on {}", server.addr);
        Some(server)
    } else {
        None
    };
    Ok(Server {
        addr: None,
        threads: Vec::new(),
        state: Arc::new(ServerState::default()),
        wakers: Vec::new(),
        webhooks,
        metrics,
        config,
        bridge: None,
        bridge_stats: Arc::new(BridgeStats::default()),
        app_manager: None,
    })
}

/// A kernel-chosen port held by a bound, not listening, `SO_REUSEPORT` socket.
struct PortReservation {
    port: u16,
    _socket: socket2::Socket,
}

/// With `port` 0, asks the kernel for a free port once, so all shards bind the same one
/// (each binding 0 would get a port of its own).
fn reserve_port(config: &Config) -> io::Result<Option<PortReservation>> {
    if config.port != 0 {
        return Ok(None);
    }
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(config.host.as_str(), 0))?
        .next()
        .ok_or_else(|| io::Error::other(format!("cannot resolve {:?}", config.host)))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    let port = socket.local_addr()?.as_socket().map_or(0, |a| a.port());
    Ok(Some(PortReservation {
        port,
        _socket: socket,
    }))
}

/// The webhook sender's counters as `corecast_webhook_*` series.
fn webhook_samples(hooks: &Webhooks) -> Vec<Sample> {
    let s = hooks.stats();
    vec![
        Sample::counter(
            "corecast_webhook_requests_total",
            "Webhook HTTP requests sent.",
            s.requests as f64,
        ),
        Sample::counter(
            "corecast_webhook_delivered_total",
            "Webhook events delivered.",
            s.delivered as f64,
        ),
        Sample::counter(
            "corecast_webhook_failed_total",
            "Webhook events given up after all retries.",
            s.failed as f64,
        ),
        Sample::counter(
            "corecast_webhook_dropped_total",
            "Webhook events dropped on a full queue.",
            s.dropped as f64,
        ),
        Sample::counter(
            "corecast_webhook_retries_total",
            "Webhook delivery retries.",
            s.retries as f64,
        ),
        Sample::counter(
            "corecast_webhook_suppressed_total",
            "Webhook events dropped by the vacate grace: a vacate and the return within it.",
            s.suppressed as f64,
        ),
    ]
    .into_iter()
    .chain(
        hooks
            .queue_counts()
            .map(queue_samples)
            .into_iter()
            .flatten(),
    )
    .collect()
}

/// The redis queue's counters as `corecast_webhook_queue_*` series.
fn queue_samples(q: crate::webhooks::QueueCounts) -> Vec<Sample> {
    let c = |name, help, v: u64| Sample::counter(name, help, v as f64);
    let g = |name, help, v: u64| Sample::gauge(name, help, v as f64);
    vec![
        g(
            "corecast_webhook_queue_up",
            "1 while the queue's Redis connection is up.",
            q.up,
        ),
        c(
            "corecast_webhook_queue_appended_total",
            "Webhook events appended to the queue.",
            q.appended,
        ),
        c(
            "corecast_webhook_queue_append_failures_total",
            "Appends to the queue that failed and were retried.",
            q.append_failures,
        ),
        g(
            "corecast_webhook_queue_depth",
            "Jobs in the queue's partition streams (XLEN), all nodes'.",
            q.depth,
        ),
        g(
            "corecast_webhook_queue_dead_letters",
            "Jobs in the dead-letter stream (XLEN).",
            q.dead_depth,
        ),
        c(
            "corecast_webhook_queue_dead_letters_total",
            "Jobs this node moved to the dead-letter stream.",
            q.dead_letters,
        ),
        c(
            "corecast_webhook_queue_retries_total",
            "Retries of queued jobs by this node.",
            q.retries,
        ),
        c(
            "corecast_webhook_queue_claimed_total",
            "Pending jobs this node claimed when it took a partition over.",
            q.claimed,
        ),
        g(
            "corecast_webhook_queue_partitions_owned",
            "Queue partitions this node sends.",
            q.owned,
        ),
        c(
            "corecast_webhook_queue_acked_total",
            "Queued jobs this node delivered and acknowledged.",
            q.acked,
        ),
    ]
}

/// The app manager's counters as `corecast_app_manager_*` series.
fn app_manager_samples(stats: &ManagerStats) -> Vec<Sample> {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64;
    vec![
        Sample::gauge(
            "corecast_app_manager_up",
            "1 while the app manager's database answers.",
            get(&stats.up),
        ),
        Sample::counter(
            "corecast_app_manager_lookups_total",
            "App lookups asked by shards.",
            get(&stats.lookups),
        ),
        Sample::counter(
            "corecast_app_manager_cache_hits_total",
            "App lookups answered from the app manager's cache.",
            get(&stats.cache_hits),
        ),
        Sample::counter(
            "corecast_app_manager_coalesced_total",
            "App lookups answered by the query of another lookup for the same key or id.",
            get(&stats.coalesced),
        ),
        Sample::counter(
            "corecast_app_manager_misses_total",
            "Queries that found no app.",
            get(&stats.misses),
        ),
        Sample::counter(
            "corecast_app_manager_errors_total",
            "Queries that failed (database unreachable or a bad row).",
            get(&stats.errors),
        ),
        Sample::counter(
            "corecast_app_manager_stale_total",
            "Known apps answered from their last row while the database was unreachable.",
            get(&stats.stale),
        ),
        Sample::counter(
            "corecast_app_manager_queries_total",
            "Queries sent to the database for lookups.",
            get(&stats.queries),
        ),
        Sample::counter(
            "corecast_app_manager_refreshes_total",
            "Queries sent to the database to re-read known apps.",
            get(&stats.refreshes),
        ),
        Sample::counter(
            "corecast_app_manager_query_seconds_total",
            "Time spent in database queries.",
            get(&stats.query_micros) / 1e6,
        ),
    ]
}

/// The redis bridge's counters as `corecast_redis_*` series.
fn redis_samples(stats: &BridgeStats) -> Vec<Sample> {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64;
    vec![
        Sample::gauge(
            "corecast_redis_up",
            "1 while both Redis connections are up.",
            get(&stats.up),
        ),
        Sample::counter(
            "corecast_redis_published_total",
            "Messages published to other nodes.",
            get(&stats.published),
        ),
        Sample::counter(
            "corecast_redis_received_total",
            "Messages received from other nodes.",
            get(&stats.received),
        ),
        Sample::counter(
            "corecast_redis_received_bytes_total",
            "Bytes of the messages received from other nodes.",
            get(&stats.received_bytes),
        ),
        Sample::counter(
            "corecast_redis_dropped_total",
            "Cross-node messages dropped while Redis was unreachable.",
            get(&stats.dropped),
        ),
        Sample::counter(
            "corecast_redis_connects_total",
            "Successful connections to Redis.",
            get(&stats.connects),
        ),
        Sample::gauge(
            "corecast_redis_sharded_pubsub",
            "1 while cross-node messages use sharded pub/sub (SPUBLISH / SSUBSCRIBE).",
            get(&stats.sharded),
        ),
        Sample::counter(
            "corecast_redis_subscribes_total",
            "Pub/sub connections (re)established: at start, after a loss, after a slot moved.",
            get(&stats.listens),
        ),
        Sample::counter(
            "corecast_redis_redirects_total",
            "Redis Cluster -MOVED and -ASK redirections followed.",
            get(&stats.redirects),
        ),
        Sample::counter(
            "corecast_limits_lease_requests_total",
            "Cluster-wide limits: tokens asked of Redis when the node's share ran out.",
            get(&stats.lease_requests),
        ),
        Sample::counter(
            "corecast_limits_lease_refused_total",
            "Cluster-wide limits: requests refused because the cluster was at the limit.",
            get(&stats.lease_refused),
        ),
        Sample::counter(
            "corecast_limits_redis_unavailable_total",
            "Cluster-wide limits: requests decided by the node alone while Redis was unreachable.",
            get(&stats.lease_unavailable),
        ),
        Sample::counter(
            "corecast_redis_ring_dropped_total",
            "Messages from other nodes dropped because a shard's ring stayed full.",
            get(&stats.ring_dropped),
        ),
    ]
}

/// A per-process socket-id prefix below 10^9, from the clock and the pid.
fn node_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = (nanos ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((mixed >> 32) % 1_000_000_000) as u32
}
