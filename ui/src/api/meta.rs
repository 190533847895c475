//! Health, readiness and the OpenAPI document.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use flow_engine::time::{now, rfc3339};
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiError;
use super::error::ErrorBody;
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `error` when the database does not answer.
    pub status: String,
    /// `ok` or `unavailable`.
    pub database: String,
    pub scheduler: SchedulerHealth,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SchedulerHealth {
    /// A scheduler has sent a heartbeat within the lease timeout, so its running tries are held.
    pub alive: bool,
    /// The latest heartbeat of any scheduler on this database.
    pub last_heartbeat: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/health",
    tag = "meta",
    responses(
        (status = 200, description = "the server and its database answer", body = Health),
        (status = 503, description = "the database does not answer (for load balancers and monitors)", body = Health),
    )
)]
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.store.last_heartbeat().await {
        Ok(last) => {
            let lease = chrono::Duration::from_std(state.lease_timeout).unwrap_or_default();
            let alive = last.is_some_and(|t| now() - t <= lease);
            axum::Json(Health {
                status: "ok".into(),
                database: "ok".into(),
                scheduler: SchedulerHealth {
                    alive,
                    last_heartbeat: last.map(rfc3339),
                },
            })
            .into_response()
        }
        Err(e) => {
            tracing::warn!("health: the database does not answer: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(Health {
                    status: "error".into(),
                    database: "unavailable".into(),
                    scheduler: SchedulerHealth {
                        alive: false,
                        last_heartbeat: None,
                    },
                }),
            )
                .into_response()
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// `ready`, or `not_ready` when the database does not answer or its schema is not this
    /// build's.
    pub status: String,
    /// `ok` or `unavailable`.
    pub database: String,
    /// The newest migration applied to the database (null when it does not answer or has none).
    pub schema_applied: Option<i64>,
    /// The newest migration this build carries.
    pub schema_expected: i64,
}

/// Readiness, for a load balancer or an orchestrator (ECS, Kubernetes): ready to serve means the
/// database answers and its schema is the one this build migrates to. Health says the process
/// is alive; readiness says it should get traffic.
#[utoipa::path(
    get,
    path = "/api/v1/ready",
    tag = "meta",
    responses(
        (status = 200, description = "the database answers and its schema is this build's", body = Ready),
        (status = 503, description = "not ready: the database does not answer, or its schema is older or newer than this build's", body = Ready),
    )
)]
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let expected = flow_engine::store::expected_schema_version();
    let (database, applied) = match state.store.schema_version().await {
        Ok(applied) => ("ok", applied),
        Err(e) => {
            tracing::warn!("ready: the database does not answer: {e}");
            ("unavailable", None)
        }
    };
    let is_ready = applied == Some(expected);
    let body = Ready {
        status: if is_ready { "ready" } else { "not_ready" }.into(),
        database: database.into(),
        schema_applied: applied,
        schema_expected: expected,
    };
    let status = if is_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "this document (OpenAPI 3)", content_type = "application/json"))
)]
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi_json(),
    )
        .into_response()
}

/// The Prometheus text of this server's metrics and of the database's activity.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the metrics in the Prometheus text format 0.0.4 (docs/observability.md lists them)", body = String, content_type = "text/plain"),
        (status = 503, description = "the database does not answer", body = ErrorBody),
    )
)]
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    _: super::auth::Viewer,
) -> Result<Response, ApiError> {
    state.activity.refresh(state.store.as_ref()).await?;
    let text = crate::telemetry::prometheus_text().unwrap_or_default();
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
