//! The server's metrics: its requests (a span and a latency per route), rate-limit rejections,
//! and gauges of what is in flight in the whole database (active runs, each pool's queue), read
//! from the store at most once a second, so every server of a cluster reports the same picture.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use flow_engine::store::{Activity, Store, StoreError};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, ObservableGauge};
use tracing::Instrument;

/// How old a read of the database's activity may be when `GET /metrics` answers.
const FRESH: Duration = Duration::from_secs(1);

struct Http {
    duration: Histogram<f64>,
    rate_limited: Counter<u64>,
}

fn http() -> &'static Http {
    static HTTP: OnceLock<Http> = OnceLock::new();
    HTTP.get_or_init(|| {
        let meter = opentelemetry::global::meter(flow_engine::telemetry::SCOPE);
        Http {
            duration: meter
                .f64_histogram("flow.api.request.duration")
                .with_unit("s")
                .with_description("API requests by route, method and status")
                .with_boundaries(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
                ])
                .build(),
            rate_limited: meter
                .u64_counter("flow.api.rate_limited")
                .with_description(
                    "API requests refused with 429 because a token's budget was spent",
                )
                .build(),
        }
    })
}

/// A request refused by a token's rate limit.
pub fn rate_limited() {
    http().rate_limited.add(1, &[]);
}

/// Middleware on the API's routes: a server span per request (a child of the caller's trace
/// when it sent `traceparent`), and its latency by route template, never by the path itself (a
/// run id in a label would make a series per run).
pub async fn observe_request(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().as_str().to_string();
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let started = Instant::now();
    let res = next.run(req).instrument(span.clone()).await;
    let status = res.status().as_u16();
    span.record("http.response.status_code", status);
    http().duration.record(
        started.elapsed().as_secs_f64(),
        &[
            KeyValue::new("route", route),
            KeyValue::new("method", method),
            KeyValue::new("status", i64::from(status)),
        ],
    );
    res
}

/// Gauges of the database's activity. The instruments' callbacks read the last snapshot; the
/// server refreshes it before answering `GET /metrics` and every 15 s for the OTLP exporter.
pub struct ActivityGauges {
    snapshot: Arc<Mutex<Snapshot>>,
    _gauges: Vec<ObservableGauge<i64>>,
    _ages: ObservableGauge<f64>,
}

#[derive(Default)]
struct Snapshot {
    activity: Activity,
    read: Option<Instant>,
}

impl ActivityGauges {
    pub fn new() -> ActivityGauges {
        let meter = opentelemetry::global::meter(flow_engine::telemetry::SCOPE);
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let runs = {
            let s = snapshot.clone();
            meter
                .i64_observable_gauge("flow.runs.active")
                .with_description("Runs queued or running, by DAG and state")
                .with_callback(move |o| {
                    for r in &lock(&s).activity.runs {
                        let labels = [
                            KeyValue::new("dag_id", r.dag_id.clone()),
                            KeyValue::new("state", r.state.as_str()),
                        ];
                        o.observe(r.count, &labels);
                    }
                })
                .build()
        };
        let pool_gauge = |name: &'static str, what: &'static str, pick: fn(&_) -> i64| {
            let s = snapshot.clone();
            meter
                .i64_observable_gauge(name)
                .with_description(what)
                .with_callback(move |o| {
                    for p in &lock(&s).activity.pools {
                        o.observe(pick(p), &[KeyValue::new("pool", p.pool.clone())]);
                    }
                })
                .build()
        };
        let queued = pool_gauge(
            "flow.pool.queued",
            "Task instances waiting for a slot, by pool",
            |p: &flow_engine::store::PoolActivity| p.queued,
        );
        let running = pool_gauge(
            "flow.pool.running",
            "Task instances running, by pool",
            |p: &flow_engine::store::PoolActivity| p.running,
        );
        let ages = {
            let s = snapshot.clone();
            meter
                .f64_observable_gauge("flow.pool.oldest_queued_age")
                .with_unit("s")
                .with_description(
                    "How long the task instance queued longest ago has waited, by pool",
                )
                .with_callback(move |o| {
                    let now = flow_engine::time::now();
                    for p in &lock(&s).activity.pools {
                        let age = p.oldest_queued_at.map_or(0.0, |at| {
                            (now - at).to_std().unwrap_or_default().as_secs_f64()
                        });
                        o.observe(age, &[KeyValue::new("pool", p.pool.clone())]);
                    }
                })
                .build()
        };
        ActivityGauges {
            snapshot,
            _gauges: vec![runs, queued, running],
            _ages: ages,
        }
    }

    /// Reads the activity again unless the last read is fresher than a second.
    pub async fn refresh(&self, store: &dyn Store) -> Result<(), StoreError> {
        if lock(&self.snapshot)
            .read
            .is_some_and(|r| r.elapsed() < FRESH)
        {
            return Ok(());
        }
        let activity = store.activity().await?;
        *lock(&self.snapshot) = Snapshot {
            activity,
            read: Some(Instant::now()),
        };
        Ok(())
    }

    /// Refreshes every 15 s while the gauges live, for the OTLP exporter's reads.
    pub fn keep_fresh(gauges: std::sync::Weak<ActivityGauges>, store: Arc<dyn Store>) {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(15));
            loop {
                every.tick().await;
                let Some(gauges) = gauges.upgrade() else {
                    return;
                };
                if let Err(e) = gauges.refresh(store.as_ref()).await {
                    tracing::debug!("metrics: cannot read the activity: {e}");
                }
            }
        });
    }
}

impl Default for ActivityGauges {
    fn default() -> Self {
        ActivityGauges::new()
    }
}

/// A poisoned lock only means a callback panicked mid-read; the snapshot is still whole.
fn lock(s: &Mutex<Snapshot>) -> std::sync::MutexGuard<'_, Snapshot> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}
