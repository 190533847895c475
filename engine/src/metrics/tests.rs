//! The instruments, read back through the SDK's in-memory exporter: names, units, labels and
//! values as an exporter receives them (the Prometheus names follow from these; the e2e test
//! parses those).

use std::collections::BTreeMap;

use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
use serde_json::json;

use super::*;

/// One exported data point: a gauge's or sum's value, or a histogram's count and sum.
#[derive(Debug)]
struct Point {
    name: String,
    unit: String,
    labels: BTreeMap<String, String>,
    value: f64,
    count: u64,
}

fn labels<'a>(kvs: impl Iterator<Item = &'a KeyValue>) -> BTreeMap<String, String> {
    kvs.map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect()
}

fn points(exported: &[ResourceMetrics]) -> Vec<Point> {
    let mut out = Vec::new();
    for m in exported
        .iter()
        .flat_map(|r| r.scope_metrics())
        .flat_map(|s| s.metrics())
    {
        let point = |labels, value, count| Point {
            name: m.name().to_string(),
            unit: m.unit().to_string(),
            labels,
            value,
            count,
        };
        match m.data() {
            AggregatedMetrics::F64(MetricData::Gauge(g)) => out.extend(
                g.data_points()
                    .map(|p| point(labels(p.attributes()), p.value(), 1)),
            ),
            AggregatedMetrics::F64(MetricData::Histogram(h)) => out.extend(
                h.data_points()
                    .map(|p| point(labels(p.attributes()), p.sum(), p.count())),
            ),
            AggregatedMetrics::U64(MetricData::Sum(s)) => out.extend(
                s.data_points()
                    .map(|p| point(labels(p.attributes()), p.value() as f64, 1)),
            ),
            AggregatedMetrics::U64(MetricData::Histogram(h)) => out.extend(
                h.data_points()
                    .map(|p| point(labels(p.attributes()), p.sum() as f64, p.count())),
            ),
            other => panic!("{}: an unexpected kind {other:?}", m.name()),
        }
    }
    out
}

fn find<'a>(points: &'a [Point], name: &str, with: &[(&str, &str)]) -> Vec<&'a Point> {
    points
        .iter()
        .filter(|p| {
            p.name == name
                && with
                    .iter()
                    .all(|(k, v)| p.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

#[test]
fn each_instrument_exports_its_name_unit_labels_and_value() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter.clone())
        .build();
    let m = Metrics::new(&provider.meter(SCOPE));
    m.run_ended("etl", "success", Some(Duration::from_millis(1500)));
    m.run_ended("etl", "failed", None);
    m.try_ended(&TryEnded {
        dag_id: "etl",
        task_id: "load",
        operator: "shell",
        state: "success",
        took: Duration::from_millis(20),
    });
    m.try_started("gpu", Duration::from_millis(3));
    m.pass(Duration::from_micros(700));
    m.group_commit(12);
    m.write_began(Duration::from_micros(200));
    m.orphan_recovered();
    m.model_measured(
        "churn",
        "candidate",
        &json!({"auc": 0.81, "trained_on": "2026-03"}),
    );
    m.drift_measured("retrain", "drift", "age", 0.3);
    m.experiment_measured(&VariantMeasured {
        experiment: "button",
        variant: "green",
        lift: 0.02,
        p_value: 0.01,
    });
    provider.force_flush().unwrap();
    let got = points(&exporter.get_finished_metrics().unwrap());

    let ended = find(&got, "flow.runs.ended", &[("dag_id", "etl")]);
    assert_eq!(ended.len(), 2, "{got:#?}");
    assert!(ended.iter().all(|p| p.value == 1.0));
    // A run without a start has no duration.
    let took = find(&got, "flow.run.duration", &[]);
    assert_eq!((took.len(), took[0].count, took[0].value), (1, 1, 1.5));
    assert_eq!(took[0].unit, "s");
    assert_eq!(took[0].labels["state"], "success");
    // A try's count is by operator, its duration by task: never a run id.
    let tries = find(&got, "flow.tries.ended", &[]);
    assert_eq!(
        tries[0].labels.keys().collect::<Vec<_>>(),
        ["dag_id", "operator", "state"]
    );
    let try_took = find(&got, "flow.try.duration", &[("task_id", "load")]);
    assert_eq!((try_took[0].count, try_took[0].value), (1, 0.02));
    let delay = find(&got, "flow.scheduling.delay", &[("pool", "gpu")]);
    assert_eq!((delay[0].count, delay[0].unit.as_str()), (1, "s"));
    for name in ["flow.scheduler.pass.duration", "flow.db.pool.wait"] {
        let p = find(&got, name, &[]);
        assert_eq!(
            (p.len(), p[0].count, p[0].unit.as_str()),
            (1, 1, "s"),
            "{name}"
        );
    }
    assert_eq!(find(&got, "flow.group_commit.batch", &[])[0].value, 12.0);
    assert_eq!(find(&got, "flow.orphans.recovered", &[])[0].value, 1.0);
    // Only a model's numeric metrics become gauges.
    let auc = find(
        &got,
        "flow.model.metric",
        &[("model", "churn"), ("stage", "candidate")],
    );
    assert_eq!(auc.len(), 1, "{got:#?}");
    assert_eq!(
        (auc[0].labels["metric"].as_str(), auc[0].value),
        ("auc", 0.81)
    );
    assert_eq!(
        find(
            &got,
            "flow.drift.psi",
            &[("feature", "age"), ("task_id", "drift")]
        )[0]
        .value,
        0.3
    );
    let v = [("experiment", "button"), ("variant", "green")];
    assert_eq!(find(&got, "flow.experiment.lift", &v)[0].value, 0.02);
    assert_eq!(find(&got, "flow.experiment.p_value", &v)[0].value, 0.01);
}
