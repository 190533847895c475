//! Health and the OpenAPI document.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use flow_engine::time::{now, rfc3339};
use serde::Serialize;
use utoipa::ToSchema;

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
