//! `--system-counts`: figures per delivery that do not drift with the machine's load,
//! read over the measured window of the fan-out scenario.
//!
//! - syscalls and io_uring submissions: `perf stat` attached to the server's pid,
//!   counting the kernel's `raw_syscalls:sys_enter` and `io_uring:io_uring_submit_req`
//!   tracepoints (no hardware counters needed, so it works in VMs);
//! - heap allocations: the server's `corecast_heap_allocations_total` (a server built
//!   with `--features count-alloc`; absent otherwise), everything the process allocates
//!   (REST requests included), and `corecast_delivery_heap_allocations_total`, what the
//!   shards allocate while queueing frames on subscribers and flushing their sockets;
//! - bytes written: the server's `socket_transmitted_bytes` (WebSocket bytes handed to
//!   the kernel) and `http_transmitted_bytes` (REST answers).
//!
//! Deliveries are the server's own `ws_messages_sent_total` over the same window, so the
//! ratios do not depend on the load tool's clock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::server::scrape;

const SYSCALLS: &str = "raw_syscalls:sys_enter";
const URING_SUBMITS: &str = "io_uring:io_uring_submit_req";

/// A `perf stat` attached to the server, with the metrics read when it started.
pub struct Counting {
    perf: Child,
    out: PathBuf,
    metrics_port: u16,
    before: BTreeMap<String, f64>,
}

/// Sum of the series whose name ends with `suffix` (the prefix is configurable).
fn metric(m: &BTreeMap<String, f64>, suffix: &str) -> Option<f64> {
    let hits: Vec<f64> = m
        .iter()
        .filter(|(n, _)| n.ends_with(suffix))
        .map(|(_, v)| *v)
        .collect();
    (!hits.is_empty()).then(|| hits.iter().sum())
}

impl Counting {
    /// Reads the metrics, then attaches `perf stat` to `pid`.
    pub fn start(perf_bin: &Path, pid: i32, metrics_port: u16, dir: &Path) -> Result<Self, String> {
        let before = scrape(metrics_port)?;
        let out = dir.join(format!("perf-stat-{pid}.csv"));
        let perf = Command::new(perf_bin)
            .args(["stat", "-x", ",", "-e", SYSCALLS, "-e", URING_SUBMITS, "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "starting {} stat: {e} (install perf, e.g. Debian's linux-perf)",
                    perf_bin.display()
                )
            })?;
        Ok(Counting {
            perf,
            out,
            metrics_port,
            before,
        })
    }

    /// Stops `perf stat` (SIGINT makes it print its counts), reads the metrics again and
    /// returns the figures per delivery.
    pub fn finish(mut self) -> Result<Vec<(&'static str, f64)>, String> {
        let pid = self.perf.id() as i32;
        // SAFETY: `pid` is our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let status = self.perf.wait().map_err(|e| format!("perf stat: {e}"))?;
        let after = scrape(self.metrics_port)?;
        let text = std::fs::read_to_string(&self.out)
            .map_err(|e| format!("perf stat output {}: {e}", self.out.display()))?;
        let count = |event: &str| -> Option<f64> {
            text.lines()
                .map(|l| l.split(',').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[2] == event)
                .and_then(|f| f[0].parse().ok())
        };
        let (Some(syscalls), Some(submits)) = (count(SYSCALLS), count(URING_SUBMITS)) else {
            return Err(format!(
                "perf stat ({status}) counted nothing: needs root or kernel.perf_event_paranoid <= -1 and tracefs; it said:\n{text}"
            ));
        };
        let delta = |suffix: &str| {
            metric(&after, suffix)
                .zip(metric(&self.before, suffix))
                .map(|(a, b)| a - b)
        };
        let deliveries = delta("ws_messages_sent_total").unwrap_or(0.0);
        if deliveries <= 0.0 {
            return Err("no deliveries in the counted window".into());
        }
        let bytes = delta("socket_transmitted_bytes").unwrap_or(0.0)
            + delta("http_transmitted_bytes").unwrap_or(0.0);
        let mut figures = vec![
            ("counted_deliveries", deliveries),
            ("syscalls", syscalls),
            ("syscalls_per_delivery", syscalls / deliveries),
            ("io_uring_submissions", submits),
            ("io_uring_submissions_per_delivery", submits / deliveries),
            ("bytes_written_per_delivery", bytes / deliveries),
        ];
        if let Some(allocs) = delta("corecast_heap_allocations_total") {
            figures.push(("allocations_per_delivery", allocs / deliveries));
        }
        if let Some(allocs) = delta("corecast_delivery_heap_allocations_total") {
            figures.push((
                "delivery_path_allocations_per_delivery",
                allocs / deliveries,
            ));
        }
        let _ = std::fs::remove_file(&self.out);
        Ok(figures)
    }
}
