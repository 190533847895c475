//! One JSON object per log line, in the shape log shippers (Fluent Bit, the CloudWatch agent)
//! parse: `timestamp`, `level`, `target`, the event's fields (`message` first) at the top level,
//! the current span's fields under `span`, and the OpenTelemetry `trace_id` and `span_id` of the
//! span the line was logged in, when traces are exported.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent};
use tracing_subscriber::registry::LookupSpan;

pub(super) struct WithTraceIds;

fn base() -> Format<Json> {
    tracing_subscriber::fmt::format()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
}

impl<S> FormatEvent<S, JsonFields> for WithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        base().format_event(ctx, Writer::new(&mut line), event)?;
        // The OpenTelemetry layer makes the entered span's context current while it is entered.
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let ids = span.span_context();
        let object = line.trim_end();
        match object.strip_suffix('}') {
            Some(open) if ids.is_valid() => writeln!(
                writer,
                r#"{open},"trace_id":"{}","span_id":"{}"}}"#,
                ids.trace_id(),
                ids.span_id()
            ),
            _ => writeln!(writer, "{object}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Collects what the layer writes.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_logged_in_a_traced_span_carries_its_ids() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(move || writer.clone())
                    .fmt_fields(JsonFields::new())
                    .event_format(WithTraceIds),
            );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(pool = "default_pool", "outside \"any\" span");
            let span = tracing::info_span!("try", task_id = "fit");
            span.in_scope(|| tracing::warn!(rows = 3, "inside"));
        });
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 1);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let parsed: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(parsed.len(), 2, "{text}");
        let (outside, inside) = (&parsed[0], &parsed[1]);
        assert_eq!(outside["message"], "outside \"any\" span");
        assert_eq!(outside["level"], "INFO");
        assert_eq!(outside["pool"], "default_pool");
        assert!(outside["timestamp"].is_string());
        assert!(outside.get("trace_id").is_none(), "{outside}");
        assert_eq!(inside["message"], "inside");
        assert_eq!(inside["rows"], 3);
        assert_eq!(inside["span"]["task_id"], "fit");
        let ids = &spans[0].span_context;
        assert_eq!(inside["trace_id"], ids.trace_id().to_string());
        assert_eq!(inside["span_id"], ids.span_id().to_string());
    }
}
