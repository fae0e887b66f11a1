//! The scenarios. Each runs against ready processes and returns its figures;
//! `crossnode` is `delivery` with subscribers on one node and publishes on another.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::args::{Args, Scenario};
use super::clients::{self, End, Msg, OPEN_TIMEOUT, Plan, Shared, ThreadReport};
use super::publish::{self, PubPlan};
use super::server::{Sample, Server, machine_busy_s, scrape, self_cpu_s};
use super::ws::Auth;

/// How long the client threads get to report after `stop`.
const FINISH_TIMEOUT: Duration = Duration::from_secs(15);

/// Figures of one run, in print order, plus what looked wrong.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    pub figures: Vec<(&'static str, f64)>,
    /// Server misbehaviour and client-side trouble, in words.
    pub notes: Vec<String>,
}

impl RunResult {
    fn put(&mut self, name: &'static str, v: f64) {
        self.figures.push((name, v));
    }
}

/// The single-server scenarios.
pub fn run(args: &Args, server: &mut Server) -> Result<RunResult, String> {
    match args.scenario {
        Scenario::Delivery | Scenario::ClientEvents => delivery(args, server, None),
        Scenario::Memory => memory(args, server),
        Scenario::Connect => connect(args, server),
        Scenario::Crossnode => Err("crossnode runs through scenario::crossnode".into()),
        Scenario::Baseline => Err("baseline runs through scenario::baseline".into()),
    }
}

/// The kernel-only fan-out baseline (no server), paced at `per_s` writes/s (0 =
/// flat out); figures added to `r`, and `server_vs_baseline` when `r` has
/// `server_cpu_us_per_delivery`.
pub fn baseline(args: &Args, per_s: f64, r: &mut RunResult) -> Result<(), String> {
    eprintln!(
        "  baseline: {} sockets, {} writes/s of {} B for {:.1} s",
        args.connections,
        if per_s > 0.0 {
            format!("{per_s:.0}")
        } else {
            "flat out".to_string()
        },
        super::baseline::delivery_frame(args).len(),
        args.duration.as_secs_f64()
    );
    let b = super::baseline::run(args, per_s)?;
    let per_write = b.cpu_us_per_write();
    r.put("baseline_frame_bytes", b.frame_bytes as f64);
    r.put("baseline_target_writes_per_s", b.target_per_s.round());
    r.put("baseline_writes", b.writes as f64);
    r.put(
        "baseline_writes_per_s",
        per(b.writes as f64, 1) / b.wall_s.max(1e-9),
    );
    r.put("baseline_cpu_s", b.user_s + b.sys_s);
    r.put("baseline_cpu_user_s", b.user_s);
    r.put("baseline_cpu_sys_s", b.sys_s);
    r.put(
        "baseline_cpu_pct",
        (b.user_s + b.sys_s) / b.wall_s.max(1e-9) * 100.0,
    );
    r.put("baseline_cpu_us_per_write", per_write);
    r.put(
        "baseline_reader_cpu_us_per_write",
        per(b.reader_cpu_s * 1e6, b.writes),
    );
    if b.short_writes > 0 {
        r.notes
            .push(format!("baseline: {} short write(s)", b.short_writes));
    }
    if per_s > 0.0 && (b.writes as f64) < 0.95 * per_s * b.wall_s {
        r.notes.push(format!(
            "baseline wrote {:.0}/s, below the {per_s:.0}/s asked for",
            b.writes as f64 / b.wall_s.max(1e-9)
        ));
    }
    let server = r
        .figures
        .iter()
        .find(|(n, _)| *n == "server_cpu_us_per_delivery")
        .map(|f| f.1);
    if let Some(s) = server
        && per_write > 0.0
    {
        r.put("server_vs_baseline", s / per_write);
    }
    Ok(())
}

/// The second node and the Redis between them, in the crossnode scenario.
pub struct Cross<'a> {
    /// Node A: the REST publishes go here.
    pub node_a: &'a mut Server,
    pub redis: &'a mut Server,
}

/// Subscribers on `node_b`, publishes through `node_a`'s REST API: every delivery
/// crossed Redis.
pub fn crossnode(args: &Args, node_b: &mut Server, cross: Cross) -> Result<RunResult, String> {
    delivery(args, node_b, Some(cross))
}

/// The channel of the link probe; no bench subscriber uses it.
const PROBE_CHANNEL: &str = "xnode-probe";

fn ws_path(args: &Args) -> String {
    format!("/app/{}?protocol=7&client=loadgen&version=1", args.app_key)
}

fn plan(args: &Args, addr: SocketAddr, read: bool) -> Plan {
    Plan {
        addr,
        path: ws_path(args),
        prefix: args.scenario.channel_prefix(),
        channels: args.channels,
        connections: args.connections,
        threads: args.client_threads,
        batch: args.batch,
        read,
        auth: (args.scenario == Scenario::ClientEvents).then(|| Auth {
            key: args.app_key.clone(),
            secret: args.app_secret.clone(),
        }),
    }
}

/// Client threads after their connect phase.
struct Clients {
    /// Dropping `Clients` sets `stop`, so an early return never leaves threads behind.
    shared: Arc<Shared>,
    rx: Receiver<Msg>,
    threads: usize,
    opened: usize,
    failed: usize,
    elapsed: Duration,
}

/// Opens and subscribes every connection to the server on `addr`; returns when all
/// threads are done with it.
fn connect_all(
    args: &Args,
    addr: SocketAddr,
    shared: &Arc<Shared>,
    read: bool,
) -> Result<Clients, String> {
    let waves = args.connections.div_ceil(args.batch) as u32;
    let deadline = Instant::now() + OPEN_TIMEOUT * (waves + 1) + Duration::from_secs(10);
    let t0 = Instant::now();
    let rx = clients::spawn(Arc::new(plan(args, addr, read)), shared.clone());
    let (mut opened, mut failed, mut reported) = (0, 0, 0);
    let mut last_print = Instant::now();
    while reported < args.client_threads {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(Msg::Connected {
                opened: o,
                failed: f,
            }) => {
                opened += o;
                failed += f;
                reported += 1;
            }
            Ok(Msg::Done(_)) => return Err("a client thread ended during connect".into()),
            Err(RecvTimeoutError::Disconnected) => return Err("client threads died".into()),
            Err(RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() > deadline {
            shared.stop.store(true, Ordering::Relaxed);
            return Err(format!(
                "connect phase still running after {:?}: {} opened, {} failed",
                t0.elapsed(),
                shared.opened.load(Ordering::Relaxed),
                shared.failed.load(Ordering::Relaxed)
            ));
        }
        if last_print.elapsed() > Duration::from_secs(3) {
            last_print = Instant::now();
            eprintln!(
                "  connecting: {} subscribed, {} failed of {}",
                shared.opened.load(Ordering::Relaxed),
                shared.failed.load(Ordering::Relaxed),
                args.connections
            );
        }
    }
    let elapsed = t0.elapsed();
    eprintln!(
        "  {opened} subscribed, {failed} failed in {:.2} s",
        elapsed.as_secs_f64()
    );
    Ok(Clients {
        shared: shared.clone(),
        rx,
        threads: args.client_threads,
        opened,
        failed,
        elapsed,
    })
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

impl Clients {
    /// Stops the threads (they close their sockets) and collects their reports.
    fn finish(&self, notes: &mut Vec<String>) -> Vec<ThreadReport> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + FINISH_TIMEOUT;
        let mut reports = Vec::new();
        while reports.len() < self.threads {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Msg::Done(r)) => reports.push(*r),
                Ok(Msg::Connected { .. }) => {}
                Err(_) => {
                    notes.push(format!(
                        "{} client thread(s) did not report within {FINISH_TIMEOUT:?}",
                        self.threads - reports.len()
                    ));
                    break;
                }
            }
        }
        for r in &reports {
            for (stage, (n, sample)) in &r.open_errors {
                notes.push(format!(
                    "{n} connection(s) failed at {stage}, e.g. {sample}"
                ));
            }
            if r.held_closed > 0 {
                notes.push(format!(
                    "{} held connection(s) were closed by the server",
                    r.held_closed
                ));
            }
            if r.held_unread > 0 {
                notes.push(format!(
                    "{} held connection(s) had unread bytes from the server",
                    r.held_unread
                ));
            }
            if r.stuck > 0 {
                notes.push(format!(
                    "{} read task(s) did not stop when cancelled",
                    r.stuck
                ));
            }
        }
        reports
    }
}

/// The server, this process and the whole machine at one instant.
struct Snap {
    server: Sample,
    /// Crossnode: node A, then redis-server.
    others: Vec<Sample>,
    self_cpu_s: f64,
    machine_busy_s: f64,
}

fn snap(server: &Server) -> Result<Snap, String> {
    snap_all(server, None)
}

fn snap_all(server: &Server, cross: Option<&Cross>) -> Result<Snap, String> {
    let others = match cross {
        Some(c) => vec![c.node_a.sample()?, c.redis.sample()?],
        None => Vec::new(),
    };
    Ok(Snap {
        server: server.sample()?,
        others,
        self_cpu_s: self_cpu_s(),
        machine_busy_s: machine_busy_s(),
    })
}

/// CPU used by everything else on the machine between two snaps, in percent of
/// one core: other benchmarks or builds make the figures noisy.
fn other_cpu_pct(a: &Snap, b: &Snap) -> f64 {
    let wall = b.machine_busy_s - a.machine_busy_s;
    let others: f64 = a
        .others
        .iter()
        .zip(&b.others)
        .map(|(x, y)| y.cpu_s - x.cpu_s)
        .sum();
    let ours = (b.server.cpu_s - a.server.cpu_s) + others + (b.self_cpu_s - a.self_cpu_s);
    (wall - ours).max(0.0)
}

/// How the wait for the last deliveries went.
struct Drain {
    /// From the publisher's end to the end of the wait.
    waited: Duration,
    /// Deliveries were still arriving at `--drain-max`.
    cut: bool,
}

/// Waits `--drain`, then on while the delivery count still grows (checked every
/// `DRAIN_STEP`), `--drain-max` in all at most. A backlog is late, not lost.
fn drain_tail(args: &Args, shared: &Shared) -> Drain {
    const DRAIN_STEP: Duration = Duration::from_millis(250);
    let t0 = Instant::now();
    let cap = args.drain_max.max(args.drain);
    std::thread::sleep(args.drain);
    let mut seen = shared.received.load(Ordering::Relaxed);
    loop {
        if t0.elapsed() + DRAIN_STEP > cap {
            std::thread::sleep(cap.saturating_sub(t0.elapsed()));
            let now = shared.received.load(Ordering::Relaxed);
            return Drain {
                waited: t0.elapsed(),
                cut: now != seen,
            };
        }
        std::thread::sleep(DRAIN_STEP);
        let now = shared.received.load(Ordering::Relaxed);
        if now == seen {
            return Drain {
                waited: t0.elapsed(),
                cut: false,
            };
        }
        seen = now;
    }
}

/// Waits until `end`, with a progress line on stderr once a second: time measured and
/// deliveries received so far.
fn progress(shared: &Shared, window: Duration, end: Instant) {
    let start = end.checked_sub(window).unwrap_or(end);
    let received_at_start = shared.received.load(Ordering::Relaxed);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_secs(1)));
        let got = shared.received.load(Ordering::Relaxed) - received_at_start;
        let secs = start.elapsed().as_secs_f64().min(window.as_secs_f64());
        eprint!(
            "\r  measuring {secs:5.1} / {:.1} s: {got} deliveries ({:.0}/s)   ",
            window.as_secs_f64(),
            got as f64 / secs.max(0.001)
        );
    }
    eprintln!();
}

fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

fn server_gone(server: &mut Server) -> Result<(), String> {
    process_gone(server, "server")
}

fn process_gone(p: &mut Server, what: &str) -> Result<(), String> {
    match p.exited() {
        None => Ok(()),
        Some(status) => Err(format!(
            "{what} exited during the run ({status}); log {}:\n{}",
            p.log.display(),
            p.log_tail(30)
        )),
    }
}

/// Every process of the run is still there (crossnode: node B, node A, redis).
fn all_alive(server: &mut Server, cross: &mut Option<Cross>) -> Result<(), String> {
    match cross {
        None => server_gone(server),
        Some(c) => {
            process_gone(server, "node B")?;
            process_gone(c.node_a, "node A")?;
            process_gone(c.redis, "redis-server")
        }
    }
}

/// Counters read from the nodes' `/metrics` after the drain (whole run, probe
/// included): figure name, metric family, node.
const NODE_COUNTERS: &[(&str, &str, char)] = &[
    (
        "node_a_redis_published",
        "corecast_redis_published_total",
        'a',
    ),
    (
        "node_b_redis_received",
        "corecast_redis_received_total",
        'b',
    ),
    ("node_a_redis_dropped", "corecast_redis_dropped_total", 'a'),
    ("node_b_redis_dropped", "corecast_redis_dropped_total", 'b'),
    (
        "node_a_fanout_dropped",
        "corecast_fanout_dropped_total",
        'a',
    ),
    (
        "node_b_fanout_dropped",
        "corecast_fanout_dropped_total",
        'b',
    ),
    (
        "node_b_slow_reader_disconnects",
        "corecast_slow_reader_disconnects_total",
        'b',
    ),
    (
        "node_a_redis_connects",
        "corecast_redis_connects_total",
        'a',
    ),
    (
        "node_b_redis_connects",
        "corecast_redis_connects_total",
        'b',
    ),
];

type Counters = BTreeMap<String, f64>;

/// Node A's and node B's metrics, summed per family.
fn scrape_nodes(node_b: &Server, cross: &Cross) -> Result<(Counters, Counters), String> {
    let get = |s: &Server, name: &str| {
        let port = s
            .metrics_port
            .ok_or_else(|| format!("{name} has no metrics port"))?;
        scrape(port).map_err(|e| format!("{name}: {e}"))
    };
    Ok((get(cross.node_a, "node A")?, get(node_b, "node B")?))
}

/// Publishes on node A until a subscriber on node B sees one, or `--link-timeout`;
/// returns how many probes node A accepted.
fn wait_link(
    args: &Args,
    node_b: &Server,
    cross: &Cross,
    pub_plan: &PubPlan,
    r: &mut RunResult,
) -> Result<u64, String> {
    eprintln!(
        "  waiting for a probe on {PROBE_CHANNEL} to cross node A (:{}) -> redis (:{}) -> node B (:{})",
        cross.node_a.port, cross.redis.port, node_b.port
    );
    let probe = publish::probe(
        pub_plan,
        node_b.addr,
        &ws_path(args),
        PROBE_CHANNEL,
        args.link_timeout,
    )
    .map_err(|e| {
        format!(
            "{e}\n  node A log {}:\n{}\n  node B log {}:\n{}",
            cross.node_a.log.display(),
            cross.node_a.log_tail(10),
            node_b.log.display(),
            node_b.log_tail(10)
        )
    })?;
    eprintln!(
        "  linked: probe crossed after {:.0} ms, {} publish(es)",
        probe.waited.as_secs_f64() * 1000.0,
        probe.published
    );
    for e in &probe.errors {
        r.notes.push(format!("link probe: {e}"));
    }
    r.put("link_wait_ms", probe.waited.as_secs_f64() * 1000.0);
    r.put("link_probes", probe.published as f64);
    Ok(probe.accepted)
}

/// Publishes through REST (on node A for crossnode) to subscribers on `server`.
fn delivery(
    args: &Args,
    server: &mut Server,
    mut cross: Option<Cross>,
) -> Result<RunResult, String> {
    let mut r = RunResult::default();
    let idle = server.sample()?;
    let shared = Arc::new(Shared::new());
    let clients = connect_all(args, server.addr, &shared, true)?;
    all_alive(server, &mut cross)?;
    let subscribed = server.sample()?;
    if clients.opened == 0 {
        return Err("no connection subscribed".into());
    }

    let mut pub_plan = PubPlan {
        addr: cross.as_ref().map_or(server.addr, |c| c.node_a.addr),
        app_id: args.app_id.clone(),
        app_key: args.app_key.clone(),
        app_secret: args.app_secret.clone(),
        prefix: args.scenario.channel_prefix(),
        channels: args.channels,
        rate: args.rate,
        payload_bytes: args.payload_bytes,
        text_payload: args.text_payload,
        publishers: args.publishers,
        start_ns: 0,
        end_ns: 0,
    };
    let mut probes_accepted = 0;
    if let Some(c) = &cross {
        probes_accepted = wait_link(args, server, c, &pub_plan, &mut r)?;
        all_alive(server, &mut cross)?;
    }

    let ns = |d: Duration| d.as_nanos() as u64;
    let start_ns = shared.now_ns() + ns(Duration::from_millis(100));
    let win_start_ns = start_ns + ns(args.warmup);
    let win_end_ns = win_start_ns + ns(args.duration);
    shared.win_start_ns.store(win_start_ns, Ordering::Relaxed);
    shared.win_end_ns.store(win_end_ns, Ordering::Relaxed);
    pub_plan.start_ns = start_ns;
    pub_plan.end_ns = win_end_ns;
    let client_events = args.scenario == Scenario::ClientEvents;
    let pub_rx = if client_events {
        super::client_events::spawn(pub_plan, ws_path(args), shared.clone())
    } else {
        publish::spawn(pub_plan, shared.clone())
    };
    eprintln!(
        "  {} {} for {:.1} s warmup + {:.1} s measured",
        if client_events {
            "sending client events"
        } else {
            "publishing"
        },
        if args.rate == 0 {
            "flat out".to_string()
        } else {
            format!("{} events/s", args.rate)
        },
        args.warmup.as_secs_f64(),
        args.duration.as_secs_f64()
    );
    sleep_until(shared.base + Duration::from_nanos(win_start_ns));
    let counting = match (args.system_counts, server.metrics_port, server.pid) {
        (true, Some(port), Some(pid)) => Some(super::counts::Counting::start(
            &args.perf_bin,
            pid,
            port,
            &args.log_dir,
        )?),
        _ => None,
    };
    let snap_a = snap_all(server, cross.as_ref())?;
    let (a, self_a) = (snap_a.server, snap_a.self_cpu_s);
    progress(
        &shared,
        args.duration,
        shared.base + Duration::from_nanos(win_end_ns),
    );
    let snap_b = snap_all(server, cross.as_ref())?;
    let (b, self_b) = (snap_b.server, snap_b.self_cpu_s);
    if let Some(c) = counting {
        for (name, v) in c.finish()? {
            r.put(name, v);
        }
    }
    let publishing = pub_rx.recv_timeout(Duration::from_secs(20));
    let drain = drain_tail(args, &shared);
    if drain.cut {
        r.notes.push(format!(
            "deliveries were still arriving {:.1} s after the last publish (--drain-max)",
            drain.waited.as_secs_f64()
        ));
    }
    let counters = cross.as_ref().map(|c| scrape_nodes(server, c));
    let crashed = all_alive(server, &mut cross);
    let reports = clients.finish(&mut r.notes);
    crashed?;
    let publishing = publishing.map_err(|_| "the publisher did not finish".to_string())?;

    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    let (mut window, mut total, mut pings, mut other) = (0u64, 0u64, 0u64, 0u64);
    let (mut lost, mut extra, mut dups, mut reordered, mut bogus, mut expected) =
        (0, 0, 0, 0, 0, 0);
    let mut lost_gaps = 0u64;
    let mut ends: BTreeMap<String, usize> = BTreeMap::new();
    let mut receivers = 0usize;
    let mut late_of_failed = 0u64;
    let mut reorder_samples: Vec<String> = Vec::new();
    for t in &reports {
        let _ = hist.add(&t.recv.hist);
        window += t.recv.window;
        total += t.recv.total;
        pings += t.recv.pings;
        other += t.recv.other;
        for s in &t.recv.other_samples {
            r.notes.push(format!("unexpected message: {s}"));
        }
        for c in &t.conns {
            receivers += 1;
            let published = publishing.ok[c.channel];
            let maybe = publishing.uncertain[c.channel];
            expected += published;
            let missing = published.saturating_sub(c.distinct);
            lost += missing;
            // Missing above the highest seq received is the tail; below it, gaps.
            lost_gaps += missing - published.saturating_sub(c.next).min(missing);
            extra += c.distinct.saturating_sub(published + maybe);
            late_of_failed += c.distinct.saturating_sub(published).min(maybe);
            if let Some((seq, after, us)) = c.first_reorder
                && reorder_samples.len() < 3
            {
                reorder_samples.push(format!(
                    "{}-{}: seq {seq} arrived after seq {after}, {:.3} ms after it was sent",
                    args.scenario.channel_prefix(),
                    c.channel,
                    us as f64 / 1000.0
                ));
            }
            dups += c.dups;
            reordered += c.reordered;
            bogus += c.bogus;
            let end = match &c.end {
                End::Stopped => continue,
                End::Eof => "server closed TCP (EOF)".to_string(),
                End::Close(code) => format!("server sent close {code}"),
                End::ReadError(e) => format!("read error: {e}"),
            };
            *ends.entry(end).or_insert(0) += 1;
        }
    }
    for (end, n) in &ends {
        r.notes
            .push(format!("{n} connection(s) ended early: {end}"));
    }
    if lost > 0 {
        r.notes.push(format!(
            "{lost} deliveries lost (of {expected} expected): {lost_gaps} in gaps (a later \
             event of the channel arrived), {} at the tail (nothing after them arrived)",
            lost - lost_gaps
        ));
    }
    if reordered > 0 || dups > 0 || extra > 0 || bogus > 0 {
        r.notes.push(format!(
            "{reordered} reordered, {dups} duplicated, {extra} unexpected extra, {bogus} unparsable"
        ));
    }
    for sample in reorder_samples {
        r.notes.push(format!("reordered: {sample}"));
    }
    if publishing.errors > 0 {
        for (kind, n) in &publishing.error_kinds {
            r.notes.push(format!("{n} publish error(s): {kind}"));
        }
        for sample in &publishing.error_samples {
            r.notes.push(format!("failed publish: {sample}"));
        }
        if late_of_failed > 0 {
            r.notes.push(format!(
                "{late_of_failed} deliveries of events whose REST request failed arrived anyway"
            ));
        }
    }
    if receivers < clients.opened {
        r.notes.push(format!(
            "{} receivers did not report",
            clients.opened - receivers
        ));
    }
    let secs = args.duration.as_secs_f64();
    let published: u64 = publishing.ok.iter().sum();
    if published == 0 {
        let why = publishing
            .error_kinds
            .iter()
            .max_by_key(|(_, n)| **n)
            .map_or("none was sent".to_string(), |(kind, n)| {
                format!("{n}x {kind}")
            });
        return Err(format!("the server accepted no event: {why}"));
    }
    r.put("connections", clients.opened as f64);
    r.put("connections_failed", clients.failed as f64);
    r.put("connect_s", clients.elapsed.as_secs_f64());
    r.put("events_published", published as f64);
    r.put(
        "publish_rate_per_s",
        published as f64 / (args.warmup.as_secs_f64() + secs).max(1e-9),
    );
    r.put("publish_errors", publishing.errors as f64);
    if !client_events {
        r.put(
            "rest_p50_us",
            publishing.rest_hist.value_at_quantile(0.5) as f64,
        );
        r.put(
            "rest_p99_us",
            publishing.rest_hist.value_at_quantile(0.99) as f64,
        );
    }
    r.put("deliveries", window as f64);
    r.put("deliveries_per_s", window as f64 / secs);
    r.put("deliveries_total", total as f64);
    r.put("deliveries_expected", expected as f64);
    r.put("latency_p50_us", hist.value_at_quantile(0.5) as f64);
    r.put("latency_p99_us", hist.value_at_quantile(0.99) as f64);
    r.put("latency_p999_us", hist.value_at_quantile(0.999) as f64);
    r.put("latency_max_us", hist.max() as f64);
    r.put("lost", lost as f64);
    r.put("lost_in_gaps", lost_gaps as f64);
    match counters {
        Some(Ok((node_a, node_b))) => {
            let count = |m: &Counters, family: &str| m.get(family).copied().unwrap_or(0.0) as u64;
            let accepted = published + probes_accepted;
            let sent = count(&node_a, "corecast_redis_published_total");
            let got = count(&node_b, "corecast_redis_received_total");
            if sent < accepted {
                r.notes.push(format!(
                    "node A answered 200 to {accepted} events (probes included) but published \
                     {sent} to Redis"
                ));
            }
            if got < sent {
                r.notes.push(format!(
                    "node A published {sent} messages to Redis, node B received {got}"
                ));
            }
            for (name, family, map) in NODE_COUNTERS {
                let v = if *map == 'a' { &node_a } else { &node_b };
                let v = v.get(*family).copied().unwrap_or(f64::NAN);
                r.put(name, v);
                if (name.ends_with("dropped") || name.ends_with("disconnects")) && v > 0.0 {
                    r.notes.push(format!("{name} = {v} ({family})"));
                }
            }
        }
        Some(Err(e)) => r.notes.push(format!("metrics scrape failed: {e}")),
        None => {}
    }
    r.put("drain_s", drain.waited.as_secs_f64());
    r.put("reordered", reordered as f64);
    r.put("duplicated", dups as f64);
    r.put("delivered_after_publish_error", late_of_failed as f64);
    r.put(
        "connections_closed_early",
        ends.values().sum::<usize>() as f64,
    );
    r.put("server_pings", pings as f64);
    r.put("other_messages", other as f64);
    let server_cpu = b.cpu_s - a.cpu_s;
    if cross.is_none() {
        r.put("server_cpu_s", server_cpu);
        r.put("server_cpu_user_s", b.user_s - a.user_s);
        r.put("server_cpu_sys_s", b.sys_s - a.sys_s);
        r.put("server_cpu_pct", server_cpu / secs * 100.0);
        r.put("server_cpu_us_per_delivery", per(server_cpu * 1e6, window));
        r.put("server_cpu_clock_s", b.cpu_clock_s - a.cpu_clock_s);
        r.put("server_rss_idle_bytes", idle.rss_bytes as f64);
        r.put("server_rss_subscribed_bytes", subscribed.rss_bytes as f64);
        r.put("server_rss_bytes", b.rss_bytes as f64);
    } else {
        let [na0, rd0] = [snap_a.others[0], snap_a.others[1]];
        let [na1, rd1] = [snap_b.others[0], snap_b.others[1]];
        let (node_a_cpu, redis_cpu) = (na1.cpu_s - na0.cpu_s, rd1.cpu_s - rd0.cpu_s);
        // Events answered 200 inside the measured window, estimated from the rate.
        let window_events = published as f64 * secs / (args.warmup.as_secs_f64() + secs);
        r.put("node_b_cpu_s", server_cpu);
        r.put("node_b_cpu_user_s", b.user_s - a.user_s);
        r.put("node_b_cpu_sys_s", b.sys_s - a.sys_s);
        r.put("node_b_cpu_pct", server_cpu / secs * 100.0);
        r.put("node_b_cpu_us_per_delivery", per(server_cpu * 1e6, window));
        r.put("node_b_cpu_clock_s", b.cpu_clock_s - a.cpu_clock_s);
        r.put("node_a_cpu_s", node_a_cpu);
        r.put("node_a_cpu_user_s", na1.user_s - na0.user_s);
        r.put("node_a_cpu_sys_s", na1.sys_s - na0.sys_s);
        r.put("node_a_cpu_pct", node_a_cpu / secs * 100.0);
        r.put(
            "node_a_cpu_us_per_event",
            per(node_a_cpu * 1e6, window_events.round() as u64),
        );
        r.put("redis_cpu_s", redis_cpu);
        r.put("redis_cpu_pct", redis_cpu / secs * 100.0);
        r.put(
            "cluster_cpu_us_per_delivery",
            per((server_cpu + node_a_cpu + redis_cpu) * 1e6, window),
        );
        r.put("node_b_rss_idle_bytes", idle.rss_bytes as f64);
        r.put("node_b_rss_subscribed_bytes", subscribed.rss_bytes as f64);
        r.put("node_b_rss_bytes", b.rss_bytes as f64);
        r.put("node_a_rss_bytes", na1.rss_bytes as f64);
        r.put("redis_rss_bytes", rd1.rss_bytes as f64);
    }
    r.put("loadgen_cpu_s", self_b - self_a);
    r.put("loadgen_cpu_pct", (self_b - self_a) / secs * 100.0);
    r.put(
        "other_cpu_pct",
        other_cpu_pct(&snap_a, &snap_b) / secs * 100.0,
    );
    Ok(r)
}

fn memory(args: &Args, server: &mut Server) -> Result<RunResult, String> {
    let mut r = RunResult::default();
    let snap_a = snap(server)?;
    let before = snap_a.server;
    let shared = Arc::new(Shared::new());
    let clients = connect_all(args, server.addr, &shared, false)?;
    let snap_b = snap(server)?;
    let connected = snap_b.server;
    eprintln!("  idle for {:.1} s", args.idle.as_secs_f64());
    std::thread::sleep(args.idle);
    server_gone(server)?;
    let after = server.sample()?;
    let (opened, failed, elapsed) = (clients.opened, clients.failed, clients.elapsed);
    let reports = clients.finish(&mut r.notes);
    let growth = after.rss_bytes as f64 - before.rss_bytes as f64;
    r.put("connections", opened as f64);
    r.put("connections_failed", failed as f64);
    r.put("connect_s", elapsed.as_secs_f64());
    r.put("server_rss_before_bytes", before.rss_bytes as f64);
    r.put("server_rss_connected_bytes", connected.rss_bytes as f64);
    r.put("server_rss_after_bytes", after.rss_bytes as f64);
    r.put(
        "server_rss_per_connection_bytes",
        per(growth, opened as u64),
    );
    r.put("server_cpu_connect_s", connected.cpu_s - before.cpu_s);
    r.put("server_cpu_idle_s", after.cpu_s - connected.cpu_s);
    r.put("connections_closed_by_server", held_closed(&reports));
    let secs = elapsed.as_secs_f64().max(1e-9);
    r.put(
        "other_cpu_pct",
        other_cpu_pct(&snap_a, &snap_b) / secs * 100.0,
    );
    Ok(r)
}

fn connect(args: &Args, server: &mut Server) -> Result<RunResult, String> {
    let mut r = RunResult::default();
    let shared = Arc::new(Shared::new());
    let snap_a = snap(server)?;
    let (before, self_a) = (snap_a.server, snap_a.self_cpu_s);
    let clients = connect_all(args, server.addr, &shared, false)?;
    let snap_b = snap(server)?;
    let (after, self_b) = (snap_b.server, snap_b.self_cpu_s);
    server_gone(server)?;
    let (opened, failed, elapsed) = (clients.opened, clients.failed, clients.elapsed);
    let reports = clients.finish(&mut r.notes);
    let cpu = after.cpu_s - before.cpu_s;
    r.put("connections", opened as f64);
    r.put("connections_failed", failed as f64);
    r.put("connect_s", elapsed.as_secs_f64());
    r.put(
        "connections_per_s",
        opened as f64 / elapsed.as_secs_f64().max(1e-9),
    );
    r.put("server_cpu_s", cpu);
    r.put("server_cpu_user_s", after.user_s - before.user_s);
    r.put("server_cpu_sys_s", after.sys_s - before.sys_s);
    r.put(
        "server_cpu_us_per_connection",
        per(cpu * 1e6, opened as u64),
    );
    let clock = after.cpu_clock_s - before.cpu_clock_s;
    r.put("server_cpu_clock_s", clock);
    r.put(
        "server_cpu_clock_us_per_connection",
        per(clock * 1e6, opened as u64),
    );
    r.put("server_rss_before_bytes", before.rss_bytes as f64);
    r.put("server_rss_after_bytes", after.rss_bytes as f64);
    r.put(
        "server_rss_per_connection_bytes",
        per(
            after.rss_bytes as f64 - before.rss_bytes as f64,
            opened as u64,
        ),
    );
    r.put("connections_closed_by_server", held_closed(&reports));
    r.put("loadgen_cpu_s", self_b - self_a);
    let secs = elapsed.as_secs_f64().max(1e-9);
    r.put(
        "other_cpu_pct",
        other_cpu_pct(&snap_a, &snap_b) / secs * 100.0,
    );
    Ok(r)
}

fn held_closed(reports: &[ThreadReport]) -> f64 {
    reports.iter().map(|t| t.held_closed).sum::<usize>() as f64
}

/// `total / n`, or 0 when nothing was counted.
fn per(total: f64, n: u64) -> f64 {
    if n == 0 { 0.0 } else { total / n as f64 }
}
