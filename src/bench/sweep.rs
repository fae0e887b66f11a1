//! `--sweep`: the fan-out scenario at rising delivery rates, each with a fresh server,
//! until p99 latency passes `--p99-ms`, a delivery is lost or the rate asked for is not
//! reached; then halving the gap between the last rate held and the first missed for
//! `--sweep-steps` more runs (or stopping at `--sweep-max`). The highest rate held is
//! the result, with its CPU per delivery.

use serde_json::{Value, json};

use super::args::Args;
use super::scenario::RunResult;

/// One step of the sweep.
#[derive(Debug, Clone)]
pub struct Point {
    pub target_per_s: u64,
    pub figures: RunResult,
    pub held: bool,
    pub why: String,
}

fn figure(r: &RunResult, name: &str) -> f64 {
    r.figures
        .iter()
        .find(|f| f.0 == name)
        .map_or(f64::NAN, |f| f.1)
}

/// Whether the run held the rate within the target, and if not why.
fn verdict(args: &Args, target_per_s: u64, r: &RunResult) -> (bool, String) {
    let p99_ms = figure(r, "latency_p99_us") / 1000.0;
    let lost = figure(r, "lost");
    let errors = figure(r, "publish_errors");
    let got = figure(r, "deliveries_per_s");
    if lost > 0.0 {
        (false, format!("{lost} deliveries lost"))
    } else if errors > 0.0 {
        (false, format!("{errors} publishes refused"))
    } else if p99_ms.is_nan() || p99_ms > args.p99_ms {
        (false, format!("p99 {p99_ms:.2} ms > {} ms", args.p99_ms))
    } else if got.is_nan() || got < 0.95 * target_per_s as f64 {
        (false, format!("delivered {got:.0}/s of {target_per_s}/s"))
    } else {
        (true, format!("p99 {p99_ms:.2} ms"))
    }
}

/// Events per second over REST that give `per_s` deliveries per second.
fn event_rate(args: &Args, per_s: u64) -> u64 {
    let per_event = (args.connections as f64 / args.channels as f64).max(1.0);
    ((per_s as f64 / per_event).round() as u64).max(1)
}

/// Runs the sweep; `run` measures one rate (a fresh server each time).
pub fn run(args: &Args, mut run: impl FnMut(&Args) -> Result<RunResult, String>) -> Vec<Point> {
    let mut points: Vec<Point> = Vec::new();
    let mut step = |per_s: u64, points: &mut Vec<Point>| -> bool {
        let mut a = args.clone();
        a.rate = event_rate(args, per_s);
        // The rate actually asked for, after rounding to whole events per second.
        let target = (a.rate as f64 * a.connections as f64 / a.channels as f64) as u64;
        eprintln!("== sweep: {target} deliveries/s ({} events/s)", a.rate);
        let (held, why, figures) = match run(&a) {
            Ok(r) => {
                let (held, why) = verdict(args, target, &r);
                (held, why, r)
            }
            Err(e) => (
                false,
                e.lines().next().unwrap_or("").to_string(),
                RunResult::default(),
            ),
        };
        eprintln!("   {} ({why})", if held { "held" } else { "missed" });
        points.push(Point {
            target_per_s: target,
            figures,
            held,
            why,
        });
        held
    };
    let mut good = 0u64;
    let mut rate = args.sweep_start_per_s;
    // Doubling up to the first miss, bounded so a machine that never misses still ends.
    let max = if args.sweep_max_per_s == 0 {
        u64::MAX
    } else {
        args.sweep_max_per_s
    };
    let mut missed = false;
    for _ in 0..12 {
        if !step(rate, &mut points) {
            missed = true;
            break;
        }
        good = rate;
        if rate >= max {
            break;
        }
        rate = (rate * 2).min(max);
    }
    if !missed {
        points.sort_by_key(|p| p.target_per_s);
        return points;
    }
    let mut bad = rate;
    for _ in 0..args.sweep_steps {
        if bad <= good + good / 20 + 1 {
            break;
        }
        let mid = (good + bad) / 2;
        if step(mid, &mut points) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    points.sort_by_key(|p| p.target_per_s);
    points
}

/// The sweep as JSON: every point's figures, and the highest rate held.
pub fn json(args: &Args, points: &[Point]) -> Value {
    let best = points
        .iter()
        .filter(|p| p.held)
        .max_by_key(|p| p.target_per_s);
    let pts: Vec<Value> = points
        .iter()
        .map(|p| {
            let figs: serde_json::Map<String, Value> = p
                .figures
                .figures
                .iter()
                .filter(|(_, v)| v.is_finite())
                .map(|(n, v)| (n.to_string(), json!(v)))
                .collect();
            json!({
                "target_deliveries_per_s": p.target_per_s,
                "held": p.held,
                "why": p.why,
                "figures": figs,
            })
        })
        .collect();
    json!({
        "scenario": "fanout-sweep",
        "shards": if args.target.is_some() { Value::Null } else { json!(args.shards) },
        "target": args.target.as_ref().map(|t| t.1.clone()),
        "connections": args.connections,
        "channels": args.channels,
        "payload_bytes": args.payload_bytes,
        "p99_target_ms": args.p99_ms,
        "highest_sustained_deliveries_per_s": best.map(|p| p.target_per_s),
        "cpu_us_per_delivery_at_highest": best.map(|p| figure(&p.figures, "server_cpu_us_per_delivery")),
        "p99_ms_at_highest": best.map(|p| figure(&p.figures, "latency_p99_us") / 1000.0),
        "points": pts,
    })
}
