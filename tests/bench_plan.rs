//! `corecast bench` and `corecast plan` as an operator runs them: a small fan-out run
//! against a server `corecast bench` starts itself (this same binary), its `--json`
//! output and `--profile` file, `corecast plan` on that profile and on a profile with
//! known figures, and a sweep's HTML report (with a memory curve) rendered by headless
//! Chromium; an existing server (`--target`, with and without `--server-pid`), the
//! client-events scenario, the memory curve (`--sizes`), and the options that do not go
//! together.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// A scratch directory of its own, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("corecast-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn corecast(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(args)
        .env_remove("SOKETI_PORT")
        .output()
        .expect("run corecast");
    assert!(
        out.status.success(),
        "corecast {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `corecast bench ARGS`, whatever its exit status.
fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corecast"))
        .arg("bench")
        .args(args)
        .env_remove("SOKETI_PORT")
        .output()
        .expect("run corecast bench")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// 40 connections on 4 channels at 40 events/s: 400 deliveries/s for 1 s.
const SMALL: &[&str] = &[
    "--connections",
    "40",
    "--channels",
    "4",
    "--rate",
    "40",
    "--warmup",
    "0.3",
    "--duration",
    "1",
    "--drain",
    "0.5",
    "--publishers",
    "2",
];

/// A small fan-out (`SMALL`) against a one-shard server the bench starts.
fn small_fanout(log_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "bench",
        "--scenario",
        "fanout",
        "--port",
        "0",
        "--shards",
        "1",
    ]
    .iter()
    .chain(SMALL)
    .map(|s| (*s).to_string())
    .collect();
    args.push("--log-dir".into());
    args.push(log_dir.display().to_string());
    args.extend(extra.iter().map(|s| (*s).to_string()));
    args
}

#[test]
fn bench_fanout_writes_json_with_the_documented_fields_and_a_profile() {
    let dir = Dir::new("bench-fanout");
    let profile = dir.0.join("profile.json");
    let profile_arg = profile.display().to_string();
    let args = small_fanout(&dir.0, &["--json", "--profile", &profile_arg]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = json_of(&corecast(&args));

    assert_eq!(out["scenario"], "fanout");
    assert_eq!(out["shards"], 1);
    assert_eq!(out["runs_ok"], 1);
    assert_eq!(out["params"]["connections"], 40);
    assert!(out["failures"].as_array().is_some_and(Vec::is_empty));
    let m = &out["median"];
    assert_eq!(m["connections"], 40);
    assert_eq!(m["lost"], 0, "{out:#}");
    let deliveries = m["deliveries"].as_f64().expect("deliveries");
    // 400 deliveries/s for 1 s; the paced publisher may be a few events off.
    assert!((300.0..=500.0).contains(&deliveries), "{deliveries}");
    for field in [
        "deliveries_per_s",
        "latency_p50_us",
        "latency_p99_us",
        "latency_p999_us",
        "latency_max_us",
        "server_cpu_us_per_delivery",
        "server_cpu_pct",
        "server_rss_bytes",
    ] {
        assert!(
            m[field].as_f64().is_some_and(|v| v >= 0.0),
            "{field} in {m:#}"
        );
    }
    assert!(m["latency_p50_us"].as_f64() <= m["latency_p99_us"].as_f64());

    let p: Value = serde_json::from_str(&std::fs::read_to_string(&profile).expect("profile"))
        .expect("profile JSON");
    assert_eq!(p["corecast_profile"], 1);
    assert!(p["machine"]["cores"].as_u64().is_some_and(|c| c >= 1));
    assert_eq!(p["fanout"]["shards"], 1);
    assert_eq!(
        p["fanout"]["cpu_us_per_delivery"].as_f64(),
        m["server_cpu_us_per_delivery"].as_f64()
    );

    // The plan reads the measured figure back.
    let plan = json_of(&corecast(&[
        "plan",
        "--profile",
        &profile_arg,
        "--connections",
        "1000",
        "--deliveries-per-sec",
        "10000",
        "--json",
    ]));
    // Compared as numbers: an integral figure is written as an integer.
    assert_eq!(
        plan["assumptions"]["cpu_us_per_delivery"].as_f64(),
        m["server_cpu_us_per_delivery"].as_f64()
    );
    assert!(plan["source"].as_str().unwrap().contains("profile.json"));
}

/// A profile with round figures gives the documented arithmetic exactly.
#[test]
fn plan_sizes_from_a_profile_and_names_what_binds() {
    let dir = Dir::new("plan");
    let profile = dir.0.join("profile.json");
    std::fs::write(
        &profile,
        r#"{"corecast_profile": 1,
            "machine": {"cores": 8, "memory_bytes": 17179869184},
            "fanout": {"shards": 8, "cpu_us_per_delivery": 5.0},
            "memory": {"shards": 8, "rss_bytes_per_connection": 4000},
            "connect": {"shards": 8, "cpu_us_per_connection": 50}}"#,
    )
    .expect("write");
    let path = profile.display().to_string();
    // 1,000,000 deliveries/s x 5 us = 5 cores, x 1.3 = 6.5: one 8-core node; memory
    // 100,000 x (4000 + 8192) x 1.3 = 1.585 GB: CPU binds.
    let one = json_of(&corecast(&[
        "plan",
        "--profile",
        &path,
        "--connections",
        "100000",
        "--deliveries-per-sec",
        "1000000",
        "--json",
    ]));
    assert_eq!(one["nodes"], 1);
    assert_eq!(one["cores_per_node"], 7);
    assert_eq!(one["shard_cores_total"], 6.5);
    assert_eq!(one["memory_bytes_total"], 1_584_960_000.0);
    assert_eq!(one["binds_first"], "cpu");
    assert!(one["notes"].as_array().unwrap().is_empty(), "{one:#}");

    // 2,000,000 connections need 31.7 GB: memory binds, 3 nodes of 16 GiB (80 % usable);
    // with several nodes one core each goes to the bridge.
    let many = json_of(&corecast(&[
        "plan",
        "--profile",
        &path,
        "--connections",
        "2000000",
        "--deliveries-per-sec",
        "100000",
        "--json",
    ]));
    assert_eq!(many["nodes_needed_by_memory"], 3);
    assert_eq!(many["nodes"], 3);
    assert_eq!(many["binds_first"], "memory");
    assert_eq!(many["assumptions"]["bridge_cores_per_node"], 1);

    // --tls doubles the CPU per delivery (an assumption the output states).
    let tls = json_of(&corecast(&[
        "plan",
        "--profile",
        &path,
        "--connections",
        "1000",
        "--deliveries-per-sec",
        "1000000",
        "--nodes",
        "2",
        "--tls",
        "--json",
    ]));
    assert_eq!(tls["shard_cores_total"], 13.0);
    assert_eq!(tls["cores_per_node"], 8);
    assert_eq!(tls["assumptions"]["tls_cpu_factor"], 2.0);

    // Without a profile: tuning/profile.json, and the text says so.
    let text = corecast(&[
        "plan",
        "--connections",
        "1000",
        "--deliveries-per-sec",
        "1000",
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("tuning/profile.json"), "{text}");
    assert!(text.contains("binds first"), "{text}");
}

#[test]
fn plan_refuses_a_file_that_is_not_a_profile() {
    let dir = Dir::new("plan-bad");
    let bad = dir.0.join("bad.json");
    std::fs::write(&bad, r#"{"hello": 1}"#).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["plan", "--profile"])
        .arg(&bad)
        .args(["--connections", "1", "--deliveries-per-sec", "1"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a corecast profile"));
}

/// Headless Chromium, as Debian installs it.
fn chromium() -> PathBuf {
    for candidate in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("which").arg(candidate).output()
            && out.status.success()
        {
            return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    panic!("chromium is not installed (tests/run.sh installs Debian's chromium)");
}

#[test]
fn sweep_report_renders_in_headless_chromium() {
    let dir = Dir::new("bench-sweep");
    let report = dir.0.join("report.html");
    let report_arg = report.display().to_string();
    // Three rates, 100 -> 200 -> 400 deliveries/s (10 to 40 events/s), each held well
    // within 1 s p99; 2 s windows, so one event more or less at the edges stays within
    // the 5 % of the rate a sweep allows.
    let args = small_fanout(
        &dir.0,
        &[
            "--duration",
            "2",
            "--sweep",
            "--sweep-start",
            "100",
            "--sweep-max",
            "400",
            "--p99-ms",
            "1000",
            "--json",
            "--report",
            &report_arg,
            // And the memory curve drawn in the same report.
            "--sizes",
            "40,120",
            "--idle",
            "0.3",
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sweep = json_of(&corecast(&args));
    assert_eq!(sweep["scenario"], "fanout-sweep");
    assert_eq!(
        sweep["points"].as_array().map(Vec::len),
        Some(3),
        "{sweep:#}"
    );
    assert_eq!(
        sweep["highest_sustained_deliveries_per_s"], 400,
        "{sweep:#}"
    );
    assert!(sweep["cpu_us_per_delivery_at_highest"].as_f64().is_some());
    let curve = &sweep["memory_curve"];
    assert_eq!(
        curve["points"].as_array().map(Vec::len),
        Some(2),
        "{curve:#}"
    );
    assert_eq!(curve["points"][1]["connections"], 120.0);

    let html = std::fs::read_to_string(&report).expect("report");
    assert!(
        !html.contains("<script") && !html.contains("src="),
        "self-contained"
    );
    // Chromium parses it: four charts, each with its lines.
    let browser = chromium();
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
    ];
    let url = format!("file://{}", report.display());
    let dom = Command::new(&browser)
        .args(flags)
        .args(["--dump-dom", &url])
        .output()
        .expect("chromium --dump-dom");
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert_eq!(dom.matches("<svg").count(), 4, "{dom}");
    assert!(dom.matches("class=\"series\"").count() >= 6, "{dom}");
    // And draws it: a screenshot of the page, well above a blank page's size.
    let shot = dir.0.join("report.png");
    let status = Command::new(&browser)
        .args(flags)
        .arg(format!("--screenshot={}", shot.display()))
        .args(["--window-size=1400,1100", &url])
        .output()
        .expect("chromium --screenshot");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let png = std::fs::read(&shot).expect("screenshot");
    assert_eq!(&png[1..4], b"PNG");
    let blank = dir.0.join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body></body></html>").expect("write");
    let blank_shot = dir.0.join("blank.png");
    Command::new(&browser)
        .args(flags)
        .arg(format!("--screenshot={}", blank_shot.display()))
        .args([
            "--window-size=1400,1100",
            &format!("file://{}", blank.display()),
        ])
        .output()
        .expect("chromium blank");
    let blank_len = std::fs::metadata(&blank_shot).expect("blank png").len();
    assert!(
        png.len() as u64 > 4 * blank_len,
        "report screenshot {} bytes, blank page {blank_len}",
        png.len()
    );
}

/// `base`, then `more`, then `--json`.
fn with<'a>(base: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    base.iter()
        .chain(more)
        .chain(&["--json"])
        .copied()
        .collect()
}

/// The JSON of a `corecast bench` run that must succeed.
fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "corecast bench failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    json_of(out)
}

fn assert_delivered(out: &Value) {
    let m = &out["median"];
    assert_eq!(out["runs_ok"], 1, "{out:#}");
    assert_eq!(m["connections"], 40, "{out:#}");
    assert_eq!(m["lost"], 0, "{out:#}");
    assert_eq!(m["publish_errors"], 0, "{out:#}");
    let deliveries = m["deliveries"].as_f64().expect("deliveries");
    // 400 deliveries/s for 1 s; the paced sender may be a few events off.
    assert!((300.0..=500.0).contains(&deliveries), "{deliveries}");
    assert!(
        m["latency_p99_us"].as_f64().is_some_and(|v| v > 0.0),
        "{m:#}"
    );
}

#[test]
fn bench_measures_a_running_server_and_leaves_it_running() {
    let dir = Dir::new("bench-target");
    let mut server = common::start(1, &[]);
    let url = format!("ws://127.0.0.1:{}", server.port);
    let log = dir.0.display().to_string();

    // Without its pid: deliveries and latency, no server CPU or memory.
    let out = ok_json(&bench(&with(SMALL, &["--target", &url, "--log-dir", &log])));
    assert_eq!(out["target"], url.as_str());
    assert!(out["shards"].is_null(), "{out:#}");
    assert_delivered(&out);
    let m = &out["median"];
    for absent in [
        "server_cpu_us_per_delivery",
        "server_cpu_pct",
        "server_rss_bytes",
    ] {
        assert!(m[absent].is_null(), "{absent} without --server-pid: {m:#}");
    }
    let notes = out["per_run"][0]["notes"].to_string();
    assert!(notes.contains("--server-pid"), "{notes}");
    assert!(
        server.running(),
        "the bench must not stop a server it did not start"
    );

    // With it: the server's CPU per delivery and memory, read from /proc.
    let pid = server.pid().to_string();
    let out = ok_json(&bench(&with(
        SMALL,
        &["--target", &url, "--server-pid", &pid, "--log-dir", &log],
    )));
    assert_delivered(&out);
    let m = &out["median"];
    assert!(
        m["server_cpu_us_per_delivery"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "{m:#}"
    );
    assert!(
        m["server_rss_bytes"].as_f64().is_some_and(|v| v > 1e6),
        "{m:#}"
    );
    assert!(server.running());

    // And the connect scenario against it, CPU per connection included.
    let out = ok_json(&bench(&[
        "--scenario",
        "connect",
        "--connections",
        "200",
        "--batch",
        "100",
        "--target",
        &url,
        "--server-pid",
        &pid,
        "--json",
    ]));
    assert_eq!(out["median"]["connections"], 200, "{out:#}");
    assert!(out["median"]["server_cpu_us_per_connection"].is_number());
    assert!(server.running());
}

#[test]
fn client_events_reach_every_other_member_of_the_channel() {
    let dir = Dir::new("bench-client-events");
    let out = ok_json(&bench(&with(
        SMALL,
        &[
            "--scenario",
            "client-events",
            "--shards",
            "2",
            "--log-dir",
            &dir.0.display().to_string(),
        ],
    )));
    assert_eq!(out["scenario"], "client-events");
    assert_delivered(&out);
    // One sender per channel sent 40 events/s in all for 1.3 s; each went to the 10
    // receivers of its channel, never back to its sender.
    let m = &out["median"];
    let events = m["events_published"].as_f64().unwrap();
    assert!((45.0..=60.0).contains(&events), "{m:#}");
    assert_eq!(m["deliveries_total"], m["deliveries_expected"], "{m:#}");
    assert_eq!(m["duplicated"], 0);
    assert_eq!(m["reordered"], 0);
    assert!(m["server_cpu_us_per_delivery"].is_number(), "{m:#}");
}

#[test]
fn client_events_refused_by_the_app_fail_the_run_with_the_servers_answer() {
    // The default app of a plain server does not allow client events (Soketi's default).
    let server = common::start(1, &[]);
    let url = format!("ws://127.0.0.1:{}", server.port);
    let out = bench(&with(
        SMALL,
        &["--scenario", "client-events", "--target", &url],
    ));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let failures = report["failures"].to_string();
    assert!(failures.contains("accepted no event"), "{failures}");
    assert!(failures.contains("4301"), "{failures}");
}

#[test]
fn memory_curve_fits_bytes_per_connection_and_feeds_the_profile() {
    let dir = Dir::new("bench-curve");
    let profile = dir.0.join("profile.json");
    let profile_arg = profile.display().to_string();
    let out = ok_json(&bench(&[
        "--scenario",
        "memory",
        "--sizes",
        "300,900",
        "--shards",
        "1",
        "--idle",
        "0.5",
        "--batch",
        "300",
        "--json",
        "--log-dir",
        &dir.0.display().to_string(),
        "--profile",
        &profile_arg,
    ]));
    let points = out["points"].as_array().expect("points");
    assert_eq!(points.len(), 2, "{out:#}");
    assert_eq!(points[0]["connections"], 300.0);
    assert_eq!(points[1]["connections"], 900.0);
    assert!(
        points[1]["rss_bytes"].as_f64() > points[0]["rss_bytes"].as_f64(),
        "{out:#}"
    );
    let fit = out["fit_bytes_per_connection"].as_f64().expect("fit");
    // Far from exact at these sizes, but a connection costs kilobytes, not bytes or
    // megabytes.
    assert!((100.0..=100_000.0).contains(&fit), "{fit}");
    let p: Value = serde_json::from_str(&std::fs::read_to_string(&profile).expect("profile"))
        .expect("profile JSON");
    assert_eq!(p["memory"]["rss_bytes_per_connection"].as_f64(), Some(fit));
    assert_eq!(p["memory"]["curve"].as_array().map(Vec::len), Some(2));
}

#[test]
fn options_that_do_not_go_together_are_refused() {
    for (args, says) in [
        (
            &["--target", "ws://127.0.0.1:1", "--shards", "2"][..],
            "--shards describes a server the bench starts",
        ),
        (
            &["--target", "ws://127.0.0.1:1", "--scenario", "memory"][..],
            "needs --server-pid",
        ),
        (
            &["--target", "wss://example.com:443"][..],
            "TLS is not supported",
        ),
        (
            &["--server-pid", "1"][..],
            "--server-pid goes with --target",
        ),
        (
            &["--target", "ws://127.0.0.1:1", "--scenario", "crossnode"][..],
            "starts its own processes",
        ),
        (&["--sizes", "100,200"][..], "--sizes goes with"),
    ] {
        let out = bench(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
