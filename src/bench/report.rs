//! `--sweep --report FILE.html`: one self-contained HTML page (inline SVG, no scripts,
//! no external files) with latency percentiles and server CPU against delivery rate,
//! and server memory against connections, so a sweep is looked at rather than read.

use std::fmt::Write as _;

use serde_json::Value;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 320.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_BOTTOM: f64 = 50.0;
const MARGIN_TOP: f64 = 30.0;
const MARGIN_RIGHT: f64 = 150.0;

/// One line of a chart.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten.
fn nice_max(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|m| *m >= v)
        .unwrap_or(10.0 * p)
}

fn fmt_tick(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A line chart with axes, five ticks each, a point per measurement and a legend.
fn chart(title: &str, x_label: &str, y_label: &str, series: &[Series<'_>]) -> String {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (x_max, y_max) = all.fold((0f64, 0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    let (x_max, y_max) = (nice_max(x_max), nice_max(y_max));
    let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let sx = |x: f64| MARGIN_LEFT + x / x_max * plot_w;
    let sy = |y: f64| MARGIN_TOP + plot_h - y / y_max * plot_h;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{t}"><rect width="100%" height="100%" fill="white"/><text x="{cx}" y="18" text-anchor="middle" font-size="15" font-weight="bold">{t}</text>"#,
        t = escape(title),
        cx = MARGIN_LEFT + plot_w / 2.0
    );
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let (x, y) = (sx(f * x_max), sy(f * y_max));
        let _ = write!(
            svg,
            r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" stroke="#eee"/><text x="{x}" y="{ty}" text-anchor="middle" font-size="11">{xv}</text><line x1="{left}" y1="{y}" x2="{right}" y2="{y}" stroke="#eee"/><text x="{tx}" y="{y4}" text-anchor="end" font-size="11">{yv}</text>"##,
            top = MARGIN_TOP,
            bottom = MARGIN_TOP + plot_h,
            ty = MARGIN_TOP + plot_h + 16.0,
            xv = fmt_tick(f * x_max),
            left = MARGIN_LEFT,
            right = MARGIN_LEFT + plot_w,
            tx = MARGIN_LEFT - 6.0,
            y4 = y + 4.0,
            yv = fmt_tick(f * y_max),
        );
    }
    let _ = write!(
        svg,
        r##"<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/><text x="{cx}" y="{xl}" text-anchor="middle" font-size="12">{x_label}</text><text transform="translate(16 {cy}) rotate(-90)" text-anchor="middle" font-size="12">{y_label}</text>"##,
        cx = MARGIN_LEFT + plot_w / 2.0,
        xl = HEIGHT - 10.0,
        cy = MARGIN_TOP + plot_h / 2.0,
        x_label = escape(x_label),
        y_label = escape(y_label),
    );
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline class="series" points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            path.join(" "),
            s.color
        );
        for p in &s.points {
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                sx(p.0),
                sy(p.1),
                s.color
            );
        }
        let ly = MARGIN_TOP + 14.0 + 18.0 * i as f64;
        let lx = MARGIN_LEFT + plot_w + 12.0;
        let _ = write!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="3"/><text x="{}" y="{}" font-size="12">{}</text>"#,
            lx + 20.0,
            s.color,
            lx + 26.0,
            ly + 4.0,
            escape(s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// `(x, y)` of every point of the sweep that has both figures.
fn pairs(points: &[Value], x: &str, y: &str, scale: f64) -> Vec<(f64, f64)> {
    points
        .iter()
        .filter_map(|p| {
            let f = &p["figures"];
            Some((f[x].as_f64()?, f[y].as_f64()? * scale))
        })
        .collect()
}

/// The report page of a sweep (`sweep::json`).
pub fn html(sweep: &Value) -> String {
    let empty = Vec::new();
    let points = sweep["points"].as_array().unwrap_or(&empty);
    let rate = "deliveries per second";
    let latency = chart(
        "Delivery latency",
        rate,
        "milliseconds",
        &[
            Series {
                name: "p50",
                color: "#1b9e77",
                points: pairs(points, "deliveries_per_s", "latency_p50_us", 1e-3),
            },
            Series {
                name: "p99",
                color: "#d95f02",
                points: pairs(points, "deliveries_per_s", "latency_p99_us", 1e-3),
            },
            Series {
                name: "p99.9",
                color: "#7570b3",
                points: pairs(points, "deliveries_per_s", "latency_p999_us", 1e-3),
            },
        ],
    );
    let cpu = chart(
        "Server CPU",
        rate,
        "% of one core",
        &[Series {
            name: "server CPU",
            color: "#e7298a",
            points: pairs(points, "deliveries_per_s", "server_cpu_pct", 1.0),
        }],
    );
    let per_delivery = chart(
        "Server CPU per delivery",
        rate,
        "microseconds",
        &[Series {
            name: "CPU / delivery",
            color: "#66a61e",
            points: pairs(
                points,
                "deliveries_per_s",
                "server_cpu_us_per_delivery",
                1.0,
            ),
        }],
    );
    // Memory: idle server (0 connections) and with every connection subscribed, averaged
    // over the sweep's runs (each a fresh server).
    let avg = |name: &str| {
        let v: Vec<f64> = points
            .iter()
            .filter_map(|p| p["figures"][name].as_f64())
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let connections = sweep["connections"].as_f64().unwrap_or(0.0);
    let mut memory_points = Vec::new();
    if let (Some(idle), Some(subscribed)) = (
        avg("server_rss_idle_bytes"),
        avg("server_rss_subscribed_bytes"),
    ) {
        memory_points = vec![
            (0.0, idle / 1048576.0),
            (connections, subscribed / 1048576.0),
        ];
    }
    // With --sizes: the measured curve, one point per connection count.
    let curve: Vec<(f64, f64)> = sweep["memory_curve"]["points"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["connections"].as_f64()?,
                p["rss_bytes"].as_f64()? / 1048576.0,
            ))
        })
        .collect();
    if curve.len() >= 2 {
        memory_points = curve;
    }
    let memory = chart(
        "Server memory",
        "subscribed connections",
        "RSS, MiB",
        &[Series {
            name: "RSS",
            color: "#a6761d",
            points: memory_points,
        }],
    );
    let best = match sweep["highest_sustained_deliveries_per_s"].as_u64() {
        Some(r) => format!(
            "Highest rate held: <b>{r} deliveries/s</b> at p99 {:.2} ms (target {} ms), {:.2} µs of server CPU per delivery.",
            sweep["p99_ms_at_highest"].as_f64().unwrap_or(f64::NAN),
            sweep["p99_target_ms"],
            sweep["cpu_us_per_delivery_at_highest"]
                .as_f64()
                .unwrap_or(f64::NAN)
        ),
        None => format!("No rate was held within p99 {} ms.", sweep["p99_target_ms"]),
    };
    let best = match sweep["memory_curve"]["fit_bytes_per_connection"].as_f64() {
        Some(b) => format!(
            "{best} Memory: {b:.0} bytes per subscribed connection (least-squares fit over {} connection counts).",
            sweep["memory_curve"]["points"]
                .as_array()
                .map_or(0, Vec::len)
        ),
        None => best,
    };
    let mut rows = String::new();
    for p in points {
        let f = &p["figures"];
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            p["target_deliveries_per_s"],
            f["deliveries_per_s"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.0}")),
            f["latency_p99_us"]
                .as_f64()
                .map_or("-".into(), |v| format!("{:.2}", v / 1000.0)),
            f["server_cpu_us_per_delivery"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.2}")),
            f["lost"].as_f64().map_or("-".into(), |v| format!("{v:.0}")),
            if p["held"] == true { "held" } else { "missed" },
            escape(p["why"].as_str().unwrap_or("")),
        );
    }
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>corecast bench sweep</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}} .charts{{display:flex;flex-wrap:wrap;gap:1em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head>
<body><h1>corecast bench --sweep</h1>
<p>{server}, {connections} connections on {channels} channels, {payload} B payload. {best}</p>
<div class="charts">{latency}{cpu}{per_delivery}{memory}</div>
<h2>Runs</h2>
<table><tr><th>asked /s</th><th>delivered /s</th><th>p99 ms</th><th>CPU µs / delivery</th><th>lost</th><th>result</th><th>why</th></tr>{rows}</table>
</body></html>
"#,
        server = match sweep["target"].as_str() {
            Some(url) => format!("target {}", escape(url)),
            None => format!("{} shard(s)", sweep["shards"]),
        },
        channels = sweep["channels"],
        payload = sweep["payload_bytes"],
    )
}
