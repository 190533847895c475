//! flow's own metrics (OpenTelemetry instruments on the global meter provider; the delivery
//! layer exports them over OTLP and as Prometheus text). Without a provider every record is a
//! no-op. Labels are ids and states only, never a param or an output (SECURITY.md).

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram};

/// The instrumentation scope of flow's own spans and metrics.
pub const SCOPE: &str = "flow";

/// Bucket bounds for a task's or a run's duration, in seconds: a shell `true` to an hour-long
/// training job.
const WORK_SECONDS: [f64; 16] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
    10800.0,
];

/// Bucket bounds for the scheduler's own steps, in seconds: a loop pass, a wait in a queue.
const STEP_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0,
];

pub struct Metrics {
    runs_ended: Counter<u64>,
    run_duration: Histogram<f64>,
    tries_ended: Counter<u64>,
    try_duration: Histogram<f64>,
    scheduling_delay: Histogram<f64>,
    pass_duration: Histogram<f64>,
    commit_batch: Histogram<u64>,
    orphans: Counter<u64>,
    write_wait: Histogram<f64>,
    models: ModelGauges,
}

/// What the ML operators measured last.
struct ModelGauges {
    model_metric: Gauge<f64>,
    drift_psi: Gauge<f64>,
    experiment_lift: Gauge<f64>,
    experiment_p: Gauge<f64>,
}

/// The instruments, made on first use from the global meter provider (installed before any
/// command runs).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new(&opentelemetry::global::meter(SCOPE)))
}

impl Metrics {
    /// The instruments on `meter`: the global one in a process, a test's own in a test.
    pub fn new(meter: &opentelemetry::metrics::Meter) -> Metrics {
        Metrics {
            runs_ended: meter
                .u64_counter("flow.runs.ended")
                .with_description("Runs that ended, by DAG and state")
                .build(),
            run_duration: meter
                .f64_histogram("flow.run.duration")
                .with_unit("s")
                .with_description("From a run's start to its end, by DAG and state")
                .with_boundaries(WORK_SECONDS.to_vec())
                .build(),
            tries_ended: meter
                .u64_counter("flow.tries.ended")
                .with_description("Tries that ended, by DAG, operator and state")
                .build(),
            try_duration: meter
                .f64_histogram("flow.try.duration")
                .with_unit("s")
                .with_description("A try's run time, by DAG, task and state")
                .with_boundaries(WORK_SECONDS.to_vec())
                .build(),
            scheduling_delay: meter
                .f64_histogram("flow.scheduling.delay")
                .with_unit("s")
                .with_description("From a task instance being queued to its claim, by pool")
                .with_boundaries(STEP_SECONDS.to_vec())
                .build(),
            pass_duration: meter
                .f64_histogram("flow.scheduler.pass.duration")
                .with_unit("s")
                .with_description("One pass of a scheduler's or worker's loop")
                .with_boundaries(STEP_SECONDS.to_vec())
                .build(),
            commit_batch: meter
                .u64_histogram("flow.group_commit.batch")
                .with_description("Writes about tries committed in one transaction")
                .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0])
                .build(),
            orphans: meter
                .u64_counter("flow.orphans.recovered")
                .with_description(
                    "Tries whose lease expired (their process or host died), requeued or failed",
                )
                .build(),
            write_wait: meter
                .f64_histogram("flow.db.pool.wait")
                .with_unit("s")
                .with_description(
                    "How long a write waited to begin: for a pooled connection (and on SQLite \
                     for the one writer)",
                )
                .with_boundaries(STEP_SECONDS.to_vec())
                .build(),
            models: model_gauges(meter),
        }
    }
}

fn model_gauges(meter: &opentelemetry::metrics::Meter) -> ModelGauges {
    ModelGauges {
        model_metric: meter
            .f64_gauge("flow.model.metric")
            .with_description(
                "A model's latest measured metric (auc, accuracy, rmse, ...), by model, \
                 stage and metric: a candidate when trained, production when promoted",
            )
            .build(),
        drift_psi: meter
            .f64_gauge("flow.drift.psi")
            .with_description("The latest population stability index, by DAG, task and feature")
            .build(),
        experiment_lift: meter
            .f64_gauge("flow.experiment.lift")
            .with_description("A variant's latest lift over the control, by experiment and variant")
            .build(),
        experiment_p: meter
            .f64_gauge("flow.experiment.p_value")
            .with_description(
                "A variant's latest p-value against the control, by experiment and variant",
            )
            .build(),
    }
}

impl Metrics {
    pub fn run_ended(&self, dag_id: &str, state: &str, took: Option<Duration>) {
        let labels = [
            KeyValue::new("dag_id", dag_id.to_string()),
            KeyValue::new("state", state.to_string()),
        ];
        self.runs_ended.add(1, &labels);
        if let Some(took) = took {
            self.run_duration.record(took.as_secs_f64(), &labels);
        }
    }

    pub fn try_ended(&self, t: &TryEnded<'_>) {
        self.tries_ended.add(
            1,
            &[
                KeyValue::new("dag_id", t.dag_id.to_string()),
                KeyValue::new("operator", t.operator.to_string()),
                KeyValue::new("state", t.state),
            ],
        );
        self.try_duration.record(
            t.took.as_secs_f64(),
            &[
                KeyValue::new("dag_id", t.dag_id.to_string()),
                KeyValue::new("task_id", t.task_id.to_string()),
                KeyValue::new("state", t.state),
            ],
        );
    }

    pub fn try_started(&self, pool: &str, waited: Duration) {
        self.scheduling_delay.record(
            waited.as_secs_f64(),
            &[KeyValue::new("pool", pool.to_string())],
        );
    }

    pub fn pass(&self, took: Duration) {
        self.pass_duration.record(took.as_secs_f64(), &[]);
    }

    pub fn group_commit(&self, writes: usize) {
        self.commit_batch.record(writes as u64, &[]);
    }

    pub fn write_began(&self, waited: Duration) {
        self.write_wait.record(waited.as_secs_f64(), &[]);
    }

    /// Every numeric metric of a model version, as its `stage` now.
    pub fn model_measured(&self, model: &str, stage: &str, metrics: &serde_json::Value) {
        for (name, value) in metrics.as_object().into_iter().flatten() {
            if let Some(v) = value.as_f64() {
                self.models.model_metric.record(
                    v,
                    &[
                        KeyValue::new("model", model.to_string()),
                        KeyValue::new("stage", stage.to_string()),
                        KeyValue::new("metric", name.clone()),
                    ],
                );
            }
        }
    }

    pub fn drift_measured(&self, dag_id: &str, task_id: &str, feature: &str, psi: f64) {
        self.models.drift_psi.record(
            psi,
            &[
                KeyValue::new("dag_id", dag_id.to_string()),
                KeyValue::new("task_id", task_id.to_string()),
                KeyValue::new("feature", feature.to_string()),
            ],
        );
    }

    pub fn experiment_measured(&self, v: &VariantMeasured<'_>) {
        let labels = [
            KeyValue::new("experiment", v.experiment.to_string()),
            KeyValue::new("variant", v.variant.to_string()),
        ];
        self.models.experiment_lift.record(v.lift, &labels);
        self.models.experiment_p.record(v.p_value, &labels);
    }

    pub fn orphan_recovered(&self) {
        self.orphans.add(1, &[]);
    }
}

/// A try's end, for [`Metrics::try_ended`].
pub struct TryEnded<'a> {
    pub dag_id: &'a str,
    pub task_id: &'a str,
    pub operator: &'a str,
    pub state: &'static str,
    pub took: Duration,
}

/// A variant's comparison with its experiment's control.
pub struct VariantMeasured<'a> {
    pub experiment: &'a str,
    pub variant: &'a str,
    pub lift: f64,
    pub p_value: f64,
}

#[cfg(test)]
mod tests;
