//! Traces of runs and tries (OpenTelemetry through `tracing`).
//!
//! A run is planned by whichever scheduler holds it at the moment and its tries run on any
//! worker, so no process can hold one span open from the run's start to its end. Instead a run's
//! trace id and span id are derived from the run itself ([`RunTrace::of`]): every try's span,
//! wherever it runs, names that span as its parent, and the scheduler that ends the run emits
//! the run's span with those ids and the run's own start and end times ([`run_ended`]). A backend
//! shows the run's span above its tries' spans once it arrives.
//!
//! The OpenTelemetry SDK picks span ids itself, so a process that exports traces installs
//! [`RunAwareIds`] as its id generator (the delivery layer does, in its telemetry setup).
//! Without an exporter every call here is a no-op.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use sha2::{Digest, Sha256};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::state::RunState;
use crate::store::RunRow;

use crate::metrics;

pub use crate::metrics::SCOPE;

/// The ids of a run's span, the same in every process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunTrace {
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

impl RunTrace {
    /// From what identifies the run for good: its DAG, its id and when it was created (so a run
    /// id seen again in a new database starts a new trace).
    pub fn of(dag_id: &str, run_id: &str, queued_at: DateTime<Utc>) -> RunTrace {
        let digest = Sha256::new()
            .chain_update(b"flow run\0")
            .chain_update(dag_id.as_bytes())
            .chain_update([0u8])
            .chain_update(run_id.as_bytes())
            .chain_update([0u8])
            .chain_update(queued_at.timestamp_micros().to_le_bytes())
            .finalize();
        let mut trace = [0u8; 16];
        let mut span = [0u8; 8];
        trace.copy_from_slice(&digest[..16]);
        span.copy_from_slice(&digest[16..24]);
        RunTrace {
            trace_id: TraceId::from_bytes(trace),
            span_id: SpanId::from_bytes(span),
        }
    }

    pub fn of_run(run: &RunRow) -> RunTrace {
        RunTrace::of(&run.dag_id, &run.run_id, run.queued_at)
    }

    /// The run's span as the remote parent of a try's span.
    pub fn parent(&self) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            self.trace_id,
            self.span_id,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }
}

thread_local! {
    static PRESET: Cell<Option<RunTrace>> = const { Cell::new(None) };
}

/// The SDK's id generator for a process that exports traces: random ids, except for a run's
/// span, which gets the ids its tries' spans already name as their parent.
#[derive(Debug, Default)]
pub struct RunAwareIds(RandomIdGenerator);

impl IdGenerator for RunAwareIds {
    fn new_trace_id(&self) -> TraceId {
        PRESET
            .get()
            .map(|p| p.trace_id)
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        PRESET
            .get()
            .map(|p| p.span_id)
            .unwrap_or_else(|| self.0.new_span_id())
    }
}

/// Emits the span of a run that has just ended, from its start to `ended_at`. Called once per
/// run, by the scheduler whose plan ended it.
pub fn run_ended(run: &RunRow, state: RunState, ended_at: DateTime<Utc>) {
    let tracer = opentelemetry::global::tracer(SCOPE);
    let ids = RunTrace::of_run(run);
    let builder = tracer
        .span_builder(run.dag_id.clone())
        .with_start_time(SystemTime::from(run.started_at.unwrap_or(run.queued_at)))
        .with_attributes([
            KeyValue::new("dag_id", run.dag_id.clone()),
            KeyValue::new("run_id", run.run_id.clone()),
            KeyValue::new("run_type", run.run_type.as_str()),
            KeyValue::new("logical_date", crate::time::rfc3339(run.logical_date)),
            KeyValue::new("dag_version", run.dag_version.clone()),
            KeyValue::new("state", state.as_str()),
        ]);
    PRESET.set(Some(ids));
    // Built synchronously on this thread: the id generator reads the preset now.
    let mut span = builder.start_with_context(&tracer, &Context::new());
    PRESET.set(None);
    span.set_status(match state {
        RunState::Success => Status::Ok,
        _ => Status::error(format!("run {state}")),
    });
    span.end_with_timestamp(SystemTime::from(ended_at));
    let took = run
        .started_at
        .and_then(|started| (ended_at - started).to_std().ok());
    metrics::metrics().run_ended(&run.dag_id, state.as_str(), took);
}

/// What a try's span says about it.
pub struct TrySpan<'a> {
    pub run: &'a RunRow,
    /// The run's ids ([`RunTrace::of_run`]), derived once per try by the caller.
    pub trace: RunTrace,
    pub task_id: &'a str,
    pub map_index: i64,
    pub try_number: i64,
    pub operator: &'a str,
    pub queue: &'a str,
    pub pool: &'a str,
}

impl TrySpan<'_> {
    /// The try's span, a child of its run's span. Its `state` is recorded when the try ends.
    pub fn start(&self) -> tracing::Span {
        // No tracing parent: a span that began the try (a scheduler's pass) would otherwise be
        // held open until the try ends.
        let span = tracing::info_span!(
            parent: None,
            "try",
            otel.name = self.task_id,
            dag_id = %self.run.dag_id,
            run_id = %self.run.run_id,
            task_id = self.task_id,
            map_index = self.map_index,
            try_number = self.try_number,
            operator = self.operator,
            queue = self.queue,
            pool = self.pool,
            host = host(),
            state = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        // Fails only once the span has started, which it has not.
        let _ = span.set_parent(self.trace.parent());
        span
    }
}

/// Records how a try ended on its span.
pub fn try_ended(span: &tracing::Span, state: &str, failed: bool) {
    span.record("state", state);
    span.record("otel.status_code", if failed { "error" } else { "ok" });
}

/// The W3C `traceparent` of the span being polled, for a task's processes (`TRACEPARENT`) and
/// a Spark step's conf; None when no trace is exported.
pub fn traceparent() -> Option<String> {
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&Context::current(), &mut carrier);
    carrier.remove("traceparent")
}

/// This machine's name: the `host` of try spans, and what a scheduler records as the host of
/// the tries it claims. Read once.
pub(crate) fn host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_string())
    })
}

#[cfg(test)]
mod tests;
