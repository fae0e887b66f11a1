//! The Grafana dashboard (`deploy/grafana/corecast.json`) queries only metrics a real
//! server exports: every `soketi_*` and `corecast_*` name in every panel query and
//! template variable must appear in a scrape of a server running the redis adapter with
//! a webhook, after a client connected and a publish was delivered.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::rest::post;
use common::{Ws, http};
use serde_json::{Value, json};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/corecast.json");

/// Name prefixes of the series corecast exports (Soketi's with the default prefix).
const PREFIXES: [&str; 2] = ["soketi_", "corecast_"];

fn dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).expect("read the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every PromQL query of the dashboard, with where it is: panel targets and query
/// variables.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                let place = format!(
                    "panel {:?} target {}",
                    p["title"].as_str().unwrap_or("?"),
                    t["refId"].as_str().unwrap_or("?")
                );
                out.push((place, expr.to_owned()));
            }
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" {
            continue;
        }
        let query = v["query"]["query"].as_str().or_else(|| v["query"].as_str());
        if let Some(query) = query {
            out.push((
                format!("variable {}", v["name"].as_str().unwrap_or("?")),
                query.to_owned(),
            ));
        }
    }
    out
}

/// The metric names an expression uses: identifiers outside string literals and
/// `$variables` that start with one of corecast's prefixes.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            // A string literal: label values and regexes are not metric names.
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let after_dollar = start > 0 && chars[start - 1] == '$';
            let word: String = chars[start..i].iter().collect();
            if !after_dollar && PREFIXES.iter().any(|p| word.starts_with(p)) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// What a scrape declares: `# TYPE` of each family, and every sample name.
struct Exported {
    types: BTreeMap<String, String>,
    samples: BTreeSet<String>,
}

impl Exported {
    fn parse(scrape: &str) -> Self {
        let mut types = BTreeMap::new();
        let mut samples = BTreeSet::new();
        for line in scrape.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    types.insert(name.to_owned(), kind.to_owned());
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                samples.insert(line[..end].to_owned());
            }
        }
        Self { types, samples }
    }

    /// Whether a query may use `name`: a family or sample of that name, or a histogram's
    /// `_bucket`, `_sum` or `_count`.
    fn has(&self, name: &str) -> bool {
        if self.types.contains_key(name) || self.samples.contains(name) {
            return true;
        }
        ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .and_then(|base| self.types.get(base))
                .is_some_and(|kind| kind == "histogram")
        })
    }
}

#[test]
fn names_are_taken_from_queries_but_not_from_labels_or_variables() {
    let expr = r#"histogram_quantile(0.99, sum by (le) (rate(corecast_delivery_latency_seconds_bucket{instance=~"$instance", job="corecast_x"}[$__rate_interval]))) / on() group_left soketi_connected + corecast_io_driver{driver='soketi_y'}"#;
    let want: BTreeSet<String> = [
        "corecast_delivery_latency_seconds_bucket",
        "soketi_connected",
        "corecast_io_driver",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(metric_names(expr), want);
    assert!(metric_names("label_values(soketi_connected, instance)").contains("soketi_connected"));
    assert!(metric_names("sum(rate(other_metric[5m]))").is_empty());
}

#[test]
fn a_name_that_is_not_exported_is_caught() {
    let exported = Exported::parse(
        "# TYPE corecast_delivery_latency_seconds histogram\n\
         corecast_delivery_latency_seconds_bucket{shard=\"0\",le=\"0.001\"} 1\n\
         # TYPE corecast_connections gauge\n\
         corecast_connections{shard=\"0\"} 3\n",
    );
    assert!(exported.has("corecast_delivery_latency_seconds_bucket"));
    assert!(exported.has("corecast_delivery_latency_seconds_sum"));
    assert!(exported.has("corecast_connections"));
    assert!(
        !exported.has("corecast_connections_count"),
        "not a histogram"
    );
    assert!(!exported.has("corecast_connection"));
}

#[test]
fn dashboard_is_importable_and_templated() {
    let d = dashboard();
    assert_eq!(d["uid"], "corecast");
    assert!(d["title"].is_string());
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "a DS_PROMETHEUS input for the import dialog"
    );
    let vars: BTreeMap<&str, &Value> = d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .map(|v| (v["name"].as_str().expect("variable name"), v))
        .collect();
    let ds = vars.get("datasource").expect("a datasource variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    assert_eq!(ds["current"]["value"], "${DS_PROMETHEUS}");
    for name in ["instance", "app_id"] {
        let v = vars
            .get(name)
            .unwrap_or_else(|| panic!("no {name} variable"));
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}");
    }

    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = &p["title"];
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        for key in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!metric_names(expr).is_empty(), "{title}: {expr:?}");
            if expr.contains("soketi_") && !expr.contains("soketi_process_") {
                assert!(expr.contains("$app_id"), "{title} ignores $app_id: {expr}");
            }
            assert!(
                expr.contains("$instance"),
                "{title} ignores $instance: {expr}"
            );
        }
    }

    // The panels operators look for first.
    let used: BTreeSet<String> = queries(&d)
        .iter()
        .flat_map(|(_, e)| metric_names(e))
        .collect();
    for name in [
        "soketi_connected",
        "corecast_connections",
        "soketi_new_connections_total",
        "soketi_new_disconnections_total",
        "soketi_ws_messages_sent_total",
        "corecast_delivery_latency_seconds_bucket",
        "corecast_ring_depth",
        "corecast_fanout_dropped_total",
        "corecast_slow_reader_disconnects_total",
        "corecast_rate_limited_total",
        "corecast_connections_rejected_total",
        "corecast_handshakes_rejected_total",
        "corecast_webhook_delivered_total",
        "corecast_webhook_failed_total",
        "corecast_webhook_retries_total",
        "corecast_redis_up",
        "corecast_redis_published_total",
        "corecast_redis_received_total",
        "corecast_redis_dropped_total",
        "corecast_redis_connects_total",
        "corecast_io_driver",
    ] {
        assert!(used.contains(name), "no panel shows {name}");
    }
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let redis = RedisServer::start();
    let hook_port = webhook_receiver();
    let hooks = json!([{
        "url": format!("http://127.0.0.1:{hook_port}/hook"),
        "event_types": ["channel_occupied"],
    }])
    .to_string();
    let redis_port = redis.port.to_string();
    let node = launch(&[
        ("SOKETI_ADAPTER_DRIVER", "redis"),
        ("SOKETI_DB_REDIS_HOST", "127.0.0.1"),
        ("SOKETI_DB_REDIS_PORT", &redis_port),
        ("SOKETI_DEFAULT_APP_WEBHOOKS", &hooks),
    ]);

    let (mut ws, _) = Ws::pusher(node.port);
    ws.subscribe("dashboard");
    let body = json!({"name": "tick", "channel": "dashboard", "data": "{}"}).to_string();
    let (status, reply) = post(node.port, "/apps/app-id/events", &body);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(ws.read_event("tick")["channel"], "dashboard");

    // The redis series appear with the bridge; wait until it is connected so the scrape
    // shows a live bridge rather than one still starting.
    let deadline = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let scrape = node.scrape();
        if scrape.lines().any(|l| l == "corecast_redis_up 1") || Instant::now() > deadline {
            break scrape;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let exported = Exported::parse(&scrape);

    let queries = queries(&dashboard());
    assert!(!queries.is_empty(), "the dashboard has queries");
    let mut missing = Vec::new();
    for (place, expr) in &queries {
        for name in metric_names(expr) {
            if !exported.has(&name) {
                missing.push(format!("{name} ({place})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the server does not export:\n  {}\n\nscrape:\n{scrape}",
        missing.join("\n  ")
    );
}

/// A server process, killed on drop.
struct Node {
    port: u16,
    metrics_port: u16,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn scrape(&self) -> String {
        let (status, body) = http(self.metrics_port, "GET", "/metrics", &[], b"").expect("scrape");
        assert_eq!(status, 200);
        String::from_utf8(body).expect("utf-8 scrape")
    }
}

/// `corecast start` with 2 shards and metrics on; waits for both ports and `/ready`.
fn launch(env: &[(&str, &str)]) -> Node {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corecast"));
    // Only the variables set here: the server refuses unknown SOKETI_*/CORECAST_* names,
    // and whatever the test's own environment holds must not change what is tested.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("SOKETI_") || name.starts_with("CORECAST_") {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd.arg("start")
        .env("SOKETI_HOST", "127.0.0.1")
        .env("SOKETI_PORT", "0")
        .env("SOKETI_METRICS_ENABLED", "true")
        .env("SOKETI_METRICS_HOST", "127.0.0.1")
        .env("SOKETI_METRICS_SERVER_PORT", "0")
        .env("CORECAST_SHARDS", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn corecast");
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            sink.lock().unwrap().push(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let (port, metrics_port) = loop {
        let lines = log.lock().unwrap().clone();
        let port_of = |tag: &str| {
            lines.iter().find_map(|l| {
                l.strip_prefix(tag)?
                    .rsplit(':')
                    .next()?
                    .trim()
                    .parse::<u16>()
                    .ok()
            })
        };
        if let (Some(p), Some(m)) = (
            port_of("corecast: listening on "),
            port_of("corecast: metrics on "),
        ) {
            break (p, m);
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            panic!("server did not start: {lines:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let node = Node {
        port,
        metrics_port,
        child,
    };
    while !matches!(http(port, "GET", "/ready", &[], b""), Ok((200, _))) {
        assert!(Instant::now() < deadline, "server did not become ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    node
}

/// An HTTP endpoint that answers every webhook POST with 200.
fn webhook_receiver() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            while let Ok(n) = stream.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    port
}
