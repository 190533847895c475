//! What a process reports about itself: log lines on stderr (text or JSON); when an OTLP
//! endpoint is configured with the standard `OTEL_*` variables, traces and metrics; and for the
//! processes that serve HTTP, the metrics as Prometheus text (`GET /metrics`). The spans and
//! instruments themselves are made where the work is (`flow_engine::telemetry`); this is the
//! plumbing every binary shares.

use opentelemetry::trace::TracerProvider as _;
use std::sync::OnceLock;

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogFormat;

mod json;
pub mod metrics;

/// How a process reports: its log format, its service name for traces and metrics
/// (`flow-scheduler`, `flow-worker`, ...; `OTEL_SERVICE_NAME` wins), and whether it keeps its
/// metrics for Prometheus to read (a process that serves `GET /metrics`).
#[derive(Debug, Clone)]
pub struct Reporting {
    pub log_format: LogFormat,
    pub service: String,
    pub prometheus: bool,
}

/// The installed exporters; [`Telemetry::shutdown`] sends what is still buffered.
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

/// The registry `GET /metrics` reads, when this process keeps its metrics for Prometheus.
static PROMETHEUS: OnceLock<prometheus::Registry> = OnceLock::new();

/// This process's metrics in the Prometheus text format; None when it keeps none.
pub fn prometheus_text() -> Option<String> {
    let registry = PROMETHEUS.get()?;
    let families = registry.gather();
    Some(
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_else(|e| format!("# cannot encode the metrics: {e}\n")),
    )
}

impl Telemetry {
    /// Installs the process's subscriber. A trace exporter that cannot be built is reported on
    /// stderr and the process goes on without traces: telemetry never stops the work.
    pub fn install(reporting: &Reporting) -> Telemetry {
        let tracer = traces_wanted()
            .then(|| tracer_provider(&reporting.service))
            .and_then(|built| match built {
                Ok(provider) => Some(provider),
                Err(e) => {
                    eprintln!("flow: traces are off: cannot build the OTLP exporter: {e}");
                    None
                }
            });
        let otel = tracer.as_ref().map(|provider| {
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(flow_engine::telemetry::SCOPE))
                .with_filter(traced_targets())
        });
        let log_filter =
            EnvFilter::try_from_env("FLOW_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
        let log = match reporting.log_format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .event_format(json::WithTraceIds)
                .boxed(),
        };
        tracing_subscriber::registry()
            .with(otel)
            .with(log.with_filter(log_filter))
            .init();
        if let Some(provider) = &tracer {
            opentelemetry::global::set_tracer_provider(provider.clone());
        }
        let meter = meter_provider(reporting);
        if let Some(provider) = &meter {
            opentelemetry::global::set_meter_provider(provider.clone());
        }
        Telemetry { tracer, meter }
    }

    /// Exports what is buffered. Blocks (the exporter's client is a blocking one): call it off
    /// the async runtime.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flow: cannot export the last traces: {e}");
        }
        if let Some(provider) = self.meter
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flow: cannot export the last metrics: {e}");
        }
    }
}

/// Whether this process sends its metrics to an OTLP collector.
pub fn exports_metrics() -> bool {
    metrics_wanted()
}

/// Traces go out when an OTLP endpoint is set (the general one or the traces one), unless the
/// standard switches turn them off.
fn traces_wanted() -> bool {
    otlp_wanted("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
}

/// The same for metrics.
fn metrics_wanted() -> bool {
    otlp_wanted(
        "OTEL_METRICS_EXPORTER",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    )
}

fn otlp_wanted(exporter_var: &str, endpoint_var: &str) -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let off = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var(exporter_var).is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !off && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set(endpoint_var))
}

/// A meter provider when anyone will read the metrics: Prometheus through this process's
/// `GET /metrics`, or the OTLP collector (every `OTEL_METRIC_EXPORT_INTERVAL`, 60 s by
/// default). None otherwise, so a process that reports no metrics pays nothing for them.
fn meter_provider(reporting: &Reporting) -> Option<SdkMeterProvider> {
    let mut builder = SdkMeterProvider::builder().with_resource(resource(&reporting.service));
    let mut readers = 0;
    if reporting.prometheus {
        let registry = prometheus::Registry::new();
        match opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .build()
        {
            Ok(exporter) => {
                builder = builder.with_reader(exporter);
                let _ = PROMETHEUS.set(registry);
                readers += 1;
            }
            Err(e) => eprintln!("flow: /metrics is off: {e}"),
        }
    }
    if metrics_wanted() {
        match opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => {
                builder = builder.with_periodic_exporter(exporter);
                readers += 1;
            }
            Err(e) => eprintln!("flow: metrics are not sent: cannot build the OTLP exporter: {e}"),
        }
    }
    (readers > 0).then(|| builder.build())
}

fn tracer_provider(
    service: &str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    // The builder takes the endpoint, headers, timeout and protocol from the OTEL_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_resource(resource(service))
        .with_id_generator(flow_engine::telemetry::RunAwareIds::default())
        .with_batch_exporter(exporter)
        .build())
}

/// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` win over flow's own names.
fn resource(service: &str) -> Resource {
    let mut builder = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        builder = builder.with_service_name(service.to_string());
    }
    builder
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build()
}

/// flow's own spans; a dependency's spans (the AWS SDK's, sqlx's) only from warnings up, so a
/// trace shows flow's work and not every HTTP retry inside it.
fn traced_targets() -> Targets {
    Targets::new()
        .with_target("flow_engine", LevelFilter::INFO)
        // A pass's span is DEBUG so that text logs do not prefix every line logged in a pass
        // with it; traces want it.
        .with_target("flow_engine::scheduler::event_loop", LevelFilter::DEBUG)
        .with_target("flow_operators", LevelFilter::INFO)
        .with_target("flow_ui", LevelFilter::INFO)
        .with_default(LevelFilter::WARN)
}
