//! Command line options: `--name value` or `--name=value`, defaults per scenario.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// What the run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Publish through REST at a fixed rate, measure fan-out cost and latency.
    Delivery,
    /// Hold many idle subscribed connections, measure RSS growth.
    Memory,
    /// Open and subscribe connections in waves, measure CPU per connection.
    Connect,
    /// Two nodes joined by Redis: subscribe on node B, publish through node A's REST
    /// API, measure cross-node delivery cost and latency.
    Crossnode,
    /// No server: only the same-run baseline (see `--baseline`).
    Baseline,
    /// Like `Delivery`, but the events are client events sent over WebSocket by one
    /// member of each private channel, delivered to its other members.
    ClientEvents,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Delivery => "fanout",
            Scenario::Memory => "memory",
            Scenario::Connect => "connect",
            Scenario::Crossnode => "crossnode",
            Scenario::Baseline => "baseline",
            Scenario::ClientEvents => "client-events",
        }
    }

    /// Channel name prefix, so server logs tell the scenarios apart.
    pub fn channel_prefix(self) -> &'static str {
        match self {
            Scenario::Delivery => "bench",
            Scenario::Memory => "mem",
            Scenario::Connect => "conn",
            Scenario::Crossnode => "xnode",
            Scenario::Baseline => "bench",
            Scenario::ClientEvents => "private-cev",
        }
    }
}

/// Every knob of a run, with units in the names.
#[derive(Clone, Debug)]
pub struct Args {
    pub scenario: Scenario,
    /// The server binary, started as `<bin> start`.
    pub server_bin: PathBuf,
    /// `SOKETI_PORT` for the spawned server (crossnode: node A; node B gets `port + 1`).
    pub port: u16,
    /// `CORECAST_SHARDS` for the spawned server.
    pub shards: usize,
    pub connections: usize,
    pub channels: usize,
    /// Events per second over REST; 0 means as fast as the publishers go.
    pub rate: u64,
    /// Measured window.
    pub duration: Duration,
    /// Publishing before the measured window starts.
    pub warmup: Duration,
    /// Wait after the last publish before counting what is missing.
    pub drain: Duration,
    /// Past `drain`, keep waiting while deliveries still arrive, up to this in all.
    pub drain_max: Duration,
    /// Idle time before the memory reading (memory scenario).
    pub idle: Duration,
    /// Length of the event's `data` string in bytes.
    pub payload_bytes: usize,
    /// Pad `data` with ordinary words instead of `x` (text that compresses as an app's
    /// JSON does, not to nothing).
    pub text_payload: bool,
    /// The started server runs with `CORECAST_WS_COMPRESSION=on` and every client offers
    /// permessage-deflate and inflates compressed frames.
    pub compression: bool,
    /// Connections opened concurrently per wave (all client threads together).
    pub batch: usize,
    /// Whole-scenario repetitions, each with a fresh server.
    pub runs: usize,
    pub client_threads: usize,
    /// Keep-alive REST connections, each with one request in flight.
    pub publishers: usize,
    pub app_id: String,
    pub app_key: String,
    pub app_secret: String,
    /// Where the server's stdout and stderr go, one file per run.
    pub log_dir: PathBuf,
    /// The Redis server the crossnode scenario starts, as
    /// `<bin> --port P --save '' --appendonly no`.
    pub redis_bin: PathBuf,
    /// How long the crossnode scenario waits for a probe event to cross the nodes.
    pub link_timeout: Duration,
    /// Delivery: after each run, measure the kernel-only fan-out baseline.
    pub baseline: bool,
    /// Print one JSON object on stdout instead of the table (progress stays on stderr).
    pub json: bool,
    /// Fan-out: count the server's syscalls and io_uring submissions (`perf stat` on
    /// the kernel's tracepoints), allocations and bytes written over the measured window.
    pub system_counts: bool,
    /// `perf`, for `--system-counts`.
    pub perf_bin: PathBuf,
    /// Fan-out: step the rate up until p99 latency passes `p99_ms` or a delivery is lost.
    pub sweep: bool,
    /// The sweep's latency target.
    pub p99_ms: f64,
    /// The sweep's first rate, in deliveries per second; each step doubles it until the
    /// target is missed, then halves the step between the last good and the first bad.
    pub sweep_start_per_s: u64,
    /// Runs after the first missed rate, each halving the gap to the last rate held.
    pub sweep_steps: usize,
    /// The sweep's highest rate (0: none; the sweep stops doubling there).
    pub sweep_max_per_s: u64,
    /// Write the figures `corecast plan` reads (fan-out sweep, memory, connect) here.
    pub profile: Option<PathBuf>,
    /// Write a self-contained HTML report (SVG charts) of a sweep here.
    pub report: Option<PathBuf>,
    /// An existing server to measure instead of one the bench starts (`--target
    /// ws://host:port`), and the text given.
    pub target: Option<(SocketAddr, String)>,
    /// With `target`: the server's pid on this machine, for its CPU and memory.
    pub server_pid: Option<i32>,
    /// Memory: one run per connection count (the memory curve); with `--sweep`, the
    /// same runs after the sweep, drawn in its report.
    pub sizes: Vec<usize>,
}

pub const USAGE: &str = "\
usage: corecast bench [options]
  --scenario fanout|client-events|memory|connect|crossnode|baseline
                         (default fanout; delivery = fanout)
  --target ws://HOST:PORT  measure a running server instead of starting one (with
                         --app-id/--app-key/--app-secret of one of its apps; fanout,
                         client-events, connect, and memory with --server-pid)
  --server-pid PID       with --target on this machine: read its CPU and memory
                         from /proc (without it, no server CPU or memory figures)
  --server-bin PATH      the server to start (default: this corecast binary)
  --port N               (default 0 = a free port per run;
                          crossnode: node A on N, node B on N+1)
  --shards N             CORECAST_SHARDS per node (crossnode 1, others 2)
  --connections N        (delivery 2000, memory 19000, connect 5000, crossnode 1000)
  --channels N           (delivery 20, memory 100, connect 20, crossnode 10)
  --rate N               events/s over REST, 0 = flat out (default 500)
  --duration SECS        measured window (default 20)
  --warmup SECS          (default 3)
  --drain SECS           wait after the last publish (default 2)
  --drain-max SECS       then wait on while deliveries still arrive, up to (default 30)
  --idle SECS            memory scenario idle time (default 5)
  --payload BYTES        data string length (default 100)
  --text-payload         pad data with ordinary words instead of x
  --compression          the started server runs with CORECAST_WS_COMPRESSION=on; clients
                         offer permessage-deflate and inflate (and check) what comes compressed
  --batch N              connections per wave (default 500)
  --runs K               repetitions, median reported (default 1)
  --client-threads N     (default 1)
  --publishers N         keep-alive REST connections (default 4)
  --app-id S --app-key S --app-secret S   (default app-id, app-key, app-secret)
  --log-dir PATH         server logs (default $TMPDIR/corecast-bench)
  --redis-bin PATH       crossnode: redis-server to start on a free port (default redis-server)
  --link-timeout SECS    crossnode: wait for a probe to cross A -> B (default 30)
  --baseline             delivery: after each run (server stopped), measure the
                         machine's cost of the bare kernel work of the fan-out
  --json                 one JSON object on stdout (progress lines stay on stderr)
  --system-counts        fanout: syscalls, io_uring submissions, heap allocations and
                         bytes written per delivery over the measured window (perf stat
                         on raw_syscalls:sys_enter and io_uring:io_uring_submit_req;
                         allocations need a server built with --features count-alloc)
  --perf-bin PATH        perf for --system-counts (default perf)
  --sweep                fanout: raise the delivery rate until p99 latency passes
                         --p99-ms or a delivery is lost; report the highest rate held
  --p99-ms MS            the sweep's latency target (default 10)
  --sweep-start N        the sweep's first rate, deliveries/s (default 10000)
  --sweep-steps N        runs after the first failure, halving the gap (default 3)
  --sweep-max N          highest rate to try, deliveries/s (default none)
  --profile PATH         write the measured figures for `corecast plan --profile PATH`
  --report PATH          with --sweep: a self-contained HTML report with SVG charts
  --sizes N,N,...        memory: one run per connection count, the memory curve
                         (RSS against connections) and its bytes per connection;
                         with --sweep: the same runs after it, drawn in the report

client-events: every connection subscribes to private-cev-K (signed with the app
secret), plus one sender per channel that sends client-bench events over its
WebSocket at --rate events/s in all; each reaches the channel's other members.
The started server gets SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES=true; a --target
app must allow client events. Refused events (pusher:error) are publish errors.

crossnode: one redis-server and two nodes with SOKETI_ADAPTER_DRIVER=redis and
metrics on free ports; subscribers on node B only, REST publishes on node A only,
after a probe crossed A -> B; the nodes' redis/fanout counters are read at the end
to tell where lost messages went. Every process is stopped at the end of each run,
whatever happened.

baseline (--scenario baseline, or --baseline with delivery): one std thread owns
--connections accepted loopback sockets and writes a frame the size of a real
delivery to them round robin, one blocking write() per delivery, in bursts of
connections/channels per event at rate x connections/channels writes/s (delivery
with --rate 0: the run's measured deliveries/s; baseline alone: flat out) for
--duration after up to 1 s warmup; a second thread drains the other ends with
epoll. Reports that thread's getrusage(RUSAGE_THREAD) user+sys per write
(baseline_cpu_us_per_write) and, with delivery, server_vs_baseline =
server_cpu_us_per_delivery / baseline_cpu_us_per_write, per run and median.";

impl Args {
    /// Parses the process arguments; `cargo bench` adds `--bench`, which is ignored.
    pub fn parse(raw: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut it = raw.into_iter();
        while let Some(arg) = it.next() {
            if arg == "--bench" {
                continue;
            }
            if arg == "--help" || arg == "-h" {
                return Err(String::new());
            }
            if let Some(flag) = [
                "baseline",
                "json",
                "system-counts",
                "sweep",
                "text-payload",
                "compression",
            ]
            .iter()
            .find(|f| arg.strip_prefix("--") == Some(**f))
            {
                pairs.push(((*flag).into(), "true".into()));
                continue;
            }
            let Some(name) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            match name.split_once('=') {
                Some((n, v)) => pairs.push((n.to_string(), v.to_string())),
                None => {
                    let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                    pairs.push((name.to_string(), v));
                }
            }
        }
        let scenario = match pairs.iter().rev().find(|(n, _)| n == "scenario") {
            None => Scenario::Delivery,
            Some((_, v)) => match v.as_str() {
                "fanout" | "delivery" => Scenario::Delivery,
                "memory" => Scenario::Memory,
                "connect" => Scenario::Connect,
                "crossnode" => Scenario::Crossnode,
                "baseline" => Scenario::Baseline,
                "client-events" => Scenario::ClientEvents,
                other => return Err(format!("unknown scenario {other:?}")),
            },
        };
        let (connections, channels, shards) = match scenario {
            Scenario::Delivery | Scenario::Baseline | Scenario::ClientEvents => (2000, 20, 2),
            Scenario::Memory => (19_000, 100, 2),
            Scenario::Connect => (5000, 20, 2),
            Scenario::Crossnode => (1000, 10, 1),
        };
        let mut a = Args {
            scenario,
            server_bin: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("corecast")),
            port: 0,
            shards,
            connections,
            channels,
            rate: 500,
            duration: Duration::from_secs(20),
            warmup: Duration::from_secs(3),
            drain: Duration::from_secs(2),
            drain_max: Duration::from_secs(30),
            idle: Duration::from_secs(5),
            payload_bytes: 100,
            text_payload: false,
            compression: false,
            batch: 500,
            runs: 1,
            client_threads: 1,
            publishers: 4,
            app_id: "app-id".into(),
            app_key: "app-key".into(),
            app_secret: "app-secret".into(),
            log_dir: std::env::temp_dir().join("corecast-bench"),
            redis_bin: PathBuf::from("redis-server"),
            link_timeout: Duration::from_secs(30),
            baseline: scenario == Scenario::Baseline,
            json: false,
            system_counts: false,
            perf_bin: PathBuf::from("perf"),
            sweep: false,
            p99_ms: 10.0,
            sweep_start_per_s: 10_000,
            sweep_steps: 3,
            sweep_max_per_s: 0,
            profile: None,
            report: None,
            target: None,
            server_pid: None,
            sizes: Vec::new(),
        };
        let given = |n: &str| pairs.iter().any(|(p, _)| p == n);
        let starts_server = ["shards", "port", "server-bin"];
        let own_server: Vec<&str> = starts_server.into_iter().filter(|n| given(n)).collect();
        for (name, v) in pairs.clone() {
            match name.as_str() {
                "scenario" => {}
                "server-bin" => a.server_bin = PathBuf::from(v),
                "port" => a.port = num(&name, &v)?,
                "shards" => a.shards = num(&name, &v)?,
                "connections" => a.connections = num(&name, &v)?,
                "channels" => a.channels = num(&name, &v)?,
                "rate" => a.rate = num(&name, &v)?,
                "duration" => a.duration = secs(&name, &v)?,
                "warmup" => a.warmup = secs(&name, &v)?,
                "drain" => a.drain = secs(&name, &v)?,
                "drain-max" => a.drain_max = secs(&name, &v)?,
                "idle" => a.idle = secs(&name, &v)?,
                "payload" => a.payload_bytes = num(&name, &v)?,
                "text-payload" => a.text_payload = flag(&name, &v)?,
                "compression" => a.compression = flag(&name, &v)?,
                "batch" => a.batch = num(&name, &v)?,
                "runs" => a.runs = num(&name, &v)?,
                "client-threads" => a.client_threads = num(&name, &v)?,
                "publishers" => a.publishers = num(&name, &v)?,
                "app-id" => a.app_id = v,
                "app-key" => a.app_key = v,
                "app-secret" => a.app_secret = v,
                "log-dir" => a.log_dir = PathBuf::from(v),
                "redis-bin" => a.redis_bin = PathBuf::from(v),
                "link-timeout" => a.link_timeout = secs(&name, &v)?,
                "json" => a.json = flag(&name, &v)?,
                "system-counts" => a.system_counts = flag(&name, &v)?,
                "perf-bin" => a.perf_bin = PathBuf::from(v),
                "sweep" => a.sweep = flag(&name, &v)?,
                "p99-ms" => a.p99_ms = num(&name, &v)?,
                "sweep-start" => a.sweep_start_per_s = num(&name, &v)?,
                "sweep-steps" => a.sweep_steps = num(&name, &v)?,
                "sweep-max" => a.sweep_max_per_s = num(&name, &v)?,
                "profile" => a.profile = Some(PathBuf::from(v)),
                "report" => a.report = Some(PathBuf::from(v)),
                "target" => a.target = Some((target_addr(&v)?, v)),
                "server-pid" => a.server_pid = Some(num(&name, &v)?),
                "sizes" => {
                    a.sizes = v
                        .split(',')
                        .map(|n| num::<usize>(&name, n.trim()))
                        .collect::<Result<_, _>>()?;
                    if a.sizes.contains(&0) {
                        return Err("--sizes: connection counts must be at least 1".into());
                    }
                }
                "baseline" => {
                    a.baseline = match v.as_str() {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => false,
                        _ => return Err(format!("--baseline: not a boolean: {v:?}")),
                    } || scenario == Scenario::Baseline
                }
                _ => return Err(format!("unknown option --{name}")),
            }
        }
        let positive = [
            ("shards", a.shards),
            ("connections", a.connections),
            ("channels", a.channels),
            ("batch", a.batch),
            ("runs", a.runs),
            ("client-threads", a.client_threads),
            ("publishers", a.publishers),
        ];
        if let Some((n, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("--{n} must be at least 1"));
        }
        if a.scenario == Scenario::Crossnode && a.port == u16::MAX {
            return Err("--port: crossnode needs port + 1 for node B".into());
        }
        if a.baseline
            && !matches!(
                a.scenario,
                Scenario::Delivery | Scenario::Baseline | Scenario::ClientEvents
            )
        {
            return Err("--baseline goes with --scenario fanout or client-events".into());
        }
        if a.target.is_some() {
            if let Some(n) = own_server.first() {
                return Err(format!(
                    "--{n} describes a server the bench starts; it does not go with --target"
                ));
            }
            if matches!(a.scenario, Scenario::Crossnode | Scenario::Baseline) {
                return Err(format!(
                    "--scenario {} starts its own processes; it does not go with --target",
                    a.scenario.name()
                ));
            }
            if a.system_counts {
                return Err(
                    "--system-counts reads counters of a server the bench starts; it does \
                     not go with --target"
                        .into(),
                );
            }
            if a.server_pid.is_none() && (a.baseline || a.scenario == Scenario::Memory) {
                return Err(format!(
                    "{} against --target needs --server-pid (the figures are the server's \
                     CPU or memory)",
                    if a.baseline {
                        "--baseline"
                    } else {
                        "--scenario memory"
                    }
                ));
            }
        } else if a.server_pid.is_some() {
            return Err("--server-pid goes with --target".into());
        }
        if !a.sizes.is_empty() && a.scenario != Scenario::Memory && !a.sweep {
            return Err("--sizes goes with --scenario memory or --sweep".into());
        }
        let fanout_only = [("system-counts", a.system_counts), ("sweep", a.sweep)];
        if let Some((n, _)) = fanout_only
            .iter()
            .find(|(_, on)| *on && a.scenario != Scenario::Delivery)
        {
            return Err(format!("--{n} goes with --scenario fanout"));
        }
        if a.report.is_some() && !a.sweep {
            return Err("--report draws a sweep: add --sweep".into());
        }
        if a.p99_ms.is_nan() || a.p99_ms <= 0.0 || a.sweep_start_per_s == 0 {
            return Err("--p99-ms and --sweep-start must be positive".into());
        }
        if a.link_timeout.is_zero() {
            return Err("--link-timeout must be positive".into());
        }
        if a.duration.is_zero() {
            return Err("--duration must be positive".into());
        }
        if a.payload_bytes > 60_000 {
            return Err("--payload is limited to 60000 bytes".into());
        }
        Ok(a)
    }
}

/// `ws://host:port[/...]` (or `http://`), resolved to the first address.
fn target_addr(v: &str) -> Result<SocketAddr, String> {
    if v.starts_with("wss://") || v.starts_with("https://") {
        return Err(format!(
            "--target {v}: TLS is not supported by the bench; point it at the server's \
             plain port"
        ));
    }
    let rest = v
        .strip_prefix("ws://")
        .or_else(|| v.strip_prefix("http://"))
        .ok_or_else(|| format!("--target {v}: expected ws://HOST:PORT"))?;
    let host_port = rest.split('/').next().unwrap_or("");
    let with_port = if host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        host_port.to_string()
    } else {
        format!("{host_port}:80")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("--target {v}: {e}"))?
        .next()
        .ok_or_else(|| format!("--target {v}: no address"))
}

fn num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("--{name}: not a number: {v:?}"))
}

fn flag(name: &str, v: &str) -> Result<bool, String> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("--{name}: not a boolean: {v:?}")),
    }
}

fn secs(name: &str, v: &str) -> Result<Duration, String> {
    let s: f64 = num(name, v)?;
    if !(0.0..=3600.0).contains(&s) {
        return Err(format!("--{name}: {s} s is out of range 0..3600"));
    }
    Ok(Duration::from_secs_f64(s))
}
