//! flow's own metrics (OpenTelemetry instruments on the global meter provider; the delivery
//! layer exports them over OTLP and as Prometheus text). Without a provider every record is a
//! no-op. Labels are ids and states only, never a param or an output (SECURITY.md).

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

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
}

/// The instruments, made on first use from the global meter provider (installed before any
/// command runs).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = opentelemetry::global::meter(SCOPE);
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
        }
    })
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
