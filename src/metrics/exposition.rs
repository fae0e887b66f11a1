//! Building Prometheus metric families and writing them as prom-client's JSON.

use std::collections::HashMap;

use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};
use serde_json::{Map, Value, json};

/// Families in first-seen order, merged by name.
#[derive(Default)]
pub(super) struct Families {
    list: Vec<MetricFamily>,
    by_name: HashMap<String, usize>,
}

impl Families {
    /// The family `name`, created with `help` and `kind` when new.
    pub(super) fn declare(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
    ) -> &mut MetricFamily {
        let idx = *self.by_name.entry(name.to_owned()).or_insert_with(|| {
            let mut f = MetricFamily::default();
            f.set_name(name.to_owned());
            f.set_help(help.to_owned());
            f.set_field_type(kind);
            self.list.push(f);
            self.list.len() - 1
        });
        &mut self.list[idx]
    }

    /// Adds a counter or gauge sample. A sample whose kind differs from its family's is
    /// dropped rather than rendered under the wrong `# TYPE`.
    pub(super) fn push(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        labels: Vec<LabelPair>,
        value: f64,
    ) {
        let mut m = Metric::default();
        m.set_label(labels);
        match kind {
            MetricType::COUNTER => {
                let mut c = prometheus::proto::Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
            MetricType::GAUGE => {
                let mut g = prometheus::proto::Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
            _ => return,
        }
        self.push_metric(name, help, kind, m);
    }

    pub(super) fn push_metric(&mut self, name: &str, help: &str, kind: MetricType, metric: Metric) {
        let family = self.declare(name, help, kind);
        if family.get_field_type() == kind {
            family.mut_metric().push(metric);
        } else {
            debug_assert!(false, "metric {name} pushed with two types");
        }
    }

    /// The families, without the empty ones (the encoder refuses those).
    pub(super) fn finish(self) -> Vec<MetricFamily> {
        self.list
            .into_iter()
            .filter(|f| !f.get_metric().is_empty())
            .collect()
    }
}

pub(super) fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_owned());
    l.set_value(value.to_owned());
    l
}

/// One family as prom-client's JSON: `{help, name, type, values: [{value, labels}],
/// aggregator}`; histogram values carry `metricName` (`_bucket`, `_sum`, `_count`).
pub(super) fn family_json(f: &MetricFamily) -> Value {
    let labels_of = |m: &Metric| -> Map<String, Value> {
        m.get_label()
            .iter()
            .map(|l| (l.name().to_owned(), Value::from(l.value())))
            .collect()
    };
    let mut values = Vec::new();
    for m in f.get_metric() {
        match f.get_field_type() {
            MetricType::COUNTER => {
                values.push(json!({"value": m.get_counter().get_value(), "labels": labels_of(m)}));
            }
            MetricType::GAUGE => {
                values.push(json!({"value": m.get_gauge().get_value(), "labels": labels_of(m)}));
            }
            MetricType::HISTOGRAM => {
                let h = m.get_histogram();
                let bounds = h
                    .get_bucket()
                    .iter()
                    .map(|b| (Value::from(b.upper_bound()), b.cumulative_count()))
                    .chain([(Value::from("+Inf"), h.get_sample_count())]);
                for (le, count) in bounds {
                    let mut labels = labels_of(m);
                    labels.insert("le".to_owned(), le);
                    values.push(json!({
                        "value": count,
                        "labels": labels,
                        "metricName": format!("{}_bucket", f.name()),
                    }));
                }
                values.push(json!({
                    "value": h.get_sample_sum(),
                    "labels": labels_of(m),
                    "metricName": format!("{}_sum", f.name()),
                }));
                values.push(json!({
                    "value": h.get_sample_count(),
                    "labels": labels_of(m),
                    "metricName": format!("{}_count", f.name()),
                }));
            }
            _ => {}
        }
    }
    let kind = match f.get_field_type() {
        MetricType::COUNTER => "counter",
        MetricType::GAUGE => "gauge",
        MetricType::HISTOGRAM => "histogram",
        MetricType::SUMMARY => "summary",
        MetricType::UNTYPED => "untyped",
    };
    json!({
        "help": f.help(),
        "name": f.name(),
        "type": kind,
        "values": values,
        "aggregator": "sum",
    })
}
