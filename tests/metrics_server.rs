//! The metrics server answers a real scrape with every shard's counters merged.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use corecast::metrics::{Counter, Registry, Sample, ShardMetrics, serve};

/// One sample line: name, labels (sorted), value.
type SeriesKey = (String, Vec<(String, String)>);

/// A scrape parsed from the text exposition format.
#[derive(Debug, Default)]
struct Scrape {
    /// `# TYPE` of each family.
    types: HashMap<String, String>,
    /// Sample lines in the order they came.
    samples: Vec<(SeriesKey, f64)>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut out = Scrape::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line has a kind");
                let previous = out.types.insert(name.to_owned(), kind.to_owned());
                assert!(previous.is_none(), "family {name} declared twice");
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (
                    name,
                    parse_labels(rest.strip_suffix('}').expect("labels close")),
                ),
                None => (series, Vec::new()),
            };
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name {name:?}"
            );
            out.samples.push(((name.to_owned(), labels), value));
        }
        out
    }

    /// The value of `name` with exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        want.sort();
        self.samples
            .iter()
            .find(|((n, l), _)| n == name && *l == want)
            .map(|(_, v)| *v)
    }

    /// Every sample of `name`.
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a (SeriesKey, f64)> + 'a {
        self.samples.iter().filter(move |((n, _), _)| n == name)
    }
}

/// `a="x",b="y\"z"` into sorted pairs, undoing the format's escapes.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "label value is quoted");
        let mut value = String::new();
        loop {
            match chars.next().expect("label value closes") {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("dangling escape"),
                },
                c => value.push(c),
            }
        }
        out.push((name, value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out.sort();
    out
}

/// One HTTP/1.1 GET over a fresh TCP connection: status and body.
fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("head ends");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(body.len(), content_length, "body length matches its header");
    (status, head.to_owned(), body.to_owned())
}

fn start() -> (corecast::metrics::MetricsServer, [Arc<ShardMetrics>; 2]) {
    let shards = [
        Arc::new(ShardMetrics::new(2)),
        Arc::new(ShardMetrics::new(2)),
    ];
    let mut registry = Registry::new(
        "soketi_",
        6001,
        vec!["app-one".to_owned(), "app-two".to_owned()],
        shards.to_vec(),
    );
    registry.add_source(Box::new(|| {
        vec![Sample::counter(
            "corecast_webhooks_sent_total",
            "Webhooks sent.",
            7.0,
        )]
    }));
    let server = serve(Arc::new(registry), "127.0.0.1", 0).unwrap();
    (server, shards)
}

#[test]
fn scrape_merges_counters_written_by_two_shard_threads() {
    let (server, shards) = start();

    // Each shard thread writes only its own ShardMetrics, as the shards do.
    let writers: Vec<_> = shards
        .iter()
        .cloned()
        .enumerate()
        .map(|(shard, m)| {
            thread::spawn(move || {
                for i in 0..1000u64 {
                    m.inc_new_connection(0);
                    m.add_connected(0, 1);
                    m.add_ws_received(1, 1, 10);
                    m.add_ws_sent(0, 2, 30);
                    m.add_http(Some(1), 100, 200);
                    m.inc(Counter::FanoutDropped, 1);
                    m.observe_latency(i * (shard as u64 + 1) * 100);
                }
                for _ in 0..400 {
                    m.add_connected(0, -1);
                    m.inc_disconnection(0);
                }
                m.set_ring_depth(shard as u64 + 5);
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }

    let (status, head, body) = get(server.addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let scrape = Scrape::parse(&body);

    let app1 = [("app_id", "app-one"), ("port", "6001")];
    let app2 = [("app_id", "app-two"), ("port", "6001")];
    assert_eq!(scrape.types["soketi_connected"], "gauge");
    assert_eq!(scrape.types["soketi_new_connections_total"], "counter");
    assert_eq!(scrape.get("soketi_connected", &app1), Some(1200.0));
    assert_eq!(scrape.get("soketi_connected", &app2), Some(0.0));
    assert_eq!(
        scrape.get("soketi_new_connections_total", &app1),
        Some(2000.0)
    );
    assert_eq!(
        scrape.get("soketi_new_disconnections_total", &app1),
        Some(800.0)
    );
    assert_eq!(
        scrape.get("soketi_ws_messages_received_total", &app2),
        Some(2000.0)
    );
    assert_eq!(
        scrape.get("soketi_socket_received_bytes", &app2),
        Some(20_000.0)
    );
    assert_eq!(
        scrape.get("soketi_ws_messages_sent_total", &app1),
        Some(4000.0)
    );
    assert_eq!(
        scrape.get("soketi_socket_transmitted_bytes", &app1),
        Some(60_000.0)
    );
    assert_eq!(
        scrape.get("soketi_http_calls_received_total", &app2),
        Some(2000.0)
    );
    assert_eq!(
        scrape.get("soketi_http_received_bytes", &app2),
        Some(200_000.0)
    );
    assert_eq!(
        scrape.get("soketi_http_transmitted_bytes", &app2),
        Some(400_000.0)
    );

    // corecast's own series stay per shard.
    for shard in ["0", "1"] {
        assert_eq!(
            scrape.get("corecast_fanout_dropped_total", &[("shard", shard)]),
            Some(1000.0)
        );
        assert_eq!(
            scrape.get("corecast_connections", &[("shard", shard)]),
            Some(600.0)
        );
    }
    assert_eq!(
        scrape.get("corecast_ring_depth", &[("shard", "1")]),
        Some(6.0)
    );
    assert_eq!(scrape.get("corecast_webhooks_sent_total", &[]), Some(7.0));

    // The latency histogram: buckets never go down, +Inf equals _count, _sum is right.
    assert_eq!(
        scrape.types["corecast_delivery_latency_seconds"],
        "histogram"
    );
    for (shard, factor) in [("0", 1u64), ("1", 2)] {
        let mut buckets: Vec<(f64, f64)> = scrape
            .all("corecast_delivery_latency_seconds_bucket")
            .filter(|((_, l), _)| l.contains(&("shard".to_owned(), shard.to_owned())))
            .map(|((_, l), v)| {
                let le = &l.iter().find(|(k, _)| k == "le").unwrap().1;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (le, *v)
            })
            .collect();
        assert!(buckets.len() > 2);
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "cumulative: {buckets:?}"
        );
        let (inf_le, inf_count) = *buckets.last().unwrap();
        assert!(inf_le.is_infinite());
        let count = scrape.get(
            "corecast_delivery_latency_seconds_count",
            &[("shard", shard)],
        );
        assert_eq!(count, Some(1000.0));
        assert_eq!(inf_count, 1000.0);
        let sum = scrape
            .get("corecast_delivery_latency_seconds_sum", &[("shard", shard)])
            .unwrap();
        let expected_micros: u64 = (0..1000u64).map(|i| i * factor * 100).sum();
        assert!(
            (sum - expected_micros as f64 / 1e6).abs() < 1e-6,
            "sum {sum}"
        );
        // 100 µs observations and up: the 100 µs bucket holds i = 0 and 1 (factor 1).
        let le_100us = buckets
            .iter()
            .find(|(le, _)| (*le - 0.0001).abs() < 1e-12)
            .unwrap()
            .1;
        assert_eq!(le_100us, if factor == 1 { 2.0 } else { 1.0 });
    }

    server.shutdown();
}

#[test]
fn ready_turns_503_when_told() {
    let (server, _shards) = start();
    assert_eq!(get(server.addr, "/ready").0, 200);
    let (status, _, body) = get(server.addr, "/");
    assert_eq!((status, body.as_str()), (200, "OK"));

    server.set_ready(false);
    let (status, head, body) = get(server.addr, "/ready");
    assert_eq!(status, 503);
    assert!(head.contains("application/json"));
    let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(parsed["code"], 503);
    // Liveness is unaffected.
    assert_eq!(get(server.addr, "/").0, 200);

    server.set_ready(true);
    assert_eq!(get(server.addr, "/ready").0, 200);
    server.shutdown();
}

#[test]
fn usage_reports_memory_figures() {
    let (server, _shards) = start();
    let (status, head, body) = get(server.addr, "/usage");
    assert_eq!(status, 200);
    assert!(head.contains("application/json"));
    let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let memory = &parsed["memory"];
    let used = memory["used"].as_u64().unwrap();
    let total = memory["total"].as_u64().unwrap();
    let free = memory["free"].as_u64().unwrap();
    assert!(memory["percent"].is_number());
    assert!(used > 0, "resident memory is known on Linux");
    assert!(total >= used);
    assert_eq!(free, total - used);
    server.shutdown();
}

#[test]
fn metrics_json_query_answers_json() {
    let (server, shards) = start();
    shards[1].add_connected(1, 3);
    let (status, _, body) = get(server.addr, "/metrics?json=1");
    assert_eq!(status, 200);
    let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let connected = parsed
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "soketi_connected")
        .unwrap();
    let app2 = connected["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["labels"]["app_id"] == "app-two")
        .unwrap();
    assert_eq!(app2["value"], 3.0);
    server.shutdown();
}

#[test]
fn unknown_path_is_404_and_other_methods_405() {
    let (server, _shards) = start();
    assert_eq!(get(server.addr, "/nope").0, 404);
    assert_eq!(get(server.addr, "/metrics/extra").0, 404);

    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 405 "), "{response}");

    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.write_all(b"not http at all\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    server.shutdown();
}

#[test]
fn shutdown_releases_the_port() {
    let (server, _shards) = start();
    let addr = server.addr;
    server.shutdown();
    thread::sleep(Duration::from_millis(50));
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
}
