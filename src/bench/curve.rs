//! `--sizes N,N,...`: the memory scenario once per connection count (each with a
//! fresh server, `--runs` times), so memory is seen against connections as a curve,
//! and the bytes per connection as the slope of a least-squares line through it
//! (the intercept is the server's own footprint).

use serde_json::{Value, json};

use super::args::{Args, Scenario};
use super::scenario::RunResult;
use super::{figure, median_of};

/// Slope and intercept of the least-squares line through `points`; `None` with fewer
/// than two distinct x.
pub fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    if points.len() < 2 || sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let slope = sxy / sxx;
    Some((slope, my - slope * mx))
}

/// Runs the memory scenario at every size of `args.sizes` through `run` (one fresh
/// server per run); returns the curve as JSON, with failures listed in it.
pub fn measure(
    args: &Args,
    mut run: impl FnMut(&Args, usize) -> Result<RunResult, String>,
) -> Value {
    let mut points = Vec::new();
    let mut fit_points = Vec::new();
    let mut failures = Vec::new();
    for &size in &args.sizes {
        let mut a = args.clone();
        a.scenario = Scenario::Memory;
        a.connections = size;
        a.sweep = false;
        a.baseline = false;
        a.rate = 0;
        let mut runs = Vec::new();
        for k in 0..a.runs {
            eprintln!(
                "== memory curve: {size} connections, run {}/{}",
                k + 1,
                a.runs
            );
            match run(&a, k) {
                Ok(r) => runs.push(r),
                Err(e) => {
                    let line = e.lines().next().unwrap_or("").to_string();
                    eprintln!("corecast bench: {size} connections: {line}");
                    failures.push(format!("{size} connections, run {}: {line}", k + 1));
                }
            }
        }
        let m = |name: &str| {
            let vs: Vec<f64> = runs
                .iter()
                .filter_map(|r| figure(r, name))
                .filter(|v| v.is_finite())
                .collect();
            (!vs.is_empty()).then(|| median_of(&vs))
        };
        let (Some(opened), Some(rss)) = (m("connections"), m("server_rss_after_bytes")) else {
            continue;
        };
        fit_points.push((opened, rss));
        points.push(json!({
            "connections": opened,
            "rss_bytes": rss,
            "rss_before_bytes": m("server_rss_before_bytes"),
            "rss_bytes_per_connection": m("server_rss_per_connection_bytes"),
            "connections_failed": m("connections_failed"),
            "runs_ok": runs.len(),
        }));
    }
    let line = fit(&fit_points);
    json!({
        "shards": if args.target.is_some() { Value::Null } else { json!(args.shards) },
        "channels": args.channels,
        "points": points,
        "fit_bytes_per_connection": line.map(|l| l.0.round()),
        "fit_base_bytes": line.map(|l| l.1.round()),
        "failures": failures,
    })
}

/// The curve as a table for people.
pub fn print(curve: &Value, server: &str) {
    println!();
    println!(
        "corecast bench memory curve | {server} | channels {}",
        curve["channels"]
    );
    println!(
        "  {:>12} {:>14} {:>14} {:>16}",
        "connections", "RSS MiB", "before MiB", "bytes/connection"
    );
    for p in curve["points"].as_array().into_iter().flatten() {
        let f = |n: &str| p[n].as_f64().unwrap_or(f64::NAN);
        println!(
            "  {:>12.0} {:>14.1} {:>14.1} {:>16.0}",
            f("connections"),
            f("rss_bytes") / 1048576.0,
            f("rss_before_bytes") / 1048576.0,
            f("rss_bytes_per_connection")
        );
    }
    match curve["fit_bytes_per_connection"].as_f64() {
        Some(b) => println!(
            "  fit: {b:.0} bytes per connection over a base of {:.1} MiB",
            curve["fit_base_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0
        ),
        None => println!("  fit: needs two sizes that both ran"),
    }
    for f in curve["failures"].as_array().into_iter().flatten() {
        println!("  ! FAILED {}", f.as_str().unwrap_or(""));
    }
}

#[cfg(test)]
mod tests {
    use super::fit;

    #[test]
    fn fit_finds_slope_and_intercept() {
        let (slope, base) = fit(&[(1000.0, 13_400_000.0), (5000.0, 29_400_000.0)]).unwrap();
        assert!((slope - 4000.0).abs() < 1e-6, "{slope}");
        assert!((base - 9_400_000.0).abs() < 1e-3, "{base}");
        assert!(fit(&[(1000.0, 1.0)]).is_none());
        assert!(fit(&[(1000.0, 1.0), (1000.0, 2.0)]).is_none());
    }
}
