use super::*;

fn registry(shards: &[Arc<ShardMetrics>]) -> Registry {
    Registry::new(
        "soketi_",
        6001,
        vec!["app-1".to_owned(), "app-2".to_owned()],
        shards.to_vec(),
    )
}

fn two_shards() -> [Arc<ShardMetrics>; 2] {
    [
        Arc::new(ShardMetrics::new(2)),
        Arc::new(ShardMetrics::new(2)),
    ]
}

/// The value of the sample line that starts with `series ` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[test]
fn soketi_series_sum_over_shards_with_app_id_and_port() {
    let [a, b] = two_shards();
    a.add_connected(0, 3);
    b.add_connected(0, 2);
    b.add_connected(0, -1);
    a.inc_new_connection(0);
    b.inc_new_connection(0);
    a.add_ws_received(1, 2, 100);
    b.add_ws_received(1, 1, 50);
    a.add_ws_sent(0, 4, 400);
    b.add_http(Some(1), 10, 20);

    let text = registry(&[a, b]).render();
    assert!(text.contains("# TYPE soketi_connected gauge\n"));
    assert!(text.contains("# TYPE soketi_new_connections_total counter\n"));
    assert!(text.contains("# HELP soketi_connected The number of currently connected sockets.\n"));
    assert_eq!(
        value(&text, r#"soketi_connected{app_id="app-1",port="6001"}"#),
        Some(4.0)
    );
    assert_eq!(
        value(&text, r#"soketi_connected{app_id="app-2",port="6001"}"#),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            r#"soketi_new_connections_total{app_id="app-1",port="6001"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &text,
            r#"soketi_ws_messages_received_total{app_id="app-2",port="6001"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &text,
            r#"soketi_socket_received_bytes{app_id="app-2",port="6001"}"#
        ),
        Some(150.0)
    );
    assert_eq!(
        value(
            &text,
            r#"soketi_ws_messages_sent_total{app_id="app-1",port="6001"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        value(
            &text,
            r#"soketi_socket_transmitted_bytes{app_id="app-1",port="6001"}"#
        ),
        Some(400.0)
    );
    assert_eq!(
        value(
            &text,
            r#"soketi_http_calls_received_total{app_id="app-2",port="6001"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            r#"soketi_http_received_bytes{app_id="app-2",port="6001"}"#
        ),
        Some(10.0)
    );
    assert_eq!(
        value(
            &text,
            r#"soketi_http_transmitted_bytes{app_id="app-2",port="6001"}"#
        ),
        Some(20.0)
    );
}

#[test]
fn prefix_is_the_configured_one() {
    let [a, _] = two_shards();
    let text = Registry::new("pusher_", 7000, vec!["x".to_owned()], vec![a]).render();
    assert_eq!(
        value(&text, r#"pusher_connected{app_id="x",port="7000"}"#),
        Some(0.0)
    );
    assert!(!text.contains("soketi_"));
}

#[test]
fn http_without_an_app_shows_only_once_counted() {
    let [a, b] = two_shards();
    let before = registry(&[a.clone(), b.clone()]).render();
    assert!(!before.contains(r#"app_id="""#));
    a.add_http(None, 5, 7);
    let after = registry(&[a, b]).render();
    assert_eq!(
        value(
            &after,
            r#"soketi_http_calls_received_total{app_id="",port="6001"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            r#"soketi_http_transmitted_bytes{app_id="",port="6001"}"#
        ),
        Some(7.0)
    );
    assert_eq!(
        value(&after, r#"soketi_connected{app_id="",port="6001"}"#),
        None
    );
}

#[test]
fn corecast_series_are_per_shard() {
    let [a, b] = two_shards();
    a.inc(Counter::FanoutDropped, 3);
    b.inc(Counter::FanoutDropped, 1);
    b.inc(Counter::RateLimitedRead, 2);
    a.set_ring_depth(9);
    b.add_connected(1, 5);

    let text = registry(&[a, b]).render();
    assert_eq!(
        value(&text, r#"corecast_fanout_dropped_total{shard="0"}"#),
        Some(3.0)
    );
    assert_eq!(
        value(&text, r#"corecast_fanout_dropped_total{shard="1"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            r#"corecast_rate_limited_total{shard="1",kind="read"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &text,
            r#"corecast_rate_limited_total{shard="0",kind="client"}"#
        ),
        Some(0.0)
    );
    assert_eq!(value(&text, r#"corecast_ring_depth{shard="0"}"#), Some(9.0));
    assert_eq!(
        value(&text, r#"corecast_connections{shard="1"}"#),
        Some(5.0)
    );
    assert_eq!(
        text.matches("# TYPE corecast_rate_limited_total counter")
            .count(),
        1
    );
}

#[test]
fn io_driver_is_one_gauge_per_shard_and_driver() {
    let [a, b] = two_shards();
    let text = registry(&[Arc::clone(&a), Arc::clone(&b)]).render();
    assert!(
        !text.contains("corecast_io_driver"),
        "no series before the shards start"
    );
    a.set_io_driver(IoDriver::IoUring);
    b.set_io_driver(IoDriver::Epoll);
    let text = registry(&[a, b]).render();
    assert!(text.contains("# TYPE corecast_io_driver gauge\n"));
    for (series, want) in [
        (r#"corecast_io_driver{shard="0",driver="io_uring"}"#, 1.0),
        (r#"corecast_io_driver{shard="0",driver="epoll"}"#, 0.0),
        (r#"corecast_io_driver{shard="1",driver="io_uring"}"#, 0.0),
        (r#"corecast_io_driver{shard="1",driver="epoll"}"#, 1.0),
    ] {
        assert_eq!(value(&text, series), Some(want), "{series}");
    }
}

#[test]
fn latency_is_a_cumulative_histogram_in_seconds() {
    let [a, b] = two_shards();
    for micros in [10, 80, 80, 3_000, 9_000_000] {
        a.observe_latency(micros);
    }
    let text = registry(&[a, b]).render();
    assert!(text.contains("# TYPE corecast_delivery_latency_seconds histogram\n"));
    let bucket = |le: &str| {
        value(
            &text,
            &format!(r#"corecast_delivery_latency_seconds_bucket{{shard="0",le="{le}"}}"#),
        )
    };
    assert_eq!(bucket("0.00005"), Some(1.0));
    assert_eq!(bucket("0.0001"), Some(3.0));
    assert_eq!(bucket("0.005"), Some(4.0));
    assert_eq!(bucket("2.5"), Some(4.0));
    assert_eq!(bucket("+Inf"), Some(5.0));
    assert_eq!(
        value(
            &text,
            r#"corecast_delivery_latency_seconds_count{shard="0"}"#
        ),
        Some(5.0)
    );
    let sum = value(&text, r#"corecast_delivery_latency_seconds_sum{shard="0"}"#).unwrap();
    assert!((sum - 9.00317).abs() < 1e-9, "{sum}");
    assert_eq!(
        value(
            &text,
            r#"corecast_delivery_latency_seconds_count{shard="1"}"#
        ),
        Some(0.0)
    );
}

#[test]
fn sources_merge_into_families_by_name() {
    let [a, _] = two_shards();
    let mut r = registry(&[a]);
    r.add_source(Box::new(|| {
        vec![
            Sample::counter("corecast_webhooks_sent_total", "Webhooks sent.", 3.0)
                .with_label("app_id", "app-1"),
            Sample::gauge("corecast_redis_connected", "Redis link up.", 1.0),
        ]
    }));
    r.add_source(Box::new(|| {
        vec![
            Sample::counter("corecast_webhooks_sent_total", "Webhooks sent.", 4.0)
                .with_label("app_id", "app-2"),
        ]
    }));
    let text = r.render();
    assert_eq!(
        text.matches("# TYPE corecast_webhooks_sent_total counter")
            .count(),
        1
    );
    assert_eq!(
        value(&text, r#"corecast_webhooks_sent_total{app_id="app-1"}"#),
        Some(3.0)
    );
    assert_eq!(
        value(&text, r#"corecast_webhooks_sent_total{app_id="app-2"}"#),
        Some(4.0)
    );
    assert!(text.contains("# TYPE corecast_redis_connected gauge\ncorecast_redis_connected 1\n"));
}

#[test]
fn label_values_are_escaped() {
    let [a, _] = two_shards();
    let r = Registry::new("soketi_", 6001, vec!["we\"ird\\id\n".to_owned()], vec![a]);
    let text = r.render();
    assert!(
        text.contains(r#"soketi_connected{app_id="we\"ird\\id\n",port="6001"} 0"#),
        "{text}"
    );
}

#[test]
fn process_series_carry_the_prefix_and_port() {
    let [a, _] = two_shards();
    let text = registry(&[a]).render();
    if cfg!(target_os = "linux") {
        let rss = value(
            &text,
            r#"soketi_process_resident_memory_bytes{port="6001"}"#,
        )
        .unwrap();
        assert!(rss > 0.0);
        assert!(text.contains("# TYPE soketi_process_cpu_seconds_total counter\n"));
    }
}

#[test]
fn json_form_matches_prom_client_shape() {
    let [a, b] = two_shards();
    a.add_connected(0, 2);
    b.observe_latency(100);
    let parsed: Value = serde_json::from_str(&registry(&[a, b]).render_json()).unwrap();
    let families = parsed.as_array().unwrap();
    let connected = families
        .iter()
        .find(|f| f["name"] == "soketi_connected")
        .unwrap();
    assert_eq!(connected["type"], "gauge");
    assert_eq!(connected["values"][0]["value"], 2.0);
    assert_eq!(connected["values"][0]["labels"]["app_id"], "app-1");
    assert_eq!(connected["values"][0]["labels"]["port"], "6001");
    let latency = families.iter().find(|f| f["name"] == LATENCY).unwrap();
    let values = latency["values"].as_array().unwrap();
    let inf = values
        .iter()
        .find(|v| v["labels"]["le"] == "+Inf" && v["labels"]["shard"] == "1")
        .unwrap();
    assert_eq!(inf["value"], 1);
    assert_eq!(inf["metricName"], format!("{LATENCY}_bucket"));
}

#[test]
fn usage_has_soketi_memory_fields() {
    let [a, _] = two_shards();
    let parsed: Value = serde_json::from_str(&registry(&[a]).usage_json()).unwrap();
    for field in ["free", "used", "total", "percent"] {
        assert!(
            parsed["memory"][field].is_number(),
            "{field} missing: {parsed}"
        );
    }
}
