use chrono::TimeZone;
use opentelemetry::Value;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

use super::*;
use crate::state::RunType;

fn run(run_id: &str, queued_second: u32) -> RunRow {
    let at = Utc
        .with_ymd_and_hms(2026, 3, 1, 0, 0, queued_second)
        .unwrap();
    RunRow {
        run_id: run_id.into(),
        dag_id: "train".into(),
        dag_version: "v1".into(),
        run_type: RunType::Manual,
        state: RunState::Running,
        logical_date: at,
        data_interval_start: at,
        data_interval_end: at,
        params: serde_json::json!({}),
        queued_at: at,
        started_at: Some(at + chrono::Duration::seconds(1)),
        ended_at: None,
    }
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

#[test]
fn a_runs_ids_are_the_same_everywhere_and_differ_between_runs() {
    let a = RunTrace::of_run(&run("manual__1", 0));
    assert_eq!(a, RunTrace::of_run(&run("manual__1", 0)));
    assert_ne!(a.trace_id, RunTrace::of_run(&run("manual__2", 0)).trace_id);
    // The same run id created again (a new database) is another trace.
    assert_ne!(a.trace_id, RunTrace::of_run(&run("manual__1", 5)).trace_id);
    assert_ne!(a.trace_id, TraceId::INVALID);
    assert_ne!(a.span_id, SpanId::INVALID);
}

#[test]
fn tries_hang_under_their_runs_span_and_pass_their_context_on() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .with_id_generator(RunAwareIds::default())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer(SCOPE)));
    let r = run("manual__1", 0);
    let ids = RunTrace::of_run(&r);

    let traceparent = tracing::subscriber::with_default(subscriber, || {
        let span = TrySpan {
            run: &r,
            trace: ids,
            task_id: "fit",
            map_index: -1,
            try_number: 2,
            operator: "train",
            queue: "default",
            pool: "default_pool",
        }
        .start();
        let traceparent = span.in_scope(|| {
            let _phase = tracing::info_span!("datafusion.execute", rows = 3).entered();
            traceparent()
        });
        try_ended(&span, "failed", true);
        traceparent
    });
    run_ended(
        &r,
        RunState::Failed,
        r.started_at.unwrap() + chrono::Duration::seconds(9),
    );
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name} in {spans:#?}"))
    };
    let run_span = find("train");
    let try_span = find("fit");
    let phase = find("datafusion.execute");
    assert_eq!(run_span.span_context.trace_id(), ids.trace_id);
    assert_eq!(run_span.span_context.span_id(), ids.span_id);
    assert_eq!(run_span.parent_span_id, SpanId::INVALID);
    assert_eq!(
        run_span.start_time,
        SystemTime::from(r.started_at.unwrap()),
        "the run's span starts when the run did"
    );
    assert!(matches!(run_span.status, Status::Error { .. }));
    assert_eq!(attr(run_span, "state"), Some(&Value::from("failed")));

    assert_eq!(try_span.span_context.trace_id(), ids.trace_id);
    assert_eq!(try_span.parent_span_id, ids.span_id);
    assert_eq!(attr(try_span, "task_id"), Some(&Value::from("fit")));
    assert_eq!(attr(try_span, "try_number"), Some(&Value::I64(2)));
    assert_eq!(attr(try_span, "operator"), Some(&Value::from("train")));
    assert_eq!(attr(try_span, "state"), Some(&Value::from("failed")));
    assert!(matches!(try_span.status, Status::Error { .. }));

    assert_eq!(phase.parent_span_id, try_span.span_context.span_id());
    assert_eq!(phase.span_context.trace_id(), ids.trace_id);
    assert_eq!(
        traceparent.as_deref(),
        Some(format!("00-{}-{}-01", ids.trace_id, phase.span_context.span_id()).as_str()),
        "a process started in a phase continues that phase's span"
    );
}
