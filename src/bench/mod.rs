//! `corecast bench`: the load generator shipped with the server, measuring the server's
//! own cost.
//!
//! `corecast bench [options]` (see `corecast bench --help`). Each run starts a fresh
//! `corecast start` (this binary, or `--server-bin`), waits for `GET /ready`,
//! runs one scenario, reads the server's CPU time and RSS from `/proc` around the
//! measured window, stops the server, and prints a summary and one `RESULT {json}`
//! line with the median of every figure over `--runs`.
//!
//! # Layout
//!
//! - `args`: options and their defaults per scenario.
//! - `server`: the child process, `/ready`, `/proc` readings, the fd limit.
//! - `ws`: a minimal masked-frame WebSocket client that subscribes to one channel.
//! - `clients`: client threads (one monoio runtime each) that open connections in
//!   waves and read deliveries: latency, loss, reordering.
//! - `publish`: signed REST publishes over keep-alive connections, paced or flat out.
//! - `scenario`: `fanout` (alias `delivery`), `memory`, `connect`, `crossnode`, `baseline`.
//! - `counts`: `--system-counts`: syscalls, io_uring submissions, allocations and bytes
//!   written per delivery.
//! - `baseline`: the kernel-only fan-out (one thread, blocking `write()` per
//!   delivery on loopback sockets) whose CPU per write the server's CPU per
//!   delivery is read against (`--baseline`, after the server of each run stopped).
//!
//! `crossnode` starts a `redis-server` and two servers with the redis adapter (node A
//! on `--port`, node B on `--port + 1`, or three free ports with `--port 0`),
//! subscribes on B, waits for a probe to cross, publishes through A, and reads the
//! CPU of all three, and the nodes' `/metrics` counters (published to / received from
//! Redis, dropped) after the drain. Every process is stopped at the end of each run.

mod args;

mod baseline;

mod client_events;
mod clients;
mod counts;
mod curve;

mod profile;
mod publish;
mod report;

mod scenario;

mod server;
mod sweep;

mod ws;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;

use serde_json::{Map, Value, json};

use args::{Args, Scenario, USAGE};
use scenario::{Cross, RunResult};
use server::{Exit, Server};

/// Descriptors beyond one per connection: publishers, io_uring, std streams, logs.
const FD_HEADROOM: u64 = 64;

/// `corecast bench ARGS`.
pub fn main(raw: Vec<String>) -> ExitCode {
    let args = match Args::parse(raw) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("corecast bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    ws::offer_deflate(args.compression);
    let most = args
        .sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(args.connections);
    let mut needed = most as u64 + args.publishers as u64 + FD_HEADROOM;
    if args.baseline {
        // Both ends of every baseline socket live in this process.
        needed = needed.max(2 * args.connections as u64 + FD_HEADROOM);
    }
    if let Err(e) = server::ensure_fd_limit(needed) {
        eprintln!("corecast bench: {e}");
        return ExitCode::from(2);
    }

    if args.sweep {
        return run_sweep(&args);
    }
    if !args.sizes.is_empty() {
        return run_curve(&args);
    }
    let mut results: Vec<RunResult> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for k in 0..args.runs {
        eprintln!(
            "== {} run {}/{}: {} connections, {} shard(s)",
            args.scenario.name(),
            k + 1,
            args.runs,
            args.connections,
            args.shards
        );
        match run_once(&args, k) {
            Ok(r) => {
                print_run(&r);
                results.push(r);
            }
            Err(e) => {
                eprintln!("corecast bench: run {} failed: {e}", k + 1);
                failures.push(format!("run {}: {e}", k + 1));
            }
        }
    }
    let out = report(&args, &results, &failures);
    let mut ok = failures.is_empty() && !results.is_empty();
    if let Some(path) = &args.profile {
        match profile::section_of_run(&out) {
            Some(_) if !ok => {
                eprintln!("corecast bench: a run failed; the profile is left as it was");
            }
            Some((name, section)) => {
                if let Err(e) = profile::write(path, name, section) {
                    eprintln!("corecast bench: {e}");
                    ok = false;
                }
            }
            None => eprintln!(
                "corecast bench: --scenario {} has no profile section",
                args.scenario.name()
            ),
        }
    }
    // Leftover threads (a stuck client) must not keep the process alive.
    std::process::exit(if ok { 0 } else { 1 })
}

/// `--scenario memory --sizes ...`: the memory curve, its table or JSON, and its
/// profile section.
fn run_curve(args: &Args) -> ExitCode {
    let curve = curve::measure(args, run_once);
    if args.json {
        println!("{curve:#}");
    } else {
        curve::print(&curve, &server_desc(args));
        println!("RESULT {curve}");
    }
    let mut ok = curve["failures"].as_array().is_some_and(|f| f.is_empty())
        && curve["fit_bytes_per_connection"].is_number();
    if let Some(path) = &args.profile {
        if ok {
            if let Err(e) = profile::write(path, "memory", profile::section_of_curve(&curve)) {
                eprintln!("corecast bench: {e}");
                ok = false;
            }
        } else {
            eprintln!("corecast bench: a run failed; the profile is left as it was");
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `--sweep`: fan-out runs at rising rates; the JSON (or a table), the profile section
/// and the HTML report.
fn run_sweep(args: &Args) -> ExitCode {
    let points = sweep::run(args, |a| {
        let r = run_once(a, 0)?;
        print_run(&r);
        Ok(r)
    });
    let mut out = sweep::json(args, &points);
    if !args.sizes.is_empty() {
        out["memory_curve"] = curve::measure(args, run_once);
    }
    if args.json {
        println!("{out:#}");
    } else {
        println!();
        println!(
            "corecast bench --sweep | {} | connections {} | channels {} | p99 target {} ms",
            server_desc(args),
            args.connections,
            args.channels,
            args.p99_ms
        );
        println!(
            "  {:>12} {:>12} {:>9} {:>9} {:>11} {:>6}  result",
            "asked/s", "delivered/s", "p50 ms", "p99 ms", "CPU us/dlv", "lost"
        );
        for p in &points {
            let f = |n: &str| {
                p.figures
                    .figures
                    .iter()
                    .find(|x| x.0 == n)
                    .map_or(f64::NAN, |x| x.1)
            };
            println!(
                "  {:>12} {:>12.0} {:>9.2} {:>9.2} {:>11.2} {:>6.0}  {} ({})",
                p.target_per_s,
                f("deliveries_per_s"),
                f("latency_p50_us") / 1000.0,
                f("latency_p99_us") / 1000.0,
                f("server_cpu_us_per_delivery"),
                f("lost"),
                if p.held { "held" } else { "missed" },
                p.why
            );
        }
        match out["highest_sustained_deliveries_per_s"].as_u64() {
            Some(r) => println!(
                "  highest rate held: {r} deliveries/s at {:.2} us CPU per delivery",
                out["cpu_us_per_delivery_at_highest"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
            ),
            None => println!("  no rate was held within the target"),
        }
    }
    let mut ok = out["highest_sustained_deliveries_per_s"].is_u64();
    if let Some(path) = &args.report {
        match std::fs::write(path, report::html(&out)) {
            Ok(()) => eprintln!("corecast bench: report written to {}", path.display()),
            Err(e) => {
                eprintln!("corecast bench: {}: {e}", path.display());
                ok = false;
            }
        }
    }
    if let Some(path) = &args.profile
        && ok
        && let Err(e) = profile::write(path, "fanout", profile::section_of_sweep(&out))
    {
        eprintln!("corecast bench: {e}");
        ok = false;
    }
    std::process::exit(if ok { 0 } else { 1 })
}

/// One fresh server, one scenario, server stopped whatever happened.
fn run_once(args: &Args, k: usize) -> Result<RunResult, String> {
    let tag = format!(
        "{}-shards{}-run{}",
        args.scenario.name(),
        args.shards,
        k + 1
    );
    if args.scenario == Scenario::Crossnode {
        return run_crossnode(args, &tag);
    }
    if args.scenario == Scenario::Baseline {
        let mut r = RunResult::default();
        scenario::baseline(args, delivery_rate(args), &mut r)?;
        return Ok(r);
    }
    if let Some((addr, _)) = &args.target {
        return run_target(args, *addr);
    }
    let mut args = args.clone();
    if args.port == 0 {
        args.port = free_ports::<1>()?[0];
    }
    let args = &args;
    // --system-counts reads the server's own counters from its metrics port.
    let metrics_port = if args.system_counts {
        Some(free_ports::<1>()?[0])
    } else {
        None
    };
    let mut env: Vec<(&str, String)> = metrics_port
        .map(|port| {
            vec![
                ("SOKETI_METRICS_ENABLED", "true".to_string()),
                ("SOKETI_METRICS_HOST", "127.0.0.1".to_string()),
                ("SOKETI_METRICS_SERVER_PORT", port.to_string()),
            ]
        })
        .unwrap_or_default();
    if args.scenario == Scenario::ClientEvents {
        env.push((
            "SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES",
            "true".to_string(),
        ));
    }
    if args.compression {
        env.push(("CORECAST_WS_COMPRESSION", "on".to_string()));
    }
    let mut server = Server::spawn(args, args.port, &tag, &env)?;
    server.metrics_port = metrics_port;
    let outcome = server.wait_ready().and_then(|ready| {
        eprintln!(
            "  server pid {} ready in {} ms",
            server.pid.unwrap_or(0),
            ready.as_millis()
        );
        scenario::run(args, &mut server)
    });
    let log = server.log.clone();
    let tail = server.log_tail(10);
    let exit = server.stop();
    let mut result = outcome?;
    check_exit("server", &exit, &log, &tail, &mut result.notes)?;
    if !result.notes.is_empty() {
        result.notes.push(format!("server log: {}", log.display()));
    }
    if args.baseline {
        // Right after the measured window, with the server gone.
        add_baseline(args, &mut result)?;
    }
    Ok(result)
}

/// The same-run baseline at the rate asked for, or with `--rate 0` at the rate the
/// server actually delivered.
fn add_baseline(args: &Args, result: &mut RunResult) -> Result<(), String> {
    let per_s = match delivery_rate(args) {
        0.0 => figure(result, "deliveries_per_s").unwrap_or(0.0),
        r => r,
    };
    scenario::baseline(args, per_s, result)
}

/// Figures read from the server's `/proc` entries: without `--server-pid` a
/// `--target` run has none of them.
const SERVER_FIGURES: &[&str] = &[
    "server_cpu",
    "server_rss",
    "server_vs_baseline",
    "other_cpu_pct",
];

/// One run against the server at `addr` (`--target`): ready check, scenario,
/// nothing started or stopped.
fn run_target(args: &Args, addr: std::net::SocketAddr) -> Result<RunResult, String> {
    let mut server = Server::attach(addr, args.server_pid);
    if let Some(pid) = args.server_pid {
        server::proc_sample(pid).map_err(|e| format!("--server-pid {pid}: {e}"))?;
    }
    let ready = server
        .wait_ready()
        .map_err(|e| format!("--target {addr}: {e}"))?;
    eprintln!(
        "  target {addr} ready in {} ms{}",
        ready.as_millis(),
        args.server_pid
            .map_or(String::new(), |p| format!(", server pid {p}"))
    );
    let mut result = scenario::run(args, &mut server)?;
    if args.server_pid.is_none() {
        result
            .figures
            .retain(|(n, _)| !SERVER_FIGURES.iter().any(|p| n.starts_with(p)));
        result.notes.push(
            "no server CPU or memory figures: the target's pid was not given (--server-pid)".into(),
        );
    } else if args.baseline {
        // The target keeps running: the baseline shares the machine with it.
        add_baseline(args, &mut result)?;
    }
    Ok(result)
}

/// Deliveries/s the delivery scenario asks for: rate x connections / channels (0
/// with `--rate 0`).
fn delivery_rate(args: &Args) -> f64 {
    args.rate as f64 * args.connections as f64 / args.channels as f64
}

pub(super) fn figure(r: &RunResult, name: &str) -> Option<f64> {
    r.figures.iter().find(|f| f.0 == name).map(|f| f.1)
}

/// Redis, node A, node B; the scenario; then B, A and Redis stopped whatever happened
/// (and killed by `Drop` if we never get that far).
fn run_crossnode(args: &Args, tag: &str) -> Result<RunResult, String> {
    let [free_a, free_b, redis_port, metrics_a, metrics_b] = free_ports::<5>()?;
    let (port_a, port_b) = if args.port == 0 {
        (free_a, free_b)
    } else {
        (args.port, args.port + 1)
    };
    let mut redis = Server::spawn_redis(args, redis_port, tag)?;
    let ready = redis.wait_redis()?;
    eprintln!(
        "  redis-server pid {} on :{redis_port} ready in {} ms",
        redis.pid.unwrap_or(0),
        ready.as_millis()
    );
    // Metrics (counted anyway; this only opens the listener) tell where drops happen.
    let env = |metrics: u16| {
        [
            ("SOKETI_ADAPTER_DRIVER", "redis".to_string()),
            ("SOKETI_DB_REDIS_HOST", "127.0.0.1".to_string()),
            ("SOKETI_DB_REDIS_PORT", redis_port.to_string()),
            ("SOKETI_METRICS_ENABLED", "true".to_string()),
            ("SOKETI_METRICS_HOST", "127.0.0.1".to_string()),
            ("SOKETI_METRICS_SERVER_PORT", metrics.to_string()),
        ]
    };
    let mut node_a = Server::spawn(args, port_a, &format!("{tag}-nodeA"), &env(metrics_a))?;
    node_a.metrics_port = Some(metrics_a);
    let mut node_b = Server::spawn(args, port_b, &format!("{tag}-nodeB"), &env(metrics_b))?;
    node_b.metrics_port = Some(metrics_b);
    let outcome = (|| {
        for (name, node) in [("A", &mut node_a), ("B", &mut node_b)] {
            let ready = node.wait_ready()?;
            eprintln!(
                "  node {name} pid {} on :{} ready in {} ms",
                node.pid.unwrap_or(0),
                node.port,
                ready.as_millis()
            );
        }
        let cross = Cross {
            node_a: &mut node_a,
            redis: &mut redis,
        };
        scenario::crossnode(args, &mut node_b, cross)
    })();
    let (mut notes, mut died, mut logs) = (Vec::new(), Vec::new(), Vec::new());
    for (name, p) in [
        ("node B", node_b),
        ("node A", node_a),
        ("redis-server", redis),
    ] {
        let (log, tail) = (p.log.clone(), p.log_tail(10));
        let exit = p.stop();
        if let Err(e) = check_exit(name, &exit, &log, &tail, &mut notes) {
            died.push(e);
        }
        if name != "redis-server" {
            notes.extend(odd_log_lines(name, &log));
        }
        logs.push(format!("{name} log: {}", log.display()));
    }
    let mut result = outcome?;
    if !died.is_empty() {
        return Err(died.join("\n"));
    }
    result.notes.extend(notes);
    // The log paths are worth printing only next to a problem.
    if !result.notes.is_empty() {
        result.notes.extend(logs);
    }
    Ok(result)
}

/// A node's log lines beyond start, Redis link and stop (reconnects, failures,
/// panics), as notes: the first few and how many there were.
fn odd_log_lines(name: &str, log: &std::path::Path) -> Vec<String> {
    const USUAL: &[&str] = &[
        "listening on ",
        "redis connected at ",
        "metrics on ",
        ": stopping",
    ];
    const SHOWN: usize = 5;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let odd: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !USUAL.iter().any(|u| l.contains(u)))
        .collect();
    let mut notes: Vec<String> = odd
        .iter()
        .take(SHOWN)
        .map(|l| format!("{name} logged: {l}"))
        .collect();
    if odd.len() > SHOWN {
        notes.push(format!(
            "{name} logged {} more unusual line(s)",
            odd.len() - SHOWN
        ));
    }
    notes
}

/// Turns how a process ended into an error (it died during the run) or a note.
fn check_exit(
    name: &str,
    exit: &Exit,
    log: &std::path::Path,
    tail: &str,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    if let Some(status) = exit.died_early {
        return Err(format!(
            "{name} died during the run ({status}); log {}:\n{tail}",
            log.display()
        ));
    }
    if exit.killed {
        notes.push(format!(
            "{name} ignored SIGTERM for 5 s and was killed; log {}",
            log.display()
        ));
    } else if let Some(status) = exit
        .status
        .filter(|s| !s.success() && s.signal() != Some(libc::SIGTERM))
    {
        notes.push(format!(
            "{name} exit after SIGTERM: {status}; log {}",
            log.display()
        ));
    }
    Ok(())
}

/// `N` distinct ports nobody listens on right now (for `--port 0`, when others
/// share the machine): the listeners are held together so no two are the same.
fn free_ports<const N: usize>() -> Result<[u16; N], String> {
    let mut held = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for p in &mut ports {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        *p = l.local_addr().map_err(|e| e.to_string())?.port();
        held.push(l);
    }
    Ok(ports)
}

fn print_run(r: &RunResult) {
    let line: Vec<String> = r
        .figures
        .iter()
        .filter(|(n, _)| HEADLINE.contains(n))
        .map(|(n, v)| format!("{n}={}", fmt_num(*v)))
        .collect();
    eprintln!("  {}", line.join(" "));
    for n in &r.notes {
        eprintln!("  ! {n}");
    }
}

/// Figures worth a glance after each run.
const HEADLINE: &[&str] = &[
    "deliveries_per_s",
    "latency_p50_us",
    "latency_p99_us",
    "lost",
    "server_cpu_us_per_delivery",
    "baseline_cpu_us_per_write",
    "server_vs_baseline",
    "node_b_cpu_us_per_delivery",
    "node_a_cpu_s",
    "node_b_cpu_s",
    "redis_cpu_s",
    "server_rss_per_connection_bytes",
    "server_cpu_us_per_connection",
    "connections_per_s",
    "connections_failed",
];

/// Median per figure: a human table and the `RESULT` line, or with `--json` the JSON
/// object alone on stdout (the table then goes to stderr). Returns the JSON.
fn report(args: &Args, results: &[RunResult], failures: &[String]) -> Value {
    use std::fmt::Write as _;
    let mut table = String::new();
    let mut values: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let order: Vec<&str> = results
        .first()
        .map(|r| r.figures.iter().map(|f| f.0).collect())
        .unwrap_or_default();
    for r in results {
        for (n, v) in &r.figures {
            values.entry(n).or_default().push(*v);
        }
    }
    let what = match args.scenario {
        Scenario::Delivery | Scenario::Crossnode | Scenario::Baseline | Scenario::ClientEvents => {
            format!(
                "channels {} | rate {} | payload {} B",
                args.channels, args.rate, args.payload_bytes
            )
        }
        _ => format!("channels {} | batch {}", args.channels, args.batch),
    };
    let _ = writeln!(
        table,
        "corecast bench {} | {} | connections {} | {what} | {} of {} run(s) ok",
        args.scenario.name(),
        server_desc(args),
        args.connections,
        results.len(),
        args.runs
    );
    let mut median = Map::new();
    for n in &order {
        let vs = &values[n];
        let m = median_of(vs);
        let each: Vec<String> = vs.iter().map(|v| fmt_num(*v)).collect();
        if vs.len() > 1 {
            let _ = writeln!(
                table,
                "  {n:<34} {:>14}   runs: {}",
                fmt_num(m),
                each.join(", ")
            );
        } else {
            let _ = writeln!(table, "  {n:<34} {:>14}", fmt_num(m));
        }
        median.insert(n.to_string(), num_json(m));
    }
    for (i, r) in results.iter().enumerate() {
        for note in &r.notes {
            let _ = writeln!(table, "  ! ok run {}: {note}", i + 1);
        }
    }
    for f in failures {
        let _ = writeln!(table, "  ! FAILED {}", f.lines().next().unwrap_or(""));
    }
    let per_run: Vec<Value> = results
        .iter()
        .map(|r| {
            let figs: Map<String, Value> = r
                .figures
                .iter()
                .map(|(n, v)| (n.to_string(), num_json(*v)))
                .collect();
            json!({ "figures": figs, "notes": r.notes })
        })
        .collect();
    let out = json!({
        "scenario": args.scenario.name(),
        "shards": if args.target.is_some() { Value::Null } else { json!(args.shards) },
        "target": args.target.as_ref().map(|t| t.1.clone()),
        "runs": args.runs,
        "runs_ok": results.len(),
        "params": {
            "connections": args.connections,
            "channels": args.channels,
            "rate": args.rate,
            "duration_s": args.duration.as_secs_f64(),
            "warmup_s": args.warmup.as_secs_f64(),
            "payload_bytes": args.payload_bytes,
            "text_payload": args.text_payload,
            "compression": args.compression,
            "batch": args.batch,
            "client_threads": args.client_threads,
            "publishers": args.publishers,
            "server_bin": args.server_bin.display().to_string(),
            "baseline": args.baseline,
            "system_counts": args.system_counts,
        },
        "median": median,
        "per_run": per_run,
        "failures": failures,
    });
    if args.json {
        eprint!("{table}");
        println!("{out:#}");
    } else {
        print!("\n{table}");
        println!("RESULT {out}");
    }
    out
}

/// `shards N` for a server the bench starts, `target URL` for one it does not.
fn server_desc(args: &Args) -> String {
    match &args.target {
        Some((_, url)) => format!("target {url}"),
        None => format!("shards {}", args.shards),
    }
}

pub(super) fn median_of(vs: &[f64]) -> f64 {
    let mut v = vs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn is_integral(v: f64) -> bool {
    v.fract() == 0.0 && v.abs() < 1e15
}

fn num_json(v: f64) -> Value {
    if is_integral(v) {
        json!(v as i64)
    } else {
        json!((v * 1000.0).round() / 1000.0)
    }
}

fn fmt_num(v: f64) -> String {
    if is_integral(v) {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}
