//! `corecast plan`: cores, memory and nodes for a target load, from the figures
//! `corecast bench --profile FILE` measured on the operator's own hardware (or, without
//! a profile, the figures in `tuning/profile.json`, said so in the output).
//!
//! The arithmetic, with every assumption printed next to the answer:
//!
//! - CPU: `deliveries/s x CPU per delivery` (x the TLS factor with `--tls`), plus the
//!   headroom; plus one core per node for the redis bridge, IRQs and webhooks when
//!   there are several nodes.
//! - Memory: `connections x (corecast RSS per connection + kernel socket memory)`, plus
//!   the headroom.
//! - Nodes: without `--nodes`, as many machines like the profiled one as the binding
//!   resource needs (80 % of a machine's memory is usable); with `--nodes K`, what each
//!   of the K nodes needs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::{Value, json};

/// The figures shipped with corecast, from `tuning/capacity.md`.
const TUNING_PROFILE: &str = include_str!("../tuning/profile.json");
/// Kernel memory of an idle TCP socket with default buffers (4-8 KB, `tuning/README.md`).
const KERNEL_SOCKET_BYTES: f64 = 8192.0;
/// With TLS a frame is encrypted per connection instead of shared by reference; corecast
/// has no measured figure for it yet, so plan assumes twice the CPU per delivery.
const TLS_CPU_FACTOR: f64 = 2.0;
/// Share of a machine's memory the plan lets corecast and its sockets use.
const USABLE_MEMORY: f64 = 0.8;

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A profile written by `corecast bench --profile FILE` (default: the figures in
    /// tuning/profile.json)
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// WebSocket connections to hold at once
    #[arg(long)]
    connections: u64,
    /// Deliveries per second (one event to one subscriber is one delivery)
    #[arg(long = "deliveries-per-sec")]
    deliveries_per_sec: u64,
    /// Nodes to spread the load over (default: as many as the binding resource needs)
    #[arg(long)]
    nodes: Option<u64>,
    /// Clients connect over wss:// served by corecast itself
    #[arg(long)]
    tls: bool,
    /// Headroom added to CPU and memory, in percent
    #[arg(long = "headroom-pct", default_value_t = 30.0)]
    headroom_pct: f64,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

fn load(args: &PlanArgs) -> Result<(Value, String), String> {
    let (text, source) = match &args.profile {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
            format!("profile {}", path.display()),
        ),
        None => (
            TUNING_PROFILE.to_string(),
            "the figures in tuning/profile.json (no --profile given: measure your own \
             hardware with `corecast bench --profile FILE`)"
                .to_string(),
        ),
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{source}: {e}"))?;
    if v["corecast_profile"].as_u64() != Some(1) {
        return Err(format!(
            "{source}: not a corecast profile (corecast_profile: 1)"
        ));
    }
    Ok((v, source))
}

/// A positive figure from the profile, or the default profile's with a note.
fn figure(
    profile: &Value,
    section: &str,
    name: &str,
    notes: &mut Vec<String>,
) -> Result<f64, String> {
    if let Some(v) = profile[section][name].as_f64().filter(|v| *v > 0.0) {
        return Ok(v);
    }
    let fallback: Value = serde_json::from_str(TUNING_PROFILE).map_err(|e| e.to_string())?;
    let v = fallback[section][name]
        .as_f64()
        .ok_or_else(|| format!("no {section}.{name}"))?;
    notes.push(format!(
        "the profile has no {section}.{name}; used tuning/profile.json's {v}"
    ));
    Ok(v)
}

/// `corecast plan`.
pub fn run(args: &PlanArgs) -> ExitCode {
    match plan(args) {
        Ok(out) => {
            if args.json {
                println!("{out:#}");
            } else {
                print!("{}", text(&out));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("corecast plan: {e}");
            ExitCode::from(2)
        }
    }
}

fn plan(args: &PlanArgs) -> Result<Value, String> {
    if args.nodes == Some(0) {
        return Err("--nodes must be at least 1".into());
    }
    if !(0.0..=1000.0).contains(&args.headroom_pct) {
        return Err("--headroom-pct must be 0..1000".into());
    }
    let (profile, source) = load(args)?;
    let mut notes = Vec::new();
    let cpu_us = figure(&profile, "fanout", "cpu_us_per_delivery", &mut notes)?;
    let rss = figure(&profile, "memory", "rss_bytes_per_connection", &mut notes)?;
    let connect_us = figure(&profile, "connect", "cpu_us_per_connection", &mut notes)?;
    let machine_cores = figure(&profile, "machine", "cores", &mut notes)?;
    let machine_memory = figure(&profile, "machine", "memory_bytes", &mut notes)?;
    let headroom = 1.0 + args.headroom_pct / 100.0;
    let tls = if args.tls { TLS_CPU_FACTOR } else { 1.0 };

    let shard_cores = args.deliveries_per_sec as f64 * cpu_us * tls / 1e6 * headroom;
    let memory = args.connections as f64 * (rss + KERNEL_SOCKET_BYTES) * headroom;
    let usable_memory = machine_memory * USABLE_MEMORY;
    // Nodes each resource needs on machines like the profiled one (one core per node
    // kept for the bridge when there are several).
    let nodes_for = |usable_cores: f64| {
        let by_cpu = (shard_cores / usable_cores.max(0.5)).ceil().max(1.0);
        let by_memory = (memory / usable_memory).ceil().max(1.0);
        (by_cpu, by_memory)
    };
    let (mut by_cpu, mut by_memory) = nodes_for(machine_cores);
    if by_cpu.max(by_memory) > 1.0 {
        (by_cpu, by_memory) = nodes_for(machine_cores - 1.0);
    }
    let nodes = args.nodes.map_or(by_cpu.max(by_memory), |k| k as f64);
    let bridge_core = if nodes > 1.0 { 1.0 } else { 0.0 };
    let cores_per_node = (shard_cores / nodes).ceil().max(1.0) + bridge_core;
    let memory_per_node = memory / nodes;
    let cpu_share = cores_per_node / machine_cores;
    let memory_share = memory_per_node / usable_memory;
    let binds = if cpu_share >= memory_share {
        "cpu"
    } else {
        "memory"
    };
    if cores_per_node > machine_cores {
        notes.push(format!(
            "each node needs {cores_per_node} cores, more than the {machine_cores} of the profiled machine"
        ));
    }
    if memory_per_node > usable_memory {
        notes.push("each node needs more memory than 80 % of the profiled machine's".to_string());
    }
    let storm_s =
        args.connections as f64 * connect_us / 1e6 / (nodes * (cores_per_node - bridge_core));
    Ok(json!({
        "source": source,
        "target": {
            "connections": args.connections,
            "deliveries_per_sec": args.deliveries_per_sec,
            "nodes": args.nodes,
            "tls": args.tls,
        },
        "assumptions": {
            "headroom_pct": args.headroom_pct,
            "cpu_us_per_delivery": cpu_us,
            "tls_cpu_factor": tls,
            "rss_bytes_per_connection": rss.round() as u64,
            "kernel_socket_bytes_per_connection": KERNEL_SOCKET_BYTES as u64,
            "cpu_us_per_connection": connect_us,
            "machine_cores": machine_cores as u64,
            "machine_memory_bytes": machine_memory,
            "usable_memory_share": USABLE_MEMORY,
            "bridge_cores_per_node": bridge_core as u64,
        },
        "nodes": nodes as u64,
        "nodes_needed_by_cpu": by_cpu as u64,
        "nodes_needed_by_memory": by_memory as u64,
        "shard_cores_total": (shard_cores * 100.0).round() / 100.0,
        "cores_per_node": cores_per_node as u64,
        "memory_bytes_total": memory.round(),
        "memory_bytes_per_node": memory_per_node.round(),
        "binds_first": binds,
        "reconnect_storm_s": (storm_s * 100.0).round() / 100.0,
        "notes": notes,
    }))
}

fn gib(bytes: f64) -> String {
    format!("{:.2} GiB", bytes / 1024.0 / 1024.0 / 1024.0)
}

fn text(p: &Value) -> String {
    let a = &p["assumptions"];
    let t = &p["target"];
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut out = format!(
        "corecast plan for {} connections, {} deliveries/s{}\n  figures from {}\n\n",
        t["connections"],
        t["deliveries_per_sec"],
        if t["tls"] == true { ", TLS" } else { "" },
        p["source"].as_str().unwrap_or("")
    );
    out += &format!(
        "  nodes            {}{}\n  cores per node   {}  (shards {:.2} cores in all{})\n  memory per node  {}  ({} in all)\n  binds first      {}\n  reconnect storm  {:.2} s for every connection to come back\n\n",
        p["nodes"],
        if t["nodes"].is_null() {
            format!(
                " (cpu needs {}, memory {})",
                p["nodes_needed_by_cpu"], p["nodes_needed_by_memory"]
            )
        } else {
            " (as asked)".to_string()
        },
        p["cores_per_node"],
        f(&p["shard_cores_total"]),
        if f(&a["bridge_cores_per_node"]) > 0.0 {
            " + 1 per node for the redis bridge"
        } else {
            ""
        },
        gib(f(&p["memory_bytes_per_node"])),
        gib(f(&p["memory_bytes_total"])),
        p["binds_first"].as_str().unwrap_or(""),
        f(&p["reconnect_storm_s"]),
    );
    out += &format!(
        "  assumed: {} % headroom; {} us CPU per delivery{}; {} B RSS + {} B kernel socket memory per connection; machines of {} cores and {} (80 % usable)\n",
        a["headroom_pct"],
        a["cpu_us_per_delivery"],
        if f(&a["tls_cpu_factor"]) > 1.0 {
            format!(" x {} for TLS (not measured)", a["tls_cpu_factor"])
        } else {
            String::new()
        },
        a["rss_bytes_per_connection"],
        a["kernel_socket_bytes_per_connection"],
        a["machine_cores"],
        gib(f(&a["machine_memory_bytes"])),
    );
    for n in p["notes"].as_array().into_iter().flatten() {
        out += &format!("  note: {}\n", n.as_str().unwrap_or(""));
    }
    out
}
