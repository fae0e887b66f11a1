//! SO_REUSEPORT spreads connections over every shard, and a publish reaches subscribers on
//! all of them: checked through the per-shard `corecast_connections` gauge.

mod common;

use std::time::Duration;

use common::rest::post;
use common::{Ws, http, start};
use serde_json::json;

/// `corecast_connections{shard="N"}` values from a scrape.
fn per_shard_connections(metrics_port: u16) -> Vec<(String, f64)> {
    let (status, body) = http(metrics_port, "GET", "/metrics", &[], b"").expect("scrape");
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with("corecast_connections{"))
        .filter_map(|l| {
            let shard = l.split("shard=\"").nth(1)?.split('"').next()?.to_owned();
            let value = l.rsplit(' ').next()?.parse().ok()?;
            Some((shard, value))
        })
        .collect()
}

#[test]
fn two_hundred_connections_land_on_both_shards_and_all_get_the_event() {
    let server = start(2, &[("SOKETI_METRICS_ENABLED", "true")]);
    let mut subs: Vec<Ws> = (0..200)
        .map(|_| {
            let (mut ws, _) = Ws::pusher(server.port);
            ws.subscribe("spread");
            ws
        })
        .collect();
    let port = server.metrics_port.expect("metrics enabled");
    let shards = per_shard_connections(port);
    assert_eq!(shards.len(), 2, "{shards:?}");
    assert!(
        shards.iter().all(|(_, n)| *n >= 20.0),
        "both shards carry connections: {shards:?}"
    );
    assert_eq!(
        shards.iter().map(|(_, n)| n).sum::<f64>(),
        200.0,
        "{shards:?}"
    );
    let body = json!({"name": "hello", "channel": "spread", "data": "all"}).to_string();
    assert_eq!(post(server.port, "/apps/app-id/events", &body).0, 200);
    for ws in &mut subs {
        ws.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        assert_eq!(ws.read_json()["data"], "all");
    }
}
