//! The regression check of `tests/perf.sh`: compares this build's instruction counts
//! (gungraun's JSON lines from `benches/hot_paths.rs`) and allocation counts
//! (`benches/hot_allocs.rs`) with the committed `perf/baseline.json`, and the
//! per-delivery system counts of `corecast bench --json` runs with the ceilings in
//! `perf/budgets.json`. Prints one table; exits 1 when a benchmark's instructions grew
//! by more than the baseline's `threshold_percent` and by more than `min_instructions`
//! (unrelated changes move inlining by a few instructions, which is a large share of a
//! 600-instruction benchmark), when its allocations grew at all, or when a system count
//! is over its budget.
//!
//! `--update` rewrites `perf/baseline.json` from this run instead (the threshold is
//! kept), so a new baseline is a visible diff in review.
//!
//! ```text
//! cargo bench --bench perf_check -- --baseline perf/baseline.json \
//!   --instructions target/perf/instructions.jsonl --allocations target/perf/allocations.json \
//!   [--budgets perf/budgets.json --system NAME=target/perf/NAME.json ...] [--update]
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde_json::{Value, json};

/// Options, `--name value`.
#[derive(Default)]
struct Opts {
    baseline: String,
    instructions: String,
    allocations: String,
    budgets: Option<String>,
    system: Vec<(String, String)>,
    update: bool,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts::default();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--bench" => {}
            "--update" => o.update = true,
            "--baseline" => o.baseline = value()?,
            "--instructions" => o.instructions = value()?,
            "--allocations" => o.allocations = value()?,
            "--budgets" => o.budgets = Some(value()?),
            "--system" => {
                let v = value()?;
                let (name, path) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--system wants NAME=FILE, got {v:?}"))?;
                o.system.push((name.to_string(), path.to_string()));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.baseline.is_empty() || o.instructions.is_empty() || o.allocations.is_empty() {
        return Err("--baseline, --instructions and --allocations are required".into());
    }
    Ok(o)
}

fn read_json(path: &str) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))
}

/// `function.id` -> instructions (callgrind's `Ir`), from gungraun's JSON lines.
fn instructions(path: &str) -> Result<BTreeMap<String, u64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("{path}: {e}"))?;
        let name = format!(
            "{}.{}",
            v["function_name"].as_str().unwrap_or("?"),
            v["id"].as_str().unwrap_or("?")
        );
        let ir = v["profiles"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["tool"] == "Callgrind"))
            .and_then(|p| p["data"]["total"]["metrics"]["Ir"]["values"]["new"].as_u64())
            .ok_or_else(|| format!("{path}: no callgrind Ir for {name}"))?;
        out.insert(name, ir);
    }
    if out.is_empty() {
        return Err(format!("{path}: no benchmark results"));
    }
    Ok(out)
}

fn rustc_version() -> String {
    std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn change(base: f64, now: f64) -> String {
    if base == 0.0 {
        return if now == 0.0 {
            "0.00 %".into()
        } else {
            "new".into()
        };
    }
    format!("{:+.2} %", (now - base) / base * 100.0)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("perf_check: {e}");
            ExitCode::from(2)
        }
    }
}

/// Whether everything is within its baseline and budget.
fn run() -> Result<bool, String> {
    let o = parse()?;
    let ir = instructions(&o.instructions)?;
    let allocs = read_json(&o.allocations)?;
    let toolchain = rustc_version();
    if o.update {
        let old = read_json(&o.baseline)
            .unwrap_or(json!({"threshold_percent": 1.0, "min_instructions": 50}));
        let mut benchmarks = serde_json::Map::new();
        for (name, n) in &ir {
            let a = allocs[name.as_str()]
                .as_u64()
                .ok_or_else(|| format!("no allocation count for {name}"))?;
            benchmarks.insert(name.clone(), json!({"instructions": n, "allocations": a}));
        }
        let new = json!({
            "threshold_percent": old["threshold_percent"],
            "min_instructions": old["min_instructions"],
            "toolchain": toolchain,
            "benchmarks": benchmarks,
        });
        let text = serde_json::to_string_pretty(&new).map_err(|e| e.to_string())? + "\n";
        std::fs::write(&o.baseline, text).map_err(|e| format!("{}: {e}", o.baseline))?;
        println!("perf_check: wrote {} ({} benchmarks)", o.baseline, ir.len());
        return Ok(true);
    }
    let baseline = read_json(&o.baseline)?;
    let threshold = baseline["threshold_percent"]
        .as_f64()
        .ok_or("baseline has no threshold_percent")?;
    let floor = baseline["min_instructions"].as_u64().unwrap_or(0);
    if baseline["toolchain"].as_str() != Some(toolchain.as_str()) {
        println!(
            "note: baseline recorded with {}, this is {toolchain}; instruction counts follow the compiler",
            baseline["toolchain"]
        );
    }
    let mut ok = true;
    println!(
        "{:<34} {:>12} {:>12} {:>9} {:>7} {:>7} {:>7}  verdict",
        "benchmark", "instr base", "instr now", "change", "alloc", "now", "change"
    );
    let empty = serde_json::Map::new();
    let benches = baseline["benchmarks"].as_object().unwrap_or(&empty);
    for (name, base) in benches {
        let (bi, ba) = (
            base["instructions"].as_u64().unwrap_or(0),
            base["allocations"].as_u64().unwrap_or(0),
        );
        let Some(&ni) = ir.get(name) else {
            println!("{name:<34} missing from this run  FAIL");
            ok = false;
            continue;
        };
        let na = allocs[name.as_str()].as_u64().unwrap_or(u64::MAX);
        let grew = (ni as f64 - bi as f64) / bi.max(1) as f64 * 100.0;
        let beyond_noise = ni.abs_diff(bi) > floor;
        let verdict = if (grew > threshold && beyond_noise) || na > ba {
            ok = false;
            "FAIL"
        } else if (grew < -threshold && beyond_noise) || na < ba {
            "faster: record with --update"
        } else {
            "ok"
        };
        println!(
            "{name:<34} {bi:>12} {ni:>12} {:>9} {ba:>7} {na:>7} {:>7}  {verdict}",
            change(bi as f64, ni as f64),
            change(ba as f64, na as f64)
        );
    }
    for name in ir.keys().filter(|n| !benches.contains_key(*n)) {
        println!("{name:<34} has no baseline: record with --update  FAIL");
        ok = false;
    }
    println!(
        "threshold: instructions +{threshold} % (and more than {floor} instructions), allocations +0"
    );
    if let Some(path) = &o.budgets {
        ok &= system(path, &o.system)?;
    }
    Ok(ok)
}

/// Per-delivery counts of `corecast bench --json` runs against their budgets.
fn system(budgets_path: &str, runs: &[(String, String)]) -> Result<bool, String> {
    let budgets = read_json(budgets_path)?;
    let empty = serde_json::Map::new();
    let mut ok = true;
    println!();
    println!(
        "{:<22} {:<34} {:>10} {:>10}  verdict",
        "scenario", "per delivery", "budget", "now"
    );
    for (scenario, limits) in budgets["scenarios"].as_object().unwrap_or(&empty) {
        let Some((_, path)) = runs.iter().find(|(n, _)| n == scenario) else {
            println!("{scenario:<22} not run  FAIL");
            ok = false;
            continue;
        };
        let run = read_json(path)?;
        for (figure, limit) in limits.as_object().unwrap_or(&empty) {
            let limit = limit.as_f64().unwrap_or(0.0);
            let now = run["median"][figure.as_str()].as_f64();
            let verdict = match now {
                Some(v) if v <= limit => "ok",
                _ => {
                    ok = false;
                    "FAIL"
                }
            };
            let shown = now.map_or("missing".into(), |v| format!("{v:.3}"));
            println!("{scenario:<22} {figure:<34} {limit:>10.3} {shown:>10}  {verdict}");
        }
    }
    Ok(ok)
}
