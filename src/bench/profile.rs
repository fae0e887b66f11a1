//! `--profile FILE`: the figures `corecast plan --profile FILE` sizes a deployment from,
//! measured on this machine. Each scenario fills its own section and keeps the others,
//! so `--scenario fanout --sweep`, `--scenario memory` and `--scenario connect` runs
//! build one profile between them. The format is documented in `tuning/README.md`.

use std::path::Path;

use serde_json::{Value, json};

/// The profile format's version.
pub const VERSION: u64 = 1;

/// This machine: cores the process may use, memory, kernel.
fn machine() -> Value {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    json!({"cores": cores, "memory_bytes": memory_bytes, "kernel": kernel})
}

/// Merges `section` under `name` into the profile at `path` (created when missing).
pub fn write(path: &Path, name: &str, section: Value) -> Result<(), String> {
    let mut profile = match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str::<Value>(&text)
            .map_err(|e| format!("{}: not a corecast profile: {e}", path.display()))?,
        Err(_) => json!({}),
    };
    if !profile.is_object() {
        return Err(format!("{}: not a corecast profile", path.display()));
    }
    profile["corecast_profile"] = json!(VERSION);
    profile["machine"] = machine();
    profile[name] = section;
    let text = serde_json::to_string_pretty(&profile).map_err(|e| e.to_string())? + "\n";
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!(
        "corecast bench: profile section {name:?} written to {}",
        path.display()
    );
    Ok(())
}

/// The profile section of a single run's report (`median` figures), if the scenario
/// has one.
pub fn section_of_run(report: &Value) -> Option<(&'static str, Value)> {
    let m = &report["median"];
    let shards = &report["shards"];
    match report["scenario"].as_str()? {
        "fanout" => Some((
            "fanout",
            json!({
                "shards": shards,
                "cpu_us_per_delivery": m["server_cpu_us_per_delivery"],
                "measured_at_deliveries_per_s": m["deliveries_per_s"],
                "p99_ms": m["latency_p99_us"].as_f64().map(|us| us / 1000.0),
                "highest_sustained_deliveries_per_s": Value::Null,
                "syscalls_per_delivery": m["syscalls_per_delivery"],
                "allocations_per_delivery": m["allocations_per_delivery"],
            }),
        )),
        "memory" => Some((
            "memory",
            json!({
                "shards": shards,
                "rss_bytes_per_connection": m["server_rss_per_connection_bytes"],
            }),
        )),
        "connect" => Some((
            "connect",
            json!({
                "shards": shards,
                "cpu_us_per_connection": m["server_cpu_us_per_connection"],
                "connections_per_s": m["connections_per_s"],
            }),
        )),
        _ => None,
    }
}

/// The profile section of a memory curve (`--sizes`): the fitted bytes per
/// connection, and the points it was fitted to.
pub fn section_of_curve(curve: &Value) -> Value {
    json!({
        "shards": curve["shards"],
        "rss_bytes_per_connection": curve["fit_bytes_per_connection"],
        "base_rss_bytes": curve["fit_base_bytes"],
        "curve": curve["points"],
    })
}

/// The profile section of a sweep: the highest rate held and its CPU per delivery.
pub fn section_of_sweep(sweep: &Value) -> Value {
    json!({
        "shards": sweep["shards"],
        "cpu_us_per_delivery": sweep["cpu_us_per_delivery_at_highest"],
        "measured_at_deliveries_per_s": sweep["highest_sustained_deliveries_per_s"],
        "p99_ms": sweep["p99_ms_at_highest"],
        "p99_target_ms": sweep["p99_target_ms"],
        "highest_sustained_deliveries_per_s": sweep["highest_sustained_deliveries_per_s"],
    })
}
